//! Istio-compatible L4 metrics: `istio_tcp_*` counters with Istio's label set.
//!
//! Dashboards written for Istio work unchanged: the names, the labels and the `unknown` for a
//! missing value all follow Istio's standard metrics.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// Who reports a connection.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Reporter {
    /// The tunnel on the client's side.
    source,
    /// The tunnel on the server's side.
    destination,
}

/// Whether the connection was carried over mutual TLS.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum SecurityPolicy {
    /// HBONE (mTLS).
    mutual_tls,
    /// Plaintext or unknown.
    unknown,
}

/// Istio's connection label set. Empty strings are exported as `unknown`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpLabels {
    /// `source` or `destination`.
    pub reporter: Reporter,
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
    /// Source `app` label.
    pub source_app: String,
    /// Source `version` label.
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
    /// Destination `app` label.
    pub destination_app: String,
    /// Destination `version` label.
    pub destination_version: String,
    /// Destination cluster.
    pub destination_cluster: String,
    /// Always `tcp` at L4.
    pub request_protocol: String,
    /// `-` when nothing went wrong, else a flag such as `DENY` or `UF` (upstream failure).
    pub response_flags: String,
    /// `mutual_tls` or `unknown`.
    pub connection_security_policy: SecurityPolicy,
}

impl TcpLabels {
    /// A label set with every string `unknown`, for the given reporter.
    pub fn new(reporter: Reporter) -> Self {
        let u = || "unknown".to_string();
        TcpLabels {
            reporter,
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
            request_protocol: "tcp".to_string(),
            response_flags: "-".to_string(),
            connection_security_policy: SecurityPolicy::unknown,
        }
    }
}

/// Sets `slot` to `value`, keeping `unknown` for an empty value.
pub fn set_label(slot: &mut String, value: &str) {
    if !value.is_empty() {
        *slot = value.to_string();
    }
}

/// The four `istio_tcp_*` counters.
#[derive(Debug, Default, Clone)]
pub struct TcpMetrics {
    /// Connections opened.
    pub opened: Family<TcpLabels, Counter>,
    /// Connections closed.
    pub closed: Family<TcpLabels, Counter>,
    /// Bytes of the response direction (server to client), as Istio defines it.
    pub sent: Family<TcpLabels, Counter>,
    /// Bytes of the request direction (client to server), as Istio defines it.
    pub received: Family<TcpLabels, Counter>,
}

impl TcpMetrics {
    /// Registers the counters (prometheus-client adds the `_total` suffix).
    pub fn register(registry: &mut Registry) -> Self {
        let m = TcpMetrics::default();
        registry.register(
            "istio_tcp_connections_opened",
            "TCP connections opened",
            m.opened.clone(),
        );
        registry.register(
            "istio_tcp_connections_closed",
            "TCP connections closed",
            m.closed.clone(),
        );
        registry.register(
            "istio_tcp_sent_bytes",
            "Bytes sent during the response of TCP connections (server to client)",
            m.sent.clone(),
        );
        registry.register(
            "istio_tcp_received_bytes",
            "Bytes received during the request of TCP connections (client to server)",
            m.received.clone(),
        );
        m
    }

    /// Records a connection's end: the close, the client's bytes (`received`) and the
    /// server's bytes (`sent`).
    pub fn record_close(&self, labels: &TcpLabels, request_bytes: u64, response_bytes: u64) {
        self.closed.get_or_create(labels).inc();
        self.received.get_or_create(labels).inc_by(request_bytes);
        self.sent.get_or_create(labels).inc_by(response_bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::encode;

    #[test]
    fn exports_istio_names_and_unknown_defaults() {
        let mut registry = Registry::default();
        let m = TcpMetrics::register(&mut registry);
        let mut labels = TcpLabels::new(Reporter::destination);
        set_label(
            &mut labels.source_principal,
            "spiffe://cluster.local/ns/a/sa/b",
        );
        set_label(&mut labels.destination_app, "");
        labels.connection_security_policy = SecurityPolicy::mutual_tls;
        m.opened.get_or_create(&labels).inc();
        m.record_close(&labels, 20, 10);
        let text = encode(&registry);
        for name in [
            "istio_tcp_connections_opened_total",
            "istio_tcp_connections_closed_total",
            "istio_tcp_sent_bytes_total",
            "istio_tcp_received_bytes_total",
        ] {
            assert!(text.contains(name), "{name} missing:\n{text}");
        }
        assert!(text.contains("reporter=\"destination\""));
        assert!(text.contains("source_principal=\"spiffe://cluster.local/ns/a/sa/b\""));
        assert!(text.contains("destination_app=\"unknown\""));
        assert!(text.contains("connection_security_policy=\"mutual_tls\""));
        assert!(text.contains("} 20"), "received bytes:\n{text}");
    }
}
