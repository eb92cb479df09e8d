//! tincan's control plane on libp2p: finding peers, gossiping signed records
//! per room, and catching up on what gossip missed.
//!
//! - Discovery: mDNS on the LAN, Kademlia seeded from bootstrap peers,
//!   identify; AutoNAT, relay v2 client and DCUtR for nodes behind NAT.
//! - Gossip: one gossipsub topic per room and one for profiles; message id =
//!   BLAKE3 of the signed record; every message is validated against the
//!   store's rules before it is forwarded, and peers that send invalid
//!   records lose score ([`node`] explains the verdicts).
//! - Catch-up sync: range-based set reconciliation per room over
//!   request-response ([`reconcile`] is the sans-IO logic, [`protocol`] the
//!   wire format), run on connect, on subscribe and periodically.
//!
//! ```no_run
//! # async fn demo(store: std::sync::Arc<tincan_store::Store>, room: tincan_core::RoomId,
//! #   record: tincan_core::SignedRecord) -> Result<(), Box<dyn std::error::Error>> {
//! let seed = tincan_core::NodeKey::generate()?.seed();
//! let mesh = tincan_mesh::Mesh::start(tincan_mesh::MeshConfig::new(*seed), store).await?;
//! mesh.subscribe_room(room).await?;
//! mesh.publish(record).await?;
//! println!("{:?}", mesh.peers().await?);
//! mesh.shutdown().await;
//! # Ok(()) }
//! ```
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod behaviour;
pub mod config;
pub mod delay;
pub mod error;
pub mod metrics;
pub mod node;
pub mod protocol;
pub mod rate;
pub mod reach;
pub mod reconcile;
pub mod signal;
pub mod upkeep;

pub use behaviour::{build_swarm, profiles_topic, room_topic, voice_topic};
pub use config::{Limits, MeshConfig, RelayLimits};
pub use error::{DialError, PublishError, StartError, Stopped, SubscribeError};
pub use libp2p::multiaddr::Protocol;
pub use libp2p::{Multiaddr, PeerId};
pub use node::{MAX_SIGNAL_BYTES, Mesh, MeshStats, NearbyRoom, PeerInfo, PeerPath, Signal};
pub use rate::Rate;
pub use reconcile::ReconcileConfig;
