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
mod keys;
mod proof;
mod query;
mod sync;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{
    Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition, TableHandle,
};
use tincan_core::{EntityKey, RecordId, SignedRecord};
use tokio::sync::broadcast;

pub use apply::Applied;
pub use error::{ApplyError, OpenError, StorageError};
pub use keys::Waiting;
pub use proof::ProofError;
pub use query::{ChannelView, LogCursor, LogEntry, LogPage, MemberView, ProfileView, RoomView};
pub use sync::{RANK_CHANNEL, RANK_LOG, RANK_MEMBER, RANK_PROFILE, RANK_ROOM};

/// Marks a redb file as a tincan store, and its schema version.
const SCHEMA: &str = "tincan-store/1";

pub(crate) const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("meta");
/// id -> wire bytes of every record in force (winners, member history, log).
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

/// Tuning of a store.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Most records waiting for a parent; past it the oldest is dropped
    /// (catch-up sync fetches it again later).
    pub pending_limit: usize,
    /// Changes buffered per feed subscriber before it is told it lagged.
    pub feed_capacity: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            pending_limit: 10_000,
            feed_capacity: 4096,
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
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens the store at `path`, creating it if the file does not exist.
    /// A damaged file or another program's database is an error, never reset.
    pub fn open(path: impl AsRef<Path>, config: StoreConfig) -> Result<Store, OpenError> {
        let path = path.as_ref().to_path_buf();
        let io = |detail: String| OpenError::Io {
            path: path.clone(),
            detail,
        };
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
        match found {
            Some(ref s) if s == SCHEMA => {}
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
        let (feed, _) = broadcast::channel(config.feed_capacity.max(1));
        Ok(Store {
            db,
            path,
            config,
            feed,
        })
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

    /// Applies one verified record in its own durable transaction.
    pub fn apply(&self, record: SignedRecord) -> Result<Applied, ApplyError> {
        let mut results = self.apply_batch(vec![record])?;
        match results.pop() {
            Some(Ok(a)) => Ok(a),
            Some(Err(e)) => Err(ApplyError::Rejected(e)),
            None => Err(ApplyError::Storage(StorageError(
                "apply_batch returned no result".into(),
            ))),
        }
    }

    /// Applies many verified records in one durable transaction (group
    /// commit). Each gets its own outcome; a refused record changes nothing
    /// and does not stop the others. A storage failure rolls back all.
    pub fn apply_batch(
        &self,
        records: Vec<SignedRecord>,
    ) -> Result<Vec<Result<Applied, tincan_core::RuleError>>, StorageError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(redb::Durability::Immediate)?;
        let mut changes = Vec::new();
        let results = {
            let mut tables = apply::Tables::open(&txn, &self.config)?;
            let mut results = Vec::with_capacity(records.len());
            let mut ids = Vec::with_capacity(records.len());
            for r in records {
                ids.push(r.id());
                results.push(tables.apply(r, &mut changes)?);
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
            results
        };
        txn.commit()?;
        for c in changes {
            // An error only means nobody listens right now.
            let _ = self.feed.send(c);
        }
        Ok(results)
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

    /// Every record in force, parents first (profiles and rooms, then
    /// members, channels and deletes, then log entries in time order), so
    /// that a node applying them in this order never parks one.
    pub fn records_in_dependency_order(&self) -> Result<Vec<SignedRecord>, StorageError> {
        let mut all = self.records()?;
        all.sort_by_key(|r| {
            let rank = match &r.record().body {
                tincan_core::Body::Profile(_) => 0,
                tincan_core::Body::Room(_) => 1,
                tincan_core::Body::Tombstone(t)
                    if matches!(t.target, tincan_core::Target::Room { .. }) =>
                {
                    1
                }
                tincan_core::Body::KeyGrant(_) => 1,
                tincan_core::Body::Member(_) | tincan_core::Body::Cutoff(_) => 2,
                tincan_core::Body::Channel(_) | tincan_core::Body::Tombstone(_) => 3,
                tincan_core::Body::RoomLog(_) => 4,
                tincan_core::Body::Sealed(_) => 5,
            };
            (rank, r.record().hlc, r.id())
        });
        Ok(all)
    }

    /// Every record in force, in id order: for export and sync.
    pub fn records(&self) -> Result<Vec<SignedRecord>, StorageError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(RECORDS)?;
        let mut out = Vec::new();
        for row in t.iter()? {
            let (_, v) = row?;
            out.push(query::decode_stored(v.value())?);
        }
        Ok(out)
    }

    /// The record with this id, if in force.
    pub fn record(&self, id: &RecordId) -> Result<Option<SignedRecord>, StorageError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(RECORDS)?;
        t.get(id.0.as_slice())?
            .map(|v| query::decode_stored(v.value()))
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
        for def in [RECORDS, ENTITIES, MEMBERS] {
            for row in txn.open_table(def)?.iter()? {
                let (k, v) = row?;
                put(def.name(), k.value(), v.value());
            }
        }
        for def in [USER_ROOMS, LOGS] {
            for row in txn.open_table(def)?.iter()? {
                let (k, _) = row?;
                put(def.name(), k.value(), &[]);
            }
        }
        Ok(out)
    }
}

fn read_schema(db: &Database) -> Result<Option<String>, StorageError> {
    let txn = db.begin_read()?;
    let t = match txn.open_table(META) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    Ok(t.get("schema")?
        .map(|v| String::from_utf8_lossy(v.value()).into_owned()))
}

fn has_any_table(db: &Database) -> Result<bool, StorageError> {
    let txn = db.begin_read()?;
    Ok(txn.list_tables()?.next().is_some() || txn.list_multimap_tables()?.next().is_some())
}

fn create_schema(db: &Database) -> Result<(), StorageError> {
    let txn = db.begin_write()?;
    {
        txn.open_table(META)?.insert("schema", SCHEMA.as_bytes())?;
        txn.open_table(RECORDS)?;
        txn.open_table(ENTITIES)?;
        txn.open_table(MEMBERS)?;
        txn.open_table(USER_ROOMS)?;
        txn.open_table(LOGS)?;
        txn.open_table(PENDING)?;
        txn.open_table(PENDING_BY_WAIT)?;
        txn.open_table(PENDING_IDS)?;
    }
    txn.commit()?;
    Ok(())
}
