//! What the benchmarks share: the benchmark tenant's configuration, a
//! process's CPU time, and one SMTP session's submissions.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// The demo tenant's function set, under the login `bench`; `extra` is
/// TOML appended at the end (a `[cluster]` section).
pub fn config(data_dir: &std::path::Path, extra: &str) -> String {
    let demo = mailwit::config::Config::load(None).unwrap();
    let hash = demo.tenants[0].rules["users"]["demo"]
        .as_str()
        .unwrap()
        .to_string();
    format!(
        r#"data_dir = "{}"
[admin]
addr = "127.0.0.1:0"
token = "bench"
[status_api]
addr = "127.0.0.1:0"
[[listeners]]
name = "bench"
addr = "127.0.0.1:0"
tls = "starttls"
plaintext_auth = true
[[tenants]]
id = "bench"
functions = [
    {{ name = "auth", component = "builtin:auth" }},
    {{ name = "sender", component = "builtin:sender" }},
    {{ name = "content", component = "builtin:content" }},
    {{ name = "ib-headers", component = "builtin:ib-headers" }},
    {{ name = "router", component = "builtin:router" }},
]
[tenants.rules.users]
bench = "{hash}"
[tenants.rules.senders]
domains = ["bench.example"]
[tenants.rules.route]
default = "discard"
{extra}
"#,
        data_dir.display()
    )
}

#[path = "../../../../bench/proc.rs"]
mod proc;
pub use proc::cpu_seconds;

/// One session's `n` messages; returns when its greeting arrived, and
/// each message's time from the end of its data to its `250`.
pub fn submit(port: u16, n: usize, body: &str) -> (Instant, Vec<Duration>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_nodelay(true).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let expect = |r: &mut BufReader<TcpStream>, code: &str| loop {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        assert!(line.starts_with(code), "expected {code}, got {line}");
        if line.as_bytes()[3] == b' ' {
            break;
        }
    };
    expect(&mut r, "220");
    let greeted = Instant::now();
    s.write_all(b"EHLO bench\r\n").unwrap();
    expect(&mut r, "250");
    s.write_all(b"AUTH PLAIN AGJlbmNoAGRlbW8tcGFzc3dvcmQ=\r\n")
        .unwrap();
    expect(&mut r, "235");
    let mut latencies = Vec::with_capacity(n);
    for _ in 0..n {
        for (cmd, code) in [
            ("MAIL FROM:<b@bench.example>\r\n", "250"),
            ("RCPT TO:<x@example.net>\r\n", "250"),
            ("DATA\r\n", "354"),
        ] {
            s.write_all(cmd.as_bytes()).unwrap();
            expect(&mut r, code);
        }
        s.write_all(body.as_bytes()).unwrap();
        let end = Instant::now();
        s.write_all(b".\r\n").unwrap();
        expect(&mut r, "250");
        latencies.push(end.elapsed());
    }
    s.write_all(b"QUIT\r\n").unwrap();
    (greeted, latencies)
}
