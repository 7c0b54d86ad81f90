//! The memory ceiling for message content in flight.
//!
//! A session holds its message in memory from the first DATA octet until
//! the spool has it, and delivery holds it again while it signs and sends
//! it. Left alone, many sessions with large messages exhaust the machine.
//! So every large message reserves its bytes first, from the whole server's
//! budget and from its tenant's ([`ContentBudget`]):
//!
//! - the first [`SMALL`] octets of each message are free: a message that
//!   small never waits (the common case, and the bound on what the free
//!   parts can add up to is `max_connections` × [`SMALL`]);
//! - a message that grows past them stops being read until it holds a
//!   reservation for its whole possible size, all at once (never a part, so
//!   two half-reserved messages can never wait on each other forever);
//! - a reservation that cannot be had within the wait answers the message
//!   `452 4.3.1` once its end arrives (the rest is read and dropped).
//!
//! The reservation is released when the message's bytes are freed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Octets of a message held without a reservation.
pub const SMALL: usize = 64 * 1024;

/// The budget's settings (`[content]`).
#[derive(Debug, Clone, Copy)]
pub struct BudgetConfig {
    pub total_bytes: usize,
    pub per_tenant_bytes: usize,
    pub wait: Duration,
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct BudgetStats {
    pub reserved: AtomicU64,
    pub waited: AtomicU64,
    pub refused: AtomicU64,
}

pub struct ContentBudget {
    total: Arc<Semaphore>,
    config: BudgetConfig,
    tenants: Mutex<HashMap<String, Arc<Semaphore>>>,
    pub stats: BudgetStats,
}

/// Bytes reserved from both budgets; given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    _tenant: OwnedSemaphorePermit,
    _total: OwnedSemaphorePermit,
    bytes: usize,
}

impl Reservation {
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// Why no reservation was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// More than either budget could ever give.
    TooLarge,
    /// Not free within the wait.
    Busy,
}

/// Semaphore permits count KiB, so that a reservation fits `u32`.
fn units(bytes: usize) -> u32 {
    u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX)
}

impl ContentBudget {
    pub fn new(config: BudgetConfig) -> ContentBudget {
        ContentBudget {
            total: Arc::new(Semaphore::new(units(config.total_bytes) as usize)),
            config,
            tenants: Mutex::new(HashMap::new()),
            stats: BudgetStats::default(),
        }
    }

    fn tenant(&self, tenant: &str) -> Arc<Semaphore> {
        self.tenants
            .lock()
            .expect("budget lock")
            .entry(tenant.to_string())
            .or_insert_with(|| {
                Arc::new(Semaphore::new(units(self.config.per_tenant_bytes) as usize))
            })
            .clone()
    }

    /// Reserves `bytes` for `tenant`, waiting at most the configured time.
    pub async fn reserve(&self, tenant: &str, bytes: usize) -> Result<Reservation, Refused> {
        let n = units(bytes);
        if n as usize > units(self.config.total_bytes) as usize
            || n as usize > units(self.config.per_tenant_bytes) as usize
        {
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
            return Err(Refused::TooLarge);
        }
        let tenant_sem = self.tenant(tenant);
        // Fast path: both free now.
        if let Ok(t) = tenant_sem.clone().try_acquire_many_owned(n) {
            if let Ok(all) = self.total.clone().try_acquire_many_owned(n) {
                self.stats.reserved.fetch_add(1, Ordering::Relaxed);
                return Ok(Reservation {
                    _tenant: t,
                    _total: all,
                    bytes,
                });
            }
            drop(t);
        }
        self.stats.waited.fetch_add(1, Ordering::Relaxed);
        // The tenant's first, then the server's: always in this order, and
        // each all at once, so holders never wait on each other in a cycle.
        let got = tokio::time::timeout(self.config.wait, async {
            let t = tenant_sem.acquire_many_owned(n).await.ok()?;
            let all = self.total.clone().acquire_many_owned(n).await.ok()?;
            Some((t, all))
        })
        .await;
        match got {
            Ok(Some((t, all))) => {
                self.stats.reserved.fetch_add(1, Ordering::Relaxed);
                Ok(Reservation {
                    _tenant: t,
                    _total: all,
                    bytes,
                })
            }
            _ => {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                Err(Refused::Busy)
            }
        }
    }

    /// Octets reserved now, server-wide.
    pub fn in_use(&self) -> usize {
        let free = self.total.available_permits();
        (units(self.config.total_bytes) as usize).saturating_sub(free) * 1024
    }

    /// Appends the budget's metrics in the Prometheus text format.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let s = &self.stats;
        for (name, kind, value) in [
            ("reservations_total", "counter", get(&s.reserved)),
            ("waits_total", "counter", get(&s.waited)),
            ("refused_total", "counter", get(&s.refused)),
            ("reserved_bytes", "gauge", self.in_use() as u64),
        ] {
            let _ = writeln!(
                out,
                "# TYPE mailwit_content_{name} {kind}\nmailwit_content_{name} {value}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(total: usize, per_tenant: usize) -> ContentBudget {
        ContentBudget::new(BudgetConfig {
            total_bytes: total,
            per_tenant_bytes: per_tenant,
            wait: Duration::from_secs(5),
        })
    }

    #[tokio::test]
    async fn reservations_are_bounded_server_wide_and_per_tenant() {
        let b = budget(10 << 20, 6 << 20);
        let a1 = b.reserve("a", 4 << 20).await.unwrap();
        // The tenant has 2 MiB left, the server 6.
        let b1 = b.reserve("b", 6 << 20).await.unwrap();
        assert_eq!(b.in_use(), 10 << 20);
        drop(a1);
        let a2 = b.reserve("a", 4 << 20).await.unwrap();
        drop((a2, b1));
        assert_eq!(b.in_use(), 0);
        assert_eq!(b.stats.reserved.load(Ordering::Relaxed), 3);
    }

    #[tokio::test]
    async fn more_than_a_budget_can_give_is_refused_at_once() {
        let b = budget(10 << 20, 6 << 20);
        assert_eq!(
            b.reserve("a", 7 << 20).await.map(drop),
            Err(Refused::TooLarge)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_reservation_not_free_in_time_is_busy() {
        let b = budget(10 << 20, 10 << 20);
        let held = b.reserve("a", 8 << 20).await.unwrap();
        assert_eq!(b.reserve("b", 4 << 20).await.map(drop), Err(Refused::Busy));
        // Nothing was kept by the refused one.
        drop(held);
        assert_eq!(b.in_use(), 0);
    }

    #[tokio::test]
    async fn a_waiting_reservation_gets_what_is_given_back() {
        let b = Arc::new(budget(10 << 20, 10 << 20));
        let held = b.reserve("a", 8 << 20).await.unwrap();
        let b2 = b.clone();
        let waiter = tokio::spawn(async move { b2.reserve("b", 4 << 20).await.map(|r| r.bytes()) });
        tokio::task::yield_now().await;
        drop(held);
        assert_eq!(waiter.await.unwrap(), Ok(4 << 20));
        assert_eq!(b.stats.waited.load(Ordering::Relaxed), 1);
    }
}
