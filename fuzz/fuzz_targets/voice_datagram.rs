//! Voice datagram parsing on arbitrary bytes, as a relay or node receives
//! them from any peer: nothing may panic, and anything accepted must
//! re-encode to exactly the same bytes (one wire form per frame).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tincan_media::VoiceDatagram;

fuzz_target!(|data: &[u8]| {
    if let Ok(parsed) = VoiceDatagram::parse(data) {
        assert_eq!(parsed.encoded_len(), data.len());
        let bytes = parsed.encode().expect("an accepted datagram fits the limit");
        assert_eq!(bytes, data, "an accepted datagram must be canonical");
        assert_eq!(parsed.to_owned_datagram().as_ref(), parsed);
    }
});
