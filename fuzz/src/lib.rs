//! What the fuzz targets share: a scripted policy around a [`Session`],
//! the reply checks, and splitting an input into reads.

use std::time::Instant;

use mailwit_smtp::{Config, Output, Question, Reply, Session, Status, Verdict};

/// What one run of a session produced.
#[derive(Debug, PartialEq, Eq)]
pub struct Transcript {
    /// The replies on the wire, in order.
    pub wire: Vec<u8>,
    /// The questions asked, in order (their Debug form).
    pub questions: Vec<String>,
    /// Messages handed over for queueing.
    pub messages: usize,
    /// Whether STARTTLS was asked for (the run stops there).
    pub starttls: bool,
    pub closed: bool,
}

/// A session configuration from the input's first byte.
pub fn config(flags: u8) -> (Config, bool) {
    let config = Config {
        plaintext_auth: flags & 1 != 0,
        starttls: flags & 2 != 0,
        max_message_size: if flags & 4 != 0 { 64 } else { 4096 },
        max_recipients: 3,
        ..Config::default()
    };
    (config, flags & 8 != 0)
}

/// Splits `input` into reads, their sizes drawn from `seed` (1 to 64
/// octets; 0 means one read).
pub fn split(input: &[u8], seed: u8) -> Vec<&[u8]> {
    if seed == 0 {
        return vec![input];
    }
    let mut state = u32::from(seed) | 1;
    let mut out = Vec::new();
    let mut rest = input;
    while !rest.is_empty() {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let n = (state % 64 + 1) as usize;
        let (a, b) = rest.split_at(n.min(rest.len()));
        out.push(a);
        rest = b;
    }
    out
}

/// Runs a session over `reads` with a scripted policy: logins with the
/// secret `p` are accepted, senders containing `bad` refused, recipients
/// starting with `no` refused with 550, every message queued. Checks every
/// reply and the buffer bound as it goes; stops at STARTTLS or close.
pub fn run(flags: u8, reads: &[&[u8]]) -> Transcript {
    let (config, tls) = config(flags);
    let now = Instant::now();
    let mut s = Session::new(config, tls, now);
    let mut t = Transcript {
        wire: Vec::new(),
        questions: Vec::new(),
        messages: 0,
        starttls: false,
        closed: false,
    };
    drain(&mut s, &mut t, now);
    for read in reads {
        if t.starttls || t.closed {
            break;
        }
        s.feed(read, now);
        // An unfinished line (at most the longest allowed) and this read.
        assert!(
            s.buffered() <= mailwit_smtp::MAX_AUTH_LINE + read.len(),
            "buffered {} after a read of {}",
            s.buffered(),
            read.len()
        );
        drain(&mut s, &mut t, now);
    }
    t
}

fn drain(s: &mut Session, t: &mut Transcript, now: Instant) {
    while let Some(o) = s.poll() {
        match o {
            Output::Reply(r) => {
                check_reply(&r);
                t.wire.extend_from_slice(r.to_wire().as_bytes());
            }
            Output::Ask(q) => {
                t.questions.push(format!("{q:?}"));
                let v = match q {
                    Question::Auth { secret, .. } if secret == "p" => Verdict::Accept,
                    Question::Auth { .. } => Verdict::Reject(Reply::new(
                        535,
                        Status(5, 7, 8),
                        "Authentication credentials invalid",
                    )),
                    Question::Sender { address, .. } if address.contains("bad") => {
                        Verdict::Reject(Reply::new(550, Status(5, 7, 1), "Sender not allowed"))
                    }
                    Question::Recipient { address } if address.starts_with("no") => {
                        Verdict::Reject(Reply::new(550, Status(5, 1, 1), "No such user"))
                    }
                    Question::Message { .. } => {
                        t.messages += 1;
                        Verdict::AcceptWith(Reply::new(250, Status(2, 0, 0), "Ok: queued"))
                    }
                    _ => Verdict::Accept,
                };
                s.answer(v, now);
            }
            Output::StartTls => {
                t.starttls = true;
                return;
            }
            Output::Close => {
                t.closed = true;
                return;
            }
        }
    }
}

/// A reply is well formed: a code of 2xx to 5xx, an enhanced status of
/// the same class, and on the wire, lines `ddd-`/`ddd ` each ending in
/// CRLF with no other CR or LF.
pub fn check_reply(r: &Reply) {
    assert!((200..600).contains(&r.code), "code {}", r.code);
    if let Some(Status(class, _, _)) = r.status {
        assert_eq!(u16::from(class), r.code / 100, "{r:?}");
    }
    let wire = r.to_wire();
    let lines: Vec<&str> = wire.split_inclusive("\r\n").collect();
    assert!(!lines.is_empty());
    for (i, line) in lines.iter().enumerate() {
        let body = line.strip_suffix("\r\n").expect("each line ends in CRLF");
        assert!(!body.contains(['\r', '\n']), "bare CR or LF in {wire:?}");
        let b = body.as_bytes();
        assert!(
            b.len() >= 4 && b[..3].iter().all(u8::is_ascii_digit),
            "{wire:?}"
        );
        assert_eq!(&body[..3], r.code.to_string(), "{wire:?}");
        let sep = if i + 1 == lines.len() { b' ' } else { b'-' };
        assert_eq!(b[3], sep, "{wire:?}");
    }
}

/// How many times `needle` occurs in `haystack` (overlaps counted).
pub fn occurrences(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}
