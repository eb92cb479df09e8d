//! The control stream of a voice connection: the reliable side channel on
//! which the two ends agree who speaks and where before any datagram flows.
//!
//! The dialler opens one bidirectional stream and sends a [`Request`]: to
//! join a voice channel ([`Hello`]), answered by [`Welcome`] or [`Refused`],
//! or only to learn the address it is seen from ([`Request::Observe`]: a
//! node asks a relay or bootstrap node for its voice socket's public address
//! before punching). After a welcome either side may
//! send [`Update`]s (a relay announces who holds which speaker index). Each
//! message is a big-endian `u32` length and then that many bytes of postcard;
//! a message longer than its reader's limit is refused without reading it,
//! so a peer cannot make us buffer more than we chose.
//!
//! Datagrams carry small indexes instead of ids (see [`crate::protocol`]);
//! this stream is where they get their meaning:
//! - between two nodes (direct or hole-punched), the connection itself names
//!   the speaker (TLS proves the node, the [`Hello`]'s binding names its
//!   user), so the speaker index is always 0 and the channel index is 0 for
//!   the one channel named in the [`Hello`];
//! - through a relay, the relay hands each connection its own speaker index
//!   in the [`Welcome`] and tells every member which user holds which index.
//!
//! After the handshake the stream carries, in each direction:
//! - between two nodes: [`LinkMessage`]s, the voice signals (presence, key
//!   shares) each end would also gossip, so a link keeps working when the
//!   mesh loses messages between the two;
//! - from a relay to a member: [`Update`]s; from a member to a relay:
//!   [`MemberMessage`]s, the signed records that show the relay a speaker
//!   is no longer admitted ([`Evidence`]).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use tincan_core::{ChannelId, EpochToken, NodeBinding, ProofItem, RoomId, UserId};

/// Largest control message a node reads from a peer. A [`Hello`] to a relay
/// carries the room's records that prove membership (each at most 16 KiB,
/// a few of them), so this leaves room for a generous proof and no more.
pub const MAX_CONTROL_MESSAGE: usize = 256 * 1024;

/// Most records a membership proof may carry.
pub const MAX_PROOF_RECORDS: usize = 16;

/// What the dialler says first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The room whose voice this connection carries.
    pub room: RoomId,
    /// The voice channel in that room.
    pub channel: ChannelId,
    /// "This node speaks for that user", signed by the user; the acceptor
    /// checks that it names the node TLS proved.
    pub binding: NodeBinding,
    /// For a relay, which has no copy of the room: what proves the user may
    /// be in the channel (`tincan_store::Store::membership_proof`). For an
    /// open room the signed records of the room, the user's membership and
    /// the channel; for an invite-only room the room record, the owner's
    /// grant of the current epoch and that epoch's relay token
    /// ([`tincan_core::relay_proof`]). Empty between two nodes, which
    /// check their own store.
    pub proof: Vec<ProofItem>,
}

/// The acceptor's yes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// The dialler's address as the acceptor sees it: behind a NAT this is
    /// the public (reflexive) address of the dialler's voice socket, which
    /// is what a peer must punch towards.
    pub observed: SocketAddr,
    /// The speaker index the dialler must write in its datagrams.
    pub speaker: u16,
    /// Who already holds which speaker index (relay only; empty otherwise).
    pub speakers: Vec<SpeakerEntry>,
}

/// The acceptor's no, in words for the user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refused {
    /// Why.
    pub reason: String,
}

/// One speaker index's owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpeakerEntry {
    /// The index in datagrams.
    pub speaker: u16,
    /// The user who speaks with it.
    pub user: UserId,
}

/// Later news on an established connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Update {
    /// A speaker index now belongs to this user.
    SpeakerJoined(SpeakerEntry),
    /// The user with this index left.
    SpeakerLeft(u16),
}

/// What two linked nodes send each other on the control stream after the
/// handshake.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LinkMessage {
    /// A voice signal (`tincan_voice::protocol::VoiceSignal` bytes), as the
    /// sender publishes it on the room's voice topic: TLS proves who sent
    /// it, as gossipsub's signature does on the mesh.
    Signal(Vec<u8>),
}

/// Largest [`LinkMessage`] a node reads: a voice signal is at most 16 KiB.
pub const MAX_LINK_MESSAGE: usize = 17 * 1024;

/// Most records one [`Evidence`] message may carry: a user's membership
/// history in a room is at most a few dozen records, and the room's and
/// the channel's records add two.
pub const MAX_EVIDENCE_RECORDS: usize = 32;

/// Largest record in evidence: records are at most 16 KiB on the wire.
pub const MAX_EVIDENCE_RECORD_LEN: usize = 16 * 1024;

/// Largest [`MemberMessage`] a relay reads.
pub const MAX_MEMBER_MESSAGE: usize = 64 * 1024;

/// Signed records that show a relay that a user in its speaker table may no
/// longer be in the channel: the owner's kick or ban, the user's own leave,
/// a newer channel record whose permissions leave them out, the channel's
/// or the room's deletion. Each is the postcard bytes of a
/// `SignedRecord`, parents first (room, memberships, channel).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    /// The records.
    pub records: Vec<Vec<u8>>,
}

/// What a member sends a relay on the control stream after its welcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum MemberMessage {
    /// Records the member's own gate read as refusing someone the relay
    /// still forwards to: the relay applies them and runs its gate again.
    /// In an invite-only room, the owner's newer `KeyGrant`.
    Evidence(Evidence),
    /// In an invite-only room, the relay token of a newer epoch
    /// (`tincan_store::Store::relay_token`): a member admitted with an
    /// older epoch's token keeps its place by showing it within
    /// a short grace after the relay learns of the newer epoch.
    Token(EpochToken),
}

/// Why a member message is not one a relay takes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MemberMessageError {
    /// Longer than [`MAX_MEMBER_MESSAGE`].
    #[error("a member message of {0} bytes, over the limit of {MAX_MEMBER_MESSAGE}")]
    TooLong(usize),
    /// Not a member message.
    #[error("not a member message: {0}")]
    Malformed(#[source] postcard::Error),
    /// Bytes after its end.
    #[error("a member message with {0} bytes after its end")]
    Trailing(usize),
    /// More records than [`MAX_EVIDENCE_RECORDS`].
    #[error("evidence of {0} records, over the limit of {MAX_EVIDENCE_RECORDS}")]
    TooManyRecords(usize),
    /// A record longer than [`MAX_EVIDENCE_RECORD_LEN`], or empty.
    #[error("an evidence record of {0} bytes (1 to {MAX_EVIDENCE_RECORD_LEN} allowed)")]
    BadRecord(usize),
}

impl MemberMessage {
    /// The bytes of one message (without the length prefix
    /// [`write_message`] adds).
    pub fn encode(&self) -> Vec<u8> {
        // Serialising plain data into a Vec cannot fail.
        postcard::to_allocvec(self).unwrap_or_default()
    }

    /// Decodes one message and checks its limits: what a relay does with
    /// what a member sends. Never panics.
    pub fn decode(bytes: &[u8]) -> Result<Self, MemberMessageError> {
        if bytes.len() > MAX_MEMBER_MESSAGE {
            return Err(MemberMessageError::TooLong(bytes.len()));
        }
        let (message, rest): (MemberMessage, &[u8]) =
            postcard::take_from_bytes(bytes).map_err(MemberMessageError::Malformed)?;
        if !rest.is_empty() {
            return Err(MemberMessageError::Trailing(rest.len()));
        }
        match &message {
            MemberMessage::Evidence(e) => {
                if e.records.len() > MAX_EVIDENCE_RECORDS {
                    return Err(MemberMessageError::TooManyRecords(e.records.len()));
                }
                if let Some(r) = e
                    .records
                    .iter()
                    .find(|r| r.is_empty() || r.len() > MAX_EVIDENCE_RECORD_LEN)
                {
                    return Err(MemberMessageError::BadRecord(r.len()));
                }
            }
            MemberMessage::Token(_) => {}
        }
        Ok(message)
    }
}

/// The dialler's first message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Join a voice channel.
    Join(Hello),
    /// Only tell me the address you see me at; the acceptor answers
    /// [`Answer::Observed`] and the dialler closes the connection.
    Observe,
}

/// The acceptor's answer to a [`Request`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Answer {
    /// Accepted.
    Welcome(Welcome),
    /// Refused; the acceptor closes the connection after sending it.
    Refused(Refused),
    /// The dialler's address as the acceptor sees it.
    Observed(SocketAddr),
}

/// A control message could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// The stream failed or ended early.
    #[error("the voice control stream broke: {0}")]
    Io(#[from] std::io::Error),
    /// The peer announced a message larger than we accept.
    #[error("the peer sent a control message of {len} bytes, over the limit of {limit}")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// Our limit.
        limit: usize,
    },
    /// The bytes are not a message of the expected kind.
    #[error("the peer sent a malformed control message: {0}")]
    Malformed(#[from] postcard::Error),
}

/// Writes one length-prefixed message.
pub async fn write_message<T: Serialize, W: tokio::io::AsyncWrite + Unpin>(
    send: &mut W,
    message: &T,
) -> Result<(), ControlError> {
    use tokio::io::AsyncWriteExt;
    let bytes = postcard::to_allocvec(message)?;
    let len = u32::try_from(bytes.len()).map_err(|_| ControlError::TooLarge {
        len: bytes.len(),
        limit: u32::MAX as usize,
    })?;
    send.write_all(&len.to_be_bytes()).await?;
    send.write_all(&bytes).await?;
    send.flush().await?;
    Ok(())
}

/// Reads one length-prefixed message's bytes, at most `limit` of them,
/// without decoding them (for messages with their own strict decoder, such
/// as [`MemberMessage::decode`]).
pub async fn read_frame<R: tokio::io::AsyncRead + Unpin>(
    recv: &mut R,
    limit: usize,
) -> Result<Vec<u8>, ControlError> {
    use tokio::io::AsyncReadExt;
    let mut len = [0u8; 4];
    recv.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > limit {
        return Err(ControlError::TooLarge { len, limit });
    }
    let mut bytes = vec![0u8; len];
    recv.read_exact(&mut bytes).await?;
    Ok(bytes)
}

/// Writes one length-prefixed frame of bytes already encoded.
pub async fn write_frame<W: tokio::io::AsyncWrite + Unpin>(
    send: &mut W,
    bytes: &[u8],
) -> Result<(), ControlError> {
    use tokio::io::AsyncWriteExt;
    let len = u32::try_from(bytes.len()).map_err(|_| ControlError::TooLarge {
        len: bytes.len(),
        limit: u32::MAX as usize,
    })?;
    send.write_all(&len.to_be_bytes()).await?;
    send.write_all(bytes).await?;
    send.flush().await?;
    Ok(())
}

/// Reads one length-prefixed message of at most `limit` bytes.
pub async fn read_message<T: serde::de::DeserializeOwned, R: tokio::io::AsyncRead + Unpin>(
    recv: &mut R,
    limit: usize,
) -> Result<T, ControlError> {
    use tokio::io::AsyncReadExt;
    let mut len = [0u8; 4];
    recv.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > limit {
        return Err(ControlError::TooLarge { len, limit });
    }
    let mut bytes = vec![0u8; len];
    recv.read_exact(&mut bytes).await?;
    Ok(postcard::from_bytes(&bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tincan_core::{Hlc, NodeKey, UserKey};

    fn hello() -> Hello {
        let user = UserKey::from_seed(&[1; 32]);
        let node = NodeKey::from_seed(&[2; 32]);
        Hello {
            room: RoomId([3; 16]),
            channel: ChannelId([4; 16]),
            binding: NodeBinding::new(&user, node.id(), Hlc::new(5, 0)),
            proof: vec![
                ProofItem::Record(vec![6; 100]),
                ProofItem::Token(EpochToken {
                    epoch: 3,
                    token: [7; 32],
                }),
            ],
        }
    }

    #[tokio::test]
    async fn messages_round_trip() {
        let mut buf = Vec::new();
        write_message(&mut buf, &Request::Join(hello()))
            .await
            .unwrap();
        let back: Request = read_message(&mut buf.as_slice(), MAX_CONTROL_MESSAGE)
            .await
            .unwrap();
        let Request::Join(back) = back else {
            panic!("not a join: {back:?}")
        };
        assert_eq!(back, hello());
        assert!(back.binding.verify().is_ok());
    }

    #[tokio::test]
    async fn member_messages_round_trip_and_their_limits_hold() {
        let ok = MemberMessage::Evidence(Evidence {
            records: vec![vec![1; 10], vec![2; MAX_EVIDENCE_RECORD_LEN]],
        });
        let bytes = ok.encode();
        assert_eq!(MemberMessage::decode(&bytes).unwrap(), ok);
        let token = MemberMessage::Token(EpochToken {
            epoch: 2,
            token: [9; 32],
        });
        assert_eq!(MemberMessage::decode(&token.encode()).unwrap(), token);
        let mut framed = Vec::new();
        write_frame(&mut framed, &bytes).await.unwrap();
        let back = read_frame(&mut framed.as_slice(), MAX_MEMBER_MESSAGE)
            .await
            .unwrap();
        assert_eq!(back, bytes);
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(matches!(
            MemberMessage::decode(&trailing),
            Err(MemberMessageError::Trailing(1))
        ));
        let many = MemberMessage::Evidence(Evidence {
            records: vec![vec![1]; MAX_EVIDENCE_RECORDS + 1],
        });
        assert!(matches!(
            MemberMessage::decode(&many.encode()),
            Err(MemberMessageError::TooManyRecords(_))
        ));
        let empty = MemberMessage::Evidence(Evidence {
            records: vec![Vec::new()],
        });
        assert!(matches!(
            MemberMessage::decode(&empty.encode()),
            Err(MemberMessageError::BadRecord(0))
        ));
        let huge = MemberMessage::Evidence(Evidence {
            records: vec![vec![0; MAX_EVIDENCE_RECORD_LEN + 1]],
        });
        assert!(matches!(
            MemberMessage::decode(&huge.encode()),
            Err(MemberMessageError::BadRecord(_))
        ));
        assert!(MemberMessage::decode(&[0xff; 70_000]).is_err());
        for len in 0..64usize {
            let junk: Vec<u8> = (0..len).map(|i| (i * 31 + 7) as u8).collect();
            let _ = MemberMessage::decode(&junk);
        }
    }

    #[tokio::test]
    async fn oversized_and_malformed_messages_are_refused() {
        let mut buf = Vec::new();
        write_message(&mut buf, &hello()).await.unwrap();
        let err = read_message::<Hello, _>(&mut buf.as_slice(), 10).await;
        assert!(matches!(err, Err(ControlError::TooLarge { limit: 10, .. })));

        let mut junk = 3u32.to_be_bytes().to_vec();
        junk.extend_from_slice(&[0xff, 0xff, 0xff]);
        let err = read_message::<Answer, _>(&mut junk.as_slice(), 100).await;
        assert!(matches!(err, Err(ControlError::Malformed(_))));

        let truncated = 50u32.to_be_bytes();
        let err = read_message::<Answer, _>(&mut truncated.as_slice(), 100).await;
        assert!(matches!(err, Err(ControlError::Io(_))));
    }
}
