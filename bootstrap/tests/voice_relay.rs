//! The voice relay with real quinn endpoints on loopback UDP, real signed
//! records and real membership proofs built by a node's store: members hear
//! each other through it with the speaker table it announces; everyone else
//! is refused with a reason; misbehaving members are dropped and counted.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use tincan_bootstrap::voice_relay::{VoiceRelay, VoiceRelaySettings, VoiceRelayStats};
use tincan_core::permissions::default_permissions;
use tincan_core::{
    ChannelId, Hlc, JoinPolicy, NodeBinding, NodeKey, RoomId, RoomSettings, UserId, UserKey, make,
};
use tincan_media::control::{
    Answer, Hello, MAX_CONTROL_MESSAGE, MAX_PROOF_RECORDS, Request, read_message, write_message,
};
use tincan_media::protocol::{SEALED_VERSION, VoiceHeader};
use tincan_media::relay_client::{RelayAddr, RelayClientError, RelaySession, observe_address};
use tincan_media::{EndpointConfig, VoiceDatagram, VoiceEndpoint};
use tincan_store::{Store, StoreConfig};

const WAIT: Duration = Duration::from_secs(10);

fn settings() -> VoiceRelaySettings {
    let mut s = VoiceRelaySettings::new("127.0.0.1:0".parse().unwrap());
    s.stats_interval = Duration::ZERO;
    s.handshake_timeout = Duration::from_secs(2);
    s
}

fn start(settings: VoiceRelaySettings) -> (VoiceRelay, RelayAddr) {
    let relay = VoiceRelay::start([42; 32], settings).expect("relay starts");
    let addr = RelayAddr {
        addr: relay.local_addr(),
        peer: relay.peer_id(),
    };
    (relay, addr)
}

/// A room as its members' nodes hold it: owner, open, one channel.
struct World {
    store: Store,
    owner: UserKey,
    room: RoomId,
    channel: ChannelId,
    other_room: RoomId,
    other_channel: ChannelId,
}

fn world() -> World {
    let owner = UserKey::from_seed(&[1; 32]);
    let store = Store::in_memory(StoreConfig::default()).unwrap();
    let (room, rec) = make::room(
        &owner,
        Hlc::new(10, 0),
        [1; 16],
        "LAN party",
        RoomSettings::default(),
    )
    .unwrap();
    store.apply(rec).unwrap();
    let channel = ChannelId([7; 16]);
    store
        .apply(
            make::channel(
                &owner,
                Hlc::new(11, 0),
                room,
                channel,
                "General",
                "",
                default_permissions(),
            )
            .unwrap(),
        )
        .unwrap();
    // A second, invite-only room with a channel of its own.
    let settings = RoomSettings {
        join_policy: JoinPolicy::Invite,
        member_limit: None,
    };
    let (other_room, rec) =
        make::room(&owner, Hlc::new(12, 0), [2; 16], "Secret", settings).unwrap();
    store.apply(rec).unwrap();
    let other_channel = ChannelId([8; 16]);
    store
        .apply(
            make::channel(
                &owner,
                Hlc::new(13, 0),
                other_room,
                other_channel,
                "War room",
                "",
                default_permissions(),
            )
            .unwrap(),
        )
        .unwrap();
    World {
        store,
        owner,
        room,
        channel,
        other_room,
        other_channel,
    }
}

/// A player: user key, node key, voice endpoint.
struct Player {
    user: UserKey,
    node: NodeKey,
    endpoint: VoiceEndpoint,
}

fn player(seed: u8) -> Player {
    let node = NodeKey::from_seed(&[seed.wrapping_add(100); 32]);
    let endpoint = VoiceEndpoint::bind(
        *node.seed(),
        "127.0.0.1:0".parse().unwrap(),
        &EndpointConfig::default(),
    )
    .unwrap();
    Player {
        user: UserKey::from_seed(&[seed; 32]),
        node,
        endpoint,
    }
}

impl Player {
    fn binding(&self) -> NodeBinding {
        NodeBinding::new(&self.user, self.node.id(), Hlc::new(5, 0))
    }

    fn joins(&self, w: &World) {
        w.store
            .apply(make::join(&self.user, Hlc::new(20, 0), w.room).unwrap())
            .unwrap();
    }

    fn hello(&self, w: &World) -> Hello {
        Hello {
            room: w.room,
            channel: w.channel,
            binding: self.binding(),
            proof: w
                .store
                .membership_proof(&w.room, &self.user.id(), &w.channel, MAX_PROOF_RECORDS)
                .expect("a member can build a proof"),
        }
    }

    async fn join(&self, w: &World, relay: &RelayAddr) -> RelaySession {
        RelaySession::join(&self.endpoint, relay, self.hello(w))
            .await
            .expect("a member is welcome")
    }

    async fn refused(&self, relay: &RelayAddr, hello: Hello) -> String {
        match RelaySession::join(&self.endpoint, relay, hello).await {
            Err(RelayClientError::Refused(reason)) => reason,
            Err(e) => panic!("expected a refusal, got the error {e}"),
            Ok(s) => panic!("expected a refusal, got speaker {}", s.speaker()),
        }
    }
}

/// A frame as nodes send it: sealed end to end (version 2). A relay reads
/// its header only; the body (key id, payload, tag) is ciphertext to it, so
/// made-up bytes stand for what a member sealed.
fn frame(speaker: u16, sequence: u32) -> Bytes {
    let header = VoiceHeader {
        version: SEALED_VERSION,
        flags: 0,
        channel: 0,
        speaker,
        sequence,
        timestamp: sequence * 480,
    };
    let mut bytes = header.to_bytes().to_vec();
    bytes.push(1);
    bytes.extend_from_slice(&[sequence as u8; 60]);
    bytes.extend_from_slice(&[0xa5; TAG_LEN]);
    Bytes::from(bytes)
}

/// The length of a sealed frame's tag.
const TAG_LEN: usize = 8;

/// Sends a frame on the relay session now or drops it.
fn send(session: &RelaySession, frame: Bytes) -> bool {
    session.connection().send_encoded(frame)
}

/// Waits until `table` of `session` satisfies `ok`.
async fn table_becomes(
    session: &RelaySession,
    ok: impl Fn(&tincan_media::relay_client::SpeakerTable) -> bool,
) {
    let mut watch = session.watch_speakers();
    tokio::time::timeout(WAIT, async {
        while !ok(&watch.borrow_and_update()) {
            watch.changed().await.expect("session alive");
        }
    })
    .await
    .unwrap_or_else(|_| panic!("speaker table stayed {:?}", session.speakers()));
}

/// Waits until the relay's counters satisfy `ok`.
async fn stats_become(
    relay: &VoiceRelay,
    ok: impl Fn(&VoiceRelayStats) -> bool,
) -> VoiceRelayStats {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let s = relay.stats();
        if ok(&s) {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "relay counters stayed {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Receives `n` frames, each parsed: (speaker, sequence, payload).
async fn receive(session: &RelaySession, n: usize) -> Vec<(u16, u32, Vec<u8>)> {
    let mut got = Vec::new();
    for _ in 0..n {
        let bytes = tokio::time::timeout(WAIT, session.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} frames arrived", got.len()))
            .expect("session alive");
        let (h, body) = VoiceHeader::parse(&bytes).expect("the relay forwards valid frames");
        assert_eq!(
            h.version, SEALED_VERSION,
            "the relay forwards sealed frames only"
        );
        // Key id, payload, tag: the payload is what the member sealed.
        got.push((
            h.speaker,
            h.sequence,
            body[1..body.len() - TAG_LEN].to_vec(),
        ));
    }
    got
}

async fn nothing_arrives(session: &RelaySession) {
    if let Ok(Ok(bytes)) = tokio::time::timeout(Duration::from_millis(300), session.recv()).await {
        panic!(
            "unexpected frame {:?}",
            VoiceHeader::parse(&bytes).map(|(h, _)| (h.speaker, h.sequence))
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_hear_the_speaker_through_the_relay_with_its_assigned_index() {
    let (relay, addr) = start(settings());
    let w = world();
    // The owner (proof: room and channel) and two members (plus their join).
    let alice = Player {
        user: UserKey::from_seed(&[1; 32]),
        ..player(1)
    };
    assert_eq!(alice.user.id(), w.owner.id());
    let bob = player(2);
    let carol = player(3);
    bob.joins(&w);
    carol.joins(&w);

    let a = alice.join(&w, &addr).await;
    let b = bob.join(&w, &addr).await;
    let c = carol.join(&w, &addr).await;
    let indexes: BTreeSet<u16> = [a.speaker(), b.speaker(), c.speaker()].into();
    assert_eq!(indexes.len(), 3, "distinct speaker indexes");
    assert_eq!(a.observed(), alice.endpoint.local_addr().unwrap());
    // Carol learnt the others from her welcome; alice and bob from updates.
    for (s, me) in [(&a, &alice), (&b, &bob), (&c, &carol)] {
        let want: BTreeSet<UserId> = [alice.user.id(), bob.user.id(), carol.user.id()]
            .into_iter()
            .filter(|u| *u != me.user.id())
            .collect();
        table_becomes(s, |t| t.values().copied().collect::<BTreeSet<_>>() == want).await;
    }
    assert_eq!(b.user_of(a.speaker()), Some(alice.user.id()));
    assert_eq!(c.user_of(a.speaker()), Some(alice.user.id()));

    // Datagrams are unreliable by design, but 20 small ones 2 ms apart on
    // loopback are not lost: a loss here would be a finding.
    for seq in 0..20 {
        assert!(send(&a, frame(a.speaker(), seq)));
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    for listener in [&b, &c] {
        let mut got = receive(listener, 20).await;
        got.sort_by_key(|g| g.1);
        let want: Vec<_> = (0..20)
            .map(|seq| (a.speaker(), seq, vec![seq as u8; 60]))
            .collect();
        assert_eq!(got, want);
        assert_eq!(listener.user_of(got[0].0), Some(alice.user.id()));
    }
    nothing_arrives(&a).await;
    let s = relay.stats();
    assert_eq!(s.relay.received, 20);
    assert_eq!(s.relay.forwarded, 40);
    assert_eq!((s.members, s.groups, s.joins_accepted), (3, 1, 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outsiders_forgers_and_garbage_are_refused_with_a_reason() {
    let (relay, addr) = start(settings());
    let w = world();
    let bob = player(2);
    bob.joins(&w);
    let mallory = player(9);

    // Not a member: the room and channel records prove nothing about her.
    let mut hello = bob.hello(&w);
    hello.binding = mallory.binding();
    hello.proof.retain(|item| {
        let r = tincan_core::SignedRecord::from_bytes(item.record().unwrap()).unwrap();
        !matches!(r.record().body, tincan_core::Body::Member(_))
    });
    let reason = mallory.refused(&addr, hello).await;
    assert!(
        reason.contains("is not a member of room \"LAN party\""),
        "{reason}"
    );

    // Bob's binding (bob's node) presented from mallory's node.
    let mut hello = bob.hello(&w);
    hello.binding = bob.binding();
    let reason = mallory.refused(&addr, hello).await;
    assert!(reason.contains("binding is for node"), "{reason}");
    assert!(
        reason.contains(&mallory.endpoint.peer_id().to_string()),
        "{reason}"
    );

    // A binding whose signature does not verify.
    let mut hello = bob.hello(&w);
    hello.binding.signature[0] ^= 1;
    let reason = bob.refused(&addr, hello).await;
    assert!(reason.contains("not validly signed"), "{reason}");

    // A proof for the open room, presented for the invite-only one.
    let mut hello = bob.hello(&w);
    hello.room = w.other_room;
    hello.channel = w.other_channel;
    let reason = bob.refused(&addr, hello).await;
    assert!(reason.contains("about another room"), "{reason}");

    // A proof for the room, but a channel it does not show.
    let mut hello = bob.hello(&w);
    hello.channel = w.other_channel;
    let reason = bob.refused(&addr, hello).await;
    assert!(reason.contains("has no voice channel"), "{reason}");

    // A damaged record, and too many records.
    let mut hello = bob.hello(&w);
    if let tincan_core::ProofItem::Record(bytes) = &mut hello.proof[0] {
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
    }
    let reason = bob.refused(&addr, hello).await;
    assert!(
        reason.contains("record 1 of your membership proof is invalid"),
        "{reason}"
    );
    let mut hello = bob.hello(&w);
    hello.proof = vec![hello.proof[0].clone(); MAX_PROOF_RECORDS + 1];
    let reason = bob.refused(&addr, hello).await;
    assert!(reason.contains("at most 16"), "{reason}");

    // Garbage on the control stream: a malformed message, an oversized one.
    for garbage in [
        [&3u32.to_be_bytes()[..], &[0xff, 0xff, 0xff]].concat(),
        ((MAX_CONTROL_MESSAGE + 1) as u32).to_be_bytes().to_vec(),
    ] {
        let conn = mallory
            .endpoint
            .connect(addr.addr, addr.peer)
            .await
            .unwrap();
        let (mut send, mut recv) = conn.open_control().await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut send, &garbage)
            .await
            .unwrap();
        let answer: Answer =
            tokio::time::timeout(WAIT, read_message(&mut recv, MAX_CONTROL_MESSAGE))
                .await
                .expect("an answer in time")
                .expect("a readable answer");
        let Answer::Refused(refused) = answer else {
            panic!("garbage got {answer:?}")
        };
        assert!(
            refused.reason.contains("could not read your request"),
            "{}",
            refused.reason
        );
        tokio::time::timeout(WAIT, conn.closed())
            .await
            .expect("closed");
    }

    // A dialler that says nothing is closed after the handshake timeout.
    let silent = mallory
        .endpoint
        .connect(addr.addr, addr.peer)
        .await
        .unwrap();
    tokio::time::timeout(WAIT, silent.closed())
        .await
        .expect("a silent dialler is closed");

    // After all that, the relay still serves members.
    let b = bob.join(&w, &addr).await;
    assert_eq!(b.speaker(), 0);
    let s = relay.stats();
    assert_eq!(s.joins_refused, 9);
    assert_eq!(s.handshakes_failed, 3);
    assert_eq!((s.joins_accepted, s.members), (1, 1));
    // Nothing refused holds a connection.
    let s = stats_become(&relay, |s| s.connections == 1).await;
    assert_eq!(s.groups, 1);
}

/// Bob and carol on the relay; bob sends five datagrams with `bad`, then
/// one good frame: carol gets only the good one. The relay's counters then.
async fn five_refused_then_one_forwarded(
    bad: impl Fn(&RelaySession, &RelaySession, u32) -> bool,
) -> VoiceRelayStats {
    let (relay, addr) = start(settings());
    let w = world();
    let (bob, carol) = (player(2), player(3));
    bob.joins(&w);
    carol.joins(&w);
    let b = bob.join(&w, &addr).await;
    let c = carol.join(&w, &addr).await;
    for seq in 0..5 {
        assert!(bad(&b, &c, seq));
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(send(&b, frame(b.speaker(), 99)));
    let got = receive(&c, 1).await;
    assert_eq!((got[0].0, got[0].1), (b.speaker(), 99));
    let s = stats_become(&relay, |s| s.relay.received == 6).await;
    assert_eq!(s.relay.forwarded, 1);
    nothing_arrives(&c).await;
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_speaker_index_is_dropped_and_counted() {
    // Bob speaks in carol's name.
    let s = five_refused_then_one_forwarded(|b, c, seq| send(b, frame(c.speaker(), seq))).await;
    assert_eq!(s.relay.dropped_wrong_speaker, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_frames_are_dropped_and_counted() {
    // The relay as the bootstrap binary runs it: a member whose node sends
    // plaintext (an old node, or one that does not play along) would let
    // the relay, and anyone it forwards to, hear the channel.
    let s = five_refused_then_one_forwarded(|b, _, seq| {
        b.send(&VoiceDatagram {
            channel: 0,
            speaker: b.speaker(),
            sequence: seq,
            timestamp: seq * 480,
            end_of_spurt: false,
            payload: vec![seq as u8; 60],
            redundant: None,
        })
    })
    .await;
    assert_eq!(s.relay.dropped_plaintext, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_cap_drops_and_counts() {
    let mut s = settings();
    s.limits.datagrams_per_second = 10;
    s.limits.datagram_burst = 5;
    let (relay, addr) = start(s);
    let w = world();
    let (bob, carol) = (player(2), player(3));
    bob.joins(&w);
    carol.joins(&w);
    let b = bob.join(&w, &addr).await;
    let c = carol.join(&w, &addr).await;
    // 30 frames in about 60 ms: the burst of 5 passes, the refill at 10 a
    // second adds at most one more.
    for seq in 0..30 {
        assert!(send(&b, frame(b.speaker(), seq)));
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let s = stats_become(&relay, |s| s.relay.received == 30).await;
    let passed = s.relay.forwarded;
    assert!((5..=6).contains(&passed), "{s:?}");
    assert_eq!(s.relay.dropped_datagram_rate, 30 - passed);
    let got = receive(&c, passed as usize).await;
    assert_eq!(got.iter().map(|g| g.1).min(), Some(0));
    nothing_arrives(&c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_that_leave_or_vanish_are_announced_as_gone() {
    let mut s = settings();
    // Short, so a vanished member is noticed within the test.
    s.endpoint.idle_timeout = Duration::from_secs(2);
    s.endpoint.keep_alive = Duration::from_millis(500);
    let (relay, addr) = start(s);
    let w = world();
    let (bob, carol) = (player(2), player(3));
    bob.joins(&w);
    carol.joins(&w);
    let b = bob.join(&w, &addr).await;
    let c = carol.join(&w, &addr).await;
    table_becomes(&b, |t| t.len() == 1).await;

    // Carol leaves properly.
    let carol_index = c.speaker();
    c.leave();
    table_becomes(&b, |t| !t.contains_key(&carol_index)).await;

    // Dave's node vanishes: its runtime stops without closing anything.
    let dave = player(4);
    dave.joins(&w);
    let hello = dave.hello(&w);
    let dave_index = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let index = rt.block_on(async {
            let endpoint = VoiceEndpoint::bind(
                *dave.node.seed(),
                "127.0.0.1:0".parse().unwrap(),
                &EndpointConfig::default(),
            )
            .unwrap();
            let session = RelaySession::join(&endpoint, &addr, hello).await.unwrap();
            let index = session.speaker();
            std::mem::forget(session);
            std::mem::forget(endpoint);
            index
        });
        rt.shutdown_background();
        index
    })
    .join()
    .unwrap();
    table_becomes(&b, |t| t.contains_key(&dave_index)).await;
    table_becomes(&b, |t| t.is_empty()).await;
    let s = stats_become(&relay, |s| s.members == 1).await;
    assert_eq!(s.joins_accepted, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_relay_refuses_with_a_reason() {
    let mut s = settings();
    s.max_connections = 1;
    let (relay, addr) = start(s);
    let w = world();
    let (bob, carol) = (player(2), player(3));
    bob.joins(&w);
    carol.joins(&w);
    let _b = bob.join(&w, &addr).await;
    let reason = carol.refused(&addr, carol.hello(&w)).await;
    assert!(reason.contains("relay is full (1 connections)"), "{reason}");
    assert_eq!(relay.stats().connections_refused, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observe_returns_the_diallers_address() {
    let (relay, addr) = start(settings());
    let p = player(5);
    let seen: SocketAddr = observe_address(&p.endpoint, &addr).await.unwrap();
    assert_eq!(seen, p.endpoint.local_addr().unwrap());
    assert_eq!(relay.stats().observed, 1);
    // The relay proves the PeerId asked for; another is refused by TLS.
    let wrong = RelayAddr {
        peer: player(6).endpoint.peer_id(),
        ..addr
    };
    assert!(matches!(
        observe_address(&p.endpoint, &wrong).await,
        Err(RelayClientError::Connect(_))
    ));
    // The raw request works too, for nodes that speak the protocol directly.
    let conn = p.endpoint.connect(addr.addr, addr.peer).await.unwrap();
    let (mut send, mut recv) = conn.open_control().await.unwrap();
    write_message(&mut send, &Request::Observe).await.unwrap();
    let answer: Answer = read_message(&mut recv, 1024).await.unwrap();
    assert_eq!(answer, Answer::Observed(p.endpoint.local_addr().unwrap()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_node_is_closed_at_once() {
    let blocked = player(7);
    let mut s = settings();
    s.blocked.insert(blocked.endpoint.peer_id());
    let (relay, addr) = start(s);
    assert!(observe_address(&blocked.endpoint, &addr).await.is_err());
    assert_eq!(relay.stats().observed, 0);
    assert_eq!(relay.stats().connections_refused, 1);
    // Anyone else is served.
    let other = player(8);
    assert!(observe_address(&other.endpoint, &addr).await.is_ok());
}

/// The owner kicks carol while she is on the relay; bob, whose store holds
/// the kick, sends the relay the records that show it
/// (`tincan_voice::roster::evidence_against`). The relay drops carol (bob
/// sees her speaker index go) and refuses her old proof from then on;
/// records about another room change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evidence_of_a_kick_drops_the_member_and_refuses_its_old_proof() {
    use tincan_core::{MemberRole, MemberState};
    use tincan_media::control::{Evidence, MemberMessage};
    let (relay, addr) = start(settings());
    let w = world();
    let (bob, carol) = (player(2), player(3));
    bob.joins(&w);
    carol.joins(&w);
    let b = bob.join(&w, &addr).await;
    let c = carol.join(&w, &addr).await;
    table_becomes(&b, |t| t.len() == 1).await;
    let carol_index = c.speaker();
    let old_hello = carol.hello(&w);

    // Records about another room: not evidence for this channel.
    let elsewhere: Vec<Vec<u8>> = tincan_voice::roster::evidence_against(
        &w.store,
        w.other_room,
        w.other_channel,
        &w.owner.id(),
    )
    .unwrap();
    assert!(!elsewhere.is_empty());
    assert!(b.send_message(&MemberMessage::Evidence(Evidence { records: elsewhere })));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        b.speakers().contains_key(&carol_index),
        "carol dropped for nothing"
    );

    w.store
        .apply(
            make::member(
                &w.owner,
                Hlc::new(30, 0),
                w.room,
                carol.user.id(),
                MemberRole::Participant,
                MemberState::Kicked,
            )
            .unwrap(),
        )
        .unwrap();
    let records =
        tincan_voice::roster::evidence_against(&w.store, w.room, w.channel, &carol.user.id())
            .unwrap();
    let sent = std::time::Instant::now();
    assert!(b.send_message(&MemberMessage::Evidence(Evidence { records })));
    table_becomes(&b, |t| !t.contains_key(&carol_index)).await;
    println!(
        "FIGURE voice relay: a kicked member dropped {:.0} ms after a member's evidence",
        sent.elapsed().as_secs_f64() * 1000.0
    );
    let reason = carol.refused(&addr, old_hello).await;
    assert!(reason.contains("not a member"), "{reason}");
    // Bob, whom nothing refuses, stays.
    let s = stats_become(&relay, |s| s.members == 1).await;
    assert_eq!(s.joins_accepted, 2);
    drop(c);
}

/// An invite-only room as its owner's node writes it (issue 14): the room
/// record plaintext, the channel and every membership sealed under the
/// room's key, the grants key upkeep plans. `records` is everything
/// written, in order, for the members' stores.
struct SealedWorld {
    owner: UserKey,
    owner_store: Store,
    room: RoomId,
    channel: ChannelId,
    records: Vec<tincan_core::SignedRecord>,
}

fn sealed_world(members: &[&Player]) -> SealedWorld {
    use tincan_core::{Body, Member, MemberRole, MemberState};
    let owner = UserKey::from_seed(&[1; 32]);
    let owner_store = Store::in_memory(StoreConfig::default()).unwrap();
    owner_store.unlock_user(&owner).unwrap();
    let settings = RoomSettings {
        join_policy: JoinPolicy::Invite,
        member_limit: None,
    };
    let (room, rec) = make::room(&owner, Hlc::new(10, 0), [3; 16], "Raid", settings).unwrap();
    let mut w = SealedWorld {
        owner,
        owner_store,
        room,
        channel: ChannelId([9; 16]),
        records: Vec::new(),
    };
    w.write(rec);
    let channel = make::channel(
        &w.owner,
        Hlc::new(11, 0),
        room,
        w.channel,
        "Comms",
        "",
        default_permissions(),
    )
    .unwrap();
    let channel = w.owner_store.prepare_signed(&w.owner, channel).unwrap();
    assert!(channel.is_sealed(), "the channel is sealed");
    w.write(channel);
    for (i, p) in members.iter().enumerate() {
        let admit = w
            .owner_store
            .prepare_write(
                &w.owner,
                Hlc::new(12 + i as u64, 0),
                Body::Member(Member {
                    room,
                    user: p.user.id(),
                    role: MemberRole::Participant,
                    state: MemberState::Joined,
                }),
            )
            .unwrap();
        assert!(admit.is_sealed(), "the admission is sealed");
        w.write(admit);
    }
    w.upkeep(Hlc::new(30, 0));
    w
}

impl SealedWorld {
    fn write(&mut self, rec: tincan_core::SignedRecord) {
        self.owner_store.apply(rec.clone()).unwrap();
        self.records.push(rec);
    }

    /// The grants the owner's node publishes now.
    fn upkeep(&mut self, hlc: Hlc) {
        for g in self.owner_store.key_upkeep(&self.owner, hlc).unwrap() {
            self.write(g);
        }
    }

    /// A member's node: its own store, its user unlocked, everything the
    /// owner wrote so far.
    fn member_store(&self, p: &Player) -> Store {
        let store = Store::in_memory(StoreConfig::default()).unwrap();
        store.unlock_user(&p.user).unwrap();
        self.sync(&store);
        store
    }

    fn sync(&self, store: &Store) {
        for r in &self.records {
            store.apply(r.clone()).unwrap();
        }
    }

    fn hello(&self, p: &Player, store: &Store) -> Hello {
        Hello {
            room: self.room,
            channel: self.channel,
            binding: p.binding(),
            proof: store
                .membership_proof(&self.room, &p.user.id(), &self.channel, MAX_PROOF_RECORDS)
                .expect("a member of an invite-only room can build a proof"),
        }
    }
}

/// A member of an invite-only room, whose Member and Channel records are
/// sealed, joins the relay with the proof its own store builds (the
/// owner's grant of the current epoch and the room record, and the
/// epoch's relay token), and hears the owner through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_of_an_invite_only_room_is_admitted_with_grant_and_token() {
    let (relay, addr) = start(settings());
    let bob = player(2);
    let w = sealed_world(&[&bob]);
    let alice = Player {
        user: UserKey::from_seed(&[1; 32]),
        ..player(1)
    };
    let bob_store = w.member_store(&bob);
    assert!(
        bob_store.room_key(&w.room).unwrap().is_some(),
        "bob holds the key"
    );
    let a = RelaySession::join(&alice.endpoint, &addr, w.hello(&alice, &w.owner_store))
        .await
        .expect("the owner is welcome");
    let b = RelaySession::join(&bob.endpoint, &addr, w.hello(&bob, &bob_store))
        .await
        .expect("a member of an invite-only room is welcome");
    table_becomes(&b, |t| t.values().any(|u| *u == alice.user.id())).await;
    assert!(send(&a, frame(a.speaker(), 1)));
    let got = receive(&b, 1).await;
    assert_eq!(got[0].1, 1);
    assert_eq!(relay.stats().joins_accepted, 2);
}

/// Bob and carol are on the relay in an invite-only room; the owner kicks
/// carol and its node grants a new epoch to bob only. Bob sends the relay
/// the evidence his store gives (`evidence_against`: the newer grant);
/// the relay drops carol within a second and refuses her old proof (the
/// older epoch's token) from then on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kicked_member_of_an_invite_only_room_is_dropped_on_the_newer_grant() {
    use tincan_core::MemberState;
    use tincan_media::control::{Evidence, MemberMessage};
    let (relay, addr) = start(settings());
    let (bob, carol) = (player(2), player(3));
    let mut w = sealed_world(&[&bob, &carol]);
    let bob_store = w.member_store(&bob);
    let carol_store = w.member_store(&carol);
    let b = RelaySession::join(&bob.endpoint, &addr, w.hello(&bob, &bob_store))
        .await
        .expect("bob is welcome");
    let c = RelaySession::join(&carol.endpoint, &addr, w.hello(&carol, &carol_store))
        .await
        .expect("carol is welcome");
    table_becomes(&b, |t| t.len() == 1).await;
    let carol_index = c.speaker();
    let old_hello = w.hello(&carol, &carol_store);

    let epoch_before = w.owner_store.room_key(&w.room).unwrap().unwrap().epoch();
    for rec in w
        .owner_store
        .removal(
            &w.owner,
            &w.room,
            &carol.user.id(),
            MemberState::Kicked,
            Hlc::new(40, 0),
        )
        .unwrap()
    {
        w.write(rec);
    }
    w.upkeep(Hlc::new(41, 0));
    w.sync(&bob_store);
    let epoch_after = bob_store.room_key(&w.room).unwrap().unwrap().epoch();
    assert!(epoch_after > epoch_before, "bob holds the new epoch's key");

    let records =
        tincan_voice::roster::evidence_against(&bob_store, w.room, w.channel, &carol.user.id())
            .unwrap();
    assert!(
        records.iter().any(|r| matches!(
            tincan_core::SignedRecord::from_bytes(r)
                .unwrap()
                .record()
                .body,
            tincan_core::Body::KeyGrant(_)
        )),
        "the evidence carries the newer grant"
    );
    let sent = std::time::Instant::now();
    assert!(b.send_message(&MemberMessage::Evidence(Evidence { records })));
    // Bob holds the new epoch's key: he shows its token and stays.
    let token = bob_store.relay_token(&w.room).unwrap().unwrap();
    assert_eq!(token.epoch, epoch_after);
    assert!(b.send_message(&MemberMessage::Token(token)));
    // From the newer grant on, carol (no token of it) is held: nothing
    // from bob reaches her and nothing of hers reaches bob, until she is
    // dropped.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(send(&b, frame(b.speaker(), 500)));
    assert!(send(&c, frame(c.speaker(), 501)));
    nothing_arrives(&c).await;
    nothing_arrives(&b).await;
    let held = relay.stats().held_superseded;
    assert_eq!(
        held, 2,
        "one copy to carol and one datagram from her held back"
    );
    table_becomes(&b, |t| !t.contains_key(&carol_index)).await;
    let took = sent.elapsed();
    println!(
        "FIGURE voice relay: a kicked member of an invite-only room dropped {:.0} ms after the newer grant",
        took.as_secs_f64() * 1000.0
    );
    let reason = carol.refused(&addr, old_hello).await;
    assert!(reason.contains("superseded"), "{reason}");
    // Past the grace, bob (who showed the new token) is still there, and a
    // newcomer with the new epoch's proof is welcome.
    tokio::time::sleep(tincan_bootstrap::voice_relay::SHOW_NEW_TOKEN_WITHIN * 2).await;
    let s = stats_become(&relay, |s| s.members == 1).await;
    assert_eq!(s.joins_accepted, 2);
    let alice = Player {
        user: UserKey::from_seed(&[1; 32]),
        ..player(1)
    };
    let _a = RelaySession::join(&alice.endpoint, &addr, w.hello(&alice, &w.owner_store))
        .await
        .expect("the owner is welcome with the new epoch's token");
    assert!(b.connection().close_reason().is_none(), "bob was dropped");
    drop(c);
}

/// A stranger who knows the room (its record and the owner's grant are
/// plaintext: anyone holding the locator can have them) but holds no key
/// makes up a relay token, or shows the grant without one, or a grant that
/// it signed itself: each refused, and nothing joins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_with_a_made_up_token_is_refused() {
    use tincan_core::{EpochToken, ProofItem};
    let (relay, addr) = start(settings());
    let bob = player(2);
    let w = sealed_world(&[&bob]);
    let bob_store = w.member_store(&bob);
    let mallory = player(9);
    let real = w.hello(&bob, &bob_store);
    let records: Vec<ProofItem> = real
        .proof
        .iter()
        .filter(|i| i.record().is_some())
        .cloned()
        .collect();
    assert_eq!(records.len(), 2, "room and grant");
    let mut hello = Hello {
        binding: mallory.binding(),
        ..real.clone()
    };
    hello.proof = records.clone();
    hello.proof.push(ProofItem::Token(EpochToken {
        epoch: 0,
        token: [0x5a; 32],
    }));
    let reason = mallory.refused(&addr, hello.clone()).await;
    assert!(reason.contains("relay token does not match"), "{reason}");
    // Without a token, the records alone: the relay reads no membership
    // in an invite-only room's (sealed) records.
    hello.proof = records.clone();
    let reason = mallory.refused(&addr, hello.clone()).await;
    assert!(reason.contains("has no voice channel"), "{reason}");
    // A grant of her own making, with the token of her own key.
    let key = tincan_core::seal::RoomChain::derive(&mallory.user, &w.room)
        .epoch_key(0)
        .unwrap();
    let forged = make::grants(
        &mallory.user,
        Hlc::new(50, 0),
        &key,
        &tincan_core::seal::RoomChain::derive(&mallory.user, &w.room).locator(),
        &[mallory.user.id()],
    )
    .unwrap();
    hello.proof = vec![
        records[0].clone(),
        ProofItem::Record(forged[0].to_bytes()),
        ProofItem::Token(EpochToken {
            epoch: 0,
            token: key.relay_token(),
        }),
    ];
    let reason = mallory.refused(&addr, hello).await;
    assert!(reason.contains("not one of room"), "{reason}");
    // Bob's real proof, from mallory's node with her own binding: the
    // token is a bearer proof of the epoch key (see docs/trust.md), so it
    // is the binding that names who joins; bob's binding from her node is
    // refused as for any room.
    let hello = Hello {
        binding: bob.binding(),
        ..real.clone()
    };
    let reason = mallory.refused(&addr, hello).await;
    assert!(reason.contains("binding is for node"), "{reason}");
    let s = relay.stats();
    assert_eq!((s.joins_accepted, s.joins_refused), (0, 4));
}
