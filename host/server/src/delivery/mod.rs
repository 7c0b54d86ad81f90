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
//! the queue only once every recipient has a final event;
//! after a crash the recipients without one are delivered again (at least
//! once). Each event may also become a delivery report to the tenant's
//! callback server ([`reports`]).
//!
//! Messages come from the [`Queue`] (due now, or due again after a retry's
//! delay); a message the queue has handed out before (a retry, a recovery
//! after a restart, a redelivery by a shared queue) is delivered only to
//! its recipients without a final event in the status store. Its content
//! is read back from the queue, with room reserved in the memory budget,
//! unless the queue still held it.
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

use std::sync::Arc;
use std::time::Duration;

use crate::budget::{ContentBudget, Refused, Reservation, SMALL};
use mailwit_runtime::Route;
use tokio::sync::Semaphore;

use crate::config::DeliveryConfig;
use crate::queue::{Due, Queue};
use crate::spool::{Meta, Spooled};
use crate::tenants::Tenants;
use crate::wallclock::now_ms;
pub use attempt::Outcome;
use status::{Event, Status, StatusStore};

/// How often a suspended tenant's held mail is looked at again: at most
/// this long after a resume, it is on its way.
const HOLD_RECHECK: Duration = Duration::from_secs(2);

/// A message being delivered.
struct Job {
    due: Due,
    /// Recipients without a final event.
    pending: Vec<String>,
    record_received: bool,
}

pub struct Delivery {
    queue: Arc<dyn Queue>,
    reports: Arc<reports::Reports>,
    status: Arc<dyn StatusStore>,
    tenants: Arc<Tenants>,
    config: DeliveryConfig,
    hostname: String,
    sandbox: Arc<dyn sandbox::SandboxStore>,
    /// A large message's content is loaded only with room reserved here.
    budget: Arc<ContentBudget>,
}

impl Delivery {
    /// Starts the workers (taking due messages from `queue`) and the
    /// retention purge.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        queue: Arc<dyn Queue>,
        status: Arc<dyn StatusStore>,
        sandbox: Arc<dyn sandbox::SandboxStore>,
        reports: Arc<dyn reports::ReportStore>,
        tenants: Arc<Tenants>,
        config: DeliveryConfig,
        hostname: String,
        budget: Arc<ContentBudget>,
    ) -> Arc<Delivery> {
        let d = Arc::new(Delivery {
            queue,
            reports: reports::Reports::start(
                reports,
                status.clone(),
                reports::ReportPolicy::from_config(&config),
            ),
            status,
            tenants,
            config,
            hostname,
            sandbox,
            budget,
        });
        let workers = Arc::new(Semaphore::new(d.config.workers.max(1)));
        let this = d.clone();
        tokio::spawn(async move {
            // A worker's permit first, then a message: a shared queue hands
            // a message only to a host with a worker free for it.
            loop {
                let Ok(permit) = workers.clone().acquire_owned().await else {
                    return;
                };
                let Some(due) = this.queue.next().await else {
                    return;
                };
                let this = this.clone();
                tokio::spawn(async move {
                    this.process(due).await;
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
                match this.status.purge(cutoff).await {
                    Ok(n) if n > 0 => tracing::info!(event = "status.purged", events = n),
                    Ok(_) => {}
                    Err(e) => tracing::error!(event = "status.purge_failed", cause = %e),
                }
                // Sandboxed messages go with their status.
                for t in this.tenants.list() {
                    match sandbox::expire(&*this.sandbox, &t.tenant, cutoff).await {
                        Ok(n) if n > 0 => {
                            tracing::info!(event = "sandbox.purged", tenant = %t.tenant, messages = n)
                        }
                        Ok(_) => {}
                        Err(e) => {
                            tracing::error!(event = "sandbox.purge_failed", tenant = %t.tenant, cause = %e)
                        }
                    }
                }
            }
        });
        d
    }

    /// The queue, for `/metrics`.
    pub fn gauges(&self) -> crate::queue::Gauges {
        self.queue.gauges()
    }

    /// The job for a due message: every recipient when it is fresh, else
    /// those without a final event. `Err` when the status store cannot
    /// say which those are.
    async fn job(&self, due: Due) -> Result<Job, (Due, std::io::Error)> {
        let meta = &due.message.meta;
        if due.fresh {
            return Ok(Job {
                pending: meta.recipients.clone(),
                record_received: true,
                due,
            });
        }
        let events = match self
            .status
            .message(Some(&meta.tenant), &meta.id, None)
            .await
        {
            Ok(events) => events,
            Err(e) => return Err((due, e)),
        };
        let done: Vec<&str> = events
            .iter()
            .filter(|e| e.status.is_final())
            .map(|e| e.recipient.as_str())
            .collect();
        let pending: Vec<String> = meta
            .recipients
            .iter()
            .filter(|r| !done.contains(&r.as_str()))
            .cloned()
            .collect();
        let record_received = !events.iter().any(|e| e.status == Status::Received);
        Ok(Job {
            pending,
            record_received,
            due,
        })
    }

    /// Records events in the status store, then queues the delivery
    /// reports they call for.
    async fn record(&self, meta: &Meta, events: Vec<Event>) {
        self.record_steps(meta, vec![events]).await
    }

    /// Queues each step's delivery reports on its own, as if they had been
    /// written apart (a callback gets its intermediate report, then the
    /// final one), then records the steps' events in one status write.
    /// Reports first: after a crash in between, the recipients have no
    /// final event, so they are delivered again and their report is sent
    /// twice rather than never.
    async fn record_steps(&self, meta: &Meta, mut steps: Vec<Vec<Event>>) {
        steps.retain(|s| !s.is_empty());
        if steps.is_empty() {
            return;
        }
        if reports::wanted(meta) {
            for events in &steps {
                self.reports.events(meta, events).await;
            }
        }
        let events: Vec<Event> = steps.into_iter().flatten().collect();
        if let Err(e) = self.status.record(events).await {
            tracing::error!(event = "status.write_failed", cause = %e);
        }
    }

    /// Reads the job's content back from the queue, unless it is loaded.
    async fn load(&self, job: &mut Job) -> Result<(), String> {
        if job.due.loaded {
            return Ok(());
        }
        let m = self
            .queue
            .load(&job.due.ticket)
            .await
            .map_err(|e| e.to_string())?;
        job.due.message = Arc::new(m);
        job.due.loaded = true;
        Ok(())
    }

    /// Room for a large message's content (and a copy of it, for signing
    /// or a header removal) before it is read back; waits as long as it
    /// takes, since delivery is not in a hurry and the sessions' share
    /// comes first.
    async fn room_for(&self, job: &Job) -> Option<Reservation> {
        let len = job.due.size as usize;
        if job.due.loaded || len <= SMALL {
            return None;
        }
        loop {
            match self
                .budget
                .reserve(&job.due.message.meta.tenant, 2 * len)
                .await
            {
                Ok(r) => return Some(r),
                Err(Refused::Busy) => continue,
                // Larger than the budget now allows (it was lowered since
                // the message was accepted): deliver it anyway.
                Err(Refused::TooLarge) => return None,
            }
        }
    }

    async fn process(self: Arc<Self>, due: Due) {
        // A suspended tenant's mail waits in the queue until it is resumed.
        let tenant = &due.message.meta.tenant;
        if self.tenants.suspension(tenant).is_some() {
            let id = due.message.meta.id.clone();
            tracing::debug!(event = "delivery.held", queue_id = %id, tenant = %tenant, why = "the tenant is suspended");
            if let Err(e) = self.queue.retry_later(due, HOLD_RECHECK).await {
                tracing::error!(event = "queue.retry_failed", queue_id = %id, cause = %e);
            }
            return;
        }
        let mut job = match self.job(due).await {
            Ok(job) => job,
            // Which recipients are done is unknown: try again later rather
            // than deliver twice or not at all.
            Err((due, e)) => {
                let id = due.message.meta.id.clone();
                tracing::error!(event = "status.read_failed", queue_id = %id, cause = %e);
                let delay = Duration::from_secs(self.config.retry_initial_secs);
                if let Err(e) = self.queue.retry_later(due, delay).await {
                    tracing::error!(event = "queue.retry_failed", queue_id = %id, cause = %e);
                }
                return;
            }
        };
        // Read back from the queue (with room for it) only when there is
        // something to deliver.
        let (_room, loaded) = match job.pending.is_empty() {
            true => (None, Ok(())),
            false => (self.room_for(&job).await, self.load(&mut job).await),
        };
        if let Err(e) = &loaded {
            tracing::error!(event = "delivery.load_failed", queue_id = %job.due.message.meta.id, cause = %e);
        }
        let msg = job.due.message.clone();
        let meta = &msg.meta;
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
                // A relayed message is handed to its route in the same
                // write (its first attempt starts now).
                if let Route::Relay(name) = &meta.route {
                    let now = now_ms();
                    received.extend(job.pending.iter().map(|r| {
                        Event::new(
                            meta,
                            r,
                            Status::Relaying,
                            format!("handed to relay:{name}"),
                            now,
                        )
                    }));
                }
                self.record(meta, std::mem::take(&mut received)).await;
            }
        }
        if job.pending.is_empty() {
            self.done(&job.due).await;
            return;
        }
        let outcomes = match &loaded {
            Ok(()) => self.attempt(&job).await,
            Err(e) => job
                .pending
                .iter()
                .map(|_| Outcome::Deferred(format!("reading the message from the queue: {e}")))
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
                        job.due.attempts + 1
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
            // A test address's DSN stays in the sandbox with its message:
            // nothing of a test leaves the machine.
            let to_sandbox = meta.route == Route::Sandbox
                && failed.iter().all(|(r, ..)| sandbox::fails_as_a_test(r));
            self.bounce(&msg, &failed, to_sandbox).await;
        }
        if still.is_empty() {
            self.done(&job.due).await;
            return;
        }
        let delay = self
            .config
            .retry_initial_secs
            .saturating_mul(1u64 << job.due.attempts.min(20))
            .min(self.config.retry_max_secs);
        let id = meta.id.clone();
        if let Err(e) = self
            .queue
            .retry_later(job.due, Duration::from_secs(delay))
            .await
        {
            // It stays queued: the queue delivers it again when it can.
            tracing::error!(event = "queue.retry_failed", queue_id = %id, cause = %e);
        }
    }

    async fn done(&self, due: &Due) {
        if let Err(e) = self.queue.finish(&due.ticket).await {
            tracing::error!(event = "queue.finish_failed", queue_id = %due.message.meta.id, cause = %e);
        }
    }

    /// One attempt for the pending recipients, in the home of the
    /// message's route; one outcome each, in order.
    async fn attempt(&self, job: &Job) -> Vec<Outcome> {
        let (m, pending) = (&*job.due.message, &job.pending);
        match &m.meta.route {
            Route::Relay(name) => {
                let relay = relay::Relay {
                    tenants: &self.tenants,
                    helo: &self.hostname,
                    timeout: Duration::from_secs(self.config.timeout_secs),
                };
                relay.deliver(name, m, pending).await
            }
            Route::Sandbox => {
                let cap = self.config.sandbox_max_bytes;
                sandbox::deliver(&*self.sandbox, m, pending, job.due.attempts, cap).await
            }
            Route::Discard => discard::deliver(pending.len()),
        }
    }

    /// Queues a DSN for the sender, unless the message is itself a bounce;
    /// routed as `dsn::meta` says, or to the sandbox when `to_sandbox`.
    async fn bounce(
        &self,
        original: &Spooled,
        failed: &[(String, String, String)],
        to_sandbox: bool,
    ) {
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
        let mut dsn_meta = dsn::meta(meta, &self.hostname, now_ms());
        if to_sandbox {
            dsn_meta.route = Route::Sandbox;
        }
        let dsn_id = dsn_meta.id.clone();
        match self.queue.enqueue(dsn_meta, content).await {
            Ok(()) => {
                let now = now_ms();
                let events = failed
                    .iter()
                    .map(|(r, ..)| {
                        Event::new(
                            meta,
                            r,
                            Status::Bounced,
                            format!("DSN {dsn_id} queued for {}", meta.sender),
                            now,
                        )
                    })
                    .collect();
                self.record(meta, events).await;
            }
            Err(e) => tracing::error!(event = "dsn.queue_failed", queue_id = %meta.id, cause = %e),
        }
    }
}
