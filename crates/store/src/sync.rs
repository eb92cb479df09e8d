//! Read-only listings for catch-up sync: which records a node holds, per
//! room and for profiles, as (dependency rank, id) pairs, and the wire bytes
//! of many records in one snapshot.
//!
//! The listings come from the indexes, not from decoding records, so a room
//! with 10,000 log entries lists in a few milliseconds. A room's records are
//! its winning room record (or the tombstone that deleted it), its channels'
//! winners (or tombstones), its whole membership history and its log: every
//! record in force whose `record.room()` is the room. Pending records are not
//! listed (they are not in force yet).

use redb::ReadableDatabase;
use tincan_core::{EntityKey, RecordId, RoomId};

use crate::error::StorageError;
use crate::{ENTITIES, LOGS, MEMBERS, RECORDS, Store, keys};

/// Dependency rank of profiles, as [`Store::room_sync_items`] gives it.
pub const RANK_PROFILE: u8 = 0;
/// Dependency rank of room records and room deletes.
pub const RANK_ROOM: u8 = 1;
/// Dependency rank of membership records.
pub const RANK_MEMBER: u8 = 2;
/// Dependency rank of channels and channel deletes.
pub const RANK_CHANNEL: u8 = 3;
/// Dependency rank of log entries.
pub const RANK_LOG: u8 = 4;

impl Store {
    /// The records in force of `room`, as `(rank, id)` sorted by rank then
    /// id. Ranks order records parents first: [`RANK_ROOM`], [`RANK_MEMBER`],
    /// [`RANK_CHANNEL`], [`RANK_LOG`], so a node that applies records in this
    /// order never parks one for a missing room.
    pub fn room_sync_items(&self, room: &RoomId) -> Result<Vec<(u8, RecordId)>, StorageError> {
        let txn = self.db.begin_read()?;
        let entities = txn.open_table(ENTITIES)?;
        let mut out = Vec::new();
        let bad = || StorageError("damaged index while listing a room for sync".into());
        if let Some(key) = keys::entity(&EntityKey::Room(*room))
            && let Some(v) = entities.get(key.as_slice())?
        {
            out.push((RANK_ROOM, keys::record_id(v.value()).ok_or_else(bad)?));
        }
        let members = txn.open_table(MEMBERS)?;
        let prefix = keys::member_prefix(room, None);
        for row in members.range(prefix.as_slice()..)? {
            let (k, _) = row?;
            let k = k.value();
            if !k.starts_with(&prefix) {
                break;
            }
            out.push((
                RANK_MEMBER,
                keys::record_id(k.get(56..).ok_or_else(bad)?).ok_or_else(bad)?,
            ));
        }
        let prefix = keys::channel_prefix(room);
        for row in entities.range(prefix.as_slice()..)? {
            let (k, v) = row?;
            if !k.value().starts_with(&prefix) {
                break;
            }
            out.push((RANK_CHANNEL, keys::record_id(v.value()).ok_or_else(bad)?));
        }
        let logs = txn.open_table(LOGS)?;
        for row in logs.range(room.0.as_slice()..)? {
            let (k, _) = row?;
            let k = k.value();
            if !k.starts_with(&room.0) {
                break;
            }
            out.push((
                RANK_LOG,
                keys::record_id(k.get(24..).ok_or_else(bad)?).ok_or_else(bad)?,
            ));
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    /// Every profile record in force, as `(RANK_PROFILE, id)` sorted by id.
    pub fn profile_sync_items(&self) -> Result<Vec<(u8, RecordId)>, StorageError> {
        let txn = self.db.begin_read()?;
        let entities = txn.open_table(ENTITIES)?;
        let prefix = [keys::PROFILE];
        let mut out = Vec::new();
        for row in entities.range(prefix.as_slice()..)? {
            let (k, v) = row?;
            if !k.value().starts_with(&prefix) {
                break;
            }
            let id = keys::record_id(v.value())
                .ok_or_else(|| StorageError("damaged entity index".into()))?;
            out.push((RANK_PROFILE, id));
        }
        out.sort_unstable();
        Ok(out)
    }

    /// The wire bytes of each record in `ids` that is in force, in order,
    /// read from one snapshot; `None` for ids not held (never held, or
    /// superseded since). Stops adding bytes once `max_bytes` is reached:
    /// later ids then come back as `None` and the list is cut short (its
    /// length says how many ids were looked at; at least one always is).
    pub fn record_bytes(
        &self,
        ids: &[RecordId],
        max_bytes: usize,
    ) -> Result<Vec<Option<Vec<u8>>>, StorageError> {
        let txn = self.db.begin_read()?;
        let records = txn.open_table(RECORDS)?;
        let mut out = Vec::with_capacity(ids.len());
        let mut total = 0usize;
        for id in ids {
            let bytes = records.get(id.0.as_slice())?.map(|v| v.value().to_vec());
            if let Some(b) = &bytes {
                if !out.is_empty() && total + b.len() > max_bytes {
                    break;
                }
                total += b.len();
            }
            out.push(bytes);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use tincan_core::{ChannelId, Hlc, RoomSettings, UserKey, make};

    use super::*;
    use crate::StoreConfig;

    #[test]
    fn room_listing_holds_exactly_the_rooms_records_parents_first() {
        let store = Store::in_memory(StoreConfig::default()).unwrap();
        let owner = UserKey::from_seed(&[1; 32]);
        let guest = UserKey::from_seed(&[2; 32]);
        let (room, room_rec) = make::room(
            &owner,
            Hlc::new(1, 0),
            [1; 16],
            "A",
            RoomSettings::default(),
        )
        .unwrap();
        let (other, other_rec) = make::room(
            &owner,
            Hlc::new(1, 0),
            [2; 16],
            "B",
            RoomSettings::default(),
        )
        .unwrap();
        let ch = make::channel(
            &owner,
            Hlc::new(2, 0),
            room,
            ChannelId([3; 16]),
            "general",
            "",
            vec![],
        )
        .unwrap();
        let ch2 = make::channel(
            &owner,
            Hlc::new(3, 0),
            room,
            ChannelId([3; 16]),
            "renamed",
            "",
            vec![],
        )
        .unwrap();
        let join = make::join(&guest, Hlc::new(4, 0), room).unwrap();
        let log = make::log(&guest, Hlc::new(5, 0), room, "joined").unwrap();
        let other_log = make::log(&owner, Hlc::new(5, 0), other, "hi").unwrap();
        let profile = make::profile(&guest, Hlc::new(1, 0), "guest").unwrap();
        for r in [
            log.clone(),
            room_rec.clone(),
            other_rec,
            ch.clone(),
            ch2.clone(),
            join.clone(),
            other_log,
            profile.clone(),
        ] {
            store.apply(r).unwrap();
        }
        let items = store.room_sync_items(&room).unwrap();
        assert_eq!(
            items,
            vec![
                (RANK_ROOM, room_rec.id()),
                (RANK_MEMBER, join.id()),
                (RANK_CHANNEL, ch2.id()),
                (RANK_LOG, log.id()),
            ]
        );
        assert_eq!(
            store.profile_sync_items().unwrap(),
            vec![(RANK_PROFILE, profile.id())]
        );
        let bytes = store
            .record_bytes(&[join.id(), ch.id(), log.id()], 1 << 20)
            .unwrap();
        assert_eq!(
            bytes,
            vec![Some(join.to_bytes()), None, Some(log.to_bytes())]
        );
        let cut = store.record_bytes(&[join.id(), log.id()], 1).unwrap();
        assert_eq!(cut, vec![Some(join.to_bytes())]);
    }
}
