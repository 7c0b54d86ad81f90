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

mod check;

use exports::mailwit::policy::inspect_message::Guest;
use mailwit::policy::types::{Envelope, Inspection, Message, Reply};

struct IbHeaders;

impl Guest for IbHeaders {
    fn inspect_message(_envelope: Envelope, message: Message) -> Result<Inspection, Reply> {
        check::inspect_message(&message)
    }
}

export!(IbHeaders);
