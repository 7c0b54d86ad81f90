//! The `relay:<upstream>` route: the tenant's upstream from its rules
//! (`upstreams.<name>.*`), the message without the policy's control
//! headers and signed with the tenant's DKIM key when it has one, then one
//! attempt with `mail-send`, recipient by recipient so that each gets its
//! own outcome.

use std::time::Duration;

use mail_auth::common::crypto::{RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::DkimSigner;
use mail_send::SmtpClientBuilder;
use mail_send::smtp::message::Parameters;
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use tokio::io::{AsyncRead, AsyncWrite};

use mailwit_runtime::Rules;

use super::attempt::{Outcome, each};
use super::status::Status;
use crate::spool::Spooled;
use crate::tenants::Tenants;

/// The final event of a relayed recipient.
pub const DONE: Status = Status::Sent;

/// Headers signed by DKIM when present.
const SIGNED_HEADERS: [&str; 8] = [
    "From",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "MIME-Version",
    "Content-Type",
];

/// What a relay needs besides the message.
pub struct Relay<'a> {
    pub tenants: &'a Tenants,
    /// The name this host gives in EHLO.
    pub helo: &'a str,
    pub timeout: Duration,
}

impl Relay<'_> {
    /// One attempt for `recipients` of `m` through its tenant's upstream
    /// `name`; one outcome each, in order. What is missing (the tenant,
    /// the upstream, a usable DKIM key) defers them all.
    pub async fn deliver(&self, name: &str, m: &Spooled, recipients: &[String]) -> Vec<Outcome> {
        let meta = &m.meta;
        let defer = |why: String| each(recipients.len(), Outcome::Deferred(why));
        let Some(set) = self.tenants.get(&meta.tenant) else {
            return defer(format!("tenant {} not loaded", meta.tenant));
        };
        let Some(up) = Upstream::from_rules(&set.rules, name) else {
            return defer(format!("no upstream {name:?} in the tenant's rules"));
        };
        let message = match prepare(m, &set.rules) {
            Ok(message) => message,
            Err(e) => return defer(format!("DKIM signing failed: {e}")),
        };
        attempt(
            &up,
            self.helo,
            &meta.sender,
            recipients,
            &message,
            self.timeout,
        )
        .await
    }
}

/// An upstream from the tenant's rules: `upstreams.<name>.host`, `.port`,
/// `.tls` (`none`, `starttls`, `implicit`; default `starttls`), `.user`,
/// `.password`, `.insecure` ("true" accepts any certificate; for tests).
#[derive(Debug, Clone)]
pub struct Upstream {
    pub host: String,
    pub port: u16,
    pub tls: String,
    pub credentials: Option<(String, String)>,
    pub insecure: bool,
}

impl Upstream {
    pub fn from_rules(rules: &Rules, name: &str) -> Option<Upstream> {
        let key = |k: &str| format!("upstreams.{name}.{k}");
        let host = rules.get(&key("host"))?.to_string();
        let port = rules
            .get(&key("port"))
            .and_then(|p| p.parse().ok())
            .unwrap_or(25);
        let tls = rules.get(&key("tls")).unwrap_or("starttls").to_string();
        let credentials = match (rules.get(&key("user")), rules.secret(&key("password"))) {
            (Some(u), Some(p)) => Some((u.to_string(), p.to_string())),
            _ => None,
        };
        Some(Upstream {
            host,
            port,
            tls,
            credentials,
            insecure: rules.get(&key("insecure")) == Some("true"),
        })
    }
}

fn reply_text(r: &smtp_proto::Response<String>) -> String {
    let message = r.message.replace(['\r', '\n'], " ");
    if r.esc[0] == 0 {
        // The next hop sent no enhanced status code.
        format!("{} {message}", r.code)
    } else {
        format!(
            "{} {}.{}.{} {message}",
            r.code, r.esc[0], r.esc[1], r.esc[2]
        )
    }
}

/// The outcome for every recipient, in order. A connection-level failure
/// defers them all.
pub async fn attempt(
    up: &Upstream,
    helo: &str,
    sender: &str,
    recipients: &[String],
    message: &[u8],
    timeout: Duration,
) -> Vec<Outcome> {
    let mut b = SmtpClientBuilder::new(up.host.clone(), up.port)
        .implicit_tls(up.tls == "implicit")
        .helo_host(helo)
        .timeout(timeout);
    if up.insecure {
        b = b.allow_invalid_certs();
    }
    if let Some((u, p)) = &up.credentials {
        b = b.credentials((u.clone(), p.clone()));
    }
    let deferred = |e: String| each(recipients.len(), Outcome::Deferred(e));
    if up.tls == "none" {
        match b.connect_plain().await {
            Ok(mut c) => transaction(&mut c, sender, recipients, message).await,
            Err(e) => deferred(format!("connecting to {}:{}: {e}", up.host, up.port)),
        }
    } else {
        match b.connect().await {
            Ok(mut c) => transaction(&mut c, sender, recipients, message).await,
            Err(e) => deferred(format!("connecting to {}:{}: {e}", up.host, up.port)),
        }
    }
}

async fn transaction<T: AsyncRead + AsyncWrite + Unpin>(
    c: &mut mail_send::SmtpClient<T>,
    sender: &str,
    recipients: &[String],
    message: &[u8],
) -> Vec<Outcome> {
    let all = |o: Outcome| each(recipients.len(), o);
    match c
        .cmd(format!("MAIL FROM:<{sender}>{}\r\n", Parameters::default()).as_bytes())
        .await
    {
        Ok(r) if r.code / 100 == 2 => {}
        Ok(r) if r.code / 100 == 5 => return all(Outcome::Failed(r.code, esc(&r), reply_text(&r))),
        Ok(r) => return all(Outcome::Deferred(reply_text(&r))),
        Err(e) => return all(Outcome::Deferred(e.to_string())),
    }
    let mut out = Vec::with_capacity(recipients.len());
    for rcpt in recipients {
        out.push(
            match c.cmd(format!("RCPT TO:<{rcpt}>\r\n").as_bytes()).await {
                Ok(r) if r.code / 100 == 2 => Outcome::Sent(String::new()),
                Ok(r) if r.code / 100 == 5 => Outcome::Failed(r.code, esc(&r), reply_text(&r)),
                Ok(r) => Outcome::Deferred(reply_text(&r)),
                Err(e) => Outcome::Deferred(e.to_string()),
            },
        );
    }
    if !out.iter().any(|o| matches!(o, Outcome::Sent(_))) {
        let _ = c.cmd(b"RSET\r\n").await;
        return out;
    }
    let data = async {
        let r = c.cmd(b"DATA\r\n").await?;
        if r.code != 354 {
            return Ok(r);
        }
        c.write_message(message).await?;
        c.read().await
    };
    let final_outcome = match data.await {
        Ok(r) if r.code / 100 == 2 => Outcome::Sent(reply_text(&r)),
        Ok(r) if r.code / 100 == 5 => Outcome::Failed(r.code, esc(&r), reply_text(&r)),
        Ok(r) => Outcome::Deferred(reply_text(&r)),
        Err(e) => Outcome::Deferred(e.to_string()),
    };
    let _ = c.cmd(b"QUIT\r\n").await;
    out.into_iter()
        .map(|o| match o {
            Outcome::Sent(_) => final_outcome.clone(),
            other => other,
        })
        .collect()
}

fn esc(r: &smtp_proto::Response<String>) -> String {
    if r.esc[0] == 0 {
        format!("{}.0.0", r.code / 100)
    } else {
        format!("{}.{}.{}", r.esc[0], r.esc[1], r.esc[2])
    }
}

/// The message as relayed: the policy's control headers removed, then a
/// DKIM signature prepended when the tenant's rules give `dkim.domain`,
/// `dkim.selector` and `dkim.private-key` (PEM, PKCS#1 or PKCS#8 RSA).
pub fn prepare(m: &Spooled, rules: &Rules) -> Result<Vec<u8>, String> {
    let message = remove_headers(&m.content, &m.meta.remove_headers);
    let (Some(domain), Some(selector), Some(key)) = (
        rules.get("dkim.domain"),
        rules.get("dkim.selector"),
        rules.secret("dkim.private-key"),
    ) else {
        return Ok(message);
    };
    let der = PrivateKeyDer::from_pem_slice(key.as_bytes())
        .map_err(|e| format!("dkim.private-key: {e}"))?;
    let key = RsaKey::<Sha256>::from_key_der(der).map_err(|e| e.to_string())?;
    let signature = DkimSigner::from_key(key)
        .domain(domain)
        .selector(selector)
        .headers(SIGNED_HEADERS)
        .sign(&message)
        .map_err(|e| e.to_string())?;
    let mut out = signature.to_header().into_bytes();
    out.extend_from_slice(&message);
    Ok(out)
}

/// Drops the named header fields (with their continuation lines) from the
/// header section; the body is untouched.
pub fn remove_headers(content: &[u8], names: &[String]) -> Vec<u8> {
    if names.is_empty() {
        return content.to_vec();
    }
    let end = content
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 2)
        .unwrap_or(content.len());
    let mut out = Vec::with_capacity(content.len());
    let mut dropping = false;
    for line in content[..end].split_inclusive(|&b| b == b'\n') {
        let continuation = matches!(line.first(), Some(b' ' | b'\t'));
        if !continuation {
            let name = line.split(|&b| b == b':').next().unwrap_or_default();
            dropping = names
                .iter()
                .any(|n| n.as_bytes().eq_ignore_ascii_case(name.trim_ascii()));
        }
        if !dropping {
            out.extend_from_slice(line);
        }
    }
    out.extend_from_slice(&content[end..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_named_headers_with_their_folds() {
        let m = b"From: a@x.example\r\nX-IB-bulk-id: one\r\n two\r\nSubject: s\r\nx-ib-notify-url: u\r\n\r\nX-IB-bulk-id: in body stays\r\n";
        let out = remove_headers(m, &["X-IB-bulk-id".into(), "X-IB-notify-url".into()]);
        assert_eq!(
            out,
            b"From: a@x.example\r\nSubject: s\r\n\r\nX-IB-bulk-id: in body stays\r\n"
        );
    }
}
