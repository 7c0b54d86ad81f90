//! What the policy sees of a message: headers, To/Cc addresses, content
//! type and attachments, parsed with `mail-parser`. The content itself
//! never enters a component.

use mail_parser::{HeaderName, MessageParser, MimeHeaders};
use mailwit_runtime::{AttachmentInfo, MessageInfo};

/// Header fields passed to the policy at most (the rest are dropped).
const MAX_HEADERS: usize = 256;
/// Longest header value passed to the policy.
const MAX_HEADER_VALUE: usize = 8192;

/// The parser: only what the summary reads is parsed (the MIME headers,
/// which attachments need, and To and Cc); every other header is kept raw,
/// as the summary passes it. Parsing From, Subject, Date, Message-ID and
/// the rest by their grammar made values the summary never read (From and
/// Subject alone: 6 of a 4-header message's 27 allocations).
static PARSER: std::sync::LazyLock<MessageParser> = std::sync::LazyLock::new(|| {
    MessageParser::new()
        .with_mime_headers()
        .header_address(HeaderName::To)
        .header_address(HeaderName::Cc)
        .default_header_raw()
});

/// Parses `content` for the policy. An unparseable message still gets a
/// summary (its size), so the policy decides, not the parser.
///
/// The header section is parsed first. The body is parsed only when it may
/// hold attachments: a single text part (the common case) has none, and
/// decoding its text would be most of the cost (see [`single_text_part`]).
pub fn summarize(content: &[u8]) -> MessageInfo {
    let mut info = MessageInfo {
        size: content.len() as u64,
        content_type: "text/plain".into(),
        ..MessageInfo::default()
    };
    let parser = &*PARSER;
    let Some(head) = parser.parse_headers(content) else {
        return info;
    };
    let msg = if single_text_part(&head) {
        head
    } else {
        match parser.parse(content) {
            Some(m) => m,
            None => return info,
        }
    };
    info.headers.reserve(msg.headers().len().min(MAX_HEADERS));
    for h in msg.headers().iter().take(MAX_HEADERS) {
        let raw = content
            .get(h.offset_start as usize..h.offset_end as usize)
            .unwrap_or_default();
        info.headers
            .push((h.name.as_str().to_string(), unfold(raw)));
    }
    let addrs = |a: Option<&mail_parser::Address<'_>>| -> Vec<String> {
        a.map(|a| {
            a.iter()
                .filter_map(|x| x.address.as_deref())
                .map(str::to_ascii_lowercase)
                .collect()
        })
        .unwrap_or_default()
    };
    info.to = addrs(msg.to());
    info.cc = addrs(msg.cc());
    if let Some(ct) = msg.content_type() {
        info.content_type = match ct.subtype() {
            Some(sub) => format!("{}/{}", ct.ctype(), sub),
            None => ct.ctype().to_string(),
        }
        .to_ascii_lowercase();
    }
    info.attachments = msg
        .attachments()
        .map(|p| AttachmentInfo {
            filename: p.attachment_name().map(str::to_string),
            content_type: p
                .content_type()
                .map(|c| format!("{}/{}", c.ctype(), c.subtype().unwrap_or("octet-stream")))
                .unwrap_or_else(|| "application/octet-stream".into()),
            size: p.contents().len() as u64,
        })
        .collect();
    info
}

/// Whether a message's header section says its body is one inline text
/// part, which `mail-parser` never lists as an attachment: no Content-Type
/// or text/plain or text/html, no Content-Disposition, and no
/// transfer encoding whose decoding could fail (a part that fails to decode
/// may be classed as an attachment). Anything else gets the full parse.
fn single_text_part(head: &mail_parser::Message<'_>) -> bool {
    let text = match head.content_type() {
        None => true,
        Some(ct) => {
            ct.ctype().eq_ignore_ascii_case("text")
                && ct.subtype().is_some_and(|s| {
                    s.eq_ignore_ascii_case("plain") || s.eq_ignore_ascii_case("html")
                })
        }
    };
    let plain_encoding = head.content_transfer_encoding().is_none_or(|e| {
        !e.eq_ignore_ascii_case("base64") && !e.eq_ignore_ascii_case("quoted-printable")
    });
    text && plain_encoding && head.content_disposition().is_none()
}

/// A raw header value, unfolded (every CRLF and bare LF removed), trimmed,
/// lossily decoded and bounded to [`MAX_HEADER_VALUE`] characters.
///
/// In one pass and one allocation: it runs for every header of every
/// message, and a message carries a dozen or more (Received, DKIM).
fn unfold(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\n' => {}
            '\r' if chars.peek() == Some(&'\n') => {}
            c => out.push(c),
        }
    }
    out.truncate(out.trim_end().len());
    let lead = out.len() - out.trim_start().len();
    out.drain(..lead);
    if let Some((end, _)) = out.char_indices().nth(MAX_HEADER_VALUE) {
        out.truncate(end);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one-pass unfold answers as removing CRLFs, then LFs, then
    /// trimming and bounding, one step after the other, would.
    #[test]
    fn unfold_is_replace_trim_and_take() {
        let reference = |raw: &[u8]| -> String {
            let text = String::from_utf8_lossy(raw);
            let unfolded = text.replace("\r\n", "").replace('\n', "");
            unfolded.trim().chars().take(MAX_HEADER_VALUE).collect()
        };
        let long = format!(" {}é\r\n\tx ", "é".repeat(MAX_HEADER_VALUE - 1));
        let cases: [&[u8]; 10] = [
            b" bulk\r\n  -42\r\n",
            b"\r\r\nx\r",
            b"a\nb\r\n\n\rc",
            b"\t \r\n ",
            b"",
            b"\xff\xfe value \xc3",
            b" \xe2\x80\x83 wide space \xe2\x80\x83 ",
            b"\r",
            long.as_bytes(),
            &long.as_bytes()[..long.len() - 5],
        ];
        for (n, raw) in cases.iter().enumerate() {
            assert_eq!(unfold(raw), reference(raw), "case {n}");
        }
        assert_eq!(unfold(long.as_bytes()).chars().count(), MAX_HEADER_VALUE);
    }

    #[test]
    fn headers_addresses_attachments() {
        let m = b"From: a@x.example\r\nTo: \"Bob\" <Bob@Y.example>, c@y.example\r\nCc: d@y.example\r\nX-IB-bulk-id: bulk\r\n  -42\r\nSubject: s\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n--b\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=r.pdf\r\n\r\nPDF\r\n--b--\r\n";
        let i = summarize(m);
        assert_eq!(i.to, ["bob@y.example", "c@y.example"]);
        assert_eq!(i.cc, ["d@y.example"]);
        assert!(
            i.headers
                .contains(&("X-IB-bulk-id".into(), "bulk  -42".into())),
            "{:?}",
            i.headers
        );
        assert_eq!(i.content_type, "multipart/mixed");
        assert_eq!(i.attachments.len(), 1);
        assert_eq!(i.attachments[0].filename.as_deref(), Some("r.pdf"));
        assert_eq!(i.size, m.len() as u64);
    }

    /// What a full parse of `m` gives, for comparison with [`summarize`].
    fn full(m: &[u8]) -> String {
        let msg = MessageParser::default().parse(m).unwrap();
        let names: Vec<_> = msg
            .attachments()
            .map(|p| p.attachment_name().map(str::to_string))
            .collect();
        format!("{} {:?}", msg.attachments().count(), names)
    }

    #[test]
    fn the_header_only_path_misses_no_attachment() {
        let cases: [&[u8]; 9] = [
            // Fast path: one text part.
            b"From: a@x.example\r\nTo: b@y.example\r\nSubject: s\r\n\r\nhello\r\n",
            b"From: a@x.example\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n<p>hi</p>\r\n",
            // Full parse: these single parts are attachments.
            b"From: a@x.example\r\nContent-Type: application/pdf\r\n\r\nPDF\r\n",
            b"From: a@x.example\r\nContent-Type: text/plain\r\nContent-Disposition: attachment; filename=a.txt\r\n\r\nA\r\n",
            b"From: a@x.example\r\nContent-Type: text/csv\r\n\r\na,b\r\n",
            b"From: a@x.example\r\nContent-Type: text/html\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!not base64\r\n",
            b"From: a@x.example\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n--b\r\nContent-Type: image/png\r\nContent-Disposition: attachment; filename=p.png\r\n\r\nPNG\r\n--b--\r\n",
            // Names encoded (RFC 2231, RFC 2047), and a forwarded message.
            b"From: a@x.example\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n--b\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename*=utf-8''r%C3%A9sum%C3%A9.pdf\r\n\r\nPDF\r\n--b\r\nContent-Type: text/csv; name=\"=?utf-8?q?caf=C3=A9.csv?=\"\r\n\r\na,b\r\n--b--\r\n",
            b"From: a@x.example\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nsee below\r\n--b\r\nContent-Type: message/rfc822\r\n\r\nFrom: c@z.example\r\nSubject: inner\r\nContent-Type: multipart/mixed; boundary=c\r\n\r\n--c\r\nContent-Type: text/plain\r\n\r\nx\r\n--c\r\nContent-Type: image/gif; name=g.gif\r\n\r\nGIF\r\n--c--\r\n--b--\r\n",
        ];
        for (n, m) in cases.iter().enumerate() {
            let head = MessageParser::default().parse_headers(*m).unwrap();
            assert_eq!(single_text_part(&head), n < 2, "case {n}");
            let i = summarize(m);
            assert_eq!(i.attachments.is_empty(), n < 2, "case {n}");
            let names: Vec<_> = i.attachments.iter().map(|a| a.filename.clone()).collect();
            assert_eq!(
                format!("{} {:?}", i.attachments.len(), names),
                full(m),
                "case {n}"
            );
        }
        let names = |m: &[u8]| -> Vec<Option<String>> {
            summarize(m)
                .attachments
                .into_iter()
                .map(|a| a.filename)
                .collect()
        };
        assert_eq!(
            names(cases[7]),
            [Some("résumé.pdf".into()), Some("café.csv".into())]
        );
        assert_eq!(names(cases[8]).len(), 1);
        // The fast path still sees the headers and addresses.
        let i = summarize(cases[0]);
        assert_eq!(i.to, ["b@y.example"]);
        assert_eq!(i.headers.len(), 3);
    }
}
