//! WAV file and null devices, for machines without a sound card, bots, tests
//! and measurements.

use std::path::Path;
use std::time::Instant;

use super::{AudioInput, AudioOutput};
use crate::error::DeviceError;
use crate::wav::{WavWriter, read_mono_48k};
use crate::{SAMPLE_RATE, TICK_SAMPLES};

/// Whether a file or null device keeps to the wall clock.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Pacing {
    /// As a sound card would: 48 000 samples a second, from the first call.
    #[default]
    RealTime,
    /// As fast as the caller goes (offline processing).
    Unpaced,
}

/// Counts samples due since the first call.
#[derive(Debug)]
struct Clock {
    pacing: Pacing,
    start: Option<Instant>,
}

impl Clock {
    fn new(pacing: Pacing) -> Self {
        Clock {
            pacing,
            start: None,
        }
    }

    fn due(&mut self) -> u64 {
        match self.pacing {
            Pacing::Unpaced => u64::MAX,
            Pacing::RealTime => {
                let start = *self.start.get_or_insert_with(Instant::now);
                (start.elapsed().as_micros() * u128::from(SAMPLE_RATE) / 1_000_000) as u64
            }
        }
    }

    fn due_now(&self) -> u64 {
        match (self.pacing, self.start) {
            (Pacing::Unpaced, _) => u64::MAX,
            (Pacing::RealTime, None) => 0,
            (Pacing::RealTime, Some(start)) => {
                (start.elapsed().as_micros() * u128::from(SAMPLE_RATE) / 1_000_000) as u64
            }
        }
    }
}

/// A WAV file as the microphone.
#[derive(Debug)]
pub struct WavInput {
    name: String,
    samples: Vec<f32>,
    position: usize,
    looped: bool,
    clock: Clock,
    delivered: u64,
}

impl WavInput {
    /// Loads the file (any PCM WAV; converted to 48 kHz mono). With `looped`,
    /// it starts again at the end.
    pub fn open(path: &Path, looped: bool, pacing: Pacing) -> Result<Self, DeviceError> {
        let samples = read_mono_48k(path)?;
        Ok(WavInput {
            name: format!("wav:{}", path.display()),
            samples,
            position: 0,
            looped,
            clock: Clock::new(pacing),
            delivered: 0,
        })
    }
}

impl AudioInput for WavInput {
    fn name(&self) -> &str {
        &self.name
    }

    fn read(&mut self, out: &mut [f32]) -> Result<usize, DeviceError> {
        let ready = self.clock.due().saturating_sub(self.delivered);
        let want = out.len().min(usize::try_from(ready).unwrap_or(usize::MAX));
        let mut n = 0;
        while n < want && !self.samples.is_empty() {
            if self.position == self.samples.len() {
                if !self.looped {
                    break;
                }
                self.position = 0;
            }
            let take = (want - n).min(self.samples.len() - self.position);
            out[n..n + take].copy_from_slice(&self.samples[self.position..self.position + take]);
            self.position += take;
            n += take;
        }
        self.delivered += n as u64;
        Ok(n)
    }

    fn is_finished(&self) -> bool {
        !self.looped && self.position >= self.samples.len()
    }
}

/// A WAV file as the speaker: records exactly what would have been played.
/// When paced and the engine falls more than 100 ms behind, the gap is filled
/// with silence, as a sound card would have played it.
#[derive(Debug)]
pub struct WavOutput {
    name: String,
    writer: WavWriter,
    clock: Clock,
    underruns: u64,
}

impl WavOutput {
    /// Creates (or truncates) the file: 48 kHz mono 16-bit.
    pub fn create(path: &Path, pacing: Pacing) -> Result<Self, DeviceError> {
        Ok(WavOutput {
            name: format!("wav:{}", path.display()),
            writer: WavWriter::create(path)?,
            clock: Clock::new(pacing),
            underruns: 0,
        })
    }

    /// Samples of silence written because the engine was late.
    pub fn underruns(&self) -> u64 {
        self.underruns
    }
}

const LATE_LIMIT: u64 = (SAMPLE_RATE / 10) as u64;

impl AudioOutput for WavOutput {
    fn name(&self) -> &str {
        &self.name
    }

    fn writable(&self) -> usize {
        let due = self.clock.due_now().saturating_add(TICK_SAMPLES as u64);
        usize::try_from(due.saturating_sub(self.writer.written())).unwrap_or(usize::MAX)
    }

    fn write(&mut self, samples: &[f32]) -> Result<usize, DeviceError> {
        let due = self.clock.due();
        if due != u64::MAX && due > self.writer.written() + LATE_LIMIT {
            let gap = due - self.writer.written();
            let silence = [0.0f32; TICK_SAMPLES];
            let mut left = gap;
            while left > 0 {
                let n = left.min(TICK_SAMPLES as u64) as usize;
                self.writer.write(&silence[..n])?;
                left -= n as u64;
            }
            self.underruns += gap;
        }
        let n = samples.len().min(self.writable());
        self.writer.write(&samples[..n])?;
        Ok(n)
    }

    fn finish(&mut self) -> Result<(), DeviceError> {
        Ok(self.writer.finish()?)
    }
}

/// Silence as the microphone, at the real-time pace.
#[derive(Debug)]
pub struct NullInput {
    clock: Clock,
    delivered: u64,
}

impl Default for NullInput {
    fn default() -> Self {
        Self::new()
    }
}

impl NullInput {
    /// A null input.
    pub fn new() -> Self {
        NullInput {
            clock: Clock::new(Pacing::RealTime),
            delivered: 0,
        }
    }
}

impl AudioInput for NullInput {
    fn name(&self) -> &str {
        "null"
    }

    fn read(&mut self, out: &mut [f32]) -> Result<usize, DeviceError> {
        let ready = self.clock.due().saturating_sub(self.delivered);
        let n = out.len().min(usize::try_from(ready).unwrap_or(usize::MAX));
        out[..n].fill(0.0);
        self.delivered += n as u64;
        Ok(n)
    }
}

/// A speaker that plays nothing, at the real-time pace.
#[derive(Debug)]
pub struct NullOutput {
    clock: Clock,
    taken: u64,
}

impl Default for NullOutput {
    fn default() -> Self {
        Self::new()
    }
}

impl NullOutput {
    /// A null output.
    pub fn new() -> Self {
        NullOutput {
            clock: Clock::new(Pacing::RealTime),
            taken: 0,
        }
    }
}

impl AudioOutput for NullOutput {
    fn name(&self) -> &str {
        "null"
    }

    fn writable(&self) -> usize {
        let due = self.clock.due_now().saturating_add(TICK_SAMPLES as u64);
        usize::try_from(due.saturating_sub(self.taken)).unwrap_or(usize::MAX)
    }

    fn write(&mut self, samples: &[f32]) -> Result<usize, DeviceError> {
        self.clock.due();
        // Never fall behind a clock no one listens to.
        self.taken = self
            .taken
            .max(self.clock.due_now().saturating_sub(LATE_LIMIT));
        let n = samples.len().min(self.writable());
        self.taken += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wav_devices_round_trip_unpaced_and_loop() {
        let dir = std::env::temp_dir().join(format!("tincan-dev-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("in.wav");
        let mut out = WavOutput::create(&path, Pacing::Unpaced).unwrap();
        let ramp: Vec<f32> = (0..1000).map(|i| i as f32 / 2000.0).collect();
        assert_eq!(out.write(&ramp).unwrap(), 1000);
        out.finish().unwrap();

        let mut input = WavInput::open(&path, true, Pacing::Unpaced).unwrap();
        let mut buf = vec![0.0; 2500];
        assert_eq!(input.read(&mut buf).unwrap(), 2500);
        assert!((buf[1000] - buf[0]).abs() < 1e-4 && (buf[2400] - ramp[400]).abs() < 1e-4);
        assert!(!input.is_finished());

        let mut once = WavInput::open(&path, false, Pacing::Unpaced).unwrap();
        assert_eq!(once.read(&mut buf).unwrap(), 1000);
        assert!(once.is_finished());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn paced_devices_keep_to_the_clock() {
        let mut input = NullInput::new();
        let mut buf = vec![0.0; 48_000];
        let first = input.read(&mut buf).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let second = input.read(&mut buf).unwrap();
        // At least 50 ms worth, and never a whole second at once.
        assert!(
            first < 480 && (2400..48_000).contains(&second),
            "{first} {second}"
        );
        let mut output = NullOutput::new();
        assert!(output.write(&buf).unwrap() <= 2 * TICK_SAMPLES);
    }
}
