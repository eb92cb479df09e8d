//! End-to-end sealed voice frames on arbitrary bytes, as a relay or any
//! peer can send them: parsing and opening never panic and never open a
//! frame that was not sealed with the key; and frames sealed from
//! arbitrary payloads open to exactly those payloads.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tincan_media::VoiceHeader;
use tincan_voice::frame::{FrameKey, PlainFrame, open_frame, seal_frame};
use tincan_voice::protocol::SealedFrame;

fn key() -> &'static FrameKey {
    static KEY: OnceLock<FrameKey> = OnceLock::new();
    KEY.get_or_init(|| FrameKey::derive(&[9; 32], 0))
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        let _ = VoiceHeader::parse(rest);
        if let Ok(frame) = SealedFrame::parse(rest) {
            assert_eq!(frame.encoded_len(), rest.len());
            // Random bytes forging a tag under our key: 2^-64 a try.
            assert!(open_frame(key(), &frame).is_err(), "a forged frame opened");
        }
        return;
    }
    // Seal what the input says, then open it.
    let split = usize::from(mode >> 1).min(rest.len());
    let (redundant, payload) = rest.split_at(split);
    let redundant = (mode & 2 != 0).then_some(redundant);
    let sequence = rest.len() as u32;
    let frame = PlainFrame {
        sequence,
        timestamp: sequence.wrapping_mul(480),
        end_of_spurt: mode & 4 != 0,
        payload,
        redundant,
    };
    let mut out = Vec::new();
    if seal_frame(key(), &frame, &mut out).is_err() {
        assert!(out.is_empty());
        return;
    }
    let parsed = SealedFrame::parse(&out).expect("a sealed frame parses");
    let opened = open_frame(key(), &parsed).expect("a sealed frame opens");
    assert_eq!(opened.payload, payload);
    assert_eq!(opened.redundant.as_deref(), redundant);
    assert_eq!(opened.header.sequence, sequence);
    assert_eq!(opened.end_of_spurt(), frame.end_of_spurt);
    // One flipped bit anywhere but the routing indexes: it must not open.
    let at = usize::from(mode).wrapping_mul(31) % out.len();
    if !(2..5).contains(&at) {
        out[at] ^= 0x04;
        if let Ok(tampered) = SealedFrame::parse(&out) {
            assert!(open_frame(key(), &tampered).is_err(), "a tampered frame opened");
        }
    }
});
