//! Network tests in Linux network namespaces the test creates itself. They
//! need root; elsewhere they print why and skip.
//!
//! Addresses used: 10.77.x.y inside the test's own namespaces only.

use std::time::{Duration, Instant};

use tincan_tests::{Namespaces, RunningNode, Tincan, eventually, netns_unavailable, sh};

/// Two hosts on one LAN: namespaces `a` and `b`, each with a veth into a
/// bridge that lives in a third namespace `sw` (so the host's own network
/// is never touched).
fn lan(prefix: &str) -> Namespaces {
    let ns = Namespaces::create(prefix, &["a", "b", "sw"]);
    let (a, b, sw) = (&ns.names[0], &ns.names[1], &ns.names[2]);
    sh(&["ip", "-n", sw, "link", "add", "br0", "type", "bridge"]);
    sh(&["ip", "-n", sw, "link", "set", "br0", "up"]);
    for (host, addr) in [(a, "10.77.0.1/24"), (b, "10.77.0.2/24")] {
        // veth ends: "eth0" in the host namespace, "p-<host>" on the bridge.
        let port = format!("p{}", &host[host.len() - 1..]);
        sh(&[
            "ip", "-n", sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
            host,
        ]);
        sh(&["ip", "-n", sw, "link", "set", &port, "master", "br0"]);
        sh(&["ip", "-n", sw, "link", "set", &port, "up"]);
        sh(&["ip", "-n", host, "addr", "add", addr, "dev", "eth0"]);
        sh(&["ip", "-n", host, "link", "set", "eth0", "up"]);
        // mDNS sends to 224.0.0.251: route multicast out of the LAN port.
        sh(&[
            "ip",
            "-n",
            host,
            "route",
            "add",
            "224.0.0.0/4",
            "dev",
            "eth0",
        ]);
    }
    ns
}

#[test]
fn two_nodes_on_a_lan_find_each_other_by_mdns_and_replicate_a_room() {
    if let Some(why) = netns_unavailable() {
        println!("SKIPPED: {why}");
        return;
    }
    let prefix = format!("tc{}", std::process::id() % 100_000);
    let ns = lan(&prefix);
    let (ns_a, ns_b) = (ns.names[0].as_str(), ns.names[1].as_str());
    let dir = tempfile::tempdir().unwrap();
    let alice = Tincan::new(&dir.path().join("alice"), "pw-a");
    let bob = Tincan::new(&dir.path().join("bob"), "pw-b");
    alice.ok(&["init", "--username", "alice"]);
    bob.ok(&["init", "--username", "bob"]);

    // No configuration at all: default listen addresses, mDNS on.
    let a = RunningNode::start_in(&alice, Some(ns_a), &["up"]);
    let b = RunningNode::start_in(&bob, Some(ns_b), &["up"]);
    let in_a = |args: &[&str]| run_json(&alice, ns_a, args);
    let in_b = |args: &[&str]| run_json(&bob, ns_b, args);

    let started = Instant::now();
    let peers = eventually(Duration::from_secs(30), || {
        let p = in_a(&["peers"]);
        (!p.as_array().unwrap().is_empty()).then_some(p)
    })
    .expect("no peer found by mDNS within 30 s");
    println!("found by mDNS in {:?}: {peers}", started.elapsed());
    assert!(
        peers[0]["address"].as_str().unwrap().contains("10.77.0.2"),
        "{peers}"
    );

    let room = in_a(&["room", "create", "LAN party"])["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(in_b(&["room", "join", &room])["state"], "joined");
    in_a(&["channel", "create", &room, "general"]);
    in_a(&["log", "add", &room, "gg"]);
    eventually(Duration::from_secs(20), || {
        let log = in_b(&["log", "list", &room]);
        let chans = in_b(&["channel", "list", &room]);
        (log["entries"].as_array().unwrap().len() == 1 && chans.as_array().unwrap().len() == 1)
            .then_some(())
    })
    .expect("the room's channel and log did not reach the other namespace within 20 s");
    assert!(b.stop().success());
    assert!(a.stop().success());
}

fn run_json(t: &Tincan, ns: &str, args: &[&str]) -> serde_json::Value {
    let out = t
        .cmd_in(Some(ns))
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?} in {ns}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{args:?}: {e}"))
}
