//! The status store: one event per message × recipient × step, kept for the
//! retention period (7 days by default, as the Sinch seed says) and then
//! purged.
//!
//! [`StatusStore`] is the interface (async, fallible);
//! [`jetstream::JetStreamStatusStore`] is the cluster's.
//! [`FileStatusStore`] is the embedded default: an append-only JSON-lines
//! file (`<data_dir>/status/events.jsonl`), indexed in memory by message
//! id. One committer thread owns the file, as in the spool: callers hand it
//! their events and wait; it writes every batch waiting in one write and
//! one fsync (group commit), so N concurrent deliveries cost about one
//! fsync, not N, and a caller is answered once its own events are durable
//! (and readable). No caller holds a thread or a lock while another's fsync
//! runs, and reads never wait for one. A purge rewrites the file without
//! the expired events (write, fsync, rename), in the committer's turn. This
//! suits one machine's volume; it holds the retained events in memory.

pub mod jetstream;

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, mpsc};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use serde::{Deserialize, Serialize};

/// The steps of a message's life, per recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Accepted with `250` (timestamp of the 250).
    Received,
    /// Handed to the relay route: its first attempt at the next hop begins
    /// (Sinch's `CAAS_SENT`).
    Relaying,
    /// A temporary failure; will be retried.
    Deferred,
    /// The next hop accepted it.
    Sent,
    /// Captured in the sandbox, never sent.
    DeliveredToSandbox,
    /// Dropped on the tenant's request.
    Discarded,
    /// A permanent failure, or retries exhausted.
    Failed,
    /// A delivery status notification was queued for the sender.
    Bounced,
    /// The delivery report to the tenant's notify URL was given up: the URL
    /// is not allowed, or its server did not take it in time.
    ReportFailed,
}

impl Status {
    /// No further step will follow for this recipient.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Status::Sent | Status::DeliveredToSandbox | Status::Discarded | Status::Failed
        )
    }
}

/// One event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub ts_ms: u64,
    pub tenant: String,
    pub message_id: String,
    pub recipient: String,
    pub status: Status,
    /// The next hop's reply, the error, or what happened.
    pub detail: String,
    /// The message's bulk id (Infobip's `X-IB-bulk-id`), for searches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bulk_id: Option<String>,
}

impl Event {
    /// `recipient`'s step `status` of the message `meta` at `ts_ms`.
    pub fn new(
        meta: &crate::spool::Meta,
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
            bulk_id: meta
                .metadata
                .iter()
                .find(|(k, _)| k == "bulkId")
                .map(|(_, v)| v.clone()),
        }
    }
}

/// What a search of a tenant's messages asks for; each given field must
/// match (a recipient or bulk id exactly, ignoring case; the time is when
/// the message was received, its first event).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Search {
    pub recipient: Option<String>,
    pub bulk_id: Option<String>,
    pub since_ms: Option<u64>,
    pub until_ms: Option<u64>,
}

/// Most messages one search answers (the newest).
pub const SEARCH_LIMIT: usize = 100;

/// One message a search found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Found {
    pub message_id: String,
    pub received_ms: u64,
    pub bulk_id: Option<String>,
    pub recipients: Vec<String>,
    /// Each recipient's last status, in `recipients`' order.
    pub statuses: Vec<Status>,
}

/// The messages among `events` (one tenant's, in any order) that `q`
/// matches, newest first, at most [`SEARCH_LIMIT`].
pub fn search<'a>(events: impl IntoIterator<Item = &'a Event>, q: &Search) -> Vec<Found> {
    let mut by_id: HashMap<&str, Vec<&Event>> = HashMap::new();
    for e in events {
        by_id.entry(&e.message_id).or_default().push(e);
    }
    let same = |a: &str, b: &Option<String>| b.as_deref().is_none_or(|b| a.eq_ignore_ascii_case(b));
    let mut found: Vec<Found> = by_id
        .into_iter()
        .filter_map(|(id, mut events)| {
            events.sort_by_key(|e| e.ts_ms);
            let received_ms = events.first()?.ts_ms;
            let bulk_id = events.iter().find_map(|e| e.bulk_id.clone());
            let matches = q.since_ms.is_none_or(|t| received_ms >= t)
                && q.until_ms.is_none_or(|t| received_ms <= t)
                && same(bulk_id.as_deref().unwrap_or(""), &q.bulk_id)
                && events.iter().any(|e| same(&e.recipient, &q.recipient));
            if !matches {
                return None;
            }
            let mut recipients: Vec<String> = Vec::new();
            let mut statuses = Vec::new();
            for e in &events {
                match recipients.iter().position(|r| *r == e.recipient) {
                    Some(i) => statuses[i] = e.status,
                    None => {
                        recipients.push(e.recipient.clone());
                        statuses.push(e.status);
                    }
                }
            }
            Some(Found {
                message_id: id.to_string(),
                received_ms,
                bulk_id,
                recipients,
                statuses,
            })
        })
        .collect();
    found.sort_by(|a, b| {
        b.received_ms
            .cmp(&a.received_ms)
            .then(b.message_id.cmp(&a.message_id))
    });
    found.truncate(SEARCH_LIMIT);
    found
}

/// Where events are kept. An error is an error: a store that cannot be
/// read says so, never "no events".
#[async_trait::async_trait]
pub trait StatusStore: Send + Sync {
    /// Records events durably.
    async fn record(&self, events: Vec<Event>) -> std::io::Result<()>;
    /// A message's events (optionally one recipient's), oldest first. With
    /// a tenant, another tenant's message yields nothing; without one (the
    /// operator's view), any tenant's.
    async fn message(
        &self,
        tenant: Option<&str>,
        id: &str,
        recipient: Option<&str>,
    ) -> std::io::Result<Vec<Event>>;
    /// Drops events older than `cutoff_ms`; returns how many.
    async fn purge(&self, cutoff_ms: u64) -> std::io::Result<usize>;
    /// Drops every event of a tenant (the tenant is being deleted).
    async fn purge_tenant(&self, tenant: &str) -> std::io::Result<usize>;
    /// A tenant's messages that `q` matches ([`search`]).
    async fn search(&self, tenant: &str, q: &Search) -> std::io::Result<Vec<Found>>;
}

/// The file store: appends and purges go to its committer thread; reads
/// share the index's lock (see [`FileStatusStore::index`]), so a message's
/// events are read on the caller's task.
#[async_trait::async_trait]
impl StatusStore for Arc<FileStatusStore> {
    async fn record(&self, events: Vec<Event>) -> std::io::Result<()> {
        answered(self.send_record(events)?.await)
    }

    async fn message(
        &self,
        tenant: Option<&str>,
        id: &str,
        recipient: Option<&str>,
    ) -> std::io::Result<Vec<Event>> {
        Ok(FileStatusStore::message(self, tenant, id, recipient))
    }

    async fn purge(&self, cutoff_ms: u64) -> std::io::Result<usize> {
        answered(self.send_retain(received_since(cutoff_ms))?.await)
    }

    async fn purge_tenant(&self, tenant: &str) -> std::io::Result<usize> {
        let tenant = tenant.to_string();
        let keep: Keep = Box::new(move |events| events.iter().all(|e| e.tenant != tenant));
        answered(self.send_retain(keep)?.await)
    }

    async fn search(&self, tenant: &str, q: &Search) -> std::io::Result<Vec<Found>> {
        // A walk over every retained event: off the async workers.
        let (s, tenant, q) = (self.clone(), tenant.to_string(), q.clone());
        tokio::task::spawn_blocking(move || FileStatusStore::search(&s, &tenant, &q))
            .await
            .map_err(std::io::Error::other)
    }
}

fn closed() -> std::io::Error {
    std::io::Error::other("the status store's committer has stopped")
}

/// The committer's answer; none means it stopped before answering.
fn answered<T>(
    answer: Result<std::io::Result<T>, oneshot::error::RecvError>,
) -> std::io::Result<T> {
    answer.unwrap_or_else(|_| Err(closed()))
}

/// When a message was received, for its retention: its first event.
/// A message's events expire together, counted from then (Sinch: "If the
/// notification was sent more than 7 days back, an empty object will be
/// returned"), not one by one.
pub fn received_ms(events: &[Event]) -> Option<u64> {
    events.iter().map(|e| e.ts_ms).min()
}

/// Whether a message with these events is past `retention` at `now_ms`.
pub fn expired(events: &[Event], retention: Option<std::time::Duration>, now_ms: u64) -> bool {
    match (retention, received_ms(events)) {
        (Some(r), Some(t)) => t < now_ms.saturating_sub(r.as_millis() as u64),
        _ => false,
    }
}

/// How long the committer waits for more records before it commits a
/// batch of fewer than [`LINGER_BATCH`]. An fsync costs CPU as well as
/// time (on the development machine, fsyncs were a fifth of the server's
/// CPU under load: `perf`, 2026-12-07); the callers are delivery workers,
/// off every client's reply path, so a few milliseconds more per delivery
/// are cheap and larger batches save most of the status store's fsyncs
/// (3 ms, not 1: in ten alternating runs of the two builds at 64 sessions
/// the 3 ms one accepted more mail every time, about 5% in the median;
/// with 64 delivery workers a 3 ms linger still lets about 19,000
/// deliveries a second through, above what this machine accepts). It
/// waits in one sleep, not for each record: woken at every arrival, the
/// committer switched context about twice per message (`perf record -e
/// sched:sched_switch`, a new connection per message, 64 sessions).
const LINGER: Duration = Duration::from_millis(3);
/// Records (one per delivery step) that commit at once, without waiting.
const LINGER_BATCH: usize = 8;

/// Messages' events by message id, as committed.
type Index = HashMap<String, Vec<Event>>;

/// Which messages a purge keeps (all of a message's events at once).
type Keep = Box<dyn Fn(&[Event]) -> bool + Send>;

/// What a purge at `cutoff_ms` keeps: the messages received since.
fn received_since(cutoff_ms: u64) -> Keep {
    Box::new(move |events| received_ms(events).is_some_and(|t| t >= cutoff_ms))
}

pub struct FileStatusStore {
    /// A message past this (from its first event) reads as nothing, even
    /// before the purge has removed it.
    retention: Option<std::time::Duration>,
    /// To the committer thread, which owns the file.
    jobs: mpsc::Sender<Job>,
    /// What is committed; the committer adds to it after each fsync.
    /// Readers share it, so a search's walk over every event does not
    /// hold up a message's lookup (on an async worker); only the
    /// committer's inserts and a purge's removals take it alone, briefly.
    index: Arc<RwLock<Index>>,
}

enum Job {
    /// Events to append, encoded, and who waits for their fsync.
    Record {
        buf: Vec<u8>,
        events: Vec<Event>,
        done: oneshot::Sender<std::io::Result<()>>,
    },
    /// Rewrite the file with only the messages `keep` says yes to; answers
    /// how many events went.
    Retain {
        keep: Keep,
        done: oneshot::Sender<std::io::Result<usize>>,
    },
}

/// The committer thread's state: the file, and whether its last write may
/// have left a partial line.
struct Committer {
    path: PathBuf,
    file: File,
    index: Arc<RwLock<Index>>,
    /// The last write failed and may have left a partial line: the next
    /// one starts with a line break, so only that line is lost (the loader
    /// skips lines it cannot read).
    torn: bool,
}

impl FileStatusStore {
    pub fn open(dir: &Path) -> std::io::Result<FileStatusStore> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("events.jsonl");
        let mut by_id = Index::new();
        if path.exists() {
            for line in BufReader::new(File::open(&path)?).lines() {
                // A line cut short by a crash is skipped.
                if let Ok(e) = serde_json::from_str::<Event>(&line?) {
                    by_id.entry(e.message_id.clone()).or_default().push(e);
                }
            }
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        File::open(dir)?.sync_all()?;
        // A crash during a write can leave a partial last line; the next
        // write must not extend it into a line the loader skips.
        let torn = ends_inside_a_line(&path)?;
        let index = Arc::new(RwLock::new(by_id));
        let (jobs, rx) = mpsc::channel();
        let committer = Committer {
            path,
            file,
            index: index.clone(),
            torn,
        };
        // Ends when the store (the last sender) is dropped, after what was
        // sent before.
        crate::sched::spawn("status-committer", move || committer.run(rx))?;
        Ok(FileStatusStore {
            retention: None,
            jobs,
            index,
        })
    }

    /// Reads answer nothing for a message older than `retention`.
    pub fn retaining(mut self, retention: std::time::Duration) -> FileStatusStore {
        self.retention = Some(retention);
        self
    }

    /// Hands events to the committer; the answer comes once they are
    /// durable (and readable).
    fn send_record(
        &self,
        events: Vec<Event>,
    ) -> std::io::Result<oneshot::Receiver<std::io::Result<()>>> {
        let mut buf = Vec::new();
        for e in &events {
            serde_json::to_writer(&mut buf, e)?;
            buf.push(b'\n');
        }
        let (done, answer) = oneshot::channel();
        self.jobs
            .send(Job::Record { buf, events, done })
            .map_err(|_| closed())?;
        Ok(answer)
    }

    fn send_retain(
        &self,
        keep: Keep,
    ) -> std::io::Result<oneshot::Receiver<std::io::Result<usize>>> {
        let (done, answer) = oneshot::channel();
        self.jobs
            .send(Job::Retain { keep, done })
            .map_err(|_| closed())?;
        Ok(answer)
    }

    /// Records events durably (blocking: waits for the fsync; not from
    /// inside an async task).
    pub fn record(&self, events: Vec<Event>) -> std::io::Result<()> {
        answered(self.send_record(events)?.blocking_recv())
    }

    /// Drops the messages received before `cutoff_ms`, all their events
    /// together (blocking: waits for the rewrite).
    pub fn purge(&self, cutoff_ms: u64) -> std::io::Result<usize> {
        answered(self.send_retain(received_since(cutoff_ms))?.blocking_recv())
    }

    /// A message's events, as [`StatusStore::message`].
    pub fn message(&self, tenant: Option<&str>, id: &str, recipient: Option<&str>) -> Vec<Event> {
        let index = self.index.read().expect("status lock");
        index
            .get(id)
            .filter(|events| !expired(events, self.retention, crate::wallclock::now_ms()))
            .map(|events| {
                events
                    .iter()
                    .filter(|e| {
                        tenant.is_none_or(|t| e.tenant == t)
                            && recipient.is_none_or(|r| e.recipient.eq_ignore_ascii_case(r))
                    })
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A tenant's messages that `q` matches, as [`StatusStore::search`]
    /// (a walk over every event, sharing the index's lock).
    pub fn search(&self, tenant: &str, q: &Search) -> Vec<Found> {
        let index = self.index.read().expect("status lock");
        let now = crate::wallclock::now_ms();
        let events = index
            .values()
            .filter(|events| events.first().is_some_and(|e| e.tenant == tenant))
            .filter(|events| !expired(events, self.retention, now))
            .flatten();
        search(events, q)
    }
}

/// Whether the file is not empty and its last byte is not a line end.
fn ends_inside_a_line(path: &Path) -> std::io::Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = File::open(path)?;
    if f.metadata()?.len() == 0 {
        return Ok(false);
    }
    f.seek(SeekFrom::End(-1))?;
    let mut last = [0u8; 1];
    f.read_exact(&mut last)?;
    Ok(last[0] != b'\n')
}

impl Committer {
    /// Takes every record waiting, writes them in one write and one fsync
    /// (group commit), then answers them all; a purge runs in its turn.
    /// One thread, so callers never wait on a lock for another's fsync.
    fn run(mut self, rx: mpsc::Receiver<Job>) {
        while let Ok(first) = rx.recv() {
            let lingering = Instant::now() + LINGER;
            let (mut buf, mut events, mut waiting) = (Vec::new(), Vec::new(), Vec::new());
            let mut next = Some(first);
            let mut retain = None;
            let mut slept = false;
            while let Some(job) = next {
                match job {
                    Job::Record {
                        buf: b,
                        events: e,
                        done,
                    } => {
                        // The first record's buffer is the batch's.
                        match buf.is_empty() {
                            true => buf = b,
                            false => buf.extend_from_slice(&b),
                        }
                        events.extend(e);
                        waiting.push(done);
                    }
                    // After the records before it.
                    Job::Retain { keep, done } => {
                        retain = Some((keep, done));
                        break;
                    }
                }
                next = rx.try_recv().ok();
                // A small batch waits a little for more (see LINGER).
                if next.is_none() && !slept && waiting.len() < LINGER_BATCH {
                    slept = true;
                    std::thread::sleep(lingering.saturating_duration_since(Instant::now()));
                    next = rx.try_recv().ok();
                }
            }
            if !waiting.is_empty() {
                let outcome = self.append(buf, events);
                for done in waiting {
                    let _ = done.send(match &outcome {
                        Ok(()) => Ok(()),
                        Err((kind, msg)) => Err(std::io::Error::new(*kind, msg.clone())),
                    });
                }
            }
            if let Some((keep, done)) = retain {
                let _ = done.send(self.retain(keep));
            }
        }
    }

    /// Appends and fsyncs one batch; indexes its events once durable.
    fn append(
        &mut self,
        mut buf: Vec<u8>,
        events: Vec<Event>,
    ) -> Result<(), (std::io::ErrorKind, String)> {
        if self.torn {
            buf.insert(0, b'\n');
        }
        let result = self
            .file
            .write_all(&buf)
            .and_then(|()| self.file.sync_data());
        self.torn = result.is_err();
        result.map_err(|e| (e.kind(), e.to_string()))?;
        let mut index = self.index.write().expect("status lock");
        for e in events {
            index.entry(e.message_id.clone()).or_default().push(e);
        }
        Ok(())
    }

    /// Keeps only the messages whose events `keep` says yes to and
    /// rewrites the file (write, fsync, rename); returns how many events
    /// went.
    fn retain(&mut self, keep: Keep) -> std::io::Result<usize> {
        let gone = {
            let mut index = self.index.write().expect("status lock");
            let before: usize = index.values().map(Vec::len).sum();
            index.retain(|_, events| !events.is_empty() && keep(events));
            before - index.values().map(Vec::len).sum::<usize>()
        };
        if gone == 0 {
            return Ok(0);
        }
        // Written out under a shared lock: readers go on meanwhile, and
        // nothing else changes the index (this thread is its one writer).
        let buf = {
            let index = self.index.read().expect("status lock");
            let mut all: Vec<&Event> = index.values().flatten().collect();
            all.sort_by_key(|e| e.ts_ms);
            let mut buf = Vec::new();
            for e in all {
                serde_json::to_writer(&mut buf, e)?;
                buf.push(b'\n');
            }
            buf
        };
        crate::fsutil::write_durable(&self.path, &buf)?;
        self.file = OpenOptions::new().append(true).open(&self.path)?;
        self.torn = false;
        Ok(gone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(id: &str, tenant: &str, rcpt: &str, ts_ms: u64, status: Status) -> Event {
        Event {
            ts_ms,
            tenant: tenant.into(),
            message_id: id.into(),
            recipient: rcpt.into(),
            status,
            detail: String::new(),
            bulk_id: None,
        }
    }

    /// A search matches a recipient, a bulk id and the time received,
    /// each when given, and lists each recipient's last status.
    #[test]
    fn a_search_matches_what_it_is_given() {
        let mut events = vec![
            ev("m1", "t", "a@x", 10, Status::Received),
            ev("m1", "t", "a@x", 11, Status::Sent),
            ev("m1", "t", "b@x", 11, Status::Received),
            ev("m2", "t", "c@x", 20, Status::Received),
        ];
        events[0].bulk_id = Some("B1".into());
        let q = |recipient: Option<&str>, bulk: Option<&str>, since: Option<u64>| Search {
            recipient: recipient.map(str::to_string),
            bulk_id: bulk.map(str::to_string),
            since_ms: since,
            until_ms: None,
        };
        let ids = |q: Search| -> Vec<String> {
            search(&events, &q)
                .into_iter()
                .map(|f| f.message_id)
                .collect()
        };
        assert_eq!(ids(q(None, None, None)), ["m2", "m1"]);
        assert_eq!(ids(q(Some("B@X"), None, None)), ["m1"]);
        assert_eq!(ids(q(None, Some("b1"), None)), ["m1"]);
        assert_eq!(ids(q(None, None, Some(15))), ["m2"]);
        assert!(ids(q(Some("c@x"), Some("B1"), None)).is_empty());
        let m1 = &search(&events, &q(Some("a@x"), None, None))[0];
        assert_eq!(m1.recipients, ["a@x", "b@x"]);
        assert_eq!(m1.statuses, [Status::Sent, Status::Received]);
        assert_eq!(m1.bulk_id.as_deref(), Some("B1"));
    }

    #[test]
    fn record_query_purge_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let s = FileStatusStore::open(dir.path()).unwrap();
        s.record(vec![
            ev("M1", "a", "x@e.example", 10, Status::Received),
            ev("M1", "a", "y@e.example", 10, Status::Received),
            ev("M1", "a", "x@e.example", 20, Status::Sent),
            ev("M2", "a", "x@e.example", 30, Status::Received),
        ])
        .unwrap();
        assert_eq!(s.message(Some("a"), "M1", None).len(), 3);
        assert_eq!(s.message(Some("a"), "M1", Some("X@e.example")).len(), 2);
        assert!(
            s.message(Some("b"), "M1", None).is_empty(),
            "another tenant saw M1"
        );
        // M1 was received before the cutoff: all its events go together.
        assert_eq!(s.purge(15).unwrap(), 3);
        assert!(s.message(Some("a"), "M1", None).is_empty());
        s.record(vec![ev("M2", "a", "x@e.example", 40, Status::Sent)])
            .unwrap();
        drop(s);
        let s = FileStatusStore::open(dir.path()).unwrap();
        assert!(s.message(Some("a"), "M1", None).is_empty());
        assert_eq!(s.message(Some("a"), "M2", None).len(), 2);
    }

    /// Sinch (seed 001): "If the notification was sent more than 7 days
    /// back, an empty object will be returned." A message's history is
    /// kept or dropped whole, counted from its first event.
    #[test]
    fn a_message_expires_whole_counted_from_when_it_was_received() {
        let dir = tempfile::tempdir().unwrap();
        let week = std::time::Duration::from_secs(7 * 86_400);
        let s = FileStatusStore::open(dir.path()).unwrap().retaining(week);
        let now = crate::wallclock::now_ms();
        let day = 86_400_000;
        s.record(vec![
            // Received 8 days ago, sent 6.5 days ago: past its retention.
            ev("OLD", "a", "x@e.example", now - 8 * day, Status::Received),
            ev("OLD", "a", "x@e.example", now - 13 * day / 2, Status::Sent),
            // Received 6 days ago, deferred, then sent: within it.
            ev("NEW", "a", "x@e.example", now - 6 * day, Status::Received),
            ev(
                "NEW",
                "a",
                "x@e.example",
                now - 6 * day + 1,
                Status::Deferred,
            ),
            ev("NEW", "a", "x@e.example", now - day, Status::Sent),
        ])
        .unwrap();
        // Read before any purge: the old one is already nothing.
        assert!(s.message(Some("a"), "OLD", None).is_empty());
        assert_eq!(s.message(Some("a"), "NEW", None).len(), 3);
        // The purge at the week's cutoff drops the old one whole and keeps
        // all of the new one (even its events from 6 days ago).
        let cutoff = now - week.as_millis() as u64;
        assert_eq!(s.purge(cutoff).unwrap(), 2);
        assert_eq!(s.message(Some("a"), "NEW", None).len(), 3);
        assert!(expired(
            &[ev("X", "a", "x", now - 8 * day, Status::Received)],
            Some(week),
            now
        ));
        assert!(!expired(&[], Some(week), now));
    }

    /// A crash in the middle of a write leaves part of a line; what is
    /// recorded after the restart is not glued to it and lost.
    #[test]
    fn a_partial_last_line_costs_only_itself() {
        let dir = tempfile::tempdir().unwrap();
        let s = FileStatusStore::open(dir.path()).unwrap();
        s.record(vec![ev("M1", "a", "x@e.example", 10, Status::Received)])
            .unwrap();
        drop(s);
        let path = dir.path().join("events.jsonl");
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(br#"{"ts_ms":20,"tenant":"a","message_id":"M1","#)
            .unwrap();
        drop(f);
        let s = FileStatusStore::open(dir.path()).unwrap();
        s.record(vec![ev("M2", "a", "x@e.example", 30, Status::Received)])
            .unwrap();
        drop(s);
        let s = FileStatusStore::open(dir.path()).unwrap();
        assert_eq!(s.message(Some("a"), "M1", None).len(), 1);
        assert_eq!(
            s.message(Some("a"), "M2", None).len(),
            1,
            "lost after a torn line"
        );
    }

    #[test]
    fn concurrent_records_are_all_durable() {
        let dir = tempfile::tempdir().unwrap();
        let s = std::sync::Arc::new(FileStatusStore::open(dir.path()).unwrap());
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let s = s.clone();
                std::thread::spawn(move || {
                    // The blocking methods, not the async trait's.
                    let s: &FileStatusStore = &s;
                    for i in 0..100 {
                        let id = format!("T{t}M{i}");
                        s.record(vec![ev(&id, "a", "x@e.example", 1, Status::Received)])
                            .unwrap();
                        // Visible as soon as record returns.
                        assert_eq!(s.message(Some("a"), &id, None).len(), 1);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(s);
        let s = FileStatusStore::open(dir.path()).unwrap();
        for t in 0..8 {
            for i in 0..100 {
                let id = format!("T{t}M{i}");
                assert_eq!(s.message(Some("a"), &id, None).len(), 1, "{id}");
            }
        }
    }
}
