//! The gate's roster read from a store, and the signed records that show
//! someone else why a user is refused.
//!
//! One implementation for every place that needs it: a node's driver builds
//! its session's [`RosterSnapshot`] from its own store at join and on every
//! change of the room ([`roster_from_store`]); the relay builds one per
//! channel from the records it was shown, applied to a small store of its
//! own ([`crate::admission`]); and a member whose gate refuses someone the
//! relay still forwards to sends the relay the records its store decided
//! that by ([`evidence_against`]).

use tincan_core::{Body, ChannelId, EntityKey, RoomId, SignedRecord, Target, UserId};
use tincan_store::{RANK_CHANNEL, RANK_MEMBER, RANK_ROOM, StorageError, Store};

use crate::gate::RosterSnapshot;

/// The roster of `channel` in `room` as `store` holds it now: the owner,
/// every user with a standing and what the channel's permissions let them
/// do. A room or channel the store does not hold (never seen, or deleted)
/// gives a [`RosterSnapshot::deleted`] roster, which admits nobody.
pub fn roster_from_store(
    store: &Store,
    room: RoomId,
    channel: ChannelId,
) -> Result<RosterSnapshot, StorageError> {
    let Some(view) = store.room(&room)? else {
        return Ok(RosterSnapshot::deleted(room, channel, UserId([0; 32])));
    };
    let Some(ch) = store.channel(&room, &channel)? else {
        return Ok(RosterSnapshot::deleted(room, channel, view.owner));
    };
    let members = store.members(&room)?;
    Ok(RosterSnapshot::from_members(
        room,
        channel,
        view.owner,
        &ch.channel.permissions,
        members.iter().map(|m| (m.user, m.membership)),
    ))
}

/// Whether a change of `entity` can change the roster of a channel of
/// `room`, or what a relay must be shown about it: the room itself, a
/// membership, a channel or a cutoff of that room, a sealed record (it may
/// open into any of those, and its room is not known until it does), or a
/// key grant (in an invite-only room a newer grant is the evidence that
/// ends a removed member's place on a relay, and it may arrive after the
/// removal itself). Logs and profiles cannot.
pub fn affects_roster(entity: &EntityKey, room: &RoomId) -> bool {
    match entity {
        EntityKey::Room(r)
        | EntityKey::Member(r, _)
        | EntityKey::Channel(r, _)
        | EntityKey::Cutoff(r, _) => r == room,
        EntityKey::Sealed(_) | EntityKey::Grant(_) => true,
        EntityKey::Profile(_) | EntityKey::Log(_) => false,
    }
}

/// Most records [`evidence_against`] returns: what one evidence message may
/// carry (`tincan_media::control::MAX_EVIDENCE_RECORDS`).
pub const MAX_EVIDENCE: usize = tincan_media::control::MAX_EVIDENCE_RECORDS;

/// The records by which `store` decides `user`'s standing in `channel` of
/// `room`, as wire bytes, parents first: the room's record in force (or its
/// deletion), every membership record of the user in force, the channel's
/// record in force (or its deletion). Applied on top of an older proof,
/// they give the relay the same answer our gate gives: a kick, a ban or a
/// leave is newer than the membership the proof showed. At most
/// [`MAX_EVIDENCE`] records; the newest memberships are kept.
///
/// An invite-only room's memberships and channels are sealed, so a relay
/// could read none of them; there the evidence is the room's record and the
/// owner's newest `KeyGrant` (the owner starts a new epoch on every kick,
/// ban or leave): the relay then refuses every older epoch's relay token,
/// which is all a removed member holds.
pub fn evidence_against(
    store: &Store,
    room: RoomId,
    channel: ChannelId,
    user: &UserId,
) -> Result<Vec<Vec<u8>>, StorageError> {
    if let Some(view) = store.room(&room)?
        && view.room.settings.join_policy == tincan_core::JoinPolicy::Invite
    {
        let mut out = Vec::new();
        out.extend(store.record(&view.record)?.map(|r| r.to_bytes()));
        out.extend(store.newest_grant(&room)?.map(|r| r.to_bytes()));
        return Ok(out);
    }
    let items = store.room_sync_items(&room)?;
    let ids: Vec<_> = items
        .iter()
        .filter(|(rank, _)| matches!(*rank, RANK_ROOM | RANK_MEMBER | RANK_CHANNEL))
        .map(|(_, id)| *id)
        .collect();
    let mut room_records = Vec::new();
    let mut members: Vec<(tincan_core::Hlc, Vec<u8>)> = Vec::new();
    let mut channel_records = Vec::new();
    for id in ids {
        let Some(record) = store.record(&id)? else {
            continue;
        };
        let r = record.record();
        match &r.body {
            Body::Room(_) => room_records.push(record.to_bytes()),
            Body::Tombstone(t) => match t.target {
                Target::Room { .. } => room_records.push(record.to_bytes()),
                Target::Channel(_, c) if c == channel => channel_records.push(record.to_bytes()),
                _ => {}
            },
            Body::Member(m) if m.user == *user => members.push((r.hlc, record.to_bytes())),
            Body::Channel(c) if c.id == channel => channel_records.push(record.to_bytes()),
            _ => {}
        }
    }
    members.sort_by_key(|(hlc, _)| *hlc);
    let room_budget = MAX_EVIDENCE.saturating_sub(room_records.len() + channel_records.len());
    let skip = members.len().saturating_sub(room_budget);
    let mut out = room_records;
    out.extend(members.into_iter().skip(skip).map(|(_, b)| b));
    out.extend(channel_records);
    out.truncate(MAX_EVIDENCE);
    Ok(out)
}

/// Orders records so that a store applying them in this order never parks
/// one for a missing parent: rooms and room deletions, memberships,
/// channels and channel deletions; anything else last.
pub fn parents_first(records: &mut [SignedRecord]) {
    records.sort_by_key(|r| {
        let rank = match &r.record().body {
            Body::Room(_) => 0,
            Body::Tombstone(t) if matches!(t.target, Target::Room { .. }) => 0,
            Body::Member(_) => 1,
            Body::Channel(_) | Body::Tombstone(_) => 2,
            _ => 3,
        };
        (rank, r.record().hlc, r.id())
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gate::{Refusal, admit_user};
    use tincan_core::permissions::default_permissions;
    use tincan_core::{Hlc, JoinPolicy, MemberRole, MemberState, RoomSettings, UserKey, make};
    use tincan_store::StoreConfig;

    #[test]
    fn the_roster_follows_the_store_and_evidence_tells_another_store_the_same() {
        let owner = UserKey::from_seed(&[1; 32]);
        let guest = UserKey::from_seed(&[2; 32]);
        let store = Store::in_memory(StoreConfig::default()).unwrap();
        let settings = RoomSettings {
            join_policy: JoinPolicy::Open,
            member_limit: None,
        };
        let (room, rec) = make::room(&owner, Hlc::new(10, 0), [7; 16], "LAN", settings).unwrap();
        store.apply(rec).unwrap();
        let channel = ChannelId([9; 16]);
        store
            .apply(
                make::channel(
                    &owner,
                    Hlc::new(11, 0),
                    room,
                    channel,
                    "General",
                    "",
                    default_permissions(),
                )
                .unwrap(),
            )
            .unwrap();
        store
            .apply(make::join(&guest, Hlc::new(12, 0), room).unwrap())
            .unwrap();
        let roster = roster_from_store(&store, room, channel).unwrap();
        assert!(admit_user(&guest.id(), &roster).is_ok());
        // What a relay saw at the guest's join.
        let proof = store
            .membership_proof(&room, &guest.id(), &channel, 16)
            .unwrap();
        store
            .apply(
                make::member(
                    &owner,
                    Hlc::new(13, 0),
                    room,
                    guest.id(),
                    MemberRole::Participant,
                    MemberState::Kicked,
                )
                .unwrap(),
            )
            .unwrap();
        let roster = roster_from_store(&store, room, channel).unwrap();
        assert_eq!(admit_user(&guest.id(), &roster), Err(Refusal::NotMember));
        let evidence = evidence_against(&store, room, channel, &guest.id()).unwrap();
        // The relay's store: the old proof, then the evidence.
        let relay = Store::in_memory(StoreConfig::default()).unwrap();
        let mut records: Vec<SignedRecord> = proof
            .iter()
            .map(|item| item.record().expect("an open room's proof is records"))
            .chain(evidence.iter().map(Vec::as_slice))
            .map(|b| SignedRecord::from_bytes(b).unwrap())
            .collect();
        parents_first(&mut records);
        for r in relay.apply_batch(records).unwrap() {
            r.unwrap();
        }
        let at_relay = roster_from_store(&relay, room, channel).unwrap();
        assert_eq!(admit_user(&guest.id(), &at_relay), Err(Refusal::NotMember));
        assert!(admit_user(&owner.id(), &at_relay).is_ok());
        // The channel deleted: a deleted roster, and the deletion is
        // evidence too.
        store
            .apply(make::delete_channel(&owner, Hlc::new(14, 0), room, channel).unwrap())
            .unwrap();
        let roster = roster_from_store(&store, room, channel).unwrap();
        assert!(roster.deleted);
        assert_eq!(admit_user(&owner.id(), &roster), Err(Refusal::Deleted));
        let evidence = evidence_against(&store, room, channel, &owner.id()).unwrap();
        assert!(evidence.iter().any(|b| matches!(
            SignedRecord::from_bytes(b).unwrap().record().body,
            Body::Tombstone(_)
        )));
        assert!(affects_roster(&EntityKey::Member(room, guest.id()), &room));
        assert!(!affects_roster(
            &EntityKey::Member(RoomId([0; 16]), guest.id()),
            &room
        ));
    }
}
