//! The data directory: where a node keeps its sealed identity
//! (`identity.json`) and its store (`store.redb`).
//!
//! The identity file is replaced atomically (temp file, fsync, rename, fsync
//! of the directory) and is readable by its owner only (mode 0600), so a
//! crash mid-write leaves either the old identity or the new one, never half.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use tincan_core::keystore::{KeystoreError, SealedIdentity};

/// Why the data directory or identity file could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataDirError {
    /// A file system operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What we were doing.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The identity file is unusable.
    #[error("{path}: {source}")]
    Identity {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: KeystoreError,
    },
    /// No identity yet.
    #[error("no identity in {0}: run `tincan init` first")]
    NoIdentity(PathBuf),
    /// An identity exists already.
    #[error("an identity already exists in {0}: use it, or choose another --data-dir")]
    IdentityExists(PathBuf),
    /// The identity is there but its store is not: opening would make a
    /// new empty store and hide that the rooms and records are gone.
    #[error(
        "{store} is missing beside the identity {identity}; nothing was changed: restore store.redb from a backup, or pass --new-store to start an empty store for this identity (the rooms you are in sync again from peers)"
    )]
    MissingStore {
        /// The store's file that is not there.
        store: PathBuf,
        /// The identity that is.
        identity: PathBuf,
    },
    /// A store is there without its identity: a new identity beside it
    /// would sign with a key the store's records do not know.
    #[error(
        "{identity} is missing beside the store {store}; nothing was changed: restore identity.json from a backup, or import the identity this store belongs to with `tincan id import FILE` (from a `tincan id export`); to start over as a new user, move store.redb aside first"
    )]
    StoreWithoutIdentity {
        /// The store that is there.
        store: PathBuf,
        /// The identity's file that is not.
        identity: PathBuf,
    },
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] crate::OpenError),
}

/// Whether a data directory may start a store where none is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NewStore {
    /// Only open the store that is there; a missing one is an error
    /// ([`DataDirError::MissingStore`]).
    Refuse,
    /// Start an empty store if none is there (the user asked for it, with
    /// `--new-store`, or a new identity is being made).
    Allow,
}

/// A node's data directory.
#[derive(Clone, Debug)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// Uses `root`, creating it (mode 0700) if needed.
    pub fn create(root: impl Into<PathBuf>) -> Result<Self, DataDirError> {
        let root = root.into();
        fs::create_dir_all(&root).map_err(|source| DataDirError::Io {
            what: "cannot create data directory",
            path: root.clone(),
            source,
        })?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = fs::set_permissions(&root, fs::Permissions::from_mode(0o700));
        }
        Ok(DataDir { root })
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The sealed identity's file.
    pub fn identity_path(&self) -> PathBuf {
        self.root.join("identity.json")
    }

    /// The store's file.
    pub fn store_path(&self) -> PathBuf {
        self.root.join("store.redb")
    }

    /// Whether an identity exists.
    pub fn has_identity(&self) -> bool {
        self.identity_path().exists()
    }

    /// Reads the sealed identity.
    pub fn load_identity(&self) -> Result<SealedIdentity, DataDirError> {
        let path = self.identity_path();
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(if self.has_store() {
                    DataDirError::StoreWithoutIdentity {
                        store: self.store_path(),
                        identity: path,
                    }
                } else {
                    DataDirError::NoIdentity(self.root.clone())
                });
            }
            Err(source) => {
                return Err(DataDirError::Io {
                    what: "cannot read",
                    path,
                    source,
                });
            }
        };
        SealedIdentity::from_json(&text).map_err(|source| DataDirError::Identity { path, source })
    }

    /// Whether a store file is there (of any size).
    pub fn has_store(&self) -> bool {
        self.store_path().exists()
    }

    /// Opens the store of this directory. Never makes a store beside an
    /// identity whose store is gone unless `new_store` allows it, and never
    /// over a 0-byte file ([`crate::OpenError::Empty`]); nothing on disk
    /// changes when it refuses.
    pub fn open_store(
        &self,
        config: crate::StoreConfig,
        new_store: NewStore,
    ) -> Result<crate::Store, DataDirError> {
        let store = self.store_path();
        if !store.exists() && new_store == NewStore::Refuse {
            return Err(if self.has_identity() {
                DataDirError::MissingStore {
                    store,
                    identity: self.identity_path(),
                }
            } else {
                // A store made here now would stand in the way of `tincan
                // init` (a store without identity).
                DataDirError::NoIdentity(self.root.clone())
            });
        }
        Ok(crate::Store::open(store, config)?)
    }

    /// Refuses to make a new identity beside a store that is already
    /// there (of another identity, or of this one whose identity.json was
    /// lost): see [`DataDirError::StoreWithoutIdentity`]. Importing an
    /// identity does not ask this: it is how such a store gets its identity
    /// back.
    pub fn check_new_identity(&self) -> Result<(), DataDirError> {
        if self.has_identity() {
            return Err(DataDirError::IdentityExists(self.root.clone()));
        }
        if self.has_store() {
            return Err(DataDirError::StoreWithoutIdentity {
                store: self.store_path(),
                identity: self.identity_path(),
            });
        }
        Ok(())
    }

    /// Writes the sealed identity atomically, replacing any earlier one.
    pub fn save_identity(&self, sealed: &SealedIdentity) -> Result<(), DataDirError> {
        write_atomic(&self.identity_path(), sealed.to_json().as_bytes())
    }

    /// Writes a new identity; refuses to replace an existing one.
    pub fn create_identity(&self, sealed: &SealedIdentity) -> Result<(), DataDirError> {
        if self.has_identity() {
            return Err(DataDirError::IdentityExists(self.root.clone()));
        }
        self.save_identity(sealed)
    }
}

/// Replaces `path` with `contents` atomically, mode 0600: a temp file in
/// the same directory, fsync, rename over, fsync of the directory.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<(), DataDirError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let io = |what, p: &Path| {
        let p = p.to_path_buf();
        move |source| DataDirError::Io {
            what,
            path: p,
            source,
        }
    };
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let result = (|| {
        let mut f = opts.open(&tmp).map_err(io("cannot create", &tmp))?;
        f.write_all(contents).map_err(io("cannot write", &tmp))?;
        f.sync_all().map_err(io("cannot fsync", &tmp))?;
        drop(f);
        fs::rename(&tmp, path).map_err(io("cannot rename into place", path))?;
        if let Ok(d) = fs::File::open(dir) {
            d.sync_all().map_err(io("cannot fsync directory", dir))?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use tincan_core::keystore::{Identity, KdfParams};
    use tincan_core::{NodeKey, UserKey};

    fn sealed(pw: &[u8]) -> SealedIdentity {
        let id = Identity {
            username: "bob".into(),
            user_key: UserKey::from_seed(&[1; 32]),
            node_key: Some(NodeKey::from_seed(&[2; 32])),
        };
        SealedIdentity::seal(&id, pw, KdfParams::INSECURE_FAST).unwrap()
    }

    /// Every damaged-directory case is refused, names the file and what to
    /// do, and leaves the directory as it was; on the old code the first
    /// two made a new empty store and the third a new identity.
    #[test]
    fn damaged_directories_are_refused_and_unchanged() {
        let tmp = tempfile::tempdir().unwrap();
        let dd = DataDir::create(tmp.path().join("d")).unwrap();
        // A fresh directory: nothing to open without an identity.
        assert!(matches!(
            dd.open_store(Default::default(), NewStore::Refuse),
            Err(DataDirError::NoIdentity(_))
        ));
        assert!(!dd.has_store());
        dd.create_identity(&sealed(b"pw")).unwrap();
        drop(dd.open_store(Default::default(), NewStore::Allow).unwrap());
        let good = fs::read(dd.store_path()).unwrap();
        assert!(!good.is_empty());

        // A 0-byte store: refused even when a new store is allowed.
        fs::write(dd.store_path(), b"").unwrap();
        for allow in [NewStore::Refuse, NewStore::Allow] {
            let e = dd.open_store(Default::default(), allow).unwrap_err();
            assert!(
                matches!(e, DataDirError::Store(crate::OpenError::Empty { .. })),
                "{e}"
            );
            let msg = e.to_string();
            assert!(msg.contains("store.redb is empty (0 bytes)"), "{msg}");
            assert!(msg.contains("--new-store"), "{msg}");
            assert_eq!(fs::metadata(dd.store_path()).unwrap().len(), 0);
        }
        assert!(matches!(
            crate::Store::open(dd.store_path(), Default::default()),
            Err(crate::OpenError::Empty { .. })
        ));

        // No store beside the identity: refused unless asked for.
        fs::remove_file(dd.store_path()).unwrap();
        let e = dd
            .open_store(Default::default(), NewStore::Refuse)
            .unwrap_err();
        assert!(matches!(e, DataDirError::MissingStore { .. }), "{e}");
        assert!(e.to_string().contains("--new-store"), "{e}");
        assert!(!dd.has_store());
        drop(dd.open_store(Default::default(), NewStore::Allow).unwrap());
        assert!(dd.has_store());
        fs::write(dd.store_path(), &good).unwrap();

        // No identity beside the store: no new identity, and loading says
        // how to get it back.
        fs::remove_file(dd.identity_path()).unwrap();
        let e = dd.check_new_identity().unwrap_err();
        assert!(
            matches!(e, DataDirError::StoreWithoutIdentity { .. }),
            "{e}"
        );
        assert!(e.to_string().contains("tincan id import"), "{e}");
        let e = dd.load_identity().unwrap_err();
        assert!(
            matches!(e, DataDirError::StoreWithoutIdentity { .. }),
            "{e}"
        );
        assert!(!dd.has_identity());
        assert_eq!(fs::read(dd.store_path()).unwrap(), good);
    }

    #[test]
    fn identity_file_is_private_and_round_trips() {
        let tmp = tempfile::tempdir().unwrap();
        let dd = DataDir::create(tmp.path().join("d")).unwrap();
        assert!(matches!(
            dd.load_identity(),
            Err(DataDirError::NoIdentity(_))
        ));
        dd.create_identity(&sealed(b"pw")).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dd.identity_path())
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(matches!(
            dd.create_identity(&sealed(b"pw")),
            Err(DataDirError::IdentityExists(_))
        ));
        let back = dd.load_identity().unwrap();
        assert!(back.open(b"pw").is_ok());
        // A wrong password changes nothing on disk.
        let before = fs::read(dd.identity_path()).unwrap();
        assert!(back.open(b"nope").is_err());
        assert_eq!(fs::read(dd.identity_path()).unwrap(), before);
        // No temp files left behind.
        let names: Vec<_> = fs::read_dir(dd.root())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }
}
