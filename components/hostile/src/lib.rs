//! A hostile policy, for tests only. Its check-sender misbehaves as the
//! rule `hostile.mode` says: `loop` (never returns), `memory` (allocates
//! until the memory limit), `panic` (traps), `recursion` (overflows the
//! stack), `oversize` (returns a reply text of `hostile.size` octets,
//! default 4 MiB), `count` (refuses with `450 4.7.1 call <n>`, n counting
//! the calls this instance has served, to show instance reuse), `session`
//! (refuses with `450 4.7.1` and the session `host.current-session` gives:
//! login, listener, TLS, HELO, client address), `busy` (spins for
//! `hostile.busy-ms` of wall time, then accepts), `alloc` (holds
//! `hostile.alloc-mib` MiB, then accepts), `reply` (refuses with
//! `hostile.code`, `hostile.status` and `hostile.text` as given, valid or
//! not), `stderr` (writes a line to stderr, a blocking WASI call, then
//! refuses with `450 4.7.1 wrote to stderr`). Any other mode accepts.
//!
//! Its check-recipient answers only in mode `recipient`: it refuses with
//! `450 4.7.1 <recipient> from <sender>` (the arguments as the host passed
//! them); in every other mode it accepts, so the modes above stay about
//! check-sender.

// The sender-check world plus check-recipient: the contract's two
// per-address decisions in one test component.
wit_bindgen::generate!({
    inline: "package mailwit:hostile; world hostile { include mailwit:policy/sender-check@0.2.0; export mailwit:policy/check-recipient@0.2.0; }",
    path: "../../wit",
    world: "mailwit:hostile/hostile",
    generate_all,
});

use exports::mailwit::policy::check_recipient::Guest as RecipientGuest;
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
            Some("busy") => {
                let ms = host::rule("hostile.busy-ms")
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(10);
                let start = std::time::Instant::now();
                while start.elapsed() < std::time::Duration::from_millis(ms) {
                    std::hint::black_box(&start);
                }
                Ok(())
            }
            Some("alloc") => {
                let mib: usize = host::rule("hostile.alloc-mib")
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(1);
                let held = vec![1u8; mib << 20];
                std::hint::black_box(&held);
                Ok(())
            }
            Some("reply") => Err(Reply {
                code: host::rule("hostile.code")
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(550),
                status: host::rule("hostile.status").unwrap_or_default(),
                text: host::rule("hostile.text").unwrap_or_default(),
            }),
            Some("stderr") => {
                eprintln!("hostile component writes to stderr");
                Err(Reply {
                    code: 450,
                    status: "4.7.1".into(),
                    text: "wrote to stderr".into(),
                })
            }
            _ => Ok(()),
        }
    }
}

impl RecipientGuest for Hostile {
    fn check_recipient(sender: String, recipient: String) -> Result<(), Reply> {
        match host::rule("hostile.mode").as_deref() {
            Some("recipient") => Err(Reply {
                code: 450,
                status: "4.7.1".into(),
                text: format!("{recipient} from {sender}"),
            }),
            _ => Ok(()),
        }
    }
}

export!(Hostile);
