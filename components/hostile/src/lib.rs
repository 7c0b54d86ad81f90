//! A hostile policy, for tests only. Its check-sender misbehaves as the
//! rule `hostile.mode` says: `loop` (never returns), `memory` (allocates
//! until the memory limit), `panic` (traps), `recursion` (overflows the
//! stack), `oversize` (returns a reply text of `hostile.size` octets,
//! default 4 MiB), `count` (refuses with `450 4.7.1 call <n>`, n counting
//! the calls this instance has served, to show instance reuse), `session`
//! (refuses with `450 4.7.1` and the session `host.current-session` gives:
//! login, listener, TLS, HELO, client address). Any other mode accepts.

wit_bindgen::generate!({ path: "../../wit", world: "sender-check" });

use exports::mailwit::policy::check_sender::Guest;
use mailwit::policy::host;
use mailwit::policy::types::{MailParams, Reply};

struct Hostile;

static CALLS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

#[inline(never)]
fn recurse(n: u64, acc: &mut [u64; 16]) -> u64 {
    let mut local = [n; 16];
    for (a, l) in acc.iter_mut().zip(local.iter_mut()) {
        *l = l.wrapping_add(*a);
    }
    recurse(n + 1, &mut local) + local[0]
}

impl Guest for Hostile {
    fn check_sender(_sender: String, _params: MailParams) -> Result<(), Reply> {
        match host::rule("hostile.mode").as_deref() {
            Some("loop") => {
                let mut i: u64 = 0;
                loop {
                    i = std::hint::black_box(i.wrapping_add(1));
                }
            }
            Some("memory") => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            Some("panic") => panic!("hostile component panics on purpose"),
            Some("recursion") => {
                let mut acc = [0u64; 16];
                let r = recurse(0, &mut acc);
                std::hint::black_box(r);
                Ok(())
            }
            Some("oversize") => {
                let size = host::rule("hostile.size")
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(4 << 20);
                Err(Reply {
                    code: 550,
                    status: "5.7.1".into(),
                    text: "x".repeat(size),
                })
            }
            Some("session") => {
                let text = match host::current_session() {
                    Some(s) => format!(
                        "session login={} tenant={} listener={} tls={} helo={} ip={}",
                        s.login, s.tenant, s.client.listener, s.client.tls, s.helo, s.client.ip
                    ),
                    None => "no session".into(),
                };
                Err(Reply {
                    code: 450,
                    status: "4.7.1".into(),
                    text,
                })
            }
            Some("count") => {
                let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                Err(Reply {
                    code: 450,
                    status: "4.7.1".into(),
                    text: format!("call {n}"),
                })
            }
            _ => Ok(()),
        }
    }
}

export!(Hostile);
