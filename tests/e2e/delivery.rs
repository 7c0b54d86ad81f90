//! After "250 queued": relay to a real next hop (aiosmtpd) with DKIM that an
//! independent verifier (dkimpy) accepts, retries, failures with a DSN,
//! sandbox and discard routes, retention, and recovery after SIGKILL.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::harness::*;

/// A loopback port held by the test: bound, so that no other test's
/// listener can take it, and not listening, so that connections to it are
/// refused as by a host that is down. A Python service is handed the
/// socket itself (see [`python_service`]) and listens on it: the port is
/// never free in between.
pub(crate) struct Reserved {
    pub(crate) port: u16,
    socket: socket2::Socket,
}

pub(crate) fn reserve_port() -> Reserved {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket
        .bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    let port = socket.local_addr().unwrap().as_socket().unwrap().port();
    Reserved { port, socket }
}

/// A self-signed certificate for 127.0.0.1 made by openssl, as
/// `<dir>/<name>-cert.pem` and `<dir>/<name>-key.pem`.
fn self_signed(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (cert, key) = (
        dir.join(format!("{name}-cert.pem")),
        dir.join(format!("{name}-key.pem")),
    );
    let (ok, out) = run(Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=127.0.0.1"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert));
    assert!(ok, "{out}");
    (cert, key)
}

/// Starts one of the Python services in tests/e2e/ (`FD OUTDIR [extra]`)
/// on `port`'s socket, inherited by that child alone, and waits for its
/// "ready" line.
fn python_service(script: &str, port: Reserved, dir: &Path, extra: &[&str]) -> Child {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/e2e")
        .join(script);
    let fd = port.socket.as_raw_fd();
    let mut command = Command::new("python3");
    command
        .arg(&script)
        .arg(fd.to_string())
        .arg(dir)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    // SAFETY: between fork and exec, one raw fcntl(2) on a descriptor
    // this process owns (async-signal-safe): the socket stays open across
    // exec in this child only (it is close-on-exec everywhere else).
    unsafe {
        command.pre_exec(move || {
            let fd = std::os::fd::BorrowedFd::borrow_raw(fd);
            rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty())?;
            Ok(())
        });
    }
    let mut child = command.spawn().unwrap();
    // The child has its own copy now.
    drop(port);
    let mut line = String::new();
    use std::io::BufRead;
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready", "{} did not start", script.display());
    child
}

/// The next hop: tests/e2e/upstream.py on a free port.
pub(crate) struct Upstream {
    child: Child,
    pub(crate) port: u16,
    dir: PathBuf,
}

impl Upstream {
    /// On `port` (held since the test began), or on a new one.
    pub(crate) fn start(dir: &Path, port: Option<Reserved>) -> Upstream {
        Upstream::start_with(dir, port, &[])
    }

    fn start_with(dir: &Path, port: Option<Reserved>, extra: &[&str]) -> Upstream {
        let port = port.unwrap_or_else(reserve_port);
        let (dir, n) = (dir.join("upstream"), port.port);
        let child = python_service("upstream.py", port, &dir, extra);
        Upstream {
            child,
            port: n,
            dir,
        }
    }

    /// Messages received so far: (envelope JSON, content).
    pub(crate) fn received(&self) -> Vec<(serde_json::Value, Vec<u8>)> {
        let mut out = Vec::new();
        for n in 1.. {
            let eml = self.dir.join(format!("{n}.eml"));
            if !eml.exists() {
                break;
            }
            let env = std::fs::read_to_string(self.dir.join(format!("{n}.json"))).unwrap();
            out.push((
                serde_json::from_str(&env).unwrap(),
                std::fs::read(eml).unwrap(),
            ));
        }
        out
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The first DSN (null sender) the next hop received, addressed to the
/// test sender.
fn wait_for_dsn(upstream: &Upstream) -> String {
    // aiosmtpd shows the null sender as "<>".
    let dsn = || {
        upstream
            .received()
            .into_iter()
            .find(|(e, _)| e["mail_from"] == "<>")
    };
    wait_for("the DSN", || dsn().is_some());
    let (env, dsn) = dsn().unwrap();
    assert_eq!(env["rcpt_tos"], serde_json::json!([SENDER]));
    String::from_utf8_lossy(&dsn).into_owned()
}

fn relay_rules(upstream_port: u16, key_pem: &str) -> String {
    format!(
        "[tenants.rules.upstreams.default]\nhost = \"127.0.0.1\"\nport = {upstream_port}\ntls = \"none\"\n\n\
         [tenants.rules.dkim]\ndomain = \"acme.example\"\nselector = \"s1\"\nprivate-key = '''\n{key_pem}'''\n\n\
         [tenants.rules.route]\nsandbox-recipient-domains = [\"sandbox.example\"]\n"
    )
}

/// An RSA key made by openssl, and its public half as a DKIM DNS record.
fn dkim_key(dir: &Path) -> (String, String) {
    let key = dir.join("dkim.pem");
    let (ok, out) = run(Command::new("openssl")
        .args(["genrsa", "-out"])
        .arg(&key)
        .arg("2048"));
    assert!(ok, "{out}");
    let out = Command::new("openssl")
        .args(["rsa", "-pubout", "-outform", "DER", "-in"])
        .arg(&key)
        .output()
        .unwrap();
    use base64::Engine;
    let record = format!(
        "v=DKIM1; k=rsa; p={}",
        base64::engine::general_purpose::STANDARD.encode(out.stdout)
    );
    (std::fs::read_to_string(&key).unwrap(), record)
}

/// dkimpy's verdict on `message`, with the DNS lookup answered by `record`.
fn dkim_verifies(dir: &Path, message: &[u8], record: &str) -> bool {
    let path = write_file(dir, "verify.eml", message);
    let script = r#"
import sys, dkim
record = sys.argv[2].encode()
def dns(name, timeout=5):
    return record if name == b"s1._domainkey.acme.example." else None
print("verified" if dkim.verify(open(sys.argv[1], "rb").read(), dnsfunc=dns) else "failed")
"#;
    let (ok, out) = run(Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&path)
        .arg(record));
    assert!(ok, "{out}");
    out.trim() == "verified"
}

#[test]
fn relay_signs_retries_bounces_and_tracks_every_step() {
    let tmp = tempfile::tempdir().unwrap();
    let upstream = Upstream::start(tmp.path(), None);
    let (key, record) = dkim_key(tmp.path());
    let s = Server::start_with(Options {
        delivery: "retry_initial_secs = 1\nretry_max_secs = 2".into(),
        acme_rules: relay_rules(upstream.port, &key),
        ..Options::default()
    });

    // Relayed intact (but for the removed X-IB headers), signed.
    let id = submit(
        &s,
        "ok@example.net",
        &[
            "--header",
            "X-IB-bulk-id: bulk-9",
            "--header",
            "Subject: relayed",
        ],
    );
    wait_for("the relayed message", || upstream.received().len() == 1);
    let (env, content) = upstream.received().remove(0);
    assert_eq!(env["mail_from"], SENDER);
    assert_eq!(env["rcpt_tos"], serde_json::json!(["ok@example.net"]));
    let text = String::from_utf8_lossy(&content);
    assert!(text.starts_with("DKIM-Signature:"), "{text}");
    assert!(
        !text.contains("X-IB-bulk-id"),
        "control header relayed:\n{text}"
    );
    assert!(text.contains("Subject: relayed"));
    assert!(
        dkim_verifies(tmp.path(), &content, &record),
        "DKIM signature does not verify:\n{text}"
    );
    // A changed body no longer verifies: the check can fail.
    let tampered = String::from_utf8_lossy(&content)
        .replace("This is a test mailing", "This is a forged mailing");
    assert!(!dkim_verifies(tmp.path(), tampered.as_bytes(), &record));
    wait_for("sent", || {
        s.statuses(&id, "ok@example.net") == ["received", "relaying", "sent"]
    });
    let events = s.status(&id).unwrap();
    assert!(
        events["events"][2]["detail"]
            .as_str()
            .unwrap()
            .contains("upstream-1"),
        "{events}"
    );

    // 4xx first, 250 later: received -> deferred -> sent.
    let id = submit(&s, "defer@example.net", &[]);
    wait_for("deferred then sent", || {
        s.statuses(&id, "defer@example.net") == ["received", "relaying", "deferred", "sent"]
    });

    // 5xx: failed, and a DSN to the sender through the same machinery.
    let id = submit(&s, "reject@example.net", &[]);
    wait_for("failed and bounced", || {
        s.statuses(&id, "reject@example.net") == ["received", "relaying", "failed", "bounced"]
    });
    let dsn = wait_for_dsn(&upstream);
    assert!(
        dsn.contains("multipart/report") && dsn.contains("delivery-status"),
        "{dsn}"
    );
    assert!(
        dsn.contains("Final-Recipient: rfc822; reject@example.net")
            && dsn.contains("Status: 5.1.1"),
        "{dsn}"
    );
    assert!(dsn.contains(&id), "{dsn}");

    // Sandbox: captured, never sent.
    let before = upstream.received().len();
    let id = submit(&s, "qa@sandbox.example", &[]);
    wait_for("sandboxed", || {
        s.statuses(&id, "qa@sandbox.example") == ["received", "delivered_to_sandbox"]
    });
    assert!(
        s.data_dir()
            .join("sandbox/acme")
            .join(format!("{id}.eml"))
            .exists()
    );
    assert_eq!(upstream.received().len(), before);
    // Every finished message has left the spool.
    wait_for("an empty spool", || s.pending().is_empty());
}

#[test]
fn discard_route_and_retention_purge() {
    let s = Server::start_with(Options {
        delivery: "retention_secs = 2\npurge_interval_secs = 1".into(),
        acme_rules: route_rules("discard"),
        ..Options::default()
    });
    let id = submit(&s, "a@example.net", &[]);
    wait_for("discarded", || {
        s.statuses(&id, "a@example.net") == ["received", "discarded"]
    });
    // Older than the retention: purged.
    wait_for("the purge", || s.status(&id).is_none());
    s.wait_log("status.purged", 1);
}

/// A tenant's sandbox: the oldest messages go to make room under its cap,
/// one message over the cap alone fails, one can be deleted through the
/// API, and all expire with the status retention.
/// (The retention of 12 s leaves the steps before the purge far more time
/// than they take; the purge is waited for, not timed.)
#[test]
fn the_sandbox_keeps_to_its_cap_expires_and_deletes_on_request() {
    let s = Server::start_with(Options {
        delivery: "sandbox_max_bytes = 3000\nretention_secs = 12\npurge_interval_secs = 1".into(),
        acme_rules: route_rules("sandbox"),
        ..Options::default()
    });
    let body = |n: usize| format!("{}\n", "x".repeat(n));
    let sandboxed = || -> Vec<String> {
        let (ok, out) = run(Command::new("curl")
            .args(["-s", "-H", &format!("Authorization: Bearer {ADMIN_TOKEN}")])
            .arg(format!(
                "http://127.0.0.1:{}/v1/tenants/acme/sandbox",
                s.port("admin")
            )));
        assert!(ok, "{out}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_string())
            .collect()
    };
    let ids: Vec<String> = (0..3)
        .map(|i| {
            let id = submit(&s, &format!("s{i}@example.net"), &["--body", &body(1000)]);
            wait_for("kept", || sandboxed().contains(&id));
            id
        })
        .collect();
    // The third did not fit beside the other two: the oldest went.
    assert_eq!(sandboxed(), ids[1..].to_vec());
    s.wait_log("sandbox.evicted", 1);
    // Larger than the whole sandbox: failed, nothing evicted for it.
    let big = submit(&s, "big@example.net", &["--body", &body(4000)]);
    wait_for("the big one failed", || {
        s.statuses(&big, "big@example.net")
            .contains(&"failed".to_string())
    });
    assert_eq!(sandboxed(), ids[1..].to_vec());
    // Deleted through the admin API.
    let (ok, out) = run(Command::new("curl")
        .args([
            "-s",
            "-X",
            "DELETE",
            "-H",
            &format!("Authorization: Bearer {ADMIN_TOKEN}"),
        ])
        .arg(format!(
            "http://127.0.0.1:{}/v1/tenants/acme/sandbox/{}",
            s.port("admin"),
            ids[1]
        )));
    assert!(ok && out.contains("\"deleted\":true"), "{out}");
    assert_eq!(sandboxed(), ids[2..].to_vec());
    // Older than the retention: gone with its status.
    wait_for("the sandbox purged", || sandboxed().is_empty());
    s.wait_log("sandbox.purged", 1);
}

/// The admin `/metrics` shows the delivery queue and the spool: a deferred
/// message waiting for its retry, none waiting for a worker, one message
/// pending in one segment.
#[test]
fn metrics_show_the_delivery_queue() {
    let tmp = tempfile::tempdir().unwrap();
    // Nothing listens on the next hop's port: the message is deferred.
    let down = reserve_port();
    let s = Server::start_with(Options {
        delivery: "retry_initial_secs = 600".into(),
        acme_rules: relay_rules(down.port, &dkim_key(tmp.path()).0),
        ..Options::default()
    });
    assert!(s.metrics().contains("mailwit_delivery_retrying 0\n"));
    let id = submit(&s, "later@example.net", &[]);
    wait_for("a deferral", || {
        s.statuses(&id, "later@example.net")
            .contains(&"deferred".to_string())
    });
    wait_for("the retry counted", || {
        let m = s.metrics();
        m.contains("mailwit_delivery_retrying 1\n")
            && m.contains("mailwit_delivery_waiting 0\n")
            && m.contains("mailwit_spool_pending_messages 1\n")
            && m.contains("mailwit_spool_segments 1\n")
    });
}

/// With `in_memory_queue = 0` no waiting message keeps its content in
/// memory: delivery reads it back from the spool, byte for byte.
#[test]
fn queued_content_is_read_back_from_the_spool() {
    let s = Server::start_with(Options {
        delivery: "in_memory_queue = 0".into(),
        acme_rules: route_rules("sandbox"),
        ..Options::default()
    });
    for (rcpt, id) in &submit_numbered(&s, "q", 3) {
        wait_for("captured", || {
            s.statuses(id, rcpt).last().map(String::as_str) == Some("delivered_to_sandbox")
        });
        let captured =
            std::fs::read(s.data_dir().join("sandbox/acme").join(format!("{id}.eml"))).unwrap();
        assert_eq!(captured, s.spooled(id).content, "{id}");
        assert!(String::from_utf8_lossy(&captured).contains(rcpt.as_str()));
    }
}

#[test]
fn sigkill_during_delivery_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    // The next hop is down at first: every message is deferred.
    let down = reserve_port();
    let port = down.port;
    let mut s = Server::start_with(Options {
        delivery: "retry_initial_secs = 1\nretry_max_secs = 1".into(),
        acme_rules: relay_rules(port, &dkim_key(tmp.path()).0),
        ..Options::default()
    });
    let sent = submit_numbered(&s, "r", 5);
    for (rcpt, id) in &sent {
        wait_for("a deferral", || {
            s.statuses(id, rcpt).contains(&"deferred".to_string())
        });
    }
    s.kill9();
    let upstream = Upstream::start(tmp.path(), Some(down));
    s.restart();
    wait_for("all five delivered", || upstream.received().len() >= 5);
    for (rcpt, id) in &sent {
        wait_for("sent", || {
            s.statuses(id, rcpt).last().map(String::as_str) == Some("sent")
        });
        assert_eq!(
            s.statuses(id, rcpt)
                .iter()
                .filter(|st| *st == "received")
                .count(),
            1,
            "{id}"
        );
    }
    wait_for("an empty spool", || s.pending().is_empty());
}

/// `Done` records get no fsync of their own (see the spool module): a
/// message whose `Done` is lost in a crash is recovered, finds a final event
/// for every recipient, and is not delivered again.
#[test]
fn a_lost_done_record_delivers_nothing_again() {
    let mut s = Server::start_with(Options {
        acme_rules: route_rules("discard"),
        ..Options::default()
    });
    let id = submit(&s, "a@example.net", &[]);
    wait_for("discarded", || {
        s.statuses(&id, "a@example.net") == ["received", "discarded"]
    });
    wait_for("the Done record", || s.pending().is_empty());
    s.kill9();
    // Cut the Done record off the end of its segment, as a power loss
    // before the next fsync would.
    mailwit::queue::file::lose_done_record(&s.data_dir().join("spool"), &id).unwrap();
    assert_eq!(s.pending().len(), 1);
    s.restart();
    wait_for("the recovery", || {
        s.log_text().contains("delivery.recovered")
    });
    wait_for("an empty spool", || s.pending().is_empty());
    assert_eq!(
        s.statuses(&id, "a@example.net"),
        ["received", "discarded"],
        "delivered again"
    );
}

/// The HTTP receiver: tests/e2e/receiver.py.
pub(crate) struct Receiver {
    child: Child,
    dir: PathBuf,
}

impl Receiver {
    pub(crate) fn start(dir: &Path, port: Reserved) -> Receiver {
        Receiver::start_with(dir, port, &[])
    }

    fn start_with(dir: &Path, port: Reserved, extra: &[&str]) -> Receiver {
        let dir = dir.join("receiver");
        let child = python_service("receiver.py", port, &dir, extra);
        Receiver { child, dir }
    }

    /// (content type, body) of every report received.
    pub(crate) fn reports(&self) -> Vec<(String, String)> {
        (1..)
            .map_while(|n| {
                let body = std::fs::read_to_string(self.dir.join(format!("{n}.body"))).ok()?;
                Some((
                    std::fs::read_to_string(self.dir.join(format!("{n}.type"))).unwrap(),
                    body,
                ))
            })
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn delivery_reports_reach_the_callback_server_once_it_is_up() {
    let tmp = tempfile::tempdir().unwrap();
    // The callback server is down at first.
    let down = reserve_port();
    let port = down.port;
    let s = Server::start_with(Options {
        acme_rules: route_rules("sandbox"),
        ..Options::default()
    });
    let url = format!("X-IB-notify-url: http://127.0.0.1:{port}/dlr");
    // JSON, final state only.
    let json_id = submit(
        &s,
        "a@example.net",
        &[
            "--header",
            &url,
            "--header",
            "X-IB-bulk-id: bulk-J",
            "--header",
            "X-IB-callback-data: cb-json",
        ],
    );
    // XML, with the intermediate report.
    let xml_id = submit(
        &s,
        "b@example.net",
        &[
            "--header",
            &url,
            "--header",
            "X-IB-notify-content-type: application/xml",
            "--header",
            "X-IB-intermediate-report: true",
            "--header",
            "X-IB-callback-data: <cb&xml>",
        ],
    );
    wait_for("both delivered", || {
        s.statuses(&json_id, "a@example.net").len() == 2
            && s.statuses(&xml_id, "b@example.net").len() == 2
    });
    // The receiver is down: the reports wait, mail did not.
    wait_for("a deferred report", || {
        s.log_text().contains("report.deferred")
    });
    let receiver = Receiver::start(tmp.path(), down);
    wait_for("three reports", || receiver.reports().len() >= 3);
    let reports = receiver.reports();
    assert_eq!(reports.len(), 3, "{reports:?}");
    let json: Vec<serde_json::Value> = reports
        .iter()
        .filter(|(t, _)| t == "application/json")
        .map(|(_, b)| serde_json::from_str(b).unwrap())
        .collect();
    assert_eq!(json.len(), 1, "{reports:?}");
    let r = &json[0]["results"][0];
    assert_eq!(r["messageId"], json_id.as_str());
    assert_eq!(r["bulkId"], "bulk-J");
    assert_eq!(r["to"], "a@example.net");
    assert_eq!(r["status"], "DELIVERED_TO_SANDBOX");
    assert_eq!(r["callbackData"], "cb-json");
    assert!(r["timestamp"].as_u64().unwrap() > 0);
    let xml: Vec<&String> = reports
        .iter()
        .filter(|(t, _)| t == "application/xml")
        .map(|(_, b)| b)
        .collect();
    assert_eq!(xml.len(), 2, "{reports:?}");
    let all = xml.iter().map(|s| s.as_str()).collect::<String>();
    assert!(
        all.contains("<status>RECEIVED</status>")
            && all.contains("<status>DELIVERED_TO_SANDBOX</status>"),
        "{all}"
    );
    assert!(
        all.contains(&format!("<messageId>{xml_id}</messageId>"))
            && all.contains("<callbackData>&lt;cb&amp;xml&gt;</callbackData>"),
        "{all}"
    );
    // Sent ones are gone from the queue.
    wait_for("an empty report queue", || {
        std::fs::read_dir(s.data_dir().join("reports"))
            .unwrap()
            .count()
            == 0
    });
}

/// The `report_failed` event's detail for (`id`, `rcpt`), once there is one.
fn report_failed(s: &Server, id: &str, rcpt: &str) -> String {
    let mut detail = String::new();
    wait_for("the report_failed event", || {
        let Some(v) = s.status(id) else {
            return false;
        };
        let events = v["events"].as_array().unwrap().clone();
        let last = events.iter().rev().find(|e| e["recipient"] == rcpt);
        match last {
            Some(e) if e["status"] == "report_failed" => {
                detail = e["detail"].as_str().unwrap().to_string();
                true
            }
            _ => false,
        }
    });
    detail
}

#[test]
fn a_notify_url_on_a_private_address_is_refused_and_an_old_report_given_up() {
    // Nobody listens here: every POST fails.
    let down = reserve_port();
    let loopback = format!("X-IB-notify-url: http://127.0.0.1:{}/dlr", down.port);
    // The operator allows no private address.
    let s = Server::start_with(Options {
        acme_rules: route_rules("sandbox"),
        delivery: "notify_allow = []".into(),
        ..Options::default()
    });
    let private = submit(
        &s,
        "p@example.net",
        &["--header", "X-IB-notify-url: http://10.1.2.3:8080/dlr"],
    );
    let local = submit(&s, "l@example.net", &["--header", &loopback]);
    let why = report_failed(&s, &private, "p@example.net");
    assert!(why.contains("a private address (10.1.2.3)"), "{why}");
    let why = report_failed(&s, &local, "l@example.net");
    assert!(why.contains("a loopback address (127.0.0.1)"), "{why}");
    assert!(
        !s.log_text().contains("report.deferred"),
        "a refused URL was tried"
    );
    drop(s);

    // Loopback allowed, the server down: given up after report_max_age_secs,
    // with the event saying so; nothing left in the report queue.
    let s = Server::start_with(Options {
        acme_rules: route_rules("sandbox"),
        delivery: "notify_allow = [\"loopback\"]\nreport_max_age_secs = 2".into(),
        ..Options::default()
    });
    let id = submit(&s, "old@example.net", &["--header", &loopback]);
    let why = report_failed(&s, &id, "old@example.net");
    assert!(why.contains("not taken within 2 s"), "{why}");
    assert!(s.log_text().contains("report.deferred"));
    assert_eq!(
        s.statuses(&id, "old@example.net"),
        ["received", "delivered_to_sandbox", "report_failed"]
    );
    wait_for("an empty report queue", || {
        std::fs::read_dir(s.data_dir().join("reports"))
            .unwrap()
            .count()
            == 0
    });
}

/// A report receiver over HTTPS with a self-signed certificate of its own:
/// (the certificate's path, its port, the receiver).
fn https_receiver(dir: &Path) -> (PathBuf, u16, Receiver) {
    let (cert, key) = self_signed(dir, "rcv");
    let port = reserve_port();
    let n = port.port;
    let receiver =
        Receiver::start_with(dir, port, &[cert.to_str().unwrap(), key.to_str().unwrap()]);
    (cert, n, receiver)
}

#[test]
fn https_delivery_reports_are_verified_against_the_trust_store() {
    let tmp = tempfile::tempdir().unwrap();
    let (cert, port, receiver) = https_receiver(tmp.path());
    // The receiver's certificate is the whole trust store of this server.
    let s = Server::start_with(Options {
        acme_rules: route_rules("sandbox"),
        env: vec![("SSL_CERT_FILE".into(), cert.to_str().unwrap().into())],
        ..Options::default()
    });
    let url = format!("X-IB-notify-url: https://127.0.0.1:{port}/dlr");
    let id = submit(
        &s,
        "a@example.net",
        &["--header", &url, "--header", "X-IB-callback-data: over-tls"],
    );
    wait_for("the report over https", || !receiver.reports().is_empty());
    let (kind, body) = receiver.reports().remove(0);
    assert_eq!(kind, "application/json");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["results"][0]["messageId"], id.as_str());
    assert_eq!(v["results"][0]["callbackData"], "over-tls");
}

#[test]
fn relay_over_starttls_with_auth() {
    relay_over_tls_with_auth("starttls");
}

#[test]
fn relay_over_implicit_tls_with_auth() {
    relay_over_tls_with_auth("implicit");
}

/// Relays through an upstream that requires TLS (`starttls` or `implicit`,
/// the rules' `tls` values) and then AUTH, with a certificate of its own.
fn relay_over_tls_with_auth(tls: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(tmp.path(), "up");
    let mut args = vec![
        cert.to_str().unwrap(),
        key.to_str().unwrap(),
        "relay-user",
        "relay-secret",
    ];
    if tls == "implicit" {
        args.push("implicit");
    }
    let upstream = Upstream::start_with(tmp.path(), None, &args);
    let s = Server::start_with(Options {
        acme_rules: format!(
            "[tenants.rules.upstreams.default]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"{tls}\"\nuser = \"relay-user\"\npassword = \"relay-secret\"\ninsecure = \"true\"\n",
            upstream.port
        ),
        ..Options::default()
    });
    let id = submit(&s, "ok@example.net", &[]);
    wait_for(&format!("sent over {tls} TLS"), || {
        s.statuses(&id, "ok@example.net") == ["received", "relaying", "sent"]
    });
    let (env, _) = upstream.received().remove(0);
    assert_eq!(env["tls"], true);
}

/// Without `insecure`, a next hop whose certificate is not trusted gets
/// nothing: the message is deferred, and the next hop receives nothing.
#[test]
fn relay_to_an_untrusted_certificate_is_deferred() {
    let tmp = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(tmp.path(), "up");
    let args = [
        cert.to_str().unwrap(),
        key.to_str().unwrap(),
        "relay-user",
        "relay-secret",
    ];
    let upstream = Upstream::start_with(tmp.path(), None, &args);
    let s = Server::start_with(Options {
        delivery: "retry_initial_secs = 600".into(),
        acme_rules: format!(
            "[tenants.rules.upstreams.default]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"starttls\"\nuser = \"relay-user\"\npassword = \"relay-secret\"\n",
            upstream.port
        ),
        ..Options::default()
    });
    let id = submit(&s, "ok@example.net", &[]);
    wait_for("a deferral", || {
        s.statuses(&id, "ok@example.net") == ["received", "relaying", "deferred"]
    });
    assert!(
        upstream.received().is_empty(),
        "relayed to an untrusted certificate"
    );
    assert_eq!(s.pending().len(), 1, "the message left the spool");
}

/// An `https://` callback whose certificate the trust store does not hold
/// gets no report: it stays queued (deferred), and the receiver sees none.
#[test]
fn https_delivery_reports_to_an_untrusted_certificate_stay_queued() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, port, receiver) = https_receiver(tmp.path());
    // An empty trust store (a file with no certificate in it).
    let empty = write_file(tmp.path(), "empty.pem", b"");
    let s = Server::start_with(Options {
        acme_rules: route_rules("sandbox"),
        env: vec![("SSL_CERT_FILE".into(), empty.to_str().unwrap().into())],
        ..Options::default()
    });
    let url = format!("X-IB-notify-url: https://127.0.0.1:{port}/dlr");
    submit(&s, "a@example.net", &["--header", &url]);
    s.wait_log("report.deferred", 1);
    assert!(
        receiver.reports().is_empty(),
        "a report crossed an untrusted TLS session"
    );
    let queued = std::fs::read_dir(s.data_dir().join("reports"))
        .unwrap()
        .flatten()
        .count();
    assert!(queued > 0, "the report is not queued");
}

/// A recipient the next hop defers every time fails at `max_age_secs`, and
/// its sender gets a DSN saying so.
#[test]
fn a_message_deferred_past_its_max_age_fails_and_bounces() {
    let tmp = tempfile::tempdir().unwrap();
    let upstream = Upstream::start(tmp.path(), None);
    let (key, _) = dkim_key(tmp.path());
    let s = Server::start_with(Options {
        delivery: "retry_initial_secs = 1\nretry_max_secs = 1\nmax_age_secs = 3".into(),
        acme_rules: relay_rules(upstream.port, &key),
        ..Options::default()
    });
    let rcpt = "always-defer@example.net";
    let id = submit(&s, rcpt, &[]);
    wait_for("expired and bounced", || {
        s.statuses(&id, rcpt)
            .ends_with(&["failed".into(), "bounced".into()])
    });
    let steps = s.statuses(&id, rcpt);
    // Tried more than once, deferred each time, before it expired.
    assert_eq!(steps[..2], ["received", "relaying"]);
    let deferred = steps.iter().filter(|e| *e == "deferred").count();
    assert!(deferred >= 2, "{steps:?}");
    assert_eq!(steps.len(), deferred + 4, "{steps:?}");
    let events = s.status(&id).unwrap();
    let failed = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["status"] == "failed")
        .unwrap_or_else(|| panic!("{events}"))
        .clone();
    let why = failed["detail"].as_str().unwrap();
    assert!(
        why.starts_with("retries exhausted") && why.ends_with("last: 451 4.3.0 Still greylisted"),
        "{why}"
    );
    let dsn = wait_for_dsn(&upstream);
    assert!(
        dsn.contains(&format!("Final-Recipient: rfc822; {rcpt}")) && dsn.contains("Action: failed"),
        "{dsn}"
    );
    assert!(dsn.contains(&id), "{dsn}");
    // Nothing was delivered to the recipient, and the message left the spool.
    assert!(
        upstream
            .received()
            .iter()
            .all(|(e, _)| e["mail_from"] == "<>")
    );
    wait_for("the spool emptied", || s.pending().is_empty());
}

/// A report the callback server could not take yet is kept across a
/// restart, and sent once when it is up.
#[test]
fn a_queued_delivery_report_survives_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let down = reserve_port();
    let port = down.port;
    let mut s = Server::start_with(Options {
        acme_rules: route_rules("sandbox"),
        ..Options::default()
    });
    let url = format!("X-IB-notify-url: http://127.0.0.1:{port}/dlr");
    let id = submit(&s, "a@example.net", &["--header", &url]);
    wait_for("delivered", || s.statuses(&id, "a@example.net").len() == 2);
    wait_for("a deferred report", || {
        s.log_text().contains("report.deferred")
    });
    let queued = s.data_dir().join("reports");
    assert_eq!(std::fs::read_dir(&queued).unwrap().count(), 1);
    s.kill9();
    s.restart();
    let receiver = Receiver::start(tmp.path(), down);
    wait_for("the report", || !receiver.reports().is_empty());
    // Its file goes once the receiver took it: nothing is left to resend.
    wait_for("the report's file removed", || {
        std::fs::read_dir(&queued).unwrap().next().is_none()
    });
    let reports = receiver.reports();
    assert_eq!(reports.len(), 1, "{reports:?}");
    let body: serde_json::Value = serde_json::from_str(&reports[0].1).unwrap();
    assert_eq!(body["results"][0]["messageId"], id.as_str());
    assert_eq!(body["results"][0]["status"], "DELIVERED_TO_SANDBOX");
}

/// Test addresses in the sandbox: `bounce+` and `fail+` fail for good
/// (with their reply codes), and their DSN is kept in the sandbox, not
/// sent; `defer+` is deferred once and then kept; an ordinary recipient of
/// the same message is kept at once. Each gets its events and its delivery
/// report at a real HTTP receiver.
#[test]
fn test_addresses_in_the_sandbox_fail_defer_and_bounce_as_asked() {
    let tmp = tempfile::tempdir().unwrap();
    let reserved = reserve_port();
    let port = reserved.port;
    let receiver = Receiver::start(tmp.path(), reserved);
    let s = Server::start_with(Options {
        acme_rules: route_rules("sandbox"),
        delivery: "retry_initial_secs = 1\nretry_max_secs = 1".into(),
        ..Options::default()
    });
    let (bounce, fail, defer, plain) = (
        "bounce+t1@example.net",
        "Fail+t2@example.net",
        "defer+t3@example.net",
        "ok@example.net",
    );
    let url = format!("X-IB-notify-url: http://127.0.0.1:{port}/dlr");
    let id = submit(
        &s,
        &[bounce, fail, defer, plain].join(","),
        &["--header", &url],
    );
    wait_for("every recipient's final event", || {
        s.statuses(&id, defer)
            .contains(&"delivered_to_sandbox".to_string())
            && s.statuses(&id, bounce).contains(&"bounced".to_string())
            && s.statuses(&id, fail).contains(&"bounced".to_string())
    });
    assert_eq!(s.statuses(&id, plain), ["received", "delivered_to_sandbox"]);
    assert_eq!(
        s.statuses(&id, defer),
        ["received", "deferred", "delivered_to_sandbox"]
    );
    assert_eq!(s.statuses(&id, bounce), ["received", "failed", "bounced"]);
    assert_eq!(s.statuses(&id, fail), ["received", "failed", "bounced"]);
    let detail = |rcpt: &str, status: &str| -> String {
        let v = s.status(&id).unwrap();
        v["events"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["recipient"] == rcpt && e["status"] == status)
            .map(|e| e["detail"].as_str().unwrap().to_string())
            .unwrap()
    };
    assert!(detail(bounce, "failed").starts_with("550 5.1.1 test address bounce+"));
    assert!(detail(fail, "failed").starts_with("554 5.7.1 test address fail+"));
    assert!(detail(defer, "deferred").starts_with("451 4.4.1 test address defer+"));
    // The message is in the sandbox (for ok and defer+), and so is one
    // DSN naming both failed recipients: nothing was relayed.
    let kept: Vec<String> = std::fs::read_dir(s.data_dir().join("sandbox/acme"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    let dsns: Vec<&String> = kept
        .iter()
        .filter(|m| m.contains("multipart/report"))
        .collect();
    assert_eq!(kept.len(), 2, "the message and its DSN");
    assert_eq!(dsns.len(), 1);
    assert!(
        dsns[0].contains("bounce+t1@example.net")
            && dsns[0].contains("Fail+t2@example.net")
            && dsns[0].contains("5.1.1")
            && dsns[0].contains("5.7.1"),
        "{}",
        dsns[0]
    );
    // A final report per recipient reached the receiver (a report may
    // carry several recipients' results).
    let results = || -> Vec<(String, String)> {
        receiver
            .reports()
            .iter()
            .flat_map(|(_, b)| {
                let v: serde_json::Value = serde_json::from_str(b).unwrap();
                v["results"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| {
                        (
                            r["to"].as_str().unwrap().to_string(),
                            r["status"].as_str().unwrap().to_string(),
                        )
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    wait_for("four final results", || results().len() >= 4);
    let statuses = results();
    for (rcpt, want) in [
        (plain, "DELIVERED_TO_SANDBOX"),
        (defer, "DELIVERED_TO_SANDBOX"),
        (bounce, "FAILED"),
        (fail, "FAILED"),
    ] {
        assert!(
            statuses.iter().any(|(to, st)| to == rcpt && st == want),
            "{rcpt} {want}: {statuses:?}"
        );
    }
}
