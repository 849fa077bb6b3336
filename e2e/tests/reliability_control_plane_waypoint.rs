//! The control plane's faults through a waypoint, on the local cluster, while 200 requests a
//! second go through the waypoint (HTTP) and a long-lived stream passes through it (raw TCP):
//! istiod-lite stopped across a certificate refresh (the waypoint and the ztunnels keep serving
//! the last config and still-valid certificates, and everything resyncs when istiod-lite is
//! back), and three rotations of every certificate (the waypoint's and both ztunnels'); zero
//! failures. Short certificates (`MAX_CERT_TTL_SECS` for istiod-lite, `SECRET_TTL_SECS` for
//! ztunnel and the waypoint, inherited by the daemons `meshctl` starts). Needs root; runs in the
//! `local-cluster` test group.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::print_stderr)]

mod common;
#[path = "common/cluster.rs"]
mod local_cluster;

use std::process::Command;
use std::time::{Duration, Instant};

use common::metric_sum;
use e2e::load::{RateClient, StreamClient};
use local_cluster::{Cluster, WAIT};

/// Certificate lifetime for the outage, seconds: renewal is due 15 s after each fetch.
const OUTAGE_TTL: &str = "30";
/// Certificate lifetime for the rotations, seconds: renewed about every 4 s.
const ROTATION_TTL: &str = "8";

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

/// `meshctl` with certificate lifetime `ttl` (seconds) in its environment (and so in the
/// daemons and pods it starts); stdout.
fn meshctl(c: &Cluster, ttl: &str, args: &[&str]) -> String {
    let out = Command::new(&c.meshctl)
        .env("MAX_CERT_TTL_SECS", ttl)
        .env("SECRET_TTL_SECS", ttl)
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

/// A node's ztunnel metric (read in that node's namespace), summed over the series whose
/// labels contain every needle.
fn ztunnel_metric(c: &Cluster, node: usize, name: &str, needles: &[&str]) -> f64 {
    let out = Command::new("ip")
        .args(["netns", "exec", &format!("{}-n{node}", c.name)])
        .args(["curl", "-sS", "--max-time", "5"])
        .arg(format!("http://10.250.0.{node}:15020/metrics"))
        .output()
        .expect("curl");
    metric_sum(&String::from_utf8_lossy(&out.stdout), name, needles)
}

/// A two-node local cluster with namespace `shop` behind a waypoint: `web` (HTTP) and `raw`
/// (TCP echo) on n2, `client` on n1; traffic through the waypoint running: 200 requests a
/// second to `web` and a stream to `raw`.
struct Setup {
    c: Cluster,
    ttl: &'static str,
    waypoint: String,
    rate: RateClient,
    stream: StreamClient,
    // Owns the client processes' namespace handles; dropped last.
    _spawner: e2e::Topology,
}

impl Setup {
    fn new(ttl: &'static str) -> Setup {
        let c = Cluster::new();
        meshctl(
            &c,
            ttl,
            &["cluster", "up", "--nodes", "2", "--name", &c.name],
        );
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
            meshctl(&c, ttl, &args);
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
        meshctl(&c, ttl, &["apply", "-f", services.to_str().unwrap()]);
        meshctl(
            &c,
            ttl,
            &["label", "ns", "shop", "istio.io/dataplane-mode=ambient"],
        );
        for p in ["client", "web", "raw"] {
            c.wait_captured(p, "shop", true);
        }
        meshctl(
            &c,
            ttl,
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
            ttl,
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
        let stream =
            StreamClient::start(&spawner, client.as_str(), raw, 32 * 1024).expect("stream");
        rate.wait_for_successes(200, WAIT)
            .unwrap_or_else(|e| panic!("{e:#}\n{}", c.logs()));
        let through_waypoint = requests(&c);
        assert!(
            through_waypoint >= 100.0,
            "the waypoint saw {through_waypoint} requests"
        );

        Setup {
            c,
            ttl,
            waypoint,
            rate,
            stream,
            _spawner: spawner,
        }
    }

    /// A metric of the waypoint.
    fn waypoint_metric(&self, name: &str, needles: &[&str]) -> f64 {
        waypoint_metric(&self.c, &self.waypoint, name, needles)
    }

    /// Requests the waypoint has served.
    fn requests(&self) -> f64 {
        self.waypoint_metric("istio_requests_total", &[])
    }

    /// Requests go on, and through the waypoint: another 200 succeed and the waypoint counts
    /// more than before them.
    fn still_through_the_waypoint(&self) {
        let before = self.requests();
        self.rate
            .wait_for_successes(200, WAIT)
            .unwrap_or_else(|e| panic!("{e:#}\n{}", self.c.logs()));
        assert!(
            self.requests() > before,
            "requests still go through the waypoint"
        );
    }

    /// `meshctl` with this cluster's certificate lifetime.
    fn meshctl(&self, args: &[&str]) -> String {
        meshctl(&self.c, self.ttl, args)
    }

    /// Stops the clients: no failed request, every stream byte back; (requests sent, p99 ms,
    /// stream bytes verified).
    fn finish(self) -> (u64, u64, u64) {
        let c = &self.c;
        assert!(self.stream.is_running(), "the stream broke:\n{}", c.logs());
        let report = self.rate.finish().expect("rate report");
        assert_eq!(
            report.failed,
            0,
            "failures: {:?}\n{}",
            report.failures,
            c.logs()
        );
        assert_eq!(report.ok, report.sent, "{report:?}");
        let stream = self
            .stream
            .finish()
            .expect("the stream got every byte back");
        assert_eq!(stream.verified, stream.sent, "{stream:?}");
        (report.sent, report.p99_ms, stream.verified)
    }
}

#[test]
fn istiod_down_across_a_refresh_leaves_traffic_through_the_waypoint_untouched() {
    let t = Setup::new(OUTAGE_TTL);
    let c = &t.c;
    // istiod-lite down until the waypoint's certificate is past its refresh.
    let started = Instant::now();
    t.meshctl(&["cluster", "stop", "istiod"]);
    let stopped = Instant::now();
    let metric = |name: &str, needles: &[&str]| t.waypoint_metric(name, needles);
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

    // Back: the waypoint reconnects and renews; traffic never noticed.
    let outage = stopped.elapsed();
    t.meshctl(&["cluster", "start", "istiod"]);
    let back = Instant::now();
    e2e::wait_until("the waypoint resynced", Duration::from_secs(30), || {
        metric("mesh_xds_connected", &[]) == 1.0
            && metric("mesh_certificates", &["state=\"available\""]) >= 1.0
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", c.logs()));
    let resync = back.elapsed();
    t.still_through_the_waypoint();
    let elapsed = started.elapsed();
    let (sent, p99_ms, verified) = t.finish();
    eprintln!(
        "istiod-lite down {:.1} s (waypoint certificate {left:.0} s from expiry), resynced {:.1} s after; \
         requests sent={sent} failed=0 p99_ms={p99_ms}; stream bytes verified={verified} over {:.0} s",
        outage.as_secs_f64(),
        resync.as_secs_f64(),
        elapsed.as_secs_f64()
    );
}

/// Three rotations of the waypoint's certificate and of both ztunnels' (8 s certificates)
/// while HTTP and a stream go through the waypoint: nothing fails.
#[test]
fn three_rotations_of_every_certificate_fail_no_request_through_the_waypoint() {
    let t = Setup::new(ROTATION_TTL);
    let c = &t.c;
    let started = Instant::now();
    let rotations = || {
        [
            t.waypoint_metric("mesh_certificate_rotations_total", &[]),
            ztunnel_metric(c, 1, "mesh_certificate_rotations_total", &[]),
            ztunnel_metric(c, 2, "mesh_certificate_rotations_total", &[]),
        ]
    };
    let before = rotations();
    assert!(
        ztunnel_metric(c, 1, "mesh_certificates", &[]) >= 1.0
            && ztunnel_metric(c, 2, "mesh_certificates", &[]) >= 1.0,
        "both ztunnels' metrics are read"
    );
    e2e::wait_until(
        "three rotations on the waypoint and both ztunnels",
        Duration::from_secs(60),
        || {
            rotations()
                .iter()
                .zip(&before)
                .all(|(now, then)| *now >= then + 3.0)
        },
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e:#} (before {before:?}, now {:?})\n{}",
            rotations(),
            c.logs()
        )
    });
    let after = rotations();
    t.still_through_the_waypoint();
    let elapsed = started.elapsed();
    let (sent, p99_ms, verified) = t.finish();
    eprintln!(
        "rotations (waypoint, n1, n2) {before:?} -> {after:?} in {:.0} s; requests sent={sent} \
         failed=0 p99_ms={p99_ms}; stream bytes verified={verified}",
        elapsed.as_secs_f64()
    );
}
