//! Port mapping on home routers, so that a node behind a NAT that offers
//! UPnP-IGD, PCP or NAT-PMP is reachable directly instead of through a
//! relay.
//!
//! [`lease::Leases`] decides (sans-IO, time passed in): search for the
//! router, refuse one whose external address is itself private (another
//! NAT outside it: a mapping would announce an address nobody reaches), map
//! each wanted port (the same external port first, any other if that one is
//! taken), renew at half the lease, withdraw an address whose renewal
//! failed, search again after repeated failures, remove everything at
//! shutdown. [`driver::PortMapper`] carries that out on tokio: UPnP-IGD
//! (igd-next) when a router answers SSDP, else PCP with a NAT-PMP fallback
//! (crab_nat) on the default gateway (read from /proc/net/route: Linux).

pub mod driver;
pub mod lease;

pub use driver::PortMapper;
pub use lease::{Event, LeaseConfig, Transport, Want};
