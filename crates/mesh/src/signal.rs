//! Voice signals of invite-only rooms sealed on their voice topic
//! ([`tincan_core::sealed_signal`] is the format and the crypto): the mesh
//! node seals every signal it publishes for a sealed room and opens every
//! one it receives there, with the newest key its store holds, and for
//! [`EPOCH_OVERLAP`] after a new epoch also the one before (members get a
//! new epoch's grant at slightly different times). Open rooms' signals
//! stay plaintext, like their records.

use std::time::{Duration, Instant};

pub use tincan_core::sealed_signal::{
    Opened, SEALED_SIGNAL_OVERHEAD, SIGNAL_PURPOSE, SealedSignal, open_signal, seal_signal,
};

/// How long after a node first holds a new epoch's key it still opens
/// signals sealed under the epoch before it.
pub const EPOCH_OVERLAP: Duration = Duration::from_secs(30);

/// When this node first held each epoch: whether the epoch before the
/// newest is still opened ([`EPOCH_OVERLAP`]). One per followed room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EpochWindow {
    epoch: u32,
    since: Instant,
}

impl EpochWindow {
    /// A window for the epoch held now, first seen `now`.
    pub fn new(epoch: u32, now: Instant) -> Self {
        EpochWindow { epoch, since: now }
    }

    /// Notes the epoch of the key held `now` (a newer one restarts the
    /// overlap), and says whether the epoch before it is still opened.
    pub fn previous_open(&mut self, held: u32, now: Instant) -> bool {
        if held > self.epoch {
            *self = EpochWindow::new(held, now);
        }
        now.saturating_duration_since(self.since) < EPOCH_OVERLAP
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_previous_epoch_is_opened_for_the_overlap_after_a_new_one() {
        let t0 = Instant::now();
        let mut w = EpochWindow::new(3, t0);
        assert!(w.previous_open(3, t0 + Duration::from_secs(1)));
        assert!(!w.previous_open(3, t0 + EPOCH_OVERLAP));
        // A new epoch restarts it.
        let t1 = t0 + Duration::from_secs(100);
        assert!(w.previous_open(4, t1));
        assert!(w.previous_open(4, t1 + EPOCH_OVERLAP - Duration::from_millis(1)));
        assert!(!w.previous_open(4, t1 + EPOCH_OVERLAP));
        // An older key held (a store restored) changes nothing.
        assert!(!w.previous_open(2, t1 + EPOCH_OVERLAP));
    }
}
