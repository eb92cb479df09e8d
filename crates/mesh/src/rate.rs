//! Rate limits on incoming records, sans IO: token buckets per key (a peer,
//! an author), with `now` passed in.
//!
//! The table of buckets is bounded: at [`RateLimiter::new`]'s `max_keys` the
//! bucket used least recently is forgotten (a forgotten key starts again with
//! a full bucket, which is the generous side of the rule and costs an
//! attacker a fresh key per burst).

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// A rate: `per_second` tokens a second, up to `burst` saved.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    /// Sustained records a second.
    pub per_second: f64,
    /// Records allowed at once after a quiet spell.
    pub burst: f64,
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Token buckets by key.
#[derive(Debug)]
pub struct RateLimiter<K> {
    rate: Rate,
    max_keys: usize,
    buckets: HashMap<K, Bucket>,
}

impl<K: Eq + Hash + Clone> RateLimiter<K> {
    /// Buckets of `rate`, for at most `max_keys` keys.
    pub fn new(rate: Rate, max_keys: usize) -> Self {
        RateLimiter {
            rate,
            max_keys: max_keys.max(1),
            buckets: HashMap::new(),
        }
    }

    /// Takes one token for `key` at `now`; false if its bucket is empty.
    pub fn allow(&mut self, key: &K, now: Instant) -> bool {
        let rate = self.rate;
        if !self.buckets.contains_key(key) && self.buckets.len() >= self.max_keys {
            self.evict_least_recent();
        }
        let b = self.buckets.entry(key.clone()).or_insert(Bucket {
            tokens: rate.burst,
            last: now,
        });
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate.per_second).min(rate.burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Forgets `key` (a peer that disconnected).
    pub fn forget(&mut self, key: &K) {
        self.buckets.remove(key);
    }

    /// Forgets buckets idle for longer than `idle` (they would be full again).
    pub fn prune(&mut self, now: Instant, idle: Duration) {
        self.buckets
            .retain(|_, b| now.saturating_duration_since(b.last) < idle);
    }

    /// Number of keys tracked.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    fn evict_least_recent(&mut self) {
        if let Some(k) = self
            .buckets
            .iter()
            .min_by_key(|(_, b)| b.last)
            .map(|(k, _)| k.clone())
        {
            self.buckets.remove(&k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_sustained_rate() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(
            Rate {
                per_second: 10.0,
                burst: 5.0,
            },
            10,
        );
        let allowed = (0..20).filter(|_| r.allow(&1u8, t0)).count();
        assert_eq!(allowed, 5);
        // One second later: 10 more tokens, capped at the burst of 5.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!((0..20).filter(|_| r.allow(&1u8, t1)).count(), 5);
        // 100 ms later: one token.
        let t2 = t1 + Duration::from_millis(100);
        assert_eq!((0..20).filter(|_| r.allow(&1u8, t2)).count(), 1);
        // Another key has its own bucket.
        assert!(r.allow(&2u8, t2));
    }

    #[test]
    fn the_table_stays_bounded() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(
            Rate {
                per_second: 1.0,
                burst: 1.0,
            },
            100,
        );
        for k in 0..10_000u32 {
            r.allow(&k, t0 + Duration::from_micros(u64::from(k)));
        }
        assert_eq!(r.len(), 100);
        r.prune(t0 + Duration::from_secs(3600), Duration::from_secs(60));
        assert!(r.is_empty());
    }
}

/// Slots for answering inbound sync requests, shared fairly: at most
/// `total` at once, and at most `per_peer` of them for any one peer, so one
/// peer flooding requests leaves slots for the others. At a limit a request
/// is refused (the peer is told "busy" and tries later), never queued.
#[derive(Debug)]
pub struct FairSlots<K> {
    total: usize,
    per_peer: usize,
    busy: usize,
    by_peer: HashMap<K, usize>,
}

impl<K: Eq + Hash + Clone> FairSlots<K> {
    /// `total` slots, `per_peer` of them at most for one key (both at least 1).
    pub fn new(total: usize, per_peer: usize) -> Self {
        FairSlots {
            total: total.max(1),
            per_peer: per_peer.clamp(1, total.max(1)),
            busy: 0,
            by_peer: HashMap::new(),
        }
    }

    /// Takes a slot for `peer`, or says no. The table holds only peers with
    /// a slot taken, so it is bounded by `total`.
    pub fn try_take(&mut self, peer: &K) -> bool {
        let mine = self.by_peer.get(peer).copied().unwrap_or(0);
        if self.busy >= self.total || mine >= self.per_peer {
            return false;
        }
        self.busy += 1;
        *self.by_peer.entry(peer.clone()).or_insert(0) += 1;
        true
    }

    /// Gives back a slot `peer` took.
    pub fn release(&mut self, peer: &K) {
        if let Some(n) = self.by_peer.get_mut(peer) {
            *n -= 1;
            self.busy = self.busy.saturating_sub(1);
            if *n == 0 {
                self.by_peer.remove(peer);
            }
        }
    }

    /// Slots taken now.
    pub fn busy(&self) -> usize {
        self.busy
    }
}

#[cfg(test)]
mod fair_tests {
    use super::*;

    #[test]
    fn a_flooding_peer_leaves_slots_for_the_others() {
        let mut slots = FairSlots::new(16, 8);
        let taken = (0..100).filter(|_| slots.try_take(&"flooder")).count();
        assert_eq!(taken, 8);
        for _ in 0..8 {
            assert!(slots.try_take(&"honest"));
        }
        assert!(!slots.try_take(&"third"), "all 16 are busy");
        slots.release(&"flooder");
        assert!(slots.try_take(&"third"));
        // Releasing what was never taken changes nothing.
        slots.release(&"nobody");
        assert_eq!(slots.busy(), 16);
    }
}
