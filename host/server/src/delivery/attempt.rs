//! What one delivery attempt yields: an outcome per recipient, in order.
//! A leaf of `delivery`: each route's module (`relay`, `sandbox`,
//! `discard`) answers in these terms, and the job's lifecycle turns them
//! into status events, retries and bounces.

/// How one recipient fared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Delivered (by the next hop, with its reply; or locally, saying how).
    Sent(String),
    /// Try again later.
    Deferred(String),
    /// Permanent failure: code, enhanced status, reply.
    Failed(u16, String, String),
}

/// The same outcome for each of `n` recipients: a local route, or a
/// failure before any recipient was tried.
pub fn each(n: usize, o: Outcome) -> Vec<Outcome> {
    vec![o; n]
}
