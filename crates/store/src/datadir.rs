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
                return Err(DataDirError::NoIdentity(self.root.clone()));
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
