//! Answers the protocol core's questions for one session: the seam between
//! the bytes (the driver) and the decisions (policy, spool, delivery).
//!
//! A [`Submission`] holds the session's principal (after AUTH) and the
//! transaction's policy (from MAIL FROM to the end of DATA, so every
//! question of a transaction is answered by the policy version it started
//! with). At the end of DATA it builds the one typed spool record
//! ([`Meta`]), spools it, hands it to delivery and says `250 ... queued as
//! ID`. The driver reaches it only through [`Submission::answer`].

use std::net::SocketAddr;
use std::sync::Arc;

use mailwit_runtime::SessionInfo;
use mailwit_smtp::{BodyType, Question, Reply, Verdict};
use tracing::{info, warn};

use crate::delivery::Delivery;
use crate::metrics::Metrics;
use crate::policy::{ClientInfo, Policy, Principal, TxnPolicy};
use crate::replies;
use crate::spool::{Meta, Spool, SpoolError};

/// What answering needs, shared by every session.
pub struct Services {
    pub policy: Arc<dyn Policy>,
    pub metrics: Arc<Metrics>,
    pub spool: Spool,
    /// Takes each queued message on from here.
    pub delivery: Arc<Delivery>,
}

/// One session's side of the decisions.
pub struct Submission {
    services: Arc<Services>,
    client: ClientInfo,
    peer: SocketAddr,
    session_id: String,
    principal: Option<Principal>,
    txn: Option<(Arc<dyn TxnPolicy>, String)>,
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
            txn: None,
        }
    }

    /// The authenticated tenant, or "" before AUTH.
    pub fn tenant(&self) -> &str {
        self.principal.as_ref().map_or("", |p| p.tenant.as_str())
    }

    /// STARTTLS completed: the session starts over (RFC 3207), with the
    /// server name the client asked for.
    pub fn tls_started(&mut self, server_name: Option<String>) {
        self.client.tls = true;
        self.client.server_name = server_name;
        self.principal = None;
        self.txn = None;
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
                    info!(event = "smtp.auth", outcome = "accepted", mechanism = mechanism.as_str(), login = ?printable(&login));
                    self.principal = Some(p);
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
                let info = SessionInfo {
                    client: self.client.clone(),
                    tenant: p.tenant.clone(),
                    login: p.login.clone(),
                    helo: helo.to_string(),
                };
                let txn = match policy.transaction(p, info) {
                    Ok(t) => t,
                    Err(r) => return Verdict::Reject(r),
                };
                let r = txn
                    .check_sender(&address, declared_size, body == BodyType::EightBitMime)
                    .await;
                self.txn = Some((txn, address));
                verdict(r)
            }
            Question::Recipient { address } => {
                let Some((txn, sender)) = &self.txn else {
                    return Verdict::Reject(replies::internal());
                };
                verdict(txn.check_recipient(sender, &address).await)
            }
            Question::Message { envelope, content } => {
                let (Some(p), Some((txn, _))) = (self.principal.clone(), self.txn.take()) else {
                    return Verdict::Reject(replies::internal());
                };
                let decided = match txn.message(&envelope, &content).await {
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
                self.queue(meta, content).await
            }
        }
    }

    /// Spools the message, then hands it to delivery: `250` only once it is
    /// durable.
    async fn queue(&self, meta: Meta, content: Vec<u8>) -> Verdict {
        match self.services.spool.enqueue(&meta, &content).await {
            Ok(at) => {
                self.services.metrics.queued(&meta.tenant);
                info!(
                    event = "smtp.queued",
                    route = %meta.route,
                    queue_id = %meta.id,
                    session = %self.session_id,
                    size = content.len(),
                    recipients = meta.recipients.len()
                );
                let reply = replies::queued(&meta.id);
                self.services.delivery.submit(meta, content, at);
                Verdict::AcceptWith(reply)
            }
            Err(SpoolError::DiskFull) => {
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
