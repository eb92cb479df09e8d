//! The real-time engine end to end on WAV devices: a chirp captured by one
//! engine, its packets handed to a second one as a remote speaker, and the
//! second one's WAV output compared with what was sent.

use std::time::{Duration, Instant};

use tincan_audio::analysis::best_alignment;
use tincan_audio::device::DeviceSpec;
use tincan_audio::engine::{Engine, EngineConfig};
use tincan_audio::wav::{WavWriter, read_mono_48k};

fn speechlike(n: usize) -> Vec<f32> {
    // A chirp with a syllable-like envelope: voiced, varied, never periodic.
    (0..n)
        .map(|i| {
            let t = i as f32 / 48_000.0;
            let envelope = (std::f32::consts::PI * 3.0 * t).sin().abs();
            (2.0 * std::f32::consts::PI * (150.0 + 400.0 * t) * t).sin() * 0.4 * envelope
        })
        .collect()
}

#[test]
fn a_wav_spoken_into_one_engine_plays_out_of_another() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.wav");
    let output = dir.path().join("out.wav");
    let sent = speechlike(48_000 * 2);
    let mut w = WavWriter::create(&input).unwrap();
    w.write(&sent).unwrap();
    w.finish().unwrap();

    let (speaker, mut packets) = Engine::<u8>::start(EngineConfig {
        input: DeviceSpec::Wav {
            path: input.clone(),
            looped: false,
        },
        output: DeviceSpec::Null,
        ..EngineConfig::default()
    })
    .unwrap();
    let (listener, _unused) = Engine::<u8>::start(EngineConfig {
        input: DeviceSpec::Null,
        output: DeviceSpec::Wav {
            path: output.clone(),
            looped: false,
        },
        ..EngineConfig::default()
    })
    .unwrap();
    // Relay packets for the file's length and a little more (bounded).
    let deadline = Instant::now() + Duration::from_millis(2600);
    let mut relayed = 0;
    while Instant::now() < deadline {
        match packets.try_recv() {
            Ok(p) => {
                listener.push(7, p, Instant::now());
                relayed += 1;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(1)),
        }
    }
    drop(speaker);
    drop(listener);
    assert!(relayed >= 190, "only {relayed} packets in 2 s of speech");
    let received = read_mono_48k(&output).unwrap();
    let a = best_alignment(&sent, &received, 24_000, 48_000, 24_000).expect("output too short");
    println!(
        "FIGURE engine-to-engine: correlation {:.3} at lag {:.1} ms ({} packets)",
        a.correlation,
        a.lag as f64 / 48.0,
        relayed
    );
    assert!(
        a.correlation > 0.5,
        "the output does not carry the input: {a:?}"
    );
}
