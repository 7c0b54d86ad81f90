//! The session driver: the only code that touches a client's socket.
//!
//! It feeds bytes and the time to the sans-IO [`Session`], writes its
//! replies, runs the TLS upgrade, and asks the
//! [`Policy`](crate::policy::Policy) and the spool. The deadlines are the
//! session's (`mailwit_smtp::clock`): the driver sleeps until the time the
//! session names and tells it when it has come. Only the implicit-TLS
//! handshake, before a session exists, has its timeout here.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use mailwit_smtp::{BodyType, Expired, Output, Question, Reply, Session, Status, Verdict};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until, timeout, timeout_at};
use tracing::{Instrument, debug, info, warn};

use crate::budget;
use crate::policy::{ClientInfo, Principal, TxnPolicy};
use crate::server::{ListenerCtx, Shared};
use crate::spool::{Meta, SpoolError};
use mailwit_runtime::SessionInfo;

/// Octets read from the socket at a time.
const READ_CHUNK: usize = 16 * 1024;

/// A client connection, before or after TLS.
enum Conn {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// Only while the TLS handshake runs.
    Upgrading,
}

impl Conn {
    async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf).await,
            Conn::Tls(s) => s.read(buf).await,
            Conn::Upgrading => Ok(0),
        }
    }

    async fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        async fn w<S: AsyncWrite + AsyncRead + Unpin>(s: &mut S, b: &[u8]) -> std::io::Result<()> {
            s.write_all(b).await?;
            s.flush().await
        }
        match self {
            Conn::Plain(s) => w(s, bytes).await,
            Conn::Tls(s) => w(s.as_mut(), bytes).await,
            Conn::Upgrading => Ok(()),
        }
    }

    async fn shutdown(&mut self) {
        let _ = match self {
            Conn::Plain(s) => s.shutdown().await,
            Conn::Tls(s) => s.shutdown().await,
            Conn::Upgrading => Ok(()),
        };
    }
}

/// Runs one client session to its end.
pub async fn run(
    shared: Arc<Shared>,
    listener: Arc<ListenerCtx>,
    tcp: TcpStream,
    peer: SocketAddr,
    session_id: String,
    over_limit: bool,
    shutdown: watch::Receiver<bool>,
) {
    let span = tracing::info_span!(
        "session",
        id = %session_id,
        peer = %peer,
        listener = %listener.name,
        tenant = tracing::field::Empty
    );
    async move {
        let limits = shared.limits();
        let mut conn = Conn::Plain(tcp);
        let mut server_name = None;
        if listener.implicit_tls {
            match timeout(
                limits.tls_handshake_timeout(),
                shared.tls.accept(take_tcp(&mut conn)),
            )
            .await
            {
                Ok(Ok(tls)) => {
                    server_name = sni(&tls);
                    conn = Conn::Tls(Box::new(tls));
                }
                Ok(Err(e)) => return debug!(event = "tls.failed", cause = %e),
                Err(_) => return debug!(event = "tls.timeout"),
            }
        }
        if over_limit {
            let reply = Reply::new(
                421,
                Status(4, 7, 0),
                "Too many connections, try again later",
            );
            info!(event = "smtp.refused", reason = "connection limit");
            let _ = conn.write_all(reply.to_wire().as_bytes()).await;
            conn.shutdown().await;
            return;
        }
        info!(event = "smtp.connect");
        let session = Session::new(
            shared.config.session_config(&listener.config, &limits),
            listener.implicit_tls,
            now(),
        );
        let mut d = Driver {
            shared: shared.clone(),
            peer,
            client: ClientInfo {
                ip: peer.ip(),
                port: peer.port(),
                listener: listener.name.clone(),
                tls: listener.implicit_tls,
                server_name,
            },
            session,
            principal: None,
            txn: None,
            conn,
            out: Vec::new(),
            session_id,
            limits,
            room: None,
        };
        d.drive(shutdown).await;
        info!(event = "smtp.disconnect");
    }
    .instrument(span)
    .await
}

/// The time, as the session is told it.
fn now() -> std::time::Instant {
    std::time::Instant::now()
}

fn take_tcp(conn: &mut Conn) -> TcpStream {
    match std::mem::replace(conn, Conn::Upgrading) {
        Conn::Plain(s) => s,
        _ => unreachable!("TLS is only started on a plain connection"),
    }
}

struct Driver {
    shared: Arc<Shared>,
    peer: SocketAddr,
    client: ClientInfo,
    session: Session,
    principal: Option<Principal>,
    /// The current transaction's policy and sender: every question of one
    /// transaction is answered by the policy version it started with.
    txn: Option<(Arc<dyn TxnPolicy>, String)>,
    conn: Conn,
    out: Vec<u8>,
    session_id: String,
    /// The `[limits]` in force when the session started.
    limits: Arc<crate::config::Limits>,
    /// Room for the message being received, once it is larger than
    /// [`budget::SMALL`]; given back when the message's bytes are.
    room: Option<budget::Reservation>,
}

impl Driver {
    async fn drive(&mut self, mut shutdown: watch::Receiver<bool>) {
        let mut buf = vec![0u8; READ_CHUNK];
        let mut stopping = false;
        loop {
            // Carry out everything the session has to say.
            while let Some(output) = self.session.poll() {
                match output {
                    Output::Reply(r) => {
                        log_reply(&r);
                        r.write_to(&mut self.out);
                        if !self.session.in_data() {
                            self.room = None;
                        }
                    }
                    Output::Ask(q) => {
                        let verdict = self.ask(q).await;
                        self.session.answer(verdict, now());
                        // A message's bytes are gone once it is answered.
                        if !self.session.in_data() {
                            self.room = None;
                        }
                    }
                    Output::StartTls => {
                        if !self.flush().await {
                            return;
                        }
                        let tcp = take_tcp(&mut self.conn);
                        let until = self.wake();
                        match timeout_at(until, self.shared.tls.accept(tcp)).await {
                            Ok(Ok(tls)) => {
                                self.client.server_name = sni(&tls);
                                self.conn = Conn::Tls(Box::new(tls));
                            }
                            Ok(Err(e)) => return debug!(event = "tls.failed", cause = %e),
                            Err(_) => return debug!(event = "tls.timeout"),
                        }
                        if self.session.discarded_after_starttls() > 0 {
                            warn!(
                                event = "smtp.starttls_injection",
                                octets = self.session.discarded_after_starttls(),
                                "discarded plaintext pipelined after STARTTLS"
                            );
                        }
                        self.session.tls_established(now());
                        self.client.tls = true;
                        self.principal = None;
                    }
                    Output::Close => {
                        self.flush().await;
                        self.conn.shutdown().await;
                        return;
                    }
                }
            }
            if !self.flush().await {
                return;
            }
            // A large message reads on only with room for all of it, within
            // its DATA deadline.
            if self.session.in_data() {
                let deadline = self.wake();
                self.make_room(deadline).await;
            }
            let wake = self.wake();
            tokio::select! {
                r = self.conn.read(&mut buf) => match r {
                    Ok(0) => return debug!(event = "smtp.client_closed"),
                    Ok(n) => self.session.feed(&buf[..n], now()),
                    Err(e) => return debug!(event = "smtp.read_error", cause = %e),
                },
                _ = sleep_until(wake) => match self.session.handle_timeout(now()) {
                    Some(Expired::Grace) => info!(event = "smtp.shutdown", "grace period over"),
                    Some(Expired::Handshake) => debug!(event = "tls.timeout"),
                    Some(which) => info!(event = "smtp.timeout", deadline = ?which),
                    None => {}
                },
                _ = shutdown.changed(), if !stopping => {
                    stopping = true;
                    self.session.begin_shutdown(now());
                }
            }
        }
    }

    /// When the session next needs to be told the time (its deadline, or
    /// the shutdown grace's end). A closed session needs nothing: it has
    /// already said `Close`, so this is never waited for.
    fn wake(&self) -> Instant {
        match self.session.poll_timeout() {
            Some(at) => Instant::from_std(at),
            None => Instant::now(),
        }
    }

    /// Once the message being received outgrows [`budget::SMALL`], reserves
    /// room for the whole of it (its declared SIZE, else the largest
    /// allowed, twice: the spool's copy while it is written) before another
    /// octet is read; waits for it within the DATA deadline. Without room,
    /// or past the SIZE it declared, the message is refused at its end.
    async fn make_room(&mut self, deadline: Instant) {
        let received = self.session.data_received();
        if received <= budget::SMALL as u64 || self.session.data_refused() {
            return;
        }
        if let Some(room) = &self.room {
            if received > (room.bytes() / 2) as u64 {
                info!(event = "smtp.over_declared_size", declared = ?self.session.declared_size());
                self.session.refuse_data(Reply::new(
                    552,
                    Status(5, 3, 4),
                    "Message exceeds the SIZE it declared",
                ));
            }
            return;
        }
        let max = self.limits.max_message_size;
        let size = self
            .session
            .declared_size()
            .map_or(max, |d| (d as usize).clamp(budget::SMALL, max));
        let tenant = self.principal.as_ref().map_or("", |p| p.tenant.as_str());
        let wait = deadline.saturating_duration_since(Instant::now());
        let reserved = timeout(wait, self.shared.budget.reserve(tenant, 2 * size)).await;
        match reserved {
            Ok(Ok(room)) => self.room = Some(room),
            _ => {
                warn!(
                    event = "smtp.memory_full",
                    size, "no room for the message's content"
                );
                self.session.refuse_data(Reply::new(
                    452,
                    Status(4, 3, 1),
                    "Insufficient system storage, try again later",
                ));
            }
        }
    }

    /// Writes pending replies. False when the client is gone.
    async fn flush(&mut self) -> bool {
        if self.out.is_empty() {
            return true;
        }
        let out = std::mem::take(&mut self.out);
        match self.conn.write_all(&out).await {
            Ok(()) => true,
            Err(e) => {
                debug!(event = "smtp.write_error", cause = %e);
                false
            }
        }
    }

    async fn ask(&mut self, q: Question) -> Verdict {
        let policy = self.shared.policy.clone();
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
                    return internal();
                };
                let txn = match policy.transaction(p, self.session_info(p)) {
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
                    return internal();
                };
                verdict(txn.check_recipient(sender, &address).await)
            }
            Question::Message { envelope, content } => {
                let (Some(p), Some((txn, _))) = (self.principal.clone(), self.txn.take()) else {
                    return internal();
                };
                let decided = match txn.message(&envelope, &content).await {
                    Ok(v) => v,
                    Err(r) => {
                        info!(event = "smtp.message", outcome = "refused", code = r.code);
                        return Verdict::Reject(r);
                    }
                };
                let id = ulid::Ulid::new().to_string();
                let meta = Meta {
                    id: id.clone(),
                    received_at_ms: SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map(|d| d.as_millis() as u64)
                        .unwrap_or(0),
                    tenant: p.tenant.clone(),
                    login: p.login.clone(),
                    peer: self.peer.to_string(),
                    listener: self.client.listener.clone(),
                    helo: envelope.helo.clone(),
                    sender: envelope.sender.clone(),
                    recipients: envelope.recipients.clone(),
                    body: envelope.body,
                    metadata: decided.metadata,
                    remove_headers: decided.remove_headers,
                    route: decided.route,
                    policy: decided.policy,
                };
                match self.shared.spool.enqueue(&meta, &content).await {
                    Ok(at) => {
                        self.shared.metrics.queued(&p.tenant);
                        info!(
                            event = "smtp.queued",
                            route = %meta.route,
                            queue_id = %id,
                            session = %self.session_id,
                            size = content.len(),
                            recipients = envelope.recipients.len()
                        );
                        self.shared.delivery.submit(meta, content, at);
                        Verdict::AcceptWith(Reply::new(
                            250,
                            Status(2, 0, 0),
                            format!("Ok: queued as {id}"),
                        ))
                    }
                    Err(SpoolError::DiskFull) => {
                        warn!(event = "smtp.spool_full");
                        Verdict::Reject(Reply::new(
                            452,
                            Status(4, 3, 1),
                            "Insufficient system storage",
                        ))
                    }
                    Err(e) => {
                        warn!(event = "smtp.spool_error", cause = %e);
                        Verdict::Reject(Reply::new(
                            451,
                            Status(4, 3, 0),
                            "Temporary local problem, try again later",
                        ))
                    }
                }
            }
        }
    }
}

impl Driver {
    fn session_info(&self, p: &Principal) -> SessionInfo {
        SessionInfo {
            client: self.client.clone(),
            tenant: p.tenant.clone(),
            login: p.login.clone(),
            helo: self.session.helo().unwrap_or_default().to_string(),
        }
    }
}

/// The TLS server name the client asked for (SNI), lower-cased.
fn sni(tls: &tokio_rustls::server::TlsStream<TcpStream>) -> Option<String> {
    tls.get_ref()
        .1
        .server_name()
        .map(|n| n.to_ascii_lowercase())
}

fn verdict(r: Result<(), Reply>) -> Verdict {
    match r {
        Ok(()) => Verdict::Accept,
        Err(reply) => Verdict::Reject(reply),
    }
}

/// The core asked a question that needs a principal before AUTH: it never
/// does, but fail safe rather than panic.
fn internal() -> Verdict {
    Verdict::Reject(Reply::new(451, Status(4, 3, 0), "Internal error"))
}

fn log_reply(r: &Reply) {
    debug!(event = "smtp.reply", code = r.code, status = ?r.status.map(|s| s.to_string()));
}

/// Client-supplied text for logs: control and non-ASCII characters escaped,
/// length bounded. Never log client input raw.
pub fn printable(s: &str) -> String {
    s.chars().take(128).flat_map(char::escape_default).collect()
}
