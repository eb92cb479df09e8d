//! `tincan up`: the node's main loop. It keeps the unlocked node, serves the
//! local control endpoint (see [`crate::control`]) and stops cleanly on
//! Ctrl-C or SIGTERM, removing its control file.

use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, anyhow};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::cli::{Ctx, dispatch};
use crate::control::{ControlFile, MAX_LINE_BYTES, Request, Response, control_path};
use crate::node::Node;

/// Most control requests served at once; more wait for a free slot.
const MAX_CONCURRENT_REQUESTS: usize = 16;

/// Options of `tincan up`.
#[derive(Clone, Debug, Default)]
pub struct UpOptions {
    /// Port of the control endpoint on 127.0.0.1 (0: any free port).
    pub control_port: u16,
    /// Mesh listen addresses (empty: QUIC and TCP on every interface).
    pub listen: Vec<String>,
    /// Peers to dial at start (bootstrap nodes, or known peers).
    pub bootstrap: Vec<String>,
    /// Find peers on the LAN by mDNS.
    pub mdns: bool,
    /// Relays to listen through.
    pub relays: Vec<String>,
    /// Announce the listen addresses as reachable.
    pub advertise_listen_addrs: bool,
    /// Addresses at which others reach this node.
    pub external: Vec<String>,
    /// The voice plane's socket, devices and relays.
    pub voice: crate::voice::VoiceOptions,
    /// Address of the local API (None: 127.0.0.1).
    pub api_listen: Option<std::net::IpAddr>,
    /// Port of the local API (0: any free port).
    pub api_port: u16,
}

fn multiaddrs(what: &str, list: &[String]) -> Result<Vec<tincan_mesh::Multiaddr>> {
    list.iter()
        .map(|a| {
            a.parse()
                .map_err(|e| anyhow!("{what} {a:?} is not a multiaddr ({e}): e.g. /ip4/192.0.2.1/tcp/4001/p2p/12D3KooW..."))
        })
        .collect()
}

/// The mesh configuration for these options and this node key.
fn mesh_config(node: &Node, options: &UpOptions) -> Result<tincan_mesh::MeshConfig> {
    let seed = node
        .identity
        .node_key
        .as_ref()
        .ok_or_else(|| anyhow!("the identity has no node key"))?
        .seed();
    let mut config = tincan_mesh::MeshConfig::new(*seed);
    if !options.listen.is_empty() {
        config.listen_addrs = multiaddrs("--listen", &options.listen)?;
    }
    config.bootstrap_peers = multiaddrs("--bootstrap", &options.bootstrap)?;
    config.relays = multiaddrs("--relay", &options.relays)?;
    config.external_addrs = multiaddrs("--external", &options.external)?;
    config.advertise_listen_addrs = options.advertise_listen_addrs;
    config.mdns = options.mdns;
    config.agent = format!("tincan/{}", env!("CARGO_PKG_VERSION"));
    Ok(config)
}

/// Runs the node until Ctrl-C or SIGTERM.
pub fn run(node: Node, options: UpOptions) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(node, options))
}

async fn serve(mut node: Node, options: UpOptions) -> Result<()> {
    let dir = node.dir.clone();
    let mesh = tincan_mesh::Mesh::start(mesh_config(&node, &options)?, node.store.clone())
        .await
        .context("cannot start the mesh")?;
    let me = node.user_key().id();
    let rooms = node.store.rooms_of_user(&me)?;
    for room in &rooms {
        mesh.subscribe_room(room.id).await?;
    }
    let addrs = tokio::time::timeout(std::time::Duration::from_secs(5), mesh.listen_addrs())
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    for a in &addrs {
        eprintln!("Mesh listening on {a}/p2p/{}", mesh.peer_id());
    }
    tracing::info!(peer_id = %mesh.peer_id(), rooms = rooms.len(), "mesh started");
    node.mesh = Some(crate::node::MeshLink {
        mesh: mesh.clone(),
        runtime: tokio::runtime::Handle::current(),
    });
    let issued = node.now()?;
    let node_key = node
        .identity
        .node_key
        .as_ref()
        .ok_or_else(|| anyhow!("the identity has no node key"))?;
    let binding = tincan_core::NodeBinding::new(node.user_key(), node_key.id(), issued);
    let voice = crate::voice::Voice::start(
        *node_key.seed(),
        binding,
        mesh.clone(),
        node.store.clone(),
        options.voice.clone(),
    )?;
    eprintln!("Voice socket on {}", voice.local_addr()?);
    crate::voice::set_running(voice.clone());
    let listener = TcpListener::bind(("127.0.0.1", options.control_port))
        .await
        .with_context(|| format!("cannot listen on 127.0.0.1:{}", options.control_port))?;
    let addr = listener.local_addr()?;
    let mut token = [0u8; 16];
    getrandom::fill(&mut token).map_err(|e| anyhow!("no randomness: {e}"))?;
    let control = ControlFile {
        addr,
        token: hex::encode(token),
        pid: std::process::id(),
    };
    let path = control_path(&dir);
    tincan_store::datadir::write_atomic(&path, serde_json::to_string_pretty(&control)?.as_bytes())?;
    tracing::info!(%addr, "control endpoint listening");
    eprintln!("Node running; control endpoint {addr}. Ctrl-C to stop.");

    // The local API (crates/api): Parse REST and LiveQuery, GraphQL, /v1.
    let api_ip = options
        .api_listen
        .unwrap_or(std::net::Ipv4Addr::LOCALHOST.into());
    let api_setup = async {
        let listener = TcpListener::bind((api_ip, options.api_port)).await.with_context(|| {
            format!("cannot listen on {api_ip}:{} for the local API (is another node using it?): pass --api-port, 0 for any free port", options.api_port)
        })?;
        let state = tincan_api::ApiState::builder(node.store.clone(), dir.clone(), &node.identity)
            .mesh(mesh.clone())
            .clock(node.clock())
            .voice(crate::voice_api::ApiVoice::new(voice.clone()))
            .build()?;
        anyhow::Ok((listener.local_addr()?, listener, state))
    };
    let (api_addr, api_listener, api_state) = match api_setup.await {
        Ok(x) => x,
        Err(e) => {
            // Not running after all: leave no control file behind.
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
    };
    let api = tokio::spawn(tincan_api::serve(api_listener, api_state));
    tracing::info!(%api_addr, "local API listening");
    eprintln!("Local API on http://{api_addr} (Parse serverURL http://{api_addr}/parse)");

    let node = Arc::new(Mutex::new(Some(node)));
    let slots = Arc::new(Semaphore::new(MAX_CONCURRENT_REQUESTS));
    let token = Arc::new(control.token);
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        continue;
                    }
                };
                let Ok(permit) = slots.clone().acquire_owned().await else { break };
                let (node, token) = (node.clone(), token.clone());
                tokio::spawn(async move {
                    if let Err(e) = handle(stream, node, &token).await {
                        tracing::debug!(%peer, error = %e, "control request failed");
                    }
                    drop(permit);
                });
            }
        }
    }
    eprintln!("Stopping.");
    api.abort();
    let _ = std::fs::remove_file(&path);
    // Wait for requests in flight, stop the mesh, then close the store.
    let _ = slots.acquire_many(MAX_CONCURRENT_REQUESTS as u32).await;
    voice.leave();
    mesh.shutdown().await;
    if let Ok(mut n) = node.lock() {
        n.take();
    }
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {},
                    _ = term.recv() => {},
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Compares tokens in time independent of where they differ.
fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

async fn handle(stream: TcpStream, node: Arc<Mutex<Option<Node>>>, token: &str) -> Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read.take(MAX_LINE_BYTES));
    let mut line = String::new();
    reader.read_line(&mut line).await?;
    let response = match serde_json::from_str::<Request>(&line) {
        Err(e) => Response {
            error: Some(format!("bad control request: {e}")),
            ..Default::default()
        },
        Ok(req) if !same_token(&req.token, token) => Response {
            error: Some("bad control token: is this the node of another data directory?".into()),
            ..Default::default()
        },
        Ok(req) => {
            // Commands touch the store (fsync): keep them off the async threads.
            tokio::task::spawn_blocking(move || execute(&node, req))
                .await
                .unwrap_or_else(|e| Response {
                    error: Some(format!("the command failed unexpectedly: {e}")),
                    ..Default::default()
                })
        }
    };
    let mut text = serde_json::to_string(&response)?;
    text.push('\n');
    write.write_all(text.as_bytes()).await?;
    write.shutdown().await?;
    Ok(())
}

fn execute(node: &Mutex<Option<Node>>, req: Request) -> Response {
    let mut guard = match node.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    let Some(n) = guard.take() else {
        return Response {
            error: Some("the node is shutting down".into()),
            ..Default::default()
        };
    };
    let ctx = Ctx::with_node(n);
    let result = dispatch(&ctx, req.command.into_command());
    let (n, outputs) = ctx.into_parts();
    *guard = n;
    match result {
        Ok(()) => Response {
            outputs: Some(outputs),
            error: None,
        },
        Err(e) => Response {
            outputs: None,
            error: Some(format!("{e:#}")),
        },
    }
}
