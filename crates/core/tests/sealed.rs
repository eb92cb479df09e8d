//! Sealed records, key grants and cutoffs: opening, and every rule about
//! them refused with its own error. Attacker first: a member who moves
//! ciphertext between records, seals what may not be sealed, nests, or
//! names another room; a stranger who grants keys or cuts members off.

use tincan_core::error::UnsealError;
use tincan_core::make;
use tincan_core::record::{GRANT_ENVELOPE_LEN, SEAL_PURPOSE_RECORDS};
use tincan_core::rules::{self, CutoffWindow, MAX_CLOCK_SKEW, RoomInfo};
use tincan_core::seal::{RoomChain, record_aad};
use tincan_core::{
    Body, ChannelId, Hlc, JoinPolicy, MAX_GRANT_ENVELOPES, MAX_RECORD_BYTES, Member, MemberRole,
    MemberState, Record, RoomId, RoomLog, RoomSettings, RuleError, Sealed, SignedRecord, UserKey,
};

struct World {
    owner: UserKey,
    member: UserKey,
    room: RoomId,
    chain: RoomChain,
    info: RoomInfo,
}

fn t(ms: u64) -> Hlc {
    Hlc::new(1_700_000_000_000 + ms, 0)
}

fn world() -> World {
    let owner = UserKey::from_seed(&[1; 32]);
    let member = UserKey::from_seed(&[2; 32]);
    let settings = RoomSettings {
        join_policy: JoinPolicy::Invite,
        member_limit: None,
    };
    let room = RoomId::derive(&owner.id(), &[3; 16]);
    let chain = RoomChain::derive(&owner, &room);
    let info = RoomInfo {
        id: room,
        owner: owner.id(),
        settings,
    };
    World {
        owner,
        member,
        room,
        chain,
        info,
    }
}

fn log_body(w: &World, user: &UserKey, action: &str) -> Body {
    Body::RoomLog(RoomLog {
        room: w.room,
        user: user.id(),
        action: action.into(),
    })
}

/// What a peer receives: the wire bytes, decoded and verified.
fn wire(r: &SignedRecord) -> SignedRecord {
    SignedRecord::from_bytes(&r.to_bytes()).unwrap()
}

/// Seals `inner` as `author` would, skipping make::sealed's own checks:
/// what a hostile member can put on the wire.
fn hostile_sealed(w: &World, author: &UserKey, hlc: Hlc, epoch: u32, plain: &[u8]) -> SignedRecord {
    let key = w.chain.epoch_key(epoch).unwrap();
    let nonce = [9u8; 24];
    let aad = record_aad(&author.id().0, hlc.0, &w.room, epoch);
    let ciphertext = key
        .seal_with_nonce(SEAL_PURPOSE_RECORDS, &nonce, plain, &aad)
        .unwrap();
    Record {
        author: author.id(),
        hlc,
        body: Body::Sealed(Sealed {
            room: w.room,
            epoch,
            nonce,
            ciphertext,
        }),
    }
    .sign(author)
    .unwrap()
}

#[test]
fn a_sealed_record_opens_to_the_same_record_with_its_inner_body() {
    let w = world();
    let k2 = w.chain.epoch_key(2).unwrap();
    let made = make::sealed(&w.member, t(5), &k2, log_body(&w, &w.member, "gg")).unwrap();
    assert!(made.is_opened() && made.is_sealed());
    let received = wire(&made);
    assert!(received.is_sealed() && !received.is_opened());
    assert!(matches!(received.record().body, Body::Sealed(_)));
    // Nothing of the content is in the bytes.
    assert!(!received.to_bytes().windows(2).any(|w| w == b"gg"));
    for key in [k2.clone(), w.chain.epoch_key(7).unwrap()] {
        let opened = received.open(&key).unwrap();
        assert_eq!(opened, made);
        assert_eq!(opened.id(), received.id());
        assert_eq!(opened.to_bytes(), received.to_bytes());
        assert_eq!(opened.sealed_epoch(), Some(2));
        assert_eq!(opened.record().body, log_body(&w, &w.member, "gg"));
        assert_eq!(opened.sealed_form().unwrap(), received);
    }
    // Rebuilt from what a store keeps.
    let inner = postcard::to_allocvec(&log_body(&w, &w.member, "gg")).unwrap();
    assert_eq!(
        SignedRecord::decode_opened_trusted(&received.to_bytes(), &inner).unwrap(),
        made
    );
}

#[test]
fn an_older_key_another_rooms_key_or_another_epoch_does_not_open_it() {
    let w = world();
    let made = make::sealed(
        &w.member,
        t(5),
        &w.chain.epoch_key(2).unwrap(),
        log_body(&w, &w.member, "x"),
    )
    .unwrap();
    let r = wire(&made);
    assert!(matches!(
        r.open(&w.chain.epoch_key(1).unwrap()),
        Err(UnsealError::WrongKey { .. })
    ));
    let other = RoomChain::derive(&w.owner, &RoomId([0; 16]));
    assert!(matches!(
        r.open(&other.epoch_key(2).unwrap()),
        Err(UnsealError::WrongKey { .. })
    ));
    // A key that claims the room but is not its chain's: the author's fault
    // as far as this node can tell.
    let forged_key = tincan_core::seal::RoomKey::from_bytes(w.room, 2, [0x55; 32]).unwrap();
    assert_eq!(
        r.open(&forged_key),
        Err(UnsealError::Rule(RuleError::SealedDoesNotOpen {
            room: w.room,
            epoch: 2
        }))
    );
    assert_eq!(
        made.open(&w.chain.epoch_key(2).unwrap()),
        Err(UnsealError::NotSealed)
    );
}

#[test]
fn ciphertext_moved_into_another_record_does_not_open() {
    // A member copies another member's ciphertext into a record of their
    // own (other author, other time): the AAD binds it to the original.
    let w = world();
    let k = w.chain.epoch_key(0).unwrap();
    let victim = make::sealed(&w.member, t(5), &k, log_body(&w, &w.member, "mine")).unwrap();
    let Body::Sealed(s) = wire(&victim).record().body.clone() else {
        unreachable!()
    };
    let thief = UserKey::from_seed(&[4; 32]);
    for (author, hlc) in [(&thief, t(5)), (&w.member, t(6))] {
        let copy = Record {
            author: author.id(),
            hlc,
            body: Body::Sealed(s.clone()),
        }
        .sign(author)
        .unwrap();
        assert!(matches!(
            wire(&copy).open(&k),
            Err(UnsealError::Rule(RuleError::SealedDoesNotOpen { .. }))
        ));
    }
    // Flipping one ciphertext bit: the same.
    let mut bad = s.clone();
    bad.ciphertext[0] ^= 1;
    let rec = Record {
        author: w.member.id(),
        hlc: t(5),
        body: Body::Sealed(bad),
    }
    .sign(&w.member)
    .unwrap();
    assert!(matches!(
        wire(&rec).open(&k),
        Err(UnsealError::Rule(RuleError::SealedDoesNotOpen { .. }))
    ));
}

#[test]
fn only_sealed_kinds_of_the_same_room_may_be_inside() {
    let w = world();
    let k = w.chain.epoch_key(0).unwrap();
    let refused = |plain: &[u8]| match wire(&hostile_sealed(&w, &w.member, t(5), 0, plain)).open(&k)
    {
        Err(UnsealError::Rule(RuleError::BadSealedContent { why })) => why,
        other => panic!("expected BadSealedContent, got {other:?}"),
    };
    let profile = make::profile(&w.member, t(1), "m")
        .unwrap()
        .record()
        .body
        .clone();
    assert!(refused(&postcard::to_allocvec(&profile).unwrap()).contains("never sealed"));
    // A sealed record inside a sealed record.
    let inner = wire(&make::sealed(&w.member, t(5), &k, log_body(&w, &w.member, "x")).unwrap());
    let nested = postcard::to_allocvec(&inner.record().body).unwrap();
    assert!(refused(&nested).contains("never sealed"));
    // Another room's content.
    let elsewhere = Body::RoomLog(RoomLog {
        room: RoomId([0; 16]),
        user: w.member.id(),
        action: "x".into(),
    });
    assert!(refused(&postcard::to_allocvec(&elsewhere).unwrap()).contains("another room"));
    // Garbage, and a valid body with trailing bytes (not canonical).
    assert!(refused(b"\xff\xff\xff").contains("not a record body"));
    let mut trailing = postcard::to_allocvec(&log_body(&w, &w.member, "x")).unwrap();
    trailing.push(0);
    assert!(refused(&trailing).contains("canonical"));
    // make::sealed refuses the same.
    assert!(make::sealed(&w.member, t(5), &k, profile).is_err());
    // The opened content is checked with the ordinary rules by the caller:
    // a log entry about someone else is refused as a plaintext one would be.
    let framed = wire(&hostile_sealed(
        &w,
        &w.member,
        t(5),
        0,
        &postcard::to_allocvec(&log_body(&w, &w.owner, "framed")).unwrap(),
    ))
    .open(&k)
    .unwrap();
    assert_eq!(
        rules::check_standalone(framed.record()),
        Err(RuleError::LogNotAboutAuthor)
    );
    // A member may not admit anyone, sealed or not.
    let admit = Body::Member(Member {
        room: w.room,
        user: UserKey::from_seed(&[8; 32]).id(),
        role: MemberRole::Participant,
        state: MemberState::Joined,
    });
    let rec = make::sealed(&w.member, t(5), &k, admit).unwrap();
    assert!(matches!(
        rules::check_in_room(wire(&rec).open(&k).unwrap().record(), &w.info),
        Err(RuleError::MemberNotByOwner { .. })
    ));
}

#[test]
fn the_outer_record_is_checked_without_the_key() {
    let w = world();
    let rec = Record {
        author: w.member.id(),
        hlc: t(1),
        body: Body::Sealed(Sealed {
            room: w.room,
            epoch: tincan_core::seal::MAX_EPOCHS,
            nonce: [0; 24],
            ciphertext: vec![0; 40],
        }),
    };
    assert!(matches!(
        rules::check_standalone(&rec),
        Err(RuleError::InvalidField { field: "epoch", .. })
    ));
    let rec = Record {
        body: Body::Sealed(Sealed {
            room: w.room,
            epoch: 0,
            nonce: [0; 24],
            ciphertext: vec![0; 16],
        }),
        ..rec
    };
    assert!(matches!(
        rules::check_standalone(&rec),
        Err(RuleError::InvalidField {
            field: "ciphertext",
            ..
        })
    ));
    assert_eq!(rec.room(), Some(w.room));
    assert_eq!(rec.parent_room(), Some(w.room));
}

#[test]
fn grants_open_for_their_recipients_only_and_only_the_owner_writes_them() {
    let w = world();
    let k3 = w.chain.epoch_key(3).unwrap();
    let loc = w.chain.locator();
    let others: Vec<_> = (10..12u8).map(|i| UserKey::from_seed(&[i; 32])).collect();
    let recipients: Vec<_> = std::iter::once(w.member.id())
        .chain(others.iter().map(|k| k.id()))
        .collect();
    let grants = make::grants(&w.owner, t(9), &k3, &loc, &recipients).unwrap();
    assert_eq!(grants.len(), 1);
    let g = wire(&grants[0]);
    rules::check_standalone(g.record()).unwrap();
    rules::check_in_room(g.record(), &w.info).unwrap();
    let Body::KeyGrant(grant) = &g.record().body else {
        panic!("not a grant")
    };
    assert_eq!(grant.envelopes.entries.len(), 3);
    let (key, locator) = grant.open(&w.member).unwrap();
    assert_eq!((key.epoch(), *key.bytes()), (3, *k3.bytes()));
    assert_eq!(locator, loc);
    assert!(grant.open(&others[1]).is_some());
    assert!(grant.open(&UserKey::from_seed(&[99; 32])).is_none());
    // Someone other than the owner granting a key (even the right one).
    let forged = make::grants(&w.member, t(9), &k3, &loc, &recipients).unwrap();
    assert_eq!(
        rules::check_in_room(forged[0].record(), &w.info),
        Err(RuleError::GrantNotByOwner { room: w.room })
    );
    // A grant whose envelope holds another key than it commits to opens
    // to nothing.
    let mut lying = grant.clone();
    lying.relay_commit = w.chain.epoch_key(4).unwrap().relay_commit();
    assert!(lying.open(&w.member).is_none());
}

#[test]
fn many_recipients_take_several_grants_each_under_the_size_limit() {
    let w = world();
    let k = w.chain.epoch_key(0).unwrap();
    let recipients: Vec<_> = (0..(2 * MAX_GRANT_ENVELOPES + 1) as u32)
        .map(|i| {
            let mut seed = [7u8; 32];
            seed[..4].copy_from_slice(&i.to_be_bytes());
            UserKey::from_seed(&seed).id()
        })
        .collect();
    let grants = make::grants(&w.owner, Hlc::MAX, &k, &w.chain.locator(), &recipients).unwrap();
    assert_eq!(grants.len(), 3);
    for g in &grants {
        assert!(g.wire_len() < MAX_RECORD_BYTES, "{}", g.wire_len());
        rules::check_standalone(g.record()).unwrap();
    }
    // Over the envelope count, or an envelope of the wrong size.
    let Body::KeyGrant(mut big) = grants[0].record().body.clone() else {
        unreachable!()
    };
    big.envelopes.entries.push(big.envelopes.entries[0].clone());
    let rec = Record {
        author: w.owner.id(),
        hlc: t(1),
        body: Body::KeyGrant(big.clone()),
    };
    assert!(matches!(
        rules::check_standalone(&rec),
        Err(RuleError::InvalidField {
            field: "envelopes",
            ..
        })
    ));
    big.envelopes.entries.truncate(1);
    big.envelopes.entries[0]
        .sealed
        .truncate(GRANT_ENVELOPE_LEN - 1);
    let rec = Record {
        body: Body::KeyGrant(big),
        ..rec
    };
    assert!(matches!(
        rules::check_standalone(&rec),
        Err(RuleError::InvalidField {
            field: "envelopes",
            ..
        })
    ));
    // Nobody to grant to: one record still announces the epoch.
    assert_eq!(
        make::grants(&w.owner, t(1), &k, &w.chain.locator(), &[])
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn cutoffs_are_the_owners_about_someone_else_and_dated_after_their_window() {
    let w = world();
    let c = make::cutoff(&w.owner, t(10), w.room, w.member.id(), t(5)).unwrap();
    rules::check_standalone(c.record()).unwrap();
    rules::check_in_room(c.record(), &w.info).unwrap();
    let by_member = make::cutoff(&w.member, t(10), w.room, w.owner.id(), t(5)).unwrap();
    rules::check_standalone(by_member.record()).unwrap();
    assert_eq!(
        rules::check_in_room(by_member.record(), &w.info),
        Err(RuleError::CutoffNotByOwner { room: w.room })
    );
    let about_self = make::cutoff(&w.owner, t(10), w.room, w.owner.id(), t(5)).unwrap();
    assert!(matches!(
        rules::check_standalone(about_self.record()),
        Err(RuleError::InvalidField { field: "user", .. })
    ));
    let not_before = make::cutoff(&w.owner, t(10), w.room, w.member.id(), t(10)).unwrap();
    assert!(matches!(
        rules::check_standalone(not_before.record()),
        Err(RuleError::InvalidField { field: "after", .. })
    ));
}

#[test]
fn a_cutoff_hides_a_members_entries_in_its_window_only() {
    let w = world();
    let admitted = tincan_core::merge::MemberEntry {
        hlc: t(1),
        id: tincan_core::RecordId([1; 32]),
        by_owner: true,
        role: MemberRole::Participant,
        state: MemberState::Joined,
    };
    let window = CutoffWindow {
        after: t(5),
        at: t(10),
    };
    let check = |ms| {
        let rec = make::log(&w.member, t(ms), w.room, "x").unwrap();
        rules::check_log_membership(rec.record(), &w.info, &[admitted], &[window])
    };
    assert_eq!(check(5), Ok(()));
    assert_eq!(check(6), Err(RuleError::CutOff { room: w.room }));
    assert_eq!(check(10), Err(RuleError::CutOff { room: w.room }));
    assert_eq!(check(11), Ok(()), "the window ends at the cutoff");
    // The owner is never cut off.
    let rec = make::log(&w.owner, t(7), w.room, "x").unwrap();
    assert_eq!(
        rules::check_log_membership(rec.record(), &w.info, &[], &[window]),
        Ok(())
    );
}

#[test]
fn a_record_dated_past_the_skew_is_refused_for_now() {
    let w = world();
    let now = 1_700_000_000_000u64;
    let max = MAX_CLOCK_SKEW.as_millis() as u64;
    let at = |ms: u64| make::log(&w.owner, Hlc::new(ms, 0), w.room, "x").unwrap();
    assert!(rules::check_clock_skew(at(now + max).record(), now).is_ok());
    let err = rules::check_clock_skew(at(now + max + 1).record(), now).unwrap_err();
    assert_eq!(err.ahead_ms, max + 1);
    assert!(err.to_string().contains("accepted once"), "{err}");
    assert!(rules::check_clock_skew(at(now + 86_400_000).record(), now + 86_400_000).is_ok());
    // The largest HLC does not overflow anything.
    let r = Record {
        author: w.owner.id(),
        hlc: Hlc::MAX,
        body: log_body(&w, &w.owner, "x"),
    };
    assert!(rules::check_clock_skew(&r, u64::MAX).is_ok());
    assert!(rules::check_clock_skew(&r, 0).is_err());
}

#[test]
fn old_kinds_keep_their_encoding() {
    // postcard writes the variant index first: the kinds added for sealing
    // come after every kind that records were written with before.
    let w = world();
    let ch = make::channel(&w.owner, t(1), w.room, ChannelId([1; 16]), "a", "", vec![]).unwrap();
    assert_eq!(postcard::to_allocvec(&ch.record().body).unwrap()[0], 3);
    let del = make::delete_channel(&w.owner, t(1), w.room, ChannelId([1; 16])).unwrap();
    assert_eq!(postcard::to_allocvec(&del.record().body).unwrap()[0], 5);
    let k = w.chain.epoch_key(0).unwrap();
    let s = wire(&make::sealed(&w.owner, t(1), &k, ch.record().body.clone()).unwrap());
    assert_eq!(postcard::to_allocvec(&s.record().body).unwrap()[0], 6);
    let c = make::cutoff(&w.owner, t(2), w.room, w.member.id(), t(1)).unwrap();
    assert_eq!(postcard::to_allocvec(&c.record().body).unwrap()[0], 8);
}
