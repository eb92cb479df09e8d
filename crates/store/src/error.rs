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
