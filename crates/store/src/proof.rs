//! Membership proofs: the few signed records from this node's store that
//! let someone who has never seen the room (a community voice relay) check
//! that a user is a member of it and that a channel exists in it.
//!
//! [`Store::membership_proof`] picks them; the checker applies them to an
//! empty store ([`Store::in_memory`]) and asks [`Store::membership`] and
//! [`Store::channel`], the very rules every node runs. The proof holds:
//! - the room's record in force (it names the owner and the join policy);
//! - the channel's record in force;
//! - for a user other than the owner, the tail of their membership history
//!   that decides their state: from the owner's last statement about them
//!   (an admission resets whatever came before) to the end, or, when the
//!   owner never said anything, the user's last statement alone (a user's
//!   own join or leave does not depend on what they said before).
//!
//! A proof only shows what the prover chooses to show: a user the owner
//! kicked can still present an older proof without the kick. A relay cannot
//! know better without the whole room; receivers, which have it, enforce
//! channel permissions on every frame they get (by the speaker table the
//! relay announces).

use redb::ReadableDatabase;
use tincan_core::merge::{MemberEntry, Membership, membership};
use tincan_core::{ChannelId, RecordId, RoomId, SignedRecord, UserId};

use crate::error::StorageError;
use crate::{MEMBERS, RECORDS, Store, keys, query};

/// Why this node cannot build a membership proof.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProofError {
    /// The store failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// This node does not know the room (or it was deleted).
    #[error("room {0} is not known here (or was deleted): join it first and let it sync")]
    UnknownRoom(RoomId),
    /// The room has no such channel (or it was deleted).
    #[error("room {room} has no channel {channel} (or it was deleted): pick an existing channel")]
    UnknownChannel {
        /// The room.
        room: RoomId,
        /// The channel asked for.
        channel: ChannelId,
    },
    /// The user is not a joined member, so there is nothing to prove.
    #[error("user {user} is not a member of room {room} ({membership:?}): join the room first")]
    NotAMember {
        /// The room.
        room: RoomId,
        /// The user.
        user: UserId,
        /// Their standing as this node sees it.
        membership: Membership,
    },
    /// The records that decide the membership are more than the limit.
    #[error(
        "the membership proof needs {needed} records, over the limit of {limit}: ask the room's owner to admit you again, which shortens it"
    )]
    TooLong {
        /// Records the proof would need.
        needed: usize,
        /// The limit asked for.
        limit: usize,
    },
}

impl Store {
    /// The wire bytes of the records that prove that `user` is a member of
    /// `room` and that `channel` exists in it, at most `max_records` of them
    /// (a relay takes `tincan_media::control::MAX_PROOF_RECORDS`). Parents
    /// come first, so the checker never parks a record.
    pub fn membership_proof(
        &self,
        room: &RoomId,
        user: &UserId,
        channel: &ChannelId,
        max_records: usize,
    ) -> Result<Vec<Vec<u8>>, ProofError> {
        let view = self.room(room)?.ok_or(ProofError::UnknownRoom(*room))?;
        let channel_view = self
            .channel(room, channel)?
            .ok_or(ProofError::UnknownChannel {
                room: *room,
                channel: *channel,
            })?;
        let standing = self.membership(room, user)?;
        if !standing.is_member() {
            return Err(ProofError::NotAMember {
                room: *room,
                user: *user,
                membership: standing,
            });
        }
        let mut ids: Vec<RecordId> = vec![view.record];
        if view.owner != *user {
            let mut history = self.member_history(room, user)?;
            history.sort_by_key(|e| (e.hlc, e.id));
            let from = match history.iter().rposition(|e| e.by_owner) {
                Some(last_owner) => last_owner,
                None => history.len().saturating_sub(1),
            };
            let tail = &history[from..];
            // The tail must decide the same standing the whole history does;
            // if it ever did not, the proof would be refused, so say so here.
            if membership(view.room.settings.join_policy, tail, None)
                != membership(view.room.settings.join_policy, &history, None)
            {
                return Err(ProofError::Storage(StorageError(
                    "membership history tail disagrees with the whole history".into(),
                )));
            }
            ids.extend(tail.iter().map(|e| e.id));
        }
        ids.push(channel_view.record);
        if ids.len() > max_records {
            return Err(ProofError::TooLong {
                needed: ids.len(),
                limit: max_records,
            });
        }
        let txn = self.db.begin_read().map_err(StorageError::from)?;
        let records = txn.open_table(RECORDS).map_err(StorageError::from)?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let bytes = records
                .get(id.0.as_slice())
                .map_err(StorageError::from)?
                .ok_or_else(|| StorageError("index points at a missing record".into()))?;
            // What the store keeps is the wire form; check it decodes.
            let record: SignedRecord = query::decode_stored(bytes.value())?;
            out.push(record.to_bytes());
        }
        Ok(out)
    }

    fn member_history(
        &self,
        room: &RoomId,
        user: &UserId,
    ) -> Result<Vec<MemberEntry>, StorageError> {
        let txn = self.db.begin_read()?;
        let members = txn.open_table(MEMBERS)?;
        let prefix = keys::member_prefix(room, Some(user));
        let mut out = Vec::new();
        for row in members.range(prefix.as_slice()..)? {
            let (k, v) = row?;
            if !k.value().starts_with(&prefix) {
                break;
            }
            out.push(query::decode_member_value(k.value(), v.value())?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StoreConfig;
    use tincan_core::permissions::default_permissions;
    use tincan_core::{Hlc, JoinPolicy, MemberRole, MemberState, RoomSettings, UserKey, make};

    struct Room {
        owner: UserKey,
        id: RoomId,
        channel: ChannelId,
        store: Store,
    }

    fn room(policy: JoinPolicy) -> Room {
        let owner = UserKey::from_seed(&[1; 32]);
        let store = Store::in_memory(StoreConfig::default()).unwrap();
        let settings = RoomSettings {
            join_policy: policy,
            member_limit: None,
        };
        let (id, rec) = make::room(&owner, Hlc::new(10, 0), [7; 16], "LAN", settings).unwrap();
        store.apply(rec).unwrap();
        let channel = ChannelId([9; 16]);
        let rec = make::channel(
            &owner,
            Hlc::new(11, 0),
            id,
            channel,
            "General",
            "",
            default_permissions(),
        )
        .unwrap();
        store.apply(rec).unwrap();
        // A second channel and some noise the proof must leave out.
        let rec = make::channel(
            &owner,
            Hlc::new(12, 0),
            id,
            ChannelId([8; 16]),
            "AFK",
            "",
            default_permissions(),
        )
        .unwrap();
        store.apply(rec).unwrap();
        Room {
            owner,
            id,
            channel,
            store,
        }
    }

    /// What a relay does: an empty store, the proof, the rules.
    fn check(proof: &[Vec<u8>], room: &RoomId, user: &UserId, channel: &ChannelId) -> bool {
        let fresh = Store::in_memory(StoreConfig::default()).unwrap();
        let records = proof
            .iter()
            .map(|b| SignedRecord::from_bytes(b).unwrap())
            .collect();
        for outcome in fresh.apply_batch(records).unwrap() {
            outcome.unwrap();
        }
        assert_eq!(
            fresh.pending_len().unwrap(),
            0,
            "nothing waits for a parent"
        );
        fresh.membership(room, user).unwrap().is_member()
            && fresh.channel(room, channel).unwrap().is_some()
    }

    #[test]
    fn a_joined_member_of_an_open_room_proves_it_to_an_empty_store() {
        let r = room(JoinPolicy::Open);
        let user = UserKey::from_seed(&[2; 32]);
        let s = &r.store;
        // Joined, left, joined again: only the last statement is needed.
        for (t, state) in [
            (20, MemberState::Joined),
            (21, MemberState::Left),
            (22, MemberState::Joined),
        ] {
            let rec = make::member(
                &user,
                Hlc::new(t, 0),
                r.id,
                user.id(),
                MemberRole::Participant,
                state,
            )
            .unwrap();
            s.apply(rec).unwrap();
        }
        let proof = s
            .membership_proof(&r.id, &user.id(), &r.channel, 16)
            .unwrap();
        assert_eq!(proof.len(), 3, "room, last join, channel");
        assert!(check(&proof, &r.id, &user.id(), &r.channel));
        // The same proof says nothing about another channel.
        assert!(!check(&proof, &r.id, &user.id(), &ChannelId([8; 16])));
    }

    #[test]
    fn an_invite_only_room_needs_the_owners_admission() {
        let r = room(JoinPolicy::Invite);
        let user = UserKey::from_seed(&[2; 32]);
        let s = &r.store;
        s.apply(make::join(&user, Hlc::new(20, 0), r.id).unwrap())
            .unwrap();
        // Asked, not admitted: nothing to prove.
        assert!(matches!(
            s.membership_proof(&r.id, &user.id(), &r.channel, 16),
            Err(ProofError::NotAMember {
                membership: Membership::Requested,
                ..
            })
        ));
        s.apply(
            make::member(
                &r.owner,
                Hlc::new(21, 0),
                r.id,
                user.id(),
                MemberRole::Participant,
                MemberState::Joined,
            )
            .unwrap(),
        )
        .unwrap();
        s.apply(
            make::member(
                &user,
                Hlc::new(22, 0),
                r.id,
                user.id(),
                MemberRole::Participant,
                MemberState::Joined,
            )
            .unwrap(),
        )
        .unwrap();
        let proof = s
            .membership_proof(&r.id, &user.id(), &r.channel, 16)
            .unwrap();
        // Room, the owner's admission, the user's later join, channel.
        assert_eq!(proof.len(), 4);
        assert!(check(&proof, &r.id, &user.id(), &r.channel));
        // Without the owner's admission the same records do not prove it:
        // the proof is not padded with anything the rules do not need.
        let without_admission: Vec<Vec<u8>> = proof
            .iter()
            .filter(|b| {
                let rec = SignedRecord::from_bytes(b).unwrap();
                !(matches!(rec.record().body, tincan_core::Body::Member(_))
                    && rec.record().author == r.owner.id())
            })
            .cloned()
            .collect();
        assert_eq!(without_admission.len(), 3);
        assert!(!check(&without_admission, &r.id, &user.id(), &r.channel));
    }

    #[test]
    fn the_owner_needs_only_the_room_and_the_channel() {
        let r = room(JoinPolicy::Invite);
        let proof = r
            .store
            .membership_proof(&r.id, &r.owner.id(), &r.channel, 16)
            .unwrap();
        assert_eq!(proof.len(), 2);
        assert!(check(&proof, &r.id, &r.owner.id(), &r.channel));
    }

    #[test]
    fn unknown_rooms_channels_non_members_and_the_limit_are_errors() {
        let r = room(JoinPolicy::Open);
        let user = UserKey::from_seed(&[2; 32]);
        let s = &r.store;
        assert!(matches!(
            s.membership_proof(&RoomId([0; 16]), &user.id(), &r.channel, 16),
            Err(ProofError::UnknownRoom(_))
        ));
        assert!(matches!(
            s.membership_proof(&r.id, &user.id(), &ChannelId([0; 16]), 16),
            Err(ProofError::UnknownChannel { .. })
        ));
        assert!(matches!(
            s.membership_proof(&r.id, &user.id(), &r.channel, 16),
            Err(ProofError::NotAMember {
                membership: Membership::None,
                ..
            })
        ));
        s.apply(make::join(&user, Hlc::new(20, 0), r.id).unwrap())
            .unwrap();
        let err = s
            .membership_proof(&r.id, &user.id(), &r.channel, 2)
            .unwrap_err();
        assert!(matches!(
            err,
            ProofError::TooLong {
                needed: 3,
                limit: 2
            }
        ));
        assert!(err.to_string().contains("over the limit"), "{err}");
    }
}
