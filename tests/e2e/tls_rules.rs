//! STARTTLS rules: no plaintext pipelined before the handshake reaches the
//! TLS session (CVE-2011-0411 class), and the session starts afresh after it.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

use crate::harness::*;

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

fn tls_client(server: &Server, tcp: TcpStream) -> BufReader<Tls> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(server.cert_path()).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    BufReader::new(rustls::StreamOwned::new(conn, tcp))
}

fn cmd(tls: &mut BufReader<Tls>, line: &str) -> String {
    tls.get_mut()
        .write_all(format!("{line}\r\n").as_bytes())
        .unwrap();
    reply(tls)
}

fn reply(tls: &mut BufReader<Tls>) -> String {
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

#[test]
fn plaintext_pipelined_after_starttls_is_discarded() {
    let s = Server::start();
    let mut r = Raw::open(s.port("submission"));
    r.cmd("EHLO client.test");
    // STARTTLS and a command in one segment: the command must not be
    // executed inside the TLS session.
    r.send(b"STARTTLS\r\nNOOP\r\n");
    assert!(r.reply().starts_with("220 2.0.0"));
    let mut tls = tls_client(&s, r.stream.try_clone().unwrap());
    // The first reply inside TLS answers this MAIL (503: EHLO needed
    // again), not the injected NOOP (which would be a 250).
    let first = cmd(&mut tls, &format!("MAIL FROM:<{SENDER}>"));
    assert!(first.starts_with("503 5.5.1"), "{first}");
    let ehlo = cmd(&mut tls, "EHLO client.test");
    assert!(
        ehlo.contains("250-AUTH PLAIN LOGIN") && !ehlo.contains("STARTTLS"),
        "{ehlo}"
    );
    let auth = cmd(
        &mut tls,
        &format!("AUTH PLAIN {}", base64_plain(LOGIN, PASSWORD)),
    );
    assert!(auth.starts_with("235 2.7.0"), "{auth}");
    assert!(cmd(&mut tls, "STARTTLS").starts_with("503 5.5.1"));
    assert!(s.log_text().contains("smtp.starttls_injection"));
}
