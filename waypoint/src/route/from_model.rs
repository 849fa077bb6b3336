//! The waypoint's route table from the mesh's route model (`mesh::model::route`, itself
//! converted and checked from the xDS resource `ambient.waypoint.v1.ServiceRoutes`): a thin,
//! infallible mapping, field for field. Regexes are already compiled and header names parsed
//! there; only unknown retry conditions are dropped (logged).
//!
//! [`sync_from_store`] keeps a waypoint's table in step with the store: it rebuilds the
//! table when the routes in the store change (not on other store changes) and runs on the
//! control runtime, so no rebuild happens on a data-plane thread.

use std::collections::HashMap;
use std::sync::Arc;

use mesh::model::route as model;
use mesh::store::Store;

use super::matching::{HeaderMatch, PathMatch, Pattern, QueryMatch, RouteMatch, StringMatch};
use super::{RouteKind, RouteRule, RouteTable, ServiceRoutes, WeightedBackend};
use crate::balance::LbPolicy;
use crate::conn_pool::ConnectionPool;
use crate::fault::{AbortError, FaultAbort, FaultDelay, FaultInjection};
use crate::filters::{Filter, HeaderModifier, PathModifier, Redirect, UrlRewrite};
use crate::mirror::RequestMirror;
use crate::outlier::OutlierDetection;
use crate::retry::{RetryOn, RetryPolicy};

fn pattern(p: &model::Pattern) -> Pattern {
    // Already compiled once by the model; the source is known to be valid.
    Pattern::new(p.as_str()).unwrap_or_else(|_| {
        Pattern::new("$^").unwrap_or_else(|_| unreachable!("a constant pattern compiles"))
    })
}

fn value(v: &model::ValueMatch) -> StringMatch {
    match v {
        model::ValueMatch::Exact(s) => StringMatch::Exact(s.clone()),
        model::ValueMatch::Regex(p) => StringMatch::Regex(pattern(p)),
    }
}

fn route_match(m: &model::RouteMatch) -> RouteMatch {
    RouteMatch {
        path: m.path.as_ref().map(|p| match p {
            model::PathMatch::Exact(s) => PathMatch::Exact(s.clone()),
            model::PathMatch::Prefix(s) => PathMatch::Prefix(s.clone()),
            model::PathMatch::Regex(r) => PathMatch::Regex(pattern(r)),
        }),
        method: m.method.clone(),
        headers: m
            .headers
            .iter()
            .map(|h| HeaderMatch {
                name: h.name.clone(),
                value: value(&h.value),
            })
            .collect(),
        query_params: m
            .query_params
            .iter()
            .map(|q| QueryMatch {
                name: q.name.clone(),
                value: value(&q.value),
            })
            .collect(),
    }
}

fn backend(b: &model::WeightedBackend) -> WeightedBackend {
    WeightedBackend {
        service: b.service.clone(),
        port: b.port,
        weight: b.weight,
    }
}

fn modifier(m: &model::HeaderModifier) -> HeaderModifier {
    let pairs = |v: &[(http::HeaderName, http::HeaderValue)]| {
        v.iter()
            .filter_map(|(n, v)| Some((n.as_str().to_string(), v.to_str().ok()?.to_string())))
            .collect()
    };
    HeaderModifier {
        set: pairs(&m.set),
        add: pairs(&m.add),
        remove: m.remove.iter().map(|n| n.as_str().to_string()).collect(),
    }
}

fn path(p: &model::PathRewrite) -> PathModifier {
    match p {
        model::PathRewrite::Full(s) => PathModifier::Full(s.clone()),
        model::PathRewrite::Prefix(s) => PathModifier::Prefix(s.clone()),
    }
}

fn filter(f: &model::Filter) -> Filter {
    match f {
        model::Filter::RequestHeaders(m) => Filter::RequestHeaders(modifier(m)),
        model::Filter::ResponseHeaders(m) => Filter::ResponseHeaders(modifier(m)),
        model::Filter::UrlRewrite(r) => Filter::UrlRewrite(UrlRewrite {
            hostname: r.hostname.clone(),
            path: r.path.as_ref().map(path),
        }),
        model::Filter::Redirect(r) => Filter::Redirect(Redirect {
            scheme: r.scheme.clone(),
            hostname: r.hostname.clone(),
            port: r.port,
            path: r.path.as_ref().map(path),
            status: r.status.as_u16(),
        }),
        model::Filter::Mirror(m) => Filter::Mirror(RequestMirror {
            backend: backend(&m.backend),
            percent: m.percent,
        }),
    }
}

fn retry(r: &model::RetryPolicy, rule: &str) -> RetryPolicy {
    let retry_on = r
        .retry_on
        .iter()
        .filter_map(|s| {
            let on = RetryOn::parse(s);
            if on.is_none() {
                tracing::warn!(rule, condition = %s, "unknown retry condition ignored");
            }
            on
        })
        .collect();
    RetryPolicy {
        attempts: r.attempts,
        codes: r.codes.iter().map(|c| c.as_u16()).collect(),
        retry_on,
        backoff: r.backoff,
        // Envoy's default cap: ten times the base interval.
        max_backoff: r.backoff.saturating_mul(10),
        per_try_timeout: r.per_try_timeout,
    }
}

fn fault(f: &model::Fault) -> FaultInjection {
    FaultInjection {
        delay: f.delay.as_ref().map(|d| FaultDelay {
            delay: d.delay,
            percent: d.percent,
        }),
        abort: f.abort.as_ref().map(|a| FaultAbort {
            error: match a.error {
                model::AbortError::Http(s) => AbortError::Http(s.as_u16()),
                model::AbortError::Grpc(c) => AbortError::Grpc(u8::try_from(c).unwrap_or(2)),
            },
            percent: a.percent,
        }),
    }
}

fn rule(r: &model::Route) -> RouteRule {
    RouteRule {
        name: r.name.clone(),
        matches: r.matches.iter().map(route_match).collect(),
        backends: r.backends.iter().map(backend).collect(),
        filters: r.filters.iter().map(filter).collect(),
        timeout: r.request_timeout,
        backend_timeout: r.backend_request_timeout,
        retry: r.retry.as_ref().map(|p| retry(p, &r.name)),
        fault: r.fault.as_ref().map(fault),
        kind: match r.kind {
            model::RouteKind::Http => RouteKind::Http,
            model::RouteKind::Grpc => RouteKind::Grpc,
        },
    }
}

impl From<&model::ServiceRoutes> for ServiceRoutes {
    fn from(r: &model::ServiceRoutes) -> Self {
        ServiceRoutes {
            rules: r.rules.iter().map(rule).collect(),
            first_match: r.first_match,
            lb_policy: match r.load_balancer {
                model::LoadBalancer::Default | model::LoadBalancer::LeastRequest => {
                    LbPolicy::LeastRequest
                }
                model::LoadBalancer::RoundRobin => LbPolicy::RoundRobin,
                model::LoadBalancer::Random => LbPolicy::Random,
            },
            connection_pool: r.connection_pool.as_ref().map(|p| ConnectionPool {
                max_connections: p.max_connections.unwrap_or(0),
                max_pending: p.http1_max_pending_requests.unwrap_or(0),
                max_requests: p.http2_max_requests.unwrap_or(0),
                max_requests_per_connection: p.max_requests_per_connection.unwrap_or(0),
                max_retries: p.max_retries.unwrap_or(0),
                connect_timeout: p.connect_timeout,
                idle_timeout: p.idle_timeout,
            }),
            outlier_detection: r.outlier_detection.as_ref().map(|o| OutlierDetection {
                consecutive_5xx: o.consecutive_5xx_errors,
                interval: o.interval,
                base_ejection_time: o.base_ejection_time,
                max_ejection_percent: o.max_ejection_percent,
            }),
        }
    }
}

/// The routes in `store`, by service key, as the store holds them.
fn store_routes(store: &Store) -> HashMap<String, Arc<model::ServiceRoutes>> {
    store
        .routed_services()
        .into_iter()
        .filter_map(|k| store.routes(&k).map(|r| (k, r)))
        .collect()
}

/// The route table for every service with routes in `store`.
pub fn table_from_store(store: &Store) -> RouteTable {
    let mut table = RouteTable::new();
    for (key, routes) in store_routes(store) {
        table.set(key, ServiceRoutes::from(routes.as_ref()));
    }
    table
}

/// Calls `apply` with a new table whenever the routes in `store` change (and once at start
/// when it holds any); runs until the store is dropped.
pub async fn sync_from_store(store: Store, apply: impl Fn(RouteTable)) {
    let mut changes = store.subscribe();
    let mut last: HashMap<String, Arc<model::ServiceRoutes>> = HashMap::new();
    loop {
        let now = store_routes(&store);
        let same = now.len() == last.len()
            && now
                .iter()
                .all(|(k, v)| last.get(k).is_some_and(|l| Arc::ptr_eq(l, v)));
        if !same {
            let mut table = RouteTable::new();
            for (key, routes) in &now {
                table.set(key.clone(), ServiceRoutes::from(routes.as_ref()));
            }
            tracing::info!(services = now.len(), "route table rebuilt from xDS");
            apply(table);
            last = now;
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::StatusCode;

    use super::*;

    #[test]
    fn every_model_field_maps_onto_the_route_table() {
        let m = model::ServiceRoutes {
            service: "ns/a".into(),
            rules: vec![model::Route {
                name: "ns/r/0".into(),
                matches: vec![model::RouteMatch {
                    path: Some(model::PathMatch::Regex(
                        model::Pattern::new("/u/[0-9]+").expect("re"),
                    )),
                    method: Some(http::Method::POST),
                    headers: vec![],
                    query_params: vec![model::QueryParamMatch {
                        name: "q".into(),
                        value: model::ValueMatch::Exact("1".into()),
                    }],
                }],
                backends: vec![model::WeightedBackend {
                    service: "ns/b".into(),
                    port: Some(8080),
                    weight: 3,
                }],
                filters: vec![
                    model::Filter::UrlRewrite(model::UrlRewrite {
                        hostname: Some("h".into()),
                        path: Some(model::PathRewrite::Prefix("/v2".into())),
                    }),
                    model::Filter::Redirect(model::Redirect {
                        scheme: Some("https".into()),
                        hostname: None,
                        port: Some(8443),
                        path: None,
                        status: StatusCode::MOVED_PERMANENTLY,
                    }),
                ],
                request_timeout: Some(Duration::from_secs(2)),
                backend_request_timeout: Some(Duration::from_millis(500)),
                retry: Some(model::RetryPolicy {
                    attempts: 3,
                    codes: vec![StatusCode::SERVICE_UNAVAILABLE],
                    backoff: Duration::from_millis(10),
                    per_try_timeout: None,
                    retry_on: vec!["5xx".into(), "no-such-condition".into()],
                }),
                fault: Some(model::Fault {
                    delay: None,
                    abort: Some(model::FaultAbort {
                        error: model::AbortError::Grpc(14),
                        percent: 50.0,
                    }),
                }),
                kind: model::RouteKind::Grpc,
            }],
            load_balancer: model::LoadBalancer::RoundRobin,
            connection_pool: Some(model::ConnectionPool {
                http2_max_requests: Some(10),
                ..Default::default()
            }),
            outlier_detection: Some(model::OutlierDetection {
                consecutive_5xx_errors: 5,
                interval: Duration::from_secs(10),
                base_ejection_time: Duration::from_secs(30),
                max_ejection_percent: 20,
            }),
            first_match: true,
        };
        let r = ServiceRoutes::from(&m);
        assert!(r.first_match);
        assert_eq!(r.lb_policy, LbPolicy::RoundRobin);
        assert_eq!(r.connection_pool.as_ref().map(|p| p.max_requests), Some(10));
        assert_eq!(
            r.outlier_detection.as_ref().map(|o| o.consecutive_5xx),
            Some(5)
        );
        let rule = &r.rules[0];
        assert_eq!(rule.name, "ns/r/0");
        assert_eq!(rule.kind, RouteKind::Grpc);
        assert_eq!(rule.timeout, Some(Duration::from_secs(2)));
        assert_eq!(rule.backend_timeout, Some(Duration::from_millis(500)));
        assert_eq!(
            rule.backends[0],
            WeightedBackend {
                service: "ns/b".into(),
                port: Some(8080),
                weight: 3
            }
        );
        let retry = rule.retry.as_ref().expect("retry");
        assert_eq!((retry.attempts, retry.codes.as_slice()), (3, &[503][..]));
        assert_eq!(retry.retry_on, vec![RetryOn::FiveXx]);
        assert_eq!(
            rule.fault
                .as_ref()
                .and_then(|f| f.abort.as_ref())
                .map(|a| a.error),
            Some(AbortError::Grpc(14))
        );
        let m0 = &rule.matches[0];
        assert!(matches!(&m0.path, Some(PathMatch::Regex(p)) if p.is_match("/u/42")));
        assert_eq!(m0.method, Some(http::Method::POST));
        assert_eq!(m0.query_params[0].name, "q");
        assert!(
            matches!(&rule.filters[0], Filter::UrlRewrite(u) if u.hostname.as_deref() == Some("h"))
        );
        assert!(
            matches!(&rule.filters[1], Filter::Redirect(r) if r.status == 301 && r.port == Some(8443))
        );
    }
}
