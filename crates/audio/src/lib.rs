//! tincan's audio engine: Opus voice, sound devices, the adaptive jitter buffer,
//! the mixer, voice activity detection and push-to-talk.
//!
//! Everything runs at 48 kHz mono. The crate knows nothing of the network: the
//! voice plane hands it packets with the time they arrived and takes packets to
//! send. The pieces, in the order sound travels:
//!
//! - capture: a [`device::AudioInput`] (cpal, WAV file or null) gives 48 kHz
//!   samples; [`capture::CaptureChain`] denoises (optional) and gates them by
//!   voice activity or push-to-talk;
//! - [`codec::Encoder`] turns each 10 ms (or 20 ms) frame into a
//!   [`codec::VoicePacket`] with a sequence number and a 48 kHz timestamp;
//! - on the receiving side, [`receive::Receiver`] keeps one
//!   [`receive::SpeakerPipeline`] per speaker (an adaptive [`jitter::JitterBuffer`]
//!   and a [`codec::Decoder`] with FEC, redundancy and concealment) and mixes
//!   them with a [`mixer::Mixer`] into a [`device::AudioOutput`];
//!   [`receive::LossReporter`] turns a speaker's statistics into the loss
//!   report that goes back to [`codec::Encoder::set_expected_loss`].
//!
//! Protocol logic is sans-IO: the jitter buffer and the link emulator
//! (the `tincan-netem` crate) take the time as a parameter and draw randomness from a seed, so
//! [`offline::run`] can replay the whole chain deterministically, faster than real
//! time.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod analysis;
pub mod capture;
#[cfg(feature = "cli")]
pub mod cli;
pub mod codec;
pub mod device;
pub mod engine;
pub mod error;
pub mod jitter;
pub mod mixer;
pub mod offline;
pub mod receive;
pub mod resample;
pub mod wav;

pub use error::{DecoderError, DeviceError, EncoderError, OfflineError, WavError};

/// The one sample rate inside the engine, in Hz. Devices that run at another
/// rate are resampled at the edge.
pub const SAMPLE_RATE: u32 = 48_000;

/// Samples in 10 ms at [`SAMPLE_RATE`]: the engine's tick.
pub const TICK_SAMPLES: usize = 480;
