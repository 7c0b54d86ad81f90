//! The `mailwit` command line.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use mailwit::config::Config;
use std::time::Duration;

use hyper::Method;
use mailwit::admin;
use mailwit::delivery::Delivery;
use mailwit::delivery::status::{FileStatusStore, StatusStore};
use mailwit::metrics::Metrics;
use mailwit::policy::{NoopPolicy, Policy, WasmPolicy};
use mailwit::server::{self, Shared};
use mailwit::statusapi::{self, StatusApi};
use mailwit::tenants::Tenants;
use mailwit::{spool, tls};
use mailwit_runtime::{Limits, Runtime, RuntimeConfig};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

#[derive(Parser)]
#[command(
    name = "mailwit",
    version,
    about = "Multi-tenant SMTP submission service with WebAssembly policy"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (the embedded development configuration by default).
    Serve {
        /// TOML configuration file.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Accept every login and message without asking any component.
        /// Only for the policy-cost benchmark's baseline; never in production.
        #[arg(long, hide = true)]
        unsafe_noop_policy: bool,
    },
    /// Manage tenants' policy functions and rules on a running server.
    Tenant {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Admin listener address, when not the configuration's.
        #[arg(long)]
        admin: Option<std::net::SocketAddr>,
        #[command(subcommand)]
        command: TenantCommand,
    },
    /// Print an argon2 PHC hash for a password (read from stdin when omitted).
    HashPassword { password: Option<String> },
    /// What happened to a message: its events per recipient.
    Status {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Admin listener address, when not the configuration's.
        #[arg(long)]
        admin: Option<std::net::SocketAddr>,
        /// Only this recipient's events.
        #[arg(long)]
        recipient: Option<String>,
        message_id: String,
    },
    /// Manage the status API's component on a running server.
    StatusApi {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Admin listener address, when not the configuration's.
        #[arg(long)]
        admin: Option<std::net::SocketAddr>,
        #[command(subcommand)]
        command: StatusApiCommand,
    },
    /// Inspect the spool of a configuration.
    Spool {
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: SpoolCommand,
    },
}

#[derive(Subcommand)]
enum TenantCommand {
    /// Deploy a new version of a function (a .wasm component); it is
    /// validated first and used from the next transaction on.
    Deploy {
        tenant: String,
        function: String,
        component: PathBuf,
    },
    /// Replace a tenant's rules (a TOML file).
    Rules { tenant: String, rules: PathBuf },
    /// Tenants, their functions and active versions.
    List,
    /// Go back to the previous version of a function (`rules` for the rules).
    Rollback { tenant: String, function: String },
}

#[derive(Subcommand)]
enum StatusApiCommand {
    /// Deploy a new version of the status component (a wasi:http .wasm);
    /// it is validated first and answers from the next request on.
    Deploy { component: PathBuf },
    /// The active version.
    Show,
    /// Go back to the previous version.
    Rollback,
}

#[derive(Subcommand)]
enum SpoolCommand {
    /// One line per pending message: id, tenant, sender, recipients, size.
    List,
    /// The content of one message, byte for byte.
    Show { id: String },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    mailwit::policy::install_panic_hook();
    match cli.command {
        Command::Serve {
            config,
            unsafe_noop_policy,
        } => serve(Config::load(config.as_deref())?, unsafe_noop_policy),
        Command::Status {
            config,
            admin,
            recipient,
            message_id,
        } => {
            let config = client_config(config, admin)?;
            let mut path = format!("/v1/messages/{message_id}");
            if let Some(r) = recipient {
                path.push_str(&format!("?recipient={r}"));
            }
            admin_call(&config, Method::GET, &path, Vec::new())
        }
        Command::StatusApi {
            config,
            admin,
            command,
        } => {
            let config = client_config(config, admin)?;
            let (method, path, body) = match command {
                StatusApiCommand::Deploy { component } => (
                    Method::PUT,
                    "/v1/status-api",
                    std::fs::read(&component)
                        .with_context(|| format!("reading {}", component.display()))?,
                ),
                StatusApiCommand::Show => (Method::GET, "/v1/status-api", Vec::new()),
                StatusApiCommand::Rollback => (Method::POST, "/v1/status-api/rollback", Vec::new()),
            };
            admin_call(&config, method, path, body)
        }
        Command::Tenant {
            config,
            admin,
            command,
        } => tenant(client_config(config, admin)?, command),
        Command::HashPassword { password } => {
            let password = match password {
                Some(p) => p,
                None => {
                    let mut line = String::new();
                    std::io::stdin().read_line(&mut line)?;
                    line.trim_end_matches(['\r', '\n']).to_string()
                }
            };
            use argon2::password_hash::{PasswordHasher, SaltString, rand_core::OsRng};
            let salt = SaltString::generate(&mut OsRng);
            let hash = argon2::Argon2::default()
                .hash_password(password.as_bytes(), &salt)
                .map_err(|e| anyhow::anyhow!("hashing: {e}"))?;
            println!("{hash}");
            Ok(())
        }
        Command::Spool { config, command } => {
            let config = Config::load(config.as_deref())?;
            let messages =
                spool::read_pending(&config.data_dir.join("spool")).with_context(|| {
                    format!("reading the spool under {}", config.data_dir.display())
                })?;
            match command {
                SpoolCommand::List => {
                    for m in messages {
                        println!(
                            "{} {} {} -> {} ({} octets)",
                            m.meta.id,
                            m.meta.tenant,
                            m.meta.sender,
                            m.meta.recipients.join(","),
                            m.content.len()
                        );
                    }
                }
                SpoolCommand::Show { id } => {
                    let m = messages
                        .into_iter()
                        .find(|m| m.meta.id == id)
                        .with_context(|| format!("no pending message {id}"))?;
                    std::io::stdout().write_all(&m.content)?;
                }
            }
            Ok(())
        }
    }
}

/// The configuration a CLI command talks to the server with: `--config`
/// (or the embedded one), with `--admin` overriding the admin address.
fn client_config(
    config: Option<PathBuf>,
    admin: Option<std::net::SocketAddr>,
) -> anyhow::Result<Config> {
    let mut config = Config::load(config.as_deref())?;
    if let Some(a) = admin {
        config.admin.addr = a;
    }
    Ok(config)
}

fn tenant(config: Config, command: TenantCommand) -> anyhow::Result<()> {
    let (method, path, body) = match command {
        TenantCommand::Deploy {
            tenant,
            function,
            component,
        } => (
            Method::PUT,
            format!("/v1/tenants/{tenant}/functions/{function}"),
            std::fs::read(&component)
                .with_context(|| format!("reading {}", component.display()))?,
        ),
        TenantCommand::Rules { tenant, rules } => (
            Method::PUT,
            format!("/v1/tenants/{tenant}/rules"),
            std::fs::read(&rules).with_context(|| format!("reading {}", rules.display()))?,
        ),
        TenantCommand::List => (Method::GET, "/v1/tenants".to_string(), Vec::new()),
        TenantCommand::Rollback { tenant, function } => (
            Method::POST,
            format!("/v1/tenants/{tenant}/functions/{function}/rollback"),
            Vec::new(),
        ),
    };
    admin_call(&config, method, &path, body)
}

/// One request to the running server's admin API; prints the answer.
fn admin_call(config: &Config, method: Method, path: &str, body: Vec<u8>) -> anyhow::Result<()> {
    let token = match &config.admin.token {
        Some(t) => t.clone(),
        None => {
            let path = config.data_dir.join("admin.token");
            std::fs::read_to_string(&path)
                .with_context(|| {
                    format!(
                        "reading the admin token {} (set [admin] token, or run from the server's directory)",
                        path.display()
                    )
                })?
                .trim()
                .to_string()
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (status, text) = runtime.block_on(admin::request(
        config.admin.addr,
        &token,
        method,
        path,
        body,
    ))?;
    print!("{text}");
    if !status.is_success() {
        anyhow::bail!("the server refused: {status}");
    }
    Ok(())
}

fn serve(config: Config, noop: bool) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let config = Arc::new(config);
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating data_dir {}", config.data_dir.display()))?;
        let tls = tokio_rustls::TlsAcceptor::from(tls::server_config(&config)?);
        let spool_dir = config.data_dir.join("spool");
        let (spool, committer, pending) = spool::Spool::open(&spool_dir, &config.spool)
            .with_context(|| format!("opening the spool {}", spool_dir.display()))?;
        tracing::info!(event = "spool.recovered", dir = %spool_dir.display(), pending = pending.len());
        let metrics = Arc::new(Metrics::default());
        let rc = &config.runtime;
        let rt = Arc::new(Runtime::new(RuntimeConfig {
            cache_dir: Some(config.data_dir.join("cache")),
            max_instances: rc.max_instances,
            max_memory_bytes: rc.max_memory_bytes,
            warm_calls: rc.instance_reuse_calls,
        })?);
        let defaults = Limits {
            deadline: Duration::from_millis(rc.deadline_ms),
            memory_bytes: rc.memory_bytes,
        };
        let rt2 = rt.clone();
        let config2 = config.clone();
        let tenants = Arc::new(
            tokio::task::spawn_blocking(move || Tenants::open(rt2, &config2, defaults)).await??,
        );
        for t in tenants.list() {
            let functions: Vec<String> = t.functions.iter().map(|f| format!("{}@{}", f.name, f.version)).collect();
            tracing::info!(event = "tenant.loaded", tenant = %t.tenant, generation = t.generation, rules = t.rules_version, functions = %functions.join(","));
        }
        let policy: Arc<dyn Policy> = if noop {
            tracing::warn!("--unsafe-noop-policy: every login and message is accepted; benchmark use only");
            Arc::new(NoopPolicy)
        } else {
            Arc::new(WasmPolicy::new(rt.clone(), tenants.clone(), metrics.clone()))
        };
        let status: Arc<dyn StatusStore> = Arc::new(
            FileStatusStore::open(&config.data_dir.join("status")).context("opening the status store")?,
        );
        let delivery = {
            let d = Delivery::start(
                spool.clone(),
                status.clone(),
                tenants.clone(),
                config.delivery.clone(),
                config.hostname.clone(),
                &config.data_dir,
            )
            .context("starting delivery")?;
            d.recover(pending);
            d
        };
        let listeners = server::bind(&config).await?;
        let admin_listener = tokio::net::TcpListener::bind(config.admin.addr)
            .await
            .with_context(|| format!("binding the admin listener on {}", config.admin.addr))?;
        let token = admin_token(&config)?;
        tracing::info!(event = "listening", listener = %"admin", addr = %admin_listener.local_addr()?, tls = %"none");
        let status_api = {
            let (rt, dir, t, s, m, c) = (rt.clone(), config.data_dir.clone(), tenants.clone(), status.clone(), metrics.clone(), config.status_api.clone());
            let retention = config.delivery.retention_secs;
            Arc::new(tokio::task::spawn_blocking(move || StatusApi::open(rt, dir, t, s, m, c, retention)).await?.context("loading the status API component")?)
        };
        let status_listener = tokio::net::TcpListener::bind(config.status_api.addr)
            .await
            .with_context(|| format!("binding the status API listener on {}", config.status_api.addr))?;
        tracing::info!(event = "listening", listener = %"status-api", addr = %status_listener.local_addr()?, tls = %"none");
        let shared = Arc::new(Shared::new(config.clone(), policy, metrics.clone(), spool, delivery, tls));

        let (stop, stopped) = watch::channel(false);
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => tracing::info!(event = "shutdown", signal = "SIGTERM"),
                _ = int.recv() => tracing::info!(event = "shutdown", signal = "SIGINT"),
            }
            let _ = stop.send(true);
        });
        let admin = Arc::new(admin::Admin {
            data_dir: config.data_dir.clone(),
            tenants,
            metrics,
            status,
            status_api: status_api.clone(),
            delivery: shared.delivery.clone(),
            token,
        });
        let admin_task = tokio::spawn(admin::serve(admin, admin_listener, stopped.clone()));
        let status_task = tokio::spawn(statusapi::serve(status_api, status_listener, stopped.clone()));
        let spool_handle = shared.spool.clone();
        server::run(shared, listeners, stopped).await;
        // Delivery keeps its own handle; the committer stops after what is
        // already queued (unfinished deliveries resume at the next start).
        spool_handle.close();
        let _ = admin_task.await;
        let _ = status_task.await;
        // All sessions are gone, so is every spool handle: the committer
        // drains and stops.
        tokio::task::spawn_blocking(move || committer.join()).await.ok();
        tracing::info!(event = "stopped");
        anyhow::Ok(())
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
