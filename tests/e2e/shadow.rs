//! Shadow deploys (`tenant deploy --shadow`): a candidate compared with
//! the live set on real traffic, changing nothing, then promoted or
//! dropped.

use std::sync::Arc;

use crate::harness::*;

/// acme's rules for these tests: everything discarded by the stock
/// router; `staging.example` is the domain the candidate router (the
/// sandbox router with `staging.domains`) sends to the sandbox instead;
/// `hostile.mode` is read only by the looping candidate.
fn rules() -> String {
    "[tenants.rules.route]\ndefault = \"discard\"\n\
     [tenants.rules.staging]\ndomains = [\"staging.example\"]\n\
     [tenants.rules.hostile]\nmode = \"loop\"\n"
        .into()
}

/// One message from `r`'s session to `to`; its queue id.
fn send(r: &mut Raw, to: &str) -> String {
    assert!(r.cmd(&format!("MAIL FROM:<{SENDER}>")).starts_with("250"));
    assert!(r.cmd(&format!("RCPT TO:<{to}>")).starts_with("250"));
    assert!(r.cmd("DATA").starts_with("354"));
    let reply = r.cmd("Subject: shadow\r\n\r\nhello\r\n.");
    queue_id(&reply).unwrap_or_else(|| panic!("not accepted: {reply}"))
}

/// `tenant deploy --shadow acme <function>` of the test component `name`.
fn deploy_shadow(s: &Server, function: &str, name: &str) {
    let path = component(name);
    let args = [
        "deploy",
        "--shadow",
        "acme",
        function,
        path.to_str().unwrap(),
    ];
    let (ok, out) = s.cli("tenant", &args);
    assert!(ok, "{out}");
}

fn report(s: &Server) -> serde_json::Value {
    let (ok, out) = s.cli("tenant", &["shadow", "acme", "router"]);
    assert!(ok, "{out}");
    serde_json::from_str(&out).unwrap()
}

/// A shadow router that sends one domain to the sandbox, under load from
/// four sessions: every message keeps the live route (discarded), the
/// report counts exactly the transactions to that domain as route
/// differences, with samples naming it; `promote` then makes the candidate
/// live. A looping shadow of `sender` then costs the live path nothing:
/// every message is accepted, the live functions hit no deadline, and the
/// shadow's failures and quarantine are its own.
#[test]
fn a_shadow_router_changes_nothing_counts_its_differences_and_is_promoted() {
    let s = Arc::new(Server::start_with(Options {
        acme_rules: rules(),
        runtime: "shadow_share = 1.0",
        ..Options::default()
    }));
    deploy_shadow(&s, "router", "router_sandbox");
    // Four sessions at once, 10 messages each, one in four to staging.
    let sessions: Vec<_> = (0..4)
        .map(|n| {
            let s = s.clone();
            std::thread::spawn(move || {
                let mut r = Raw::logged_in(&s);
                (0..10)
                    .map(|i| {
                        let to = match i % 4 {
                            0 => format!("s{n}-{i}@staging.example"),
                            _ => format!("p{n}-{i}@example.net"),
                        };
                        let id = send(&mut r, &to);
                        (id, to)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let sent: Vec<(String, String)> = sessions
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let staged = sent
        .iter()
        .filter(|(_, to)| to.ends_with("@staging.example"))
        .count();
    assert_eq!((sent.len(), staged), (40, 12));
    for (id, to) in &sent {
        wait_for("the live route", || {
            s.statuses(id, to).contains(&"discarded".to_string())
        });
    }
    assert!(
        !s.data_dir().join("sandbox/acme").exists(),
        "the shadow routed a message"
    );
    wait_for("every route compared", || {
        report(&s)["differences"]["route: route"]
            .as_u64()
            .unwrap_or(0) as usize
            >= staged
            && report(&s)["decisions_compared"].as_u64().unwrap() >= 40
    });
    let r = report(&s);
    assert_eq!(
        r["differences"],
        serde_json::json!({ "route: route": 12 }),
        "{r}"
    );
    assert_eq!(r["decisions_compared"], 40, "{r}");
    assert_eq!(r["identical"], 28, "{r}");
    assert_eq!(r["failures"], serde_json::json!({}), "{r}");
    let samples = r["samples"]["route: route"].as_array().unwrap();
    assert_eq!(samples.len(), 10, "bounded samples");
    for sample in samples {
        assert!(
            sample["about"]
                .as_str()
                .unwrap()
                .contains("@staging.example"),
            "{sample}"
        );
        assert_eq!(sample["live"], "route discard");
        assert_eq!(sample["shadow"], "route sandbox");
    }
    // Promoted: an ordinary deploy, and the shadow is gone.
    let (ok, out) = s.cli("tenant", &["shadow", "acme", "router", "promote"]);
    assert!(ok, "{out}");
    let (ok, _) = s.cli("tenant", &["shadow", "acme", "router"]);
    assert!(!ok, "the shadow outlived its promotion");
    let mut r = Raw::logged_in(&s);
    let id = send(&mut r, "after@staging.example");
    wait_for("the promoted route", || {
        s.statuses(&id, "after@staging.example")
            .contains(&"delivered_to_sandbox".to_string())
    });
    let id = send(&mut r, "after@example.net");
    wait_for("the promoted default", || {
        s.statuses(&id, "after@example.net")
            .contains(&"discarded".to_string())
    });

    // A looping candidate for `sender`: the live path does not notice.
    deploy_shadow(&s, "sender", "hostile");
    for i in 0..12 {
        let to = format!("loop{i}@example.net");
        let id = send(&mut r, &to);
        wait_for("the live route", || {
            s.statuses(&id, &to).contains(&"discarded".to_string())
        });
    }
    let shadow_report = || {
        let (ok, out) = s.cli("tenant", &["shadow", "acme", "sender"]);
        assert!(ok, "{out}");
        serde_json::from_str::<serde_json::Value>(&out).unwrap()
    };
    wait_for("the shadow's failures", || {
        let f = &shadow_report()["failures"];
        f["deadline"].as_u64().unwrap_or(0)
            + f["quarantined"].as_u64().unwrap_or(0)
            + shadow_report()["skipped"].as_u64().unwrap_or(0)
            >= 12
    });
    let r = shadow_report();
    // Two hits in a row quarantine it; then its calls are skipped.
    assert!(r["failures"]["deadline"].as_u64().unwrap() >= 2, "{r}");
    assert!(r["differences"].as_object().unwrap().is_empty(), "{r}");
    let metrics = s.metrics();
    assert!(
        !metrics.contains("mailwit_policy_deadline_hits_total{tenant=\"acme\""),
        "the live path hit a deadline: {metrics}"
    );
    assert!(
        metrics.contains("mailwit_policy_cpu_seconds_total{tenant=\"acme~shadow\"}"),
        "{metrics}"
    );
    let (ok, out) = s.cli("tenant", &["shadow", "acme", "sender", "drop"]);
    assert!(ok, "{out}");
    let (ok, out) = s.cli("tenant", &["shadow", "acme", "router"]);
    assert!(!ok && out.contains("no shadow"), "{out}");
}

/// `tenant test FILE`: the report's JSON and whether it exited 0.
fn tenant_test(
    s: &Server,
    candidate: &str,
    eml: Option<&std::path::Path>,
) -> (bool, serde_json::Value) {
    let path = component(candidate);
    let mut args = vec!["test", "acme", "router", path.to_str().unwrap()];
    let dir;
    if let Some(d) = eml {
        dir = d.to_str().unwrap().to_string();
        args.extend(["--eml", &dir]);
    }
    let (ok, out) = s.cli("tenant", &args);
    // The report is printed first; an error (and a backtrace) may follow.
    let json = out.find('{').map(|i| &out[i..]).unwrap_or("");
    let report = serde_json::Deserializer::from_str(json)
        .into_iter::<serde_json::Value>()
        .next()
        .unwrap_or_else(|| panic!("no report: {out}"))
        .unwrap_or_else(|e| panic!("{e}: {out}"));
    (ok, report)
}

/// `tenant test` runs a candidate against the tenant's recorded
/// transactions and against a folder of `.eml` files, next to the live
/// version: an identical router differs nowhere (exit 0); the staging
/// router differs exactly on the messages to staging.example, in their
/// route (exit 1).
#[test]
fn tenant_test_replays_recorded_transactions_and_eml_files() {
    let s = Server::start_with(Options {
        acme_rules: rules(),
        ..Options::default()
    });
    let mut r = Raw::logged_in(&s);
    for to in [
        "a@example.net",
        "b@staging.example",
        "c@example.net",
        "d@staging.example",
        "e@example.net",
    ] {
        send(&mut r, to);
    }
    let (ok, same) = tenant_test(&s, "router", None);
    assert!(ok, "{same}");
    assert_eq!(same["source"], "recorded transactions");
    assert_eq!(same["cases"], 5, "{same}");
    assert_eq!(same["differences"], serde_json::json!([]), "{same}");
    let (ok, changed) = tenant_test(&s, "router_sandbox", None);
    assert!(!ok, "differences must fail the command: {changed}");
    let diffs = changed["differences"].as_array().unwrap();
    assert_eq!(diffs.len(), 2, "{changed}");
    for d in diffs {
        assert_eq!(d["decision"], "route");
        assert_eq!(d["kinds"], serde_json::json!(["route"]));
        assert!(
            d["about"].as_str().unwrap().contains("@staging.example"),
            "{d}"
        );
        assert_eq!(
            (d["live"].as_str(), d["candidate"].as_str()),
            (Some("route discard"), Some("route sandbox"))
        );
    }
    // A folder of .eml files, the envelope from their headers.
    let dir = s.dir.path().join("eml");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, to) in [
        ("1.eml", "x@example.net"),
        ("2.eml", "y@staging.example"),
        ("3.eml", "z@example.net"),
    ] {
        let eml = format!("From: <{SENDER}>\r\nTo: <{to}>\r\nSubject: {name}\r\n\r\nhello\r\n");
        std::fs::write(dir.join(name), eml).unwrap();
    }
    let (ok, same) = tenant_test(&s, "router", Some(&dir));
    assert!(ok, "{same}");
    assert_eq!(
        (same["source"].as_str(), same["cases"].as_u64()),
        (Some("messages"), Some(3))
    );
    let (ok, changed) = tenant_test(&s, "router_sandbox", Some(&dir));
    assert!(!ok);
    let diffs = changed["differences"].as_array().unwrap();
    assert_eq!(diffs.len(), 1, "{changed}");
    assert_eq!(diffs[0]["case"], "2.eml");
    assert_eq!(diffs[0]["decision"], "route");
}
