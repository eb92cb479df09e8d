//! The capture path between the microphone and the encoder: optional noise
//! suppression (nnnoiseless, an RNNoise port), then a gate that decides whether
//! a frame is sent: always, by voice activity, or by push-to-talk.
//!
//! The voice activity detector follows the noise floor and opens as soon as a
//! frame stands clearly above it, then holds open for a hangover after the
//! level falls back, so the ends of words are not cut. A closed gate means the
//! frame is not sent: call [`crate::codec::Encoder::skip_frame`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nnnoiseless::DenoiseState;

use crate::mixer::rms_dbfs;

/// When captured frames are sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum GateMode {
    /// Always (an open microphone).
    AlwaysOn,
    /// While the voice activity detector hears speech.
    #[default]
    VoiceActivity,
    /// While the push-to-talk key is held.
    PushToTalk,
}

/// How the voice activity detector decides.
#[derive(Clone, Debug, PartialEq)]
pub struct VadConfig {
    /// Open when a frame is this many dB above the noise floor. Default 10.
    pub open_above_floor_db: f32,
    /// Stay open while frames are this many dB above the floor. Default 5.
    pub hold_above_floor_db: f32,
    /// Never open below this absolute level (dBFS). Default -55.
    pub min_open_dbfs: f32,
    /// Stay open this long after the level falls. Default 300 ms.
    pub hangover: Duration,
    /// How fast the noise floor may rise while speech is on, in dB per
    /// second (it falls at once). Default 2.
    pub floor_rise_db_per_second: f32,
    /// How fast it may rise while speech is off. Default 20.
    pub floor_rise_when_closed_db_per_second: f32,
}

impl Default for VadConfig {
    fn default() -> Self {
        VadConfig {
            open_above_floor_db: 10.0,
            hold_above_floor_db: 5.0,
            min_open_dbfs: -55.0,
            hangover: Duration::from_millis(300),
            floor_rise_db_per_second: 2.0,
            floor_rise_when_closed_db_per_second: 20.0,
        }
    }
}

/// An energy voice activity detector with hysteresis and hangover.
#[derive(Clone, Debug)]
pub struct VoiceActivityDetector {
    config: VadConfig,
    floor_dbfs: f32,
    open: bool,
    hangover_left: Duration,
}

impl VoiceActivityDetector {
    /// A detector that starts closed, with a floor of -70 dBFS.
    pub fn new(config: VadConfig) -> Self {
        VoiceActivityDetector {
            config,
            floor_dbfs: -70.0,
            open: false,
            hangover_left: Duration::ZERO,
        }
    }

    /// The noise floor it currently assumes, in dBFS.
    pub fn noise_floor_dbfs(&self) -> f32 {
        self.floor_dbfs
    }

    /// Takes one 48 kHz frame; says whether speech is on.
    pub fn process(&mut self, frame: &[f32]) -> bool {
        let level = rms_dbfs(frame);
        let frame_time = Duration::from_micros(frame.len() as u64 * 125 / 6);
        let rate = if self.open {
            self.config.floor_rise_db_per_second
        } else {
            self.config.floor_rise_when_closed_db_per_second
        };
        let rise = rate * frame_time.as_secs_f32();
        self.floor_dbfs = if level < self.floor_dbfs {
            level.max(-100.0)
        } else {
            (self.floor_dbfs + rise).min(level)
        };
        let open_at =
            (self.floor_dbfs + self.config.open_above_floor_db).max(self.config.min_open_dbfs);
        let hold_at = (self.floor_dbfs + self.config.hold_above_floor_db)
            .max(self.config.min_open_dbfs - 5.0);
        if level >= open_at || (self.open && level >= hold_at) {
            self.open = true;
            self.hangover_left = self.config.hangover;
        } else if self.open {
            self.hangover_left = self.hangover_left.saturating_sub(frame_time);
            self.open = !self.hangover_left.is_zero();
        }
        self.open
    }
}

/// The push-to-talk key's state, shared between whoever watches the key (the
/// UI, the local API) and the capture path. Cloning gives another handle to the
/// same key.
#[derive(Clone, Debug, Default)]
pub struct PushToTalk {
    pressed: Arc<AtomicBool>,
}

impl PushToTalk {
    /// Marks the key held or released.
    pub fn set_pressed(&self, pressed: bool) {
        self.pressed.store(pressed, Ordering::Relaxed);
    }

    /// Whether the key is held.
    pub fn is_pressed(&self) -> bool {
        self.pressed.load(Ordering::Relaxed)
    }
}

/// Noise suppression with nnnoiseless, on 10 ms chunks.
pub struct Denoiser {
    state: Box<DenoiseState<'static>>,
    input: Vec<f32>,
    output: Vec<f32>,
}

impl std::fmt::Debug for Denoiser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Denoiser").finish_non_exhaustive()
    }
}

impl Default for Denoiser {
    fn default() -> Self {
        Self::new()
    }
}

impl Denoiser {
    /// A fresh denoiser.
    pub fn new() -> Self {
        Denoiser {
            state: DenoiseState::new(),
            input: vec![0.0; DenoiseState::FRAME_SIZE],
            output: vec![0.0; DenoiseState::FRAME_SIZE],
        }
    }

    /// Denoises `frame` in place. Its length should be a multiple of 480
    /// (10 ms); a shorter tail is left as it is.
    pub fn process(&mut self, frame: &mut [f32]) {
        for chunk in frame.chunks_exact_mut(DenoiseState::FRAME_SIZE) {
            // nnnoiseless works on 16-bit sample values held in f32s.
            for (i, s) in self.input.iter_mut().zip(chunk.iter()) {
                *i = s * 32768.0;
            }
            self.state.process_frame(&mut self.output, &self.input);
            for (s, o) in chunk.iter_mut().zip(self.output.iter()) {
                *s = o / 32768.0;
            }
        }
    }
}

/// Settings of the capture path.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CaptureConfig {
    /// When frames are sent.
    pub gate: GateMode,
    /// The voice activity detector (used in [`GateMode::VoiceActivity`]).
    pub vad: VadConfig,
    /// Whether to suppress noise before anything else.
    pub denoise: bool,
}

/// Denoiser, voice activity detector and push-to-talk in one.
#[derive(Debug)]
pub struct CaptureChain {
    gate: GateMode,
    vad: VoiceActivityDetector,
    denoiser: Option<Denoiser>,
    push_to_talk: PushToTalk,
    voice_active: bool,
}

impl CaptureChain {
    /// A capture path with those settings.
    pub fn new(config: CaptureConfig) -> Self {
        CaptureChain {
            gate: config.gate,
            vad: VoiceActivityDetector::new(config.vad),
            denoiser: config.denoise.then(Denoiser::new),
            push_to_talk: PushToTalk::default(),
            voice_active: false,
        }
    }

    /// A handle on the push-to-talk key.
    pub fn push_to_talk(&self) -> PushToTalk {
        self.push_to_talk.clone()
    }

    /// Changes when frames are sent.
    pub fn set_gate(&mut self, gate: GateMode) {
        self.gate = gate;
    }

    /// Turns noise suppression on or off.
    pub fn set_denoise(&mut self, on: bool) {
        match (on, self.denoiser.is_some()) {
            (true, false) => self.denoiser = Some(Denoiser::new()),
            (false, true) => self.denoiser = None,
            _ => {}
        }
    }

    /// Whether the detector heard speech in the last frame (whatever the gate
    /// mode: the UI shows it).
    pub fn voice_active(&self) -> bool {
        self.voice_active
    }

    /// Processes one frame in place (denoising it if asked) and says whether it
    /// should be sent.
    pub fn process(&mut self, frame: &mut [f32]) -> bool {
        if let Some(denoiser) = &mut self.denoiser {
            denoiser.process(frame);
        }
        self.voice_active = self.vad.process(frame);
        match self.gate {
            GateMode::AlwaysOn => true,
            GateMode::VoiceActivity => self.voice_active,
            GateMode::PushToTalk => self.push_to_talk.is_pressed(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(state: &mut u32, amp: f32) -> f32 {
        *state ^= *state << 13;
        *state ^= *state >> 17;
        *state ^= *state << 5;
        (*state as f32 / u32::MAX as f32 * 2.0 - 1.0) * amp
    }

    #[test]
    fn vad_opens_on_speech_and_holds_through_the_hangover() {
        let mut vad = VoiceActivityDetector::new(VadConfig::default());
        let mut rng = 1u32;
        let mut frame = |amp: f32| -> Vec<f32> { (0..480).map(|_| noise(&mut rng, amp)).collect() };
        // One second of quiet room noise (-60 dBFS or so): closed.
        for _ in 0..100 {
            assert!(!vad.process(&frame(0.002)));
        }
        // A word: opens on the first frame.
        assert!(vad.process(&frame(0.2)));
        for _ in 0..20 {
            assert!(vad.process(&frame(0.2)));
        }
        // Back to the room: holds for 300 ms, then closes.
        let open_frames = (0..60).take_while(|_| vad.process(&frame(0.002))).count();
        assert_eq!(open_frames, 29, "hangover frames");
        assert!(!vad.process(&frame(0.002)));
    }

    #[test]
    fn vad_follows_a_rising_noise_floor() {
        let mut vad = VoiceActivityDetector::new(VadConfig::default());
        let mut rng = 9u32;
        let mut frame = |amp: f32| -> Vec<f32> { (0..480).map(|_| noise(&mut rng, amp)).collect() };
        for _ in 0..3000 {
            vad.process(&frame(0.01));
        }
        assert!(
            !vad.process(&frame(0.01)),
            "steady fan noise must not hold the gate open"
        );
        assert!(vad.noise_floor_dbfs() > -50.0);
    }

    #[test]
    fn push_to_talk_gates_frames() {
        let mut chain = CaptureChain::new(CaptureConfig {
            gate: GateMode::PushToTalk,
            ..Default::default()
        });
        let key = chain.push_to_talk();
        let mut frame = vec![0.3; 480];
        assert!(!chain.process(&mut frame));
        key.set_pressed(true);
        assert!(chain.process(&mut frame));
        key.set_pressed(false);
        assert!(!chain.process(&mut frame));
    }

    #[test]
    fn denoiser_reduces_stationary_noise() {
        let mut denoiser = Denoiser::new();
        let mut rng = 3u32;
        let mut before = 0.0;
        let mut after = 0.0;
        for i in 0..300 {
            let mut frame: Vec<f32> = (0..480).map(|_| noise(&mut rng, 0.05)).collect();
            let energy: f32 = frame.iter().map(|s| s * s).sum();
            denoiser.process(&mut frame);
            if i >= 100 {
                before += energy;
                after += frame.iter().map(|s| s * s).sum::<f32>();
            }
        }
        assert!(after < before * 0.25, "noise energy {before} -> {after}");
    }
}
