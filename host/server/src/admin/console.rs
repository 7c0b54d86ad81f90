//! The tenant console: one page (`console.html`, served at `/console` by
//! the admin listener, no build step) that signs in with a tenant token
//! (or an SMTP login, exchanged for a token of an hour) and reads
//! everything through the admin API, and the API's view of a sandboxed
//! message for it (`GET /v1/tenants/{t}/sandbox/{id}/view`).

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use mail_parser::{MessageParser, MimeHeaders};
use serde_json::{Value, json};

use super::Admin;

/// How long a console sign-in with an SMTP login lasts.
pub const SESSION_SECS: u64 = 3600;

/// `POST /v1/console/session` (`{"login", "password"}`): an SMTP login
/// checked exactly as a login is (the tenant's auth function, the auth
/// gate with its back-off, a suspended tenant refused), answered with a
/// token of its tenant for [`SESSION_SECS`].
pub async fn sign_in(admin: &Admin, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let peer = req
        .extensions()
        .get::<crate::httpd::Peer>()
        .map(|p| p.0)
        .unwrap_or_else(|| ([127, 0, 0, 1], 0).into());
    let body = match Limited::new(req.into_body(), 16 << 10).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return super::json(
                StatusCode::PAYLOAD_TOO_LARGE,
                json!({ "error": "body too large" }),
            );
        }
    };
    #[derive(serde::Deserialize)]
    struct Login {
        login: String,
        password: String,
    }
    let Ok(l) = serde_json::from_slice::<Login>(&body) else {
        return super::json(
            StatusCode::BAD_REQUEST,
            json!({ "error": "expected {\"login\", \"password\"}" }),
        );
    };
    let client = crate::policy::ClientInfo {
        ip: peer.ip(),
        port: peer.port(),
        listener: "console".into(),
        tls: false,
        server_name: None,
    };
    let principal = admin
        .policy
        .authenticate(
            &client,
            mailwit_smtp::Mechanism::Plain,
            &l.login,
            &l.password,
        )
        .await;
    match principal {
        Ok(p) => match admin.tokens.issue(&p.tenant, SESSION_SECS).await {
            Ok(issued) => {
                tracing::info!(event = "console.sign_in", tenant = %p.tenant, login = %p.login);
                super::json(StatusCode::OK, issued)
            }
            Err(e) => super::error(e),
        },
        Err(reply) => {
            tracing::info!(event = "console.sign_in_refused", code = reply.code);
            super::json(
                StatusCode::UNAUTHORIZED,
                json!({ "error": reply.to_wire().trim_end() }),
            )
        }
    }
}

/// The page. It holds no data: each request it makes carries the token.
pub const PAGE: &str = include_str!("console.html");

/// A message as the console shows it: every header, the text, the HTML
/// sanitised (ammonia: no scripts, no event handlers, no forms, no remote
/// frames), the attachments' names, types and sizes.
pub fn view(raw: &[u8]) -> Value {
    let Some(m) = MessageParser::default().parse(raw) else {
        return json!({ "subject": null, "headers": [], "text": String::from_utf8_lossy(raw), "html": null, "attachments": [] });
    };
    let headers: Vec<(String, String)> = m
        .headers_raw()
        .map(|(name, value)| (name.to_string(), value.trim().replace("\r\n", " ")))
        .collect();
    let text = m.body_text(0).map(|t| t.into_owned());
    // Only a real text/html part: mail-parser would otherwise make HTML
    // of the text.
    let has_html = m
        .parts
        .iter()
        .any(|p| matches!(p.body, mail_parser::PartType::Html(_)));
    let html = has_html
        .then(|| m.body_html(0))
        .flatten()
        .map(|h| ammonia::clean(&h));
    let attachments: Vec<Value> = m
        .attachments()
        .map(|a| {
            json!({
                "name": a.attachment_name(),
                "content_type": a.content_type().map(|c| match c.subtype() {
                    Some(s) => format!("{}/{s}", c.ctype()),
                    None => c.ctype().to_string(),
                }).unwrap_or_else(|| "application/octet-stream".into()),
                "size": a.contents().len(),
            })
        })
        .collect();
    json!({
        "subject": m.subject(),
        "headers": headers,
        "text": text,
        "html": html,
        "attachments": attachments,
    })
}

#[cfg(test)]
mod tests {
    /// Scripts and handlers are gone from the HTML; text, headers and
    /// attachments are read.
    #[test]
    fn a_message_is_viewed_with_its_html_sanitised() {
        let raw = b"From: a@example.com\r\nSubject: hi\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: multipart/alternative; boundary=c\r\n\r\n--c\r\nContent-Type: text/plain\r\n\r\nplain words\r\n--c\r\nContent-Type: text/html\r\n\r\n<p onclick=\"x()\">bold <b>words</b></p><script>alert(1)</script>\r\n--c--\r\n--b\r\nContent-Type: application/pdf; name=\"a.pdf\"\r\nContent-Disposition: attachment; filename=\"a.pdf\"\r\n\r\nPDF\r\n--b--\r\n";
        let v = super::view(raw);
        assert_eq!(v["subject"], "hi");
        assert!(v["text"].as_str().unwrap().contains("plain words"));
        let html = v["html"].as_str().unwrap();
        assert!(html.contains("<b>words</b>"), "{html}");
        assert!(
            !html.contains("script") && !html.contains("onclick"),
            "{html}"
        );
        assert_eq!(v["attachments"][0]["name"], "a.pdf");
        assert_eq!(v["attachments"][0]["content_type"], "application/pdf");
        assert!(
            v["headers"]
                .as_array()
                .unwrap()
                .iter()
                .any(|h| h[0] == "Subject")
        );
    }
}
