//! The line receivers: what they consume and what a line may hold.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailwit_smtp::framing::{LineReceiver, OverlongLine, Take};

fuzz_target!(|data: &[u8]| {
    let has_lf = data.contains(&b'\n');
    for r in [LineReceiver::command(data), LineReceiver::sasl()] {
        let (n, taken) = r.take(data);
        assert!(n <= data.len());
        match taken {
            Take::Line(line) => {
                assert!(n <= r.limit() && data[n - 1] == b'\n');
                assert!(
                    line.bytes()
                        .all(|b| b == b'\t' || (0x20..0x7f).contains(&b))
                );
            }
            Take::Refused(reply) => {
                assert!(has_lf && data[n - 1] == b'\n');
                mailwit_fuzz::check_reply(&reply);
            }
            Take::Overlong => assert!(!has_lf && n == data.len() && n > r.limit()),
            Take::More => assert!(!has_lf && n == 0 && data.len() <= r.limit()),
        }
    }
    let (n, reply) = OverlongLine.take(data);
    assert_eq!(reply.is_some(), has_lf);
    assert!(n <= data.len());
    if let Some(reply) = reply {
        assert_eq!(data[n - 1], b'\n');
        assert!(!data[..n - 1].contains(&b'\n'));
        mailwit_fuzz::check_reply(&reply);
    }
});
