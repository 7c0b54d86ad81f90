//! Reference router: the route comes from the rules.
//!
//! Rules read: `route.default`: `relay:<upstream>` (default `relay:default`),
//! `sandbox` or `discard`; `route.sandbox-recipient-domains`: recipient
//! domains whose mail goes to the sandbox (a test domain, say).
//!
//! Replies: `451 4.3.5` when `route.default` is not one of those forms (a
//! rules mistake must not lose mail).

wit_bindgen::generate!({ path: "../../wit", world: "router" });

mod check;

use exports::mailwit::policy::route::Guest;
use mailwit::policy::types::{Destination, Envelope, Metadata, Reply};

struct Router;

impl Guest for Router {
    fn route(envelope: Envelope, _metadata: Vec<Metadata>) -> Result<Destination, Reply> {
        check::route(&envelope)
    }
}

export!(Router);
