//! # mailwit-runtime: tenant policy in WebAssembly components
//!
//! wasmtime stays behind this crate: the rest of the host sees plain Rust
//! types ([`PolicySet`], [`Decision`], [`Failure`]), never wasmtime's.
//!
//! # Layout
//!
//! - [`engine`]: the process's one `Engine` (pooling allocator, epoch
//!   interruption with one ticker thread), the policy `Linker` (the `host`
//!   import and a deny-everything WASI), linking and the on-disk
//!   compiled-code cache keyed by content hash.
//! - [`call`]: one call: an instance lent for it (warm from the pool or
//!   fresh), async, and `Runtime::load`, which type-checks a function by
//!   instantiating it once.
//! - `ticker`: the epoch's ticker thread, which parks while no component
//!   runs (every entry into WebAssembly holds it awake).
//! - `warm`: the pool of warm instances (a call takes one that serves its
//!   function version, rules and tenant, and gives it back).
//! - [`policy`]: a tenant's function set and the order in which the
//!   decision points are asked.
//! - [`http`]: HTTP components (the status API), WASI 0.2 `wasi:http`
//!   components with Spin's key-value and variables imports.
//! - `isolation`: what keeps a tenant within its share: a function that
//!   keeps hitting its deadline is quarantined, and each tenant's policy
//!   CPU time is metered against a share of the machine.
//! - [`limits`]: what bounds every call, policy or HTTP: the limits, the
//!   memory limiter, the epoch deadline (a policy call's clock, yielding at
//!   every tick until it passes) and how a failure is classified (one path
//!   for both kinds of component).
//! - `state`: a policy call's store data and the `host` import it answers.
//! - `types`: the plain types components are told about (client, session).
//! - [`rules`]: a tenant's rules (read-only configuration for components),
//!   the crate `mailwit-rules` re-exported.
//! - `bindings`: every world's bindings, generated from `wit/` by
//!   `bindgen!` (the policy contract, and Spin's interfaces in
//!   `wit/deps/`).
//!
//! # Layers
//!
//! Imports point one way; no two modules import each other:
//!
//! | module | imports |
//! |---|---|
//! | `policy` | `call`, `engine`, `state`, `bindings`, `limits`, `rules`, `types` |
//! | `http` | `engine`, `bindings`, `limits` |
//! | `call` | `engine`, `warm`, `ticker`, `state`, `isolation`, `limits`, `rules`, `types` |
//! | `engine` | `warm`, `ticker`, `state`, `bindings`, `isolation`, `limits` |
//! | `warm` | `state`, `rules` |
//! | `state` | `bindings`, `isolation`, `limits`, `rules`, `types` |
//! | `limits` | `isolation` |
//! | `ticker` | `limits` |
//! | `bindings`, `isolation`, `types` | none: the leaves |
//!
//! `rules` is the crate `mailwit-rules` (no wasmtime, no other mailwit
//! crate). The runtime depends on no other mailwit crate either: a
//! refusal leaves it as the component returned it, bounded in size
//! ([`Refusal`]), and the embedder decides whether it is a valid SMTP
//! reply and what a client is told.

mod bindings;
pub mod call;
pub mod engine;
pub mod http;
mod isolation;
pub mod limits;
pub mod policy;
mod state;
mod ticker;
mod types;
mod warm;

pub use engine::{Function, LoadError, Runtime, RuntimeConfig};
pub use isolation::{CpuShare, CpuUse, FIRST_QUARANTINE, MAX_QUARANTINE, QUARANTINE_AFTER};
pub use limits::{Failure, FailureKind, Limits};
/// A tenant's rules: their own crate (`host/rules`), free of wasmtime, so
/// they can be fuzzed and read by tools.
pub use mailwit_rules as rules;
pub use policy::{
    AttachmentInfo, Client, Decision, Inspection, Mechanism, MessageArgs, MessageInfo, PolicySet,
    Refusal, Route, Session, SessionInfo, Usage, UsageSource,
};
pub use rules::{MAX_ARGON2_KIB, Rules, RulesError};
