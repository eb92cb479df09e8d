//! Durable apply throughput on a real redb file: one record per transaction
//! (one fsync each) and group commit (one fsync per batch).
//! Run: `cargo bench -p tincan-store --bench store`.
#![allow(missing_docs)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tincan_core::{Hlc, RoomSettings, SignedRecord, UserKey, make};
use tincan_store::{Applied, Store, StoreConfig};

struct Source {
    key: UserKey,
    room: tincan_core::RoomId,
    next: u64,
}

impl Source {
    fn take(&mut self, n: usize) -> Vec<SignedRecord> {
        (0..n)
            .map(|_| {
                self.next += 1;
                make::log(
                    &self.key,
                    Hlc::new(1_700_000_000_000 + self.next, 0),
                    self.room,
                    "spoke in general",
                )
                .expect("sign")
            })
            .collect()
    }
}

fn setup() -> (tempfile::TempDir, Store, Source) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path().join("bench.redb"), StoreConfig::default()).expect("open");
    let key = UserKey::from_seed(&[1; 32]);
    let (room, rec) = make::room(
        &key,
        Hlc::new(1, 0),
        [1; 16],
        "bench",
        RoomSettings::default(),
    )
    .expect("sign");
    store.apply(rec).expect("room");
    (dir, store, Source { key, room, next: 0 })
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("durable_apply");
    g.sample_size(20);

    g.throughput(Throughput::Elements(1));
    g.bench_function("one_per_transaction", |b| {
        let (_dir, store, mut src) = setup();
        b.iter_batched(
            || src.take(1).remove(0),
            |r| assert_eq!(store.apply(r).expect("apply"), Applied::Stored),
            criterion::BatchSize::SmallInput,
        )
    });

    for batch in [100usize, 1000] {
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_function(format!("group_commit_{batch}"), |b| {
            let (_dir, store, mut src) = setup();
            b.iter_batched(
                || src.take(batch),
                |rs| {
                    let out = store.apply_batch(rs).expect("apply");
                    assert!(out.iter().all(|r| matches!(r, Ok(Applied::Stored))));
                },
                criterion::BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
