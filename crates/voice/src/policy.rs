//! Small policies of the session, pure and tested apart: the encoder's
//! bitrate for the loss the links report, and speaking detection from the
//! levels the driver measures.

use std::time::Duration;

/// The encoder's bitrate for the worst loss among our links (0.0 to 1.0):
/// the default 32 kbit/s while the paths are clean, less as they lose more,
/// because heavy loss usually means a congested path and FEC and
/// redundancy (turned on by the expected loss) need the room.
pub fn bitrate_for_loss(loss: f64) -> u32 {
    if loss >= 0.10 {
        16_000
    } else if loss >= 0.05 {
        24_000
    } else {
        32_000
    }
}

/// The loss the encoder should plan for, in percent (its FEC strength).
pub fn expected_loss_percent(loss: f64) -> u8 {
    (loss * 100.0).round().clamp(0.0, 100.0) as u8
}

/// Whether one voice is speaking, from its level over time: speaking as
/// soon as a level reaches `threshold_dbfs`, silent once the levels stay
/// below it for `hold` (so the gaps between words do not flicker).
#[derive(Clone, Debug)]
pub struct SpeakingDetector {
    threshold_dbfs: f32,
    hold: Duration,
    last_loud: Option<Duration>,
    speaking: bool,
}

impl SpeakingDetector {
    /// A silent detector.
    pub fn new(threshold_dbfs: f32, hold: Duration) -> Self {
        SpeakingDetector {
            threshold_dbfs,
            hold,
            last_loud: None,
            speaking: false,
        }
    }

    /// Takes a level (dBFS) measured at `now`; returns the new state when
    /// it changed.
    pub fn on_level(&mut self, level_dbfs: f32, now: Duration) -> Option<bool> {
        if level_dbfs.is_finite() && level_dbfs >= self.threshold_dbfs {
            self.last_loud = Some(now);
        }
        self.update(now)
    }

    /// Re-evaluates at `now` with no new level; returns the new state when
    /// it changed.
    pub fn update(&mut self, now: Duration) -> Option<bool> {
        let speaking = self
            .last_loud
            .is_some_and(|t| now.saturating_sub(t) < self.hold);
        (speaking != self.speaking).then(|| {
            self.speaking = speaking;
            speaking
        })
    }

    /// Whether it is speaking now.
    pub fn speaking(&self) -> bool {
        self.speaking
    }

    /// When it would fall silent, while speaking.
    pub fn silent_at(&self) -> Option<Duration> {
        self.speaking
            .then(|| self.last_loud.map(|t| t + self.hold))
            .flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heavier_loss_means_a_lower_bitrate() {
        assert_eq!(bitrate_for_loss(0.0), 32_000);
        assert_eq!(bitrate_for_loss(0.06), 24_000);
        assert_eq!(bitrate_for_loss(0.2), 16_000);
        assert_eq!(expected_loss_percent(0.054), 5);
        assert_eq!(expected_loss_percent(f64::NAN), 0);
        assert_eq!(expected_loss_percent(3.0), 100);
    }

    #[test]
    fn speaking_starts_at_once_and_ends_after_the_hold() {
        let ms = Duration::from_millis;
        let mut d = SpeakingDetector::new(-45.0, ms(300));
        assert_eq!(d.on_level(-60.0, ms(0)), None);
        assert_eq!(d.on_level(-20.0, ms(10)), Some(true));
        assert_eq!(d.on_level(-60.0, ms(200)), None, "a gap between words");
        assert_eq!(d.silent_at(), Some(ms(310)));
        assert_eq!(d.update(ms(309)), None);
        assert_eq!(d.update(ms(310)), Some(false));
        assert_eq!(d.on_level(f32::NAN, ms(400)), None);
        assert!(!d.speaking());
    }
}
