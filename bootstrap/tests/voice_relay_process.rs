//! The `tincan-bootstrap` binary with its voice relay: it says where the
//! relay listens, proves the bootstrap node's PeerId on it, and answers a
//! node that asks for its public address.

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::Duration;

use tincan_media::relay_client::{RelayAddr, observe_address};
use tincan_media::{EndpointConfig, VoiceEndpoint};

struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_runs_a_voice_relay_that_answers_observe() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bootstrap.toml");
    std::fs::write(
        &config,
        format!(
            "key_file = {:?}\nlisten = [\"/ip4/127.0.0.1/tcp/0\"]\n[voice_relay]\nlisten = \"127.0.0.1:0\"\n",
            dir.path().join("node.key").to_str().unwrap()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tincan-bootstrap"))
        .args(["--config", config.to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tincan-bootstrap");
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let _guard = Killed(child);
    let first = std::io::BufReader::new(stdout)
        .lines()
        .next()
        .expect("an address on stdout")
        .unwrap();
    // "voice relay on udp 127.0.0.1:PORT (PeerId 12D3KooW...); players use
    // --voice-relay 127.0.0.1:PORT/12D3KooW...", on stderr;
    // read off this thread, bounded by the child's life and the timeout.
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(rest) = line.strip_prefix("voice relay on udp ") {
                let _ = tx.try_send(rest.to_owned());
            }
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the binary announces its voice relay on stderr");
    let (addr, rest) = line
        .split_once(" (PeerId ")
        .unwrap_or_else(|| panic!("unexpected line {line:?}"));
    let (peer, hint) = rest
        .split_once(')')
        .unwrap_or_else(|| panic!("unexpected line {line:?}"));
    // The hint is what `tincan up --voice-relay` takes: IP:PORT/PEERID.
    assert!(
        hint.ends_with(&format!(" --voice-relay {addr}/{peer}")),
        "{line}"
    );
    // The voice relay proves the same PeerId as the libp2p addresses.
    assert!(
        first.ends_with(&format!("/p2p/{peer}")),
        "{first} vs {peer}"
    );
    let relay = RelayAddr {
        addr: addr.parse().unwrap(),
        peer: peer.parse().unwrap(),
    };
    let endpoint = VoiceEndpoint::bind(
        [77; 32],
        "127.0.0.1:0".parse().unwrap(),
        &EndpointConfig::default(),
    )
    .unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(20), observe_address(&endpoint, &relay))
        .await
        .expect("an answer in time")
        .expect("the relay answers");
    assert_eq!(seen, endpoint.local_addr().unwrap());
}
