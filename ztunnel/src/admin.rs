//! Admin (127.0.0.1:15000), metrics (15020) and readiness (15021) endpoints.
//!
//! Their listeners are bound with `SO_REUSEPORT`: where ztunnel runs in the node's own
//! network namespace (the local cluster), a newer ztunnel starting for an upgrade binds the
//! same ports beside the old one, which closes its own when it starts draining.

use std::sync::Arc;

use http::{Method, StatusCode};
use mesh::cert_manager::CertManager;
use mesh::hbone::PoolStats;
use mesh::http_server::{Call, Handler, Reply};
use mesh::store::Store;
use mesh::xds::XdsStatus;
use serde_json::json;
use tokio::sync::watch;

use crate::inpod::Pods;
use crate::proxy::live::LiveConnections;
use crate::telemetry::Telemetry;

/// Changes the log filter at run time.
pub use mesh::logging::LogReload;

/// What the admin endpoints read.
#[derive(Clone)]
pub struct AdminState {
    /// Config store.
    pub store: Store,
    /// Certificates.
    pub certs: Arc<CertManager>,
    /// Served pods.
    pub pods: Arc<Pods>,
    /// Live connections, and removed pods still draining.
    pub live: Arc<LiveConnections>,
    /// Every pod's HBONE pool, summed.
    pub pool_stats: PoolStats,
    /// xDS link status.
    pub xds: watch::Receiver<XdsStatus>,
    /// Metrics.
    pub telemetry: Arc<Telemetry>,
    /// Log level control.
    pub log_reload: LogReload,
    /// Signals shutdown (`/quitquitquit`).
    pub shutdown: Arc<tokio::sync::Notify>,
    /// The data-plane runtime, whose live tasks are counted.
    pub data_plane: tokio::runtime::Handle,
}

impl AdminState {
    /// `/config_dump`: node-wide [`AdminState::counts`], workloads, services, policies, served
    /// pods, removed pods still draining, certificates, xDS status.
    pub fn config_dump(&self) -> serde_json::Value {
        let certs: Vec<_> = self
            .certs
            .status()
            .iter()
            .map(mesh::cert_manager::CertStatus::dump)
            .collect();
        let xds = self.xds.borrow().clone();
        json!({
            "counts": self.counts(),
            "config": self.store.snapshot(),
            "pods": self.pods.dump(),
            "draining_pods": self.live.draining(),
            "certificates": certs,
            "xds": xds,
        })
    }

    /// The `counts` object of `/config_dump`: one flat JSON object of node-wide gauges, for
    /// tests and operators to see that nothing outlives its connection, pod or identity. Each
    /// returns to its old value once what raised it is gone.
    ///
    /// - `data_plane_tasks`: tasks alive on the data-plane runtime;
    /// - `pods`: pods served; `draining_pods`: removed pods whose connections still drain;
    /// - `cert_workers`: identities whose certificate is held and renewed;
    /// - `live_connections`, `live_tunnels`: proxied connections, and HBONE connections to
    ///   served pods;
    /// - `pool_connections`: HTTP/2 connections open in every pod's HBONE pool;
    /// - `pool_keys`: keys in those pools (a destination with a connection, an attempt in
    ///   flight, or a recent failure);
    /// - `pool_streams`: CONNECT streams open through them.
    pub fn counts(&self) -> serde_json::Value {
        let live = self.live.counts();
        json!({
            "data_plane_tasks": self.data_plane.metrics().num_alive_tasks(),
            "pods": self.pods.len(),
            "draining_pods": self.live.draining().len(),
            "cert_workers": self.certs.workers(),
            "live_connections": live.connections,
            "live_tunnels": live.tunnels,
            "pool_connections": self.pool_stats.connections(),
            "pool_keys": self.pool_stats.keys(),
            "pool_streams": self.pool_stats.streams(),
        })
    }

    /// `/connections`: every live proxied connection (oldest first) with the namespace and
    /// name of its pod (`-` when the control plane does not know it yet); inbound ones get
    /// the pod's identity as their destination identity.
    pub fn connections(&self) -> serde_json::Value {
        let identities: std::collections::HashMap<String, String> = self
            .pods
            .dump()
            .into_iter()
            .map(|p| (p.uid, p.identity))
            .collect();
        let conns: Vec<serde_json::Value> = self
            .live
            .connections()
            .into_iter()
            .map(|mut c| {
                let (namespace, name) = self.store.workload(&c.pod_uid).map_or_else(
                    || ("-".to_string(), "-".to_string()),
                    |w| (w.namespace().to_string(), w.name.clone()),
                );
                if c.direction == "inbound" && c.ends.dst_identity.is_none() {
                    c.ends.dst_identity = identities.get(&c.pod_uid).and_then(|i| i.parse().ok());
                }
                let mut v = json!(c);
                v["pod_namespace"] = json!(namespace);
                v["pod_name"] = json!(name);
                v
            })
            .collect();
        json!(conns)
    }

    /// The admin handler.
    pub fn admin_handler(self) -> Handler {
        Arc::new(move |call: &Call<'_>| {
            match (call.method, call.path) {
            (&Method::GET, "/config_dump") => {
                Reply::json(serde_json::to_string_pretty(&self.config_dump()).unwrap_or_default())
            }
            (&Method::GET, "/connections") => {
                Reply::json(serde_json::to_string_pretty(&self.connections()).unwrap_or_default())
            }
            (_, "/logging") => mesh::logging::reply(&self.log_reload, call),
            (&Method::POST, "/quitquitquit") => {
                self.shutdown.notify_one();
                Reply::text("shutting down\n")
            }
            _ => Reply::status(
                StatusCode::NOT_FOUND,
                "endpoints: GET /config_dump, GET /connections, GET|POST /logging, POST /quitquitquit\n",
            ),
        }
        })
    }

    /// The metrics handler.
    pub fn metrics_handler(self) -> Handler {
        Arc::new(move |call: &Call<'_>| match call.path {
            "/metrics" | "/stats/prometheus" => Reply {
                status: StatusCode::OK,
                content_type: "application/openmetrics-text; version=1.0.0; charset=utf-8",
                body: self.telemetry.encode(),
            },
            _ => Reply::status(StatusCode::NOT_FOUND, "GET /metrics\n"),
        })
    }

    /// The readiness handler: ready once the xDS config has been received and the CNI agent's
    /// snapshot of pods applied (a DaemonSet update stops the old ztunnel only then), and no
    /// longer once stopping.
    pub fn readiness_handler(self) -> Handler {
        Arc::new(move |call: &Call<'_>| match call.path {
            "/healthz/ready" => {
                let unavailable = |why| Reply::status(StatusCode::SERVICE_UNAVAILABLE, why);
                if self.pods.stopping() {
                    unavailable("stopping: draining connections\n")
                } else if !self.xds.borrow().is_synced() {
                    unavailable("waiting for xDS config\n")
                } else if !self.pods.snapshot_applied() {
                    unavailable("waiting for the CNI agent's pods\n")
                } else {
                    Reply::text("ready\n")
                }
            }
            _ => Reply::status(StatusCode::NOT_FOUND, "GET /healthz/ready\n"),
        })
    }
}

/// Binds each endpoint with `SO_REUSEPORT` and serves it on `runtime` (the control runtime:
/// no request takes a data-plane thread). The returned tasks stop accepting when aborted.
pub async fn serve_shared(
    runtime: &tokio::runtime::Handle,
    endpoints: [(std::net::SocketAddr, Handler, &'static str); 3],
) -> Result<Vec<tokio::task::JoinHandle<()>>, mesh::http_server::EndpointError> {
    let mut tasks = Vec::new();
    for (addr, handler, name) in endpoints {
        let bound = runtime.spawn(async move { bind_shared(addr) }).await;
        let listener = bound
            .map_err(std::io::Error::other)
            .and_then(|r| r)
            .map_err(|source| mesh::http_server::EndpointError { name, addr, source })?;
        tracing::info!(%addr, "{name} endpoint listening");
        tasks.push(runtime.spawn(mesh::http_server::serve(listener, handler)));
    }
    Ok(tasks)
}

/// A listener on `addr` that another process of the same user may bind too.
fn bind_shared(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    tokio::net::TcpListener::from_std(socket.into())
}
