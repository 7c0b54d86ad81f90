//! Every limit and framing rule, against the running binary, asserting the
//! reply code and that nothing extra was queued.

use std::net::Ipv4Addr;
use std::time::Duration;

use crate::harness::*;

fn transaction(r: &mut Raw, rcpt: &str) {
    assert!(
        r.cmd(&format!("MAIL FROM:<{SENDER}>"))
            .starts_with("250 2.1.0")
    );
    assert!(r.cmd(&format!("RCPT TO:<{rcpt}>")).starts_with("250 2.1.5"));
    assert!(r.cmd("DATA").starts_with("354"));
}

#[test]
fn overlong_command_line() {
    let s = Server::start();
    let mut r = Raw::logged_in(&s);
    let line = format!("MAIL FROM:<{}@acme.example>", "a".repeat(600));
    assert!(r.cmd(&line).starts_with("500 5.5.2"));
    // A megabyte without a line end is not buffered; the session survives.
    r.send(&vec![b'x'; 1 << 20]);
    assert!(r.cmd("").starts_with("500 5.5.2"));
    assert!(r.cmd("NOOP").starts_with("250 2.0.0"));
    assert!(s.spool().is_empty());
}

#[test]
fn message_over_size_is_refused_after_its_end() {
    let s = Server::start_with(Options {
        limits: "max_message_size = 1000",
        ..Options::default()
    });
    let mut r = Raw::logged_in(&s);
    let ehlo = r.cmd("EHLO client.test");
    assert!(ehlo.contains("250-SIZE 1000\r\n"), "{ehlo}");
    assert!(
        r.cmd(&format!("MAIL FROM:<{SENDER}> SIZE=1001"))
            .starts_with("552 5.3.4")
    );
    transaction(&mut r, "a@example.net");
    r.send(format!("Subject: big\r\n\r\n{}\r\n.\r\n", "x".repeat(2000)).as_bytes());
    assert!(r.reply().starts_with("552 5.3.4"));
    // The session is in step: the next command gets its own reply.
    assert!(r.cmd("NOOP").starts_with("250 2.0.0"));
    assert!(s.spool().is_empty());
}

#[test]
fn too_many_recipients_keeps_the_earlier_ones() {
    let s = Server::start_with(Options {
        limits: "max_recipients = 3",
        ..Options::default()
    });
    let mut r = Raw::logged_in(&s);
    assert!(r.cmd(&format!("MAIL FROM:<{SENDER}>")).starts_with("250"));
    for i in 0..3 {
        assert!(
            r.cmd(&format!("RCPT TO:<r{i}@example.net>"))
                .starts_with("250 2.1.5")
        );
    }
    assert!(r.cmd("RCPT TO:<r3@example.net>").starts_with("452 4.5.3"));
    assert!(r.cmd("DATA").starts_with("354"));
    r.send(b"Subject: x\r\n\r\nbody\r\n.\r\n");
    let id = queue_id(&r.reply()).unwrap();
    assert_eq!(
        s.spooled(&id).meta.recipients,
        vec!["r0@example.net", "r1@example.net", "r2@example.net"]
    );
    assert_eq!(s.spool().len(), 1);
}

#[test]
fn bad_sequences_get_503() {
    let s = Server::start();
    let mut r = Raw::open(s.port("plain"));
    assert!(r.cmd("MAIL FROM:<a@acme.example>").starts_with("503 5.5.1"));
    r.cmd("EHLO client.test");
    // Mail without AUTH is refused on every listener.
    assert!(
        r.cmd(&format!("MAIL FROM:<{SENDER}>"))
            .starts_with("530 5.7.0")
    );
    let mut r = Raw::logged_in(&s);
    assert!(r.cmd("RCPT TO:<a@example.net>").starts_with("503 5.5.1"));
    assert!(r.cmd("DATA").starts_with("503 5.5.1"));
    assert!(r.cmd(&format!("MAIL FROM:<{SENDER}>")).starts_with("250"));
    assert!(
        r.cmd(&format!("MAIL FROM:<{SENDER}>"))
            .starts_with("503 5.5.1")
    );
    assert!(r.cmd("DATA").starts_with("554 5.5.1"));
    assert!(s.spool().is_empty());
}

#[test]
fn auth_before_starttls_on_a_tls_listener() {
    let s = Server::start();
    let mut r = Raw::open(s.port("submission"));
    let ehlo = r.cmd("EHLO client.test");
    assert!(!ehlo.contains("AUTH"), "AUTH advertised before TLS: {ehlo}");
    assert!(
        r.cmd(&format!("AUTH PLAIN {}", base64_plain(LOGIN, PASSWORD)))
            .starts_with("530 5.7.0")
    );
    assert!(
        r.cmd(&format!("MAIL FROM:<{SENDER}>"))
            .starts_with("530 5.7.0")
    );
}

#[test]
fn failed_auth_then_421_after_repeats() {
    let s = Server::start();
    let mut r = Raw::open(s.port("plain"));
    r.cmd("EHLO client.test");
    // Unknown login and wrong password look the same.
    assert!(
        r.cmd(&format!("AUTH PLAIN {}", base64_plain("nobody@x", "x")))
            .starts_with("535 5.7.8")
    );
    assert!(
        r.cmd(&format!("AUTH PLAIN {}", base64_plain(LOGIN, "wrong")))
            .starts_with("535 5.7.8")
    );
    let last = r.cmd(&format!("AUTH PLAIN {}", base64_plain(LOGIN, "wrong")));
    assert!(last.starts_with("535 5.7.8"), "{last}");
    assert!(r.reply().starts_with("421 4.7.0"));
    assert!(r.closed());
}

/// Refused transaction steps in a row are answered at once up to
/// `refusals_before_delay`; each later one is held `refusal_delay_ms`
/// first (and counted, per tenant); an accepted recipient starts the
/// count again.
#[test]
fn refusals_in_a_row_are_held_back() {
    let s = Server::start_with(Options {
        limits: "refusals_before_delay = 3\nrefusal_delay_ms = 400",
        ..Options::default()
    });
    let delayed = || metric(&s, r#"mailwit_smtp_refusals_delayed_total{tenant="acme"}"#);
    let mut r = Raw::logged_in(&s);
    let refused = |r: &mut Raw| {
        let reply = r.cmd("MAIL FROM:<x@elsewhere.example>");
        assert!(reply.starts_with("550 5.7.1"), "{reply}");
    };
    for _ in 0..3 {
        refused(&mut r);
    }
    assert_eq!(delayed(), 0.0);
    let asked = std::time::Instant::now();
    refused(&mut r);
    // A lower bound only: the hold is a sleep, never shorter.
    assert!(asked.elapsed() >= Duration::from_millis(400));
    assert_eq!(delayed(), 1.0);
    assert!(
        r.cmd(&format!("MAIL FROM:<{SENDER}>"))
            .starts_with("250 2.1.0")
    );
    assert!(r.cmd("RCPT TO:<a@example.net>").starts_with("250 2.1.5"));
    assert!(r.cmd("RSET").starts_with("250"));
    for _ in 0..3 {
        refused(&mut r);
    }
    assert_eq!(
        delayed(),
        1.0,
        "an accepted recipient starts the count again"
    );
}

#[test]
fn too_many_unknown_commands() {
    let s = Server::start();
    let mut r = Raw::open(s.port("plain"));
    for _ in 0..9 {
        assert!(r.cmd("XYZZY").starts_with("500 5.5.1"));
    }
    let last = r.cmd("XYZZY");
    assert!(last.starts_with("500 5.5.1"));
    assert!(r.reply().starts_with("421 4.7.0"));
    assert!(r.closed());
}

#[test]
fn nul_and_eight_bit_in_commands() {
    let s = Server::start();
    let mut r = Raw::logged_in(&s);
    r.send(b"NOOP\0\r\n");
    assert!(r.reply().starts_with("500 5.5.2"));
    r.send("MAIL FROM:<jos\u{e9}@acme.example>\r\n".as_bytes());
    assert!(r.reply().starts_with("500 5.5.2"));
    assert!(r.cmd("NOOP").starts_with("250"));
}

#[test]
fn idle_client_times_out() {
    let s = Server::start_with(Options {
        limits: "command_timeout_secs = 1",
        ..Options::default()
    });
    let mut r = Raw::open(s.port("plain"));
    assert!(r.reply().starts_with("421 4.4.2"));
    assert!(r.closed());
}

#[test]
fn trickled_bytes_do_not_reset_the_deadline() {
    let s = Server::start_with(Options {
        limits: "command_timeout_secs = 2",
        ..Options::default()
    });
    let mut r = Raw::open(s.port("plain"));
    let writer = r.stream.try_clone().unwrap();
    // One byte of a never-ending NOOP argument every 200 ms, until the
    // server answers: a server whose deadline each byte reset would never
    // answer, and the read below would time out instead.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let trickling = stop.clone();
    let trickle = std::thread::spawn(move || {
        use std::io::Write;
        let mut w = writer;
        let _ = w.write_all(b"NOOP ");
        while !trickling.load(std::sync::atomic::Ordering::Relaxed) {
            if w.write_all(b"a").is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    let reply = r.reply();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(reply.starts_with("421 4.4.2"), "{reply}");
    trickle.join().unwrap();
}

#[test]
fn per_ip_connection_cap_at_the_banner() {
    let s = Server::start_with(Options {
        limits: "max_connections_per_ip = 2",
        ..Options::default()
    });
    let _a = Raw::open(s.port("plain"));
    let _b = Raw::open(s.port("submission"));
    let mut c = Raw::connect(s.port("plain"));
    assert!(c.reply().starts_with("421 4.7.0"));
    assert!(c.closed());
    // Another address on loopback still gets in.
    let mut d = Raw::connect_from(Ipv4Addr::new(127, 0, 0, 2), s.port("plain"));
    assert!(d.reply().starts_with("220 "));
}

#[test]
fn global_connection_cap_at_the_banner() {
    let s = Server::start_with(Options {
        limits: "max_connections = 2",
        ..Options::default()
    });
    let mut a = Raw::connect_from(Ipv4Addr::new(127, 0, 0, 2), s.port("plain"));
    let mut b = Raw::connect_from(Ipv4Addr::new(127, 0, 0, 3), s.port("plain"));
    assert!(a.reply().starts_with("220") && b.reply().starts_with("220"));
    let mut c = Raw::connect_from(Ipv4Addr::new(127, 0, 0, 4), s.port("plain"));
    assert!(c.reply().starts_with("421 4.7.0"));
    // A slot frees when a session ends.
    a.cmd("QUIT");
    assert!(a.closed());
    let mut ok = false;
    for _ in 0..50 {
        let mut d = Raw::connect_from(Ipv4Addr::new(127, 0, 0, 5), s.port("plain"));
        if d.reply().starts_with("220") {
            ok = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(ok, "slot was not released");
}

#[test]
fn smuggling_sequences_never_yield_a_second_message() {
    let s = Server::start();
    for seq in [
        &b"\n.\n"[..],
        b"\n.\r\n",
        b"\r\n.\n",
        b"\r.\r\n",
        b"\r\n.\r",
        b"\r\n\x00.\r\n",
    ] {
        let mut r = Raw::logged_in(&s);
        let before = s.spool().len();
        transaction(&mut r, "victim@example.net");
        let mut bytes = b"Subject: first\r\n\r\nhello".to_vec();
        bytes.extend_from_slice(seq);
        // The pipelined second transaction a smuggler hopes for.
        bytes.extend_from_slice(
            format!("MAIL FROM:<{SENDER}>\r\nRCPT TO:<other@example.net>\r\nDATA\r\nSubject: smuggled\r\n\r\nsecond\r\n.\r\n")
                .as_bytes(),
        );
        r.send(&bytes);
        let reply = r.reply();
        assert!(reply.starts_with("550 5.6.0"), "{seq:?}: {reply}");
        assert!(
            r.cmd("NOOP").starts_with("250 2.0.0"),
            "{seq:?}: out of step"
        );
        assert_eq!(s.spool().len(), before, "{seq:?} queued something");
    }
}

#[test]
fn disk_below_the_free_space_floor_answers_452() {
    let s = Server::start_with(Options {
        spool: "min_free_bytes = 9223372036854775807",
        ..Options::default()
    });
    let mut r = Raw::logged_in(&s);
    transaction(&mut r, "a@example.net");
    r.send(b"Subject: x\r\n\r\nbody\r\n.\r\n");
    let reply = r.reply();
    assert!(reply.starts_with("452 4.3.1"), "{reply}");
    assert!(s.spool().is_empty());
}

/// The threads that wake for every batch they are handed (the spool's and
/// the status store's committers, the log writer) run as `SCHED_BATCH`, so
/// that their wake-ups do not preempt the workers serving sessions
/// (`host/server/src/sched.rs`); the workers keep the normal policy.
#[test]
fn background_threads_do_not_preempt_the_workers() {
    let s = Server::start();
    // Each thread's name and scheduling policy: the 41st field of its
    // `stat`. A thread that ends while it is read (an idle blocking-pool
    // thread) is left out.
    let threads: Vec<(String, u32)> = std::fs::read_dir(format!("/proc/{}/task", s.pid()))
        .unwrap()
        .filter_map(|task| {
            let dir = task.ok()?.path();
            let name = std::fs::read_to_string(dir.join("comm")).ok()?;
            let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
            let policy = crate::proc::stat_fields(&stat).nth(41 - 3).unwrap();
            Some((name.trim().to_string(), policy.parse().unwrap()))
        })
        .collect();
    let policies = |name: &str| -> Vec<u32> {
        let named = threads.iter().filter(|(n, _)| n == name);
        named.map(|(_, p)| *p).collect()
    };
    const SCHED_OTHER: u32 = 0;
    const SCHED_BATCH: u32 = 3;
    // "status-committer", as the kernel keeps it (15 characters).
    for name in ["spool-committer", "status-committe", "log-writer"] {
        assert_eq!(policies(name), [SCHED_BATCH], "{name} in {threads:?}");
    }
    let workers = policies("tokio-rt-worker");
    assert!(!workers.is_empty(), "no worker in {threads:?}");
    assert!(workers.iter().all(|&p| p == SCHED_OTHER), "{threads:?}");
}
