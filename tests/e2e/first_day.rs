//! A newcomer's first message, exactly as the README sends it: `mailwit
//! serve` with the embedded configuration, swaks with the demo login, then
//! curl on the status API, which shows the message sandboxed and gives its
//! raw bytes back.

use std::process::Command;

use crate::harness::*;

fn curl(args: &[&str]) -> String {
    let (ok, out) = run(Command::new("curl").args(["-sS"]).args(args));
    assert!(ok, "curl {args:?}: {out}");
    out
}

#[test]
fn the_readme_first_message_lands_in_the_demo_sandbox() {
    let s = Server::start_embedded();
    assert_eq!(s.port("submission"), 5587);
    assert_eq!(s.port("status-api"), 8026);
    // The README's swaks line, verbatim.
    let (ok, out) = run(Command::new("swaks")
        .current_dir(s.dir.path())
        .args(["--server", "127.0.0.1:5587", "--tls", "-au", "demo"])
        .args(["-ap", "demo-password", "-f", "demo@mailwit.test"])
        .args(["-t", "someone@example.net"]));
    assert!(ok, "{out}");
    let id = queue_id(&out).unwrap_or_else(|| panic!("not queued:\n{out}"));

    let status_url = format!("http://127.0.0.1:8026/v1/demo/notifications/id/{id}");
    let mut last = String::new();
    wait_for("CAAS_SANDBOXED", || {
        last = curl(&["-u", "demo:demo-password", &status_url]);
        last.contains("CAAS_SANDBOXED")
    });
    let v: serde_json::Value = serde_json::from_str(&last).unwrap();
    let codes: Vec<&str> = v["Notification"]["status"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["statusCode"].as_str().unwrap())
        .collect();
    assert_eq!(codes, ["CAAS_RECEIVED", "CAAS_SANDBOXED"], "{last}");

    // Its bytes come back from the sandbox as they were spooled.
    let raw = curl(&[
        "-u",
        "demo:demo-password",
        &format!("http://127.0.0.1:8026/v1/demo/sandbox/{id}"),
    ]);
    let spooled = s.spooled(&id).content;
    assert_eq!(raw.as_bytes(), spooled.as_slice());
    assert!(raw.contains("To: someone@example.net"), "{raw}");
    // And `mailwit tenant list` (from the server's directory, as the README
    // runs it) shows the demo tenant in a table.
    let (ok, out) = s.cli("tenant", &["list"]);
    assert!(
        ok && out.lines().nth(1).unwrap().starts_with("demo "),
        "{out}"
    );
}
