//! Opus at 48 kHz mono: the [`Encoder`] a speaker runs and the [`Decoder`] a
//! listener runs for each remote speaker.
//!
//! The encoder numbers its packets (`sequence`, +1 per packet sent) and stamps
//! them with the 48 kHz sample clock (`timestamp`, +frame length per frame, sent
//! or not). A gap in timestamps without a gap in sequence numbers is silence the
//! speaker chose not to send (DTX, voice activity or push-to-talk); a gap in
//! sequence numbers is loss. The jitter buffer relies on that difference.
//!
//! Decoding takes untrusted bytes: a packet libopus rejects is reported as
//! `None` and the caller conceals, it never panics or errors.

use std::time::Duration;

use crate::SAMPLE_RATE;
use crate::error::{DecoderError, EncoderError};

/// The longest Opus packet the encoder writes: one 20 ms frame at 128 kbps is
/// 320 bytes, and libopus never exceeds 1275 bytes per frame.
pub const MAX_PACKET_BYTES: usize = 1275;

/// The longest audio one Opus packet can carry: 120 ms at 48 kHz.
pub const MAX_PACKET_SAMPLES: usize = 5760;

/// How much audio each packet carries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum FrameDuration {
    /// 10 ms (480 samples): the default, for the lowest delay.
    #[default]
    Ms10,
    /// 20 ms (960 samples): half the packets, 10 ms more delay.
    Ms20,
}

impl FrameDuration {
    /// Samples per frame at 48 kHz.
    pub const fn samples(self) -> usize {
        match self {
            FrameDuration::Ms10 => 480,
            FrameDuration::Ms20 => 960,
        }
    }

    /// The frame's length in time.
    pub const fn duration(self) -> Duration {
        match self {
            FrameDuration::Ms10 => Duration::from_millis(10),
            FrameDuration::Ms20 => Duration::from_millis(20),
        }
    }

    /// The frame duration of that many milliseconds, if it is one the engine
    /// supports (10 or 20).
    pub const fn from_millis(millis: u64) -> Option<Self> {
        match millis {
            10 => Some(FrameDuration::Ms10),
            20 => Some(FrameDuration::Ms20),
            _ => None,
        }
    }
}

/// The widest audio band the encoder may send.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Bandwidth {
    /// 4 kHz.
    Narrowband,
    /// 6 kHz.
    Mediumband,
    /// 8 kHz: telephone wideband, all SILK, where FEC is cheapest.
    Wideband,
    /// 12 kHz.
    Superwideband,
    /// 20 kHz.
    #[default]
    Fullband,
}

impl Bandwidth {
    fn to_opus(self) -> opus::Bandwidth {
        match self {
            Bandwidth::Narrowband => opus::Bandwidth::Narrowband,
            Bandwidth::Mediumband => opus::Bandwidth::Mediumband,
            Bandwidth::Wideband => opus::Bandwidth::Wideband,
            Bandwidth::Superwideband => opus::Bandwidth::Superwideband,
            Bandwidth::Fullband => opus::Bandwidth::Fullband,
        }
    }
}

/// When packets also carry a copy of the previous frame (as RTP's RED does),
/// so that a single lost packet costs nothing: the next one brings it again.
/// It doubles the bitrate while on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Redundancy {
    /// Never.
    Off,
    /// While the receivers report at least this much loss, in percent.
    UnderLoss {
        /// The loss that turns it on.
        min_loss_percent: u8,
    },
    /// Always.
    Always,
}

impl Default for Redundancy {
    fn default() -> Self {
        Redundancy::UnderLoss {
            min_loss_percent: 2,
        }
    }
}

/// How a speaker's voice is encoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncoderConfig {
    /// Audio per packet.
    pub frame: FrameDuration,
    /// Target bitrate in bits per second, 8 000 to 128 000.
    pub bitrate_bps: u32,
    /// In-band forward error correction: each packet also carries a coarse copy
    /// of the previous frame, which a receiver uses when that frame was lost.
    /// It only does anything while the expected loss is above zero.
    pub fec: bool,
    /// Discontinuous transmission: send almost nothing during silence.
    pub dtx: bool,
    /// libopus complexity, 0 (fastest) to 10 (best).
    pub complexity: u8,
    /// Loss the receivers report, in percent (0 to 100). Tunes the FEC.
    pub expected_loss_percent: u8,
    /// The widest band sent.
    pub max_bandwidth: Bandwidth,
    /// While loss is reported, send at most this band. At 32 kbps libopus only
    /// finds room for FEC in wideband; `None` leaves the band alone.
    pub max_bandwidth_under_loss: Option<Bandwidth>,
    /// Whether packets repeat the previous frame.
    pub redundancy: Redundancy,
}

impl Default for EncoderConfig {
    fn default() -> Self {
        EncoderConfig {
            frame: FrameDuration::Ms10,
            bitrate_bps: 32_000,
            fec: true,
            dtx: false,
            complexity: 5,
            expected_loss_percent: 0,
            max_bandwidth: Bandwidth::Fullband,
            max_bandwidth_under_loss: Some(Bandwidth::Wideband),
            redundancy: Redundancy::default(),
        }
    }
}

/// Lowest bitrate the engine accepts, in bits per second.
pub const MIN_BITRATE_BPS: u32 = 8_000;
/// Highest bitrate the engine accepts, in bits per second.
pub const MAX_BITRATE_BPS: u32 = 128_000;

impl EncoderConfig {
    /// Checks every field against the ranges the engine supports.
    pub fn validate(&self) -> Result<(), EncoderError> {
        if !(MIN_BITRATE_BPS..=MAX_BITRATE_BPS).contains(&self.bitrate_bps) {
            return Err(EncoderError::InvalidSetting {
                setting: "bitrate_bps",
                reason: format!(
                    "{} is outside {MIN_BITRATE_BPS}..={MAX_BITRATE_BPS} bits per second",
                    self.bitrate_bps
                ),
            });
        }
        if self.complexity > 10 {
            return Err(EncoderError::InvalidSetting {
                setting: "complexity",
                reason: format!("{} is outside 0..=10", self.complexity),
            });
        }
        if self.expected_loss_percent > 100 {
            return Err(EncoderError::InvalidSetting {
                setting: "expected_loss_percent",
                reason: format!("{} is outside 0..=100", self.expected_loss_percent),
            });
        }
        Ok(())
    }
}

/// One encoded frame, ready for the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VoicePacket {
    /// +1 for each packet sent; wraps.
    pub sequence: u32,
    /// The 48 kHz sample clock at the start of the frame; wraps.
    pub timestamp: u32,
    /// The Opus packet.
    pub payload: Vec<u8>,
    /// The previous frame's Opus packet again (sequence - 1, ending where this
    /// one starts), when redundancy is on.
    pub redundant: Option<Vec<u8>>,
}

/// A speaker's Opus encoder, which numbers and timestamps its packets.
pub struct Encoder {
    inner: opus::Encoder,
    config: EncoderConfig,
    next_sequence: u32,
    next_timestamp: u32,
    scratch: Box<[u8; MAX_PACKET_BYTES]>,
    /// The last frame's packet, if it was sent.
    previous: Option<Vec<u8>>,
    redundancy_active: bool,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder")
            .field("config", &self.config)
            .field("next_sequence", &self.next_sequence)
            .field("next_timestamp", &self.next_timestamp)
            .finish_non_exhaustive()
    }
}

impl Encoder {
    /// An encoder for 48 kHz mono voice (Opus VOIP application).
    pub fn new(config: EncoderConfig) -> Result<Self, EncoderError> {
        config.validate()?;
        let inner = opus::Encoder::new(SAMPLE_RATE, opus::Channels::Mono, opus::Application::Voip)
            .map_err(|source| EncoderError::Create { source })?;
        let mut encoder = Encoder {
            inner,
            config: config.clone(),
            next_sequence: 0,
            next_timestamp: 0,
            scratch: Box::new([0; MAX_PACKET_BYTES]),
            previous: None,
            redundancy_active: config.redundancy == Redundancy::Always,
        };
        let configure = |setting, result: opus::Result<()>| {
            result.map_err(|source| EncoderError::Configure { setting, source })
        };
        configure(
            "bitrate_bps",
            encoder
                .inner
                .set_bitrate(opus::Bitrate::Bits(config.bitrate_bps as i32)),
        )?;
        configure(
            "complexity",
            encoder.inner.set_complexity(i32::from(config.complexity)),
        )?;
        configure("fec", encoder.inner.set_inband_fec(config.fec))?;
        configure("dtx", encoder.inner.set_dtx(config.dtx))?;
        encoder.set_expected_loss(config.expected_loss_percent)?;
        // Voice, always: keeps libopus in SILK/hybrid mode, where FEC exists.
        configure("signal", encoder.inner.set_signal(opus::Signal::Voice))?;
        Ok(encoder)
    }

    /// The settings in force.
    pub fn config(&self) -> &EncoderConfig {
        &self.config
    }

    /// Samples per frame: what [`Encoder::encode`] expects.
    pub fn frame_samples(&self) -> usize {
        self.config.frame.samples()
    }

    /// Encodes one frame of 48 kHz mono samples in -1.0..=1.0.
    ///
    /// Returns `None` when DTX decided the frame need not be sent; the timestamp
    /// still advances so the receiver sees silence, not loss.
    pub fn encode(&mut self, frame: &[f32]) -> Result<Option<VoicePacket>, EncoderError> {
        let expected = self.frame_samples();
        if frame.len() != expected {
            return Err(EncoderError::FrameLength {
                expected,
                got: frame.len(),
            });
        }
        let len = self
            .inner
            .encode_float(frame, &mut self.scratch[..])
            .map_err(|source| EncoderError::Encode { source })?;
        let timestamp = self.next_timestamp;
        self.next_timestamp = self.next_timestamp.wrapping_add(expected as u32);
        // libopus signals "nothing worth sending" in DTX with packets of at most
        // two bytes (a bare table-of-contents byte).
        if self.config.dtx && len <= 2 {
            self.previous = None;
            return Ok(None);
        }
        let sequence = self.next_sequence;
        self.next_sequence = self.next_sequence.wrapping_add(1);
        let payload = self.scratch[..len].to_vec();
        let redundant = if self.redundancy_on() {
            self.previous.replace(payload.clone())
        } else {
            self.previous = Some(payload.clone());
            None
        };
        Ok(Some(VoicePacket {
            sequence,
            timestamp,
            payload,
            redundant,
        }))
    }

    /// Lets one frame pass unsent (the voice gate is closed): the timestamp
    /// advances, the sequence number does not.
    pub fn skip_frame(&mut self) {
        self.previous = None;
        self.next_timestamp = self
            .next_timestamp
            .wrapping_add(self.config.frame.samples() as u32);
    }

    /// Whether packets carry the previous frame now.
    pub fn redundancy_on(&self) -> bool {
        self.redundancy_active
    }

    /// Tells the encoder how much loss the receivers report (values above 100
    /// count as 100). It decides redundancy, and the loss libopus plans its
    /// FEC and its prediction for: with redundancy on, only the loss left
    /// after it (two packets in a row, about p² for random loss), because
    /// telling libopus about loss costs quality on every frame.
    pub fn set_expected_loss(&mut self, percent: u8) -> Result<(), EncoderError> {
        let percent = percent.min(100);
        self.config.expected_loss_percent = percent;
        self.redundancy_active = match self.config.redundancy {
            Redundancy::Off => false,
            Redundancy::Always => true,
            // On at the threshold, off below half of it: a loss rate near the
            // threshold must not flip it every report.
            Redundancy::UnderLoss { min_loss_percent } => {
                let on_at = min_loss_percent.max(1);
                if percent >= on_at {
                    true
                } else if u16::from(percent) * 2 < u16::from(on_at) {
                    false
                } else {
                    self.redundancy_active
                }
            }
        };
        let planned = self.planned_loss_percent();
        self.inner
            .set_packet_loss_perc(i32::from(planned))
            .map_err(|source| EncoderError::Configure {
                setting: "expected_loss_percent",
                source,
            })?;
        let band = match self.config.max_bandwidth_under_loss {
            Some(band) if planned > 0 && self.config.fec => band.min(self.config.max_bandwidth),
            _ => self.config.max_bandwidth,
        };
        self.inner
            .set_max_bandwidth(band.to_opus())
            .map_err(|source| EncoderError::Configure {
                setting: "max_bandwidth",
                source,
            })?;
        Ok(())
    }

    /// The loss, in percent, libopus is told to plan for (see
    /// [`Encoder::set_expected_loss`]).
    pub fn planned_loss_percent(&self) -> u8 {
        let reported = u16::from(self.config.expected_loss_percent);
        if self.redundancy_on() {
            ((reported * reported + 50) / 100) as u8
        } else {
            reported as u8
        }
    }

    /// Changes the target bitrate (8 000 to 128 000 bits per second).
    pub fn set_bitrate(&mut self, bitrate_bps: u32) -> Result<(), EncoderError> {
        let mut config = self.config.clone();
        config.bitrate_bps = bitrate_bps;
        config.validate()?;
        self.inner
            .set_bitrate(opus::Bitrate::Bits(bitrate_bps as i32))
            .map_err(|source| EncoderError::Configure {
                setting: "bitrate_bps",
                source,
            })?;
        self.config = config;
        Ok(())
    }

    /// The encoder's lookahead in samples: part of the mouth-to-ear delay.
    pub fn lookahead_samples(&mut self) -> usize {
        self.inner
            .get_lookahead()
            .ok()
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(0)
    }
}

/// One remote speaker's Opus decoder.
pub struct Decoder {
    inner: opus::Decoder,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder").finish_non_exhaustive()
    }
}

impl Decoder {
    /// A decoder for 48 kHz mono.
    pub fn new() -> Result<Self, DecoderError> {
        let inner = opus::Decoder::new(SAMPLE_RATE, opus::Channels::Mono)
            .map_err(|source| DecoderError::Create { source })?;
        Ok(Decoder { inner })
    }

    /// How many 48 kHz samples a packet carries, or `None` if it is not a valid
    /// Opus packet (or carries more than [`MAX_PACKET_SAMPLES`]).
    pub fn packet_samples(payload: &[u8]) -> Option<usize> {
        if payload.is_empty() {
            return None;
        }
        let samples = opus::packet::get_nb_samples(payload, SAMPLE_RATE).ok()?;
        (samples > 0 && samples <= MAX_PACKET_SAMPLES).then_some(samples)
    }

    /// Decodes a packet into `out` (which should hold [`MAX_PACKET_SAMPLES`]).
    /// Returns the samples written, or `None` if the packet is invalid; the
    /// caller then conceals.
    pub fn decode(&mut self, payload: &[u8], out: &mut [f32]) -> Option<usize> {
        if payload.is_empty() {
            return None;
        }
        self.inner.decode_float(payload, out, false).ok()
    }

    /// Rebuilds a lost frame of `samples` samples from the FEC data carried by
    /// the packet that follows it. Where that packet carries no FEC, libopus
    /// conceals instead, so this always yields audio unless `next_payload` is
    /// not Opus at all.
    pub fn decode_fec(
        &mut self,
        next_payload: &[u8],
        samples: usize,
        out: &mut [f32],
    ) -> Option<usize> {
        if next_payload.is_empty() || samples > out.len() {
            return None;
        }
        self.inner
            .decode_float(next_payload, &mut out[..samples], true)
            .ok()
    }

    /// Conceals a lost frame of `samples` samples (packet loss concealment:
    /// libopus extrapolates from what it last decoded, fading to silence).
    pub fn conceal(&mut self, samples: usize, out: &mut [f32]) -> usize {
        let samples = samples.min(out.len());
        match self.inner.decode_float(&[], &mut out[..samples], false) {
            Ok(n) => n,
            Err(_) => {
                // PLC only fails for a frame length libopus rejects; silence is
                // the honest stand-in.
                out[..samples].fill(0.0);
                samples
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_and_timestamp_advance_as_documented() {
        let mut encoder = Encoder::new(EncoderConfig::default()).unwrap();
        let frame = vec![0.1f32; 480];
        let first = encoder.encode(&frame).unwrap().unwrap();
        encoder.skip_frame();
        let second = encoder.encode(&frame).unwrap().unwrap();
        assert_eq!((first.sequence, first.timestamp), (0, 0));
        assert_eq!((second.sequence, second.timestamp), (1, 960));
        assert!(second.redundant.is_none());
        encoder.set_expected_loss(5).unwrap();
        assert_eq!(encoder.planned_loss_percent(), 0);
        let third = encoder.encode(&frame).unwrap().unwrap();
        let fourth = encoder.encode(&frame).unwrap().unwrap();
        assert_eq!(fourth.redundant.as_ref(), Some(&third.payload));
        encoder.skip_frame();
        assert!(encoder.encode(&frame).unwrap().unwrap().redundant.is_none());
    }

    #[test]
    fn rejects_settings_out_of_range() {
        for config in [
            EncoderConfig {
                bitrate_bps: 7_999,
                ..Default::default()
            },
            EncoderConfig {
                bitrate_bps: 128_001,
                ..Default::default()
            },
            EncoderConfig {
                complexity: 11,
                ..Default::default()
            },
        ] {
            assert!(matches!(
                Encoder::new(config),
                Err(EncoderError::InvalidSetting { .. })
            ));
        }
        let mut encoder = Encoder::new(EncoderConfig::default()).unwrap();
        assert!(encoder.encode(&[0.0; 100]).is_err());
        assert!(encoder.set_bitrate(8_000).is_ok());
        assert!(encoder.set_bitrate(200_000).is_err());
    }

    #[test]
    fn garbage_packets_are_rejected_not_panicked_on() {
        let mut decoder = Decoder::new().unwrap();
        let mut out = vec![0f32; MAX_PACKET_SAMPLES];
        let mut state = 0x1234_5678_u32;
        for len in 0..400 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 17;
                    state ^= state << 5;
                    state as u8
                })
                .collect();
            let _ = Decoder::packet_samples(&bytes);
            let _ = decoder.decode(&bytes, &mut out);
            let _ = decoder.decode_fec(&bytes, 480, &mut out);
            let _ = decoder.decode(&bytes, &mut out[..10]);
        }
        assert_eq!(decoder.conceal(480, &mut out), 480);
    }
}
