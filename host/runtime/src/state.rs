//! The data of a policy call's `Store` and the `host` import it answers
//! (logging, the rules, secrets, the clock, the session). Below the engine,
//! whose linker is typed by it.

use std::sync::Arc;
use std::time::Instant;

use wasmtime::Store;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::bindings::exports::mailwit::policy as ex;
use crate::bindings::mailwit::policy as im;
use crate::bindings::mailwit::policy::types as t;
use crate::isolation::CpuMeter;
use crate::limits::{Clock, Limiter, next_tick, watch_clock};
use crate::rules::Rules;
use crate::types::{Client, SessionInfo};

/// Lines a single call may log; the rest are dropped.
const MAX_LOG_LINES: u32 = 16;
/// Longest log line kept from a component.
const MAX_LOG_LINE: usize = 512;
/// Secret checks (`verify-secret`) one call may ask for; later ones are
/// answered false unchecked. A login needs one.
const MAX_SECRET_CHECKS: u32 = 4;

/// The store's data for one call.
pub struct State {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limiter: Limiter,
    pub(crate) rules: Arc<Rules>,
    pub(crate) tenant: Arc<str>,
    function: Arc<str>,
    version: u64,
    logs: u32,
    /// The current call's deadline, moved on by the time the host spends
    /// in its secret checks.
    clock: Clock,
    /// Secret checks this call asked for.
    secret_checks: u32,
    /// What `host.current-session` answers: the session of the
    /// transaction the current call decides for, converted only if asked.
    /// Set by `begin_call` before every call (a warm instance serves many
    /// transactions); none for authenticate.
    session: Option<Arc<SessionInfo>>,
    /// The instance's exports, type-checked on first use: a warm instance
    /// serves many calls, and looking an export up and checking its type
    /// costs about as much as a small call. A store holds one instance, so
    /// these handles are always that instance's.
    pub(crate) loaded: Loaded,
}

/// Exports of a store's instance, loaded when first called.
#[derive(Default)]
pub(crate) struct Loaded {
    pub authenticate: Option<ex::authenticate::Guest>,
    pub check_sender: Option<ex::check_sender::Guest>,
    pub check_recipient: Option<ex::check_recipient::Guest>,
    pub inspect_message: Option<ex::inspect_message::Guest>,
    pub route: Option<ex::route::Guest>,
    pub decide_message: Option<ex::decide_message::Guest>,
}

/// The export in `slot` of the store's instance, loaded by `load` on first
/// use.
pub(crate) fn export<G: Clone>(
    store: &mut Store<State>,
    slot: fn(&mut Loaded) -> &mut Option<G>,
    load: impl FnOnce(&mut Store<State>) -> wasmtime::Result<G>,
) -> wasmtime::Result<G> {
    if let Some(g) = slot(&mut store.data_mut().loaded) {
        return Ok(g.clone());
    }
    let g = load(store)?;
    *slot(&mut store.data_mut().loaded) = Some(g.clone());
    Ok(g)
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl im::types::Host for State {}

impl State {
    /// A new call on `store` (also its instantiation): a deadline
    /// `deadline` from now, the per-call counts start again, and
    /// `host.current-session` answers with `session`.
    pub(crate) fn begin_call(
        store: &mut Store<State>,
        deadline: std::time::Duration,
        session: Option<Arc<SessionInfo>>,
    ) {
        let st = store.data_mut();
        st.logs = 0;
        st.clock.restart(Instant::now(), deadline);
        st.secret_checks = 0;
        st.session = session;
        next_tick(store);
    }

    /// The call ends: the last stretch it ran is charged to its tenant.
    pub(crate) fn end_call(&self) {
        self.clock.charge(Instant::now());
    }

    /// The tenant's CPU meter, when shares are on.
    pub(crate) fn meter(&self) -> Option<&Arc<CpuMeter>> {
        self.clock.meter()
    }

    /// Once per store: its calls yield at every tick until their deadline
    /// (see `limits::Clock`).
    pub(crate) fn watch_deadline(store: &mut Store<State>) {
        watch_clock(store, |s| &mut s.clock);
    }

    /// A call's data: nothing granted by WASI, the tenant's rules, a memory
    /// limit of `memory_bytes`, the tenant's CPU `meter` if shares are on.
    pub(crate) fn new(
        function: &str,
        version: u64,
        tenant: &Arc<str>,
        rules: &Arc<Rules>,
        memory_bytes: usize,
        meter: Option<Arc<CpuMeter>>,
    ) -> State {
        State {
            // No preopens, no environment, no arguments, no sockets, no
            // stdio: the default context grants nothing.
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
            limiter: Limiter::new(memory_bytes),
            rules: rules.clone(),
            tenant: tenant.clone(),
            function: Arc::from(function),
            version,
            logs: 0,
            clock: Clock::start(Instant::now(), std::time::Duration::ZERO).metered(meter),
            secret_checks: 0,
            session: None,
            loaded: Loaded::default(),
        }
    }
}

impl im::host::Host for State {
    fn log(&mut self, level: im::host::Level, message: String) {
        self.logs += 1;
        if self.logs > MAX_LOG_LINES {
            return;
        }
        let message: String = message
            .chars()
            .take(MAX_LOG_LINE)
            .flat_map(char::escape_default)
            .collect();
        let (tenant, function, version) = (&*self.tenant, &*self.function, self.version);
        match level {
            im::host::Level::Debug => {
                tracing::debug!(tenant, function, version, message, "component log")
            }
            im::host::Level::Info => {
                tracing::info!(tenant, function, version, message, "component log")
            }
            im::host::Level::Warn => {
                tracing::warn!(tenant, function, version, message, "component log")
            }
            im::host::Level::Error => {
                tracing::error!(tenant, function, version, message, "component log")
            }
        }
    }

    fn rule(&mut self, key: String) -> Option<String> {
        self.rules.get(&key).map(str::to_string)
    }

    fn rule_list(&mut self, key: String) -> Vec<String> {
        self.rules.list(&key).to_vec()
    }

    fn verify_secret(&mut self, key: String, secret: String) -> bool {
        // Each check is argon2 work the deadline does not count: bounded
        // here, so a component cannot buy itself time with them.
        self.secret_checks += 1;
        if self.secret_checks > MAX_SECRET_CHECKS {
            return false;
        }
        let start = Instant::now();
        let ok = self.rules.verify_secret(&key, &secret);
        self.clock.owe(start.elapsed());
        ok
    }

    fn current_session(&mut self) -> Option<im::types::Session> {
        self.session.as_deref().map(session)
    }

    fn current_usage(&mut self) -> Option<im::types::Usage> {
        let u = self.session.as_ref()?.usage.as_ref()?.usage();
        Some(im::types::Usage {
            messages_this_second: u.messages_this_second,
            messages_today: u.messages_today,
            sessions: u.sessions,
        })
    }

    fn now_ms(&mut self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

pub(crate) fn client(c: &Client) -> t::ClientInfo {
    t::ClientInfo {
        ip: c.ip.to_string(),
        port: c.port,
        listener: c.listener.clone(),
        tls: c.tls,
        server_name: c.server_name.clone(),
    }
}

/// The session as components see it (`host.current-session`).
pub(crate) fn session(s: &SessionInfo) -> t::Session {
    t::Session {
        client: client(&s.client),
        tenant: s.tenant.clone(),
        login: s.login.clone(),
        helo: s.helo.clone(),
    }
}
