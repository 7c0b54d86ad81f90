//! Reloading without a restart (`SIGHUP`, `mailwit reload`): new
//! connections get the new certificate and `[limits]`, open sessions finish
//! on what they started with, a broken certificate keeps the old one; a
//! tenant's own certificate for its server name; systemd's readiness
//! protocol.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::*;

/// A self-signed certificate for `name` and loopback: (cert PEM, key PEM).
fn certificate(name: &str) -> (String, String) {
    let rcgen::CertifiedKey { cert, key_pair } =
        rcgen::generate_simple_self_signed(vec![name.to_string(), "127.0.0.1".to_string()])
            .unwrap();
    (cert.pem(), key_pair.serialize_pem())
}

/// The SHA-256 fingerprint of a PEM certificate, as openssl prints it.
fn fingerprint_of_pem(pem: &str) -> String {
    let out = run_with_stdin(
        Command::new("openssl").args(["x509", "-noout", "-fingerprint", "-sha256"]),
        pem.as_bytes(),
    );
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("Fingerprint="), "{text}");
    text.trim().to_string()
}

/// The certificate a new STARTTLS connection is shown, by `openssl
/// s_client` (a TLS client this project did not write), as a fingerprint.
fn presented(port: u16, server_name: Option<&str>) -> String {
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .args(["-starttls", "smtp"]);
    match server_name {
        Some(n) => cmd.args(["-servername", n]),
        None => cmd.arg("-noservername"),
    };
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let at = text
        .find("-----BEGIN CERTIFICATE-----")
        .unwrap_or_else(|| panic!("no certificate shown:\n{text}"));
    let end = text[at..].find("-----END CERTIFICATE-----").unwrap() + at + 25;
    fingerprint_of_pem(&text[at..end])
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[test]
fn sighup_swaps_the_certificate_and_limits_for_new_sessions_only() {
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let (old_cert, old_key) = certificate("mx.test");
    write(&cert_path, &old_cert);
    write(&key_path, &old_key);
    let s = Server::start_with(Options {
        limits: "max_recipients = 5",
        extra: format!(
            "[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            cert_path.display(),
            key_path.display()
        ),
        ..Options::default()
    });
    let port = s.port("submission");
    assert_eq!(presented(port, None), fingerprint_of_pem(&old_cert));

    // A session in the middle of a transaction, over TLS with the old
    // certificate (the client trusts only that one).
    let old_roots = dir.path().join("old-roots.pem");
    write(&old_roots, &old_cert);
    let mut r = Raw::open(port);
    r.cmd("EHLO client.test");
    assert!(r.cmd("STARTTLS").starts_with("220 2.0.0"));
    let mut open = tls_client(&old_roots, r.stream.try_clone().unwrap());
    assert!(tls_cmd(&mut open, "EHLO client.test").starts_with("250"));
    let auth = tls_cmd(
        &mut open,
        &format!("AUTH PLAIN {}", base64_plain(LOGIN, PASSWORD)),
    );
    assert!(auth.starts_with("235 2.7.0"), "{auth}");
    assert!(tls_cmd(&mut open, &format!("MAIL FROM:<{SENDER}>")).starts_with("250"));
    for i in 0..2 {
        let rep = tls_cmd(&mut open, &format!("RCPT TO:<r{i}@example.net>"));
        assert!(rep.starts_with("250"), "{rep}");
    }

    // New certificate files and a lower recipient limit, then SIGHUP.
    let (new_cert, new_key) = certificate("mx.test");
    write(&cert_path, &new_cert);
    write(&key_path, &new_key);
    let config = std::fs::read_to_string(&s.config_path).unwrap();
    write(
        &s.config_path,
        &config.replace("max_recipients = 5", "max_recipients = 1"),
    );
    s.signal("HUP");
    s.wait_log("event=\"reload\"", 1);
    assert!(
        s.log_text().contains("certificate=true"),
        "{}",
        s.log_text()
    );

    // A new connection is shown the new certificate...
    assert_eq!(presented(port, None), fingerprint_of_pem(&new_cert));
    // ...and has the new limit: its second recipient is refused.
    let mut fresh = Raw::logged_in(&s);
    assert!(
        fresh
            .cmd(&format!("MAIL FROM:<{SENDER}>"))
            .starts_with("250")
    );
    assert!(fresh.cmd("RCPT TO:<a@example.net>").starts_with("250"));
    let rep = fresh.cmd("RCPT TO:<b@example.net>");
    assert!(rep.starts_with("452 4.5.3"), "{rep}");

    // The open session was not touched: same TLS session, same limits (a
    // third recipient is still accepted), and its message is queued.
    let rep = tls_cmd(&mut open, "RCPT TO:<r2@example.net>");
    assert!(rep.starts_with("250"), "{rep}");
    assert!(tls_cmd(&mut open, "DATA").starts_with("354"));
    let rep = tls_cmd(&mut open, "Subject: across a reload\r\n\r\nstill here\r\n.");
    let id = queue_id(&rep).unwrap_or_else(|| panic!("not queued: {rep}"));
    assert_eq!(s.spooled(&id).meta.recipients.len(), 3);
    let shown = open.get_ref().conn.peer_certificates().unwrap()[0].clone();
    assert_eq!(
        fingerprint_of_pem(&pem_of(&shown)),
        fingerprint_of_pem(&old_cert)
    );
    assert!(tls_cmd(&mut open, "QUIT").starts_with("221"));

    // A certificate that does not parse is refused, by `mailwit reload`
    // too, and the one in force stays.
    write(
        &cert_path,
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    );
    let (ok, out) = s.cli("reload", &[]);
    assert!(!ok, "a broken certificate was accepted: {out}");
    assert!(out.contains("certificate kept"), "{out}");
    s.signal("HUP");
    s.wait_log("event=\"reload.refused\"", 2);
    assert_eq!(presented(port, None), fingerprint_of_pem(&new_cert));
    // A key that belongs to another certificate, likewise.
    write(&cert_path, &old_cert);
    write(&key_path, &new_key);
    let (ok, out) = s.cli("reload", &[]);
    assert!(!ok && out.contains("do not belong together"), "{out}");
    assert_eq!(presented(port, None), fingerprint_of_pem(&new_cert));
    // Mended files are taken by the next reload.
    write(&key_path, &old_key);
    let (ok, out) = s.cli("reload", &[]);
    assert!(ok, "{out}");
    assert_eq!(presented(port, None), fingerprint_of_pem(&old_cert));
}

fn pem_of(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        lines.join("\n")
    )
}

/// A tenant's rules name its own certificate for its own host name: a
/// client asking for that name (SNI) is shown it, any other client the
/// server's.
#[test]
fn a_tenant_certificate_answers_its_own_server_name() {
    let (cert, key) = certificate("smtp.acme.example");
    let s = Server::start_with(Options {
        acme_rules: format!(
            "[tenants.rules.tls]\nserver-names = [\"smtp.acme.example\"]\ncertificate = '''\n{cert}'''\nprivate-key = '''\n{key}'''\n"
        ),
        ..Options::default()
    });
    let port = s.port("submission");
    let server_cert = std::fs::read_to_string(s.cert_path()).unwrap();
    assert_eq!(
        presented(port, Some("smtp.acme.example")),
        fingerprint_of_pem(&cert)
    );
    assert_eq!(
        presented(port, Some("SMTP.Acme.Example")),
        fingerprint_of_pem(&cert)
    );
    assert_eq!(presented(port, None), fingerprint_of_pem(&server_cert));
    assert_eq!(
        presented(port, Some("mx.test")),
        fingerprint_of_pem(&server_cert)
    );

    // Rules whose key does not go with the certificate are refused at
    // deploy, and the running rules stay.
    let (other_cert, _) = certificate("smtp.acme.example");
    let rules = write_file(
        s.dir.path(),
        "bad-rules.toml",
        format!(
            "[users]\n\"{LOGIN}\" = \"{}\"\n[tls]\nserver-names = [\"smtp.acme.example\"]\ncertificate = '''\n{other_cert}'''\nprivate-key = '''\n{key}'''\n",
            demo_hash()
        )
        .as_bytes(),
    );
    let (ok, out) = s.cli("tenant", &["rules", "acme", rules.to_str().unwrap()]);
    assert!(!ok && out.contains("tls.certificate"), "{out}");
    assert_eq!(
        presented(port, Some("smtp.acme.example")),
        fingerprint_of_pem(&cert)
    );
    // Another tenant cannot claim acme's server name.
    let rules = write_file(
        s.dir.path(),
        "claim.toml",
        b"[tls]\nserver-names = [\"smtp.acme.example\"]\n",
    );
    let (ok, out) = s.cli("tenant", &["create", "other"]);
    assert!(ok, "{out}");
    let (ok, out) = s.cli("tenant", &["rules", "other", rules.to_str().unwrap()]);
    assert!(!ok && out.contains("belongs to another tenant"), "{out}");
}

/// systemd's `Type=notify`: READY=1 once serving, RELOADING=1 then READY=1
/// around a reload, STOPPING=1 on SIGTERM.
#[test]
fn readiness_and_reloads_are_told_to_the_service_manager() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut s = Server::start_with(Options {
        env: vec![("NOTIFY_SOCKET".into(), path.display().to_string())],
        ..Options::default()
    });
    let mut buf = [0u8; 512];
    let mut next = || {
        let n = sock.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert!(next().contains("READY=1"));
    // Serving by then: a client is greeted.
    Raw::open(s.port("submission"));
    s.signal("HUP");
    assert!(next().contains("RELOADING=1"));
    assert!(next().contains("READY=1"));
    s.signal("TERM");
    assert!(next().contains("STOPPING=1"));
    assert!(s.wait_exit(Duration::from_secs(30)).success());
}
