//! Fail static through a waypoint, on the local cluster: istiod-lite stopped across a
//! certificate refresh while 200 requests a second go through the waypoint (HTTP) and a
//! long-lived stream passes through it (raw TCP); the waypoint and the ztunnels keep serving
//! the last config and still-valid certificates, and everything resyncs when istiod-lite is
//! back; zero failures. Certificates of 30 s (`MAX_CERT_TTL_SECS` for istiod-lite,
//! `SECRET_TTL_SECS` for ztunnel and the waypoint, inherited by the daemons `meshctl` starts).
//! Needs root; runs in the `local-cluster` test group.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::print_stderr)]

mod common;
#[path = "common/cluster.rs"]
mod local_cluster;

use std::process::Command;
use std::time::{Duration, Instant};

use common::metric_sum;
use e2e::load::{RateClient, StreamClient};
use local_cluster::{Cluster, WAIT};

/// Certificate lifetime, seconds: renewal is due 15 s after each fetch.
const TTL: &str = "30";

const SERVICES: &str = "\
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

/// `meshctl` with the short certificate lifetimes in its environment (and so in the daemons
/// and pods it starts); stdout.
fn meshctl(c: &Cluster, args: &[&str]) -> String {
    let out = Command::new(&c.meshctl)
        .env("MAX_CERT_TTL_SECS", TTL)
        .env("SECRET_TTL_SECS", TTL)
        .arg("--state-dir")
        .arg(c.state_dir())
        .args(args)
        .output()
        .expect("running meshctl");
    assert!(
        out.status.success(),
        "meshctl {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        c.logs()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The cluster IP the local cluster gave Service `shop/name`.
fn cluster_ip(c: &Cluster, name: &str) -> std::net::IpAddr {
    let path = c
        .state_dir()
        .join(format!("config/objects/service/shop/{name}.yaml"));
    let yaml = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    yaml.lines()
        .find_map(|l| l.trim().strip_prefix("clusterIP:"))
        .and_then(|v| v.trim().trim_matches('"').parse().ok())
        .unwrap_or_else(|| panic!("no clusterIP in {yaml}"))
}

/// A metric of the waypoint pod, read inside its network namespace, summed over the series
/// whose labels contain every needle.
fn waypoint_metric(c: &Cluster, pod: &str, name: &str, needles: &[&str]) -> f64 {
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
    let text = String::from_utf8_lossy(&out.stdout);
    metric_sum(&text, name, needles)
}

#[test]
fn istiod_down_across_a_refresh_leaves_traffic_through_the_waypoint_untouched() {
    let c = Cluster::new();
    meshctl(&c, &["cluster", "up", "--nodes", "2", "--name", &c.name]);
    let exe = c.meshctl.display().to_string();
    let tcp_tool = e2e::Topology::tcp_tool()
        .expect("e2e-tcp")
        .display()
        .to_string();
    let pod = |name: &str, node: &str, extra: &[&str], cmd: &[&str]| {
        let mut args = vec!["pod", "run", name, "-n", "shop", "--node", node];
        args.extend_from_slice(extra);
        args.push("--");
        args.extend_from_slice(cmd);
        meshctl(&c, &args);
    };
    pod(
        "web",
        "n2",
        &["--sa", "web", "--labels", "app=web"],
        &[&exe, "http-echo", "--port", "8080", "--name", "web"],
    );
    pod(
        "raw",
        "n2",
        &["--sa", "raw", "--labels", "app=raw"],
        &[&tcp_tool, "echo", "9000"],
    );
    pod("client", "n1", &["--sa", "client"], &["sleep", "infinity"]);
    let services = c.scratch.path().join("services.yaml");
    std::fs::write(&services, SERVICES).expect("write");
    meshctl(&c, &["apply", "-f", services.to_str().unwrap()]);
    meshctl(
        &c,
        &["label", "ns", "shop", "istio.io/dataplane-mode=ambient"],
    );
    for p in ["client", "web", "raw"] {
        c.wait_captured(p, "shop", true);
    }
    meshctl(
        &c,
        &[
            "waypoint",
            "apply",
            "-n",
            "shop",
            "--enroll-namespace",
            "--wait",
        ],
    );
    let list: serde_json::Value = serde_json::from_str(&meshctl(
        &c,
        &["waypoint", "list", "-n", "shop", "-o", "json"],
    ))
    .expect("json");
    let waypoint = list[0]["pod"].as_str().expect("waypoint pod").to_string();
    let requests = |c: &Cluster| waypoint_metric(c, &waypoint, "istio_requests_total", &[]);

    // Traffic through the waypoint: HTTP to web, a raw TCP stream to raw.
    let spawner = e2e::Topology::new("relwp").expect("process spawner");
    let client = c.pod_netns("shop", "client");
    let web = std::net::SocketAddr::new(cluster_ip(&c, "web"), 80);
    let raw = std::net::SocketAddr::new(cluster_ip(&c, "raw"), 9000);
    e2e::retry_until("a request through the waypoint", WAIT, || {
        let out = c.run(&[
            "pod",
            "exec",
            "client",
            "-n",
            "shop",
            "--",
            "curl",
            "-sS",
            "--max-time",
            "2",
            &format!("http://{web}/"),
        ]);
        anyhow::ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", c.logs()));
    let rate = RateClient::start(&spawner, client.as_str(), web, 200).expect("rate");
    let stream = StreamClient::start(&spawner, client.as_str(), raw, 32 * 1024).expect("stream");
    rate.wait_for_successes(200, WAIT)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", c.logs()));
    let through_waypoint = requests(&c);
    assert!(
        through_waypoint >= 100.0,
        "the waypoint saw {through_waypoint} requests"
    );

    // istiod-lite down until the waypoint's certificate is past its refresh.
    let started = Instant::now();
    meshctl(&c, &["cluster", "stop", "istiod"]);
    let stopped = Instant::now();
    let metric = |name: &str, needles: &[&str]| waypoint_metric(&c, &waypoint, name, needles);
    e2e::wait_until("the waypoint sees the control plane gone", WAIT, || {
        metric("mesh_xds_connected", &[]) == 0.0
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", c.logs()));
    e2e::wait_until(
        "the waypoint's certificate refresh failing",
        Duration::from_secs(30),
        || metric("mesh_certificates", &["state=\"refresh_failing\""]) >= 1.0,
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", c.logs()));
    let left = metric("mesh_certificate_seconds_to_expiry", &[]);
    assert!(left > 0.0, "the waypoint's certificate expired: {left}");
    let during = requests(&c);

    // Back: the waypoint reconnects and renews; traffic never noticed.
    let outage = stopped.elapsed();
    meshctl(&c, &["cluster", "start", "istiod"]);
    let back = Instant::now();
    e2e::wait_until("the waypoint resynced", Duration::from_secs(30), || {
        metric("mesh_xds_connected", &[]) == 1.0
            && metric("mesh_certificates", &["state=\"available\""]) >= 1.0
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", c.logs()));
    let resync = back.elapsed();
    rate.wait_for_successes(200, WAIT).expect("requests flow");
    assert!(
        requests(&c) > during,
        "requests still go through the waypoint"
    );

    assert!(stream.is_running(), "the stream broke:\n{}", c.logs());
    let report = rate.finish().expect("rate report");
    assert_eq!(
        report.failed,
        0,
        "failures: {:?}\n{}",
        report.failures,
        c.logs()
    );
    assert_eq!(report.ok, report.sent, "{report:?}");
    let stream = stream.finish().expect("the stream got every byte back");
    assert_eq!(stream.verified, stream.sent, "{stream:?}");
    eprintln!(
        "istiod-lite down {:.1} s (waypoint certificate {left:.0} s from expiry), resynced {:.1} s after; \
         requests sent={} failed={} p99_ms={} max_ms={}; stream bytes verified={} over {:.0} s",
        outage.as_secs_f64(),
        resync.as_secs_f64(),
        report.sent,
        report.failed,
        report.p99_ms,
        report.max_ms,
        stream.verified,
        started.elapsed().as_secs_f64()
    );
}
