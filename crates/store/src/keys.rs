//! Byte layouts of table keys. Fixed-width fields in big-endian order, so that
//! a key prefix selects a group (a room's channels, a room's log) and range
//! scans come out in time order.

use tincan_core::{ChannelId, EntityKey, Hlc, RecordId, RoomId, UserId};

pub(crate) const PROFILE: u8 = 1;
pub(crate) const ROOM: u8 = 2;
pub(crate) const CHANNEL: u8 = 3;

/// Key of a last-writer-wins entity in the `entities` table; `None` for
/// members and log entries, which have tables of their own.
pub(crate) fn entity(key: &EntityKey) -> Option<Vec<u8>> {
    Some(match key {
        EntityKey::Profile(u) => cat(&[&[PROFILE], &u.0]),
        EntityKey::Room(r) => cat(&[&[ROOM], &r.0]),
        EntityKey::Channel(r, c) => cat(&[&[CHANNEL], &r.0, &c.0]),
        EntityKey::Member(..)
        | EntityKey::Log(_)
        | EntityKey::Sealed(_)
        | EntityKey::Grant(_)
        | EntityKey::Cutoff(..) => return None,
    })
}

pub(crate) fn channel_prefix(room: &RoomId) -> Vec<u8> {
    cat(&[&[CHANNEL], &room.0])
}

pub(crate) fn member(room: &RoomId, user: &UserId, hlc: Hlc, id: &RecordId) -> Vec<u8> {
    cat(&[&room.0, &user.0, &hlc.to_be_bytes(), &id.0])
}

pub(crate) fn member_prefix(room: &RoomId, user: Option<&UserId>) -> Vec<u8> {
    match user {
        Some(u) => cat(&[&room.0, &u.0]),
        None => room.0.to_vec(),
    }
}

pub(crate) fn user_room(user: &UserId, room: &RoomId) -> Vec<u8> {
    cat(&[&user.0, &room.0])
}

pub(crate) fn log(room: &RoomId, hlc: Hlc, id: &RecordId) -> Vec<u8> {
    cat(&[&room.0, &hlc.to_be_bytes(), &id.0])
}

/// What a pending record waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Waiting {
    /// Its room.
    Room(RoomId),
    /// A Member record that makes its author a member of the room when
    /// they wrote it (at most a few wait per author and room).
    Membership(RoomId, UserId),
    /// A standing of the profile's user in a room this store holds (a
    /// Member record about them, or a room they own); a bounded number wait.
    Standing(UserId),
}

const WAIT_ROOM: u8 = 1;
const WAIT_MEMBERSHIP: u8 = 2;
const WAIT_STANDING: u8 = 3;

impl Waiting {
    pub(crate) fn key(&self) -> Vec<u8> {
        match self {
            Waiting::Room(r) => cat(&[&[WAIT_ROOM], &r.0]),
            Waiting::Membership(r, u) => cat(&[&[WAIT_MEMBERSHIP], &r.0, &u.0]),
            Waiting::Standing(u) => cat(&[&[WAIT_STANDING], &u.0]),
        }
    }
}

/// The prefix of every Membership wait key of a room.
pub(crate) fn membership_waits_of_room(room: &RoomId) -> Vec<u8> {
    cat(&[&[WAIT_MEMBERSHIP], &room.0])
}

/// Length of a Membership wait key.
pub(crate) const MEMBERSHIP_WAIT_LEN: usize = 1 + 16 + 32;

/// The group whose size is capped for entries waiting under `wait`: a
/// (room, author) for log entries, all profiles together for profiles;
/// `None` for records waiting for their room (bounded by the pending limit
/// alone).
pub(crate) fn cap_group(wait: &[u8]) -> Option<Vec<u8>> {
    match wait.first() {
        Some(&WAIT_MEMBERSHIP) => Some(wait.to_vec()),
        Some(&WAIT_STANDING) => Some(vec![WAIT_STANDING]),
        _ => None,
    }
}

/// A capped group's member, in the order that decides which are kept
/// (the newest by (HLC, id)): group | hlc | id.
pub(crate) fn pending_order(group: &[u8], hlc: Hlc, id: &RecordId) -> Vec<u8> {
    cat(&[group, &hlc.to_be_bytes(), &id.0])
}

/// Counter keys of the `counts` table.
pub(crate) fn count_waiting(group: &[u8]) -> Vec<u8> {
    cat(&[b"w", group])
}
pub(crate) fn count_unopened(room: &RoomId, author: &UserId) -> Vec<u8> {
    cat(&[b"u", &room.0, &author.0])
}
pub(crate) const COUNT_PROFILES: &[u8] = b"p";
/// Log entries of a room, and of one user in it.
pub(crate) fn count_log(room: &RoomId, user: Option<&UserId>) -> Vec<u8> {
    match user {
        None => cat(&[b"l", &room.0]),
        Some(u) => cat(&[b"lu", &room.0, &u.0]),
    }
}

/// room|user|hlc|id: log entries by author, sealed records held unopened by
/// author, cutoffs by the user they are about.
pub(crate) fn by_user(room: &RoomId, user: &UserId, hlc: Hlc, id: &RecordId) -> Vec<u8> {
    cat(&[&room.0, &user.0, &hlc.to_be_bytes(), &id.0])
}

pub(crate) fn room_user(room: &RoomId, user: &UserId) -> Vec<u8> {
    cat(&[&room.0, &user.0])
}

/// room|id
pub(crate) fn room_record(room: &RoomId, id: &RecordId) -> Vec<u8> {
    cat(&[&room.0, &id.0])
}

/// room|epoch|id
pub(crate) fn grant(room: &RoomId, epoch: u32, id: &RecordId) -> Vec<u8> {
    cat(&[&room.0, &epoch.to_be_bytes(), &id.0])
}

/// room|epoch|user
pub(crate) fn granted(room: &RoomId, epoch: u32, user: &UserId) -> Vec<u8> {
    cat(&[&room.0, &epoch.to_be_bytes(), &user.0])
}

pub(crate) fn room_epoch(room: &RoomId, epoch: u32) -> Vec<u8> {
    cat(&[&room.0, &epoch.to_be_bytes()])
}

/// room|hlc|id|user: join requests, oldest first.
pub(crate) fn request_age(room: &RoomId, hlc: Hlc, id: &RecordId, user: &UserId) -> Vec<u8> {
    cat(&[&room.0, &hlc.to_be_bytes(), &id.0, &user.0])
}

pub(crate) fn epoch(b: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(..4)?.try_into().ok()?))
}

pub(crate) fn cat(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
    for p in parts {
        out.extend_from_slice(p);
    }
    out
}

pub(crate) fn room_id(b: &[u8]) -> Option<RoomId> {
    Some(RoomId(b.get(..16)?.try_into().ok()?))
}

pub(crate) fn user_id(b: &[u8]) -> Option<UserId> {
    Some(UserId(b.get(..32)?.try_into().ok()?))
}

pub(crate) fn record_id(b: &[u8]) -> Option<RecordId> {
    Some(RecordId(b.get(..32)?.try_into().ok()?))
}

pub(crate) fn hlc(b: &[u8]) -> Option<Hlc> {
    Some(Hlc(u64::from_be_bytes(b.get(..8)?.try_into().ok()?)))
}

#[allow(dead_code)]
pub(crate) fn channel_id(b: &[u8]) -> Option<ChannelId> {
    Some(ChannelId(b.get(..16)?.try_into().ok()?))
}
