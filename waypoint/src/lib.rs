//! waypoint: the mesh's L7 proxy (Istio ambient's waypoint), one per namespace or service
//! account that asks for one.
//!
//! Modules by concern: [`config`] (the one typed config), [`app`] (start-up wiring: CA, xDS,
//! runtimes, ports), [`inbound`] (HBONE in), [`detect`] (HTTP/1.1, HTTP/2 or TCP), [`http`]
//! (the request phases), [`route`] (route table and matching), [`filters`], [`fault`],
//! [`mirror`], [`retry`], [`forward`] (the tries of one request), [`outlier`],
//! [`conn_pool`] (per-service limits), [`balance`] (endpoint choice),
//! [`select`] (destinations and endpoints), [`upstream`] (HTTP connections over HBONE out),
//! [`tcp`] (passthrough), [`authz`] (the L7 authorization hook), [`telemetry`] (metrics and
//! access log), [`trace`] (W3C trace context), [`admin`] (15000/15020/15021).
//!
//! [`Waypoint`] is the data plane, constructible without a CA or control plane from a
//! [`Store`], a [`CertManager`] and a [`ProxyConfig`]. Threads: the data plane runs on the
//! caller's (multi-threaded) runtime; the binary puts CA, xDS and admin work on a separate
//! single-threaded runtime.

#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use mesh::cert_manager::CertManager;
use mesh::hbone::{Connector, H2Config, InboundRequest, Pool, Server, ServerCerts, TcpConnector};
use mesh::store::Store;
use tokio::net::TcpListener;
use tracing::Instrument;

pub mod admin;
pub mod app;
pub mod authz;
pub mod backend;
pub mod balance;
pub mod body;
pub mod config;
pub mod conn_pool;
pub mod ctx;
pub mod detect;
pub mod error;
pub mod fault;
pub mod filters;
pub mod forward;
pub mod http;
pub mod inbound;
pub mod mirror;
pub mod outlier;
pub mod replay;
pub mod reply;
pub mod retry;
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
    /// Outlier detection state (ejected endpoints).
    pub outliers: outlier::Outliers,
    /// Connection pool limit counters.
    pub pool_limits: conn_pool::PoolLimits,
    routes: RwLock<Arc<RouteTable>>,
    /// Set once the waypoint drains: no new connections, connections asked to finish.
    drain: tokio::sync::watch::Sender<bool>,
    /// HBONE connections open now.
    connections: Arc<AtomicUsize>,
    /// One permit per tunnel waiting for its first bytes (`max_pending_streams`).
    pub pending: Arc<tokio::sync::Semaphore>,
    /// Accepts HBONE connections: counts, logs and sheds when out of descriptors.
    acceptor: mesh::limits::Acceptor,
}

impl Shared {
    /// Resolves once the waypoint is draining.
    pub async fn drained(&self) {
        drained(self.drain.subscribe()).await;
    }

    /// The current route table.
    pub fn routes(&self) -> Arc<RouteTable> {
        self.routes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Resolves once `rx` says true (never, if its sender is gone without saying it).
async fn drained(mut rx: tokio::sync::watch::Receiver<bool>) {
    if rx.wait_for(|d| *d).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Counts one open HBONE connection while alive.
struct ConnectionGuard(Arc<AtomicUsize>);

impl ConnectionGuard {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        ConnectionGuard(count.clone())
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
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
        let telemetry = Arc::new(Telemetry::default());
        let mut acceptor = None;
        telemetry.with_registry(|r| acceptor = Some(mesh::limits::Acceptor::register(r)));
        let pending = Arc::new(tokio::sync::Semaphore::new(config.max_pending_streams));
        Waypoint {
            shared: Arc::new(Shared {
                config,
                store,
                certs,
                balancer: balance::Balancer::default(),
                upstreams,
                telemetry,
                outliers: outlier::Outliers::default(),
                pool_limits: conn_pool::PoolLimits::default(),
                routes: RwLock::new(Arc::new(RouteTable::new())),
                drain: tokio::sync::watch::Sender::new(false),
                connections: Arc::default(),
                pending,
                acceptor: acceptor.unwrap_or_else(mesh::limits::Acceptor::new),
            }),
        }
    }

    /// Accepts HBONE on `listener` until [`Waypoint::drain`], presenting the waypoint's
    /// certificate (renewed certificates apply to new connections). Draining closes the
    /// listener and sends GOAWAY on every HBONE connection; the streams open go on.
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
        let handler = {
            let shared = shared.clone();
            move |req: InboundRequest| inbound::handle(shared.clone(), req)
        };
        let draining = shared.drained();
        tokio::pin!(draining);
        loop {
            let (tcp, peer) = tokio::select! {
                conn = shared.acceptor.accept(&listener, "hbone") => conn,
                () = &mut draining => break,
            };
            let guard = ConnectionGuard::new(&shared.connections);
            let (server, handler) = (server.clone(), handler.clone());
            let drain = drained(shared.drain.subscribe());
            let span = tracing::debug_span!("hbone_inbound", peer = %peer);
            tokio::spawn(
                async move {
                    let _guard = guard;
                    if let Err(e) = server
                        .serve_connection_until(tcp, peer, handler, drain, mesh::hbone::no_guard)
                        .await
                    {
                        tracing::debug!(error = %e, "HBONE connection ended with an error");
                    }
                }
                .instrument(span),
            );
        }
        tracing::info!("draining: HBONE listener closed");
    }

    /// Starts draining: the listener closes, HBONE connections get GOAWAY and HTTP
    /// connections inside tunnels are asked to finish (HTTP/1.1 closes after its current
    /// request, HTTP/2 sends GOAWAY).
    pub fn drain(&self) {
        self.shared.drain.send_replace(true);
    }

    /// HBONE connections open now.
    pub fn open_connections(&self) -> usize {
        self.shared.connections.load(Ordering::Acquire)
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

    /// Keeps the route table in step with the routes in the store (from xDS) until the store
    /// is dropped; run it on the control runtime. Tables set with [`Waypoint::set_routes`] are
    /// replaced at the next change of the store's routes.
    pub async fn sync_routes(self) {
        let store = self.shared.store.clone();
        route::from_model::sync_from_store(store, |table| self.set_routes(table)).await;
    }
}
