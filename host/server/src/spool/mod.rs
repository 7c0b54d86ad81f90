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
//! `Done` records are written without an fsync of their own: they wait in
//! a list (no message to the committer, so no wake-up per delivered
//! message), ride in the next batch's write and become durable with its
//! fsync; when no batch comes, the committer writes them within
//! [`DONE_LINGER`] (and at shutdown). Losing one in a
//! crash is harmless: the message is read back as pending, its recipients
//! all have final events in the status store (recorded durably before
//! `mark_done`), so recovery delivers nothing again and marks it done.
//!
//! Segments are removed oldest first once none of their messages is
//! pending (and never the open one), at start-up and as messages are
//! marked done. Only a prefix goes, so a `Done` or `Cancel` record is never
//! removed while the message record it refers to stays.
//!
//! A failed write or fsync answers the whole batch with an error (451/452)
//! and moves on to a fresh segment; the batch's ids are then written as
//! `Cancel` records at the head of the next batch, so bytes that reached the
//! disk anyway are never delivered. Low disk space is checked before each
//! batch against `min_free_bytes`.
//!
//! Each enqueued message gets its [`Location`], from which [`Spool::load`]
//! reads it back: delivery keeps a message's content in memory only while
//! it is being delivered.
//!
//! The rest of the server reaches it only through the file queue
//! ([`crate::queue::file`]), one implementation of the queue's interface.

mod faults;
pub mod record;

pub use faults::{lose_done_record, power_cut};

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::config::SpoolConfig;
use faults::Faults;
pub use record::Meta;
use record::{Kind, decode, decode_message, encode, encode_message};

/// Largest batch written before one fsync, in octets. (Mutating the
/// arithmetic only changes how many records share an fsync, never what is
/// durable before its 250: the unit tests cannot tell, by design; the
/// group commit's effect is measured by the submit benchmark.)
const MAX_BATCH_BYTES: usize = 32 * 1024 * 1024;

/// Longest a `Done` record waits for a batch to ride in before the
/// committer writes it alone: how long a finished message may still count
/// as pending (and keep its segment).
const DONE_LINGER: Duration = Duration::from_millis(200);

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
    done: oneshot::Sender<Result<Location, SpoolError>>,
}

/// Where a message record is: its segment, offset and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    seq: u64,
    offset: u64,
    len: u64,
}

impl Location {
    /// The record's length on disk: its content, envelope and header.
    #[allow(clippy::len_without_is_empty)] // a record is never empty
    pub fn len(&self) -> u64 {
        self.len
    }
}

/// A pending message found at start-up: its envelope and where to read it.
#[derive(Debug, Clone)]
pub struct Pending {
    pub meta: Meta,
    pub at: Location,
}

enum Job {
    Append(Append),
    /// Commit what came before, then stop (shutdown).
    Stop,
}

/// Messages that left the spool, waiting for their `Done` records to be
/// written (they need no fsync of their own).
#[derive(Default)]
struct Finished {
    ids: Vec<String>,
    /// The committer has stopped: nothing more is written.
    closed: bool,
}

/// Handle to the spool; cheap to clone.
#[derive(Clone)]
pub struct Spool {
    tx: mpsc::Sender<Job>,
    finished: Arc<Mutex<Finished>>,
    dir: Arc<PathBuf>,
    gauges: Arc<Gauges>,
}

/// What the committer last saw, for `/metrics`.
#[derive(Default)]
struct Gauges {
    pending: AtomicUsize,
    segments: AtomicUsize,
    /// Segment fsyncs that succeeded: one per committed batch.
    syncs: AtomicU64,
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
    ) -> io::Result<(Spool, std::thread::JoinHandle<()>, Vec<Pending>)> {
        Spool::open_with(dir, config, Faults::from_env())
    }

    /// [`Spool::open`] with the faults given (the unit tests' way in: the
    /// environment is the whole process's).
    fn open_with(
        dir: &Path,
        config: &SpoolConfig,
        faults: Faults,
    ) -> io::Result<(Spool, std::thread::JoinHandle<()>, Vec<Pending>)> {
        std::fs::create_dir_all(dir)?;
        let found = read(dir, true, false)?;
        let on_disk = segments(dir)?;
        let next_seq = on_disk.last().map(|(seq, _)| seq + 1).unwrap_or(1);
        let segment = Segment::create(dir, next_seq, &faults)?;
        let mut live: BTreeMap<u64, usize> = on_disk.iter().map(|(seq, _)| (*seq, 0)).collect();
        live.insert(next_seq, 0);
        let mut location = HashMap::new();
        let mut pending = Vec::with_capacity(found.len());
        for (at, m) in found {
            *live.entry(at.seq).or_default() += 1;
            location.insert(m.meta.id.clone(), at.seq);
            pending.push(Pending { meta: m.meta, at });
        }
        let (tx, rx) = mpsc::channel();
        let finished = Arc::new(Mutex::new(Finished::default()));
        let mut committer = Committer {
            finished: finished.clone(),
            scratch: Vec::new(),
            dir: dir.to_path_buf(),
            config: config.clone(),
            segment,
            cancels: Vec::new(),
            live,
            location,
            gauges: Arc::default(),
            faults,
        };
        committer.collect();
        let gauges = committer.gauges.clone();
        let handle = crate::sched::spawn("spool-committer", move || committer.run(rx))?;
        let spool = Spool {
            tx,
            finished,
            dir: Arc::new(dir.to_path_buf()),
            gauges,
        };
        Ok((spool, handle, pending))
    }

    /// Pending messages and segment files, as of the committer's last
    /// batch.
    pub fn gauges(&self) -> (usize, usize) {
        (
            self.gauges.pending.load(Ordering::Relaxed),
            self.gauges.segments.load(Ordering::Relaxed),
        )
    }

    /// Segment fsyncs that succeeded so far: one per committed batch, so
    /// fewer than the messages acknowledged when they arrive together.
    pub fn syncs(&self) -> u64 {
        self.gauges.syncs.load(Ordering::Relaxed)
    }

    /// Reads a pending message back (blocking file I/O). Its segment stays
    /// until the message is marked done.
    pub fn load(&self, at: &Location) -> io::Result<Spooled> {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0; at.len as usize];
        File::open(segment_path(&self.dir, at.seq))?.read_exact_at(&mut buf, at.offset)?;
        let bad = || io::Error::new(io::ErrorKind::InvalidData, "bad spool record");
        let (kind, payload, _) = decode(&buf).ok_or_else(bad)?;
        let (meta, content) = match kind {
            Kind::Message => decode_message(payload).ok_or_else(bad)?,
            _ => return Err(bad()),
        };
        Ok(Spooled {
            meta,
            content: content.to_vec(),
        })
    }

    /// Writes a message durably. Returns once it is fsynced, with where it
    /// was written.
    pub async fn enqueue(&self, meta: &Meta, content: &[u8]) -> Result<Location, SpoolError> {
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
        let mut finished = self.finished.lock().expect("spool lock");
        if finished.closed {
            return Err(SpoolError::Closed);
        }
        finished.ids.push(id.to_string());
        Ok(())
    }
}

struct Segment {
    file: File,
    len: u64,
    seq: u64,
}

impl Segment {
    fn create(dir: &Path, seq: u64, faults: &Faults) -> io::Result<Segment> {
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(segment_path(dir, seq))?;
        // Make the new directory entry durable before any record in it is
        // acknowledged.
        sync_dir(dir, faults)?;
        Ok(Segment { file, len: 0, seq })
    }
}

struct Committer {
    /// Messages marked done, whose `Done` records are still to be written.
    finished: Arc<Mutex<Finished>>,
    /// One batch's records, put together for one write.
    scratch: Vec<u8>,
    dir: PathBuf,
    config: SpoolConfig,
    segment: Segment,
    /// Ids whose batch failed: written as Cancel records at the next chance.
    cancels: Vec<String>,
    /// Every segment on disk, the open one included, with how many of its
    /// messages are pending.
    live: BTreeMap<u64, usize>,
    /// The segment of each pending message.
    location: HashMap<String, u64>,
    gauges: Arc<Gauges>,
    /// Test-only failures and crash records (nothing in a release build).
    faults: Faults,
}

impl Committer {
    fn run(&mut self, rx: mpsc::Receiver<Job>) {
        // Messages acknowledged as durable.
        let mut records = 0u64;
        // Time waiting for work, and time committing batches: how busy the
        // committer was, for the statistics line.
        let (mut idle, mut committing) = (Duration::ZERO, Duration::ZERO);
        let mut stopping = false;
        loop {
            let waiting = Instant::now();
            let first = rx.recv_timeout(DONE_LINGER);
            idle += waiting.elapsed();
            let first = match first {
                Ok(job) => job,
                // No batch for a while: the Done records waiting go alone.
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    self.write_done_alone();
                    self.collect();
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            };
            // Message records to commit, and the Done records waiting (no
            // fsync of their own).
            let (mut batch, mut bytes) = (Vec::new(), 0);
            let mut next = Some(first);
            while let Some(job) = next {
                match job {
                    Job::Stop => {
                        stopping = true;
                        break;
                    }
                    // `bytes` only bounds a batch (MAX_BATCH_BYTES): a
                    // mutant that stops counting changes how many records
                    // share an fsync, not what is durable before its 250.
                    Job::Append(a) => {
                        bytes += a.record.len();
                        batch.push(a);
                    }
                }
                // Whether to take more into this batch: batching only (see
                // MAX_BATCH_BYTES); taking none is slower, never less safe.
                next = (bytes < MAX_BATCH_BYTES)
                    .then(|| rx.try_recv().ok())
                    .flatten();
            }
            // Marked done before this batch's messages were sent: written
            // with it.
            let (done, done_bytes) = self.take_done();
            bytes += done_bytes;
            let seq = self.segment.seq;
            let started = Instant::now();
            let result = self.commit(&done, &batch, bytes);
            if batch.is_empty() {
                // Only Done records (a Stop came first): written, synced
                // below (a failed write costs nothing that recovery does
                // not redo).
                self.collect();
                if stopping {
                    break;
                }
                continue;
            }
            committing += started.elapsed();
            if result.is_ok() {
                *self.live.entry(seq).or_default() += batch.len();
                for a in &batch {
                    self.location.insert(a.id.clone(), seq);
                }
            }
            let mut offset = result.as_ref().map_or(0, |start| *start);
            self.collect();
            if result.is_ok() {
                records += batch.len() as u64;
            }
            let mut answers = Vec::with_capacity(batch.len());
            for Append { id, done, record } in batch {
                let r = match &result {
                    Ok(_) => {
                        let at = Location {
                            seq,
                            offset,
                            len: record.len() as u64,
                        };
                        offset += at.len;
                        Ok(at)
                    }
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
                answers.push((done, r));
            }
            // A failed batch's cancels are durable before it is answered, so
            // a message answered 451 is never delivered after a restart.
            self.flush_cancels();
            for (done, r) in answers {
                let _ = done.send(r);
            }
            if stopping {
                break;
            }
        }
        self.flush_cancels();
        // The last Done records: no mark_done is taken after these.
        self.finished.lock().expect("spool lock").closed = true;
        self.write_done_alone();
        // Done records written since the last batch.
        // (Not counted in `syncs`: that counts the batches' fsyncs.)
        match self.segment.file.sync_data() {
            Ok(()) => {
                self.faults
                    .synced(&self.dir, self.segment.seq, self.segment.len);
            }
            Err(e) => tracing::error!(cause = %e, "spool sync at shutdown failed"),
        }
        tracing::info!(
            event = "spool.stats",
            syncs = self.gauges.syncs.load(Ordering::Relaxed),
            records,
            idle_ms = idle.as_millis() as u64,
            commit_ms = committing.as_millis() as u64,
            "spool committer stopped"
        );
    }

    /// The messages marked done since last asked, forgotten as pending (a
    /// message may go with its segment even if its record is never
    /// written: removing the message record is as final as a Done record),
    /// and their encoded Done records with their total size.
    fn take_done(&mut self) -> (Vec<Vec<u8>>, usize) {
        let ids = std::mem::take(&mut self.finished.lock().expect("spool lock").ids);
        let mut bytes = 0;
        let done = ids
            .iter()
            .map(|id| {
                if let Some(seq) = self.location.remove(id) {
                    self.live
                        .entry(seq)
                        .and_modify(|n| *n = n.saturating_sub(1));
                }
                let record = encode(Kind::Done, &[id.as_bytes()]);
                bytes += record.len();
                record
            })
            .collect();
        (done, bytes)
    }

    /// Writes the Done records waiting, without a batch (no fsync: a later
    /// batch or the shutdown's syncs them; a failed write costs nothing
    /// that recovery does not redo).
    fn write_done_alone(&mut self) {
        let (done, bytes) = self.take_done();
        if !done.is_empty() {
            let _ = self.commit(&done, &[], bytes);
        }
    }

    /// Writes the `done` records and `batch`; with a batch, after checking
    /// the free-space floor, and fsynced. Returns the offset at which
    /// `batch` starts. A failed write moves on to a new segment.
    fn commit(
        &mut self,
        done: &[Vec<u8>],
        batch: &[Append],
        bytes: usize,
    ) -> Result<u64, CommitError> {
        let sync = !batch.is_empty();
        if sync {
            let free = free_bytes(&self.dir).map_err(CommitError::io)?;
            // (`<` or `<=`: the same but at an exact equality of free
            // space, which no test can arrange on a live file system.)
            if free < self.config.min_free_bytes.saturating_add(bytes as u64) {
                tracing::warn!(
                    free,
                    min_free = self.config.min_free_bytes,
                    "spool low on disk space; refusing mail"
                );
                return Err(CommitError::DiskFull);
            }
        }
        let start = match self.write(done, batch, sync) {
            Ok(start) => start,
            Err(e) => {
                tracing::error!(cause = %e, segment = self.segment.seq, "spool write failed; starting a new segment");
                self.rotate();
                return Err(CommitError::io(e));
            }
        };
        // A full segment is left after an fsync only, so that the Done
        // records written before it are synced with the next batch.
        if sync && self.segment.len >= self.config.segment_bytes {
            self.rotate();
        }
        Ok(start)
    }

    /// Writes the cancels of a failed batch now, in the fresh segment; if
    /// that fails too they stay for the next batch.
    fn flush_cancels(&mut self) {
        if self.cancels.is_empty() {
            return;
        }
        if let Err(e) = self.write(&[], &[], true) {
            tracing::error!(cause = %e, "could not write the cancels of a failed batch");
            self.rotate();
        }
    }

    /// Starts the next segment: when the open one is full, or after a
    /// failed write or fsync (the kernel may have dropped the dirty pages
    /// and cleared the error: never write to that file again).
    fn rotate(&mut self) {
        match Segment::create(&self.dir, self.segment.seq + 1, &self.faults) {
            Ok(seg) => {
                self.live.insert(seg.seq, 0);
                self.segment = seg;
            }
            Err(e) => tracing::error!(cause = %e, "could not start a new spool segment"),
        }
    }

    /// Removes the oldest segments while none of their messages is pending,
    /// never the open one.
    fn collect(&mut self) {
        let mut removed = 0;
        while let Some((&seq, &pending)) = self.live.first_key_value() {
            if pending > 0 || seq == self.segment.seq {
                break;
            }
            match std::fs::remove_file(segment_path(&self.dir, seq)) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(segment = seq, cause = %e, "could not remove a spool segment");
                    break;
                }
            }
            self.live.remove(&seq);
        }
        self.gauges
            .pending
            .store(self.location.len(), Ordering::Relaxed);
        self.gauges
            .segments
            .store(self.live.len(), Ordering::Relaxed);
        if removed > 0 {
            // Not needed for safety (a segment back after a crash holds only
            // finished messages) but keeps recovery from reading it again.
            // So mutants of `removed` and of this test are equivalent: they
            // only sync the directory more often, or never after a removal.
            if let Err(e) = sync_dir(&self.dir, &self.faults) {
                tracing::warn!(cause = %e, "spool directory sync failed");
            }
            tracing::debug!(event = "spool.segments_removed", count = removed);
        }
    }

    /// Writes the `done` records, then `batch`; with `sync`, pending cancels
    /// first and an fsync after. Returns the offset at which `batch` starts.
    fn write(&mut self, done: &[Vec<u8>], batch: &[Append], sync: bool) -> io::Result<u64> {
        let cancels: Vec<Vec<u8>> = match sync {
            true => self
                .cancels
                .iter()
                .map(|id| encode(Kind::Cancel, &[id.as_bytes()]))
                .collect(),
            false => Vec::new(),
        };
        if sync {
            self.faults.write()?;
        }
        // One write for the whole batch, not one per record.
        let mut buf = std::mem::take(&mut self.scratch);
        buf.clear();
        for rec in cancels.iter().chain(done) {
            buf.extend_from_slice(rec);
        }
        let start = self.segment.len + buf.len() as u64;
        for rec in batch.iter().map(|a| &a.record) {
            buf.extend_from_slice(rec);
        }
        let written = self.segment.file.write_all(&buf);
        // A failed write leaves the length unknown; the segment is then
        // never written again (see `commit`).
        self.segment.len += buf.len() as u64;
        // Kept for the next batch unless it grew large.
        if buf.capacity() <= 1 << 20 {
            self.scratch = buf;
        }
        written?;
        if sync {
            self.sync()?;
            self.cancels.clear();
        }
        Ok(start)
    }

    /// fsyncs the open segment: everything written to it is durable.
    fn sync(&mut self) -> io::Result<()> {
        self.faults.sync()?;
        self.segment.file.sync_data()?;
        self.gauges.syncs.fetch_add(1, Ordering::Relaxed);
        self.faults
            .synced(&self.dir, self.segment.seq, self.segment.len);
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

/// fsyncs the spool directory: its entries (segments created or removed)
/// are durable.
fn sync_dir(dir: &Path, faults: &Faults) -> io::Result<()> {
    File::open(dir)?.sync_all()?;
    faults.dir_synced(dir);
    Ok(())
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
    Ok(read(dir, true, true)?.into_iter().map(|(_, m)| m).collect())
}

/// Every message ever acknowledged that is still on disk, delivered ones
/// included (not the cancelled ones, which were never acknowledged).
pub fn read_accepted(dir: &Path) -> io::Result<Vec<Spooled>> {
    Ok(read(dir, false, true)?
        .into_iter()
        .map(|(_, m)| m)
        .collect())
}

/// The messages, each with its location; without their content unless
/// `content`.
fn read(dir: &Path, pending_only: bool, content: bool) -> io::Result<Vec<(Location, Spooled)>> {
    let mut messages: Vec<(Location, Spooled)> = Vec::new();
    let mut gone = std::collections::HashSet::new();
    for (seq, path) in segments(dir)? {
        let buf = match std::fs::read(&path) {
            Ok(buf) => buf,
            // Removed by a running server since it was listed (a race no
            // unit test can arrange without a hook; other errors are
            // tested: a segment that cannot be read fails the read).
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let mut at = 0;
        // (`<=` would only log an empty "torn tail" at the end.)
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
                    Some((meta, body)) => messages.push((
                        Location {
                            seq,
                            offset: at as u64,
                            len: n as u64,
                        },
                        Spooled {
                            meta,
                            content: if content { body.to_vec() } else { Vec::new() },
                        },
                    )),
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
    messages.retain(|(_, m)| !gone.contains(&m.meta.id));
    Ok(messages)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No free-space floor; a new segment after `segment_bytes`.
    fn small_segments(segment_bytes: u64) -> SpoolConfig {
        SpoolConfig {
            min_free_bytes: 0,
            segment_bytes,
        }
    }

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
            body: mailwit_smtp::BodyType::SevenBit,
            ..Meta::default()
        }
    }

    #[tokio::test]
    async fn done_and_torn_records_are_not_pending() {
        let dir = tempfile::tempdir().unwrap();
        let config = small_segments(200);
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
    async fn messages_load_from_their_locations() {
        let dir = tempfile::tempdir().unwrap();
        let config = small_segments(300);
        let (spool, committer, _) = Spool::open(dir.path(), &config).unwrap();
        // Two waves of concurrent enqueues: batches of several records,
        // and a new segment for each wave.
        let mut written = Vec::new();
        for wave in 0..2 {
            let mut waits = Vec::new();
            for i in wave * 4..wave * 4 + 4 {
                let spool = spool.clone();
                waits.push(tokio::spawn(async move {
                    let body = format!("body {i}\r\n").repeat(i + 1);
                    let at = spool
                        .enqueue(&meta(&format!("M{i}")), body.as_bytes())
                        .await;
                    (i, body, at.unwrap())
                }));
            }
            for w in waits {
                written.push(w.await.unwrap());
            }
        }
        spool.mark_done("M3").unwrap();
        for (i, body, at) in &written {
            let m = spool.load(at).unwrap();
            assert_eq!(m.meta.id, format!("M{i}"));
            assert_eq!(m.content, body.as_bytes());
        }
        drop(spool);
        committer.join().unwrap();
        assert!(segments(dir.path()).unwrap().len() >= 3);
        // At start-up, pending messages come with the same locations.
        let (spool, _committer, pending) = Spool::open(dir.path(), &config).unwrap();
        assert_eq!(pending.len(), 7);
        for p in &pending {
            let (_, body, at) = written
                .iter()
                .find(|(i, ..)| format!("M{i}") == p.meta.id)
                .unwrap();
            assert_eq!(p.at, *at);
            assert_eq!(spool.load(&p.at).unwrap().content, body.as_bytes());
        }
    }

    #[tokio::test]
    async fn finished_segments_are_removed_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        // Every batch fills its segment: one message per segment.
        let config = small_segments(1);
        let seqs = |dir: &Path| -> Vec<u64> {
            segments(dir).unwrap().into_iter().map(|(s, _)| s).collect()
        };
        let (spool, committer, _) = Spool::open(dir.path(), &config).unwrap();
        for id in ["A", "B", "C"] {
            spool.enqueue(&meta(id), b"body\r\n").await.unwrap();
        }
        // A, B and C in segments 1, 2 and 3; 4 is open.
        assert_eq!(seqs(dir.path()), [1, 2, 3, 4]);
        // B is done, but A before it is not: nothing goes. The enqueue
        // after it returns once the committer has handled the Done.
        spool.mark_done("B").unwrap();
        spool.enqueue(&meta("D"), b"body\r\n").await.unwrap();
        assert_eq!(seqs(dir.path()), [1, 2, 3, 4, 5]);
        spool.mark_done("A").unwrap();
        spool.enqueue(&meta("E"), b"body\r\n").await.unwrap();
        assert_eq!(seqs(dir.path()), [3, 4, 5, 6]);
        // C, D and E pending, in four segment files.
        assert_eq!(spool.gauges(), (3, 4));
        drop(spool);
        committer.join().unwrap();

        // At start-up: C, D and E are pending; once C is done (its Done
        // record in segment 6), a restart removes segment 3.
        let (spool, committer, pending) = Spool::open(dir.path(), &config).unwrap();
        let ids: Vec<_> = pending.iter().map(|m| m.meta.id.as_str()).collect();
        assert_eq!(ids, ["C", "D", "E"]);
        assert_eq!(seqs(dir.path()), [3, 4, 5, 6, 7]);
        spool.mark_done("C").unwrap();
        drop(spool);
        committer.join().unwrap();
        let (_, _, pending) = Spool::open(dir.path(), &config).unwrap();
        let ids: Vec<_> = pending.iter().map(|m| m.meta.id.as_str()).collect();
        assert_eq!(ids, ["D", "E"]);
        assert_eq!(seqs(dir.path()), [4, 5, 6, 7, 8]);
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

    fn ids(messages: Vec<Spooled>) -> Vec<String> {
        let mut ids: Vec<String> = messages.into_iter().map(|m| m.meta.id).collect();
        ids.sort();
        ids
    }

    #[tokio::test]
    async fn a_power_cut_keeps_every_acknowledged_message() {
        let dir = tempfile::tempdir().unwrap();
        let faults = Faults::parse("power-loss");
        // Small segments: the messages span several, each created (and its
        // directory entry synced) on the way.
        let (spool, _committer, _) =
            Spool::open_with(dir.path(), &small_segments(150), faults).unwrap();
        let mut acked = Vec::new();
        for i in 0..6 {
            let id = format!("P{i}");
            let at = spool.enqueue(&meta(&id), b"body\r\n").await.unwrap();
            assert_eq!(
                at.len(),
                encode_message(&meta(&id), b"body\r\n").len() as u64
            );
            acked.push(id);
        }
        assert_eq!(spool.syncs(), 6, "one fsync per lone message");
        // P0's Done record is made durable by the next batch (P6), which
        // returns once the committer has handled both: it is idle then.
        spool.mark_done("P0").unwrap();
        spool.enqueue(&meta("P6"), b"body\r\n").await.unwrap();
        acked.push("P6".into());
        // The machine dies with the spool open; what was fsynced stays.
        assert!(power_cut(dir.path()).unwrap() == 0, "all was synced");
        assert_eq!(ids(read_pending(dir.path()).unwrap()), acked[1..]);
        // Each message reads back whole from where the spool said it is.
        let (reopened, _c, pending) = Spool::open(dir.path(), &small_segments(150)).unwrap();
        assert_eq!(pending.len(), 6);
        for p in &pending {
            assert_eq!(reopened.load(&p.at).unwrap().content, b"body\r\n");
        }
    }

    #[tokio::test]
    async fn a_failed_fsync_is_an_error_and_that_message_never_comes_back() {
        let dir = tempfile::tempdir().unwrap();
        let config = small_segments(1 << 20);
        let faults = Faults::parse("sync-fail=2,power-loss");
        let (spool, committer, _) = Spool::open_with(dir.path(), &config, faults).unwrap();
        spool.enqueue(&meta("A"), b"a\r\n").await.unwrap();
        let r = spool.enqueue(&meta("B"), b"b\r\n").await;
        assert!(matches!(r, Err(SpoolError::Io(_))), "{r:?}");
        // Its octets reached the file, unsynced: a power cut takes exactly
        // them. Its Cancel is durable before the error was answered, in a
        // new segment: the cut keeps that.
        let b_len = encode_message(&meta("B"), b"b\r\n").len() as u64;
        assert_eq!(power_cut(dir.path()).unwrap(), b_len);
        assert_eq!(ids(read_pending(dir.path()).unwrap()), ["A"]);
        assert_eq!(ids(read_accepted(dir.path()).unwrap()), ["A"]);
        // The spool goes on, in the new segment.
        spool.enqueue(&meta("C"), b"c\r\n").await.unwrap();
        assert_eq!(spool.syncs(), 3, "A, the cancel, C");
        drop(spool);
        committer.join().unwrap();
        assert_eq!(ids(read_pending(dir.path()).unwrap()), ["A", "C"]);
        assert_eq!(segments(dir.path()).unwrap().len(), 2);
    }

    #[tokio::test]
    async fn a_write_that_finds_the_disk_full_is_disk_full() {
        let dir = tempfile::tempdir().unwrap();
        let faults = Faults::parse("write-full=1");
        let (spool, committer, _) =
            Spool::open_with(dir.path(), &small_segments(1 << 20), faults).unwrap();
        let r = spool.enqueue(&meta("A"), b"a\r\n").await;
        assert!(matches!(r, Err(SpoolError::DiskFull)), "{r:?}");
        // Nothing of A was written, but it may have been: its Cancel is.
        assert_eq!(spool.syncs(), 1, "the cancel");
        spool.enqueue(&meta("B"), b"b\r\n").await.unwrap();
        drop(spool);
        committer.join().unwrap();
        assert_eq!(ids(read_pending(dir.path()).unwrap()), ["B"]);
    }

    #[tokio::test]
    async fn accepted_includes_done_and_excludes_cancelled() {
        let dir = tempfile::tempdir().unwrap();
        let faults = Faults::parse("sync-fail=3");
        let (spool, committer, _) =
            Spool::open_with(dir.path(), &small_segments(1 << 20), faults).unwrap();
        spool.enqueue(&meta("A"), b"a\r\n").await.unwrap();
        spool.enqueue(&meta("B"), b"b\r\n").await.unwrap();
        assert!(spool.enqueue(&meta("X"), b"x\r\n").await.is_err());
        spool.mark_done("A").unwrap();
        drop(spool);
        committer.join().unwrap();
        assert_eq!(ids(read_pending(dir.path()).unwrap()), ["B"]);
        assert_eq!(ids(read_accepted(dir.path()).unwrap()), ["A", "B"]);
        let (_, _, pending) = Spool::open(dir.path(), &small_segments(1 << 20)).unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].meta.id, "B");
    }

    #[tokio::test]
    async fn a_location_that_is_not_a_message_record_does_not_load() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _committer, _) = Spool::open(dir.path(), &small_segments(1 << 20)).unwrap();
        let at = spool.enqueue(&meta("A"), b"a\r\n").await.unwrap();
        spool.mark_done("A").unwrap();
        // The Done record follows the message; flushed by the next batch.
        let b = spool.enqueue(&meta("B"), b"b\r\n").await.unwrap();
        let done_len = encode(Kind::Done, &[b"A"]).len() as u64;
        assert_eq!(b.offset, at.offset + at.len + done_len);
        let done_at = Location {
            seq: at.seq,
            offset: at.offset + at.len,
            len: done_len,
        };
        let e = spool.load(&done_at).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert_eq!(spool.load(&b).unwrap().content, b"b\r\n");
    }

    #[tokio::test]
    async fn a_closed_spool_refuses_writes() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, committer, _) = Spool::open(dir.path(), &small_segments(1 << 20)).unwrap();
        spool.enqueue(&meta("A"), b"a\r\n").await.unwrap();
        spool.close();
        committer.join().unwrap();
        let r = spool.enqueue(&meta("B"), b"b\r\n").await;
        assert!(matches!(r, Err(SpoolError::Closed)), "{r:?}");
        assert!(matches!(spool.mark_done("A"), Err(SpoolError::Closed)));
        assert_eq!(ids(read_pending(dir.path()).unwrap()), ["A"]);
    }

    #[tokio::test]
    async fn a_vanished_segment_is_forgotten_and_one_that_cannot_be_removed_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _committer, _) = Spool::open(dir.path(), &small_segments(1)).unwrap();
        for id in ["A", "B", "C"] {
            spool.enqueue(&meta(id), b"body\r\n").await.unwrap();
        }
        // Segments 1, 2, 3 hold A, B, C; 4 is open.
        assert_eq!(spool.gauges(), (3, 4));
        // Someone removed segment 1 behind the spool's back: once A is
        // done it is forgotten like a removed one, and collection goes on.
        std::fs::remove_file(segment_path(dir.path(), 1)).unwrap();
        spool.mark_done("A").unwrap();
        spool.enqueue(&meta("D"), b"body\r\n").await.unwrap();
        assert_eq!(spool.gauges(), (3, 4), "segments 2 to 5");
        // Segment 2 became something that cannot be removed: it is kept
        // (and counted), and nothing after it goes either.
        std::fs::remove_file(segment_path(dir.path(), 2)).unwrap();
        std::fs::create_dir(segment_path(dir.path(), 2)).unwrap();
        spool.mark_done("B").unwrap();
        spool.mark_done("C").unwrap();
        spool.enqueue(&meta("E"), b"body\r\n").await.unwrap();
        assert_eq!(spool.gauges(), (2, 5), "segments 2 to 6");
        // And a segment that cannot be read fails the read, rather than
        // being skipped with its messages.
        let e = read_pending(dir.path()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::IsADirectory);
    }
}
