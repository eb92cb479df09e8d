//! The node's voice session: joins a voice channel, finds the channel's
//! other members by their presence signals, connects to each of them over
//! the voice endpoint (directly, by punching through NATs, or through a
//! relay), and moves Opus frames between them and the audio engine.
//!
//! Pieces, and where their logic lives:
//! - [`tincan_media::presence`]: what we gossip to say we are in a channel;
//! - [`tincan_voice::paths::PathPlanner`]: who dials, who punches, when the
//!   relay is needed (sans-IO; this module only carries out its actions);
//! - [`tincan_media::control`]: the handshake on each voice connection,
//!   where the acceptor checks the dialler's user binding and membership;
//! - [`tincan_media::relay_client`]: the relay fallback;
//! - [`tincan_audio::engine::Engine`]: devices, codec, jitter buffers, mixer.
//!
//! Receivers enforce channel permissions: a frame from a user who may not
//! speak in the channel (or whom we cannot map to a user) is dropped and
//! counted, whatever the sender thinks.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;
use tincan_audio::capture::{CaptureConfig, GateMode};
use tincan_audio::codec::VoicePacket;
use tincan_audio::device::DeviceSpec;
use tincan_audio::engine::{Engine, EngineConfig};
use tincan_core::permissions::{Action, allows};
use tincan_core::{ChannelId, NodeBinding, RoomId, UserId, UserKey};
use tincan_media::control::{
    Answer, Hello, MAX_CONTROL_MESSAGE, MAX_PROOF_RECORDS, Refused, Request, Welcome, read_message,
    write_message,
};
use tincan_media::presence::{
    Candidate, CandidateKind, PRESENCE_INTERVAL, PRESENCE_TIMEOUT, Presence,
};
use tincan_media::relay_client::{RelayAddr, RelaySession, observe_address};
use tincan_media::{
    EndpointConfig, VoiceConnection, VoiceDatagram, VoiceDatagramRef, VoiceEndpoint,
};
use tincan_mesh::{Mesh, PeerId};
use tincan_store::Store;
use tincan_voice::candidates::is_private;
use tincan_voice::gate::{AdmitRequest, RosterSnapshot, admit};
use tincan_voice::paths::{Action as PathAction, Path, PathPlanner, PlannerConfig, dials_first};
use tincan_voice::policy::bitrate_for_loss;
use tincan_voice::roster::roster_from_store;

/// The voice plane of the `tincan up` running in this process: the control
/// endpoint's commands reach it here. One node runs per process.
static RUNNING: std::sync::OnceLock<Voice> = std::sync::OnceLock::new();

/// Records the running node's voice plane (once per process).
pub fn set_running(voice: Voice) {
    let _ = RUNNING.set(voice);
}

/// The running node's voice plane, if this process runs one.
pub fn running() -> Option<Voice> {
    RUNNING.get().cloned()
}

/// How often the session looks at its planner and links.
const TICK: Duration = Duration::from_millis(100);
/// How long a dial may take before it counts as failed.
const DIAL_TIMEOUT: Duration = Duration::from_secs(4);
/// How long an acceptor waits for the dialler's request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How often link statistics are computed and fed back to the encoder.
const STATS_EVERY: Duration = Duration::from_secs(1);
/// Voice connections accepted at once beyond the channel's peers (a slot is
/// held only until the handshake ends).
const MAX_HANDSHAKES: usize = 32;

/// Settings of the voice plane, from `tincan up`'s flags.
#[derive(Clone, Debug)]
pub struct VoiceOptions {
    /// The voice socket's address (port 0: any).
    pub listen: SocketAddr,
    /// The microphone.
    pub input: DeviceSpec,
    /// The speaker.
    pub output: DeviceSpec,
    /// Voice relays: for the public address of our voice socket, and as the
    /// fallback path.
    pub relays: Vec<RelayAddr>,
    /// Delay, jitter and loss on what the voice socket sends: for tests and
    /// measurements on machines without netem, never for play.
    pub impairment: Option<tincan_media::impair::Impairment>,
    /// When the microphone is sent.
    pub gate: GateMode,
    /// Most peers a channel's full mesh connects to directly; past it,
    /// the relay carries the channel.
    pub max_direct_peers: usize,
}

impl Default for VoiceOptions {
    fn default() -> Self {
        VoiceOptions {
            listen: SocketAddr::from(([0, 0, 0, 0], 0)),
            input: DeviceSpec::Default,
            output: DeviceSpec::Default,
            relays: Vec::new(),
            impairment: None,
            gate: GateMode::VoiceActivity,
            max_direct_peers: PlannerConfig::default().max_direct_peers,
        }
    }
}

/// Parses `vad`, `ptt` or `open`, the microphone gate's names.
pub fn parse_gate(text: &str) -> Result<GateMode, String> {
    match text {
        "vad" => Ok(GateMode::VoiceActivity),
        "ptt" => Ok(GateMode::PushToTalk),
        "open" => Ok(GateMode::AlwaysOn),
        other => Err(format!("{other:?} is not vad, ptt or open")),
    }
}

/// Parses `HOST:PORT/PEERID`, the way a voice relay is named on the command line.
pub fn parse_relay(text: &str) -> Result<RelayAddr> {
    let (addr, peer) = text.split_once('/').ok_or_else(|| {
        anyhow!("voice relay {text:?} is not ADDRESS:PORT/PEERID, e.g. 192.0.2.1:4434/12D3KooW...")
    })?;
    Ok(RelayAddr {
        addr: addr
            .parse()
            .with_context(|| format!("voice relay address {addr:?} is not IP:PORT"))?,
        peer: peer
            .parse()
            .map_err(|e| anyhow!("voice relay PeerId {peer:?} is not valid: {e}"))?,
    })
}

/// One peer's link statistics, as `tincan status` and the API show them.
#[derive(Clone, Debug, Serialize)]
pub struct LinkView {
    /// The peer's PeerId.
    pub peer: String,
    /// Its user (hex), once known.
    pub user: Option<String>,
    /// lan, direct, punched or relayed.
    pub path: String,
    /// The peer's address.
    pub remote: String,
    /// Smoothed round-trip time.
    pub rtt_ms: f64,
    /// Share of our packets to it lost in the last second (QUIC's count).
    pub loss: f64,
    /// Arrival jitter of its voice (RFC 3550 style, from the jitter buffer).
    pub jitter_ms: f64,
    /// Its voice's bitrate as received in the last second.
    pub bitrate_kbps: f64,
    /// Frames from it dropped because its user may not speak here.
    pub forbidden: u64,
}

/// The session's state, as `tincan status` shows it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct VoiceView {
    /// The room (hex), while in a channel.
    pub room: Option<String>,
    /// The channel (hex), while in one.
    pub channel: Option<String>,
    /// Our voice socket.
    pub local: String,
    /// Our voice socket's public address, as a relay saw it.
    pub reflexive: Option<String>,
    /// Microphone muted.
    pub muted: bool,
    /// Speaker off.
    pub deafened: bool,
    /// Whether we speak now.
    pub speaking: bool,
    /// Users present in the channel (hex), and whether each speaks now.
    pub participants: Vec<(String, bool)>,
    /// Links.
    pub links: Vec<LinkView>,
    /// Whether the relay carries our voice too.
    pub relayed: bool,
    /// Frames sent.
    pub frames_sent: u64,
    /// Frames received and handed to the jitter buffers.
    pub frames_received: u64,
    /// Frames dropped: from users who may not speak, unknown speakers, or
    /// malformed.
    pub frames_refused: u64,
    /// Presences not admitted: from nodes whose user may not be in the
    /// channel they name (never dialled, punched to, or shown).
    pub presences_refused: u64,
    /// Wall clock (microseconds since the Unix epoch) of the microphone's
    /// first sample in this session: with a WAV input, when its sample 0
    /// was "spoken". 0 before.
    pub input_started_us: u64,
    /// Wall clock of the speaker's first sample: with a WAV output, when
    /// its sample 0 was "played". 0 before.
    pub output_started_us: u64,
}

#[derive(Default)]
struct LinkCounters {
    bytes: AtomicU64,
    frames: AtomicU64,
    forbidden: AtomicU64,
    /// Interarrival jitter in microseconds (RFC 3550's estimator).
    jitter_us: AtomicU64,
}

/// RFC 3550's interarrival jitter: how much the spacing of arrivals
/// differs from the spacing of media timestamps, smoothed over 16 frames.
#[derive(Default)]
struct JitterEstimator {
    last: Option<(Instant, u32)>,
    jitter_us: f64,
}

impl JitterEstimator {
    fn on_frame(&mut self, arrived: Instant, timestamp: u32) -> f64 {
        if let Some((at, ts)) = self.last {
            let arrival_us = arrived.saturating_duration_since(at).as_secs_f64() * 1e6;
            let media_us = f64::from(timestamp.wrapping_sub(ts) as i32) * 1e6 / 48_000.0;
            let d = (arrival_us - media_us).abs();
            // Reordered or long-gapped frames say nothing useful here.
            if media_us > 0.0 && media_us < 1e6 {
                self.jitter_us += (d - self.jitter_us) / 16.0;
            }
        }
        self.last = Some((arrived, timestamp));
        self.jitter_us
    }
}

/// Per-second loss and bitrate of one connection, from quinn's packet
/// counts (sent, declared lost) and our received byte count.
#[derive(Default)]
struct Rates {
    last_bytes: u64,
    last_sent_packets: u64,
    last_lost_packets: u64,
    loss: f64,
    bitrate_kbps: f64,
}

impl Rates {
    fn update(&mut self, stats: &quinn::ConnectionStats, received_bytes: u64) {
        let sent = stats.path.sent_packets;
        let lost = stats.path.lost_packets;
        let d_sent = sent.saturating_sub(self.last_sent_packets);
        let d_lost = lost.saturating_sub(self.last_lost_packets);
        self.last_sent_packets = sent;
        self.last_lost_packets = lost;
        self.loss = if d_sent == 0 {
            0.0
        } else {
            d_lost as f64 / d_sent as f64
        };
        self.bitrate_kbps = received_bytes.saturating_sub(self.last_bytes) as f64 * 8.0
            / 1000.0
            / STATS_EVERY.as_secs_f64();
        self.last_bytes = received_bytes;
    }
}

struct Link {
    conn: VoiceConnection,
    user: UserId,
    path: Path,
    counters: Arc<LinkCounters>,
    recv_task: tokio::task::AbortHandle,
    rates: Rates,
}

struct Session {
    room: RoomId,
    channel: ChannelId,
    engine: Arc<Engine<UserId>>,
    planner: PathPlanner,
    started: Instant,
    links: HashMap<PeerId, Link>,
    relay: Option<Arc<RelaySession>>,
    relay_task: Option<tokio::task::AbortHandle>,
    relay_counters: Arc<LinkCounters>,
    relay_joining: bool,
    /// The relay link's loss and bitrate, as for direct links.
    relay_rates: Rates,
    /// The bitrate last given to the encoder.
    bitrate_bps: u32,
    tasks: Vec<tokio::task::AbortHandle>,
    /// Who may speak here, refreshed each stats round.
    speakers_allowed: Arc<Mutex<HashMap<UserId, bool>>>,
    /// Users present, from their presences.
    present: HashMap<PeerId, UserId>,
}

impl Drop for Session {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        for link in self.links.values() {
            link.recv_task.abort();
            link.conn.close();
        }
        if let Some(t) = &self.relay_task {
            t.abort();
        }
    }
}

struct Shared {
    endpoint: VoiceEndpoint,
    mesh: Mesh,
    store: Arc<Store>,
    binding: NodeBinding,
    options: VoiceOptions,
    session: Mutex<Option<Session>>,
    reflexive: Mutex<Option<SocketAddr>>,
    muted: std::sync::atomic::AtomicBool,
    deafened: std::sync::atomic::AtomicBool,
    refused: Arc<AtomicU64>,
    received: Arc<AtomicU64>,
    /// Presences the gate did not admit.
    refused_presences: AtomicU64,
    push_to_talk: std::sync::atomic::AtomicBool,
    /// The binding of the user the session speaks for (the node's own user,
    /// or a user of the local API).
    current_binding: Mutex<NodeBinding>,
    /// The devices the next session opens (changed by `choose_devices`).
    devices: Mutex<(DeviceSpec, DeviceSpec)>,
    /// Per-user volumes, kept across sessions.
    volumes: Mutex<HashMap<UserId, f32>>,
    /// Who speaks now, as last published.
    speaking: Mutex<HashMap<UserId, bool>>,
    /// Speaking changes, for the API's event stream.
    speaking_tx: tokio::sync::broadcast::Sender<(UserId, bool)>,
    /// Who is in which voice channel of each followed room, from every
    /// presence heard (not only our session's channel): what the panel
    /// shows under each channel.
    rooms_present: Mutex<HashMap<RoomId, RoomPresence>>,
    /// Rosters of the channels presences were heard for, read from the
    /// store at most once a [`ROSTER_TTL`]: the gate every presence goes
    /// through.
    rosters: Mutex<HashMap<(RoomId, ChannelId), (Instant, RosterSnapshot)>>,
}

/// How long a roster read from the store answers for presences: a kick
/// stops the kicked node's presences counting within this.
const ROSTER_TTL: Duration = Duration::from_secs(1);
/// Rosters cached at once; past it the cache starts again.
const MAX_ROSTERS: usize = 64;

/// The nodes heard in a room's voice channels: node, its user, the channel,
/// when last heard.
type RoomPresence = HashMap<PeerId, (UserId, ChannelId, Instant)>;

/// Rooms and nodes per room whose presence is remembered; past them new
/// ones are ignored until old ones expire.
const MAX_PRESENCE_ROOMS: usize = 256;
const MAX_PRESENCE_PER_ROOM: usize = 512;

/// Speaking changes kept for a slow subscriber.
const SPEAKING_QUEUE: usize = 256;

/// The voice plane of a running node. Cheap to clone.
#[derive(Clone)]
pub struct Voice {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Voice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Voice")
            .field("endpoint", &self.shared.endpoint)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere while holding the lock is a bug already reported;
    // the state itself stays usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Voice {
    /// Binds the voice endpoint and starts accepting voice connections and
    /// listening to presences. Call inside the node's tokio runtime.
    pub fn start(
        node_seed: [u8; 32],
        binding: NodeBinding,
        mesh: Mesh,
        store: Arc<Store>,
        options: VoiceOptions,
    ) -> Result<Voice> {
        let config = EndpointConfig {
            impairment: options.impairment,
            ..EndpointConfig::default()
        };
        let endpoint = VoiceEndpoint::bind(node_seed, options.listen, &config)
            .context("cannot start the voice endpoint")?;
        let current_binding = binding.clone();
        let voice = Voice {
            shared: Arc::new(Shared {
                endpoint,
                mesh,
                store,
                binding,
                session: Mutex::new(None),
                reflexive: Mutex::new(None),
                muted: Default::default(),
                deafened: Default::default(),
                refused: Default::default(),
                received: Default::default(),
                refused_presences: Default::default(),
                push_to_talk: Default::default(),
                current_binding: Mutex::new(current_binding),
                devices: Mutex::new((options.input.clone(), options.output.clone())),
                volumes: Mutex::default(),
                speaking: Mutex::default(),
                speaking_tx: tokio::sync::broadcast::channel(SPEAKING_QUEUE).0,
                rooms_present: Mutex::default(),
                rosters: Mutex::default(),
                options,
            }),
        };
        tokio::spawn(voice.clone().accept_loop());
        tokio::spawn(voice.clone().signal_loop());
        tokio::spawn(voice.clone().tick_loop());
        tokio::spawn(voice.clone().observe_loop());
        tokio::spawn(voice.clone().roster_loop());
        Ok(voice)
    }

    /// Follows the store's change feed: when the session's room changes (a
    /// kick, ban, leave, demotion, permission change, the channel's or the
    /// room's deletion), the gate runs again over the new roster and every
    /// link whose user it refuses closes at once.
    async fn roster_loop(self) {
        let mut changes = self.shared.store.subscribe();
        loop {
            let changed = match changes.recv().await {
                Ok(change) => Some(change.entity),
                // Some changes were missed: check whatever they were.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => None,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            };
            let Some((room, channel)) = lock(&self.shared.session)
                .as_ref()
                .map(|s| (s.room, s.channel))
            else {
                continue;
            };
            if changed
                .as_ref()
                .is_some_and(|e| !tincan_voice::roster::affects_roster(e, &room))
            {
                continue;
            }
            lock(&self.shared.rosters).remove(&(room, channel));
            let roster = match roster_from_store(&self.shared.store, room, channel) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!("cannot read the voice channel's roster: {e}");
                    continue;
                }
            };
            let mut guard = lock(&self.shared.session);
            let Some(s) = guard.as_mut() else { continue };
            if (s.room, s.channel) != (room, channel) {
                continue;
            }
            let refused: Vec<(PeerId, String)> = s
                .links
                .iter()
                .filter_map(|(peer, l)| {
                    tincan_voice::gate::admit_user(&l.user, &roster)
                        .err()
                        .map(|r| (*peer, r.to_string()))
                })
                .collect();
            for (peer, why) in refused {
                if let Some(l) = s.links.remove(&peer) {
                    l.recv_task.abort();
                    l.conn.close();
                }
                s.present.remove(&peer);
                s.planner.remove(&peer);
                tracing::info!(%peer, "voice link closed: {why}");
            }
        }
    }

    /// The voice socket's address.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.shared.endpoint.local_addr()?)
    }

    /// The binding of the user the voice session speaks for.
    fn binding(&self) -> NodeBinding {
        lock(&self.shared.current_binding).clone()
    }

    fn user(&self) -> UserId {
        self.binding().user
    }

    /// The user the session in progress speaks for, or None when not in
    /// voice: the local API lets only that account drive the session.
    pub fn session_user(&self) -> Option<UserId> {
        let session = lock(&self.shared.session);
        session.as_ref().map(|_| self.user())
    }

    /// Joins a voice channel as the node's own user (leaving any other).
    pub fn join(&self, room: RoomId, channel: ChannelId) -> Result<()> {
        self.join_with(self.shared.binding.clone(), room, channel)
    }

    /// Joins a voice channel as `user`, a user of this node (logged in
    /// through the local API): the node signs nothing for them; their key
    /// vouches for this node in a fresh binding.
    pub fn join_as(&self, user: &UserKey, room: RoomId, channel: ChannelId) -> Result<()> {
        let node = self.shared.binding.node;
        let issued = tincan_core::Hlc::new(crate::node::wall_ms(), 0);
        self.join_with(NodeBinding::new(user, node, issued), room, channel)
    }

    /// Joins a voice channel (leaving any other) as the binding's user:
    /// starts the audio engine and announces our presence; peers are
    /// connected as they are found.
    fn join_with(&self, binding: NodeBinding, room: RoomId, channel: ChannelId) -> Result<()> {
        let store = &self.shared.store;
        let view = store
            .room(&room)?
            .ok_or_else(|| anyhow!("room {room} is not known here: join it first"))?;
        let ch = store.channel(&room, &channel)?.ok_or_else(|| {
            anyhow!("room {room} has no channel {channel}: `tincan channel list {room}` shows them")
        })?;
        let me = binding.user;
        let membership = store.membership(&room, &me)?;
        let may_listen = allows(
            &ch.channel.permissions,
            Action::Listen,
            &me,
            &view.owner,
            membership,
        );
        if !may_listen {
            bail!(
                "you may not listen in channel {:?} ({}): ask the room's owner",
                ch.channel.name,
                ch.channel.permissions.join(", ")
            );
        }
        self.leave();
        *lock(&self.shared.current_binding) = binding;
        let (input, output) = lock(&self.shared.devices).clone();
        let (engine, mut packets) = Engine::start(EngineConfig {
            input,
            output,
            capture: CaptureConfig {
                gate: self.shared.options.gate,
                ..CaptureConfig::default()
            },
            ..EngineConfig::default()
        })
        .context("cannot start the audio engine")?;
        engine.set_muted(self.shared.muted.load(Ordering::Relaxed));
        engine.set_deafened(self.shared.deafened.load(Ordering::Relaxed));
        engine
            .push_to_talk()
            .set_pressed(self.shared.push_to_talk.load(Ordering::Relaxed));
        for (user, gain) in lock(&self.shared.volumes).iter() {
            engine.set_volume(*user, *gain);
        }
        let engine = Arc::new(engine);
        let mut planner = PathPlanner::new(
            self.shared.endpoint.peer_id(),
            PlannerConfig {
                max_direct_peers: self.shared.options.max_direct_peers,
                // quinn tells us when a link dies (the tick loop's dead
                // links), so a linked peer stays while gossip stalls.
                links_vouch: true,
                ..PlannerConfig::default()
            },
        );
        planner.set_channel(Some((room, channel)));
        // The sender: each frame to every link, and to the relay when on it.
        let voice = self.clone();
        let sender = tokio::spawn(async move {
            while let Some(packet) = packets.recv().await {
                voice.send_frame(packet);
            }
        });
        let mut session = Session {
            room,
            channel,
            engine,
            planner,
            started: Instant::now(),
            links: HashMap::new(),
            relay: None,
            relay_task: None,
            relay_counters: Arc::default(),
            relay_joining: false,
            relay_rates: Rates::default(),
            bitrate_bps: 32_000,
            tasks: vec![sender.abort_handle()],
            speakers_allowed: Arc::default(),
            present: HashMap::new(),
        };
        refresh_permissions(store, &mut session);
        *lock(&self.shared.session) = Some(session);
        tracing::info!(%room, %channel, "joined voice channel");
        let voice = self.clone();
        tokio::spawn(async move { voice.announce().await });
        Ok(())
    }

    /// Leaves the voice channel, if in one.
    pub fn leave(&self) {
        let old = lock(&self.shared.session).take();
        if let Some(session) = old {
            let room = session.room;
            drop(session);
            let voice = self.clone();
            tokio::spawn(async move {
                let presence = voice.presence(room, None).await;
                let _ = voice
                    .shared
                    .mesh
                    .publish_signal(room, presence.encode())
                    .await;
            });
            tracing::info!(%room, "left voice");
        }
    }

    /// Mutes or unmutes the microphone.
    pub fn set_muted(&self, muted: bool) {
        self.shared.muted.store(muted, Ordering::Relaxed);
        if let Some(s) = lock(&self.shared.session).as_ref() {
            s.engine.set_muted(muted);
        }
    }

    /// Deafens or undeafens.
    pub fn set_deafened(&self, deafened: bool) {
        self.shared.deafened.store(deafened, Ordering::Relaxed);
        if let Some(s) = lock(&self.shared.session).as_ref() {
            s.engine.set_deafened(deafened);
        }
    }

    /// Presses or releases push-to-talk (effective in push-to-talk mode).
    pub fn push_to_talk(&self, down: bool) {
        self.shared.push_to_talk.store(down, Ordering::Relaxed);
        if let Some(s) = lock(&self.shared.session).as_ref() {
            s.engine.push_to_talk().set_pressed(down);
        }
    }

    /// Sets a user's volume.
    pub fn set_volume(&self, user: UserId, gain: f32) -> Result<()> {
        if !(0.0..=4.0).contains(&gain) {
            bail!("a volume is between 0.0 and 4.0, not {gain}");
        }
        lock(&self.shared.volumes).insert(user, gain);
        if let Some(s) = lock(&self.shared.session).as_ref() {
            s.engine.set_volume(user, gain);
        }
        Ok(())
    }

    /// A user's volume (1.0 unless set).
    pub fn volume(&self, user: &UserId) -> f32 {
        lock(&self.shared.volumes).get(user).copied().unwrap_or(1.0)
    }

    /// Whether push-to-talk is held.
    pub fn push_to_talk_down(&self) -> bool {
        self.shared.push_to_talk.load(Ordering::Relaxed)
    }

    /// The devices the voice session uses (as `--input`/`--output` name them).
    pub fn devices(&self) -> (DeviceSpec, DeviceSpec) {
        lock(&self.shared.devices).clone()
    }

    /// Chooses the microphone and/or speaker; a session in progress
    /// restarts its audio on them at once.
    pub fn choose_devices(
        &self,
        input: Option<DeviceSpec>,
        output: Option<DeviceSpec>,
    ) -> Result<()> {
        {
            let mut d = lock(&self.shared.devices);
            if let Some(i) = input {
                d.0 = i;
            }
            if let Some(o) = output {
                d.1 = o;
            }
        }
        let current = lock(&self.shared.session)
            .as_ref()
            .map(|s| (s.room, s.channel));
        if let Some((room, channel)) = current {
            self.join(room, channel)?;
        }
        Ok(())
    }

    /// The gate for a presence in `channel`: its binding names the node
    /// that published it, and its user may be in the channel now.
    fn admit_presence(
        &self,
        from: &PeerId,
        presence: &Presence,
        channel: ChannelId,
    ) -> Result<(), String> {
        let key = (presence.room, channel);
        let now = Instant::now();
        let roster = {
            let cached = lock(&self.shared.rosters)
                .get(&key)
                .filter(|(at, _)| now.duration_since(*at) < ROSTER_TTL)
                .map(|(_, r)| r.clone());
            match cached {
                Some(r) => r,
                None => {
                    let r = roster_from_store(&self.shared.store, presence.room, channel)
                        .map_err(|e| format!("the store cannot say who is a member now: {e}"))?;
                    let mut all = lock(&self.shared.rosters);
                    if all.len() >= MAX_ROSTERS {
                        all.clear();
                    }
                    all.insert(key, (now, r.clone()));
                    r
                }
            }
        };
        admit(
            &AdmitRequest {
                binding: &presence.binding,
                node: from,
                room: presence.room,
                channel,
            },
            &roster,
        )
        .map(|_| ())
        .map_err(|r| r.to_string())
    }

    fn remember_presence(&self, from: PeerId, presence: &Presence) {
        let mut all = lock(&self.shared.rooms_present);
        let now = Instant::now();
        for peers in all.values_mut() {
            peers.retain(|_, (_, _, at)| now.duration_since(*at) < PRESENCE_TIMEOUT);
        }
        all.retain(|_, peers| !peers.is_empty());
        match presence.channel {
            Some(channel) => {
                if all.len() >= MAX_PRESENCE_ROOMS && !all.contains_key(&presence.room) {
                    return;
                }
                let peers = all.entry(presence.room).or_default();
                if peers.len() < MAX_PRESENCE_PER_ROOM || peers.contains_key(&from) {
                    peers.insert(from, (presence.binding.user, channel, now));
                }
            }
            None => {
                if let Some(peers) = all.get_mut(&presence.room) {
                    peers.remove(&from);
                }
            }
        }
    }

    /// Who is in which voice channel of `room`: everyone whose presence
    /// was heard lately, and us.
    pub fn room_presence(&self, room: RoomId) -> Vec<(ChannelId, Vec<UserId>)> {
        let mut by_channel: HashMap<ChannelId, Vec<UserId>> = HashMap::new();
        let now = Instant::now();
        if let Some(peers) = lock(&self.shared.rooms_present).get(&room) {
            for (user, channel, at) in peers.values() {
                if now.duration_since(*at) < PRESENCE_TIMEOUT {
                    by_channel.entry(*channel).or_default().push(*user);
                }
            }
        }
        if let Some(s) = lock(&self.shared.session).as_ref()
            && s.room == room
        {
            by_channel.entry(s.channel).or_default().push(self.user());
        }
        let mut out: Vec<(ChannelId, Vec<UserId>)> = by_channel
            .into_iter()
            .map(|(c, mut users)| {
                users.sort();
                users.dedup();
                (c, users)
            })
            .collect();
        out.sort_by_key(|(c, _)| *c);
        out
    }

    /// Speaking changes (user, speaking) from now on, ours included.
    pub fn speaking_events(&self) -> tokio::sync::broadcast::Receiver<(UserId, bool)> {
        self.shared.speaking_tx.subscribe()
    }

    /// Publishes who started or stopped speaking since the last call.
    fn update_speaking(&self) {
        let now: HashMap<UserId, bool> = match lock(&self.shared.session).as_ref() {
            Some(s) => {
                let mut m: HashMap<UserId, bool> =
                    s.present.values().map(|u| (*u, false)).collect();
                for (user, level) in s.engine.levels() {
                    if level.speaking {
                        m.insert(user, true);
                    }
                }
                m.insert(
                    self.user(),
                    s.engine.counters().self_speaking.load(Ordering::Relaxed),
                );
                m
            }
            None => HashMap::new(),
        };
        let mut last = lock(&self.shared.speaking);
        for (user, speaking) in &now {
            if last.get(user).copied().unwrap_or(false) != *speaking {
                let _ = self.shared.speaking_tx.send((*user, *speaking));
            }
        }
        for (user, was) in last.iter() {
            if *was && !now.contains_key(user) {
                let _ = self.shared.speaking_tx.send((*user, false));
            }
        }
        *last = now;
    }

    /// The session's state and link statistics.
    pub fn status(&self) -> VoiceView {
        let local = self
            .shared
            .endpoint
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let reflexive = lock(&self.shared.reflexive).map(|a| a.to_string());
        let guard = lock(&self.shared.session);
        let mut view = VoiceView {
            local,
            reflexive,
            muted: self.shared.muted.load(Ordering::Relaxed),
            deafened: self.shared.deafened.load(Ordering::Relaxed),
            frames_received: self.shared.received.load(Ordering::Relaxed),
            frames_refused: self.shared.refused.load(Ordering::Relaxed),
            presences_refused: self.shared.refused_presences.load(Ordering::Relaxed),
            ..VoiceView::default()
        };
        let Some(s) = guard.as_ref() else {
            return view;
        };
        view.room = Some(s.room.to_hex());
        view.channel = Some(s.channel.to_hex());
        view.relayed = s.relay.is_some();
        let counters = s.engine.counters();
        view.frames_sent = counters.frames_sent.load(Ordering::Relaxed);
        view.speaking = counters.self_speaking.load(Ordering::Relaxed);
        view.input_started_us = counters.input_started_us.load(Ordering::Relaxed);
        view.output_started_us = counters.output_started_us.load(Ordering::Relaxed);
        let levels = s.engine.levels();
        view.participants = s
            .present
            .values()
            .map(|u| {
                let speaking = levels.iter().any(|(k, l)| k == u && l.speaking);
                (u.to_hex(), speaking)
            })
            .collect();
        for (peer, link) in &s.links {
            view.links.push(LinkView {
                peer: peer.to_string(),
                user: Some(link.user.to_hex()),
                path: link.path.to_string(),
                remote: link.conn.remote_addr().to_string(),
                rtt_ms: link.conn.rtt().as_secs_f64() * 1000.0,
                loss: link.rates.loss,
                jitter_ms: link.counters.jitter_us.load(Ordering::Relaxed) as f64 / 1000.0,
                bitrate_kbps: link.rates.bitrate_kbps,
                forbidden: link.counters.forbidden.load(Ordering::Relaxed),
            });
        }
        if let Some(relay) = &s.relay {
            let conn = relay.connection();
            view.links.push(LinkView {
                peer: conn.peer_id().to_string(),
                user: None,
                path: Path::Relayed.to_string(),
                remote: conn.remote_addr().to_string(),
                rtt_ms: conn.rtt().as_secs_f64() * 1000.0,
                loss: s.relay_rates.loss,
                jitter_ms: s.relay_counters.jitter_us.load(Ordering::Relaxed) as f64 / 1000.0,
                bitrate_kbps: s.relay_rates.bitrate_kbps,
                forbidden: s.relay_counters.forbidden.load(Ordering::Relaxed),
            });
        }
        view
    }

    /// Our presence in `room` (in `channel`, or leaving with `None`).
    async fn presence(&self, room: RoomId, channel: Option<ChannelId>) -> Presence {
        let mut candidates = Vec::new();
        if let Ok(local) = self.shared.endpoint.local_addr() {
            for ip in self.host_ips(local.ip()).await {
                candidates.push(Candidate {
                    addr: SocketAddr::new(ip, local.port()),
                    kind: CandidateKind::Host,
                });
            }
        }
        if let Some(r) = *lock(&self.shared.reflexive)
            && !candidates.iter().any(|c| c.addr == r)
        {
            candidates.push(Candidate {
                addr: r,
                kind: CandidateKind::Reflexive,
            });
        }
        candidates.truncate(tincan_media::presence::MAX_CANDIDATES);
        let relayed = lock(&self.shared.session)
            .as_ref()
            .is_some_and(|s| s.relay.is_some());
        Presence {
            binding: self.binding(),
            room,
            channel,
            candidates,
            relayed,
            sent_ms: crate::node::wall_ms(),
        }
    }

    /// Our interface addresses: the bound one, or (bound to all) those the
    /// mesh listens on, which libp2p enumerates per interface.
    async fn host_ips(&self, bound: IpAddr) -> Vec<IpAddr> {
        if !bound.is_unspecified() {
            return vec![bound];
        }
        let addrs = tokio::time::timeout(Duration::from_secs(1), self.shared.mesh.listen_addrs())
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        let mut ips: Vec<IpAddr> = Vec::new();
        for a in addrs {
            // A relayed address names the relay's host, not ours.
            if a.iter()
                .any(|p| matches!(p, tincan_mesh::Protocol::P2pCircuit))
            {
                continue;
            }
            for p in a.iter() {
                let ip = match p {
                    tincan_mesh::Protocol::Ip4(ip) => IpAddr::V4(ip),
                    tincan_mesh::Protocol::Ip6(ip) => IpAddr::V6(ip),
                    _ => continue,
                };
                if !ips.contains(&ip) && (bound.is_ipv4() == ip.is_ipv4()) {
                    ips.push(ip);
                }
            }
        }
        // Loopback only when there is nothing else: it reaches no other host.
        if ips.iter().any(|ip| !ip.is_loopback()) {
            ips.retain(|ip| !ip.is_loopback());
        }
        ips
    }

    async fn announce(&self) {
        let room = match lock(&self.shared.session).as_ref() {
            Some(s) => (s.room, s.channel),
            None => return,
        };
        let presence = self.presence(room.0, Some(room.1)).await;
        if let Err(e) = self
            .shared
            .mesh
            .publish_signal(room.0, presence.encode())
            .await
        {
            tracing::debug!("cannot announce voice presence: {e}");
        }
    }

    fn send_frame(&self, packet: VoicePacket) {
        let guard = lock(&self.shared.session);
        let Some(s) = guard.as_ref() else { return };
        let mut datagram = VoiceDatagram {
            channel: 0,
            speaker: 0,
            sequence: packet.sequence,
            timestamp: packet.timestamp,
            end_of_spurt: false,
            payload: packet.payload,
            redundant: packet.redundant,
        };
        let Ok(bytes) = datagram.encode() else {
            return;
        };
        let bytes = bytes::Bytes::from(bytes);
        for link in s.links.values() {
            link.conn.send_encoded(bytes.clone());
        }
        if let Some(relay) = &s.relay {
            datagram.speaker = relay.speaker();
            relay.send(&datagram);
        }
    }

    async fn accept_loop(self) {
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
        while let Some(accepting) = self.shared.endpoint.accept_incoming().await {
            // Each handshake in its own task, so a silent dialler holds up
            // nobody; past MAX_HANDSHAKES at once, newcomers are refused.
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                accepting.refuse();
                continue;
            };
            let voice = self.clone();
            tokio::spawn(async move {
                match accepting.finish().await {
                    Ok(conn) => {
                        if let Err(e) = voice.on_incoming(conn).await {
                            tracing::debug!("voice handshake failed: {e:#}");
                        }
                    }
                    Err(e) => tracing::debug!("voice connection not accepted: {e}"),
                }
                drop(permit);
            });
        }
    }

    async fn on_incoming(&self, conn: VoiceConnection) -> Result<()> {
        let (mut send, mut recv) = tokio::time::timeout(REQUEST_TIMEOUT, conn.accept_control())
            .await
            .context("no control stream")??;
        let request: Request = tokio::time::timeout(
            REQUEST_TIMEOUT,
            read_message(&mut recv, MAX_CONTROL_MESSAGE),
        )
        .await
        .context("no request")??;
        let hello = match request {
            Request::Observe => {
                write_message(&mut send, &Answer::Observed(conn.remote_addr())).await?;
                let _ = send.finish();
                let _ = tokio::time::timeout(REQUEST_TIMEOUT, conn.closed()).await;
                return Ok(());
            }
            Request::Join(hello) => hello,
        };
        match self
            .check_hello(&conn, &hello)
            .and_then(|()| self.check_second_link(&conn.peer_id(), false))
        {
            Ok(()) => {
                write_message(
                    &mut send,
                    &Answer::Welcome(Welcome {
                        observed: conn.remote_addr(),
                        speaker: 0,
                        speakers: Vec::new(),
                    }),
                )
                .await?;
                self.add_link(conn, hello.binding.user, send);
                Ok(())
            }
            Err(reason) => {
                let _ = write_message(
                    &mut send,
                    &Answer::Refused(Refused {
                        reason: reason.clone(),
                    }),
                )
                .await;
                let _ = send.finish();
                tokio::time::sleep(Duration::from_millis(100)).await;
                conn.close();
                bail!("refused {}: {reason}", conn.peer_id())
            }
        }
    }

    /// Whether a dialler may exchange voice with us: its binding is signed
    /// and names the node TLS proved, its user is a member who may listen
    /// in the channel we are in.
    fn check_hello(&self, conn: &VoiceConnection, hello: &Hello) -> Result<(), String> {
        if hello.binding.verify().is_err() {
            return Err("your user binding is not signed by your user".into());
        }
        if hello.binding.node.peer_id() != conn.peer_id().to_string() {
            return Err("your user binding names another node".into());
        }
        let (room, channel) = match lock(&self.shared.session).as_ref() {
            Some(s) => (s.room, s.channel),
            None => return Err("this node is not in a voice channel".into()),
        };
        if (hello.room, hello.channel) != (room, channel) {
            return Err("this node is in another voice channel".into());
        }
        let store = &self.shared.store;
        let user = hello.binding.user;
        let check = || -> Result<bool, tincan_store::StorageError> {
            let Some(view) = store.room(&room)? else {
                return Ok(false);
            };
            let Some(ch) = store.channel(&room, &channel)? else {
                return Ok(false);
            };
            let membership = store.membership(&room, &user)?;
            Ok(membership.is_member()
                && allows(
                    &ch.channel.permissions,
                    Action::Listen,
                    &user,
                    &view.owner,
                    membership,
                ))
        };
        match check() {
            Ok(true) => Ok(()),
            Ok(false) => {
                Err("you are not a member of this room who may listen in this channel".into())
            }
            Err(e) => Err(format!("the node cannot check membership now: {e}")),
        }
    }

    /// One link per pair: a connection with `peer` that we dialled
    /// (`dialled`) or accepted is refused while a live link with it is up,
    /// unless it is the one the smaller PeerId dialled (that one replaces
    /// the other, at both ends).
    fn check_second_link(&self, peer: &PeerId, dialled: bool) -> Result<(), String> {
        let guard = lock(&self.shared.session);
        let Some(s) = guard.as_ref() else {
            return Ok(());
        };
        let me = self.shared.mesh.peer_id();
        let canonical = if dialled {
            dials_first(&me, peer)
        } else {
            dials_first(peer, &me)
        };
        match s.links.get(peer) {
            Some(l) if l.conn.close_reason().is_none() && !canonical => {
                Err("a voice link with this node is up already".into())
            }
            _ => Ok(()),
        }
    }

    /// Registers a direct link and starts receiving on it. `control` is
    /// kept open for the connection's life.
    fn add_link(&self, conn: VoiceConnection, user: UserId, control: quinn::SendStream) {
        let mut guard = lock(&self.shared.session);
        let Some(s) = guard.as_mut() else {
            conn.close();
            return;
        };
        let peer = conn.peer_id();
        let path = s.planner.on_connected(&peer, conn.remote_addr());
        let counters = Arc::new(LinkCounters::default());
        let task = tokio::spawn(receive(
            conn.clone(),
            user,
            s.engine.clone(),
            s.speakers_allowed.clone(),
            counters.clone(),
            self.shared.received.clone(),
            self.shared.refused.clone(),
            control,
        ));
        tracing::info!(%peer, %path, remote = %conn.remote_addr(), "voice link up");
        if let Some(old) = s.links.insert(
            peer,
            Link {
                conn,
                user,
                path,
                counters,
                recv_task: task.abort_handle(),
                rates: Rates::default(),
            },
        ) {
            old.recv_task.abort();
            old.conn.close();
        }
    }

    async fn signal_loop(self) {
        let mut signals = self.shared.mesh.signals();
        loop {
            let signal = match signals.recv().await {
                Ok(s) => s,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::debug!("{n} voice signals lost; the next round repeats them");
                    continue;
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            };
            let presence =
                match Presence::verify(&signal.data, signal.room, &signal.from.to_string()) {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::debug!(from = %signal.from, "voice presence refused: {e}");
                        continue;
                    }
                };
            // Presence from members only: a node whose user may not be in
            // the channel it names is neither dialled, nor punched to, nor
            // shown (tincan_voice's gate, over the store's roster).
            if let Some(channel) = presence.channel
                && let Err(why) = self.admit_presence(&signal.from, &presence, channel)
            {
                self.shared
                    .refused_presences
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(from = %signal.from, "voice presence not admitted: {why}");
                continue;
            }
            self.remember_presence(signal.from, &presence);
            let newcomer = {
                let mut guard = lock(&self.shared.session);
                let Some(s) = guard.as_mut() else { continue };
                if presence.room != s.room {
                    continue;
                }
                let now = s.started.elapsed();
                let newcomer = if presence.channel == Some(s.channel) {
                    s.present
                        .insert(signal.from, presence.binding.user)
                        .is_none()
                } else {
                    s.present.remove(&signal.from);
                    false
                };
                s.planner.on_presence(&signal.from, presence, now);
                newcomer
            };
            // Answer a newcomer at once rather than at our next round, so
            // that it learns our addresses (and dials, or punches) now.
            if newcomer {
                self.announce().await;
            }
        }
    }

    async fn tick_loop(self) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_presence = Instant::now() - PRESENCE_INTERVAL;
        let mut last_stats = Instant::now();
        loop {
            tick.tick().await;
            self.update_speaking();
            if last_presence.elapsed() >= PRESENCE_INTERVAL {
                last_presence = Instant::now();
                self.announce().await;
            }
            let stats_due = last_stats.elapsed() >= STATS_EVERY;
            if stats_due {
                last_stats = Instant::now();
            }
            let (actions, want_relay) = {
                let mut guard = lock(&self.shared.session);
                let Some(s) = guard.as_mut() else { continue };
                let now = s.started.elapsed();
                // Links that died (peer killed, idle timeout).
                let dead: Vec<PeerId> = s
                    .links
                    .iter()
                    .filter(|(_, l)| l.conn.close_reason().is_some())
                    .map(|(p, _)| *p)
                    .collect();
                for peer in dead {
                    if let Some(l) = s.links.remove(&peer) {
                        l.recv_task.abort();
                        tracing::info!(%peer, "voice link closed");
                    }
                    s.planner.on_disconnected(&peer, now);
                }
                if s.relay
                    .as_ref()
                    .is_some_and(|r| r.connection().close_reason().is_some())
                {
                    tracing::info!("voice relay link closed");
                    s.relay = None;
                    if let Some(t) = s.relay_task.take() {
                        t.abort();
                    }
                }
                if stats_due {
                    update_stats(&self.shared.store, s);
                }
                let actions = s.planner.poll(now);
                let want_relay =
                    s.planner.needs_relay(now) && s.relay.is_none() && !s.relay_joining;
                if want_relay && !self.shared.options.relays.is_empty() {
                    s.relay_joining = true;
                }
                for a in &actions {
                    if let PathAction::Forget { peer } = a {
                        s.present.remove(peer);
                        if let Some(l) = s.links.remove(peer) {
                            l.recv_task.abort();
                            l.conn.close();
                        }
                    }
                }
                (actions, want_relay.then_some((s.room, s.channel)))
            };
            for action in actions {
                match action {
                    PathAction::Dial { peer, addrs } => {
                        let voice = self.clone();
                        tokio::spawn(async move { voice.dial(peer, addrs).await });
                    }
                    PathAction::Punch { addrs, .. } => {
                        for a in addrs {
                            let _ = self.shared.endpoint.punch(a);
                        }
                    }
                    PathAction::Forget { .. } => {}
                }
            }
            if let Some((room, channel)) = want_relay
                && !self.shared.options.relays.is_empty()
            {
                let voice = self.clone();
                tokio::spawn(async move { voice.join_relay(room, channel).await });
            }
        }
    }

    async fn dial(&self, peer: PeerId, addrs: Vec<SocketAddr>) {
        let result = self.dial_any(&peer, &addrs).await;
        if let Err(e) = result {
            tracing::debug!(%peer, "voice dial failed: {e:#}");
            if let Some(s) = lock(&self.shared.session).as_mut()
                // The other side's dial may have brought the link meanwhile.
                && !s.links.contains_key(&peer)
            {
                let now = s.started.elapsed();
                s.planner.on_disconnected(&peer, now);
            }
        }
    }

    /// Dials every candidate at once and keeps the first connection whose
    /// handshake the peer welcomes.
    async fn dial_any(&self, peer: &PeerId, addrs: &[SocketAddr]) -> Result<()> {
        let expected: PeerId = *peer;
        let hello = {
            let guard = lock(&self.shared.session);
            let s = guard.as_ref().ok_or_else(|| anyhow!("left the channel"))?;
            Hello {
                room: s.room,
                channel: s.channel,
                binding: self.binding(),
                proof: Vec::new(),
            }
        };
        let mut attempts = tokio::task::JoinSet::new();
        for &addr in addrs {
            let voice = self.clone();
            attempts.spawn(async move {
                tokio::time::timeout(DIAL_TIMEOUT, voice.shared.endpoint.connect(addr, expected))
                    .await
                    .map_err(|_| anyhow!("{addr}: no answer in {DIAL_TIMEOUT:?}"))?
                    .map_err(|e| anyhow!("{addr}: {e}"))
            });
        }
        let mut last_error = anyhow!("no candidate address");
        while let Some(joined) = attempts.join_next().await {
            let conn = match joined {
                Ok(Ok(conn)) => conn,
                Ok(Err(e)) => {
                    last_error = e;
                    continue;
                }
                Err(e) => {
                    last_error = anyhow!("dial task failed: {e}");
                    continue;
                }
            };
            // The first to connect wins; the others are dropped (and so
            // closed) with the JoinSet.
            attempts.abort_all();
            let (mut send, mut recv) = conn.open_control().await?;
            write_message(&mut send, &Request::Join(hello.clone())).await?;
            let answer: Answer = tokio::time::timeout(
                REQUEST_TIMEOUT,
                read_message(&mut recv, MAX_CONTROL_MESSAGE),
            )
            .await
            .context("the peer did not answer")??;
            return match answer {
                Answer::Welcome(w) => {
                    self.learn_reflexive(w.observed);
                    let user = lock(&self.shared.session)
                        .as_ref()
                        .and_then(|s| s.present.get(&expected).copied())
                        .ok_or_else(|| anyhow!("{peer} left before the link was up"))?;
                    if let Err(reason) = self.check_second_link(&expected, true) {
                        conn.close();
                        bail!("{peer}: {reason}");
                    }
                    self.add_link(conn, user, send);
                    Ok(())
                }
                Answer::Refused(r) => {
                    conn.close();
                    Err(anyhow!("{peer} refused: {}", r.reason))
                }
                Answer::Observed(_) => {
                    conn.close();
                    Err(anyhow!("{peer} answered a join with an address"))
                }
            };
        }
        Err(last_error)
    }

    /// A peer told us where it sees us: on a public address, that is as
    /// good as a relay's observation when we have none.
    fn learn_reflexive(&self, observed: SocketAddr) {
        if is_private(observed.ip()) {
            return;
        }
        let mut r = lock(&self.shared.reflexive);
        if r.is_none() {
            *r = Some(observed);
        }
    }

    /// Asks the relays for our public voice address, now and then: it also
    /// keeps our NAT's mapping for the voice socket alive.
    async fn observe_loop(self) {
        if self.shared.options.relays.is_empty() {
            return;
        }
        loop {
            for relay in &self.shared.options.relays {
                match observe_address(&self.shared.endpoint, relay).await {
                    Ok(addr) => {
                        let changed = lock(&self.shared.reflexive).replace(addr) != Some(addr);
                        if changed {
                            tracing::info!(%addr, "voice socket's public address");
                            self.announce().await;
                        }
                        break;
                    }
                    Err(e) => tracing::debug!(relay = %relay.addr, "observe failed: {e}"),
                }
            }
            tokio::time::sleep(Duration::from_secs(20)).await;
        }
    }

    async fn join_relay(&self, room: RoomId, channel: ChannelId) {
        let result = self.join_relay_inner(room, channel).await;
        {
            let mut guard = lock(&self.shared.session);
            if let Some(s) = guard.as_mut() {
                s.relay_joining = false;
                match result {
                    Ok(session) if (s.room, s.channel) == (room, channel) => {
                        let session = Arc::new(session);
                        let task = tokio::spawn(receive_relay(
                            session.clone(),
                            s.engine.clone(),
                            s.speakers_allowed.clone(),
                            s.relay_counters.clone(),
                            self.shared.received.clone(),
                            self.shared.refused.clone(),
                        ));
                        tracing::info!(relay = %session.connection().remote_addr(), "voice through the relay");
                        s.relay = Some(session);
                        s.relay_task = Some(task.abort_handle());
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!("cannot use the voice relay: {e:#}"),
                }
            }
        }
        self.announce().await;
    }

    async fn join_relay_inner(&self, room: RoomId, channel: ChannelId) -> Result<RelaySession> {
        let proof = self
            .shared
            .store
            .membership_proof(&room, &self.user(), &channel, MAX_PROOF_RECORDS)
            .context("cannot prove membership to the relay")?;
        let hello = Hello {
            room,
            channel,
            binding: self.binding(),
            proof,
        };
        let mut last = anyhow!("no voice relay configured");
        for relay in &self.shared.options.relays {
            match RelaySession::join(&self.shared.endpoint, relay, hello.clone()).await {
                Ok(s) => return Ok(s),
                Err(e) => last = anyhow!("{}: {e}", relay.addr),
            }
        }
        Err(last)
    }
}

/// Recomputes who may speak, and each link's loss and bitrate; feeds the
/// worst loss back to the encoder (FEC, redundancy and bitrate).
fn update_stats(store: &Store, s: &mut Session) {
    refresh_permissions(store, s);
    let mut worst_loss: f64 = 0.0;
    for link in s.links.values_mut() {
        let bytes = link.counters.bytes.load(Ordering::Relaxed);
        link.rates.update(&link.conn.stats(), bytes);
        worst_loss = worst_loss.max(link.rates.loss);
    }
    if let Some(relay) = &s.relay {
        let bytes = s.relay_counters.bytes.load(Ordering::Relaxed);
        s.relay_rates.update(&relay.connection().stats(), bytes);
        worst_loss = worst_loss.max(s.relay_rates.loss);
    }
    s.engine
        .set_expected_loss((worst_loss * 100.0).round().clamp(0.0, 100.0) as u8);
    // Under heavy loss the path is likely congested: send less. FEC and
    // redundancy (turned on by the expected loss above) need the room.
    let bitrate = bitrate_for_loss(worst_loss);
    if bitrate != s.bitrate_bps {
        s.bitrate_bps = bitrate;
        s.engine.set_bitrate(bitrate);
        tracing::debug!(bitrate, loss = worst_loss, "voice bitrate adapted");
    }
}

fn refresh_permissions(store: &Store, s: &mut Session) {
    let (room, channel) = (s.room, s.channel);
    let Ok(Some(view)) = store.room(&room) else {
        return;
    };
    let Ok(Some(ch)) = store.channel(&room, &channel) else {
        return;
    };
    let Ok(members) = store.members(&room) else {
        return;
    };
    let allowed: HashMap<UserId, bool> = members
        .iter()
        .map(|m| {
            (
                m.user,
                allows(
                    &ch.channel.permissions,
                    Action::Speak,
                    &m.user,
                    &view.owner,
                    m.membership,
                ),
            )
        })
        .collect();
    *lock(&s.speakers_allowed) = allowed;
}

fn packet_of(d: &VoiceDatagramRef<'_>) -> VoicePacket {
    VoicePacket {
        sequence: d.sequence,
        timestamp: d.timestamp,
        payload: d.payload.to_vec(),
        redundant: d.redundant.map(<[u8]>::to_vec),
    }
}

/// Receives a direct link's frames: each is from the link's user (speaker
/// index 0), checked against the channel's speak permission.
#[allow(clippy::too_many_arguments)]
async fn receive(
    conn: VoiceConnection,
    user: UserId,
    engine: Arc<Engine<UserId>>,
    allowed: Arc<Mutex<HashMap<UserId, bool>>>,
    counters: Arc<LinkCounters>,
    received: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
    _control: quinn::SendStream,
) {
    let mut jitter = JitterEstimator::default();
    while let Ok(bytes) = conn.recv_bytes().await {
        let arrived = Instant::now();
        counters
            .bytes
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        let Ok(d) = VoiceDatagramRef::parse(&bytes) else {
            refused.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        if d.speaker != 0 || d.channel != 0 {
            refused.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let j = jitter.on_frame(arrived, d.timestamp);
        counters.jitter_us.store(j as u64, Ordering::Relaxed);
        if !lock(&allowed).get(&user).copied().unwrap_or(false) {
            counters.forbidden.fetch_add(1, Ordering::Relaxed);
            refused.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        counters.frames.fetch_add(1, Ordering::Relaxed);
        received.fetch_add(1, Ordering::Relaxed);
        engine.push(user, packet_of(&d), arrived);
    }
}

/// Receives the relay's frames: the speaker index names the user through
/// the relay's table.
async fn receive_relay(
    relay: Arc<RelaySession>,
    engine: Arc<Engine<UserId>>,
    allowed: Arc<Mutex<HashMap<UserId, bool>>>,
    counters: Arc<LinkCounters>,
    received: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
) {
    let mut jitter: HashMap<u16, JitterEstimator> = HashMap::new();
    while let Ok(bytes) = relay.recv().await {
        let arrived = Instant::now();
        counters
            .bytes
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        let Ok(d) = VoiceDatagramRef::parse(&bytes) else {
            refused.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let Some(user) = relay.user_of(d.speaker) else {
            refused.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        if jitter.len() < 256 || jitter.contains_key(&d.speaker) {
            let j = jitter
                .entry(d.speaker)
                .or_default()
                .on_frame(arrived, d.timestamp);
            counters.jitter_us.store(j as u64, Ordering::Relaxed);
        }
        if !lock(&allowed).get(&user).copied().unwrap_or(false) {
            counters.forbidden.fetch_add(1, Ordering::Relaxed);
            refused.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        counters.frames.fetch_add(1, Ordering::Relaxed);
        received.fetch_add(1, Ordering::Relaxed);
        engine.push(user, packet_of(&d), arrived);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_follows_the_spread_of_arrivals() {
        let start = Instant::now();
        let mut steady = JitterEstimator::default();
        let mut shaky = JitterEstimator::default();
        let (mut j_steady, mut j_shaky) = (0.0, 0.0);
        for i in 0..500u32 {
            let ts = i * 480;
            j_steady = steady.on_frame(start + Duration::from_millis(u64::from(i) * 10), ts);
            // Alternately 5 ms early and 5 ms late.
            let wobble = if i % 2 == 0 { 5 } else { 0 };
            j_shaky = shaky.on_frame(
                start + Duration::from_millis(u64::from(i) * 10 + wobble),
                ts,
            );
        }
        assert!(j_steady < 100.0, "{j_steady} us");
        assert!((4_000.0..6_000.0).contains(&j_shaky), "{j_shaky} us");
    }

    #[test]
    fn gates_and_relays_parse() {
        assert_eq!(parse_gate("open"), Ok(GateMode::AlwaysOn));
        assert!(parse_gate("loud").is_err());
        let peer = "12D3KooWPizzfo9AQpWuwX69r5e84noMpck3ouKCyrvxUAHZ3P3c";
        let r = parse_relay(&format!("10.0.0.1:4434/{peer}")).unwrap();
        assert_eq!(r.addr, "10.0.0.1:4434".parse().unwrap());
        assert!(parse_relay("10.0.0.1:4434").is_err());
        assert!(parse_relay(&format!("nowhere/{peer}")).is_err());
    }
}
