//! A tenant's registered senders: `senders.addresses` (registered
//! addresses) and `senders.domains` (verified domains), read once per
//! instance. The sender check asks it of MAIL FROM and the content check
//! of each `From:` address; both crates, and `stock`, include this file, so
//! the rule is written once (and `stock` reads the lists once).

use crate::mailwit::policy::host;

struct Senders {
    addresses: Vec<String>,
    domains: Vec<String>,
}

fn senders() -> &'static Senders {
    static SENDERS: std::sync::OnceLock<Senders> = std::sync::OnceLock::new();
    SENDERS.get_or_init(|| Senders {
        addresses: host::rule_list("senders.addresses"),
        domains: host::rule_list("senders.domains"),
    })
}

/// One of the registered addresses, or in one of the verified domains
/// (case-insensitive).
pub fn registered(addr: &str) -> bool {
    let s = senders();
    let domain = addr.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
    s.addresses.iter().any(|a| a.eq_ignore_ascii_case(addr))
        || s.domains.iter().any(|d| d.eq_ignore_ascii_case(domain))
}

/// Whether the tenant lists any registered address or verified domain
/// (the content check skips `From:` when it lists none).
#[allow(
    dead_code,
    reason = "the content check's; the sender crate includes this file too"
)]
pub fn listed() -> bool {
    let s = senders();
    !(s.addresses.is_empty() && s.domains.is_empty())
}
