//! Sample-rate conversion at the edges of the engine (rubato's FFT resampler),
//! for devices and files that do not run at 48 kHz. Mono only: channels are
//! mixed down before and spread after.
//!
//! [`StreamResampler`] converts a stream piece by piece without allocating once
//! built; [`resample_clip`] converts a whole clip in memory.

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Resampler};

/// A mono stream resampler with fixed 10 ms input chunks.
pub struct StreamResampler {
    inner: Fft<f32>,
    pending: Vec<f32>,
    filled: usize,
    output: Vec<f32>,
}

impl std::fmt::Debug for StreamResampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamResampler")
            .field("filled", &self.filled)
            .finish_non_exhaustive()
    }
}

impl StreamResampler {
    /// A resampler from `from_rate` to `to_rate` (Hz). The error is rubato's
    /// description of what it could not do.
    pub fn new(from_rate: u32, to_rate: u32) -> Result<Self, String> {
        let chunk = (from_rate as usize / 100).max(1);
        let inner = Fft::<f32>::new(
            from_rate as usize,
            to_rate as usize,
            chunk,
            1,
            FixedSync::Input,
        )
        .map_err(|e| e.to_string())?;
        let pending = vec![0.0; inner.input_frames_max()];
        let output = vec![0.0; inner.output_frames_max()];
        Ok(StreamResampler {
            inner,
            pending,
            filled: 0,
            output,
        })
    }

    /// The delay the resampler adds, in output samples.
    pub fn delay(&self) -> usize {
        self.inner.output_delay()
    }

    /// Feeds `input`; calls `sink` with each resampled piece as it is ready.
    pub fn process(&mut self, mut input: &[f32], mut sink: impl FnMut(&[f32])) {
        while !input.is_empty() {
            let needed = self.inner.input_frames_next();
            let take = (needed - self.filled).min(input.len());
            self.pending[self.filled..self.filled + take].copy_from_slice(&input[..take]);
            self.filled += take;
            input = &input[take..];
            if self.filled < needed {
                break;
            }
            self.filled = 0;
            let Ok(input_adapter) = InterleavedSlice::new(&self.pending[..needed], 1, needed)
            else {
                continue;
            };
            let capacity = self.output.len();
            let Ok(mut output_adapter) =
                InterleavedSlice::new_mut(&mut self.output[..], 1, capacity)
            else {
                continue;
            };
            if let Ok((_, written)) =
                self.inner
                    .process_into_buffer(&input_adapter, &mut output_adapter, None)
            {
                sink(&self.output[..written]);
            }
        }
    }
}

/// Resamples a whole mono clip, trimming the resampler's delay so the output
/// lines up with the input.
pub fn resample_clip(input: &[f32], from_rate: u32, to_rate: u32) -> Result<Vec<f32>, String> {
    if from_rate == to_rate {
        return Ok(input.to_vec());
    }
    let mut resampler = Fft::<f32>::new(
        from_rate as usize,
        to_rate as usize,
        1024,
        1,
        FixedSync::Input,
    )
    .map_err(|e| e.to_string())?;
    let needed = resampler.process_all_needed_output_len(input.len());
    let mut output = vec![0.0f32; needed];
    let input_adapter = InterleavedSlice::new(input, 1, input.len()).map_err(|e| e.to_string())?;
    let mut output_adapter =
        InterleavedSlice::new_mut(&mut output[..], 1, needed).map_err(|e| e.to_string())?;
    let (_, produced) = resampler
        .process_all_into_buffer(&input_adapter, &mut output_adapter, input.len(), None)
        .map_err(|e| e.to_string())?;
    output.truncate(produced);
    Ok(output)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_keeps_length_and_pitch() {
        let input: Vec<f32> = (0..44_100)
            .map(|i| (i as f32 * 1000.0 * std::f32::consts::TAU / 44_100.0).sin())
            .collect();
        let output = resample_clip(&input, 44_100, 48_000).unwrap();
        assert!(
            (output.len() as i64 - 48_000).abs() <= 1,
            "{}",
            output.len()
        );
        // Zero crossings of a 1 kHz tone over one second: about 2000.
        let crossings = output
            .windows(2)
            .filter(|w| (w[0] < 0.0) != (w[1] < 0.0))
            .count();
        assert!((1990..=2010).contains(&crossings), "{crossings}");
    }

    #[test]
    fn stream_gives_the_right_amount() {
        let mut resampler = StreamResampler::new(44_100, 48_000).unwrap();
        let mut total = 0;
        let input = vec![0.1f32; 4410];
        for _ in 0..10 {
            resampler.process(&input, |piece| total += piece.len());
        }
        assert!((total as i64 - 48_000).abs() <= 480, "{total}");
    }
}
