//! The read path: queries over a consistent snapshot. Everything a query
//! returns has passed the rules; log entries are judged against their
//! author's membership again here, so an entry whose author turns out not to
//! have been a member is never shown.

use std::collections::HashMap;

use redb::{ReadTransaction, ReadableDatabase, ReadableTable};
use tincan_core::merge::{MemberEntry, Membership, membership};
use tincan_core::rules::{CutoffWindow, RoomInfo, check_log_membership};
use tincan_core::{
    Body, Channel, ChannelId, EntityKey, Hlc, MemberRole, MemberState, Profile, RecordId, Room,
    RoomId, RoomSettings, SignedRecord, Target, Tombstone, UserId,
};

use crate::error::StorageError;
use crate::keys;
use crate::{
    COUNTS, CUTOFFS, ENTITIES, LOG_USERS, LOGS, MEMBERS, OPENED, RECORDS, Store, USER_ROOMS,
};

pub(crate) fn decode_stored(bytes: &[u8]) -> Result<SignedRecord, StorageError> {
    SignedRecord::decode_trusted(bytes)
        .map_err(|e| StorageError(format!("damaged record in the store: {e}")))
}

/// Decodes a record of the `records` table, in its opened view if this
/// store opened it (`opened` holds its inner body).
pub(crate) fn decode_with_opened(
    id: &[u8],
    bytes: &[u8],
    opened: &impl ReadableTable<&'static [u8], &'static [u8]>,
) -> Result<SignedRecord, StorageError> {
    let rec = decode_stored(bytes)?;
    if !matches!(rec.record().body, Body::Sealed(_)) {
        return Ok(rec);
    }
    match opened.get(id)? {
        None => Ok(rec),
        Some(inner) => SignedRecord::decode_opened_trusted(bytes, inner.value())
            .map_err(|e| StorageError(format!("damaged opened record in the store: {e}"))),
    }
}

pub(crate) fn encode_member_value(e: &MemberEntry) -> [u8; 3] {
    let role = match e.role {
        MemberRole::Participant => 0,
        MemberRole::Moderator => 1,
    };
    let state = match e.state {
        MemberState::Invited => 0,
        MemberState::Joined => 1,
        MemberState::Left => 2,
        MemberState::Kicked => 3,
        MemberState::Banned => 4,
    };
    [u8::from(e.by_owner), role, state]
}

/// Decodes a `members` row: key room|user|hlc|id, value from [`encode_member_value`].
pub(crate) fn decode_member_value(key: &[u8], value: &[u8]) -> Result<MemberEntry, StorageError> {
    let bad = || StorageError("damaged membership index".into());
    let hlc = keys::hlc(key.get(48..).ok_or_else(bad)?).ok_or_else(bad)?;
    let id = keys::record_id(key.get(56..).ok_or_else(bad)?).ok_or_else(bad)?;
    let role = match value.get(1) {
        Some(0) => MemberRole::Participant,
        Some(1) => MemberRole::Moderator,
        _ => return Err(bad()),
    };
    let state = match value.get(2) {
        Some(0) => MemberState::Invited,
        Some(1) => MemberState::Joined,
        Some(2) => MemberState::Left,
        Some(3) => MemberState::Kicked,
        Some(4) => MemberState::Banned,
        _ => return Err(bad()),
    };
    Ok(MemberEntry {
        hlc,
        id,
        by_owner: value.first() == Some(&1),
        role,
        state,
    })
}

/// What the rules need to know of a room, from its winning record. A deleted
/// room keeps its owner (the tombstone's author) and default settings.
pub(crate) fn room_info_from(id: RoomId, winner: &SignedRecord) -> RoomInfo {
    let settings = match &winner.record().body {
        Body::Room(r) => r.settings,
        _ => RoomSettings::default(),
    };
    RoomInfo {
        id,
        owner: winner.record().author,
        settings,
    }
}

/// A user's profile as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProfileView {
    /// The profile.
    pub profile: Profile,
    /// The record in force.
    pub record: RecordId,
    /// When it was written.
    pub hlc: Hlc,
}

/// A room as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomView {
    /// Its id.
    pub id: RoomId,
    /// Its owner.
    pub owner: UserId,
    /// Title and settings.
    pub room: Room,
    /// The record in force.
    pub record: RecordId,
    /// When it was last written.
    pub hlc: Hlc,
}

impl RoomView {
    /// What the rules need to know of it.
    pub fn info(&self) -> RoomInfo {
        RoomInfo {
            id: self.id,
            owner: self.owner,
            settings: self.room.settings,
        }
    }
}

/// A user's standing in a room.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberView {
    /// The user.
    pub user: UserId,
    /// Effective membership. A joined member past the room's member limit
    /// (ordered by when they joined) shows as `Requested`.
    pub membership: Membership,
    /// Whether they own the room.
    pub is_owner: bool,
}

/// A channel as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelView {
    /// The channel.
    pub channel: Channel,
    /// The record in force.
    pub record: RecordId,
    /// When it was last written.
    pub hlc: Hlc,
}

/// One visible log entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEntry {
    /// The record's id.
    pub id: RecordId,
    /// The room.
    pub room: RoomId,
    /// Who did it.
    pub user: UserId,
    /// What they did.
    pub action: String,
    /// When.
    pub hlc: Hlc,
}

/// Where the next page of a log starts (exclusive).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogCursor {
    /// The last entry's time.
    pub hlc: Hlc,
    /// The last entry's id.
    pub id: RecordId,
}

impl std::fmt::Display for LogCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}{}", self.hlc.0, self.id.to_hex())
    }
}

impl std::str::FromStr for LogCursor {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || "not a log cursor: pass back the `next` value of the previous page".to_owned();
        if s.len() != 80 {
            return Err(bad());
        }
        let hlc = u64::from_str_radix(s.get(..16).ok_or_else(bad)?, 16).map_err(|_| bad())?;
        let id = RecordId::from_hex(s.get(16..).ok_or_else(bad)?).map_err(|_| bad())?;
        Ok(LogCursor { hlc: Hlc(hlc), id })
    }
}

/// One page of a room's log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogPage {
    /// Entries in time order.
    pub entries: Vec<LogEntry>,
    /// Where the next page starts, if there may be more.
    pub next: Option<LogCursor>,
}

/// Which way a log query walks time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogOrder {
    /// Oldest first (by HLC, then id).
    #[default]
    OldestFirst,
    /// Newest first.
    NewestFirst,
}

/// A query on one room's log through its indexes: by time in the room
/// (`logs`), or by one user in it (`log_users`). Its cost is the page plus
/// `skip` index keys (no record is read for what is skipped).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogQuery {
    /// The room.
    pub room: RoomId,
    /// Only this user's entries.
    pub user: Option<UserId>,
    /// Which way.
    pub order: LogOrder,
    /// Entries to skip first.
    pub skip: usize,
    /// Most entries returned.
    pub limit: usize,
}

fn entity_winner(
    txn: &ReadTransaction,
    key: &EntityKey,
) -> Result<Option<SignedRecord>, StorageError> {
    let Some(k) = keys::entity(key) else {
        return Ok(None);
    };
    let entities = txn.open_table(ENTITIES)?;
    let Some(id) = entities.get(k.as_slice())? else {
        return Ok(None);
    };
    let records = txn.open_table(RECORDS)?;
    let opened = txn.open_table(OPENED)?;
    let Some(bytes) = records.get(id.value())? else {
        return Err(StorageError("index points at a missing record".into()));
    };
    decode_with_opened(id.value(), bytes.value(), &opened).map(Some)
}

fn scan_entities(txn: &ReadTransaction, prefix: &[u8]) -> Result<Vec<SignedRecord>, StorageError> {
    let entities = txn.open_table(ENTITIES)?;
    let records = txn.open_table(RECORDS)?;
    let opened = txn.open_table(OPENED)?;
    let mut out = Vec::new();
    for row in entities.range(prefix..)? {
        let (k, id) = row?;
        if !k.value().starts_with(prefix) {
            break;
        }
        let Some(bytes) = records.get(id.value())? else {
            return Err(StorageError("index points at a missing record".into()));
        };
        out.push(decode_with_opened(id.value(), bytes.value(), &opened)?);
    }
    Ok(out)
}

fn room_view(id: RoomId, rec: &SignedRecord) -> Option<RoomView> {
    match &rec.record().body {
        Body::Room(room) => Some(RoomView {
            id,
            owner: rec.record().author,
            room: room.clone(),
            record: rec.id(),
            hlc: rec.record().hlc,
        }),
        _ => None,
    }
}

fn history(
    txn: &ReadTransaction,
    room: &RoomId,
    user: Option<&UserId>,
) -> Result<Vec<(UserId, MemberEntry)>, StorageError> {
    let members = txn.open_table(MEMBERS)?;
    let prefix = keys::member_prefix(room, user);
    let mut out = Vec::new();
    for row in members.range(prefix.as_slice()..)? {
        let (k, v) = row?;
        let k = k.value();
        if !k.starts_with(&prefix) {
            break;
        }
        let u = keys::user_id(&k[16..])
            .ok_or_else(|| StorageError("damaged membership index".into()))?;
        out.push((u, decode_member_value(k, v.value())?));
    }
    Ok(out)
}

fn cutoff_windows(
    txn: &ReadTransaction,
    room: &RoomId,
    user: &UserId,
) -> Result<Vec<CutoffWindow>, StorageError> {
    let t = txn.open_table(CUTOFFS)?;
    let prefix = keys::room_user(room, user);
    let mut out = Vec::new();
    for row in t.range(prefix.as_slice()..)? {
        let (k, v) = row?;
        if !k.value().starts_with(&prefix) {
            break;
        }
        let at = keys::hlc(k.value().get(48..).unwrap_or_default())
            .ok_or_else(|| StorageError("damaged cutoff index".into()))?;
        out.push(CutoffWindow {
            after: Hlc(v.value()),
            at,
        });
    }
    Ok(out)
}

impl Store {
    fn read(&self) -> Result<ReadTransaction, StorageError> {
        Ok(self.db.begin_read()?)
    }

    /// Every known profile.
    pub fn profiles(&self) -> Result<Vec<ProfileView>, StorageError> {
        let txn = self.read()?;
        Ok(scan_entities(&txn, &[keys::PROFILE])?
            .iter()
            .filter_map(profile_view)
            .collect())
    }

    /// One user's profile.
    pub fn profile(&self, user: &UserId) -> Result<Option<ProfileView>, StorageError> {
        let txn = self.read()?;
        Ok(entity_winner(&txn, &EntityKey::Profile(*user))?
            .as_ref()
            .and_then(profile_view))
    }

    /// Every room that is not deleted.
    pub fn rooms(&self) -> Result<Vec<RoomView>, StorageError> {
        let txn = self.read()?;
        Ok(scan_entities(&txn, &[keys::ROOM])?
            .iter()
            .filter_map(|r| r.record().room().and_then(|id| room_view(id, r)))
            .collect())
    }

    /// One room, unless deleted or unknown.
    pub fn room(&self, id: &RoomId) -> Result<Option<RoomView>, StorageError> {
        let txn = self.read()?;
        Ok(entity_winner(&txn, &EntityKey::Room(*id))?
            .as_ref()
            .and_then(|r| room_view(*id, r)))
    }

    /// Rooms `user` owns or is a joined member of.
    pub fn rooms_of_user(&self, user: &UserId) -> Result<Vec<RoomView>, StorageError> {
        let txn = self.read()?;
        let mut candidates: Vec<RoomId> = Vec::new();
        let user_rooms = txn.open_table(USER_ROOMS)?;
        for row in user_rooms.range(user.0.as_slice()..)? {
            let (k, _) = row?;
            let k = k.value();
            if !k.starts_with(&user.0) {
                break;
            }
            candidates.extend(keys::room_id(&k[32..]));
        }
        let mut out = Vec::new();
        for room in self.rooms()? {
            if room.owner == *user {
                out.push(room);
            } else if candidates.contains(&room.id) {
                let h: Vec<MemberEntry> = history(&txn, &room.id, Some(user))?
                    .into_iter()
                    .map(|(_, e)| e)
                    .collect();
                if membership(room.room.settings.join_policy, &h, None).is_member() {
                    out.push(room);
                }
            }
        }
        Ok(out)
    }

    /// A user's effective membership of a room (`Joined(Moderator)` for the owner).
    pub fn membership(&self, room: &RoomId, user: &UserId) -> Result<Membership, StorageError> {
        Ok(self
            .members(room)?
            .into_iter()
            .find(|m| m.user == *user)
            .map(|m| m.membership)
            .unwrap_or(Membership::None))
    }

    /// Everyone with a standing in the room: the owner first, then users in
    /// id order. The member limit is applied in order of joining.
    pub fn members(&self, room: &RoomId) -> Result<Vec<MemberView>, StorageError> {
        let Some(view) = self.room(room)? else {
            return Ok(Vec::new());
        };
        let txn = self.read()?;
        let mut by_user: HashMap<UserId, Vec<MemberEntry>> = HashMap::new();
        for (u, e) in history(&txn, room, None)? {
            by_user.entry(u).or_default().push(e);
        }
        let mut out = vec![MemberView {
            user: view.owner,
            membership: Membership::Joined(MemberRole::Moderator),
            is_owner: true,
        }];
        let mut rest: Vec<(Hlc, MemberView)> = by_user
            .into_iter()
            .map(|(user, entries)| {
                let latest = entries.iter().map(|e| e.hlc).max().unwrap_or(Hlc::ZERO);
                let m = membership(view.room.settings.join_policy, &entries, None);
                (
                    latest,
                    MemberView {
                        user,
                        membership: m,
                        is_owner: false,
                    },
                )
            })
            .collect();
        if let Some(limit) = view.room.settings.member_limit {
            rest.sort_by_key(|(t, m)| (*t, m.user));
            let mut joined = 1u32;
            for (_, m) in rest.iter_mut() {
                if m.membership.is_member() {
                    if joined >= limit {
                        m.membership = Membership::Requested;
                    } else {
                        joined += 1;
                    }
                }
            }
        }
        let mut rest: Vec<MemberView> = rest.into_iter().map(|(_, m)| m).collect();
        rest.sort_by_key(|m| m.user);
        out.extend(rest);
        Ok(out)
    }

    /// The channels of a room (none if the room is deleted or unknown).
    pub fn channels(&self, room: &RoomId) -> Result<Vec<ChannelView>, StorageError> {
        if self.room(room)?.is_none() {
            return Ok(Vec::new());
        }
        let txn = self.read()?;
        Ok(scan_entities(&txn, &keys::channel_prefix(room))?
            .iter()
            .filter_map(channel_view)
            .collect())
    }

    /// One channel.
    pub fn channel(
        &self,
        room: &RoomId,
        id: &ChannelId,
    ) -> Result<Option<ChannelView>, StorageError> {
        if self.room(room)?.is_none() {
            return Ok(None);
        }
        let txn = self.read()?;
        Ok(entity_winner(&txn, &EntityKey::Channel(*room, *id))?
            .as_ref()
            .and_then(channel_view))
    }

    /// A page of a room's log between `from` and `to` (inclusive), in time
    /// order, starting after `after` if given, at most `limit` entries.
    pub fn log(
        &self,
        room: &RoomId,
        from: Hlc,
        to: Hlc,
        after: Option<LogCursor>,
        limit: usize,
    ) -> Result<LogPage, StorageError> {
        let Some(view) = self.room(room)? else {
            return Ok(LogPage {
                entries: Vec::new(),
                next: None,
            });
        };
        let info = view.info();
        let txn = self.read()?;
        let logs = txn.open_table(LOGS)?;
        let records = txn.open_table(RECORDS)?;
        let opened = txn.open_table(OPENED)?;
        let start = match after {
            Some(c) if c.hlc >= from => {
                // Exclusive: the smallest key after the cursor's.
                let mut k = keys::log(room, c.hlc, &c.id);
                k.push(0);
                k
            }
            _ => keys::log(room, from, &RecordId([0; 32])),
        };
        let mut histories: HashMap<UserId, (Vec<MemberEntry>, Vec<CutoffWindow>)> = HashMap::new();
        let mut entries = Vec::new();
        let limit = limit.max(1);
        for row in logs.range(start.as_slice()..)? {
            let (k, _) = row?;
            let k = k.value();
            if !k.starts_with(&room.0) {
                break;
            }
            let bad = || StorageError("damaged log index".into());
            let hlc = keys::hlc(&k[16..]).ok_or_else(bad)?;
            if hlc > to {
                break;
            }
            let id = keys::record_id(&k[24..]).ok_or_else(bad)?;
            let Some(bytes) = records.get(id.0.as_slice())? else {
                return Err(StorageError("log index points at a missing record".into()));
            };
            let rec = decode_with_opened(&id.0, bytes.value(), &opened)?;
            let Body::RoomLog(l) = &rec.record().body else {
                return Err(bad());
            };
            let author = rec.record().author;
            let (h, cutoffs) = match histories.entry(author) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => e.insert((
                    history(&txn, room, Some(&author))?
                        .into_iter()
                        .map(|(_, e)| e)
                        .collect(),
                    cutoff_windows(&txn, room, &author)?,
                )),
            };
            // The write path keeps only entries that pass; judging them
            // again costs little and guards the read path on its own.
            if check_log_membership(rec.record(), &info, h, cutoffs).is_err() {
                continue;
            }
            entries.push(LogEntry {
                id,
                room: *room,
                user: l.user,
                action: l.action.clone(),
                hlc,
            });
            if entries.len() == limit {
                break;
            }
        }
        let next = (entries.len() == limit).then(|| {
            let last = &entries[entries.len() - 1];
            LogCursor {
                hlc: last.hlc,
                id: last.id,
            }
        });
        Ok(LogPage { entries, next })
    }
}

impl Store {
    /// How many entries a room's log holds (of one user, if given), from
    /// the counts the write path keeps: no scan.
    pub fn log_count(&self, room: &RoomId, user: Option<&UserId>) -> Result<u64, StorageError> {
        let txn = self.read()?;
        let counts = txn.open_table(COUNTS)?;
        Ok(counts
            .get(keys::count_log(room, user).as_slice())?
            .map(|v| v.value())
            .unwrap_or(0))
    }

    /// A page of a room's log through its indexes (see [`LogQuery`]).
    /// Entries are judged against their author's membership again, as in
    /// [`Store::log`]; one that fails is left out of the page (the write
    /// path stores none such, so pages are full in practice).
    pub fn log_query(&self, q: &LogQuery) -> Result<Vec<LogEntry>, StorageError> {
        let Some(view) = self.room(&q.room)? else {
            return Ok(Vec::new());
        };
        let info = view.info();
        let txn = self.read()?;
        let records = txn.open_table(RECORDS)?;
        let opened = txn.open_table(OPENED)?;
        let (table, prefix, hlc_at) = match &q.user {
            None => (txn.open_table(LOGS)?, q.room.0.to_vec(), 16),
            Some(u) => (txn.open_table(LOG_USERS)?, keys::room_user(&q.room, u), 48),
        };
        // Longer than any key under the prefix, and after all of them.
        let end = keys::cat(&[&prefix, &[0xff; 64]]);
        let range = table.range(prefix.as_slice()..end.as_slice())?;
        let keys_in_order: Box<dyn Iterator<Item = _>> = match q.order {
            LogOrder::OldestFirst => Box::new(range),
            LogOrder::NewestFirst => Box::new(range.rev()),
        };
        let mut histories: HashMap<UserId, (Vec<MemberEntry>, Vec<CutoffWindow>)> = HashMap::new();
        let mut entries = Vec::new();
        for row in keys_in_order.skip(q.skip).take(q.limit) {
            let (k, _) = row?;
            let k = k.value();
            let bad = || StorageError("damaged log index".into());
            let hlc = keys::hlc(k.get(hlc_at..).unwrap_or_default()).ok_or_else(bad)?;
            let id = keys::record_id(k.get(hlc_at + 8..).unwrap_or_default()).ok_or_else(bad)?;
            let Some(bytes) = records.get(id.0.as_slice())? else {
                return Err(StorageError("log index points at a missing record".into()));
            };
            let rec = decode_with_opened(&id.0, bytes.value(), &opened)?;
            let Body::RoomLog(l) = &rec.record().body else {
                return Err(bad());
            };
            let author = rec.record().author;
            let (h, cutoffs) = match histories.entry(author) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => e.insert((
                    history(&txn, &q.room, Some(&author))?
                        .into_iter()
                        .map(|(_, e)| e)
                        .collect(),
                    cutoff_windows(&txn, &q.room, &author)?,
                )),
            };
            if check_log_membership(rec.record(), &info, h, cutoffs).is_err() {
                continue;
            }
            entries.push(LogEntry {
                id,
                room: q.room,
                user: l.user,
                action: l.action.clone(),
                hlc,
            });
        }
        Ok(entries)
    }
}

fn profile_view(r: &SignedRecord) -> Option<ProfileView> {
    match &r.record().body {
        Body::Profile(p) => Some(ProfileView {
            profile: p.clone(),
            record: r.id(),
            hlc: r.record().hlc,
        }),
        _ => None,
    }
}

fn channel_view(r: &SignedRecord) -> Option<ChannelView> {
    match &r.record().body {
        Body::Channel(c) => Some(ChannelView {
            channel: c.clone(),
            record: r.id(),
            hlc: r.record().hlc,
        }),
        Body::Tombstone(Tombstone {
            target: Target::Channel(..),
        }) => None,
        _ => None,
    }
}
