//! The voice session's signals (presences and key shares) on arbitrary
//! bytes, as any node on a room's voice topic may publish them: nothing may
//! panic, what is accepted re-encodes to a signal that decodes the same,
//! and opening a key share's envelopes with our node key never panics.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tincan_core::NodeKey;
use tincan_core::seal::open_envelope;
use tincan_voice::protocol::{VoiceSignal, key_share_context};

fn node() -> &'static NodeKey {
    static NODE: OnceLock<NodeKey> = OnceLock::new();
    NODE.get_or_init(|| NodeKey::from_seed(&[7; 32]))
}

fuzz_target!(|data: &[u8]| {
    let Ok(signal) = VoiceSignal::decode(data) else {
        return;
    };
    let bytes = signal.encode().expect("an accepted signal re-encodes within the limit");
    assert_eq!(VoiceSignal::decode(&bytes).expect("re-decodes"), signal);
    if let VoiceSignal::KeyShare(share) = &signal {
        let context = key_share_context(
            &share.room,
            &share.channel,
            &node().id(),
            share.key_id,
            share.generation,
        );
        let _ = open_envelope(&share.envelopes, node(), &context);
    }
});
