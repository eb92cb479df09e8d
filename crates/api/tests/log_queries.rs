//! RoomLog queries through the log's indexes (by room and time, by user),
//! checked against the scan that any other query takes, over real HTTP and
//! a real redb store; and a harness that prints their times on a room of
//! 500,000 entries (`cargo test -p tincan-api --test log_queries -- --ignored --nocapture`).

mod common;

use std::time::Instant;

use common::{TestNode, fast_config, start};
use serde_json::{Value, json};
use tincan_core::{Hlc, RoomSettings, UserKey, make};

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn query(n: &TestNode, token: &str, params: &[(&str, String)]) -> Value {
    let q: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("{k}={}", enc(v)))
        .collect();
    n.ok(
        "GET",
        &format!("/parse/classes/RoomLog?{}", q.join("&")),
        Some(token),
        None,
    )
    .await
}

fn ids(v: &Value) -> Vec<String> {
    v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["objectId"].as_str().unwrap().to_owned())
        .collect()
}

fn ptr(class: &str, id: &str) -> Value {
    json!({"__type": "Pointer", "className": class, "objectId": id})
}

/// A room whose log is written by its owner (the node's user) and by two
/// others who joined, straight into the store in big group commits.
/// Returns (room id, [owner, u1, u2] ids).
fn fill(n: &TestNode, entries: u64) -> (String, Vec<String>) {
    let owner = UserKey::from_seed(&n.node_key.seed());
    let others = [UserKey::from_seed(&[31; 32]), UserKey::from_seed(&[32; 32])];
    let t0 = 1_750_000_000_000u64;
    let (room, rec) = make::room(
        &owner,
        Hlc::new(t0, 0),
        [5; 16],
        "busy",
        RoomSettings::default(),
    )
    .unwrap();
    let mut first = vec![rec];
    for (i, u) in others.iter().enumerate() {
        first.push(make::join(u, Hlc::new(t0 + 1 + i as u64, 0), room).unwrap());
    }
    for r in n.store.apply_batch(first).unwrap() {
        r.unwrap();
    }
    let keys = [&owner, &others[0], &others[1]];
    let mut batch = Vec::with_capacity(5000);
    for i in 0..entries {
        // One millisecond apart: the scan sorts on the millisecond (ties
        // keep the log's order), the index on the whole HLC.
        let hlc = Hlc::new(t0 + 10 + i, 0);
        batch.push(make::log(keys[(i % 3) as usize], hlc, room, &format!("entry {i}")).unwrap());
        if batch.len() == 5000 || i + 1 == entries {
            for r in n.store.apply_batch(std::mem::take(&mut batch)).unwrap() {
                r.unwrap();
            }
        }
    }
    (
        room.to_hex(),
        keys.iter().map(|k| k.id().to_hex()).collect(),
    )
}

/// Every query shape the indexes answer gives the same page and count as
/// the scan does (forced by a `where` on `action` that every entry
/// matches), for each order, skip and user; a where on another user or
/// another class's pointer gives what the scan gives.
#[tokio::test]
async fn indexed_log_queries_agree_with_the_scan() {
    let n = start(fast_config(), None).await;
    let me = n
        .ok(
            "GET",
            "/parse/login?username=node&password=node-pw",
            None,
            None,
        )
        .await;
    let tok = me["sessionToken"].as_str().unwrap().to_owned();
    let (room, users) = fill(&n, 301);
    let every = json!({"$exists": true});
    for user in [None, Some(&users[0]), Some(&users[2])] {
        for order in ["", "createdAt", "-createdAt", "-timestamp", "updatedAt"] {
            for (skip, limit) in [(0, 10), (7, 50), (95, 1000), (400, 5)] {
                let mut w = json!({"room": ptr("Room", &room)});
                if let Some(u) = user {
                    w["user"] = ptr("_User", u);
                }
                let mut scan_w = w.clone();
                scan_w["action"] = every.clone();
                let mut params = vec![
                    ("skip", skip.to_string()),
                    ("limit", limit.to_string()),
                    ("count", "1".to_owned()),
                ];
                if !order.is_empty() {
                    params.push(("order", order.to_owned()));
                }
                let mut a = params.clone();
                a.push(("where", w.to_string()));
                let mut b = params.clone();
                b.push(("where", scan_w.to_string()));
                let indexed = query(&n, &tok, &a).await;
                let scanned = query(&n, &tok, &b).await;
                let what = format!("user {user:?} order {order:?} skip {skip} limit {limit}");
                assert_eq!(indexed["count"], scanned["count"], "{what}");
                assert_eq!(ids(&indexed), ids(&scanned), "{what}");
                assert_eq!(indexed["results"], scanned["results"], "{what}");
            }
        }
    }
    let all = query(
        &n,
        &tok,
        &[
            ("where", json!({"room": ptr("Room", &room)}).to_string()),
            ("count", "1".into()),
            ("limit", "0".into()),
        ],
    )
    .await;
    assert_eq!(all["count"], 301, "{all}");
    let mine = query(
        &n,
        &tok,
        &[
            (
                "where",
                json!({"room": ptr("Room", &room), "user": ptr("_User", &users[1])}).to_string(),
            ),
            ("count", "1".into()),
            ("limit", "0".into()),
        ],
    )
    .await;
    assert_eq!(mine["count"], 100, "{mine}");
    // A pointer of another class matches nothing, as in the scan.
    let wrong = query(
        &n,
        &tok,
        &[("where", json!({"room": ptr("Channel", &room)}).to_string())],
    )
    .await;
    assert_eq!(ids(&wrong), Vec::<String>::new());
}

/// The figures of issue 11: a room of 500,000 entries; the newest page, a
/// `where` on user, `count`, a deep skip, each timed over HTTP (the first
/// run of each warms the cache; the best of 5 is printed with the median).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a harness: builds 500,000 entries and prints times"]
async fn log_queries_on_500k_entries() {
    let n = start(fast_config(), None).await;
    let me = n
        .ok(
            "GET",
            "/parse/login?username=node&password=node-pw",
            None,
            None,
        )
        .await;
    let tok = me["sessionToken"].as_str().unwrap().to_owned();
    let entries: u64 = std::env::var("LOG_ENTRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500_000);
    let t = Instant::now();
    let (room, users) = tokio::task::block_in_place(|| fill(&n, entries));
    println!(
        "filled {entries} entries in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let in_room = json!({"room": ptr("Room", &room)});
    let by_user = json!({"room": ptr("Room", &room), "user": ptr("_User", &users[1])});
    let cases: Vec<(&str, Vec<(&str, String)>)> = vec![
        (
            "newest page (limit 100, -createdAt)",
            vec![
                ("where", in_room.to_string()),
                ("order", "-createdAt".into()),
            ],
        ),
        (
            "where user (limit 100, -createdAt)",
            vec![
                ("where", by_user.to_string()),
                ("order", "-createdAt".into()),
            ],
        ),
        (
            "count (limit 0)",
            vec![
                ("where", in_room.to_string()),
                ("count", "1".into()),
                ("limit", "0".into()),
            ],
        ),
        (
            "deep skip (skip 100000, limit 100)",
            vec![
                ("where", in_room.to_string()),
                ("order", "createdAt".into()),
                ("skip", "100000".into()),
            ],
        ),
    ];
    for (name, params) in cases {
        let mut times = Vec::new();
        for _ in 0..6 {
            let t = Instant::now();
            let v = query(&n, &tok, &params).await;
            times.push(t.elapsed().as_secs_f64() * 1000.0);
            assert!(v["results"].is_array(), "{v}");
        }
        times.remove(0);
        times.sort_by(f64::total_cmp);
        println!(
            "{name}: best {:.1} ms, median {:.1} ms",
            times[0],
            times[times.len() / 2]
        );
    }
}
