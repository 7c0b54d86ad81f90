//! Listeners, connection caps and graceful shutdown.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tracing::{error, info};

use crate::config::{Config, Limits, Listener, TlsMode};
use crate::driver::Context;
use crate::submission::Services;

/// What every session shares.
pub struct Shared {
    pub config: Arc<Config>,
    /// What answering the sessions' questions needs.
    pub services: Arc<Services>,
    pub tls: TlsAcceptor,
    /// The ceiling on message content in memory.
    pub budget: Arc<crate::budget::ContentBudget>,
    /// `[limits]`, replaced by a reload: a session takes the current ones
    /// when it starts and keeps them to its end.
    limits: RwLock<Arc<Limits>>,
    conns: Mutex<ConnCount>,
    next_session: AtomicU64,
}

/// Open connections, total and per client address. A std Mutex, not a
/// tokio one: it is held for a few instructions and never across `.await`.
#[derive(Default)]
struct ConnCount {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// Releases a connection's slot when the session ends.
struct ConnGuard {
    shared: Arc<Shared>,
    ip: IpAddr,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let mut c = self.shared.conns.lock().expect("conn count lock");
        c.total -= 1;
        if let Some(n) = c.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.per_ip.remove(&self.ip);
            }
        }
    }
}

impl Shared {
    pub fn new(
        config: Arc<Config>,
        services: Arc<Services>,
        tls: TlsAcceptor,
        budget: Arc<crate::budget::ContentBudget>,
    ) -> Self {
        Shared {
            budget,
            limits: RwLock::new(Arc::new(config.limits.clone())),
            config,
            services,
            tls,
            conns: Mutex::new(ConnCount::default()),
            next_session: AtomicU64::new(1),
        }
    }

    /// The `[limits]` in force (the configuration's, or a reload's).
    pub fn limits(&self) -> Arc<Limits> {
        self.limits.read().expect("limits lock").clone()
    }

    /// Puts new `[limits]` in force for sessions that start from now on.
    pub fn set_limits(&self, limits: Limits) {
        *self.limits.write().expect("limits lock") = Arc::new(limits);
    }

    /// Takes a connection slot; false when a cap is reached (the slot is
    /// still taken until the 421 has been sent, so a flood cannot grow).
    fn admit(self: &Arc<Self>, ip: IpAddr) -> (ConnGuard, bool) {
        let limits = self.limits();
        let mut c = self.conns.lock().expect("conn count lock");
        let per_ip = c.per_ip.get(&ip).copied().unwrap_or(0);
        let ok = c.total < limits.max_connections && per_ip < limits.max_connections_per_ip;
        c.total += 1;
        *c.per_ip.entry(ip).or_default() += 1;
        (
            ConnGuard {
                shared: self.clone(),
                ip,
            },
            ok,
        )
    }
}

/// A listener's settings as the driver needs them.
pub struct ListenerCtx {
    pub name: String,
    pub implicit_tls: bool,
    pub config: Listener,
}

/// Binds every configured listener. Done before `run` so that a bind error
/// is reported at start-up and tests can learn the ports.
pub async fn bind(config: &Config) -> anyhow::Result<Vec<(Listener, TcpListener)>> {
    let mut out = Vec::new();
    for l in &config.listeners {
        let sock = TcpListener::bind(l.addr)
            .await
            .map_err(|e| anyhow::anyhow!("binding listener {} on {}: {e}", l.name, l.addr))?;
        out.push((l.clone(), sock));
    }
    Ok(out)
}

/// Serves until `shutdown` turns true, then waits for sessions to end
/// (each gets the configured grace period for its transaction).
pub async fn run(
    shared: Arc<Shared>,
    listeners: Vec<(Listener, TcpListener)>,
    shutdown: watch::Receiver<bool>,
) {
    // Every session holds a clone of `alive`; when all are dropped, `done`
    // yields None and every session has ended.
    let (alive, mut done) = mpsc::channel::<()>(1);
    let mut accept_loops = Vec::new();
    for (config, sock) in listeners {
        let addr: SocketAddr = sock.local_addr().expect("bound socket has an address");
        info!(event = "listening", listener = %config.name, addr = %addr, tls = ?config.tls);
        let ctx = Arc::new(ListenerCtx {
            name: config.name.clone(),
            implicit_tls: config.tls == TlsMode::Implicit,
            config,
        });
        accept_loops.push(tokio::spawn(accept_loop(
            shared.clone(),
            ctx,
            sock,
            shutdown.clone(),
            alive.clone(),
        )));
    }
    drop(alive);
    // Every listener is accepting and the stores are open: tell systemd
    // (Type=notify; nothing happens without NOTIFY_SOCKET).
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    info!(event = "ready");
    for l in accept_loops {
        let _ = l.await;
    }
    let _ = done.recv().await;
    info!(event = "sessions_closed");
}

async fn accept_loop(
    shared: Arc<Shared>,
    ctx: Arc<ListenerCtx>,
    sock: TcpListener,
    mut shutdown: watch::Receiver<bool>,
    alive: mpsc::Sender<()>,
) {
    loop {
        let (tcp, peer) = tokio::select! {
            r = sock.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    error!(event = "accept_error", cause = %e);
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => {
                info!(event = "listener_stopped", listener = %ctx.name);
                return;
            }
        };
        let _ = tcp.set_nodelay(true);
        let (guard, ok) = shared.admit(peer.ip());
        let n = shared.next_session.fetch_add(1, Ordering::Relaxed);
        let session_id = format!("{n:x}");
        let alive = alive.clone();
        let shutdown = shutdown.clone();
        let limits = shared.limits();
        let context = Context {
            core: shared.config.session_config(&ctx.config, &limits),
            limits,
            tls: shared.tls.clone(),
            budget: shared.budget.clone(),
            listener: ctx.name.clone(),
            implicit_tls: ctx.implicit_tls,
        };
        let services = shared.services.clone();
        tokio::spawn(async move {
            crate::driver::run(context, services, tcp, peer, session_id, !ok, shutdown).await;
            drop(guard);
            drop(alive);
        });
    }
}
