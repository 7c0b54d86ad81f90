//! Answers the protocol core's questions for one session: the seam between
//! the bytes (the driver) and the decisions (policy, queue).
//!
//! A [`Submission`] holds the session's principal (after AUTH) and the
//! transaction's policy (from MAIL FROM to the end of DATA, so every
//! question of a transaction is answered by the policy version it started
//! with). At the end of DATA it builds the one typed spool record
//! ([`Meta`]), queues it for delivery and says `250 ... queued as ID`. The driver reaches it only through [`Submission::answer`].

use std::net::SocketAddr;
use std::sync::Arc;

use mailwit_runtime::{Session, SessionInfo};
use mailwit_smtp::{BodyType, Question, Reply, Verdict};
use tracing::{info, warn};

use crate::metrics::Metrics;
use crate::policy::{ClientInfo, Policy, Principal, TxnPolicy};
use crate::queue::{Queue, QueueError};
use crate::replies;
use crate::spool::Meta;
use crate::usage::{Limit, Reservation, SessionSlot, TenantLimits, TenantUsage, Usage};

/// What answering needs, shared by every session.
pub struct Services {
    pub policy: Arc<dyn Policy>,
    /// The tenants' limits and counters ([`crate::usage`]).
    pub usage: Arc<Usage>,
    pub metrics: Arc<Metrics>,
    /// Where each accepted message waits for delivery.
    pub queue: Arc<dyn Queue>,
}

/// One session's side of the decisions.
pub struct Submission {
    services: Arc<Services>,
    client: ClientInfo,
    peer: SocketAddr,
    session_id: String,
    principal: Option<Principal>,
    /// What the policy is told of the session, made at the first MAIL and
    /// shared by the next transactions while the HELO name stays.
    facts: Option<Session>,
    /// The session's place under its tenant's `sessions` limit.
    slot: Option<SessionSlot>,
    txn: Option<Txn>,
}

/// The transaction under way.
struct Txn {
    policy: Arc<dyn TxnPolicy>,
    sender: String,
    /// The message's place under the rate and the daily quota.
    reservation: Reservation,
    /// The tenant's limits as the transaction began (read once, at MAIL).
    limits: TenantLimits,
    recipients: u32,
}

impl Submission {
    pub fn new(
        services: Arc<Services>,
        client: ClientInfo,
        peer: SocketAddr,
        session_id: String,
    ) -> Self {
        Submission {
            services,
            client,
            peer,
            session_id,
            principal: None,
            facts: None,
            slot: None,
            txn: None,
        }
    }

    /// The authenticated tenant, or "" before AUTH.
    pub fn tenant(&self) -> &str {
        self.principal.as_ref().map_or("", |p| p.tenant.as_str())
    }

    /// One of this session's refusals is being held back.
    pub fn refusal_delayed(&self) {
        self.services.metrics.refusal_delayed(self.tenant());
    }

    /// STARTTLS completed: the session starts over (RFC 3207), with the
    /// server name the client asked for.
    pub fn tls_started(&mut self, server_name: Option<String>) {
        self.client.tls = true;
        self.client.server_name = server_name;
        self.principal = None;
        self.facts = None;
        self.slot = None;
        self.txn = None;
    }

    /// A tenant's limit refused: counted, logged, answered.
    fn over(&self, tenant: &str, limit: Limit) -> Verdict {
        self.services.metrics.limit_refused(tenant, limit.name());
        info!(event = "smtp.limit", limit = limit.name());
        Verdict::Reject(limit.reply())
    }

    /// The answer to one of the core's questions; `helo` is the session's
    /// HELO/EHLO name so far.
    pub async fn answer(&mut self, q: Question, helo: &str) -> Verdict {
        let policy = self.services.policy.clone();
        match q {
            Question::Auth {
                mechanism,
                login,
                secret,
                ..
            } => match policy
                .authenticate(&self.client, mechanism, &login, &secret)
                .await
            {
                Ok(p) => {
                    tracing::Span::current().record("tenant", p.tenant.as_str());
                    match self.services.usage.open_session(&p.tenant) {
                        Ok(slot) => self.slot = Some(slot),
                        Err(limit) => return self.over(&p.tenant, limit),
                    }
                    info!(event = "smtp.auth", outcome = "accepted", mechanism = mechanism.as_str(), login = ?printable(&login));
                    self.principal = Some(p);
                    self.facts = None;
                    Verdict::Accept
                }
                Err(r) => {
                    info!(event = "smtp.auth", outcome = "refused", mechanism = mechanism.as_str(), login = ?printable(&login));
                    Verdict::Reject(r)
                }
            },
            Question::Sender {
                address,
                body,
                declared_size,
            } => {
                let Some(p) = &self.principal else {
                    return Verdict::Reject(replies::internal());
                };
                let facts = match &self.facts {
                    Some(f) if f.helo == helo => f.clone(),
                    _ => {
                        let f = Session::new(SessionInfo {
                            client: self.client.clone(),
                            tenant: p.tenant.clone(),
                            login: p.login.clone(),
                            helo: helo.to_string(),
                            usage: Some(Arc::new(TenantUsage {
                                usage: self.services.usage.clone(),
                                tenant: p.tenant.clone(),
                            })),
                        });
                        self.facts = Some(f.clone());
                        f
                    }
                };
                // The previous transaction (if any) gives back its place.
                self.txn = None;
                let usage = &self.services.usage;
                let limits = usage.limits(&p.tenant);
                if let (Some(max), Some(size)) = (limits.message_size, declared_size)
                    && size > max
                {
                    return self.over(&p.tenant, Limit::Size);
                }
                let reservation = match usage.reserve(&p.tenant, &limits) {
                    Ok(r) => r,
                    Err(limit) => return self.over(&p.tenant, limit),
                };
                let txn = match policy.transaction(p, facts) {
                    Ok(t) => t,
                    Err(r) => return Verdict::Reject(r),
                };
                let r = txn
                    .check_sender(&address, declared_size, body == BodyType::EightBitMime)
                    .await;
                if r.is_ok() {
                    self.txn = Some(Txn {
                        policy: txn,
                        sender: address,
                        reservation,
                        limits,
                        recipients: 0,
                    });
                }
                verdict(r)
            }
            Question::Recipient { address } => {
                let Some(txn) = &self.txn else {
                    return Verdict::Reject(replies::internal());
                };
                if txn
                    .limits
                    .recipients_per_message
                    .is_some_and(|max| txn.recipients >= max)
                {
                    return self.over(self.tenant(), Limit::Recipients);
                }
                let r = txn.policy.check_recipient(&txn.sender, &address).await;
                if r.is_ok()
                    && let Some(txn) = &mut self.txn
                {
                    txn.recipients += 1;
                }
                verdict(r)
            }
            Question::Message { envelope, content } => {
                let (Some(p), Some(txn)) = (self.principal.clone(), self.txn.take()) else {
                    return Verdict::Reject(replies::internal());
                };
                if txn
                    .limits
                    .message_size
                    .is_some_and(|max| content.len() as u64 > max)
                {
                    return self.over(&p.tenant, Limit::Size);
                }
                let decided = match txn.policy.message(&envelope, &content).await {
                    Ok(v) => v,
                    Err(r) => {
                        info!(event = "smtp.message", outcome = "refused", code = r.code);
                        return Verdict::Reject(r);
                    }
                };
                let meta = Meta {
                    id: ulid::Ulid::new().to_string(),
                    received_at_ms: crate::wallclock::now_ms(),
                    tenant: p.tenant,
                    login: p.login,
                    peer: self.peer.to_string(),
                    listener: self.client.listener.clone(),
                    helo: envelope.helo,
                    sender: envelope.sender,
                    recipients: envelope.recipients,
                    body: envelope.body,
                    metadata: decided.metadata,
                    remove_headers: decided.remove_headers,
                    route: decided.route,
                    policy: decided.policy,
                };
                let v = self.queue(meta, content).await;
                if matches!(v, Verdict::AcceptWith(_)) {
                    txn.reservation.keep();
                }
                v
            }
        }
    }

    /// Queues the message for delivery: `250` only once it is durable.
    async fn queue(&self, meta: Meta, content: Vec<u8>) -> Verdict {
        let size = content.len();
        // What the log and the reply need; the queue takes the rest.
        let (id, tenant, recipients) =
            (meta.id.clone(), meta.tenant.clone(), meta.recipients.len());
        let route = meta.route.to_string();
        match self.services.queue.enqueue(meta, content).await {
            Ok(()) => {
                self.services.metrics.queued(&tenant);
                info!(
                    event = "smtp.queued",
                    route = %route,
                    queue_id = %id,
                    session = %self.session_id,
                    size,
                    recipients
                );
                Verdict::AcceptWith(replies::queued(&id))
            }
            Err(QueueError::Full) => {
                warn!(event = "smtp.spool_full");
                Verdict::Reject(replies::spool_full())
            }
            Err(e) => {
                warn!(event = "smtp.spool_error", cause = %e);
                Verdict::Reject(replies::spool_failed())
            }
        }
    }
}

fn verdict(r: Result<(), Reply>) -> Verdict {
    match r {
        Ok(()) => Verdict::Accept,
        Err(reply) => Verdict::Reject(reply),
    }
}

/// Client-supplied text for logs: control and non-ASCII characters escaped,
/// length bounded. Never log client input raw.
pub fn printable(s: &str) -> String {
    s.chars().take(128).flat_map(char::escape_default).collect()
}

/// The submission between a recording policy (a test double of the seam:
/// it accepts everything and notes what it was asked) and a real file
/// queue (no delivery: what it queued stays in the spool to be read).
#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};
    use std::sync::Mutex;

    use async_trait::async_trait;
    use mailwit_runtime::Route;
    use mailwit_smtp::{Envelope, Mechanism};

    use super::*;
    use crate::config::{Config, SpoolConfig};
    use crate::policy::MessageVerdict;

    #[derive(Default)]
    struct Recording {
        asked: Mutex<Vec<String>>,
        /// The session facts each transaction was given.
        sessions: Mutex<Vec<Session>>,
    }

    impl Recording {
        fn note(&self, s: String) {
            self.asked.lock().unwrap().push(s);
        }
    }

    #[async_trait]
    impl Policy for Recording {
        async fn authenticate(
            &self,
            c: &ClientInfo,
            _m: Mechanism,
            login: &str,
            _s: &str,
        ) -> Result<Principal, Reply> {
            self.note(format!("auth {login} sni={:?}", c.server_name));
            match login {
                "refused" => Err(replies::auth_failed()),
                _ => Ok(Principal {
                    tenant: "acme".into(),
                    login: login.into(),
                }),
            }
        }

        fn transaction(&self, p: &Principal, s: Session) -> Result<Arc<dyn TxnPolicy>, Reply> {
            self.note(format!("txn {} {} helo={}", p.tenant, s.login, s.helo));
            self.sessions.lock().unwrap().push(s);
            Ok(Arc::new(RecordingTxn))
        }
    }

    struct RecordingTxn;

    #[async_trait]
    impl TxnPolicy for RecordingTxn {
        async fn check_sender(
            &self,
            sender: &str,
            size: Option<u64>,
            eight_bit: bool,
        ) -> Result<(), Reply> {
            match sender {
                "refused@x.example" => Err(replies::policy_failed()),
                s if s.starts_with("echo") => Err(Reply::new(
                    450,
                    mailwit_smtp::Status(4, 7, 1),
                    format!("size={size:?} eight_bit={eight_bit}"),
                )),
                _ => Ok(()),
            }
        }
        async fn check_recipient(&self, sender: &str, rcpt: &str) -> Result<(), Reply> {
            match rcpt {
                "echo@x.example" => Err(Reply::new(450, mailwit_smtp::Status(4, 7, 1), sender)),
                _ => Ok(()),
            }
        }
        async fn message(&self, _e: &Envelope, _c: &[u8]) -> Result<MessageVerdict, Reply> {
            Ok(MessageVerdict {
                metadata: vec![("bulkId".into(), "b1".into())],
                remove_headers: vec!["X-IB-bulk-id".into()],
                route: Route::Discard,
                policy: "recorded".into(),
            })
        }
    }

    struct Fixture {
        policy: Arc<Recording>,
        services: Arc<Services>,
        dir: tempfile::TempDir,
    }

    fn fixture(spool_config: SpoolConfig) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let queue = crate::queue::file::FileQueue::open(
            &dir.path().join("spool"),
            &spool_config,
            Config::load(None).unwrap().delivery.in_memory_queue,
        )
        .unwrap();
        let policy = Arc::new(Recording::default());
        let services = Arc::new(Services {
            policy: policy.clone(),
            usage: Usage::new(),
            metrics: Arc::default(),
            queue: Arc::new(queue),
        });
        Fixture {
            policy,
            services,
            dir,
        }
    }

    fn submission(f: &Fixture) -> Submission {
        let client = ClientInfo {
            ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 40001,
            listener: "submission".into(),
            tls: false,
            server_name: None,
        };
        Submission::new(
            f.services.clone(),
            client,
            "127.0.0.1:40001".parse().unwrap(),
            "S1".into(),
        )
    }

    fn auth(login: &str) -> Question {
        Question::Auth {
            mechanism: Mechanism::Plain,
            login: login.into(),
            secret: "s".into(),
            authzid: String::new(),
        }
    }

    fn sender(address: &str, body: BodyType) -> Question {
        Question::Sender {
            address: address.into(),
            body,
            declared_size: Some(42),
        }
    }

    fn message(recipients: &[&str]) -> Question {
        Question::Message {
            envelope: Envelope {
                helo: "client.test".into(),
                sender: "a@x.example".into(),
                recipients: recipients.iter().map(|r| r.to_string()).collect(),
                body: BodyType::SevenBit,
                ..Envelope::default()
            },
            content: b"Subject: t\r\n\r\nbody\r\n".to_vec(),
        }
    }

    fn reply(v: Verdict) -> String {
        match v {
            Verdict::Accept => "accept".into(),
            Verdict::AcceptWith(r) | Verdict::Reject(r) => r.to_wire(),
        }
    }

    /// A connection's transactions share the session facts the policy
    /// sees while they still hold: a new HELO name, or STARTTLS (a new
    /// session, RFC 3207), makes them anew.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn transactions_share_the_session_facts_until_they_change() {
        let f = fixture(SpoolConfig::default());
        let mut s = submission(&f);
        s.answer(auth("app"), "h1").await;
        for helo in ["h1", "h1", "h2"] {
            let v = s.answer(sender("a@x.example", BodyType::SevenBit), helo);
            assert!(matches!(v.await, Verdict::Accept));
        }
        s.tls_started(Some("mx.example".into()));
        s.answer(auth("app"), "h2").await;
        let v = s.answer(sender("a@x.example", BodyType::SevenBit), "h2");
        assert!(matches!(v.await, Verdict::Accept));
        let seen = f.policy.sessions.lock().unwrap();
        let helos: Vec<_> = seen
            .iter()
            .map(|s| (s.helo.as_str(), s.client.tls))
            .collect();
        assert_eq!(
            helos,
            [("h1", false), ("h1", false), ("h2", false), ("h2", true)]
        );
        let same = |a: &Session, b: &Session| std::ptr::eq::<SessionInfo>(&**a, &**b);
        assert!(same(&seen[0], &seen[1]));
        assert!(!same(&seen[1], &seen[2]));
        assert!(!same(&seen[2], &seen[3]));
        assert_eq!(seen[3].client.server_name.as_deref(), Some("mx.example"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_transaction_is_spooled_as_one_typed_record_then_250() {
        let f = fixture(SpoolConfig::default());
        let mut s = submission(&f);
        assert_eq!(s.tenant(), "");
        assert!(matches!(s.answer(auth("app"), "h").await, Verdict::Accept));
        assert_eq!(s.tenant(), "acme");
        let helo = "client.test";
        assert!(matches!(
            s.answer(sender("a@x.example", BodyType::SevenBit), helo)
                .await,
            Verdict::Accept
        ));
        let rcpt = Question::Recipient {
            address: "b@y.example".into(),
        };
        assert!(matches!(s.answer(rcpt, helo).await, Verdict::Accept));
        let Verdict::AcceptWith(queued) = s.answer(message(&["b@y.example"]), helo).await else {
            panic!("not queued");
        };
        let id = queued.to_wire();
        let id = id
            .strip_prefix("250 2.0.0 Ok: queued as ")
            .and_then(|r| r.strip_suffix("\r\n"))
            .unwrap_or_else(|| panic!("{id}"))
            .to_string();
        assert_eq!(
            *f.policy.asked.lock().unwrap(),
            ["auth app sni=None", "txn acme app helo=client.test"]
        );
        let spooled = crate::spool::read_accepted(&f.dir.path().join("spool")).unwrap();
        assert_eq!(spooled.len(), 1);
        let m = &spooled[0].meta;
        assert_eq!(m.id, id);
        assert_eq!((m.tenant.as_str(), m.login.as_str()), ("acme", "app"));
        assert_eq!(
            (m.peer.as_str(), m.listener.as_str()),
            ("127.0.0.1:40001", "submission")
        );
        assert_eq!(
            (m.helo.as_str(), m.sender.as_str()),
            ("client.test", "a@x.example")
        );
        assert_eq!(m.recipients, ["b@y.example"]);
        assert_eq!(m.route, Route::Discard);
        assert_eq!(m.policy, "recorded");
        assert_eq!(m.metadata, [("bulkId".to_string(), "b1".to_string())]);
        assert_eq!(m.remove_headers, ["X-IB-bulk-id"]);
        assert!(m.received_at_ms > 0);
        assert_eq!(spooled[0].content, b"Subject: t\r\n\r\nbody\r\n");
        // The transaction is over: a message without a new MAIL is refused.
        let again = reply(s.answer(message(&["b@y.example"]), helo).await);
        assert_eq!(again, replies::internal().to_wire());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn what_the_policy_is_told_and_what_it_refuses() {
        let f = fixture(SpoolConfig::default());
        let mut s = submission(&f);
        // Before AUTH nothing is asked of the policy.
        let early = reply(
            s.answer(sender("a@x.example", BodyType::SevenBit), "h")
                .await,
        );
        assert_eq!(early, replies::internal().to_wire());
        let rcpt = Question::Recipient {
            address: "b@y.example".into(),
        };
        assert_eq!(
            reply(s.answer(rcpt, "h").await),
            replies::internal().to_wire()
        );
        assert_eq!(
            reply(s.answer(auth("refused"), "h").await),
            replies::auth_failed().to_wire()
        );
        assert_eq!(s.tenant(), "");
        s.answer(auth("app"), "h").await;
        // The declared size and the body type reach check-sender.
        for (body, eight_bit) in [(BodyType::EightBitMime, true), (BodyType::SevenBit, false)] {
            let r = reply(s.answer(sender("echo@x.example", body), "h").await);
            assert_eq!(
                r,
                format!("450 4.7.1 size=Some(42) eight_bit={eight_bit}\r\n")
            );
        }
        // The recipient check is asked with this transaction's sender.
        s.answer(sender("a@x.example", BodyType::SevenBit), "h")
            .await;
        let rcpt = Question::Recipient {
            address: "echo@x.example".into(),
        };
        assert_eq!(
            reply(s.answer(rcpt, "h").await),
            "450 4.7.1 a@x.example\r\n"
        );
        let r = reply(
            s.answer(sender("refused@x.example", BodyType::SevenBit), "h")
                .await,
        );
        assert_eq!(r, replies::policy_failed().to_wire());
        // STARTTLS starts over: no principal, and the server name is the
        // client's from now on.
        s.tls_started(Some("mail.acme.example".into()));
        assert_eq!(s.tenant(), "");
        s.answer(auth("app"), "h").await;
        assert_eq!(
            f.policy.asked.lock().unwrap().last().unwrap(),
            "auth app sni=Some(\"mail.acme.example\")"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_spool_that_cannot_take_it_answers_452_or_451() {
        let full = fixture(SpoolConfig {
            min_free_bytes: u64::MAX / 2,
            ..SpoolConfig::default()
        });
        let closed = fixture(SpoolConfig::default());
        closed.services.queue.close();
        for (f, want) in [
            (&full, replies::spool_full()),
            (&closed, replies::spool_failed()),
        ] {
            let mut s = submission(f);
            s.answer(auth("app"), "h").await;
            s.answer(sender("a@x.example", BodyType::SevenBit), "h")
                .await;
            let r = reply(s.answer(message(&["b@y.example"]), "h").await);
            assert_eq!(r, want.to_wire());
        }
    }

    #[test]
    fn client_text_is_escaped_and_bounded_for_logs() {
        assert_eq!(printable("app\r\n\u{7}é"), "app\\r\\n\\u{7}\\u{e9}");
        assert_eq!(printable(&"x".repeat(500)).len(), 128);
    }
}
