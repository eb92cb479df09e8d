//! Budgets in packets per second: a token bucket with `now` passed in.
//!
//! The session spends one on every punch packet it sends (a total budget
//! across all peers, so forged or hostile presences can make it send at
//! most that many packets a second anywhere, whatever their number) and
//! one on every presence it publishes early to answer a newcomer. At the
//! limit a packet is dropped and counted, never queued.

use std::time::Duration;

const MICRO: u64 = 1_000_000;

/// A token bucket: `rate` tokens a second, at most `burst` saved up.
#[derive(Clone, Debug)]
pub struct Budget {
    micro_tokens: u64,
    capacity: u64,
    rate: u64,
    last: Option<Duration>,
}

impl Budget {
    /// A full bucket.
    pub fn new(rate_per_second: u64, burst: u64) -> Self {
        let capacity = burst.max(1).saturating_mul(MICRO);
        Budget {
            micro_tokens: capacity,
            capacity,
            rate: rate_per_second,
            last: None,
        }
    }

    fn refill(&mut self, now: Duration) {
        let elapsed = self
            .last
            .map_or(0, |last| now.saturating_sub(last).as_micros() as u64);
        self.last = Some(self.last.map_or(now, |last| last.max(now)));
        self.micro_tokens = self
            .micro_tokens
            .saturating_add(elapsed.saturating_mul(self.rate))
            .min(self.capacity);
    }

    /// Takes one token if there is one at `now`.
    pub fn try_take(&mut self, now: Duration) -> bool {
        self.refill(now);
        if self.micro_tokens >= MICRO {
            self.micro_tokens -= MICRO;
            true
        } else {
            false
        }
    }

    /// When the next token is there (now, if one is).
    pub fn next_token_at(&self, now: Duration) -> Duration {
        if self.micro_tokens >= MICRO || self.rate == 0 {
            return now;
        }
        let missing = MICRO - self.micro_tokens;
        let last = self.last.unwrap_or(now);
        last + Duration::from_micros(missing.div_ceil(self.rate))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_allows_its_burst_then_its_rate_and_never_more() {
        let mut b = Budget::new(40, 20);
        let ms = Duration::from_millis;
        let burst = (0..100).filter(|_| b.try_take(ms(0))).count();
        assert_eq!(burst, 20);
        // Ten seconds of someone trying every millisecond.
        let mut taken = 0;
        for t in 1..=10_000 {
            if b.try_take(ms(t)) {
                taken += 1;
            }
        }
        assert!((399..=401).contains(&taken), "{taken} in 10 s at 40/s");
        assert!(b.next_token_at(ms(10_000)) > ms(10_000));
        assert!(b.next_token_at(ms(10_000)) <= ms(10_025));
        // Time going backwards gives nothing.
        let mut c = Budget::new(10, 1);
        assert!(c.try_take(ms(1000)));
        assert!(!c.try_take(ms(0)));
    }
}
