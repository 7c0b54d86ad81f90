//! Command lines: never a panic; what parses is what the rules allow.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailwit_smtp::command::{Command, parse, valid_address};

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    match parse(line) {
        Ok(Command::Mail { address, .. }) => {
            assert!(address.is_empty() || valid_address(&address), "{address:?}");
        }
        Ok(Command::Rcpt { address, .. }) => assert!(valid_address(&address), "{address:?}"),
        Ok(Command::Ehlo(name) | Command::Helo(name)) => {
            assert!(!name.is_empty() && name.len() <= 255 && !name.contains(' '));
        }
        Ok(Command::Auth { mechanism, .. }) => {
            assert!(!mechanism.is_empty());
            assert_eq!(mechanism, mechanism.to_ascii_uppercase());
        }
        Ok(_) => {}
        Err(e) => mailwit_fuzz::check_reply(&e.reply()),
    }
});
