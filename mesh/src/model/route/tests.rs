use std::time::Duration;

use http::{HeaderMap, Method, Request};
use proto::waypoint as pb;

use super::*;

const SVC: &str = "shop/reviews.shop.svc.cluster.local";

fn path(kind: pb::path_match::Kind) -> Option<pb::PathMatch> {
    Some(pb::PathMatch { kind: Some(kind) })
}

fn exact(p: &str) -> Option<pb::PathMatch> {
    path(pb::path_match::Kind::Exact(p.into()))
}

fn prefix(p: &str) -> Option<pb::PathMatch> {
    path(pb::path_match::Kind::Prefix(p.into()))
}

fn regex(p: &str) -> Option<pb::PathMatch> {
    path(pb::path_match::Kind::Regex(p.into()))
}

fn rule(name: &str, matches: Vec<pb::RouteMatch>) -> pb::Route {
    pb::Route {
        name: name.into(),
        matches,
        ..Default::default()
    }
}

fn on_path(p: Option<pb::PathMatch>) -> pb::RouteMatch {
    pb::RouteMatch {
        path: p,
        ..Default::default()
    }
}

fn header(name: &str, value: &str) -> pb::HeaderMatch {
    pb::HeaderMatch {
        name: name.into(),
        value: Some(pb::header_match::Value::Exact(value.into())),
    }
}

fn routes(rules: Vec<pb::Route>) -> ServiceRoutes {
    ServiceRoutes::try_from(pb::ServiceRoutes {
        service: SVC.into(),
        rules,
        ..Default::default()
    })
    .expect("valid routes")
}

/// Name of the rule `method uri` with `headers` takes.
fn pick(r: &ServiceRoutes, method: &str, uri: &str, headers: &[(&str, &str)]) -> Option<String> {
    let mut request = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let request = request.body(()).expect("request");
    r.select(&RequestHead::of(&request)).map(|r| r.name.clone())
}

#[test]
fn exact_path_beats_regex_which_beats_the_longest_prefix() {
    let r = routes(vec![
        rule("short", vec![on_path(prefix("/api"))]),
        rule("long", vec![on_path(prefix("/api/v1/"))]),
        rule("regex", vec![on_path(regex("/api/v[0-9]+/items"))]),
        rule("exact", vec![on_path(exact("/api/v1/items"))]),
    ]);
    assert_eq!(
        pick(&r, "GET", "/api/v1/items", &[]).as_deref(),
        Some("exact")
    );
    assert_eq!(
        pick(&r, "GET", "/api/v2/items", &[]).as_deref(),
        Some("regex")
    );
    assert_eq!(
        pick(&r, "GET", "/api/v1/other", &[]).as_deref(),
        Some("long")
    );
    assert_eq!(pick(&r, "GET", "/api/v1", &[]).as_deref(), Some("long"));
    assert_eq!(pick(&r, "GET", "/api", &[]).as_deref(), Some("short"));
    assert_eq!(pick(&r, "GET", "/other", &[]), None);
}

#[test]
fn prefixes_match_whole_path_elements_only() {
    let r = routes(vec![rule("abc", vec![on_path(prefix("/abc/"))])]);
    assert_eq!(pick(&r, "GET", "/abc", &[]).as_deref(), Some("abc"));
    assert_eq!(pick(&r, "GET", "/abc/", &[]).as_deref(), Some("abc"));
    assert_eq!(pick(&r, "GET", "/abc/d?x=1", &[]).as_deref(), Some("abc"));
    assert_eq!(pick(&r, "GET", "/abcd", &[]), None);
}

#[test]
fn method_then_header_count_then_query_count_break_path_ties() {
    let r = routes(vec![
        rule("plain", vec![on_path(prefix("/"))]),
        rule(
            "query",
            vec![pb::RouteMatch {
                query_params: vec![pb::QueryParamMatch {
                    name: "v".into(),
                    value: Some(pb::query_param_match::Value::Exact("2".into())),
                }],
                ..Default::default()
            }],
        ),
        rule(
            "one-header",
            vec![pb::RouteMatch {
                headers: vec![header("x-canary", "true")],
                ..Default::default()
            }],
        ),
        rule(
            "two-headers",
            vec![pb::RouteMatch {
                headers: vec![header("x-canary", "true"), header("x-user", "ann")],
                ..Default::default()
            }],
        ),
        rule(
            "post",
            vec![pb::RouteMatch {
                method: "POST".into(),
                ..Default::default()
            }],
        ),
    ]);
    let canary = [("x-canary", "true")];
    let both = [("X-Canary", "true"), ("x-user", "ann")];
    assert_eq!(pick(&r, "GET", "/", &[]).as_deref(), Some("plain"));
    assert_eq!(pick(&r, "GET", "/?a=b&v=2", &[]).as_deref(), Some("query"));
    assert_eq!(
        pick(&r, "GET", "/?v=2", &canary).as_deref(),
        Some("one-header")
    );
    assert_eq!(pick(&r, "GET", "/", &both).as_deref(), Some("two-headers"));
    assert_eq!(pick(&r, "POST", "/", &both).as_deref(), Some("post"));
}

#[test]
fn equally_specific_matches_go_to_the_earlier_rule_and_matches_are_ored() {
    let r = routes(vec![
        rule("first", vec![on_path(prefix("/a")), on_path(exact("/b"))]),
        rule("second", vec![on_path(prefix("/a"))]),
    ]);
    assert_eq!(pick(&r, "GET", "/a/x", &[]).as_deref(), Some("first"));
    assert_eq!(pick(&r, "GET", "/b", &[]).as_deref(), Some("first"));
    let selected = r
        .select_match(&RequestHead::of(
            &Request::get("/b").body(()).expect("request"),
        ))
        .expect("selected");
    assert_eq!(
        selected.matched.and_then(|m| m.path.clone()),
        Some(PathMatch::Exact("/b".into()))
    );
}

#[test]
fn a_rule_without_matches_takes_every_request_as_prefix_root() {
    let r = routes(vec![
        rule("catch-all", vec![]),
        rule("api", vec![on_path(prefix("/api"))]),
    ]);
    assert_eq!(pick(&r, "DELETE", "/x", &[]).as_deref(), Some("catch-all"));
    assert_eq!(pick(&r, "GET", "/api/1", &[]).as_deref(), Some("api"));
}

#[test]
fn header_and_query_regexes_match_whole_values() {
    let r = routes(vec![rule(
        "re",
        vec![pb::RouteMatch {
            headers: vec![pb::HeaderMatch {
                name: "x-v".into(),
                value: Some(pb::header_match::Value::Regex("v[12]".into())),
            }],
            query_params: vec![pb::QueryParamMatch {
                name: "id".into(),
                value: Some(pb::query_param_match::Value::Regex("[0-9]+".into())),
            }],
            ..Default::default()
        }],
    )]);
    assert_eq!(
        pick(&r, "GET", "/?id=42", &[("x-v", "v1")]).as_deref(),
        Some("re")
    );
    assert_eq!(pick(&r, "GET", "/?id=42x", &[("x-v", "v1")]), None);
    assert_eq!(pick(&r, "GET", "/?id=42", &[("x-v", "v12")]), None);
    assert_eq!(pick(&r, "GET", "/", &[("x-v", "v2")]), None);
    let empty = HeaderMap::new();
    let uri = "/?id=1".parse().expect("uri");
    let head = RequestHead {
        method: &Method::GET,
        uri: &uri,
        headers: &empty,
    };
    assert!(r.select(&head).is_none());
}

#[test]
fn conversion_keeps_typed_values_and_defaults() {
    let wire = pb::ServiceRoutes {
        service: SVC.into(),
        rules: vec![pb::Route {
            name: "r".into(),
            backends: vec![pb::WeightedBackend {
                service: "shop/v2.shop.svc.cluster.local".into(),
                port: 0,
                weight: 20,
            }],
            request_timeout: Some(prost_types::Duration {
                seconds: 1,
                nanos: 500_000_000,
            }),
            retry: Some(pb::RetryPolicy {
                attempts: 2,
                codes: vec![503],
                ..Default::default()
            }),
            kind: pb::RouteKind::Grpc as i32,
            ..Default::default()
        }],
        load_balancer: Some(pb::LoadBalancer {
            simple: pb::load_balancer::Simple::Random as i32,
        }),
        outlier_detection: Some(pb::OutlierDetection {
            consecutive_5xx_errors: 3,
            ..Default::default()
        }),
        ..Default::default()
    };
    let r = ServiceRoutes::try_from(wire).expect("valid");
    assert_eq!(r.key(), SVC);
    let route = &r.rules[0];
    assert_eq!(route.kind, RouteKind::Grpc);
    assert_eq!(route.backends[0].port, None);
    assert_eq!(route.request_timeout, Some(Duration::from_millis(1500)));
    let retry = route.retry.as_ref().expect("retry");
    assert_eq!(retry.backoff, DEFAULT_RETRY_BACKOFF);
    assert_eq!(retry.codes, vec![http::StatusCode::SERVICE_UNAVAILABLE]);
    assert_eq!(r.load_balancer, LoadBalancer::Random);
    let outlier = r.outlier_detection.expect("outlier");
    assert_eq!(outlier.interval, DEFAULT_OUTLIER_INTERVAL);
    assert_eq!(outlier.max_ejection_percent, DEFAULT_MAX_EJECTION_PERCENT);
}

#[test]
fn conversion_errors_name_the_offending_field() {
    let convert = |rules: Vec<pb::Route>| {
        ServiceRoutes::try_from(pb::ServiceRoutes {
            service: SVC.into(),
            rules,
            ..Default::default()
        })
        .expect_err("invalid")
        .to_string()
    };
    let bad_regex = convert(vec![
        rule("ok", vec![]),
        rule(
            "bad",
            vec![on_path(prefix("/")), on_path(regex("(unclosed"))],
        ),
    ]);
    assert!(
        bad_regex.starts_with("rules[1].matches[1].path.regex: invalid regular expression"),
        "{bad_regex}"
    );
    let bad_header = convert(vec![rule(
        "h",
        vec![pb::RouteMatch {
            headers: vec![header("bad header", "x")],
            ..Default::default()
        }],
    )]);
    assert!(
        bad_header.starts_with("rules[0].matches[0].headers[0].name:"),
        "{bad_header}"
    );
    let bad_percent = convert(vec![pb::Route {
        fault: Some(pb::FaultInjection {
            delay: Some(pb::FaultDelay {
                fixed_delay: Some(prost_types::Duration {
                    seconds: 1,
                    nanos: 0,
                }),
                percent: 150.0,
            }),
            abort: None,
        }),
        ..Default::default()
    }]);
    assert!(
        bad_percent.starts_with("rules[0].fault.delay.percent: 150"),
        "{bad_percent}"
    );
    let bad_backend = convert(vec![pb::Route {
        backends: vec![pb::WeightedBackend {
            service: "no-namespace".into(),
            port: 80,
            weight: 1,
        }],
        ..Default::default()
    }]);
    assert!(
        bad_backend.starts_with("rules[0].backends[0].service:"),
        "{bad_backend}"
    );
    let bad_timeout = convert(vec![pb::Route {
        backend_request_timeout: Some(prost_types::Duration {
            seconds: -1,
            nanos: 0,
        }),
        ..Default::default()
    }]);
    assert!(
        bad_timeout.starts_with("rules[0].backend_request_timeout:"),
        "{bad_timeout}"
    );
    let no_service = ServiceRoutes::try_from(pb::ServiceRoutes::default())
        .expect_err("no service")
        .to_string();
    assert!(no_service.starts_with("service:"), "{no_service}");
}

#[test]
fn first_match_routes_take_the_first_matching_rule_in_order() {
    let mut r = routes(vec![
        rule("broad", vec![on_path(prefix("/"))]),
        rule("exact", vec![on_path(exact("/a"))]),
    ]);
    assert_eq!(pick(&r, "GET", "/a", &[]).as_deref(), Some("exact"));
    r.first_match = true;
    assert_eq!(pick(&r, "GET", "/a", &[]).as_deref(), Some("broad"));
}

#[test]
fn routes_serialize_readably_for_config_dumps() {
    let wire = pb::ServiceRoutes {
        service: SVC.into(),
        rules: vec![pb::Route {
            name: "r".into(),
            matches: vec![pb::RouteMatch {
                path: regex("/v[0-9]+"),
                method: "GET".into(),
                headers: vec![header("X-Canary", "yes")],
                ..Default::default()
            }],
            request_timeout: Some(prost_types::Duration {
                seconds: 1,
                nanos: 500_000_000,
            }),
            retry: Some(pb::RetryPolicy {
                attempts: 2,
                codes: vec![503],
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    };
    let json = serde_json::to_value(ServiceRoutes::try_from(wire).expect("valid")).expect("json");
    let rule = &json["rules"][0];
    assert_eq!(json["service"], SVC);
    assert_eq!(rule["matches"][0]["path"]["regex"], "/v[0-9]+");
    assert_eq!(rule["matches"][0]["method"], "GET");
    assert_eq!(rule["matches"][0]["headers"][0]["name"], "x-canary");
    assert_eq!(rule["requestTimeout"], "1.5s");
    assert_eq!(rule["retry"]["codes"][0], 503);
    assert_eq!(rule["retry"]["backoff"], "25ms");
    assert_eq!(json["loadBalancer"], "default");
}

#[test]
fn model_to_proto_to_model_gives_back_the_same_routes() {
    let duration = |seconds, nanos| Some(prost_types::Duration { seconds, nanos });
    let wire = pb::ServiceRoutes {
        service: SVC.into(),
        rules: vec![pb::Route {
            name: "r".into(),
            matches: vec![pb::RouteMatch {
                path: prefix("/api/"),
                method: "POST".into(),
                headers: vec![header("x-a", "1")],
                query_params: vec![pb::QueryParamMatch {
                    name: "q".into(),
                    value: Some(pb::query_param_match::Value::Regex("[a-z]+".into())),
                }],
            }],
            backends: vec![pb::WeightedBackend {
                service: "shop/v2.shop.svc.cluster.local".into(),
                port: 8080,
                weight: 7,
            }],
            filters: vec![
                pb::Filter {
                    kind: Some(pb::filter::Kind::RequestHeaderModifier(
                        pb::HeaderModifier {
                            set: vec![pb::Header {
                                name: "x-set".into(),
                                value: "v".into(),
                            }],
                            add: vec![],
                            remove: vec!["x-gone".into()],
                        },
                    )),
                },
                pb::Filter {
                    kind: Some(pb::filter::Kind::RequestRedirect(pb::RequestRedirect {
                        scheme: "https".into(),
                        port: 443,
                        status_code: 301,
                        ..Default::default()
                    })),
                },
            ],
            request_timeout: duration(2, 0),
            retry: Some(pb::RetryPolicy {
                attempts: 3,
                codes: vec![502, 503],
                backoff: duration(0, 50_000_000),
                per_try_timeout: duration(1, 0),
                retry_on: vec!["reset".into()],
            }),
            fault: Some(pb::FaultInjection {
                delay: None,
                abort: Some(pb::FaultAbort {
                    error: Some(pb::fault_abort::Error::GrpcStatus(14)),
                    percent: 25.0,
                }),
            }),
            kind: pb::RouteKind::Grpc as i32,
            ..Default::default()
        }],
        load_balancer: Some(pb::LoadBalancer {
            simple: pb::load_balancer::Simple::LeastRequest as i32,
        }),
        connection_pool: Some(pb::ConnectionPool {
            max_connections: 4,
            idle_timeout: duration(60, 0),
            ..Default::default()
        }),
        outlier_detection: Some(pb::OutlierDetection {
            consecutive_5xx_errors: 3,
            interval: duration(5, 0),
            base_ejection_time: duration(30, 0),
            max_ejection_percent: 20,
        }),
        first_match: true,
    };
    let model = ServiceRoutes::try_from(wire).expect("valid");
    let back = ServiceRoutes::try_from(pb::ServiceRoutes::from(&model)).expect("still valid");
    assert_eq!(back, model);
}
