//! The chain in real time through paced devices: a WAV file as the microphone,
//! a WAV file as the speaker, the engine polling both every few milliseconds as
//! the node will. Asserts what was heard, never how fast.

use std::time::{Duration, Instant};

use tincan_audio::capture::{CaptureChain, CaptureConfig, GateMode};
use tincan_audio::codec::{Encoder, EncoderConfig};
use tincan_audio::device::{AudioInput, AudioOutput, Pacing, WavInput, WavOutput};
use tincan_audio::receive::{ReceiveConfig, Receiver};
use tincan_audio::wav::{WavWriter, read_mono_48k};

#[test]
fn paced_wav_in_to_paced_wav_out() {
    let dir = std::env::temp_dir().join(format!("tincan-rt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let input_path = dir.join("in.wav");
    // 0.5 s of tone, 0.5 s of silence, twice.
    let signal: Vec<f32> = (0..96_000)
        .map(|i| {
            let on = (i / 24_000) % 2 == 0;
            if on {
                0.4 * (i as f32 * 440.0 * std::f32::consts::TAU / 48_000.0).sin()
            } else {
                0.0
            }
        })
        .collect();
    let mut writer = WavWriter::create(&input_path).expect("create");
    writer.write(&signal).expect("write");
    writer.finish().expect("finish");

    let mut microphone = WavInput::open(&input_path, false, Pacing::RealTime).expect("open input");
    let output_path = dir.join("out.wav");
    let mut speaker = WavOutput::create(&output_path, Pacing::RealTime).expect("open output");
    let mut capture = CaptureChain::new(CaptureConfig {
        gate: GateMode::VoiceActivity,
        ..CaptureConfig::default()
    });
    let mut encoder = Encoder::new(EncoderConfig::default()).expect("encoder");
    let mut receiver: Receiver<u8> = Receiver::new(ReceiveConfig::default());

    let start = Instant::now();
    let mut pending = Vec::new();
    let mut buffer = vec![0.0f32; 4800];
    let mut tick = vec![0.0f32; 480];
    let mut sent = 0;
    // Until the file has been played and the tail has drained (a loaded
    // machine only makes this take longer, never fail).
    let mut finished_at = None;
    while start.elapsed() < Duration::from_secs(20) {
        let now = start.elapsed();
        if microphone.is_finished() {
            let at = *finished_at.get_or_insert(now);
            if now > at + Duration::from_millis(300) {
                break;
            }
        }
        let n = microphone.read(&mut buffer).expect("read");
        pending.extend_from_slice(&buffer[..n]);
        while pending.len() >= 480 {
            let mut frame: Vec<f32> = pending.drain(..480).collect();
            if capture.process(&mut frame) {
                if let Some(packet) = encoder.encode(&frame).expect("encode") {
                    receiver.push(&1, packet, now).expect("push");
                    sent += 1;
                }
            } else {
                encoder.skip_frame();
            }
        }
        while speaker.writable() >= 480 {
            receiver.mix(start.elapsed(), &mut tick);
            speaker.write(&tick).expect("write");
        }
        std::thread::sleep(Duration::from_millis(3));
    }
    speaker.finish().expect("finish");
    assert!(microphone.is_finished());
    let heard = read_mono_48k(&output_path).expect("output");
    std::fs::remove_dir_all(&dir).expect("cleanup");

    // The voice gate sent the tone (100 frames) and its 300 ms hangovers
    // (2 x 30 frames), not the rest of the silence (or the padding after).
    assert!((150..=165).contains(&sent), "{sent} packets sent");
    // What was heard: two bursts of tone, each about half a second.
    let loud: Vec<bool> = heard
        .chunks_exact(480)
        .map(|c| c.iter().map(|s| s * s).sum::<f32>() / 480.0 > 0.01)
        .collect();
    let loud_frames = loud.iter().filter(|l| **l).count();
    let bursts = loud.windows(2).filter(|w| !w[0] && w[1]).count();
    assert!(
        (85..=115).contains(&loud_frames),
        "{loud_frames} loud frames"
    );
    assert_eq!(bursts, 2, "two bursts of tone");
    let stats = receiver.speaker(&1).expect("speaker").stats();
    assert_eq!(stats.lost, 0, "{stats:?}");
}
