//! Read-only listings for catch-up sync: which records a node holds, per
//! room and for profiles, as (dependency rank, id) pairs, and the wire bytes
//! of many records in one snapshot.
//!
//! The listings come from the indexes, not from decoding records, so a room
//! with 10,000 log entries lists in a few milliseconds. A room's records are
//! its winning room record (or the tombstone that deleted it), its grants,
//! its channels' winners (or tombstones), its whole membership history, its
//! cutoffs, its log and its sealed records (opened here or not): every
//! record in force whose `record.room()` is the room, then the profiles of
//! its owner and of the users with a plaintext Member record in it.
//! Pending records are not listed (they are not in force yet).
//!
//! A sealed record is listed under [`RANK_SEALED_OWNER`] or [`RANK_SEALED`]
//! by its outer author alone, never by what it holds, so a member and a
//! non-member list the same items for the same records. Ranks sort parents
//! first: the room, plaintext membership, channels and log, then grants
//! (which open sealed records), the owner's sealed records (admissions,
//! channels, cutoffs), everyone else's, and profiles last (a profile is kept
//! only once its user has a standing here).

use std::collections::HashSet;

use redb::ReadableDatabase;
use tincan_core::{EntityKey, RecordId, RoomId, UserId};

use crate::error::StorageError;
use crate::{CUTOFFS, ENTITIES, GRANTS, LOGS, MEMBERS, RECORDS, SEALED_IN_ROOM, Store, keys};

/// Dependency rank of profiles, as [`Store::profile_sync_items`] gives it.
pub const RANK_PROFILE: u8 = 0;
/// Dependency rank of room records and room deletes.
pub const RANK_ROOM: u8 = 1;
/// Dependency rank of plaintext membership records and cutoffs.
pub const RANK_MEMBER: u8 = 2;
/// Dependency rank of plaintext channels and channel deletes.
pub const RANK_CHANNEL: u8 = 3;
/// Dependency rank of plaintext log entries.
pub const RANK_LOG: u8 = 4;
/// Dependency rank of key grants: after the room, before sealed records.
pub const RANK_GRANT: u8 = 5;
/// Dependency rank of sealed records written by the room's owner.
pub const RANK_SEALED_OWNER: u8 = 6;
/// Dependency rank of sealed records written by anyone else.
pub const RANK_SEALED: u8 = 7;
/// Dependency rank of profiles within a room's listing: last.
pub const RANK_ROOM_PROFILE: u8 = 8;

impl Store {
    /// The records in force of `room`, and the profiles of its owner and
    /// plaintext users, as `(rank, id)` sorted by rank then id, parents
    /// first (see the module's doc), so a node that applies records in this
    /// order parks none for a missing parent. The profiles of users whose
    /// membership is sealed are not listed: their list is what sealing
    /// hides from a peer that holds only the locator.
    pub fn room_sync_items(&self, room: &RoomId) -> Result<Vec<(u8, RecordId)>, StorageError> {
        let txn = self.db.begin_read()?;
        let entities = txn.open_table(ENTITIES)?;
        let mut out = Vec::new();
        let bad = || StorageError("damaged index while listing a room for sync".into());
        let sealed_table = txn.open_table(SEALED_IN_ROOM)?;
        let mut sealed = HashSet::new();
        for row in sealed_table.range(room.0.as_slice()..)? {
            let (k, v) = row?;
            let k = k.value();
            if !k.starts_with(&room.0) {
                break;
            }
            let id = keys::record_id(k.get(16..).ok_or_else(bad)?).ok_or_else(bad)?;
            sealed.insert(id);
            out.push((v.value(), id));
        }
        let mut owner = None;
        if let Some(key) = keys::entity(&EntityKey::Room(*room))
            && let Some(v) = entities.get(key.as_slice())?
        {
            let id = keys::record_id(v.value()).ok_or_else(bad)?;
            out.push((RANK_ROOM, id));
            let records = txn.open_table(RECORDS)?;
            if let Some(bytes) = records.get(id.0.as_slice())? {
                owner = Some(crate::query::decode_stored(bytes.value())?.record().author);
            }
        }
        let grants = txn.open_table(GRANTS)?;
        for row in grants.range(room.0.as_slice()..)? {
            let (k, _) = row?;
            let k = k.value();
            if !k.starts_with(&room.0) {
                break;
            }
            out.push((
                RANK_GRANT,
                keys::record_id(k.get(20..).ok_or_else(bad)?).ok_or_else(bad)?,
            ));
        }
        let members = txn.open_table(MEMBERS)?;
        let prefix = keys::member_prefix(room, None);
        let mut users: Vec<UserId> = owner.into_iter().collect();
        for row in members.range(prefix.as_slice()..)? {
            let (k, _) = row?;
            let k = k.value();
            if !k.starts_with(&prefix) {
                break;
            }
            let id = keys::record_id(k.get(56..).ok_or_else(bad)?).ok_or_else(bad)?;
            if !sealed.contains(&id) {
                out.push((RANK_MEMBER, id));
                users.push(keys::user_id(k.get(16..).ok_or_else(bad)?).ok_or_else(bad)?);
            }
        }
        let cutoffs = txn.open_table(CUTOFFS)?;
        for row in cutoffs.range(room.0.as_slice()..)? {
            let (k, _) = row?;
            let k = k.value();
            if !k.starts_with(&room.0) {
                break;
            }
            let id = keys::record_id(k.get(56..).ok_or_else(bad)?).ok_or_else(bad)?;
            if !sealed.contains(&id) {
                out.push((RANK_MEMBER, id));
            }
        }
        let prefix = keys::channel_prefix(room);
        for row in entities.range(prefix.as_slice()..)? {
            let (k, v) = row?;
            if !k.value().starts_with(&prefix) {
                break;
            }
            let id = keys::record_id(v.value()).ok_or_else(bad)?;
            if !sealed.contains(&id) {
                out.push((RANK_CHANNEL, id));
            }
        }
        let logs = txn.open_table(LOGS)?;
        for row in logs.range(room.0.as_slice()..)? {
            let (k, _) = row?;
            let k = k.value();
            if !k.starts_with(&room.0) {
                break;
            }
            let id = keys::record_id(k.get(24..).ok_or_else(bad)?).ok_or_else(bad)?;
            if !sealed.contains(&id) {
                out.push((RANK_LOG, id));
            }
        }
        users.sort_unstable();
        users.dedup();
        for user in users {
            if let Some(key) = keys::entity(&EntityKey::Profile(user))
                && let Some(v) = entities.get(key.as_slice())?
            {
                out.push((
                    RANK_ROOM_PROFILE,
                    keys::record_id(v.value()).ok_or_else(bad)?,
                ));
            }
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
                // The guest has a standing in the room: their profile comes
                // with it (the owner has none here).
                (RANK_ROOM_PROFILE, profile.id()),
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
