//! The root's lifecycle: generate once, persist, reload; or load a plug-in CA.
//!
//! Without a plug-in CA, the first start generates a self-signed root and writes
//! `root-cert.pem` and `ca-key.pem` (mode 0600) into the data directory, each atomically
//! (temporary file, fsync, rename, fsync of the directory). Later starts load them, so every
//! certificate ever issued keeps chaining to the same root.
//!
//! With a plug-in CA directory (Istio's `cacerts` layout), that material signs instead and its
//! trust bundle (`root-cert.pem`: one root, or old and new during a root rotation) is published
//! as `root-cert.pem` in the data directory, where clients read their trust anchor;
//! [`crate::ca_reload`] reloads it when it changes.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use mesh::ca::{CaError, CertificateAuthority};

/// File name of the root certificate, in the data and plug-in directories.
pub const ROOT_CERT_FILE: &str = "root-cert.pem";
/// File name of the signing key, in the data and plug-in directories.
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// File name of the plug-in signing certificate.
pub const PLUGIN_CA_CERT_FILE: &str = "ca-cert.pem";
/// File name of the plug-in chain from the signing certificate to the root.
pub const PLUGIN_CHAIN_FILE: &str = "cert-chain.pem";

/// Why the CA material could not be loaded, generated or saved.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file could not be read or written.
    #[error("{action} {path}: {error}")]
    Io {
        /// What was being done ("reading", "writing", ...).
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        error: std::io::Error,
    },
    /// The material on disk is not a usable CA.
    #[error("CA material in {dir} is unusable: {error}")]
    Material {
        /// The directory the material came from.
        dir: PathBuf,
        /// What is wrong with it.
        error: CaError,
    },
    /// Only half of a generated root is on disk.
    #[error("{dir} has {present} but not {missing}; restore the missing file, or remove both to generate a new root (every workload certificate must then be reissued)")]
    Incomplete {
        /// The data directory.
        dir: PathBuf,
        /// The file that exists.
        present: &'static str,
        /// The file that is missing.
        missing: &'static str,
    },
    /// Generating the root or the serving certificate failed.
    #[error("generating CA material: {0}")]
    Generate(CaError),
}

/// Where the CA came from (for the start-up log line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaSource {
    /// Generated on this start and saved.
    Generated,
    /// Loaded from the data directory.
    Loaded,
    /// Loaded from the plug-in CA directory.
    PlugIn,
}

/// The CA and where it came from.
#[derive(Debug)]
pub struct CaStore {
    /// The signing authority.
    pub ca: CertificateAuthority,
    /// Where the CA came from.
    pub source: CaSource,
}

impl CaStore {
    /// Loads or generates the CA and publishes the root.
    pub fn open(
        data_dir: &Path,
        plugin_ca_dir: Option<&Path>,
        trust_domain: &str,
    ) -> Result<Self, StoreError> {
        fs::create_dir_all(data_dir).map_err(io_err("creating", data_dir))?;
        let (ca, source) = match plugin_ca_dir {
            Some(dir) => {
                let ca = load_plugin(dir, trust_domain)?;
                write_atomically(&data_dir.join(ROOT_CERT_FILE), ca.bundle_pem(), 0o644)?;
                (ca, CaSource::PlugIn)
            }
            None => load_or_generate(data_dir, trust_domain)?,
        };
        Ok(CaStore { ca, source })
    }
}

/// Loads the plug-in CA in `dir` (Istio's `cacerts` layout; `root-cert.pem` is the trust
/// bundle, one root or several).
pub fn load_plugin(dir: &Path, trust_domain: &str) -> Result<CertificateAuthority, StoreError> {
    let ca_cert = read(&dir.join(PLUGIN_CA_CERT_FILE))?;
    let ca_key = read(&dir.join(CA_KEY_FILE))?;
    let root = read(&dir.join(ROOT_CERT_FILE))?;
    // cert-chain.pem may be absent when the signing certificate is the root itself.
    let chain_path = dir.join(PLUGIN_CHAIN_FILE);
    let chain = if chain_path.exists() {
        read(&chain_path)?
    } else {
        String::new()
    };
    CertificateAuthority::from_pem(trust_domain, &ca_cert, &ca_key, &chain, &root).map_err(
        |error| StoreError::Material {
            dir: dir.to_path_buf(),
            error,
        },
    )
}

fn load_or_generate(
    data_dir: &Path,
    trust_domain: &str,
) -> Result<(CertificateAuthority, CaSource), StoreError> {
    let cert_path = data_dir.join(ROOT_CERT_FILE);
    let key_path = data_dir.join(CA_KEY_FILE);
    match (cert_path.exists(), key_path.exists()) {
        (true, true) => {
            let cert = read(&cert_path)?;
            let key = read(&key_path)?;
            let ca = CertificateAuthority::from_pem(trust_domain, &cert, &key, "", &cert).map_err(
                |error| StoreError::Material {
                    dir: data_dir.to_path_buf(),
                    error,
                },
            )?;
            Ok((ca, CaSource::Loaded))
        }
        (false, false) => {
            let ca =
                CertificateAuthority::generate_root(trust_domain).map_err(StoreError::Generate)?;
            // Key first: a crash in between leaves a key without a root, which is refused
            // loudly rather than silently replaced.
            write_atomically(&key_path, ca.ca_key_pem(), 0o600)?;
            write_atomically(&cert_path, ca.root_pem(), 0o644)?;
            Ok((ca, CaSource::Generated))
        }
        (true, false) => Err(StoreError::Incomplete {
            dir: data_dir.to_path_buf(),
            present: ROOT_CERT_FILE,
            missing: CA_KEY_FILE,
        }),
        (false, true) => Err(StoreError::Incomplete {
            dir: data_dir.to_path_buf(),
            present: CA_KEY_FILE,
            missing: ROOT_CERT_FILE,
        }),
    }
}

fn read(path: &Path) -> Result<String, StoreError> {
    fs::read_to_string(path).map_err(io_err("reading", path))
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |error| StoreError::Io {
        action,
        path,
        error,
    }
}

/// Writes `contents` to `path` with `mode` so that readers see the old file or the new one,
/// never a mix: temporary file in the same directory, fsync, rename, fsync the directory.
pub fn write_atomically(path: &Path, contents: &str, mode: u32) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .map_err(io_err("creating", &tmp))?;
        // The mode given to open() is filtered by the umask; set it exactly.
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(io_err("setting permissions of", &tmp))?;
        file.write_all(contents.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(io_err("writing", &tmp))?;
        fs::rename(&tmp, path).map_err(io_err("renaming into place", path))?;
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("syncing", dir))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn generates_once_then_reloads_with_a_private_key_file() {
        let dir = tempfile::tempdir().unwrap();
        let first = CaStore::open(dir.path(), None, "cluster.local").unwrap();
        assert_eq!(first.source, CaSource::Generated);
        let mode = fs::metadata(dir.path().join(CA_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let second = CaStore::open(dir.path(), None, "cluster.local").unwrap();
        assert_eq!(second.source, CaSource::Loaded);
        assert_eq!(first.ca.root_pem(), second.ca.root_pem());
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
            .collect();
        assert!(leftovers.is_empty(), "temporary files left behind");
    }

    #[test]
    fn half_a_root_is_refused_with_advice() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(CA_KEY_FILE), "x").unwrap();
        let err = CaStore::open(dir.path(), None, "cluster.local").unwrap_err();
        assert!(matches!(err, StoreError::Incomplete { .. }), "{err}");
        assert!(err.to_string().contains(ROOT_CERT_FILE), "{err}");
    }

    #[test]
    fn missing_plugin_file_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let plugin = tempfile::tempdir().unwrap();
        let err = CaStore::open(dir.path(), Some(plugin.path()), "cluster.local").unwrap_err();
        assert!(err.to_string().contains(PLUGIN_CA_CERT_FILE), "{err}");
    }
}
