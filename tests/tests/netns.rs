//! Network tests in Linux network namespaces the test creates itself. They
//! need root; elsewhere they print why and skip.
//!
//! Addresses used: 10.77.x.y inside the test's own namespaces only.

use std::time::{Duration, Instant};

use tincan_tests::netns::run_json;
use tincan_tests::{Namespaces, RunningNode, Tincan, eventually, netns_unavailable, sh};

/// Two hosts on one LAN: namespaces `a` and `b`, each with a veth into a
/// bridge that lives in a third namespace `sw` (so the host's own network
/// is never touched).
fn lan(prefix: &str) -> Namespaces {
    let ns = Namespaces::create(prefix, &["a", "b", "sw"]);
    let (a, b, sw) = (&ns.names[0], &ns.names[1], &ns.names[2]);
    bridge(sw);
    for (i, (host, addr)) in [(a, "10.77.0.1/24"), (b, "10.77.0.2/24")]
        .into_iter()
        .enumerate()
    {
        plug(sw, i, host, addr);
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

/// A bridge `br0` in the switch namespace `sw`.
fn bridge(sw: &str) {
    sh(&["ip", "-n", sw, "link", "add", "br0", "type", "bridge"]);
    sh(&["ip", "-n", sw, "link", "set", "br0", "up"]);
}

/// Plugs `host` into the bridge of `sw` (port `p{i}`), as `eth0` with `addr`.
fn plug(sw: &str, i: usize, host: &str, addr: &str) {
    let port = format!("p{i}");
    sh(&[
        "ip", "-n", sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", host,
    ]);
    sh(&["ip", "-n", sw, "link", "set", &port, "master", "br0"]);
    sh(&["ip", "-n", sw, "link", "set", &port, "up"]);
    sh(&["ip", "-n", host, "addr", "add", addr, "dev", "eth0"]);
    sh(&["ip", "-n", host, "link", "set", "eth0", "up"]);
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

/// An internet in miniature: `boot` (a bootstrap node) and `a` (a player
/// with a public address) on a bridged public segment 10.77.1.0/24; `b` (a
/// player at home) on 10.78.0.0/24 behind `rt`, a router that masquerades
/// (iptables NAT) out of its public side 10.77.1.254. Nothing on the public
/// side has a route to the home network.
fn internet_with_nat(prefix: &str) -> Namespaces {
    let ns = Namespaces::create(prefix, &["boot", "a", "rt", "b", "sw"]);
    let [boot, a, rt, b, sw] = [0, 1, 2, 3, 4].map(|i| ns.names[i].as_str());
    sh(&["ip", "-n", sw, "link", "add", "br0", "type", "bridge"]);
    sh(&["ip", "-n", sw, "link", "set", "br0", "up"]);
    for (i, (host, addr)) in [
        (boot, "10.77.1.1/24"),
        (a, "10.77.1.2/24"),
        (rt, "10.77.1.254/24"),
    ]
    .into_iter()
    .enumerate()
    {
        let port = format!("p{i}");
        sh(&[
            "ip", "-n", sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
            host,
        ]);
        sh(&["ip", "-n", sw, "link", "set", &port, "master", "br0"]);
        sh(&["ip", "-n", sw, "link", "set", &port, "up"]);
        sh(&["ip", "-n", host, "addr", "add", addr, "dev", "eth0"]);
        sh(&["ip", "-n", host, "link", "set", "eth0", "up"]);
    }
    sh(&[
        "ip", "-n", rt, "link", "add", "eth1", "type", "veth", "peer", "name", "eth0", "netns", b,
    ]);
    sh(&["ip", "-n", rt, "addr", "add", "10.78.0.1/24", "dev", "eth1"]);
    sh(&["ip", "-n", rt, "link", "set", "eth1", "up"]);
    sh(&["ip", "-n", b, "addr", "add", "10.78.0.2/24", "dev", "eth0"]);
    sh(&["ip", "-n", b, "link", "set", "eth0", "up"]);
    sh(&["ip", "-n", b, "route", "add", "default", "via", "10.78.0.1"]);
    sh(&[
        "ip",
        "netns",
        "exec",
        rt,
        "sysctl",
        "-qw",
        "net.ipv4.ip_forward=1",
    ]);
    sh(&[
        "ip",
        "netns",
        "exec",
        rt,
        "iptables",
        "-t",
        "nat",
        "-A",
        "POSTROUTING",
        "-s",
        "10.78.0.0/24",
        "-o",
        "eth0",
        "-j",
        "MASQUERADE",
    ]);
    ns
}

#[test]
fn a_node_behind_nat_reaches_its_rooms_peers_through_a_bootstrap_node() {
    if let Some(why) = netns_unavailable() {
        println!("SKIPPED: {why}");
        return;
    }
    let prefix = format!("tn{}", std::process::id() % 100_000);
    let ns = internet_with_nat(&prefix);
    let (ns_boot, ns_a, ns_b) = (
        ns.names[0].as_str(),
        ns.names[1].as_str(),
        ns.names[3].as_str(),
    );
    let dir = tempfile::tempdir().unwrap();

    // The bootstrap node, on the public segment.
    let config = dir.path().join("bootstrap.toml");
    std::fs::write(
        &config,
        format!(
            "key_file = {:?}\nlisten = [\"/ip4/10.77.1.1/tcp/4001\", \"/ip4/10.77.1.1/udp/4001/quic-v1\"]\n",
            dir.path().join("boot.key").to_str().unwrap()
        ),
    )
    .unwrap();
    let mut boot = std::process::Command::new("ip")
        .args(["netns", "exec", ns_boot])
        .arg(tincan_tests::workspace_bin("tincan-bootstrap"))
        .args(["--config", config.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let boot_addr = tincan_tests::first_stdout_line(&mut boot);
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _boot = Kill(boot);
    assert!(boot_addr.starts_with("/ip4/10.77.1.1/"), "{boot_addr}");

    let alice = Tincan::new(&dir.path().join("alice"), "pw-a");
    let bob = Tincan::new(&dir.path().join("bob"), "pw-b");
    alice.ok(&["init", "--username", "alice"]);
    bob.ok(&["init", "--username", "bob"]);
    // Alice has a public address; Bob is behind the NAT and says nothing
    // about his addresses. Neither uses mDNS: they are not on one LAN.
    let a = RunningNode::start_in(
        &alice,
        Some(ns_a),
        &[
            "up",
            "--no-mdns",
            "--advertise-listen-addrs",
            "--bootstrap",
            &boot_addr,
        ],
    );
    let b = RunningNode::start_in(
        &bob,
        Some(ns_b),
        &["up", "--no-mdns", "--bootstrap", &boot_addr],
    );
    let in_a = |args: &[&str]| run_json(&alice, ns_a, args);
    let in_b = |args: &[&str]| run_json(&bob, ns_b, args);

    let room = in_a(&["room", "create", "Across the NAT"])["id"]
        .as_str()
        .unwrap()
        .to_owned();
    in_a(&["log", "add", &room, "hello from the public side"]);
    let started = Instant::now();
    assert_eq!(in_b(&["room", "join", &room])["state"], "joined");
    eventually(Duration::from_secs(30), || {
        let log = in_b(&["log", "list", &room]);
        (log["entries"].as_array().unwrap().len() == 1).then_some(())
    })
    .expect("the room's log did not reach the node behind NAT within 30 s");
    println!("node behind NAT got the room in {:?}", started.elapsed());
    in_b(&["log", "add", &room, "hello from behind the NAT"]);
    eventually(Duration::from_secs(30), || {
        let log = in_a(&["log", "list", &room]);
        (log["entries"].as_array().unwrap().len() == 2).then_some(())
    })
    .expect("the NATed node's entry did not reach the public node within 30 s");
    // Alice sees Bob arriving from the router's public address: the
    // connection really crossed the NAT.
    let bob_id = bob.json(&["id"])["node_id"].as_str().unwrap().to_owned();
    let peers = in_a(&["peers"]);
    let bob_peer = peers
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["peer_id"] == bob_id.as_str())
        .unwrap_or_else(|| panic!("bob is not among alice's peers: {peers}"));
    assert!(
        bob_peer["address"]
            .as_str()
            .unwrap()
            .contains("10.77.1.254"),
        "{bob_peer}"
    );
    assert!(b.stop().success());
    assert!(a.stop().success());
}
