//! waypoint: the mesh's L7 proxy (Istio ambient's waypoint), one per namespace or service
//! account that asks for one.
//!
//! Modules by concern: [`config`] (the one typed config), [`app`] (start-up wiring: CA, xDS,
//! runtimes, ports), [`inbound`] (HBONE in), [`detect`] (HTTP/1.1, HTTP/2 or TCP), [`http`]
//! (the request phases), [`route`] (route table), [`balance`] (endpoint choice),
//! [`select`] (destinations and endpoints), [`upstream`] (HTTP connections over HBONE out),
//! [`tcp`] (passthrough), [`authz`] (the L7 authorization hook), [`telemetry`] (metrics and
//! access log), [`trace`] (W3C trace context), [`admin`] (15000/15020/15021).
//!
//! [`Waypoint`] is the data plane, constructible without a CA or control plane from a
//! [`Store`], a [`CertManager`] and a [`ProxyConfig`]. Threads: the data plane runs on the
//! caller's (multi-threaded) runtime; the binary puts CA, xDS and admin work on a separate
//! single-threaded runtime.

#![forbid(unsafe_code)]

use std::sync::{Arc, RwLock};

use mesh::cert_manager::CertManager;
use mesh::hbone::{Connector, H2Config, InboundRequest, Pool, Server, ServerCerts, TcpConnector};
use mesh::store::Store;
use tokio::net::TcpListener;

pub mod admin;
pub mod app;
pub mod authz;
pub mod balance;
pub mod body;
pub mod config;
pub mod detect;
pub mod error;
pub mod http;
pub mod inbound;
pub mod route;
pub mod select;
pub mod tcp;
pub mod telemetry;
pub mod trace;
pub mod upstream;

pub use config::ProxyConfig;
pub use route::RouteTable;
pub use telemetry::Telemetry;

/// What every tunnel and request of the waypoint shares.
#[derive(Debug)]
pub struct Shared {
    /// Data-plane settings.
    pub config: ProxyConfig,
    /// Workloads, services and policies.
    pub store: Store,
    /// Certificates (the waypoint's own identity).
    pub certs: Arc<CertManager>,
    /// Endpoint choice.
    pub balancer: balance::Balancer,
    /// Upstream connections.
    pub upstreams: Arc<upstream::Upstreams>,
    /// Metrics.
    pub telemetry: Arc<Telemetry>,
    routes: RwLock<Arc<RouteTable>>,
}

impl Shared {
    /// The current route table.
    pub fn routes(&self) -> Arc<RouteTable> {
        self.routes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The waypoint's data plane: HBONE in, HTTP routed per request, HBONE out.
#[derive(Debug, Clone)]
pub struct Waypoint {
    shared: Arc<Shared>,
}

impl Waypoint {
    /// A waypoint serving as `config.identity`, reading config from `store` and its
    /// certificate from `certs`, dialling endpoints with plain TCP.
    pub fn new(store: Store, certs: Arc<CertManager>, config: ProxyConfig) -> Self {
        Waypoint::with_connector(store, certs, config, Arc::new(TcpConnector))
    }

    /// Like [`Waypoint::new`], opening HBONE connections to endpoints through `connector`.
    pub fn with_connector(
        store: Store,
        certs: Arc<CertManager>,
        config: ProxyConfig,
        connector: Arc<dyn Connector>,
    ) -> Self {
        let pool = Pool::new(H2Config::default(), connector);
        let dialer = upstream::Dialer::new(pool, certs.clone(), config.identity.clone());
        let upstreams = Arc::new(upstream::Upstreams::new(
            dialer,
            config.upstream_idle_timeout,
        ));
        Waypoint {
            shared: Arc::new(Shared {
                config,
                store,
                certs,
                balancer: balance::Balancer::default(),
                upstreams,
                telemetry: Arc::new(Telemetry::default()),
                routes: RwLock::new(Arc::new(RouteTable::new())),
            }),
        }
    }

    /// Accepts HBONE on `listener` forever, presenting the waypoint's certificate (renewed
    /// certificates apply to new connections).
    pub async fn serve(&self, listener: TcpListener) {
        let certs: Arc<dyn ServerCerts> =
            Arc::new(self.shared.certs.subscribe(&self.shared.config.identity));
        let server = Arc::new(Server::new(H2Config::default(), certs));
        let shared = self.shared.clone();
        let sweep = tokio::spawn(
            shared
                .upstreams
                .clone()
                .sweep_every(shared.config.upstream_idle_timeout / 3),
        );
        let _stop_sweeping = AbortOnDrop(sweep);
        server
            .serve(listener, move |req: InboundRequest| {
                inbound::handle(shared.clone(), req)
            })
            .await;
    }

    /// Metrics.
    pub fn telemetry(&self) -> &Arc<Telemetry> {
        &self.shared.telemetry
    }

    /// The shared state (config, store, balancer, upstreams).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Replaces the route table (route config from the control plane).
    pub fn set_routes(&self, table: RouteTable) {
        *self
            .shared
            .routes
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Arc::new(table);
    }

    /// The route table in force.
    pub fn routes(&self) -> Arc<RouteTable> {
        self.shared.routes()
    }
}
