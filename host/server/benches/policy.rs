//! Per-transaction policy cost of the demo tenant's reference function set.
//!
//! `cargo bench -p mailwit --bench policy` loads the embedded reference
//! components into one runtime (as `mailwit serve` does) and measures, in
//! process and without sockets:
//! - instantiation: a fresh instance of each function, nothing called;
//! - a transaction: check-sender, one check-recipient, inspect-message (two
//!   functions) and route, each on fresh instances, then on warm (reused)
//!   instances as the server's async workers run them;
//! - the host's parse of a 4 KB message before inspect-message;
//! - authentication (an argon2 verification inside, by design).

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mailwit::tenants::BUILTINS;
use mailwit_runtime::{
    Client, Decision, Limits, Mechanism, MessageArgs, MessageInfo, PolicySet, Rules, Runtime,
    RuntimeConfig, Session, SessionInfo,
};

const N: u32 = 2000;

fn main() {
    let rt = Runtime::new(RuntimeConfig::default()).unwrap();
    let demo = mailwit::config::Config::load(None).unwrap();
    let rules = Rules::parse(&toml::to_string(&demo.tenants[0].rules).unwrap()).unwrap();
    let functions = ["auth", "sender", "content", "ib-headers", "router"]
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let bytes = BUILTINS.iter().find(|(n, _)| n == name).unwrap().1;
            Arc::new(rt.load(name, i as u64 + 1, bytes).unwrap())
        })
        .collect();
    let set = PolicySet {
        tenant: Arc::from("demo"),
        generation: 1,
        functions,
        rules: Arc::new(rules),
        rules_version: 1,
        limits: Limits::default(),
        scheduling: Default::default(),
        label: Default::default(),
    };
    let client = Client {
        ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        port: 40000,
        listener: "submission".into(),
        tls: true,
        server_name: None,
    };
    let session = SessionInfo {
        client: client.clone(),
        tenant: "demo".into(),
        login: "demo".into(),
        helo: "bench.example".into(),
    };
    let message = MessageInfo {
        headers: vec![
            ("From".into(), "demo@mailwit.test".into()),
            ("To".into(), "someone@example.net".into()),
            ("Subject".into(), "benchmark".into()),
            ("X-IB-bulk-id".into(), "bulk-1".into()),
            ("X-IB-notify-url".into(), "https://example.net/dlr".into()),
        ],
        to: vec!["someone@example.net".into()],
        cc: vec![],
        size: 4096,
        content_type: "text/plain".into(),
        attachments: vec![],
    };
    let rcpts = vec!["someone@example.net".to_string()];

    let t = time(|| set.instantiate_each(&rt).unwrap());
    println!(
        "instantiate: {:.1} µs per function ({} functions, {:.1} µs for all)",
        t.as_secs_f64() * 1e6 / set.functions.len() as f64,
        set.functions.len(),
        t.as_secs_f64() * 1e6
    );

    // As the server does: the session taken once per transaction (and
    // converted only for a component that asks), the envelope and summary
    // converted once per message (the summary is consumed).
    let transaction = || {
        let sender = "demo@mailwit.test";
        let session = Session::new(session.clone());
        assert_eq!(
            set.check_sender(&rt, set.limits, &session, sender, Some(4096), false)
                .unwrap(),
            Decision::Accept(())
        );
        assert_eq!(
            set.check_recipient(&rt, set.limits, &session, sender, &rcpts[0])
                .unwrap(),
            Decision::Accept(())
        );
        let args = MessageArgs::new(sender, &rcpts, message.clone());
        let Decision::Accept(found) = set
            .inspect_message(&rt, set.limits, &session, &args)
            .unwrap()
        else {
            panic!("refused")
        };
        let Decision::Accept(_route) = set
            .route(&rt, set.limits, &session, &args, &found.metadata)
            .unwrap()
        else {
            panic!("refused")
        };
    };
    let t = time(transaction);
    println!(
        "transaction (sender + 1 recipient + inspect x2 + route, 5 fresh instances): {:.1} µs",
        t.as_secs_f64() * 1e6
    );
    // As `mailwit serve` runs them on its async workers.
    let t = time(|| mailwit_runtime::with_warm(transaction));
    println!(
        "transaction, warm instances (reused, as on the server's async workers): {:.1} µs",
        t.as_secs_f64() * 1e6
    );
    // On the server a decision comes after network and disk work that has
    // evicted the CPU caches: the same warm transaction, with the caches
    // flushed (32 MiB written) before each run, outside the timing.
    let mut junk = vec![0u8; 32 << 20];
    let mut cold = Duration::ZERO;
    let runs = N / 10;
    mailwit_runtime::with_warm(|| {
        transaction();
        for i in 0..runs {
            junk.iter_mut()
                .step_by(64)
                .for_each(|b| *b = b.wrapping_add(i as u8));
            let start = Instant::now();
            transaction();
            cold += start.elapsed();
        }
    });
    std::hint::black_box(&junk);
    println!(
        "transaction, warm instances, CPU caches flushed before each: {:.1} µs",
        (cold / runs).as_secs_f64() * 1e6
    );

    // What the host does before inspect-message: parse the message.
    let raw = format!(
        "From: demo@mailwit.test\r\nTo: someone@example.net\r\nSubject: benchmark\r\nX-IB-bulk-id: bulk-1\r\n\r\n{}",
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\r\n".repeat(64)
    );
    let t = time(|| {
        std::hint::black_box(mailwit::message::summarize(raw.as_bytes()));
    });
    println!(
        "parse a 4 KB message for inspect-message (mail-parser): {:.1} µs",
        t.as_secs_f64() * 1e6
    );
    let login = |set: &PolicySet| {
        let d = set
            .authenticate(
                &rt,
                set.limits,
                &client,
                Mechanism::Plain,
                "demo",
                "demo-password",
            )
            .unwrap();
        assert_eq!(d, Decision::Accept("demo".into()));
    };
    // Each login against freshly parsed rules: argon2 every time.
    let n = 20;
    let mut cold = Duration::ZERO;
    for _ in 0..n {
        let fresh = PolicySet {
            tenant: set.tenant.clone(),
            generation: set.generation,
            functions: set.functions.clone(),
            rules: Arc::new(Rules::parse(set.rules.source()).unwrap()),
            rules_version: set.rules_version,
            limits: set.limits,
            scheduling: Default::default(),
            label: Default::default(),
        };
        let start = Instant::now();
        login(&fresh);
        cold += start.elapsed();
    }
    println!(
        "authenticate, first login (argon2id m=19456 t=2 inside): {:.2} ms",
        cold.as_secs_f64() * 1e3 / n as f64
    );
    // The same login again: the verified secret is remembered.
    let t = time(|| login(&set));
    println!(
        "authenticate, repeated login (auth cache): {:.1} µs",
        t.as_secs_f64() * 1e6
    );
}

/// Mean time of `f` over N runs, after N/10 warm-up runs.
fn time(mut f: impl FnMut()) -> Duration {
    for _ in 0..N / 10 {
        f();
    }
    let start = Instant::now();
    for _ in 0..N {
        f();
    }
    start.elapsed() / N
}
