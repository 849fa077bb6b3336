//! `meshctl demo --waypoint`: L7 through a waypoint, narrated. Two versions of a service, a
//! waypoint for their namespace, an HTTPRoute that splits 80/20 and an AuthorizationPolicy that
//! denies `/admin` — Istio's and Gateway API's YAML, unchanged — then the split counted over 100
//! requests, the 403, and the waypoint's `istio_requests_total` series.

use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context as _};

use super::{heading, say, show, Demo, SETTLE};

/// The namespace of this scenario.
const NS: &str = "shop";

/// The two versions' Services, the shared one, and what the waypoint applies.
const YAML: &str = r#"apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: web-v1, namespace: shop}
spec:
  selector: {app: web, version: v1}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: web-v2, namespace: shop}
spec:
  selector: {app: web, version: v2}
  ports: [{name: http, port: 80, targetPort: 8080}]
"#;

const L7: &str = r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules:
  - backendRefs: [{name: web-v1, port: 80, weight: 80}, {name: web-v2, port: 80, weight: 20}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: shop}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin*"]}}]}]
"#;

/// The scenario.
pub(super) fn story(demo: &Demo) -> anyhow::Result<()> {
    heading("1. A two-node cluster on this machine: istiod-lite, and per node a ztunnel and the CNI agent");
    demo.meshctl(&["cluster", "up", "--nodes", "2", "--name", &demo.name])?;

    heading("2. Two versions of `web` and a client in namespace `shop`, in the mesh");
    let exe = demo.exe.display().to_string();
    for v in ["v1", "v2"] {
        let name = format!("web-{v}");
        let labels = format!("app=web,version={v}");
        demo.meshctl(&[
            "pod",
            "run",
            &name,
            "-n",
            NS,
            "--sa",
            "web",
            "--node",
            "n2",
            "--labels",
            &labels,
            "--",
            &exe,
            "http-echo",
            "--port",
            "8080",
            "--name",
            &name,
        ])?;
    }
    demo.meshctl(&[
        "pod", "run", "client", "-n", NS, "--sa", "client", "--node", "n1", "--", "sleep",
        "infinity",
    ])?;
    // The YAML a person would `meshctl apply -f`, in files that go when the demo ends.
    let files = tempfile::tempdir().context("creating a directory for the demo's YAML")?;
    let services = file(files.path(), "services.yaml", YAML)?;
    demo.meshctl(&["apply", "-f", &services])?;
    demo.meshctl(&["label", "ns", NS, "istio.io/dataplane-mode=ambient"])?;

    heading("3. A waypoint for `shop`: a Gateway of class istio-waypoint, deployed as its own pod");
    demo.meshctl(&[
        "waypoint",
        "apply",
        "-n",
        NS,
        "--enroll-namespace",
        "--wait",
    ])?;
    demo.meshctl(&["waypoint", "list", "-n", NS])?;

    heading("4. Istio's YAML: an 80/20 canary and a DENY on /admin, enforced by the waypoint");
    show(L7);
    let l7 = file(files.path(), "l7.yaml", L7)?;
    demo.meshctl(&["apply", "-f", &l7])?;
    let vip = cluster_ip(demo, "web")?;
    // Until the client is captured and the waypoint has the route and the policy (two xDS
    // types, which may arrive in either order), the demo's numbers would not be the route's.
    let deadline = Instant::now() + SETTLE;
    let admin = format!("http://{vip}/admin");
    let routed = || {
        waypoint_get(demo, 15000, "/config_dump")
            .ok()
            .and_then(|dump| serde_json::from_str::<serde_json::Value>(&dump).ok())
            .is_some_and(|dump| dump["routes"].to_string().contains("web-v2"))
    };
    while !(routed() && matches!(curl(demo, &[&admin]).as_deref(), Ok([(403, _)]))) {
        if Instant::now() > deadline {
            bail!("the waypoint did not apply the policy within {SETTLE:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }

    heading("5. (a) 100 requests to the web Service: the waypoint splits them by weight");
    let urls: Vec<String> = (0..100).map(|i| format!("http://{vip}/r{i}")).collect();
    let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
    say(&format!(
        "$ meshctl pod exec client -n {NS} -- curl -s http://{vip}/r0 ... http://{vip}/r99"
    ));
    let answers = curl(demo, &urls)?;
    let v1 = answers.iter().filter(|a| a.1.contains("web-v1")).count();
    let v2 = answers.iter().filter(|a| a.1.contains("web-v2")).count();
    say(&format!(
        "  web-v1 answered {v1}, web-v2 answered {v2} (weights 80/20)"
    ));

    heading("5. (b) /admin is denied by the waypoint, / is not");
    for path in ["/admin", "/"] {
        say(&format!(
            "$ meshctl pod exec client -n {NS} -- curl -s http://{vip}{path}"
        ));
        let (status, body) = curl(demo, &[&format!("http://{vip}{path}")])?.remove(0);
        say(&format!(
            "  HTTP {status}: {}",
            body.lines().next().unwrap_or("")
        ));
    }

    heading("5. (c) The waypoint's L7 metrics (its :15020/metrics)");
    let metrics = waypoint_get(demo, 15020, "/metrics")?;
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("istio_requests_total{"))
    {
        say(&format!("  {}", short(line)));
    }
    Ok(())
}

/// Writes `text` to `dir/name` and returns the path.
fn file(dir: &std::path::Path, name: &str, text: &str) -> anyhow::Result<String> {
    let path = dir.join(name);
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path.display().to_string())
}

/// The cluster IP the local cluster gave Service `shop/name`.
fn cluster_ip(demo: &Demo, name: &str) -> anyhow::Result<String> {
    let path = demo
        .state_dir
        .join(format!("config/objects/service/{NS}/{name}.yaml"));
    let yaml = std::fs::read_to_string(&path)
        .with_context(|| format!("reading Service {NS}/{name} at {}", path.display()))?;
    yaml.lines()
        .find_map(|l| l.trim().strip_prefix("clusterIP:"))
        .map(|v| v.trim().trim_matches('"').to_string())
        .with_context(|| format!("Service {NS}/{name} has no cluster IP"))
}

/// One curl in the client pod over `urls`: each answer's status and body.
fn curl(demo: &Demo, urls: &[&str]) -> anyhow::Result<Vec<(u16, String)>> {
    let mut args = vec!["pod", "exec", "client", "-n", NS, "--", "curl", "-sS"];
    args.extend(["--max-time", "5", "-w", "\n@@ %{http_code}\n"]);
    args.extend_from_slice(urls);
    let out = demo.meshctl_quiet(&args)?;
    let mut answers = Vec::new();
    let mut body = String::new();
    for line in out.lines() {
        match line.strip_prefix("@@ ") {
            Some(code) => {
                answers.push((code.trim().parse().unwrap_or(0), std::mem::take(&mut body)))
            }
            None => {
                body.push_str(line);
                body.push('\n');
            }
        }
    }
    if answers.len() != urls.len() {
        bail!(
            "curl answered {} of {} requests:\n{out}",
            answers.len(),
            urls.len()
        );
    }
    Ok(answers)
}

/// `path` on the waypoint pod's `port` (15000 admin, 15020 metrics), read inside its network
/// namespace.
fn waypoint_get(demo: &Demo, port: u16, path: &str) -> anyhow::Result<String> {
    let list: serde_json::Value =
        serde_json::from_str(&demo.meshctl_quiet(&["waypoint", "list", "-n", NS, "-o", "json"])?)
            .context("reading `waypoint list -o json`")?;
    let pod = list[0]["pod"].as_str().context("the waypoint has no pod")?;
    let netns = format!("{}-{NS}-{pod}", demo.name);
    let out = Command::new("ip")
        .args(["netns", "exec", &netns, "curl", "-sS", "--max-time", "5"])
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .output()
        .with_context(|| format!("reading the waypoint's {path}"))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A metric line with only the labels worth reading here.
fn short(line: &str) -> String {
    let Some((labels, value)) = line.rsplit_once(' ') else {
        return line.to_string();
    };
    let keep = [
        "reporter=",
        "source_principal=",
        "destination_service_name=",
        "response_code=",
        "response_flags=",
    ];
    let inner = labels
        .trim_start_matches("istio_requests_total{")
        .trim_end_matches('}');
    let kept: Vec<&str> = inner
        .split(',')
        .filter(|l| keep.iter().any(|k| l.starts_with(k)))
        .collect();
    format!("istio_requests_total{{{}}} {value}", kept.join(","))
}
