//! Wire checks of `ambient.waypoint.v1.ServiceRoutes`: a full round trip, and exact bytes for
//! the field numbers other implementations (and older waypoints) rely on.

use prost::Message;
use prost::Name as _;
use proto::waypoint as pb;

fn sample() -> pb::ServiceRoutes {
    let duration = |seconds, nanos| prost_types::Duration { seconds, nanos };
    pb::ServiceRoutes {
        service: "shop/reviews.shop.svc.cluster.local".into(),
        rules: vec![pb::Route {
            name: "shop/reviews/0".into(),
            matches: vec![pb::RouteMatch {
                path: Some(pb::PathMatch {
                    kind: Some(pb::path_match::Kind::Prefix("/api".into())),
                }),
                method: "GET".into(),
                headers: vec![pb::HeaderMatch {
                    name: "x-canary".into(),
                    value: Some(pb::header_match::Value::Regex("t.*".into())),
                }],
                query_params: vec![pb::QueryParamMatch {
                    name: "v".into(),
                    value: Some(pb::query_param_match::Value::Exact("2".into())),
                }],
            }],
            backends: vec![pb::WeightedBackend {
                service: "shop/reviews-v2.shop.svc.cluster.local".into(),
                port: 9080,
                weight: 20,
            }],
            filters: vec![
                pb::Filter {
                    kind: Some(pb::filter::Kind::RequestHeaderModifier(
                        pb::HeaderModifier {
                            set: vec![pb::Header {
                                name: "x-a".into(),
                                value: "1".into(),
                            }],
                            add: vec![],
                            remove: vec!["x-b".into()],
                        },
                    )),
                },
                pb::Filter {
                    kind: Some(pb::filter::Kind::RequestMirror(pb::RequestMirror {
                        backend: Some(pb::WeightedBackend {
                            service: "shop/shadow.shop.svc.cluster.local".into(),
                            port: 80,
                            weight: 0,
                        }),
                        percent: 12.5,
                    })),
                },
            ],
            request_timeout: Some(duration(2, 0)),
            backend_request_timeout: Some(duration(0, 500_000_000)),
            retry: Some(pb::RetryPolicy {
                attempts: 3,
                codes: vec![503],
                backoff: Some(duration(0, 25_000_000)),
                per_try_timeout: None,
                retry_on: vec!["connect-failure".into()],
            }),
            fault: Some(pb::FaultInjection {
                delay: Some(pb::FaultDelay {
                    fixed_delay: Some(duration(1, 0)),
                    percent: 50.0,
                }),
                abort: Some(pb::FaultAbort {
                    error: Some(pb::fault_abort::Error::HttpStatus(503)),
                    percent: 10.0,
                }),
            }),
            kind: pb::RouteKind::Grpc as i32,
        }],
        load_balancer: Some(pb::LoadBalancer {
            simple: pb::load_balancer::Simple::RoundRobin as i32,
        }),
        connection_pool: Some(pb::ConnectionPool {
            max_connections: 10,
            ..Default::default()
        }),
        outlier_detection: Some(pb::OutlierDetection {
            consecutive_5xx_errors: 5,
            interval: Some(duration(10, 0)),
            base_ejection_time: Some(duration(30, 0)),
            max_ejection_percent: 50,
        }),
        first_match: true,
    }
}

#[test]
fn service_routes_round_trip_unchanged() {
    let routes = sample();
    let bytes = routes.encode_to_vec();
    let back = pb::ServiceRoutes::decode(bytes.as_slice()).expect("decode");
    assert_eq!(back, routes);
}

#[test]
fn service_routes_type_url_names_the_package() {
    assert_eq!(
        pb::ServiceRoutes::type_url(),
        "type.googleapis.com/ambient.waypoint.v1.ServiceRoutes"
    );
    assert_eq!(proto::ROUTES_TYPE_URL, pb::ServiceRoutes::type_url());
}

#[test]
fn service_routes_field_numbers_are_stable() {
    // service = 1 (string): tag 0x0a.
    let m = pb::ServiceRoutes {
        service: "a".into(),
        ..Default::default()
    };
    assert_eq!(m.encode_to_vec(), vec![0x0a, 1, b'a']);
    // rules = 2, Route.kind = 9 (varint): tag 0x48.
    let m = pb::ServiceRoutes {
        rules: vec![pb::Route {
            kind: pb::RouteKind::Grpc as i32,
            ..Default::default()
        }],
        ..Default::default()
    };
    assert_eq!(m.encode_to_vec(), vec![0x12, 2, 0x48, 1]);
    // outlier_detection = 5, consecutive_5xx_errors = 1.
    let m = pb::ServiceRoutes {
        outlier_detection: Some(pb::OutlierDetection {
            consecutive_5xx_errors: 7,
            ..Default::default()
        }),
        ..Default::default()
    };
    assert_eq!(m.encode_to_vec(), vec![0x2a, 2, 0x08, 7]);
    // first_match = 6 (bool).
    let m = pb::ServiceRoutes {
        first_match: true,
        ..Default::default()
    };
    assert_eq!(m.encode_to_vec(), vec![0x30, 1]);
    // WeightedBackend: service = 1, port = 2, weight = 3.
    let b = pb::WeightedBackend {
        service: "s".into(),
        port: 80,
        weight: 9,
    };
    assert_eq!(b.encode_to_vec(), vec![0x0a, 1, b's', 0x10, 80, 0x18, 9]);
    // PathMatch.regex = 3; HeaderMatch.regex = 3.
    let p = pb::PathMatch {
        kind: Some(pb::path_match::Kind::Regex("x".into())),
    };
    assert_eq!(p.encode_to_vec(), vec![0x1a, 1, b'x']);
    // FaultAbort.grpc_status = 2, percent = 3 (double, fixed64).
    let a = pb::FaultAbort {
        error: Some(pb::fault_abort::Error::GrpcStatus(14)),
        percent: 0.0,
    };
    assert_eq!(a.encode_to_vec(), vec![0x10, 14]);
    // Filter.request_mirror = 5.
    let f = pb::Filter {
        kind: Some(pb::filter::Kind::RequestMirror(pb::RequestMirror::default())),
    };
    assert_eq!(f.encode_to_vec(), vec![0x2a, 0]);
}
