//! What keeps one tenant's components from costing the others more than
//! its share: a function that keeps running into its deadline is
//! quarantined ([`Health`]), and each tenant's policy CPU time is metered
//! against a share of the machine ([`CpuMeter`]). A leaf, like `limits`.
//!
//! The deadline alone bounds one call, not a tenant: a looping function
//! burns a core for its whole deadline (250 ms by default) on every
//! transaction, and one session of it took 15-32% of the other tenants'
//! throughput on 2 cores. Quarantine stops running it after a few hits in
//! a row; the CPU share slows a tenant whose calls, looping or merely
//! heavy, take more than its share, so its sessions wait, not the others'.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Deadline hits in a row that quarantine a function. Two: each hit of a
/// looping function costs its tenant's share of the machine for a whole
/// deadline (slowed after a fifth of it, see `limits::Clock`), and a
/// function that answers in time once in between starts the count again.
pub const QUARANTINE_AFTER: u32 = 2;
/// The first quarantine's length; each failed probe doubles it.
pub const FIRST_QUARANTINE: Duration = Duration::from_secs(5);
/// The longest quarantine.
pub const MAX_QUARANTINE: Duration = Duration::from_secs(300);

/// One function version's record of deadline hits, and its quarantine.
/// Every call of the version asks [`Health::admit`] first: a fast path of
/// one atomic load while the function is healthy.
#[derive(Debug, Default)]
pub(crate) struct Health {
    /// Whether a quarantine is on (the slow path must be taken).
    quarantined: AtomicBool,
    /// Deadline hits in a row (the slow path is taken to reset them).
    hits: AtomicU32,
    state: Mutex<Quarantine>,
}

#[derive(Debug, Default)]
struct Quarantine {
    /// Calls are refused until then.
    until: Option<Instant>,
    /// The length of the current quarantine.
    backoff: Duration,
    /// When the one call let through after `until` (the probe) started.
    probe: Option<Instant>,
}

/// What a deadline hit did to its function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hit {
    /// Counted; no quarantine yet (or a call let in before it began).
    Counted,
    /// The function is quarantined for this long, from now.
    Quarantined(Duration),
}

impl Health {
    /// Whether a call may run now. While quarantined: refused, with how
    /// long is left. After it: one call at a time runs as the probe (a
    /// probe whose call was dropped is replaced once `deadline` twice over
    /// has passed), the others are still refused.
    pub(crate) fn admit(&self, now: Instant, deadline: Duration) -> Result<(), Duration> {
        if !self.quarantined.load(Ordering::Relaxed) {
            return Ok(());
        }
        let mut q = self.state.lock().expect("health lock");
        let Some(until) = q.until else {
            return Ok(());
        };
        if now < until {
            return Err(until - now);
        }
        match q.probe {
            Some(p) if now < p + 2 * deadline => Err(Duration::ZERO),
            _ => {
                q.probe = Some(now);
                Ok(())
            }
        }
    }

    /// A call of the function ran into its deadline at `now`.
    pub(crate) fn deadline_hit(&self, now: Instant) -> Hit {
        let hits = self.hits.fetch_add(1, Ordering::Relaxed) + 1;
        let mut q = self.state.lock().expect("health lock");
        let backoff = match q.until {
            // A call let in before the quarantine began, ending in it.
            Some(until) if now < until => return Hit::Counted,
            // The probe failed: again, for twice as long.
            Some(_) => (q.backoff * 2).min(MAX_QUARANTINE),
            None if hits >= QUARANTINE_AFTER => FIRST_QUARANTINE,
            None => return Hit::Counted,
        };
        q.until = Some(now + backoff);
        q.backoff = backoff;
        q.probe = None;
        self.quarantined.store(true, Ordering::Relaxed);
        Hit::Quarantined(backoff)
    }

    /// A call of the function returned (accepted or refused: it answered).
    /// Ends a quarantine (the probe answered) and the count of hits;
    /// returns whether a quarantine ended.
    pub(crate) fn answered(&self) -> bool {
        if self.hits.load(Ordering::Relaxed) == 0 && !self.quarantined.load(Ordering::Relaxed) {
            return false;
        }
        let mut q = self.state.lock().expect("health lock");
        self.hits.store(0, Ordering::Relaxed);
        self.quarantined.store(false, Ordering::Relaxed);
        std::mem::take(&mut *q).until.is_some()
    }
}

/// A tenant's policy CPU share: `cores` of CPU time per second of wall
/// time, with `burst` of CPU time that may be spent at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuShare {
    pub cores: f64,
    pub burst: Duration,
}

/// Nanoseconds since an hour before the process's first use of the
/// meters (so no instant a caller holds is earlier).
pub(crate) fn nanos(t: Instant) -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    let base = *BASE.get_or_init(|| {
        let now = Instant::now();
        now.checked_sub(Duration::from_secs(3600)).unwrap_or(now)
    });
    t.saturating_duration_since(base).as_nanos() as u64
}

/// One tenant's CPU account: a generic cell rate algorithm over CPU time.
/// `tat` is when the tenant's account would be even again if it spent
/// nothing more; the tenant is over its share while `tat` is more than
/// `burst / cores` ahead of now. Lock-free: every call of the tenant
/// charges it, from any thread.
#[derive(Debug)]
pub struct CpuMeter {
    share: CpuShare,
    tat: AtomicU64,
    /// CPU time charged in all, in ns.
    used: AtomicU64,
    /// Times a call of the tenant was slowed or refused for its share.
    throttled: AtomicU64,
}

impl CpuMeter {
    pub(crate) fn new(share: CpuShare) -> CpuMeter {
        CpuMeter {
            share,
            tat: AtomicU64::new(0),
            used: AtomicU64::new(0),
            throttled: AtomicU64::new(0),
        }
    }

    /// The tenant spent `cpu` of CPU time, seen at `now`.
    pub(crate) fn charge(&self, now: Instant, cpu: Duration) {
        let now = nanos(now);
        let cost = (cpu.as_nanos() as f64 / self.share.cores) as u64;
        let _ = self
            .tat
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |tat| {
                Some(tat.max(now) + cost)
            });
        self.used
            .fetch_add(cpu.as_nanos() as u64, Ordering::Relaxed);
    }

    /// How long the tenant must wait, from `now`, to be within its share
    /// again; `None` when it is.
    pub(crate) fn over(&self, now: Instant) -> Option<Duration> {
        let allowance = (self.share.burst.as_nanos() as f64 / self.share.cores) as u64;
        let ahead = self
            .tat
            .load(Ordering::Relaxed)
            .checked_sub(nanos(now) + allowance)?;
        (ahead > 0).then(|| Duration::from_nanos(ahead))
    }

    /// Counts a call slowed or refused for the share.
    pub(crate) fn throttle(&self) {
        self.throttled.fetch_add(1, Ordering::Relaxed);
    }
}

/// A tenant's policy CPU so far, for metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct CpuUse {
    pub tenant: Arc<str>,
    pub seconds: f64,
    pub throttled: u64,
}

/// The meters of every tenant, made on a tenant's first instance (a store
/// keeps its tenant's meter, so a call never looks it up).
#[derive(Debug, Default)]
pub(crate) struct Meters {
    share: Option<CpuShare>,
    meters: Mutex<HashMap<Arc<str>, Arc<CpuMeter>>>,
}

impl Meters {
    pub(crate) fn new(share: Option<CpuShare>) -> Meters {
        Meters {
            share,
            meters: Mutex::default(),
        }
    }

    /// `tenant`'s meter; none when shares are off.
    pub(crate) fn meter(&self, tenant: &Arc<str>) -> Option<Arc<CpuMeter>> {
        let share = self.share?;
        let mut m = self.meters.lock().expect("meters lock");
        Some(
            m.entry(tenant.clone())
                .or_insert_with(|| Arc::new(CpuMeter::new(share)))
                .clone(),
        )
    }

    pub(crate) fn usage(&self) -> Vec<CpuUse> {
        let m = self.meters.lock().expect("meters lock");
        let mut v: Vec<CpuUse> = m
            .iter()
            .map(|(t, m)| CpuUse {
                tenant: t.clone(),
                seconds: m.used.load(Ordering::Relaxed) as f64 / 1e9,
                throttled: m.throttled.load(Ordering::Relaxed),
            })
            .collect();
        v.sort_by(|a, b| a.tenant.cmp(&b.tenant));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: Duration = Duration::from_millis(250);

    /// [`QUARANTINE_AFTER`] deadline hits in a row quarantine a function for 5 s; after
    /// it one probe runs while the others are still refused; a failed
    /// probe doubles the quarantine; an answer ends it and the count.
    #[test]
    fn hits_in_a_row_quarantine_and_a_probe_ends_or_doubles_it() {
        let h = Health::default();
        let t0 = Instant::now();
        let s = Duration::from_secs;
        assert_eq!(h.admit(t0, D), Ok(()));
        for _ in 1..QUARANTINE_AFTER {
            assert_eq!(h.deadline_hit(t0), Hit::Counted);
        }
        // An answer in between starts the count again.
        assert!(!h.answered());
        for _ in 1..QUARANTINE_AFTER {
            assert_eq!(h.deadline_hit(t0), Hit::Counted);
        }
        assert_eq!(h.admit(t0, D), Ok(()));
        assert_eq!(h.deadline_hit(t0), Hit::Quarantined(s(5)));
        assert_eq!(h.admit(t0 + s(1), D), Err(s(4)));
        // A call let in before, ending inside the quarantine, changes nothing.
        assert_eq!(h.deadline_hit(t0 + s(1)), Hit::Counted);
        // After it: one probe; the others are refused while it runs.
        assert_eq!(h.admit(t0 + s(5), D), Ok(()));
        assert_eq!(h.admit(t0 + s(5), D), Err(Duration::ZERO));
        assert_eq!(h.deadline_hit(t0 + s(5)), Hit::Quarantined(s(10)));
        assert!(h.admit(t0 + s(14), D).is_err());
        // A probe dropped without an answer is replaced after 2 deadlines.
        assert_eq!(h.admit(t0 + s(15), D), Ok(()));
        assert!(h.admit(t0 + s(15), D).is_err());
        assert_eq!(h.admit(t0 + s(15) + 2 * D, D), Ok(()));
        assert!(h.answered());
        assert_eq!(h.admit(t0 + s(15), D), Ok(()));
        assert_eq!(h.deadline_hit(t0 + s(16)), Hit::Counted);
        // The backoff is capped.
        let h = Health::default();
        let mut t = t0;
        for _ in 0..QUARANTINE_AFTER {
            h.deadline_hit(t);
        }
        let mut last = Duration::ZERO;
        for _ in 0..12 {
            t += MAX_QUARANTINE;
            h.admit(t, D).unwrap();
            match h.deadline_hit(t) {
                Hit::Quarantined(d) => last = d,
                Hit::Counted => panic!("a failed probe quarantines again"),
            }
        }
        assert_eq!(last, MAX_QUARANTINE);
    }

    /// A meter lets a tenant spend its burst at once, then holds it to
    /// its share: half a core spending 10 ms of CPU owes 20 ms of wall time.
    #[test]
    fn a_meter_allows_the_burst_then_the_share() {
        let ms = Duration::from_millis;
        let m = CpuMeter::new(CpuShare {
            cores: 0.5,
            burst: ms(50),
        });
        let t0 = Instant::now();
        m.charge(t0, ms(50));
        assert_eq!(m.over(t0), None, "the burst is allowed");
        m.charge(t0, ms(10));
        assert_eq!(m.over(t0), Some(ms(20)));
        assert_eq!(m.over(t0 + ms(20)), None);
        // Time spent idle is not saved up beyond the burst.
        let later = t0 + ms(10_000);
        m.charge(later, ms(60));
        assert_eq!(m.over(later), Some(ms(20)));
    }
}
