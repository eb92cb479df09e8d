//! Measuring what came out against what went in: the checks voice tests and
//! the latency harness make on recorded audio.
//!
//! - [`best_alignment`]: normalised cross-correlation of a received
//!   recording with the sent signal, over a window of lags; a codec changes
//!   the waveform, but speech that got through still correlates strongly
//!   (0.6 to 0.95 after Opus) while silence or noise stays near 0;
//! - [`click_onsets`]: where sharp clicks start, to time each one through
//!   the whole chain.

/// The lag at which `received` best matches `sent`, and how well.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Alignment {
    /// Samples by which `received` is late.
    pub lag: usize,
    /// Normalised correlation at that lag, -1.0 to 1.0.
    pub correlation: f64,
}

/// Finds the lag in `0..=max_lag` (samples) at which `received[lag..]`
/// correlates best with `sent`, comparing at most `window` samples taken
/// from `sent[from..]`. Coarse-to-fine: first on both signals averaged over
/// blocks of 8 samples (a low-pass and a decimation in one), then sample by
/// sample around the best coarse lag, so seconds of lags cost little.
pub fn best_alignment(
    sent: &[f32],
    received: &[f32],
    from: usize,
    window: usize,
    max_lag: usize,
) -> Option<Alignment> {
    const BLOCK: usize = 8;
    let a = sent.get(from..(from + window).min(sent.len()))?;
    if a.is_empty() {
        return None;
    }
    let decimate = |s: &[f32]| -> Vec<f32> {
        s.chunks(BLOCK)
            .map(|c| c.iter().sum::<f32>() / c.len() as f32)
            .collect()
    };
    let coarse_a = decimate(a);
    let coarse_b = decimate(received.get(from..).unwrap_or(&[]));
    let mut coarse: Option<(usize, f64)> = None;
    for lag in 0..=max_lag / BLOCK {
        let Some(b) = coarse_b.get(lag..lag + coarse_a.len()) else {
            break;
        };
        let c = normalised_correlation(&coarse_a, b);
        if coarse.is_none_or(|(_, best)| c > best) {
            coarse = Some((lag * BLOCK, c));
        }
    }
    let (around, _) = coarse?;
    let mut best: Option<Alignment> = None;
    for lag in around.saturating_sub(BLOCK)..=(around + BLOCK).min(max_lag) {
        let Some(b) = received.get(from + lag..from + lag + a.len()) else {
            continue;
        };
        let c = normalised_correlation(a, b);
        if best.is_none_or(|x| c > x.correlation) {
            best = Some(Alignment {
                lag,
                correlation: c,
            });
        }
    }
    best
}

/// Pearson correlation of two equally long signals (0 if either is flat).
pub fn normalised_correlation(a: &[f32], b: &[f32]) -> f64 {
    let n = a.len().min(b.len());
    if n == 0 {
        return 0.0;
    }
    let mean = |s: &[f32]| s[..n].iter().map(|&x| f64::from(x)).sum::<f64>() / n as f64;
    let (ma, mb) = (mean(a), mean(b));
    let (mut ab, mut aa, mut bb) = (0.0, 0.0, 0.0);
    for i in 0..n {
        let x = f64::from(a[i]) - ma;
        let y = f64::from(b[i]) - mb;
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    if aa <= f64::EPSILON || bb <= f64::EPSILON {
        0.0
    } else {
        ab / (aa * bb).sqrt()
    }
}

/// Sample indexes where a click starts: the first sample whose magnitude
/// crosses `threshold` after at least `quiet` samples below it.
pub fn click_onsets(samples: &[f32], threshold: f32, quiet: usize) -> Vec<usize> {
    let mut onsets = Vec::new();
    let mut below = quiet;
    for (i, s) in samples.iter().enumerate() {
        if s.abs() >= threshold {
            if below >= quiet {
                onsets.push(i);
            }
            below = 0;
        } else {
            below += 1;
        }
    }
    onsets
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chirp(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let t = i as f32 / 48_000.0;
                (2.0 * std::f32::consts::PI * (200.0 + 800.0 * t) * t).sin() * 0.5
            })
            .collect()
    }

    #[test]
    fn finds_the_lag_of_a_delayed_copy() {
        let sent = chirp(48_000);
        let mut received = vec![0.0; 1234];
        received.extend(sent.iter().map(|s| s * 0.7));
        let a = best_alignment(&sent, &received, 4800, 9600, 4800).unwrap();
        assert_eq!(a.lag, 1234);
        assert!(a.correlation > 0.99, "{a:?}");
        let silence = vec![0.0; 60_000];
        let a = best_alignment(&sent, &silence, 4800, 9600, 4800).unwrap();
        assert!(a.correlation.abs() < 0.01);
    }

    #[test]
    fn finds_click_onsets() {
        let mut s = vec![0.0f32; 10_000];
        for &at in &[1000usize, 5000] {
            for k in 0..50 {
                s[at + k] = 0.9;
            }
        }
        assert_eq!(click_onsets(&s, 0.5, 1000), vec![1000, 5000]);
    }
}
