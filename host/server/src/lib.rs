//! # mailwit host
//!
//! The native side of mailwit: TCP, TLS, the session driver around the
//! sans-IO SMTP core (`mailwit-smtp`), the policy seam and the durable
//! spool.
//!
//! # Layout
//!
//! - [`config`]: the TOML configuration, its defaults, the embedded
//!   development configuration.
//! - [`server`]: listeners, connection caps, graceful shutdown.
//! - [`driver`]: one client session: socket, TLS upgrade, deadlines,
//!   carrying the core's outputs to the policy and the spool.
//! - [`policy`]: the policy seam ([`policy::Policy`]) and, until the
//!   WebAssembly runtime lands, the configuration-backed policy.
//! - [`spool`]: the durable, group-committed message spool.
//! - [`tls`]: certificate loading and self-signed generation.

pub mod config;
pub mod driver;
pub mod policy;
pub mod server;
pub mod spool;
pub mod tls;
