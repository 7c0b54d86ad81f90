//! The `mailwit` command line.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use hyper::Method;
use mailwit::config::Config;
use mailwit::{admin, queue, tls};
use tokio::signal::unix::{SignalKind, signal};

mod alloc;
mod cli;
mod logwriter;
use cli::tenant::TenantCommand;

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
    /// Validate a configuration file without starting: every problem, with
    /// its key; certificate files that do not parse.
    CheckConfig { config: PathBuf },
    /// Ask the running server to read its `[limits]` and certificate files
    /// again (as `SIGHUP` does).
    Reload {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Admin listener address, when not the configuration's.
        #[arg(long)]
        admin: Option<std::net::SocketAddr>,
    },
    /// Write a self-signed certificate and key (PEM; the key mode 0600), for
    /// a first start before a real certificate is in place.
    GenerateCert {
        /// The host name it is for (also valid for localhost and loopback).
        #[arg(long)]
        hostname: String,
        #[arg(long)]
        cert: PathBuf,
        #[arg(long)]
        key: PathBuf,
    },
    /// Manage tenants on a running server: accounts, users, API keys,
    /// tokens, limits, policy functions and rules.
    Tenant {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Admin listener address, when not the configuration's.
        #[arg(long)]
        admin: Option<std::net::SocketAddr>,
        /// A bearer token for the admin API (a tenant's, or the
        /// operator's), instead of the configuration's admin token.
        #[arg(long, env = "MAILWIT_TOKEN", hide_env_values = true)]
        token: Option<String>,
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
        /// A bearer token for the admin API (a tenant's, or the
        /// operator's), instead of the configuration's admin token.
        #[arg(long, env = "MAILWIT_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Only this recipient's events.
        #[arg(long)]
        recipient: Option<String>,
        /// The events as JSON, for scripts.
        #[arg(long)]
        json: bool,
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
    /// The cluster a configuration's `[cluster]` names: hosts alive,
    /// the delivery queue's counts, the streams.
    Cluster {
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: ClusterCommand,
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
enum StatusApiCommand {
    /// Deploy a new version of the status component (a wasi:http .wasm);
    /// it is validated first and answers from the next request on.
    Deploy { component: PathBuf },
    /// The active version.
    Show {
        /// As JSON, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Go back to the previous version.
    Rollback,
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Hosts seen in the last 15 s; pending, in-flight and redelivered
    /// messages; each stream's size, replicas and leader.
    Status {
        /// As JSON, for scripts.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum SpoolCommand {
    /// One line per pending message: id, tenant, sender, recipients, size.
    List {
        /// As JSON, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// The content of one message, byte for byte.
    Show { id: String },
}

/// mimalloc for small blocks, glibc for large ones (see `alloc`).
#[global_allocator]
static GLOBAL: alloc::Split = alloc::Split;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            config,
            unsafe_noop_policy,
        } => serve(Config::load(config.as_deref())?, config, unsafe_noop_policy),
        Command::CheckConfig { config } => check_config(&config),
        Command::Reload { config, admin } => {
            let config = client_config(config, admin, None)?;
            let answer = admin_call(&config, Method::POST, "/v1/reload", Vec::new())?;
            println!(
                "reloaded: limits {}, certificate {}",
                answer["limits"], answer["certificate"]
            );
            Ok(())
        }
        Command::GenerateCert {
            hostname,
            cert,
            key,
        } => {
            tls::write_self_signed(&hostname, &cert, &key)?;
            println!("wrote {} and {}", cert.display(), key.display());
            Ok(())
        }
        Command::Status {
            config,
            admin,
            token,
            recipient,
            json,
            message_id,
        } => {
            let config = client_config(config, admin, token)?;
            let mut path = format!("/v1/messages/{message_id}");
            if let Some(r) = recipient {
                path.push_str(&format!("?recipient={r}"));
            }
            let answer = admin_call(&config, Method::GET, &path, Vec::new())?;
            if json {
                return print_json(&answer);
            }
            let rows = answer["events"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|e| {
                    vec![
                        time_text(e["ts_ms"].as_u64()),
                        text(&e["recipient"]),
                        text(&e["status"]),
                        text(&e["detail"]),
                    ]
                })
                .collect();
            print_table(&["TIME (UTC)", "RECIPIENT", "STATUS", "DETAIL"], rows);
            Ok(())
        }
        Command::StatusApi {
            config,
            admin,
            command,
        } => {
            let config = client_config(config, admin, None)?;
            let (method, path, body, json) = match command {
                StatusApiCommand::Deploy { component } => (
                    Method::PUT,
                    "/v1/status-api",
                    std::fs::read(&component)
                        .with_context(|| format!("reading {}", component.display()))?,
                    true,
                ),
                StatusApiCommand::Show { json } => {
                    (Method::GET, "/v1/status-api", Vec::new(), json)
                }
                StatusApiCommand::Rollback => {
                    (Method::POST, "/v1/status-api/rollback", Vec::new(), true)
                }
            };
            let answer = admin_call(&config, method, path, body)?;
            if json {
                return print_json(&answer);
            }
            let fields: Vec<(&String, &serde_json::Value)> = answer
                .as_object()
                .map(|o| o.iter().collect())
                .unwrap_or_default();
            let rows = fields
                .into_iter()
                .map(|(k, v)| vec![k.clone(), text(v)])
                .collect();
            print_table(&["FIELD", "VALUE"], rows);
            Ok(())
        }
        Command::Tenant {
            config,
            admin,
            token,
            command,
        } => cli::tenant::run(client_config(config, admin, token)?, command),
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
        Command::Cluster {
            config,
            command: ClusterCommand::Status { json },
        } => cluster_status(&Config::load(config.as_deref())?, json),
        Command::Spool { config, command } => {
            let config = Config::load(config.as_deref())?;
            anyhow::ensure!(
                config.cluster.is_none(),
                "this configuration's queue is in the cluster: see `mailwit cluster status`"
            );
            let messages =
                queue::file::pending(&config.data_dir.join("spool")).with_context(|| {
                    format!("reading the spool under {}", config.data_dir.display())
                })?;
            match command {
                SpoolCommand::List { json } => {
                    if json {
                        let list: Vec<serde_json::Value> = messages
                            .iter()
                            .map(|m| {
                                serde_json::json!({
                                    "id": m.meta.id,
                                    "tenant": m.meta.tenant,
                                    "sender": m.meta.sender,
                                    "recipients": m.meta.recipients,
                                    "size": m.content.len(),
                                })
                            })
                            .collect();
                        return print_json(&serde_json::Value::Array(list));
                    }
                    let rows = messages
                        .iter()
                        .map(|m| {
                            vec![
                                m.meta.id.clone(),
                                m.meta.tenant.clone(),
                                m.meta.sender.clone(),
                                m.meta.recipients.join(","),
                                m.content.len().to_string(),
                            ]
                        })
                        .collect();
                    print_table(&["ID", "TENANT", "SENDER", "RECIPIENTS", "OCTETS"], rows);
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
    token: Option<String>,
) -> anyhow::Result<Config> {
    let mut config = Config::load(config.as_deref())?;
    if let Some(a) = admin {
        config.admin.addr = a;
    }
    if token.is_some() {
        config.admin.token = token;
    }
    Ok(config)
}

/// `mailwit check-config FILE`: every problem, with its key, then the files
/// it names; exits non-zero when there is any.
fn check_config(path: &std::path::Path) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let problems = match Config::parse(&text) {
        Ok(config) => config.check_files(),
        Err(problems) => problems,
    };
    if problems.is_empty() {
        println!("{}: ok", path.display());
        return Ok(());
    }
    for p in &problems {
        eprintln!("{}: {p}", path.display());
    }
    anyhow::bail!("{} problem(s) in {}", problems.len(), path.display())
}

fn cluster_status(config: &Config, json: bool) -> anyhow::Result<()> {
    let c = config
        .cluster
        .as_ref()
        .context("this configuration has no [cluster] section")?;
    let status = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let cluster = mailwit::cluster::Cluster::connect(c, "cli").await?;
            tokio::time::timeout(std::time::Duration::from_secs(10), cluster.status())
                .await
                .context("NATS did not answer within 10 s")?
        })?;
    if json {
        return print_json(&status);
    }
    let q = &status["queue"];
    println!(
        "queue: {} pending, {} in flight, {} redelivered",
        q["pending"], q["in_flight"], q["redelivered"]
    );
    let hosts = status["hosts"].as_array().cloned().unwrap_or_default();
    print_table(
        &["HOST", "PID", "VERSION", "SEEN"],
        hosts
            .iter()
            .map(|h| {
                let ago =
                    mailwit::wallclock::now_ms().saturating_sub(h["seen_ms"].as_u64().unwrap_or(0));
                vec![
                    h["host"].as_str().unwrap_or("").to_string(),
                    h["pid"].to_string(),
                    h["version"].as_str().unwrap_or("").to_string(),
                    format!("{:.0}s ago", ago as f64 / 1000.0),
                ]
            })
            .collect(),
    );
    let streams = status["streams"].as_array().cloned().unwrap_or_default();
    print_table(
        &["STREAM", "MESSAGES", "BYTES", "REPLICAS", "LEADER"],
        streams
            .iter()
            .map(|s| {
                vec![
                    s["stream"].as_str().unwrap_or("").to_string(),
                    s["messages"].to_string(),
                    s["bytes"].to_string(),
                    s["replicas"].to_string(),
                    s["leader"].as_str().unwrap_or("-").to_string(),
                ]
            })
            .collect(),
    );
    Ok(())
}

fn print_json(value: &serde_json::Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// A JSON value as table text: strings without quotes, null as "-".
fn text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// Milliseconds since the epoch as `2026-12-02 10:15:30.123` (UTC).
fn time_text(ms: Option<u64>) -> String {
    let Some(t) = ms.and_then(|ms| {
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
    }) else {
        return "-".into();
    };
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:03}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// A table for people: a header, columns padded to their widest cell.
fn print_table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in &rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// One request to the running server's admin API; its JSON answer.
fn admin_call(
    config: &Config,
    method: Method,
    path: &str,
    body: Vec<u8>,
) -> anyhow::Result<serde_json::Value> {
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
    let (status, text) =
        runtime.block_on(admin::request(&config.admin, &token, method, path, body))?;
    let answer: Option<serde_json::Value> = serde_json::from_str(&text).ok();
    if !status.is_success() {
        let why = answer
            .as_ref()
            .and_then(|a| a["error"].as_str())
            .map(str::to_string)
            .unwrap_or(text);
        anyhow::bail!("the server refused ({status}): {why}");
    }
    answer.with_context(|| format!("the server's answer is not JSON: {text}"))
}

fn serve(config: Config, config_path: Option<PathBuf>, noop: bool) -> anyhow::Result<()> {
    // Before any other thread exists (the log's is the first).
    let large_blocks_returned = alloc::return_large_blocks();
    let log = logwriter::Batched::start(std::io::stderr())?;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(log.clone())
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if !large_blocks_returned {
        tracing::warn!(event = "malloc.threshold", "could not set M_MMAP_THRESHOLD");
    }
    // The lines before a panic's message come before it.
    let panic_hook = std::panic::take_hook();
    let flush_first = log.clone();
    std::panic::set_hook(Box::new(move |info| {
        flush_first.try_flush();
        panic_hook(info)
    }));
    let served = serve_logged(config, config_path, noop);
    log.flush();
    served
}

fn serve_logged(config: Config, config_path: Option<PathBuf>, noop: bool) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        // Before anything listens: a signal as soon as a client could have
        // connected is already a graceful one.
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        let running = mailwit::app::start(
            config,
            mailwit::app::Options {
                config_path,
                noop_policy: noop,
            },
        )
        .await?;
        alloc::release_startup_memory();
        loop {
            tokio::select! {
                _ = term.recv() => tracing::info!(event = "shutdown", signal = "SIGTERM"),
                _ = int.recv() => tracing::info!(event = "shutdown", signal = "SIGINT"),
                _ = hup.recv() => {
                    let reload = running.reloader();
                    let _ = tokio::task::spawn_blocking(move || reload.reload()).await;
                    continue;
                }
            }
            break;
        }
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
        running.stop();
        running.wait().await
    })
}
