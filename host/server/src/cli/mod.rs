//! The command line's subcommands that talk to a running server (the
//! binary's own modules, not part of the library).

pub mod tenant;
