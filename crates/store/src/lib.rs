//! tincan's local store: signed records in a redb file.
//!
//! [`Store::apply`] runs signature check, rules, merge and index updates in one
//! durable transaction: when it returns `Ok`, the record survives a `kill -9`.
//! [`Store::apply_batch`] does the same for many records with one fsync
//! (group commit). Records whose room has not arrived yet wait in a bounded
//! pending set (persisted with the rest) and are applied when it comes.
//! Queries read a consistent snapshot; [`Store::subscribe`] gives a bounded
//! change feed that tells a slow subscriber it lagged instead of blocking
//! writers.
//!
//! Invite-only rooms are sealed: the store holds their keys (opened from
//! grants with the secret keys of the node's unlocked users,
//! [`Store::unlock_user`]), opens their sealed records and applies what is
//! inside as it would a plaintext record, and keeps ciphertext it cannot
//! open (bounded) until a key arrives. Local writers go through
//! [`Store::prepare_write`], which seals where it must. Strangers are
//! bounded: see the README for every cap and its rule.
//!
//! ```no_run
//! # fn demo(rec: tincan_core::SignedRecord) -> Result<(), Box<dyn std::error::Error>> {
//! let store = tincan_store::Store::open("store.redb", Default::default())?;
//! let outcome = store.apply(rec)?;
//! println!("{outcome:?}, rooms: {}", store.rooms()?.len());
//! # Ok(()) }
//! ```
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod apply;
pub mod clock;
pub mod datadir;
mod error;
mod keyring;
mod keys;
mod proof;
mod query;
mod sync;
mod writer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use redb::{
    Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition, TableHandle,
};
use tincan_core::{EntityKey, RecordId, SignedRecord, UserId, UserKey};
use tokio::sync::broadcast;

pub use apply::{Applied, DropReason};
pub use error::{ApplyError, OpenError, StorageError, WriteError};
pub use keys::Waiting;
pub use proof::{EpochProof, EpochProofError, ProofError, check_epoch_proof, grant_epoch_of};
pub use query::{
    ChannelView, LogCursor, LogEntry, LogOrder, LogPage, LogQuery, MemberView, ProfileView,
    RoomView,
};
pub use sync::{
    RANK_CHANNEL, RANK_GRANT, RANK_LOG, RANK_MEMBER, RANK_PROFILE, RANK_ROOM, RANK_ROOM_PROFILE,
    RANK_SEALED, RANK_SEALED_OWNER,
};
pub use writer::{GroupWriter, MAX_GROUP, WRITE_QUEUE};

/// Marks a redb file as a tincan store, and its schema version.
const SCHEMA: &str = "tincan-store/2";
/// The schema before sealed rooms: opened and brought up to date.
const SCHEMA_V1: &str = "tincan-store/1";
/// Marks a store whose log has its by-user index and counts
/// (`log_users`, `counts`); a store made before them has them built once
/// when it is opened.
const LOG_INDEX_KEY: &str = "log_index";
const LOG_INDEX: &str = "1";

pub(crate) const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("meta");
/// id -> wire bytes of every record in force (winners, member history, log,
/// grants, cutoffs, sealed records held unopened).
pub(crate) const RECORDS: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("records");
/// entity key -> id of the winning record (profiles, rooms, channels).
pub(crate) const ENTITIES: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("entities");
/// room|user|hlc|id -> [by_owner, role, state]
pub(crate) const MEMBERS: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("members");
/// user|room -> ()
pub(crate) const USER_ROOMS: TableDefinition<'_, &[u8], ()> = TableDefinition::new("user_rooms");
/// room|hlc|id -> ()
pub(crate) const LOGS: TableDefinition<'_, &[u8], ()> = TableDefinition::new("logs");
/// seq -> wait key length | wait key | wire bytes
pub(crate) const PENDING: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("pending");
/// wait key | seq -> ()
pub(crate) const PENDING_BY_WAIT: TableDefinition<'_, &[u8], ()> =
    TableDefinition::new("pending_by_wait");
/// id -> seq
pub(crate) const PENDING_IDS: TableDefinition<'_, &[u8], u64> = TableDefinition::new("pending_ids");
// Tables added with sealed rooms and the bounds on strangers (schema 2).
/// id -> inner body (postcard) of each opened sealed record in `records`.
pub(crate) const OPENED: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("opened");
/// room|id -> sync rank, for every sealed record in `records`.
pub(crate) const SEALED_IN_ROOM: TableDefinition<'_, &[u8], u8> =
    TableDefinition::new("sealed_in_room");
/// room|author|hlc|id -> epoch, for sealed records held without their key.
pub(crate) const UNOPENED: TableDefinition<'_, &[u8], u32> = TableDefinition::new("unopened");
/// room|epoch|id -> (), key grants.
pub(crate) const GRANTS: TableDefinition<'_, &[u8], ()> = TableDefinition::new("grants");
/// room|epoch|user -> (): whom this node's owners granted which epoch
/// (local bookkeeping: a grant does not say whom it is for).
pub(crate) const GRANTED: TableDefinition<'_, &[u8], ()> = TableDefinition::new("granted");
/// room|user|hlc|id -> the cutoff's `after`.
pub(crate) const CUTOFFS: TableDefinition<'_, &[u8], u64> = TableDefinition::new("cutoffs");
/// room|author|hlc|id -> (), the log by author (the owner's entries aside:
/// nothing ever judges them again).
pub(crate) const LOG_AUTHORS: TableDefinition<'_, &[u8], ()> = TableDefinition::new("log_authors");
/// room|user|hlc|id -> (), every log entry by its user (the owner's too):
/// queries by user. Counted in `counts` per room and per (room, user).
pub(crate) const LOG_USERS: TableDefinition<'_, &[u8], ()> = TableDefinition::new("log_users");
/// owner|room -> (), rooms held here by owner.
pub(crate) const OWNED: TableDefinition<'_, &[u8], ()> = TableDefinition::new("owned");
/// room|user -> hlc|id of the newest own Member record of a user the owner
/// never said anything about (a join request in an invite-only room).
pub(crate) const JOIN_REQUESTS: TableDefinition<'_, &[u8], &[u8]> =
    TableDefinition::new("join_requests");
/// room|hlc|id|user -> (), the same, oldest first.
pub(crate) const JOIN_REQUESTS_BY_AGE: TableDefinition<'_, &[u8], ()> =
    TableDefinition::new("join_requests_by_age");
/// room -> the newest epoch key held and the locator secret (secrets:
/// see the README on what this file holds).
pub(crate) const ROOM_KEYS: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("room_keys");
/// locator id -> room.
pub(crate) const LOCATORS: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("locators");
/// cap group|hlc|id -> seq: capped waiting groups, oldest first.
pub(crate) const PENDING_ORDER: TableDefinition<'_, &[u8], u64> =
    TableDefinition::new("pending_order");
/// counter name -> value (waiting per group, unopened per author, profiles).
pub(crate) const COUNTS: TableDefinition<'_, &[u8], u64> = TableDefinition::new("counts");

/// Own Member records kept per (room, user): the newest by (HLC, id).
pub const MAX_SELF_MEMBER_RECORDS: usize = 16;
/// Open join requests kept per invite-only room: those whose newest
/// request is newest.
pub const MAX_JOIN_REQUESTS: usize = 64;
/// Log entries kept waiting per (room, author) whose author is not a
/// member at their time: the newest by (HLC, id).
pub const MAX_WAITING_LOGS: usize = 8;
/// The same, for an author the owner has invited whose own join has not
/// arrived yet (their log entries arrive ahead of it in a catch-up).
pub const MAX_WAITING_LOGS_INVITED: usize = 1024;
/// Sealed records held without their key per (room, author): the newest.
pub const MAX_SEALED_PER_AUTHOR: usize = 1024;
/// Profiles kept in all (of users with a standing here).
pub const MAX_PROFILES: usize = 100_000;
/// Profiles kept waiting for their user's standing: the newest.
pub const MAX_WAITING_PROFILES: usize = 256;

/// Tuning of a store. The caps default to the constants of the same name;
/// past a cap a record is dropped ([`Applied::Dropped`]), not refused.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Most records waiting for a parent; past it the oldest is dropped
    /// (catch-up sync fetches it again later).
    pub pending_limit: usize,
    /// Changes buffered per feed subscriber before it is told it lagged.
    pub feed_capacity: usize,
    /// [`MAX_SELF_MEMBER_RECORDS`].
    pub max_self_member_records: usize,
    /// [`MAX_JOIN_REQUESTS`].
    pub max_join_requests: usize,
    /// [`MAX_WAITING_LOGS`].
    pub max_waiting_logs: usize,
    /// [`MAX_WAITING_LOGS_INVITED`].
    pub max_waiting_logs_invited: usize,
    /// [`MAX_SEALED_PER_AUTHOR`].
    pub max_sealed_per_author: usize,
    /// [`MAX_PROFILES`].
    pub max_profiles: usize,
    /// [`MAX_WAITING_PROFILES`].
    pub max_waiting_profiles: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            pending_limit: 10_000,
            feed_capacity: 4096,
            max_self_member_records: MAX_SELF_MEMBER_RECORDS,
            max_join_requests: MAX_JOIN_REQUESTS,
            max_waiting_logs: MAX_WAITING_LOGS,
            max_waiting_logs_invited: MAX_WAITING_LOGS_INVITED,
            max_sealed_per_author: MAX_SEALED_PER_AUTHOR,
            max_profiles: MAX_PROFILES,
            max_waiting_profiles: MAX_WAITING_PROFILES,
        }
    }
}

/// What a change did to an entity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    /// It did not exist (or was deleted) before.
    Created,
    /// It replaced an earlier version.
    Updated,
    /// It deleted the entity (a tombstone won).
    Deleted,
}

/// One committed change, as the feed delivers it.
#[derive(Clone, Debug)]
pub struct Change {
    /// What changed.
    pub entity: EntityKey,
    /// How.
    pub kind: ChangeKind,
    /// The record that made the change.
    pub record: Arc<SignedRecord>,
}

/// The local store. Cheap to share behind an `Arc`; all methods take `&self`.
pub struct Store {
    db: Database,
    path: Option<PathBuf>,
    config: StoreConfig,
    feed: broadcast::Sender<Change>,
    /// Local users' secret keys, in memory only, while they are unlocked.
    unlocked: RwLock<HashMap<UserId, UserKey>>,
    /// Grants planned by [`Store::key_upkeep`] and whom they are for, until
    /// they are applied (bounded).
    outbox: Mutex<apply::Outbox>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens the store at `path`, creating it if the file does not exist.
    /// A damaged file or another program's database is an error, never reset;
    /// so is an empty (0-byte) file, which redb would silently make a new
    /// store of (a store truncated by a crash of the file system or a bad
    /// copy, not one to write over).
    pub fn open(path: impl AsRef<Path>, config: StoreConfig) -> Result<Store, OpenError> {
        let path = path.as_ref().to_path_buf();
        let io = |detail: String| OpenError::Io {
            path: path.clone(),
            detail,
        };
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() && m.len() == 0 => return Err(OpenError::Empty { path }),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e.to_string())),
        }
        // Verify every page's checksum on open: a file damaged outside redb
        // then fails to open with an error, where a plain open may panic
        // later on a bad page. It reads the whole file once (about 0.1 s for
        // 10 MB here), a fair price at start-up.
        let db = match Database::builder()
            .set_check_integrity_on_open(true)
            .create(&path)
        {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(OpenError::InUse { path });
            }
            Err(redb::DatabaseError::Storage(redb::StorageError::Io(e)))
                if e.kind() != std::io::ErrorKind::InvalidData =>
            {
                return Err(io(e.to_string()));
            }
            Err(e) => {
                return Err(OpenError::Corrupt {
                    path,
                    detail: e.to_string(),
                });
            }
        };
        Self::init(db, Some(path), config)
    }

    /// A store in memory, for tests and simulations.
    pub fn in_memory(config: StoreConfig) -> Result<Store, OpenError> {
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(|e| OpenError::Io {
                path: PathBuf::from(":memory:"),
                detail: e.to_string(),
            })?;
        Self::init(db, None, config)
    }

    fn init(db: Database, path: Option<PathBuf>, config: StoreConfig) -> Result<Store, OpenError> {
        let shown = path.clone().unwrap_or_else(|| PathBuf::from(":memory:"));
        let fail = |e: StorageError| OpenError::Corrupt {
            path: shown.clone(),
            detail: e.0,
        };
        let found = read_schema(&db).map_err(fail)?;
        let mut migrate = false;
        match found {
            Some(ref s) if s == SCHEMA => {}
            Some(ref s) if s == SCHEMA_V1 => migrate = true,
            Some(other) => {
                return Err(OpenError::Foreign {
                    path: shown,
                    found: Some(other),
                });
            }
            None => {
                if has_any_table(&db).map_err(fail)? {
                    return Err(OpenError::Foreign {
                        path: shown,
                        found: None,
                    });
                }
                create_schema(&db).map_err(fail)?;
            }
        }
        // Tables added since a file was made are created empty; a file of
        // schema 1 also has its new indexes built and the bounds applied.
        create_tables(&db).map_err(fail)?;
        let (feed, _) = broadcast::channel(config.feed_capacity.max(1));
        let store = Store {
            db,
            path,
            config,
            feed,
            unlocked: RwLock::new(HashMap::new()),
            outbox: Mutex::new(apply::Outbox::default()),
        };
        if migrate {
            store
                .write(clock::wall_ms(), |tables, _| tables.migrate_from_v1())
                .map_err(fail)?;
        }
        if read_meta(&store.db, LOG_INDEX_KEY)
            .map_err(fail)?
            .as_deref()
            != Some(LOG_INDEX)
        {
            store
                .write(clock::wall_ms(), |tables, _| {
                    tables.build_log_index()?;
                    tables.set_meta(LOG_INDEX_KEY, LOG_INDEX.as_bytes())
                })
                .map_err(fail)?;
        }
        Ok(store)
    }

    /// Runs `f` in one durable write transaction with the write path's
    /// tables, applies whatever it released, commits, then publishes the
    /// changes. `now_ms` is the receiver's clock for the skew rule.
    pub(crate) fn write<T>(
        &self,
        now_ms: u64,
        f: impl FnOnce(&mut apply::Tables<'_, '_>, &mut Vec<Change>) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        // A poisoned lock only means a thread panicked while holding it;
        // the maps stay consistent (each update is one insert or remove).
        let unlocked = self.unlocked.read().unwrap_or_else(|p| p.into_inner());
        let outbox = self.outbox.lock().unwrap_or_else(|p| p.into_inner());
        let mut txn = self.db.begin_write()?;
        txn.set_durability(redb::Durability::Immediate)?;
        let mut changes = Vec::new();
        let out = {
            let ctx = apply::Ctx {
                config: &self.config,
                now_ms,
                unlocked: &unlocked,
                outbox: &outbox,
            };
            let mut tables = apply::Tables::open(&txn, ctx)?;
            let out = f(&mut tables, &mut changes)?;
            tables.drain_released(&mut changes)?;
            out
        };
        txn.commit()?;
        drop(outbox);
        drop(unlocked);
        for c in changes {
            // An error only means nobody listens right now.
            let _ = self.feed.send(c);
        }
        Ok(out)
    }

    /// The file, if on disk.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// A receiver of every change committed from now on. If it falls more
    /// than `feed_capacity` changes behind, its next `recv` reports
    /// `Lagged(n)`; writers never wait for it.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.feed.subscribe()
    }

    /// Decodes, verifies and applies wire bytes.
    pub fn apply_bytes(&self, bytes: &[u8]) -> Result<Applied, ApplyError> {
        self.apply(SignedRecord::from_bytes(bytes)?)
    }

    /// Applies one verified record in its own durable transaction, judged
    /// against the wall clock for the skew rule.
    pub fn apply(&self, record: SignedRecord) -> Result<Applied, ApplyError> {
        self.apply_at(record, clock::wall_ms())
    }

    /// [`Store::apply`] with the receiver's clock given (Unix milliseconds):
    /// a record dated more than [`tincan_core::rules::MAX_CLOCK_SKEW`]
    /// after it is dropped for now.
    pub fn apply_at(&self, record: SignedRecord, now_ms: u64) -> Result<Applied, ApplyError> {
        let mut results = self.apply_batch_at(vec![record], now_ms)?;
        match results.pop() {
            Some(Ok(a)) => Ok(a),
            Some(Err(e)) => Err(ApplyError::Rejected(e)),
            None => Err(ApplyError::Storage(StorageError(
                "apply_batch returned no result".into(),
            ))),
        }
    }

    /// Applies many verified records in one durable transaction (group
    /// commit), judged against the wall clock. Each gets its own outcome; a
    /// refused record changes nothing and does not stop the others. A
    /// storage failure rolls back all.
    pub fn apply_batch(
        &self,
        records: Vec<SignedRecord>,
    ) -> Result<Vec<Result<Applied, tincan_core::RuleError>>, StorageError> {
        self.apply_batch_at(records, clock::wall_ms())
    }

    /// [`Store::apply_batch`] with the receiver's clock given (Unix
    /// milliseconds).
    pub fn apply_batch_at(
        &self,
        records: Vec<SignedRecord>,
        now_ms: u64,
    ) -> Result<Vec<Result<Applied, tincan_core::RuleError>>, StorageError> {
        self.write(now_ms, |tables, changes| {
            let mut results = Vec::with_capacity(records.len());
            let mut ids = Vec::with_capacity(records.len());
            for r in records {
                ids.push(r.id());
                results.push(tables.apply(r, changes)?);
            }
            // A record that waited for a parent later in the same batch
            // reports what finally became of it.
            for (id, result) in ids.iter().zip(results.iter_mut()) {
                if matches!(result, Ok(Applied::Pending(_)))
                    && let Some(outcome) = tables.released_outcome(id)
                {
                    *result = outcome;
                }
            }
            Ok(results)
        })
    }

    /// The highest HLC of any record that passed the rules here (stored or
    /// superseded): a node's clock observes it before writing.
    pub fn hlc_high(&self) -> Result<tincan_core::Hlc, StorageError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(META)?;
        Ok(tincan_core::Hlc(
            t.get("hlc_high")?
                .and_then(|v| v.value().try_into().ok().map(u64::from_be_bytes))
                .unwrap_or(0),
        ))
    }

    /// Number of records waiting for a parent.
    pub fn pending_len(&self) -> Result<u64, StorageError> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(PENDING)?.len()?)
    }

    /// Every record in force, parents first (rooms, then grants, then
    /// members and cutoffs, channels and deletes, log entries in time order,
    /// sealed records this node cannot open, and profiles last: a profile
    /// waits for its user's standing), so that a node applying them in this
    /// order parks none. Opened sealed records come in their opened view,
    /// ranked by what they hold.
    pub fn records_in_dependency_order(&self) -> Result<Vec<SignedRecord>, StorageError> {
        use tincan_core::{Body, Target};
        let mut all = self.records()?;
        all.sort_by_key(|r| {
            let rank = match &r.record().body {
                Body::Room(_) => 0,
                Body::Tombstone(t) if matches!(t.target, Target::Room { .. }) => 0,
                Body::KeyGrant(_) => 1,
                Body::Member(_) | Body::Cutoff(_) => 2,
                Body::Channel(_) | Body::Tombstone(_) => 3,
                Body::RoomLog(_) => 4,
                Body::Sealed(_) => 5,
                Body::Profile(_) => 6,
            };
            (rank, r.record().hlc, r.id())
        });
        Ok(all)
    }

    /// Every record in force, in id order: for export and sync. Sealed
    /// records this node opened come in their opened view (their
    /// [`SignedRecord::to_bytes`] is still the sealed wire form); those it
    /// cannot open come as ciphertext.
    pub fn records(&self) -> Result<Vec<SignedRecord>, StorageError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(RECORDS)?;
        let opened = txn.open_table(OPENED)?;
        let mut out = Vec::new();
        for row in t.iter()? {
            let (k, v) = row?;
            out.push(query::decode_with_opened(k.value(), v.value(), &opened)?);
        }
        Ok(out)
    }

    /// The record with this id, if in force (opened, if this node opened it).
    pub fn record(&self, id: &RecordId) -> Result<Option<SignedRecord>, StorageError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(RECORDS)?;
        let opened = txn.open_table(OPENED)?;
        t.get(id.0.as_slice())?
            .map(|v| query::decode_with_opened(&id.0, v.value(), &opened))
            .transpose()
    }

    /// A canonical dump of the replicated state (everything but the pending
    /// set and bookkeeping): two stores that hold the same records give
    /// byte-identical dumps.
    pub fn state_dump(&self) -> Result<Vec<u8>, StorageError> {
        let txn = self.db.begin_read()?;
        let mut out = Vec::new();
        let mut put = |name: &str, k: &[u8], v: &[u8]| {
            for part in [name.as_bytes(), k, v] {
                out.extend_from_slice(&(part.len() as u32).to_be_bytes());
                out.extend_from_slice(part);
            }
        };
        for def in [RECORDS, ENTITIES, MEMBERS, OPENED, JOIN_REQUESTS] {
            for row in txn.open_table(def)?.iter()? {
                let (k, v) = row?;
                put(def.name(), k.value(), v.value());
            }
        }
        for def in [
            USER_ROOMS,
            LOGS,
            LOG_AUTHORS,
            GRANTS,
            OWNED,
            JOIN_REQUESTS_BY_AGE,
        ] {
            for row in txn.open_table(def)?.iter()? {
                let (k, _) = row?;
                put(def.name(), k.value(), &[]);
            }
        }
        for row in txn.open_table(SEALED_IN_ROOM)?.iter()? {
            let (k, v) = row?;
            put(SEALED_IN_ROOM.name(), k.value(), &[v.value()]);
        }
        for row in txn.open_table(UNOPENED)?.iter()? {
            let (k, v) = row?;
            put(UNOPENED.name(), k.value(), &v.value().to_be_bytes());
        }
        for row in txn.open_table(CUTOFFS)?.iter()? {
            let (k, v) = row?;
            put(CUTOFFS.name(), k.value(), &v.value().to_be_bytes());
        }
        Ok(out)
    }
}

fn read_schema(db: &Database) -> Result<Option<String>, StorageError> {
    read_meta(db, "schema")
}

fn read_meta(db: &Database, key: &str) -> Result<Option<String>, StorageError> {
    let txn = db.begin_read()?;
    let t = match txn.open_table(META) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    Ok(t.get(key)?
        .map(|v| String::from_utf8_lossy(v.value()).into_owned()))
}

fn has_any_table(db: &Database) -> Result<bool, StorageError> {
    let txn = db.begin_read()?;
    Ok(txn.list_tables()?.next().is_some() || txn.list_multimap_tables()?.next().is_some())
}

fn create_schema(db: &Database) -> Result<(), StorageError> {
    let txn = db.begin_write()?;
    {
        let mut meta = txn.open_table(META)?;
        meta.insert("schema", SCHEMA.as_bytes())?;
        // A new store has no log to index.
        meta.insert(LOG_INDEX_KEY, LOG_INDEX.as_bytes())?;
    }
    txn.commit()?;
    create_tables(db)
}

/// Creates every table that does not exist yet (opening a table in a write
/// transaction creates it).
fn create_tables(db: &Database) -> Result<(), StorageError> {
    let txn = db.begin_write()?;
    {
        for def in [
            RECORDS,
            ENTITIES,
            MEMBERS,
            OPENED,
            JOIN_REQUESTS,
            ROOM_KEYS,
            LOCATORS,
        ] {
            txn.open_table(def)?;
        }
        for def in [
            USER_ROOMS,
            LOGS,
            PENDING_BY_WAIT,
            GRANTS,
            GRANTED,
            LOG_AUTHORS,
            LOG_USERS,
            OWNED,
            JOIN_REQUESTS_BY_AGE,
        ] {
            txn.open_table(def)?;
        }
        txn.open_table(PENDING)?;
        for def in [PENDING_IDS, PENDING_ORDER, CUTOFFS, COUNTS] {
            txn.open_table(def)?;
        }
        txn.open_table(SEALED_IN_ROOM)?;
        txn.open_table(UNOPENED)?;
    }
    txn.commit()?;
    Ok(())
}
