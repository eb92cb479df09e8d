//! Errors, one enum per operation. Each message says what went wrong and what to
//! do about it. Nothing a peer sends is an error here: a bad packet is counted and
//! concealed (see [`crate::jitter::JitterStats`]), never returned.

use std::path::PathBuf;

/// Creating or configuring an [`crate::codec::Encoder`], or encoding a frame.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EncoderError {
    /// libopus refused to create the encoder.
    #[error("could not create the Opus encoder (is libopus built correctly?)")]
    Create {
        /// What libopus said.
        #[source]
        source: opus::Error,
    },
    /// A setting is outside what the engine supports.
    #[error("invalid encoder setting {setting}: {reason}")]
    InvalidSetting {
        /// The setting, as named in [`crate::codec::EncoderConfig`].
        setting: &'static str,
        /// What values are allowed.
        reason: String,
    },
    /// libopus refused a setting (a bug in this crate if the config validated).
    #[error("libopus refused the encoder setting {setting}")]
    Configure {
        /// The setting that failed.
        setting: &'static str,
        /// What libopus said.
        #[source]
        source: opus::Error,
    },
    /// The frame handed to the encoder has the wrong number of samples.
    #[error("a frame must hold {expected} samples (48 kHz mono), got {got}")]
    FrameLength {
        /// Samples per frame for the configured frame duration.
        expected: usize,
        /// Samples handed in.
        got: usize,
    },
    /// libopus failed to encode the frame.
    #[error("Opus could not encode a frame")]
    Encode {
        /// What libopus said.
        #[source]
        source: opus::Error,
    },
}

/// Creating a [`crate::codec::Decoder`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecoderError {
    /// libopus refused to create the decoder.
    #[error("could not create the Opus decoder (is libopus built correctly?)")]
    Create {
        /// What libopus said.
        #[source]
        source: opus::Error,
    },
}

/// Reading or writing a WAV file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WavError {
    /// The file could not be opened, read or written.
    #[error("{path}: {source}; check that the path exists and is a readable PCM WAV file")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: hound::Error,
    },
    /// The file is a WAV file, but not one the engine can play.
    #[error("{path}: {reason}; convert it, e.g. `sox in.wav -r 48000 -c 1 -b 16 out.wav`")]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Resampling the file to 48 kHz failed.
    #[error("{path}: could not resample from {rate} Hz to 48 kHz: {reason}")]
    Resample {
        /// The file.
        path: PathBuf,
        /// Its sample rate.
        rate: u32,
        /// What rubato said.
        reason: String,
    },
}

/// Listing or opening a sound device.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceError {
    /// No device with that name exists.
    #[error("no {direction} device named {name:?}; run `tincan audio devices` to list them")]
    NotFound {
        /// "capture" or "playback".
        direction: &'static str,
        /// The name asked for.
        name: String,
    },
    /// The system has no sound card (or no sound server) to open.
    #[error(
        "no {direction} sound device on this machine; use a WAV file or the null device instead"
    )]
    NoDevice {
        /// "capture" or "playback".
        direction: &'static str,
    },
    /// The sound system refused a request.
    #[error("the sound system refused to {action}: {source}")]
    Backend {
        /// What was being done, e.g. "list devices".
        action: &'static str,
        /// What cpal said.
        #[source]
        source: cpal::Error,
    },
    /// The device offers no sample format or rate the engine can use.
    #[error("device {name:?} offers no usable format ({reason}); pick another device")]
    UnsupportedFormat {
        /// The device.
        name: String,
        /// What it offered.
        reason: String,
    },
    /// Setting up the resampler between the device rate and 48 kHz failed.
    #[error("cannot resample between {device_rate} Hz and 48 kHz: {reason}")]
    Resampler {
        /// The device's sample rate.
        device_rate: u32,
        /// What rubato said.
        reason: String,
    },
    /// A WAV device failed.
    #[error(transparent)]
    Wav(#[from] WavError),
}

/// Running the offline chain ([`crate::offline::run`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OfflineError {
    /// The configuration is not valid.
    #[error("invalid offline chain setting {setting}: {reason}")]
    InvalidSetting {
        /// The setting, as named in [`crate::offline::OfflineConfig`].
        setting: &'static str,
        /// What values are allowed.
        reason: String,
    },
    /// The input or output WAV file failed.
    #[error(transparent)]
    Wav(#[from] WavError),
    /// The encoder could not be set up or failed.
    #[error(transparent)]
    Encoder(#[from] EncoderError),
    /// The decoder could not be set up.
    #[error(transparent)]
    Decoder(#[from] DecoderError),
}
