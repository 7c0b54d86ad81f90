//! The `discard` route: accepted, recorded, delivered nowhere (a tenant's
//! black hole, and the benchmarks' route).

use super::attempt::{Outcome, each};
use super::status::Status;

/// The final event of a discarded recipient.
pub const DONE: Status = Status::Discarded;

/// One outcome per recipient: all done at once.
pub fn deliver(recipients: usize) -> Vec<Outcome> {
    each(
        recipients,
        Outcome::Sent("discarded as the tenant's route says".into()),
    )
}
