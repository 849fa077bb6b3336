//! Istio `networking.istio.io` VirtualService: the subset the waypoint applies (`hosts`, and per
//! `http` route: `match`, `route` with weights, `timeout`, `retries`, `fault`). Other Istio
//! fields are accepted and ignored; unknown fields are refused.

use std::collections::BTreeMap;
use std::time::Duration;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::null_as_default;
use super::validate::{Check, ValidationError};

/// What a VirtualService routes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, CustomResource, JsonSchema)]
#[kube(
    group = "networking.istio.io",
    version = "v1",
    kind = "VirtualService",
    plural = "virtualservices",
    namespaced,
    status = "crate::ObjectStatus",
    derive = "Default",
    derive = "PartialEq",
    doc = "An Istio VirtualService."
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualServiceSpec {
    /// The hosts the rules apply to (service short names, FQDNs).
    #[serde(default, deserialize_with = "null_as_default")]
    pub hosts: Vec<String>,
    /// Gateways the rules apply to (`mesh` or none for sidecars and waypoints).
    #[serde(default, deserialize_with = "null_as_default")]
    pub gateways: Vec<String>,
    /// HTTP routes, first match wins.
    #[serde(default, deserialize_with = "null_as_default")]
    pub http: Vec<VsHttpRoute>,
    /// TCP routes (ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::opaque")]
    pub tcp: Option<serde_json::Value>,
    /// TLS routes (ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::opaque")]
    pub tls: Option<serde_json::Value>,
    /// Visibility (ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::opaque")]
    pub export_to: Option<serde_json::Value>,
}

/// One HTTP route of a VirtualService.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VsHttpRoute {
    /// The route's name.
    #[serde(default)]
    pub name: Option<String>,
    /// Any one must match; none: every request.
    #[serde(default, rename = "match", deserialize_with = "null_as_default")]
    pub matches: Vec<VsMatch>,
    /// Weighted destinations.
    #[serde(default, deserialize_with = "null_as_default")]
    pub route: Vec<VsDestinationWeight>,
    /// Whole-request timeout (`10s`); `0s` disables.
    #[serde(default)]
    pub timeout: Option<String>,
    /// Retries.
    #[serde(default)]
    pub retries: Option<VsRetries>,
    /// Fault injection.
    #[serde(default)]
    pub fault: Option<VsFault>,
    /// Accepted, not applied by the waypoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::opaque")]
    pub redirect: Option<serde_json::Value>,
    /// Accepted, not applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::opaque")]
    pub direct_response: Option<serde_json::Value>,
    /// Accepted, not applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::opaque")]
    pub delegate: Option<serde_json::Value>,
    /// Accepted, not applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::opaque")]
    pub rewrite: Option<serde_json::Value>,
    /// Accepted, not applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::opaque")]
    pub mirror: Option<serde_json::Value>,
    /// Accepted, not applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::opaque")]
    pub mirrors: Option<serde_json::Value>,
    /// Accepted, not applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::opaque")]
    pub mirror_percentage: Option<serde_json::Value>,
    /// Accepted, not applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::opaque")]
    pub mirror_percent: Option<serde_json::Value>,
    /// Accepted, not applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::opaque")]
    pub cors_policy: Option<serde_json::Value>,
    /// Accepted, not applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::opaque")]
    pub headers: Option<serde_json::Value>,
}

/// Conditions of a VirtualService route (all must hold).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VsMatch {
    /// The match's name.
    #[serde(default)]
    pub name: Option<String>,
    /// Path condition.
    #[serde(default)]
    pub uri: Option<IstioStringMatch>,
    /// Method condition (`exact` only is meaningful).
    #[serde(default)]
    pub method: Option<IstioStringMatch>,
    /// Header conditions, by lower-case name.
    #[serde(default, deserialize_with = "null_as_default")]
    pub headers: BTreeMap<String, IstioStringMatch>,
    /// Query parameter conditions.
    #[serde(default, deserialize_with = "null_as_default")]
    pub query_params: BTreeMap<String, IstioStringMatch>,
    /// Accepted, not applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::opaque")]
    pub scheme: Option<serde_json::Value>,
    /// Accepted, not applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::opaque")]
    pub authority: Option<serde_json::Value>,
    /// Accepted, not applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::opaque")]
    pub port: Option<serde_json::Value>,
    /// Accepted, not applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::opaque")]
    pub ignore_uri_case: Option<serde_json::Value>,
    /// Accepted, not applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::opaque")]
    pub without_headers: Option<serde_json::Value>,
    /// Accepted, not applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::opaque")]
    pub source_labels: Option<serde_json::Value>,
    /// Accepted, not applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::opaque")]
    pub source_namespace: Option<serde_json::Value>,
    /// Accepted, not applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::opaque")]
    pub gateways: Option<serde_json::Value>,
}

/// Istio's string match: exactly one of the three.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IstioStringMatch {
    /// Equal.
    #[serde(default)]
    pub exact: Option<String>,
    /// Starts with (plain string prefix, not path elements).
    #[serde(default)]
    pub prefix: Option<String>,
    /// RE2 expression matching the whole value.
    #[serde(default)]
    pub regex: Option<String>,
}

/// A destination and its weight.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VsDestinationWeight {
    /// Where.
    pub destination: VsDestination,
    /// Relative weight (0-100).
    #[serde(default)]
    pub weight: Option<i64>,
    /// Accepted, not applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::opaque")]
    pub headers: Option<serde_json::Value>,
}

/// A destination service.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VsDestination {
    /// Service short name or FQDN.
    pub host: String,
    /// DestinationRule subset (not supported: refused).
    #[serde(default)]
    pub subset: Option<String>,
    /// Service port.
    #[serde(default)]
    pub port: Option<VsPort>,
}

/// `port: {number: 80}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VsPort {
    /// The port.
    pub number: i64,
}

/// Retries.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VsRetries {
    /// Retries after the first try.
    #[serde(default)]
    pub attempts: Option<i64>,
    /// Limit of one try.
    #[serde(default)]
    pub per_try_timeout: Option<String>,
    /// Comma-separated conditions: Envoy names (`5xx`, `connect-failure`, ...) and status codes.
    #[serde(default)]
    pub retry_on: Option<String>,
    /// Accepted, not applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::opaque")]
    pub retry_remote_localities: Option<serde_json::Value>,
    /// Accepted, not applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::opaque")]
    pub retry_ignore_previous_hosts: Option<serde_json::Value>,
    /// Wait between tries (extension of some Istio versions).
    #[serde(default)]
    pub backoff: Option<String>,
}

/// Fault injection.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VsFault {
    /// Delay.
    #[serde(default)]
    pub delay: Option<VsDelay>,
    /// Abort.
    #[serde(default)]
    pub abort: Option<VsAbort>,
}

/// `percentage: {value: 12.5}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Percentage {
    /// 0 to 100.
    #[serde(default)]
    pub value: f64,
}

/// An injected delay.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VsDelay {
    /// How long.
    #[serde(default)]
    pub fixed_delay: Option<String>,
    /// Share of requests; all when neither this nor `percent` is set.
    #[serde(default)]
    pub percentage: Option<Percentage>,
    /// Deprecated integer share.
    #[serde(default)]
    pub percent: Option<i64>,
    /// Not supported (refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::opaque")]
    pub exponential_delay: Option<serde_json::Value>,
}

/// An injected error.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VsAbort {
    /// HTTP status answered.
    #[serde(default)]
    pub http_status: Option<i64>,
    /// gRPC status answered, by name (`UNAVAILABLE`).
    #[serde(default)]
    pub grpc_status: Option<String>,
    /// Not supported (refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::opaque")]
    pub http2_error: Option<serde_json::Value>,
    /// Share of requests; all when absent.
    #[serde(default)]
    pub percentage: Option<Percentage>,
}

/// gRPC status names in code order (0-16).
pub const GRPC_STATUS_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

impl VirtualService {
    /// Checks the values Istio's validation refuses, and what the mesh does not implement
    /// (subsets, exponential delays, HTTP/2 errors); the error names every bad field.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let mut c = Check::default();
        c.require(
            !self.spec.hosts.is_empty(),
            "spec.hosts",
            "must name at least one host",
        );
        for (i, host) in self.spec.hosts.iter().enumerate() {
            c.require(
                !host.is_empty(),
                format!("spec.hosts[{i}]"),
                "must not be empty",
            );
        }
        for (r, route) in self.spec.http.iter().enumerate() {
            let at = format!("spec.http[{r}]");
            for (m, matched) in route.matches.iter().enumerate() {
                let at = format!("{at}.match[{m}]");
                if let Some(uri) = &matched.uri {
                    string_match(&mut c, &format!("{at}.uri"), uri);
                }
                if let Some(method) = &matched.method {
                    string_match(&mut c, &format!("{at}.method"), method);
                }
                for (name, value) in &matched.headers {
                    c.header_name(format!("{at}.headers.{name}"), name);
                    string_match(&mut c, &format!("{at}.headers.{name}"), value);
                }
                for (name, value) in &matched.query_params {
                    string_match(&mut c, &format!("{at}.queryParams.{name}"), value);
                }
            }
            for (d, dest) in route.route.iter().enumerate() {
                let at = format!("{at}.route[{d}]");
                c.require(
                    !dest.destination.host.is_empty(),
                    format!("{at}.destination.host"),
                    "must not be empty",
                );
                c.require(
                    dest.destination.subset.is_none(),
                    format!("{at}.destination.subset"),
                    "subsets are not supported by the mesh; route to a Service per version",
                );
                if let Some(port) = &dest.destination.port {
                    c.require(
                        (1..=65535).contains(&port.number),
                        format!("{at}.destination.port.number"),
                        format!("{} is not a port number (1-65535)", port.number),
                    );
                }
                if let Some(w) = dest.weight {
                    c.require(
                        (0..=100).contains(&w),
                        format!("{at}.weight"),
                        format!("{w} is not a weight (0-100)"),
                    );
                }
            }
            if let Some(timeout) = &route.timeout {
                c.istio_duration(format!("{at}.timeout"), timeout, Duration::ZERO);
            }
            if let Some(retries) = &route.retries {
                let at = format!("{at}.retries");
                if let Some(a) = retries.attempts {
                    c.require(a >= 0, format!("{at}.attempts"), format!("{a} is negative"));
                }
                if let Some(t) = &retries.per_try_timeout {
                    c.istio_duration(format!("{at}.perTryTimeout"), t, Duration::from_millis(1));
                }
                if let Some(b) = &retries.backoff {
                    c.istio_duration(format!("{at}.backoff"), b, Duration::ZERO);
                }
            }
            if let Some(fault) = &route.fault {
                vs_fault(&mut c, &format!("{at}.fault"), fault);
            }
        }
        c.finish()
    }
}

fn string_match(c: &mut Check, at: &str, m: &IstioStringMatch) {
    let set = [&m.exact, &m.prefix, &m.regex]
        .iter()
        .filter(|v| v.is_some())
        .count();
    c.require(set == 1, at, "must set exactly one of exact, prefix, regex");
    if let Some(r) = &m.regex {
        c.regex(format!("{at}.regex"), r);
    }
}

fn percentage(c: &mut Check, at: &str, p: &Option<Percentage>) {
    if let Some(p) = p {
        c.require(
            (0.0..=100.0).contains(&p.value),
            format!("{at}.percentage.value"),
            format!("{} is not a percentage (0-100)", p.value),
        );
    }
}

fn vs_fault(c: &mut Check, at: &str, fault: &VsFault) {
    c.require(
        fault.delay.is_some() || fault.abort.is_some(),
        at,
        "needs a delay or an abort",
    );
    if let Some(d) = &fault.delay {
        let at = format!("{at}.delay");
        match &d.fixed_delay {
            Some(v) => {
                c.istio_duration(format!("{at}.fixedDelay"), v, Duration::from_millis(1));
            }
            None => c.fail(format!("{at}.fixedDelay"), "is required"),
        }
        c.require(
            d.exponential_delay.is_none(),
            format!("{at}.exponentialDelay"),
            "is not supported by the mesh",
        );
        percentage(c, &at, &d.percentage);
        if let Some(p) = d.percent {
            c.require(
                (0..=100).contains(&p),
                format!("{at}.percent"),
                format!("{p} is not a percentage (0-100)"),
            );
        }
    }
    if let Some(a) = &fault.abort {
        let at = format!("{at}.abort");
        match (&a.http_status, &a.grpc_status, &a.http2_error) {
            (Some(s), None, None) => c.require(
                (200..=599).contains(s),
                format!("{at}.httpStatus"),
                format!("{s} is not an HTTP status (200-599)"),
            ),
            (None, Some(g), None) => c.require(
                GRPC_STATUS_NAMES.contains(&g.as_str()),
                format!("{at}.grpcStatus"),
                format!("{g:?} is not a gRPC status name (e.g. UNAVAILABLE)"),
            ),
            (None, None, Some(_)) => {
                c.fail(format!("{at}.http2Error"), "is not supported by the mesh")
            }
            _ => c.fail(&at, "must set exactly one of httpStatus, grpcStatus"),
        }
        percentage(c, &at, &a.percentage);
    }
}
