//! Property tests of the merge: any order and any duplication of a set of
//! records gives byte-identical store state, and what queries show is what
//! an independent model of the rules computes from the whole set at once.
//!
//! The set mixes plaintext and sealed records (some sealed under a key that
//! is not the room's), key grants and cutoffs; the store runs with small
//! caps so that every bound is hit. Each store is the view of one local
//! user (nobody, an owner, a member): what it can open depends on whom it
//! has unlocked. A record dropped at a cap is offered again, as sync does,
//! until nothing changes; the state then must not depend on the order.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::OnceLock;

use proptest::prelude::*;
use tincan_core::make;
use tincan_core::merge::{MemberEntry, Membership, Version, membership};
use tincan_core::rules::{self, CutoffWindow, RoomInfo};
use tincan_core::seal::{RoomChain, RoomKey};
use tincan_core::{
    Body, ChannelId, Hlc, JoinPolicy, MemberRole, MemberState, Record, RecordId, RoomId,
    RoomSettings, SignedRecord, Target, UserId, UserKey,
};
use tincan_store::{Store, StoreConfig};

const USERS: usize = 4;
const EPOCHS: u32 = 3;

fn keys() -> &'static [UserKey] {
    static KEYS: OnceLock<Vec<UserKey>> = OnceLock::new();
    KEYS.get_or_init(|| {
        (0..USERS as u8)
            .map(|i| UserKey::from_seed(&[i + 1; 32]))
            .collect()
    })
}

/// The epoch keys of every room the ops can name (deriving one walks the
/// whole chain: done once).
fn room_keys() -> &'static HashMap<(usize, u8), Vec<RoomKey>> {
    static KEYS: OnceLock<HashMap<(usize, u8), Vec<RoomKey>>> = OnceLock::new();
    KEYS.get_or_init(|| {
        let mut out = HashMap::new();
        for owner in 0..ROOM_OWNERS {
            for nonce in 0..2u8 {
                let chain = RoomChain::derive(&keys()[owner], &room_id(owner, nonce));
                let top = chain.epoch_key(EPOCHS - 1).unwrap();
                out.insert(
                    (owner, nonce),
                    (0..EPOCHS).map(|e| top.older(e).unwrap()).collect(),
                );
            }
        }
        out
    })
}

fn config() -> StoreConfig {
    StoreConfig {
        max_self_member_records: 1,
        max_join_requests: 1,
        max_waiting_logs: 1,
        max_waiting_logs_invited: 2,
        max_sealed_per_author: 2,
        ..StoreConfig::default()
    }
}

/// One operation of a scenario; indexes pick users, rooms and channels.
#[derive(Clone, Debug, Hash)]
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
    Cutoff {
        author: usize,
        t: u64,
        owner: usize,
        nonce: u8,
        user: usize,
        after: u64,
    },
    Grant {
        author: usize,
        t: u64,
        owner: usize,
        nonce: u8,
        epoch: u32,
        to: u8,
    },
    /// `inner` (a Member, Channel, channel delete, Log or Cutoff) sealed
    /// under its room's key of `epoch`, or under a key that is not the
    /// room's (`garbage`).
    Sealed {
        inner: Box<Op>,
        epoch: u32,
        garbage: bool,
    },
}

/// Rooms are owned by the first two users, so that a scenario names few
/// rooms and most of its records land in one that exists.
const ROOM_OWNERS: usize = 2;

fn plain_op(sealable_only: bool) -> BoxedStrategy<Op> {
    let u = 0..USERS;
    let o = 0..ROOM_OWNERS;
    let t = 1..40u64; // a small range, so equal HLCs (ties) happen
    let nonce = 0..2u8;
    let channel = (
        u.clone(),
        t.clone(),
        o.clone(),
        nonce.clone(),
        0..3u8,
        any::<u8>(),
    )
        .prop_map(|(author, t, owner, nonce, ch, name)| Op::Channel {
            author,
            t,
            owner,
            nonce,
            ch,
            name,
        });
    let delete_channel = (u.clone(), t.clone(), o.clone(), nonce.clone(), 0..3u8).prop_map(
        |(author, t, owner, nonce, ch)| Op::DeleteChannel {
            author,
            t,
            owner,
            nonce,
            ch,
        },
    );
    // Half of them a user's own join or leave (which the caps bound).
    let member = (
        u.clone(),
        t.clone(),
        o.clone(),
        nonce.clone(),
        u.clone(),
        0..5u8,
        any::<bool>(),
        prop::bool::weighted(0.5),
    )
        .prop_map(
            |(author, t, owner, nonce, user, state, moderator, own)| Op::Member {
                author: if own { user } else { author },
                t,
                owner,
                nonce,
                user,
                state: if own { 1 + state % 2 } else { state },
                moderator: moderator && !own,
            },
        );
    let log = (u.clone(), t.clone(), o.clone(), nonce.clone(), any::<u8>()).prop_map(
        |(author, t, owner, nonce, n)| Op::Log {
            author,
            t,
            owner,
            nonce,
            n,
        },
    );
    // Mostly by the owner (a cutoff by anyone else is refused).
    let cutoff = (
        prop::bool::weighted(0.2),
        t.clone(),
        o.clone(),
        nonce.clone(),
        u.clone(),
        0..40u64,
    )
        .prop_map(|(forged, t, owner, nonce, user, after)| Op::Cutoff {
            author: if forged { owner + 1 } else { owner },
            // About a guest (who can be a member), and dated late enough
            // to have a window.
            t: t.max(20),
            owner,
            nonce,
            user: ROOM_OWNERS + user % (USERS - ROOM_OWNERS),
            after,
        });
    if sealable_only {
        return prop_oneof![
            1 => channel,
            1 => delete_channel,
            3 => member,
            3 => log,
            2 => cutoff
        ]
        .boxed();
    }
    let profile = (u.clone(), t.clone(), any::<u8>()).prop_map(|(user, t, name)| Op::Profile {
        user,
        t,
        name,
    });
    let room = (
        o.clone(),
        t.clone(),
        nonce.clone(),
        any::<bool>(),
        prop::option::of(1..4u32),
    )
        .prop_map(|(owner, t, nonce, open, limit)| Op::Room {
            owner,
            t,
            nonce,
            open,
            limit,
        });
    let delete_room = (o.clone(), t.clone(), nonce.clone())
        .prop_map(|(owner, t, nonce)| Op::DeleteRoom { owner, t, nonce });
    // Mostly by the owner (a grant by anyone else is refused).
    let grant = (
        prop::bool::weighted(0.2),
        t.clone(),
        o,
        nonce,
        0..EPOCHS,
        any::<u8>(),
    )
        .prop_map(|(forged, t, owner, nonce, epoch, to)| Op::Grant {
            author: if forged { owner + 1 } else { owner },
            t,
            owner,
            nonce,
            epoch,
            to,
        });
    prop_oneof![
        2 => profile,
        2 => room,
        1 => delete_room,
        2 => channel,
        1 => delete_channel,
        5 => member,
        5 => log,
        3 => cutoff,
        3 => grant,
    ]
    .boxed()
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => plain_op(false),
        2 => (plain_op(true), 0..EPOCHS, prop::bool::weighted(0.15)).prop_map(
            |(inner, epoch, garbage)| Op::Sealed {
                inner: Box::new(inner),
                epoch,
                garbage
            }
        ),
    ]
}

/// The rooms every scenario starts from (in any order with the rest).
fn base_rooms() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec((any::<bool>(), prop::option::of(1..4u32)), ROOM_OWNERS).prop_map(|v| {
        v.into_iter()
            .enumerate()
            .map(|(owner, (open, limit))| Op::Room {
                owner,
                t: 1,
                nonce: 0,
                open,
                limit,
            })
            .collect()
    })
}

fn hlc(t: u64) -> Hlc {
    Hlc::new(1_700_000_000_000 + t, 0)
}

fn room_id(owner: usize, nonce: u8) -> RoomId {
    RoomId::derive(&keys()[owner].id(), &[nonce; 16])
}

/// A record as built, with what the model needs to know of it.
#[derive(Clone, Debug)]
struct Built {
    /// As a peer receives it.
    wire: SignedRecord,
    /// For a sealed record: its room's (owner, nonce), epoch, whether its
    /// key was the room's, and what it holds.
    sealed: Option<((usize, u8), u32, bool, Record)>,
    /// For a grant: whom it is for.
    grant_to: Vec<UserId>,
}

fn nonce_of(op: &Op) -> [u8; 24] {
    let mut out = [0u8; 24];
    for (i, chunk) in out.chunks_mut(8).enumerate() {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (op, i).hash(&mut h);
        chunk.copy_from_slice(&h.finish().to_be_bytes());
    }
    out
}

/// (author, t, room (owner, nonce)) of an op that has them.
fn author_t_room(op: &Op) -> (usize, u64, (usize, u8)) {
    match *op {
        Op::Channel {
            author,
            t,
            owner,
            nonce,
            ..
        }
        | Op::DeleteChannel {
            author,
            t,
            owner,
            nonce,
            ..
        }
        | Op::Member {
            author,
            t,
            owner,
            nonce,
            ..
        }
        | Op::Log {
            author,
            t,
            owner,
            nonce,
            ..
        }
        | Op::Cutoff {
            author,
            t,
            owner,
            nonce,
            ..
        } => (author, t, (owner, nonce)),
        _ => unreachable!("not a sealable op"),
    }
}

fn build(op: &Op) -> Built {
    let keys = keys();
    let states = [
        MemberState::Invited,
        MemberState::Joined,
        MemberState::Left,
        MemberState::Kicked,
        MemberState::Banned,
    ];
    let plain = |wire| Built {
        wire,
        sealed: None,
        grant_to: Vec::new(),
    };
    match op {
        Op::Profile { user, t, name } => {
            plain(make::profile(&keys[*user], hlc(*t), &format!("user{name}")).unwrap())
        }
        Op::Room {
            owner,
            t,
            nonce,
            open,
            limit,
        } => {
            let settings = RoomSettings {
                join_policy: if *open {
                    JoinPolicy::Open
                } else {
                    JoinPolicy::Invite
                },
                member_limit: *limit,
            };
            plain(
                make::room(
                    &keys[*owner],
                    hlc(*t),
                    [*nonce; 16],
                    &format!("room {t}"),
                    settings,
                )
                .unwrap()
                .1,
            )
        }
        Op::DeleteRoom { owner, t, nonce } => {
            plain(make::delete_room(&keys[*owner], hlc(*t), [*nonce; 16]).unwrap())
        }
        Op::Channel {
            author,
            t,
            owner,
            nonce,
            ch,
            name,
        } => plain(
            make::channel(
                &keys[*author],
                hlc(*t),
                room_id(*owner, *nonce),
                ChannelId([*ch; 16]),
                &format!("ch{name}"),
                "",
                vec![],
            )
            .unwrap(),
        ),
        Op::DeleteChannel {
            author,
            t,
            owner,
            nonce,
            ch,
        } => plain(
            make::delete_channel(
                &keys[*author],
                hlc(*t),
                room_id(*owner, *nonce),
                ChannelId([*ch; 16]),
            )
            .unwrap(),
        ),
        Op::Member {
            author,
            t,
            owner,
            nonce,
            user,
            state,
            moderator,
        } => plain(
            make::member(
                &keys[*author],
                hlc(*t),
                room_id(*owner, *nonce),
                keys[*user].id(),
                if *moderator {
                    MemberRole::Moderator
                } else {
                    MemberRole::Participant
                },
                states[usize::from(*state)],
            )
            .unwrap(),
        ),
        Op::Log {
            author,
            t,
            owner,
            nonce,
            n,
        } => plain(
            make::log(
                &keys[*author],
                hlc(*t),
                room_id(*owner, *nonce),
                &format!("log {n}"),
            )
            .unwrap(),
        ),
        Op::Cutoff {
            author,
            t,
            owner,
            nonce,
            user,
            after,
        } => plain(
            make::cutoff(
                &keys[*author],
                hlc(*t),
                room_id(*owner, *nonce),
                keys[*user].id(),
                hlc(*after),
            )
            .unwrap(),
        ),
        Op::Grant {
            author,
            t,
            owner,
            nonce,
            epoch,
            to,
        } => {
            let key = &room_keys()[&(*owner, *nonce)][*epoch as usize];
            let chain_locator = RoomChain::derive(&keys[*owner], &room_id(*owner, *nonce));
            let to: Vec<UserId> = (0..USERS)
                .filter(|i| to & (1 << i) != 0)
                .map(|i| keys[i].id())
                .collect();
            let mut grants =
                make::grants(&keys[*author], hlc(*t), key, &chain_locator.locator(), &to).unwrap();
            Built {
                wire: grants.remove(0),
                sealed: None,
                grant_to: to,
            }
        }
        Op::Sealed {
            inner,
            epoch,
            garbage,
        } => {
            let (author, t, room) = author_t_room(inner);
            let inner_rec = build(inner).wire.record().clone();
            let key = if *garbage {
                RoomKey::from_bytes(room_id(room.0, room.1), *epoch, [0x99; 32]).unwrap()
            } else {
                room_keys()[&room][*epoch as usize].clone()
            };
            let wire = make::sealed_with_nonce(
                &keys[author],
                hlc(t),
                &key,
                &nonce_of(op),
                inner_rec.body.clone(),
            )
            .unwrap()
            .sealed_form()
            .unwrap();
            Built {
                wire,
                sealed: Some((room, *epoch, *garbage, inner_rec)),
                grant_to: Vec::new(),
            }
        }
    }
}

/// A store as `unlocked` (a user index, or nobody) sees things.
fn fresh(unlocked: Option<usize>) -> Store {
    let s = Store::in_memory(config()).unwrap();
    if let Some(u) = unlocked {
        s.unlock_user(&keys()[u]).unwrap();
    }
    s
}

/// Offers `records` (in `batch`-sized transactions) until the store stops
/// changing, as sync offers again what a cap dropped.
fn offer_until_settled(store: &Store, records: &[SignedRecord], batch: usize) -> Vec<u8> {
    let mut dump = store.state_dump().unwrap();
    for _ in 0..10 {
        for chunk in records.chunks(batch.max(1)) {
            store.apply_batch(chunk.to_vec()).unwrap();
        }
        let now = store.state_dump().unwrap();
        if now == dump {
            return now;
        }
        dump = now;
    }
    panic!("the store did not settle in 10 passes");
}

/// An independent model of what must be visible, from the whole set at once.
struct Model {
    /// Winning room records, by room (tombstones included).
    rooms: HashMap<RoomId, SignedRecord>,
    /// Every record, as this store can read it: plaintext, opened, or
    /// ciphertext it cannot open (`None` body: refused).
    effective: Vec<Effective>,
    cfg: StoreConfig,
}

#[derive(Clone, Debug)]
enum Effective {
    /// Readable (plaintext, or sealed and opened), with its id.
    Plain(Record, RecordId),
    /// Sealed, and this store holds no key for its epoch.
    Cipher {
        room: RoomId,
        author: UserId,
        hlc: Hlc,
        id: RecordId,
    },
    /// Sealed under a key that is not the room's, and this store can tell.
    Refused,
}

impl Model {
    fn new(built: &[Built], unlocked: Option<usize>) -> Self {
        let mut rooms: HashMap<RoomId, SignedRecord> = HashMap::new();
        for b in built {
            let r = &b.wire;
            if r.record().parent_room().is_none()
                && let Some(id) = r.record().room()
            {
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
        let cfg = config();
        let mut m = Model {
            rooms,
            effective: Vec::new(),
            cfg,
        };
        // The newest epoch this store holds per room: an unlocked owner has
        // every epoch up to the newest granted (0 before any); a member the
        // newest granted to them.
        let mut held: HashMap<RoomId, u32> = HashMap::new();
        for b in built {
            let Body::KeyGrant(g) = &b.wire.record().body else {
                continue;
            };
            if !m.valid_in_room(b.wire.record()) {
                continue;
            }
            let me = unlocked.map(|u| keys()[u].id());
            let owner = m.info(&g.room).map(|i| i.owner);
            if me.is_some() && (me == owner || b.grant_to.contains(&me.unwrap())) {
                let e = held.entry(g.room).or_insert(g.epoch);
                *e = (*e).max(g.epoch);
            }
        }
        if let Some(u) = unlocked {
            for (id, w) in &m.rooms {
                if w.record().author == keys()[u].id() {
                    held.entry(*id).or_insert(0);
                }
            }
        }
        for b in built {
            let e = match &b.sealed {
                None => Effective::Plain(b.wire.record().clone(), b.wire.id()),
                Some((room, epoch, garbage, inner)) => {
                    let room = room_id(room.0, room.1);
                    match held.get(&room) {
                        Some(h) if h >= epoch && *garbage => Effective::Refused,
                        Some(h) if h >= epoch => Effective::Plain(inner.clone(), b.wire.id()),
                        _ => Effective::Cipher {
                            room,
                            author: b.wire.record().author,
                            hlc: b.wire.record().hlc,
                            id: b.wire.id(),
                        },
                    }
                }
            };
            m.effective.push(e);
        }
        m
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

    fn deleted(&self, room: &RoomId) -> bool {
        !matches!(
            self.rooms.get(room).map(|w| &w.record().body),
            Some(Body::Room(_))
        )
    }

    fn valid_in_room(&self, r: &Record) -> bool {
        if rules::check_standalone(r).is_err() {
            return false;
        }
        match r.parent_room() {
            None => true,
            Some(room) => self
                .info(&room)
                .is_some_and(|i| rules::check_in_room(r, &i).is_ok()),
        }
    }

    fn plain(&self) -> impl Iterator<Item = (&Record, RecordId)> {
        self.effective.iter().filter_map(|e| match e {
            Effective::Plain(r, id) if self.valid_in_room(r) => Some((r, *id)),
            _ => None,
        })
    }

    /// The Member records kept per (room, user), after both caps.
    fn histories(&self) -> HashMap<(RoomId, UserId), Vec<MemberEntry>> {
        let mut all: HashMap<(RoomId, UserId), Vec<MemberEntry>> = HashMap::new();
        for (r, id) in self.plain() {
            let Body::Member(m) = &r.body else { continue };
            let info = self.info(&m.room).unwrap();
            all.entry((m.room, m.user)).or_default().push(MemberEntry {
                hlc: r.hlc,
                id,
                by_owner: r.author == info.owner,
                role: m.role,
                state: m.state,
            });
        }
        // Own records: the newest few per (room, user).
        for entries in all.values_mut() {
            entries.sort_by_key(|e| std::cmp::Reverse((e.hlc, e.id)));
            let mut own = 0;
            entries.retain(|e| {
                if e.by_owner {
                    return true;
                }
                own += 1;
                own <= self.cfg.max_self_member_records
            });
        }
        // Join requests: in an invite-only room, the users the owner never
        // spoke of, ranked by their newest request; the newest few kept.
        type Newest = (Hlc, RecordId);
        let mut requests: HashMap<RoomId, Vec<(Newest, UserId)>> = HashMap::new();
        for ((room, user), entries) in &all {
            if entries.iter().any(|e| e.by_owner) {
                continue;
            }
            if let Some(newest) = entries.iter().map(|e| (e.hlc, e.id)).max() {
                requests.entry(*room).or_default().push((newest, *user));
            }
        }
        for (room, mut reqs) in requests {
            if self.info(&room).unwrap().settings.join_policy != JoinPolicy::Invite {
                continue;
            }
            reqs.sort_by(|a, b| b.cmp(a));
            for (_, user) in reqs.into_iter().skip(self.cfg.max_join_requests) {
                all.remove(&(room, user));
            }
        }
        all
    }

    fn cutoffs(&self) -> HashMap<(RoomId, UserId), Vec<CutoffWindow>> {
        let mut out: HashMap<(RoomId, UserId), Vec<CutoffWindow>> = HashMap::new();
        for (r, _) in self.plain() {
            if let Body::Cutoff(c) = &r.body {
                out.entry((c.room, c.user)).or_default().push(CutoffWindow {
                    after: c.after,
                    at: r.hlc,
                });
            }
        }
        out
    }

    fn visible_logs(&self) -> Vec<(RoomId, String)> {
        let histories = self.histories();
        let cutoffs = self.cutoffs();
        let mut out = Vec::new();
        for (r, id) in self.plain() {
            let Body::RoomLog(l) = &r.body else { continue };
            if self.deleted(&l.room) {
                continue;
            }
            let info = self.info(&l.room).unwrap();
            let key = (l.room, r.author);
            let h = histories.get(&key).map(Vec::as_slice).unwrap_or_default();
            let c = cutoffs.get(&key).map(Vec::as_slice).unwrap_or_default();
            if rules::check_log_author(&r.author, r.hlc, &info, h, c).is_ok() {
                out.push((l.room, id.to_hex()));
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// Visible channels: (room, channel id, name).
    fn channels(&self) -> Vec<(RoomId, ChannelId, String)> {
        let mut winners: HashMap<(RoomId, ChannelId), (Version, Option<String>)> = HashMap::new();
        for (r, id) in self.plain() {
            let (key, name) = match &r.body {
                Body::Channel(c) => ((c.room, c.id), Some(c.name.clone())),
                Body::Tombstone(t) => match t.target {
                    Target::Channel(room, ch) => ((room, ch), None),
                    Target::Room { .. } => continue,
                },
                _ => continue,
            };
            let v = Version {
                hlc: r.hlc,
                tombstone: name.is_none(),
                id,
            };
            if winners.get(&key).is_none_or(|(cur, _)| v.beats(cur)) {
                winners.insert(key, (v, name));
            }
        }
        let mut out: Vec<_> = winners
            .into_iter()
            .filter(|((room, _), _)| !self.deleted(room))
            .filter_map(|((room, ch), (_, name))| name.map(|n| (room, ch, n)))
            .collect();
        out.sort();
        out
    }

    /// Effective membership of each user with a standing, as the store's
    /// `members` shows it (member limit applied in order of last change).
    fn memberships(&self) -> Vec<(RoomId, UserId, Membership)> {
        let mut by_room: HashMap<RoomId, Vec<(UserId, Vec<MemberEntry>)>> = HashMap::new();
        for ((room, user), entries) in self.histories() {
            by_room.entry(room).or_default().push((user, entries));
        }
        let mut out = Vec::new();
        for (room, users) in by_room {
            if self.deleted(&room) {
                continue;
            }
            let info = self.info(&room).unwrap();
            let mut rows: Vec<(Hlc, UserId, Membership)> = users
                .into_iter()
                .map(|(u, es)| {
                    let latest = es.iter().map(|e| e.hlc).max().unwrap_or(Hlc::ZERO);
                    (latest, u, membership(info.settings.join_policy, &es, None))
                })
                .collect();
            if let Some(limit) = info.settings.member_limit {
                rows.sort_by_key(|(t, u, _)| (*t, *u));
                let mut joined = 1u32;
                for (_, _, m) in rows.iter_mut() {
                    if m.is_member() {
                        if joined >= limit {
                            *m = Membership::Requested;
                        } else {
                            joined += 1;
                        }
                    }
                }
            }
            out.extend(rows.into_iter().map(|(_, u, m)| (room, u, m)));
        }
        out.sort_by_key(|(r, u, _)| (*r, *u));
        out
    }

    /// Ciphertext kept: the newest few per (room, author), of rooms known.
    fn ciphertext(&self) -> Vec<RecordId> {
        let mut by: HashMap<(RoomId, UserId), Vec<(Hlc, RecordId)>> = HashMap::new();
        for e in &self.effective {
            if let Effective::Cipher {
                room,
                author,
                hlc,
                id,
            } = e
                && self.info(room).is_some()
            {
                by.entry((*room, *author)).or_default().push((*hlc, *id));
            }
        }
        let mut out = Vec::new();
        for (_, mut v) in by {
            v.sort();
            v.dedup();
            let keep = v.len().saturating_sub(self.cfg.max_sealed_per_author);
            out.extend(v.into_iter().skip(keep).map(|(_, id)| id));
        }
        out.sort();
        out
    }
}

fn store_logs(store: &Store) -> Vec<(RoomId, String)> {
    let mut out = Vec::new();
    for owner in 0..ROOM_OWNERS {
        for nonce in 0..2u8 {
            let room = room_id(owner, nonce);
            let page = store
                .log(&room, Hlc::ZERO, Hlc::MAX, None, 100_000)
                .unwrap();
            out.extend(page.entries.into_iter().map(|e| (room, e.id.to_hex())));
        }
    }
    out.sort();
    out
}

fn store_channels(store: &Store) -> Vec<(RoomId, ChannelId, String)> {
    let mut out = Vec::new();
    for room in store.rooms().unwrap() {
        for ch in store.channels(&room.id).unwrap() {
            out.push((room.id, ch.channel.id, ch.channel.name));
        }
    }
    out.sort();
    out
}

fn store_memberships(store: &Store) -> Vec<(RoomId, UserId, Membership)> {
    let mut out = Vec::new();
    for room in store.rooms().unwrap() {
        for m in store.members(&room.id).unwrap() {
            if !m.is_owner {
                out.push((room.id, m.user, m.membership));
            }
        }
    }
    out.sort_by_key(|(r, u, _)| (*r, *u));
    out
}

fn store_ciphertext(store: &Store) -> Vec<RecordId> {
    let mut out: Vec<RecordId> = store
        .records()
        .unwrap()
        .into_iter()
        .filter(|r| matches!(r.record().body, Body::Sealed(_)))
        .map(|r| r.id())
        .collect();
    out.sort();
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 160, ..ProptestConfig::default() })]

    #[test]
    fn any_order_and_duplication_gives_identical_state(
        base in base_rooms(),
        more in prop::collection::vec(op(), 1..60),
        unlocked in prop::option::of(0..3usize),
        seed in any::<u64>(),
        dup_mask in prop::collection::vec(any::<bool>(), 60),
        chunk in 1..8usize,
    ) {
        let ops: Vec<Op> = base.into_iter().chain(more).collect();
        let built: Vec<Built> = ops.iter().map(build).collect();
        let records: Vec<SignedRecord> = built.iter().map(|b| b.wire.clone()).collect();

        // Order 1: as generated, one at a time.
        let a = fresh(unlocked);
        let da = offer_until_settled(&a, &records, 1);

        // Order 2: shuffled (seeded), with duplicates, one at a time; the
        // user unlocked only after the records arrived.
        let mut shuffled: Vec<SignedRecord> = records.clone();
        for (i, r) in records.iter().enumerate() {
            if dup_mask[i % dup_mask.len()] { shuffled.push(r.clone()); }
        }
        let mut state = seed | 1;
        for i in (1..shuffled.len()).rev() {
            state ^= state << 13; state ^= state >> 7; state ^= state << 17;
            shuffled.swap(i, (state % (i as u64 + 1)) as usize);
        }
        let b = fresh(None);
        for r in &shuffled { let _ = b.apply(r.clone()); }
        if let Some(u) = unlocked { b.unlock_user(&keys()[u]).unwrap(); }
        let db = offer_until_settled(&b, &shuffled, 1);

        // Order 3: reversed, in batches (group commit).
        let c = fresh(unlocked);
        let reversed: Vec<_> = shuffled.iter().rev().cloned().collect();
        let dc = offer_until_settled(&c, &reversed, chunk);

        prop_assert_eq!(&da, &db);
        prop_assert_eq!(&da, &dc);
        prop_assert_eq!(a.pending_len().unwrap(), b.pending_len().unwrap());
        prop_assert_eq!(a.pending_len().unwrap(), c.pending_len().unwrap());

        // What queries show is what the model says, for this store's keys.
        let model = Model::new(&built, unlocked);
        prop_assert_eq!(store_logs(&a), model.visible_logs());
        prop_assert_eq!(store_channels(&a), model.channels());
        prop_assert_eq!(store_memberships(&a), model.memberships());
        prop_assert_eq!(store_ciphertext(&a), model.ciphertext());

        // The caps hold, and nothing refused is stored.
        let mut own: HashMap<(RoomId, UserId), usize> = HashMap::new();
        let mut requesters: HashMap<RoomId, HashSet<UserId>> = HashMap::new();
        for m in store_memberships(&a) {
            if m.2 == Membership::Requested {
                requesters.entry(m.0).or_default().insert(m.1);
            }
        }
        for r in a.records().unwrap() {
            if let Body::Member(m) = &r.record().body && r.record().author == m.user {
                *own.entry((m.room, m.user)).or_default() += 1;
            }
        }
        prop_assert!(own.values().all(|n| *n <= config().max_self_member_records));
        for room in a.rooms().unwrap() {
            if room.room.settings.join_policy == JoinPolicy::Invite {
                let n = a.members(&room.id).unwrap().iter()
                    .filter(|m| m.membership == Membership::Requested)
                    .count();
                // Requests, and admitted users over the member limit.
                prop_assert!(n <= config().max_join_requests + USERS, "{n}");
            }
        }
        for (b, e) in built.iter().zip(&model.effective) {
            let refused = match e {
                Effective::Plain(r, _) => !model.valid_in_room(r),
                Effective::Refused => true,
                Effective::Cipher { .. } => false,
            };
            if refused {
                prop_assert!(a.record(&b.wire.id()).unwrap().is_none(), "refused record stored: {:?}", b);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// A guest of an open room writes entries around a kick whose cutoff
    /// hides a window, joins again or not, and every order gives the same
    /// state and shows exactly what the rules allow.
    #[test]
    fn cutoffs_hide_the_same_entries_in_any_order(
        joins in prop::collection::vec(1..60u64, 1..3),
        entries in prop::collection::vec(1..60u64, 1..12),
        kick_at in 10..60u64,
        after in 0..60u64,
        sealed in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let owner = 0;
        let guest = 2;
        let mut ops: Vec<Op> = vec![Op::Room { owner, t: 1, nonce: 0, open: true, limit: None }];
        let member = |t, state| Op::Member { author: guest, t, owner, nonce: 0, user: guest, state, moderator: false };
        let mut more: Vec<Op> = joins.iter().map(|t| member(*t, 1)).collect();
        more.push(Op::Member { author: owner, t: kick_at, owner, nonce: 0, user: guest, state: 3, moderator: false });
        more.push(Op::Cutoff { author: owner, t: kick_at, owner, nonce: 0, user: guest, after: after.min(kick_at - 1) });
        more.extend(entries.iter().enumerate().map(|(i, t)| Op::Log { author: guest, t: *t, owner, nonce: 0, n: i as u8 }));
        if sealed {
            more = more.into_iter().map(|o| Op::Sealed { inner: Box::new(o), epoch: 0, garbage: false }).collect();
        }
        ops.extend(more);
        let built: Vec<Built> = ops.iter().map(build).collect();
        let records: Vec<SignedRecord> = built.iter().map(|b| b.wire.clone()).collect();
        // The owner's view: it opens what is sealed.
        let unlocked = Some(owner);
        let a = fresh(unlocked);
        let da = offer_until_settled(&a, &records, 1);
        let mut shuffled = records.clone();
        let mut state = seed | 1;
        for i in (1..shuffled.len()).rev() {
            state ^= state << 13; state ^= state >> 7; state ^= state << 17;
            shuffled.swap(i, (state % (i as u64 + 1)) as usize);
        }
        let b = fresh(unlocked);
        let db = offer_until_settled(&b, &shuffled, 1);
        let c = fresh(unlocked);
        let reversed: Vec<_> = records.iter().rev().cloned().collect();
        let dc = offer_until_settled(&c, &reversed, 3);
        prop_assert_eq!(&da, &db);
        prop_assert_eq!(&da, &dc);
        let model = Model::new(&built, unlocked);
        prop_assert_eq!(store_logs(&a), model.visible_logs());
    }
}
