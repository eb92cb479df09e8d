//! Peers that do not play along, against real mesh nodes over loopback:
//! raw libp2p swarms speaking tincan's protocols with a fresh key. Each test
//! states the attack and what a node must do about it (issue 14).

use std::time::Duration;

use futures::StreamExt;
use libp2p::request_response;
use libp2p::swarm::SwarmEvent;
use tincan_core::{Hlc, UserKey, make};
use tincan_mesh::behaviour::BehaviourEvent;
use tincan_mesh::protocol::{Bound, Range, RangeMode, SyncItem, SyncRequest, SyncResponse};
mod common;

use common::{eventually, node, seed};
use tincan_mesh::MeshConfig;
use tincan_store::RANK_PROFILE;

const LIMIT: Duration = Duration::from_secs(30);

/// A peer claims to hold 10,000 records the node lacks, then answers the
/// node's fetches of them with 10,000 valid profiles nobody asked for (as
/// many as were asked each time, so the answers look well-formed): none may
/// be stored, and the liar's session ends with its score lowered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_nobody_asked_for_are_not_stored() {
    let honest = node(9_100, None).await;
    let mut flood: Vec<Vec<u8>> = (0..10_000u32)
        .map(|i| {
            let key = UserKey::from_seed(&seed(1_000_000 + i));
            make::profile(&key, Hlc::new(1, 0), &format!("user {i}"))
                .unwrap()
                .to_bytes()
        })
        .collect();
    // What the liar claims to hold: ids of nothing, in sorted order.
    let mut claimed: Vec<SyncItem> = (0..10_000u32)
        .map(|i| SyncItem {
            rank: RANK_PROFILE,
            id: tincan_core::RecordId(seed(2_000_000 + i)),
        })
        .collect();
    claimed.sort();
    let mut swarm = tincan_mesh::build_swarm(&MeshConfig::loopback(seed(9_101))).unwrap();
    let peer = *swarm.local_peer_id();
    swarm.dial(honest.addr.clone()).unwrap();
    let liar = tokio::spawn(async move {
        let mut sent = 0usize;
        loop {
            let SwarmEvent::Behaviour(BehaviourEvent::Sync(request_response::Event::Message {
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
                ..
            })) = swarm.select_next_some().await
            else {
                continue;
            };
            let response = match request {
                SyncRequest::Reconcile { .. } => SyncResponse::Reconcile {
                    ranges: vec![Range {
                        upper: Bound::End,
                        mode: RangeMode::IdList(claimed.clone()),
                    }],
                },
                SyncRequest::Fetch { ids, .. } => {
                    let n = ids.len().min(flood.len());
                    let records: Vec<Vec<u8>> = flood.drain(..n).collect();
                    sent += records.len();
                    SyncResponse::Records {
                        served: ids.len() as u32,
                        records,
                    }
                }
            };
            let _ = swarm.behaviour_mut().sync.send_response(channel, response);
            if sent > 0 && flood.is_empty() {
                // Keep the connection up while the node digests it.
                loop {
                    swarm.select_next_some().await;
                }
            }
        }
    });
    let settled = eventually(LIMIT, || async {
        let s = honest.mesh.stats().await.unwrap();
        s.synced_records + s.synced_rejected + s.sync_lies > 0
    })
    .await;
    // Whatever was going to be applied has been by now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stats = honest.mesh.stats().await.unwrap();
    assert!(settled, "the node never took the peer's answers: {stats:?}");
    let stored = honest.store.profiles().unwrap().len();
    println!("FIGURE unrequested: {stored} of 10,000 unrequested profiles stored; stats {stats:?}");
    assert_eq!(stored, 0, "records nobody asked for were stored");
    let peers = honest.mesh.peers().await.unwrap();
    let score = peers
        .iter()
        .find(|p| p.peer_id == peer)
        .and_then(|p| p.score);
    assert!(
        score.is_none_or(|s| s < 0.0),
        "the liar kept a non-negative score: {score:?}"
    );
    liar.abort();
    honest.mesh.shutdown().await;
}
