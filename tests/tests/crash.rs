//! Durability: a child process applies records and prints each acknowledged
//! id; we kill it with SIGKILL at random moments, reopen the store and find
//! every acknowledged record.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tincan_core::RecordId;
use tincan_store::Store;
use tincan_tests::workspace_bin;

const ROUNDS: u64 = 25;

/// A xorshift generator seeded from the clock (the seed is printed, so a
/// failing run can be told apart).
fn seeded_rng() -> impl FnMut() -> u64 {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    println!("seed {seed}");
    let mut rng = seed | 1;
    move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    }
}

#[test]
fn every_acknowledged_record_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.redb");
    let mut next = seeded_rng();
    let mut acked: Vec<RecordId> = Vec::new();
    for round in 0..ROUNDS {
        let mut child = Command::new(workspace_bin("crash-writer"))
            .arg(&path)
            .arg((round * 1_000_000).to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start crash-writer (built with the tests crate)");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::sync_channel::<String>(1 << 16);
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Let it acknowledge a few records, then kill it at a random moment.
        let wait_for = 1 + next() % 40;
        let extra = Duration::from_micros(next() % 30_000);
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut this_round = 0;
        while this_round < wait_for && Instant::now() < deadline {
            if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
                acked.push(RecordId::from_hex(&line).unwrap());
                this_round += 1;
            }
        }
        assert!(
            this_round > 0,
            "round {round}: the writer acknowledged nothing in 30 s"
        );
        std::thread::sleep(extra);
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        reader.join().unwrap();
        // Everything printed before death was acknowledged.
        while let Ok(line) = rx.try_recv() {
            acked.push(RecordId::from_hex(&line).unwrap());
        }
        let store = Store::open(&path, Default::default()).expect("reopen after SIGKILL");
        for id in &acked {
            assert!(
                store.record(id).unwrap().is_some(),
                "round {round}: acknowledged record {id} lost"
            );
        }
    }
    println!(
        "{ROUNDS} SIGKILL rounds, {} acknowledged records, all present",
        acked.len()
    );
}

/// 8 concurrent API clients write RoomLog entries to a real `tincan up`
/// (group commit: their writes share durable commits through one writer);
/// the node is killed with SIGKILL at a random moment while they write;
/// every entry whose 201 came back is in the store afterwards.
#[test]
fn every_acknowledged_api_write_survives_sigkill() {
    use serde_json::json;
    use tincan_tests::{LOOPBACK_UP, RunningNode, Tincan};
    const API_ROUNDS: u64 = 3;
    const WRITERS: usize = 8;
    let dir = tempfile::tempdir().unwrap();
    let t = Tincan::new(&dir.path().join("node"), "node-pw");
    t.ok(&["init", "--username", "writer"]);
    let mut next = seeded_rng();
    let mut acked: Vec<RecordId> = Vec::new();
    let mut room = None;
    for round in 0..API_ROUNDS {
        let mut node = RunningNode::start(&t, LOOPBACK_UP);
        let api = node.api_url();
        let addr = api.trim_start_matches("http://").to_owned();
        let (s, login) = tincan_tests::api_request(
            &addr,
            "POST",
            "/parse/login",
            None,
            Some(json!({"username": "writer", "password": "node-pw"})),
        )
        .unwrap();
        assert_eq!(s, 200, "{login}");
        let token = login["sessionToken"].as_str().unwrap().to_owned();
        let room_id = room
            .get_or_insert_with(|| {
                let (s, r) = tincan_tests::api_request(
                    &addr,
                    "POST",
                    "/parse/classes/Room",
                    Some(&token),
                    Some(json!({"title": "crash"})),
                )
                .unwrap();
                assert_eq!(s, 201, "{r}");
                r["objectId"].as_str().unwrap().to_owned()
            })
            .clone();
        // Bound: more than 60 s of writes at any rate a node reaches here.
        let (tx, rx) = mpsc::sync_channel::<String>(1 << 17);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let (addr, token, room_id, tx, stop) = (
                    addr.clone(),
                    token.clone(),
                    room_id.clone(),
                    tx.clone(),
                    stop.clone(),
                );
                std::thread::spawn(move || {
                    let deadline = Instant::now() + Duration::from_secs(60);
                    let mut i = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed)
                        && Instant::now() < deadline
                    {
                        let body = json!({
                            "room": {"__type": "Pointer", "className": "Room", "objectId": room_id},
                            "action": format!("round {round} writer {w} entry {i}"),
                        });
                        i += 1;
                        match tincan_tests::api_request(
                            &addr,
                            "POST",
                            "/parse/classes/RoomLog",
                            Some(&token),
                            Some(body),
                        ) {
                            Ok((201, v)) => {
                                let _ = tx.send(v["objectId"].as_str().unwrap().to_owned());
                            }
                            Ok((status, v)) => panic!("writer {w}: {status} {v}"),
                            // The node died mid-request: not acknowledged.
                            Err(_) => break,
                        }
                    }
                })
            })
            .collect();
        drop(tx);
        // Let them acknowledge some, then kill at a random moment.
        let wait_for = 20 + next() % 200;
        let mut this_round = 0;
        let deadline = Instant::now() + Duration::from_secs(60);
        while this_round < wait_for && Instant::now() < deadline {
            if let Ok(id) = rx.recv_timeout(Duration::from_millis(100)) {
                acked.push(RecordId::from_hex(&id).unwrap());
                this_round += 1;
            }
        }
        assert!(
            this_round > 0,
            "round {round}: no write acknowledged in 60 s"
        );
        std::thread::sleep(Duration::from_micros(next() % 20_000));
        node.child.kill().unwrap(); // SIGKILL
        node.child.wait().unwrap();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for w in writers {
            w.join().unwrap();
        }
        // Every 201 that came back before death was acknowledged.
        acked.extend(rx.try_iter().map(|id| RecordId::from_hex(&id).unwrap()));
        drop(node);
        let store = Store::open(t.data_dir.join("store.redb"), Default::default())
            .expect("reopen after SIGKILL");
        for id in &acked {
            assert!(
                store.record(id).unwrap().is_some(),
                "round {round}: acknowledged API write {id} lost"
            );
        }
    }
    println!(
        "{API_ROUNDS} SIGKILL rounds of {WRITERS} API writers, {} acknowledged writes, all present",
        acked.len()
    );
}
