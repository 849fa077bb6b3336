//! Gateway API `gateway.networking.k8s.io/v1` HTTPRoute, typed completely (unknown fields are
//! refused, so a typo is an error, not a silently ignored rule), and the parts GRPCRoute shares
//! with it (header modifiers, mirrors, backend references, header matches).

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{null_as_default, ParentReference};

/// What an HTTPRoute attaches to and does.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, CustomResource, JsonSchema)]
#[kube(
    group = "gateway.networking.k8s.io",
    version = "v1",
    kind = "HTTPRoute",
    plural = "httproutes",
    namespaced,
    root = "HttpRoute",
    status = "crate::ObjectStatus",
    derive = "Default",
    derive = "PartialEq",
    doc = "A Gateway API HTTPRoute."
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteSpec {
    /// The Gateways or Services (GAMMA: mesh routing at the waypoint) the route attaches to.
    #[serde(default, deserialize_with = "null_as_default")]
    pub parent_refs: Vec<ParentReference>,
    /// Host names the route matches (not used for Service parents).
    #[serde(default, deserialize_with = "null_as_default")]
    pub hostnames: Vec<String>,
    /// The rules.
    #[serde(default, deserialize_with = "null_as_default")]
    pub rules: Vec<HttpRouteRule>,
}

/// One rule: matches, filters, backends, timeouts, retries.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteRule {
    /// The rule's name, unique in the route.
    #[serde(default)]
    pub name: Option<String>,
    /// Any one must match; none: every request (path prefix `/`).
    #[serde(default, deserialize_with = "null_as_default")]
    pub matches: Vec<HttpRouteMatch>,
    /// Applied in order.
    #[serde(default, deserialize_with = "null_as_default")]
    pub filters: Vec<HttpRouteFilter>,
    /// Weighted destinations; none: the parent Service.
    #[serde(default, deserialize_with = "null_as_default")]
    pub backend_refs: Vec<BackendRef>,
    /// Timeouts.
    #[serde(default)]
    pub timeouts: Option<HttpRouteTimeouts>,
    /// Retries.
    #[serde(default)]
    pub retry: Option<HttpRouteRetry>,
    /// Session persistence (accepted, not implemented).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::opaque")]
    pub session_persistence: Option<serde_json::Value>,
}

/// Conditions that must all hold.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteMatch {
    /// The path condition; absent: prefix `/`.
    #[serde(default)]
    pub path: Option<HttpPathMatch>,
    /// Header conditions.
    #[serde(default, deserialize_with = "null_as_default")]
    pub headers: Vec<HeaderMatch>,
    /// Query parameter conditions.
    #[serde(default, deserialize_with = "null_as_default")]
    pub query_params: Vec<HeaderMatch>,
    /// The method, e.g. `GET`.
    #[serde(default)]
    pub method: Option<String>,
}

/// A path condition.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpPathMatch {
    /// `Exact`, `PathPrefix` (default) or `RegularExpression`.
    #[serde(default, rename = "type")]
    pub match_type: Option<String>,
    /// The path; `/` when absent.
    #[serde(default)]
    pub value: Option<String>,
}

impl HttpPathMatch {
    /// The type, with its default.
    pub fn kind(&self) -> &str {
        self.match_type.as_deref().unwrap_or("PathPrefix")
    }

    /// The value, with its default.
    pub fn path(&self) -> &str {
        self.value.as_deref().unwrap_or("/")
    }
}

/// A header (or query parameter) condition.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderMatch {
    /// `Exact` (default) or `RegularExpression`.
    #[serde(default, rename = "type")]
    pub match_type: Option<String>,
    /// The header or parameter name.
    pub name: String,
    /// The value or expression.
    pub value: String,
}

impl HeaderMatch {
    /// Whether the value is a regular expression.
    pub fn is_regex(&self) -> bool {
        self.match_type.as_deref() == Some("RegularExpression")
    }
}

/// One filter: `type` says which of the other fields is set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteFilter {
    /// `RequestHeaderModifier`, `ResponseHeaderModifier`, `RequestMirror`, `RequestRedirect`,
    /// `URLRewrite` or `ExtensionRef`.
    #[serde(rename = "type")]
    pub filter_type: String,
    /// For `RequestHeaderModifier`.
    #[serde(default)]
    pub request_header_modifier: Option<HeaderModifier>,
    /// For `ResponseHeaderModifier`.
    #[serde(default)]
    pub response_header_modifier: Option<HeaderModifier>,
    /// For `RequestMirror`.
    #[serde(default)]
    pub request_mirror: Option<RequestMirror>,
    /// For `RequestRedirect`.
    #[serde(default)]
    pub request_redirect: Option<RequestRedirect>,
    /// For `URLRewrite`.
    #[serde(default)]
    pub url_rewrite: Option<UrlRewrite>,
    /// For `ExtensionRef` (refused: no extensions exist).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::opaque")]
    pub extension_ref: Option<serde_json::Value>,
}

/// Header edits.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderModifier {
    /// Replace (or add) these.
    #[serde(default, deserialize_with = "null_as_default")]
    pub set: Vec<HttpHeader>,
    /// Append these.
    #[serde(default, deserialize_with = "null_as_default")]
    pub add: Vec<HttpHeader>,
    /// Remove these names.
    #[serde(default, deserialize_with = "null_as_default")]
    pub remove: Vec<String>,
}

/// A header name and value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpHeader {
    /// The name.
    pub name: String,
    /// The value.
    pub value: String,
}

/// Copies requests to another backend.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestMirror {
    /// Where copies go.
    pub backend_ref: BackendRef,
    /// Percentage of requests mirrored (0-100); all when neither this nor `fraction` is set.
    #[serde(default)]
    pub percent: Option<i64>,
    /// Fraction of requests mirrored.
    #[serde(default)]
    pub fraction: Option<Fraction>,
}

/// `numerator / denominator`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Fraction {
    /// Numerator.
    pub numerator: i64,
    /// Denominator, 100 when absent.
    #[serde(default)]
    pub denominator: Option<i64>,
}

/// Answers with a redirect.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestRedirect {
    /// `http` or `https`.
    #[serde(default)]
    pub scheme: Option<String>,
    /// New host.
    #[serde(default)]
    pub hostname: Option<String>,
    /// New path.
    #[serde(default)]
    pub path: Option<PathModifier>,
    /// New port.
    #[serde(default)]
    pub port: Option<i64>,
    /// 301 or 302 (default).
    #[serde(default)]
    pub status_code: Option<i64>,
}

/// Rewrites host and path before forwarding.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UrlRewrite {
    /// New host.
    #[serde(default)]
    pub hostname: Option<String>,
    /// New path.
    #[serde(default)]
    pub path: Option<PathModifier>,
}

/// A path replacement.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PathModifier {
    /// `ReplaceFullPath` or `ReplacePrefixMatch`.
    #[serde(rename = "type")]
    pub modifier_type: String,
    /// For `ReplaceFullPath`.
    #[serde(default)]
    pub replace_full_path: Option<String>,
    /// For `ReplacePrefixMatch`.
    #[serde(default)]
    pub replace_prefix_match: Option<String>,
}

/// A backend (a Service in the core group, by default) with its weight.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendRef {
    /// API group; core (`""`) when absent.
    #[serde(default)]
    pub group: Option<String>,
    /// Kind; `Service` when absent.
    #[serde(default)]
    pub kind: Option<String>,
    /// Name.
    pub name: String,
    /// Namespace; the route's own when absent.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Service port (required for a Service).
    #[serde(default)]
    pub port: Option<i64>,
    /// Relative weight, 1 when absent; 0 gets no traffic.
    #[serde(default)]
    pub weight: Option<i64>,
    /// Per-backend filters (accepted, not implemented).
    #[serde(default, deserialize_with = "null_as_default")]
    #[schemars(schema_with = "crate::schema::opaque_list")]
    pub filters: Vec<serde_json::Value>,
}

impl BackendRef {
    /// Whether the backend is a core Service (the only kind the mesh routes to).
    pub fn is_service(&self) -> bool {
        matches!(self.group.as_deref(), None | Some(""))
            && matches!(self.kind.as_deref(), None | Some("Service"))
    }
}

/// Timeouts of a rule (Gateway API durations; `0s` disables).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteTimeouts {
    /// The whole request, retries included.
    #[serde(default)]
    pub request: Option<String>,
    /// One try to the backend.
    #[serde(default)]
    pub backend_request: Option<String>,
}

/// Retries of a rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteRetry {
    /// Status codes retried (400-599).
    #[serde(default, deserialize_with = "null_as_default")]
    pub codes: Vec<i64>,
    /// Retries after the first try.
    #[serde(default)]
    pub attempts: Option<i64>,
    /// Wait between tries (Gateway API duration).
    #[serde(default)]
    pub backoff: Option<String>,
}

#[path = "http_route_validate.rs"]
pub(crate) mod validate;
