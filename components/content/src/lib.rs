//! Reference content checks.
//!
//! Rules read: `message.max-size` (octets), `message.refuse-attachments`
//! ("true" to refuse any attachment, as IBM can), and
//! `message.headers-in-envelope` ("false" to turn off the Infobip rule that
//! every To and Cc address must also be a RCPT TO recipient; on by default),
//! and `senders.addresses` / `senders.domains` with `senders.check-from`
//! ("false" to turn it off): every `From:` address must be a registered
//! sender or in a verified domain, as the MAIL FROM address must (Infobip:
//! "you must use one of your Infobip verified domains (or registered
//! senders)", in the From field a person sees). Skipped when the tenant
//! lists neither.
//!
//! Replies: `552 5.3.4` over the size cap; `550 5.6.1` attachments refused;
//! `550 5.7.1` a To/Cc address that is not a recipient of the envelope, or
//! a `From:` address that is not a registered sender.

wit_bindgen::generate!({ path: "../../wit", world: "inspector" });

mod check;
#[path = "../../sender/src/senders.rs"]
mod senders;

use exports::mailwit::policy::inspect_message::Guest;
use mailwit::policy::types::{Envelope, Inspection, Message, Reply};

struct Content;

impl Guest for Content {
    fn inspect_message(envelope: Envelope, message: Message) -> Result<Inspection, Reply> {
        check::inspect_message(&envelope, &message)
    }
}

export!(Content);
