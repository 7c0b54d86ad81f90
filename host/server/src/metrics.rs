//! Per-tenant metrics and the delivery queue's and spool's gauges in the
//! Prometheus text format, served at the admin listener's `/metrics`.
//!
//! Hand-written rather than a metrics crate: a handful of counters and one
//! histogram, with label values that are already restricted to
//! `[a-z0-9_-]` (tenant and function names) or digits (codes), so no
//! escaping or registry machinery is needed.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

use crate::queue::Gauges as QueueGauges;
use crate::tenants::TenantSummary;

/// Upper bounds of the latency histogram, in seconds.
const BUCKETS: [f64; 12] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.1, 0.25, 1.0,
];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

/// One tenant's policy calls: counted per decision, timed together. Kept
/// apart from the other counters because it is updated on every decision,
/// so an update must not format or allocate.
#[derive(Default)]
struct PolicyCalls {
    calls: BTreeMap<&'static str, u64>,
    latency: Histogram,
}

#[derive(Default)]
pub struct Metrics {
    counters: Mutex<BTreeMap<(&'static str, String), u64>>,
    policy: Mutex<BTreeMap<String, PolicyCalls>>,
}

impl Metrics {
    fn add(&self, name: &'static str, labels: String) {
        *self
            .counters
            .lock()
            .expect("metrics lock")
            .entry((name, labels))
            .or_default() += 1;
    }

    /// A policy decision was asked (`decision`: authenticate, check-sender, ...).
    pub fn call(&self, tenant: &str, decision: &'static str, took: Duration) {
        let mut policy = self.policy.lock().expect("metrics lock");
        let p = match policy.get_mut(tenant) {
            Some(p) => p,
            None => policy.entry(tenant.to_string()).or_default(),
        };
        *p.calls.entry(decision).or_default() += 1;
        let h = &mut p.latency;
        let s = took.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if s <= *b {
                h.counts[i] += 1;
            }
        }
        h.sum += s;
        h.count += 1;
    }

    /// A tenant's limit refused (`limit`: a [`crate::usage::Limit`]'s name).
    pub fn limit_refused(&self, tenant: &str, limit: &str) {
        self.add(
            "mailwit_tenant_limit_refusals_total",
            format!("tenant=\"{tenant}\",limit=\"{limit}\""),
        );
    }

    /// The policy refused, with this reply.
    pub fn rejection(&self, tenant: &str, decision: &str, code: u16, status: &str) {
        self.add(
            "mailwit_policy_rejections_total",
            format!("tenant=\"{tenant}\",decision=\"{decision}\",reason=\"{code} {status}\""),
        );
    }

    /// A session's refusal was held back (see `driver::Driver::pace`).
    pub fn refusal_delayed(&self, tenant: &str) {
        self.add(
            "mailwit_smtp_refusals_delayed_total",
            format!("tenant=\"{tenant}\""),
        );
    }

    /// A function was quarantined (its deadline hit too often in a row).
    pub fn quarantine(&self, tenant: &str, function: &str) {
        self.add(
            "mailwit_policy_quarantines_total",
            format!("tenant=\"{tenant}\",function=\"{function}\""),
        );
    }

    /// A call failed (trap, deadline, memory, oversize, ...).
    pub fn failure(&self, tenant: &str, function: &str, kind: &str) {
        let name = if kind == "deadline" {
            "mailwit_policy_deadline_hits_total"
        } else {
            "mailwit_policy_traps_total"
        };
        self.add(
            name,
            format!("tenant=\"{tenant}\",function=\"{function}\",kind=\"{kind}\""),
        );
    }

    /// The status API answered with this HTTP status.
    pub fn status_api_response(&self, code: u16) {
        self.add(
            "mailwit_status_api_responses_total",
            format!("code=\"{code}\""),
        );
    }

    /// The status component failed (deadline, memory, trap, no response).
    pub fn status_api_failure(&self, kind: &str) {
        self.add(
            "mailwit_status_api_failures_total",
            format!("kind=\"{kind}\""),
        );
    }

    pub fn queued(&self, tenant: &str) {
        self.add(
            "mailwit_messages_queued_total",
            format!("tenant=\"{tenant}\""),
        );
    }

    /// The text exposition, with the active versions of `tenants` and the
    /// delivery queue.
    pub fn render(&self, tenants: &[TenantSummary], delivery: QueueGauges) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# TYPE mailwit_delivery_waiting gauge");
        let _ = writeln!(out, "mailwit_delivery_waiting {}", delivery.waiting);
        let _ = writeln!(out, "# TYPE mailwit_delivery_retrying gauge");
        let _ = writeln!(out, "mailwit_delivery_retrying {}", delivery.retrying);
        let _ = writeln!(out, "# TYPE mailwit_spool_pending_messages gauge");
        let _ = writeln!(out, "mailwit_spool_pending_messages {}", delivery.spooled);
        let _ = writeln!(out, "# TYPE mailwit_spool_segments gauge");
        let _ = writeln!(out, "mailwit_spool_segments {}", delivery.segments);
        let _ = writeln!(out, "# TYPE mailwit_spool_fsyncs_total counter");
        let _ = writeln!(out, "mailwit_spool_fsyncs_total {}", delivery.fsyncs);
        let _ = writeln!(out, "# TYPE mailwit_queue_redelivered gauge");
        let _ = writeln!(out, "mailwit_queue_redelivered {}", delivery.redelivered);
        let mut last = "";
        for ((name, labels), v) in self.counters.lock().expect("metrics lock").iter() {
            if *name != last {
                let _ = writeln!(out, "# TYPE {name} counter");
                last = name;
            }
            let _ = writeln!(out, "{name}{{{labels}}} {v}");
        }
        let policy = self.policy.lock().expect("metrics lock");
        let _ = writeln!(out, "# TYPE mailwit_policy_calls_total counter");
        for (tenant, p) in policy.iter() {
            for (decision, n) in &p.calls {
                let _ = writeln!(
                    out,
                    "mailwit_policy_calls_total{{tenant=\"{tenant}\",decision=\"{decision}\"}} {n}"
                );
            }
        }
        let _ = writeln!(out, "# TYPE mailwit_policy_latency_seconds histogram");
        for (tenant, h) in policy.iter().map(|(t, p)| (t, &p.latency)) {
            for (b, c) in BUCKETS.iter().zip(h.counts.iter()) {
                let _ = writeln!(
                    out,
                    "mailwit_policy_latency_seconds_bucket{{tenant=\"{tenant}\",le=\"{b}\"}} {c}"
                );
            }
            let _ = writeln!(
                out,
                "mailwit_policy_latency_seconds_bucket{{tenant=\"{tenant}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "mailwit_policy_latency_seconds_sum{{tenant=\"{tenant}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "mailwit_policy_latency_seconds_count{{tenant=\"{tenant}\"}} {}",
                h.count
            );
        }
        let _ = writeln!(out, "# TYPE mailwit_policy_active_version gauge");
        for t in tenants {
            for f in &t.functions {
                let _ = writeln!(
                    out,
                    "mailwit_policy_active_version{{tenant=\"{}\",function=\"{}\"}} {}",
                    t.tenant, f.name, f.version
                );
            }
            let _ = writeln!(
                out,
                "mailwit_policy_active_version{{tenant=\"{}\",function=\"rules\"}} {}",
                t.tenant, t.rules_version
            );
        }
        out
    }
}

/// Appends each tenant's policy CPU time and the calls slowed or refused
/// for its share.
pub fn render_cpu(usage: &[mailwit_runtime::CpuUse], out: &mut String) {
    type Value = fn(&mailwit_runtime::CpuUse) -> String;
    let series: [(&str, Value); 2] = [
        ("mailwit_policy_cpu_seconds_total", |u| {
            format!("{:.6}", u.seconds)
        }),
        ("mailwit_policy_cpu_throttled_total", |u| {
            u.throttled.to_string()
        }),
    ];
    for (name, value) in series {
        let _ = writeln!(out, "# TYPE {name} counter");
        for u in usage {
            let _ = writeln!(out, "{name}{{tenant=\"{}\"}} {}", u.tenant, value(u));
        }
    }
}
