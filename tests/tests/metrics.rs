//! The Prometheus metrics both binaries serve: `tincan-bootstrap` on by
//! default (loopback), `tincan up` with `--metrics`. Real processes on
//! loopback; each scrape is checked by `promtool check metrics` (Debian's
//! prometheus package, which `./x bootstrap` installs), and the counters
//! that traffic should move are read before and after it flows.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use tincan_tests::{LOOPBACK_UP, RunningNode, Tincan, eventually, workspace_bin};

/// `GET /metrics` from `base` (`http://127.0.0.1:PORT`); the body.
fn scrape(addr: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the metrics endpoint");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_owned()
}

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

/// The value of the sample `series` (name and labels as printed), or 0.
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn both_binaries_serve_metrics_promtool_accepts_and_traffic_moves() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bootstrap.toml");
    std::fs::write(
        &config,
        format!(
            "key_file = {:?}\nlisten = [\"/ip4/127.0.0.1/tcp/0\"]\n\
             [voice_relay]\nlisten = \"127.0.0.1:0\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
            dir.path().join("boot.key")
        ),
    )
    .unwrap();
    let mut boot = Command::new(workspace_bin("tincan-bootstrap"))
        .args(["--config", config.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let boot_addr = tincan_tests::first_stdout_line(&mut boot);
    let mut stderr = std::io::BufReader::new(boot.stderr.take().unwrap());
    let (mut boot_metrics, mut relay) = (None, None);
    for _ in 0..20 {
        let mut line = String::new();
        if std::io::BufRead::read_line(&mut stderr, &mut line).unwrap_or(0) == 0 {
            break;
        }
        if let Some(rest) = line.split("metrics on http://").nth(1) {
            boot_metrics = rest.split('/').next().map(str::to_owned);
        }
        if let Some(rest) = line.split("players use --voice-relay ").nth(1) {
            relay = Some(
                rest.trim()
                    .replace("<this server's public IP>", "127.0.0.1"),
            );
        }
        if boot_metrics.is_some() && relay.is_some() {
            break;
        }
    }
    std::thread::spawn(move || {
        let mut sink = String::new();
        while std::io::BufRead::read_line(&mut stderr, &mut sink).unwrap_or(0) > 0 {
            sink.clear();
        }
    });
    let _boot = tincan_tests::netns::Kill(boot);
    let boot_metrics = boot_metrics.expect("the bootstrap node printed no metrics address");
    let relay = relay.expect("the bootstrap node printed no voice relay");
    let before = scrape(&boot_metrics);
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
        &boot_addr,
        "--voice-relay",
        &relay,
        "--voice-listen",
        "127.0.0.1:0",
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
        (value(&scrape(&boot_metrics), forwarded) > 0.0
            && value(
                &scrape(&b_metrics),
                "tincan_mesh_gossip_messages_total{verdict=\"accepted\"}",
            ) > 0.0)
            .then_some(())
    });
    let after = scrape(&boot_metrics);
    let b_after = scrape(&b_metrics);
    promtool("tincan-bootstrap", &after);
    promtool("tincan up", &b_after);
    promtool("tincan up", &scrape(&a_metrics));
    let show = |text: &str, series: &str| format!("{series} {}", value(text, series));
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
        value(&after, "tincan_voice_relay_observed_total")
            > value(&before, "tincan_voice_relay_observed_total")
    );
    assert!(value(&b_after, "tincan_mesh_syncs_total{event=\"started\"}") > 0.0);
    assert!(
        after.contains("libp2p_swarm_connections_established_total"),
        "{after}"
    );
}
