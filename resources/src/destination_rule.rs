//! Istio `networking.istio.io` DestinationRule: the subset the waypoint applies (`host`, and
//! `trafficPolicy.loadBalancer.simple`, `connectionPool` limits, `outlierDetection`). Other
//! Istio fields are accepted and ignored; unknown fields are refused.

use std::time::Duration;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::null_as_default;
use super::validate::{Check, ValidationError};

/// What a DestinationRule sets for a host.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, CustomResource, JsonSchema)]
#[kube(
    group = "networking.istio.io",
    version = "v1",
    kind = "DestinationRule",
    plural = "destinationrules",
    namespaced,
    status = "crate::ObjectStatus",
    derive = "Default",
    derive = "PartialEq",
    doc = "An Istio DestinationRule."
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DestinationRuleSpec {
    /// The service (short name or FQDN).
    #[serde(default)]
    pub host: String,
    /// The policy.
    #[serde(default)]
    pub traffic_policy: Option<TrafficPolicy>,
    /// Subsets (refused: not supported).
    #[serde(default, deserialize_with = "null_as_default")]
    #[schemars(schema_with = "crate::schema::opaque_list")]
    pub subsets: Vec<serde_json::Value>,
    /// Visibility (ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::opaque")]
    pub export_to: Option<serde_json::Value>,
    /// Workload selector (ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::opaque")]
    pub workload_selector: Option<serde_json::Value>,
}

/// Traffic policy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficPolicy {
    /// Endpoint choice.
    #[serde(default)]
    pub load_balancer: Option<LoadBalancerSettings>,
    /// Limits.
    #[serde(default)]
    pub connection_pool: Option<ConnectionPoolSettings>,
    /// Ejection of failing endpoints.
    #[serde(default)]
    pub outlier_detection: Option<OutlierDetection>,
    /// Accepted, not applied (the mesh always uses mTLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::opaque")]
    pub tls: Option<serde_json::Value>,
    /// Accepted, not applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::opaque")]
    pub port_level_settings: Option<serde_json::Value>,
    /// Accepted, not applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::opaque")]
    pub tunnel: Option<serde_json::Value>,
    /// Accepted, not applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::opaque")]
    pub proxy_protocol: Option<serde_json::Value>,
}

/// `loadBalancer`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancerSettings {
    /// `ROUND_ROBIN`, `LEAST_REQUEST` (or `LEAST_CONN`), `RANDOM` or `UNSPECIFIED`.
    #[serde(default)]
    pub simple: Option<String>,
    /// Not supported (refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::opaque")]
    pub consistent_hash: Option<serde_json::Value>,
    /// Accepted, not applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::opaque")]
    pub locality_lb_setting: Option<serde_json::Value>,
    /// Accepted, not applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::opaque")]
    pub warmup_duration_secs: Option<serde_json::Value>,
    /// Accepted, not applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::opaque")]
    pub warmup: Option<serde_json::Value>,
}

/// `connectionPool`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectionPoolSettings {
    /// TCP limits.
    #[serde(default)]
    pub tcp: Option<TcpSettings>,
    /// HTTP limits.
    #[serde(default)]
    pub http: Option<HttpSettings>,
}

/// `connectionPool.tcp`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpSettings {
    /// Connections per endpoint.
    #[serde(default)]
    pub max_connections: Option<i64>,
    /// Connection establishment limit.
    #[serde(default)]
    pub connect_timeout: Option<String>,
    /// Accepted, not applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::opaque")]
    pub tcp_keepalive: Option<serde_json::Value>,
    /// Accepted, not applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::opaque")]
    pub max_connection_duration: Option<serde_json::Value>,
    /// Accepted, not applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::opaque")]
    pub idle_timeout: Option<serde_json::Value>,
}

/// `connectionPool.http`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpSettings {
    /// Requests waiting for a connection.
    #[serde(default)]
    pub http1_max_pending_requests: Option<i64>,
    /// Concurrent requests.
    #[serde(default)]
    pub http2_max_requests: Option<i64>,
    /// Requests per connection.
    #[serde(default)]
    pub max_requests_per_connection: Option<i64>,
    /// Concurrent retries.
    #[serde(default)]
    pub max_retries: Option<i64>,
    /// Idle connections closed after this.
    #[serde(default)]
    pub idle_timeout: Option<String>,
    /// Accepted, not applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::opaque")]
    pub h2_upgrade_policy: Option<serde_json::Value>,
    /// Accepted, not applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::opaque")]
    pub use_client_protocol: Option<serde_json::Value>,
    /// Accepted, not applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::opaque")]
    pub max_concurrent_streams: Option<serde_json::Value>,
}

/// `outlierDetection`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutlierDetection {
    /// 5xx answers in a row that eject.
    #[serde(default)]
    pub consecutive_5xx_errors: Option<i64>,
    /// 502/503/504 answers in a row that eject (accepted, not applied).
    #[serde(default)]
    pub consecutive_gateway_errors: Option<i64>,
    /// Deprecated alias of consecutive5xxErrors... for gateway errors (accepted, not applied).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::opaque")]
    pub consecutive_errors: Option<serde_json::Value>,
    /// How often ejections are reconsidered.
    #[serde(default)]
    pub interval: Option<String>,
    /// Minimum ejection time.
    #[serde(default)]
    pub base_ejection_time: Option<String>,
    /// Largest share ejected at once.
    #[serde(default)]
    pub max_ejection_percent: Option<i64>,
    /// Accepted, not applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::opaque")]
    pub min_health_percent: Option<serde_json::Value>,
    /// Accepted, not applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::opaque")]
    pub split_external_local_origin_errors: Option<serde_json::Value>,
    /// Accepted, not applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::opaque")]
    pub consecutive_local_origin_failures: Option<serde_json::Value>,
}

/// The `loadBalancer.simple` values the mesh implements.
pub const LB_SIMPLE: [&str; 5] = [
    "UNSPECIFIED",
    "ROUND_ROBIN",
    "LEAST_REQUEST",
    "LEAST_CONN",
    "RANDOM",
];

impl DestinationRule {
    /// Checks the values Istio's validation refuses and what the mesh does not implement
    /// (subsets, consistent hashing, PASSTHROUGH); the error names every bad field.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let mut c = Check::default();
        c.require(!self.spec.host.is_empty(), "spec.host", "must not be empty");
        c.require(
            self.spec.subsets.is_empty(),
            "spec.subsets",
            "subsets are not supported by the mesh; use a Service per version",
        );
        let Some(policy) = &self.spec.traffic_policy else {
            return c.finish();
        };
        let at = "spec.trafficPolicy";
        if let Some(lb) = &policy.load_balancer {
            if let Some(simple) = &lb.simple {
                c.require(
                    LB_SIMPLE.contains(&simple.as_str()),
                    format!("{at}.loadBalancer.simple"),
                    format!("{simple:?} is not one of {}", LB_SIMPLE.join(", ")),
                );
            }
            c.require(
                lb.consistent_hash.is_none(),
                format!("{at}.loadBalancer.consistentHash"),
                "is not supported by the mesh",
            );
        }
        if let Some(pool) = &policy.connection_pool {
            let positive = |c: &mut Check, path: String, v: Option<i64>| {
                if let Some(v) = v {
                    c.require(
                        (1..=i64::from(u32::MAX)).contains(&v),
                        path,
                        format!("{v} must be a positive number"),
                    );
                }
            };
            if let Some(tcp) = &pool.tcp {
                positive(
                    &mut c,
                    format!("{at}.connectionPool.tcp.maxConnections"),
                    tcp.max_connections,
                );
                if let Some(t) = &tcp.connect_timeout {
                    c.istio_duration(
                        format!("{at}.connectionPool.tcp.connectTimeout"),
                        t,
                        Duration::from_millis(1),
                    );
                }
            }
            if let Some(http) = &pool.http {
                let h = format!("{at}.connectionPool.http");
                positive(
                    &mut c,
                    format!("{h}.http1MaxPendingRequests"),
                    http.http1_max_pending_requests,
                );
                positive(
                    &mut c,
                    format!("{h}.http2MaxRequests"),
                    http.http2_max_requests,
                );
                positive(
                    &mut c,
                    format!("{h}.maxRequestsPerConnection"),
                    http.max_requests_per_connection,
                );
                positive(&mut c, format!("{h}.maxRetries"), http.max_retries);
                if let Some(t) = &http.idle_timeout {
                    c.istio_duration(format!("{h}.idleTimeout"), t, Duration::from_millis(1));
                }
            }
        }
        if let Some(o) = &policy.outlier_detection {
            let at = format!("{at}.outlierDetection");
            for (field, value) in [
                ("consecutive5xxErrors", o.consecutive_5xx_errors),
                ("consecutiveGatewayErrors", o.consecutive_gateway_errors),
            ] {
                if let Some(v) = value {
                    c.require(
                        (0..=i64::from(u32::MAX)).contains(&v),
                        format!("{at}.{field}"),
                        format!("{v} is negative"),
                    );
                }
            }
            for (field, value) in [
                ("interval", &o.interval),
                ("baseEjectionTime", &o.base_ejection_time),
            ] {
                if let Some(v) = value {
                    c.istio_duration(format!("{at}.{field}"), v, Duration::from_millis(1));
                }
            }
            if let Some(p) = o.max_ejection_percent {
                c.require(
                    (0..=100).contains(&p),
                    format!("{at}.maxEjectionPercent"),
                    format!("{p} is not a percentage (0-100)"),
                );
            }
        }
        c.finish()
    }
}
