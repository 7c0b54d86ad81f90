//! The connection to the NATS JetStream cluster that several hosts share
//! (`[cluster]` in the configuration), and the streams and buckets on it.
//!
//! Every name starts with the configured prefix (`mailwit` by default):
//!
//! | what | JetStream | name |
//! |---|---|---|
//! | the delivery queue | stream, work-queue retention | `<P>_QUEUE`, subjects `<p>.queue.>` |
//! | delivery workers | durable pull consumer, explicit acks | `delivery` on `<P>_QUEUE` |
//! | content too large for one NATS message | object store | `<P>_CONTENT` |
//! | status events | stream | `<P>_STATUS`, subjects `<p>.status.<tenant>.<id>` |
//! | deployed versions | key-value bucket, object store | `<P>_ARTIFACTS`, `<P>_BLOBS` |
//! | the sandbox | object store | `<P>_SANDBOX` |
//! | delivery reports | stream, work queue; durable consumer `reports` | `<P>_REPORTS`, subject `<p>.reports` |
//! | hosts alive | key-value bucket, entries expire after 15 s | `<P>_HOSTS` |
//!
//! The client reconnects by itself: while no server answers, a submission
//! waits at most `ack_timeout_ms` for its acknowledgement and gets
//! `451 4.3.0`, and delivery workers wait; when a server answers again,
//! both go on.

use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream;

use crate::config::ClusterConfig;

/// A connected cluster: the client and its JetStream context.
#[derive(Clone)]
pub struct Cluster {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub config: ClusterConfig,
}

impl Cluster {
    /// Connects (retrying until a server answers, in the background: the
    /// first requests wait for it) as `host`.
    pub async fn connect(config: &ClusterConfig, host: &str) -> anyhow::Result<Cluster> {
        anyhow::ensure!(
            !config.servers.is_empty(),
            "[cluster] servers: name at least one NATS server"
        );
        let mut options = async_nats::ConnectOptions::new()
            .name(format!("mailwit {host}"))
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(5))
            .event_callback(|event| async move {
                tracing::info!(event = "cluster.connection", what = %event);
            });
        if let Some(path) = &config.credentials {
            options = options
                .credentials_file(path)
                .await
                .with_context(|| format!("reading the NATS credentials {}", path.display()))?;
        }
        if let (Some(user), Some(password)) = (&config.user, &config.password) {
            options = options.user_and_password(user.clone(), password.clone());
        }
        if let Some(ca) = &config.tls_ca {
            options = options.add_root_certificates(ca.clone());
        }
        let client = options
            .connect(config.servers.clone())
            .await
            .context("connecting to NATS")?;
        let mut js = jetstream::new(client.clone());
        js.set_timeout(Duration::from_millis(config.ack_timeout_ms.max(1)));
        Ok(Cluster {
            client,
            js,
            config: config.clone(),
        })
    }

    /// A stream's or bucket's name: `<PREFIX>_<WHAT>`.
    pub fn stream_name(&self, what: &str) -> String {
        format!("{}_{what}", self.config.name.to_uppercase())
    }

    /// A subject under the prefix: `<prefix>.<rest>`.
    pub fn subject(&self, rest: &str) -> String {
        format!("{}.{rest}", self.config.name)
    }

    /// The object store `<PREFIX>_<WHAT>`, created when missing (waiting
    /// until JetStream answers).
    pub async fn object_store(&self, what: &str) -> jetstream::object_store::ObjectStore {
        let config = jetstream::object_store::Config {
            bucket: self.stream_name(what),
            storage: jetstream::stream::StorageType::File,
            num_replicas: self.config.replicas,
            ..Default::default()
        };
        let js = &self.js;
        Cluster::until_ready(&config.bucket, || async {
            match js.get_object_store(&config.bucket).await {
                Ok(o) => Ok(o),
                Err(_) => js
                    .create_object_store(config.clone())
                    .await
                    .map_err(|e| e.to_string()),
            }
        })
        .await
    }

    /// Runs `make` until it succeeds (JetStream may still be electing a
    /// leader, or no server be up yet), logging each failure.
    pub async fn until_ready<T, E: std::fmt::Display, F: Future<Output = Result<T, E>>>(
        what: &str,
        mut make: impl FnMut() -> F,
    ) -> T {
        let mut delay = Duration::from_millis(100);
        loop {
            match make().await {
                Ok(t) => return t,
                Err(e) => {
                    tracing::warn!(event = "cluster.not_ready", what, cause = %e);
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        }
    }
}

/// One host's pull subscription on a durable consumer, opened on first
/// use and again after it failed (a server gone, missed heartbeats).
pub struct Puller {
    consumer: jetstream::consumer::PullConsumer,
    batch: usize,
    what: &'static str,
    messages: tokio::sync::Mutex<Option<jetstream::consumer::pull::Stream>>,
}

impl Puller {
    /// Fetching `batch` messages at a time (what this host can work on).
    pub fn new(
        consumer: jetstream::consumer::PullConsumer,
        batch: usize,
        what: &'static str,
    ) -> Puller {
        Puller {
            consumer,
            batch: batch.max(1),
            what,
            messages: tokio::sync::Mutex::new(None),
        }
    }

    /// The next message, waiting as long as it takes.
    pub async fn next(&self) -> jetstream::Message {
        use futures::StreamExt;
        let mut messages = self.messages.lock().await;
        loop {
            if messages.is_none() {
                match self
                    .consumer
                    .stream()
                    .max_messages_per_batch(self.batch)
                    .heartbeat(Duration::from_secs(5))
                    .expires(Duration::from_secs(30))
                    .messages()
                    .await
                {
                    Ok(m) => *messages = Some(m),
                    Err(e) => {
                        tracing::warn!(event = "cluster.pull_failed", what = self.what, cause = %e);
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                }
            }
            match messages.as_mut().expect("opened above").next().await {
                Some(Ok(m)) => return m,
                Some(Err(e)) => {
                    tracing::warn!(event = "cluster.pull_failed", what = self.what, cause = %e);
                    *messages = None;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                None => *messages = None,
            }
        }
    }
}

/// How often a host says it is alive, and how long the cluster remembers.
const ANNOUNCE_EVERY: Duration = Duration::from_secs(5);
const HOST_TTL: Duration = Duration::from_secs(15);

impl Cluster {
    async fn hosts_bucket(&self) -> anyhow::Result<jetstream::kv::Store> {
        let name = self.stream_name("HOSTS");
        if let Ok(kv) = self.js.get_key_value(&name).await {
            return Ok(kv);
        }
        Ok(self
            .js
            .create_key_value(jetstream::kv::Config {
                bucket: name,
                history: 1,
                max_age: HOST_TTL,
                num_replicas: self.config.replicas,
                ..Default::default()
            })
            .await?)
    }

    /// Says that this host is alive (for `mailwit cluster status`): once
    /// before it returns, retrying until JetStream answers, so a host that
    /// is serving is listed; then every few seconds, until the process ends.
    pub async fn announce(&self, host: String) {
        let key = format!("h.{}-{}", host, std::process::id());
        let started = crate::wallclock::now_ms();
        let entry = move || {
            serde_json::json!({
                "host": host,
                "pid": std::process::id(),
                "started_ms": started,
                "seen_ms": crate::wallclock::now_ms(),
                "version": env!("CARGO_PKG_VERSION"),
            })
            .to_string()
        };
        let kv = Cluster::until_ready("the hosts bucket", || self.hosts_bucket()).await;
        Cluster::until_ready("the first announcement", || kv.put(&key, entry().into())).await;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(ANNOUNCE_EVERY).await;
                if let Err(e) = kv.put(&key, entry().into()).await {
                    tracing::warn!(event = "cluster.announce_failed", cause = %e);
                }
            }
        });
    }

    /// The cluster as `mailwit cluster status` shows it: the hosts seen in
    /// the last 15 s, the delivery consumer's counts, each stream's size.
    pub async fn status(&self) -> anyhow::Result<serde_json::Value> {
        use futures::StreamExt;
        let hosts_kv = self.hosts_bucket().await.context("the hosts bucket")?;
        let mut hosts = Vec::new();
        let mut keys = hosts_kv.keys().await?;
        while let Some(k) = keys.next().await {
            if let Some(v) = hosts_kv.get(k?).await? {
                hosts.push(serde_json::from_slice::<serde_json::Value>(&v)?);
            }
        }
        let queue = self
            .js
            .get_stream(self.stream_name("QUEUE"))
            .await
            .context("the queue stream")?;
        let mut consumer: jetstream::consumer::PullConsumer = queue
            .get_consumer("delivery")
            .await
            .map_err(|e| anyhow::anyhow!("the delivery consumer: {e}"))?;
        let c = consumer.info().await?.clone();
        let mut streams = Vec::new();
        for what in [
            "QUEUE",
            "STATUS",
            "ARTIFACTS",
            "BLOBS",
            "CONTENT",
            "SANDBOX",
            "HOSTS",
        ] {
            let name = match what {
                "ARTIFACTS" | "HOSTS" => format!("KV_{}", self.stream_name(what)),
                "BLOBS" | "CONTENT" | "SANDBOX" => format!("OBJ_{}", self.stream_name(what)),
                _ => self.stream_name(what),
            };
            let Ok(mut st) = self.js.get_stream(&name).await else {
                continue;
            };
            let info = st.info().await?;
            streams.push(serde_json::json!({
                "stream": name,
                "messages": info.state.messages,
                "bytes": info.state.bytes,
                "replicas": info.config.num_replicas,
                "leader": info.cluster.as_ref().and_then(|c| c.leader.clone()),
            }));
        }
        Ok(serde_json::json!({
            "hosts": hosts,
            "queue": {
                "pending": c.num_pending,
                "in_flight": c.num_ack_pending,
                "redelivered": c.num_redelivered,
                "waiting_pulls": c.num_waiting,
            },
            "streams": streams,
        }))
    }
}

/// A subject token for a name that may hold characters NATS reserves
/// (`.`, `*`, `>`, white space): those and `%` become `%XX`.
pub fn token(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        match c {
            '.' | '*' | '>' | '%' => out.push_str(&format!("%{:02X}", c as u32)),
            c if c.is_whitespace() || c.is_control() => {
                for b in c.to_string().bytes() {
                    out.push_str(&format!("%{b:02X}"));
                }
            }
            c => out.push(c),
        }
    }
    if out.is_empty() { "%00".into() } else { out }
}

#[cfg(test)]
mod tests {
    use super::token;

    #[test]
    fn subject_tokens_escape_what_nats_reserves() {
        assert_eq!(token("acme"), "acme");
        assert_eq!(token("a.b*c>d%e f"), "a%2Eb%2Ac%3Ed%25e%20f");
        assert_eq!(token(""), "%00");
    }
}
