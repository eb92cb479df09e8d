//! Voice peers that do not play along, against real `tincan up` processes
//! on loopback: the attacker is built from the project's own libraries (a
//! `tincan_mesh::Mesh` that gossips on the room's voice topic and a
//! `tincan_media::VoiceEndpoint` that answers every voice dial). Each test
//! states the attack and what the nodes must do about it (issues 13, 15).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tincan_core::{ChannelId, Hlc, NodeBinding, NodeKey, RoomId, UserKey};
use tincan_media::control::{
    Answer, MAX_CONTROL_MESSAGE, Request, Welcome, read_message, write_message,
};
use tincan_media::presence::{Candidate, CandidateKind, Presence};
use tincan_media::{EndpointConfig, VoiceEndpoint};
use tincan_mesh::{Mesh, MeshConfig};
use tincan_store::{Store, StoreConfig};
use tincan_tests::voice::write_speech;
use tincan_tests::{LOOPBACK_UP, RunningNode, Tincan, eventually};

const LIMIT: Duration = Duration::from_secs(30);

fn up_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = LOOPBACK_UP.to_vec();
    v.extend_from_slice(extra);
    v
}

/// A node key seed whose PeerId text sorts above `other`'s: an attacker
/// that grinds its key so that the member is the one who dials it.
fn seed_above(other: &str) -> [u8; 32] {
    for i in 0u32..100_000 {
        let seed = *blake3::hash(&i.to_be_bytes()).as_bytes();
        if NodeKey::from_seed(&seed).id().peer_id().as_str() > other {
            return seed;
        }
    }
    panic!("no key in 100000 tries sorts above {other}");
}

/// What the attacker's voice endpoint saw.
#[derive(Default)]
struct Caught {
    /// Voice connections members opened to it.
    connections: AtomicU64,
    /// Voice datagrams that reached it.
    datagrams: AtomicU64,
}

/// Welcomes every dial and counts what arrives on it.
async fn answer_every_dial(endpoint: Arc<VoiceEndpoint>, caught: Arc<Caught>) {
    while let Some(accepting) = endpoint.accept_incoming().await {
        let caught = caught.clone();
        tokio::spawn(async move {
            let Ok(conn) = accepting.finish().await else {
                return;
            };
            caught.connections.fetch_add(1, Ordering::Relaxed);
            let Ok((mut send, mut recv)) = conn.accept_control().await else {
                return;
            };
            let Ok(Request::Join(_)) = read_message(&mut recv, MAX_CONTROL_MESSAGE).await else {
                return;
            };
            let welcome = Answer::Welcome(Welcome {
                observed: conn.remote_addr(),
                speaker: 0,
                speakers: Vec::new(),
            });
            if write_message(&mut send, &welcome).await.is_err() {
                return;
            }
            while conn.recv_bytes().await.is_ok() {
                caught.datagrams.fetch_add(1, Ordering::Relaxed);
            }
            drop(send);
        });
    }
}

/// A user who never joined the room runs a node whose PeerId sorts above
/// the members' and advertises, on the room's voice topic, a presence in
/// the channel with a candidate of its own voice endpoint. No member may
/// dial it, send it a voice datagram, or list it among the channel's
/// participants; the members still link with each other.
#[test]
fn a_non_member_with_a_high_peer_id_gets_no_voice_and_is_shown_nowhere() {
    let dir = tempfile::tempdir().unwrap();
    let speech = dir.path().join("speech.wav");
    write_speech(&speech, 10.0);
    let alice = Tincan::new(&dir.path().join("alice"), "pw-a");
    let bob = Tincan::new(&dir.path().join("bob"), "pw-b");
    alice.ok(&["init", "--username", "alice"]);
    bob.ok(&["init", "--username", "bob"]);
    let alice_peer = alice.json(&["id"])["node_id"].as_str().unwrap().to_owned();
    let bob_peer = bob.json(&["id"])["node_id"].as_str().unwrap().to_owned();
    let highest = alice_peer.clone().max(bob_peer.clone());
    let seed = seed_above(&highest);
    let node_key = NodeKey::from_seed(&seed);
    let stranger = UserKey::from_seed(&[0xee; 32]);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let caught = Arc::new(Caught::default());
    let (mesh, attacker_addr, voice_addr) = rt.block_on(async {
        let store = Arc::new(Store::in_memory(StoreConfig::default()).unwrap());
        let mesh = Mesh::start(MeshConfig::loopback(seed), store)
            .await
            .unwrap();
        let addrs = tokio::time::timeout(Duration::from_secs(10), mesh.listen_addrs())
            .await
            .unwrap()
            .unwrap();
        let addr = addrs[0]
            .clone()
            .with(libp2p::multiaddr::Protocol::P2p(mesh.peer_id()));
        let endpoint = Arc::new(
            VoiceEndpoint::bind(
                seed,
                "127.0.0.1:0".parse().unwrap(),
                &EndpointConfig::default(),
            )
            .unwrap(),
        );
        let voice_addr: SocketAddr = endpoint.local_addr().unwrap();
        tokio::spawn(answer_every_dial(endpoint, caught.clone()));
        (mesh, addr.to_string(), voice_addr)
    });
    assert!(mesh.peer_id().to_string() > highest);

    let input = format!("wav:{}", speech.display());
    let mut a = RunningNode::start(
        &alice,
        &up_args(&[
            "--bootstrap",
            &attacker_addr,
            "--input",
            &input,
            "--output",
            "null",
        ]),
    );
    let a_addr = a.mesh_addr();
    let _b = RunningNode::start(
        &bob,
        &up_args(&[
            "--bootstrap",
            &a_addr,
            "--bootstrap",
            &attacker_addr,
            "--input",
            "null",
            "--output",
            "null",
        ]),
    );
    let room_text = alice.json(&["room", "create", "Voice room"])["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let channel_text = alice.json(&["channel", "create", &room_text, "general"])["channel"]
        .as_str()
        .unwrap()
        .to_owned();
    let room = RoomId::from_hex(&room_text).unwrap();
    let channel = ChannelId::from_hex(&channel_text).unwrap();
    eventually(LIMIT, || {
        bob.cmd()
            .args(["room", "join", &room_text, "--json"])
            .output()
            .ok()?
            .status
            .success()
            .then_some(())
    })
    .expect("bob joins alice's room");
    eventually(LIMIT, || {
        (bob.json(&["channel", "list", &room_text]).as_array()?.len() == 1).then_some(())
    })
    .expect("bob sees the channel");
    alice.ok(&["voice", "join", &room_text, &channel_text]);
    bob.ok(&["voice", "join", &room_text, &channel_text]);

    // The stranger's presence, every half second for 10 s, as a member's
    // would be: signed binding, gossiped by its own node.
    let binding = NodeBinding::new(&stranger, node_key.id(), Hlc::new(1, 0));
    let published = rt.block_on(async {
        mesh.subscribe_room(room).await.unwrap();
        let start = Instant::now();
        let mut published = 0u32;
        while start.elapsed() < Duration::from_secs(10) {
            let presence = Presence {
                binding: binding.clone(),
                room,
                channel: Some(channel),
                candidates: vec![Candidate {
                    addr: voice_addr,
                    kind: CandidateKind::Host,
                }],
                relayed: false,
                sent_ms: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_millis() as u64,
            };
            // In the session's own signal format, as a member's node sends it.
            let signal = tincan_voice::protocol::VoiceSignal::Presence(presence)
                .encode()
                .unwrap();
            if matches!(mesh.publish_signal(room, signal).await, Ok(true)) {
                published += 1;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        published
    });
    assert!(published > 0, "the stranger's presence never left its node");

    let a_status = alice.json(&["status"]);
    let b_status = bob.json(&["status"]);
    let stranger_hex = stranger.id().to_hex();
    for (name, status) in [("alice", &a_status), ("bob", &b_status)] {
        println!("FIGURE hostile_voice non-member: {name} status {status}");
        let participants = status["participants"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert!(
            !participants
                .iter()
                .any(|p| p[0].as_str() == Some(stranger_hex.as_str())),
            "{name} lists the stranger as a participant: {status}"
        );
        assert!(
            status["links"]
                .as_array()
                .is_some_and(|l| l.len() == 1 && l[0]["user"] != stranger_hex.as_str()),
            "{name} must hold exactly its link with the other member: {status}"
        );
    }
    let refused = a_status["presences_refused"].as_u64().unwrap_or(0)
        + b_status["presences_refused"].as_u64().unwrap_or(0);
    let (connections, datagrams) = (
        caught.connections.load(Ordering::Relaxed),
        caught.datagrams.load(Ordering::Relaxed),
    );
    println!(
        "FIGURE hostile_voice non-member: {published} presences published, {refused} refused by the members, {connections} voice connections and {datagrams} voice datagrams reached the stranger"
    );
    assert_eq!(datagrams, 0, "voice reached a non-member");
    assert_eq!(connections, 0, "a member dialled a non-member");
    assert!(refused > 0, "the members never saw the stranger's presence");
    drop(a);
}

/// Links of a node's voice session, as `tincan status` shows them.
fn links(t: &Tincan) -> Vec<serde_json::Value> {
    t.json(&["status"])["links"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// A member talks (a looping microphone) while the owner kicks them: every
/// other member's node closes its link with the kicked user within 5 s of
/// the kick and does not link with them again, though the kicked node
/// keeps its presence up and keeps dialling.
#[test]
fn a_member_kicked_while_talking_is_dropped_by_every_peer_within_5_s() {
    let dir = tempfile::tempdir().unwrap();
    let speech = dir.path().join("speech.wav");
    write_speech(&speech, 3.0);
    let input = format!("wav-loop:{}", speech.display());
    let names = ["alice", "bob", "carol"];
    let nodes = tincan_tests::players(dir.path(), &names);
    let mut a = RunningNode::start(
        &nodes[0],
        &up_args(&["--input", "null", "--output", "null"]),
    );
    let a_addr = a.mesh_addr();
    let _others: Vec<RunningNode> = nodes[1..]
        .iter()
        .map(|t| {
            RunningNode::start(
                t,
                &up_args(&[
                    "--bootstrap",
                    &a_addr,
                    "--input",
                    &input,
                    "--output",
                    "null",
                ]),
            )
        })
        .collect();
    let room = nodes[0].json(&["room", "create", "Kick"])["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let channel = nodes[0].json(&["channel", "create", &room, "general"])["channel"]
        .as_str()
        .unwrap()
        .to_owned();
    for t in &nodes[1..] {
        assert_eq!(t.json(&["room", "join", &room])["state"], "joined");
    }
    tincan_tests::wait_for_room(&nodes, &room, 3, 1, LIMIT);
    for t in &nodes {
        t.ok(&["voice", "join", &room, &channel]);
    }
    for t in &nodes {
        eventually(LIMIT, || (links(t).len() == 2).then_some(()))
            .unwrap_or_else(|| panic!("no full mesh: {}", t.json(&["status"])));
    }
    let bob_user = nodes[1].json(&["id"])["user_id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Bob is talking to alice now.
    eventually(LIMIT, || {
        (nodes[0].json(&["status"])["frames_received"].as_u64()? > 100).then_some(())
    })
    .expect("bob's voice never reached alice");
    let holds_bob = |t: &Tincan| links(t).iter().any(|l| l["user"] == bob_user.as_str());
    assert!(
        holds_bob(&nodes[0]) && holds_bob(&nodes[2]),
        "alice and carol must link with bob before the kick"
    );
    let kicked_at = Instant::now();
    nodes[0].ok(&["room", "member", &room, &bob_user, "kick"]);
    let mut dropped = Vec::new();
    for (name, t) in [("alice", &nodes[0]), ("carol", &nodes[2])] {
        eventually(Duration::from_secs(10), || (!holds_bob(t)).then_some(()))
            .unwrap_or_else(|| panic!("{name} still links with bob 10 s after the kick"));
        dropped.push((name, kicked_at.elapsed()));
    }
    // Bob's node keeps trying for 3 s more: nobody links with it again.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        for (name, t) in [("alice", &nodes[0]), ("carol", &nodes[2])] {
            assert!(!holds_bob(t), "{name} linked with bob again after the kick");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    for (name, after) in &dropped {
        println!(
            "FIGURE hostile_voice kick: {name} dropped the kicked member {:.2} s after the kick (command included)",
            after.as_secs_f64()
        );
        assert!(
            *after <= Duration::from_secs(5),
            "{name} took {after:?} to drop the kicked member"
        );
    }
    drop(a);
}

/// An invite-only room's channel carried by a voice relay (`tincan-bootstrap`
/// as an operator runs it; the mesh limit of 0 sends the channel there):
/// the owner kicks a member who is talking. The relay cannot read the
/// room's sealed memberships; it drops the kicked member because the owner
/// granted a new key epoch to those who stay and only they can show its
/// relay token (each remaining node shows it as soon as its store holds
/// the grant). The others stay on the relay, in the connection they had,
/// and keep hearing each other. (The kicked node's own store learns of the
/// kick and it leaves; one that does not play along and stays is removed
/// by the relay and refused with its old proof: bootstrap/tests/voice_relay.rs.)
#[test]
fn a_member_kicked_from_an_invite_only_room_is_dropped_by_the_relay_and_the_others_stay() {
    let dir = tempfile::tempdir().unwrap();
    let boot = tincan_tests::LoopbackRelay::start(&dir.path().join("boot"));
    let speech = dir.path().join("speech.wav");
    write_speech(&speech, 3.0);
    let input = format!("wav-loop:{}", speech.display());
    let names = ["alice", "bob", "carol"];
    let nodes = tincan_tests::players(dir.path(), &names);
    let _running: Vec<RunningNode> = nodes
        .iter()
        .map(|t| {
            RunningNode::start(
                t,
                &up_args(&[
                    "--bootstrap",
                    &boot.mesh_addr,
                    "--voice-relay",
                    &boot.relay,
                    "--voice-mesh-limit",
                    "0",
                    "--input",
                    &input,
                    "--output",
                    "null",
                ]),
            )
        })
        .collect();
    let user_of = |t: &Tincan| t.json(&["id"])["user_id"].as_str().unwrap().to_owned();
    let (bob_id, carol_id) = (user_of(&nodes[1]), user_of(&nodes[2]));
    let room = nodes[0].json(&["room", "create", "Raid", "--invite-only"])["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let channel = nodes[0].json(&["channel", "create", &room, "comms"])["channel"]
        .as_str()
        .unwrap()
        .to_owned();
    for (t, id) in [(&nodes[1], &bob_id), (&nodes[2], &carol_id)] {
        let link = nodes[0].json(&["room", "member", &room, id, "invite"])["link"]
            .as_str()
            .unwrap()
            .to_owned();
        let joined = eventually(LIMIT, || {
            let out = t.run(&["room", "join", &link]);
            out.status.success().then_some(())
        });
        assert!(joined.is_some(), "{id} could not join by its invite link");
    }
    tincan_tests::wait_for_room(&nodes, &room, 3, 1, LIMIT);
    for t in &nodes {
        t.ok(&["voice", "join", &room, &channel]);
    }
    let relay_metric =
        |series: &str| tincan_tests::metric(&tincan_tests::scrape(&boot.metrics), series);
    eventually(LIMIT, || {
        (relay_metric("tincan_voice_relay_members") == 3.0).then_some(())
    })
    .expect("the three nodes never all joined the relay");
    for t in &nodes {
        eventually(LIMIT, || {
            let s = t.json(&["status"]);
            (s["relayed"] == true && s["frames_received"].as_u64()? > 100).then_some(())
        })
        .unwrap_or_else(|| panic!("no voice through the relay: {}", t.json(&["status"])));
    }
    let refused_before = relay_metric("tincan_voice_relay_joins_total{outcome=\"refused\"}");
    let kicked_at = Instant::now();
    nodes[0].ok(&["room", "member", &room, &carol_id, "kick"]);
    eventually(Duration::from_secs(10), || {
        (relay_metric("tincan_voice_relay_members") == 2.0).then_some(())
    })
    .unwrap_or_else(|| {
        for (name, t) in names.iter().zip(&nodes) {
            println!("{name}: {}", t.json(&["status"]));
        }
        panic!(
            "the relay still carries the kicked member 10 s after the kick:\n{}",
            tincan_tests::scrape(&boot.metrics)
        )
    });
    let dropped = kicked_at.elapsed();
    println!(
        "FIGURE hostile_voice relay kick: the relay dropped the kicked member {:.2} s after the kick (command included)",
        dropped.as_secs_f64()
    );
    // Alice leaves voice and comes back: her new proof shows the relay the
    // owner's grant of the new epoch, and from then on the relay refuses
    // the old one. Bob (a member: the relay admitted him on the old epoch's
    // token) showed the new token when his store got the grant, so he
    // keeps his connection.
    // (Her node grants the new epoch a moment after the kick: its key
    // upkeep runs 100 ms after a change.)
    std::thread::sleep(Duration::from_secs(1));
    nodes[0].ok(&["voice", "leave"]);
    nodes[0].ok(&["voice", "join", &room, &channel]);
    eventually(LIMIT, || {
        (relay_metric("tincan_voice_relay_joins_total{outcome=\"accepted\"}") >= 4.0).then_some(())
    })
    .expect("alice never rejoined the relay");
    let heard: Vec<u64> = nodes[..2]
        .iter()
        .map(|t| t.json(&["status"])["frames_received"].as_u64().unwrap())
        .collect();
    // Past the relay's grace for showing a new epoch's token, and long
    // enough to count the frames heard since.
    std::thread::sleep(
        tincan_bootstrap::voice_relay::SHOW_NEW_TOKEN_WITHIN * 2 + Duration::from_secs(2),
    );
    // The kicked node left by itself (its store learnt of the kick) or the
    // relay removed it; a node that does not play along is removed by the
    // relay (bootstrap/tests/voice_relay.rs). Nobody else was: the only
    // join since the first three is alice's.
    let removed = relay_metric("tincan_voice_relay_members_removed_total");
    assert!(removed <= 1.0, "the relay removed {removed} members");
    assert_eq!(relay_metric("tincan_voice_relay_members"), 2.0);
    assert_eq!(
        relay_metric("tincan_voice_relay_joins_total{outcome=\"accepted\"}"),
        4.0,
        "bob lost his place on the relay and joined again"
    );
    for (i, t) in nodes[..2].iter().enumerate() {
        let s = t.json(&["status"]);
        println!(
            "{}: relayed {}, tokens shown {}, frames {} -> {}",
            names[i], s["relayed"], s["relay_tokens_shown"], heard[i], s["frames_received"]
        );
        assert_eq!(s["relayed"], true, "{s}");
        assert!(
            s["frames_received"].as_u64().unwrap() > heard[i] + 100,
            "{} stopped hearing after the kick: {s}",
            names[i]
        );
    }
    assert_eq!(
        nodes[1].json(&["status"])["relay_tokens_shown"],
        1,
        "bob showed the new epoch's token once"
    );
    let refused =
        relay_metric("tincan_voice_relay_joins_total{outcome=\"refused\"}") - refused_before;
    println!("the relay removed {removed} members and refused {refused} joins after the kick");
    assert!(
        dropped <= Duration::from_secs(5),
        "the relay took {dropped:?} to drop the kicked member"
    );
}
