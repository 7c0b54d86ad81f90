//! Message content in flight has a memory ceiling: large messages wait for
//! room, or are refused with `452 4.3.1` at their end; nothing accepted is
//! lost, nothing refused or aborted is ever delivered.

use std::io::Write;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::harness::*;

const SESSIONS: usize = 200;
const BODY: usize = 19_000_000;
const CEILING: u64 = 256 << 20;

/// Lines of 81 octets in a message of `BODY` octets.
const LINES: usize = BODY / 81;

/// Lines `from..from + count` of message `n` (81 octets each, CRLF), made
/// in pieces so that the test never holds a whole message per session.
fn lines(n: usize, from: usize, count: usize) -> Vec<u8> {
    let pad = "x".repeat(65);
    let mut out = Vec::with_capacity(count * 81);
    for line in from..from + count {
        out.extend_from_slice(format!("{n:04} {line:08} {pad}\r\n").as_bytes());
    }
    out
}

fn header(n: usize) -> Vec<u8> {
    format!("Subject: large {n}\r\n\r\n").into_bytes()
}

/// Sends message `n`'s content in pieces, without the final dot.
fn send_body(r: &mut Raw, n: usize, total: usize) {
    r.stream.write_all(&header(n)).unwrap();
    for from in (0..total).step_by(800) {
        r.stream
            .write_all(&lines(n, from, 800.min(total - from)))
            .unwrap();
    }
}

/// Message `n` whole, as it must be spooled (for checking only).
fn whole(n: usize) -> Vec<u8> {
    let mut all = header(n);
    all.extend_from_slice(&lines(n, 0, LINES));
    all
}

/// Moves 3.8 GB through the server on purpose, which would starve the
/// other tests' 200 ms policy deadlines: `./test` runs it after them, alone.
#[test]
#[ignore = "loads the machine: ./test runs it alone, after the others"]
fn large_messages_in_flight_stay_under_the_memory_ceiling() {
    let s = Server::start_with(Options {
        limits: "max_connections_per_ip = 20",
        // The sessions' MAIL and RCPT run while the others stream their
        // bodies flat out on every core: the policy's 250 ms deadline,
        // wall time, would be a lottery, and is not what this test is about.
        runtime: "deadline_ms = 5000",
        acme_rules: route_rules("sandbox"),
        extra: format!(
            "[memory]\ncontent_bytes = {CEILING}\ncontent_bytes_per_tenant = {CEILING}\ncontent_wait_secs = 5\n"
        ),
        ..Options::default()
    });
    let port = s.port("plain");
    // One login first: the 200 that follow find it in the auth cache
    // (200 cold logins at once would mostly get 454 from the password
    // checks' bounded queue, which is not what this test is about).
    assert!(Raw::logged_in(&s).cmd("QUIT").starts_with("221"));
    let before = s.peak_rss();
    let sent = Arc::new(AtomicUsize::new(0));
    let replies = Arc::new(Mutex::new(Vec::new()));
    let auth = base64_plain(LOGIN, PASSWORD);
    let sessions: Vec<_> = (0..SESSIONS)
        .map(|n| {
            let (sent, replies, auth) = (sent.clone(), replies.clone(), auth.clone());
            std::thread::spawn(move || {
                let ip = Ipv4Addr::new(127, 0, 0, 2 + (n % 20) as u8);
                let mut r = Raw::connect_from(ip, port);
                let banner = r.reply();
                assert!(banner.starts_with("220"), "session {n}: {banner}");
                r.cmd("EHLO big.test");
                let rep = r.cmd(&format!("AUTH PLAIN {auth}"));
                assert!(rep.starts_with("235"), "session {n}: {rep}");
                for (cmd, code) in [
                    (format!("MAIL FROM:<{SENDER}>"), "250"),
                    ("RCPT TO:<big@example.net>".into(), "250"),
                    ("DATA".into(), "354"),
                ] {
                    let rep = r.cmd(&cmd);
                    assert!(rep.starts_with(code), "session {n}: {cmd}: {rep}");
                }
                send_body(&mut r, n, LINES);
                // Hold the final dot until every session has sent its body.
                sent.fetch_add(1, Ordering::SeqCst);
                // Not forever: a session that failed before its body (its
                // thread's panic is raised at the join) never counts.
                let until = std::time::Instant::now() + Duration::from_secs(300);
                while sent.load(Ordering::SeqCst) < SESSIONS && std::time::Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(20));
                }
                let rep = r.cmd(".");
                replies.lock().unwrap().push((n, rep));
            })
        })
        .collect();
    for t in sessions {
        t.join().unwrap();
    }
    let replies = replies.lock().unwrap().clone();
    let accepted: Vec<(usize, String)> = replies
        .iter()
        .filter_map(|(n, rep)| queue_id(rep).map(|id| (*n, id)))
        .collect();
    for (_, rep) in &replies {
        assert!(
            rep.starts_with("250 2.0.0") || rep.starts_with("452 4.3.1"),
            "{rep}"
        );
    }
    assert!(!accepted.is_empty(), "nothing was accepted");
    let peak = s.peak_rss();
    eprintln!(
        "memory ceiling: {} accepted, {} refused, peak {} MiB, {} MiB before the sessions",
        accepted.len(),
        replies.len() - accepted.len(),
        peak >> 20,
        before >> 20
    );
    // What the 200 sessions added stays under the content ceiling plus
    // what the budget leaves free by design: the first `budget::SMALL`
    // octets of each message (12.5 MiB here). Growth measured 230-261 MiB
    // (2026-12-07): the content ceiling alone failed it once in seven runs.
    let free = (SESSIONS * mailwit::budget::SMALL) as u64;
    assert!(
        peak - before < CEILING + free,
        "peak resident memory {} MiB, {} MiB before",
        peak >> 20,
        before >> 20
    );

    // Every accepted message is intact in the spool and in the sandbox.
    let spool = s.spool();
    for (n, id) in &accepted {
        let m = spool.iter().find(|m| &m.meta.id == id).expect("spooled");
        assert!(
            m.content == whole(*n),
            "message {n} ({id}) not intact in the spool"
        );
        let path = s.data_dir().join("sandbox/acme").join(format!("{id}.eml"));
        wait_for("the sandboxed copy", || path.exists());
        assert!(
            std::fs::read(&path).unwrap() == whole(*n),
            "{id} not delivered intact"
        );
    }
}

/// A large message cut off mid-DATA, and one refused by the policy after
/// all of it was received, leave nothing to deliver, also after recovery.
#[test]
fn aborted_and_refused_large_messages_are_never_delivered() {
    let mut s = Server::start_with(Options {
        acme_rules: format!(
            "{}[tenants.rules.message]\nmax-size = 200000\n",
            route_rules("sandbox")
        ),
        ..Options::default()
    });
    // Cut off after 1 MB of content.
    let mut r = Raw::logged_in(&s);
    assert!(r.cmd(&format!("MAIL FROM:<{SENDER}>")).starts_with("250"));
    assert!(r.cmd("RCPT TO:<cut@example.net>").starts_with("250"));
    assert!(r.cmd("DATA").starts_with("354"));
    send_body(&mut r, 1, 1_000_000 / 81);
    drop(r);
    // Refused by the content function (over its 200 KB cap) at its end.
    let mut r = Raw::logged_in(&s);
    assert!(r.cmd(&format!("MAIL FROM:<{SENDER}>")).starts_with("250"));
    assert!(r.cmd("RCPT TO:<refused@example.net>").starts_with("250"));
    assert!(r.cmd("DATA").starts_with("354"));
    send_body(&mut r, 2, 300_000 / 81);
    let rep = r.cmd(".");
    assert!(rep.starts_with("552 5.3.4"), "{rep}");
    // The room was given back: a small message goes through.
    let id = submit(&s, "small@example.net", &[]);
    wait_for("the small message delivered", || {
        s.statuses(&id, "small@example.net")
            .contains(&"delivered_to_sandbox".to_string())
    });
    let spool = s.spool();
    assert_eq!(spool.len(), 1, "only the small message was spooled");
    assert_eq!(spool[0].meta.id, id);
    // Its Done record is written without an fsync, with the spool's next
    // batch or within 200 ms: wait for it before the kill.
    wait_for("the small message's Done record", || s.pending().is_empty());
    s.restart();
    assert!(
        s.pending().is_empty(),
        "something is pending after recovery"
    );
    let sandbox: Vec<_> = std::fs::read_dir(s.data_dir().join("sandbox/acme"))
        .unwrap()
        .collect();
    assert_eq!(sandbox.len(), 1);
    let metrics = s.metrics();
    assert!(
        metrics.contains("mailwit_content_reserved_bytes 0"),
        "{metrics}"
    );
}
