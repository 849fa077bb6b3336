//! Istio-compatible L4 metrics: `istio_tcp_*` counters with Istio's label set.
//!
//! Dashboards written for Istio work unchanged: the names, the labels and the `unknown` for a
//! missing value all follow Istio's standard metrics.

use std::sync::{Arc, LazyLock};

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

/// Istio's connection label set. Empty strings are exported as `unknown`. Every value is a
/// shared string ([`Label`]): a connection's set is built from values its workloads already
/// hold, without allocating.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpLabels {
    /// `source` or `destination`.
    pub reporter: Reporter,
    /// Source workload name.
    pub source_workload: Label,
    /// Source canonical service.
    pub source_canonical_service: Label,
    /// Source canonical revision.
    pub source_canonical_revision: Label,
    /// Source namespace.
    pub source_workload_namespace: Label,
    /// Source identity, `spiffe://...`.
    pub source_principal: Label,
    /// Source `app` label.
    pub source_app: Label,
    /// Source `version` label.
    pub source_version: Label,
    /// Source cluster.
    pub source_cluster: Label,
    /// Destination service host name.
    pub destination_service: Label,
    /// Destination service namespace.
    pub destination_service_namespace: Label,
    /// Destination service name.
    pub destination_service_name: Label,
    /// Destination workload name.
    pub destination_workload: Label,
    /// Destination canonical service.
    pub destination_canonical_service: Label,
    /// Destination canonical revision.
    pub destination_canonical_revision: Label,
    /// Destination namespace.
    pub destination_workload_namespace: Label,
    /// Destination identity, `spiffe://...`.
    pub destination_principal: Label,
    /// Destination `app` label.
    pub destination_app: Label,
    /// Destination `version` label.
    pub destination_version: Label,
    /// Destination cluster.
    pub destination_cluster: Label,
    /// Always `tcp` at L4.
    pub request_protocol: Label,
    /// `-` when nothing went wrong, else a flag such as `DENY` or `UF` (upstream failure).
    pub response_flags: Label,
    /// `mutual_tls` or `unknown`.
    pub connection_security_policy: SecurityPolicy,
}

impl TcpLabels {
    /// A label set with every string `unknown`, for the given reporter.
    pub fn new(reporter: Reporter) -> Self {
        let u = || Label::clone(&UNKNOWN);
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
            request_protocol: Label::clone(&TCP),
            response_flags: Label::clone(&NO_FLAGS),
            connection_security_policy: SecurityPolicy::unknown,
        }
    }
}

/// Sets `slot` to `value`, keeping `unknown` for an empty value.
pub fn set_label(slot: &mut Label, value: &str) {
    if !value.is_empty() {
        *slot = Label::from(value);
    }
}

/// Sets `slot` to the shared `value`, keeping `unknown` for an empty value.
pub fn share_label(slot: &mut Label, value: &Label) {
    if !value.is_empty() {
        *slot = value.clone();
    }
}

/// A label value, shared between the label sets that carry it.
pub type Label = Arc<str>;

// Shared, so a fresh label set allocates nothing.
static UNKNOWN: LazyLock<Label> = LazyLock::new(|| Label::from("unknown"));
static TCP: LazyLock<Label> = LazyLock::new(|| Label::from("tcp"));
static NO_FLAGS: LazyLock<Label> = LazyLock::new(|| Label::from("-"));

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
