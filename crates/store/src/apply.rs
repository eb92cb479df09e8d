//! The write path: rules, merge, sealing and the bounds on strangers, inside
//! one write transaction.
//!
//! What holds after every transaction, whatever order records came in
//! (given that a record dropped at a cap is offered again later, as sync
//! does):
//! - every stored log entry passes [`rules::check_log_author`] against the
//!   membership records and cutoffs stored now: a Member record, a cutoff, an
//!   eviction or a change of join policy that makes one fail moves it back to
//!   the pending set ("rejudging"); entries that fail wait there, a few per
//!   (room, author), the newest by (HLC, id);
//! - at most `max_self_member_records` own Member records per (room, user),
//!   the newest; at most `max_join_requests` join requests per invite-only
//!   room, those with the newest request (a join request: a user with own
//!   Member records and none by the owner);
//! - a profile is stored only while its user has a standing here (a Member
//!   record about them, a room they own, or they are unlocked locally);
//! - a sealed record is applied as what it holds when this store has the key
//!   of its epoch (or a newer one); without it, it is kept as ciphertext, at
//!   most `max_sealed_per_author` per (room, author), the newest, and opened
//!   when a key arrives.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use redb::{ReadableTable, ReadableTableMetadata, Table, WriteTransaction};
use tincan_core::merge::{MemberEntry, Membership, Version, membership};
use tincan_core::rules::{self, CutoffWindow, RoomInfo};
use tincan_core::seal::{LocatorSecret, RoomChain, RoomKey};
use tincan_core::{
    Body, ClockAhead, EntityKey, Hlc, JoinPolicy, RecordId, RoomId, RuleError, SignedRecord,
    UnsealError, UserId, UserKey,
};

use crate::error::StorageError;
use crate::keyring::{HeldKeys, decode_held, encode_held};
use crate::keys::{self, Waiting};
use crate::query::{
    decode_member_value, decode_stored, decode_with_opened, encode_member_value, room_info_from,
};
use crate::sync::{RANK_SEALED, RANK_SEALED_OWNER};
use crate::{
    COUNTS, CUTOFFS, Change, ChangeKind, ENTITIES, GRANTED, GRANTS, JOIN_REQUESTS,
    JOIN_REQUESTS_BY_AGE, LOCATORS, LOG_AUTHORS, LOG_USERS, LOGS, MEMBERS, META, OPENED, OWNED,
    PENDING, PENDING_BY_WAIT, PENDING_IDS, PENDING_ORDER, RECORDS, ROOM_KEYS, SCHEMA,
    SEALED_IN_ROOM, StoreConfig, UNOPENED, USER_ROOMS,
};

/// What applying a record did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Applied {
    /// Stored; it is now what queries show.
    Stored,
    /// Already here.
    Duplicate,
    /// Older than the version already here; dropped (the newer one wins everywhere).
    Superseded,
    /// Waits, in the bounded pending set: for its room, for a membership
    /// that admits its author at its time, or for its user's standing.
    Pending(Waiting),
    /// A sealed record this store holds no key for: kept as ciphertext
    /// (served to sync, in no query) and opened when a key arrives.
    Sealed,
    /// Not kept, and not its author's fault (nor whoever forwarded it): over
    /// a cap, or dated too far ahead. A peer that offers it again later may
    /// see it taken.
    Dropped(DropReason),
}

/// Why a record was dropped rather than kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DropReason {
    /// Dated too far ahead of this node's clock; taken once the clock
    /// catches up.
    #[error(transparent)]
    ClockAhead(ClockAhead),
    /// A log entry whose author was not a member at its time, and newer
    /// entries of theirs already wait.
    #[error(
        "the author was not a member when they wrote this log entry, and as many newer entries of theirs already wait"
    )]
    WaitingLogs,
    /// Ciphertext this node cannot open, and as many newer sealed records
    /// of the same author in the room are held.
    #[error("as many newer sealed records of this author are held unopened in this room")]
    SealedBacklog,
    /// A user's own Member record older than the newest ones kept.
    #[error("as many newer membership records by this user are kept for this room")]
    SelfMemberRecords,
    /// A join request older than the newest ones kept for the room.
    #[error("as many newer join requests are kept for this room")]
    JoinRequests,
    /// The store holds as many profiles as it keeps.
    #[error("this store keeps no more profiles")]
    Profiles,
    /// A profile of a user with no standing here, and as many newer ones
    /// already wait.
    #[error("the user has no standing in any room here, and as many newer profiles wait")]
    WaitingProfiles,
}

/// One grant planned by `Store::key_upkeep`: whom it is for. The grant
/// itself does not say; this node learns it when the grant is applied here.
#[derive(Clone, Debug)]
pub(crate) struct PlannedGrant {
    pub(crate) id: RecordId,
    pub(crate) recipients: Vec<UserId>,
}

/// Grants planned and not applied yet, oldest first. Bounded: a plan that
/// is never applied is forgotten, and the next upkeep plans it again.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    planned: VecDeque<PlannedGrant>,
}

const OUTBOX_LIMIT: usize = 256;

impl Outbox {
    pub(crate) fn push(&mut self, plan: PlannedGrant) {
        if self.planned.len() == OUTBOX_LIMIT {
            self.planned.pop_front();
        }
        self.planned.push_back(plan);
    }

    fn recipients(&self, id: &RecordId) -> Option<&[UserId]> {
        self.planned
            .iter()
            .find(|p| p.id == *id)
            .map(|p| p.recipients.as_slice())
    }
}

/// What a write transaction knows besides the tables.
pub(crate) struct Ctx<'a> {
    pub(crate) config: &'a StoreConfig,
    /// The receiver's clock, Unix milliseconds.
    pub(crate) now_ms: u64,
    pub(crate) unlocked: &'a HashMap<UserId, UserKey>,
    pub(crate) outbox: &'a Outbox,
}

pub(crate) struct Tables<'txn, 'a> {
    meta: Table<'txn, &'static str, &'static [u8]>,
    records: Table<'txn, &'static [u8], &'static [u8]>,
    entities: Table<'txn, &'static [u8], &'static [u8]>,
    members: Table<'txn, &'static [u8], &'static [u8]>,
    user_rooms: Table<'txn, &'static [u8], ()>,
    logs: Table<'txn, &'static [u8], ()>,
    pending: Table<'txn, u64, &'static [u8]>,
    pending_by_wait: Table<'txn, &'static [u8], ()>,
    pending_ids: Table<'txn, &'static [u8], u64>,
    opened: Table<'txn, &'static [u8], &'static [u8]>,
    sealed_in_room: Table<'txn, &'static [u8], u8>,
    unopened: Table<'txn, &'static [u8], u32>,
    grants: Table<'txn, &'static [u8], ()>,
    granted: Table<'txn, &'static [u8], ()>,
    cutoffs: Table<'txn, &'static [u8], u64>,
    log_authors: Table<'txn, &'static [u8], ()>,
    log_users: Table<'txn, &'static [u8], ()>,
    owned: Table<'txn, &'static [u8], ()>,
    join_requests: Table<'txn, &'static [u8], &'static [u8]>,
    join_requests_by_age: Table<'txn, &'static [u8], ()>,
    room_keys: Table<'txn, &'static [u8], &'static [u8]>,
    locators: Table<'txn, &'static [u8], &'static [u8]>,
    pending_order: Table<'txn, &'static [u8], u64>,
    counts: Table<'txn, &'static [u8], u64>,
    ctx: Ctx<'a>,
    /// Records released from the pending set (or from the unopened set by a
    /// key), to apply next.
    released: Vec<SignedRecord>,
    /// Outcomes of released records, by id.
    released_outcomes: HashMap<RecordId, Result<Applied, RuleError>>,
    /// Epoch keys derived in this transaction.
    key_cache: HashMap<(RoomId, u32), RoomKey>,
    /// What the rules need of each room looked up in this transaction
    /// (every record of a batch asks for its room): dropped when the
    /// room's record changes.
    room_cache: RefCell<HashMap<RoomId, Option<RoomInfo>>>,
}

type Step = Result<Result<Applied, RuleError>, StorageError>;

fn damaged(what: &str) -> StorageError {
    StorageError(format!("damaged {what} index"))
}

/// Most epoch keys (and rooms) cached in one transaction.
const KEY_CACHE_LIMIT: usize = 256;

impl<'txn, 'a> Tables<'txn, 'a> {
    pub(crate) fn open(txn: &'txn WriteTransaction, ctx: Ctx<'a>) -> Result<Self, StorageError> {
        Ok(Tables {
            meta: txn.open_table(META)?,
            records: txn.open_table(RECORDS)?,
            entities: txn.open_table(ENTITIES)?,
            members: txn.open_table(MEMBERS)?,
            user_rooms: txn.open_table(USER_ROOMS)?,
            logs: txn.open_table(LOGS)?,
            pending: txn.open_table(PENDING)?,
            pending_by_wait: txn.open_table(PENDING_BY_WAIT)?,
            pending_ids: txn.open_table(PENDING_IDS)?,
            opened: txn.open_table(OPENED)?,
            sealed_in_room: txn.open_table(SEALED_IN_ROOM)?,
            unopened: txn.open_table(UNOPENED)?,
            grants: txn.open_table(GRANTS)?,
            granted: txn.open_table(GRANTED)?,
            cutoffs: txn.open_table(CUTOFFS)?,
            log_authors: txn.open_table(LOG_AUTHORS)?,
            log_users: txn.open_table(LOG_USERS)?,
            owned: txn.open_table(OWNED)?,
            join_requests: txn.open_table(JOIN_REQUESTS)?,
            join_requests_by_age: txn.open_table(JOIN_REQUESTS_BY_AGE)?,
            room_keys: txn.open_table(ROOM_KEYS)?,
            locators: txn.open_table(LOCATORS)?,
            pending_order: txn.open_table(PENDING_ORDER)?,
            counts: txn.open_table(COUNTS)?,
            ctx,
            released: Vec::new(),
            released_outcomes: HashMap::new(),
            key_cache: HashMap::new(),
            room_cache: RefCell::new(HashMap::new()),
        })
    }

    fn config(&self) -> &StoreConfig {
        self.ctx.config
    }

    /// Applies `record`, then whatever was waiting for it.
    pub(crate) fn apply(&mut self, record: SignedRecord, changes: &mut Vec<Change>) -> Step {
        let first = self.apply_one(record, changes)?;
        self.drain_released(changes)?;
        Ok(first)
    }

    /// Applies released records in turn; each release removed them from
    /// where they waited, so this ends.
    pub(crate) fn drain_released(&mut self, changes: &mut Vec<Change>) -> Result<(), StorageError> {
        while let Some(r) = self.released.pop() {
            // It may go back to waiting (a log entry for its author's
            // membership); the batch reports what finally became of it.
            let id = r.id();
            let outcome = self.apply_one(r, changes)?;
            self.released_outcomes.insert(id, outcome);
        }
        Ok(())
    }

    /// What became of a record that waited and was released during this
    /// transaction, if it was.
    pub(crate) fn released_outcome(&self, id: &RecordId) -> Option<Result<Applied, RuleError>> {
        self.released_outcomes.get(id).cloned()
    }

    fn apply_one(&mut self, signed: SignedRecord, changes: &mut Vec<Change>) -> Step {
        // An opened view (from a local writer) takes the way a peer's copy
        // does: opened again here, with the key this store holds.
        let signed = if signed.is_opened() {
            signed
                .sealed_form()
                .map_err(|e| StorageError(format!("cannot re-read a sealed record: {e}")))?
        } else {
            signed
        };
        let id = signed.id();
        if self.records.get(id.0.as_slice())?.is_some() {
            return Ok(Ok(Applied::Duplicate));
        }
        if let Err(e) = rules::check_standalone(signed.record()) {
            return Ok(Err(e));
        }
        if let Err(ahead) = rules::check_clock_skew(signed.record(), self.ctx.now_ms) {
            return Ok(Ok(Applied::Dropped(DropReason::ClockAhead(ahead))));
        }
        let info = match signed.record().parent_room() {
            None => None,
            Some(room_id) => match self.room_info(&room_id)? {
                None => return self.park(&signed, Waiting::Room(room_id)),
                Some(info) => {
                    if let Err(e) = rules::check_in_room(signed.record(), &info) {
                        return Ok(Err(e));
                    }
                    Some(info)
                }
            },
        };
        let signed = match (&signed.record().body, &info) {
            (Body::Sealed(s), Some(info)) => {
                let (room, epoch) = (s.room, s.epoch);
                let Some(key) = self.key_for(&room, epoch)? else {
                    self.note_hlc(signed.record().hlc)?;
                    return self.store_unopened(signed, room, epoch, info);
                };
                let opened = match signed.open(&key) {
                    Ok(o) => o,
                    Err(UnsealError::Rule(e)) => return Ok(Err(e)),
                    Err(e) => {
                        return Err(StorageError(format!(
                            "the store picked a key that cannot open the record: {e}"
                        )));
                    }
                };
                // What is inside is checked as a plaintext record would be.
                if let Err(e) = rules::check_standalone(opened.record())
                    .and_then(|()| rules::check_in_room(opened.record(), info))
                {
                    return Ok(Err(e));
                }
                opened
            }
            _ => signed,
        };
        self.note_hlc(signed.record().hlc)?;
        match (&signed.record().body, info) {
            (Body::Member(_), Some(info)) => self.apply_member(signed, &info, changes),
            (Body::RoomLog(_), Some(info)) => self.apply_log(signed, &info, changes),
            (Body::Cutoff(_), Some(info)) => self.apply_cutoff(signed, &info, changes),
            (Body::KeyGrant(_), Some(info)) => self.apply_grant(signed, &info, changes),
            (Body::Profile(_), _) => self.apply_profile(signed, changes),
            (_, info) => self.last_writer_wins(signed, info.map(|i| i.owner), changes),
        }
    }

    /// Keeps the highest HLC seen, so this node's clock can order its next
    /// write after everything it has seen (bookkeeping, not replicated state).
    fn note_hlc(&mut self, hlc: Hlc) -> Result<(), StorageError> {
        let high = self
            .meta
            .get("hlc_high")?
            .and_then(|v| v.value().try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(0);
        if hlc.0 > high {
            self.meta
                .insert("hlc_high", hlc.0.to_be_bytes().as_slice())?;
        }
        Ok(())
    }

    // ---- Records in force -------------------------------------------------

    /// Stores a record in force: its wire bytes, the opened body of a sealed
    /// record, and its place among the room's sealed records.
    fn put_record(
        &mut self,
        signed: &SignedRecord,
        room_owner: Option<&UserId>,
    ) -> Result<(), StorageError> {
        let id = signed.id();
        self.records
            .insert(id.0.as_slice(), signed.to_bytes().as_slice())?;
        if signed.is_opened() {
            let inner = postcard::to_allocvec(&signed.record().body)
                .map_err(|e| StorageError(format!("cannot encode an opened record: {e}")))?;
            self.opened.insert(id.0.as_slice(), inner.as_slice())?;
        }
        if signed.is_sealed()
            && let Some(room) = signed.record().room()
        {
            // The rank depends only on what anyone sees of the record, so a
            // member and a non-member list it alike.
            let rank = if Some(&signed.record().author) == room_owner {
                RANK_SEALED_OWNER
            } else {
                RANK_SEALED
            };
            self.sealed_in_room
                .insert(keys::room_record(&room, &id).as_slice(), rank)?;
        }
        Ok(())
    }

    /// Removes a record in force from `records` and from the tables that
    /// describe it as a record; the caller removes it from its kind's index.
    fn remove_record(&mut self, id: &RecordId) -> Result<Option<SignedRecord>, StorageError> {
        let Some(bytes) = self
            .records
            .remove(id.0.as_slice())?
            .map(|v| v.value().to_vec())
        else {
            return Ok(None);
        };
        let inner = self
            .opened
            .remove(id.0.as_slice())?
            .map(|v| v.value().to_vec());
        let outer = decode_stored(&bytes)?;
        if let Body::Sealed(s) = &outer.record().body {
            self.sealed_in_room
                .remove(keys::room_record(&s.room, id).as_slice())?;
            let author = outer.record().author;
            let k = keys::by_user(&s.room, &author, outer.record().hlc, id);
            if self.unopened.remove(k.as_slice())?.is_some() {
                self.add_count(&keys::count_unopened(&s.room, &author), -1)?;
            }
        }
        match inner {
            Some(inner) => SignedRecord::decode_opened_trusted(&bytes, &inner)
                .map(Some)
                .map_err(|e| StorageError(format!("damaged opened record in the store: {e}"))),
            None => Ok(Some(outer)),
        }
    }

    fn load(&self, id: &RecordId) -> Result<SignedRecord, StorageError> {
        let v = self
            .records
            .get(id.0.as_slice())?
            .ok_or_else(|| StorageError(format!("index points at missing record {id}")))?;
        decode_with_opened(&id.0, v.value(), &self.opened)
    }

    fn load_wire(&self, id: &RecordId) -> Result<SignedRecord, StorageError> {
        let v = self
            .records
            .get(id.0.as_slice())?
            .ok_or_else(|| StorageError(format!("index points at missing record {id}")))?;
        decode_stored(v.value())
    }

    pub(crate) fn room_info(&self, room: &RoomId) -> Result<Option<RoomInfo>, StorageError> {
        if let Some(info) = self.room_cache.borrow().get(room) {
            return Ok(*info);
        }
        let key = keys::entity(&EntityKey::Room(*room)).unwrap_or_default();
        let info = match self.entities.get(key.as_slice())? {
            None => None,
            Some(v) => {
                let id = keys::record_id(v.value()).ok_or_else(|| damaged("entity"))?;
                Some(room_info_from(*room, &self.load(&id)?))
            }
        };
        let mut cache = self.room_cache.borrow_mut();
        if cache.len() >= KEY_CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(*room, info);
        Ok(info)
    }

    fn count(&self, key: &[u8]) -> Result<u64, StorageError> {
        Ok(self.counts.get(key)?.map(|v| v.value()).unwrap_or(0))
    }

    fn add_count(&mut self, key: &[u8], delta: i64) -> Result<(), StorageError> {
        let n = self.count(key)?.saturating_add_signed(delta);
        if n == 0 {
            self.counts.remove(key)?;
        } else {
            self.counts.insert(key, n)?;
        }
        Ok(())
    }

    // ---- Membership -------------------------------------------------------

    pub(crate) fn member_history(
        &self,
        room: &RoomId,
        user: &UserId,
    ) -> Result<Vec<MemberEntry>, StorageError> {
        let prefix = keys::member_prefix(room, Some(user));
        let mut out = Vec::new();
        for row in self.members.range(prefix.as_slice()..)? {
            let (k, v) = row?;
            if !k.value().starts_with(&prefix) {
                break;
            }
            out.push(decode_member_value(k.value(), v.value())?);
        }
        Ok(out)
    }

    fn cutoff_windows(
        &self,
        room: &RoomId,
        user: &UserId,
    ) -> Result<Vec<CutoffWindow>, StorageError> {
        let prefix = keys::room_user(room, user);
        let mut out = Vec::new();
        for row in self.cutoffs.range(prefix.as_slice()..)? {
            let (k, v) = row?;
            if !k.value().starts_with(&prefix) {
                break;
            }
            let at = keys::hlc(k.value().get(48..).unwrap_or_default())
                .ok_or_else(|| damaged("cutoff"))?;
            out.push(CutoffWindow {
                after: Hlc(v.value()),
                at,
            });
        }
        Ok(out)
    }

    fn apply_member(
        &mut self,
        signed: SignedRecord,
        info: &RoomInfo,
        changes: &mut Vec<Change>,
    ) -> Step {
        let Body::Member(m) = &signed.record().body else {
            return Err(StorageError("apply_member on another kind".into()));
        };
        let (room, user) = (m.room, m.user);
        let id = signed.id();
        let hlc = signed.record().hlc;
        let by_owner = signed.record().author == info.owner;
        let entry = MemberEntry {
            hlc,
            id,
            by_owner,
            role: m.role,
            state: m.state,
        };
        let history = self.member_history(&room, &user)?;
        let mut evicted = None;
        if !by_owner {
            let own: Vec<&MemberEntry> = history.iter().filter(|e| !e.by_owner).collect();
            if own.len() >= self.config().max_self_member_records {
                match own.iter().min_by_key(|e| (e.hlc, e.id)) {
                    Some(oldest) if (oldest.hlc, oldest.id) < (hlc, id) => {
                        evicted = Some(**oldest);
                    }
                    _ => return Ok(Ok(Applied::Dropped(DropReason::SelfMemberRecords))),
                }
            }
        }
        self.members.insert(
            keys::member(&room, &user, hlc, &id).as_slice(),
            encode_member_value(&entry).as_slice(),
        )?;
        self.user_rooms
            .insert(keys::user_room(&user, &room).as_slice(), ())?;
        self.put_record(&signed, Some(&info.owner))?;
        if let Some(old) = evicted {
            self.remove_member_entry(&room, &user, &old)?;
        }
        if by_owner {
            self.forget_request(&room, &user)?;
        } else if !history.iter().any(|e| e.by_owner) {
            self.note_request(&room, &user, hlc, &id)?;
            if info.settings.join_policy == JoinPolicy::Invite
                && self.enforce_request_cap(info)?.contains(&user)
                && self.records.get(id.0.as_slice())?.is_none()
            {
                return Ok(Ok(Applied::Dropped(DropReason::JoinRequests)));
            }
        }
        // Entries waiting for this user's membership may pass now; stored
        // ones dated after this record may not any more.
        self.release(Waiting::Membership(room, user))?;
        self.release(Waiting::Standing(user))?;
        let from = evicted.map_or(hlc, |e| e.hlc.min(hlc));
        self.rejudge_user(info, &user, from)?;
        changes.push(change(
            EntityKey::Member(room, user),
            ChangeKind::Updated,
            signed,
        ));
        Ok(Ok(Applied::Stored))
    }

    fn remove_member_entry(
        &mut self,
        room: &RoomId,
        user: &UserId,
        e: &MemberEntry,
    ) -> Result<(), StorageError> {
        self.members
            .remove(keys::member(room, user, e.hlc, &e.id).as_slice())?;
        self.remove_record(&e.id)?;
        Ok(())
    }

    fn note_request(
        &mut self,
        room: &RoomId,
        user: &UserId,
        hlc: Hlc,
        id: &RecordId,
    ) -> Result<(), StorageError> {
        let key = keys::room_user(room, user);
        let current = self
            .join_requests
            .get(key.as_slice())?
            .map(|v| v.value().to_vec());
        if let Some(cur) = &current {
            let (Some(cur_hlc), Some(cur_id)) = (
                keys::hlc(cur),
                keys::record_id(cur.get(8..).unwrap_or_default()),
            ) else {
                return Err(damaged("join request"));
            };
            if (cur_hlc, cur_id) >= (hlc, *id) {
                return Ok(());
            }
            self.join_requests_by_age
                .remove(keys::request_age(room, cur_hlc, &cur_id, user).as_slice())?;
        }
        let value = keys::cat(&[&hlc.to_be_bytes(), &id.0]);
        self.join_requests
            .insert(key.as_slice(), value.as_slice())?;
        self.join_requests_by_age
            .insert(keys::request_age(room, hlc, id, user).as_slice(), ())?;
        Ok(())
    }

    fn forget_request(&mut self, room: &RoomId, user: &UserId) -> Result<(), StorageError> {
        let key = keys::room_user(room, user);
        let Some(cur) = self
            .join_requests
            .remove(key.as_slice())?
            .map(|v| v.value().to_vec())
        else {
            return Ok(());
        };
        let (Some(hlc), Some(id)) = (
            keys::hlc(&cur),
            keys::record_id(cur.get(8..).unwrap_or_default()),
        ) else {
            return Err(damaged("join request"));
        };
        self.join_requests_by_age
            .remove(keys::request_age(room, hlc, &id, user).as_slice())?;
        Ok(())
    }

    /// Keeps the room's newest `max_join_requests` join requests: older
    /// requesters lose their own Member records. Returns who lost them.
    fn enforce_request_cap(&mut self, info: &RoomInfo) -> Result<Vec<UserId>, StorageError> {
        let cap = self.config().max_join_requests;
        let mut evicted = Vec::new();
        loop {
            let mut oldest = None;
            let mut n = 0usize;
            for row in self.join_requests_by_age.range(info.id.0.as_slice()..)? {
                let (k, _) = row?;
                let k = k.value();
                if !k.starts_with(&info.id.0) {
                    break;
                }
                if n == 0 {
                    oldest = Some(
                        keys::user_id(k.get(16 + 8 + 32..).unwrap_or_default())
                            .ok_or_else(|| damaged("join request"))?,
                    );
                }
                n += 1;
                if n > cap {
                    break;
                }
            }
            match oldest {
                Some(user) if n > cap => {
                    self.evict_requester(info, &user)?;
                    evicted.push(user);
                }
                _ => return Ok(evicted),
            }
        }
    }

    /// Removes every Member record of a user the owner never spoke about.
    fn evict_requester(&mut self, info: &RoomInfo, user: &UserId) -> Result<(), StorageError> {
        for e in self.member_history(&info.id, user)? {
            self.remove_member_entry(&info.id, user, &e)?;
        }
        self.user_rooms
            .remove(keys::user_room(user, &info.id).as_slice())?;
        self.forget_request(&info.id, user)?;
        self.rejudge_user(info, user, Hlc::ZERO)?;
        self.drop_profile_without_standing(user)
    }

    // ---- The log ----------------------------------------------------------

    fn apply_log(
        &mut self,
        signed: SignedRecord,
        info: &RoomInfo,
        changes: &mut Vec<Change>,
    ) -> Step {
        let author = signed.record().author;
        let hlc = signed.record().hlc;
        let id = signed.id();
        if author != info.owner {
            let history = self.member_history(&info.id, &author)?;
            let cutoffs = self.cutoff_windows(&info.id, &author)?;
            if rules::check_log_author(&author, hlc, info, &history, &cutoffs).is_err() {
                return self.park_log(&signed, info, &history);
            }
        }
        self.logs
            .insert(keys::log(&info.id, hlc, &id).as_slice(), ())?;
        self.index_log(&info.id, &author, hlc, &id, 1)?;
        // The by-author index serves rejudging and removals, neither of
        // which ever concerns the owner: the owner's entries (the bulk of
        // many rooms' logs) skip it.
        if author != info.owner {
            self.log_authors
                .insert(keys::by_user(&info.id, &author, hlc, &id).as_slice(), ())?;
        }
        self.put_record(&signed, Some(&info.owner))?;
        changes.push(change(EntityKey::Log(id), ChangeKind::Created, signed));
        Ok(Ok(Applied::Stored))
    }

    /// A log entry its author may not have written (as far as this store
    /// knows) waits for a membership record, in a small group per author.
    fn park_log(
        &mut self,
        signed: &SignedRecord,
        info: &RoomInfo,
        history: &[MemberEntry],
    ) -> Step {
        let author = signed.record().author;
        // An invitee whose own join is not here yet: their entries are ahead
        // of it (a catch-up may list it after them), so a larger group
        // waits. The group's cap depends on the author's history alone, not
        // on the entry, so which entries wait does not depend on their order.
        let invited = membership(info.settings.join_policy, history, None) == Membership::Invited;
        let cap = if invited {
            self.config().max_waiting_logs_invited
        } else {
            self.config().max_waiting_logs
        };
        self.park_capped(
            signed,
            Waiting::Membership(info.id, author),
            cap,
            DropReason::WaitingLogs,
        )
    }

    /// Moves the user's stored log entries dated at or after `from` that no
    /// longer pass the rules back to the pending set.
    fn rejudge_user(
        &mut self,
        info: &RoomInfo,
        user: &UserId,
        from: Hlc,
    ) -> Result<(), StorageError> {
        if *user == info.owner {
            return Ok(());
        }
        let history = self.member_history(&info.id, user)?;
        let cutoffs = self.cutoff_windows(&info.id, user)?;
        let prefix = keys::room_user(&info.id, user);
        let start = keys::cat(&[&prefix, &from.to_be_bytes()]);
        let mut failing = Vec::new();
        for row in self.log_authors.range(start.as_slice()..)? {
            let (k, _) = row?;
            let k = k.value();
            if !k.starts_with(&prefix) {
                break;
            }
            let hlc = keys::hlc(k.get(48..).unwrap_or_default()).ok_or_else(|| damaged("log"))?;
            let id =
                keys::record_id(k.get(56..).unwrap_or_default()).ok_or_else(|| damaged("log"))?;
            if rules::check_log_author(user, hlc, info, &history, &cutoffs).is_err() {
                failing.push((hlc, id));
            }
        }
        for (hlc, id) in failing {
            self.logs.remove(keys::log(&info.id, hlc, &id).as_slice())?;
            self.index_log(&info.id, user, hlc, &id, -1)?;
            self.log_authors
                .remove(keys::by_user(&info.id, user, hlc, &id).as_slice())?;
            let record = self.load_wire(&id)?;
            self.remove_record(&id)?;
            // Dropped at the cap: then it is gone here until offered again.
            let _ = self.park_log(&record, info, &history)?;
        }
        Ok(())
    }

    /// The join policy changed (or the room was deleted): every author's
    /// entries are judged again, waiting ones may pass, and the join
    /// request cap applies if the room is now invite-only.
    fn rejudge_room(&mut self, info: &RoomInfo) -> Result<(), StorageError> {
        if info.settings.join_policy == JoinPolicy::Invite {
            self.enforce_request_cap(info)?;
        }
        let mut authors = HashSet::new();
        for row in self.log_authors.range(info.id.0.as_slice()..)? {
            let (k, _) = row?;
            let k = k.value();
            if !k.starts_with(&info.id.0) {
                break;
            }
            authors.insert(
                keys::user_id(k.get(16..).unwrap_or_default()).ok_or_else(|| damaged("log"))?,
            );
        }
        let mut authors: Vec<UserId> = authors.into_iter().collect();
        authors.sort();
        for a in authors {
            self.rejudge_user(info, &a, Hlc::ZERO)?;
        }
        self.release_prefix(
            &keys::membership_waits_of_room(&info.id),
            keys::MEMBERSHIP_WAIT_LEN,
        )
    }

    fn apply_cutoff(
        &mut self,
        signed: SignedRecord,
        info: &RoomInfo,
        changes: &mut Vec<Change>,
    ) -> Step {
        let Body::Cutoff(c) = &signed.record().body else {
            return Err(StorageError("apply_cutoff on another kind".into()));
        };
        let (user, after) = (c.user, c.after);
        let id = signed.id();
        self.cutoffs.insert(
            keys::by_user(&info.id, &user, signed.record().hlc, &id).as_slice(),
            after.0,
        )?;
        self.put_record(&signed, Some(&info.owner))?;
        self.rejudge_user(info, &user, after)?;
        changes.push(change(
            EntityKey::Cutoff(info.id, user),
            ChangeKind::Updated,
            signed,
        ));
        Ok(Ok(Applied::Stored))
    }

    // ---- Keys -------------------------------------------------------------

    fn apply_grant(
        &mut self,
        signed: SignedRecord,
        info: &RoomInfo,
        changes: &mut Vec<Change>,
    ) -> Step {
        let Body::KeyGrant(g) = &signed.record().body else {
            return Err(StorageError("apply_grant on another kind".into()));
        };
        let g = g.clone();
        let id = signed.id();
        self.grants
            .insert(keys::grant(&info.id, g.epoch, &id).as_slice(), ())?;
        self.put_record(&signed, Some(&info.owner))?;
        let outbox = self.ctx.outbox;
        if let Some(recipients) = outbox.recipients(&id) {
            for u in recipients {
                self.granted
                    .insert(keys::granted(&info.id, g.epoch, u).as_slice(), ())?;
            }
        }
        let held = self.held_keys(&info.id)?.key.map(|k| k.epoch());
        if held.is_none_or(|h| h < g.epoch) {
            let ctx_unlocked = self.ctx.unlocked;
            if let Some(owner) = ctx_unlocked.get(&info.owner) {
                // The owner derives the key itself, and checks its own grant.
                let chain = RoomChain::derive(owner, &info.id);
                let key = chain
                    .epoch_key(g.epoch)
                    .map_err(|e| StorageError(format!("cannot derive a room key: {e}")))?;
                if key.relay_commit() == g.relay_commit {
                    self.install_key(&info.id, key, Some(chain.locator()))?;
                }
            } else {
                let mut opened = None;
                for user in sorted_keys(ctx_unlocked) {
                    if let Some(found) = g.open(user) {
                        opened = Some(found);
                        break;
                    }
                }
                if let Some((key, locator)) = opened {
                    self.install_key(&info.id, key, Some(locator))?;
                }
            }
        }
        changes.push(change(EntityKey::Grant(id), ChangeKind::Created, signed));
        Ok(Ok(Applied::Stored))
    }

    pub(crate) fn held_keys(&self, room: &RoomId) -> Result<HeldKeys, StorageError> {
        match self.room_keys.get(room.0.as_slice())? {
            None => Ok(HeldKeys::default()),
            Some(v) => decode_held(room, v.value()),
        }
    }

    /// Holds `key` if it is newer than the key held (and `locator`, which
    /// comes with a key from the owner, replacing any other), then opens the
    /// sealed records it can.
    pub(crate) fn install_key(
        &mut self,
        room: &RoomId,
        key: RoomKey,
        locator: Option<LocatorSecret>,
    ) -> Result<(), StorageError> {
        let mut held = self.held_keys(room)?;
        let newer = held.key.as_ref().is_none_or(|k| k.epoch() < key.epoch());
        let locator_changes = locator.is_some() && locator != held.locator;
        if !newer && !locator_changes {
            return Ok(());
        }
        let epoch = key.epoch();
        if newer {
            held.key = Some(key);
        }
        if let Some(l) = locator {
            self.set_locator(room, &mut held, l)?;
        }
        self.room_keys
            .insert(room.0.as_slice(), encode_held(&held).as_slice())?;
        self.key_cache.retain(|(r, _), _| r != room);
        if newer {
            self.open_waiting(room, epoch)?;
        }
        Ok(())
    }

    /// Records a locator for `room` (in `held`, which the caller writes) and
    /// indexes it.
    pub(crate) fn set_locator(
        &mut self,
        room: &RoomId,
        held: &mut HeldKeys,
        locator: LocatorSecret,
    ) -> Result<(), StorageError> {
        if let Some(old) = &held.locator {
            self.locators.remove(old.id().0.as_slice())?;
        }
        self.locators
            .insert(locator.id().0.as_slice(), room.0.as_slice())?;
        held.locator = Some(locator);
        Ok(())
    }

    pub(crate) fn write_held(
        &mut self,
        room: &RoomId,
        held: &HeldKeys,
    ) -> Result<(), StorageError> {
        self.room_keys
            .insert(room.0.as_slice(), encode_held(held).as_slice())?;
        Ok(())
    }

    /// The room's key of `epoch`, if this store holds it or a newer one.
    fn key_for(&mut self, room: &RoomId, epoch: u32) -> Result<Option<RoomKey>, StorageError> {
        if let Some(k) = self.key_cache.get(&(*room, epoch)) {
            return Ok(Some(k.clone()));
        }
        let Some(held) = self.held_keys(room)?.key else {
            return Ok(None);
        };
        if held.epoch() < epoch {
            return Ok(None);
        }
        let key = held
            .older(epoch)
            .map_err(|e| StorageError(format!("cannot derive a room key: {e}")))?;
        if self.key_cache.len() >= KEY_CACHE_LIMIT {
            self.key_cache.clear();
        }
        self.key_cache.insert((*room, epoch), key.clone());
        Ok(Some(key))
    }

    /// Takes the room's sealed records held unopened whose epoch `upto`
    /// opens out of the unopened set, to be applied next.
    fn open_waiting(&mut self, room: &RoomId, upto: u32) -> Result<(), StorageError> {
        let mut ids = Vec::new();
        for row in self.unopened.range(room.0.as_slice()..)? {
            let (k, v) = row?;
            let k = k.value();
            if !k.starts_with(&room.0) {
                break;
            }
            if v.value() <= upto {
                ids.push(
                    keys::record_id(k.get(56..).unwrap_or_default())
                        .ok_or_else(|| damaged("unopened"))?,
                );
            }
        }
        for id in ids {
            if let Some(r) = self.remove_record(&id)? {
                self.released.push(r);
            }
        }
        Ok(())
    }

    /// For an unlocked owner: the key of the room's current epoch (the
    /// newest granted, 0 before any grant) and its locator, from its chain.
    pub(crate) fn ensure_owner_keys(
        &mut self,
        room: &RoomId,
        owner: &UserKey,
    ) -> Result<(), StorageError> {
        let epoch = self.current_epoch(room)?.unwrap_or(0);
        let held = self.held_keys(room)?;
        if held.key.as_ref().is_some_and(|k| k.epoch() >= epoch) && held.locator.is_some() {
            return Ok(());
        }
        let chain = RoomChain::derive(owner, room);
        let key = chain
            .epoch_key(epoch)
            .map_err(|e| StorageError(format!("cannot derive a room key: {e}")))?;
        self.install_key(room, key, Some(chain.locator()))
    }

    /// The newest epoch granted in the room, if any grant is here.
    pub(crate) fn current_epoch(&self, room: &RoomId) -> Result<Option<u32>, StorageError> {
        let end = keys::cat(&[&room.0, &[0xff; 4 + 32]]);
        let last = self
            .grants
            .range(room.0.as_slice()..=end.as_slice())?
            .next_back()
            .transpose()?;
        match last {
            None => Ok(None),
            Some((k, _)) => Ok(Some(
                keys::epoch(k.value().get(16..).unwrap_or_default())
                    .ok_or_else(|| damaged("grant"))?,
            )),
        }
    }

    /// Opens the grants held here for `user`, newest epoch first per room,
    /// where the store holds no key that new.
    pub(crate) fn open_grants_for(&mut self, user: &UserKey) -> Result<(), StorageError> {
        let mut by_room: HashMap<RoomId, Vec<(u32, RecordId)>> = HashMap::new();
        for row in self.grants.iter()? {
            let (k, _) = row?;
            let k = k.value();
            let room = keys::room_id(k).ok_or_else(|| damaged("grant"))?;
            let epoch =
                keys::epoch(k.get(16..).unwrap_or_default()).ok_or_else(|| damaged("grant"))?;
            let id =
                keys::record_id(k.get(20..).unwrap_or_default()).ok_or_else(|| damaged("grant"))?;
            by_room.entry(room).or_default().push((epoch, id));
        }
        let mut rooms: Vec<_> = by_room.into_iter().collect();
        rooms.sort_by_key(|(r, _)| *r);
        for (room, mut grants) in rooms {
            grants.sort_by(|a, b| b.cmp(a));
            let held = self.held_keys(&room)?.key.map(|k| k.epoch());
            for (epoch, id) in grants {
                if held.is_some_and(|h| h >= epoch) {
                    break;
                }
                let Body::KeyGrant(g) = self.load_wire(&id)?.record().body.clone() else {
                    return Err(damaged("grant"));
                };
                if let Some((key, locator)) = g.open(user) {
                    self.install_key(&room, key, Some(locator))?;
                    break;
                }
            }
        }
        Ok(())
    }

    fn store_unopened(
        &mut self,
        signed: SignedRecord,
        room: RoomId,
        epoch: u32,
        info: &RoomInfo,
    ) -> Step {
        let author = signed.record().author;
        let hlc = signed.record().hlc;
        let id = signed.id();
        let count_key = keys::count_unopened(&room, &author);
        if self.count(&count_key)? as usize >= self.config().max_sealed_per_author {
            let prefix = keys::room_user(&room, &author);
            let oldest = self
                .unopened
                .range(prefix.as_slice()..)?
                .next()
                .transpose()?
                .map(|(k, _)| k.value().to_vec())
                .filter(|k| k.starts_with(&prefix));
            let oldest = match oldest {
                Some(k) => Some((
                    keys::hlc(k.get(48..).unwrap_or_default())
                        .ok_or_else(|| damaged("unopened"))?,
                    keys::record_id(k.get(56..).unwrap_or_default())
                        .ok_or_else(|| damaged("unopened"))?,
                )),
                None => None,
            };
            match oldest {
                Some((o_hlc, o_id)) if (o_hlc, o_id) < (hlc, id) => {
                    self.remove_record(&o_id)?;
                }
                _ => return Ok(Ok(Applied::Dropped(DropReason::SealedBacklog))),
            }
        }
        self.unopened
            .insert(keys::by_user(&room, &author, hlc, &id).as_slice(), epoch)?;
        self.add_count(&count_key, 1)?;
        self.put_record(&signed, Some(&info.owner))?;
        Ok(Ok(Applied::Sealed))
    }

    // ---- Profiles ---------------------------------------------------------

    /// Whether `user` has a standing here: a Member record about them in a
    /// room held here, a room of theirs held here, or they are unlocked.
    pub(crate) fn has_standing(&self, user: &UserId) -> Result<bool, StorageError> {
        if self.ctx.unlocked.contains_key(user) {
            return Ok(true);
        }
        for t in [&self.user_rooms, &self.owned] {
            if let Some(row) = t.range(user.0.as_slice()..)?.next() {
                let (k, _) = row?;
                if k.value().starts_with(&user.0) {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    fn apply_profile(&mut self, signed: SignedRecord, changes: &mut Vec<Change>) -> Step {
        let Body::Profile(p) = &signed.record().body else {
            return Err(StorageError("apply_profile on another kind".into()));
        };
        let user = p.user;
        if !self.has_standing(&user)? {
            let cap = self.config().max_waiting_profiles;
            return self.park_capped(
                &signed,
                Waiting::Standing(user),
                cap,
                DropReason::WaitingProfiles,
            );
        }
        let key = keys::entity(&EntityKey::Profile(user)).unwrap_or_default();
        if self.entities.get(key.as_slice())?.is_none()
            && self.count(keys::COUNT_PROFILES)? as usize >= self.config().max_profiles
        {
            return Ok(Ok(Applied::Dropped(DropReason::Profiles)));
        }
        self.last_writer_wins(signed, None, changes)
    }

    /// A user without a standing any more: their profile goes back to
    /// waiting for one.
    fn drop_profile_without_standing(&mut self, user: &UserId) -> Result<(), StorageError> {
        if self.has_standing(user)? {
            return Ok(());
        }
        let key = keys::entity(&EntityKey::Profile(*user)).unwrap_or_default();
        let Some(id) = self
            .entities
            .remove(key.as_slice())?
            .map(|v| v.value().to_vec())
        else {
            return Ok(());
        };
        self.add_count(keys::COUNT_PROFILES, -1)?;
        let id = keys::record_id(&id).ok_or_else(|| damaged("entity"))?;
        if let Some(record) = self.remove_record(&id)? {
            let cap = self.config().max_waiting_profiles;
            let _ = self.park_capped(
                &record,
                Waiting::Standing(*user),
                cap,
                DropReason::WaitingProfiles,
            )?;
        }
        Ok(())
    }

    // ---- Last writer wins -------------------------------------------------

    fn last_writer_wins(
        &mut self,
        signed: SignedRecord,
        room_owner: Option<UserId>,
        changes: &mut Vec<Change>,
    ) -> Step {
        let entity = signed.entity();
        let Some(key) = keys::entity(&entity) else {
            return Err(StorageError(format!(
                "{entity:?} is not a last-writer-wins entity"
            )));
        };
        let rec = signed.record();
        let new = Version {
            hlc: rec.hlc,
            tombstone: rec.is_tombstone(),
            id: signed.id(),
        };
        let current = match self.entities.get(key.as_slice())? {
            None => None,
            Some(v) => Some(keys::record_id(v.value()).ok_or_else(|| damaged("entity"))?),
        };
        let mut kind = if new.tombstone {
            ChangeKind::Deleted
        } else {
            ChangeKind::Created
        };
        let mut old_policy = None;
        if let Some(cur_id) = current {
            let cur = self.load(&cur_id)?;
            let cur_v = Version {
                hlc: cur.record().hlc,
                tombstone: cur.record().is_tombstone(),
                id: cur_id,
            };
            if !new.beats(&cur_v) {
                return Ok(Ok(Applied::Superseded));
            }
            if let EntityKey::Room(room_id) = entity {
                old_policy = Some(room_info_from(room_id, &cur).settings.join_policy);
            }
            self.remove_record(&cur_id)?;
            if !new.tombstone && !cur_v.tombstone {
                kind = ChangeKind::Updated;
            }
        }
        let id = signed.id();
        let owner = signed.record().author;
        self.entities.insert(key.as_slice(), id.0.as_slice())?;
        if let EntityKey::Room(room_id) = entity {
            self.room_cache.get_mut().remove(&room_id);
        }
        self.put_record(&signed, room_owner.as_ref())?;
        match entity {
            EntityKey::Room(room_id) => {
                let info = room_info_from(room_id, &signed);
                if current.is_none() {
                    // The first version of a room lets in what waited for it,
                    // and gives its owner a standing.
                    self.owned
                        .insert(keys::user_room(&owner, &room_id).as_slice(), ())?;
                    self.release(Waiting::Room(room_id))?;
                    self.release(Waiting::Standing(owner))?;
                }
                if old_policy.is_some_and(|p| p != info.settings.join_policy) {
                    self.rejudge_room(&info)?;
                }
                // An unlocked owner holds its rooms' keys whatever their
                // policy or version: which sealed records it opens must not
                // depend on which version of the room came first.
                let ctx_unlocked = self.ctx.unlocked;
                if let Some(owner_key) = ctx_unlocked.get(&owner) {
                    self.ensure_owner_keys(&room_id, owner_key)?;
                }
            }
            EntityKey::Profile(_) if current.is_none() => {
                self.add_count(keys::COUNT_PROFILES, 1)?;
            }
            _ => {}
        }
        changes.push(change(entity, kind, signed));
        Ok(Ok(Applied::Stored))
    }

    // ---- The pending set --------------------------------------------------

    /// Puts a record in the pending set until `waiting` is satisfied,
    /// bounded by the pending limit alone (records waiting for their room).
    fn park(&mut self, signed: &SignedRecord, waiting: Waiting) -> Step {
        if self.pending_ids.get(signed.id().0.as_slice())?.is_some() {
            return Ok(Ok(Applied::Pending(waiting)));
        }
        self.insert_pending(signed, &waiting.key(), None)?;
        Ok(Ok(Applied::Pending(waiting)))
    }

    /// Puts a record in the pending set in a capped group: past `cap`, the
    /// group keeps its newest by (HLC, id), and an older record is dropped.
    fn park_capped(
        &mut self,
        signed: &SignedRecord,
        waiting: Waiting,
        cap: usize,
        reason: DropReason,
    ) -> Step {
        let id = signed.id();
        if self.pending_ids.get(id.0.as_slice())?.is_some() {
            return Ok(Ok(Applied::Pending(waiting)));
        }
        let wait = waiting.key();
        let Some(group) = keys::cap_group(&wait) else {
            return Err(StorageError("a capped wait without a group".into()));
        };
        let hlc = signed.record().hlc;
        if self.count(&keys::count_waiting(&group))? as usize >= cap {
            let oldest = self
                .pending_order
                .range(group.as_slice()..)?
                .next()
                .transpose()?
                .filter(|(k, _)| k.value().starts_with(&group))
                .map(|(k, v)| (k.value().to_vec(), v.value()));
            match oldest {
                Some((k, seq))
                    if k.as_slice() < keys::pending_order(&group, hlc, &id).as_slice() =>
                {
                    self.remove_pending(seq)?;
                }
                _ => return Ok(Ok(Applied::Dropped(reason))),
            }
        }
        self.insert_pending(signed, &wait, Some(&group))?;
        Ok(Ok(Applied::Pending(waiting)))
    }

    fn insert_pending(
        &mut self,
        signed: &SignedRecord,
        wait: &[u8],
        group: Option<&[u8]>,
    ) -> Result<(), StorageError> {
        let id = signed.id();
        let seq = match self.meta.get("pending_seq")? {
            Some(v) => u64::from_be_bytes(v.value().try_into().unwrap_or([0; 8])),
            None => 0,
        } + 1;
        self.meta
            .insert("pending_seq", seq.to_be_bytes().as_slice())?;
        let mut value = Vec::with_capacity(1 + wait.len() + signed.wire_len());
        value.push(wait.len() as u8);
        value.extend_from_slice(wait);
        value.extend_from_slice(&signed.to_bytes());
        self.pending.insert(seq, value.as_slice())?;
        self.pending_by_wait
            .insert(keys::cat(&[wait, &seq.to_be_bytes()]).as_slice(), ())?;
        self.pending_ids.insert(id.0.as_slice(), seq)?;
        if let Some(group) = group {
            self.pending_order.insert(
                keys::pending_order(group, signed.record().hlc, &id).as_slice(),
                seq,
            )?;
            self.add_count(&keys::count_waiting(group), 1)?;
        }
        while self.pending.len()? > self.config().pending_limit.max(1) as u64 {
            let Some(oldest) = self.pending.first()?.map(|(k, _)| k.value()) else {
                break;
            };
            tracing::debug!(
                seq = oldest,
                "pending set full: dropping the oldest waiting record"
            );
            self.remove_pending(oldest)?;
        }
        Ok(())
    }

    /// Removes pending entry `seq` everywhere and returns its record.
    fn remove_pending(&mut self, seq: u64) -> Result<Option<SignedRecord>, StorageError> {
        let Some(value) = self.pending.remove(seq)?.map(|v| v.value().to_vec()) else {
            return Ok(None);
        };
        let wait_len = usize::from(*value.first().unwrap_or(&0));
        let wait = value.get(1..1 + wait_len).unwrap_or_default();
        self.pending_by_wait
            .remove(keys::cat(&[wait, &seq.to_be_bytes()]).as_slice())?;
        let record = decode_stored(value.get(1 + wait_len..).unwrap_or_default())?;
        self.pending_ids.remove(record.id().0.as_slice())?;
        if let Some(group) = keys::cap_group(wait) {
            let k = keys::pending_order(&group, record.record().hlc, &record.id());
            if self.pending_order.remove(k.as_slice())?.is_some() {
                self.add_count(&keys::count_waiting(&group), -1)?;
            }
        }
        Ok(Some(record))
    }

    /// Moves everything waiting for `waiting` out of the pending set, to be
    /// applied after the current record.
    pub(crate) fn release(&mut self, waiting: Waiting) -> Result<(), StorageError> {
        let prefix = waiting.key();
        let len = prefix.len();
        self.release_prefix(&prefix, len)
    }

    /// Releases every pending entry whose wait key starts with `prefix` and
    /// is `wait_len` bytes long.
    fn release_prefix(&mut self, prefix: &[u8], wait_len: usize) -> Result<(), StorageError> {
        let mut seqs = Vec::new();
        for row in self.pending_by_wait.range(prefix..)? {
            let (k, _) = row?;
            let k = k.value();
            if !k.starts_with(prefix) {
                break;
            }
            if k.len() != wait_len + 8 {
                continue;
            }
            seqs.push(u64::from_be_bytes(
                k[wait_len..].try_into().unwrap_or([0; 8]),
            ));
        }
        for seq in seqs {
            if let Some(r) = self.remove_pending(seq)? {
                self.released.push(r);
            }
        }
        Ok(())
    }

    /// Keeps the by-user log index and the log counts in step with `logs`:
    /// `delta` 1 for an entry stored, -1 for one taken out.
    fn index_log(
        &mut self,
        room: &RoomId,
        user: &UserId,
        hlc: Hlc,
        id: &RecordId,
        delta: i64,
    ) -> Result<(), StorageError> {
        let k = keys::by_user(room, user, hlc, id);
        if delta > 0 {
            self.log_users.insert(k.as_slice(), ())?;
        } else {
            self.log_users.remove(k.as_slice())?;
        }
        self.add_count(&keys::count_log(room, None), delta)?;
        self.add_count(&keys::count_log(room, Some(user)), delta)
    }

    // ---- Bookkeeping outside apply ---------------------------------------

    /// Builds the by-user log index and the log counts of a store made
    /// before them, from `logs` (once, when it is first opened).
    pub(crate) fn build_log_index(&mut self) -> Result<(), StorageError> {
        let mut entries = Vec::new();
        for row in self.logs.iter()? {
            let (k, _) = row?;
            let k = k.value();
            let room = keys::room_id(k).ok_or_else(|| damaged("log"))?;
            let hlc = keys::hlc(k.get(16..).unwrap_or_default()).ok_or_else(|| damaged("log"))?;
            let id =
                keys::record_id(k.get(24..).unwrap_or_default()).ok_or_else(|| damaged("log"))?;
            entries.push((room, hlc, id));
        }
        for (room, hlc, id) in entries {
            let author = self.load_wire(&id)?.record().author;
            if self
                .log_users
                .get(keys::by_user(&room, &author, hlc, &id).as_slice())?
                .is_none()
            {
                self.index_log(&room, &author, hlc, &id, 1)?;
            }
        }
        Ok(())
    }

    /// Sets a bookkeeping value in `meta`.
    pub(crate) fn set_meta(&mut self, key: &str, value: &[u8]) -> Result<(), StorageError> {
        self.meta.insert(key, value)?;
        Ok(())
    }

    /// Brings a store of schema 1 (before sealed rooms) up to date: builds
    /// the indexes that did not exist, then applies the bounds as if every
    /// record had arrived under them (stored-hidden log entries of
    /// non-members go back to waiting; caps are enforced).
    pub(crate) fn migrate_from_v1(&mut self) -> Result<(), StorageError> {
        let mut logs = Vec::new();
        for row in self.logs.iter()? {
            let (k, _) = row?;
            let k = k.value();
            let room = keys::room_id(k).ok_or_else(|| damaged("log"))?;
            let hlc = keys::hlc(k.get(16..).unwrap_or_default()).ok_or_else(|| damaged("log"))?;
            let id =
                keys::record_id(k.get(24..).unwrap_or_default()).ok_or_else(|| damaged("log"))?;
            logs.push((room, hlc, id));
        }
        for (room, hlc, id) in logs {
            let author = self.load_wire(&id)?.record().author;
            if self.room_info(&room)?.is_some_and(|i| i.owner != author) {
                self.log_authors
                    .insert(keys::by_user(&room, &author, hlc, &id).as_slice(), ())?;
            }
        }
        let mut rooms = Vec::new();
        let mut profiles = Vec::new();
        for row in self.entities.iter()? {
            let (k, v) = row?;
            let id = keys::record_id(v.value()).ok_or_else(|| damaged("entity"))?;
            match k.value().first() {
                Some(&keys::ROOM) => {
                    rooms.push(
                        keys::room_id(k.value().get(1..).unwrap_or_default())
                            .ok_or_else(|| damaged("entity"))?,
                    );
                }
                Some(&keys::PROFILE) => profiles.push(id),
                _ => {}
            }
        }
        for room in &rooms {
            if let Some(info) = self.room_info(room)? {
                self.owned
                    .insert(keys::user_room(&info.owner, room).as_slice(), ())?;
            }
        }
        self.add_count(keys::COUNT_PROFILES, profiles.len() as i64)?;
        let mut pending = Vec::new();
        for row in self.pending.iter()? {
            let (seq, v) = row?;
            pending.push((seq.value(), v.value().to_vec()));
        }
        for (seq, value) in pending {
            let wait_len = usize::from(*value.first().unwrap_or(&0));
            let wait = value.get(1..1 + wait_len).unwrap_or_default();
            if let Some(group) = keys::cap_group(wait) {
                let r = decode_stored(value.get(1 + wait_len..).unwrap_or_default())?;
                self.pending_order.insert(
                    keys::pending_order(&group, r.record().hlc, &r.id()).as_slice(),
                    seq,
                )?;
                self.add_count(&keys::count_waiting(&group), 1)?;
            }
        }
        for room in rooms {
            let Some(info) = self.room_info(&room)? else {
                continue;
            };
            let mut users: Vec<UserId> = Vec::new();
            for row in self.members.range(room.0.as_slice()..)? {
                let (k, _) = row?;
                if !k.value().starts_with(&room.0) {
                    break;
                }
                let u = keys::user_id(k.value().get(16..).unwrap_or_default())
                    .ok_or_else(|| damaged("membership"))?;
                if users.last() != Some(&u) {
                    users.push(u);
                }
            }
            for user in users {
                let mut history = self.member_history(&room, &user)?;
                history.sort_by_key(|e| std::cmp::Reverse((e.hlc, e.id)));
                let mut own = 0;
                for e in &history {
                    if e.by_owner {
                        continue;
                    }
                    own += 1;
                    if own > self.config().max_self_member_records {
                        self.remove_member_entry(&room, &user, e)?;
                    }
                }
                if !history.iter().any(|e| e.by_owner)
                    && let Some(newest) = history.first()
                {
                    self.note_request(&room, &user, newest.hlc, &newest.id)?;
                }
            }
            self.rejudge_room(&info)?;
        }
        for id in profiles {
            let Body::Profile(p) = self.load_wire(&id)?.record().body.clone() else {
                continue;
            };
            self.drop_profile_without_standing(&p.user)?;
        }
        self.meta.insert("schema", SCHEMA.as_bytes())?;
        Ok(())
    }
}

/// Unlocked users in id order, so which one opens a grant first does not
/// depend on a hash map's order.
fn sorted_keys(map: &HashMap<UserId, UserKey>) -> Vec<&UserKey> {
    let mut ids: Vec<&UserId> = map.keys().collect();
    ids.sort();
    ids.into_iter().filter_map(|id| map.get(id)).collect()
}

fn change(entity: EntityKey, kind: ChangeKind, record: SignedRecord) -> Change {
    Change {
        entity,
        kind,
        record: Arc::new(record),
    }
}
