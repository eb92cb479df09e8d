//! Errors of store operations.

use std::path::PathBuf;

use tincan_core::{DecodeError, RuleError};

/// Opening the store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The file is not a redb database, or is damaged beyond redb's repair.
    #[error(
        "{path} is not a tincan store or is damaged ({detail}); it was left untouched: move it aside to start a new store, or restore it from a backup"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What redb said.
        detail: String,
    },
    /// A redb database, but another program's.
    #[error(
        "{path} is a database of another program (schema {found:?}), not a tincan store; it was left untouched"
    )]
    Foreign {
        /// The file.
        path: PathBuf,
        /// The schema marker found, if any.
        found: Option<String>,
    },
    /// The file exists but holds nothing (0 bytes): never made into a new
    /// store, which would hide that the data is gone.
    #[error(
        "{path} is empty (0 bytes): the store it held is lost or was truncated, and it was left untouched; restore it from a backup, or move it aside and start again with `--new-store` (rooms you are in sync again from peers)"
    )]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// Another process has the store open.
    #[error("{path} is in use by another tincan process: stop it first, or use another --data-dir")]
    InUse {
        /// The file.
        path: PathBuf,
    },
    /// Any other IO or database error.
    #[error("cannot open the store at {path}: {detail}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
}

/// The storage layer failed (disk full, IO error, damaged pages).
#[derive(Debug, thiserror::Error)]
#[error("store failure: {0}")]
pub struct StorageError(pub String);

impl<E: Into<redb::Error>> From<E> for StorageError {
    fn from(e: E) -> Self {
        StorageError(e.into().to_string())
    }
}

/// Applying a record failed; nothing was changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    /// The bytes are not a record.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The rules refuse it.
    #[error(transparent)]
    Rejected(#[from] RuleError),
    /// The storage layer failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl From<tincan_core::RecordError> for ApplyError {
    fn from(e: tincan_core::RecordError) -> Self {
        match e {
            tincan_core::RecordError::Decode(d) => ApplyError::Decode(d),
            tincan_core::RecordError::Rule(r) => ApplyError::Rejected(r),
            // RecordError is non_exhaustive; treat anything new as a refusal.
            other => ApplyError::Storage(StorageError(other.to_string())),
        }
    }
}

/// A local write could not be prepared ([`crate::Store::prepare_write`],
/// [`crate::Store::key_upkeep`], [`crate::Store::removal`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// The room is invite-only and this store holds no key for it: only a
    /// join request (or leave) may be written in plaintext.
    #[error(
        "no key for room {room} yet: wait for the owner's grant (a join request is all that can be written before it)"
    )]
    NoKey {
        /// The room.
        room: tincan_core::RoomId,
    },
    /// The room is not known here.
    #[error("room {0} is not known here (or was deleted): let it sync first")]
    UnknownRoom(tincan_core::RoomId),
    /// The operation is the room owner's, and the key given is not theirs.
    #[error("only the owner of room {room} may do this")]
    NotOwner {
        /// The room.
        room: tincan_core::RoomId,
    },
    /// What was asked makes no sense (a removal that is not a kick or a
    /// ban, a record that is already sealed).
    #[error("{0}")]
    Invalid(&'static str),
    /// The time given is not after what the store already holds of the user.
    #[error(
        "the removal's time {hlc} is not after the user's newest record here ({newest}): take the time from the store's clock"
    )]
    TooEarly {
        /// The time given.
        hlc: tincan_core::Hlc,
        /// The newest record of the user in the room.
        newest: tincan_core::Hlc,
    },
    /// The room has used up its key chain.
    #[error(
        "room {room} has used all {max} key epochs (one per removal): create a new room",
        max = tincan_core::seal::MAX_EPOCHS
    )]
    EpochsExhausted {
        /// The room.
        room: tincan_core::RoomId,
    },
    /// Building or sealing the record failed.
    #[error(transparent)]
    Make(#[from] tincan_core::MakeError),
    /// The storage layer failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}
