//! `ambient.waypoint.v1.ServiceRoutes` → [`ServiceRoutes`], checking every value once. Errors
//! name the field by its path, e.g. `rules[0].matches[1].path.regex`.

use std::time::Duration;

use http::{HeaderName, HeaderValue, Method, StatusCode};
use proto::waypoint as pb;

use super::*;
use crate::model::ModelError;

fn invalid(field: impl Into<String>, reason: impl std::fmt::Display) -> ModelError {
    ModelError::Invalid {
        field: field.into(),
        reason: reason.to_string(),
    }
}

fn missing(field: impl Into<String>) -> ModelError {
    ModelError::Missing {
        field: field.into(),
    }
}

/// A `<namespace>/<hostname>` reference.
fn service_ref(field: &str, value: &str) -> Result<String, ModelError> {
    match value.split_once('/') {
        Some((ns, host)) if !ns.is_empty() && !host.is_empty() && !host.contains('/') => {
            Ok(value.to_string())
        }
        _ => Err(ModelError::BadReference {
            field: field.to_string(),
            value: value.to_string(),
        }),
    }
}

fn duration(field: &str, d: Option<prost_types::Duration>) -> Result<Option<Duration>, ModelError> {
    let Some(d) = d else { return Ok(None) };
    if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 {
        return Err(invalid(
            field,
            format!(
                "{}s {}ns is not a non-negative duration",
                d.seconds, d.nanos
            ),
        ));
    }
    let seconds = u64::try_from(d.seconds).map_err(|e| invalid(field, e))?;
    let nanos = u32::try_from(d.nanos).map_err(|e| invalid(field, e))?;
    Ok(Some(Duration::new(seconds, nanos)))
}

fn percent(field: &str, value: f64) -> Result<f64, ModelError> {
    if (0.0..=100.0).contains(&value) {
        Ok(value)
    } else {
        Err(invalid(
            field,
            format!("{value} is not a percentage (0-100)"),
        ))
    }
}

fn port(field: &str, value: u32) -> Result<Option<u16>, ModelError> {
    if value == 0 {
        return Ok(None);
    }
    u16::try_from(value)
        .map(Some)
        .map_err(|_| ModelError::Port {
            field: field.to_string(),
            value,
        })
}

fn status(field: &str, value: u32) -> Result<StatusCode, ModelError> {
    u16::try_from(value)
        .ok()
        .and_then(|v| StatusCode::from_u16(v).ok())
        .ok_or_else(|| invalid(field, format!("{value} is not an HTTP status code")))
}

fn pattern(field: &str, source: &str) -> Result<Pattern, ModelError> {
    Pattern::new(source).map_err(|e| invalid(field, format!("invalid regular expression: {e}")))
}

fn header_name(field: &str, name: &str) -> Result<HeaderName, ModelError> {
    if name.is_empty() {
        return Err(missing(field));
    }
    HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| invalid(field, format!("{name:?} is not a valid header name")))
}

fn header_value(field: &str, value: &str) -> Result<HeaderValue, ModelError> {
    HeaderValue::from_str(value)
        .map_err(|_| invalid(field, format!("{value:?} is not a valid header value")))
}

impl TryFrom<pb::ServiceRoutes> for ServiceRoutes {
    type Error = ModelError;

    fn try_from(wire: pb::ServiceRoutes) -> Result<Self, ModelError> {
        let service = service_ref("service", &wire.service)?;
        let rules = wire
            .rules
            .into_iter()
            .enumerate()
            .map(|(i, r)| route(r).map_err(|e| e.within(&format!("rules[{i}]"))))
            .collect::<Result<_, _>>()?;
        let load_balancer = match wire.load_balancer.map(|lb| lb.simple) {
            None => LoadBalancer::Default,
            Some(value) => match pb::load_balancer::Simple::try_from(value) {
                Ok(pb::load_balancer::Simple::Unspecified) => LoadBalancer::Default,
                Ok(pb::load_balancer::Simple::RoundRobin) => LoadBalancer::RoundRobin,
                Ok(pb::load_balancer::Simple::LeastRequest) => LoadBalancer::LeastRequest,
                Ok(pb::load_balancer::Simple::Random) => LoadBalancer::Random,
                Err(_) => {
                    return Err(ModelError::UnknownEnum {
                        field: "load_balancer.simple".into(),
                        kind: "LoadBalancer.Simple",
                        value,
                    })
                }
            },
        };
        let connection_pool = wire.connection_pool.map(connection_pool).transpose()?;
        let outlier_detection = wire.outlier_detection.map(outlier).transpose()?;
        Ok(ServiceRoutes {
            service,
            rules,
            load_balancer,
            connection_pool,
            outlier_detection,
            first_match: wire.first_match,
        })
    }
}

fn route(wire: pb::Route) -> Result<Route, ModelError> {
    let kind = match pb::RouteKind::try_from(wire.kind) {
        Ok(pb::RouteKind::Http) => RouteKind::Http,
        Ok(pb::RouteKind::Grpc) => RouteKind::Grpc,
        Err(_) => {
            return Err(ModelError::UnknownEnum {
                field: "kind".into(),
                kind: "RouteKind",
                value: wire.kind,
            })
        }
    };
    let matches = wire
        .matches
        .into_iter()
        .enumerate()
        .map(|(i, m)| route_match(m).map_err(|e| e.within(&format!("matches[{i}]"))))
        .collect::<Result<_, _>>()?;
    let backends = wire
        .backends
        .into_iter()
        .enumerate()
        .map(|(i, b)| backend(b).map_err(|e| e.within(&format!("backends[{i}]"))))
        .collect::<Result<_, _>>()?;
    let filters = wire
        .filters
        .into_iter()
        .enumerate()
        .map(|(i, f)| filter(f).map_err(|e| e.within(&format!("filters[{i}]"))))
        .collect::<Result<_, _>>()?;
    Ok(Route {
        name: wire.name,
        matches,
        backends,
        filters,
        request_timeout: duration("request_timeout", wire.request_timeout)?,
        backend_request_timeout: duration("backend_request_timeout", wire.backend_request_timeout)?,
        retry: wire
            .retry
            .map(retry)
            .transpose()
            .map_err(|e| e.within("retry"))?,
        fault: wire
            .fault
            .map(fault)
            .transpose()
            .map_err(|e| e.within("fault"))?,
        kind,
    })
}

fn route_match(wire: pb::RouteMatch) -> Result<RouteMatch, ModelError> {
    use pb::path_match::Kind;
    let path = match wire.path.and_then(|p| p.kind) {
        None => None,
        Some(Kind::Exact(p)) => {
            if !p.starts_with('/') {
                return Err(invalid("path.exact", format!("{p:?} must start with /")));
            }
            Some(PathMatch::Exact(p))
        }
        Some(Kind::Prefix(p)) => {
            if !p.starts_with('/') {
                return Err(invalid("path.prefix", format!("{p:?} must start with /")));
            }
            let trimmed = p.trim_end_matches('/');
            Some(PathMatch::Prefix(if trimmed.is_empty() {
                "/".to_string()
            } else {
                trimmed.to_string()
            }))
        }
        Some(Kind::Regex(r)) => Some(PathMatch::Regex(pattern("path.regex", &r)?)),
    };
    let method = if wire.method.is_empty() {
        None
    } else {
        Some(
            Method::from_bytes(wire.method.as_bytes())
                .map_err(|_| invalid("method", format!("{:?} is not a method", wire.method)))?,
        )
    };
    let headers = wire
        .headers
        .into_iter()
        .enumerate()
        .map(|(i, h)| {
            let at = format!("headers[{i}]");
            Ok(HeaderMatch {
                name: header_name(&format!("{at}.name"), &h.name)?,
                value: value_match(
                    &at,
                    h.value.map(|v| match v {
                        pb::header_match::Value::Exact(e) => (false, e),
                        pb::header_match::Value::Regex(r) => (true, r),
                    }),
                )?,
            })
        })
        .collect::<Result<_, ModelError>>()?;
    let query_params = wire
        .query_params
        .into_iter()
        .enumerate()
        .map(|(i, q)| {
            let at = format!("query_params[{i}]");
            if q.name.is_empty() {
                return Err(missing(format!("{at}.name")));
            }
            Ok(QueryParamMatch {
                name: q.name,
                value: value_match(
                    &at,
                    q.value.map(|v| match v {
                        pb::query_param_match::Value::Exact(e) => (false, e),
                        pb::query_param_match::Value::Regex(r) => (true, r),
                    }),
                )?,
            })
        })
        .collect::<Result<_, ModelError>>()?;
    Ok(RouteMatch {
        path,
        method,
        headers,
        query_params,
    })
}

/// `(is_regex, text)` of a header or query condition.
fn value_match(at: &str, value: Option<(bool, String)>) -> Result<ValueMatch, ModelError> {
    match value {
        None => Err(missing(format!("{at}.value"))),
        Some((false, exact)) => Ok(ValueMatch::Exact(exact)),
        Some((true, regex)) => Ok(ValueMatch::Regex(pattern(&format!("{at}.regex"), &regex)?)),
    }
}

fn backend(wire: pb::WeightedBackend) -> Result<WeightedBackend, ModelError> {
    Ok(WeightedBackend {
        service: service_ref("service", &wire.service)?,
        port: port("port", wire.port)?,
        weight: wire.weight,
    })
}

fn header_modifier(wire: pb::HeaderModifier) -> Result<HeaderModifier, ModelError> {
    let pairs = |list: Vec<pb::Header>, what: &str| {
        list.into_iter()
            .enumerate()
            .map(|(i, h)| {
                Ok((
                    header_name(&format!("{what}[{i}].name"), &h.name)?,
                    header_value(&format!("{what}[{i}].value"), &h.value)?,
                ))
            })
            .collect::<Result<Vec<_>, ModelError>>()
    };
    Ok(HeaderModifier {
        set: pairs(wire.set, "set")?,
        add: pairs(wire.add, "add")?,
        remove: wire
            .remove
            .iter()
            .enumerate()
            .map(|(i, n)| header_name(&format!("remove[{i}]"), n))
            .collect::<Result<_, _>>()?,
    })
}

fn filter(wire: pb::Filter) -> Result<Filter, ModelError> {
    use pb::filter::Kind;
    Ok(match wire.kind {
        None => return Err(missing("kind")),
        Some(Kind::RequestHeaderModifier(m)) => Filter::RequestHeaders(
            header_modifier(m).map_err(|e| e.within("request_header_modifier"))?,
        ),
        Some(Kind::ResponseHeaderModifier(m)) => Filter::ResponseHeaders(
            header_modifier(m).map_err(|e| e.within("response_header_modifier"))?,
        ),
        Some(Kind::UrlRewrite(r)) => Filter::UrlRewrite(UrlRewrite {
            hostname: (!r.hostname.is_empty()).then_some(r.hostname),
            path: r.path.map(|p| match p {
                pb::url_rewrite::Path::ReplaceFullPath(p) => PathRewrite::Full(p),
                pb::url_rewrite::Path::ReplacePrefixMatch(p) => PathRewrite::Prefix(p),
            }),
        }),
        Some(Kind::RequestRedirect(r)) => {
            let scheme = match r.scheme.as_str() {
                "" => None,
                "http" | "https" => Some(r.scheme.clone()),
                other => {
                    return Err(invalid(
                        "request_redirect.scheme",
                        format!("{other:?} is not http or https"),
                    ))
                }
            };
            let code = if r.status_code == 0 {
                302
            } else {
                r.status_code
            };
            if !matches!(code, 301 | 302 | 303 | 307 | 308) {
                return Err(invalid(
                    "request_redirect.status_code",
                    format!("{code} is not a redirect status"),
                ));
            }
            Filter::Redirect(Redirect {
                scheme,
                hostname: (!r.hostname.is_empty()).then_some(r.hostname),
                port: port("request_redirect.port", r.port)?,
                path: r.path.map(|p| match p {
                    pb::request_redirect::Path::ReplaceFullPath(p) => PathRewrite::Full(p),
                    pb::request_redirect::Path::ReplacePrefixMatch(p) => PathRewrite::Prefix(p),
                }),
                status: status("request_redirect.status_code", code)?,
            })
        }
        Some(Kind::RequestMirror(m)) => Filter::Mirror(Mirror {
            backend: backend(m.backend.ok_or_else(|| missing("request_mirror.backend"))?)
                .map_err(|e| e.within("request_mirror.backend"))?,
            percent: percent("request_mirror.percent", m.percent)?,
        }),
    })
}

fn retry(wire: pb::RetryPolicy) -> Result<RetryPolicy, ModelError> {
    Ok(RetryPolicy {
        attempts: wire.attempts,
        codes: wire
            .codes
            .iter()
            .enumerate()
            .map(|(i, c)| status(&format!("codes[{i}]"), *c))
            .collect::<Result<_, _>>()?,
        backoff: duration("backoff", wire.backoff)?.unwrap_or(DEFAULT_RETRY_BACKOFF),
        per_try_timeout: duration("per_try_timeout", wire.per_try_timeout)?,
        retry_on: wire.retry_on,
    })
}

fn fault(wire: pb::FaultInjection) -> Result<Fault, ModelError> {
    let delay = match wire.delay {
        None => None,
        Some(d) => Some(FaultDelay {
            delay: duration("delay.fixed_delay", d.fixed_delay)?
                .ok_or_else(|| missing("delay.fixed_delay"))?,
            percent: percent("delay.percent", d.percent)?,
        }),
    };
    let abort = match wire.abort {
        None => None,
        Some(a) => Some(FaultAbort {
            error: match a.error {
                None => return Err(missing("abort.error")),
                Some(pb::fault_abort::Error::HttpStatus(s)) => {
                    AbortError::Http(status("abort.http_status", s)?)
                }
                Some(pb::fault_abort::Error::GrpcStatus(s)) if s <= 16 => AbortError::Grpc(s),
                Some(pb::fault_abort::Error::GrpcStatus(s)) => {
                    return Err(invalid(
                        "abort.grpc_status",
                        format!("{s} is not a gRPC status code (0-16)"),
                    ))
                }
            },
            percent: percent("abort.percent", a.percent)?,
        }),
    };
    Ok(Fault { delay, abort })
}

fn nonzero(value: u32) -> Option<u32> {
    (value != 0).then_some(value)
}

fn connection_pool(wire: pb::ConnectionPool) -> Result<ConnectionPool, ModelError> {
    Ok(ConnectionPool {
        max_connections: nonzero(wire.max_connections),
        connect_timeout: duration("connection_pool.connect_timeout", wire.connect_timeout)?,
        http1_max_pending_requests: nonzero(wire.http1_max_pending_requests),
        http2_max_requests: nonzero(wire.http2_max_requests),
        max_requests_per_connection: nonzero(wire.max_requests_per_connection),
        max_retries: nonzero(wire.max_retries),
        idle_timeout: duration("connection_pool.idle_timeout", wire.idle_timeout)?,
    })
}

fn outlier(wire: pb::OutlierDetection) -> Result<OutlierDetection, ModelError> {
    if wire.max_ejection_percent > 100 {
        return Err(invalid(
            "outlier_detection.max_ejection_percent",
            format!("{} is not a percentage (0-100)", wire.max_ejection_percent),
        ));
    }
    Ok(OutlierDetection {
        consecutive_5xx_errors: wire.consecutive_5xx_errors,
        interval: duration("outlier_detection.interval", wire.interval)?
            .unwrap_or(DEFAULT_OUTLIER_INTERVAL),
        base_ejection_time: duration(
            "outlier_detection.base_ejection_time",
            wire.base_ejection_time,
        )?
        .unwrap_or(DEFAULT_BASE_EJECTION_TIME),
        max_ejection_percent: nonzero(wire.max_ejection_percent)
            .unwrap_or(DEFAULT_MAX_EJECTION_PERCENT),
    })
}
