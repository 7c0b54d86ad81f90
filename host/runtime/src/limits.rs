//! What bounds every call into a component, policy or HTTP alike: the
//! limits, the memory limiter, the epoch deadline, and what a failure was.
//! A leaf: the other modules share this one deadline and trap path.

use std::time::Duration;

use wasmtime::{ResourceLimiter, Store, Trap, UpdateDeadline};

/// How often the engine's epoch ticks (one ticker thread).
pub const TICK: Duration = Duration::from_millis(2);

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
    /// It returned a refusal that is not a valid 4xx/5xx reply (the
    /// embedder's finding: the runtime returns refusals unvalidated).
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
    pub(crate) max: usize,
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

/// Ticks of the epoch that cover `d` (at least one, plus one for the tick
/// under way).
fn ticks(d: Duration) -> u64 {
    (d.as_millis() / TICK.as_millis()).max(1) as u64 + 1
}

/// Arms `store`'s deadline: `deadline` from now, to the next tick, then a
/// trap ([`Trap::Interrupt`]).
pub(crate) fn arm_deadline<T>(store: &mut Store<T>, deadline: Duration) {
    set_deadline(store, deadline);
    store.epoch_deadline_trap();
}

/// The deadline, `deadline` from now; what happens then is the store's
/// ([`arm_deadline`] or [`spare_host_time`]).
pub(crate) fn set_deadline<T>(store: &mut Store<T>, deadline: Duration) {
    store.set_epoch_deadline(ticks(deadline));
}

/// Once per store: when its deadline comes, time the host spent on the
/// call's behalf (`owed` takes what accumulated: the argon2 checks of
/// `verify-secret`, whose number is bounded) moves it on by that much; once
/// nothing is owed, it traps ([`Trap::Interrupt`]). A loaded machine then
/// slows a login's check without failing it. Each call arms the deadline
/// itself with [`set_deadline`].
pub(crate) fn spare_host_time<T: 'static>(store: &mut Store<T>, owed: fn(&mut T) -> Duration) {
    store.epoch_deadline_callback(move |mut cx| {
        let owed = owed(cx.data_mut());
        Ok(match owed.is_zero() {
            true => UpdateDeadline::Interrupt,
            false => UpdateDeadline::Continue(ticks(owed)),
        })
    });
}

/// What a call's error was: the deadline, the memory limit (`memory_hit`:
/// the limiter refused growth), another trap; `None` for an error that is
/// not a trap (the caller names it).
pub(crate) fn classify(e: &wasmtime::Error, memory_hit: bool) -> Option<FailureKind> {
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => Some(FailureKind::Deadline),
        _ if memory_hit => Some(FailureKind::Memory),
        Some(t) => Some(FailureKind::Trap(t.to_string())),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deadline is whole ticks plus the one under way: the call is
    /// interrupted at the epoch `ticks(d)` ticks after it started, between
    /// `d` and `d + TICK` of wall time (with a punctual ticker).
    #[test]
    fn a_deadline_is_its_ticks_plus_the_one_under_way() {
        assert_eq!(TICK, Duration::from_millis(2));
        assert_eq!(ticks(Duration::ZERO), 2);
        assert_eq!(ticks(Duration::from_millis(1)), 2);
        assert_eq!(ticks(Duration::from_millis(4)), 3);
        assert_eq!(ticks(Duration::from_millis(5)), 3);
        assert_eq!(ticks(Duration::from_millis(250)), 126);
    }
}
