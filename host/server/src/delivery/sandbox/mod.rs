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

use super::attempt::Outcome;
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

/// What a test address asks for: a recipient whose local part starts with
/// `bounce+`, `fail+` or `defer+` (any case; the rest is the tenant's own
/// tag) is not kept but fails, or waits, as a real one would, so a tenant
/// can test its handling of events, delivery reports and DSNs end to end.
/// Only in the sandbox: nothing is reserved on a relay route.
///
/// - `bounce+...@`: `550 5.1.1`, no such mailbox (a hard bounce), and a DSN;
/// - `fail+...@`: `554 5.7.1`, refused by the receiving side, and a DSN;
/// - `defer+...@`: `451 4.4.1` at the first attempt; the retry keeps it in
///   the sandbox as any recipient.
///
/// `attempts` is how many attempts came before this one.
pub fn test_address(recipient: &str, attempts: u32) -> Option<Outcome> {
    let local = recipient.rsplit_once('@').map_or(recipient, |(l, _)| l);
    let (kind, _tag) = local.split_once('+')?;
    let text = |code: &str, what: &str| {
        format!(
            "{code} test address {}+: {what} (sandbox)",
            kind.to_ascii_lowercase()
        )
    };
    match kind.to_ascii_lowercase().as_str() {
        "bounce" => Some(Outcome::Failed(
            550,
            "5.1.1".into(),
            text("550 5.1.1", "no such mailbox"),
        )),
        "fail" => Some(Outcome::Failed(
            554,
            "5.7.1".into(),
            text("554 5.7.1", "refused by the receiving side"),
        )),
        "defer" if attempts == 0 => Some(Outcome::Deferred(text(
            "451 4.4.1",
            "try again later; the next attempt delivers",
        ))),
        _ => None,
    }
}

/// Whether `recipient` is a test address that fails ([`test_address`]).
pub fn fails_as_a_test(recipient: &str) -> bool {
    matches!(test_address(recipient, 0), Some(Outcome::Failed(..)))
}

/// Writes the message to the sandbox, within the tenant's `cap` of bytes;
/// one outcome per recipient, in order: a test address's own
/// ([`test_address`]; `attempts` came before), else the write's, which is
/// one for all (a failure defers them all). Nothing is written when every
/// recipient is a test address that does not deliver now.
pub async fn deliver(
    store: &dyn SandboxStore,
    m: &Spooled,
    recipients: &[String],
    attempts: u32,
    cap: u64,
) -> Vec<Outcome> {
    let tests: Vec<Option<Outcome>> = recipients
        .iter()
        .map(|r| test_address(r, attempts))
        .collect();
    let kept = match tests.iter().any(Option::is_none) {
        true => Some(keep(store, m, cap).await),
        false => None,
    };
    tests
        .into_iter()
        .map(|t| {
            t.or_else(|| kept.clone())
                .expect("kept for every other recipient")
        })
        .collect()
}

/// Keeps the message within the tenant's `cap`: the outcome of each
/// recipient kept.
async fn keep(store: &dyn SandboxStore, m: &Spooled, cap: u64) -> Outcome {
    match make_room(store, &m.meta.tenant, m.content.len() as u64, cap).await {
        Ok(true) => {}
        Ok(false) => {
            return Outcome::Failed(
                552,
                "5.3.4".into(),
                format!("larger than the tenant's sandbox ({cap} bytes)"),
            );
        }
        Err(e) => return Outcome::Deferred(format!("reading the sandbox: {e}")),
    }
    match store.keep(&m.meta.tenant, &m.meta.id, &m.content).await {
        Ok(()) => Outcome::Sent("captured in the sandbox".into()),
        Err(e) => Outcome::Deferred(format!("writing to the sandbox: {e}")),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The reserved local parts, in any case, and nothing else.
    #[test]
    fn test_addresses_are_the_reserved_local_parts_only() {
        assert!(matches!(
            test_address("bounce+x@example.com", 0),
            Some(Outcome::Failed(550, s, _)) if s == "5.1.1"
        ));
        assert!(matches!(
            test_address("FAIL+x@example.com", 3),
            Some(Outcome::Failed(554, s, _)) if s == "5.7.1"
        ));
        assert!(matches!(
            test_address("defer+@example.com", 0),
            Some(Outcome::Deferred(_))
        ));
        assert_eq!(test_address("defer+x@example.com", 1), None);
        for plain in [
            "bounce@example.com",
            "x+bounce@example.com",
            "bouncer+x@example.com",
        ] {
            assert_eq!(test_address(plain, 0), None, "{plain}");
        }
        assert!(fails_as_a_test("bounce+a@b") && !fails_as_a_test("defer+a@b"));
    }
}
