//! A real `tincan-bootstrap` process on loopback, and two `tincan up` nodes
//! that know only its address: they find each other through it (Kademlia
//! provider records for the room) and replicate the room.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tincan_tests::{LOOPBACK_UP, RunningNode, Tincan, eventually, workspace_bin};

struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn nodes_that_know_only_the_bootstrap_node_find_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bootstrap.toml");
    std::fs::write(
        &config,
        format!(
            "key_file = {:?}\nlisten = [\"/ip4/127.0.0.1/tcp/0\"]\n[voice_relay]\nlisten = \"127.0.0.1:0\"\n",
            dir.path().join("node.key").to_str().unwrap()
        ),
    )
    .unwrap();
    let mut child = Command::new(workspace_bin("tincan-bootstrap"))
        .args(["--config", config.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start tincan-bootstrap (built by cargo test --workspace)");
    let bootstrap_addr = tincan_tests::first_stdout_line(&mut child);
    let _guard = Killed(child);
    assert!(
        bootstrap_addr.contains("/p2p/12D3KooW"),
        "{bootstrap_addr:?}"
    );
    // The key persists: the file holds 64 hex digits.
    assert_eq!(
        std::fs::read_to_string(dir.path().join("node.key"))
            .unwrap()
            .trim()
            .len(),
        64
    );

    let alice = Tincan::new(&dir.path().join("alice"), "pw-a");
    let bob = Tincan::new(&dir.path().join("bob"), "pw-b");
    alice.ok(&["init", "--username", "alice"]);
    bob.ok(&["init", "--username", "bob"]);
    let mut args = LOOPBACK_UP.to_vec();
    args.extend(["--bootstrap", &bootstrap_addr]);
    let a = RunningNode::start(&alice, &args);
    let room = alice.json(&["room", "create", "Internet room"])["id"]
        .as_str()
        .unwrap()
        .to_owned();
    alice.ok(&["log", "add", &room, "anyone there?"]);
    let b = RunningNode::start(&bob, &args);

    let started = Instant::now();
    assert_eq!(bob.json(&["room", "join", &room])["state"], "joined");
    eventually(Duration::from_secs(30), || {
        let log = bob.json(&["log", "list", &room]);
        (log["entries"].as_array().unwrap().len() == 1).then_some(())
    })
    .expect("bob did not get the room's log through the bootstrap node within 30 s");
    println!(
        "bob found alice's room through the bootstrap node in {:?}",
        started.elapsed()
    );
    // Bob is connected to alice herself, not only to the bootstrap node.
    let alice_id = alice.json(&["id"])["node_id"].as_str().unwrap().to_owned();
    let peers = bob.json(&["peers"]);
    assert!(
        peers
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["peer_id"] == alice_id.as_str()),
        "{peers}"
    );
    assert!(b.stop().success());
    assert!(a.stop().success());
}

#[test]
fn a_bad_configuration_is_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "key_file = \"k\"\nlisten = [\"not an address\"]\n").unwrap();
    let out = Command::new(workspace_bin("tincan-bootstrap"))
        .args(["--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a multiaddr"), "{err}");
    std::fs::write(&config, "key_file = \"k\"\nlistn = []\n").unwrap();
    let out = Command::new(workspace_bin("tincan-bootstrap"))
        .args(["--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown field"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An operator's blocklist: a blocked node gets no mesh connection to the
/// bootstrap node, another node does (the voice relay's side of the
/// blocklist is tested in bootstrap/tests/voice_relay.rs).
#[test]
fn a_blocked_node_gets_no_mesh_connection() {
    let dir = tempfile::tempdir().unwrap();
    let alice = Tincan::new(&dir.path().join("alice"), "pw-a");
    let bob = Tincan::new(&dir.path().join("bob"), "pw-b");
    alice.ok(&["init", "--username", "alice"]);
    bob.ok(&["init", "--username", "bob"]);
    let alice_node = alice.json(&["id"])["node_id"].as_str().unwrap().to_owned();
    let bob_node = bob.json(&["id"])["node_id"].as_str().unwrap().to_owned();
    let config = dir.path().join("bootstrap.toml");
    std::fs::write(
        &config,
        format!(
            "key_file = {:?}\nlisten = [\"/ip4/127.0.0.1/tcp/0\"]\nblocked_peers = [{alice_node:?}]\n\
             [voice_relay]\nlisten = \"127.0.0.1:0\"\n[metrics]\nenabled = false\n",
            dir.path().join("node.key").to_str().unwrap()
        ),
    )
    .unwrap();
    let mut child = Command::new(workspace_bin("tincan-bootstrap"))
        .args(["--config", config.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let boot = tincan_tests::first_stdout_line(&mut child);
    let _guard = Killed(child);
    let boot_id = boot.rsplit("/p2p/").next().unwrap().to_owned();
    let mut args = LOOPBACK_UP.to_vec();
    args.extend(["--bootstrap", &boot]);
    let _a = RunningNode::start(&alice, &args);
    let _b = RunningNode::start(&bob, &args);
    let has_peer = |t: &Tincan, id: &str| {
        t.json(&["peers"])
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["peer_id"] == id)
    };
    assert!(
        eventually(Duration::from_secs(20), || has_peer(&bob, &boot_id)
            .then_some(()))
        .is_some(),
        "bob never reached the bootstrap node"
    );
    // Alice keeps redialling (with backoff, and Kademlia's own dials), and
    // the bootstrap node refuses her once the handshake names her: she may
    // list it for the instant before each connection closes (seen in CI,
    // even in consecutive samples), but no protocol ever runs with it (no
    // identify: her node never learns its agent), and she never finds the
    // peers it would have introduced her to.
    let identified = |t: &Tincan| {
        t.json(&["peers"])
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["peer_id"] == boot_id.as_str() && !p["agent"].is_null())
    };
    assert!(
        eventually(Duration::from_secs(20), || identified(&bob).then_some(())).is_some(),
        "bob's node never identified the bootstrap node"
    );
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        assert!(
            !identified(&alice),
            "the blocked node ran identify with the bootstrap node"
        );
        assert!(
            !has_peer(&alice, &bob_node),
            "the blocked node found bob through the bootstrap node"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}
