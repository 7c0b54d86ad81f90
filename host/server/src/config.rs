//! Configuration: parsed and validated once into typed structs. Every
//! default is written here (and in the README's reference table).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;

/// The embedded development configuration (`mailwit serve` without
/// `--config`).
pub const DEFAULT_CONFIG: &str = include_str!("../default.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Name in the greeting and EHLO reply. Default "localhost".
    #[serde(default = "default_hostname")]
    pub hostname: String,
    /// Where the spool and generated certificate live. Default "mailwit-data".
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub tls: TlsConfig,
    #[serde(default)]
    pub spool: SpoolConfig,
    pub listeners: Vec<Listener>,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub runtime: RuntimeSection,
    #[serde(default)]
    pub delivery: DeliveryConfig,
    #[serde(default)]
    pub status_api: StatusApiConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub memory: MemoryConfig,
    #[serde(default)]
    pub tenants: Vec<Tenant>,
    /// Several hosts sharing their state over NATS JetStream. Without it,
    /// everything is in files under `data_dir`.
    #[serde(default)]
    pub cluster: Option<ClusterConfig>,
}

/// The NATS JetStream cluster that several mailwit hosts share (see the
/// README's "Several hosts").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// NATS server URLs (`nats://host:4222`, or `tls://` to require TLS);
    /// the client reconnects to whichever is up.
    pub servers: Vec<String>,
    /// Replicas of every stream and bucket: 1, or 3 for a cluster that
    /// keeps a quorum's copy of each acknowledged message. Default 1.
    #[serde(default = "one")]
    pub replicas: usize,
    /// A NATS credentials file (`.creds`: a user JWT and its nkey seed).
    #[serde(default)]
    pub credentials: Option<PathBuf>,
    /// A user name and password, instead of a credentials file.
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// A CA certificate (PEM) to trust for the servers' TLS, beside the
    /// system's roots.
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,
    /// Prefix of every stream, bucket and subject, so several mailwit
    /// installations can share one NATS account. Default "mailwit".
    #[serde(default = "default_cluster_name")]
    pub name: String,
    /// How long a submission waits for JetStream's acknowledgement before
    /// it answers `451 4.3.0`, in milliseconds. Default 5000.
    #[serde(default = "default_ack_timeout_ms")]
    pub ack_timeout_ms: u64,
    /// How long a delivery worker may hold a message without telling the
    /// cluster it is still working on it, after which another host takes
    /// it (a host that died). Default 30.
    #[serde(default = "default_ack_wait_secs")]
    pub ack_wait_secs: u64,
}

fn one() -> usize {
    1
}

fn default_cluster_name() -> String {
    "mailwit".into()
}

fn default_ack_timeout_ms() -> u64 {
    5000
}

fn default_ack_wait_secs() -> u64 {
    30
}

/// The ceiling on message content held in memory (see `budget`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryConfig {
    /// Octets of message content in memory, the whole server. Default
    /// 536870912 (512 MiB).
    pub content_bytes: usize,
    /// The same, per tenant. Default 268435456 (256 MiB).
    pub content_bytes_per_tenant: usize,
    /// Longest wait for room, in seconds; then a message being received
    /// gets `452 4.3.1` at its end. Default 30.
    pub content_wait_secs: u64,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            content_bytes: 512 << 20,
            content_bytes_per_tenant: 256 << 20,
            content_wait_secs: 30,
        }
    }
}

impl MemoryConfig {
    pub fn budget(&self) -> crate::budget::BudgetConfig {
        crate::budget::BudgetConfig {
            total_bytes: self.content_bytes,
            per_tenant_bytes: self.content_bytes_per_tenant,
            wait: Duration::from_secs(self.content_wait_secs),
        }
    }
}

/// Password checks before authentication: a bounded pool with a bounded
/// queue (see `authgate`). Their memory is at most `workers` × (argon2's
/// 19 MiB, or a hash's own at most 64 MiB, plus the tenant's instance).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Password checks at once. Default 0: one per core.
    pub workers: usize,
    /// Checks waiting for the pool; more get `454 4.7.0` at once. Default 64.
    pub queue: usize,
    /// Longest wait for the pool, in seconds; then `454 4.7.0`. Default 10.
    pub queue_timeout_secs: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            workers: 0,
            queue: 64,
            queue_timeout_secs: 10,
        }
    }
}

impl AuthConfig {
    /// The gate's settings, `workers = 0` resolved to the number of cores.
    pub fn gate(&self) -> crate::authgate::GateConfig {
        crate::authgate::GateConfig {
            workers: match self.workers {
                0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
                n => n,
            },
            queue: self.queue,
            queue_timeout: Duration::from_secs(self.queue_timeout_secs),
            refusal_hold: crate::authgate::BUSY_TARPIT,
            one_per_address: true,
        }
    }
}

/// The status API listener (the notification-status HTTP API, answered by
/// the status component).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StatusApiConfig {
    /// Default 127.0.0.1:8026. Put it behind a TLS-terminating proxy to
    /// publish it: Basic credentials must not cross a network in clear.
    pub addr: SocketAddr,
    /// Deadline of one request inside the component, in ms. Default 2000
    /// (the component checks the password with argon2).
    pub deadline_ms: u64,
    /// Memory limit of one instance. Default 50331648 (48 MiB: argon2's
    /// default parameters take 19 MiB).
    pub memory_bytes: usize,
    /// Largest request body. Default 65536.
    pub max_body_bytes: usize,
    /// Requests answered at once. Each checks a password (argon2, 19 MiB)
    /// inside an instance of up to `memory_bytes`. Default 4.
    pub max_concurrent: usize,
    /// Requests waiting for one of those places; more get `503` at once.
    /// Default 64.
    pub queue: usize,
    /// Longest wait for a place, in ms; then `503`. Default 5000.
    pub queue_timeout_ms: u64,
}

impl Default for StatusApiConfig {
    fn default() -> Self {
        StatusApiConfig {
            addr: "127.0.0.1:8026".parse().expect("valid"),
            deadline_ms: 2000,
            memory_bytes: 48 << 20,
            max_body_bytes: 64 << 10,
            max_concurrent: 4,
            queue: 64,
            queue_timeout_ms: 5000,
        }
    }
}

/// The admin HTTP listener (deploy, rules, rollback, list, metrics).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Default 127.0.0.1:8025 (loopback only).
    pub addr: SocketAddr,
    /// Bearer token. When absent one is generated at start-up and written
    /// to `<data_dir>/admin.token` (mode 0600), where the CLI finds it.
    pub token: Option<String>,
    /// With both, the listener serves HTTPS with this certificate chain
    /// and key (PEM): tenants' tokens travel to it.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// What the CLI trusts for the admin listener's certificate (PEM;
    /// default `tls_cert` itself, for a self-signed one).
    pub tls_ca: Option<PathBuf>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            addr: "127.0.0.1:8025".parse().expect("valid"),
            token: None,
            tls_cert: None,
            tls_key: None,
            tls_ca: None,
        }
    }
}

/// Delivery, retries and the status store.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// Deliveries under way at once (relay connections open at once, at
    /// most). Default 64.
    pub workers: usize,
    /// Messages waiting for a worker that keep their content in memory
    /// (only those of at most `budget::SMALL`, 64 KiB: 64 MiB at most by
    /// default); the content of any more is read back from the spool when
    /// their turn comes. Default 1024.
    pub in_memory_queue: usize,
    /// First retry delay; doubles per attempt. Default 60.
    pub retry_initial_secs: u64,
    /// Longest retry delay. Default 3600.
    pub retry_max_secs: u64,
    /// Give up (fail, bounce) after this age. Default 172800 (2 days).
    pub max_age_secs: u64,
    /// Timeout of each step of an SMTP relay. Default 60.
    pub timeout_secs: u64,
    /// Keep status events this long. Default 604800 (7 days).
    pub retention_secs: u64,
    /// How often expired events are purged. Default 3600.
    pub purge_interval_secs: u64,
    /// A delivery report not taken by its callback server for this long
    /// is given up, with a `report_failed` status event. Default 172800.
    pub report_max_age_secs: u64,
    /// Addresses a notify URL may reach besides public ones: any of
    /// `"loopback"`, `"private"` (RFC 1918, fc00::/7, 100.64.0.0/10),
    /// `"link-local"`. Default none: a report to one is refused.
    pub notify_allow: Vec<String>,
    /// Bytes each tenant's sandbox keeps at most; the oldest messages go
    /// to make room. Default 268435456 (256 MiB).
    pub sandbox_max_bytes: u64,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            // 16 held local routes (sandbox, discard) back under load: each
            // delivery waits for the status store's group commit (its
            // linger and an fsync), so 16 of them capped deliveries below
            // what 64 sessions submit, and the queue grew (64 sessions:
            // context switches per message 3.55 -> 3.05, `perf stat`).
            workers: 64,
            // 64 was too few: a group commit hands the workers dozens of
            // messages at once, and at 64 sessions most were read back
            // from the spool on the blocking pool (futex calls per message
            // 3.2 -> 2.4, server CPU 202 -> 160 us, `perf stat`).
            in_memory_queue: 1024,
            retry_initial_secs: 60,
            retry_max_secs: 3600,
            max_age_secs: 2 * 24 * 3600,
            timeout_secs: 60,
            retention_secs: 7 * 24 * 3600,
            purge_interval_secs: 3600,
            report_max_age_secs: 2 * 24 * 3600,
            notify_allow: Vec::new(),
            sandbox_max_bytes: 256 << 20,
        }
    }
}

/// The WebAssembly policy runtime.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeSection {
    /// Component instances alive at once. Default 256.
    pub max_instances: u32,
    /// Largest memory any tenant may be given (octets). Default 67108864.
    pub max_memory_bytes: usize,
    /// Default deadline of one policy call, in ms (a tenant's rules may set
    /// `runtime.deadline-ms`). Default 250.
    pub deadline_ms: u64,
    /// Default memory limit of one instance (a tenant's rules may set
    /// `runtime.memory-bytes`). Default 16777216.
    pub memory_bytes: usize,
    /// Most policy calls one instance serves before a fresh one replaces
    /// it; 1 gives every call a fresh instance. Default 1000.
    pub instance_reuse_calls: u32,
    /// The share of the machine's CPU (all cores together) one tenant's
    /// policy calls may take, averaged; a tenant over it waits before its
    /// next call, and a looping call of it sleeps at each tick. 0 turns
    /// shares off. Default 0.25 (half a core on 2 cores).
    pub tenant_cpu_share: f64,
    /// CPU time a tenant may spend at once beyond its share, in ms.
    /// Default 100.
    pub tenant_cpu_burst_ms: u64,
    /// The share of a tenant's transactions its shadow (`tenant deploy
    /// --shadow`) is compared on, 0 to 1. Default 0.25.
    pub shadow_share: f64,
    /// Transactions whose policy inputs are kept per tenant for `tenant
    /// test` (at most 1 MiB, a day old); 0 keeps none. Default 100.
    pub replay_transactions: usize,
}

impl RuntimeSection {
    /// The runtime's per-tenant share, in cores of this machine.
    pub fn tenant_cpu(&self) -> Option<mailwit_runtime::CpuShare> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        (self.tenant_cpu_share > 0.0).then(|| mailwit_runtime::CpuShare {
            cores: self.tenant_cpu_share.min(1.0) * cores,
            burst: std::time::Duration::from_millis(self.tenant_cpu_burst_ms),
        })
    }
}

impl Default for RuntimeSection {
    fn default() -> Self {
        RuntimeSection {
            max_instances: 256,
            max_memory_bytes: 64 << 20,
            deadline_ms: 250,
            memory_bytes: 16 << 20,
            instance_reuse_calls: 1000,
            tenant_cpu_share: 0.25,
            tenant_cpu_burst_ms: 100,
            shadow_share: 0.25,
            replay_transactions: 100,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest message in octets (EHLO SIZE). Default 20971520.
    pub max_message_size: usize,
    /// Recipients per transaction. Default 100.
    pub max_recipients: usize,
    /// Unknown commands and syntax errors before `421`. Default 10.
    pub max_errors: u32,
    /// Failed AUTH attempts before `421`. Default 3.
    pub max_auth_failures: u32,
    /// Seconds a client has to complete each command. Default 300.
    pub command_timeout_secs: u64,
    /// Seconds a client has for DATA, before the rate allowance. Default 300.
    pub data_timeout_secs: u64,
    /// Octets per second that extend the DATA deadline. Default 1024.
    pub min_data_rate: u64,
    /// Seconds for a TLS handshake. Default 30.
    pub tls_handshake_timeout_secs: u64,
    /// Open connections, all listeners together. Default 1000.
    pub max_connections: usize,
    /// Open connections from one IP address. Default 20.
    pub max_connections_per_ip: usize,
    /// Seconds running transactions get to finish on SIGTERM. Default 30.
    pub shutdown_grace_secs: u64,
    /// Refused transaction steps (MAIL, RCPT, the message) in a row in one
    /// session before its refusals are held back. Default 10.
    pub refusals_before_delay: u32,
    /// How long each refusal past `refusals_before_delay` is held before it
    /// is sent, in ms; 0 holds none. Default 1000.
    pub refusal_delay_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_size: 20_971_520,
            max_recipients: 100,
            max_errors: 10,
            max_auth_failures: 3,
            command_timeout_secs: 300,
            data_timeout_secs: 300,
            min_data_rate: 1024,
            tls_handshake_timeout_secs: 30,
            max_connections: 1000,
            max_connections_per_ip: 20,
            shutdown_grace_secs: 30,
            refusals_before_delay: 10,
            refusal_delay_ms: 1000,
        }
    }
}

impl Limits {
    /// How long a refusal is held once a session has had
    /// `refusals_before_delay` in a row; `None` when none is.
    pub fn refusal_delay(&self, refused_in_a_row: u32) -> Option<Duration> {
        (refused_in_a_row > self.refusals_before_delay && self.refusal_delay_ms > 0)
            .then(|| Duration::from_millis(self.refusal_delay_ms))
    }

    pub fn command_timeout(&self) -> Duration {
        Duration::from_secs(self.command_timeout_secs)
    }
    pub fn data_timeout(&self) -> Duration {
        Duration::from_secs(self.data_timeout_secs)
    }
    pub fn tls_handshake_timeout(&self) -> Duration {
        Duration::from_secs(self.tls_handshake_timeout_secs)
    }
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }
}

/// Certificate and key as PEM files. When both are absent a self-signed
/// certificate is generated under `<data_dir>/tls/` (once; it is reused).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    /// Refuse mail with `452 4.3.1` when the spool's file system has less
    /// free space than this, in octets. Default 104857600 (100 MiB).
    pub min_free_bytes: u64,
    /// Start a new segment file after this many octets. Default 67108864.
    pub segment_bytes: u64,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            min_free_bytes: 100 * 1024 * 1024,
            segment_bytes: 64 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Plain TCP, STARTTLS offered (submission 587, smtp 25, 2525).
    Starttls,
    /// TLS from the first byte (smtps 465).
    Implicit,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// Name used in logs (submission, smtps, smtp, alternate).
    pub name: String,
    /// Address to bind; port 0 picks a free port (logged at start-up).
    pub addr: SocketAddr,
    pub tls: TlsMode,
    /// Allow AUTH before TLS on this listener. Default false: AUTH is only
    /// offered once TLS is up.
    #[serde(default)]
    pub plaintext_auth: bool,
}

/// A tenant to set up at first start. Once stored under
/// `<data_dir>/tenants/`, the stored versions win: change a running tenant
/// with `mailwit tenant ...`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tenant {
    pub id: String,
    /// The function set, in call order.
    #[serde(default)]
    pub functions: Vec<FunctionSpec>,
    /// The tenant's rules (see the README's rules reference).
    #[serde(default)]
    pub rules: toml::Table,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionSpec {
    pub name: String,
    /// `builtin:<name>` for an embedded reference component, or a path to a
    /// `.wasm` component.
    pub component: String,
}

fn default_hostname() -> String {
    "localhost".into()
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("mailwit-data")
}

/// One thing wrong with a configuration: where (a dotted key, such as
/// `limits.max_connections` or `listeners[1].addr`) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

fn problem(key: impl Into<String>, message: impl std::fmt::Display) -> Problem {
    Problem {
        key: key.into(),
        message: message.to_string(),
    }
}

/// Deserialises one value of the configuration on its own, so that one
/// mistake does not hide the next. A table is deserialised from TOML text
/// of its own, whose error span names the field at fault.
fn section<T: serde::de::DeserializeOwned>(key: &str, value: &toml::Value, out: &mut Vec<Problem>) {
    let result = match value {
        toml::Value::Table(t) => {
            let text = toml::to_string(t).unwrap_or_default();
            toml::from_str::<T>(&text).map(drop).map_err(|e| {
                let field = e.span().and_then(|span| field_at(&text, span.start));
                (field, e.message().to_string())
            })
        }
        v => v
            .clone()
            .try_into::<T>()
            .map(drop)
            .map_err(|e| (None, e.message().to_string())),
    };
    if let Err((field, message)) = result {
        let key = match field {
            Some(f) => format!("{key}.{f}"),
            None => key.to_string(),
        };
        out.push(problem(key, message));
    }
}

/// The key of the `key = value` line that `offset` falls on.
fn field_at(text: &str, offset: usize) -> Option<String> {
    let start = text.get(..offset)?.rfind('\n').map_or(0, |i| i + 1);
    let line = text[start..].lines().next()?;
    let (key, _) = line.split_once('=')?;
    Some(key.trim().trim_matches('"').to_string())
}

fn sections<T: serde::de::DeserializeOwned>(
    key: &str,
    value: &toml::Value,
    out: &mut Vec<Problem>,
) {
    match value.as_array() {
        Some(items) => {
            for (i, item) in items.iter().enumerate() {
                section::<T>(&format!("{key}[{i}]"), item, out);
            }
        }
        None => out.push(problem(key, "expected an array of tables")),
    }
}

impl Config {
    /// The server's certificate: `[tls]`'s files, or the generated
    /// self-signed one.
    pub fn server_cert(&self) -> anyhow::Result<std::sync::Arc<rustls::sign::CertifiedKey>> {
        crate::tls::load_server_cert(
            self.tls.cert.as_deref(),
            self.tls.key.as_deref(),
            &self.hostname,
            &self.data_dir,
        )
    }

    /// Reads a file, or the embedded default when `path` is `None`.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Config> {
        let text = match path {
            Some(p) => {
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?
            }
            None => DEFAULT_CONFIG.to_string(),
        };
        Config::parse(&text).map_err(|problems| {
            let list: Vec<String> = problems.iter().map(Problem::to_string).collect();
            let name = path.map_or("the embedded configuration".into(), |p| {
                p.display().to_string()
            });
            anyhow::anyhow!(
                "{name} is not a valid configuration:\n  {}",
                list.join("\n  ")
            )
        })
    }

    /// Parses and validates configuration text; every problem found, each
    /// with its key. Files it names (certificates) are not read here: see
    /// [`Config::check_files`].
    pub fn parse(text: &str) -> Result<Config, Vec<Problem>> {
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| vec![problem("(syntax)", e.to_string().trim_end())])?;
        let mut problems = Vec::new();
        for (key, value) in &table {
            let p = &mut problems;
            match key.as_str() {
                "hostname" => section::<String>(key, value, p),
                "data_dir" => section::<PathBuf>(key, value, p),
                "limits" => section::<Limits>(key, value, p),
                "tls" => section::<TlsConfig>(key, value, p),
                "spool" => section::<SpoolConfig>(key, value, p),
                "admin" => section::<AdminConfig>(key, value, p),
                "runtime" => section::<RuntimeSection>(key, value, p),
                "delivery" => section::<DeliveryConfig>(key, value, p),
                "status_api" => section::<StatusApiConfig>(key, value, p),
                "auth" => section::<AuthConfig>(key, value, p),
                "memory" => section::<MemoryConfig>(key, value, p),
                "cluster" => section::<ClusterConfig>(key, value, p),
                "listeners" => sections::<Listener>(key, value, p),
                "tenants" => sections::<Tenant>(key, value, p),
                _ => p.push(problem(key, "unknown key")),
            }
        }
        if !table.contains_key("listeners") {
            problems.push(problem("listeners", "no [[listeners]] configured"));
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let config: Config = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| vec![problem("(configuration)", e.message())])?;
        config.validate(&mut problems);
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(problems)
        }
    }

    fn validate(&self, out: &mut Vec<Problem>) {
        if self.listeners.is_empty() {
            out.push(problem("listeners", "no [[listeners]] configured"));
        }
        let mut addrs = std::collections::HashSet::new();
        let mut names = std::collections::HashSet::new();
        for (i, l) in self.listeners.iter().enumerate() {
            if !names.insert(l.name.as_str()) {
                out.push(problem(
                    format!("listeners[{i}].name"),
                    format!("{:?} is used twice", l.name),
                ));
            }
            if l.addr.port() != 0 && !addrs.insert(l.addr) {
                out.push(problem(
                    format!("listeners[{i}].addr"),
                    format!("{} is used twice", l.addr),
                ));
            }
        }
        if let Some(c) = &self.cluster {
            if c.servers.is_empty() {
                out.push(problem("cluster.servers", "name at least one NATS server"));
            }
            if !(1..=5).contains(&c.replicas) {
                out.push(problem(
                    "cluster.replicas",
                    "JetStream keeps 1 to 5 replicas",
                ));
            }
            if c.name.is_empty()
                || !c
                    .name
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
            {
                out.push(problem(
                    "cluster.name",
                    "letters, digits, '-' and '_' only (it names streams and subjects)",
                ));
            }
            if c.user.is_some() != c.password.is_some() {
                out.push(problem("cluster.user", "user and password go together"));
            }
        }
        for kind in &self.delivery.notify_allow {
            if !["loopback", "private", "link-local"].contains(&kind.as_str()) {
                out.push(problem(
                    "delivery.notify_allow",
                    format!("{kind:?} is none of \"loopback\", \"private\", \"link-local\""),
                ));
            }
        }
        let mut ids = std::collections::HashSet::new();
        for (i, t) in self.tenants.iter().enumerate() {
            if !ids.insert(t.id.as_str()) {
                out.push(problem(
                    format!("tenants[{i}].id"),
                    format!("tenant {:?} is configured twice", t.id),
                ));
            }
        }
        let l = &self.limits;
        for (key, value) in [
            ("limits.max_connections", l.max_connections),
            ("limits.max_connections_per_ip", l.max_connections_per_ip),
        ] {
            if value == 0 {
                out.push(problem(key, "must be at least 1"));
            }
        }
        // A message of the largest size, and the spool's copy of it while it
        // is written, must fit in the budget.
        let need = 2 * self.limits.max_message_size;
        for (key, value) in [
            ("memory.content_bytes", self.memory.content_bytes),
            (
                "memory.content_bytes_per_tenant",
                self.memory.content_bytes_per_tenant,
            ),
        ] {
            if value < need {
                out.push(problem(
                    key,
                    format!("{value} is less than twice limits.max_message_size ({need})"),
                ));
            }
        }
        if self.admin.tls_cert.is_some() != self.admin.tls_key.is_some() {
            out.push(problem(
                "admin.tls_cert",
                "needs both tls_cert and tls_key, or neither",
            ));
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            out.push(problem("tls", "needs both cert and key, or neither"));
        }
    }

    /// Checks what the configuration names on disk: the certificate and
    /// key must be readable, parse, and belong together.
    pub fn check_files(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        if let (Some(cert), Some(key)) = (&self.tls.cert, &self.tls.key)
            && let Err(e) = crate::tls::load_pem_files(cert, key)
        {
            out.push(problem("tls.cert", format!("{e:#}")));
        }
        out
    }

    /// The SMTP core's settings for one listener, under `limits` (the
    /// configuration's, or a reload's).
    pub fn session_config(&self, listener: &Listener, limits: &Limits) -> mailwit_smtp::Config {
        mailwit_smtp::Config {
            hostname: self.hostname.clone(),
            max_message_size: limits.max_message_size,
            max_recipients: limits.max_recipients,
            max_errors: limits.max_errors,
            max_auth_failures: limits.max_auth_failures,
            starttls: listener.tls == TlsMode::Starttls,
            plaintext_auth: listener.plaintext_auth,
            timeouts: mailwit_smtp::Timeouts {
                command: limits.command_timeout(),
                data: limits.data_timeout(),
                min_data_rate: limits.min_data_rate,
                tls_handshake: limits.tls_handshake_timeout(),
                shutdown_grace: limits.shutdown_grace(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let text = r#"
hostname = 7
colour = "blue"
[limits]
max_connections = 0
max_recipients = "many"
[tls]
cert = "/etc/mailwit/cert.pem"
[[listeners]]
name = "a"
addr = "127.0.0.1:25"
tls = "starttls"
[[listeners]]
name = "b"
addr = "not an address"
tls = "starttls"
"#;
        let problems = Config::parse(text).unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert!(keys.contains(&"hostname"), "{problems:?}");
        assert!(keys.contains(&"colour"), "{problems:?}");
        assert!(keys.contains(&"limits.max_recipients"), "{problems:?}");
        assert!(keys.contains(&"listeners[1].addr"), "{problems:?}");
        // Type errors stop before the checks of meaning; these come next.
        let text = r#"
[limits]
max_connections = 0
[tls]
cert = "/etc/mailwit/cert.pem"
[[listeners]]
name = "a"
addr = "127.0.0.1:25"
tls = "starttls"
[[listeners]]
name = "a"
addr = "127.0.0.1:25"
tls = "implicit"
"#;
        let problems = Config::parse(text).unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "listeners[1].name",
                "listeners[1].addr",
                "limits.max_connections",
                "tls"
            ],
            "{problems:?}"
        );
    }

    #[test]
    fn embedded_default_parses() {
        let c = Config::load(None).unwrap();
        assert_eq!(c.listeners.len(), 4);
        assert_eq!(c.limits.max_message_size, 20_971_520);
        assert_eq!(c.tenants[0].id, "demo");
        assert_eq!(c.tenants[0].functions.len(), 5);
    }
}
