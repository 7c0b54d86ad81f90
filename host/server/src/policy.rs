//! The policy seam: every decision of a session is asked here.
//!
//! The session driver asks a [`Policy`] whether a login may authenticate,
//! whether a sender and each recipient are acceptable, and what to do with
//! a message. The WebAssembly runtime will implement this trait with each
//! tenant's components. Until it lands, [`ConfigPolicy`] answers from the
//! tenant tables in the configuration. Nothing in the SMTP core decides
//! policy by itself.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordVerifier};
use async_trait::async_trait;
use mailwit_smtp::{Envelope, Mechanism, Reply, Status};

use crate::config::Tenant;

/// What the policy knows about the client.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    pub peer: SocketAddr,
    pub listener: String,
    pub tls: bool,
}

/// An authenticated identity: the tenant and the login within it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub tenant: String,
    pub login: String,
}

/// The policy interface. Refusals are SMTP replies (4xx/5xx).
#[async_trait]
pub trait Policy: Send + Sync + 'static {
    /// May this login authenticate? Resolves the tenant.
    async fn authenticate(
        &self,
        client: &ClientInfo,
        mechanism: Mechanism,
        login: &str,
        secret: &str,
    ) -> Result<Principal, Reply>;

    /// May this principal send from this address (MAIL FROM)?
    async fn check_sender(
        &self,
        principal: &Principal,
        client: &ClientInfo,
        sender: &str,
    ) -> Result<(), Reply>;

    /// May this recipient be accepted (RCPT TO)?
    async fn check_recipient(
        &self,
        principal: &Principal,
        client: &ClientInfo,
        recipient: &str,
    ) -> Result<(), Reply>;

    /// What to do with this message, before it is spooled.
    async fn inspect_message(
        &self,
        principal: &Principal,
        client: &ClientInfo,
        envelope: &Envelope,
        content: &[u8],
    ) -> Result<(), Reply>;
}

/// The reply for any failed login, unknown or wrong: the same, so a client
/// cannot tell which logins exist.
pub fn auth_failed() -> Reply {
    Reply::new(535, Status(5, 7, 8), "Authentication credentials invalid")
}

/// Answers from the `[[tenants]]` tables of the configuration.
pub struct ConfigPolicy {
    tenants: HashMap<String, Arc<Tenant>>,
    /// login -> (tenant id, PHC hash)
    logins: HashMap<String, (String, String)>,
    /// A valid hash checked for unknown logins, so they cost the same time
    /// as wrong passwords.
    decoy: Option<String>,
}

impl ConfigPolicy {
    pub fn new(tenants: &[Tenant]) -> Self {
        let mut logins = HashMap::new();
        for t in tenants {
            for u in &t.users {
                logins.insert(u.login.clone(), (t.id.clone(), u.password_hash.clone()));
            }
        }
        let decoy = logins.values().next().map(|(_, h)| h.clone());
        ConfigPolicy {
            tenants: tenants
                .iter()
                .map(|t| (t.id.clone(), Arc::new(t.clone())))
                .collect(),
            logins,
            decoy,
        }
    }
}

/// Checks a password against a PHC string (argon2). CPU-heavy: call it on a
/// blocking thread.
pub fn verify_password(secret: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(hash) => argon2::Argon2::default()
            .verify_password(secret.as_bytes(), &hash)
            .is_ok(),
        Err(_) => false,
    }
}

#[async_trait]
impl Policy for ConfigPolicy {
    async fn authenticate(
        &self,
        _client: &ClientInfo,
        _mechanism: Mechanism,
        login: &str,
        secret: &str,
    ) -> Result<Principal, Reply> {
        let entry = self.logins.get(login).cloned();
        let hash = match &entry {
            Some((_, h)) => Some(h.clone()),
            None => self.decoy.clone(),
        };
        let secret = secret.to_string();
        let ok = match hash {
            Some(h) => tokio::task::spawn_blocking(move || verify_password(&secret, &h))
                .await
                .unwrap_or(false),
            None => false,
        };
        match entry {
            Some((tenant, _)) if ok => Ok(Principal {
                tenant,
                login: login.to_string(),
            }),
            _ => Err(auth_failed()),
        }
    }

    async fn check_sender(
        &self,
        principal: &Principal,
        _client: &ClientInfo,
        sender: &str,
    ) -> Result<(), Reply> {
        let Some(tenant) = self.tenants.get(&principal.tenant) else {
            return Err(Reply::new(
                451,
                Status(4, 3, 0),
                "Tenant configuration unavailable",
            ));
        };
        if tenant.domains.is_empty() && tenant.senders.is_empty() {
            return Ok(());
        }
        let domain = sender.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
        let allowed = tenant
            .senders
            .iter()
            .any(|s| s.eq_ignore_ascii_case(sender))
            || tenant
                .domains
                .iter()
                .any(|d| d.eq_ignore_ascii_case(domain));
        if allowed {
            Ok(())
        } else {
            Err(Reply::new(
                550,
                Status(5, 7, 1),
                "Sender address is not a registered sender or in a verified domain",
            ))
        }
    }

    async fn check_recipient(
        &self,
        _p: &Principal,
        _c: &ClientInfo,
        _recipient: &str,
    ) -> Result<(), Reply> {
        Ok(())
    }

    async fn inspect_message(
        &self,
        _p: &Principal,
        _c: &ClientInfo,
        _e: &Envelope,
        _content: &[u8],
    ) -> Result<(), Reply> {
        Ok(())
    }
}
