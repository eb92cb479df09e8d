//! The real sound-card path (cpal, the callback rings, resampling) on a
//! machine without a sound card: a private PulseAudio daemon with a null sink
//! stands in, reached through ALSA's `pulse` device. A tone played into the
//! sink is captured back from its monitor.
//!
//! Needs `pulseaudio` and `libasound2-plugins`; without them the test says so
//! on the terminal and skips.

use std::io::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use tincan_audio::device::{AudioInput, AudioOutput, CpalInput, CpalOutput};

/// Says why the test did not run, past libtest's output capture.
fn skip(reason: &str) {
    let _ = writeln!(std::io::stderr(), "SKIPPED pulse_device: {reason}");
}

#[test]
fn tone_played_into_a_pulse_null_sink_is_captured_back() {
    if Command::new("pulseaudio")
        .arg("--version")
        .output()
        .is_err()
    {
        skip("pulseaudio is not installed (apt-get install pulseaudio libasound2-plugins)");
        return;
    }
    if !Path::new("/usr/lib/x86_64-linux-gnu/alsa-lib/libasound_module_pcm_pulse.so").exists()
        && !Path::new("/usr/lib/aarch64-linux-gnu/alsa-lib/libasound_module_pcm_pulse.so").exists()
    {
        skip("ALSA's pulse plugin is missing (apt-get install libasound2-plugins)");
        return;
    }
    let runtime = std::env::temp_dir().join(format!("tincan-pulse-{}", std::process::id()));
    std::fs::create_dir_all(&runtime).expect("temp dir");
    let started = Command::new("pulseaudio")
        .env("XDG_RUNTIME_DIR", &runtime)
        .args([
            "--daemonize=yes",
            "--exit-idle-time=-1",
            "-n",
            "--load=module-native-protocol-unix",
            "--load=module-null-sink sink_name=tincan_test",
        ])
        .status()
        .is_ok_and(|s| s.success());
    if !started {
        skip("the PulseAudio daemon would not start here");
        let _ = std::fs::remove_dir_all(&runtime);
        return;
    }
    // The devices are opened in a child process, so that the sound server
    // settings are its environment rather than edits of this one's.
    let child = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "pulse_child", "--ignored", "--nocapture"])
        .env("TINCAN_PULSE_CHILD", "1")
        .env("XDG_RUNTIME_DIR", &runtime)
        .env("PULSE_SINK", "tincan_test")
        .env("PULSE_SOURCE", "tincan_test.monitor")
        .output()
        .expect("the test binary runs");
    let _ = Command::new("pulseaudio")
        .env("XDG_RUNTIME_DIR", &runtime)
        .arg("--kill")
        .status();
    let _ = std::fs::remove_dir_all(&runtime);
    let stdout = String::from_utf8_lossy(&child.stdout);
    println!("{stdout}");
    assert!(
        child.status.success() && stdout.contains("tone captured"),
        "child failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&child.stderr)
    );
}

/// The device half, run by the test above in a child process.
#[test]
#[ignore = "run by tone_played_into_a_pulse_null_sink_is_captured_back"]
fn pulse_child() {
    if std::env::var_os("TINCAN_PULSE_CHILD").is_none() {
        return;
    }
    let mut output = CpalOutput::open(Some("pulse")).expect("pulse playback device");
    let mut input = CpalInput::open(Some("pulse")).expect("pulse capture device");
    println!("opened {} and {}", output.name(), input.name());
    let tone: Vec<f32> = (0..48_000 * 10)
        .map(|i| 0.5 * (i as f32 * 1000.0 * std::f32::consts::TAU / 48_000.0).sin())
        .collect();
    let mut played = 0;
    let mut captured = Vec::new();
    let mut buffer = vec![0.0f32; 4800];
    let start = Instant::now();
    // The null sink takes about two seconds to start; then run 1.5 s more.
    while start.elapsed() < Duration::from_secs(10) && captured.len() < 72_000 {
        if played < tone.len() {
            let room = output.writable().min(tone.len() - played);
            played += output.write(&tone[played..played + room]).expect("write");
        }
        let n = input.read(&mut buffer).expect("read");
        captured.extend_from_slice(&buffer[..n]);

        std::thread::sleep(Duration::from_millis(5));
    }
    println!(
        "played {played}, captured {} samples, {} underruns",
        captured.len(),
        output.underruns()
    );
    assert!(played >= 48_000, "the speaker took only {played} samples");
    // Look at the loudest second: the tone, at 1 kHz, about 2000 zero crossings.
    let loudest = captured
        .chunks(48_000)
        .filter(|c| c.len() == 48_000)
        .max_by(|a, b| {
            let e = |c: &[f32]| c.iter().map(|s| s * s).sum::<f32>();
            e(a).total_cmp(&e(b))
        })
        .expect("at least a second captured");
    let rms = (loudest.iter().map(|s| s * s).sum::<f32>() / 48_000.0).sqrt();
    // The pitch from the spacing of zero crossings (24 samples apart for
    // 1 kHz at 48 kHz). The median spacing ignores the silent gaps that
    // playback underruns leave on a loaded machine, which a plain count of
    // crossings does not.
    let crossings: Vec<usize> = loudest
        .windows(2)
        .enumerate()
        .filter(|(_, w)| (w[0] < 0.0) != (w[1] < 0.0))
        .map(|(i, _)| i)
        .collect();
    let mut spacing: Vec<usize> = crossings.windows(2).map(|w| w[1] - w[0]).collect();
    spacing.sort_unstable();
    let median = spacing.get(spacing.len() / 2).copied().unwrap_or(0);
    println!(
        "loudest second: rms {rms:.3}, {} zero crossings, median spacing {median} samples",
        crossings.len()
    );
    assert!(rms > 0.05, "captured level {rms}");
    assert!(
        crossings.len() > 1000,
        "only {} zero crossings: not a tone",
        crossings.len()
    );
    assert!(
        (23..=25).contains(&median),
        "median zero-crossing spacing {median} samples: not 1 kHz"
    );
    println!("tone captured");
}
