//! What end-to-end sealing adds per voice frame: bytes (printed) and CPU
//! (criterion) for sealing and opening a 10 ms frame, with and without a
//! redundant copy of the previous frame.
//!
//! `cargo bench -p tincan-voice --bench frame`

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use tincan_media::protocol::HEADER_LEN;
use tincan_voice::frame::{FrameKey, PlainFrame, open_frame, seal_frame};
use tincan_voice::protocol::{SEALED_OVERHEAD, SealedFrame};

/// A 10 ms Opus frame at 32 kbit/s is 40 bytes; speech with FEC runs 40 to
/// 80. 60 is the middle.
const OPUS_10MS: usize = 60;

fn frames(c: &mut Criterion) {
    let key = FrameKey::derive(&[7; 32], 1);
    let payload = [0x42u8; OPUS_10MS];
    let redundant = [0x24u8; OPUS_10MS];
    for (name, redundant) in [("10ms", None), ("10ms+redundant", Some(&redundant[..]))] {
        let frame = PlainFrame {
            sequence: 1,
            timestamp: 480,
            end_of_spurt: false,
            payload: &payload,
            redundant,
        };
        let mut sealed = Vec::new();
        seal_frame(&key, &frame, &mut sealed).expect("fits");
        let plain_len = HEADER_LEN + redundant.map_or(0, |r| r.len() + 2) + OPUS_10MS;
        println!(
            "{name}: plaintext datagram {plain_len} bytes, sealed {} bytes: +{} bytes ({:.1}%)",
            sealed.len(),
            sealed.len() - plain_len,
            (sealed.len() - plain_len) as f64 * 100.0 / plain_len as f64
        );
        assert_eq!(sealed.len() - plain_len, SEALED_OVERHEAD);
        let mut out = Vec::with_capacity(256);
        let mut sequence = 0u32;
        c.bench_function(&format!("seal {name}"), |b| {
            b.iter(|| {
                out.clear();
                sequence = sequence.wrapping_add(1);
                let f = PlainFrame { sequence, ..frame };
                seal_frame(&key, black_box(&f), &mut out).expect("fits");
                black_box(out.len())
            })
        });
        c.bench_function(&format!("open {name}"), |b| {
            b.iter(|| {
                let f = SealedFrame::parse(black_box(&sealed)).expect("parses");
                black_box(open_frame(&key, &f).expect("opens"))
            })
        });
    }
}

criterion_group!(benches, frames);
criterion_main!(benches);
