//! Voice test helpers: speech to send, and checks of what was received.

use std::path::Path;
use std::process::Command;

use tincan_audio::analysis::{Alignment, best_alignment};
use tincan_audio::wav::{WavWriter, read_mono_48k};

/// Writes `seconds` of speech to `path` (48 kHz mono): espeak-ng's voice
/// where it is installed (`./x bootstrap` installs it), a synthetic
/// speech-like signal otherwise, and says which.
pub fn write_speech(path: &Path, seconds: f32) -> Vec<f32> {
    let text = "The quick brown fox jumps over the lazy dog. \
                Tin can voice chat needs no server at all. \
                Five boxing wizards jump quickly over the game map. \
                Meet me at the northern tower when the round starts.";
    let made = Command::new("espeak-ng")
        .args(["-s", "150", "-w"])
        .arg(path)
        .arg(text)
        .output();
    let mut samples = match made {
        Ok(o) if o.status.success() => {
            println!("speech: espeak-ng");
            read_mono_48k(path).expect("espeak-ng wrote a WAV")
        }
        _ => {
            println!("speech: espeak-ng not available, a synthetic speech-like signal");
            Vec::new()
        }
    };
    let want = (seconds * 48_000.0) as usize;
    if samples.is_empty() {
        samples = (0..want)
            .map(|i| {
                let t = i as f32 / 48_000.0;
                let envelope = (std::f32::consts::PI * 3.0 * t).sin().abs();
                (2.0 * std::f32::consts::PI * (150.0 + 60.0 * (t * 0.7).sin()) * t).sin()
                    * 0.4
                    * envelope
            })
            .collect();
    }
    // Loop the speech to the length asked for.
    let mut out = Vec::with_capacity(want);
    while out.len() < want {
        let take = (want - out.len()).min(samples.len());
        out.extend_from_slice(&samples[..take]);
    }
    let mut w = WavWriter::create(path).expect("create speech WAV");
    w.write(&out).expect("write speech WAV");
    w.finish().expect("finish speech WAV");
    out
}

/// How well a recording carries what was sent: the best alignment of each
/// half-second window of `sent` (from the second second on) in `received`,
/// searched over lags up to `max_lag_s`, and the median correlation of
/// those windows. Windows are short because a jitter buffer that adapts
/// its delay shifts the alignment now and then.
pub fn received_correlation(
    sent: &[f32],
    received_wav: &Path,
    max_lag_s: f32,
) -> (f64, Vec<Alignment>) {
    let received = read_mono_48k(received_wav).unwrap_or_default();
    let window = 24_000;
    let max_lag = (max_lag_s * 48_000.0) as usize;
    let mut found = Vec::new();
    let mut from = 48_000;
    while from + window < sent.len() {
        if let Some(a) = best_alignment(sent, &received, from, window, max_lag) {
            found.push(a);
        }
        from += window;
    }
    let mut c: Vec<f64> = found.iter().map(|a| a.correlation).collect();
    c.sort_by(|a, b| a.total_cmp(b));
    let median = c.get(c.len() / 2).copied().unwrap_or(0.0);
    (median, found)
}
