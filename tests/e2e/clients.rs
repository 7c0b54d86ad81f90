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

/// `openssl s_client -starttls smtp` on the submission port, fed
/// `dialogue` as a person would type it; what it printed.
fn s_client(s: &Server, dialogue: &str) -> String {
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
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// IBM's command-line example (seed 003, "Using SMTP interface for sending
/// emails"), typed as it is: lower-case commands, `mail from:` without
/// angle brackets. Its lines checked here:
///
/// ```text
/// auth login
/// 334 VXNlcm5hbWU6
/// 334 UGFzc3dvcmQ6
/// 235 2.7.0 Authentication successful
/// mail from: mailer@example.com
/// 250 2.1.0 Ok
/// rcpt to: recipient@test.com
/// 250 2.1.5 Ok
/// data
/// 354 End data with <CR><LF>.<CR><LF>
/// ```
///
/// (acme's sender and a recipient of its own stand for IBM's example
/// addresses; mailwit's 250 texts are Infobip's, "Sender address accepted",
/// with IBM's codes.)
#[test]
fn openssl_s_client_replays_the_ibm_dialogue() {
    let s = Server::start();
    let dialogue = format!(
        "ehlo client.test\nauth login\n{}\n{}\nmail from: {SENDER}\nrcpt to: recipient@test.com\ndata\nfrom: Mailer <{SENDER}>\nto: Recipient <recipient@test.com>\nSubject: IBM Cloud Event Notifications SMTP interface\n\nGet the all events securely from IBM EN SMTP Interface\n.\nquit\n",
        b64(LOGIN),
        b64(PASSWORD),
    );
    let text = s_client(&s, &dialogue);
    let replies: Vec<&str> = text.lines().filter(|l| !l.starts_with("250-")).collect();
    let expected = [
        "250 ",
        "334 VXNlcm5hbWU6",
        "334 UGFzc3dvcmQ6",
        "235 2.7.0 Authentication successful",
        "250 2.1.0 ",
        "250 2.1.5 ",
        "354 End data with <CR><LF>.<CR><LF>",
        "250 2.0.0 Ok: queued as ",
        "221 2.0.0",
    ];
    assert_eq!(replies.len(), expected.len(), "{text}");
    for (got, want) in replies.iter().zip(expected) {
        assert!(
            got.starts_with(want),
            "{want:?} expected, got {got:?} in:\n{text}"
        );
    }
    let id = queue_id(&text).unwrap_or_else(|| panic!("no queue id:\n{text}"));
    let m = s.spooled(&id);
    assert_eq!(m.meta.sender, SENDER);
    assert_eq!(m.meta.recipients, ["recipient@test.com"]);
}

/// The commands of Mailtrap's explainer (seed 002, "SMTP commands" and
/// "Responses"), with the codes it gives:
///
/// ```text
/// - HELO/EHLO – initiates the start of the SMTP session.
/// - VRFY – asks the server to verify if the mailbox in the argument exists on the local host.
/// - 252 – the server can't verify the user. It will still accept the message and attempt the delivery (responds to VRFY command)
/// - EXPN – does the same as VRFY but for the mailing list.
/// - NOOP – checks the ability of the server to respond.
/// - HELP – asks the server to verify which commands it supports. It may include a specific command as an argument.
/// - RSET – resets the SMTP connection to the initial state.
/// - QUIT – ends the SMTP session.
/// - 250 – the requested action is okay or completed
/// - 221 – <domain> closing the transmission channel
/// ```
///
/// HELP answers 214 (RFC 5321's help reply; the seed's "211 – system
/// status or reply to HELP" allows either) and EXPN, which mailwit does not
/// offer, 502 5.5.1.
#[test]
fn a_raw_socket_replays_the_mailtrap_commands() {
    let s = Server::start();
    let mut r = Raw::open(s.port("plain"));
    let helo = r.cmd("HELO client.test");
    assert!(helo.starts_with("250 "), "{helo}");
    let ehlo = r.cmd("EHLO client.test");
    assert!(ehlo.starts_with("250-") && ehlo.contains("250 "), "{ehlo}");
    let vrfy = r.cmd("VRFY someone@example.net");
    assert!(vrfy.starts_with("252 2.5.0"), "{vrfy}");
    let expn = r.cmd("EXPN staff");
    assert!(expn.starts_with("502 5.5.1"), "{expn}");
    let noop = r.cmd("NOOP");
    assert!(noop.starts_with("250 2.0.0"), "{noop}");
    let help = r.cmd("HELP");
    assert!(help.starts_with("214") && help.contains("VRFY"), "{help}");
    let help = r.cmd("HELP MAIL");
    assert!(help.starts_with("214"), "{help}");
    // RSET mid-transaction: the envelope is gone, the session goes on.
    let auth = base64_plain(LOGIN, PASSWORD);
    assert!(r.cmd(&format!("AUTH PLAIN {auth}")).starts_with("235"));
    assert!(
        r.cmd(&format!("MAIL FROM:<{SENDER}>"))
            .starts_with("250 2.1.0")
    );
    assert!(r.cmd("RSET").starts_with("250 2.0.0"));
    let rcpt = r.cmd("RCPT TO:<a@example.net>");
    assert!(rcpt.starts_with("503 5.5.1"), "no MAIL after RSET: {rcpt}");
    let quit = r.cmd("QUIT");
    assert!(quit.starts_with("221 2.0.0"), "{quit}");
    assert!(r.closed());
    assert!(s.spool().is_empty());
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
    let text = s_client(&s, &dialogue);
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
