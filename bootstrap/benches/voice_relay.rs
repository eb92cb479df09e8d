//! Relay throughput with the real QUIC stack on loopback: the voice relay
//! service on its own single-threaded tokio runtime (one core at most), and
//! N senders and M listeners, all members of one voice channel, as real
//! relay clients (TLS, membership proofs, voice datagrams) on a runtime of
//! their own on other threads.
//!
//! ```text
//! cargo bench -p tincan-bootstrap --bench voice_relay
//! cargo bench -p tincan-bootstrap --bench voice_relay -- 4x16 --secs 10 --rate 300000 --client-threads 1
//! cargo bench -p tincan-bootstrap --bench voice_relay -- 8x56 --groups 4 --rate 201600   # 100 frames/s per sender
//! ```
//!
//! `--groups G` runs G voice channels of N x M members each (all on the
//! one relay), so that each connection carries a realistic rate: with
//! 10 ms frames a speaker sends 100 datagrams a second, and a relay's cost
//! per copy is highest at such rates, where quinn cannot pack several
//! datagrams into one packet.
//!
//! Each sender sends 82-byte voice datagrams sealed as nodes seal them
//! (13-byte header, key id, 60 bytes of Opus payload as a 10 ms frame at
//! about 48 kbit/s, 8-byte tag) at an even rate, so
//! that the relay is offered `--rate` forwarded copies a second in all
//! (each upload goes to the N - 1 + M other members). Printed per run,
//! over the measured window after a second of warm-up:
//! - forwarded/s: copies the relay handed to quinn (its `forwarded` counter);
//! - delivered/s: datagrams the clients received;
//!   forwarded minus delivered were dropped by quinn (a member's send
//!   buffer of 8 frames overflowed: drop the oldest, never queue) or by a
//!   client too slow to read;
//! - relay CPU: CPU time the relay's thread used (from
//!   /proc/thread-self/schedstat) and its share of the window; all CPU: the
//!   same for the whole process, clients included;
//! - relay CPU per delivered copy, and delivered copies per relay
//!   CPU-second: the per-core figure.
//!
//! The clients run on the same machine and take CPU from the relay (each
//! copy the relay encrypts, a client decrypts), so on a small machine the
//! relay's CPU time per forwarded copy is the fair figure, not the wall
//! clock rate. Per-connection rate caps are raised for the benchmark only.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tincan_bootstrap::voice_relay::{VoiceRelay, VoiceRelaySettings, VoiceRelayStats};
use tincan_core::permissions::default_permissions;
use tincan_core::{ChannelId, Hlc, NodeBinding, NodeKey, RoomSettings, UserKey, make};
use tincan_media::control::{Hello, MAX_PROOF_RECORDS};
use tincan_media::protocol::set_speaker;
use tincan_media::relay_client::{RelayAddr, RelaySession};
use tincan_media::{EndpointConfig, VoiceEndpoint};
use tincan_store::{Store, StoreConfig};
use tincan_voice::frame::{FrameKey, PlainFrame, seal_frame};
use tincan_voice::protocol::SENDER_KEY_LEN;
use tokio::sync::{mpsc, oneshot};

struct Options {
    shapes: Vec<(usize, usize)>,
    secs: f64,
    rate: u64,
    client_threads: usize,
    groups: usize,
}

fn options() -> Options {
    let mut o = Options {
        shapes: Vec::new(),
        secs: 5.0,
        rate: 250_000,
        client_threads: 1,
        groups: 1,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| -> String {
            args.next()
                .unwrap_or_else(|| panic!("{name} needs a value"))
        };
        match a.as_str() {
            // cargo bench passes --bench to harness = false targets.
            "--bench" => {}
            "--secs" => o.secs = value("--secs").parse().expect("--secs: a number"),
            "--rate" => {
                o.rate = value("--rate")
                    .parse()
                    .expect("--rate: forwarded copies a second")
            }
            "--groups" => o.groups = value("--groups").parse().expect("--groups: a number"),
            "--client-threads" => {
                o.client_threads = value("--client-threads")
                    .parse()
                    .expect("--client-threads: a number")
            }
            shape => {
                let (n, m) = shape
                    .split_once('x')
                    .and_then(|(n, m)| Some((n.parse().ok()?, m.parse().ok()?)))
                    .unwrap_or_else(|| {
                        panic!("{shape:?}: expected NxM (senders x listeners), --secs, --rate, --groups or --client-threads")
                    });
                o.shapes.push((n, m));
            }
        }
    }
    if o.shapes.is_empty() {
        o.shapes = vec![(1, 4), (4, 16), (8, 56)];
    }
    o
}

/// CPU time of the calling thread, in nanoseconds.
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// CPU time of every thread of this process, in nanoseconds.
fn process_cpu_ns() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

struct Snapshot {
    stats: VoiceRelayStats,
    cpu_ns: u64,
}

enum Command {
    Snapshot(oneshot::Sender<Snapshot>),
    Stop,
}

/// Runs the relay on a thread of its own; returns its address and a
/// command channel (answered on that thread, so CPU time is the relay's).
fn relay_thread(
    members: usize,
) -> (
    RelayAddr,
    mpsc::Sender<Command>,
    std::thread::JoinHandle<()>,
) {
    let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
    let (cmd_tx, mut cmd_rx) = mpsc::channel::<Command>(4);
    let thread = std::thread::Builder::new()
        .name("voice-relay".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("relay runtime");
            rt.block_on(async move {
                let mut s = VoiceRelaySettings::new("127.0.0.1:0".parse().expect("addr"));
                s.stats_interval = Duration::ZERO;
                s.limits.max_members = members;
                s.max_connections = 1 << 20;
                s.limits.datagrams_per_second = 1 << 40;
                s.limits.datagram_burst = 1 << 40;
                s.limits.bytes_per_second = 1 << 50;
                s.limits.byte_burst = 1 << 50;
                let relay = VoiceRelay::start([42; 32], s).expect("relay starts");
                let addr = RelayAddr {
                    addr: relay.local_addr(),
                    peer: relay.peer_id(),
                };
                let _ = ready_tx.send(addr);
                while let Some(cmd) = cmd_rx.recv().await {
                    match cmd {
                        Command::Snapshot(reply) => {
                            let _ = reply.send(Snapshot {
                                stats: relay.stats(),
                                cpu_ns: thread_cpu_ns(),
                            });
                        }
                        Command::Stop => break,
                    }
                }
                relay.shutdown();
            });
        })
        .expect("relay thread");
    let addr = ready_rx.recv().expect("relay started");
    (addr, cmd_tx, thread)
}

async fn snapshot(cmd: &mpsc::Sender<Command>) -> Snapshot {
    let (tx, rx) = oneshot::channel();
    cmd.send(Command::Snapshot(tx)).await.expect("relay alive");
    rx.await.expect("relay answers")
}

struct Row {
    n: usize,
    m: usize,
    secs: f64,
    offered_uploads: f64,
    received: u64,
    forwarded: u64,
    delivered: u64,
    dropped: u64,
    send_failed: u64,
    cpu_ns: u64,
    all_cpu_ns: u64,
}

async fn run(n: usize, m: usize, o: &Options) -> Row {
    let members = n + m;
    let groups = o.groups.max(1);
    let (relay, cmd, thread) = relay_thread(members);

    // One open room with a channel per group; everyone joins the room in
    // the store their nodes would hold, and builds a real proof from it.
    let owner = UserKey::from_seed(&[1; 32]);
    let store = Store::in_memory(StoreConfig::default()).expect("store");
    let (room, rec) = make::room(
        &owner,
        Hlc::new(1, 0),
        [1; 16],
        "Bench",
        RoomSettings::default(),
    )
    .expect("room");
    store.apply(rec).expect("room applies");
    // Per group: its sessions, senders first.
    let mut sessions: Vec<Vec<Arc<RelaySession>>> = Vec::new();
    let mut endpoints = Vec::new();
    for g in 0..groups {
        let mut id = [2u8; 16];
        id[..8].copy_from_slice(&(g as u64).to_be_bytes());
        let channel = ChannelId(id);
        store
            .apply(
                make::channel(
                    &owner,
                    Hlc::new(2, 0),
                    room,
                    channel,
                    "General",
                    "",
                    default_permissions(),
                )
                .expect("channel"),
            )
            .expect("channel applies");
        let mut group = Vec::new();
        for i in 0..members {
            let mut seed = [7u8; 32];
            seed[..8].copy_from_slice(&((g * members + i) as u64).to_be_bytes());
            let user = UserKey::from_seed(&seed);
            seed[31] = 8;
            let node = NodeKey::from_seed(&seed);
            store
                .apply(make::join(&user, Hlc::new(3, 0), room).expect("join"))
                .expect("join applies");
            let endpoint = VoiceEndpoint::bind(
                *node.seed(),
                "127.0.0.1:0".parse().expect("addr"),
                &EndpointConfig::default(),
            )
            .expect("client endpoint");
            let hello = Hello {
                room,
                channel,
                binding: NodeBinding::new(&user, node.id(), Hlc::new(3, 0)),
                proof: store
                    .membership_proof(&room, &user.id(), &channel, MAX_PROOF_RECORDS)
                    .expect("proof"),
            };
            let session = RelaySession::join(&endpoint, &relay, hello)
                .await
                .expect("member joins");
            group.push(Arc::new(session));
            endpoints.push(endpoint);
        }
        sessions.push(group);
    }
    // Everyone knows everyone before the clock starts.
    for s in sessions.iter().flatten() {
        let mut watch = s.watch_speakers();
        tokio::time::timeout(Duration::from_secs(30), async {
            while watch.borrow_and_update().len() < members - 1 {
                watch.changed().await.expect("session alive");
            }
        })
        .await
        .expect("speaker tables complete");
    }

    let delivered = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for s in sessions.iter().flatten() {
        let (s, delivered) = (s.clone(), delivered.clone());
        tasks.push(tokio::spawn(async move {
            while s.recv().await.is_ok() {
                delivered.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // Uploads a second so that the relay is offered `rate` copies a second.
    let copies = (members - 1) as f64;
    let uploads_per_sender = o.rate as f64 / copies / (n * groups) as f64;
    const TICK: Duration = Duration::from_millis(1);
    for s in sessions.iter().flat_map(|g| g.iter().take(n)) {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let per_tick = uploads_per_sender * TICK.as_secs_f64();
            let mut tick = tokio::time::interval(TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let (mut owed, mut seq) = (0.0f64, 0u32);
            // Frames as nodes send them: Opus-sized, sealed end to end
            // with a sender key (the relay forwards only sealed frames).
            let key = FrameKey::derive(&[0x5A; SENDER_KEY_LEN], 1);
            let (payload, mut sealed) = (vec![0x5A; 60], Vec::with_capacity(128));
            loop {
                tick.tick().await;
                owed += per_tick;
                // Bounded: at most one tick's worth plus the fraction owed.
                while owed >= 1.0 {
                    owed -= 1.0;
                    sealed.clear();
                    let plain = PlainFrame {
                        sequence: seq,
                        timestamp: seq.wrapping_mul(480),
                        end_of_spurt: false,
                        payload: &payload,
                        redundant: None,
                    };
                    seq = seq.wrapping_add(1);
                    if seal_frame(&key, &plain, &mut sealed).is_ok()
                        && set_speaker(&mut sealed, s.speaker())
                    {
                        s.connection()
                            .send_encoded(bytes::Bytes::copy_from_slice(&sealed));
                    }
                }
            }
        }));
    }

    tokio::time::sleep(Duration::from_secs(1)).await;
    let all_a = process_cpu_ns();
    let (a, delivered_a, t_a) = (
        snapshot(&cmd).await,
        delivered.load(Ordering::Relaxed),
        Instant::now(),
    );
    tokio::time::sleep(Duration::from_secs_f64(o.secs)).await;
    let (b, delivered_b, t_b) = (
        snapshot(&cmd).await,
        delivered.load(Ordering::Relaxed),
        Instant::now(),
    );
    let all_b = process_cpu_ns();
    for t in &tasks {
        t.abort();
    }
    let _ = cmd.send(Command::Stop).await;
    drop(sessions);
    for e in &endpoints {
        e.close();
    }
    let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    let (sa, sb) = (&a.stats.relay, &b.stats.relay);
    let dropped = |s: &tincan_media::RelayStats| {
        s.dropped_not_joined
            + s.dropped_malformed
            + s.dropped_wrong_speaker
            + s.dropped_datagram_rate
            + s.dropped_byte_rate
    };
    Row {
        n,
        m,
        secs: (t_b - t_a).as_secs_f64(),
        offered_uploads: uploads_per_sender * (n * groups) as f64,
        received: sb.received - sa.received,
        forwarded: sb.forwarded - sa.forwarded,
        delivered: delivered_b - delivered_a,
        dropped: dropped(sb) - dropped(sa),
        send_failed: b.stats.send_failed - a.stats.send_failed,
        cpu_ns: b.cpu_ns - a.cpu_ns,
        all_cpu_ns: all_b.saturating_sub(all_a),
    }
}

fn main() {
    let o = options();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(o.client_threads.max(1))
        .enable_all()
        .build()
        .expect("client runtime");
    println!(
        "voice relay over QUIC on loopback: relay on 1 thread, clients on {} thread(s), {} cores here; {} group(s) of N x M; offered {} copies/s in all; {:.1} s measured per run",
        o.client_threads,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        o.groups,
        o.rate,
        o.secs
    );
    println!(
        "| N x M | uploads/s offered | uploads/s at relay | forwarded/s | delivered/s | relay drops | send failed | relay CPU | all CPU | relay CPU per delivered copy | delivered per relay CPU-second |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for &(n, m) in &o.shapes {
        let r = rt.block_on(run(n, m, &o));
        let cpu_s = r.cpu_ns as f64 / 1e9;
        println!(
            "| {} x {} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {} | {:.0}% | {:.0}% | {:.0} ns | {:.0} |",
            r.n,
            r.m,
            r.offered_uploads,
            r.received as f64 / r.secs,
            r.forwarded as f64 / r.secs,
            r.delivered as f64 / r.secs,
            r.dropped,
            r.send_failed,
            100.0 * cpu_s / r.secs,
            100.0 * r.all_cpu_ns as f64 / 1e9 / r.secs,
            r.cpu_ns as f64 / r.delivered.max(1) as f64,
            r.delivered as f64 / cpu_s.max(1e-9),
        );
    }
}
