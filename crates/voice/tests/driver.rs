//! The tokio driver over real sockets: three `VoiceDriver`s in one process,
//! each with its own quinn voice endpoint on loopback, its own store, its
//! own audio engine (a WAV file as the microphone and another as the
//! speaker); the room's voice topic is an in-process bus that delivers
//! each signal to the other nodes with its publisher's PeerId, as
//! gossipsub does. Audio is checked by correlation.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libp2p_identity::PeerId;
use tincan_audio::capture::{CaptureConfig, GateMode};
use tincan_audio::device::DeviceSpec;
use tincan_audio::engine::EngineConfig;
use tincan_core::permissions::default_permissions;
use tincan_core::{
    ChannelId, Hlc, JoinPolicy, MemberRole, MemberState, NodeBinding, NodeKey, RoomId,
    RoomSettings, SignedRecord, UserKey, make,
};
use tincan_media::control::{
    Answer, Hello, MAX_CONTROL_MESSAGE, Request, read_message, write_message,
};
use tincan_media::{EndpointConfig, VoiceDatagram, VoiceEndpoint};
use tincan_store::{Store, StoreConfig};
use tincan_voice::driver::{DriverConfig, SignalOut, VoiceDriver, accept_loop};
use tincan_voice::gate::peer_id_of;

/// The room's voice topic: every node's driver, by PeerId.
#[derive(Default)]
struct Bus {
    nodes: Mutex<Vec<(PeerId, VoiceDriver)>>,
}

struct Out {
    bus: Arc<Bus>,
    me: PeerId,
}

impl SignalOut for Out {
    fn publish(&self, _room: RoomId, signal: Vec<u8>) {
        // Delivered after 20 ms, as gossip would be (and so that a node
        // whose driver has just started is on the bus by then).
        let (bus, me) = (self.bus.clone(), self.me);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let nodes = bus.nodes.lock().unwrap().clone();
            for (peer, driver) in nodes {
                if peer != me {
                    driver.handle_signal(me, signal.clone());
                }
            }
        });
    }
}

struct Node {
    user: UserKey,
    peer: PeerId,
    node_key_seed: [u8; 32],
    endpoint: Arc<VoiceEndpoint>,
    store: Arc<Store>,
    current: Arc<Mutex<Option<VoiceDriver>>>,
    output: PathBuf,
}

fn speech(path: &Path, seconds: f32) -> Vec<f32> {
    // A speech-like signal: voiced syllables with a moving pitch and pauses.
    let n = (seconds * 48_000.0) as usize;
    let mut phase = 0.0f32;
    let samples: Vec<f32> = (0..n)
        .map(|i| {
            let t = i as f32 / 48_000.0;
            let syllable = (t * 3.3).fract();
            let envelope = if syllable < 0.6 {
                (syllable / 0.6 * std::f32::consts::PI).sin()
            } else {
                0.0
            };
            phase += (140.0 + 40.0 * (t * 1.7).sin()) / 48_000.0;
            let v: f32 = [(1, 1.0), (2, 0.6), (3, 0.4), (5, 0.2)]
                .iter()
                .map(|(h, a)| a * (std::f32::consts::TAU * phase * *h as f32).sin())
                .sum();
            0.2 * envelope * v
        })
        .collect();
    let mut w = tincan_audio::wav::WavWriter::create(path).unwrap();
    w.write(&samples).unwrap();
    w.finish().unwrap();
    samples
}

fn room_records(owner: &UserKey, others: &[&UserKey]) -> (RoomId, ChannelId, Vec<SignedRecord>) {
    let settings = RoomSettings {
        join_policy: JoinPolicy::Open,
        member_limit: None,
    };
    let (room, rec) = make::room(owner, Hlc::new(10, 0), [7; 16], "LAN", settings).unwrap();
    let channel = ChannelId([9; 16]);
    let mut records = vec![
        rec,
        make::channel(
            owner,
            Hlc::new(11, 0),
            room,
            channel,
            "General",
            "",
            default_permissions(),
        )
        .unwrap(),
    ];
    for (i, u) in others.iter().enumerate() {
        records.push(make::join(u, Hlc::new(12 + i as u64, 0), room).unwrap());
    }
    (room, channel, records)
}

fn apply(stores: &[&Arc<Store>], record: &SignedRecord) {
    for s in stores {
        s.apply(record.clone()).unwrap();
    }
}

async fn node(index: u8, user: UserKey, records: &[SignedRecord], dir: &Path) -> Node {
    let node_key_seed = [0x40 + index; 32];
    let endpoint = Arc::new(
        VoiceEndpoint::bind(
            node_key_seed,
            "127.0.0.1:0".parse().unwrap(),
            &EndpointConfig::default(),
        )
        .unwrap(),
    );
    let store = Arc::new(Store::in_memory(StoreConfig::default()).unwrap());
    for r in records {
        store.apply(r.clone()).unwrap();
    }
    let current: Arc<Mutex<Option<VoiceDriver>>> = Arc::default();
    let c = current.clone();
    tokio::spawn(accept_loop(endpoint.clone(), 32, move || {
        c.lock().unwrap().clone()
    }));
    let peer = peer_id_of(&NodeKey::from_seed(&node_key_seed).id()).unwrap();
    Node {
        user,
        peer,
        node_key_seed,
        endpoint,
        store,
        current,
        output: dir.join(format!("heard-{index}.wav")),
    }
}

fn start(
    n: &Node,
    bus: &Arc<Bus>,
    room: RoomId,
    channel: ChannelId,
    input: DeviceSpec,
) -> VoiceDriver {
    let node_key = NodeKey::from_seed(&n.node_key_seed);
    let binding = NodeBinding::new(&n.user, node_key.id(), Hlc::new(1, 0));
    let mut key_seed = [0u8; 32];
    key_seed[..4].copy_from_slice(
        &n.endpoint
            .local_addr()
            .unwrap()
            .port()
            .to_be_bytes()
            .repeat(2),
    );
    let config = DriverConfig {
        session: tincan_voice::SessionConfig::default(),
        engine: EngineConfig {
            input,
            output: DeviceSpec::Wav {
                path: n.output.clone(),
                looped: false,
            },
            capture: CaptureConfig {
                gate: GateMode::AlwaysOn,
                ..CaptureConfig::default()
            },
            ..EngineConfig::default()
        },
        relays: Vec::new(),
        interfaces: Vec::new(),
        reflexive: None,
        key_seed,
    };
    let driver = VoiceDriver::start(
        n.endpoint.clone(),
        n.store.clone(),
        Arc::new(Out {
            bus: bus.clone(),
            me: n.peer,
        }),
        node_key,
        binding,
        room,
        channel,
        config,
    )
    .unwrap();
    *n.current.lock().unwrap() = Some(driver.clone());
    bus.nodes.lock().unwrap().push((n.peer, driver.clone()));
    driver
}

async fn eventually<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if let Some(t) = f() {
            return Some(t);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

async fn stop(d: &VoiceDriver) {
    d.leave();
    eventually(Duration::from_secs(5), || d.is_finished().then_some(()))
        .await
        .expect("the driver's task ends after leave");
}

/// The median correlation of half-second windows of `sent` (from the
/// second second on) found in what `heard` holds, lags up to 3 s.
fn correlation(sent: &[f32], heard: &Path) -> f64 {
    let received = tincan_audio::wav::read_mono_48k(heard).unwrap_or_default();
    let window = 24_000;
    let mut found = Vec::new();
    let mut from = 48_000;
    while from + window < sent.len() {
        if let Some(a) =
            tincan_audio::analysis::best_alignment(sent, &received, from, window, 3 * 48_000)
        {
            found.push(a.correlation);
        }
        from += window;
    }
    found.sort_by(f64::total_cmp);
    found.get(found.len() / 2).copied().unwrap_or(0.0)
}

/// Three drivers over real quinn on loopback: a full mesh of sealed links,
/// the speaker's voice reaches both listeners (correlation), nothing is
/// dropped as plaintext; then the owner kicks one: both others close their
/// link with it within a second of the record reaching their store, and
/// the kicked node's own session ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_drivers_talk_over_real_quinn_and_a_kick_closes_links_within_1_s() {
    let dir = tempfile::tempdir().unwrap();
    let said_path = dir.path().join("said.wav");
    let said = speech(&said_path, 6.0);
    let users: Vec<UserKey> = (1..=3u8).map(|i| UserKey::from_seed(&[i; 32])).collect();
    let (room, channel, records) = room_records(&users[0], &[&users[1], &users[2]]);
    let mut nodes = Vec::new();
    for (i, u) in users.iter().enumerate() {
        let _ = u;
        nodes.push(
            node(
                i as u8,
                UserKey::from_seed(&[i as u8 + 1; 32]),
                &records,
                dir.path(),
            )
            .await,
        );
    }
    let bus = Arc::new(Bus::default());
    let drivers: Vec<VoiceDriver> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let input = if i == 0 {
                DeviceSpec::Wav {
                    path: said_path.clone(),
                    looped: true,
                }
            } else {
                DeviceSpec::Null
            };
            start(n, &bus, room, channel, input)
        })
        .collect();
    let meshed = eventually(Duration::from_secs(15), || {
        drivers
            .iter()
            .all(|d| d.status().links.len() == 2)
            .then_some(())
    })
    .await;
    assert!(
        meshed.is_some(),
        "no full mesh: {:?}",
        drivers.iter().map(|d| d.status().links).collect::<Vec<_>>()
    );
    // Let six seconds of speech go through.
    tokio::time::sleep(Duration::from_secs(7)).await;
    for (i, d) in drivers.iter().enumerate() {
        let s = d.status();
        println!(
            "node {i}: links {:?}, stats {:?}, overflow {}",
            s.links
                .iter()
                .map(|l| (l.path, l.rtt_ms))
                .collect::<Vec<_>>(),
            s.stats,
            s.overflow
        );
        assert_eq!(s.stats.dropped_plaintext, 0);
        assert_eq!(s.stats.dropped_bad_tag, 0);
    }
    for d in &drivers[1..] {
        let s = d.status();
        assert!(
            s.stats.frames_received > 400,
            "a listener opened only {} frames",
            s.stats.frames_received
        );
    }
    // The kick: carol (node 2) is kicked by the owner.
    let kick = make::member(
        &users[0],
        Hlc::new(20, 0),
        room,
        users[2].id(),
        MemberRole::Participant,
        MemberState::Kicked,
    )
    .unwrap();
    let generation_before = drivers[0].status().stats.rotations;
    let kicked_at = Instant::now();
    apply(&[&nodes[0].store, &nodes[1].store, &nodes[2].store], &kick);
    let carol = nodes[2].peer;
    let dropped = eventually(Duration::from_secs(5), || {
        drivers[..2]
            .iter()
            .all(|d| !d.status().links.iter().any(|l| l.peer == carol))
            .then(|| kicked_at.elapsed())
    })
    .await
    .expect("the kicked node's links stay up");
    println!("FIGURE driver kick: links with the kicked node closed {dropped:?} after the record");
    assert!(dropped <= Duration::from_secs(1), "{dropped:?}");
    eventually(Duration::from_secs(2), || {
        drivers[2].is_finished().then_some(())
    })
    .await
    .expect("the kicked node's own session ends");
    assert!(drivers[0].status().stats.rotations > generation_before);
    for d in &drivers[..2] {
        stop(d).await;
    }
    drop(drivers);
    bus.nodes.lock().unwrap().clear();
    for n in &nodes {
        *n.current.lock().unwrap() = None;
    }
    // The engines are dropped with the drivers: the WAVs are complete.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (i, n) in nodes.iter().enumerate().skip(1) {
        let c = correlation(&said, &n.output);
        println!("FIGURE driver over quinn: node {i} hears the speaker with correlation {c:.3}");
        assert!(c > 0.6, "node {i} heard correlation {c:.3}");
    }
}

/// A member's node that sends plaintext (version 1) voice on its link:
/// the driver drops and counts every frame, none is played. (The node
/// before this driver took plaintext frames from any linked member, and
/// from the relay.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_frames_on_a_link_are_dropped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let users: Vec<UserKey> = (1..=2u8).map(|i| UserKey::from_seed(&[i; 32])).collect();
    let (room, channel, records) = room_records(&users[0], &[&users[1]]);
    let victim = node(0, UserKey::from_seed(&[1; 32]), &records, dir.path()).await;
    let bus = Arc::new(Bus::default());
    let driver = start(&victim, &bus, room, channel, DeviceSpec::Null);
    // The attacker: a member (users[1]) with a raw endpoint that dials the
    // victim, passes its gate with a real binding, then sends plaintext.
    let seed = [0x77; 32];
    let node_key = NodeKey::from_seed(&seed);
    let attacker_peer = peer_id_of(&node_key.id()).unwrap();
    let endpoint = VoiceEndpoint::bind(
        seed,
        "127.0.0.1:0".parse().unwrap(),
        &EndpointConfig::default(),
    )
    .unwrap();
    let binding = NodeBinding::new(&users[1], node_key.id(), Hlc::new(1, 0));
    // Its presence, so that the victim knows it (a real member's would).
    let presence =
        tincan_voice::protocol::VoiceSignal::Presence(tincan_media::presence::Presence {
            binding: binding.clone(),
            room,
            channel: Some(channel),
            candidates: vec![tincan_media::presence::Candidate {
                addr: endpoint.local_addr().unwrap(),
                kind: tincan_media::presence::CandidateKind::Host,
            }],
            relayed: false,
            sent_ms: 1,
        });
    driver.handle_signal(attacker_peer, presence.encode().unwrap());
    let victim_addr: SocketAddr = victim.endpoint.local_addr().unwrap();
    let conn = endpoint.connect(victim_addr, victim.peer).await.unwrap();
    let (mut send, mut recv) = conn.open_control().await.unwrap();
    write_message(
        &mut send,
        &Request::Join(Hello {
            room,
            channel,
            binding,
            proof: Vec::new(),
        }),
    )
    .await
    .unwrap();
    let answer: Answer = read_message(&mut recv, MAX_CONTROL_MESSAGE).await.unwrap();
    assert!(matches!(answer, Answer::Welcome(_)), "{answer:?}");
    for i in 0..200u32 {
        let d = VoiceDatagram {
            channel: 0,
            speaker: 0,
            sequence: i,
            timestamp: i * 480,
            end_of_spurt: false,
            payload: vec![0xfc; 60],
            redundant: None,
        };
        conn.send(&d);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let s = eventually(Duration::from_secs(5), || {
        let s = driver.status();
        (s.stats.dropped_plaintext >= 150).then_some(s)
    })
    .await
    .unwrap_or_else(|| panic!("plaintext not counted: {:?}", driver.status().stats));
    println!(
        "FIGURE driver plaintext: {} of 200 plaintext frames dropped and counted, {} opened",
        s.stats.dropped_plaintext, s.stats.frames_received
    );
    assert_eq!(s.stats.frames_received, 0);
    stop(&driver).await;
}
