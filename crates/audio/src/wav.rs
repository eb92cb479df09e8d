//! WAV files in and out of the engine's format (48 kHz mono f32): whole-file
//! reading, with down-mixing and resampling, and a sample-accurate writer.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use crate::SAMPLE_RATE;
use crate::error::WavError;
use crate::resample::resample_clip;

/// Reads a PCM WAV file (8 to 32-bit integer or 32-bit float, any rate, any
/// channels) as 48 kHz mono samples in -1.0..=1.0.
pub fn read_mono_48k(path: &Path) -> Result<Vec<f32>, WavError> {
    let io = |source| WavError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut reader = hound::WavReader::open(path).map_err(io)?;
    let spec = reader.spec();
    let channels = usize::from(spec.channels);
    if channels == 0 || spec.sample_rate == 0 {
        return Err(WavError::Unsupported {
            path: path.to_path_buf(),
            reason: "the header says zero channels or a zero sample rate".into(),
        });
    }
    let interleaved: Vec<f32> = match (spec.sample_format, spec.bits_per_sample) {
        (hound::SampleFormat::Float, 32) => reader
            .samples::<f32>()
            .collect::<Result<_, _>>()
            .map_err(io)?,
        (hound::SampleFormat::Int, bits @ 8..=32) => {
            let scale = 1.0 / (1u64 << (bits - 1)) as f32;
            reader
                .samples::<i32>()
                .map(|s| s.map(|s| s as f32 * scale))
                .collect::<Result<_, _>>()
                .map_err(io)?
        }
        (format, bits) => {
            return Err(WavError::Unsupported {
                path: path.to_path_buf(),
                reason: format!("{bits}-bit {format:?} samples"),
            });
        }
    };
    let mono: Vec<f32> = interleaved
        .chunks_exact(channels)
        .map(|frame| frame.iter().sum::<f32>() / channels as f32)
        .collect();
    resample_clip(&mono, spec.sample_rate, SAMPLE_RATE).map_err(|reason| WavError::Resample {
        path: path.to_path_buf(),
        rate: spec.sample_rate,
        reason,
    })
}

/// Writes 48 kHz mono 16-bit PCM, exactly the samples it is given.
pub struct WavWriter {
    writer: Option<hound::WavWriter<BufWriter<File>>>,
    path: PathBuf,
    written: u64,
}

impl std::fmt::Debug for WavWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WavWriter")
            .field("path", &self.path)
            .field("written", &self.written)
            .finish_non_exhaustive()
    }
}

impl WavWriter {
    /// Creates (or truncates) the file.
    pub fn create(path: &Path) -> Result<Self, WavError> {
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: SAMPLE_RATE,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let writer = hound::WavWriter::create(path, spec).map_err(|source| WavError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(WavWriter {
            writer: Some(writer),
            path: path.to_path_buf(),
            written: 0,
        })
    }

    /// Samples written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Appends samples (clamped to full scale).
    pub fn write(&mut self, samples: &[f32]) -> Result<(), WavError> {
        let Some(writer) = self.writer.as_mut() else {
            return Ok(());
        };
        for s in samples {
            let value = (s.clamp(-1.0, 1.0) * 32767.0).round() as i16;
            writer.write_sample(value).map_err(|source| WavError::Io {
                path: self.path.clone(),
                source,
            })?;
        }
        self.written += samples.len() as u64;
        Ok(())
    }

    /// Completes the header and closes the file. Dropping the writer also
    /// finishes it, but cannot report an error.
    pub fn finish(&mut self) -> Result<(), WavError> {
        match self.writer.take() {
            Some(writer) => writer.finalize().map_err(|source| WavError::Io {
                path: self.path.clone(),
                source,
            }),
            None => Ok(()),
        }
    }
}

impl Drop for WavWriter {
    fn drop(&mut self) {
        if let Err(e) = self.finish() {
            tracing::warn!("{e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_is_sample_accurate_and_resamples_other_rates() {
        let dir = std::env::temp_dir().join(format!("tincan-wav-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.wav");
        let samples: Vec<f32> = (0..1234)
            .map(|i| ((i % 100) as f32 - 50.0) / 100.0)
            .collect();
        let mut writer = WavWriter::create(&path).unwrap();
        writer.write(&samples).unwrap();
        writer.finish().unwrap();
        let back = read_mono_48k(&path).unwrap();
        assert_eq!(back.len(), samples.len());
        for (a, b) in samples.iter().zip(&back) {
            assert!((a - b).abs() < 1e-4);
        }

        let stereo_16k = dir.join("b.wav");
        let spec = hound::WavSpec {
            channels: 2,
            sample_rate: 16_000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::create(&stereo_16k, spec).unwrap();
        for _ in 0..16_000 {
            w.write_sample(1000i16).unwrap();
            w.write_sample(3000i16).unwrap();
        }
        w.finalize().unwrap();
        let back = read_mono_48k(&stereo_16k).unwrap();
        assert!((back.len() as i64 - 48_000).abs() <= 3, "{}", back.len());
        let mid = back[24_000];
        assert!((mid - 2000.0 / 32768.0).abs() < 1e-3, "{mid}");

        assert!(matches!(
            read_mono_48k(&dir.join("missing.wav")),
            Err(WavError::Io { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
