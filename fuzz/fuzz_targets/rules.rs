//! A tenant's rules, as uploaded (`mailwit tenant rules`): any text is
//! either refused with an error or parsed into rules that keep their
//! promises.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailwit_rules::{DEFAULT_MAX_USERS, Rules};

fuzz_target!(|data: &[u8]| {
    let Ok(source) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(rules) = Rules::parse(source) else {
        return;
    };
    assert_eq!(rules.source(), source);
    // Parsing is a function of the text.
    let again = Rules::parse(rules.source()).expect("the same text parses again");
    let users: Vec<&str> = rules.keys_under("users").collect();
    assert_eq!(users, again.keys_under("users").collect::<Vec<_>>());
    // max-users holds.
    let max = rules
        .get("max-users")
        .map_or(DEFAULT_MAX_USERS, |m| m.parse().expect("validated"));
    assert!(users.len() <= max);
    // A component never sees a stored hash; the host does, and each one
    // is a PHC string.
    for (table, key) in users
        .iter()
        .map(|k| ("users", *k))
        .chain(rules.keys_under("api-keys").map(|k| ("api-keys", k)))
    {
        let key = format!("{table}.{key}");
        assert_eq!(rules.get(&key), None, "{key} shown to components");
        assert!(rules.list(&key).is_empty(), "{key} shown to components");
        let hash = rules.secret(&key).expect("listed");
        assert!(hash.starts_with('$'), "{key} = {hash:?} is not PHC");
    }
    for key in [
        "dkim.private-key",
        "tls.private-key",
        "upstreams.default.password",
    ] {
        assert_eq!(rules.get(key), None, "{key} shown to components");
        assert!(rules.list(key).is_empty(), "{key} shown to components");
    }
    // Only hash keys are checked against: anything else is false at once.
    assert!(!rules.verify_secret("senders.domains", "x"));
});
