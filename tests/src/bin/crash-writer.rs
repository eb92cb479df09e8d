//! Child process of the crash test: applies records to a store and prints
//! each id once `apply` has returned Ok, so the parent knows exactly what was
//! acknowledged before it kills this process with SIGKILL.
//!
//! Usage: crash-writer STORE_PATH FIRST_SEQUENCE

use std::io::Write;

use tincan_core::{Hlc, RoomSettings, UserKey, make};
use tincan_store::{Store, StoreConfig};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("usage: crash-writer STORE FIRST_SEQ"))?;
    let first: u64 = args.next().unwrap_or_default().parse().unwrap_or(0);
    let store = Store::open(&path, StoreConfig::default())?;
    let key = UserKey::from_seed(&[42; 32]);
    let (room, rec) = make::room(
        &key,
        Hlc::new(1, 0),
        [1; 16],
        "crash",
        RoomSettings::default(),
    )?;
    store.apply(rec)?;
    let mut out = std::io::stdout().lock();
    let mut seq = first;
    loop {
        // Alternate single durable applies and group commits.
        let batch = if seq.is_multiple_of(3) {
            1
        } else {
            1 + (seq % 50) as usize
        };
        let recs: Vec<_> = (0..batch)
            .map(|i| {
                make::log(
                    &key,
                    Hlc::new(1_000 + seq + i as u64, 0),
                    room,
                    &format!("entry {}", seq + i as u64),
                )
            })
            .collect::<Result<_, _>>()?;
        let ids: Vec<_> = recs.iter().map(|r| r.id()).collect();
        seq += batch as u64;
        if batch == 1 {
            store.apply(recs.into_iter().next().expect("one record"))?;
        } else {
            for r in store.apply_batch(recs)? {
                r?;
            }
        }
        for id in ids {
            writeln!(out, "{id}")?;
        }
        out.flush()?;
    }
}
