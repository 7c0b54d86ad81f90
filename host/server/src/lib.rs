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
//! - [`app`]: the whole server started in one call ([`app::start`]), for
//!   `mailwit serve` and for tests in process.
//! - [`server`]: listeners, connection caps, graceful shutdown.
//! - [`driver`]: one client session's I/O: socket, TLS upgrade, sleeping
//!   until the core's deadline, the memory budget of a large message;
//!   questions go to the submission.
//! - [`submission`]: answers the core's questions: principal, transaction,
//!   the typed spool record, the spool and delivery hand-off.
//! - [`replies`]: every SMTP reply the server adds to the core's.
//! - [`policy`]: the policy seam ([`policy::Policy`]), answered by each
//!   tenant's WebAssembly functions (`mailwit-runtime`); it validates a
//!   component's refusal (`Reply::from_component`) before a client sees it.
//! - [`shadow`]: shadow deploys: a candidate function compared with the
//!   live set on a share of the transactions, off the reply path.
//! - [`replay`]: each tenant's last transactions' policy inputs, and a
//!   candidate compared with the live set on them (`tenant test`).
//! - [`authgate`]: bounded work before authentication: the password
//!   checks' pool and queue, and back-off per client address.
//! - [`budget`]: the ceiling on message content held in memory, server-wide
//!   and per tenant.
//! - [`tenants`]: tenants' function sets and rules: durable versions,
//!   atomic swap, rollback, tenant resolution, following another host's
//!   changes.
//! - [`artifacts`]: where deployed versions and their states are stored
//!   (files, or the cluster's key-value bucket and object store).
//! - [`message`]: the parsed summary of a message that the policy sees.
//! - [`admin`]: the admin HTTP API (deploy, rules, rollback, list,
//!   metrics) and the CLI's client for it.
//! - [`metrics`]: per-tenant Prometheus metrics.
//! - [`queue`]: the delivery queue's interface ([`queue::Queue`]: enqueue,
//!   next due, load, finish, retry later, behind opaque tickets) and its
//!   embedded implementation over the spool.
//! - [`spool`]: the durable, group-committed message spool of one host
//!   (the file queue's storage).
//! - [`delivery`]: the job's lifecycle (retries, DSN, reports), one module
//!   per route (relay with DKIM, sandbox, discard), and the status store
//!   of every step.
//! - [`statusapi`]: the status API listener, answered in-process by the
//!   status HTTP component (`components/status`) over a per-account,
//!   read-only view of the status store, rules and sandbox.
//! - [`cluster`]: the connection to NATS JetStream (`[cluster]`), shared
//!   by the queue's and the status store's cluster implementations.
//! - [`tls`]: the certificates handshakes present (the server's, tenants'
//!   by SNI), loading and self-signed generation.
//! - [`reload`]: `SIGHUP` and `mailwit reload`: `[limits]` and the
//!   certificate files again, without a restart.
//! - [`httpd`]: the HTTP/1 accept loop of the admin and status listeners.
//! - [`fsutil`]: the one durable whole-file write (temp, fsync, rename,
//!   fsync of the directory) that tenants, sandbox and reports share.
//! - [`wallclock`]: milliseconds since the Unix epoch, as records store it.
//!
//! # Layers
//!
//! Imports point one way: no two modules import each other, directly or
//! around a loop (test modules aside). Each module, top down, and what it
//! imports from this crate:
//!
//! | module | imports |
//! |---|---|
//! | `app` | `admin`, `reload`, `server`, `submission`, `policy`, `shadow`, `statusapi`, `delivery`, `metrics`, `artifacts`, `cluster`, `queue`, `tenants`, `config`, `authgate`, `budget`, `tls` |
//! | `admin` | `reload`, `statusapi`, `delivery`, `metrics`, `tenants`, `replay`, `shadow`, `authgate`, `budget`, `httpd` |
//! | `reload` | `server`, `config`, `tls` |
//! | `server` | `driver`, `submission`, `config`, `budget` |
//! | `driver` | `submission`, `policy`, `config`, `budget`, `replies` |
//! | `submission` | `policy`, `metrics`, `queue`, `spool`, `replies`, `wallclock` |
//! | `policy` | `metrics`, `tenants`, `replay`, `shadow`, `authgate`, `message`, `replies`, `wallclock` |
//! | `replay` | `shadow`, `message`, `wallclock` |
//! | `shadow` | `wallclock` |
//! | `statusapi` | `artifacts`, `delivery`, `metrics`, `tenants`, `config`, `authgate`, `httpd` |
//! | `delivery` | `cluster`, `queue`, `spool`, `tenants`, `config`, `budget`, `fsutil`, `wallclock` |
//! | `metrics` | `queue`, `tenants` |
//! | `queue` | `cluster`, `spool`, `config`, `budget` |
//! | `cluster` | `config` |
//! | `spool` | `config` |
//! | `tenants` | `artifacts`, `config`, `tls` |
//! | `artifacts` | `cluster`, `fsutil` |
//! | `config` | `authgate`, `budget`, `tls` |
//! | `authgate`, `budget`, `fsutil`, `httpd`, `message`, `replies`, `tls`, `wallclock` | none: the leaves |
//!
//! The protocol core (`mailwit-smtp`), the runtime (`mailwit-runtime`) and
//! the rules (`mailwit-rules`, below the runtime) are crates below all of
//! these; none of them depends on another but the runtime on the rules.

pub mod admin;
pub mod app;
pub mod artifacts;
pub mod authgate;
pub mod budget;
pub mod cluster;
pub mod config;
pub mod delivery;
pub mod driver;
pub mod fsutil;
pub mod httpd;
pub mod message;
pub mod metrics;
pub mod policy;
pub mod queue;
pub mod reload;
pub mod replay;
pub mod replies;
pub mod sched;
pub mod server;
pub mod shadow;
pub(crate) mod spool;
pub mod statusapi;
pub mod submission;
pub mod tenants;
pub mod tls;
pub mod usage;
pub mod wallclock;
