//! The delta ADS client's metrics (`mesh_xds_*`), updated by [`crate::xds::XdsClient`].

use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Upper bounds of the apply-time buckets, in seconds: a response is decoded, checked and
/// applied in well under a millisecond for a few resources, tens of milliseconds for a full
/// push of a big cluster.
const APPLY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// The `type` label: a resource type's short name, as istiod-lite's metrics name it.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabel {
    /// `address`, `authorization`, `l7_policy`, `request_authn`, `routes`, or `unknown` for a
    /// type this client does not know.
    pub r#type: &'static str,
}

impl TypeLabel {
    /// The label of a type URL.
    pub fn of(type_url: &str) -> Self {
        let short = match type_url {
            proto::ADDRESS_TYPE_URL => "address",
            proto::AUTHORIZATION_TYPE_URL => "authorization",
            proto::L7_POLICY_TYPE_URL => "l7_policy",
            proto::REQUEST_AUTHN_TYPE_URL => "request_authn",
            proto::ROUTES_TYPE_URL => "routes",
            _ => "unknown",
        };
        TypeLabel { r#type: short }
    }
}

fn apply_histogram() -> Histogram {
    Histogram::new(APPLY_BUCKETS)
}

/// Unix seconds now, as a gauge value.
fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// The xDS client's metrics. Cheap to clone (the handles are shared); the client owns one
/// from the start, and [`XdsMetrics::register`] puts it in a registry.
#[derive(Debug, Clone)]
pub struct XdsMetrics {
    connected: Gauge,
    reconnects: Counter,
    messages: Family<TypeLabel, Counter>,
    acks: Family<TypeLabel, Counter>,
    nacks: Family<TypeLabel, Counter>,
    last_ack: Gauge<f64, AtomicU64>,
    last_nack: Gauge<f64, AtomicU64>,
    apply: Family<TypeLabel, Histogram, fn() -> Histogram>,
}

impl Default for XdsMetrics {
    fn default() -> Self {
        XdsMetrics {
            connected: Gauge::default(),
            reconnects: Counter::default(),
            messages: Family::default(),
            acks: Family::default(),
            nacks: Family::default(),
            last_ack: Gauge::default(),
            last_nack: Gauge::default(),
            apply: Family::new_with_constructor(apply_histogram),
        }
    }
}

impl XdsMetrics {
    /// Adds the metrics to `registry` (prometheus-client adds `_total` to counters).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "mesh_xds_connected",
            "1 while the delta ADS stream to the control plane is up",
            self.connected.clone(),
        );
        registry.register(
            "mesh_xds_reconnects",
            "Times the xDS client retried after its stream ended or a connection attempt failed",
            self.reconnects.clone(),
        );
        registry.register(
            "mesh_xds_messages",
            "xDS responses received, by resource type",
            self.messages.clone(),
        );
        registry.register(
            "mesh_xds_acks",
            "xDS responses applied and ACKed, by resource type",
            self.acks.clone(),
        );
        registry.register(
            "mesh_xds_nacks",
            "xDS responses rejected (NACKed), by resource type",
            self.nacks.clone(),
        );
        registry.register(
            "mesh_xds_last_ack_timestamp_seconds",
            "Unix time of the last ACK sent (0: never)",
            self.last_ack.clone(),
        );
        registry.register(
            "mesh_xds_last_nack_timestamp_seconds",
            "Unix time of the last NACK sent (0: never)",
            self.last_nack.clone(),
        );
        registry.register(
            "mesh_xds_apply_seconds",
            "Time from an xDS response received to its resources applied to the store",
            self.apply.clone(),
        );
    }

    /// The stream is up (`true`) or down.
    pub(crate) fn set_connected(&self, up: bool) {
        self.connected.set(i64::from(up));
    }

    /// The client is about to retry.
    pub(crate) fn reconnecting(&self) {
        self.reconnects.inc();
    }

    /// A response of `type_url` arrived.
    pub(crate) fn received(&self, type_url: &str) {
        self.messages.get_or_create(&TypeLabel::of(type_url)).inc();
    }

    /// A response of `type_url` was applied in `took` and ACKed.
    pub(crate) fn acked(&self, type_url: &str, took: Duration) {
        let label = TypeLabel::of(type_url);
        self.acks.get_or_create(&label).inc();
        self.apply.get_or_create(&label).observe(took.as_secs_f64());
        self.last_ack.set(unix_now());
    }

    /// A response of `type_url` was NACKed.
    pub(crate) fn nacked(&self, type_url: &str) {
        self.nacks.get_or_create(&TypeLabel::of(type_url)).inc();
        self.last_nack.set(unix_now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_urls_map_to_istiod_lites_short_names() {
        assert_eq!(TypeLabel::of(proto::ADDRESS_TYPE_URL).r#type, "address");
        assert_eq!(TypeLabel::of(proto::ROUTES_TYPE_URL).r#type, "routes");
        assert_eq!(TypeLabel::of("type.googleapis.com/x").r#type, "unknown");
    }
}
