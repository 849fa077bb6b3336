#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;

use super::*;

fn dir() -> (tempfile::TempDir, ConfigDir) {
    let tmp = tempfile::tempdir().unwrap();
    let config = ConfigDir::new(tmp.path().join("config"));
    (tmp, config)
}

fn root(tmp: &tempfile::TempDir) -> PathBuf {
    tmp.path().join("config")
}

/// Every file under `dir`, relative, sorted (dot-named ones included, to catch leftovers).
fn files(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries {
            let path = e.unwrap().path();
            if path.is_dir() {
                walk(base, &path, out);
            } else {
                out.push(path.strip_prefix(base).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn web(ip: Option<&str>) -> PodRecord {
    PodRecord {
        name: "web".into(),
        namespace: "demo".into(),
        uid: "0b1c2d3e-0000-4000-8000-000000000001".into(),
        node: "n1".into(),
        ip: ip.map(|s| s.parse().unwrap()),
        service_account: "web".into(),
        labels: BTreeMap::from([("app".into(), "web".into())]),
    }
}

const ALLOW_SAME: &str = "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-same, namespace: demo}
spec:
  action: ALLOW
  rules:
  - from:
    - source: {namespaces: [demo]}
";

const POLICY_PATH: &str = "objects/authorizationpolicy.security.istio.io/demo/allow-same.yaml";

#[test]
fn writes_are_atomic_and_leave_no_temporary_files() {
    let (tmp, config) = dir();
    let path = root(&tmp).join("a/b.yaml");
    write_atomic(&path, "one: 1\n").unwrap();
    write_atomic(&path, "two: 2\n").unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "two: 2\n");
    assert_eq!(files(&root(&tmp)), ["a/b.yaml"]);

    // A reader polling while a writer replaces the file sees one whole version or the other.
    let big_a = format!("a: \"{}\"\n", "a".repeat(256 * 1024));
    let big_b = format!("b: \"{}\"\n", "b".repeat(256 * 1024));
    write_atomic(&path, &big_a).unwrap();
    let writer = {
        let (path, a, b) = (path.clone(), big_a.clone(), big_b.clone());
        std::thread::spawn(move || {
            for i in 0..100 {
                write_atomic(&path, if i % 2 == 0 { &b } else { &a }).unwrap();
            }
        })
    };
    while !writer.is_finished() {
        let seen = std::fs::read_to_string(&path).unwrap();
        assert!(
            seen == big_a || seen == big_b,
            "half a file: {} bytes",
            seen.len()
        );
    }
    writer.join().unwrap();
    assert_eq!(files(&root(&tmp)), ["a/b.yaml"]);
    drop(config);
}

#[test]
fn a_pod_round_trips_in_the_shape_istiod_lite_reads() {
    let (tmp, config) = dir();
    let pending = web(None);
    config.put_pod(&pending).unwrap();
    assert_eq!(config.pods().unwrap(), [pending]);
    let text = std::fs::read_to_string(root(&tmp).join("pods/demo/web.yaml")).unwrap();
    assert!(!text.contains("status"), "{text}");

    let running = web(Some("10.244.1.2"));
    config.put_pod(&running).unwrap();
    assert_eq!(config.pods().unwrap(), [running]);
    assert_eq!(
        files(&root(&tmp)),
        ["namespaces/demo.yaml", "pods/demo/web.yaml"]
    );

    let text = std::fs::read_to_string(root(&tmp).join("pods/demo/web.yaml")).unwrap();
    let doc: serde_json::Value = resources::yaml_parse(&text).unwrap();
    let expected: serde_json::Value = resources::yaml_parse(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: demo, uid: 0b1c2d3e-0000-4000-8000-000000000001, labels: {app: web}}
spec: {nodeName: n1, serviceAccountName: web, containers: [{name: main, image: local}]}
status: {phase: Running, podIP: 10.244.1.2, podIPs: [{ip: 10.244.1.2}], conditions: [{type: Ready, status: "True"}]}
"#,
    )
    .unwrap();
    assert_eq!(doc, expected, "{text}");
    // What `apply` would accept, istiod-lite reads too.
    manifest::parse(&text).unwrap();

    let mut other = web(Some("10.244.1.3"));
    other.namespace = "apps".into();
    other.name = "api".into();
    config.put_pod(&other).unwrap();
    let names: Vec<_> = config.pods().unwrap().into_iter().map(|p| p.name).collect();
    assert_eq!(names, ["api", "web"]);

    config.remove_pod("demo", "web").unwrap();
    config.remove_pod("demo", "web").unwrap(); // already gone: fine
    assert_eq!(config.pods().unwrap(), [other]);
}

#[test]
fn pod_and_label_names_are_checked() {
    let (tmp, config) = dir();
    type Change = fn(&mut PodRecord);
    let cases: [(Change, &str); 6] = [
        (
            |p| p.name = "Web".into(),
            "name: \"Web\" is not a DNS-1123 label",
        ),
        (
            |p| p.name = "a.b".into(),
            "name: \"a.b\" is not a DNS-1123 label",
        ),
        (|p| p.namespace = "-x".into(), "namespace: \"-x\""),
        (|p| p.service_account = String::new(), "service account"),
        (|p| p.uid = " ".into(), "uid is empty"),
        (
            |p| {
                p.labels.insert("bad key!".into(), "x".into());
            },
            "labels",
        ),
    ];
    for (change, expected) in cases {
        let mut pod = web(None);
        change(&mut pod);
        let err = format!("{:#}", config.put_pod(&pod).unwrap_err());
        assert!(err.contains(expected), "{err}");
    }
    assert!(files(&root(&tmp)).is_empty(), "nothing written");
    assert!(config
        .label_namespace("demo", "istio.io/x", Some("no spaces"))
        .is_err());
    assert!(config.label_namespace("demo", "/x", Some("y")).is_err());
    assert!(config.label_namespace("Demo", "x", Some("y")).is_err());
    assert!(files(&root(&tmp)).is_empty(), "nothing written");
}

#[test]
fn namespace_labels_are_added_and_removed() {
    let (tmp, config) = dir();
    let path = root(&tmp).join("namespaces/demo.yaml");
    let labels = || -> serde_json::Value {
        let doc: serde_json::Value =
            resources::yaml_parse(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(doc["kind"], "Namespace");
        assert_eq!(doc["apiVersion"], "v1");
        assert_eq!(doc["metadata"]["name"], "demo");
        doc["metadata"]["labels"].clone()
    };

    config
        .label_namespace("demo", "istio.io/dataplane-mode", Some("ambient"))
        .unwrap();
    assert_eq!(labels()["istio.io/dataplane-mode"], "ambient");
    config.label_namespace("demo", "team", Some("a")).unwrap();
    config.ensure_namespace("demo").unwrap(); // keeps the labels
    assert_eq!(labels()["team"], "a");
    assert_eq!(labels()["istio.io/dataplane-mode"], "ambient");

    config
        .label_namespace("demo", "istio.io/dataplane-mode", None)
        .unwrap();
    assert!(labels().get("istio.io/dataplane-mode").is_none());
    config.label_namespace("demo", "team", None).unwrap();
    assert!(labels().is_null(), "no labels left");
    config.label_namespace("demo", "absent", None).unwrap();
    assert_eq!(files(&root(&tmp)), ["namespaces/demo.yaml"]);

    // A pod keeps its namespace's labels.
    config.label_namespace("demo", "team", Some("b")).unwrap();
    config.put_pod(&web(None)).unwrap();
    assert_eq!(labels()["team"], "b");
}

#[test]
fn apply_reports_created_configured_unchanged() {
    let (tmp, config) = dir();
    let id = "authorizationpolicy.security.istio.io/demo/allow-same";
    assert_eq!(config.apply(ALLOW_SAME).unwrap(), [format!("{id} created")]);
    assert_eq!(
        config.apply(ALLOW_SAME).unwrap(),
        [format!("{id} unchanged")]
    );
    let changed = ALLOW_SAME.replace("[demo]", "[demo, ops]");
    assert_eq!(
        config.apply(&changed).unwrap(),
        [format!("{id} configured")]
    );
    let stored = std::fs::read_to_string(root(&tmp).join(POLICY_PATH)).unwrap();
    assert!(stored.contains("ops"), "{stored}");

    // Namespace defaulted; core kinds named like kubectl; Namespaces and Pods in their dirs.
    let more = "\
apiVersion: v1
kind: Service
metadata: {name: web}
spec: {selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {istio.io/dataplane-mode: ambient}}
---
---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: strict, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: demo}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
";
    assert_eq!(
        config.apply(more).unwrap(),
        [
            "service/default/web created",
            "namespace/demo created",
            "peerauthentication.security.istio.io/istio-system/strict created",
            "gateway.gateway.networking.k8s.io/demo/waypoint created",
        ]
    );
    assert_eq!(
        files(&root(&tmp)),
        [
            "namespaces/demo.yaml",
            POLICY_PATH,
            "objects/gateway.gateway.networking.k8s.io/demo/waypoint.yaml",
            "objects/peerauthentication.security.istio.io/istio-system/strict.yaml",
            "objects/service/default/web.yaml",
        ]
    );
    let service = std::fs::read_to_string(root(&tmp).join("objects/service/default/web.yaml"));
    assert!(service.unwrap().contains("namespace: default"));
    // The labels applied are those label_namespace sees, and the other way round.
    config.label_namespace("demo", "team", Some("a")).unwrap();
    let ns = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: demo\n  labels:\n    istio.io/dataplane-mode: ambient\n    team: a\n";
    assert_eq!(config.apply(ns).unwrap(), ["namespace/demo unchanged"]);

    // A Pod applied is a pod like any other.
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: job, namespace: demo}\nspec: {containers: [{name: c}]}\n";
    assert_eq!(config.apply(pod).unwrap(), ["pod/demo/job created"]);
    let job = config
        .pods()
        .unwrap()
        .into_iter()
        .find(|p| p.name == "job")
        .unwrap();
    assert_eq!((job.ip, job.service_account.as_str()), (None, "default"));
}

#[test]
fn custom_and_untargeted_audit_policies_are_refused_and_nothing_is_written() {
    for action in ["AUDIT", "CUSTOM"] {
        let (tmp, config) = dir();
        let provider = if action == "CUSTOM" {
            "\n  provider: {name: ext-authz}"
        } else {
            ""
        };
        let input = format!(
            "{ALLOW_SAME}---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
             metadata: {{name: audit, namespace: demo}}\nspec:\n  action: {action}{provider}\n  \
             rules: [{{}}]\n"
        );
        let err = format!("{:#}", config.apply(&input).unwrap_err());
        assert!(err.contains("nothing was applied"), "{err}");
        let why = if action == "AUDIT" {
            "only waypoints audit requests; bind the policy"
        } else {
            "not supported by this mesh"
        };
        assert!(
            err.contains(&format!(
                "document 2 of 2 (authorizationpolicy.security.istio.io/demo/audit): spec.action {action}: {why}"
            )),
            "{err}"
        );
        assert!(files(&root(&tmp)).is_empty(), "{action}: something written");
    }
}

#[test]
fn a_bad_second_document_writes_nothing() {
    let bad_inputs = [
        ("kind: AuthorizationPolicy\nmetadata: {name: x}", "document 2 of 2: apiVersion is missing"),
        (
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}",
            "kind Deployment of apps/v1 is not supported by the mesh",
        ),
        (
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: x}\nspec: {rules: [{from: [{source: {principal: [a]}}]}]}",
            "spec.rules[0].from[0].source.principal: unknown field `principal`",
        ),
        (
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: x}\nspec: {rules: [{to: [{operation: {ports: [http]}}]}]}",
            "spec.rules[0].to[0].operation.ports[0]: \"http\" is not a port number",
        ),
        (
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: x}\nspec: {action: REJECT}",
            "spec.action",
        ),
        (
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: x}\nspec: {portLevelMtls: {http: {mode: STRICT}}}",
            "spec.portLevelMtls.http: invalid value: string \"http\", expected a port number",
        ),
        (
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: x}\nspec: {mtls: {mode: SOMETIMES}}",
            "not a valid PeerAuthentication",
        ),
        (
            "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: eighty}]}",
            "not a valid Service",
        ),
        (
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: g}\nspec: {listeners: [{port: 99999}]}",
            "not a valid Gateway",
        ),
        ("apiVersion: v1\nkind: Service\nmetadata: {name: My_Svc}", "metadata.name: \"My_Svc\""),
        ("apiVersion: v2\nkind: Service\nmetadata: {name: s}", "apiVersion v2 is not read for Service; use v1"),
        ("apiVersion: v1\nkind: List\nitems: []", "kind List is not supported"),
        ("apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: 7}", "metadata.namespace must be a string"),
        ("- a list", "expected a mapping"),
        ("a: [unclosed", "document 2: not YAML"),
    ];
    for (bad, expected) in bad_inputs {
        let (tmp, config) = dir();
        let input = format!("{ALLOW_SAME}---\n{bad}\n");
        let err = format!("{:#}", config.apply(&input).unwrap_err());
        assert!(err.contains(expected), "{bad}: {err}");
        assert!(files(&root(&tmp)).is_empty(), "{bad}: something written");
    }

    // Every problem is listed at once.
    let (_tmp, config) = dir();
    let two =
        "apiVersion: v1\nkind: Service\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: s}\n";
    let err = config.apply(two).unwrap_err().to_string();
    assert!(
        err.starts_with("2 unusable document(s); nothing was applied:"),
        "{err}"
    );
    assert!(config.apply("---\n").is_err(), "no objects");
}

#[test]
fn l7_rules_are_applied_with_a_warning() {
    let (_tmp, config) = dir();
    let input = "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: get-only, namespace: demo}
spec:
  rules:
  - to: [{operation: {methods: [GET], ports: [\"8080\"]}}]
  - from: [{source: {namespaces: [demo]}}]
    when: [{key: \"request.headers[x-token]\", values: [abc]}]
  - to: [{operation: {ports: [\"9090\"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: waypoint-only, namespace: demo}
spec:
  targetRefs: [{kind: Service, group: \"\", name: web}]
  rules: [{to: [{operation: {paths: [/admin]}}]}]
";
    let lines = config.apply(input).unwrap();
    let id = "authorizationpolicy.security.istio.io/demo/get-only";
    assert_eq!(lines.len(), 4, "{lines:#?}");
    assert!(
        lines[0].starts_with(&format!(
            "Warning: {id}: spec.rules[0] uses L7 attributes ztunnel cannot check (methods); ztunnel fails closed"
        )),
        "{lines:#?}"
    );
    assert!(
        lines[1].contains(
            "spec.rules[1] uses L7 attributes ztunnel cannot check (when request.headers[x-token])"
        ),
        "{lines:#?}"
    );
    assert_eq!(lines[2], format!("{id} created"));
    assert!(lines[3].ends_with("waypoint-only created"), "{lines:#?}");

    let deny = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: d}\nspec:\n  action: DENY\n  rules: [{to: [{operation: {paths: [/admin]}}]}]\n";
    let lines = config.apply(deny).unwrap();
    assert!(lines[0].contains("denies more than written"), "{lines:#?}");
}

#[test]
fn delete_removes_named_objects_all_or_nothing() {
    let (tmp, config) = dir();
    config.apply(ALLOW_SAME).unwrap();
    config.put_pod(&web(Some("10.244.1.2"))).unwrap();

    // Only the header is read: a policy the mesh refuses can still be named for deletion.
    let named = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: allow-same, namespace: demo}\nspec: {action: AUDIT}\n";
    let missing = format!("{named}---\napiVersion: v1\nkind: Service\nmetadata: {{name: gone}}\n");
    let err = config.delete(&missing).unwrap_err().to_string();
    assert!(err.contains("service/default/gone not found"), "{err}");
    assert!(root(&tmp).join(POLICY_PATH).exists(), "nothing deleted");

    // A namespace that still holds objects stays.
    let ns = "apiVersion: v1\nkind: Namespace\nmetadata: {name: demo}\n";
    let err = config.delete(ns).unwrap_err().to_string();
    assert!(
        err.contains("namespace/demo still holds 2 object(s)"),
        "{err}"
    );

    assert_eq!(
        config.delete(named).unwrap(),
        ["authorizationpolicy.security.istio.io/demo/allow-same deleted"]
    );
    assert!(!root(&tmp).join(POLICY_PATH).exists());
    assert!(config.delete(named).is_err(), "already gone");

    // With its last object in the same input, the namespace goes too.
    let pod_and_ns =
        format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: web, namespace: demo}}\n---\n{ns}");
    assert_eq!(
        config.delete(&pod_and_ns).unwrap(),
        ["pod/demo/web deleted", "namespace/demo deleted"]
    );
    assert!(config.pods().unwrap().is_empty());
    assert!(files(&root(&tmp)).is_empty(), "{:?}", files(&root(&tmp)));
}

#[test]
fn services_get_a_stable_cluster_ip_and_a_taken_one_is_refused_with_nothing_written() {
    let (tmp, config) = dir();
    let web = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: demo}\nspec: {ports: [{port: 80}]}\n";
    assert_eq!(config.apply(web).unwrap(), ["service/demo/web created"]);
    let stored = config
        .object(Kind::Service, "demo", "web")
        .unwrap()
        .unwrap();
    let ip = stored["spec"]["clusterIP"].as_str().unwrap().to_string();
    assert!(ip.starts_with("10.96."), "{ip}");
    assert_eq!(stored["spec"]["clusterIPs"][0].as_str(), Some(ip.as_str()));
    // The same input again: the stored address is kept, nothing changes.
    assert_eq!(config.apply(web).unwrap(), ["service/demo/web unchanged"]);
    // Another Service asking for that address is refused, and the other document with it.
    let taken = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: other}}\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: api, namespace: demo}}\nspec: {{clusterIP: {ip}}}\n"
    );
    let err = config.apply(&taken).unwrap_err().to_string();
    assert!(
        err.contains(&format!(
            "service/demo/api: spec.clusterIP: {ip} is already allocated to Service demo/web"
        )),
        "{err}"
    );
    assert!(!root(&tmp).join("namespaces/other.yaml").exists());
    // Two new Services in one input get different addresses.
    let two = "apiVersion: v1\nkind: Service\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: b}\n";
    config.apply(two).unwrap();
    let ip_of = |n: &str| {
        config.object(Kind::Service, "default", n).unwrap().unwrap()["spec"]["clusterIP"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_ne!(ip_of("a"), ip_of("b"));
    assert_ne!(ip_of("a"), ip);
}

/// The P-256 public key of RFC 7517 appendix A.1, as a one-key JWKS.
const JWKS: &str = r#"{"keys":[{"kty":"EC","crv":"P-256","x":"MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4","y":"4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM"}]}"#;

#[test]
fn waypoint_audit_policies_and_request_authentications_are_applied() {
    let (_tmp, config) = dir();
    let input = format!(
        "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: audit-admin, namespace: demo}}
spec:
  targetRefs: [{{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}}]
  action: AUDIT
  rules:
  - to: [{{operation: {{paths: [/admin*]}}}}]
    when: [{{key: connection.sni, values: [x]}}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: demo}}
spec:
  targetRefs: [{{kind: Service, group: \"\", name: web}}]
  jwtRules: [{{issuer: https://idp, jwks: '{JWKS}', fromHeaders: [{{name: x-jwt}}]}}]
"
    );
    let lines = config.apply(&input).unwrap();
    assert_eq!(lines.len(), 3, "{lines:#?}");
    assert!(
        lines[0].contains("spec.rules[0].when[0].key: waypoints cannot check \"connection.sni\""),
        "{lines:#?}"
    );
    assert!(lines[1].ends_with("audit-admin created"), "{lines:#?}");
    assert_eq!(
        lines[2],
        "requestauthentication.security.istio.io/demo/jwt created"
    );

    for (spec, want) in [
        (
            "jwtRules: [{issuer: i, jwksUri: 'https://idp/keys'}]",
            "spec.jwtRules[0].jwksUri: not supported",
        ),
        (
            "jwtRules: [{issuer: i, jwks: '{}'}]",
            "spec.jwtRules[0].jwks: not a JSON Web Key Set",
        ),
        ("jwtRules: [{jwks: x}]", "spec.jwtRules[0].issuer: required"),
        ("jwtRule: []", "unknown field `jwtRule`"),
    ] {
        let doc = format!(
            "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: bad, namespace: demo}}\nspec: {{{spec}}}\n"
        );
        let err = format!("{:#}", config.apply(&doc).unwrap_err());
        assert!(err.contains(want), "{spec}: {err}");
    }
}

#[test]
fn apply_stores_routing_kinds_and_refuses_invalid_ones_naming_the_field() {
    let good = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: reviews, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews}]
  rules: [{backendRefs: [{name: reviews-v2, port: 9080, weight: 20}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: greeter, namespace: shop}
spec: {rules: [{matches: [{method: {service: helloworld.Greeter}}]}]}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings, namespace: shop}
spec: {hosts: [ratings], http: [{fault: {abort: {httpStatus: 503, percentage: {value: 10}}}}]}
---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: ratings, namespace: shop}
spec: {host: ratings, trafficPolicy: {loadBalancer: {simple: RANDOM}}}
"#;
    let (tmp, config) = dir();
    config.apply(good).expect("valid routing objects apply");
    let stored = files(&root(&tmp));
    for want in [
        "objects/httproute.gateway.networking.k8s.io/shop/reviews.yaml",
        "objects/grpcroute.gateway.networking.k8s.io/shop/greeter.yaml",
        "objects/virtualservice.networking.istio.io/shop/ratings.yaml",
        "objects/destinationrule.networking.istio.io/shop/ratings.yaml",
    ] {
        assert!(
            stored.iter().any(|f| f.ends_with(want)),
            "{want} in {stored:?}"
        );
    }

    let bad_inputs = [
        (
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec: {rules: [{matches: [{path: {type: PathPrefix, value: api}}]}]}",
            "invalid HTTPRoute: spec.rules[0].matches[0].path.value: \"api\" must start with /",
        ),
        (
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec: {rules: [{backendRefs: [{name: b}]}]}",
            "spec.rules[0].backendRefs[0].port: is required for a Service",
        ),
        (
            "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {name: g}\nspec: {rules: [{matches: [{method: {type: RegularExpression, service: \"(\"}}]}]}",
            "invalid GRPCRoute: spec.rules[0].matches[0].method.service:",
        ),
        (
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: v}\nspec: {hosts: [a], http: [{timeout: forever}]}",
            "invalid VirtualService: spec.http[0].timeout:",
        ),
        (
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: v}\nspec: {hosts: [a], http: [{retries: {attemps: 3}}]}",
            "unknown field `attemps`",
        ),
        (
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: d}\nspec: {host: a, trafficPolicy: {outlierDetection: {maxEjectionPercent: 101}}}",
            "invalid DestinationRule: spec.trafficPolicy.outlierDetection.maxEjectionPercent: 101",
        ),
    ];
    for (bad, expected) in bad_inputs {
        let (tmp, config) = dir();
        let err = format!("{:#}", config.apply(bad).unwrap_err());
        assert!(err.contains(expected), "{bad}: {err}");
        assert!(files(&root(&tmp)).is_empty(), "{bad}: something written");
    }
}
