//! Extraction of the Infobip SMTP API's optional headers.
//!
//! `X-IB-bulk-id`, `X-IB-tracking-url`, `X-IB-intermediate-report`,
//! `X-IB-notify-url`, `X-IB-notify-content-type` and `X-IB-callback-data`
//! become message metadata under the seed's property names (bulkId,
//! trackingUrl, intermediateReport, notifyUrl, notifyContentType,
//! callbackData) and are removed before relay. The rules' `revision`, when
//! set, is recorded as `rulesRevision`.
//!
//! Replies: `550 5.6.0` for an `X-IB-notify-content-type` other than
//! application/json or application/xml, or an `X-IB-intermediate-report`
//! other than true or false.

wit_bindgen::generate!({ path: "../../wit", world: "inspector" });

use exports::mailwit::policy::inspect_message::Guest;
use mailwit::policy::host;
use mailwit::policy::types::{Envelope, Inspection, Message, Metadata, Reply};

const HEADERS: [(&str, &str); 6] = [
    ("X-IB-bulk-id", "bulkId"),
    ("X-IB-tracking-url", "trackingUrl"),
    ("X-IB-intermediate-report", "intermediateReport"),
    ("X-IB-notify-url", "notifyUrl"),
    ("X-IB-notify-content-type", "notifyContentType"),
    ("X-IB-callback-data", "callbackData"),
];

struct IbHeaders;

impl Guest for IbHeaders {
    fn inspect_message(_envelope: Envelope, message: Message) -> Result<Inspection, Reply> {
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
}

export!(IbHeaders);
