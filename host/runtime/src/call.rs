//! One call into one function: a `Store` (WASI that grants nothing, the
//! tenant's rules, a memory limit, an epoch deadline), instantiation from
//! the pre-linked `InstancePre`, the call, and classification of whatever
//! went wrong.
//!
//! By default every call gets a fresh instance. Inside [`with_warm`] (the
//! host's async workers, a few threads) an instance may instead serve
//! several calls of the same function version, rules version and tenant on
//! that thread: at most `RuntimeConfig::warm_calls` calls (1: always
//! fresh), at most [`WARM_PER_THREAD`] instances per thread (least recently
//! used dropped first; a replaced version's instances linger until then),
//! and never again after any failure (trap, deadline, memory limit, even a
//! panic that unwinds through the call). Instantiation is most of a call's
//! cost; the price is that a component's globals may survive from one call
//! to the next of the same tenant, never across tenants or versions.

use std::cell::{Cell, RefCell};
use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::{Instance, ResourceTable};
use wasmtime::{ResourceLimiter, Store, Trap};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::bindings::exports::mailwit::policy as ex;
use crate::bindings::mailwit::policy as im;
use crate::engine::{Function, Runtime, TICK};
use crate::policy::SessionInfo;
use crate::rules::Rules;

/// Lines a single call may log; the rest are dropped.
const MAX_LOG_LINES: u32 = 16;
/// Longest log line kept from a component.
const MAX_LOG_LINE: usize = 512;

/// Per-tenant limits of each call. Defaults in [`Limits::default`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Wall-clock time one call may take, host calls included. Default
    /// 250 ms (an argon2 check inside `verify-secret` takes tens of ms).
    pub deadline: Duration,
    /// Linear memory one instance may grow to. Default 16 MiB.
    pub memory_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            deadline: Duration::from_millis(250),
            memory_bytes: 16 << 20,
        }
    }
}

/// What went wrong in a call. Every kind becomes `451 4.3.0` for the
/// transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureKind {
    /// The epoch deadline passed.
    Deadline,
    /// The instance asked for more memory than its limit.
    Memory,
    /// A trap: panic, unreachable, stack overflow, ...
    Trap(String),
    /// It returned something larger than the host accepts.
    Oversize(&'static str),
    /// It returned a refusal that is not a valid 4xx/5xx reply.
    InvalidReply(String),
    /// It could not be instantiated (pool exhausted, say).
    Instantiate(String),
}

impl FailureKind {
    /// Short label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            FailureKind::Deadline => "deadline",
            FailureKind::Memory => "memory",
            FailureKind::Trap(_) => "trap",
            FailureKind::Oversize(_) => "oversize",
            FailureKind::InvalidReply(_) => "invalid_reply",
            FailureKind::Instantiate(_) => "instantiate",
        }
    }
}

/// A failed call, attributed to its function version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("policy function {function} v{version}: {kind:?}")]
pub struct Failure {
    pub function: String,
    pub version: u64,
    pub kind: FailureKind,
}

/// Refuses memory growth past a maximum, and remembers that it did.
pub(crate) struct Limiter {
    max: usize,
    pub(crate) hit: bool,
}

impl Limiter {
    pub(crate) fn new(max: usize) -> Limiter {
        Limiter { max, hit: false }
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max {
            self.hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1 << 16)
    }
}

/// The store's data for one call.
pub struct State {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: Limiter,
    rules: Arc<Rules>,
    tenant: Arc<str>,
    function: Arc<str>,
    version: u64,
    logs: u32,
    /// What `host.current-session` answers: the session of the
    /// transaction the current call decides for, converted only if asked.
    /// Set by [`run`] before every call (a warm instance serves many
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
        self.rules.verify_secret(&key, &secret)
    }

    fn current_session(&mut self) -> Option<im::types::Session> {
        self.session.as_deref().map(crate::policy::session)
    }

    fn now_ms(&mut self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// Most warm instances one thread keeps (each holds a pool slot).
pub const WARM_PER_THREAD: usize = 8;

/// A reused instance. Its store's `State` says what it may serve (rules,
/// tenant, memory limit); `function` keeps the version it was made from
/// alive, so the pointer comparison cannot meet a new `Function` at a freed
/// address.
struct Warm {
    function: Arc<Function>,
    store: Store<State>,
    instance: Instance,
    calls: u32,
}

thread_local! {
    static WARM_ON: Cell<bool> = const { Cell::new(false) };
    /// Most recently used last.
    static WARM: RefCell<Vec<Warm>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with instance reuse allowed for its calls on this thread. Meant
/// for a few long-lived threads: each keeps up to [`WARM_PER_THREAD`]
/// instances (pool slots) until replaced.
pub fn with_warm<R>(f: impl FnOnce() -> R) -> R {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            WARM_ON.with(|c| c.set(self.0));
        }
    }
    let _reset = Reset(WARM_ON.with(|c| c.replace(true)));
    f()
}

/// What one call runs under: the function's tenant and rules, the limits,
/// and the session `host.current-session` answers with.
pub(crate) struct Context<'a> {
    pub tenant: &'a Arc<str>,
    pub rules: &'a Arc<Rules>,
    pub limits: Limits,
    pub session: Option<&'a Arc<SessionInfo>>,
}

/// Runs `call` under `cx` on an instance of `function`: a warm one inside
/// [`with_warm`], else a fresh one.
pub(crate) fn run<R>(
    rt: &Runtime,
    function: &Arc<Function>,
    cx: &Context<'_>,
    call: impl FnOnce(&mut Store<State>, &Instance) -> wasmtime::Result<R>,
) -> Result<R, Failure> {
    let (tenant, rules, limits) = (cx.tenant, cx.rules, cx.limits);
    if !WARM_ON.with(Cell::get) || rt.config().warm_calls <= 1 {
        return fresh(rt, function, cx, call);
    }
    let memory_bytes = memory_limit(rt, limits);
    // Taken out of the cache for the call: if the call fails or unwinds,
    // the instance is simply dropped.
    let found = WARM.with(|w| {
        let mut w = w.borrow_mut();
        let i = w.iter().position(|x| {
            let st = x.store.data();
            Arc::ptr_eq(&x.function, function)
                && Arc::ptr_eq(&st.rules, rules)
                && Arc::ptr_eq(&st.tenant, tenant)
                && st.limiter.max == memory_bytes
        })?;
        Some(w.remove(i))
    });
    let mut warm = match found {
        Some(w) => w,
        None => {
            let (store, instance) = instantiate(rt, function, tenant, rules, limits)?;
            Warm {
                function: function.clone(),
                store,
                instance,
                calls: 0,
            }
        }
    };
    arm_deadline(&mut warm.store, limits);
    let state = warm.store.data_mut();
    state.logs = 0;
    state.session = cx.session.cloned();
    let r = call(&mut warm.store, &warm.instance)
        .map_err(|e| failure(function, &warm.store, e, FailureKind::Trap))?;
    warm.calls += 1;
    if warm.calls < rt.config().warm_calls && !warm.store.data().limiter.hit {
        WARM.with(|w| {
            let mut w = w.borrow_mut();
            if w.len() >= WARM_PER_THREAD {
                w.remove(0);
            }
            w.push(warm);
        });
    }
    Ok(r)
}

/// A new instance in its own store: WASI that grants nothing, the rules,
/// the memory limit, a deadline armed for instantiation.
fn instantiate(
    rt: &Runtime,
    function: &Function,
    tenant: &Arc<str>,
    rules: &Arc<Rules>,
    limits: Limits,
) -> Result<(Store<State>, Instance), Failure> {
    let memory_bytes = memory_limit(rt, limits);
    let state = State {
        // No preopens, no environment, no arguments, no sockets, no stdio:
        // the default context grants nothing.
        wasi: WasiCtx::builder().build(),
        table: ResourceTable::new(),
        limiter: Limiter::new(memory_bytes),
        rules: rules.clone(),
        tenant: tenant.clone(),
        function: Arc::from(function.name.as_str()),
        version: function.version,
        logs: 0,
        session: None,
        loaded: Loaded::default(),
    };
    let mut store = Store::new(&rt.engine, state);
    store.limiter(|s| &mut s.limiter);
    arm_deadline(&mut store, limits);
    let instance = function
        .pre
        .instantiate(&mut store)
        .map_err(|e| failure(function, &store, e, FailureKind::Instantiate))?;
    Ok((store, instance))
}

/// An instance's memory limit: the call's, within the runtime's maximum.
fn memory_limit(rt: &Runtime, limits: Limits) -> usize {
    limits.memory_bytes.min(rt.config().max_memory_bytes)
}

/// The deadline counts from now.
fn arm_deadline(store: &mut Store<State>, limits: Limits) {
    let ticks = (limits.deadline.as_millis() / TICK.as_millis()).max(1) as u64 + 1;
    store.set_epoch_deadline(ticks);
    store.epoch_deadline_trap();
}

fn failure(
    function: &Function,
    store: &Store<State>,
    e: wasmtime::Error,
    otherwise: fn(String) -> FailureKind,
) -> Failure {
    Failure {
        function: function.name.clone(),
        version: function.version,
        kind: classify(&e, store.data().limiter.hit).unwrap_or_else(|| otherwise(format!("{e:#}"))),
    }
}

/// Runs `call` on a fresh instance of `function` under `cx`.
pub(crate) fn fresh<R>(
    rt: &Runtime,
    function: &Function,
    cx: &Context<'_>,
    call: impl FnOnce(&mut Store<State>, &Instance) -> wasmtime::Result<R>,
) -> Result<R, Failure> {
    let (mut store, instance) = instantiate(rt, function, cx.tenant, cx.rules, cx.limits)?;
    store.data_mut().session = cx.session.cloned();
    call(&mut store, &instance).map_err(|e| failure(function, &store, e, FailureKind::Trap))
}

fn classify(e: &wasmtime::Error, memory_hit: bool) -> Option<FailureKind> {
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => Some(FailureKind::Deadline),
        _ if memory_hit => Some(FailureKind::Memory),
        Some(t) => Some(FailureKind::Trap(t.to_string())),
        None => None,
    }
}
