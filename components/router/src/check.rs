//! The routing itself, shared by this crate's component and the combined
//! `stock` component (which includes this file).

use crate::mailwit::policy::host;
use crate::mailwit::policy::types::{Destination, Envelope, Reply};

/// The rules this function reads, read once per instance: an instance never
/// sees two versions of the tenant's rules, and a warm one serves many calls.
struct Rules {
    sandboxed: Vec<String>,
    default: String,
}

fn rules() -> &'static Rules {
    static RULES: std::sync::OnceLock<Rules> = std::sync::OnceLock::new();
    RULES.get_or_init(|| Rules {
        sandboxed: host::rule_list("route.sandbox-recipient-domains"),
        default: host::rule("route.default").unwrap_or_else(|| "relay:default".into()),
    })
}

pub fn route(envelope: &Envelope) -> Result<Destination, Reply> {
    let rules = rules();
    let sandboxed = &rules.sandboxed;
    if !sandboxed.is_empty()
        && envelope.recipients.iter().all(|r| {
            let d = r.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
            sandboxed.iter().any(|s| s.eq_ignore_ascii_case(d))
        })
    {
        return Ok(Destination::Sandbox);
    }
    match rules.default.as_str() {
        "sandbox" => Ok(Destination::Sandbox),
        "discard" => Ok(Destination::Discard),
        r => match r.strip_prefix("relay:") {
            Some(target) if !target.is_empty() => Ok(Destination::Relay(target.to_string())),
            _ => {
                host::log(
                    host::Level::Error,
                    "route.default is not relay:<name>, sandbox or discard",
                );
                Err(Reply {
                    code: 451,
                    status: "4.3.5".into(),
                    text: "Routing is misconfigured, try again later".into(),
                })
            }
        },
    }
}
