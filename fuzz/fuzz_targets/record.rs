//! Record decoding and verification on arbitrary bytes.
//!
//! Two modes, chosen by the first byte, so the fuzzer reaches both the
//! parser's error paths and the verifier with valid signatures:
//! - even: the rest is wire bytes from a peer: decode, verify, check the rules;
//!   nothing may panic, and anything accepted must re-encode to the same bytes.
//! - odd: the rest is a postcard `Record` built by the fuzzer; it is signed
//!   by a fixed key and must decode, verify and round-trip exactly.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tincan_core::{Record, SignedRecord, UnverifiedRecord, UserKey, rules};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    if mode % 2 == 0 {
        if let Ok(u) = UnverifiedRecord::decode(rest) {
            let _ = u.id();
            if let Ok(s) = u.verify() {
                let _ = rules::check_standalone(s.record());
                assert_eq!(s.to_bytes(), rest, "an accepted record must be canonical");
            }
        }
    } else if let Ok(mut record) = postcard::from_bytes::<Record>(rest) {
        let key = UserKey::from_seed(&[7; 32]);
        record.author = key.id();
        let _ = rules::check_standalone(&record);
        if let Ok(signed) = record.clone().sign(&key) {
            let bytes = signed.to_bytes();
            let back = SignedRecord::from_bytes(&bytes).expect("our own signed record verifies");
            assert_eq!(back.record(), &record);
            assert_eq!(back.id(), signed.id());
        }
    }
});
