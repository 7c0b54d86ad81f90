//! The tenant policy, answered by the components compiled from
//! `components/`: each refusal of the reference set with its reply code,
//! a tenant that replaces one function, hostile components, deploys that
//! must be refused, and swaps under load.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::harness::swaks_plain as swaks;
use crate::harness::*;

/// The first refusal line swaks printed (`<~* 550 5.7.1 ...`), as "550 5.7.1".
fn refusal(transcript: &str) -> String {
    transcript
        .lines()
        .find_map(|l| l.strip_prefix("<~* ").or_else(|| l.strip_prefix("<** ")))
        .map(|l| l.split(' ').take(2).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| format!("no refusal in:\n{transcript}"))
}

fn tenant(id: &str, functions: &str, rules: &str) -> String {
    format!("\n[[tenants]]\nid = \"{id}\"\n{functions}\n\n[tenants.rules]\n{rules}\n")
}

/// A `functions = [...]` line: (name, component) in call order.
fn functions(list: &[(&str, String)]) -> String {
    let items: Vec<String> = list
        .iter()
        .map(|(name, component)| format!("{{ name = \"{name}\", component = \"{component}\" }}"))
        .collect();
    format!("functions = [{}]", items.join(", "))
}

fn users(login: &str) -> String {
    format!("[tenants.rules.users]\n\"{login}\" = \"{}\"\n", demo_hash())
}

/// Runs `mailwit tenant ...` against the server's admin listener.
fn admin(s: &Server, args: &[&str]) -> (bool, String) {
    s.cli("tenant", args)
}

/// Deploys the sandbox router as the default tenant's (acme's) `router`.
fn deploy_sandbox_router(s: &Server) -> (bool, String) {
    let path = component("router_sandbox");
    admin(s, &["deploy", "acme", "router", path.to_str().unwrap()])
}

/// IBM's client allow-list in both directions: an address inside a listed
/// range logs in; with `network.default = "deny"` and no range, none does
/// (IBM's default for a new instance). The ranges' arithmetic, IPv4 and
/// IPv6, is the auth component's unit test.
#[test]
fn an_address_inside_the_allowed_range_logs_in_and_deny_refuses_until_one_is_listed() {
    let open = tenant(
        "loopnet",
        STOCK_FUNCTIONS,
        &format!(
            "[tenants.rules.network]\nallowed = [\"10.0.0.0/8\", \"127.0.0.0/8\", \"2001:db8::/32\"]\ndefault = \"deny\"\n[tenants.rules.senders]\naddresses = [\"in@loopnet.example\"]\n{}",
            users("in@loopnet.example")
        ),
    );
    let shut = tenant(
        "shut",
        STOCK_FUNCTIONS,
        &format!(
            "[tenants.rules.network]\ndefault = \"deny\"\n{}",
            users("out@shut.example")
        ),
    );
    let s = Server::start_with(Options {
        extra: open + &shut,
        ..Options::default()
    });
    let out = swaks(
        &s,
        "in@loopnet.example",
        PASSWORD,
        "in@loopnet.example",
        "a@example.net",
        &[],
    );
    assert!(queue_id(&out).is_some(), "not accepted:\n{out}");
    assert_eq!(
        refusal(&swaks(
            &s,
            "out@shut.example",
            PASSWORD,
            "out@shut.example",
            "a@example.net",
            &[]
        )),
        "535 5.7.1"
    );
}

/// A tenant whose only function is `builtin:stock` (the five reference
/// functions in one component) over SMTP: accepted with the Infobip headers
/// extracted, and the five's refusals. (That it decides exactly as the
/// five do, branch by branch, is the server's unit test.)
#[test]
fn a_tenant_on_the_one_stock_component_is_answered_as_by_the_five() {
    let login = "ops@one.example";
    let one = tenant(
        "one",
        &functions(&[("stock", "builtin:stock".into())]),
        &format!(
            "revision = \"one-3\"\n[tenants.rules.senders]\naddresses = [\"{login}\"]\n{}",
            users(login)
        ),
    );
    let s = Server::start_with(Options {
        extra: one,
        ..Options::default()
    });
    let headers = ["--header", "X-IB-bulk-id: bulk-9"];
    let out = swaks(&s, login, PASSWORD, login, "a@example.net", &headers);
    let id = queue_id(&out).unwrap_or_else(|| panic!("not accepted:\n{out}"));
    let m = s.spooled(&id).meta;
    for kv in [("bulkId", "bulk-9"), ("rulesRevision", "one-3")] {
        let kv = (kv.0.to_string(), kv.1.to_string());
        assert!(m.metadata.contains(&kv), "{kv:?} missing: {:?}", m.metadata);
    }
    assert_eq!(m.remove_headers, ["X-IB-bulk-id"]);
    assert_eq!(m.route.to_string(), "relay:default");
    assert!(m.policy.ends_with(" stock@1"), "{}", m.policy);
    let refused = |login: &str, password: &str, sender: &str, more: &[&str]| {
        refusal(&swaks(&s, login, password, sender, "a@example.net", more))
    };
    assert_eq!(refused(login, "wrong", login, &[]), "535 5.7.8");
    assert_eq!(
        refused(login, PASSWORD, "x@elsewhere.example", &[]),
        "550 5.7.1"
    );
    let from = ["--header", "From: x@elsewhere.example"];
    assert_eq!(refused(login, PASSWORD, login, &from), "550 5.7.1");
    let csv = ["--header", "X-IB-notify-content-type: text/csv"];
    assert_eq!(refused(login, PASSWORD, login, &csv), "550 5.6.0");
    // The CLI deploys an embedded component by name. Appended after
    // `stock`, a router decides nothing: stock's route comes first.
    let (ok, out) = s.cli(
        "tenant",
        &["deploy", "one", "router", "builtin:router-sandbox"],
    );
    assert!(ok, "{out}");
    let out = swaks(&s, login, PASSWORD, login, "a@example.net", &[]);
    let id = queue_id(&out).unwrap_or_else(|| panic!("not accepted:\n{out}"));
    let m = s.spooled(&id).meta;
    assert_eq!(m.route.to_string(), "relay:default");
    assert!(m.policy.ends_with(" stock@1 router@1"), "{}", m.policy);
    let (ok, out) = s.cli("tenant", &["deploy", "one", "x", "builtin:nope"]);
    assert!(
        !ok && out.contains("no builtin component \"nope\""),
        "{out}"
    );
}

#[test]
fn reference_functions_accept_and_refuse_with_their_codes() {
    let strict = tenant(
        "strict",
        STOCK_FUNCTIONS,
        &format!(
            "[tenants.rules.senders]\naddresses = [\"ops@strict.example\"]\n[tenants.rules.message]\nmax-size = 2000\nrefuse-attachments = true\n{}",
            users("ops@strict.example")
        ),
    );
    let walled = tenant(
        "walled",
        STOCK_FUNCTIONS,
        &format!(
            "[tenants.rules.network]\nallowed = [\"10.0.0.0/8\", \"2001:db8::/32\"]\n{}",
            users("w@walled.example")
        ),
    );
    let s = Server::start_with(Options {
        extra: strict + &walled,
        ..Options::default()
    });
    let before = s.spool().len();

    // Accepted, with the Infobip headers extracted and removed.
    let out = swaks(
        &s,
        LOGIN,
        PASSWORD,
        SENDER,
        "a@example.net",
        &[
            "--header",
            "X-IB-bulk-id: bulk-7",
            "--header",
            "X-IB-notify-url: http://127.0.0.1:9/dlr",
            "--header",
            "X-IB-notify-content-type: application/xml",
            "--header",
            "X-IB-callback-data: {\"k\":1}",
            "--header",
            "X-IB-intermediate-report: true",
        ],
    );
    let id = queue_id(&out).unwrap_or_else(|| panic!("not accepted:\n{out}"));
    let m = s.spooled(&id).meta;
    for (k, v) in [
        ("bulkId", "bulk-7"),
        ("notifyUrl", "http://127.0.0.1:9/dlr"),
        ("notifyContentType", "application/xml"),
        ("callbackData", "{\"k\":1}"),
        ("intermediateReport", "true"),
        ("rulesRevision", "acme-1"),
    ] {
        assert!(
            m.metadata.contains(&(k.to_string(), v.to_string())),
            "{k} missing from {:?}",
            m.metadata
        );
    }
    assert!(
        m.remove_headers.iter().any(|h| h == "X-IB-bulk-id"),
        "{:?}",
        m.remove_headers
    );
    assert_eq!(m.route.to_string(), "relay:default");
    assert!(m.policy.contains("router@1"), "{}", m.policy);

    // Each refusal, with its documented reply.
    assert_eq!(
        refusal(&swaks(&s, LOGIN, "wrong", SENDER, "a@example.net", &[])),
        "535 5.7.8"
    );
    assert_eq!(
        refusal(&swaks(
            &s,
            "nobody@x.example",
            PASSWORD,
            SENDER,
            "a@example.net",
            &[]
        )),
        "535 5.7.8"
    );
    assert_eq!(
        refusal(&swaks(
            &s,
            LOGIN,
            PASSWORD,
            "x@elsewhere.example",
            "a@example.net",
            &[]
        )),
        "550 5.7.1"
    );
    assert_eq!(
        refusal(&swaks(
            &s,
            "w@walled.example",
            PASSWORD,
            "w@walled.example",
            "a@example.net",
            &[]
        )),
        "535 5.7.1"
    );
    // Infobip: To/Cc in the message must be RCPT TO recipients.
    assert_eq!(
        refusal(&swaks(
            &s,
            LOGIN,
            PASSWORD,
            SENDER,
            "a@example.net",
            &["--header", "Cc: hidden@example.net"]
        )),
        "550 5.7.1"
    );
    assert_eq!(
        refusal(&swaks(
            &s,
            LOGIN,
            PASSWORD,
            SENDER,
            "a@example.net",
            &["--header", "X-IB-notify-content-type: text/csv"]
        )),
        "550 5.6.0"
    );
    // IBM-style caps on the strict tenant.
    let big = "x".repeat(3000);
    assert_eq!(
        refusal(&swaks(
            &s,
            "ops@strict.example",
            PASSWORD,
            "ops@strict.example",
            "a@example.net",
            &["--body", &big]
        )),
        "552 5.3.4"
    );
    let file = write_file(s.dir.path(), "report.pdf", b"%PDF-1.4 tiny");
    let file = file.to_str().unwrap();
    assert_eq!(
        refusal(&swaks(
            &s,
            "ops@strict.example",
            PASSWORD,
            "ops@strict.example",
            "a@example.net",
            &["--attach", file]
        )),
        "550 5.6.1"
    );
    assert_eq!(
        refusal(&swaks(
            &s,
            "ops@strict.example",
            PASSWORD,
            "other@strict.example",
            "a@example.net",
            &[]
        )),
        "550 5.7.1"
    );
    assert_eq!(s.spool().len(), before + 1, "a refused message was queued");
}

#[test]
fn python_smtplib_with_an_api_key_login() {
    let keys = tenant(
        "keys",
        STOCK_FUNCTIONS,
        &format!(
            "[tenants.rules.api-keys]\nk1 = \"{}\"\n[tenants.rules.senders]\ndomains = [\"keys.example\"]\n",
            api_key_hash()
        ),
    );
    let s = Server::start_with(Options {
        extra: keys,
        ..Options::default()
    });
    let script = r#"
import smtplib, sys
port, key = sys.argv[1:3]
with smtplib.SMTP("127.0.0.1", int(port)) as c:
    c.ehlo("client.test")
    c.login("App", key)
    c.sendmail("app@keys.example", ["a@example.net"], "Subject: key\r\nTo: a@example.net\r\n\r\nvia API key\r\n")
    try:
        c.sendmail("app@elsewhere.example", ["a@example.net"], "Subject: no\r\n\r\nx\r\n")
    except smtplib.SMTPSenderRefused as e:
        print("refused", e.smtp_code, e.smtp_error.decode())
"#;
    let (ok, out) = run(Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(s.port("plain").to_string())
        .arg(API_KEY));
    assert!(ok, "{out}");
    assert!(out.contains("refused 550 5.7.1"), "{out}");
    let spool = s.spool();
    assert_eq!(spool.len(), 1);
    assert_eq!(
        (spool[0].meta.tenant.as_str(), spool[0].meta.login.as_str()),
        ("keys", "App")
    );
}

const API_KEY: &str = "k1.9d2f5c0e8b7a";

/// A hash of API_KEY, made with the binary's own hash-password command.
fn api_key_hash() -> String {
    let (ok, out) =
        run(Command::new(env!("CARGO_BIN_EXE_mailwit")).args(["hash-password", API_KEY]));
    assert!(ok, "{out}");
    out.trim().to_string()
}

#[test]
fn a_tenant_can_replace_only_its_router() {
    let staging = tenant(
        "staging",
        &functions(&[
            ("auth", "builtin:auth".into()),
            ("sender", "builtin:sender".into()),
            ("router", component("router_sandbox").display().to_string()),
        ]),
        &format!(
            "[tenants.rules.senders]\ndomains = [\"staging.example\"]\n{}",
            users("qa@staging.example")
        ),
    );
    let s = Server::start_with(Options {
        extra: staging,
        ..Options::default()
    });
    let out = swaks(
        &s,
        "qa@staging.example",
        PASSWORD,
        "qa@staging.example",
        "a@example.net",
        &[],
    );
    let id = queue_id(&out).unwrap_or_else(|| panic!("{out}"));
    assert_eq!(s.spooled(&id).meta.route.to_string(), "sandbox");
    // The stock sender check is still in force.
    assert_eq!(
        refusal(&swaks(
            &s,
            "qa@staging.example",
            PASSWORD,
            "qa@prod.example",
            "a@example.net",
            &[]
        )),
        "550 5.7.1"
    );
    // And the other tenant still relays.
    let out = swaks(&s, LOGIN, PASSWORD, SENDER, "a@example.net", &[]);
    assert_eq!(
        s.spooled(&queue_id(&out).unwrap()).meta.route.to_string(),
        "relay:default"
    );
}

/// Tenant `evil`: the stock authentication (login `mallory@evil.example`)
/// and the hostile component, in `mode`.
fn evil_tenant(mode: &str) -> String {
    hostile_tenant("evil", "mallory@evil.example", mode)
}

/// A tenant whose check-sender is the hostile component in `mode`.
fn hostile_tenant(id: &str, login: &str, mode: &str) -> String {
    tenant(
        id,
        &functions(&[
            ("auth", "builtin:auth".into()),
            ("hostile", component("hostile").display().to_string()),
        ]),
        &format!(
            "[tenants.rules.hostile]\nmode = \"{mode}\"\n{}",
            users(login)
        ),
    )
}

/// New rules for `evil`: the hostile component in `mode`.
fn set_evil_mode(s: &Server, mode: &str) {
    let p = write_file(
        s.dir.path(),
        &format!("evil-{mode}.toml"),
        format!(
            "[hostile]\nmode = \"{mode}\"\n[users]\n\"mallory@evil.example\" = \"{}\"\n",
            demo_hash()
        )
        .as_bytes(),
    );
    let (ok, out) = admin(s, &["rules", "evil", p.to_str().unwrap()]);
    assert!(ok, "{out}");
}

#[test]
fn hostile_components_cost_their_own_transaction_a_451() {
    let evil = evil_tenant("none");
    let s = Server::start_with(Options {
        extra: evil,
        runtime: "deadline_ms = 200",
        ..Options::default()
    });
    // A well-behaved tenant keeps submitting the whole time.
    let stop = Arc::new(AtomicBool::new(false));
    let good = {
        let (stop, port) = (stop.clone(), s.port("plain"));
        let hash_login = LOGIN;
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let mut r = Raw::open(port);
                r.cmd("EHLO good.test");
                assert!(
                    r.cmd(&format!(
                        "AUTH PLAIN {}",
                        base64_plain(hash_login, PASSWORD)
                    ))
                    .starts_with("235")
                );
                assert!(r.cmd(&format!("MAIL FROM:<{SENDER}>")).starts_with("250"));
                assert!(r.cmd("RCPT TO:<a@example.net>").starts_with("250"));
                assert!(r.cmd("DATA").starts_with("354"));
                let reply = r.cmd("Subject: fine\r\n\r\nok\r\n.");
                assert!(
                    reply.starts_with("250 2.0.0"),
                    "good tenant disturbed: {reply}"
                );
                n += 1;
            }
            n
        })
    };
    for mode in ["loop", "memory", "panic", "recursion", "oversize"] {
        set_evil_mode(&s, mode);
        let mut r = Raw::logged_in_as(&s, "mallory@evil.example");
        let start = std::time::Instant::now();
        let reply = r.cmd("MAIL FROM:<m@evil.example>");
        assert!(reply.starts_with("451 4.3.0"), "{mode}: {reply}");
        // Only this transaction failed: the session goes on.
        assert!(r.cmd("NOOP").starts_with("250"), "{mode}: session broken");
        eprintln!("{mode}: 451 after {:?}", start.elapsed());
    }
    set_evil_mode(&s, "none");
    let mut r = Raw::logged_in_as(&s, "mallory@evil.example");
    assert!(
        r.cmd("MAIL FROM:<m@evil.example>").starts_with("250"),
        "host unhealthy after the hostile calls"
    );
    stop.store(true, Ordering::Relaxed);
    let sent = good.join().expect("the good tenant's client failed");
    assert!(sent > 0);
    let metrics = s.metrics();
    assert!(metrics.contains("mailwit_policy_deadline_hits_total{tenant=\"evil\",function=\"hostile\",kind=\"deadline\"} 1"), "{metrics}");
    for kind in ["memory", "trap", "oversize"] {
        assert!(
            metrics.contains(&format!("function=\"hostile\",kind=\"{kind}\"")),
            "{kind}: {metrics}"
        );
    }
}

/// A component asks for the session when it needs it
/// (`host.current-session`): each call sees its own transaction's session,
/// also on a warm instance that served another session just before.
#[test]
fn components_see_the_session_of_their_own_transaction() {
    let s = Server::start_with(Options {
        extra: evil_tenant("session"),
        ..Options::default()
    });
    let login = "mallory@evil.example";
    let mut sessions: Vec<Raw> = ["one.test", "two.test"]
        .iter()
        .map(|helo| {
            let mut r = Raw::open(s.port("plain"));
            r.cmd(&format!("EHLO {helo}"));
            let auth = r.cmd(&format!("AUTH PLAIN {}", base64_plain(login, PASSWORD)));
            assert!(auth.starts_with("235"), "{auth}");
            r
        })
        .collect();
    // Alternating, so that the instances serve both sessions in turn.
    for round in 0..4 {
        for (r, helo) in sessions.iter_mut().zip(["one.test", "two.test"]) {
            let reply = r.cmd("MAIL FROM:<m@evil.example>");
            assert_eq!(
                reply.trim_end(),
                format!(
                    "450 4.7.1 session login={login} tenant=evil listener=plain tls=false helo={helo} ip=127.0.0.1"
                ),
                "round {round}"
            );
        }
    }
}

/// A warm instance serves several calls of one function version and rules
/// version; a new rules version gets new ones;
/// `instance_reuse_calls = 1` turns reuse off.
#[test]
fn warm_instances_are_reused_within_one_version_only() {
    let evil = evil_tenant("count");
    let s = Server::start_with(Options {
        extra: evil,
        ..Options::default()
    });
    let calls = |r: &mut Raw, n: usize| -> Vec<u32> {
        (0..n)
            .map(|_| {
                let reply = r.cmd("MAIL FROM:<m@evil.example>");
                assert!(reply.starts_with("450 4.7.1 call "), "{reply}");
                reply.trim_end()["450 4.7.1 call ".len()..].parse().unwrap()
            })
            .collect()
    };
    let mut r = Raw::logged_in_as(&s, "mallory@evil.example");
    let first = calls(&mut r, 12);
    // Each async worker thread keeps its own instance; with fewer workers
    // than calls, one of them served more than one.
    assert!(
        first.iter().max().unwrap() >= &2,
        "no instance served several calls: {first:?}"
    );
    assert!(first.iter().all(|&n| n <= 12), "{first:?}");
    set_evil_mode(&s, "count");
    // New rules, new instances: counting starts again.
    assert_eq!(calls(&mut r, 1), vec![1]);

    // An operator who wants a fresh instance for every call.
    let s = Server::start_with(Options {
        extra: evil_tenant("count"),
        runtime: "instance_reuse_calls = 1",
        ..Options::default()
    });
    let mut r = Raw::logged_in_as(&s, "mallory@evil.example");
    assert_eq!(calls(&mut r, 4), vec![1; 4]);
}

#[test]
fn a_deploy_that_does_not_match_the_world_is_refused() {
    let s = Server::start();
    let (ok, out) = admin(
        &s,
        &[
            "deploy",
            "acme",
            "router",
            component("mismatch").to_str().unwrap(),
        ],
    );
    assert!(!ok, "{out}");
    assert!(
        out.contains("mailwit:policy/route@0.2.0") && out.contains("wrong type"),
        "{out}"
    );
    // Built against the retired 0.1.0 contract: refused by the import
    // this host no longer provides.
    let old = component("contract_v0");
    let (ok, out) = admin(&s, &["deploy", "acme", "router", old.to_str().unwrap()]);
    assert!(!ok && out.contains("mailwit:policy/host@0.1.0"), "{out}");
    let not_wasm = write_file(s.dir.path(), "junk.wasm", b"\0asm junk");
    let (ok, out) = admin(
        &s,
        &["deploy", "acme", "router", not_wasm.to_str().unwrap()],
    );
    assert!(
        !ok && out.contains("not a valid WebAssembly component"),
        "{out}"
    );
    // For people, a table: a header, then one row per tenant.
    let (ok, out) = admin(&s, &["list"]);
    assert!(ok, "{out}");
    let mut lines = out.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["TENANT", "RULES", "GENERATION", "FUNCTIONS"],
        "{out}"
    );
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(row[0], "acme", "{out}");
    assert!(row.contains(&"router@1"), "{out}");
    // For scripts, JSON.
    let (ok, out) = admin(&s, &["list", "--json"]);
    assert!(ok);
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(active_version(&list[0]["functions"], "router"), 1, "{out}");
    // Mail still flows on the running version.
    let out = swaks(&s, LOGIN, PASSWORD, SENDER, "a@example.net", &[]);
    assert!(queue_id(&out).is_some(), "{out}");
}

#[test]
fn swap_and_rollback_under_load_keep_every_transaction_on_one_version() {
    let s = Server::start();
    let port = s.port("plain");
    let stop = Arc::new(AtomicBool::new(false));
    let ids = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, ids) = (stop.clone(), ids.clone());
            std::thread::spawn(move || {
                let mut r = Raw::open(port);
                r.cmd("EHLO load.test");
                assert!(
                    r.cmd(&format!("AUTH PLAIN {}", base64_plain(LOGIN, PASSWORD)))
                        .starts_with("235")
                );
                while !stop.load(Ordering::Relaxed) {
                    assert!(r.cmd(&format!("MAIL FROM:<{SENDER}>")).starts_with("250"));
                    assert!(r.cmd("RCPT TO:<a@example.net>").starts_with("250"));
                    assert!(r.cmd("DATA").starts_with("354"));
                    let reply = r.cmd("Subject: load\r\nX-IB-bulk-id: b\r\n\r\nx\r\n.");
                    ids.lock().unwrap().push(
                        queue_id(&reply).unwrap_or_else(|| panic!("transaction failed: {reply}")),
                    );
                }
            })
        })
        .collect();
    let wait_for_more = || {
        let n = ids.lock().unwrap().len();
        wait_for("20 more transactions", || {
            ids.lock().unwrap().len() >= n + 20
        });
    };
    let rules2 = write_file(
        s.dir.path(),
        "acme-2.toml",
        format!("revision = \"acme-2\"\n[users]\n\"{LOGIN}\" = \"{}\"\n[senders]\ndomains = [\"acme.example\"]\n", demo_hash()).as_bytes(),
    );
    wait_for_more();
    let (ok, out) = deploy_sandbox_router(&s);
    assert!(ok, "{out}");
    wait_for_more();
    let (ok, out) = admin(&s, &["rules", "acme", rules2.to_str().unwrap()]);
    assert!(ok, "{out}");
    wait_for_more();
    let (ok, out) = admin(&s, &["rollback", "acme", "router"]);
    assert!(ok && out.contains("\"active_version\": 1"), "{out}");
    wait_for_more();
    let (ok, out) = admin(&s, &["rollback", "acme", "rules"]);
    assert!(ok, "{out}");
    wait_for_more();
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().expect("a client saw a failed transaction");
    }
    // Every message: the router that routed it and the rules its inspector
    // read belong to the version the host says answered the transaction.
    let mut seen = std::collections::BTreeSet::new();
    for m in s.spool() {
        let p = &m.meta.policy;
        let router2 = p.contains("router@2");
        assert_eq!(
            m.meta.route.to_string() == "sandbox",
            router2,
            "route {} under {p}",
            m.meta.route
        );
        let revision = m
            .meta
            .metadata
            .iter()
            .find(|(k, _)| k == "rulesRevision")
            .map(|(_, v)| v.clone());
        let rules2 = p.contains("rules@2");
        assert_eq!(
            revision.as_deref(),
            Some(if rules2 { "acme-2" } else { "acme-1" }),
            "{p}"
        );
        seen.insert((router2, rules2));
    }
    // All four combinations the swaps went through were seen: each stage
    // lasted at least 20 transactions that started after its swap.
    assert_eq!(seen.len(), 4, "versions seen: {seen:?}");
}

#[test]
fn deployed_versions_survive_a_restart_without_recompiling() {
    let mut s = Server::start();
    let (ok, out) = deploy_sandbox_router(&s);
    assert!(ok, "{out}");
    // The first start compiled (the check below can see compilations).
    assert!(s.log_text().contains("component.compiled"));
    let before = s.log.lock().unwrap().len();
    s.restart();
    let after: Vec<String> = s.log.lock().unwrap()[before..].to_vec();
    assert!(
        !after.iter().any(|l| l.contains("component.compiled")),
        "recompiled after restart:\n{}",
        after.join("\n")
    );
    assert!(
        after
            .iter()
            .any(|l| l.contains("tenant.loaded") && l.contains("router@2")),
        "{}",
        after.join("\n")
    );
    let out = swaks(&s, LOGIN, PASSWORD, SENDER, "a@example.net", &[]);
    assert_eq!(
        s.spooled(&queue_id(&out).unwrap()).meta.route.to_string(),
        "sandbox"
    );
    // And the history survived too: rollback goes to version 1.
    let (ok, out) = admin(&s, &["rollback", "acme", "router"]);
    assert!(ok && out.contains("\"active_version\": 1"), "{out}");
}

/// A stored version that no longer links (a component built against an
/// older contract, say) stops the server at start-up with an error that
/// names it, rather than a tenant running without one of its functions.
#[test]
fn a_stored_version_that_does_not_link_stops_start_up_naming_it() {
    let mut s = Server::start();
    let (ok, out) = deploy_sandbox_router(&s);
    assert!(ok && out.contains("\"version\": 2"), "{out}");
    s.kill9();
    let stored = s.data_dir().join("tenants/acme/functions/router/2.wasm");
    assert!(stored.exists(), "{}", stored.display());
    std::fs::copy(component("mismatch"), &stored).unwrap();
    let (status, err) = s.serve_failing();
    assert!(!status.success(), "{err}");
    assert!(
        err.contains("loading tenant acme")
            && err.contains("function router version 2")
            && err.contains("mailwit:policy/route@0.2.0"),
        "{err}"
    );
}

#[test]
fn tls_server_name_names_the_tenant_and_no_login_is_in_two() {
    let shared = "shared@login.example";
    let sni = tenant(
        "sni",
        STOCK_FUNCTIONS,
        &format!(
            "[tenants.rules.tls]\nserver-names = [\"mail.sni.example\"]\n[tenants.rules.senders]\ndomains = [\"sni.example\"]\n{}",
            users(shared)
        ),
    );
    let other = tenant("other", STOCK_FUNCTIONS, "");
    let s = Server::start_with(Options {
        extra: sni.clone() + &other,
        ..Options::default()
    });
    let port = s.port("submission").to_string();
    let send = |login: &str, extra: &[&str]| {
        let (_, out) = run(Command::new("swaks")
            .args([
                "--server",
                "127.0.0.1",
                "--port",
                &port,
                "--tls",
                "--auth",
                "PLAIN",
            ])
            .args(["--auth-user", login, "--auth-password", PASSWORD])
            .args(["--from", "news@sni.example", "--to", "a@example.net"])
            .args(extra));
        out
    };
    // The server name names the tenant: acme's login is not sni's.
    assert_eq!(
        refusal(&send(LOGIN, &["--tls-sni", "mail.sni.example"])),
        "535 5.7.8"
    );
    let out = send(shared, &["--tls-sni", "mail.sni.example"]);
    let id = queue_id(&out).unwrap_or_else(|| panic!("{out}"));
    assert_eq!(s.spooled(&id).meta.tenant, "sni");
    // A login is in one tenant only (as IBM requires): another tenant's
    // rules cannot claim it.
    let rules = write_file(
        s.dir.path(),
        "claim.toml",
        users(shared).replace("tenants.rules.", "").as_bytes(),
    );
    let (ok, out) = admin(&s, &["rules", "other", rules.to_str().unwrap()]);
    assert!(!ok && out.contains("exists in another tenant"), "{out}");
    // Nor can a configuration give one login to two tenants: the tenant
    // that would share it is not set up, and the start-up says why.
    let mut s = s;
    s.kill9();
    std::fs::remove_dir_all(s.data_dir().join("tenants/other")).unwrap();
    let twice = tenant("other", STOCK_FUNCTIONS, &users(shared));
    write_config(
        s.dir.path(),
        &Options {
            extra: sni + &twice,
            ..Options::default()
        },
    );
    let (status, err) = s.serve_failing();
    assert!(!status.success(), "{err}");
    assert!(
        err.contains("tenant other") && err.contains("exists in another tenant"),
        "{err}"
    );
    assert!(!s.data_dir().join("tenants/other").exists());
}

/// New rules for `evil`: `[hostile]` and `[runtime]` tables as given.
fn set_evil_rules(s: &Server, name: &str, hostile: &str, runtime: &str) {
    let p = write_file(
        s.dir.path(),
        &format!("evil-{name}.toml"),
        format!(
            "[hostile]\n{hostile}\n[runtime]\n{runtime}\n[users]\n\"mallory@evil.example\" = \"{}\"\n",
            demo_hash()
        )
        .as_bytes(),
    );
    let (ok, out) = admin(s, &["rules", "evil", p.to_str().unwrap()]);
    assert!(ok, "{out}");
}

fn evil_mail_from(s: &Server) -> String {
    let mut r = Raw::logged_in_as(s, "mallory@evil.example");
    r.cmd("MAIL FROM:<m@evil.example>")
}

#[test]
fn a_tenants_rules_set_its_own_deadline_and_memory() {
    let s = Server::start_with(Options {
        extra: evil_tenant("none"),
        ..Options::default()
    });
    // Deadlines and traps (memory among them) are counted apart.
    let hits = |kind: &str| {
        let metric = match kind {
            "deadline" => "mailwit_policy_deadline_hits_total",
            _ => "mailwit_policy_traps_total",
        };
        let needle = format!("{metric}{{tenant=\"evil\",function=\"hostile\",kind=\"{kind}\"}} ");
        s.metrics()
            .lines()
            .find_map(|l| l.strip_prefix(&needle).map(|n| n.parse::<u64>().unwrap()))
            .unwrap_or(0)
    };
    // 400 ms of work: over the server's 250 ms default...
    set_evil_rules(&s, "busy", "mode = \"busy\"\nbusy-ms = 400", "");
    assert!(evil_mail_from(&s).starts_with("451 4.3.0"));
    assert_eq!(hits("deadline"), 1);
    // ...inside the tenant's own 3 s...
    set_evil_rules(
        &s,
        "busy-3s",
        "mode = \"busy\"\nbusy-ms = 400",
        "deadline-ms = 3000",
    );
    let reply = evil_mail_from(&s);
    assert!(reply.starts_with("250"), "{reply}");
    // ...and 100 ms is over a tenant's 50 (a session logged in before: the
    // login's own password check would not fit in 50 ms, and the next
    // transaction takes the new rules).
    let mut r = Raw::logged_in_as(&s, "mallory@evil.example");
    set_evil_rules(
        &s,
        "busy-50",
        "mode = \"busy\"\nbusy-ms = 100",
        "deadline-ms = 50",
    );
    assert!(r.cmd("MAIL FROM:<m@evil.example>").starts_with("451 4.3.0"));
    assert_eq!(hits("deadline"), 2);

    // 24 MiB: over the 16 MiB default, inside a tenant's 48 MiB.
    set_evil_rules(&s, "alloc", "mode = \"alloc\"\nalloc-mib = 24", "");
    assert!(evil_mail_from(&s).starts_with("451 4.3.0"));
    assert_eq!(hits("memory"), 1);
    set_evil_rules(
        &s,
        "alloc-48",
        "mode = \"alloc\"\nalloc-mib = 24",
        "memory-bytes = 50331648",
    );
    let reply = evil_mail_from(&s);
    assert!(reply.starts_with("250"), "{reply}");
    // A tenant cannot raise itself past the engine's 64 MiB.
    set_evil_rules(
        &s,
        "alloc-1g",
        "mode = \"alloc\"\nalloc-mib = 80",
        "memory-bytes = 1073741824",
    );
    assert!(evil_mail_from(&s).starts_with("451 4.3.0"));
    assert_eq!(hits("memory"), 2);
}

/// Calls that compute for a while, or use blocking WASI I/O, run on the
/// async workers (async calls, yielding at each epoch tick); the answers
/// stay the component's.
#[test]
fn slow_or_stderr_writing_components_give_the_same_answers() {
    let s = Server::start_with(Options {
        extra: evil_tenant("none"),
        ..Options::default()
    });
    // Each call computes for 20 ms, yielding at the epoch ticks on its way.
    set_evil_rules(&s, "busy", "mode = \"busy\"\nbusy-ms = 20", "");
    let mut r = Raw::logged_in_as(&s, "mallory@evil.example");
    for k in 0..5 {
        let reply = r.cmd("MAIL FROM:<m@evil.example>");
        assert!(reply.starts_with("250"), "call {k}: {reply}");
        assert!(r.cmd("RSET").starts_with("250"));
    }
    // Blocking WASI I/O (stderr) on an async worker: answered as the
    // component said, no failure counted, no panic printed.
    set_evil_rules(&s, "stderr", "mode = \"stderr\"", "");
    let mut r = Raw::logged_in_as(&s, "mallory@evil.example");
    for k in 0..3 {
        let reply = r.cmd("MAIL FROM:<m@evil.example>");
        assert_eq!(reply, "450 4.7.1 wrote to stderr\r\n", "call {k}");
    }
    assert!(!s.metrics().contains("function=\"hostile\",kind="));
    let log = s.log_text();
    assert!(!log.contains("panicked"), "a panic was printed: {log}");
}

#[test]
fn warm_instances_are_never_shared_across_tenants() {
    // Two tenants deploy the same component file: one compiled module, but
    // each tenant's calls count on instances of its own.
    let eve = hostile_tenant("evil2", "eve@evil2.example", "count");
    let s = Server::start_with(Options {
        extra: format!("{}{eve}", evil_tenant("count")),
        ..Options::default()
    });
    let mut sessions = [
        Raw::logged_in_as(&s, "mallory@evil.example"),
        Raw::logged_in_as(&s, "eve@evil2.example"),
    ];
    let mut seen = [Vec::new(), Vec::new()];
    for _ in 0..8 {
        for (r, seen) in sessions.iter_mut().zip(seen.iter_mut()) {
            let reply = r.cmd("MAIL FROM:<m@evil.example>");
            let n: u32 = reply
                .trim_end()
                .strip_prefix("450 4.7.1 call ")
                .unwrap_or_else(|| panic!("{reply}"))
                .parse()
                .unwrap();
            seen.push(n);
        }
    }
    // Each warm instance counts its own calls, so a tenant's counts are
    // runs 1, 2, 3, ... one per instance it used. Had an instance served
    // both tenants, each would see gaps: a 3 with no 2 before it, say.
    for counts in &seen {
        assert!(*counts.iter().max().unwrap() <= 8, "{seen:?}");
        for v in 2..=8 {
            let at = |v| counts.iter().filter(|&&n| n == v).count();
            assert!(
                at(v) <= at(v - 1),
                "call {v} without call {}: {seen:?}",
                v - 1
            );
        }
    }
}

#[test]
fn a_components_refusal_is_checked_before_it_reaches_the_client() {
    let s = Server::start_with(Options {
        extra: evil_tenant("none"),
        ..Options::default()
    });
    let cases = [
        // A valid refusal passes as given.
        ("550", "5.7.1", "not from here", "550 5.7.1 not from here"),
        ("421", "4.7.0", "go away", "421 4.7.0 go away"),
        // Control characters are dropped: no line can be injected.
        (
            "550",
            "5.7.1",
            "no\\r\\n250 2.0.0 ok",
            "550 5.7.1 no250 2.0.0 ok",
        ),
        // An empty text gets one.
        ("554", "5.7.1", "", "554 5.7.1 Rejected by policy"),
        // Not a refusal, a class that does not match, or a malformed
        // enhanced code: the component failed, the transaction gets 451.
        ("250", "2.0.0", "sure", "451 4.3.0"),
        ("550", "4.7.1", "mixed", "451 4.3.0"),
        ("550", "5.x.1", "bad", "451 4.3.0"),
        ("999", "9.9.9", "odd", "451 4.3.0"),
    ];
    for (i, (code, status, text, want)) in cases.iter().enumerate() {
        set_evil_rules(
            &s,
            &format!("reply-{i}"),
            &format!("mode = \"reply\"\ncode = {code}\nstatus = \"{status}\"\ntext = \"{text}\""),
            "",
        );
        let reply = evil_mail_from(&s);
        assert!(reply.starts_with(want), "{code} {status} {text:?}: {reply}");
        assert!(!reply.trim_end().contains(['\r', '\n']), "{reply:?}");
    }
    let metrics = s.metrics();
    assert!(
        metrics.contains(
            "mailwit_policy_traps_total{tenant=\"evil\",function=\"hostile\",kind=\"invalid_reply\"} 4"
        ),
        "{metrics}"
    );
}

/// Infobip (seed 000): "you must use one of your Infobip verified domains
/// (or registered senders)", set in the From field a person sees. The
/// stock content function checks every `From:` address against the same
/// registered senders and domains as MAIL FROM; `senders.check-from =
/// false` turns it off.
#[test]
fn a_from_header_outside_the_registered_senders_is_refused_unless_turned_off() {
    let s = Server::start();
    let forged = ["--header", "From: Support <support@bank.example>"];
    let out = swaks_plain(&s, LOGIN, PASSWORD, SENDER, "a@example.net", &forged);
    assert_eq!(refusal(&out), "550 5.7.1", "{out}");
    assert!(out.contains("support@bank.example"), "{out}");
    // A From: in the verified domain, among other forms of the field.
    let ok = ["--header", "From: \"News, Daily\" <News@Acme.Example>"];
    let out = swaks_plain(&s, LOGIN, PASSWORD, SENDER, "a@example.net", &ok);
    assert!(queue_id(&out).is_some(), "{out}");
    // Turned off by the rule: the forged one passes.
    let rules = write_file(
        s.dir.path(),
        "no-from-check.toml",
        format!(
            "[users]\n\"{LOGIN}\" = \"{}\"\n[senders]\ndomains = [\"acme.example\"]\ncheck-from = false\n",
            demo_hash()
        )
        .as_bytes(),
    );
    let (ok, out) = admin(&s, &["rules", "acme", rules.to_str().unwrap()]);
    assert!(ok, "{out}");
    let out = swaks_plain(&s, LOGIN, PASSWORD, SENDER, "a@example.net", &forged);
    assert!(queue_id(&out).is_some(), "{out}");
}

/// A function that keeps running into its deadline is quarantined: after
/// two hits in a row its tenant's transactions get `451 4.3.0` without
/// running it (the deadline hits stop growing), the quarantine is a log
/// event and a metric, other tenants send as before, and after 5 s one
/// probe runs: its answer ends the quarantine.
#[test]
fn a_function_hitting_its_deadline_in_a_row_is_quarantined_then_probed() {
    let s = Server::start_with(Options {
        extra: evil_tenant("loop"),
        runtime: "deadline_ms = 100",
        // Its 22 refusals must come within the 5 s quarantine: none held.
        limits: "refusal_delay_ms = 0",
        ..Options::default()
    });
    let hits =
        r#"mailwit_policy_deadline_hits_total{tenant="evil",function="hostile",kind="deadline"}"#;
    let skipped =
        r#"mailwit_policy_traps_total{tenant="evil",function="hostile",kind="quarantined"}"#;
    let quarantines = r#"mailwit_policy_quarantines_total{tenant="evil",function="hostile"}"#;
    let mut r = Raw::logged_in_as(&s, "mallory@evil.example");
    for _ in 0..2 {
        let reply = r.cmd("MAIL FROM:<m@evil.example>");
        assert!(reply.starts_with("451 4.3.0"), "{reply}");
    }
    assert_eq!(metric(&s, hits), 2.0);
    assert_eq!(metric(&s, quarantines), 1.0);
    s.wait_log("\"policy.quarantine\"", 1);
    for _ in 0..20 {
        let reply = r.cmd("MAIL FROM:<m@evil.example>");
        assert!(reply.starts_with("451 4.3.0"), "{reply}");
    }
    assert_eq!(metric(&s, hits), 2.0, "a quarantined function ran");
    assert_eq!(metric(&s, skipped), 20.0);
    // Another tenant is not held up (`submit` asserts the 250).
    submit(&s, "someone@example.net", &[]);
    // Fixed (new rules, the same function version): the probe after the
    // quarantine answers, and the function runs again.
    set_evil_mode(&s, "none");
    let mut accepted = false;
    for _ in 0..150 {
        let reply = r.cmd("MAIL FROM:<m@evil.example>");
        if reply.starts_with("250") {
            accepted = true;
            break;
        }
        assert!(reply.starts_with("451 4.3.0"), "{reply}");
        r.cmd("RSET");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(accepted, "the quarantine never ended");
    s.wait_log("\"policy.quarantine_ended\"", 1);
    assert_eq!(metric(&s, hits), 2.0);
}

/// A call still running after a fifth of its deadline is slowed to one
/// tick in four: a looping call with a 1 s deadline (and no CPU share, so
/// only the slowing holds it) still ends at its deadline with a 451, but
/// costs the server about 0.2 s + 0.8 s / 4 of CPU, not the second it
/// would spin unslowed.
#[test]
fn a_call_past_a_fifth_of_its_deadline_is_slowed() {
    let s = Server::start_with(Options {
        extra: evil_tenant("none"),
        runtime: "tenant_cpu_share = 0",
        ..Options::default()
    });
    set_evil_rules(&s, "slowed", "mode = \"loop\"", "deadline-ms = 1000");
    let mut r = Raw::logged_in_as(&s, "mallory@evil.example");
    let cpu = || crate::proc::cpu_seconds(s.pid());
    let before = cpu();
    let reply = r.cmd("MAIL FROM:<m@evil.example>");
    let spent = cpu() - before;
    assert!(reply.starts_with("451 4.3.0"), "{reply}");
    eprintln!("a looping call with a 1 s deadline took {spent:.3} s of server CPU");
    assert!(spent < 0.7, "the loop took {spent:.3} s of server CPU");
}

/// Each tenant's policy CPU time is metered against its share of the
/// machine: a function spinning for 200 ms of wall time per call, with a
/// share of a tenth of the machine, is slowed at each tick, so five calls
/// (a second of wall time) cost the server well under the second of CPU
/// they would take unmetered; the meter counts what it charged and the
/// slowed ticks.
#[test]
fn a_tenants_policy_cpu_is_held_to_its_share() {
    let s = Server::start_with(Options {
        extra: evil_tenant("none"),
        runtime: "tenant_cpu_share = 0.1\ntenant_cpu_burst_ms = 10",
        ..Options::default()
    });
    set_evil_rules(
        &s,
        "busy",
        "mode = \"busy\"\nbusy-ms = 200",
        "deadline-ms = 3000",
    );
    let mut r = Raw::logged_in_as(&s, "mallory@evil.example");
    let cpu = || crate::proc::cpu_seconds(s.pid());
    let before = cpu();
    for _ in 0..5 {
        let reply = r.cmd("MAIL FROM:<m@evil.example>");
        assert!(reply.starts_with("250"), "{reply}");
        r.cmd("RSET");
    }
    let spent = cpu() - before;
    let charged = metric(&s, r#"mailwit_policy_cpu_seconds_total{tenant="evil"}"#);
    let throttled = metric(&s, r#"mailwit_policy_cpu_throttled_total{tenant="evil"}"#);
    eprintln!(
        "server CPU {spent:.3} s, charged to evil {charged:.3} s, throttled ticks {throttled}"
    );
    assert!(
        spent < 0.6,
        "five 200 ms spins took {spent:.3} s of server CPU"
    );
    assert!(charged > 0.0 && charged < 0.5, "charged {charged}");
    assert!(throttled > 0.0);
}
