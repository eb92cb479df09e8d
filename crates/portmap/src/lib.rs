//! Port mapping on home routers, so that a node behind a NAT that offers
//! UPnP-IGD is reachable directly instead of through a relay.
//!
//! [`lease::Leases`] decides (sans-IO, time passed in): search for the
//! router, refuse one whose external address is itself private (another
//! NAT outside it: a mapping would announce an address nobody reaches), map
//! each wanted port (the same external port first, any other if that one is
//! taken), renew at half the lease, withdraw an address whose renewal
//! failed, search again after repeated failures, remove everything at
//! shutdown. [`driver::PortMapper`] carries that out over igd-next on tokio.
//!
//! NAT-PMP and PCP are not spoken yet.

pub mod driver;
pub mod lease;

pub use driver::PortMapper;
pub use lease::{Event, LeaseConfig, Transport, Want};
