//! Admin (127.0.0.1:15000), metrics (15020) and readiness (15021) endpoints.

use std::sync::Arc;

use http::{Method, StatusCode};
use mesh::http_server::{Call, Handler, Reply};
use mesh::xds::XdsStatus;
use serde_json::json;
use tokio::sync::watch;

use crate::Waypoint;

/// Changes the log filter at run time; returns the filter in force.
pub type LogReload = Arc<dyn Fn(&str) -> Result<String, String> + Send + Sync>;

/// What the admin endpoints read.
#[derive(Clone)]
pub struct AdminState {
    /// The data plane.
    pub waypoint: Waypoint,
    /// xDS link status; `None` when config does not come from xDS (tests).
    pub xds: Option<watch::Receiver<XdsStatus>>,
    /// Log level control.
    pub log_reload: LogReload,
    /// Signals shutdown (`/quitquitquit`).
    pub shutdown: Arc<tokio::sync::Notify>,
}

impl AdminState {
    /// Whether the waypoint holds a certificate for its identity.
    pub fn has_certificate(&self) -> bool {
        let shared = self.waypoint.shared();
        shared
            .certs
            .status()
            .iter()
            .any(|s| s.identity == shared.config.identity && s.cert.is_some())
    }

    /// Whether the first full config has arrived (always, without xDS).
    pub fn xds_synced(&self) -> bool {
        self.xds.as_ref().is_none_or(|x| x.borrow().is_synced())
    }

    /// `/config_dump`: identity and certificate, store, routes, upstream connections, xDS.
    pub fn config_dump(&self) -> serde_json::Value {
        let shared = self.waypoint.shared();
        let certs: Vec<_> = shared
            .certs
            .status()
            .iter()
            .map(mesh::cert_manager::CertStatus::dump)
            .collect();
        let xds = self.xds.as_ref().map(|x| x.borrow().clone());
        json!({
            "identity": shared.config.identity.to_string(),
            "config": shared.store.snapshot(),
            "routes": &*shared.routes(),
            "upstreams": shared.upstreams.stats(),
            "certificates": certs,
            "xds": xds,
        })
    }

    /// The admin handler.
    pub fn admin_handler(self) -> Handler {
        Arc::new(move |call: &Call<'_>| match (call.method, call.path) {
            (&Method::GET, "/config_dump") => {
                Reply::json(serde_json::to_string_pretty(&self.config_dump()).unwrap_or_default())
            }
            (_, "/logging") => mesh::logging::reply(&self.log_reload, call),
            (&Method::POST, "/quitquitquit") => {
                self.shutdown.notify_one();
                Reply::text("shutting down\n")
            }
            _ => Reply::status(
                StatusCode::NOT_FOUND,
                "endpoints: GET /config_dump, GET|POST /logging, POST /quitquitquit\n",
            ),
        })
    }

    /// The metrics handler.
    pub fn metrics_handler(self) -> Handler {
        Arc::new(move |call: &Call<'_>| match call.path {
            "/metrics" | "/stats/prometheus" => Reply {
                status: StatusCode::OK,
                content_type: "application/openmetrics-text; version=1.0.0; charset=utf-8",
                body: self.waypoint.telemetry().encode(),
            },
            _ => Reply::status(StatusCode::NOT_FOUND, "GET /metrics\n"),
        })
    }

    /// The readiness handler: ready once the waypoint has its certificate and a first full
    /// config from xDS.
    pub fn readiness_handler(self) -> Handler {
        Arc::new(move |call: &Call<'_>| match call.path {
            "/healthz/ready" => match (self.has_certificate(), self.xds_synced()) {
                (true, true) => Reply::text("ready\n"),
                (false, _) => Reply::status(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "waiting for a certificate\n",
                ),
                (true, false) => {
                    Reply::status(StatusCode::SERVICE_UNAVAILABLE, "waiting for xDS config\n")
                }
            },
            _ => Reply::status(StatusCode::NOT_FOUND, "GET /healthz/ready\n"),
        })
    }
}
