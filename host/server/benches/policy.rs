//! Per-transaction policy cost of the demo tenant's reference function set.
//!
//! `cargo bench -p mailwit --bench policy` loads the embedded reference
//! components into one runtime (as `mailwit serve` does) and measures, in
//! process and without sockets:
//! - instantiation: a fresh instance of each function, nothing called;
//! - a transaction: check-sender, one check-recipient, inspect-message (two
//!   functions) and route, each on fresh instances (a runtime with
//!   `warm_calls = 1`), then on warm (reused) instances as the server runs
//!   them; and the same decisions from `builtin:stock` (the five in one
//!   component);
//! - the host's parse of a 4 KB message before inspect-message;
//! - authentication (an argon2 verification inside, by design).
//!
//! Calls are async, as on the server: each timing loop runs inside one
//! `block_on` of a current-thread tokio runtime. The heap allocations per
//! warm transaction and per parse are counted too (the host's and
//! wasmtime's; a guest's own are in its linear memory).

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mailwit_runtime::{
    Client, Decision, Limits, Mechanism, MessageArgs, MessageInfo, PolicySet, Rules, Runtime,
    RuntimeConfig, Session, SessionInfo,
};

const N: u32 = 2000;

/// The system allocator, counting.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call to `System` unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's guarantees, forwarded.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's guarantees, forwarded.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's guarantees, forwarded.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

/// Heap allocations (and reallocations) of one run of `f`, after one run
/// to warm it.
async fn allocations(mut f: impl AsyncFnMut()) -> u64 {
    f().await;
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    f().await;
    ALLOCATIONS.load(Ordering::Relaxed) - before
}

fn main() {
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    tokio.block_on(bench());
}

/// The demo tenant's five reference functions.
const FIVE: &[&str] = &["auth", "sender", "content", "ib-headers", "router"];

/// The demo tenant's rules with the embedded components `names` (the
/// demo's five, or `stock`), loaded into `rt`.
fn demo_set(rt: &Runtime, names: &[&str]) -> PolicySet {
    let demo = mailwit::config::Config::load(None).unwrap();
    let rules = Rules::parse(&toml::to_string(&demo.tenants[0].rules).unwrap()).unwrap();
    let functions = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let bytes = mailwit::tenants::builtin(name).unwrap();
            Arc::new(rt.load(name, i as u64 + 1, bytes).unwrap())
        })
        .collect();
    PolicySet {
        tenant: Arc::from("demo"),
        generation: 1,
        functions,
        rules: Arc::new(rules),
        rules_version: 1,
        limits: Limits::default(),
        label: Default::default(),
    }
}

async fn bench() {
    let rt = Runtime::new(RuntimeConfig::default()).unwrap();
    let set = demo_set(&rt, FIVE);
    let stock = demo_set(&rt, &["stock"]);
    let fresh_rt = Runtime::new(RuntimeConfig {
        warm_calls: 1,
        ..RuntimeConfig::default()
    })
    .unwrap();
    let fresh_set = demo_set(&fresh_rt, FIVE);
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
        usage: None,
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

    let t = time(async || fresh_set.instantiate_each(&fresh_rt).await.unwrap()).await;
    println!(
        "instantiate: {:.1} µs per function ({} functions, {:.1} µs for all)",
        t.as_secs_f64() * 1e6 / set.functions.len() as f64,
        set.functions.len(),
        t.as_secs_f64() * 1e6
    );

    // As the server does: the session made once per connection (and
    // converted only for a component that asks), the envelope and summary
    // converted once per message (the summary is consumed: its copy here
    // stands in for the server's parse, in time and allocations).
    // With `decide-message` (`builtin:stock`), inspection and routing are
    // one call, as on the server; `transaction2` makes them two calls.
    let session = Session::new(session);
    let transaction_with = async |rt: &Runtime, set: &PolicySet, one_call: bool| {
        let sender = "demo@mailwit.test";
        assert_eq!(
            set.check_sender(rt, set.limits, &session, sender, Some(4096), false)
                .await
                .unwrap(),
            Decision::Accept(())
        );
        assert_eq!(
            set.check_recipient(rt, set.limits, &session, sender, &rcpts[0])
                .await
                .unwrap(),
            Decision::Accept(())
        );
        let args = MessageArgs::new(sender, &rcpts, message.clone());
        if let Some(f) = set.decides_messages().filter(|_| one_call) {
            let d = set.decide_message(rt, set.limits, &session, f, &args).await;
            assert!(matches!(d, Ok(Decision::Accept(_))), "{d:?}");
            return;
        }
        let Decision::Accept(found) = set
            .inspect_message(rt, set.limits, &session, &args)
            .await
            .unwrap()
        else {
            panic!("refused")
        };
        let Decision::Accept(_route) = set
            .route(rt, set.limits, &session, &args, &found.metadata)
            .await
            .unwrap()
        else {
            panic!("refused")
        };
    };
    let transaction = async |rt: &Runtime, set: &PolicySet| transaction_with(rt, set, true).await;
    let t = time(async || transaction(&fresh_rt, &fresh_set).await).await;
    println!(
        "transaction (sender + 1 recipient + inspect x2 + route, 5 fresh instances): {:.1} µs",
        t.as_secs_f64() * 1e6
    );
    // As `mailwit serve` runs them.
    let t = time(async || transaction(&rt, &set).await).await;
    println!(
        "transaction, warm instances (reused, as on the server): {:.1} µs",
        t.as_secs_f64() * 1e6
    );
    // On the server a decision comes after network and disk work that has
    // evicted the CPU caches: the same warm transaction, with the caches
    // flushed (32 MiB written) before each run, outside the timing.
    let mut junk = vec![0u8; 32 << 20];
    let mut cold = async |set: &PolicySet| {
        let mut cold = Duration::ZERO;
        let runs = N / 10;
        transaction(&rt, set).await;
        for i in 0..runs {
            junk.iter_mut()
                .step_by(64)
                .for_each(|b| *b = b.wrapping_add(i as u8));
            let start = Instant::now();
            transaction(&rt, set).await;
            cold += start.elapsed();
        }
        std::hint::black_box(&junk);
        cold / runs
    };
    println!(
        "transaction, warm instances, CPU caches flushed before each: {:.1} µs",
        cold(&set).await.as_secs_f64() * 1e6
    );
    // The same decisions from builtin:stock, the five in one component:
    // three calls (no recipient check is exported), one instance.
    let t = time(async || transaction(&rt, &stock).await).await;
    println!(
        "transaction, builtin:stock, warm instance (decide-message): {:.1} µs",
        t.as_secs_f64() * 1e6
    );
    println!(
        "transaction, builtin:stock, warm instance, CPU caches flushed before each: {:.1} µs",
        cold(&stock).await.as_secs_f64() * 1e6
    );
    println!(
        "allocations per warm transaction: five functions {}, builtin:stock {}",
        allocations(async || transaction(&rt, &set).await).await,
        allocations(async || transaction(&rt, &stock).await).await,
    );
    let t = time(async || transaction_with(&rt, &stock, false).await).await;
    println!(
        "transaction, builtin:stock, warm instance, inspect-message and route in two calls: {:.1} µs",
        t.as_secs_f64() * 1e6
    );

    // What the host does before inspect-message: parse the message.
    let raw = format!(
        "From: demo@mailwit.test\r\nTo: someone@example.net\r\nSubject: benchmark\r\nX-IB-bulk-id: bulk-1\r\n\r\n{}",
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\r\n".repeat(64)
    );
    let parse = async || {
        std::hint::black_box(mailwit::message::summarize(raw.as_bytes()));
    };
    let t = time(parse).await;
    println!(
        "parse a 4 KB message for inspect-message (mail-parser): {:.1} µs, {} allocations",
        t.as_secs_f64() * 1e6,
        allocations(parse).await
    );
    let login = async |set: &PolicySet| {
        let d = set
            .authenticate(
                &rt,
                set.limits,
                &client,
                Mechanism::Plain,
                "demo",
                "demo-password",
            )
            .await
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
            label: Default::default(),
        };
        let start = Instant::now();
        login(&fresh).await;
        cold += start.elapsed();
    }
    println!(
        "authenticate, first login (argon2id m=19456 t=2 inside): {:.2} ms",
        cold.as_secs_f64() * 1e3 / n as f64
    );
    // The same login again: the verified secret is remembered.
    let t = time(async || login(&set).await).await;
    println!(
        "authenticate, repeated login (auth cache): {:.1} µs",
        t.as_secs_f64() * 1e6
    );
}

/// Mean time of `f` over N runs, after N/10 warm-up runs.
async fn time(mut f: impl AsyncFnMut()) -> Duration {
    for _ in 0..N / 10 {
        f().await;
    }
    let start = Instant::now();
    for _ in 0..N {
        f().await;
    }
    start.elapsed() / N
}
