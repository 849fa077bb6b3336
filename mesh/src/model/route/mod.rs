//! The L7 routes of one service, as a waypoint uses them: [`ServiceRoutes`], converted once and
//! checked from `ambient.waypoint.v1.ServiceRoutes` (and back with `From<&ServiceRoutes>`) (regexes compiled, header names parsed,
//! durations as [`std::time::Duration`], percentages in 0..=100, status codes valid).
//!
//! [`ServiceRoutes::select`] picks the rule for a request with Gateway API precedence (see
//! [`select`]). The xDS resource name is the service's, `<namespace>/<hostname>`
//! ([`ServiceRoutes::key`]). Every type serializes (camelCase JSON, durations as `1.5s`) for
//! config dumps.

mod convert;
pub mod select;
mod ser;
mod to_proto;

use std::time::Duration;

use http::{HeaderName, HeaderValue, Method, StatusCode};
use serde::Serialize;

pub use select::{RequestHead, Selected};

/// Everything a waypoint needs to route requests addressed to one service.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceRoutes {
    /// `<namespace>/<hostname>` of the service; also the xDS resource name.
    pub service: String,
    /// Rules in tie-break order (earlier wins among equally specific matches).
    pub rules: Vec<Route>,
    /// How an endpoint is picked per request.
    pub load_balancer: LoadBalancer,
    /// Connection and request limits; `None`: no limits.
    pub connection_pool: Option<ConnectionPool>,
    /// Ejection of failing endpoints; `None`: never eject.
    pub outlier_detection: Option<OutlierDetection>,
    /// The first rule with a matching match wins (VirtualService order) instead of Gateway API
    /// precedence.
    pub first_match: bool,
}

impl ServiceRoutes {
    /// The xDS resource name: `<namespace>/<hostname>`.
    pub fn key(&self) -> &str {
        &self.service
    }
}

/// HTTP or gRPC: the flavour of synthetic answers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum RouteKind {
    /// An HTTPRoute rule (or a VirtualService route).
    #[default]
    Http,
    /// A GRPCRoute rule: errors are answered as gRPC statuses.
    Grpc,
}

/// One routing rule.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    /// For logs: `<namespace>/<route>/<rule index>` or the rule's name.
    pub name: String,
    /// Any one must match (OR). Empty: every request matches.
    pub matches: Vec<RouteMatch>,
    /// Weighted destinations. Empty: the parent service.
    pub backends: Vec<WeightedBackend>,
    /// Applied in order.
    pub filters: Vec<Filter>,
    /// Limit of the whole request, retries included.
    #[serde(serialize_with = "ser::opt_duration")]
    pub request_timeout: Option<Duration>,
    /// Limit of one try.
    #[serde(serialize_with = "ser::opt_duration")]
    pub backend_request_timeout: Option<Duration>,
    /// Retries; `None`: none.
    pub retry: Option<RetryPolicy>,
    /// Injected faults; `None`: none.
    pub fault: Option<Fault>,
    /// HTTP or gRPC.
    pub kind: RouteKind,
}

/// Conditions that must all hold (AND).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteMatch {
    /// `None`: any path.
    pub path: Option<PathMatch>,
    /// `None`: any method.
    #[serde(serialize_with = "ser::opt_display")]
    pub method: Option<Method>,
    /// Every one must match.
    pub headers: Vec<HeaderMatch>,
    /// Every one must match.
    pub query_params: Vec<QueryParamMatch>,
}

/// A path condition (on the path without the query).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum PathMatch {
    /// The whole path.
    Exact(String),
    /// Element-wise prefix, stored without a trailing `/` (except `/` itself).
    Prefix(String),
    /// Must match the whole path.
    Regex(Pattern),
}

/// A compiled regular expression that must match a whole value; equal when the source is.
#[derive(Debug, Clone)]
pub struct Pattern {
    source: String,
    compiled: regex::Regex,
}

impl Pattern {
    /// Compiles `source` anchored at both ends.
    pub fn new(source: &str) -> Result<Self, regex::Error> {
        let compiled = regex::Regex::new(&format!("^(?:{source})$"))?;
        Ok(Pattern {
            source: source.to_string(),
            compiled,
        })
    }

    /// The expression as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether the whole of `value` matches.
    pub fn is_match(&self, value: &str) -> bool {
        self.compiled.is_match(value)
    }
}

impl Serialize for Pattern {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

/// How a header or query value is compared.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum ValueMatch {
    /// Equal, byte for byte.
    Exact(String),
    /// Matched as a whole by the expression.
    Regex(Pattern),
}

impl ValueMatch {
    /// Whether `value` satisfies the condition.
    pub fn matches(&self, value: &str) -> bool {
        match self {
            ValueMatch::Exact(want) => want == value,
            ValueMatch::Regex(pattern) => pattern.is_match(value),
        }
    }
}

/// A header condition.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HeaderMatch {
    /// The header (names are case-insensitive).
    #[serde(serialize_with = "ser::display")]
    pub name: HeaderName,
    /// The condition on its value.
    pub value: ValueMatch,
}

/// A query parameter condition (the first parameter of the name counts).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QueryParamMatch {
    /// The parameter name (case-sensitive).
    pub name: String,
    /// The condition on its value.
    pub value: ValueMatch,
}

/// A backend service and its share.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WeightedBackend {
    /// `<namespace>/<hostname>` of the backend service.
    pub service: String,
    /// The service port; `None`: the port the request came to.
    pub port: Option<u16>,
    /// Relative weight; 0 gets no traffic.
    pub weight: u32,
}

/// One filter of a rule.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Filter {
    /// Edits request headers.
    RequestHeaders(HeaderModifier),
    /// Edits response headers.
    ResponseHeaders(HeaderModifier),
    /// Rewrites host and/or path before forwarding.
    UrlRewrite(UrlRewrite),
    /// Answers with a redirect.
    Redirect(Redirect),
    /// Copies requests to another backend.
    Mirror(Mirror),
}

/// Header edits.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HeaderModifier {
    /// Replace (or add) these.
    #[serde(serialize_with = "ser::headers")]
    pub set: Vec<(HeaderName, HeaderValue)>,
    /// Append these.
    #[serde(serialize_with = "ser::headers")]
    pub add: Vec<(HeaderName, HeaderValue)>,
    /// Remove these.
    #[serde(serialize_with = "ser::names")]
    pub remove: Vec<HeaderName>,
}

/// A path replacement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum PathRewrite {
    /// Replace the whole path.
    Full(String),
    /// Replace the part the prefix match matched.
    Prefix(String),
}

/// URL rewrite before forwarding.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UrlRewrite {
    /// New host; `None`: unchanged.
    pub hostname: Option<String>,
    /// New path; `None`: unchanged.
    pub path: Option<PathRewrite>,
}

/// A redirect answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Redirect {
    /// `http` or `https`; `None`: the request's.
    pub scheme: Option<String>,
    /// `None`: the request's host.
    pub hostname: Option<String>,
    /// `None`: the scheme's default.
    pub port: Option<u16>,
    /// `None`: the request's path.
    pub path: Option<PathRewrite>,
    /// 301 or 302.
    #[serde(serialize_with = "ser::status")]
    pub status: StatusCode,
}

/// Request mirroring.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Mirror {
    /// Where copies go (weight ignored).
    pub backend: WeightedBackend,
    /// Share of requests copied, 0 to 100.
    pub percent: f64,
}

/// Retries.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicy {
    /// Retries after the first try.
    pub attempts: u32,
    /// Status codes retried.
    #[serde(serialize_with = "ser::statuses")]
    pub codes: Vec<StatusCode>,
    /// Wait between tries.
    #[serde(serialize_with = "ser::duration")]
    pub backoff: Duration,
    /// Limit of one try; `None`: the route's backend timeout.
    #[serde(serialize_with = "ser::opt_duration")]
    pub per_try_timeout: Option<Duration>,
    /// Envoy-style conditions also retried (`5xx`, `connect-failure`, ...).
    pub retry_on: Vec<String>,
}

/// Default wait between retries.
pub const DEFAULT_RETRY_BACKOFF: Duration = Duration::from_millis(25);

/// Faults injected before forwarding.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Fault {
    /// Delay a share of requests.
    pub delay: Option<FaultDelay>,
    /// Answer a share of requests with an error.
    pub abort: Option<FaultAbort>,
}

/// An injected delay.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FaultDelay {
    /// How long.
    #[serde(serialize_with = "ser::duration")]
    pub delay: Duration,
    /// Share of requests, 0 to 100.
    pub percent: f64,
}

/// An injected error answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FaultAbort {
    /// What the answer is.
    pub error: AbortError,
    /// Share of requests, 0 to 100.
    pub percent: f64,
}

/// The error an abort answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum AbortError {
    /// An HTTP status.
    Http(#[serde(serialize_with = "ser::status")] StatusCode),
    /// A gRPC status code (`grpc-status`).
    Grpc(u32),
}

/// Endpoint choice per request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum LoadBalancer {
    /// Power of two choices, least requests (the default).
    #[default]
    Default,
    /// In turn.
    RoundRobin,
    /// Least requests (same algorithm as the default, asked for explicitly).
    LeastRequest,
    /// Uniformly at random.
    Random,
}

/// Limits towards the endpoints (`None`: unlimited or default).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionPool {
    /// TCP connections per endpoint.
    pub max_connections: Option<u32>,
    /// Connection establishment limit.
    #[serde(serialize_with = "ser::opt_duration")]
    pub connect_timeout: Option<Duration>,
    /// Requests waiting for a connection.
    pub http1_max_pending_requests: Option<u32>,
    /// Concurrent requests.
    pub http2_max_requests: Option<u32>,
    /// Requests per connection before it is closed.
    pub max_requests_per_connection: Option<u32>,
    /// Concurrent retries.
    pub max_retries: Option<u32>,
    /// Idle connections closed after this.
    #[serde(serialize_with = "ser::opt_duration")]
    pub idle_timeout: Option<Duration>,
}

/// Ejection of endpoints after consecutive 5xx answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OutlierDetection {
    /// 5xx answers in a row that eject; 0 never ejects.
    pub consecutive_5xx_errors: u32,
    /// How often ejections are reconsidered.
    #[serde(serialize_with = "ser::duration")]
    pub interval: Duration,
    /// Minimum ejection (times the number of ejections so far).
    #[serde(serialize_with = "ser::duration")]
    pub base_ejection_time: Duration,
    /// At most this share of endpoints ejected at once (percent).
    pub max_ejection_percent: u32,
}

/// Outlier detection defaults when the resource leaves a field unset.
pub const DEFAULT_OUTLIER_INTERVAL: Duration = Duration::from_secs(10);
/// Default minimum ejection time.
pub const DEFAULT_BASE_EJECTION_TIME: Duration = Duration::from_secs(30);
/// Default maximum ejection percentage.
pub const DEFAULT_MAX_EJECTION_PERCENT: u32 = 10;

#[cfg(test)]
mod tests;
