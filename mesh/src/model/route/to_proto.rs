//! [`ServiceRoutes`] → `ambient.waypoint.v1.ServiceRoutes`: the inverse of the checked
//! conversion, so model → proto → model gives back the same value.

use std::time::Duration;

use proto::waypoint as pb;

use super::*;

fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

fn backend(b: &WeightedBackend) -> pb::WeightedBackend {
    pb::WeightedBackend {
        service: b.service.clone(),
        port: b.port.map_or(0, u32::from),
        weight: b.weight,
    }
}

fn headers(list: &[(HeaderName, HeaderValue)]) -> Vec<pb::Header> {
    list.iter()
        .map(|(n, v)| pb::Header {
            name: n.as_str().to_string(),
            value: String::from_utf8_lossy(v.as_bytes()).into_owned(),
        })
        .collect()
}

fn modifier(m: &HeaderModifier) -> pb::HeaderModifier {
    pb::HeaderModifier {
        set: headers(&m.set),
        add: headers(&m.add),
        remove: m.remove.iter().map(|n| n.as_str().to_string()).collect(),
    }
}

fn value(v: &ValueMatch) -> (bool, String) {
    match v {
        ValueMatch::Exact(e) => (false, e.clone()),
        ValueMatch::Regex(r) => (true, r.as_str().to_string()),
    }
}

fn route_match(m: &RouteMatch) -> pb::RouteMatch {
    use pb::path_match::Kind;
    pb::RouteMatch {
        path: m.path.as_ref().map(|p| pb::PathMatch {
            kind: Some(match p {
                PathMatch::Exact(v) => Kind::Exact(v.clone()),
                PathMatch::Prefix(v) => Kind::Prefix(v.clone()),
                PathMatch::Regex(r) => Kind::Regex(r.as_str().to_string()),
            }),
        }),
        method: m
            .method
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        headers: m
            .headers
            .iter()
            .map(|h| pb::HeaderMatch {
                name: h.name.as_str().to_string(),
                value: Some(match value(&h.value) {
                    (false, v) => pb::header_match::Value::Exact(v),
                    (true, v) => pb::header_match::Value::Regex(v),
                }),
            })
            .collect(),
        query_params: m
            .query_params
            .iter()
            .map(|q| pb::QueryParamMatch {
                name: q.name.clone(),
                value: Some(match value(&q.value) {
                    (false, v) => pb::query_param_match::Value::Exact(v),
                    (true, v) => pb::query_param_match::Value::Regex(v),
                }),
            })
            .collect(),
    }
}

fn filter(f: &Filter) -> pb::Filter {
    use pb::filter::Kind;
    let kind = match f {
        Filter::RequestHeaders(m) => Kind::RequestHeaderModifier(modifier(m)),
        Filter::ResponseHeaders(m) => Kind::ResponseHeaderModifier(modifier(m)),
        Filter::UrlRewrite(r) => Kind::UrlRewrite(pb::UrlRewrite {
            hostname: r.hostname.clone().unwrap_or_default(),
            path: r.path.as_ref().map(|p| match p {
                PathRewrite::Full(v) => pb::url_rewrite::Path::ReplaceFullPath(v.clone()),
                PathRewrite::Prefix(v) => pb::url_rewrite::Path::ReplacePrefixMatch(v.clone()),
            }),
        }),
        Filter::Redirect(r) => Kind::RequestRedirect(pb::RequestRedirect {
            scheme: r.scheme.clone().unwrap_or_default(),
            hostname: r.hostname.clone().unwrap_or_default(),
            port: r.port.map_or(0, u32::from),
            path: r.path.as_ref().map(|p| match p {
                PathRewrite::Full(v) => pb::request_redirect::Path::ReplaceFullPath(v.clone()),
                PathRewrite::Prefix(v) => pb::request_redirect::Path::ReplacePrefixMatch(v.clone()),
            }),
            status_code: u32::from(r.status.as_u16()),
        }),
        Filter::Mirror(m) => Kind::RequestMirror(pb::RequestMirror {
            backend: Some(backend(&m.backend)),
            percent: m.percent,
        }),
    };
    pb::Filter { kind: Some(kind) }
}

impl From<&Route> for pb::Route {
    fn from(r: &Route) -> Self {
        pb::Route {
            name: r.name.clone(),
            matches: r.matches.iter().map(route_match).collect(),
            backends: r.backends.iter().map(backend).collect(),
            filters: r.filters.iter().map(filter).collect(),
            request_timeout: r.request_timeout.map(duration),
            backend_request_timeout: r.backend_request_timeout.map(duration),
            retry: r.retry.as_ref().map(|r| pb::RetryPolicy {
                attempts: r.attempts,
                codes: r.codes.iter().map(|c| u32::from(c.as_u16())).collect(),
                backoff: Some(duration(r.backoff)),
                per_try_timeout: r.per_try_timeout.map(duration),
                retry_on: r.retry_on.clone(),
            }),
            fault: r.fault.as_ref().map(|f| pb::FaultInjection {
                delay: f.delay.as_ref().map(|d| pb::FaultDelay {
                    fixed_delay: Some(duration(d.delay)),
                    percent: d.percent,
                }),
                abort: f.abort.as_ref().map(|a| pb::FaultAbort {
                    error: Some(match a.error {
                        AbortError::Http(s) => {
                            pb::fault_abort::Error::HttpStatus(u32::from(s.as_u16()))
                        }
                        AbortError::Grpc(c) => pb::fault_abort::Error::GrpcStatus(c),
                    }),
                    percent: a.percent,
                }),
            }),
            kind: match r.kind {
                RouteKind::Http => pb::RouteKind::Http,
                RouteKind::Grpc => pb::RouteKind::Grpc,
            } as i32,
        }
    }
}

impl From<&ServiceRoutes> for pb::ServiceRoutes {
    fn from(r: &ServiceRoutes) -> Self {
        use pb::load_balancer::Simple;
        pb::ServiceRoutes {
            service: r.service.clone(),
            rules: r.rules.iter().map(pb::Route::from).collect(),
            load_balancer: match r.load_balancer {
                LoadBalancer::Default => None,
                LoadBalancer::RoundRobin => Some(Simple::RoundRobin),
                LoadBalancer::LeastRequest => Some(Simple::LeastRequest),
                LoadBalancer::Random => Some(Simple::Random),
            }
            .map(|simple| pb::LoadBalancer {
                simple: simple as i32,
            }),
            connection_pool: r.connection_pool.as_ref().map(|p| pb::ConnectionPool {
                max_connections: p.max_connections.unwrap_or(0),
                connect_timeout: p.connect_timeout.map(duration),
                http1_max_pending_requests: p.http1_max_pending_requests.unwrap_or(0),
                http2_max_requests: p.http2_max_requests.unwrap_or(0),
                max_requests_per_connection: p.max_requests_per_connection.unwrap_or(0),
                max_retries: p.max_retries.unwrap_or(0),
                idle_timeout: p.idle_timeout.map(duration),
            }),
            outlier_detection: r.outlier_detection.as_ref().map(|o| pb::OutlierDetection {
                consecutive_5xx_errors: o.consecutive_5xx_errors,
                interval: Some(duration(o.interval)),
                base_ejection_time: Some(duration(o.base_ejection_time)),
                max_ejection_percent: o.max_ejection_percent,
            }),
            first_match: r.first_match,
        }
    }
}
