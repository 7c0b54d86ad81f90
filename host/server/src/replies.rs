//! Every SMTP reply the server adds to the protocol core's own: one place
//! to read what a client may be told, and with which enhanced code. A leaf
//! module: the policy seam, the submission and the driver all use it.

use mailwit_smtp::{Reply, Status};

/// Any failed login, unknown or wrong: the same, so a client cannot tell
/// which logins exist.
pub fn auth_failed() -> Reply {
    Reply::new(535, Status(5, 7, 8), "Authentication credentials invalid")
}

/// The password checks are all busy (RFC 4954's temporary authentication
/// failure).
pub fn auth_busy() -> Reply {
    Reply::new(
        454,
        Status(4, 7, 0),
        "Temporary authentication failure, try again later",
    )
}

/// An address that failed to log in too often lately; the session closes
/// with it.
pub fn auth_backoff() -> Reply {
    Reply::new(
        421,
        Status(4, 7, 0),
        "Too many failed logins from your address, try again later",
    )
}

/// A policy function trapped, hit its deadline or a limit.
pub fn policy_failed() -> Reply {
    Reply::new(
        451,
        Status(4, 3, 0),
        "Temporary policy failure, try again later",
    )
}

/// The message is on disk: the id is the one the status API knows.
pub fn queued(id: &str) -> Reply {
    Reply::new(250, Status(2, 0, 0), format!("Ok: queued as {id}"))
}

/// The spool's file system is (nearly) full.
pub fn spool_full() -> Reply {
    Reply::new(452, Status(4, 3, 1), "Insufficient system storage")
}

/// Writing or syncing the spool failed.
pub fn spool_failed() -> Reply {
    Reply::new(
        451,
        Status(4, 3, 0),
        "Temporary local problem, try again later",
    )
}

/// No room in memory for the message's content.
pub fn memory_full() -> Reply {
    Reply::new(
        452,
        Status(4, 3, 1),
        "Insufficient system storage, try again later",
    )
}

/// The message grew past the SIZE its MAIL FROM declared.
pub fn over_declared_size() -> Reply {
    Reply::new(552, Status(5, 3, 4), "Message exceeds the SIZE it declared")
}

/// The server's connection caps are reached.
pub fn too_many_connections() -> Reply {
    Reply::new(
        421,
        Status(4, 7, 0),
        "Too many connections, try again later",
    )
}

/// The core asked something out of order: it never does, but fail safe.
pub fn internal() -> Reply {
    Reply::new(451, Status(4, 3, 0), "Internal error")
}
