//! Who is asking: the operator's token, or a tenant's scoped token.
//!
//! The operator's token (`[admin] token`) can do everything. The operator
//! issues tenant tokens (`POST /v1/tokens`), each for one tenant, with an
//! expiry, revocable (`DELETE /v1/tokens/{id}`). A token is shown once, as
//! `mwt-<id>.<secret>`; the store keeps the id, the tenant, the times and
//! the SHA-256 of the secret (96 random bits and more need no slow hash: a
//! guess costs the guesser a request each, and the digest is compared in
//! constant time). Tokens are one state in the artifact store (owner
//! `tokens`), so every host of a cluster knows them.
//!
//! A tenant token reaches only its own tenant's paths: everything of
//! another tenant answers `404`, as a tenant that does not exist would (no
//! existence leak); the operator's own endpoints answer `403`.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::artifacts::ArtifactStore;
use crate::tenants::{AdminError, random_hex};
use crate::wallclock::now_ms;

const OWNER: &str = "tokens";
const PREFIX: &str = "mwt-";
/// How long a token lasts when the operator does not say.
pub const DEFAULT_TTL_SECS: u64 = 90 * 24 * 3600;

/// Who a request comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    Operator,
    Tenant(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stored {
    tenant: String,
    sha256: String,
    created_ms: u64,
    expires_ms: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct State {
    tokens: BTreeMap<String, Stored>,
}

/// How long an expired token is still listed before it is forgotten.
pub const FORGET_EXPIRED_MS: u64 = 7 * 24 * 3600 * 1000;

pub struct Tokens {
    store: Arc<dyn ArtifactStore>,
    operator: String,
}

fn digest(secret: &str) -> String {
    Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Constant-time comparison, so a token cannot be guessed byte by byte.
pub fn same(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

impl Tokens {
    pub fn new(store: Arc<dyn ArtifactStore>, operator: String) -> Tokens {
        Tokens { store, operator }
    }

    async fn state(&self) -> Result<State, AdminError> {
        match self.store.state(OWNER).await? {
            Some(b) => Ok(serde_json::from_slice(&b).map_err(anyhow::Error::from)?),
            None => Ok(State::default()),
        }
    }

    async fn put(&self, state: &State) -> Result<(), AdminError> {
        let bytes = serde_json::to_vec_pretty(state).map_err(anyhow::Error::from)?;
        Ok(self.store.put_state(OWNER, &bytes).await?)
    }

    /// Who `bearer` is, if anyone: the operator, or the tenant of a token
    /// that is neither revoked nor expired.
    pub async fn access(&self, bearer: &str) -> Result<Option<Access>, AdminError> {
        if same(bearer.as_bytes(), self.operator.as_bytes()) {
            return Ok(Some(Access::Operator));
        }
        let Some((id, _)) = bearer
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split_once('.'))
        else {
            return Ok(None);
        };
        let state = self.state().await?;
        Ok(state.tokens.get(id).and_then(|t| {
            let ok =
                same(digest(bearer).as_bytes(), t.sha256.as_bytes()) && now_ms() < t.expires_ms;
            ok.then(|| Access::Tenant(t.tenant.clone()))
        }))
    }

    /// Issues a token for `tenant` (which the caller checked exists).
    /// Tokens expired more than [`FORGET_EXPIRED_MS`] ago are dropped.
    pub async fn issue(
        &self,
        tenant: &str,
        ttl_secs: u64,
    ) -> Result<serde_json::Value, AdminError> {
        let mut state = self.state().await?;
        let id = random_hex(6);
        let token = format!("{PREFIX}{id}.{}", random_hex(24));
        let created = now_ms();
        let expires = created.saturating_add(ttl_secs.saturating_mul(1000));
        // Tokens that expired a week ago are of no use even to `token
        // list`: forgotten, so that console sign-ins do not pile up.
        state
            .tokens
            .retain(|_, t| t.expires_ms.saturating_add(FORGET_EXPIRED_MS) > created);
        state.tokens.insert(
            id.clone(),
            Stored {
                tenant: tenant.to_string(),
                sha256: digest(&token),
                created_ms: created,
                expires_ms: expires,
            },
        );
        self.put(&state).await?;
        tracing::info!(event = "admin.token_issued", tenant, token_id = %id, expires_ms = expires);
        Ok(serde_json::json!({ "id": id, "tenant": tenant, "token": token, "expires_ms": expires }))
    }

    /// Every token (ids, tenants, times; never a secret), or one tenant's.
    pub async fn list(&self, tenant: Option<&str>) -> Result<serde_json::Value, AdminError> {
        let state = self.state().await?;
        let now = now_ms();
        let rows: Vec<serde_json::Value> = state
            .tokens
            .iter()
            .filter(|(_, t)| tenant.is_none_or(|x| x == t.tenant))
            .map(|(id, t)| {
                serde_json::json!({
                    "id": id,
                    "tenant": t.tenant,
                    "created_ms": t.created_ms,
                    "expires_ms": t.expires_ms,
                    "expired": now >= t.expires_ms,
                })
            })
            .collect();
        Ok(serde_json::json!({ "tokens": rows }))
    }

    pub async fn revoke(&self, id: &str) -> Result<(), AdminError> {
        let mut state = self.state().await?;
        let Some(t) = state.tokens.remove(id) else {
            return Err(AdminError::NotFound(format!("no token {id}")));
        };
        self.put(&state).await?;
        tracing::info!(event = "admin.token_revoked", tenant = %t.tenant, token_id = %id);
        Ok(())
    }

    /// Revokes every token of a tenant (the tenant is being deleted).
    pub async fn revoke_tenant(&self, tenant: &str) -> Result<(), AdminError> {
        let mut state = self.state().await?;
        let before = state.tokens.len();
        state.tokens.retain(|_, t| t.tenant != tenant);
        if state.tokens.len() != before {
            self.put(&state).await?;
        }
        Ok(())
    }
}

/// What a tenant token may do with `path` (after `/v1/`): `Ok` to go on,
/// or the error to answer.
pub fn scope(tenant: &str, method: &hyper::Method, path: &[&str]) -> Result<(), AdminError> {
    use hyper::Method;
    let operator_only = || {
        AdminError::Forbidden(format!(
            "this token is tenant {tenant}'s: only the operator's token can do that"
        ))
    };
    match path {
        ["v1", "tenants"] if method == Method::GET => Ok(()),
        ["v1", "tenants", t, ..] if *t != tenant => Err(AdminError::NoTenant(t.to_string())),
        // Its own lifecycle and limits are the operator's to change.
        ["v1", "tenants", _] if method != Method::GET => Err(operator_only()),
        ["v1", "tenants", _, "suspend" | "resume"] => Err(operator_only()),
        ["v1", "tenants", _, "limits"] if method != Method::GET => Err(operator_only()),
        ["v1", "tenants", _, ..] => Ok(()),
        // Its own messages only (the route asks the store with the tenant).
        ["v1", "messages", _] => Ok(()),
        _ => Err(operator_only()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::Method;

    #[test]
    fn a_tenant_token_reaches_its_own_paths_only() {
        let get = Method::GET;
        assert!(scope("acme", &get, &["v1", "tenants", "acme", "sandbox"]).is_ok());
        assert!(
            scope(
                "acme",
                &Method::PUT,
                &["v1", "tenants", "acme", "functions", "router"]
            )
            .is_ok()
        );
        assert!(matches!(
            scope("acme", &get, &["v1", "tenants", "beta", "sandbox"]),
            Err(AdminError::NoTenant(t)) if t == "beta"
        ));
        assert!(matches!(
            scope("acme", &Method::POST, &["v1", "tenants", "beta", "suspend"]),
            Err(AdminError::NoTenant(_))
        ));
        for (m, p) in [
            (Method::DELETE, &["v1", "tenants", "acme"][..]),
            (Method::POST, &["v1", "tenants", "acme", "suspend"][..]),
            (Method::PUT, &["v1", "tenants", "acme", "limits"][..]),
            (Method::POST, &["v1", "tokens"][..]),
            (Method::PUT, &["v1", "status-api"][..]),
            (Method::POST, &["v1", "reload"][..]),
            (Method::POST, &["v1", "tenants"][..]),
        ] {
            assert!(
                matches!(scope("acme", &m, p), Err(AdminError::Forbidden(_))),
                "{m} {p:?}"
            );
        }
        assert!(scope("acme", &get, &["v1", "tenants", "acme", "limits"]).is_ok());
        assert!(scope("acme", &get, &["v1", "tenants", "acme"]).is_ok());
    }

    #[tokio::test]
    async fn tokens_are_stored_hashed_expire_and_are_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(crate::artifacts::FileArtifacts::new(dir.path()));
        let tokens = Tokens::new(store, "operator-secret".into());
        assert_eq!(
            tokens.access("operator-secret").await.unwrap(),
            Some(Access::Operator)
        );
        assert_eq!(tokens.access("operator-secreT").await.unwrap(), None);
        let t = tokens.issue("acme", 3600).await.unwrap();
        let token = t["token"].as_str().unwrap();
        let id = t["id"].as_str().unwrap();
        let stored = std::fs::read_to_string(dir.path().join("tokens/state.json")).unwrap();
        assert!(
            !stored.contains(token.split('.').nth(1).unwrap()),
            "{stored}"
        );
        assert_eq!(
            tokens.access(token).await.unwrap(),
            Some(Access::Tenant("acme".into()))
        );
        let forged = format!("{}x", &token[..token.len() - 1]);
        assert_eq!(tokens.access(&forged).await.unwrap(), None);
        let expired = tokens.issue("acme", 0).await.unwrap();
        assert_eq!(
            tokens
                .access(expired["token"].as_str().unwrap())
                .await
                .unwrap(),
            None
        );
        tokens.revoke(id).await.unwrap();
        assert_eq!(tokens.access(token).await.unwrap(), None);
        assert!(tokens.revoke(id).await.is_err());
    }
}
