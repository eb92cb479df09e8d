//! Real quinn endpoints on real UDP sockets (loopback): the voice TLS proves
//! the node's PeerId, a dialler that expects another PeerId is refused, and
//! voice datagrams cross intact.

use std::net::SocketAddr;
use std::time::Duration;

use tincan_core::NodeKey;
use tincan_media::{EndpointConfig, VoiceDatagram, VoiceDatagramRef, VoiceEndpoint};

const LOOPBACK: &str = "127.0.0.1:0";

fn endpoint(seed: u8) -> VoiceEndpoint {
    let addr: SocketAddr = LOOPBACK.parse().unwrap();
    VoiceEndpoint::bind([seed; 32], addr, &EndpointConfig::default()).unwrap()
}

fn frame(sequence: u32) -> VoiceDatagram {
    VoiceDatagram {
        channel: 1,
        speaker: 3,
        sequence,
        timestamp: sequence * 480,
        end_of_spurt: false,
        payload: vec![0xA5; 60],
        redundant: Some(vec![0x5A; 55]),
    }
}

#[tokio::test]
async fn datagrams_cross_between_nodes_that_prove_their_peer_ids() {
    let alice = endpoint(1);
    let bob = endpoint(2);
    // The voice identity is the control plane's: same seed, same PeerId.
    assert_eq!(
        alice.peer_id().to_string(),
        NodeKey::from_seed(&[1; 32]).id().peer_id()
    );
    let bob_addr = bob.local_addr().unwrap();
    let bob_id = bob.peer_id();

    let accept = tokio::spawn(async move {
        let conn = bob
            .accept()
            .await
            .expect("endpoint open")
            .expect("handshake");
        let mut got = Vec::new();
        for _ in 0..10 {
            let bytes = tokio::time::timeout(Duration::from_secs(10), conn.recv())
                .await
                .expect("a datagram within 10 s")
                .expect("connection alive");
            let d = VoiceDatagramRef::parse(&bytes).expect("a valid voice datagram");
            got.push((
                d.sequence,
                d.payload.to_vec(),
                d.redundant.map(<[u8]>::to_vec),
            ));
        }
        (conn.peer_id(), got)
    });

    let conn = alice.connect(bob_addr, bob_id).await.expect("connect");
    assert_eq!(conn.peer_id(), bob_id);
    // Datagrams are unreliable by design, but ten small ones 2 ms apart on
    // loopback are not lost: the receiver waits for all ten, and a loss here
    // would be a finding.
    for seq in 0..10 {
        assert!(conn.send(&frame(seq)));
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let (seen_by_bob, got) = tokio::time::timeout(Duration::from_secs(20), accept)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen_by_bob, alice.peer_id());
    let seqs: Vec<u32> = got.iter().map(|g| g.0).collect();
    assert_eq!(seqs, (0..10).collect::<Vec<_>>());
    assert!(
        got.iter()
            .all(|g| g.1 == vec![0xA5; 60] && g.2 == Some(vec![0x5A; 55]))
    );
    assert!(conn.rtt() < Duration::from_secs(1));
}

#[tokio::test]
async fn a_dialler_expecting_another_node_is_refused() {
    let alice = endpoint(1);
    let bob = endpoint(2);
    let mallory_id = endpoint(3).peer_id();
    let bob_addr = bob.local_addr().unwrap();
    let server = tokio::spawn(async move {
        // The handshake fails on bob's side too; keep accepting until closed.
        let _ = tokio::time::timeout(Duration::from_secs(5), bob.accept()).await;
    });
    let result = tokio::time::timeout(Duration::from_secs(10), alice.connect(bob_addr, mallory_id))
        .await
        .expect("the handshake ends within 10 s");
    assert!(result.is_err(), "connected to bob while expecting mallory");
    server.abort();
}

#[tokio::test]
async fn an_oversized_frame_is_refused_not_sent() {
    let alice = endpoint(1);
    let bob = endpoint(2);
    let (bob_addr, bob_id) = (bob.local_addr().unwrap(), bob.peer_id());
    let server = tokio::spawn(async move {
        let conn = bob.accept().await.expect("open").expect("handshake");
        tokio::time::sleep(Duration::from_secs(2)).await;
        drop(conn);
    });
    let conn = alice.connect(bob_addr, bob_id).await.expect("connect");
    let mut big = frame(0);
    big.payload = vec![0; 4000];
    assert!(!conn.send(&big));
    assert!(conn.send(&frame(1)));
    server.abort();
}
