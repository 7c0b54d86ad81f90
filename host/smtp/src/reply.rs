//! SMTP replies with RFC 3463 enhanced status codes.

use std::fmt;

/// An RFC 3463 enhanced status code, `class.subject.detail`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Status(pub u8, pub u16, pub u16);

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// `"5.7.1"` (surrounding white space allowed): three decimal numbers
/// joined by dots, each fitting its field. Whether the class matches a
/// reply code is [`Reply::rejection`]'s check.
impl std::str::FromStr for Status {
    type Err = InvalidReply;
    fn from_str(s: &str) -> Result<Status, InvalidReply> {
        let bad = || InvalidReply::BadStatus(s.chars().take(32).collect());
        let mut parts = s.trim().split('.');
        let mut next = || parts.next().ok_or_else(bad);
        let class = next()?.parse().map_err(|_| bad())?;
        let subject = next()?.parse().map_err(|_| bad())?;
        let detail = next()?.parse().map_err(|_| bad())?;
        match parts.next() {
            None => Ok(Status(class, subject, detail)),
            Some(_) => Err(bad()),
        }
    }
}

/// One SMTP reply: a code, an optional enhanced status code and one or more
/// lines of text.
///
/// RFC 2034 puts the enhanced code on every reply except the greeting, the
/// answer to HELO/EHLO, and (by common practice, since RFC 3463 has no class
/// for 3xx) the 334 and 354 intermediate replies; [`Reply::plain`] builds
/// those, everything else is built with [`Reply::new`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub status: Option<Status>,
    pub lines: Vec<String>,
}

impl Reply {
    /// A reply with an enhanced status code.
    pub fn new(code: u16, status: Status, text: impl Into<String>) -> Self {
        Reply {
            code,
            status: Some(status),
            lines: vec![text.into()],
        }
    }

    /// A reply without an enhanced status code (greeting, EHLO, 334, 354).
    pub fn plain(code: u16, text: impl Into<String>) -> Self {
        Reply {
            code,
            status: None,
            lines: vec![text.into()],
        }
    }

    /// Builds a reply from a code, status and text supplied by untrusted code
    /// (a policy component), refusing anything that is not a well-formed
    /// rejection: the code must be 4xx or 5xx, the enhanced code's class must
    /// match it, and the text loses CR, LF and other control characters.
    pub fn rejection(code: u16, status: Status, text: &str) -> Result<Self, InvalidReply> {
        if !(400..=599).contains(&code) {
            return Err(InvalidReply::NotARejection(code));
        }
        let class = (code / 100) as u8;
        if status.0 != class || status.1 > 999 || status.2 > 999 {
            return Err(InvalidReply::StatusMismatch { code, status });
        }
        let text: String = text
            .chars()
            .filter(|c| !c.is_control())
            .take(MAX_TEXT)
            .collect();
        let text = if text.trim().is_empty() {
            "Rejected by policy".to_string()
        } else {
            text
        };
        Ok(Reply::new(code, status, text))
    }

    /// A refusal exactly as a component returned it: the enhanced status
    /// still text. Parsed, then validated as by [`Reply::rejection`].
    pub fn from_component(code: u16, status: &str, text: &str) -> Result<Self, InvalidReply> {
        Reply::rejection(code, status.parse()?, text)
    }

    /// True for 2xx and 3xx replies.
    pub fn is_positive(&self) -> bool {
        self.code < 400
    }

    /// Appends the wire form (CRLF-terminated, continuation lines with `-`).
    /// Control characters in the text are dropped here as a last line of
    /// defence, so a reply can never inject a line into the dialogue.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let n = self.lines.len().max(1);
        for i in 0..n {
            let text = self.lines.get(i).map(String::as_str).unwrap_or("");
            let sep = if i + 1 == n { ' ' } else { '-' };
            out.extend_from_slice(format!("{}{}", self.code, sep).as_bytes());
            if let Some(status) = self.status {
                out.extend_from_slice(format!("{status} ").as_bytes());
            }
            out.extend(text.bytes().filter(|b| !b.is_ascii_control()));
            out.extend_from_slice(b"\r\n");
        }
    }

    /// The wire form as a string (for logs and tests).
    pub fn to_wire(&self) -> String {
        let mut out = Vec::new();
        self.write_to(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// Longest reply text kept from untrusted code.
const MAX_TEXT: usize = 200;

/// Why a policy-supplied reply was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InvalidReply {
    /// The code is not 4xx or 5xx.
    #[error("reply code {0} is not a 4xx or 5xx rejection")]
    NotARejection(u16),
    /// The enhanced status does not belong to the code's class.
    #[error("enhanced status {status} does not match reply code {code}")]
    StatusMismatch { code: u16, status: Status },
    /// The enhanced status is not `class.subject.detail` (its first 32
    /// characters are kept).
    #[error("bad enhanced status {0:?}")]
    BadStatus(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_form_multiline() {
        let r = Reply {
            code: 250,
            status: None,
            lines: vec!["a".into(), "b".into()],
        };
        assert_eq!(r.to_wire(), "250-a\r\n250 b\r\n");
        let r = Reply::new(550, Status(5, 7, 1), "no\r\n250 evil");
        assert_eq!(r.to_wire(), "550 5.7.1 no250 evil\r\n");
    }

    #[test]
    fn rejection_is_validated() {
        assert!(Reply::rejection(250, Status(2, 0, 0), "x").is_err());
        assert!(Reply::rejection(550, Status(4, 7, 1), "x").is_err());
        let r = Reply::rejection(550, Status(5, 7, 1), "bad\r\nsender\x07").unwrap();
        assert_eq!(r.to_wire(), "550 5.7.1 badsender\r\n");
    }

    #[test]
    fn a_component_refusal_is_parsed_then_validated() {
        let r = Reply::from_component(550, " 5.7.1 ", "no").unwrap();
        assert_eq!(r.to_wire(), "550 5.7.1 no\r\n");
        assert_eq!(
            Reply::from_component(451, "4.7.999", "x").unwrap().status,
            Some(Status(4, 7, 999))
        );
        for bad in [
            "",
            "5.7",
            "5.7.1.2",
            "5..1",
            "5.7.x",
            "256.1.1",
            "5.70000.1",
            "-5.7.1",
        ] {
            assert_eq!(
                Reply::from_component(550, bad, "x"),
                Err(InvalidReply::BadStatus(bad.into())),
                "{bad:?}"
            );
        }
        assert_eq!(
            Reply::from_component(550, "4.7.1", "x"),
            Err(InvalidReply::StatusMismatch {
                code: 550,
                status: Status(4, 7, 1)
            })
        );
        assert_eq!(
            Reply::from_component(250, "2.0.0", "x"),
            Err(InvalidReply::NotARejection(250))
        );
        let long = "9".repeat(100);
        let Err(InvalidReply::BadStatus(kept)) = Reply::from_component(550, &long, "x") else {
            panic!("accepted {long}");
        };
        assert_eq!(kept.len(), 32);
    }

    #[test]
    fn enhanced_status_parts_stay_within_three_digits() {
        assert!(Reply::rejection(550, Status(5, 999, 999), "x").is_ok());
        assert!(Reply::rejection(550, Status(5, 1000, 1), "x").is_err());
        assert!(Reply::rejection(550, Status(5, 1, 1000), "x").is_err());
        assert!(Reply::rejection(400, Status(4, 0, 0), "x").is_ok());
        assert!(Reply::rejection(599, Status(5, 0, 0), "x").is_ok());
        assert!(Reply::rejection(399, Status(3, 0, 0), "x").is_err());
        assert!(Reply::rejection(600, Status(6, 0, 0), "x").is_err());
    }

    #[test]
    fn positive_means_below_400() {
        assert!(Reply::plain(250, "ok").is_positive());
        assert!(Reply::plain(354, "go").is_positive());
        assert!(Reply::plain(399, "edge").is_positive());
        assert!(!Reply::plain(400, "edge").is_positive());
        assert!(!Reply::plain(550, "no").is_positive());
    }
}
