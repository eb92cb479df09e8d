//! The thin tokio driver: runs one [`VoiceSession`] over the quinn voice
//! endpoint ([`tincan_media::VoiceEndpoint`]), the audio engine
//! ([`tincan_audio::engine::Engine`]), the room's voice topic (whatever
//! carries signals: the mesh in a node, [`SignalOut`]) and the voice relay
//! ([`tincan_media::relay_client::RelaySession`]).
//!
//! The driver decides nothing: it carries out what the session's outputs
//! say (dial, close, send, punch, publish, join or leave the relay, play,
//! set the encoder, send evidence) and feeds the session what happens,
//! with `now` read from the clock here, at the edge, and nowhere else.
//! No process-global: each [`VoiceDriver`] owns its session, its links and
//! its tasks, so several run in one process (the tests run a channel of
//! them over real sockets).
//!
//! The roster comes from the node's store: read with
//! [`crate::roster::roster_from_store`] at the start and again on every
//! change of the room in the store's change feed
//! ([`crate::roster::affects_roster`]), and pushed with
//! [`VoiceSession::handle_roster`]. The relay's join proof is built here,
//! in [`join_relay`], and nowhere else.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use libp2p_identity::PeerId;
use tincan_audio::codec::VoicePacket;
use tincan_audio::engine::{Engine, EngineConfig, EngineError, PacketSource};
use tincan_audio::mixer::SILENCE_DBFS;
use tincan_core::{ChannelId, NodeBinding, NodeKey, RoomId, UserId};
use tincan_media::control::{
    Answer, Evidence, Hello, MAX_CONTROL_MESSAGE, MAX_PROOF_RECORDS, MemberMessage, Refused,
    Request, SpeakerEntry, Update, Welcome, read_message, write_message,
};
use tincan_media::relay_client::{RelayAddr, RelaySession};
use tincan_media::{VoiceConnection, VoiceEndpoint, VoiceHeader};
use tincan_store::Store;
use tokio::sync::{broadcast, mpsc};

use crate::candidates::is_private;
use crate::config::SessionConfig;
use crate::gate::RosterSnapshot;
use crate::paths::Path;
use crate::roster::{affects_roster, evidence_against, roster_from_store};
use crate::session::{
    Event, LinkRefused, ParticipantView, Received, SessionIdentity, SessionStats, SocketInfo,
    Source, Transmit, VoiceSession,
};

/// How long a dial's QUIC handshake may take per address.
const DIAL_TIMEOUT: Duration = Duration::from_secs(4);
/// How long a peer may take to answer a hello, or a dialler to send one.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How often link statistics are fed to the session (loss) and the status
/// snapshot is refreshed.
const STATS_EVERY: Duration = Duration::from_secs(1);
/// How often levels go to the session's speaking detector and the status
/// snapshot is refreshed.
const LEVELS_EVERY: Duration = Duration::from_millis(50);
/// Commands (signals, incoming links) waiting for the session's task; past
/// it they are dropped and counted (a signal repeats within a second).
const COMMAND_QUEUE: usize = 1024;
/// Datagrams and link news waiting for the session's task; past it
/// datagrams are dropped and counted (voice never waits).
const IO_QUEUE: usize = 2048;
/// Speaking changes kept for a slow subscriber.
const SPEAKING_QUEUE: usize = 256;
/// Evidence against one user is sent to the relay at most this often.
const EVIDENCE_EVERY: Duration = Duration::from_secs(2);
/// Users whose last evidence time is remembered; past it the table starts
/// over (it only rate-limits).
const MAX_EVIDENCE_USERS: usize = 256;

/// Publishes a signal on the room's voice topic. Must not wait: the mesh's
/// implementation queues it for a task of its own.
pub trait SignalOut: Send + Sync + 'static {
    /// Publish `signal` (a [`crate::protocol::VoiceSignal`]) in `room`.
    fn publish(&self, room: RoomId, signal: Vec<u8>);
}

/// How a driver runs.
#[derive(Clone, Debug)]
pub struct DriverConfig {
    /// The session's settings (`relay_available` is set from `relays`).
    pub session: SessionConfig,
    /// The audio engine: devices, capture gate, codec.
    pub engine: EngineConfig,
    /// Voice relays, tried in order when the session asks for one.
    pub relays: Vec<RelayAddr>,
    /// Our interface addresses, for host candidates (more may come with
    /// [`VoiceDriver::set_interfaces`]).
    pub interfaces: Vec<IpAddr>,
    /// Our voice socket's public address, if known already.
    pub reflexive: Option<SocketAddr>,
    /// 32 bytes of OS randomness: the seed of our sender keys.
    pub key_seed: [u8; 32],
}

/// Why a driver did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DriverError {
    /// The store could not say who is in the channel.
    #[error("cannot read the voice channel's roster from the store: {0}")]
    Store(#[from] tincan_store::StorageError),
    /// Our own user may not be in the channel.
    #[error("cannot join this voice channel: {0}")]
    Refused(#[from] LinkRefused),
    /// The voice socket has no address.
    #[error("the voice socket has no local address: {0}")]
    Socket(#[source] std::io::Error),
    /// The audio engine did not start.
    #[error("cannot start the audio engine: {0}")]
    Engine(#[from] EngineError),
}

/// One link as the status shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct LinkStatus {
    /// The peer (for the relay: the relay's PeerId).
    pub peer: PeerId,
    /// Its user (None for the relay).
    pub user: Option<UserId>,
    /// lan, direct, punched or relayed.
    pub path: Path,
    /// Where the connection goes.
    pub remote: SocketAddr,
    /// Smoothed round-trip time, milliseconds.
    pub rtt_ms: f64,
    /// Share of our packets to it lost over the last second (QUIC's count).
    pub loss: f64,
    /// Arrival jitter of its voice, milliseconds (RFC 3550's estimator).
    pub jitter_ms: f64,
    /// Its voice's bitrate as received over the last second, kbit/s.
    pub bitrate_kbps: f64,
    /// Frames on it dropped because their sender may not speak here.
    pub forbidden: u64,
}

/// A snapshot of the driver, refreshed every [`LEVELS_EVERY`] and after
/// membership changes.
#[derive(Clone, Debug, Default)]
pub struct DriverStatus {
    /// The participants (every admitted node but ours).
    pub participants: Vec<ParticipantView>,
    /// Direct links, then the relay's if joined.
    pub links: Vec<LinkStatus>,
    /// Whether the relay carries our voice.
    pub relayed: bool,
    /// The session's counters.
    pub stats: SessionStats,
    /// Datagrams and commands dropped because the session's task fell
    /// behind.
    pub overflow: u64,
    /// Evidence messages sent to the relay.
    pub evidence_sent: u64,
    /// Relay tokens of a new key epoch shown to the relay (invite-only
    /// rooms: each kick, ban or leave starts one).
    pub tokens_shown: u64,
    /// The session has ended (we left, or the roster refused us).
    pub ended: bool,
    /// What the driver adds to a received frame's way to the speaker: from
    /// the datagram's arrival at the connection's task to the audio
    /// engine's jitter buffer (the hop to the session's task, the gate,
    /// opening the frame), over the last [`DELAY_SAMPLES`] frames.
    pub receive_delay: DelayFigures,
    /// What the driver adds to one of our frames: from the engine's packet
    /// reaching the session's task to the datagrams handed to quinn
    /// (sealing it, one copy per link and the relay).
    pub send_delay: DelayFigures,
}

/// Frames the delay figures cover (the newest ones).
pub const DELAY_SAMPLES: usize = 1024;

/// Percentiles of a delay, microseconds (0 before any sample).
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct DelayFigures {
    /// Samples behind these figures.
    pub samples: usize,
    /// Median.
    pub p50_us: u32,
    /// 99th percentile.
    pub p99_us: u32,
    /// Largest.
    pub max_us: u32,
}

/// The newest [`DELAY_SAMPLES`] delays of one kind, in microseconds.
#[derive(Default)]
struct DelayRecorder {
    samples: Vec<u32>,
    next: usize,
}

impl DelayRecorder {
    fn record(&mut self, delay: Duration) {
        let us = u32::try_from(delay.as_micros()).unwrap_or(u32::MAX);
        if self.samples.len() < DELAY_SAMPLES {
            self.samples.push(us);
        } else {
            self.samples[self.next] = us;
        }
        self.next = (self.next + 1) % DELAY_SAMPLES;
    }

    fn figures(&self) -> DelayFigures {
        let mut sorted = self.samples.clone();
        sorted.sort_unstable();
        let at = |q: f64| {
            sorted
                .get(((sorted.len() as f64 - 1.0) * q).round() as usize)
                .copied()
                .unwrap_or(0)
        };
        DelayFigures {
            samples: sorted.len(),
            p50_us: at(0.5),
            p99_us: at(0.99),
            max_us: sorted.last().copied().unwrap_or(0),
        }
    }
}

enum Command {
    Signal {
        from: PeerId,
        data: Vec<u8>,
    },
    Incoming {
        conn: VoiceConnection,
        hello: Box<Hello>,
        send: quinn::SendStream,
    },
    Interfaces(Vec<IpAddr>),
    Reflexive(SocketAddr),
    Leave,
}

type Dialled = Result<(VoiceConnection, Welcome, quinn::SendStream), String>;

enum Io {
    Datagram {
        source: Source,
        link: u64,
        bytes: Bytes,
        at: Instant,
    },
    LinkClosed {
        peer: PeerId,
        link: u64,
    },
    Dialled {
        peer: PeerId,
        result: Dialled,
    },
    /// Joined, in an invite-only room with the relay token of this epoch.
    RelayJoined(Box<RelaySession>, Option<u32>),
    RelayFailed(String),
    RelayUpdate {
        link: u64,
        update: Update,
    },
    RelayClosed {
        link: u64,
    },
}

struct Inner {
    commands: mpsc::Sender<Command>,
    engine: Arc<Engine<UserId>>,
    status: Arc<Mutex<DriverStatus>>,
    speaking: broadcast::Sender<(UserId, bool)>,
    room: RoomId,
    channel: ChannelId,
    user: UserId,
    overflow: Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::AbortHandle,
}

/// A running voice session. Cheap to clone; the session ends when
/// [`VoiceDriver::leave`] is called or the last clone is dropped (either
/// way the leaving presence goes out and every link closes).
#[derive(Clone)]
pub struct VoiceDriver {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for VoiceDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VoiceDriver")
            .field("room", &self.inner.room)
            .field("channel", &self.inner.channel)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere while holding the lock is a bug already reported;
    // the state itself stays usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl VoiceDriver {
    /// Joins `channel` of `room` as `binding`'s user: reads the roster from
    /// `store` (our user must pass the gate), starts the audio engine and
    /// the session's task on the current tokio runtime. Incoming voice
    /// connections reach it through [`accept_loop`] (or
    /// [`VoiceDriver::handle_incoming`]), signals through
    /// [`VoiceDriver::handle_signal`].
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        endpoint: Arc<VoiceEndpoint>,
        store: Arc<Store>,
        signals: Arc<dyn SignalOut>,
        node_key: NodeKey,
        binding: NodeBinding,
        room: RoomId,
        channel: ChannelId,
        mut config: DriverConfig,
    ) -> Result<VoiceDriver, DriverError> {
        let origin = Instant::now();
        let roster = roster_from_store(&store, room, channel)?;
        let bound = endpoint.local_addr().map_err(DriverError::Socket)?;
        config.session.relay_available = !config.relays.is_empty();
        config.session.origin_ms = wall_ms();
        let user = binding.user;
        let mut session = VoiceSession::new(
            config.session.clone(),
            SessionIdentity { node_key, binding },
            roster,
            SocketInfo {
                bound,
                interfaces: config.interfaces.clone(),
            },
            config.key_seed,
            Duration::ZERO,
        )?;
        if let Some(r) = config.reflexive {
            session.handle_reflexive(r, Duration::ZERO);
        }
        let (engine, packets) = Engine::start(config.engine.clone())?;
        let engine = Arc::new(engine);
        let (commands, commands_rx) = mpsc::channel(COMMAND_QUEUE);
        let (io_tx, io_rx) = mpsc::channel(IO_QUEUE);
        let status = Arc::new(Mutex::new(DriverStatus::default()));
        let speaking = broadcast::channel(SPEAKING_QUEUE).0;
        let overflow = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let run = Run {
            session,
            origin,
            endpoint,
            store: store.clone(),
            signals,
            engine: engine.clone(),
            relays: config.relays,
            room,
            channel,
            user,
            links: HashMap::new(),
            dials: HashMap::new(),
            relay: None,
            relay_join: None,
            next_link: 0,
            io_tx,
            status: status.clone(),
            speaking: speaking.clone(),
            overflow: overflow.clone(),
            evidence_at: HashMap::new(),
            evidence_sent: 0,
            tokens_shown: 0,
            receive_delay: DelayRecorder::default(),
            send_delay: DelayRecorder::default(),
        };
        let task = tokio::spawn(run.run(commands_rx, io_rx, packets, store.subscribe()));
        Ok(VoiceDriver {
            inner: Arc::new(Inner {
                commands,
                engine,
                status,
                speaking,
                room,
                channel,
                user,
                overflow,
                task: task.abort_handle(),
            }),
        })
    }

    fn command(&self, command: Command) {
        if self.inner.commands.try_send(command).is_err() {
            self.inner
                .overflow
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// A signal on the room's voice topic, `from` the publisher the mesh
    /// proved. Never waits.
    pub fn handle_signal(&self, from: PeerId, data: Vec<u8>) {
        self.command(Command::Signal { from, data });
    }

    /// A dialler's hello on a new connection (read by [`accept_loop`]):
    /// the session's gate answers on `send`, which is kept open for the
    /// connection's life.
    pub fn handle_incoming(&self, conn: VoiceConnection, hello: Hello, send: quinn::SendStream) {
        self.command(Command::Incoming {
            conn,
            hello: Box::new(hello),
            send,
        });
    }

    /// Our interface addresses changed (host candidates).
    pub fn set_interfaces(&self, interfaces: Vec<IpAddr>) {
        self.command(Command::Interfaces(interfaces));
    }

    /// Our voice socket's public address, as a relay saw it.
    pub fn set_reflexive(&self, addr: SocketAddr) {
        self.command(Command::Reflexive(addr));
    }

    /// Leaves the channel: a leaving presence, every link closed, off the
    /// relay; the task ends once that is done.
    pub fn leave(&self) {
        self.command(Command::Leave);
    }

    /// The room and channel.
    pub fn channel(&self) -> (RoomId, ChannelId) {
        (self.inner.room, self.inner.channel)
    }

    /// The user the session speaks for.
    pub fn user(&self) -> UserId {
        self.inner.user
    }

    /// The audio engine (mute, deafen, push-to-talk, volumes, counters).
    pub fn engine(&self) -> &Engine<UserId> {
        &self.inner.engine
    }

    /// The latest snapshot.
    pub fn status(&self) -> DriverStatus {
        let mut s = lock(&self.inner.status).clone();
        s.overflow += self
            .inner
            .overflow
            .load(std::sync::atomic::Ordering::Relaxed);
        s
    }

    /// Speaking changes (user, speaking) from now on, ours included.
    pub fn speaking_events(&self) -> broadcast::Receiver<(UserId, bool)> {
        self.inner.speaking.subscribe()
    }

    /// Whether the session's task has finished (left, or refused).
    pub fn is_finished(&self) -> bool {
        self.inner.task.is_finished()
    }
}

/// Milliseconds since the Unix epoch (presences carry it).
fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Accepts voice connections on `endpoint` for as long as it is open:
/// answers `Observe` requests with the address it sees, and hands each
/// `Join` hello to the driver `current` returns (the session the node is
/// in now), or refuses it when there is none. At most `max_handshakes`
/// handshakes run at once; past it newcomers are refused unread.
pub async fn accept_loop<F>(endpoint: Arc<VoiceEndpoint>, max_handshakes: usize, current: F)
where
    F: Fn() -> Option<VoiceDriver> + Send + Sync + 'static,
{
    let current = Arc::new(current);
    let slots = Arc::new(tokio::sync::Semaphore::new(max_handshakes));
    while let Some(accepting) = endpoint.accept_incoming().await {
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            accepting.refuse();
            continue;
        };
        let current = current.clone();
        tokio::spawn(async move {
            match accepting.finish().await {
                Ok(conn) => {
                    if let Err(e) = on_incoming(conn, &*current).await {
                        tracing::debug!("voice handshake failed: {e}");
                    }
                }
                Err(e) => tracing::debug!("voice connection not accepted: {e}"),
            }
            drop(permit);
        });
    }
}

async fn on_incoming<F>(conn: VoiceConnection, current: &F) -> Result<(), String>
where
    F: Fn() -> Option<VoiceDriver>,
{
    let (mut send, mut recv) = tokio::time::timeout(REQUEST_TIMEOUT, conn.accept_control())
        .await
        .map_err(|_| "no control stream in time".to_owned())?
        .map_err(|e| e.to_string())?;
    let request: Request = tokio::time::timeout(
        REQUEST_TIMEOUT,
        read_message(&mut recv, MAX_CONTROL_MESSAGE),
    )
    .await
    .map_err(|_| "no request in time".to_owned())?
    .map_err(|e| e.to_string())?;
    match request {
        Request::Observe => {
            let _ = write_message(&mut send, &Answer::Observed(conn.remote_addr())).await;
            let _ = send.finish();
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, conn.closed()).await;
            Ok(())
        }
        Request::Join(hello) => match current() {
            Some(driver) if driver.channel() == (hello.room, hello.channel) => {
                driver.handle_incoming(conn, hello, send);
                Ok(())
            }
            _ => {
                refuse(conn, send, "this node is not in that voice channel".into()).await;
                Err("a hello for a channel we are not in".into())
            }
        },
    }
}

async fn refuse(conn: VoiceConnection, mut send: quinn::SendStream, reason: String) {
    let _ = write_message(&mut send, &Answer::Refused(Refused { reason })).await;
    let _ = send.finish();
    // Time for the answer to leave before the close overtakes it.
    tokio::time::sleep(Duration::from_millis(100)).await;
    conn.close();
}

/// RFC 3550's interarrival jitter: how much the spacing of arrivals
/// differs from the spacing of media timestamps, smoothed over 16 frames.
#[derive(Default)]
struct JitterEstimator {
    last: Option<(Instant, u32)>,
    jitter_us: f64,
}

impl JitterEstimator {
    fn on_frame(&mut self, arrived: Instant, timestamp: u32) {
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
    }
}

/// Per-second loss and bitrate of one connection, from quinn's packet
/// counts and our received byte count, plus the jitter of its frames.
#[derive(Default)]
struct Rates {
    bytes: u64,
    last_bytes: u64,
    last_sent: u64,
    last_lost: u64,
    loss: f64,
    bitrate_kbps: f64,
    forbidden: u64,
    /// Per speaker index (one for a direct link; the relay's table).
    jitter: HashMap<u16, JitterEstimator>,
    jitter_us: f64,
}

impl Rates {
    fn update(&mut self, stats: &quinn::ConnectionStats) {
        let (sent, lost) = (stats.path.sent_packets, stats.path.lost_packets);
        let d_sent = sent.saturating_sub(self.last_sent);
        let d_lost = lost.saturating_sub(self.last_lost);
        self.last_sent = sent;
        self.last_lost = lost;
        self.loss = if d_sent == 0 {
            0.0
        } else {
            d_lost as f64 / d_sent as f64
        };
        self.bitrate_kbps = self.bytes.saturating_sub(self.last_bytes) as f64 * 8.0
            / 1000.0
            / STATS_EVERY.as_secs_f64();
        self.last_bytes = self.bytes;
    }

    fn on_datagram(&mut self, bytes: &[u8], at: Instant, outcome: Received) {
        self.bytes += bytes.len() as u64;
        if outcome == Received::Forbidden {
            self.forbidden += 1;
        }
        if let (Received::Opened(_), Ok((header, _))) = (outcome, VoiceHeader::parse(bytes))
            && (self.jitter.len() < 256 || self.jitter.contains_key(&header.speaker))
        {
            let j = self.jitter.entry(header.speaker).or_default();
            j.on_frame(at, header.timestamp);
            self.jitter_us = j.jitter_us;
        }
    }

    fn view(
        &self,
        peer: PeerId,
        user: Option<UserId>,
        path: Path,
        conn: &VoiceConnection,
    ) -> LinkStatus {
        LinkStatus {
            peer,
            user,
            path,
            remote: conn.remote_addr(),
            rtt_ms: conn.rtt().as_secs_f64() * 1000.0,
            loss: self.loss,
            jitter_ms: self.jitter_us / 1000.0,
            bitrate_kbps: self.bitrate_kbps,
            forbidden: self.forbidden,
        }
    }
}

struct LinkIo {
    id: u64,
    conn: VoiceConnection,
    tasks: Vec<tokio::task::AbortHandle>,
    rates: Rates,
}

impl LinkIo {
    fn close(self) {
        for t in &self.tasks {
            t.abort();
        }
        self.conn.close();
    }
}

struct RelayIo {
    id: u64,
    session: Box<RelaySession>,
    tasks: Vec<tokio::task::AbortHandle>,
    rates: Rates,
    /// In an invite-only room, the epoch whose relay token the relay has
    /// seen from us (at the join, or since in a `MemberMessage::Token`).
    epoch: Option<u32>,
}

impl Drop for RelayIo {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

struct Run {
    session: VoiceSession,
    origin: Instant,
    endpoint: Arc<VoiceEndpoint>,
    store: Arc<Store>,
    signals: Arc<dyn SignalOut>,
    engine: Arc<Engine<UserId>>,
    relays: Vec<RelayAddr>,
    room: RoomId,
    channel: ChannelId,
    user: UserId,
    links: HashMap<PeerId, LinkIo>,
    dials: HashMap<PeerId, tokio::task::AbortHandle>,
    relay: Option<RelayIo>,
    relay_join: Option<tokio::task::AbortHandle>,
    next_link: u64,
    io_tx: mpsc::Sender<Io>,
    status: Arc<Mutex<DriverStatus>>,
    speaking: broadcast::Sender<(UserId, bool)>,
    overflow: Arc<std::sync::atomic::AtomicU64>,
    evidence_at: HashMap<UserId, Instant>,
    evidence_sent: u64,
    /// Relay tokens of new epochs shown to the relay.
    tokens_shown: u64,
    receive_delay: DelayRecorder,
    send_delay: DelayRecorder,
}

impl Drop for Run {
    fn drop(&mut self) {
        for (_, link) in self.links.drain() {
            link.close();
        }
        for (_, dial) in self.dials.drain() {
            dial.abort();
        }
        if let Some(j) = self.relay_join.take() {
            j.abort();
        }
    }
}

impl Run {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    fn at(&self, instant: Instant) -> Duration {
        instant.saturating_duration_since(self.origin)
    }

    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut io: mpsc::Receiver<Io>,
        mut packets: PacketSource,
        mut changes: broadcast::Receiver<tincan_store::Change>,
    ) {
        let mut levels = tokio::time::interval(LEVELS_EVERY);
        levels.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_stats = Instant::now();
        self.drain();
        loop {
            let deadline = self
                .session
                .poll_timeout()
                .map(|t| tokio::time::Instant::from_std(self.origin + t));
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                command = commands.recv() => match command {
                    Some(Command::Leave) | None => {
                        let now = self.now();
                        self.session.leave(now);
                        self.drain();
                        self.publish_status();
                        return;
                    }
                    Some(c) => self.on_command(c),
                },
                Some(event) = io.recv() => self.on_io(event),
                Some(packet) = packets.recv() => self.on_packet(&packet),
                change = changes.recv() => match change {
                    Ok(c) if !affects_roster(&c.entity, &self.room) => {}
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => self.on_roster_change(),
                    // The store is ours (an Arc): its feed ends only with
                    // the process.
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                () = sleep => {
                    let now = self.now();
                    self.session.handle_timeout(now);
                }
                _ = levels.tick() => {
                    self.on_levels();
                    if last_stats.elapsed() >= STATS_EVERY {
                        last_stats = Instant::now();
                        self.on_stats();
                    }
                    self.publish_status();
                }
            }
            self.drain();
            if self.session.is_ended() {
                self.publish_status();
                return;
            }
        }
    }

    fn on_command(&mut self, command: Command) {
        let now = self.now();
        match command {
            Command::Signal { from, data } => self.session.handle_signal(from, &data, now),
            Command::Incoming { conn, hello, send } => {
                let peer = conn.peer_id();
                let answer = self
                    .session
                    .handle_hello(peer, &hello, conn.remote_addr(), now);
                match answer {
                    Answer::Welcome(_) => {
                        self.add_link(conn.clone(), send_and_hold(conn, send, answer));
                    }
                    Answer::Refused(r) => {
                        tracing::debug!(%peer, "voice hello refused: {}", r.reason);
                        tokio::spawn(refuse(conn, send, r.reason));
                    }
                    Answer::Observed(_) => {}
                }
            }
            Command::Interfaces(interfaces) => {
                if let Ok(bound) = self.endpoint.local_addr() {
                    self.session
                        .handle_socket(SocketInfo { bound, interfaces }, now);
                }
            }
            Command::Reflexive(addr) => self.session.handle_reflexive(addr, now),
            // Handled by the loop.
            Command::Leave => {}
        }
    }

    fn on_io(&mut self, event: Io) {
        let now = self.now();
        match event {
            Io::Datagram {
                source,
                link,
                bytes,
                at,
            } => {
                let when = self.at(at);
                let outcome = self.session.handle_datagram(source, &bytes, when);
                let rates = match source {
                    Source::Peer(p) => self
                        .links
                        .get_mut(&p)
                        .filter(|l| l.id == link)
                        .map(|l| &mut l.rates),
                    Source::Relay => self
                        .relay
                        .as_mut()
                        .filter(|r| r.id == link)
                        .map(|r| &mut r.rates),
                };
                if let Some(rates) = rates {
                    rates.on_datagram(&bytes, at, outcome);
                }
            }
            Io::LinkClosed { peer, link } => {
                if self.links.get(&peer).is_some_and(|l| l.id == link)
                    && let Some(l) = self.links.remove(&peer)
                {
                    tracing::info!(%peer, "voice link closed");
                    l.close();
                    self.session.handle_link_closed(peer, now);
                }
            }
            Io::Dialled { peer, result } => {
                self.dials.remove(&peer);
                match result {
                    Ok((conn, welcome, send)) => {
                        match self
                            .session
                            .handle_welcome(peer, &welcome, conn.remote_addr(), now)
                        {
                            Ok(()) => {
                                let hold = hold_open(conn.clone(), send);
                                self.add_link(conn, hold);
                            }
                            Err(e) => {
                                tracing::debug!(%peer, "voice link not taken: {e}");
                                conn.close();
                            }
                        }
                    }
                    Err(e) => {
                        tracing::debug!(%peer, "voice dial failed: {e}");
                        self.session.handle_dial_failed(peer, now);
                    }
                }
            }
            Io::RelayJoined(relay, epoch) => {
                self.relay_join = None;
                self.relay_up(relay, epoch, now);
                // A grant may have arrived while we joined.
                self.show_relay_token();
            }
            Io::RelayFailed(e) => {
                self.relay_join = None;
                tracing::warn!("cannot use the voice relay: {e}");
                self.session.handle_relay_closed(now);
            }
            Io::RelayUpdate { link, update } => {
                if self.relay.as_ref().is_some_and(|r| r.id == link) {
                    self.session.handle_relay_update(&update, now);
                }
            }
            Io::RelayClosed { link } => {
                if self.relay.as_ref().is_some_and(|r| r.id == link) {
                    tracing::info!("voice relay link closed");
                    self.relay = None;
                    self.session.handle_relay_closed(now);
                }
            }
        }
    }

    fn on_packet(&mut self, packet: &VoicePacket) {
        let started = Instant::now();
        let now = self.now();
        self.session.send_voice(packet, false, now);
        self.drain();
        self.send_delay.record(started.elapsed());
    }

    fn on_roster_change(&mut self) {
        match roster_from_store(&self.store, self.room, self.channel) {
            Ok(roster) => self.push_roster(roster),
            Err(e) => tracing::warn!("cannot read the voice channel's roster: {e}"),
        }
        self.show_relay_token();
    }

    /// In an invite-only room, once our store holds the key of an epoch
    /// newer than the one the relay saw from us (the owner removed someone
    /// and granted a new epoch to those who stay): sends the relay the
    /// owner's grant of it, which supersedes every older epoch's token,
    /// then our token of it, so that the relay keeps us and drops whoever
    /// cannot show one. The grant goes first: a relay takes a token only
    /// of an epoch it knows.
    fn show_relay_token(&mut self) {
        let Some(relay) = &mut self.relay else { return };
        let Some(shown) = relay.epoch else { return };
        let token = match self.store.relay_token(&self.room) {
            Ok(Some(t)) if t.epoch > shown => t,
            Ok(_) => return,
            Err(e) => {
                tracing::warn!("cannot read the room's relay token: {e}");
                return;
            }
        };
        let evidence = match evidence_against(&self.store, self.room, self.channel, &self.user) {
            Ok(records) => records,
            Err(e) => {
                tracing::warn!("cannot read the room's newest grant: {e}");
                return;
            }
        };
        let epoch = token.epoch;
        if relay
            .session
            .send_message(&MemberMessage::Evidence(Evidence { records: evidence }))
            && relay.session.send_message(&MemberMessage::Token(token))
        {
            relay.epoch = Some(epoch);
            self.tokens_shown += 1;
            tracing::info!(
                epoch,
                "showed the relay our token of the room's new key epoch"
            );
        }
    }

    fn push_roster(&mut self, roster: RosterSnapshot) {
        let now = self.now();
        self.session.handle_roster(roster, now);
    }

    fn on_levels(&mut self) {
        let now = self.now();
        for (user, level) in self.engine.levels() {
            self.session.handle_level(Some(user), level.level_dbfs, now);
        }
        // The engine tells only whether our microphone carries voice.
        let ours = self
            .engine
            .counters()
            .self_speaking
            .load(std::sync::atomic::Ordering::Relaxed);
        self.session
            .handle_level(None, if ours { 0.0 } else { SILENCE_DBFS }, now);
    }

    fn on_stats(&mut self) {
        let now = self.now();
        let mut losses = Vec::new();
        for (peer, link) in &mut self.links {
            link.rates.update(&link.conn.stats());
            losses.push((Source::Peer(*peer), link.rates.loss));
        }
        if let Some(relay) = &mut self.relay {
            relay.rates.update(&relay.session.connection().stats());
            losses.push((Source::Relay, relay.rates.loss));
        }
        for (source, loss) in losses {
            self.session.handle_loss(source, loss, now);
        }
    }

    fn publish_status(&self) {
        let participants = self.session.participants();
        let mut links: Vec<LinkStatus> = self
            .links
            .iter()
            .map(|(peer, l)| {
                let p = participants.iter().find(|p| p.peer == *peer);
                l.rates.view(
                    *peer,
                    p.map(|p| p.user),
                    p.and_then(|p| p.path).unwrap_or(Path::Direct),
                    &l.conn,
                )
            })
            .collect();
        if let Some(r) = &self.relay {
            let conn = r.session.connection();
            links.push(r.rates.view(conn.peer_id(), None, Path::Relayed, conn));
        }
        *lock(&self.status) = DriverStatus {
            participants,
            links,
            relayed: self.session.is_relayed(),
            stats: self.session.stats().clone(),
            overflow: 0,
            evidence_sent: self.evidence_sent,
            tokens_shown: self.tokens_shown,
            receive_delay: self.receive_delay.figures(),
            send_delay: self.send_delay.figures(),
            ended: self.session.is_ended(),
        };
    }

    fn add_link(&mut self, conn: VoiceConnection, hold: tokio::task::AbortHandle) {
        let peer = conn.peer_id();
        let id = self.next_link;
        self.next_link += 1;
        let recv = tokio::spawn(receive(
            conn.clone(),
            Source::Peer(peer),
            id,
            self.io_tx.clone(),
            self.overflow.clone(),
        ));
        tracing::info!(%peer, remote = %conn.remote_addr(), "voice link up");
        let link = LinkIo {
            id,
            conn,
            tasks: vec![recv.abort_handle(), hold],
            rates: Rates::default(),
        };
        // A second connection the session took (the smaller PeerId's dial)
        // replaces the first.
        if let Some(old) = self.links.insert(peer, link) {
            old.close();
        }
    }

    fn relay_up(&mut self, mut relay: Box<RelaySession>, epoch: Option<u32>, now: Duration) {
        let id = self.next_link;
        self.next_link += 1;
        let mut tasks = Vec::new();
        if let Some(mut updates) = relay.take_updates() {
            let io = self.io_tx.clone();
            tasks.push(
                tokio::spawn(async move {
                    while let Some(update) = updates.recv().await {
                        if io.send(Io::RelayUpdate { link: id, update }).await.is_err() {
                            return;
                        }
                    }
                    let _ = io.send(Io::RelayClosed { link: id }).await;
                })
                .abort_handle(),
            );
        }
        tasks.push(
            tokio::spawn(receive(
                relay.connection().clone(),
                Source::Relay,
                id,
                self.io_tx.clone(),
                self.overflow.clone(),
            ))
            .abort_handle(),
        );
        let speakers: Vec<SpeakerEntry> = relay
            .speakers()
            .into_iter()
            .map(|(speaker, user)| SpeakerEntry { speaker, user })
            .collect();
        let (speaker, observed) = (relay.speaker(), relay.observed());
        tracing::info!(relay = %relay.connection().remote_addr(), "voice through the relay");
        self.relay = Some(RelayIo {
            id,
            session: relay,
            tasks,
            rates: Rates::default(),
            epoch,
        });
        if !is_private(observed.ip()) {
            self.session.handle_reflexive(observed, now);
        }
        self.session.handle_relay_joined(speaker, &speakers, now);
    }

    /// Carries out everything the session has queued.
    fn drain(&mut self) {
        while let Some(t) = self.session.poll_transmit() {
            match t {
                Transmit::Datagram { to, bytes } => {
                    let conn = match to {
                        Source::Peer(p) => self.links.get(&p).map(|l| &l.conn),
                        Source::Relay => self.relay.as_ref().map(|r| r.session.connection()),
                    };
                    if let Some(conn) = conn {
                        conn.send_encoded(Bytes::from(bytes));
                    }
                }
                Transmit::Punch { to } => {
                    let _ = self.endpoint.punch(to);
                }
            }
        }
        while let Some(event) = self.session.poll_event() {
            self.on_event(event);
        }
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Dial { peer, addrs, hello } => {
                let endpoint = self.endpoint.clone();
                let io = self.io_tx.clone();
                let task = tokio::spawn(async move {
                    let result = dial(&endpoint, peer, &addrs, hello).await;
                    let _ = io.send(Io::Dialled { peer, result }).await;
                });
                if let Some(old) = self.dials.insert(peer, task.abort_handle()) {
                    old.abort();
                }
            }
            Event::Close { peer, reason } => {
                if let Some(d) = self.dials.remove(&peer) {
                    d.abort();
                }
                if let Some(l) = self.links.remove(&peer) {
                    tracing::info!(%peer, ?reason, "voice link closed");
                    l.close();
                }
            }
            Event::JoinRelay { hello } => {
                if self.relay_join.is_none() {
                    let (endpoint, store, relays, io) = (
                        self.endpoint.clone(),
                        self.store.clone(),
                        self.relays.clone(),
                        self.io_tx.clone(),
                    );
                    let user = self.user;
                    self.relay_join = Some(
                        tokio::spawn(async move {
                            let event =
                                match join_relay(&endpoint, &store, &relays, &user, hello).await {
                                    Ok((s, epoch)) => Io::RelayJoined(Box::new(s), epoch),
                                    Err(e) => Io::RelayFailed(e),
                                };
                            let _ = io.send(event).await;
                        })
                        .abort_handle(),
                    );
                }
            }
            Event::LeaveRelay => {
                if let Some(j) = self.relay_join.take() {
                    j.abort();
                }
                if self.relay.take().is_some() {
                    tracing::info!("left the voice relay");
                }
            }
            Event::Publish { signal } => self.signals.publish(self.room, signal),
            Event::Voice {
                user,
                packet,
                arrived_at,
                ..
            } => {
                let arrived = self.origin + arrived_at;
                self.engine.push(user, packet, arrived);
                self.receive_delay.record(arrived.elapsed());
            }
            Event::SetEncoder {
                bitrate_bps,
                expected_loss_percent,
            } => {
                self.engine.set_bitrate(bitrate_bps);
                self.engine.set_expected_loss(expected_loss_percent);
            }
            Event::Speaking { user, speaking } => {
                let _ = self.speaking.send((user, speaking));
            }
            Event::ParticipantJoined { peer, user } => {
                tracing::info!(%peer, user = %user.to_hex(), "voice participant joined");
            }
            Event::ParticipantLeft { peer, user } => {
                tracing::info!(%peer, user = %user.to_hex(), "voice participant left");
                let _ = self.speaking.send((user, false));
            }
            Event::Refused { peer, reason } => {
                tracing::debug!(%peer, ?reason, "voice: ignored what a peer sent");
            }
            Event::RelayEvidence { user, reason } => self.send_evidence(user, reason),
        }
    }

    /// The relay forwards to a user our gate refuses: send it the signed
    /// records by which our store decides so (at most every
    /// [`EVIDENCE_EVERY`] per user).
    fn send_evidence(&mut self, user: UserId, reason: crate::gate::Refusal) {
        let Some(relay) = &self.relay else { return };
        let now = Instant::now();
        if self
            .evidence_at
            .get(&user)
            .is_some_and(|at| now.duration_since(*at) < EVIDENCE_EVERY)
        {
            return;
        }
        if self.evidence_at.len() >= MAX_EVIDENCE_USERS {
            self.evidence_at.clear();
        }
        self.evidence_at.insert(user, now);
        match evidence_against(&self.store, self.room, self.channel, &user) {
            Ok(records) if !records.is_empty() => {
                let message = MemberMessage::Evidence(Evidence { records });
                if relay.session.send_message(&message) {
                    self.evidence_sent += 1;
                    tracing::info!(user = %user.to_hex(), %reason, "sent the relay evidence against a speaker");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("cannot read evidence for the relay: {e}"),
        }
    }
}

/// Writes `answer` on the control stream, then keeps the stream open until
/// the connection closes (a peer takes its end as the link's end).
fn send_and_hold(
    conn: VoiceConnection,
    mut send: quinn::SendStream,
    answer: Answer,
) -> tokio::task::AbortHandle {
    tokio::spawn(async move {
        if write_message(&mut send, &answer).await.is_err() {
            return;
        }
        conn.closed().await;
        drop(send);
    })
    .abort_handle()
}

fn hold_open(conn: VoiceConnection, send: quinn::SendStream) -> tokio::task::AbortHandle {
    tokio::spawn(async move {
        conn.closed().await;
        drop(send);
    })
    .abort_handle()
}

/// Forwards a connection's datagrams to the session's task until it
/// closes. Datagrams beyond the queue are dropped and counted.
async fn receive(
    conn: VoiceConnection,
    source: Source,
    link: u64,
    io: mpsc::Sender<Io>,
    overflow: Arc<std::sync::atomic::AtomicU64>,
) {
    while let Ok(bytes) = conn.recv_bytes().await {
        let event = Io::Datagram {
            source,
            link,
            bytes,
            at: Instant::now(),
        };
        if io.try_send(event).is_err() {
            overflow.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
    let event = match source {
        Source::Peer(peer) => Io::LinkClosed { peer, link },
        Source::Relay => Io::RelayClosed { link },
    };
    let _ = io.send(event).await;
}

/// Dials every address at once, keeps the first connection that comes up,
/// sends `hello` and reads the answer.
async fn dial(
    endpoint: &Arc<VoiceEndpoint>,
    peer: PeerId,
    addrs: &[SocketAddr],
    hello: Hello,
) -> Dialled {
    let mut attempts = tokio::task::JoinSet::new();
    for &addr in addrs {
        let endpoint = endpoint.clone();
        attempts.spawn(async move {
            tokio::time::timeout(DIAL_TIMEOUT, endpoint.connect(addr, peer))
                .await
                .map_err(|_| format!("{addr}: no answer in {DIAL_TIMEOUT:?}"))?
                .map_err(|e| format!("{addr}: {e}"))
        });
    }
    let mut last_error = "no candidate address".to_owned();
    while let Some(joined) = attempts.join_next().await {
        let conn = match joined {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                last_error = e;
                continue;
            }
            Err(e) => {
                last_error = format!("dial task failed: {e}");
                continue;
            }
        };
        // The first to connect wins; the others close with the JoinSet.
        attempts.abort_all();
        let (mut send, mut recv) = conn.open_control().await.map_err(|e| e.to_string())?;
        write_message(&mut send, &Request::Join(hello))
            .await
            .map_err(|e| e.to_string())?;
        let answer: Answer = tokio::time::timeout(
            REQUEST_TIMEOUT,
            read_message(&mut recv, MAX_CONTROL_MESSAGE),
        )
        .await
        .map_err(|_| "the peer did not answer".to_owned())?
        .map_err(|e| e.to_string())?;
        return match answer {
            Answer::Welcome(w) => Ok((conn, w, send)),
            Answer::Refused(r) => {
                conn.close();
                Err(format!("refused: {}", r.reason))
            }
            Answer::Observed(_) => {
                conn.close();
                Err("answered a join with an address".into())
            }
        };
    }
    Err(last_error)
}

/// Joins the first relay that takes us, proving our membership with the
/// signed records of our store: the one place the relay's proof is built.
/// In an invite-only room, also the epoch of the relay token the proof
/// showed.
async fn join_relay(
    endpoint: &VoiceEndpoint,
    store: &Store,
    relays: &[RelayAddr],
    user: &UserId,
    mut hello: Hello,
) -> Result<(RelaySession, Option<u32>), String> {
    hello.proof = store
        .membership_proof(&hello.room, user, &hello.channel, MAX_PROOF_RECORDS)
        .map_err(|e| format!("cannot prove membership to the relay: {e}"))?;
    let epoch = hello.proof.iter().find_map(|item| match item {
        tincan_core::ProofItem::Token(t) => Some(t.epoch),
        tincan_core::ProofItem::Record(_) => None,
    });
    let mut last = "no voice relay configured".to_owned();
    for relay in relays {
        match RelaySession::join(endpoint, relay, hello.clone()).await {
            Ok(s) => return Ok((s, epoch)),
            Err(e) => last = format!("{}: {e}", relay.addr),
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_figures_cover_the_newest_samples() {
        let mut r = DelayRecorder::default();
        assert_eq!(r.figures(), DelayFigures::default());
        // 1,024 samples of 1 ms, then 1,024 of 10 to 10,230 µs: only the
        // newest count.
        for _ in 0..DELAY_SAMPLES {
            r.record(Duration::from_millis(1));
        }
        assert_eq!(r.figures().p50_us, 1000);
        for i in 1..=DELAY_SAMPLES as u64 {
            r.record(Duration::from_micros(10 * i));
        }
        let f = r.figures();
        assert_eq!(f.samples, DELAY_SAMPLES);
        assert_eq!(f.max_us, 10_240);
        assert!((5_100..=5_140).contains(&f.p50_us), "{f:?}");
        assert!((10_120..=10_150).contains(&f.p99_us), "{f:?}");
    }
}
