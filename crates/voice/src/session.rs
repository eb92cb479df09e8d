//! The voice session of one node in one voice channel, as a sans-IO state
//! machine in the shape of quinn-proto's `Connection` and str0m's `Rtc`.
//!
//! No sockets, clocks, tasks or audio devices: every input carries `now`
//! (time since any origin the driver picks), and the session answers with
//! outputs the driver carries out:
//! - [`VoiceSession::poll_transmit`]: datagrams to a peer's link or to the
//!   relay, and punch packets to an address;
//! - [`VoiceSession::poll_event`]: dial a peer, close a link (with why),
//!   join or leave the relay, publish a signal on the room's voice topic,
//!   a voice packet for the audio engine, the encoder's bitrate and
//!   expected loss, speaking changes, refusals for the log, evidence for
//!   the relay;
//! - [`VoiceSession::poll_timeout`] and [`VoiceSession::handle_timeout`].
//!
//! After any input, drain both queues, then sleep until `poll_timeout`.
//! Several sessions live in one process (tests run a channel of them on
//! `tincan-netem`).
//!
//! Trust: every peer passes [`crate::gate`] before it is a participant,
//! before we dial it, when a link comes up on either end, and again on
//! every roster the driver pushes ([`VoiceSession::handle_roster`]); a
//! refusal closes its link at once and forgets it. Presences from anyone
//! else are counted and dropped. Frames are sealed end to end
//! ([`crate::frame`]) with keys that only admitted participants receive
//! ([`crate::keys`]).

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use libp2p_identity::PeerId;
use tincan_audio::codec::VoicePacket;
use tincan_core::seal::{open_envelope, seal_to_with};
use tincan_core::{ChannelId, NodeBinding, NodeKey, RoomId, UserId};
use tincan_media::control::{Answer, Hello, Refused, SpeakerEntry, Update, Welcome};
use tincan_media::presence::{
    Candidate, CandidateKind, MAX_CANDIDATES, PRESENCE_INTERVAL, Presence,
};
use tincan_media::protocol::set_speaker;

use crate::candidates::{filter_candidates, host_addresses, is_private};
use crate::config::SessionConfig;
use crate::frame::{PlainFrame, open_frame, seal_frame};
use crate::gate::{AdmitRequest, Refusal, RosterSnapshot, admit, admit_user, peer_id_of};
use crate::keys::{Installed, KeyRng, OwnKey, PeerKeys};
use crate::pacer::Budget;
use crate::paths::{Action, Path, PathPlanner, dials_first};
use crate::policy::{SpeakingDetector, bitrate_for_loss, expected_loss_percent};
use crate::protocol::{
    ENVELOPE_WIRE_LEN, KeyShare, SENDER_KEY_LEN, SealedFrame, VoiceSignal, key_share_context,
};

/// Most key shares held for nodes not admitted yet.
const MAX_PENDING_SHARES: usize = 16;

/// How long such a share is held.
const PENDING_SHARE_TTL: Duration = Duration::from_secs(5);

/// Envelopes of a key share that fit in one signal of `max_len` bytes:
/// what the share costs besides them (version, room, channel, key id,
/// generation, the ephemeral key, lengths) is under 128 bytes.
fn envelopes_per_signal(max_len: usize) -> usize {
    (max_len.saturating_sub(128) / ENVELOPE_WIRE_LEN).max(1)
}

/// Where a datagram came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    /// A direct link with this peer (TLS proved it).
    Peer(PeerId),
    /// The relay.
    Relay,
}

/// Something to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transmit {
    /// A datagram on a link: the peer's, or the relay's (`Source::Relay`).
    Datagram {
        /// Where to.
        to: Source,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// A punch packet from the voice socket to this address.
    Punch {
        /// Where to.
        to: SocketAddr,
    },
}

/// What became of a datagram handed to [`VoiceSession::handle_datagram`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Received {
    /// It opened: a [`Event::Voice`] for this user follows.
    Opened(UserId),
    /// A plaintext (version 1) frame: only sealed frames are taken.
    Plaintext,
    /// Not a sealed frame.
    Malformed,
    /// From no link or relay we hold, or with routing indexes that do not
    /// belong to it.
    NoLink,
    /// The relay names a speaker it never announced.
    UnknownSpeaker,
    /// The sender may not speak in the channel.
    Forbidden,
    /// No key with that key id for the sender.
    NoKey,
    /// The tag did not verify.
    BadTag,
    /// Seen before, or older than the replay window.
    Replay,
    /// The session has ended.
    Ended,
}

/// Why the session closes a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum CloseReason {
    /// The gate refuses the peer now (a roster change).
    Refused(Refusal),
    /// The peer left the channel.
    Left,
    /// The peer's presence went stale.
    TimedOut,
    /// A dial took longer than [`SessionConfig::dial_timeout`].
    DialTimeout,
    /// We left, or the roster refused us.
    SessionEnded,
}

/// Why something a peer sent was not taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Ignored {
    /// Not a signal of a form we accept.
    Malformed,
    /// The gate refused it.
    Gate(Refusal),
    /// The planner holds [`crate::paths::PlannerConfig::max_peers`] peers.
    Full,
    /// The user has [`SessionConfig::max_nodes_per_user`] nodes here.
    TooManyNodes,
    /// A key share from a node that is no participant.
    NotParticipant,
    /// A key share with no envelope we can open.
    KeyNotForUs,
    /// A key share older than the key we hold.
    StaleKey,
    /// A welcome from a peer we were not dialling.
    NotDialing,
    /// A second link with a peer: the one the smaller PeerId dialled stays.
    AlreadyLinked,
}

/// What the driver should do or know.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// Dial `peer` at all of `addrs` at once, send `hello` on the control
    /// stream, and report [`VoiceSession::handle_welcome`] or
    /// [`VoiceSession::handle_dial_failed`].
    Dial {
        /// The peer (the TLS identity to expect).
        peer: PeerId,
        /// Its usable candidates, best first.
        addrs: Vec<SocketAddr>,
        /// What to send once connected.
        hello: Hello,
    },
    /// Close the link (or abort the dial) to `peer`.
    Close {
        /// The peer.
        peer: PeerId,
        /// Why.
        reason: CloseReason,
    },
    /// Join the relay with this hello (the driver adds the membership
    /// proof the relay needs) and report
    /// [`VoiceSession::handle_relay_joined`] or
    /// [`VoiceSession::handle_relay_closed`].
    JoinRelay {
        /// The hello.
        hello: Hello,
    },
    /// Leave the relay.
    LeaveRelay,
    /// Publish these bytes on the room's voice topic.
    Publish {
        /// A [`VoiceSignal`].
        signal: Vec<u8>,
    },
    /// A voice packet for the audio engine's jitter buffer of `user`.
    Voice {
        /// Who spoke.
        user: UserId,
        /// The packet.
        packet: VoicePacket,
        /// The sender marked the end of a talk spurt.
        end_of_spurt: bool,
        /// When it arrived (the `now` of the datagram).
        arrived_at: Duration,
    },
    /// Set the encoder's bitrate and expected loss (FEC strength).
    SetEncoder {
        /// Bits a second.
        bitrate_bps: u32,
        /// Percent.
        expected_loss_percent: u8,
    },
    /// A user started or stopped speaking (`user` is ours for us).
    Speaking {
        /// Who.
        user: UserId,
        /// Now speaking.
        speaking: bool,
    },
    /// A user's node is now a participant.
    ParticipantJoined {
        /// The node.
        peer: PeerId,
        /// Its user.
        user: UserId,
    },
    /// A participant left, timed out or was refused.
    ParticipantLeft {
        /// The node.
        peer: PeerId,
        /// Its user.
        user: UserId,
    },
    /// Something a peer sent was ignored (for the log, rate-limited by the
    /// driver as it likes; counted in [`SessionStats`] anyway).
    Refused {
        /// Who sent it.
        peer: PeerId,
        /// Why.
        reason: Ignored,
    },
    /// The relay's speaker table names a user our gate refuses: send the
    /// relay the signed records that show it (phase 2 of issue 13).
    RelayEvidence {
        /// The user.
        user: UserId,
        /// Our gate's reason.
        reason: Refusal,
    },
}

/// Why a link was not taken up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LinkRefused {
    /// The gate refused the peer.
    #[error("voice link refused: {0}")]
    Gate(#[from] Refusal),
    /// No room for another peer.
    #[error("voice link refused: the channel is full here")]
    Full,
    /// A welcome from a peer we were not dialling.
    #[error("voice link refused: we were not dialling that peer")]
    NotDialing,
    /// A link with the peer is up already, and this connection is not the
    /// one both ends keep (the smaller PeerId's dial is).
    #[error("voice link refused: a link with this node is up already")]
    AlreadyLinked,
    /// The session has ended.
    #[error("voice link refused: this node has left the channel")]
    Ended,
}

/// Counters since the session started.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Signals, hellos and key shares ignored, by reason.
    pub ignored: BTreeMap<Ignored, u64>,
    /// Candidate addresses dropped by the filter.
    pub candidates_refused: u64,
    /// Punch packets sent.
    pub punches_sent: u64,
    /// Punch packets not sent: over the budget.
    pub punches_over_budget: u64,
    /// Candidate addresses not dialled: over the budget (the dial waits
    /// for the planner's redial delay if none was left).
    pub dial_addrs_over_budget: u64,
    /// Presences published (regular, answers and changes).
    pub presences_published: u64,
    /// Key shares published.
    pub key_shares_published: u64,
    /// Our key rotations.
    pub rotations: u64,
    /// Frames we sealed (once per frame, whatever the number of links).
    pub frames_sent: u64,
    /// Frames we did not send: the roster says we may not speak.
    pub frames_not_allowed: u64,
    /// Frames opened and handed to the audio engine.
    pub frames_received: u64,
    /// Dropped: a plaintext (version 1) frame; only sealed frames are
    /// taken, on direct links and from the relay.
    pub dropped_plaintext: u64,
    /// Dropped: not a sealed frame.
    pub dropped_malformed: u64,
    /// Dropped: from no link or relay we hold, or with routing indexes that
    /// do not belong to it.
    pub dropped_no_link: u64,
    /// Dropped: the relay names a speaker it never announced.
    pub dropped_unknown_speaker: u64,
    /// Dropped: the sender may not speak in the channel.
    pub dropped_forbidden: u64,
    /// Dropped: we hold no key with that key id for the sender.
    pub dropped_no_key: u64,
    /// Dropped: the tag did not verify (altered, forged, wrong key).
    pub dropped_bad_tag: u64,
    /// Dropped: a sequence already opened or older than the replay window
    /// (a replay, or the same frame by two paths).
    pub dropped_replay: u64,
    /// Outputs dropped because nobody polled them (oldest first).
    pub outputs_dropped: u64,
}

/// A participant as the session shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParticipantView {
    /// Its node.
    pub peer: PeerId,
    /// Its user.
    pub user: UserId,
    /// Whether its user may speak here.
    pub may_speak: bool,
    /// Its direct link's path, if one is up.
    pub path: Option<Path>,
    /// Whether it speaks now.
    pub speaking: bool,
}

#[derive(Clone, Debug)]
struct Participant {
    binding: NodeBinding,
    may_speak: bool,
}

#[derive(Clone, Copy, Debug)]
struct VoiceLink {
    user: UserId,
}

#[derive(Clone, Debug)]
enum RelayState {
    Off,
    Joining {
        since: Duration,
    },
    Joined {
        speaker: u16,
        speakers: BTreeMap<u16, UserId>,
        /// Since when no participant needed the relay, if none does now.
        unneeded_since: Option<Duration>,
    },
}

/// Our identity in a session.
#[derive(Debug)]
pub struct SessionIdentity {
    /// The node key: its public half is our PeerId; envelopes of key shares
    /// are sealed to it.
    pub node_key: NodeKey,
    /// "This node speaks for that user", signed by the user.
    pub binding: NodeBinding,
}

/// Our voice socket, as the driver sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketInfo {
    /// The address the voice socket is bound to.
    pub bound: SocketAddr,
    /// Our interface addresses (for host candidates and the candidate
    /// filter's private ranges).
    pub interfaces: Vec<IpAddr>,
}

/// The voice session. See the module documentation.
pub struct VoiceSession {
    config: SessionConfig,
    me: PeerId,
    node_key: NodeKey,
    binding: NodeBinding,
    room: RoomId,
    channel: ChannelId,
    roster: RosterSnapshot,
    may_speak: bool,
    socket: SocketInfo,
    reflexive: Option<SocketAddr>,
    planner: PathPlanner,
    participants: BTreeMap<PeerId, Participant>,
    links: BTreeMap<PeerId, VoiceLink>,
    dialing: BTreeMap<PeerId, Duration>,
    relay: RelayState,
    rng: KeyRng,
    own_key: OwnKey,
    keys: BTreeMap<PeerId, PeerKeys>,
    /// Key shares from nodes not yet admitted (their presence may come
    /// after their share): at most MAX_PENDING_SHARES, the newest per
    /// node, for PENDING_SHARE_TTL; opened only once the node is admitted.
    pending_shares: BTreeMap<PeerId, (KeyShare, Duration)>,
    rotate_due: bool,
    share_due: bool,
    last_share: Duration,
    punch_budget: Budget,
    answer_budget: Budget,
    answer_pending: bool,
    next_presence: Duration,
    next_tick: Duration,
    last_now: Duration,
    loss: BTreeMap<Source, f64>,
    encoder: (u32, u8),
    speaking: BTreeMap<UserId, SpeakingDetector>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    stats: SessionStats,
    ended: bool,
}

impl std::fmt::Debug for VoiceSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VoiceSession")
            .field("me", &self.me)
            .field("participants", &self.participants.len())
            .field("links", &self.links.len())
            .finish_non_exhaustive()
    }
}

impl VoiceSession {
    /// Joins `roster`'s channel at `now`: our own user must pass the gate.
    /// `key_seed` seeds the sender keys: 32 bytes of OS randomness in a
    /// real node, a constant in a test. The first presence is queued at
    /// once.
    pub fn new(
        config: SessionConfig,
        identity: SessionIdentity,
        roster: RosterSnapshot,
        socket: SocketInfo,
        key_seed: [u8; 32],
        now: Duration,
    ) -> Result<Self, LinkRefused> {
        let me = peer_id_of(&identity.binding.node).ok_or(Refusal::WrongNode)?;
        if identity.binding.node != identity.node_key.id() {
            return Err(Refusal::WrongNode.into());
        }
        let admitted = admit(
            &AdmitRequest {
                binding: &identity.binding,
                node: &me,
                room: roster.room,
                channel: roster.channel,
            },
            &roster,
        )?;
        let mut planner = PathPlanner::new(me, config.planner.clone());
        planner.set_channel(Some((roster.room, roster.channel)));
        let mut rng = KeyRng::new(key_seed);
        let own_key = OwnKey::new(0, &mut rng);
        let mut session = VoiceSession {
            punch_budget: Budget::new(config.punch_budget_per_second, config.punch_burst),
            answer_budget: Budget::new(config.answers_per_second, config.answer_burst),
            me,
            node_key: identity.node_key,
            binding: identity.binding,
            room: roster.room,
            channel: roster.channel,
            may_speak: admitted.may_speak,
            roster,
            socket,
            reflexive: None,
            planner,
            participants: BTreeMap::new(),
            links: BTreeMap::new(),
            dialing: BTreeMap::new(),
            relay: RelayState::Off,
            rng,
            own_key,
            keys: BTreeMap::new(),
            pending_shares: BTreeMap::new(),
            rotate_due: false,
            share_due: false,
            last_share: now,
            answer_pending: false,
            next_presence: now + PRESENCE_INTERVAL,
            next_tick: now,
            last_now: now,
            loss: BTreeMap::new(),
            encoder: (bitrate_for_loss(0.0), 0),
            speaking: BTreeMap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: SessionStats::default(),
            ended: false,
            config,
        };
        session.publish_presence(now);
        Ok(session)
    }

    /// Our PeerId.
    pub fn peer_id(&self) -> PeerId {
        self.me
    }

    /// Our user.
    pub fn user(&self) -> UserId {
        self.binding.user
    }

    /// The room and channel.
    pub fn channel(&self) -> (RoomId, ChannelId) {
        (self.room, self.channel)
    }

    /// Counters since the start.
    pub fn stats(&self) -> &SessionStats {
        &self.stats
    }

    /// Whether the session has ended (we left, or the roster refused us).
    pub fn is_ended(&self) -> bool {
        self.ended
    }

    /// Whether we are on the relay.
    pub fn is_relayed(&self) -> bool {
        matches!(self.relay, RelayState::Joined { .. })
    }

    /// Our current sender key's generation (rises at each rotation).
    pub fn key_generation(&self) -> u32 {
        self.own_key.generation()
    }

    /// The participants, by PeerId.
    pub fn participants(&self) -> Vec<ParticipantView> {
        self.participants
            .iter()
            .map(|(peer, p)| ParticipantView {
                peer: *peer,
                user: p.binding.user,
                may_speak: p.may_speak,
                path: self
                    .links
                    .contains_key(peer)
                    .then(|| self.planner.path(peer))
                    .flatten(),
                speaking: self
                    .speaking
                    .get(&p.binding.user)
                    .is_some_and(SpeakingDetector::speaking),
            })
            .collect()
    }

    /// Peers with a direct link up.
    pub fn links(&self) -> impl Iterator<Item = &PeerId> {
        self.links.keys()
    }

    /// The next datagram or punch to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next thing for the driver to do or know.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When to call [`Self::handle_timeout`] next (None once ended).
    pub fn poll_timeout(&self) -> Option<Duration> {
        if self.ended {
            return None;
        }
        let mut next = self.next_tick.min(self.next_presence);
        if self.answer_pending {
            next = next.min(self.answer_budget.next_token_at(self.last_now));
        }
        Some(next)
    }

    fn push_event(&mut self, event: Event) {
        if self.events.len() >= self.config.max_queued {
            self.events.pop_front();
            self.stats.outputs_dropped += 1;
        }
        self.events.push_back(event);
    }

    fn push_transmit(&mut self, transmit: Transmit) {
        if self.transmits.len() >= self.config.max_queued {
            self.transmits.pop_front();
            self.stats.outputs_dropped += 1;
        }
        self.transmits.push_back(transmit);
    }

    fn ignore(&mut self, peer: PeerId, reason: Ignored) {
        *self.stats.ignored.entry(reason).or_default() += 1;
        self.push_event(Event::Refused { peer, reason });
    }

    fn hello(&self) -> Hello {
        Hello {
            room: self.room,
            channel: self.channel,
            binding: self.binding.clone(),
            proof: Vec::new(),
        }
    }

    fn presence(&self, channel: Option<ChannelId>, now: Duration) -> Presence {
        let mut candidates: Vec<Candidate> =
            host_addresses(self.socket.bound, &self.socket.interfaces)
                .into_iter()
                .map(|addr| Candidate {
                    addr,
                    kind: CandidateKind::Host,
                })
                .collect();
        if let Some(r) = self.reflexive
            && !candidates.iter().any(|c| c.addr == r)
        {
            candidates.push(Candidate {
                addr: r,
                kind: CandidateKind::Reflexive,
            });
        }
        candidates.truncate(MAX_CANDIDATES);
        Presence {
            binding: self.binding.clone(),
            room: self.room,
            channel,
            candidates,
            relayed: self.is_relayed(),
            sent_ms: self.config.origin_ms + now.as_millis() as u64,
        }
    }

    fn publish(&mut self, signal: &VoiceSignal) -> bool {
        match signal.encode() {
            Ok(signal) => {
                self.push_event(Event::Publish { signal });
                true
            }
            // Only a key share to more participants than a signal holds;
            // max_peers keeps well under it.
            Err(_) => false,
        }
    }

    fn publish_presence(&mut self, now: Duration) {
        let presence = self.presence(Some(self.channel), now);
        if self.publish(&VoiceSignal::Presence(presence)) {
            self.stats.presences_published += 1;
        }
        self.next_presence = now + PRESENCE_INTERVAL;
        self.answer_pending = false;
    }

    // ---- inputs -------------------------------------------------------

    /// Our socket's addresses changed (or became known).
    pub fn handle_socket(&mut self, socket: SocketInfo, now: Duration) {
        self.socket = socket;
        self.answer_pending = true;
        self.flush(now);
    }

    /// Our voice socket's public address, as a relay or a peer saw it.
    pub fn handle_reflexive(&mut self, addr: SocketAddr, now: Duration) {
        if self.reflexive != Some(addr) {
            self.reflexive = Some(addr);
            self.answer_pending = true;
        }
        self.flush(now);
    }

    /// A new roster for our channel (after any membership or permission
    /// change): every participant, link and relay speaker is checked again;
    /// refused ones are closed and forgotten at once. If we are refused
    /// ourselves, the session ends.
    pub fn handle_roster(&mut self, roster: RosterSnapshot, now: Duration) {
        if self.ended || (roster.room, roster.channel) != (self.room, self.channel) {
            return;
        }
        self.roster = roster;
        match admit_user(&self.binding.user, &self.roster) {
            Ok(a) => self.may_speak = a.may_speak,
            Err(_) => {
                self.end(now);
                return;
            }
        }
        let peers: Vec<(PeerId, UserId)> = self
            .participants
            .iter()
            .map(|(p, x)| (*p, x.binding.user))
            .collect();
        for (peer, user) in peers {
            match admit_user(&user, &self.roster) {
                Ok(a) => {
                    if let Some(p) = self.participants.get_mut(&peer) {
                        p.may_speak = a.may_speak;
                    }
                }
                Err(r) => self.remove_peer(peer, CloseReason::Refused(r)),
            }
        }
        self.audit_relay();
        self.flush(now);
    }

    /// A signal published on the room's voice topic by `from` (the
    /// publisher gossipsub proved).
    pub fn handle_signal(&mut self, from: PeerId, bytes: &[u8], now: Duration) {
        if self.ended || from == self.me {
            return;
        }
        self.last_now = self.last_now.max(now);
        match VoiceSignal::decode(bytes) {
            Err(_) => self.ignore(from, Ignored::Malformed),
            Ok(VoiceSignal::Presence(p)) => self.on_presence(from, p, now),
            Ok(VoiceSignal::KeyShare(k)) => self.on_key_share(from, k, now),
        }
        self.flush(now);
    }

    fn nodes_of(&self, user: &UserId) -> usize {
        self.participants
            .values()
            .filter(|p| p.binding.user == *user)
            .count()
    }

    /// Takes `peer` (whose binding the gate admitted) as a participant, or
    /// says why not. `presence` goes to the planner.
    fn take_participant(
        &mut self,
        peer: PeerId,
        binding: &NodeBinding,
        may_speak: bool,
        presence: Presence,
        now: Duration,
    ) -> Result<(), Ignored> {
        if let Some(p) = self.participants.get(&peer) {
            if p.binding.user == binding.user {
                if let Some(p) = self.participants.get_mut(&peer) {
                    p.binding = binding.clone();
                    p.may_speak = may_speak;
                }
                self.planner.on_presence(&peer, presence, now);
                return Ok(());
            }
            // The node now speaks for another user: it starts over.
            self.remove_peer(peer, CloseReason::Left);
        }
        if self.nodes_of(&binding.user) >= self.config.max_nodes_per_user {
            return Err(Ignored::TooManyNodes);
        }
        if !self.planner.on_presence(&peer, presence, now) {
            return Err(Ignored::Full);
        }
        self.participants.insert(
            peer,
            Participant {
                binding: binding.clone(),
                may_speak,
            },
        );
        self.push_event(Event::ParticipantJoined {
            peer,
            user: binding.user,
        });
        // The newcomer needs our key and our addresses, now.
        self.share_due = true;
        self.answer_pending = true;
        if let Some((share, at)) = self.pending_shares.remove(&peer)
            && now.saturating_sub(at) < PENDING_SHARE_TTL
        {
            self.on_key_share(peer, share, now);
        }
        Ok(())
    }

    fn on_presence(&mut self, from: PeerId, mut presence: Presence, now: Duration) {
        if presence.room != self.room {
            self.ignore(from, Ignored::Gate(Refusal::WrongRoom));
            return;
        }
        if presence.channel != Some(self.channel) {
            // It left our channel, or is in another: only the publisher
            // itself can say so (gossipsub proved `from`).
            if self.participants.contains_key(&from) {
                self.remove_peer(from, CloseReason::Left);
            }
            return;
        }
        let admitted = admit(
            &AdmitRequest {
                binding: &presence.binding,
                node: &from,
                room: presence.room,
                channel: self.channel,
            },
            &self.roster,
        );
        let admitted = match admitted {
            Ok(a) => a,
            Err(r) => {
                // Ignored, and nothing else: a bad presence does not unseat
                // a participant whose binding was verified before (the
                // roster, pushed by the driver, is what removes members).
                self.ignore(from, Ignored::Gate(r));
                return;
            }
        };
        let (kept, refused) = filter_candidates(
            &presence.candidates,
            self.socket.bound,
            &self.socket.interfaces,
        );
        self.stats.candidates_refused += refused.len() as u64;
        presence.candidates = kept;
        let binding = presence.binding.clone();
        if let Err(reason) =
            self.take_participant(from, &binding, admitted.may_speak, presence, now)
        {
            self.ignore(from, reason);
        }
    }

    fn on_key_share(&mut self, from: PeerId, share: KeyShare, now: Duration) {
        if (share.room, share.channel) != (self.room, self.channel) {
            self.ignore(from, Ignored::Gate(Refusal::WrongChannel));
            return;
        }
        let Some(sender) = self.participants.get(&from).map(|p| p.binding.node) else {
            // Perhaps its presence is still on the way: hold the share
            // (bounded; the oldest goes first) until the node is admitted.
            self.pending_shares
                .retain(|_, (_, at)| now.saturating_sub(*at) < PENDING_SHARE_TTL);
            if !self.pending_shares.contains_key(&from)
                && self.pending_shares.len() >= MAX_PENDING_SHARES
                && let Some(oldest) = self
                    .pending_shares
                    .iter()
                    .min_by_key(|(_, (_, at))| *at)
                    .map(|(p, _)| *p)
            {
                self.pending_shares.remove(&oldest);
            }
            self.pending_shares.insert(from, (share, now));
            self.ignore(from, Ignored::NotParticipant);
            return;
        };
        if share.key_id != share.generation as u8 {
            self.ignore(from, Ignored::Malformed);
            return;
        }
        let context = key_share_context(
            &self.room,
            &self.channel,
            &sender,
            share.key_id,
            share.generation,
        );
        let Some(opened) = open_envelope(&share.envelopes, &self.node_key, &context) else {
            self.ignore(from, Ignored::KeyNotForUs);
            return;
        };
        let Ok(secret) = <[u8; SENDER_KEY_LEN]>::try_from(opened.as_slice()) else {
            self.ignore(from, Ignored::Malformed);
            return;
        };
        let grace = self.config.key_grace;
        let installed =
            self.keys
                .entry(from)
                .or_default()
                .install(share.generation, secret, now, grace);
        if installed == Installed::Stale {
            self.ignore(from, Ignored::StaleKey);
        }
    }

    /// A dialler's hello arrived on a new link; `from` is the PeerId TLS
    /// proved and `remote` the address it connected from. Returns the
    /// answer to send; on a welcome the link is up.
    pub fn handle_hello(
        &mut self,
        from: PeerId,
        hello: &Hello,
        remote: SocketAddr,
        now: Duration,
    ) -> Answer {
        let outcome = self.accept_hello(from, hello, remote, now);
        self.flush(now);
        match outcome {
            Ok(()) => Answer::Welcome(Welcome {
                observed: remote,
                speaker: 0,
                speakers: Vec::new(),
            }),
            Err(e) => Answer::Refused(Refused {
                reason: e.to_string(),
            }),
        }
    }

    fn accept_hello(
        &mut self,
        from: PeerId,
        hello: &Hello,
        remote: SocketAddr,
        now: Duration,
    ) -> Result<(), LinkRefused> {
        if self.ended {
            return Err(LinkRefused::Ended);
        }
        let admitted = admit(
            &AdmitRequest {
                binding: &hello.binding,
                node: &from,
                room: hello.room,
                channel: hello.channel,
            },
            &self.roster,
        );
        let admitted = match admitted {
            Ok(a) => a,
            Err(r) => {
                self.ignore(from, Ignored::Gate(r));
                return Err(r.into());
            }
        };
        // One link per pair: where both sides dialled, the connection the
        // smaller PeerId dialled is the one both keep. A hello from the
        // larger side while a link is up is refused; one from the smaller
        // side replaces the link (the driver closes the old connection).
        let canonical = dials_first(&from, &self.me);
        if self.links.contains_key(&from) && !canonical {
            self.ignore(from, Ignored::AlreadyLinked);
            return Err(LinkRefused::AlreadyLinked);
        }
        let known = self
            .participants
            .get(&from)
            .is_some_and(|p| p.binding.user == hello.binding.user);
        if !known {
            // A dialler we have not heard yet (its presence is on the way),
            // or one that now speaks for another user: it stands in the
            // planner with no candidates until its presence comes.
            let presence = Presence {
                binding: hello.binding.clone(),
                room: self.room,
                channel: Some(self.channel),
                candidates: Vec::new(),
                relayed: false,
                sent_ms: 0,
            };
            if let Err(reason) =
                self.take_participant(from, &hello.binding, admitted.may_speak, presence, now)
            {
                self.ignore(from, reason);
                return Err(LinkRefused::Full);
            }
        }
        // Our own dial to a larger peer goes on (its connection is the one
        // to keep if it comes up); one to a smaller peer is moot now.
        if canonical {
            self.dialing.remove(&from);
        }
        self.link_up(from, hello.binding.user, remote);
        Ok(())
    }

    fn link_up(&mut self, peer: PeerId, user: UserId, remote: SocketAddr) {
        self.planner.on_connected(&peer, remote);
        self.links.insert(peer, VoiceLink { user });
    }

    /// The peer we dialled welcomed us; `remote` is where the connection
    /// went. Runs the gate on the peer again (its presence was admitted
    /// earlier; the roster may have changed since).
    pub fn handle_welcome(
        &mut self,
        from: PeerId,
        welcome: &Welcome,
        remote: SocketAddr,
        now: Duration,
    ) -> Result<(), LinkRefused> {
        let outcome = self.accept_welcome(from, welcome, remote);
        self.flush(now);
        outcome
    }

    fn accept_welcome(
        &mut self,
        from: PeerId,
        welcome: &Welcome,
        remote: SocketAddr,
    ) -> Result<(), LinkRefused> {
        if self.ended {
            return Err(LinkRefused::Ended);
        }
        if !self.dialing.contains_key(&from) {
            // Our dial was called off because the smaller side's
            // connection came up: that one is the pair's link.
            let reason = if self.links.contains_key(&from) {
                Ignored::AlreadyLinked
            } else {
                Ignored::NotDialing
            };
            self.ignore(from, reason);
            return Err(match reason {
                Ignored::AlreadyLinked => LinkRefused::AlreadyLinked,
                _ => LinkRefused::NotDialing,
            });
        }
        let Some(user) = self.participants.get(&from).map(|p| p.binding.user) else {
            self.ignore(from, Ignored::NotDialing);
            return Err(LinkRefused::NotDialing);
        };
        if let Err(r) = admit_user(&user, &self.roster) {
            self.remove_peer(from, CloseReason::Refused(r));
            return Err(r.into());
        }
        self.dialing.remove(&from);
        if self.links.contains_key(&from) && !dials_first(&self.me, &from) {
            // The smaller side's connection is up already; ours goes.
            self.ignore(from, Ignored::AlreadyLinked);
            return Err(LinkRefused::AlreadyLinked);
        }
        if !is_private(welcome.observed.ip()) && self.reflexive.is_none() {
            self.reflexive = Some(welcome.observed);
            self.answer_pending = true;
        }
        self.link_up(from, user, remote);
        Ok(())
    }

    /// A dial to `peer` failed (no candidate answered, TLS failed, refused).
    pub fn handle_dial_failed(&mut self, peer: PeerId, now: Duration) {
        // A link the other side dialled may be up meanwhile: it stays.
        if self.dialing.remove(&peer).is_some() && !self.links.contains_key(&peer) {
            self.planner.on_disconnected(&peer, now);
        }
        self.flush(now);
    }

    /// The link to `peer` closed (its end, an idle timeout, or ours).
    pub fn handle_link_closed(&mut self, peer: PeerId, now: Duration) {
        if self.links.remove(&peer).is_some() {
            self.planner.on_disconnected(&peer, now);
            self.loss.remove(&Source::Peer(peer));
        }
        self.flush(now);
    }

    /// The relay took us in with `speaker` as our index; `speakers` is its
    /// table of who holds which index.
    pub fn handle_relay_joined(&mut self, speaker: u16, speakers: &[SpeakerEntry], now: Duration) {
        if self.ended {
            return;
        }
        let table = speakers
            .iter()
            .take(self.config.max_relay_speakers)
            .map(|e| (e.speaker, e.user))
            .collect();
        self.relay = RelayState::Joined {
            speaker,
            speakers: table,
            unneeded_since: None,
        };
        self.audit_relay();
        // Peers that cannot reach us directly should join too.
        self.publish_presence(now);
        self.flush(now);
    }

    /// News from the relay about its speaker table.
    pub fn handle_relay_update(&mut self, update: &Update, now: Duration) {
        let max = self.config.max_relay_speakers;
        if let RelayState::Joined { speakers, .. } = &mut self.relay {
            match update {
                Update::SpeakerJoined(e) => {
                    if speakers.len() < max || speakers.contains_key(&e.speaker) {
                        speakers.insert(e.speaker, e.user);
                    }
                }
                Update::SpeakerLeft(i) => {
                    speakers.remove(i);
                }
            }
        }
        self.audit_relay();
        self.flush(now);
    }

    /// The relay link closed or the join failed.
    pub fn handle_relay_closed(&mut self, now: Duration) {
        self.relay = RelayState::Off;
        self.loss.remove(&Source::Relay);
        self.flush(now);
    }

    fn audit_relay(&mut self) {
        let RelayState::Joined { speakers, .. } = &self.relay else {
            return;
        };
        let refused: Vec<(UserId, Refusal)> = speakers
            .values()
            .filter_map(|u| admit_user(u, &self.roster).err().map(|r| (*u, r)))
            .collect();
        for (user, reason) in refused {
            self.push_event(Event::RelayEvidence { user, reason });
        }
    }

    /// The share of our packets lost on a link over the last interval (0.0
    /// to 1.0): QUIC's count today, the receiver's report later. The worst
    /// over all links sets the encoder.
    pub fn handle_loss(&mut self, link: Source, loss: f64, now: Duration) {
        let known = match link {
            Source::Peer(p) => self.links.contains_key(&p),
            Source::Relay => self.is_relayed(),
        };
        if known && loss.is_finite() {
            self.loss.insert(link, loss.clamp(0.0, 1.0));
        }
        let worst = self.loss.values().copied().fold(0.0, f64::max);
        let encoder = (bitrate_for_loss(worst), expected_loss_percent(worst));
        if encoder != self.encoder {
            self.encoder = encoder;
            self.push_event(Event::SetEncoder {
                bitrate_bps: encoder.0,
                expected_loss_percent: encoder.1,
            });
        }
        self.flush(now);
    }

    /// The level (dBFS) of a voice over the last frame: ours (`None`) from
    /// the microphone, a participant's from its decoded audio.
    pub fn handle_level(&mut self, user: Option<UserId>, level_dbfs: f32, now: Duration) {
        let user = user.unwrap_or(self.binding.user);
        let known =
            user == self.binding.user || self.participants.values().any(|p| p.binding.user == user);
        if !known {
            return;
        }
        let (threshold, hold) = (
            self.config.speaking_threshold_dbfs,
            self.config.speaking_hold,
        );
        let changed = self
            .speaking
            .entry(user)
            .or_insert_with(|| SpeakingDetector::new(threshold, hold))
            .on_level(level_dbfs, now);
        if let Some(speaking) = changed {
            self.push_event(Event::Speaking { user, speaking });
        }
    }

    /// A datagram from a link or the relay. Says what became of it (the
    /// same is counted in [`SessionStats`]), so that a driver can keep
    /// per-link counters.
    pub fn handle_datagram(&mut self, source: Source, bytes: &[u8], now: Duration) -> Received {
        let outcome = self.take_datagram(source, bytes, now);
        let counter = match outcome {
            Received::Opened(_) => &mut self.stats.frames_received,
            Received::Plaintext => &mut self.stats.dropped_plaintext,
            Received::Malformed => &mut self.stats.dropped_malformed,
            Received::NoLink => &mut self.stats.dropped_no_link,
            Received::UnknownSpeaker => &mut self.stats.dropped_unknown_speaker,
            Received::Forbidden => &mut self.stats.dropped_forbidden,
            Received::NoKey => &mut self.stats.dropped_no_key,
            Received::BadTag => &mut self.stats.dropped_bad_tag,
            Received::Replay => &mut self.stats.dropped_replay,
            Received::Ended => return outcome,
        };
        *counter += 1;
        outcome
    }

    fn take_datagram(&mut self, source: Source, bytes: &[u8], now: Duration) -> Received {
        if self.ended {
            return Received::Ended;
        }
        let frame = match SealedFrame::parse(bytes) {
            Ok(f) => f,
            Err(_) if bytes.first() == Some(&tincan_media::protocol::VERSION) => {
                return Received::Plaintext;
            }
            Err(_) => return Received::Malformed,
        };
        let (user, senders): (UserId, Vec<PeerId>) = match source {
            Source::Peer(peer) => {
                let Some(link) = self.links.get(&peer) else {
                    return Received::NoLink;
                };
                if frame.header.speaker != 0 || frame.header.channel != 0 {
                    return Received::NoLink;
                }
                (link.user, vec![peer])
            }
            Source::Relay => {
                let RelayState::Joined { speakers, .. } = &self.relay else {
                    return Received::NoLink;
                };
                let Some(user) = speakers.get(&frame.header.speaker).copied() else {
                    return Received::UnknownSpeaker;
                };
                let senders = self
                    .participants
                    .iter()
                    .filter(|(_, p)| p.binding.user == user)
                    .map(|(peer, _)| *peer)
                    .collect();
                (user, senders)
            }
        };
        if !self.roster.entry(&user).may_speak || admit_user(&user, &self.roster).is_err() {
            return Received::Forbidden;
        }
        let mut outcome = None;
        for peer in senders {
            let Some(key) = self
                .keys
                .get_mut(&peer)
                .and_then(|k| k.get_mut(frame.key_id, now))
            else {
                continue;
            };
            if !key.replay.is_new(frame.header.sequence) {
                outcome = Some(Err(None));
                break;
            }
            match open_frame(key.frame_key(), &frame) {
                Ok(opened) => {
                    key.replay.mark(frame.header.sequence);
                    outcome = Some(Ok(opened));
                    break;
                }
                Err(e) => outcome = Some(Err(Some(e))),
            }
        }
        match outcome {
            None => Received::NoKey,
            Some(Err(None)) => Received::Replay,
            // A bad tag, or (from a key holder) a bad plaintext.
            Some(Err(Some(_))) => Received::BadTag,
            Some(Ok(opened)) => {
                let end_of_spurt = opened.end_of_spurt();
                self.push_event(Event::Voice {
                    user,
                    packet: VoicePacket {
                        sequence: opened.header.sequence,
                        timestamp: opened.header.timestamp,
                        payload: opened.payload,
                        redundant: opened.redundant,
                    },
                    end_of_spurt,
                    arrived_at: now,
                });
                Received::Opened(user)
            }
        }
    }

    /// Seals one encoded frame of ours and queues it to every link and the
    /// relay. Nothing is sent while the roster says we may not speak.
    pub fn send_voice(&mut self, packet: &VoicePacket, end_of_spurt: bool, now: Duration) {
        if self.ended {
            return;
        }
        if !self.may_speak {
            self.stats.frames_not_allowed += 1;
            return;
        }
        let relay_speaker = match &self.relay {
            RelayState::Joined { speaker, .. } => Some(*speaker),
            _ => None,
        };
        if self.links.is_empty() && relay_speaker.is_none() {
            return;
        }
        if !self.own_key.can_seal(packet.sequence) {
            // The sequence went back (an encoder restarted): a nonce would
            // repeat under this key, so draw a new one first.
            self.rotate();
            self.flush(now);
        }
        let Some(key) = self.own_key.seal_key(packet.sequence) else {
            return;
        };
        let mut bytes = Vec::new();
        let sealed = seal_frame(
            key,
            &PlainFrame {
                sequence: packet.sequence,
                timestamp: packet.timestamp,
                end_of_spurt,
                payload: &packet.payload,
                redundant: packet.redundant.as_deref(),
            },
            &mut bytes,
        );
        if sealed.is_err() {
            return;
        }
        self.stats.frames_sent += 1;
        let peers: Vec<PeerId> = self.links.keys().copied().collect();
        for peer in peers {
            self.push_transmit(Transmit::Datagram {
                to: Source::Peer(peer),
                bytes: bytes.clone(),
            });
        }
        if let Some(speaker) = relay_speaker {
            set_speaker(&mut bytes, speaker);
            self.push_transmit(Transmit::Datagram {
                to: Source::Relay,
                bytes,
            });
        }
    }

    /// Leaves the channel: a leaving presence, every link closed, off the
    /// relay. The session ends.
    pub fn leave(&mut self, now: Duration) {
        if self.ended {
            return;
        }
        let presence = self.presence(None, now);
        if self.publish(&VoiceSignal::Presence(presence)) {
            self.stats.presences_published += 1;
        }
        self.end(now);
    }

    fn end(&mut self, _now: Duration) {
        let peers: Vec<PeerId> = self
            .participants
            .keys()
            .chain(self.dialing.keys())
            .copied()
            .collect();
        for peer in peers {
            self.remove_peer(peer, CloseReason::SessionEnded);
        }
        if !matches!(self.relay, RelayState::Off) {
            self.push_event(Event::LeaveRelay);
            self.relay = RelayState::Off;
        }
        self.ended = true;
        self.rotate_due = false;
        self.share_due = false;
        self.answer_pending = false;
    }

    /// Forgets a peer: one `Close` if it had a link or a dial under way,
    /// and a key rotation if it was a participant.
    fn remove_peer(&mut self, peer: PeerId, reason: CloseReason) {
        let was_linked = self.links.remove(&peer).is_some();
        let was_dialing = self.dialing.remove(&peer).is_some();
        if was_linked || was_dialing {
            self.push_event(Event::Close { peer, reason });
        }
        self.planner.remove(&peer);
        self.keys.remove(&peer);
        self.pending_shares.remove(&peer);
        self.loss.remove(&Source::Peer(peer));
        if let Some(p) = self.participants.remove(&peer) {
            let user = p.binding.user;
            if self.nodes_of(&user) == 0 {
                self.speaking.remove(&user);
            }
            self.push_event(Event::ParticipantLeft { peer, user });
            // Whoever left must not open what we say from now on.
            self.rotate_due = true;
        }
    }

    fn rotate(&mut self) {
        let generation = self.own_key.generation().wrapping_add(1);
        self.own_key = OwnKey::new(generation, &mut self.rng);
        self.stats.rotations += 1;
        self.share_due = true;
    }

    fn share_key(&mut self, now: Duration) {
        self.share_due = false;
        self.last_share = now;
        let recipients: Vec<[u8; 32]> = self
            .participants
            .values()
            .map(|p| p.binding.node.0)
            .collect();
        if recipients.is_empty() {
            return;
        }
        let node = self.binding.node;
        let (key_id, generation) = (self.own_key.key_id(), self.own_key.generation());
        let context = key_share_context(&self.room, &self.channel, &node, key_id, generation);
        // One signal holds as many envelopes as fit in what the mesh
        // carries; a larger channel gets the key in several signals, each
        // sealed with an ephemeral key of its own.
        for chunk in recipients.chunks(envelopes_per_signal(self.config.max_signal_len)) {
            let ephemeral = self.rng.next_key();
            let Ok(envelopes) = seal_to_with(&ephemeral, chunk, self.own_key.secret(), &context)
            else {
                continue;
            };
            let share = VoiceSignal::KeyShare(KeyShare {
                room: self.room,
                channel: self.channel,
                key_id,
                generation,
                envelopes,
            });
            if self.publish(&share) {
                self.stats.key_shares_published += 1;
            }
        }
    }

    /// Work every input may leave: a rotation, a key share, an answer.
    fn flush(&mut self, now: Duration) {
        self.last_now = self.last_now.max(now);
        if self.ended {
            return;
        }
        if self.rotate_due {
            self.rotate_due = false;
            self.rotate();
        }
        if self.answer_pending && self.answer_budget.try_take(now) {
            self.publish_presence(now);
        }
        if self.share_due {
            self.share_key(now);
        }
    }

    /// Runs the timers due at `now`: the planner (dials, punches, stale
    /// peers, the relay), dial and relay timeouts, speaking hold, the
    /// regular presence and key re-share.
    pub fn handle_timeout(&mut self, now: Duration) {
        if self.ended {
            return;
        }
        self.last_now = self.last_now.max(now);
        if now >= self.next_tick {
            self.next_tick = now + self.config.tick;
            self.run_planner(now);
            let silent: Vec<UserId> = self
                .speaking
                .iter_mut()
                .filter_map(|(u, d)| d.update(now).map(|_| *u))
                .collect();
            for user in silent {
                self.push_event(Event::Speaking {
                    user,
                    speaking: false,
                });
            }
            if !self.participants.is_empty()
                && now.saturating_sub(self.last_share) >= self.config.key_reshare_every
            {
                self.share_due = true;
            }
        }
        if now >= self.next_presence {
            self.publish_presence(now);
        }
        self.flush(now);
    }

    fn run_planner(&mut self, now: Duration) {
        let timed_out: Vec<PeerId> = self
            .dialing
            .iter()
            .filter(|(_, at)| now.saturating_sub(**at) >= self.config.dial_timeout)
            .map(|(p, _)| *p)
            .collect();
        for peer in timed_out {
            self.dialing.remove(&peer);
            if self.links.contains_key(&peer) {
                // The other side's dial brought the link; the driver drops
                // whatever our dial brings later (a welcome we no longer
                // wait for is refused).
                continue;
            }
            self.planner.on_disconnected(&peer, now);
            self.push_event(Event::Close {
                peer,
                reason: CloseReason::DialTimeout,
            });
        }
        for action in self.planner.poll(now) {
            match action {
                Action::Dial { peer, addrs } => {
                    // The gate again, before we reach out.
                    let refused = match self.participants.get(&peer) {
                        Some(p) => admit_user(&p.binding.user, &self.roster).err(),
                        None => Some(Refusal::NotMember),
                    };
                    if let Some(r) = refused {
                        self.remove_peer(peer, CloseReason::Refused(r));
                        continue;
                    }
                    // A dial sends a QUIC Initial to each address: it
                    // spends the same budget as punches, and no more than
                    // max_dial_addrs addresses are tried at once.
                    let mut usable = Vec::with_capacity(addrs.len());
                    for addr in addrs.into_iter().take(self.config.max_dial_addrs) {
                        if self.punch_budget.try_take(now) {
                            usable.push(addr);
                        } else {
                            self.stats.dial_addrs_over_budget += 1;
                        }
                    }
                    if usable.is_empty() {
                        // Tried again after the planner's redial delay.
                        self.planner.on_disconnected(&peer, now);
                        continue;
                    }
                    self.dialing.insert(peer, now);
                    let hello = self.hello();
                    self.push_event(Event::Dial {
                        peer,
                        addrs: usable,
                        hello,
                    });
                }
                Action::Punch { peer: _, addrs } => {
                    for to in addrs {
                        if self.punch_budget.try_take(now) {
                            self.stats.punches_sent += 1;
                            self.push_transmit(Transmit::Punch { to });
                        } else {
                            self.stats.punches_over_budget += 1;
                        }
                    }
                }
                Action::Forget { peer } => self.remove_peer(peer, CloseReason::TimedOut),
            }
        }
        let needs_relay = self.planner.needs_relay(now);
        let linger = self.config.relay_linger;
        match &mut self.relay {
            RelayState::Joining { since }
                if now.saturating_sub(*since) >= self.config.relay_join_timeout =>
            {
                self.relay = RelayState::Off;
            }
            RelayState::Off if self.config.relay_available && needs_relay => {
                self.relay = RelayState::Joining { since: now };
                let hello = self.hello();
                self.push_event(Event::JoinRelay { hello });
            }
            RelayState::Joined { unneeded_since, .. } => {
                if needs_relay {
                    *unneeded_since = None;
                } else if now.saturating_sub(*unneeded_since.get_or_insert(now)) >= linger {
                    // Everyone has a direct link: one upload per link is
                    // all they need, and the relay no longer carries us.
                    self.relay = RelayState::Off;
                    self.loss.remove(&Source::Relay);
                    self.push_event(Event::LeaveRelay);
                    self.answer_pending = true;
                }
            }
            _ => {}
        }
    }
}
