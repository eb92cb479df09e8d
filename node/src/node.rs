//! A node's local state: its data directory, its unlocked identity, its store
//! and its clock. Commands that write sign with the user key and apply to the
//! store like any record from a peer, so the same rules hold for both.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use tincan_core::keystore::{Identity, KdfParams, SealedIdentity};
use tincan_core::{Hlc, NodeKey, RoomId, SignedRecord, UserKey};
use tincan_store::clock::StoreClock;
pub use tincan_store::clock::wall_ms;
use tincan_store::datadir::{DataDir, NewStore};
use tincan_store::{Applied, ApplyError, GroupWriter, Store, StoreConfig};

/// The default data directory: `$XDG_DATA_HOME/tincan` (usually
/// `~/.local/share/tincan`).
pub fn default_data_dir() -> Result<PathBuf> {
    directories::ProjectDirs::from("", "", "tincan")
        .map(|d| d.data_dir().to_path_buf())
        .ok_or_else(|| anyhow!("no home directory to put the data in: pass --data-dir"))
}

/// Creates a new identity in `dir` and writes the user's profile.
pub fn init(dir: &DataDir, username: &str, password: &str, kdf: KdfParams) -> Result<Identity> {
    // Neither over an identity nor beside a store that is already there.
    dir.check_new_identity()?;
    let identity = Identity {
        username: username.to_owned(),
        user_key: UserKey::generate()?,
        node_key: Some(NodeKey::generate()?),
    };
    // Check the name against the rules before anything is written.
    let profile = tincan_core::make::profile(&identity.user_key, Hlc::new(wall_ms(), 0), username)?;
    tincan_core::rules::check_standalone(profile.record())
        .map_err(|e| anyhow!("cannot use that username: {e}"))?;
    let sealed = SealedIdentity::seal(&identity, password.as_bytes(), kdf)?;
    dir.create_identity(&sealed)?;
    let store = open_store(dir, NewStore::Allow)?;
    store.apply(profile).context("cannot write the profile")?;
    Ok(identity)
}

/// Opens the store in `dir`; a missing one is started only when
/// `new_store` allows it (see [`DataDir::open_store`]).
pub fn open_store(dir: &DataDir, new_store: NewStore) -> Result<Store> {
    Ok(dir.open_store(StoreConfig::default(), new_store)?)
}

/// The running mesh, as seen from the (blocking) command code.
#[derive(Clone, Debug)]
pub struct MeshLink {
    /// The mesh node.
    pub mesh: tincan_mesh::Mesh,
    /// The runtime it runs on, to wait for it from a blocking thread.
    pub runtime: tokio::runtime::Handle,
}

/// An unlocked node with its store open, and its mesh when `tincan up` runs.
pub struct Node {
    /// The data directory.
    pub dir: DataDir,
    /// The unlocked identity.
    pub identity: Identity,
    /// The store (shared with the mesh).
    pub store: Arc<Store>,
    /// The mesh, while `tincan up` runs.
    pub mesh: Option<MeshLink>,
    /// Group commit for every local writer (the CLI here, the API in
    /// `tincan up`: give it this one so they share commits).
    pub writer: GroupWriter,
    clock: Arc<StoreClock>,
}

impl Node {
    /// Unlocks the identity in `dir` with `password` and opens the store
    /// (started empty if missing only when `new_store` allows it).
    pub fn unlock(dir: DataDir, password: &str, new_store: NewStore) -> Result<Node> {
        let sealed = dir.load_identity()?;
        let identity = sealed.open(password.as_bytes())?;
        if identity.node_key.is_none() {
            bail!(
                "the identity in {} has no node key: import it again with `tincan id import`",
                dir.root().display()
            );
        }
        let store = Arc::new(open_store(&dir, new_store)?);
        // In memory only: the store opens grants to this user and, for the
        // rooms it owns, derives their keys (sealed invite-only rooms).
        store.unlock_user(&identity.user_key)?;
        Ok(Node {
            dir,
            identity,
            writer: GroupWriter::new(store.clone()),
            store,
            mesh: None,
            clock: Arc::new(StoreClock::new()),
        })
    }

    /// The user key.
    pub fn user_key(&self) -> &UserKey {
        &self.identity.user_key
    }

    /// A timestamp after everything this node has written or stored.
    pub fn now(&mut self) -> Result<Hlc> {
        Ok(self.clock.now(&self.store)?)
    }

    /// The write clock, to share with other local writers (the local API)
    /// so that their records and ours order after each other.
    pub fn clock(&self) -> Arc<StoreClock> {
        self.clock.clone()
    }

    /// Applies a record we signed and, when the mesh runs, gossips it; a
    /// refusal is an error in the rules' words.
    /// Returns the outcome and the id of the record as written (a sealed
    /// record has an id of its own).
    pub fn write(&self, record: SignedRecord) -> Result<(Applied, tincan_core::RecordId)> {
        // Sealed when its room is invite-only: nothing of such a room
        // leaves this node in plaintext.
        let record = self.store.prepare_signed(self.user_key(), record)?;
        let id = record.id();
        // Only a running mesh needs its own copy, to gossip.
        let to_gossip = self.mesh.as_ref().map(|link| (link, record.clone()));
        // Durable when it answers, in a commit shared with the API's writes.
        let applied = match self.writer.apply_blocking(record) {
            Ok(a) => a,
            Err(ApplyError::Rejected(e)) => return Err(anyhow!("refused: {e}")),
            Err(e) => return Err(e.into()),
        };
        if let (Some((link, record)), Applied::Stored) = (to_gossip, &applied) {
            // Stored is what matters; if no peer hears it now, catch-up
            // sync hands it over later.
            link.runtime.block_on(link.mesh.gossip_own(record));
        }
        Ok((applied, id))
    }

    /// Follows a room on the mesh (gossip and sync), when the mesh runs.
    pub fn follow(&self, room: RoomId) {
        if let Some(link) = &self.mesh
            && let Err(e) = link.runtime.block_on(link.mesh.subscribe_room(room))
        {
            tracing::warn!(%room, error = %e, "cannot follow the room on the mesh");
        }
    }

    /// Stops following a room, when the mesh runs.
    pub fn unfollow(&self, room: RoomId) {
        if let Some(link) = &self.mesh {
            let _ = link.runtime.block_on(link.mesh.unsubscribe_room(room));
        }
    }
}
