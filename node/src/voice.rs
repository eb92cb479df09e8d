//! The node's voice plane: wiring only. The voice session itself is
//! `tincan_voice` (a sans-IO `VoiceSession` run by its tokio driver,
//! `tincan_voice::driver::VoiceDriver`): presence, the gate, links, the
//! relay, sealed frames and their keys all live there. This module holds
//! what only the node has: the options from `tincan up`'s flags, the voice
//! endpoint and its accept and observe loops, the mesh's voice topic (in
//! both directions), the panel's view of who is in which channel of every
//! followed room, and the handle the control endpoint and the local API
//! call (`Voice`).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;
use tincan_audio::capture::{CaptureConfig, GateMode};
use tincan_audio::device::DeviceSpec;
use tincan_audio::engine::EngineConfig;
use tincan_core::permissions::{Action, allows};
use tincan_core::{ChannelId, NodeBinding, NodeKey, RoomId, UserId, UserKey};
use tincan_media::presence::{PRESENCE_TIMEOUT, Presence};
use tincan_media::relay_client::{RelayAddr, observe_address};
use tincan_media::{EndpointConfig, VoiceEndpoint};
use tincan_mesh::{Mesh, PeerId};
use tincan_store::Store;
use tincan_voice::SessionConfig;
use tincan_voice::driver::{DriverConfig, SignalOut, VoiceDriver, accept_loop};
use tincan_voice::gate::{AdmitRequest, RosterSnapshot, admit};
use tincan_voice::paths::PlannerConfig;
use tincan_voice::protocol::VoiceSignal;
use tincan_voice::roster::roster_from_store;

/// The voice plane of the `tincan up` running in this process: the control
/// endpoint's commands reach it here. One node runs per process (the voice
/// session itself has no global: see `tincan_voice::driver`).
static RUNNING: std::sync::OnceLock<Voice> = std::sync::OnceLock::new();

/// Records the running node's voice plane (once per process).
pub fn set_running(voice: Voice) {
    let _ = RUNNING.set(voice);
}

/// The running node's voice plane, if this process runs one.
pub fn running() -> Option<Voice> {
    RUNNING.get().cloned()
}

/// Voice connections accepted at once beyond the channel's peers (a slot is
/// held only until the handshake ends).
const MAX_HANDSHAKES: usize = 32;
/// Signals waiting to be published on the mesh; past it they are dropped
/// (each repeats within a second or is re-shared).
const PUBLISH_QUEUE: usize = 256;
/// How often our interface addresses are read again.
const INTERFACES_EVERY: Duration = Duration::from_secs(20);

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
    /// Frames sealed and sent (once per frame, whatever the number of links).
    pub frames_sent: u64,
    /// Frames our microphone made that were not sent: our user may not
    /// speak in this channel (the room's owner can allow it).
    pub frames_withheld: u64,
    /// Frames received and handed to the jitter buffers.
    pub frames_received: u64,
    /// Frames dropped: from users who may not speak, unknown speakers,
    /// malformed, plaintext, or whose tag did not verify (forged, altered).
    pub frames_refused: u64,
    /// Of those: plaintext (version 1) frames; only sealed frames are taken.
    pub frames_plaintext: u64,
    /// Of those: sealed frames whose tag did not verify.
    pub frames_bad_tag: u64,
    /// Frames dropped because we hold no key for them yet (a join race,
    /// healed by the sender's next key share): not counted as refused.
    pub frames_no_key: u64,
    /// Frames dropped as replays (or the same frame by two paths).
    pub frames_replayed: u64,
    /// Evidence messages sent to the relay against speakers our gate
    /// refuses.
    pub relay_evidence_sent: u64,
    /// Relay tokens of a new key epoch shown to the relay (invite-only
    /// rooms start one at each kick, ban or leave).
    pub relay_tokens_shown: u64,
    /// What the voice driver adds to each received frame before its jitter
    /// buffer (task hop, gate, opening), over the newest 1,024 frames.
    pub receive_delay: tincan_voice::driver::DelayFigures,
    /// What it adds to each of our frames before quinn (sealing, copies).
    pub send_delay: tincan_voice::driver::DelayFigures,
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

struct Shared {
    endpoint: Arc<VoiceEndpoint>,
    mesh: Mesh,
    store: Arc<Store>,
    binding: NodeBinding,
    node_seed: [u8; 32],
    options: VoiceOptions,
    driver: Mutex<Option<VoiceDriver>>,
    /// Signals for the mesh: one task publishes them in order.
    publish: tokio::sync::mpsc::Sender<(RoomId, Vec<u8>)>,
    reflexive: Mutex<Option<SocketAddr>>,
    /// Our interface addresses, for host candidates (read in a task: the
    /// mesh knows them).
    interfaces: Mutex<Vec<IpAddr>>,
    muted: std::sync::atomic::AtomicBool,
    deafened: std::sync::atomic::AtomicBool,
    /// Presences the gate did not admit (any room, any channel).
    refused_presences: AtomicU64,
    push_to_talk: std::sync::atomic::AtomicBool,
    /// The devices the next session opens (changed by `choose_devices`).
    devices: Mutex<(DeviceSpec, DeviceSpec)>,
    /// Per-user volumes, kept across sessions.
    volumes: Mutex<HashMap<UserId, f32>>,
    /// Speaking changes, for the API's event stream.
    speaking_tx: tokio::sync::broadcast::Sender<(UserId, bool)>,
    /// Who is in which voice channel of each followed room, from every
    /// presence heard (not only our session's channel): what the panel
    /// shows under each channel.
    rooms_present: Mutex<HashMap<RoomId, RoomPresence>>,
    /// Rosters of the channels presences were heard for, read from the
    /// store at most once a [`ROSTER_TTL`]: the gate every presence goes
    /// through before the panel shows it.
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

/// The mesh's voice topic, as the driver publishes on it.
struct MeshSignals(tokio::sync::mpsc::Sender<(RoomId, Vec<u8>)>);

impl SignalOut for MeshSignals {
    fn publish(&self, room: RoomId, signal: Vec<u8>) {
        if self.0.try_send((room, signal)).is_err() {
            tracing::debug!("voice signal dropped: the mesh is behind");
        }
    }
}

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
        let (publish, mut to_publish) = tokio::sync::mpsc::channel(PUBLISH_QUEUE);
        let voice = Voice {
            shared: Arc::new(Shared {
                endpoint: Arc::new(endpoint),
                mesh,
                store,
                binding,
                node_seed,
                driver: Mutex::new(None),
                publish,
                reflexive: Mutex::new(None),
                interfaces: Mutex::default(),
                muted: Default::default(),
                deafened: Default::default(),
                refused_presences: Default::default(),
                push_to_talk: Default::default(),
                devices: Mutex::new((options.input.clone(), options.output.clone())),
                volumes: Mutex::default(),
                speaking_tx: tokio::sync::broadcast::channel(SPEAKING_QUEUE).0,
                rooms_present: Mutex::default(),
                rosters: Mutex::default(),
                options,
            }),
        };
        let mesh = voice.shared.mesh.clone();
        tokio::spawn(async move {
            while let Some((room, signal)) = to_publish.recv().await {
                if let Err(e) = mesh.publish_signal(room, signal).await {
                    tracing::debug!("cannot publish a voice signal: {e}");
                }
            }
        });
        let current = voice.clone();
        tokio::spawn(accept_loop(
            voice.shared.endpoint.clone(),
            MAX_HANDSHAKES,
            move || current.driver(),
        ));
        tokio::spawn(voice.clone().signal_loop());
        tokio::spawn(voice.clone().observe_loop());
        tokio::spawn(voice.clone().interfaces_loop());
        Ok(voice)
    }

    fn driver(&self) -> Option<VoiceDriver> {
        lock(&self.shared.driver).clone()
    }

    /// The voice socket's address.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.shared.endpoint.local_addr()?)
    }

    /// The user the session in progress speaks for, or None when not in
    /// voice: the local API lets only that account drive the session.
    pub fn session_user(&self) -> Option<UserId> {
        self.driver().map(|d| d.user())
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
    /// starts a driver (audio engine and session); peers are connected as
    /// they are found.
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
        let (input, output) = lock(&self.shared.devices).clone();
        let mut key_seed = [0u8; 32];
        getrandom::fill(&mut key_seed).map_err(|e| anyhow!("no randomness: {e}"))?;
        let config = DriverConfig {
            session: SessionConfig {
                planner: PlannerConfig {
                    max_direct_peers: self.shared.options.max_direct_peers,
                    // quinn tells the driver when a link dies, so a linked
                    // peer stays while gossip stalls.
                    links_vouch: true,
                    ..PlannerConfig::default()
                },
                ..SessionConfig::default()
            },
            engine: EngineConfig {
                input,
                output,
                capture: CaptureConfig {
                    gate: self.shared.options.gate,
                    ..CaptureConfig::default()
                },
                ..EngineConfig::default()
            },
            relays: self.shared.options.relays.clone(),
            interfaces: lock(&self.shared.interfaces).clone(),
            reflexive: *lock(&self.shared.reflexive),
            key_seed,
        };
        let driver = VoiceDriver::start(
            self.shared.endpoint.clone(),
            self.shared.store.clone(),
            Arc::new(MeshSignals(self.shared.publish.clone())),
            NodeKey::from_seed(&self.shared.node_seed),
            binding,
            room,
            channel,
            config,
        )
        .context("cannot join the voice channel")?;
        let engine = driver.engine();
        engine.set_muted(self.shared.muted.load(Ordering::Relaxed));
        engine.set_deafened(self.shared.deafened.load(Ordering::Relaxed));
        engine
            .push_to_talk()
            .set_pressed(self.shared.push_to_talk.load(Ordering::Relaxed));
        for (user, gain) in lock(&self.shared.volumes).iter() {
            engine.set_volume(*user, *gain);
        }
        let mut speaking = driver.speaking_events();
        let tx = self.shared.speaking_tx.clone();
        tokio::spawn(async move {
            loop {
                match speaking.recv().await {
                    Ok(change) => {
                        let _ = tx.send(change);
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        *lock(&self.shared.driver) = Some(driver);
        tracing::info!(%room, %channel, "joined voice channel");
        Ok(())
    }

    /// Leaves the voice channel, if in one.
    pub fn leave(&self) {
        if let Some(driver) = lock(&self.shared.driver).take() {
            driver.leave();
            tracing::info!(room = %driver.channel().0, "left voice");
        }
    }

    /// Mutes or unmutes the microphone.
    pub fn set_muted(&self, muted: bool) {
        self.shared.muted.store(muted, Ordering::Relaxed);
        if let Some(d) = self.driver() {
            d.engine().set_muted(muted);
        }
    }

    /// Deafens or undeafens.
    pub fn set_deafened(&self, deafened: bool) {
        self.shared.deafened.store(deafened, Ordering::Relaxed);
        if let Some(d) = self.driver() {
            d.engine().set_deafened(deafened);
        }
    }

    /// Presses or releases push-to-talk (effective in push-to-talk mode).
    pub fn push_to_talk(&self, down: bool) {
        self.shared.push_to_talk.store(down, Ordering::Relaxed);
        if let Some(d) = self.driver() {
            d.engine().push_to_talk().set_pressed(down);
        }
    }

    /// Sets a user's volume.
    pub fn set_volume(&self, user: UserId, gain: f32) -> Result<()> {
        if !(0.0..=4.0).contains(&gain) {
            bail!("a volume is between 0.0 and 4.0, not {gain}");
        }
        lock(&self.shared.volumes).insert(user, gain);
        if let Some(d) = self.driver() {
            d.engine().set_volume(user, gain);
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
        if let Some((room, channel)) = self.driver().map(|d| d.channel()) {
            self.join(room, channel)?;
        }
        Ok(())
    }

    /// The gate for a presence the panel shows: its binding names the node
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
        if let Some(d) = self.driver()
            && d.channel().0 == room
        {
            by_channel.entry(d.channel().1).or_default().push(d.user());
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

    /// The session's state and link statistics.
    pub fn status(&self) -> VoiceView {
        let local = self
            .shared
            .endpoint
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let reflexive = lock(&self.shared.reflexive).map(|a| a.to_string());
        let mut view = VoiceView {
            local,
            reflexive,
            muted: self.shared.muted.load(Ordering::Relaxed),
            deafened: self.shared.deafened.load(Ordering::Relaxed),
            presences_refused: self.shared.refused_presences.load(Ordering::Relaxed),
            ..VoiceView::default()
        };
        let Some(driver) = self.driver() else {
            return view;
        };
        let (room, channel) = driver.channel();
        view.room = Some(room.to_hex());
        view.channel = Some(channel.to_hex());
        let s = driver.status();
        let st = &s.stats;
        view.relayed = s.relayed;
        view.frames_received = st.frames_received;
        view.frames_plaintext = st.dropped_plaintext;
        view.frames_bad_tag = st.dropped_bad_tag;
        view.frames_no_key = st.dropped_no_key;
        view.frames_replayed = st.dropped_replay;
        view.frames_refused = st.dropped_plaintext
            + st.dropped_malformed
            + st.dropped_no_link
            + st.dropped_unknown_speaker
            + st.dropped_forbidden
            + st.dropped_bad_tag;
        view.relay_evidence_sent = s.evidence_sent;
        view.relay_tokens_shown = s.tokens_shown;
        view.receive_delay = s.receive_delay;
        view.send_delay = s.send_delay;
        let counters = driver.engine().counters();
        view.frames_sent = st.frames_sent;
        view.frames_withheld = st.frames_not_allowed;
        view.speaking = counters.self_speaking.load(Ordering::Relaxed);
        view.input_started_us = counters.input_started_us.load(Ordering::Relaxed);
        view.output_started_us = counters.output_started_us.load(Ordering::Relaxed);
        let levels = driver.engine().levels();
        view.participants = s
            .participants
            .iter()
            .map(|p| {
                let speaking = levels.iter().any(|(k, l)| *k == p.user && l.speaking);
                (p.user.to_hex(), speaking)
            })
            .collect();
        view.links = s
            .links
            .iter()
            .map(|l| LinkView {
                peer: l.peer.to_string(),
                user: l.user.map(|u| u.to_hex()),
                path: l.path.to_string(),
                remote: l.remote.to_string(),
                rtt_ms: l.rtt_ms,
                loss: l.loss,
                jitter_ms: l.jitter_ms,
                bitrate_kbps: l.bitrate_kbps,
                forbidden: l.forbidden,
            })
            .collect();
        view
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

    /// Reads our interface addresses now and then, and tells the session
    /// when they change (its host candidates).
    async fn interfaces_loop(self) {
        let mut every = Duration::from_millis(500);
        loop {
            if let Ok(local) = self.shared.endpoint.local_addr() {
                let ips = self.host_ips(local.ip()).await;
                let changed = {
                    let mut cur = lock(&self.shared.interfaces);
                    let changed = *cur != ips;
                    *cur = ips.clone();
                    changed
                };
                if changed && let Some(d) = self.driver() {
                    d.set_interfaces(ips);
                }
                if !lock(&self.shared.interfaces).is_empty() {
                    every = INTERFACES_EVERY;
                }
            }
            tokio::time::sleep(every).await;
        }
    }

    /// The room's voice topic: presences update the panel (members only:
    /// the gate), and everything for the room of our session goes to its
    /// driver, which runs its own gate on it.
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
            if let Ok(VoiceSignal::Presence(presence)) = VoiceSignal::decode(&signal.data)
                && presence.room == signal.room
            {
                match presence.channel {
                    Some(channel) => match self.admit_presence(&signal.from, &presence, channel) {
                        Ok(()) => self.remember_presence(signal.from, &presence),
                        Err(why) => {
                            self.shared
                                .refused_presences
                                .fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(from = %signal.from, "voice presence not admitted: {why}");
                        }
                    },
                    // Only the publisher itself (gossipsub proved it) says
                    // it left.
                    None if presence.binding.node.peer_id() == signal.from.to_string() => {
                        self.remember_presence(signal.from, &presence);
                    }
                    None => {}
                }
            }
            if let Some(d) = self.driver()
                && d.channel().0 == signal.room
            {
                d.handle_signal(signal.from, signal.data);
            }
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
                        }
                        if let Some(d) = self.driver() {
                            d.set_reflexive(addr);
                        }
                        break;
                    }
                    Err(e) => tracing::debug!(relay = %relay.addr, "observe failed: {e}"),
                }
            }
            tokio::time::sleep(Duration::from_secs(20)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
