//! The session's deadlines, kept on the time the driver tells it (as
//! quinn-proto's connection does): no clock is read here, so every rule is
//! tested with simulated time.
//!
//! - **Command**: each command must be complete within `command_timeout`
//!   of the previous reply; bytes that trickle in do not extend it.
//! - **DATA**: `data_timeout` from the `354`, plus one second per
//!   `min_data_rate` octets received, so a slow but honest upload finishes
//!   and a trickle does not.
//! - **STARTTLS handshake**: `tls_handshake_timeout` from the `220`.
//! - **Shutdown**: an idle session closes at once; a running transaction
//!   gets `shutdown_grace` to finish.

use std::time::{Duration, Instant};

/// The durations, from [`crate::Config`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub command: Duration,
    pub data: Duration,
    /// Octets per second that earn a DATA phase one more second.
    pub min_data_rate: u64,
    pub tls_handshake: Duration,
    pub shutdown_grace: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            command: Duration::from_secs(300),
            data: Duration::from_secs(300),
            min_data_rate: 1024,
            tls_handshake: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// Which deadline passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    Command,
    Data,
    Handshake,
    /// The shutdown grace: the running transaction did not finish in time.
    Grace,
}

#[derive(Debug)]
pub(crate) struct Clock {
    pub(crate) t: Timeouts,
    /// The time as last told.
    pub(crate) now: Instant,
    command: Instant,
    data_started: Instant,
    handshake: Instant,
    grace: Option<Instant>,
}

impl Clock {
    pub(crate) fn new(t: Timeouts, now: Instant) -> Clock {
        Clock {
            t,
            now,
            command: now + t.command,
            data_started: now,
            handshake: now + t.tls_handshake,
            grace: None,
        }
    }

    /// Time moves on; never backwards.
    pub(crate) fn tell(&mut self, now: Instant) {
        self.now = self.now.max(now);
    }

    /// A reply went out: the next command's time starts now.
    pub(crate) fn replied(&mut self) {
        self.command = self.now + self.t.command;
    }

    pub(crate) fn data_started(&mut self) {
        self.data_started = self.now;
    }

    pub(crate) fn handshake_started(&mut self) {
        self.handshake = self.now + self.t.tls_handshake;
    }

    /// Asks for a shutdown; the first request sets the grace's end.
    pub(crate) fn shutdown(&mut self) {
        self.grace.get_or_insert(self.now + self.t.shutdown_grace);
    }

    pub(crate) fn shutting_down(&self) -> bool {
        self.grace.is_some()
    }

    /// The DATA deadline after `received` octets.
    fn data_deadline(&self, received: u64) -> Instant {
        let earned = Duration::from_secs(received / self.t.min_data_rate.max(1));
        self.data_started + self.t.data + earned
    }

    /// The deadline in force for the phase (`received` octets of DATA
    /// when in DATA), and which one it is; the grace's end when sooner.
    pub(crate) fn next(&self, phase: Phase) -> (Instant, Expired) {
        let own = match phase {
            Phase::Command => (self.command, Expired::Command),
            Phase::Data(received) => (self.data_deadline(received), Expired::Data),
            Phase::Handshake => (self.handshake, Expired::Handshake),
        };
        match self.grace {
            Some(g) if g < own.0 => (g, Expired::Grace),
            _ => own,
        }
    }
}

/// What the session is waiting for, as the clock sees it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Phase {
    Command,
    Data(u64),
    Handshake,
}
