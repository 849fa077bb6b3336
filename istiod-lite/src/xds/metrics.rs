//! The config API's Prometheus metrics.
//!
//! | name | kind | labels | what |
//! | --- | --- | --- | --- |
//! | `istiod_lite_xds_connected_proxies` | gauge | | delta ADS streams open now |
//! | `istiod_lite_xds_pushes_total` | counter | `type` | responses sent (answers to subscriptions included) |
//! | `istiod_lite_xds_nacks_total` | counter | `type` | responses a proxy rejected |
//! | `istiod_lite_xds_push_latency_seconds` | histogram | `type` | first config change → response carrying it sent |
//! | `istiod_lite_xds_resources` | gauge | `type` | resources in the current snapshot |
//! | `istiod_lite_xds_snapshots_total` | counter | | snapshots published to streams (after debouncing) |
//!
//! `type` is `address`, `authorization`, `l7_policy` or `request_authn`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::ResourceType;

/// Upper bounds of the push latency buckets, in seconds: the debounce (100 ms by default)
/// sits in the middle.
const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The label of per-type metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabels {
    /// `address`, `authorization`, `l7_policy` or `request_authn`.
    pub r#type: &'static str,
}

impl TypeLabels {
    /// The labels of `kind`.
    pub fn of(kind: ResourceType) -> Self {
        TypeLabels {
            r#type: kind.label(),
        }
    }
}

type HistogramFamily = Family<TypeLabels, Histogram, fn() -> Histogram>;

/// The config API's metrics; cheap to clone (every field is a shared handle).
#[derive(Debug, Clone)]
pub struct XdsMetrics {
    /// Streams open now.
    pub connected_proxies: Gauge,
    /// Responses sent, by type.
    pub pushes: Family<TypeLabels, Counter>,
    /// Responses rejected, by type.
    pub nacks: Family<TypeLabels, Counter>,
    /// Config change → response sent, by type.
    pub push_latency: HistogramFamily,
    /// Resources in the current snapshot, by type.
    pub resources: Family<TypeLabels, Gauge>,
    /// Snapshots published to streams.
    pub snapshots: Counter,
}

impl Default for XdsMetrics {
    fn default() -> Self {
        XdsMetrics {
            connected_proxies: Gauge::default(),
            pushes: Family::default(),
            nacks: Family::default(),
            push_latency: Family::new_with_constructor(latency_histogram),
            resources: Family::default(),
            snapshots: Counter::default(),
        }
    }
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

impl XdsMetrics {
    /// Creates the metrics and registers them (prometheus-client adds `_total` to counters).
    pub fn register(registry: &mut Registry) -> Self {
        let m = XdsMetrics::default();
        registry.register(
            "istiod_lite_xds_connected_proxies",
            "Delta ADS streams open now",
            m.connected_proxies.clone(),
        );
        registry.register(
            "istiod_lite_xds_pushes",
            "Delta ADS responses sent, by resource type",
            m.pushes.clone(),
        );
        registry.register(
            "istiod_lite_xds_nacks",
            "Delta ADS responses rejected by a proxy, by resource type",
            m.nacks.clone(),
        );
        registry.register(
            "istiod_lite_xds_push_latency_seconds",
            "Time from a config change to the response carrying it being sent, by resource type",
            m.push_latency.clone(),
        );
        registry.register(
            "istiod_lite_xds_resources",
            "Resources in the current config snapshot, by resource type",
            m.resources.clone(),
        );
        registry.register(
            "istiod_lite_xds_snapshots",
            "Config snapshots published to streams, after debouncing",
            m.snapshots.clone(),
        );
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exports_the_documented_names() {
        let mut registry = Registry::default();
        let m = XdsMetrics::register(&mut registry);
        m.connected_proxies.inc();
        m.pushes
            .get_or_create(&TypeLabels::of(ResourceType::Address))
            .inc();
        m.nacks
            .get_or_create(&TypeLabels::of(ResourceType::Authorization))
            .inc();
        m.push_latency
            .get_or_create(&TypeLabels::of(ResourceType::Address))
            .observe(0.12);
        let text = mesh::metrics::encode(&registry);
        for want in [
            "istiod_lite_xds_connected_proxies 1",
            "istiod_lite_xds_pushes_total{type=\"address\"} 1",
            "istiod_lite_xds_nacks_total{type=\"authorization\"} 1",
            "istiod_lite_xds_push_latency_seconds_bucket{le=\"0.15\",type=\"address\"} 1",
            "istiod_lite_xds_snapshots_total 0",
        ] {
            assert!(text.contains(want), "{want} missing:\n{text}");
        }
    }
}
