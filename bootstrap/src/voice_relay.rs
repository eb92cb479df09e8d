//! The community voice relay: one upload from each player, fanned out to the
//! others in the same voice channel, for players whose NATs cannot be
//! punched or who would rather upload one stream than ten.
//!
//! It runs a [`VoiceEndpoint`] with the bootstrap node's key, so nodes dial
//! it by the same PeerId as its libp2p identity. On each connection it
//! accepts the control stream and reads one [`Request`] (size-limited, and
//! within [`VoiceRelaySettings::handshake_timeout`], so a silent dialler
//! cannot hold a slot):
//! - [`Request::Observe`]: it answers the address it sees the dialler at:
//!   how a node learns its voice socket's public address before punching;
//! - [`Request::Join`]: it checks the [`Hello`] (the user's binding is
//!   signed and names the node TLS proved; every proof record is signed;
//!   the rules, run on an empty store holding only the proof, say the user
//!   is a member of the room, the channel exists and they may listen in it),
//!   puts the connection in the channel's fan-out group of the sans-IO
//!   [`Relay`], answers [`Welcome`] with the speaker index and the table of
//!   the others, and tells the others [`Update::SpeakerJoined`] (and
//!   [`Update::SpeakerLeft`] when one goes). Anything else gets
//!   [`Answer::Refused`] with a reason for the user, then the connection
//!   closes.
//!
//! Datagrams go `recv_bytes` -> [`Relay::on_datagram`] -> `send_encoded` to
//! each other member: the same bytes, never copied, never decoded past the
//! 13-byte header, never queued (quinn drops the oldest when a member's
//! send buffer of a few frames is full). Per-connection token buckets cap
//! each sender; everything dropped is counted by reason ([`VoiceRelayStats`]).
//!
//! Bounds: connections at once ([`VoiceRelaySettings::max_connections`];
//! a full relay refuses new ones with a reason, a bounded number at a time,
//! and closes the rest without a word), groups and members
//! ([`RelayConfig`]), a control message ([`MAX_CONTROL_MESSAGE`]), a proof
//! ([`MAX_PROOF_RECORDS`] records), the updates queued for one member
//! ([`UPDATE_QUEUE`]; a member that falls that far behind is disconnected,
//! since its speaker table would be wrong). The relay keeps no room state:
//! each join is checked against a store built for that check alone and
//! dropped after it, so nothing grows with the number of rooms seen.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Deserialize;
use tincan_core::permissions::{Action, allows};
use tincan_core::{ChannelId, RoomId};
use tincan_core::{EpochToken, ProofItem, SignedRecord, UserId};
use tincan_media::control::{
    Answer, Evidence, Hello, MAX_CONTROL_MESSAGE, MAX_MEMBER_MESSAGE, MAX_PROOF_RECORDS,
    MemberMessage, Refused, Request, SpeakerEntry, Update, Welcome, read_frame, read_message,
    write_message,
};
use tincan_media::relay::Forward;
use tincan_media::{
    ConnId, EndpointConfig, GroupKey, Relay, RelayConfig, RelayStats, VoiceConnection,
    VoiceEndpoint,
};
use tincan_store::{EpochProof, Store, StoreConfig, check_epoch_proof, grant_epoch_of};
use tokio::sync::mpsc;

/// Updates queued for one member's control stream before it counts as too
/// slow and is disconnected. A group has at most `max_members` members, so
/// a healthy member never has more than a few waiting.
pub const UPDATE_QUEUE: usize = 256;

/// `[voice_relay]` in the configuration. Every key is optional.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VoiceRelayConfig {
    /// Run the voice relay (default: yes).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// UDP address of the voice endpoint (default `0.0.0.0:4434`).
    #[serde(default = "default_voice_listen")]
    pub listen: String,
    /// Connections at once, joined or not (default 1024).
    pub max_connections: Option<usize>,
    /// Voice channels served at once (default 1024).
    pub max_groups: Option<usize>,
    /// Members per voice channel (default 64).
    pub max_members: Option<usize>,
    /// Datagrams a second each member may send (default 200).
    pub datagrams_per_second: Option<u64>,
    /// Datagrams a member may send in a burst above that (default 50).
    pub datagram_burst: Option<u64>,
    /// Bytes a second each member may send (default 50 000).
    pub bytes_per_second: Option<u64>,
    /// Bytes a member may send in a burst above that (default 12 500).
    pub byte_burst: Option<u64>,
    /// Seconds a dialler has to open its control stream and send its
    /// request (default 5).
    pub handshake_timeout_secs: Option<u64>,
    /// Seconds between two counter lines in the log (default 60; 0: never).
    pub stats_interval_secs: Option<u64>,
}

impl Default for VoiceRelayConfig {
    fn default() -> Self {
        VoiceRelayConfig {
            enabled: true,
            listen: default_voice_listen(),
            max_connections: None,
            max_groups: None,
            max_members: None,
            datagrams_per_second: None,
            datagram_burst: None,
            bytes_per_second: None,
            byte_burst: None,
            handshake_timeout_secs: None,
            stats_interval_secs: None,
        }
    }
}

fn yes() -> bool {
    true
}

fn default_voice_listen() -> String {
    "0.0.0.0:4434".into()
}

impl VoiceRelayConfig {
    /// The settings, with defaults for what is not set; `None` when disabled.
    pub fn settings(&self) -> Result<Option<VoiceRelaySettings>> {
        if !self.enabled {
            return Ok(None);
        }
        let listen: SocketAddr = self.listen.parse().map_err(|e| {
            anyhow::anyhow!(
                "voice_relay.listen: {:?} is not an IP address and port such as 0.0.0.0:4434: {e}",
                self.listen
            )
        })?;
        let d = VoiceRelaySettings::new(listen);
        let l = &d.limits;
        let limits = RelayConfig {
            max_groups: self.max_groups.unwrap_or(l.max_groups),
            max_members: self.max_members.unwrap_or(l.max_members),
            datagrams_per_second: self.datagrams_per_second.unwrap_or(l.datagrams_per_second),
            datagram_burst: self.datagram_burst.unwrap_or(l.datagram_burst),
            bytes_per_second: self.bytes_per_second.unwrap_or(l.bytes_per_second),
            byte_burst: self.byte_burst.unwrap_or(l.byte_burst),
            sealed_only: l.sealed_only,
        };
        if limits.max_members > usize::from(u16::MAX) + 1 {
            anyhow::bail!(
                "voice_relay.max_members is {}, over the 65536 speaker indexes a datagram can name",
                limits.max_members
            );
        }
        Ok(Some(VoiceRelaySettings {
            max_connections: self.max_connections.unwrap_or(d.max_connections),
            handshake_timeout: self
                .handshake_timeout_secs
                .map_or(d.handshake_timeout, Duration::from_secs),
            stats_interval: self
                .stats_interval_secs
                .map_or(d.stats_interval, Duration::from_secs),
            limits,
            ..d
        }))
    }
}

/// How a voice relay runs.
#[derive(Clone, Debug)]
pub struct VoiceRelaySettings {
    /// UDP address of the voice endpoint.
    pub listen: SocketAddr,
    /// Groups, members and per-member rate caps.
    pub limits: RelayConfig,
    /// Connections at once, joined or not; past it new ones are refused.
    pub max_connections: usize,
    /// Time a dialler has to open its control stream and send its request.
    pub handshake_timeout: Duration,
    /// Time between two counter lines in the log; zero: never.
    pub stats_interval: Duration,
    /// The voice endpoint's tuning (send buffer, keep-alive, idle timeout).
    pub endpoint: EndpointConfig,
    /// Nodes whose connections are closed at once (the operator's
    /// blocklist, `blocked_peers` in the configuration).
    pub blocked: std::collections::HashSet<tincan_mesh::PeerId>,
}

impl VoiceRelaySettings {
    /// Defaults on `listen`.
    pub fn new(listen: SocketAddr) -> Self {
        VoiceRelaySettings {
            listen,
            // Forwards only frames sealed end to end (every node seals
            // them): plaintext would let the relay hear the channel.
            limits: RelayConfig::default(),
            max_connections: 1024,
            handshake_timeout: Duration::from_secs(5),
            stats_interval: Duration::from_secs(60),
            endpoint: EndpointConfig::default(),
            blocked: Default::default(),
        }
    }
}

/// The relay's counters since it started.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VoiceRelayStats {
    /// The forwarding logic's counters: received, forwarded (one per copy),
    /// and dropped by reason (not joined, malformed, wrong speaker, rate).
    pub relay: RelayStats,
    /// Copies quinn would not take (the member's connection was closing,
    /// or the datagram was too large for its path).
    pub send_failed: u64,
    /// Datagrams from, and copies to, members of an invite-only room held
    /// back because they have not shown the token of its newest key epoch
    /// (during [`SHOW_NEW_TOKEN_WITHIN`], before they are dropped).
    pub held_superseded: u64,
    /// Connections open now.
    pub connections: usize,
    /// Voice channels with at least one member now.
    pub groups: usize,
    /// Members in all groups now.
    pub members: usize,
    /// Joins accepted since start.
    pub joins_accepted: u64,
    /// Joins and requests refused since start (each with a reason).
    pub joins_refused: u64,
    /// Observe requests answered since start.
    pub observed: u64,
    /// Connections closed because the relay was full.
    pub connections_refused: u64,
    /// Connections that never sent a readable request in time.
    pub handshakes_failed: u64,
    /// Members disconnected because the room removed them: a newer key
    /// epoch they showed no token of, or evidence their gate refuses.
    pub members_removed: u64,
}

struct Member {
    conn: VoiceConnection,
    user: UserId,
    speaker: u16,
    group: GroupKey,
    room: RoomId,
    updates: mpsc::Sender<Update>,
    /// The records the member's join was admitted on: the gate runs again
    /// over them and the group's evidence when evidence arrives (open
    /// rooms; empty for an invite-only room's member).
    proof: Vec<Vec<u8>>,
    /// For an invite-only room: the key epoch whose relay token the member
    /// showed (at its join, or since by [`MemberMessage::Token`]).
    epoch: Option<u32>,
    /// On a superseded epoch: nothing is forwarded from or to it until it
    /// shows the new token, and it is dropped if it has not within
    /// [`SHOW_NEW_TOKEN_WITHIN`]. A removed member so hears nothing from
    /// the moment the relay learns of the new epoch.
    held: bool,
}

/// The newest key epoch a relay knows of an invite-only room, from the
/// grants in members' hellos and evidence: older epochs' tokens are
/// refused, and members who showed one are dropped unless they show this
/// one within [`SHOW_NEW_TOKEN_WITHIN`]. Kept as long as any group of the
/// room is (with its evidence), so bounded the same way.
#[derive(Clone, Copy, Debug)]
struct KnownEpoch {
    owner: UserId,
    epoch: u32,
    relay_commit: [u8; 32],
}

/// How long a member admitted with an older epoch's token has to show the
/// newer epoch's ([`MemberMessage::Token`]) once the relay learns of it,
/// before it is dropped (it is held, hearing and sending nothing, from the
/// start): short enough that a removed member is gone within a second of
/// its kick (the owner's node tells the relay about 100 ms after it),
/// long enough for the grant to reach the other members' nodes by gossip
/// and for them to answer. A member slower than that is dropped and joins
/// again with the new epoch's proof.
pub const SHOW_NEW_TOKEN_WITHIN: Duration = Duration::from_millis(800);

/// Signed records members sent against others of a group ([`Evidence`]):
/// every later join to the group, and every member at each new piece of
/// evidence, is judged over its proof and these, so a kick, ban, leave or
/// deletion the relay was shown ends that user's membership of the relay
/// and refuses its old proof from then on.
struct GroupEvidence {
    room: RoomId,
    channel: ChannelId,
    records: Vec<Vec<u8>>,
    /// When the group's last member left, if it is empty.
    emptied: Option<Instant>,
}

/// Evidence records a group keeps; past it new ones are not taken (and
/// their sender's message is dropped): a room's moderation history that
/// matters to one channel is far smaller.
pub const MAX_GROUP_EVIDENCE: usize = 512;

/// How long a group's evidence outlives its last member, so that a kicked
/// member cannot come back with its old proof as soon as the others leave.
pub const EVIDENCE_KEPT_FOR: Duration = Duration::from_secs(600);

/// Empty groups whose evidence is kept at once; past it the one emptied
/// longest ago goes first.
pub const MAX_KEPT_GROUPS: usize = 1024;

struct State {
    relay: Relay,
    members: HashMap<ConnId, Member>,
    evidence: HashMap<GroupKey, GroupEvidence>,
    /// Invite-only rooms with a group here: their newest known epoch.
    epochs: HashMap<RoomId, KnownEpoch>,
    send_failed: u64,
    held_superseded: u64,
}

impl State {
    /// Forgets evidence of groups empty for longer than
    /// [`EVIDENCE_KEPT_FOR`], and of the oldest empty ones past
    /// [`MAX_KEPT_GROUPS`].
    fn expire_evidence(&mut self, now: Instant) {
        self.evidence.retain(|_, g| {
            g.emptied
                .is_none_or(|t| now.duration_since(t) < EVIDENCE_KEPT_FOR)
        });
        let mut empty: Vec<(Instant, GroupKey)> = self
            .evidence
            .iter()
            .filter_map(|(k, g)| g.emptied.map(|t| (t, *k)))
            .collect();
        if empty.len() > MAX_KEPT_GROUPS {
            empty.sort();
            for (_, k) in &empty[..empty.len() - MAX_KEPT_GROUPS] {
                self.evidence.remove(k);
            }
        }
        let rooms: std::collections::HashSet<RoomId> =
            self.evidence.values().map(|g| g.room).collect();
        self.epochs.retain(|room, _| rooms.contains(room));
    }

    /// Takes a newer epoch of `room` (from a hello's or evidence's grant by
    /// the room's owner); `true` when it is newer than what was known, so
    /// the holders of older tokens must now show the new one.
    fn learn_epoch(&mut self, room: RoomId, seen: KnownEpoch) -> bool {
        match self.epochs.get(&room) {
            Some(known) if known.owner != seen.owner || known.epoch >= seen.epoch => false,
            _ => {
                let newer = self.epochs.contains_key(&room);
                self.epochs.insert(room, seen);
                newer
            }
        }
    }
}

struct Shared {
    state: Mutex<State>,
    settings: VoiceRelaySettings,
    started: Instant,
    next_conn: AtomicU64,
    connections: AtomicUsize,
    refusing: AtomicUsize,
    joins_accepted: AtomicU64,
    joins_refused: AtomicU64,
    observed: AtomicU64,
    connections_refused: AtomicU64,
    handshakes_failed: AtomicU64,
    members_removed: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock; if something ever did, the
        // state is still consistent enough to keep forwarding.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn stats(&self) -> VoiceRelayStats {
        let state = self.lock();
        VoiceRelayStats {
            relay: state.relay.stats().clone(),
            send_failed: state.send_failed,
            held_superseded: state.held_superseded,
            connections: self.connections.load(Ordering::Relaxed),
            groups: state.relay.group_count(),
            members: state.members.len(),
            joins_accepted: self.joins_accepted.load(Ordering::Relaxed),
            joins_refused: self.joins_refused.load(Ordering::Relaxed),
            observed: self.observed.load(Ordering::Relaxed),
            connections_refused: self.connections_refused.load(Ordering::Relaxed),
            handshakes_failed: self.handshakes_failed.load(Ordering::Relaxed),
            members_removed: self.members_removed.load(Ordering::Relaxed),
        }
    }
}

/// A running voice relay. Dropping it stops it.
pub struct VoiceRelay {
    shared: Arc<Shared>,
    endpoint: Arc<VoiceEndpoint>,
    local_addr: SocketAddr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for VoiceRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VoiceRelay")
            .field("local_addr", &self.local_addr)
            .field("peer_id", &self.endpoint.peer_id())
            .finish()
    }
}

impl VoiceRelay {
    /// Starts a relay on the current tokio runtime with the node key's seed
    /// (so it proves the node's PeerId). Its tasks run on that runtime: on
    /// a single-threaded runtime the whole relay uses one core.
    pub fn start(node_key_seed: [u8; 32], settings: VoiceRelaySettings) -> Result<VoiceRelay> {
        let endpoint = VoiceEndpoint::bind(node_key_seed, settings.listen, &settings.endpoint)
            .context(
                "cannot start the voice relay (set [voice_relay] listen, or enabled = false)",
            )?;
        let local_addr = endpoint.local_addr()?;
        let endpoint = Arc::new(endpoint);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                relay: Relay::new(settings.limits.clone()),
                members: HashMap::new(),
                evidence: HashMap::new(),
                epochs: HashMap::new(),
                send_failed: 0,
                held_superseded: 0,
            }),
            started: Instant::now(),
            next_conn: AtomicU64::new(0),
            connections: AtomicUsize::new(0),
            refusing: AtomicUsize::new(0),
            joins_accepted: AtomicU64::new(0),
            joins_refused: AtomicU64::new(0),
            observed: AtomicU64::new(0),
            connections_refused: AtomicU64::new(0),
            handshakes_failed: AtomicU64::new(0),
            members_removed: AtomicU64::new(0),
            settings,
        });
        let mut tasks = vec![tokio::spawn(accept_loop(endpoint.clone(), shared.clone()))];
        let every = shared.settings.stats_interval;
        if !every.is_zero() {
            let shared = shared.clone();
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    log_stats(&shared.stats());
                }
            }));
        }
        tracing::info!(
            addr = %local_addr,
            peer_id = %endpoint.peer_id(),
            "voice relay listening (UDP)"
        );
        Ok(VoiceRelay {
            shared,
            endpoint,
            local_addr,
            tasks,
        })
    }

    /// The UDP address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The PeerId nodes must expect when they dial it.
    pub fn peer_id(&self) -> tincan_mesh::PeerId {
        self.endpoint.peer_id()
    }

    /// Its counters now.
    pub fn stats(&self) -> VoiceRelayStats {
        self.shared.stats()
    }

    /// A reader of its counters that outlives this handle's borrow (for a
    /// metrics collector).
    pub fn stats_reader(&self) -> impl Fn() -> VoiceRelayStats + Send + Sync + 'static {
        let shared = self.shared.clone();
        move || shared.stats()
    }

    /// Closes every connection and the socket.
    pub fn shutdown(&self) {
        self.endpoint.close();
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Drop for VoiceRelay {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn log_stats(s: &VoiceRelayStats) {
    tracing::info!(
        connections = s.connections,
        groups = s.groups,
        members = s.members,
        received = s.relay.received,
        forwarded = s.relay.forwarded,
        forwarded_bytes = s.relay.forwarded_bytes,
        dropped_not_joined = s.relay.dropped_not_joined,
        dropped_malformed = s.relay.dropped_malformed,
        dropped_wrong_speaker = s.relay.dropped_wrong_speaker,
        dropped_datagram_rate = s.relay.dropped_datagram_rate,
        dropped_byte_rate = s.relay.dropped_byte_rate,
        send_failed = s.send_failed,
        held_superseded = s.held_superseded,
        joins_accepted = s.joins_accepted,
        joins_refused = s.joins_refused,
        members_removed = s.members_removed,
        observed = s.observed,
        "voice relay counters"
    );
}

async fn accept_loop(endpoint: Arc<VoiceEndpoint>, shared: Arc<Shared>) {
    // Handshakes finish in tasks of their own, so one dialler that stalls
    // mid-handshake holds up nobody; the loop below takes them as they
    // complete. Handshakes in flight are bounded apart from connections
    // (a few beyond max_connections), so a full relay still finishes the
    // handshake of a newcomer and tells it why it is refused.
    let (done_tx, mut done) = tokio::sync::mpsc::channel(64);
    let handshakes = Arc::new(tokio::sync::Semaphore::new(
        shared.settings.max_connections.saturating_add(16),
    ));
    let listener = endpoint.clone();
    tokio::spawn(async move {
        while let Some(accepting) = listener.accept_incoming().await {
            let Ok(permit) = handshakes.clone().try_acquire_owned() else {
                accepting.refuse();
                continue;
            };
            let done_tx = done_tx.clone();
            tokio::spawn(async move {
                let result = accepting.finish().await;
                drop(permit);
                let _ = done_tx.send(result).await;
            });
        }
    });
    while let Some(incoming) = done.recv().await {
        let conn = match incoming {
            Ok(conn) => conn,
            Err(e) => {
                tracing::debug!("voice relay handshake failed: {e}");
                continue;
            }
        };
        if shared.connections.load(Ordering::Relaxed) >= shared.settings.max_connections {
            shared.connections_refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                max = shared.settings.max_connections,
                peer = %conn.peer_id(),
                "voice relay full: refusing a new connection (raise [voice_relay] max_connections)"
            );
            // Say why, within the handshake timeout, to a bounded number of
            // diallers at once; past that, close without a word.
            let max_refusing = shared.settings.max_connections / 8 + 16;
            if shared.refusing.fetch_add(1, Ordering::Relaxed) < max_refusing {
                let shared = shared.clone();
                tokio::spawn(async move {
                    let limit = shared.settings.handshake_timeout;
                    if let Some(Ok((mut send, _recv))) = within(limit, conn.accept_control()).await
                    {
                        let reason = format!(
                            "this voice relay is full ({} connections): try another relay",
                            shared.settings.max_connections
                        );
                        let answer = Answer::Refused(Refused { reason });
                        if within(limit, write_message(&mut send, &answer))
                            .await
                            .is_some()
                        {
                            let _ = send.finish();
                            let _ = within(limit, send.stopped()).await;
                        }
                    }
                    conn.close();
                    shared.refusing.fetch_sub(1, Ordering::Relaxed);
                });
            } else {
                shared.refusing.fetch_sub(1, Ordering::Relaxed);
                conn.close();
            }
            continue;
        }
        shared.connections.fetch_add(1, Ordering::Relaxed);
        let shared = shared.clone();
        tokio::spawn(async move {
            serve(&shared, conn).await;
            shared.connections.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

async fn within<T>(limit: Duration, what: impl Future<Output = T>) -> Option<T> {
    tokio::time::timeout(limit, what).await.ok()
}

/// Sends the refusal, waits (bounded) until the peer has it, and closes.
async fn refuse(
    shared: &Shared,
    conn: &VoiceConnection,
    send: &mut quinn::SendStream,
    reason: String,
) {
    shared.joins_refused.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(peer = %conn.peer_id(), addr = %conn.remote_addr(), %reason, "voice relay refused");
    let limit = shared.settings.handshake_timeout;
    let answer = Answer::Refused(Refused { reason });
    if within(limit, write_message(send, &answer)).await.is_some() {
        let _ = send.finish();
        let _ = within(limit, send.stopped()).await;
    }
    conn.close();
}

async fn serve(shared: &Arc<Shared>, conn: VoiceConnection) {
    if shared.settings.blocked.contains(&conn.peer_id()) {
        shared.connections_refused.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(peer = %conn.peer_id(), "voice relay: a blocked node's connection closed");
        conn.close();
        return;
    }
    let limit = shared.settings.handshake_timeout;
    let Some(Ok((mut send, mut recv))) = within(limit, conn.accept_control()).await else {
        shared.handshakes_failed.fetch_add(1, Ordering::Relaxed);
        conn.close();
        return;
    };
    let request = match within(
        limit,
        read_message::<Request, _>(&mut recv, MAX_CONTROL_MESSAGE),
    )
    .await
    {
        Some(Ok(request)) => request,
        Some(Err(e)) => {
            shared.handshakes_failed.fetch_add(1, Ordering::Relaxed);
            let reason =
                format!("the relay could not read your request ({e}): update tincan on this node");
            refuse(shared, &conn, &mut send, reason).await;
            return;
        }
        None => {
            shared.handshakes_failed.fetch_add(1, Ordering::Relaxed);
            let reason = format!("no request arrived within {limit:?}: try again");
            refuse(shared, &conn, &mut send, reason).await;
            return;
        }
    };
    match request {
        Request::Observe => {
            shared.observed.fetch_add(1, Ordering::Relaxed);
            let answer = Answer::Observed(conn.remote_addr());
            if within(limit, write_message(&mut send, &answer))
                .await
                .is_some()
            {
                let _ = send.finish();
                // The dialler closes once it has the answer.
                let _ = within(limit, conn.closed()).await;
            }
            conn.close();
        }
        Request::Join(hello) => join(shared, conn, send, recv, hello).await,
    }
}

/// A join the proof allows: who, which fan-out group, and for an
/// invite-only room the epoch the proof showed.
struct Admitted {
    user: UserId,
    group: GroupKey,
    epoch: Option<EpochProof>,
}

/// The fan-out group of a voice channel. Channel ids are chosen by room
/// owners, so two rooms may name the same one (by chance, or an owner
/// copying another room's id to listen in): the group is keyed by room and
/// channel together.
fn group_key(room: &tincan_core::RoomId, channel: &tincan_core::ChannelId) -> GroupKey {
    let mut input = [0u8; 32];
    input[..16].copy_from_slice(&room.0);
    input[16..].copy_from_slice(&channel.0);
    let hash = blake3::derive_key("tincan voice relay group v1", &input);
    let mut key = [0u8; 16];
    key.copy_from_slice(&hash[..16]);
    GroupKey(key)
}

/// Checks a hello against the node TLS proved (`peer`, its PeerId text).
/// CPU-bound (signatures, a throwaway store): run it off the forwarding
/// thread. The error is the reason the user reads.
fn admit(
    hello: &Hello,
    peer: &str,
    evidence: &[Vec<u8>],
    known: Option<KnownEpoch>,
) -> Result<Admitted, String> {
    hello.binding.verify().map_err(|_| {
        "your device binding is not validly signed by your user key: sign in again on this device"
            .to_owned()
    })?;
    let bound = hello.binding.node.peer_id();
    if bound != peer {
        return Err(format!(
            "your device binding is for node {bound}, but you connected as node {peer}: use this device's own binding"
        ));
    }
    let user = hello.binding.user;
    if hello.proof.len() > MAX_PROOF_RECORDS {
        return Err(format!(
            "your membership proof has {} records; a relay accepts at most {MAX_PROOF_RECORDS}",
            hello.proof.len()
        ));
    }
    if hello.proof.iter().any(|item| item.token().is_some()) {
        // An invite-only room: grant and token (its records are sealed,
        // so there is no membership or channel to check here).
        let shown = check_epoch_proof(&hello.room, &hello.proof).map_err(|e| e.to_string())?;
        if let Some(known) = known {
            superseded(shown.epoch, &known)?;
        }
        return Ok(Admitted {
            user,
            group: group_key(&hello.room, &hello.channel),
            epoch: Some(shown),
        });
    }
    let mut records = Vec::with_capacity(hello.proof.len());
    for (i, item) in hello.proof.iter().enumerate() {
        let Some(bytes) = item.record() else {
            continue;
        };
        let record = SignedRecord::from_bytes(bytes)
            .map_err(|e| format!("record {} of your membership proof is invalid: {e}", i + 1))?;
        if record.record().room() != Some(hello.room) {
            return Err(format!(
                "record {} of your membership proof is about another room than room {}",
                i + 1,
                hello.room
            ));
        }
        records.push(record);
    }
    // What members showed the relay against others of this channel: a
    // kick newer than the proof's membership refuses it.
    records.extend(
        evidence
            .iter()
            .filter_map(|b| SignedRecord::from_bytes(b).ok()),
    );
    tincan_voice::roster::parents_first(&mut records);
    // A store for this check alone, dropped when it returns: the relay
    // keeps nothing of the rooms it serves but the evidence it was shown.
    let store = Store::in_memory(StoreConfig {
        pending_limit: MAX_PROOF_RECORDS + MAX_GROUP_EVIDENCE,
        feed_capacity: 1,
        ..StoreConfig::default()
    })
    .map_err(|e| format!("the relay cannot check proofs right now ({e}): try again later"))?;
    let outcomes = store
        .apply_batch(records)
        .map_err(|e| format!("the relay cannot check proofs right now ({e}): try again later"))?;
    let first_refusal = outcomes
        .iter()
        .enumerate()
        .find_map(|(i, o)| {
            o.as_ref()
                .err()
                .map(|e| format!(" (record {}: {e})", i + 1))
        })
        .unwrap_or_default();
    let storage = |e: tincan_store::StorageError| {
        format!("the relay cannot check proofs right now ({e}): try again later")
    };
    let room = store.room(&hello.room).map_err(storage)?.ok_or_else(|| {
        format!(
            "your membership proof does not contain room {}'s record{first_refusal}: update tincan on this node",
            hello.room
        )
    })?;
    let channel = store
        .channel(&hello.room, &hello.channel)
        .map_err(storage)?
        .ok_or_else(|| {
            format!(
                "room \"{}\" has no voice channel {} (or it was deleted){first_refusal}",
                room.room.title, hello.channel
            )
        })?;
    let membership = store.membership(&hello.room, &user).map_err(storage)?;
    if !membership.is_member() {
        return Err(format!(
            "user {} is not a member of room \"{}\" ({membership:?}){first_refusal}: join the room, or ask its owner to admit you",
            user.fingerprint(),
            room.room.title
        ));
    }
    if !allows(
        &channel.channel.permissions,
        Action::Listen,
        &user,
        &room.owner,
        membership,
    ) {
        return Err(format!(
            "you may not listen in voice channel \"{}\" of room \"{}\"",
            channel.channel.name, room.room.title
        ));
    }
    Ok(Admitted {
        user,
        group: group_key(&hello.room, &hello.channel),
        epoch: None,
    })
}

/// Refuses a token of an epoch older than the newest the relay knows.
fn superseded(epoch: u32, known: &KnownEpoch) -> Result<(), String> {
    if epoch < known.epoch {
        return Err(format!(
            "your relay token is of key epoch {epoch}, superseded by epoch {} that the room's owner granted since: this node holds no key of it (if you were not removed from the room, wait for its grant and join again)",
            known.epoch
        ));
    }
    Ok(())
}

async fn join(
    shared: &Arc<Shared>,
    conn: VoiceConnection,
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
    hello: Hello,
) {
    let peer = conn.peer_id().to_string();
    let group = group_key(&hello.room, &hello.channel);
    let (prior, known): (Vec<Vec<u8>>, Option<KnownEpoch>) = {
        let mut state = shared.lock();
        state.expire_evidence(Instant::now());
        let prior = state
            .evidence
            .get(&group)
            .filter(|g| (g.room, g.channel) == (hello.room, hello.channel))
            .map(|g| g.records.clone())
            .unwrap_or_default();
        (prior, state.epochs.get(&hello.room).copied())
    };
    let (room, channel) = (hello.room, hello.channel);
    let checked = tokio::task::spawn_blocking(move || {
        admit(&hello, &peer, &prior, known).map(|a| {
            let records = hello
                .proof
                .into_iter()
                .filter_map(|item| match item {
                    ProofItem::Record(bytes) if a.epoch.is_none() => Some(bytes),
                    _ => None,
                })
                .collect::<Vec<_>>();
            (a, records)
        })
    })
    .await;
    let (admitted, proof) = match checked {
        Ok(Ok(admitted)) => admitted,
        Ok(Err(reason)) => return refuse(shared, &conn, &mut send, reason).await,
        Err(e) => {
            tracing::error!("voice relay: checking a join failed: {e}");
            let reason = "the relay failed while checking your proof: try another relay".into();
            return refuse(shared, &conn, &mut send, reason).await;
        }
    };
    let id = ConnId(shared.next_conn.fetch_add(1, Ordering::Relaxed));
    let (updates, mut queued) = mpsc::channel(UPDATE_QUEUE);
    let mut newer_epoch = false;
    let joined = {
        let mut guard = shared.lock();
        let state = &mut *guard;
        join_locked(state, id, &admitted, &conn, updates, proof, (room, channel)).map(
            |(welcome, newer)| {
                newer_epoch = newer;
                welcome
            },
        )
    };
    let welcome = match joined {
        Ok(welcome) => welcome,
        Err(e) => return refuse(shared, &conn, &mut send, e).await,
    };
    if newer_epoch {
        sweep_older_epochs(shared, room);
    }
    shared.joins_accepted.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(peer = %conn.peer_id(), user = %admitted.user.fingerprint(), speaker = welcome.speaker, "voice relay: joined");
    let limit = shared.settings.handshake_timeout;
    let welcomed = matches!(
        within(limit, write_message(&mut send, &Answer::Welcome(welcome))).await,
        Some(Ok(()))
    );
    if welcomed {
        // The control stream: updates out, and the end of the member's side
        // means it left. Either failing closes the connection, which ends
        // the forwarding loop below.
        let control_conn = conn.clone();
        let control_shared = shared.clone();
        let control = tokio::spawn(async move {
            let mut recv = recv;
            let writer = async {
                while let Some(update) = queued.recv().await {
                    if write_message(&mut send, &update).await.is_err() {
                        break;
                    }
                }
            };
            // The member's messages, until it finishes the stream (it
            // left) or sends one over the limit (it is disconnected).
            let reader = async {
                while let Ok(bytes) = read_frame(&mut recv, MAX_MEMBER_MESSAGE).await {
                    match MemberMessage::decode(&bytes) {
                        Ok(MemberMessage::Evidence(evidence)) => {
                            on_evidence(&control_shared, id, evidence).await;
                        }
                        Ok(MemberMessage::Token(token)) => {
                            on_token(&control_shared, id, token);
                        }
                        Ok(_) => {}
                        Err(e) => {
                            tracing::debug!("voice relay: a member message refused: {e}");
                        }
                    }
                }
            };
            tokio::select! {
                () = writer => {},
                () = reader => {},
            }
            control_conn.close();
        });
        while let Ok(bytes) = conn.recv_bytes().await {
            forward(shared, id, bytes);
        }
        control.abort();
    }
    leave(shared, id);
    conn.close();
}

/// The locked part of a join: a last check of the epoch (a newer one may
/// have arrived while the proof was checked), a speaker index, the others
/// told, the member and its group's evidence entry recorded. Gives the
/// welcome, and whether the join showed a newer epoch than was known.
fn join_locked(
    state: &mut State,
    id: ConnId,
    admitted: &Admitted,
    conn: &VoiceConnection,
    updates: mpsc::Sender<Update>,
    proof: Vec<Vec<u8>>,
    (room, channel): (RoomId, ChannelId),
) -> Result<(Welcome, bool), String> {
    let seen = admitted.epoch.map(|shown| KnownEpoch {
        owner: shown.owner,
        epoch: shown.epoch,
        relay_commit: shown.relay_commit,
    });
    if let (Some(seen), Some(known)) = (seen, state.epochs.get(&room)) {
        superseded(seen.epoch, known)?;
    }
    let speaker = state
        .relay
        .join(id, admitted.group)
        .map_err(|e| e.to_string())?;
    let newer = seen.is_some_and(|seen| state.learn_epoch(room, seen));
    let entry = SpeakerEntry {
        speaker,
        user: admitted.user,
    };
    let mut speakers = Vec::new();
    for other in state.relay.members(&admitted.group) {
        if let Some(m) = state.members.get(&other) {
            speakers.push(SpeakerEntry {
                speaker: m.speaker,
                user: m.user,
            });
            notify(m, Update::SpeakerJoined(entry));
        }
    }
    state.members.insert(
        id,
        Member {
            conn: conn.clone(),
            user: admitted.user,
            speaker,
            group: admitted.group,
            room,
            updates,
            proof,
            epoch: seen.map(|e| e.epoch),
            held: false,
        },
    );
    state
        .evidence
        .entry(admitted.group)
        .or_insert_with(|| GroupEvidence {
            room,
            channel,
            records: Vec::new(),
            emptied: None,
        })
        .emptied = None;
    Ok((
        Welcome {
            observed: conn.remote_addr(),
            speaker,
            speakers,
        },
        newer,
    ))
}

/// A newer epoch of `room` is known: holds every member of its groups on
/// an older one at once (nothing forwarded from or to it), and once
/// [`SHOW_NEW_TOKEN_WITHIN`] has passed drops those still on it: a removed
/// member has no key of the new epoch, so it cannot show its token.
fn sweep_older_epochs(shared: &Arc<Shared>, room: RoomId) {
    {
        let mut guard = shared.lock();
        let state = &mut *guard;
        if let Some(known) = state.epochs.get(&room).copied() {
            for m in state.members.values_mut() {
                if m.room == room && m.epoch.is_some_and(|e| e < known.epoch) {
                    m.held = true;
                }
            }
        }
    }
    let shared = shared.clone();
    tokio::spawn(async move {
        tokio::time::sleep(SHOW_NEW_TOKEN_WITHIN).await;
        let state = shared.lock();
        let Some(known) = state.epochs.get(&room).copied() else {
            return;
        };
        for m in state.members.values() {
            if m.room == room && m.epoch.is_some_and(|e| e < known.epoch) {
                tracing::info!(user = %m.user.fingerprint(), epoch = ?m.epoch, newest = known.epoch, "voice relay: a member on a superseded key epoch is disconnected");
                m.conn.close();
                shared.members_removed.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
}

/// A member shows the relay token of its room's newest known epoch: it
/// keeps its place when the older epoch it joined with is swept.
fn on_token(shared: &Shared, from: ConnId, token: EpochToken) {
    let mut guard = shared.lock();
    let state = &mut *guard;
    let Some(m) = state.members.get_mut(&from) else {
        return;
    };
    let Some(known) = state.epochs.get(&m.room) else {
        return;
    };
    if m.epoch.is_some() && token.epoch == known.epoch && token.matches(&known.relay_commit) {
        m.epoch = Some(token.epoch);
        m.held = false;
    } else {
        tracing::debug!(user = %m.user.fingerprint(), epoch = token.epoch, "voice relay: a relay token that matches no known grant ignored");
    }
}

/// Queues an update for a member; a member too slow to take it is
/// disconnected (its table would be wrong), which makes it leave.
fn notify(member: &Member, update: Update) {
    if member.updates.try_send(update).is_err() {
        tracing::info!(peer = %member.conn.peer_id(), "voice relay: a member's control stream fell behind; disconnecting it");
        member.conn.close();
    }
}

fn leave(shared: &Shared, id: ConnId) {
    let mut guard = shared.lock();
    let state = &mut *guard;
    state.relay.leave(id);
    if let Some(gone) = state.members.remove(&id) {
        let mut others = 0;
        for other in state.relay.members(&gone.group) {
            if let Some(m) = state.members.get(&other) {
                others += 1;
                notify(m, Update::SpeakerLeft(gone.speaker));
            }
        }
        if others == 0
            && let Some(g) = state.evidence.get_mut(&gone.group)
        {
            g.emptied = Some(Instant::now());
        }
    }
}

/// Whether `user` may be in `channel` of `room` by `proof` and the group's
/// `evidence`, applied to a store of this check alone: the one gate
/// (`tincan_voice::gate::admit_user`) over the roster they give.
fn still_admitted(
    room: RoomId,
    channel: ChannelId,
    user: &UserId,
    proof: &[Vec<u8>],
    evidence: &[Vec<u8>],
) -> bool {
    let mut records: Vec<SignedRecord> = proof
        .iter()
        .chain(evidence)
        .filter_map(|b| SignedRecord::from_bytes(b).ok())
        .collect();
    tincan_voice::roster::parents_first(&mut records);
    let Ok(store) = Store::in_memory(StoreConfig {
        pending_limit: MAX_PROOF_RECORDS + MAX_GROUP_EVIDENCE,
        feed_capacity: 1,
        ..StoreConfig::default()
    }) else {
        // No store to judge with: keep the member rather than drop a
        // whole channel on the relay's own failure.
        return true;
    };
    if store.apply_batch(records).is_err() {
        return true;
    }
    match tincan_voice::roster::roster_from_store(&store, room, channel) {
        Ok(roster) => tincan_voice::gate::admit_user(user, &roster).is_ok(),
        Err(_) => true,
    }
}

/// Evidence from member `from`. In an invite-only room, a grant of the
/// room's owner newer than the epoch known supersedes it: members on older
/// epochs are dropped after [`SHOW_NEW_TOKEN_WITHIN`] unless they show the
/// new token (grants are not kept beyond their epoch and commitment). Other
/// records of the group's room are kept (up to [`MAX_GROUP_EVIDENCE`]),
/// then every member of the group admitted by records is judged again over
/// its proof and the evidence, and those the gate refuses are disconnected
/// (which announces them gone to the others).
async fn on_evidence(shared: &Arc<Shared>, from: ConnId, evidence: Evidence) {
    let mut newer_epoch = None;
    let judged = 'judged: {
        let mut guard = shared.lock();
        let state = &mut *guard;
        let Some((group, room)) = state.members.get(&from).map(|m| (m.group, m.room)) else {
            return;
        };
        let decoded: Vec<(Vec<u8>, Option<SignedRecord>)> = evidence
            .records
            .into_iter()
            .map(|bytes| {
                let record = SignedRecord::from_bytes(&bytes)
                    .ok()
                    .filter(|r| r.record().room() == Some(room));
                (bytes, record)
            })
            .collect();
        if let Some(known) = state.epochs.get(&room).copied() {
            for record in decoded.iter().filter_map(|(_, r)| r.as_ref()) {
                if let Some((epoch, relay_commit)) = grant_epoch_of(record, &room, &known.owner) {
                    let seen = KnownEpoch {
                        owner: known.owner,
                        epoch,
                        relay_commit,
                    };
                    if state.learn_epoch(room, seen) {
                        newer_epoch = Some(room);
                    }
                }
            }
        }
        let Some(g) = state.evidence.get_mut(&group) else {
            break 'judged None;
        };
        let mut added = 0;
        for (bytes, record) in decoded {
            let is_grant = record
                .as_ref()
                .is_some_and(|r| matches!(r.record().body, tincan_core::Body::KeyGrant(_)));
            if record.is_none() || is_grant || g.records.contains(&bytes) {
                continue;
            }
            if g.records.len() >= MAX_GROUP_EVIDENCE {
                tracing::info!("voice relay: a group's evidence is full; new records dropped");
                break;
            }
            g.records.push(bytes);
            added += 1;
        }
        if added == 0 {
            None
        } else {
            let (room, channel, records) = (g.room, g.channel, g.records.clone());
            let members: Vec<(ConnId, UserId, Vec<Vec<u8>>)> = state
                .relay
                .members(&group)
                .filter_map(|c| state.members.get(&c).map(|m| (c, m)))
                .filter(|(_, m)| m.epoch.is_none())
                .map(|(c, m)| (c, m.user, m.proof.clone()))
                .collect();
            Some((room, channel, records, members))
        }
    };
    if let Some(room) = newer_epoch {
        sweep_older_epochs(shared, room);
    }
    let Some(judged) = judged else {
        return;
    };
    let (room, channel, records, members) = judged;
    let refused = tokio::task::spawn_blocking(move || {
        members
            .into_iter()
            .filter(|(_, user, proof)| !still_admitted(room, channel, user, proof, &records))
            .map(|(c, user, _)| (c, user))
            .collect::<Vec<_>>()
    })
    .await
    .unwrap_or_default();
    let state = shared.lock();
    for (c, user) in refused {
        if let Some(m) = state.members.get(&c) {
            tracing::info!(user = %user.fingerprint(), "voice relay: a member the evidence refuses is disconnected");
            m.conn.close();
            shared.members_removed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The hot path: one lock, the relay's decision, one `send_encoded` per
/// recipient sharing the received buffer.
fn forward(shared: &Shared, from: ConnId, bytes: bytes::Bytes) {
    let now = u64::try_from(shared.started.elapsed().as_micros()).unwrap_or(u64::MAX);
    let mut guard = shared.lock();
    let State {
        relay,
        members,
        send_failed,
        held_superseded,
        ..
    } = &mut *guard;
    if members.get(&from).is_some_and(|m| m.held) {
        *held_superseded += 1;
        return;
    }
    if let Forward::To(recipients) = relay.on_datagram(from, &bytes, now) {
        for to in recipients {
            match members.get(&to) {
                Some(m) if m.held => *held_superseded += 1,
                Some(m) if m.conn.send_encoded(bytes.clone()) => {}
                _ => *send_failed += 1,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_toml_section_maps_onto_the_relay_limits() {
        let c: VoiceRelayConfig =
            toml::from_str("listen = \"127.0.0.1:0\"\nmax_members = 8\ndatagrams_per_second = 7\n")
                .unwrap();
        let s = c.settings().unwrap().unwrap();
        assert_eq!(s.listen, "127.0.0.1:0".parse().unwrap());
        assert_eq!(s.limits.max_members, 8);
        assert_eq!(s.limits.datagrams_per_second, 7);
        assert_eq!(s.limits.byte_burst, RelayConfig::default().byte_burst);
        let off: VoiceRelayConfig = toml::from_str("enabled = false\n").unwrap();
        assert!(off.settings().unwrap().is_none());
        let bad: VoiceRelayConfig = toml::from_str("listen = \"4434\"\n").unwrap();
        let err = bad.settings().unwrap_err().to_string();
        assert!(err.contains("0.0.0.0:4434"), "{err}");
        assert!(toml::from_str::<VoiceRelayConfig>("lisen = \"x\"\n").is_err());
        let huge: VoiceRelayConfig = toml::from_str("max_members = 70000\n").unwrap();
        assert!(huge.settings().is_err());
    }

    #[test]
    fn one_channel_id_in_two_rooms_is_two_groups() {
        let channel = tincan_core::ChannelId([5; 16]);
        assert_ne!(
            group_key(&tincan_core::RoomId([1; 16]), &channel),
            group_key(&tincan_core::RoomId([2; 16]), &channel)
        );
    }
}
