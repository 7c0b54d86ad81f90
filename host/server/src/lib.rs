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
//! - [`policy`]: the policy seam ([`policy::Policy`]), answered by each
//!   tenant's WebAssembly functions (`mailwit-runtime`).
//! - [`authgate`]: bounded work before authentication: the password
//!   checks' pool and queue, and back-off per client address.
//! - [`budget`]: the ceiling on message content held in memory, server-wide
//!   and per tenant.
//! - [`tenants`]: tenants' function sets and rules: durable versions,
//!   atomic swap, rollback, tenant resolution.
//! - [`message`]: the parsed summary of a message that the policy sees.
//! - [`admin`]: the admin HTTP API (deploy, rules, rollback, list,
//!   metrics) and the CLI's client for it.
//! - [`metrics`]: per-tenant Prometheus metrics.
//! - [`spool`]: the durable, group-committed message spool.
//! - [`delivery`]: relay (DKIM, retries, DSN), sandbox and discard routes,
//!   and the status store of every step.
//! - [`statusapi`]: the status API listener, answered in-process by the
//!   status HTTP component (`components/status`) over a per-account,
//!   read-only view of the status store, rules and sandbox.
//! - [`tls`]: the certificates handshakes present (the server's, tenants'
//!   by SNI), loading and self-signed generation.
//! - [`reload`]: `SIGHUP` and `mailwit reload`: `[limits]` and the
//!   certificate files again, without a restart.
//! - [`httpd`]: the HTTP/1 accept loop of the admin and status listeners.
//! - [`fsutil`]: the one durable whole-file write (temp, fsync, rename,
//!   fsync of the directory) that tenants, sandbox and reports share.

pub mod admin;
pub mod authgate;
pub mod budget;
pub mod config;
pub mod delivery;
pub mod driver;
pub mod fsutil;
pub mod httpd;
pub mod message;
pub mod metrics;
pub mod policy;
pub mod reload;
pub mod server;
pub mod spool;
pub mod statusapi;
pub mod tenants;
pub mod tls;
