//! The voice endpoint: one quinn endpoint per node, on its own UDP socket,
//! separate from libp2p's (libp2p's QUIC transport turns datagrams off).
//!
//! TLS comes from the node key through libp2p-tls, so a voice connection
//! proves the same PeerId as the control plane; the ALPN is ours
//! ([`ALPN`]), so a libp2p QUIC peer and a voice peer never mistake each
//! other. A dialler names the PeerId it expects and the handshake fails on
//! any other; an acceptor learns the PeerId from the certificate and leaves
//! the decision (is it a member of the room?) to its caller.
//!
//! Voice is never queued: the datagram send buffer holds a few frames and
//! quinn drops the oldest when it is full ([`VoiceConnection::send`] never
//! waits).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use libp2p_identity::{Keypair, PeerId};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::pki_types::CertificateDer;

use crate::protocol::{MAX_DATAGRAM_LEN, VoiceDatagram};

/// The ALPN of tincan's voice connections.
pub const ALPN: &[u8] = b"tincan-voice/1";

/// Tuning of a voice endpoint.
#[derive(Clone, Debug)]
pub struct EndpointConfig {
    /// Bytes of datagrams waiting to be sent per connection; past it quinn
    /// drops the oldest. A few frames: stale voice is worse than none.
    /// (Bytes, not frames: voice frames are far smaller than the largest
    /// datagram, so a count of largest datagrams would hold a second.)
    pub datagram_send_buffer: usize,
    /// Keep-alive: NAT mappings and silence both need traffic.
    pub keep_alive: Duration,
    /// A peer silent for this long (no keep-alives either) is gone.
    pub idle_timeout: Duration,
    /// Delay, jitter and loss on what the socket sends (tests and
    /// measurements only; see [`crate::impair`]).
    pub impairment: Option<crate::impair::Impairment>,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        EndpointConfig {
            // About 8 voice frames (80 to 250 bytes each with redundancy),
            // and always room for one datagram of the largest size: past
            // it quinn drops the oldest, so at most some 80 ms of stale
            // voice ever waits behind congestion control.
            datagram_send_buffer: MAX_DATAGRAM_LEN + 800,
            keep_alive: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(10),
            impairment: None,
        }
    }
}

/// Binding the endpoint failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EndpointError {
    /// The node key seed is not an ed25519 seed.
    #[error("the node key seed is not usable: {0}")]
    Key(String),
    /// TLS configuration from the node key failed.
    #[error("cannot build TLS from the node key: {0}")]
    Tls(String),
    /// The UDP socket could not be bound.
    #[error("cannot bind the voice socket on {addr}: {source}: choose another address or port")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// A voice connection could not be made or accepted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The handshake failed (unreachable, timed out, or the peer is not the
    /// node we asked for).
    #[error("voice connection failed: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// The connection could not even be started.
    #[error("cannot start a voice connection: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// TLS configuration failed.
    #[error("cannot build TLS for the connection: {0}")]
    Tls(String),
    /// The peer's certificate does not carry a libp2p identity.
    #[error("the peer's certificate carries no usable node identity")]
    NoIdentity,
    /// The peer does not do QUIC datagrams, so it cannot carry voice.
    #[error("the peer does not support QUIC datagrams")]
    NoDatagrams,
}

fn transport(config: &EndpointConfig) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.datagram_send_buffer_size(config.datagram_send_buffer)
        .keep_alive_interval(Some(config.keep_alive));
    // An idle timeout too large for quinn's varint is a programming error
    // of ours, not input: fall back to quinn's default then.
    if let Ok(idle) = quinn::IdleTimeout::try_from(config.idle_timeout) {
        t.max_idle_timeout(Some(idle));
    }
    Arc::new(t)
}

/// A node's voice endpoint.
pub struct VoiceEndpoint {
    endpoint: quinn::Endpoint,
    keypair: Keypair,
    transport: Arc<quinn::TransportConfig>,
    punch: std::net::UdpSocket,
}

/// The payload of a hole-punching packet: a QUIC short-header packet has
/// the fixed bit set, these bytes do not, so no QUIC stack takes them for one.
const PUNCH: &[u8] = b"\x00tincan-punch";

impl std::fmt::Debug for VoiceEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VoiceEndpoint")
            .field("peer_id", &self.peer_id())
            .field("local_addr", &self.endpoint.local_addr().ok())
            .finish()
    }
}

impl VoiceEndpoint {
    /// Binds an endpoint on `addr` (port 0: any) with the node key's seed
    /// (`tincan_core::NodeKey::seed()`), on the current tokio runtime.
    pub fn bind(
        node_key_seed: [u8; 32],
        addr: SocketAddr,
        config: &EndpointConfig,
    ) -> Result<Self, EndpointError> {
        let mut seed = node_key_seed;
        let keypair = Keypair::ed25519_from_bytes(&mut seed)
            .map_err(|e| EndpointError::Key(e.to_string()))?;
        let mut tls = libp2p_tls::make_server_config(&keypair)
            .map_err(|e| EndpointError::Tls(e.to_string()))?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let quic =
            QuicServerConfig::try_from(tls).map_err(|e| EndpointError::Tls(e.to_string()))?;
        let transport = transport(config);
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic));
        server.transport_config(transport.clone());
        let socket = std::net::UdpSocket::bind(addr)
            .map_err(|source| EndpointError::Bind { addr, source })?;
        // A clone of the socket sends hole-punching packets from the very
        // port (and so the very NAT mapping) quinn uses.
        let punch = socket
            .try_clone()
            .map_err(|source| EndpointError::Bind { addr, source })?;
        punch
            .set_nonblocking(true)
            .map_err(|source| EndpointError::Bind { addr, source })?;
        let runtime = quinn::default_runtime().ok_or_else(|| EndpointError::Bind {
            addr,
            source: std::io::Error::other("no async runtime: call bind inside tokio"),
        })?;
        let socket = runtime
            .wrap_udp_socket(socket)
            .map_err(|source| EndpointError::Bind { addr, source })?;
        let socket: Arc<dyn quinn::AsyncUdpSocket> = match config.impairment {
            Some(imp) => Arc::new(crate::impair::ImpairedSocket::new(socket, imp)),
            None => socket,
        };
        let endpoint = quinn::Endpoint::new_with_abstract_socket(
            quinn::EndpointConfig::default(),
            Some(server),
            socket,
            runtime,
        )
        .map_err(|source| EndpointError::Bind { addr, source })?;
        Ok(VoiceEndpoint {
            endpoint,
            keypair,
            transport,
            punch,
        })
    }

    /// Sends a few bytes to `addr` from the voice socket, so that our NAT
    /// opens a mapping towards it and lets its packets in. quinn ignores
    /// such packets on arrival (they are not QUIC), so both sides can punch
    /// while one of them dials. Never blocks; errors are the caller's to log.
    pub fn punch(&self, addr: SocketAddr) -> std::io::Result<()> {
        self.punch.send_to(PUNCH, addr).map(|_| ())
    }

    /// This node's PeerId, as the voice TLS proves it.
    pub fn peer_id(&self) -> PeerId {
        self.keypair.public().to_peer_id()
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Connects to the node `expected` at `addr`; fails unless the peer
    /// proves that PeerId.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        expected: PeerId,
    ) -> Result<VoiceConnection, ConnectError> {
        let mut tls = libp2p_tls::make_client_config(&self.keypair, Some(expected))
            .map_err(|e| ConnectError::Tls(e.to_string()))?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let quic = QuicClientConfig::try_from(tls).map_err(|e| ConnectError::Tls(e.to_string()))?;
        let mut client = quinn::ClientConfig::new(Arc::new(quic));
        client.transport_config(self.transport.clone());
        // libp2p-tls checks the peer by its certificate, not a DNS name.
        let conn = self.endpoint.connect_with(client, addr, "tincan")?.await?;
        VoiceConnection::new(conn)
    }

    /// Waits for the next incoming connection; `None` once the endpoint is
    /// closed. The caller decides whether the peer may stay.
    pub async fn accept(&self) -> Option<Result<VoiceConnection, ConnectError>> {
        let incoming = self.endpoint.accept().await?;
        Some(match incoming.await {
            Ok(conn) => VoiceConnection::new(conn),
            Err(e) => Err(e.into()),
        })
    }

    /// Waits for the next dialler, without waiting for its handshake: run
    /// [`Accepting::finish`] in a task of its own, so that one slow or
    /// silent dialler never holds up the others. `None` once closed.
    pub async fn accept_incoming(&self) -> Option<Accepting> {
        self.endpoint.accept().await.map(Accepting)
    }

    /// Closes every connection and the socket.
    pub fn close(&self) {
        self.endpoint.close(0u32.into(), b"bye");
    }
}

/// A dialler whose handshake has not finished yet.
#[derive(Debug)]
pub struct Accepting(quinn::Incoming);

impl Accepting {
    /// Where the dialler's first packet came from.
    pub fn remote_addr(&self) -> SocketAddr {
        self.0.remote_address()
    }

    /// Completes the handshake (bounded by the idle timeout).
    pub async fn finish(self) -> Result<VoiceConnection, ConnectError> {
        VoiceConnection::new(self.0.await?)
    }

    /// Refuses the dialler without a handshake (too many at once).
    pub fn refuse(self) {
        self.0.refuse();
    }
}

/// A voice connection to one peer.
#[derive(Clone, Debug)]
pub struct VoiceConnection {
    conn: quinn::Connection,
    peer: PeerId,
}

impl VoiceConnection {
    fn new(conn: quinn::Connection) -> Result<Self, ConnectError> {
        let peer = conn
            .peer_identity()
            .and_then(|id| id.downcast::<Vec<CertificateDer<'static>>>().ok())
            .and_then(|certs| {
                certs
                    .first()
                    .and_then(|c| libp2p_tls::certificate::parse(c).ok().map(|p| p.peer_id()))
            })
            .ok_or(ConnectError::NoIdentity)?;
        if conn.max_datagram_size().is_none() {
            conn.close(1u32.into(), b"datagrams required");
            return Err(ConnectError::NoDatagrams);
        }
        Ok(VoiceConnection { conn, peer })
    }

    /// The peer's PeerId, proven by its certificate.
    pub fn peer_id(&self) -> PeerId {
        self.peer
    }

    /// The peer's address (it changes if the peer's path migrates).
    pub fn remote_addr(&self) -> SocketAddr {
        self.conn.remote_address()
    }

    /// Sends a voice datagram now, or drops it: never waits. `false` when
    /// it could not be handed to quinn (connection gone, or too large for
    /// the path).
    pub fn send(&self, datagram: &VoiceDatagram) -> bool {
        // quinn takes ownership of each datagram's bytes, so encode into a
        // fresh buffer and hand it over without copying.
        match datagram.encode() {
            Ok(bytes) => self.conn.send_datagram(bytes.into()).is_ok(),
            Err(_) => false,
        }
    }

    /// Sends bytes that already are an encoded datagram (a relay forwarding
    /// what it received), without copying; never waits, like [`Self::send`].
    pub fn send_encoded(&self, bytes: bytes::Bytes) -> bool {
        self.conn.send_datagram(bytes).is_ok()
    }

    /// The next datagram as quinn holds it, without copying.
    pub async fn recv_bytes(&self) -> Result<bytes::Bytes, quinn::ConnectionError> {
        self.conn.read_datagram().await
    }

    /// The next datagram from the peer (raw bytes: parse them with
    /// [`crate::VoiceDatagramRef::parse`]); an error once the connection is gone.
    pub async fn recv(&self) -> Result<Vec<u8>, quinn::ConnectionError> {
        self.conn.read_datagram().await.map(|b| b.to_vec())
    }

    /// Opens the control stream (the dialler does, right after connecting).
    pub async fn open_control(
        &self,
    ) -> Result<(quinn::SendStream, quinn::RecvStream), quinn::ConnectionError> {
        self.conn.open_bi().await
    }

    /// Accepts the control stream the dialler opened.
    pub async fn accept_control(
        &self,
    ) -> Result<(quinn::SendStream, quinn::RecvStream), quinn::ConnectionError> {
        self.conn.accept_bi().await
    }

    /// quinn's counters for this connection (packets sent and lost, bytes,
    /// path MTU), for link statistics.
    pub fn stats(&self) -> quinn::ConnectionStats {
        self.conn.stats()
    }

    /// Resolves when the connection has closed, with the reason.
    pub async fn closed(&self) -> quinn::ConnectionError {
        self.conn.closed().await
    }

    /// Whether the connection has closed.
    pub fn close_reason(&self) -> Option<quinn::ConnectionError> {
        self.conn.close_reason()
    }

    /// Smoothed round-trip time.
    pub fn rtt(&self) -> Duration {
        self.conn.rtt()
    }

    /// Closes the connection.
    pub fn close(&self) {
        self.conn.close(0u32.into(), b"bye");
    }
}
