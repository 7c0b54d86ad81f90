//! Delivery: what happens after "250 queued".
//!
//! Each spooled message goes where its policy routed it, and each route has
//! one home: [`relay`] (`relay:<name>`: the tenant's upstream, DKIM-signed,
//! without the policy's control headers), [`sandbox`] (kept, never sent)
//! and [`discard`] (nowhere). Each answers one attempt with an
//! [`Outcome`] per recipient; this module is the job's lifecycle around
//! it, and the one place that matches the typed route.
//!
//! Every step is an event in the status store ([`status`]). Recipients
//! that fail temporarily are retried with exponential backoff until
//! `max_age_secs`; permanent failures and expiry fail the recipient and,
//! unless the message is itself a bounce (null sender), queue a DSN
//! ([`dsn`]) for the sender through the same machinery. A message leaves
//! the spool (`Done` record) only once every recipient has a final event;
//! after a crash the recipients without one are delivered again (at least
//! once). Each event may also become a delivery report to the tenant's
//! callback server ([`reports`]).
//!
//! A message's content is in memory only while it is being delivered, or
//! while it is among the first `in_memory_queue` messages waiting for a
//! worker: any other waiting message (queued behind those, waiting for its
//! next retry, or found in the spool at start-up) keeps its envelope and
//! spool location and is read back when its turn comes, so a backlog costs
//! little memory.
//!
//! | module | imports (within `delivery`) |
//! |---|---|
//! | this one | all below |
//! | `relay`, `sandbox`, `discard` | `attempt`, `status` |
//! | `reports` | `status` |
//! | `dsn`, `status`, `attempt` | none |

pub mod attempt;
pub mod discard;
pub mod dsn;
pub mod relay;
pub mod reports;
pub mod sandbox;
pub mod status;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::budget::{ContentBudget, Refused, Reservation, SMALL};
use mailwit_runtime::Route;
use tokio::sync::{Semaphore, mpsc};

use crate::config::DeliveryConfig;
use crate::spool::{Location, Meta, Pending, Spool, Spooled};
use crate::tenants::Tenants;
use crate::wallclock::now_ms;
pub use attempt::Outcome;
use status::{Event, Status, StatusStore};

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
    /// The sandbox lives under it.
    data_dir: PathBuf,
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
            data_dir: data_dir.to_path_buf(),
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
            fsyncs: self.spool.syncs(),
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
        let local = !matches!(meta.route, Route::Relay(_));
        let mut received = Vec::new();
        if job.record_received {
            let detail = format!("accepted from {} on {}", meta.peer, meta.listener);
            received = meta
                .recipients
                .iter()
                .map(|r| {
                    Event::new(
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
            Ok(()) => self.attempt(&job).await,
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
            Route::Relay(_) => relay::DONE,
            Route::Sandbox => sandbox::DONE,
            Route::Discard => discard::DONE,
        };
        for (rcpt, outcome) in job.pending.iter().zip(outcomes) {
            match outcome {
                Outcome::Sent(reply) => events.push(Event::new(meta, rcpt, done, reply, now)),
                Outcome::Deferred(why) if expired => {
                    let text = format!(
                        "retries exhausted after {} attempts; last: {why}",
                        job.attempts + 1
                    );
                    events.push(Event::new(meta, rcpt, Status::Failed, text.clone(), now));
                    failed.push((rcpt.clone(), "4.4.7".to_string(), text));
                }
                Outcome::Deferred(why) => {
                    events.push(Event::new(meta, rcpt, Status::Deferred, why, now));
                    still.push(rcpt.clone());
                }
                Outcome::Failed(_, status, reply) => {
                    events.push(Event::new(meta, rcpt, Status::Failed, reply.clone(), now));
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

    /// One attempt for the pending recipients, in the home of the
    /// message's route; one outcome each, in order.
    async fn attempt(&self, job: &Job) -> Vec<Outcome> {
        let (m, pending) = (&*job.msg, &job.pending);
        match &m.meta.route {
            Route::Relay(name) => {
                let relay = relay::Relay {
                    tenants: &self.tenants,
                    helo: &self.hostname,
                    timeout: Duration::from_secs(self.config.timeout_secs),
                };
                relay.deliver(name, m, pending).await
            }
            Route::Sandbox => sandbox::deliver(&self.data_dir, m, pending.len()).await,
            Route::Discard => discard::deliver(pending.len()),
        }
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
        let dsn_meta = dsn::meta(meta, &self.hostname, now_ms());
        match self.spool.enqueue(&dsn_meta, &content).await {
            Ok(at) => {
                let now = now_ms();
                let events = failed
                    .iter()
                    .map(|(r, ..)| {
                        Event::new(
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
