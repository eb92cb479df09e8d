//! The receive side: one [`SpeakerPipeline`] (jitter buffer and decoder) per
//! remote speaker, and a [`Receiver`] that keeps them by speaker id and mixes
//! them.
//!
//! The voice plane calls [`Receiver::push`] with each packet and the time it
//! arrived; the playout side calls [`Receiver::mix`] once per tick with the time
//! and a buffer to fill. Time is passed in, as everywhere in the engine.

use std::hash::Hash;
use std::time::Duration;

use crate::codec::{Decoder, MAX_PACKET_SAMPLES, VoicePacket};
use crate::error::DecoderError;
use crate::jitter::{JitterBuffer, JitterConfig, JitterStats, Playout};
use crate::mixer::{Mixer, MixerConfig, rms_dbfs};

/// Settings of the receive side.
#[derive(Clone, Debug, PartialEq)]
pub struct ReceiveConfig {
    /// Each speaker's jitter buffer.
    pub jitter: JitterConfig,
    /// The mixer.
    pub mixer: MixerConfig,
    /// Audio below this level (dBFS) is quiet enough for the jitter buffer to
    /// drop or insert a frame unheard. Default -50.
    pub quiet_threshold_dbfs: f32,
    /// Most speakers decoded at once. A packet from one more is dropped, unless
    /// a speaker has been silent for `forget_after`, who then makes room.
    /// Default 64.
    pub max_speakers: usize,
    /// A speaker silent this long may be forgotten. Default 10 s.
    pub forget_after: Duration,
}

impl Default for ReceiveConfig {
    fn default() -> Self {
        ReceiveConfig {
            jitter: JitterConfig::default(),
            mixer: MixerConfig::default(),
            quiet_threshold_dbfs: -50.0,
            max_speakers: 64,
            forget_after: Duration::from_secs(10),
        }
    }
}

/// How long played frames waited in the jitter buffer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WaitStats {
    /// Frames played from a packet.
    pub frames: u64,
    /// Their waits added up.
    pub total: Duration,
    /// The longest wait.
    pub longest: Duration,
}

impl WaitStats {
    /// The mean wait, zero before any frame.
    pub fn mean(&self) -> Duration {
        if self.frames == 0 {
            Duration::ZERO
        } else {
            self.total / u32::try_from(self.frames).unwrap_or(u32::MAX)
        }
    }
}

/// Turns a speaker's [`JitterStats`] into the loss a receiver reports to
/// that speaker: the share of frames lost over the last few seconds, in whole
/// percent rounded up, once per report interval. Sans-IO like the rest.
#[derive(Clone, Debug)]
pub struct LossReporter {
    interval: Duration,
    window: std::collections::VecDeque<(u64, u64)>,
    seconds: usize,
    last: Option<(Duration, JitterStats)>,
}

impl LossReporter {
    /// Reports every `interval`, over the last `intervals` of them (the
    /// offline chain uses 1 s and 5).
    pub fn new(interval: Duration, intervals: usize) -> Self {
        LossReporter {
            interval,
            window: std::collections::VecDeque::with_capacity(intervals.max(1)),
            seconds: intervals.max(1),
            last: None,
        }
    }

    /// Call as often as you like; returns a loss percentage when a report is
    /// due and there was something to report on.
    pub fn update(&mut self, stats: JitterStats, now: Duration) -> Option<u8> {
        let Some((at, previous)) = self.last else {
            self.last = Some((now, stats));
            return None;
        };
        if now < at + self.interval {
            return None;
        }
        self.last = Some((now, stats));
        let due = (stats.played + stats.lost).saturating_sub(previous.played + previous.lost);
        let lost = stats.lost.saturating_sub(previous.lost);
        if self.window.len() == self.seconds {
            self.window.pop_front();
        }
        self.window.push_back((due, lost));
        let (due, lost) = self
            .window
            .iter()
            .fold((0u64, 0u64), |(d, l), (due, lost)| (d + due, l + lost));
        (due > 0).then(|| u8::try_from((lost * 100).div_ceil(due)).unwrap_or(100))
    }
}

/// One remote speaker: jitter buffer, decoder with FEC and concealment, and a
/// little FIFO so that any frame length plays out at any tick length.
#[derive(Debug)]
pub struct SpeakerPipeline {
    jitter: JitterBuffer,
    decoder: Decoder,
    fifo: Vec<f32>,
    decoded: Vec<f32>,
    quiet_threshold_dbfs: f32,
    last_packet_at: Option<Duration>,
    waits: WaitStats,
}

impl SpeakerPipeline {
    /// A pipeline with an empty jitter buffer and a fresh decoder.
    pub fn new(jitter: JitterConfig, quiet_threshold_dbfs: f32) -> Result<Self, DecoderError> {
        Ok(SpeakerPipeline {
            jitter: JitterBuffer::new(jitter),
            decoder: Decoder::new()?,
            fifo: Vec::with_capacity(2 * MAX_PACKET_SAMPLES),
            decoded: vec![0.0; MAX_PACKET_SAMPLES],
            quiet_threshold_dbfs,
            last_packet_at: None,
            waits: WaitStats::default(),
        })
    }

    /// Takes a packet that arrived at `arrived_at`.
    pub fn push(&mut self, packet: VoicePacket, arrived_at: Duration) {
        self.last_packet_at = Some(arrived_at);
        self.jitter.push(packet, arrived_at);
    }

    /// The jitter buffer's counters and delays.
    pub fn stats(&self) -> JitterStats {
        self.jitter.stats()
    }

    /// How long played frames waited in the buffer.
    pub fn waits(&self) -> WaitStats {
        self.waits
    }

    /// When the last packet arrived.
    pub fn last_packet_at(&self) -> Option<Duration> {
        self.last_packet_at
    }

    fn decode_next(&mut self, at: Duration) {
        let playout = self.jitter.pop(at);
        let decoded = &mut self.decoded[..];
        let (produced, from_decoder) = match playout {
            Playout::Idle { samples } => {
                let samples = samples.clamp(1, MAX_PACKET_SAMPLES);
                decoded[..samples].fill(0.0);
                (samples, false)
            }
            Playout::Frame(frame) => {
                let waited = at.saturating_sub(frame.arrived_at);
                self.waits.frames += 1;
                self.waits.total += waited;
                self.waits.longest = self.waits.longest.max(waited);
                let n = self
                    .decoder
                    .decode(&frame.payload, decoded)
                    .unwrap_or_else(|| self.decoder.conceal(frame.samples, decoded));
                (n, true)
            }
            Playout::Recover {
                next_payload,
                samples,
            } => {
                let n = self
                    .decoder
                    .decode_fec(&next_payload, samples, decoded)
                    .unwrap_or_else(|| self.decoder.conceal(samples, decoded));
                (n, true)
            }
            Playout::Conceal { samples }
            | Playout::Gap { samples }
            | Playout::Insert { samples } => (self.decoder.conceal(samples, decoded), true),
        };
        let produced = produced.min(MAX_PACKET_SAMPLES);
        if from_decoder {
            let quiet = rms_dbfs(&self.decoded[..produced]) < self.quiet_threshold_dbfs;
            self.jitter.set_quiet(quiet);
        }
        self.fifo.extend_from_slice(&self.decoded[..produced]);
    }

    /// Fills `out` with this speaker's next samples, for playout starting at
    /// `now`.
    pub fn pull(&mut self, now: Duration, out: &mut [f32]) {
        for chunk in out.chunks_mut(MAX_PACKET_SAMPLES) {
            let mut attempts = 0;
            while self.fifo.len() < chunk.len() && attempts < 64 {
                let queued = Duration::from_micros(self.fifo.len() as u64 * 125 / 6);
                self.decode_next(now + queued);
                attempts += 1;
            }
            let n = chunk.len().min(self.fifo.len());
            chunk[..n].copy_from_slice(&self.fifo[..n]);
            chunk[n..].fill(0.0);
            self.fifo.drain(..n);
        }
    }
}

/// All remote speakers of a channel, mixed. `K` identifies a speaker.
///
/// Speakers are kept in arrival order (a short list: at most
/// [`ReceiveConfig::max_speakers`]), so that the mix is summed in the same
/// order every run and a simulation is repeatable to the last bit.
#[derive(Debug)]
pub struct Receiver<K> {
    config: ReceiveConfig,
    speakers: Vec<(K, SpeakerPipeline)>,
    mixer: Mixer<K>,
    scratch: Vec<f32>,
    refused: u64,
}

impl<K: Eq + Hash + Clone> Receiver<K> {
    /// A receiver with no speakers.
    pub fn new(config: ReceiveConfig) -> Self {
        Receiver {
            mixer: Mixer::new(config.mixer.clone()),
            config,
            speakers: Vec::new(),
            scratch: vec![0.0; crate::TICK_SAMPLES],
            refused: 0,
        }
    }

    /// Takes a packet from `speaker` that arrived at `arrived_at`. A new
    /// speaker gets a pipeline; past [`ReceiveConfig::max_speakers`] the packet
    /// is dropped (see [`Receiver::refused`]).
    pub fn push(
        &mut self,
        speaker: &K,
        packet: VoicePacket,
        arrived_at: Duration,
    ) -> Result<(), DecoderError> {
        if let Some((_, pipeline)) = self.speakers.iter_mut().find(|(k, _)| k == speaker) {
            pipeline.push(packet, arrived_at);
            return Ok(());
        }
        if self.speakers.len() >= self.config.max_speakers && !self.forget_one(arrived_at) {
            self.refused += 1;
            return Ok(());
        }
        let mut pipeline =
            SpeakerPipeline::new(self.config.jitter.clone(), self.config.quiet_threshold_dbfs)?;
        pipeline.push(packet, arrived_at);
        self.speakers.push((speaker.clone(), pipeline));
        Ok(())
    }

    fn forget_one(&mut self, now: Duration) -> bool {
        let stale = self
            .speakers
            .iter()
            .enumerate()
            .filter(|(_, (_, p))| {
                p.last_packet_at()
                    .is_none_or(|t| now.saturating_sub(t) >= self.config.forget_after)
            })
            .min_by_key(|(_, (_, p))| p.last_packet_at())
            .map(|(i, _)| i);
        match stale {
            Some(i) => {
                let (k, _) = self.speakers.remove(i);
                self.mixer.remove(&k);
                true
            }
            None => false,
        }
    }

    /// Mixes every speaker's next samples into `out`, for playout at `now`.
    pub fn mix(&mut self, now: Duration, out: &mut [f32]) {
        if self.scratch.len() < out.len() {
            self.scratch.resize(out.len(), 0.0);
        }
        self.mixer.begin(out);
        let scratch = &mut self.scratch[..out.len()];
        for (speaker, pipeline) in self.speakers.iter_mut() {
            pipeline.pull(now, scratch);
            self.mixer.add(speaker, scratch, out);
        }
        self.mixer.finish(out);
    }

    /// The mixer, for gains, mutes, deafen and levels.
    pub fn mixer(&mut self) -> &mut Mixer<K> {
        &mut self.mixer
    }

    /// A speaker's pipeline, for its statistics.
    pub fn speaker(&self, speaker: &K) -> Option<&SpeakerPipeline> {
        self.speakers
            .iter()
            .find(|(k, _)| k == speaker)
            .map(|(_, p)| p)
    }

    /// Forgets a speaker who left.
    pub fn remove(&mut self, speaker: &K) {
        self.speakers.retain(|(k, _)| k != speaker);
        self.mixer.remove(speaker);
    }

    /// Packets dropped because there were too many speakers.
    pub fn refused(&self) -> u64 {
        self.refused
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{Encoder, EncoderConfig};

    fn tone(start: usize, len: usize, freq: f32, amp: f32) -> Vec<f32> {
        (start..start + len)
            .map(|i| amp * (i as f32 * freq * std::f32::consts::TAU / 48_000.0).sin())
            .collect()
    }

    #[test]
    fn two_speakers_are_mixed_and_metered() {
        let mut receiver = Receiver::new(ReceiveConfig::default());
        let mut a = Encoder::new(EncoderConfig::default()).unwrap();
        let mut b = Encoder::new(EncoderConfig::default()).unwrap();
        let mut out = vec![0.0; 480];
        let mut energy = 0.0;
        for i in 0..100usize {
            let now = Duration::from_millis(i as u64 * 10);
            let pa = a.encode(&tone(i * 480, 480, 440.0, 0.3)).unwrap().unwrap();
            let pb = b.encode(&[0.0; 480]).unwrap().unwrap();
            receiver.push(&"a", pa, now).unwrap();
            receiver.push(&"b", pb, now).unwrap();
            receiver.mix(now, &mut out);
            if i > 50 {
                energy += out.iter().map(|s| s * s).sum::<f32>();
            }
        }
        assert!(energy > 100.0, "energy {energy}");
        assert!(receiver.mixer().level(&"a").unwrap().speaking);
        assert!(!receiver.mixer().level(&"b").unwrap().speaking);
        let stats = receiver.speaker(&"a").unwrap().stats();
        assert!(stats.played > 90 && stats.lost == 0, "{stats:?}");
    }

    #[test]
    fn random_bytes_from_the_network_never_panic_and_stay_finite() {
        let mut receiver = Receiver::new(ReceiveConfig::default());
        let mut state = 0x9e37_79b9_u32;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state
        };
        let mut out = vec![0.0f32; 480];
        for tick in 0..2000u64 {
            let now = Duration::from_millis(tick * 10);
            for _ in 0..(next() % 3) {
                let len = (next() % 60) as usize;
                // Half the time a plausible table-of-contents byte, so that
                // the bytes reach the decoder.
                let mut payload: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                if let Some(first) = payload.first_mut()
                    && next() % 2 == 0
                {
                    *first = (*first & 0x07) | (8 << 3);
                }
                let packet = VoicePacket {
                    sequence: next() % 4096,
                    timestamp: (next() % 4096) * 480,
                    redundant: (next() % 4 == 0).then(|| payload.clone()),
                    payload,
                };
                receiver.push(&(next() % 4), packet, now).unwrap();
            }
            receiver.mix(now, &mut out);
            assert!(out.iter().all(|s| s.is_finite() && s.abs() <= 1.0));
        }
    }

    #[test]
    fn loss_reports_cover_a_window_and_round_up() {
        let mut reporter = LossReporter::new(Duration::from_secs(1), 2);
        let stats = |played, lost| JitterStats {
            played,
            lost,
            ..JitterStats::default()
        };
        assert_eq!(reporter.update(stats(0, 0), Duration::ZERO), None);
        assert_eq!(
            reporter.update(stats(50, 0), Duration::from_millis(500)),
            None
        );
        assert_eq!(
            reporter.update(stats(99, 1), Duration::from_secs(1)),
            Some(1)
        );
        assert_eq!(
            reporter.update(stats(189, 11), Duration::from_secs(2)),
            Some(6)
        );
        // The first second has left the window.
        assert_eq!(
            reporter.update(stats(289, 11), Duration::from_secs(3)),
            Some(5)
        );
    }

    #[test]
    fn speaker_limit_drops_new_speakers_until_one_is_stale() {
        let mut receiver = Receiver::new(ReceiveConfig {
            max_speakers: 1,
            ..Default::default()
        });
        let packet = |s| VoicePacket {
            sequence: s,
            timestamp: s * 480,
            payload: vec![9 << 3],
            redundant: None,
        };
        receiver.push(&1, packet(0), Duration::ZERO).unwrap();
        receiver
            .push(&2, packet(0), Duration::from_secs(1))
            .unwrap();
        assert_eq!(receiver.refused(), 1);
        receiver
            .push(&2, packet(1), Duration::from_secs(11))
            .unwrap();
        assert!(receiver.speaker(&2).is_some() && receiver.speaker(&1).is_none());
    }
}
