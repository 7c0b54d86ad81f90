//! The `mailwit` command line.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use mailwit::config::Config;
use mailwit::policy::ConfigPolicy;
use mailwit::server::{self, Shared};
use mailwit::{spool, tls};
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
    },
    /// Print an argon2 PHC hash for a password (read from stdin when omitted).
    HashPassword { password: Option<String> },
    /// Inspect the spool of a configuration.
    Spool {
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: SpoolCommand,
    },
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
    match cli.command {
        Command::Serve { config } => serve(Config::load(config.as_deref())?),
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

fn serve(config: Config) -> anyhow::Result<()> {
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
        let policy = Arc::new(ConfigPolicy::new(&config.tenants));
        let listeners = server::bind(&config).await?;
        let shared = Arc::new(Shared::new(config.clone(), policy, spool, tls));

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
        server::run(shared, listeners, stopped).await;
        // All sessions are gone, so is every spool handle: the committer
        // drains and stops.
        tokio::task::spawn_blocking(move || committer.join()).await.ok();
        tracing::info!(event = "stopped");
        anyhow::Ok(())
    })
}
