//! Room keys and the local writers' side of sealed rooms: which keys and
//! locators this store holds, unlocking local users (whose secret keys open
//! grants, in memory only), the one write path that seals where it must
//! ([`Store::prepare_write`]), the owner's key upkeep (which grants to
//! publish now, [`Store::key_upkeep`]) and a removal's records
//! ([`Store::removal`]).
//!
//! The `room_keys` table holds, per room, the newest epoch key this store
//! has and the room's locator secret. They are secrets kept in the store
//! file as they are (the file is the node's own, like its keys directory);
//! the users' secret keys never are.

use std::collections::HashSet;

use redb::ReadableDatabase;
use tincan_core::merge::Membership;
use tincan_core::seal::{LocatorId, LocatorSecret, MAX_EPOCHS, RoomChain, RoomKey};
use tincan_core::{
    Body, Cutoff, Hlc, Invite, JoinPolicy, Member, MemberRole, MemberState, Record, RoomId,
    SignedRecord, UserId, UserKey, make,
};

use crate::apply::PlannedGrant;
use crate::error::{StorageError, WriteError};
use crate::{GRANTED, LOCATORS, LOG_AUTHORS, MEMBERS, OWNED, ROOM_KEYS, Store, UNOPENED, keys};

/// What the store holds of one room's secrets.
#[derive(Clone, Debug, Default)]
pub(crate) struct HeldKeys {
    /// The newest epoch key held.
    pub(crate) key: Option<RoomKey>,
    /// The room's locator secret.
    pub(crate) locator: Option<LocatorSecret>,
}

const HAS_KEY: u8 = 1;
const HAS_LOCATOR: u8 = 2;

/// flags | epoch (4) | key (32) | locator (32)
pub(crate) fn encode_held(held: &HeldKeys) -> Vec<u8> {
    let mut out = vec![0u8; 69];
    if let Some(k) = &held.key {
        out[0] |= HAS_KEY;
        out[1..5].copy_from_slice(&k.epoch().to_be_bytes());
        out[5..37].copy_from_slice(k.bytes().as_ref());
    }
    if let Some(l) = &held.locator {
        out[0] |= HAS_LOCATOR;
        out[37..69].copy_from_slice(&l.0);
    }
    out
}

pub(crate) fn decode_held(room: &RoomId, v: &[u8]) -> Result<HeldKeys, StorageError> {
    let bad = || StorageError("damaged room key table".into());
    if v.len() != 69 {
        return Err(bad());
    }
    let key = if v[0] & HAS_KEY != 0 {
        let epoch = keys::epoch(&v[1..5]).ok_or_else(bad)?;
        let mut k = [0u8; 32];
        k.copy_from_slice(&v[5..37]);
        Some(RoomKey::from_bytes(*room, epoch, k).map_err(|_| bad())?)
    } else {
        None
    };
    let locator = (v[0] & HAS_LOCATOR != 0).then(|| {
        let mut l = [0u8; 32];
        l.copy_from_slice(&v[37..69]);
        LocatorSecret(l)
    });
    Ok(HeldKeys { key, locator })
}

impl Store {
    fn held(&self, room: &RoomId) -> Result<HeldKeys, StorageError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(ROOM_KEYS)?;
        match t.get(room.0.as_slice())? {
            None => Ok(HeldKeys::default()),
            Some(v) => decode_held(room, v.value()),
        }
    }

    /// The newest key of `room` this store holds (it opens that epoch and
    /// every older one).
    pub fn room_key(&self, room: &RoomId) -> Result<Option<RoomKey>, StorageError> {
        Ok(self.held(room)?.key)
    }

    /// The locator secret of `room`, if this store has one (from an invite,
    /// a grant, or as the room's unlocked owner).
    pub fn locator(&self, room: &RoomId) -> Result<Option<LocatorSecret>, StorageError> {
        Ok(self.held(room)?.locator)
    }

    /// The room a locator id names, if this store holds its locator: how a
    /// node answering a sealed sync scope or a sealed topic finds the room.
    pub fn room_of_locator(&self, locator: &LocatorId) -> Result<Option<RoomId>, StorageError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(LOCATORS)?;
        Ok(t.get(locator.0.as_slice())?
            .and_then(|v| keys::room_id(v.value())))
    }

    /// Keeps `user`'s secret key in memory (never on disk) so that grants to
    /// them are opened: those already stored now (and the sealed records
    /// their keys open), and those that arrive while unlocked. An unlocked
    /// owner derives their rooms' keys themself. The user's
    /// profile is kept from now on whatever their standing.
    pub fn unlock_user(&self, user: &UserKey) -> Result<(), StorageError> {
        let id = user.id();
        {
            let mut unlocked = self.unlocked.write().unwrap_or_else(|p| p.into_inner());
            unlocked.insert(id, UserKey::from_seed(&user.seed()));
        }
        let owned = self.owned_rooms(&id)?;
        self.write(crate::clock::wall_ms(), |tables, _| {
            for room in owned {
                tables.ensure_owner_keys(&room, user)?;
            }
            tables.open_grants_for(user)?;
            tables.release(keys::Waiting::Standing(id))
        })
    }

    /// Forgets `user`'s secret key. Room keys already opened stay in the
    /// store (other local users, and the node itself, keep reading).
    pub fn lock_user(&self, user: &UserId) {
        let mut unlocked = self.unlocked.write().unwrap_or_else(|p| p.into_inner());
        unlocked.remove(user);
    }

    /// Records the locator of an invite before anything of the room is
    /// here, so this node can find the room (and serve it once it has it).
    /// A locator from an invite never replaces one that came with a key
    /// (from the owner): an invite link is not signed. An open room's
    /// invite (no locator) records nothing.
    pub fn install_invite(&self, invite: &Invite) -> Result<(), StorageError> {
        let Some(locator) = invite.locator.clone() else {
            return Ok(());
        };
        self.write(crate::clock::wall_ms(), |tables, _| {
            let mut held = tables.held_keys(&invite.room)?;
            if held.key.is_some() && held.locator.is_some() {
                return Ok(());
            }
            tables.set_locator(&invite.room, &mut held, locator)?;
            tables.write_held(&invite.room, &held)
        })
    }

    fn owned_rooms(&self, owner: &UserId) -> Result<Vec<RoomId>, StorageError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(OWNED)?;
        let mut out = Vec::new();
        for row in t.range(owner.0.as_slice()..)? {
            let (k, _) = row?;
            if !k.value().starts_with(&owner.0) {
                break;
            }
            out.extend(keys::room_id(k.value().get(32..).unwrap_or_default()));
        }
        Ok(out)
    }

    /// Whether records of `room` are sealed when written now: the room is
    /// invite-only, or unknown here but found through a locator. The mesh
    /// uses the same rule to decide whether a room lives under its sealed
    /// names (an unlocked owner holds a locator for open rooms too).
    pub fn seals(&self, room: &RoomId) -> Result<bool, StorageError> {
        match self.room(room)? {
            Some(view) => Ok(view.room.settings.join_policy == JoinPolicy::Invite),
            None => Ok(self.held(room)?.locator.is_some()),
        }
    }

    /// The one way a local writer (CLI, API, embedder) makes a record: it
    /// is sealed with the newest key held when its room is invite-only (a
    /// Member, Channel, RoomLog, Cutoff or channel delete), signed plainly
    /// otherwise. Without a key, only the author's own join or leave may be
    /// written (in plaintext: a join request); anything else is
    /// [`WriteError::NoKey`]. The result is the opened view; apply it and
    /// publish its [`SignedRecord::to_bytes`].
    pub fn prepare_write(
        &self,
        author: &UserKey,
        hlc: Hlc,
        body: Body,
    ) -> Result<SignedRecord, WriteError> {
        if matches!(body, Body::Sealed(_)) {
            return Err(WriteError::Invalid(
                "a record is sealed by prepare_write itself: pass what goes inside",
            ));
        }
        let record = Record {
            author: author.id(),
            hlc,
            body,
        };
        let room = match (record.body.is_sealable(), record.room()) {
            (true, Some(room)) => room,
            _ => return Ok(record.sign(author).map_err(tincan_core::MakeError::from)?),
        };
        if !self.seals(&room)? {
            return Ok(record.sign(author).map_err(tincan_core::MakeError::from)?);
        }
        match self.held(&room)?.key {
            Some(key) => Ok(make::sealed(author, hlc, &key, record.body)?),
            None => match &record.body {
                Body::Member(Member { user, .. }) if *user == author.id() => {
                    Ok(record.sign(author).map_err(tincan_core::MakeError::from)?)
                }
                _ => Err(WriteError::NoKey { room }),
            },
        }
    }

    /// [`Store::prepare_write`] for a record a local writer has already
    /// signed plainly (the `make::` constructors sign): returned as it is
    /// when its room is not sealed, sealed again from its body and HLC
    /// when it is. Every local write goes through this or
    /// `prepare_write`, so nothing of an invite-only room leaves in
    /// plaintext whatever built it.
    pub fn prepare_signed(
        &self,
        author: &UserKey,
        record: SignedRecord,
    ) -> Result<SignedRecord, WriteError> {
        let r = record.record();
        if record.is_sealed() || r.author != author.id() || !r.body.is_sealable() {
            return Ok(record);
        }
        match r.room() {
            Some(room) if self.seals(&room)? => self.prepare_write(author, r.hlc, r.body.clone()),
            _ => Ok(record),
        }
    }

    /// [`Store::key_upkeep`] for every user unlocked in this store: the
    /// grants their node should publish now. What a node runs after each
    /// change of its store (apply each record before the next call, or
    /// the same grants are planned again).
    pub fn key_upkeep_unlocked(&self, hlc: Hlc) -> Result<Vec<SignedRecord>, WriteError> {
        let keys: Vec<UserKey> = {
            let unlocked = self.unlocked.read().unwrap_or_else(|p| p.into_inner());
            unlocked
                .values()
                .map(|k| UserKey::from_seed(&k.seed()))
                .collect()
        };
        let mut out = Vec::new();
        for key in &keys {
            out.extend(self.key_upkeep(key, hlc)?);
        }
        Ok(out)
    }

    /// The grants `owner` should publish now (and nothing else), for each of
    /// their invite-only rooms here: the current epoch to every invited or
    /// joined user this node has not granted it to yet; a new epoch to all
    /// of them when anyone granted the current epoch has left or been
    /// kicked or banned since. Pure with respect to the store: apply the
    /// records it gives (that is when this node notes whom it granted), and
    /// publish them.
    pub fn key_upkeep(&self, owner: &UserKey, hlc: Hlc) -> Result<Vec<SignedRecord>, WriteError> {
        let owner_id = owner.id();
        let mut out = Vec::new();
        for room in self.owned_rooms(&owner_id)? {
            let Some(view) = self.room(&room)? else {
                continue;
            };
            if view.owner != owner_id || view.room.settings.join_policy != JoinPolicy::Invite {
                continue;
            }
            let targets: Vec<UserId> = self
                .members(&room)?
                .into_iter()
                .filter(|m| {
                    !m.is_owner
                        && matches!(m.membership, Membership::Invited | Membership::Joined(_))
                })
                .map(|m| m.user)
                .collect();
            let current = self.grant_epoch(&room)?;
            let (epoch, recipients) = match current {
                None if targets.is_empty() => continue,
                None => (0, targets),
                Some(e) => {
                    let granted = self.granted(&room, e)?;
                    let target_set: HashSet<&UserId> = targets.iter().collect();
                    if granted.iter().any(|u| !target_set.contains(u)) {
                        if e + 1 >= MAX_EPOCHS {
                            return Err(WriteError::EpochsExhausted { room });
                        }
                        (e + 1, targets)
                    } else {
                        let new: Vec<UserId> = targets
                            .into_iter()
                            .filter(|u| !granted.contains(u))
                            .collect();
                        if new.is_empty() {
                            continue;
                        }
                        (e, new)
                    }
                }
            };
            let held = self.held(&room)?;
            let chain = RoomChain::derive(owner, &room);
            let key = match held.key {
                Some(k) if k.epoch() == epoch => k,
                _ => chain
                    .epoch_key(epoch)
                    .map_err(|e| WriteError::Make(e.into()))?,
            };
            let records = make::grants(owner, hlc, &key, &chain.locator(), &recipients)?;
            let mut outbox = self.outbox.lock().unwrap_or_else(|p| p.into_inner());
            for (record, chunk) in records
                .iter()
                .zip(recipients.chunks(tincan_core::MAX_GRANT_ENVELOPES))
            {
                outbox.push(PlannedGrant {
                    id: record.id(),
                    recipients: chunk.to_vec(),
                });
            }
            out.extend(records);
        }
        Ok(out)
    }

    fn grant_epoch(&self, room: &RoomId) -> Result<Option<u32>, StorageError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(crate::GRANTS)?;
        let end = keys::cat(&[&room.0, &[0xff; 36]]);
        let last = t
            .range(room.0.as_slice()..=end.as_slice())?
            .next_back()
            .transpose()?;
        Ok(last.and_then(|(k, _)| keys::epoch(k.value().get(16..).unwrap_or_default())))
    }

    fn granted(&self, room: &RoomId, epoch: u32) -> Result<HashSet<UserId>, StorageError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(GRANTED)?;
        let prefix = keys::room_epoch(room, epoch);
        let mut out = HashSet::new();
        for row in t.range(prefix.as_slice()..)? {
            let (k, _) = row?;
            if !k.value().starts_with(&prefix) {
                break;
            }
            out.extend(keys::user_id(k.value().get(20..).unwrap_or_default()));
        }
        Ok(out)
    }

    /// The records of a kick or ban of `user` by the room's `owner`, at
    /// `hlc`: the Member record and a [`Cutoff`] whose `after` is the newest
    /// record of that user in the room here (so that entries they date
    /// between it and the removal stay hidden everywhere). Both go through
    /// [`Store::prepare_write`] (sealed in an invite-only room).
    pub fn removal(
        &self,
        owner: &UserKey,
        room: &RoomId,
        user: &UserId,
        state: MemberState,
        hlc: Hlc,
    ) -> Result<Vec<SignedRecord>, WriteError> {
        let view = self.room(room)?.ok_or(WriteError::UnknownRoom(*room))?;
        if view.owner != owner.id() {
            return Err(WriteError::NotOwner { room: *room });
        }
        if !matches!(state, MemberState::Kicked | MemberState::Banned) {
            return Err(WriteError::Invalid("a removal is a kick or a ban"));
        }
        if *user == owner.id() {
            return Err(WriteError::Invalid("the owner cannot remove themself"));
        }
        let newest = self.newest_of_user(room, user)?;
        if newest >= hlc {
            return Err(WriteError::TooEarly { hlc, newest });
        }
        let member = self.prepare_write(
            owner,
            hlc,
            Body::Member(Member {
                room: *room,
                user: *user,
                role: MemberRole::Participant,
                state,
            }),
        )?;
        let cutoff = self.prepare_write(
            owner,
            hlc,
            Body::Cutoff(Cutoff {
                room: *room,
                user: *user,
                after: newest,
            }),
        )?;
        Ok(vec![member, cutoff])
    }

    /// The newest HLC of any record by `user` in `room` held here (their own
    /// Member records, log entries and sealed records); zero if none.
    fn newest_of_user(&self, room: &RoomId, user: &UserId) -> Result<Hlc, StorageError> {
        let txn = self.db.begin_read()?;
        let prefix = keys::room_user(room, user);
        let mut newest = Hlc::ZERO;
        let members = txn.open_table(MEMBERS)?;
        for row in members.range(prefix.as_slice()..)? {
            let (k, v) = row?;
            if !k.value().starts_with(&prefix) {
                break;
            }
            let e = crate::query::decode_member_value(k.value(), v.value())?;
            if !e.by_owner {
                newest = newest.max(e.hlc);
            }
        }
        let end = keys::cat(&[&prefix, &[0xff; 40]]);
        let logs = txn.open_table(LOG_AUTHORS)?;
        if let Some(row) = logs.range(prefix.as_slice()..=end.as_slice())?.next_back() {
            let (k, _) = row?;
            newest =
                newest.max(keys::hlc(k.value().get(48..).unwrap_or_default()).unwrap_or_default());
        }
        let unopened = txn.open_table(UNOPENED)?;
        if let Some(row) = unopened
            .range(prefix.as_slice()..=end.as_slice())?
            .next_back()
        {
            let (k, _) = row?;
            newest =
                newest.max(keys::hlc(k.value().get(48..).unwrap_or_default()).unwrap_or_default());
        }
        Ok(newest)
    }
}
