//! The tokio driver: carries out the lease keeper's actions over UPnP-IGD
//! (igd-next) or PCP / NAT-PMP (crab_nat) and hands its events to the node.

use std::collections::HashMap;
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

/// The router protocol found by the last search.
enum Router {
    /// UPnP-IGD, found by SSDP.
    Igd(Igd<Tokio>),
    /// PCP (RFC 6887) or NAT-PMP (RFC 6886) on the default gateway; the
    /// mappings are kept to renew and drop them (PCP ties them to a nonce).
    Pcp {
        gateway: IpAddr,
        client: IpAddr,
        mappings: HashMap<Want, crab_nat::PortMapping>,
    },
}

async fn run(config: LeaseConfig, mut wants: mpsc::Receiver<Want>, events: mpsc::Sender<Event>) {
    let mut leases = Leases::new(config, Instant::now());
    let mut router: Option<Router> = None;
    loop {
        while let Some(action) = leases.poll_action(Instant::now()) {
            carry_out(action, &mut leases, &mut router).await;
        }
        while let Some(event) = leases.poll_event() {
            if events.send(event).await.is_err() {
                return remove_all(&mut leases, router.as_mut()).await;
            }
        }
        let sleep = match leases.poll_timeout() {
            Some(at) => at.saturating_duration_since(Instant::now()),
            None => Duration::from_secs(3600),
        };
        tokio::select! {
            want = wants.recv() => match want {
                Some(w) => leases.want(w, Instant::now()),
                None => return remove_all(&mut leases, router.as_mut()).await,
            },
            _ = tokio::time::sleep(sleep) => {}
        }
    }
}

async fn carry_out(action: Action, leases: &mut Leases, router: &mut Option<Router>) {
    match action {
        Action::Search => {
            let found = search().await;
            let result = found.as_ref().map(|(_, g)| *g).map_err(Clone::clone);
            match (&found, &result) {
                (Ok((router, _)), Ok(g)) => tracing::info!(
                    external = %g.external_ip,
                    local = %g.local_ip,
                    protocol = match router {
                        Router::Igd(_) => "UPnP-IGD",
                        Router::Pcp { .. } => "PCP/NAT-PMP",
                    },
                    "found a router that maps ports"
                ),
                (_, Err(e)) => tracing::debug!("no router that maps ports: {e}"),
                _ => {}
            }
            *router = found.ok().map(|(r, _)| r);
            leases.on_search(result, Instant::now());
        }
        Action::Map {
            want,
            local,
            external_port,
            lease_secs,
        } => {
            let result = match router {
                Some(Router::Igd(igd)) => {
                    map(igd, want.transport, local, external_port, lease_secs).await
                }
                Some(Router::Pcp {
                    gateway,
                    client,
                    mappings,
                }) => map_pcp(*gateway, *client, mappings, want, external_port, lease_secs).await,
                None => Err("no router".to_owned()),
            };
            leases.on_mapped(want, result, Instant::now());
        }
        Action::Remove {
            transport,
            external_port,
        } => {
            if let Some(router) = router {
                remove(router, transport, external_port).await;
            }
        }
    }
}

/// UPnP-IGD (SSDP) and PCP / NAT-PMP on the default gateway at the same
/// time: a PCP router answers within milliseconds while an SSDP search
/// waits out its timeout, and every second without the mapping is a second
/// in which a peer's dial can hit the router unmapped (its conntrack entry
/// then keeps dropping that peer's retries). PCP wins when it answers; else
/// the SSDP result.
async fn search() -> Result<(Router, Gateway), String> {
    let igd = search_igd();
    tokio::pin!(igd);
    let pcp = tokio::select! {
        r = search_pcp() => r,
        r = &mut igd => match r {
            Ok((igd, g)) => return Ok((Router::Igd(igd), g)),
            Err(upnp) => {
                return search_pcp()
                    .await
                    .map_err(|pcp| format!("UPnP: {upnp}; PCP/NAT-PMP: {pcp}"));
            }
        },
    };
    match pcp {
        Ok(found) => Ok(found),
        Err(pcp) => match igd.await {
            Ok((igd, g)) => Ok((Router::Igd(igd), g)),
            Err(upnp) => Err(format!("UPnP: {upnp}; PCP/NAT-PMP: {pcp}")),
        },
    }
}

async fn search_pcp() -> Result<(Router, Gateway), String> {
    let gateway = default_gateway().ok_or("no default IPv4 gateway")?;
    let external = crab_nat::natpmp::external_address(IpAddr::V4(gateway), Some(pcp_timeouts()))
        .await
        .map_err(|e| format!("{gateway} did not tell its external address ({e})"))?;
    let local_ip = local_ip_towards(SocketAddr::from((gateway, 5351))).await?;
    Ok((
        Router::Pcp {
            gateway: IpAddr::V4(gateway),
            client: IpAddr::V4(local_ip),
            mappings: HashMap::new(),
        },
        Gateway {
            local_ip,
            external_ip: IpAddr::V4(external),
        },
    ))
}

/// Short retries: a router that speaks PCP answers within milliseconds on
/// its LAN, and one that does not should not hold up the search.
fn pcp_timeouts() -> crab_nat::TimeoutConfig {
    crab_nat::TimeoutConfig {
        initial_timeout: Duration::from_millis(250),
        max_retries: 2,
        max_retry_timeout: Some(Duration::from_secs(1)),
    }
}

/// The default IPv4 gateway, from the kernel's routing table (Linux);
/// None elsewhere or without one.
fn default_gateway() -> Option<std::net::Ipv4Addr> {
    let table = std::fs::read_to_string("/proc/net/route").ok()?;
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        // Iface Destination Gateway Flags ...: destination 0 is the default.
        if f.len() < 3 || f[1] != "00000000" {
            return None;
        }
        let g = u32::from_str_radix(f[2], 16).ok()?;
        // /proc prints the address in host (little-endian) byte order.
        (g != 0).then(|| std::net::Ipv4Addr::from(g.to_le_bytes()))
    })
}

/// Maps (or renews) over PCP, falling back to NAT-PMP.
async fn map_pcp(
    gateway: IpAddr,
    client: IpAddr,
    mappings: &mut HashMap<Want, crab_nat::PortMapping>,
    want: Want,
    external_port: u16,
    lease_secs: u32,
) -> Result<u16, String> {
    if let Some(mapping) = mappings.get_mut(&want) {
        if mapping.renew().await.is_ok() {
            return Ok(mapping.external_port().get());
        }
        mappings.remove(&want);
    }
    let internal = std::num::NonZeroU16::new(want.port).ok_or("port 0 cannot be mapped")?;
    let options = crab_nat::PortMappingOptions {
        external_port: std::num::NonZeroU16::new(external_port),
        lifetime_seconds: Some(lease_secs),
        timeout_config: Some(pcp_timeouts()),
    };
    let proto = match want.transport {
        Transport::Udp => crab_nat::InternetProtocol::Udp,
        Transport::Tcp => crab_nat::InternetProtocol::Tcp,
    };
    let mapping = crab_nat::PortMapping::new(gateway, client, proto, internal, options)
        .await
        .map_err(|e| e.to_string())?;
    let port = mapping.external_port().get();
    mappings.insert(want, mapping);
    Ok(port)
}

async fn remove(router: &mut Router, transport: Transport, external_port: u16) {
    match router {
        Router::Igd(igd) => {
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                igd.remove_port(protocol(transport), external_port),
            )
            .await;
        }
        Router::Pcp { mappings, .. } => {
            let want = mappings
                .iter()
                .find(|(w, m)| w.transport == transport && m.external_port().get() == external_port)
                .map(|(w, _)| *w);
            if let Some(m) = want.and_then(|w| mappings.remove(&w)) {
                let _ = tokio::time::timeout(Duration::from_secs(2), m.try_drop()).await;
            }
        }
    }
}

async fn search_igd() -> Result<(Igd<Tokio>, Gateway), String> {
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

async fn remove_all(leases: &mut Leases, router: Option<&mut Router>) {
    let Some(router) = router else { return };
    for action in leases.shutdown() {
        if let Action::Remove {
            transport,
            external_port,
        } = action
        {
            remove(router, transport, external_port).await;
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
