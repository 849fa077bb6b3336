//! The CA in force, and its reload when the plug-in CA directory changes: how a root is
//! rotated without a restart.
//!
//! [`CurrentCa`] holds the signing authority behind a swap: the CA service signs with whatever
//! is current, the serving certificate is reissued when it changes. [`watch_plugin_dir`] polls
//! the plug-in directory (Istio's `cacerts` layout); when its files change and load into a
//! valid CA, the new one replaces the old and its trust bundle is published as `root-cert.pem`
//! in the data directory, where clients read their trust anchor. Material that does not load
//! (say, a key written before its certificate) is refused with a warning and the current CA
//! keeps signing; the next poll tries again.
//!
//! A root rotation is three writes, each a full workload-certificate lifetime apart so that
//! every proxy holds a certificate from the previous step (docs/reliability.md):
//! `root-cert.pem` = old + new (signer unchanged); the signer moves to the new root; the old
//! root leaves `root-cert.pem`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use mesh::ca::CertificateAuthority;
use tokio::sync::watch;

use crate::ca_store::{self, StoreError};

/// The signing authority in force; cheap to clone, shared by the CA service and the serving
/// certificate.
#[derive(Debug, Clone)]
pub struct CurrentCa {
    ca: Arc<ArcSwap<CertificateAuthority>>,
    /// Bumped on every replacement, for those who act on a change.
    generation: watch::Sender<u64>,
}

impl CurrentCa {
    /// Starts with `ca`.
    pub fn new(ca: CertificateAuthority) -> Self {
        CurrentCa {
            ca: Arc::new(ArcSwap::from_pointee(ca)),
            generation: watch::Sender::new(0),
        }
    }

    /// The CA in force now.
    pub fn load(&self) -> Arc<CertificateAuthority> {
        self.ca.load_full()
    }

    /// Puts `ca` in force and tells the subscribers.
    pub fn replace(&self, ca: CertificateAuthority) {
        self.ca.store(Arc::new(ca));
        self.generation.send_modify(|g| *g += 1);
    }

    /// A receiver that sees every replacement.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }
}

/// What the plug-in directory held at the last look: the four files' contents.
fn fingerprint(dir: &Path) -> String {
    [
        ca_store::PLUGIN_CA_CERT_FILE,
        ca_store::CA_KEY_FILE,
        ca_store::PLUGIN_CHAIN_FILE,
        ca_store::ROOT_CERT_FILE,
    ]
    .iter()
    .map(|f| std::fs::read_to_string(dir.join(f)).unwrap_or_default())
    .collect::<Vec<_>>()
    .join("\0")
}

/// Loads the plug-in directory if it changed since `last`; `Ok(None)` when it did not.
fn reload_if_changed(
    dir: &Path,
    data_dir: &Path,
    trust_domain: &str,
    last: &mut String,
) -> Result<Option<CertificateAuthority>, StoreError> {
    let now = fingerprint(dir);
    if now == *last {
        return Ok(None);
    }
    *last = now;
    let ca = ca_store::load_plugin(dir, trust_domain)?;
    ca_store::write_atomically(
        &data_dir.join(ca_store::ROOT_CERT_FILE),
        ca.bundle_pem(),
        0o644,
    )?;
    Ok(Some(ca))
}

/// Where and how often the plug-in directory is polled.
#[derive(Debug, Clone)]
pub struct ReloadOptions {
    /// The plug-in CA directory.
    pub plugin_dir: PathBuf,
    /// Where `root-cert.pem` is published.
    pub data_dir: PathBuf,
    /// The trust domain the CA signs for.
    pub trust_domain: String,
    /// Time between two looks.
    pub interval: Duration,
}

/// Polls the plug-in directory every `options.interval` and replaces `current` when its
/// material changed and loads; runs until the returned task is aborted.
pub fn watch_plugin_dir(current: CurrentCa, options: ReloadOptions) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let ReloadOptions {
            plugin_dir,
            data_dir,
            trust_domain,
            interval,
        } = options;
        // The material loaded at start is the baseline.
        let mut last = fingerprint(&plugin_dir);
        loop {
            tokio::time::sleep(interval).await;
            let (dir, data, td, mut seen) = (
                plugin_dir.clone(),
                data_dir.clone(),
                trust_domain.clone(),
                std::mem::take(&mut last),
            );
            let loaded = tokio::task::spawn_blocking(move || {
                let result = reload_if_changed(&dir, &data, &td, &mut seen);
                (result, seen)
            })
            .await;
            let result = match loaded {
                Ok((result, seen)) => {
                    last = seen;
                    result
                }
                Err(e) => {
                    tracing::error!(error = %e, "reloading the plug-in CA panicked");
                    continue;
                }
            };
            match result {
                Ok(None) => {}
                Ok(Some(ca)) => {
                    let roots = mesh::cert::parse_pem_certs(ca.bundle_pem()).map_or(0, |r| r.len());
                    let signing_root = mesh::cert::parse_pem_certs(ca.root_pem())
                        .ok()
                        .and_then(|r| r.first().and_then(|c| mesh::cert::serial_of(c).ok()))
                        .unwrap_or_default();
                    current.replace(ca);
                    tracing::info!(dir = %plugin_dir.display(), trusted_roots = roots, signing_root_serial = %signing_root, "CA material reloaded: new certificates are signed with it and root-cert.pem holds its trust bundle");
                }
                Err(e) => {
                    tracing::warn!(dir = %plugin_dir.display(), error = %e, "the plug-in CA changed but does not load; the current CA keeps signing until it does");
                }
            }
        }
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn write_plugin(dir: &Path, signer: &CertificateAuthority, roots: &[&CertificateAuthority]) {
        let bundle: String = roots.iter().map(|r| r.root_pem()).collect();
        std::fs::write(
            dir.join(ca_store::PLUGIN_CA_CERT_FILE),
            signer.ca_cert_pem(),
        )
        .unwrap();
        std::fs::write(dir.join(ca_store::CA_KEY_FILE), signer.ca_key_pem()).unwrap();
        std::fs::write(dir.join(ca_store::ROOT_CERT_FILE), bundle).unwrap();
    }

    #[test]
    fn a_changed_plugin_dir_reloads_once_publishes_its_bundle_and_bad_material_is_refused() {
        let (plugin, data) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let old = CertificateAuthority::generate_root("cluster.local").unwrap();
        let new = CertificateAuthority::generate_root("cluster.local").unwrap();
        write_plugin(plugin.path(), &old, &[&old]);
        let mut last = fingerprint(plugin.path());
        let reload = |last: &mut String| {
            reload_if_changed(plugin.path(), data.path(), "cluster.local", last)
        };
        assert!(reload(&mut last).unwrap().is_none(), "unchanged");

        // Step 1 of a rotation: both roots trusted, the old one still signs.
        write_plugin(plugin.path(), &old, &[&old, &new]);
        let ca = reload(&mut last).unwrap().expect("reloaded");
        assert_eq!(ca.root_pem(), old.root_pem());
        let published =
            std::fs::read_to_string(data.path().join(ca_store::ROOT_CERT_FILE)).unwrap();
        assert_eq!(published, ca.bundle_pem());
        assert_eq!(mesh::cert::parse_pem_certs(&published).unwrap().len(), 2);
        assert!(reload(&mut last).unwrap().is_none(), "reloaded once");

        // A signer whose root the bundle lacks is refused, and the bundle stays published.
        write_plugin(plugin.path(), &new, &[&old]);
        assert!(reload(&mut last).is_err());
        let still = std::fs::read_to_string(data.path().join(ca_store::ROOT_CERT_FILE)).unwrap();
        assert_eq!(still, published);
    }

    #[tokio::test]
    async fn a_replacement_is_seen_by_subscribers_and_by_the_next_signature() {
        let first = CertificateAuthority::generate_root("cluster.local").unwrap();
        let second = CertificateAuthority::generate_root("cluster.local").unwrap();
        let second_root = second.root_pem().to_string();
        let current = CurrentCa::new(first);
        let mut changes = current.subscribe();
        current.replace(second);
        changes.changed().await.unwrap();
        assert_eq!(current.load().root_pem(), second_root);
    }
}
