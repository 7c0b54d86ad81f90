//! The whole session: first byte the configuration, second the way the
//! rest is split into reads.
//!
//! - the outputs are the same however the input is split (up to STARTTLS,
//!   after which pipelined bytes are discarded by design);
//! - at most one message per `LF.CRLF` in the input: a message ends at
//!   `CRLF.CRLF`, or at a `.CRLF` right after the DATA command line, which
//!   may end in a bare LF as every command line may (the data target
//!   checks that inside the data only `CRLF.CRLF` ends it);
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
    // Found by this target: "DATA\n.\r\n" is an empty message, with no
    // CRLF.CRLF in the input (seed `corpus/session/data-after-bare-lf`).
    assert!(
        whole.messages <= occurrences(input, b"\n.\r\n"),
        "{} messages from {} LF.CRLF",
        whole.messages,
        occurrences(input, b"\n.\r\n")
    );
});
