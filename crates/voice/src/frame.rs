//! End-to-end sealed voice frames, in the shape of SFrame (RFC 9605) with
//! DAVE's 8-byte tag: a relay (or anyone on the path) forwards what it can
//! neither read nor forge; only the channel's current participants, who
//! hold the sender's key, open it.
//!
//! The layout is in [`crate::protocol`]. The construction:
//! - **Key.** Each sender draws a random 32-byte sender key per key epoch
//!   ([`crate::keys`]) and shares it sealed to each participant. The AEAD
//!   key of a frame is `blake3::derive_key("tincan voice frame key v1",
//!   sender key || key id)`, so the same secret under two key ids gives
//!   unrelated keys.
//! - **Nonce.** 12 bytes: 8 zero bytes and the frame's sequence number,
//!   big-endian. A key is one sender's for one epoch, and the sender never
//!   seals two frames with one sequence under a key (the session rotates
//!   the key instead when a sequence would repeat), so no nonce repeats
//!   under a key.
//! - **Associated data.** What the receiver acts on: version, flags,
//!   sequence, timestamp and key id (11 bytes). The channel and speaker
//!   indexes are left out: they are per-connection routing, rewritten by a
//!   relay, and the receiver names the sender from the link or the relay's
//!   speaker table, then needs that sender's key to open the frame; a frame
//!   relabelled with another speaker does not open.
//! - **Cipher.** ChaCha20-Poly1305 (RFC 8439) from the `chacha20poly1305`
//!   crate, sealing `[u16 redundant length] [redundant frame] [Opus
//!   packet]`. The tag is the first 8 of Poly1305's 16 bytes, as DAVE does:
//!   a forger's chance per try is 2^-64, and voice frames are short-lived.
//! - **Opening with a truncated tag.** The crate verifies only full tags,
//!   so opening recomputes the full tag with the crate itself: ChaCha20 is
//!   a keystream XOR, so sealing the ciphertext (in a scratch buffer) gives
//!   the candidate plaintext, and sealing that candidate gives back the
//!   ciphertext with the tag Poly1305 computes over it. The first 8 bytes
//!   of that tag are compared with the received ones in constant time
//!   (`subtle`), and the candidate is released only if they match; on a
//!   mismatch it is zeroed. Opening costs two passes of the cipher over a
//!   frame of 50 to 200 bytes; the bench `frame` measures it.

use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use subtle::ConstantTimeEq;
use zeroize::Zeroize;

use tincan_media::protocol::{HEADER_LEN, SEALED_VERSION, VoiceHeader, flags};

use crate::protocol::{MAX_SEALED_PLAINTEXT, SENDER_KEY_LEN, SealedFrame, TAG_LEN};

/// The AEAD key of one sender's key id. See the module documentation.
#[derive(Clone)]
pub struct FrameKey {
    key_id: u8,
    cipher: ChaCha20Poly1305,
}

impl std::fmt::Debug for FrameKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameKey")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl FrameKey {
    /// The frame key of `sender_key` under `key_id`.
    pub fn derive(sender_key: &[u8; SENDER_KEY_LEN], key_id: u8) -> Self {
        let mut input = [0u8; SENDER_KEY_LEN + 1];
        input[..SENDER_KEY_LEN].copy_from_slice(sender_key);
        input[SENDER_KEY_LEN] = key_id;
        let mut key = blake3::derive_key("tincan voice frame key v1", &input);
        input.zeroize();
        let cipher = ChaCha20Poly1305::new(&key.into());
        key.zeroize();
        FrameKey { key_id, cipher }
    }

    /// The key id frames sealed with it carry.
    pub fn key_id(&self) -> u8 {
        self.key_id
    }
}

/// A frame to seal, borrowed from the encoder's packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlainFrame<'a> {
    /// The frame's sequence number.
    pub sequence: u32,
    /// Its media time in 48 kHz samples.
    pub timestamp: u32,
    /// The last frame of a talk spurt.
    pub end_of_spurt: bool,
    /// The Opus packet.
    pub payload: &'a [u8],
    /// The previous frame's Opus packet, while redundancy is on.
    pub redundant: Option<&'a [u8]>,
}

/// A frame that opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenedFrame {
    /// The header as received (channel and speaker unauthenticated).
    pub header: VoiceHeader,
    /// The Opus packet.
    pub payload: Vec<u8>,
    /// The previous frame's Opus packet, if the sender included it.
    pub redundant: Option<Vec<u8>>,
}

impl OpenedFrame {
    /// Whether the sender marked it as the end of a talk spurt.
    pub fn end_of_spurt(&self) -> bool {
        self.header.flags & flags::END_OF_SPURT != 0
    }
}

/// A frame could not be sealed or opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The frame would not fit in one datagram: lower the bitrate or the
    /// frame duration, or turn redundancy off.
    #[error(
        "a sealed voice frame of {len} bytes of plaintext is over the limit of {MAX_SEALED_PLAINTEXT}: lower the bitrate or frame duration, or turn redundancy off"
    )]
    TooLong {
        /// Plaintext bytes it would have.
        len: usize,
    },
    /// Sealed under another key id than the key tried.
    #[error("the frame is sealed under key id {found}, not {expected}")]
    WrongKeyId {
        /// The key id in the frame.
        found: u8,
        /// The key id of the key tried.
        expected: u8,
    },
    /// The tag does not match: altered, forged, or sealed with another key.
    #[error("the frame's tag does not verify: altered, forged or sealed with another key")]
    BadTag,
    /// It opened, but what it holds is not a frame (only a holder of the
    /// key could have written it: a buggy or hostile participant).
    #[error("the frame opened but its redundant frame runs past its end")]
    BadPlaintext,
}

fn nonce(sequence: u32) -> Nonce {
    let mut n = [0u8; 12];
    n[8..].copy_from_slice(&sequence.to_be_bytes());
    n.into()
}

fn aad(header: &VoiceHeader, key_id: u8) -> [u8; 11] {
    let q = header.sequence.to_be_bytes();
    let t = header.timestamp.to_be_bytes();
    [
        header.version,
        header.flags,
        q[0],
        q[1],
        q[2],
        q[3],
        t[0],
        t[1],
        t[2],
        t[3],
        key_id,
    ]
}

/// Seals `frame` with `key` and appends the datagram (speaker and channel
/// index 0: the caller rewrites the speaker for a relay) to `out`. On error
/// `out` is unchanged.
pub fn seal_frame(
    key: &FrameKey,
    frame: &PlainFrame<'_>,
    out: &mut Vec<u8>,
) -> Result<(), FrameError> {
    let plain_len = frame.redundant.map_or(0, |r| 2 + r.len()) + frame.payload.len();
    if plain_len > MAX_SEALED_PLAINTEXT {
        return Err(FrameError::TooLong { len: plain_len });
    }
    let mut bits = 0;
    if frame.redundant.is_some() {
        bits |= flags::REDUNDANT;
    }
    if frame.end_of_spurt {
        bits |= flags::END_OF_SPURT;
    }
    let header = VoiceHeader {
        version: SEALED_VERSION,
        flags: bits,
        channel: 0,
        speaker: 0,
        sequence: frame.sequence,
        timestamp: frame.timestamp,
    };
    let start = out.len();
    out.reserve(HEADER_LEN + 1 + plain_len + TAG_LEN);
    out.extend_from_slice(&header.to_bytes());
    out.push(key.key_id);
    let body = out.len();
    if let Some(r) = frame.redundant {
        // Under MAX_SEALED_PLAINTEXT, so within a u16.
        out.extend_from_slice(&(r.len() as u16).to_be_bytes());
        out.extend_from_slice(r);
    }
    out.extend_from_slice(frame.payload);
    let sealed = key.cipher.encrypt_inout_detached(
        &nonce(frame.sequence),
        &aad(&header, key.key_id),
        out[body..].as_mut().into(),
    );
    match sealed {
        Ok(tag) => {
            out.extend_from_slice(&tag[..TAG_LEN]);
            Ok(())
        }
        Err(_) => {
            out.truncate(start);
            Err(FrameError::TooLong { len: plain_len })
        }
    }
}

/// Opens a sealed frame with `key`. See the module documentation for how a
/// truncated tag is checked.
pub fn open_frame(key: &FrameKey, frame: &SealedFrame<'_>) -> Result<OpenedFrame, FrameError> {
    if frame.key_id != key.key_id {
        return Err(FrameError::WrongKeyId {
            found: frame.key_id,
            expected: key.key_id,
        });
    }
    let nonce = nonce(frame.header.sequence);
    let aad = aad(&frame.header, frame.key_id);
    let mut scratch = frame.ciphertext.to_vec();
    // Keystream XOR: the candidate plaintext (the tag of this pass is over
    // the plaintext and means nothing).
    if key
        .cipher
        .encrypt_inout_detached(&nonce, &aad, scratch.as_mut_slice().into())
        .is_err()
    {
        scratch.zeroize();
        return Err(FrameError::BadTag);
    }
    let mut plain = scratch.clone();
    // Sealing the candidate gives the ciphertext back and its real tag.
    let tag = match key
        .cipher
        .encrypt_inout_detached(&nonce, &aad, scratch.as_mut_slice().into())
    {
        Ok(tag) => tag,
        Err(_) => {
            plain.zeroize();
            return Err(FrameError::BadTag);
        }
    };
    if !bool::from(tag[..TAG_LEN].ct_eq(&frame.tag)) {
        plain.zeroize();
        return Err(FrameError::BadTag);
    }
    let (redundant, payload) = if frame.header.flags & flags::REDUNDANT != 0 {
        let Some((len, rest)) = plain.split_first_chunk::<2>() else {
            return Err(FrameError::BadPlaintext);
        };
        let len = usize::from(u16::from_be_bytes(*len));
        if len > rest.len() {
            return Err(FrameError::BadPlaintext);
        }
        let (r, p) = rest.split_at(len);
        (Some(r.to_vec()), p.to_vec())
    } else {
        (None, plain)
    };
    Ok(OpenedFrame {
        header: frame.header,
        payload,
        redundant,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tincan_media::protocol::set_speaker;

    fn key(seed: u8, id: u8) -> FrameKey {
        FrameKey::derive(&[seed; 32], id)
    }

    fn sealed(k: &FrameKey, redundant: Option<&[u8]>) -> Vec<u8> {
        let mut out = Vec::new();
        seal_frame(
            k,
            &PlainFrame {
                sequence: 77,
                timestamp: 77 * 480,
                end_of_spurt: true,
                payload: &[0x42; 60],
                redundant,
            },
            &mut out,
        )
        .unwrap();
        out
    }

    #[test]
    fn a_frame_round_trips_and_costs_nine_bytes() {
        let k = key(1, 3);
        for redundant in [None, Some(&[0x11u8; 40][..]), Some(&[][..])] {
            let bytes = sealed(&k, redundant);
            let plain_len = 60 + redundant.map_or(0, |r| r.len() + 2);
            assert_eq!(bytes.len(), HEADER_LEN + plain_len + 9);
            let f = SealedFrame::parse(&bytes).unwrap();
            let opened = open_frame(&k, &f).unwrap();
            assert_eq!(opened.payload, vec![0x42; 60]);
            assert_eq!(opened.redundant.as_deref(), redundant);
            assert_eq!(opened.header.sequence, 77);
            assert_eq!(opened.header.timestamp, 77 * 480);
            assert!(opened.end_of_spurt());
            assert_ne!(
                &bytes[HEADER_LEN + 1..HEADER_LEN + 61],
                &[0x42; 60][..],
                "not sealed"
            );
        }
    }

    #[test]
    fn any_altered_byte_but_the_routing_indexes_fails_to_open() {
        let k = key(1, 3);
        let bytes = sealed(&k, Some(&[9; 20]));
        for i in 0..bytes.len() {
            let mut t = bytes.clone();
            t[i] ^= 0x01;
            let outcome = SealedFrame::parse(&t).map(|f| open_frame(&k, &f));
            if i == 2 || i == 3 || i == 4 {
                // channel and speaker: routing, rewritten by relays.
                assert!(matches!(outcome, Ok(Ok(_))), "byte {i}");
            } else {
                assert!(
                    !matches!(outcome, Ok(Ok(_))),
                    "byte {i} altered and still opened"
                );
            }
        }
        let mut relabelled = bytes.clone();
        assert!(set_speaker(&mut relabelled, 12));
        let f = SealedFrame::parse(&relabelled).unwrap();
        assert_eq!(f.header.speaker, 12);
        assert!(open_frame(&k, &f).is_ok());
    }

    #[test]
    fn the_wrong_key_or_key_id_or_header_does_not_open() {
        let k = key(1, 3);
        let bytes = sealed(&k, None);
        let f = SealedFrame::parse(&bytes).unwrap();
        assert_eq!(open_frame(&key(2, 3), &f), Err(FrameError::BadTag));
        assert_eq!(
            open_frame(&key(1, 4), &f),
            Err(FrameError::WrongKeyId {
                found: 3,
                expected: 4
            })
        );
        // The same secret under another id is another key.
        let mut other_id = bytes.clone();
        other_id[HEADER_LEN] = 4;
        let f = SealedFrame::parse(&other_id).unwrap();
        assert_eq!(open_frame(&key(1, 4), &f), Err(FrameError::BadTag));
        // A header moved onto another frame's body (sequence changed).
        let mut moved = bytes.clone();
        moved[5..9].copy_from_slice(&78u32.to_be_bytes());
        let f = SealedFrame::parse(&moved).unwrap();
        assert_eq!(open_frame(&k, &f), Err(FrameError::BadTag));
        // A forged frame of random bytes.
        let mut forged = bytes.clone();
        for (i, b) in forged[HEADER_LEN + 1..].iter_mut().enumerate() {
            *b = (i * 31) as u8;
        }
        let f = SealedFrame::parse(&forged).unwrap();
        assert_eq!(open_frame(&k, &f), Err(FrameError::BadTag));
    }

    #[test]
    fn an_oversized_frame_is_refused_and_the_buffer_left_alone() {
        let k = key(1, 0);
        let mut out = vec![1, 2, 3];
        let big = vec![0u8; MAX_SEALED_PLAINTEXT + 1];
        let r = seal_frame(
            &k,
            &PlainFrame {
                sequence: 1,
                timestamp: 0,
                end_of_spurt: false,
                payload: &big,
                redundant: None,
            },
            &mut out,
        );
        assert!(matches!(r, Err(FrameError::TooLong { .. })));
        assert_eq!(out, vec![1, 2, 3]);
        let fits = vec![0u8; MAX_SEALED_PLAINTEXT];
        seal_frame(
            &k,
            &PlainFrame {
                sequence: 1,
                timestamp: 0,
                end_of_spurt: false,
                payload: &fits,
                redundant: None,
            },
            &mut out,
        )
        .unwrap();
        assert_eq!(out.len(), 3 + tincan_media::protocol::MAX_DATAGRAM_LEN);
    }
}
