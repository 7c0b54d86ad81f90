//! Parsing of one SMTP command line into a [`Command`].
//!
//! The line has already been framed (CRLF stripped) and checked for NUL,
//! bare CR and 8-bit bytes by the session, so everything here is ASCII.

use crate::reply::{Reply, Status};

/// Longest address accepted in MAIL FROM / RCPT TO (RFC 5321 4.5.3.1.3,
/// path minus the angle brackets).
pub const MAX_ADDRESS: usize = 254;

/// ESMTP parameters of MAIL FROM / RCPT TO: upper-cased keyword, value.
pub type Params = Vec<(String, Option<String>)>;

/// One parsed client command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Ehlo(String),
    Helo(String),
    StartTls,
    Auth {
        mechanism: String,
        initial: Option<String>,
    },
    Mail {
        address: String,
        params: Params,
    },
    Rcpt {
        address: String,
        params: Params,
    },
    Data,
    Rset,
    Noop,
    Quit,
    Help,
    Vrfy,
    Expn,
}

/// Why a line is not a command we can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// The verb is unknown: counts towards the error limit.
    Unknown,
    /// The verb is known but its arguments are wrong.
    Syntax(Reply),
}

impl ParseError {
    pub fn reply(&self) -> Reply {
        match self {
            ParseError::Unknown => Reply::new(500, Status(5, 5, 1), "Command unrecognized"),
            ParseError::Syntax(r) => r.clone(),
        }
    }
}

fn syntax(text: &str) -> ParseError {
    ParseError::Syntax(Reply::new(501, Status(5, 5, 4), text))
}

/// Parses one command line (without its line ending).
pub fn parse(line: &str) -> Result<Command, ParseError> {
    let (verb, rest) = match line.split_once(' ') {
        Some((verb, rest)) => (verb, rest.trim()),
        None => (line, ""),
    };
    let verb = verb.to_ascii_uppercase();
    let no_args = |c: Command| {
        if rest.is_empty() {
            Ok(c)
        } else {
            Err(syntax("Syntax error, no parameters allowed"))
        }
    };
    match verb.as_str() {
        "EHLO" | "HELO" => {
            let domain = rest.split(' ').next().unwrap_or("");
            if domain.is_empty() || domain.len() > 255 {
                return Err(syntax("Syntax: EHLO hostname"));
            }
            Ok(if verb == "EHLO" {
                Command::Ehlo(domain.to_string())
            } else {
                Command::Helo(domain.to_string())
            })
        }
        "STARTTLS" => no_args(Command::StartTls),
        "AUTH" => {
            let mut parts = rest.split(' ').filter(|s| !s.is_empty());
            let mechanism = parts
                .next()
                .ok_or_else(|| syntax("Syntax: AUTH mechanism [initial-response]"))?
                .to_ascii_uppercase();
            let initial = parts.next().map(str::to_string);
            if parts.next().is_some() {
                return Err(syntax("Syntax: AUTH mechanism [initial-response]"));
            }
            Ok(Command::Auth { mechanism, initial })
        }
        "MAIL" => {
            let (address, params) = path_argument(rest, "FROM:")
                .ok_or_else(|| syntax("Syntax: MAIL FROM:<address>"))?;
            if !address.is_empty() && !valid_address(&address) {
                return Err(ParseError::Syntax(Reply::new(
                    501,
                    Status(5, 1, 7),
                    "Bad sender address syntax",
                )));
            }
            Ok(Command::Mail { address, params })
        }
        "RCPT" => {
            let (address, params) =
                path_argument(rest, "TO:").ok_or_else(|| syntax("Syntax: RCPT TO:<address>"))?;
            if !valid_address(&address) {
                return Err(ParseError::Syntax(Reply::new(
                    501,
                    Status(5, 1, 3),
                    "Bad recipient address syntax",
                )));
            }
            Ok(Command::Rcpt { address, params })
        }
        "DATA" => no_args(Command::Data),
        "RSET" => no_args(Command::Rset),
        "NOOP" => Ok(Command::Noop),
        "QUIT" => no_args(Command::Quit),
        "HELP" => Ok(Command::Help),
        "VRFY" => Ok(Command::Vrfy),
        "EXPN" => Ok(Command::Expn),
        _ => Err(ParseError::Unknown),
    }
}

/// Parses `FROM:<addr> PARAM=VALUE ...`. Accepts a space after the colon
/// (as the Infobip seed's dialogue shows) and a path without brackets.
fn path_argument(rest: &str, keyword: &str) -> Option<(String, Params)> {
    // Compared as bytes: `rest` may hold non-ASCII text (the session's
    // framing refuses it, but this parser stands alone), where slicing the
    // str at `keyword.len()` could split a character. A match is ASCII, so
    // the slice after it is on a boundary.
    let head = rest.as_bytes().get(..keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword.as_bytes()) {
        return None;
    }
    let rest = rest[keyword.len()..].trim_start();
    let (path, params) = if let Some(inner) = rest.strip_prefix('<') {
        let end = inner.find('>')?;
        (&inner[..end], &inner[end + 1..])
    } else {
        match rest.find(' ') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        }
    };
    if !params.is_empty() && !params.starts_with(' ') {
        return None;
    }
    // Source routes (`<@a,@b:user@c>`) are obsolete; RFC 5321 says to ignore them.
    let path = match path.rfind(':') {
        Some(i) if path.starts_with('@') => &path[i + 1..],
        _ => path,
    };
    let params = params
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.to_ascii_uppercase(), Some(v.to_string())),
            None => (p.to_ascii_uppercase(), None),
        })
        .collect();
    Some((path.to_string(), params))
}

/// A deliberately plain check of `local@domain`: printable ASCII, no
/// brackets or spaces, a non-empty local part of at most 64 octets and a
/// domain of dot-separated labels (or an address literal).
pub fn valid_address(addr: &str) -> bool {
    if addr.len() > MAX_ADDRESS {
        return false;
    }
    let Some((local, domain)) = addr.rsplit_once('@') else {
        return false;
    };
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && local
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'<' | b'>' | b'(' | b')' | b',' | b';'));
    let domain_ok = if domain.starts_with('[') && domain.ends_with(']') {
        domain.len() > 2
            && domain[1..domain.len() - 1]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b':'))
    } else {
        !domain.is_empty()
            && domain.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            })
    };
    local_ok && domain_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mail_from_forms() {
        assert_eq!(
            parse("MAIL FROM:<a@b.example> SIZE=10 BODY=8BITMIME").unwrap(),
            Command::Mail {
                address: "a@b.example".into(),
                params: vec![
                    ("SIZE".into(), Some("10".into())),
                    ("BODY".into(), Some("8BITMIME".into()))
                ]
            }
        );
        assert_eq!(
            parse("mail from: <a@b.example>").unwrap(),
            Command::Mail {
                address: "a@b.example".into(),
                params: vec![]
            }
        );
        assert_eq!(
            parse("MAIL FROM:<>").unwrap(),
            Command::Mail {
                address: "".into(),
                params: vec![]
            }
        );
        assert!(
            matches!(parse("MAIL FROM:<a b@c>"), Err(ParseError::Syntax(r)) if r.status == Some(Status(5,1,7)))
        );
        assert!(matches!(parse("MAIL TO:<a@b>"), Err(ParseError::Syntax(_))));
    }

    #[test]
    fn rcpt_and_others() {
        assert_eq!(
            parse("RCPT TO:<@relay.example:u@d.example>").unwrap(),
            Command::Rcpt {
                address: "u@d.example".into(),
                params: vec![]
            }
        );
        assert!(
            matches!(parse("RCPT TO:<>"), Err(ParseError::Syntax(r)) if r.status == Some(Status(5,1,3)))
        );
        assert_eq!(parse("FOO"), Err(ParseError::Unknown));
        assert!(matches!(parse("DATA x"), Err(ParseError::Syntax(_))));
        assert!(matches!(parse("EHLO"), Err(ParseError::Syntax(_))));
        assert_eq!(
            parse("auth plain AGEAYg==").unwrap(),
            Command::Auth {
                mechanism: "PLAIN".into(),
                initial: Some("AGEAYg==".into())
            }
        );
    }

    #[test]
    fn addresses() {
        assert!(valid_address("user+tag@example.com"));
        assert!(valid_address("u@[127.0.0.1]"));
        assert!(!valid_address("user@"));
        assert!(!valid_address("@example.com"));
        assert!(!valid_address("user@-bad.example"));
        assert!(!valid_address(&format!("{}@x.example", "a".repeat(65))));
    }

    #[test]
    fn helo_name_length_bound() {
        let name = |n: usize| format!("EHLO {}", "a".repeat(n));
        assert_eq!(parse(&name(255)).unwrap(), Command::Ehlo("a".repeat(255)));
        assert!(matches!(parse(&name(256)), Err(ParseError::Syntax(_))));
    }

    #[test]
    fn path_keyword_must_be_there_whole() {
        // Shorter than the keyword, or another keyword.
        assert!(matches!(parse("MAIL FRO"), Err(ParseError::Syntax(_))));
        assert!(matches!(
            parse("MAIL TO:<a@b.example>"),
            Err(ParseError::Syntax(_))
        ));
        assert!(matches!(
            parse("RCPT FROM:<a@b.example>"),
            Err(ParseError::Syntax(_))
        ));
        // Exactly the keyword: an empty path, which RCPT refuses as an
        // address (5.1.3), not as syntax (5.5.4).
        assert!(
            matches!(parse("RCPT TO:"), Err(ParseError::Syntax(r)) if r.status == Some(Status(5, 1, 3)))
        );
        // Parameters must be separated from the path.
        assert!(matches!(
            parse("MAIL FROM:<a@b.example>SIZE=1"),
            Err(ParseError::Syntax(_))
        ));
    }

    /// Found by the `command` fuzz target: a multi-byte character where
    /// the keyword's colon would be panicked on a str slice.
    #[test]
    fn a_non_ascii_keyword_is_a_syntax_error_not_a_panic() {
        assert!(matches!(
            parse("MAIL FROM\u{43f}a<b.example>"),
            Err(ParseError::Syntax(_))
        ));
        assert!(matches!(
            parse("RCPT T\u{e9}:<a@b.example>"),
            Err(ParseError::Syntax(_))
        ));
        assert!(matches!(parse("MAIL \u{e9}"), Err(ParseError::Syntax(_))));
    }

    #[test]
    fn only_a_leading_at_sign_makes_a_source_route() {
        let rcpt = |line: &str| match parse(line) {
            Ok(Command::Rcpt { address, .. }) => address,
            other => panic!("{other:?}"),
        };
        assert_eq!(rcpt("RCPT TO:<a:b@c.example>"), "a:b@c.example");
        assert_eq!(rcpt("RCPT TO:<@r1,@r2:u@c.example>"), "u@c.example");
    }

    #[test]
    fn address_bounds_and_domains() {
        // 254 octets is the most: 64 + 1 + 189 (three 63-octet labels).
        let domain = |n: usize| {
            let label = "d".repeat(63);
            format!("{label}.{label}.{}", "d".repeat(n))
        };
        let at_limit = format!("{}@{}", "l".repeat(64), domain(61));
        assert_eq!(at_limit.len(), MAX_ADDRESS);
        assert!(valid_address(&at_limit));
        assert!(!valid_address(&format!(
            "{}@{}",
            "l".repeat(64),
            domain(62)
        )));
        assert!(!valid_address(&format!("{}@d.example", "l".repeat(65))));
        // Address literals need both brackets and something inside.
        assert!(valid_address("a@[192.0.2.1]"));
        assert!(valid_address("a@[IPv6:2001:db8::1]"));
        assert!(!valid_address("a@[192.0.2.1"));
        assert!(!valid_address("a@192.0.2.1]"));
        assert!(!valid_address("a@[]"));
        assert!(!valid_address("a@[192_0]"));
        // Labels: letters, digits and inner hyphens.
        assert!(valid_address("a@ex-ample.example"));
        assert!(!valid_address("a@ex_ample.example"));
        assert!(!valid_address("a@-example.example"));
        assert!(!valid_address("a@example-.example"));
        assert!(!valid_address("a@example..example"));
        assert!(!valid_address(&format!("a@{}.example", "d".repeat(64))));
        assert!(!valid_address("@example.example"));
        assert!(!valid_address("a(b)@example.example"));
        assert!(!valid_address("no-at-sign"));
    }
}
