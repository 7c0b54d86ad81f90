//! The content check itself, shared by this crate's component and the combined
//! `stock` component (which includes this file).

use crate::mailwit::policy::host;
use crate::mailwit::policy::types::{Envelope, Inspection, Message, Reply};
use crate::senders;

/// The rules this function reads, read once per instance: an instance never
/// sees two versions of the tenant's rules, and a warm one serves many calls.
struct Rules {
    max_size: Option<u64>,
    refuse_attachments: bool,
    headers_in_envelope: bool,
    check_from: bool,
}

fn rules() -> &'static Rules {
    static RULES: std::sync::OnceLock<Rules> = std::sync::OnceLock::new();
    RULES.get_or_init(|| Rules {
        max_size: host::rule("message.max-size").and_then(|m| m.parse().ok()),
        refuse_attachments: host::rule("message.refuse-attachments").as_deref() == Some("true"),
        headers_in_envelope: host::rule("message.headers-in-envelope").as_deref() != Some("false"),
        check_from: host::rule("senders.check-from").as_deref() != Some("false"),
    })
}

/// The addresses of an address-list header value (RFC 5322): each
/// comma-separated mailbox's `<addr-spec>`, or the bare address; commas
/// inside quotes, angle brackets or comments do not separate.
fn addresses(value: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let (mut part, mut quoted, mut angle, mut comment) = (String::new(), false, false, 0u32);
    let mut escaped = false;
    // Comments are dropped; quoted text is kept (it is a display name).
    for c in value.chars() {
        if escaped {
            escaped = false;
            if comment == 0 {
                part.push(c);
            }
            continue;
        }
        match c {
            '\\' if quoted || comment > 0 => escaped = true,
            '(' if !quoted => comment += 1,
            ')' if !quoted && comment > 0 => comment -= 1,
            _ if comment > 0 => {}
            '"' => quoted = !quoted,
            '<' if !quoted => angle = true,
            '>' if !quoted => angle = false,
            ',' if !quoted && !angle => {
                parts.push(std::mem::take(&mut part));
                continue;
            }
            _ => {}
        }
        if comment == 0 && c != '(' && c != ')' && !(c == '\\' && escaped) {
            part.push(c);
        }
    }
    parts.push(part);
    parts
        .iter()
        .filter_map(|p| {
            let addr = match (p.rfind('<'), p.rfind('>')) {
                (Some(a), Some(b)) if a < b => &p[a + 1..b],
                _ => p.as_str(),
            };
            let addr = addr.trim();
            (!addr.is_empty()).then(|| addr.to_ascii_lowercase())
        })
        .collect()
}

fn refuse(code: u16, status: &str, text: String) -> Reply {
    Reply {
        code,
        status: status.into(),
        text,
    }
}

pub fn inspect_message(envelope: &Envelope, message: &Message) -> Result<Inspection, Reply> {
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
    if rules.check_from && senders::listed() {
        let from = message
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("from"))
            .flat_map(|h| addresses(&h.value));
        for addr in from {
            if !senders::registered(&addr) {
                return Err(refuse(
                    550,
                    "5.7.1",
                    format!("From address {addr} is not a registered sender of this account"),
                ));
            }
        }
    }
    Ok(Inspection {
        metadata: Vec::new(),
        remove_headers: Vec::new(),
    })
}

/// Run natively: `cargo test -p mailwit-content --target x86_64-unknown-linux-gnu`
/// in `components/` (the host's `./test` does).
#[cfg(test)]
mod tests {
    use super::addresses;

    #[test]
    fn from_addresses_are_found_in_every_form() {
        assert_eq!(addresses("news@acme.example"), ["news@acme.example"]);
        assert_eq!(
            addresses("\"News, Daily\" <News@Acme.Example>, other@x.example"),
            ["news@acme.example", "other@x.example"]
        );
        assert_eq!(
            addresses("a@x.example (the, team), B <b@y.example>"),
            ["a@x.example", "b@y.example"]
        );
        assert_eq!(addresses("\"Q \\\" ,\" <q@z.example>"), ["q@z.example"]);
        assert!(addresses(" ").is_empty());
    }
}
