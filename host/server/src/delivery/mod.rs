//! Delivery: what happens after "250 queued".
//!
//! Each spooled message goes where its policy routed it: `relay:<name>` to
//! the tenant's upstream (rules `upstreams.<name>.*`), signed with the
//! tenant's DKIM key when it has one and without the policy's control
//! headers; `sandbox` to `<data_dir>/sandbox/<tenant>/<id>.eml`, never
//! sent; `discard` nowhere. Every step is an event in the status store.
//!
//! Recipients that fail temporarily are retried with exponential backoff
//! until `max_age_secs`; permanent failures and expiry fail the recipient
//! and, unless the message is itself a bounce (null sender), queue a DSN
//! for the sender through the same machinery. A message leaves the spool
//! (`Done` record) only once every recipient has a final event; after a
//! crash the recipients without one are delivered again (at least once).
//!
//! Each event may also become a delivery report to the tenant's callback
//! server ([`reports`]).
//!
//! A message's content is in memory only while it is being delivered, or
//! while it is among the first `in_memory_queue` messages waiting for a
//! worker: any other waiting message (queued behind those, waiting for its
//! next retry, or found in the spool at start-up) keeps its envelope and
//! spool location and is read back when its turn comes, so a backlog costs
//! little memory.

pub mod dsn;
pub mod relay;
pub mod reports;
pub mod status;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::budget::{ContentBudget, Refused, Reservation, SMALL};
use mail_auth::common::crypto::{RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::DkimSigner;
use mailwit_runtime::{Route, Rules};
use mailwit_smtp::BodyType;
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use tokio::sync::{Semaphore, mpsc};

use crate::config::DeliveryConfig;
use crate::spool::{Location, Meta, Pending, Spool, Spooled};
use crate::tenants::Tenants;
use relay::{Outcome, Upstream};
use status::{Event, Status, StatusStore};

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

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

struct Job {
    /// The content is empty until loaded (see `loaded`).
    msg: Arc<Spooled>,
    /// Where the message is in the spool.
    at: Location,
    /// Whether `msg.content` holds the content.
    loaded: bool,
    /// Recipients without a final event.
    pending: Vec<String>,
    attempts: u32,
    record_received: bool,
}

pub struct Delivery {
    spool: Spool,
    reports: Arc<reports::Reports>,
    status: Arc<dyn StatusStore>,
    tenants: Arc<Tenants>,
    config: DeliveryConfig,
    hostname: String,
    sandbox_dir: PathBuf,
    tx: mpsc::UnboundedSender<Job>,
    /// A large message's content is loaded only with room reserved here.
    budget: Arc<ContentBudget>,
    /// Jobs queued and not yet started.
    waiting: AtomicUsize,
    /// Messages waiting for their next retry.
    retrying: AtomicUsize,
}

impl Delivery {
    /// Starts the dispatcher and the retention purge.
    pub fn start(
        spool: Spool,
        status: Arc<dyn StatusStore>,
        tenants: Arc<Tenants>,
        config: DeliveryConfig,
        hostname: String,
        data_dir: &std::path::Path,
        budget: Arc<ContentBudget>,
    ) -> std::io::Result<Arc<Delivery>> {
        let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
        let d = Arc::new(Delivery {
            spool,
            reports: reports::Reports::start(&data_dir.join("reports"))?,
            status,
            tenants,
            config,
            hostname,
            sandbox_dir: data_dir.join("sandbox"),
            tx,
            budget,
            waiting: AtomicUsize::new(0),
            retrying: AtomicUsize::new(0),
        });
        let workers = Arc::new(Semaphore::new(d.config.workers.max(1)));
        let this = d.clone();
        tokio::spawn(async move {
            while let Some(job) = rx.recv().await {
                let Ok(permit) = workers.clone().acquire_owned().await else {
                    return;
                };
                this.waiting.fetch_sub(1, Ordering::Relaxed);
                let this = this.clone();
                tokio::spawn(async move {
                    this.process(job).await;
                    drop(permit);
                });
            }
        });
        let this = d.clone();
        tokio::spawn(async move {
            let retention = Duration::from_secs(this.config.retention_secs);
            let every = Duration::from_secs(this.config.purge_interval_secs.max(1));
            loop {
                tokio::time::sleep(every).await;
                let cutoff = now_ms().saturating_sub(retention.as_millis() as u64);
                let status = this.status.clone();
                match tokio::task::spawn_blocking(move || status.purge(cutoff)).await {
                    Ok(Ok(n)) if n > 0 => tracing::info!(event = "status.purged", events = n),
                    Ok(Err(e)) => tracing::error!(event = "status.purge_failed", cause = %e),
                    _ => {}
                }
            }
        });
        Ok(d)
    }

    /// The queue, for `/metrics`.
    pub fn gauges(&self) -> crate::metrics::DeliveryGauges {
        let (spooled, segments) = self.spool.gauges();
        crate::metrics::DeliveryGauges {
            waiting: self.waiting.load(Ordering::Relaxed),
            retrying: self.retrying.load(Ordering::Relaxed),
            spooled,
            segments,
        }
    }

    /// Queues a job for a worker.
    fn queue(&self, job: Job) {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let _ = self.tx.send(job);
    }

    /// A message just acknowledged with 250, spooled at `at`.
    pub fn submit(&self, meta: Meta, content: Vec<u8>, at: Location) {
        let pending = meta.recipients.clone();
        // Behind a long queue, and when it is large, the content waits in
        // the spool, not here: the worker reads it back with room reserved.
        let loaded = self.waiting.load(Ordering::Relaxed) < self.config.in_memory_queue
            && content.len() <= SMALL;
        let content = if loaded { content } else { Vec::new() };
        self.queue(Job {
            msg: Arc::new(Spooled { meta, content }),
            at,
            loaded,
            pending,
            attempts: 0,
            record_received: true,
        });
    }

    /// Messages found in the spool at start-up: each recipient without a
    /// final event is delivered (again).
    pub fn recover(&self, pending: Vec<Pending>) {
        for m in pending {
            let events = self.status.message(Some(&m.meta.tenant), &m.meta.id, None);
            let done: Vec<&str> = events
                .iter()
                .filter(|e| e.status.is_final())
                .map(|e| e.recipient.as_str())
                .collect();
            let todo: Vec<String> = m
                .meta
                .recipients
                .iter()
                .filter(|r| !done.contains(&r.as_str()))
                .cloned()
                .collect();
            let record_received = !events.iter().any(|e| e.status == Status::Received);
            tracing::info!(event = "delivery.recovered", queue_id = %m.meta.id, recipients = todo.len());
            self.queue(Job {
                msg: Arc::new(Spooled {
                    meta: m.meta,
                    content: Vec::new(),
                }),
                at: m.at,
                loaded: false,
                pending: todo,
                attempts: 0,
                record_received,
            });
        }
    }

    /// Records events in the status store, then queues the delivery
    /// reports they call for.
    async fn record(&self, meta: &Meta, events: Vec<Event>) {
        self.record_steps(meta, vec![events]).await
    }

    /// Records several steps' events in one status write, then queues each
    /// step's delivery reports on its own, as if they had been written
    /// apart (a callback gets its intermediate report, then the final one).
    async fn record_steps(&self, meta: &Meta, mut steps: Vec<Vec<Event>>) {
        steps.retain(|s| !s.is_empty());
        if steps.is_empty() {
            return;
        }
        // The store takes the events; a copy only for a message that asked
        // for reports.
        let for_reports = reports::wanted(meta).then(|| steps.clone());
        let status = self.status.clone();
        let events: Vec<Event> = steps.into_iter().flatten().collect();
        match tokio::task::spawn_blocking(move || status.record(events)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(event = "status.write_failed", cause = %e),
            Err(e) => tracing::error!(event = "status.write_failed", cause = %e),
        }
        for events in for_reports.into_iter().flatten() {
            self.reports.events(meta, &events).await;
        }
    }

    fn event(
        &self,
        meta: &Meta,
        recipient: &str,
        status: Status,
        detail: impl Into<String>,
        ts_ms: u64,
    ) -> Event {
        Event {
            ts_ms,
            tenant: meta.tenant.clone(),
            message_id: meta.id.clone(),
            recipient: recipient.to_string(),
            status,
            detail: detail.into(),
        }
    }

    /// Reads the job's content back from the spool, unless it is loaded.
    async fn load(&self, job: &mut Job) -> Result<(), String> {
        if job.loaded {
            return Ok(());
        }
        let (spool, at) = (self.spool.clone(), job.at);
        let m = tokio::task::spawn_blocking(move || spool.load(&at))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        if m.meta.id != job.msg.meta.id {
            return Err(format!("spool record at {at:?} is {}", m.meta.id));
        }
        job.msg = Arc::new(m);
        job.loaded = true;
        Ok(())
    }

    /// Room for a large message's content (and a copy of it, for signing
    /// or a header removal) before it is read back; waits as long as it
    /// takes, since delivery is not in a hurry and the sessions' share
    /// comes first.
    async fn room_for(&self, job: &Job) -> Option<Reservation> {
        let len = job.at.len() as usize;
        if job.loaded || len <= SMALL {
            return None;
        }
        loop {
            match self.budget.reserve(&job.msg.meta.tenant, 2 * len).await {
                Ok(r) => return Some(r),
                Err(Refused::Busy) => continue,
                // Larger than the budget now allows (it was lowered since
                // the message was accepted): deliver it anyway.
                Err(Refused::TooLarge) => return None,
            }
        }
    }

    async fn process(self: Arc<Self>, mut job: Job) {
        // Read back from the spool (with room for it) only when there is
        // something to deliver.
        let (_room, loaded) = match job.pending.is_empty() {
            true => (None, Ok(())),
            false => (self.room_for(&job).await, self.load(&mut job).await),
        };
        if let Err(e) = &loaded {
            tracing::error!(event = "delivery.load_failed", queue_id = %job.msg.meta.id, cause = %e);
        }
        let meta = &job.msg.meta;
        // A local route (sandbox, discard) finishes at once: its Received
        // events are recorded with the outcomes, in one status write. A
        // relay attempt may take minutes, so Received is recorded first.
        let local = matches!(meta.route, Route::Sandbox | Route::Discard);
        let mut received = Vec::new();
        if job.record_received {
            let detail = format!("accepted from {} on {}", meta.peer, meta.listener);
            received = meta
                .recipients
                .iter()
                .map(|r| {
                    self.event(
                        meta,
                        r,
                        Status::Received,
                        detail.clone(),
                        meta.received_at_ms,
                    )
                })
                .collect();
            if !local || job.pending.is_empty() {
                self.record(meta, std::mem::take(&mut received)).await;
            }
        }
        if job.pending.is_empty() {
            self.done(meta).await;
            return;
        }
        let outcomes = match &loaded {
            Ok(()) => self.deliver(&job).await,
            Err(e) => job
                .pending
                .iter()
                .map(|_| Outcome::Deferred(format!("reading the message from the spool: {e}")))
                .collect(),
        };
        let now = now_ms();
        let expired = now.saturating_sub(meta.received_at_ms) > self.config.max_age_secs * 1000;
        let mut events = Vec::new();
        let mut still = Vec::new();
        let mut failed = Vec::new();
        let done = match meta.route {
            Route::Sandbox => Status::DeliveredToSandbox,
            Route::Discard => Status::Discarded,
            Route::Relay(_) => Status::Sent,
        };
        for (rcpt, outcome) in job.pending.iter().zip(outcomes) {
            match outcome {
                Outcome::Sent(reply) => events.push(self.event(meta, rcpt, done, reply, now)),
                Outcome::Deferred(why) if expired => {
                    let text = format!(
                        "retries exhausted after {} attempts; last: {why}",
                        job.attempts + 1
                    );
                    events.push(self.event(meta, rcpt, Status::Failed, text.clone(), now));
                    failed.push((rcpt.clone(), "4.4.7".to_string(), text));
                }
                Outcome::Deferred(why) => {
                    events.push(self.event(meta, rcpt, Status::Deferred, why, now));
                    still.push(rcpt.clone());
                }
                Outcome::Failed(_, status, reply) => {
                    events.push(self.event(meta, rcpt, Status::Failed, reply.clone(), now));
                    failed.push((rcpt.clone(), status, reply));
                }
            }
        }
        for e in &events {
            tracing::info!(event = "delivery", queue_id = %meta.id, tenant = %meta.tenant, status = ?e.status, detail = %e.detail);
        }
        self.record_steps(meta, vec![received, events]).await;
        if !failed.is_empty() {
            self.bounce(&job.msg, &failed).await;
        }
        if still.is_empty() {
            self.done(meta).await;
            return;
        }
        let delay = self
            .config
            .retry_initial_secs
            .saturating_mul(1u64 << job.attempts.min(20))
            .min(self.config.retry_max_secs);
        // The content is dropped while the message waits: read back then.
        let next = Job {
            msg: Arc::new(Spooled {
                meta: job.msg.meta.clone(),
                content: Vec::new(),
            }),
            at: job.at,
            loaded: false,
            pending: still,
            attempts: job.attempts + 1,
            record_received: false,
        };
        let this = self.clone();
        self.retrying.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(delay)).await;
            this.retrying.fetch_sub(1, Ordering::Relaxed);
            this.queue(next);
        });
    }

    async fn done(&self, meta: &Meta) {
        if let Err(e) = self.spool.mark_done(&meta.id) {
            tracing::error!(event = "spool.done_failed", queue_id = %meta.id, cause = %e);
        }
    }

    /// One attempt for the pending recipients; one outcome each, in order.
    async fn deliver(&self, job: &Job) -> Vec<Outcome> {
        let meta = &job.msg.meta;
        let all = |o: Outcome| job.pending.iter().map(|_| o.clone()).collect();
        match &meta.route {
            Route::Discard => all(Outcome::Sent("discarded as the tenant's route says".into())),
            Route::Sandbox => match self.capture(&job.msg).await {
                Ok(()) => all(Outcome::Sent("captured in the sandbox".into())),
                Err(e) => all(Outcome::Deferred(format!("writing to the sandbox: {e}"))),
            },
            Route::Relay(name) => {
                let Some(set) = self.tenants.get(&meta.tenant) else {
                    return all(Outcome::Deferred(format!(
                        "tenant {} not loaded",
                        meta.tenant
                    )));
                };
                let Some(up) = Upstream::from_rules(&set.rules, name) else {
                    return all(Outcome::Deferred(format!(
                        "no upstream {name:?} in the tenant's rules"
                    )));
                };
                let message = match prepare(&job.msg, &set.rules) {
                    Ok(m) => m,
                    Err(e) => return all(Outcome::Deferred(format!("DKIM signing failed: {e}"))),
                };
                let timeout = Duration::from_secs(self.config.timeout_secs);
                relay::attempt(
                    &up,
                    &self.hostname,
                    &meta.sender,
                    &job.pending,
                    &message,
                    timeout,
                )
                .await
            }
        }
    }

    /// Writes a sandboxed message under `sandbox/<tenant>/<id>.eml`.
    async fn capture(&self, m: &Spooled) -> std::io::Result<()> {
        let path = self
            .sandbox_dir
            .join(&m.meta.tenant)
            .join(format!("{}.eml", m.meta.id));
        let content = m.content.clone();
        tokio::task::spawn_blocking(move || crate::fsutil::write_durable(&path, &content))
            .await
            .map_err(std::io::Error::other)?
    }

    /// Queues a DSN for the sender, unless the message is itself a bounce.
    async fn bounce(&self, original: &Spooled, failed: &[(String, String, String)]) {
        let meta = &original.meta;
        if meta.sender.is_empty() {
            return; // never bounce a bounce
        }
        let list: Vec<dsn::FailedRecipient<'_>> = failed
            .iter()
            .map(|(r, status, why)| dsn::FailedRecipient {
                recipient: r,
                status: status.clone(),
                diagnostic: why,
            })
            .collect();
        let content = dsn::build(
            &self.hostname,
            &meta.id,
            &meta.sender,
            &list,
            &original.content,
        );
        let dsn_meta = Meta {
            id: ulid::Ulid::new().to_string(),
            received_at_ms: now_ms(),
            tenant: meta.tenant.clone(),
            login: "mailer-daemon".into(),
            peer: "local".into(),
            listener: "dsn".into(),
            helo: self.hostname.clone(),
            sender: String::new(),
            recipients: vec![meta.sender.clone()],
            body: BodyType::EightBitMime,
            metadata: vec![("dsnFor".into(), meta.id.clone())],
            remove_headers: Vec::new(),
            // A bounce of a sandboxed or discarded message still goes out.
            route: match &meta.route {
                Route::Relay(_) => meta.route.clone(),
                _ => Route::default(),
            },
            policy: "dsn".into(),
        };
        match self.spool.enqueue(&dsn_meta, &content).await {
            Ok(at) => {
                let now = now_ms();
                let events = failed
                    .iter()
                    .map(|(r, ..)| {
                        self.event(
                            meta,
                            r,
                            Status::Bounced,
                            format!("DSN {} queued for {}", dsn_meta.id, meta.sender),
                            now,
                        )
                    })
                    .collect();
                self.record(meta, events).await;
                self.submit(dsn_meta, content, at);
            }
            Err(e) => tracing::error!(event = "dsn.spool_failed", queue_id = %meta.id, cause = %e),
        }
    }
}

/// A tenant's sandbox: `(queue id, size)` of each captured message, by id.
pub fn sandbox_list(data_dir: &std::path::Path, tenant: &str) -> Vec<(String, u64)> {
    let Ok(rd) = std::fs::read_dir(data_dir.join("sandbox").join(tenant)) else {
        return Vec::new();
    };
    let mut out: Vec<(String, u64)> = rd
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let id = name.strip_suffix(".eml")?.to_string();
            Some((id, e.metadata().ok()?.len()))
        })
        .collect();
    out.sort();
    out
}

/// One sandboxed message's raw content.
pub fn sandbox_message(data_dir: &std::path::Path, tenant: &str, id: &str) -> Option<Vec<u8>> {
    if !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return None;
    }
    std::fs::read(
        data_dir
            .join("sandbox")
            .join(tenant)
            .join(format!("{id}.eml")),
    )
    .ok()
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
