//! `tincan-bootstrap`: what a community operator runs on a server with a
//! public address so that players' nodes find each other beyond the LAN.
//!
//! It is a mesh node without a user: Kademlia in server mode (nodes announce
//! the rooms they follow as provider records and look each other up), a
//! libp2p relay v2 server (so nodes behind NAT can be reached for
//! signalling, and DCUtR can punch through), identify and AutoNAT. Its node
//! key persists in a file, so its address stays valid across restarts.
//!
//! It also runs the community voice relay ([`voice_relay`]), on by default:
//! a bootstrap node is the one server a community already runs with a
//! public address, and players behind NATs that cannot be punched (symmetric
//! NAT, carrier-grade NAT) have no other way to talk. Each relayed player
//! costs the operator about one upload and one download per listener
//! (roughly 50 kbit/s each way at 10 ms frames), capped per connection;
//! set `[voice_relay] enabled = false` to turn it off.
//!
//! A library with a thin `main.rs`, so tests start it in-process with
//! [`Bootstrap::start`].

pub mod voice_relay;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;
use tincan_core::NodeKey;
use tincan_mesh::{Mesh, MeshConfig, Multiaddr, PeerId};
use tincan_store::{Store, StoreConfig};

/// The TOML configuration (see `deploy/bootstrap.toml`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the node key lives (created, mode 0600, if missing).
    pub key_file: PathBuf,
    /// Addresses to listen on.
    #[serde(default = "default_listen")]
    pub listen: Vec<String>,
    /// Public addresses to announce (e.g. `/ip4/203.0.113.7/udp/4001/quic-v1`);
    /// needed behind a port forward, optional with a public IP.
    #[serde(default)]
    pub external_addresses: Vec<String>,
    /// Announce the listen addresses as reachable (right for a server with a
    /// public IP or on a LAN).
    #[serde(default = "yes")]
    pub advertise_listen_addresses: bool,
    /// Serve as a libp2p relay v2 (signalling for nodes behind NAT).
    #[serde(default = "yes")]
    pub relay: bool,
    /// Other bootstrap nodes to peer with.
    #[serde(default)]
    pub peers: Vec<String>,
    /// Limits of the relay (each key optional; libp2p's defaults otherwise).
    #[serde(default)]
    pub relay_limits: RelayLimitsConfig,
    /// The voice relay (on by default, on UDP 0.0.0.0:4434).
    #[serde(default)]
    pub voice_relay: voice_relay::VoiceRelayConfig,
    /// Prometheus metrics (on by default, on 127.0.0.1:9464).
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// PeerIds this node refuses: their mesh connections are closed and
    /// refused, and the voice relay drops theirs.
    #[serde(default)]
    pub blocked_peers: Vec<String>,
}

/// `[metrics]` in the configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Serve them (default: yes).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Where (default 127.0.0.1:9464: the server itself only; put a reverse
    /// proxy or an SSH tunnel in front to scrape from elsewhere). A port
    /// set here that cannot be bound stops the node; the default, taken by
    /// something else, only costs the metrics (a warning says so).
    pub listen: Option<std::net::SocketAddr>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            listen: None,
        }
    }
}

/// Where metrics are served unless the configuration says otherwise.
pub const DEFAULT_METRICS_LISTEN: std::net::SocketAddr =
    std::net::SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9464);

/// `[relay_limits]` in the configuration.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayLimitsConfig {
    /// Peers that may hold a reservation at once.
    pub max_reservations: Option<usize>,
    /// Reservations one peer may hold.
    pub max_reservations_per_peer: Option<usize>,
    /// Seconds a reservation lasts before it must be renewed.
    pub reservation_duration_secs: Option<u64>,
    /// Circuits relayed at once.
    pub max_circuits: Option<usize>,
    /// Circuits at once to or from one peer.
    pub max_circuits_per_peer: Option<usize>,
    /// Longest life of a circuit, in seconds.
    pub max_circuit_duration_secs: Option<u64>,
    /// Most bytes a circuit carries each way.
    pub max_circuit_bytes: Option<u64>,
}

impl RelayLimitsConfig {
    /// The limits, with libp2p's defaults for what is not set.
    pub fn limits(&self) -> tincan_mesh::RelayLimits {
        let d = tincan_mesh::RelayLimits::default();
        let secs = std::time::Duration::from_secs;
        tincan_mesh::RelayLimits {
            max_reservations: self.max_reservations.unwrap_or(d.max_reservations),
            max_reservations_per_peer: self
                .max_reservations_per_peer
                .unwrap_or(d.max_reservations_per_peer),
            reservation_duration: self
                .reservation_duration_secs
                .map(secs)
                .unwrap_or(d.reservation_duration),
            max_circuits: self.max_circuits.unwrap_or(d.max_circuits),
            max_circuits_per_peer: self
                .max_circuits_per_peer
                .unwrap_or(d.max_circuits_per_peer),
            max_circuit_duration: self
                .max_circuit_duration_secs
                .map(secs)
                .unwrap_or(d.max_circuit_duration),
            max_circuit_bytes: self.max_circuit_bytes.unwrap_or(d.max_circuit_bytes),
        }
    }
}

fn default_listen() -> Vec<String> {
    vec![
        "/ip4/0.0.0.0/udp/4001/quic-v1".into(),
        "/ip4/0.0.0.0/tcp/4001".into(),
    ]
}

fn yes() -> bool {
    true
}

impl Config {
    /// Reads and checks a TOML file.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let config: Config = toml::from_str(&text)
            .with_context(|| format!("{} is not a valid configuration", path.display()))?;
        config.mesh_addrs()?;
        config.voice_relay.settings()?;
        config.blocked()?;
        Ok(config)
    }

    fn blocked(&self) -> Result<Vec<PeerId>> {
        self.blocked_peers
            .iter()
            .map(|p| {
                p.parse()
                    .map_err(|e| anyhow!("blocked_peers: {p:?} is not a PeerId ({e}): copy it from the node's log or `tincan id`"))
            })
            .collect()
    }

    fn mesh_addrs(&self) -> Result<(Vec<Multiaddr>, Vec<Multiaddr>, Vec<Multiaddr>)> {
        let parse = |what: &str, list: &[String]| -> Result<Vec<Multiaddr>> {
            list.iter()
                .map(|a| {
                    a.parse()
                        .map_err(|e| anyhow!("{what}: {a:?} is not a multiaddr: {e}"))
                })
                .collect()
        };
        Ok((
            parse("listen", &self.listen)?,
            parse("external_addresses", &self.external_addresses)?,
            parse("peers", &self.peers)?,
        ))
    }
}

/// Loads the node key's seed from `path`, or creates it there.
pub fn load_or_create_key(path: &Path) -> Result<NodeKey> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let mut seed = [0u8; 32];
            hex::decode_to_slice(text.trim(), &mut seed)
                .map_err(|_| anyhow!("{} is not a node key (64 hex digits): restore it, or delete it to get a new identity", path.display()))?;
            Ok(NodeKey::from_seed(&seed))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = NodeKey::generate()?;
            if let Some(dir) = path.parent()
                && !dir.as_os_str().is_empty()
            {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
            }
            tincan_store::datadir::write_atomic(path, hex::encode(*key.seed()).as_bytes())?;
            tracing::info!(path = %path.display(), "created a new node key");
            Ok(key)
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// A running bootstrap node.
pub struct Bootstrap {
    mesh: Mesh,
    /// Where metrics are served, if they are.
    metrics_addr: Option<std::net::SocketAddr>,
    metrics_task: Option<tokio::task::JoinHandle<()>>,
    /// How many listen addresses were configured.
    listening: usize,
    voice: Option<voice_relay::VoiceRelay>,
}

impl Bootstrap {
    /// Starts it on the current tokio runtime.
    pub async fn start(config: &Config) -> Result<Bootstrap> {
        let key = load_or_create_key(&config.key_file)?;
        let (listen, external, peers) = config.mesh_addrs()?;
        let mut voice_settings = config.voice_relay.settings()?;
        let blocked = config.blocked()?;
        if let Some(v) = voice_settings.as_mut() {
            v.blocked = blocked.iter().copied().collect();
        }
        if listen.is_empty() {
            bail!("no listen address: set `listen` in the configuration");
        }
        let listening = listen.len();
        let mut mesh_config = MeshConfig::new(*key.seed());
        mesh_config.listen_addrs = listen;
        mesh_config.external_addrs = external;
        mesh_config.bootstrap_peers = peers;
        mesh_config.advertise_listen_addrs = config.advertise_listen_addresses;
        mesh_config.kademlia_server = true;
        mesh_config.relay_server = config.relay;
        mesh_config.relay_limits = config.relay_limits.limits();
        // A server has no LAN of players to find.
        mesh_config.mdns = false;
        // A server's ports are opened by its operator, not asked of a router.
        mesh_config.port_mapping = false;
        mesh_config.agent = format!("tincan-bootstrap/{}", env!("CARGO_PKG_VERSION"));
        // It keeps no rooms: profiles it relays live in memory only.
        let store = Arc::new(Store::in_memory(StoreConfig::default())?);
        // The voice relay first: a port already in use fails before the
        // mesh has started anything.
        let voice = voice_settings
            .map(|settings| voice_relay::VoiceRelay::start(*key.seed(), settings))
            .transpose()?;
        let mut registry = tincan_mesh::metrics::Registry::default();
        if let Some(v) = &voice {
            let read = v.stats_reader();
            registry.register_collector(Box::new(tincan_mesh::metrics::Snapshot::new(move || {
                voice_metric_samples(&read())
            })));
        }
        let mesh = Mesh::start_with_registry(mesh_config, store, registry)
            .await
            .context("cannot start the mesh")?;
        for peer in &blocked {
            mesh.set_blocked(*peer, true).await?;
        }
        let listener = match (config.metrics.enabled, config.metrics.listen) {
            (false, _) => None,
            (true, Some(at)) => {
                Some(tokio::net::TcpListener::bind(at).await.with_context(|| {
                    format!(
                        "cannot serve metrics on {at} (set [metrics] listen, or enabled = false)"
                    )
                })?)
            }
            (true, None) => match tokio::net::TcpListener::bind(DEFAULT_METRICS_LISTEN).await {
                Ok(l) => Some(l),
                Err(e) => {
                    tracing::warn!(
                        "metrics not served: cannot listen on {DEFAULT_METRICS_LISTEN} ({e}); set [metrics] listen to a free port"
                    );
                    None
                }
            },
        };
        let (metrics_addr, metrics_task) = if let Some(listener) = listener {
            let addr = listener.local_addr()?;
            let m = mesh.clone();
            let render: std::sync::Arc<dyn Fn() -> String + Send + Sync> =
                std::sync::Arc::new(move || m.metrics_text());
            (
                Some(addr),
                Some(tokio::spawn(tincan_mesh::metrics::serve(listener, render))),
            )
        } else {
            (None, None)
        };
        Ok(Bootstrap {
            mesh,
            metrics_addr,
            metrics_task,
            listening,
            voice,
        })
    }

    /// Its PeerId.
    pub fn peer_id(&self) -> PeerId {
        self.mesh.peer_id()
    }

    /// The addresses it listens on, each with `/p2p/<peer id>`: what players
    /// pass to `tincan up --bootstrap`.
    ///
    /// Waits (up to 5 s) until every configured listen address is up: the
    /// first to come up is not all of them (a TCP listener is often ready
    /// before the QUIC one).
    pub async fn addresses(&self) -> Result<Vec<Multiaddr>> {
        let id = self.peer_id();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut addrs = self.mesh.listen_addrs().await?;
        while addrs.len() < self.listening && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            addrs = self.mesh.listen_addrs().await?;
        }
        Ok(addrs
            .into_iter()
            .map(|a| a.with_p2p(id).unwrap_or_else(|a| a))
            .collect())
    }

    /// The mesh node (peers, counters).
    pub fn mesh(&self) -> &Mesh {
        &self.mesh
    }

    /// Where Prometheus metrics are served (`http://ADDR/metrics`), unless
    /// the configuration turned them off.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics_addr
    }

    /// The voice relay, unless the configuration turned it off.
    pub fn voice_relay(&self) -> Option<&voice_relay::VoiceRelay> {
        self.voice.as_ref()
    }

    /// Stops it.
    pub async fn shutdown(self) {
        if let Some(t) = &self.metrics_task {
            t.abort();
        }
        if let Some(voice) = &self.voice {
            voice.shutdown();
        }
        self.mesh.shutdown().await;
    }
}

/// The voice relay's counters as `tincan_voice_relay_*` metrics.
fn voice_metric_samples(s: &voice_relay::VoiceRelayStats) -> Vec<tincan_mesh::metrics::Sample> {
    use tincan_mesh::metrics::Sample;
    let r = &s.relay;
    let dropped = "Datagrams the relay did not forward, by reason";
    let joins = "Join requests, by outcome";
    vec![
        Sample::gauge(
            "tincan_voice_relay_connections",
            "Voice connections open now",
            s.connections as f64,
        ),
        Sample::gauge(
            "tincan_voice_relay_groups",
            "Voice channels with a member now",
            s.groups as f64,
        ),
        Sample::gauge(
            "tincan_voice_relay_members",
            "Members of all voice groups now",
            s.members as f64,
        ),
        Sample::counter(
            "tincan_voice_relay_datagrams_received",
            "Datagrams received from members",
            r.received,
        ),
        Sample::counter(
            "tincan_voice_relay_datagrams_forwarded",
            "Datagram copies sent, one per recipient",
            r.forwarded,
        ),
        Sample::counter(
            "tincan_voice_relay_forwarded_bytes",
            "Bytes in the datagram copies sent",
            r.forwarded_bytes,
        ),
        Sample::counter(
            "tincan_voice_relay_datagrams_dropped",
            dropped,
            r.dropped_not_joined,
        )
        .with_label("reason", "not_joined"),
        Sample::counter(
            "tincan_voice_relay_datagrams_dropped",
            dropped,
            r.dropped_malformed,
        )
        .with_label("reason", "malformed"),
        Sample::counter(
            "tincan_voice_relay_datagrams_dropped",
            dropped,
            r.dropped_plaintext,
        )
        .with_label("reason", "plaintext"),
        Sample::counter(
            "tincan_voice_relay_datagrams_dropped",
            dropped,
            r.dropped_wrong_speaker,
        )
        .with_label("reason", "wrong_speaker"),
        Sample::counter(
            "tincan_voice_relay_datagrams_dropped",
            dropped,
            r.dropped_datagram_rate,
        )
        .with_label("reason", "datagram_rate"),
        Sample::counter(
            "tincan_voice_relay_datagrams_dropped",
            dropped,
            r.dropped_byte_rate,
        )
        .with_label("reason", "byte_rate"),
        Sample::counter(
            "tincan_voice_relay_datagrams_dropped",
            dropped,
            s.send_failed,
        )
        .with_label("reason", "send_failed"),
        Sample::counter(
            "tincan_voice_relay_datagrams_dropped",
            dropped,
            s.held_superseded,
        )
        .with_label("reason", "superseded_epoch"),
        Sample::counter("tincan_voice_relay_joins", joins, s.joins_accepted)
            .with_label("outcome", "accepted"),
        Sample::counter("tincan_voice_relay_joins", joins, s.joins_refused)
            .with_label("outcome", "refused"),
        Sample::counter(
            "tincan_voice_relay_observed",
            "Observe requests answered (a node's public voice address)",
            s.observed,
        ),
        Sample::counter(
            "tincan_voice_relay_connections_refused",
            "Connections closed because the relay was full or the node is blocked",
            s.connections_refused,
        ),
        Sample::counter(
            "tincan_voice_relay_handshakes_failed",
            "Connections that sent no readable request in time",
            s.handshakes_failed,
        ),
        Sample::counter(
            "tincan_voice_relay_members_removed",
            "Members disconnected because their room removed them (a newer key epoch, or evidence)",
            s.members_removed,
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_limits_from_toml_with_defaults_for_the_rest() {
        let c: Config = toml::from_str(
            "key_file = \"k\"\n[relay_limits]\nmax_circuits = 4\nmax_circuit_duration_secs = 30\n",
        )
        .unwrap();
        let l = c.relay_limits.limits();
        assert_eq!(l.max_circuits, 4);
        assert_eq!(l.max_circuit_duration, std::time::Duration::from_secs(30));
        assert_eq!(
            l.max_reservations,
            tincan_mesh::RelayLimits::default().max_reservations
        );
        assert_eq!(l.to_relay_config().max_circuits, 4);
        assert!(
            toml::from_str::<Config>("key_file = \"k\"\n[relay_limits]\nmax_circuitz = 4\n")
                .is_err()
        );
    }
}
