//! Test-only failures and crash records for the spool, so the tests can
//! observe what a real disk hides: a failed fsync, a full disk, and what
//! a power cut would keep (SIGKILL keeps the page cache, so it cannot show
//! a missing fsync).
//!
//! Read from `MAILWIT_FAULTS` in debug builds only (what `cargo test`
//! runs); a release build never reads it and every hook does nothing. A
//! comma-separated list of:
//!
//! - `sync-fail=N`: the Nth segment fsync (counting from 1) fails with EIO;
//! - `write-full=N`: the Nth batch write fails with ENOSPC;
//! - `power-loss`: after each segment fsync, `<segment>.synced` holds the
//!   length that is now durable; after each directory fsync,
//!   `directory.synced` lists the segment files whose entries are. A test
//!   that kills the server (or drops a spool) can then cut the spool back
//!   to exactly what a power cut would leave: [`power_cut`] (used by the
//!   unit tests and `tests/e2e/durability.rs`).

use std::io;
use std::path::Path;

#[derive(Debug, Default)]
pub struct Faults {
    sync_fail: Option<u64>,
    write_full: Option<u64>,
    power_loss: bool,
    syncs: u64,
    writes: u64,
}

impl Faults {
    /// The faults the environment asks for (none in a release build).
    pub fn from_env() -> Faults {
        #[cfg(debug_assertions)]
        if let Ok(spec) = std::env::var("MAILWIT_FAULTS") {
            return Faults::parse(&spec);
        }
        Faults::default()
    }

    // Only debug builds (and the unit tests) read a specification.
    #[cfg_attr(not(debug_assertions), allow(dead_code))]
    pub(super) fn parse(spec: &str) -> Faults {
        let mut f = Faults::default();
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (name, n) = item.split_once('=').unwrap_or((item, ""));
            let n = n.parse().ok();
            match name {
                "sync-fail" => f.sync_fail = n,
                "write-full" => f.write_full = n,
                "power-loss" => f.power_loss = true,
                _ => tracing::warn!(item, "unknown MAILWIT_FAULTS item"),
            }
        }
        // (A log line only: mutants of this test are equivalent.)
        if f.sync_fail.is_some() || f.write_full.is_some() || f.power_loss {
            tracing::warn!(?f, "spool faults injected (MAILWIT_FAULTS)");
        }
        f
    }

    /// Before a batch is written.
    pub fn write(&mut self) -> io::Result<()> {
        self.writes += 1;
        match self.write_full == Some(self.writes) {
            true => Err(io::Error::from(io::ErrorKind::StorageFull)),
            false => Ok(()),
        }
    }

    /// Before a segment's fsync.
    pub fn sync(&mut self) -> io::Result<()> {
        self.syncs += 1;
        match self.sync_fail == Some(self.syncs) {
            true => Err(io::Error::other("injected fsync failure")),
            false => Ok(()),
        }
    }

    /// After the fsync of segment `seq` under `dir`: its first `len`
    /// octets are durable. (Nothing, not even the path, without
    /// `power-loss`: this runs once per committed batch.)
    pub fn synced(&self, dir: &Path, seq: u64, len: u64) {
        if self.power_loss {
            let mut name = super::segment_path(dir, seq).into_os_string();
            name.push(".synced");
            marker(Path::new(&name), len.to_string().as_bytes());
        }
    }

    /// After the directory's fsync: the segments in it now are durable.
    pub fn dir_synced(&self, dir: &Path) {
        if !self.power_loss {
            return;
        }
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.ends_with(".seg"))
            .collect();
        names.sort();
        marker(&dir.join("directory.synced"), names.join("\n").as_bytes());
    }
}

/// Writes a crash record whole or not at all (a temporary file renamed
/// over it): a SIGKILL between a plain write's truncation and its bytes
/// would leave an empty record, and the cut would then take octets that
/// were fsynced.
fn marker(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("marker-tmp");
    if std::fs::write(&tmp, bytes).is_ok() {
        let _ = std::fs::rename(&tmp, path);
    }
}

/// Cuts the spool under `dir` back to what a power cut would have left
/// of a spool run with `power-loss`: segment files whose directory entry
/// was never fsynced are removed, the others truncated to their last
/// fsynced length. Returns how many octets went. For tests only; run it
/// after the server is dead (or the spool idle).
pub fn power_cut(dir: &Path) -> io::Result<u64> {
    let listed = std::fs::read_to_string(dir.join("directory.synced")).unwrap_or_default();
    let durable: std::collections::HashSet<&str> = listed.lines().collect();
    let mut dropped = 0;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if !name.ends_with(".seg") {
            continue;
        }
        let len = std::fs::metadata(&path)?.len();
        if !durable.contains(name) {
            dropped += len;
            std::fs::remove_file(&path)?;
            continue;
        }
        let synced = std::fs::read_to_string(dir.join(format!("{name}.synced")))
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
            .unwrap_or(0);
        if synced > len {
            return Err(io::Error::other(format!(
                "{name}: {synced} octets synced of {len}"
            )));
        }
        dropped += len - synced;
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)?
            .set_len(synced)?;
    }
    Ok(dropped)
}

/// Cuts the `Done` record of message `id` off the end of its segment, as
/// a power loss before the next fsync would (a `Done` record gets no fsync
/// of its own). For tests only, with the server dead.
pub fn lose_done_record(dir: &Path, id: &str) -> io::Result<()> {
    let done = super::record::encode(super::record::Kind::Done, &[id.as_bytes()]);
    for (_, path) in super::segments(dir)? {
        let len = std::fs::metadata(&path)?.len();
        if std::fs::read(&path)?.ends_with(&done) {
            return std::fs::OpenOptions::new()
                .write(true)
                .open(&path)?
                .set_len(len - done.len() as u64);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("no segment ends with the Done record of {id}"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_from_one_and_fails_once() {
        let mut f = Faults::parse("sync-fail=2, write-full=1");
        assert_eq!(
            f.write().unwrap_err().kind(),
            io::ErrorKind::StorageFull,
            "first write"
        );
        assert!(f.write().is_ok());
        assert!(f.sync().is_ok());
        assert!(f.sync().is_err());
        assert!(f.sync().is_ok());
        assert!(!f.power_loss);
        assert!(Faults::parse("power-loss").power_loss);
    }
}
