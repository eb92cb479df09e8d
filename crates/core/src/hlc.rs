//! Hybrid logical clocks: wall-clock milliseconds with a logical counter, so
//! that timestamps are close to real time yet strictly increase on each node
//! and after every record it has seen. Last-writer-wins compares these.

use serde::{Deserialize, Serialize};

/// Bits of an [`Hlc`] that hold the logical counter.
const COUNTER_BITS: u32 = 16;
const COUNTER_MASK: u64 = (1 << COUNTER_BITS) - 1;

/// A hybrid logical clock timestamp: 48 bits of Unix milliseconds, 16 bits of
/// logical counter. Ordered as an integer.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
pub struct Hlc(pub u64);

impl Hlc {
    /// The smallest timestamp.
    pub const ZERO: Hlc = Hlc(0);
    /// The largest timestamp.
    pub const MAX: Hlc = Hlc(u64::MAX);

    /// A timestamp from its parts; `physical_ms` is truncated to 48 bits.
    pub fn new(physical_ms: u64, counter: u16) -> Self {
        Hlc((physical_ms << COUNTER_BITS) | u64::from(counter))
    }

    /// Unix milliseconds of this timestamp.
    pub fn physical_ms(self) -> u64 {
        self.0 >> COUNTER_BITS
    }

    /// The logical counter.
    pub fn counter(self) -> u16 {
        // The mask keeps 16 bits, so the cast cannot lose anything.
        (self.0 & COUNTER_MASK) as u16
    }

    /// Big-endian bytes, which sort like the timestamp (used in store keys).
    pub fn to_be_bytes(self) -> [u8; 8] {
        self.0.to_be_bytes()
    }
}

impl std::fmt::Display for Hlc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.physical_ms(), self.counter())
    }
}

/// A node's clock. Sans-IO: the caller passes the wall-clock time in.
#[derive(Clone, Debug, Default)]
pub struct HlcClock {
    last: Hlc,
}

impl HlcClock {
    /// A clock that has seen nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// A timestamp for a new event at wall time `wall_ms`: at least the wall
    /// time, and strictly after everything this clock issued or observed.
    pub fn now(&mut self, wall_ms: u64) -> Hlc {
        let last = self.last;
        let next = if wall_ms > last.physical_ms() {
            Hlc::new(wall_ms, 0)
        } else if last.counter() < u16::MAX {
            Hlc(last.0 + 1)
        } else {
            // Counter exhausted within one millisecond: borrow the next one.
            Hlc::new(last.physical_ms() + 1, 0)
        };
        self.last = next;
        next
    }

    /// Takes a remote timestamp into account, so our next event orders after it.
    pub fn observe(&mut self, remote: Hlc) {
        if remote > self.last {
            self.last = remote;
        }
    }

    /// The latest timestamp issued or observed.
    pub fn last(&self) -> Hlc {
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_round_trip() {
        let h = Hlc::new(1_700_000_000_123, 42);
        assert_eq!(h.physical_ms(), 1_700_000_000_123);
        assert_eq!(h.counter(), 42);
    }

    #[test]
    fn strictly_increases_when_wall_clock_stalls_or_goes_back() {
        let mut c = HlcClock::new();
        let a = c.now(1000);
        let b = c.now(1000);
        let d = c.now(900);
        assert!(a < b && b < d);
        assert_eq!(d.physical_ms(), 1000);
    }

    #[test]
    fn orders_after_observed_remote_time() {
        let mut c = HlcClock::new();
        c.observe(Hlc::new(5000, 7));
        let t = c.now(1000);
        assert!(t > Hlc::new(5000, 7));
    }

    #[test]
    fn counter_overflow_moves_to_next_millisecond() {
        let mut c = HlcClock::new();
        c.observe(Hlc::new(10, u16::MAX));
        let t = c.now(10);
        assert_eq!(t, Hlc::new(11, 0));
    }
}
