//! The session driver: the only code that touches a client's socket.
//!
//! It feeds bytes and the time to the sans-IO [`Session`], writes its
//! replies, runs the TLS upgrade, keeps a large message's content within
//! the memory budget, and takes the core's questions to the session's
//! [`Submission`], which decides. The deadlines are the session's
//! (`mailwit_smtp::clock`): the driver sleeps until the time the session
//! names and tells it when it has come. Only the implicit-TLS handshake,
//! before a session exists, has its timeout here.

use mailwit_smtp::{Expired, Output, Question, Reply, Session, Verdict};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until, timeout, timeout_at};
use tracing::{Instrument, debug, info, warn};

use crate::budget::{self, ContentBudget};
use crate::config::Limits;
use crate::policy::ClientInfo;
use crate::replies;
use crate::submission::{Services, Submission};

/// What a session needs from the server besides its [`Submission`].
pub struct Context {
    /// The protocol core's settings for this listener and these limits.
    pub core: mailwit_smtp::Config,
    /// The `[limits]` in force when the session started.
    pub limits: Arc<Limits>,
    pub tls: tokio_rustls::TlsAcceptor,
    /// The ceiling on message content in memory.
    pub budget: Arc<ContentBudget>,
    pub listener: String,
    pub implicit_tls: bool,
}

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
    ctx: Context,
    services: Arc<Services>,
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
        listener = %ctx.listener,
        tenant = tracing::field::Empty
    );
    async move {
        let mut conn = Conn::Plain(tcp);
        let mut server_name = None;
        if ctx.implicit_tls {
            match timeout(
                ctx.limits.tls_handshake_timeout(),
                ctx.tls.accept(take_tcp(&mut conn)),
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
            let reply = replies::too_many_connections();
            info!(event = "smtp.refused", reason = "connection limit");
            let _ = conn.write_all(reply.to_wire().as_bytes()).await;
            conn.shutdown().await;
            return;
        }
        info!(event = "smtp.connect");
        let client = ClientInfo {
            ip: peer.ip(),
            port: peer.port(),
            listener: ctx.listener.clone(),
            tls: ctx.implicit_tls,
            server_name,
        };
        let mut d = Driver {
            session: Session::new(ctx.core.clone(), ctx.implicit_tls, now()),
            submission: Submission::new(services, client, peer, session_id),
            ctx,
            conn,
            out: Vec::new(),
            room: None,
            refused: 0,
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
    ctx: Context,
    session: Session,
    submission: Submission,
    conn: Conn,
    out: Vec<u8>,
    /// Room for the message being received, once it is larger than
    /// [`budget::SMALL`]; given back when the message's bytes are.
    room: Option<budget::Reservation>,
    /// Transaction steps refused in a row (see [`Driver::pace`]).
    refused: u32,
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
                        let helo = self.session.helo().unwrap_or_default();
                        let step = Step::of(&q);
                        let verdict = self.submission.answer(q, helo).await;
                        self.pace(step, &verdict).await;
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
                        match timeout_at(until, self.ctx.tls.accept(tcp)).await {
                            Ok(Ok(tls)) => {
                                self.submission.tls_started(sni(&tls));
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

    /// Holds a refusal back once the session has had `[limits]
    /// refusals_before_delay` refused transaction steps in a row, as
    /// Postfix's `smtpd_soft_error_limit` and `smtpd_error_sleep_time` do:
    /// a client that asks again at once after each refusal (a quarantined
    /// tenant's application, a script) then paces itself, instead of
    /// costing the server a transaction per round trip. An accepted
    /// recipient or message starts the count again; an accepted MAIL does
    /// not, or a client whose every RCPT is refused would never be held.
    /// A `421` closes the session and is not held; logins have their own
    /// limits. A session holding a refusal notices a shutdown after it.
    async fn pace(&mut self, step: Step, verdict: &Verdict) {
        match (step, verdict) {
            (Step::Login, _) => {}
            (_, Verdict::Reject(r)) if r.code != 421 => {
                self.refused = self.refused.saturating_add(1);
                if let Some(delay) = self.ctx.limits.refusal_delay(self.refused) {
                    self.submission.refusal_delayed();
                    tokio::time::sleep(delay).await;
                }
            }
            (Step::Recipient | Step::Message, Verdict::Accept | Verdict::AcceptWith(_)) => {
                self.refused = 0
            }
            _ => {}
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
                self.session.refuse_data(replies::over_declared_size());
            }
            return;
        }
        let max = self.ctx.limits.max_message_size;
        let size = self
            .session
            .declared_size()
            .map_or(max, |d| (d as usize).clamp(budget::SMALL, max));
        let tenant = self.submission.tenant();
        let wait = deadline.saturating_duration_since(Instant::now());
        let reserved = timeout(wait, self.ctx.budget.reserve(tenant, 2 * size)).await;
        match reserved {
            Ok(Ok(room)) => self.room = Some(room),
            _ => {
                warn!(
                    event = "smtp.memory_full",
                    size, "no room for the message's content"
                );
                self.session.refuse_data(replies::memory_full());
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
}

/// What a question asked, for [`Driver::pace`].
#[derive(Clone, Copy)]
enum Step {
    Login,
    Sender,
    Recipient,
    Message,
}

impl Step {
    fn of(q: &Question) -> Step {
        match q {
            Question::Auth { .. } => Step::Login,
            Question::Sender { .. } => Step::Sender,
            Question::Recipient { .. } => Step::Recipient,
            Question::Message { .. } => Step::Message,
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

fn log_reply(r: &Reply) {
    debug!(event = "smtp.reply", code = r.code, status = ?r.status.map(|s| s.to_string()));
}
