//! The stock function set in one component: the checks of `auth`,
//! `sender`, `content`, `ib-headers` and `router`, from their own source
//! files, behind one instance.
//!
//! The five functions answer exactly as this one does; they stay separate
//! components so that a tenant can replace one of them (its own router, a
//! stricter content check) and keep the others. A tenant that keeps them
//! all gets the same decisions for less: the host makes one call per
//! decision rather than one per function (inspection was two calls), every
//! call runs on the same instance, and one copy of the guest's runtime code
//! (allocator, bindings) is warm in the CPU's caches rather than five.
//!
//! Inspection runs the content check, then the header extraction, as the
//! host runs two inspectors in order: the first refusal wins, and the
//! metadata and header removals are the second's (the first finds none).
//! `decide-message` answers inspection and routing in one call: the host
//! makes it instead of the two, a call less per message.

wit_bindgen::generate!({ path: "../../wit", world: "stock" });

#[path = "../../auth/src/check.rs"]
mod auth;
#[path = "../../content/src/check.rs"]
mod content;
#[path = "../../ib-headers/src/check.rs"]
mod ib_headers;
#[path = "../../router/src/check.rs"]
mod router;
#[path = "../../sender/src/check.rs"]
mod sender;
#[path = "../../sender/src/senders.rs"]
mod senders;

use exports::mailwit::policy::{
    authenticate, check_sender, decide_message, inspect_message, route,
};
use mailwit::policy::types::{
    ClientInfo, Destination, Envelope, Inspection, MailParams, Mechanism, Message, MessageDecision,
    Metadata, Reply,
};

struct Stock;

impl authenticate::Guest for Stock {
    fn authenticate(
        client: ClientInfo,
        _tenant: String,
        _mechanism: Mechanism,
        login: String,
        secret: String,
    ) -> Result<String, Reply> {
        auth::authenticate(&client, login, &secret)
    }
}

impl check_sender::Guest for Stock {
    fn check_sender(sender: String, params: MailParams) -> Result<(), Reply> {
        sender::check_sender(&sender, params)
    }
}

/// The content check, then the header extraction.
fn inspect(envelope: &Envelope, message: &Message) -> Result<Inspection, Reply> {
    let mut found = content::inspect_message(envelope, message)?;
    let headers = ib_headers::inspect_message(message)?;
    found.metadata.extend(headers.metadata);
    found.remove_headers.extend(headers.remove_headers);
    Ok(found)
}

impl inspect_message::Guest for Stock {
    fn inspect_message(envelope: Envelope, message: Message) -> Result<Inspection, Reply> {
        inspect(&envelope, &message)
    }
}

impl route::Guest for Stock {
    fn route(envelope: Envelope, _metadata: Vec<Metadata>) -> Result<Destination, Reply> {
        router::route(&envelope)
    }
}

impl decide_message::Guest for Stock {
    fn decide_message(envelope: Envelope, message: Message) -> Result<MessageDecision, Reply> {
        let inspection = inspect(&envelope, &message)?;
        // The router reads no metadata: route's answer given any.
        let destination = router::route(&envelope)?;
        Ok(MessageDecision {
            inspection,
            destination,
        })
    }
}

export!(Stock);
