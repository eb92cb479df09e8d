//! `tincan up`: the node's main loop. It keeps the unlocked node, serves the
//! local control endpoint (see [`crate::control`]) and stops cleanly on
//! Ctrl-C or SIGTERM, removing its control file. Control connections are
//! bounded in number and in time, and shutdown does not wait for them:
//! only a command already running gets a few seconds (`SHUTDOWN_GRACE`) to finish.

use std::sync::{Arc, Mutex};

use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::cli::{Ctx, dispatch};
use crate::control::{
    ControlFile, HELLO_TIMEOUT, MAX_HELLO_BYTES, MAX_LINE_BYTES, REQUEST_TIMEOUT, Request,
    Response, check_hello, control_path,
};
use crate::node::Node;

/// Most control commands run at once; more (from clients that showed the
/// token) wait for a free slot.
const MAX_CONCURRENT_REQUESTS: usize = 16;

/// Most control connections open at once, whatever their stage; past it a
/// new connection is closed at once (a local process without the token
/// cannot make the node hold more than this).
const MAX_CONNECTIONS: usize = 64;

/// How long writing an answer may take before the client is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long shutdown waits for control commands still running. Connections
/// that hang are not waited for at all.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// How long the runtime waits for blocking work (a control command in the
/// store) when the node stops, after [`SHUTDOWN_GRACE`].
const RUNTIME_SHUTDOWN: Duration = Duration::from_secs(2);

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
    /// Ask the home router (UPnP-IGD) to forward the mesh ports.
    pub port_mapping: bool,
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
    /// Where to serve Prometheus metrics (None: not served).
    pub metrics: Option<std::net::SocketAddr>,
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
    config.port_mapping = options.port_mapping;
    config.agent = format!("tincan/{}", env!("CARGO_PKG_VERSION"));
    Ok(config)
}

/// Aborts a task when dropped (the metrics endpoint stops with the node).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs the node until Ctrl-C or SIGTERM.
pub fn run(node: Node, options: UpOptions) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(serve(node, options));
    // A command still running in the store must not keep the process up.
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
    result
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
    let _metrics = match options.metrics {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
                format!("cannot serve metrics on {addr}: choose another --metrics address")
            })?;
            eprintln!(
                "Metrics on http://{}/metrics",
                listener.local_addr().unwrap_or(addr)
            );
            let m = mesh.clone();
            let render: std::sync::Arc<dyn Fn() -> String + Send + Sync> =
                std::sync::Arc::new(move || m.metrics_text());
            Some(AbortOnDrop(tokio::spawn(tincan_mesh::metrics::serve(
                listener, render,
            ))))
        }
        None => None,
    };
    // The owner's side of sealed rooms: grants for the users unlocked here.
    let _upkeep = AbortOnDrop(tokio::spawn(tincan_mesh::upkeep::run_key_upkeep(
        mesh.clone(),
        node.store.clone(),
        node.clock(),
    )));
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
            .writer(node.writer.clone())
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
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
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
                // Never wait here: the loop must stay free to see Ctrl-C.
                let Ok(connection) = connections.clone().try_acquire_owned() else {
                    tracing::info!(%peer, "control connection refused: {MAX_CONNECTIONS} already open");
                    continue;
                };
                let (node, token, slots) = (node.clone(), token.clone(), slots.clone());
                tokio::spawn(async move {
                    if let Err(e) = handle(stream, node, &token, &slots).await {
                        tracing::debug!(%peer, error = %e, "control request failed");
                    }
                    drop(connection);
                });
            }
        }
    }
    eprintln!("Stopping.");
    api.abort();
    let _ = std::fs::remove_file(&path);
    // Commands in flight get a moment to finish; connections that hang
    // (a client that sends nothing, or never reads) are not waited for.
    if tokio::time::timeout(
        SHUTDOWN_GRACE,
        slots.acquire_many(MAX_CONCURRENT_REQUESTS as u32),
    )
    .await
    .is_err()
    {
        tracing::warn!("control commands still running after {SHUTDOWN_GRACE:?}: stopping anyway");
    }
    voice.leave();
    mesh.shutdown().await;
    // A command still running holds the node: the store then closes when
    // the process ends (redb commits are durable, an open file is safe).
    match node.try_lock() {
        Ok(mut n) => {
            n.take();
        }
        Err(std::sync::TryLockError::Poisoned(p)) => {
            p.into_inner().take();
        }
        Err(std::sync::TryLockError::WouldBlock) => {
            tracing::warn!(
                "a control command still holds the store; it closes when the process ends"
            );
        }
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

/// An answer line with a bounded write: a client that does not read is dropped.
async fn answer(write: &mut tokio::net::tcp::OwnedWriteHalf, response: &Response) -> Result<()> {
    let mut text = serde_json::to_string(response)?;
    text.push('\n');
    tokio::time::timeout(WRITE_TIMEOUT, write.write_all(text.as_bytes()))
        .await
        .map_err(|_| anyhow!("the client did not read the answer in {WRITE_TIMEOUT:?}"))??;
    Ok(())
}

fn error_response(message: String) -> Response {
    Response {
        error: Some(message),
        ..Default::default()
    }
}

/// Serves one control connection: the token frame first (at most
/// [`MAX_HELLO_BYTES`] read, within [`HELLO_TIMEOUT`]), and only then the
/// request line.
async fn handle(
    stream: TcpStream,
    node: Arc<Mutex<Option<Node>>>,
    token: &str,
    slots: &Arc<Semaphore>,
) -> Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read.take(MAX_HELLO_BYTES));
    let mut hello = Vec::new();
    let outcome = tokio::time::timeout(HELLO_TIMEOUT, reader.read_until(b'\n', &mut hello)).await;
    let read_bytes = MAX_HELLO_BYTES - reader.get_ref().limit();
    let refusal = match outcome {
        Err(_) => Some(format!(
            "bad control request: no token within {HELLO_TIMEOUT:?}"
        )),
        Ok(Err(e)) => return Err(e.into()),
        Ok(Ok(_)) => check_hello(&hello, token).err().map(|e| e.to_string()),
    };
    if let Some(why) = refusal {
        tracing::info!("control connection refused ({why}) after reading {read_bytes} bytes");
        let _ = answer(&mut write, &error_response(why)).await;
        let _ = write.shutdown().await;
        return Ok(());
    }
    answer(&mut write, &Response::default()).await?;
    // The token is checked: the request may be as large as an import bundle.
    reader.get_mut().set_limit(MAX_LINE_BYTES);
    let mut line = String::new();
    tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line))
        .await
        .map_err(|_| anyhow!("no request within {REQUEST_TIMEOUT:?} of the token"))??;
    // A slot only to run the command: a client that hangs before sending
    // it holds none, so shutdown does not wait for it.
    let permit = slots.clone().acquire_owned().await?;
    let response = match serde_json::from_str::<Request>(&line) {
        Err(e) => error_response(format!("bad control request: {e}")),
        Ok(req) => {
            // Commands touch the store (fsync): keep them off the async threads.
            tokio::task::spawn_blocking(move || execute(&node, req))
                .await
                .unwrap_or_else(|e| error_response(format!("the command failed unexpectedly: {e}")))
        }
    };
    drop(permit);
    answer(&mut write, &response).await?;
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
