//! The write path: rules, merge and indexes inside one write transaction.

use std::sync::Arc;

use redb::{ReadableTable, ReadableTableMetadata, Table, WriteTransaction};
use tincan_core::merge::{MemberEntry, Version};
use tincan_core::rules::{self, RoomInfo};
use tincan_core::{Body, EntityKey, RecordId, RoomId, RuleError, SignedRecord, UserId};

use crate::error::StorageError;
use crate::keys::{self, Waiting};
use crate::query::{decode_member_value, decode_stored, encode_member_value, room_info_from};
use crate::{
    Change, ChangeKind, ENTITIES, LOGS, MEMBERS, META, PENDING, PENDING_BY_WAIT, PENDING_IDS,
    RECORDS, StoreConfig, USER_ROOMS,
};

/// What applying a record did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Applied {
    /// Stored; it is now what queries show.
    Stored,
    /// Stored, but the rules keep it out of queries for now: a log entry by
    /// a user who, by the membership records known so far, was not a member
    /// when they wrote it. It shows up if membership records that admit it
    /// arrive; it stays stored so every node keeps the same set.
    StoredHidden(RuleError),
    /// Already here.
    Duplicate,
    /// Older than the version already here; dropped (the newer one wins everywhere).
    Superseded,
    /// Waits for a parent, in the bounded pending set.
    Pending(Waiting),
}

pub(crate) struct Tables<'txn> {
    meta: Table<'txn, &'static str, &'static [u8]>,
    records: Table<'txn, &'static [u8], &'static [u8]>,
    entities: Table<'txn, &'static [u8], &'static [u8]>,
    members: Table<'txn, &'static [u8], &'static [u8]>,
    user_rooms: Table<'txn, &'static [u8], ()>,
    logs: Table<'txn, &'static [u8], ()>,
    pending: Table<'txn, u64, &'static [u8]>,
    pending_by_wait: Table<'txn, &'static [u8], ()>,
    pending_ids: Table<'txn, &'static [u8], u64>,
    pending_limit: u64,
    /// Records released from the pending set, to apply next.
    released: Vec<SignedRecord>,
    /// Outcomes of released records, by id.
    released_outcomes: std::collections::HashMap<RecordId, Result<Applied, RuleError>>,
}

type Step = Result<Result<Applied, RuleError>, StorageError>;

impl<'txn> Tables<'txn> {
    pub(crate) fn open(
        txn: &'txn WriteTransaction,
        config: &StoreConfig,
    ) -> Result<Self, StorageError> {
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
            pending_limit: config.pending_limit.max(1) as u64,
            released: Vec::new(),
            released_outcomes: Default::default(),
        })
    }

    /// Applies `record`, then whatever was waiting for it.
    pub(crate) fn apply(&mut self, record: SignedRecord, changes: &mut Vec<Change>) -> Step {
        let first = self.apply_one(record, changes)?;
        // Records released from the pending set are applied in turn; each
        // release removes them from the set, so this ends.
        while let Some(r) = self.released.pop() {
            // It may go back to waiting (a log entry for its author's
            // membership); the batch reports what finally became of it.
            let id = r.id();
            let outcome = self.apply_one(r, changes)?;
            self.released_outcomes.insert(id, outcome);
        }
        Ok(first)
    }

    /// What became of a record that waited and was released during this
    /// transaction, if it was.
    pub(crate) fn released_outcome(&self, id: &RecordId) -> Option<Result<Applied, RuleError>> {
        self.released_outcomes.get(id).cloned()
    }

    fn apply_one(&mut self, signed: SignedRecord, changes: &mut Vec<Change>) -> Step {
        let id = signed.id();
        if self.records.get(id.0.as_slice())?.is_some() {
            return Ok(Ok(Applied::Duplicate));
        }
        let rec = signed.record();
        if let Err(e) = rules::check_standalone(rec) {
            return Ok(Err(e));
        }
        if matches!(rec.body, Body::Sealed(_) | Body::KeyGrant(_) | Body::Cutoff(_)) {
            return Ok(Err(RuleError::InvalidField {
                field: "kind",
                why: format!("this store does not take {} records yet", rec.body.kind()),
            }));
        }
        let room = match rec.parent_room() {
            None => None,
            Some(room_id) => match self.room_info(&room_id)? {
                None => return self.park(&signed, Waiting::Room(room_id)),
                Some(info) => {
                    if let Err(e) = rules::check_in_room(rec, &info) {
                        return Ok(Err(e));
                    }
                    Some(info)
                }
            },
        };
        self.note_hlc(rec.hlc)?;
        match (&rec.body, room) {
            (Body::Member(m), Some(info)) => {
                let (room_id, user) = (m.room, m.user);
                let entry = MemberEntry {
                    hlc: rec.hlc,
                    id,
                    by_owner: rec.author == info.owner,
                    role: m.role,
                    state: m.state,
                };
                self.members.insert(
                    keys::member(&room_id, &user, rec.hlc, &id).as_slice(),
                    encode_member_value(&entry).as_slice(),
                )?;
                self.user_rooms
                    .insert(keys::user_room(&user, &room_id).as_slice(), ())?;
                self.records
                    .insert(id.0.as_slice(), signed.to_bytes().as_slice())?;
                self.release(Waiting::Membership(room_id, user))?;
                changes.push(change(
                    EntityKey::Member(room_id, user),
                    ChangeKind::Updated,
                    signed,
                ));
                Ok(Ok(Applied::Stored))
            }
            (Body::RoomLog(_), Some(info)) => {
                let history = self.member_history(&info.id, &rec.author)?;
                if rec.author != info.owner && history.is_empty() {
                    return self.park(&signed, Waiting::Membership(info.id, rec.author));
                }
                self.logs
                    .insert(keys::log(&info.id, rec.hlc, &id).as_slice(), ())?;
                self.records
                    .insert(id.0.as_slice(), signed.to_bytes().as_slice())?;
                match rules::check_log_membership(rec, &info, &history, &[]) {
                    Ok(()) => {
                        changes.push(change(EntityKey::Log(id), ChangeKind::Created, signed));
                        Ok(Ok(Applied::Stored))
                    }
                    Err(e) => Ok(Ok(Applied::StoredHidden(e))),
                }
            }
            _ => self.last_writer_wins(signed, changes),
        }
    }

    /// Keeps the highest HLC seen, so this node's clock can order its next
    /// write after everything it has seen (bookkeeping, not replicated state).
    fn note_hlc(&mut self, hlc: tincan_core::Hlc) -> Result<(), StorageError> {
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

    fn last_writer_wins(&mut self, signed: SignedRecord, changes: &mut Vec<Change>) -> Step {
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
            Some(v) => Some(
                keys::record_id(v.value())
                    .ok_or_else(|| StorageError("damaged entity index".into()))?,
            ),
        };
        let mut kind = if new.tombstone {
            ChangeKind::Deleted
        } else {
            ChangeKind::Created
        };
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
            self.records.remove(cur_id.0.as_slice())?;
            if !new.tombstone && !cur_v.tombstone {
                kind = ChangeKind::Updated;
            }
        }
        let id = signed.id();
        self.entities.insert(key.as_slice(), id.0.as_slice())?;
        self.records
            .insert(id.0.as_slice(), signed.to_bytes().as_slice())?;
        // The first version of a room lets in what waited for it. (Later
        // versions may change the join policy and so who was a member when:
        // log entries are judged again at query time, nothing moves here.)
        if let (EntityKey::Room(room_id), None) = (entity, current) {
            self.release(Waiting::Room(room_id))?;
        }
        changes.push(change(entity, kind, signed));
        Ok(Ok(Applied::Stored))
    }

    fn load(&self, id: &RecordId) -> Result<SignedRecord, StorageError> {
        let v = self
            .records
            .get(id.0.as_slice())?
            .ok_or_else(|| StorageError(format!("index points at missing record {id}")))?;
        decode_stored(v.value())
    }

    fn room_info(&self, room: &RoomId) -> Result<Option<RoomInfo>, StorageError> {
        let key = keys::entity(&EntityKey::Room(*room)).unwrap_or_default();
        let Some(v) = self.entities.get(key.as_slice())? else {
            return Ok(None);
        };
        let id = keys::record_id(v.value())
            .ok_or_else(|| StorageError("damaged entity index".into()))?;
        Ok(Some(room_info_from(*room, &self.load(&id)?)))
    }

    fn member_history(
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

    /// Puts a record in the pending set until `waiting` is satisfied.
    fn park(&mut self, signed: &SignedRecord, waiting: Waiting) -> Step {
        let id = signed.id();
        if self.pending_ids.get(id.0.as_slice())?.is_some() {
            return Ok(Ok(Applied::Pending(waiting)));
        }
        let seq = match self.meta.get("pending_seq")? {
            Some(v) => u64::from_be_bytes(v.value().try_into().unwrap_or([0; 8])),
            None => 0,
        } + 1;
        self.meta
            .insert("pending_seq", seq.to_be_bytes().as_slice())?;
        let wait = waiting.key();
        let mut value = Vec::with_capacity(1 + wait.len() + signed.wire_len());
        value.push(wait.len() as u8);
        value.extend_from_slice(&wait);
        value.extend_from_slice(&signed.to_bytes());
        self.pending.insert(seq, value.as_slice())?;
        self.pending_by_wait
            .insert(keys::cat(&[&wait, &seq.to_be_bytes()]).as_slice(), ())?;
        self.pending_ids.insert(id.0.as_slice(), seq)?;
        while self.pending.len()? > self.pending_limit {
            let Some(oldest) = self.pending.first()?.map(|(k, _)| k.value()) else {
                break;
            };
            tracing::debug!(
                seq = oldest,
                "pending set full: dropping the oldest waiting record"
            );
            self.remove_pending(oldest)?;
        }
        Ok(Ok(Applied::Pending(waiting)))
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
        Ok(Some(record))
    }

    /// Moves everything waiting for `waiting` out of the pending set, to be
    /// applied after the current record.
    fn release(&mut self, waiting: Waiting) -> Result<(), StorageError> {
        let prefix = waiting.key();
        let mut seqs = Vec::new();
        for row in self.pending_by_wait.range(prefix.as_slice()..)? {
            let (k, _) = row?;
            let k = k.value();
            if !k.starts_with(&prefix) || k.len() != prefix.len() + 8 {
                break;
            }
            seqs.push(u64::from_be_bytes(
                k[prefix.len()..].try_into().unwrap_or([0; 8]),
            ));
        }
        let mut out = Vec::with_capacity(seqs.len());
        for seq in seqs {
            if let Some(r) = self.remove_pending(seq)? {
                out.push(r);
            }
        }
        self.released.extend(out);
        Ok(())
    }
}

fn change(entity: EntityKey, kind: ChangeKind, record: SignedRecord) -> Change {
    Change {
        entity,
        kind,
        record: Arc::new(record),
    }
}
