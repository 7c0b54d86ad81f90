//! The artifact store: what operators and tenants deploy (function
//! versions, rules versions, status API versions) and the state that says
//! which is active, with its history for rollback.
//!
//! An owner (`tenants/<id>`, `status-api`) has one state document (JSON,
//! written by [`crate::tenants`] and [`crate::statusapi`]) and named blobs
//! (`functions/<name>/<v>.wasm`, `rules/<v>.toml`, `<v>.wasm`). A blob is
//! written before the state that names it, and never changes afterwards.
//!
//! [`FileArtifacts`] keeps them under `data_dir` (the layout of one host:
//! `<owner>/state.json`, `<owner>/<blob>`). [`jetstream::JetStreamArtifacts`]
//! keeps them in the cluster, and tells every host when another one
//! changed a state ([`ArtifactStore::changes`]).
//!
//! The callers (an admin request, start-up, a watch) run on blocking
//! threads; the file store does its I/O there directly.

pub mod jetstream;

use std::path::{Path, PathBuf};

use async_trait::async_trait;

use crate::fsutil::write_durable;

#[async_trait]
pub trait ArtifactStore: Send + Sync {
    /// Every owner whose name starts with `prefix`, with its state.
    async fn states(&self, prefix: &str) -> anyhow::Result<Vec<(String, Vec<u8>)>>;
    /// One owner's state, if it has one.
    async fn state(&self, owner: &str) -> anyhow::Result<Option<Vec<u8>>>;
    /// Stores an owner's state durably (it becomes what every host loads).
    async fn put_state(&self, owner: &str, state: &[u8]) -> anyhow::Result<()>;
    /// Stores a blob durably.
    async fn put_blob(&self, owner: &str, name: &str, bytes: &[u8]) -> anyhow::Result<()>;
    /// A blob's bytes.
    async fn blob(&self, owner: &str, name: &str) -> anyhow::Result<Vec<u8>>;
    /// Removes an owner: its state and its blobs. Other hosts hear of it as
    /// a change with an empty state.
    async fn remove(&self, owner: &str) -> anyhow::Result<()>;
    /// Each state stored (by any host) as it is stored: the owner and the
    /// state. `None` for a store only this host writes.
    fn changes(&self) -> Option<tokio::sync::broadcast::Receiver<(String, Vec<u8>)>> {
        None
    }
}

/// The embedded store: files under one directory.
pub struct FileArtifacts {
    dir: PathBuf,
}

impl FileArtifacts {
    pub fn new(dir: &Path) -> FileArtifacts {
        FileArtifacts {
            dir: dir.to_path_buf(),
        }
    }

    fn state_path(&self, owner: &str) -> PathBuf {
        self.dir.join(owner).join("state.json")
    }
}

#[async_trait]
impl ArtifactStore for FileArtifacts {
    async fn states(&self, prefix: &str) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
        // `prefix` is a directory path with a trailing '/', or an owner.
        let (parent, start) = match prefix.rsplit_once('/') {
            Some((dir, start)) => (self.dir.join(dir), start),
            None => (self.dir.clone(), prefix),
        };
        let base = prefix.rsplit_once('/').map(|(d, _)| format!("{d}/"));
        let mut out = Vec::new();
        let entries = match std::fs::read_dir(&parent) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e.into()),
        };
        for entry in entries {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if !name.starts_with(start) {
                continue;
            }
            let owner = format!("{}{name}", base.as_deref().unwrap_or(""));
            if let Some(state) = self.state(&owner).await? {
                out.push((owner, state));
            }
        }
        out.sort();
        Ok(out)
    }

    async fn state(&self, owner: &str) -> anyhow::Result<Option<Vec<u8>>> {
        match std::fs::read(self.state_path(owner)) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn put_state(&self, owner: &str, state: &[u8]) -> anyhow::Result<()> {
        Ok(write_durable(&self.state_path(owner), state)?)
    }

    async fn put_blob(&self, owner: &str, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
        Ok(write_durable(&self.dir.join(owner).join(name), bytes)?)
    }

    async fn blob(&self, owner: &str, name: &str) -> anyhow::Result<Vec<u8>> {
        let path = self.dir.join(owner).join(name);
        std::fs::read(&path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))
    }

    /// The state goes first (durably), so a crash in between leaves blobs
    /// that no state names, never a state naming missing blobs.
    async fn remove(&self, owner: &str) -> anyhow::Result<()> {
        let dir = self.dir.join(owner);
        match std::fs::remove_file(self.state_path(owner)) {
            Ok(()) => crate::fsutil::sync_dir(&dir)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn file_states_are_listed_by_prefix_and_blobs_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let s = FileArtifacts::new(dir.path());
        assert!(s.states("tenants/").await.unwrap().is_empty());
        s.put_blob("tenants/acme", "rules/1.toml", b"x = 1")
            .await
            .unwrap();
        s.put_state("tenants/acme", b"{}").await.unwrap();
        s.put_state("tenants/beta", b"{\"a\":1}").await.unwrap();
        s.put_state("status-api", b"[]").await.unwrap();
        assert_eq!(
            s.states("tenants/").await.unwrap(),
            vec![
                ("tenants/acme".to_string(), b"{}".to_vec()),
                ("tenants/beta".to_string(), b"{\"a\":1}".to_vec())
            ]
        );
        assert_eq!(s.state("status-api").await.unwrap().unwrap(), b"[]");
        assert_eq!(s.state("nobody").await.unwrap(), None);
        assert_eq!(
            s.blob("tenants/acme", "rules/1.toml").await.unwrap(),
            b"x = 1"
        );
        assert!(s.blob("tenants/acme", "rules/2.toml").await.is_err());
    }
}
