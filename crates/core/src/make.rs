//! Constructors that build and sign the common records in one call, for the
//! CLI, the API, tests and benchmarks. Sealed records and key grants are
//! made here too, so there is one way to seal a record and one to grant a key.

use zeroize::Zeroizing;

use crate::error::{MakeError, SignError};
use crate::hlc::Hlc;
use crate::identity::{UserId, UserKey};
use crate::record::{
    AudioSettings, Body, Channel, ChannelId, Cutoff, GRANT_PAYLOAD_LEN, KeyGrant,
    MAX_GRANT_ENVELOPES, Member, MemberRole, MemberState, Profile, ProfileRole, Record, Room,
    RoomId, RoomLog, RoomSettings, SEAL_PURPOSE_RECORDS, Sealed, SignedRecord, Target, Tombstone,
    grant_context,
};
use crate::seal::{self, LocatorSecret, RoomKey};

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

/// A cutoff by the room's owner: `user`'s log entries dated after `after`
/// and up to `hlc` are hidden. Written with a kick or ban.
pub fn cutoff(
    key: &UserKey,
    hlc: Hlc,
    room: RoomId,
    user: UserId,
    after: Hlc,
) -> Result<SignedRecord, SignError> {
    sign(key, hlc, Body::Cutoff(Cutoff { room, user, after }))
}

/// `inner` sealed with `room_key` (the room's key of the epoch to write
/// in) and signed by its author. Gives the opened view: its body is
/// `inner`, its wire bytes are the sealed record. `inner` must be a kind
/// that is sealed ([`Body::is_sealable`]) of the key's room.
pub fn sealed(
    key: &UserKey,
    hlc: Hlc,
    room_key: &RoomKey,
    inner: Body,
) -> Result<SignedRecord, MakeError> {
    let nonce = crate::identity::random_bytes::<24>().map_err(seal::SealError::from)?;
    sealed_with_nonce(key, hlc, room_key, &nonce, inner)
}

/// [`sealed`] with the nonce given: for tests and fuzzing, where the same
/// inputs must give the same bytes. A nonce must never repeat under one
/// key for real records.
pub fn sealed_with_nonce(
    key: &UserKey,
    hlc: Hlc,
    room_key: &RoomKey,
    nonce: &[u8; 24],
    inner: Body,
) -> Result<SignedRecord, MakeError> {
    let room = room_key.room();
    let epoch = room_key.epoch();
    let probe = Sealed {
        room,
        epoch,
        nonce: *nonce,
        ciphertext: Vec::new(),
    };
    crate::rules::check_sealed_content(&probe, &inner)?;
    // Encoding plain structs into a Vec cannot fail.
    let plain = Zeroizing::new(postcard::to_allocvec(&inner).expect("postcard encodes any Body"));
    let aad = seal::record_aad(&key.id().0, hlc.0, &room, epoch);
    let ciphertext = room_key.seal_with_nonce(SEAL_PURPOSE_RECORDS, nonce, &plain, &aad)?;
    let outer = sign(
        key,
        hlc,
        Body::Sealed(Sealed {
            ciphertext,
            ..probe
        }),
    )?;
    Ok(outer.into_opened(inner, epoch))
}

/// The grants of `room_key`'s epoch (and the room's locator) to each of
/// `recipients` (their user ids), by the room's owner: one record per
/// [`MAX_GRANT_ENVELOPES`] recipients, and one with no envelope when there
/// is nobody (it still announces the epoch, and its relay commitment).
pub fn grants(
    owner: &UserKey,
    hlc: Hlc,
    room_key: &RoomKey,
    locator: &LocatorSecret,
    recipients: &[UserId],
) -> Result<Vec<SignedRecord>, MakeError> {
    let room = room_key.room();
    let epoch = room_key.epoch();
    let mut payload = Zeroizing::new([0u8; GRANT_PAYLOAD_LEN]);
    payload[..32].copy_from_slice(room_key.bytes().as_ref());
    payload[32..].copy_from_slice(&locator.0);
    let context = grant_context(&room, epoch);
    let relay_commit = room_key.relay_commit();
    let chunks: Vec<&[UserId]> = if recipients.is_empty() {
        vec![&[]]
    } else {
        recipients.chunks(MAX_GRANT_ENVELOPES).collect()
    };
    chunks
        .into_iter()
        .map(|chunk| {
            let keys: Vec<[u8; 32]> = chunk.iter().map(|u| u.0).collect();
            let envelopes = seal::seal_to(&keys, payload.as_ref(), &context)?;
            Ok(sign(
                owner,
                hlc,
                Body::KeyGrant(KeyGrant {
                    room,
                    epoch,
                    relay_commit,
                    envelopes,
                }),
            )?)
        })
        .collect()
}
