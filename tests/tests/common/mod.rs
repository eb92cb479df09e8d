//! Mesh nodes for the hostile_* tests: a real libp2p swarm over loopback
//! with an in-memory store, as an embedding program would run one.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use tincan_core::UserKey;
use tincan_mesh::{Mesh, MeshConfig, Multiaddr};
use tincan_store::{Store, StoreConfig};

/// A deterministic 32-byte seed from a number (node and user keys).
pub(crate) fn seed(n: u32) -> [u8; 32] {
    *blake3::hash(&n.to_be_bytes()).as_bytes()
}

/// A running mesh node with its store and dialable address.
pub(crate) struct Node {
    pub(crate) mesh: Mesh,
    pub(crate) store: Arc<Store>,
    pub(crate) addr: Multiaddr,
}

/// Starts node `n` on loopback; `user`, if given, is unlocked in its store.
pub(crate) async fn node(n: u32, user: Option<&UserKey>) -> Node {
    let store = Arc::new(Store::in_memory(StoreConfig::default()).expect("in-memory store"));
    if let Some(user) = user {
        store.unlock_user(user).unwrap();
    }
    let mesh = Mesh::start(MeshConfig::loopback(seed(n)), store.clone())
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

/// Polls `check` every 20 ms until it holds or `limit` passes.
pub(crate) async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < limit {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}
