//! The dialogue's corners no client library exercises: HELO, AUTH LOGIN
//! with an initial response, IPv6, the DATA and TLS handshake deadlines,
//! and the HTTP listeners' refusals (admin token, status API body size).

use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use crate::harness::*;

#[test]
fn helo_then_auth_login_with_an_initial_response() {
    let s = Server::start();
    let mut r = Raw::open(s.port("plain"));
    // HELO: one line, the host name, no extensions.
    assert_eq!(r.cmd("HELO client.test"), "250 mx.test\r\n");
    // The user name rides on the command; only the password is asked for.
    let reply = r.cmd(&format!("AUTH LOGIN {}", b64(LOGIN)));
    assert_eq!(reply, "334 UGFzc3dvcmQ6\r\n");
    assert!(r.cmd(&b64(PASSWORD)).starts_with("235 2.7.0"));
    let reply = r.message("helo");
    let id = queue_id(&reply).unwrap_or_else(|| panic!("{reply}"));
    let meta = s.spooled(&id).meta;
    assert_eq!(
        (meta.helo.as_str(), meta.login.as_str()),
        ("client.test", LOGIN)
    );
    // A wrong password after an initial response is refused like any other.
    let mut r = Raw::open(s.port("plain"));
    r.cmd("HELO client.test");
    r.cmd(&format!("AUTH LOGIN {}", b64(LOGIN)));
    assert!(r.cmd(&b64("wrong")).starts_with("535 5.7.8"));
}

#[test]
fn an_ipv6_listener_takes_mail_from_an_ipv6_client() {
    let s = Server::start_with(Options {
        extra: r#"
[[listeners]]
name = "ipv6"
addr = "[::1]:0"
tls = "starttls"
plaintext_auth = true
"#
        .into(),
        ..Options::default()
    });
    let port = s.port("ipv6");
    let mut r = Raw::from_stream(TcpStream::connect(("::1", port)).unwrap());
    assert!(r.reply().starts_with("220 mx.test"));
    r.cmd("EHLO v6.test");
    assert!(
        r.cmd(&format!("AUTH PLAIN {}", base64_plain(LOGIN, PASSWORD)))
            .starts_with("235")
    );
    let reply = r.message("over ipv6");
    let id = queue_id(&reply).unwrap_or_else(|| panic!("{reply}"));
    let meta = s.spooled(&id).meta;
    assert!(meta.peer.starts_with("[::1]:"), "{}", meta.peer);
    assert_eq!(meta.listener, "ipv6");
    // swaks, told to use IPv6, also gets through.
    let (ok, out) = run(Command::new("swaks").args([
        "-6",
        "--server",
        "::1",
        "--port",
        &port.to_string(),
        "--auth",
        "PLAIN",
        "--auth-user",
        LOGIN,
        "--auth-password",
        PASSWORD,
        "--from",
        SENDER,
        "--to",
        "sink@example.net",
    ]));
    assert!(ok && queue_id(&out).is_some(), "{out}");
}

#[test]
fn a_stalled_upload_meets_the_data_deadline() {
    // The command deadline is far off: only the DATA deadline can end this
    // (Raw's own read would give up after 30 s and the test would fail).
    let s = Server::start_with(Options {
        limits: "command_timeout_secs = 300\ndata_timeout_secs = 1\nmin_data_rate = 1000000",
        ..Options::default()
    });
    let mut r = Raw::logged_in(&s);
    r.cmd(&format!("MAIL FROM:<{SENDER}>"));
    r.cmd("RCPT TO:<sink@example.net>");
    assert!(r.cmd("DATA").starts_with("354"));
    r.send(b"Subject: never ends\r\n\r\nhalf a body\r\n");
    let reply = r.reply();
    assert!(reply.starts_with("421 4.4.2"), "{reply}");
    assert!(r.closed());
    assert!(s.spool().is_empty());
}

#[test]
fn a_silent_tls_client_meets_the_handshake_deadline() {
    let s = Server::start_with(Options {
        limits: "command_timeout_secs = 300\ntls_handshake_timeout_secs = 1",
        ..Options::default()
    });
    // Implicit TLS: connected, never says hello.
    let mut r = Raw::connect(s.port("smtps"));
    assert!(r.closed(), "the silent implicit-TLS client was not dropped");
    // STARTTLS: the 220, then nothing.
    let mut r = Raw::open(s.port("submission"));
    r.cmd("EHLO silent.test");
    assert!(r.cmd("STARTTLS").starts_with("220"));
    assert!(r.closed(), "the silent STARTTLS client was not dropped");
}

/// curl against the admin listener: the status code, and the body.
fn admin_curl(s: &Server, auth: Option<&str>, path: &str) -> (u16, String) {
    let url = format!("http://127.0.0.1:{}{path}", s.port("admin"));
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-m", "30", "-w", "\n%{http_code}"]);
    if let Some(a) = auth {
        cmd.args(["-H", &format!("Authorization: {a}")]);
    }
    let (ok, out) = run(cmd.arg(&url));
    assert!(ok, "curl {url}: {out}");
    let (body, code) = out.rsplit_once('\n').unwrap();
    (code.trim().parse().unwrap(), body.to_string())
}

#[test]
fn the_admin_api_refuses_a_missing_or_wrong_token() {
    let s = Server::start();
    for auth in [
        None,
        Some("Bearer wrong-token"),
        Some("Bearer test-admin-toke"),
        Some("Basic dGVzdDp0ZXN0"),
    ] {
        let (code, body) = admin_curl(&s, auth, "/v1/tenants");
        assert_eq!(code, 401, "{auth:?}: {body}");
        assert!(
            body.contains("missing, wrong, expired or revoked bearer token"),
            "{body}"
        );
        assert!(!body.contains("acme"), "{auth:?} leaked: {body}");
    }
    let right = format!("Bearer {ADMIN_TOKEN}");
    let (code, body) = admin_curl(&s, Some(&right), "/v1/tenants");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("acme"), "{body}");
}

#[test]
fn a_status_request_body_over_the_limit_gets_413() {
    let s = Server::start_with(Options {
        status_api: "max_body_bytes = 1024",
        ..Options::default()
    });
    let url = format!("http://127.0.0.1:{}/v1/messages", s.port("status-api"));
    let post = |size: usize| {
        let body = "x".repeat(size);
        let (ok, out) = run(Command::new("curl").args([
            "-s",
            "-m",
            "30",
            "-w",
            "\n%{http_code}",
            "-u",
            &format!("{LOGIN}:{PASSWORD}"),
            "--data-binary",
            &body,
            &url,
        ]));
        assert!(ok, "{out}");
        let (body, code) = out.rsplit_once('\n').unwrap();
        (code.trim().parse::<u16>().unwrap(), body.to_string())
    };
    let (code, body) = post(4096);
    assert_eq!(code, 413, "{body}");
    assert!(body.contains("request body too large"), "{body}");
    // Under the limit the request reaches the status component, which
    // answers it (whatever it makes of a POST, not 413).
    let (code, body) = post(512);
    assert_ne!(code, 413, "{body}");
}

#[test]
fn a_slow_upload_is_not_cut_while_it_keeps_the_rate() {
    // Allowance: 1 s plus 1 s per 1000 octets received. A 1000-octet line
    // every 300 ms keeps well ahead of it; the 1 s alone would cut the
    // upload, which takes 1.2 s.
    let s = Server::start_with(Options {
        limits: "data_timeout_secs = 1\nmin_data_rate = 1000",
        ..Options::default()
    });
    let mut r = Raw::logged_in(&s);
    r.cmd(&format!("MAIL FROM:<{SENDER}>"));
    r.cmd("RCPT TO:<sink@example.net>");
    assert!(r.cmd("DATA").starts_with("354"));
    r.send(b"Subject: slow but honest\r\n\r\n");
    let line = [b'y'; 998];
    for _ in 0..4 {
        r.send(&line);
        r.send(b"\r\n");
        std::thread::sleep(Duration::from_millis(300));
    }
    r.send(b".\r\n");
    let reply = r.reply();
    assert!(reply.starts_with("250 2.0.0"), "{reply}");
}
