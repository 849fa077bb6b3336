//! The routing kinds: Istio users' YAML parses unchanged, and invalid objects are refused with
//! the field named.

use super::*;

fn problems<T>(yaml: &str, validate: impl Fn(&T) -> Result<(), ValidationError>) -> Vec<String>
where
    T: serde::de::DeserializeOwned,
{
    let object: T = crate::from_yaml(yaml).expect("parses");
    validate(&object)
        .err()
        .map(|e| e.problems)
        .unwrap_or_default()
}

const CANARY: &str = r#"
metadata: {name: reviews, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews, port: 9080}]
  rules:
  - matches:
    - path: {type: PathPrefix, value: /api}
      headers: [{name: x-canary, value: "true"}]
      queryParams: [{type: RegularExpression, name: v, value: "[0-9]+"}]
      method: GET
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: x-a, value: "1"}], remove: [x-b]}
    - type: URLRewrite
      urlRewrite: {hostname: new, path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}
    - type: RequestMirror
      requestMirror: {backendRef: {name: shadow, port: 80}, percent: 10}
    backendRefs:
    - {name: reviews-v1, port: 9080, weight: 80}
    - {name: reviews-v2, port: 9080, weight: 20}
    timeouts: {request: 10s, backendRequest: 2s}
    retry: {codes: [503], attempts: 2, backoff: 100ms}
"#;

#[test]
fn a_full_gamma_httproute_parses_and_validates() {
    let route: HttpRoute = crate::from_yaml(CANARY).expect("parses");
    route.validate().expect("valid");
    let rule = &route.spec.rules[0];
    assert_eq!(rule.backend_refs[1].weight, Some(20));
    assert_eq!(
        rule.matches[0].path.as_ref().map(|p| p.kind()),
        Some("PathPrefix")
    );
    assert!(rule.matches[0].query_params[0].is_regex());
    assert_eq!(
        rule.timeouts
            .as_ref()
            .and_then(|t| t.backend_request.as_deref()),
        Some("2s")
    );
}

#[test]
fn invalid_httproutes_are_refused_naming_each_field() {
    let bad = CANARY
        .replace("value: /api}", "value: api}")
        .replace("method: GET", "method: FETCH")
        .replace("value: \"[0-9]+\"", "value: \"[0-9\"")
        .replace("backendRequest: 2s", "backendRequest: 20s")
        .replace("codes: [503]", "codes: [200]")
        .replace("weight: 20}", "weight: -1}");
    let found = problems(&bad, HttpRoute::validate);
    for field in [
        "spec.rules[0].matches[0].path.value: \"api\" must start with /",
        "spec.rules[0].matches[0].method: \"FETCH\"",
        "spec.rules[0].matches[0].queryParams[0].value:",
        "spec.rules[0].timeouts.backendRequest: must not be longer",
        "spec.rules[0].retry.codes[0]: 200",
        "spec.rules[0].backendRefs[1].weight: -1",
    ] {
        assert!(
            found.iter().any(|p| p.starts_with(field)),
            "{field} in {found:#?}"
        );
    }
    assert_eq!(found.len(), 6, "{found:#?}");
}

#[test]
fn httproute_filters_must_match_their_type_and_not_conflict() {
    let yaml = r#"
spec:
  rules:
  - matches: [{path: {type: Exact, value: /a}}]
    filters:
    - {type: RequestRedirect, requestRedirect: {statusCode: 307, port: 0}}
    - {type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /b}}}
    - {type: RequestHeaderModifier}
    - {type: Bogus}
    backendRefs: [{name: svc}]
"#;
    let found = problems(yaml, HttpRoute::validate);
    for field in [
        "spec.rules[0].filters: may hold a RequestRedirect or a URLRewrite",
        "spec.rules[0].backendRefs: must be empty when the rule redirects",
        "spec.rules[0].filters[0].requestRedirect.port: 0",
        "spec.rules[0].filters[1].urlRewrite.path.type: ReplacePrefixMatch needs",
        "spec.rules[0].filters[2].requestHeaderModifier: is required",
        "spec.rules[0].filters[3].type: \"Bogus\"",
        "spec.rules[0].backendRefs[0].port: is required",
    ] {
        assert!(
            found.iter().any(|p| p.starts_with(field)),
            "{field} in {found:#?}"
        );
    }
}

#[test]
fn unknown_route_fields_are_refused_with_their_path() {
    let typo = "spec:\n  rules:\n  - backendRef: [{name: a, port: 80}]\n";
    let err = crate::from_yaml::<HttpRoute>(typo).expect_err("typo");
    assert!(
        err.to_string().contains("unknown field `backendRef`"),
        "{err}"
    );
}

#[test]
fn grpcroutes_check_service_and_method_names() {
    let ok = r#"
metadata: {name: greeter}
spec:
  parentRefs: [{kind: Service, name: greeter}]
  rules:
  - matches:
    - method: {service: helloworld.Greeter, method: SayHello}
      headers: [{name: x-v, value: "2"}]
    - method: {type: RegularExpression, service: "helloworld\\..*"}
    backendRefs: [{name: greeter-v2, port: 50051}]
"#;
    assert!(problems(ok, GrpcRoute::validate).is_empty());
    let bad = ok
        .replace("method: SayHello", "method: Say.Hello")
        .replace("service: \"helloworld\\\\..*\"", "service: \"(\"");
    let found = problems(&bad, GrpcRoute::validate);
    assert!(
        found[0].starts_with("spec.rules[0].matches[0].method.method:"),
        "{found:#?}"
    );
    assert!(
        found[1].starts_with("spec.rules[0].matches[1].method.service:"),
        "{found:#?}"
    );
    let empty = "spec:\n  rules:\n  - matches: [{method: {}}]\n";
    assert_eq!(
        problems(empty, GrpcRoute::validate),
        vec!["spec.rules[0].matches[0].method: needs a service, a method or both".to_string()]
    );
}

const VS: &str = r#"
metadata: {name: ratings}
spec:
  hosts: [ratings]
  http:
  - match: [{uri: {prefix: /v1}, headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: ratings, port: {number: 9080}}, weight: 100}]
    timeout: 0.5s
    retries: {attempts: 3, perTryTimeout: 2s, retryOn: "5xx,connect-failure"}
    fault:
      delay: {fixedDelay: 7s, percentage: {value: 10}}
      abort: {httpStatus: 500, percentage: {value: 1.5}}
"#;

#[test]
fn virtualservice_subset_parses_and_bad_values_name_their_field() {
    assert!(problems(VS, VirtualService::validate).is_empty());
    let bad = VS
        .replace("timeout: 0.5s", "timeout: soon")
        .replace("value: 10}", "value: 110}")
        .replace("httpStatus: 500", "httpStatus: 99")
        .replace("{prefix: /v1}", "{prefix: /v1, exact: /v1}")
        .replace("port: {number: 9080}}", "subset: v2}");
    let found = problems(&bad, VirtualService::validate);
    for field in [
        "spec.http[0].match[0].uri: must set exactly one",
        "spec.http[0].route[0].destination.subset:",
        "spec.http[0].timeout: \"soon\"",
        "spec.http[0].fault.delay.percentage.value: 110",
        "spec.http[0].fault.abort.httpStatus: 99",
    ] {
        assert!(
            found.iter().any(|p| p.starts_with(field)),
            "{field} in {found:#?}"
        );
    }
    let no_hosts = "spec: {http: []}";
    assert_eq!(
        problems(no_hosts, VirtualService::validate),
        vec!["spec.hosts: must name at least one host".to_string()]
    );
}

#[test]
fn destinationrule_subset_parses_and_bad_values_name_their_field() {
    let ok = r#"
metadata: {name: reviews}
spec:
  host: reviews.shop.svc.cluster.local
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
    connectionPool:
      tcp: {maxConnections: 100, connectTimeout: 30ms}
      http: {http1MaxPendingRequests: 10, http2MaxRequests: 1000, maxRequestsPerConnection: 10}
    outlierDetection: {consecutive5xxErrors: 5, interval: 10s, baseEjectionTime: 3m, maxEjectionPercent: 50}
"#;
    let dr: DestinationRule = crate::from_yaml(ok).expect("parses");
    dr.validate().expect("valid");
    let od = dr
        .spec
        .traffic_policy
        .and_then(|t| t.outlier_detection)
        .expect("outlier");
    assert_eq!(od.consecutive_5xx_errors, Some(5));
    let bad = ok
        .replace("ROUND_ROBIN", "PASSTHROUGH")
        .replace("maxConnections: 100", "maxConnections: 0")
        .replace("interval: 10s", "interval: ten")
        .replace("maxEjectionPercent: 50", "maxEjectionPercent: 150");
    let found = problems(&bad, DestinationRule::validate);
    for field in [
        "spec.trafficPolicy.loadBalancer.simple: \"PASSTHROUGH\"",
        "spec.trafficPolicy.connectionPool.tcp.maxConnections: 0",
        "spec.trafficPolicy.outlierDetection.interval:",
        "spec.trafficPolicy.outlierDetection.maxEjectionPercent: 150",
    ] {
        assert!(
            found.iter().any(|p| p.starts_with(field)),
            "{field} in {found:#?}"
        );
    }
}
