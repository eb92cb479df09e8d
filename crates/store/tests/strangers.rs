//! Strangers bounded, time bounded: what a peer that does not play along
//! can make a store keep. Each attack was run against the store before these
//! bounds (see the report): it kept everything.

use tincan_core::make;
use tincan_core::merge::Membership;
use tincan_core::rules::MAX_CLOCK_SKEW;
use tincan_core::seal::RoomKey;
use tincan_core::{
    Body, Hlc, JoinPolicy, Member, MemberRole, MemberState, RoomId, RoomLog, RoomSettings,
    SignedRecord, UserKey,
};
use tincan_store::{
    Applied, DropReason, MAX_JOIN_REQUESTS, MAX_SEALED_PER_AUTHOR, MAX_SELF_MEMBER_RECORDS,
    MAX_WAITING_LOGS, MAX_WAITING_PROFILES, Store, StoreConfig,
};

fn t(ms: u64) -> Hlc {
    Hlc::new(1_700_000_000_000 + ms, 0)
}

fn user(i: u32) -> UserKey {
    let mut seed = [0x5a; 32];
    seed[..4].copy_from_slice(&i.to_be_bytes());
    UserKey::from_seed(&seed)
}

fn settings(policy: JoinPolicy) -> RoomSettings {
    RoomSettings {
        join_policy: policy,
        member_limit: None,
    }
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

fn member(
    owner: &UserKey,
    hlc: Hlc,
    room: RoomId,
    u: &UserKey,
    state: MemberState,
) -> SignedRecord {
    make::member(owner, hlc, room, u.id(), MemberRole::Participant, state).unwrap()
}

fn stored_by(store: &Store, author: &UserKey) -> usize {
    store
        .records()
        .unwrap()
        .iter()
        .filter(|r| r.record().author == author.id())
        .count()
}

#[test]
fn ten_thousand_profiles_of_users_in_no_room_here_are_not_stored() {
    let s = Store::in_memory(StoreConfig::default()).unwrap();
    let owner = UserKey::from_seed(&[1; 32]);
    let (_, room) = make::room(&owner, t(1), [1; 16], "r", RoomSettings::default()).unwrap();
    s.apply(room).unwrap();
    let profiles: Vec<_> = (0..10_000u32)
        .map(|i| make::profile(&user(i), t(2 + u64::from(i)), "stranger").unwrap())
        .collect();
    let mut dropped = 0;
    for chunk in profiles.chunks(1000) {
        for out in s.apply_batch(chunk.to_vec()).unwrap() {
            match out.unwrap() {
                Applied::Pending(_) => {}
                Applied::Dropped(DropReason::WaitingProfiles) => dropped += 1,
                other => panic!("a stranger's profile: {other:?}"),
            }
        }
    }
    assert!(s.profiles().unwrap().is_empty());
    assert!(
        s.records()
            .unwrap()
            .iter()
            .all(|r| !matches!(r.record().body, Body::Profile(_)))
    );
    assert!(s.profile_sync_items().unwrap().is_empty());
    let waiting = s.pending_len().unwrap();
    assert!(waiting as usize <= MAX_WAITING_PROFILES, "{waiting} wait");
    // Each was newer than every one waiting, so each pushed out the oldest.
    assert_eq!(dropped, 0);
    // The owner's profile is kept: they own a room here.
    s.apply(make::profile(&owner, t(1), "owner").unwrap())
        .unwrap();
    assert_eq!(s.profiles().unwrap().len(), 1);
}

#[test]
fn a_profile_waits_for_its_users_standing_and_goes_when_the_standing_goes() {
    let s = Store::in_memory(StoreConfig {
        max_join_requests: 1,
        ..Default::default()
    })
    .unwrap();
    let owner = UserKey::from_seed(&[1; 32]);
    let (room, rec) = make::room(&owner, t(1), [1; 16], "r", settings(JoinPolicy::Invite)).unwrap();
    s.apply(rec).unwrap();
    let a = user(1);
    let p = make::profile(&a, t(2), "a").unwrap();
    assert!(matches!(s.apply(p).unwrap(), Applied::Pending(_)));
    s.apply(make::join(&a, t(3), room).unwrap()).unwrap();
    assert_eq!(s.profiles().unwrap().len(), 1, "released by the standing");
    // A newer join request pushes a's out of the room's single slot: a has
    // no standing any more, and the profile goes back to waiting.
    s.apply(make::join(&user(2), t(4), room).unwrap()).unwrap();
    assert_eq!(s.membership(&room, &a.id()).unwrap(), Membership::None);
    assert!(s.profiles().unwrap().is_empty());
    // An unlocked local user keeps theirs whatever their standing.
    s.unlock_user(&a).unwrap();
    assert_eq!(s.profiles().unwrap().len(), 1);
}

/// A store as the owner, a member and a non-member each hold an
/// invite-only room (the member holding the key).
fn three_stores() -> (UserKey, RoomId, Vec<Store>) {
    let owner = UserKey::from_seed(&[1; 32]);
    let m = UserKey::from_seed(&[2; 32]);
    let o = Store::in_memory(StoreConfig::default()).unwrap();
    o.unlock_user(&owner).unwrap();
    let (room, rec) = make::room(&owner, t(1), [1; 16], "r", settings(JoinPolicy::Invite)).unwrap();
    o.apply(rec).unwrap();
    let admit = Body::Member(Member {
        room,
        user: m.id(),
        role: MemberRole::Participant,
        state: MemberState::Joined,
    });
    o.apply(o.prepare_write(&owner, t(2), admit).unwrap())
        .unwrap();
    for g in o.key_upkeep(&owner, t(3)).unwrap() {
        o.apply(g).unwrap();
    }
    let all = o.records_in_dependency_order().unwrap();
    let wire: Vec<SignedRecord> = all
        .iter()
        .map(|r| SignedRecord::from_bytes(&r.to_bytes()).unwrap())
        .collect();
    let ms = Store::in_memory(StoreConfig::default()).unwrap();
    ms.unlock_user(&m).unwrap();
    let ns = Store::in_memory(StoreConfig::default()).unwrap();
    for s in [&ms, &ns] {
        for out in s.apply_batch(wire.clone()).unwrap() {
            out.unwrap();
        }
    }
    assert!(ms.membership(&room, &m.id()).unwrap().is_member());
    (owner, room, vec![o, ms, ns])
}

#[test]
fn a_stranger_who_asks_to_join_and_writes_ten_thousand_entries_is_kept_to_the_cap() {
    let (_, room, stores) = three_stores();
    let stranger = user(7);
    let request = make::join(&stranger, t(10), room).unwrap();
    let entries: Vec<_> = (0..10_000u64)
        .map(|i| make::log(&stranger, t(11 + i), room, &format!("spam {i}")).unwrap())
        .collect();
    for s in &stores {
        assert_eq!(s.apply(request.clone()).unwrap(), Applied::Stored);
        let before = s.pending_len().unwrap();
        for chunk in entries.chunks(2000) {
            for out in s.apply_batch(chunk.to_vec()).unwrap() {
                assert!(matches!(
                    out.unwrap(),
                    Applied::Pending(_) | Applied::Dropped(DropReason::WaitingLogs)
                ));
            }
        }
        let stored = stored_by(s, &stranger);
        let waiting = s.pending_len().unwrap() - before;
        assert_eq!(stored, 1, "only the join request is stored");
        assert!(waiting as usize <= MAX_WAITING_LOGS, "{waiting} wait");
        assert!(actions(s, &room).is_empty());
        // Sync never lists them.
        assert!(
            s.room_sync_items(&room)
                .unwrap()
                .iter()
                .all(|(_, id)| entries.iter().all(|e| e.id() != *id))
        );
    }
}

#[test]
fn a_strangers_ciphertext_is_refused_by_members_and_capped_at_non_members() {
    let (_, room, stores) = three_stores();
    let stranger = user(8);
    // Sealed under a key of its own making, so only a key holder can tell.
    let fake = RoomKey::from_bytes(room, 0, [0x77; 32]).unwrap();
    let body = |i: u64| {
        Body::RoomLog(RoomLog {
            room,
            user: stranger.id(),
            action: format!("spam {i}"),
        })
    };
    let records: Vec<_> = (0..(MAX_SEALED_PER_AUTHOR as u64 + 500))
        .map(|i| {
            make::sealed(&stranger, t(10 + i), &fake, body(i))
                .unwrap()
                .sealed_form()
                .unwrap()
        })
        .collect();
    for (i, s) in stores.iter().enumerate() {
        let outcomes = s.apply_batch(records.clone()).unwrap();
        if i < 2 {
            assert!(
                outcomes.iter().all(Result::is_err),
                "a key holder refuses them"
            );
            assert_eq!(stored_by(s, &stranger), 0);
        } else {
            assert_eq!(stored_by(s, &stranger), MAX_SEALED_PER_AUTHOR);
            let dropped = outcomes
                .iter()
                .filter(|o| **o == Ok(Applied::Dropped(DropReason::SealedBacklog)))
                .count();
            assert_eq!(dropped, 0, "each was newer: the oldest made room");
            // The newest are the ones kept.
            assert!(s.record(&records.last().unwrap().id()).unwrap().is_some());
            assert!(s.record(&records[0].id()).unwrap().is_none());
            // An older one than all kept is dropped on arrival.
            assert_eq!(
                s.apply(records[0].clone()).unwrap(),
                Applied::Dropped(DropReason::SealedBacklog)
            );
        }
    }
}

#[test]
fn own_member_records_are_capped_per_room_and_user_keeping_the_newest() {
    let s = Store::in_memory(StoreConfig::default()).unwrap();
    let owner = UserKey::from_seed(&[1; 32]);
    let (room, rec) = make::room(&owner, t(1), [1; 16], "r", RoomSettings::default()).unwrap();
    s.apply(rec).unwrap();
    let u = user(3);
    let n = 10 * MAX_SELF_MEMBER_RECORDS as u64;
    for i in 0..n {
        let state = if i % 2 == 0 {
            MemberState::Joined
        } else {
            MemberState::Left
        };
        s.apply(member(&u, t(10 + i), room, &u, state)).unwrap();
    }
    assert_eq!(stored_by(&s, &u), MAX_SELF_MEMBER_RECORDS);
    // The newest decide: the last one was a leave.
    assert_eq!(s.membership(&room, &u.id()).unwrap(), Membership::Left);
    let older = member(&u, t(5), room, &u, MemberState::Joined);
    assert_eq!(
        s.apply(older).unwrap(),
        Applied::Dropped(DropReason::SelfMemberRecords)
    );
    // The owner's records about a user are not capped.
    for i in 0..n {
        let state = if i % 2 == 0 {
            MemberState::Kicked
        } else {
            MemberState::Joined
        };
        assert_eq!(
            s.apply(member(&owner, t(1000 + i), room, &u, state))
                .unwrap(),
            Applied::Stored
        );
    }
}

#[test]
fn join_requests_are_capped_per_room_keeping_the_newest_and_admission_frees_a_slot() {
    let s = Store::in_memory(StoreConfig::default()).unwrap();
    let owner = UserKey::from_seed(&[1; 32]);
    let (room, rec) = make::room(&owner, t(1), [1; 16], "r", settings(JoinPolicy::Invite)).unwrap();
    s.apply(rec).unwrap();
    let n = 3 * MAX_JOIN_REQUESTS as u32;
    for i in 0..n {
        s.apply(make::join(&user(i), t(10 + u64::from(i)), room).unwrap())
            .unwrap();
    }
    let requested = |s: &Store| {
        s.members(&room)
            .unwrap()
            .iter()
            .filter(|m| m.membership == Membership::Requested)
            .map(|m| m.user)
            .collect::<Vec<_>>()
    };
    let kept = requested(&s);
    assert_eq!(kept.len(), MAX_JOIN_REQUESTS);
    for i in n - MAX_JOIN_REQUESTS as u32..n {
        assert!(kept.contains(&user(i).id()));
    }
    // An older request than all kept is dropped.
    assert_eq!(
        s.apply(make::join(&user(n + 1), t(5), room).unwrap())
            .unwrap(),
        Applied::Dropped(DropReason::JoinRequests)
    );
    // The owner admits one of them: no longer a request, so a slot frees.
    s.apply(member(
        &owner,
        t(10_000),
        room,
        &user(n - 1),
        MemberState::Joined,
    ))
    .unwrap();
    assert!(s.membership(&room, &user(n - 1).id()).unwrap().is_member());
    s.apply(make::join(&user(n + 2), t(10_001), room).unwrap())
        .unwrap();
    assert_eq!(requested(&s).len(), MAX_JOIN_REQUESTS);
    // In an open room, self-joins are members, not requests: no cap.
    let (open, rec) = make::room(&owner, t(1), [2; 16], "o", RoomSettings::default()).unwrap();
    s.apply(rec).unwrap();
    for i in 0..n {
        s.apply(make::join(&user(i), t(20_000 + u64::from(i)), open).unwrap())
            .unwrap();
    }
    assert_eq!(s.members(&open).unwrap().len(), n as usize + 1);
}

#[test]
fn a_record_a_day_ahead_is_dropped_now_and_accepted_a_day_later() {
    let s = Store::in_memory(StoreConfig::default()).unwrap();
    let owner = UserKey::from_seed(&[1; 32]);
    let now = 1_800_000_000_000u64;
    let day = 86_400_000u64;
    let (room, rec) = make::room(
        &owner,
        Hlc::new(now + day, 0),
        [1; 16],
        "r",
        RoomSettings::default(),
    )
    .unwrap();
    match s.apply_at(rec.clone(), now).unwrap() {
        Applied::Dropped(DropReason::ClockAhead(a)) => {
            assert_eq!(a.ahead_ms, day);
        }
        other => panic!("a record a day ahead: {other:?}"),
    }
    assert!(s.room(&room).unwrap().is_none());
    assert_eq!(s.pending_len().unwrap(), 0, "not kept anywhere");
    // Just within the bound it is taken; a day later the first one is.
    let max = MAX_CLOCK_SKEW.as_millis() as u64;
    let (_, near) = make::room(
        &owner,
        Hlc::new(now + max, 0),
        [2; 16],
        "near",
        RoomSettings::default(),
    )
    .unwrap();
    assert_eq!(s.apply_at(near, now).unwrap(), Applied::Stored);
    assert_eq!(s.apply_at(rec, now + day).unwrap(), Applied::Stored);
    assert!(s.room(&room).unwrap().is_some());
    // The wall-clock entry point uses the real clock: a day ahead of it too.
    let wall = tincan_store::clock::wall_ms();
    let (_, ahead) = make::room(
        &owner,
        Hlc::new(wall + day, 0),
        [3; 16],
        "x",
        RoomSettings::default(),
    )
    .unwrap();
    assert!(matches!(
        s.apply(ahead).unwrap(),
        Applied::Dropped(DropReason::ClockAhead(_))
    ));
}

/// Every order of `records` after `first`, on fresh stores: each must end
/// with the same state and show `expected` as the room's log.
fn every_order(
    first: &[SignedRecord],
    records: &[SignedRecord],
    unlock: Option<&UserKey>,
    room: &RoomId,
    expected: &[&str],
) {
    fn permutations(n: usize) -> Vec<Vec<usize>> {
        if n == 0 {
            return vec![vec![]];
        }
        let mut out = Vec::new();
        for p in permutations(n - 1) {
            for i in 0..=p.len() {
                let mut q = p.clone();
                q.insert(i, n - 1);
                out.push(q);
            }
        }
        out
    }
    let mut dump = None;
    for order in permutations(records.len()) {
        let s = Store::in_memory(StoreConfig::default()).unwrap();
        if let Some(k) = unlock {
            s.unlock_user(k).unwrap();
        }
        for r in first {
            s.apply(r.clone()).unwrap();
        }
        for i in &order {
            let _ = s.apply(records[*i].clone()).unwrap();
        }
        assert_eq!(actions(&s, room), expected, "order {order:?}");
        let d = s.state_dump().unwrap();
        match &dump {
            None => dump = Some(d),
            Some(prev) => assert_eq!(prev, &d, "order {order:?} gave another state"),
        }
    }
}

#[test]
fn a_kicked_members_backdated_entry_is_hidden_whatever_the_arrival_order() {
    // Open room, plaintext: joined at 2, spoke at 3, kicked at 100 (the owner
    // had seen their entry of 3); after the kick they write entries dated 50
    // (before the kick) and 200 (after it).
    let owner = UserKey::from_seed(&[1; 32]);
    let m = UserKey::from_seed(&[2; 32]);
    let (room, room_rec) = make::room(&owner, t(1), [1; 16], "r", RoomSettings::default()).unwrap();
    let join = make::join(&m, t(2), room).unwrap();
    let hello = make::log(&m, t(3), room, "hello").unwrap();
    let kick = member(&owner, t(100), room, &m, MemberState::Kicked);
    let cutoff = make::cutoff(&owner, t(100), room, m.id(), t(3)).unwrap();
    let backdated = make::log(&m, t(50), room, "backdated").unwrap();
    let later = make::log(&m, t(200), room, "after the kick").unwrap();
    every_order(
        std::slice::from_ref(&room_rec),
        &[
            join.clone(),
            hello.clone(),
            kick.clone(),
            cutoff.clone(),
            backdated.clone(),
            later.clone(),
        ],
        None,
        &room,
        &["hello"],
    );
    // Without the cutoff the backdated entry would show: the fold alone
    // says they were a member at 50.
    let s = Store::in_memory(StoreConfig::default()).unwrap();
    for r in [&room_rec, &join, &hello, &kick, &backdated] {
        s.apply(r.clone()).unwrap();
    }
    assert_eq!(actions(&s, &room), ["hello", "backdated"]);
}

#[test]
fn a_kicked_members_backdated_entry_is_hidden_in_a_sealed_room_too() {
    let owner = UserKey::from_seed(&[1; 32]);
    let m = UserKey::from_seed(&[2; 32]);
    let o = Store::in_memory(StoreConfig::default()).unwrap();
    o.unlock_user(&owner).unwrap();
    let (room, room_rec) =
        make::room(&owner, t(1), [1; 16], "r", settings(JoinPolicy::Invite)).unwrap();
    o.apply(room_rec.clone()).unwrap();
    let key = o.room_key(&room).unwrap().unwrap();
    let sealed = |author: &UserKey, hlc, body| {
        make::sealed(author, hlc, &key, body)
            .unwrap()
            .sealed_form()
            .unwrap()
    };
    let admit = sealed(
        &owner,
        t(2),
        Body::Member(Member {
            room,
            user: m.id(),
            role: MemberRole::Participant,
            state: MemberState::Joined,
        }),
    );
    let log = |hlc, a: &str| {
        sealed(
            &m,
            hlc,
            Body::RoomLog(RoomLog {
                room,
                user: m.id(),
                action: a.into(),
            }),
        )
    };
    let kick = sealed(
        &owner,
        t(100),
        Body::Member(Member {
            room,
            user: m.id(),
            role: MemberRole::Participant,
            state: MemberState::Kicked,
        }),
    );
    let cutoff = sealed(
        &owner,
        t(100),
        Body::Cutoff(tincan_core::Cutoff {
            room,
            user: m.id(),
            after: t(3),
        }),
    );
    every_order(
        &[room_rec],
        &[
            admit,
            log(t(3), "hello"),
            kick,
            cutoff,
            log(t(50), "backdated"),
        ],
        Some(&owner),
        &room,
        &["hello"],
    );
}

#[test]
fn a_late_ban_moves_a_members_stored_entries_back_to_waiting() {
    let s = Store::in_memory(StoreConfig::default()).unwrap();
    let owner = UserKey::from_seed(&[1; 32]);
    let m = user(4);
    let (room, rec) = make::room(&owner, t(1), [1; 16], "r", RoomSettings::default()).unwrap();
    s.apply(rec).unwrap();
    s.apply(make::join(&m, t(2), room).unwrap()).unwrap();
    let entries: Vec<_> = (0..100u64)
        .map(|i| make::log(&m, t(10 + i), room, &format!("e{i}")).unwrap())
        .collect();
    s.apply_batch(entries).unwrap();
    assert_eq!(actions(&s, &room).len(), 100);
    s.apply(member(&owner, t(60), room, &m, MemberState::Banned))
        .unwrap();
    assert_eq!(actions(&s, &room).len(), 50, "entries dated 10..59 stay");
    assert_eq!(stored_by(&s, &m), 1 + 50);
    assert!(s.pending_len().unwrap() as usize <= MAX_WAITING_LOGS);
}

#[test]
fn an_invitees_entries_ahead_of_their_own_join_wait_in_a_larger_group() {
    // A catch-up may list an invitee's own (sealed) join after their log
    // entries: they wait for it, and all apply when it comes.
    let s = Store::in_memory(StoreConfig::default()).unwrap();
    let owner = UserKey::from_seed(&[1; 32]);
    let u = user(5);
    let (room, rec) = make::room(&owner, t(1), [1; 16], "r", settings(JoinPolicy::Invite)).unwrap();
    s.apply(rec).unwrap();
    s.apply(member(&owner, t(2), room, &u, MemberState::Invited))
        .unwrap();
    let entries: Vec<_> = (0..500u64)
        .map(|i| make::log(&u, t(10 + i), room, &format!("e{i}")).unwrap())
        .collect();
    for out in s.apply_batch(entries).unwrap() {
        assert!(matches!(out.unwrap(), Applied::Pending(_)));
    }
    assert!(actions(&s, &room).is_empty());
    s.apply(make::join(&u, t(3), room).unwrap()).unwrap();
    assert_eq!(actions(&s, &room).len(), 500);
    assert_eq!(s.pending_len().unwrap(), 0);
}
