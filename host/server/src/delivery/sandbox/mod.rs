//! The `sandbox` route, like Mailtrap's testing inbox: a message is kept
//! byte for byte and never sent; the admin and status APIs list it and
//! read it back.
//!
//! [`SandboxStore`] is where: [`FileSandbox`] keeps
//! `<data_dir>/sandbox/<tenant>/<id>.eml`; [`jetstream::JetStreamSandbox`]
//! an object store of the cluster, so every host's APIs see what any host
//! kept.

pub mod jetstream;

use std::path::{Path, PathBuf};

use async_trait::async_trait;

use super::attempt::{Outcome, each};
use super::status::Status;
use crate::spool::Spooled;

#[async_trait]
pub trait SandboxStore: Send + Sync {
    /// Keeps a message durably.
    async fn keep(&self, tenant: &str, id: &str, content: &[u8]) -> std::io::Result<()>;
    /// A tenant's sandbox: `(queue id, size)` of each kept message, by id.
    async fn list(&self, tenant: &str) -> std::io::Result<Vec<(String, u64)>>;
    /// One kept message's raw content, if there is one.
    async fn message(&self, tenant: &str, id: &str) -> std::io::Result<Option<Vec<u8>>>;
    /// Deletes one kept message; whether there was one.
    async fn delete(&self, tenant: &str, id: &str) -> std::io::Result<bool>;
    /// Deletes every message of a tenant (the tenant is being deleted);
    /// returns how many.
    async fn remove_tenant(&self, tenant: &str) -> std::io::Result<usize> {
        let mut n = 0;
        for (id, _) in self.list(tenant).await? {
            n += usize::from(self.delete(tenant, &id).await?);
        }
        Ok(n)
    }
}

/// A queue id's alphabet: anything else names no message (and no path is
/// made of it).
fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// The final event of a sandboxed recipient.
pub const DONE: Status = Status::DeliveredToSandbox;

/// Writes the message to the sandbox; one outcome per recipient (the
/// write is one for all: a failure defers them all).
pub async fn deliver(store: &dyn SandboxStore, m: &Spooled, recipients: usize) -> Vec<Outcome> {
    let written = store.keep(&m.meta.tenant, &m.meta.id, &m.content).await;
    each(
        recipients,
        match written {
            Ok(()) => Outcome::Sent("captured in the sandbox".into()),
            Err(e) => Outcome::Deferred(format!("writing to the sandbox: {e}")),
        },
    )
}

/// The embedded sandbox: files under `<data_dir>/sandbox/`.
pub struct FileSandbox {
    dir: PathBuf,
}

impl FileSandbox {
    pub fn new(data_dir: &Path) -> FileSandbox {
        FileSandbox {
            dir: data_dir.join("sandbox"),
        }
    }
}

#[async_trait]
impl SandboxStore for FileSandbox {
    async fn keep(&self, tenant: &str, id: &str, content: &[u8]) -> std::io::Result<()> {
        if !valid_id(id) {
            return Err(std::io::Error::other(format!("not a queue id: {id:?}")));
        }
        let path = self.dir.join(tenant).join(format!("{id}.eml"));
        let content = content.to_vec();
        tokio::task::spawn_blocking(move || crate::fsutil::write_durable(&path, &content))
            .await
            .map_err(std::io::Error::other)?
    }

    async fn list(&self, tenant: &str) -> std::io::Result<Vec<(String, u64)>> {
        let rd = match std::fs::read_dir(self.dir.join(tenant)) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out: Vec<(String, u64)> = rd
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let id = name.strip_suffix(".eml")?.to_string();
                Some((id, e.metadata().ok()?.len()))
            })
            .collect();
        out.sort();
        Ok(out)
    }

    async fn message(&self, tenant: &str, id: &str) -> std::io::Result<Option<Vec<u8>>> {
        if !valid_id(id) {
            return Ok(None);
        }
        match std::fs::read(self.dir.join(tenant).join(format!("{id}.eml"))) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn delete(&self, tenant: &str, id: &str) -> std::io::Result<bool> {
        if !valid_id(id) {
            return Ok(false);
        }
        match std::fs::remove_file(self.dir.join(tenant).join(format!("{id}.eml"))) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }
}
