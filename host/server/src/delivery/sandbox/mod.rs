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

/// When a kept message was received: its queue id is a ULID, which
/// carries its creation time (so expiry needs no file times and works the
/// same in every store).
fn received_ms(id: &str) -> Option<u64> {
    ulid::Ulid::from_string(id).ok().map(|u| u.timestamp_ms())
}

/// Deletes a tenant's messages received before `cutoff_ms` (the status
/// retention); returns how many.
pub async fn expire(
    store: &dyn SandboxStore,
    tenant: &str,
    cutoff_ms: u64,
) -> std::io::Result<usize> {
    let mut n = 0;
    for (id, _) in store.list(tenant).await? {
        if received_ms(&id).is_some_and(|t| t < cutoff_ms) {
            n += usize::from(store.delete(tenant, &id).await?);
        }
    }
    Ok(n)
}

/// Makes room for `size` more bytes in a tenant's sandbox of at most
/// `cap` bytes, deleting its oldest messages first (as a testing inbox
/// does when it is full). False when the message alone is over the cap.
async fn make_room(
    store: &dyn SandboxStore,
    tenant: &str,
    size: u64,
    cap: u64,
) -> std::io::Result<bool> {
    if size > cap {
        return Ok(false);
    }
    let kept = store.list(tenant).await?;
    let mut total: u64 = kept.iter().map(|(_, s)| s).sum();
    // By id: a ULID sorts by time, so the oldest come first.
    for (id, s) in kept {
        if total + size <= cap {
            break;
        }
        if store.delete(tenant, &id).await? {
            tracing::info!(event = "sandbox.evicted", tenant, queue_id = %id, size = s);
            total -= s;
        }
    }
    Ok(true)
}

/// Writes the message to the sandbox, within the tenant's `cap` of bytes;
/// one outcome per recipient (the write is one for all: a failure defers
/// them all).
pub async fn deliver(
    store: &dyn SandboxStore,
    m: &Spooled,
    recipients: usize,
    cap: u64,
) -> Vec<Outcome> {
    match make_room(store, &m.meta.tenant, m.content.len() as u64, cap).await {
        Ok(true) => {}
        Ok(false) => {
            return each(
                recipients,
                Outcome::Failed(
                    552,
                    "5.3.4".into(),
                    format!("larger than the tenant's sandbox ({cap} bytes)"),
                ),
            );
        }
        Err(e) => {
            return each(
                recipients,
                Outcome::Deferred(format!("reading the sandbox: {e}")),
            );
        }
    }
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
