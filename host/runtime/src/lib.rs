//! # mailwit-runtime: tenant policy in WebAssembly components
//!
//! wasmtime stays behind this crate: the rest of the host sees plain Rust
//! types ([`PolicySet`], [`Decision`], [`Failure`]), never wasmtime's.
//!
//! # Layout
//!
//! - [`engine`]: the process's one `Engine` (pooling allocator, epoch
//!   interruption with one ticker thread), the `Linker` (the `host` import
//!   and a deny-everything WASI), loading and the on-disk compiled-code
//!   cache keyed by content hash.
//! - [`call`]: one call: a `Store` with memory limit and deadline, on a
//!   fresh instance (or a warm one on the host's async workers), failure
//!   classification.
//! - [`policy`]: a tenant's function set and the order in which the
//!   decision points are asked.
//! - [`http`]: HTTP components (the status API), WASI 0.2 `wasi:http`
//!   components with Spin's key-value and variables imports.
//! - [`rules`]: a tenant's rules (read-only configuration for components).
//! - `bindings`: generated from `wit/` by `bindgen!`.

mod bindings;
pub mod call;
pub mod engine;
pub mod http;
pub mod policy;
pub mod rules;

pub use call::{Failure, FailureKind, Limits, with_warm};
pub use engine::{Function, LoadError, Runtime, RuntimeConfig};
pub use policy::{
    AttachmentInfo, Client, Decision, Inspection, MessageArgs, MessageInfo, PolicySet, Route,
    Session, SessionInfo,
};
pub use rules::{MAX_ARGON2_KIB, Rules, RulesError};
