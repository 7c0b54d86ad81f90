//! Tenants serving themselves: a tenant's lifecycle, its SMTP users and API
//! keys, made through the CLI and the admin API, used by swaks and smtplib.

use std::path::PathBuf;
use std::process::Command;

use crate::harness::*;

/// `mailwit tenant <args>` as JSON; panics when it fails.
fn tenant_json(s: &Server, args: &[&str]) -> serde_json::Value {
    let (ok, out) = s.cli("tenant", args);
    assert!(ok, "mailwit tenant {args:?}: {out}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// The admin API with curl: (HTTP status, body).
fn api(s: &Server, token: &str, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let url = format!("http://127.0.0.1:{}{path}", s.port("admin"));
    let mut cmd = Command::new("curl");
    cmd.args([
        "-s",
        "-m",
        "30",
        "-o",
        "-",
        "-w",
        "\n%{http_code}",
        "-X",
        method,
    ])
    .args(["-H", &format!("Authorization: Bearer {token}")]);
    if let Some(b) = body {
        cmd.args(["-H", "content-type: application/json", "--data-binary", b]);
    }
    let (ok, out) = run(cmd.arg(&url));
    assert!(ok, "curl {method} {path}: {out}");
    let (body, code) = out.trim_end().rsplit_once('\n').unwrap_or(("", out.trim()));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// A tenant `shop` made with the CLI: the stock authenticator and router,
/// every message to the sandbox.
fn shop(s: &Server) {
    tenant_json(s, &["create", "shop"]);
    for f in ["auth", "router"] {
        let path = component(f);
        tenant_json(s, &["deploy", "shop", f, path.to_str().unwrap()]);
    }
    let rules = write_file(
        s.dir.path(),
        "shop.toml",
        b"max-users = 5\n[route]\ndefault = \"sandbox\"\n",
    );
    tenant_json(s, &["rules", "shop", rules.to_str().unwrap()]);
}

/// smtplib: STARTTLS, LOGIN, one message; the transcript.
fn smtplib(s: &Server, login: &str, password: &str) -> (bool, String) {
    let script = r#"
import smtplib, ssl, sys
port, cafile, login, password = sys.argv[1:5]
ctx = ssl.create_default_context(cafile=cafile)
with smtplib.SMTP("127.0.0.1", int(port)) as c:
    c.set_debuglevel(1)
    c.ehlo("client.test")
    c.starttls(context=ctx)
    c.ehlo("client.test")
    c.login(login, password)
    c.sendmail("orders@shop.example", ["buyer@example.net"], "Subject: order\r\n\r\nthanks\r\n")
"#;
    run(Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(s.port("submission").to_string())
        .arg(s.cert_path())
        .args([login, password]))
}

/// swaks as `login`, from shop's sender to one recipient; the transcript.
fn shop_swaks(s: &Server, login: &str, password: &str) -> String {
    swaks_plain(
        s,
        login,
        password,
        "orders@shop.example",
        "buyer@example.net",
        &[],
    )
}

/// A session logged in as `login`, with one recipient given.
fn in_transaction(s: &Server, login: &str, password: &str, rcpt: &str) -> Raw {
    let mut r = Raw::open(s.port("plain"));
    r.cmd("EHLO client.test");
    let auth = base64_plain(login, password);
    assert!(
        r.cmd(&format!("AUTH PLAIN {auth}"))
            .starts_with("235 2.7.0")
    );
    assert!(r.cmd("MAIL FROM:<orders@shop.example>").starts_with("250"));
    assert!(r.cmd(&format!("RCPT TO:<{rcpt}>")).starts_with("250"));
    r
}

fn sandboxed(s: &Server, tenant: &str) -> usize {
    let (code, body) = api(
        s,
        ADMIN_TOKEN,
        "GET",
        &format!("/v1/tenants/{tenant}/sandbox"),
        None,
    );
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["messages"].as_array().unwrap().len()
}

#[test]
fn a_tenant_is_created_given_users_and_keys_suspended_resumed_and_deleted() {
    let s = Server::start();
    // Deploying to a tenant nobody created is refused.
    let (ok, out) = s.cli(
        "tenant",
        &[
            "deploy",
            "shop",
            "router",
            component("router").to_str().unwrap(),
        ],
    );
    assert!(!ok && out.contains("no tenant \"shop\""), "{out}");
    shop(&s);
    // A user with a password of the operator's (read from stdin, never on
    // the command line), and one the server makes.
    let out = run_with_stdin(
        s.command("tenant")
            .args(["--admin", &format!("127.0.0.1:{}", s.port("admin"))])
            .args([
                "user",
                "add",
                "shop",
                "clerk@shop.example",
                "--password-stdin",
            ]),
        b"clerk-password-1\n",
    );
    assert!(out.status.success(), "{out:?}");
    let made = tenant_json(&s, &["user", "add", "shop", "robot@shop.example"]);
    let robot_password = made["password"].as_str().unwrap().to_string();
    assert!(robot_password.len() >= 12, "{made}");
    // An API key through the admin API: shown once, as <id>.<secret>.
    let (code, body) = api(
        &s,
        ADMIN_TOKEN,
        "POST",
        "/v1/tenants/shop/api-keys",
        Some("{}"),
    );
    assert_eq!(code, 200, "{body}");
    let key: serde_json::Value = serde_json::from_str(&body).unwrap();
    let key_id = key["id"].as_str().unwrap().to_string();
    let key = key["key"].as_str().unwrap().to_string();
    assert!(key.starts_with(&format!("{key_id}.")), "{key}");
    // Listing shows ids and times, never a secret or a hash.
    let list = tenant_json(&s, &["key", "list", "shop", "--json"]);
    assert_eq!(list["api_keys"][0]["id"], key_id.as_str(), "{list}");
    let shown = tenant_json(&s, &["show", "shop", "--json"]).to_string();
    assert!(
        !shown.contains(&key) && !shown.contains("$argon2"),
        "{shown}"
    );
    assert!(!s.log_text().contains("clerk-password-1"));
    assert!(!s.log_text().contains(&robot_password));

    // Each credential logs in, with swaks and with smtplib.
    let out = shop_swaks(&s, "clerk@shop.example", "clerk-password-1");
    assert!(queue_id(&out).is_some(), "{out}");
    let out = shop_swaks(&s, "App", &key);
    assert!(queue_id(&out).is_some(), "{out}");
    let (ok, out) = smtplib(&s, "robot@shop.example", &robot_password);
    assert!(ok && out.contains("queued as"), "{out}");
    let (ok, out) = smtplib(&s, "App", &key);
    assert!(ok && out.contains("queued as"), "{out}");
    wait_for("four messages in shop's sandbox", || {
        sandboxed(&s, "shop") == 4
    });

    // A session in the middle of a transaction finishes it after its user
    // is removed; the next login fails.
    let mut r = in_transaction(
        &s,
        "clerk@shop.example",
        "clerk-password-1",
        "late@example.net",
    );
    tenant_json(&s, &["user", "remove", "shop", "clerk@shop.example"]);
    assert!(r.cmd("DATA").starts_with("354"));
    r.send(b"Subject: in flight\r\n\r\nstill mine\r\n.\r\n");
    let done = r.reply();
    assert!(done.starts_with("250 2.0.0"), "{done}");
    let out = shop_swaks(&s, "clerk@shop.example", "clerk-password-1");
    assert!(out.contains("535 5.7.8"), "{out}");
    // A revoked key fails at its next login.
    tenant_json(&s, &["key", "revoke", "shop", &key_id]);
    let out = shop_swaks(&s, "App", &key);
    assert!(out.contains("535 5.7.8"), "{out}");
    wait_for("five messages in shop's sandbox", || {
        sandboxed(&s, "shop") == 5
    });

    // Suspended: logins get 535 5.7.8 with a log line saying why, and mail
    // accepted before the suspension is held until the resume.
    let mut r = in_transaction(
        &s,
        "robot@shop.example",
        &robot_password,
        "held@example.net",
    );
    assert!(r.cmd("DATA").starts_with("354"));
    tenant_json(&s, &["suspend", "shop", "--reason", "unpaid invoice"]);
    r.send(b"Subject: held\r\n\r\nwaits\r\n.\r\n");
    let held = queue_id(&r.reply()).expect("accepted before the suspension took effect");
    let (ok, out) = smtplib(&s, "robot@shop.example", &robot_password);
    assert!(!ok && out.contains("535") && out.contains("5.7.8"), "{out}");
    s.wait_log("the tenant is suspended", 1);
    assert!(s.log_text().contains("unpaid invoice"));
    let shown = tenant_json(&s, &["show", "shop", "--json"]);
    assert_eq!(shown["suspended"]["reason"], "unpaid invoice", "{shown}");
    // Held: a few recheck periods later it is still not in the sandbox.
    std::thread::sleep(std::time::Duration::from_secs(5));
    assert_eq!(sandboxed(&s, "shop"), 5);
    assert!(
        !s.statuses(&held, "held@example.net")
            .contains(&"delivered_to_sandbox".to_string())
    );
    tenant_json(&s, &["resume", "shop"]);
    wait_for("the held message delivered after the resume", || {
        s.statuses(&held, "held@example.net")
            .contains(&"delivered_to_sandbox".to_string())
    });
    let (ok, out) = smtplib(&s, "robot@shop.example", &robot_password);
    assert!(ok, "{out}");

    // Everything survives a restart.
    let mut s = s;
    s.restart();
    let (ok, out) = smtplib(&s, "robot@shop.example", &robot_password);
    assert!(ok, "after a restart: {out}");
    let out = shop_swaks(&s, "App", &key);
    assert!(out.contains("535 5.7.8"), "revoked stays revoked: {out}");

    // Deleting needs --confirm; then the tenant, its logins, status and
    // sandbox are gone, and the acme tenant is untouched.
    let (ok, out) = s.cli("tenant", &["delete", "shop"]);
    assert!(!ok && out.contains("--confirm"), "{out}");
    let gone = tenant_json(&s, &["delete", "shop", "--confirm"]);
    assert_eq!(gone["sandbox_messages"], 8, "{gone}");
    let (code, _) = api(&s, ADMIN_TOKEN, "GET", "/v1/tenants/shop", None);
    assert_eq!(code, 404);
    assert!(s.status(&held).is_none());
    assert!(!s.data_dir().join("tenants/shop").exists());
    assert!(!s.data_dir().join("sandbox/shop").exists() || sandboxed(&s, "shop") == 0);
    let (ok, out) = smtplib(&s, "robot@shop.example", &robot_password);
    assert!(!ok && out.contains("535"), "{out}");
    submit(&s, "still@example.net", &[]);
}

#[test]
fn logins_and_key_ids_are_unique_across_tenants_and_max_users_holds() {
    let s = Server::start();
    shop(&s);
    // acme's login, from its rules file, cannot be made in shop.
    let (ok, out) = s.cli("tenant", &["user", "add", "shop", LOGIN]);
    assert!(
        !ok && out.contains("409") && out.contains("exists already"),
        "{out}"
    );
    // Nor through shop's rules file.
    let rules = write_file(
        s.dir.path(),
        "steal.toml",
        format!("[users]\n\"{LOGIN}\" = \"{}\"\n", demo_hash()).as_bytes(),
    );
    let (ok, out) = s.cli("tenant", &["rules", "shop", rules.to_str().unwrap()]);
    assert!(!ok && out.contains("exists in another tenant"), "{out}");
    // A key id is unique too.
    tenant_json(&s, &["key", "create", "shop", "--id", "shared"]);
    let (code, body) = api(
        &s,
        ADMIN_TOKEN,
        "POST",
        "/v1/tenants/acme/api-keys",
        Some(r#"{"id":"shared"}"#),
    );
    assert_eq!(code, 409, "{body}");
    // max-users = 5: the sixth is refused.
    for i in 1..=5 {
        tenant_json(&s, &["user", "add", "shop", &format!("u{i}@shop.example")]);
    }
    let (ok, out) = s.cli("tenant", &["user", "add", "shop", "u6@shop.example"]);
    assert!(!ok && out.contains("max-users is 5"), "{out}");
    let shown = tenant_json(&s, &["show", "shop", "--json"]);
    assert_eq!(shown["users"].as_array().unwrap().len(), 5, "{shown}");
    // A short password is refused; nothing is added.
    let (code, body) = api(
        &s,
        ADMIN_TOKEN,
        "POST",
        "/v1/tenants/acme/users",
        Some(r#"{"login":"x@acme.example","password":"short"}"#),
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("at least 12"), "{body}");
}

/// Every file under `dir` with its content, to show nothing changed.
fn snapshot(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_tenant_token_reaches_its_own_tenant_and_nothing_of_another() {
    let s = Server::start();
    shop(&s);
    // Something of shop's to reach for: a user, a key, a sandboxed message.
    tenant_json(&s, &["user", "add", "shop", "robot@shop.example"]);
    let key = tenant_json(&s, &["key", "create", "shop", "--id", "shopkey"]);
    let out = shop_swaks(&s, "App", key["key"].as_str().unwrap());
    let shop_message = queue_id(&out).unwrap_or_else(|| panic!("{out}"));
    wait_for("shop's message in its sandbox", || {
        sandboxed(&s, "shop") == 1
    });
    let issued = tenant_json(&s, &["token", "issue", "acme", "--days", "1"]);
    let token = issued["token"].as_str().unwrap().to_string();
    let as_acme =
        |args: &[&str]| s.cli("tenant", &[&["--token", token.as_str()][..], args].concat());

    // Mail flows while acme's own token deploys and rolls back its router.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flow = {
        let (stop, port) = (stop.clone(), s.port("plain"));
        std::thread::spawn(move || {
            let mut accepted = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let mut r = Raw::open(port);
                r.cmd("EHLO client.test");
                let auth = base64_plain(LOGIN, PASSWORD);
                assert!(r.cmd(&format!("AUTH PLAIN {auth}")).starts_with("235"));
                for _ in 0..5 {
                    let reply = r.message("during the swap");
                    assert!(reply.starts_with("250 2.0.0"), "{reply}");
                    accepted += 1;
                }
                r.cmd("QUIT");
            }
            accepted
        })
    };
    let router = component("router_sandbox");
    let (ok, out) = as_acme(&["deploy", "acme", "router", router.to_str().unwrap()]);
    assert!(ok && out.contains("\"version\": 2"), "{out}");
    let (ok, out) = as_acme(&["rollback", "acme", "router"]);
    assert!(ok && out.contains("\"active_version\": 1"), "{out}");
    let (ok, out) = as_acme(&["list", "--json"]);
    assert!(
        ok && out.contains("\"acme\"") && !out.contains("\"shop\""),
        "{out}"
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let accepted = flow.join().unwrap();
    assert!(accepted >= 5, "{accepted}");

    // Every endpoint of shop answers 404 to acme's token, and no file of
    // shop's changes.
    let before = (
        snapshot(&s.data_dir().join("tenants/shop")),
        snapshot(&s.data_dir().join("sandbox/shop")),
    );
    assert!(!before.0.is_empty() && !before.1.is_empty());
    let wasm = router.to_str().unwrap().to_string();
    let endpoints: Vec<(&str, String, Option<String>)> = vec![
        ("GET", "/v1/tenants/shop".into(), None),
        ("DELETE", "/v1/tenants/shop?confirm=shop".into(), None),
        ("POST", "/v1/tenants/shop/suspend".into(), Some("{}".into())),
        ("POST", "/v1/tenants/shop/resume".into(), None),
        (
            "PUT",
            "/v1/tenants/shop/functions/router".into(),
            Some(format!("@{wasm}")),
        ),
        ("PUT", "/v1/tenants/shop/rules".into(), Some("x = 1".into())),
        (
            "POST",
            "/v1/tenants/shop/functions/router/rollback".into(),
            None,
        ),
        (
            "POST",
            "/v1/tenants/shop/functions/rules/rollback".into(),
            None,
        ),
        (
            "POST",
            "/v1/tenants/shop/users".into(),
            Some(r#"{"login":"x@shop.example"}"#.into()),
        ),
        (
            "PUT",
            "/v1/tenants/shop/users/robot@shop.example/password".into(),
            Some("{}".into()),
        ),
        (
            "DELETE",
            "/v1/tenants/shop/users/robot@shop.example".into(),
            None,
        ),
        (
            "POST",
            "/v1/tenants/shop/api-keys".into(),
            Some("{}".into()),
        ),
        ("GET", "/v1/tenants/shop/api-keys".into(), None),
        ("DELETE", "/v1/tenants/shop/api-keys/shopkey".into(), None),
        ("GET", "/v1/tenants/shop/sandbox".into(), None),
        (
            "GET",
            format!("/v1/tenants/shop/sandbox/{shop_message}"),
            None,
        ),
        (
            "DELETE",
            format!("/v1/tenants/shop/sandbox/{shop_message}"),
            None,
        ),
        ("GET", "/v1/tenants/shop/limits".into(), None),
        ("GET", format!("/v1/messages/{shop_message}"), None),
    ];
    for (method, path, body) in &endpoints {
        let (code, answer) = api(&s, &token, method, path, body.as_deref());
        assert_eq!(code, 404, "{method} {path}: {answer}");
    }
    let after = (
        snapshot(&s.data_dir().join("tenants/shop")),
        snapshot(&s.data_dir().join("sandbox/shop")),
    );
    assert!(before == after, "shop's files changed");
    // The operator's own endpoints answer 403; its own tenant's, 200.
    let (code, _) = api(
        &s,
        &token,
        "POST",
        "/v1/tokens",
        Some(r#"{"tenant":"shop"}"#),
    );
    assert_eq!(code, 403);
    let (code, _) = api(&s, &token, "POST", "/v1/tenants/acme/suspend", None);
    assert_eq!(code, 403);
    let (code, body) = api(&s, &token, "GET", "/v1/tenants/acme", None);
    assert_eq!(code, 200, "{body}");
    // Revoked: 401 from then on.
    tenant_json(&s, &["token", "revoke", issued["id"].as_str().unwrap()]);
    let (code, _) = api(&s, &token, "GET", "/v1/tenants/acme", None);
    assert_eq!(code, 401);
}

#[test]
fn each_tenant_limit_answers_its_reply_and_counts_in_its_metric() {
    let s = Server::start();
    let set = |args: &[&str]| tenant_json(&s, &[&["limits", "set", "acme"][..], args].concat());
    let mail = |r: &mut Raw| r.cmd(&format!("MAIL FROM:<{SENDER}>"));

    // Recipients per message and message size.
    set(&["--recipients-per-message", "2", "--message-size", "2000"]);
    let mut r = Raw::logged_in(&s);
    let rep = r.cmd(&format!("MAIL FROM:<{SENDER}> SIZE=3000"));
    assert!(rep.starts_with("552 5.3.4"), "{rep}");
    assert!(mail(&mut r).starts_with("250"));
    assert!(r.cmd("RCPT TO:<a@example.net>").starts_with("250"));
    assert!(r.cmd("RCPT TO:<b@example.net>").starts_with("250"));
    let rep = r.cmd("RCPT TO:<c@example.net>");
    assert!(rep.starts_with("452 4.5.3"), "{rep}");
    assert!(r.cmd("DATA").starts_with("354"));
    r.send(format!("Subject: big\r\n\r\n{}\r\n.\r\n", "x".repeat(3000)).as_bytes());
    let rep = r.reply();
    assert!(rep.starts_with("552 5.3.4"), "{rep}");
    // Within both: accepted.
    assert!(r.message("small").starts_with("250 2.0.0"));
    r.cmd("QUIT");

    // Concurrent sessions.
    set(&["--sessions", "1"]);
    let mut first = Raw::logged_in(&s);
    let mut second = Raw::open(s.port("plain"));
    second.cmd("EHLO client.test");
    let rep = second.cmd(&format!("AUTH PLAIN {}", base64_plain(LOGIN, PASSWORD)));
    assert!(rep.starts_with("454 4.7.0"), "{rep}");
    first.cmd("QUIT");
    wait_for("the first session's place given back", || {
        let v = tenant_json(&s, &["limits", "show", "acme"]);
        v["usage"]["sessions"] == 0
    });
    let rep = second.cmd(&format!("AUTH PLAIN {}", base64_plain(LOGIN, PASSWORD)));
    assert!(rep.starts_with("235"), "{rep}");
    second.cmd("QUIT");

    // Messages per second: a bucket of two that refills once in 1000 s, so
    // no machine is slow enough for it to refill during the test.
    set(&["--messages-per-second", "0.001", "--burst", "2"]);
    let mut r = Raw::logged_in(&s);
    assert!(r.message("one").starts_with("250 2.0.0"));
    assert!(r.message("two").starts_with("250 2.0.0"));
    let rep = mail(&mut r);
    assert!(rep.starts_with("451 4.7.1"), "{rep}");
    r.cmd("QUIT");

    // Messages per day: one more than acme sent today.
    let today = tenant_json(&s, &["limits", "show", "acme"])["usage"]["messages_today"]
        .as_u64()
        .unwrap();
    assert_eq!(today, 3, "the refused ones gave their place back");
    set(&["--messages-per-day", &(today + 1).to_string()]);
    let mut r = Raw::logged_in(&s);
    assert!(r.message("last today").starts_with("250 2.0.0"));
    let rep = mail(&mut r);
    assert!(rep.starts_with("452 4.3.1"), "{rep}");
    r.cmd("QUIT");

    // Each refusal is counted per tenant and limit.
    let metrics = s.metrics();
    for limit in [
        "message_size\"} 2",
        "recipients_per_message\"} 1",
        "sessions\"} 1",
        "messages_per_second\"} 1",
        "messages_per_day\"} 1",
    ] {
        let line = format!("mailwit_tenant_limit_refusals_total{{tenant=\"acme\",limit=\"{limit}");
        assert!(metrics.contains(&line), "{line} not in:\n{metrics}");
    }
    // The tenant reads its own limits with its token; it cannot set them.
    let token = tenant_json(&s, &["token", "issue", "acme"])["token"]
        .as_str()
        .unwrap()
        .to_string();
    let (code, body) = api(&s, &token, "GET", "/v1/tenants/acme/limits", None);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"messages_per_day\":4"), "{body}");
    let (code, _) = api(&s, &token, "PUT", "/v1/tenants/acme/limits", Some("{}"));
    assert_eq!(code, 403);
    // And the limits survive a restart.
    let mut s = s;
    s.restart();
    let (ok, out) = s.cli("tenant", &["limits", "show", "acme"]);
    assert!(ok && out.contains("\"messages_per_day\": 4"), "{out}");
}

#[test]
fn a_tenants_own_component_refuses_from_the_usage_import() {
    // The stock sender function's own rule, over the host's counters.
    let s = Server::start_with(Options {
        acme_rules: "[tenants.rules.usage]\nmax-per-day = 2\n".into(),
        ..Options::default()
    });
    let mut r = Raw::logged_in(&s);
    assert!(r.message("one").starts_with("250 2.0.0"));
    assert!(r.message("two").starts_with("250 2.0.0"));
    let rep = r.cmd(&format!("MAIL FROM:<{SENDER}>"));
    assert!(
        rep.starts_with("451 4.7.1") && rep.contains("its own rule"),
        "{rep}"
    );
    r.cmd("QUIT");
    // The component refused, not the host: counted as its refusal, and
    // the host's own limits (none set) never spoke.
    let metrics = s.metrics();
    assert!(
        metrics.contains(
            "mailwit_policy_rejections_total{tenant=\"acme\",decision=\"check-sender\",reason=\"451 4.7.1\"} 1"
        ),
        "{metrics}"
    );
    assert!(
        !metrics.contains("mailwit_tenant_limit_refusals_total"),
        "{metrics}"
    );
    // The refused message gave its place back: the host counts two today.
    let v = tenant_json(&s, &["limits", "show", "acme"]);
    assert_eq!(v["usage"]["messages_today"], 2, "{v}");
}

#[test]
fn the_admin_listener_serves_tls_and_the_cli_follows() {
    // The server's own generated certificate (made before the admin
    // listener starts), by paths relative to the server's directory.
    let s = Server::start_with(Options {
        admin: "tls_cert = \"data/tls/cert.pem\"\ntls_key = \"data/tls/key.pem\"",
        ..Options::default()
    });
    // The CLI speaks TLS to it, trusting that certificate.
    let out = tenant_json(&s, &["show", "acme", "--json"]);
    assert_eq!(out["tenant"], "acme", "{out}");
    // curl too, verifying it; plain HTTP gets no answer.
    let url = format!("https://127.0.0.1:{}/v1/tenants/acme", s.port("admin"));
    let (ok, body) = run(Command::new("curl")
        .args(["-sS", "-m", "30", "--cacert"])
        .arg(s.cert_path())
        .args(["-H", &format!("Authorization: Bearer {ADMIN_TOKEN}")])
        .arg(&url));
    assert!(ok && body.contains("\"tenant\":\"acme\""), "{body}");
    let (ok, body) = run(Command::new("curl")
        .args(["-sS", "-m", "30"])
        .args(["-H", &format!("Authorization: Bearer {ADMIN_TOKEN}")])
        .arg(url.replace("https://", "http://")));
    assert!(!ok || !body.contains("acme"), "{body}");
    let log = s.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("listener=admin") && l.contains("tls=implicit")),
        "{log}"
    );
}

/// The tenant console in a real browser (Debian's chromium, driven by
/// selenium: tests/e2e/console.py): signed in with acme's token, it finds
/// a message sent with swaks by its recipient, shows its timeline, opens
/// it in the sandbox
/// (its HTML frame sandboxed), rolls back acme's router (version 2 to 1,
/// as the API then says), shows nothing of shop's message, and signs in
/// again with acme's SMTP login (a wrong password gets `401`). The
/// screenshots go to `$MAILWIT_CONSOLE_SHOTS` (default: the test's
/// directory).
#[test]
fn the_console_in_a_browser_shows_the_tenants_own_mail_and_rolls_back() {
    let s = Server::start_with(Options {
        acme_rules: route_rules("sandbox"),
        ..Options::default()
    });
    shop(&s);
    let key = tenant_json(&s, &["key", "create", "shop", "--id", "shopkey"]);
    let out = shop_swaks(&s, "App", key["key"].as_str().unwrap());
    let other = queue_id(&out).unwrap_or_else(|| panic!("{out}"));
    let router = component("router_sandbox");
    tenant_json(&s, &["deploy", "acme", "router", router.to_str().unwrap()]);
    let out = swaks_plain(
        &s,
        LOGIN,
        PASSWORD,
        SENDER,
        "reader@example.net",
        &["--header", "Subject: seen in the console"],
    );
    let id = queue_id(&out).unwrap_or_else(|| panic!("{out}"));
    wait_for("the message in acme's sandbox", || {
        s.statuses(&id, "reader@example.net")
            .contains(&"delivered_to_sandbox".to_string())
    });
    let token = tenant_json(&s, &["token", "issue", "acme", "--days", "1"])["token"]
        .as_str()
        .unwrap()
        .to_string();
    let shots = std::env::var("MAILWIT_CONSOLE_SHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| s.dir.path().join("shots"));
    let base = format!("http://127.0.0.1:{}", s.port("admin"));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/e2e/console.py");
    let (ok, out) = run(Command::new("python3").args([
        script,
        &base,
        &token,
        &id,
        &other,
        shots.to_str().unwrap(),
        LOGIN,
        PASSWORD,
    ]));
    assert!(ok, "{out}");
    eprintln!("{out}");
    assert!(out.contains("signed in as acme"), "{out}");
    assert!(out.contains("opened: seen in the console"), "{out}");
    let show = tenant_json(&s, &["show", "acme", "--json"]);
    let router = active_version(&show["functions"], "router");
    assert_eq!(router, 1, "the rollback did not happen: {show}");
    assert!(out.contains(&format!("found: {id}")), "{out}");
    assert!(
        out.contains("signed in with the SMTP login as acme"),
        "{out}"
    );
    // A wrong password gets no token (and counts against the address).
    let (code, body) = api(
        &s,
        "",
        "POST",
        "/v1/console/session",
        Some(&format!(
            r#"{{"login":"{LOGIN}","password":"wrong-password"}}"#
        )),
    );
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("535 5.7.8"), "{body}");
    for n in 1..=8 {
        let found = std::fs::read_dir(&shots).unwrap().any(|e| {
            e.unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with(&format!("{n}-"))
        });
        assert!(found, "screenshot {n} missing in {}", shots.display());
    }
}
