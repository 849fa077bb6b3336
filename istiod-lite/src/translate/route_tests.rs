//! Translation of HTTPRoute, GRPCRoute, VirtualService and DestinationRule into ServiceRoutes.

use proto::waypoint as pb;

use super::super::test_support::{run, warnings_about};

const SERVICES: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: shop}
spec: {clusterIP: 10.96.0.10, ports: [{port: 9080}]}
---
apiVersion: v1
kind: Service
metadata: {name: reviews-v2, namespace: shop}
spec: {clusterIP: 10.96.0.11, ports: [{port: 9080}]}
---
apiVersion: v1
kind: Service
metadata: {name: greeter, namespace: shop}
spec: {clusterIP: 10.96.0.12, ports: [{port: 50051}]}
"#;

const REVIEWS: &str = "shop/reviews.shop.svc.cluster.local";
const REVIEWS_V2: &str = "shop/reviews-v2.shop.svc.cluster.local";

fn with(extra: &str) -> String {
    format!("{SERVICES}---\n{extra}")
}

#[test]
fn httproutes_on_a_service_become_its_rules_ordered_by_name() {
    let t = run(&with(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: b-canary, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews, port: 9080}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /api}, headers: [{name: X-Canary, value: "yes"}], method: GET}]
    backendRefs: [{name: reviews, port: 9080, weight: 80}, {name: reviews-v2, port: 9080, weight: 20}]
    filters:
    - {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: X-Route, value: canary}]}}
    timeouts: {request: 5s, backendRequest: 0s}
    retry: {codes: [503], backoff: 100ms}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: a-exact, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews}]
  rules:
  - name: health
    matches: [{path: {type: Exact, value: /healthz}}]
"#,
    ));
    let r = &t.routes[REVIEWS];
    assert_eq!(r.service, REVIEWS);
    assert!(!r.first_match);
    let names: Vec<&str> = r.rules.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["shop/a-exact/health", "shop/b-canary/0"]);
    let canary = &r.rules[1];
    assert_eq!(canary.kind, pb::RouteKind::Http as i32);
    let m = &canary.matches[0];
    assert_eq!(m.method, "GET");
    assert_eq!(
        m.path.as_ref().and_then(|p| p.kind.clone()),
        Some(pb::path_match::Kind::Prefix("/api".into()))
    );
    assert_eq!(m.headers[0].name, "x-canary");
    let weights: Vec<(&str, u32, u32)> = canary
        .backends
        .iter()
        .map(|b| (b.service.as_str(), b.port, b.weight))
        .collect();
    assert_eq!(weights, [(REVIEWS, 9080, 80), (REVIEWS_V2, 9080, 20)]);
    assert_eq!(canary.request_timeout.as_ref().map(|d| d.seconds), Some(5));
    assert_eq!(canary.backend_request_timeout, None, "0s disables");
    let retry = canary.retry.as_ref().expect("retry");
    assert_eq!((retry.attempts, retry.codes.clone()), (2, vec![503]));
    assert_eq!(retry.backoff.as_ref().map(|d| d.nanos), Some(100_000_000));
    assert_eq!(canary.filters.len(), 1);
    // The model accepts what the translation produces.
    mesh::model::route::ServiceRoutes::try_from(r.clone()).expect("valid on the wire");
    assert!(t.warnings.is_empty(), "{:?}", t.warnings);
}

#[test]
fn routes_to_missing_or_foreign_services_are_left_out_with_a_warning() {
    let t = run(&with(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: shop}
spec:
  parentRefs:
  - {group: "", kind: Service, name: ghost}
  - {group: "", kind: Service, name: reviews, namespace: other}
  - {kind: Service, name: reviews}
  - {name: some-gateway}
"#,
    ));
    assert!(t.routes.is_empty());
    let w = warnings_about(&t, "HTTPRoute shop/r");
    assert_eq!(w.len(), 3, "{w:?}");
    assert!(w.iter().any(|m| m.contains("needs `group: \"\"`")), "{w:?}");
    assert!(w.iter().any(|m| m.contains("ghost")), "{w:?}");
}

#[test]
fn grpc_methods_become_paths_and_rules_are_grpc() {
    let t = run(&with(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: g, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: greeter}]
  rules:
  - matches:
    - method: {service: helloworld.Greeter, method: SayHello}
    - method: {service: helloworld.Greeter}
    - method: {method: Check}
    backendRefs: [{name: greeter, port: 50051}]
"#,
    ));
    let r = &t.routes["shop/greeter.shop.svc.cluster.local"];
    let rule = &r.rules[0];
    assert_eq!(rule.kind, pb::RouteKind::Grpc as i32);
    let paths: Vec<_> = rule
        .matches
        .iter()
        .map(|m| m.path.as_ref().and_then(|p| p.kind.clone()))
        .collect();
    use pb::path_match::Kind;
    assert_eq!(
        paths,
        [
            Some(Kind::Exact("/helloworld.Greeter/SayHello".into())),
            Some(Kind::Prefix("/helloworld.Greeter".into())),
            Some(Kind::Regex("/[^/]+/Check".into())),
        ]
    );
    mesh::model::route::ServiceRoutes::try_from(r.clone()).expect("valid on the wire");
}

const VS: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews]
  http:
  - match: [{uri: {prefix: /v2}}]
    route: [{destination: {host: reviews-v2}}]
    fault: {abort: {httpStatus: 503, percentage: {value: 50}}}
  - route:
    - {destination: {host: reviews.shop.svc.cluster.local, port: {number: 9080}}, weight: 90}
    - {destination: {host: reviews-v2.shop}, weight: 10}
    timeout: 3s
    retries: {attempts: 4, perTryTimeout: 1s, retryOn: "5xx,502"}
    fault: {delay: {fixedDelay: 1s, percentage: {value: 10}}}
"#;

#[test]
fn a_virtualservice_alone_gives_ordered_first_match_rules() {
    let t = run(&with(VS));
    let r = &t.routes[REVIEWS];
    assert!(r.first_match);
    assert_eq!(r.rules.len(), 2);
    let first = &r.rules[0];
    assert_eq!(
        first.matches[0].path.as_ref().and_then(|p| p.kind.clone()),
        Some(pb::path_match::Kind::Regex("/v2.*".into()))
    );
    assert_eq!(first.backends[0].service, REVIEWS_V2);
    let abort = first.fault.as_ref().and_then(|f| f.abort).expect("abort");
    assert_eq!(abort.error, Some(pb::fault_abort::Error::HttpStatus(503)));
    assert_eq!(abort.percent, 50.0);
    let second = &r.rules[1];
    let weights: Vec<u32> = second.backends.iter().map(|b| b.weight).collect();
    assert_eq!(weights, [90, 10]);
    let retry = second.retry.as_ref().expect("retry");
    assert_eq!(retry.attempts, 4);
    assert_eq!(retry.codes, [502]);
    assert_eq!(retry.retry_on, ["5xx"]);
    assert_eq!(second.request_timeout.as_ref().map(|d| d.seconds), Some(3));
    mesh::model::route::ServiceRoutes::try_from(r.clone()).expect("valid on the wire");
}

#[test]
fn a_virtualservice_merges_fault_retries_and_timeout_onto_httproutes() {
    let t = run(&with(&format!(
        "{VS}---\n{}",
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews}]
  rules:
  - backendRefs: [{name: reviews, port: 9080}]
    timeouts: {request: 9s}
"#
    )));
    let r = &t.routes[REVIEWS];
    assert!(!r.first_match, "Gateway API precedence stays");
    assert_eq!(r.rules.len(), 1);
    let rule = &r.rules[0];
    assert_eq!(rule.name, "shop/r/0");
    assert_eq!(
        rule.request_timeout.as_ref().map(|d| d.seconds),
        Some(9),
        "the HTTPRoute's own timeout wins"
    );
    // The VirtualService's catch-all entry (no match) is the one merged.
    assert!(rule.fault.as_ref().and_then(|f| f.delay.as_ref()).is_some());
    assert_eq!(rule.retry.as_ref().map(|r| r.attempts), Some(4));
    assert_eq!(warnings_about(&t, "VirtualService shop/reviews").len(), 1);
}

#[test]
fn a_destinationrule_sets_balancing_pool_and_outlier_detection() {
    let t = run(&with(
        r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
    connectionPool: {tcp: {maxConnections: 10}, http: {http2MaxRequests: 100}}
    outlierDetection: {interval: 5s, baseEjectionTime: 30s, maxEjectionPercent: 50}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: external, namespace: shop}
spec: {host: example.com}
"#,
    ));
    let r = &t.routes[REVIEWS];
    assert!(r.rules.is_empty());
    assert_eq!(
        r.load_balancer.as_ref().map(|l| l.simple),
        Some(pb::load_balancer::Simple::RoundRobin as i32)
    );
    let pool = r.connection_pool.as_ref().expect("pool");
    assert_eq!((pool.max_connections, pool.http2_max_requests), (10, 100));
    let o = r.outlier_detection.as_ref().expect("outlier");
    assert_eq!(o.consecutive_5xx_errors, 5, "Istio's default");
    assert_eq!(o.interval.as_ref().map(|d| d.seconds), Some(5));
    assert_eq!(o.max_ejection_percent, 50);
    assert_eq!(warnings_about(&t, "DestinationRule shop/external").len(), 1);
    assert_eq!(t.routes.len(), 1);
}
