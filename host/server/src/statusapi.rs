//! The status API listener: the Sinch-style notification-status API (and
//! the tenant's sandbox), answered by an HTTP component
//! (`components/status`, the same `.wasm` that `spin up` runs) on a fresh
//! instance per request.
//!
//! The component reads through Spin's key-value interface; here that store
//! is a read-only view computed per request from mailwit's own data, and
//! scoped to the account named in the request's path
//! (`/v1/{account}/...`): a key of any other account reads as absent, so a
//! component, even a faulty one, cannot show one tenant another's data.
//!
//! | key | answered from |
//! |---|---|
//! | `{account}/users/{login}` | the tenant's rules, `users.<login>` (a PHC hash) |
//! | `{account}/api-keys/{id}` | the tenant's rules, `api-keys.<id>` |
//! | `{account}/notifications/{id}` | the status store's events of that message (JSON list) |
//! | `{account}/sandbox` | the tenant's sandbox listing (JSON) |
//! | `{account}/sandbox/{id}` | one sandboxed message, raw |
//!
//! Variables: `retention_secs` (from `[delivery] retention_secs`).
//!
//! The component is versioned like a policy function, in the artifact
//! store as owner `status-api` (`state.json`, `<v>.wasm`; on one host under
//! `<data_dir>/status-api/`); version 1 is the embedded build of
//! `components/status`. In a cluster every host follows another's deploy. A deploy swaps it for the next
//! request; requests under way finish on the version they started with.

use std::sync::{Arc, Mutex, RwLock};

use http_body_util::{BodyExt, Full, Limited};
use hyper::Request;
use hyper::body::Incoming;
use mailwit_runtime::http::{HostData, HttpFunction, HttpResponse, plain_response};
use mailwit_runtime::{Limits, Rules, Runtime};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::artifacts::ArtifactStore;
use crate::authgate::{AuthGate, GateConfig, Refusal};
use crate::config::StatusApiConfig;
use crate::delivery::sandbox::SandboxStore;
use crate::delivery::status::StatusStore;
use crate::httpd::Peer;
use crate::metrics::Metrics;
use crate::tenants::{AdminError, STATUS_COMPONENT, Tenants, Track};

/// The status API: its component versions and what its store reads.
pub struct StatusApi {
    rt: Arc<Runtime>,
    store: Arc<dyn ArtifactStore>,
    /// Runs the store's calls from the blocking threads deploys run on.
    handle: tokio::runtime::Handle,
    sandbox: Arc<dyn SandboxStore>,
    tenants: Arc<Tenants>,
    status: Arc<dyn StatusStore>,
    metrics: Arc<Metrics>,
    config: StatusApiConfig,
    retention_secs: u64,
    active: RwLock<Arc<HttpFunction>>,
    /// Version history; held for the whole of a deploy or rollback.
    track: Mutex<Track>,
    /// Requests under way: at most `max_concurrent`, at most `queue` more
    /// waiting (then `503`), so a flood of status requests cannot take the
    /// instance pool from mail; every request checks a password, so failed
    /// ones slow their address down (`429`).
    gate: AuthGate,
}

impl StatusApi {
    /// Loads the active version, or stores the embedded component as
    /// version 1. Call from a blocking thread of a tokio runtime.
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        rt: Arc<Runtime>,
        sandbox: Arc<dyn SandboxStore>,
        tenants: Arc<Tenants>,
        status: Arc<dyn StatusStore>,
        metrics: Arc<Metrics>,
        config: StatusApiConfig,
        retention_secs: u64,
        store: Arc<dyn ArtifactStore>,
    ) -> anyhow::Result<StatusApi> {
        let handle = tokio::runtime::Handle::current();
        let track: Track = match handle.block_on(store.state(OWNER))? {
            Some(bytes) => serde_json::from_slice(&bytes)?,
            None => {
                handle.block_on(store.put_blob(OWNER, &blob(1), STATUS_COMPONENT))?;
                let t = Track {
                    latest: 1,
                    history: vec![1],
                };
                handle.block_on(store.put_state(OWNER, &serde_json::to_vec_pretty(&t)?))?;
                t
            }
        };
        let v = track.active().unwrap_or(1);
        let bytes = handle.block_on(store.blob(OWNER, &blob(v)))?;
        let f = rt
            .load_http(v, &bytes)
            .map_err(|e| anyhow::anyhow!("status API component v{v}: {e}"))?;
        Ok(StatusApi {
            rt,
            store,
            handle,
            sandbox,
            tenants,
            status,
            metrics,
            retention_secs,
            gate: AuthGate::new(GateConfig {
                workers: config.max_concurrent,
                queue: config.queue,
                queue_timeout: std::time::Duration::from_millis(config.queue_timeout_ms),
                refusal_hold: std::time::Duration::ZERO,
                one_per_address: false,
            }),
            config,
            active: RwLock::new(Arc::new(f)),
            track: Mutex::new(track),
        })
    }

    /// The active version and its digest.
    pub fn summary(&self) -> serde_json::Value {
        let f = self.active.read().expect("active lock").clone();
        serde_json::json!({ "version": f.version, "digest": f.digest })
    }

    /// Validates, stores and activates a new version.
    pub fn deploy(&self, bytes: &[u8]) -> Result<serde_json::Value, AdminError> {
        let mut track = self.track.lock().expect("track lock");
        let version = track.latest + 1;
        let f = self
            .rt
            .load_http(version, bytes)
            .map_err(|e| AdminError::Invalid(e.to_string()))?;
        self.handle
            .block_on(self.store.put_blob(OWNER, &blob(version), bytes))?;
        let mut next = track.clone();
        next.latest = version;
        next.history.push(version);
        self.activate(&mut track, next, f)?;
        Ok(self.summary())
    }

    /// Re-activates the previous version.
    pub fn rollback(&self) -> Result<serde_json::Value, AdminError> {
        let mut track = self.track.lock().expect("track lock");
        if track.history.len() < 2 {
            return Err(AdminError::NotFound(
                "the status API has no previous version to roll back to".into(),
            ));
        }
        let mut next = track.clone();
        next.history.pop();
        let v = next.active().expect("non-empty");
        let bytes = self.handle.block_on(self.store.blob(OWNER, &blob(v)))?;
        let f = self
            .rt
            .load_http(v, &bytes)
            .map_err(|e| AdminError::Storage(anyhow::anyhow!("version {v}: {e}")))?;
        self.activate(&mut track, next, f)?;
        Ok(self.summary())
    }

    fn activate(&self, track: &mut Track, next: Track, f: HttpFunction) -> Result<(), AdminError> {
        let state = serde_json::to_vec_pretty(&next).map_err(anyhow::Error::from)?;
        self.handle.block_on(self.store.put_state(OWNER, &state))?;
        *track = next;
        *self.active.write().expect("active lock") = Arc::new(f);
        Ok(())
    }

    /// Follows another host's deploys and rollbacks (a cluster's store);
    /// a no-op for the file store.
    pub async fn follow(self: Arc<Self>) {
        let Some(mut changes) = self.store.changes() else {
            return;
        };
        loop {
            let state = match changes.recv().await {
                Ok((owner, state)) if owner == OWNER => state,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => return,
            };
            let this = self.clone();
            if let Ok(Err(e)) = tokio::task::spawn_blocking(move || this.reload(&state)).await {
                tracing::error!(event = "status_api.follow_failed", cause = %format!("{e:#}"));
            }
        }
    }

    /// Loads a state just stored when another host changed it.
    fn reload(&self, state: &[u8]) -> anyhow::Result<()> {
        let mut track = self.track.lock().expect("track lock");
        let next: Track = serde_json::from_slice(state)?;
        if next.history == track.history && next.latest == track.latest {
            return Ok(());
        }
        let v = next.active().unwrap_or(1);
        let bytes = self.handle.block_on(self.store.blob(OWNER, &blob(v)))?;
        let f = self
            .rt
            .load_http(v, &bytes)
            .map_err(|e| anyhow::anyhow!("status API component v{v}: {e}"))?;
        *track = next;
        *self.active.write().expect("active lock") = Arc::new(f);
        tracing::info!(event = "status_api.followed", version = v);
        Ok(())
    }

    /// Answers one request with the active component, and counts the answer.
    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> HttpResponse {
        let ip = req
            .extensions()
            .get::<Peer>()
            .map_or(std::net::IpAddr::from([0, 0, 0, 0]), |p| p.0.ip());
        // Held by the instance's thread until the instance is gone.
        let slot = match self.gate.enter(ip).await {
            Ok(slot) => slot,
            Err(Refusal::Busy) => {
                self.metrics.status_api_response(503);
                return plain_response(503, r#"{"error":"too many status requests at once"}"#);
            }
            Err(Refusal::BackOff) => {
                self.metrics.status_api_response(429);
                let mut r = plain_response(
                    429,
                    r#"{"error":"too many failed logins from your address, try again later"}"#,
                );
                r.headers_mut()
                    .insert("retry-after", hyper::header::HeaderValue::from_static("60"));
                return r;
            }
        };
        let response = self.clone().answer(req, slot).await;
        let code = response.status().as_u16();
        match code {
            401 => self.gate.record(ip, false),
            200..=299 => self.gate.record(ip, true),
            _ => {}
        }
        self.metrics.status_api_response(code);
        response
    }

    /// The status API's gate, for `/metrics`.
    pub fn gate(&self) -> &AuthGate {
        &self.gate
    }

    async fn answer(
        self: Arc<Self>,
        req: Request<Incoming>,
        slot: crate::authgate::Pass,
    ) -> HttpResponse {
        let (parts, body) = req.into_parts();
        let body = match Limited::new(body, self.config.max_body_bytes)
            .collect()
            .await
        {
            Ok(b) => b.to_bytes(),
            Err(_) => return plain_response(413, r#"{"error":"request body too large"}"#),
        };
        let account = match parts
            .uri
            .path()
            .trim_start_matches('/')
            .split('/')
            .collect::<Vec<_>>()[..]
        {
            ["v1", account, ..] => Some(account.to_string()),
            _ => None,
        };
        let rules = account
            .as_deref()
            .and_then(|a| self.tenants.get(a))
            .map(|set| set.rules.clone());
        let view = Arc::new(AccountView {
            account,
            rules,
            status: self.status.clone(),
            runtime: tokio::runtime::Handle::current(),
            sandbox: self.sandbox.clone(),
            retention_secs: self.retention_secs,
        });
        let request = Request::from_parts(parts, Full::new(body));
        let f = self.active.read().expect("active lock").clone();
        let limits = Limits {
            deadline: std::time::Duration::from_millis(self.config.deadline_ms),
            memory_bytes: self.config.memory_bytes,
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let rt = self.rt.clone();
        let task = tokio::task::spawn_blocking(move || {
            let _slot = slot;
            let r = rt.serve_http(&f, limits, view, request, tx);
            (f.version, r)
        });
        match rx.await {
            Ok(Ok(response)) => response,
            Ok(Err(code)) => {
                self.metrics.status_api_failure("error_response");
                tracing::warn!(event = "status_api.error", error = ?code);
                plain_response(500, r#"{"error":"the status component failed"}"#)
            }
            // The component ended without setting a response: say why.
            Err(_) => match task.await {
                Ok((version, Err(failure))) => {
                    self.metrics.status_api_failure(failure.label());
                    tracing::warn!(event = "status_api.failure", version, kind = failure.label(), failure = ?failure);
                    let body = serde_json::json!({ "error": format!("the status component failed: {}", failure.label()) });
                    plain_response(failure.status(), body.to_string())
                }
                Ok((version, Ok(()))) => {
                    self.metrics.status_api_failure("no_response");
                    tracing::warn!(event = "status_api.no_response", version);
                    plain_response(500, r#"{"error":"the status component gave no response"}"#)
                }
                Err(e) => {
                    tracing::error!(event = "status_api.panic", cause = %e);
                    plain_response(500, r#"{"error":"internal error"}"#)
                }
            },
        }
    }
}

/// The artifact store's owner of the status API's versions.
const OWNER: &str = "status-api";

fn blob(version: u64) -> String {
    format!("{version}.wasm")
}

/// Serves the status API until shutdown.
pub async fn serve(api: Arc<StatusApi>, listener: TcpListener, shutdown: watch::Receiver<bool>) {
    crate::httpd::serve(listener, None, shutdown, move |req| api.clone().handle(req)).await
}

/// The store one request sees: one account's data, read-only.
struct AccountView {
    account: Option<String>,
    rules: Option<Arc<Rules>>,
    status: Arc<dyn StatusStore>,
    /// Runs the store's async reads from the component's blocking thread.
    runtime: tokio::runtime::Handle,
    sandbox: Arc<dyn SandboxStore>,
    retention_secs: u64,
}

impl HostData for AccountView {
    fn has_store(&self, label: &str) -> bool {
        label == "default"
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        let Some(account) = &self.account else {
            return Ok(None);
        };
        let Some(rest) = key
            .strip_prefix(account.as_str())
            .and_then(|k| k.strip_prefix('/'))
        else {
            return Ok(None);
        };
        let secret = |table: &str, name: &str| {
            Ok(self
                .rules
                .as_ref()
                .and_then(|r| r.secret(&format!("{table}.{name}")))
                .map(|h| h.as_bytes().to_vec()))
        };
        match rest.split_once('/') {
            Some(("users", login)) => secret("users", login),
            Some(("api-keys", id)) => secret("api-keys", id),
            Some(("notifications", id)) => {
                // The component's call runs on a blocking thread.
                let events = self
                    .runtime
                    .block_on(self.status.message(Some(account), id, None))
                    .map_err(|e| format!("reading the status store: {e}"))?;
                if events.is_empty() {
                    return Ok(None);
                }
                serde_json::to_vec(&events)
                    .map(Some)
                    .map_err(|e| e.to_string())
            }
            Some(("sandbox", id)) => self
                .runtime
                .block_on(self.sandbox.message(account, id))
                .map_err(|e| format!("reading the sandbox: {e}")),
            None if rest == "sandbox" => {
                let list: Vec<serde_json::Value> = self
                    .runtime
                    .block_on(self.sandbox.list(account))
                    .map_err(|e| format!("reading the sandbox: {e}"))?
                    .into_iter()
                    .map(|(id, size)| serde_json::json!({ "id": id, "size": size }))
                    .collect();
                serde_json::to_vec(&list)
                    .map(Some)
                    .map_err(|e| e.to_string())
            }
            _ => Ok(None),
        }
    }

    fn keys(&self) -> Result<Vec<String>, String> {
        Err("mailwit's store does not list keys".into())
    }

    fn variable(&self, name: &str) -> Option<String> {
        (name == "retention_secs").then(|| self.retention_secs.to_string())
    }
}
