//! L7 and L4 metrics with Istio's names and labels (`reporter="waypoint"`), and the access log.
//!
//! Every request ends in [`Telemetry::record_request`]: `istio_requests_total`,
//! `istio_request_duration_milliseconds`, `istio_request_bytes`, `istio_response_bytes`, and
//! one line on target `access`. Tunnels passed through as TCP end in
//! [`Telemetry::record_tcp`] (`istio_tcp_*`).

use std::sync::{Arc, Mutex};

use mesh::model::{Service, Workload};
use mesh::Identity;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

const UNKNOWN: &str = "unknown";

/// Who a side of a request is, as labels see it.
#[derive(Debug, Clone, Default)]
pub struct PeerInfo {
    /// Its workload, when known.
    pub workload: Option<Arc<Workload>>,
    /// Its identity, when proven.
    pub identity: Option<Identity>,
}

/// The destination service, when the request addressed one.
pub type ServiceInfo = Option<Arc<Service>>;

/// Istio's standard L7 label set, `reporter="waypoint"`. Missing values are `unknown`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// Always `waypoint`.
    pub reporter: String,
    /// Source workload name.
    pub source_workload: String,
    /// Source canonical service.
    pub source_canonical_service: String,
    /// Source canonical revision.
    pub source_canonical_revision: String,
    /// Source namespace.
    pub source_workload_namespace: String,
    /// Source identity, `spiffe://...`.
    pub source_principal: String,
    /// Source `app`.
    pub source_app: String,
    /// Source `version`.
    pub source_version: String,
    /// Source cluster.
    pub source_cluster: String,
    /// Destination service host name.
    pub destination_service: String,
    /// Destination service namespace.
    pub destination_service_namespace: String,
    /// Destination service name.
    pub destination_service_name: String,
    /// Destination workload name.
    pub destination_workload: String,
    /// Destination canonical service.
    pub destination_canonical_service: String,
    /// Destination canonical revision.
    pub destination_canonical_revision: String,
    /// Destination namespace.
    pub destination_workload_namespace: String,
    /// Destination identity, `spiffe://...`.
    pub destination_principal: String,
    /// Destination `app`.
    pub destination_app: String,
    /// Destination `version`.
    pub destination_version: String,
    /// Destination cluster.
    pub destination_cluster: String,
    /// `http`, `grpc` or (TCP metrics) `tcp`.
    pub request_protocol: String,
    /// HTTP status sent to the client (`0` for TCP).
    pub response_code: String,
    /// gRPC status, or `-`.
    pub grpc_response_status: String,
    /// Envoy response flag, `-` when none.
    pub response_flags: String,
    /// `mutual_tls`: the waypoint only accepts HBONE.
    pub connection_security_policy: String,
}

impl HttpLabels {
    /// Labels for a request from `src` to `dst` (the chosen endpoint) of `service`.
    pub fn new(src: &PeerInfo, dst: &PeerInfo, service: &ServiceInfo) -> Self {
        let u = || UNKNOWN.to_string();
        let mut l = HttpLabels {
            reporter: "waypoint".to_string(),
            source_workload: u(),
            source_canonical_service: u(),
            source_canonical_revision: u(),
            source_workload_namespace: u(),
            source_principal: u(),
            source_app: u(),
            source_version: u(),
            source_cluster: u(),
            destination_service: u(),
            destination_service_namespace: u(),
            destination_service_name: u(),
            destination_workload: u(),
            destination_canonical_service: u(),
            destination_canonical_revision: u(),
            destination_workload_namespace: u(),
            destination_principal: u(),
            destination_app: u(),
            destination_version: u(),
            destination_cluster: u(),
            request_protocol: "http".to_string(),
            response_code: "0".to_string(),
            grpc_response_status: "-".to_string(),
            response_flags: "-".to_string(),
            connection_security_policy: "mutual_tls".to_string(),
        };
        let [w, cs, cr, ns, cl] = peer_labels(src);
        set(&mut l.source_workload, &w);
        set(&mut l.source_app, &cs);
        set(&mut l.source_canonical_service, &cs);
        set(&mut l.source_version, &cr);
        set(&mut l.source_canonical_revision, &cr);
        set(&mut l.source_workload_namespace, &ns);
        set(&mut l.source_cluster, &cl);
        if let Some(id) = &src.identity {
            l.source_principal = id.to_string();
        }
        let [w, cs, cr, ns, cl] = peer_labels(dst);
        set(&mut l.destination_workload, &w);
        set(&mut l.destination_app, &cs);
        set(&mut l.destination_canonical_service, &cs);
        set(&mut l.destination_version, &cr);
        set(&mut l.destination_canonical_revision, &cr);
        set(&mut l.destination_workload_namespace, &ns);
        set(&mut l.destination_cluster, &cl);
        if let Some(id) = &dst.identity {
            l.destination_principal = id.to_string();
        }
        if let Some(s) = service {
            set(&mut l.destination_service, &s.hostname);
            set(&mut l.destination_service_namespace, &s.namespace);
            let name = if s.name.is_empty() {
                s.hostname.split('.').next().unwrap_or_default()
            } else {
                &s.name
            };
            set(&mut l.destination_service_name, name);
        }
        l
    }
}

fn set(slot: &mut String, value: &str) {
    if !value.is_empty() {
        *slot = value.to_string();
    }
}

/// Workload name, canonical service, canonical revision, namespace, cluster.
fn peer_labels(p: &PeerInfo) -> [String; 5] {
    match (&p.workload, &p.identity) {
        (Some(w), _) => {
            let name = if w.workload_name.is_empty() {
                w.name.clone()
            } else {
                w.workload_name.clone()
            };
            [
                name,
                w.canonical_name.clone(),
                w.canonical_revision.clone(),
                w.namespace().to_string(),
                w.cluster_id.clone(),
            ]
        }
        (None, Some(id)) => [
            String::new(),
            String::new(),
            String::new(),
            id.namespace().to_string(),
            String::new(),
        ],
        (None, None) => Default::default(),
    }
}

fn duration_histogram() -> Histogram {
    Histogram::new([
        0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
        30000.0, 60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
    ])
}

fn bytes_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        1.0, 10.0, 9,
    ))
}

type HistogramFamily = Family<HttpLabels, Histogram, fn() -> Histogram>;

/// What one finished request reports.
#[derive(Debug, Clone)]
pub struct RequestRecord {
    /// Metric labels (response code, flags and protocol filled in).
    pub labels: HttpLabels,
    /// From the first byte of the request to the end of the response, in milliseconds.
    pub duration_ms: f64,
    /// Request size: headers and body.
    pub request_bytes: u64,
    /// Response size: headers and body.
    pub response_bytes: u64,
}

/// The process's metrics registry with the waypoint's metrics in it.
pub struct Telemetry {
    registry: Mutex<Registry>,
    requests: Family<HttpLabels, Counter>,
    duration: HistogramFamily,
    request_bytes: HistogramFamily,
    response_bytes: HistogramFamily,
    tcp_opened: Family<HttpLabels, Counter>,
    tcp_closed: Family<HttpLabels, Counter>,
    tcp_sent: Family<HttpLabels, Counter>,
    tcp_received: Family<HttpLabels, Counter>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry").finish_non_exhaustive()
    }
}

impl Default for Telemetry {
    fn default() -> Self {
        let mut r = Registry::default();
        let requests = Family::<HttpLabels, Counter>::default();
        let duration: HistogramFamily = Family::new_with_constructor(duration_histogram);
        let request_bytes: HistogramFamily = Family::new_with_constructor(bytes_histogram);
        let response_bytes: HistogramFamily = Family::new_with_constructor(bytes_histogram);
        r.register("istio_requests", "Requests handled", requests.clone());
        r.register(
            "istio_request_duration_milliseconds",
            "Request duration",
            duration.clone(),
        );
        r.register(
            "istio_request_bytes",
            "Request sizes",
            request_bytes.clone(),
        );
        r.register(
            "istio_response_bytes",
            "Response sizes",
            response_bytes.clone(),
        );
        let tcp = |r: &mut Registry, name: &str, help: &str| {
            let f = Family::<HttpLabels, Counter>::default();
            r.register(name, help, f.clone());
            f
        };
        let tcp_opened = tcp(
            &mut r,
            "istio_tcp_connections_opened",
            "TCP connections opened",
        );
        let tcp_closed = tcp(
            &mut r,
            "istio_tcp_connections_closed",
            "TCP connections closed",
        );
        let tcp_sent = tcp(
            &mut r,
            "istio_tcp_sent_bytes",
            "Bytes sent during the response of TCP connections (server to client)",
        );
        let tcp_received = tcp(
            &mut r,
            "istio_tcp_received_bytes",
            "Bytes received during the request of TCP connections (client to server)",
        );
        Telemetry {
            registry: Mutex::new(r),
            requests,
            duration,
            request_bytes,
            response_bytes,
            tcp_opened,
            tcp_closed,
            tcp_sent,
            tcp_received,
        }
    }
}

impl Telemetry {
    /// Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        mesh::metrics::encode(&registry)
    }

    /// Runs `f` with the registry, to register more metrics (the process's, xDS and
    /// certificates: see [`mesh::metrics`]).
    pub fn with_registry(&self, f: impl FnOnce(&mut Registry)) {
        let mut registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut registry);
    }

    /// Counts one finished request.
    pub fn record_request(&self, r: &RequestRecord) {
        self.requests.get_or_create(&r.labels).inc();
        self.duration
            .get_or_create(&r.labels)
            .observe(r.duration_ms);
        self.request_bytes
            .get_or_create(&r.labels)
            .observe(r.request_bytes as f64);
        self.response_bytes
            .get_or_create(&r.labels)
            .observe(r.response_bytes as f64);
    }

    /// Counts a TCP tunnel opened (labels with `request_protocol="tcp"`).
    pub fn tcp_opened(&self, labels: &HttpLabels) {
        self.tcp_opened.get_or_create(labels).inc();
    }

    /// Counts a TCP tunnel's end and its bytes each way.
    pub fn tcp_closed(&self, labels: &HttpLabels, from_client: u64, to_client: u64) {
        self.tcp_closed.get_or_create(labels).inc();
        self.tcp_received.get_or_create(labels).inc_by(from_client);
        self.tcp_sent.get_or_create(labels).inc_by(to_client);
    }
}

/// TCP labels: the L7 set with `request_protocol="tcp"` and no response code.
pub fn tcp_labels(src: &PeerInfo, dst: &PeerInfo, service: &ServiceInfo) -> HttpLabels {
    let mut l = HttpLabels::new(src, dst, service);
    l.request_protocol = "tcp".to_string();
    l
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exports_istio_names_with_waypoint_reporter() {
        let t = Telemetry::default();
        let src = PeerInfo {
            workload: None,
            identity: Some(Identity::new("cluster.local", "shop", "client").expect("id")),
        };
        let mut labels = HttpLabels::new(&src, &PeerInfo::default(), &None);
        labels.response_code = "200".into();
        t.record_request(&RequestRecord {
            labels: labels.clone(),
            duration_ms: 3.0,
            request_bytes: 100,
            response_bytes: 1000,
        });
        t.tcp_opened(&tcp_labels(&src, &PeerInfo::default(), &None));
        let text = t.encode();
        for name in [
            "istio_requests_total{",
            "istio_request_duration_milliseconds_bucket{",
            "istio_request_bytes_bucket{",
            "istio_response_bytes_bucket{",
            "istio_tcp_connections_opened_total{",
        ] {
            assert!(text.contains(name), "{name} missing:\n{text}");
        }
        assert!(text.contains("reporter=\"waypoint\""));
        assert!(text.contains("source_principal=\"spiffe://cluster.local/ns/shop/sa/client\""));
        assert!(text.contains("source_workload_namespace=\"shop\""));
        assert!(text.contains("destination_service=\"unknown\""));
        assert!(text.contains("response_code=\"200\""));
    }
}
