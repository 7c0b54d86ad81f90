//! The cluster's queue: a JetStream stream with work-queue retention that
//! every host publishes to, and one durable pull consumer with explicit
//! acks that every host's delivery workers take from.
//!
//! - **Enqueue**: the message is one stream message (the spool's record
//!   format, CRC included, deduplicated by its queue id). Content too large
//!   for one NATS message goes to the object store first, the envelope to
//!   the stream after; `enqueue` returns once JetStream acknowledged both,
//!   and only then does the client get its `250`. Sessions publish
//!   concurrently, so many acknowledgements are in flight at once.
//! - **A late message is never delivered**: the client library buffers a
//!   publish while it is disconnected and sends it when it reconnects, long
//!   after the session answered `451` (and its client retried). So a
//!   message is published only while connected, and carries a deadline
//!   (the submitter's timeout, plus a second for clocks): one that
//!   JetStream stored after it is dropped unread (`queue.late`), and its
//!   content with it. What remains is the window every at-least-once queue
//!   has: an acknowledgement lost in the network after the store; that
//!   message is delivered although the client got `451`.
//! - **Delivery**: a worker holds a message while it delivers it, telling
//!   the cluster it is still working (`+WPI`) every third of `ack_wait`;
//!   a host that dies stops doing so, and after `ack_wait` the message goes
//!   to another host. `finish` acknowledges it (every recipient has a
//!   final event), `retry_later` is a negative ack with the delay: the
//!   schedule is the cluster's. A message delivered again (by any host)
//!   goes only to its recipients without a final event.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::consumer::{self, PullConsumer, pull};
use async_nats::jetstream::message::{Acker, PublishMessage};
use async_nats::jetstream::{self, AckKind, object_store, stream};
use async_trait::async_trait;
use tokio::io::AsyncReadExt;

use super::{Due, Gauges, Queue, QueueError, Ticket};
use crate::cluster::{Cluster, Puller, token};
use crate::spool::record::{Kind, decode, decode_message, encode_message};
use crate::spool::{Meta, Spooled};

/// Marks a stream message whose content is in the object store.
const CONTENT_HEADER: &str = "Mailwit-Content";
/// The content's size, when it is in the object store.
const SIZE_HEADER: &str = "Mailwit-Size";
/// When the submitter stops waiting for the acknowledgement (Unix ms,
/// plus [`CLOCK_SKEW_MS`]).
const DEADLINE_HEADER: &str = "Mailwit-Deadline";
/// Room left in a NATS message for its headers.
const HEADER_ROOM: usize = 4096;
/// How far apart the hosts' and the NATS servers' clocks may be.
const CLOCK_SKEW_MS: u64 = 1000;

pub struct JetStreamQueue {
    cluster: Cluster,
    subject: String,
    objects: object_store::ObjectStore,
    puller: Puller,
    closed: std::sync::atomic::AtomicBool,
    gauges: Arc<Mutex<Gauges>>,
}

/// A cluster queue's ticket: the message and how to acknowledge it. While
/// it lives, the cluster hears every `ack_wait / 3` that a worker is on it.
struct Entry {
    meta: Meta,
    acker: Arc<Acker>,
    /// The content is in the object store under the queue id.
    object: bool,
    progress: tokio::task::JoinHandle<()>,
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.progress.abort();
    }
}

impl JetStreamQueue {
    /// Creates (or finds) the stream, the consumer and the object store,
    /// waiting until JetStream answers. `batch`: messages fetched at once
    /// (the delivery workers' count).
    pub async fn open(cluster: &Cluster, batch: usize) -> JetStreamQueue {
        let c = cluster.config.clone();
        let name = cluster.stream_name("QUEUE");
        let subject = cluster.subject("queue");
        let js = cluster.js.clone();
        let stream_config = stream::Config {
            name: name.clone(),
            subjects: vec![format!("{subject}.>")],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            num_replicas: c.replicas,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        };
        let stream = Cluster::until_ready("the queue stream", || {
            js.get_or_create_stream(stream_config.clone())
        })
        .await;
        let consumer_config = pull::Config {
            durable_name: Some("delivery".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(c.ack_wait_secs.max(3)),
            max_deliver: -1,
            max_ack_pending: 100_000,
            num_replicas: c.replicas,
            ..Default::default()
        };
        let consumer: PullConsumer = Cluster::until_ready("the delivery consumer", || {
            stream.get_or_create_consumer("delivery", consumer_config.clone())
        })
        .await;
        let objects = cluster.object_store("CONTENT").await;
        let q = JetStreamQueue {
            cluster: cluster.clone(),
            subject,
            objects,
            puller: Puller::new(consumer.clone(), batch, "queue"),
            closed: Default::default(),
            gauges: Arc::default(),
        };
        tokio::spawn(watch_gauges(consumer, stream, q.gauges.clone()));
        q
    }

    fn unavailable(what: &str, e: impl std::fmt::Display) -> QueueError {
        QueueError::Unavailable(format!("{what}: {e}"))
    }

    /// A stream message as a due message; `None` (and terminated, so it
    /// is never delivered again) when it is not a mailwit record.
    fn due(&self, m: jetstream::Message) -> Option<Due> {
        let (delivered, stored_ms) = match m.info() {
            Ok(i) => (i.delivered.max(1), unix_ms(i.published)),
            Err(_) => (1, 0),
        };
        let deadline = m
            .headers
            .as_ref()
            .and_then(|h| h.get(DEADLINE_HEADER))
            .and_then(|v| v.as_str().parse::<u64>().ok());
        let object = m
            .headers
            .as_ref()
            .and_then(|h| h.get(CONTENT_HEADER))
            .is_some_and(|v| v.as_str() == "object");
        let stored_size = m
            .headers
            .as_ref()
            .and_then(|h| h.get(SIZE_HEADER))
            .and_then(|v| v.as_str().parse::<u64>().ok());
        let (m, acker) = m.split();
        let acker = Arc::new(acker);
        let decoded = decode(&m.payload).and_then(|(kind, payload, _)| match kind {
            Kind::Message => decode_message(payload),
            _ => None,
        });
        let Some((meta, content)) = decoded else {
            tracing::error!(event = "queue.bad_record", subject = %m.subject, "not a mailwit record: terminated");
            tokio::spawn(async move {
                let _ = acker.ack_with(AckKind::Term).await;
            });
            return None;
        };
        if deadline.is_some_and(|d| stored_ms > d) {
            // Its session answered 451 before JetStream stored it.
            tracing::warn!(event = "queue.late", queue_id = %meta.id, stored_ms, deadline_ms = deadline.unwrap_or(0), "stored after its submitter gave up: dropped");
            let objects = self.objects.clone();
            tokio::spawn(async move {
                if acker.ack_with(AckKind::Term).await.is_ok() && object {
                    let _ = objects.delete(meta.id.as_str()).await;
                }
            });
            return None;
        }
        let size = match object {
            true => stored_size.unwrap_or(0),
            false => m.payload.len() as u64,
        };
        let message = Arc::new(Spooled {
            meta: meta.clone(),
            content: if object { Vec::new() } else { content.to_vec() },
        });
        let progress = {
            let acker = acker.clone();
            let every = Duration::from_secs(self.cluster.config.ack_wait_secs.max(3)) / 3;
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    let _ = acker.ack_with(AckKind::Progress).await;
                }
            })
        };
        Some(Due {
            ticket: Ticket::new(Entry {
                meta,
                acker,
                object,
                progress,
            }),
            message,
            loaded: !object,
            size,
            attempts: (delivered - 1) as u32,
            fresh: delivered == 1,
        })
    }
}

#[async_trait]
impl Queue for JetStreamQueue {
    async fn enqueue(&self, meta: Meta, content: Vec<u8>) -> Result<(), QueueError> {
        let meta = &meta;
        let max = self.cluster.client.server_info().max_payload;
        let inline = encode_message(meta, &content);
        let mut publish = PublishMessage::build().message_id(&meta.id);
        let record = if inline.len() + HEADER_ROOM <= max {
            inline
        } else {
            drop(inline);
            // The content first: the envelope in the stream must never
            // name content that is not there.
            self.objects
                .put(meta.id.as_str(), &mut content.as_slice())
                .await
                .map_err(|e| Self::unavailable("storing the content", e))?;
            publish = publish
                .header(CONTENT_HEADER, "object")
                .header(SIZE_HEADER, content.len().to_string());
            encode_message(meta, &[])
        };
        let subject = format!("{}.{}", self.subject, token(&meta.tenant));
        // Not into the client's reconnect buffer (see the module comment).
        if self.cluster.client.connection_state() != async_nats::connection::State::Connected {
            return Err(QueueError::Unavailable("not connected to NATS".into()));
        }
        let deadline =
            crate::wallclock::now_ms() + self.cluster.config.ack_timeout_ms + CLOCK_SKEW_MS;
        publish = publish.header(DEADLINE_HEADER, deadline.to_string());
        let ack = self
            .cluster
            .js
            .send_publish(subject, publish.payload(record.into()))
            .await
            .map_err(|e| Self::unavailable("publishing", e))?;
        ack.await
            .map_err(|e| Self::unavailable("waiting for JetStream's acknowledgement", e))?;
        Ok(())
    }

    async fn next(&self) -> Option<Due> {
        loop {
            if self.closed.load(std::sync::atomic::Ordering::Relaxed) {
                return None;
            }
            let m = self.puller.next().await;
            if let Some(due) = self.due(m) {
                return Some(due);
            }
        }
    }

    async fn load(&self, ticket: &Ticket) -> Result<Spooled, QueueError> {
        let entry = ticket.get::<Entry>();
        let mut object = self
            .objects
            .get(entry.meta.id.as_str())
            .await
            .map_err(|e| Self::unavailable("reading the content", e))?;
        let mut content = Vec::new();
        object
            .read_to_end(&mut content)
            .await
            .map_err(|e| Self::unavailable("reading the content", e))?;
        Ok(Spooled {
            meta: entry.meta.clone(),
            content,
        })
    }

    async fn finish(&self, ticket: &Ticket) -> Result<(), QueueError> {
        let entry = ticket.get::<Entry>();
        entry
            .acker
            .double_ack()
            .await
            .map_err(|e| Self::unavailable("acknowledging", e))?;
        if entry.object {
            // Left behind only if this fails: an orphan that costs space,
            // never a message.
            if let Err(e) = self.objects.delete(entry.meta.id.as_str()).await {
                tracing::warn!(event = "queue.content_left", queue_id = %entry.meta.id, cause = %e);
            }
        }
        Ok(())
    }

    async fn retry_later(&self, due: Due, delay: Duration) -> Result<(), QueueError> {
        due.ticket
            .get::<Entry>()
            .acker
            .ack_with(AckKind::Nak(Some(delay)))
            .await
            .map_err(|e| Self::unavailable("scheduling the retry", e))
    }

    fn close(&self) {
        self.closed
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    fn gauges(&self) -> Gauges {
        *self.gauges.lock().expect("gauges lock")
    }
}

fn unix_ms(t: time::OffsetDateTime) -> u64 {
    (t.unix_timestamp_nanos() / 1_000_000).max(0) as u64
}

/// Reads the consumer's and stream's state every two seconds, for
/// `/metrics` (the cluster's view: every host's messages).
async fn watch_gauges(
    mut consumer: PullConsumer,
    mut stream: stream::Stream,
    out: Arc<Mutex<Gauges>>,
) {
    loop {
        if let (Ok(c), Ok(s)) = (consumer.info().await.cloned(), stream.info().await) {
            let mut g = out.lock().expect("gauges lock");
            g.waiting = c.num_pending as usize;
            g.retrying = c.num_ack_pending;
            g.spooled = s.state.messages as usize;
            g.redelivered = c.num_redelivered;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
