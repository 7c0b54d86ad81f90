//! The DATA receiver: finds the end of a message and undoes dot-stuffing.
//!
//! # Framing rule (SMTP smuggling)
//!
//! The end of data is `CRLF . CRLF` and nothing else. A bare LF or bare CR
//! is never a line ending here: it neither ends the message nor starts a
//! line for dot-unstuffing, so no byte sequence inside one DATA can be read
//! as "end of message, next command" (CVE-2023-51764 and its kin).
//!
//! mailwit **rejects** a message that contains a bare CR, a bare LF or a
//! NUL with `550 5.6.0` once its real end is reached, rather than keeping
//! such bytes as data. Rejection is the choice that cannot be misread by a
//! next hop with a different rule, and every mainstream client sends CRLF.

/// What the receiver found wrong with a message, if anything.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Defects {
    /// A CR not followed by LF, or an LF not preceded by CR, was seen.
    pub bare_line_ending: bool,
    /// A NUL octet was seen.
    pub nul: bool,
    /// The message grew beyond the size limit; the content was truncated.
    pub oversized: bool,
    /// The host gave up on keeping the content ([`DataReceiver::discard`]);
    /// nothing of it was kept.
    pub discarded: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the beginning of a line (after CRLF, or at the start of DATA).
    LineStart,
    /// Inside a line.
    Mid,
    /// Saw CR inside a line.
    Cr,
    /// Saw `.` at the beginning of a line.
    Dot,
    /// Saw `.` CR at the beginning of a line.
    DotCr,
}

/// Octets of content the receiver makes room for before the first.
const INITIAL_CAPACITY: usize = 8 * 1024;

/// Incremental DATA parser. Feed it bytes; it reports how many it consumed
/// once the terminator has been seen.
#[derive(Debug)]
pub struct DataReceiver {
    state: State,
    content: Vec<u8>,
    max: usize,
    defects: Defects,
    received: u64,
}

impl DataReceiver {
    /// A receiver that keeps at most `max` octets of content.
    pub fn new(max: usize) -> Self {
        DataReceiver {
            state: State::LineStart,
            // Room for a typical submission at once, instead of a dozen
            // doublings (and copies) on the way to a few kilobytes.
            content: Vec::with_capacity(INITIAL_CAPACITY.min(max)),
            max,
            defects: Defects::default(),
            received: 0,
        }
    }

    /// Octets fed so far (wire octets, including the ones discarded).
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Consumes bytes. Returns `Some(n)` when the terminator ended at
    /// `input[n - 1]`; the bytes after it belong to the next command.
    /// Returns `None` when all of `input` was consumed and more is needed.
    pub fn feed(&mut self, input: &[u8]) -> Option<usize> {
        let mut i = 0;
        while i < input.len() {
            // Inside a line, every octet up to the next CR, LF or NUL is
            // content as it is: kept in one copy, not stepped through one
            // by one (most of a message is such runs).
            if self.state == State::Mid {
                let run = memchr::memchr3(b'\r', b'\n', 0, &input[i..]).unwrap_or(input.len() - i);
                if run > 0 {
                    self.push(&input[i..i + run]);
                    i += run;
                    continue;
                }
            }
            if self.step(input[i]) {
                self.received += i as u64 + 1;
                return Some(i + 1);
            }
            i += 1;
        }
        self.received += input.len() as u64;
        None
    }

    /// The content and what was wrong with it; call after `feed` returned
    /// `Some`.
    pub fn finish(self) -> (Vec<u8>, Defects) {
        (self.content, self.defects)
    }

    /// Keeps nothing more of this message (and drops what was kept): it
    /// is read to its end and then refused.
    pub fn discard(&mut self) {
        self.defects.discarded = true;
        self.content = Vec::new();
    }

    fn push(&mut self, bytes: &[u8]) {
        if self.defects.oversized || self.defects.discarded {
            return;
        }
        if self.content.len() + bytes.len() > self.max {
            self.defects.oversized = true;
            // Keep nothing of an oversized message: it will be refused.
            self.content = Vec::new();
            return;
        }
        self.content.extend_from_slice(bytes);
    }

    /// A content byte inside a line (never CR, which has its own state).
    fn mid(&mut self, b: u8) {
        match b {
            b'\r' => self.state = State::Cr,
            b'\n' => {
                self.defects.bare_line_ending = true;
                self.push(b"\n");
                self.state = State::Mid;
            }
            0 => {
                self.defects.nul = true;
                self.push(&[0]);
                self.state = State::Mid;
            }
            _ => {
                self.push(&[b]);
                self.state = State::Mid;
            }
        }
    }

    /// Returns true when `b` completes the terminator.
    fn step(&mut self, b: u8) -> bool {
        match self.state {
            State::LineStart => {
                if b == b'.' {
                    self.state = State::Dot;
                } else {
                    self.mid(b);
                }
            }
            State::Mid => self.mid(b),
            State::Cr => {
                if b == b'\n' {
                    self.push(b"\r\n");
                    self.state = State::LineStart;
                } else {
                    self.defects.bare_line_ending = true;
                    self.push(b"\r");
                    self.mid(b);
                }
            }
            State::Dot => {
                if b == b'\r' {
                    self.state = State::DotCr;
                } else {
                    // A dot-stuffed line: the leading dot is dropped.
                    self.mid(b);
                }
            }
            State::DotCr => {
                if b == b'\n' {
                    return true;
                }
                // `.` CR x at a line start: the dot was stuffing, the CR is bare.
                self.defects.bare_line_ending = true;
                self.push(b"\r");
                self.mid(b);
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(input: &[u8]) -> Option<(usize, Vec<u8>, Defects)> {
        let mut r = DataReceiver::new(1000);
        let n = r.feed(input)?;
        let (c, d) = r.finish();
        Some((n, c, d))
    }

    #[test]
    fn plain_message_and_unstuffing() {
        let (n, c, d) = run(b"Subject: x\r\n\r\n..dot\r\n.\r\nNEXT").unwrap();
        assert_eq!(n, b"Subject: x\r\n\r\n..dot\r\n.\r\n".len());
        assert_eq!(c, b"Subject: x\r\n\r\n.dot\r\n");
        assert_eq!(d, Defects::default());
        let (_, c, _) = run(b".\r\n").unwrap();
        assert!(c.is_empty());
    }

    #[test]
    fn byte_at_a_time_equals_whole() {
        let msg = b"a\r\n..b\r\n.c\r\n\r\n.\r\n";
        let mut r = DataReceiver::new(1000);
        let mut end = None;
        for (i, b) in msg.iter().enumerate() {
            if r.feed(std::slice::from_ref(b)).is_some() {
                end = Some(i);
            }
        }
        assert_eq!(end, Some(msg.len() - 1));
        assert_eq!(r.finish().0, b"a\r\n.b\r\nc\r\n\r\n");
    }

    /// Runs of ordinary octets are kept at once: wherever the input is cut,
    /// in two feeds, the content, the end and the defects are those of the
    /// whole, and the content is the unstuffed message.
    #[test]
    fn any_cut_in_two_equals_whole() {
        let msg = b"Subject: runs\r\n\r\nline one\r\n..stuffed\r\n.x\r\nbare\rcr\nlf\x00nul\r\n\r\n.\r\nNEXT";
        let whole = {
            let mut r = DataReceiver::new(1000);
            let n = r.feed(msg).unwrap();
            let (c, d) = r.finish();
            (n, c, d)
        };
        assert_eq!(
            whole.1,
            b"Subject: runs\r\n\r\nline one\r\n.stuffed\r\nx\r\nbare\rcr\nlf\x00nul\r\n\r\n"
        );
        assert_eq!(whole.0, msg.len() - 4);
        assert!(whole.2.bare_line_ending && whole.2.nul);
        for cut in 0..msg.len() {
            let mut r = DataReceiver::new(1000);
            let n = match r.feed(&msg[..cut]) {
                Some(n) => n,
                None => cut + r.feed(&msg[cut..]).expect("the terminator"),
            };
            let (c, d) = r.finish();
            assert_eq!((n, c, d), whole, "cut at {cut}");
        }
    }

    #[test]
    fn smuggling_sequences_never_end_data() {
        for seq in [
            &b"\n.\n"[..],
            b"\n.\r\n",
            b"\r\n.\n",
            b"\r.\r\n",
            b"\r\n.\r",
            b"\r\n\x00.\r\n",
        ] {
            let mut input = b"Subject: a\r\n\r\nbody".to_vec();
            input.extend_from_slice(seq);
            input.extend_from_slice(b"MAIL FROM:<x@y.example>\r\n");
            let mut r = DataReceiver::new(1000);
            assert_eq!(r.feed(&input), None, "{seq:?} ended DATA");
            assert_eq!(r.feed(b"\r\n.\r\n"), Some(5));
            let (_, d) = r.finish();
            assert!(d.bare_line_ending || d.nul, "{seq:?} not flagged");
        }
    }

    #[test]
    fn oversize_is_flagged_and_dropped() {
        let mut r = DataReceiver::new(4);
        assert_eq!(r.feed(b"123456\r\n.\r\n"), Some(11));
        let (c, d) = r.finish();
        assert!(d.oversized);
        assert!(c.is_empty());
    }

    #[test]
    fn received_counts_wire_octets_up_to_the_terminator() {
        let mut r = DataReceiver::new(1000);
        assert_eq!(r.feed(b"ab\r\n..c"), None);
        assert_eq!(r.received(), 7);
        assert_eq!(r.feed(b"\r\n.\r\nNEXT"), Some(5));
        assert_eq!(r.received(), 12);
    }

    #[test]
    fn the_size_limit_is_exact() {
        let body = |n: usize| {
            let mut m = vec![b'x'; n - 2];
            m.extend_from_slice(b"\r\n.\r\n");
            m
        };
        let mut r = DataReceiver::new(10);
        r.feed(&body(10)).unwrap();
        let (c, d) = r.finish();
        assert_eq!((c.len(), d.oversized), (10, false));
        let mut r = DataReceiver::new(10);
        r.feed(&body(11)).unwrap();
        let (c, d) = r.finish();
        assert!(c.is_empty() && d.oversized);
    }

    #[test]
    fn discard_drops_what_was_kept_and_keeps_nothing_more() {
        let mut r = DataReceiver::new(1000);
        r.feed(b"first half\r\n");
        r.discard();
        assert_eq!(r.feed(b"second half\r\n.\r\n"), Some(16));
        let (c, d) = r.finish();
        assert!(c.is_empty());
        assert_eq!(
            d,
            Defects {
                discarded: true,
                ..Defects::default()
            }
        );
    }
}
