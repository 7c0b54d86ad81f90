//! The durable spool: "250 queued" only after the message is on disk.
//!
//! Messages are appended to segment files (`spool/<seq>.seg`, format in
//! [`record`]). One committer thread owns the open segment. Transactions
//! hand it encoded records and wait; the committer writes every record that
//! is waiting, then calls `fdatasync` once for all of them and answers them
//! all (group commit). A burst of N concurrent transactions therefore costs
//! about one fsync, not N. A new segment's directory entry is fsynced before
//! any record in it is acknowledged.
//!
//! `Done` records are written without an fsync of their own: they become
//! durable with the next batch's fsync (or at shutdown). Losing one in a
//! crash is harmless: the message is read back as pending, its recipients
//! all have final events in the status store (recorded durably before
//! `mark_done`), so recovery delivers nothing again and marks it done.
//!
//! A failed write or fsync answers the whole batch with an error (451/452)
//! and moves on to a fresh segment; the batch's ids are then written as
//! `Cancel` records at the head of the next batch, so bytes that reached the
//! disk anyway are never delivered. Low disk space is checked before each
//! batch against `min_free_bytes`.
//!
//! Storage stays behind this small interface (`enqueue`, `read_pending`,
//! `mark_done`) so a shared backend can replace it later.

pub mod record;

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use tokio::sync::oneshot;

use crate::config::SpoolConfig;
pub use record::Meta;
use record::{Kind, decode, decode_message, encode, encode_message};

/// Largest batch written before one fsync, in octets.
const MAX_BATCH_BYTES: usize = 32 * 1024 * 1024;

/// Why a message could not be spooled.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The file system is (nearly) full: answered `452 4.3.1`.
    #[error("insufficient spool storage")]
    DiskFull,
    /// Writing or syncing failed: answered `451 4.3.0`.
    #[error("spool I/O error: {0}")]
    Io(#[from] io::Error),
    /// The committer has stopped (shutdown).
    #[error("spool is closed")]
    Closed,
}

struct Append {
    /// Queue id of the message record.
    id: String,
    record: Vec<u8>,
    done: oneshot::Sender<Result<(), SpoolError>>,
}

enum Job {
    Append(Append),
    /// A record that needs no fsync of its own (`Done`).
    Lazy(Vec<u8>),
    /// Commit what came before, then stop (shutdown).
    Stop,
}

/// Handle to the spool; cheap to clone.
#[derive(Clone)]
pub struct Spool {
    tx: mpsc::Sender<Job>,
}

/// A message read back from the spool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spooled {
    pub meta: Meta,
    pub content: Vec<u8>,
}

impl Spool {
    /// Opens (creating if needed) the spool under `dir`, recovers what is
    /// there, and starts the committer. Returns the messages still pending.
    pub fn open(
        dir: &Path,
        config: &SpoolConfig,
    ) -> io::Result<(Spool, std::thread::JoinHandle<()>, Vec<Spooled>)> {
        std::fs::create_dir_all(dir)?;
        let pending = read_pending(dir)?;
        let next_seq = segments(dir)?.last().map(|(seq, _)| seq + 1).unwrap_or(1);
        let segment = Segment::create(dir, next_seq)?;
        let (tx, rx) = mpsc::channel();
        let mut committer = Committer {
            dir: dir.to_path_buf(),
            config: config.clone(),
            segment,
            cancels: Vec::new(),
        };
        let handle = std::thread::Builder::new()
            .name("spool-committer".into())
            .spawn(move || committer.run(rx))?;
        Ok((Spool { tx }, handle, pending))
    }

    /// Writes a message durably. Returns once it is fsynced.
    pub async fn enqueue(&self, meta: &Meta, content: &[u8]) -> Result<(), SpoolError> {
        let record = encode_message(meta, content);
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Job::Append(Append {
                id: meta.id.clone(),
                record,
                done,
            }))
            .map_err(|_| SpoolError::Closed)?;
        wait.await.map_err(|_| SpoolError::Closed)?
    }

    /// Stops the committer once everything sent before is committed; later
    /// writes fail with [`SpoolError::Closed`].
    pub fn close(&self) {
        let _ = self.tx.send(Job::Stop);
    }

    /// Records that a message has left the spool (delivered, or failed for
    /// good). Call only once its final events are durable: the record is
    /// written without waiting for an fsync (see the module comment).
    pub fn mark_done(&self, id: &str) -> Result<(), SpoolError> {
        self.tx
            .send(Job::Lazy(encode(Kind::Done, &[id.as_bytes()])))
            .map_err(|_| SpoolError::Closed)
    }
}

struct Segment {
    file: File,
    len: u64,
    seq: u64,
}

impl Segment {
    fn create(dir: &Path, seq: u64) -> io::Result<Segment> {
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(segment_path(dir, seq))?;
        // Make the new directory entry durable before any record in it is
        // acknowledged.
        File::open(dir)?.sync_all()?;
        Ok(Segment { file, len: 0, seq })
    }
}

struct Committer {
    dir: PathBuf,
    config: SpoolConfig,
    segment: Segment,
    /// Ids whose batch failed: written as Cancel records at the next chance.
    cancels: Vec<String>,
}

impl Committer {
    fn run(&mut self, rx: mpsc::Receiver<Job>) {
        let (mut syncs, mut records) = (0u64, 0u64);
        let mut stopping = false;
        while let Ok(first) = rx.recv() {
            let (mut batch, mut lazy, mut bytes) = (Vec::new(), Vec::new(), 0);
            let mut next = Some(first);
            while let Some(job) = next {
                match job {
                    Job::Stop => {
                        stopping = true;
                        break;
                    }
                    Job::Append(a) => {
                        bytes += a.record.len();
                        batch.push(a);
                    }
                    Job::Lazy(record) => {
                        bytes += record.len();
                        lazy.push(record);
                    }
                }
                next = (bytes < MAX_BATCH_BYTES)
                    .then(|| rx.try_recv().ok())
                    .flatten();
            }
            if batch.is_empty() {
                // Only lazy records: written now, synced by a later batch.
                if let Err(e) = self.write(&lazy, &[], false) {
                    tracing::error!(cause = %e, segment = self.segment.seq, "spool write failed; starting a new segment");
                    self.rotate();
                }
                if stopping {
                    break;
                }
                continue;
            }
            let result = self.commit(&lazy, &batch, bytes);
            syncs += 1;
            records += batch.len() as u64;
            for Append { id, done, .. } in batch {
                let r = match &result {
                    Ok(()) => Ok(()),
                    Err(CommitError::DiskFull) => Err(SpoolError::DiskFull),
                    Err(CommitError::Io(kind, msg)) => {
                        self.cancels.push(id);
                        if *kind == io::ErrorKind::StorageFull {
                            Err(SpoolError::DiskFull)
                        } else {
                            Err(SpoolError::Io(io::Error::new(*kind, msg.clone())))
                        }
                    }
                };
                let _ = done.send(r);
            }
            if stopping {
                break;
            }
        }
        // Lazy records written since the last batch.
        if let Err(e) = self.segment.file.sync_data() {
            tracing::error!(cause = %e, "spool sync at shutdown failed");
        }
        tracing::info!(
            event = "spool.stats",
            syncs,
            records,
            "spool committer stopped"
        );
    }

    fn commit(
        &mut self,
        lazy: &[Vec<u8>],
        batch: &[Append],
        bytes: usize,
    ) -> Result<(), CommitError> {
        let free = free_bytes(&self.dir).map_err(CommitError::io)?;
        if free < self.config.min_free_bytes.saturating_add(bytes as u64) {
            tracing::warn!(
                free,
                min_free = self.config.min_free_bytes,
                "spool low on disk space; refusing mail"
            );
            return Err(CommitError::DiskFull);
        }
        let result = self.write(lazy, batch, true);
        if let Err(e) = &result {
            tracing::error!(cause = %e, segment = self.segment.seq, "spool write failed; starting a new segment");
            self.rotate();
            return result.map_err(CommitError::io);
        }
        if self.segment.len >= self.config.segment_bytes {
            match Segment::create(&self.dir, self.segment.seq + 1) {
                Ok(seg) => self.segment = seg,
                Err(e) => tracing::error!(cause = %e, "could not start a new spool segment"),
            }
        }
        Ok(())
    }

    /// After a failed write or fsync the kernel may have dropped the dirty
    /// pages and cleared the error: never write to this file again.
    fn rotate(&mut self) {
        if let Ok(seg) = Segment::create(&self.dir, self.segment.seq + 1) {
            self.segment = seg;
        }
    }

    /// Writes `lazy` then `batch`; with `sync`, pending cancels first and
    /// an fsync after.
    fn write(&mut self, lazy: &[Vec<u8>], batch: &[Append], sync: bool) -> io::Result<()> {
        let cancels: Vec<Vec<u8>> = match sync {
            true => self
                .cancels
                .iter()
                .map(|id| encode(Kind::Cancel, &[id.as_bytes()]))
                .collect(),
            false => Vec::new(),
        };
        let records = cancels
            .iter()
            .chain(lazy)
            .chain(batch.iter().map(|a| &a.record));
        for rec in records {
            self.segment.file.write_all(rec)?;
            self.segment.len += rec.len() as u64;
        }
        if sync {
            self.segment.file.sync_data()?;
            self.cancels.clear();
        }
        Ok(())
    }
}

#[derive(Debug)]
enum CommitError {
    DiskFull,
    Io(io::ErrorKind, String),
}

impl CommitError {
    fn io(e: io::Error) -> Self {
        CommitError::Io(e.kind(), e.to_string())
    }
}

fn free_bytes(dir: &Path) -> io::Result<u64> {
    let st = rustix::fs::statvfs(dir).map_err(io::Error::from)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.seg"))
}

/// Segment files under `dir`, in order.
fn segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let seq = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".seg"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(seq) = seq {
            out.push((seq, path));
        }
    }
    out.sort();
    Ok(out)
}

/// Every message in the spool under `dir` that has not been marked done or
/// cancelled, in acceptance order. Safe to call while a server writes to
/// the spool: a record still being written is simply not seen yet.
pub fn read_pending(dir: &Path) -> io::Result<Vec<Spooled>> {
    read(dir, true)
}

/// Every message ever acknowledged that is still on disk, delivered ones
/// included (not the cancelled ones, which were never acknowledged).
pub fn read_accepted(dir: &Path) -> io::Result<Vec<Spooled>> {
    read(dir, false)
}

fn read(dir: &Path, pending_only: bool) -> io::Result<Vec<Spooled>> {
    let mut messages: Vec<Spooled> = Vec::new();
    let mut gone = std::collections::HashSet::new();
    for (seq, path) in segments(dir)? {
        let buf = std::fs::read(&path)?;
        let mut at = 0;
        while at < buf.len() {
            let Some((kind, payload, n)) = decode(&buf[at..]) else {
                tracing::warn!(
                    segment = seq,
                    offset = at,
                    torn = buf.len() - at,
                    "ignoring torn or corrupt spool tail"
                );
                break;
            };
            match kind {
                Kind::Message => match decode_message(payload) {
                    Some((meta, content)) => messages.push(Spooled {
                        meta,
                        content: content.to_vec(),
                    }),
                    None => {
                        tracing::warn!(segment = seq, offset = at, "undecodable message record")
                    }
                },
                Kind::Done if !pending_only => {}
                Kind::Done | Kind::Cancel => {
                    gone.insert(String::from_utf8_lossy(payload).into_owned());
                }
            }
            at += n;
        }
    }
    messages.retain(|m| !gone.contains(&m.meta.id));
    Ok(messages)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(id: &str) -> Meta {
        Meta {
            id: id.into(),
            received_at_ms: 0,
            tenant: "t".into(),
            login: "l".into(),
            peer: "127.0.0.1:1".into(),
            listener: "test".into(),
            helo: "h".into(),
            sender: "a@b.example".into(),
            recipients: vec!["c@d.example".into()],
            body: "7BIT".into(),
            ..Meta::default()
        }
    }

    #[tokio::test]
    async fn done_and_torn_records_are_not_pending() {
        let dir = tempfile::tempdir().unwrap();
        let config = SpoolConfig {
            min_free_bytes: 0,
            segment_bytes: 200,
        };
        let (spool, committer, pending) = Spool::open(dir.path(), &config).unwrap();
        assert!(pending.is_empty());
        // Concurrent enqueues share commits; small segments force rotation.
        let mut waits = Vec::new();
        for i in 0..5 {
            let spool = spool.clone();
            waits.push(tokio::spawn(async move {
                spool
                    .enqueue(&meta(&format!("M{i}")), format!("body {i}\r\n").as_bytes())
                    .await
            }));
        }
        for w in waits {
            w.await.unwrap().unwrap();
        }
        spool.mark_done("M2").unwrap();
        drop(spool);
        committer.join().unwrap();
        assert!(
            segments(dir.path()).unwrap().len() > 1,
            "no rotation happened"
        );

        // A record torn by a crash at the end of the last segment.
        let (_, last) = segments(dir.path()).unwrap().pop().unwrap();
        let torn = encode_message(&meta("TORN"), b"half");
        let mut f = OpenOptions::new().append(true).open(last).unwrap();
        f.write_all(&torn[..torn.len() - 3]).unwrap();

        let mut ids: Vec<_> = read_pending(dir.path())
            .unwrap()
            .into_iter()
            .map(|m| m.meta.id)
            .collect();
        ids.sort();
        assert_eq!(ids, ["M0", "M1", "M3", "M4"]);
        // Reopening recovers the same and writes into a fresh segment.
        let (_, _, pending) = Spool::open(dir.path(), &config).unwrap();
        assert_eq!(pending.len(), 4);
    }

    #[tokio::test]
    async fn refuses_below_the_free_space_floor() {
        let dir = tempfile::tempdir().unwrap();
        let config = SpoolConfig {
            min_free_bytes: u64::MAX / 2,
            segment_bytes: 1 << 20,
        };
        let (spool, _committer, _) = Spool::open(dir.path(), &config).unwrap();
        let r = spool.enqueue(&meta("X"), b"x\r\n").await;
        assert!(matches!(r, Err(SpoolError::DiskFull)), "{r:?}");
        assert!(read_pending(dir.path()).unwrap().is_empty());
    }
}
