//! What the policy sees of a message: headers, To/Cc addresses, content
//! type and attachments, parsed with `mail-parser`. The content itself
//! never enters a component.

use mail_parser::{MessageParser, MimeHeaders};
use mailwit_runtime::{AttachmentInfo, MessageInfo};

/// Header fields passed to the policy at most (the rest are dropped).
const MAX_HEADERS: usize = 256;
/// Longest header value passed to the policy.
const MAX_HEADER_VALUE: usize = 8192;

/// Parses `content` for the policy. An unparseable message still gets a
/// summary (its size), so the policy decides, not the parser.
pub fn summarize(content: &[u8]) -> MessageInfo {
    let mut info = MessageInfo {
        size: content.len() as u64,
        content_type: "text/plain".into(),
        ..MessageInfo::default()
    };
    let Some(msg) = MessageParser::default().parse(content) else {
        return info;
    };
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

/// A raw header value, unfolded (CRLF before whitespace removed), trimmed,
/// lossily decoded and bounded.
fn unfold(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let unfolded: String = text.replace("\r\n", "").replace('\n', "");
    unfolded.trim().chars().take(MAX_HEADER_VALUE).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
