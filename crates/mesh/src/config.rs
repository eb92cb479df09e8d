//! Configuration of a mesh node.

use std::time::Duration;

use libp2p::Multiaddr;

use crate::rate::Rate;
use crate::reach::ReachConfig;
use crate::reconcile::ReconcileConfig;

/// How a mesh node starts. [`MeshConfig::new`] gives the defaults for a
/// player's node; bootstrap nodes set [`MeshConfig::kademlia_server`] and
/// [`MeshConfig::relay_server`].
#[derive(Clone)]
pub struct MeshConfig {
    /// The node key's seed (`tincan_core::NodeKey::seed()`): it gives the
    /// libp2p keypair and so the PeerId.
    pub node_key_seed: [u8; 32],
    /// Addresses to listen on, e.g. `/ip4/0.0.0.0/udp/0/quic-v1` and
    /// `/ip4/0.0.0.0/tcp/0`. An IPv6 address the host cannot listen on (no
    /// IPv6) is skipped with a log line; any other failure stops the start.
    pub listen_addrs: Vec<Multiaddr>,
    /// Bootstrap peers, each with its `/p2p/<peer id>`: dialled at start and
    /// seeded into Kademlia.
    pub bootstrap_peers: Vec<Multiaddr>,
    /// Relays to listen through (`/.../p2p/<relay id>`), for nodes behind NAT.
    pub relays: Vec<Multiaddr>,
    /// Addresses at which others can reach this node (a public IP, a port
    /// forward): announced by identify and in Kademlia provider records.
    pub external_addrs: Vec<Multiaddr>,
    /// Announce every listen address as reachable: right on a LAN, on
    /// loopback and on a server with a public IP; wrong behind NAT (AutoNAT
    /// finds those addresses instead).
    pub advertise_listen_addrs: bool,
    /// Find peers on the LAN by mDNS.
    pub mdns: bool,
    /// Ask the home router (UPnP-IGD) to forward the node's listen ports,
    /// and announce the mapped addresses, so peers outside reach it
    /// directly instead of through a relay. Off for servers and loopback.
    pub port_mapping: bool,
    /// Answer Kademlia queries (bootstrap nodes); others stay clients until
    /// AutoNAT confirms a public address.
    pub kademlia_server: bool,
    /// Serve as a libp2p relay v2 (bootstrap nodes).
    pub relay_server: bool,
    /// Limits of the relay server: it carries signalling and hole-punch
    /// coordination, never voice, so circuits are short and small.
    pub relay_limits: RelayLimits,
    /// How often each subscribed room is synced with a few peers, beside the
    /// syncs on connect and on subscribe.
    pub sync_interval: Duration,
    /// Peers picked per scope at each periodic sync.
    pub sync_peers_per_round: usize,
    /// gossipsub heartbeat (mesh upkeep, gossip of message ids).
    pub gossip_heartbeat: Duration,
    /// Connections without traffic close after this.
    pub idle_connection_timeout: Duration,
    /// Reconciliation bounds.
    pub reconcile: ReconcileConfig,
    /// Timing of bootstrap redials, relay reservations and circuit
    /// refreshes.
    pub reach: ReachConfig,
    /// Rate limits and queue bounds.
    pub limits: Limits,
    /// Agent string sent by identify.
    pub agent: String,
    /// For in-process harnesses only: TCP without QUIC, DNS or relay
    /// transports, and every byte received held back this long (an emulated
    /// link latency, see [`crate::delay`]). Never set in a real node.
    #[doc(hidden)]
    pub emulated_link_delay: Option<Duration>,
}

impl MeshConfig {
    /// Defaults for a player's node with this node key seed, listening on
    /// QUIC and TCP on every IPv4 and IPv6 interface, mDNS and port mapping
    /// on.
    pub fn new(node_key_seed: [u8; 32]) -> Self {
        MeshConfig {
            node_key_seed,
            listen_addrs: vec![
                "/ip4/0.0.0.0/udp/0/quic-v1".parse().expect("valid literal"),
                "/ip4/0.0.0.0/tcp/0".parse().expect("valid literal"),
                "/ip6/::/udp/0/quic-v1".parse().expect("valid literal"),
                "/ip6/::/tcp/0".parse().expect("valid literal"),
            ],
            bootstrap_peers: Vec::new(),
            relays: Vec::new(),
            external_addrs: Vec::new(),
            advertise_listen_addrs: false,
            mdns: true,
            port_mapping: true,
            kademlia_server: false,
            relay_server: false,
            relay_limits: RelayLimits::default(),
            sync_interval: Duration::from_secs(30),
            sync_peers_per_round: 2,
            gossip_heartbeat: Duration::from_secs(1),
            idle_connection_timeout: Duration::from_secs(120),
            reconcile: ReconcileConfig::default(),
            reach: ReachConfig::default(),
            limits: Limits::default(),
            agent: format!("tincan/{}", env!("CARGO_PKG_VERSION")),
            emulated_link_delay: None,
        }
    }

    /// For tests and in-process harnesses: TCP on 127.0.0.1 with a free
    /// port announced as reachable, no mDNS, a fast heartbeat.
    pub fn loopback(node_key_seed: [u8; 32]) -> Self {
        MeshConfig {
            listen_addrs: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("valid literal")],
            mdns: false,
            port_mapping: false,
            advertise_listen_addrs: true,
            gossip_heartbeat: Duration::from_millis(200),
            ..MeshConfig::new(node_key_seed)
        }
    }
}

impl std::fmt::Debug for MeshConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Everything but the secret seed.
        f.debug_struct("MeshConfig")
            .field("listen_addrs", &self.listen_addrs)
            .field("bootstrap_peers", &self.bootstrap_peers)
            .field("relays", &self.relays)
            .field("external_addrs", &self.external_addrs)
            .field("advertise_listen_addrs", &self.advertise_listen_addrs)
            .field("mdns", &self.mdns)
            .field("port_mapping", &self.port_mapping)
            .field("kademlia_server", &self.kademlia_server)
            .field("relay_server", &self.relay_server)
            .field("sync_interval", &self.sync_interval)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// Bounds on what a node accepts and queues. Every limit says what happens
/// when it is reached.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Gossip records accepted from one peer (the one that forwarded them to
    /// us); past it messages are ignored (not forwarded, not stored, no
    /// penalty) and counted in [`crate::MeshStats::rate_limited`].
    pub per_peer: Rate,
    /// Gossip records accepted by one author, whoever forwards them; past it
    /// as above.
    pub per_author: Rate,
    /// Authors tracked by the per-author limit; past it the least recently
    /// seen is forgotten.
    pub max_tracked_authors: usize,
    /// Records received by catch-up sync from one peer; past it the rest of
    /// an answer is dropped and the session ends (counted in
    /// [`crate::MeshStats::sync_over_budget`]; no penalty: the next sync
    /// goes on). Larger than gossip's: a late joiner pulls a room at once.
    pub sync_per_peer: Rate,
    /// Records received by catch-up sync by one author, whoever serves
    /// them; past it as above.
    pub sync_per_author: Rate,
    /// Jobs waiting for the store writer; past it gossip is ignored and
    /// counted in [`crate::MeshStats::queue_full`], and a sync batch ends its
    /// session (the next sync fetches it again).
    pub apply_queue: usize,
    /// Records applied in one transaction by the writer (group commit).
    pub max_apply_batch: usize,
    /// Outbound sync sessions at once; more wait in a queue of
    /// [`Limits::max_queued_syncs`], past which they are dropped and counted
    /// (the periodic sync tries again).
    pub max_sessions: usize,
    /// Sync sessions waiting to start.
    pub max_queued_syncs: usize,
    /// Inbound sync requests being answered at once; more are refused
    /// ("busy") and the peer tries later.
    pub max_inbound_syncs: usize,
    /// Inbound sync requests of one peer answered at once, so that one
    /// peer holds at most half the slots; more are refused ("busy").
    pub max_inbound_syncs_per_peer: usize,
    /// Rooms a node subscribes to; past it `subscribe_room` fails.
    pub max_rooms: usize,
    /// Connections at once (in and out); past it new ones are refused.
    pub max_connections: u32,
    /// Room peers found in the DHT are dialled only while fewer peers than
    /// this are connected: gossip and sync need a connected mesh, not a
    /// connection to everyone.
    pub dht_dial_below: usize,
    /// Commands from the handle waiting for the node's task.
    pub command_queue: usize,
    /// How long an outbound sync request may take.
    pub sync_request_timeout: Duration,
}

/// What a relay server allows. At each limit a new reservation or circuit
/// is refused (the peer is told so); a circuit past its duration or byte
/// budget is closed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayLimits {
    /// Peers that may hold a reservation at once.
    pub max_reservations: usize,
    /// Reservations one peer may hold.
    pub max_reservations_per_peer: usize,
    /// How long a reservation lasts before it must be renewed.
    pub reservation_duration: Duration,
    /// Circuits relayed at once.
    pub max_circuits: usize,
    /// Circuits at once to or from one peer.
    pub max_circuits_per_peer: usize,
    /// Longest life of a circuit.
    pub max_circuit_duration: Duration,
    /// Most bytes a circuit carries each way.
    pub max_circuit_bytes: u64,
}

impl Default for RelayLimits {
    /// libp2p relay v2's defaults: enough for signalling and for DCUtR.
    fn default() -> Self {
        RelayLimits {
            max_reservations: 128,
            max_reservations_per_peer: 4,
            reservation_duration: Duration::from_secs(60 * 60),
            max_circuits: 16,
            max_circuits_per_peer: 4,
            max_circuit_duration: Duration::from_secs(2 * 60),
            max_circuit_bytes: 1 << 17,
        }
    }
}

impl RelayLimits {
    /// libp2p's relay configuration with these limits (and its default
    /// per-IP and per-peer rate limiters).
    pub fn to_relay_config(&self) -> libp2p::relay::Config {
        libp2p::relay::Config {
            max_reservations: self.max_reservations,
            max_reservations_per_peer: self.max_reservations_per_peer,
            reservation_duration: self.reservation_duration,
            max_circuits: self.max_circuits,
            max_circuits_per_peer: self.max_circuits_per_peer,
            max_circuit_duration: self.max_circuit_duration,
            max_circuit_bytes: self.max_circuit_bytes,
            ..libp2p::relay::Config::default()
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            per_peer: Rate {
                per_second: 200.0,
                burst: 1000.0,
            },
            per_author: Rate {
                per_second: 50.0,
                burst: 500.0,
            },
            max_tracked_authors: 10_000,
            // A late joiner's catch-up of a 10,000-record room fits the
            // burst; a steady 2,000 a second is far above any real room.
            sync_per_peer: Rate {
                per_second: 5_000.0,
                burst: 50_000.0,
            },
            sync_per_author: Rate {
                per_second: 2_000.0,
                burst: 20_000.0,
            },
            apply_queue: 1024,
            max_apply_batch: 4096,
            max_sessions: 64,
            max_queued_syncs: 1024,
            max_inbound_syncs: 16,
            max_inbound_syncs_per_peer: 8,
            max_rooms: 1024,
            max_connections: 256,
            dht_dial_below: 24,
            command_queue: 256,
            sync_request_timeout: Duration::from_secs(20),
        }
    }
}
