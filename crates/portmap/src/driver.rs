//! The tokio driver: carries out the lease keeper's actions over UPnP-IGD
//! (igd-next) and hands its events to the node.

use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use igd_next::aio::Gateway as Igd;
use igd_next::aio::tokio::{Tokio, search_gateway};
use igd_next::{AddPortError, PortMappingProtocol, SearchOptions};
use tokio::sync::mpsc;

use crate::lease::{Action, Event, Gateway, LeaseConfig, Leases, Transport, Want};

/// How long one SSDP search waits for a router to answer.
const SEARCH_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one request to the router may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Shown in the router's table of mappings.
const DESCRIPTION: &str = "tincan";

/// Asks the port mapper for ports; dropping it removes every mapping (best
/// effort, within a few seconds) and ends the task.
#[derive(Debug, Clone)]
pub struct PortMapper {
    wants: mpsc::Sender<Want>,
}

impl PortMapper {
    /// Starts the mapper on the current tokio runtime. Events arrive on the
    /// returned receiver (at most 64 queued; the oldest are never dropped:
    /// the mapper waits for the node to take them).
    pub fn spawn(config: LeaseConfig) -> (PortMapper, mpsc::Receiver<Event>) {
        let (wants, want_rx) = mpsc::channel(64);
        let (event_tx, events) = mpsc::channel(64);
        tokio::spawn(run(config, want_rx, event_tx));
        (PortMapper { wants }, events)
    }

    /// Keep `want` mapped. Never blocks; a request beyond 64 waiting ones
    /// is dropped (a node has a handful of sockets).
    pub fn want(&self, want: Want) {
        let _ = self.wants.try_send(want);
    }
}

async fn run(config: LeaseConfig, mut wants: mpsc::Receiver<Want>, events: mpsc::Sender<Event>) {
    let mut leases = Leases::new(config, Instant::now());
    let mut igd: Option<Igd<Tokio>> = None;
    loop {
        while let Some(action) = leases.poll_action(Instant::now()) {
            carry_out(action, &mut leases, &mut igd).await;
        }
        while let Some(event) = leases.poll_event() {
            if events.send(event).await.is_err() {
                return remove_all(&mut leases, igd.as_ref()).await;
            }
        }
        let sleep = match leases.poll_timeout() {
            Some(at) => at.saturating_duration_since(Instant::now()),
            None => Duration::from_secs(3600),
        };
        tokio::select! {
            want = wants.recv() => match want {
                Some(w) => leases.want(w, Instant::now()),
                None => return remove_all(&mut leases, igd.as_ref()).await,
            },
            _ = tokio::time::sleep(sleep) => {}
        }
    }
}

async fn carry_out(action: Action, leases: &mut Leases, igd: &mut Option<Igd<Tokio>>) {
    match action {
        Action::Search => {
            let found = search().await;
            let result = found.as_ref().map(|(_, g)| *g).map_err(Clone::clone);
            match &result {
                Ok(g) => tracing::info!(
                    external = %g.external_ip,
                    local = %g.local_ip,
                    "found a UPnP router"
                ),
                Err(e) => tracing::debug!("no UPnP router: {e}"),
            }
            *igd = found.ok().map(|(igd, _)| igd);
            leases.on_search(result, Instant::now());
        }
        Action::Map {
            want,
            local,
            external_port,
            lease_secs,
        } => {
            let result = match igd {
                Some(igd) => map(igd, want.transport, local, external_port, lease_secs).await,
                None => Err("no router".to_owned()),
            };
            leases.on_mapped(want, result, Instant::now());
        }
        Action::Remove {
            transport,
            external_port,
        } => {
            if let Some(igd) = igd {
                let _ = tokio::time::timeout(
                    REQUEST_TIMEOUT,
                    igd.remove_port(protocol(transport), external_port),
                )
                .await;
            }
        }
    }
}

async fn search() -> Result<(Igd<Tokio>, Gateway), String> {
    let options = SearchOptions {
        timeout: Some(SEARCH_TIMEOUT),
        single_search_timeout: Some(SEARCH_TIMEOUT),
        ..SearchOptions::default()
    };
    let igd = search_gateway(options).await.map_err(|e| e.to_string())?;
    let external_ip = tokio::time::timeout(REQUEST_TIMEOUT, igd.get_external_ip())
        .await
        .map_err(|_| "the router did not tell its external address in time".to_owned())?
        .map_err(|e| format!("the router did not tell its external address: {e}"))?;
    let local_ip = local_ip_towards(igd.addr).await?;
    Ok((
        igd,
        Gateway {
            local_ip,
            external_ip,
        },
    ))
}

/// Our address on the interface that reaches the router (the kernel picks
/// it for a connected UDP socket; nothing is sent).
async fn local_ip_towards(router: SocketAddr) -> Result<std::net::Ipv4Addr, String> {
    let socket = tokio::net::UdpSocket::bind("0.0.0.0:0")
        .await
        .map_err(|e| e.to_string())?;
    socket.connect(router).await.map_err(|e| e.to_string())?;
    match socket.local_addr().map_err(|e| e.to_string())?.ip() {
        IpAddr::V4(v4) => Ok(v4),
        IpAddr::V6(_) => Err("the router is reached over IPv6; UPnP-IGD maps IPv4".into()),
    }
}

/// Maps `external_port` (or any port if that one is taken or 0) to `local`.
/// A router that only takes permanent leases gets one (removed at
/// shutdown).
async fn map(
    igd: &Igd<Tokio>,
    transport: Transport,
    local: SocketAddrV4,
    external_port: u16,
    lease_secs: u32,
) -> Result<u16, String> {
    let p = protocol(transport);
    let local = SocketAddr::V4(local);
    if external_port != 0 {
        let mut lease = lease_secs;
        for _ in 0..2 {
            match timed(igd.add_port(p, external_port, local, lease, DESCRIPTION)).await? {
                Ok(()) => return Ok(external_port),
                Err(AddPortError::OnlyPermanentLeasesSupported) if lease != 0 => lease = 0,
                Err(AddPortError::PortInUse) => break,
                Err(e) => return Err(e.to_string()),
            }
        }
    }
    timed(igd.add_any_port(p, local, lease_secs, DESCRIPTION))
        .await?
        .map_err(|e| e.to_string())
}

async fn remove_all(leases: &mut Leases, igd: Option<&Igd<Tokio>>) {
    let Some(igd) = igd else { return };
    for action in leases.shutdown() {
        if let Action::Remove {
            transport,
            external_port,
        } = action
        {
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                igd.remove_port(protocol(transport), external_port),
            )
            .await;
        }
    }
}

async fn timed<T>(request: impl std::future::Future<Output = T>) -> Result<T, String> {
    tokio::time::timeout(REQUEST_TIMEOUT, request)
        .await
        .map_err(|_| "the router did not answer in time".to_owned())
}

fn protocol(t: Transport) -> PortMappingProtocol {
    match t {
        Transport::Udp => PortMappingProtocol::UDP,
        Transport::Tcp => PortMappingProtocol::TCP,
    }
}
