//! Istio's VirtualService and DestinationRule onto [`pb::ServiceRoutes`].

use std::collections::BTreeMap;
use std::time::Duration;

use proto::waypoint as pb;

use super::{duration, escape, grpc_code, service_key, DEFAULT_RETRY_ATTEMPTS};
use crate::config_source::{ClusterState, ObjectKey};
use crate::resources::{parse_duration, IstioStringMatch, VsFault, VsHttpRoute, VsRetries};
use crate::translate::{TranslateOptions, Warnings};

/// The Service an Istio `host` names, seen from `namespace`: a short name (`reviews`),
/// `<name>.<namespace>` or the full `<name>.<namespace>.svc.<suffix>`. `None` when it names no
/// Service in the snapshot (wildcards and external hosts included).
fn resolve_host(
    state: &ClusterState,
    options: &TranslateOptions,
    namespace: &str,
    host: &str,
) -> Option<String> {
    let suffix = format!(".svc.{}", options.domain_suffix);
    let trimmed = host.strip_suffix(&suffix).unwrap_or(host);
    let (name, ns) = match trimmed.split_once('.') {
        None => (trimmed, namespace),
        Some((name, ns)) if !ns.contains('.') => (name, ns),
        Some(_) => return None,
    };
    state
        .services
        .contains_key(&ObjectKey::new(ns, name))
        .then(|| service_key(ns, name, options))
}

/// Applies every VirtualService: routes of Services without Gateway API routes, and faults,
/// retries and timeouts merged onto the rules of those with.
pub(super) fn virtual_services(
    state: &ClusterState,
    options: &TranslateOptions,
    warnings: &mut Warnings,
    out: &mut BTreeMap<String, pb::ServiceRoutes>,
) {
    for (key, vs) in &state.virtual_services {
        let object = format!("VirtualService {key}");
        if vs.spec.gateways.iter().any(|g| g != "mesh") {
            warnings.add(&object, "bound to gateways other than `mesh`; not applied");
            continue;
        }
        for host in &vs.spec.hosts {
            let Some(service) = resolve_host(state, options, &key.namespace, host) else {
                warnings.add(
                    &object,
                    format!("host {host:?} names no Service in the cluster; not applied"),
                );
                continue;
            };
            let entry = out
                .entry(service.clone())
                .or_insert_with(|| pb::ServiceRoutes {
                    service: service.clone(),
                    ..Default::default()
                });
            if entry.rules.is_empty() || entry.first_match {
                if entry.first_match {
                    warnings.add(
                        &object,
                        format!(
                            "another VirtualService already routes {host:?}; its rules come first"
                        ),
                    );
                }
                entry.first_match = true;
                for (i, http) in vs.spec.http.iter().enumerate() {
                    entry
                        .rules
                        .push(vs_route(state, options, key, i, http, &object, warnings));
                }
            } else {
                // Gateway API routes win; VirtualService adds what they cannot express.
                let Some(source) = vs
                    .spec
                    .http
                    .iter()
                    .find(|h| h.matches.is_empty())
                    .or_else(|| vs.spec.http.first())
                else {
                    continue;
                };
                warnings.add(
                    &object,
                    format!("{host:?} also has HTTPRoutes: only fault, retries and timeout are merged onto them"),
                );
                for rule in &mut entry.rules {
                    merge(rule, source);
                }
            }
        }
    }
}

/// Sets what `rule` lacks from `http`: fault, retries, timeout.
fn merge(rule: &mut pb::Route, http: &VsHttpRoute) {
    if rule.fault.is_none() {
        rule.fault = http.fault.as_ref().map(fault);
    }
    if rule.retry.is_none() {
        rule.retry = http.retries.as_ref().and_then(retry);
    }
    if rule.request_timeout.is_none() {
        rule.request_timeout = timeout(http.timeout.as_deref());
    }
}

fn timeout(value: Option<&str>) -> Option<prost_types::Duration> {
    let d = parse_duration(value?).ok()?;
    (!d.is_zero()).then(|| duration(d))
}

fn vs_route(
    state: &ClusterState,
    options: &TranslateOptions,
    key: &ObjectKey,
    index: usize,
    http: &VsHttpRoute,
    object: &str,
    warnings: &mut Warnings,
) -> pb::Route {
    let name = match &http.name {
        Some(name) => format!("{key}/{name}"),
        None => format!("{key}/{index}"),
    };
    let matches = http
        .matches
        .iter()
        .map(|m| {
            let method = match &m.method {
                Some(IstioStringMatch {
                    exact: Some(method),
                    ..
                }) => method.clone(),
                Some(_) => {
                    warnings.add(
                        object,
                        "only exact method matches are applied; the method condition is dropped",
                    );
                    String::new()
                }
                None => String::new(),
            };
            pb::RouteMatch {
                path: m.uri.as_ref().map(|u| pb::PathMatch {
                    kind: Some(match string_value(u) {
                        Value::Exact(v) => pb::path_match::Kind::Exact(v),
                        Value::Regex(v) => pb::path_match::Kind::Regex(v),
                    }),
                }),
                method,
                headers: m
                    .headers
                    .iter()
                    .map(|(name, v)| pb::HeaderMatch {
                        name: name.to_ascii_lowercase(),
                        value: Some(match string_value(v) {
                            Value::Exact(v) => pb::header_match::Value::Exact(v),
                            Value::Regex(v) => pb::header_match::Value::Regex(v),
                        }),
                    })
                    .collect(),
                query_params: m
                    .query_params
                    .iter()
                    .map(|(name, v)| pb::QueryParamMatch {
                        name: name.clone(),
                        value: Some(match string_value(v) {
                            Value::Exact(v) => pb::query_param_match::Value::Exact(v),
                            Value::Regex(v) => pb::query_param_match::Value::Regex(v),
                        }),
                    })
                    .collect(),
            }
        })
        .collect();
    let all_unweighted = http.route.iter().all(|d| d.weight.is_none());
    let backends = http
        .route
        .iter()
        .filter_map(|d| {
            let Some(service) = resolve_host(state, options, &key.namespace, &d.destination.host)
            else {
                warnings.add(
                    object,
                    format!(
                        "destination host {:?} names no Service in the cluster; dropped",
                        d.destination.host
                    ),
                );
                return None;
            };
            Some(pb::WeightedBackend {
                service,
                port: d
                    .destination
                    .port
                    .as_ref()
                    .and_then(|p| u32::try_from(p.number).ok())
                    .unwrap_or(0),
                weight: match d.weight {
                    Some(w) => u32::try_from(w).unwrap_or(0),
                    None if all_unweighted => 1,
                    None => 0,
                },
            })
        })
        .collect();
    pb::Route {
        name,
        matches,
        backends,
        request_timeout: timeout(http.timeout.as_deref()),
        retry: http.retries.as_ref().and_then(retry),
        fault: http.fault.as_ref().map(fault),
        kind: pb::RouteKind::Http as i32,
        ..Default::default()
    }
}

enum Value {
    Exact(String),
    Regex(String),
}

/// Istio's `prefix` is a plain string prefix, so it becomes an expression.
fn string_value(m: &IstioStringMatch) -> Value {
    match (&m.exact, &m.prefix, &m.regex) {
        (Some(e), _, _) => Value::Exact(e.clone()),
        (_, Some(p), _) => Value::Regex(format!("{}.*", escape(p))),
        (_, _, Some(r)) => Value::Regex(r.clone()),
        _ => Value::Regex(".*".into()),
    }
}

/// `attempts: 0` turns retries off.
fn retry(r: &VsRetries) -> Option<pb::RetryPolicy> {
    let attempts = match r.attempts {
        Some(0) => return None,
        Some(a) => u32::try_from(a).unwrap_or(DEFAULT_RETRY_ATTEMPTS),
        None => DEFAULT_RETRY_ATTEMPTS,
    };
    let mut codes = Vec::new();
    let mut retry_on = Vec::new();
    for condition in r.retry_on.as_deref().unwrap_or_default().split(',') {
        let condition = condition.trim();
        match condition.parse::<u32>() {
            Ok(code) => codes.push(code),
            Err(_) if !condition.is_empty() => retry_on.push(condition.to_string()),
            Err(_) => {}
        }
    }
    if codes.is_empty() && retry_on.is_empty() {
        // Istio's default conditions.
        retry_on = [
            "connect-failure",
            "refused-stream",
            "unavailable",
            "cancelled",
            "retriable-status-codes",
        ]
        .map(String::from)
        .to_vec();
        codes.push(503);
    }
    Some(pb::RetryPolicy {
        attempts,
        codes,
        backoff: r
            .backoff
            .as_deref()
            .and_then(|b| parse_duration(b).ok())
            .map(duration),
        per_try_timeout: timeout(r.per_try_timeout.as_deref()),
        retry_on,
    })
}

fn percent(p: Option<f64>, legacy: Option<i64>) -> f64 {
    p.or(legacy.map(|l| l as f64)).unwrap_or(100.0)
}

fn fault(f: &VsFault) -> pb::FaultInjection {
    pb::FaultInjection {
        delay: f.delay.as_ref().map(|d| pb::FaultDelay {
            fixed_delay: d
                .fixed_delay
                .as_deref()
                .and_then(|v| parse_duration(v).ok())
                .map(duration),
            percent: percent(d.percentage.as_ref().map(|p| p.value), d.percent),
        }),
        abort: f.abort.as_ref().map(|a| pb::FaultAbort {
            error: match (&a.http_status, &a.grpc_status) {
                (Some(s), _) => u32::try_from(*s)
                    .ok()
                    .map(pb::fault_abort::Error::HttpStatus),
                (None, Some(g)) => grpc_code(g).map(pb::fault_abort::Error::GrpcStatus),
                _ => None,
            },
            percent: percent(a.percentage.as_ref().map(|p| p.value), None),
        }),
    }
}

/// Applies every DestinationRule's load balancing, pool and outlier detection to its host.
pub(super) fn destination_rules(
    state: &ClusterState,
    options: &TranslateOptions,
    warnings: &mut Warnings,
    out: &mut BTreeMap<String, pb::ServiceRoutes>,
) {
    for (key, dr) in &state.destination_rules {
        let object = format!("DestinationRule {key}");
        let Some(service) = resolve_host(state, options, &key.namespace, &dr.spec.host) else {
            warnings.add(
                &object,
                format!(
                    "host {:?} names no Service in the cluster; not applied",
                    dr.spec.host
                ),
            );
            continue;
        };
        let Some(policy) = &dr.spec.traffic_policy else {
            continue;
        };
        let entry = out
            .entry(service.clone())
            .or_insert_with(|| pb::ServiceRoutes {
                service,
                ..Default::default()
            });
        if let Some(simple) = policy
            .load_balancer
            .as_ref()
            .and_then(|l| l.simple.as_deref())
        {
            use pb::load_balancer::Simple;
            let simple = match simple {
                "ROUND_ROBIN" => Simple::RoundRobin,
                "LEAST_REQUEST" | "LEAST_CONN" => Simple::LeastRequest,
                "RANDOM" => Simple::Random,
                _ => Simple::Unspecified,
            };
            entry.load_balancer = Some(pb::LoadBalancer {
                simple: simple as i32,
            });
        }
        if let Some(pool) = &policy.connection_pool {
            let n = |v: Option<i64>| v.and_then(|v| u32::try_from(v).ok()).unwrap_or(0);
            let d = |v: Option<&String>| {
                v.and_then(|v| parse_duration(v).ok())
                    .filter(|d| *d > Duration::ZERO)
                    .map(duration)
            };
            let tcp = pool.tcp.as_ref();
            let http = pool.http.as_ref();
            entry.connection_pool = Some(pb::ConnectionPool {
                max_connections: n(tcp.and_then(|t| t.max_connections)),
                connect_timeout: d(tcp.and_then(|t| t.connect_timeout.as_ref())),
                http1_max_pending_requests: n(http.and_then(|h| h.http1_max_pending_requests)),
                http2_max_requests: n(http.and_then(|h| h.http2_max_requests)),
                max_requests_per_connection: n(http.and_then(|h| h.max_requests_per_connection)),
                max_retries: n(http.and_then(|h| h.max_retries)),
                idle_timeout: d(http.and_then(|h| h.idle_timeout.as_ref())),
            });
        }
        if let Some(o) = &policy.outlier_detection {
            let d = |v: Option<&String>| v.and_then(|v| parse_duration(v).ok()).map(duration);
            entry.outlier_detection = Some(pb::OutlierDetection {
                // Istio's default when outlier detection is on.
                consecutive_5xx_errors: o
                    .consecutive_5xx_errors
                    .and_then(|v| u32::try_from(v).ok())
                    .unwrap_or(5),
                interval: d(o.interval.as_ref()),
                base_ejection_time: d(o.base_ejection_time.as_ref()),
                max_ejection_percent: o
                    .max_ejection_percent
                    .and_then(|v| u32::try_from(v).ok())
                    .unwrap_or(0),
            });
        }
    }
}
