//! A tenant's account: its lifecycle (create, suspend, resume, delete) and
//! the SMTP users and API keys the host keeps for it beside its rules file.
//!
//! Users and keys live in the tenant's state (so they are versioned,
//! durable and followed by every host like the rest), as argon2 hashes made
//! here; the plain password or key is never stored or logged. The rules
//! the components see carry them as `users.<login>` and `api-keys.<id>`
//! ([`Rules::with_hashes`](mailwit_runtime::Rules::with_hashes)), so the
//! stock `auth` component and a tenant's own verify them alike. A login or
//! key id is unique across tenants, whichever way it was made.

use std::collections::BTreeMap;

use argon2::password_hash::rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};

use super::{AdminError, OWNER, TenantState, Tenants, valid_name};
use crate::usage::TenantLimits;
use crate::wallclock::now_ms;

/// A credential the host keeps: its hash and when it was made.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Credential {
    pub(crate) hash: String,
    pub(crate) created_ms: u64,
}

/// Why and since when a tenant is suspended.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Suspension {
    pub since_ms: u64,
    pub reason: String,
}

/// The login an API key is used with (Infobip's: `App`, the key as the
/// password), so no user may have it.
pub const API_KEY_LOGIN: &str = "App";
/// The shortest password the host accepts for a user it keeps.
pub const MIN_PASSWORD: usize = 12;

/// An argon2id PHC hash of `secret`, with argon2's default cost (the cost
/// the auth gate's memory bound assumes).
pub fn hash_secret(secret: &str) -> String {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let salt = SaltString::generate(&mut OsRng);
    argon2::Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .expect("argon2 with its default parameters")
        .to_string()
}

/// `bytes` random bytes from the system, as lower-case hex.
pub fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    OsRng.fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn valid_login(login: &str) -> bool {
    !login.is_empty()
        && login.len() <= 256
        && login != API_KEY_LOGIN
        && login.chars().all(|c| c.is_ascii_graphic() && c != '"')
}

impl Tenants {
    /// The rules' key of each credential the host keeps for a tenant.
    pub(super) fn credential_hashes(state: &TenantState) -> Vec<(String, String)> {
        let users = state
            .users
            .iter()
            .map(|(login, c)| (format!("users.{login}"), c.hash.clone()));
        let keys = state
            .keys
            .iter()
            .map(|(id, c)| (format!("api-keys.{id}"), c.hash.clone()));
        users.chain(keys).collect()
    }

    fn existing(&self, tenant: &str) -> Result<TenantState, AdminError> {
        match self.get(tenant) {
            Some(_) => Ok(self.state_of(tenant)),
            None => Err(AdminError::NoTenant(tenant.to_string())),
        }
    }

    /// Stores a changed state and swaps in what it describes.
    fn change(&self, tenant: &str, mut state: TenantState) -> Result<(), AdminError> {
        state.generation += 1;
        self.activate(tenant, state)?;
        self.reindex();
        Ok(())
    }

    /// Creates an empty tenant (no functions, no rules: it refuses every
    /// login until it has an `authenticate` function).
    pub fn create(&self, tenant: &str) -> Result<(), AdminError> {
        let _op = self.ops.lock().expect("ops lock");
        self.create_locked(tenant)
    }

    pub(super) fn create_locked(&self, tenant: &str) -> Result<(), AdminError> {
        if !valid_name(tenant) {
            return Err(AdminError::Invalid(
                "tenant names are 1-64 of [a-z0-9_-]".into(),
            ));
        }
        if self.get(tenant).is_some() {
            return Err(AdminError::Conflict(format!("tenant {tenant} exists")));
        }
        let state = TenantState {
            created_ms: now_ms(),
            ..TenantState::default()
        };
        self.change(tenant, state)?;
        tracing::info!(event = "tenant.created", tenant);
        Ok(())
    }

    /// What `mailwit tenant show` prints: versions, status, users and keys
    /// (never their hashes), limits.
    pub fn show(&self, tenant: &str) -> Result<serde_json::Value, AdminError> {
        let state = self.existing(tenant)?;
        let set = self.get(tenant).expect("existing");
        let summary = self
            .list()
            .into_iter()
            .find(|s| s.tenant == tenant)
            .expect("listed");
        let mut users: Vec<serde_json::Value> = state
            .users
            .iter()
            .map(|(l, c)| serde_json::json!({ "login": l, "created_ms": c.created_ms, "from": "host" }))
            .collect();
        for login in set.rules.keys_under("users") {
            if !state.users.contains_key(login) {
                users.push(serde_json::json!({ "login": login, "from": "rules" }));
            }
        }
        Ok(serde_json::json!({
            "tenant": tenant,
            "created_ms": state.created_ms,
            "suspended": state.suspended,
            "generation": summary.generation,
            "rules_version": summary.rules_version,
            "functions": summary.functions,
            "users": users,
            "max_users": set.rules.max_users(),
            "api_keys": keys_of(&state),
            "limits": state.limits,
            "usage": self.usage.used(tenant),
        }))
    }

    /// Suspends a tenant: its logins are refused (`535 5.7.8`, with a log
    /// line saying why) and its queued mail is held until it is resumed.
    pub fn suspend(&self, tenant: &str, reason: &str) -> Result<(), AdminError> {
        let _op = self.ops.lock().expect("ops lock");
        let mut state = self.existing(tenant)?;
        state.suspended = Some(Suspension {
            since_ms: now_ms(),
            reason: if reason.is_empty() {
                "suspended by the operator".into()
            } else {
                reason.chars().take(200).collect()
            },
        });
        self.change(tenant, state)?;
        tracing::info!(event = "tenant.suspended", tenant, reason);
        Ok(())
    }

    pub fn resume(&self, tenant: &str) -> Result<(), AdminError> {
        let _op = self.ops.lock().expect("ops lock");
        let mut state = self.existing(tenant)?;
        state.suspended = None;
        self.change(tenant, state)?;
        tracing::info!(event = "tenant.resumed", tenant);
        Ok(())
    }

    /// Why a tenant is suspended, when it is.
    pub fn suspension(&self, tenant: &str) -> Option<Suspension> {
        self.suspended
            .read()
            .expect("suspended lock")
            .get(tenant)
            .cloned()
    }

    /// Removes a tenant's versions, rules, users and keys from the store
    /// and from this host (the caller removes its status and sandbox).
    pub fn delete(&self, tenant: &str) -> Result<(), AdminError> {
        let _op = self.ops.lock().expect("ops lock");
        self.existing(tenant)?;
        self.handle
            .block_on(self.store.remove(&format!("{OWNER}{tenant}")))?;
        self.forget(tenant);
        tracing::info!(event = "tenant.deleted", tenant);
        Ok(())
    }

    /// Drops a tenant from this host's memory (deleted here or elsewhere).
    pub(super) fn forget(&self, tenant: &str) {
        self.sets.write().expect("sets lock").remove(tenant);
        self.changes.lock().expect("changes lock").remove(tenant);
        self.suspended
            .write()
            .expect("suspended lock")
            .remove(tenant);
        self.usage.forget(tenant);
        self.loaded
            .lock()
            .expect("loaded lock")
            .retain(|(t, _, _), _| t != tenant);
        self.reindex();
    }

    /// Replaces a tenant's limits (a missing one is no limit).
    pub fn set_limits(&self, tenant: &str, limits: TenantLimits) -> Result<(), AdminError> {
        let _op = self.ops.lock().expect("ops lock");
        let mut state = self.existing(tenant)?;
        limits.check().map_err(AdminError::Invalid)?;
        state.limits = limits;
        self.change(tenant, state)?;
        tracing::info!(event = "tenant.limits_set", tenant, limits = ?limits);
        Ok(())
    }

    /// A tenant's limits and what it used of them on this host.
    pub fn limits(&self, tenant: &str) -> Result<serde_json::Value, AdminError> {
        let state = self.existing(tenant)?;
        Ok(serde_json::json!({
            "tenant": tenant,
            "limits": state.limits,
            "usage": self.usage.used(tenant),
        }))
    }

    /// Adds an SMTP user. Without a password the host makes one (returned
    /// here, shown once). Refused when the login exists in any tenant, or
    /// the tenant has `max-users` already.
    pub fn add_user(
        &self,
        tenant: &str,
        login: &str,
        password: Option<&str>,
    ) -> Result<Option<String>, AdminError> {
        let _op = self.ops.lock().expect("ops lock");
        let state = self.existing(tenant)?;
        if !valid_login(login) {
            return Err(AdminError::Invalid(format!(
                "a login is 1-256 printable ASCII characters without spaces or quotes, and not {API_KEY_LOGIN:?}"
            )));
        }
        if self.login_taken(login) {
            return Err(AdminError::Conflict(format!(
                "the login {login} exists already"
            )));
        }
        let rules = self.get(tenant).expect("existing").rules.clone();
        let count = rules.keys_under("users").count();
        if count >= rules.max_users() {
            return Err(AdminError::Invalid(format!(
                "tenant {tenant} has {count} users, its max-users is {}",
                rules.max_users()
            )));
        }
        let made = self.keep_password(tenant, state, login, password)?;
        tracing::info!(event = "tenant.user_added", tenant, login);
        Ok(made)
    }

    pub fn remove_user(&self, tenant: &str, login: &str) -> Result<(), AdminError> {
        let _op = self.ops.lock().expect("ops lock");
        let mut state = self.existing(tenant)?;
        if state.users.remove(login).is_none() {
            return Err(self.not_kept(tenant, "users", login));
        }
        self.change(tenant, state)?;
        tracing::info!(event = "tenant.user_removed", tenant, login);
        Ok(())
    }

    /// A new password for a user the host keeps (made by the host when
    /// none is given, and returned).
    pub fn set_password(
        &self,
        tenant: &str,
        login: &str,
        password: Option<&str>,
    ) -> Result<Option<String>, AdminError> {
        let _op = self.ops.lock().expect("ops lock");
        let state = self.existing(tenant)?;
        if !state.users.contains_key(login) {
            return Err(self.not_kept(tenant, "users", login));
        }
        let made = self.keep_password(tenant, state, login, password)?;
        tracing::info!(event = "tenant.password_set", tenant, login);
        Ok(made)
    }

    /// Creates an API key (the id is made by the host unless given) and
    /// returns it whole, `<id>.<secret>`: the only time it is shown.
    pub fn create_key(&self, tenant: &str, id: Option<&str>) -> Result<String, AdminError> {
        let _op = self.ops.lock().expect("ops lock");
        let mut state = self.existing(tenant)?;
        let id = match id {
            Some(id) => id.to_string(),
            None => format!("k{}", random_hex(8)),
        };
        if id.is_empty()
            || id.len() > 64
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(AdminError::Invalid(
                "a key id is 1-64 of [A-Za-z0-9_-]".into(),
            ));
        }
        if self
            .index
            .read()
            .expect("index lock")
            .api_keys
            .contains_key(&id)
        {
            return Err(AdminError::Conflict(format!(
                "the key id {id} exists already"
            )));
        }
        let key = format!("{id}.{}", random_hex(24));
        state.keys.insert(
            id.clone(),
            Credential {
                hash: hash_secret(&key),
                created_ms: now_ms(),
            },
        );
        self.change(tenant, state)?;
        tracing::info!(event = "tenant.key_created", tenant, key_id = %id);
        Ok(key)
    }

    /// The keys the host keeps for a tenant: ids and creation times.
    pub fn keys(&self, tenant: &str) -> Result<serde_json::Value, AdminError> {
        Ok(keys_of(&self.existing(tenant)?))
    }

    pub fn revoke_key(&self, tenant: &str, id: &str) -> Result<(), AdminError> {
        let _op = self.ops.lock().expect("ops lock");
        let mut state = self.existing(tenant)?;
        if state.keys.remove(id).is_none() {
            return Err(self.not_kept(tenant, "api-keys", id));
        }
        self.change(tenant, state)?;
        tracing::info!(event = "tenant.key_revoked", tenant, key_id = %id);
        Ok(())
    }

    /// Stores `login` with the hash of `password` (or of one made here,
    /// which is returned).
    fn keep_password(
        &self,
        tenant: &str,
        mut state: TenantState,
        login: &str,
        password: Option<&str>,
    ) -> Result<Option<String>, AdminError> {
        let (password, made) = choose_password(password)?;
        state.users.insert(
            login.to_string(),
            Credential {
                hash: hash_secret(&password),
                created_ms: now_ms(),
            },
        );
        self.change(tenant, state)?;
        Ok(made.then_some(password))
    }

    fn login_taken(&self, login: &str) -> bool {
        self.index
            .read()
            .expect("index lock")
            .logins
            .contains_key(login)
    }

    /// The error for a user or key the host does not keep: one from the
    /// rules file is changed there.
    fn not_kept(&self, tenant: &str, table: &str, name: &str) -> AdminError {
        let in_rules = self
            .get(tenant)
            .is_some_and(|s| s.rules.keys_under(table).any(|k| k == name));
        match in_rules {
            true => AdminError::Invalid(format!(
                "{name} is in tenant {tenant}'s rules file: change it there"
            )),
            false => AdminError::NotFound(format!("tenant {tenant} has no {name}")),
        }
    }
}

fn keys_of(state: &TenantState) -> serde_json::Value {
    let keys: BTreeMap<&String, u64> = state
        .keys
        .iter()
        .map(|(id, c)| (id, c.created_ms))
        .collect();
    serde_json::Value::Array(
        keys.into_iter()
            .map(|(id, created)| serde_json::json!({ "id": id, "created_ms": created }))
            .collect(),
    )
}

/// The password to keep: the one given (long enough), or a new one.
fn choose_password(given: Option<&str>) -> Result<(String, bool), AdminError> {
    match given {
        Some(p) if p.chars().count() < MIN_PASSWORD => Err(AdminError::Invalid(format!(
            "a password has at least {MIN_PASSWORD} characters"
        ))),
        Some(p) => Ok((p.to_string(), false)),
        None => Ok((random_hex(16), true)),
    }
}
