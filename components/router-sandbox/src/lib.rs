//! A replacement router that a tenant can deploy in place of the stock one:
//! every message goes to the sandbox (a staging account, say). When the
//! rules list `staging.domains`, only a message whose recipients are all in
//! those domains goes to the sandbox, and the others follow `route.default`
//! as the stock router reads it (`sandbox`, `discard` or `relay:<name>`;
//! `relay:default` when absent or malformed).

wit_bindgen::generate!({ path: "../../wit", world: "router" });

use exports::mailwit::policy::route::Guest;
use mailwit::policy::host;
use mailwit::policy::types::{Destination, Envelope, Metadata, Reply};

struct SandboxRouter;

fn domain(address: &str) -> &str {
    address.rsplit_once('@').map_or("", |(_, d)| d)
}

impl Guest for SandboxRouter {
    fn route(envelope: Envelope, _metadata: Vec<Metadata>) -> Result<Destination, Reply> {
        let staging = host::rule_list("staging.domains");
        if staging.is_empty()
            || envelope
                .recipients
                .iter()
                .all(|r| staging.iter().any(|d| d.eq_ignore_ascii_case(domain(r))))
        {
            return Ok(Destination::Sandbox);
        }
        Ok(match host::rule("route.default").as_deref() {
            Some("sandbox") => Destination::Sandbox,
            Some("discard") => Destination::Discard,
            Some(r) => match r.strip_prefix("relay:") {
                Some(name) if !name.is_empty() => Destination::Relay(name.to_string()),
                _ => Destination::Relay("default".into()),
            },
            None => Destination::Relay("default".into()),
        })
    }
}

export!(SandboxRouter);
