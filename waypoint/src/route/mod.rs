//! Routes: which backend a request goes to, and what happens on the way.
//!
//! A [`RouteTable`] holds, per destination service (by key `<namespace>/<hostname>`), its
//! [`ServiceRoutes`]: rules and the service's own policies (load balancing, connection pool
//! limits, outlier detection). Among the rules whose matches accept a request, Gateway API
//! precedence picks one ([`matching::best_rule`]; or the first in order when `first_match`,
//! as Istio VirtualService routes are ordered); one of its weighted backends is drawn. A
//! service without rules has the default route: the service itself, weight 1.
//!
//! A rule also carries what the data plane does with matching requests: filters
//! ([`crate::filters`], [`crate::mirror`]), timeouts, retries ([`crate::retry`]) and faults
//! ([`crate::fault`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::request::Parts;

use crate::balance::LbPolicy;
use crate::conn_pool::ConnectionPool;
use crate::error::ProxyError;
use crate::fault::FaultInjection;
use crate::filters::Filter;
use crate::outlier::OutlierDetection;
use crate::retry::RetryPolicy;

pub mod from_model;
pub mod matching;

pub use crate::backend::WeightedBackend;
pub use matching::{
    HeaderMatch, PathMatch, Pattern, Precedence, QueryMatch, RouteMatch, StringMatch,
};

/// Which flavour local answers of a rule take (aborts, overflow...).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum RouteKind {
    /// An HTTPRoute rule: HTTP statuses.
    #[default]
    Http,
    /// A GRPCRoute rule: HTTP 200 with `grpc-status` (trailers-only).
    Grpc,
}

/// A rule: matches (any of them, OR; none means every request) and what happens to matching
/// requests.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteRule {
    /// For logs and config dumps.
    pub name: String,
    /// Alternatives; the rule applies when any matches (or when there are none).
    pub matches: Vec<RouteMatch>,
    /// Weighted backends; none: the addressed service itself.
    pub backends: Vec<WeightedBackend>,
    /// Filters, in order.
    pub filters: Vec<Filter>,
    /// The whole request, retries included, until the response head; `None`: no limit.
    pub timeout: Option<Duration>,
    /// One try, until its response head; `None`: no limit.
    pub backend_timeout: Option<Duration>,
    /// Retries; `None`: one try.
    pub retry: Option<RetryPolicy>,
    /// Faults injected.
    pub fault: Option<FaultInjection>,
    /// HTTP or gRPC.
    pub kind: RouteKind,
}

/// Routes of one destination service, and its policies as a backend.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceRoutes {
    /// Rules.
    pub rules: Vec<RouteRule>,
    /// The first matching rule in order wins, instead of Gateway API precedence.
    pub first_match: bool,
    /// How endpoints of the service are picked.
    pub lb_policy: LbPolicy,
    /// Limits towards the service's endpoints.
    pub connection_pool: Option<ConnectionPool>,
    /// Ejection of the service's failing endpoints.
    pub outlier_detection: Option<OutlierDetection>,
}

/// The rule a request took (shared with the table, cheap to clone).
#[derive(Debug, Clone)]
pub struct RuleRef {
    routes: Arc<ServiceRoutes>,
    index: usize,
}

impl std::ops::Deref for RuleRef {
    type Target = RouteRule;
    fn deref(&self) -> &RouteRule {
        &self.routes.rules[self.index]
    }
}

impl PartialEq for RuleRef {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.routes, &other.routes) && self.index == other.index
    }
}

/// A backend service's own policies.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BackendPolicy {
    /// Endpoint selection.
    pub lb_policy: LbPolicy,
    /// Connection pool limits.
    pub connection_pool: Option<ConnectionPool>,
    /// Outlier detection.
    pub outlier_detection: Option<OutlierDetection>,
}

/// Where a request goes, once routed.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteDecision {
    /// Backend service key.
    pub service: String,
    /// Backend service port.
    pub port: u16,
    /// Whole-request timeout (until the response head).
    pub timeout: Option<Duration>,
    /// Endpoint selection.
    pub lb_policy: LbPolicy,
    /// The backend service's limits and outlier detection.
    pub policy: BackendPolicy,
    /// The rule taken (`None`: the default route).
    pub rule: Option<RuleRef>,
    /// The path prefix of the match that accepted the request, for prefix rewrites.
    pub matched_prefix: Option<String>,
}

/// All routes the waypoint knows, by destination service key.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    services: HashMap<String, Arc<ServiceRoutes>>,
}

impl PartialEq for RouteTable {
    fn eq(&self, other: &Self) -> bool {
        self.services.len() == other.services.len()
            && self
                .services
                .iter()
                .all(|(k, v)| other.services.get(k).is_some_and(|o| o == v))
    }
}

impl serde::Serialize for RouteTable {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut keys: Vec<_> = self.services.keys().collect();
        keys.sort();
        let mut map = s.serialize_map(Some(keys.len()))?;
        for k in keys {
            map.serialize_entry(k, self.services[k].as_ref())?;
        }
        map.end()
    }
}

impl RouteTable {
    /// A table with no rules: every service takes its default route.
    pub fn new() -> Self {
        RouteTable::default()
    }

    /// Sets the routes of `service` (replacing any).
    pub fn set(&mut self, service: impl Into<String>, routes: ServiceRoutes) {
        self.services.insert(service.into(), Arc::new(routes));
    }

    /// The routes of `service`, if any were set.
    pub fn get(&self, service: &str) -> Option<&ServiceRoutes> {
        self.services.get(service).map(Arc::as_ref)
    }

    /// The policies of `service` as a backend (defaults when none were set).
    pub fn backend_policy(&self, service: &str) -> BackendPolicy {
        self.services
            .get(service)
            .map(|r| BackendPolicy {
                lb_policy: r.lb_policy,
                connection_pool: r.connection_pool.clone(),
                outlier_detection: r.outlier_detection.clone(),
            })
            .unwrap_or_default()
    }

    /// Routes a request addressed to `service` on `port`. Without rules: the service itself.
    /// With rules: the best matching rule's backend (drawn by weight), or `NR` when no rule
    /// matches or every weight is 0.
    pub fn route(
        &self,
        service: &str,
        port: u16,
        req: &Parts,
    ) -> Result<RouteDecision, ProxyError> {
        let Some(routes) = self.services.get(service).filter(|r| !r.rules.is_empty()) else {
            let policy = self.backend_policy(service);
            return Ok(RouteDecision {
                service: service.to_string(),
                port,
                timeout: None,
                lb_policy: policy.lb_policy,
                policy,
                rule: None,
                matched_prefix: None,
            });
        };
        let no_route =
            || ProxyError::NoRoute(format!("{service} {} {}", req.method, req.uri.path()));
        let (index, matched) = if routes.first_match {
            routes
                .rules
                .iter()
                .enumerate()
                .find_map(|(i, r)| {
                    if r.matches.is_empty() {
                        Some((i, None))
                    } else {
                        r.matches
                            .iter()
                            .position(|m| m.matches(req))
                            .map(|m| (i, Some(m)))
                    }
                })
                .ok_or_else(no_route)?
        } else {
            matching::best_rule(
                routes
                    .rules
                    .iter()
                    .enumerate()
                    .map(|(i, r)| (i, r.matches.as_slice())),
                req,
            )
            .ok_or_else(no_route)?
        };
        let rule = &routes.rules[index];
        let matched_prefix = matched.and_then(|m| match &rule.matches[m].path {
            Some(PathMatch::Prefix(p)) => Some(p.clone()),
            _ => None,
        });
        let (backend_service, backend_port) = if rule.backends.is_empty() {
            (service.to_string(), port)
        } else {
            let backend = draw(&rule.backends).ok_or_else(|| {
                ProxyError::NoRoute(format!("{service}: every backend has weight 0"))
            })?;
            (backend.service.clone(), backend.port.unwrap_or(port))
        };
        // The backend's own policies; a backend without any takes the routed service's.
        let policy = match self.services.get(&backend_service) {
            Some(_) => self.backend_policy(&backend_service),
            None => self.backend_policy(service),
        };
        Ok(RouteDecision {
            service: backend_service,
            port: backend_port,
            timeout: rule.timeout,
            lb_policy: policy.lb_policy,
            policy,
            rule: Some(RuleRef {
                routes: routes.clone(),
                index,
            }),
            matched_prefix,
        })
    }
}

/// One backend drawn by weight; `None` when every weight is 0.
fn draw(backends: &[WeightedBackend]) -> Option<&WeightedBackend> {
    let total: u64 = backends.iter().map(|b| u64::from(b.weight)).sum();
    if total == 0 {
        return None;
    }
    let mut draw = rand::random_range(0..total);
    backends.iter().find(|b| {
        let w = u64::from(b.weight);
        if draw < w {
            true
        } else {
            draw -= w;
            false
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

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
                            headers: vec![HeaderMatch::exact("x-v", "2")],
                            ..Default::default()
                        }],
                        backends: vec![backend("ns/v2")],
                        timeout: Some(Duration::from_secs(1)),
                        ..Default::default()
                    },
                    RouteRule {
                        matches: vec![RouteMatch {
                            path: Some(PathMatch::Prefix("/api".into())),
                            method: Some(Method::GET),
                            ..Default::default()
                        }],
                        backends: vec![backend("ns/v1")],
                        timeout: None,
                        ..Default::default()
                    },
                ],
                lb_policy: LbPolicy::RoundRobin,
                ..Default::default()
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
                    ..Default::default()
                }],
                lb_policy: LbPolicy::LeastRequest,
                ..Default::default()
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

    fn rule(name: &str, m: RouteMatch) -> RouteRule {
        RouteRule {
            name: name.into(),
            matches: vec![m],
            ..Default::default()
        }
    }

    fn prefix(p: &str) -> Option<PathMatch> {
        Some(PathMatch::Prefix(p.into()))
    }

    fn taken(t: &RouteTable, req: &Parts) -> String {
        t.route("ns/a", 80, req)
            .expect("route")
            .rule
            .map(|r| r.name.clone())
            .unwrap_or_default()
    }

    #[test]
    fn precedence_exact_then_regex_then_longest_prefix_then_method_headers_query() {
        let mut t = RouteTable::new();
        let rules = vec![
            rule("root", RouteMatch::default()),
            rule(
                "prefix-api",
                RouteMatch {
                    path: prefix("/api"),
                    ..Default::default()
                },
            ),
            rule(
                "prefix-api-v1",
                RouteMatch {
                    path: prefix("/api/v1"),
                    ..Default::default()
                },
            ),
            rule(
                "regex",
                RouteMatch {
                    path: Some(PathMatch::Regex(
                        Pattern::new("/api/v1/[0-9]+").expect("re"),
                    )),
                    ..Default::default()
                },
            ),
            rule(
                "exact",
                RouteMatch {
                    path: Some(PathMatch::Exact("/api/v1/42".into())),
                    ..Default::default()
                },
            ),
            rule(
                "prefix-api-get",
                RouteMatch {
                    path: prefix("/api"),
                    method: Some(Method::GET),
                    ..Default::default()
                },
            ),
            rule(
                "prefix-api-get-header",
                RouteMatch {
                    path: prefix("/api"),
                    method: Some(Method::GET),
                    headers: vec![HeaderMatch::exact("x-v", "2")],
                    ..Default::default()
                },
            ),
            rule(
                "prefix-api-get-header-query",
                RouteMatch {
                    path: prefix("/api"),
                    method: Some(Method::GET),
                    headers: vec![HeaderMatch::exact("x-v", "2")],
                    query_params: vec![QueryMatch {
                        name: "debug".into(),
                        value: StringMatch::Regex(Pattern::new("on|yes").expect("re")),
                    }],
                },
            ),
        ];
        t.set(
            "ns/a",
            ServiceRoutes {
                rules,
                ..Default::default()
            },
        );
        let cases = [
            (("GET", "/api/v1/42", vec![]), "exact"),
            (("GET", "/api/v1/7", vec![]), "regex"),
            (("GET", "/api/v1/x", vec![]), "prefix-api-v1"),
            (("POST", "/api/x", vec![]), "prefix-api"),
            (("GET", "/api/x", vec![]), "prefix-api-get"),
            (
                ("GET", "/api/x", vec![("x-v", "2")]),
                "prefix-api-get-header",
            ),
            (
                ("GET", "/api/x?a=1&debug=yes", vec![("x-v", "2")]),
                "prefix-api-get-header-query",
            ),
            (
                ("GET", "/api/x?debug=yess", vec![("x-v", "2")]),
                "prefix-api-get-header",
            ),
            (("GET", "/other", vec![]), "root"),
        ];
        for ((m, p, h), want) in cases {
            assert_eq!(taken(&t, &parts(m, p, &h)), want, "{m} {p} {h:?}");
        }
    }

    #[test]
    fn equal_precedence_keeps_rule_order_and_first_match_ignores_precedence() {
        let mut t = RouteTable::new();
        let rules = vec![
            rule(
                "first",
                RouteMatch {
                    path: prefix("/a"),
                    ..Default::default()
                },
            ),
            rule(
                "second",
                RouteMatch {
                    path: prefix("/a"),
                    ..Default::default()
                },
            ),
            rule(
                "exact",
                RouteMatch {
                    path: Some(PathMatch::Exact("/a/b".into())),
                    ..Default::default()
                },
            ),
        ];
        t.set(
            "ns/a",
            ServiceRoutes {
                rules: rules.clone(),
                ..Default::default()
            },
        );
        assert_eq!(taken(&t, &parts("GET", "/a/c", &[])), "first");
        assert_eq!(taken(&t, &parts("GET", "/a/b", &[])), "exact");
        t.set(
            "ns/a",
            ServiceRoutes {
                rules,
                first_match: true,
                ..Default::default()
            },
        );
        assert_eq!(taken(&t, &parts("GET", "/a/b", &[])), "first");
    }

    #[test]
    fn regex_and_query_matches_are_whole_value_and_decoded() {
        let m = RouteMatch {
            path: Some(PathMatch::Regex(Pattern::new("/items/[a-z]+").expect("re"))),
            headers: vec![HeaderMatch {
                name: http::HeaderName::from_static("x-user"),
                value: StringMatch::Regex(Pattern::new("admin-.*").expect("re")),
            }],
            query_params: vec![QueryMatch {
                name: "q".into(),
                value: StringMatch::Exact("a b".into()),
            }],
            ..Default::default()
        };
        assert!(m.matches(&parts(
            "GET",
            "/items/abc?q=a%20b",
            &[("x-user", "admin-1")]
        )));
        assert!(m.matches(&parts(
            "GET",
            "/items/abc?x=1&q=a+b",
            &[("x-user", "admin-")]
        )));
        assert!(!m.matches(&parts("GET", "/items/abc1?q=a+b", &[("x-user", "admin-1")])));
        assert!(!m.matches(&parts("GET", "/items/abc?q=a+b", &[("x-user", "xadmin-1")])));
        assert!(!m.matches(&parts("GET", "/items/abc?q=ab", &[("x-user", "admin-1")])));
        assert!(!m.matches(&parts("GET", "/items/abc", &[("x-user", "admin-1")])));
    }
}
