//! Istio-compatible L4 metrics: `istio_tcp_*` counters with Istio's label set.
//!
//! Dashboards written for Istio work unchanged: the names, the labels and the `unknown` for a
//! missing value all follow Istio's standard metrics.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, RwLock};

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
    /// Every label set seen, with its four counters ([`TcpMetrics::series`]).
    series: Arc<RwLock<SeriesMap>>,
}

type SeriesMap = HashMap<TcpLabels, Arc<TcpSeries>, foldhash::fast::RandomState>;

/// One label set and its four counters (the same counters the families export), found once
/// per connection: a connection counts its open and close through it instead of looking each
/// counter up in its family (four look-ups, each hashing the 23 labels).
#[derive(Debug)]
pub struct TcpSeries {
    labels: TcpLabels,
    opened: Counter,
    closed: Counter,
    sent: Counter,
    received: Counter,
}

impl TcpSeries {
    /// The label set.
    pub fn labels(&self) -> &TcpLabels {
        &self.labels
    }

    /// Counts a connection opened.
    pub fn record_open(&self) {
        self.opened.inc();
    }

    /// Records a connection's end: the close, the client's bytes (`received`) and the
    /// server's bytes (`sent`).
    pub fn record_close(&self, request_bytes: u64, response_bytes: u64) {
        self.closed.inc();
        self.received.inc_by(request_bytes);
        self.sent.inc_by(response_bytes);
    }
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

    /// The counters of `labels`, created in the families on first use. Like the families
    /// themselves, a label set once seen stays (its series keep being exported).
    pub fn series(&self, labels: TcpLabels) -> Arc<TcpSeries> {
        // A poisoned lock only means a panic elsewhere while inserting; the map is intact.
        if let Some(found) = self
            .series
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&labels)
        {
            return found.clone();
        }
        let mut map = self.series.write().unwrap_or_else(|e| e.into_inner());
        map.entry(labels)
            .or_insert_with_key(|labels| {
                Arc::new(TcpSeries {
                    opened: self.opened.get_or_create_owned(labels),
                    closed: self.closed.get_or_create_owned(labels),
                    sent: self.sent.get_or_create_owned(labels),
                    received: self.received.get_or_create_owned(labels),
                    labels: labels.clone(),
                })
            })
            .clone()
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
        let series = m.series(labels);
        series.record_open();
        series.record_close(20, 10);
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

    #[test]
    fn equal_label_sets_share_one_series_and_its_counters_are_the_exported_ones() {
        let mut registry = Registry::default();
        let m = TcpMetrics::register(&mut registry);
        let labels = || {
            let mut l = TcpLabels::new(Reporter::source);
            // Equal values in separate allocations: the series is found by value.
            set_label(&mut l.destination_workload, "server");
            l
        };
        let first = m.series(labels());
        let second = m.series(labels());
        assert!(Arc::ptr_eq(&first, &second));
        first.record_open();
        second.record_open();
        second.record_close(5, 7);
        assert_eq!(m.opened.get_or_create(&labels()).get(), 2);
        assert_eq!(m.closed.get_or_create(&labels()).get(), 1);
        assert_eq!(m.received.get_or_create(&labels()).get(), 5);
        assert_eq!(m.sent.get_or_create(&labels()).get(), 7);
        let mut flagged = labels();
        flagged.response_flags = Label::from("UF");
        assert!(!Arc::ptr_eq(&first, &m.series(flagged)));
    }
}
