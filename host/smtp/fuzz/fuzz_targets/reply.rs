//! A refusal from untrusted code: accepted only as a well-formed reply.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailwit_smtp::{Reply, Status};

fuzz_target!(|data: &[u8]| {
    let [a, b, c, d, e, text @ ..] = data else {
        return;
    };
    let code = u16::from_le_bytes([*a, *b]);
    let status = Status(*c, u16::from(*d), u16::from(*e));
    let text = String::from_utf8_lossy(text);
    if let Ok(r) = Reply::rejection(code, status, &text) {
        assert!((400..600).contains(&r.code));
        mailwit_smtp_fuzz::check_reply(&r);
        assert!(r.to_wire().len() <= 3 + 1 + 8 + 200 * 4 + 2);
    }
});
