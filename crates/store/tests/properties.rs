//! Property tests of the merge: any order and any duplication of a set of
//! records gives byte-identical store state, and nothing the rules refuse is
//! ever visible in a query.

use std::collections::HashMap;

use proptest::prelude::*;
use tincan_core::make;
use tincan_core::merge::{MemberEntry, Version};
use tincan_core::rules::{self, RoomInfo};
use tincan_core::{
    Body, ChannelId, Hlc, JoinPolicy, MemberRole, MemberState, RoomId, RoomSettings, SignedRecord,
    UserKey,
};
use tincan_store::{Store, StoreConfig};

const USERS: usize = 4;

fn keys() -> Vec<UserKey> {
    (0..USERS as u8)
        .map(|i| UserKey::from_seed(&[i + 1; 32]))
        .collect()
}

/// One operation of a scenario; indexes pick users, rooms and channels.
#[derive(Clone, Debug)]
enum Op {
    Profile {
        user: usize,
        t: u64,
        name: u8,
    },
    Room {
        owner: usize,
        t: u64,
        nonce: u8,
        open: bool,
        limit: Option<u32>,
    },
    DeleteRoom {
        owner: usize,
        t: u64,
        nonce: u8,
    },
    Channel {
        author: usize,
        t: u64,
        owner: usize,
        nonce: u8,
        ch: u8,
        name: u8,
    },
    DeleteChannel {
        author: usize,
        t: u64,
        owner: usize,
        nonce: u8,
        ch: u8,
    },
    Member {
        author: usize,
        t: u64,
        owner: usize,
        nonce: u8,
        user: usize,
        state: u8,
        moderator: bool,
    },
    Log {
        author: usize,
        t: u64,
        owner: usize,
        nonce: u8,
        n: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let u = 0..USERS;
    let t = 1..40u64; // a small range, so equal HLCs (ties) happen
    let nonce = 0..2u8;
    prop_oneof![
        (u.clone(), t.clone(), any::<u8>()).prop_map(|(user, t, name)| Op::Profile {
            user,
            t,
            name
        }),
        (
            u.clone(),
            t.clone(),
            nonce.clone(),
            any::<bool>(),
            prop::option::of(1..4u32)
        )
            .prop_map(|(owner, t, nonce, open, limit)| Op::Room {
                owner,
                t,
                nonce,
                open,
                limit
            }),
        (u.clone(), t.clone(), nonce.clone()).prop_map(|(owner, t, nonce)| Op::DeleteRoom {
            owner,
            t,
            nonce
        }),
        (
            u.clone(),
            t.clone(),
            u.clone(),
            nonce.clone(),
            0..3u8,
            any::<u8>()
        )
            .prop_map(|(author, t, owner, nonce, ch, name)| Op::Channel {
                author,
                t,
                owner,
                nonce,
                ch,
                name
            }),
        (u.clone(), t.clone(), u.clone(), nonce.clone(), 0..3u8).prop_map(
            |(author, t, owner, nonce, ch)| Op::DeleteChannel {
                author,
                t,
                owner,
                nonce,
                ch
            }
        ),
        (
            u.clone(),
            t.clone(),
            u.clone(),
            nonce.clone(),
            u.clone(),
            0..5u8,
            any::<bool>()
        )
            .prop_map(
                |(author, t, owner, nonce, user, state, moderator)| Op::Member {
                    author,
                    t,
                    owner,
                    nonce,
                    user,
                    state,
                    moderator
                }
            ),
        (u.clone(), t.clone(), u, nonce, any::<u8>()).prop_map(|(author, t, owner, nonce, n)| {
            Op::Log {
                author,
                t,
                owner,
                nonce,
                n,
            }
        }),
    ]
}

fn hlc(t: u64) -> Hlc {
    Hlc::new(1_700_000_000_000 + t, 0)
}

fn room_id(keys: &[UserKey], owner: usize, nonce: u8) -> RoomId {
    RoomId::derive(&keys[owner].id(), &[nonce; 16])
}

fn build(keys: &[UserKey], op: &Op) -> SignedRecord {
    let states = [
        MemberState::Invited,
        MemberState::Joined,
        MemberState::Left,
        MemberState::Kicked,
        MemberState::Banned,
    ];
    match *op {
        Op::Profile { user, t, name } => {
            make::profile(&keys[user], hlc(t), &format!("user{name}")).unwrap()
        }
        Op::Room {
            owner,
            t,
            nonce,
            open,
            limit,
        } => {
            let settings = RoomSettings {
                join_policy: if open {
                    JoinPolicy::Open
                } else {
                    JoinPolicy::Invite
                },
                member_limit: limit,
            };
            make::room(
                &keys[owner],
                hlc(t),
                [nonce; 16],
                &format!("room {t}"),
                settings,
            )
            .unwrap()
            .1
        }
        Op::DeleteRoom { owner, t, nonce } => {
            make::delete_room(&keys[owner], hlc(t), [nonce; 16]).unwrap()
        }
        Op::Channel {
            author,
            t,
            owner,
            nonce,
            ch,
            name,
        } => make::channel(
            &keys[author],
            hlc(t),
            room_id(keys, owner, nonce),
            ChannelId([ch; 16]),
            &format!("ch{name}"),
            "",
            vec![],
        )
        .unwrap(),
        Op::DeleteChannel {
            author,
            t,
            owner,
            nonce,
            ch,
        } => make::delete_channel(
            &keys[author],
            hlc(t),
            room_id(keys, owner, nonce),
            ChannelId([ch; 16]),
        )
        .unwrap(),
        Op::Member {
            author,
            t,
            owner,
            nonce,
            user,
            state,
            moderator,
        } => make::member(
            &keys[author],
            hlc(t),
            room_id(keys, owner, nonce),
            keys[user].id(),
            if moderator {
                MemberRole::Moderator
            } else {
                MemberRole::Participant
            },
            states[usize::from(state)],
        )
        .unwrap(),
        Op::Log {
            author,
            t,
            owner,
            nonce,
            n,
        } => make::log(
            &keys[author],
            hlc(t),
            room_id(keys, owner, nonce),
            &format!("log {n}"),
        )
        .unwrap(),
    }
}

fn fresh() -> Store {
    Store::in_memory(StoreConfig::default()).unwrap()
}

/// An independent model of what must be visible, from the whole set at once.
struct Model {
    /// Winning room records, by room (tombstones included).
    rooms: HashMap<RoomId, SignedRecord>,
    records: Vec<SignedRecord>,
}

impl Model {
    fn new(records: &[SignedRecord]) -> Self {
        let mut rooms: HashMap<RoomId, SignedRecord> = HashMap::new();
        for r in records {
            if matches!(r.record().body, Body::Room(_))
                || r.record().parent_room().is_none() && r.record().room().is_some()
            {
                let id = r.record().room().unwrap();
                let v = |r: &SignedRecord| Version {
                    hlc: r.record().hlc,
                    tombstone: r.record().is_tombstone(),
                    id: r.id(),
                };
                if rooms.get(&id).is_none_or(|cur| v(r).beats(&v(cur))) {
                    rooms.insert(id, r.clone());
                }
            }
        }
        Model {
            rooms,
            records: records.to_vec(),
        }
    }

    fn info(&self, room: &RoomId) -> Option<RoomInfo> {
        self.rooms.get(room).map(|w| RoomInfo {
            id: *room,
            owner: w.record().author,
            settings: match &w.record().body {
                Body::Room(r) => r.settings,
                _ => RoomSettings::default(),
            },
        })
    }

    fn valid_in_room(&self, r: &SignedRecord) -> bool {
        if rules::check_standalone(r.record()).is_err() {
            return false;
        }
        match r.record().parent_room() {
            None => true,
            Some(room) => self
                .info(&room)
                .is_some_and(|i| rules::check_in_room(r.record(), &i).is_ok()),
        }
    }

    fn visible_logs(&self) -> Vec<(RoomId, String)> {
        let mut out = Vec::new();
        for r in &self.records {
            let Body::RoomLog(l) = &r.record().body else {
                continue;
            };
            if !self.valid_in_room(r)
                || !matches!(
                    self.rooms.get(&l.room).map(|w| &w.record().body),
                    Some(Body::Room(_))
                )
            {
                continue;
            }
            let info = self.info(&l.room).unwrap();
            let history: Vec<MemberEntry> = self
                .records
                .iter()
                .filter(|m| self.valid_in_room(m))
                .filter_map(|m| match &m.record().body {
                    Body::Member(mm) if mm.room == l.room && mm.user == r.record().author => {
                        Some(MemberEntry {
                            hlc: m.record().hlc,
                            id: m.id(),
                            by_owner: m.record().author == info.owner,
                            role: mm.role,
                            state: mm.state,
                        })
                    }
                    _ => None,
                })
                .collect();
            if rules::check_log_membership(r.record(), &info, &history, &[]).is_ok() {
                out.push((l.room, r.id().to_hex()));
            }
        }
        out.sort();
        out.dedup();
        out
    }
}

fn visible_logs(store: &Store, keys: &[UserKey]) -> Vec<(RoomId, String)> {
    let mut out = Vec::new();
    for owner in 0..USERS {
        for nonce in 0..2u8 {
            let room = room_id(keys, owner, nonce);
            let page = store
                .log(&room, Hlc::ZERO, Hlc::MAX, None, 100_000)
                .unwrap();
            out.extend(page.entries.into_iter().map(|e| (room, e.id.to_hex())));
        }
    }
    out.sort();
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn any_order_and_duplication_gives_identical_state(
        ops in prop::collection::vec(op(), 1..60),
        seed in any::<u64>(),
        dup_mask in prop::collection::vec(any::<bool>(), 60),
        chunk in 1..8usize,
    ) {
        let keys = keys();
        let records: Vec<SignedRecord> = ops.iter().map(|o| build(&keys, o)).collect();

        // Order 1: as generated, one at a time.
        let a = fresh();
        for r in &records { let _ = a.apply(r.clone()); }

        // Order 2: shuffled (seeded), with duplicates, one at a time.
        let mut shuffled: Vec<SignedRecord> = records.clone();
        for (i, r) in records.iter().enumerate() {
            if dup_mask[i % dup_mask.len()] { shuffled.push(r.clone()); }
        }
        let mut state = seed | 1;
        for i in (1..shuffled.len()).rev() {
            state ^= state << 13; state ^= state >> 7; state ^= state << 17;
            shuffled.swap(i, (state % (i as u64 + 1)) as usize);
        }
        let b = fresh();
        for r in &shuffled { let _ = b.apply(r.clone()); }

        // Order 3: reversed, in batches (group commit).
        let c = fresh();
        let reversed: Vec<_> = shuffled.iter().rev().cloned().collect();
        for batch in reversed.chunks(chunk) { c.apply_batch(batch.to_vec()).unwrap(); }

        let (da, db, dc) = (a.state_dump().unwrap(), b.state_dump().unwrap(), c.state_dump().unwrap());
        prop_assert_eq!(&da, &db);
        prop_assert_eq!(&da, &dc);
        prop_assert_eq!(a.pending_len().unwrap(), b.pending_len().unwrap());

        // Nothing refused is visible: logs match the independent model,
        // and every visible channel was written by its room's owner.
        let model = Model::new(&records);
        prop_assert_eq!(visible_logs(&a, &keys), model.visible_logs());
        prop_assert_eq!(visible_logs(&b, &keys), model.visible_logs());
        for room in a.rooms().unwrap() {
            for ch in a.channels(&room.id).unwrap() {
                let rec = a.record(&ch.record).unwrap().unwrap();
                prop_assert_eq!(rec.record().author, room.owner);
            }
        }
        for r in &records {
            if !model.valid_in_room(r) {
                prop_assert!(a.record(&r.id()).unwrap().is_none(), "refused record stored: {:?}", r.record());
            }
        }
    }
}
