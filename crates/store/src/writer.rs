//! Group commit for local writers: one writer thread applies what every
//! local writer (the API's sessions, the CLI) hands it, many records per
//! durable transaction, and answers each writer once its commit is on
//! disk.
//!
//! A writer waits for its own answer, so a lone writer still gets its
//! commit at once; concurrent writers that arrive while a commit runs share
//! the next one. The queue is bounded ([`WRITE_QUEUE`]): at the limit a
//! writer waits for room (local writers are slowed, nothing is dropped).
//!
//! ```no_run
//! # async fn demo(store: std::sync::Arc<tincan_store::Store>, rec: tincan_core::SignedRecord)
//! # -> Result<(), Box<dyn std::error::Error>> {
//! let writer = tincan_store::GroupWriter::new(store);
//! let applied = writer.apply(rec).await?; // durable when it returns
//! # Ok(()) }
//! ```

use std::sync::Arc;

use tincan_core::SignedRecord;
use tokio::sync::{mpsc, oneshot};

use crate::{Applied, ApplyError, StorageError, Store, clock};

/// Records waiting for the writer thread, at most; past it a writer waits.
pub const WRITE_QUEUE: usize = 4096;
/// Most records in one commit: bounds how long one transaction holds the
/// write lock, and what one storage failure sends back.
pub const MAX_GROUP: usize = 512;

struct Job {
    record: SignedRecord,
    reply: oneshot::Sender<Result<Applied, ApplyError>>,
}

/// The handle local writers share; cheap to clone. The writer thread stops
/// when the last handle is dropped (after committing what it holds).
#[derive(Clone)]
pub struct GroupWriter {
    jobs: mpsc::Sender<Job>,
}

impl std::fmt::Debug for GroupWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupWriter").finish_non_exhaustive()
    }
}

impl GroupWriter {
    /// Starts the writer thread of `store`.
    pub fn new(store: Arc<Store>) -> GroupWriter {
        let (jobs, rx) = mpsc::channel(WRITE_QUEUE);
        // A thread, not a task: a commit blocks on fsync.
        let spawned = std::thread::Builder::new()
            .name("tincan-store-writer".into())
            .spawn(move || run(store, rx));
        if let Err(e) = spawned {
            // The receiver is gone with the closure: every write then fails
            // with a storage error that says why, rather than a panic here.
            tracing::error!(error = %e, "cannot start the store's writer thread");
        }
        GroupWriter { jobs }
    }

    /// Applies a record signed here (already through
    /// [`Store::prepare_signed`] where it must be), sharing a durable
    /// commit with the writes queued beside it. When it returns `Ok` the
    /// record survives a `kill -9`, as with [`Store::apply`].
    pub async fn apply(&self, record: SignedRecord) -> Result<Applied, ApplyError> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job { record, reply })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// [`GroupWriter::apply`] for blocking code (the CLI); must not be
    /// called from inside an async task.
    pub fn apply_blocking(&self, record: SignedRecord) -> Result<Applied, ApplyError> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .blocking_send(Job { record, reply })
            .map_err(|_| stopped())?;
        answer.blocking_recv().map_err(|_| stopped())?
    }
}

fn stopped() -> ApplyError {
    ApplyError::Storage(StorageError(
        "the store's writer has stopped (the node is shutting down); nothing was written".into(),
    ))
}

/// The writer thread: takes what is queued (at least one), applies it in
/// one transaction, answers each, and again, until every handle is gone.
fn run(store: Arc<Store>, mut rx: mpsc::Receiver<Job>) {
    let mut group: Vec<Job> = Vec::with_capacity(MAX_GROUP);
    while let Some(first) = rx.blocking_recv() {
        group.push(first);
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let (records, replies): (Vec<_>, Vec<_>) =
            group.drain(..).map(|j| (j.record, j.reply)).unzip();
        match store.apply_batch_at(records, clock::wall_ms()) {
            Ok(results) => {
                for (reply, result) in replies.into_iter().zip(results) {
                    // A writer that stopped waiting is no reason to stop.
                    let _ = reply.send(result.map_err(ApplyError::Rejected));
                }
            }
            Err(e) => {
                // The whole transaction rolled back: nobody's write is in.
                for reply in replies {
                    let _ = reply.send(Err(ApplyError::Storage(StorageError(e.0.clone()))));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tincan_core::{Hlc, UserKey, make};

    /// Concurrent writers each get their own outcome, every stored record
    /// is in the store afterwards, and a refused one is refused alone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_share_commits_and_keep_their_outcomes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path().join("s.redb"), Default::default()).unwrap());
        let writer = GroupWriter::new(store.clone());
        let owner = UserKey::from_seed(&[7; 32]);
        let (room, rec) = make::room(
            &owner,
            Hlc::new(1_700_000_000_000, 0),
            [1; 16],
            "r",
            Default::default(),
        )
        .unwrap();
        assert_eq!(writer.apply(rec).await.unwrap(), Applied::Stored);
        let mut tasks = Vec::new();
        for w in 0..8u64 {
            let writer = writer.clone();
            let owner = UserKey::from_seed(&owner.seed());
            tasks.push(tokio::spawn(async move {
                let mut ids = Vec::new();
                for i in 0..25u64 {
                    let hlc = Hlc::new(1_700_000_000_001 + w * 1000 + i, 0);
                    let rec = make::log(&owner, hlc, room, "act").unwrap();
                    ids.push(rec.id());
                    assert_eq!(writer.apply(rec).await.unwrap(), Applied::Stored);
                }
                ids
            }));
        }
        // A stranger's log entry in a room they are not in: refused alone.
        let stranger = UserKey::from_seed(&[9; 32]);
        let bad = make::log(&stranger, Hlc::new(1_700_000_000_500, 0), room, "x").unwrap();
        assert!(matches!(
            writer.apply(bad).await,
            Err(ApplyError::Rejected(_)) | Ok(Applied::Pending(_)) | Ok(Applied::Dropped(_))
        ));
        for t in tasks {
            for id in t.await.unwrap() {
                assert!(store.record(&id).unwrap().is_some());
            }
        }
    }
}
