//! The whole session: first byte the configuration, second the way the
//! rest is split into reads.
//!
//! - the outputs are the same however the input is split (up to STARTTLS,
//!   after which pipelined bytes are discarded by design);
//! - at most one message per `CRLF.CRLF` in the input;
//! - the bytes buffered never exceed the longest line plus one read;
//! - every reply is well formed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailwit_fuzz::{occurrences, run, split};

fuzz_target!(|data: &[u8]| {
    let [flags, seed, input @ ..] = data else {
        return;
    };
    let whole = run(*flags, &[input]);
    let split_run = run(*flags, &split(input, *seed));
    assert_eq!(
        whole, split_run,
        "outputs depend on how the input was split"
    );
    assert!(
        whole.messages <= occurrences(input, b"\r\n.\r\n"),
        "{} messages from {} CRLF.CRLF",
        whole.messages,
        occurrences(input, b"\r\n.\r\n")
    );
});
