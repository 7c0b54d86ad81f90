//! The admin HTTP API, on its own listener (loopback by default), and the
//! CLI's client for it.
//!
//! | method and path | what |
//! |---|---|
//! | `GET /metrics` | Prometheus metrics (no token) |
//! | `GET /v1/tenants` | tenants, functions, active versions (JSON) |
//! | `PUT /v1/tenants/{t}/functions/{f}` | deploy a component (body: the `.wasm`) |
//! | `PUT /v1/tenants/{t}/rules` | replace the rules (body: TOML) |
//! | `POST /v1/tenants/{t}/functions/{f}/rollback` | previous version (`f` = `rules` for the rules) |
//! | `POST /v1/tenants`, `GET`/`DELETE /v1/tenants/{t}`, `.../suspend`, `.../resume`, `.../users...`, `.../api-keys...` | a tenant's account: see [`accounts`] |
//! | `GET /v1/messages/{id}[?recipient=a@b]` | a message's status events, any tenant (JSON) |
//! | `GET /v1/tenants/{t}/sandbox` | the tenant's sandboxed messages (JSON) |
//! | `GET /v1/tenants/{t}/sandbox/{id}` | one sandboxed message, raw |
//! | `GET /v1/status-api` | the status API component's active version |
//! | `PUT /v1/status-api` | deploy a status API component (body: the `.wasm`) |
//! | `POST /v1/status-api/rollback` | its previous version |
//! | `POST /v1/reload` | read the configuration's `[limits]` and the certificate files again (as `SIGHUP`) |
//!
//! Everything under `/v1/` needs `Authorization: Bearer <token>`.

use std::sync::Arc;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio::sync::watch;

mod accounts;

use crate::delivery::status::StatusStore;
use crate::metrics::Metrics;
use crate::tenants::{AdminError, Tenants};

/// Largest request body (a component).
const MAX_BODY: usize = 32 << 20;

pub struct Admin {
    pub sandbox: Arc<dyn crate::delivery::sandbox::SandboxStore>,
    pub tenants: Arc<Tenants>,
    pub metrics: Arc<Metrics>,
    pub status: Arc<dyn StatusStore>,
    pub status_api: Arc<crate::statusapi::StatusApi>,
    pub delivery: Arc<crate::delivery::Delivery>,
    pub reload: Arc<crate::reload::Reloader>,
    pub auth_gate: Arc<crate::authgate::AuthGate>,
    pub budget: Arc<crate::budget::ContentBudget>,
    pub token: String,
}

/// Serves the admin API until shutdown.
pub async fn serve(admin: Arc<Admin>, listener: TcpListener, shutdown: watch::Receiver<bool>) {
    crate::httpd::serve(listener, shutdown, move |req| {
        let admin = admin.clone();
        async move { handle(&admin, req).await }
    })
    .await
}

fn reply(status: StatusCode, body: impl Into<Bytes>, content_type: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(body.into()))
        .expect("valid response")
}

fn json(status: StatusCode, value: serde_json::Value) -> Response<Full<Bytes>> {
    reply(status, value.to_string() + "\n", "application/json")
}

fn error(e: AdminError) -> Response<Full<Bytes>> {
    let status = match e {
        AdminError::Invalid(_) => StatusCode::BAD_REQUEST,
        AdminError::NoTenant(_) | AdminError::NotFound(_) => StatusCode::NOT_FOUND,
        AdminError::Conflict(_) => StatusCode::CONFLICT,
        AdminError::Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    json(status, serde_json::json!({ "error": e.to_string() }))
}

/// Constant-time comparison, so the token cannot be guessed byte by byte.
fn token_ok(given: &[u8], token: &[u8]) -> bool {
    given.len() == token.len()
        && given
            .iter()
            .zip(token)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

async fn handle(admin: &Admin, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path: Vec<String> = req
        .uri()
        .path()
        .trim_matches('/')
        .split('/')
        .map(str::to_string)
        .collect();
    let path: Vec<&str> = path.iter().map(String::as_str).collect();
    if req.method() == Method::GET && path == ["metrics"] {
        let mut text = admin
            .metrics
            .render(&admin.tenants.list(), admin.delivery.gauges());
        admin.auth_gate.render("mailwit_auth", &mut text);
        admin.budget.render(&mut text);
        admin
            .status_api
            .gate()
            .render("mailwit_status_api_auth", &mut text);
        return reply(StatusCode::OK, text, "text/plain; version=0.0.4");
    }
    let bearer = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !token_ok(bearer.as_bytes(), admin.token.as_bytes()) {
        return json(
            StatusCode::UNAUTHORIZED,
            serde_json::json!({ "error": "missing or wrong bearer token" }),
        );
    }
    if let (&Method::GET, ["v1", "tenants", t, "sandbox", id]) = (req.method(), path.as_slice()) {
        return match admin.sandbox.message(t, id).await {
            Ok(Some(raw)) => reply(StatusCode::OK, raw, "message/rfc822"),
            Ok(None) => error(AdminError::NotFound(format!(
                "no sandboxed message {id} for tenant {t}"
            ))),
            Err(e) => error(AdminError::Storage(
                anyhow::Error::new(e).context("reading the sandbox"),
            )),
        };
    }
    let method = req.method().clone();
    let query = req.uri().query().unwrap_or("").to_string();
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return json(
                StatusCode::PAYLOAD_TOO_LARGE,
                serde_json::json!({ "error": "body too large" }),
            );
        }
    };
    let tenants = admin.tenants.clone();
    let status = admin.status.clone();
    let status_api = admin.status_api.clone();
    let sandbox = admin.sandbox.clone();
    let reload = admin.reload.clone();
    // The status store's reads are async: run from the blocking thread.
    let handle = tokio::runtime::Handle::current();
    let owned: Vec<String> = path.iter().map(|s| s.to_string()).collect();
    // Deploys compile: keep them off the async workers.
    let result = tokio::task::spawn_blocking(move || {
        let p: Vec<&str> = owned.iter().map(String::as_str).collect();
        match (method, p.as_slice()) {
            (Method::POST, ["v1", "reload"]) => {
                let outcome = reload.reload();
                if outcome.errors.is_empty() {
                    Ok(serde_json::to_value(outcome).expect("serializable"))
                } else {
                    Err(AdminError::Invalid(outcome.errors.join("; ")))
                }
            }
            (Method::GET, ["v1", "status-api"]) => Ok(status_api.summary()),
            (Method::PUT, ["v1", "status-api"]) => status_api.deploy(&body),
            (Method::POST, ["v1", "status-api", "rollback"]) => status_api.rollback(),
            (Method::GET, ["v1", "tenants"]) => {
                Ok(serde_json::to_value(tenants.list()).expect("serializable"))
            }
            (m, ["v1", "tenants", rest @ ..]) if accounts::handles(&m, rest) => accounts::route(
                &accounts::Stores {
                    tenants: &tenants,
                    status: &*status,
                    sandbox: &*sandbox,
                    handle: &handle,
                },
                m,
                rest,
                &query,
                &body,
            ),
            (Method::PUT, ["v1", "tenants", t, "functions", f]) => tenants
                .deploy(t, f, &body)
                .map(|s| serde_json::json!({ "tenant": t, "deployed": s })),
            (Method::PUT, ["v1", "tenants", t, "rules"]) => {
                let text = String::from_utf8(body.to_vec())
                    .map_err(|_| AdminError::Invalid("rules must be UTF-8 TOML".into()))?;
                tenants
                    .set_rules(t, &text)
                    .map(|v| serde_json::json!({ "tenant": t, "rules_version": v }))
            }
            (Method::POST, ["v1", "tenants", t, "functions", f, "rollback"]) => tenants
                .rollback(t, f)
                .map(|v| serde_json::json!({ "tenant": t, "function": f, "active_version": v })),
            (Method::GET, ["v1", "tenants", t, "sandbox"]) => {
                let list: Vec<serde_json::Value> = handle
                    .block_on(sandbox.list(t))
                    .map_err(|e| {
                        AdminError::Storage(anyhow::Error::new(e).context("reading the sandbox"))
                    })?
                    .into_iter()
                    .map(|(id, size)| serde_json::json!({ "id": id, "size": size }))
                    .collect();
                Ok(serde_json::json!({ "tenant": t, "messages": list }))
            }
            (Method::GET, ["v1", "messages", id]) => {
                let recipient = query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("recipient="));
                let events = handle
                    .block_on(status.message(None, id, recipient))
                    .map_err(|e| {
                        AdminError::Storage(
                            anyhow::Error::new(e).context("reading the status store"),
                        )
                    })?;
                if events.is_empty() {
                    Err(AdminError::NotFound(format!("no events for message {id}")))
                } else {
                    Ok(serde_json::json!({ "message_id": id, "events": events }))
                }
            }
            _ => Err(AdminError::NotFound("no such admin endpoint".into())),
        }
    })
    .await;
    match result {
        Ok(Ok(v)) => {
            tracing::info!(event = "admin", path = %path.join("/"), "admin change applied");
            json(StatusCode::OK, v)
        }
        Ok(Err(e)) => {
            tracing::info!(event = "admin.refused", path = %path.join("/"), cause = %e);
            error(e)
        }
        Err(e) => json(
            StatusCode::INTERNAL_SERVER_ERROR,
            serde_json::json!({ "error": e.to_string() }),
        ),
    }
}

/// The CLI's side: one request to the admin API. Returns the status and the
/// body.
pub async fn request(
    addr: std::net::SocketAddr,
    token: &str,
    method: Method,
    path: &str,
    body: Vec<u8>,
) -> anyhow::Result<(StatusCode, String)> {
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| {
        anyhow::anyhow!(
            "connecting to the admin listener at {addr}: {e} (is `mailwit serve` running?)"
        )
    })?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(Bytes::from(body)))?;
    let res = sender.send_request(req).await?;
    let status = res.status();
    let body = res.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}
