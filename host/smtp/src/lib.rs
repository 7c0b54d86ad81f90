//! # mailwit-smtp: the SMTP submission protocol without I/O
//!
//! Bytes and the time go in, replies and policy questions come out. This
//! crate has no sockets, no async runtime and reads no clock, so every rule
//! (framing, limits, deadlines, command sequence, SMTP smuggling, STARTTLS
//! injection) is reachable from a unit test byte by byte, with simulated
//! time. The host's session driver feeds it and carries its
//! outputs to the socket, the TLS layer and the policy runtime.
//!
//! # Layout
//!
//! - [`session`]: the state machine ([`Session`]), the driver contract and
//!   the policy questions it asks ([`Question`], answered with [`Verdict`]).
//! - [`clock`]: the deadlines (command, DATA, TLS handshake, shutdown
//!   grace), on the time the driver tells the session.
//! - [`command`]: parsing one command line.
//! - [`framing`]: the line receivers, one per framing mode (command line,
//!   SASL response, the rest of an overlong line).
//! - [`data`]: the DATA receiver (end-of-data detection, dot-unstuffing, the
//!   bare CR/LF rule).
//! - [`reply`]: replies with enhanced status codes.

pub mod clock;
pub mod command;
pub mod data;
pub mod framing;
pub mod reply;
pub mod session;

pub use clock::{Expired, Timeouts};
pub use framing::{MAX_AUTH_LINE, MAX_COMMAND_LINE};
pub use reply::{InvalidReply, Reply, Status};
pub use session::{BodyType, Config, Envelope, Mechanism, Output, Question, Session, Verdict};

#[cfg(test)]
mod tests;
