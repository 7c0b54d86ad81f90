//! A tenant's function set at one moment: the decision points, called in
//! order over the functions that export them.
//!
//! A `PolicySet` is immutable. A deploy builds a new one and swaps the
//! `Arc`; a transaction holds the set it started with, so it runs wholly on
//! one version.

use std::sync::Arc;

use crate::bindings::mailwit::policy::types as t;
use crate::call;
use crate::engine::{Function, Runtime};
use crate::limits::{Failure, FailureKind, Limits};
use crate::rules::Rules;
use crate::state::client;
pub use crate::types::{Client, Mechanism, SessionInfo, Usage, UsageSource};

/// Longest reply text, login, metadata key or value accepted from a
/// component; longer ones are refused (the transaction gets `451 4.3.0`).
pub const MAX_TEXT: usize = 1024;
/// Longest enhanced status text accepted from a component ("5.7.1"; the
/// longest valid one, "5.999.999", has 9 characters).
pub const MAX_STATUS: usize = 32;
/// Most metadata entries or header removals from one function.
pub const MAX_ITEMS: usize = 64;
/// Longest metadata value (URLs, callback data).
pub const MAX_VALUE: usize = 4096;

#[derive(Debug, Clone)]
pub struct AttachmentInfo {
    pub filename: Option<String>,
    pub content_type: String,
    pub size: u64,
}

/// The message as parsed by the host.
#[derive(Debug, Clone, Default)]
pub struct MessageInfo {
    pub headers: Vec<(String, String)>,
    pub to: Vec<String>,
    pub cc: Vec<String>,
    pub size: u64,
    pub content_type: String,
    pub attachments: Vec<AttachmentInfo>,
}

/// Where a message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Relay(String),
    Sandbox,
    Discard,
}

/// `relay:default`, as the reference router's default.
impl Default for Route {
    fn default() -> Route {
        Route::Relay("default".into())
    }
}

/// The text form (`relay:<upstream>`, `sandbox`, `discard`), as rules
/// name routes and spool records store them.
impl std::str::FromStr for Route {
    type Err = String;
    fn from_str(s: &str) -> Result<Route, String> {
        match s {
            "sandbox" => Ok(Route::Sandbox),
            "discard" => Ok(Route::Discard),
            _ => match s.strip_prefix("relay:") {
                Some(name) if !name.is_empty() => Ok(Route::Relay(name.to_string())),
                _ => Err(format!("{s:?} is not relay:<name>, sandbox or discard")),
            },
        }
    }
}

impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Route::Relay(t) => write!(f, "relay:{t}"),
            Route::Sandbox => f.write_str("sandbox"),
            Route::Discard => f.write_str("discard"),
        }
    }
}

/// Accumulated result of inspection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inspection {
    pub metadata: Vec<(String, String)>,
    pub remove_headers: Vec<String>,
}

/// A policy answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision<T> {
    Accept(T),
    /// A function refused, as it said it: bounded in size, not yet
    /// validated. Whether it is a well-formed SMTP reply is the
    /// embedder's to decide (the server answers `451 4.3.0` when not).
    Refuse(Refusal),
    /// No function answers this decision point, and it has no default
    /// answer: only authentication (with no function exporting it every
    /// login is refused, in the embedder's words).
    Unanswered,
}

/// A function's refusal exactly as it returned it, with who returned it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub function: String,
    pub version: u64,
    pub code: u16,
    /// The enhanced status, still text; at most [`MAX_STATUS`] bytes.
    pub status: String,
    /// At most [`MAX_TEXT`] bytes.
    pub text: String,
}

/// Asks every function of `$set` exporting `$slot`, in order, each on its
/// own instance under `$cx`: `$call` with the export `$g` and the store
/// `$store`; the closure `$take` absorbs an acceptance of a function (an
/// error ends the decision). The first refusal wins: the value is it, if any. A macro,
/// not a function taking a closure: see [`call::Lease`].
macro_rules! each {
    ($set:expr, $rt:expr, $cx:expr, $slot:ident,
     |$g:ident, $store:ident| $call:expr, $take:expr $(,)?) => {{
        let cx = $cx;
        #[allow(unused_mut)]
        let mut take = $take;
        let mut refused = None;
        for f in $set.functions.iter() {
            let Some(idx) = f.exports.$slot.as_ref() else {
                continue;
            };
            let mut lease = call::lease($rt, f, &cx).await?;
            let r = {
                let (store, inst) = lease.parts();
                match call::export(store, |l| &mut l.$slot, |s| idx.load(s, inst)) {
                    Ok($g) => {
                        let $store = &mut *store;
                        $call.await
                    }
                    Err(e) => Err(e),
                }
            };
            match lease.finish(r)? {
                Ok(v) => take(f, v)?,
                Err(reply) => {
                    refused = Some($set.refusal(f, reply)?);
                    break;
                }
            }
        }
        refused
    }};
}

/// A tenant's functions and rules at one version.
pub struct PolicySet {
    pub tenant: Arc<str>,
    /// Grows by one with every deploy, rules change or rollback.
    pub generation: u64,
    pub functions: Vec<Arc<Function>>,
    pub rules: Arc<Rules>,
    pub rules_version: u64,
    /// The tenant's limits. Each decision takes the limits of its calls as
    /// an argument: these, or tighter ones the embedder chooses.
    pub limits: Limits,
    /// [`PolicySet::label`], made on first use; starts empty.
    pub label: std::sync::OnceLock<String>,
}

fn message(m: MessageInfo) -> t::Message {
    t::Message {
        headers: m
            .headers
            .into_iter()
            .map(|(name, value)| t::Header { name, value })
            .collect(),
        to: m.to,
        cc: m.cc,
        size: m.size,
        content_type: m.content_type,
        attachments: m
            .attachments
            .into_iter()
            .map(|a| t::Attachment {
                filename: a.filename,
                content_type: a.content_type,
                size: a.size,
            })
            .collect(),
    }
}

/// A transaction's session, shared by its calls. It is converted to what
/// components see only when one asks for it (`host.current-session`).
#[derive(Clone)]
pub struct Session(Arc<SessionInfo>);

impl Session {
    pub fn new(s: SessionInfo) -> Session {
        Session(Arc::new(s))
    }
}

impl std::ops::Deref for Session {
    type Target = SessionInfo;

    fn deref(&self) -> &SessionInfo {
        &self.0
    }
}

/// A message's envelope and summary as components see them, converted once
/// for inspect-message and route.
#[derive(Clone)]
pub struct MessageArgs {
    envelope: Arc<t::Envelope>,
    message: Arc<t::Message>,
}

impl MessageArgs {
    pub fn new(sender: &str, recipients: &[String], m: MessageInfo) -> MessageArgs {
        MessageArgs {
            envelope: Arc::new(t::Envelope {
                sender: sender.to_string(),
                recipients: recipients.to_vec(),
            }),
            message: Arc::new(message(m)),
        }
    }

    /// The envelope's sender (MAIL FROM; empty for the null sender).
    pub fn sender(&self) -> &str {
        &self.envelope.sender
    }

    /// The envelope's recipients.
    pub fn recipients(&self) -> &[String] {
        &self.envelope.recipients
    }
}

impl PolicySet {
    /// What this set's calls run under: `limits`, and `session` for
    /// `host.current-session`.
    fn cx<'a>(&'a self, limits: Limits, session: Option<&'a Session>) -> call::Context<'a> {
        call::Context {
            tenant: &self.tenant,
            rules: &self.rules,
            limits,
            session: session.map(|s| &s.0),
        }
    }

    fn fail(&self, f: &Function, kind: FailureKind) -> Failure {
        Failure {
            function: f.name.clone(),
            version: f.version,
            kind,
        }
    }

    /// Bounds a refusal from `f`; its form is checked by the embedder.
    fn refusal(&self, f: &Function, r: t::Reply) -> Result<Refusal, Failure> {
        if r.text.len() > MAX_TEXT {
            return Err(self.fail(f, FailureKind::Oversize("reply text")));
        }
        if r.status.len() > MAX_STATUS {
            return Err(self.fail(f, FailureKind::Oversize("reply status")));
        }
        Ok(Refusal {
            function: f.name.clone(),
            version: f.version,
            code: r.code,
            status: r.status,
            text: r.text,
        })
    }

    /// Authentication: every function exporting it must accept; the first
    /// refusal wins. With none, [`Decision::Unanswered`].
    pub async fn authenticate(
        &self,
        rt: &Runtime,
        limits: Limits,
        c: &Client,
        mechanism: Mechanism,
        login: &str,
        secret: &str,
    ) -> Result<Decision<String>, Failure> {
        let mech = match mechanism {
            Mechanism::Plain => t::Mechanism::Plain,
            Mechanism::Login => t::Mechanism::Login,
        };
        let info = client(c);
        let mut accepted = None;
        let refused = each!(
            self,
            rt,
            self.cx(limits, None),
            authenticate,
            |g, store| g.call_authenticate(store, &info, &self.tenant, mech, login, secret),
            |f, l: String| {
                if l.len() > MAX_TEXT {
                    return Err(self.fail(f, FailureKind::Oversize("login")));
                }
                accepted.get_or_insert(l);
                Ok(())
            },
        );
        Ok(match (refused, accepted) {
            (Some(r), _) => Decision::Refuse(r),
            (None, Some(l)) => Decision::Accept(l),
            (None, None) => Decision::Unanswered,
        })
    }

    pub async fn check_sender(
        &self,
        rt: &Runtime,
        limits: Limits,
        s: &Session,
        sender: &str,
        size: Option<u64>,
        eight_bit: bool,
    ) -> Result<Decision<()>, Failure> {
        let params = t::MailParams { size, eight_bit };
        let refused = each!(
            self,
            rt,
            self.cx(limits, Some(s)),
            check_sender,
            |g, store| g.call_check_sender(store, sender, params),
            |_, ()| Ok(()),
        );
        Ok(refused.map_or(Decision::Accept(()), Decision::Refuse))
    }

    pub async fn check_recipient(
        &self,
        rt: &Runtime,
        limits: Limits,
        s: &Session,
        sender: &str,
        recipient: &str,
    ) -> Result<Decision<()>, Failure> {
        let refused = each!(
            self,
            rt,
            self.cx(limits, Some(s)),
            check_recipient,
            |g, store| g.call_check_recipient(store, sender, recipient),
            |_, ()| Ok(()),
        );
        Ok(refused.map_or(Decision::Accept(()), Decision::Refuse))
    }

    /// Inspection: every exporter in order; the first refusal wins;
    /// metadata and header removals accumulate.
    pub async fn inspect_message(
        &self,
        rt: &Runtime,
        limits: Limits,
        s: &Session,
        m: &MessageArgs,
    ) -> Result<Decision<Inspection>, Failure> {
        let (envelope, message) = (&*m.envelope, &*m.message);
        let mut out = Inspection::default();
        let refused = each!(
            self,
            rt,
            self.cx(limits, Some(s)),
            inspect_message,
            |g, store| g.call_inspect_message(store, envelope, message),
            |f, found: t::Inspection| self.take_inspection(f, found, &mut out),
        );
        Ok(refused.map_or(Decision::Accept(out), Decision::Refuse))
    }

    /// Adds `f`'s inspection to `out`, bounded.
    fn take_inspection(
        &self,
        f: &Function,
        found: t::Inspection,
        out: &mut Inspection,
    ) -> Result<(), Failure> {
        if found.metadata.len() > MAX_ITEMS || found.remove_headers.len() > MAX_ITEMS {
            return Err(self.fail(f, FailureKind::Oversize("inspection list")));
        }
        for md in found.metadata {
            if md.key.len() > MAX_TEXT || md.value.len() > MAX_VALUE {
                return Err(self.fail(f, FailureKind::Oversize("metadata entry")));
            }
            out.metadata.push((md.key, md.value));
        }
        for h in found.remove_headers {
            if h.len() > MAX_TEXT {
                return Err(self.fail(f, FailureKind::Oversize("header name")));
            }
            out.remove_headers.push(h);
        }
        Ok(())
    }

    /// `f`'s destination as a route, bounded.
    fn destination(&self, f: &Function, d: t::Destination) -> Result<Route, Failure> {
        match d {
            t::Destination::Relay(target) if target.len() > MAX_TEXT => {
                Err(self.fail(f, FailureKind::Oversize("relay target")))
            }
            t::Destination::Relay(target) => Ok(Route::Relay(target)),
            t::Destination::Sandbox => Ok(Route::Sandbox),
            t::Destination::Discard => Ok(Route::Discard),
        }
    }

    /// The function that answers a message in one call (decide-message):
    /// the set's only inspector, which is also its router (the first
    /// function exporting route) and exports decide-message. When there
    /// is none, [`PolicySet::inspect_message`] then [`PolicySet::route`].
    pub fn decides_messages(&self) -> Option<&Function> {
        let mut inspectors = self
            .functions
            .iter()
            .filter(|f| f.exports.inspect_message.is_some());
        let (one, None) = (inspectors.next()?, inspectors.next()) else {
            return None;
        };
        let router = self.functions.iter().find(|f| f.exports.route.is_some())?;
        (std::ptr::eq(&**one, &**router) && one.exports.decide_message.is_some()).then_some(&**one)
    }

    /// Inspection and routing in one call by `f`, the function
    /// [`PolicySet::decides_messages`] named: what inspect-message, then
    /// route, would decide.
    pub async fn decide_message(
        &self,
        rt: &Runtime,
        limits: Limits,
        s: &Session,
        f: &Function,
        m: &MessageArgs,
    ) -> Result<Decision<(Inspection, Route)>, Failure> {
        let idx = f
            .exports
            .decide_message
            .as_ref()
            .expect("decides_messages names a function exporting it");
        let (envelope, message) = (&*m.envelope, &*m.message);
        let mut lease = call::lease(rt, f, &self.cx(limits, Some(s))).await?;
        let r = {
            let (store, inst) = lease.parts();
            match call::export(store, |l| &mut l.decide_message, |s| idx.load(s, inst)) {
                Ok(g) => g.call_decide_message(&mut *store, envelope, message).await,
                Err(e) => Err(e),
            }
        };
        match lease.finish(r)? {
            Ok(d) => {
                let mut inspection = Inspection::default();
                self.take_inspection(f, d.inspection, &mut inspection)?;
                let route = self.destination(f, d.destination)?;
                Ok(Decision::Accept((inspection, route)))
            }
            Err(reply) => Ok(Decision::Refuse(self.refusal(f, reply)?)),
        }
    }

    /// Routing: the first function exporting `route` decides; with none,
    /// `relay:default`.
    pub async fn route(
        &self,
        rt: &Runtime,
        limits: Limits,
        s: &Session,
        m: &MessageArgs,
        metadata: &[(String, String)],
    ) -> Result<Decision<Route>, Failure> {
        let Some(f) = self.functions.iter().find(|f| f.exports.route.is_some()) else {
            return Ok(Decision::Accept(Route::Relay("default".into())));
        };
        let idx = f.exports.route.as_ref().expect("checked");
        let envelope = &*m.envelope;
        let md: Vec<t::Metadata> = metadata
            .iter()
            .map(|(k, v)| t::Metadata {
                key: k.clone(),
                value: v.clone(),
            })
            .collect();
        let mut lease = call::lease(rt, f, &self.cx(limits, Some(s))).await?;
        let r = {
            let (store, inst) = lease.parts();
            match call::export(store, |l| &mut l.route, |s| idx.load(s, inst)) {
                Ok(g) => g.call_route(&mut *store, envelope, &md).await,
                Err(e) => Err(e),
            }
        };
        match lease.finish(r)? {
            Ok(d) => Ok(Decision::Accept(self.destination(f, d)?)),
            Err(reply) => Ok(Decision::Refuse(self.refusal(f, reply)?)),
        }
    }
}

impl PolicySet {
    /// The version that answers, as recorded with each message:
    /// "generation=3 rules@2 auth@1 router@4". Made once per set: every
    /// message accepted on it carries the same text.
    pub fn label(&self) -> &str {
        self.label.get_or_init(|| {
            let mut l = format!(
                "generation={} rules@{}",
                self.generation, self.rules_version
            );
            for f in &self.functions {
                l.push_str(&format!(" {}@{}", f.name, f.version));
            }
            l
        })
    }

    /// Whether any function answers `decision` (a WIT interface name:
    /// "check-recipient", ...). When none does, the answer is known without
    /// a call: accept (and `relay:default` for route).
    pub fn answers(&self, decision: &str) -> bool {
        self.functions.iter().any(|f| f.answers(decision))
    }

    /// Instantiates every function once and calls nothing: what the
    /// per-call setup costs (for the benchmark).
    pub async fn instantiate_each(&self, rt: &Runtime) -> Result<(), Failure> {
        for f in &self.functions {
            call::lease(rt, f, &self.cx(self.limits, None))
                .await?
                .finish(Ok(()))?;
        }
        Ok(())
    }
}
