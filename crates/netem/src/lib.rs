//! tincan's one network emulator, shared by tests, benchmarks, the offline
//! audio chain, the impairing voice socket and the simulations. Sans-IO and
//! seeded: the same seed and the same calls give the same deliveries.
//!
//! - [`SimRng`]: the seeded generator (SplitMix64) every emulated choice
//!   draws from;
//! - [`LinkModel`] and [`Link`]: one direction of a link (delay, jitter,
//!   random or Gilbert-Elliott loss, reordering, duplication);
//! - [`Network`]: several nodes, directed links with their own configs,
//!   blocked paths;
//! - [`VirtualClock`]: steps to the next wakeup, as quinn-proto's tests do.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod clock;
pub mod link;
pub mod network;
pub mod rng;

pub use clock::VirtualClock;
pub use link::{Fate, Link, LinkConfig, LinkModel, LinkStats, LossModel};
pub use network::{Delivery, Network, NetworkStats, Sent};
pub use rng::SimRng;
