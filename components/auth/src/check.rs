//! The login check itself, shared by this crate's component and the combined
//! `stock` component (which includes this file).

use std::net::IpAddr;

use crate::mailwit::policy::host;
use crate::mailwit::policy::types::{ClientInfo, Reply};

fn refuse(code: u16, status: &str, text: &str) -> Reply {
    Reply {
        code,
        status: status.into(),
        text: text.into(),
    }
}

pub fn authenticate(client: &ClientInfo, login: String, secret: &str) -> Result<String, Reply> {
    let allowed = host::rule_list("network.allowed");
    let deny_unlisted = host::rule("network.default").as_deref() == Some("deny");
    if !allowed.is_empty() || deny_unlisted {
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
    if host::verify_secret(&key, secret) {
        Ok(login)
    } else {
        Err(refuse(535, "5.7.8", "Authentication credentials invalid"))
    }
}

/// `ip` inside `cidr` ("10.0.0.0/8", "2001:db8::/32", or a bare address).
/// A prefix length that is not a number, or longer than the address,
/// matches nothing.
fn in_cidr(ip: IpAddr, cidr: &str) -> bool {
    let (net, len) = match cidr.split_once('/') {
        Some((n, l)) => match l.trim().parse::<u32>() {
            Ok(l) => (n, Some(l)),
            Err(_) => return false,
        },
        None => (cidr, None),
    };
    match (ip, net.trim().parse::<IpAddr>()) {
        (IpAddr::V4(_), Ok(IpAddr::V4(_))) if len.is_some_and(|l| l > 32) => false,
        (IpAddr::V6(_), Ok(IpAddr::V6(_))) if len.is_some_and(|l| l > 128) => false,
        (IpAddr::V4(a), Ok(IpAddr::V4(n))) => {
            let len = len.unwrap_or(32);
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), Ok(IpAddr::V6(n))) => {
            let len = len.unwrap_or(128);
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

/// Run natively: `cargo test -p mailwit-auth --target x86_64-unknown-linux-gnu`
/// in `components/` (the host's `./test` does).
#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn addresses_inside_and_outside_a_range_v4_and_v6() {
        for (addr, cidr, inside) in [
            ("10.1.2.3", "10.0.0.0/8", true),
            ("11.0.0.1", "10.0.0.0/8", false),
            ("192.168.1.7", "192.168.1.0/24", true),
            ("192.168.2.7", "192.168.1.0/24", false),
            ("127.0.0.1", "127.0.0.1", true),
            ("127.0.0.2", "127.0.0.1", false),
            ("127.0.0.2", "127.0.0.1/32", false),
            ("8.8.8.8", "0.0.0.0/0", true),
            ("2001:db8::1", "2001:db8::/32", true),
            ("2001:db9::1", "2001:db8::/32", false),
            ("::1", "::1", true),
            ("::2", "::1/128", false),
            ("fe80::1", "::/0", true),
            // Families never match each other, mapped or not.
            ("10.1.2.3", "::ffff:10.0.0.0/104", false),
            ("::ffff:10.1.2.3", "10.0.0.0/8", false),
            ("2001:db8::1", "10.0.0.0/8", false),
            // Malformed ranges match nothing.
            ("10.1.2.3", "10.1.2.3/abc", false),
            ("10.1.2.3", "10.1.2.3/33", false),
            ("2001:db8::1", "2001:db8::1/129", false),
            ("10.1.2.3", "not-an-address/8", false),
            ("10.1.2.3", "", false),
        ] {
            assert_eq!(in_cidr(ip(addr), cidr), inside, "{addr} in {cidr}");
        }
        // Spaces around the parts are tolerated, as rules files have them.
        assert!(in_cidr(ip("10.1.2.3"), " 10.0.0.0 / 8 "));
    }
}
