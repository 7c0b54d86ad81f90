//! The embedded queue: the group-committed [`Spool`] of this host, a
//! channel of due messages, and in-process retry timers.
//!
//! A message's content stays in memory only while it is among the first
//! `in_memory_queue` messages waiting for a worker, and small: any other
//! waiting message (queued behind those, waiting for its next retry, or
//! found in the spool at start-up) keeps its envelope and spool location
//! and is read back when its turn comes, so a backlog costs little memory.
//!
//! Retries are timers of this process. After a restart, every message
//! still in the spool is due at once (its recipients without a final event
//! are delivered again: at least once).

use std::path::Path;
use std::sync::Arc;
use std::sync::Mutex as SyncMutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{Mutex, mpsc};

use super::{Due, Gauges, Queue, QueueError, Ticket};
use crate::budget::SMALL;
use crate::config::SpoolConfig;
use crate::spool::{Location, Meta, Spool, SpoolError, Spooled};

/// A file queue's ticket: the message's id and where its record is.
struct Entry {
    id: String,
    at: Location,
}

pub struct FileQueue {
    spool: Spool,
    due: DueSender,
    rx: Mutex<mpsc::UnboundedReceiver<Due>>,
    /// Waiting for a retry timer.
    retrying: Arc<AtomicUsize>,
    in_memory_queue: usize,
    committer: SyncMutex<Option<std::thread::JoinHandle<()>>>,
}

/// Makes messages due; cheap to clone (a retry timer holds one).
#[derive(Clone)]
struct DueSender {
    tx: mpsc::UnboundedSender<Due>,
    /// Due and not yet taken by a worker.
    waiting: Arc<AtomicUsize>,
}

impl DueSender {
    /// `content` is `None` when it waits in the spool.
    fn push(&self, meta: Meta, content: Option<Vec<u8>>, at: Location, attempts: u32, fresh: bool) {
        let ticket = Ticket::new(Entry {
            id: meta.id.clone(),
            at,
        });
        let loaded = content.is_some();
        let message = Arc::new(Spooled {
            meta,
            content: content.unwrap_or_default(),
        });
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let _ = self.tx.send(Due {
            ticket,
            message,
            loaded,
            size: at.len(),
            attempts,
            fresh,
        });
    }
}

impl FileQueue {
    /// Opens the spool under `dir` (recovering what it holds: every
    /// message found is due at once) and starts its committer.
    pub fn open(
        dir: &Path,
        config: &SpoolConfig,
        in_memory_queue: usize,
    ) -> std::io::Result<FileQueue> {
        let (spool, committer, pending) = Spool::open(dir, config)?;
        tracing::info!(event = "spool.recovered", dir = %dir.display(), pending = pending.len());
        let (tx, rx) = mpsc::unbounded_channel();
        let q = FileQueue {
            spool,
            due: DueSender {
                tx,
                waiting: Arc::default(),
            },
            rx: Mutex::new(rx),
            retrying: Arc::default(),
            in_memory_queue,
            committer: SyncMutex::new(Some(committer)),
        };
        for p in pending {
            tracing::info!(event = "delivery.recovered", queue_id = %p.meta.id, recipients = p.meta.recipients.len());
            q.due.push(p.meta, None, p.at, 0, false);
        }
        Ok(q)
    }

    /// Waits until the committer has stored everything sent before
    /// [`Queue::close`] and stopped.
    pub async fn closed(&self) {
        let handle = self.committer.lock().expect("committer lock").take();
        if let Some(h) = handle {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
    }
}

#[async_trait]
impl Queue for FileQueue {
    async fn enqueue(&self, meta: Meta, content: Vec<u8>) -> Result<(), QueueError> {
        let at = self
            .spool
            .enqueue(&meta, &content)
            .await
            .map_err(|e| match e {
                SpoolError::DiskFull => QueueError::Full,
                SpoolError::Io(e) => QueueError::Unavailable(e.to_string()),
                SpoolError::Closed => QueueError::Closed,
            })?;
        // Behind a long queue, and when it is large, the content waits in
        // the spool, not here: the worker reads it back with room reserved.
        let keep = self.due.waiting.load(Ordering::Relaxed) < self.in_memory_queue
            && content.len() <= SMALL;
        self.due.push(meta, keep.then_some(content), at, 0, true);
        Ok(())
    }

    async fn next(&self) -> Option<Due> {
        let due = self.rx.lock().await.recv().await?;
        self.due.waiting.fetch_sub(1, Ordering::Relaxed);
        Some(due)
    }

    async fn load(&self, ticket: &Ticket) -> Result<Spooled, QueueError> {
        let entry = ticket.get::<Entry>();
        let (spool, at) = (self.spool.clone(), entry.at);
        let m = tokio::task::spawn_blocking(move || spool.load(&at))
            .await
            .map_err(|e| QueueError::Unavailable(e.to_string()))?
            .map_err(|e| QueueError::Unavailable(e.to_string()))?;
        if m.meta.id != entry.id {
            return Err(QueueError::Unavailable(format!(
                "spool record at {at:?} is {}, not {}",
                m.meta.id, entry.id
            )));
        }
        Ok(m)
    }

    async fn finish(&self, ticket: &Ticket) -> Result<(), QueueError> {
        self.spool
            .mark_done(&ticket.get::<Entry>().id)
            .map_err(|_| QueueError::Closed)
    }

    async fn retry_later(&self, due: Due, delay: Duration) -> Result<(), QueueError> {
        let at = due.ticket.get::<Entry>().at;
        let meta = due.message.meta.clone();
        let attempts = due.attempts + 1;
        // The content is dropped while the message waits: read back then.
        drop(due);
        self.retrying.fetch_add(1, Ordering::Relaxed);
        let (sender, retrying) = (self.due.clone(), self.retrying.clone());
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            retrying.fetch_sub(1, Ordering::Relaxed);
            sender.push(meta, None, at, attempts, false);
        });
        Ok(())
    }

    fn close(&self) {
        self.spool.close();
    }

    fn gauges(&self) -> Gauges {
        let (spooled, segments) = self.spool.gauges();
        Gauges {
            waiting: self.due.waiting.load(Ordering::Relaxed),
            retrying: self.retrying.load(Ordering::Relaxed),
            spooled,
            segments,
            fsyncs: self.spool.syncs(),
            redelivered: 0,
        }
    }
}

/// Every message in the file queue under `dir` not yet finished, in
/// acceptance order, read from disk (the CLI's `mailwit spool list`). Safe
/// while a server writes to it: a record still being written is not seen.
pub fn pending(dir: &Path) -> std::io::Result<Vec<Spooled>> {
    crate::spool::read_pending(dir)
}

/// Every message accepted into the file queue under `dir` and still on
/// disk, finished ones included.
pub fn accepted(dir: &Path) -> std::io::Result<Vec<Spooled>> {
    crate::spool::read_accepted(dir)
}

/// Crash records for the tests (see `spool/faults.rs`): what a power cut
/// leaves of a spool run with `MAILWIT_FAULTS=power-loss`, and a lost
/// `Done` record.
pub use crate::spool::{lose_done_record, power_cut};
