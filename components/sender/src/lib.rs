//! Reference sender check (Infobip, IBM, Sinch: registered senders only).
//!
//! Rules read: `senders.addresses` (registered addresses), `senders.domains`
//! (verified domains), `senders.allow-null` ("true" to accept `MAIL
//! FROM:<>`), `message.max-size` (octets; checked against a declared SIZE=).
//!
//! Replies: `550 5.7.1` for a sender that is neither registered nor in a
//! verified domain (and for the null sender unless allowed); `552 5.3.4`
//! for a declared size over the tenant's cap.

wit_bindgen::generate!({ path: "../../wit", world: "sender-check" });

use exports::mailwit::policy::check_sender::Guest;
use mailwit::policy::host;
use mailwit::policy::types::{MailParams, Reply, Session};

struct Sender;

fn refuse(code: u16, status: &str, text: &str) -> Reply {
    Reply { code, status: status.into(), text: text.into() }
}

impl Guest for Sender {
    fn check_sender(_session: Session, sender: String, params: MailParams) -> Result<(), Reply> {
        if let (Some(size), Some(max)) = (params.size, host::rule("message.max-size").and_then(|m| m.parse::<u64>().ok())) {
            if size > max {
                return Err(refuse(552, "5.3.4", "Message size exceeds the account's limit"));
            }
        }
        if sender.is_empty() {
            return if host::rule("senders.allow-null").as_deref() == Some("true") {
                Ok(())
            } else {
                Err(refuse(550, "5.7.1", "Null sender not allowed for this account"))
            };
        }
        let domain = sender.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
        let registered = host::rule_list("senders.addresses").iter().any(|a| a.eq_ignore_ascii_case(&sender));
        let verified = host::rule_list("senders.domains").iter().any(|d| d.eq_ignore_ascii_case(domain));
        if registered || verified {
            Ok(())
        } else {
            Err(refuse(550, "5.7.1", "Sender address not allowed: use a registered sender or a verified domain"))
        }
    }
}

export!(Sender);
