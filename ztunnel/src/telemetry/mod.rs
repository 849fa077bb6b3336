//! Metrics and access logs for proxied connections.
//!
//! A [`ConnectionRecord`] is created when a connection is accepted (counting it as opened) and
//! finished when it closes (counting bytes and the close, and writing one access-log line on
//! target `access`); [`ConnectionRecord::fail`] finishes one that could not be set up.
//!
//! ztunnel's own metrics, beside Istio's `istio_tcp_*` and the shared ones of
//! [`mesh::metrics`] (`process_*`, `tokio_*`, `mesh_build_info`, `mesh_xds_*`,
//! `mesh_certificate*`):
//!
//! | name | type | labels | meaning |
//! | --- | --- | --- | --- |
//! | `ztunnel_connections_active` | gauge | `direction`, `namespace`, `workload`, `pod` | connections open now for the captured pod |
//! | `ztunnel_connections_total` | counter | `direction`, `namespace`, `workload`, `pod` | connections opened for the captured pod |
//! | `ztunnel_connection_failures_total` | counter | `direction`, `reason` | connections that could not be set up (or were refused at the pod's cap) |
//! | `ztunnel_authorization_decisions_total` | counter | `namespace`, `policy`, `decision` | L4 authorization decisions on new inbound connections |
//! | `ztunnel_pods` | gauge | `state` | pods `serving`, and removed pods `draining` their connections |
//!
//! `direction` is `inbound` or `outbound`; `namespace`, `workload` and `pod` name the captured
//! pod (its series go when it has left and its last connection closed). `reason` is one of
//! [`FailureReason`]: `denied`, `upstream_connect`, `no_healthy_upstream`, `tls_handshake`,
//! `hbone`, `unknown_destination`, `timeout`, `connection_limit`, `other`. `policy` is the deciding policy
//! `<namespace>/<name>`, or `default` when none decided; `namespace` there is the destination
//! workload's; `decision` is `allow` or `deny`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use mesh::metrics::{
    set_label, share_label, Label, Reporter, SecurityPolicy, TcpLabels, TcpMetrics, TcpSeries,
};
use mesh::model::{Service, Workload};
use mesh::rbac::Decision;
use mesh::store::Store;
use mesh::Identity;
use prometheus_client::registry::Registry;

mod labels;
mod outcomes;
mod pods;

pub use outcomes::{Direction, FailureReason};
pub use pods::{ActiveConnection, PodConnections};

/// The process's metrics registry and the L4 counters in it.
pub struct Telemetry {
    registry: Mutex<Registry>,
    tcp: TcpMetrics,
    failures: outcomes::Failures,
    decisions: outcomes::Decisions,
    pods: Arc<pods::PodRegistry>,
    labels: labels::LabelCache,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry").finish_non_exhaustive()
    }
}

impl Default for Telemetry {
    /// Telemetry that names pods from what the CNI agent says only.
    fn default() -> Self {
        Telemetry::build(None)
    }
}

impl Telemetry {
    /// Telemetry that names pods from `store` when the control plane describes them.
    pub fn with_store(store: Store) -> Self {
        Telemetry::build(Some(store))
    }

    fn build(store: Option<Store>) -> Self {
        let mut registry = Registry::default();
        let tcp = TcpMetrics::register(&mut registry);
        let failures = outcomes::Failures::register(&mut registry);
        let decisions = outcomes::Decisions::register(&mut registry);
        let pods = Arc::new(pods::PodRegistry::new(store));
        registry.register_collector(Box::new(pods.clone()));
        Telemetry {
            registry: Mutex::new(registry),
            tcp,
            failures,
            decisions,
            pods,
            labels: labels::LabelCache::default(),
        }
    }

    /// The connection counts of pod `uid` (named by `info` until the control plane describes
    /// it), for its [`crate::proxy::PodContext`].
    pub fn pod(&self, uid: &str, info: Option<&proto::zds::WorkloadInfo>) -> Arc<PodConnections> {
        self.pods.pod(uid, info)
    }

    /// Counts a connection that failed before a [`ConnectionRecord`] was opened for it.
    pub fn failure(&self, direction: Direction, reason: FailureReason) {
        self.failures.record(direction, reason);
    }

    /// Counts an authorization decision on a connection to a workload in `namespace`.
    pub fn authorization(&self, namespace: &str, decision: &Decision) {
        self.decisions.record(namespace, decision);
    }

    /// Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        mesh::metrics::encode(&registry)
    }

    /// Runs `f` with the registry, to register more metrics.
    pub fn with_registry(&self, f: impl FnOnce(&mut Registry)) {
        let mut registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut registry);
    }
}

/// What is known about one side of a connection.
#[derive(Debug, Default, Clone)]
pub struct Peer {
    /// Its workload, if it is one we know.
    pub workload: Option<std::sync::Arc<Workload>>,
    /// Its identity, when proven (HBONE) or known.
    pub identity: Option<Identity>,
    /// Its address.
    pub addr: Option<SocketAddr>,
}

/// One connection being proxied.
pub struct ConnectionRecord {
    telemetry: Arc<Telemetry>,
    /// Its label set and counters, found once when it opens.
    series: Arc<TcpSeries>,
    /// `response_flags` learned after it opened (the close is counted under them).
    flags: Option<Label>,
    src: Peer,
    dst: Peer,
    start: Instant,
    policy: Option<String>,
    via: Option<Identity>,
    /// Counts the connection in its pod's active connections until the record is finished.
    active: Option<ActiveConnection>,
}

impl ConnectionRecord {
    /// Starts recording; counts the connection as opened.
    pub fn open(
        telemetry: &Arc<Telemetry>,
        reporter: Reporter,
        src: Peer,
        dst: Peer,
        service: Option<&Service>,
        mtls: bool,
    ) -> Self {
        let mut l = TcpLabels::new(reporter);
        // Workload labels as Istio derives them: `app`/`version` are the canonical service
        // and revision (the workload API carries no raw pod labels).
        let principal = |w: Option<&labels::WorkloadLabels>, id: &Identity| match w {
            Some(w) => w.principal(id),
            None => Label::from(id.as_uri()),
        };
        let src_labels = src.workload.as_ref().map(|w| telemetry.labels.get(w));
        if let Some(w) = &src_labels {
            share_label(&mut l.source_workload, &w.workload);
            share_label(&mut l.source_canonical_service, &w.canonical_service);
            share_label(&mut l.source_canonical_revision, &w.canonical_revision);
            share_label(&mut l.source_workload_namespace, &w.namespace);
            share_label(&mut l.source_app, &w.canonical_service);
            share_label(&mut l.source_version, &w.canonical_revision);
            share_label(&mut l.source_cluster, &w.cluster);
        }
        if let Some(id) = &src.identity {
            l.source_principal = principal(src_labels.as_deref(), id);
        }
        let dst_labels = dst.workload.as_ref().map(|w| telemetry.labels.get(w));
        if let Some(w) = &dst_labels {
            share_label(&mut l.destination_workload, &w.workload);
            share_label(&mut l.destination_canonical_service, &w.canonical_service);
            share_label(&mut l.destination_canonical_revision, &w.canonical_revision);
            share_label(&mut l.destination_workload_namespace, &w.namespace);
            share_label(&mut l.destination_app, &w.canonical_service);
            share_label(&mut l.destination_version, &w.canonical_revision);
            share_label(&mut l.destination_cluster, &w.cluster);
        }
        if let Some(id) = &dst.identity {
            l.destination_principal = principal(dst_labels.as_deref(), id);
        }
        if let Some(s) = service {
            set_label(&mut l.destination_service, &s.hostname);
            set_label(&mut l.destination_service_namespace, &s.namespace);
            set_label(&mut l.destination_service_name, &s.name);
        }
        if mtls {
            l.connection_security_policy = SecurityPolicy::mutual_tls;
        }
        let series = telemetry.tcp.series(l);
        series.record_open();
        ConnectionRecord {
            telemetry: telemetry.clone(),
            series,
            flags: None,
            src,
            dst,
            start: Instant::now(),
            policy: None,
            via: None,
            active: None,
        }
    }

    /// Counts the connection in `pod`'s `ztunnel_connections_total` and, until it is
    /// finished, `ztunnel_connections_active` (direction from the reporter).
    pub fn for_pod(mut self, pod: &Arc<PodConnections>) -> Self {
        self.active = Some(pod.open(Direction::of(self.series.labels().reporter)));
        self
    }

    /// Finishes a connection that could not be set up: counts the failure by `reason`, then
    /// closes it as [`ConnectionRecord::close`] does with `error` and no bytes.
    pub fn fail(self, reason: FailureReason, error: &dyn std::fmt::Display) {
        let direction = Direction::of(self.series.labels().reporter);
        self.telemetry.failures.record(direction, reason);
        self.close(0, 0, Some(error));
    }

    /// Sets the `response_flags` label (e.g. `DENY`, `UF` for upstream connect failure).
    pub fn set_flags(&mut self, flags: &str) {
        self.flags = Some(Label::from(flags));
    }

    /// Names the waypoint the connection came through (for the access log); the source is
    /// then the client the waypoint proxied for.
    pub fn set_via(&mut self, waypoint: Identity) {
        self.via = Some(waypoint);
    }

    /// Names the policy that decided (for the access log).
    pub fn set_policy(&mut self, policy: impl Into<String>) {
        self.policy = Some(policy.into());
    }

    /// Finishes: bytes the client sent (request) and the server sent back (response), and an
    /// error if the connection failed.
    pub fn close(mut self, sent: u64, received: u64, error: Option<&dyn std::fmt::Display>) {
        // The opened count already used these labels; a flag learned later goes on the close.
        if error.is_some() && self.flags.is_none() && &*self.series.labels().response_flags == "-" {
            self.flags = Some(Label::from("UF"));
        }
        let relabelled = match self.flags.take() {
            Some(flags) if flags != self.series.labels().response_flags => {
                let mut labels = self.series.labels().clone();
                labels.response_flags = flags;
                Some(self.telemetry.tcp.series(labels))
            }
            _ => None,
        };
        let series = relabelled.as_ref().unwrap_or(&self.series);
        series.record_close(sent, received);
        let labels = series.labels();
        let duration_ms = self.start.elapsed().as_millis() as u64;
        // Rare (failed connections only), and logged quoted as before.
        let error = error.map(ToString::to_string);
        tracing::info!(
            target: "access",
            reporter = ?labels.reporter,
            src.addr = %Blank(self.src.addr.as_ref()),
            src.workload = %Blank(self.src.workload.as_deref().map(WorkloadName)),
            src.identity = %uri(self.src.identity.as_ref()),
            dst.addr = %Blank(self.dst.addr.as_ref()),
            dst.workload = %Blank(self.dst.workload.as_deref().map(WorkloadName)),
            dst.identity = %uri(self.dst.identity.as_ref()),
            dst.service = %labels.destination_service,
            via.waypoint = %uri(self.via.as_ref()),
            mtls = matches!(labels.connection_security_policy, SecurityPolicy::mutual_tls),
            bytes_sent = sent,
            bytes_recv = received,
            duration_ms,
            flags = %labels.response_flags,
            policy = self.policy.as_deref().unwrap_or(""),
            error = error.as_deref().unwrap_or(""),
            "connection complete"
        );
    }
}

/// Formats the value, or nothing for `None` (the access log's fields, written without
/// allocating a string for each).
struct Blank<T>(Option<T>);

impl<T: std::fmt::Display> std::fmt::Display for Blank<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(v) => v.fmt(f),
            None => Ok(()),
        }
    }
}

/// An identity's URI, or nothing.
fn uri(id: Option<&Identity>) -> &str {
    id.map_or("", Identity::as_uri)
}

/// A workload as the access log names it: `namespace/name`.
struct WorkloadName<'a>(&'a Workload);

impl std::fmt::Display for WorkloadName<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.0.namespace(), self.0.name)
    }
}

#[cfg(test)]
mod tests;
