//! Membership proofs: what this node shows someone who has never seen the
//! room (a community voice relay) so that they can check that a user may
//! be in a voice channel of it. Two kinds, by the room's join policy
//! ([`tincan_core::relay_proof`]):
//!
//! **Open rooms: records.** [`Store::membership_proof`] picks the few
//! signed records; the checker applies them to an empty store
//! ([`Store::in_memory`]) and asks [`Store::membership`] and
//! [`Store::channel`], the very rules every node runs. The proof holds:
//! - the room's record in force (it names the owner and the join policy);
//! - the channel's record in force;
//! - for a user other than the owner, the tail of their membership history
//!   that decides their state: from the owner's last statement about them
//!   (an admission resets whatever came before) to the end, or, when the
//!   owner never said anything, the user's last statement alone (a user's
//!   own join or leave does not depend on what they said before).
//!
//! A records proof only shows what the prover chooses to show: a user the
//! owner kicked can still present an older proof without the kick, until a
//! member shows the relay the kick (evidence).
//!
//! **Invite-only rooms: grant and token.** Their Member and Channel records
//! are sealed, so a relay can read none of them. The proof is the room's
//! record, one of the owner's `KeyGrant` records of the newest epoch whose
//! key this store holds, and that epoch's relay token
//! (`RoomKey::relay_token`); [`check_epoch_proof`] checks the two records
//! by the rules on an empty store and the token against the grant's
//! `relay_commit`. It proves "holds the room's key of epoch e", not who is
//! a member or which channels exist: the relay cannot enforce channel
//! permissions of an invite-only room (receivers do, and frames are sealed
//! end to end). A newer grant supersedes it ([`grant_epoch_of`] reads one
//! a member sends as evidence): the owner starts a new epoch on every
//! kick, ban or leave, and a removed member has no key of it.

use redb::ReadableDatabase;
use tincan_core::merge::{MemberEntry, Membership, membership};
use tincan_core::{
    Body, ChannelId, EpochToken, JoinPolicy, ProofItem, RecordId, RoomId, SignedRecord, UserId,
};

use crate::error::StorageError;
use crate::{GRANTS, MEMBERS, RECORDS, Store, StoreConfig, keys, query};

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
    /// The room is invite-only and this store holds no key of it (or no
    /// grant of the epoch of the key it holds).
    #[error(
        "this node holds no key of invite-only room {0} (or no grant of it): wait until the owner's node grants you one, or ask the owner to"
    )]
    NoKey(RoomId),
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
    /// What proves to a relay that `user` may be in `channel` of `room`,
    /// at most `max_records` items (a relay takes
    /// `tincan_media::control::MAX_PROOF_RECORDS`): for an open room the
    /// records that show the membership and the channel, parents first, so
    /// the checker never parks a record; for an invite-only room the room
    /// record, the owner's grant of the newest epoch held here and that
    /// epoch's relay token (see the module's doc). Either way this node
    /// must see `user` as a joined member and `channel` as existing.
    pub fn membership_proof(
        &self,
        room: &RoomId,
        user: &UserId,
        channel: &ChannelId,
        max_records: usize,
    ) -> Result<Vec<ProofItem>, ProofError> {
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
        if view.room.settings.join_policy == JoinPolicy::Invite {
            let (grant, token) = self.epoch_grant(room)?.ok_or(ProofError::NoKey(*room))?;
            ids.push(grant);
            if ids.len() + 1 > max_records {
                return Err(ProofError::TooLong {
                    needed: ids.len() + 1,
                    limit: max_records,
                });
            }
            let mut out = self.wire_records(&ids)?;
            out.push(ProofItem::Token(token));
            return Ok(out);
        }
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
        Ok(self.wire_records(&ids)?)
    }

    /// The relay token of the newest epoch of `room` whose key this store
    /// holds: what a member on a relay shows after a newer grant
    /// (`MemberMessage::Token`), so the relay keeps it. `None` for a room
    /// without a key here.
    pub fn relay_token(&self, room: &RoomId) -> Result<Option<EpochToken>, StorageError> {
        Ok(self.room_key(room)?.map(|key| EpochToken {
            epoch: key.epoch(),
            token: key.relay_token(),
        }))
    }

    /// The newest grant record of `room` stored here (any epoch, whether
    /// or not this store can open it): the evidence that supersedes older
    /// epochs' relay tokens.
    pub fn newest_grant(&self, room: &RoomId) -> Result<Option<SignedRecord>, StorageError> {
        let txn = self.db.begin_read()?;
        let grants = txn.open_table(GRANTS)?;
        let end = keys::cat(&[&room.0, &[0xff; 36]]);
        let last = grants
            .range(room.0.as_slice()..=end.as_slice())?
            .next_back()
            .transpose()?;
        let Some((k, _)) = last else {
            return Ok(None);
        };
        let Some(id) = keys::record_id(k.value().get(20..).unwrap_or_default()) else {
            return Err(StorageError("a damaged grant index".into()));
        };
        let records = txn.open_table(RECORDS)?;
        match records.get(id.0.as_slice())? {
            Some(bytes) => Ok(Some(query::decode_stored(bytes.value())?)),
            None => Err(StorageError("index points at a missing record".into())),
        }
    }

    /// A grant record of the epoch of the newest key held for `room` that
    /// commits to that key's relay token (the smallest, if several), and
    /// the token.
    fn epoch_grant(&self, room: &RoomId) -> Result<Option<(RecordId, EpochToken)>, StorageError> {
        let Some(key) = self.room_key(room)? else {
            return Ok(None);
        };
        let commit = key.relay_commit();
        let txn = self.db.begin_read()?;
        let grants = txn.open_table(GRANTS)?;
        let records = txn.open_table(RECORDS)?;
        let prefix = keys::room_epoch(room, key.epoch());
        let mut best: Option<(usize, RecordId)> = None;
        for row in grants.range(prefix.as_slice()..)? {
            let (k, _) = row?;
            if !k.value().starts_with(&prefix) {
                break;
            }
            let Some(id) = keys::record_id(k.value().get(20..).unwrap_or_default()) else {
                continue;
            };
            let Some(bytes) = records.get(id.0.as_slice())? else {
                continue;
            };
            let len = bytes.value().len();
            let record = query::decode_stored(bytes.value())?;
            let commits =
                matches!(&record.record().body, Body::KeyGrant(g) if g.relay_commit == commit);
            if commits && best.is_none_or(|(l, _)| len < l) {
                best = Some((len, id));
            }
        }
        Ok(best.map(|(_, id)| {
            (
                id,
                EpochToken {
                    epoch: key.epoch(),
                    token: key.relay_token(),
                },
            )
        }))
    }

    fn wire_records(&self, ids: &[RecordId]) -> Result<Vec<ProofItem>, StorageError> {
        let txn = self.db.begin_read()?;
        let records = txn.open_table(RECORDS)?;
        let mut out = Vec::with_capacity(ids.len() + 1);
        for id in ids {
            let bytes = records
                .get(id.0.as_slice())?
                .ok_or_else(|| StorageError("index points at a missing record".into()))?;
            // What the store keeps is the wire form; check it decodes.
            let record: SignedRecord = query::decode_stored(bytes.value())?;
            out.push(ProofItem::Record(record.to_bytes()));
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

/// What a valid grant-and-token proof shows: the room's owner and the
/// epoch whose key the prover holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EpochProof {
    /// The room's owner (who signed the grant).
    pub owner: UserId,
    /// The epoch of the grant and the token.
    pub epoch: u32,
    /// The grant's `relay_commit`, which that epoch's token matches.
    pub relay_commit: [u8; 32],
}

/// Why a grant-and-token proof is refused; the message is for the user.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EpochProofError {
    /// The checker's own store failed.
    #[error("the proof cannot be checked right now ({0}): try again later")]
    Storage(#[from] StorageError),
    /// A record does not decode or its signature does not verify.
    #[error("record {index} of your membership proof is invalid: {reason}")]
    BadRecord {
        /// 1-based position in the proof.
        index: usize,
        /// Why.
        reason: String,
    },
    /// The proof's records are not the room record and one grant of it.
    #[error(
        "your membership proof for invite-only room {0} must hold its room record, one grant of the owner and one relay token: update tincan on this node"
    )]
    Shape(RoomId),
    /// The room record is refused by the rules, or the room is not
    /// invite-only.
    #[error("your membership proof does not show invite-only room {0}: update tincan on this node")]
    NotInviteOnly(RoomId),
    /// The grant is not the owner's grant of that room.
    #[error("the key grant in your proof is not one of room {0}'s owner{1}")]
    NotOwnersGrant(RoomId, String),
    /// The token is not of the grant's epoch, or does not match it.
    #[error(
        "your relay token does not match the owner's grant of epoch {0}: this node does not hold that epoch's key"
    )]
    WrongToken(u32),
}

/// Checks a grant-and-token proof for `room` ([`Store::membership_proof`]
/// of an invite-only room): the room record and the grant by the rules,
/// applied to an empty store of this check alone, the grant by the room's
/// owner, the token of the grant's epoch and matching its commitment.
/// CPU-bound (two signatures, a throwaway store). Never panics.
pub fn check_epoch_proof(
    room: &RoomId,
    items: &[ProofItem],
) -> Result<EpochProof, EpochProofError> {
    let mut records = Vec::new();
    let mut tokens = Vec::new();
    for (i, item) in items.iter().enumerate() {
        match item {
            ProofItem::Record(bytes) => {
                let record =
                    SignedRecord::from_bytes(bytes).map_err(|e| EpochProofError::BadRecord {
                        index: i + 1,
                        reason: e.to_string(),
                    })?;
                records.push(record);
            }
            ProofItem::Token(t) => tokens.push(*t),
        }
    }
    let ([first, second], [token]) = (records.as_slice(), tokens.as_slice()) else {
        return Err(EpochProofError::Shape(*room));
    };
    let (room_record, grant) = match (&first.record().body, &second.record().body) {
        (Body::Room(_), Body::KeyGrant(_)) => (first, second),
        (Body::KeyGrant(_), Body::Room(_)) => (second, first),
        _ => return Err(EpochProofError::Shape(*room)),
    };
    let store = Store::in_memory(StoreConfig {
        pending_limit: 2,
        feed_capacity: 1,
        ..StoreConfig::default()
    })
    .map_err(|e| StorageError(format!("cannot open a store to check the proof in: {e}")))?;
    let outcome = store.apply_batch(vec![room_record.clone()])?;
    let view = match (outcome.first(), store.room(room)?) {
        (Some(Ok(_)), Some(view)) if view.room.settings.join_policy == JoinPolicy::Invite => view,
        _ => return Err(EpochProofError::NotInviteOnly(*room)),
    };
    let (epoch, relay_commit) = grant_epoch_of(grant, room, &view.owner)
        .ok_or_else(|| EpochProofError::NotOwnersGrant(*room, String::new()))?;
    // The rules on the grant too (what any node would refuse, a relay
    // refuses): the same verdict as the author check above, kept so the
    // two cannot drift apart.
    if let Some(Err(e)) = store.apply_batch(vec![grant.clone()])?.first() {
        return Err(EpochProofError::NotOwnersGrant(*room, format!(" ({e})")));
    }
    if token.epoch != epoch || !token.matches(&relay_commit) {
        return Err(EpochProofError::WrongToken(epoch));
    }
    Ok(EpochProof {
        owner: view.owner,
        epoch,
        relay_commit,
    })
}

/// The epoch and relay commitment of `record` if it is a `KeyGrant` of
/// `room` signed by its `owner` (the signature was checked when the record
/// was decoded): how a relay reads a newer grant a member sends it.
pub fn grant_epoch_of(
    record: &SignedRecord,
    room: &RoomId,
    owner: &UserId,
) -> Option<(u32, [u8; 32])> {
    match &record.record().body {
        Body::KeyGrant(g) if g.room == *room && record.record().author == *owner => {
            Some((g.epoch, g.relay_commit))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StoreConfig;
    use tincan_core::permissions::default_permissions;
    use tincan_core::{Hlc, MemberRole, MemberState, RoomSettings, UserKey, make};

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
    fn check(proof: &[ProofItem], room: &RoomId, user: &UserId, channel: &ChannelId) -> bool {
        let fresh = Store::in_memory(StoreConfig::default()).unwrap();
        let records = proof
            .iter()
            .map(|item| SignedRecord::from_bytes(item.record().expect("only records")).unwrap())
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

    /// An invite-only room as its owner's node writes it: channel and
    /// admission sealed, the grants key upkeep plans applied; and the
    /// member's own store with everything, its user unlocked.
    fn sealed_room(member: &UserKey) -> (Room, Store, Vec<SignedRecord>) {
        let owner = UserKey::from_seed(&[1; 32]);
        let store = Store::in_memory(StoreConfig::default()).unwrap();
        store.unlock_user(&owner).unwrap();
        let settings = RoomSettings {
            join_policy: JoinPolicy::Invite,
            member_limit: None,
        };
        let (id, rec) = make::room(&owner, Hlc::new(10, 0), [7; 16], "Raid", settings).unwrap();
        let mut all = vec![rec];
        let channel = ChannelId([9; 16]);
        let ch = make::channel(
            &owner,
            Hlc::new(11, 0),
            id,
            channel,
            "Comms",
            "",
            default_permissions(),
        )
        .unwrap();
        store.apply(all[0].clone()).unwrap();
        let ch = store.prepare_signed(&owner, ch).unwrap();
        assert!(ch.is_sealed());
        all.push(ch);
        let admit = make::member(
            &owner,
            Hlc::new(12, 0),
            id,
            member.id(),
            MemberRole::Participant,
            MemberState::Joined,
        )
        .unwrap();
        all.push(store.prepare_signed(&owner, admit).unwrap());
        for r in &all[1..] {
            store.apply(r.clone()).unwrap();
        }
        for g in store.key_upkeep(&owner, Hlc::new(13, 0)).unwrap() {
            store.apply(g.clone()).unwrap();
            all.push(g);
        }
        let mine = Store::in_memory(StoreConfig::default()).unwrap();
        mine.unlock_user(member).unwrap();
        for r in &all {
            mine.apply(r.clone()).unwrap();
        }
        let r = Room {
            owner,
            id,
            channel,
            store,
        };
        (r, mine, all)
    }

    #[test]
    fn a_member_of_an_invite_only_room_proves_its_epoch_with_grant_and_token() {
        let user = UserKey::from_seed(&[2; 32]);
        let (r, mine, _) = sealed_room(&user);
        let proof = mine
            .membership_proof(&r.id, &user.id(), &r.channel, 16)
            .unwrap();
        assert_eq!(proof.len(), 3, "room, grant, token: {proof:?}");
        let shown = check_epoch_proof(&r.id, &proof).unwrap();
        assert_eq!((shown.owner, shown.epoch), (r.owner.id(), 0));
        // The owner proves it the same way.
        let owners = r
            .store
            .membership_proof(&r.id, &r.owner.id(), &r.channel, 16)
            .unwrap();
        assert_eq!(check_epoch_proof(&r.id, &owners).unwrap().epoch, 0);
        // A made-up token, a token of another epoch, no token, two tokens,
        // a proof for another room: refused.
        let with_token = |t: EpochToken| {
            let mut p = proof.clone();
            p[2] = ProofItem::Token(t);
            p
        };
        let made_up = with_token(EpochToken {
            epoch: 0,
            token: [7; 32],
        });
        assert!(matches!(
            check_epoch_proof(&r.id, &made_up),
            Err(EpochProofError::WrongToken(0))
        ));
        let Some(ProofItem::Token(real)) = proof.get(2).cloned() else {
            panic!("no token")
        };
        let other_epoch = with_token(EpochToken { epoch: 1, ..real });
        assert!(matches!(
            check_epoch_proof(&r.id, &other_epoch),
            Err(EpochProofError::WrongToken(0))
        ));
        assert!(matches!(
            check_epoch_proof(&r.id, &proof[..2]),
            Err(EpochProofError::Shape(_))
        ));
        let mut two = proof.clone();
        two.push(ProofItem::Token(real));
        assert!(matches!(
            check_epoch_proof(&r.id, &two),
            Err(EpochProofError::Shape(_))
        ));
        assert!(check_epoch_proof(&RoomId([0; 16]), &proof).is_err());
        // A damaged record.
        let mut damaged = proof.clone();
        if let ProofItem::Record(b) = &mut damaged[1] {
            let last = b.len() - 1;
            b[last] ^= 1;
        }
        assert!(matches!(
            check_epoch_proof(&r.id, &damaged),
            Err(EpochProofError::BadRecord { index: 2, .. })
        ));
        // A grant signed by someone else than the owner.
        let mallory = UserKey::from_seed(&[9; 32]);
        let key = mine.room_key(&r.id).unwrap().unwrap();
        let forged = make::grants(
            &mallory,
            Hlc::new(20, 0),
            &key,
            &mine.locator(&r.id).unwrap().unwrap(),
            &[mallory.id()],
        )
        .unwrap();
        let mut p = proof.clone();
        p[1] = ProofItem::Record(forged[0].to_bytes());
        assert!(matches!(
            check_epoch_proof(&r.id, &p),
            Err(EpochProofError::NotOwnersGrant(..))
        ));
        assert!(grant_epoch_of(&forged[0], &r.id, &r.owner.id()).is_none());
        // What a member shows after a newer grant, and the newest grant.
        assert_eq!(mine.relay_token(&r.id).unwrap(), Some(real));
        let newest = mine.newest_grant(&r.id).unwrap().unwrap();
        assert_eq!(
            grant_epoch_of(&newest, &r.id, &r.owner.id()).map(|g| g.0),
            Some(0)
        );
    }

    #[test]
    fn after_a_kick_the_newer_grant_supersedes_and_the_removed_member_cannot_prove_it() {
        let bob = UserKey::from_seed(&[2; 32]);
        let carol = UserKey::from_seed(&[3; 32]);
        let (r, bobs, mut all) = sealed_room(&bob);
        let admit = make::member(
            &r.owner,
            Hlc::new(14, 0),
            r.id,
            carol.id(),
            MemberRole::Participant,
            MemberState::Joined,
        )
        .unwrap();
        let admit = r.store.prepare_signed(&r.owner, admit).unwrap();
        r.store.apply(admit.clone()).unwrap();
        all.push(admit);
        for g in r.store.key_upkeep(&r.owner, Hlc::new(15, 0)).unwrap() {
            r.store.apply(g.clone()).unwrap();
            all.push(g);
        }
        let carols = Store::in_memory(StoreConfig::default()).unwrap();
        carols.unlock_user(&carol).unwrap();
        for rec in &all {
            carols.apply(rec.clone()).unwrap();
        }
        let old = carols
            .membership_proof(&r.id, &carol.id(), &r.channel, 16)
            .unwrap();
        assert_eq!(check_epoch_proof(&r.id, &old).unwrap().epoch, 0);
        let mut later = Vec::new();
        for rec in r
            .store
            .removal(
                &r.owner,
                &r.id,
                &carol.id(),
                MemberState::Kicked,
                Hlc::new(20, 0),
            )
            .unwrap()
        {
            r.store.apply(rec.clone()).unwrap();
            later.push(rec);
        }
        for g in r.store.key_upkeep(&r.owner, Hlc::new(21, 0)).unwrap() {
            r.store.apply(g.clone()).unwrap();
            later.push(g);
        }
        for rec in all.iter().chain(&later) {
            bobs.apply(rec.clone()).unwrap();
            carols.apply(rec.clone()).unwrap();
        }
        let newer = bobs.newest_grant(&r.id).unwrap().unwrap();
        assert_eq!(
            grant_epoch_of(&newer, &r.id, &r.owner.id()).map(|g| g.0),
            Some(1)
        );
        let bob_now = bobs
            .membership_proof(&r.id, &bob.id(), &r.channel, 16)
            .unwrap();
        assert_eq!(check_epoch_proof(&r.id, &bob_now).unwrap().epoch, 1);
        // Carol's store has the kick and no key of epoch 1.
        assert!(
            carols
                .membership_proof(&r.id, &carol.id(), &r.channel, 16)
                .is_err()
        );
        assert_eq!(carols.relay_token(&r.id).unwrap().map(|t| t.epoch), Some(0));
    }

    #[test]
    fn the_owner_needs_only_the_room_and_the_channel() {
        let r = room(JoinPolicy::Open);
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
