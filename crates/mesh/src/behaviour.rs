//! The libp2p behaviour of a tincan node, and the swarm built around it.
//!
//! One composition serves players' nodes and bootstrap nodes: a bootstrap
//! node sets [`MeshConfig::kademlia_server`] and [`MeshConfig::relay_server`]
//! and gets Kademlia in server mode and a relay v2 server; everything else
//! is the same. [`build_swarm`] is public so that `bootstrap/` can run the
//! same behaviour without the store-backed node around it.

use std::time::Duration;

use libp2p::gossipsub::{self, IdentTopic, MessageAuthenticity, ValidationMode};
use libp2p::identity::Keypair;
use libp2p::kad::{self, store::MemoryStore};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::{
    Swarm, SwarmBuilder, autonat, connection_limits, dcutr, identify, mdns, noise, ping, relay,
    tcp, yamux,
};
use tincan_core::RoomId;

use crate::config::MeshConfig;
use crate::error::StartError;
use crate::metrics::Registry;
use crate::protocol::{DIRECTORY_PROTOCOL, DirectoryCodec, SYNC_PROTOCOL, SyncCodec};

/// Kademlia's protocol name: tincan's own DHT, apart from the public IPFS one.
pub const KAD_PROTOCOL: libp2p::StreamProtocol = libp2p::StreamProtocol::new("/tincan/kad/1");
/// identify's protocol version string.
pub const IDENTIFY_PROTOCOL: &str = "/tincan/1";

pub use composed::{Behaviour, BehaviourEvent};

mod composed {
    // The derive generates `BehaviourEvent` with one undocumented variant per
    // field; each is the event of the behaviour of that name.
    #![allow(missing_docs)]

    use libp2p::kad::{self, store::MemoryStore};
    use libp2p::swarm::{NetworkBehaviour, behaviour::toggle::Toggle};
    use libp2p::{
        allow_block_list, autonat, connection_limits, dcutr, gossipsub, identify, mdns, ping,
        relay, request_response,
    };

    use crate::protocol::{DirectoryCodec, SyncCodec};

    /// Every protocol a tincan node speaks.
    #[derive(NetworkBehaviour)]
    pub struct Behaviour {
        pub connection_limits: connection_limits::Behaviour,
        pub blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
        pub identify: identify::Behaviour,
        pub ping: ping::Behaviour,
        pub mdns: Toggle<mdns::tokio::Behaviour>,
        pub kademlia: kad::Behaviour<MemoryStore>,
        pub gossipsub: gossipsub::Behaviour,
        pub sync: request_response::Behaviour<SyncCodec>,
        pub directory: request_response::Behaviour<DirectoryCodec>,
        pub autonat: autonat::Behaviour,
        pub relay_client: relay::client::Behaviour,
        pub relay_server: Toggle<relay::Behaviour>,
        pub dcutr: dcutr::Behaviour,
    }
}

/// The gossip topic of a room.
pub fn room_topic(room: &RoomId) -> IdentTopic {
    IdentTopic::new(format!("tincan/room/{}", room.to_hex()))
}

/// The gossip topic of a room's voice signals: who is in which voice
/// channel and at which voice addresses. Separate from the room's records,
/// which are stored; signals are not.
pub fn voice_topic(room: &RoomId) -> IdentTopic {
    IdentTopic::new(format!("tincan/voice/{}", room.to_hex()))
}

/// The gossip topic of an invite-only room, named by its locator id so
/// that nothing of the room is published under its public id.
pub fn sealed_topic(locator: &tincan_core::seal::LocatorId) -> IdentTopic {
    IdentTopic::new(format!("tincan/sealed/{}", locator.to_hex()))
}

/// The voice topic of an invite-only room (see [`sealed_topic`]).
pub fn sealed_voice_topic(locator: &tincan_core::seal::LocatorId) -> IdentTopic {
    IdentTopic::new(format!("tincan/sealed-voice/{}", locator.to_hex()))
}

/// The gossip topic of profiles.
pub fn profiles_topic() -> IdentTopic {
    IdentTopic::new("tincan/profiles")
}

/// A gossip message's id: BLAKE3 of its data (the signed record), so one
/// record is one message whoever publishes it.
pub fn message_id(message: &gossipsub::Message) -> gossipsub::MessageId {
    gossipsub::MessageId::from(blake3::hash(&message.data).as_bytes().to_vec())
}

/// Topic score parameters: only invalid messages count (P4). Time in mesh
/// and delivery counts are off: a quiet room is normal, and must not make
/// its peers look bad.
pub fn topic_score_params() -> gossipsub::TopicScoreParams {
    gossipsub::TopicScoreParams {
        topic_weight: 1.0,
        time_in_mesh_weight: 0.0,
        time_in_mesh_quantum: Duration::from_secs(1),
        time_in_mesh_cap: 1.0,
        first_message_deliveries_weight: 0.0,
        first_message_deliveries_decay: 0.5,
        first_message_deliveries_cap: 1.0,
        mesh_message_deliveries_weight: 0.0,
        mesh_message_deliveries_decay: 0.5,
        mesh_message_deliveries_cap: 1.0,
        mesh_message_deliveries_threshold: 1.0,
        mesh_message_deliveries_window: Duration::from_millis(10),
        mesh_message_deliveries_activation: Duration::from_secs(5),
        mesh_failure_penalty_weight: 0.0,
        mesh_failure_penalty_decay: 0.5,
        // Each invalid record costs its sender score^2 * 10: three put a peer
        // under the graylist threshold (-80). Decays by 10% a second.
        invalid_message_deliveries_weight: -10.0,
        invalid_message_deliveries_decay: 0.9,
    }
}

fn peer_score_params() -> gossipsub::PeerScoreParams {
    gossipsub::PeerScoreParams {
        // LAN parties put many players behind one address; loopback tests
        // put every node on one. Colocation is no sign of a Sybil here.
        ip_colocation_factor_weight: 0.0,
        ..Default::default()
    }
}

fn gossipsub(key: &Keypair, cfg: &MeshConfig) -> Result<gossipsub::Behaviour, StartError> {
    let config = gossipsub::ConfigBuilder::default()
        .validation_mode(ValidationMode::Strict)
        .validate_messages()
        .message_id_fn(message_id)
        .heartbeat_interval(cfg.gossip_heartbeat)
        .heartbeat_initial_delay(cfg.gossip_heartbeat.min(Duration::from_secs(1)))
        // Records are at most 16 KiB; larger frames are refused by the codec
        // (and counted as invalid by gossipsub).
        .max_transmit_size(64 * 1024)
        .build()
        .map_err(|e| StartError::Build(format!("gossipsub config: {e}")))?;
    let mut g = gossipsub::Behaviour::new(MessageAuthenticity::Signed(key.clone()), config)
        .map_err(|e| StartError::Build(format!("gossipsub: {e}")))?;
    g.with_peer_score(
        peer_score_params(),
        gossipsub::PeerScoreThresholds::default(),
    )
    .map_err(|e| StartError::Build(format!("gossipsub peer scoring: {e}")))?;
    Ok(g)
}

fn behaviour(
    key: &Keypair,
    relay_client: relay::client::Behaviour,
    cfg: &MeshConfig,
) -> Result<Behaviour, StartError> {
    let peer_id = key.public().to_peer_id();
    let mdns = if cfg.mdns {
        Some(
            mdns::tokio::Behaviour::new(mdns::Config::default(), peer_id)
                .map_err(|e| StartError::Mdns(e.to_string()))?,
        )
    } else {
        None
    };
    let mut kad_config = kad::Config::new(KAD_PROTOCOL);
    kad_config.set_query_timeout(Duration::from_secs(30));
    let mut kademlia = kad::Behaviour::with_config(peer_id, MemoryStore::new(peer_id), kad_config);
    if cfg.kademlia_server {
        kademlia.set_mode(Some(kad::Mode::Server));
    }
    let sync = request_response::Behaviour::with_codec(
        SyncCodec,
        [(SYNC_PROTOCOL, ProtocolSupport::Full)],
        request_response::Config::default()
            .with_request_timeout(cfg.limits.sync_request_timeout)
            .with_max_concurrent_streams(cfg.limits.max_inbound_syncs.max(1) * 2),
    );
    let directory = request_response::Behaviour::with_codec(
        DirectoryCodec,
        [(DIRECTORY_PROTOCOL, ProtocolSupport::Full)],
        request_response::Config::default()
            .with_request_timeout(std::time::Duration::from_secs(5))
            .with_max_concurrent_streams(8),
    );
    let limits = connection_limits::ConnectionLimits::default()
        .with_max_established(Some(cfg.limits.max_connections))
        .with_max_pending_incoming(Some(cfg.limits.max_connections / 4 + 1))
        .with_max_established_per_peer(Some(4));
    Ok(Behaviour {
        connection_limits: connection_limits::Behaviour::new(limits),
        blocked: Default::default(),
        identify: identify::Behaviour::new(
            identify::Config::new(IDENTIFY_PROTOCOL.to_owned(), key.public())
                .with_agent_version(cfg.agent.clone())
                // Tell peers at once when a relay circuit (or any new
                // address) makes us reachable, not at the next periodic push.
                .with_push_listen_addr_updates(true),
        ),
        ping: ping::Behaviour::new(ping::Config::new()),
        mdns: mdns.into(),
        kademlia,
        gossipsub: gossipsub(key, cfg)?,
        sync,
        directory,
        autonat: autonat::Behaviour::new(peer_id, autonat::Config::default()),
        relay_client,
        relay_server: cfg
            .relay_server
            .then(|| relay::Behaviour::new(peer_id, cfg.relay_limits.to_relay_config()))
            .into(),
        dcutr: dcutr::Behaviour::new(peer_id),
    })
}

/// The libp2p keypair of a node key seed.
pub fn keypair(seed: &[u8; 32]) -> Result<Keypair, StartError> {
    let mut bytes = *seed;
    Keypair::ed25519_from_bytes(&mut bytes).map_err(|e| StartError::Key(e.to_string()))
}

/// Builds the swarm (TCP and QUIC, DNS, relay client, all behaviours) for
/// `cfg`. It does not listen or dial yet. Needs a tokio runtime.
pub fn build_swarm(cfg: &MeshConfig) -> Result<Swarm<Behaviour>, StartError> {
    build_swarm_with_metrics(cfg, &mut Registry::default())
}

/// [`build_swarm`], counting bytes in and out per protocol stack into
/// `registry`.
pub fn build_swarm_with_metrics(
    cfg: &MeshConfig,
    registry: &mut Registry,
) -> Result<Swarm<Behaviour>, StartError> {
    let key = keypair(&cfg.node_key_seed)?;
    if let Some(delay) = cfg.emulated_link_delay {
        return build_delayed_swarm(key, cfg, delay);
    }
    let build = |e: &dyn std::fmt::Display| StartError::Build(e.to_string());
    let mut behaviour_error = None;
    let swarm = SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| build(&e))?
        .with_quic()
        .with_dns()
        .map_err(|e| build(&e))?
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .map_err(|e| build(&e))?
        .with_bandwidth_metrics(registry)
        .with_behaviour(
            |key, relay_client| match behaviour(key, relay_client, cfg) {
                Ok(b) => Ok(b),
                Err(e) => {
                    let shown = e.to_string();
                    behaviour_error = Some(e);
                    Err(shown.into())
                }
            },
        );
    let swarm = match swarm {
        Ok(s) => s,
        Err(e) => return Err(behaviour_error.unwrap_or_else(|| build(&e))),
    };
    Ok(swarm
        .with_swarm_config(|c| c.with_idle_connection_timeout(cfg.idle_connection_timeout))
        .build())
}

/// TCP only, with [`crate::delay::Delayed`] under noise: for harnesses that
/// need link latency on loopback.
fn build_delayed_swarm(
    key: Keypair,
    cfg: &MeshConfig,
    delay: Duration,
) -> Result<Swarm<Behaviour>, StartError> {
    use libp2p::Transport;
    let build = |e: &dyn std::fmt::Display| StartError::Build(e.to_string());
    let mut behaviour_error = None;
    let swarm = SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_other_transport(|key| {
            let noise = noise::Config::new(key)?;
            Ok(
                tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
                    .map(move |stream, _| crate::delay::Delayed::new(stream, delay))
                    .upgrade(libp2p::core::upgrade::Version::V1)
                    .authenticate(noise)
                    .multiplex(yamux::Config::default()),
            )
        })
        .map_err(|e| build(&e))?
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .map_err(|e| build(&e))?
        .with_behaviour(
            |key, relay_client| match behaviour(key, relay_client, cfg) {
                Ok(b) => Ok(b),
                Err(e) => {
                    let shown = e.to_string();
                    behaviour_error = Some(e);
                    Err(shown.into())
                }
            },
        );
    let swarm = match swarm {
        Ok(s) => s,
        Err(e) => return Err(behaviour_error.unwrap_or_else(|| build(&e))),
    };
    Ok(swarm
        .with_swarm_config(|c| c.with_idle_connection_timeout(cfg.idle_connection_timeout))
        .build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_key_seed_gives_the_same_peer_id_as_core() {
        let node_key = tincan_core::NodeKey::from_seed(&[42; 32]);
        let kp = keypair(&node_key.seed()).unwrap();
        assert_eq!(
            kp.public().to_peer_id().to_string(),
            node_key.id().peer_id()
        );
    }

    #[test]
    fn one_record_is_one_message_id() {
        let msg = |source| gossipsub::Message {
            source,
            data: vec![1, 2, 3],
            sequence_number: Some(7),
            topic: profiles_topic().hash(),
        };
        let a = msg(None);
        let b = msg(Some(libp2p::PeerId::random()));
        assert_eq!(message_id(&a), message_id(&b));
    }
}
