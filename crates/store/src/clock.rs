//! The clock a node writes with: a hybrid logical clock that stays after
//! everything the store holds, shared by every local writer (the CLI, the
//! local API) so that their records order after each other.

use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use tincan_core::{Hlc, HlcClock};

use crate::{StorageError, Store};

/// How far ahead of our wall clock a record's time may pull our clock.
/// Without a cap one peer with a clock set to next year would drag every
/// later write of ours there.
pub const MAX_CLOCK_PULL_MS: u64 = 5 * 60 * 1000;

/// Milliseconds since the Unix epoch (0 if the system clock is before it).
pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A node's write clock. Cheap to share behind an `Arc`.
#[derive(Debug, Default)]
pub struct StoreClock {
    clock: Mutex<HlcClock>,
}

impl StoreClock {
    /// A clock that has issued nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// A timestamp after everything this clock issued and everything in
    /// `store`, except times more than [`MAX_CLOCK_PULL_MS`] ahead of the
    /// wall clock.
    pub fn now(&self, store: &Store) -> Result<Hlc, StorageError> {
        let wall = wall_ms();
        let seen = store.hlc_high()?;
        let cap = Hlc::new(wall + MAX_CLOCK_PULL_MS, 0);
        // A poisoned lock only means another writer panicked mid-update of
        // a plain counter: the value is still a valid clock.
        let mut clock = self.clock.lock().unwrap_or_else(|p| p.into_inner());
        clock.observe(seen.min(cap));
        Ok(clock.now(wall))
    }
}
