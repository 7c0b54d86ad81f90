//! Delivery reports to the tenant's callback server (`X-IB-notify-url`), in
//! JSON or XML as `X-IB-notify-content-type` asks, carrying the message id,
//! bulk id, recipient, status, timestamp, the next hop's reply and the
//! `X-IB-callback-data`. Final states always; intermediate ones (received,
//! deferred, bounced) when `X-IB-intermediate-report: true`.
//!
//! Reports never ride the SMTP path. Each is stored durably in a
//! [`ReportStore`] and a background sender POSTs it, retrying with backoff
//! while the callback server is down, and drops it once the server answers
//! 2xx. [`FileReports`] keeps them as files under `<data_dir>/reports/`;
//! [`jetstream::JetStreamReports`] in a work-queue stream of the cluster,
//! which any host's sender takes from. `https://` URLs are verified against
//! the system's trust store (`rustls-native-certs`, which honours
//! `SSL_CERT_FILE`).

pub mod jetstream;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::status::{Event, Status};
use crate::queue::Ticket;
use crate::spool::Meta;

/// Longest wait between two attempts of one report.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Time allowed for one POST.
const POST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Pending {
    url: String,
    content_type: String,
    body: String,
    /// Whose report it is, for the event that says it was given up
    /// (a report stored before these were kept has none).
    #[serde(default)]
    tenant: String,
    #[serde(default)]
    message_id: String,
    #[serde(default)]
    recipients: Vec<String>,
    #[serde(default)]
    created_ms: u64,
}

/// What the sender may reach and how long it tries (`[delivery]`).
#[derive(Debug, Clone, Default)]
pub struct ReportPolicy {
    pub max_age: Duration,
    pub allow_loopback: bool,
    pub allow_private: bool,
    pub allow_link_local: bool,
}

impl ReportPolicy {
    pub fn from_config(c: &crate::config::DeliveryConfig) -> ReportPolicy {
        let has = |k: &str| c.notify_allow.iter().any(|a| a == k);
        ReportPolicy {
            max_age: Duration::from_secs(c.report_max_age_secs),
            allow_loopback: has("loopback"),
            allow_private: has("private"),
            allow_link_local: has("link-local"),
        }
    }

    /// Why a callback may not be sent to `ip`, if it may not.
    fn refuses(&self, ip: std::net::IpAddr) -> Option<&'static str> {
        use std::net::IpAddr;
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        let (loopback, private, link_local, unspecified) = match ip {
            IpAddr::V4(a) => {
                let o = a.octets();
                (
                    a.is_loopback(),
                    a.is_private() || (o[0] == 100 && (o[1] & 0xc0) == 64),
                    a.is_link_local(),
                    a.is_unspecified() || a.is_broadcast(),
                )
            }
            IpAddr::V6(a) => {
                let s = a.segments();
                (
                    a.is_loopback(),
                    (s[0] & 0xfe00) == 0xfc00,
                    (s[0] & 0xffc0) == 0xfe80,
                    a.is_unspecified(),
                )
            }
        };
        match () {
            _ if unspecified => Some("an unspecified or broadcast address"),
            _ if loopback && !self.allow_loopback => Some("a loopback address"),
            _ if private && !self.allow_private => Some("a private address"),
            _ if link_local && !self.allow_link_local => Some("a link-local address"),
            _ => None,
        }
    }
}

/// Why a POST did not happen.
enum PostError {
    /// Try again later.
    Temporary(String),
    /// Never: the URL is not one the host will call.
    Refused(String),
}

/// Where reports wait until their callback server took them.
#[async_trait]
pub trait ReportStore: Send + Sync {
    /// Stores a report durably.
    async fn push(&self, report: Vec<u8>) -> std::io::Result<()>;
    /// The next report due (waiting until there is one): its ticket, its
    /// bytes, and how many attempts it had.
    async fn next(&self) -> (Ticket, Vec<u8>, u32);
    /// Sent (or unreadable): dropped.
    async fn done(&self, ticket: Ticket);
    /// Not taken: due again after `delay`.
    async fn later(&self, ticket: Ticket, delay: Duration);
}

pub struct Reports {
    store: Arc<dyn ReportStore>,
    status: Arc<dyn super::status::StatusStore>,
    policy: ReportPolicy,
}

fn meta_value<'a>(meta: &'a Meta, key: &str) -> Option<&'a str> {
    meta.metadata
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// Whether the message asked for delivery reports (it has a notify URL).
pub fn wanted(meta: &Meta) -> bool {
    meta_value(meta, "notifyUrl").is_some()
}

fn xml_escape(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control())
        .map(|c| match c {
            '&' => "&amp;".to_string(),
            '<' => "&lt;".to_string(),
            '>' => "&gt;".to_string(),
            '"' => "&quot;".to_string(),
            '\'' => "&apos;".to_string(),
            c => c.to_string(),
        })
        .collect()
}

impl Reports {
    /// Starts the background sender over the reports in `store`.
    pub fn start(
        store: Arc<dyn ReportStore>,
        status: Arc<dyn super::status::StatusStore>,
        policy: ReportPolicy,
    ) -> Arc<Reports> {
        let r = Arc::new(Reports {
            store,
            status,
            policy,
        });
        let this = r.clone();
        tokio::spawn(async move { this.run().await });
        r
    }

    /// Queues the reports these events call for (none without a notify URL).
    pub async fn events(&self, meta: &Meta, events: &[Event]) {
        let Some(url) = meta_value(meta, "notifyUrl") else {
            return;
        };
        let intermediate =
            meta_value(meta, "intermediateReport").is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let xml = meta_value(meta, "notifyContentType")
            .is_some_and(|v| v.eq_ignore_ascii_case("application/xml"));
        // Handing a message to the relay is mailwit's own step, not one the
        // Infobip reports know.
        let wanted: Vec<&Event> = events
            .iter()
            .filter(|e| e.status.is_final() || (intermediate && e.status != Status::Relaying))
            .collect();
        if wanted.is_empty() {
            return;
        }
        let bulk = meta_value(meta, "bulkId");
        let callback = meta_value(meta, "callbackData");
        let body = if xml {
            let mut s = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<reports>\n");
            for e in &wanted {
                s.push_str(&format!(
                    "  <report>\n    <messageId>{}</messageId>\n    <bulkId>{}</bulkId>\n    <to>{}</to>\n    <status>{}</status>\n    <final>{}</final>\n    <timestamp>{}</timestamp>\n    <reply>{}</reply>\n    <callbackData>{}</callbackData>\n  </report>\n",
                    xml_escape(&e.message_id),
                    xml_escape(bulk.unwrap_or("")),
                    xml_escape(&e.recipient),
                    status_name(e.status),
                    e.status.is_final(),
                    e.ts_ms,
                    xml_escape(&e.detail),
                    xml_escape(callback.unwrap_or("")),
                ));
            }
            s + "</reports>\n"
        } else {
            let results: Vec<serde_json::Value> = wanted
                .iter()
                .map(|e| {
                    serde_json::json!({
                        "messageId": e.message_id,
                        "bulkId": bulk,
                        "to": e.recipient,
                        "status": status_name(e.status),
                        "final": e.status.is_final(),
                        "timestamp": e.ts_ms,
                        "reply": e.detail,
                        "callbackData": callback,
                    })
                })
                .collect();
            serde_json::json!({ "results": results }).to_string()
        };
        let pending = Pending {
            url: url.to_string(),
            content_type: if xml {
                "application/xml"
            } else {
                "application/json"
            }
            .into(),
            body,
            tenant: meta.tenant.clone(),
            message_id: meta.id.clone(),
            recipients: wanted.iter().map(|e| e.recipient.clone()).collect(),
            created_ms: crate::wallclock::now_ms(),
        };
        let bytes = serde_json::to_vec(&pending).expect("serializable");
        if let Err(e) = self.store.push(bytes).await {
            tracing::error!(event = "report.write_failed", cause = %e);
        }
    }

    async fn run(self: Arc<Self>) {
        loop {
            let (ticket, bytes, attempts) = self.store.next().await;
            let Ok(p) = serde_json::from_slice::<Pending>(&bytes) else {
                tracing::warn!(event = "report.unreadable");
                self.store.done(ticket).await;
                continue;
            };
            let age = crate::wallclock::now_ms().saturating_sub(p.created_ms);
            match post(&p, &self.policy).await {
                Ok(()) => {
                    tracing::info!(event = "report.sent", url = %p.url);
                    self.store.done(ticket).await;
                }
                Err(PostError::Refused(why)) => self.give_up(ticket, &p, why).await,
                Err(PostError::Temporary(e))
                    if p.created_ms > 0 && age >= self.policy.max_age.as_millis() as u64 =>
                {
                    let why = format!(
                        "not taken within {} s (last: {e})",
                        self.policy.max_age.as_secs()
                    );
                    self.give_up(ticket, &p, why).await
                }
                Err(PostError::Temporary(e)) => {
                    let wait = Duration::from_secs(1u64 << (attempts + 1).min(9)).min(MAX_BACKOFF);
                    tracing::info!(event = "report.deferred", url = %p.url, cause = %e, retry_in = ?wait);
                    self.store.later(ticket, wait).await;
                }
            }
        }
    }
}

impl Reports {
    /// Drops a report for good, with a status event per recipient saying
    /// so (the event first: a crash in between sends it again rather than
    /// losing the event).
    async fn give_up(&self, ticket: Ticket, p: &Pending, why: String) {
        tracing::warn!(event = "report.given_up", url = %p.url, queue_id = %p.message_id, why = %why);
        if !p.message_id.is_empty() {
            let detail = format!("delivery report to {} given up: {why}", p.url);
            let events = p
                .recipients
                .iter()
                .map(|r| Event {
                    ts_ms: crate::wallclock::now_ms(),
                    tenant: p.tenant.clone(),
                    message_id: p.message_id.clone(),
                    recipient: r.clone(),
                    status: Status::ReportFailed,
                    detail: detail.clone(),
                    bulk_id: None,
                })
                .collect();
            if let Err(e) = self.status.record(events).await {
                tracing::error!(event = "status.write_failed", queue_id = %p.message_id, cause = %e);
                self.store.later(ticket, MAX_BACKOFF).await;
                return;
            }
        }
        self.store.done(ticket).await;
    }
}

/// The embedded report store: one file per report under a directory, and
/// this process's backoff for each.
pub struct FileReports {
    dir: PathBuf,
    wake: Notify,
    /// Per report file: attempts so far and when it is due again.
    backoff: Mutex<HashMap<PathBuf, (u32, Instant)>>,
}

impl FileReports {
    pub fn open(dir: &Path) -> std::io::Result<FileReports> {
        std::fs::create_dir_all(dir)?;
        Ok(FileReports {
            dir: dir.to_path_buf(),
            wake: Notify::new(),
            backoff: Mutex::default(),
        })
    }
}

#[async_trait]
impl ReportStore for FileReports {
    async fn push(&self, report: Vec<u8>) -> std::io::Result<()> {
        let path = self.dir.join(format!("{}.json", ulid::Ulid::new()));
        tokio::task::spawn_blocking(move || crate::fsutil::write_durable(&path, &report))
            .await
            .map_err(std::io::Error::other)??;
        self.wake.notify_one();
        Ok(())
    }

    async fn next(&self) -> (Ticket, Vec<u8>, u32) {
        loop {
            let mut files: Vec<PathBuf> = match std::fs::read_dir(&self.dir) {
                Ok(rd) => rd
                    .filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "json"))
                    .collect(),
                Err(_) => Vec::new(),
            };
            files.sort();
            let now = Instant::now();
            for path in files {
                let attempts = {
                    let backoff = self.backoff.lock().expect("backoff lock");
                    match backoff.get(&path) {
                        Some((_, next)) if *next > now => continue,
                        Some((n, _)) => *n,
                        None => 0,
                    }
                };
                match std::fs::read(&path) {
                    Ok(bytes) => return (Ticket::new(path), bytes, attempts),
                    // Removed since it was listed.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(_) => return (Ticket::new(path), Vec::new(), attempts),
                }
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    async fn done(&self, ticket: Ticket) {
        let path = ticket.get::<PathBuf>();
        let _ = std::fs::remove_file(path);
        self.backoff.lock().expect("backoff lock").remove(path);
    }

    async fn later(&self, ticket: Ticket, delay: Duration) {
        let path = ticket.get::<PathBuf>().clone();
        let mut backoff = self.backoff.lock().expect("backoff lock");
        let entry = backoff.entry(path).or_insert((0, Instant::now()));
        entry.0 += 1;
        entry.1 = Instant::now() + delay;
    }
}

fn status_name(s: Status) -> &'static str {
    match s {
        Status::Received => "RECEIVED",
        Status::Relaying => "RELAYING",
        Status::Deferred => "DEFERRED",
        Status::Sent => "SENT",
        Status::DeliveredToSandbox => "DELIVERED_TO_SANDBOX",
        Status::Discarded => "DISCARDED",
        Status::Failed => "FAILED",
        Status::Bounced => "BOUNCED",
        Status::ReportFailed => "REPORT_FAILED",
    }
}

/// The TLS client for `https://` callbacks, built once.
fn tls() -> &'static tokio_rustls::TlsConnector {
    static TLS: std::sync::OnceLock<tokio_rustls::TlsConnector> = std::sync::OnceLock::new();
    TLS.get_or_init(|| {
        let mut roots = rustls::RootCertStore::empty();
        let found = rustls_native_certs::load_native_certs();
        for e in &found.errors {
            tracing::warn!(event = "report.trust_store", cause = %e);
        }
        let (added, _) = roots.add_parsable_certificates(found.certs);
        tracing::debug!(event = "report.trust_store", certificates = added);
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    })
}

/// Sends `req` over an HTTP/1 connection on `io`.
async fn send<I>(io: I, req: hyper::Request<Full<Bytes>>) -> Result<hyper::StatusCode, String>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let res = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = res.status();
    let _ = res.into_body().collect().await;
    Ok(status)
}

/// One POST; Ok on a 2xx answer.
/// POSTs one report. The host name is resolved here and every address
/// checked against the policy, then the connection goes to a checked
/// address (so a name that changes its answer cannot slip past).
async fn post(p: &Pending, policy: &ReportPolicy) -> Result<(), PostError> {
    let refused = PostError::Refused;
    let uri: hyper::Uri = p
        .url
        .parse()
        .map_err(|e| refused(format!("bad notify URL: {e}")))?;
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err(refused(format!("unsupported scheme in {}", p.url))),
    };
    let host = uri
        .host()
        .ok_or_else(|| refused("notify URL without host".into()))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| PostError::Temporary(format!("resolving {host}: {e}")))?
        .collect();
    if let Some((addr, why)) = addrs
        .iter()
        .find_map(|a| policy.refuses(a.ip()).map(|why| (a, why)))
    {
        return Err(refused(format!(
            "{host} resolves to {why} ({}), which [delivery] notify_allow does not allow",
            addr.ip()
        )));
    }
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect(&addrs[..])
            .await
            .map_err(|e| e.to_string())?;
        let req = hyper::Request::post(uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"))
            .header("host", format!("{host}:{port}"))
            .header("content-type", &p.content_type)
            .body(Full::new(Bytes::from(p.body.clone())))
            .map_err(|e| e.to_string())?;
        let status = if https {
            let name =
                rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| e.to_string())?;
            let tls = tls()
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            send(tls, req).await?
        } else {
            send(tcp, req).await?
        };
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("callback answered {status}"))
        }
    };
    tokio::time::timeout(POST_TIMEOUT, attempt)
        .await
        .map_err(|_| "timed out".to_string())
        .and_then(|r| r)
        .map_err(PostError::Temporary)
}
