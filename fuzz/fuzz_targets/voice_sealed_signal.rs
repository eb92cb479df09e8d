//! What a mesh node opens from a sealed room's voice topic: any bytes, as a
//! sealed voice signal, with the key of the epoch it holds (and the one
//! before). Nothing may panic; what the node seals with a given nonce opens
//! to the same bytes, and not under another publisher.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tincan_core::seal::{RoomChain, RoomKey};
use tincan_core::sealed_signal::{Opened, open_signal, seal_signal_with_nonce};
use tincan_core::{RoomId, UserKey};

fn key() -> &'static RoomKey {
    static KEY: OnceLock<RoomKey> = OnceLock::new();
    KEY.get_or_init(|| {
        let owner = UserKey::from_seed(&[1; 32]);
        RoomChain::derive(&owner, &RoomId([2; 16]))
            .epoch_key(3)
            .expect("epoch 3 is in the chain")
    })
}

fuzz_target!(|data: &[u8]| {
    let key = key();
    let publisher = [9u8; 38];
    let _ = open_signal(key, true, &publisher, data);
    let _ = open_signal(key, false, &publisher, data);
    let nonce = [data.len() as u8; 24];
    let sealed = seal_signal_with_nonce(key, &publisher, &nonce, data).expect("sealing works");
    assert_eq!(
        open_signal(key, false, &publisher, &sealed),
        Opened::Signal(data.to_vec())
    );
    assert_eq!(open_signal(key, true, &[8u8; 38], &sealed), Opened::Invalid);
});
