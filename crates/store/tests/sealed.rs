//! Sealed invite-only rooms through the store's real write and read paths
//! (redb files on disk where bytes are inspected): what a member sees, what
//! a non-member keeps, what a removed member can no longer read, how keys
//! arrive, and the one write path for local writers.

use std::collections::HashSet;

use tincan_core::make;
use tincan_core::merge::Membership;
use tincan_core::{
    Body, Channel, ChannelId, Hlc, Invite, JoinPolicy, Member, MemberRole, MemberState, Record,
    RoomId, RoomLog, RoomSettings, RuleError, Sealed, SignedRecord, UserKey,
};
use tincan_store::{Applied, Store, StoreConfig, WriteError};

fn t(ms: u64) -> Hlc {
    Hlc::new(1_700_000_000_000 + ms, 0)
}

const SECRET_CHANNEL: &str = "strategy-bunker";
const SECRET_ACTION: &str = "the password is swordfish";

fn invite_only() -> RoomSettings {
    RoomSettings {
        join_policy: JoinPolicy::Invite,
        member_limit: None,
    }
}

fn disk(dir: &tempfile::TempDir, name: &str) -> Store {
    Store::open(dir.path().join(name), StoreConfig::default()).unwrap()
}

/// Applies to `to` what `from` lists for the room, in listing order, as
/// catch-up sync does (wire bytes, decoded and verified on arrival).
fn sync(from: &Store, to: &Store, room: &RoomId) {
    let items = from.room_sync_items(room).unwrap();
    let ids: Vec<_> = items.iter().map(|(_, id)| *id).collect();
    let records: Vec<SignedRecord> = from
        .record_bytes(&ids, usize::MAX)
        .unwrap()
        .into_iter()
        .flatten()
        .map(|b| SignedRecord::from_bytes(&b).unwrap())
        .collect();
    for r in to.apply_batch(records).unwrap() {
        r.unwrap();
    }
    // Parents first: nothing waits for a parent listed after it.
    assert_eq!(to.pending_len().unwrap(), 0, "a listed record waited");
}

fn write(store: &Store, author: &UserKey, hlc: Hlc, body: Body) -> SignedRecord {
    let rec = store.prepare_write(author, hlc, body).unwrap();
    assert_eq!(
        store.apply(rec.clone()).unwrap(),
        Applied::Stored,
        "{rec:?}"
    );
    rec
}

fn admit(room: RoomId, user: &UserKey) -> Body {
    Body::Member(Member {
        room,
        user: user.id(),
        role: MemberRole::Participant,
        state: MemberState::Joined,
    })
}

fn log_body(room: RoomId, user: &UserKey, action: &str) -> Body {
    Body::RoomLog(RoomLog {
        room,
        user: user.id(),
        action: action.into(),
    })
}

fn channel_body(room: RoomId, id: u8, name: &str) -> Body {
    Body::Channel(Channel {
        room,
        id: ChannelId([id; 16]),
        name: name.into(),
        description: String::new(),
        permissions: vec![],
    })
}

/// The owner's store with an invite-only room, `members` admitted and
/// granted, a channel and a log entry by the owner.
struct Room {
    owner: UserKey,
    id: RoomId,
    store: Store,
}

fn sealed_room(store: Store, members: &[&UserKey]) -> Room {
    let owner = UserKey::from_seed(&[1; 32]);
    store.unlock_user(&owner).unwrap();
    let (id, rec) = make::room(&owner, t(1), [1; 16], "clan", invite_only()).unwrap();
    store.apply(rec).unwrap();
    assert_eq!(store.room_key(&id).unwrap().unwrap().epoch(), 0);
    for (i, m) in members.iter().enumerate() {
        write(&store, &owner, t(2 + i as u64), admit(id, m));
    }
    for g in store.key_upkeep(&owner, t(20)).unwrap() {
        assert_eq!(store.apply(g).unwrap(), Applied::Stored);
    }
    write(&store, &owner, t(21), channel_body(id, 1, SECRET_CHANNEL));
    write(
        &store,
        &owner,
        t(22),
        log_body(id, &owner, "opened the room"),
    );
    Room { owner, id, store }
}

fn actions(store: &Store, room: &RoomId) -> Vec<String> {
    store
        .log(room, Hlc::ZERO, Hlc::MAX, None, 100_000)
        .unwrap()
        .entries
        .into_iter()
        .map(|e| e.action)
        .collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn a_member_reads_the_room_and_a_non_member_holds_only_ciphertext() {
    let dir = tempfile::tempdir().unwrap();
    let member = UserKey::from_seed(&[2; 32]);
    let r = sealed_room(disk(&dir, "owner.redb"), &[&member]);

    let m_store = disk(&dir, "member.redb");
    m_store.unlock_user(&member).unwrap();
    sync(&r.store, &m_store, &r.id);
    write(
        &m_store,
        &member,
        t(30),
        log_body(r.id, &member, SECRET_ACTION),
    );
    sync(&m_store, &r.store, &r.id);

    let stranger = UserKey::from_seed(&[9; 32]);
    let n_path = dir.path().join("stranger.redb");
    {
        let n_store = Store::open(&n_path, StoreConfig::default()).unwrap();
        n_store.unlock_user(&stranger).unwrap();
        sync(&r.store, &n_store, &r.id);

        // The member and the owner see the same room.
        for s in [&r.store, &m_store] {
            assert_eq!(s.channels(&r.id).unwrap().len(), 1);
            assert_eq!(s.channels(&r.id).unwrap()[0].channel.name, SECRET_CHANNEL);
            assert!(s.membership(&r.id, &member.id()).unwrap().is_member());
            assert_eq!(actions(s, &r.id), ["opened the room", SECRET_ACTION]);
        }
        // The non-member sees the room record and nothing inside it.
        let view = n_store.room(&r.id).unwrap().unwrap();
        assert_eq!(view.room.title, "clan");
        assert!(n_store.channels(&r.id).unwrap().is_empty());
        assert_eq!(n_store.members(&r.id).unwrap().len(), 1, "the owner only");
        assert_eq!(
            n_store.membership(&r.id, &member.id()).unwrap(),
            Membership::None
        );
        assert!(actions(&n_store, &r.id).is_empty());
        assert!(n_store.room_key(&r.id).unwrap().is_none());
        // Its records: the room, the grant, and ciphertext.
        let mut kinds: Vec<&str> = Vec::new();
        let records = n_store.records().unwrap();
        for rec in &records {
            assert!(!rec.is_opened());
            kinds.push(rec.record().body.kind());
        }
        kinds.sort();
        assert_eq!(
            kinds,
            ["KeyGrant", "Room", "Sealed", "Sealed", "Sealed", "Sealed"]
        );
        // Both list the same items for the same records.
        assert_eq!(
            n_store.room_sync_items(&r.id).unwrap(),
            r.store.room_sync_items(&r.id).unwrap()
        );
        assert_eq!(
            m_store.room_sync_items(&r.id).unwrap(),
            r.store.room_sync_items(&r.id).unwrap()
        );
    }
    // No plaintext in any stored value: not a byte of the channel's name or
    // the log entry anywhere in the non-member's file.
    let bytes = std::fs::read(&n_path).unwrap();
    assert!(!contains(&bytes, SECRET_CHANNEL.as_bytes()));
    assert!(!contains(&bytes, SECRET_ACTION.as_bytes()));
    assert!(!contains(&bytes, b"opened the room"));
    // (The member's file does hold them: it opened them.)
    drop(m_store);
    let member_bytes = std::fs::read(dir.path().join("member.redb")).unwrap();
    assert!(contains(&member_bytes, SECRET_ACTION.as_bytes()));
}

#[test]
fn records_show_the_opened_view_with_the_wire_bytes_unchanged() {
    let member = UserKey::from_seed(&[2; 32]);
    let r = sealed_room(Store::in_memory(Default::default()).unwrap(), &[&member]);
    let ch = r.store.channels(&r.id).unwrap().remove(0);
    let rec = r.store.record(&ch.record).unwrap().unwrap();
    assert!(rec.is_opened());
    assert!(matches!(rec.record().body, Body::Channel(_)));
    let wire = SignedRecord::from_bytes(&rec.to_bytes()).unwrap();
    assert!(matches!(wire.record().body, Body::Sealed(_)));
    assert_eq!(wire.id(), rec.id());
    // The change feed shows the opened body too.
    let mut feed = r.store.subscribe();
    let rec = write(&r.store, &r.owner, t(40), log_body(r.id, &r.owner, "feed"));
    let c = feed.try_recv().unwrap();
    assert_eq!(c.record.id(), rec.id());
    assert!(matches!(c.record.record().body, Body::RoomLog(_)));
}

#[test]
fn removed_members_cannot_open_what_is_written_after_the_next_epoch() {
    let kicked = UserKey::from_seed(&[2; 32]);
    let leaver = UserKey::from_seed(&[3; 32]);
    let stays = UserKey::from_seed(&[4; 32]);
    let r = sealed_room(
        Store::in_memory(Default::default()).unwrap(),
        &[&kicked, &leaver, &stays],
    );
    let stores: Vec<Store> = [&kicked, &leaver, &stays]
        .iter()
        .map(|u| {
            let s = Store::in_memory(Default::default()).unwrap();
            s.unlock_user(u).unwrap();
            sync(&r.store, &s, &r.id);
            assert_eq!(s.room_key(&r.id).unwrap().unwrap().epoch(), 0);
            assert_eq!(actions(&s, &r.id), ["opened the room"]);
            s
        })
        .collect();
    // Nothing to do while nobody left.
    assert!(r.store.key_upkeep(&r.owner, t(50)).unwrap().is_empty());

    // One is kicked (with a cutoff), one leaves by themself.
    for rec in r
        .store
        .removal(&r.owner, &r.id, &kicked.id(), MemberState::Kicked, t(60))
        .unwrap()
    {
        assert_eq!(r.store.apply(rec).unwrap(), Applied::Stored);
    }
    let leave = Body::Member(Member {
        room: r.id,
        user: leaver.id(),
        role: MemberRole::Participant,
        state: MemberState::Left,
    });
    let left = write(&stores[1], &leaver, t(61), leave);
    r.store.apply(left).unwrap();

    // The owner's upkeep starts epoch 1, for the one who stays only.
    let grants = r.store.key_upkeep(&r.owner, t(62)).unwrap();
    assert_eq!(grants.len(), 1);
    let Body::KeyGrant(g) = &grants[0].record().body else {
        panic!("not a grant")
    };
    assert_eq!((g.epoch, g.envelopes.entries.len()), (1, 1));
    for g in grants {
        r.store.apply(g).unwrap();
    }
    assert_eq!(r.store.room_key(&r.id).unwrap().unwrap().epoch(), 1);
    assert!(r.store.key_upkeep(&r.owner, t(63)).unwrap().is_empty());
    write(
        &r.store,
        &r.owner,
        t(70),
        log_body(r.id, &r.owner, SECRET_ACTION),
    );
    write(
        &r.store,
        &r.owner,
        t(71),
        channel_body(r.id, 2, SECRET_CHANNEL),
    );

    for s in &stores {
        sync(&r.store, s, &r.id);
    }
    assert_eq!(stores[2].room_key(&r.id).unwrap().unwrap().epoch(), 1);
    assert_eq!(
        actions(&stores[2], &r.id),
        ["opened the room", SECRET_ACTION]
    );
    assert_eq!(stores[2].channels(&r.id).unwrap().len(), 2);
    for removed in &stores[..2] {
        assert_eq!(removed.room_key(&r.id).unwrap().unwrap().epoch(), 0);
        assert_eq!(actions(removed, &r.id), ["opened the room"]);
        assert_eq!(removed.channels(&r.id).unwrap().len(), 1);
        // What came after is there, as ciphertext only.
        let sealed_epoch_1: Vec<_> = removed
            .records()
            .unwrap()
            .into_iter()
            .filter(|rec| rec.sealed_epoch() == Some(1))
            .collect();
        assert_eq!(sealed_epoch_1.len(), 2);
        assert!(sealed_epoch_1.iter().all(|rec| !rec.is_opened()));
    }
}

#[test]
fn grants_stored_before_unlock_open_at_unlock_and_records_waiting_for_them_apply() {
    let member = UserKey::from_seed(&[2; 32]);
    let r = sealed_room(Store::in_memory(Default::default()).unwrap(), &[&member]);
    let s = Store::in_memory(Default::default()).unwrap();
    sync(&r.store, &s, &r.id);
    assert!(s.channels(&r.id).unwrap().is_empty());
    assert!(s.room_key(&r.id).unwrap().is_none());
    let mut feed = s.subscribe();
    s.unlock_user(&member).unwrap();
    assert_eq!(s.channels(&r.id).unwrap().len(), 1);
    assert_eq!(actions(&s, &r.id), ["opened the room"]);
    assert_eq!(s.locator(&r.id).unwrap(), r.store.locator(&r.id).unwrap());
    let locator = s.locator(&r.id).unwrap().unwrap();
    assert_eq!(s.room_of_locator(&locator.id()).unwrap(), Some(r.id));
    // What the key opened went out on the change feed.
    let mut seen = HashSet::new();
    while let Ok(c) = feed.try_recv() {
        seen.insert(c.record.record().body.kind());
    }
    assert!(
        seen.contains("Channel") && seen.contains("RoomLog"),
        "{seen:?}"
    );
    // Locking forgets the user's secret, not the room key.
    s.lock_user(&member.id());
    assert!(s.room_key(&r.id).unwrap().is_some());
}

#[test]
fn an_invite_records_the_locator_before_the_room_arrives() {
    let member = UserKey::from_seed(&[2; 32]);
    let r = sealed_room(Store::in_memory(Default::default()).unwrap(), &[]);
    let locator = r.store.locator(&r.id).unwrap().unwrap();
    let invite = Invite {
        room: r.id,
        locator: Some(locator.clone()),
        via: vec!["/ip4/10.0.0.1/udp/4001/quic-v1".into()],
    };
    let parsed = Invite::parse(&invite.to_link()).unwrap();
    let s = Store::in_memory(Default::default()).unwrap();
    s.install_invite(&parsed).unwrap();
    assert_eq!(s.room_of_locator(&locator.id()).unwrap(), Some(r.id));
    assert_eq!(s.locator(&r.id).unwrap(), Some(locator.clone()));
    // Before the room is here the writer knows it is sealed: only a join
    // request may be written, in plaintext.
    let join = s
        .prepare_write(&member, t(5), admit(r.id, &member))
        .unwrap();
    assert!(!join.is_sealed());
    let err = s
        .prepare_write(&member, t(6), log_body(r.id, &member, "hi"))
        .unwrap_err();
    assert!(matches!(err, WriteError::NoKey { room } if room == r.id));
    assert!(
        err.to_string().contains("wait for the owner's grant"),
        "{err}"
    );
    // An open room's invite records nothing; a forged invite does not
    // replace the locator that came with a key.
    s.install_invite(&Invite::open(RoomId([7; 16]))).unwrap();
    let forged = Invite {
        locator: Some(tincan_core::seal::LocatorSecret([1; 32])),
        ..invite
    };
    r.store.install_invite(&forged).unwrap();
    assert_eq!(r.store.locator(&r.id).unwrap(), Some(locator));
}

#[test]
fn prepare_write_seals_in_invite_only_rooms_and_signs_plainly_elsewhere() {
    let r = sealed_room(Store::in_memory(Default::default()).unwrap(), &[]);
    let rec = r
        .store
        .prepare_write(&r.owner, t(30), log_body(r.id, &r.owner, "x"))
        .unwrap();
    assert!(rec.is_opened());
    // Profiles, rooms and grants are never sealed; nor is anything of an
    // open room.
    let p = r
        .store
        .prepare_write(
            &r.owner,
            t(31),
            make::profile(&r.owner, t(31), "o")
                .unwrap()
                .record()
                .body
                .clone(),
        )
        .unwrap();
    assert!(!p.is_sealed());
    let (open, rec) =
        make::room(&r.owner, t(32), [2; 16], "open", RoomSettings::default()).unwrap();
    r.store.apply(rec).unwrap();
    let rec = r
        .store
        .prepare_write(&r.owner, t(33), log_body(open, &r.owner, "plain"))
        .unwrap();
    assert!(!rec.is_sealed());
    // Already sealed content is refused.
    let key = r.store.room_key(&r.id).unwrap().unwrap();
    let sealed = SignedRecord::from_bytes(
        &make::sealed(&r.owner, t(34), &key, log_body(r.id, &r.owner, "x"))
            .unwrap()
            .to_bytes(),
    )
    .unwrap();
    assert!(matches!(
        r.store
            .prepare_write(&r.owner, t(35), sealed.record().body.clone()),
        Err(WriteError::Invalid(_))
    ));
}

#[test]
fn ciphertext_that_does_not_open_under_the_held_key_is_its_authors_fault() {
    let member = UserKey::from_seed(&[2; 32]);
    let r = sealed_room(Store::in_memory(Default::default()).unwrap(), &[&member]);
    let wrong = tincan_core::seal::RoomKey::from_bytes(r.id, 0, [0x42; 32]).unwrap();
    let forged = make::sealed(&member, t(30), &wrong, log_body(r.id, &member, "x")).unwrap();
    let before = r.store.state_dump().unwrap();
    match r.store.apply(forged.sealed_form().unwrap()) {
        Err(tincan_store::ApplyError::Rejected(RuleError::SealedDoesNotOpen {
            epoch: 0, ..
        })) => {}
        other => panic!("expected SealedDoesNotOpen, got {other:?}"),
    }
    assert_eq!(r.store.state_dump().unwrap(), before);
    // A member admitting someone, sealed: refused as in plaintext.
    let admits = make::sealed(
        &member,
        t(31),
        &r.store.room_key(&r.id).unwrap().unwrap(),
        admit(r.id, &UserKey::from_seed(&[5; 32])),
    )
    .unwrap();
    assert!(matches!(
        r.store.apply(admits),
        Err(tincan_store::ApplyError::Rejected(
            RuleError::MemberNotByOwner { .. }
        ))
    ));
    // A non-member store cannot tell: it keeps the ciphertext, bounded.
    let n = Store::in_memory(Default::default()).unwrap();
    sync(&r.store, &n, &r.id);
    assert_eq!(
        n.apply(forged.sealed_form().unwrap()).unwrap(),
        Applied::Sealed
    );
}

#[test]
fn records_of_a_newer_epoch_than_the_key_held_wait_as_ciphertext_then_open() {
    let member = UserKey::from_seed(&[2; 32]);
    let r = sealed_room(Store::in_memory(Default::default()).unwrap(), &[&member]);
    let s = Store::in_memory(Default::default()).unwrap();
    s.unlock_user(&member).unwrap();
    sync(&r.store, &s, &r.id);
    // The owner moves to epoch 1 (say, from another device) and writes; its
    // grant comes last.
    let chain = tincan_core::seal::RoomChain::derive(&r.owner, &r.id);
    let k1 = chain.epoch_key(1).unwrap();
    let entry = make::sealed(&r.owner, t(40), &k1, log_body(r.id, &r.owner, "epoch one")).unwrap();
    assert_eq!(
        s.apply(entry.sealed_form().unwrap()).unwrap(),
        Applied::Sealed
    );
    assert_eq!(actions(&s, &r.id), ["opened the room"]);
    let grant = make::grants(&r.owner, t(41), &k1, &chain.locator(), &[member.id()]).unwrap();
    assert_eq!(s.apply_batch(grant).unwrap(), vec![Ok(Applied::Stored)]);
    assert_eq!(actions(&s, &r.id), ["opened the room", "epoch one"]);
    assert!(s.record(&entry.id()).unwrap().unwrap().is_opened());
}

#[test]
fn the_owners_upkeep_grants_invitees_and_newcomers_and_nothing_twice() {
    let a = UserKey::from_seed(&[2; 32]);
    let b = UserKey::from_seed(&[3; 32]);
    let asks = UserKey::from_seed(&[4; 32]);
    let r = sealed_room(Store::in_memory(Default::default()).unwrap(), &[&a]);
    assert!(r.store.key_upkeep(&r.owner, t(30)).unwrap().is_empty());
    // An invitee gets the current epoch; a join request does not.
    let invite = Body::Member(Member {
        room: r.id,
        user: b.id(),
        role: MemberRole::Participant,
        state: MemberState::Invited,
    });
    write(&r.store, &r.owner, t(31), invite);
    let request = make::join(&asks, t(32), r.id).unwrap();
    assert!(!request.is_sealed());
    r.store.apply(request).unwrap();
    assert_eq!(
        r.store.membership(&r.id, &asks.id()).unwrap(),
        Membership::Requested
    );
    let grants = r.store.key_upkeep(&r.owner, t(33)).unwrap();
    assert_eq!(grants.len(), 1);
    let Body::KeyGrant(g) = &grants[0].record().body else {
        panic!()
    };
    assert_eq!((g.epoch, g.envelopes.entries.len()), (0, 1));
    assert!(g.open(&b).is_some() && g.open(&asks).is_none());
    // Planned, not applied: planned again (nothing is noted until applied).
    assert_eq!(r.store.key_upkeep(&r.owner, t(34)).unwrap().len(), 1);
    for g in grants {
        r.store.apply(g).unwrap();
    }
    assert!(r.store.key_upkeep(&r.owner, t(35)).unwrap().is_empty());
    // Someone else's key cannot plan an owner's grants.
    assert!(r.store.key_upkeep(&a, t(36)).unwrap().is_empty());
}

#[test]
fn a_removal_is_the_owners_and_cuts_off_after_the_users_newest_record() {
    let member = UserKey::from_seed(&[2; 32]);
    let r = sealed_room(Store::in_memory(Default::default()).unwrap(), &[&member]);
    let m = Store::in_memory(Default::default()).unwrap();
    m.unlock_user(&member).unwrap();
    sync(&r.store, &m, &r.id);
    write(&m, &member, t(40), log_body(r.id, &member, "last words"));
    sync(&m, &r.store, &r.id);
    let recs = r
        .store
        .removal(&r.owner, &r.id, &member.id(), MemberState::Banned, t(50))
        .unwrap();
    assert_eq!(recs.len(), 2);
    assert!(recs.iter().all(|r| r.is_opened()));
    let Body::Cutoff(c) = &recs[1].record().body else {
        panic!("not a cutoff")
    };
    assert_eq!((c.user, c.after), (member.id(), t(40)));
    assert!(matches!(
        r.store
            .removal(&member, &r.id, &member.id(), MemberState::Kicked, t(50)),
        Err(WriteError::NotOwner { .. })
    ));
    assert!(matches!(
        r.store
            .removal(&r.owner, &r.id, &member.id(), MemberState::Left, t(50)),
        Err(WriteError::Invalid(_))
    ));
    assert!(matches!(
        r.store
            .removal(&r.owner, &r.id, &member.id(), MemberState::Kicked, t(40)),
        Err(WriteError::TooEarly { .. })
    ));
}

#[test]
fn a_sealed_record_with_a_record_inside_that_names_another_room_is_refused() {
    // A member seals a record whose content is about another room, with the
    // right key: the AAD checks out, the content rule does not.
    let member = UserKey::from_seed(&[2; 32]);
    let r = sealed_room(Store::in_memory(Default::default()).unwrap(), &[&member]);
    let key = r.store.room_key(&r.id).unwrap().unwrap();
    let inner = postcard::to_allocvec(&log_body(RoomId([3; 16]), &member, "x")).unwrap();
    let nonce = [1u8; 24];
    let aad = tincan_core::seal::record_aad(&member.id().0, t(30).0, &r.id, 0);
    let ciphertext = key
        .seal_with_nonce(
            tincan_core::record::SEAL_PURPOSE_RECORDS,
            &nonce,
            &inner,
            &aad,
        )
        .unwrap();
    let rec = Record {
        author: member.id(),
        hlc: t(30),
        body: Body::Sealed(Sealed {
            room: r.id,
            epoch: 0,
            nonce,
            ciphertext,
        }),
    }
    .sign(&member)
    .unwrap();
    assert!(matches!(
        r.store.apply(rec),
        Err(tincan_store::ApplyError::Rejected(
            RuleError::BadSealedContent { .. }
        ))
    ));
}
