//! Finding each other at a LAN party: two hosts on one bridge (network
//! namespaces; root only, SKIPPED otherwise). Alice creates an open room;
//! Bob lists it with `tincan room list --nearby` without being told its id,
//! and joins it from that list.
//!
//! Addresses: 10.77.4.0/24, only inside the test's own namespaces.

use std::time::{Duration, Instant};

use tincan_tests::netns::{addr, run_json, veth};
use tincan_tests::{Namespaces, RunningNode, Tincan, eventually, netns_unavailable, sh};

#[test]
fn bob_lists_alices_open_room_and_joins_it_without_its_id() {
    if let Some(why) = netns_unavailable() {
        println!("SKIPPED: {why}");
        return;
    }
    let ns = Namespaces::create(
        &format!("td{}", std::process::id() % 10_000),
        &["a", "b", "sw"],
    );
    let (a, b, sw) = (&ns.names[0], &ns.names[1], &ns.names[2]);
    sh(&["ip", "-n", sw, "link", "add", "br0", "type", "bridge"]);
    sh(&["ip", "-n", sw, "link", "set", "br0", "up"]);
    for (i, (host, cidr)) in [(a, "10.77.4.1/24"), (b, "10.77.4.2/24")]
        .into_iter()
        .enumerate()
    {
        let port = format!("p{i}");
        veth(sw, &port, host, "eth0");
        sh(&["ip", "-n", sw, "link", "set", &port, "master", "br0"]);
        sh(&["ip", "-n", sw, "link", "set", &port, "up"]);
        addr(host, "eth0", cidr);
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
    let dir = tempfile::tempdir().unwrap();
    let alice = Tincan::new(&dir.path().join("alice"), "pw-a");
    let bob = Tincan::new(&dir.path().join("bob"), "pw-b");
    alice.ok(&["init", "--username", "alice"]);
    bob.ok(&["init", "--username", "bob"]);
    // No flags at all: a LAN party has no bootstrap node and no internet.
    let args = ["up", "--input", "null", "--output", "null"];
    let _a = RunningNode::start_in(&alice, Some(a), &args);
    let room = run_json(&alice, a, &["room", "create", "LAN party"])["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let invite_only = run_json(&alice, a, &["room", "create", "Private", "--invite-only"])["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let started = Instant::now();
    let _b = RunningNode::start_in(&bob, Some(b), &args);
    let listed = eventually(Duration::from_secs(20), || {
        let nearby = run_json(&bob, b, &["room", "list", "--nearby"]);
        nearby
            .as_array()?
            .iter()
            .find(|r| r["title"] == "LAN party")
            .cloned()
            .map(|r| (r, nearby.clone()))
    });
    let (entry, all) = listed.expect("bob never saw alice's room on the LAN");
    let took = started.elapsed();
    println!(
        "FIGURE lan_directory: alice's room listed at bob {took:?} after bob's node started: {entry}"
    );
    assert_eq!(entry["id"], room.as_str());
    assert_eq!(entry["owner_name"], "alice");
    assert!(
        !all.to_string().contains(&invite_only),
        "an invite-only room was announced: {all}"
    );
    // Bob joins from the list, by the id it gave him.
    let id = entry["id"].as_str().unwrap();
    let joined = eventually(Duration::from_secs(30), || {
        bob.cmd_in(Some(b))
            .args(["room", "join", id, "--json"])
            .output()
            .ok()?
            .status
            .success()
            .then_some(())
    });
    assert!(joined.is_some(), "bob could not join the listed room");
    let members = eventually(Duration::from_secs(30), || {
        let shown = run_json(&alice, a, &["room", "show", &room]);
        (shown["members"].as_array()?.len() == 2).then_some(())
    });
    assert!(members.is_some(), "alice never saw bob join");
}
