//! L7 features of the waypoint on the local cluster, from Istio users' YAML unchanged: a canary
//! split and a header match (HTTPRoute), a gRPC method and header match (GRPCRoute, a tonic
//! client and server), a route timeout, retries and fault injection
//! (VirtualService), L7 AuthorizationPolicy on paths and methods, a JWT-guarded path
//! (RequestAuthentication), and none of it lost when the waypoint pod is replaced. Needs root;
//! fails loudly without it.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::print_stderr)]

#[path = "common/cluster.rs"]
mod local_cluster;

use std::time::{Duration, Instant};

use e2e::Topology;
use local_cluster::{Cluster, WAIT};
use mesh::testing::JwtIssuer;

const ISSUER: &str = "https://idp.shop.example";

/// Services (ports named `http`: the waypoint speaks HTTP/1.1 to the backends).
fn services() -> String {
    let svc = |name: &str, selector: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: shop}}\n\
             spec:\n  selector: {{{selector}}}\n  ports: [{{name: http, port: 80, targetPort: 8080}}]\n---\n"
        )
    };
    [
        svc("web", "app: web"),
        svc("web-v1", "app: web, version: v1"),
        svc("web-v2", "app: web, version: v2"),
        svc("web-fault", "app: web, version: v1"),
        svc("web-ro", "app: web, version: v1"),
        svc("slow", "app: slow"),
        svc("flaky", "app: flaky"),
    ]
    .concat()
}

const GRPC: &str = r#"apiVersion: v1
kind: Service
metadata: {name: grpc, namespace: shop}
spec:
  selector: {app: grpc}
  ports: [{name: grpc, port: 9090, targetPort: 9090}]
---
apiVersion: v1
kind: Service
metadata: {name: grpc-v1, namespace: shop}
spec:
  selector: {app: grpc, version: v1}
  ports: [{name: grpc, port: 9090, targetPort: 9090}]
---
apiVersion: v1
kind: Service
metadata: {name: grpc-v2, namespace: shop}
spec:
  selector: {app: grpc, version: v2}
  ports: [{name: grpc, port: 9090, targetPort: 9090}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: grpc, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: grpc, port: 9090}]
  rules:
  - matches:
    - method: {service: istio.v1.auth.IstioCertificateService, method: CreateCertificate}
      headers: [{name: x-version, value: v2}]
    backendRefs: [{name: grpc-v2, port: 9090}]
  - backendRefs: [{name: grpc-v1, port: 9090}]
"#;

const ROUTES: &str = r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules:
  - matches: [{headers: [{name: x-canary, value: "yes"}]}]
    backendRefs: [{name: web-v2, port: 80}]
  - backendRefs: [{name: web-v1, port: 80, weight: 80}, {name: web-v2, port: 80, weight: 20}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: slow, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: slow, port: 80}]
  rules:
  - timeouts: {request: 500ms}
    backendRefs: [{name: slow, port: 80}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: flaky, namespace: shop}
spec:
  hosts: [flaky]
  http:
  - retries: {attempts: 2, retryOn: 5xx}
    route: [{destination: {host: flaky}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web-fault, namespace: shop}
spec:
  hosts: [web-fault]
  http:
  - match: [{uri: {prefix: /delay}}]
    fault: {delay: {fixedDelay: 1s, percentage: {value: 100}}}
    route: [{destination: {host: web-fault}}]
  - match: [{uri: {prefix: /abort}}]
    fault: {abort: {httpStatus: 418, percentage: {value: 100}}}
    route: [{destination: {host: web-fault}}]
  - route: [{destination: {host: web-fault}}]
"#;

fn policies(jwks: &str) -> String {
    format!(
        r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: no-admin, namespace: shop}}
spec:
  targetRefs: [{{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}}]
  action: DENY
  rules: [{{to: [{{operation: {{paths: ["/admin*"]}}}}]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: read-only, namespace: shop}}
spec:
  targetRefs: [{{kind: Service, group: "", name: web-ro}}]
  action: ALLOW
  rules: [{{to: [{{operation: {{methods: [GET]}}}}]}}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: shop}}
spec:
  targetRefs: [{{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}}]
  jwtRules: [{{issuer: "{ISSUER}", jwks: '{jwks}'}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: private-needs-jwt, namespace: shop}}
spec:
  targetRefs: [{{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}}]
  action: DENY
  rules:
  - from: [{{source: {{notRequestPrincipals: ["*"]}}}}]
    to: [{{operation: {{paths: ["/private*"]}}}}]
"#
    )
}

/// One `curl` in the client pod: for each URL, `<status> <seconds>` and the body's first line.
fn curl(c: &Cluster, extra: &[&str], urls: &[String]) -> Vec<(u16, f64, String)> {
    let mut args = vec!["pod", "exec", "client", "-n", "shop", "--", "curl", "-sS"];
    args.extend_from_slice(&[
        "--max-time",
        "10",
        "-w",
        "\n@@ %{http_code} %{time_total}\n",
    ]);
    args.extend_from_slice(extra);
    args.extend(urls.iter().map(String::as_str));
    let out = c.run(&args);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut results = Vec::new();
    let mut first_line = String::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("@@ ") {
            let mut parts = rest.split(' ');
            let status = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
            let secs = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0.0);
            results.push((status, secs, std::mem::take(&mut first_line)));
        } else if first_line.is_empty() && !line.is_empty() {
            first_line = line.to_string();
        }
    }
    assert_eq!(
        results.len(),
        urls.len(),
        "curl {extra:?}: {text}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        c.logs()
    );
    results
}

fn vip(c: &Cluster, name: &str) -> String {
    let path = c
        .state_dir()
        .join(format!("config/objects/service/shop/{name}.yaml"));
    let yaml = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    yaml.lines()
        .find_map(|l| l.trim().strip_prefix("clusterIP:"))
        .map(|v| v.trim().trim_matches('"').to_string())
        .expect("clusterIP")
}

fn apply(c: &Cluster, name: &str, yaml: &str) {
    let file = c.scratch.path().join(name);
    std::fs::write(&file, yaml).expect("write");
    c.ok(&["apply", "-f", file.to_str().unwrap()]);
}

/// Waits until the waypoint holds the routes of every service the test routes, and its policy
/// denies /admin.
fn wait_for_config(c: &Cluster) {
    e2e::retry_until("routes and policies at the waypoint", WAIT, || {
        let list: serde_json::Value =
            serde_json::from_str(&c.ok(&["waypoint", "list", "-n", "shop", "-o", "json"]))?;
        let pod = list[0]["pod"].as_str().unwrap_or_default().to_string();
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &c.pod_netns("shop", &pod)])
            .args(["curl", "-sS", "--max-time", "5"])
            .arg("http://127.0.0.1:15000/config_dump")
            .output()?;
        let dump: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let routes = dump["routes"].to_string();
        for svc in ["web", "slow", "flaky", "web-fault", "grpc"] {
            let key = format!("\"shop/{svc}.shop.svc.cluster.local\"");
            anyhow::ensure!(routes.contains(&key), "no routes for {svc} yet: {routes}");
        }
        let url = format!("http://{}/admin", vip(c, "web-v1"));
        let r = curl(c, &[], &[url]);
        anyhow::ensure!(r[0].0 == 403, "{r:?}");
        Ok(())
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", c.logs()));
}

/// The L7 checks, run once with the first waypoint pod and again with its replacement.
fn check_l7(c: &Cluster, idp: &JwtIssuer, canary: bool) {
    let url = |svc: &str, path: &str| format!("http://{}{path}", vip(c, svc));

    if canary {
        // Canary 80/20 over 1000 requests lands within ±5%.
        let urls: Vec<String> = (0..1000).map(|i| url("web", &format!("/c{i}"))).collect();
        let results = curl(c, &[], &urls);
        assert!(results.iter().all(|r| r.0 == 200), "{:?}", &results[..5]);
        let v2 = results.iter().filter(|r| r.2.contains("web-v2")).count();
        let v1 = results.iter().filter(|r| r.2.contains("web-v1")).count();
        assert_eq!(v1 + v2, 1000);
        assert!(
            (150..=250).contains(&v2),
            "v2 got {v2} of 1000, want 200 ± 50"
        );
    }
    // A header match goes to v2, every time.
    let urls: Vec<String> = (0..20).map(|i| url("web", &format!("/h{i}"))).collect();
    let results = curl(c, &["-H", "x-canary: yes"], &urls);
    assert!(
        results.iter().all(|r| r.0 == 200 && r.2.contains("web-v2")),
        "{results:?}"
    );

    // L7 policy: /admin is denied with 403 while / passes.
    let r = curl(c, &[], &[url("web-v1", "/admin/x"), url("web-v1", "/")]);
    assert_eq!((r[0].0, r[0].2.as_str()), (403, "RBAC: access denied"));
    assert_eq!(r[1].0, 200);
    // A method-based ALLOW on one service: GET passes, POST is refused.
    assert_eq!(curl(c, &[], &[url("web-ro", "/")])[0].0, 200);
    assert_eq!(curl(c, &["-X", "POST"], &[url("web-ro", "/")])[0].0, 403);

    // A JWT-guarded path: 403 without a token, 401 with a bad one, 200 with a good one.
    assert_eq!(curl(c, &[], &[url("web-v1", "/private")])[0].0, 403);
    let expired = idp.token("alice", Duration::ZERO, serde_json::json!({"exp": 1}));
    let bad = format!("authorization: Bearer {expired}");
    assert_eq!(
        curl(c, &["-H", &bad], &[url("web-v1", "/private")])[0].0,
        401
    );
    let good = idp.token("alice", Duration::from_secs(600), serde_json::json!({}));
    let good = format!("authorization: Bearer {good}");
    assert_eq!(
        curl(c, &["-H", &good], &[url("web-v1", "/private")])[0].0,
        200
    );

    // A gRPC unary call routed by GRPCRoute: the method and a header pick v2, else v1.
    let grpc = Topology::binary("e2e-grpc").expect("e2e-grpc");
    let grpc = grpc.to_str().unwrap();
    let target = format!("{}:9090", vip(c, "grpc"));
    for (metadata, want) in [
        (Some("x-version=v2"), "answer=grpc-v2"),
        (None, "answer=grpc-v1"),
    ] {
        for _ in 0..3 {
            let mut args = vec![
                "pod", "exec", "client", "-n", "shop", "--", grpc, "call", &target,
            ];
            args.extend(metadata);
            let out = c.ok(&args);
            assert_eq!(out.trim(), want, "{metadata:?}\n{}", c.logs());
        }
    }

    // A backend failing every other request succeeds through a retry.
    let urls: Vec<String> = (0..10).map(|i| url("flaky", &format!("/r{i}"))).collect();
    let results = curl(c, &[], &urls);
    assert!(results.iter().all(|r| r.0 == 200), "{results:?}");

    // Fault injection: a 1 s delay is observed, an abort returns its code.
    let r = curl(
        c,
        &[],
        &[url("web-fault", "/delay"), url("web-fault", "/abort")],
    );
    assert_eq!(r[0].0, 200);
    assert!(r[0].1 >= 1.0, "the injected delay was {} s", r[0].1);
    assert_eq!(r[1].0, 418);

    // A route timeout: the slow backend answers after 2 s, the route gives up at 0.5 s.
    let started = Instant::now();
    let r = curl(c, &[], &[url("slow", "/")]);
    assert_eq!(r[0].0, 504, "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[test]
fn routing_policy_and_faults_from_istio_yaml_and_they_survive_a_waypoint_restart() {
    let mut c = Cluster::new();
    c.up(&[]);
    let meshctl = c.meshctl.display().to_string();
    let echo = |name: &str, extra: &[&str]| {
        let mut cmd = vec![
            meshctl.clone(),
            "http-echo".into(),
            "--name".into(),
            name.into(),
        ];
        cmd.extend(extra.iter().map(|s| s.to_string()));
        cmd
    };
    let run = |name: &str, labels: &str, cmd: Vec<String>| {
        let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
        c.pod_run(
            name,
            "shop",
            "n2",
            &["--sa", name, "--labels", labels],
            &cmd,
        );
    };
    run("web-v1", "app=web,version=v1", echo("web-v1", &[]));
    run("web-v2", "app=web,version=v2", echo("web-v2", &[]));
    run("slow", "app=slow", echo("slow", &["--delay-ms", "2000"]));
    run("flaky", "app=flaky", echo("flaky", &["--fail-every", "2"]));
    let grpc = Topology::binary("e2e-grpc").expect("e2e-grpc");
    for v in ["v1", "v2"] {
        let name = format!("grpc-{v}");
        let cmd = vec![
            grpc.display().to_string(),
            "serve".into(),
            "9090".into(),
            name.clone(),
        ];
        run(&name, &format!("app=grpc,version={v}"), cmd);
    }
    c.pod_run(
        "client",
        "shop",
        "n1",
        &["--sa", "client"],
        &["sleep", "infinity"],
    );
    apply(&c, "services.yaml", &services());
    c.ok(&["label", "ns", "shop", "istio.io/dataplane-mode=ambient"]);
    apply(&c, "grpc.yaml", GRPC);
    for pod in [
        "client", "web-v1", "web-v2", "slow", "flaky", "grpc-v1", "grpc-v2",
    ] {
        c.wait_captured(pod, "shop", true);
    }
    c.ok(&[
        "waypoint",
        "apply",
        "-n",
        "shop",
        "--enroll-namespace",
        "--wait",
    ]);
    let idp = JwtIssuer::new(ISSUER);
    apply(&c, "routes.yaml", ROUTES);
    apply(&c, "policies.yaml", &policies(&idp.jwks()));

    // Wait until the config reached the waypoint: every route (routes and policies are
    // separate xDS types and may arrive in either order) and the policies.
    wait_for_config(&c);
    check_l7(&c, &idp, true);

    // Replace the waypoint pod: the new one gets the same config from istiod-lite.
    let list: serde_json::Value =
        serde_json::from_str(&c.ok(&["waypoint", "list", "-n", "shop", "-o", "json"]))
            .expect("json");
    let old = list[0]["pod"].as_str().expect("pod").to_string();
    c.ok(&["pod", "delete", &old, "-n", "shop"]);
    c.ok(&["waypoint", "apply", "-n", "shop", "--wait"]);
    let list: serde_json::Value =
        serde_json::from_str(&c.ok(&["waypoint", "list", "-n", "shop", "-o", "json"]))
            .expect("json");
    assert_ne!(list[0]["pod"].as_str(), Some(old.as_str()), "{list}");
    wait_for_config(&c);
    check_l7(&c, &idp, false);

    c.down_and_check();
}
