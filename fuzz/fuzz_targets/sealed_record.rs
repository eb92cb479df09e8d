//! Sealed records and invite links on arbitrary bytes, through the same
//! paths a node takes: decode, verify, open with the room's key, check the
//! rules, apply to a store that holds that key (a member's, granted it).
//! Nothing may panic; what opens must be what was sealed; queries keep
//! working.
//!
//! The first byte picks what the rest is:
//! - 0: wire bytes from a peer (decoded, verified, opened, applied);
//! - 1: the plaintext inside a sealed record: sealed under the room's key by
//!   a fixed author, so the fuzzer reaches the content checks;
//! - 2: a ciphertext, in a record signed by a fixed author (it must not open);
//! - 3: a postcard `Record` (any kind: grants, cutoffs, sealed...) signed by
//!   a fixed author;
//! - 4: an invite link.
#![no_main]

use std::sync::{Mutex, OnceLock};

use libfuzzer_sys::fuzz_target;
use tincan_core::record::SEAL_PURPOSE_RECORDS;
use tincan_core::seal::{RoomKey, record_aad};
use tincan_core::{
    Body, Hlc, Invite, JoinPolicy, Record, RoomId, RoomSettings, Sealed, SignedRecord,
    UnverifiedRecord, UserKey, make, rules,
};
use tincan_store::{Store, StoreConfig};

/// The receiver's clock: a little after every record's time below.
const NOW_MS: u64 = 1_700_000_100_000;
/// A fresh store every so many runs, so memory and the cost of a run stay
/// flat over a million.
const RUNS_PER_STORE: u32 = 2_000;

struct Setup {
    store: Store,
    owner: UserKey,
    member: UserKey,
    room: RoomId,
    key: RoomKey,
    runs: u32,
}

/// The room, the member's sealed admission and their grant, as wire bytes:
/// made once (the owner walks its key chain to make them).
fn base() -> &'static (RoomId, Vec<Vec<u8>>) {
    static BASE: OnceLock<(RoomId, Vec<Vec<u8>>)> = OnceLock::new();
    BASE.get_or_init(|| {
        let owner = UserKey::from_seed(&[7; 32]);
        let member = UserKey::from_seed(&[8; 32]);
        let settings = RoomSettings {
            join_policy: JoinPolicy::Invite,
            member_limit: None,
        };
        let owners = Store::in_memory(StoreConfig::default()).expect("store");
        owners.unlock_user(&owner).expect("unlock");
        let (room, rec) = make::room(
            &owner,
            Hlc::new(1_700_000_000_000, 0),
            [1; 16],
            "fuzz",
            settings,
        )
        .expect("sign");
        owners.apply_at(rec, NOW_MS).expect("room applies");
        let admit = owners
            .prepare_write(
                &owner,
                Hlc::new(1_700_000_000_001, 0),
                Body::Member(tincan_core::Member {
                    room,
                    user: member.id(),
                    role: tincan_core::MemberRole::Participant,
                    state: tincan_core::MemberState::Joined,
                }),
            )
            .expect("seal");
        owners.apply_at(admit, NOW_MS).expect("admission applies");
        for g in owners
            .key_upkeep(&owner, Hlc::new(1_700_000_000_002, 0))
            .expect("upkeep")
        {
            owners.apply_at(g, NOW_MS).expect("grant applies");
        }
        let wire = owners
            .records_in_dependency_order()
            .expect("records")
            .iter()
            .map(SignedRecord::to_bytes)
            .collect();
        (room, wire)
    })
}

/// A member's store (its key came by the grant, as a member's does).
fn setup() -> Setup {
    let (room, wire) = base();
    let store = Store::in_memory(StoreConfig {
        pending_limit: 256,
        feed_capacity: 4,
        ..Default::default()
    })
    .expect("store");
    let member = UserKey::from_seed(&[8; 32]);
    store.unlock_user(&member).expect("unlock");
    for bytes in wire {
        let r = SignedRecord::from_bytes(bytes).expect("verify");
        store.apply_at(r, NOW_MS).expect("applies");
    }
    let key = store
        .room_key(room)
        .expect("read")
        .expect("the member holds the key");
    Setup {
        store,
        owner: UserKey::from_seed(&[7; 32]),
        member,
        room: *room,
        key,
        runs: 0,
    }
}

static SETUP: Mutex<Option<Setup>> = Mutex::new(None);

/// Opens a verified record if sealed, checks what it holds, and applies it.
fn take(s: &Setup, record: SignedRecord) {
    if record.is_sealed()
        && let Ok(opened) = record.open(&s.key)
    {
        assert_eq!(opened.id(), record.id());
        assert_eq!(opened.to_bytes(), record.to_bytes());
        assert_eq!(opened.sealed_form().expect("re-read"), record);
        let _ = rules::check_standalone(opened.record());
    }
    let _ = rules::check_standalone(record.record());
    let _ = s.store.apply_at(record, NOW_MS);
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut guard = SETUP.lock().unwrap_or_else(|p| p.into_inner());
    if guard.as_ref().is_none_or(|s| s.runs >= RUNS_PER_STORE) {
        *guard = Some(setup());
    }
    let Some(s) = guard.as_mut() else { return };
    s.runs += 1;
    let hlc = Hlc::new(1_700_000_000_010 + u64::from(s.runs), 0);
    match mode % 5 {
        0 => {
            if let Ok(u) = UnverifiedRecord::decode(rest)
                && let Ok(r) = u.verify()
            {
                assert_eq!(r.to_bytes(), rest, "an accepted record must be canonical");
                take(s, r);
            }
        }
        1 => {
            let nonce = [3u8; 24];
            let aad = record_aad(&s.member.id().0, hlc.0, &s.room, 0);
            let ciphertext = s
                .key
                .seal_with_nonce(SEAL_PURPOSE_RECORDS, &nonce, rest, &aad)
                .expect("seal");
            let outer = Record {
                author: s.member.id(),
                hlc,
                body: Body::Sealed(Sealed {
                    room: s.room,
                    epoch: 0,
                    nonce,
                    ciphertext,
                }),
            };
            if let Ok(signed) = outer.sign(&s.member) {
                let wire = SignedRecord::from_bytes(&signed.to_bytes()).expect("our own verifies");
                if let Ok(opened) = wire.open(&s.key) {
                    // What opens is what was sealed, byte for byte.
                    let again = postcard::to_allocvec(&opened.record().body).expect("encode");
                    assert_eq!(again, rest);
                }
                take(s, wire);
            }
        }
        2 => {
            let outer = Record {
                author: s.member.id(),
                hlc,
                body: Body::Sealed(Sealed {
                    room: s.room,
                    epoch: 0,
                    nonce: [5; 24],
                    ciphertext: rest.to_vec(),
                }),
            };
            if let Ok(signed) = outer.sign(&s.member) {
                assert!(signed.open(&s.key).is_err(), "a forged ciphertext opened");
                take(s, signed);
            }
        }
        3 => {
            if let Ok(mut record) = postcard::from_bytes::<Record>(rest) {
                let author = if record.hlc.0 % 2 == 0 {
                    &s.owner
                } else {
                    &s.member
                };
                record.author = author.id();
                if let Ok(signed) = record.sign(author) {
                    take(s, signed);
                }
            }
        }
        _ => {
            let text = String::from_utf8_lossy(rest);
            if let Ok(invite) = Invite::parse(&text) {
                let again = Invite::parse(&invite.to_link()).expect("a link we made parses");
                assert_eq!(again, invite);
                let _ = s.store.install_invite(&invite);
            }
        }
    }
    // Queries after every few runs, the listing (which reads the whole room)
    // now and then, so that runs stay cheap.
    if s.runs % 8 == 0 {
        let _ = s.store.channels(&s.room).expect("query");
        let _ = s
            .store
            .log(&s.room, Hlc::ZERO, Hlc::MAX, None, 10)
            .expect("query");
        let _ = s.store.members(&s.room).expect("query");
    }
    if s.runs % 64 == 0 {
        let _ = s.store.room_sync_items(&s.room).expect("listing");
    }
});
