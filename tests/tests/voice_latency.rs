//! The mouth-to-ear latency harness (a benchmark, not a test: it prints
//! figures and asserts only that it could measure). Node A plays a WAV of
//! clicks through its WAV microphone; node B records through its WAV
//! speaker; each click's one-way latency is the time between A "speaking"
//! it and B "playing" it, from the wall-clock start of each device (both
//! processes run on this machine, so they share one clock):
//!
//!   latency = (B's output start + onset in B's file)
//!           - (A's input start + onset in A's file)
//!
//! It includes everything a player hears: the 10 ms frame, Opus lookahead,
//! the network, the jitter buffer and one 10 ms tick of output buffering.
//! Between runs it moves by up to 10 ms with the phase of B's playout ticks,
//! so each case also prints what the voice driver itself adds on each side
//! (from the nodes' `status`), which has no such phase.
//!
//! Run (a release build: the test then starts target/release/tincan):
//!   cargo build --release --bins
//!   cargo test --release -p tincan-tests --test voice_latency -- \
//!       --ignored --nocapture --test-threads 1
//! Cases: loopback; loopback with 20 ms ± 5 ms and 2% loss on each
//! direction; two namespaces on a LAN; the relay path behind a symmetric
//! NAT, plain and impaired (the namespace cases need root).

use std::path::Path;
use std::time::Duration;

use tincan_audio::analysis::click_onsets;
use tincan_audio::wav::{WavWriter, read_mono_48k};
use tincan_tests::netns::{addr, run_json, start_bootstrap, two_homes, veth};
use tincan_tests::{Namespaces, RunningNode, Tincan, eventually, netns_unavailable, sh};

const CLICK_EVERY: usize = 48_000 * 3 / 10; // 300 ms
const SECONDS: usize = 20;
const IMPAIR: &str = "delay=20ms,jitter=5ms,loss=2%";

/// Clicks: 5 ms tone bursts with a sharp attack, about every 300 ms. Each
/// is moved by a seeded random 0 to 10 ms, so clicks fall anywhere within
/// the 10 ms frames the microphone is cut into, as speech onsets do (clicks
/// all on frame starts would all wait the longest).
fn write_clicks(path: &Path) -> Vec<usize> {
    let mut s = vec![0.0f32; 48_000 * SECONDS];
    let mut at = Vec::new();
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut i = 24_000;
    while i + CLICK_EVERY < s.len() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let onset = i + (state % 480) as usize;
        for k in 0..240 {
            s[onset + k] = 0.8 * (2.0 * std::f32::consts::PI * 2000.0 * k as f32 / 48_000.0).sin();
        }
        at.push(onset);
        i += CLICK_EVERY;
    }
    let mut w = WavWriter::create(path).unwrap();
    w.write(&s).unwrap();
    w.finish().unwrap();
    at
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

/// Runs one case; `ns` = (A's namespace, B's namespace) or loopback.
fn measure(label: &str, ns: Option<(&str, &str)>, extra: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let clicks = dir.path().join("clicks.wav");
    let heard = dir.path().join("heard.wav");
    let sent_at = write_clicks(&clicks);
    let alice = Tincan::new(&dir.path().join("alice"), "pw-a");
    let bob = Tincan::new(&dir.path().join("bob"), "pw-b");
    alice.ok(&["init", "--username", "alice"]);
    bob.ok(&["init", "--username", "bob"]);
    let input = format!("wav:{}", clicks.display());
    let output = format!("wav:{}", heard.display());
    let mut a_args = vec![
        "up", "--gate", "open", "--input", &input, "--output", "null",
    ];
    let mut b_args = vec![
        "up", "--gate", "open", "--input", "null", "--output", &output,
    ];
    if ns.is_none() {
        for args in [&mut a_args, &mut b_args] {
            args.extend(tincan_tests::LOOPBACK_UP[1..].iter().copied());
        }
    }
    a_args.extend_from_slice(extra);
    b_args.extend_from_slice(extra);
    let (ns_a, ns_b) = ns.map_or((None, None), |(a, b)| (Some(a), Some(b)));
    let mut a = RunningNode::start_in(&alice, ns_a, &a_args);
    let a_mesh = a.mesh_addr();
    if ns.is_none() {
        b_args.extend(["--bootstrap", &a_mesh]);
    }
    let b = RunningNode::start_in(&bob, ns_b, &b_args);
    let in_a = |args: &[&str]| match ns_a {
        Some(n) => run_json(&alice, n, args),
        None => alice.json(args),
    };
    let in_b = |args: &[&str]| match ns_b {
        Some(n) => run_json(&bob, n, args),
        None => bob.json(args),
    };
    let room = in_a(&["room", "create", label])["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let channel = in_a(&["channel", "create", &room, "voice"])["channel"]
        .as_str()
        .unwrap()
        .to_owned();
    let limit = Duration::from_secs(40);
    eventually(limit, || {
        (run_ok(|| in_b(&["room", "join", &room]))
            && in_a(&["room", "show", &room])["members"]
                .as_array()
                .unwrap()
                .len()
                == 2
            && in_b(&["channel", "list", &room]).as_array().unwrap().len() == 1)
            .then_some(())
    })
    .expect("room state did not converge");
    // Clicks spoken before the link is up are not counted (see below).
    in_b(&["voice", "join", &room, &channel]);
    in_a(&["voice", "join", &room, &channel]);
    let link = eventually(limit, || {
        in_b(&["status"])["links"]
            .as_array()
            .and_then(|l| l.first().cloned())
    })
    .expect("no voice link");
    let link_seen = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    std::thread::sleep(Duration::from_secs_f64(SECONDS as f64 + 0.5));
    let a_status = in_a(&["status"]);
    let b_status = in_b(&["status"]);
    in_b(&["voice", "leave"]);
    in_a(&["voice", "leave"]);
    let a_start = a_status["input_started_us"].as_u64().unwrap() as f64 / 1e6;
    let b_start = b_status["output_started_us"].as_u64().unwrap() as f64 / 1e6;
    assert!(a_start > 0.0 && b_start > 0.0, "devices did not start");

    let received = read_mono_48k(&heard).unwrap();
    let onsets = click_onsets(&received, 0.15, 4_800);
    let mut latencies = Vec::new();
    let mut lost = 0usize;
    // Clicks spoken before the link was up cannot be heard: count from the
    // first click after the link was seen (and B's speaker had started).
    let link_up = link_seen.max(b_start) + 0.1;
    let mut considered = 0usize;
    for &s in &sent_at {
        let spoken = a_start + s as f64 / 48_000.0;
        if spoken < link_up || spoken + 0.3 > b_start + received.len() as f64 / 48_000.0 {
            continue;
        }
        considered += 1;
        let found = onsets.iter().find_map(|&o| {
            let played = b_start + o as f64 / 48_000.0;
            let l = played - spoken;
            (0.0..0.25).contains(&l).then_some(l)
        });
        match found {
            Some(l) => latencies.push(l * 1000.0),
            None => lost += 1,
        }
    }
    latencies.sort_by(|a, b| a.total_cmp(b));
    println!(
        "FIGURE latency {label}: path {} clicks {considered} heard {} lost {lost} ({:.1}%) \
         one-way ms p50 {:.1} p95 {:.1} p99 {:.1} min {:.1} max {:.1}; frames sent {} received {}",
        link["path"],
        latencies.len(),
        100.0 * lost as f64 / considered.max(1) as f64,
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.95),
        percentile(&latencies, 0.99),
        latencies.first().copied().unwrap_or(f64::NAN),
        latencies.last().copied().unwrap_or(f64::NAN),
        a_status["frames_sent"],
        b_status["frames_received"],
    );
    // What the voice driver itself adds (phase-free, unlike the figures
    // above): A's send path (sealing, copies to quinn), B's receive path
    // (task hop, gate, opening, into the jitter buffer), microseconds.
    println!(
        "FIGURE latency {label}: driver adds, send at A p50 {} p99 {} max {} us; receive at B p50 {} p99 {} max {} us ({} frames)",
        a_status["send_delay"]["p50_us"],
        a_status["send_delay"]["p99_us"],
        a_status["send_delay"]["max_us"],
        b_status["receive_delay"]["p50_us"],
        b_status["receive_delay"]["p99_us"],
        b_status["receive_delay"]["max_us"],
        b_status["receive_delay"]["samples"],
    );
    assert!(
        latencies.len() * 2 > considered,
        "{label}: most clicks were not found: the harness could not measure"
    );
    drop(b);
    drop(a);
}

fn run_ok(f: impl FnOnce() -> serde_json::Value) -> bool {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_ok()
}

#[test]
#[ignore = "a benchmark: run with --ignored --nocapture"]
fn latency_loopback() {
    measure("loopback", None, &[]);
}

#[test]
#[ignore = "a benchmark: run with --ignored --nocapture"]
fn latency_loopback_impaired() {
    measure("loopback 20±5ms 2%", None, &["--voice-impair", IMPAIR]);
}

#[test]
#[ignore = "a benchmark: run with --ignored --nocapture"]
fn latency_lan_namespaces() {
    if let Some(why) = netns_unavailable() {
        println!("SKIPPED: {why}");
        return;
    }
    let ns = Namespaces::create(
        &format!("tl{}", std::process::id() % 10_000),
        &["a", "b", "sw"],
    );
    let (a, b, sw) = (&ns.names[0], &ns.names[1], &ns.names[2]);
    sh(&["ip", "-n", sw, "link", "add", "br0", "type", "bridge"]);
    sh(&["ip", "-n", sw, "link", "set", "br0", "up"]);
    for (i, (host, cidr)) in [(a, "10.77.4.1/24"), (b, "10.77.4.2/24")]
        .into_iter()
        .enumerate()
    {
        let port = format!("p{i}");
        veth(sw, &port, host, "eth0");
        sh(&["ip", "-n", sw, "link", "set", &port, "master", "br0"]);
        sh(&["ip", "-n", sw, "link", "set", &port, "up"]);
        addr(host, "eth0", cidr);
        sh(&[
            "ip",
            "-n",
            host,
            "route",
            "add",
            "224.0.0.0/4",
            "dev",
            "eth0",
        ]);
    }
    measure("lan namespaces", Some((a, b)), &[]);
}

fn relayed(label: &str, impair: bool) {
    if let Some(why) = netns_unavailable() {
        println!("SKIPPED: {why}");
        return;
    }
    let ns = two_homes(&format!("tr{}", std::process::id() % 10_000), true);
    let dir = tempfile::tempdir().unwrap();
    let (_boot, boot_addr, relay) = start_bootstrap(dir.path(), &ns.names[0], "10.77.2.1");
    // The README's player flags.
    let mut extra = vec!["--bootstrap", &boot_addr, "--voice-relay", &relay];
    if impair {
        extra.extend(["--voice-impair", IMPAIR]);
    }
    measure(label, Some((&ns.names[2], &ns.names[4])), &extra);
}

#[test]
#[ignore = "a benchmark: run with --ignored --nocapture"]
fn latency_relay_symmetric_nat() {
    relayed("relay", false);
}

#[test]
#[ignore = "a benchmark: run with --ignored --nocapture"]
fn latency_relay_impaired() {
    relayed("relay 20±5ms 2%", true);
}
