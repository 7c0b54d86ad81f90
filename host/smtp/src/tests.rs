//! Session tests: a scripted client against the state machine, no sockets.

use std::time::{Duration, Instant};

use crate::*;

/// Answers questions like a permissive policy: login `u`/`p` only, message
/// queued as `ID1`, `ID2`, ...
struct Harness {
    s: Session,
    /// Simulated time: what the harness tells the session.
    now: Instant,
    wire: String,
    queued: Vec<(Envelope, Vec<u8>)>,
    tls_requests: usize,
    closed: bool,
}

impl Harness {
    fn new(config: Config, tls: bool) -> Self {
        let now = Instant::now();
        let mut h = Harness {
            s: Session::new(config, tls, now),
            now,
            wire: String::new(),
            queued: Vec::new(),
            tls_requests: 0,
            closed: false,
        };
        h.run();
        h
    }

    /// A plaintext-AUTH session, already past EHLO and AUTH.
    fn authed() -> Self {
        let mut h = Harness::new(plain_auth(), false);
        h.send(b"EHLO c.example\r\nAUTH PLAIN AHUAcA==\r\n");
        assert!(
            h.wire.ends_with("235 2.7.0 Authentication successful\r\n"),
            "{}",
            h.wire
        );
        h.wire.clear();
        h
    }

    fn run(&mut self) {
        while let Some(o) = self.s.poll() {
            match o {
                Output::Reply(r) => self.wire.push_str(&r.to_wire()),
                Output::StartTls => self.tls_requests += 1,
                Output::Close => self.closed = true,
                Output::Ask(q) => {
                    let v = match q {
                        Question::Auth { login, secret, .. } => {
                            if login == "u" && secret == "p" {
                                Verdict::Accept
                            } else if login == "banned" {
                                Verdict::Reject(Reply::new(
                                    421,
                                    Status(4, 7, 0),
                                    "Too many failed logins",
                                ))
                            } else {
                                Verdict::Reject(Reply::new(
                                    535,
                                    Status(5, 7, 8),
                                    "Authentication credentials invalid",
                                ))
                            }
                        }
                        Question::Sender { address, .. } if address.ends_with("@bad.example") => {
                            Verdict::Reject(Reply::new(550, Status(5, 7, 1), "Sender not allowed"))
                        }
                        Question::Recipient { address } if address.starts_with("nobody@") => {
                            Verdict::Reject(Reply::new(550, Status(5, 1, 1), "No such user"))
                        }
                        Question::Message { envelope, content } => {
                            self.queued.push((envelope, content));
                            Verdict::AcceptWith(Reply::new(
                                250,
                                Status(2, 0, 0),
                                format!("Ok: queued as ID{}", self.queued.len()),
                            ))
                        }
                        _ => Verdict::Accept,
                    };
                    self.s.answer(v, self.now);
                }
            }
        }
    }

    fn send(&mut self, bytes: &[u8]) -> &str {
        self.s.feed(bytes, self.now);
        self.run();
        &self.wire
    }

    fn take(&mut self) -> String {
        std::mem::take(&mut self.wire)
    }
}

fn plain_auth() -> Config {
    Config {
        plaintext_auth: true,
        ..Config::default()
    }
}

fn codes(wire: &str) -> Vec<&str> {
    wire.lines()
        .filter(|l| l.as_bytes().get(3) == Some(&b' '))
        .map(|l| &l[..9.min(l.len())])
        .collect()
}

#[test]
fn full_transaction_pipelined() {
    let mut h = Harness::authed();
    h.send(b"MAIL FROM:<a@x.example> SIZE=20 BODY=8BITMIME\r\nRCPT TO:<b@y.example>\r\nRCPT TO:<c@y.example>\r\nDATA\r\n");
    h.send(b"Subject: hi\r\n\r\n..x\r\n.\r\nQUIT\r\n");
    assert_eq!(
        h.take(),
        "250 2.1.0 Sender address accepted\r\n250 2.1.5 Recipient address accepted\r\n250 2.1.5 Recipient address accepted\r\n\
         354 End data with <CR><LF>.<CR><LF>\r\n250 2.0.0 Ok: queued as ID1\r\n221 2.0.0 Bye\r\n"
    );
    assert!(h.closed);
    let (env, content) = &h.queued[0];
    assert_eq!(env.sender, "a@x.example");
    assert_eq!(env.recipients, vec!["b@y.example", "c@y.example"]);
    assert_eq!(env.body, BodyType::EightBitMime);
    assert_eq!(env.declared_size, Some(20));
    assert_eq!(content, b"Subject: hi\r\n\r\n.x\r\n");
}

#[test]
fn ehlo_advertises_by_tls_state() {
    let mut h = Harness::new(Config::default(), false);
    let w = h.send(b"EHLO c\r\n").to_string();
    assert!(w.starts_with("220 localhost ESMTP"));
    for cap in [
        "PIPELINING",
        "SIZE 20971520",
        "8BITMIME",
        "ENHANCEDSTATUSCODES",
        "STARTTLS",
    ] {
        assert!(w.contains(&format!("250-{cap}\r\n")), "{cap} missing: {w}");
    }
    assert!(!w.contains("AUTH"), "AUTH offered before TLS: {w}");
    let mut h = Harness::new(
        Config {
            starttls: false,
            ..Config::default()
        },
        true,
    );
    let w = h.send(b"EHLO c\r\n").to_string();
    assert!(
        w.contains("250-AUTH PLAIN LOGIN\r\n") && !w.contains("STARTTLS"),
        "{w}"
    );
}

#[test]
fn starttls_discards_pipelined_bytes_and_resets() {
    let mut h = Harness::new(Config::default(), false);
    h.send(b"EHLO c\r\n");
    h.take();
    h.send(b"STARTTLS\r\nAUTH PLAIN AHUAcA==\r\nMAIL FROM:<a@x.example>\r\n");
    assert_eq!(h.take(), "220 2.0.0 Ready to start TLS\r\n");
    assert_eq!(h.tls_requests, 1);
    assert!(h.s.discarded_after_starttls() > 0);
    // Bytes arriving before the handshake completes are dropped too.
    h.send(b"RSET\r\n");
    assert_eq!(h.take(), "");
    h.s.tls_established(h.now);
    // The old EHLO no longer counts.
    assert_eq!(codes(h.send(b"AUTH PLAIN AHUAcA==\r\n")), vec!["503 5.5.1"]);
    h.take();
    h.send(b"EHLO c\r\nAUTH PLAIN AHUAcA==\r\nSTARTTLS\r\n");
    assert_eq!(codes(&h.take()), vec!["250 HELP", "235 2.7.0", "503 5.5.1"]);
}

#[test]
fn auth_requires_tls_unless_configured() {
    let mut h = Harness::new(Config::default(), false);
    h.send(b"EHLO c\r\nAUTH PLAIN AHUAcA==\r\nMAIL FROM:<a@x.example>\r\n");
    assert_eq!(
        codes(&h.take()),
        vec!["220 local", "250 HELP", "530 5.7.0", "530 5.7.0"]
    );
}

#[test]
fn auth_login_dialogue_as_in_the_infobip_seed() {
    let mut h = Harness::new(plain_auth(), false);
    h.send(b"EHLO c\r\n");
    h.take();
    assert_eq!(h.send(b"AUTH LOGIN\r\n"), "334 VXNlcm5hbWU6\r\n");
    h.take();
    assert_eq!(h.send(b"dQ==\r\n"), "334 UGFzc3dvcmQ6\r\n");
    h.take();
    assert_eq!(
        h.send(b"cA==\r\n"),
        "235 2.7.0 Authentication successful\r\n"
    );
}

#[test]
fn auth_plain_without_initial_response_and_cancel() {
    let mut h = Harness::new(plain_auth(), false);
    h.send(b"EHLO c\r\nAUTH PLAIN\r\n*\r\nAUTH PLAIN\r\nAHUAcA==\r\n");
    assert_eq!(
        codes(&h.take()),
        vec![
            "220 local",
            "250 HELP",
            "334 ",
            "501 5.0.0",
            "334 ",
            "235 2.7.0"
        ]
    );
}

#[test]
fn repeated_auth_failures_close() {
    let mut h = Harness::new(plain_auth(), false);
    h.send(
        b"EHLO c\r\nAUTH PLAIN AHUAeA==\r\nAUTH PLAIN AHUAeA==\r\nAUTH PLAIN AHUAeA==\r\nNOOP\r\n",
    );
    assert_eq!(
        codes(&h.take()),
        vec![
            "220 local",
            "250 HELP",
            "535 5.7.8",
            "535 5.7.8",
            "535 5.7.8",
            "421 4.7.0"
        ]
    );
    assert!(h.closed);
}

/// A policy that answers 421 (the host's back-off, say) closes the
/// session: nothing after it is read.
#[test]
fn a_421_answer_closes_the_session() {
    let mut h = Harness::new(plain_auth(), false);
    // "\0banned\0x"
    h.send(b"EHLO c\r\nAUTH PLAIN AGJhbm5lZAB4\r\nNOOP\r\n");
    assert_eq!(codes(&h.take()), vec!["220 local", "250 HELP", "421 4.7.0"]);
    assert!(h.closed);
}

#[test]
fn mail_without_auth_is_refused() {
    let mut h = Harness::new(plain_auth(), false);
    h.send(b"EHLO c\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nDATA\r\n");
    assert_eq!(
        codes(&h.take()),
        vec![
            "220 local",
            "250 HELP",
            "530 5.7.0",
            "503 5.5.1",
            "503 5.5.1"
        ]
    );
}

#[test]
fn bad_sequences() {
    let mut h = Harness::authed();
    h.send(b"RCPT TO:<b@y.example>\r\nDATA\r\nMAIL FROM:<a@x.example>\r\nMAIL FROM:<a@x.example>\r\nDATA\r\n");
    assert_eq!(
        codes(&h.take()),
        vec![
            "503 5.5.1",
            "503 5.5.1",
            "250 2.1.0",
            "503 5.5.1",
            "554 5.5.1"
        ]
    );
    let mut h = Harness::new(plain_auth(), false);
    h.send(b"MAIL FROM:<a@x.example>\r\n");
    assert_eq!(codes(&h.take()), vec!["220 local", "503 5.5.1"]);
}

#[test]
fn sender_refusal_resets_transaction() {
    let mut h = Harness::authed();
    h.send(b"MAIL FROM:<a@bad.example>\r\nRCPT TO:<b@y.example>\r\n");
    assert_eq!(codes(&h.take()), vec!["550 5.7.1", "503 5.5.1"]);
}

#[test]
fn size_limits() {
    let mut h = Harness::new(
        Config {
            max_message_size: 10,
            plaintext_auth: true,
            ..Config::default()
        },
        false,
    );
    h.send(b"EHLO c\r\nAUTH PLAIN AHUAcA==\r\nMAIL FROM:<a@x.example> SIZE=11\r\n");
    assert_eq!(codes(&h.take())[3], "552 5.3.4");
    h.send(b"MAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nDATA\r\n0123456789abc\r\n.\r\nNOOP\r\n");
    assert_eq!(
        codes(&h.take()),
        vec![
            "250 2.1.0",
            "250 2.1.5",
            "354 End d",
            "552 5.3.4",
            "250 2.0.0"
        ]
    );
    assert!(h.queued.is_empty());
}

#[test]
fn too_many_recipients_keeps_earlier_ones() {
    let mut h = Harness::new(
        Config {
            max_recipients: 2,
            plaintext_auth: true,
            ..Config::default()
        },
        false,
    );
    h.send(b"EHLO c\r\nAUTH PLAIN AHUAcA==\r\nMAIL FROM:<a@x.example>\r\n");
    h.take();
    h.send(b"RCPT TO:<1@y.example>\r\nRCPT TO:<2@y.example>\r\nRCPT TO:<3@y.example>\r\nDATA\r\nx\r\n.\r\n");
    assert_eq!(
        codes(&h.take()),
        vec![
            "250 2.1.5",
            "250 2.1.5",
            "452 4.5.3",
            "354 End d",
            "250 2.0.0"
        ]
    );
    assert_eq!(h.queued[0].0.recipients, vec!["1@y.example", "2@y.example"]);
}

#[test]
fn long_line_is_bounded() {
    let mut h = Harness::authed();
    let mut long = b"NOOP ".to_vec();
    long.extend(std::iter::repeat_n(b'a', 100_000));
    h.send(&long);
    // The buffer did not keep the line.
    assert!(h.s.data_received() == 0);
    h.send(b"\r\nNOOP\r\n");
    assert_eq!(codes(&h.take()), vec!["500 5.5.2", "250 2.0.0"]);
    // 510 octets + CRLF = 512 is fine; 511 + CRLF is not.
    let ok = format!("NOOP {}\r\n", "a".repeat(505));
    let bad = format!("NOOP {}\r\n", "a".repeat(506));
    h.send(ok.as_bytes());
    h.send(bad.as_bytes());
    let w = h.take();
    assert_eq!(codes(&w), vec!["250 2.0.0", "500 5.5.2"], "{w}");
}

#[test]
fn nul_and_8bit_in_commands() {
    let mut h = Harness::authed();
    h.send(b"NOOP\x00\r\nMAIL FROM:<\xc3\xa9@x.example>\r\nNO\rOP\r\n");
    assert_eq!(
        codes(&h.take()),
        vec!["500 5.5.2", "500 5.5.2", "500 5.5.2"]
    );
}

#[test]
fn too_many_unknown_commands() {
    let mut h = Harness::authed();
    for _ in 0..10 {
        h.send(b"BOGUS\r\n");
    }
    let w = h.take();
    assert_eq!(
        codes(&w)
            .iter()
            .filter(|c| c.starts_with("500 5.5.1"))
            .count(),
        10
    );
    assert!(w.ends_with("421 4.7.0 Too many errors, closing connection\r\n"));
    assert!(h.closed);
}

#[test]
fn smuggling_never_yields_a_second_message() {
    for seq in [
        &b"\n.\n"[..],
        b"\n.\r\n",
        b"\r\n.\n",
        b"\r.\r\n",
        b"\r\n.\r",
        b"\r\n\x00.\r\n",
    ] {
        let mut h = Harness::authed();
        let mut input = b"MAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nDATA\r\nSubject: one\r\n\r\nfirst".to_vec();
        input.extend_from_slice(seq);
        input.extend_from_slice(b"MAIL FROM:<evil@x.example>\r\nRCPT TO:<victim@y.example>\r\nDATA\r\nSubject: smuggled\r\n\r\nsecond\r\n.\r\n");
        h.send(&input);
        assert!(h.queued.is_empty(), "{seq:?} queued {:?}", h.queued);
        assert!(codes(&h.take()).contains(&"550 5.6.0"), "{seq:?}");
        // The next (real) transaction works and is the only message.
        h.send(b"MAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nDATA\r\nSubject: two\r\n\r\nok\r\n.\r\n");
        assert_eq!(h.queued.len(), 1, "{seq:?}");
        assert_eq!(h.queued[0].1, b"Subject: two\r\n\r\nok\r\n");
    }
}

/// Found by the session fuzz target: a command line may end in a bare LF,
/// DATA's too, and its data starts right after it, so `DATA\n.\r\n` is an
/// empty message with no `CRLF.CRLF` in the input. Inside the data only
/// `CRLF.CRLF` ends it (above).
#[test]
fn a_data_command_ended_by_a_bare_lf_starts_the_data_at_once() {
    let mut h = Harness::authed();
    h.send(b"MAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\ndata\n.\r\n");
    assert_eq!(
        codes(&h.take()),
        ["250 2.1.0", "250 2.1.5", "354 End d", "250 2.0.0"]
    );
    assert_eq!(h.queued.len(), 1);
    assert_eq!(h.queued[0].1, b"");
}

#[test]
fn help_vrfy_expn_rset_noop() {
    let mut h = Harness::authed();
    h.send(b"HELP\r\nVRFY x\r\nEXPN x\r\nRSET\r\nNOOP\r\n");
    let w = h.take();
    assert!(w.starts_with("214-2.0.0 Commands supported:\r\n"), "{w}");
    assert_eq!(
        codes(&w),
        vec![
            "214 2.0.0",
            "252 2.5.0",
            "502 5.5.1",
            "250 2.0.0",
            "250 2.0.0"
        ]
    );
}

#[test]
fn timeout_and_shutdown_replies() {
    let mut h = Harness::authed();
    h.s.timeout();
    h.run();
    assert_eq!(h.take(), "421 4.4.2 localhost Error: timeout exceeded\r\n");
    assert!(h.closed && h.s.is_closed());
    let mut h = Harness::authed();
    h.send(b"MAIL FROM:<a@x.example>\r\n");
    assert!(h.s.in_transaction());
    h.s.shutdown();
    h.run();
    assert!(
        h.take()
            .ends_with("421 4.3.2 localhost Service shutting down\r\n")
    );
}

#[test]
fn byte_by_byte_feeding_matches() {
    let script =
        b"MAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nDATA\r\nS: x\r\n\r\n.\r\nQUIT\r\n";
    let mut whole = Harness::authed();
    whole.send(script);
    let mut bytes = Harness::authed();
    for b in script {
        bytes.send(std::slice::from_ref(b));
    }
    assert_eq!(whole.wire, bytes.wire);
    assert_eq!(whole.queued, bytes.queued);
}

/// The host refuses a message mid-DATA (its memory budget spent): the rest
/// is read and dropped, the refusal answers the final dot, nothing is
/// queued, and the session goes on.
#[test]
fn a_message_refused_mid_data_is_read_to_its_end_then_answered() {
    let mut h = Harness::authed();
    h.send(b"MAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nDATA\r\nSubject: big\r\n\r\nfirst part\r\n");
    assert!(h.s.in_data());
    h.s.refuse_data(Reply::new(
        452,
        Status(4, 3, 1),
        "Insufficient system storage",
    ));
    h.send(b"more of it\r\n.\r\nNOOP\r\n");
    assert_eq!(
        codes(&h.take()),
        vec![
            "250 2.1.0",
            "250 2.1.5",
            "354 End d",
            "452 4.3.1",
            "250 2.0.0"
        ]
    );
    assert!(h.queued.is_empty());
    // The next message is kept as usual.
    h.send(b"MAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nDATA\r\nok\r\n.\r\n");
    assert_eq!(h.queued.len(), 1);
    assert_eq!(h.queued[0].1, b"ok\r\n");
}

#[test]
fn mechanism_names() {
    assert_eq!(Mechanism::Plain.as_str(), "PLAIN");
    assert_eq!(Mechanism::Login.as_str(), "LOGIN");
}

/// What the driver asks the session between events, step by step.
#[test]
fn state_queries_follow_the_dialogue() {
    let mut h = Harness::new(plain_auth(), false);
    let s = &h.s;
    assert_eq!(
        (
            s.helo(),
            s.is_authenticated(),
            s.in_transaction(),
            s.in_data()
        ),
        (None, false, false, false)
    );
    assert_eq!(
        (s.declared_size(), s.data_received(), s.data_refused()),
        (None, 0, false)
    );
    assert!(!s.is_closed());
    h.send(b"EHLO c.example\r\n");
    assert_eq!(h.s.helo(), Some("c.example"));
    assert!(!h.s.is_authenticated());
    h.send(b"AUTH PLAIN AHUAcA==\r\n");
    assert!(h.s.is_authenticated());
    assert!(!h.s.in_transaction());
    h.send(b"MAIL FROM:<a@x.example> SIZE=1234\r\n");
    assert!(h.s.in_transaction() && !h.s.in_data());
    assert_eq!(h.s.declared_size(), Some(1234));
    h.send(b"RCPT TO:<b@y.example>\r\nDATA\r\n");
    assert!(h.s.in_data() && h.s.in_transaction());
    assert_eq!(h.s.data_received(), 0);
    h.send(b"0123456789");
    assert_eq!(h.s.data_received(), 10);
    h.send(b"\r\n.\r\n");
    assert!(!h.s.in_data() && !h.s.in_transaction());
    assert_eq!((h.s.data_received(), h.s.declared_size()), (0, None));
    assert_eq!(h.queued.len(), 1);
    h.send(b"QUIT\r\n");
    assert!(h.closed);
    assert!(h.s.is_closed());
}

/// While the verdict on MAIL FROM is awaited, a transaction is under way
/// (graceful shutdown waits for it), though no sender is set yet.
#[test]
fn a_transaction_is_under_way_while_its_sender_is_being_decided() {
    let now = Instant::now();
    let mut s = Session::new(plain_auth(), false, now);
    s.feed(b"EHLO c\r\nAUTH PLAIN AHUAcA==\r\n", now);
    let ask = |s: &mut Session| loop {
        match s.poll() {
            Some(Output::Ask(q)) => return q,
            Some(_) => {}
            None => panic!("no question"),
        }
    };
    assert!(matches!(ask(&mut s), Question::Auth { .. }));
    s.answer(Verdict::Accept, now);
    s.feed(b"MAIL FROM:<a@x.example>\r\n", now);
    assert!(matches!(ask(&mut s), Question::Sender { .. }));
    assert!(s.in_transaction());
    s.answer(Verdict::Reject(Reply::new(550, Status(5, 7, 1), "no")), now);
    while s.poll().is_some() {}
    assert!(!s.in_transaction());
}

#[test]
fn a_refused_data_phase_says_so_until_its_end() {
    let mut h = Harness::authed();
    h.send(b"MAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nDATA\r\nhalf");
    assert!(!h.s.data_refused());
    h.s.refuse_data(Reply::new(452, Status(4, 3, 1), "No room"));
    assert!(h.s.data_refused());
    h.take();
    h.send(b" and the rest\r\n.\r\n");
    assert_eq!(h.take(), "452 4.3.1 No room\r\n");
    assert!(!h.s.data_refused());
    assert!(h.queued.is_empty());
    // Outside DATA there is nothing to refuse.
    h.s.refuse_data(Reply::new(452, Status(4, 3, 1), "No room"));
    assert!(!h.s.data_refused());
}

#[test]
fn bytes_after_starttls_are_counted_exactly() {
    let mut h = Harness::new(Config::default(), false);
    h.send(b"EHLO c\r\nSTARTTLS\r\nNOOP\r\n");
    assert_eq!(h.s.discarded_after_starttls(), 6);
    h.send(b"RSET\r\n");
    assert_eq!(h.s.discarded_after_starttls(), 12);
}

/// A command line may be 512 octets with its CRLF; an AUTH line (and a
/// SASL response) 12288.
#[test]
fn line_limits_are_exact() {
    let noop = |len: usize| {
        let mut line = b"NOOP ".to_vec();
        line.resize(len - 2, b'a');
        line.extend_from_slice(b"\r\n");
        line
    };
    let mut h = Harness::new(Config::default(), false);
    h.take();
    h.send(&noop(MAX_COMMAND_LINE));
    assert_eq!(codes(&h.take()), vec!["250 2.0.0"]);
    h.send(&noop(MAX_COMMAND_LINE + 1));
    assert_eq!(codes(&h.take()), vec!["500 5.5.2"]);
    // Too long before its end arrives: dropped at once (the no-LF path),
    // answered when it ends.
    let line = noop(2 * MAX_COMMAND_LINE);
    h.send(&line[..MAX_COMMAND_LINE + 1]);
    assert_eq!(
        (h.take().as_str(), h.s.buffered()),
        ("", MAX_COMMAND_LINE + 1)
    );
    h.send(&line[MAX_COMMAND_LINE + 1..]);
    assert_eq!(codes(&h.take()), vec!["500 5.5.2"]);
    h.send(b"NOOP\r\n");
    assert_eq!(codes(&h.take()), vec!["250 2.0.0"]);
    let line = noop(MAX_COMMAND_LINE);
    h.send(&line[..MAX_COMMAND_LINE - 1]);
    h.send(&line[MAX_COMMAND_LINE - 1..]);
    assert_eq!(codes(&h.take()), vec!["250 2.0.0"]);

    // An AUTH line longer than a command line is fine, outside SASL too.
    let mut h = Harness::new(plain_auth(), false);
    h.send(b"EHLO c\r\n");
    h.take();
    let mut auth = b"AUTH PLAIN ".to_vec();
    auth.resize(2000, b'A');
    auth.extend_from_slice(b"\r\n");
    assert_ne!(codes(h.send(&auth)), vec!["500 5.5.2"]);
    assert!(h.take().starts_with("5"));
    // And as the response after a bare AUTH.
    h.send(b"AUTH PLAIN\r\n");
    assert_eq!(h.take(), "334 \r\n");
    let mut response = vec![b'A'; 2000];
    response.extend_from_slice(b"\r\n");
    assert_ne!(codes(h.send(&response)), vec!["500 5.5.2"]);
    assert!(h.take().starts_with("5"));
    // Lowercase `auth ` is the same command.
    let mut auth = b"auth plain ".to_vec();
    auth.resize(MAX_AUTH_LINE - 2, b'A');
    auth.extend_from_slice(b"\r\n");
    assert_ne!(codes(h.send(&auth)), vec!["500 5.5.2"]);
    h.take();
    auth.insert(20, b'A');
    assert_eq!(codes(h.send(&auth)), vec!["500 5.5.2"]);
}

/// The input buffer holds an unfinished line and the latest read, never
/// the whole session, however the reads split the lines.
#[test]
fn the_input_buffer_stays_bounded_across_split_reads() {
    let mut h = Harness::new(Config::default(), false);
    h.take();
    h.send(b"NO");
    let mut most = 0;
    for _ in 0..2000 {
        // Each read ends inside the next command.
        h.send(b"OP\r\nNO");
        most = most.max(h.s.buffered());
    }
    assert_eq!(codes(&h.take()).len(), 2000);
    assert!(most <= 2 + 6, "buffer grew to {most}");
}

#[test]
fn each_forbidden_octet_in_a_command_is_refused_alone() {
    let mut h = Harness::new(Config::default(), false);
    h.take();
    for bad in [
        &b"NOOP a\0b\r\n"[..],
        b"NOOP a\rb\r\n",
        b"NOOP caf\xc3\xa9\r\n",
        b"NOOP \xff\r\n",
        b"NOOP a\x01b\r\n",
        b"NOOP a\x7fb\r\n",
    ] {
        assert_eq!(codes(h.send(bad)), vec!["500 5.5.2"], "{bad:?}");
        h.take();
    }
    // A tab is allowed.
    assert_eq!(codes(h.send(b"NOOP a\tb\r\n")), vec!["250 2.0.0"]);
}

#[test]
fn starttls_is_offered_only_where_it_can_happen() {
    let no_starttls = Config {
        starttls: false,
        ..Config::default()
    };
    // An implicit-TLS listener's session: already TLS, never offered.
    let mut h = Harness::new(no_starttls.clone(), true);
    let w = h.send(b"EHLO c\r\n").to_string();
    assert!(
        !w.contains("STARTTLS") && w.contains("AUTH PLAIN LOGIN"),
        "{w}"
    );
    // Not configured, not TLS: not offered either.
    let mut h = Harness::new(no_starttls, false);
    assert!(!h.send(b"EHLO c\r\n").contains("STARTTLS"));
    // Configured and already upgraded: not again.
    let mut h = Harness::new(Config::default(), true);
    assert!(!h.send(b"EHLO c\r\n").contains("STARTTLS"));
}

#[test]
fn auth_login_with_an_initial_response_asks_only_for_the_password() {
    let mut h = Harness::new(plain_auth(), false);
    h.send(b"EHLO c\r\n");
    h.take();
    assert_eq!(h.send(b"AUTH LOGIN dQ==\r\n"), "334 UGFzc3dvcmQ6\r\n");
    h.take();
    assert_eq!(codes(h.send(b"cA==\r\n")), vec!["235 2.7.0"]);
}

#[test]
fn undecodable_sasl_responses_get_501() {
    let mut h = Harness::new(plain_auth(), false);
    h.send(b"EHLO c\r\n");
    h.take();
    for line in [
        &b"AUTH PLAIN !!!\r\n"[..],
        b"AUTH PLAIN dQ==\r\n",
        b"AUTH LOGIN !!!\r\n",
    ] {
        assert_eq!(codes(h.send(line)), vec!["501 5.5.2"], "{line:?}");
        h.take();
    }
    h.send(b"AUTH LOGIN\r\n");
    h.send(b"dQ==\r\n");
    h.take();
    assert_eq!(codes(h.send(b"%%%\r\n")), vec!["501 5.5.2"]);
}

#[test]
fn mail_parameters() {
    // The question MAIL FROM with these parameters asks, or the reply.
    let ask = |params: &str| -> Result<Question, String> {
        let now = Instant::now();
        let mut s = Session::new(plain_auth(), false, now);
        s.feed(b"EHLO c\r\nAUTH PLAIN AHUAcA==\r\n", now);
        loop {
            match s.poll() {
                Some(Output::Ask(Question::Auth { .. })) => s.answer(Verdict::Accept, now),
                Some(_) => {}
                None => break,
            }
        }
        s.feed(
            format!("MAIL FROM:<a@x.example>{params}\r\n").as_bytes(),
            now,
        );
        loop {
            match s.poll() {
                Some(Output::Ask(q)) => return Ok(q),
                Some(Output::Reply(r)) => return Err(r.to_wire()),
                Some(_) => {}
                None => panic!("no answer to {params}"),
            }
        }
    };
    let body = |params: &str| match ask(params) {
        Ok(Question::Sender { body, .. }) => body,
        other => panic!("{params}: {other:?}"),
    };
    assert_eq!(body(""), BodyType::SevenBit);
    assert_eq!(body(" BODY=7bit"), BodyType::SevenBit);
    assert_eq!(body(" BODY=8BITMIME"), BodyType::EightBitMime);
    assert_eq!(body(" BODY=8BITMIME BODY=7BIT"), BodyType::SevenBit);
    // The submitter (RFC 4954 5) is passed over.
    assert_eq!(body(" AUTH=<> SIZE=10"), BodyType::SevenBit);
    let refused = |params: &str| ask(params).unwrap_err();
    assert!(refused(" BODY=BINARYMIME").starts_with("501 5.5.4"));
    assert!(refused(" BODY").starts_with("501 5.5.4"));
    assert!(refused(" SIZE=many").starts_with("501 5.5.4"));
    assert!(refused(" SIZE=20971521").starts_with("552 5.3.4"));
    assert!(refused(" AUTH").starts_with("555 5.5.4"));
    assert!(refused(" FOO=1").starts_with("555 5.5.4"));
    match ask(" SIZE=20971520") {
        Ok(Question::Sender { declared_size, .. }) => assert_eq!(declared_size, Some(20971520)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_envelope_keeps_accepted_recipients_once_each() {
    let mut h = Harness::authed();
    h.send(
        b"MAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nRCPT TO:<nobody@y.example>\r\n\
          RCPT TO:<b@y.example>\r\nRCPT TO:<c@y.example>\r\nDATA\r\nhi\r\n.\r\n",
    );
    assert_eq!(
        codes(&h.take()),
        vec![
            "250 2.1.0",
            "250 2.1.5",
            "550 5.1.1",
            "250 2.1.5",
            "250 2.1.5",
            "354 End d",
            "250 2.0.0"
        ]
    );
    assert_eq!(h.queued[0].0.recipients, ["b@y.example", "c@y.example"]);
}

// ---- Deadlines, with simulated time (see clock.rs) ----

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Short, distinct timeouts, so each test can tell which one acted.
fn timed() -> Config {
    Config {
        plaintext_auth: true,
        timeouts: Timeouts {
            command: secs(10),
            data: secs(20),
            min_data_rate: 100,
            tls_handshake: secs(5),
            shutdown_grace: secs(30),
        },
        ..Config::default()
    }
}

impl Harness {
    /// Moves simulated time on by `d` and tells the session.
    fn wait(&mut self, d: Duration) -> Option<Expired> {
        self.now += d;
        let expired = self.s.handle_timeout(self.now);
        self.run();
        expired
    }

    fn at(&mut self, d: Duration, bytes: &[u8]) -> &str {
        self.now += d;
        self.send(bytes)
    }

    fn due_in(&self) -> Duration {
        self.s.poll_timeout().expect("a deadline") - self.now
    }
}

#[test]
fn each_command_has_the_command_timeout_from_the_previous_reply() {
    let mut h = Harness::new(timed(), false);
    assert_eq!(h.due_in(), secs(10));
    h.take();
    // A reply starts the next command's time.
    h.at(secs(7), b"EHLO c\r\n");
    assert_eq!(h.due_in(), secs(10));
    // Bytes that do not complete a command do not extend it.
    for _ in 0..9 {
        h.at(secs(1), b"N");
    }
    assert_eq!(h.due_in(), secs(1));
    // Early wake-ups change nothing.
    assert_eq!(h.wait(Duration::from_millis(999)), None);
    assert!(!h.closed);
    assert_eq!(h.wait(Duration::from_millis(1)), Some(Expired::Command));
    assert!(
        h.take()
            .ends_with("421 4.4.2 localhost Error: timeout exceeded\r\n")
    );
    assert!(h.closed && h.s.poll_timeout().is_none());
}

#[test]
fn data_gets_its_own_timeout_plus_a_second_per_min_data_rate_octets() {
    let mut h = Harness::new(timed(), false);
    h.send(
        b"EHLO c\r\nAUTH PLAIN AHUAcA==\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\n",
    );
    h.at(secs(3), b"DATA\r\n");
    h.take();
    assert_eq!(h.due_in(), secs(20));
    // 250 octets earn 2 s (at 100 octets/s); the command timeout no longer
    // applies: 15 s later the upload is still on.
    h.at(secs(15), &[b'x'; 250]);
    assert_eq!(h.due_in(), secs(7));
    assert_eq!(h.wait(secs(6)), None);
    // The end of data answers, and the command timeout is back.
    h.at(secs(0), b"\r\n.\r\n");
    assert_eq!(codes(&h.take()), vec!["250 2.0.0"]);
    assert_eq!(h.due_in(), secs(10));
}

#[test]
fn a_trickled_upload_meets_the_data_deadline() {
    let mut h = Harness::new(timed(), false);
    h.send(b"EHLO c\r\nAUTH PLAIN AHUAcA==\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nDATA\r\n");
    h.take();
    // One octet a second earns nothing at 100 octets/s.
    for _ in 0..19 {
        h.at(secs(1), b"x");
        assert!(!h.closed);
    }
    assert_eq!(h.due_in(), secs(1));
    assert_eq!(h.wait(secs(1)), Some(Expired::Data));
    assert!(h.take().starts_with("421 4.4.2"));
    assert!(h.queued.is_empty());
}

#[test]
fn the_starttls_handshake_has_its_own_deadline() {
    let mut h = Harness::new(timed(), false);
    h.send(b"EHLO c\r\nSTARTTLS\r\n");
    assert_eq!(h.tls_requests, 1);
    h.take();
    assert_eq!(h.due_in(), secs(5));
    assert_eq!(h.wait(secs(5)), Some(Expired::Handshake));
    // No reply: the TLS state is unknown; just close.
    assert_eq!(h.take(), "");
    assert!(h.closed);
    // The handshake's time counts from the STARTTLS, not the connection.
    let mut h = Harness::new(timed(), false);
    h.at(secs(3), b"EHLO c\r\nSTARTTLS\r\n");
    assert_eq!(h.due_in(), secs(5));
    // A handshake in time gives the client a whole command timeout.
    let mut h = Harness::new(timed(), false);
    h.send(b"EHLO c\r\nSTARTTLS\r\n");
    h.now += secs(4);
    h.s.tls_established(h.now);
    assert_eq!(h.due_in(), secs(10));
}

#[test]
fn shutdown_closes_an_idle_session_at_once() {
    let mut h = Harness::new(timed(), false);
    h.send(b"EHLO c\r\n");
    h.take();
    h.s.begin_shutdown(h.now);
    h.run();
    assert_eq!(h.take(), "421 4.3.2 localhost Service shutting down\r\n");
    assert!(h.closed);
}

#[test]
fn shutdown_lets_a_transaction_finish_within_the_grace() {
    let mut h = Harness::new(timed(), false);
    h.send(b"EHLO c\r\nAUTH PLAIN AHUAcA==\r\nMAIL FROM:<a@x.example>\r\n");
    h.take();
    h.s.begin_shutdown(h.now);
    h.run();
    assert_eq!(h.take(), "");
    // The command timeout (10 s) is sooner than the grace (30 s).
    assert_eq!(h.due_in(), secs(10));
    h.at(secs(8), b"RCPT TO:<b@y.example>\r\nDATA\r\n");
    h.take();
    // In DATA, 10 s later: the grace's end (12 s away) comes before the
    // DATA deadline (20 s, plus 20 s earned by 2000 octets).
    h.at(secs(10), &[b'x'; 2000]);
    assert_eq!(h.due_in(), secs(12));
    // A second shutdown request does not move the grace's end.
    h.s.begin_shutdown(h.now + secs(5));
    assert_eq!(h.due_in(), secs(12));
    h.at(secs(1), b"\r\n.\r\n");
    // Answered, then closed.
    assert_eq!(codes(&h.take()), vec!["250 2.0.0", "421 4.3.2"]);
    assert!(h.closed);
}

#[test]
fn the_grace_ends_a_transaction_that_runs_too_long() {
    let mut h = Harness::new(timed(), false);
    h.send(b"EHLO c\r\nAUTH PLAIN AHUAcA==\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nDATA\r\n");
    h.take();
    h.s.begin_shutdown(h.now);
    // The client keeps the DATA deadline well ahead of the grace.
    for _ in 0..29 {
        h.at(secs(1), &[b'x'; 500]);
    }
    assert_eq!(h.due_in(), secs(1));
    assert_eq!(h.wait(secs(1)), Some(Expired::Grace));
    assert!(
        h.take()
            .ends_with("421 4.3.2 localhost Service shutting down\r\n")
    );
    assert!(h.closed && h.queued.is_empty());
}

#[test]
fn a_policy_answer_starts_the_next_commands_time_when_it_comes() {
    // The driver answers after the policy's work; the time it says is the
    // reply's time.
    let mut h = Harness::new(timed(), false);
    h.send(b"EHLO c\r\nAUTH PLAIN AHUAcA==\r\n");
    let start = h.now;
    h.s.feed(b"MAIL FROM:<a@x.example>\r\n", start);
    assert!(matches!(
        h.s.poll(),
        Some(Output::Ask(Question::Sender { .. }))
    ));
    h.now = start + secs(4);
    h.s.answer(Verdict::Accept, h.now);
    assert!(matches!(h.s.poll(), Some(Output::Reply(r)) if r.code == 250));
    assert_eq!(h.due_in(), secs(10));
    // Time told is never earlier than time told before.
    h.s.feed(b"", start);
    assert_eq!(h.due_in(), secs(10));
}

#[test]
fn at_a_tie_the_clients_own_deadline_is_the_one_that_expired() {
    let mut h = Harness::new(timed(), false);
    h.send(b"EHLO c\r\nAUTH PLAIN AHUAcA==\r\nMAIL FROM:<a@x.example>\r\n");
    h.take();
    // Grace ends at 30 s; a reply at 20 s sets the command deadline at 30 s.
    h.s.begin_shutdown(h.now);
    h.at(secs(20), b"NOOP\r\n");
    assert_eq!(h.due_in(), secs(10));
    assert_eq!(h.wait(secs(10)), Some(Expired::Command));
    assert!(
        h.take()
            .ends_with("421 4.4.2 localhost Error: timeout exceeded\r\n")
    );
}

#[test]
fn body_types_as_text() {
    for (t, text) in [
        (BodyType::SevenBit, "7BIT"),
        (BodyType::EightBitMime, "8BITMIME"),
    ] {
        assert_eq!(t.to_string(), text);
        assert_eq!(text.parse::<BodyType>(), Ok(t));
        assert_eq!(text.to_ascii_lowercase().parse::<BodyType>(), Ok(t));
    }
    assert!("BINARYMIME".parse::<BodyType>().is_err());
    assert!("".parse::<BodyType>().is_err());
}
