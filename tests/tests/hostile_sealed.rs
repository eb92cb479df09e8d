//! Invite-only rooms on the wire (issue 14): real mesh nodes over loopback,
//! an owner and a member that read the room, and strangers built from the
//! project's own libraries (a raw libp2p swarm speaking the sync protocol,
//! and a whole mesh node) that know the room's id and the owner's address.
//! What a stranger may get: nothing under the room's public id, nothing
//! under its locator without the locator secret, and ciphertext only if it
//! knows the locator's public id.

use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::request_response;
use libp2p::swarm::SwarmEvent;
use tincan_core::invite::Invite;
use tincan_core::{
    Body, Hlc, JoinPolicy, Member, MemberRole, MemberState, RoomId, RoomLog, RoomSettings,
    SignedRecord, UserKey, make,
};
use tincan_mesh::behaviour::BehaviourEvent;
use tincan_mesh::protocol::{Bound, Range, RangeMode, Scope, SyncRequest, SyncResponse};
mod common;

use common::{eventually, node, seed};
use tincan_mesh::MeshConfig;
use tincan_store::Store;

const LIMIT: Duration = Duration::from_secs(30);
/// What the owner writes in the room's log: no stranger may see it.
const SECRET: &str = "the raid starts at nine, bring the password hunter2";

fn hlc(n: u64) -> Hlc {
    Hlc::new(tincan_store::clock::wall_ms() - 60_000 + n, 0)
}

/// Alice's invite-only room with bob invited and granted, a channel and
/// a log entry, written the way a node writes (`prepare_write`, then the
/// grants key upkeep plans), all applied to alice's store.
fn invite_only_room(alice: &UserKey, bob: &UserKey, store: &Store) -> (RoomId, Vec<SignedRecord>) {
    let settings = RoomSettings {
        join_policy: JoinPolicy::Invite,
        member_limit: None,
    };
    let (room, rec) = make::room(alice, hlc(0), [7; 16], "raid night", settings).unwrap();
    let mut all = vec![rec.clone()];
    store.apply(rec).unwrap();
    let invite = store
        .prepare_write(
            alice,
            hlc(1),
            Body::Member(Member {
                room,
                user: bob.id(),
                role: MemberRole::Participant,
                state: MemberState::Invited,
            }),
        )
        .unwrap();
    assert!(invite.is_sealed(), "the invite is sealed");
    all.push(invite.clone());
    store.apply(invite).unwrap();
    for grant in store.key_upkeep(alice, hlc(2)).unwrap() {
        all.push(grant.clone());
        store.apply(grant).unwrap();
    }
    let log = store
        .prepare_write(
            alice,
            hlc(3),
            Body::RoomLog(RoomLog {
                room,
                user: alice.id(),
                action: SECRET.into(),
            }),
        )
        .unwrap();
    all.push(log.clone());
    store.apply(log).unwrap();
    (room, all)
}

fn log_texts(store: &Store, room: &RoomId) -> Vec<String> {
    store
        .log(room, Hlc::ZERO, Hlc::MAX, None, 100)
        .unwrap()
        .entries
        .into_iter()
        .map(|e| e.action)
        .collect()
}

/// Sends one sync request from a raw swarm to `to` and returns the answer.
async fn ask(
    swarm: &mut libp2p::Swarm<tincan_mesh::behaviour::Behaviour>,
    to: libp2p::PeerId,
    request: SyncRequest,
) -> SyncResponse {
    swarm.behaviour_mut().sync.send_request(&to, request);
    let wait = async {
        loop {
            if let SwarmEvent::Behaviour(BehaviourEvent::Sync(request_response::Event::Message {
                message: request_response::Message::Response { response, .. },
                ..
            })) = swarm.select_next_some().await
            {
                return response;
            }
        }
    };
    tokio::time::timeout(LIMIT, wait)
        .await
        .expect("an answer within 30 s")
}

fn full_range() -> Vec<Range> {
    vec![Range {
        upper: Bound::End,
        mode: RangeMode::IdList(Vec::new()),
    }]
}

/// How many record ids an answer to a full-range reconcile names.
fn items_named(response: &SyncResponse) -> usize {
    match response {
        SyncResponse::Reconcile { ranges } => ranges
            .iter()
            .map(|r| match &r.mode {
                RangeMode::IdList(items) | RangeMode::Missing(items) => items.len(),
                RangeMode::Skip => 0,
                // A digest of items: at least one.
                RangeMode::Fingerprint(_) => 1,
            })
            .sum(),
        other => panic!("not a reconcile answer: {other:?}"),
    }
}

/// A stranger with a fresh key knows the room id, the owner's address and
/// even every record id (say, overheard from a member's listing). Asked
/// under the room's public id, the owner's node names no record and serves
/// none; asked under the locator's public id with a proof copied from the
/// member, it serves none either. The member, asking the same node the
/// same way its own node does, gets the room and reads it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_gets_nothing_of_an_invite_only_room_from_its_owner() {
    let alice = UserKey::from_seed(&seed(1));
    let bob = UserKey::from_seed(&seed(2));
    let owner = node(9_200, Some(&alice)).await;
    let (room, records) = invite_only_room(&alice, &bob, &owner.store);
    owner.mesh.subscribe_room(room).await.unwrap();
    let ids: Vec<_> = records.iter().map(|r| r.id()).collect();

    let mut swarm = tincan_mesh::build_swarm(&MeshConfig::loopback(seed(9_201))).unwrap();
    swarm.dial(owner.addr.clone()).unwrap();
    let to = owner.mesh.peer_id();

    let listed = ask(
        &mut swarm,
        to,
        SyncRequest::Reconcile {
            scope: Scope::Room(room),
            ranges: full_range(),
        },
    )
    .await;
    let fetched = ask(
        &mut swarm,
        to,
        SyncRequest::Fetch {
            scope: Scope::Room(room),
            ids: ids.clone(),
        },
    )
    .await;
    let served = match &fetched {
        SyncResponse::Records { records, .. } => records.clone(),
        other => panic!("not a records answer: {other:?}"),
    };
    println!(
        "FIGURE stranger, public scope: {} ids named, {} of {} records served",
        items_named(&listed),
        served.len(),
        ids.len()
    );
    assert_eq!(items_named(&listed), 0, "the room's records were listed");
    assert!(
        served.is_empty(),
        "records of an invite-only room were served"
    );

    // The locator's public id is on the wire (it names the topic); the
    // secret is not. A proof made for the member's PeerId is worthless
    // from another one.
    let secret = owner
        .store
        .locator(&room)
        .unwrap()
        .expect("the owner holds the locator");
    let bob_peer = libp2p::identity::Keypair::ed25519_from_bytes(seed(9_202))
        .unwrap()
        .public()
        .to_peer_id();
    let copied = Scope::Sealed {
        locator: secret.id(),
        proof: secret.proof(&bob_peer.to_bytes()),
    };
    let listed = ask(
        &mut swarm,
        to,
        SyncRequest::Reconcile {
            scope: copied,
            ranges: full_range(),
        },
    )
    .await;
    let fetched = ask(
        &mut swarm,
        to,
        SyncRequest::Fetch {
            scope: copied,
            ids: ids.clone(),
        },
    )
    .await;
    let served = match &fetched {
        SyncResponse::Records { records, .. } => records.len(),
        other => panic!("not a records answer: {other:?}"),
    };
    println!(
        "FIGURE stranger, sealed scope with a copied proof: {} ids named, {served} records served",
        items_named(&listed)
    );
    assert_eq!(items_named(&listed), 0, "listed to a copied proof");
    assert_eq!(served, 0, "served to a copied proof");

    // The same node serves the member, whose node names the room by the
    // invite's locator and proves it for its own PeerId.
    let member = node(9_202, Some(&bob)).await;
    assert_eq!(member.mesh.peer_id(), bob_peer);
    let invite = owner.mesh.invite(room).await.unwrap();
    assert!(
        invite.locator.is_some(),
        "an invite-only room's invite carries its locator"
    );
    let invite = Invite::parse(&invite.to_link()).unwrap();
    let start = Instant::now();
    member.mesh.accept_invite(&invite).await.unwrap();
    let read = eventually(LIMIT, || async {
        log_texts(&member.store, &room).iter().any(|t| t == SECRET)
    })
    .await;
    println!(
        "FIGURE member: read the log entry {} ms after accepting the invite link",
        start.elapsed().as_millis()
    );
    assert!(read, "the invited member never read the room");
    member.mesh.shutdown().await;
    owner.mesh.shutdown().await;
}

/// A whole mesh node of a stranger follows the room by its public id (what
/// `tincan room join <id>` does without an invite) while the member's node
/// follows it by invite. The stranger's store gets nothing of the room
/// and no byte of the log's text reaches it; the member reads everything,
/// including an entry written after both followed (gossip).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_following_the_room_id_receives_nothing_while_the_member_reads_it() {
    let alice = UserKey::from_seed(&seed(11));
    let bob = UserKey::from_seed(&seed(12));
    let mallory = UserKey::from_seed(&seed(13));
    let owner = node(9_210, Some(&alice)).await;
    let (room, _) = invite_only_room(&alice, &bob, &owner.store);
    owner.mesh.subscribe_room(room).await.unwrap();
    let member = node(9_211, Some(&bob)).await;
    let stranger = node(9_212, Some(&mallory)).await;
    member
        .mesh
        .accept_invite(&owner.mesh.invite(room).await.unwrap())
        .await
        .unwrap();
    stranger.mesh.dial(owner.addr.clone()).await.unwrap();
    stranger.mesh.dial(member.addr.clone()).await.unwrap();
    stranger.mesh.subscribe_room(room).await.unwrap();
    assert!(
        eventually(LIMIT, || async {
            log_texts(&member.store, &room).len() == 1
        })
        .await,
        "the member never read the room"
    );
    // Live: an entry written now reaches the member by gossip.
    let live = owner
        .store
        .prepare_write(
            &alice,
            Hlc::new(tincan_store::clock::wall_ms(), 0),
            Body::RoomLog(RoomLog {
                room,
                user: alice.id(),
                action: format!("{SECRET} (live)"),
            }),
        )
        .unwrap();
    owner.mesh.publish(live).await.unwrap();
    assert!(
        eventually(LIMIT, || async {
            log_texts(&member.store, &room).len() == 2
        })
        .await,
        "the live entry never reached the member"
    );
    // Several sync rounds for the stranger to try its luck.
    owner.mesh.sync_now().await.unwrap();
    member.mesh.sync_now().await.unwrap();
    stranger.mesh.sync_now().await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let leaked: Vec<SignedRecord> = stranger
        .store
        .records()
        .unwrap()
        .into_iter()
        .filter(|r| r.record().room() == Some(room))
        .collect();
    let text_seen = stranger
        .store
        .records()
        .unwrap()
        .iter()
        .any(|r| contains(&r.to_bytes(), SECRET.as_bytes()));
    println!(
        "FIGURE stranger following the room id: {} records of the room stored, log text seen: {text_seen}",
        leaked.len()
    );
    assert!(
        leaked.is_empty(),
        "the stranger stored records of the room: {leaked:?}"
    );
    assert!(!text_seen, "the log's text reached the stranger");
    assert!(stranger.store.room(&room).unwrap().is_none());
    for n in [owner, member, stranger] {
        n.mesh.shutdown().await;
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Bob is kicked while he and carol follow the room. The owner's next
/// epoch is granted to carol only; what alice writes after the kick
/// reaches bob's node (it still holds the locator, so it may sync
/// ciphertext) but bob cannot read it, while carol does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kicked_member_cannot_read_what_is_written_after_the_kick() {
    let alice = UserKey::from_seed(&seed(21));
    let bob = UserKey::from_seed(&seed(22));
    let carol = UserKey::from_seed(&seed(23));
    let owner = node(9_220, Some(&alice)).await;
    let (room, _) = invite_only_room(&alice, &bob, &owner.store);
    let invite_carol = owner
        .store
        .prepare_write(
            &alice,
            hlc(10),
            Body::Member(Member {
                room,
                user: carol.id(),
                role: MemberRole::Participant,
                state: MemberState::Invited,
            }),
        )
        .unwrap();
    owner.store.apply(invite_carol).unwrap();
    for g in owner.store.key_upkeep(&alice, hlc(11)).unwrap() {
        owner.store.apply(g).unwrap();
    }
    owner.mesh.subscribe_room(room).await.unwrap();
    let b = node(9_221, Some(&bob)).await;
    let c = node(9_222, Some(&carol)).await;
    let invite = owner.mesh.invite(room).await.unwrap();
    b.mesh.accept_invite(&invite).await.unwrap();
    c.mesh.accept_invite(&invite).await.unwrap();
    for n in [&b, &c] {
        assert!(
            eventually(LIMIT, || async { log_texts(&n.store, &room).len() == 1 }).await,
            "a member never read the room"
        );
    }
    // The kick, and the grants key upkeep plans after it: a new epoch.
    let now = || Hlc::new(tincan_store::clock::wall_ms(), 0);
    for rec in owner
        .store
        .removal(&alice, &room, &bob.id(), MemberState::Kicked, now())
        .unwrap()
    {
        owner.mesh.publish(rec).await.unwrap();
    }
    let epoch_before = owner.store.room_key(&room).unwrap().unwrap().epoch();
    for g in owner.store.key_upkeep(&alice, now()).unwrap() {
        owner.mesh.publish(g).await.unwrap();
    }
    let epoch_after = owner.store.room_key(&room).unwrap().unwrap().epoch();
    assert!(epoch_after > epoch_before, "no new epoch after the kick");
    let after = format!("{SECRET} (after the kick)");
    let rec = owner
        .store
        .prepare_write(
            &alice,
            now(),
            Body::RoomLog(RoomLog {
                room,
                user: alice.id(),
                action: after.clone(),
            }),
        )
        .unwrap();
    let after_id = rec.id();
    owner.mesh.publish(rec).await.unwrap();
    assert!(
        eventually(LIMIT, || async {
            log_texts(&c.store, &room).contains(&after)
        })
        .await,
        "carol never read the entry written after the kick"
    );
    // Bob's node gets the ciphertext (it syncs under the locator it holds)
    // but cannot open it.
    let arrived = eventually(LIMIT, || async {
        b.mesh.sync_now().await.unwrap();
        b.store.record(&after_id).unwrap().is_some()
            || b.store
                .records()
                .unwrap()
                .iter()
                .any(|r| r.id() == after_id)
    })
    .await;
    let readable = log_texts(&b.store, &room).contains(&after);
    println!(
        "FIGURE kicked member: epoch {epoch_before} -> {epoch_after}; the new entry reached bob's node: {arrived}; readable there: {readable}"
    );
    assert!(
        !readable,
        "the kicked member read what was written after the kick"
    );
    for n in [owner, b, c] {
        n.mesh.shutdown().await;
    }
}

/// Catch-up of an invite-only room with 10,000 log entries: a member's node
/// that accepts the invite link syncs and opens all of them from the owner
/// over loopback. Prints the time (the target: 1.5 s or less, for a
/// release build: `cargo test --release -p tincan-tests --test
/// hostile_sealed catch_up -- --nocapture`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_catches_up_on_10000_sealed_entries() {
    const ENTRIES: usize = 10_000;
    let alice = UserKey::from_seed(&seed(31));
    let bob = UserKey::from_seed(&seed(32));
    let owner = node(9_230, Some(&alice)).await;
    let (room, _) = invite_only_room(&alice, &bob, &owner.store);
    let base = tincan_store::clock::wall_ms() - 50_000;
    let batch: Vec<SignedRecord> = (0..ENTRIES)
        .map(|i| {
            owner
                .store
                .prepare_write(
                    &alice,
                    Hlc::new(base + i as u64, 0),
                    Body::RoomLog(RoomLog {
                        room,
                        user: alice.id(),
                        action: format!("entry {i}"),
                    }),
                )
                .unwrap()
        })
        .collect();
    assert!(batch.iter().all(|r| r.is_sealed()));
    owner.store.apply_batch(batch).unwrap();
    owner.mesh.subscribe_room(room).await.unwrap();
    let member = node(9_231, Some(&bob)).await;
    let invite = owner.mesh.invite(room).await.unwrap();
    let start = Instant::now();
    member.mesh.accept_invite(&invite).await.unwrap();
    let count = |s: &Store| {
        s.log(&room, Hlc::ZERO, Hlc::MAX, None, ENTRIES + 10)
            .unwrap()
            .entries
            .len()
    };
    let done = eventually(Duration::from_secs(120), || async {
        count(&member.store) == ENTRIES + 1
    })
    .await;
    let took = start.elapsed();
    println!(
        "FIGURE catch-up: {} of {} sealed log entries opened and applied by the member in {:.2} s ({} build)",
        count(&member.store),
        ENTRIES + 1,
        took.as_secs_f64(),
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    assert!(done, "the member did not catch up within 120 s");
    owner.mesh.shutdown().await;
    member.mesh.shutdown().await;
}

/// Waits (bounded) for a signal from `from` on `rx` whose bytes are `want`,
/// publishing `publish` on `publisher` every 200 ms meanwhile (gossipsub
/// forms its mesh for the voice topic over a few heartbeats, and signals
/// are not stored). Other signals are noted in `seen`.
async fn signal_arrives(
    publisher: &common::Node,
    room: RoomId,
    publish: &[u8],
    rx: &mut tokio::sync::broadcast::Receiver<tincan_mesh::Signal>,
    want: &[u8],
) -> bool {
    let start = Instant::now();
    while start.elapsed() < LIMIT {
        let _ = publisher.mesh.publish_signal(room, publish.to_vec()).await;
        let until = tokio::time::Instant::now() + Duration::from_millis(200);
        while let Ok(Ok(signal)) = tokio::time::timeout_at(until, rx.recv()).await {
            if signal.data == want {
                return true;
            }
        }
    }
    false
}

/// Voice signals of an invite-only room (presences, key shares) are sealed
/// under the room's epoch key on its voice topic (issue 13/14). Bob is
/// kicked; his node still follows the room (it holds the locator, so it is
/// still subscribed to the sealed voice topic). After the next epoch,
/// carol's presences reach alice and are readable there, and none reaches
/// bob's node readable: the voice plane there gets nothing, and no bytes
/// of it in plaintext. Before the kick, all three exchange presences.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_member_reads_no_voice_presence_after_the_next_epoch() {
    let alice = UserKey::from_seed(&seed(31));
    let bob = UserKey::from_seed(&seed(32));
    let carol = UserKey::from_seed(&seed(33));
    let owner = node(9_230, Some(&alice)).await;
    let (room, _) = invite_only_room(&alice, &bob, &owner.store);
    let invite_carol = owner
        .store
        .prepare_write(
            &alice,
            hlc(10),
            Body::Member(Member {
                room,
                user: carol.id(),
                role: MemberRole::Participant,
                state: MemberState::Invited,
            }),
        )
        .unwrap();
    owner.store.apply(invite_carol).unwrap();
    for g in owner.store.key_upkeep(&alice, hlc(11)).unwrap() {
        owner.store.apply(g).unwrap();
    }
    owner.mesh.subscribe_room(room).await.unwrap();
    let b = node(9_231, Some(&bob)).await;
    let c = node(9_232, Some(&carol)).await;
    let invite = owner.mesh.invite(room).await.unwrap();
    b.mesh.accept_invite(&invite).await.unwrap();
    c.mesh.accept_invite(&invite).await.unwrap();
    for n in [&b, &c] {
        assert!(
            eventually(LIMIT, || async {
                n.store.room_key(&room).unwrap().is_some()
            })
            .await,
            "a member never got the room's key"
        );
    }
    c.mesh.dial(b.addr.clone()).await.unwrap();
    let mut at_alice = owner.mesh.signals();
    let mut at_bob = b.mesh.signals();
    // Before the kick: members hear each other's presences.
    let before = b"presence: carol in channel 9 (before)".to_vec();
    assert!(
        signal_arrives(&c, room, &before, &mut at_bob, &before).await,
        "bob never heard carol's presence while a member"
    );
    let from_bob = b"presence: bob in channel 9".to_vec();
    assert!(
        signal_arrives(&b, room, &from_bob, &mut at_alice, &from_bob).await,
        "alice never heard bob's presence"
    );

    // The kick, and the next epoch, granted to carol only.
    let now = || Hlc::new(tincan_store::clock::wall_ms(), 0);
    for rec in owner
        .store
        .removal(&alice, &room, &bob.id(), MemberState::Kicked, now())
        .unwrap()
    {
        owner.mesh.publish(rec).await.unwrap();
    }
    for g in owner.store.key_upkeep(&alice, now()).unwrap() {
        owner.mesh.publish(g).await.unwrap();
    }
    let epoch_after = owner.store.room_key(&room).unwrap().unwrap().epoch();
    assert!(
        eventually(LIMIT, || async {
            c.store.room_key(&room).unwrap().map(|k| k.epoch()) == Some(epoch_after)
        })
        .await,
        "carol never got the new epoch"
    );
    let bob_epoch = b.store.room_key(&room).unwrap().unwrap().epoch();
    assert!(bob_epoch < epoch_after, "bob holds the new epoch");

    // After it: carol's presences reach alice, readable; bob's node, which
    // still follows the room, reads none of them.
    let after = b"presence: carol in channel 9 (after the kick)".to_vec();
    while at_bob.try_recv().is_ok() {}
    assert!(
        signal_arrives(&c, room, &after, &mut at_alice, &after).await,
        "alice never heard carol's presence after the kick"
    );
    // A few more rounds for bob's node to have had every chance.
    let mut rounds = 0;
    let start = Instant::now();
    let mut leaked = Vec::new();
    while start.elapsed() < Duration::from_secs(3) {
        let _ = c.mesh.publish_signal(room, after.clone()).await;
        rounds += 1;
        let until = tokio::time::Instant::now() + Duration::from_millis(200);
        while let Ok(Ok(signal)) = tokio::time::timeout_at(until, at_bob.recv()).await {
            leaked.push(signal);
        }
    }
    println!(
        "FIGURE sealed voice signals: epoch {bob_epoch} -> {epoch_after}; {rounds} presences of carol after the kick; readable at bob's node: {}",
        leaked
            .iter()
            .filter(|s| contains(&s.data, b"carol"))
            .count()
    );
    assert!(
        !leaked.iter().any(|s| contains(&s.data, b"carol")),
        "the removed member's node read a presence after the next epoch: {:?}",
        leaked
            .iter()
            .map(|s| String::from_utf8_lossy(&s.data))
            .collect::<Vec<_>>()
    );
    for n in [owner, b, c] {
        n.mesh.shutdown().await;
    }
}
