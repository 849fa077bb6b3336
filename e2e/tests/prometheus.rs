//! A real Prometheus (Debian's `prometheus`) scrapes a `meshctl` local cluster: both ztunnels
//! (:15020) and istiod-lite (:15014). Proves that the real scraper parses our exposition and
//! that the Istio metrics a dashboard queries carry what crossed the mesh. Needs root and the
//! `prometheus` binary; fails loudly without either, never skips.
//!
//! Prometheus runs inside node n1's network namespace: the underlay addresses (10.250.0.i)
//! exist only there and in the other nodes.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::print_stderr)]

#[path = "common/cluster.rs"]
mod local_cluster;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use anyhow::{bail, ensure, Context};
use serde_json::Value;

use local_cluster::{Cluster, WAIT};

/// Requests the client makes; every one is a TCP connection through both ztunnels.
const REQUESTS: u64 = 5;
const CLIENT: &str = "spiffe://cluster.local/ns/shop/sa/client";
const SERVER: &str = "spiffe://cluster.local/ns/shop/sa/server";
/// meshctl's plan: node i at 10.250.0.i on the underlay, istiod-lite on n1.
const ZTUNNEL_TARGETS: [&str; 2] = ["10.250.0.1:15020", "10.250.0.2:15020"];
const ISTIOD_TARGET: &str = "10.250.0.1:15014";

#[test]
fn a_real_prometheus_scrapes_every_target_and_sees_the_mtls_connections_and_connected_proxies() {
    let mut c = Cluster::new();
    let bin = prometheus_binary();
    c.up(&[]);
    // Started first: its start-up overlaps the pods'.
    let prom = Prometheus::start(bin, &format!("{}-n1", c.name));

    c.ok(&["label", "ns", "shop", "istio.io/dataplane-mode=ambient"]);
    let server_ip = c.shop();
    c.wait_captured("server", "shop", true);
    c.wait_captured("client", "shop", true);
    // From here on n1's ztunnel tunnels to the server: every request below is mTLS.
    c.wait_hbone("n1", "shop", "server");
    let url = format!("http://{server_ip}:8080/");
    for i in 0..REQUESTS {
        let body = c.curl("client", "shop", &url, &format!("x-step: prometheus-{i}"));
        assert!(body.contains("hello from"), "request {i}: {body}");
    }

    // (1) Every scrape succeeds: Prometheus' own parser accepted the exposition of both
    // binaries (a parse error shows as health "down" with the error in lastError).
    let targets = e2e::retry_until("every target scraped and up", WAIT, || {
        let active = prom.get("/api/v1/targets?state=active", &[])?["activeTargets"].clone();
        let active = active.as_array().context("no activeTargets")?.clone();
        let summary: Vec<String> = active
            .iter()
            .map(|t| {
                format!(
                    "{} {} health={} lastError={:?}",
                    t["labels"]["job"], t["scrapeUrl"], t["health"], t["lastError"]
                )
            })
            .collect();
        ensure!(
            active.len() == 3
                && active
                    .iter()
                    .all(|t| t["health"] == "up" && t["lastError"] == ""),
            "targets: {summary:#?}"
        );
        Ok(active)
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    let mut urls: Vec<&str> = targets
        .iter()
        .filter_map(|t| t["scrapeUrl"].as_str())
        .collect();
    urls.sort_unstable();
    assert_eq!(
        urls,
        [
            "http://10.250.0.1:15014/metrics",
            "http://10.250.0.1:15020/metrics",
            "http://10.250.0.2:15020/metrics",
        ]
    );
    // The HELP and TYPE lines were read too: the family is a counter, with our help text.
    for target in ZTUNNEL_TARGETS {
        let meta = prom
            .get(
                "/api/v1/targets/metadata",
                &[
                    ("match_target", &format!("{{instance=\"{target}\"}}")),
                    ("metric", "istio_tcp_connections_opened"),
                ],
            )
            .unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(meta[0]["type"], "counter", "{target}: {meta}");
        // prometheus-client ends every help text with a full stop.
        assert_eq!(
            meta[0]["help"], "TCP connections opened.",
            "{target}: {meta}"
        );
    }

    // (2) Both ztunnels count exactly the client's requests as mTLS connections between the
    // two identities, each from its own side.
    for reporter in ["source", "destination"] {
        let pair = format!(
            "reporter=\"{reporter}\",source_principal=\"{CLIENT}\",\
             destination_principal=\"{SERVER}\",connection_security_policy=\"mutual_tls\""
        );
        let opened = prom.wait_value(
            &format!("sum(istio_tcp_connections_opened_total{{{pair}}})"),
            |v| v >= REQUESTS as f64,
        );
        assert_eq!(opened, REQUESTS as f64, "{reporter}: one per request");
        // (3) Bytes are recorded when a connection closes, in both directions.
        for bytes in [
            "istio_tcp_received_bytes_total",
            "istio_tcp_sent_bytes_total",
        ] {
            prom.wait_value(&format!("sum({bytes}{{{pair}}})"), |v| v > 0.0);
        }
    }

    // (4) istiod-lite's gauge: one delta ADS stream per node's ztunnel (`wait_value` panics,
    // with the last value, unless it becomes 2).
    prom.wait_value(
        &format!(
            "istiod_lite_xds_connected_proxies{{job=\"istiod\",instance=\"{ISTIOD_TARGET}\"}}"
        ),
        |v| v == 2.0,
    );

    drop(prom);
    c.down_and_check();
}

/// The `prometheus` binary; panics naming the Debian package when it is missing.
fn prometheus_binary() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin", "/usr/sbin"].map(PathBuf::from))
        .map(|dir| dir.join("prometheus"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`prometheus` not found: install the Debian package prometheus \
                 (apt-get install --no-install-recommends prometheus)"
            )
        })
}

/// A Prometheus server in a network namespace, killed on drop (also when the test fails).
struct Prometheus {
    child: Child,
    netns: String,
    /// `127.0.0.1:<port>` inside `netns`.
    addr: String,
    /// Config, TSDB and log.
    dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(bin: PathBuf, netns: &str) -> Prometheus {
        let dir = tempfile::tempdir().expect("prometheus dir");
        let quoted = |ts: &[&str]| {
            ts.iter()
                .map(|t| format!("'{t}'"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        // Every second, so that a wait of a few seconds sees fresh samples (a scrape timeout
        // may not exceed the interval).
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
             scrape_configs:\n\
             - job_name: ztunnel\n  metrics_path: /metrics\n  static_configs:\n  - targets: [{}]\n\
             - job_name: istiod\n  metrics_path: /metrics\n  static_configs:\n  - targets: [{}]\n",
            quoted(&ZTUNNEL_TARGETS),
            quoted(&[ISTIOD_TARGET]),
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write prometheus.yml");
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log");
        // `ip netns exec` execs, so the child is Prometheus itself.
        let child = Command::new("ip")
            .args(["netns", "exec", netns])
            .arg(bin)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            // Port 0: the kernel picks a free one, which Prometheus logs ("Listening on").
            .arg("--web.listen-address=127.0.0.1:0")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawning prometheus");
        let mut prom = Prometheus {
            child,
            netns: netns.to_string(),
            addr: String::new(),
            dir,
        };
        let addr = e2e::retry_until("prometheus listening", WAIT, || {
            if let Some(status) = prom.child.try_wait()? {
                bail!("prometheus exited: {status}");
            }
            let log = prom.log();
            let line = log
                .lines()
                .find(|l| l.contains("msg=\"Listening on\""))
                .context("no \"Listening on\" yet")?;
            let addr = line.split("address=").nth(1).context("no address")?;
            Ok(addr
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string())
        })
        .unwrap_or_else(|e| panic!("{e:#}"));
        prom.addr = addr;
        e2e::retry_until("prometheus ready", WAIT, || {
            let out = prom.curl("/-/ready", &[])?;
            ensure!(out.contains("Ready"), "{out}");
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e:#}"));
        prom
    }

    /// `GET path` with URL-encoded `params`, from inside the namespace; the response body.
    fn curl(&self, path: &str, params: &[(&str, &str)]) -> anyhow::Result<String> {
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            &self.netns,
            "curl",
            "-sS",
            "--max-time",
            "5",
        ]);
        if !params.is_empty() {
            cmd.arg("-G");
        }
        for (k, v) in params {
            cmd.arg("--data-urlencode").arg(format!("{k}={v}"));
        }
        let out = cmd.arg(format!("http://{}{path}", self.addr)).output()?;
        ensure!(
            out.status.success(),
            "curl {path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The `data` of an API response, or the API's error.
    fn get(&self, path: &str, params: &[(&str, &str)]) -> anyhow::Result<Value> {
        let body = self.curl(path, params)?;
        let json: Value = serde_json::from_str(&body).with_context(|| format!("{path}: {body}"))?;
        ensure!(json["status"] == "success", "{path}: {body}");
        Ok(json["data"].clone())
    }

    /// The value of a single-series PromQL query, once `accept` holds for it.
    /// Panics (at the caller's line) with the last value or error after [`WAIT`].
    #[track_caller]
    fn wait_value(&self, promql: &str, accept: impl Fn(f64) -> bool) -> f64 {
        let found = e2e::retry_until(promql, WAIT, || {
            let data = self.get("/api/v1/query", &[("query", promql)])?;
            let result = data["result"].as_array().context("no result")?;
            ensure!(result.len() == 1, "want one series, got {result:?}");
            // An instant vector's value is [timestamp, "number"].
            let value: f64 = result[0]["value"][1]
                .as_str()
                .context("no value")?
                .parse()?;
            ensure!(accept(value), "value {value}");
            Ok(value)
        });
        match found {
            Ok(value) => value,
            Err(e) => panic!("{e:#}"),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    fn log_tail(&self) -> String {
        let text = self.log();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        // Its directory goes with it: show the log of a failed test here.
        if std::thread::panicking() {
            eprintln!("prometheus log (tail):\n{}", self.log_tail());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
