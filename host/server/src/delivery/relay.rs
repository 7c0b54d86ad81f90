//! One relay attempt to a tenant's upstream SMTP server, with `mail-send`,
//! recipient by recipient so that each gets its own outcome.

use std::time::Duration;

use mail_send::SmtpClientBuilder;
use mail_send::smtp::message::Parameters;
use tokio::io::{AsyncRead, AsyncWrite};

use mailwit_runtime::Rules;

/// How one recipient fared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted by the next hop, with its reply.
    Sent(String),
    /// Try again later.
    Deferred(String),
    /// Permanent failure: code, enhanced status, reply.
    Failed(u16, String, String),
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
    let deferred = |e: String| {
        recipients
            .iter()
            .map(|_| Outcome::Deferred(e.clone()))
            .collect()
    };
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
    let all = |o: Outcome| recipients.iter().map(|_| o.clone()).collect::<Vec<_>>();
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
