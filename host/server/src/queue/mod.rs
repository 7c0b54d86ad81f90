//! The delivery queue: where an accepted message waits until every
//! recipient has a final event.
//!
//! [`Queue`] is the narrow interface the rest of the server sees:
//! [`enqueue`](Queue::enqueue) (durable before it returns: the `250` waits
//! for it), [`next`](Queue::next) (the next message due, for a delivery
//! worker), [`load`](Queue::load), [`finish`](Queue::finish) and
//! [`retry_later`](Queue::retry_later). A message is named by an opaque
//! [`Ticket`]; the schedule of retries is the queue's, so a queue shared by
//! several hosts can hand a retry to any of them.
//!
//! [`file::FileQueue`] is the embedded default, over the group-committed
//! [`spool`](crate::spool) of one host; [`jetstream::JetStreamQueue`] is
//! the cluster's, shared by every host.
//!
//! | module | imports (within `queue`) |
//! |---|---|
//! | this one | `file`, `jetstream` |
//! | `file`, `jetstream` | none |

pub mod file;
pub mod jetstream;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

pub use crate::spool::{Meta, Spooled};

/// Why a message could not be queued, loaded or finished.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The storage is (nearly) full: a submission gets `452 4.3.1`.
    #[error("insufficient queue storage")]
    Full,
    /// Writing or reading failed, or the store is unreachable: `451 4.3.0`.
    #[error("queue storage error: {0}")]
    Unavailable(String),
    /// The queue has stopped (shutdown).
    #[error("the queue is closed")]
    Closed,
}

/// A queued message, as its queue names it. Opaque outside the queue that
/// issued it.
#[derive(Clone)]
pub struct Ticket(pub(crate) Arc<dyn std::any::Any + Send + Sync>);

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ticket")
    }
}

impl Ticket {
    pub(crate) fn new<T: Send + Sync + 'static>(inner: T) -> Ticket {
        Ticket(Arc::new(inner))
    }

    /// The issuing queue's own reference. Panics on a ticket of another
    /// queue: a programming error, since tickets never cross queues.
    pub(crate) fn get<T: 'static>(&self) -> &T {
        self.0
            .downcast_ref()
            .expect("a ticket is used only with the queue that issued it")
    }
}

/// A message due for delivery.
pub struct Due {
    pub ticket: Ticket,
    /// The envelope, always; the content when the queue still holds it
    /// (see [`Queue::load`]).
    pub message: Arc<Spooled>,
    /// Whether `message.content` holds the content.
    pub loaded: bool,
    /// The stored record's size in octets (content and envelope): what
    /// loading it costs in memory.
    pub size: u64,
    /// Earlier attempts at delivering it.
    pub attempts: u32,
    /// Handed out for the first time since it was enqueued, in this
    /// process: no recipient can have a final event yet. Otherwise (a
    /// retry, a recovery after a restart, a redelivery by a shared queue)
    /// the status store says which recipients are still pending.
    pub fresh: bool,
}

/// The queue at one moment, for `/metrics`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gauges {
    /// Messages due and waiting for a delivery worker.
    pub waiting: usize,
    /// Messages waiting for their next retry.
    pub retrying: usize,
    /// Messages queued and not yet finished.
    pub spooled: usize,
    /// Spool segment files (the file queue).
    pub segments: usize,
    /// Storage syncs so far (the file queue: one per committed batch).
    pub fsyncs: u64,
    /// Messages handed out more than once (the cluster queue: after a
    /// retry's delay, or a host that stopped working on them).
    pub redelivered: usize,
}

#[async_trait]
pub trait Queue: Send + Sync {
    /// Stores a message durably; returns only once it is durable. Takes
    /// the envelope and content by value: a queue that hands the message
    /// to this host's workers keeps them, without a copy.
    async fn enqueue(&self, meta: Meta, content: Vec<u8>) -> Result<(), QueueError>;
    /// The next message due for delivery, waiting until there is one;
    /// `None` once the queue is closed.
    async fn next(&self) -> Option<Due>;
    /// A due message's content, read back from storage.
    async fn load(&self, ticket: &Ticket) -> Result<Spooled, QueueError>;
    /// Every recipient has a final event (durably): the message leaves
    /// the queue.
    async fn finish(&self, ticket: &Ticket) -> Result<(), QueueError>;
    /// Some recipients are still pending: the message is due again after
    /// `delay`.
    async fn retry_later(&self, due: Due, delay: Duration) -> Result<(), QueueError>;
    /// Stops taking messages once what was sent before is stored.
    fn close(&self);
    fn gauges(&self) -> Gauges;
}
