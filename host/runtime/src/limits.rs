//! What bounds every call into a component, policy or HTTP alike: the
//! limits, the memory limiter, the epoch deadline (trapping, for HTTP
//! components' synchronous calls; a `Clock` that yields at every tick
//! until it passes, and slows a call that runs long, for policy calls),
//! and what a failure was.
//! A leaf: the other modules share this one deadline and trap path.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use wasmtime::{ResourceLimiter, Store, Trap, UpdateDeadline};

use crate::isolation::{CpuMeter, nanos};

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
    /// The deadline passed, and so often in a row that the function is now
    /// quarantined for this long (see `isolation::Health`).
    DeadlineQuarantined(Duration),
    /// The function is quarantined: not run; this long is left.
    Quarantined(Duration),
    /// The tenant's policy CPU share is spent for longer than the call's
    /// deadline: not run.
    CpuShare,
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
            FailureKind::Deadline | FailureKind::DeadlineQuarantined(_) => "deadline",
            FailureKind::Quarantined(_) => "quarantined",
            FailureKind::CpuShare => "cpu_share",
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

/// Arms a synchronous call's deadline (an HTTP component's): `deadline`
/// from now, to the next tick, then a trap ([`Trap::Interrupt`]).
pub(crate) fn arm_deadline<T>(store: &mut Store<T>, deadline: Duration) {
    store.set_epoch_deadline(ticks(deadline));
    store.epoch_deadline_trap();
}

/// A policy call's deadline in wall-clock time, checked at each epoch tick.
/// Until it passes, the call yields to the executor at every tick (so a
/// looping component shares its thread, as `wasmtime serve` runs guests);
/// then it traps ([`Trap::Interrupt`]). Time the host spent on the call's
/// behalf (`owed`: the argon2 checks of `verify-secret`, whose number is
/// bounded) moves the deadline on by as much, so a loaded machine slows a
/// login's check without failing it.
///
/// With a tenant's CPU meter, each stretch the guest ran (from when it was
/// last resumed to the tick, at most two ticks: a host call's argon2 is the
/// host's, bounded by the auth gate) is charged to it, and a tick that
/// finds the tenant over its share sleeps instead of only yielding.
///
/// A call still running after [`SLOW_FRACTION`] of its deadline is taken
/// for stuck: from then on it runs one tick in four ([`SLOW_PAUSE`] asleep
/// after each). The reference functions answer in microseconds, so only a
/// looping or runaway call gets there; it still ends at its deadline, but
/// burns a quarter of a core meanwhile instead of a whole one (its
/// tenant's share, 0.25 of the machine by default, bounds it too, but
/// only after its burst). A heavy function that needs more should be
/// given a longer deadline in its tenant's rules.
#[derive(Debug, Clone)]
pub(crate) struct Clock {
    until: Instant,
    /// When the call is taken for stuck (moved on with `until`).
    slow_from: Instant,
    owed: Duration,
    meter: Option<Arc<CpuMeter>>,
    /// When the guest last started running (`isolation::nanos`), written
    /// by the yield that resumes it.
    resumed: Arc<AtomicU64>,
}

/// Longest sleep at one tick of a call over its tenant's share: the
/// deadline is still checked at each wake-up.
const MAX_THROTTLE: Duration = Duration::from_millis(20);

/// The part of its deadline after which a call runs slowed (a fifth: 50 ms
/// of the default 250).
const SLOW_FRACTION: u32 = 5;

/// A slowed call's sleep after each tick it ran: three ticks, so it runs
/// one tick in four.
const SLOW_PAUSE: Duration = Duration::from_millis(3 * TICK.as_millis() as u64);

impl Clock {
    /// A deadline `deadline` after `now`, without a meter.
    pub(crate) fn start(now: Instant, deadline: Duration) -> Clock {
        Clock {
            until: now + deadline,
            slow_from: now + deadline / SLOW_FRACTION,
            owed: Duration::ZERO,
            meter: None,
            resumed: Arc::new(AtomicU64::new(nanos(now))),
        }
    }

    /// The same clock charging `meter`.
    pub(crate) fn metered(mut self, meter: Option<Arc<CpuMeter>>) -> Clock {
        self.meter = meter;
        self
    }

    /// A new call from `now`: its deadline, nothing owed, running.
    pub(crate) fn restart(&mut self, now: Instant, deadline: Duration) {
        self.until = now + deadline;
        self.slow_from = now + deadline / SLOW_FRACTION;
        self.owed = Duration::ZERO;
        self.resumed.store(nanos(now), Ordering::Relaxed);
    }

    /// The host spent `d` on the call's behalf.
    pub(crate) fn owe(&mut self, d: Duration) {
        self.owed += d;
    }

    /// The tenant's meter, if shares are on.
    pub(crate) fn meter(&self) -> Option<&Arc<CpuMeter>> {
        self.meter.as_ref()
    }

    /// Charges the stretch the guest ran until `now`.
    pub(crate) fn charge(&self, now: Instant) {
        if let Some(m) = &self.meter {
            let ran = nanos(now).saturating_sub(self.resumed.load(Ordering::Relaxed));
            m.charge(now, Duration::from_nanos(ran).min(2 * TICK));
        }
    }

    /// What the call does at the tick that comes at `now`: yield (or sleep,
    /// over its tenant's share or past [`SLOW_FRACTION`] of its deadline)
    /// and be asked again at the next tick, or stop.
    pub(crate) fn at_tick(&mut self, now: Instant) -> Tick {
        let owed = std::mem::take(&mut self.owed);
        self.until += owed;
        self.slow_from += owed;
        self.charge(now);
        if now >= self.until {
            return Tick::Interrupt;
        }
        let over_share = self.meter.as_ref().and_then(|m| {
            let wait = m.over(now)?;
            m.throttle();
            Some(wait)
        });
        let slowed = (now >= self.slow_from).then_some(SLOW_PAUSE);
        match over_share.max(slowed) {
            Some(pause) => Tick::Sleep(pause.min(self.until - now).min(MAX_THROTTLE)),
            None => Tick::Yield,
        }
    }
}

/// [`Clock::at_tick`]'s answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tick {
    Yield,
    Sleep(Duration),
    Interrupt,
}

/// Arms `store` for its calls' [`Clock`]s (found by `clock` in its data):
/// at every tick, yield to tokio's scheduler (`yield_now` lets the
/// worker's other tasks run before this one is polled again), sleep, or
/// trap. Each call starts its clock and asks for the next tick with
/// [`next_tick`].
pub(crate) fn watch_clock<T: 'static>(store: &mut Store<T>, clock: fn(&mut T) -> &mut Clock) {
    store.epoch_deadline_callback(move |mut cx| {
        let clock = clock(cx.data_mut());
        let pause = match clock.at_tick(Instant::now()) {
            Tick::Interrupt => return Ok(UpdateDeadline::Interrupt),
            Tick::Yield => None,
            Tick::Sleep(d) => Some(d),
        };
        let resumed = clock.resumed.clone();
        Ok(UpdateDeadline::YieldCustom(
            1,
            Box::pin(async move {
                match pause {
                    None => tokio::task::yield_now().await,
                    Some(d) => tokio::time::sleep(d).await,
                }
                resumed.store(nanos(Instant::now()), Ordering::Relaxed);
            }),
        ))
    });
}

/// The store's epoch callback runs at the next tick.
pub(crate) fn next_tick<T>(store: &mut Store<T>) {
    store.set_epoch_deadline(1);
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

    /// A clock yields at every tick before a fifth of its deadline, then
    /// sleeps three ticks at each (never past the deadline), and stops at
    /// the first tick at or after it; owed host time moves both on once,
    /// when the tick that finds it comes.
    #[test]
    fn a_clock_yields_then_slows_until_its_deadline_and_owed_time_moves_it_on() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut c = Clock::start(t0, ms(100));
        assert_eq!(c.at_tick(t0 + ms(2)), Tick::Yield);
        assert_eq!(c.at_tick(t0 + ms(19)), Tick::Yield);
        assert_eq!(c.at_tick(t0 + ms(20)), Tick::Sleep(SLOW_PAUSE));
        assert_eq!(c.at_tick(t0 + ms(96)), Tick::Sleep(ms(4)));
        assert_eq!(c.at_tick(t0 + ms(100)), Tick::Interrupt);
        let mut c = Clock::start(t0, ms(100));
        c.owe(ms(30));
        c.owe(ms(20));
        assert_eq!(c.at_tick(t0 + ms(60)), Tick::Yield);
        // Taken once: nothing more is owed at the next tick.
        assert_eq!(c.at_tick(t0 + ms(70)), Tick::Sleep(SLOW_PAUSE));
        assert_eq!(c.at_tick(t0 + ms(150)), Tick::Interrupt);
        // A zero deadline stops at the first tick.
        assert_eq!(Clock::start(t0, ms(0)).at_tick(t0), Tick::Interrupt);
    }

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
