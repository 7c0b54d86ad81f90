//! End-to-end tests: the real `mailwit` binary, real clients, loopback only.
//! All compile into this one test binary to keep link times down.

mod accounts;
mod auth_flood;
mod clients;
mod cluster;
mod delivery;
mod durability;
mod first_day;
mod harness;
mod in_process;
mod limits;
mod memory;
mod policy;
#[path = "../../bench/proc.rs"]
mod proc;
mod protocol;
mod reload;
mod shadow;
mod status_api;
mod tls_rules;
