//! The SMTP session state machine.
//!
//! The driver owns the socket and the clock. It calls [`Session::feed`]
//! with bytes it read and the time, then [`Session::poll`] until it returns
//! `None`, acting on each [`Output`]:
//!
//! - `Reply`: queue the bytes for the client (flush before the next read,
//!   which is what PIPELINING needs);
//! - `Ask`: answer the policy question with [`Session::answer`] before polling
//!   again;
//! - `StartTls`: flush, run the TLS handshake (until
//!   [`Session::poll_timeout`] at most), then call
//!   [`Session::tls_established`];
//! - `Close`: flush and close the connection.
//!
//! `None` means the session needs more input: the driver reads until
//! [`Session::poll_timeout`], and calls [`Session::handle_timeout`] if that
//! time comes first, or [`Session::begin_shutdown`] when the server stops.
//! The deadlines themselves are in [`crate::clock`].

use std::collections::VecDeque;
use std::time::Instant;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use crate::clock::{self, Clock, Expired, Timeouts};
use crate::command::{self, Command};
use crate::data::DataReceiver;
use crate::framing::{LineReceiver, OverlongLine, Take};
use crate::reply::{Reply, Status};

/// Per-listener settings of a session. Defaults are in [`Config::default`].
#[derive(Debug, Clone)]
pub struct Config {
    /// Name used in the greeting and the EHLO reply.
    pub hostname: String,
    /// Largest message accepted, in octets (EHLO `SIZE`). Default 20971520.
    pub max_message_size: usize,
    /// Most recipients per transaction. Default 100.
    pub max_recipients: usize,
    /// Protocol errors (unknown commands, bad syntax) before `421`. Default 10.
    pub max_errors: u32,
    /// Failed authentications before `421`. Default 3.
    pub max_auth_failures: u32,
    /// Whether STARTTLS is offered (false on implicit-TLS listeners).
    pub starttls: bool,
    /// Allow AUTH without TLS. Default false; only for explicitly configured
    /// listeners (tests, trusted networks).
    pub plaintext_auth: bool,
    /// The deadlines (see [`crate::clock`]).
    pub timeouts: Timeouts,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            hostname: "localhost".into(),
            max_message_size: 20_971_520,
            max_recipients: 100,
            max_errors: 10,
            max_auth_failures: 3,
            starttls: true,
            plaintext_auth: false,
            timeouts: Timeouts::default(),
        }
    }
}

/// The SASL mechanism a login used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    Plain,
    Login,
}

impl Mechanism {
    pub fn as_str(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Login => "LOGIN",
        }
    }
}

/// Declared body type (MAIL FROM `BODY=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BodyType {
    #[default]
    SevenBit,
    EightBitMime,
}

/// The `BODY=` value: `7BIT` or `8BITMIME`.
impl std::fmt::Display for BodyType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BodyType::SevenBit => "7BIT",
            BodyType::EightBitMime => "8BITMIME",
        })
    }
}

impl std::str::FromStr for BodyType {
    type Err = String;
    fn from_str(s: &str) -> Result<BodyType, String> {
        match s {
            _ if s.eq_ignore_ascii_case("7BIT") => Ok(BodyType::SevenBit),
            _ if s.eq_ignore_ascii_case("8BITMIME") => Ok(BodyType::EightBitMime),
            _ => Err(format!("{s:?} is not 7BIT or 8BITMIME")),
        }
    }
}

/// The envelope of one transaction.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Envelope {
    /// The client's HELO/EHLO name.
    pub helo: String,
    /// MAIL FROM address, empty for the null sender.
    pub sender: String,
    /// Accepted RCPT TO addresses, in order, without duplicates.
    pub recipients: Vec<String>,
    /// Declared body type.
    pub body: BodyType,
    /// Declared size (MAIL FROM `SIZE=`), if any.
    pub declared_size: Option<u64>,
}

/// A policy question the driver must answer with [`Session::answer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Question {
    /// May this login authenticate?
    Auth {
        mechanism: Mechanism,
        /// Authorization identity (PLAIN only; usually empty).
        authzid: String,
        login: String,
        secret: String,
    },
    /// May this sender send? (MAIL FROM)
    Sender {
        address: String,
        body: BodyType,
        declared_size: Option<u64>,
    },
    /// May this recipient be accepted? (RCPT TO)
    Recipient { address: String },
    /// What to do with this message: the driver inspects, spools and answers
    /// with the final reply (`250 ... queued as ID` or a refusal).
    Message {
        envelope: Envelope,
        content: Vec<u8>,
    },
}

/// The answer to a [`Question`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Accept with the standard reply.
    Accept,
    /// Accept with this reply (for a message: `250 2.0.0 Ok: queued as ID`).
    AcceptWith(Reply),
    /// Refuse with this reply (4xx or 5xx). A `421` also closes the
    /// session: RFC 5321 (4.2.2) gives that code to a server that is
    /// closing the channel.
    Reject(Reply),
}

/// What the driver must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Output {
    Reply(Reply),
    Ask(Question),
    StartTls,
    Close,
}

#[derive(Debug)]
enum Phase {
    Command,
    /// Waiting for a SASL response line.
    Sasl(Sasl),
    Data(DataReceiver),
    /// The rest of a line that outgrew its limit, then back to `resume`
    /// (the command or SASL phase it interrupted).
    Overlong(Box<Phase>),
    /// STARTTLS was answered; no input is read until the handshake is done.
    AwaitTls,
    Closed,
}

#[derive(Debug)]
enum Sasl {
    Plain,
    LoginUser,
    LoginPass(String),
}

/// The question the session is waiting on, with what it needs to apply the
/// verdict.
#[derive(Debug)]
enum Pending {
    Auth,
    Sender(String),
    Recipient(String),
    Message,
}

#[derive(Debug, Default)]
struct Transaction {
    sender: Option<String>,
    body: BodyType,
    declared_size: Option<u64>,
    recipients: Vec<String>,
}

/// One SMTP session, from greeting to close. Contains no I/O and reads no
/// clock: the driver tells it the time.
#[derive(Debug)]
pub struct Session {
    config: Config,
    clock: Clock,
    tls: bool,
    helo: Option<String>,
    authenticated: bool,
    txn: Transaction,
    phase: Phase,
    input: Vec<u8>,
    pos: usize,
    out: VecDeque<Output>,
    awaiting: Option<Pending>,
    errors: u32,
    auth_failures: u32,
    /// The reply for the message being received, when the host refused it
    /// mid-DATA ([`Session::refuse_data`]).
    data_refusal: Option<Reply>,
    discarded_after_starttls: usize,
}

impl Session {
    /// A new session at `now`; `tls` is true on implicit-TLS listeners.
    /// The greeting is the first output.
    pub fn new(config: Config, tls: bool, now: Instant) -> Self {
        let greeting = Reply::plain(220, format!("{} ESMTP mailwit", config.hostname));
        let mut out = VecDeque::new();
        out.push_back(Output::Reply(greeting));
        Session {
            clock: Clock::new(config.timeouts, now),
            config,
            tls,
            helo: None,
            authenticated: false,
            txn: Transaction::default(),
            phase: Phase::Command,
            input: Vec::new(),
            pos: 0,
            out,
            awaiting: None,
            errors: 0,
            auth_failures: 0,
            data_refusal: None,
            discarded_after_starttls: 0,
        }
    }

    /// Hands bytes read from the client at `now` to the session.
    pub fn feed(&mut self, bytes: &[u8], now: Instant) {
        self.clock.tell(now);
        if matches!(self.phase, Phase::AwaitTls | Phase::Closed) {
            // Nothing read in clear text after STARTTLS may reach the TLS
            // session (CVE-2011-0411), and nothing is read after close.
            self.discarded_after_starttls += bytes.len();
            return;
        }
        // What was consumed goes before more arrives, so the buffer holds
        // only an unfinished line (bounded by the line limits) plus this
        // read, however the client's writes split its lines.
        self.input.drain(..self.pos);
        self.pos = 0;
        self.input.extend_from_slice(bytes);
    }

    /// Octets held in the input buffer: right after [`Session::feed`], what
    /// was left unconsumed before it plus what it brought.
    pub fn buffered(&self) -> usize {
        self.input.len()
    }

    /// True when a mail transaction is under way (MAIL given, or in DATA, or
    /// waiting for a verdict): graceful shutdown lets these finish.
    pub fn in_transaction(&self) -> bool {
        self.txn.sender.is_some()
            || matches!(self.phase, Phase::Data(_))
            || matches!(self.awaiting, Some(Pending::Sender(_) | Pending::Message))
    }

    /// True while the client is sending message content.
    pub fn in_data(&self) -> bool {
        matches!(self.phase, Phase::Data(_))
    }

    /// The SIZE the client declared for the current transaction's message.
    pub fn declared_size(&self) -> Option<u64> {
        self.txn.declared_size
    }

    /// Refuses the message being received with `reply`, once its end
    /// arrives: nothing more of it is kept, and what was is dropped. The
    /// host's way to say, mid-DATA, that it cannot hold the message (a
    /// memory budget spent) without breaking the framing.
    pub fn refuse_data(&mut self, reply: Reply) {
        if let Phase::Data(receiver) = &mut self.phase {
            receiver.discard();
            self.data_refusal = Some(reply);
        }
    }

    /// Whether the message being received was refused by the host.
    pub fn data_refused(&self) -> bool {
        self.data_refusal.is_some()
    }

    /// Octets of message content received in the current DATA phase.
    pub fn data_received(&self) -> u64 {
        match &self.phase {
            Phase::Data(r) => r.received(),
            _ => 0,
        }
    }

    /// Whether the session is over.
    pub fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Closed) && self.out.is_empty()
    }

    /// The client's HELO/EHLO name, once given.
    pub fn helo(&self) -> Option<&str> {
        self.helo.as_deref()
    }

    /// Whether a successful AUTH happened in this session (since the last
    /// TLS upgrade).
    pub fn is_authenticated(&self) -> bool {
        self.authenticated
    }

    /// Octets that arrived between STARTTLS and the handshake, and were
    /// thrown away (for the driver's log).
    pub fn discarded_after_starttls(&self) -> usize {
        self.discarded_after_starttls
    }

    /// The TLS handshake after STARTTLS succeeded at `now`. Per RFC 3207
    /// the session forgets everything it knew: a new EHLO is required.
    pub fn tls_established(&mut self, now: Instant) {
        debug_assert!(matches!(self.phase, Phase::AwaitTls));
        self.clock.tell(now);
        self.clock.replied();
        self.tls = true;
        self.helo = None;
        self.authenticated = false;
        self.txn = Transaction::default();
        self.input.clear();
        self.pos = 0;
        self.phase = Phase::Command;
    }

    /// When the session next needs [`Session::handle_timeout`]: the
    /// deadline of what it waits for (command, DATA, TLS handshake), or the
    /// end of the shutdown grace if sooner. `None` once closed.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadline().map(|(at, _)| at)
    }

    fn deadline(&self) -> Option<(Instant, Expired)> {
        let phase = match &self.phase {
            Phase::Closed => return None,
            Phase::AwaitTls => clock::Phase::Handshake,
            Phase::Data(r) => clock::Phase::Data(r.received()),
            Phase::Command | Phase::Sasl(_) | Phase::Overlong(_) => clock::Phase::Command,
        };
        Some(self.clock.next(phase))
    }

    /// The time is `now`: if a deadline has passed, the session ends (a
    /// `421`, or just a close during a TLS handshake) and says which.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<Expired> {
        self.clock.tell(now);
        let (at, which) = self.deadline()?;
        if now < at {
            return None;
        }
        match which {
            Expired::Grace => self.shutdown(),
            Expired::Handshake => {
                self.out.push_back(Output::Close);
                self.phase = Phase::Closed;
            }
            Expired::Command | Expired::Data => self.timeout(),
        }
        Some(which)
    }

    /// The server is stopping, at `now`: an idle session closes with `421`
    /// at its next [`Session::poll`]; a transaction under way gets the
    /// shutdown grace to finish, and the session closes after it.
    pub fn begin_shutdown(&mut self, now: Instant) {
        self.clock.tell(now);
        self.clock.shutdown();
    }

    /// The client missed its deadline.
    pub(crate) fn timeout(&mut self) {
        self.close_with(Reply::new(
            421,
            Status(4, 4, 2),
            format!("{} Error: timeout exceeded", self.config.hostname),
        ));
    }

    /// The server is shutting down.
    pub(crate) fn shutdown(&mut self) {
        self.close_with(Reply::new(
            421,
            Status(4, 3, 2),
            format!("{} Service shutting down", self.config.hostname),
        ));
    }

    fn close_with(&mut self, reply: Reply) {
        if matches!(self.phase, Phase::Closed) {
            return;
        }
        self.out.push_back(Output::Reply(reply));
        self.out.push_back(Output::Close);
        self.phase = Phase::Closed;
    }

    fn reply(&mut self, code: u16, status: Status, text: impl Into<String>) {
        self.out
            .push_back(Output::Reply(Reply::new(code, status, text)));
    }

    fn ask(&mut self, q: Question) {
        self.awaiting = Some(match &q {
            Question::Auth { .. } => Pending::Auth,
            Question::Sender { address, .. } => Pending::Sender(address.clone()),
            Question::Recipient { address } => Pending::Recipient(address.clone()),
            Question::Message { .. } => Pending::Message,
        });
        self.out.push_back(Output::Ask(q));
    }

    /// The next thing the driver must do, or `None` when more input is
    /// needed.
    pub fn poll(&mut self) -> Option<Output> {
        if let Some(o) = self.step() {
            if matches!(o, Output::Reply(_)) {
                self.clock.replied();
            }
            return Some(o);
        }
        // A shutdown waits for the running transaction, nothing else (not
        // for a TLS handshake under way: its own deadline ends it).
        let idle = || {
            self.awaiting.is_none()
                && !self.in_transaction()
                && matches!(
                    self.phase,
                    Phase::Command | Phase::Sasl(_) | Phase::Overlong(_)
                )
        };
        if self.clock.shutting_down() && idle() {
            self.shutdown();
            return self.poll();
        }
        None
    }

    fn step(&mut self) -> Option<Output> {
        loop {
            if let Some(o) = self.out.pop_front() {
                return Some(o);
            }
            if self.awaiting.is_some() {
                debug_assert!(false, "poll() while a question is unanswered");
                return None;
            }
            match &mut self.phase {
                Phase::Closed | Phase::AwaitTls => return None,
                Phase::Data(receiver) => {
                    let n = receiver.feed(&self.input[self.pos..]);
                    match n {
                        None => {
                            self.pos = self.input.len();
                            return None;
                        }
                        Some(n) => {
                            self.pos += n;
                            let Phase::Data(receiver) =
                                std::mem::replace(&mut self.phase, Phase::Command)
                            else {
                                unreachable!()
                            };
                            self.end_of_data(receiver);
                        }
                    }
                }
                Phase::Overlong(_) => {
                    let (n, reply) = OverlongLine.take(&self.input[self.pos..]);
                    self.pos += n;
                    // The rest of the line is yet to come.
                    let reply = reply?;
                    let Phase::Overlong(resume) =
                        std::mem::replace(&mut self.phase, Phase::Command)
                    else {
                        unreachable!()
                    };
                    self.phase = *resume;
                    self.protocol_error(reply);
                }
                Phase::Command | Phase::Sasl(_) => {
                    let pending = &self.input[self.pos..];
                    let receiver = match self.phase {
                        Phase::Sasl(_) => LineReceiver::sasl(),
                        _ => LineReceiver::command(pending),
                    };
                    let (n, taken) = receiver.take(pending);
                    self.pos += n;
                    match taken {
                        Take::Line(line) => match self.phase {
                            Phase::Sasl(_) => self.sasl_line(line),
                            _ => self.command_line(line),
                        },
                        Take::Refused(reply) => self.protocol_error(reply),
                        Take::Overlong => {
                            // What there is was dropped; skip the rest of
                            // the line, answer when it ends.
                            let resume = std::mem::replace(&mut self.phase, Phase::Command);
                            self.phase = Phase::Overlong(Box::new(resume));
                        }
                        Take::More => return None,
                    }
                }
            }
        }
    }

    /// A syntax-level error: replies, counts, and closes after too many.
    fn protocol_error(&mut self, reply: Reply) {
        self.errors += 1;
        if matches!(self.phase, Phase::Sasl(_)) {
            self.phase = Phase::Command;
        }
        self.out.push_back(Output::Reply(reply));
        if self.errors >= self.config.max_errors {
            self.close_with(Reply::new(
                421,
                Status(4, 7, 0),
                "Too many errors, closing connection",
            ));
        }
    }

    fn command_line(&mut self, line: String) {
        let cmd = match command::parse(&line) {
            Ok(c) => c,
            Err(e) => return self.protocol_error(e.reply()),
        };
        match cmd {
            Command::Ehlo(name) => self.ehlo(name, true),
            Command::Helo(name) => self.ehlo(name, false),
            Command::StartTls => self.starttls(),
            Command::Auth { mechanism, initial } => self.auth(&mechanism, initial),
            Command::Mail { address, params } => self.mail(address, params),
            Command::Rcpt { address, params } => self.rcpt(address, params),
            Command::Data => self.data(),
            Command::Rset => {
                self.txn = Transaction::default();
                self.reply(250, Status(2, 0, 0), "Ok");
            }
            Command::Noop => self.reply(250, Status(2, 0, 0), "Ok"),
            Command::Quit => self.close_with(Reply::new(221, Status(2, 0, 0), "Bye")),
            Command::Help => self.out.push_back(Output::Reply(Reply {
                code: 214,
                status: Some(Status(2, 0, 0)),
                lines: vec![
                    "Commands supported:".into(),
                    "EHLO HELO STARTTLS AUTH MAIL RCPT DATA".into(),
                    "RSET NOOP QUIT HELP VRFY EXPN".into(),
                ],
            })),
            Command::Vrfy => self.reply(
                252,
                Status(2, 5, 0),
                "Cannot VRFY user, but will accept message and attempt delivery",
            ),
            Command::Expn => self.reply(502, Status(5, 5, 1), "EXPN not available"),
        }
    }

    fn ehlo(&mut self, name: String, extended: bool) {
        self.txn = Transaction::default();
        self.helo = Some(name);
        let host = self.config.hostname.clone();
        if !extended {
            self.out.push_back(Output::Reply(Reply::plain(250, host)));
            return;
        }
        let mut lines = vec![
            host,
            "PIPELINING".into(),
            format!("SIZE {}", self.config.max_message_size),
            "8BITMIME".into(),
            "ENHANCEDSTATUSCODES".into(),
        ];
        if !self.tls && self.config.starttls {
            lines.push("STARTTLS".into());
        }
        if self.auth_allowed() {
            lines.push("AUTH PLAIN LOGIN".into());
        }
        lines.push("HELP".into());
        self.out.push_back(Output::Reply(Reply {
            code: 250,
            status: None,
            lines,
        }));
    }

    fn auth_allowed(&self) -> bool {
        self.tls || self.config.plaintext_auth
    }

    fn starttls(&mut self) {
        if self.tls || !self.config.starttls {
            return self.reply(503, Status(5, 5, 1), "TLS already active");
        }
        if self.helo.is_none() {
            return self.reply(503, Status(5, 5, 1), "Send EHLO first");
        }
        self.out.push_back(Output::Reply(Reply::new(
            220,
            Status(2, 0, 0),
            "Ready to start TLS",
        )));
        self.out.push_back(Output::StartTls);
        self.discarded_after_starttls += self.input.len() - self.pos;
        self.input.clear();
        self.pos = 0;
        self.phase = Phase::AwaitTls;
        self.clock.handshake_started();
    }

    fn auth(&mut self, mechanism: &str, initial: Option<String>) {
        if !self.auth_allowed() {
            return self.reply(530, Status(5, 7, 0), "Must issue a STARTTLS command first");
        }
        if self.helo.is_none() {
            return self.reply(503, Status(5, 5, 1), "Send EHLO first");
        }
        if self.authenticated {
            return self.reply(503, Status(5, 5, 1), "Already authenticated");
        }
        if self.txn.sender.is_some() {
            return self.reply(
                503,
                Status(5, 5, 1),
                "AUTH not allowed during a mail transaction",
            );
        }
        match (mechanism, initial) {
            ("PLAIN", None) => {
                self.out.push_back(Output::Reply(Reply::plain(334, "")));
                self.phase = Phase::Sasl(Sasl::Plain);
            }
            ("PLAIN", Some(ir)) => self.plain_response(&ir),
            ("LOGIN", None) => {
                self.out
                    .push_back(Output::Reply(Reply::plain(334, "VXNlcm5hbWU6")));
                self.phase = Phase::Sasl(Sasl::LoginUser);
            }
            ("LOGIN", Some(ir)) => self.login_user(&ir),
            _ => self.reply(504, Status(5, 5, 4), "Unrecognized authentication type"),
        }
    }

    fn sasl_line(&mut self, line: String) {
        let Phase::Sasl(step) = std::mem::replace(&mut self.phase, Phase::Command) else {
            unreachable!()
        };
        if line.trim() == "*" {
            return self.reply(501, Status(5, 0, 0), "Authentication cancelled");
        }
        match step {
            Sasl::Plain => self.plain_response(&line),
            Sasl::LoginUser => self.login_user(&line),
            Sasl::LoginPass(user) => match decode_b64_utf8(&line) {
                Some(secret) => self.ask(Question::Auth {
                    mechanism: Mechanism::Login,
                    authzid: String::new(),
                    login: user,
                    secret,
                }),
                None => self.bad_sasl(),
            },
        }
    }

    fn bad_sasl(&mut self) {
        self.protocol_error(Reply::new(
            501,
            Status(5, 5, 2),
            "Invalid SASL response encoding",
        ));
    }

    fn plain_response(&mut self, b64: &str) {
        let decoded = if b64.trim() == "=" {
            Some(String::new())
        } else {
            decode_b64_utf8(b64)
        };
        let Some(decoded) = decoded else {
            return self.bad_sasl();
        };
        let mut parts = decoded.split('\0');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(authzid), Some(login), Some(secret), None) => self.ask(Question::Auth {
                mechanism: Mechanism::Plain,
                authzid: authzid.to_string(),
                login: login.to_string(),
                secret: secret.to_string(),
            }),
            _ => self.bad_sasl(),
        }
    }

    fn login_user(&mut self, b64: &str) {
        match decode_b64_utf8(b64) {
            Some(user) => {
                self.out
                    .push_back(Output::Reply(Reply::plain(334, "UGFzc3dvcmQ6")));
                self.phase = Phase::Sasl(Sasl::LoginPass(user));
            }
            None => self.bad_sasl(),
        }
    }

    fn mail(&mut self, address: String, params: command::Params) {
        if self.helo.is_none() {
            return self.reply(503, Status(5, 5, 1), "Send HELO/EHLO first");
        }
        if !self.authenticated {
            return self.reply(530, Status(5, 7, 0), "Authentication required");
        }
        if self.txn.sender.is_some() {
            return self.reply(503, Status(5, 5, 1), "Nested MAIL command");
        }
        let mut body = BodyType::SevenBit;
        let mut declared_size = None;
        for (key, value) in params {
            match (key.as_str(), value.as_deref()) {
                ("SIZE", Some(v)) => match v.parse::<u64>() {
                    Ok(n) if n > self.config.max_message_size as u64 => {
                        return self.reply(
                            552,
                            Status(5, 3, 4),
                            "Message size exceeds fixed maximum message size",
                        );
                    }
                    Ok(n) => declared_size = Some(n),
                    Err(_) => return self.reply(501, Status(5, 5, 4), "Bad SIZE parameter"),
                },
                ("BODY", Some(v)) if v.eq_ignore_ascii_case("7BIT") => body = BodyType::SevenBit,
                ("BODY", Some(v)) if v.eq_ignore_ascii_case("8BITMIME") => {
                    body = BodyType::EightBitMime
                }
                ("BODY", _) => return self.reply(501, Status(5, 5, 4), "Bad BODY parameter"),
                // RFC 4954 5: a client may pass on the submitter; we ignore it.
                ("AUTH", Some(_)) => {}
                _ => return self.reply(555, Status(5, 5, 4), "Unsupported MAIL parameter"),
            }
        }
        self.txn.body = body;
        self.txn.declared_size = declared_size;
        self.ask(Question::Sender {
            address,
            body,
            declared_size,
        });
    }

    fn rcpt(&mut self, address: String, params: command::Params) {
        if self.txn.sender.is_none() {
            return self.reply(503, Status(5, 5, 1), "Need MAIL command");
        }
        if !params.is_empty() {
            return self.reply(555, Status(5, 5, 4), "Unsupported RCPT parameter");
        }
        if self.txn.recipients.len() >= self.config.max_recipients {
            return self.reply(452, Status(4, 5, 3), "Too many recipients");
        }
        self.ask(Question::Recipient { address });
    }

    fn data(&mut self) {
        if self.txn.sender.is_none() {
            return self.reply(503, Status(5, 5, 1), "Need MAIL command");
        }
        if self.txn.recipients.is_empty() {
            return self.reply(554, Status(5, 5, 1), "No valid recipients");
        }
        self.out.push_back(Output::Reply(Reply::plain(
            354,
            "End data with <CR><LF>.<CR><LF>",
        )));
        self.phase = Phase::Data(DataReceiver::new(self.config.max_message_size));
        self.clock.data_started();
    }

    fn end_of_data(&mut self, receiver: DataReceiver) {
        let (content, defects) = receiver.finish();
        let txn = std::mem::take(&mut self.txn);
        if let Some(reply) = self.data_refusal.take() {
            self.out.push_back(Output::Reply(reply));
            return;
        }
        if defects.oversized {
            return self.reply(
                552,
                Status(5, 3, 4),
                "Message size exceeds fixed maximum message size",
            );
        }
        if defects.bare_line_ending {
            return self.reply(
                550,
                Status(5, 6, 0),
                "Message contains bare CR or LF; lines must end with CRLF",
            );
        }
        if defects.nul {
            return self.reply(550, Status(5, 6, 0), "Message contains NUL octets");
        }
        let envelope = Envelope {
            helo: self.helo.clone().unwrap_or_default(),
            sender: txn.sender.unwrap_or_default(),
            recipients: txn.recipients,
            body: txn.body,
            declared_size: txn.declared_size,
        };
        self.ask(Question::Message { envelope, content });
    }

    /// Answers the last [`Output::Ask`], at `now`.
    pub fn answer(&mut self, verdict: Verdict, now: Instant) {
        self.clock.tell(now);
        let Some(pending) = self.awaiting.take() else {
            debug_assert!(false, "answer() without a question");
            return;
        };
        let accepted = !matches!(verdict, Verdict::Reject(_));
        let standard = match pending {
            Pending::Sender(sender) => {
                if accepted {
                    self.txn.sender = Some(sender);
                } else {
                    self.txn = Transaction::default();
                }
                Reply::new(250, Status(2, 1, 0), "Sender address accepted")
            }
            Pending::Recipient(rcpt) => {
                if accepted && !self.txn.recipients.contains(&rcpt) {
                    self.txn.recipients.push(rcpt);
                }
                Reply::new(250, Status(2, 1, 5), "Recipient address accepted")
            }
            Pending::Message => Reply::new(250, Status(2, 0, 0), "Ok: queued"),
            Pending::Auth => {
                if accepted {
                    self.authenticated = true;
                } else {
                    self.auth_failures += 1;
                }
                Reply::new(235, Status(2, 7, 0), "Authentication successful")
            }
        };
        let reply = match verdict {
            Verdict::Accept => standard,
            Verdict::AcceptWith(r) | Verdict::Reject(r) => r,
        };
        if !accepted && reply.code == 421 {
            return self.close_with(reply);
        }
        self.out.push_back(Output::Reply(reply));
        if !accepted && !self.authenticated && self.auth_failures >= self.config.max_auth_failures {
            self.close_with(Reply::new(
                421,
                Status(4, 7, 0),
                "Too many authentication failures",
            ));
        }
    }
}

fn decode_b64_utf8(s: &str) -> Option<String> {
    let bytes = B64.decode(s.trim()).ok()?;
    String::from_utf8(bytes).ok()
}
