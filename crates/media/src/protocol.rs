//! The voice datagram: one Opus frame per QUIC datagram, behind a 13-byte
//! header.
//!
//! Build a [`VoiceDatagram`] and [`encode_into`](VoiceDatagram::encode_into) a
//! reused buffer to send; [`VoiceDatagram::parse`] borrows a received datagram
//! without copying it. Parsing never panics, and it is strict: anything it
//! accepts re-encodes to exactly the same bytes, so there is one wire form per
//! frame (the fuzz target `voice_datagram` checks both).
//!
//! ```text
//!  0        1        2        3        4
//! +--------+--------+--------+-----------------+
//! |version | flags  |channel |   speaker u16   |
//! +--------+--------+--------+-----------------+
//! |             sequence u32                   |
//! +--------------------------------------------+
//! |       timestamp u32 (48 kHz samples)       |
//! +--------------------------------------------+
//! | if REDUNDANT: length u16, then that many bytes: the previous frame
//! +--------------------------------------------+
//! | the Opus packet: the rest of the datagram  |
//! +--------------------------------------------+
//! ```
//!
//! Integers are big-endian. Why each field has its size:
//! - `channel` and `speaker` are indexes, not the 16-byte `ChannelId` and
//!   32-byte `UserId`: 46 bytes of ids would double a 10 ms frame of 40 to 80
//!   bytes. The index tables are agreed when the connection (or the relay's
//!   fan-out group) is set up, over the reliable control stream, where the
//!   peer's identity is already proven by TLS; a relay checks that the speaker
//!   index is the one it gave the sending connection, so members cannot speak
//!   in each other's name. 256 channels per room and 65 536 speakers per
//!   group are far beyond any voice room.
//! - `sequence` is a full u32, as `tincan_audio`'s `VoicePacket` carries it. A
//!   u16 would save two bytes but needs unwrapping against the last sequence
//!   seen, which is only unambiguous while gaps stay under 32 768 frames: five
//!   and a half minutes at 10 ms, shorter than a player who stays muted.
//! - `timestamp` counts 48 kHz samples (480 per 10 ms frame), u32 as in RTP.
//! - The Opus packet takes the rest of the datagram: QUIC keeps datagram
//!   boundaries, so only the optional redundant frame needs a length.

use thiserror::Error;

/// The plaintext wire format's version: [`VoiceDatagram`] writes it and is
/// the only one it reads.
pub const VERSION: u8 = 1;

/// The version of an end-to-end sealed frame (`tincan_voice::frame`): the
/// same 13-byte header, then a key id, the ciphertext and a truncated tag,
/// which only the channel's members can open. [`VoiceHeader::parse`] (what
/// a relay reads) accepts it; [`VoiceDatagram::parse`] does not.
pub const SEALED_VERSION: u8 = 2;

/// The fewest bytes after the header of a sealed frame: its key id and its
/// 8-byte tag.
pub const SEALED_MIN_BODY: usize = 9;

/// Bytes before the first payload byte when there is no redundant frame.
pub const HEADER_LEN: usize = 13;

/// The largest datagram we write or accept. quinn's `max_datagram_size` is
/// about 1 200 to 1 400 bytes depending on the path MTU; 1 200 fits every
/// path QUIC runs on (its minimum MTU), so a frame never fails to send
/// because of the path it happens to take.
pub const MAX_DATAGRAM_LEN: usize = 1200;

/// The flag bits of a voice datagram.
pub mod flags {
    /// A redundant copy of the previous frame precedes the Opus packet.
    pub const REDUNDANT: u8 = 0b0000_0001;
    /// The last frame of a talk spurt: the speaker's gate closes (VAD, push to
    /// talk released or DTX), so the receiver should not conceal the silence
    /// that follows as loss.
    pub const END_OF_SPURT: u8 = 0b0000_0010;
    /// Every flag this version knows. Any other bit is an error: a new flag
    /// comes with a new version, so old nodes never misread a frame.
    pub const KNOWN: u8 = REDUNDANT | END_OF_SPURT;
}

/// A voice frame to send.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct VoiceDatagram {
    /// The voice channel, as an index into the room's channel table agreed
    /// for this connection.
    pub channel: u8,
    /// The speaker, as the index agreed for this connection or relay group.
    pub speaker: u16,
    /// The frame's sequence number (`VoicePacket::sequence`).
    pub sequence: u32,
    /// The frame's media time in 48 kHz samples (`VoicePacket::timestamp`).
    pub timestamp: u32,
    /// The last frame of a talk spurt (see [`flags::END_OF_SPURT`]).
    pub end_of_spurt: bool,
    /// The Opus packet.
    pub payload: Vec<u8>,
    /// The previous frame's Opus packet, while redundancy is on.
    pub redundant: Option<Vec<u8>>,
}

/// A voice frame borrowed from a received datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VoiceDatagramRef<'a> {
    /// See [`VoiceDatagram::channel`].
    pub channel: u8,
    /// See [`VoiceDatagram::speaker`].
    pub speaker: u16,
    /// See [`VoiceDatagram::sequence`].
    pub sequence: u32,
    /// See [`VoiceDatagram::timestamp`].
    pub timestamp: u32,
    /// See [`VoiceDatagram::end_of_spurt`].
    pub end_of_spurt: bool,
    /// The Opus packet.
    pub payload: &'a [u8],
    /// The previous frame's Opus packet, if the sender included it.
    pub redundant: Option<&'a [u8]>,
}

/// Why received bytes are not a voice datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Error)]
#[non_exhaustive]
pub enum ParseError {
    /// Fewer bytes than the header needs.
    #[error("voice datagram of {len} bytes is shorter than the {HEADER_LEN}-byte header")]
    TooShort {
        /// The datagram's length.
        len: usize,
    },
    /// More bytes than any sender may write.
    #[error("voice datagram of {len} bytes exceeds the {MAX_DATAGRAM_LEN}-byte limit")]
    TooLong {
        /// The datagram's length.
        len: usize,
    },
    /// A version this node does not speak; the sender runs newer (or older)
    /// tincan than this node, and one of them needs updating.
    #[error(
        "voice datagram version {version} is not supported (this node speaks version {VERSION}): update tincan on both ends"
    )]
    UnknownVersion {
        /// The version byte received.
        version: u8,
    },
    /// Flag bits this version does not define.
    #[error("voice datagram has unknown flag bits {bits:#04x}")]
    UnknownFlags {
        /// The unknown bits.
        bits: u8,
    },
    /// The redundant frame's length runs past the end of the datagram.
    #[error(
        "voice datagram's redundant frame claims {claimed} bytes but only {available} follow the header"
    )]
    RedundantOverrun {
        /// The length the datagram claims.
        claimed: usize,
        /// The bytes left after the length field.
        available: usize,
    },
}

/// Why a frame cannot be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The frame would not fit in one datagram; lower the bitrate or the
    /// frame duration, or turn redundancy off.
    #[error(
        "voice frame of {len} bytes exceeds the {MAX_DATAGRAM_LEN}-byte datagram limit: lower the bitrate or frame duration, or turn redundancy off"
    )]
    TooLong {
        /// The encoded length it would have.
        len: usize,
    },
}

impl VoiceDatagram {
    /// Borrows this frame in its wire-ready form.
    pub fn as_ref(&self) -> VoiceDatagramRef<'_> {
        VoiceDatagramRef {
            channel: self.channel,
            speaker: self.speaker,
            sequence: self.sequence,
            timestamp: self.timestamp,
            end_of_spurt: self.end_of_spurt,
            payload: &self.payload,
            redundant: self.redundant.as_deref(),
        }
    }

    /// The encoded length.
    pub fn encoded_len(&self) -> usize {
        self.as_ref().encoded_len()
    }

    /// Appends the encoded frame to `buf`; reuse `buf` to send without
    /// allocating. On error `buf` is unchanged.
    pub fn encode_into(&self, buf: &mut Vec<u8>) -> Result<(), EncodeError> {
        self.as_ref().encode_into(buf)
    }

    /// The encoded frame in a new buffer.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        self.as_ref().encode()
    }

    /// Parses a received datagram without copying it.
    pub fn parse(bytes: &[u8]) -> Result<VoiceDatagramRef<'_>, ParseError> {
        VoiceDatagramRef::parse(bytes)
    }
}

/// The 13-byte header of either version, and what follows it unread: all a
/// relay needs to route a frame, whether or not it can read the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VoiceHeader {
    /// [`VERSION`] or [`SEALED_VERSION`].
    pub version: u8,
    /// The flag bits ([`flags`]).
    pub flags: u8,
    /// See [`VoiceDatagram::channel`].
    pub channel: u8,
    /// See [`VoiceDatagram::speaker`].
    pub speaker: u16,
    /// See [`VoiceDatagram::sequence`].
    pub sequence: u32,
    /// See [`VoiceDatagram::timestamp`].
    pub timestamp: u32,
}

impl VoiceHeader {
    /// Parses the header of a datagram of either version and returns it
    /// with the bytes after it. A plaintext datagram is checked whole (as
    /// [`VoiceDatagram::parse`] does); a sealed one must have at least
    /// [`SEALED_MIN_BODY`] bytes after the header. Never panics.
    pub fn parse(bytes: &[u8]) -> Result<(VoiceHeader, &[u8]), ParseError> {
        let len = bytes.len();
        if len > MAX_DATAGRAM_LEN {
            return Err(ParseError::TooLong { len });
        }
        let Some((header, rest)) = bytes.split_first_chunk::<HEADER_LEN>() else {
            return Err(ParseError::TooShort { len });
        };
        let [v, f, channel, s0, s1, q0, q1, q2, q3, t0, t1, t2, t3] = *header;
        let parsed = VoiceHeader {
            version: v,
            flags: f,
            channel,
            speaker: u16::from_be_bytes([s0, s1]),
            sequence: u32::from_be_bytes([q0, q1, q2, q3]),
            timestamp: u32::from_be_bytes([t0, t1, t2, t3]),
        };
        match v {
            VERSION => {
                VoiceDatagramRef::parse(bytes)?;
            }
            SEALED_VERSION => {
                let unknown = f & !flags::KNOWN;
                if unknown != 0 {
                    return Err(ParseError::UnknownFlags { bits: unknown });
                }
                if rest.len() < SEALED_MIN_BODY {
                    return Err(ParseError::TooShort { len });
                }
            }
            version => return Err(ParseError::UnknownVersion { version }),
        }
        Ok((parsed, rest))
    }

    /// The 13 header bytes.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let s = self.speaker.to_be_bytes();
        let q = self.sequence.to_be_bytes();
        let t = self.timestamp.to_be_bytes();
        [
            self.version,
            self.flags,
            self.channel,
            s[0],
            s[1],
            q[0],
            q[1],
            q[2],
            q[3],
            t[0],
            t[1],
            t[2],
            t[3],
        ]
    }
}

/// Rewrites the speaker index of an encoded datagram of either version in
/// place (a frame sealed once goes to direct links with index 0 and to the
/// relay with the index it gave us; the index is routing, not
/// authenticated). Returns false, changing nothing, if `bytes` is shorter
/// than a header.
pub fn set_speaker(bytes: &mut [u8], speaker: u16) -> bool {
    match bytes.get_mut(3..5) {
        Some(field) => {
            field.copy_from_slice(&speaker.to_be_bytes());
            true
        }
        None => false,
    }
}

impl<'a> VoiceDatagramRef<'a> {
    /// Parses a received datagram without copying it. Never panics.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ParseError> {
        let len = bytes.len();
        if len > MAX_DATAGRAM_LEN {
            return Err(ParseError::TooLong { len });
        }
        let Some((header, rest)) = bytes.split_first_chunk::<HEADER_LEN>() else {
            return Err(ParseError::TooShort { len });
        };
        let [
            version,
            flag_bits,
            channel,
            s0,
            s1,
            q0,
            q1,
            q2,
            q3,
            t0,
            t1,
            t2,
            t3,
        ] = *header;
        if version != VERSION {
            return Err(ParseError::UnknownVersion { version });
        }
        let unknown = flag_bits & !flags::KNOWN;
        if unknown != 0 {
            return Err(ParseError::UnknownFlags { bits: unknown });
        }
        let (redundant, payload) = if flag_bits & flags::REDUNDANT != 0 {
            let Some((&[l0, l1], rest)) = rest.split_first_chunk::<2>() else {
                return Err(ParseError::RedundantOverrun {
                    claimed: 2,
                    available: rest.len(),
                });
            };
            let claimed = usize::from(u16::from_be_bytes([l0, l1]));
            if claimed > rest.len() {
                return Err(ParseError::RedundantOverrun {
                    claimed,
                    available: rest.len(),
                });
            }
            let (redundant, payload) = rest.split_at(claimed);
            (Some(redundant), payload)
        } else {
            (None, rest)
        };
        Ok(Self {
            channel,
            speaker: u16::from_be_bytes([s0, s1]),
            sequence: u32::from_be_bytes([q0, q1, q2, q3]),
            timestamp: u32::from_be_bytes([t0, t1, t2, t3]),
            end_of_spurt: flag_bits & flags::END_OF_SPURT != 0,
            payload,
            redundant,
        })
    }

    /// The flags byte this frame is written with.
    pub fn flag_bits(&self) -> u8 {
        let mut bits = 0;
        if self.redundant.is_some() {
            bits |= flags::REDUNDANT;
        }
        if self.end_of_spurt {
            bits |= flags::END_OF_SPURT;
        }
        bits
    }

    /// The encoded length.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.redundant.map_or(0, |r| 2 + r.len()) + self.payload.len()
    }

    /// Appends the encoded frame to `buf`. On error `buf` is unchanged.
    pub fn encode_into(&self, buf: &mut Vec<u8>) -> Result<(), EncodeError> {
        let len = self.encoded_len();
        // The datagram limit also keeps the redundant length within its u16.
        if len > MAX_DATAGRAM_LEN {
            return Err(EncodeError::TooLong { len });
        }
        buf.reserve(len);
        buf.extend_from_slice(&[VERSION, self.flag_bits(), self.channel]);
        buf.extend_from_slice(&self.speaker.to_be_bytes());
        buf.extend_from_slice(&self.sequence.to_be_bytes());
        buf.extend_from_slice(&self.timestamp.to_be_bytes());
        if let Some(redundant) = self.redundant {
            let redundant_len = u16::try_from(redundant.len()).unwrap_or(u16::MAX);
            buf.extend_from_slice(&redundant_len.to_be_bytes());
            buf.extend_from_slice(redundant);
        }
        buf.extend_from_slice(self.payload);
        Ok(())
    }

    /// The encoded frame in a new buffer.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let mut buf = Vec::with_capacity(self.encoded_len());
        self.encode_into(&mut buf)?;
        Ok(buf)
    }

    /// Copies the frame out of the datagram.
    pub fn to_owned_datagram(&self) -> VoiceDatagram {
        VoiceDatagram {
            channel: self.channel,
            speaker: self.speaker,
            sequence: self.sequence,
            timestamp: self.timestamp,
            end_of_spurt: self.end_of_spurt,
            payload: self.payload.to_vec(),
            redundant: self.redundant.map(<[u8]>::to_vec),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_header_parses_for_both_versions_and_the_body_is_left_alone() {
        let plain = frame().encode().unwrap();
        let (h, rest) = VoiceHeader::parse(&plain).unwrap();
        assert_eq!((h.version, h.channel, h.speaker), (VERSION, 2, 0x0102));
        assert_eq!(h.to_bytes(), plain[..HEADER_LEN]);
        assert_eq!(rest, &plain[HEADER_LEN..]);
        let mut sealed = plain[..HEADER_LEN].to_vec();
        sealed[0] = SEALED_VERSION;
        sealed.extend_from_slice(&[7; SEALED_MIN_BODY]);
        let (h, rest) = VoiceHeader::parse(&sealed).unwrap();
        assert_eq!((h.version, rest.len()), (SEALED_VERSION, SEALED_MIN_BODY));
        assert!(
            VoiceDatagram::parse(&sealed).is_err(),
            "v1 readers refuse v2"
        );
        assert!(VoiceHeader::parse(&sealed[..sealed.len() - 1]).is_err());
        sealed[1] = 0x80;
        assert!(matches!(
            VoiceHeader::parse(&sealed),
            Err(ParseError::UnknownFlags { bits: 0x80 })
        ));
        sealed[0] = 3;
        assert!(matches!(
            VoiceHeader::parse(&sealed),
            Err(ParseError::UnknownVersion { version: 3 })
        ));
        let mut bytes = plain.clone();
        assert!(set_speaker(&mut bytes, 9));
        assert_eq!(VoiceDatagram::parse(&bytes).unwrap().speaker, 9);
        assert!(!set_speaker(&mut [0u8; 4], 9));
    }

    fn frame() -> VoiceDatagram {
        VoiceDatagram {
            channel: 2,
            speaker: 0x0102,
            sequence: 0x0304_0506,
            timestamp: 0x0708_090a,
            end_of_spurt: false,
            payload: vec![0xaa; 3],
            redundant: None,
        }
    }

    #[test]
    fn the_header_is_laid_out_as_documented() {
        let bytes = frame().encode().unwrap();
        assert_eq!(
            bytes,
            [1, 0, 2, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 0xaa, 0xaa, 0xaa]
        );
        let with_red = VoiceDatagram {
            end_of_spurt: true,
            redundant: Some(vec![0xbb; 2]),
            ..frame()
        };
        let bytes = with_red.encode().unwrap();
        assert_eq!(bytes[1], flags::REDUNDANT | flags::END_OF_SPURT);
        assert_eq!(&bytes[HEADER_LEN..], [0, 2, 0xbb, 0xbb, 0xaa, 0xaa, 0xaa]);
        assert_eq!(bytes.len(), with_red.encoded_len());
    }

    #[test]
    fn a_typical_10ms_frame_costs_13_bytes_of_header() {
        let f = VoiceDatagram {
            payload: vec![0; 60],
            ..frame()
        };
        assert_eq!(f.encode().unwrap().len(), 60 + 13);
    }

    #[test]
    fn parse_rejects_what_it_cannot_read() {
        let good = frame().encode().unwrap();
        assert_eq!(
            VoiceDatagram::parse(&good[..12]),
            Err(ParseError::TooShort { len: 12 })
        );
        let mut v2 = good.clone();
        v2[0] = 2;
        assert_eq!(
            VoiceDatagram::parse(&v2),
            Err(ParseError::UnknownVersion { version: 2 })
        );
        let mut odd_flags = good.clone();
        odd_flags[1] = 0x84;
        assert_eq!(
            VoiceDatagram::parse(&odd_flags),
            Err(ParseError::UnknownFlags { bits: 0x84 })
        );
        let mut overrun = good[..HEADER_LEN].to_vec();
        overrun[1] = flags::REDUNDANT;
        overrun.extend_from_slice(&[0, 5, 1, 2]);
        assert_eq!(
            VoiceDatagram::parse(&overrun),
            Err(ParseError::RedundantOverrun {
                claimed: 5,
                available: 2
            })
        );
        overrun.truncate(HEADER_LEN + 1);
        assert_eq!(
            VoiceDatagram::parse(&overrun),
            Err(ParseError::RedundantOverrun {
                claimed: 2,
                available: 1
            })
        );
        let huge = vec![1; MAX_DATAGRAM_LEN + 1];
        assert_eq!(
            VoiceDatagram::parse(&huge),
            Err(ParseError::TooLong {
                len: MAX_DATAGRAM_LEN + 1
            })
        );
    }

    #[test]
    fn an_oversized_frame_is_refused_and_the_buffer_left_alone() {
        let f = VoiceDatagram {
            payload: vec![0; MAX_DATAGRAM_LEN],
            ..frame()
        };
        let mut buf = vec![9];
        assert_eq!(
            f.encode_into(&mut buf),
            Err(EncodeError::TooLong {
                len: MAX_DATAGRAM_LEN + HEADER_LEN
            })
        );
        assert_eq!(buf, [9]);
        let fits = VoiceDatagram {
            payload: vec![0; MAX_DATAGRAM_LEN - HEADER_LEN],
            ..frame()
        };
        assert_eq!(fits.encode().unwrap().len(), MAX_DATAGRAM_LEN);
    }

    fn any_frame() -> impl Strategy<Value = VoiceDatagram> {
        (
            any::<u8>(),
            any::<u16>(),
            any::<u32>(),
            any::<u32>(),
            any::<bool>(),
            proptest::collection::vec(any::<u8>(), 0..600),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..500)),
        )
            .prop_map(
                |(channel, speaker, sequence, timestamp, end_of_spurt, payload, redundant)| {
                    VoiceDatagram {
                        channel,
                        speaker,
                        sequence,
                        timestamp,
                        end_of_spurt,
                        payload,
                        redundant,
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn encode_then_parse_round_trips(f in any_frame()) {
            let mut buf = vec![0xee];
            f.encode_into(&mut buf).unwrap();
            prop_assert_eq!(buf.len(), 1 + f.encoded_len());
            let parsed = VoiceDatagram::parse(&buf[1..]).unwrap();
            prop_assert_eq!(parsed, f.as_ref());
            prop_assert_eq!(parsed.to_owned_datagram(), f);
        }

        #[test]
        fn parse_never_panics_and_what_it_accepts_is_canonical(
            bytes in proptest::collection::vec(any::<u8>(), 0..1300),
            header in proptest::collection::vec(any::<u8>(), HEADER_LEN..HEADER_LEN + 3),
            valid_version in any::<bool>(),
        ) {
            // Arbitrary bytes are almost never version 1 with known flags; half
            // the cases get a plausible header so the accepting paths run too.
            let mut bytes = bytes;
            if valid_version {
                let mut h = header;
                h[0] = VERSION;
                h[1] &= flags::KNOWN;
                h.extend_from_slice(&bytes);
                bytes = h;
            }
            if let Ok(parsed) = VoiceDatagram::parse(&bytes) {
                prop_assert_eq!(parsed.encode().unwrap(), bytes);
            }
        }
    }
}
