//! Two `tincan up` processes on loopback (no mDNS: the second dials the
//! first): a room created on one is joined by id from the other, fetched by
//! catch-up sync, and channels and log entries flow both ways by gossip.

use std::time::{Duration, Instant};

use tincan_tests::{LOOPBACK_UP, RunningNode, Tincan, eventually};

#[test]
fn two_processes_replicate_a_room() {
    let dir = tempfile::tempdir().unwrap();
    let alice = Tincan::new(&dir.path().join("alice"), "pw-a");
    let bob = Tincan::new(&dir.path().join("bob"), "pw-b");
    alice.ok(&["init", "--username", "alice"]);
    bob.ok(&["init", "--username", "bob"]);

    let mut a = RunningNode::start(&alice, LOOPBACK_UP);
    let a_addr = a.mesh_addr();
    let mut args = LOOPBACK_UP.to_vec();
    args.extend(["--bootstrap", &a_addr]);
    let b = RunningNode::start(&bob, &args);

    let peers = eventually(Duration::from_secs(20), || {
        let p = alice.json(&["peers"]);
        (p.as_array().unwrap().len() == 1).then_some(p)
    })
    .expect("the nodes did not connect within 20 s");
    assert!(
        peers[0]["peer_id"]
            .as_str()
            .unwrap()
            .starts_with("12D3KooW")
    );

    let room = alice.json(&["room", "create", "Mesh room"])["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let started = Instant::now();
    assert_eq!(bob.json(&["room", "join", &room])["state"], "joined");
    println!("bob fetched and joined the room in {:?}", started.elapsed());

    alice.ok(&["channel", "create", &room, "general"]);
    alice.ok(&["log", "add", &room, "alice says hi"]);
    let started = Instant::now();
    eventually(Duration::from_secs(20), || {
        let chans = bob.json(&["channel", "list", &room]);
        let log = bob.json(&["log", "list", &room]);
        (chans.as_array().unwrap().len() == 1 && log["entries"].as_array().unwrap().len() == 1)
            .then_some(())
    })
    .expect("alice's channel and log entry did not reach bob within 20 s");
    println!(
        "alice's channel and log entry reached bob in {:?}",
        started.elapsed()
    );

    bob.ok(&["log", "add", &room, "bob says hi"]);
    eventually(Duration::from_secs(20), || {
        let log = alice.json(&["log", "list", &room]);
        (log["entries"].as_array().unwrap().len() == 2).then_some(())
    })
    .expect("bob's log entry did not reach alice within 20 s");
    // Alice sees bob as a member.
    let shown = alice.json(&["room", "show", &room]);
    assert_eq!(shown["members"].as_array().unwrap().len(), 2, "{shown}");

    assert!(b.stop().success());
    assert!(a.stop().success());
    // Offline, both stores hold the same room.
    assert_eq!(
        bob.json(&["log", "list", &room])["entries"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
}
