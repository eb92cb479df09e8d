//! The voice session's own wire formats: the signals it publishes on the
//! room's voice topic ([`VoiceSignal`]: a presence, or a [`KeyShare`]) and
//! the layout of an end-to-end sealed frame ([`SealedFrame`]; the
//! cryptography is in [`crate::frame`]).
//!
//! Every decoder here is length-limited before it allocates, strict about
//! what it accepts, and never panics: the fuzz targets `voice_key_share`
//! and `voice_sealed_frame` run them on arbitrary bytes.
//!
//! A signal is one version byte ([`SIGNAL_VERSION`]) and then the postcard
//! encoding of a [`VoiceSignal`], at most [`MAX_SIGNAL_LEN`] bytes in all.
//!
//! A sealed frame:
//! ```text
//! +---------------------------------------------+
//! | 13-byte header (tincan_media::protocol),    |
//! | version = SEALED_VERSION                    |
//! +--------+------------------------------------+
//! | key id |  ciphertext of: [u16 length of the |
//! |   u8   |  redundant frame, if REDUNDANT]    |
//! |        |  [redundant frame] [Opus packet]   |
//! +--------+------------------------------------+
//! |       tag: 8 bytes (truncated Poly1305)     |
//! +---------------------------------------------+
//! ```

use tincan_core::seal::{ENVELOPE_OVERHEAD, Envelopes, HINT_LEN};
use tincan_core::{ChannelId, NodeId, RoomId};
use tincan_media::presence::{MAX_CANDIDATES, Presence};
use tincan_media::protocol::{
    HEADER_LEN, MAX_DATAGRAM_LEN, ParseError, SEALED_MIN_BODY, SEALED_VERSION, VoiceHeader,
};

/// The version byte every signal starts with.
pub const SIGNAL_VERSION: u8 = 1;

/// The longest signal we write or read. A key share to
/// [`MAX_KEY_RECIPIENTS`] participants is about 7.5 KiB; gossipsub carries
/// up to 64 KiB, so this leaves room and refuses anything larger unread.
pub const MAX_SIGNAL_LEN: usize = 16 * 1024;

/// Most envelopes in one key share: the planner's largest channel and some.
pub const MAX_KEY_RECIPIENTS: usize = 128;

/// Bytes of a sender key.
pub const SENDER_KEY_LEN: usize = 32;

/// Bytes of the truncated tag at the end of a sealed frame.
pub const TAG_LEN: usize = 8;

/// Bytes a sealed frame adds to a plaintext one: the key id and the tag.
pub const SEALED_OVERHEAD: usize = 1 + TAG_LEN;

const _: () = assert!(SEALED_OVERHEAD == SEALED_MIN_BODY);

/// "Here is my sender key for this channel": the key, sealed to each
/// admitted participant's node key.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeyShare {
    /// The room.
    pub room: RoomId,
    /// The voice channel.
    pub channel: ChannelId,
    /// The key id the sender writes in its frames with this key.
    pub key_id: u8,
    /// Counts the sender's keys in this session, from 0; a receiver takes
    /// only a higher generation than the one it has, so a replayed share
    /// cannot bring back an old key.
    pub generation: u32,
    /// The [`SENDER_KEY_LEN`]-byte key, sealed with
    /// `tincan_core::seal::seal_to` under [`key_share_context`].
    pub envelopes: Envelopes,
}

/// What a session publishes on the room's voice topic.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum VoiceSignal {
    /// "My user is in this channel, reach me here" (or has left it).
    Presence(Presence),
    /// A sender key for the channel's participants.
    KeyShare(KeyShare),
}

/// Why bytes are not a signal we accept.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignalError {
    /// Longer than [`MAX_SIGNAL_LEN`].
    #[error("voice signal of {len} bytes is over the limit of {MAX_SIGNAL_LEN}")]
    TooLong {
        /// Its length.
        len: usize,
    },
    /// Another version than [`SIGNAL_VERSION`]: the sender runs another
    /// tincan; one of the two needs updating.
    #[error(
        "voice signal version {0:?} is not supported (this node speaks {SIGNAL_VERSION}): update tincan"
    )]
    UnknownVersion(Option<u8>),
    /// Not a signal.
    #[error("not a voice signal: {0}")]
    Malformed(#[source] postcard::Error),
    /// Bytes after the signal.
    #[error("a voice signal with {0} bytes after its end")]
    Trailing(usize),
    /// A presence with more candidates than allowed.
    #[error("a voice presence with {0} candidates, over the limit of {MAX_CANDIDATES}")]
    TooManyCandidates(usize),
    /// A key share to more participants than allowed.
    #[error("a key share with {0} envelopes, over the limit of {MAX_KEY_RECIPIENTS}")]
    TooManyEnvelopes(usize),
    /// An envelope of the wrong size for a sender key.
    #[error("a key share envelope of {0} bytes; a sealed sender key has {SEALED_KEY_LEN}")]
    BadEnvelope(usize),
}

/// Bytes of one sealed sender key in an envelope.
pub const SEALED_KEY_LEN: usize = SENDER_KEY_LEN + ENVELOPE_OVERHEAD;

impl VoiceSignal {
    /// The bytes to publish, or an error if they would be over
    /// [`MAX_SIGNAL_LEN`] (a key share to too many participants).
    pub fn encode(&self) -> Result<Vec<u8>, SignalError> {
        let mut out = vec![SIGNAL_VERSION];
        // Serialising plain data into a Vec cannot fail.
        out.extend(postcard::to_allocvec(self).unwrap_or_default());
        if out.len() > MAX_SIGNAL_LEN {
            return Err(SignalError::TooLong { len: out.len() });
        }
        Ok(out)
    }

    /// Decodes and checks a signal's form (not its meaning: the session
    /// checks who sent it and whether the gate admits them).
    pub fn decode(bytes: &[u8]) -> Result<Self, SignalError> {
        if bytes.len() > MAX_SIGNAL_LEN {
            return Err(SignalError::TooLong { len: bytes.len() });
        }
        match bytes.split_first() {
            Some((&SIGNAL_VERSION, body)) => {
                let (signal, rest): (VoiceSignal, &[u8]) =
                    postcard::take_from_bytes(body).map_err(SignalError::Malformed)?;
                if !rest.is_empty() {
                    return Err(SignalError::Trailing(rest.len()));
                }
                signal.check()?;
                Ok(signal)
            }
            other => Err(SignalError::UnknownVersion(other.map(|(v, _)| *v))),
        }
    }

    fn check(&self) -> Result<(), SignalError> {
        match self {
            VoiceSignal::Presence(p) if p.candidates.len() > MAX_CANDIDATES => {
                Err(SignalError::TooManyCandidates(p.candidates.len()))
            }
            VoiceSignal::Presence(_) => Ok(()),
            VoiceSignal::KeyShare(k) => {
                if k.envelopes.entries.len() > MAX_KEY_RECIPIENTS {
                    return Err(SignalError::TooManyEnvelopes(k.envelopes.entries.len()));
                }
                match k
                    .envelopes
                    .entries
                    .iter()
                    .find(|e| e.sealed.len() != SEALED_KEY_LEN)
                {
                    Some(e) => Err(SignalError::BadEnvelope(e.sealed.len())),
                    None => Ok(()),
                }
            }
        }
    }
}

/// What a key share's envelopes are bound to: the room, channel, sending
/// node, key id and generation. An envelope moved into another share (or
/// another channel's, or claimed by another sender) does not open.
pub fn key_share_context(
    room: &RoomId,
    channel: &ChannelId,
    sender: &NodeId,
    key_id: u8,
    generation: u32,
) -> Vec<u8> {
    let mut c = Vec::with_capacity(24 + 16 + 16 + 32 + 5);
    c.extend_from_slice(b"tincan voice key share v1");
    c.extend_from_slice(&room.0);
    c.extend_from_slice(&channel.0);
    c.extend_from_slice(&sender.0);
    c.push(key_id);
    c.extend_from_slice(&generation.to_be_bytes());
    c
}

/// An envelope's size on the wire, for budgets: hint, sealed key, framing.
pub const ENVELOPE_WIRE_LEN: usize = HINT_LEN + SEALED_KEY_LEN + 2;

/// A sealed frame borrowed from a received datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealedFrame<'a> {
    /// The header (version [`SEALED_VERSION`]).
    pub header: VoiceHeader,
    /// Which of the sender's keys sealed it.
    pub key_id: u8,
    /// The ciphertext.
    pub ciphertext: &'a [u8],
    /// The truncated tag.
    pub tag: [u8; TAG_LEN],
}

impl<'a> SealedFrame<'a> {
    /// Splits a received datagram into a sealed frame's parts. Never
    /// panics; anything but version [`SEALED_VERSION`] is refused.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ParseError> {
        let (header, body) = VoiceHeader::parse(bytes)?;
        if header.version != SEALED_VERSION {
            return Err(ParseError::UnknownVersion {
                version: header.version,
            });
        }
        let Some((&key_id, rest)) = body.split_first() else {
            return Err(ParseError::TooShort { len: bytes.len() });
        };
        let Some((ciphertext, tag)) = rest.split_last_chunk::<TAG_LEN>() else {
            return Err(ParseError::TooShort { len: bytes.len() });
        };
        Ok(SealedFrame {
            header,
            key_id,
            ciphertext,
            tag: *tag,
        })
    }

    /// The length this frame has on the wire.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + SEALED_OVERHEAD + self.ciphertext.len()
    }
}

/// The longest plaintext (redundancy length, redundant frame and Opus
/// packet) a sealed frame can carry within the datagram limit.
pub const MAX_SEALED_PLAINTEXT: usize = MAX_DATAGRAM_LEN - HEADER_LEN - SEALED_OVERHEAD;

#[cfg(test)]
mod tests {
    use super::*;
    use tincan_core::seal::Envelope;
    use tincan_core::{Hlc, NodeBinding, NodeKey, UserKey};
    use tincan_media::presence::{Candidate, CandidateKind};

    fn share(n: usize) -> VoiceSignal {
        VoiceSignal::KeyShare(KeyShare {
            room: RoomId([1; 16]),
            channel: ChannelId([2; 16]),
            key_id: 3,
            generation: 4,
            envelopes: Envelopes {
                ephemeral: [5; 32],
                entries: vec![
                    Envelope {
                        hint: [6; HINT_LEN],
                        sealed: vec![7; SEALED_KEY_LEN],
                    };
                    n
                ],
            },
        })
    }

    #[test]
    fn signals_round_trip_and_their_limits_hold() {
        let presence = VoiceSignal::Presence(Presence {
            binding: NodeBinding::new(
                &UserKey::from_seed(&[1; 32]),
                NodeKey::from_seed(&[2; 32]).id(),
                Hlc::new(1, 0),
            ),
            room: RoomId([1; 16]),
            channel: Some(ChannelId([2; 16])),
            candidates: vec![
                Candidate {
                    addr: "10.0.0.1:4433".parse().unwrap(),
                    kind: CandidateKind::Host,
                };
                MAX_CANDIDATES
            ],
            relayed: false,
            sent_ms: 9,
        });
        for s in [presence.clone(), share(0), share(MAX_KEY_RECIPIENTS)] {
            let bytes = s.encode().unwrap();
            assert!(bytes.len() <= MAX_SIGNAL_LEN);
            assert_eq!(VoiceSignal::decode(&bytes).unwrap(), s);
        }
        let full = share(MAX_KEY_RECIPIENTS).encode().unwrap();
        println!(
            "a key share to {MAX_KEY_RECIPIENTS} participants: {} bytes",
            full.len()
        );
        assert!(matches!(
            VoiceSignal::decode(&share(MAX_KEY_RECIPIENTS + 1).encode().unwrap()),
            Err(SignalError::TooManyEnvelopes(_))
        ));
        let mut bad = share(1);
        if let VoiceSignal::KeyShare(k) = &mut bad {
            k.envelopes.entries[0].sealed.pop();
        }
        assert!(matches!(
            VoiceSignal::decode(&bad.encode().unwrap()),
            Err(SignalError::BadEnvelope(47))
        ));
        let mut trailing = presence.encode().unwrap();
        trailing.push(0);
        assert!(matches!(
            VoiceSignal::decode(&trailing),
            Err(SignalError::Trailing(1))
        ));
        let mut v2 = presence.encode().unwrap();
        v2[0] = 2;
        assert!(matches!(
            VoiceSignal::decode(&v2),
            Err(SignalError::UnknownVersion(Some(2)))
        ));
        assert!(VoiceSignal::decode(&[]).is_err());
        assert!(matches!(
            VoiceSignal::decode(&vec![1; MAX_SIGNAL_LEN + 1]),
            Err(SignalError::TooLong { .. })
        ));
    }

    #[test]
    fn a_sealed_frame_splits_into_its_parts() {
        let mut bytes = VoiceHeader {
            version: SEALED_VERSION,
            flags: 0,
            channel: 0,
            speaker: 4,
            sequence: 5,
            timestamp: 6,
        }
        .to_bytes()
        .to_vec();
        bytes.push(9);
        bytes.extend_from_slice(&[1, 2, 3]);
        bytes.extend_from_slice(&[8; TAG_LEN]);
        let f = SealedFrame::parse(&bytes).unwrap();
        assert_eq!(
            (f.key_id, f.ciphertext, f.tag),
            (9, &[1, 2, 3][..], [8; TAG_LEN])
        );
        assert_eq!(f.encoded_len(), bytes.len());
        assert!(SealedFrame::parse(&bytes[..HEADER_LEN + SEALED_OVERHEAD - 1]).is_err());
        bytes[0] = 1;
        assert!(SealedFrame::parse(&bytes).is_err());
    }
}
