//! On-disk record format of spool segments.
//!
//! A segment is a sequence of records:
//!
//! ```text
//! magic "MWS1" | kind u8 | payload length u32 LE | crc32 of kind+payload u32 LE | payload
//! ```
//!
//! A record whose header or payload is short, or whose CRC does not match,
//! ends the readable part of its segment: it was being written when the
//! process died, and it was never acknowledged (acknowledgement waits for the
//! fsync that covers the whole record).

use mailwit_runtime::Route;
use mailwit_smtp::BodyType;
use serde::{Deserialize, Serialize};

pub const MAGIC: &[u8; 4] = b"MWS1";
pub const HEADER_LEN: usize = 13;

/// What a record says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// An accepted message: JSON envelope length u32 LE, JSON envelope,
    /// content.
    Message = 1,
    /// The message with this id has left the spool (delivered or failed).
    Done = 2,
    /// The message with this id was written but never acknowledged (its
    /// fsync failed); it must not be delivered.
    Cancel = 3,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        match b {
            1 => Some(Kind::Message),
            2 => Some(Kind::Done),
            3 => Some(Kind::Cancel),
            _ => None,
        }
    }
}

/// The envelope and facts about a spooled message, stored as JSON so that
/// no client byte is ever written raw into a queue record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// Queue id: the id in `250 ... queued as <ID>` and the status API.
    pub id: String,
    /// Milliseconds since the Unix epoch at acceptance.
    pub received_at_ms: u64,
    pub tenant: String,
    pub login: String,
    pub peer: String,
    pub listener: String,
    pub helo: String,
    pub sender: String,
    pub recipients: Vec<String>,
    /// Stored as "7BIT" or "8BITMIME".
    #[serde(with = "as_text")]
    pub body: BodyType,
    /// Metadata the policy extracted (the X-IB-* headers, say).
    #[serde(default)]
    pub metadata: Vec<(String, String)>,
    /// Header fields to remove before relay.
    #[serde(default)]
    pub remove_headers: Vec<String>,
    /// Stored as `relay:<upstream>`, `sandbox` or `discard`.
    #[serde(default, with = "route_text")]
    pub route: Route,
    /// The policy version that answered this transaction.
    #[serde(default)]
    pub policy: String,
}

/// A typed field stored as its text form (`Display` / `FromStr`), so the
/// records on disk stay what they were when these fields were strings.
mod as_text {
    use serde::{Deserialize, Deserializer, Serializer, de};
    use std::fmt::Display;
    use std::str::FromStr;

    pub fn serialize<T: Display, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    pub fn deserialize<'de, T, D>(d: D) -> Result<T, D::Error>
    where
        T: FromStr<Err: Display>,
        D: Deserializer<'de>,
    {
        String::deserialize(d)?.parse().map_err(de::Error::custom)
    }
}

/// The route as text; an empty one (a record from before routes were
/// typed, when no route was chosen) relays to `default`, as it did then.
mod route_text {
    use super::Route;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(r: &Route, s: S) -> Result<S::Ok, S::Error> {
        super::as_text::serialize(r, s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Route, D::Error> {
        let text = String::deserialize(d)?;
        if text.is_empty() {
            return Ok(Route::default());
        }
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Encodes one record.
pub fn encode(kind: Kind, payload_parts: &[&[u8]]) -> Vec<u8> {
    let len: usize = payload_parts.iter().map(|p| p.len()).sum();
    let mut out = Vec::with_capacity(HEADER_LEN + len);
    out.extend_from_slice(MAGIC);
    out.push(kind as u8);
    out.extend_from_slice(&(len as u32).to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&[kind as u8]);
    for p in payload_parts {
        crc.update(p);
    }
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    for p in payload_parts {
        out.extend_from_slice(p);
    }
    out
}

/// Encodes a message record.
pub fn encode_message(meta: &Meta, content: &[u8]) -> Vec<u8> {
    let json = serde_json::to_vec(meta).expect("Meta serializes");
    encode(
        Kind::Message,
        &[&(json.len() as u32).to_le_bytes(), &json, content],
    )
}

/// Splits a message record's payload into envelope and content.
pub fn decode_message(payload: &[u8]) -> Option<(Meta, &[u8])> {
    let len = u32::from_le_bytes(payload.get(..4)?.try_into().ok()?) as usize;
    let json = payload.get(4..4 + len)?;
    let meta = serde_json::from_slice(json).ok()?;
    Some((meta, &payload[4 + len..]))
}

/// Reads the record at the start of `buf`: its kind, payload and total
/// length, or `None` if it is torn or corrupt.
pub fn decode(buf: &[u8]) -> Option<(Kind, &[u8], usize)> {
    if buf.len() < HEADER_LEN || &buf[..4] != MAGIC {
        return None;
    }
    let kind = Kind::from_u8(buf[4])?;
    let len = u32::from_le_bytes(buf[5..9].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(buf[9..13].try_into().ok()?);
    let payload = buf.get(HEADER_LEN..HEADER_LEN + len)?;
    let mut h = crc32fast::Hasher::new();
    h.update(&[buf[4]]);
    h.update(payload);
    (h.finalize() == crc).then_some((kind, payload, HEADER_LEN + len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_torn() {
        let meta = Meta {
            id: "01ABC".into(),
            received_at_ms: 1,
            tenant: "t".into(),
            login: "l".into(),
            peer: "127.0.0.1:1".into(),
            listener: "submission".into(),
            helo: "h".into(),
            sender: "a@b.example".into(),
            recipients: vec!["c@d.example".into()],
            body: BodyType::SevenBit,
            metadata: vec![("bulkId".into(), "b1".into())],
            remove_headers: vec![],
            route: Route::Sandbox,
            policy: "generation=1".into(),
        };
        let rec = encode_message(&meta, b"hello\r\n");
        let (kind, payload, n) = decode(&rec).unwrap();
        assert_eq!((kind, n), (Kind::Message, rec.len()));
        let (m, c) = decode_message(payload).unwrap();
        assert_eq!((m, c), (meta, &b"hello\r\n"[..]));
        for cut in 0..rec.len() {
            assert!(
                decode(&rec[..cut]).is_none(),
                "torn record at {cut} decoded"
            );
        }
        let mut flipped = rec.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(decode(&flipped).is_none());
    }

    /// The typed route and body are stored as the strings they replaced,
    /// and records from before routes were kept still read.
    #[test]
    fn route_and_body_keep_their_text_form_on_disk() {
        let meta = Meta {
            body: BodyType::EightBitMime,
            route: Route::Relay("eu".into()),
            ..Meta::default()
        };
        let json = serde_json::to_value(&meta).unwrap();
        assert_eq!(
            (&json["body"], &json["route"]),
            (&"8BITMIME".into(), &"relay:eu".into())
        );
        let back: Meta = serde_json::from_value(json).unwrap();
        assert_eq!(back, meta);
        for (route, want) in [
            (Some("sandbox"), Route::Sandbox),
            (Some("discard"), Route::Discard),
            (Some(""), Route::Relay("default".into())),
            (None, Route::Relay("default".into())),
        ] {
            let mut v = serde_json::json!({
                "id": "X", "received_at_ms": 1, "tenant": "t", "login": "l", "peer": "p",
                "listener": "s", "helo": "h", "sender": "a@b", "recipients": [], "body": "7BIT",
            });
            if let Some(r) = route {
                v["route"] = r.into();
            }
            let m: Meta = serde_json::from_value(v).unwrap();
            assert_eq!((m.route, m.body), (want, BodyType::SevenBit));
        }
        let bad = serde_json::json!({
            "id": "X", "received_at_ms": 1, "tenant": "t", "login": "l", "peer": "p",
            "listener": "s", "helo": "h", "sender": "a@b", "recipients": [], "body": "BINARY",
        });
        assert!(serde_json::from_value::<Meta>(bad).is_err());
    }

    #[test]
    fn a_record_with_an_empty_payload_is_just_its_header() {
        let rec = encode(Kind::Cancel, &[b""]);
        assert_eq!(rec.len(), HEADER_LEN);
        let (kind, payload, n) = decode(&rec).unwrap();
        assert_eq!((kind, payload, n), (Kind::Cancel, &b""[..], HEADER_LEN));
        assert_eq!(decode(&rec[..HEADER_LEN - 1]), None);
    }
}
