//! The whole offline chain, through WAV files: repeatable from its seed, and
//! its figures add up.

use std::time::Duration;

use tincan_audio::capture::GateMode;
use tincan_audio::offline::{OfflineConfig, run, run_samples};
use tincan_audio::wav::{WavWriter, read_mono_48k};
use tincan_netem::LossModel;

/// Three seconds of syllables: a voiced tone under an envelope, with pauses.
fn syllables() -> Vec<f32> {
    (0..144_000)
        .map(|i| {
            let t = i as f32 / 48_000.0;
            let syllable = (t * 3.0).fract();
            let envelope = if syllable < 0.6 {
                (syllable / 0.6 * std::f32::consts::PI).sin()
            } else {
                0.0
            };
            0.3 * envelope * (t * 180.0 * std::f32::consts::TAU).sin()
                + 0.1 * envelope * (t * 540.0 * std::f32::consts::TAU).sin()
        })
        .collect()
}

fn envelope_correlation(a: &[f32], b: &[f32]) -> f64 {
    let level = |s: &[f32]| s.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let ea: Vec<f64> = a.chunks_exact(480).map(level).collect();
    (0..30)
        .map(|lag| {
            let eb: Vec<f64> = b.chunks_exact(480).skip(lag).map(level).collect();
            let n = ea.len().min(eb.len());
            let (ma, mb) = (
                ea[..n].iter().sum::<f64>() / n as f64,
                eb[..n].iter().sum::<f64>() / n as f64,
            );
            let cov: f64 = (0..n).map(|i| (ea[i] - ma) * (eb[i] - mb)).sum();
            let va: f64 = (0..n).map(|i| (ea[i] - ma).powi(2)).sum();
            let vb: f64 = (0..n).map(|i| (eb[i] - mb).powi(2)).sum();
            cov / (va * vb).sqrt()
        })
        .fold(f64::MIN, f64::max)
}

#[test]
fn lossy_jittery_chain_is_repeatable_and_its_figures_add_up() {
    let dir = std::env::temp_dir().join(format!("tincan-offline-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let input_path = dir.join("in.wav");
    let input = syllables();
    let mut writer = WavWriter::create(&input_path).expect("create");
    writer.write(&input).expect("write");
    writer.finish().expect("finish");

    let mut config = OfflineConfig::new(&input_path, dir.join("a.wav"));
    config.link.loss = LossModel::Random { probability: 0.05 };
    config.link.jitter = Duration::from_millis(20);
    config.link.seed = 9;
    let first = run(&config).expect("chain runs");
    config.output = dir.join("b.wav");
    let second = run(&config).expect("chain runs");
    let a = read_mono_48k(&dir.join("a.wav")).expect("output");
    let b = read_mono_48k(&dir.join("b.wav")).expect("output");
    assert_eq!(a, b, "same seed, same sound");
    assert_eq!(first.jitter, second.jitter);
    println!("{first}");

    let j = first.jitter;
    assert_eq!(
        j.lost,
        j.recovered_redundancy + j.recovered_fec + j.concealed
    );
    assert!(
        (j.lost as i64 - first.link_stats.lost as i64).abs() <= 3,
        "{first}"
    );
    assert!(
        j.concealed * 3 <= j.lost,
        "most losses are recovered: {first}"
    );
    assert!(
        first.mean_buffer_delay <= Duration::from_millis(70),
        "{first}"
    );
    assert_eq!(first.output_samples as usize, a.len());
    assert!(a.len() >= input.len());
    let correlation = envelope_correlation(&input, &a);
    assert!(correlation > 0.9, "envelope correlation {correlation:.3}");

    config.link.seed = 10;
    config.output = dir.join("c.wav");
    run(&config).expect("chain runs");
    let c = read_mono_48k(&dir.join("c.wav")).expect("output");
    assert_ne!(a, c, "another seed, other losses");
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[test]
fn voice_gate_and_dtx_send_less_and_lose_nothing() {
    let mut input = syllables();
    // Two seconds of near silence in the middle.
    input.splice(48_000..48_000, std::iter::repeat_n(0.0001f32, 96_000));
    let mut config = OfflineConfig::new("unused.wav", "unused.wav");
    config.capture.gate = GateMode::VoiceActivity;
    config.encoder.dtx = true;
    let (output, report) = run_samples(&config, &input).expect("chain runs");
    println!("{report}");
    assert!(
        report.packets_sent * 10 < report.frames_captured * 8,
        "{report}"
    );
    assert_eq!(report.jitter.lost, 0, "{report}");
    assert!(report.jitter.silent > 150, "{report}");
    assert!(envelope_correlation(&input, &output) > 0.9);
}

#[test]
fn twenty_ms_frames_and_drifting_clocks_work_too() {
    let input = syllables();
    let mut config = OfflineConfig::new("unused.wav", "unused.wav");
    config.encoder.frame = tincan_audio::codec::FrameDuration::Ms20;
    config.encoder.bitrate_bps = 24_000;
    config.sender_clock_ppm = 500.0;
    config.link.jitter = Duration::from_millis(10);
    let (output, report) = run_samples(&config, &input).expect("chain runs");
    println!("{report}");
    assert_eq!(report.jitter.lost, 0, "{report}");
    assert!(report.jitter.played >= 149, "{report}");
    assert!(envelope_correlation(&input, &output) > 0.9);
    config.sender_clock_ppm = f64::NAN;
    assert!(run_samples(&config, &input).is_err());
}
