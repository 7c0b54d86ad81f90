//! The cluster's sandbox: an object store (`<P>_SANDBOX`), one object per
//! kept message, named `<tenant>/<queue id>`.

use async_nats::jetstream::object_store::ObjectStore;
use async_trait::async_trait;
use futures::StreamExt;
use tokio::io::AsyncReadExt;

use super::{SandboxStore, valid_id};
use crate::cluster::Cluster;

pub struct JetStreamSandbox {
    objects: ObjectStore,
}

impl JetStreamSandbox {
    /// Creates (or finds) the object store, waiting until JetStream answers.
    pub async fn open(cluster: &Cluster) -> JetStreamSandbox {
        JetStreamSandbox {
            objects: cluster.object_store("SANDBOX").await,
        }
    }
}

fn other(what: &str, e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(format!("{what}: {e}"))
}

#[async_trait]
impl SandboxStore for JetStreamSandbox {
    async fn keep(&self, tenant: &str, id: &str, content: &[u8]) -> std::io::Result<()> {
        if !valid_id(id) {
            return Err(std::io::Error::other(format!("not a queue id: {id:?}")));
        }
        self.objects
            .put(format!("{tenant}/{id}").as_str(), &mut &content[..])
            .await
            .map_err(|e| other("storing in the sandbox", e))?;
        Ok(())
    }

    async fn list(&self, tenant: &str) -> std::io::Result<Vec<(String, u64)>> {
        let prefix = format!("{tenant}/");
        let mut list = self
            .objects
            .list()
            .await
            .map_err(|e| other("listing the sandbox", e))?;
        let mut out = Vec::new();
        while let Some(info) = list.next().await {
            let info = info.map_err(|e| other("listing the sandbox", e))?;
            if let Some(id) = info.name.strip_prefix(&prefix)
                && !info.deleted
            {
                out.push((id.to_string(), info.size as u64));
            }
        }
        out.sort();
        Ok(out)
    }

    async fn message(&self, tenant: &str, id: &str) -> std::io::Result<Option<Vec<u8>>> {
        if !valid_id(id) {
            return Ok(None);
        }
        let mut object = match self.objects.get(format!("{tenant}/{id}").as_str()).await {
            Ok(o) => o,
            Err(e) if e.kind() == async_nats::jetstream::object_store::GetErrorKind::NotFound => {
                return Ok(None);
            }
            Err(e) => return Err(other("reading the sandbox", e)),
        };
        let mut bytes = Vec::new();
        object
            .read_to_end(&mut bytes)
            .await
            .map_err(|e| other("reading the sandbox", e))?;
        Ok(Some(bytes))
    }

    async fn delete(&self, tenant: &str, id: &str) -> std::io::Result<bool> {
        if !valid_id(id) || self.message(tenant, id).await?.is_none() {
            return Ok(false);
        }
        self.objects
            .delete(format!("{tenant}/{id}").as_str())
            .await
            .map_err(|e| other("deleting from the sandbox", e))?;
        Ok(true)
    }
}
