//! Constructors that build and sign the common records in one call, for the
//! CLI, the API, tests and benchmarks.

use crate::error::SignError;
use crate::hlc::Hlc;
use crate::identity::{UserId, UserKey};
use crate::record::{
    AudioSettings, Body, Channel, ChannelId, Member, MemberRole, MemberState, Profile, ProfileRole,
    Record, Room, RoomId, RoomLog, RoomSettings, SignedRecord, Target, Tombstone,
};

fn sign(key: &UserKey, hlc: Hlc, body: Body) -> Result<SignedRecord, SignError> {
    Record {
        author: key.id(),
        hlc,
        body,
    }
    .sign(key)
}

/// The user's profile.
pub fn profile(key: &UserKey, hlc: Hlc, username: &str) -> Result<SignedRecord, SignError> {
    sign(
        key,
        hlc,
        Body::Profile(Profile {
            user: key.id(),
            username: username.to_owned(),
            role: ProfileRole::Player,
            audio: AudioSettings::default(),
        }),
    )
}

/// A room owned by `key`; `nonce` picks which of the owner's rooms.
pub fn room(
    key: &UserKey,
    hlc: Hlc,
    nonce: [u8; 16],
    title: &str,
    settings: RoomSettings,
) -> Result<(RoomId, SignedRecord), SignError> {
    let rec = sign(
        key,
        hlc,
        Body::Room(Room {
            nonce,
            title: title.to_owned(),
            settings,
        }),
    )?;
    Ok((RoomId::derive(&key.id(), &nonce), rec))
}

/// A channel of `room`.
pub fn channel(
    key: &UserKey,
    hlc: Hlc,
    room: RoomId,
    id: ChannelId,
    name: &str,
    description: &str,
    permissions: Vec<String>,
) -> Result<SignedRecord, SignError> {
    sign(
        key,
        hlc,
        Body::Channel(Channel {
            room,
            id,
            name: name.to_owned(),
            description: description.to_owned(),
            permissions,
        }),
    )
}

/// A statement about `user`'s membership of `room`.
pub fn member(
    key: &UserKey,
    hlc: Hlc,
    room: RoomId,
    user: UserId,
    role: MemberRole,
    state: MemberState,
) -> Result<SignedRecord, SignError> {
    sign(
        key,
        hlc,
        Body::Member(Member {
            room,
            user,
            role,
            state,
        }),
    )
}

/// The author joins `room` (or asks to, if it is invite-only).
pub fn join(key: &UserKey, hlc: Hlc, room: RoomId) -> Result<SignedRecord, SignError> {
    member(
        key,
        hlc,
        room,
        key.id(),
        MemberRole::Participant,
        MemberState::Joined,
    )
}

/// A log entry by the author in `room`.
pub fn log(key: &UserKey, hlc: Hlc, room: RoomId, action: &str) -> Result<SignedRecord, SignError> {
    sign(
        key,
        hlc,
        Body::RoomLog(RoomLog {
            room,
            user: key.id(),
            action: action.to_owned(),
        }),
    )
}

/// Deletes a channel.
pub fn delete_channel(
    key: &UserKey,
    hlc: Hlc,
    room: RoomId,
    channel: ChannelId,
) -> Result<SignedRecord, SignError> {
    sign(
        key,
        hlc,
        Body::Tombstone(Tombstone {
            target: Target::Channel(room, channel),
        }),
    )
}

/// Deletes the author's room made with `nonce`.
pub fn delete_room(key: &UserKey, hlc: Hlc, nonce: [u8; 16]) -> Result<SignedRecord, SignError> {
    sign(
        key,
        hlc,
        Body::Tombstone(Tombstone {
            target: Target::Room { nonce },
        }),
    )
}
