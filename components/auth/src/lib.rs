//! Reference authenticator.
//!
//! Rules read:
//! - `users.<login>`: argon2 PHC hash of the login's password (checked by
//!   the host; the hash never enters this component);
//! - `api-keys.<key-id>`: hash of an API key, for the Infobip-style login
//!   `App` with the API key as the password. A key is `<key-id>.<secret>`;
//! - `network.allowed`: CIDRs the client address must be in, when any
//!   (IBM's context-based restrictions).
//!
//! Replies: `535 5.7.8` for any unknown login or wrong secret (alike), and
//! `535 5.7.1` for a client address outside the allowed networks.

use std::net::IpAddr;

wit_bindgen::generate!({ path: "../../wit", world: "authenticator" });

use exports::mailwit::policy::authenticate::Guest;
use mailwit::policy::host;
use mailwit::policy::types::{ClientInfo, Mechanism, Reply};

struct Auth;

fn refuse(code: u16, status: &str, text: &str) -> Reply {
    Reply {
        code,
        status: status.into(),
        text: text.into(),
    }
}

impl Guest for Auth {
    fn authenticate(
        client: ClientInfo,
        _tenant: String,
        _mechanism: Mechanism,
        login: String,
        secret: String,
    ) -> Result<String, Reply> {
        let allowed = host::rule_list("network.allowed");
        if !allowed.is_empty() {
            let inside = client
                .ip
                .parse::<IpAddr>()
                .is_ok_and(|ip| allowed.iter().any(|c| in_cidr(ip, c)));
            if !inside {
                host::log(
                    host::Level::Info,
                    "client address outside the allowed networks",
                );
                return Err(refuse(
                    535,
                    "5.7.1",
                    "Client address not allowed for this account",
                ));
            }
        }
        let key = if login == "App" {
            let id = secret.split('.').next().unwrap_or("");
            format!("api-keys.{id}")
        } else {
            format!("users.{login}")
        };
        if host::verify_secret(&key, &secret) {
            Ok(login)
        } else {
            Err(refuse(535, "5.7.8", "Authentication credentials invalid"))
        }
    }
}

/// `ip` inside `cidr` ("10.0.0.0/8", "2001:db8::/32", or a bare address).
fn in_cidr(ip: IpAddr, cidr: &str) -> bool {
    let (net, len) = match cidr.split_once('/') {
        Some((n, l)) => (n, l.parse::<u32>().ok()),
        None => (cidr, None),
    };
    match (ip, net.trim().parse::<IpAddr>()) {
        (IpAddr::V4(a), Ok(IpAddr::V4(n))) => {
            let len = len.unwrap_or(32).min(32);
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), Ok(IpAddr::V6(n))) => {
            let len = len.unwrap_or(128).min(128);
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len)
            };
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

export!(Auth);
