//! Tests of [`parse_file`](super::parse_file).

use std::path::Path;

use super::*;

fn parse(text: &str) -> ParsedFile {
    parse_file(text, Path::new("/cfg/a.yaml"))
}

fn reasons(problems: &[ConfigProblem]) -> Vec<String> {
    problems.iter().map(ToString::to_string).collect()
}

const ALL_KINDS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: apps, namespace: ignored}
---
apiVersion: v1
kind: Pod
metadata: {name: p}
spec: {containers: [{name: c, image: i}]}
---
apiVersion: v1
kind: Service
metadata: {name: s, namespace: apps}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: sa, namespace: apps}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ap, namespace: apps}
spec: {action: DENY}
---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: pa, namespace: apps}
spec: {mtls: {mode: STRICT}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: apps}
spec: {gatewayClassName: istio-waypoint}
---
apiVersion: gateway.networking.k8s.io/v1beta1
kind: HTTPRoute
metadata: {name: r, namespace: apps}
---
"#;

#[test]
fn every_kind_is_read_and_namespaces_are_defaulted() {
    let parsed = parse(ALL_KINDS);
    assert!(parsed.problems.is_empty(), "{:?}", parsed.problems);
    assert!(parsed.warnings.is_empty(), "{:?}", parsed.warnings);
    let kinds: Vec<Kind> = parsed.objects.iter().map(|o| o.object.kind()).collect();
    assert_eq!(
        kinds,
        [
            Kind::Namespace,
            Kind::Pod,
            Kind::Service,
            Kind::ServiceAccount,
            Kind::AuthorizationPolicy,
            Kind::PeerAuthentication,
            Kind::Gateway,
            Kind::HttpRoute,
        ]
    );
    let keys: Vec<String> = parsed
        .objects
        .iter()
        .map(|o| key(&o.object).to_string())
        .collect();
    assert_eq!(keys[0], "/apps", "a Namespace has no namespace");
    assert_eq!(keys[1], "default/p");
    assert_eq!(keys[7], "apps/r");
    assert_eq!(parsed.objects[7].document, 7);
}

#[test]
fn unknown_kinds_are_ignored_with_a_warning() {
    let parsed = parse(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n---\napiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g}\n",
    );
    assert!(parsed.objects.is_empty());
    assert!(parsed.problems.is_empty());
    assert_eq!(
        reasons(&parsed.warnings),
        [
            "/cfg/a.yaml document 0: kind Deployment of apps/v1 is not used; ignored",
            "/cfg/a.yaml document 1: kind Gateway of networking.istio.io/v1 is not used; ignored",
        ]
    );
}

#[test]
fn list_items_are_read_one_by_one() {
    let parsed = parse(
        r#"
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Pod, metadata: {name: a, namespace: n}}
- {apiVersion: apps/v1, kind: ReplicaSet, metadata: {name: rs}}
- {apiVersion: v1, kind: Pod, metadata: {namespace: n}}
- {apiVersion: v1, kind: List, items: []}
"#,
    );
    assert_eq!(parsed.objects.len(), 1);
    assert_eq!(parsed.objects[0].item, Some(0));
    assert_eq!(
        reasons(&parsed.warnings),
        ["/cfg/a.yaml document 0 item 1: kind ReplicaSet of apps/v1 is not used; ignored"]
    );
    assert_eq!(
        reasons(&parsed.problems),
        [
            "/cfg/a.yaml document 0 item 2: metadata.name is missing",
            "/cfg/a.yaml document 0 item 3: a List inside a List is not read",
        ]
    );
}

#[test]
fn unusable_documents_are_reported_with_their_index_and_reason() {
    let parsed = parse(
        r#"apiVersion: v1
kind: Pod
metadata: {name: ok}
---
- just
- a list
---
kind: Pod
metadata: {name: x}
---
apiVersion: v1
metadata: {name: x}
---
apiVersion: v2
kind: Pod
metadata: {name: x}
---
apiVersion: security.istio.io/v2
kind: AuthorizationPolicy
metadata: {name: x}
---
apiVersion: v1
kind: Pod
metadata: {namespace: n}
---
apiVersion: v1
kind: Pod
metadata: {name: x}
spec:
  nodeName: [not, a, string]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: typo}
spec:
  rules:
  - from:
    - source: {principal: [a]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: invalid}
spec:
  rules:
  - to: [{operation: {ports: [http]}}]
"#,
    );
    assert_eq!(parsed.objects.len(), 1);
    let got = reasons(&parsed.problems);
    let expected = [
        "document 1: expected a mapping with apiVersion, kind and metadata",
        "document 2: apiVersion is missing",
        "document 3: kind is missing",
        "document 4: apiVersion v2 is not read for Pod; use v1",
        "document 5: apiVersion security.istio.io/v2 is not read for AuthorizationPolicy; use security.istio.io/v1 or security.istio.io/v1beta1",
        "document 6: metadata.name is missing",
        "document 7: not a valid Pod: spec.nodeName: invalid type: sequence, expected a string",
        "document 8: not a valid AuthorizationPolicy: spec.rules[0].from[0].source.principal: unknown field `principal`",
        "document 9: invalid AuthorizationPolicy: spec.rules[0].to[0].operation.ports[0]: \"http\" is not a port number (0-65535)",
    ];
    assert_eq!(got.len(), expected.len(), "{got:#?}");
    for (got, expected) in got.iter().zip(expected) {
        assert!(
            got.starts_with(&format!("/cfg/a.yaml {expected}")),
            "{got}\nshould start with\n/cfg/a.yaml {expected}"
        );
    }
}

#[test]
fn broken_yaml_stops_the_file_and_empty_documents_are_skipped() {
    let parsed = parse(
        "---\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: a}\n---\nmetadata: {name: [\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: b}\n",
    );
    assert_eq!(parsed.objects.len(), 1, "{parsed:?}");
    assert_eq!(parsed.problems.len(), 1, "{:?}", parsed.problems);
    let problem = &parsed.problems[0];
    assert!(problem.reason.starts_with("not YAML"), "{problem}");
    assert!(problem.document.is_some());
    assert!(parse("").objects.is_empty());
    assert!(parse("# only a comment\n").problems.is_empty());
}
