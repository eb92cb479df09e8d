//! A virtual clock that jumps to the next wakeup, in the manner of
//! quinn-proto's test `Pair::step`: a test drives every state machine and
//! the network until none has anything to do now, then asks the clock to
//! step to the earliest deadline any of them named (their `poll_timeout`,
//! the network's next arrival, the next audio frame), and repeats. Time
//! never runs backwards and a run always ends at its limit.

use std::time::Duration;

/// Time since the start of a run. See the module documentation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VirtualClock {
    now: Duration,
}

impl VirtualClock {
    /// A clock at time zero.
    pub fn new() -> Self {
        VirtualClock::default()
    }

    /// The current time.
    pub fn now(&self) -> Duration {
        self.now
    }

    /// Moves to `t` if it is later than now; never goes back.
    pub fn advance_to(&mut self, t: Duration) {
        self.now = self.now.max(t);
    }

    /// Steps to the earliest of `deadlines` (those in the past count as
    /// now), but not past `limit`. Returns false, without moving, when no
    /// deadline is at or before `limit`: the run is over.
    pub fn step(
        &mut self,
        deadlines: impl IntoIterator<Item = Option<Duration>>,
        limit: Duration,
    ) -> bool {
        let next = deadlines.into_iter().flatten().min();
        match next {
            Some(t) if t <= limit => {
                self.advance_to(t);
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_to_the_earliest_deadline_and_stops_at_the_limit() {
        let ms = Duration::from_millis;
        let mut clock = VirtualClock::new();
        assert!(clock.step([Some(ms(30)), None, Some(ms(10))], ms(100)));
        assert_eq!(clock.now(), ms(10));
        assert!(clock.step([Some(ms(5))], ms(100)), "a past deadline is now");
        assert_eq!(clock.now(), ms(10));
        assert!(!clock.step([Some(ms(200))], ms(100)));
        assert!(!clock.step([None], ms(100)));
        assert_eq!(clock.now(), ms(10));
    }
}
