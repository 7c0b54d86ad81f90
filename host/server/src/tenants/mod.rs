//! Tenants: their function sets and rules, stored durably by version,
//! swapped atomically, and the indexes that resolve a session's tenant.
//!
//! Stored in the [artifact store](crate::artifacts), owner
//! `tenants/<tenant>` (on one host: files under `<data_dir>/tenants/<tenant>/`):
//!
//! ```text
//! state.json                   function order, each function's and the rules' version history;
//!                              the account: created, suspended, users and keys (hashes), limits
//! functions/<name>/<v>.wasm    every deployed version of every function
//! rules/<v>.toml               every version of the rules
//! ```
//!
//! Every change stores the new version's blob, then the state, then swaps
//! the in-memory [`PolicySet`]. A transaction holds the `Arc<PolicySet>` it
//! started with; the next one sees the new set. Rollback re-activates the
//! previous version in the history. In a cluster, every host hears of
//! another's change ([`Tenants::follow`]) and loads the new state.
//! The account's operations (create, suspend, delete, users, keys,
//! limits) are in [`accounts`].

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::Context;
use mailwit_runtime::{Function, Limits, PolicySet, Rules, Runtime};
use serde::{Deserialize, Serialize};

use rustls::sign::CertifiedKey;

use crate::artifacts::ArtifactStore;
use crate::config::{Config, Tenant};
use crate::usage::{TenantLimits, Usage};

mod accounts;
pub use accounts::{API_KEY_LOGIN, Suspension, hash_secret, random_hex};

/// The reference components, built from `components/` and embedded.
pub const BUILTINS: &[(&str, &[u8])] = &[
    (
        "auth",
        include_bytes!(concat!(
            env!("MAILWIT_COMPONENTS_DIR"),
            "/mailwit_auth.wasm"
        )),
    ),
    (
        "sender",
        include_bytes!(concat!(
            env!("MAILWIT_COMPONENTS_DIR"),
            "/mailwit_sender.wasm"
        )),
    ),
    (
        "content",
        include_bytes!(concat!(
            env!("MAILWIT_COMPONENTS_DIR"),
            "/mailwit_content.wasm"
        )),
    ),
    (
        "ib-headers",
        include_bytes!(concat!(
            env!("MAILWIT_COMPONENTS_DIR"),
            "/mailwit_ib_headers.wasm"
        )),
    ),
    (
        "router",
        include_bytes!(concat!(
            env!("MAILWIT_COMPONENTS_DIR"),
            "/mailwit_router.wasm"
        )),
    ),
    (
        "router-sandbox",
        include_bytes!(concat!(
            env!("MAILWIT_COMPONENTS_DIR"),
            "/mailwit_router_sandbox.wasm"
        )),
    ),
    // auth, sender, content, ib-headers and router in one component: the
    // same decisions at fewer calls per message (components/stock).
    (
        "stock",
        include_bytes!(concat!(
            env!("MAILWIT_COMPONENTS_DIR"),
            "/mailwit_stock.wasm"
        )),
    ),
];

/// The embedded component `name` (`auth`, `stock`, ...).
pub fn builtin(name: &str) -> Option<&'static [u8]> {
    BUILTINS.iter().find(|(n, _)| *n == name).map(|(_, b)| *b)
}

/// The component `component` names, as a configuration's functions and
/// `mailwit tenant deploy` name them: `builtin:<name>` for one of
/// [`BUILTINS`], anything else a path to a `.wasm` file.
pub fn component_bytes(component: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    match component.to_str().and_then(|c| c.strip_prefix("builtin:")) {
        Some(name) => builtin(name).map(<[u8]>::to_vec).with_context(|| {
            let names: Vec<&str> = BUILTINS.iter().map(|b| b.0).collect();
            format!(
                "no builtin component {name:?} (there are {})",
                names.join(", ")
            )
        }),
        None => {
            std::fs::read(component).with_context(|| format!("reading {}", component.display()))
        }
    }
}

/// The status API component (an HTTP component, not a policy function).
pub const STATUS_COMPONENT: &[u8] = include_bytes!(concat!(
    env!("MAILWIT_COMPONENTS_DIR"),
    "/mailwit_status.wasm"
));

/// The artifact store's owners of tenants: `tenants/<id>`.
const OWNER: &str = "tenants/";

fn owner(tenant: &str) -> String {
    format!("{OWNER}{tenant}")
}

fn function_blob(name: &str, version: u64) -> String {
    format!("functions/{name}/{version}.wasm")
}

fn rules_blob(version: u64) -> String {
    format!("rules/{version}.toml")
}

/// The name `rollback` uses for a tenant's rules.
pub const RULES: &str = "rules";

/// An admin operation that could not be done; the message is for the operator.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0}")]
    Invalid(String),
    #[error("no tenant {0:?}")]
    NoTenant(String),
    #[error("{0}")]
    NotFound(String),
    /// It exists already (a tenant, a login, a key id).
    #[error("{0}")]
    Conflict(String),
    /// Not for this token (a tenant's token asking for the operator's).
    #[error("{0}")]
    Forbidden(String),
    #[error("storage: {0:#}")]
    Storage(#[from] anyhow::Error),
}

/// The versions of one deployable thing (a function, the rules, the
/// status API component).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Track {
    /// Highest version number ever stored.
    pub(crate) latest: u64,
    /// Activations, oldest first; the last is active.
    pub(crate) history: Vec<u64>,
}

impl Track {
    pub(crate) fn active(&self) -> Option<u64> {
        self.history.last().copied()
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct TenantState {
    order: Vec<String>,
    functions: BTreeMap<String, Track>,
    rules: Track,
    generation: u64,
    /// When the tenant was created (0: before the host recorded it).
    #[serde(default)]
    created_ms: u64,
    #[serde(default)]
    suspended: Option<Suspension>,
    /// SMTP users and API keys the host keeps ([`accounts`]).
    #[serde(default)]
    users: BTreeMap<String, accounts::Credential>,
    #[serde(default)]
    keys: BTreeMap<String, accounts::Credential>,
    /// What the operator lets it send ([`crate::usage`]).
    #[serde(default)]
    limits: TenantLimits,
}

/// One row of `mailwit tenant list`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TenantSummary {
    pub tenant: String,
    pub generation: u64,
    pub rules_version: u64,
    pub functions: Vec<FunctionSummary>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FunctionSummary {
    pub name: String,
    pub version: u64,
    pub digest: String,
    pub exports: Vec<String>,
}

#[derive(Default)]
struct Index {
    logins: HashMap<String, Vec<String>>,
    api_keys: HashMap<String, String>,
    server_names: HashMap<String, String>,
    /// Tenants' own certificates, by the server names they list.
    certs: HashMap<String, Arc<CertifiedKey>>,
}

/// The certificate a tenant's rules give for its `tls.server-names`
/// (`tls.certificate` and `tls.private-key`, PEM), if any.
fn tenant_certificate(rules: &Rules) -> Result<Option<Arc<CertifiedKey>>, String> {
    match (
        rules.secret("tls.certificate"),
        rules.secret("tls.private-key"),
    ) {
        (None, None) => Ok(None),
        (Some(cert), Some(key)) => {
            if rules.list("tls.server-names").is_empty() {
                return Err("tls.certificate is given but tls.server-names lists no name".into());
            }
            crate::tls::certified_key(cert.as_bytes(), key.as_bytes())
                .map(Some)
                .map_err(|e| format!("tls.certificate: {e:#}"))
        }
        _ => Err("tls.certificate and tls.private-key go together".into()),
    }
}

/// All tenants.
pub struct Tenants {
    rt: Arc<Runtime>,
    store: Arc<dyn ArtifactStore>,
    /// Runs the store's calls from the blocking threads Tenants runs on.
    handle: tokio::runtime::Handle,
    defaults: Limits,
    sets: RwLock<HashMap<String, Arc<PolicySet>>>,
    index: RwLock<Index>,
    /// Serialises admin changes; held while compiling, never on the SMTP path.
    changes: Mutex<HashMap<String, TenantState>>,
    loaded: Mutex<HashMap<(String, String, u64), Arc<Function>>>,
    /// Held for the whole of each admin operation, so two cannot interleave.
    ops: Mutex<()>,
    /// The suspended tenants (read on every login and delivery).
    suspended: RwLock<HashMap<String, Suspension>>,
    /// Each tenant's limits and counters on this host.
    usage: Arc<Usage>,
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

impl Tenants {
    /// Loads every stored tenant, and stores (as version 1) the tenants of
    /// the configuration that are not stored yet. Call from a blocking
    /// thread of a tokio runtime.
    pub fn open(
        rt: Arc<Runtime>,
        config: &Config,
        defaults: Limits,
        store: Arc<dyn ArtifactStore>,
    ) -> anyhow::Result<Tenants> {
        let tenants = Tenants {
            rt,
            store,
            handle: tokio::runtime::Handle::current(),
            defaults,
            sets: RwLock::default(),
            index: RwLock::default(),
            changes: Mutex::default(),
            loaded: Mutex::default(),
            ops: Mutex::default(),
            suspended: RwLock::default(),
            usage: Usage::new(),
        };
        let stored = tenants.handle.block_on(tenants.store.states(OWNER))?;
        for (owner, bytes) in stored {
            let id = owner.strip_prefix(OWNER).unwrap_or(&owner).to_string();
            let state: TenantState = serde_json::from_slice(&bytes)
                .with_context(|| format!("reading the state of tenant {id}"))?;
            tenants
                .load(&id, state)
                .with_context(|| format!("loading tenant {id}"))?;
        }
        // What the stored tenants claim (logins, keys, server names), for
        // the configured ones to be checked against.
        tenants.reindex();
        for t in &config.tenants {
            if tenants.get(&t.id).is_none() {
                tenants.bootstrap(t).with_context(|| {
                    format!("setting up tenant {} from the configuration", t.id)
                })?;
            }
        }
        tenants.reindex();
        Ok(tenants)
    }

    /// Stores a configured tenant as version 1 of everything. Everything is
    /// validated before anything is stored, so a mistake in the
    /// configuration cannot leave a half-made tenant on disk.
    fn bootstrap(&self, t: &Tenant) -> anyhow::Result<()> {
        let create = |e: AdminError| anyhow::anyhow!("{e}");
        let rules = toml::to_string(&t.rules)?;
        let parsed = Rules::parse(&rules).with_context(|| format!("tenant {}: rules", t.id))?;
        self.claims(&t.id, &parsed)
            .map_err(|e| anyhow::anyhow!("tenant {}: {e}", t.id))?;
        let mut components = Vec::new();
        for f in &t.functions {
            let bytes = component_bytes(f.component.as_ref())?;
            self.rt
                .load(&f.name, 1, &bytes)
                .with_context(|| format!("tenant {}: function {}", t.id, f.name))?;
            components.push((f.name.as_str(), bytes));
        }
        self.create(&t.id).map_err(create)?;
        self.set_rules(&t.id, &rules).map_err(create)?;
        for (name, bytes) in components {
            self.deploy(&t.id, name, &bytes)
                .map_err(|e| anyhow::anyhow!("function {name}: {e}"))?;
        }
        Ok(())
    }

    /// Every tenant's limits and counters on this host.
    pub fn usage(&self) -> &Arc<Usage> {
        &self.usage
    }

    /// The current function set of a tenant.
    pub fn get(&self, tenant: &str) -> Option<Arc<PolicySet>> {
        self.sets.read().expect("sets lock").get(tenant).cloned()
    }

    /// Which tenant a login belongs to: the TLS server name when it names
    /// one, the key id of an API key (login `App`, password `<id>.<secret>`),
    /// or a login that exists in exactly one tenant.
    pub fn resolve(&self, login: &str, secret: &str, server_name: Option<&str>) -> Option<String> {
        let index = self.index.read().expect("index lock");
        if let Some(t) = server_name.and_then(|n| index.server_names.get(&n.to_ascii_lowercase())) {
            return Some(t.clone());
        }
        if login == "App" {
            let id = secret.split('.').next().unwrap_or("");
            return index.api_keys.get(id).cloned();
        }
        match index.logins.get(login) {
            Some(ts) if ts.len() == 1 => Some(ts[0].clone()),
            _ => None,
        }
    }

    fn reindex(&self) {
        let mut index = Index::default();
        for (id, set) in self.sets.read().expect("sets lock").iter() {
            for login in set.rules.keys_under("users") {
                index
                    .logins
                    .entry(login.to_string())
                    .or_default()
                    .push(id.clone());
            }
            for key in set.rules.keys_under("api-keys") {
                index.api_keys.insert(key.to_string(), id.clone());
            }
            // Validated when the rules were set; a stored version from
            // before that check is skipped with a log line.
            let cert = tenant_certificate(&set.rules).unwrap_or_else(|why| {
                tracing::warn!(event = "tenant.certificate_refused", tenant = %id, why);
                None
            });
            for name in set.rules.list("tls.server-names") {
                let name = name.to_ascii_lowercase();
                if let Some(cert) = &cert {
                    index.certs.insert(name.clone(), cert.clone());
                }
                index.server_names.insert(name, id.clone());
            }
        }
        *self.index.write().expect("index lock") = index;
    }

    /// Keeps this host's tenants in step with the cluster's: each state
    /// another host stores is loaded here (within the watch's delay). Runs
    /// until the store stops telling; a no-op for the file store.
    pub async fn follow(self: Arc<Self>) {
        let Some(mut changes) = self.store.changes() else {
            return;
        };
        loop {
            let (owner, state) = match changes.recv().await {
                Ok(change) => change,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(event = "tenant.follow_lagged", missed = n);
                    continue;
                }
                Err(_) => return,
            };
            let Some(id) = owner.strip_prefix(OWNER).map(str::to_string) else {
                continue;
            };
            let this = self.clone();
            let r = tokio::task::spawn_blocking(move || this.reload(&id, &state)).await;
            if let Ok(Err(e)) = r {
                tracing::error!(event = "tenant.follow_failed", owner = %owner, cause = %format!("{e:#}"));
            }
        }
    }

    /// Loads a tenant's state, just stored, when it is newer than the one
    /// active (this host's own change comes back too).
    fn reload(&self, tenant: &str, bytes: &[u8]) -> anyhow::Result<()> {
        let _op = self.ops.lock().expect("ops lock");
        if bytes.is_empty() {
            if self.get(tenant).is_some() {
                self.forget(tenant);
                tracing::info!(event = "tenant.followed", tenant, deleted = true);
            }
            return Ok(());
        }
        let state: TenantState = serde_json::from_slice(bytes)?;
        if self
            .get(tenant)
            .is_some_and(|s| s.generation >= state.generation)
        {
            return Ok(());
        }
        let set = self.load(tenant, state)?;
        self.reindex();
        tracing::info!(
            event = "tenant.followed",
            tenant,
            generation = set.generation,
            rules = set.rules_version
        );
        Ok(())
    }

    fn function(&self, tenant: &str, name: &str, version: u64) -> anyhow::Result<Arc<Function>> {
        let key = (tenant.to_string(), name.to_string(), version);
        if let Some(f) = self.loaded.lock().expect("loaded lock").get(&key) {
            return Ok(f.clone());
        }
        let bytes = self.handle.block_on(
            self.store
                .blob(&owner(tenant), &function_blob(name, version)),
        )?;
        let f = Arc::new(
            self.rt
                .load(name, version, &bytes)
                .with_context(|| format!("tenant {tenant}: function {name} version {version}"))?,
        );
        self.loaded
            .lock()
            .expect("loaded lock")
            .insert(key, f.clone());
        Ok(f)
    }

    /// Builds the set a state describes, stores the state, swaps the set.
    fn activate(&self, tenant: &str, state: TenantState) -> anyhow::Result<Arc<PolicySet>> {
        let set = self.build(tenant, &state)?;
        self.handle.block_on(
            self.store
                .put_state(&owner(tenant), &serde_json::to_vec_pretty(&state)?),
        )?;
        Ok(self.swap(tenant, state, set))
    }

    /// Builds the set a stored state describes and swaps it in.
    fn load(&self, tenant: &str, state: TenantState) -> anyhow::Result<Arc<PolicySet>> {
        let set = self.build(tenant, &state)?;
        Ok(self.swap(tenant, state, set))
    }

    fn swap(&self, tenant: &str, state: TenantState, set: Arc<PolicySet>) -> Arc<PolicySet> {
        self.usage.set_limits(tenant, state.limits);
        {
            let mut suspended = self.suspended.write().expect("suspended lock");
            match &state.suspended {
                Some(s) => suspended.insert(tenant.to_string(), s.clone()),
                None => suspended.remove(tenant),
            };
        }
        self.changes
            .lock()
            .expect("changes lock")
            .insert(tenant.to_string(), state);
        self.sets
            .write()
            .expect("sets lock")
            .insert(tenant.to_string(), set.clone());
        set
    }

    /// The set a state describes: its rules and functions loaded.
    fn build(&self, tenant: &str, state: &TenantState) -> anyhow::Result<Arc<PolicySet>> {
        let rules_version = state.rules.active().unwrap_or(0);
        let rules = if rules_version == 0 {
            Rules::default()
        } else {
            let bytes = self
                .handle
                .block_on(self.store.blob(&owner(tenant), &rules_blob(rules_version)))?;
            Rules::parse(&String::from_utf8(bytes).context("rules are UTF-8")?)?
        };
        let rules = rules.with_hashes(Self::credential_hashes(state));
        let mut functions = Vec::new();
        for name in &state.order {
            if let Some(v) = state.functions.get(name).and_then(Track::active) {
                functions.push(self.function(tenant, name, v)?);
            }
        }
        let limits = self.limits_from(&rules);
        Ok(Arc::new(PolicySet {
            tenant: Arc::from(tenant),
            generation: state.generation,
            functions,
            rules: Arc::new(rules),
            rules_version,
            limits,
            label: Default::default(),
        }))
    }

    /// Per-tenant limits: `runtime.deadline-ms` and `runtime.memory-bytes`
    /// in the rules override the defaults (memory capped by the engine's).
    fn limits_from(&self, rules: &Rules) -> Limits {
        let mut limits = self.defaults;
        if let Some(ms) = rules
            .get("runtime.deadline-ms")
            .and_then(|v| v.parse().ok())
        {
            limits.deadline = Duration::from_millis(ms);
        }
        if let Some(b) = rules
            .get("runtime.memory-bytes")
            .and_then(|v| v.parse::<usize>().ok())
        {
            limits.memory_bytes = b.min(self.rt.config().max_memory_bytes);
        }
        limits
    }

    fn state_of(&self, tenant: &str) -> TenantState {
        self.changes
            .lock()
            .expect("changes lock")
            .get(tenant)
            .cloned()
            .unwrap_or_default()
    }

    /// Validates a shadow candidate for `tenant`'s function `name` (it
    /// must compile, link and export a decision point, as a deploy), and
    /// loads it; nothing is stored (see [`crate::shadow`]).
    pub fn shadow_candidate(
        &self,
        tenant: &str,
        name: &str,
        bytes: &[u8],
    ) -> Result<mailwit_runtime::Function, AdminError> {
        self.candidate(tenant, name, bytes).map(|(f, _)| f)
    }

    /// Checks the names and that the tenant exists, and loads `bytes` as
    /// the next version of its function `name`: compiled, linked, its
    /// exports found and type-checked. Nothing is stored. The function, and
    /// the tenant's state it is the next version in.
    fn candidate(
        &self,
        tenant: &str,
        name: &str,
        bytes: &[u8],
    ) -> Result<(mailwit_runtime::Function, TenantState), AdminError> {
        if !valid_name(tenant) || !valid_name(name) || name == RULES {
            return Err(AdminError::Invalid(format!(
                "tenant and function names are 1-64 of [a-z0-9_-] (and a function may not be called {RULES:?})"
            )));
        }
        if self.get(tenant).is_none() {
            return Err(AdminError::NoTenant(tenant.to_string()));
        }
        let state = self.state_of(tenant);
        let version = state.functions.get(name).map(|t| t.latest).unwrap_or(0) + 1;
        let f = self
            .rt
            .load(name, version, bytes)
            .map_err(|e| AdminError::Invalid(e.to_string()))?;
        Ok((f, state))
    }

    /// Validates, stores and activates a new version of a function
    /// (appending it to the tenant's set when new; creating the tenant when
    /// unknown). Returns the new version number.
    pub fn deploy(
        &self,
        tenant: &str,
        name: &str,
        bytes: &[u8],
    ) -> Result<FunctionSummary, AdminError> {
        let _op = self.ops.lock().expect("ops lock");
        // Validate first: nothing is stored on failure.
        let (f, mut state) = self.candidate(tenant, name, bytes)?;
        let version = f.version;
        let f = Arc::new(f);
        self.handle.block_on(self.store.put_blob(
            &owner(tenant),
            &function_blob(name, version),
            bytes,
        ))?;
        self.loaded
            .lock()
            .expect("loaded lock")
            .insert((tenant.to_string(), name.to_string(), version), f.clone());
        let track = state.functions.entry(name.to_string()).or_default();
        track.latest = version;
        track.history.push(version);
        if !state.order.iter().any(|n| n == name) {
            state.order.push(name.to_string());
        }
        state.generation += 1;
        self.activate(tenant, state)?;
        Ok(summary(&f))
    }

    /// Validates, stores and activates new rules. Returns their version.
    pub fn set_rules(&self, tenant: &str, text: &str) -> Result<u64, AdminError> {
        let _op = self.ops.lock().expect("ops lock");
        if !valid_name(tenant) {
            return Err(AdminError::Invalid(
                "tenant names are 1-64 of [a-z0-9_-]".into(),
            ));
        }
        if self.get(tenant).is_none() {
            return Err(AdminError::NoTenant(tenant.to_string()));
        }
        let rules = Rules::parse(text).map_err(|e| AdminError::Invalid(e.to_string()))?;
        tenant_certificate(&rules).map_err(AdminError::Invalid)?;
        let mut state = self.state_of(tenant);
        let kept = state
            .users
            .keys()
            .filter(|l| !rules.keys_under("users").any(|r| r == l.as_str()))
            .count();
        let users = rules.keys_under("users").count() + kept;
        if users > rules.max_users() {
            return Err(AdminError::Invalid(format!(
                "{users} users (with the {kept} the host keeps), more than max-users = {}",
                rules.max_users()
            )));
        }
        self.claims(tenant, &rules)?;
        let version = state.rules.latest + 1;
        self.handle.block_on(self.store.put_blob(
            &owner(tenant),
            &rules_blob(version),
            text.as_bytes(),
        ))?;
        state.rules.latest = version;
        state.rules.history.push(version);
        state.generation += 1;
        self.activate(tenant, state)?;
        self.reindex();
        Ok(version)
    }

    /// Refuses rules that claim what another tenant has: a server name, a
    /// login, an API key id.
    fn claims(&self, tenant: &str, rules: &Rules) -> Result<(), AdminError> {
        let index = self.index.read().expect("index lock");
        let theirs = |owner: Option<&String>| owner.is_some_and(|o| o != tenant);
        for login in rules.keys_under("users") {
            if index
                .logins
                .get(login)
                .is_some_and(|ts| ts.iter().any(|t| theirs(Some(t))))
            {
                return Err(AdminError::Conflict(format!(
                    "users: the login {login} exists in another tenant"
                )));
            }
        }
        for id in rules.keys_under("api-keys") {
            if theirs(index.api_keys.get(id)) {
                return Err(AdminError::Conflict(format!(
                    "api-keys: the key id {id} exists in another tenant"
                )));
            }
        }
        for name in rules.list("tls.server-names") {
            if let Some(other) = index.server_names.get(&name.to_ascii_lowercase())
                && other != tenant
            {
                return Err(AdminError::Invalid(format!(
                    "tls.server-names: {name} belongs to another tenant"
                )));
            }
        }
        Ok(())
    }

    /// Re-activates the previous version of a function (or of the rules,
    /// with the name `rules`). Returns the now active version.
    pub fn rollback(&self, tenant: &str, name: &str) -> Result<u64, AdminError> {
        let _op = self.ops.lock().expect("ops lock");
        if self.get(tenant).is_none() {
            return Err(AdminError::NoTenant(tenant.to_string()));
        }
        let mut state = self.state_of(tenant);
        let track = if name == RULES {
            &mut state.rules
        } else {
            state.functions.get_mut(name).ok_or_else(|| {
                AdminError::NotFound(format!("tenant {tenant} has no function {name:?}"))
            })?
        };
        if track.history.len() < 2 {
            return Err(AdminError::NotFound(format!(
                "{name} has no previous version to roll back to"
            )));
        }
        track.history.pop();
        let active = track.active().expect("non-empty");
        state.generation += 1;
        self.activate(tenant, state)?;
        if name == RULES {
            self.reindex();
        }
        Ok(active)
    }

    /// The policy runtime the tenants' functions run on.
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.rt
    }

    /// Every tenant, its functions and active versions.
    pub fn list(&self) -> Vec<TenantSummary> {
        let sets = self.sets.read().expect("sets lock");
        let mut out: Vec<TenantSummary> = sets
            .iter()
            .map(|(id, set)| TenantSummary {
                tenant: id.clone(),
                generation: set.generation,
                rules_version: set.rules_version,
                functions: set.functions.iter().map(|f| summary(f)).collect(),
            })
            .collect();
        out.sort_by(|a, b| a.tenant.cmp(&b.tenant));
        out
    }
}

impl crate::tls::TenantCerts for Tenants {
    fn tenant_cert(&self, server_name: &str) -> Option<Arc<CertifiedKey>> {
        self.index
            .read()
            .expect("index lock")
            .certs
            .get(server_name)
            .cloned()
    }
}

fn summary(f: &Function) -> FunctionSummary {
    FunctionSummary {
        name: f.name.clone(),
        version: f.version,
        digest: f.digest.clone(),
        exports: f.export_names().into_iter().map(str::to_string).collect(),
    }
}
