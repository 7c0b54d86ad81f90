//! The process's one wasmtime `Engine`, its `Linker`, the epoch ticker, and
//! loading (validating, compiling or reusing compiled) function components.

use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, InstancePre, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::bindings::exports::mailwit::policy as ex;
use crate::bindings::mailwit::policy as im;
use crate::isolation::{CpuShare, CpuUse, Health, Meters};
use crate::state::State;
use crate::ticker::Ticker;
use crate::warm;

/// How often the engine's epoch advances; deadlines are counted in ticks.
pub use crate::limits::TICK;

/// Memory of an instance reset in place (not given back) when its slot is
/// reused; a reference component dirties a few dozen pages of it.
const KEEP_RESIDENT: usize = 4 << 20;

/// Settings of the runtime. Defaults in [`RuntimeConfig::default`].
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Where compiled code is cached by content hash; `None` disables it.
    pub cache_dir: Option<PathBuf>,
    /// Component instances alive at once (pooling allocator). Default 256.
    pub max_instances: u32,
    /// Largest linear memory any tenant may be given, in octets. Default 64 MiB.
    pub max_memory_bytes: usize,
    /// Most calls one warm instance serves (see the `warm` module); 1 gives
    /// every call a fresh instance. Default 1000.
    pub warm_calls: u32,
    /// Each tenant's share of policy CPU time (see `isolation`); `None`
    /// (the default) meters nothing.
    pub tenant_cpu: Option<CpuShare>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            cache_dir: None,
            max_instances: 256,
            max_memory_bytes: 64 << 20,
            warm_calls: 1000,
            tenant_cpu: None,
        }
    }
}

/// Everything one decision point needs to call into a component.
#[derive(Clone)]
pub(crate) struct Exports {
    pub authenticate: Option<ex::authenticate::GuestIndices>,
    pub check_sender: Option<ex::check_sender::GuestIndices>,
    pub check_recipient: Option<ex::check_recipient::GuestIndices>,
    pub inspect_message: Option<ex::inspect_message::GuestIndices>,
    pub route: Option<ex::route::GuestIndices>,
    /// Inspection and routing in one call; used only as
    /// [`crate::PolicySet::decides_messages`] says.
    pub decide_message: Option<ex::decide_message::GuestIndices>,
}

/// The decision-point interfaces of `mailwit:policy`, in call order.
pub const INTERFACES: [&str; 5] = [
    "authenticate",
    "check-sender",
    "check-recipient",
    "inspect-message",
    "route",
];

/// One compiled, linked version of one policy function.
pub struct Function {
    /// Unique in the process (the key of its warm instances).
    pub(crate) id: u64,
    pub name: String,
    pub version: u64,
    /// Hex SHA-256 of the component's bytes.
    pub digest: String,
    pub(crate) pre: InstancePre<State>,
    pub(crate) exports: Exports,
    /// Its deadline hits in a row, and its quarantine.
    pub(crate) health: Health,
}

impl std::fmt::Debug for Function {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Function")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("digest", &self.digest)
            .field("exports", &self.export_names())
            .finish()
    }
}

impl Function {
    /// The interfaces this function answers, by WIT name.
    pub fn export_names(&self) -> Vec<&'static str> {
        INTERFACES.into_iter().filter(|i| self.answers(i)).collect()
    }

    /// Whether this function exports the interface `name` (a WIT name such
    /// as "check-recipient"). Allocation-free: it is asked per message.
    pub fn answers(&self, name: &str) -> bool {
        let e = &self.exports;
        match name {
            "authenticate" => e.authenticate.is_some(),
            "check-sender" => e.check_sender.is_some(),
            "check-recipient" => e.check_recipient.is_some(),
            "inspect-message" => e.inspect_message.is_some(),
            "route" => e.route.is_some(),
            // Not a decision point of its own (not in INTERFACES): the
            // shortcut for inspect-message and route.
            "decide-message" => e.decide_message.is_some(),
            _ => false,
        }
    }
}

/// Why a component was refused at deploy.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("not a valid WebAssembly component: {0}")]
    Compile(String),
    #[error("component does not link against mailwit:policy@0.2.0: {0}")]
    Link(String),
    #[error(
        "not an HTTP component mailwit can serve (one exporting wasi:http/incoming-handler@0.2.x and importing only WASI 0.2, wasi:http/types, fermyon:spin/key-value@2.0.0 and fermyon:spin/variables@2.0.0): {0}"
    )]
    HttpLink(String),
    #[error("component exports {interface} with the wrong type: {why}")]
    Mismatch { interface: String, why: String },
    #[error(
        "component exports none of mailwit:policy/{{authenticate,check-sender,check-recipient,inspect-message,route}}@0.2.0 (it exports: {found})"
    )]
    NoExports { found: String },
}

/// The policy runtime: one per process.
pub struct Runtime {
    pub(crate) engine: Engine,
    linker: Linker<State>,
    config: RuntimeConfig,
    pub(crate) ticker: Arc<Ticker>,
    pub(crate) warm: warm::Pool,
    pub(crate) meters: Meters,
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.ticker.stop();
    }
}

impl Runtime {
    pub fn new(config: RuntimeConfig) -> anyhow::Result<Runtime> {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(config.max_instances)
            // wasm32-wasip2 Rust components hold a few core instances and memories.
            .total_core_instances(config.max_instances * 4)
            .total_memories(config.max_instances * 2)
            .total_tables(config.max_instances * 4)
            .max_memory_size(config.max_memory_bytes)
            // Give slots back to the kernel in batches: each madvise in a
            // multi-threaded process costs TLB shootdowns on every core.
            .decommit_batch_size(32);
        if has_pagemap_scan() {
            // Reset only the pages an instance dirtied, with memset, and
            // keep them mapped: no madvise and no page faults for the next
            // instance. Without PAGEMAP_SCAN, keeping memory resident would
            // memset all of it on every reuse, which costs more than it saves.
            pool.pagemap_scan(wasmtime::Enabled::Auto)
                .linear_memory_keep_resident(KEEP_RESIDENT)
                .table_keep_resident(64 << 10);
        }
        let mut wt = Config::new();
        wt.wasm_component_model(true)
            .epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&wt)?;
        let mut linker = Linker::<State>::new(&engine);
        // Components built for wasm32-wasip2 import WASI because Rust's std
        // does; they get a context that grants nothing (see state.rs). Its
        // async form: calls run on fibers polled by the host's async
        // workers, where the sync form would block on them (a guest's write
        // to stderr did).
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        im::host::add_to_linker::<State, HasSelf<State>>(&mut linker, |s| s)?;
        im::types::add_to_linker::<State, HasSelf<State>>(&mut linker, |s| s)?;

        // One ticker for the engine: per-call tickers cost orders of magnitude.
        let ticker = Ticker::start(engine.clone())?;
        if let Some(dir) = &config.cache_dir {
            std::fs::create_dir_all(dir)?;
        }
        Ok(Runtime {
            engine,
            linker,
            ticker,
            warm: warm::Pool::default(),
            meters: Meters::new(config.tenant_cpu),
            config,
        })
    }

    pub fn config(&self) -> &RuntimeConfig {
        &self.config
    }

    /// Whether the epoch ticker is parked: nothing has run WebAssembly for
    /// about a second (see the `ticker` module).
    pub fn ticker_parked(&self) -> bool {
        self.ticker.parked()
    }

    /// Each tenant's policy CPU time and throttled calls so far (empty
    /// when shares are off).
    pub fn cpu_usage(&self) -> Vec<CpuUse> {
        self.meters.usage()
    }

    /// Compiles (or reuses) and links a function, finding the decision
    /// points it exports (`Runtime::load` type-checks them too).
    pub(crate) fn link(
        &self,
        name: &str,
        version: u64,
        bytes: &[u8],
    ) -> Result<Function, LoadError> {
        let digest = hex(&Sha256::digest(bytes));
        let component = self.compile_cached(&digest, bytes)?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::Link(format!("{e:#}")))?;
        // An interface exported under its name must have the right shape;
        // one not exported at all is simply not answered by this function.
        macro_rules! find {
            ($module:ident, $iface:literal) => {
                match ex::$module::GuestIndices::new(&pre) {
                    Ok(i) => Some(i),
                    Err(_)
                        if component
                            .get_export_index(None, concat!("mailwit:policy/", $iface, "@0.2.0"))
                            .is_none() =>
                    {
                        None
                    }
                    Err(e) => {
                        return Err(LoadError::Mismatch {
                            interface: concat!("mailwit:policy/", $iface, "@0.2.0").into(),
                            why: format!("{e:#}"),
                        });
                    }
                }
            };
        }
        let exports = Exports {
            authenticate: find!(authenticate, "authenticate"),
            check_sender: find!(check_sender, "check-sender"),
            check_recipient: find!(check_recipient, "check-recipient"),
            inspect_message: find!(inspect_message, "inspect-message"),
            route: find!(route, "route"),
            decide_message: find!(decide_message, "decide-message"),
        };
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let function = Function {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            name: name.to_string(),
            version,
            digest,
            pre,
            exports,
            health: Health::default(),
        };
        Ok(function)
    }

    /// Refuses a function that exports no decision point at all, naming
    /// what it does export.
    pub(crate) fn require_exports(&self, function: &Function) -> Result<(), LoadError> {
        if function.export_names().is_empty() {
            let ty = function.pre.component().component_type();
            let found: Vec<String> = ty
                .exports(&self.engine)
                .map(|(n, _)| n.to_string())
                .collect();
            return Err(LoadError::NoExports {
                found: if found.is_empty() {
                    "nothing".into()
                } else {
                    found.join(", ")
                },
            });
        }
        Ok(())
    }

    pub(crate) fn compile_cached(
        &self,
        digest: &str,
        bytes: &[u8],
    ) -> Result<Component, LoadError> {
        let Some(dir) = &self.config.cache_dir else {
            return Component::new(&self.engine, bytes)
                .map_err(|e| LoadError::Compile(format!("{e:#}")));
        };
        // The same bytes compiled by another wasmtime or with other settings
        // must not be reused: the engine's compatibility hash is in the name.
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut h);
        let path = dir.join(format!("{digest}-{:016x}.cwasm", h.finish()));
        if path.exists() {
            // SAFETY: the file was written by `Component::serialize` of an
            // engine with the same compatibility hash, into a directory only
            // this process writes.
            match unsafe { Component::deserialize_file(&self.engine, &path) } {
                Ok(c) => {
                    tracing::debug!(event = "component.cached", digest);
                    return Ok(c);
                }
                Err(e) => {
                    tracing::warn!(cause = %e, path = %path.display(), "discarding unusable compiled-code cache entry")
                }
            }
        }
        let component = Component::new(&self.engine, bytes)
            .map_err(|e| LoadError::Compile(format!("{e:#}")))?;
        tracing::info!(event = "component.compiled", digest);
        match component.serialize() {
            Ok(code) => {
                let tmp = path.with_extension("tmp");
                if let Err(e) =
                    std::fs::write(&tmp, code).and_then(|_| std::fs::rename(&tmp, &path))
                {
                    tracing::warn!(cause = %e, "could not write the compiled-code cache");
                }
            }
            Err(e) => tracing::warn!(cause = %e, "could not serialize compiled code"),
        }
        Ok(component)
    }
}

/// Whether the kernel has the PAGEMAP_SCAN ioctl (Linux 6.7 and later).
fn has_pagemap_scan() -> bool {
    let Ok(release) = std::fs::read_to_string("/proc/sys/kernel/osrelease") else {
        return false;
    };
    let mut parts = release.trim().split(['.', '-']);
    let major: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    (major, minor) >= (6, 7)
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
