//! Helpers shared by the mesh integration tests: real libp2p nodes over TCP
//! on 127.0.0.1, each with an in-memory store.
#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use tincan_core::{Hlc, SignedRecord, UserKey};
use tincan_mesh::{Mesh, MeshConfig, Multiaddr};
use tincan_store::{Store, StoreConfig};

pub struct Node {
    pub mesh: Mesh,
    pub store: Arc<Store>,
    pub addr: Multiaddr,
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,libp2p_kad=error".into()),
        )
        .with_test_writer()
        .try_init();
}

pub fn seed(n: u32) -> [u8; 32] {
    *blake3::hash(&n.to_be_bytes()).as_bytes()
}

pub async fn node(n: u32) -> Node {
    node_with(MeshConfig::loopback(seed(n))).await
}

pub async fn node_with(config: MeshConfig) -> Node {
    let store = Arc::new(Store::in_memory(StoreConfig::default()).expect("in-memory store"));
    node_on(config, store).await
}

pub async fn node_on(config: MeshConfig, store: Arc<Store>) -> Node {
    let mesh = Mesh::start(config, store.clone())
        .await
        .expect("mesh starts");
    let addrs = tokio::time::timeout(Duration::from_secs(10), mesh.listen_addrs())
        .await
        .expect("listens within 10 s")
        .expect("node running");
    let addr = addrs[0]
        .clone()
        .with(libp2p::multiaddr::Protocol::P2p(mesh.peer_id()));
    Node { mesh, store, addr }
}

/// Polls `check` every 20 ms until it holds or `limit` passes; returns the
/// time it took, or None.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    let rounds = (limit.as_millis() / 20).max(1) as usize;
    for _ in 0..rounds {
        if check().await {
            return Some(start.elapsed());
        }
        if start.elapsed() > limit {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// Waits until every node has at least `n` connected peers that speak sync.
pub async fn wait_connected(nodes: &[&Node], n: usize) {
    let ok = eventually(Duration::from_secs(15), || async {
        for node in nodes {
            let peers = node.mesh.peers().await.unwrap_or_default();
            if peers.iter().filter(|p| p.agent.is_some()).count() < n {
                return false;
            }
        }
        true
    })
    .await;
    assert!(ok.is_some(), "nodes did not connect within 15 s");
}

pub struct Clock(u64);

impl Clock {
    pub fn new(start: u64) -> Self {
        Clock(start)
    }
    pub fn next(&mut self) -> Hlc {
        self.0 += 1;
        Hlc::new(self.0, 0)
    }
}

pub fn user(n: u8) -> UserKey {
    UserKey::from_seed(&[n; 32])
}

pub async fn publish(node: &Node, r: SignedRecord) {
    node.mesh.publish(r).await.expect("publish");
}
