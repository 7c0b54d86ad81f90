//! One call into one function: a `Store` (WASI that grants nothing, the
//! tenant's rules, a memory limit, a wall-clock deadline), instantiation
//! from the pre-linked `InstancePre`, the call, and classification of
//! whatever went wrong.
//!
//! Calls are async (wasmtime's fibers): a call yields to the executor at
//! every epoch tick until its deadline passes, then traps, so a looping
//! component shares its thread with the host's other work instead of
//! holding it (see `limits::Clock`). A call may take a warm instance of the
//! same function version from the runtime's pool (see the `warm` module).

use std::sync::Arc;

use wasmtime::Store;
use wasmtime::component::Instance;

use crate::engine::{Function, LoadError, Runtime};
use crate::isolation::Hit;
use crate::limits::{Failure, FailureKind, Limits, arm_deadline, classify};
use crate::rules::Rules;
pub(crate) use crate::state::{State, export};
use crate::ticker::Awake;
use crate::types::SessionInfo;
use crate::warm::{Key, Warm};

/// What one call runs under: the function's tenant and rules, the limits,
/// and the session `host.current-session` answers with.
pub(crate) struct Context<'a> {
    pub tenant: &'a Arc<str>,
    pub rules: &'a Arc<Rules>,
    pub limits: Limits,
    pub session: Option<&'a Arc<SessionInfo>>,
}

/// An instance lent to one call: a warm one from the runtime's pool when
/// one serves the call, else a fresh one. [`Lease::finish`] gives it back
/// unless the call failed or it has served its calls; a lease dropped
/// before (a call future dropped mid-call) drops its instance.
///
/// A lease, not a closure taking the store: the call's future then borrows
/// nothing under a higher-ranked lifetime, which tokio's `Send` bound on
/// the host's tasks could not see through.
pub(crate) struct Lease<'a> {
    rt: &'a Runtime,
    function: &'a Function,
    warm: Warm,
    /// Keeps the epoch advancing for the call's deadline.
    _awake: Awake<'a>,
}

/// Lends an instance of `function` for one call under `cx`, its deadline
/// armed and its per-call state reset.
pub(crate) async fn lease<'a>(
    rt: &'a Runtime,
    function: &'a Function,
    cx: &Context<'_>,
) -> Result<Lease<'a>, Failure> {
    let key = Key {
        function: function.id,
        rules: cx.rules,
        tenant: cx.tenant,
        memory_bytes: memory_limit(rt, cx.limits),
    };
    let now = std::time::Instant::now();
    if let Err(left) = function.health.admit(now, cx.limits.deadline) {
        return Err(function_failure(function, FailureKind::Quarantined(left)));
    }
    let found = match rt.config().warm_calls > 1 {
        true => rt.warm.take(&key),
        false => None,
    };
    let mut warm = match found {
        Some(w) => w,
        None => {
            // Boxed: rare once instances are warm, and its future would
            // otherwise make every call's future as large as its own.
            let (store, instance) =
                Box::pin(instantiate(rt, function, cx, Deadline::Yield)).await?;
            Warm {
                function: function.id,
                store,
                instance,
                calls: 0,
            }
        }
    };
    // Over its CPU share, the tenant waits here, off its worker's back;
    // for longer than the call's deadline it is refused at once.
    if let Some(meter) = warm.store.data().meter()
        && let Some(wait) = meter.over(now)
    {
        meter.throttle();
        if wait > cx.limits.deadline {
            rt.warm.put(warm);
            return Err(function_failure(function, FailureKind::CpuShare));
        }
        Box::pin(tokio::time::sleep(wait)).await;
    }
    let _awake = rt.ticker.enter();
    State::begin_call(&mut warm.store, cx.limits.deadline, cx.session.cloned());
    Ok(Lease {
        rt,
        function,
        warm,
        _awake,
    })
}

fn function_failure(function: &Function, kind: FailureKind) -> Failure {
    Failure {
        function: function.name.clone(),
        version: function.version,
        kind,
    }
}

impl Lease<'_> {
    /// The store and its instance, for the call.
    pub fn parts(&mut self) -> (&mut Store<State>, &Instance) {
        (&mut self.warm.store, &self.warm.instance)
    }

    /// Ends the call with its result: a failure is classified and the
    /// instance dropped; otherwise the instance may serve again.
    pub fn finish<R>(mut self, r: wasmtime::Result<R>) -> Result<R, Failure> {
        self.warm.store.data().end_call();
        let health = &self.function.health;
        let r = r.map_err(|e| {
            let mut f = failure(self.function, &self.warm.store, e, FailureKind::Trap);
            if f.kind == FailureKind::Deadline
                && let Hit::Quarantined(d) = health.deadline_hit(std::time::Instant::now())
            {
                f.kind = FailureKind::DeadlineQuarantined(d);
            }
            f
        })?;
        if health.answered() {
            tracing::info!(
                event = "policy.quarantine_ended",
                tenant = %self.warm.store.data().tenant,
                function = %self.function.name,
                version = self.function.version,
                "the probe answered: the function runs again"
            );
        }
        self.warm.calls += 1;
        if self.warm.calls < self.rt.config().warm_calls && !self.warm.store.data().limiter.hit {
            self.rt.warm.put(self.warm);
        }
        Ok(r)
    }
}

/// How a store keeps its calls' deadlines.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Deadline {
    /// Yield at every tick until the deadline, then trap: for calls polled
    /// by the host's tokio runtime.
    Yield,
    /// Trap at the deadline, never yield: for a future polled by
    /// `block_on` outside tokio's scheduler, where tokio's `yield_now`
    /// would wait for a scheduler that is blocked polling it.
    Trap,
}

/// A new instance in its own store: WASI that grants nothing, the rules,
/// the memory limit, the deadline armed for instantiation.
async fn instantiate(
    rt: &Runtime,
    function: &Function,
    cx: &Context<'_>,
    deadline: Deadline,
) -> Result<(Store<State>, Instance), Failure> {
    let _awake = rt.ticker.enter();
    let meter = match deadline {
        Deadline::Yield => rt.meters.meter(cx.tenant),
        Deadline::Trap => None,
    };
    let state = State::new(
        &function.name,
        function.version,
        cx.tenant,
        cx.rules,
        memory_limit(rt, cx.limits),
        meter,
    );
    let mut store = Store::new(&rt.engine, state);
    store.limiter(|s| &mut s.limiter);
    match deadline {
        Deadline::Yield => {
            State::watch_deadline(&mut store);
            State::begin_call(&mut store, cx.limits.deadline, None);
        }
        Deadline::Trap => arm_deadline(&mut store, cx.limits.deadline),
    }
    let instance = function
        .pre
        .instantiate_async(&mut store)
        .await
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

impl Runtime {
    /// Compiles (or reuses) and links a function, and checks it: every
    /// decision point it exports has the contract's type, it instantiates
    /// without trapping, and it exports at least one. Blocks while the
    /// check instantiates it once (under the default limits): call it from
    /// a thread that may block.
    pub fn load(&self, name: &str, version: u64, bytes: &[u8]) -> Result<Function, LoadError> {
        let function = self.link(name, version, bytes)?;
        futures::executor::block_on(typecheck(self, &function))?;
        self.require_exports(&function)?;
        Ok(function)
    }
}

/// Instantiates once and loads every export found: `GuestIndices::new`
/// only finds exports by name, `load` checks their types. A component
/// that traps while instantiating is refused here too.
async fn typecheck(rt: &Runtime, f: &Function) -> Result<(), LoadError> {
    let (mut store, inst) = instantiate(
        rt,
        f,
        &Context {
            tenant: &Arc::from("deploy-check"),
            rules: &Arc::new(Rules::default()),
            limits: Limits::default(),
            session: None,
        },
        Deadline::Trap,
    )
    .await
    .map_err(|failure| LoadError::Link(format!("instantiating failed: {:?}", failure.kind)))?;
    // Each export found by name must also load with the contract's type.
    macro_rules! check {
        ($slot:ident, $iface:literal) => {
            if let Some(Err(e)) = f.exports.$slot.as_ref().map(|i| i.load(&mut store, &inst)) {
                return Err(LoadError::Mismatch {
                    interface: concat!("mailwit:policy/", $iface, "@0.2.0").into(),
                    why: format!("{e:#}"),
                });
            }
        };
    }
    check!(authenticate, "authenticate");
    check!(check_sender, "check-sender");
    check!(check_recipient, "check-recipient");
    check!(inspect_message, "inspect-message");
    check!(route, "route");
    check!(decide_message, "decide-message");
    Ok(())
}
