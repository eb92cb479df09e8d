//! Sound devices behind two small traits, so that a sound card (cpal), a WAV
//! file and the null device are interchangeable.
//!
//! The engine thread polls them: [`AudioInput::read`] takes whatever 48 kHz
//! samples have been captured, [`AudioOutput::write`] queues samples to play
//! as far as [`AudioOutput::writable`] allows. Neither ever blocks. Devices do
//! their own pacing: a sound card by its clock, WAV and null devices by the
//! system clock (or not at all, for offline use).
//!
//! [`open_input`] and [`open_output`] pick a device from a [`DeviceSpec`]; on a
//! machine without a sound card the default falls back to the null device and
//! says so once.

mod file;
pub mod ring;
mod sound;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

pub use file::{NullInput, NullOutput, WavInput, WavOutput};
pub use sound::{CpalInput, CpalOutput, DeviceDirection, DeviceInfo, list_devices};

use crate::error::DeviceError;

/// A source of 48 kHz mono samples.
pub trait AudioInput: Send {
    /// What to call it in logs and messages.
    fn name(&self) -> &str;
    /// Copies captured samples into `out`, as many as are ready and fit;
    /// returns how many. Never blocks.
    fn read(&mut self, out: &mut [f32]) -> Result<usize, DeviceError>;
    /// Whether it will never give more samples (the end of a WAV file).
    fn is_finished(&self) -> bool {
        false
    }
}

/// A sink of 48 kHz mono samples.
pub trait AudioOutput: Send {
    /// What to call it in logs and messages.
    fn name(&self) -> &str;
    /// How many samples [`AudioOutput::write`] would take now.
    fn writable(&self) -> usize;
    /// Queues samples for playing, at most [`AudioOutput::writable`]; returns
    /// how many it took. Never blocks.
    fn write(&mut self, samples: &[f32]) -> Result<usize, DeviceError>;
    /// Flushes whatever is buffered (completes a WAV file).
    fn finish(&mut self) -> Result<(), DeviceError> {
        Ok(())
    }
}

/// Which device to open.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum DeviceSpec {
    /// The system's default sound device; the null device if there is none.
    #[default]
    Default,
    /// The sound device with this name (as `tincan audio devices` lists it).
    Named(String),
    /// A WAV file: played in real time as the microphone, or written with
    /// what would have been played.
    Wav {
        /// The file.
        path: PathBuf,
        /// Input only: start again at the end.
        looped: bool,
    },
    /// Silence in, nothing out.
    Null,
}

impl std::str::FromStr for DeviceSpec {
    type Err = std::convert::Infallible;

    /// `default`, `null`, `wav:PATH`, `wav-loop:PATH` (input played in a
    /// loop), or any other text as a sound device name.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(match text {
            "" | "default" => DeviceSpec::Default,
            "null" => DeviceSpec::Null,
            _ => match (text.strip_prefix("wav:"), text.strip_prefix("wav-loop:")) {
                (Some(path), _) => DeviceSpec::Wav {
                    path: path.into(),
                    looped: false,
                },
                (_, Some(path)) => DeviceSpec::Wav {
                    path: path.into(),
                    looped: true,
                },
                _ => DeviceSpec::Named(text.to_string()),
            },
        })
    }
}

static SAID_NO_SOUND_CARD: AtomicBool = AtomicBool::new(false);

fn say_no_sound_card(direction: &str, why: &DeviceError) {
    if !SAID_NO_SOUND_CARD.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            "no sound card available ({why}); {direction} runs on the null device. \
             Pass a WAV file (--in/--out) to hear or record anything."
        );
    }
}

/// Opens an input device. With [`DeviceSpec::Default`], a machine without a
/// sound card gets the null device and one warning.
pub fn open_input(spec: &DeviceSpec) -> Result<Box<dyn AudioInput>, DeviceError> {
    match spec {
        DeviceSpec::Default => match CpalInput::open(None) {
            Ok(device) => Ok(Box::new(device)),
            Err(e) => {
                say_no_sound_card("capture", &e);
                Ok(Box::new(NullInput::new()))
            }
        },
        DeviceSpec::Named(name) => Ok(Box::new(CpalInput::open(Some(name))?)),
        DeviceSpec::Wav { path, looped } => Ok(Box::new(WavInput::open(
            path,
            *looped,
            file::Pacing::RealTime,
        )?)),
        DeviceSpec::Null => Ok(Box::new(NullInput::new())),
    }
}

/// Opens an output device. With [`DeviceSpec::Default`], a machine without a
/// sound card gets the null device and one warning.
pub fn open_output(spec: &DeviceSpec) -> Result<Box<dyn AudioOutput>, DeviceError> {
    match spec {
        DeviceSpec::Default => match CpalOutput::open(None) {
            Ok(device) => Ok(Box::new(device)),
            Err(e) => {
                say_no_sound_card("playback", &e);
                Ok(Box::new(NullOutput::new()))
            }
        },
        DeviceSpec::Named(name) => Ok(Box::new(CpalOutput::open(Some(name))?)),
        DeviceSpec::Wav { path, .. } => {
            Ok(Box::new(WavOutput::create(path, file::Pacing::RealTime)?))
        }
        DeviceSpec::Null => Ok(Box::new(NullOutput::new())),
    }
}

pub use file::Pacing;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse() {
        let parse = |t: &str| t.parse::<DeviceSpec>().unwrap();
        assert_eq!(parse("default"), DeviceSpec::Default);
        assert_eq!(parse("null"), DeviceSpec::Null);
        assert_eq!(
            parse("wav-loop:a b.wav"),
            DeviceSpec::Wav {
                path: "a b.wav".into(),
                looped: true
            }
        );
        assert_eq!(parse("pulse"), DeviceSpec::Named("pulse".into()));
    }

    #[test]
    fn null_and_wav_specs_open_without_a_sound_card() {
        assert_eq!(open_input(&DeviceSpec::Null).unwrap().name(), "null");
        assert_eq!(open_output(&DeviceSpec::Null).unwrap().name(), "null");
        assert!(matches!(
            open_input(&DeviceSpec::Wav {
                path: "/nonexistent/in.wav".into(),
                looped: false
            }),
            Err(DeviceError::Wav(_))
        ));
        assert!(matches!(
            open_input(&DeviceSpec::Named("no such device".into())),
            Err(DeviceError::NotFound { .. } | DeviceError::Backend { .. })
        ));
    }
}
