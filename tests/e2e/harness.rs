//! Starts the real `mailwit` binary with a test configuration and talks to
//! it over loopback.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use mailwit::queue::{Spooled, file};

/// The demo tenant's password hash (password "demo-password"), reused for
/// the test tenant so tests need no hashing of their own.
pub const PASSWORD: &str = "demo-password";
pub const LOGIN: &str = "app@acme.example";
pub const SENDER: &str = "news@acme.example";

pub struct Server {
    /// Environment variables for the server process (kept across restarts).
    pub env: Vec<(String, String)>,
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    /// Runs the embedded configuration (no `--config`) in `dir`.
    embedded: bool,
    ports: HashMap<String, u16>,
    pub log: Arc<Mutex<Vec<String>>>,
}

/// Settings a test may override: TOML lines for `[limits]`, `[spool]`,
/// `[runtime]` and `[status_api]`, and extra TOML appended at the end (more tenants).
#[derive(Default, Clone)]
pub struct Options {
    pub limits: &'static str,
    pub spool: &'static str,
    pub runtime: &'static str,
    /// Lines for `[status_api]` (its address is set).
    pub status_api: &'static str,
    /// More lines for `[admin]` (its address and token are set).
    pub admin: &'static str,
    pub delivery: String,
    /// More rules tables for the acme tenant (each starting with
    /// `[tenants.rules.<table>]`).
    pub acme_rules: String,
    pub extra: String,
    /// Environment variables for the server process.
    pub env: Vec<(String, String)>,
}

/// The stock function set, as configuration.
pub const STOCK_FUNCTIONS: &str = r#"functions = [
    { name = "auth", component = "builtin:auth" },
    { name = "sender", component = "builtin:sender" },
    { name = "content", component = "builtin:content" },
    { name = "ib-headers", component = "builtin:ib-headers" },
    { name = "router", component = "builtin:router" },
]"#;

/// The demo tenant's password hash (password "demo-password").
pub fn demo_hash() -> String {
    let config = mailwit::config::Config::load(None).unwrap();
    let users = config.tenants[0].rules["users"].as_table().unwrap();
    users["demo"].as_str().unwrap().to_string()
}

/// Where the build put the components compiled from `components/`.
pub fn component(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("MAILWIT_COMPONENTS_DIR")).join(format!("mailwit_{name}.wasm"))
}

/// The admin token the test configuration sets.
pub const ADMIN_TOKEN: &str = "test-admin-token";

impl Server {
    pub fn start() -> Server {
        Server::start_with(Options::default())
    }

    pub fn start_with(opts: Options) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let config_path = write_config(dir.path(), &opts);
        let mut s = Server {
            env: opts.env.clone(),
            child: None,
            dir,
            config_path,
            embedded: false,
            ports: HashMap::new(),
            log: Arc::new(Mutex::new(Vec::new())),
        };
        s.spawn();
        s
    }

    /// `mailwit serve` exactly as the README runs it: no `--config`, so the
    /// embedded development configuration (its fixed loopback ports, the
    /// demo tenant, `./mailwit-data`), in a directory of its own.
    pub fn start_embedded() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Server {
            env: Vec::new(),
            child: None,
            config_path: dir.path().join("unused.toml"),
            dir,
            embedded: true,
            ports: HashMap::new(),
            log: Arc::new(Mutex::new(Vec::new())),
        };
        s.spawn();
        s
    }

    /// The `mailwit` command, in the server's directory, with its `--config`.
    pub fn command(&self, subcommand: &str) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mailwit"));
        cmd.current_dir(self.dir.path()).arg(subcommand);
        if !self.embedded {
            cmd.arg("--config").arg(&self.config_path);
        }
        cmd
    }

    fn spawn(&mut self) {
        let mut child = self
            .command("serve")
            .env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start mailwit");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let log = self.log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains("event=\"listening\"") {
                    let field = |k: &str| {
                        line.split(' ')
                            .find_map(|w| w.strip_prefix(k))
                            .map(str::to_string)
                            .unwrap_or_default()
                    };
                    let _ = tx.send(Some((field("listener="), field("addr="))));
                }
                if line.contains("event=\"sessions_closed\"") || line.contains("Error:") {
                    let _ = tx.send(None);
                }
                log.lock().unwrap().push(line);
            }
        });
        self.ports.clear();
        // The SMTP listeners (the embedded four, or as many as the test's
        // configuration has), admin, status API.
        let listeners = match self.embedded {
            true => 6,
            false => {
                let config = std::fs::read_to_string(&self.config_path).unwrap();
                config.matches("[[listeners]]").count() + 2
            }
        };
        while self.ports.len() < listeners {
            match rx.recv_timeout(Duration::from_secs(60)) {
                Ok(Some((name, addr))) => {
                    let port = addr.rsplit(':').next().unwrap().parse().unwrap();
                    self.ports.insert(name, port);
                }
                other => panic!("server did not start ({other:?}):\n{}", self.log_text()),
            }
        }
        self.child = Some(child);
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// The server's peak resident memory so far (`VmHWM`), in octets.
    pub fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/<pid>/status");
        kib * 1024
    }

    pub fn port(&self, listener: &str) -> u16 {
        self.ports[listener]
    }

    /// The admin listener's Prometheus text.
    pub fn metrics(&self) -> String {
        http_get(self.port("admin"), "/metrics")
    }

    pub fn data_dir(&self) -> PathBuf {
        if self.embedded {
            return self.dir.path().join("mailwit-data");
        }
        self.dir.path().join("data")
    }

    pub fn cert_path(&self) -> PathBuf {
        self.data_dir().join("tls").join("cert.pem")
    }

    /// Every message accepted into the spool (delivered ones included),
    /// read from disk.
    pub fn spool(&self) -> Vec<Spooled> {
        file::accepted(&self.data_dir().join("spool")).unwrap()
    }

    /// After a kill, cuts the spool back to what a power cut would have
    /// left: only the segments whose directory entries were fsynced, each
    /// only as long as its last fsync (the records of a server started with
    /// `MAILWIT_FAULTS=power-loss`; see `spool/faults.rs`). Returns how many
    /// octets were dropped.
    pub fn power_cut(&self) -> u64 {
        let dir = self.data_dir().join("spool");
        assert!(
            dir.join("directory.synced").exists(),
            "no directory.synced: was the server started with power-loss?"
        );
        file::power_cut(&dir).unwrap()
    }

    /// The messages still waiting for delivery.
    pub fn pending(&self) -> Vec<Spooled> {
        file::pending(&self.data_dir().join("spool")).unwrap()
    }

    /// The spooled message queued under `id`.
    pub fn spooled(&self, id: &str) -> Spooled {
        self.spool()
            .into_iter()
            .find(|m| m.meta.id == id)
            .unwrap_or_else(|| panic!("{id} not in the spool"))
    }

    /// Waits (up to 30 s) until the log holds `needle` at least `n` times.
    pub fn wait_log(&self, needle: &str, n: usize) {
        wait_for(&format!("{n} log line(s) with {needle}"), || {
            self.log_text().matches(needle).count() >= n
        });
    }

    /// The server's log: every line it logged before this call. Its info
    /// lines reach stderr within 10 ms of the first one waiting
    /// (`logwriter::FLUSH_AFTER`), and a thread here reads them from the
    /// pipe; the wait covers both, so a test may assert on what is absent
    /// as well as on what is there.
    pub fn log_text(&self) -> String {
        const LOG_SETTLE: Duration = Duration::from_millis(100);
        std::thread::sleep(LOG_SETTLE);
        self.log.lock().unwrap().join("\n")
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([
                format!("-{sig}"),
                self.child.as_ref().unwrap().id().to_string(),
            ])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// SIGKILL, then wait for the process to be gone.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// Waits for the process to exit on its own; its exit status.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        let start = std::time::Instant::now();
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return st;
            }
            if start.elapsed() > limit {
                let _ = c.kill();
                panic!("server did not exit within {limit:?}:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `mailwit status <id>` against this server: the events, as JSON;
    /// `None` when the server has none for `id` (its 404). Any other
    /// failure of the command panics, so it is never taken for "no events".
    pub fn status(&self, id: &str) -> Option<serde_json::Value> {
        let (ok, out) = self.cli("status", &["--json", id]);
        if !ok {
            assert!(
                out.contains("404 Not Found") && out.contains("no events"),
                "mailwit status {id} failed: {out}"
            );
            return None;
        }
        Some(serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}")))
    }

    /// The statuses of `id` for `recipient`, in order ("received", "sent", ...).
    pub fn statuses(&self, id: &str, recipient: &str) -> Vec<String> {
        let Some(v) = self.status(id) else {
            return Vec::new();
        };
        v["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["recipient"] == recipient)
            .map(|e| e["status"].as_str().unwrap().to_string())
            .collect()
    }

    /// `mailwit <command> <args>` against this server's admin listener
    /// (`tenant`, `status-api`, `reload`, ...).
    pub fn cli(&self, command: &str, args: &[&str]) -> (bool, String) {
        run(self
            .command(command)
            .args(["--admin", &format!("127.0.0.1:{}", self.port("admin"))])
            .args(args))
    }

    /// Runs `mailwit serve` on the same configuration and data in the
    /// foreground, for a start that is expected to fail: its exit status
    /// and stderr.
    pub fn serve_failing(&self) -> (std::process::ExitStatus, String) {
        let out = self
            .command("serve")
            .env("RUST_BACKTRACE", "0")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .output()
            .expect("run mailwit");
        (
            out.status,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Starts the binary again on the same configuration and data.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }
}

/// A counter or gauge of the server's `/metrics`, 0 when absent.
pub fn metric(s: &Server, name_and_labels: &str) -> f64 {
    let needle = format!("{name_and_labels} ");
    s.metrics()
        .lines()
        .find_map(|l| l.strip_prefix(&needle).map(|n| n.parse::<f64>().unwrap()))
        .unwrap_or(0.0)
}

/// Writes the test configuration (`opts` applied) into `dir` as
/// `mailwit.toml`, with `dir/data` as its data directory.
pub fn write_config(dir: &Path, opts: &Options) -> PathBuf {
    let config_path = dir.join("mailwit.toml");
    let config = format!(
        r#"
hostname = "mx.test"
data_dir = "{data}"

[limits]
{limits}

[spool]
{spool}

[runtime]
{runtime}

[delivery]
{delivery}

[admin]
addr = "127.0.0.1:0"
token = "{ADMIN_TOKEN}"
{admin}

[status_api]
addr = "127.0.0.1:0"
{status_api}

[[listeners]]
name = "submission"
addr = "127.0.0.1:0"
tls = "starttls"

[[listeners]]
name = "smtps"
addr = "127.0.0.1:0"
tls = "implicit"

[[listeners]]
name = "plain"
addr = "127.0.0.1:0"
tls = "starttls"
plaintext_auth = true

[[tenants]]
id = "acme"
{STOCK_FUNCTIONS}

[tenants.rules]
revision = "acme-1"

[tenants.rules.users]
"{LOGIN}" = "{hash}"

[tenants.rules.senders]
domains = ["acme.example"]

{acme_rules}

{extra}
"#,
        data = dir.join("data").display(),
        limits = opts.limits,
        spool = opts.spool,
        runtime = opts.runtime,
        // The tests' callback servers are on loopback: allowed, unless a
        // test says otherwise.
        delivery = if opts.delivery.contains("notify_allow") {
            opts.delivery.clone()
        } else {
            format!("notify_allow = [\"loopback\"]\n{}", opts.delivery)
        },
        acme_rules = opts.acme_rules,
        extra = opts.extra,
        status_api = opts.status_api,
        admin = opts.admin,
        hash = demo_hash(),
    );
    std::fs::write(&config_path, config).unwrap();
    config_path
}

impl Drop for Server {
    /// A graceful stop (SIGTERM, a few seconds), so that an instrumented
    /// build writes its coverage profile; then SIGKILL if it is still up.
    fn drop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        let pid = c.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// swaks on the plaintext-AUTH listener with AUTH PLAIN; the transcript.
pub fn swaks_plain(
    s: &Server,
    login: &str,
    password: &str,
    from: &str,
    to: &str,
    extra: &[&str],
) -> String {
    let port = s.port("plain").to_string();
    let (_, out) = run(Command::new("swaks")
        .args(["--server", "127.0.0.1", "--port", &port, "--auth", "PLAIN"])
        .args(["--auth-user", login, "--auth-password", password])
        .args(["--from", from, "--to", to, "--helo", "client.test"])
        .args(extra));
    out
}

/// Submits as the acme login with swaks; the queue id.
pub fn submit(s: &Server, to: &str, extra: &[&str]) -> String {
    let out = swaks_plain(s, LOGIN, PASSWORD, SENDER, to, extra);
    queue_id(&out).unwrap_or_else(|| panic!("not accepted:\n{out}"))
}

/// Submits `n` messages, one to each of `<prefix>0@example.net`,
/// `<prefix>1@example.net`, ...; each recipient with its queue id.
pub fn submit_numbered(s: &Server, prefix: &str, n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| {
            let rcpt = format!("{prefix}{i}@example.net");
            (rcpt.clone(), submit(s, &rcpt, &[]))
        })
        .collect()
}

/// A free loopback port for a server that binds it itself (nats-server,
/// `wasmtime serve`: they take no inherited socket), chosen below the
/// kernel's ephemeral range (32768-60999 on Linux): the other tests'
/// port-0 listeners and outgoing connections draw from that range, and
/// once took a NATS node's port between the check and its bind. Ports
/// 20000-29999 are tried in turn from a start that differs per process
/// (the benchmarks use 30000 and up). Free when checked only: a server
/// that finds it taken must fail loudly (a NATS cluster is then started
/// again on other ports).
pub fn free_high_port() -> u16 {
    use std::sync::LazyLock;
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: LazyLock<AtomicU32> =
        LazyLock::new(|| AtomicU32::new(std::process::id().wrapping_mul(7919) % 10_000));
    loop {
        let port = 20_000 + (NEXT.fetch_add(1, Ordering::Relaxed) % 10_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Polls `check` for up to 30 s; panics with `what` if it never holds.
pub fn wait_for(what: &str, check: impl FnMut() -> bool) {
    assert!(holds_within_30s(check), "timed out waiting for {what}");
}

/// Polls `check` every 100 ms for up to 30 s; whether it held.
pub fn holds_within_30s(mut check: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    while !check() {
        if start.elapsed() >= Duration::from_secs(30) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    true
}

/// Queue id from a `250 2.0.0 Ok: queued as <ID>` reply somewhere in `text`.
pub fn queue_id(text: &str) -> Option<String> {
    let at = text.find("queued as ")? + "queued as ".len();
    Some(
        text[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect(),
    )
}

/// A minimal line-oriented SMTP client over plain TCP, for the tests that
/// must send exact bytes.
pub struct Raw {
    pub stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Raw {
    pub fn connect(port: u16) -> Raw {
        Raw::from_stream(TcpStream::connect(("127.0.0.1", port)).unwrap())
    }

    pub fn from_stream(stream: TcpStream) -> Raw {
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        Raw { stream, reader }
    }

    /// Connects and reads the greeting.
    pub fn open(port: u16) -> Raw {
        let mut r = Raw::connect(port);
        let g = r.reply();
        assert!(g.starts_with("220 "), "greeting: {g}");
        r
    }

    /// Connects to the plaintext-AUTH listener, says EHLO and logs in.
    pub fn logged_in(server: &Server) -> Raw {
        Raw::logged_in_as(server, LOGIN)
    }

    /// Same, as another login (password "demo-password").
    pub fn logged_in_as(server: &Server, login: &str) -> Raw {
        let mut r = Raw::open(server.port("plain"));
        r.cmd("EHLO client.test");
        let auth = base64_plain(login, PASSWORD);
        let rep = r.cmd(&format!("AUTH PLAIN {auth}"));
        assert!(rep.starts_with("235 2.7.0"), "{rep}");
        r
    }

    /// Connects from a loopback address of its own (127.0.0.2, ...).
    pub fn connect_from(ip: std::net::Ipv4Addr, port: u16) -> Raw {
        use std::net::{Ipv4Addr, SocketAddrV4};
        let sock =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        sock.bind(&SocketAddrV4::new(ip, 0).into()).unwrap();
        sock.connect(&SocketAddrV4::new(Ipv4Addr::LOCALHOST, port).into())
            .unwrap();
        Raw::from_stream(sock.into())
    }

    pub fn stream_write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// One whole (possibly multi-line) reply, lines joined with CRLF.
    pub fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            let n = self.reader.read_line(&mut line).unwrap_or(0);
            if n == 0 {
                return all + "<closed>";
            }
            all.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                return all;
            }
        }
    }

    /// Sends a line (CRLF added) and reads the reply.
    /// One whole transaction (the test sender, one recipient, a short
    /// message with this subject) on a logged-in session; the reply to its
    /// end of data.
    pub fn message(&mut self, subject: &str) -> String {
        assert!(
            self.cmd(&format!("MAIL FROM:<{SENDER}>"))
                .starts_with("250")
        );
        assert!(self.cmd("RCPT TO:<sink@example.net>").starts_with("250"));
        assert!(self.cmd("DATA").starts_with("354"));
        self.send(format!("Subject: {subject}\r\n\r\nbody\r\n.\r\n").as_bytes());
        self.reply()
    }

    pub fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes());
        self.reply()
    }

    /// True when the server has closed the connection: end of stream or a
    /// reset. A read that times out (the server kept the connection open
    /// past the read timeout) or that brings data is not a close.
    pub fn closed(&mut self) -> bool {
        use std::io::ErrorKind;
        let mut b = [0u8; 1];
        match self.reader.read(&mut b) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => matches!(
                e.kind(),
                ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe
            ),
        }
    }
}

/// A TLS session (rustls) as the tests' own client sees it.
pub type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// Starts TLS on `tcp` (after the server's `220` to STARTTLS, or at once on
/// the implicit-TLS listener), trusting only the PEM certificates in
/// `roots`, for the name 127.0.0.1.
pub fn tls_client(roots: &Path, tcp: TcpStream) -> BufReader<Tls> {
    use rustls::pki_types::pem::PemObject;
    let mut store = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(roots).unwrap() {
        store.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(store)
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    BufReader::new(rustls::StreamOwned::new(conn, tcp))
}

/// Sends a line (CRLF added) inside TLS and reads the whole reply.
pub fn tls_cmd(tls: &mut BufReader<Tls>, line: &str) -> String {
    tls.get_mut()
        .write_all(format!("{line}\r\n").as_bytes())
        .unwrap();
    tls_reply(tls)
}

/// One whole (possibly multi-line) reply inside TLS.
pub fn tls_reply(tls: &mut BufReader<Tls>) -> String {
    let mut all = String::new();
    loop {
        let mut line = String::new();
        if tls.read_line(&mut line).unwrap_or(0) == 0 {
            return all + "<closed>";
        }
        all.push_str(&line);
        if line.as_bytes().get(3) != Some(&b'-') {
            return all;
        }
    }
}

pub fn base64_plain(login: &str, password: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(format!("\0{login}\0{password}"))
}

pub fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// Runs a command, returning (success, stdout + stderr).
pub fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// Runs a command with `input` on its stdin; its output.
pub fn run_with_stdin(cmd: &mut Command, input: &[u8]) -> std::process::Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

/// A plain HTTP GET on loopback with curl; the body.
pub fn http_get(port: u16, path: &str) -> String {
    let (ok, out) =
        run(Command::new("curl").args(["-sS", &format!("http://127.0.0.1:{port}{path}")]));
    assert!(ok, "{out}");
    out
}

/// Rules for the acme tenant whose messages all take `route`
/// (`sandbox`, `discard`, `relay:<name>`).
/// The active version of `name` in a tenant's `functions` (as `tenant
/// list --json` and `tenant show --json` give them).
pub fn active_version(functions: &serde_json::Value, name: &str) -> u64 {
    functions
        .as_array()
        .and_then(|fs| fs.iter().find(|f| f["name"] == name))
        .and_then(|f| f["version"].as_u64())
        .unwrap_or_else(|| panic!("no function {name} in {functions}"))
}

pub fn route_rules(route: &str) -> String {
    format!("[tenants.rules.route]\ndefault = \"{route}\"\n")
}

pub fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}
