//! The header extraction itself, shared by this crate's component and the combined
//! `stock` component (which includes this file).

use crate::mailwit::policy::host;
use crate::mailwit::policy::types::{Inspection, Message, Metadata, Reply};

const HEADERS: [(&str, &str); 6] = [
    ("X-IB-bulk-id", "bulkId"),
    ("X-IB-tracking-url", "trackingUrl"),
    ("X-IB-intermediate-report", "intermediateReport"),
    ("X-IB-notify-url", "notifyUrl"),
    ("X-IB-notify-content-type", "notifyContentType"),
    ("X-IB-callback-data", "callbackData"),
];

pub fn inspect_message(message: &Message) -> Result<Inspection, Reply> {
    let mut metadata = Vec::new();
    let mut remove = Vec::new();
    for h in &message.headers {
        let Some((name, key)) = HEADERS
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(&h.name))
        else {
            continue;
        };
        let value = h.value.trim().to_string();
        let ok = match *key {
            "notifyContentType" => matches!(
                value.to_ascii_lowercase().as_str(),
                "application/json" | "application/xml"
            ),
            "intermediateReport" => {
                matches!(value.to_ascii_lowercase().as_str(), "true" | "false")
            }
            _ => true,
        };
        if !ok {
            return Err(Reply {
                code: 550,
                status: "5.6.0".into(),
                text: format!("Invalid {name} header"),
            });
        }
        metadata.push(Metadata {
            key: key.to_string(),
            value,
        });
        if !remove.iter().any(|r: &String| r.eq_ignore_ascii_case(name)) {
            remove.push(name.to_string());
        }
    }
    // Read once per instance: an instance never sees two versions of
    // the tenant's rules.
    static REVISION: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    if let Some(rev) = REVISION.get_or_init(|| host::rule("revision")) {
        metadata.push(Metadata {
            key: "rulesRevision".into(),
            value: rev.clone(),
        });
    }
    Ok(Inspection {
        metadata,
        remove_headers: remove,
    })
}
