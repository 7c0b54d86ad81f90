//! Bounded work before authentication.
//!
//! A password check is argon2 by design: about 19 ms of CPU and 19 MiB of
//! memory each. Anyone who can open a connection can ask for one, so the
//! checks that really compute pass through an [`AuthGate`]:
//!
//! - **a bounded pool**: at most `auth_workers` checks at once (default: one
//!   per core), so their memory is at most `auth_workers` × (the hash's
//!   argon2 memory, capped at [`mailwit_runtime::MAX_ARGON2_KIB`], plus the
//!   tenant's instance memory), whatever arrives;
//! - **a bounded queue with a deadline**: at most `auth_queue` checks wait
//!   for the pool, each at most `auth_queue_timeout_secs`; beyond either the
//!   client gets `454 4.7.0` without a check, after [`BUSY_TARPIT`];
//! - **one check at a time per client address** (for SMTP logins,
//!   `one_per_address`): the others from that address wait for its turn,
//!   within the same `auth_queue_timeout_secs` as their wait for the pool
//!   (the two together), then `454 4.7.0`. Without it, the
//!   first attempts of a flood from one address all ran before the first
//!   failure was known: 200 connections from 10 addresses got 215 checks
//!   in 10 s, most in that first burst;
//! - **back-off per client address**: each failed login from an address
//!   delays that address's next check (250 ms, doubling per failure, at most
//!   a minute; forgotten after [`FORGET_AFTER`] without failures, or at a
//!   success), one check at a time; an address whose next turn is more than
//!   [`MAX_TARPIT`] away gets `421 4.7.0` (after [`BUSY_TARPIT`]) and is
//!   disconnected, like
//!   fail2ban inside the server.
//!
//! - **a lower CPU priority**: the checks run on the gate's own threads at
//!   `nice` [`CHECK_NICE`] ([`AuthGate::run`]), so while a flood keeps the
//!   pool busy the machine's cores still go first to sessions that are
//!   already logged in (the pool alone would let a flood take every core).
//!
//! Logins whose credentials the tenant's auth cache already verified skip
//! the gate entirely (see `policy::WasmPolicy::authenticate`), so they never
//! wait behind a flood. The status API's Basic authentication has a gate of
//! its own.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// The first failure's delay; each further failure doubles it.
const FIRST_DELAY: Duration = Duration::from_millis(250);
/// The longest delay between two checks from one address.
const MAX_DELAY: Duration = Duration::from_secs(60);
/// An address whose next turn is further away than this is refused at once
/// (`421 4.7.0`) rather than kept waiting.
pub const MAX_TARPIT: Duration = Duration::from_secs(10);
/// How long an SMTP client waits for its `454 4.7.0` when the checks are
/// busy, or for its `421 4.7.0` in back-off (the SMTP gate's
/// `refusal_hold`): a flood then asks at most once a second per
/// connection, instead of thousands of times, each a reply and a log line.
pub const BUSY_TARPIT: Duration = Duration::from_secs(1);
/// Failures are forgotten after this long without one.
pub const FORGET_AFTER: Duration = Duration::from_secs(600);
/// Addresses remembered at most; past this, the oldest half is forgotten.
const MAX_ADDRESSES: usize = 100_000;

/// The `nice` value of the threads that run the checks: the kernel then
/// gives them about a tenth of a core's time against ordinary threads when
/// both want it, and all of it when the machine is otherwise idle.
pub const CHECK_NICE: i32 = 10;

/// A job for a check thread.
type Job = Box<dyn FnOnce() + Send>;

/// The gate's check threads: `workers` of them, made on first use, each
/// at [`CHECK_NICE`] for its whole life (an unprivileged thread may lower
/// its priority but not raise it again, so they are kept apart from
/// tokio's blocking pool).
struct Checkers {
    jobs: std::sync::mpsc::Sender<Job>,
}

impl Checkers {
    fn start(workers: usize) -> Checkers {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..workers {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("auth-check-{i}"))
                .spawn(move || {
                    let tid = rustix::thread::gettid();
                    if let Err(e) = rustix::process::setpriority_process(Some(tid), CHECK_NICE) {
                        tracing::warn!(cause = %e, "could not lower the password checks' priority");
                    }
                    loop {
                        let job = rx.lock().expect("checkers lock").recv();
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(cause = %e, "could not start a password check thread");
            }
        }
        Checkers { jobs: tx }
    }
}

/// Why the gate would not let a check through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The pool and its queue are full, or the wait ran out: `454 4.7.0`.
    Busy,
    /// This address failed too often lately: `421 4.7.0`, and close.
    BackOff,
}

/// The gate's settings (`[limits] auth_*`).
#[derive(Debug, Clone, Copy)]
pub struct GateConfig {
    pub workers: usize,
    pub queue: usize,
    pub queue_timeout: Duration,
    /// How long a refusal is held before it is answered ([`BUSY_TARPIT`]
    /// for SMTP; none for the status API, whose `503` and `429` carry a
    /// `Retry-After`).
    pub refusal_hold: Duration,
    /// Whether checks from one address run one at a time (SMTP logins;
    /// not the status API, whose gate also bounds ordinary requests).
    pub one_per_address: bool,
}

/// The right to run one check: a place in the pool and, with
/// `one_per_address`, the address's turn. Both are given back when it is
/// dropped.
pub struct Pass {
    _pool: OwnedSemaphorePermit,
    _address: Option<AddressTurn>,
}

/// Each address with a check running or waiting: its one permit.
type Turns = Arc<Mutex<HashMap<IpAddr, Arc<Semaphore>>>>;

/// An address's turn; its entry is removed when no one holds or waits
/// for it, so the map holds only addresses with a check under way.
struct AddressTurn {
    ip: IpAddr,
    permit: Option<OwnedSemaphorePermit>,
    turns: Turns,
}

impl Drop for AddressTurn {
    fn drop(&mut self) {
        drop(self.permit.take());
        let mut turns = self.turns.lock().expect("turns lock");
        // Only the map's own reference left: no holder, no waiter (a
        // waiter clones it under this lock before waiting).
        if turns
            .get(&self.ip)
            .is_some_and(|s| Arc::strong_count(s) == 1)
        {
            turns.remove(&self.ip);
        }
    }
}

/// An address's recent failures.
struct Penalty {
    failures: u32,
    /// When its next check may start.
    next: Instant,
    last_failure: Instant,
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct GateStats {
    pub checks: AtomicU64,
    pub busy: AtomicU64,
    pub backoff: AtomicU64,
    pub delayed: AtomicU64,
}

pub struct AuthGate {
    pool: Arc<Semaphore>,
    checkers: std::sync::OnceLock<Checkers>,
    waiting: AtomicUsize,
    config: GateConfig,
    penalties: Mutex<HashMap<IpAddr, Penalty>>,
    turns: Turns,
    pub stats: GateStats,
}

/// Leaves the queue when dropped, however the wait ended.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl AuthGate {
    pub fn new(config: GateConfig) -> AuthGate {
        AuthGate {
            pool: Arc::new(Semaphore::new(config.workers.max(1))),
            checkers: std::sync::OnceLock::new(),
            waiting: AtomicUsize::new(0),
            config,
            penalties: Mutex::new(HashMap::new()),
            turns: Turns::default(),
            stats: GateStats::default(),
        }
    }

    /// Runs `check` on one of the gate's low-priority threads (holding a
    /// permit from [`AuthGate::enter`] keeps them at most `workers` busy).
    /// A panic in it is raised again here.
    pub async fn run<R: Send + 'static>(&self, check: impl FnOnce() -> R + Send + 'static) -> R {
        let checkers = self
            .checkers
            .get_or_init(|| Checkers::start(self.config.workers.max(1)));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(
                check,
            )));
        });
        let sent = checkers.jobs.send(job);
        match (sent, rx.await) {
            (Ok(()), Ok(Ok(r))) => r,
            (Ok(()), Ok(Err(panic))) => std::panic::resume_unwind(panic),
            _ => panic!("the password check threads are gone"),
        }
    }

    /// Waits for `ip`'s turn and a place in the pool; the pass is the
    /// right to run one check, until dropped. A refusal comes after the
    /// configured `refusal_hold`.
    pub async fn enter(&self, ip: IpAddr) -> Result<Pass, Refusal> {
        let entered = self.admit(ip).await;
        if entered.is_err() && !self.config.refusal_hold.is_zero() {
            tokio::time::sleep(self.config.refusal_hold).await;
        }
        entered
    }

    async fn admit(&self, ip: IpAddr) -> Result<Pass, Refusal> {
        // The queue's timeout bounds the waits for others together: the
        // address's turn, then the pool (the back-off is its own bound).
        let started = Instant::now();
        let address = match self.config.one_per_address {
            true => Some(self.address_turn(ip).await?),
            false => None,
        };
        let left = self.config.queue_timeout.saturating_sub(started.elapsed());
        let pool = self.place(ip, left).await?;
        Ok(Pass {
            _pool: pool,
            _address: address,
        })
    }

    /// Waits (at most the queue's timeout) until no other check from `ip`
    /// runs or waits before this one.
    async fn address_turn(&self, ip: IpAddr) -> Result<AddressTurn, Refusal> {
        let turn = self
            .turns
            .lock()
            .expect("turns lock")
            .entry(ip)
            .or_insert_with(|| Arc::new(Semaphore::new(1)))
            .clone();
        // Made before the wait, so that however the wait ends (a permit, the
        // timeout, the login's future dropped) its drop forgets an address
        // no one holds or waits for any more.
        let mut held = AddressTurn {
            ip,
            permit: None,
            turns: self.turns.clone(),
        };
        let waited = tokio::time::timeout(self.config.queue_timeout, turn.acquire_owned()).await;
        match waited {
            Ok(Ok(permit)) => {
                held.permit = Some(permit);
                Ok(held)
            }
            _ => {
                self.stats.busy.fetch_add(1, Ordering::Relaxed);
                Err(Refusal::Busy)
            }
        }
    }

    /// After `ip`'s back-off, a place in the pool, waiting at most `wait`
    /// for one.
    async fn place(&self, ip: IpAddr, wait: Duration) -> Result<OwnedSemaphorePermit, Refusal> {
        if let Some(at) = self.turn(ip, Instant::now())? {
            self.stats.delayed.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep_until(at).await;
        }
        if let Ok(permit) = self.pool.clone().try_acquire_owned() {
            self.stats.checks.fetch_add(1, Ordering::Relaxed);
            return Ok(permit);
        }
        if self.waiting.fetch_add(1, Ordering::Relaxed) >= self.config.queue {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            self.stats.busy.fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::Busy);
        }
        let _waiting = Waiting(&self.waiting);
        match tokio::time::timeout(wait, self.pool.clone().acquire_owned()).await {
            Ok(Ok(permit)) => {
                self.stats.checks.fetch_add(1, Ordering::Relaxed);
                Ok(permit)
            }
            _ => {
                self.stats.busy.fetch_add(1, Ordering::Relaxed);
                Err(Refusal::Busy)
            }
        }
    }

    /// When `ip` may run its next check: `None` for now; reserves the turn
    /// after it for the next attempt, so attempts from one address go one
    /// by one, a delay apart.
    fn turn(&self, ip: IpAddr, now: Instant) -> Result<Option<Instant>, Refusal> {
        let mut penalties = self.penalties.lock().expect("penalties lock");
        let Some(p) = penalties.get_mut(&ip) else {
            return Ok(None);
        };
        if now.duration_since(p.last_failure) > FORGET_AFTER {
            penalties.remove(&ip);
            return Ok(None);
        }
        let at = p.next.max(now);
        if at.duration_since(now) > MAX_TARPIT {
            self.stats.backoff.fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::BackOff);
        }
        p.next = at + delay(p.failures);
        Ok((at > now).then_some(at))
    }

    /// Records how a check from `ip` ended: a failure lengthens the
    /// address's back-off, a success forgets it.
    pub fn record(&self, ip: IpAddr, ok: bool) {
        let now = Instant::now();
        let mut penalties = self.penalties.lock().expect("penalties lock");
        if ok {
            penalties.remove(&ip);
            return;
        }
        if penalties.len() >= MAX_ADDRESSES && !penalties.contains_key(&ip) {
            forget_oldest(&mut penalties);
        }
        let p = penalties.entry(ip).or_insert(Penalty {
            failures: 0,
            next: now,
            last_failure: now,
        });
        p.failures = p.failures.saturating_add(1);
        p.last_failure = now;
        p.next = p.next.max(now + delay(p.failures));
    }

    /// Checks waiting for the pool now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Appends the gate's metrics, named `<prefix>_...`, in the Prometheus
    /// text format.
    pub fn render(&self, prefix: &str, out: &mut String) {
        use std::fmt::Write;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let s = &self.stats;
        let waiting = self.waiting() as u64;
        for (name, kind, samples) in [
            ("checks_total", "counter", vec![("", get(&s.checks))]),
            (
                "refused_total",
                "counter",
                vec![
                    ("{reason=\"busy\"}", get(&s.busy)),
                    ("{reason=\"backoff\"}", get(&s.backoff)),
                ],
            ),
            ("delayed_total", "counter", vec![("", get(&s.delayed))]),
            ("waiting", "gauge", vec![("", waiting)]),
        ] {
            let _ = writeln!(out, "# TYPE {prefix}_{name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{prefix}_{name}{labels} {value}");
            }
        }
    }
}

/// The delay after `failures` failures: 250 ms, doubling, at most a minute.
fn delay(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    (FIRST_DELAY * 2u32.pow(doublings)).min(MAX_DELAY)
}

/// Drops the half of the remembered addresses that failed longest ago, so
/// a flood from many addresses cannot grow the map without bound.
fn forget_oldest(penalties: &mut HashMap<IpAddr, Penalty>) {
    let mut ages: Vec<Instant> = penalties.values().map(|p| p.last_failure).collect();
    ages.sort_unstable();
    let cut = ages[ages.len() / 2];
    penalties.retain(|_, p| p.last_failure > cut);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(workers: usize, queue: usize) -> AuthGate {
        AuthGate::new(GateConfig {
            workers,
            queue,
            queue_timeout: Duration::from_secs(5),
            refusal_hold: Duration::ZERO,
            one_per_address: true,
        })
    }

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 3));
    const C: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 4));

    #[test]
    fn delays_double_up_to_a_minute() {
        assert_eq!(delay(1), Duration::from_millis(250));
        assert_eq!(delay(2), Duration::from_millis(500));
        assert_eq!(delay(5), Duration::from_secs(4));
        assert_eq!(delay(9), Duration::from_secs(60));
        assert_eq!(delay(u32::MAX), Duration::from_secs(60));
    }

    #[test]
    fn failures_space_out_an_address_and_spare_the_others() {
        let g = gate(1, 8);
        let now = Instant::now();
        assert_eq!(g.turn(A, now), Ok(None));
        g.record(A, false);
        g.record(A, false);
        // Two failures: A's next check waits 500 ms, and the one after it
        // another 500 ms; B is not affected.
        let first = g.turn(A, Instant::now()).unwrap().expect("a delay");
        let second = g.turn(A, Instant::now()).unwrap().expect("a delay");
        assert!(second >= first + Duration::from_millis(500));
        assert_eq!(g.turn(B, Instant::now()), Ok(None));
        // A success forgets A's failures.
        g.record(A, true);
        assert_eq!(g.turn(A, Instant::now()), Ok(None));
    }

    #[test]
    fn an_address_far_behind_is_refused_at_once() {
        let g = gate(1, 8);
        for _ in 0..8 {
            g.record(A, false);
        }
        // Its next turn is 32 s away: over the tarpit limit.
        assert_eq!(g.turn(A, Instant::now()), Err(Refusal::BackOff));
        assert_eq!(g.stats.backoff.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn the_pool_and_its_queue_are_bounded() {
        let g = Arc::new(gate(1, 1));
        let held = g.enter(A).await.unwrap();
        // One waits in the queue...
        let g2 = g.clone();
        let waiter = tokio::spawn(async move { g2.enter(B).await.map(drop) });
        while g.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        // ...the next (from a third address: one from B would wait for
        // B's turn first) is refused without waiting.
        assert_eq!(g.enter(C).await.map(drop), Err(Refusal::Busy));
        drop(held);
        assert_eq!(waiter.await.unwrap(), Ok(()));
        assert_eq!(g.waiting(), 0);
    }

    /// A second check from an address waits for the first to end, beside
    /// another address's; the address is forgotten when none is left.
    #[tokio::test]
    async fn an_address_runs_one_check_at_a_time() {
        let g = Arc::new(gate(2, 8));
        let first = g.enter(A).await.unwrap();
        let g2 = g.clone();
        let second = tokio::spawn(async move { g2.enter(A).await.map(drop) });
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!second.is_finished(), "two checks from one address at once");
        // The pool's other place serves another address meanwhile.
        drop(g.enter(B).await.unwrap());
        drop(first);
        assert_eq!(second.await.unwrap(), Ok(()));
        assert!(g.turns.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn without_a_queue_a_free_place_is_still_taken() {
        let g = gate(1, 0);
        let held = g.enter(A).await.unwrap();
        assert_eq!(g.enter(B).await.map(drop), Err(Refusal::Busy));
        drop(held);
        assert!(g.enter(B).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_that_runs_out_is_busy() {
        let g = gate(1, 4);
        let _held = g.enter(A).await.unwrap();
        assert_eq!(g.enter(B).await.map(drop), Err(Refusal::Busy));
        assert_eq!(g.waiting(), 0);
    }

    #[test]
    fn the_map_of_addresses_is_bounded() {
        let g = gate(1, 1);
        let mut p = g.penalties.lock().unwrap();
        let now = Instant::now();
        for i in 0..10u32 {
            p.insert(
                IpAddr::V4(i.into()),
                Penalty {
                    failures: 1,
                    next: now,
                    last_failure: now + Duration::from_secs(i.into()),
                },
            );
        }
        forget_oldest(&mut p);
        assert_eq!(p.len(), 4);
        assert!(p.contains_key(&IpAddr::V4(9.into())));
    }
}
