//! Reloading without a restart, on `SIGHUP` or `mailwit reload` (the admin
//! API's `POST /v1/reload`): the configuration file is read again, and
//!
//! - `[limits]` apply to sessions that start from now on (open sessions keep
//!   the limits they started with);
//! - the server's certificate and key files are read again and presented on
//!   the next handshakes (open sessions keep theirs). A certificate that
//!   does not parse, or does not match its key, is refused with a log line
//!   and the old one stays.
//!
//! A configuration that no longer parses changes nothing. Every other
//! section (listeners, data_dir, admin, runtime, delivery, ...) needs a
//! restart; tenants' certificates change with their rules.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::config::Config;
use crate::server::Shared;
use crate::tls::CertStore;

/// What a reload did, for the log and for `mailwit reload`.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// True when the configuration parsed and `[limits]` are in force.
    pub limits: bool,
    /// True when the certificate was read and is presented from now on.
    pub certificate: bool,
    /// What was refused, and why.
    pub errors: Vec<String>,
}

pub struct Reloader {
    /// The configuration file; `None` for the embedded one (whose limits
    /// cannot change, but whose generated certificate files can).
    path: Option<PathBuf>,
    certs: Arc<CertStore>,
    shared: Arc<Shared>,
    /// One reload at a time (SIGHUP and the admin API may race).
    busy: Mutex<()>,
}

impl Reloader {
    pub fn new(path: Option<PathBuf>, certs: Arc<CertStore>, shared: Arc<Shared>) -> Reloader {
        Reloader {
            path,
            certs,
            shared,
            busy: Mutex::new(()),
        }
    }

    /// Reads the configuration and certificate files again and applies what
    /// parses. Blocking (file reads): call it off the async workers.
    pub fn reload(&self) -> Outcome {
        let _one = self.busy.lock().expect("reload lock");
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Reloading]);
        let outcome = self.apply();
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
        if outcome.errors.is_empty() {
            tracing::info!(
                event = "reload",
                limits = outcome.limits,
                certificate = outcome.certificate
            );
        } else {
            tracing::error!(
                event = "reload.refused",
                limits = outcome.limits,
                certificate = outcome.certificate,
                errors = %outcome.errors.join("; "),
                "kept what could not be reloaded"
            );
        }
        outcome
    }

    fn apply(&self) -> Outcome {
        let mut outcome = Outcome {
            limits: false,
            certificate: false,
            errors: Vec::new(),
        };
        let config = match Config::load(self.path.as_deref()) {
            Ok(c) => c,
            Err(e) => {
                outcome.errors.push(format!("{e:#}"));
                return outcome;
            }
        };
        self.shared.set_limits(config.limits.clone());
        outcome.limits = true;
        match config.server_cert() {
            Ok(cert) => {
                self.certs.replace(cert);
                outcome.certificate = true;
            }
            Err(e) => outcome.errors.push(format!("certificate kept: {e:#}")),
        }
        outcome
    }
}
