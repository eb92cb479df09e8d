//! Record throughput: signing, decoding, and verification one at a time and
//! in batches. Run: `cargo bench -p tincan-core --bench records`.
#![allow(missing_docs)]

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use tincan_core::record::verify_batch;
use tincan_core::{Hlc, RoomId, UnverifiedRecord, UserKey, make};

fn wire_records(n: usize) -> Vec<Vec<u8>> {
    let key = UserKey::from_seed(&[1; 32]);
    let room = RoomId([2; 16]);
    (0..n as u64)
        .map(|i| {
            make::log(
                &key,
                Hlc::new(1_700_000_000_000 + i, 0),
                room,
                "joined channel general",
            )
            .expect("sign")
            .to_bytes()
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let key = UserKey::from_seed(&[1; 32]);
    let one = wire_records(1).remove(0);

    let mut g = c.benchmark_group("record");
    g.throughput(Throughput::Elements(1));
    g.bench_function("sign", |b| {
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            make::log(
                &key,
                Hlc::new(i, 0),
                RoomId([2; 16]),
                "joined channel general",
            )
            .expect("sign")
        })
    });
    g.bench_function("decode", |b| {
        b.iter(|| UnverifiedRecord::decode(&one).expect("decode"))
    });
    g.bench_function("decode_and_verify", |b| {
        b.iter(|| {
            UnverifiedRecord::decode(&one)
                .expect("decode")
                .verify()
                .expect("verify")
        })
    });
    g.finish();

    let n = 10_000;
    let wire = wire_records(n);
    let mut g = c.benchmark_group("verify_batch_10k");
    g.throughput(Throughput::Elements(n as u64));
    g.sample_size(10);
    for threads in [1usize, 2] {
        g.bench_function(format!("{threads}_threads"), |b| {
            b.iter_batched(
                || {
                    wire.iter()
                        .map(|w| UnverifiedRecord::decode(w).expect("decode"))
                        .collect::<Vec<_>>()
                },
                |batch| {
                    let out = verify_batch(batch, threads);
                    assert!(out.iter().all(Result::is_ok));
                    out
                },
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
