//! The whole server, started in one call: what `mailwit serve` runs, and
//! what tests start in process (as mini-redis's `server::run`), beside the
//! end-to-end tests on the binary.
//!
//! [`start`] opens the stores, compiles the tenants' components, binds
//! every listener and starts serving; the [`Running`] server says where it
//! listens, reloads ([`Running::reloader`], what `SIGHUP` does), and stops
//! ([`Running::stop`], then [`Running::wait`]: running transactions
//! finish, the spool drains).

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use mailwit_runtime::{Limits, Runtime, RuntimeConfig};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin;
use crate::artifacts::{ArtifactStore, FileArtifacts, jetstream::JetStreamArtifacts};
use crate::cluster::Cluster;
use crate::config::Config;
use crate::delivery::Delivery;
use crate::delivery::reports::{FileReports, ReportStore, jetstream::JetStreamReports};
use crate::delivery::sandbox::{FileSandbox, SandboxStore, jetstream::JetStreamSandbox};
use crate::delivery::status::jetstream::JetStreamStatusStore;
use crate::delivery::status::{FileStatusStore, StatusStore};
use crate::metrics::Metrics;
use crate::policy::{NoopPolicy, Policy, WasmPolicy};
use crate::queue::{Queue, file::FileQueue, jetstream::JetStreamQueue};
use crate::reload::Reloader;
use crate::server::{self, Shared};
use crate::statusapi::{self, StatusApi};
use crate::tenants::Tenants;
use crate::tls;

/// How to start.
#[derive(Debug, Default, Clone)]
pub struct Options {
    /// The configuration file, read again by a reload (none: the embedded
    /// configuration, which a reload cannot change).
    pub config_path: Option<PathBuf>,
    /// Accept every login and message natively: the benchmark's baseline,
    /// never for production (`--unsafe-noop-policy`).
    pub noop_policy: bool,
}

/// A started server.
pub struct Running {
    /// Every listener's name and address (`admin` and `status-api`
    /// included), in the order they were bound.
    pub addrs: Vec<(String, SocketAddr)>,
    reloader: Arc<Reloader>,
    stop: watch::Sender<bool>,
    done: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// The address of the listener called `name`.
    pub fn addr(&self, name: &str) -> Option<SocketAddr> {
        self.addrs.iter().find(|(n, _)| n == name).map(|(_, a)| *a)
    }

    /// Reads the configuration's `[limits]` and the certificate files
    /// again (blocking file I/O: call from a blocking thread).
    pub fn reloader(&self) -> Arc<Reloader> {
        self.reloader.clone()
    }

    /// Starts the graceful shutdown: listeners stop, idle sessions close,
    /// running transactions get their grace.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }

    /// Waits until every session has ended and the spool has drained.
    pub async fn wait(self) -> anyhow::Result<()> {
        self.done.await?
    }
}

/// Starts the server described by `config`.
pub async fn start(config: Config, options: Options) -> anyhow::Result<Running> {
    let Options {
        config_path,
        noop_policy: noop,
    } = options;
    let config = Arc::new(config);
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data_dir {}", config.data_dir.display()))?;
    let stores = stores(&config).await?;
    let queue = stores.queue.clone();
    let metrics = Arc::new(Metrics::default());
    let rc = &config.runtime;
    let rt = Arc::new(Runtime::new(RuntimeConfig {
        cache_dir: Some(config.data_dir.join("cache")),
        max_instances: rc.max_instances,
        max_memory_bytes: rc.max_memory_bytes,
        warm_calls: rc.instance_reuse_calls,
        tenant_cpu: rc.tenant_cpu(),
    })?);
    let defaults = Limits {
        deadline: Duration::from_millis(rc.deadline_ms),
        memory_bytes: rc.memory_bytes,
    };
    let (rt2, config2, store) = (rt.clone(), config.clone(), stores.artifacts.clone());
    let tenants = Arc::new(
        tokio::task::spawn_blocking(move || Tenants::open(rt2, &config2, defaults, store))
            .await??,
    );
    tokio::spawn(tenants.clone().follow());
    for t in tenants.list() {
        let functions: Vec<String> = t
            .functions
            .iter()
            .map(|f| format!("{}@{}", f.name, f.version))
            .collect();
        tracing::info!(event = "tenant.loaded", tenant = %t.tenant, generation = t.generation, rules = t.rules_version, functions = %functions.join(","));
    }
    // Handshakes present the server's certificate, or the tenant's own
    // for the server names its rules list.
    let certs = Arc::new(tls::CertStore::new(
        config.server_cert()?,
        Some(tenants.clone() as Arc<dyn tls::TenantCerts>),
    ));
    let tls = tokio_rustls::TlsAcceptor::from(certs.server_config()?);
    let auth_gate = Arc::new(crate::authgate::AuthGate::new(config.auth.gate()));
    let shadows = Arc::new(crate::shadow::Shadows::new(config.runtime.shadow_share));
    let recorder = Arc::new(crate::replay::Recorder::new(
        config.runtime.replay_transactions,
    ));
    let policy: Arc<dyn Policy> = if noop {
        tracing::warn!(
            "--unsafe-noop-policy: every login and message is accepted; benchmark use only"
        );
        Arc::new(NoopPolicy)
    } else {
        Arc::new(WasmPolicy::new(
            rt.clone(),
            tenants.clone(),
            metrics.clone(),
            auth_gate.clone(),
            shadows.clone(),
            recorder.clone(),
        ))
    };
    let status = stores.status.clone();
    let budget = Arc::new(crate::budget::ContentBudget::new(config.memory.budget()));
    let delivery = Delivery::start(
        queue.clone(),
        status.clone(),
        stores.sandbox.clone(),
        stores.reports.clone(),
        tenants.clone(),
        config.delivery.clone(),
        config.hostname.clone(),
        budget.clone(),
    );
    let listeners = server::bind(&config).await?;
    let admin_listener = tokio::net::TcpListener::bind(config.admin.addr)
        .await
        .with_context(|| format!("binding the admin listener on {}", config.admin.addr))?;
    let token = admin_token(&config)?;
    let admin_addr = admin_listener.local_addr()?;
    let admin_tls = admin::tls_acceptor(&config.admin).context("the admin listener's TLS")?;
    let tls_mode = if admin_tls.is_some() {
        "implicit"
    } else {
        "none"
    };
    tracing::info!(event = "listening", listener = %"admin", addr = %admin_addr, tls = %tls_mode);
    let status_api = {
        let (rt, dir, t, s, m, c) = (
            rt.clone(),
            stores.sandbox.clone(),
            tenants.clone(),
            status.clone(),
            metrics.clone(),
            config.status_api.clone(),
        );
        let retention = config.delivery.retention_secs;
        let store = stores.artifacts.clone();
        let api = Arc::new(
            tokio::task::spawn_blocking(move || {
                StatusApi::open(rt, dir, t, s, m, c, retention, store)
            })
            .await?
            .context("loading the status API component")?,
        );
        tokio::spawn(api.clone().follow());
        api
    };
    let status_listener = tokio::net::TcpListener::bind(config.status_api.addr)
        .await
        .with_context(|| {
            format!(
                "binding the status API listener on {}",
                config.status_api.addr
            )
        })?;
    let status_addr = status_listener.local_addr()?;
    tracing::info!(event = "listening", listener = %"status-api", addr = %status_addr, tls = %"none");
    let services = Arc::new(crate::submission::Services {
        policy: policy.clone(),
        usage: tenants.usage().clone(),
        metrics: metrics.clone(),
        queue: queue.clone(),
    });
    let shared = Arc::new(Shared::new(config.clone(), services, tls, budget.clone()));
    let reloader = Arc::new(Reloader::new(config_path, certs, shared.clone()));

    let (stop, stopped) = watch::channel(false);
    let admin = Arc::new(admin::Admin {
        sandbox: stores.sandbox.clone(),
        tenants,
        metrics,
        status,
        status_api: status_api.clone(),
        delivery,
        reload: reloader.clone(),
        auth_gate,
        budget,
        shadows,
        recorder,
        policy: policy.clone(),
        tokens: admin::tokens::Tokens::new(stores.artifacts.clone(), token),
    });
    let admin_task = tokio::spawn(admin::serve(
        admin,
        admin_listener,
        admin_tls,
        stopped.clone(),
    ));
    let status_task = tokio::spawn(statusapi::serve(
        status_api,
        status_listener,
        stopped.clone(),
    ));
    let mut addrs = Vec::new();
    for (l, sock) in &listeners {
        addrs.push((l.name.clone(), sock.local_addr()?));
    }
    addrs.push(("admin".to_string(), admin_addr));
    addrs.push(("status-api".to_string(), status_addr));
    let done = tokio::spawn(async move {
        server::run(shared, listeners, stopped).await;
        // The queue stores what was already sent to it, then stops
        // (unfinished deliveries resume at the next start).
        queue.close();
        let _ = admin_task.await;
        let _ = status_task.await;
        if let Some(q) = stores.file_queue {
            q.closed().await;
        }
        tracing::info!(event = "stopped");
        anyhow::Ok(())
    });
    Ok(Running {
        addrs,
        reloader,
        stop,
        done,
    })
}

/// Where the state lives: files under `data_dir`, or the cluster.
struct Stores {
    queue: Arc<dyn Queue>,
    status: Arc<dyn StatusStore>,
    artifacts: Arc<dyn ArtifactStore>,
    sandbox: Arc<dyn SandboxStore>,
    reports: Arc<dyn ReportStore>,
    /// The embedded queue, to wait for its committer at shutdown.
    file_queue: Option<Arc<FileQueue>>,
}

async fn stores(config: &Config) -> anyhow::Result<Stores> {
    if let Some(c) = &config.cluster {
        let cluster = Cluster::connect(c, &config.hostname).await?;
        tracing::info!(event = "cluster.connected", servers = %c.servers.join(","), replicas = c.replicas);
        cluster.announce(config.hostname.clone()).await;
        let retention = Duration::from_secs(config.delivery.retention_secs);
        let queue = JetStreamQueue::open(&cluster, config.delivery.workers).await;
        let status = JetStreamStatusStore::open(&cluster, retention).await;
        let artifacts = JetStreamArtifacts::open(&cluster).await;
        let sandbox = JetStreamSandbox::open(&cluster).await;
        let reports = JetStreamReports::open(&cluster).await;
        return Ok(Stores {
            reports: Arc::new(reports),
            sandbox: Arc::new(sandbox),
            queue: Arc::new(queue),
            status: Arc::new(status),
            artifacts: Arc::new(artifacts),
            file_queue: None,
        });
    }
    let spool_dir = config.data_dir.join("spool");
    let file_queue = Arc::new(
        FileQueue::open(&spool_dir, &config.spool, config.delivery.in_memory_queue)
            .with_context(|| format!("opening the spool {}", spool_dir.display()))?,
    );
    let status = FileStatusStore::open(&config.data_dir.join("status"))
        .context("opening the status store")?
        .retaining(Duration::from_secs(config.delivery.retention_secs));
    Ok(Stores {
        queue: file_queue.clone(),
        status: Arc::new(Arc::new(status)),
        artifacts: Arc::new(FileArtifacts::new(&config.data_dir)),
        sandbox: Arc::new(FileSandbox::new(&config.data_dir)),
        reports: Arc::new(
            FileReports::open(&config.data_dir.join("reports")).context("opening the reports")?,
        ),
        file_queue: Some(file_queue),
    })
}

/// The configured admin token, or one generated now and written to
/// `<data_dir>/admin.token` (0600) for the CLI.
fn admin_token(config: &Config) -> anyhow::Result<String> {
    if let Some(t) = &config.admin.token {
        return Ok(t.clone());
    }
    use std::os::unix::fs::OpenOptionsExt;
    let mut bytes = [0u8; 24];
    getrandom(&mut bytes)?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let path = config.data_dir.join("admin.token");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&path)?;
    f.write_all(token.as_bytes())?;
    tracing::info!(event = "admin.token", path = %path.display(), "generated the admin token");
    Ok(token)
}

fn getrandom(buf: &mut [u8]) -> anyhow::Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(buf)?;
    Ok(())
}
