//! istiod-lite's own TLS: its serving certificate, renewed while it runs, and the TLS
//! handshakes of the gRPC port.
//!
//! The certificate names every name and address the server is reached by
//! ([`server_names`]: the configured names, Istio's `istiod.istio-system.svc` among the
//! defaults, plus the pod's IP and a specific listen address), is issued by the mesh CA at
//! start, again after two thirds of its lifetime, and at once when the CA changes (a root
//! rotation step, [`crate::ca_reload`]); new handshakes get the new one at once (the resolver
//! is swapped), established connections keep theirs. The chain served is the leaf and its
//! intermediates: clients verify it against the trust bundle they read from `root-cert.pem`. Handshakes run on their own
//! tasks with a deadline, so a slow or silent client does not hold up the accept loop.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use mesh::ca::CertificateAuthority;

use crate::ca_reload::CurrentCa;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, ServerConfig};
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// The names the serving certificate carries: the configured ones, then the pod IP and the
/// listen address when they are specific addresses, without duplicates.
pub fn server_names(
    configured: &[String],
    pod_ip: Option<IpAddr>,
    listen: SocketAddr,
) -> Vec<String> {
    let mut names: Vec<String> = configured.to_vec();
    let specific = [pod_ip, Some(listen.ip())]
        .into_iter()
        .flatten()
        .filter(|ip| !ip.is_unspecified());
    for ip in specific {
        let ip = ip.to_string();
        if !names.contains(&ip) {
            names.push(ip);
        }
    }
    names
}

/// The serving certificate in force, swapped on renewal.
#[derive(Debug)]
pub struct ServingCert {
    current: ArcSwap<CertifiedKey>,
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

impl ServingCert {
    /// Issues a certificate for `names` from the current CA, valid for `ttl`, and keeps
    /// renewing it (after two thirds of `ttl`, and when the CA is replaced) on a task that
    /// ends with the returned handle's owner.
    pub fn start(
        ca: CurrentCa,
        names: Vec<String>,
        ttl: Duration,
    ) -> anyhow::Result<(Arc<ServingCert>, tokio::task::JoinHandle<()>)> {
        let first = issue(&ca.load(), &names, ttl)?;
        let cert = Arc::new(ServingCert {
            current: ArcSwap::from_pointee(first),
        });
        tracing::info!(serial = %cert.serial(), ttl_secs = ttl.as_secs(), "serving certificate issued");
        let renewing = cert.clone();
        let mut changes = ca.subscribe();
        let task = tokio::spawn(async move {
            loop {
                let why = tokio::select! {
                    () = tokio::time::sleep(ttl * 2 / 3) => "two thirds of its lifetime passed",
                    // `ca` holds the sender: this never ends with an error.
                    _ = changes.changed() => "the CA changed",
                };
                match issue(&ca.load(), &names, ttl) {
                    Ok(next) => {
                        renewing.current.store(Arc::new(next));
                        tracing::info!(serial = %renewing.serial(), ttl_secs = ttl.as_secs(), why, "serving certificate renewed");
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "renewing the serving certificate failed; keeping the current one")
                    }
                }
            }
        });
        Ok((cert, task))
    }

    /// The certificate chain in force (leaf first), DER.
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        self.current.load().cert.clone()
    }

    /// The serial of the leaf in force, lower-case hex.
    pub fn serial(&self) -> String {
        let current = self.current.load();
        current
            .cert
            .first()
            .and_then(|der| mesh::cert::serial_of(der).ok())
            .unwrap_or_default()
    }
}

fn issue(
    ca: &CertificateAuthority,
    names: &[String],
    ttl: Duration,
) -> anyhow::Result<CertifiedKey> {
    let (mut chain, key) = ca
        .issue_server_cert(names, ttl)
        .context("issuing the serving certificate")?;
    // The last element is the trust bundle: clients have it, it is not sent.
    chain.pop();
    let chain: Vec<CertificateDer<'static>> = chain
        .iter()
        .map(|pem| CertificateDer::from_pem_slice(pem.as_bytes()))
        .collect::<Result<_, _>>()
        .context("the serving chain is not PEM")?;
    let key =
        PrivateKeyDer::from_pem_slice(key.as_bytes()).context("the serving key is not PEM")?;
    let signing = mesh::tls::provider()
        .key_provider
        .load_private_key(key)
        .context("loading the serving key")?;
    Ok(CertifiedKey::new(chain, signing))
}

/// The server TLS config: TLS 1.2 and 1.3, ALPN `h2`, the certificate from `cert`.
pub fn server_config(cert: Arc<ServingCert>) -> anyhow::Result<Arc<ServerConfig>> {
    let mut config = ServerConfig::builder_with_provider(mesh::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("TLS versions")?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Accepts on `listener` and completes each TLS handshake (at most `handshake_timeout`) on a
/// task of its own; established streams come out of the returned channel.
pub fn accept(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    handshake_timeout: Duration,
) -> mpsc::Receiver<Result<TlsStream<TcpStream>, std::io::Error>> {
    let (tx, rx) = mpsc::channel(64);
    let acceptor = TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            // The server gone (the receiver dropped): stop, and free the port.
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = tx.closed() => return,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors and the like: wait a little, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pod_ip_and_a_specific_listen_address_are_named_once() {
        let configured = vec![
            "istiod.istio-system.svc".to_string(),
            "10.0.0.5".to_string(),
        ];
        let names = server_names(
            &configured,
            Some("10.0.0.5".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))),
            "10.0.0.9:15012"
                .parse()
                .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0))),
        );
        assert_eq!(names, ["istiod.istio-system.svc", "10.0.0.5", "10.0.0.9"]);
        let unspecified = server_names(&configured, None, SocketAddr::from(([0, 0, 0, 0], 15012)));
        assert_eq!(unspecified, configured);
    }

    fn names() -> Vec<String> {
        vec!["istiod-lite.istio-system.svc".to_string()]
    }

    fn generate() -> CertificateAuthority {
        CertificateAuthority::generate_root("cluster.local").unwrap_or_else(|e| panic!("{e}"))
    }

    /// Whether the leaf in force chains to `ca`'s root.
    fn signed_by(cert: &ServingCert, ca: &CertificateAuthority) -> bool {
        let roots = mesh::cert::parse_pem_certs(ca.root_pem()).unwrap_or_default();
        mesh::cert::signed_by(&cert.chain()[0], &roots[0])
    }

    #[tokio::test(start_paused = true)]
    async fn the_serving_certificate_is_renewed_after_two_thirds_of_its_ttl_and_when_the_ca_changes(
    ) {
        let (old, new) = (generate(), generate());
        let new_root = new.root_pem().to_string();
        let current = CurrentCa::new(old);
        let (cert, task) = ServingCert::start(current.clone(), names(), Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{e}"));
        let first = cert.serial();
        assert_eq!(
            cert.chain().len(),
            1,
            "the leaf only: the root is not served"
        );
        assert!(signed_by(&cert, &current.load()));

        tokio::time::sleep(Duration::from_secs(19)).await;
        assert_eq!(cert.serial(), first, "renewed too early");
        tokio::time::sleep(Duration::from_secs(2)).await;
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        let second = cert.serial();
        assert_ne!(second, first, "renewed at two thirds of 30 s");

        // A root rotation step moves the signer: a new certificate from the new root at once.
        current.replace(new);
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_ne!(cert.serial(), second);
        assert!(signed_by(&cert, &current.load()));
        assert_eq!(current.load().root_pem(), new_root);
        task.abort();
    }
}
