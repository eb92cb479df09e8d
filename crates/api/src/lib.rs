//! tincan's local HTTP API, for apps and games on the same machine.
//!
//! - `/parse`: the Parse REST dialect for the classes `_User`, `Room`,
//!   `Channel` and `RoomLog`, so apps built on the Parse SDKs work with
//!   `serverURL` pointed at the node; LiveQuery on the same path over a
//!   WebSocket (what the Parse SDKs open by default).
//! - `/graphql`: the same model in GraphQL, with subscriptions over a
//!   WebSocket, and a GraphiQL page.
//! - `/v1`: our own node status, mesh peers and voice controls.
//! - `/openapi.json`: the OpenAPI document of `/parse` and `/v1`.
//! - `/`: the web control panel (`web.rs`), a page that uses the above.
//!
//! A write becomes a record signed by the logged-in user's key, applied to
//! the store (which checks the rules: what they forbid fails with 119 and
//! changes nothing) and gossiped. Wiring, from `node/`:
//!
//! ```no_run
//! # async fn wire(store: std::sync::Arc<tincan_store::Store>, dir: tincan_store::datadir::DataDir,
//! #               identity: &tincan_core::keystore::Identity) -> Result<(), Box<dyn std::error::Error>> {
//! let listener = tokio::net::TcpListener::bind(("127.0.0.1", 1337)).await?;
//! let state = tincan_api::ApiState::builder(store, dir, identity).build()?;
//! tokio::spawn(tincan_api::serve(listener, state));
//! # Ok(()) }
//! ```
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod accounts;
mod acl;
pub mod error;
mod graphql;
mod livequery;
pub mod model;
mod openapi;
mod ops;
pub mod query;
mod rest;
mod v1;
pub mod voice;
mod web;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::{HeaderName, HeaderValue, Method};
use tincan_core::keystore::{Identity, KdfParams};
use tincan_store::Store;
use tincan_store::clock::StoreClock;
use tincan_store::datadir::DataDir;
use tower_http::cors::{AllowOrigin, CorsLayer};

pub use accounts::{Session, SessionLimits};
pub use error::ParseError;
pub use voice::{
    ChannelPresence, Devices, LinkStats, Participant, VoiceControl, VoiceEvent, VoiceStatus,
};

/// Tuning of the API.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// Key derivation for accounts made by sign-up.
    pub kdf: KdfParams,
    /// Sessions and rate limits.
    pub limits: SessionLimits,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// How long joining an unknown room waits for it to arrive from peers.
    pub room_fetch_timeout: Duration,
    /// Origins allowed by CORS besides the node's own (`http://127.0.0.1:PORT`
    /// and `http://localhost:PORT`, where the web UI is served).
    pub extra_origins: Vec<String>,
    /// Most LiveQuery and GraphQL WebSocket connections at once.
    pub max_websockets: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            kdf: KdfParams::RECOMMENDED,
            limits: SessionLimits::default(),
            max_body_bytes: 64 * 1024,
            room_fetch_timeout: Duration::from_secs(15),
            extra_origins: Vec::new(),
            max_websockets: 256,
        }
    }
}

/// Why the API state could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The accounts file could not be read.
    #[error("{0}")]
    Accounts(String),
}

pub(crate) struct Inner {
    pub(crate) store: Arc<Store>,
    /// Every write goes through it: one durable commit for many.
    pub(crate) writer: tincan_store::GroupWriter,
    pub(crate) mesh: Option<tincan_mesh::Mesh>,
    pub(crate) accounts: accounts::Accounts,
    pub(crate) clock: Arc<StoreClock>,
    pub(crate) voice: Option<Arc<dyn VoiceControl>>,
    pub(crate) config: ApiConfig,
    pub(crate) started: Instant,
    pub(crate) websockets: Arc<tokio::sync::Semaphore>,
    pub(crate) next_client: std::sync::atomic::AtomicU64,
    /// Held while a `/v1` voice control checks who holds the session and
    /// acts, so that two accounts' controls never interleave.
    pub(crate) voice_control: std::sync::Mutex<()>,
}

/// Everything the API serves from. Cheap to clone.
#[derive(Clone)]
pub struct ApiState {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState")
            .field("store", &self.inner.store)
            .finish_non_exhaustive()
    }
}

/// Builds an [`ApiState`].
pub struct ApiStateBuilder<'a> {
    store: Arc<Store>,
    dir: DataDir,
    identity: &'a Identity,
    mesh: Option<tincan_mesh::Mesh>,
    clock: Option<Arc<StoreClock>>,
    writer: Option<tincan_store::GroupWriter>,
    voice: Option<Arc<dyn VoiceControl>>,
    config: ApiConfig,
}

impl<'a> ApiStateBuilder<'a> {
    /// Gossips writes and follows rooms through this mesh.
    pub fn mesh(mut self, mesh: tincan_mesh::Mesh) -> Self {
        self.mesh = Some(mesh);
        self
    }

    /// Shares the node's write clock (`Node::clock`), so records written
    /// through the API and the CLI order after each other.
    pub fn clock(mut self, clock: Arc<StoreClock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Shares the node's group-commit writer (`Node::writer`), so writes
    /// through the API and the CLI share durable commits; without one the
    /// API starts its own on the store.
    pub fn writer(mut self, writer: tincan_store::GroupWriter) -> Self {
        self.writer = Some(writer);
        self
    }

    /// Plugs in the voice session; without one `/v1/voice` answers 503.
    pub fn voice(mut self, voice: Arc<dyn VoiceControl>) -> Self {
        self.voice = Some(voice);
        self
    }

    /// Replaces the default configuration.
    pub fn config(mut self, config: ApiConfig) -> Self {
        self.config = config;
        self
    }

    /// Loads the accounts and makes the state.
    pub fn build(self) -> Result<ApiState, BuildError> {
        let accounts = accounts::Accounts::open(
            self.dir,
            self.identity,
            self.config.kdf,
            self.config.limits.clone(),
        )
        .map_err(BuildError::Accounts)?;
        let writer = self
            .writer
            .unwrap_or_else(|| tincan_store::GroupWriter::new(self.store.clone()));
        Ok(ApiState {
            inner: Arc::new(Inner {
                writer,
                store: self.store,
                mesh: self.mesh,
                accounts,
                clock: self.clock.unwrap_or_default(),
                voice: self.voice,
                websockets: Arc::new(tokio::sync::Semaphore::new(self.config.max_websockets)),
                config: self.config,
                started: Instant::now(),
                next_client: std::sync::atomic::AtomicU64::new(1),
                voice_control: std::sync::Mutex::new(()),
            }),
        })
    }
}

impl ApiState {
    /// Starts building the state for the node whose store is `store`, data
    /// directory `dir` and unlocked identity `identity` (its username and
    /// password log in through the API too).
    pub fn builder(store: Arc<Store>, dir: DataDir, identity: &Identity) -> ApiStateBuilder<'_> {
        ApiStateBuilder {
            store,
            dir,
            identity,
            mesh: None,
            clock: None,
            writer: None,
            voice: None,
            config: ApiConfig::default(),
        }
    }
}

/// The Host header values the API answers to when it serves on `local`:
/// `127.0.0.1:PORT`, `localhost:PORT`, `[::1]:PORT`, and `local` itself
/// when it is another address (`--api-listen`). Lower case.
pub fn allowed_hosts(local: SocketAddr) -> Vec<String> {
    let port = local.port();
    let mut hosts = vec![
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("[::1]:{port}"),
    ];
    let own = local.to_string();
    if !local.ip().is_unspecified() && !hosts.contains(&own) {
        hosts.push(own);
    }
    hosts
}

/// Whether `host` (a Host header or a request target's authority) names
/// this API: one of `allowed`, or, when the API listens on every address
/// (`--api-listen 0.0.0.0`), any IP address with its port. A DNS
/// rebinding page needs a name of its own to be same-origin with the node,
/// and an address literal is not one.
fn host_allowed(host: &str, allowed: &[String], local: SocketAddr) -> bool {
    let host = host.trim().to_ascii_lowercase();
    if allowed.contains(&host) {
        return true;
    }
    // Browsers leave out the default port.
    if local.port() == 80 && allowed.iter().any(|a| a.strip_suffix(":80") == Some(&host)) {
        return true;
    }
    local.ip().is_unspecified()
        && host
            .parse::<SocketAddr>()
            .is_ok_and(|a| a.port() == local.port())
}

/// The router, for a node reached at `local` (its own origin passes CORS,
/// its own host names pass the Host check).
pub fn router(state: ApiState, local: SocketAddr) -> Router {
    let port = local.port();
    let mut origins: Vec<HeaderValue> = [
        format!("http://127.0.0.1:{port}"),
        format!("http://localhost:{port}"),
    ]
    .into_iter()
    .chain(state.inner.config.extra_origins.iter().cloned())
    .filter_map(|o| HeaderValue::from_str(&o).ok())
    .collect();
    if !local.ip().is_loopback() && !local.ip().is_unspecified() {
        origins.extend(HeaderValue::from_str(&format!("http://{local}")).ok());
    }
    let allowed = Arc::new(origins.clone());
    let hosts = Arc::new(allowed_hosts(local));
    let cors = CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE])
        .allow_headers([
            HeaderName::from_static("content-type"),
            HeaderName::from_static("x-parse-application-id"),
            HeaderName::from_static("x-parse-session-token"),
            HeaderName::from_static("x-parse-javascript-key"),
            HeaderName::from_static("x-parse-client-version"),
            HeaderName::from_static("x-parse-installation-id"),
            HeaderName::from_static("x-parse-revocable-session"),
        ]);
    Router::new()
        .merge(rest::routes())
        .merge(graphql::routes(&state))
        .merge(v1::routes())
        .merge(openapi::routes())
        .merge(web::routes())
        .fallback(rest::not_found)
        .layer(axum::middleware::from_fn(move |req, next| {
            refuse_foreign_origins(allowed.clone(), req, next)
        }))
        .layer(cors)
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            rest::panic_response,
        ))
        // Outermost: before CORS, WebSocket upgrades or any handler.
        .layer(axum::middleware::from_fn(move |req, next| {
            refuse_foreign_hosts(hosts.clone(), local, req, next)
        }))
        .with_state(state)
}

/// Refuses requests for a host other than this API (421): a web page on a
/// name of its own that resolves to 127.0.0.1 (DNS rebinding) is
/// same-origin with itself, so the Origin check and CORS let it through;
/// its requests still carry its own name as Host. Both the Host header and
/// an absolute request target must name this API, and one must be there.
async fn refuse_foreign_hosts(
    hosts: Arc<Vec<String>>,
    local: SocketAddr,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let header = req
        .headers()
        .get(axum::http::header::HOST)
        .map(|h| h.to_str().unwrap_or("(not text)"));
    let target = req.uri().authority().map(|a| a.as_str());
    let named: Vec<&str> = header.into_iter().chain(target).collect();
    if !named.is_empty() && named.iter().all(|h| host_allowed(h, &hosts, local)) {
        return next.run(req).await;
    }
    use axum::response::IntoResponse;
    let asked = if named.is_empty() {
        "no Host".to_owned()
    } else {
        format!("Host {:?}", named.join(", "))
    };
    let body = ParseError::forbidden(format!(
        "this node's API answers only to {}: a request for {asked} is refused (a web page on another name could be reaching it through DNS rebinding); use one of those addresses",
        hosts.join(", ")
    ))
    .to_json();
    (
        axum::http::StatusCode::MISDIRECTED_REQUEST,
        axum::Json(body),
    )
        .into_response()
}

/// Refuses requests that a web page of another origin makes. CORS alone
/// does not stop them: the Parse JS SDK's `text/plain` POSTs (and WebSocket
/// upgrades) need no preflight, so a foreign page could sign up accounts or
/// guess passwords, unable to read the answers but with the side effects.
/// Browsers send `Origin` on such requests; apps outside a browser send
/// none and pass.
async fn refuse_foreign_origins(
    allowed: Arc<Vec<HeaderValue>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    match req.headers().get(axum::http::header::ORIGIN) {
        Some(origin) if !allowed.iter().any(|a| a == origin) => ParseError::forbidden(
            "requests from web pages of other origins are refused: serve your page from the node, or add its origin to the API's allowed origins",
        )
        .into_response(),
        _ => next.run(req).await,
    }
}

/// Serves the API on `listener` until the future is dropped (or the
/// listener fails). Follows the rooms of every local account first.
pub async fn serve(listener: tokio::net::TcpListener, state: ApiState) -> std::io::Result<()> {
    let local = listener.local_addr()?;
    state.follow_local_rooms().await;
    let app = router(state, local);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hosts_allowed_follow_the_listen_address() {
        let loopback: SocketAddr = "127.0.0.1:1337".parse().unwrap();
        let allowed = allowed_hosts(loopback);
        for ok in [
            "127.0.0.1:1337",
            "LOCALHOST:1337",
            "[::1]:1337",
            " localhost:1337 ",
        ] {
            assert!(host_allowed(ok, &allowed, loopback), "{ok}");
        }
        for bad in [
            "localhost",
            "localhost:1338",
            "localhost.:1337",
            "evil.example:1337",
            "127.0.0.2:1337",
            "192.168.1.5:1337",
            "",
        ] {
            assert!(!host_allowed(bad, &allowed, loopback), "{bad}");
        }
        // An explicit --api-listen address is allowed with its port.
        let lan: SocketAddr = "192.168.1.5:1337".parse().unwrap();
        let allowed = allowed_hosts(lan);
        assert!(host_allowed("192.168.1.5:1337", &allowed, lan));
        assert!(!host_allowed("192.168.1.6:1337", &allowed, lan));
        let other_loopback: SocketAddr = "127.0.0.2:1337".parse().unwrap();
        let allowed = allowed_hosts(other_loopback);
        assert!(host_allowed("127.0.0.2:1337", &allowed, other_loopback));
        assert_eq!(allowed.len(), 4);
        // Every address: any address literal with the port, never a name.
        let any: SocketAddr = "0.0.0.0:1337".parse().unwrap();
        let allowed = allowed_hosts(any);
        assert!(host_allowed("10.0.0.7:1337", &allowed, any));
        assert!(host_allowed("[fe80::1]:1337", &allowed, any));
        assert!(!host_allowed("10.0.0.7:80", &allowed, any));
        assert!(!host_allowed("attacker.test:1337", &allowed, any));
        // On port 80 browsers send no port.
        let web: SocketAddr = "127.0.0.1:80".parse().unwrap();
        assert!(host_allowed("localhost", &allowed_hosts(web), web));
    }
}
