//! Real clients against the real binary: swaks, Python's smtplib, curl and
//! `openssl s_client`. Each checks the queued message byte for byte.

use std::process::Command;

use crate::harness::*;

/// A message with LF line endings as a file on disk; clients send it with
/// CRLF, which is what must land in the spool.
const BODY_LF: &str = "From: News <news@acme.example>\nTo: Someone <someone@example.net>\nSubject: first message\nMessage-ID: <m1@acme.example>\n\nHello from mailwit's tests.\n.leading dot survives stuffing\n";

fn crlf(s: &str) -> Vec<u8> {
    s.replace('\n', "\r\n").into_bytes()
}

fn swaks(server: &Server, extra: &[&str]) -> String {
    // swaks ends the data with CRLF "." CRLF after the file's last line, so
    // the file carries no final newline of its own.
    let data = write_file(
        server.dir.path(),
        "swaks-body.eml",
        BODY_LF.trim_end().as_bytes(),
    );
    let mut cmd = Command::new("swaks");
    cmd.args([
        "--from",
        SENDER,
        "--to",
        "someone@example.net",
        "--auth-user",
        LOGIN,
    ])
    .args(["--auth-password", PASSWORD, "--helo", "client.test"])
    .arg("--data")
    .arg(&data)
    .args(extra);
    let (ok, out) = run(&mut cmd);
    assert!(ok, "swaks failed:\n{out}");
    out
}

fn check_queued(server: &Server, transcript: &str) -> String {
    let id = queue_id(transcript).unwrap_or_else(|| panic!("no queue id in:\n{transcript}"));
    let m = server.spooled(&id);
    assert_eq!(
        String::from_utf8_lossy(&m.content),
        String::from_utf8_lossy(&crlf(BODY_LF))
    );
    assert_eq!(m.content, crlf(BODY_LF));
    assert_eq!(m.meta.sender, SENDER);
    assert_eq!(m.meta.recipients, vec!["someone@example.net"]);
    assert_eq!(m.meta.tenant, "acme");
    id
}

#[test]
fn swaks_starttls_auth_plain_on_submission() {
    let s = Server::start();
    let port = s.port("submission").to_string();
    let out = swaks(
        &s,
        &[
            "--server",
            "127.0.0.1",
            "--port",
            &port,
            "--tls",
            "--auth",
            "PLAIN",
        ],
    );
    assert!(out.contains("<-  220 2.0.0 Ready to start TLS"), "{out}");
    check_queued(&s, &out);
}

#[test]
fn swaks_starttls_auth_login_on_submission() {
    let s = Server::start();
    let port = s.port("submission").to_string();
    let out = swaks(
        &s,
        &[
            "--server",
            "127.0.0.1",
            "--port",
            &port,
            "--tls",
            "--auth",
            "LOGIN",
        ],
    );
    assert!(
        out.contains("334 VXNlcm5hbWU6") && out.contains("334 UGFzc3dvcmQ6"),
        "{out}"
    );
    check_queued(&s, &out);
}

#[test]
fn swaks_implicit_tls_on_smtps() {
    let s = Server::start();
    let port = s.port("smtps").to_string();
    let out = swaks(
        &s,
        &[
            "--server",
            "127.0.0.1",
            "--port",
            &port,
            "--tls-on-connect",
            "--auth",
            "PLAIN",
        ],
    );
    check_queued(&s, &out);
}

#[test]
fn python_smtplib_starttls_login_sendmail() {
    let s = Server::start();
    let script = r#"
import smtplib, ssl, sys
port, cafile, login, password, sender, body = sys.argv[1:7]
ctx = ssl.create_default_context(cafile=cafile)
with smtplib.SMTP("127.0.0.1", int(port)) as c:
    c.set_debuglevel(1)  # the transcript carries the DATA reply and its queue id
    c.ehlo("client.test")
    c.starttls(context=ctx)
    c.ehlo("client.test")
    c.login(login, password)
    # A str message: smtplib turns its line endings into CRLF (bytes are
    # sent as they are, and mailwit refuses bare LF with 550 5.6.0).
    refused = c.sendmail(sender, ["someone@example.net"], body)
    print("refused", refused)
"#;
    let (ok, out) = run(Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(s.port("submission").to_string())
        .arg(s.cert_path())
        .args([LOGIN, PASSWORD, SENDER, BODY_LF]));
    assert!(ok, "smtplib failed:\n{out}");
    assert!(out.contains("refused {}"), "{out}");
    check_queued(&s, &out);
}

#[test]
fn curl_smtp_ssl_reqd_verifies_the_generated_certificate() {
    let s = Server::start();
    let body = write_file(s.dir.path(), "curl-body.eml", &crlf(BODY_LF));
    let url = format!("smtp://127.0.0.1:{}", s.port("submission"));
    let (ok, out) = run(Command::new("curl")
        .args(["-sS", "-v", "--ssl-reqd", "--cacert"])
        .arg(s.cert_path())
        .args(["--mail-from", SENDER, "--mail-rcpt", "someone@example.net"])
        .args(["--user", &format!("{LOGIN}:{PASSWORD}"), "--upload-file"])
        .arg(&body)
        .arg(&url));
    assert!(ok, "curl failed:\n{out}");
    check_queued(&s, &out);
}

#[test]
fn openssl_s_client_replays_the_infobip_dialogue() {
    let s = Server::start();
    // The seed's telnet/openssl walk-through: EHLO, AUTH LOGIN with base64
    // prompts, MAIL FROM: <...>, RCPT TO: <...>, DATA, headers, ".", quit.
    // A user typing the body stuffs the line that starts with a dot.
    let typed = BODY_LF.replace("\n.leading", "\n..leading");
    let dialogue = format!(
        "EHLO smtp-api.infobip.com\nAUTH LOGIN\n{}\n{}\nMAIL FROM: <{SENDER}>\nRCPT TO: <someone@example.net>\nDATA\n{typed}.\nquit\n",
        b64(LOGIN),
        b64(PASSWORD),
    );
    let out = run_with_stdin(
        Command::new("openssl")
            .args([
                "s_client",
                "-crlf",
                "-quiet",
                "-starttls",
                "smtp",
                "-connect",
            ])
            .arg(format!("127.0.0.1:{}", s.port("submission"))),
        dialogue.as_bytes(),
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    for expected in [
        "250-SIZE 20971520",
        "250-8BITMIME",
        "250-AUTH PLAIN LOGIN",
        "334 VXNlcm5hbWU6",
        "334 UGFzc3dvcmQ6",
        "235 2.7.0 Authentication successful",
        "250 2.1.0 Sender address accepted",
        "250 2.1.5 Recipient address accepted",
        "354 ",
        "221 2.0.0",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    let id = queue_id(&text).unwrap_or_else(|| panic!("no queue id:\n{text}"));
    assert_eq!(s.spooled(&id).content, crlf(BODY_LF));
}
