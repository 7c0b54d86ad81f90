//! Delivery status notifications (RFC 3464): a `multipart/report` for the
//! envelope sender, built with `mail-builder`.

use mail_builder::MessageBuilder;
use mail_builder::headers::content_type::ContentType;
use mail_builder::mime::MimePart;
use mailwit_runtime::Route;
use mailwit_smtp::BodyType;

use crate::spool::Meta;

/// One recipient that failed for good (a 5xx, or retries ran out), and why.
pub struct FailedRecipient<'a> {
    pub recipient: &'a str,
    /// Enhanced status ("5.1.1"; "4.4.7" when the message expired).
    pub status: String,
    /// The reply or error, for humans.
    pub diagnostic: &'a str,
}

/// The spool record of the DSN for `original`'s sender, queued by the
/// mailer daemon of `reporting_host` at `now_ms`: a bounce of a sandboxed
/// or discarded message still goes out (relayed to `default`).
pub fn meta(original: &Meta, reporting_host: &str, now_ms: u64) -> Meta {
    Meta {
        id: ulid::Ulid::new().to_string(),
        received_at_ms: now_ms,
        tenant: original.tenant.clone(),
        login: "mailer-daemon".into(),
        peer: "local".into(),
        listener: "dsn".into(),
        helo: reporting_host.to_string(),
        sender: String::new(),
        recipients: vec![original.sender.clone()],
        body: BodyType::EightBitMime,
        metadata: vec![("dsnFor".into(), original.id.clone())],
        remove_headers: Vec::new(),
        route: match &original.route {
            Route::Relay(_) => original.route.clone(),
            _ => Route::default(),
        },
        policy: "dsn".into(),
    }
}

/// Builds the DSN for `original` (its header section is returned).
pub fn build(
    reporting_host: &str,
    original_id: &str,
    sender: &str,
    failed: &[FailedRecipient<'_>],
    original: &[u8],
) -> Vec<u8> {
    let text = format!(
        "This is the mail system at {reporting_host}.\r\n\r\n\
         Your message {original_id} could not be delivered to one or more recipients.\r\n\r\n{}",
        failed
            .iter()
            .map(|f| format!("<{}>: {}\r\n", f.recipient, f.diagnostic))
            .collect::<String>()
    );
    let mut status =
        format!("Reporting-MTA: dns; {reporting_host}\r\nX-Mailwit-Queue-ID: {original_id}\r\n");
    // A DSN is sent only once a recipient is given up on, so its action is
    // always "failed" (RFC 3464 2.3.3; "delayed" would say it is still being
    // tried), also for an expiry's 4.4.7, as Postfix and sendmail report it.
    for f in failed {
        status.push_str(&format!(
            "\r\nFinal-Recipient: rfc822; {}\r\nAction: failed\r\nStatus: {}\r\nDiagnostic-Code: smtp; {}\r\n",
            f.recipient,
            f.status,
            f.diagnostic.replace(['\r', '\n'], " ")
        ));
    }
    let headers_end = original
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 2)
        .unwrap_or(original.len());
    let report = MimePart::new(
        ContentType::new("multipart/report").attribute("report-type", "delivery-status"),
        vec![
            MimePart::new("text/plain", text),
            MimePart::new("message/delivery-status", status),
            MimePart::new(
                "text/rfc822-headers",
                String::from_utf8_lossy(&original[..headers_end]).into_owned(),
            ),
        ],
    );
    let daemon = format!("mailer-daemon@{reporting_host}");
    MessageBuilder::new()
        .from(("Mail Delivery System", daemon.as_str()))
        .to(sender)
        .subject("Undelivered Mail Returned to Sender")
        .header(
            "Auto-Submitted",
            mail_builder::headers::raw::Raw::new("auto-replied"),
        )
        .body(report)
        .write_to_vec()
        .unwrap_or_default()
}
