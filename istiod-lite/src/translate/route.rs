//! L7 routing for waypoints: `ambient.waypoint.v1.ServiceRoutes` per service, from
//! - Gateway API HTTPRoutes and GRPCRoutes whose `parentRefs` name a Service (GAMMA; routes in
//!   the Service's own namespace), rules ordered oldest route first, then by namespace/name,
//!   then rule order;
//! - Istio VirtualServices whose `hosts` name a Service: when the Service has no Gateway API
//!   route, the `http` routes themselves (first match wins, as in Istio); otherwise only their
//!   `fault`, `retries` and `timeout`, merged onto the Gateway API rules that lack them;
//! - Istio DestinationRules whose `host` names a Service: load balancing, connection pool,
//!   outlier detection.
//!
//! A reference to a Service that does not exist, or a field the mesh cannot carry, is left out
//! with a [`TranslationWarning`](super::TranslationWarning). The objects reaching here passed
//! their `validate()` in the config source, so values are trusted to be well-formed.

use std::collections::BTreeMap;
use std::time::Duration;

use proto::waypoint as pb;

use super::{service_hostname, TranslateOptions, Warnings};
use crate::config_source::{ClusterState, ObjectKey};
use crate::resources::{
    BackendRef, GrpcRoute, HeaderMatch, HeaderModifier, HttpRouteFilter, ParentReference,
    PathModifier, RequestMirror, GRPC_STATUS_NAMES,
};

#[path = "route_istio.rs"]
mod istio;

/// The routes of every service that has any, by `<namespace>/<hostname>`.
pub(crate) fn routes(
    state: &ClusterState,
    options: &TranslateOptions,
    warnings: &mut Warnings,
) -> BTreeMap<String, pb::ServiceRoutes> {
    // Service key → (order key, rules) from Gateway API routes.
    let mut ordered: BTreeMap<String, Vec<(OrderKey, Vec<pb::Route>)>> = BTreeMap::new();
    for (key, route) in &state.http_routes {
        let object = format!("HTTPRoute {key}");
        for service in parents(
            state,
            options,
            key,
            &route.spec.parent_refs,
            &object,
            warnings,
        ) {
            let rules = route
                .spec
                .rules
                .iter()
                .enumerate()
                .map(|(i, rule)| http_rule(key, i, rule, options))
                .collect();
            ordered
                .entry(service)
                .or_default()
                .push((order_key(&route.metadata, key), rules));
        }
    }
    for (key, route) in &state.grpc_routes {
        let object = format!("GRPCRoute {key}");
        for service in parents(
            state,
            options,
            key,
            &route.spec.parent_refs,
            &object,
            warnings,
        ) {
            let rules = grpc_rules(route, key, options);
            ordered
                .entry(service)
                .or_default()
                .push((order_key(&route.metadata, key), rules));
        }
    }
    let mut out: BTreeMap<String, pb::ServiceRoutes> = BTreeMap::new();
    for (service, mut groups) in ordered {
        groups.sort_by(|a, b| a.0.cmp(&b.0));
        let rules = groups.into_iter().flat_map(|(_, rules)| rules).collect();
        out.insert(
            service.clone(),
            pb::ServiceRoutes {
                service,
                rules,
                ..Default::default()
            },
        );
    }
    istio::virtual_services(state, options, warnings, &mut out);
    istio::destination_rules(state, options, warnings, &mut out);
    out
}

/// Precedence among routes: creation time (absent first), then `<namespace>/<name>`.
type OrderKey = (Option<String>, String);

fn order_key(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    key: &ObjectKey,
) -> OrderKey {
    (
        meta.creation_timestamp
            .as_ref()
            .map(|t| format!("{:?}", t.0)),
        key.to_string(),
    )
}

/// The service keys of a route's Service parents that exist, with warnings for the others.
fn parents(
    state: &ClusterState,
    options: &TranslateOptions,
    route: &ObjectKey,
    refs: &[ParentReference],
    object: &str,
    warnings: &mut Warnings,
) -> Vec<String> {
    let mut out = Vec::new();
    for parent in refs {
        let is_service = matches!(parent.group.as_deref(), Some("") | Some("core"))
            && parent.kind.as_deref() == Some("Service");
        if !is_service {
            if parent.kind.as_deref() == Some("Service") {
                warnings.add(
                    object,
                    format!(
                        "parent Service {} needs `group: \"\"` (the core group); not applied",
                        parent.name
                    ),
                );
            }
            continue; // a Gateway parent: not mesh routing
        }
        let namespace = parent.namespace.as_deref().unwrap_or(&route.namespace);
        if namespace != route.namespace {
            warnings.add(
                object,
                format!(
                    "parent Service {namespace}/{} is in another namespace (a consumer route); only routes in the Service's namespace are applied",
                    parent.name
                ),
            );
            continue;
        }
        if !state
            .services
            .contains_key(&ObjectKey::new(namespace, &parent.name))
        {
            warnings.add(
                object,
                format!(
                    "parent Service {namespace}/{} does not exist; not applied",
                    parent.name
                ),
            );
            continue;
        }
        let key = service_key(namespace, &parent.name, options);
        if !out.contains(&key) {
            out.push(key);
        }
    }
    out
}

/// `<namespace>/<name>.<namespace>.svc.<suffix>`.
pub(crate) fn service_key(namespace: &str, name: &str, options: &TranslateOptions) -> String {
    format!("{namespace}/{}", service_hostname(name, namespace, options))
}

/// A protobuf duration.
pub(crate) fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// A Gateway API timeout: `0s` (or an unparsable value, refused earlier) disables it.
fn gateway_timeout(value: Option<&String>) -> Option<prost_types::Duration> {
    let d = crate::resources::parse_gateway_duration(value?).ok()?;
    (!d.is_zero()).then(|| duration(d))
}

fn rule_name(route: &ObjectKey, index: usize, name: Option<&String>) -> String {
    match name {
        Some(name) => format!("{route}/{name}"),
        None => format!("{route}/{index}"),
    }
}

fn http_rule(
    key: &ObjectKey,
    index: usize,
    rule: &crate::resources::HttpRouteRule,
    options: &TranslateOptions,
) -> pb::Route {
    let matches = rule
        .matches
        .iter()
        .map(|m| pb::RouteMatch {
            path: m.path.as_ref().map(|p| {
                use pb::path_match::Kind;
                let value = p.path().to_string();
                pb::PathMatch {
                    kind: Some(match p.kind() {
                        "Exact" => Kind::Exact(value),
                        "RegularExpression" => Kind::Regex(value),
                        _ => Kind::Prefix(value),
                    }),
                }
            }),
            method: m.method.clone().unwrap_or_default(),
            headers: m.headers.iter().map(header_match).collect(),
            query_params: m
                .query_params
                .iter()
                .map(|q| {
                    use pb::query_param_match::Value;
                    pb::QueryParamMatch {
                        name: q.name.clone(),
                        value: Some(if q.is_regex() {
                            Value::Regex(q.value.clone())
                        } else {
                            Value::Exact(q.value.clone())
                        }),
                    }
                })
                .collect(),
        })
        .collect();
    let timeouts = rule.timeouts.as_ref();
    pb::Route {
        name: rule_name(key, index, rule.name.as_ref()),
        matches,
        backends: backends(&rule.backend_refs, &key.namespace, options),
        filters: rule
            .filters
            .iter()
            .filter_map(|f| http_filter(f, &key.namespace, options))
            .collect(),
        request_timeout: gateway_timeout(timeouts.and_then(|t| t.request.as_ref())),
        backend_request_timeout: gateway_timeout(timeouts.and_then(|t| t.backend_request.as_ref())),
        retry: rule.retry.as_ref().map(|r| pb::RetryPolicy {
            attempts: r
                .attempts
                .and_then(|a| u32::try_from(a).ok())
                .unwrap_or(DEFAULT_RETRY_ATTEMPTS),
            codes: r
                .codes
                .iter()
                .filter_map(|c| u32::try_from(*c).ok())
                .collect(),
            backoff: r
                .backoff
                .as_ref()
                .and_then(|b| crate::resources::parse_gateway_duration(b).ok())
                .map(duration),
            per_try_timeout: None,
            retry_on: Vec::new(),
        }),
        fault: None,
        kind: pb::RouteKind::Http as i32,
    }
}

/// Retries when a `retry` sets no `attempts` (Istio's default).
pub(crate) const DEFAULT_RETRY_ATTEMPTS: u32 = 2;

fn header_match(h: &HeaderMatch) -> pb::HeaderMatch {
    use pb::header_match::Value;
    pb::HeaderMatch {
        name: h.name.to_ascii_lowercase(),
        value: Some(if h.is_regex() {
            Value::Regex(h.value.clone())
        } else {
            Value::Exact(h.value.clone())
        }),
    }
}

fn backend(b: &BackendRef, namespace: &str, options: &TranslateOptions) -> pb::WeightedBackend {
    let ns = b.namespace.as_deref().unwrap_or(namespace);
    pb::WeightedBackend {
        service: service_key(ns, &b.name, options),
        port: b.port.and_then(|p| u32::try_from(p).ok()).unwrap_or(0),
        weight: b.weight.and_then(|w| u32::try_from(w).ok()).unwrap_or(1),
    }
}

fn backends(
    list: &[BackendRef],
    namespace: &str,
    options: &TranslateOptions,
) -> Vec<pb::WeightedBackend> {
    list.iter()
        .filter(|b| b.is_service())
        .map(|b| backend(b, namespace, options))
        .collect()
}

fn header_modifier(m: &HeaderModifier) -> pb::HeaderModifier {
    let pairs = |list: &[crate::resources::HttpHeader]| {
        list.iter()
            .map(|h| pb::Header {
                name: h.name.to_ascii_lowercase(),
                value: h.value.clone(),
            })
            .collect()
    };
    pb::HeaderModifier {
        set: pairs(&m.set),
        add: pairs(&m.add),
        remove: m.remove.iter().map(|n| n.to_ascii_lowercase()).collect(),
    }
}

fn mirror(m: &RequestMirror, namespace: &str, options: &TranslateOptions) -> pb::RequestMirror {
    let percent = match (&m.percent, &m.fraction) {
        (Some(p), _) => *p as f64,
        (None, Some(f)) => {
            let denominator = f.denominator.unwrap_or(100).max(1) as f64;
            f.numerator as f64 * 100.0 / denominator
        }
        (None, None) => 100.0,
    };
    pb::RequestMirror {
        backend: Some(backend(&m.backend_ref, namespace, options)),
        percent,
    }
}

fn path_rewrite(p: &PathModifier) -> Option<(bool, String)> {
    match p.modifier_type.as_str() {
        "ReplaceFullPath" => p.replace_full_path.clone().map(|v| (true, v)),
        _ => p.replace_prefix_match.clone().map(|v| (false, v)),
    }
}

fn http_filter(
    f: &HttpRouteFilter,
    namespace: &str,
    options: &TranslateOptions,
) -> Option<pb::Filter> {
    use pb::filter::Kind;
    let kind = match f.filter_type.as_str() {
        "RequestHeaderModifier" => {
            Kind::RequestHeaderModifier(header_modifier(f.request_header_modifier.as_ref()?))
        }
        "ResponseHeaderModifier" => {
            Kind::ResponseHeaderModifier(header_modifier(f.response_header_modifier.as_ref()?))
        }
        "RequestMirror" => {
            Kind::RequestMirror(mirror(f.request_mirror.as_ref()?, namespace, options))
        }
        "URLRewrite" => {
            let r = f.url_rewrite.as_ref()?;
            Kind::UrlRewrite(pb::UrlRewrite {
                hostname: r.hostname.clone().unwrap_or_default(),
                path: r.path.as_ref().and_then(path_rewrite).map(|(full, v)| {
                    if full {
                        pb::url_rewrite::Path::ReplaceFullPath(v)
                    } else {
                        pb::url_rewrite::Path::ReplacePrefixMatch(v)
                    }
                }),
            })
        }
        "RequestRedirect" => {
            let r = f.request_redirect.as_ref()?;
            Kind::RequestRedirect(pb::RequestRedirect {
                scheme: r.scheme.clone().unwrap_or_default(),
                hostname: r.hostname.clone().unwrap_or_default(),
                port: r.port.and_then(|p| u32::try_from(p).ok()).unwrap_or(0),
                path: r.path.as_ref().and_then(path_rewrite).map(|(full, v)| {
                    if full {
                        pb::request_redirect::Path::ReplaceFullPath(v)
                    } else {
                        pb::request_redirect::Path::ReplacePrefixMatch(v)
                    }
                }),
                status_code: r
                    .status_code
                    .and_then(|c| u32::try_from(c).ok())
                    .unwrap_or(302),
            })
        }
        _ => return None,
    };
    Some(pb::Filter { kind: Some(kind) })
}

/// A gRPC method condition as a path condition on `/<service>/<method>`.
fn grpc_path(m: &crate::resources::GrpcMethodMatch) -> Option<pb::PathMatch> {
    use pb::path_match::Kind;
    let kind = if m.is_regex() {
        let service = m.service.as_deref().unwrap_or("[^/]+");
        let method = m.method.as_deref().unwrap_or("[^/]+");
        Kind::Regex(format!("/(?:{service})/(?:{method})"))
    } else {
        match (&m.service, &m.method) {
            (Some(s), Some(meth)) => Kind::Exact(format!("/{s}/{meth}")),
            (Some(s), None) => Kind::Prefix(format!("/{s}")),
            (None, Some(meth)) => Kind::Regex(format!("/[^/]+/{}", escape(meth))),
            (None, None) => return None,
        }
    };
    Some(pb::PathMatch { kind: Some(kind) })
}

/// `text` as a regular expression matching itself.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn grpc_rules(route: &GrpcRoute, key: &ObjectKey, options: &TranslateOptions) -> Vec<pb::Route> {
    route
        .spec
        .rules
        .iter()
        .enumerate()
        .map(|(i, rule)| pb::Route {
            name: rule_name(key, i, rule.name.as_ref()),
            matches: rule
                .matches
                .iter()
                .map(|m| pb::RouteMatch {
                    path: m.method.as_ref().and_then(grpc_path),
                    method: String::new(),
                    headers: m.headers.iter().map(header_match).collect(),
                    query_params: Vec::new(),
                })
                .collect(),
            backends: backends(&rule.backend_refs, &key.namespace, options),
            filters: rule
                .filters
                .iter()
                .filter_map(|f| {
                    use pb::filter::Kind;
                    let kind = match f.filter_type.as_str() {
                        "RequestHeaderModifier" => Kind::RequestHeaderModifier(header_modifier(
                            f.request_header_modifier.as_ref()?,
                        )),
                        "ResponseHeaderModifier" => Kind::ResponseHeaderModifier(header_modifier(
                            f.response_header_modifier.as_ref()?,
                        )),
                        "RequestMirror" => Kind::RequestMirror(mirror(
                            f.request_mirror.as_ref()?,
                            &key.namespace,
                            options,
                        )),
                        _ => return None,
                    };
                    Some(pb::Filter { kind: Some(kind) })
                })
                .collect(),
            kind: pb::RouteKind::Grpc as i32,
            ..Default::default()
        })
        .collect()
}

/// The code of a gRPC status name.
pub(crate) fn grpc_code(name: &str) -> Option<u32> {
    GRPC_STATUS_NAMES
        .iter()
        .position(|n| *n == name)
        .and_then(|p| u32::try_from(p).ok())
}

#[cfg(test)]
#[path = "route_tests.rs"]
mod tests;
