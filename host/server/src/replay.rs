//! Replay before deploy: the host keeps, per tenant, the policy inputs of
//! its last transactions, and `mailwit tenant test` runs a candidate
//! against them (or against `.eml` files) next to the live version and
//! lists every difference, so a tenant's CI can gate a deploy on it.
//!
//! What is kept of a transaction is what its functions saw: the session
//! facts (client address, listener, TLS, server name, HELO, login; never a
//! secret), the MAIL parameters, the recipients and the message summary
//! inspect-message gets (headers, addresses, size, attachments' names and
//! types; not the body). Bounded per tenant: the last
//! `[runtime] replay_transactions` (default 100), at most [`MAX_BYTES`],
//! none older than [`MAX_AGE_MS`]. A tenant whose rules say
//! `replay.record = "false"` is not recorded. In memory: a restart starts
//! afresh, and each host keeps its own.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use mailwit_runtime::{
    Client, Decision, Failure, MessageArgs, MessageInfo, PolicySet, Route, Runtime, Session,
    SessionInfo,
};

use crate::shadow::Outcome;

/// Bytes of recorded inputs kept per tenant, at most.
pub const MAX_BYTES: usize = 1 << 20;
/// The oldest transaction replayed: a day.
pub const MAX_AGE_MS: u64 = 24 * 3600 * 1000;

/// One transaction's inputs, or an `.eml` file's.
pub struct Case {
    /// The transaction's id, or the file's name.
    pub name: String,
    pub at_ms: u64,
    pub session: Session,
    pub size: Option<u64>,
    pub eight_bit: bool,
    /// What inspect-message and route saw, the envelope's sender and
    /// recipients with it (kept once, not copied beside it).
    pub args: MessageArgs,
    bytes: usize,
}

impl Case {
    /// A transaction's inputs: its MAIL parameters (`size`, `eight_bit`),
    /// `args` what inspect-message and route saw, `summary_bytes` its
    /// summary's size ([`summary_bytes`]).
    pub fn new(
        name: String,
        session: Session,
        (size, eight_bit): (Option<u64>, bool),
        args: MessageArgs,
        summary_bytes: usize,
    ) -> Case {
        let bytes = summary_bytes
            + args.recipients().iter().map(String::len).sum::<usize>()
            + args.sender().len()
            + 512;
        Case {
            args,
            name,
            at_ms: crate::wallclock::now_ms(),
            session,
            size,
            eight_bit,
            bytes,
        }
    }

    /// An `.eml` file as a transaction: the sender is its `From:`, the
    /// recipients its `To:`, `Cc:` and `Bcc:`, from a client on loopback
    /// over TLS (listener `test`, HELO `test.invalid`, login `test`).
    pub fn from_eml(name: String, tenant: &str, content: &[u8]) -> Result<Case, String> {
        let parsed = mail_parser::MessageParser::default()
            .parse_headers(content)
            .ok_or_else(|| format!("{name}: not a message"))?;
        let addresses = |a: Option<&mail_parser::Address<'_>>| -> Vec<String> {
            a.map(|a| {
                a.iter()
                    .filter_map(|x| x.address().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
        };
        let sender = addresses(parsed.from())
            .into_iter()
            .next()
            .unwrap_or_default();
        let mut recipients = addresses(parsed.to());
        recipients.extend(addresses(parsed.cc()));
        recipients.extend(addresses(parsed.bcc()));
        if recipients.is_empty() {
            return Err(format!("{name}: no To, Cc or Bcc address"));
        }
        let session = Session::new(SessionInfo {
            client: Client {
                ip: std::net::Ipv4Addr::LOCALHOST.into(),
                port: 0,
                listener: "test".into(),
                tls: true,
                server_name: None,
            },
            tenant: tenant.to_string(),
            login: "test".into(),
            helo: "test.invalid".into(),
            usage: None,
        });
        let size = Some(content.len() as u64);
        let summary = crate::message::summarize(content);
        let bytes = summary_bytes(&summary);
        let args = MessageArgs::new(&sender, &recipients, summary);
        Ok(Case::new(name, session, (size, false), args, bytes))
    }
}

/// What a message summary weighs, roughly: its headers.
pub fn summary_bytes(summary: &MessageInfo) -> usize {
    summary.headers.iter().map(|(n, v)| n.len() + v.len()).sum()
}

/// Each tenant's recorded transactions, newest last.
pub struct Recorder {
    keep: usize,
    by_tenant: Mutex<HashMap<String, Kept>>,
}

/// One tenant's recorded transactions and their bytes together (kept as
/// they change, so that recording a message costs no walk of the others).
#[derive(Default)]
struct Kept {
    cases: VecDeque<Arc<Case>>,
    bytes: usize,
}

impl Recorder {
    /// Keeps the last `keep` transactions of each tenant (0: none).
    pub fn new(keep: usize) -> Recorder {
        Recorder {
            keep,
            by_tenant: Mutex::default(),
        }
    }

    /// Whether `set`'s tenant is recorded.
    pub fn wants(&self, set: &PolicySet) -> bool {
        self.keep > 0 && set.rules.get("replay.record") != Some("false")
    }

    pub fn record(&self, tenant: &str, case: Case) {
        let mut map = self.by_tenant.lock().expect("recorder lock");
        // The tenant's name is copied once, not per message.
        let kept = match map.get_mut(tenant) {
            Some(k) => k,
            None => map.entry(tenant.to_string()).or_default(),
        };
        kept.bytes += case.bytes;
        kept.cases.push_back(Arc::new(case));
        while kept.cases.len() > self.keep || kept.bytes > MAX_BYTES {
            match kept.cases.pop_front() {
                Some(c) => kept.bytes -= c.bytes,
                None => break,
            }
        }
    }

    /// `tenant`'s recorded transactions within [`MAX_AGE_MS`], oldest first.
    pub fn recorded(&self, tenant: &str) -> Vec<Arc<Case>> {
        let cutoff = crate::wallclock::now_ms().saturating_sub(MAX_AGE_MS);
        let mut map = self.by_tenant.lock().expect("recorder lock");
        let Some(kept) = map.get_mut(tenant) else {
            return Vec::new();
        };
        // Oldest first: the too old are at the front.
        while kept.cases.front().is_some_and(|c| c.at_ms < cutoff) {
            let c = kept.cases.pop_front().expect("a front");
            kept.bytes -= c.bytes;
        }
        kept.cases.iter().cloned().collect()
    }

    /// Forgets a tenant's transactions (it is deleted).
    pub fn forget(&self, tenant: &str) {
        self.by_tenant.lock().expect("recorder lock").remove(tenant);
    }
}

/// Runs every case on the live set and on `candidate` (the live set with
/// the candidate in place) and lists each decision that differs, or that
/// either side failed, as JSON; `compared` counts the decisions asked.
pub async fn compare(
    rt: &Runtime,
    live: &PolicySet,
    candidate: &PolicySet,
    cases: &[Arc<Case>],
) -> serde_json::Value {
    let mut differences = Vec::new();
    let mut compared = 0u64;
    for case in cases {
        let mut note = |decision: &str,
                        about: String,
                        a: Result<Outcome, Failure>,
                        b: Result<Outcome, Failure>| {
            compared += 1;
            let show = |o: &Result<Outcome, Failure>| match o {
                Ok(o) => o.to_string(),
                Err(f) => format!("failed: {}", f.kind.label()),
            };
            let kinds = match (&a, &b) {
                (Ok(a), Ok(b)) => a.differences(b),
                (Err(x), Err(y)) if x.kind.label() == y.kind.label() => Vec::new(),
                _ => vec!["failure"],
            };
            if !kinds.is_empty() {
                differences.push(serde_json::json!({
                    "case": case.name,
                    "decision": decision,
                    "about": about,
                    "kinds": kinds,
                    "live": show(&a),
                    "candidate": show(&b),
                }));
            }
        };
        let accepted = |_: ()| Outcome::Accepted;
        let (s, sender) = (&case.session, case.args.sender());
        let (l, c) = (live, candidate);
        let (a, b) = (
            l.check_sender(rt, l.limits, s, sender, case.size, case.eight_bit)
                .await,
            c.check_sender(rt, c.limits, s, sender, case.size, case.eight_bit)
                .await,
        );
        note(
            "check-sender",
            format!("from {sender}"),
            Outcome::of_decision(a, accepted),
            Outcome::of_decision(b, accepted),
        );
        for r in case.args.recipients() {
            let (a, b) = (
                l.check_recipient(rt, l.limits, s, sender, r).await,
                c.check_recipient(rt, c.limits, s, sender, r).await,
            );
            note(
                "check-recipient",
                format!("from {sender} to {r}"),
                Outcome::of_decision(a, accepted),
                Outcome::of_decision(b, accepted),
            );
        }
        let about = format!("from {sender} to {}", case.args.recipients().join(","));
        let (a, b) = (
            l.inspect_message(rt, l.limits, s, &case.args).await,
            c.inspect_message(rt, c.limits, s, &case.args).await,
        );
        let metadata = |d: &Result<Decision<mailwit_runtime::Inspection>, Failure>| match d {
            Ok(Decision::Accept(i)) => Some(i.metadata.clone()),
            _ => None,
        };
        let (ma, mb) = (metadata(&a), metadata(&b));
        note(
            "inspect-message",
            about.clone(),
            Outcome::of_decision(a, Outcome::Inspected),
            Outcome::of_decision(b, Outcome::Inspected),
        );
        if let (Some(ma), Some(mb)) = (ma, mb) {
            let routed = |r: Route| Outcome::Routed(r);
            let a = live.route(rt, live.limits, s, &case.args, &ma).await;
            let b = candidate
                .route(rt, candidate.limits, s, &case.args, &mb)
                .await;
            note(
                "route",
                about.clone(),
                Outcome::of_decision(a, routed),
                Outcome::of_decision(b, routed),
            );
        }
    }
    serde_json::json!({
        "cases": cases.len(),
        "decisions_compared": compared,
        "differences": differences,
    })
}
