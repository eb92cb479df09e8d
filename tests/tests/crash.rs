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

#[test]
fn every_acknowledged_record_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.redb");
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    println!("seed {seed}");
    let mut rng = seed | 1;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
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
