//! The library's application builder (`mailwit::app`): the same server,
//! started inside the test process rather than as the binary.

use mailwit::app::{self, Options as AppOptions};
use mailwit::config::Config;

use crate::harness::*;

#[test]
fn a_server_started_in_process_takes_mail_and_stops_gracefully() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &Options::default());
    let config = Config::load(Some(&path)).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (id, spool_dir) = rt.block_on(async {
        let running = app::start(config, AppOptions::default()).await.unwrap();
        let names: Vec<&str> = running.addrs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["submission", "smtps", "plain", "admin", "status-api"]
        );
        let port = running.addr("plain").unwrap().port();
        // A blocking client, off the server's runtime.
        let reply = tokio::task::spawn_blocking(move || {
            let mut r = Raw::open(port);
            r.cmd("EHLO in-process.test");
            let auth = r.cmd(&format!("AUTH PLAIN {}", base64_plain(LOGIN, PASSWORD)));
            assert!(auth.starts_with("235"), "{auth}");
            let reply = r.message("in process");
            r.cmd("QUIT");
            reply
        })
        .await
        .unwrap();
        let id = queue_id(&reply).unwrap_or_else(|| panic!("{reply}"));
        running.stop();
        running.wait().await.unwrap();
        (id, dir.path().join("data/spool"))
    });
    // Stopped: the message is in the spool, as from the binary.
    let spooled = mailwit::queue::file::accepted(&spool_dir).unwrap();
    assert_eq!(spooled.len(), 1);
    assert_eq!(spooled[0].meta.id, id);
    assert_eq!(spooled[0].meta.helo, "in-process.test");
    assert_eq!(spooled[0].content, b"Subject: in process\r\n\r\nbody\r\n");
}
