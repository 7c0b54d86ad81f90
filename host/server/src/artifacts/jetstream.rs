//! The cluster's artifact store: states in a key-value bucket with history
//! (`<P>_ARTIFACTS`, key `s.<owner>`), blobs in an object store by content
//! digest (`<P>_BLOBS`, named by SHA-256; the bucket's key `b.<owner>.<name>`
//! holds the digest), so a component deployed twice is stored once. Every
//! host watches the states and hears of another host's change at once.

use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::{kv, object_store, stream};
use async_trait::async_trait;
use futures::StreamExt;
use tokio::io::AsyncReadExt;
use tokio::sync::broadcast;

use super::ArtifactStore;
use crate::cluster::Cluster;

pub struct JetStreamArtifacts {
    kv: kv::Store,
    blobs: object_store::ObjectStore,
    changes: broadcast::Sender<(String, Vec<u8>)>,
}

impl JetStreamArtifacts {
    /// Creates (or finds) the bucket and the object store, waiting until
    /// JetStream answers, and starts watching the states.
    pub async fn open(cluster: &Cluster) -> JetStreamArtifacts {
        let js = cluster.js.clone();
        let kv_config = kv::Config {
            bucket: cluster.stream_name("ARTIFACTS"),
            history: 64,
            storage: stream::StorageType::File,
            num_replicas: cluster.config.replicas,
            ..Default::default()
        };
        let kv = Cluster::until_ready("the artifacts bucket", || async {
            match js.get_key_value(&kv_config.bucket).await {
                Ok(kv) => Ok(kv),
                Err(_) => js
                    .create_key_value(kv_config.clone())
                    .await
                    .map_err(|e| e.to_string()),
            }
        })
        .await;
        let blobs = cluster.object_store("BLOBS").await;
        let (changes, _) = broadcast::channel(1024);
        tokio::spawn(watch(kv.clone(), changes.clone()));
        JetStreamArtifacts { kv, blobs, changes }
    }
}

/// Passes every state change on, with the state as the watch saw it (a
/// read of the key could reach a replica a moment behind), watching again
/// from the next revision after a failure.
async fn watch(kv: kv::Store, out: broadcast::Sender<(String, Vec<u8>)>) {
    let mut next: Option<u64> = None;
    loop {
        let w = match next {
            Some(rev) => kv.watch_from_revision("s.>", rev).await,
            None => kv.watch("s.>").await,
        };
        match w {
            Ok(mut w) => {
                while let Some(entry) = w.next().await {
                    match entry {
                        Ok(e) => {
                            next = Some(e.revision + 1);
                            // A removed owner is told with an empty state.
                            if let Some(owner) = e.key.strip_prefix("s.") {
                                let state = match e.operation {
                                    kv::Operation::Put => e.value.to_vec(),
                                    _ => Vec::new(),
                                };
                                let _ = out.send((owner.to_string(), state));
                            }
                        }
                        Err(e) => {
                            tracing::warn!(event = "artifacts.watch_failed", cause = %e);
                            break;
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(event = "artifacts.watch_failed", cause = %e),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn digest(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[async_trait]
impl ArtifactStore for JetStreamArtifacts {
    async fn states(&self, prefix: &str) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
        let mut keys = self.kv.keys().await.context("listing the artifacts")?;
        let mut owners = Vec::new();
        while let Some(k) = keys.next().await {
            let k = k.context("listing the artifacts")?;
            if let Some(owner) = k.strip_prefix("s.")
                && owner.starts_with(prefix)
            {
                owners.push(owner.to_string());
            }
        }
        owners.sort();
        let mut out = Vec::new();
        for owner in owners {
            if let Some(state) = self.state(&owner).await? {
                out.push((owner, state));
            }
        }
        Ok(out)
    }

    async fn state(&self, owner: &str) -> anyhow::Result<Option<Vec<u8>>> {
        let v = self
            .kv
            .get(format!("s.{owner}"))
            .await
            .with_context(|| format!("reading the state of {owner}"))?;
        Ok(v.map(|b| b.to_vec()))
    }

    async fn put_state(&self, owner: &str, state: &[u8]) -> anyhow::Result<()> {
        self.kv
            .put(format!("s.{owner}"), state.to_vec().into())
            .await
            .with_context(|| format!("storing the state of {owner}"))?;
        Ok(())
    }

    /// The state and the names of the owner's blobs go; the blobs'
    /// content stays in the object store (content-addressed, it may be
    /// another owner's too).
    async fn remove(&self, owner: &str) -> anyhow::Result<()> {
        let prefix = format!("b.{owner}.");
        let mut keys = self.kv.keys().await.context("listing the artifacts")?;
        let mut names = Vec::new();
        while let Some(k) = keys.next().await {
            let k = k.context("listing the artifacts")?;
            if k.starts_with(&prefix) {
                names.push(k);
            }
        }
        for k in names {
            self.kv.purge(&k).await.context("removing a blob's name")?;
        }
        self.kv
            .purge(format!("s.{owner}"))
            .await
            .with_context(|| format!("removing the state of {owner}"))?;
        Ok(())
    }

    async fn put_blob(&self, owner: &str, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
        let d = digest(bytes);
        if self.blobs.info(&d).await.is_err() {
            self.blobs
                .put(d.as_str(), &mut &bytes[..])
                .await
                .with_context(|| format!("storing {owner}/{name}"))?;
        }
        self.kv
            .put(format!("b.{owner}.{name}"), d.into_bytes().into())
            .await
            .with_context(|| format!("storing {owner}/{name}"))?;
        Ok(())
    }

    async fn blob(&self, owner: &str, name: &str) -> anyhow::Result<Vec<u8>> {
        // Written before the state that names it; a replica serving the
        // read may be a moment behind the one that took the write.
        let mut wait = Duration::from_millis(50);
        let d = loop {
            match self.kv.get(format!("b.{owner}.{name}")).await {
                Ok(Some(d)) => break String::from_utf8_lossy(&d).into_owned(),
                Ok(None) if wait < Duration::from_secs(2) => {
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
                Ok(None) => anyhow::bail!("no {owner}/{name} in the cluster"),
                Err(e) => return Err(e).with_context(|| format!("reading {owner}/{name}")),
            }
        };
        let mut object = self
            .blobs
            .get(d.as_str())
            .await
            .with_context(|| format!("reading {owner}/{name} ({d})"))?;
        let mut bytes = Vec::new();
        object
            .read_to_end(&mut bytes)
            .await
            .with_context(|| format!("reading {owner}/{name} ({d})"))?;
        anyhow::ensure!(
            digest(&bytes) == d,
            "{owner}/{name}: the stored bytes do not match their digest"
        );
        Ok(bytes)
    }

    fn changes(&self) -> Option<broadcast::Receiver<(String, Vec<u8>)>> {
        Some(self.changes.subscribe())
    }
}
