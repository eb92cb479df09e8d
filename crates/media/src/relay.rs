//! The relay's forwarding logic, without I/O: one upload, many downloads.
//!
//! The network layer (later: a quinn endpoint) drives a [`Relay`]:
//! - once a connection has proven membership of a room, [`Relay::join`] puts
//!   it in that room's fan-out group and returns the speaker index it must
//!   write in its datagrams (the group's members learn the index's `UserId`
//!   over the control stream);
//! - for each datagram received, [`Relay::on_datagram`] says which
//!   connections to send the same bytes to: every other member of the
//!   sender's group, never the sender. It reads the 13-byte header to check
//!   the frame and never touches what follows: end-to-end sealed frames
//!   (version 2), which it cannot read; plaintext frames (version 1) are
//!   dropped and counted unless [`RelayConfig::sealed_only`] is off (a
//!   relay serving nodes older than end-to-end voice);
//! - [`Relay::leave`] when the connection closes or leaves the room.
//!
//! `now` is a parameter (microseconds since any origin), so tests and
//! simulations run without a clock. Everything is bounded: groups, members
//! per group, and per connection a token bucket on datagrams and one on bytes.
//! At a limit the relay refuses (a join) or drops and counts (a datagram); it
//! never queues.

use std::collections::HashMap;

use thiserror::Error;

use crate::protocol::{ParseError, SEALED_VERSION, VoiceHeader};

/// A connection, named by the network layer; the relay only compares them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// A fan-out group: the network layer names it, typically by the `RoomId`
/// (or a voice channel's `ChannelId`) whose membership the connection proved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupKey(pub [u8; 16]);

/// A relay's limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayConfig {
    /// Fan-out groups at once; a join that would open one more is refused.
    pub max_groups: usize,
    /// Members per group; a join to a full group is refused. At most 65 536,
    /// the number of speaker indexes.
    pub max_members: usize,
    /// Datagrams a second each connection may send, sustained.
    pub datagrams_per_second: u64,
    /// Datagrams a connection may send in a burst above that rate.
    pub datagram_burst: u64,
    /// Bytes a second each connection may send, sustained.
    pub bytes_per_second: u64,
    /// Bytes a connection may send in a burst above that rate.
    pub byte_burst: u64,
    /// Forward only end-to-end sealed frames (version 2); plaintext ones
    /// (version 1) are dropped as [`DropReason::Plaintext`]. On by default:
    /// a member that sends plaintext would let the relay hear it.
    pub sealed_only: bool,
}

impl Default for RelayConfig {
    /// Room for one speaker at 10 ms frames with redundancy on: 100 frames a
    /// second of up to about 250 bytes, with twice that as headroom for the
    /// bursts a congested path releases at once.
    fn default() -> Self {
        Self {
            max_groups: 1024,
            max_members: 64,
            datagrams_per_second: 200,
            datagram_burst: 50,
            bytes_per_second: 50_000,
            byte_burst: 12_500,
            sealed_only: true,
        }
    }
}

/// Why a datagram was not forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DropReason {
    /// The sender has not joined a group (or has left).
    NotJoined,
    /// The bytes are not a voice datagram this relay understands.
    Malformed(ParseError),
    /// A plaintext (version 1) frame, while the relay forwards sealed
    /// frames only.
    Plaintext,
    /// The datagram names a speaker other than the one the sender was given.
    WrongSpeaker,
    /// The sender is over its datagrams-per-second cap.
    DatagramRate,
    /// The sender is over its bytes-per-second cap.
    ByteRate,
}

/// What to do with a received datagram.
#[derive(Debug, Clone)]
pub enum Forward<'a> {
    /// Send the same bytes to each of these connections (possibly none, when
    /// the sender is alone in its group).
    To(Recipients<'a>),
    /// Send it nowhere; the reason is also counted in [`RelayStats`].
    Drop(DropReason),
}

/// The connections a datagram goes to: the sender's group, less the sender.
/// Borrows the group's member list, so forwarding allocates nothing.
#[derive(Debug, Clone)]
pub struct Recipients<'a> {
    members: std::slice::Iter<'a, Member>,
    sender: ConnId,
    remaining: usize,
}

impl Iterator for Recipients<'_> {
    type Item = ConnId;

    fn next(&mut self) -> Option<ConnId> {
        let sender = self.sender;
        let next = self.members.find(|m| m.conn != sender)?.conn;
        self.remaining = self.remaining.saturating_sub(1);
        Some(next)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl ExactSizeIterator for Recipients<'_> {}

/// Why a connection could not join a group.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum JoinError {
    /// The connection is already in a group; it must leave first.
    #[error("connection {0:?} is already in a voice group: leave it first")]
    AlreadyJoined(ConnId),
    /// The group has as many members as the relay allows.
    #[error("voice group is full ({max} members): try another relay")]
    GroupFull {
        /// The relay's member limit.
        max: usize,
    },
    /// The relay serves as many groups as it allows.
    #[error("relay serves its maximum of {max} voice groups: try another relay")]
    TooManyGroups {
        /// The relay's group limit.
        max: usize,
    },
}

/// Counters since the relay started. Each (datagram, recipient) pair counts
/// once in `forwarded`: one upload to ten listeners is ten.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Datagrams received from connections, accepted or not.
    pub received: u64,
    /// Datagram copies to send, one per recipient.
    pub forwarded: u64,
    /// Bytes in those copies.
    pub forwarded_bytes: u64,
    /// Dropped: the sender was in no group.
    pub dropped_not_joined: u64,
    /// Dropped: not a voice datagram.
    pub dropped_malformed: u64,
    /// Dropped: a plaintext frame (the relay forwards sealed frames only).
    pub dropped_plaintext: u64,
    /// Dropped: the speaker index was not the sender's.
    pub dropped_wrong_speaker: u64,
    /// Dropped: over the datagram rate cap.
    pub dropped_datagram_rate: u64,
    /// Dropped: over the byte rate cap.
    pub dropped_byte_rate: u64,
}

/// A token bucket in micro-tokens, so refill needs no floating point:
/// `rate` tokens a second is `rate` micro-tokens a microsecond.
#[derive(Debug, Clone)]
struct TokenBucket {
    micro_tokens: u64,
    capacity: u64,
    rate: u64,
}

const MICRO: u64 = 1_000_000;

impl TokenBucket {
    fn full(rate_per_second: u64, burst: u64) -> Self {
        let capacity = burst.saturating_mul(MICRO);
        Self {
            micro_tokens: capacity,
            capacity,
            rate: rate_per_second,
        }
    }

    fn refill(&mut self, elapsed_micros: u64) {
        self.micro_tokens = self
            .micro_tokens
            .saturating_add(elapsed_micros.saturating_mul(self.rate))
            .min(self.capacity);
    }

    fn has(&self, tokens: u64) -> bool {
        self.micro_tokens >= tokens.saturating_mul(MICRO)
    }

    fn take(&mut self, tokens: u64) {
        self.micro_tokens = self
            .micro_tokens
            .saturating_sub(tokens.saturating_mul(MICRO));
    }
}

#[derive(Debug, Clone)]
struct Connection {
    group: GroupKey,
    speaker: u16,
    datagrams: TokenBucket,
    bytes: TokenBucket,
    last_refill: Option<u64>,
}

#[derive(Debug, Clone, Copy)]
struct Member {
    conn: ConnId,
    speaker: u16,
}

/// The relay's state: groups, their members and each connection's buckets.
#[derive(Debug)]
pub struct Relay {
    config: RelayConfig,
    connections: HashMap<ConnId, Connection>,
    // Members in join order; a Vec because fan-out walks it for every datagram
    // and groups are small.
    groups: HashMap<GroupKey, Vec<Member>>,
    stats: RelayStats,
}

impl Relay {
    /// A relay with no groups.
    pub fn new(config: RelayConfig) -> Self {
        Self {
            config,
            connections: HashMap::new(),
            groups: HashMap::new(),
            stats: RelayStats::default(),
        }
    }

    /// The limits it runs with.
    pub fn config(&self) -> &RelayConfig {
        &self.config
    }

    /// Counters since it started.
    pub fn stats(&self) -> &RelayStats {
        &self.stats
    }

    /// The number of groups it serves.
    pub fn group_count(&self) -> usize {
        self.groups.len()
    }

    /// The members of `group`, in join order.
    pub fn members(&self, group: &GroupKey) -> impl Iterator<Item = ConnId> + '_ {
        self.groups.get(group).into_iter().flatten().map(|m| m.conn)
    }

    /// Puts `conn` in `group`, after the network layer has checked that it is
    /// a member of the room. Returns the speaker index it must write in its
    /// datagrams: the lowest one free in the group. Its rate buckets start
    /// full.
    pub fn join(&mut self, conn: ConnId, group: GroupKey) -> Result<u16, JoinError> {
        if self.connections.contains_key(&conn) {
            return Err(JoinError::AlreadyJoined(conn));
        }
        let max_members = self.config.max_members.min(usize::from(u16::MAX) + 1);
        if !self.groups.contains_key(&group) && self.groups.len() >= self.config.max_groups {
            return Err(JoinError::TooManyGroups {
                max: self.config.max_groups,
            });
        }
        let members = self.groups.entry(group).or_default();
        if members.len() >= max_members {
            let max = max_members;
            if members.is_empty() {
                // A limit of zero members: do not leave an empty group behind.
                self.groups.remove(&group);
            }
            return Err(JoinError::GroupFull { max });
        }
        // The lowest index no member holds exists: fewer than 65 536 members.
        let speaker = (0..=u16::MAX)
            .find(|s| members.iter().all(|m| m.speaker != *s))
            .unwrap_or(u16::MAX);
        members.push(Member { conn, speaker });
        self.connections.insert(
            conn,
            Connection {
                group,
                speaker,
                datagrams: TokenBucket::full(
                    self.config.datagrams_per_second,
                    self.config.datagram_burst,
                ),
                bytes: TokenBucket::full(self.config.bytes_per_second, self.config.byte_burst),
                last_refill: None,
            },
        );
        Ok(speaker)
    }

    /// Takes `conn` out of its group; it is sent nothing more, and what it
    /// sends is dropped as [`DropReason::NotJoined`]. An empty group is
    /// closed. Returns whether it was in a group.
    pub fn leave(&mut self, conn: ConnId) -> bool {
        let Some(connection) = self.connections.remove(&conn) else {
            return false;
        };
        if let Some(members) = self.groups.get_mut(&connection.group) {
            members.retain(|m| m.conn != conn);
            if members.is_empty() {
                self.groups.remove(&connection.group);
            }
        }
        true
    }

    /// Decides where a datagram from `from` goes. `now_micros` is the
    /// arrival time in microseconds since any fixed origin; a time earlier
    /// than the last one is treated as no time passing.
    pub fn on_datagram(&mut self, from: ConnId, bytes: &[u8], now_micros: u64) -> Forward<'_> {
        self.stats.received += 1;
        let Some(connection) = self.connections.get_mut(&from) else {
            self.stats.dropped_not_joined += 1;
            return Forward::Drop(DropReason::NotJoined);
        };
        // Only the header is read: the Opus packet is opaque to the relay.
        let datagram = match VoiceHeader::parse(bytes) {
            Ok((header, _)) => header,
            Err(e) => {
                self.stats.dropped_malformed += 1;
                return Forward::Drop(DropReason::Malformed(e));
            }
        };
        if self.config.sealed_only && datagram.version != SEALED_VERSION {
            self.stats.dropped_plaintext += 1;
            return Forward::Drop(DropReason::Plaintext);
        }
        if datagram.speaker != connection.speaker {
            self.stats.dropped_wrong_speaker += 1;
            return Forward::Drop(DropReason::WrongSpeaker);
        }
        let elapsed = connection
            .last_refill
            .map_or(0, |last| now_micros.saturating_sub(last));
        connection.last_refill = Some(
            connection
                .last_refill
                .map_or(now_micros, |last| last.max(now_micros)),
        );
        connection.datagrams.refill(elapsed);
        connection.bytes.refill(elapsed);
        let len = bytes.len() as u64;
        // Both caps must pass before either is charged, so a datagram dropped
        // for bytes does not also spend a datagram token.
        if !connection.datagrams.has(1) {
            self.stats.dropped_datagram_rate += 1;
            return Forward::Drop(DropReason::DatagramRate);
        }
        if !connection.bytes.has(len) {
            self.stats.dropped_byte_rate += 1;
            return Forward::Drop(DropReason::ByteRate);
        }
        connection.datagrams.take(1);
        connection.bytes.take(len);
        let members: &[Member] = self
            .groups
            .get(&connection.group)
            .map_or(&[], Vec::as_slice);
        let copies = members.len().saturating_sub(1);
        self.stats.forwarded += copies as u64;
        self.stats.forwarded_bytes += copies as u64 * len;
        Forward::To(Recipients {
            members: members.iter(),
            sender: from,
            remaining: copies,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{SEALED_VERSION, VoiceDatagram};

    const ROOM: GroupKey = GroupKey([1; 16]);
    const OTHER_ROOM: GroupKey = GroupKey([2; 16]);

    fn generous() -> RelayConfig {
        RelayConfig {
            max_groups: 4,
            max_members: 8,
            datagrams_per_second: 1_000_000,
            datagram_burst: 1_000_000,
            bytes_per_second: 1 << 40,
            byte_burst: 1 << 40,
            sealed_only: true,
        }
    }

    /// A plaintext frame (version 1).
    fn plain(speaker: u16, sequence: u32) -> Vec<u8> {
        VoiceDatagram {
            speaker,
            sequence,
            timestamp: sequence * 480,
            payload: vec![0x42; 60],
            ..VoiceDatagram::default()
        }
        .encode()
        .unwrap()
    }

    /// A sealed frame (version 2) as the relay sees it: the header, then
    /// bytes it cannot read (a key id, 60 bytes of ciphertext, the tag).
    fn frame(speaker: u16, sequence: u32) -> Vec<u8> {
        let mut sealed = plain(speaker, sequence)[..crate::protocol::HEADER_LEN].to_vec();
        sealed[0] = SEALED_VERSION;
        sealed.extend_from_slice(&[0x5a; 69]);
        sealed
    }

    #[test]
    fn sealed_frames_are_forwarded_by_their_header_alone() {
        let mut relay = Relay::new(generous());
        let a = ConnId(1);
        let b = ConnId(2);
        let sa = relay.join(a, ROOM).unwrap();
        relay.join(b, ROOM).unwrap();
        let sealed = frame(sa, 1);
        assert_eq!(recipients(&mut relay, a, &sealed, 0), vec![b]);
        let mut wrong = sealed.clone();
        crate::protocol::set_speaker(&mut wrong, sa + 1);
        assert!(matches!(
            relay.on_datagram(a, &wrong, 0),
            Forward::Drop(DropReason::WrongSpeaker)
        ));
    }

    #[test]
    fn plaintext_frames_are_dropped_and_counted_unless_allowed() {
        let mut relay = Relay::new(generous());
        let sa = relay.join(ConnId(1), ROOM).unwrap();
        relay.join(ConnId(2), ROOM).unwrap();
        assert_eq!(
            dropped(&mut relay, ConnId(1), &plain(sa, 1), 0),
            DropReason::Plaintext
        );
        assert_eq!(relay.stats().dropped_plaintext, 1);
        assert_eq!(relay.stats().forwarded, 0);
        let mut old = Relay::new(RelayConfig {
            sealed_only: false,
            ..generous()
        });
        let sa = old.join(ConnId(1), ROOM).unwrap();
        old.join(ConnId(2), ROOM).unwrap();
        assert_eq!(
            recipients(&mut old, ConnId(1), &plain(sa, 1), 0),
            [ConnId(2)]
        );
    }

    fn recipients(relay: &mut Relay, from: ConnId, bytes: &[u8], now: u64) -> Vec<ConnId> {
        match relay.on_datagram(from, bytes, now) {
            Forward::To(to) => {
                let n = to.len();
                let v: Vec<_> = to.collect();
                assert_eq!(v.len(), n, "len() must match what the iterator yields");
                v
            }
            Forward::Drop(reason) => panic!("dropped: {reason:?}"),
        }
    }

    fn dropped(relay: &mut Relay, from: ConnId, bytes: &[u8], now: u64) -> DropReason {
        match relay.on_datagram(from, bytes, now) {
            Forward::To(to) => panic!("forwarded to {:?}", to.collect::<Vec<_>>()),
            Forward::Drop(reason) => reason,
        }
    }

    #[test]
    fn forwards_to_every_other_member_and_never_back_to_the_sender() {
        let mut relay = Relay::new(generous());
        let speakers: Vec<u16> = (0..4)
            .map(|c| relay.join(ConnId(c), ROOM).unwrap())
            .collect();
        assert_eq!(speakers, [0, 1, 2, 3]);
        for c in 0..4 {
            let to = recipients(&mut relay, ConnId(c), &frame(speakers[c as usize], 1), 0);
            assert!(!to.contains(&ConnId(c)), "{c} got its own frame");
            let mut expected: Vec<_> = (0..4).filter(|&o| o != c).map(ConnId).collect();
            expected.sort();
            let mut to = to;
            to.sort();
            assert_eq!(to, expected);
        }
        assert_eq!(relay.stats().forwarded, 12);
        assert_eq!(relay.stats().forwarded_bytes, 12 * 82);
        assert_eq!(relay.stats().received, 4);
    }

    #[test]
    fn groups_do_not_hear_each_other() {
        let mut relay = Relay::new(generous());
        let a = relay.join(ConnId(1), ROOM).unwrap();
        relay.join(ConnId(2), ROOM).unwrap();
        assert_eq!(relay.join(ConnId(3), OTHER_ROOM).unwrap(), 0);
        assert_eq!(
            recipients(&mut relay, ConnId(1), &frame(a, 0), 0),
            [ConnId(2)]
        );
        assert_eq!(recipients(&mut relay, ConnId(3), &frame(0, 0), 0), []);
    }

    #[test]
    fn a_connection_that_leaves_gets_nothing_more_and_is_not_forwarded() {
        let mut relay = Relay::new(generous());
        for c in 0..3 {
            relay.join(ConnId(c), ROOM).unwrap();
        }
        assert!(relay.leave(ConnId(1)));
        assert!(!relay.leave(ConnId(1)));
        assert_eq!(
            recipients(&mut relay, ConnId(0), &frame(0, 5), 0),
            [ConnId(2)]
        );
        assert_eq!(
            recipients(&mut relay, ConnId(2), &frame(2, 5), 0),
            [ConnId(0)]
        );
        assert_eq!(
            dropped(&mut relay, ConnId(1), &frame(1, 5), 0),
            DropReason::NotJoined
        );
        assert_eq!(relay.stats().dropped_not_joined, 1);
        // Its speaker index is free again for the next to join.
        assert_eq!(relay.join(ConnId(9), ROOM).unwrap(), 1);
    }

    #[test]
    fn the_last_to_leave_closes_the_group() {
        let mut relay = Relay::new(generous());
        relay.join(ConnId(1), ROOM).unwrap();
        relay.join(ConnId(2), ROOM).unwrap();
        relay.leave(ConnId(1));
        assert_eq!(relay.group_count(), 1);
        relay.leave(ConnId(2));
        assert_eq!(relay.group_count(), 0);
        assert_eq!(relay.members(&ROOM).count(), 0);
    }

    #[test]
    fn a_spoofed_speaker_is_dropped_and_counted() {
        let mut relay = Relay::new(generous());
        relay.join(ConnId(1), ROOM).unwrap();
        relay.join(ConnId(2), ROOM).unwrap();
        assert_eq!(
            dropped(&mut relay, ConnId(2), &frame(0, 1), 0),
            DropReason::WrongSpeaker
        );
        assert_eq!(relay.stats().dropped_wrong_speaker, 1);
        assert_eq!(relay.stats().forwarded, 0);
    }

    #[test]
    fn malformed_datagrams_are_dropped_and_counted() {
        let mut relay = Relay::new(generous());
        relay.join(ConnId(1), ROOM).unwrap();
        relay.join(ConnId(2), ROOM).unwrap();
        assert!(matches!(
            dropped(&mut relay, ConnId(1), &[1, 0, 0], 0),
            DropReason::Malformed(ParseError::TooShort { len: 3 })
        ));
        let mut v9 = frame(0, 1);
        v9[0] = 9;
        assert!(matches!(
            dropped(&mut relay, ConnId(1), &v9, 0),
            DropReason::Malformed(ParseError::UnknownVersion { version: 9 })
        ));
        assert_eq!(relay.stats().dropped_malformed, 2);
    }

    #[test]
    fn the_datagram_rate_cap_drops_counts_and_refills() {
        let mut relay = Relay::new(RelayConfig {
            datagrams_per_second: 100,
            datagram_burst: 5,
            ..generous()
        });
        relay.join(ConnId(1), ROOM).unwrap();
        relay.join(ConnId(2), ROOM).unwrap();
        let f = frame(0, 1);
        // The burst goes through at once, the sixth is over the cap.
        for _ in 0..5 {
            assert_eq!(recipients(&mut relay, ConnId(1), &f, 1_000), [ConnId(2)]);
        }
        assert_eq!(
            dropped(&mut relay, ConnId(1), &f, 1_000),
            DropReason::DatagramRate
        );
        // 100 a second is one every 10 ms: 9 ms later still nothing ...
        assert_eq!(
            dropped(&mut relay, ConnId(1), &f, 10_000),
            DropReason::DatagramRate
        );
        // ... 10 ms later one more.
        assert_eq!(recipients(&mut relay, ConnId(1), &f, 11_000), [ConnId(2)]);
        assert_eq!(
            dropped(&mut relay, ConnId(1), &f, 11_000),
            DropReason::DatagramRate
        );
        assert_eq!(relay.stats().dropped_datagram_rate, 3);
        assert_eq!(relay.stats().forwarded, 6);
        // The other member has its own bucket.
        assert_eq!(
            recipients(&mut relay, ConnId(2), &frame(1, 1), 11_000),
            [ConnId(1)]
        );
    }

    #[test]
    fn the_byte_rate_cap_drops_counts_and_spends_no_datagram_token() {
        let f = frame(0, 1);
        let len = f.len() as u64;
        let mut relay = Relay::new(RelayConfig {
            bytes_per_second: len * 100,
            byte_burst: len * 2,
            datagrams_per_second: 1,
            datagram_burst: 3,
            ..generous()
        });
        relay.join(ConnId(1), ROOM).unwrap();
        relay.join(ConnId(2), ROOM).unwrap();
        recipients(&mut relay, ConnId(1), &f, 0);
        recipients(&mut relay, ConnId(1), &f, 0);
        assert_eq!(dropped(&mut relay, ConnId(1), &f, 0), DropReason::ByteRate);
        assert_eq!(relay.stats().dropped_byte_rate, 1);
        // One datagram's worth of bytes comes back in 10 ms, and the third
        // datagram token was not spent on the dropped one.
        recipients(&mut relay, ConnId(1), &f, 10_000);
    }

    #[test]
    fn time_going_backwards_grants_nothing() {
        let mut relay = Relay::new(RelayConfig {
            datagrams_per_second: 100,
            datagram_burst: 1,
            ..generous()
        });
        relay.join(ConnId(1), ROOM).unwrap();
        let f = frame(0, 1);
        recipients(&mut relay, ConnId(1), &f, 1_000_000);
        assert_eq!(
            dropped(&mut relay, ConnId(1), &f, 0),
            DropReason::DatagramRate
        );
        assert_eq!(
            dropped(&mut relay, ConnId(1), &f, 1_005_000),
            DropReason::DatagramRate
        );
        recipients(&mut relay, ConnId(1), &f, 1_010_000);
    }

    #[test]
    fn groups_and_members_are_bounded() {
        let mut relay = Relay::new(RelayConfig {
            max_groups: 2,
            max_members: 2,
            ..generous()
        });
        relay.join(ConnId(1), ROOM).unwrap();
        relay.join(ConnId(2), ROOM).unwrap();
        assert_eq!(
            relay.join(ConnId(3), ROOM),
            Err(JoinError::GroupFull { max: 2 })
        );
        relay.join(ConnId(4), OTHER_ROOM).unwrap();
        assert_eq!(
            relay.join(ConnId(5), GroupKey([3; 16])),
            Err(JoinError::TooManyGroups { max: 2 })
        );
        assert_eq!(
            relay.join(ConnId(1), OTHER_ROOM),
            Err(JoinError::AlreadyJoined(ConnId(1)))
        );
        // Refused joins leave no trace: the refused connections are not members.
        assert_eq!(relay.group_count(), 2);
        assert_eq!(
            dropped(&mut relay, ConnId(3), &frame(0, 0), 0),
            DropReason::NotJoined
        );
        // Room frees up when someone leaves.
        relay.leave(ConnId(4));
        relay.join(ConnId(5), GroupKey([3; 16])).unwrap();
    }

    #[test]
    fn a_zero_member_limit_leaves_no_empty_group() {
        let mut relay = Relay::new(RelayConfig {
            max_members: 0,
            ..generous()
        });
        assert_eq!(
            relay.join(ConnId(1), ROOM),
            Err(JoinError::GroupFull { max: 0 })
        );
        assert_eq!(relay.group_count(), 0);
    }
}
