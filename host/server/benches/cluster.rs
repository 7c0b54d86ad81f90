//! The embedded spool against the cluster, side by side in one run.
//!
//! `cargo bench -p mailwit --bench cluster` (needs `nats-server` 2.11 or
//! later on the PATH: `./test` installs 2.15). Each round runs the same
//! client (64 authenticated sessions, one command at a time, 4 KB messages,
//! the demo tenant's full function set, the discard route) against:
//!
//! - **embedded**: one `mailwit serve`, its file spool and status store;
//! - **cluster**: three `nats-server` processes with JetStream (streams
//!   with three replicas, the default `sync_interval`) and two `mailwit`
//!   hosts, 32 sessions on each (as a TCP load balancer would spread them).
//!
//! and prints, per shape: accepted msg/s (first greeting to last `250`),
//! the time from the end of a message's data to its `250` (p50, p99), the
//! CPU per message of the mailwit processes and of the NATS servers (user
//! and system time from `/proc`, until every message's final event is
//! logged), and the client's own CPU per message. Rounds alternate the two shapes
//! (`MAILWIT_BENCH_ROUNDS`, default 3); the medians and their ratios are
//! the result. Everything shares this machine's cores: the cluster's
//! figures include three NATS servers competing with the hosts.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SESSIONS: usize = 64;
const MESSAGES: usize = 12_800;

struct Figures {
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    mailwit_cpu_us: f64,
    nats_cpu_us: f64,
    client_cpu_us: f64,
}

fn main() {
    let rounds = std::env::var("MAILWIT_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let (mut embedded, mut cluster) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        for shape in if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        } {
            let f = run(shape);
            println!(
                "{:8} {MESSAGES} messages, {SESSIONS} sessions: {:.0} msg/s, p50 {:.1} ms, p99 {:.1} ms, cpu/msg mailwit {:.0} us, nats {:.0} us, client {:.0} us",
                if shape { "cluster" } else { "embedded" },
                f.rate,
                f.p50_ms,
                f.p99_ms,
                f.mailwit_cpu_us,
                f.nats_cpu_us,
                f.client_cpu_us
            );
            match shape {
                false => embedded.push(f),
                true => cluster.push(f),
            }
        }
    }
    let med = |v: &[Figures], f: fn(&Figures) -> f64| {
        let mut x: Vec<f64> = v.iter().map(f).collect();
        x.sort_by(f64::total_cmp);
        x[x.len() / 2]
    };
    println!();
    for (what, f) in [
        ("msg/s", (|f: &Figures| f.rate) as fn(&Figures) -> f64),
        ("p50 ms", |f| f.p50_ms),
        ("p99 ms", |f| f.p99_ms),
        ("mailwit cpu/msg us", |f| f.mailwit_cpu_us),
        ("nats cpu/msg us", |f| f.nats_cpu_us),
        ("server cpu/msg us (mailwit + nats)", |f| {
            f.mailwit_cpu_us + f.nats_cpu_us
        }),
        ("client cpu/msg us", |f| f.client_cpu_us),
    ] {
        let (e, c) = (med(&embedded, f), med(&cluster, f));
        println!(
            "median {what}: embedded {e:.1}, cluster {c:.1}, cluster/embedded {:.2}",
            c / e
        );
    }
}

/// One `mailwit serve` on `config`: the process, its SMTP port, and a
/// thread that drains its log and says when `total` final events were
/// logged across every host sharing `delivered`.
struct Host {
    child: Child,
    port: u16,
    log: std::thread::JoinHandle<()>,
}

fn start_host(
    dir: &Path,
    name: &str,
    extra: &str,
    delivered: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> Host {
    let path = dir.join(format!("{name}.toml"));
    // 64 sessions from one address: above the default per-address cap.
    let extra = format!("[limits]\nmax_connections_per_ip = 200\n{extra}");
    std::fs::write(&path, common::config(&dir.join(name), &extra)).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_mailwit"))
        .args(["serve", "--config"])
        .arg(&path)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut log = BufReader::new(child.stderr.take().unwrap());
    let mut port = None;
    loop {
        let mut line = String::new();
        assert!(log.read_line(&mut line).unwrap() > 0, "{name} exited");
        let addr = line.split(' ').find_map(|w| w.strip_prefix("addr="));
        if line.contains("listener=bench") {
            port = addr.and_then(|a| a.trim().rsplit(':').next()?.parse().ok());
        } else if line.contains("event=\"ready\"") {
            break;
        }
    }
    let log = std::thread::spawn(move || {
        for line in log.lines().map_while(Result::ok) {
            if line.contains("event=\"delivery\"") && line.contains("status=Discarded") {
                delivered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    });
    Host {
        child,
        port: port.expect("the bench listener's port"),
        log,
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Three JetStream servers in a cluster; their processes and the
/// `[cluster]` section naming them.
fn start_nats(dir: &Path) -> (Vec<Child>, String) {
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let mut children = Vec::new();
    for (i, (port, cport)) in ports.iter().enumerate() {
        let routes: Vec<String> = ports
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, (_, c))| format!("nats-route://127.0.0.1:{c}"))
            .collect();
        let store: PathBuf = dir.join(format!("nats-{i}"));
        let conf = dir.join(format!("nats-{i}.conf"));
        std::fs::write(
            &conf,
            format!(
                "server_name: n{i}\nlisten: 127.0.0.1:{port}\njetstream {{ store_dir: \"{}\" }}\n\
                 cluster {{ name: bench, listen: 127.0.0.1:{cport}, routes: [{}] }}\n",
                store.display(),
                routes.join(", ")
            ),
        )
        .unwrap();
        children.push(
            Command::new("nats-server")
                .arg("-c")
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("nats-server on the PATH (./test installs it)"),
        );
    }
    for (port, _) in &ports {
        while std::net::TcpStream::connect(("127.0.0.1", *port)).is_err() {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let servers: Vec<String> = ports
        .iter()
        .map(|(p, _)| format!("\"nats://127.0.0.1:{p}\""))
        .collect();
    let section = format!(
        "[cluster]\nservers = [{}]\nreplicas = 3\n",
        servers.join(", ")
    );
    (children, section)
}

fn run(cluster: bool) -> Figures {
    let dir = tempfile::tempdir().unwrap();
    let delivered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (mut nats, hosts) = if cluster {
        let (nats, section) = start_nats(dir.path());
        let hosts: Vec<Host> = ["a", "b"]
            .iter()
            .map(|n| start_host(dir.path(), n, &section, delivered.clone()))
            .collect();
        (nats, hosts)
    } else {
        (
            Vec::new(),
            vec![start_host(dir.path(), "a", "", delivered.clone())],
        )
    };
    let body = format!(
        "Subject: bench\r\n\r\n{}",
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\r\n".repeat(64)
    );
    let cpu = |pids: &[u32]| pids.iter().map(|p| common::cpu_seconds(*p)).sum::<f64>();
    let host_pids: Vec<u32> = hosts.iter().map(|h| h.child.id()).collect();
    let nats_pids: Vec<u32> = nats.iter().map(|c| c.id()).collect();
    let (host_cpu, nats_cpu, client_cpu) = (
        cpu(&host_pids),
        cpu(&nats_pids),
        common::cpu_seconds(std::process::id()),
    );
    let per = MESSAGES / SESSIONS;
    let ports: Vec<u16> = hosts.iter().map(|h| h.port).collect();
    let threads: Vec<_> = (0..SESSIONS)
        .map(|i| {
            let (port, body) = (ports[i % ports.len()], body.clone());
            std::thread::spawn(move || common::submit(port, per, &body))
        })
        .collect();
    let mut starts = Vec::new();
    let mut latencies = Vec::new();
    for t in threads {
        let (greeted, l) = t.join().unwrap();
        starts.push(greeted);
        latencies.extend(l);
    }
    let elapsed = starts.iter().min().unwrap().elapsed();
    let client_cpu = common::cpu_seconds(std::process::id()) - client_cpu;
    let total = per * SESSIONS;
    let deadline = Instant::now() + Duration::from_secs(120);
    while delivered.load(std::sync::atomic::Ordering::Relaxed) < total {
        assert!(Instant::now() < deadline, "not every message was delivered");
        std::thread::sleep(Duration::from_millis(20));
    }
    let host_cpu = cpu(&host_pids) - host_cpu;
    let nats_cpu = cpu(&nats_pids) - nats_cpu;
    for h in hosts {
        let _ = Command::new("kill")
            .args(["-TERM", &h.child.id().to_string()])
            .status();
        let mut c = h.child;
        let _ = c.wait();
        let _ = h.log.join();
    }
    for c in &mut nats {
        let _ = c.kill();
        let _ = c.wait();
    }
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    let per_msg = |s: f64| s * 1e6 / total as f64;
    Figures {
        rate: total as f64 / elapsed.as_secs_f64(),
        p50_ms: at(0.50).as_secs_f64() * 1000.0,
        p99_ms: at(0.99).as_secs_f64() * 1000.0,
        mailwit_cpu_us: per_msg(host_cpu),
        nats_cpu_us: per_msg(nats_cpu),
        client_cpu_us: per_msg(client_cpu),
    }
}
