//! A running mesh node: the [`Mesh`] handle, the task that owns the swarm,
//! and the store writer.
//!
//! Three tasks:
//! - the swarm task owns the swarm and all per-peer state; it never blocks:
//!   store work goes to blocking threads and comes back as messages;
//! - the writer takes gossip and synced records from a bounded queue,
//!   verifies them and applies many at once in one transaction (group
//!   commit), and reports each outcome back (gossip needs one to tell
//!   gossipsub whether to forward);
//! - sync answers run on blocking threads, at most
//!   [`Limits::max_inbound_syncs`] at once and
//!   [`Limits::max_inbound_syncs_per_peer`] for one peer.
//!
//! Sync is pull-only: a fetch answer may hold only the records asked for
//! (anything else drops the answer, ends the session and lowers the peer's
//! gossipsub score through its application score), a fetch is served only
//! within the scope it names, and what a sync brings in counts against
//! per-peer and per-author budgets like gossip.
//!
//! Gossip validation maps the store's outcome to gossipsub's verdict:
//! undecodable, oversized, forged, off-topic or rule-breaking records are
//! rejected (the forwarding peer loses score); duplicates and superseded
//! versions are ignored (not forwarded, no penalty); stored records are
//! accepted and forwarded. A record that waits in the pending set for its
//! room or its author's membership is accepted too: it is signed, passes the
//! checks that need only itself, and belongs to the topic's room, so it is no
//! sign of a bad peer (gossip does not keep order between publishers), and
//! its parent is likely on its way to the next peers as well. The pending
//! set is bounded by the store and the per-author limit caps what one author
//! can park.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::core::transport::ListenerId;
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance, MessageId, TopicHash};
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use libp2p::swarm::ConnectionId;
use libp2p::swarm::SwarmEvent;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::{Multiaddr, PeerId, Swarm, autonat, dcutr, identify, kad, mdns, ping, relay};
use tincan_core::{MAX_RECORD_BYTES, RoomId, SignedRecord, UnverifiedRecord, UserId};
use tincan_store::{Applied, Store};
use tokio::sync::{mpsc, oneshot};

use crate::behaviour::{
    Behaviour, BehaviourEvent, KAD_PROTOCOL, build_swarm_with_metrics, profiles_topic, room_topic,
    sealed_topic, sealed_voice_topic, topic_score_params, voice_topic,
};
use crate::config::{Limits, MeshConfig};
use crate::error::{DialError, PublishError, StartError, Stopped, SubscribeError};
use crate::metrics::{self, Registry, Sample};
use crate::protocol::{
    DirectoryEntry, DirectoryRequest, DirectoryResponse, MAX_DIRECTORY_ROOMS, SYNC_PROTOCOL, Scope,
    SyncItem, SyncRequest, SyncResponse,
};
use crate::rate::{FairSlots, RateLimiter};
use crate::reach::{self, Reach, ReachAction};
use crate::reconcile::{self, ReconcileConfig, Session};

/// Counters of what a node did, for `tincan peers` and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MeshStats {
    /// Gossip records accepted (stored or pending) and forwarded.
    pub gossip_accepted: u64,
    /// Gossip messages rejected (sender penalised).
    pub gossip_rejected: u64,
    /// Gossip messages ignored (duplicates, superseded, store failures).
    pub gossip_ignored: u64,
    /// Gossip messages dropped by the per-peer or per-author rate limit.
    pub rate_limited: u64,
    /// Jobs dropped because the writer's queue was full.
    pub queue_full: u64,
    /// Outbound sync sessions started.
    pub syncs_started: u64,
    /// Outbound sync sessions that ran to their end.
    pub syncs_completed: u64,
    /// Sync sessions dropped before starting (queue full).
    pub syncs_dropped: u64,
    /// Records received by sync and stored (or parked as pending).
    pub synced_records: u64,
    /// Records received by sync and refused (bad signature, rules, off scope).
    pub synced_rejected: u64,
    /// Inbound sync requests refused because too many were being answered
    /// (in all, or for that one peer).
    pub sync_refused_busy: u64,
    /// Sync sessions ended because the peer broke the protocol: records
    /// nobody asked for, malformed answers, records our rules refuse. Each
    /// also lowers the peer's gossipsub score.
    pub sync_lies: u64,
    /// Sync answers cut short because the peer or an author ran over its
    /// sync budget (no penalty: the next sync goes on).
    pub sync_over_budget: u64,
    /// Ports the home router agreed to forward to us (UPnP), counted at
    /// each new mapping.
    pub port_mappings: u64,
}

/// What the node knows of a connected peer.
#[derive(Clone, Debug, PartialEq)]
pub struct PeerInfo {
    /// The peer.
    pub peer_id: PeerId,
    /// The address of the connection in use: a direct one when there is
    /// one (DCUtR upgrades circuits), else a relay circuit.
    pub address: Multiaddr,
    /// Whether that connection is direct or through a relay.
    pub path: PeerPath,
    /// Last ping round trip.
    pub rtt: Option<Duration>,
    /// Its gossipsub score (negative after invalid records).
    pub score: Option<f64>,
    /// Its identify agent string.
    pub agent: Option<String>,
}

/// How a peer is reached now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerPath {
    /// A direct connection (on a LAN, to a public address, or punched
    /// through NATs by DCUtR).
    Direct,
    /// Only through a relay circuit.
    Relayed,
}

impl PeerPath {
    /// The name `tincan peers` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            PeerPath::Direct => "direct",
            PeerPath::Relayed => "relayed",
        }
    }
}

type SessionKey = (PeerId, Scope);

enum Command {
    Publish {
        topic: IdentTopic,
        bytes: Vec<u8>,
        reply: oneshot::Sender<Result<bool, String>>,
    },
    /// A record on its room's topic, as this node names it (see [`Wire`]).
    PublishRecord {
        room: Option<RoomId>,
        bytes: Vec<u8>,
        reply: oneshot::Sender<Result<bool, String>>,
    },
    Subscribe {
        room: RoomId,
        reply: oneshot::Sender<Result<(), SubscribeError>>,
    },
    Unsubscribe {
        room: RoomId,
        reply: oneshot::Sender<()>,
    },
    Dial {
        addr: Multiaddr,
        reply: oneshot::Sender<Result<(), DialError>>,
    },
    Peers {
        reply: oneshot::Sender<Vec<PeerInfo>>,
    },
    ListenAddrs {
        reply: oneshot::Sender<Vec<Multiaddr>>,
    },
    Stats {
        reply: oneshot::Sender<MeshStats>,
    },
    SyncNow {
        reply: oneshot::Sender<()>,
    },
    Block {
        peer: PeerId,
        blocked: bool,
        reply: oneshot::Sender<()>,
    },
    PublishSignal {
        room: RoomId,
        bytes: Vec<u8>,
        reply: oneshot::Sender<Result<bool, String>>,
    },
    NearbyRooms {
        wait: Duration,
        reply: oneshot::Sender<Vec<NearbyRoom>>,
    },
    Shutdown,
}

/// An open room a node on the LAN follows, as its directory answer said:
/// the Room record is signed by its owner and checked here; the member
/// count is the answering node's word.
#[derive(Clone, Debug)]
pub struct NearbyRoom {
    /// The room.
    pub id: RoomId,
    /// Its title.
    pub title: String,
    /// Its owner.
    pub owner: UserId,
    /// The owner's name, if the answering node had their profile (signed).
    pub owner_name: Option<String>,
    /// Joined members, as the answering node counts them.
    pub members: u32,
    /// The peers on the LAN that follow it.
    pub via: Vec<PeerId>,
}

/// A directory query in flight: the peers asked, what came back.
struct NearbyQuery {
    deadline: Instant,
    waiting: HashSet<OutboundRequestId>,
    found: Vec<NearbyRoom>,
    reply: oneshot::Sender<Vec<NearbyRoom>>,
}

/// Peers found by mDNS remembered as "on the LAN" at most.
const MAX_LAN_PEERS: usize = 256;

/// Largest voice signal the mesh carries. A signal names a user, a channel
/// and a handful of socket addresses: a few hundred bytes.
pub const MAX_SIGNAL_BYTES: usize = 2048;

/// Signals kept for a slow reader; past it the oldest are lost (the reader
/// sees `Lagged`) and the next periodic signal brings it up to date.
const SIGNAL_QUEUE: usize = 256;

/// A voice signal from a peer of a followed room, as gossip delivered it.
/// The mesh checks only its size, its rate and that gossipsub's signature
/// names `from`; what it says is for the voice plane to check.
#[derive(Clone, Debug)]
pub struct Signal {
    /// The room whose voice topic carried it.
    pub room: RoomId,
    /// The node that published it (proven by gossipsub's signature).
    pub from: PeerId,
    /// The bytes.
    pub data: Vec<u8>,
}

/// Work for the store writer.
enum WriteJob {
    Gossip {
        msg_id: MessageId,
        source: PeerId,
        record: Box<UnverifiedRecord>,
    },
    Sync {
        key: SessionKey,
        records: Vec<UnverifiedRecord>,
    },
}

/// What came back from blocking work.
enum Internal {
    Validated {
        msg_id: MessageId,
        source: PeerId,
        acceptance: MessageAcceptance,
    },
    SyncApplied {
        key: SessionKey,
        stored: u64,
        rejected: u64,
    },
    SessionReady {
        key: SessionKey,
        session: Option<Box<Session>>,
    },
    Answer {
        peer: PeerId,
        channel: ResponseChannel<SyncResponse>,
        response: SyncResponse,
    },
    DirectoryAnswer {
        channel: ResponseChannel<DirectoryResponse>,
        response: DirectoryResponse,
    },
}

/// A handle on a running mesh node. Cheap to clone; the node stops when
/// [`Mesh::shutdown`] is called or every handle is dropped.
#[derive(Clone)]
pub struct Mesh {
    peer_id: PeerId,
    store: Arc<Store>,
    commands: mpsc::Sender<Command>,
    signals: tokio::sync::broadcast::Sender<Signal>,
    task: Arc<std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>,
    registry: Arc<Registry>,
}

impl std::fmt::Debug for Mesh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mesh")
            .field("peer_id", &self.peer_id)
            .finish()
    }
}

impl Mesh {
    /// Builds the swarm, starts listening, dials the bootstrap peers and
    /// relays, and runs the node on the current tokio runtime (call it from
    /// within one).
    pub async fn start(config: MeshConfig, store: Arc<Store>) -> Result<Mesh, StartError> {
        Self::start_with_registry(config, store, Registry::default()).await
    }

    /// [`Mesh::start`] with a registry that already holds other metrics
    /// (a bootstrap node's voice relay, say): [`Mesh::metrics_text`] then
    /// renders them all, in one exposition.
    pub async fn start_with_registry(
        config: MeshConfig,
        store: Arc<Store>,
        mut registry: Registry,
    ) -> Result<Mesh, StartError> {
        let mut swarm = build_swarm_with_metrics(&config, &mut registry)?;
        let libp2p_metrics = libp2p::metrics::Metrics::new(&mut registry);
        let snapshot = Arc::new(std::sync::Mutex::new(Snapshot::default()));
        {
            let snapshot = snapshot.clone();
            registry.register_collector(Box::new(metrics::Snapshot::new(move || {
                lock(&snapshot).samples()
            })));
        }
        let peer_id = *swarm.local_peer_id();
        let mut unreported_listeners = HashSet::new();
        for addr in &config.listen_addrs {
            match swarm.listen_on(addr.clone()) {
                Ok(id) => {
                    unreported_listeners.insert(id);
                }
                Err(e) => {
                    if matches!(addr.iter().next(), Some(Protocol::Ip6(_))) {
                        // Hosts without IPv6 are common: IPv4 still works.
                        tracing::info!(%addr, "not listening on IPv6 ({e}): this host may have no IPv6; IPv4 is used");
                        continue;
                    }
                    return Err(StartError::Listen {
                        addr: addr.to_string(),
                        detail: e.to_string(),
                    });
                }
            }
        }
        let profiles = profiles_topic();
        swarm
            .behaviour_mut()
            .gossipsub
            .subscribe(&profiles)
            .map_err(|e| StartError::Build(format!("subscribe to profiles: {e}")))?;
        let _ = swarm
            .behaviour_mut()
            .gossipsub
            .set_topic_params(profiles.clone(), topic_score_params());
        for addr in &config.bootstrap_peers {
            match addr.iter().last() {
                Some(Protocol::P2p(peer)) => {
                    swarm
                        .behaviour_mut()
                        .kademlia
                        .add_address(&peer, addr.clone());
                }
                _ => tracing::info!(
                    %addr,
                    "bootstrap address has no /p2p/<peer id> at its end, so it is not used: copy the whole address tincan-bootstrap prints"
                ),
            }
        }
        for addr in &config.external_addrs {
            swarm.add_external_address(addr.clone());
        }
        // Bootstrap dials and relay reservations are the reach planner's:
        // it dials at once, reserves once connected, and retries both.
        let reach = Reach::new(
            config.reach.clone(),
            &config.bootstrap_peers,
            &config.relays,
            config.limits.max_connections as usize + 16,
        );
        let limits = config.limits.clone();
        let (commands, command_rx) = mpsc::channel(limits.command_queue.max(1));
        let (writer_tx, writer_rx) = mpsc::channel(limits.apply_queue.max(1));
        // Every producer of internal messages is bounded (writer batches,
        // inbound answers, session starts), so this queue's bound is only a
        // backstop: producers wait, they never drop.
        let (internal_tx, internal_rx) = mpsc::channel(1024);
        let mut topics = HashMap::new();
        topics.insert(profiles.hash(), Holds::Profiles);
        let (signals, _) = tokio::sync::broadcast::channel(SIGNAL_QUEUE);
        let driver = Driver {
            swarm,
            store: store.clone(),
            reconcile: config.reconcile.clone(),
            peer_limit: RateLimiter::new(limits.per_peer, limits.max_connections as usize + 16),
            author_limit: RateLimiter::new(limits.per_author, limits.max_tracked_authors),
            sync_peer_limit: RateLimiter::new(
                limits.sync_per_peer,
                limits.max_connections as usize + 16,
            ),
            sync_author_limit: RateLimiter::new(limits.sync_per_author, limits.max_tracked_authors),
            offences: HashMap::new(),
            inbound: FairSlots::new(limits.max_inbound_syncs, limits.max_inbound_syncs_per_peer),
            reach,
            circuit_listeners: HashMap::new(),
            circuit_limits: HashMap::new(),
            limits,
            config,
            rooms: HashMap::new(),
            topics,
            peers: HashMap::new(),
            sessions: HashMap::new(),
            applying: HashMap::new(),
            starting: HashSet::new(),
            queued: VecDeque::new(),
            inflight: HashMap::new(),
            writer: writer_tx,
            internal_tx: internal_tx.clone(),
            stats: MeshStats::default(),
            addr_waiters: Vec::new(),
            round: 0,
            last_announce: None,
            voice_topics: HashMap::new(),
            signals: signals.clone(),
            libp2p_metrics,
            snapshot,
            lan_peers: HashSet::new(),
            nearby: Vec::new(),
            portmap: None,
            mapped: HashMap::new(),
            unreported_listeners,
        };
        tokio::spawn(writer(
            store.clone(),
            writer_rx,
            internal_tx,
            driver.limits.max_apply_batch,
        ));
        let mut driver = driver;
        let portmap_events = if driver.config.port_mapping {
            let (mapper, events) = tincan_portmap::PortMapper::spawn(Default::default());
            driver.portmap = Some(mapper);
            Some(events)
        } else {
            None
        };
        let task = tokio::spawn(driver.run(command_rx, internal_rx, portmap_events));
        Ok(Mesh {
            peer_id,
            store,
            commands,
            signals,
            task: Arc::new(std::sync::Mutex::new(Some(task))),
            registry: Arc::new(registry),
        })
    }

    /// This node's PeerId.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// The node's metrics in the OpenMetrics text format (serve them with
    /// [`crate::metrics::serve`]): libp2p's (connections, bytes per
    /// protocol stack, gossipsub, Kademlia, identify, ping, relay, DCUtR)
    /// and tincan's (`tincan_mesh_*`: gossip verdicts, sync, peers by path,
    /// relay reservations, rooms).
    pub fn metrics_text(&self) -> String {
        metrics::render(&self.registry)
    }

    /// The store the node applies records to.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, Stopped> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(make(tx)).await.map_err(|_| Stopped)?;
        rx.await.map_err(|_| Stopped)
    }

    /// Applies a record the local user wrote to the store (if not there
    /// yet) and gossips it on its room's topic (profiles on the profiles
    /// topic). Returns whether it reached any peer now; if not, catch-up
    /// sync delivers it later. A record the rules refuse is not gossiped.
    pub async fn publish(&self, record: SignedRecord) -> Result<bool, PublishError> {
        let store = self.store.clone();
        let bytes = record.to_bytes();
        let room = record.record().room();
        let applied = tokio::task::spawn_blocking(move || store.apply(record))
            .await
            .map_err(|e| PublishError::Storage(tincan_store::StorageError(e.to_string())))?;
        match applied {
            Ok(_) => {}
            Err(tincan_store::ApplyError::Rejected(e)) => return Err(PublishError::Rejected(e)),
            Err(tincan_store::ApplyError::Storage(e)) => return Err(PublishError::Storage(e)),
            Err(e) => {
                return Err(PublishError::Storage(tincan_store::StorageError(
                    e.to_string(),
                )));
            }
        }
        self.ask(|reply| Command::PublishRecord { room, bytes, reply })
            .await?
            .map_err(PublishError::Gossip)
    }

    /// Gossips a record the local user wrote and already applied. Stored is
    /// what matters: if no peer hears it now, catch-up sync hands it over
    /// later, so a failure here is only logged.
    pub async fn gossip_own(&self, record: SignedRecord) {
        // Applied once, by the writer that stored it: only gossip here.
        let room = record.record().room();
        let bytes = record.to_bytes();
        let sent = match self
            .ask(|reply| Command::PublishRecord { room, bytes, reply })
            .await
        {
            Ok(r) => r.map_err(PublishError::Gossip),
            Err(e) => Err(e.into()),
        };
        match sent {
            Ok(true) => {}
            Ok(false) => tracing::debug!("no peer in the room right now; sync will deliver it"),
            Err(e) => tracing::warn!(error = %e, "could not gossip a record; sync will deliver it"),
        }
    }

    /// Gossips bytes on a topic without any check, as they are. A node
    /// never needs this: it exists so tests can play a faulty or hostile
    /// peer.
    #[doc(hidden)]
    pub async fn publish_unchecked(
        &self,
        topic: IdentTopic,
        bytes: Vec<u8>,
    ) -> Result<bool, PublishError> {
        self.ask(|reply| Command::Publish {
            topic,
            bytes,
            reply,
        })
        .await?
        .map_err(PublishError::Gossip)
    }

    /// Gossips a voice signal to the followed room's peers (see [`Signal`]).
    /// Returns whether any peer got it now; signals are not stored, so one
    /// that reached nobody is gone (senders repeat theirs periodically).
    pub async fn publish_signal(&self, room: RoomId, bytes: Vec<u8>) -> Result<bool, PublishError> {
        if bytes.len() > MAX_SIGNAL_BYTES {
            return Err(PublishError::Gossip(format!(
                "a voice signal of {} bytes is over the limit of {MAX_SIGNAL_BYTES}",
                bytes.len()
            )));
        }
        self.ask(|reply| Command::PublishSignal { room, bytes, reply })
            .await?
            .map_err(PublishError::Gossip)
    }

    /// The open rooms that nodes on the LAN (found by mDNS) follow, asked
    /// of each of them now; waits at most `wait` for their answers.
    pub async fn nearby_rooms(&self, wait: Duration) -> Result<Vec<NearbyRoom>, Stopped> {
        self.ask(|reply| Command::NearbyRooms { wait, reply }).await
    }

    /// Voice signals from peers of the followed rooms, from now on.
    pub fn signals(&self) -> tokio::sync::broadcast::Receiver<Signal> {
        self.signals.subscribe()
    }

    /// Follows a room: subscribes to its topic and syncs it with every
    /// connected peer.
    pub async fn subscribe_room(&self, room: RoomId) -> Result<(), SubscribeError> {
        self.ask(|reply| Command::Subscribe { room, reply }).await?
    }

    /// Stops following a room.
    pub async fn unsubscribe_room(&self, room: RoomId) -> Result<(), Stopped> {
        self.ask(|reply| Command::Unsubscribe { room, reply }).await
    }

    /// Dials an address (with or without `/p2p/<peer id>`).
    pub async fn dial(&self, addr: Multiaddr) -> Result<(), DialError> {
        self.ask(|reply| Command::Dial { addr, reply }).await?
    }

    /// The connected peers.
    pub async fn peers(&self) -> Result<Vec<PeerInfo>, Stopped> {
        self.ask(|reply| Command::Peers { reply }).await
    }

    /// The addresses the node listens on, once it listens on at least one:
    /// this waits for the first (put a timeout on it; a node configured
    /// with no listen address and no relay answers at once, with none).
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, Stopped> {
        self.ask(|reply| Command::ListenAddrs { reply }).await
    }

    /// An invite to `room` from this node: its locator secret when the room
    /// is invite-only and this store holds it (an owner, or a member who
    /// was granted it), and the addresses this node listens on, so the
    /// invitee can dial it first. Share its [`Invite::to_link`] with the
    /// people you invited; anyone holding it can find the room and read
    /// its `Room` record, only members the owner grants can read the rest.
    ///
    /// [`Invite::to_link`]: tincan_core::invite::Invite::to_link
    pub async fn invite(
        &self,
        room: RoomId,
    ) -> Result<tincan_core::invite::Invite, tincan_store::StorageError> {
        let store = self.store.clone();
        let (locator, invite_only) = tokio::task::spawn_blocking(move || {
            let locator = store.locator(&room)?;
            let invite_only = store.seals(&room)?;
            Ok::<_, tincan_store::StorageError>((locator, invite_only))
        })
        .await
        .map_err(|e| tincan_store::StorageError(e.to_string()))??;
        if invite_only && locator.is_none() {
            return Err(tincan_store::StorageError(format!(
                "room {room} is invite-only and this node holds no locator for it yet: only its owner, or a member once granted, can invite"
            )));
        }
        let me = self.peer_id;
        let via = self
            .listen_addrs()
            .await
            .unwrap_or_default()
            .into_iter()
            .filter(|a| {
                !a.iter()
                    .any(|p| matches!(p, Protocol::Ip4(ip) if ip.is_unspecified()))
            })
            .map(|a| {
                if a.iter().any(|p| matches!(p, Protocol::P2p(_))) && !is_circuit(&a) {
                    a
                } else {
                    a.with(Protocol::P2p(me))
                }
            })
            .map(|a| a.to_string())
            .filter(|a| a.len() <= tincan_core::invite::MAX_VIA_BYTES)
            .take(tincan_core::invite::MAX_VIA)
            .collect();
        Ok(tincan_core::invite::Invite {
            room,
            // An open room's owner holds a locator too; its link needs none.
            locator: locator.filter(|_| invite_only),
            via,
        })
    }

    /// Accepts an invite: keeps its locator (an invite-only room is found
    /// and synced only through it), dials the addresses it names, and
    /// follows the room. The room's records arrive by sync; wait for them
    /// in the store.
    pub async fn accept_invite(
        &self,
        invite: &tincan_core::invite::Invite,
    ) -> Result<(), SubscribeError> {
        let store = self.store.clone();
        let copy = invite.clone();
        tokio::task::spawn_blocking(move || store.install_invite(&copy))
            .await
            .map_err(|e| tincan_store::StorageError(e.to_string()))??;
        for addr in &invite.via {
            match addr.parse::<Multiaddr>() {
                Ok(a) => {
                    if let Err(e) = self.dial(a).await {
                        tracing::debug!(%addr, error = %e, "cannot dial an address of the invite");
                    }
                }
                Err(e) => tracing::debug!(%addr, error = %e, "not an address, in an invite"),
            }
        }
        self.subscribe_room(invite.room).await
    }

    /// Counters.
    pub async fn stats(&self) -> Result<MeshStats, Stopped> {
        self.ask(|reply| Command::Stats { reply }).await
    }

    /// Starts a sync of every followed room and of profiles with every
    /// connected peer now (beside the periodic one).
    pub async fn sync_now(&self) -> Result<(), Stopped> {
        self.ask(|reply| Command::SyncNow { reply }).await
    }

    /// Blocks a peer (closes its connections and refuses new ones) or lifts
    /// the block. For abusive peers, and for tests that cut links.
    pub async fn set_blocked(&self, peer: PeerId, blocked: bool) -> Result<(), Stopped> {
        self.ask(|reply| Command::Block {
            peer,
            blocked,
            reply,
        })
        .await
    }

    /// Stops the node: closes every connection and ends its tasks.
    pub async fn shutdown(&self) {
        let _ = self.commands.send(Command::Shutdown).await;
        let task = self.task.lock().ok().and_then(|mut t| t.take());
        if let Some(task) = task {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }
}

/// The DHT key under which the peers of a room announce themselves.
/// Whether an address is on a loopback interface.
fn is_loopback(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_loopback(),
        Protocol::Ip6(ip) => ip.is_loopback(),
        _ => false,
    })
}

/// Whether this node could dial `addr` of another host: public addresses
/// and loopback (a dial there fails at once, and on loopback tests every
/// node is here) yes; a private, link-local or unique-local address only
/// when one of `ours` is on the same subnet (the same /24, or /64 for
/// IPv6), which is how a LAN looks; other homes' private addresses lead
/// nowhere from here.
pub(crate) fn routable_from(addr: &Multiaddr, ours: &[std::net::IpAddr]) -> bool {
    use std::net::IpAddr;
    let ip = addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    });
    let Some(ip) = ip else {
        // DNS names and the like: let the dial decide.
        return true;
    };
    if let IpAddr::V6(v6) = ip {
        // Every host has fe80::/64 and it means nothing without the
        // interface it is on, which a multiaddr does not carry.
        if v6.is_unicast_link_local() {
            return false;
        }
    }
    let private = match ip {
        IpAddr::V4(v4) => v4.is_private() || v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xfe00) == 0xfc00,
    };
    if !private {
        return true;
    }
    ours.iter().any(|o| match (ip, o) {
        (IpAddr::V4(a), IpAddr::V4(b)) => a.octets()[..3] == b.octets()[..3],
        (IpAddr::V6(a), IpAddr::V6(b)) => a.segments()[..4] == b.segments()[..4],
        _ => false,
    })
}

/// A QUIC address on a public IP (not private, loopback, link-local,
/// shared or unspecified): somewhere any host can dial.
fn is_public_quic(addr: &Multiaddr) -> bool {
    let mut parts = addr.iter();
    let ip = match parts.next() {
        Some(Protocol::Ip4(ip)) => std::net::IpAddr::V4(ip),
        Some(Protocol::Ip6(ip)) => std::net::IpAddr::V6(ip),
        _ => return false,
    };
    matches!(
        (parts.next(), parts.next()),
        (Some(Protocol::Udp(_)), Some(Protocol::QuicV1))
    ) && tincan_portmap::lease::is_usable_external(ip)
}

/// The port a listen address would need forwarded on a home router: a
/// QUIC or TCP port on a private IPv4 address (loopback, public and IPv6
/// addresses need no IPv4 mapping).
fn mappable(addr: &Multiaddr) -> Option<tincan_portmap::Want> {
    use tincan_portmap::{Transport, Want};
    let mut parts = addr.iter();
    let Some(Protocol::Ip4(ip)) = parts.next() else {
        return None;
    };
    if !ip.is_private() {
        return None;
    }
    match (parts.next(), parts.next()) {
        (Some(Protocol::Udp(port)), Some(Protocol::QuicV1)) => Some(Want {
            transport: Transport::Udp,
            port,
        }),
        (Some(Protocol::Tcp(port)), None) => Some(Want {
            transport: Transport::Tcp,
            port,
        }),
        _ => None,
    }
}

/// The address peers dial for a port the router forwards.
fn mapped_multiaddr(want: tincan_portmap::Want, external: std::net::SocketAddr) -> Multiaddr {
    let ip = match external.ip() {
        std::net::IpAddr::V4(v4) => Protocol::Ip4(v4),
        std::net::IpAddr::V6(v6) => Protocol::Ip6(v6),
    };
    let addr = Multiaddr::empty().with(ip);
    match want.transport {
        tincan_portmap::Transport::Udp => addr
            .with(Protocol::Udp(external.port()))
            .with(Protocol::QuicV1),
        tincan_portmap::Transport::Tcp => addr.with(Protocol::Tcp(external.port())),
    }
}

/// The port mapper's next event; never, when there is no mapper.
async fn next_mapping(
    events: &mut Option<mpsc::Receiver<tincan_portmap::Event>>,
) -> Option<tincan_portmap::Event> {
    match events {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

fn room_key(room: &RoomId) -> kad::RecordKey {
    kad::RecordKey::new(&room_topic(room).hash().as_str())
}

use crate::reach::is_circuit;

/// Where one room lives on the wire. An open room: its public names (the
/// topic and DHT key of its room id, [`Scope::Room`]). An invite-only room
/// whose locator secret this node holds: names derived from the secret
/// (docs/trust.md, "Where a sealed room lives on the wire"), so nothing of
/// it is published under its public id. A node without the secret cannot
/// reach an invite-only room at all, which is the point.
struct Wire {
    topic: IdentTopic,
    voice: IdentTopic,
    dht: kad::RecordKey,
    scope: Scope,
    /// Its voice signals travel sealed under the room's epoch key
    /// ([`crate::signal`]): the sealed names' voice topic.
    sealed: bool,
    /// Which epochs' signals are opened (the newest held, and the one
    /// before for a while after a new one): sealed rooms only.
    window: Option<crate::signal::EpochWindow>,
}

impl Wire {
    fn of(store: &Store, room: &RoomId, me: &PeerId) -> Wire {
        let sealed = store.seals(room).unwrap_or(false);
        match store.locator(room).ok().flatten().filter(|_| sealed) {
            Some(secret) => {
                let id = secret.id();
                Wire {
                    topic: sealed_topic(&id),
                    voice: sealed_voice_topic(&id),
                    dht: kad::RecordKey::new(&secret.derive("dht")),
                    scope: Scope::Sealed {
                        locator: id,
                        proof: secret.proof(&me.to_bytes()),
                    },
                    sealed: true,
                    window: None,
                }
            }
            None => Wire {
                topic: room_topic(room),
                voice: voice_topic(room),
                dht: room_key(room),
                scope: Scope::Room(*room),
                sealed: false,
                window: None,
            },
        }
    }
}

/// What a scope holds once named against a store: one room's records, or
/// the profiles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Holds {
    Room(RoomId),
    Profiles,
}

impl Holds {
    fn of_record(record: &tincan_core::Record) -> Holds {
        match record.room() {
            Some(room) => Holds::Room(room),
            None => Holds::Profiles,
        }
    }

    /// Whether `record` may travel under this scope: its own room's
    /// records, and under a room scope also profiles (a room's listing
    /// carries its owner's and plaintext members' profiles).
    fn admits(self, record: &tincan_core::Record) -> bool {
        match (self, Holds::of_record(record)) {
            (Holds::Room(a), Holds::Room(b)) => a == b,
            (_, Holds::Profiles) => matches!(record.body, tincan_core::Body::Profile(_)),
            (Holds::Profiles, Holds::Room(_)) => false,
        }
    }
}

/// What `scope` holds for `requester` (`None`: our own listing), or
/// `None` when this node serves nothing under it: an invite-only room asked
/// by its public id, a locator it does not hold, or a proof that does not
/// match the requester. All of these are answered as an empty set, so a
/// stranger cannot tell "sealed here" from "not here".
fn resolve_scope(
    store: &Store,
    scope: Scope,
    requester: Option<&PeerId>,
) -> Result<Option<Holds>, tincan_store::StorageError> {
    match scope {
        Scope::Profiles => Ok(Some(Holds::Profiles)),
        Scope::Room(room) => {
            if requester.is_some() && store.seals(&room)? {
                return Ok(None);
            }
            Ok(Some(Holds::Room(room)))
        }
        Scope::Sealed { locator, proof } => {
            let Some(room) = store.room_of_locator(&locator)? else {
                return Ok(None);
            };
            if let Some(peer) = requester {
                let Some(secret) = store.locator(&room)? else {
                    return Ok(None);
                };
                // Constant time: the proof is a MAC over the requester.
                let expected = blake3::Hash::from(secret.proof(&peer.to_bytes()));
                if expected != blake3::Hash::from(proof) {
                    return Ok(None);
                }
            }
            Ok(Some(Holds::Room(room)))
        }
    }
}

struct PeerState {
    /// Open connections: remote address, whether it is a relay circuit,
    /// and when it opened.
    connections: HashMap<ConnectionId, (Multiaddr, bool, Instant)>,
    rtt: Option<Duration>,
    agent: Option<String>,
    /// Whether it speaks our sync protocol (learnt from identify).
    syncs: bool,
    /// The addresses it listens on, as identify said (its circuit address
    /// among them when it is behind a NAT), bounded.
    listen_addrs: Vec<Multiaddr>,
}

impl PeerState {
    /// The connection to show: a direct one if any (DCUtR upgraded the
    /// circuit), else a circuit; the newest of its kind.
    fn best(&self) -> Option<(&Multiaddr, bool)> {
        let mut conns: Vec<(&ConnectionId, &(Multiaddr, bool, Instant))> =
            self.connections.iter().collect();
        conns.sort_by_key(|(id, (_, relayed, _))| (!*relayed, **id));
        conns.last().map(|(_, (a, r, _))| (a, *r))
    }

    /// Connections that a better one has superseded for at least `grace`:
    /// circuits once a direct connection is up, and older circuits once a
    /// newer one is (a renewal). Closing them ourselves, gracefully, beats
    /// having the relay cut them mid-message when their limit runs out.
    fn superseded(&self, now: Instant, grace: Duration) -> Vec<ConnectionId> {
        let settled = |t: &Instant| now.saturating_duration_since(*t) >= grace;
        let direct = self
            .connections
            .values()
            .any(|(_, relayed, t)| !relayed && settled(t));
        let newest_circuit = self
            .connections
            .iter()
            .filter(|(_, (_, relayed, _))| *relayed)
            .max_by_key(|(id, (_, _, t))| (*t, **id))
            .map(|(id, (_, _, t))| (*id, *t));
        self.connections
            .iter()
            .filter(|(id, (_, relayed, _))| {
                *relayed
                    && (direct
                        || newest_circuit.is_some_and(|(newest, t)| newest != **id && settled(&t)))
            })
            .map(|(id, _)| *id)
            .collect()
    }
}

/// Most listen addresses kept per peer from identify.
const MAX_PEER_LISTEN_ADDRS: usize = 16;

/// Relays' circuit limits remembered (by remote peer or relay).
const MAX_CIRCUIT_LIMITS: usize = 1024;

struct Driver {
    swarm: Swarm<Behaviour>,
    store: Arc<Store>,
    config: MeshConfig,
    limits: Limits,
    reconcile: ReconcileConfig,
    /// The followed rooms, with their names on the wire.
    rooms: HashMap<RoomId, Wire>,
    /// What each subscribed record topic carries.
    topics: HashMap<TopicHash, Holds>,
    peers: HashMap<PeerId, PeerState>,
    sessions: HashMap<SessionKey, Session>,
    /// Fetched batches of each session still with the writer. A session
    /// fetches the next batch while the writer applies one (the writer's
    /// queue keeps them in order), and waits while two are outstanding.
    applying: HashMap<SessionKey, u32>,
    /// Sessions listing this node's items before they start.
    starting: HashSet<SessionKey>,
    queued: VecDeque<SessionKey>,
    inflight: HashMap<OutboundRequestId, SessionKey>,
    /// Inbound sync requests being answered, shared fairly between peers.
    inbound: FairSlots<PeerId>,
    /// Bootstrap redials, relay reservations, circuit refreshes.
    reach: Reach,
    /// Our listeners on relay circuits, by the relay they reserve on.
    circuit_listeners: HashMap<ListenerId, PeerId>,
    /// The life of circuits as relays said, by the remote peer (inbound
    /// circuits) or the relay (outbound ones).
    circuit_limits: HashMap<PeerId, Duration>,
    peer_limit: RateLimiter<PeerId>,
    author_limit: RateLimiter<UserId>,
    /// Records received by sync, per peer that served them and per author:
    /// larger buckets than gossip's, since catch-up comes in bursts.
    sync_peer_limit: RateLimiter<PeerId>,
    sync_author_limit: RateLimiter<UserId>,
    /// Protocol violations by each peer, which set its application score
    /// in gossipsub; at most [`MAX_TRACKED_OFFENDERS`] peers are kept.
    offences: HashMap<PeerId, u32>,
    writer: mpsc::Sender<WriteJob>,
    internal_tx: mpsc::Sender<Internal>,
    stats: MeshStats,
    addr_waiters: Vec<oneshot::Sender<Vec<Multiaddr>>>,
    round: usize,
    /// When the followed rooms were last announced in the DHT because its
    /// routing table gained a peer (debounced: see [`ANNOUNCE_DEBOUNCE`]).
    last_announce: Option<Instant>,
    /// The voice topics of followed rooms.
    voice_topics: HashMap<TopicHash, RoomId>,
    signals: tokio::sync::broadcast::Sender<Signal>,
    /// Peers found by mDNS: the ones asked for, and answered with, the
    /// LAN room directory.
    lan_peers: HashSet<PeerId>,
    /// Directory queries in flight.
    nearby: Vec<NearbyQuery>,
    /// Asks the home router to forward our listen ports (None: off).
    portmap: Option<tincan_portmap::PortMapper>,
    /// The address announced for each forwarded port.
    mapped: HashMap<tincan_portmap::Want, Multiaddr>,
    /// Configured listeners that have not reported an address yet: who
    /// asks for the listen addresses waits for all of them, so IPv4 and
    /// IPv6, QUIC and TCP are all in the answer.
    unreported_listeners: HashSet<ListenerId>,
    /// libp2p's own metrics, fed every swarm and behaviour event.
    libp2p_metrics: libp2p::metrics::Metrics,
    /// What the `tincan_mesh_*` metrics read at each scrape, refreshed at
    /// every reach tick.
    snapshot: Arc<std::sync::Mutex<Snapshot>>,
}

/// The counters and gauges of `tincan_mesh_*`, as last copied from the
/// swarm task.
#[derive(Clone, Debug, Default)]
struct Snapshot {
    stats: MeshStats,
    peers_direct: usize,
    peers_relayed: usize,
    reservations: usize,
    rooms: usize,
}

impl Snapshot {
    fn samples(&self) -> Vec<Sample> {
        let s = &self.stats;
        let verdicts = "Gossip messages by verdict: accepted and forwarded, rejected (sender penalised), ignored";
        let syncs = "Outbound catch-up sync sessions";
        vec![
            Sample::counter("tincan_mesh_gossip_messages", verdicts, s.gossip_accepted)
                .with_label("verdict", "accepted"),
            Sample::counter("tincan_mesh_gossip_messages", verdicts, s.gossip_rejected)
                .with_label("verdict", "rejected"),
            Sample::counter("tincan_mesh_gossip_messages", verdicts, s.gossip_ignored)
                .with_label("verdict", "ignored"),
            Sample::counter(
                "tincan_mesh_rate_limited",
                "Gossip messages dropped by the per-peer or per-author rate limit",
                s.rate_limited,
            ),
            Sample::counter(
                "tincan_mesh_writer_queue_full",
                "Jobs dropped because the store writer's queue was full",
                s.queue_full,
            ),
            Sample::counter("tincan_mesh_syncs", syncs, s.syncs_started)
                .with_label("event", "started"),
            Sample::counter("tincan_mesh_syncs", syncs, s.syncs_completed)
                .with_label("event", "completed"),
            Sample::counter("tincan_mesh_syncs", syncs, s.syncs_dropped)
                .with_label("event", "dropped"),
            Sample::counter(
                "tincan_mesh_synced_records",
                "Records received by catch-up sync, by outcome",
                s.synced_records,
            )
            .with_label("outcome", "stored"),
            Sample::counter(
                "tincan_mesh_synced_records",
                "Records received by catch-up sync, by outcome",
                s.synced_rejected,
            )
            .with_label("outcome", "refused"),
            Sample::counter(
                "tincan_mesh_sync_refused_busy",
                "Inbound sync requests refused because too many were being answered",
                s.sync_refused_busy,
            ),
            Sample::counter(
                "tincan_mesh_sync_lies",
                "Sync sessions ended because the peer broke the protocol",
                s.sync_lies,
            ),
            Sample::counter(
                "tincan_mesh_sync_over_budget",
                "Sync answers cut short by the per-peer or per-author sync budget",
                s.sync_over_budget,
            ),
            Sample::counter(
                "tincan_mesh_port_mappings",
                "Ports the home router agreed to forward to this node (UPnP, PCP or NAT-PMP)",
                s.port_mappings,
            ),
            Sample::gauge(
                "tincan_mesh_peers",
                "Connected peers by path",
                self.peers_direct as f64,
            )
            .with_label("path", "direct"),
            Sample::gauge(
                "tincan_mesh_peers",
                "Connected peers by path",
                self.peers_relayed as f64,
            )
            .with_label("path", "relayed"),
            Sample::gauge(
                "tincan_mesh_relay_reservations",
                "Relay reservations this node holds",
                self.reservations as f64,
            ),
            Sample::gauge(
                "tincan_mesh_rooms",
                "Rooms this node follows",
                self.rooms as f64,
            ),
        ]
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere while holding it is a bug already reported; a
    // snapshot of counters stays usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Least time between re-announcements of the followed rooms triggered by
/// new DHT peers: the first DHT peer matters (a room announced before any
/// peer was known reached nobody), the hundredth adds little.
const ANNOUNCE_DEBOUNCE: Duration = Duration::from_secs(10);

/// Peers whose protocol violations are remembered at once.
const MAX_TRACKED_OFFENDERS: usize = 1024;

/// Application score per violation. gossipsub weighs it by
/// `app_specific_weight` (10 by default): one violation puts a peer at
/// -100, under the default graylist threshold of -80.
const SCORE_PER_OFFENCE: f64 = 10.0;

/// How long a better connection must have been up before the circuit it
/// replaces is closed.
const SUPERSEDED_GRACE: Duration = Duration::from_secs(2);

/// How often the reach planner is asked what to do (its waits are whole
/// seconds; the first tick is at once, so bootstrap peers are dialled at
/// start).
const REACH_TICK: Duration = Duration::from_millis(250);

/// How often rooms that have no connected peer yet are looked up again in
/// the DHT, beside the slower periodic sync.
const LONELY_ROOM_LOOKUP: Duration = Duration::from_secs(3);

impl Driver {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut internal: mpsc::Receiver<Internal>,
        mut portmap: Option<mpsc::Receiver<tincan_portmap::Event>>,
    ) {
        let mut periodic =
            tokio::time::interval(self.config.sync_interval.max(Duration::from_millis(100)));
        periodic.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        periodic.tick().await;
        let mut lonely = tokio::time::interval(LONELY_ROOM_LOOKUP);
        lonely.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        lonely.tick().await;
        let mut reach_tick = tokio::time::interval(REACH_TICK);
        reach_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                command = commands.recv() => match command {
                    None | Some(Command::Shutdown) => break,
                    Some(c) => self.on_command(c),
                },
                Some(msg) = internal.recv() => self.on_internal(msg),
                Some(event) = next_mapping(&mut portmap) => self.on_port_mapping(event),
                _ = periodic.tick() => self.periodic_sync(),
                _ = lonely.tick() => self.look_up_lonely_rooms(),
                _ = reach_tick.tick() => self.drive_reach(),
            }
        }
        tracing::debug!(peer = %self.swarm.local_peer_id(), "mesh node stopped");
    }

    fn scopes(&self) -> Vec<Scope> {
        let mut s: Vec<Scope> = self.rooms.values().map(|w| w.scope).collect();
        s.push(Scope::Profiles);
        s
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Publish {
                topic,
                bytes,
                reply,
            } => {
                let result = match self.swarm.behaviour_mut().gossipsub.publish(topic, bytes) {
                    Ok(_) => Ok(true),
                    Err(
                        gossipsub::PublishError::Duplicate
                        | gossipsub::PublishError::NoPeersSubscribedToTopic
                        | gossipsub::PublishError::AllQueuesFull(_),
                    ) => Ok(false),
                    Err(e) => Err(e.to_string()),
                };
                let _ = reply.send(result);
            }
            Command::PublishRecord { room, bytes, reply } => {
                let topic = match room {
                    None => profiles_topic(),
                    Some(room) => match self.rooms.get(&room) {
                        Some(w) => w.topic.clone(),
                        None => Wire::of(&self.store, &room, self.swarm.local_peer_id()).topic,
                    },
                };
                self.on_command(Command::Publish {
                    topic,
                    bytes,
                    reply,
                });
            }
            Command::Subscribe { room, reply } => {
                let _ = reply.send(self.subscribe(room));
            }
            Command::PublishSignal { room, bytes, reply } => {
                let result = match self.rooms.get(&room).map(|w| (w.voice.clone(), w.sealed)) {
                    // An invite-only room's signals are sealed here, the one
                    // place they leave this node.
                    Some((voice, sealed)) => match if sealed {
                        self.seal_signal(&room, &bytes)
                    } else {
                        Ok(bytes)
                    } {
                        Err(e) => Err(e),
                        Ok(bytes) => {
                            match self.swarm.behaviour_mut().gossipsub.publish(voice, bytes) {
                                Ok(_) => Ok(true),
                                Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => Ok(false),
                                Err(gossipsub::PublishError::Duplicate) => Ok(true),
                                Err(e) => Err(e.to_string()),
                            }
                        }
                    },
                    None => Err(format!("room {room} is not followed: join it first")),
                };
                let _ = reply.send(result);
            }
            Command::Unsubscribe { room, reply } => {
                self.unsubscribe(&room);
                let _ = reply.send(());
            }
            Command::Dial { addr, reply } => {
                let r = self.swarm.dial(addr.clone()).map_err(|e| DialError::Dial {
                    addr: addr.to_string(),
                    detail: e.to_string(),
                });
                let _ = reply.send(r);
            }
            Command::Peers { reply } => {
                let g = &self.swarm.behaviour().gossipsub;
                let mut out: Vec<PeerInfo> = self
                    .peers
                    .iter()
                    .map(|(id, p)| PeerInfo {
                        peer_id: *id,
                        address: p
                            .best()
                            .map(|(a, _)| a.clone())
                            .unwrap_or_else(Multiaddr::empty),
                        path: match p.best() {
                            Some((_, true)) => PeerPath::Relayed,
                            _ => PeerPath::Direct,
                        },
                        rtt: p.rtt,
                        score: g.peer_score(id),
                        agent: p.agent.clone(),
                    })
                    .collect();
                out.sort_by_key(|p| p.peer_id);
                let _ = reply.send(out);
            }
            Command::ListenAddrs { reply } => {
                let mut addrs: Vec<Multiaddr> = self.swarm.listeners().cloned().collect();
                // IPv4 first: most peers dial it, and people copy the first.
                addrs.sort_by_key(|a| matches!(a.iter().next(), Some(Protocol::Ip6(_))));
                let none_asked =
                    self.config.listen_addrs.is_empty() && self.config.relays.is_empty();
                if (addrs.is_empty() || !self.unreported_listeners.is_empty()) && !none_asked {
                    if self.addr_waiters.len() < self.limits.command_queue {
                        self.addr_waiters.push(reply);
                    }
                } else {
                    let _ = reply.send(addrs);
                }
            }
            Command::Stats { reply } => {
                let _ = reply.send(self.stats.clone());
            }
            Command::SyncNow { reply } => {
                let peers: Vec<PeerId> = self
                    .peers
                    .iter()
                    .filter(|(_, p)| p.syncs)
                    .map(|(id, _)| *id)
                    .collect();
                for scope in self.scopes() {
                    for p in &peers {
                        self.request_sync(*p, scope);
                    }
                }
                let _ = reply.send(());
            }
            Command::Block {
                peer,
                blocked,
                reply,
            } => {
                let list = &mut self.swarm.behaviour_mut().blocked;
                if blocked {
                    list.block_peer(peer);
                } else {
                    list.unblock_peer(peer);
                }
                let _ = reply.send(());
            }
            Command::NearbyRooms { wait, reply } => {
                let peers: Vec<PeerId> = self
                    .lan_peers
                    .iter()
                    .filter(|p| self.swarm.is_connected(p))
                    .copied()
                    .collect();
                if peers.is_empty() {
                    let _ = reply.send(Vec::new());
                    return;
                }
                let waiting = peers
                    .iter()
                    .map(|p| {
                        self.swarm
                            .behaviour_mut()
                            .directory
                            .send_request(p, DirectoryRequest::OpenRooms)
                    })
                    .collect();
                self.nearby.push(NearbyQuery {
                    deadline: Instant::now() + wait,
                    waiting,
                    found: Vec::new(),
                    reply,
                });
            }
            Command::Shutdown => {}
        }
    }

    /// Answers a LAN peer's directory request (on a blocking thread: it
    /// reads the store), refuses anyone else.
    fn answer_directory(&mut self, peer: PeerId, channel: ResponseChannel<DirectoryResponse>) {
        if !self.lan_peers.contains(&peer) {
            let _ = self.swarm.behaviour_mut().directory.send_response(
                channel,
                DirectoryResponse::Refused {
                    reason: "the room directory is for nodes on this LAN (found by mDNS)".into(),
                },
            );
            return;
        }
        let store = self.store.clone();
        let rooms: Vec<RoomId> = self.rooms.keys().copied().collect();
        let tx = self.internal_tx.clone();
        tokio::spawn(async move {
            let response = tokio::task::spawn_blocking(move || directory_answer(&store, &rooms))
                .await
                .unwrap_or_else(|e| DirectoryResponse::Refused {
                    reason: format!("internal error: {e}"),
                });
            let _ = tx
                .send(Internal::DirectoryAnswer { channel, response })
                .await;
        });
    }

    /// A directory answer (or failure) for a query in flight.
    fn on_directory_answer(
        &mut self,
        id: OutboundRequestId,
        peer: PeerId,
        answer: Option<DirectoryResponse>,
    ) {
        let Some(i) = self.nearby.iter().position(|q| q.waiting.contains(&id)) else {
            return;
        };
        let q = &mut self.nearby[i];
        q.waiting.remove(&id);
        if let Some(DirectoryResponse::Rooms(entries)) = answer {
            for e in entries.into_iter().take(MAX_DIRECTORY_ROOMS) {
                let Some(room) = nearby_room(&e, peer) else {
                    tracing::debug!(%peer, "a directory answer carried a record that does not check");
                    continue;
                };
                match q.found.iter_mut().find(|r| r.id == room.id) {
                    Some(known) => {
                        if !known.via.contains(&peer) {
                            known.via.push(peer);
                        }
                        known.members = known.members.max(room.members);
                    }
                    None => q.found.push(room),
                }
            }
        }
        if q.waiting.is_empty() {
            let q = self.nearby.swap_remove(i);
            let _ = q.reply.send(q.found);
        }
    }

    /// Answers directory queries whose time is up with what they have.
    fn expire_nearby(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.nearby.len() {
            if now >= self.nearby[i].deadline {
                let q = self.nearby.swap_remove(i);
                let _ = q.reply.send(q.found);
            } else {
                i += 1;
            }
        }
    }

    /// Follows `room` under the names its wire has now. Called again for a
    /// followed room (after an invite installed its locator, or when the
    /// owner made it invite-only), it moves the room to its new names.
    fn subscribe(&mut self, room: RoomId) -> Result<(), SubscribeError> {
        let wire = Wire::of(&self.store, &room, self.swarm.local_peer_id());
        match self.rooms.get(&room) {
            Some(old) if old.scope == wire.scope => return Ok(()),
            Some(_) => self.unsubscribe(&room),
            None => {}
        }
        if self.rooms.len() >= self.limits.max_rooms {
            return Err(SubscribeError::TooManyRooms(self.rooms.len()));
        }
        let g = &mut self.swarm.behaviour_mut().gossipsub;
        g.subscribe(&wire.topic)
            .map_err(|e| SubscribeError::Gossip(e.to_string()))?;
        let _ = g.set_topic_params(wire.topic.clone(), topic_score_params());
        g.subscribe(&wire.voice)
            .map_err(|e| SubscribeError::Gossip(e.to_string()))?;
        let _ = g.set_topic_params(wire.voice.clone(), topic_score_params());
        self.voice_topics.insert(wire.voice.hash(), room);
        self.topics.insert(wire.topic.hash(), Holds::Room(room));
        let scope = wire.scope;
        self.rooms.insert(room, wire);
        // Beyond the LAN, peers of a room find each other as providers of
        // the room's key in the DHT.
        self.announce_room(room);
        let peers: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.syncs)
            .map(|(id, _)| *id)
            .collect();
        for p in peers {
            self.request_sync(p, scope);
        }
        Ok(())
    }

    fn unsubscribe(&mut self, room: &RoomId) {
        let Some(wire) = self.rooms.remove(room) else {
            return;
        };
        let g = &mut self.swarm.behaviour_mut().gossipsub;
        g.unsubscribe(&wire.topic);
        g.unsubscribe(&wire.voice);
        self.voice_topics.remove(&wire.voice.hash());
        self.topics.remove(&wire.topic.hash());
        self.swarm
            .behaviour_mut()
            .kademlia
            .stop_providing(&wire.dht);
    }

    /// The scope a peer's subscription to a topic of ours asks us to sync.
    fn scope_of_holds(&self, holds: Holds) -> Option<Scope> {
        match holds {
            Holds::Profiles => Some(Scope::Profiles),
            Holds::Room(room) => self.rooms.get(&room).map(|w| w.scope),
        }
    }

    /// Announces every followed room in the DHT.
    /// A port mapping came or went: announce or withdraw the address, and
    /// announce the rooms again so provider records carry it.
    fn on_port_mapping(&mut self, event: tincan_portmap::Event) {
        match event {
            tincan_portmap::Event::Mapped { want, external } => {
                let addr = mapped_multiaddr(want, external);
                tracing::info!(%addr, "reachable from outside through a port the router forwards (UPnP, PCP or NAT-PMP)");
                if let Some(old) = self.mapped.insert(want, addr.clone()) {
                    self.swarm.remove_external_address(&old);
                }
                self.swarm.add_external_address(addr);
                self.stats.port_mappings += 1;
                self.announce_rooms();
            }
            tincan_portmap::Event::Lost { want, external } => {
                tracing::info!(%external, "the router no longer forwards a port to us");
                if let Some(old) = self.mapped.remove(&want) {
                    self.swarm.remove_external_address(&old);
                }
            }
            tincan_portmap::Event::Unavailable(why) => {
                tracing::debug!("no port mapping: {why}");
            }
        }
    }

    /// A peer we reach only through a relay that announces a public QUIC
    /// address (a port its router forwards, or a public host) is dialled
    /// there at once, as an ordinary dial. DCUtR alone does not get there:
    /// its synchronised dials act as both ends of a simultaneous open, and a
    /// forwarded port hands our packets to the peer's listening socket
    /// instead, so neither side plays the dialer and the upgrade times out.
    /// QUIC only, so that no second TCP dial races DCUtR's on the same port.
    fn dial_public_quic_of_relayed(&mut self, peer: PeerId, announced: &[Multiaddr]) {
        let only_relayed = self
            .peers
            .get(&peer)
            .is_some_and(|p| !p.connections.is_empty() && p.connections.values().all(|c| c.1));
        if !only_relayed {
            return;
        }
        let public: Vec<Multiaddr> = announced
            .iter()
            .filter(|a| !is_circuit(a) && is_public_quic(a))
            .take(MAX_PEER_LISTEN_ADDRS)
            .cloned()
            .collect();
        if public.is_empty() {
            return;
        }
        tracing::debug!(%peer, ?public, "dialling a relayed peer at its public QUIC addresses");
        let opts = DialOpts::peer_id(peer)
            .addresses(public)
            .condition(PeerCondition::Always)
            .build();
        if let Err(e) = self.swarm.dial(opts) {
            tracing::debug!(%peer, "direct dial not started: {e}");
        }
    }

    /// Answers who waits for the listen addresses, once every configured
    /// listener has reported (or closed), IPv4 first.
    fn answer_addr_waiters(&mut self) {
        if !self.unreported_listeners.is_empty() {
            return;
        }
        let mut addrs: Vec<Multiaddr> = self.swarm.listeners().cloned().collect();
        addrs.sort_by_key(|a| matches!(a.iter().next(), Some(Protocol::Ip6(_))));
        for w in self.addr_waiters.drain(..) {
            let _ = w.send(addrs.clone());
        }
    }

    fn announce_rooms(&mut self) {
        let rooms: Vec<RoomId> = self.rooms.keys().copied().collect();
        for room in rooms {
            self.announce_room(room);
        }
    }

    /// Announces one room in the DHT and looks up its other providers.
    fn announce_room(&mut self, room: RoomId) {
        let Some(key) = self.rooms.get(&room).map(|w| w.dht.clone()) else {
            return;
        };
        let kad = &mut self.swarm.behaviour_mut().kademlia;
        if let Err(e) = kad.start_providing(key.clone()) {
            tracing::debug!("cannot announce the room in the DHT: {e}");
        }
        kad.get_providers(key);
    }

    /// Looks up again, in the DHT, the rooms no connected peer follows (a
    /// room's first lookup may have run before any DHT peer was known, or
    /// before the room's other nodes announced it).
    fn look_up_lonely_rooms(&mut self) {
        let g = &self.swarm.behaviour().gossipsub;
        let lonely: Vec<kad::RecordKey> = self
            .rooms
            .values()
            .filter(|w| {
                let topic = w.topic.hash();
                !g.all_peers().any(|(_, topics)| topics.contains(&&topic))
            })
            .map(|w| w.dht.clone())
            .collect();
        for key in lonely {
            self.swarm.behaviour_mut().kademlia.get_providers(key);
        }
    }

    fn periodic_sync(&mut self) {
        let now = Instant::now();
        self.author_limit.prune(now, Duration::from_secs(600));
        self.sync_author_limit.prune(now, Duration::from_secs(600));
        let peers: Vec<PeerId> = {
            let mut v: Vec<PeerId> = self
                .peers
                .iter()
                .filter(|(_, p)| p.syncs)
                .map(|(id, _)| *id)
                .collect();
            v.sort();
            v
        };
        if peers.is_empty() {
            return;
        }
        // Look for more peers of each room (the DHT is bounded by its own
        // query limits; one query per room per period).
        let keys: Vec<kad::RecordKey> = self.rooms.values().map(|w| w.dht.clone()).collect();
        for key in keys {
            self.swarm.behaviour_mut().kademlia.get_providers(key);
        }
        self.round = self.round.wrapping_add(1);
        let n = self.config.sync_peers_per_round.clamp(1, peers.len());
        for scope in self.scopes() {
            for i in 0..n {
                let p = peers[(self.round * n + i) % peers.len()];
                self.request_sync(p, scope);
            }
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        use libp2p::metrics::Recorder;
        self.libp2p_metrics.record(&event);
        match event {
            SwarmEvent::NewListenAddr {
                address,
                listener_id,
            } => {
                tracing::debug!(%address, "listening");
                if let Some(relay) = self.circuit_listeners.get(&listener_id) {
                    tracing::info!(%relay, %address, "reachable through a relay circuit");
                }
                if self.config.advertise_listen_addrs && !is_circuit(&address) {
                    self.swarm.add_external_address(address.clone());
                }
                if let (Some(mapper), Some(want)) = (&self.portmap, mappable(&address)) {
                    mapper.want(want);
                }
                if is_circuit(&address) {
                    // A relay reservation: behind a NAT this may be the only
                    // way in. Announce it, and announce the followed rooms
                    // again, since provider records made before it carried
                    // no address a peer could dial.
                    self.swarm.add_external_address(address.clone());
                    self.announce_rooms();
                }
                self.unreported_listeners.remove(&listener_id);
                self.answer_addr_waiters();
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                endpoint,
                connection_id,
                ..
            } => {
                let relayed = endpoint.is_relayed();
                let address = endpoint.get_remote_address().clone();
                let life = if relayed {
                    self.circuit_limits.get(&peer_id).copied().or_else(|| {
                        reach::relay_of(&address).and_then(|r| self.circuit_limits.get(&r).copied())
                    })
                } else {
                    None
                };
                self.reach
                    .on_connected(peer_id, relayed, life, Instant::now());
                if self.reach.is_bootstrap(&peer_id) {
                    tracing::info!(peer = %peer_id, %address, "connected to a bootstrap node");
                    // Find the DHT's other nodes through it.
                    let _ = self.swarm.behaviour_mut().kademlia.bootstrap();
                }
                let state = self.peers.entry(peer_id).or_insert(PeerState {
                    connections: HashMap::new(),
                    rtt: None,
                    agent: None,
                    syncs: false,
                    listen_addrs: Vec::new(),
                });
                let had_direct = state.connections.values().any(|(_, r, _)| !r);
                state
                    .connections
                    .insert(connection_id, (address.clone(), relayed, Instant::now()));
                if !relayed && !had_direct && state.connections.len() > 1 {
                    tracing::info!(peer = %peer_id, %address, "direct connection to a peer reached through a relay");
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                endpoint,
                connection_id,
                num_established,
                ..
            } => {
                self.reach.on_disconnected(
                    peer_id,
                    endpoint.is_relayed(),
                    num_established,
                    Instant::now(),
                );
                if let Some(p) = self.peers.get_mut(&peer_id) {
                    p.connections.remove(&connection_id);
                }
                if self.reach.is_bootstrap(&peer_id) && num_established == 0 {
                    tracing::info!(peer = %peer_id, "lost the bootstrap node; dialling it again with backoff");
                }
                if num_established > 0 {
                    // What gossip had queued on the closed connection may be
                    // lost with it: catch up with the peer by sync now
                    // rather than at the next periodic round.
                    if self.peers.get(&peer_id).is_some_and(|p| p.syncs) {
                        for scope in self.scopes() {
                            self.request_sync(peer_id, scope);
                        }
                    }
                    return;
                }
                self.peers.remove(&peer_id);
                self.peer_limit.forget(&peer_id);
                self.sync_peer_limit.forget(&peer_id);
                self.sessions.retain(|(p, _), _| *p != peer_id);
                self.applying.retain(|(p, _), _| *p != peer_id);
                self.queued.retain(|(p, _)| *p != peer_id);
                self.inflight.retain(|_, (p, _)| *p != peer_id);
                self.start_queued();
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id: Some(peer),
                error,
                ..
            } => {
                if self.reach.is_anchor(&peer) {
                    tracing::info!(%peer, "cannot reach the bootstrap node or relay ({error}); trying again with backoff: check its address and that it runs");
                } else {
                    tracing::debug!(%peer, "dial failed: {error}");
                }
                self.reach.on_dial_failed(peer, Instant::now());
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                reason,
                addresses,
            } => {
                if self.unreported_listeners.remove(&listener_id) {
                    self.answer_addr_waiters();
                }
                for a in &addresses {
                    self.swarm.remove_external_address(a);
                }
                if let Some(relay) = self.circuit_listeners.remove(&listener_id) {
                    match reason {
                        Ok(()) => {
                            tracing::info!(%relay, "relay reservation ended; asking again with backoff")
                        }
                        Err(e) => {
                            tracing::info!(%relay, "relay reservation failed ({e}); asking again with backoff: the relay may be full or restarting")
                        }
                    }
                    self.reach.on_reservation_lost(relay, Instant::now());
                } else {
                    tracing::info!(
                        ?addresses,
                        ?reason,
                        "a listener closed: the node no longer listens there"
                    );
                }
            }
            SwarmEvent::ListenerError { listener_id, error } => {
                tracing::info!(?listener_id, "listener error: {error}");
            }
            SwarmEvent::Behaviour(event) => self.on_behaviour_event(event),
            _ => {}
        }
    }

    /// Carries out the reach planner's decisions (and refreshes what the
    /// metrics read).
    fn drive_reach(&mut self) {
        let now = Instant::now();
        self.expire_nearby(now);
        {
            let relayed = self
                .peers
                .values()
                .filter(|p| matches!(p.best(), Some((_, true))))
                .count();
            let reservations = self.reach.reservations();
            let mut snap = lock(&self.snapshot);
            snap.stats = self.stats.clone();
            snap.peers_relayed = relayed;
            snap.peers_direct = self.peers.len() - relayed;
            snap.reservations = reservations;
            snap.rooms = self.rooms.len();
        }
        for action in self.reach.poll(now) {
            match action {
                ReachAction::DialBootstrap { peer, addrs } => {
                    let opts = DialOpts::peer_id(peer)
                        .addresses(addrs)
                        .condition(PeerCondition::DisconnectedAndNotDialing)
                        .build();
                    if let Err(e) = self.swarm.dial(opts) {
                        tracing::info!(%peer, "cannot dial the bootstrap node or relay: {e}");
                        self.reach.on_dial_failed(peer, now);
                    }
                }
                ReachAction::Reserve { relay, addr } => {
                    match self
                        .swarm
                        .listen_on(addr.clone().with(Protocol::P2pCircuit))
                    {
                        Ok(id) => {
                            tracing::debug!(%relay, "asking the relay for a reservation");
                            self.circuit_listeners.insert(id, relay);
                        }
                        Err(e) => {
                            tracing::info!(%relay, %addr, "cannot listen through the relay: {e}");
                            self.reach.on_reservation_lost(relay, now);
                        }
                    }
                }
                ReachAction::RefreshCircuit { peer } => {
                    // A new circuit before the old one ends: the peer's
                    // circuit addresses (identify said them) and whatever
                    // else the behaviours know.
                    let addrs: Vec<Multiaddr> = self
                        .peers
                        .get(&peer)
                        .map(|p| {
                            let mut v: Vec<Multiaddr> = p
                                .listen_addrs
                                .iter()
                                .filter(|a| is_circuit(a))
                                .cloned()
                                .collect();
                            v.extend(
                                p.connections
                                    .values()
                                    .filter(|(a, r, _)| *r && is_circuit(a))
                                    .map(|(a, _, _)| a.clone()),
                            );
                            v
                        })
                        .unwrap_or_default();
                    let opts = DialOpts::peer_id(peer)
                        .addresses(addrs)
                        .condition(PeerCondition::Always)
                        .build();
                    match self.swarm.dial(opts) {
                        Ok(()) => {
                            tracing::debug!(%peer, "opening a fresh circuit before the old one ends")
                        }
                        Err(e) => {
                            tracing::info!(%peer, "cannot renew the circuit to a peer behind a NAT: {e}")
                        }
                    }
                }
                ReachAction::DialRoomPeer { peer, addrs } => {
                    // Beside any dial already pending: one from the DHT may
                    // wait for seconds on addresses that lead nowhere, and
                    // this one holds only addresses that can work.
                    let opts = DialOpts::peer_id(peer)
                        .addresses(addrs)
                        .condition(PeerCondition::Disconnected)
                        .build();
                    match self.swarm.dial(opts) {
                        Ok(()) => tracing::debug!(%peer, "dialling a lost room peer again"),
                        Err(e) => {
                            tracing::debug!(%peer, "cannot dial a lost room peer: {e}");
                            self.reach.on_dial_failed(peer, now);
                        }
                    }
                }
            }
        }
        let stale: Vec<ConnectionId> = self
            .peers
            .values()
            .flat_map(|p| p.superseded(now, SUPERSEDED_GRACE))
            .collect();
        for id in stale {
            tracing::debug!(?id, "closing a circuit a better connection has replaced");
            self.swarm.close_connection(id);
        }
    }

    /// The IP addresses this node listens on (libp2p lists each interface's
    /// for a wildcard listener).
    fn own_ips(&self) -> Vec<std::net::IpAddr> {
        self.swarm
            .listeners()
            .flat_map(|a| a.iter())
            .filter_map(|p| match p {
                Protocol::Ip4(ip) => Some(std::net::IpAddr::V4(ip)),
                Protocol::Ip6(ip) => Some(std::net::IpAddr::V6(ip)),
                _ => None,
            })
            .collect()
    }

    /// Tells the reach planner about a peer that shares a followed room,
    /// with the addresses it listens on (its loopback ones are no way to
    /// it from another host).
    fn note_room_peer(&mut self, peer: PeerId) {
        let Some(p) = self.peers.get(&peer) else {
            return;
        };
        // Where it can be reached again from here: its relay circuits (and
        // a circuit through each relay we know: players of one community
        // reserve on the same bootstrap nodes, and a relay without the
        // peer's reservation says so at once), the addresses it listens on
        // that we can route to, and the direct address we reached it at.
        let ours = self.own_ips();
        let mut addrs: Vec<Multiaddr> = p
            .listen_addrs
            .iter()
            .filter(|a| is_circuit(a) || routable_from(a, &ours))
            .cloned()
            .collect();
        for (a, relayed, _) in p.connections.values() {
            if !relayed && !a.is_empty() && routable_from(a, &ours) && !addrs.contains(a) {
                addrs.push(a.clone());
            }
        }
        for relay in self.reach.relay_addrs() {
            let circuit = relay
                .clone()
                .with(Protocol::P2pCircuit)
                .with(Protocol::P2p(peer));
            if !addrs.contains(&circuit) {
                addrs.push(circuit);
            }
        }
        self.reach.on_room_peer(peer, addrs, true);
    }

    fn on_behaviour_event(&mut self, event: BehaviourEvent) {
        use libp2p::metrics::Recorder;
        match &event {
            BehaviourEvent::Gossipsub(e) => self.libp2p_metrics.record(e),
            BehaviourEvent::Kademlia(e) => self.libp2p_metrics.record(e),
            BehaviourEvent::Identify(e) => self.libp2p_metrics.record(e),
            BehaviourEvent::Ping(e) => self.libp2p_metrics.record(e),
            BehaviourEvent::RelayServer(e) => self.libp2p_metrics.record(e),
            BehaviourEvent::Dcutr(e) => self.libp2p_metrics.record(e),
            _ => {}
        }
        match event {
            BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            }) => self.on_gossip(propagation_source, message_id, message),
            BehaviourEvent::Gossipsub(gossipsub::Event::Subscribed { peer_id, topic, .. }) => {
                if matches!(self.topics.get(&topic), Some(Holds::Room(_))) {
                    self.note_room_peer(peer_id);
                }
                if let Some(scope) = self
                    .topics
                    .get(&topic)
                    .copied()
                    .and_then(|h| self.scope_of_holds(h))
                    && self.peers.get(&peer_id).is_some_and(|p| p.syncs)
                {
                    self.request_sync(peer_id, scope);
                }
            }
            BehaviourEvent::Sync(event) => self.on_sync_event(event),
            BehaviourEvent::Directory(event) => match event {
                request_response::Event::Message {
                    peer,
                    message: request_response::Message::Request { channel, .. },
                    ..
                } => self.answer_directory(peer, channel),
                request_response::Event::Message {
                    peer,
                    message:
                        request_response::Message::Response {
                            request_id,
                            response,
                        },
                    ..
                } => self.on_directory_answer(request_id, peer, Some(response)),
                request_response::Event::OutboundFailure {
                    peer, request_id, ..
                } => self.on_directory_answer(request_id, peer, None),
                _ => {}
            },
            BehaviourEvent::Mdns(mdns::Event::Expired(gone)) => {
                for (peer, _) in gone {
                    self.lan_peers.remove(&peer);
                }
            }
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                let syncs = info.protocols.contains(&SYNC_PROTOCOL);
                if info.protocols.contains(&libp2p::relay::HOP_PROTOCOL_NAME) {
                    self.reach.on_relay_offered(peer_id);
                }
                if let Some(p) = self.peers.get_mut(&peer_id) {
                    p.listen_addrs = info
                        .listen_addrs
                        .iter()
                        .take(MAX_PEER_LISTEN_ADDRS)
                        .cloned()
                        .collect();
                }
                let shares_a_room = {
                    let g = &self.swarm.behaviour().gossipsub;
                    g.all_peers().any(|(p, topics)| {
                        *p == peer_id
                            && topics
                                .iter()
                                .any(|t| matches!(self.topics.get(t), Some(Holds::Room(_))))
                    })
                };
                if shares_a_room {
                    self.note_room_peer(peer_id);
                }
                if info.protocols.contains(&KAD_PROTOCOL) {
                    // Only addresses another host could dial: a peer's
                    // private addresses on a network we are not on make
                    // every dial from the DHT wait for their timeout.
                    let ours = self.own_ips();
                    for addr in &info.listen_addrs {
                        if is_circuit(addr) || routable_from(addr, &ours) {
                            self.swarm
                                .behaviour_mut()
                                .kademlia
                                .add_address(&peer_id, addr.clone());
                        }
                    }
                }
                self.dial_public_quic_of_relayed(peer_id, &info.listen_addrs);
                let first = match self.peers.get_mut(&peer_id) {
                    Some(p) => {
                        p.agent = Some(info.agent_version.clone());
                        let first = syncs && !p.syncs;
                        p.syncs = syncs;
                        first
                    }
                    None => false,
                };
                if first {
                    // Sync on connect: everything followed, with this peer.
                    for scope in self.scopes() {
                        self.request_sync(peer_id, scope);
                    }
                }
            }
            BehaviourEvent::RelayClient(event) => self.on_relay_client(event),
            BehaviourEvent::Autonat(autonat::Event::StatusChanged { old, new }) => {
                let public = matches!(new, autonat::NatStatus::Public(_));
                tracing::info!(
                    ?old,
                    ?new,
                    "AutoNAT: reachability changed{}",
                    if public {
                        ""
                    } else {
                        "; reserving relay slots on the bootstrap nodes"
                    }
                );
                self.reach.on_nat_status(public);
            }
            BehaviourEvent::Dcutr(dcutr::Event {
                remote_peer_id,
                result,
            }) => match result {
                Ok(_) => {
                    tracing::info!(peer = %remote_peer_id, "hole punched: direct connection to a peer behind a NAT")
                }
                Err(e) => {
                    tracing::info!(peer = %remote_peer_id, "hole punching failed ({e}); the relay circuit stays in use")
                }
            },
            BehaviourEvent::Ping(ping::Event {
                peer,
                result: Ok(rtt),
                ..
            }) => {
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.rtt = Some(rtt);
                }
            }
            BehaviourEvent::Mdns(mdns::Event::Discovered(found)) => {
                // One dial per peer with all its addresses. Dialling each
                // (peer, address) pair apart made every dial after the first
                // fail the "not already dialling" condition, and when the
                // first was unusable (the peer's own 127.0.0.1, say) the
                // peer was lost until mDNS expired the address minutes later.
                let mut by_peer: HashMap<PeerId, Vec<Multiaddr>> = HashMap::new();
                for (peer, addr) in found {
                    by_peer.entry(peer).or_default().push(addr);
                }
                for peer in by_peer.keys() {
                    if self.lan_peers.len() < MAX_LAN_PEERS {
                        self.lan_peers.insert(*peer);
                    }
                }
                for (peer, mut addrs) in by_peer {
                    if self.swarm.is_connected(&peer) {
                        continue;
                    }
                    // Another host's loopback address is never the way to it.
                    addrs.retain(|a| !is_loopback(a));
                    if addrs.is_empty() {
                        continue;
                    }
                    let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer)
                        .addresses(addrs)
                        .build();
                    if let Err(e) = self.swarm.dial(opts) {
                        tracing::debug!(%peer, "cannot dial a peer found by mDNS: {e}");
                    }
                }
            }
            BehaviourEvent::Kademlia(kad::Event::RoutingUpdated {
                is_new_peer: true, ..
            }) => {
                // Rooms announced while the routing table was empty reached
                // nobody: announce them again now that there is someone.
                let now = Instant::now();
                if self
                    .last_announce
                    .is_none_or(|t| now.duration_since(t) >= ANNOUNCE_DEBOUNCE)
                {
                    self.last_announce = Some(now);
                    self.announce_rooms();
                }
            }
            BehaviourEvent::Kademlia(kad::Event::OutboundQueryProgressed {
                result:
                    kad::QueryResult::GetProviders(Ok(kad::GetProvidersOk::FoundProviders {
                        providers,
                        ..
                    })),
                ..
            }) => {
                let me = *self.swarm.local_peer_id();
                for peer in providers {
                    if self.peers.len() >= self.limits.dht_dial_below {
                        break;
                    }
                    if peer != me && !self.swarm.is_connected(&peer) {
                        // Kademlia supplies the addresses it learnt.
                        let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer).build();
                        if let Err(e) = self.swarm.dial(opts) {
                            tracing::debug!(%peer, "cannot dial a room peer found in the DHT: {e}");
                        }
                    }
                }
            }
            _ => {}
        }
    }

    fn on_relay_client(&mut self, event: relay::client::Event) {
        let (peer, life) = match event {
            relay::client::Event::ReservationReqAccepted {
                relay_peer_id,
                renewal,
                ..
            } => {
                if !renewal {
                    tracing::info!(relay = %relay_peer_id, "relay reservation accepted");
                }
                self.reach.on_reserved(relay_peer_id);
                return;
            }
            relay::client::Event::OutboundCircuitEstablished {
                relay_peer_id,
                limit,
            } => (relay_peer_id, limit.and_then(|l| l.duration())),
            relay::client::Event::InboundCircuitEstablished { src_peer_id, limit } => {
                (src_peer_id, limit.and_then(|l| l.duration()))
            }
        };
        if let Some(d) = life
            && (self.circuit_limits.contains_key(&peer)
                || self.circuit_limits.len() < MAX_CIRCUIT_LIMITS)
        {
            self.circuit_limits.insert(peer, d);
        }
    }

    fn report(&mut self, msg_id: &MessageId, source: &PeerId, acceptance: MessageAcceptance) {
        match acceptance {
            MessageAcceptance::Accept => self.stats.gossip_accepted += 1,
            MessageAcceptance::Reject => self.stats.gossip_rejected += 1,
            MessageAcceptance::Ignore => self.stats.gossip_ignored += 1,
        }
        self.swarm
            .behaviour_mut()
            .gossipsub
            .report_message_validation_result(msg_id, source, acceptance);
    }

    fn on_gossip(&mut self, source: PeerId, msg_id: MessageId, message: gossipsub::Message) {
        if let Some(room) = self.voice_topics.get(&message.topic).copied() {
            self.on_signal(room, source, msg_id, message);
            return;
        }
        let Some(holds) = self.topics.get(&message.topic).copied() else {
            self.report(&msg_id, &source, MessageAcceptance::Ignore);
            return;
        };
        if message.data.len() > MAX_RECORD_BYTES {
            self.report(&msg_id, &source, MessageAcceptance::Reject);
            return;
        }
        let record = match UnverifiedRecord::decode(&message.data) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(%source, "undecodable gossip: {e}");
                self.report(&msg_id, &source, MessageAcceptance::Reject);
                return;
            }
        };
        if Holds::of_record(record.record()) != holds {
            tracing::debug!(%source, "record gossiped on another room's topic");
            self.report(&msg_id, &source, MessageAcceptance::Reject);
            return;
        }
        let now = Instant::now();
        let author = record.record().author;
        if !self.peer_limit.allow(&source, now) || !self.author_limit.allow(&author, now) {
            self.stats.rate_limited += 1;
            self.report(&msg_id, &source, MessageAcceptance::Ignore);
            return;
        }
        let job = WriteJob::Gossip {
            msg_id,
            source,
            record: Box::new(record),
        };
        if let Err(mpsc::error::TrySendError::Full(job) | mpsc::error::TrySendError::Closed(job)) =
            self.writer.try_send(job)
        {
            self.stats.queue_full += 1;
            if let WriteJob::Gossip { msg_id, source, .. } = job {
                self.report(&msg_id, &source, MessageAcceptance::Ignore);
            }
        }
    }

    /// `signal` sealed under the newest key of invite-only `room` held
    /// here; an error (for the caller) without one.
    fn seal_signal(&mut self, room: &RoomId, signal: &[u8]) -> Result<Vec<u8>, String> {
        let key = self
            .store
            .room_key(room)
            .map_err(|e| format!("cannot read room {room}'s key: {e}"))?
            .ok_or_else(|| {
                format!("no key of invite-only room {room} here yet: wait for the owner's grant")
            })?;
        let me = *self.swarm.local_peer_id();
        if let Some(wire) = self.rooms.get_mut(room) {
            let now = Instant::now();
            wire.window
                .get_or_insert_with(|| crate::signal::EpochWindow::new(key.epoch(), now))
                .previous_open(key.epoch(), now);
        }
        crate::signal::seal_signal(&key, &me.to_bytes(), signal)
            .map_err(|e| format!("cannot seal a voice signal: {e}"))
    }

    /// The signal bytes of a sealed room's voice message, opened with the
    /// newest key held (or the one before, within the overlap), or the
    /// verdict for the message when it does not open.
    fn open_signal(
        &mut self,
        room: &RoomId,
        from: &PeerId,
        data: &[u8],
    ) -> Result<Vec<u8>, MessageAcceptance> {
        let Some(key) = self.store.room_key(room).ok().flatten() else {
            // No key here (yet): nothing to read, nobody's fault.
            return Err(MessageAcceptance::Ignore);
        };
        let now = Instant::now();
        let previous_too = match self.rooms.get_mut(room) {
            Some(wire) => wire
                .window
                .get_or_insert_with(|| crate::signal::EpochWindow::new(key.epoch(), now))
                .previous_open(key.epoch(), now),
            None => false,
        };
        match crate::signal::open_signal(&key, previous_too, &from.to_bytes(), data) {
            crate::signal::Opened::Signal(bytes) => Ok(bytes),
            crate::signal::Opened::OtherEpoch(epoch) => {
                tracing::debug!(%room, %from, epoch, held = key.epoch(), "a voice signal sealed under an epoch not opened here");
                Err(MessageAcceptance::Ignore)
            }
            crate::signal::Opened::Invalid => Err(MessageAcceptance::Reject),
        }
    }

    /// A voice signal: forwarded to the voice plane, and on to other peers,
    /// when it is small, signed, and its sender is within its rate. An
    /// invite-only room's signals are opened first (see [`crate::signal`]):
    /// one that does not open is not forwarded, and the voice plane sees
    /// only what opened.
    fn on_signal(
        &mut self,
        room: RoomId,
        source: PeerId,
        msg_id: MessageId,
        message: gossipsub::Message,
    ) {
        let Some(from) = message.source else {
            self.report(&msg_id, &source, MessageAcceptance::Reject);
            return;
        };
        let sealed = self.rooms.get(&room).is_some_and(|w| w.sealed);
        let limit = if sealed {
            MAX_SIGNAL_BYTES + crate::signal::SEALED_SIGNAL_OVERHEAD
        } else {
            MAX_SIGNAL_BYTES
        };
        if message.data.len() > limit {
            self.report(&msg_id, &source, MessageAcceptance::Reject);
            return;
        }
        if !self.peer_limit.allow(&source, Instant::now()) {
            self.stats.rate_limited += 1;
            self.report(&msg_id, &source, MessageAcceptance::Ignore);
            return;
        }
        let data = if sealed {
            match self.open_signal(&room, &from, &message.data) {
                Ok(data) => data,
                Err(verdict) => {
                    self.report(&msg_id, &source, verdict);
                    return;
                }
            }
        } else {
            message.data
        };
        let _ = self.signals.send(Signal { room, from, data });
        self.report(&msg_id, &source, MessageAcceptance::Accept);
    }

    fn on_internal(&mut self, msg: Internal) {
        match msg {
            Internal::Validated {
                msg_id,
                source,
                acceptance,
            } => self.report(&msg_id, &source, acceptance),
            Internal::SyncApplied {
                key,
                stored,
                rejected,
            } => {
                self.stats.synced_records += stored;
                self.stats.synced_rejected += rejected;
                if rejected > 0 {
                    // Rules are deterministic, so an honest peer never
                    // serves a record our store refuses: stop fetching
                    // from this one, and tell gossipsub's scoring.
                    tracing::warn!(peer = %key.0, rejected, "sync peer served invalid records; session ended");
                    self.sessions.remove(&key);
                    self.penalise(key.0, "served records the rules refuse");
                }
                if let Some(n) = self.applying.get_mut(&key) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        self.applying.remove(&key);
                    }
                }
                self.drive(key);
            }
            Internal::SessionReady { key, session } => {
                self.starting.remove(&key);
                match session {
                    Some(s) if self.peers.contains_key(&key.0) => {
                        self.stats.syncs_started += 1;
                        self.sessions.insert(key, *s);
                        self.drive(key);
                    }
                    _ => self.start_queued(),
                }
            }
            Internal::DirectoryAnswer { channel, response } => {
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .directory
                    .send_response(channel, response);
            }
            Internal::Answer {
                peer,
                channel,
                response,
            } => {
                self.inbound.release(&peer);
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .sync
                    .send_response(channel, response);
            }
        }
    }

    /// Asks for a sync of `scope` with `peer`, now or when a slot frees.
    fn request_sync(&mut self, peer: PeerId, scope: Scope) {
        let key = (peer, scope);
        if self.sessions.contains_key(&key) || self.starting.contains(&key) {
            return;
        }
        if self.sessions.len() + self.starting.len() >= self.limits.max_sessions {
            if !self.queued.contains(&key) {
                if self.queued.len() >= self.limits.max_queued_syncs {
                    self.stats.syncs_dropped += 1;
                } else {
                    self.queued.push_back(key);
                }
            }
            return;
        }
        self.starting.insert(key);
        let store = self.store.clone();
        let tx = self.internal_tx.clone();
        let cfg = self.reconcile.clone();
        tokio::spawn(async move {
            let listed = tokio::task::spawn_blocking(move || list_items(&store, scope, None)).await;
            let session = match listed {
                Ok(Ok(items)) => Some(Box::new(Session::new(scope, items, &cfg))),
                Ok(Err(e)) => {
                    tracing::warn!("cannot list records for sync: {e}");
                    None
                }
                Err(_) => None,
            };
            let _ = tx.send(Internal::SessionReady { key, session }).await;
        });
    }

    fn start_queued(&mut self) {
        while self.sessions.len() + self.starting.len() < self.limits.max_sessions {
            let Some(key) = self.queued.pop_front() else {
                break;
            };
            if self.peers.contains_key(&key.0) {
                self.request_sync(key.0, key.1);
            }
        }
    }

    /// Sends the session's next request, or ends it.
    fn drive(&mut self, key: SessionKey) {
        if self.applying.get(&key).is_some_and(|n| *n >= 2) {
            return;
        }
        let Some(session) = self.sessions.get_mut(&key) else {
            return;
        };
        if session.is_awaiting() {
            return;
        }
        match session.poll_request() {
            Some(req) => {
                let id = self.swarm.behaviour_mut().sync.send_request(&key.0, req);
                self.inflight.insert(id, key);
            }
            None => {
                if let Some(s) = self.sessions.remove(&key) {
                    let st = s.stats();
                    tracing::debug!(peer = %key.0, scope = ?key.1, ?st, "sync session ended");
                    self.stats.syncs_completed += 1;
                }
                self.start_queued();
            }
        }
    }

    fn on_sync_event(&mut self, event: request_response::Event<SyncRequest, SyncResponse>) {
        match event {
            request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
                ..
            } => self.answer(peer, request, channel),
            request_response::Event::Message {
                message:
                    request_response::Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                let Some(key) = self.inflight.remove(&request_id) else {
                    return;
                };
                let Some(session) = self.sessions.get_mut(&key) else {
                    return;
                };
                let decoded = session.handle_response(response, |bytes| {
                    let record = UnverifiedRecord::decode(&bytes).ok()?;
                    Some((record.id(), record))
                });
                match decoded {
                    Ok(records) if !records.is_empty() => {
                        let (records, over_budget) = self.within_sync_budget(key.0, records);
                        if over_budget {
                            // Our budget, not the peer's fault: take what
                            // fits, end the session; the next sync goes on.
                            self.stats.sync_over_budget += 1;
                            if let Some(s) = self.sessions.get_mut(&key) {
                                s.request_failed();
                            }
                        }
                        if records.is_empty() {
                            self.drive(key);
                            return;
                        }
                        match self.writer.try_send(WriteJob::Sync { key, records }) {
                            Ok(()) => {
                                *self.applying.entry(key).or_insert(0) += 1;
                                self.drive(key);
                            }
                            Err(_) => {
                                self.stats.queue_full += 1;
                                self.sessions.remove(&key);
                                self.start_queued();
                            }
                        }
                    }
                    Ok(_) => self.drive(key),
                    Err(e) if e.is_misbehaviour() => {
                        tracing::info!(peer = %key.0, "sync peer broke the protocol, session ended: {e}");
                        self.sessions.remove(&key);
                        self.penalise(key.0, "broke the sync protocol");
                        self.start_queued();
                    }
                    Err(e) => {
                        tracing::debug!(peer = %key.0, "sync: {e}");
                        self.drive(key);
                    }
                }
            }
            request_response::Event::OutboundFailure {
                request_id, error, ..
            } => {
                if let Some(key) = self.inflight.remove(&request_id) {
                    tracing::debug!(peer = %key.0, "sync request failed: {error}");
                    self.sessions.remove(&key);
                    self.start_queued();
                }
            }
            _ => {}
        }
    }

    /// The records of a sync answer that fit the serving peer's and each
    /// author's sync budget, in order, and whether any did not.
    fn within_sync_budget(
        &mut self,
        peer: PeerId,
        records: Vec<UnverifiedRecord>,
    ) -> (Vec<UnverifiedRecord>, bool) {
        let now = Instant::now();
        let mut out = Vec::with_capacity(records.len());
        for r in records {
            let author = r.record().author;
            if !self.sync_peer_limit.allow(&peer, now)
                || !self.sync_author_limit.allow(&author, now)
            {
                return (out, true);
            }
            out.push(r);
        }
        (out, false)
    }

    /// Counts a protocol violation by `peer` and lowers its gossipsub
    /// application score, so a liar loses its mesh slots and, after a few,
    /// is graylisted like a peer that gossips invalid records.
    fn penalise(&mut self, peer: PeerId, why: &'static str) {
        self.stats.sync_lies += 1;
        if !self.offences.contains_key(&peer) && self.offences.len() >= MAX_TRACKED_OFFENDERS {
            // Forget a peer that is no longer connected first.
            let gone = self
                .offences
                .keys()
                .find(|p| !self.peers.contains_key(p))
                .copied();
            match gone {
                Some(p) => {
                    self.offences.remove(&p);
                }
                None => return,
            }
        }
        let n = self.offences.entry(peer).or_insert(0);
        *n = n.saturating_add(1);
        let score = -f64::from(*n) * SCORE_PER_OFFENCE;
        tracing::debug!(%peer, offences = *n, score, why, "peer penalised");
        self.swarm
            .behaviour_mut()
            .gossipsub
            .set_application_score(&peer, score);
    }

    fn answer(
        &mut self,
        peer: PeerId,
        request: SyncRequest,
        channel: ResponseChannel<SyncResponse>,
    ) {
        if !self.inbound.try_take(&peer) {
            self.stats.sync_refused_busy += 1;
            let _ = self.swarm.behaviour_mut().sync.send_response(
                channel,
                SyncResponse::Refused {
                    reason: "busy; try again later".into(),
                },
            );
            return;
        }
        tracing::trace!(%peer, "answering a sync request");
        let store = self.store.clone();
        let cfg = self.reconcile.clone();
        let tx = self.internal_tx.clone();
        tokio::spawn(async move {
            let response =
                tokio::task::spawn_blocking(move || answer_request(&store, &peer, request, &cfg))
                    .await
                    .unwrap_or_else(|e| SyncResponse::Refused {
                        reason: format!("internal error: {e}"),
                    });
            let _ = tx
                .send(Internal::Answer {
                    peer,
                    channel,
                    response,
                })
                .await;
        });
    }
}

/// The open rooms of `followed` this node holds, for a directory answer.
fn directory_answer(store: &Store, followed: &[RoomId]) -> DirectoryResponse {
    let mut entries = Vec::new();
    for room in followed {
        if entries.len() >= MAX_DIRECTORY_ROOMS {
            break;
        }
        let Ok(Some(view)) = store.room(room) else {
            continue;
        };
        if view.room.settings.join_policy != tincan_core::JoinPolicy::Open {
            continue;
        }
        let Ok(Some(record)) = store.record(&view.record) else {
            continue;
        };
        let owner_profile = store
            .profile(&view.owner)
            .ok()
            .flatten()
            .and_then(|p| store.record(&p.record).ok().flatten())
            .map(|r| r.to_bytes());
        let members = store
            .members(room)
            .map(|m| m.iter().filter(|m| m.membership.is_member()).count() as u32)
            .unwrap_or(0);
        entries.push(DirectoryEntry {
            room: record.to_bytes(),
            owner_profile,
            members,
        });
    }
    DirectoryResponse::Rooms(entries)
}

/// A directory entry checked: a Room record signed by its owner, and the
/// owner's own profile if there is one.
fn nearby_room(e: &DirectoryEntry, via: PeerId) -> Option<NearbyRoom> {
    let record = SignedRecord::from_bytes(&e.room).ok()?;
    let tincan_core::Body::Room(room) = &record.record().body else {
        return None;
    };
    if tincan_core::rules::check_standalone(record.record()).is_err() {
        return None;
    }
    let owner = record.record().author;
    let owner_name = e
        .owner_profile
        .as_ref()
        .and_then(|b| SignedRecord::from_bytes(b).ok())
        .and_then(|p| match &p.record().body {
            tincan_core::Body::Profile(profile) if p.record().author == owner => {
                Some(profile.username.clone())
            }
            _ => None,
        });
    Some(NearbyRoom {
        id: record.record().room()?,
        title: room.title.clone(),
        owner,
        owner_name,
        members: e.members,
        via: vec![via],
    })
}

/// The items of `scope` (for `requester`, or our own listing with `None`):
/// empty where [`resolve_scope`] serves nothing.
fn list_items(
    store: &Store,
    scope: Scope,
    requester: Option<&PeerId>,
) -> Result<Vec<SyncItem>, tincan_store::StorageError> {
    let raw = match resolve_scope(store, scope, requester)? {
        None => Vec::new(),
        Some(Holds::Room(room)) => store.room_sync_items(&room)?,
        Some(Holds::Profiles) => store.profile_sync_items()?,
    };
    Ok(raw
        .into_iter()
        .map(|(rank, id)| SyncItem { rank, id })
        .collect())
}

fn answer_request(
    store: &Store,
    peer: &PeerId,
    request: SyncRequest,
    cfg: &ReconcileConfig,
) -> SyncResponse {
    match request {
        SyncRequest::Reconcile { scope, ranges } => {
            let items = match list_items(store, scope, Some(peer)) {
                Ok(i) => i,
                Err(e) => {
                    return SyncResponse::Refused {
                        reason: format!("store failure: {e}"),
                    };
                }
            };
            match reconcile::respond(&items, &ranges, cfg) {
                Ok(ranges) => SyncResponse::Reconcile { ranges },
                Err(e) => SyncResponse::Refused {
                    reason: e.to_string(),
                },
            }
        }
        SyncRequest::Fetch { scope, ids } => {
            let holds = match resolve_scope(store, scope, Some(peer)) {
                Ok(Some(h)) => h,
                Ok(None) => {
                    return SyncResponse::Records {
                        served: 0,
                        records: Vec::new(),
                    };
                }
                Err(e) => {
                    return SyncResponse::Refused {
                        reason: format!("store failure: {e}"),
                    };
                }
            };
            let n = ids.len().min(cfg.max_fetch_ids.max(1));
            match store.record_bytes(&ids[..n], cfg.max_fetch_response_bytes) {
                // Only what belongs to the scope asked about: a fetch never
                // reaches records of other rooms by their ids.
                Ok(found) => SyncResponse::Records {
                    served: found.len() as u32,
                    records: found
                        .into_iter()
                        .flatten()
                        .filter(|bytes| {
                            UnverifiedRecord::decode(bytes).is_ok_and(|u| holds.admits(u.record()))
                        })
                        .collect(),
                },
                Err(e) => SyncResponse::Refused {
                    reason: format!("store failure: {e}"),
                },
            }
        }
    }
}

/// The store writer: takes jobs from the queue, as many as are waiting (up
/// to `max_batch` records), and applies them in one transaction.
async fn writer(
    store: Arc<Store>,
    mut jobs: mpsc::Receiver<WriteJob>,
    out: mpsc::Sender<Internal>,
    max_batch: usize,
) {
    while let Some(first) = jobs.recv().await {
        let mut batch = vec![first];
        let mut size = job_size(&batch[0]);
        while size < max_batch {
            match jobs.try_recv() {
                Ok(j) => {
                    size += job_size(&j);
                    batch.push(j);
                }
                Err(_) => break,
            }
        }
        let store = store.clone();
        let results = match tokio::task::spawn_blocking(move || apply_jobs(&store, batch)).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("store writer failed: {e}");
                continue;
            }
        };
        for r in results {
            if out.send(r).await.is_err() {
                return;
            }
        }
    }
}

fn job_size(job: &WriteJob) -> usize {
    match job {
        WriteJob::Gossip { .. } => 1,
        WriteJob::Sync { records, .. } => records.len(),
    }
}

enum Slot {
    Gossip {
        msg_id: MessageId,
        source: PeerId,
        index: Option<usize>,
    },
    Sync {
        key: SessionKey,
        indexes: std::ops::Range<usize>,
        refused: u64,
    },
}

fn apply_jobs(store: &Store, jobs: Vec<WriteJob>) -> Vec<Internal> {
    let mut records: Vec<SignedRecord> = Vec::new();
    let mut slots = Vec::with_capacity(jobs.len());
    for job in jobs {
        match job {
            WriteJob::Gossip {
                msg_id,
                source,
                record,
            } => {
                let index = match record.verify() {
                    Ok(r) => {
                        records.push(r);
                        Some(records.len() - 1)
                    }
                    Err(_) => None,
                };
                slots.push(Slot::Gossip {
                    msg_id,
                    source,
                    index,
                });
            }
            WriteJob::Sync { key, records: raw } => {
                let mut refused = 0u64;
                let mut decoded = Vec::with_capacity(raw.len());
                let holds = resolve_scope(store, key.1, None).ok().flatten();
                for u in raw {
                    if holds.is_some_and(|h| h.admits(u.record())) {
                        decoded.push(u);
                    } else {
                        refused += 1;
                    }
                }
                let start = records.len();
                for v in tincan_core::record::verify_batch(decoded, 2) {
                    match v {
                        Ok(r) => records.push(r),
                        Err(_) => refused += 1,
                    }
                }
                slots.push(Slot::Sync {
                    key,
                    indexes: start..records.len(),
                    refused,
                });
            }
        }
    }
    let outcomes = match store.apply_batch(records) {
        Ok(o) => Some(o),
        Err(e) => {
            tracing::error!("store failure while applying received records: {e}");
            None
        }
    };
    slots
        .into_iter()
        .map(|slot| match slot {
            Slot::Gossip {
                msg_id,
                source,
                index,
            } => {
                let acceptance = match index {
                    None => MessageAcceptance::Reject,
                    Some(i) => match outcomes.as_ref().and_then(|o| o.get(i)) {
                        None => MessageAcceptance::Ignore,
                        Some(Err(_)) => MessageAcceptance::Reject,
                        Some(Ok(Applied::Duplicate | Applied::Superseded)) => {
                            MessageAcceptance::Ignore
                        }
                        Some(Ok(_)) => MessageAcceptance::Accept,
                    },
                };
                Internal::Validated {
                    msg_id,
                    source,
                    acceptance,
                }
            }
            Slot::Sync {
                key,
                indexes,
                mut refused,
            } => {
                let mut stored = 0;
                if let Some(o) = outcomes.as_ref() {
                    for i in indexes {
                        match o.get(i) {
                            Some(Ok(Applied::Duplicate | Applied::Superseded)) | None => {}
                            Some(Ok(_)) => stored += 1,
                            Some(Err(_)) => refused += 1,
                        }
                    }
                }
                Internal::SyncApplied {
                    key,
                    stored,
                    rejected: refused,
                }
            }
        })
        .collect()
}
