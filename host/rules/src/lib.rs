//! # mailwit-rules
//!
//! A tenant's rules: read-only configuration that components read through
//! the `host` import, the way Spin components read variables.
//!
//! Rules are a TOML document. Tables flatten into dotted keys
//! (`[senders] domains = [...]` is `senders.domains`); scalars are read as
//! text, arrays as lists of text. Keys under `users.` and `api-keys.` hold
//! argon2 PHC hashes: the host checks secrets against them
//! (`verify-secret`) and never hands them to a component.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use argon2::password_hash::rand_core::{OsRng, RngCore};
use argon2::password_hash::{PasswordHash, PasswordVerifier};
use sha2::{Digest, Sha256};

/// Most users a tenant may have unless its rules say `max-users` (IBM's
/// SMTP configurations allow 5).
pub const DEFAULT_MAX_USERS: usize = 5;

/// The most memory (KiB) a stored argon2 hash may ask each check for:
/// a check's memory is what bounds the host's pool of password checks
/// (argon2's default, used by `mailwit hash-password`, is 19456).
pub const MAX_ARGON2_KIB: u32 = 65_536;
/// The most passes a stored argon2 hash may ask for (the default is 2).
pub const MAX_ARGON2_PASSES: u32 = 8;

/// How long a verified secret is remembered.
pub const AUTH_CACHE_TTL: Duration = Duration::from_secs(300);
/// Most secrets remembered per version of the rules.
const AUTH_CACHE_MAX: usize = 4096;

/// Parsed, validated rules.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    source: String,
    scalars: BTreeMap<String, String>,
    lists: BTreeMap<String, Vec<String>>,
    verified: Arc<AuthCache>,
}

/// Secrets verified recently, so a client that reconnects with the same
/// credentials does not cost argon2's tens of milliseconds of CPU each
/// time (Dovecot's auth cache does the same). Only successes are kept, as
/// SHA-256 over a random salt, the key and the secret (never the secret
/// itself), for [`AUTH_CACHE_TTL`]. The cache belongs to one version of
/// the rules: a changed password or a removed user takes effect at once.
#[derive(Debug, Default)]
struct AuthCache {
    salt: [u8; 16],
    seen: Mutex<HashMap<[u8; 32], Instant>>,
    /// Verifications under way: the same credentials arriving on several
    /// connections at once (an application opening its connection pool)
    /// wait for one argon2 run instead of each doing their own.
    inflight: Mutex<HashMap<[u8; 32], Arc<OnceLock<bool>>>>,
    /// argon2 runs so far (for tests and curiosity).
    computed: AtomicU64,
}

impl AuthCache {
    fn new() -> AuthCache {
        let mut salt = [0u8; 16];
        OsRng.fill_bytes(&mut salt);
        AuthCache {
            salt,
            ..AuthCache::default()
        }
    }

    fn fingerprint(&self, key: &str, secret: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.salt);
        h.update(key.as_bytes());
        h.update([0]);
        h.update(secret.as_bytes());
        h.finalize().into()
    }

    fn hit(&self, fp: &[u8; 32]) -> bool {
        let seen = self.seen.lock().expect("auth cache lock");
        seen.get(fp).is_some_and(|t| t.elapsed() < AUTH_CACHE_TTL)
    }

    /// The answer for `fp`: cached, or computed once however many ask at
    /// the same time.
    fn verify(&self, fp: [u8; 32], compute: impl FnOnce() -> bool) -> bool {
        if self.hit(&fp) {
            return true;
        }
        let cell = self
            .inflight
            .lock()
            .expect("auth cache lock")
            .entry(fp)
            .or_default()
            .clone();
        let ok = *cell.get_or_init(|| {
            self.computed.fetch_add(1, Ordering::Relaxed);
            compute()
        });
        if ok {
            self.remember(fp);
        }
        let mut inflight = self.inflight.lock().expect("auth cache lock");
        if inflight.get(&fp).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            inflight.remove(&fp);
        }
        ok
    }

    fn remember(&self, fp: [u8; 32]) {
        let mut seen = self.seen.lock().expect("auth cache lock");
        if seen.len() >= AUTH_CACHE_MAX {
            seen.retain(|_, t| t.elapsed() < AUTH_CACHE_TTL);
            if seen.len() >= AUTH_CACHE_MAX {
                seen.clear();
            }
        }
        seen.insert(fp, Instant::now());
    }
}

/// Why rules were refused.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("rules are not valid TOML: {0}")]
    Toml(String),
    #[error("rules key {key}: {why}")]
    Invalid { key: String, why: String },
    #[error("{count} users, more than max-users = {max}")]
    TooManyUsers { count: usize, max: usize },
}

/// Keys holding password hashes.
fn is_hash(key: &str) -> bool {
    key.starts_with("users.") || key.starts_with("api-keys.")
}

/// Keys a component never sees: hashes, upstream passwords, DKIM and TLS
/// private keys.
fn is_secret(key: &str) -> bool {
    is_hash(key)
        || key.ends_with(".password")
        || key == "dkim.private-key"
        || key == "tls.private-key"
}

impl Rules {
    pub fn parse(source: &str) -> Result<Rules, RulesError> {
        let table: toml::Table = source
            .parse()
            .map_err(|e: toml::de::Error| RulesError::Toml(e.to_string()))?;
        let mut rules = Rules {
            source: source.to_string(),
            verified: Arc::new(AuthCache::new()),
            ..Rules::default()
        };
        flatten("", &toml::Value::Table(table), &mut rules)?;
        for (key, value) in &rules.scalars {
            if is_hash(key) {
                let invalid = |why: String| RulesError::Invalid {
                    key: key.clone(),
                    why,
                };
                let hash = PasswordHash::new(value)
                    .map_err(|e| invalid(format!("not an argon2 PHC string: {e}")))?;
                let param = |name: &str| hash.params.get_decimal(name).unwrap_or(0);
                if param("m") > MAX_ARGON2_KIB || param("t") > MAX_ARGON2_PASSES {
                    return Err(invalid(format!(
                        "argon2 parameters over the host's limits (m at most {MAX_ARGON2_KIB} KiB, t at most {MAX_ARGON2_PASSES})"
                    )));
                }
            }
        }
        let max = match rules.scalars.get("max-users") {
            Some(m) => m.parse().map_err(|_| RulesError::Invalid {
                key: "max-users".into(),
                why: "not a number".into(),
            })?,
            None => DEFAULT_MAX_USERS,
        };
        let count = rules.keys_under("users").count();
        if count > max {
            return Err(RulesError::TooManyUsers { count, max });
        }
        Ok(rules)
    }

    /// These rules with more credentials: `(key, PHC hash)` pairs under
    /// `users.` or `api-keys.` (the logins and keys the host keeps for a
    /// tenant beside its rules file; other keys are ignored). The result
    /// has an auth cache of its own, so a credential removed since is not
    /// remembered as verified.
    pub fn with_hashes(&self, hashes: impl IntoIterator<Item = (String, String)>) -> Rules {
        let mut rules = Rules {
            verified: Arc::new(AuthCache::new()),
            ..self.clone()
        };
        for (key, hash) in hashes {
            if is_hash(&key) {
                rules.scalars.insert(key, hash);
            }
        }
        rules
    }

    /// How many users these rules allow (`max-users`, by default
    /// [`DEFAULT_MAX_USERS`]).
    pub fn max_users(&self) -> usize {
        self.scalars
            .get("max-users")
            .and_then(|m| m.parse().ok())
            .unwrap_or(DEFAULT_MAX_USERS)
    }

    /// The TOML text the rules were parsed from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// A scalar for a component (never a secret).
    pub fn get(&self, key: &str) -> Option<&str> {
        if is_secret(key) {
            return None;
        }
        self.scalars.get(key).map(String::as_str)
    }

    /// Any scalar, secrets included: for the host only (upstream passwords,
    /// the DKIM and TLS private keys).
    pub fn secret(&self, key: &str) -> Option<&str> {
        self.scalars.get(key).map(String::as_str)
    }

    /// A list for a component (empty when missing, or under a secret's
    /// key: `users.x = ["$argon2..."]` is no way to show a hash).
    pub fn list(&self, key: &str) -> &[String] {
        if is_secret(key) {
            return &[];
        }
        self.lists.get(key).map(Vec::as_slice).unwrap_or(&[])
    }

    /// The keys of a table of scalars: `keys_under("users")` lists logins
    /// (which may themselves contain dots, like `app@acme.example`).
    pub fn keys_under<'a>(&'a self, table: &str) -> impl Iterator<Item = &'a str> + 'a {
        let prefix = format!("{table}.");
        self.scalars
            .keys()
            .filter_map(move |k| k.strip_prefix(prefix.as_str()))
    }

    /// Whether `secret` was verified against `key` within
    /// [`AUTH_CACHE_TTL`]: a check that would cost no argon2 run. The host
    /// asks before it queues a login behind other password checks.
    pub fn verified_recently(&self, key: &str, secret: &str) -> bool {
        is_hash(key) && self.verified.hit(&self.verified.fingerprint(key, secret))
    }

    /// Checks `secret` against the PHC hash stored at `key` (a `users.` or
    /// `api-keys.` key). CPU-heavy by design (argon2), except for a secret
    /// verified within [`AUTH_CACHE_TTL`].
    pub fn verify_secret(&self, key: &str, secret: &str) -> bool {
        if !is_hash(key) {
            return false;
        }
        let Some(hash) = self
            .scalars
            .get(key)
            .and_then(|h| PasswordHash::new(h).ok())
        else {
            return false;
        };
        let fp = self.verified.fingerprint(key, secret);
        self.verified.verify(fp, || {
            argon2::Argon2::default()
                .verify_password(secret.as_bytes(), &hash)
                .is_ok()
        })
    }
}

fn flatten(prefix: &str, value: &toml::Value, out: &mut Rules) -> Result<(), RulesError> {
    match value {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out)?;
            }
        }
        toml::Value::Array(items) => {
            let list = items
                .iter()
                .map(|i| {
                    scalar(i).ok_or_else(|| RulesError::Invalid {
                        key: prefix.to_string(),
                        why: "lists may only hold strings, numbers and booleans".into(),
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            out.lists.insert(prefix.to_string(), list);
        }
        v => {
            out.scalars
                .insert(prefix.to_string(), scalar(v).expect("scalar"));
        }
    }
    Ok(())
}

fn scalar(v: &toml::Value) -> Option<String> {
    match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        toml::Value::Datetime(d) => Some(d.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$8U19Ookn9ZJOj6pUstzwEQ$VF+pMzfGh04Ulm1G6ksvUd86B/nT6r7azBD3i5j4PEs";

    #[test]
    fn credentials_kept_beside_the_rules_verify_with_a_cache_of_their_own() {
        let hash = HASH.to_string();
        let base = Rules::parse(&format!("[users]\n\"a@x\" = \"{hash}\"\n")).unwrap();
        assert!(base.verify_secret("users.a@x", "demo-password"));
        let more = base.with_hashes([
            ("users.b@x".to_string(), hash.clone()),
            ("plain".to_string(), "not a credential".to_string()),
        ]);
        assert!(!more.verified_recently("users.a@x", "demo-password"));
        assert!(more.verify_secret("users.b@x", "demo-password"));
        assert!(!more.verify_secret("users.b@x", "wrong"));
        assert_eq!(more.keys_under("users").count(), 2);
        assert_eq!(more.get("plain"), None);
        assert_eq!(more.max_users(), DEFAULT_MAX_USERS);
        assert_eq!(Rules::parse("max-users = 2").unwrap().max_users(), 2);
    }

    #[test]
    fn flattens_and_hides_secrets() {
        let r = Rules::parse(&format!(
            "revision = 3\n[users]\ndemo = \"{HASH}\"\n[senders]\ndomains = [\"example.com\"]\n[message]\nrefuse-attachments = true\n"
        ))
        .unwrap();
        assert_eq!(r.get("revision"), Some("3"));
        assert_eq!(r.list("senders.domains"), ["example.com"]);
        assert_eq!(r.get("message.refuse-attachments"), Some("true"));
        assert_eq!(r.get("users.demo"), None);
        assert_eq!(r.keys_under("users").collect::<Vec<_>>(), ["demo"]);
        assert!(r.verify_secret("users.demo", "demo-password"));
        assert!(!r.verify_secret("users.demo", "wrong"));
        assert!(!r.verify_secret("revision", "3"));
    }

    #[test]
    fn a_secret_written_as_a_list_is_hidden_too() {
        let r = Rules::parse(&format!(
            "[users]\nx = [\"{HASH}\"]\n[dkim]\nprivate-key = [\"k\"]\n[upstreams.a]\npassword = [\"p\"]\nhosts = [\"h\"]\n"
        ))
        .unwrap();
        assert!(r.list("users.x").is_empty());
        assert!(r.list("dkim.private-key").is_empty());
        assert!(r.list("upstreams.a.password").is_empty());
        assert_eq!(r.list("upstreams.a.hosts"), ["h"]);
    }

    #[test]
    fn remembers_only_verified_secrets_and_only_for_its_own_version() {
        let source = format!("[users]\ndemo = \"{HASH}\"\n");
        let r = Rules::parse(&source).unwrap();
        assert!(!r.verify_secret("users.demo", "wrong"));
        assert!(
            r.verified.seen.lock().unwrap().is_empty(),
            "a failure was cached"
        );
        assert!(r.verify_secret("users.demo", "demo-password"));
        assert_eq!(r.verified.seen.lock().unwrap().len(), 1);
        // Cached: the same answer without argon2; a wrong secret still fails.
        assert!(r.verified_recently("users.demo", "demo-password"));
        assert!(!r.verified_recently("users.demo", "demo-password2"));
        assert!(r.verify_secret("users.demo", "demo-password"));
        assert!(!r.verify_secret("users.demo", "demo-password2"));
        // The entry is bound to the key, and other rules start empty.
        assert!(!r.verify_secret("api-keys.demo", "demo-password"));
        let next = Rules::parse(&source).unwrap();
        assert!(next.verified.seen.lock().unwrap().is_empty());
        // What is kept is a salted digest, not the secret.
        let fp = r.verified.fingerprint("users.demo", "demo-password");
        assert_ne!(fp, next.verified.fingerprint("users.demo", "demo-password"));
    }

    #[test]
    fn hashes_over_the_argon2_limits_are_refused() {
        // m = 1 GiB per check: one login could take a gigabyte.
        let big = "$argon2id$v=19$m=1048576,t=2,p=1$8U19Ookn9ZJOj6pUstzwEQ$VF+pMzfGh04Ulm1G6ksvUd86B/nT6r7azBD3i5j4PEs";
        let e = Rules::parse(&format!("[users]\ndemo = \"{big}\"\n")).unwrap_err();
        assert!(e.to_string().contains("users.demo"), "{e}");
        let slow = "$argon2id$v=19$m=19456,t=100,p=1$8U19Ookn9ZJOj6pUstzwEQ$VF+pMzfGh04Ulm1G6ksvUd86B/nT6r7azBD3i5j4PEs";
        assert!(Rules::parse(&format!("[api-keys]\nk = \"{slow}\"\n")).is_err());
        assert!(Rules::parse(&format!("[users]\ndemo = \"{HASH}\"\n")).is_ok());
    }

    #[test]
    fn concurrent_logins_with_the_same_secret_share_one_argon2_run() {
        let r = Arc::new(Rules::parse(&format!("[users]\ndemo = \"{HASH}\"\n")).unwrap());
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let r = r.clone();
                std::thread::spawn(move || r.verify_secret("users.demo", "demo-password"))
            })
            .collect();
        assert!(threads.into_iter().all(|t| t.join().unwrap()));
        assert_eq!(r.verified.computed.load(Ordering::Relaxed), 1);
        assert!(r.verified.inflight.lock().unwrap().is_empty());
        // Wrong secrets are not remembered: each new attempt runs argon2.
        assert!(!r.verify_secret("users.demo", "wrong"));
        assert!(!r.verify_secret("users.demo", "wrong"));
        assert_eq!(r.verified.computed.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn refuses_bad_hashes_and_too_many_users() {
        assert!(matches!(
            Rules::parse("[users]\na = \"plain\""),
            Err(RulesError::Invalid { .. })
        ));
        let six: String = (0..6).map(|i| format!("u{i} = \"{HASH}\"\n")).collect();
        assert!(matches!(
            Rules::parse(&format!("[users]\n{six}")),
            Err(RulesError::TooManyUsers { count: 6, max: 5 })
        ));
        assert!(Rules::parse(&format!("max-users = 6\n[users]\n{six}")).is_ok());
    }
}
