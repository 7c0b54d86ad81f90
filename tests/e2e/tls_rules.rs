//! STARTTLS rules: no plaintext pipelined before the handshake reaches the
//! TLS session (CVE-2011-0411 class), and the session starts afresh after it.

use crate::harness::*;

#[test]
fn plaintext_pipelined_after_starttls_is_discarded() {
    let s = Server::start();
    let mut r = Raw::open(s.port("submission"));
    r.cmd("EHLO client.test");
    // STARTTLS and a command in one segment: the command must not be
    // executed inside the TLS session.
    r.send(b"STARTTLS\r\nNOOP\r\n");
    assert!(r.reply().starts_with("220 2.0.0"));
    let mut tls = tls_client(&s.cert_path(), r.stream.try_clone().unwrap());
    // The first reply inside TLS answers this MAIL (503: EHLO needed
    // again), not the injected NOOP (which would be a 250).
    let first = tls_cmd(&mut tls, &format!("MAIL FROM:<{SENDER}>"));
    assert!(first.starts_with("503 5.5.1"), "{first}");
    let ehlo = tls_cmd(&mut tls, "EHLO client.test");
    assert!(
        ehlo.contains("250-AUTH PLAIN LOGIN") && !ehlo.contains("STARTTLS"),
        "{ehlo}"
    );
    let auth = tls_cmd(
        &mut tls,
        &format!("AUTH PLAIN {}", base64_plain(LOGIN, PASSWORD)),
    );
    assert!(auth.starts_with("235 2.7.0"), "{auth}");
    assert!(tls_cmd(&mut tls, "STARTTLS").starts_with("503 5.5.1"));
    s.wait_log("smtp.starttls_injection", 1);
}
