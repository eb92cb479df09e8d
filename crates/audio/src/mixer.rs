//! The mixer: sums the speakers into one 48 kHz mono stream, with a gain and a
//! mute per speaker, deafen for everything, and a soft clipper so that several
//! loud speakers bend instead of cracking. A level meter per speaker drives the
//! speaking indicators.
//!
//! Use per tick: [`Mixer::begin`], then [`Mixer::add`] for each speaker's
//! decoded samples, then [`Mixer::finish`]. Nothing allocates once a speaker is
//! known.

use std::collections::HashMap;
use std::hash::Hash;

/// How the mixer and its meters behave.
#[derive(Clone, Debug, PartialEq)]
pub struct MixerConfig {
    /// A speaker whose level is above this (dBFS) is speaking. Default -45.
    pub speaking_threshold_dbfs: f32,
    /// How fast a meter falls, in dB per second. Default 60.
    pub meter_release_db_per_second: f32,
    /// Most speakers with settings; beyond it new speakers are not metered and
    /// get the default gain. Default 256.
    pub max_speakers: usize,
    /// Where the soft clipper starts bending, 0.0 to 1.0. Default 0.8.
    pub clip_knee: f32,
}

impl Default for MixerConfig {
    fn default() -> Self {
        MixerConfig {
            speaking_threshold_dbfs: -45.0,
            meter_release_db_per_second: 60.0,
            max_speakers: 256,
            clip_knee: 0.8,
        }
    }
}

/// A speaker's level, for a speaking indicator.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SpeakerLevel {
    /// Smoothed level in dBFS (falls slowly, rises at once); -120 is silence.
    pub level_dbfs: f32,
    /// Peak sample of the last frame mixed, 0.0 to 1.0 and beyond.
    pub peak: f32,
    /// Whether the level is above the speaking threshold.
    pub speaking: bool,
}

/// The quietest level a meter shows.
pub const SILENCE_DBFS: f32 = -120.0;

#[derive(Clone, Debug)]
struct Channel {
    gain: f32,
    muted: bool,
    level_dbfs: f32,
    peak: f32,
}

impl Default for Channel {
    fn default() -> Self {
        Channel {
            gain: 1.0,
            muted: false,
            level_dbfs: SILENCE_DBFS,
            peak: 0.0,
        }
    }
}

/// Root mean square of `samples` in dBFS, [`SILENCE_DBFS`] for silence.
pub fn rms_dbfs(samples: &[f32]) -> f32 {
    if samples.is_empty() {
        return SILENCE_DBFS;
    }
    let energy = samples.iter().map(|s| s * s).sum::<f32>() / samples.len() as f32;
    if energy <= 1e-12 {
        SILENCE_DBFS
    } else {
        (10.0 * energy.log10()).max(SILENCE_DBFS)
    }
}

/// Bends samples above `knee` smoothly towards 1.0, so a sum of loud speakers
/// never exceeds full scale and never clips hard.
pub fn soft_clip(samples: &mut [f32], knee: f32) {
    let knee = knee.clamp(0.0, 0.99);
    let room = 1.0 - knee;
    for s in samples {
        let magnitude = s.abs();
        if magnitude > knee {
            let bent = knee + room * ((magnitude - knee) / room).tanh();
            *s = bent.copysign(*s);
        } else if s.is_nan() {
            *s = 0.0;
        }
    }
}

/// The mixer, keyed by whatever identifies a speaker (`K`). See the module
/// documentation.
#[derive(Debug)]
pub struct Mixer<K> {
    config: MixerConfig,
    channels: HashMap<K, Channel>,
    deafened: bool,
}

impl<K: Eq + Hash + Clone> Mixer<K> {
    /// A mixer with no speakers.
    pub fn new(config: MixerConfig) -> Self {
        Mixer {
            config,
            channels: HashMap::new(),
            deafened: false,
        }
    }

    fn channel(&mut self, speaker: &K) -> Option<&mut Channel> {
        if !self.channels.contains_key(speaker) && self.channels.len() >= self.config.max_speakers {
            return None;
        }
        Some(self.channels.entry(speaker.clone()).or_default())
    }

    /// Sets a speaker's gain (linear: 1.0 unchanged, 0.5 is -6 dB; clamped to
    /// 0.0..=8.0). Returns false if the mixer already has its most speakers.
    pub fn set_gain(&mut self, speaker: &K, gain: f32) -> bool {
        let gain = if gain.is_finite() {
            gain.clamp(0.0, 8.0)
        } else {
            1.0
        };
        self.channel(speaker).map(|c| c.gain = gain).is_some()
    }

    /// Mutes or unmutes a speaker for this listener. Their meter keeps
    /// showing when they speak.
    pub fn set_muted(&mut self, speaker: &K, muted: bool) -> bool {
        self.channel(speaker).map(|c| c.muted = muted).is_some()
    }

    /// Deafens (silences everything) or undeafens.
    pub fn set_deafened(&mut self, deafened: bool) {
        self.deafened = deafened;
    }

    /// Whether the mixer is deafened.
    pub fn is_deafened(&self) -> bool {
        self.deafened
    }

    /// Forgets a speaker who left.
    pub fn remove(&mut self, speaker: &K) {
        self.channels.remove(speaker);
    }

    /// A speaker's level, if they have been mixed or configured.
    pub fn level(&self, speaker: &K) -> Option<SpeakerLevel> {
        self.channels.get(speaker).map(|c| SpeakerLevel {
            level_dbfs: c.level_dbfs,
            peak: c.peak,
            speaking: c.level_dbfs > self.config.speaking_threshold_dbfs,
        })
    }

    /// Starts a tick: clears `out`.
    pub fn begin(&mut self, out: &mut [f32]) {
        out.fill(0.0);
    }

    /// Adds one speaker's samples (as many as `out` holds, or fewer) to `out`,
    /// and updates their meter.
    pub fn add(&mut self, speaker: &K, samples: &[f32], out: &mut [f32]) {
        let release = self.config.meter_release_db_per_second * samples.len() as f32
            / crate::SAMPLE_RATE as f32;
        let Some(channel) = self.channel(speaker) else {
            // Over the limit: still heard, at unity gain, but not metered.
            for (o, s) in out.iter_mut().zip(samples) {
                *o += s;
            }
            return;
        };
        let level = rms_dbfs(samples);
        channel.level_dbfs = level.max(channel.level_dbfs - release);
        channel.peak = samples.iter().fold(0.0f32, |m, s| m.max(s.abs()));
        if channel.muted {
            return;
        }
        let gain = channel.gain;
        for (o, s) in out.iter_mut().zip(samples) {
            *o += s * gain;
        }
    }

    /// Ends a tick: silences `out` if deafened, soft-clips it otherwise.
    pub fn finish(&mut self, out: &mut [f32]) {
        if self.deafened {
            out.fill(0.0);
        } else {
            soft_clip(out, self.config.clip_knee);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_with_gain_mute_and_deafen() {
        let mut mixer = Mixer::new(MixerConfig::default());
        let mut out = [0.0f32; 4];
        mixer.set_gain(&"a", 0.5);
        mixer.set_muted(&"c", true);
        mixer.begin(&mut out);
        mixer.add(&"a", &[0.2; 4], &mut out);
        mixer.add(&"b", &[0.1; 4], &mut out);
        mixer.add(&"c", &[0.3; 4], &mut out);
        mixer.finish(&mut out);
        for s in out {
            assert!((s - 0.2).abs() < 1e-6, "{s}");
        }
        // Muted, yet the meter still shows them speaking.
        assert!(mixer.level(&"c").unwrap().speaking);
        mixer.set_deafened(true);
        mixer.begin(&mut out);
        mixer.add(&"a", &[0.2; 4], &mut out);
        mixer.finish(&mut out);
        assert_eq!(out, [0.0; 4]);
    }

    #[test]
    fn soft_clip_is_bounded_monotonic_and_transparent_below_the_knee() {
        let mut xs: Vec<f32> = (-400..=400).map(|i| i as f32 / 100.0).collect();
        let before = xs.clone();
        soft_clip(&mut xs, 0.8);
        for (x, y) in before.iter().zip(&xs) {
            assert!(y.abs() <= 1.0);
            if x.abs() <= 0.8 {
                assert_eq!(x, y);
            }
        }
        assert!(xs.windows(2).all(|w| w[1] >= w[0]));
        let mut nan = [f32::NAN];
        soft_clip(&mut nan, 0.8);
        assert_eq!(nan, [0.0]);
    }

    #[test]
    fn meter_rises_at_once_and_falls_slowly() {
        let mut mixer = Mixer::new(MixerConfig::default());
        let mut out = [0.0f32; 480];
        let loud: Vec<f32> = (0..480).map(|i| 0.5 * (i as f32 * 0.1).sin()).collect();
        mixer.add(&1u8, &loud, &mut out);
        let level = mixer.level(&1).unwrap();
        assert!(level.speaking && level.level_dbfs > -10.0);
        mixer.add(&1u8, &[0.0; 480], &mut out);
        let after = mixer.level(&1).unwrap().level_dbfs;
        assert!((level.level_dbfs - after - 0.6).abs() < 0.01, "{after}");
        for _ in 0..100 {
            mixer.add(&1u8, &[0.0; 480], &mut out);
        }
        assert!(!mixer.level(&1).unwrap().speaking);
    }

    #[test]
    fn speaker_limit_is_enforced() {
        let mut mixer = Mixer::new(MixerConfig {
            max_speakers: 2,
            ..Default::default()
        });
        assert!(mixer.set_gain(&1, 1.0));
        assert!(mixer.set_gain(&2, 1.0));
        assert!(!mixer.set_gain(&3, 1.0));
        let mut out = [0.0f32; 2];
        mixer.add(&3, &[0.25; 2], &mut out);
        assert_eq!(out, [0.25; 2]);
        assert!(mixer.level(&3).is_none());
    }
}
