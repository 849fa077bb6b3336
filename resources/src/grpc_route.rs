//! Gateway API `gateway.networking.k8s.io/v1` GRPCRoute, typed completely, with its checks.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::http_route::validate::{
    backend_refs, header_matches, header_modifier, parent_refs, request_mirror,
};
use super::validate::{Check, ValidationError};
use super::{
    null_as_default, BackendRef, HeaderMatch, HeaderModifier, ParentReference, RequestMirror,
};

/// What a GRPCRoute attaches to and does.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, CustomResource, JsonSchema)]
#[kube(
    group = "gateway.networking.k8s.io",
    version = "v1",
    kind = "GRPCRoute",
    plural = "grpcroutes",
    namespaced,
    root = "GrpcRoute",
    status = "crate::ObjectStatus",
    derive = "Default",
    derive = "PartialEq",
    doc = "A Gateway API GRPCRoute."
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcRouteSpec {
    /// The Gateways or Services the route attaches to.
    #[serde(default, deserialize_with = "null_as_default")]
    pub parent_refs: Vec<ParentReference>,
    /// Host names the route matches (not used for Service parents).
    #[serde(default, deserialize_with = "null_as_default")]
    pub hostnames: Vec<String>,
    /// The rules.
    #[serde(default, deserialize_with = "null_as_default")]
    pub rules: Vec<GrpcRouteRule>,
}

/// One rule.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcRouteRule {
    /// The rule's name.
    #[serde(default)]
    pub name: Option<String>,
    /// Any one must match; none: every call.
    #[serde(default, deserialize_with = "null_as_default")]
    pub matches: Vec<GrpcRouteMatch>,
    /// Applied in order.
    #[serde(default, deserialize_with = "null_as_default")]
    pub filters: Vec<GrpcRouteFilter>,
    /// Weighted destinations; none: the parent Service.
    #[serde(default, deserialize_with = "null_as_default")]
    pub backend_refs: Vec<BackendRef>,
    /// Session persistence (accepted, not implemented).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::opaque")]
    pub session_persistence: Option<serde_json::Value>,
}

/// Conditions that must all hold.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcRouteMatch {
    /// The service and method called.
    #[serde(default)]
    pub method: Option<GrpcMethodMatch>,
    /// Header (metadata) conditions.
    #[serde(default, deserialize_with = "null_as_default")]
    pub headers: Vec<HeaderMatch>,
}

/// A gRPC method condition: `/<service>/<method>`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcMethodMatch {
    /// `Exact` (default) or `RegularExpression`.
    #[serde(default, rename = "type")]
    pub match_type: Option<String>,
    /// Fully qualified service, e.g. `helloworld.Greeter`; any when absent.
    #[serde(default)]
    pub service: Option<String>,
    /// Method, e.g. `SayHello`; any when absent.
    #[serde(default)]
    pub method: Option<String>,
}

impl GrpcMethodMatch {
    /// Whether service and method are regular expressions.
    pub fn is_regex(&self) -> bool {
        self.match_type.as_deref() == Some("RegularExpression")
    }
}

/// One filter.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcRouteFilter {
    /// `RequestHeaderModifier`, `ResponseHeaderModifier`, `RequestMirror` or `ExtensionRef`.
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
    /// For `ExtensionRef` (refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::opaque")]
    pub extension_ref: Option<serde_json::Value>,
}

fn is_service_name(s: &str) -> bool {
    let s = s.strip_prefix('.').unwrap_or(s);
    !s.is_empty() && s.split('.').all(is_identifier)
}

fn is_identifier(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

impl GrpcRoute {
    /// Checks the values the API server would refuse; the error names every bad field.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let mut c = Check::default();
        parent_refs(&mut c, &self.spec.parent_refs);
        for (r, rule) in self.spec.rules.iter().enumerate() {
            let at = format!("spec.rules[{r}]");
            for (m, matched) in rule.matches.iter().enumerate() {
                let at = format!("{at}.matches[{m}]");
                if let Some(method) = &matched.method {
                    let at = format!("{at}.method");
                    c.require(
                        method.service.is_some() || method.method.is_some(),
                        &at,
                        "needs a service, a method or both",
                    );
                    match method.match_type.as_deref().unwrap_or("Exact") {
                        "Exact" => {
                            if let Some(s) = &method.service {
                                c.require(
                                    is_service_name(s),
                                    format!("{at}.service"),
                                    format!("{s:?} is not a gRPC service name"),
                                );
                            }
                            if let Some(m) = &method.method {
                                c.require(
                                    is_identifier(m),
                                    format!("{at}.method"),
                                    format!("{m:?} is not a gRPC method name"),
                                );
                            }
                        }
                        "RegularExpression" => {
                            for (field, value) in
                                [("service", &method.service), ("method", &method.method)]
                            {
                                if let Some(v) = value {
                                    c.regex(format!("{at}.{field}"), v);
                                }
                            }
                        }
                        other => c.fail(
                            format!("{at}.type"),
                            format!("{other:?} is not Exact or RegularExpression"),
                        ),
                    }
                }
                header_matches(&mut c, &format!("{at}.headers"), &matched.headers, true);
            }
            for (f, filter) in rule.filters.iter().enumerate() {
                let at = format!("{at}.filters[{f}]");
                match filter.filter_type.as_str() {
                    "RequestHeaderModifier" => match &filter.request_header_modifier {
                        Some(m) => header_modifier(&mut c, &format!("{at}.requestHeaderModifier"), m),
                        None => c.fail(format!("{at}.requestHeaderModifier"), "is required"),
                    },
                    "ResponseHeaderModifier" => match &filter.response_header_modifier {
                        Some(m) => {
                            header_modifier(&mut c, &format!("{at}.responseHeaderModifier"), m)
                        }
                        None => c.fail(format!("{at}.responseHeaderModifier"), "is required"),
                    },
                    "RequestMirror" => match &filter.request_mirror {
                        Some(m) => request_mirror(&mut c, &format!("{at}.requestMirror"), m),
                        None => c.fail(format!("{at}.requestMirror"), "is required"),
                    },
                    "ExtensionRef" => c.fail(
                        format!("{at}.type"),
                        "ExtensionRef filters are not supported by the mesh",
                    ),
                    other => c.fail(
                        format!("{at}.type"),
                        format!("{other:?} is not RequestHeaderModifier, ResponseHeaderModifier or RequestMirror"),
                    ),
                }
            }
            backend_refs(&mut c, &format!("{at}.backendRefs"), &rule.backend_refs);
        }
        c.finish()
    }
}
