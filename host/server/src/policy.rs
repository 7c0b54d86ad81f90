//! The policy seam: every decision of a session is asked here.
//!
//! The session driver asks a [`Policy`] whether a login may authenticate,
//! then, for each transaction, takes a [`TxnPolicy`] that answers the
//! sender, recipient and message questions of that transaction, so that a
//! transaction runs wholly on the policy version it started with. The
//! session, as the policy sees it, is given once, when the transaction
//! starts: it does not change within one.
//!
//! [`WasmPolicy`] answers with each tenant's WebAssembly function set.
//! [`NoopPolicy`] accepts everything and exists only as the baseline of the
//! policy-cost benchmark.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use futures::FutureExt;
use mailwit_runtime::{
    Decision, Failure, FailureKind, MessageArgs, MessageInfo, PolicySet, Refusal, Route, Runtime,
    Session,
};
use mailwit_smtp::{Envelope, Mechanism, Reply};

use crate::authgate::{self, AuthGate};
use crate::metrics::Metrics;
use crate::replay::{self, Recorder};
use crate::replies::{auth_backoff, auth_busy, auth_failed, policy_failed};
use crate::shadow::{self, Shadows};
use crate::tenants::Tenants;

pub use mailwit_runtime::Client as ClientInfo;

/// An authenticated identity: the tenant and the login within it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub tenant: String,
    pub login: String,
}

/// What the policy decided about a message that may be queued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageVerdict {
    /// Extracted metadata (the X-IB-* headers, say), in order.
    pub metadata: Vec<(String, String)>,
    /// Header fields to remove before relay.
    pub remove_headers: Vec<String>,
    pub route: Route,
    /// The policy version that answered: `generation` of the tenant's set
    /// and `name@version` of each function.
    pub policy: String,
}

#[async_trait]
pub trait Policy: Send + Sync + 'static {
    /// May this login authenticate? Resolves the tenant.
    async fn authenticate(
        &self,
        client: &ClientInfo,
        mechanism: Mechanism,
        login: &str,
        secret: &str,
    ) -> Result<Principal, Reply>;

    /// The policy for one new transaction of this principal, in `session`
    /// (shared by the connection's transactions while its HELO stays).
    fn transaction(
        &self,
        principal: &Principal,
        session: Session,
    ) -> Result<Arc<dyn TxnPolicy>, Reply>;
}

#[async_trait]
pub trait TxnPolicy: Send + Sync {
    async fn check_sender(
        &self,
        sender: &str,
        size: Option<u64>,
        eight_bit: bool,
    ) -> Result<(), Reply>;
    async fn check_recipient(&self, sender: &str, recipient: &str) -> Result<(), Reply>;
    /// Inspection and routing.
    async fn message(&self, envelope: &Envelope, content: &[u8]) -> Result<MessageVerdict, Reply>;
}

/// The rules key the stock `auth` function checks a login's secret against
/// (`users.<login>`, or `api-keys.<id>` for the login `App` with the key
/// `<id>.<secret>`), the convention tenant resolution shares.
fn stock_key(login: &str, secret: &str) -> String {
    if login == "App" {
        format!("api-keys.{}", secret.split('.').next().unwrap_or(""))
    } else {
        format!("users.{login}")
    }
}

/// Policy answered by each tenant's WebAssembly function set.
pub struct WasmPolicy {
    rt: Arc<Runtime>,
    tenants: Arc<Tenants>,
    metrics: Arc<Metrics>,
    /// Bounds the password checks that logins cost (see [`crate::authgate`]).
    gate: Arc<AuthGate>,
    /// Candidates running beside the live sets (see [`crate::shadow`]).
    shadows: Arc<Shadows>,
    /// Each tenant's last transactions' inputs (see [`crate::replay`]).
    recorder: Arc<Recorder>,
}

impl WasmPolicy {
    pub fn new(
        rt: Arc<Runtime>,
        tenants: Arc<Tenants>,
        metrics: Arc<Metrics>,
        gate: Arc<AuthGate>,
        shadows: Arc<Shadows>,
        recorder: Arc<Recorder>,
    ) -> Self {
        WasmPolicy {
            rt,
            tenants,
            metrics,
            gate,
            shadows,
            recorder,
        }
    }
}

/// A valid PHC string checked for unknown logins, so they cost the same
/// time as wrong passwords (it is the hash of a random, discarded string).
const DECOY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$87H/XUs9ZIBmPjrRTuJIFA$HJMkUjVZlsjZmelUqPhtuwgLDhi3cbt29gLq0U9XwEY";

/// Runs one decision, times it, and turns failures into `451 4.3.0`.
///
/// A call runs on the session's own task: wasmtime polls it on a fiber, and
/// at every epoch tick it yields to the other tasks of its worker until its
/// deadline passes (the runtime's `limits::Clock`), so a slow or looping
/// component delays its own session, not its worker's others. (A login
/// whose secret must be checked is moved to the auth gate's threads before
/// it gets here.) A decision no function answers costs nothing: `call`
/// calls no component, and is neither timed nor counted.
///
/// Not an `async fn`: one would keep `call` twice in its state (the
/// argument, and the future it is moved into to be awaited), and a call's
/// future is over a kilobyte, copied into every transaction's boxed
/// futures. A combinator holds it once. Make it with the call and await it
/// at once: the call is timed from here.
fn decide<'a, T>(
    metrics: &'a Metrics,
    set: &'a PolicySet,
    decision: &'static str,
    call: impl Future<Output = Result<Decision<T>, Failure>> + 'a,
) -> impl Future<Output = Result<T, Reply>> + 'a {
    let answered = decision == "authenticate" || set.answers(decision);
    let start = Instant::now();
    // A panic in the host's half of a call (a bug) costs the transaction a
    // 451, not the session's task.
    std::panic::AssertUnwindSafe(call)
        .catch_unwind()
        .map(move |result| {
            if answered {
                metrics.call(&set.tenant, decision, start.elapsed());
            }
            match result {
                Ok(Ok(Decision::Accept(v))) => Ok(v),
                Ok(Ok(Decision::Refuse(r))) if answered => Err(refused(metrics, set, decision, r)),
                // No function answers authentication: every login is refused.
                Ok(Ok(Decision::Unanswered)) if answered => {
                    Err(rejected(metrics, set, decision, auth_failed()))
                }
                Ok(Err(failure)) if answered => Err(failed(metrics, set, failure)),
                Err(p) => {
                    tracing::error!(event = "policy.panic", tenant = %set.tenant, cause = panic_text(&*p));
                    Err(policy_failed())
                }
                // A decision no function answers accepts; anything else
                // from it would be a bug of the runtime's.
                Ok(_) => Err(policy_failed()),
            }
        })
}

/// A caught panic's message.
fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    match (p.downcast_ref::<&str>(), p.downcast_ref::<String>()) {
        (Some(s), _) => s.to_string(),
        (_, Some(s)) => s.clone(),
        _ => "a panic without a message".into(),
    }
}

/// A function's refusal, as the client will see it: a well-formed
/// rejection (control characters dropped, an empty text filled in), or,
/// when it is none (a code that is not 4xx/5xx, an enhanced status of
/// another class or not `x.y.z`), the function's failure: `451 4.3.0`.
fn refused(metrics: &Metrics, set: &PolicySet, decision: &str, r: Refusal) -> Reply {
    match Reply::from_component(r.code, &r.status, &r.text) {
        Ok(reply) => rejected(metrics, set, decision, reply),
        Err(invalid) => failed(
            metrics,
            set,
            Failure {
                function: r.function,
                version: r.version,
                kind: FailureKind::InvalidReply(invalid.to_string()),
            },
        ),
    }
}

/// Counts and logs a refusal the client is given.
fn rejected(metrics: &Metrics, set: &PolicySet, decision: &str, reply: Reply) -> Reply {
    let status = reply.status.map(|s| s.to_string()).unwrap_or_default();
    metrics.rejection(&set.tenant, decision, reply.code, &status);
    tracing::info!(event = "policy.refused", tenant = %set.tenant, decision, code = reply.code, status);
    reply
}

/// Counts and logs a failed call; the client gets `451 4.3.0`.
fn failed(metrics: &Metrics, set: &PolicySet, failure: Failure) -> Reply {
    metrics.failure(&set.tenant, &failure.function, failure.kind.label());
    match failure.kind {
        FailureKind::DeadlineQuarantined(d) => {
            metrics.quarantine(&set.tenant, &failure.function);
            tracing::warn!(
                event = "policy.quarantine",
                tenant = %set.tenant,
                function = %failure.function,
                version = failure.version,
                seconds = d.as_secs(),
                "the function keeps running into its deadline: its calls answer 451 4.3.0 without running until a probe answers"
            );
            return policy_failed();
        }
        // Each refused call is counted; the quarantine was logged once.
        FailureKind::Quarantined(left) => {
            tracing::debug!(event = "policy.quarantined", tenant = %set.tenant, function = %failure.function, left_ms = left.as_millis() as u64);
            return policy_failed();
        }
        _ => {}
    }
    tracing::warn!(
        event = "policy.failure",
        tenant = %set.tenant,
        function = %failure.function,
        version = failure.version,
        generation = set.generation,
        kind = failure.kind.label(),
        detail = ?failure.kind,
        "policy call failed; answering 451 4.3.0"
    );
    policy_failed()
}

#[async_trait]
impl Policy for WasmPolicy {
    async fn authenticate(
        &self,
        client: &ClientInfo,
        mechanism: Mechanism,
        login: &str,
        secret: &str,
    ) -> Result<Principal, Reply> {
        let tenant = self
            .tenants
            .resolve(login, secret, client.server_name.as_deref());
        if let Some(why) = tenant.as_deref().and_then(|t| self.tenants.suspension(t)) {
            tracing::info!(
                event = "smtp.auth_refused",
                tenant = tenant.as_deref().unwrap_or(""),
                why = "the tenant is suspended",
                reason = %why.reason
            );
            // Not a guess: no back-off for the address.
            return Err(auth_failed());
        }
        let set = tenant.as_deref().and_then(|t| self.tenants.get(t));
        // Credentials the tenant's auth cache verified lately cost no
        // argon2 run: they skip the gate, and so never wait behind a flood.
        let known = || {
            set.as_ref()
                .is_some_and(|s| s.rules.verified_recently(&stock_key(login, secret), secret))
        };
        let mut cached = known();
        let _pass = match cached {
            true => None,
            false => match self.gate.enter(client.ip).await {
                Ok(permit) => Some(permit),
                Err(authgate::Refusal::Busy) => {
                    tracing::info!(event = "smtp.auth_busy", "password checks all busy");
                    return Err(auth_busy());
                }
                Err(authgate::Refusal::BackOff) => {
                    tracing::info!(
                        event = "smtp.auth_backoff",
                        "too many failed logins from this address"
                    );
                    return Err(auth_backoff());
                }
            },
        };
        // Another connection from this address may have verified the same
        // credentials while this one waited for the address's turn (an
        // application opening its connections at once): no second check.
        cached = cached || known();
        let Some(set) = set else {
            let secret = secret.to_string();
            let _ = self
                .gate
                .run(move || {
                    use argon2::password_hash::{PasswordHash, PasswordVerifier};
                    let hash = PasswordHash::new(DECOY_HASH).expect("valid decoy hash");
                    argon2::Argon2::default()
                        .verify_password(secret.as_bytes(), &hash)
                        .is_ok()
                })
                .await;
            self.gate.record(client.ip, false);
            return Err(auth_failed());
        };
        let (rt, c, login2, secret) = (
            self.rt.clone(),
            client.clone(),
            login.to_string(),
            secret.to_string(),
        );
        let mechanism = match mechanism {
            Mechanism::Plain => mailwit_runtime::Mechanism::Plain,
            Mechanism::Login => mailwit_runtime::Mechanism::Login,
        };
        let s = set.clone();
        // The call's future is made where it runs (not made first and then
        // moved): each copy would take its size in the session's future.
        let login_call = move || async move {
            s.authenticate(&rt, s.limits, &c, mechanism, &login2, &secret)
                .await
        };
        // A check that computes (argon2: tens of ms of CPU by design, in a
        // host call that cannot yield) runs on the gate's low-priority
        // threads. A cached one computes a digest and finds it: it runs on
        // the session's own task, never behind a flood, and without a
        // thread hop per connection (two context switches and futex calls
        // each; perf stat, 64 sessions, a new connection per message). Only
        // an entry expiring between the check above and the call (its 5
        // minutes ending within those microseconds) would run one argon2
        // here, on a worker.
        let result = decide(&self.metrics, &set, "authenticate", async {
            match cached {
                true => login_call().await,
                false => {
                    let runtime = tokio::runtime::Handle::current();
                    Box::pin(self.gate.run(move || runtime.block_on(login_call()))).await
                }
            }
        })
        .await;
        // A refusal counts against the address; a temporary failure (a
        // trapping component) is not the client's doing. A cached success
        // went around the gate and is not recorded (recording it too would
        // be as right: it only forgets a back-off that an uncached success
        // forgets as well; so that mutant survives, equivalent).
        match &result {
            Ok(_) if !cached => self.gate.record(client.ip, true),
            Err(r) if r.code >= 500 => self.gate.record(client.ip, false),
            _ => {}
        }
        let login = result?;
        Ok(Principal {
            tenant: set.tenant.to_string(),
            login,
        })
    }

    fn transaction(
        &self,
        principal: &Principal,
        session: Session,
    ) -> Result<Arc<dyn TxnPolicy>, Reply> {
        let set = self
            .tenants
            .get(&principal.tenant)
            .ok_or_else(policy_failed)?;
        Ok(Arc::new(WasmTxn {
            rt: self.rt.clone(),
            shadow: self.shadows.pick(&set),
            recorder: self.recorder.wants(&set).then(|| self.recorder.clone()),
            mail_params: std::sync::OnceLock::new(),
            set,
            metrics: self.metrics.clone(),
            session,
        }))
    }
}

/// One transaction's view: the set it started with.
struct WasmTxn {
    rt: Arc<Runtime>,
    set: Arc<PolicySet>,
    metrics: Arc<Metrics>,
    /// The session, for components that ask for it.
    session: Session,
    /// The tenant's shadow, when this transaction is compared.
    shadow: Option<shadow::Run>,
    /// Where the transaction's inputs are kept for replay, if they are.
    recorder: Option<Arc<Recorder>>,
    /// MAIL's parameters (declared size, 8-bit), for the recorder; the
    /// sender is the envelope's.
    mail_params: std::sync::OnceLock<(Option<u64>, bool)>,
}

impl WasmTxn {
    /// The shadow run, when its candidate concerns `decision`.
    fn shadow(&self, decision: &str) -> Option<shadow::Run> {
        self.shadow
            .as_ref()
            .filter(|r| r.shadow.concerns(&self.set, decision))
            .cloned()
    }
}

#[async_trait]
impl TxnPolicy for WasmTxn {
    async fn check_sender(
        &self,
        sender: &str,
        size: Option<u64>,
        eight_bit: bool,
    ) -> Result<(), Reply> {
        let (rt, set, s) = (&*self.rt, &*self.set, &self.session);
        // The call is made in decide's arguments, not kept in a variable
        // first: a variable's slot would stay in this future's state.
        let result = self
            .ask(
                "check-sender",
                set.check_sender(rt, set.limits, s, sender, size, eight_bit),
            )
            .await;
        if self.recorder.is_some() {
            let _ = self.mail_params.set((size, eight_bit));
        }
        if let Some(run) = self.shadow("check-sender") {
            let live = shadow::Outcome::of_reply(&result, |_| shadow::Outcome::Accepted);
            let (rt, s, sender) = (self.rt.clone(), self.session.clone(), sender.to_string());
            run.shadow.clone().spawn(async move {
                let set = &run.set;
                let d = set
                    .check_sender(&rt, set.limits, &s, &sender, size, eight_bit)
                    .await;
                let out = shadow::Outcome::of_decision(d, |_| shadow::Outcome::Accepted);
                run.shadow.record(
                    &run.txn,
                    "check-sender",
                    &format!("from {sender}"),
                    &live,
                    out,
                );
            });
        }
        result
    }

    async fn check_recipient(&self, sender: &str, recipient: &str) -> Result<(), Reply> {
        let (rt, set, s) = (&*self.rt, &*self.set, &self.session);
        let result = self
            .ask(
                "check-recipient",
                set.check_recipient(rt, set.limits, s, sender, recipient),
            )
            .await;
        if let Some(run) = self.shadow("check-recipient") {
            let live = shadow::Outcome::of_reply(&result, |_| shadow::Outcome::Accepted);
            let (rt, s) = (self.rt.clone(), self.session.clone());
            let (sender, recipient) = (sender.to_string(), recipient.to_string());
            run.shadow.clone().spawn(async move {
                let set = &run.set;
                let d = set
                    .check_recipient(&rt, set.limits, &s, &sender, &recipient)
                    .await;
                let out = shadow::Outcome::of_decision(d, |_| shadow::Outcome::Accepted);
                let about = format!("from {sender} to {recipient}");
                run.shadow
                    .record(&run.txn, "check-recipient", &about, &live, out);
            });
        }
        result
    }

    async fn message(&self, envelope: &Envelope, content: &[u8]) -> Result<MessageVerdict, Reply> {
        let (rt, set, s) = (&*self.rt, &*self.set, &self.session);
        // Parsed only for a function that will see it (route does not).
        let summary = match set.answers("inspect-message") {
            true => crate::message::summarize(content),
            false => MessageInfo::default(),
        };
        let bytes = self
            .recorder
            .is_some()
            .then(|| replay::summary_bytes(&summary));
        let args = MessageArgs::new(&envelope.sender, &envelope.recipients, summary);
        if let (Some(recorder), Some(bytes)) = (&self.recorder, bytes) {
            let (size, eight_bit) = self.mail_params.get().copied().unwrap_or_default();
            let case = replay::Case::new(
                ulid::Ulid::new().to_string(),
                s.clone(),
                (size, eight_bit),
                args.clone(),
                bytes,
            );
            recorder.record(&set.tenant, case);
        }
        // One call when one function inspects and routes (decide-message);
        // a refusal is then the inspection's, for the shadow's comparison.
        let (inspection, route) = match set.decides_messages() {
            Some(f) => {
                let call = set.decide_message(rt, set.limits, s, f, &args);
                match self.ask("decide-message", call).await {
                    Ok((inspection, route)) => (Ok(inspection), Some(Ok(route))),
                    Err(reply) => (Err(reply), None),
                }
            }
            None => match self
                .ask(
                    "inspect-message",
                    set.inspect_message(rt, set.limits, s, &args),
                )
                .await
            {
                Ok(inspection) => {
                    let call = set.route(rt, set.limits, s, &args, &inspection.metadata);
                    let route = self.ask("route", call).await;
                    (Ok(inspection), Some(route))
                }
                Err(reply) => (Err(reply), None),
            },
        };
        self.shadow_message(envelope, &args, &inspection, route.as_ref());
        let (inspection, route) = (inspection?, route.expect("routed after inspection")?);
        Ok(MessageVerdict {
            metadata: inspection.metadata,
            remove_headers: inspection.remove_headers,
            route,
            policy: set.label().to_string(),
        })
    }
}

impl WasmTxn {
    /// [`decide`] on this transaction's set.
    fn ask<'a, T>(
        &'a self,
        decision: &'static str,
        call: impl Future<Output = Result<Decision<T>, Failure>> + 'a,
    ) -> impl Future<Output = Result<T, Reply>> + 'a {
        decide(&self.metrics, &self.set, decision, call)
    }

    /// Compares the shadow set's inspection and route with the live ones
    /// (`route` is `None` when the live inspection refused the message).
    fn shadow_message(
        &self,
        envelope: &Envelope,
        args: &MessageArgs,
        inspection: &Result<mailwit_runtime::Inspection, Reply>,
        route: Option<&Result<Route, Reply>>,
    ) {
        let (inspect, routes) = (self.shadow("inspect-message"), self.shadow("route"));
        let Some(run) = inspect.clone().or(routes.clone()) else {
            return;
        };
        use shadow::Outcome;
        let live_inspection = Outcome::of_reply(inspection, |i| Outcome::Inspected(i.clone()));
        let live_route = route.map(|r| Outcome::of_reply(r, |r| Outcome::Routed(r.clone())));
        let (rt, s, args) = (self.rt.clone(), self.session.clone(), args.clone());
        let live_metadata = inspection.as_ref().ok().map(|i| i.metadata.clone());
        let about = format!(
            "from {} to {}",
            envelope.sender,
            envelope.recipients.join(",")
        );
        let recompute_inspection = inspect.is_some();
        run.shadow.clone().spawn(async move {
            let set = &run.set;
            // The shadow's own inspection when the candidate inspects; else
            // the live one's metadata feeds its route.
            let metadata = match recompute_inspection {
                true => {
                    let d = set.inspect_message(&rt, set.limits, &s, &args).await;
                    let metadata = match &d {
                        Ok(Decision::Accept(i)) => Some(i.metadata.clone()),
                        _ => None,
                    };
                    let out = Outcome::of_decision(d, Outcome::Inspected);
                    run.shadow
                        .record(&run.txn, "inspect-message", &about, &live_inspection, out);
                    metadata
                }
                false => live_metadata,
            };
            if let (Some(metadata), Some(live_route)) = (metadata, live_route) {
                let d = set.route(&rt, set.limits, &s, &args, &metadata).await;
                let out = Outcome::of_decision(d, Outcome::Routed);
                run.shadow
                    .record(&run.txn, "route", &about, &live_route, out);
            }
        });
    }
}

/// Accepts everything: the benchmark's baseline, never for production
/// (`mailwit serve --unsafe-noop-policy`).
pub struct NoopPolicy;

#[async_trait]
impl Policy for NoopPolicy {
    async fn authenticate(
        &self,
        _c: &ClientInfo,
        _m: Mechanism,
        login: &str,
        _s: &str,
    ) -> Result<Principal, Reply> {
        Ok(Principal {
            tenant: "noop".into(),
            login: login.to_string(),
        })
    }

    fn transaction(&self, _p: &Principal, _s: Session) -> Result<Arc<dyn TxnPolicy>, Reply> {
        Ok(Arc::new(NoopPolicy))
    }
}

#[async_trait]
impl TxnPolicy for NoopPolicy {
    async fn check_sender(&self, _f: &str, _z: Option<u64>, _e: bool) -> Result<(), Reply> {
        Ok(())
    }
    async fn check_recipient(&self, _f: &str, _r: &str) -> Result<(), Reply> {
        Ok(())
    }
    async fn message(&self, _e: &Envelope, _c: &[u8]) -> Result<MessageVerdict, Reply> {
        Ok(MessageVerdict {
            metadata: Vec::new(),
            remove_headers: Vec::new(),
            // Discard, like the benchmark tenant's rules: both runs then do
            // the same delivery work.
            route: Route::Discard,
            policy: "noop".into(),
        })
    }
}

/// The seam against real components: the embedded configuration's demo
/// tenant (the stock functions) and, per test, a tenant of its own running
/// `components/hostile` in one mode. One runtime for all the tests (its
/// compiled code is the slow part).
#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};
    use std::sync::LazyLock;

    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    use mailwit_runtime::{Limits, RuntimeConfig};
    use mailwit_smtp::Status;

    use super::*;
    use crate::authgate::GateConfig;
    use crate::config::Config;

    struct Fixture {
        rt: Arc<Runtime>,
        tenants: Arc<Tenants>,
        _dir: tempfile::TempDir,
        /// Where the tenants' store calls run (theirs, not a test's).
        _io: tokio::runtime::Runtime,
    }

    static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::load(None).unwrap();
        config.data_dir = dir.path().to_path_buf();
        let rt = Arc::new(
            Runtime::new(RuntimeConfig {
                cache_dir: Some(dir.path().join("cache")),
                ..RuntimeConfig::default()
            })
            .unwrap(),
        );
        let io = tokio::runtime::Runtime::new().unwrap();
        let store = Arc::new(crate::artifacts::FileArtifacts::new(dir.path()));
        let rt2 = rt.clone();
        // On a thread of its own: the first test to get here runs inside
        // its own runtime, where blocking on another is refused.
        let tenants = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    io.block_on(io.spawn_blocking(move || {
                        Tenants::open(rt2, &config, Limits::default(), store)
                    }))
                })
                .join()
        })
        .unwrap()
        .unwrap()
        .unwrap();
        Fixture {
            rt,
            tenants: Arc::new(tenants),
            _dir: dir,
            _io: io,
        }
    });

    /// A policy of its own (metrics and gate) over the shared tenants.
    fn policy() -> (WasmPolicy, Arc<Metrics>, Arc<AuthGate>) {
        let f = &*FIXTURE;
        let metrics = Arc::new(Metrics::default());
        let gate = Arc::new(AuthGate::new(GateConfig {
            workers: 2,
            queue: 16,
            queue_timeout: Duration::from_secs(30),
            refusal_hold: Duration::ZERO,
            one_per_address: true,
        }));
        let p = WasmPolicy::new(
            f.rt.clone(),
            f.tenants.clone(),
            metrics.clone(),
            gate.clone(),
            Arc::new(Shadows::new(0.0)),
            Arc::new(Recorder::new(0)),
        );
        (p, metrics, gate)
    }

    fn client(last: u8) -> ClientInfo {
        ClientInfo {
            ip: IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)),
            port: 40000,
            listener: "submission".into(),
            tls: true,
            server_name: None,
        }
    }

    fn session(tenant: &str) -> Session {
        Session::new(mailwit_runtime::SessionInfo {
            client: client(1),
            tenant: tenant.into(),
            login: "someone".into(),
            helo: "client.example".into(),
            usage: None,
        })
    }

    fn txn(p: &WasmPolicy, tenant: &str) -> Arc<dyn TxnPolicy> {
        let principal = Principal {
            tenant: tenant.into(),
            login: "someone".into(),
        };
        p.transaction(&principal, session(tenant)).unwrap()
    }

    /// A tenant `name` whose only function is `function` (component
    /// bytes), with these rules.
    fn tenant(name: &str, function: (&str, &[u8]), rules: &str) {
        let f = &*FIXTURE;
        // Admin changes run on a blocking thread, as the admin API's do.
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    if f.tenants.get(name).is_none() {
                        f.tenants.create(name).unwrap();
                    }
                    f.tenants.deploy(name, function.0, function.1).unwrap();
                    f.tenants.set_rules(name, rules).unwrap();
                })
                .join()
                .unwrap()
        });
    }

    fn hostile_component() -> Vec<u8> {
        std::fs::read(concat!(
            env!("MAILWIT_COMPONENTS_DIR"),
            "/mailwit_hostile.wasm"
        ))
        .unwrap()
    }

    /// A tenant `name` whose only function is the hostile component, with
    /// these `[hostile]` rules.
    fn hostile(name: &str, rules: &str) {
        let bytes = hostile_component();
        tenant(name, ("hostile", &bytes), &format!("[hostile]\n{rules}\n"));
    }

    /// The demo user's stored hash (of "demo-password"), from the embedded
    /// configuration.
    fn demo_hash() -> String {
        let demo = FIXTURE.tenants.get("demo").unwrap();
        demo.rules.secret("users.demo").unwrap().to_string()
    }

    fn rendered(m: &Metrics) -> String {
        m.render(&[], crate::queue::Gauges::default())
    }

    /// A tenant's policy calls for `decision` in rendered metrics `m`.
    fn calls(m: &str, tenant: &str, decision: &str) -> u64 {
        let line =
            format!("mailwit_policy_calls_total{{tenant=\"{tenant}\",decision=\"{decision}\"}} ");
        m.lines()
            .find_map(|l| l.strip_prefix(&line))
            .map_or(0, |n| n.parse().unwrap())
    }

    #[tokio::test]
    async fn logins_are_answered_by_the_tenants_functions() {
        let (p, metrics, gate) = policy();
        let c = client(2);
        let ok = p
            .authenticate(&c, Mechanism::Plain, "demo", "demo-password")
            .await
            .unwrap();
        assert_eq!(
            ok,
            Principal {
                tenant: "demo".into(),
                login: "demo".into()
            }
        );
        // An API-key login (IB's `App` and `<id>.<secret>`).
        let key = p
            .authenticate(&c, Mechanism::Login, "App", "demokey.0f3c9b2e7a4d4e1f")
            .await
            .unwrap();
        assert_eq!(key.tenant, "demo");
        let checks = gate.stats.checks.load(Ordering::Relaxed);
        assert_eq!(checks, 2);
        // Verified lately: the same credentials skip the gate's argon2.
        p.authenticate(&c, Mechanism::Plain, "demo", "demo-password")
            .await
            .unwrap();
        p.authenticate(&c, Mechanism::Plain, "App", "demokey.0f3c9b2e7a4d4e1f")
            .await
            .unwrap();
        assert_eq!(gate.stats.checks.load(Ordering::Relaxed), checks);
        // A wrong password and an unknown login: the same 535, each a
        // check through the gate (the unknown one against a decoy hash).
        for (login, secret) in [("demo", "wrong"), ("nobody", "demo-password")] {
            let r = p
                .authenticate(&c, Mechanism::Plain, login, secret)
                .await
                .unwrap_err();
            assert_eq!(r, crate::replies::auth_failed(), "{login}");
        }
        assert_eq!(gate.stats.checks.load(Ordering::Relaxed), checks + 2);
        let m = rendered(&metrics);
        assert!(
            m.contains("{tenant=\"demo\",decision=\"authenticate\",reason=\"535 5.7.8\"} 1"),
            "{m}"
        );
    }

    /// Every command's decision is a boxed future, allocated and copied per
    /// transaction: it holds each call's future once. When `decide` was an
    /// `async fn` holding its argument beside the future it awaited, and
    /// the login's call was built, then moved, then awaited, they were
    /// 3.5 KiB each and 8 KiB for a login.
    #[tokio::test]
    async fn a_transactions_futures_hold_each_call_once() {
        let (p, _, _) = policy();
        let t = txn(&p, "demo");
        let envelope = Envelope {
            helo: "client.example".into(),
            sender: "demo@mailwit.test".into(),
            recipients: vec!["someone@example.net".into()],
            body: mailwit_smtp::BodyType::SevenBit,
            declared_size: None,
        };
        let sizes = [
            (
                "check-sender",
                std::mem::size_of_val(&*t.check_sender("demo@mailwit.test", None, false)),
            ),
            (
                "check-recipient",
                std::mem::size_of_val(&*t.check_recipient("a@b.example", "c@d.example")),
            ),
            (
                "message",
                std::mem::size_of_val(&*t.message(&envelope, b"Subject: x\r\n\r\nhi\r\n")),
            ),
            (
                "authenticate",
                std::mem::size_of_val(&*p.authenticate(&client(9), Mechanism::Plain, "demo", "x")),
            ),
        ];
        for (what, size) in sizes {
            let bound = if what == "authenticate" { 2048 } else { 1536 };
            assert!(size <= bound, "{what}: {size} bytes");
        }
    }

    /// With no function exporting authenticate, every login is refused,
    /// as a refusal (535, counted), not a failure (451).
    #[tokio::test]
    async fn a_tenant_without_an_authenticate_function_refuses_every_login() {
        let (p, metrics, _) = policy();
        let bytes = hostile_component();
        tenant(
            "t-noauth",
            ("hostile", &bytes),
            &format!("[users]\nnoauth-user = \"{DECOY_HASH}\"\n"),
        );
        let r = p
            .authenticate(&client(4), Mechanism::Plain, "noauth-user", "x")
            .await
            .unwrap_err();
        assert_eq!(r, crate::replies::auth_failed());
        let m = rendered(&metrics);
        assert!(
            m.contains("{tenant=\"t-noauth\",decision=\"authenticate\",reason=\"535 5.7.8\"} 1"),
            "{m}"
        );
    }

    #[tokio::test]
    async fn a_transaction_is_answered_by_the_stock_functions() {
        let (p, metrics, _) = policy();
        let t = txn(&p, "demo");
        t.check_sender("demo@mailwit.test", Some(100), false)
            .await
            .unwrap();
        t.check_sender("anyone@example.com", None, false)
            .await
            .unwrap();
        let r = t
            .check_sender("x@elsewhere.example", None, false)
            .await
            .unwrap_err();
        assert_eq!((r.code, r.status), (550, Some(Status(5, 7, 1))));
        t.check_recipient("demo@mailwit.test", "someone@example.net")
            .await
            .unwrap();
        let envelope = Envelope {
            sender: "demo@mailwit.test".into(),
            recipients: vec!["someone@example.net".into()],
            ..Envelope::default()
        };
        let v = t
            .message(
                &envelope,
                b"From: demo@mailwit.test\r\nX-IB-bulk-id: b1\r\nSubject: s\r\n\r\nhi\r\n",
            )
            .await
            .unwrap();
        assert_eq!(v.route, Route::Sandbox);
        assert!(v.policy.starts_with("generation="), "{}", v.policy);
        assert!(v.policy.contains(" router@"), "{}", v.policy);
        let m = rendered(&metrics);
        assert!(
            m.contains("{tenant=\"demo\",decision=\"check-sender\",reason=\"550 5.7.1\"} 1"),
            "{m}"
        );
        // An unknown tenant's transaction is a temporary failure.
        let principal = Principal {
            tenant: "gone".into(),
            login: "x".into(),
        };
        let r = p.transaction(&principal, session("gone")).err().unwrap();
        assert_eq!(r, policy_failed());
    }

    /// `builtin:stock` is the five stock functions in one component: given
    /// the demo tenant's rules, every decision it makes is the five's
    /// (the refusing function's name aside), for senders, logins and
    /// messages that take each branch.
    #[tokio::test]
    async fn the_stock_component_decides_as_the_five_functions_do() {
        let mut rules = Config::load(None).unwrap().tenants[0].rules.clone();
        // Logins belong to one tenant: the stock tenant has its own user,
        // with the demo user's password, and no API keys.
        rules.remove("api-keys");
        let mut users = toml::Table::new();
        users.insert("stockuser".into(), demo_hash().into());
        rules.insert("users".into(), users.into());
        let stock = crate::tenants::builtin("stock").unwrap();
        tenant(
            "t-stock",
            ("stock", stock),
            &toml::to_string(&rules).unwrap(),
        );
        let (p, metrics, _) = policy();
        let (demo, one) = (txn(&p, "demo"), txn(&p, "t-stock"));
        let senders = [
            ("demo@mailwit.test", Some(100)),
            ("Anyone@EXAMPLE.com", None),
            ("x@elsewhere.example", None),
            ("", None),
            ("demo@mailwit.test", Some(20_000_000)),
        ];
        let mut refused = 0;
        for (sender, size) in senders {
            let a = demo.check_sender(sender, size, false).await;
            refused += a.is_err() as usize;
            assert_eq!(a, one.check_sender(sender, size, false).await, "{sender}");
        }
        assert_eq!(refused, 3);
        let envelope = Envelope {
            sender: "demo@mailwit.test".into(),
            recipients: vec!["someone@example.net".into()],
            ..Envelope::default()
        };
        let messages: [&[u8]; 5] = [
            b"From: demo@mailwit.test\r\nTo: someone@example.net\r\nX-IB-bulk-id: b1\r\nX-IB-notify-content-type: application/json\r\n\r\nhi\r\n",
            b"From: x@elsewhere.example\r\n\r\nhi\r\n",
            b"From: demo@mailwit.test\r\nTo: other@example.org\r\n\r\nhi\r\n",
            b"From: demo@mailwit.test\r\nX-IB-notify-content-type: text/plain\r\n\r\nhi\r\n",
            b"From: demo@mailwit.test\r\nX-IB-intermediate-report: TRUE\r\nx-ib-callback-data: c\r\n\r\nhi\r\n",
        ];
        let mut accepted = 0;
        for m in messages {
            let text = String::from_utf8_lossy(m);
            let (a, b) = (
                demo.message(&envelope, m).await,
                one.message(&envelope, m).await,
            );
            match (a, b) {
                (Ok(mut a), Ok(mut b)) => {
                    accepted += 1;
                    assert!(!a.metadata.is_empty(), "{text}");
                    assert!(b.policy.contains(" stock@"), "{}", b.policy);
                    (a.policy, b.policy) = (String::new(), String::new());
                    assert_eq!(a, b, "{text}");
                }
                (a, b) => assert_eq!(a.err(), b.err(), "{text}"),
            }
        }
        assert_eq!(accepted, 2);
        // Each message was one call (decide-message), not inspection and
        // routing; the five functions made both.
        let m = rendered(&metrics);
        let calls = |tenant, decision| calls(&m, tenant, decision);
        assert_eq!(calls("t-stock", "decide-message"), 5, "{m}");
        assert_eq!(calls("t-stock", "inspect-message"), 0, "{m}");
        assert_eq!(calls("t-stock", "route"), 0, "{m}");
        assert_eq!(calls("demo", "inspect-message"), 5, "{m}");
        assert_eq!(calls("demo", "route"), 2, "{m}");
        // Logins: the same refusals; the right password is accepted.
        let rt = &FIXTURE.rt;
        let (demo, one) = (
            FIXTURE.tenants.get("demo").unwrap(),
            FIXTURE.tenants.get("t-stock").unwrap(),
        );
        let login = |set: Arc<PolicySet>, login: &'static str, secret: &'static str| async move {
            let plain = mailwit_runtime::Mechanism::Plain;
            set.authenticate(rt, set.limits, &client(3), plain, login, secret)
                .await
                .unwrap()
        };
        let (wrong, right) = ("wrong", "demo-password");
        let refusal = |d: Decision<String>| match d {
            Decision::Refuse(r) => (r.code, r.status, r.text),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            refusal(login(demo.clone(), "demo", wrong).await),
            refusal(login(one.clone(), "stockuser", wrong).await)
        );
        assert_eq!(
            refusal(login(demo, "nobody", right).await),
            refusal(login(one.clone(), "nobody", right).await)
        );
        assert_eq!(
            login(one, "stockuser", right).await,
            Decision::Accept("stockuser".into())
        );
    }

    /// decide-message stands for inspect-message and route only when one
    /// function does both: with a second inspector beside `stock`, each
    /// message is inspected (by both) and then routed, in two calls.
    #[tokio::test]
    async fn a_second_inspector_takes_the_set_back_to_two_calls_per_message() {
        let mut rules = Config::load(None).unwrap().tenants[0].rules.clone();
        rules.remove("api-keys");
        rules.remove("users");
        let stock = crate::tenants::builtin("stock").unwrap();
        tenant("t-two", ("stock", stock), &toml::to_string(&rules).unwrap());
        let one_call = || {
            FIXTURE
                .tenants
                .get("t-two")
                .unwrap()
                .decides_messages()
                .is_some()
        };
        assert!(one_call());
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let content = crate::tenants::builtin("content").unwrap();
                    FIXTURE.tenants.deploy("t-two", "content", content).unwrap();
                })
                .join()
                .unwrap()
        });
        assert!(!one_call());
        let (p, metrics, _) = policy();
        let envelope = Envelope {
            sender: "demo@mailwit.test".into(),
            recipients: vec!["someone@example.net".into()],
            ..Envelope::default()
        };
        let m =
            b"From: demo@mailwit.test\r\nTo: someone@example.net\r\nX-IB-bulk-id: b1\r\n\r\nhi\r\n";
        let verdict = txn(&p, "t-two").message(&envelope, m).await.unwrap();
        assert!(
            verdict.metadata.contains(&("bulkId".into(), "b1".into())),
            "{verdict:?}"
        );
        let m = rendered(&metrics);
        assert_eq!(calls(&m, "t-two", "inspect-message"), 1, "{m}");
        assert_eq!(calls(&m, "t-two", "route"), 1, "{m}");
        assert_eq!(calls(&m, "t-two", "decide-message"), 0, "{m}");
    }

    #[tokio::test]
    async fn a_components_refusal_is_validated_before_a_client_sees_it() {
        let (p, metrics, _) = policy();
        let cases = [
            (
                "t-valid",
                "550",
                "5.7.1",
                "no\\r\\nthanks",
                Ok((550, "550 5.7.1 nothanks\r\n")),
            ),
            (
                "t-empty",
                "451",
                "4.7.1",
                "",
                Ok((451, "451 4.7.1 Rejected by policy\r\n")),
            ),
            ("t-class", "550", "4.7.1", "x", Err(())),
            ("t-code", "250", "2.0.0", "x", Err(())),
            ("t-status", "550", "5.7", "x", Err(())),
        ];
        for (tenant, code, status, text, want) in cases {
            hostile(
                tenant,
                &format!(
                    "mode = \"reply\"\ncode = \"{code}\"\nstatus = \"{status}\"\ntext = \"{text}\""
                ),
            );
            let r = txn(&p, tenant)
                .check_sender("a@b.example", None, false)
                .await
                .unwrap_err();
            match want {
                Ok((code, wire)) => assert_eq!((r.code, r.to_wire().as_str()), (code, wire)),
                Err(()) => {
                    assert_eq!(r, policy_failed(), "{tenant}");
                    let line = format!(
                        "mailwit_policy_traps_total{{tenant=\"{tenant}\",function=\"hostile\",kind=\"invalid_reply\"}} 1"
                    );
                    assert!(rendered(&metrics).contains(&line), "{tenant}");
                }
            }
        }
    }

    /// check-recipient reaches the function with the transaction's sender
    /// and the recipient, and its refusal comes back (no stock function
    /// exports it; `components/hostile` does).
    #[tokio::test]
    async fn a_recipient_check_is_asked_with_the_sender_and_the_recipient() {
        let (p, metrics, _) = policy();
        hostile("t-rcpt", "mode = \"recipient\"");
        let t = txn(&p, "t-rcpt");
        t.check_sender("a@x.example", None, false).await.unwrap();
        let r = t
            .check_recipient("a@x.example", "b@y.example")
            .await
            .unwrap_err();
        assert_eq!(r.to_wire(), "450 4.7.1 b@y.example from a@x.example\r\n");
        let m = rendered(&metrics);
        assert!(
            m.contains("{tenant=\"t-rcpt\",decision=\"check-recipient\",reason=\"450 4.7.1\"} 1"),
            "{m}"
        );
        // In any other mode it accepts.
        hostile("t-rcpt-ok", "mode = \"accept\"");
        let t = txn(&p, "t-rcpt-ok");
        t.check_recipient("a@x.example", "b@y.example")
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_looping_component_costs_its_transaction_a_451() {
        let (p, metrics, _) = policy();
        hostile("t-loop", "mode = \"loop\"\n[runtime]\ndeadline-ms = 40");
        let r = txn(&p, "t-loop")
            .check_sender("a@b.example", None, false)
            .await
            .unwrap_err();
        assert_eq!(r, policy_failed());
        let m = rendered(&metrics);
        assert!(
            m.contains("mailwit_policy_deadline_hits_total{tenant=\"t-loop\",function=\"hostile\",kind=\"deadline\"} 1"),
            "{m}"
        );
    }

    /// The epoch ticker parks once nothing has run for a while (so an idle
    /// server does not wake 500 times a second), and the call that comes
    /// next still ends at its deadline: it wakes the ticker. A runtime of
    /// its own, so that no other test's calls keep its ticker up.
    #[test]
    fn a_call_after_the_ticker_parks_still_ends_at_its_deadline() {
        let rt = Arc::new(Runtime::new(RuntimeConfig::default()).unwrap());
        let loops = rt.load("hostile", 1, &hostile_component()).unwrap();
        let set = PolicySet {
            tenant: Arc::from("t-parked"),
            generation: 1,
            functions: vec![Arc::new(loops)],
            rules: Arc::new(mailwit_runtime::Rules::parse("[hostile]\nmode = \"loop\"").unwrap()),
            rules_version: 1,
            limits: Limits {
                deadline: Duration::from_millis(100),
                ..Limits::default()
            },
            label: Default::default(),
        };
        // About a second after the load's check ran; bounded, not timed.
        for _ in 0..300 {
            if rt.ticker_parked() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(rt.ticker_parked(), "the ticker never parked");
        // On a thread of its own: without the ticker the call would loop
        // for ever, never yielding, and the bound turns that into a failure.
        let (tx, rx) = std::sync::mpsc::channel();
        let rt2 = rt.clone();
        std::thread::spawn(move || {
            let tokio = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let s = session("t-parked");
            let call = set.check_sender(&rt2, set.limits, &s, "a@b.example", None, false);
            let _ = tx.send(tokio.block_on(call));
        });
        let r = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the looping call never met its deadline");
        assert_eq!(r.unwrap_err().kind, FailureKind::Deadline);
        assert!(!rt.ticker_parked());
    }

    /// Counts the turns a task gets on a current-thread runtime while `f`
    /// runs beside it: none unless `f` yields.
    async fn turns_beside<R>(f: impl Future<Output = R>) -> (R, u64) {
        let turns = Arc::new(AtomicU64::new(0));
        let counter = {
            let turns = turns.clone();
            tokio::spawn(async move {
                loop {
                    turns.fetch_add(1, Ordering::Relaxed);
                    tokio::task::yield_now().await;
                }
            })
        };
        let r = f.await;
        counter.abort();
        (r, turns.load(Ordering::Relaxed))
    }

    /// A call that computes for a while (50 ms) yields at the epoch ticks
    /// on its way: on a runtime with one thread, another task gets turns
    /// while it runs, and the answer is the same as ever.
    #[tokio::test(flavor = "current_thread")]
    async fn a_slow_call_yields_to_the_other_tasks_of_its_thread() {
        let (p, _, _) = policy();
        hostile("t-busy", "mode = \"busy\"\nbusy-ms = 50");
        let t = txn(&p, "t-busy");
        let (r, turns) = turns_beside(t.check_sender("a@b.example", None, false)).await;
        r.unwrap();
        // A call that held its thread to the end would give it none.
        assert!(turns > 0, "the other task never ran during the call");
    }

    /// A looping call holds no thread: on a runtime with one thread, a
    /// demo transaction's check started after it is answered while the
    /// loop runs, and the loop still ends at its deadline with a 451.
    #[tokio::test(flavor = "current_thread")]
    async fn a_looping_call_holds_no_thread_and_ends_at_its_deadline() {
        let (p, metrics, _) = policy();
        hostile("t-spin", "mode = \"loop\"\n[runtime]\ndeadline-ms = 300");
        let looping = txn(&p, "t-spin");
        let demo = txn(&p, "demo");
        let order = std::sync::Mutex::new(Vec::new());
        let (a, b) = tokio::join!(
            async {
                let r = looping.check_sender("a@b.example", None, false).await;
                order.lock().unwrap().push("loop");
                r
            },
            async {
                // Let the loop start first.
                tokio::task::yield_now().await;
                let r = demo.check_sender("demo@mailwit.test", None, false).await;
                order.lock().unwrap().push("demo");
                r
            },
        );
        assert_eq!(a.unwrap_err(), policy_failed());
        b.unwrap();
        assert_eq!(*order.lock().unwrap(), ["demo", "loop"]);
        assert!(
            rendered(&metrics)
                .contains("tenant=\"t-spin\",function=\"hostile\",kind=\"deadline\"} 1")
        );
    }

    /// Blocking WASI I/O (a guest writing to stderr) runs on the async
    /// workers: the component's refusal comes back as it said it.
    #[tokio::test(flavor = "current_thread")]
    async fn a_component_writing_to_stderr_is_answered_on_the_async_workers() {
        let (p, metrics, _) = policy();
        hostile("t-stderr", "mode = \"stderr\"");
        let r = txn(&p, "t-stderr")
            .check_sender("a@b.example", None, false)
            .await
            .unwrap_err();
        assert_eq!(r.to_wire(), "450 4.7.1 wrote to stderr\r\n");
        assert!(!rendered(&metrics).contains("function=\"hostile\",kind="));
    }

    /// A refused login lengthens its address's back-off and a successful
    /// one forgets it; a temporary failure (451: the tenant's component
    /// could not run) is not the client's doing and counts for nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_refusals_count_against_an_address_and_a_success_forgets_them() {
        let auth = crate::tenants::builtin("auth").unwrap();
        let hash = demo_hash();
        // Its own tenant: nothing of it is in the auth cache yet.
        tenant(
            "t-gate",
            ("auth", auth),
            &format!("[users]\ngate-user = \"{hash}\"\n"),
        );
        // A tenant whose auth cannot even be instantiated (1 KiB memory).
        tenant(
            "t-gate451",
            ("auth", auth),
            &format!("[users]\ngate451-user = \"{hash}\"\n[runtime]\nmemory-bytes = 1024\n"),
        );
        let (p, _, gate) = policy();
        let delayed = || gate.stats.delayed.load(Ordering::Relaxed);
        let (a, b) = (client(20), client(21));
        let login = |c: ClientInfo, user: &'static str, pw: &'static str| {
            let p = &p;
            async move { p.authenticate(&c, Mechanism::Plain, user, pw).await }
        };
        assert_eq!(
            login(a.clone(), "gate-user", "wrong")
                .await
                .unwrap_err()
                .code,
            535
        );
        // The next check from that address waits its turn; it succeeds.
        login(a.clone(), "gate-user", "demo-password")
            .await
            .unwrap();
        assert_eq!(delayed(), 1);
        // Forgotten: a wrong password now is checked at once.
        assert_eq!(
            login(a.clone(), "gate-user", "wrong2")
                .await
                .unwrap_err()
                .code,
            535
        );
        assert_eq!(delayed(), 1);
        // 451s from another address: no back-off for it.
        for _ in 0..2 {
            let r = login(b.clone(), "gate451-user", "demo-password")
                .await
                .unwrap_err();
            assert_eq!(r, policy_failed());
        }
        assert_eq!(delayed(), 1);
    }

    #[tokio::test]
    async fn the_noop_policy_accepts_everything_and_discards() {
        let p = NoopPolicy;
        let who = p
            .authenticate(&client(3), Mechanism::Plain, "x", "y")
            .await
            .unwrap();
        assert_eq!((who.tenant.as_str(), who.login.as_str()), ("noop", "x"));
        let t = p.transaction(&who, session("noop")).unwrap();
        t.check_sender("a@b", None, false).await.unwrap();
        t.check_recipient("a@b", "c@d").await.unwrap();
        let v = t.message(&Envelope::default(), b"x").await.unwrap();
        assert_eq!((v.route, v.policy.as_str()), (Route::Discard, "noop"));
    }
}
