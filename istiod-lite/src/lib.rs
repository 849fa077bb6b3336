//! istiod-lite: the certificate authority of the mesh control plane.
//!
//! It serves `istio.v1.auth.IstioCertificateService/CreateCertificate` over gRPC/TLS (port
//! 15012) and signs a workload certificate only for a caller that may hold the identity:
//!
//! - [`config`]: the one typed [`Config`](config::Config), from flags and environment;
//! - [`ca_store`]: the root's lifecycle (generate and persist, reload, or plug-in CA) and
//!   istiod-lite's own serving certificate;
//! - [`tokens`]: caller authentication (bearer token → node);
//! - [`pods`]: which pods run on which node, from a directory of Kubernetes YAML;
//! - [`ca_service`]: the gRPC service: authentication, authorization, signing, audit lines.
//!
//! [`Server::bind`] does all start-up work (CA, tokens, pods, listening socket) and reports
//! the bound address; [`Server::serve`] answers requests until the shutdown future completes,
//! then drains in-flight requests. Integration tests run it in-process on `127.0.0.1:0`.
//!
//! Invariants: the CA key never leaves the data or plug-in directory and this process; every
//! certificate decision is logged on the tracing target `audit`; nothing read from the
//! network or a file is unwrapped.

#![forbid(unsafe_code)]

pub mod ca_service;
pub mod ca_store;
pub mod config;
pub mod pods;
pub mod tokens;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Identity as TlsIdentity, ServerTlsConfig};

use crate::ca_service::CaService;
use crate::ca_store::CaStore;
use crate::config::Config;
use crate::pods::YamlPodDirectory;
use crate::tokens::Tokens;

/// How long one request may take before the server gives up on it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a TLS handshake may take.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Concurrent requests per connection; a node tunnel sends a handful at a time.
const CONCURRENCY_PER_CONNECTION: usize = 64;

/// A CA server that has loaded its material and bound its socket, ready to serve.
pub struct Server {
    listener: TcpListener,
    local_addr: SocketAddr,
    root_cert_pem: String,
    tls: ServerTlsConfig,
    service: CaService,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Loads or generates the CA, issues the serving certificate, reads the tokens and the
    /// pods, and binds `config.listen`. Installs ring as the process's default rustls crypto
    /// provider if none is installed yet.
    pub async fn bind(config: &Config) -> anyhow::Result<Self> {
        mesh::Identity::new(config.trust_domain.as_str(), "ns", "sa")
            .with_context(|| format!("trust domain {:?} is invalid", config.trust_domain))?;
        // tonic builds its server TLS config from the process default provider.
        let _ = mesh::tls::provider().as_ref().clone().install_default();

        let store = CaStore::open(
            &config.data_dir,
            config.plugin_ca_dir.as_deref(),
            &config.trust_domain,
            &config.server_names,
        )
        .context("setting up the CA")?;
        let tokens = Tokens::load(&config.tokens_file)?;
        if tokens.is_empty() {
            tracing::warn!(file = %config.tokens_file.display(), "the tokens file lists no tokens: every request will be refused");
        }
        let pods = YamlPodDirectory::open(&config.config_dir, &config.trust_domain)?;
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let local_addr = listener.local_addr().context("reading the bound address")?;

        tracing::info!(
            listen = %local_addr,
            trust_domain = %config.trust_domain,
            ca_source = ?store.source,
            tokens = tokens.len(),
            pods = pods.pods().len(),
            max_cert_ttl_secs = config.max_cert_ttl_secs,
            "istiod-lite ready"
        );
        let tls = ServerTlsConfig::new()
            .identity(TlsIdentity::from_pem(
                &store.serving_chain_pem,
                &store.serving_key_pem,
            ))
            .timeout(TLS_HANDSHAKE_TIMEOUT);
        let root_cert_pem = store.ca.root_pem().to_string();
        let service = CaService::new(
            Arc::new(store.ca),
            Arc::new(tokens),
            Arc::new(pods),
            config.max_cert_ttl(),
        );
        Ok(Server {
            listener,
            local_addr,
            root_cert_pem,
            tls,
            service,
        })
    }

    /// The address the server listens on (with the real port when `:0` was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The root certificate every issued chain ends with, PEM.
    pub fn root_cert_pem(&self) -> &str {
        &self.root_cert_pem
    }

    /// Serves until `shutdown` completes, then stops accepting and finishes in-flight requests.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let incoming = TcpIncoming::from(self.listener).with_nodelay(Some(true));
        tonic::transport::Server::builder()
            .tls_config(self.tls)
            .context("configuring server TLS")?
            .timeout(REQUEST_TIMEOUT)
            .concurrency_limit_per_connection(CONCURRENCY_PER_CONNECTION)
            .add_service(self.service.into_server())
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await
            .context("serving gRPC")?;
        tracing::info!("istiod-lite stopped");
        Ok(())
    }
}

/// Binds and serves `config` until `shutdown` completes.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    Server::bind(&config).await?.serve(shutdown).await
}
