//! What a voice relay reads first from a dialler: a request (postcard), and
//! in a join the membership proof of either kind: for an open room the
//! records, applied parents first to a store of the relay's own whose
//! roster the gate then reads; for an invite-only room the grant and token
//! checked by `check_epoch_proof`. Nothing may panic; a request that
//! decodes re-encodes to one that decodes the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tincan_core::SignedRecord;
use tincan_media::control::Request;
use tincan_store::{Store, StoreConfig, check_epoch_proof};
use tincan_voice::roster::{parents_first, roster_from_store};

fuzz_target!(|data: &[u8]| {
    let Ok(request) = postcard::from_bytes::<Request>(data) else {
        return;
    };
    let bytes = postcard::to_allocvec(&request).expect("a request encodes");
    let again: Request = postcard::from_bytes(&bytes).expect("an encoded request decodes");
    assert_eq!(again, request);
    let Request::Join(hello) = request else {
        return;
    };
    let _ = hello.binding.verify();
    if hello.proof.iter().any(|item| item.token().is_some()) {
        let _ = check_epoch_proof(&hello.room, &hello.proof);
        return;
    }
    let mut records: Vec<SignedRecord> = hello
        .proof
        .iter()
        .filter_map(|item| item.record())
        .filter_map(|b| SignedRecord::from_bytes(b).ok())
        .collect();
    if records.is_empty() {
        return;
    }
    parents_first(&mut records);
    let store = Store::in_memory(StoreConfig::default()).expect("an in-memory store");
    let _ = store.apply_batch(records);
    let _ = roster_from_store(&store, hello.room, hello.channel);
});
