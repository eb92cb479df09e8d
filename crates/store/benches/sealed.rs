//! An invite-only room's log applied into a member's store: group commit of
//! 10,000 sealed log entries (each opened, checked and indexed) in one
//! durable transaction on a real redb file, beside the same 10,000 entries
//! in plaintext in an open room; and the cost of opening one record.
//! Prints records/s and microseconds per opening at the end.
//! Run: `cargo bench -p tincan-store --bench sealed`.
#![allow(missing_docs)]

use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use tincan_core::seal::RoomKey;
use tincan_core::{
    Body, Hlc, JoinPolicy, Member, MemberRole, MemberState, RoomId, RoomLog, RoomSettings,
    SignedRecord, UserKey, make,
};
use tincan_store::{Applied, Store, StoreConfig};

const N: usize = 10_000;

struct Fixture {
    member: UserKey,
    /// The room, the sealed admission and the grant: what a member's store
    /// holds before the log.
    base: Vec<SignedRecord>,
    sealed: Vec<SignedRecord>,
    plain_base: Vec<SignedRecord>,
    plain: Vec<SignedRecord>,
    key: RoomKey,
}

fn t(i: u64) -> Hlc {
    Hlc::new(1_700_000_000_000 + i, 0)
}

fn fixture() -> Fixture {
    let owner = UserKey::from_seed(&[1; 32]);
    let member = UserKey::from_seed(&[2; 32]);
    let owners = Store::in_memory(StoreConfig::default()).expect("store");
    owners.unlock_user(&owner).expect("unlock");
    let settings = RoomSettings {
        join_policy: JoinPolicy::Invite,
        member_limit: None,
    };
    let (room, rec) = make::room(&owner, t(0), [1; 16], "sealed", settings).expect("sign");
    owners.apply(rec).expect("room");
    let admit = Body::Member(Member {
        room,
        user: member.id(),
        role: MemberRole::Participant,
        state: MemberState::Joined,
    });
    let admit = owners.prepare_write(&owner, t(1), admit).expect("seal");
    owners.apply(admit).expect("admission");
    for g in owners.key_upkeep(&owner, t(2)).expect("upkeep") {
        owners.apply(g).expect("grant");
    }
    let wire = |r: &SignedRecord| SignedRecord::from_bytes(&r.to_bytes()).expect("verify");
    let base: Vec<_> = owners
        .records_in_dependency_order()
        .expect("records")
        .iter()
        .map(wire)
        .collect();
    let key = owners.room_key(&room).expect("read").expect("key");
    let entry = |room: RoomId, i: usize| {
        Body::RoomLog(RoomLog {
            room,
            user: member.id(),
            action: format!("joined channel general ({i})"),
        })
    };
    let sealed: Vec<_> = (0..N)
        .map(|i| {
            wire(&make::sealed(&member, t(10 + i as u64), &key, entry(room, i)).expect("seal"))
        })
        .collect();
    let (open, open_rec) =
        make::room(&owner, t(0), [2; 16], "open", RoomSettings::default()).expect("sign");
    let plain_base = vec![open_rec, make::join(&member, t(1), open).expect("sign")];
    let plain: Vec<_> = (0..N)
        .map(|i| {
            make::log(
                &member,
                t(10 + i as u64),
                open,
                &format!("joined channel general ({i})"),
            )
            .expect("sign")
        })
        .collect();
    Fixture {
        member,
        base,
        sealed,
        plain_base,
        plain,
        key,
    }
}

/// A member's store on disk, holding the room (and its key) but no log.
fn member_store(f: &Fixture, base: &[SignedRecord]) -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path().join("member.redb"), StoreConfig::default()).expect("open");
    store.unlock_user(&f.member).expect("unlock");
    for r in store.apply_batch(base.to_vec()).expect("apply") {
        r.expect("base record applies");
    }
    (dir, store)
}

fn apply_all(store: &Store, records: Vec<SignedRecord>) {
    let out = store.apply_batch(records).expect("apply");
    assert!(out.iter().all(|r| matches!(r, Ok(Applied::Stored))));
}

fn bench(c: &mut Criterion) {
    let f = fixture();
    let mut g = c.benchmark_group("member_apply");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(20));
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("group_commit_10000_sealed", |b| {
        b.iter_batched(
            || (member_store(&f, &f.base), f.sealed.clone()),
            |((_dir, store), records)| apply_all(&store, records),
            BatchSize::PerIteration,
        )
    });
    g.bench_function("group_commit_10000_plaintext", |b| {
        b.iter_batched(
            || (member_store(&f, &f.plain_base), f.plain.clone()),
            |((_dir, store), records)| apply_all(&store, records),
            BatchSize::PerIteration,
        )
    });
    g.finish();

    let mut g = c.benchmark_group("open");
    g.throughput(Throughput::Elements(1));
    g.bench_function("one_sealed_log_entry", |b| {
        b.iter(|| f.sealed[0].open(&f.key).expect("opens"))
    });
    g.finish();

    // The figures the README quotes, measured once more plainly.
    let runs = 3;
    let mut sealed = Duration::ZERO;
    let mut plain = Duration::ZERO;
    for _ in 0..runs {
        let (_dir, store) = member_store(&f, &f.base);
        let records = f.sealed.clone();
        let started = Instant::now();
        apply_all(&store, records);
        sealed += started.elapsed();
        let (_dir, store) = member_store(&f, &f.plain_base);
        let records = f.plain.clone();
        let started = Instant::now();
        apply_all(&store, records);
        plain += started.elapsed();
    }
    let started = Instant::now();
    for r in &f.sealed {
        r.open(&f.key).expect("opens");
    }
    let open_us = started.elapsed().as_secs_f64() * 1e6 / N as f64;
    let rate = |d: Duration| (N * runs) as f64 / d.as_secs_f64();
    println!(
        "sealed log into a member's store: {:.0} records/s (group commit of {N}); plaintext: {:.0} records/s; opening: {open_us:.2} us a record",
        rate(sealed),
        rate(plain)
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
