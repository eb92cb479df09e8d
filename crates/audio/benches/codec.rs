//! Opus encode and decode time per frame (criterion). Figures in the crate's
//! README. Speech is espeak-ng's where it exists, a synthetic signal otherwise.
//!
//!     cargo bench -p tincan-audio --bench codec

use std::hint::black_box;
use std::process::Command;
use std::time::Duration;

use criterion::Criterion;
use tincan_audio::codec::{
    Bandwidth, Decoder, Encoder, EncoderConfig, FrameDuration, MAX_PACKET_SAMPLES, Redundancy,
};

fn speech() -> Vec<f32> {
    let path = std::env::temp_dir().join(format!("tincan-bench-{}.wav", std::process::id()));
    let made = Command::new("espeak-ng")
        .arg("-w")
        .arg(&path)
        .arg("The quick brown fox jumps over the lazy dog, while the jitter buffer waits.")
        .output()
        .is_ok_and(|o| o.status.success());
    let samples = made
        .then(|| tincan_audio::wav::read_mono_48k(&path).ok())
        .flatten();
    let _ = std::fs::remove_file(&path);
    samples.unwrap_or_else(|| {
        println!("espeak-ng not available: benchmarking a synthetic signal");
        (0..96_000)
            .map(|i| {
                let t = i as f32 / 48_000.0;
                0.2 * (t * 150.0 * std::f32::consts::TAU).sin()
                    * (t * 3.0 * std::f32::consts::TAU).sin().abs()
            })
            .collect()
    })
}

fn encoder(frame: FrameDuration, bitrate_bps: u32, complexity: u8) -> Encoder {
    Encoder::new(EncoderConfig {
        frame,
        bitrate_bps,
        complexity,
        ..EncoderConfig::default()
    })
    .expect("valid encoder settings")
}

fn bench_codec(c: &mut Criterion) {
    let speech = speech();
    let mut group = c.benchmark_group("opus");
    group.measurement_time(Duration::from_secs(4));
    for (frame, name) in [(FrameDuration::Ms10, "10ms"), (FrameDuration::Ms20, "20ms")] {
        let frames: Vec<&[f32]> = speech.chunks_exact(frame.samples()).collect();
        for (bitrate, complexity) in [(32_000, 0), (32_000, 5), (32_000, 10), (24_000, 5)] {
            let mut enc = encoder(frame, bitrate, complexity);
            let mut k = 0;
            group.bench_function(
                format!("encode {name} {}kbps c{complexity}", bitrate / 1000),
                |b| {
                    b.iter(|| {
                        k = (k + 1) % frames.len();
                        black_box(enc.encode(black_box(frames[k])).expect("encodes"))
                    })
                },
            );
        }
        let mut enc = encoder(frame, 32_000, 5);
        let packets: Vec<Vec<u8>> = frames
            .iter()
            .filter_map(|f| enc.encode(f).ok().flatten().map(|p| p.payload))
            .collect();
        let mut dec = Decoder::new().expect("decoder");
        let mut out = vec![0.0f32; MAX_PACKET_SAMPLES];
        let mut k = 0;
        group.bench_function(format!("decode {name} 32kbps"), |b| {
            b.iter(|| {
                k = (k + 1) % packets.len();
                black_box(dec.decode(black_box(&packets[k]), &mut out))
            })
        });
        group.bench_function(format!("conceal {name}"), |b| {
            b.iter(|| black_box(dec.conceal(frame.samples(), &mut out)))
        });
    }
    // Wideband with FEC, as the encoder runs under loss.
    let frames: Vec<&[f32]> = speech.chunks_exact(480).collect();
    // Redundancy off, so that libopus plans FEC for the whole 5 %.
    let mut enc = Encoder::new(EncoderConfig {
        expected_loss_percent: 5,
        max_bandwidth: Bandwidth::Fullband,
        redundancy: Redundancy::Off,
        ..EncoderConfig::default()
    })
    .expect("valid encoder settings");
    let packets: Vec<Vec<u8>> = frames
        .iter()
        .filter_map(|f| enc.encode(f).ok().flatten().map(|p| p.payload))
        .collect();
    let mut dec = Decoder::new().expect("decoder");
    let mut out = vec![0.0f32; MAX_PACKET_SAMPLES];
    let mut k = 0;
    group.bench_function("decode FEC 10ms (wideband, 5% expected loss)", |b| {
        b.iter(|| {
            k = (k + 1) % packets.len();
            black_box(dec.decode_fec(black_box(&packets[k]), 480, &mut out))
        })
    });
    let mut k = 0;
    group.bench_function("encode 10ms 32kbps c5 under 5% loss (wideband+FEC)", |b| {
        b.iter(|| {
            k = (k + 1) % frames.len();
            black_box(enc.encode(black_box(frames[k])).expect("encodes"))
        })
    });
    group.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench_codec(&mut c);
    c.final_summary();
}
