//! The DATA receiver: first byte the size limit, second the split.
//!
//! - the same result whole or split into reads;
//! - it stops right after the first `CRLF.CRLF` (or `.CRLF` at the start);
//! - it keeps at most the limit, and never a bare CR or LF it did not flag.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailwit_fuzz::split;
use mailwit_smtp::data::DataReceiver;

fuzz_target!(|data: &[u8]| {
    let [max, seed, input @ ..] = data else {
        return;
    };
    let max = usize::from(*max) * 4;
    let feed = |reads: Vec<&[u8]>| {
        let mut r = DataReceiver::new(max);
        let mut used = 0;
        for read in reads {
            if let Some(n) = r.feed(read) {
                assert!(n <= read.len());
                return Some((used + n, r.received(), r.finish()));
            }
            used += read.len();
        }
        None
    };
    let whole = feed(vec![input]);
    assert_eq!(whole, feed(split(input, *seed)));
    let Some((n, received, (content, defects))) = whole else {
        assert!(!input.windows(5).any(|w| w == b"\r\n.\r\n") && !input.starts_with(b".\r\n"));
        return;
    };
    assert_eq!(received, n as u64);
    let ended = &input[..n];
    assert!(
        ended == b".\r\n" || ended.ends_with(b"\r\n.\r\n"),
        "{ended:?}"
    );
    // The first terminator: none ends earlier.
    let first = input
        .windows(5)
        .position(|w| w == b"\r\n.\r\n")
        .map(|i| i + 5);
    assert!(
        ended == b".\r\n" || Some(n) == first,
        "stopped at {n}, first at {first:?}"
    );
    assert!(content.len() <= max);
    if !defects.bare_line_ending {
        for (i, &b) in content.iter().enumerate() {
            match b {
                b'\n' => assert!(i > 0 && content[i - 1] == b'\r'),
                b'\r' => assert_eq!(content.get(i + 1), Some(&b'\n')),
                _ => {}
            }
        }
    }
});
