//! A refusal from untrusted code, exactly as a policy component returns it
//! (code, enhanced status as text, reply text): accepted only as a
//! well-formed reply.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailwit_smtp::Reply;

fuzz_target!(|data: &[u8]| {
    // code (2 bytes, little-endian), the status's length, status, text.
    let [a, b, n, rest @ ..] = data else {
        return;
    };
    let code = u16::from_le_bytes([*a, *b]);
    let (status, text) = rest.split_at(usize::from(*n).min(rest.len()));
    let (status, text) = (
        String::from_utf8_lossy(status),
        String::from_utf8_lossy(text),
    );
    if let Ok(r) = Reply::from_component(code, &status, &text) {
        assert!((400..600).contains(&r.code));
        let s = r.status.expect("a rejection has an enhanced status");
        assert_eq!(u16::from(s.0), r.code / 100);
        mailwit_fuzz::check_reply(&r);
        assert!(r.to_wire().len() <= 3 + 1 + 10 + 200 * 4 + 2);
    }
});
