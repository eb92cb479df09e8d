//! An invite-only room across three `tincan up` processes on loopback, with
//! the CLI a player uses (issue 14): alice invites bob and sends him the
//! link the CLI prints; bob joins with it and the room, its channel and log
//! flow both ways. Mallory's node is connected to both and follows the
//! room by its id, as `tincan room join <id>` does: it gets nothing of the
//! room, and no byte of its log reaches its store.

use std::time::{Duration, Instant};

use tincan_tests::{LOOPBACK_UP, RunningNode, Tincan, eventually};

const SECRET: &str = "meet at the north gate, password hunter2";

#[test]
fn an_invitee_joins_by_link_and_reads_the_room_while_a_stranger_gets_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let alice = Tincan::new(&dir.path().join("alice"), "pw-a");
    let bob = Tincan::new(&dir.path().join("bob"), "pw-b");
    let mallory = Tincan::new(&dir.path().join("mallory"), "pw-m");
    alice.ok(&["init", "--username", "alice"]);
    bob.ok(&["init", "--username", "bob"]);
    mallory.ok(&["init", "--username", "mallory"]);
    let bob_id = bob.json(&["id"])["user_id"].as_str().unwrap().to_owned();

    let mut a = RunningNode::start(&alice, LOOPBACK_UP);
    let a_addr = a.mesh_addr();
    let mut args = LOOPBACK_UP.to_vec();
    args.extend(["--bootstrap", &a_addr]);
    let mut b = RunningNode::start(&bob, &args);
    let b_addr = b.mesh_addr();
    let both = format!("{a_addr},{b_addr}");
    let mut margs = LOOPBACK_UP.to_vec();
    margs.extend(["--bootstrap", &both]);
    let _m = RunningNode::start(&mallory, &margs);
    eventually(Duration::from_secs(20), || {
        (alice.json(&["peers"]).as_array().unwrap().len() == 2).then_some(())
    })
    .expect("the three nodes did not connect within 20 s");

    let room = alice.json(&["room", "create", "Raid", "--invite-only"])["id"]
        .as_str()
        .unwrap()
        .to_owned();
    alice.ok(&["channel", "create", &room, "war-room"]);
    alice.ok(&["log", "add", &room, SECRET]);
    let invited = alice.json(&["room", "member", &room, &bob_id, "invite"]);
    let link = invited["link"]
        .as_str()
        .expect("an invite prints a link")
        .to_owned();
    assert!(link.starts_with("tincan://join/"), "{link}");
    assert!(
        link.contains("k="),
        "an invite-only room's link carries its locator: {link}"
    );
    // The same link, asked again.
    assert!(
        alice.json(&["room", "link", &room])["link"]
            .as_str()
            .unwrap()
            .starts_with("tincan://join/")
    );

    // Mallory knows the room id (say, from a screenshot) and follows it.
    let refused = mallory.run(&["room", "join", &room]);
    println!(
        "mallory's join by id: {}",
        String::from_utf8_lossy(&refused.stderr).trim()
    );

    let started = Instant::now();
    let joined = bob.json(&["room", "join", &link]);
    println!("bob joined by link in {:?}: {joined}", started.elapsed());
    assert_eq!(joined["state"], "joined", "{joined}");
    eventually(Duration::from_secs(20), || {
        let log = bob.json(&["log", "list", &room]);
        let chans = bob.json(&["channel", "list", &room]);
        (log.to_string().contains(SECRET) && chans.as_array().unwrap().len() == 1).then_some(())
    })
    .expect("bob never read the room's channel and log");
    println!(
        "bob read the channel and log {:?} after joining",
        started.elapsed()
    );

    bob.ok(&["log", "add", &room, "bob: on my way"]);
    eventually(Duration::from_secs(20), || {
        let log = alice.json(&["log", "list", &room]);
        log.to_string().contains("bob: on my way").then_some(())
    })
    .expect("bob's entry never reached alice");
    let shown = alice.json(&["room", "show", &room]);
    assert!(shown.to_string().contains(&bob_id), "{shown}");

    // Give mallory's node every chance: sync rounds run every few seconds.
    std::thread::sleep(Duration::from_secs(6));
    let listed = mallory.json(&["room", "list"]);
    assert!(
        !listed.to_string().contains(&room),
        "the stranger's node holds the room: {listed}"
    );
    let log = mallory.run(&["log", "list", &room]);
    assert!(
        !String::from_utf8_lossy(&log.stdout).contains(SECRET),
        "the stranger read the log"
    );
    drop(b);
    drop(a);
    // On disk: no byte of the log text in the stranger's store file.
    let mut found = false;
    for entry in walk(&dir.path().join("mallory")) {
        if std::fs::read(&entry).is_ok_and(|bytes| contains(&bytes, SECRET.as_bytes())) {
            found = true;
        }
    }
    assert!(
        !found,
        "the log's text is in a file of the stranger's data directory"
    );
    // And the member's store has it (the check above can see text at all).
    let in_bob = walk(&dir.path().join("bob"))
        .into_iter()
        .any(|p| std::fs::read(&p).is_ok_and(|b| contains(&b, SECRET.as_bytes())));
    println!("the text is in the member's store file: {in_bob}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
