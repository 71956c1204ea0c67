//! The node's identity on disk: a PKCS#8 PEM file, owner-only (0600).
//!
//! A key file that exists but cannot be used is an error naming the file,
//! never a silent regeneration: a new key would be a new node, and every peer
//! that knew the old one would see a stranger.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
#[cfg(unix)]
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use hivemesh_protocol::{KeyError, NodeIdentity};

/// Name of the key file inside the data dir.
pub const KEY_FILE_NAME: &str = "identity.key";

/// A PEM ed25519 key is about 120 bytes; anything much larger is not one.
const MAX_KEY_FILE_BYTES: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum KeystoreError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(
        "{path}: permissions {mode:04o} let other users read the node's private key; run `chmod 600 {path}`"
    )]
    TooPermissive { path: PathBuf, mode: u32 },
    #[error("{path}: the key file is not readable (permissions {mode:04o}); run `chmod 600 {path}`")]
    Unreadable { path: PathBuf, mode: u32 },
    #[error("{path}: {size} bytes is too large for a key file (limit {MAX_KEY_FILE_BYTES})")]
    TooLarge { path: PathBuf, size: u64 },
    #[error("{path}: {source}")]
    Invalid { path: PathBuf, source: KeyError },
    #[error(
        "no data directory could be determined for this platform; pass --data-dir or set HIVEMESH_DATA_DIR"
    )]
    NoDataDir,
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> KeystoreError + '_ {
    move |source| KeystoreError::Io { path: path.to_path_buf(), source }
}

/// The platform's data directory for hivemesh (e.g. `~/.local/share/hivemesh`).
pub fn default_data_dir() -> Result<PathBuf, KeystoreError> {
    directories::ProjectDirs::from("org", "hivemesh", "hivemesh")
        .map(|dirs| dirs.data_dir().to_path_buf())
        .ok_or(KeystoreError::NoDataDir)
}

/// A loaded identity and where it came from.
#[derive(Debug)]
pub struct StoredIdentity {
    pub identity: NodeIdentity,
    pub path: PathBuf,
    /// True when this call generated the key.
    pub created: bool,
}

/// Loads the identity from `data_dir`, creating the directory and a new key
/// if there is none yet.
pub fn load_or_create(data_dir: &Path) -> Result<StoredIdentity, KeystoreError> {
    let path = data_dir.join(KEY_FILE_NAME);
    if path.exists() {
        return Ok(StoredIdentity { identity: load(&path)?, path, created: false });
    }
    create_private_dir(data_dir)?;
    let identity =
        NodeIdentity::generate().map_err(|source| KeystoreError::Invalid { path: path.clone(), source })?;
    let pem = identity.to_pem().map_err(|source| KeystoreError::Invalid { path: path.clone(), source })?;
    if write_new_key(&path, pem.as_bytes())? {
        tracing::info!(path = %path.display(), peer_id = %identity.peer_id(), "created a new node identity");
        Ok(StoredIdentity { identity, path, created: true })
    } else {
        // Another process created it first; use theirs so both agree.
        Ok(StoredIdentity { identity: load(&path)?, path, created: false })
    }
}

/// Loads an existing key file, checking its permissions and size first.
pub fn load(path: &Path) -> Result<NodeIdentity, KeystoreError> {
    let mut file = File::open(path).map_err(io_error(path))?;
    let meta = file.metadata().map_err(io_error(path))?;
    check_permissions(path, &meta)?;
    if meta.len() > MAX_KEY_FILE_BYTES {
        return Err(KeystoreError::TooLarge { path: path.to_path_buf(), size: meta.len() });
    }
    let mut text = String::new();
    (&mut file).take(MAX_KEY_FILE_BYTES).read_to_string(&mut text).map_err(|e| {
        let source = KeyError::Malformed(format!("not text: {e}"));
        KeystoreError::Invalid { path: path.to_path_buf(), source }
    })?;
    NodeIdentity::from_pem(&text)
        .map_err(|source| KeystoreError::Invalid { path: path.to_path_buf(), source })
}

#[cfg(unix)]
fn check_permissions(path: &Path, meta: &fs::Metadata) -> Result<(), KeystoreError> {
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeystoreError::TooPermissive { path: path.to_path_buf(), mode });
    }
    // Root can read a 0000 file; refuse anyway, since the owner asked for it
    // not to be read.
    if mode & 0o400 == 0 {
        return Err(KeystoreError::Unreadable { path: path.to_path_buf(), mode });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_permissions(_path: &Path, _meta: &fs::Metadata) -> Result<(), KeystoreError> {
    Ok(())
}

fn create_private_dir(dir: &Path) -> Result<(), KeystoreError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(io_error(dir))
}

/// Writes the key to a temporary file (0600 from the start, fsynced), then
/// hard-links it into place, which fails instead of overwriting if another
/// process won the race. Returns false when the key already existed.
fn write_new_key(path: &Path, contents: &[u8]) -> Result<bool, KeystoreError> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options.open(&tmp).map_err(io_error(&tmp))?;
    let written = file.write_all(contents).and_then(|_| file.sync_all());
    let linked = written.and_then(|_| fs::hard_link(&tmp, path));
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            if let Some(dir) = path.parent() {
                File::open(dir).and_then(|d| d.sync_all()).map_err(io_error(dir))?;
            }
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(KeystoreError::Io { path: path.to_path_buf(), source: e }),
    }
}
