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
pub enum Waiting {
    /// Its room.
    Room(RoomId),
    /// A Member record that makes its author a member of the room.
    Membership(RoomId, UserId),
}

impl Waiting {
    pub(crate) fn key(&self) -> Vec<u8> {
        match self {
            Waiting::Room(r) => cat(&[&[1], &r.0]),
            Waiting::Membership(r, u) => cat(&[&[2], &r.0, &u.0]),
        }
    }
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
