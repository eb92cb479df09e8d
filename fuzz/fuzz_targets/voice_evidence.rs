//! What a relay will read from a member on the control stream: a member
//! message (evidence against a speaker), and the signed records in it
//! applied, parents first, to a store of the relay's own, whose roster the
//! gate then reads. Nothing may panic; a message that decodes re-encodes
//! to one that decodes the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tincan_core::{ChannelId, RoomId, SignedRecord};
use tincan_media::control::MemberMessage;
use tincan_store::{Store, StoreConfig};
use tincan_voice::roster::{parents_first, roster_from_store};

fuzz_target!(|data: &[u8]| {
    let Ok(message) = MemberMessage::decode(data) else {
        return;
    };
    let again = MemberMessage::decode(&message.encode()).expect("an encoded message decodes");
    assert_eq!(again, message);
    let MemberMessage::Evidence(evidence) = message else {
        return;
    };
    let mut records: Vec<SignedRecord> = evidence
        .records
        .iter()
        .filter_map(|b| SignedRecord::from_bytes(b).ok())
        .collect();
    if records.is_empty() {
        return;
    }
    parents_first(&mut records);
    let room = records[0].record().room().unwrap_or(RoomId([0; 16]));
    let store = Store::in_memory(StoreConfig::default()).expect("an in-memory store");
    let _ = store.apply_batch(records);
    let _ = roster_from_store(&store, room, ChannelId([0; 16]));
});
