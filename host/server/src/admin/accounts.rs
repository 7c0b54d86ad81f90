//! The admin API's tenant accounts: lifecycle, users, API keys, sandbox
//! deletion. Paths are under `/v1/tenants`; bodies and answers are JSON.
//!
//! | method and path | body | what |
//! |---|---|---|
//! | `POST /v1/tenants` | `{"id"}` | create a tenant |
//! | `GET /v1/tenants/{t}` | | versions, status, users, keys, limits |
//! | `POST /v1/tenants/{t}/suspend` | `{"reason"}` (optional) | refuse its logins, hold its mail |
//! | `POST /v1/tenants/{t}/resume` | | |
//! | `DELETE /v1/tenants/{t}?confirm={t}` | | versions, rules, users, keys, status, sandbox, this host's recordings and shadow |
//! | `POST /v1/tenants/{t}/users` | `{"login", "password"?}` | a new SMTP user (a password is made when none is given, and answered once) |
//! | `PUT /v1/tenants/{t}/users/{login}/password` | `{"password"?}` | a new password |
//! | `DELETE /v1/tenants/{t}/users/{login}` | | |
//! | `POST /v1/tenants/{t}/api-keys` | `{"id"?}` | a new key, answered once as `<id>.<secret>` |
//! | `GET /v1/tenants/{t}/api-keys` | | ids and creation times |
//! | `DELETE /v1/tenants/{t}/api-keys/{id}` | | revoke |
//! | `DELETE /v1/tenants/{t}/sandbox/{id}` | | one sandboxed message |
//! | `GET /v1/tenants/{t}/limits` | | its limits and this host's counters |
//! | `PUT /v1/tenants/{t}/limits` | [`TenantLimits`](crate::usage::TenantLimits) | replace its limits (the operator's) |

use hyper::Method;
use serde_json::{Value, json};

use crate::delivery::sandbox::SandboxStore;
use crate::delivery::status::StatusStore;
use crate::tenants::{AdminError, Tenants};

/// What the account routes reach.
pub struct Stores<'a> {
    pub tenants: &'a Tenants,
    pub status: &'a dyn StatusStore,
    pub sandbox: &'a dyn SandboxStore,
    pub handle: &'a tokio::runtime::Handle,
    /// What this host keeps of a tenant in memory: its recorded
    /// transactions and its shadow, forgotten with it.
    pub recorder: &'a crate::replay::Recorder,
    pub shadows: &'a crate::shadow::Shadows,
}

/// Whether `rest` (the path after `/v1/tenants`) is one of these routes.
pub fn handles(method: &Method, rest: &[&str]) -> bool {
    matches!(
        (method, rest),
        (&Method::POST, [])
            | (&Method::GET | &Method::DELETE, [_])
            | (
                &Method::POST,
                [_, "suspend" | "resume" | "users" | "api-keys"]
            )
            | (&Method::GET, [_, "api-keys"])
            | (&Method::DELETE, [_, "users" | "api-keys" | "sandbox", _])
            | (&Method::PUT, [_, "users", _, "password"])
            | (&Method::GET | &Method::PUT, [_, "limits"])
    )
}

fn body_json(body: &[u8]) -> Result<Value, AdminError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    serde_json::from_slice(body)
        .map_err(|e| AdminError::Invalid(format!("the body is not JSON: {e}")))
}

fn field<'v>(v: &'v Value, name: &str) -> Result<Option<&'v str>, AdminError> {
    match &v[name] {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s)),
        _ => Err(AdminError::Invalid(format!("{name:?} must be a string"))),
    }
}

fn storage(what: &str, e: std::io::Error) -> AdminError {
    AdminError::Storage(anyhow::Error::new(e).context(what.to_string()))
}

/// `%XX` escapes in a path segment (a login such as `app%40acme.example`).
pub(super) fn decoded(segment: &str) -> String {
    let b = segment.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Answers one account route (the caller checked [`handles`]). Runs on a
/// blocking thread.
pub fn route(
    s: &Stores,
    method: Method,
    rest: &[&str],
    query: &str,
    body: &[u8],
) -> Result<Value, AdminError> {
    let t = s.tenants;
    match (method, rest) {
        (Method::POST, []) => {
            let v = body_json(body)?;
            let id = field(&v, "id")?
                .ok_or_else(|| AdminError::Invalid("the body needs an \"id\"".into()))?;
            t.create(id)?;
            t.show(id)
        }
        (Method::GET, [tenant]) => t.show(tenant),
        (Method::DELETE, [tenant]) => {
            let confirmed = query
                .split('&')
                .any(|kv| kv.strip_prefix("confirm=") == Some(tenant));
            if !confirmed {
                return Err(AdminError::Invalid(format!(
                    "deleting a tenant removes all it has: repeat its id as ?confirm={tenant}"
                )));
            }
            t.delete(tenant)?;
            s.recorder.forget(tenant);
            s.shadows.stop(tenant);
            let events = s
                .handle
                .block_on(s.status.purge_tenant(tenant))
                .map_err(|e| storage("removing the status events", e))?;
            let kept = s
                .handle
                .block_on(s.sandbox.remove_tenant(tenant))
                .map_err(|e| storage("removing the sandbox", e))?;
            Ok(
                json!({ "tenant": tenant, "deleted": true, "status_events": events, "sandbox_messages": kept }),
            )
        }
        (Method::POST, [tenant, "suspend"]) => {
            let v = body_json(body)?;
            t.suspend(tenant, field(&v, "reason")?.unwrap_or(""))?;
            t.show(tenant)
        }
        (Method::POST, [tenant, "resume"]) => {
            t.resume(tenant)?;
            t.show(tenant)
        }
        (Method::POST, [tenant, "users"]) => {
            let v = body_json(body)?;
            let login = field(&v, "login")?
                .ok_or_else(|| AdminError::Invalid("the body needs a \"login\"".into()))?;
            let made = t.add_user(tenant, login, field(&v, "password")?)?;
            Ok(json!({ "tenant": tenant, "login": login, "password": made }))
        }
        (Method::PUT, [tenant, "users", login, "password"]) => {
            let v = body_json(body)?;
            let login = decoded(login);
            let made = t.set_password(tenant, &login, field(&v, "password")?)?;
            Ok(json!({ "tenant": tenant, "login": login, "password": made }))
        }
        (Method::DELETE, [tenant, "users", login]) => {
            let login = decoded(login);
            t.remove_user(tenant, &login)?;
            Ok(json!({ "tenant": tenant, "login": login, "removed": true }))
        }
        (Method::POST, [tenant, "api-keys"]) => {
            let v = body_json(body)?;
            let key = t.create_key(tenant, field(&v, "id")?)?;
            let id = key.split('.').next().unwrap_or("").to_string();
            Ok(json!({ "tenant": tenant, "id": id, "key": key }))
        }
        (Method::GET, [tenant, "api-keys"]) => {
            Ok(json!({ "tenant": tenant, "api_keys": t.keys(tenant)? }))
        }
        (Method::DELETE, [tenant, "api-keys", id]) => {
            t.revoke_key(tenant, id)?;
            Ok(json!({ "tenant": tenant, "id": id, "revoked": true }))
        }
        (Method::GET, [tenant, "limits"]) => t.limits(tenant),
        (Method::PUT, [tenant, "limits"]) => {
            let limits = serde_json::from_slice(body)
                .map_err(|e| AdminError::Invalid(format!("limits: {e}")))?;
            t.set_limits(tenant, limits)?;
            t.limits(tenant)
        }
        (Method::DELETE, [tenant, "sandbox", id]) => {
            if t.get(tenant).is_none() {
                return Err(AdminError::NoTenant(tenant.to_string()));
            }
            match s.handle.block_on(s.sandbox.delete(tenant, id)) {
                Ok(true) => Ok(json!({ "tenant": tenant, "id": id, "deleted": true })),
                Ok(false) => Err(AdminError::NotFound(format!(
                    "no sandboxed message {id} for tenant {tenant}"
                ))),
                Err(e) => Err(storage("deleting from the sandbox", e)),
            }
        }
        _ => Err(AdminError::NotFound("no such admin endpoint".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_escapes_are_decoded_and_a_broken_one_kept() {
        assert_eq!(decoded("app%40acme.example"), "app@acme.example");
        assert_eq!(decoded("100%"), "100%");
        assert_eq!(decoded("a%4"), "a%4");
        assert_eq!(decoded("%zz"), "%zz");
    }
}
