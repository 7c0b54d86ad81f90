//! Reference content checks.
//!
//! Rules read: `message.max-size` (octets), `message.refuse-attachments`
//! ("true" to refuse any attachment, as IBM can), and
//! `message.headers-in-envelope` ("false" to turn off the Infobip rule that
//! every To and Cc address must also be a RCPT TO recipient; on by default).
//!
//! Replies: `552 5.3.4` over the size cap; `550 5.6.1` attachments refused;
//! `550 5.7.1` a To/Cc address that is not a recipient of the envelope.

wit_bindgen::generate!({ path: "../../wit", world: "inspector" });

use exports::mailwit::policy::inspect_message::Guest;
use mailwit::policy::host;
use mailwit::policy::types::{Envelope, Inspection, Message, Reply};

struct Content;

/// The rules this function reads, read once per instance: an instance never
/// sees two versions of the tenant's rules, and a warm one serves many calls.
struct Rules {
    max_size: Option<u64>,
    refuse_attachments: bool,
    headers_in_envelope: bool,
}

fn rules() -> &'static Rules {
    static RULES: std::sync::OnceLock<Rules> = std::sync::OnceLock::new();
    RULES.get_or_init(|| Rules {
        max_size: host::rule("message.max-size").and_then(|m| m.parse().ok()),
        refuse_attachments: host::rule("message.refuse-attachments").as_deref() == Some("true"),
        headers_in_envelope: host::rule("message.headers-in-envelope").as_deref() != Some("false"),
    })
}

fn refuse(code: u16, status: &str, text: String) -> Reply {
    Reply {
        code,
        status: status.into(),
        text,
    }
}

impl Guest for Content {
    fn inspect_message(envelope: Envelope, message: Message) -> Result<Inspection, Reply> {
        let rules = rules();
        if let Some(max) = rules.max_size
            && message.size > max
        {
            return Err(refuse(
                552,
                "5.3.4",
                "Message size exceeds the account's limit".into(),
            ));
        }
        if rules.refuse_attachments && !message.attachments.is_empty() {
            return Err(refuse(
                550,
                "5.6.1",
                "Attachments are not allowed for this account".into(),
            ));
        }
        if rules.headers_in_envelope {
            for addr in message.to.iter().chain(message.cc.iter()) {
                if !envelope
                    .recipients
                    .iter()
                    .any(|r| r.eq_ignore_ascii_case(addr))
                {
                    return Err(refuse(
                        550,
                        "5.7.1",
                        format!("To/Cc address {addr} is not a RCPT TO recipient"),
                    ));
                }
            }
        }
        Ok(Inspection {
            metadata: Vec::new(),
            remove_headers: Vec::new(),
        })
    }
}

export!(Content);
