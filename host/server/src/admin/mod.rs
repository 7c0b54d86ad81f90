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
//! | `POST /v1/tokens` | a tenant token (body `{"tenant", "ttl_secs"?}`), shown once |
//! | `GET /v1/tokens[?tenant=t]` | tokens: ids, tenants, times |
//! | `DELETE /v1/tokens/{id}` | revoke a token |
//!
//! Everything under `/v1/` needs `Authorization: Bearer <token>`: the
//! operator's, or a tenant's, which reaches only that tenant ([`tokens`]).

use std::sync::Arc;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio::sync::watch;

mod accounts;
mod console;
pub mod tokens;

use crate::delivery::status::StatusStore;
use crate::metrics::Metrics;
use crate::tenants::{AdminError, Tenants};
use tokens::Access;

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
    pub tokens: tokens::Tokens,
    pub shadows: Arc<crate::shadow::Shadows>,
    pub recorder: Arc<crate::replay::Recorder>,
    /// Checks the console's SMTP-login sign-ins, as a login is checked.
    pub policy: Arc<dyn crate::policy::Policy>,
}

/// Serves the admin API until shutdown (over TLS with `tls`).
pub async fn serve(
    admin: Arc<Admin>,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: watch::Receiver<bool>,
) {
    crate::httpd::serve(listener, tls, shutdown, move |req| {
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
        AdminError::Forbidden(_) => StatusCode::FORBIDDEN,
        AdminError::Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    json(status, serde_json::json!({ "error": e.to_string() }))
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
    if req.method() == Method::GET && path == ["console"] {
        return reply(StatusCode::OK, console::PAGE, "text/html; charset=utf-8");
    }
    if req.method() == Method::POST && path == ["v1", "console", "session"] {
        return console::sign_in(admin, req).await;
    }
    if req.method() == Method::GET && path == ["metrics"] {
        let mut text = admin
            .metrics
            .render(&admin.tenants.list(), admin.delivery.gauges());
        admin.auth_gate.render("mailwit_auth", &mut text);
        admin.budget.render(&mut text);
        crate::metrics::render_cpu(&admin.tenants.runtime().cpu_usage(), &mut text);
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
    let access = match admin.tokens.access(bearer).await {
        Ok(Some(a)) => a,
        Ok(None) => {
            return json(
                StatusCode::UNAUTHORIZED,
                serde_json::json!({ "error": "missing, wrong, expired or revoked bearer token" }),
            );
        }
        Err(e) => return error(e),
    };
    // What a tenant's token may not reach is answered before anything is read.
    let tenant_scope = match &access {
        Access::Operator => None,
        Access::Tenant(t) => {
            if let Err(e) = tokens::scope(t, req.method(), &path) {
                tracing::info!(event = "admin.refused", tenant = %t, path = %path.join("/"), cause = %e);
                return error(e);
            }
            Some(t.clone())
        }
    };
    // A sandboxed message, raw or as the console views it.
    if let (&Method::GET, ["v1", "tenants", t, "sandbox", id, rest @ ..]) =
        (req.method(), path.as_slice())
        && matches!(rest, [] | ["view"])
    {
        return match admin.sandbox.message(t, id).await {
            Ok(Some(raw)) if rest.is_empty() => reply(StatusCode::OK, raw, "message/rfc822"),
            Ok(Some(raw)) => json(StatusCode::OK, console::view(&raw)),
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
    if path.first() == Some(&"v1") && path.get(1) == Some(&"tokens") {
        let body = Limited::new(req.into_body(), 64 << 10).collect().await;
        let body = body.map(|b| b.to_bytes()).unwrap_or_default();
        return answer(
            &path,
            token_route(admin, &method, &path, &query, &body).await,
        );
    }
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
    let scope = tenant_scope.clone();
    let deleting = method == Method::DELETE;
    let status_api = admin.status_api.clone();
    let sandbox = admin.sandbox.clone();
    let reload = admin.reload.clone();
    let shadows = admin.shadows.clone();
    let recorder = admin.recorder.clone();
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
                let mut list = tenants.list();
                list.retain(|t| scope.as_ref().is_none_or(|s| *s == t.tenant));
                Ok(serde_json::to_value(list).expect("serializable"))
            }
            (m, ["v1", "tenants", rest @ ..]) if accounts::handles(&m, rest) => accounts::route(
                &accounts::Stores {
                    tenants: &tenants,
                    status: &*status,
                    sandbox: &*sandbox,
                    handle: &handle,
                    recorder: &recorder,
                    shadows: &shadows,
                },
                m,
                rest,
                &query,
                &body,
            ),
            (Method::PUT, ["v1", "tenants", t, "functions", f])
                if query.split('&').any(|kv| kv == "shadow=true") =>
            {
                let version = tenants.shadow_candidate(t, f, &body)?;
                shadows.start(t, f, version, body.to_vec());
                Ok(serde_json::json!({ "tenant": t, "function": f, "shadow": true }))
            }
            (Method::PUT, ["v1", "tenants", t, "functions", f]) => tenants
                .deploy(t, f, &body)
                .map(|s| serde_json::json!({ "tenant": t, "deployed": s })),
            (Method::POST, ["v1", "tenants", t, "functions", f, "test"]) => {
                test_candidate(&tenants, &recorder, &handle, t, f, &body)
            }
            (Method::GET, ["v1", "tenants", t, "shadow"]) => shadows
                .report(t)
                .ok_or_else(|| AdminError::NotFound(format!("tenant {t} has no shadow"))),
            (Method::POST, ["v1", "tenants", t, "shadow", "promote"]) => {
                let shadow = shadows
                    .get(t)
                    .ok_or_else(|| AdminError::NotFound(format!("tenant {t} has no shadow")))?;
                let deployed = tenants.deploy(t, &shadow.function, &shadow.bytes)?;
                shadows.stop(t);
                Ok(serde_json::json!({ "tenant": t, "promoted": deployed }))
            }
            (Method::DELETE, ["v1", "tenants", t, "shadow"]) => shadows
                .stop(t)
                .map(|s| serde_json::json!({ "tenant": t, "dropped": s.function }))
                .ok_or_else(|| AdminError::NotFound(format!("tenant {t} has no shadow"))),
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
            (Method::GET, ["v1", "tenants", t, "messages"]) => {
                let param = |k: &str| {
                    query
                        .split('&')
                        .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('='))
                        .map(accounts::decoded)
                        .filter(|v| !v.is_empty())
                };
                let ms = |k: &str| param(k).and_then(|v| v.parse::<u64>().ok());
                let q = crate::delivery::status::Search {
                    recipient: param("recipient"),
                    bulk_id: param("bulk"),
                    since_ms: ms("since_ms"),
                    until_ms: ms("until_ms"),
                };
                let found = handle.block_on(status.search(t, &q)).map_err(|e| {
                    AdminError::Storage(anyhow::Error::new(e).context("searching the status store"))
                })?;
                Ok(serde_json::json!({ "tenant": t, "messages": found }))
            }
            (Method::GET, ["v1", "messages", id]) => {
                let recipient = query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("recipient="));
                let events = handle
                    .block_on(status.message(scope.as_deref(), id, recipient))
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
    let result = match result {
        Ok(r) => r,
        Err(e) => Err(AdminError::Storage(anyhow::anyhow!(
            "the admin task failed: {e}"
        ))),
    };
    if result.is_ok()
        && deleting
        && let ["v1", "tenants", t] = path.as_slice()
        && let Err(e) = admin.tokens.revoke_tenant(t).await
    {
        return answer(&path, Err(e));
    }
    answer(&path, result)
}

/// The answer to an admin request, logged.
fn answer(path: &[&str], result: Result<serde_json::Value, AdminError>) -> Response<Full<Bytes>> {
    match result {
        Ok(v) => {
            tracing::info!(event = "admin", path = %path.join("/"), "admin change applied");
            json(StatusCode::OK, v)
        }
        Err(e) => {
            tracing::info!(event = "admin.refused", path = %path.join("/"), cause = %e);
            error(e)
        }
    }
}

/// The operator's token routes: issue, list, revoke.
async fn token_route(
    admin: &Admin,
    method: &Method,
    path: &[&str],
    query: &str,
    body: &[u8],
) -> Result<serde_json::Value, AdminError> {
    match (method, path) {
        (&Method::POST, ["v1", "tokens"]) => {
            let v: serde_json::Value = serde_json::from_slice(body)
                .map_err(|e| AdminError::Invalid(format!("the body is not JSON: {e}")))?;
            let tenant = v["tenant"]
                .as_str()
                .ok_or_else(|| AdminError::Invalid("the body needs a \"tenant\"".into()))?;
            if admin.tenants.get(tenant).is_none() {
                return Err(AdminError::NoTenant(tenant.to_string()));
            }
            let ttl = v["ttl_secs"].as_u64().unwrap_or(tokens::DEFAULT_TTL_SECS);
            admin.tokens.issue(tenant, ttl).await
        }
        (&Method::GET, ["v1", "tokens"]) => {
            let tenant = query.split('&').find_map(|kv| kv.strip_prefix("tenant="));
            admin.tokens.list(tenant).await
        }
        (&Method::DELETE, ["v1", "tokens", id]) => {
            admin.tokens.revoke(id).await?;
            Ok(serde_json::json!({ "id": id, "revoked": true }))
        }
        _ => Err(AdminError::NotFound("no such admin endpoint".into())),
    }
}

/// The admin listener's TLS, when `[admin] tls_cert` and `tls_key` are set.
pub fn tls_acceptor(
    config: &crate::config::AdminConfig,
) -> anyhow::Result<Option<tokio_rustls::TlsAcceptor>> {
    let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else {
        return Ok(None);
    };
    let ck = crate::tls::load_pem_files(cert, key)?;
    let store = Arc::new(crate::tls::CertStore::new(ck, None));
    Ok(Some(tokio_rustls::TlsAcceptor::from(
        store.server_config()?,
    )))
}

/// How the CLI reaches the admin listener over TLS: the certificates it
/// trusts (`[admin] tls_ca`, else `tls_cert`), or none for plain HTTP.
fn tls_connector(
    config: &crate::config::AdminConfig,
) -> anyhow::Result<Option<tokio_rustls::TlsConnector>> {
    let Some(ca) = config.tls_ca.as_ref().or(config.tls_cert.as_ref()) else {
        return Ok(None);
    };
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let pem = std::fs::read(ca).map_err(|e| anyhow::anyhow!("reading {}: {e}", ca.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        roots.add(cert?)?;
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Some(tokio_rustls::TlsConnector::from(Arc::new(tls))))
}

/// The CLI's side: one request to the admin API (over TLS when the
/// configuration's admin listener has it). Returns the status and the body.
pub async fn request(
    config: &crate::config::AdminConfig,
    token: &str,
    method: Method,
    path: &str,
    body: Vec<u8>,
) -> anyhow::Result<(StatusCode, String)> {
    let addr = config.addr;
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| {
        anyhow::anyhow!(
            "connecting to the admin listener at {addr}: {e} (is `mailwit serve` running?)"
        )
    })?;
    let mut sender = match tls_connector(config)? {
        None => {
            let (sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
            tokio::spawn(conn);
            sender
        }
        Some(tls) => {
            let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
            let stream = tls
                .connect(name, tcp)
                .await
                .map_err(|e| anyhow::anyhow!("TLS with the admin listener at {addr}: {e}"))?;
            let (sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            sender
        }
    };
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

/// `POST /v1/tenants/{t}/functions/{f}/test`: the candidate (base64 in
/// `component`) against the `.eml` files given (`messages`: `name` and
/// base64 `content`), or else the tenant's recorded transactions, next to
/// the live set (see [`crate::replay`]).
fn test_candidate(
    tenants: &Tenants,
    recorder: &crate::replay::Recorder,
    handle: &tokio::runtime::Handle,
    t: &str,
    f: &str,
    body: &[u8],
) -> Result<serde_json::Value, AdminError> {
    use base64::Engine;
    #[derive(serde::Deserialize)]
    struct Eml {
        name: String,
        content: String,
    }
    #[derive(serde::Deserialize)]
    struct Request {
        component: String,
        messages: Option<Vec<Eml>>,
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let bad = |e: String| AdminError::Invalid(e);
    let req: Request = serde_json::from_slice(body).map_err(|e| bad(e.to_string()))?;
    let bytes = b64
        .decode(&req.component)
        .map_err(|e| bad(format!("component: {e}")))?;
    let candidate = Arc::new(tenants.shadow_candidate(t, f, &bytes)?);
    let live = tenants
        .get(t)
        .ok_or_else(|| AdminError::NoTenant(t.to_string()))?;
    let set = crate::shadow::with_candidate(&live, &candidate, f, "~test");
    let (cases, source) = match req.messages {
        Some(list) => {
            let mut cases = Vec::new();
            for m in list {
                let content = b64
                    .decode(&m.content)
                    .map_err(|e| bad(format!("{}: {e}", m.name)))?;
                cases.push(Arc::new(
                    crate::replay::Case::from_eml(m.name, t, &content).map_err(bad)?,
                ));
            }
            (cases, "messages")
        }
        None => (recorder.recorded(t), "recorded transactions"),
    };
    let mut report = handle.block_on(crate::replay::compare(
        tenants.runtime(),
        &live,
        &set,
        &cases,
    ));
    report["source"] = source.into();
    report["function"] = f.into();
    Ok(report)
}
