//! The status API: `components/status` (a spin-sdk component) served
//! in-process by mailwit, asked with curl; its imports checked against
//! what Spin provides; `spin.toml`'s build producing the file it names.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::harness::*;

const API_KEY: &str = "sk1.9c1d2e3f4a5b6c7d";

/// `curl` against the status API: (HTTP status, body).
fn curl(s: &Server, user: Option<&str>, path: &str) -> (u16, String) {
    curl_at(s.port("status-api"), user, path)
}

fn curl_at(port: u16, user: Option<&str>, path: &str) -> (u16, String) {
    let url = format!("http://127.0.0.1:{port}{path}");
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-m", "30", "-w", "\n%{http_code}"]);
    if let Some(u) = user {
        cmd.args(["-u", u]);
    }
    let (ok, out) = run(cmd.arg(&url));
    assert!(ok, "curl {url} failed: {out}");
    let (body, code) = out.rsplit_once('\n').unwrap();
    (code.trim().parse().unwrap(), body.to_string())
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// `mailwit status-api ...` against the server's admin listener.
fn status_api_cli(s: &Server, args: &[&str]) -> (bool, String) {
    s.cli("status-api", args)
}

/// A second tenant, "beta", with its own login (same password).
fn beta() -> String {
    format!(
        "\n[[tenants]]\nid = \"beta\"\n{STOCK_FUNCTIONS}\n\n[tenants.rules]\n[tenants.rules.users]\n\"ops@beta.example\" = \"{}\"\n",
        demo_hash()
    )
}

fn api_key_rules() -> String {
    let (ok, out) =
        run(Command::new(env!("CARGO_BIN_EXE_mailwit")).args(["hash-password", API_KEY]));
    assert!(ok, "{out}");
    format!("[tenants.rules.api-keys]\nsk1 = \"{}\"\n", out.trim())
}

#[test]
fn status_api_shows_a_messages_events_per_recipient_to_its_tenant_only() {
    let s = Server::start_with(Options {
        acme_rules: api_key_rules(),
        extra: beta(),
        ..Options::default()
    });
    let id = submit(&s, "one@example.net,two@example.net", &[]);
    let me = format!("{LOGIN}:{PASSWORD}");
    let path = format!("/v1/acme/notifications/id/{id}");
    // No upstream is configured: each recipient is received, then deferred.
    let mut body = serde_json::Value::Null;
    wait_for("received and deferred for both recipients", || {
        let (code, text) = curl(&s, Some(&me), &path);
        assert_eq!(code, 200, "{text}");
        body = json(&text);
        body["Notification"]["status"]
            .as_array()
            .is_some_and(|l| l.len() >= 6)
    });
    let n = &body["Notification"];
    assert_eq!(n["notificationId"], id.as_str());
    let events = n["status"].as_array().unwrap();
    for rcpt in ["one@example.net", "two@example.net"] {
        let codes: Vec<&str> = events
            .iter()
            .filter(|e| e["recipient"] == format!("email:{rcpt}"))
            .map(|e| e["statusCode"].as_str().unwrap())
            .collect();
        assert_eq!(
            codes[..3],
            ["CAAS_RECEIVED", "CAAS_SENT", "CH_DEFERRED"],
            "{rcpt}: {body}"
        );
    }
    for e in events {
        assert_eq!(e["channel"], "email");
        let ts = e["timestamp"].as_str().unwrap();
        // The seed's "2015-03-08 14:58:30.252".
        assert_eq!(ts.len(), 23, "{ts}");
        assert_eq!(
            (&ts[4..5], &ts[10..11], &ts[19..20]),
            ("-", " ", "."),
            "{ts}"
        );
        assert!(e["statusText"].as_str().is_some_and(|t| !t.is_empty()));
    }
    assert_eq!(events[0]["statusText"], "Successful");

    // The recipient filter, in the seed's form, percent-encoded, and as
    // the seed's sample URL writes it ("gives the same result as above").
    for query in [
        "email:two@example.net",
        "email:two%40example.net",
        "email:two@example.net?recipient=email:two@example.net",
    ] {
        let (code, text) = curl(&s, Some(&me), &format!("{path}?recipient={query}"));
        assert_eq!(code, 200);
        let v = json(&text);
        let list = v["Notification"]["status"].as_array().unwrap();
        assert!(!list.is_empty());
        assert!(
            list.iter()
                .all(|e| e["recipient"] == "email:two@example.net"),
            "{text}"
        );
    }

    // The API-key login works too.
    let (code, text) = curl(&s, Some(&format!("App:{API_KEY}")), &path);
    assert_eq!(
        (code, json(&text)["Notification"]["notificationId"].clone()),
        (200, id.as_str().into())
    );

    // Another tenant's credentials get nothing: refused on acme's account,
    // and its own account does not have the message.
    let beta = format!("ops@beta.example:{PASSWORD}");
    let (code, text) = curl(&s, Some(&beta), &path);
    assert_eq!(code, 401, "{text}");
    assert!(!text.contains(&id));
    let (code, text) = curl(&s, Some(&beta), &format!("/v1/beta/notifications/id/{id}"));
    assert_eq!((code, text.trim()), (200, "{}"));

    // Wrong password, no credentials, unknown account: 401 alike.
    for (user, account) in [
        (Some(format!("{LOGIN}:wrong")), "acme"),
        (None, "acme"),
        (Some(me.clone()), "nosuch"),
    ] {
        let (code, _) = curl(
            &s,
            user.as_deref(),
            &format!("/v1/{account}/notifications/id/{id}"),
        );
        assert_eq!(code, 401, "{user:?} on {account}");
    }
    // Unknown ids: the seed's empty object.
    let (code, text) = curl(&s, Some(&me), "/v1/acme/notifications/id/01NOSUCHMESSAGE");
    assert_eq!((code, text.trim()), (200, "{}"));
}

#[test]
fn status_api_lists_and_serves_the_tenants_sandbox() {
    let s = Server::start_with(Options {
        acme_rules: route_rules("sandbox"),
        extra: beta(),
        ..Options::default()
    });
    let id = submit(&s, "qa@example.net", &[]);
    let me = format!("{LOGIN}:{PASSWORD}");
    wait_for("the message in the sandbox listing", || {
        let (code, text) = curl(&s, Some(&me), "/v1/acme/sandbox");
        code == 200 && json(&text)["messages"][0]["id"] == id.as_str()
    });
    let (code, raw) = curl(&s, Some(&me), &format!("/v1/acme/sandbox/{id}"));
    assert_eq!(code, 200);
    assert!(raw.contains("qa@example.net"), "{raw}");
    let spooled = s.spooled(&id);
    assert_eq!(
        raw.as_bytes(),
        &spooled.content[..],
        "served raw, byte for byte"
    );
    // beta sees an empty sandbox, and not acme's message.
    let beta = format!("ops@beta.example:{PASSWORD}");
    let (code, text) = curl(&s, Some(&beta), "/v1/beta/sandbox");
    assert_eq!(
        (code, json(&text)["messages"].as_array().unwrap().len()),
        (200, 0)
    );
    let (code, _) = curl(&s, Some(&beta), &format!("/v1/beta/sandbox/{id}"));
    assert_eq!(code, 404);
}

#[test]
fn a_status_component_swaps_without_restart_and_its_failures_are_bounded() {
    // Long enough for the stock component's first request on a loaded
    // machine (300 ms once gave a 503 with the whole suite running), short
    // enough for the looping request below.
    let s = Server::start_with(Options {
        status_api: "deadline_ms = 1000",
        ..Options::default()
    });
    let me = format!("{LOGIN}:{PASSWORD}");
    let (code, text) = curl(&s, Some(&me), "/v1/acme/sandbox");
    assert_eq!(code, 200, "{text}");

    // A policy component is not an HTTP component: refused, v1 stays.
    let (ok, out) = status_api_cli(&s, &["deploy", component("router").to_str().unwrap()]);
    assert!(!ok && out.contains("wasi:http/incoming-handler"), "{out}");
    let (ok, out) = status_api_cli(&s, &["show", "--json"]);
    assert!(ok && out.contains("\"version\": 1"), "{out}");

    // The hostile one: deployed, it answers the next request.
    let hostile = component("status_hostile");
    let (ok, out) = status_api_cli(&s, &["deploy", hostile.to_str().unwrap()]);
    assert!(ok && out.contains("\"version\": 2"), "{out}");
    assert_eq!(curl(&s, None, "/v1/acme/hello"), (200, "hostile".into()));
    for (path, code, kind) in [
        ("/v1/acme/loop", 503, "deadline"),
        ("/v1/acme/memory", 503, "memory"),
        ("/v1/acme/panic", 500, "trap"),
    ] {
        let (got, text) = curl(&s, None, path);
        assert_eq!(got, code, "{path}: {text}");
        assert!(text.contains(kind), "{path}: {text}");
    }
    // Mail is not disturbed meanwhile.
    submit(&s, "still@example.net", &[]);
    // Each failure is counted on the admin listener's /metrics.
    let metrics = s.metrics();
    for line in [
        "mailwit_status_api_failures_total{kind=\"deadline\"} 1",
        "mailwit_status_api_failures_total{kind=\"memory\"} 1",
        "mailwit_status_api_failures_total{kind=\"trap\"} 1",
        "mailwit_status_api_responses_total{code=\"503\"} 2",
        "mailwit_status_api_responses_total{code=\"500\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} not in:\n{metrics}");
    }

    // Rollback: the stock component answers again.
    let (ok, out) = status_api_cli(&s, &["rollback"]);
    assert!(ok && out.contains("\"version\": 1"), "{out}");
    let (code, text) = curl(&s, Some(&me), "/v1/acme/sandbox");
    assert_eq!(code, 200, "{text}");
    assert!(json(&text)["messages"].is_array());
}

#[test]
fn status_requests_beyond_the_concurrency_cap_get_503() {
    // No queue: a request that finds every place taken is refused at once.
    let s = Server::start_with(Options {
        status_api: "deadline_ms = 3000\nmax_concurrent = 1\nqueue = 0",
        ..Options::default()
    });
    let hostile = component("status_hostile");
    let (ok, out) = status_api_cli(&s, &["deploy", hostile.to_str().unwrap()]);
    assert!(ok, "{out}");
    assert_eq!(curl(&s, None, "/v1/acme/hello"), (200, "hostile".into()));
    // One request holds the only slot (it loops until its deadline); it is
    // sent again if it found the slot taken by one of the probes below...
    let port = s.port("status-api");
    let looping = std::thread::spawn(move || {
        loop {
            let (code, text) = curl_at(port, None, "/v1/acme/loop");
            if !text.contains("too many") {
                return (code, text);
            }
        }
    });
    // ...so another is turned away rather than queued or given an instance.
    wait_for("a 503 while the slot is taken", || {
        let (code, text) = curl(&s, None, "/v1/acme/hello");
        code == 503 && text.contains("too many")
    });
    let (code, text) = looping.join().unwrap();
    assert_eq!(code, 503, "{text}");
    assert!(text.contains("deadline"), "not the deadline: {text}");
    assert_eq!(curl(&s, None, "/v1/acme/hello"), (200, "hostile".into()));
}

/// What a component imports and exports, by name (its own, not those of
/// the modules and components nested inside it).
fn interfaces(wasm: &[u8]) -> (Vec<String>, Vec<String>) {
    use wasmparser::{Parser, Payload};
    let mut depth = 0usize;
    let (mut imports, mut exports) = (Vec::new(), Vec::new());
    for payload in Parser::new(0).parse_all(wasm) {
        match payload.unwrap() {
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentImportSection(reader) if depth == 0 => {
                for import in reader {
                    imports.push(import.unwrap().name.name.to_string());
                }
            }
            Payload::ComponentExportSection(reader) if depth == 0 => {
                for export in reader {
                    exports.push(export.unwrap().name.name.to_string());
                }
            }
            _ => {}
        }
    }
    (imports, exports)
}

/// True when `name` is an interface Spin 4 provides to a WASI 0.2 HTTP
/// component: wasi:{http,cli,io,clocks,random} 0.2.x, and the key-value and
/// variables interfaces this component chose, at their exact versions.
fn spin_provides(name: &str) -> bool {
    if name == "fermyon:spin/key-value@2.0.0" || name == "fermyon:spin/variables@2.0.0" {
        return true;
    }
    let Some((iface, version)) = name.split_once('@') else {
        return false;
    };
    let package_ok = [
        "wasi:http/",
        "wasi:cli/",
        "wasi:io/",
        "wasi:clocks/",
        "wasi:random/",
    ]
    .iter()
    .any(|p| iface.starts_with(p));
    package_ok && version.starts_with("0.2.") && !version.contains('-')
}

#[test]
fn the_status_component_imports_only_what_spin_provides() {
    let wasm = std::fs::read(component("status")).unwrap();
    let (imports, exports) = interfaces(&wasm);
    assert_eq!(exports, ["wasi:http/incoming-handler@0.2.0"]);
    assert!(
        imports.iter().any(|i| i == "fermyon:spin/key-value@2.0.0"),
        "{imports:?}"
    );
    assert!(
        imports
            .iter()
            .any(|i| i.starts_with("wasi:http/types@0.2.")),
        "{imports:?}"
    );
    let foreign: Vec<&String> = imports.iter().filter(|i| !spin_provides(i)).collect();
    assert!(
        foreign.is_empty(),
        "imports Spin does not provide: {foreign:?}"
    );
    assert!(!imports.iter().any(|i| i.starts_with("mailwit:")));
    // The checker itself refuses what Spin lacks.
    for bad in [
        "mailwit:policy/host@0.2.0",
        "wasi:keyvalue/store@0.2.0-draft",
        "wasi:filesystem/types@0.2.0",
        "wasi:http/types@0.3.0-rc-2026-01-06",
    ] {
        assert!(!spin_provides(bad), "{bad}");
    }
}

#[test]
fn spin_toml_is_a_version_2_manifest_whose_build_produces_its_source() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let manifest: toml::Value =
        toml::from_str(&std::fs::read_to_string(root.join("spin.toml")).unwrap()).unwrap();
    assert_eq!(manifest["spin_manifest_version"].as_integer(), Some(2));
    assert!(manifest["application"]["name"].is_str());
    let trigger = &manifest["trigger"]["http"][0];
    assert_eq!(trigger["route"].as_str(), Some("/v1/..."));
    let name = trigger["component"].as_str().unwrap();
    let c = &manifest["component"][name];
    assert_eq!(
        c["key_value_stores"].as_array().unwrap()[0].as_str(),
        Some("default")
    );
    assert!(c["variables"]["retention_secs"].is_str());
    assert!(manifest["variables"]["retention_secs"]["default"].is_str());

    // Run the manifest's build command as `spin build` would, in its
    // workdir with nothing inherited from this build, and look at what it
    // names as the source.
    let build = &c["build"];
    let workdir = root.join(build["workdir"].as_str().unwrap());
    let words: Vec<&str> = build["command"].as_str().unwrap().split(' ').collect();
    let (ok, out) = run(Command::new(words[0])
        .args(&words[1..])
        .current_dir(&workdir)
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_MAKEFLAGS"));
    assert!(ok, "spin.toml's build command failed:\n{out}");
    let source = root.join(c["source"].as_str().unwrap());
    let wasm = std::fs::read(&source)
        .unwrap_or_else(|e| panic!("{} (spin.toml's source): {e}", source.display()));
    let (imports, exports) = interfaces(&wasm);
    assert!(imports.iter().all(|i| spin_provides(i)), "{imports:?}");
    assert_eq!(exports, ["wasi:http/incoming-handler@0.2.0"]);
}

/// A tool `.ci/run` installs with cargo: on PATH or in cargo's bin directory.
fn cargo_tool(name: &str, install: &str) -> PathBuf {
    let (ok, out) = run(Command::new("sh").args(["-c", &format!("command -v {name}")]));
    if ok {
        return PathBuf::from(out.trim());
    }
    let home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cargo"));
    let p = home.join("bin").join(name);
    assert!(
        p.exists(),
        "{name} is not installed: {install} (.ci/run does)"
    );
    p
}

#[test]
fn wasmtime_serve_runs_the_status_component_composed_with_an_in_memory_store() {
    let wac = cargo_tool("wac", "cargo install wac-cli --locked");
    let wasmtime = cargo_tool(
        "wasmtime",
        "cargo install wasmtime-cli@48.0.8 --locked --no-default-features --features serve,run,cranelift,parallel-compilation,component-model-async",
    );
    // The same status component, its Spin imports satisfied by a small
    // in-memory store (components/kv-env) instead of Spin.
    let dir = tempfile::tempdir().unwrap();
    let composed = dir.path().join("status-with-store.wasm");
    let (ok, out) = run(Command::new(wac)
        .arg("plug")
        .arg(component("status"))
        .arg("--plug")
        .arg(component("kv_env"))
        .arg("-o")
        .arg(&composed));
    assert!(ok, "wac plug: {out}");
    let (imports, exports) = interfaces(&std::fs::read(&composed).unwrap());
    assert!(
        !imports.iter().any(|i| i.starts_with("fermyon:")),
        "{imports:?}"
    );
    assert_eq!(exports, ["wasi:http/incoming-handler@0.2.0"]);

    let port = free_high_port();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let day = 24 * 3600 * 1000;
    let events = serde_json::json!([
        { "ts_ms": now, "recipient": "a@example.net", "status": "received" },
        { "ts_ms": now, "recipient": "a@example.net", "status": "sent", "detail": "250 2.0.0 Ok" },
    ]);
    // The seed: "If the notification was sent more than 7 days back, an
    // empty object will be returned." Counted from its first event: one
    // received 8 days ago is empty though its last event is 6 days old;
    // one received 6 days ago shows its whole history.
    let old = serde_json::json!([
        { "ts_ms": now - 8 * day, "recipient": "a@example.net", "status": "received" },
        { "ts_ms": now - 6 * day, "recipient": "a@example.net", "status": "sent", "detail": "250 2.0.0 Ok" },
    ]);
    let recent = serde_json::json!([
        { "ts_ms": now - 6 * day, "recipient": "a@example.net", "status": "received" },
        { "ts_ms": now - 6 * day + 1, "recipient": "a@example.net", "status": "deferred", "detail": "421 try later" },
        { "ts_ms": now - day, "recipient": "a@example.net", "status": "sent", "detail": "250 2.0.0 Ok" },
    ]);
    /// Stops `wasmtime serve` however the test ends.
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _serve = Kill(
        Command::new(wasmtime)
            // The CLI .ci/run installs has no pooling allocator: say so.
            .args(["serve", "-O", "pooling-allocator=n", "-S", "cli"])
            .args(["--addr", &format!("127.0.0.1:{port}")])
            .arg("--env")
            .arg(format!("demo/users/demo={}", demo_hash()))
            .arg("--env")
            .arg(format!("demo/notifications/N1={events}"))
            .arg("--env")
            .arg(format!("demo/notifications/OLD={old}"))
            .arg("--env")
            .arg(format!("demo/notifications/RECENT={recent}"))
            .arg(&composed)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for("wasmtime serve to listen", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let me = format!("demo:{PASSWORD}");
    let (code, text) = curl_at(port, Some(&me), "/v1/demo/notifications/id/N1");
    let v = json(&text);
    let codes: Vec<&str> = v["Notification"]["status"]
        .as_array()
        .unwrap_or_else(|| panic!("{code}: {text}"))
        .iter()
        .map(|e| e["statusCode"].as_str().unwrap())
        .collect();
    assert_eq!(
        (code, codes),
        (200, vec!["CAAS_RECEIVED", "CH_RECEIVED", "CH_SENT"]),
        "{text}"
    );
    let (code, text) = curl_at(port, Some(&me), "/v1/demo/notifications/id/OLD");
    assert_eq!((code, text.trim()), (200, "{}"));
    let (code, text) = curl_at(port, Some(&me), "/v1/demo/notifications/id/RECENT");
    let codes: Vec<String> = json(&text)["Notification"]["status"]
        .as_array()
        .unwrap_or_else(|| panic!("{code}: {text}"))
        .iter()
        .map(|e| e["statusCode"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        codes,
        ["CAAS_RECEIVED", "CH_DEFERRED", "CH_RECEIVED", "CH_SENT"],
        "{text}"
    );
    assert_eq!(
        curl_at(port, Some("demo:wrong"), "/v1/demo/notifications/id/N1").0,
        401
    );
    assert_eq!(
        curl_at(port, Some(&me), "/v1/other/notifications/id/N1").0,
        401
    );
}

/// The status API checks a password per request, so failed ones from one
/// address slow that address down, to `429` once it is far behind, while
/// other addresses are answered as usual.
#[test]
fn failed_status_logins_back_off_their_address_only() {
    let s = Server::start();
    let port = s.port("status-api");
    let wrong = |n: usize| -> Vec<u16> {
        let threads: Vec<_> = (0..n)
            .map(|_| {
                std::thread::spawn(move || {
                    let (ok, out) = run(Command::new("curl").args([
                        "-s",
                        "-o",
                        "/dev/null",
                        "-w",
                        "%{http_code}",
                        "--interface",
                        "127.0.0.2",
                        "-u",
                        &format!("{LOGIN}:wrong"),
                        &format!("http://127.0.0.1:{port}/v1/acme/sandbox"),
                    ]));
                    assert!(ok, "{out}");
                    out.trim().parse::<u16>().unwrap()
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    };
    // Ten wrong passwords at once: each checked, each refused.
    assert_eq!(wrong(10), [401; 10]);
    // Their address is now a minute behind: turned away without a check.
    let again = wrong(5);
    assert!(again.iter().all(|&c| c == 429), "{again:?}");
    // Another address is not: the right password is answered.
    let (code, text) = curl(&s, Some(&format!("{LOGIN}:{PASSWORD}")), "/v1/acme/sandbox");
    assert_eq!(code, 200, "{text}");
    let metrics = s.metrics();
    assert!(
        metrics.contains("mailwit_status_api_auth_refused_total{reason=\"backoff\"} 5"),
        "{metrics}"
    );
}
