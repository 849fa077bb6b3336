//! istiod-lite: the mesh control plane, a certificate authority and a config server.
//!
//! On one gRPC/TLS port (15012) it serves
//! `istio.v1.auth.IstioCertificateService/CreateCertificate`, signing a workload certificate
//! only for a caller that may hold the identity, and delta ADS
//! (`envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources`),
//! pushing workloads, services and authorization policies to node tunnels:
//!
//! - [`config`]: the one typed [`Config`], from flags and environment;
//! - [`ca_store`]: the root's lifecycle (generate and persist, reload, or plug-in CA);
//!   [`ca_reload`]: the CA in force, replaced when the plug-in CA's files change (root
//!   rotation without a restart);
//! - [`serving`]: istiod-lite's own serving certificate (renewed while running) and TLS accept
//!   loop;
//! - [`auth`]: caller authentication (a token from the tokens file, or on Kubernetes a
//!   projected ServiceAccount token checked with TokenReview → the caller's node), shared by
//!   both services; [`tokens`]: the tokens file;
//! - [`config_source`]: the cluster as snapshots, read and followed from a directory of
//!   Kubernetes YAML or watched on the API server; [`resources`]: the kinds it reads;
//! - [`deployer`]: on Kubernetes, the waypoints of `istio-waypoint` Gateways, and their status;
//! - [`pods`]: which pods run on which node, from those snapshots;
//! - [`ca_service`]: the gRPC service: authentication, authorization, signing, audit lines;
//!   [`ca_metrics`]: its counts, and the config source's health, on the monitoring port;
//! - [`translate`]: cluster snapshot → workloads, services, L4 policies (pure);
//! - [`xds`]: the config API: snapshots in, debounced per-proxy deltas out, metrics.
//!
//! [`Server::bind`] does all start-up work (CA, callers' authentication, config source,
//! listening sockets)
//! and reports the bound addresses; [`Server::serve`] answers requests until the
//! shutdown future completes, then ends the config streams and drains in-flight requests.
//! Integration tests run it in-process on `127.0.0.1:0`, feeding config snapshots through
//! [`Server::bind_with_snapshots`].
//!
//! Invariants: the CA key never leaves the data or plug-in directory and this process; every
//! certificate decision is logged on the tracing target `audit`; nothing read from the
//! network or a file is unwrapped.

#![forbid(unsafe_code)]

pub mod auth;
pub mod ca_metrics;
pub mod ca_reload;
pub mod ca_service;
pub mod ca_store;
pub mod config;
pub mod config_source;
pub mod deployer;
pub mod pods;
pub mod serving;
pub mod tokens;
pub mod translate;
pub mod xds;

/// The Kubernetes kinds read from the config source (the shared `resources` crate).
pub use ::resources;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use http::StatusCode;
use mesh::http_server::{Call, Handler, Reply};
use mesh::logging::LogReload;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::ReceiverStream;

use crate::auth::{Authenticator, TokenReviewer};
use crate::ca_metrics::{CaMetrics, ConfigMetrics};
use crate::ca_reload::CurrentCa;
use crate::ca_service::CaService;
use crate::ca_store::CaStore;
use crate::config::Config;
use crate::config::Source;
use crate::config_source::{
    ClusterState, ConfigSource, DirSource, KubeSource, DEFAULT_POLL_INTERVAL,
};
use crate::pods::ClusterPods;
use crate::serving::ServingCert;
use crate::tokens::Tokens;
use crate::translate::TranslateOptions;
use crate::xds::{XdsMetrics, XdsOptions, XdsService, XdsSnapshot};

/// How long one request may take before the server gives up on it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a TLS handshake may take.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Concurrent requests per connection; a node tunnel sends a handful at a time.
const CONCURRENCY_PER_CONNECTION: usize = 64;
/// HTTP/2 PING interval, and the silence after which a connection is dropped: a node tunnel
/// that vanished without closing its connection frees its config stream.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// A server that has loaded its material and bound its sockets, ready to serve.
pub struct Server {
    listener: TcpListener,
    local_addr: SocketAddr,
    monitoring: TcpListener,
    monitoring_addr: SocketAddr,
    admin: TcpListener,
    admin_addr: SocketAddr,
    /// Changes the log filter (`/logging` on the admin port); `None` when the embedder owns
    /// logging (tests).
    log_reload: Option<LogReload>,
    root_cert_pem: String,
    tls: Arc<rustls::ServerConfig>,
    /// Renews the serving certificate; stopped with the server.
    renewal: tokio::task::JoinHandle<()>,
    /// Reloads the plug-in CA when its files change (if any); stopped with the server.
    ca_reload: Option<tokio::task::JoinHandle<()>>,
    service: CaService,
    xds: XdsService,
    registry: Arc<Registry>,
    /// The config source (directory or API server); kept alive while serving.
    config_source: Arc<dyn ConfigSource>,
    config_metrics: ConfigMetrics,
    /// The waypoint deployer (Kubernetes only); stopped with the server.
    deployer: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.local_addr)
            .field("monitoring_addr", &self.monitoring_addr)
            .field("admin_addr", &self.admin_addr)
            .finish_non_exhaustive()
    }
}

/// The deployer's settings, from the flags.
fn deployer_config(config: &Config, ca: &CurrentCa) -> deployer::DeployerConfig {
    let host = config
        .waypoint_xds_address
        .trim_start_matches("https://")
        .rsplit_once(':')
        .map_or(config.waypoint_xds_address.as_str(), |(host, _)| host)
        .to_string();
    deployer::DeployerConfig {
        image: config.waypoint_image.clone(),
        xds_address: config.waypoint_xds_address.clone(),
        control_plane_name: host,
        ca: ca.clone(),
        root_namespace: config.root_namespace.clone(),
        trust_domain: config.trust_domain.clone(),
        resync: std::time::Duration::from_secs(config.deployer_resync_secs),
    }
}

/// How long the Kubernetes source may take to list the cluster at start.
const KUBE_SYNC_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// The config source the flags ask for, started (for Kubernetes: listed), and the Kubernetes
/// client when it is the API server.
async fn open_source(
    config: &Config,
) -> anyhow::Result<(Box<dyn ConfigSource>, Option<kube::Client>)> {
    Ok(match config.source()? {
        Source::Dir(dir) => (
            Box::new(DirSource::open(&dir, DEFAULT_POLL_INTERVAL)?),
            None,
        ),
        Source::Kubernetes(kubeconfig) => {
            let client = match kubeconfig {
                Some(path) => {
                    let file = kube::config::Kubeconfig::read_from(&path)
                        .with_context(|| format!("reading kubeconfig {}", path.display()))?;
                    let options = kube::config::KubeConfigOptions::default();
                    let kube_config = kube::Config::from_custom_kubeconfig(file, &options)
                        .await
                        .with_context(|| format!("kubeconfig {}", path.display()))?;
                    kube::Client::try_from(kube_config)?
                }
                None => kube::Client::try_default()
                    .await
                    .context("connecting to the Kubernetes API server (in-cluster service account, or $KUBECONFIG)")?,
            };
            let source = KubeSource::start(client.clone(), KUBE_SYNC_TIMEOUT).await?;
            (Box::new(source), Some(client))
        }
    })
}

impl Server {
    /// Loads or generates the CA, issues the serving certificate, sets up callers'
    /// authentication (tokens file, TokenReview on Kubernetes), reads the config source (and
    /// keeps following it: its pods answer the CA's placement checks, its translation is the
    /// config pushed to proxies; on Kubernetes the waypoint deployer follows it too), and binds
    /// `config.listen` and
    /// `config.monitoring_addr`. Installs ring as the process's default rustls crypto provider
    /// if none is installed yet.
    pub async fn bind(config: &Config) -> anyhow::Result<Self> {
        Self::bind_from(config, None).await
    }

    /// As [`Server::bind`], but the config API serves the snapshots published on `snapshots`
    /// instead of the config source's translation (the CA still reads its pods from the
    /// source). Each change is pushed after `config.push_debounce_ms`.
    pub async fn bind_with_snapshots(
        config: &Config,
        snapshots: watch::Receiver<Arc<XdsSnapshot>>,
    ) -> anyhow::Result<Self> {
        Self::bind_from(config, Some(snapshots)).await
    }

    async fn bind_from(
        config: &Config,
        snapshots: Option<watch::Receiver<Arc<XdsSnapshot>>>,
    ) -> anyhow::Result<Self> {
        mesh::Identity::new(config.trust_domain.as_str(), "ns", "sa")
            .with_context(|| format!("trust domain {:?} is invalid", config.trust_domain))?;
        // tonic builds its server TLS config from the process default provider.
        let _ = mesh::tls::provider().as_ref().clone().install_default();

        let store = CaStore::open(
            &config.data_dir,
            config.plugin_ca_dir.as_deref(),
            &config.trust_domain,
        )
        .context("setting up the CA")?;
        let ca_source = store.source;
        let ca = CurrentCa::new(store.ca);
        let tokens = match &config.tokens_file {
            Some(path) => Some(Tokens::load(path)?),
            None => None,
        };
        // One source for both services, so the CA and the config API never disagree and the
        // files are polled once.
        let (config_source, client) = open_source(config).await?;
        let config_source: Arc<dyn ConfigSource> = Arc::from(config_source);
        let pods = Arc::new(ClusterPods::new(
            config_source.subscribe(),
            &config.trust_domain,
        ));
        let deployer = match (&client, config.deploy_waypoints) {
            (Some(client), true) => Some(deployer::spawn(
                client.clone(),
                config_source.subscribe(),
                deployer_config(config, &ca),
            )),
            _ => None,
        };
        let auth = Arc::new(match client {
            Some(client) => Authenticator::kubernetes(
                tokens,
                TokenReviewer::new(
                    client,
                    pods.clone(),
                    &config.tunnel_service_account,
                    &config.trust_domain,
                )?,
            ),
            None => {
                let tokens =
                    tokens.context("--tokens-file is required with --config-source dir")?;
                if tokens.is_empty() {
                    tracing::warn!(
                        "the tokens file lists no tokens: every request will be refused"
                    );
                }
                Authenticator::tokens(tokens)
            }
        });
        let snapshots = match snapshots {
            Some(snapshots) => snapshots,
            None => {
                let options = translate_options(config);
                xds::translated(config_source.subscribe(), move |state| {
                    xds_snapshot(state, &options)
                })
            }
        };
        let (addresses, authorizations, routes) = {
            let current = snapshots.borrow();
            (
                current.addresses.len(),
                current.authorizations.len(),
                current.routes.len(),
            )
        };
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let local_addr = listener.local_addr().context("reading the bound address")?;
        let monitoring = TcpListener::bind(config.monitoring_addr)
            .await
            .with_context(|| format!("binding {} (monitoring)", config.monitoring_addr))?;
        let monitoring_addr = monitoring
            .local_addr()
            .context("reading the bound monitoring address")?;
        let admin = TcpListener::bind(config.admin_addr)
            .await
            .with_context(|| format!("binding {} (admin)", config.admin_addr))?;
        let admin_addr = admin
            .local_addr()
            .context("reading the bound admin address")?;

        let mut registry = Registry::default();
        mesh::metrics::register_process(
            &mut registry,
            "istiod-lite",
            &[("main", tokio::runtime::Handle::current())],
        );
        let xds = XdsService::new(
            auth.clone(),
            snapshots,
            &XdsOptions {
                push_debounce: config.push_debounce(),
            },
            XdsMetrics::register(&mut registry),
        );

        tracing::info!(
            listen = %local_addr,
            monitoring = %monitoring_addr,
            admin = %admin_addr,
            trust_domain = %config.trust_domain,
            ca_source = ?ca_source,
            tokens = auth.static_tokens(),
            pods = pods.pods().len(),
            addresses,
            authorizations,
            routes,
            max_cert_ttl_secs = config.max_cert_ttl_secs,
            push_debounce_ms = config.push_debounce_ms,
            "istiod-lite ready"
        );
        let root_cert_pem = ca.load().bundle_pem().to_string();
        let ca_reload = match &config.plugin_ca_dir {
            Some(dir) if config.ca_reload_interval_ms > 0 => Some(ca_reload::watch_plugin_dir(
                ca.clone(),
                ca_reload::ReloadOptions {
                    plugin_dir: dir.clone(),
                    data_dir: config.data_dir.clone(),
                    trust_domain: config.trust_domain.clone(),
                    interval: Duration::from_millis(config.ca_reload_interval_ms),
                },
            )),
            _ => None,
        };
        let names = serving::server_names(&config.server_names, config.pod_ip, local_addr);
        let (serving_cert, renewal) =
            ServingCert::start(ca.clone(), names, config.serving_cert_ttl())?;
        let tls = serving::server_config(serving_cert)?;
        let config_metrics = ConfigMetrics::register(&mut registry, config_source.clone());
        let service = CaService::new(
            ca,
            auth,
            pods,
            config.max_cert_ttl(),
            CaMetrics::register(&mut registry),
        );
        Ok(Server {
            listener,
            local_addr,
            monitoring,
            monitoring_addr,
            admin,
            admin_addr,
            log_reload: None,
            root_cert_pem,
            tls,
            renewal,
            ca_reload,
            service,
            xds,
            registry: Arc::new(registry),
            config_source,
            config_metrics,
            deployer,
        })
    }

    /// The address the server listens on (with the real port when `:0` was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address of the monitoring server (`GET /metrics`).
    pub fn monitoring_addr(&self) -> SocketAddr {
        self.monitoring_addr
    }

    /// The address of the admin server (`/logging`).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Lets the admin server's `/logging` read and change the process's log filter.
    pub fn with_log_reload(mut self, reload: LogReload) -> Self {
        self.log_reload = Some(reload);
        self
    }

    /// The trust bundle every issued chain ends with, PEM (one root, or several during a root
    /// rotation).
    pub fn root_cert_pem(&self) -> &str {
        &self.root_cert_pem
    }

    /// The config API, e.g. to watch which snapshot generation it serves.
    pub fn xds(&self) -> &XdsService {
        &self.xds
    }

    /// Serves until `shutdown` completes, then ends the config streams, stops accepting and
    /// finishes in-flight requests.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let config_source = self.config_source;
        let monitoring = tokio::spawn(mesh::http_server::serve(
            self.monitoring,
            metrics_handler(self.registry, self.config_metrics, self.xds.clone()),
        ));
        let admin = tokio::spawn(mesh::http_server::serve(
            self.admin,
            admin_handler(self.log_reload),
        ));
        let xds = self.xds.clone();
        let shutdown = async move {
            shutdown.await;
            // Config streams never end on their own: end them so the drain below completes.
            xds.stop_streams();
        };
        let incoming = ReceiverStream::new(serving::accept(
            self.listener,
            self.tls,
            TLS_HANDSHAKE_TIMEOUT,
        ));
        let renewal = self.renewal;
        let ca_reload = self.ca_reload;
        let served = tonic::transport::Server::builder()
            .timeout(REQUEST_TIMEOUT)
            .concurrency_limit_per_connection(CONCURRENCY_PER_CONNECTION)
            .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
            .add_service(self.service.into_server())
            .add_service(self.xds.into_server())
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await
            .context("serving gRPC");
        monitoring.abort();
        admin.abort();
        drop(config_source);
        renewal.abort();
        if let Some(task) = ca_reload {
            task.abort();
        }
        if let Some(deployer) = self.deployer {
            deployer.abort();
        }
        served?;
        tracing::info!("istiod-lite stopped");
        Ok(())
    }
}

/// The translation settings of `config`.
fn translate_options(config: &Config) -> TranslateOptions {
    TranslateOptions {
        cluster_id: config.cluster_id.clone(),
        trust_domain: config.trust_domain.clone(),
        domain_suffix: config.domain_suffix.clone(),
        root_namespace: config.root_namespace.clone(),
        network: String::new(),
    }
}

/// The xDS resources of a cluster snapshot.
fn xds_snapshot(state: &ClusterState, options: &TranslateOptions) -> XdsSnapshot {
    let translated = translate::translate(state, options);
    let (addresses, authorizations) = translate::resources(&translated);
    let (l7_policies, request_authns) = translate::waypoint_resources(&translated);
    XdsSnapshot {
        addresses,
        authorizations,
        l7_policies,
        request_authns,
        routes: translated.routes,
    }
}

/// `GET /metrics`: every metric in the Prometheus (OpenMetrics) text format;
/// `GET /debug/syncz`: every connected proxy's xDS sync state (JSON, see [`xds::syncz`]).
fn metrics_handler(registry: Arc<Registry>, config: ConfigMetrics, xds: XdsService) -> Handler {
    Arc::new(move |call: &Call<'_>| match call.path {
        "/metrics" => {
            config.refresh();
            Reply {
                status: StatusCode::OK,
                content_type: "application/openmetrics-text; version=1.0.0; charset=utf-8",
                body: mesh::metrics::encode(&registry),
            }
        }
        "/debug/syncz" => {
            Reply::json(serde_json::to_string_pretty(&xds.syncz()).unwrap_or_default())
        }
        _ => Reply::status(StatusCode::NOT_FOUND, "GET /metrics, GET /debug/syncz\n"),
    })
}

/// `GET|POST /logging`: the log filter (see [`mesh::logging::reply`]).
fn admin_handler(log_reload: Option<LogReload>) -> Handler {
    Arc::new(move |call: &Call<'_>| match (call.path, &log_reload) {
        ("/logging", Some(reload)) => mesh::logging::reply(reload, call),
        _ => Reply::status(StatusCode::NOT_FOUND, "endpoints: GET|POST /logging\n"),
    })
}

/// Binds and serves `config` until `shutdown` completes; `log_reload` backs `/logging`.
pub async fn run(
    config: Config,
    log_reload: LogReload,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    Server::bind(&config)
        .await?
        .with_log_reload(log_reload)
        .serve(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admin_port_serves_the_log_filter_only_when_the_process_owns_logging() {
        let reload: LogReload =
            Arc::new(|level: &str| Ok(if level.is_empty() { "info" } else { level }.to_string()));
        let call = |method: &'static http::Method| Call {
            method,
            path: "/logging",
            query: Some("level=debug"),
        };
        let with = admin_handler(Some(reload));
        assert_eq!(
            with(&call(&http::Method::GET)).body,
            "log filter: info\nset with POST /logging?level=<filter>\n"
        );
        assert_eq!(
            with(&call(&http::Method::POST)).body,
            "log filter now: debug\n"
        );
        let without = admin_handler(None);
        assert_eq!(
            without(&call(&http::Method::GET)).status,
            StatusCode::NOT_FOUND
        );
    }
}
