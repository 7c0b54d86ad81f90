//! The `sandbox` route, like Mailtrap's testing inbox: a message is kept
//! at `<data_dir>/sandbox/<tenant>/<id>.eml`, byte for byte, and never
//! sent; the admin and status APIs list it and read it back.

use std::path::{Path, PathBuf};

use super::attempt::{Outcome, each};
use super::status::Status;
use crate::spool::Spooled;

/// The final event of a sandboxed recipient.
pub const DONE: Status = Status::DeliveredToSandbox;

fn dir(data_dir: &Path, tenant: &str) -> PathBuf {
    data_dir.join("sandbox").join(tenant)
}

/// Writes the message durably; one outcome per recipient (the write is
/// one for all: a failure defers them all).
pub async fn deliver(data_dir: &Path, m: &Spooled, recipients: usize) -> Vec<Outcome> {
    let path = dir(data_dir, &m.meta.tenant).join(format!("{}.eml", m.meta.id));
    let content = m.content.clone();
    let written =
        tokio::task::spawn_blocking(move || crate::fsutil::write_durable(&path, &content))
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r);
    each(
        recipients,
        match written {
            Ok(()) => Outcome::Sent("captured in the sandbox".into()),
            Err(e) => Outcome::Deferred(format!("writing to the sandbox: {e}")),
        },
    )
}

/// A tenant's sandbox: `(queue id, size)` of each captured message, by id.
pub fn list(data_dir: &Path, tenant: &str) -> Vec<(String, u64)> {
    let Ok(rd) = std::fs::read_dir(dir(data_dir, tenant)) else {
        return Vec::new();
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
    out
}

/// One sandboxed message's raw content (`None` for an id that is not a
/// queue id's alphabet: no path is made of it).
pub fn message(data_dir: &Path, tenant: &str, id: &str) -> Option<Vec<u8>> {
    if !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return None;
    }
    std::fs::read(dir(data_dir, tenant).join(format!("{id}.eml"))).ok()
}
