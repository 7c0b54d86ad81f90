//! The line receivers, one per framing mode (DATA has its own, in
//! [`crate::data`]), after Stalwart's smtp-proto:
//!
//! - [`LineReceiver::command`]: a command line, 512 octets with its CRLF
//!   (RFC 5321 4.5.3.1.4), or 12288 for an `AUTH` line (RFC 4954 4);
//! - [`LineReceiver::sasl`]: a SASL response line, 12288 octets;
//! - [`OverlongLine`]: the rest of a line that outgrew its limit before
//!   its end arrived, thrown away as it comes, so the buffer stays bounded.
//!
//! A line ends at LF (an optional CR before it is dropped). Only printable
//! ASCII, space and tab may be in it: NUL, a bare CR, 8-bit octets and
//! other controls are refused.

use crate::reply::{Reply, Status};

/// Longest command line, CRLF included (RFC 5321 4.5.3.1.4).
pub const MAX_COMMAND_LINE: usize = 512;
/// Longest AUTH command or SASL response line (RFC 4954 section 4).
pub const MAX_AUTH_LINE: usize = 12288;

/// What a line receiver made of the front of the input.
#[derive(Debug, PartialEq, Eq)]
pub enum Take {
    /// A line, without its line ending.
    Line(String),
    /// A whole line that is too long or holds a forbidden octet: answer it.
    Refused(Reply),
    /// Too long and not ended yet: what there is was consumed; go on with
    /// an [`OverlongLine`].
    Overlong,
    /// No whole line yet: nothing was consumed.
    More,
}

/// Frames one line of at most `limit` octets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineReceiver {
    limit: usize,
}

impl LineReceiver {
    /// For a command line; `pending` is the input it starts, since an
    /// `AUTH` line may carry a long initial response.
    pub fn command(pending: &[u8]) -> Self {
        let auth = pending.len() >= 5 && pending[..5].eq_ignore_ascii_case(b"AUTH ");
        LineReceiver {
            limit: if auth {
                MAX_AUTH_LINE
            } else {
                MAX_COMMAND_LINE
            },
        }
    }

    /// For the response to a SASL challenge.
    pub fn sasl() -> Self {
        LineReceiver {
            limit: MAX_AUTH_LINE,
        }
    }

    /// The most octets a line may have, its line ending included.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Frames the line at the front of `input`: what it is, and how many
    /// octets of `input` it consumed.
    pub fn take(&self, input: &[u8]) -> (usize, Take) {
        let Some(lf) = input.iter().position(|&b| b == b'\n') else {
            return match input.len() > self.limit {
                // An unended line already longer than allowed: a legal
                // line has at most `limit - 1` octets before its LF, so at
                // `limit` without one it cannot be legal either, but waiting
                // one octet more costs nothing and keeps the rule simple.
                true => (input.len(), Take::Overlong),
                false => (0, Take::More),
            };
        };
        let consumed = lf + 1;
        if consumed > self.limit {
            return (consumed, Take::Refused(too_long()));
        }
        let raw = &input[..lf];
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        (consumed, check(raw))
    }
}

/// The rest of an overlong line: discarded until its LF.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct OverlongLine;

impl OverlongLine {
    /// Octets of `input` consumed, and the reply once the line has ended.
    pub fn take(&self, input: &[u8]) -> (usize, Option<Reply>) {
        match input.iter().position(|&b| b == b'\n') {
            Some(lf) => (lf + 1, Some(too_long())),
            None => (input.len(), None),
        }
    }
}

fn too_long() -> Reply {
    Reply::new(500, Status(5, 5, 2), "Line too long")
}

fn check(raw: &[u8]) -> Take {
    if raw.iter().any(|&b| b == 0 || b == b'\r' || b >= 0x80) {
        return Take::Refused(Reply::new(
            500,
            Status(5, 5, 2),
            "Invalid character in command: NUL, bare CR and 8-bit octets are not allowed",
        ));
    }
    // Only printable ASCII, space and tab remain; other controls too are refused.
    if raw.iter().any(|&b| b.is_ascii_control() && b != b'\t') {
        return Take::Refused(Reply::new(
            500,
            Status(5, 5, 2),
            "Invalid character in command",
        ));
    }
    Take::Line(String::from_utf8(raw.to_vec()).expect("ASCII"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(t: &Take) -> Option<String> {
        match t {
            Take::Refused(r) => Some(r.to_wire()),
            _ => None,
        }
    }

    #[test]
    fn a_line_ends_at_lf_with_or_without_cr() {
        let r = LineReceiver::command(b"NOOP");
        assert_eq!(r.take(b"NOOP\r\nRSET\r\n"), (6, Take::Line("NOOP".into())));
        assert_eq!(r.take(b"NOOP\nRSET"), (5, Take::Line("NOOP".into())));
        assert_eq!(r.take(b"NOO"), (0, Take::More));
        assert_eq!(r.take(b""), (0, Take::More));
        assert_eq!(r.take(b"\r\n"), (2, Take::Line(String::new())));
    }

    #[test]
    fn limits_by_mode() {
        assert_eq!(LineReceiver::command(b"NOOP").limit(), MAX_COMMAND_LINE);
        assert_eq!(
            LineReceiver::command(b"auth plain x").limit(),
            MAX_AUTH_LINE
        );
        assert_eq!(LineReceiver::command(b"AUTH").limit(), MAX_COMMAND_LINE);
        assert_eq!(LineReceiver::command(b"AUTHX").limit(), MAX_COMMAND_LINE);
        assert_eq!(LineReceiver::sasl().limit(), MAX_AUTH_LINE);
    }

    #[test]
    fn the_limit_counts_the_line_ending() {
        let r = LineReceiver::sasl();
        let line = |n: usize| {
            let mut l = vec![b'a'; n - 2];
            l.extend_from_slice(b"\r\n");
            l
        };
        let at = line(MAX_AUTH_LINE);
        assert!(matches!(r.take(&at), (n, Take::Line(_)) if n == MAX_AUTH_LINE));
        let over = line(MAX_AUTH_LINE + 1);
        let (n, t) = r.take(&over);
        assert_eq!(n, MAX_AUTH_LINE + 1);
        assert_eq!(refused(&t).unwrap(), "500 5.5.2 Line too long\r\n");
        // Unended: more is awaited up to the limit, then it is overlong.
        assert_eq!(r.take(&at[..MAX_AUTH_LINE - 1]), (0, Take::More));
        let unended = vec![b'a'; MAX_AUTH_LINE + 1];
        assert_eq!(r.take(&unended[..MAX_AUTH_LINE]), (0, Take::More));
        assert_eq!(r.take(&unended), (MAX_AUTH_LINE + 1, Take::Overlong));
    }

    #[test]
    fn forbidden_octets() {
        let r = LineReceiver::command(b"");
        for bad in [
            &b"a\0b\n"[..],
            b"a\rb\n",
            b"\xc3\xa9\n",
            b"a\x1bb\n",
            b"\x7f\n",
        ] {
            let (n, t) = r.take(bad);
            assert_eq!(n, bad.len());
            assert!(refused(&t).unwrap().starts_with("500 5.5.2"), "{bad:?}");
        }
        assert_eq!(r.take(b"a\tb\r\n"), (5, Take::Line("a\tb".into())));
        // NUL, bare CR and 8-bit octets get the reply that names them.
        for bad in [&b"\0\n"[..], b"a\rb\n", b"\x80\n"] {
            let text = refused(&r.take(bad).1).unwrap();
            assert!(text.contains("NUL, bare CR and 8-bit"), "{bad:?}: {text}");
        }
    }

    #[test]
    fn an_overlong_line_is_discarded_to_its_end() {
        let o = OverlongLine;
        assert_eq!(o.take(b"aaaa"), (4, None));
        assert_eq!(o.take(b""), (0, None));
        let (n, reply) = o.take(b"aa\r\nNOOP\r\n");
        assert_eq!(n, 4);
        assert_eq!(reply.unwrap().to_wire(), "500 5.5.2 Line too long\r\n");
    }
}
