//! The store's whole ingest path on arbitrary bytes: a stream of wire
//! records (length-prefixed) applied to one long-lived in-memory store that
//! holds a room, as a running node's store would be. Nothing may panic, and
//! queries must keep working.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tincan_core::{Hlc, RoomId, RoomSettings, UserKey, make};
use tincan_store::{Store, StoreConfig};

fn setup() -> &'static (Store, RoomId) {
    static SETUP: OnceLock<(Store, RoomId)> = OnceLock::new();
    SETUP.get_or_init(|| {
        let store =
            Store::in_memory(StoreConfig { pending_limit: 64, feed_capacity: 4, ..Default::default() })
                .expect("store");
        let key = UserKey::from_seed(&[7; 32]);
        let (id, rec) = make::room(&key, Hlc::new(1, 0), [1; 16], "fuzz", RoomSettings::default())
            .expect("sign");
        store.apply(rec).expect("room applies");
        (store, id)
    })
}

fuzz_target!(|data: &[u8]| {
    let (store, room_id) = setup();
    let mut rest = data;
    while rest.len() >= 2 {
        let len = usize::from(u16::from_le_bytes([rest[0], rest[1]]));
        rest = &rest[2..];
        let take = len.min(rest.len());
        let _ = store.apply_bytes(&rest[..take]);
        rest = &rest[take..];
    }
    let _ = store.channels(room_id).expect("query");
    let _ = store.log(room_id, Hlc::ZERO, Hlc::MAX, None, 10).expect("query");
    let _ = store.members(room_id).expect("query");
});
