//! Per-tenant limits, set by the operator, and the counters that enforce
//! them on this host.
//!
//! | limit | checked at | reply over it |
//! |---|---|---|
//! | `sessions` (authenticated, at once) | AUTH | `454 4.7.0` |
//! | `messages_per_second` (token bucket, `burst` deep) | MAIL | `451 4.7.1` |
//! | `messages_per_day` (UTC day) | MAIL | `452 4.3.1` (temporary: the mail can go tomorrow) |
//! | `recipients_per_message` | RCPT | `452 4.5.3` (RFC 5321's "too many recipients") |
//! | `message_size` (bytes) | MAIL `SIZE=`, end of DATA | `552 5.3.4` |
//!
//! A message takes its token and its place in the day's count at MAIL (so
//! sessions at once cannot all pass a check and then all be accepted);
//! a transaction that ends without `250` (refused, replaced by the next
//! MAIL after RSET, its session gone) gives them back. So the counters
//! are exact on one host. In a cluster each host counts for itself (a
//! tenant can send up to the limit through each host): shared counters
//! are left to the cluster's next step.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use mailwit_smtp::{Reply, Status};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// A tenant's limits; a missing one is no limit. (Also the flags of
/// `mailwit tenant limits set`.)
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct TenantLimits {
    /// Messages per second (a token bucket).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages_per_second: Option<f64>,
    /// The bucket's depth: messages that may go at once after a quiet
    /// spell (by default one second's worth, at least one).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// Messages per UTC day.
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages_per_day: Option<u64>,
    /// Authenticated sessions at once.
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sessions: Option<u32>,
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipients_per_message: Option<u32>,
    /// Bytes.
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_size: Option<u64>,
}

impl TenantLimits {
    /// The mistakes an operator could make, said plainly.
    pub fn check(&self) -> Result<(), String> {
        if let Some(r) = self.messages_per_second
            && !(r.is_finite() && r > 0.0)
        {
            return Err("messages_per_second must be a positive number".into());
        }
        if self.burst == Some(0) {
            return Err("burst must be at least 1".into());
        }
        Ok(())
    }

    fn depth(&self, rate: f64) -> f64 {
        self.burst.map(f64::from).unwrap_or(rate.max(1.0))
    }
}

/// Which limit refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Sessions,
    Rate,
    Daily,
    Recipients,
    Size,
}

impl Limit {
    pub fn name(self) -> &'static str {
        match self {
            Limit::Sessions => "sessions",
            Limit::Rate => "messages_per_second",
            Limit::Daily => "messages_per_day",
            Limit::Recipients => "recipients_per_message",
            Limit::Size => "message_size",
        }
    }

    pub fn reply(self) -> Reply {
        match self {
            Limit::Sessions => Reply::new(
                454,
                Status(4, 7, 0),
                "Too many concurrent sessions for this account, try again later",
            ),
            Limit::Rate => Reply::new(
                451,
                Status(4, 7, 1),
                "Message rate limit exceeded for this account, try again later",
            ),
            Limit::Daily => Reply::new(
                452,
                Status(4, 3, 1),
                "Daily message quota exceeded for this account",
            ),
            Limit::Recipients => {
                Reply::new(452, Status(4, 5, 3), "Too many recipients for this account")
            }
            Limit::Size => Reply::new(
                552,
                Status(5, 3, 4),
                "Message size exceeds this account's limit",
            ),
        }
    }
}

#[derive(Debug)]
struct Counters {
    tokens: f64,
    refilled: Instant,
    /// Days since the epoch (UTC) that `today` counts.
    day: u64,
    today: u64,
    second: u64,
    this_second: u64,
    sessions: u32,
}

/// What a tenant has used, as a component or the tenant reads it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Used {
    pub messages_this_second: u64,
    pub messages_today: u64,
    pub sessions: u32,
}

/// Every tenant's limits and counters on this host.
#[derive(Default)]
pub struct Usage {
    counters: Mutex<HashMap<String, Counters>>,
    /// Set by [`crate::tenants`] as each tenant's state is loaded.
    limits: std::sync::RwLock<HashMap<String, TenantLimits>>,
}

fn epoch_secs() -> u64 {
    crate::wallclock::now_ms() / 1000
}

impl Usage {
    pub fn new() -> Arc<Usage> {
        Arc::default()
    }

    /// A tenant's limits.
    pub fn limits(&self, tenant: &str) -> TenantLimits {
        self.limits
            .read()
            .expect("limits lock")
            .get(tenant)
            .copied()
            .unwrap_or_default()
    }

    pub fn set_limits(&self, tenant: &str, limits: TenantLimits) {
        self.limits
            .write()
            .expect("limits lock")
            .insert(tenant.to_string(), limits);
    }

    fn with<R>(&self, tenant: &str, f: impl FnOnce(&mut Counters) -> R) -> R {
        let mut all = self.counters.lock().expect("usage lock");
        let c = match all.get_mut(tenant) {
            Some(c) => c,
            None => all.entry(tenant.to_string()).or_insert(Counters {
                tokens: f64::INFINITY,
                refilled: Instant::now(),
                day: 0,
                today: 0,
                second: 0,
                this_second: 0,
                sessions: 0,
            }),
        };
        let now = epoch_secs();
        if c.day != now / 86_400 {
            c.day = now / 86_400;
            c.today = 0;
        }
        if c.second != now {
            c.second = now;
            c.this_second = 0;
        }
        f(c)
    }

    /// A session authenticated: its place, given back when the slot drops.
    pub fn open_session(self: &Arc<Self>, tenant: &str) -> Result<SessionSlot, Limit> {
        let limits = self.limits(tenant);
        let ok = self.with(tenant, |c| {
            let ok = limits.sessions.is_none_or(|max| c.sessions < max);
            if ok {
                c.sessions += 1;
            }
            ok
        });
        match ok {
            true => Ok(SessionSlot {
                usage: self.clone(),
                tenant: tenant.to_string(),
            }),
            false => Err(Limit::Sessions),
        }
    }

    /// A message begins (MAIL): its token and its place in today's count,
    /// given back unless [`Reservation::keep`] is called.
    pub fn reserve(
        self: &Arc<Self>,
        tenant: &str,
        limits: &TenantLimits,
    ) -> Result<Reservation, Limit> {
        let outcome = self.with(tenant, |c| {
            if limits.messages_per_day.is_some_and(|max| c.today >= max) {
                return Err(Limit::Daily);
            }
            let mut took_token = false;
            if let Some(rate) = limits.messages_per_second {
                let depth = limits.depth(rate);
                let now = Instant::now();
                let refill = now.duration_since(c.refilled).as_secs_f64() * rate;
                c.tokens = (c.tokens + refill).min(depth);
                c.refilled = now;
                if c.tokens < 1.0 {
                    return Err(Limit::Rate);
                }
                c.tokens -= 1.0;
                took_token = true;
            }
            c.today += 1;
            c.this_second += 1;
            Ok(took_token)
        });
        match outcome {
            Ok(took_token) => Ok(Reservation {
                usage: self.clone(),
                tenant: tenant.to_string(),
                took_token,
                kept: false,
            }),
            Err(limit) => Err(limit),
        }
    }

    /// A tenant's counters now.
    pub fn used(&self, tenant: &str) -> Used {
        self.with(tenant, |c| Used {
            messages_this_second: c.this_second,
            messages_today: c.today,
            sessions: c.sessions,
        })
    }

    /// Forgets a tenant (it was deleted).
    pub fn forget(&self, tenant: &str) {
        self.counters.lock().expect("usage lock").remove(tenant);
        self.limits.write().expect("limits lock").remove(tenant);
    }
}

/// One tenant's counters, for `host.current-usage` (read when a component asks).
#[derive(Clone)]
pub struct TenantUsage {
    pub usage: Arc<Usage>,
    pub tenant: String,
}

impl std::fmt::Debug for TenantUsage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TenantUsage({})", self.tenant)
    }
}

impl mailwit_runtime::UsageSource for TenantUsage {
    fn usage(&self) -> mailwit_runtime::Usage {
        let u = self.usage.used(&self.tenant);
        mailwit_runtime::Usage {
            messages_this_second: u.messages_this_second,
            messages_today: u.messages_today,
            sessions: u.sessions,
        }
    }
}

/// An authenticated session's place under its tenant's `sessions` limit.
pub struct SessionSlot {
    usage: Arc<Usage>,
    tenant: String,
}

impl std::fmt::Debug for SessionSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SessionSlot({})", self.tenant)
    }
}

impl std::fmt::Debug for Reservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Reservation({})", self.tenant)
    }
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        self.usage
            .with(&self.tenant, |c| c.sessions = c.sessions.saturating_sub(1));
    }
}

/// A message's token and place in the day, until it is queued.
pub struct Reservation {
    usage: Arc<Usage>,
    tenant: String,
    took_token: bool,
    kept: bool,
}

impl Reservation {
    /// The message was queued: it counts.
    pub fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        let took_token = self.took_token;
        self.usage.with(&self.tenant, |c| {
            c.today = c.today.saturating_sub(1);
            c.this_second = c.this_second.saturating_sub(1);
            if took_token {
                c.tokens += 1.0;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(limits: TenantLimits) -> Arc<Usage> {
        let u = Usage::new();
        u.set_limits("t", limits);
        u.set_limits("other", limits);
        u
    }

    #[tokio::test(start_paused = true)]
    async fn the_bucket_lets_a_burst_through_then_refills_at_the_rate() {
        let u = usage(TenantLimits {
            messages_per_second: Some(2.0),
            burst: Some(3),
            ..TenantLimits::default()
        });
        let kept: Vec<_> = (0..3)
            .map(|_| u.reserve("t", &u.limits("t")).unwrap())
            .collect();
        let refused = u.reserve("t", &u.limits("t")).unwrap_err().reply();
        assert_eq!((refused.code, refused.status), (451, Some(Status(4, 7, 1))));
        kept.into_iter().for_each(Reservation::keep);
        // Half a second at 2/s: one more token.
        tokio::time::advance(std::time::Duration::from_millis(500)).await;
        u.reserve("t", &u.limits("t")).unwrap().keep();
        assert!(u.reserve("t", &u.limits("t")).is_err());
        // A transaction that ends without 250 gives its token back.
        tokio::time::advance(std::time::Duration::from_millis(500)).await;
        drop(u.reserve("t", &u.limits("t")).unwrap());
        u.reserve("t", &u.limits("t")).unwrap().keep();
        assert!(u.reserve("t", &u.limits("t")).is_err());
        // Another tenant has a bucket of its own.
        u.reserve("other", &u.limits("other")).unwrap().keep();
    }

    #[tokio::test]
    async fn the_day_quota_counts_only_queued_messages() {
        let u = usage(TenantLimits {
            messages_per_day: Some(2),
            ..TenantLimits::default()
        });
        u.reserve("t", &u.limits("t")).unwrap().keep();
        let open = u.reserve("t", &u.limits("t")).unwrap();
        let refused = u.reserve("t", &u.limits("t")).unwrap_err().reply();
        assert_eq!((refused.code, refused.status), (452, Some(Status(4, 3, 1))));
        drop(open);
        assert_eq!(u.used("t").messages_today, 1);
        u.reserve("t", &u.limits("t")).unwrap().keep();
        assert_eq!(u.used("t").messages_today, 2);
        assert!(u.reserve("t", &u.limits("t")).is_err());
    }

    #[tokio::test]
    async fn sessions_are_counted_while_open() {
        let u = usage(TenantLimits {
            sessions: Some(1),
            ..TenantLimits::default()
        });
        let one = u.open_session("t").unwrap();
        assert_eq!(u.used("t").sessions, 1);
        let refused = u.open_session("t").unwrap_err().reply();
        assert_eq!((refused.code, refused.status), (454, Some(Status(4, 7, 0))));
        drop(one);
        assert!(u.open_session("t").is_ok());
        assert!(TenantLimits::default().check().is_ok());
        let bad = TenantLimits {
            messages_per_second: Some(-1.0),
            ..TenantLimits::default()
        };
        assert!(bad.check().is_err());
    }
}
