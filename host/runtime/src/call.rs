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

use wasmtime::Store;
use wasmtime::component::Instance;

use crate::engine::{Function, LoadError, Runtime};
use crate::limits::{Failure, FailureKind, Limits, classify, set_deadline, spare_host_time};
use crate::rules::Rules;
pub(crate) use crate::state::{State, export};
use crate::types::SessionInfo;

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
    set_deadline(&mut warm.store, limits.deadline);
    warm.store.data_mut().begin_call(cx.session.cloned());
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
    let state = State::new(
        &function.name,
        function.version,
        tenant,
        rules,
        memory_bytes,
    );
    let mut store = Store::new(&rt.engine, state);
    store.limiter(|s| &mut s.limiter);
    spare_host_time(&mut store, State::take_host_time);
    set_deadline(&mut store, limits.deadline);
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
    set_deadline(&mut store, cx.limits.deadline);
    store.data_mut().begin_call(cx.session.cloned());
    call(&mut store, &instance).map_err(|e| failure(function, &store, e, FailureKind::Trap))
}

impl Runtime {
    /// Compiles (or reuses) and links a function, and checks it: every
    /// decision point it exports has the contract's type, it instantiates
    /// without trapping, and it exports at least one.
    pub fn load(&self, name: &str, version: u64, bytes: &[u8]) -> Result<Function, LoadError> {
        let function = self.link(name, version, bytes)?;
        typecheck(self, &function)?;
        self.require_exports(&function)?;
        Ok(function)
    }
}

/// Instantiates once and loads every export found: `GuestIndices::new`
/// only finds exports by name, `load` checks their types. A component
/// that traps while instantiating is refused here too.
fn typecheck(rt: &Runtime, f: &Function) -> Result<(), LoadError> {
    let rules = std::sync::Arc::new(crate::rules::Rules::default());
    let tenant: std::sync::Arc<str> = std::sync::Arc::from("deploy-check");
    let mismatch = |iface: &str, e: wasmtime::Error| LoadError::Mismatch {
        interface: format!("mailwit:policy/{iface}@0.2.0"),
        why: format!("{e:#}"),
    };
    let cx = Context {
        tenant: &tenant,
        rules: &rules,
        limits: crate::limits::Limits::default(),
        session: None,
    };
    let r = fresh(rt, f, &cx, |store, inst| {
        let e = &f.exports;
        let checks = [
            (
                "authenticate",
                e.authenticate
                    .as_ref()
                    .map(|i| i.load(&mut *store, inst).map(drop)),
            ),
            (
                "check-sender",
                e.check_sender
                    .as_ref()
                    .map(|i| i.load(&mut *store, inst).map(drop)),
            ),
            (
                "check-recipient",
                e.check_recipient
                    .as_ref()
                    .map(|i| i.load(&mut *store, inst).map(drop)),
            ),
            (
                "inspect-message",
                e.inspect_message
                    .as_ref()
                    .map(|i| i.load(&mut *store, inst).map(drop)),
            ),
            (
                "route",
                e.route
                    .as_ref()
                    .map(|i| i.load(&mut *store, inst).map(drop)),
            ),
        ];
        Ok(checks
            .into_iter()
            .filter_map(|(iface, r)| Some(mismatch(iface, r?.err()?)))
            .collect::<Vec<_>>())
    });
    match r {
        Ok(mut problems) if !problems.is_empty() => Err(problems.remove(0)),
        Ok(_) => Ok(()),
        Err(failure) => Err(LoadError::Link(format!(
            "instantiating failed: {:?}",
            failure.kind
        ))),
    }
}
