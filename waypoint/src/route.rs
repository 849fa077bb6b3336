//! Routes: which backend a request goes to.
//!
//! A [`RouteTable`] holds, per destination service (by key `<namespace>/<hostname>`), an
//! ordered list of [`RouteRule`]s: the first rule whose matches accept the request wins, and
//! one of its weighted backends is drawn. A service without rules has the default route: the
//! service itself, weight 1. HTTPRoute/GRPCRoute translation (a later change) fills the table;
//! today it is empty, so every request takes its default route.

use std::collections::HashMap;
use std::time::Duration;

use http::request::Parts;
use http::{HeaderName, Method};

use crate::balance::LbPolicy;
use crate::error::ProxyError;

/// How a path is matched.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum PathMatch {
    /// The whole path equals this.
    Exact(String),
    /// The path starts with this, at a segment boundary (`/a` matches `/a` and `/a/b`, not
    /// `/ab`).
    Prefix(String),
}

impl PathMatch {
    fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(p) => path == p,
            PathMatch::Prefix(p) => {
                let p = p.trim_end_matches('/');
                p.is_empty()
                    || (path.starts_with(p)
                        && matches!(path.as_bytes().get(p.len()), None | Some(b'/')))
            }
        }
    }
}

/// A header that must be present with exactly this value.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HeaderMatch {
    /// Header name.
    #[serde(serialize_with = "header_name")]
    pub name: HeaderName,
    /// Exact value.
    pub value: String,
}

fn header_name<S: serde::Serializer>(n: &HeaderName, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(n.as_str())
}

/// One way a request can match a rule; every set field must match (AND).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteMatch {
    /// Path condition.
    pub path: Option<PathMatch>,
    /// Method condition.
    #[serde(serialize_with = "method_opt")]
    pub method: Option<Method>,
    /// Header conditions.
    pub headers: Vec<HeaderMatch>,
}

fn method_opt<S: serde::Serializer>(m: &Option<Method>, s: S) -> Result<S::Ok, S::Error> {
    match m {
        Some(m) => s.serialize_some(m.as_str()),
        None => s.serialize_none(),
    }
}

impl RouteMatch {
    /// Whether the request head matches.
    pub fn matches(&self, req: &Parts) -> bool {
        self.path.as_ref().is_none_or(|p| p.matches(req.uri.path()))
            && self.method.as_ref().is_none_or(|m| *m == req.method)
            && self.headers.iter().all(|h| {
                req.headers
                    .get_all(&h.name)
                    .iter()
                    .any(|v| v.as_bytes() == h.value.as_bytes())
            })
    }
}

/// A backend of a rule: a service, reached on `port` (the request's port when `None`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WeightedBackend {
    /// Service key `<namespace>/<hostname>`.
    pub service: String,
    /// Service port; `None` keeps the port the client addressed.
    pub port: Option<u16>,
    /// Relative weight; 0 never chosen.
    pub weight: u32,
}

/// A rule: matches (any of them, OR; none means every request) and where matching requests go.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteRule {
    /// Alternatives; the rule applies when any matches (or when there are none).
    pub matches: Vec<RouteMatch>,
    /// Weighted backends.
    pub backends: Vec<WeightedBackend>,
    /// Time for the upstream to answer with response headers; `None`: no limit.
    pub timeout: Option<Duration>,
}

/// Routes of one destination service.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceRoutes {
    /// Rules, first match wins.
    pub rules: Vec<RouteRule>,
    /// How endpoints of its backends are picked.
    pub lb_policy: LbPolicy,
}

/// Where a request goes, once routed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteDecision {
    /// Backend service key.
    pub service: String,
    /// Backend service port.
    pub port: u16,
    /// Upstream timeout.
    pub timeout: Option<Duration>,
    /// Endpoint selection.
    pub lb_policy: LbPolicy,
}

/// All routes the waypoint knows, by destination service key.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RouteTable {
    services: HashMap<String, ServiceRoutes>,
}

impl RouteTable {
    /// A table with no rules: every service takes its default route.
    pub fn new() -> Self {
        RouteTable::default()
    }

    /// Sets the routes of `service` (replacing any).
    pub fn set(&mut self, service: impl Into<String>, routes: ServiceRoutes) {
        self.services.insert(service.into(), routes);
    }

    /// The routes of `service`, if any were set.
    pub fn get(&self, service: &str) -> Option<&ServiceRoutes> {
        self.services.get(service)
    }

    /// Routes a request addressed to `service` on `port`. Without rules: the service itself.
    /// With rules: the first matching rule's backend (drawn by weight), or `NR` when no rule
    /// matches or every weight is 0.
    pub fn route(
        &self,
        service: &str,
        port: u16,
        req: &Parts,
    ) -> Result<RouteDecision, ProxyError> {
        let Some(routes) = self.services.get(service).filter(|r| !r.rules.is_empty()) else {
            return Ok(RouteDecision {
                service: service.to_string(),
                port,
                timeout: None,
                lb_policy: self
                    .services
                    .get(service)
                    .map(|r| r.lb_policy)
                    .unwrap_or_default(),
            });
        };
        let rule = routes
            .rules
            .iter()
            .find(|r| r.matches.is_empty() || r.matches.iter().any(|m| m.matches(req)))
            .ok_or_else(|| {
                ProxyError::NoRoute(format!("{service} {} {}", req.method, req.uri.path()))
            })?;
        let total: u64 = rule.backends.iter().map(|b| u64::from(b.weight)).sum();
        if total == 0 {
            return Err(ProxyError::NoRoute(format!(
                "{service}: every backend has weight 0"
            )));
        }
        let mut draw = rand::random_range(0..total);
        let backend = rule
            .backends
            .iter()
            .find(|b| {
                let w = u64::from(b.weight);
                if draw < w {
                    true
                } else {
                    draw -= w;
                    false
                }
            })
            .ok_or_else(|| ProxyError::NoRoute(service.to_string()))?;
        Ok(RouteDecision {
            service: backend.service.clone(),
            port: backend.port.unwrap_or(port),
            timeout: rule.timeout,
            lb_policy: routes.lb_policy,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(method: &str, uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).expect("request").into_parts().0
    }

    #[test]
    fn a_service_without_rules_routes_to_itself() {
        let t = RouteTable::new();
        let d = t
            .route("ns/a.ns.svc.cluster.local", 8080, &parts("GET", "/", &[]))
            .expect("route");
        assert_eq!(d.service, "ns/a.ns.svc.cluster.local");
        assert_eq!(d.port, 8080);
        assert_eq!(d.lb_policy, LbPolicy::LeastRequest);
        assert_eq!(d.timeout, None);
    }

    #[test]
    fn first_matching_rule_wins_and_no_match_is_no_route() {
        let mut t = RouteTable::new();
        let backend = |s: &str| WeightedBackend {
            service: s.into(),
            port: None,
            weight: 1,
        };
        t.set(
            "ns/a",
            ServiceRoutes {
                rules: vec![
                    RouteRule {
                        matches: vec![RouteMatch {
                            headers: vec![HeaderMatch {
                                name: HeaderName::from_static("x-v"),
                                value: "2".into(),
                            }],
                            ..Default::default()
                        }],
                        backends: vec![backend("ns/v2")],
                        timeout: Some(Duration::from_secs(1)),
                    },
                    RouteRule {
                        matches: vec![RouteMatch {
                            path: Some(PathMatch::Prefix("/api".into())),
                            method: Some(Method::GET),
                            ..Default::default()
                        }],
                        backends: vec![backend("ns/v1")],
                        timeout: None,
                    },
                ],
                lb_policy: LbPolicy::RoundRobin,
            },
        );
        let d = t
            .route("ns/a", 80, &parts("POST", "/x", &[("x-v", "2")]))
            .expect("route");
        assert_eq!(
            (d.service.as_str(), d.timeout),
            ("ns/v2", Some(Duration::from_secs(1)))
        );
        assert_eq!(d.lb_policy, LbPolicy::RoundRobin);
        let d = t
            .route("ns/a", 80, &parts("GET", "/api/users", &[]))
            .expect("route");
        assert_eq!(d.service, "ns/v1");
        for (m, p) in [("GET", "/apix"), ("POST", "/api")] {
            let err = t
                .route("ns/a", 80, &parts(m, p, &[]))
                .expect_err("no route");
            assert_eq!(err.flag(), "NR");
        }
    }

    #[test]
    fn weights_split_traffic() {
        let mut t = RouteTable::new();
        t.set(
            "ns/a",
            ServiceRoutes {
                rules: vec![RouteRule {
                    matches: vec![],
                    backends: vec![
                        WeightedBackend {
                            service: "ns/v1".into(),
                            port: Some(9000),
                            weight: 80,
                        },
                        WeightedBackend {
                            service: "ns/v2".into(),
                            port: None,
                            weight: 20,
                        },
                        WeightedBackend {
                            service: "ns/never".into(),
                            port: None,
                            weight: 0,
                        },
                    ],
                    timeout: None,
                }],
                lb_policy: LbPolicy::LeastRequest,
            },
        );
        let req = parts("GET", "/", &[]);
        let v1 = (0..1000)
            .filter(|_| {
                let d = t.route("ns/a", 80, &req).expect("route");
                assert_ne!(d.service, "ns/never");
                d.service == "ns/v1" && d.port == 9000
            })
            .count();
        assert!((700..=900).contains(&v1), "{v1}");
    }
}
