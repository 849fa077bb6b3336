//! The waypoint on the local cluster, end to end: a real waypoint pod deployed by `meshctl
//! waypoint apply`, real ztunnels, the real CNI chain. Traffic to a waypoint-bound service goes
//! through the waypoint (and is counted there), the pod cannot be reached around it, L4 policy
//! at the destination still sees the original client, raw TCP passes, and a namespace without
//! a waypoint is untouched. Needs root; fails loudly without it.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::print_stderr)]

#[path = "common/cluster.rs"]
mod local_cluster;

use std::process::Command;

use local_cluster::{Cluster, WAIT};

const WEB: &str = "\
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
spec:
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: 8080}
---
apiVersion: v1
kind: Service
metadata:
  name: raw
  namespace: shop
spec:
  selector: {app: raw}
  ports:
  - {name: tcp, port: 9000, targetPort: 9000}
";

const ONLY_THE_CLIENT: &str = "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: only-the-client
  namespace: shop
spec:
  selector:
    matchLabels: {app: web}
  action: ALLOW
  rules:
  - from:
    - source:
        principals: [\"cluster.local/ns/shop/sa/client\"]
";

const NO_ADMIN: &str = "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: no-admin
  namespace: shop
spec:
  targetRefs:
  - {kind: Service, group: \"\", name: web}
  action: DENY
  rules:
  - to:
    - operation:
        paths: [\"/admin*\"]
";

/// The cluster IP the local cluster gave Service `ns/name`.
fn cluster_ip(c: &Cluster, ns: &str, name: &str) -> String {
    let path = c
        .state_dir()
        .join(format!("config/objects/service/{ns}/{name}.yaml"));
    let yaml = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    yaml.lines()
        .find_map(|l| l.trim().strip_prefix("clusterIP:"))
        .map(|v| v.trim().trim_matches('"').to_string())
        .unwrap_or_else(|| panic!("no clusterIP in {yaml}"))
}

/// `meshctl pod exec` of `cmd` in `ns/pod`: (success, stdout + stderr).
fn exec(c: &Cluster, ns: &str, pod: &str, cmd: &[&str]) -> (bool, String) {
    let mut args = vec!["pod", "exec", pod, "-n", ns, "--"];
    args.extend_from_slice(cmd);
    let out = c.run(&args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The waypoint pod's metrics, read inside its own network namespace.
fn waypoint_metrics(c: &Cluster, pod: &str) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", &c.pod_netns("shop", pod)])
        .args([
            "curl",
            "-sS",
            "--max-time",
            "5",
            "http://127.0.0.1:15020/metrics",
        ])
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Sums the samples of `name` whose labels contain every needle.
fn metric(text: &str, name: &str, needles: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && needles.iter().all(|n| l.contains(n)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `meshctl authz check` through the waypoint: the L7 verdict (and deciding policy) at the
/// waypoint, then the L4 one at each endpoint's ztunnel with the waypoint as the way in; and a
/// direct dial of the pod refused as a bypass.
fn authz_check_names_both_halves(c: &Cluster) {
    let check = |extra: &[&str]| {
        let mut args = vec!["authz", "check", "--from", "shop/client"];
        args.extend_from_slice(extra);
        let out = c.run(&args);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (
            out.status.code(),
            text,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = check(&["--to", "svc/shop/web:80", "--path", "/admin/users"]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        out.contains(
            "DENIED at waypoint shop/waypoint: GET web.shop.svc.cluster.local/admin/users"
        ) && out.contains("decided by: DENY policy shop/no-admin, rule 0"),
        "{out}"
    );
    let (code, out, err) = check(&["--to", "svc/shop/web:80", "-H", "x-trace: 1"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("ALLOWED at waypoint shop/waypoint: GET web.shop.svc.cluster.local/")
            && out.contains(
                "through waypoint shop/waypoint (spiffe://cluster.local/ns/shop/sa/waypoint)"
            )
            && out.contains("decided by: ALLOW policy shop/only-the-client, rule 0"),
        "{out}"
    );
    let (code, out, err) = check(&["--to", "shop/web:8080"]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        out.contains("refused before policy: shop/web is behind waypoint shop/waypoint"),
        "{out}"
    );
}

#[test]
fn a_waypoint_carries_its_services_traffic_and_cannot_be_bypassed() {
    let mut c = Cluster::new();
    c.up(&[]);
    let meshctl = c.meshctl.display().to_string();
    let tcp_tool = e2e::Topology::tcp_tool().expect("e2e-tcp");
    let tcp_tool = tcp_tool.display().to_string();
    let web_ip = c.pod_run(
        "web",
        "shop",
        "n2",
        &["--sa", "web", "--labels", "app=web"],
        &[&meshctl, "http-echo", "--port", "8080", "--name", "web"],
    );
    c.pod_run(
        "raw",
        "shop",
        "n2",
        &["--sa", "raw", "--labels", "app=raw"],
        &[&tcp_tool, "echo", "9000"],
    );
    c.pod_run(
        "client",
        "shop",
        "n1",
        &["--sa", "client"],
        &["sleep", "infinity"],
    );
    // A namespace with no waypoint, beside it.
    let other_ip = c.pod_run(
        "web",
        "other",
        "n2",
        &["--sa", "web"],
        &[
            &meshctl,
            "http-echo",
            "--port",
            "8080",
            "--name",
            "other-web",
        ],
    );
    c.pod_run(
        "client",
        "other",
        "n1",
        &["--sa", "client"],
        &["sleep", "infinity"],
    );
    let web_yaml = c.scratch.path().join("web.yaml");
    std::fs::write(&web_yaml, WEB).expect("write");
    c.ok(&["apply", "-f", web_yaml.to_str().unwrap()]);
    for ns in ["shop", "other"] {
        c.ok(&["label", "ns", ns, "istio.io/dataplane-mode=ambient"]);
    }
    c.wait_captured("client", "shop", true);
    c.wait_captured("web", "shop", true);
    c.wait_captured("client", "other", true);
    c.ok(&[
        "waypoint",
        "apply",
        "-n",
        "shop",
        "--enroll-namespace",
        "--wait",
    ]);
    let list: serde_json::Value =
        serde_json::from_str(&c.ok(&["waypoint", "list", "-n", "shop", "-o", "json"]))
            .expect("json");
    let wp_pod = list[0]["pod"].as_str().expect("waypoint pod").to_string();
    assert_eq!(list[0]["ready"], true, "{list}");

    // Through the waypoint: every request to the service VIP is counted there.
    let vip = cluster_ip(&c, "shop", "web");
    let url = format!("http://{vip}/");
    e2e::retry_until("a request through the waypoint", WAIT, || {
        let (ok, out) = exec(
            &c,
            "shop",
            "client",
            &["curl", "-sS", "--max-time", "5", &url],
        );
        anyhow::ensure!(ok && out.contains("hello from web"), "{out}");
        let m = waypoint_metrics(&c, &wp_pod);
        anyhow::ensure!(
            metric(&m, "istio_requests_total", &["reporter=\"waypoint\""]) >= 1.0,
            "not counted at the waypoint yet"
        );
        Ok(())
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", c.logs()));
    let before = metric(
        &waypoint_metrics(&c, &wp_pod),
        "istio_requests_total",
        &["reporter=\"waypoint\"", "response_code=\"200\""],
    );
    for i in 0..10 {
        let (ok, out) = exec(
            &c,
            "shop",
            "client",
            &["curl", "-sS", "--max-time", "5", &url],
        );
        assert!(
            ok && out.contains("hello from web"),
            "request {i}: {out}\n{}",
            c.logs()
        );
    }
    e2e::wait_until("ten more requests counted at the waypoint", WAIT, || {
        let m = waypoint_metrics(&c, &wp_pod);
        metric(
            &m,
            "istio_requests_total",
            &[
                "reporter=\"waypoint\"",
                "response_code=\"200\"",
                "source_principal=\"spiffe://cluster.local/ns/shop/sa/client\"",
            ],
        ) == before + 10.0
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", waypoint_metrics(&c, &wp_pod)));

    // HTTP/1.1 keep-alive: the second request rides the first one's connection
    // (`num_connects` 0).
    let (ok, out) = exec(
        &c,
        "shop",
        "client",
        &[
            "curl",
            "-sS",
            "--max-time",
            "5",
            "--http1.1",
            "-o",
            "/dev/null",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{num_connects}\\n",
            &url,
            &url,
        ],
    );
    assert!(
        ok && out.lines().eq(["200 1", "200 0"]),
        "keep-alive: {out}\n{}",
        c.logs()
    );
    // HTTP/2 (prior knowledge): three requests multiplexed on one connection (nghttp; curl
    // 7.88 cannot reuse a prior-knowledge connection).
    let paths: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|p| format!("{url}{p}"))
        .collect();
    let mut args = vec!["nghttp", "-ns"];
    args.extend(paths.iter().map(String::as_str));
    let (ok, out) = exec(&c, "shop", "client", &args);
    let answered = out.lines().filter(|l| l.contains(" 200 ")).count();
    assert!(
        ok && answered == 3,
        "HTTP/2 multiplexing: {out}\n{}",
        c.logs()
    );

    // Around the waypoint: straight to the pod IP is refused by the destination's ztunnel.
    let direct = format!("http://{web_ip}:8080/");
    let (ok, out) = exec(
        &c,
        "shop",
        "client",
        &["curl", "-sS", "--max-time", "5", &direct],
    );
    assert!(!ok, "the pod was reached around its waypoint: {out}");
    e2e::wait_until("the bypass is logged", WAIT, || {
        c.log("ztunnel", "n2")
            .contains("bypasses the destination's waypoint refused")
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", c.logs()));

    // L4 policy at the destination still sees the original client behind the waypoint.
    let policy = c.scratch.path().join("policy.yaml");
    std::fs::write(&policy, ONLY_THE_CLIENT).expect("write");
    c.ok(&["apply", "-f", policy.to_str().unwrap()]);
    std::thread::sleep(std::time::Duration::from_secs(1));
    let (ok, out) = exec(
        &c,
        "shop",
        "client",
        &["curl", "-sS", "--max-time", "5", &url],
    );
    assert!(
        ok && out.contains("hello from web"),
        "an ALLOW for the client must pass behind the waypoint: {out}\n{}",
        c.logs()
    );
    let ztunnel_n2 = c.log("ztunnel", "n2");
    assert!(
        ztunnel_n2.lines().any(|l| l.contains("connection complete")
            && l.contains("src.identity=spiffe://cluster.local/ns/shop/sa/client")
            && l.contains("via.waypoint=spiffe://cluster.local/ns/shop/sa/waypoint")),
        "the destination's access log names the client and the waypoint:\n{ztunnel_n2}"
    );

    // An L7 policy at the waypoint: the request is refused there, and `meshctl authz check`
    // says so and names the policy, as it names the L4 one at the destination.
    let no_admin = c.scratch.path().join("no-admin.yaml");
    std::fs::write(&no_admin, NO_ADMIN).expect("write");
    c.ok(&["apply", "-f", no_admin.to_str().unwrap()]);
    let admin = format!("{url}admin/users");
    e2e::retry_until("the waypoint refuses /admin with 403", WAIT, || {
        let (_, out) = exec(
            &c,
            "shop",
            "client",
            &[
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                &admin,
            ],
        );
        anyhow::ensure!(out.trim() == "403", "{out}");
        Ok(())
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", c.logs()));
    authz_check_names_both_halves(&c);

    // Raw TCP to a waypoint-bound service passes through the waypoint byte for byte.
    let raw_vip = cluster_ip(&c, "shop", "raw");
    let (ok, out) = exec(
        &c,
        "shop",
        "client",
        &[
            &tcp_tool,
            "send",
            &format!("{raw_vip}:9000"),
            "raw-bytes-42",
        ],
    );
    assert!(ok && out.contains("raw-bytes-42"), "{out}\n{}", c.logs());
    e2e::wait_until("the TCP connection counted at the waypoint", WAIT, || {
        metric(
            &waypoint_metrics(&c, &wp_pod),
            "istio_tcp_connections_opened_total",
            &[],
        ) >= 1.0
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", waypoint_metrics(&c, &wp_pod)));

    // A namespace without a waypoint: straight to its pod, nothing at the waypoint.
    let counted = metric(&waypoint_metrics(&c, &wp_pod), "istio_requests_total", &[]);
    let (ok, out) = exec(
        &c,
        "other",
        "client",
        &[
            "curl",
            "-sS",
            "--max-time",
            "5",
            &format!("http://{other_ip}:8080/"),
        ],
    );
    assert!(
        ok && out.contains("hello from other-web"),
        "{out}\n{}",
        c.logs()
    );
    assert_eq!(
        metric(&waypoint_metrics(&c, &wp_pod), "istio_requests_total", &[]),
        counted
    );

    c.down_and_check();
}
