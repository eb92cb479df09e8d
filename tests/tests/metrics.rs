//! The Prometheus metrics both binaries serve: `tincan-bootstrap` on by
//! default (loopback), `tincan up` with `--metrics`. Real processes on
//! loopback; each scrape is checked by `promtool check metrics` (Debian's
//! prometheus package, which `./x bootstrap` installs), and the counters
//! that traffic should move are read before and after it flows.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use tincan_tests::{LOOPBACK_UP, LoopbackRelay, RunningNode, Tincan, eventually, metric, scrape};

/// Runs `promtool check metrics` on `text`; panics with its complaints.
fn promtool(what: &str, text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is missing: ./x bootstrap installs Debian's prometheus package");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics refused the {what} metrics:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn both_binaries_serve_metrics_promtool_accepts_and_traffic_moves() {
    let dir = tempfile::tempdir().unwrap();
    let boot = LoopbackRelay::start(&dir.path().join("boot"));
    let (boot_addr, relay, boot_metrics) = (&boot.mesh_addr, &boot.relay, &boot.metrics);
    let before = scrape(boot_metrics);
    promtool("tincan-bootstrap", &before);

    let alice = Tincan::new(&dir.path().join("alice"), "pw-a");
    let bob = Tincan::new(&dir.path().join("bob"), "pw-b");
    alice.ok(&["init", "--username", "alice"]);
    bob.ok(&["init", "--username", "bob"]);
    let mut args: Vec<&str> = LOOPBACK_UP.to_vec();
    // Voice through the relay (a mesh limit of 0 sends every channel
    // there), with an open microphone of silence.
    args.extend([
        "--bootstrap",
        boot_addr,
        "--voice-relay",
        relay,
        "--metrics",
        "127.0.0.1:0",
        "--input",
        "null",
        "--output",
        "null",
        "--gate",
        "open",
        "--voice-mesh-limit",
        "0",
    ]);
    let mut a = RunningNode::start(&alice, &args);
    let mut b = RunningNode::start(&bob, &args);
    let metrics_of = |n: &mut RunningNode| {
        let line = n.wait_for_line("Metrics on http://", Duration::from_secs(30));
        line.split("Metrics on http://")
            .nth(1)
            .unwrap()
            .trim_end_matches("/metrics")
            .trim()
            .to_owned()
    };
    let (a_metrics, b_metrics) = (metrics_of(&mut a), metrics_of(&mut b));
    let b_before = scrape(&b_metrics);
    promtool("tincan up", &b_before);

    let room = alice.json(&["room", "create", "metrics"])["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let channel = alice.json(&["channel", "create", &room, "voice"])["channel"]
        .as_str()
        .unwrap()
        .to_owned();
    eventually(Duration::from_secs(60), || {
        bob.run(&["room", "join", &room])
            .status
            .success()
            .then_some(())
    })
    .expect("bob never got the room");
    for i in 0..5 {
        alice.ok(&["log", "add", &room, &format!("entry {i}")]);
    }
    bob.json(&["voice", "join", &room, &channel]);
    alice.json(&["voice", "join", &room, &channel]);
    let forwarded = "tincan_voice_relay_datagrams_forwarded_total";
    let moved = eventually(Duration::from_secs(60), || {
        (metric(&scrape(boot_metrics), forwarded) > 0.0
            && metric(
                &scrape(&b_metrics),
                "tincan_mesh_gossip_messages_total{verdict=\"accepted\"}",
            ) > 0.0)
            .then_some(())
    });
    let after = scrape(boot_metrics);
    let b_after = scrape(&b_metrics);
    promtool("tincan-bootstrap", &after);
    promtool("tincan up", &b_after);
    promtool("tincan up", &scrape(&a_metrics));
    let show = |text: &str, series: &str| format!("{series} {}", metric(text, series));
    for (what, t0, t1, series) in [
        ("bootstrap", &before, &after, forwarded),
        (
            "bootstrap",
            &before,
            &after,
            "tincan_voice_relay_observed_total",
        ),
        ("bootstrap", &before, &after, "tincan_voice_relay_members"),
        (
            "node",
            &b_before,
            &b_after,
            "tincan_mesh_gossip_messages_total{verdict=\"accepted\"}",
        ),
        (
            "node",
            &b_before,
            &b_after,
            "tincan_mesh_syncs_total{event=\"started\"}",
        ),
    ] {
        println!(
            "FIGURE metrics {what}: before {} after {}",
            show(t0, series),
            show(t1, series)
        );
    }
    assert!(
        moved.is_some(),
        "counters did not move:\n{after}\n{b_after}"
    );
    assert!(
        metric(&after, "tincan_voice_relay_observed_total")
            > metric(&before, "tincan_voice_relay_observed_total")
    );
    assert!(metric(&b_after, "tincan_mesh_syncs_total{event=\"started\"}") > 0.0);
    assert!(
        after.contains("libp2p_swarm_connections_established_total"),
        "{after}"
    );
}
