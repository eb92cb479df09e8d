//! `tincan up` as a long-running node: while it runs the other commands go
//! through its control endpoint (it holds the store), it stops cleanly on
//! SIGINT and SIGTERM, and a stale control file does not get in the way.

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use tincan_tests::Tincan;

fn start(t: &Tincan) -> Child {
    // Loopback only, no mDNS: tests send nothing beyond this machine.
    let child = t
        .cmd()
        .args(tincan_tests::LOOPBACK_UP)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let control = t.data_dir.join("control.json");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !control.exists() {
        assert!(
            Instant::now() < deadline,
            "tincan up did not start its control endpoint in 20 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

fn signal(child: &Child, sig: &str) {
    let status = std::process::Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn wait_exit(mut child: Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "tincan up did not stop within 20 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn control_file(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("control.json")).unwrap()).unwrap()
}

#[test]
fn commands_go_through_the_running_node_which_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let t = Tincan::new(&dir.path().join("n"), "pw");
    t.ok(&["init", "--username", "alice"]);
    for sig in ["-INT", "-TERM"] {
        let child = start(&t);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(t.data_dir.join("control.json"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // No password needed while the node runs: it is unlocked.
        let no_pw = Tincan::new(&t.data_dir, "");
        let room = no_pw
            .cmd()
            .env_remove("TINCAN_PASSWORD")
            .args(["room", "create", &format!("room {sig}"), "--json"])
            .output()
            .unwrap();
        assert!(
            room.status.success(),
            "{}",
            String::from_utf8_lossy(&room.stderr)
        );
        let room: serde_json::Value = serde_json::from_slice(&room.stdout).unwrap();
        let rid = room["id"].as_str().unwrap();
        t.ok(&["channel", "create", rid, "general"]);
        t.ok(&["log", "add", rid, "hello"]);
        assert_eq!(
            t.json(&["log", "list", rid])["entries"][0]["action"],
            "hello"
        );
        let bundle = dir.path().join(format!("b{sig}.json"));
        t.ok(&["export", "--out", bundle.to_str().unwrap()]);
        assert!(bundle.exists());

        signal(&child, sig);
        let status = wait_exit(child);
        assert!(status.success(), "{sig}: {status:?}");
        assert!(
            !t.data_dir.join("control.json").exists(),
            "{sig}: control file left behind"
        );
    }
    // Offline again: everything written through the node is in the store.
    assert_eq!(t.json(&["room", "list"]).as_array().unwrap().len(), 2);
}

#[test]
fn a_wrong_token_is_refused_and_a_stale_control_file_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let t = Tincan::new(&dir.path().join("n"), "pw");
    t.ok(&["init", "--username", "alice"]);
    let child = start(&t);
    let mut c = control_file(&t.data_dir);
    let good = c.clone();
    c["token"] = "00".repeat(16).into();
    std::fs::write(t.data_dir.join("control.json"), c.to_string()).unwrap();
    let err = t.fails(&["room", "list"]);
    assert!(err.contains("bad control token"), "{err}");
    std::fs::write(t.data_dir.join("control.json"), good.to_string()).unwrap();
    signal(&child, "-INT");
    assert!(wait_exit(child).success());

    // A node killed without cleaning up leaves its file; nobody listens there.
    std::fs::write(t.data_dir.join("control.json"), good.to_string()).unwrap();
    assert_eq!(t.json(&["room", "list"]), serde_json::json!([]));
}
