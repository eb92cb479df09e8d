//! Errors of mesh operations.

/// Starting a mesh node failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The node key seed is not a valid ed25519 key.
    #[error("the node key is not a valid ed25519 key ({0}); regenerate the node key")]
    Key(String),
    /// The transport or a behaviour could not be built (for instance no
    /// DNS configuration could be read).
    #[error("cannot build the libp2p node: {0}")]
    Build(String),
    /// A listen address could not be used.
    #[error("cannot listen on {addr}: {detail}; pick another address or port")]
    Listen {
        /// The address.
        addr: String,
        /// What libp2p said.
        detail: String,
    },
    /// mDNS could not start (no multicast-capable interface).
    #[error("cannot start mDNS ({0}); turn mDNS off or fix the network interface")]
    Mdns(String),
}

/// The node's task has stopped.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the mesh node has stopped; start it again")]
pub struct Stopped;

/// Publishing a record failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The local store refused the record: it breaks the rules.
    #[error("the record was not published: {0}")]
    Rejected(#[from] tincan_core::RuleError),
    /// The local store failed.
    #[error("the record was not published: {0}")]
    Storage(#[from] tincan_store::StorageError),
    /// gossipsub refused the message (too large, or no topic).
    #[error("the record was stored but could not be gossiped: {0}")]
    Gossip(String),
    /// The node has stopped.
    #[error(transparent)]
    Stopped(#[from] Stopped),
}

/// Subscribing to a room failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SubscribeError {
    /// Too many rooms.
    #[error("this node already follows {0} rooms, its limit; leave one first")]
    TooManyRooms(usize),
    /// gossipsub refused.
    #[error("cannot subscribe to the room's topic: {0}")]
    Gossip(String),
    /// The local store failed (keeping an invite's locator).
    #[error("cannot keep the invite in the store: {0}")]
    Storage(#[from] tincan_store::StorageError),
    /// The node has stopped.
    #[error(transparent)]
    Stopped(#[from] Stopped),
}

/// Dialling a peer failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DialError {
    /// libp2p refused to dial.
    #[error("cannot dial {addr}: {detail}")]
    Dial {
        /// The address.
        addr: String,
        /// What libp2p said.
        detail: String,
    },
    /// The node has stopped.
    #[error(transparent)]
    Stopped(#[from] Stopped),
}
