//! Wire format of the catch-up sync protocol (`/tincan/sync/2`).
//!
//! One stream per request, as libp2p's request-response gives it: the
//! requester writes `length (u32, big-endian) | postcard(SyncRequest)`, the
//! responder answers `length | postcard(SyncResponse)`. Lengths are checked
//! before anything is allocated: a request may be at most
//! [`MAX_REQUEST_BYTES`], a response at most [`MAX_RESPONSE_BYTES`].
//!
//! Two kinds of exchange:
//! - `Reconcile`: range-based set reconciliation over the [`SyncItem`]s of one
//!   [`Scope`] (see [`crate::reconcile`] for the algorithm);
//! - `Fetch`: the records the requester found it lacks, by id.

use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use serde::{Deserialize, Serialize};
use tincan_core::seal::LocatorId;
use tincan_core::{RecordId, RoomId};

/// The protocol name on the wire.
/// Version 2: fetches name their scope, and a responder serves only records
/// in it.
pub const SYNC_PROTOCOL: StreamProtocol = StreamProtocol::new("/tincan/sync/2");
/// Largest request accepted, in bytes.
pub const MAX_REQUEST_BYTES: usize = 512 * 1024;
/// Largest response accepted, in bytes (a fetch response carries whole records).
pub const MAX_RESPONSE_BYTES: usize = 2 * 1024 * 1024;

/// What a sync covers: one room's records, or every profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Scope {
    /// The records of one room (`record.room() == Some(room)`).
    Room(RoomId),
    /// Every user's profile (records without a room).
    Profiles,
    /// The records of an invite-only room, named by its locator id
    /// (docs/trust.md, "Where a sealed room lives on the wire"): only a node
    /// that holds the locator secret can name it, and it proves so. A node
    /// never serves an invite-only room under [`Scope::Room`].
    Sealed {
        /// `LocatorSecret::id()` of the room.
        locator: LocatorId,
        /// `LocatorSecret::proof` of the requester's PeerId bytes: a
        /// responder serves only a requester that holds the secret, and a
        /// proof overheard from one peer is worthless to another.
        proof: [u8; 32],
    },
}

/// One element of a synced set: a record id, preceded by its dependency rank
/// so that sorting the set sorts it parents first (profiles 0, rooms 1,
/// members 2, channels and channel deletes 3, log entries 4). A late joiner
/// that fetches what it lacks in item order then applies records after
/// their parents, and its store's pending set stays empty.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SyncItem {
    /// Dependency rank, as [`tincan_store::Store::room_sync_items`] gives it.
    pub rank: u8,
    /// The record.
    pub id: RecordId,
}

/// The exclusive upper end of a range of items. Ranges in a message are
/// contiguous: each starts where the previous one ended (the first at the
/// smallest item), and the last ends at [`Bound::End`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Bound {
    /// Up to, not including, this item.
    Item(SyncItem),
    /// Up to the end of the item space.
    End,
}

/// A digest of the items in a range: BLAKE3 of the count and the items,
/// truncated to 16 bytes. Equal digests mean equal sets (up to a 2^-64
/// birthday bound per comparison, which a forger cannot steer because the
/// items are hashes of signed records).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Fingerprint(pub [u8; 16]);

/// What a message says about one range.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RangeMode {
    /// Nothing more to do here.
    Skip,
    /// The sender's items in the range digest to this.
    Fingerprint(Fingerprint),
    /// The sender's items in the range, all of them, in order.
    IdList(Vec<SyncItem>),
    /// Only from a responder that received an `IdList` for this range: the
    /// items it holds there that the list lacked. The range is then settled.
    Missing(Vec<SyncItem>),
}

/// One range of a reconciliation message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Range {
    /// Where the range ends (exclusive).
    pub upper: Bound,
    /// What the sender says about it.
    pub mode: RangeMode,
}

/// A sync request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncRequest {
    /// One round of reconciliation over `scope`.
    Reconcile {
        /// Which set.
        scope: Scope,
        /// The ranges, covering the whole item space.
        ranges: Vec<Range>,
    },
    /// Send me these records (wire bytes), in this order: only those in
    /// `scope` are served.
    Fetch {
        /// The set the ids were found missing in.
        scope: Scope,
        /// The ids, at most [`crate::reconcile::ReconcileConfig::max_fetch_ids`].
        ids: Vec<RecordId>,
    },
}

/// A sync response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncResponse {
    /// The responder's answer to a reconciliation round.
    Reconcile {
        /// The ranges, covering the whole item space.
        ranges: Vec<Range>,
    },
    /// Records for a fetch.
    Records {
        /// How many of the requested ids (a prefix of the request) this
        /// answer covers; the requester asks again for the rest. Ids in the
        /// prefix whose record the responder no longer holds (superseded
        /// since) are simply absent from `records`.
        served: u32,
        /// Wire bytes of the records found, in request order.
        records: Vec<Vec<u8>>,
    },
    /// The responder will not answer now (busy, or the request was bad).
    Refused {
        /// Why, for logs.
        reason: String,
    },
}

/// The length-prefixed postcard codec of [`SYNC_PROTOCOL`].
#[derive(Clone, Copy, Debug, Default)]
pub struct SyncCodec;

async fn read_frame<T>(io: &mut T, limit: usize) -> io::Result<Vec<u8>>
where
    T: AsyncRead + Unpin + Send,
{
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("sync message of {len} bytes is over the limit of {limit}"),
        ));
    }
    let mut buf = vec![0u8; len];
    io.read_exact(&mut buf).await?;
    Ok(buf)
}

async fn write_frame<T>(io: &mut T, bytes: &[u8], limit: usize) -> io::Result<()>
where
    T: AsyncWrite + Unpin + Send,
{
    if bytes.len() > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "sync message of {} bytes is over the limit of {limit}",
                bytes.len()
            ),
        ));
    }
    let len = u32::try_from(bytes.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "sync message too large"))?;
    io.write_all(&len.to_be_bytes()).await?;
    io.write_all(bytes).await?;
    io.close().await
}

fn decode<M: for<'de> Deserialize<'de>>(bytes: &[u8]) -> io::Result<M> {
    postcard::from_bytes(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

fn encode<M: Serialize>(m: &M) -> io::Result<Vec<u8>> {
    postcard::to_allocvec(m).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

impl libp2p::request_response::Codec for SyncCodec {
    type Protocol = StreamProtocol;
    type Request = SyncRequest;
    type Response = SyncResponse;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<SyncRequest>
    where
        T: AsyncRead + Unpin + Send,
    {
        decode(&read_frame(io, MAX_REQUEST_BYTES).await?)
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<SyncResponse>
    where
        T: AsyncRead + Unpin + Send,
    {
        decode(&read_frame(io, MAX_RESPONSE_BYTES).await?)
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: SyncRequest,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &encode(&req)?, MAX_REQUEST_BYTES).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: SyncResponse,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &encode(&res)?, MAX_RESPONSE_BYTES).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let req = SyncRequest::Reconcile {
            scope: Scope::Room(RoomId([7; 16])),
            ranges: vec![
                Range {
                    upper: Bound::Item(SyncItem {
                        rank: 2,
                        id: RecordId([1; 32]),
                    }),
                    mode: RangeMode::Fingerprint(Fingerprint([3; 16])),
                },
                Range {
                    upper: Bound::End,
                    mode: RangeMode::IdList(vec![SyncItem {
                        rank: 4,
                        id: RecordId([9; 32]),
                    }]),
                },
            ],
        };
        let bytes = encode(&req).unwrap();
        assert_eq!(decode::<SyncRequest>(&bytes).unwrap(), req);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bytes in [&[][..], &[0xff; 7][..], &[1, 200, 200, 200, 200, 200][..]] {
            assert!(decode::<SyncRequest>(bytes).is_err());
            assert!(decode::<SyncResponse>(bytes).is_err());
        }
    }

    #[test]
    fn oversized_frames_are_refused_before_allocation() {
        futures::executor::block_on(async {
            let mut input = futures::io::Cursor::new(u32::MAX.to_be_bytes().to_vec());
            let err = read_frame(&mut input, MAX_REQUEST_BYTES).await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        });
    }
}

/// The LAN room directory (`/tincan/directory/1`): a node asks a peer it
/// found by mDNS which open rooms it follows, and gets their signed Room
/// records (and their owners' profiles), so a player at a LAN party sees the
/// rooms around without typing a 32-digit id. Only peers found by mDNS are
/// asked, and only they are answered.
pub const DIRECTORY_PROTOCOL: StreamProtocol = StreamProtocol::new("/tincan/directory/1");
/// Largest directory request accepted, in bytes (it carries nothing).
pub const MAX_DIRECTORY_REQUEST_BYTES: usize = 64;
/// Largest directory answer accepted, in bytes.
pub const MAX_DIRECTORY_RESPONSE_BYTES: usize = 512 * 1024;
/// Most rooms one answer lists.
pub const MAX_DIRECTORY_ROOMS: usize = 32;

/// A directory request: "which open rooms do you follow?".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DirectoryRequest {
    /// The open rooms, at most [`MAX_DIRECTORY_ROOMS`].
    OpenRooms,
}

/// One room in a directory answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectoryEntry {
    /// Wire bytes of the Room record in force (signed by its owner).
    pub room: Vec<u8>,
    /// Wire bytes of the owner's profile, if the answering node has it.
    pub owner_profile: Option<Vec<u8>>,
    /// Joined members as the answering node counts them (a hint: not signed).
    pub members: u32,
}

/// A directory answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DirectoryResponse {
    /// The rooms.
    Rooms(Vec<DirectoryEntry>),
    /// The peer will not answer (not on its LAN, busy).
    Refused {
        /// Why, for logs.
        reason: String,
    },
}

/// The length-prefixed postcard codec of [`DIRECTORY_PROTOCOL`].
#[derive(Clone, Copy, Debug, Default)]
pub struct DirectoryCodec;

impl libp2p::request_response::Codec for DirectoryCodec {
    type Protocol = StreamProtocol;
    type Request = DirectoryRequest;
    type Response = DirectoryResponse;

    async fn read_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<DirectoryRequest>
    where
        T: AsyncRead + Unpin + Send,
    {
        decode(&read_frame(io, MAX_DIRECTORY_REQUEST_BYTES).await?)
    }

    async fn read_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<DirectoryResponse>
    where
        T: AsyncRead + Unpin + Send,
    {
        decode(&read_frame(io, MAX_DIRECTORY_RESPONSE_BYTES).await?)
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: DirectoryRequest,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &encode(&req)?, MAX_DIRECTORY_REQUEST_BYTES).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: DirectoryResponse,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &encode(&res)?, MAX_DIRECTORY_RESPONSE_BYTES).await
    }
}
