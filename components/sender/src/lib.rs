//! Reference sender check (Infobip, IBM, Sinch: registered senders only).
//!
//! Rules read: `senders.addresses` (registered addresses), `senders.domains`
//! (verified domains), `senders.allow-null` ("true" to accept `MAIL
//! FROM:<>`), `message.max-size` (octets; checked against a declared SIZE=),
//! `usage.max-per-second` and `usage.max-per-day`: a tenant's own rate
//! rules, read against the host's counters (`host::current_usage`), which count
//! the message being decided.
//!
//! Replies: `550 5.7.1` for a sender that is neither registered nor in a
//! verified domain (and for the null sender unless allowed); `552 5.3.4`
//! for a declared size over the tenant's cap; `451 4.7.1` over one of the
//! tenant's own rates.

wit_bindgen::generate!({ path: "../../wit", world: "sender-check" });

mod check;
mod senders;

use exports::mailwit::policy::check_sender::Guest;
use mailwit::policy::types::{MailParams, Reply};

struct Sender;

impl Guest for Sender {
    fn check_sender(sender: String, params: MailParams) -> Result<(), Reply> {
        check::check_sender(&sender, params)
    }
}

export!(Sender);
