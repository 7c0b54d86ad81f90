//! `smtpload`: the SMTP load client of `bench/compare.sh` and
//! `bench/hostile.sh`, the same for mailwit and for Postfix.
//!
//! Many sessions on one tokio runtime, each one command at a time (no
//! pipelining, as swaks, smtplib and most submission clients do), for a
//! fixed time. A session reuses its connection, or opens a new one per
//! message (`--per-connection`: connect, EHLO, STARTTLS, AUTH, one
//! message, QUIT). It prints one JSON line: messages accepted (a `250`
//! after the data), refused (a 4xx/5xx anywhere in the transaction),
//! errors (a broken connection, an unexpected reply), msg/s, the time from
//! sending the data to its `250` (p50, p99, max), the AUTH time of each
//! login (p50, p99, max), and the client's own CPU per accepted message,
//! so a reader can tell whether the client was the bottleneck.
//!
//! `--auth-flood` turns every session into an attacker: connect, EHLO,
//! (STARTTLS,) three `AUTH PLAIN` with a wrong password, close, again; it
//! counts the replies by code. `--sources N` spreads connections over
//! 127.0.0.2 .. 127.0.0.(N+1).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use base64::Engine;
use clap::Parser;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufStream};
use tokio::net::{TcpSocket, TcpStream};

#[derive(Parser, Clone)]
#[command(about = "SMTP load client: many sessions, one command at a time, for a fixed time")]
struct Args {
    /// The server's address.
    #[arg(long)]
    addr: SocketAddr,
    /// Concurrent sessions.
    #[arg(long, default_value_t = 1)]
    sessions: usize,
    /// How long to send, in seconds (each session finishes its message).
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Message size in octets (headers included).
    #[arg(long, default_value_t = 4000)]
    size: usize,
    /// STARTTLS after EHLO.
    #[arg(long)]
    starttls: bool,
    /// The CA (PEM) that signed the server's certificate; without it,
    /// STARTTLS trusts any certificate (the benchmark's own loopback
    /// servers only).
    #[arg(long)]
    cafile: Option<PathBuf>,
    /// `login:password` for AUTH PLAIN (none: no AUTH).
    #[arg(long)]
    auth: Option<String>,
    /// A new connection for every message.
    #[arg(long)]
    per_connection: bool,
    #[arg(long, default_value = "load@bench.example")]
    from: String,
    #[arg(long, default_value = "rcpt@example.net")]
    to: String,
    /// Spread connections over this many source addresses from 127.0.0.2.
    #[arg(long, default_value_t = 0)]
    sources: u8,
    /// Attack instead: wrong AUTH PLAIN three times per connection.
    #[arg(long)]
    auth_flood: bool,
    /// A name echoed in the output.
    #[arg(long, default_value = "")]
    label: String,
}

/// What all sessions found, merged at the end.
#[derive(Default)]
struct Stats {
    accepted: u64,
    refused: u64,
    errors: u64,
    /// Microseconds from sending the data to its 250.
    latencies: Vec<u32>,
    /// Microseconds from sending AUTH to its 235.
    logins: Vec<u32>,
    /// Replies to the flood's AUTH, by code.
    flood: std::collections::BTreeMap<u16, u64>,
    first_error: Option<String>,
}

impl Stats {
    fn error(&mut self, e: &anyhow::Error) {
        self.errors += 1;
        self.first_error.get_or_insert_with(|| format!("{e:#}"));
    }
}

/// A connection, plaintext or TLS, behind one buffered stream.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

struct Conn {
    io: BufStream<Box<dyn Io>>,
    line: String,
}

const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

impl Conn {
    /// The next whole reply's code (its last line's).
    async fn reply(&mut self) -> Result<u16> {
        loop {
            self.line.clear();
            let n = tokio::time::timeout(REPLY_TIMEOUT, self.io.read_line(&mut self.line))
                .await
                .context("no reply in 60 s")??;
            if n == 0 {
                bail!("connection closed");
            }
            let l = self.line.as_bytes();
            if l.len() < 4 {
                bail!("malformed reply {:?}", self.line);
            }
            if l[3] != b'-' {
                return std::str::from_utf8(&l[..3])?
                    .parse()
                    .with_context(|| format!("malformed reply {:?}", self.line));
            }
        }
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<()> {
        self.io.write_all(bytes).await?;
        self.io.flush().await?;
        Ok(())
    }

    async fn cmd(&mut self, line: &str) -> Result<u16> {
        self.send(line.as_bytes()).await?;
        self.send(b"\r\n").await?;
        self.reply().await
    }

    /// `cmd`, failing unless the reply is `want`.
    async fn expect(&mut self, line: &str, want: u16) -> Result<()> {
        match self.cmd(line).await? {
            c if c == want => Ok(()),
            c => bail!("{line:?} answered {c} {}", self.line.trim_end()),
        }
    }
}

/// What sessions share: the arguments, the message, the TLS settings.
struct Plan {
    args: Args,
    message: Vec<u8>,
    tls: tokio_rustls::TlsConnector,
    plain: String,
}

async fn connect(plan: &Plan, n: usize) -> Result<TcpStream> {
    let a = &plan.args;
    let s = match a.sources {
        0 => TcpStream::connect(a.addr).await?,
        k => {
            let sock = TcpSocket::new_v4()?;
            sock.bind(SocketAddr::from((
                Ipv4Addr::new(127, 0, 0, 2 + (n % k as usize) as u8),
                0,
            )))?;
            sock.connect(a.addr).await?
        }
    };
    s.set_nodelay(true)?;
    Ok(s)
}

/// A connection greeted, EHLO'd, with STARTTLS done if asked.
async fn open(plan: &Plan, n: usize) -> Result<Conn> {
    let tcp = connect(plan, n).await?;
    let mut c = Conn {
        io: BufStream::new(Box::new(tcp) as Box<dyn Io>),
        line: String::new(),
    };
    match c.reply().await? {
        220 => {}
        code => bail!("greeting {code} {}", c.line.trim_end()),
    }
    c.expect("EHLO load.example", 250).await?;
    if plan.args.starttls {
        c.expect("STARTTLS", 220).await?;
        // Nothing follows the 220 before the handshake: the buffer is empty.
        let tcp = c.io.into_inner();
        let name = rustls::pki_types::ServerName::IpAddress(plan.args.addr.ip().into());
        let tls = plan.tls.connect(name, tcp).await?;
        c = Conn {
            io: BufStream::new(Box::new(tls) as Box<dyn Io>),
            line: String::new(),
        };
        c.expect("EHLO load.example", 250).await?;
    }
    Ok(c)
}

/// One session of the ordinary load until `until`.
async fn session(
    plan: Arc<Plan>,
    n: usize,
    start: Arc<tokio::sync::Barrier>,
    seconds: Duration,
) -> Stats {
    let mut st = Stats::default();
    let mut conn = None;
    // Reused connections are opened before the clock starts.
    if !plan.args.per_connection {
        match login(&plan, n, &mut st).await {
            Ok(c) => conn = Some(c),
            Err(e) => st.error(&e),
        }
    }
    start.wait().await;
    let until = Instant::now() + seconds;
    while Instant::now() < until {
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match login(&plan, n, &mut st).await {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    st.error(&e);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        match transaction(&plan, c).await {
            Ok(Some(latency)) => {
                st.accepted += 1;
                st.latencies.push(latency);
            }
            Ok(None) => st.refused += 1,
            Err(e) => {
                st.error(&e);
                conn = None;
                continue;
            }
        }
        if plan.args.per_connection {
            let _ = c.cmd("QUIT").await;
            conn = None;
        }
    }
    if let Some(mut c) = conn {
        let _ = c.cmd("QUIT").await;
    }
    st
}

/// A connection opened and, with `--auth`, logged in (timed).
async fn login(plan: &Plan, n: usize, st: &mut Stats) -> Result<Conn> {
    let mut c = open(plan, n).await?;
    if plan.args.auth.is_some() {
        let t = Instant::now();
        c.expect(&plan.plain, 235).await?;
        st.logins.push(t.elapsed().as_micros() as u32);
    }
    Ok(c)
}

/// One message: `Some(latency)` when accepted, `None` when refused (the
/// transaction is reset).
async fn transaction(plan: &Plan, c: &mut Conn) -> Result<Option<u32>> {
    let a = &plan.args;
    for (line, want) in [
        (format!("MAIL FROM:<{}>", a.from), 250),
        (format!("RCPT TO:<{}>", a.to), 250),
        ("DATA".to_string(), 354),
    ] {
        match c.cmd(&line).await? {
            code if code == want => {}
            400..=599 => {
                c.expect("RSET", 250).await?;
                return Ok(None);
            }
            code => bail!("{line:?} answered {code}"),
        }
    }
    let t = Instant::now();
    c.send(&plan.message).await?;
    match c.reply().await? {
        250 => Ok(Some(t.elapsed().as_micros() as u32)),
        400..=599 => Ok(None),
        code => bail!("the data answered {code}"),
    }
}

/// One attacking session until `until`.
async fn flood(
    plan: Arc<Plan>,
    n: usize,
    start: Arc<tokio::sync::Barrier>,
    seconds: Duration,
) -> Stats {
    let mut st = Stats::default();
    start.wait().await;
    let until = Instant::now() + seconds;
    let a = &plan.args;
    let login = a
        .auth
        .as_deref()
        .and_then(|l| l.split_once(':'))
        .map_or("nobody", |(l, _)| l);
    let wrong = base64::engine::general_purpose::STANDARD.encode(format!("\0{login}\0wrong-{n}"));
    while Instant::now() < until {
        let mut c = match open(&plan, n).await {
            Ok(c) => c,
            Err(e) => {
                st.error(&e);
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        for _ in 0..3 {
            match c.cmd(&format!("AUTH PLAIN {wrong}")).await {
                Ok(code) => *st.flood.entry(code).or_default() += 1,
                Err(_) => break,
            }
            if c.line.starts_with("421") {
                break;
            }
        }
    }
    st
}

#[path = "../../proc.rs"]
mod proc;

/// The `q` quantile of sorted microseconds, in ms.
fn quantile(sorted: &[u32], q: f64) -> f64 {
    match sorted.len() {
        0 => 0.0,
        n => sorted[((n as f64 * q) as usize).min(n - 1)] as f64 / 1000.0,
    }
}

/// A message of `size` octets (CRLF lines, a final dot).
fn message(from: &str, to: &str, size: usize) -> Vec<u8> {
    let mut m = format!("From: <{from}>\r\nTo: <{to}>\r\nSubject: load\r\n\r\n").into_bytes();
    let line = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.\r\n";
    while m.len() + line.len() <= size {
        m.extend_from_slice(line);
    }
    m.extend_from_slice(b".\r\n");
    m
}

/// Trusts any certificate: for `--starttls` without `--cafile`, against
/// the benchmark's own loopback servers.
#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn tls(cafile: Option<&PathBuf>) -> Result<tokio_rustls::TlsConnector> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let config = match cafile {
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(path)
                .with_context(|| format!("reading {}", path.display()))?
            {
                roots.add(cert?)?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
            .with_no_client_auth(),
    };
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let plain = match args.auth.as_deref().map(|a| a.split_once(':')) {
        None => String::new(),
        Some(Some((login, password))) => format!(
            "AUTH PLAIN {}",
            base64::engine::general_purpose::STANDARD.encode(format!("\0{login}\0{password}"))
        ),
        Some(None) => bail!("--auth wants login:password"),
    };
    let plan = Arc::new(Plan {
        message: message(&args.from, &args.to, args.size),
        tls: tls(args.cafile.as_ref())?,
        plain,
        args: args.clone(),
    });
    // The clock starts when every session is ready (connected and logged
    // in, for reused connections): each takes its deadline as it passes
    // the barrier, all within microseconds of each other.
    let start = Arc::new(tokio::sync::Barrier::new(args.sessions + 1));
    let seconds = Duration::from_secs_f64(args.seconds);
    let tasks: Vec<_> = (0..args.sessions)
        .map(|n| {
            let (plan, start) = (plan.clone(), start.clone());
            match args.auth_flood {
                true => tokio::spawn(flood(plan, n, start, seconds)),
                false => tokio::spawn(session(plan, n, start, seconds)),
            }
        })
        .collect();
    let cpu0 = proc::cpu_seconds("self");
    start.wait().await;
    let t0 = Instant::now();
    let mut st = Stats::default();
    for t in tasks {
        merge(&mut st, t.await?);
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = proc::cpu_seconds("self") - cpu0;
    st.latencies.sort_unstable();
    st.logins.sort_unstable();
    let out = serde_json::json!({
        "label": args.label,
        "sessions": args.sessions,
        "starttls": args.starttls,
        "per_connection": args.per_connection,
        "seconds": elapsed,
        "accepted": st.accepted,
        "refused": st.refused,
        "errors": st.errors,
        "first_error": st.first_error,
        "rate": st.accepted as f64 / elapsed,
        "p50_ms": quantile(&st.latencies, 0.5),
        "p99_ms": quantile(&st.latencies, 0.99),
        "max_ms": quantile(&st.latencies, 1.0),
        "logins": st.logins.len(),
        "login_p50_ms": quantile(&st.logins, 0.5),
        "login_p99_ms": quantile(&st.logins, 0.99),
        "login_max_ms": quantile(&st.logins, 1.0),
        "flood_replies": st.flood.iter().map(|(c, n)| (c.to_string(), serde_json::Value::from(*n))).collect::<serde_json::Map<_, _>>(),
        "client_cpu_s": cpu,
        "client_cpu_us_per_msg": if st.accepted > 0 { cpu * 1e6 / st.accepted as f64 } else { 0.0 },
    });
    println!("{out}");
    Ok(())
}

fn merge(total: &mut Stats, st: Stats) {
    total.accepted += st.accepted;
    total.refused += st.refused;
    total.errors += st.errors;
    total.latencies.extend(st.latencies);
    total.logins.extend(st.logins);
    for (c, n) in st.flood {
        *total.flood.entry(c).or_default() += n;
    }
    if total.first_error.is_none() {
        total.first_error = st.first_error;
    }
}
