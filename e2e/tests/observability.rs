//! The shipped dashboards and alerts, proven on a real Prometheus: `meshctl cluster up
//! --prometheus` (Debian's `prometheus` with manifests/prometheus/, scraping every second),
//! traffic at L4 and through a waypoint (including connections a policy denies), then every
//! query of every panel of every dashboard in manifests/dashboards/ (template variables
//! expanded, `$__rate_interval` as 1m) and every recording rule is evaluated through
//! Prometheus' HTTP API and must return data: the failure lists each one that returns nothing.
//! Then a ztunnel is stopped: ZtunnelDown fires, and clears once it is started again.
//! Needs root and the `prometheus` binary; fails loudly without either, never skips.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::print_stderr)]

#[path = "common/cluster.rs"]
mod local_cluster;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use serde_json::Value;

use local_cluster::{Cluster, WAIT};

const APPS: &str = "\
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
  name: echo
  namespace: plain
spec:
  selector: {app: echo}
  ports:
  - {name: tcp, port: 9000, targetPort: 9000}
---
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

/// The template variables' values the panels are evaluated with: ones the traffic below
/// creates (web runs on n2, behind shop's waypoint). "All" (`.*`) is evaluated too.
const VARIABLES: [(&str, &str); 3] = [("node", "n2"), ("namespace", "shop"), ("workload", "web")];
/// `$__rate_interval` as Grafana would set it for a 1 s scrape interval and a short range.
const RATE_INTERVAL: &str = "1m";
/// How long the panels may take to all have data once the traffic is done.
const DATA_WAIT: Duration = Duration::from_secs(15);
/// ZtunnelDown's `for:` is 30 s; with 1 s scrapes and evaluations it fires ~31 s after the stop.
const FIRE_WAIT: Duration = Duration::from_secs(50);

#[test]
fn every_dashboard_panel_has_data_on_a_real_prometheus_and_ztunnel_down_fires_and_clears() {
    let mut c = Cluster::new();
    c.up(&[
        "--prometheus",
        "--prometheus-port",
        "0",
        "--prometheus-interval",
        "1s",
    ]);
    let prom = Prometheus::new(&c);
    traffic(&c);

    // Every target is scraped: the three from the cluster plus the waypoint from its pod record.
    e2e::retry_until("every target up, the waypoint's too", WAIT, || {
        let active = prom.get("/api/v1/targets", &[("state", "active")])?;
        let targets = active["activeTargets"].as_array().context("no targets")?;
        let summary: Vec<String> = targets
            .iter()
            .map(|t| format!("{} {} {}", t["labels"]["job"], t["scrapeUrl"], t["health"]))
            .collect();
        ensure!(
            targets.len() >= 4
                && targets.iter().any(|t| t["labels"]["job"] == "waypoint")
                && targets.iter().all(|t| t["health"] == "up"),
            "{summary:#?}"
        );
        Ok(())
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", c.logs()));

    // Every panel's every query, and every recording rule, until all have data or DATA_WAIT.
    let queries = dashboard_queries();
    let records = recording_rules();
    let start = Instant::now();
    let empty = loop {
        let mut empty: Vec<String> = Vec::new();
        for (where_, expr) in &queries {
            for (label, values) in [("variables set", &VARIABLES[..]), ("All", &[][..])] {
                let query = expand(expr, values);
                match prom.query(&query) {
                    Ok(result) if !result.is_empty() => {}
                    Ok(_) => empty.push(format!("{where_} [{label}]: {query}")),
                    Err(e) => empty.push(format!("{where_} [{label}]: {query}: ERROR {e:#}")),
                }
            }
        }
        for record in &records {
            if prom.query(record).map_or(true, |r| r.is_empty()) {
                empty.push(format!("recording rule {record}"));
            }
        }
        if empty.is_empty() || start.elapsed() >= DATA_WAIT {
            break empty;
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    let checked = queries.len() * 2 + records.len();
    eprintln!(
        "observability: {} of {checked} panel queries (x2 variable sets) and recording rules \
         returned no data:\n  {}",
        empty.len(),
        empty.join("\n  ")
    );
    // The template variables' own queries list the values used above.
    check_variables(&prom);

    // A ztunnel stopped: ZtunnelDown fires for its node, and clears when it is back.
    let stopped = Instant::now();
    c.ok(&["cluster", "stop", "ztunnel", "--node", "n2"]);
    e2e::retry_until("ZtunnelDown firing for n2", FIRE_WAIT, || {
        let alerts = prom.query("ALERTS{alertname=\"ZtunnelDown\", alertstate=\"firing\"}")?;
        ensure!(
            alerts.iter().any(|a| a["metric"]["node"] == "n2"),
            "not firing: {alerts:?}"
        );
        Ok(())
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    let fired_after = stopped.elapsed();
    assert!(
        fired_after >= Duration::from_secs(30),
        "ZtunnelDown fired after {fired_after:?}, before its `for: 30s`"
    );
    let api = prom.get("/api/v1/alerts", &[]).expect("alerts");
    assert!(
        api["alerts"].as_array().is_some_and(|a| a.iter().any(|a| {
            a["labels"]["alertname"] == "ZtunnelDown"
                && a["labels"]["instance"] == "10.250.0.2:15020"
                && a["state"] == "firing"
        })),
        "{api}"
    );
    c.ok(&["cluster", "start", "ztunnel", "--node", "n2"]);
    let restarted = Instant::now();
    e2e::retry_until("ZtunnelDown cleared", WAIT, || {
        let alerts = prom.query("ALERTS{alertname=\"ZtunnelDown\"}")?;
        ensure!(alerts.is_empty(), "still there: {alerts:?}");
        Ok(())
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!(
        "observability: ZtunnelDown fired {:.1} s after the stop, cleared {:.1} s after the start",
        fired_after.as_secs_f64(),
        restarted.elapsed().as_secs_f64()
    );

    assert!(
        empty.is_empty(),
        "{} dashboard queries or recording rules returned no data:\n  {}",
        empty.len(),
        empty.join("\n  ")
    );
    c.down_and_check();
}

/// shop: web (n2) behind a waypoint, a client allowed by policy and an intruder denied at web's
/// ztunnel (both on n1); plain (no waypoint): a TCP echo (n2) and its client (n1).
fn traffic(c: &Cluster) {
    let meshctl = c.meshctl.display().to_string();
    let tcp_tool = e2e::Topology::tcp_tool()
        .expect("e2e-tcp")
        .display()
        .to_string();
    let web = [
        meshctl.as_str(),
        "http-echo",
        "--port",
        "8080",
        "--name",
        "web",
    ];
    c.pod_run(
        "web",
        "shop",
        "n2",
        &["--sa", "web", "--labels", "app=web"],
        &web,
    );
    let sleep = ["sleep", "infinity"];
    c.pod_run("client", "shop", "n1", &["--sa", "client"], &sleep);
    c.pod_run("intruder", "shop", "n1", &["--sa", "intruder"], &sleep);
    let echo = [tcp_tool.as_str(), "echo", "9000"];
    c.pod_run(
        "echo",
        "plain",
        "n2",
        &["--sa", "echo", "--labels", "app=echo"],
        &echo,
    );
    c.pod_run("client", "plain", "n1", &["--sa", "client"], &sleep);
    let apps = c.scratch.path().join("apps.yaml");
    std::fs::write(&apps, APPS).expect("write");
    c.ok(&["apply", "-f", apps.to_str().unwrap()]);
    for ns in ["shop", "plain"] {
        c.ok(&["label", "ns", ns, "istio.io/dataplane-mode=ambient"]);
    }
    for (pod, ns) in [
        ("web", "shop"),
        ("client", "shop"),
        ("intruder", "shop"),
        ("echo", "plain"),
        ("client", "plain"),
    ] {
        c.wait_captured(pod, ns, true);
    }
    c.ok(&[
        "waypoint",
        "apply",
        "-n",
        "shop",
        "--enroll-namespace",
        "--wait",
    ]);

    // Through the waypoint: keep-alive requests from the client, once the route is in place.
    let web_url = format!("http://{}/", cluster_ip(c, "shop", "web"));
    let urls: Vec<&str> = std::iter::repeat_n(web_url.as_str(), 20).collect();
    e2e::retry_until("requests through the waypoint", WAIT, || {
        let mut cmd = vec!["curl", "-sS", "--max-time", "5"];
        cmd.extend(&urls);
        let (ok, out) = exec(c, "shop", "client", &cmd);
        ensure!(ok && out.matches("hello from web").count() == 20, "{out}");
        Ok(())
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", c.logs()));
    // The intruder's connections are denied at web's ztunnel (only-the-client).
    for _ in 0..3 {
        let (ok, out) = exec(
            c,
            "shop",
            "intruder",
            &["curl", "-sS", "--max-time", "5", &web_url],
        );
        assert!(
            !out.contains("hello from web"),
            "the intruder got through ({ok}): {out}"
        );
    }
    // L4 only: separate TCP connections to the echo service.
    let echo_addr = format!("{}:9000", cluster_ip(c, "plain", "echo"));
    for i in 0..5 {
        let payload = format!("l4-{i}");
        let (ok, out) = exec(
            c,
            "plain",
            "client",
            &[&tcp_tool, "send", &echo_addr, &payload],
        );
        assert!(
            ok && out.contains(&payload),
            "L4 echo {i}: {out}\n{}",
            c.logs()
        );
    }
}

/// Every panel query of every dashboard: ("<file> / <panel> / <refId>", expr).
fn dashboard_queries() -> Vec<(String, String)> {
    let dir = repo().join("manifests/dashboards");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("manifests/dashboards")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 3, "{files:?}");
    let mut queries = Vec::new();
    for file in files {
        let dashboard: Value =
            serde_json::from_str(&std::fs::read_to_string(&file).expect("read")).expect("json");
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        for panel in dashboard["panels"].as_array().expect("panels") {
            for target in panel["targets"].as_array().into_iter().flatten() {
                queries.push((
                    format!(
                        "{name} / {} / {}",
                        panel["title"].as_str().unwrap(),
                        target["refId"].as_str().unwrap()
                    ),
                    target["expr"].as_str().expect("expr").to_string(),
                ));
            }
        }
    }
    queries
}

/// The names the recording rules record.
fn recording_rules() -> Vec<String> {
    let text = std::fs::read_to_string(repo().join("manifests/prometheus/recording-rules.yml"))
        .expect("recording-rules.yml");
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("- record:"))
        .map(|r| r.trim().to_string())
        .collect()
}

/// A query with Grafana's variables filled in: `values` for the named ones, `.*` (the "All"
/// value) for any other.
fn expand(expr: &str, values: &[(&str, &str)]) -> String {
    let mut out = expr.replace("$__rate_interval", RATE_INTERVAL);
    for var in ["node", "namespace", "workload"] {
        let value = values
            .iter()
            .find(|(n, _)| *n == var)
            .map_or(".*", |(_, v)| v);
        out = out
            .replace(&format!("${{{var}}}"), value)
            .replace(&format!("${var}"), value);
    }
    assert!(!out.contains('$'), "unexpanded variable in {out}");
    out
}

/// Each dashboard's `label_values(selector, label)` variables, evaluated: they must offer the
/// values the panels were checked with.
fn check_variables(prom: &Prometheus) {
    for file in [
        "ztunnel-by-node.json",
        "workloads-and-services.json",
        "control-plane.json",
    ] {
        let text =
            std::fs::read_to_string(repo().join("manifests/dashboards").join(file)).expect("read");
        let dashboard: Value = serde_json::from_str(&text).expect("json");
        for var in dashboard["templating"]["list"]
            .as_array()
            .expect("variables")
        {
            if var["type"] != "query" {
                continue;
            }
            let name = var["name"].as_str().unwrap();
            let def = var["definition"].as_str().unwrap();
            let inner = def
                .strip_prefix("label_values(")
                .and_then(|d| d.strip_suffix(')'))
                .expect(def);
            let (selector, label) = inner.rsplit_once(',').expect(def);
            let query = expand(
                &format!("count by ({}) ({selector})", label.trim()),
                &VARIABLES,
            );
            let values: Vec<String> = prom
                .query(&query)
                .unwrap_or_else(|e| panic!("{file} ${name}: {e:#}"))
                .iter()
                .filter_map(|s| s["metric"][label.trim()].as_str().map(String::from))
                .collect();
            let want = VARIABLES.iter().find(|(n, _)| *n == name).unwrap().1;
            assert!(
                values.iter().any(|v| v == want),
                "{file} ${name} ({def}) offers {values:?}, not {want}"
            );
        }
    }
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

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

/// The cluster's Prometheus, through the URL `cluster up --prometheus` printed (on the host).
struct Prometheus {
    url: String,
}

impl Prometheus {
    fn new(c: &Cluster) -> Prometheus {
        let url =
            std::fs::read_to_string(c.state_dir().join("prometheus/url")).expect("prometheus/url");
        let url = url.trim().to_string();
        assert!(url.starts_with("http://127.0.0.1:"), "{url}");
        let status = c.ok(&["cluster", "status"]);
        assert!(status.contains(&format!("prometheus {url}")), "{status}");
        Prometheus { url }
    }

    /// The `data` of `GET path` with URL-encoded `params`, or the API's error.
    fn get(&self, path: &str, params: &[(&str, &str)]) -> anyhow::Result<Value> {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--max-time", "5", "-G"]);
        for (k, v) in params {
            cmd.arg("--data-urlencode").arg(format!("{k}={v}"));
        }
        let out = cmd.arg(format!("{}{path}", self.url)).output()?;
        ensure!(
            out.status.success(),
            "curl {path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let json: Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("{path}: {}", String::from_utf8_lossy(&out.stdout)))?;
        ensure!(json["status"] == "success", "{path}: {json}");
        Ok(json["data"].clone())
    }

    /// An instant query's series.
    fn query(&self, promql: &str) -> anyhow::Result<Vec<Value>> {
        let data = self.get("/api/v1/query", &[("query", promql)])?;
        Ok(data["result"].as_array().context("no result")?.clone())
    }
}
