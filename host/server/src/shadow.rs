//! Shadow deploys: a candidate version of one of a tenant's functions runs
//! beside the live set, on the same inputs, after each live decision and
//! off the reply path. It never changes a reply, a route or a header: its
//! answers are only compared with the live ones, and the differences are
//! counted by kind, with a bounded sample of each.
//!
//! The shadow set is the live set with the candidate in the function's
//! place (or added at the end, for a new function), so a difference is
//! what a client would have seen. Only the decisions that the candidate or
//! the function it replaces answers are run again. Shadow work is bounded:
//! a share of the transactions (`[runtime] shadow_share`), at most
//! [`MAX_IN_FLIGHT`] comparisons at once per tenant (others are counted as
//! skipped), and its calls are metered as a tenant of their own
//! (`<tenant>~shadow`), so a looping candidate spends its own CPU share
//! and is quarantined like any function, and the live calls never wait for
//! it. One shadow per tenant; it lives in this host's memory (a restart
//! ends it, and each host of a cluster keeps its own).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use mailwit_runtime::{Decision, Failure, Function, Inspection, PolicySet, Route};
use mailwit_smtp::Reply;

/// Comparisons of one shadow running at once; more are skipped.
pub const MAX_IN_FLIGHT: usize = 8;
/// Samples kept of each kind of difference.
pub const SAMPLES_PER_KIND: usize = 10;

/// Every tenant's shadow, if any.
pub struct Shadows {
    by_tenant: RwLock<HashMap<String, Arc<Shadow>>>,
    /// Every `every`-th transaction is compared.
    every: u64,
}

/// One candidate and what it found.
pub struct Shadow {
    pub tenant: String,
    pub function: String,
    candidate: Arc<Function>,
    /// The candidate's component, for `promote` (an ordinary deploy).
    pub bytes: Vec<u8>,
    since_ms: u64,
    /// The shadow set of the live set's generation, rebuilt when it changes.
    set: Mutex<Option<Arc<PolicySet>>>,
    seen: AtomicU64,
    in_flight: AtomicUsize,
    report: Mutex<Report>,
}

#[derive(Default)]
struct Report {
    compared: u64,
    identical: u64,
    skipped: u64,
    differences: BTreeMap<String, u64>,
    samples: BTreeMap<String, Vec<serde_json::Value>>,
    failures: BTreeMap<String, u64>,
}

/// A transaction chosen for comparison: its shadow, the shadow set, and an
/// id for its samples.
#[derive(Clone)]
pub struct Run {
    pub shadow: Arc<Shadow>,
    pub set: Arc<PolicySet>,
    pub txn: Arc<str>,
}

impl Shadows {
    /// Compares `share` (0 to 1) of the transactions of a tenant in shadow.
    pub fn new(share: f64) -> Shadows {
        let every = match share {
            s if s > 0.0 => (1.0 / s.min(1.0)).round() as u64,
            _ => u64::MAX,
        };
        Shadows {
            by_tenant: RwLock::default(),
            every,
        }
    }

    /// Starts (or replaces) `tenant`'s shadow: `candidate`, loaded from
    /// `bytes`, in the place of `function`.
    pub fn start(&self, tenant: &str, function: &str, candidate: Function, bytes: Vec<u8>) {
        let shadow = Arc::new(Shadow {
            tenant: tenant.to_string(),
            function: function.to_string(),
            candidate: Arc::new(candidate),
            bytes,
            since_ms: crate::wallclock::now_ms(),
            set: Mutex::default(),
            seen: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            report: Mutex::default(),
        });
        self.by_tenant
            .write()
            .expect("shadows lock")
            .insert(tenant.to_string(), shadow);
        tracing::info!(event = "shadow.started", tenant, function);
    }

    pub fn get(&self, tenant: &str) -> Option<Arc<Shadow>> {
        self.by_tenant
            .read()
            .expect("shadows lock")
            .get(tenant)
            .cloned()
    }

    /// Ends `tenant`'s shadow; it, if there was one.
    pub fn stop(&self, tenant: &str) -> Option<Arc<Shadow>> {
        let gone = self.by_tenant.write().expect("shadows lock").remove(tenant);
        if gone.is_some() {
            tracing::info!(event = "shadow.stopped", tenant);
        }
        gone
    }

    /// Whether this transaction of `live`'s tenant is compared: a [`Run`]
    /// when its tenant has a shadow and its turn has come.
    pub fn pick(&self, live: &Arc<PolicySet>) -> Option<Run> {
        let map = self.by_tenant.read().expect("shadows lock");
        if map.is_empty() {
            return None;
        }
        let shadow = map.get(&*live.tenant)?.clone();
        drop(map);
        if shadow.seen.fetch_add(1, Ordering::Relaxed) % self.every != 0 {
            return None;
        }
        Some(Run {
            set: shadow.set_for(live),
            txn: Arc::from(ulid::Ulid::new().to_string()),
            shadow,
        })
    }
}

impl Shadow {
    /// The live set with the candidate in its function's place (cached
    /// per generation of the live set).
    fn set_for(&self, live: &Arc<PolicySet>) -> Arc<PolicySet> {
        let mut cached = self.set.lock().expect("shadow lock");
        if let Some(s) = cached.as_ref().filter(|s| s.generation == live.generation) {
            return s.clone();
        }
        let set = with_candidate(live, &self.candidate, &self.function, "~shadow");
        *cached = Some(set.clone());
        set
    }

    /// Whether the shadow set answers `decision` differently from `live`:
    /// the candidate or the live function it replaces answers it.
    pub fn concerns(&self, live: &PolicySet, decision: &str) -> bool {
        self.candidate.answers(decision)
            || live
                .functions
                .iter()
                .any(|f| f.name == self.function && f.answers(decision))
    }

    /// Runs `compare` off the reply path, unless [`MAX_IN_FLIGHT`] are
    /// running (then it is counted as skipped).
    pub fn spawn(self: &Arc<Self>, compare: impl Future<Output = ()> + Send + 'static) {
        if self.in_flight.fetch_add(1, Ordering::Relaxed) >= MAX_IN_FLIGHT {
            self.in_flight.fetch_sub(1, Ordering::Relaxed);
            self.report.lock().expect("shadow lock").skipped += 1;
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            compare.await;
            me.in_flight.fetch_sub(1, Ordering::Relaxed);
        });
    }

    /// Records one comparison of `decision` in transaction `txn`: the live
    /// outcome, and the shadow's (or how it failed). `about` says what the
    /// transaction was (sender, recipient) for the samples.
    pub fn record(
        &self,
        txn: &str,
        decision: &str,
        about: &str,
        live: &Outcome,
        shadow: Result<Outcome, Failure>,
    ) {
        let mut r = self.report.lock().expect("shadow lock");
        r.compared += 1;
        let shadow = match shadow {
            Ok(s) => s,
            Err(f) => {
                *r.failures.entry(f.kind.label().to_string()).or_default() += 1;
                return;
            }
        };
        let kinds = live.differences(&shadow);
        if kinds.is_empty() {
            r.identical += 1;
            return;
        }
        for what in kinds {
            let kind = format!("{decision}: {what}");
            *r.differences.entry(kind.clone()).or_default() += 1;
            let samples = r.samples.entry(kind).or_default();
            if samples.len() < SAMPLES_PER_KIND {
                samples.push(serde_json::json!({
                    "transaction": txn,
                    "about": about,
                    "live": live.to_string(),
                    "shadow": shadow.to_string(),
                }));
            }
        }
    }

    /// The report, as the admin API shows it.
    pub fn report(&self, every: u64) -> serde_json::Value {
        let r = self.report.lock().expect("shadow lock");
        serde_json::json!({
            "tenant": self.tenant,
            "function": self.function,
            "candidate_digest": self.candidate.digest,
            "candidate_exports": self.candidate.export_names(),
            "since_ms": self.since_ms,
            "compared_every": every,
            "transactions_seen": self.seen.load(Ordering::Relaxed),
            "decisions_compared": r.compared,
            "identical": r.identical,
            "skipped": r.skipped,
            "differences": r.differences,
            "samples": r.samples,
            "failures": r.failures,
        })
    }
}

/// `live` with `candidate` in the place of its function `name` (or added
/// at the end), under the tenant name `<tenant><suffix>`: its calls are
/// metered and warmed apart from the live ones.
pub fn with_candidate(
    live: &PolicySet,
    candidate: &Arc<Function>,
    name: &str,
    suffix: &str,
) -> Arc<PolicySet> {
    let mut functions = live.functions.clone();
    match functions.iter().position(|f| f.name == name) {
        Some(i) => functions[i] = candidate.clone(),
        None => functions.push(candidate.clone()),
    }
    Arc::new(PolicySet {
        tenant: Arc::from(format!("{}{suffix}", live.tenant)),
        generation: live.generation,
        functions,
        rules: live.rules.clone(),
        rules_version: live.rules_version,
        limits: live.limits,
        label: std::sync::OnceLock::new(),
    })
}

impl Shadows {
    /// `tenant`'s report, if it has a shadow.
    pub fn report(&self, tenant: &str) -> Option<serde_json::Value> {
        self.get(tenant).map(|s| s.report(self.every))
    }
}

/// What one decision came to, as a client would see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Accepted,
    Refused(u16, String),
    Inspected(Inspection),
    Routed(Route),
}

impl Outcome {
    /// A live decision's result.
    pub fn of_reply<T>(r: &Result<T, Reply>, accepted: impl FnOnce(&T) -> Outcome) -> Outcome {
        match r {
            Ok(v) => accepted(v),
            Err(reply) => Outcome::Refused(reply.code, wire(reply)),
        }
    }

    /// A shadow call's result, its refusal validated as the live path
    /// validates it.
    pub fn of_decision<T>(
        d: Result<Decision<T>, Failure>,
        accepted: impl FnOnce(T) -> Outcome,
    ) -> Result<Outcome, Failure> {
        Ok(match d? {
            Decision::Accept(v) => accepted(v),
            Decision::Refuse(r) => match Reply::from_component(r.code, &r.status, &r.text) {
                Ok(reply) => Outcome::Refused(reply.code, wire(&reply)),
                Err(_) => Outcome::Refused(451, "451 4.3.0 (an invalid reply)".into()),
            },
            Decision::Unanswered => Outcome::Refused(535, "535 5.7.8 (unanswered)".into()),
        })
    }

    /// The kinds of difference between two outcomes of one decision.
    pub fn differences(&self, other: &Outcome) -> Vec<&'static str> {
        use Outcome::*;
        match (self, other) {
            (a, b) if a == b => Vec::new(),
            (Refused(a, _), Refused(b, _)) if a == b => vec!["reply text"],
            (Refused(..), Refused(..)) => vec!["reply code"],
            (Inspected(a), Inspected(b)) => {
                let mut v = Vec::new();
                if a.metadata != b.metadata {
                    v.push("metadata");
                }
                if a.remove_headers != b.remove_headers {
                    v.push("removed headers");
                }
                v
            }
            (Routed(_), Routed(_)) => vec!["route"],
            _ => vec!["decision"],
        }
    }
}

/// A reply as the client reads it, on one line.
fn wire(reply: &Reply) -> String {
    reply.to_wire().trim_end().replace("\r\n", " / ")
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Accepted => f.write_str("accepted"),
            Outcome::Refused(_, text) => f.write_str(text),
            Outcome::Inspected(i) => write!(
                f,
                "metadata {:?}, removed headers {:?}",
                i.metadata, i.remove_headers
            ),
            Outcome::Routed(r) => write!(f, "route {r}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each kind of difference is named; equal outcomes have none.
    #[test]
    fn differences_are_named_by_kind() {
        use Outcome::*;
        let refused = |code, text: &str| Refused(code, text.into());
        let inspected = |m: &[(&str, &str)], h: &[&str]| {
            Inspected(Inspection {
                metadata: m
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                remove_headers: h.iter().map(|s| s.to_string()).collect(),
            })
        };
        assert!(Accepted.differences(&Accepted).is_empty());
        assert_eq!(
            Accepted.differences(&refused(550, "550 5.7.1 no")),
            ["decision"]
        );
        assert_eq!(
            refused(550, "550 5.7.1 no").differences(&refused(550, "550 5.7.1 never")),
            ["reply text"]
        );
        assert_eq!(
            refused(550, "550 5.7.1 no").differences(&refused(451, "451 4.7.1 no")),
            ["reply code"]
        );
        assert_eq!(
            inspected(&[("a", "1")], &["X-A"]).differences(&inspected(&[("a", "2")], &["X-B"])),
            ["metadata", "removed headers"]
        );
        assert_eq!(
            Routed(Route::Discard).differences(&Routed(Route::Sandbox)),
            ["route"]
        );
        assert!(
            Routed(Route::Sandbox)
                .differences(&Routed(Route::Sandbox))
                .is_empty()
        );
    }

    /// The share becomes "every n-th transaction"; none at 0.
    #[test]
    fn the_share_is_every_nth_transaction() {
        assert_eq!(Shadows::new(1.0).every, 1);
        assert_eq!(Shadows::new(0.25).every, 4);
        assert_eq!(Shadows::new(3.0).every, 1);
        assert_eq!(Shadows::new(0.0).every, u64::MAX);
    }
}
