//! The notification-status HTTP API of the Sinch seed, as a Spin component.
//!
//! | request | answer |
//! |---|---|
//! | `GET /v1/{accountId}/notifications/id/{notificationId}` | `{"Notification": {"notificationId", "status": [...]}}`, every recipient |
//! | the same with `?recipient=email:<address>` | one recipient's events |
//! | `GET /v1/{accountId}/sandbox` | the account's sandboxed messages: `{"messages": [{"id", "size"}]}` |
//! | `GET /v1/{accountId}/sandbox/{id}` | one sandboxed message, raw (`message/rfc822`) |
//!
//! Every request needs `Authorization: Basic` with one of the account's
//! credentials: a login and its password, or the Infobip-style login `App`
//! with an API key `<key-id>.<secret>` as the password. Anything else gets
//! `401`. Unknown or expired notification ids get `{}` (the seed: "an
//! empty object will be returned").
//!
//! # Why these imports
//!
//! The component imports nothing but what Spin 4 provides, so `spin up`
//! runs it as it stands, and mailwit runs the same file in-process:
//!
//! - `wasi:http/incoming-handler@0.2.0` (spin-sdk 5.x, WASI 0.2). spin-sdk
//!   7.x builds WASI 0.3 components that only the newest Spin runs, and
//!   wasmtime 48's `wasmtime-wasi-http`, which mailwit embeds, serves 0.2.
//! - `fermyon:spin/key-value@2.0.0` for the data. It is what spin-sdk 5.x's
//!   key-value API imports, Spin provides it natively, and mailwit's host
//!   implements it over its status store. The alternatives were worse:
//!   `wasi:keyvalue@0.2.0-draft2` is not in spin-sdk 5.x's API, and
//!   `wasi:keyvalue@0.2.0-draft` (what `wasmtime serve -S keyvalue` offers)
//!   is not provided by Spin. No one import runs unchanged on both, so we
//!   picked the one of the runtime we target.
//! - `fermyon:spin/variables@2.0.0` for one setting, `retention_secs`
//!   (default 604800, the seed's 7 days).
//!
//! # The store: keys and values
//!
//! One store, `default`; every key starts with the account id, so one
//! store can hold many accounts (mailwit's host also refuses any key
//! outside the account of the request's path):
//!
//! | key | value |
//! |---|---|
//! | `{account}/users/{login}` | argon2 PHC hash of the login's password |
//! | `{account}/api-keys/{key-id}` | argon2 PHC hash of the whole API key |
//! | `{account}/notifications/{id}` | JSON list of events `{"ts_ms", "recipient", "status", "detail"}` |
//! | `{account}/sandbox` | JSON list `[{"id", "size"}]` |
//! | `{account}/sandbox/{id}` | the raw message |
//!
//! The password check (argon2) runs in the component, against the hash the
//! store gives: Spin has no host call for it, and the hash, not the
//! password, is what the store holds.

use argon2::password_hash::{PasswordHash, PasswordVerifier};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use spin_sdk::http::{Method, Request, Response};
use spin_sdk::http_component;
use spin_sdk::key_value::Store;

/// The seed's retention: "Data is only available for 7 days".
const DEFAULT_RETENTION_SECS: u64 = 7 * 24 * 3600;

/// One stored event, as mailwit's status store records it (other fields
/// are ignored).
#[derive(Clone, Deserialize)]
struct Event {
    ts_ms: u64,
    recipient: String,
    status: String,
    #[serde(default)]
    detail: String,
}

/// One entry of the seed's `status` list.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Status {
    status_code: String,
    status_text: String,
    channel: &'static str,
    recipient: String,
    timestamp: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Notification {
    notification_id: String,
    status: Vec<Status>,
}

#[derive(Serialize)]
struct Envelope {
    #[serde(rename = "Notification")]
    notification: Notification,
}

#[derive(Serialize, Deserialize)]
struct SandboxEntry {
    id: String,
    size: u64,
}

#[http_component]
fn handle(req: Request) -> Response {
    match serve(&req) {
        Ok(r) => r,
        Err(e) => json(503, &serde_json::json!({ "error": e })),
    }
}

/// The routes; `Err` is a store failure (503).
fn serve(req: &Request) -> Result<Response, String> {
    if *req.method() != Method::Get {
        return Ok(json(
            405,
            &serde_json::json!({ "error": "only GET is served" }),
        ));
    }
    let segments: Vec<&str> = req.path().trim_matches('/').split('/').collect();
    let (account, rest) = match segments.as_slice() {
        ["v1", account, rest @ ..] if valid_segment(account) => (*account, rest),
        _ => return Ok(not_found()),
    };
    let store = Store::open_default().map_err(|e| format!("opening the store: {e}"))?;
    if !authorized(
        &store,
        account,
        req.header("authorization").and_then(|v| v.as_str()),
    )? {
        let mut r = json(
            401,
            &serde_json::json!({ "error": "authentication required" }),
        );
        r.set_header("www-authenticate", "Basic realm=\"mailwit status\"");
        return Ok(r);
    }
    match rest {
        ["notifications", "id", id] if valid_segment(id) => {
            notification(&store, account, id, req.query())
        }
        ["sandbox"] => {
            let list: Vec<SandboxEntry> = match get(&store, &format!("{account}/sandbox"))? {
                Some(v) => serde_json::from_slice(&v).map_err(|e| format!("sandbox list: {e}"))?,
                None => Vec::new(),
            };
            Ok(json(200, &serde_json::json!({ "messages": list })))
        }
        ["sandbox", id] if valid_segment(id) => {
            Ok(match get(&store, &format!("{account}/sandbox/{id}"))? {
                Some(raw) => Response::builder()
                    .status(200)
                    .header("content-type", "message/rfc822")
                    .body(raw)
                    .build(),
                None => not_found(),
            })
        }
        _ => Ok(not_found()),
    }
}

fn notification(store: &Store, account: &str, id: &str, query: &str) -> Result<Response, String> {
    let wanted =
        query_param(query, "recipient").map(|r| r.strip_prefix("email:").unwrap_or(&r).to_string());
    let Some(raw) = get(store, &format!("{account}/notifications/{id}"))? else {
        return Ok(json(200, &serde_json::json!({})));
    };
    let events: Vec<Event> =
        serde_json::from_slice(&raw).map_err(|e| format!("notification {id}: {e}"))?;
    // A notification expires whole, counted from its first event (the
    // seed: "If the notification was sent more than 7 days back, an empty
    // object will be returned"), never leaving part of its history.
    let cutoff = now_ms().saturating_sub(retention_secs().saturating_mul(1000));
    if events
        .iter()
        .map(|e| e.ts_ms)
        .min()
        .is_some_and(|t| t < cutoff)
    {
        return Ok(json(200, &serde_json::json!({})));
    }
    let status: Vec<Status> = events
        .into_iter()
        .filter(|e| {
            wanted
                .as_deref()
                .is_none_or(|w| w.eq_ignore_ascii_case(&e.recipient))
        })
        .flat_map(statuses_of)
        .collect();
    if status.is_empty() {
        return Ok(json(200, &serde_json::json!({})));
    }
    Ok(json(
        200,
        &Envelope {
            notification: Notification {
                notification_id: id.to_string(),
                status,
            },
        },
    ))
}

/// mailwit's steps in the seed's vocabulary, in the seed's order
/// (`CAAS_RECEIVED`, `CAAS_SENT`, `CH_RECEIVED`, `CH_SENT`): `CAAS_*` for
/// what happens in mailwit itself, `CH_*` for what the channel (the next
/// hop) answered. The next hop's acceptance is both that the channel
/// received the message and, as far as mailwit can know, sent it: one
/// `sent` event is `CH_RECEIVED` (with the next hop's reply) then
/// `CH_SENT`, at its time.
fn statuses_of(e: Event) -> Vec<Status> {
    if e.status == "sent" {
        let received = Event {
            status: "channel_received".into(),
            ..e.clone()
        };
        return vec![status_of(received), status_of(e)];
    }
    vec![status_of(e)]
}

fn status_of(e: Event) -> Status {
    let (code, ok_text) = match e.status.as_str() {
        "received" => ("CAAS_RECEIVED", Some("Successful")),
        "relaying" => ("CAAS_SENT", Some("Handed to the next hop")),
        "channel_received" => ("CH_RECEIVED", None),
        "sent" => ("CH_SENT", Some("Successful")),
        "deferred" => ("CH_DEFERRED", None),
        "failed" => ("CH_FAILED", None),
        "bounced" => ("CAAS_BOUNCED", None),
        "delivered_to_sandbox" => ("CAAS_SANDBOXED", Some("Captured in the sandbox")),
        "discarded" => ("CAAS_DISCARDED", Some("Discarded by the account's route")),
        "report_failed" => ("CAAS_REPORT_FAILED", None),
        _ => ("CAAS_UNKNOWN", None),
    };
    Status {
        status_code: code.to_string(),
        status_text: ok_text.map(str::to_string).unwrap_or(e.detail),
        channel: "email",
        recipient: format!("email:{}", e.recipient),
        timestamp: chrono::DateTime::from_timestamp_millis(e.ts_ms as i64)
            .map(|t| t.format("%Y-%m-%d %H:%M:%S%.3f").to_string())
            .unwrap_or_default(),
    }
}

/// Checks `Authorization: Basic` against the account's hashes.
fn authorized(store: &Store, account: &str, header: Option<&str>) -> Result<bool, String> {
    let Some(encoded) = header.and_then(|h| {
        h.strip_prefix("Basic ")
            .or_else(|| h.strip_prefix("basic "))
    }) else {
        return Ok(false);
    };
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
        return Ok(false);
    };
    let Ok(decoded) = String::from_utf8(decoded) else {
        return Ok(false);
    };
    let Some((login, password)) = decoded.split_once(':') else {
        return Ok(false);
    };
    let key = if login == "App" {
        let id = password.split('.').next().unwrap_or("");
        if !valid_segment(id) {
            return Ok(false);
        }
        format!("{account}/api-keys/{id}")
    } else {
        if !valid_segment(login) {
            return Ok(false);
        }
        format!("{account}/users/{login}")
    };
    let Some(hash) = get(store, &key)? else {
        return Ok(false);
    };
    let hash = String::from_utf8_lossy(&hash);
    Ok(PasswordHash::new(&hash).is_ok_and(|h| {
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    }))
}

/// A path segment or login that cannot escape its key: no `/`, no control
/// characters, not empty, not `.` or `..`.
fn valid_segment(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 256
        && s != "."
        && s != ".."
        && !s.chars().any(|c| c == '/' || c.is_control())
}

fn get(store: &Store, key: &str) -> Result<Option<Vec<u8>>, String> {
    store.get(key).map_err(|e| format!("reading {key}: {e}"))
}

fn retention_secs() -> u64 {
    spin_sdk::variables::get("retention_secs")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(DEFAULT_RETENTION_SECS)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The first value of `name` in a query string, percent-decoded.
/// A query parameter's first value. Pairs are separated by `&`, and also
/// by `?` before a parameter name: the seed's own sample URL repeats its
/// parameter that way (`?recipient=email:a@b?recipient=email:a@b`) and
/// "gives the same result". A `?` elsewhere stays part of the value.
fn query_param(query: &str, name: &str) -> Option<String> {
    let seed_form = query.replace(&format!("?{name}="), &format!("&{name}="));
    seed_form.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name).then(|| percent_decode(v))
    })
}

/// Decodes `%XX` escapes. A `+` stays a `+`: addresses contain them, and
/// this is a query string, not a form.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let (Some(h), Some(l)) = (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            )
        {
            out.push(h << 4 | l);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn json(status: u16, body: &impl Serialize) -> Response {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(serde_json::to_vec(body).unwrap_or_default())
        .build()
}

fn not_found() -> Response {
    json(404, &serde_json::json!({ "error": "not found" }))
}

#[cfg(test)]
mod tests {
    use super::query_param;

    #[test]
    fn the_recipient_is_read_from_both_url_forms() {
        let want = Some("email:a@b.example".to_string());
        assert_eq!(
            query_param("recipient=email:a@b.example", "recipient"),
            want
        );
        assert_eq!(
            query_param("x=1&recipient=email:a%40b.example", "recipient"),
            want
        );
        // The seed's sample: the parameter twice, joined by '?'.
        assert_eq!(
            query_param(
                "recipient=email:a@b.example?recipient=email:a@b.example",
                "recipient"
            ),
            want
        );
        // A '?' inside a value that is not another parameter stays.
        assert_eq!(
            query_param("recipient=email:who?@b.example", "recipient"),
            Some("email:who?@b.example".to_string())
        );
        assert_eq!(query_param("other=1", "recipient"), None);
    }
}
