//! Submission throughput: group commit, and the cost of the WebAssembly
//! policy against a native no-op policy on the same host.
//!
//! `cargo bench -p mailwit --bench submit` starts the release `mailwit`
//! binary on a plaintext-AUTH listener, then submits 4 KB messages from 1
//! and from 16 concurrent authenticated sessions (one command at a time,
//! like swaks or smtplib), first with the demo tenant's full reference
//! function set, then with `--unsafe-noop-policy`. It prints two rates: to
//! the last `250` (accepted msg/s), and until every message's final status
//! event is durable (delivered msg/s, from the server's `event="delivery"`
//! log lines; the benchmark tenant discards), so a run cannot look fast by
//! leaving its delivery work behind. Then the server's CPU time per message
//! (user + system, from `/proc/<pid>/stat`, until the last final event), and
//! from the `spool.stats` line at shutdown: how many spool records each
//! fsync carried, the time per commit, and how long the committer waited
//! for work (server start and stop included).
//!
//! Each run's clock starts at the first client's `220` greeting, after the
//! server logged `ready` (every listener accepting, the status API's
//! component compiled), and stops at the last `250`.
//!
//! One run varies by 10-15% from the next on a shared 2-core machine, more
//! than the effect measured, and the machine drifts between runs, so the
//! two policies alternate for `ROUNDS` rounds (`MAILWIT_BENCH_ROUNDS`
//! overrides), in ABBA order (wasm then no-op, then no-op then wasm, ...),
//! so neither always runs on a machine the other just warmed: each round's
//! wasm/no-op ratio compares two adjacent runs, and the median of those
//! ratios is the result. With 5 rounds the median still moved by 10%
//! between invocations; 15 rounds take about 4 minutes.
//!
//! What the no-op baseline (`--unsafe-noop-policy`, `policy::NoopPolicy`)
//! skips, besides the component calls themselves: the login's argon2 check
//! (through the auth gate's pool and its cache: one per session here),
//! tenant resolution and the per-transaction set lookup, the parse of each
//! message by mail-parser (the summary `inspect-message` sees), and the
//! policy metrics (calls, latency histogram). Its "policy loss" is the cost
//! of all of these together, not of WebAssembly alone. Both runs do the
//! same SMTP, spool, status and (discard) delivery work.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Instant;

/// Messages per run: about 2.5 s of submissions either way, so that a
/// short stall of the shared machine weighs little in one run.
fn messages(clients: usize) -> usize {
    if clients == 1 { 4000 } else { 16000 }
}
const ROUNDS: usize = 15;

/// One run's figures.
#[derive(Clone, Copy)]
struct Run {
    accepted: f64,
    delivered: f64,
    cpu_us: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let rounds = std::env::var("MAILWIT_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(ROUNDS);
    for clients in [1, 16] {
        let (mut wasm, mut noop) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            let order = match round % 2 {
                0 => [false, true],
                _ => [true, false],
            };
            for noop_policy in order {
                let r = run(clients, noop_policy);
                match noop_policy {
                    false => wasm.push(r),
                    true => noop.push(r),
                }
            }
        }
        let med = |runs: &[Run], f: fn(&Run) -> f64| median(runs.iter().map(f).collect());
        for (what, f) in [
            ("accepted msg/s", (|r: &Run| r.accepted) as fn(&Run) -> f64),
            ("delivered msg/s", |r: &Run| r.delivered),
        ] {
            let (w, n) = (med(&wasm, f), med(&noop, f));
            let ratios: Vec<f64> = wasm.iter().zip(&noop).map(|(w, n)| f(w) / f(n)).collect();
            let ratio = median(ratios.clone());
            let each: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
            println!(
                "clients={clients:2} {what}: median wasm {w:.0} noop {n:.0}; wasm/noop per round {} median {ratio:.3} (loss {:.1}%)",
                each.join(" "),
                (1.0 - ratio) * 100.0
            );
        }
        let (w, n) = (med(&wasm, |r| r.cpu_us), med(&noop, |r| r.cpu_us));
        println!(
            "clients={clients:2} median server CPU per message: wasm {w:.0} us noop {n:.0} us (policy {:.0} us, {:.1}%)",
            w - n,
            (w - n) / w * 100.0
        );
        println!();
    }
}

/// Accepted and delivered msg/s, and server CPU per message.
fn run(clients: usize, noop: bool) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let config = common::config(&dir.path().join("data"), "");
    let path = dir.path().join("bench.toml");
    std::fs::write(&path, config).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mailwit"));
    cmd.args(["serve", "--config"]).arg(&path);
    if noop {
        cmd.arg("--unsafe-noop-policy");
    }
    let mut child = cmd.stderr(Stdio::piped()).spawn().unwrap();
    let mut log = BufReader::new(child.stderr.take().unwrap());
    // The SMTP listener's port; then wait until the server says it is
    // ready (every listener accepting, the status component compiled).
    let mut port: Option<u16> = None;
    loop {
        let mut line = String::new();
        assert!(log.read_line(&mut line).unwrap() > 0, "server exited");
        let addr = line.split(' ').find_map(|w| w.strip_prefix("addr="));
        if line.contains("listener=bench") {
            port = addr.and_then(|a| a.trim().rsplit(':').next()?.parse().ok());
        } else if line.contains("event=\"ready\"") {
            break;
        }
    }
    let port = port.expect("the bench listener's port");
    let per_client = messages(clients) / clients;
    let total = per_client * clients;
    // Keep draining the log (the server blocks if its stderr pipe fills):
    // note when the last message's final event is logged, and keep the
    // spool statistics line.
    let (delivered_tx, delivered_rx) = std::sync::mpsc::channel();
    let stats_line = std::thread::spawn(move || {
        let mut delivered = 0;
        let mut stats = String::new();
        // Failed policy calls (451s): a run with any is not comparable.
        let mut failures = 0;
        for line in log.lines().map_while(Result::ok) {
            if line.contains("event=\"delivery\"") && line.contains("status=Discarded") {
                delivered += 1;
                if delivered == total {
                    let _ = delivered_tx.send(Instant::now());
                }
            } else if line.contains("spool.stats") {
                stats = line;
            } else if line.contains("policy.failure") {
                failures += 1;
            }
        }
        (stats, failures)
    });
    let body = format!(
        "Subject: bench\r\n\r\n{}",
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\r\n".repeat(64)
    );
    let cpu_before = common::cpu_seconds(child.id());
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let body = body.clone();
            std::thread::spawn(move || common::submit(port, per_client, &body).0)
        })
        .collect();
    let greeted: Vec<Instant> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let start = *greeted.iter().min().unwrap();
    let elapsed = start.elapsed();
    let delivered = delivered_rx
        .recv_timeout(std::time::Duration::from_secs(120))
        .expect("every message delivered")
        - start;
    let cpu_us = (common::cpu_seconds(child.id()) - cpu_before) * 1e6 / total as f64;
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    child.wait().unwrap();
    let (stats, failures) = stats_line.join().unwrap();
    let field = |k: &str| -> f64 {
        stats
            .split(' ')
            .find_map(|w| w.strip_prefix(k))
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN)
    };
    let rate = total as f64 / elapsed.as_secs_f64();
    let delivered_rate = total as f64 / delivered.as_secs_f64();
    println!(
        "clients={clients:2} policy={} messages={total} accepted in {:.2}s ({rate:.0} msg/s) delivered in {:.2}s ({delivered_rate:.0} msg/s) cpu/msg={cpu_us:.0}us spool fsyncs={} records/fsync={:.1} commit/fsync={:.0}us committer idle={:.2}s policy.failures={failures}",
        if noop { "noop" } else { "wasm" },
        elapsed.as_secs_f64(),
        delivered.as_secs_f64(),
        field("syncs="),
        field("records=") / field("syncs="),
        field("commit_ms=") * 1000.0 / field("syncs="),
        field("idle_ms=") / 1000.0,
    );
    Run {
        accepted: rate,
        delivered: delivered_rate,
        cpu_us,
    }
}
