//! The HTTP comparison: the same 1 KiB HTTP/1.1 requests, client on n1 and server on n2, with
//! no mesh (pod IP, namespace `plain`), through the L4 mesh only (pod IP, namespace `mesh`),
//! and through a waypoint (the Service's cluster IP in namespace `wp`, whose waypoint was
//! deployed by `meshctl waypoint apply -n wp --enroll-namespace`). Rounds interleave the three
//! paths; each round runs a fixed-rate pass (latency, and the waypoint's and client ztunnel's
//! CPU over it) and a closed-loop pass (the saturation rate). Medians are reported.

use std::path::Path;
use std::process::Command;

use anyhow::Context as _;

use crate::cluster::{Cluster, PodRef};
use crate::{cpu_secs, parse_lat, status_mib, Cfg, Lat, HTTP_PORT, WAIT};

/// The namespace with a waypoint.
pub(crate) const WP: &str = "wp";

/// The Service in front of the server in namespace `wp`.
const SERVICE: &str = r#"apiVersion: v1
kind: Service
metadata: {name: web, namespace: wp}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8081}]
"#;

/// One of the three paths.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Path3 {
    Plain,
    L4,
    Waypoint,
}

impl Path3 {
    pub(crate) const ALL: [Path3; 3] = [Path3::Plain, Path3::L4, Path3::Waypoint];
}

/// One round of one path.
#[derive(Clone, Copy, Default, Debug)]
pub(crate) struct Sample {
    pub(crate) fixed: Lat,
    pub(crate) saturated: Lat,
    /// The client node's ztunnel CPU-seconds per 1000 requests of the fixed-rate pass.
    pub(crate) ztunnel_cpu_per_k: f64,
    /// The waypoint's CPU-seconds per 1000 requests of the fixed-rate pass (waypoint path).
    pub(crate) waypoint_cpu_per_k: f64,
}

/// What the comparison measured.
pub(crate) struct Report {
    pub(crate) samples: Vec<(Path3, Sample)>,
    /// The waypoint's peak RSS (VmHWM) and its RSS at the end, MiB.
    pub(crate) waypoint_hwm: f64,
    pub(crate) waypoint_rss: f64,
    /// The waypoint's node.
    pub(crate) waypoint_node: String,
    /// Requests the waypoint counted (`istio_requests_total`, summed) and requests sent to it.
    pub(crate) waypoint_counted: f64,
    pub(crate) waypoint_sent: u64,
}

/// The waypoint pod's netns and pid, from its runtime record `<state>/pods/wp/waypoint-*.json`.
fn waypoint_pod(state: &Path) -> anyhow::Result<(String, u32, String)> {
    let dir = state.join("pods").join(WP);
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name.starts_with("waypoint-") && name.ends_with(".json") {
            let pod: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
            let netns = pod["netns"]
                .as_str()
                .context("waypoint pod without netns")?;
            let pid = pod["main"]["pid"]
                .as_u64()
                .context("waypoint pod not running")?;
            let node = pod["node"].as_str().unwrap_or("?");
            return Ok((netns.to_string(), u32::try_from(pid)?, node.to_string()));
        }
    }
    anyhow::bail!("no waypoint pod in {}", dir.display())
}

/// Sum of the waypoint's `istio_requests_total` series (its :15020/metrics).
fn waypoint_requests(netns: &str) -> anyhow::Result<f64> {
    let out = Command::new("ip")
        .args(["netns", "exec", netns, "curl", "-s", "--max-time", "3"])
        .arg("http://127.0.0.1:15020/metrics")
        .output()
        .context("running curl in the waypoint's namespace")?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("istio_requests_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// The cluster IP the local cluster allocated to Service `wp/web`.
fn cluster_ip(state: &Path) -> anyhow::Result<String> {
    let path = state.join(format!("config/objects/service/{WP}/web.yaml"));
    let yaml = std::fs::read_to_string(&path)
        .with_context(|| format!("reading Service {WP}/web at {}", path.display()))?;
    yaml.lines()
        .find_map(|l| l.trim().strip_prefix("clusterIP:"))
        .map(|v| v.trim().trim_matches('"').to_string())
        .context("Service wp/web has no cluster IP")
}

/// Runs `load-http` in `client` against `addr`; its parsed report.
fn load_http(
    c: &Cluster,
    me: &str,
    client: &PodRef,
    addr: &str,
    rate: f64,
    secs: f64,
    conns: usize,
) -> anyhow::Result<Lat> {
    let out = c
        .exec(
            client,
            &[
                me,
                "load-http",
                addr,
                "web.wp",
                &rate.to_string(),
                &secs.to_string(),
                &conns.to_string(),
            ],
        )
        .map_err(|e| anyhow::anyhow!("load-http: {e:#}\n{}", c.logs()))?;
    eprintln!(
        "  load-http {}/{} -> {addr} at {rate}/s: {}",
        client.namespace,
        client.name,
        out.trim()
    );
    Ok(parse_lat(&out))
}

/// Deploys namespace `wp` (client on n1, server on n2, Service, waypoint), then runs the
/// rounds. `plain` and `l4` are the (client, server) pods of the other two namespaces, whose
/// servers also serve HTTP on `HTTP_PORT`.
pub(crate) fn run(
    c: &Cluster,
    me: &str,
    cfg: &Cfg,
    plain: (&PodRef, &PodRef),
    l4: (&PodRef, &PodRef),
    zt_client: u32,
) -> anyhow::Result<Report> {
    eprintln!("namespace {WP}: a Service, its server and client, and a waypoint...");
    let serve = format!(
        "exec {} serve-http {HTTP_PORT}",
        crate::cluster::sh_quote(me)
    );
    let client = c.pod_run(WP, "client", "n1", "client", "", &[])?;
    let server = c.pod_run(
        WP,
        "server",
        "n2",
        "server",
        "app=web",
        &["sh", "-c", &serve],
    )?;
    c.wait_pod_log(
        &server,
        &[&format!("http listening on 0.0.0.0:{HTTP_PORT}")],
    )?;
    let dir = tempfile_dir()?;
    let yaml = dir.join("service.yaml");
    std::fs::write(&yaml, SERVICE)?;
    c.ok(&["apply", "-f", yaml.to_str().context("temp path")?])?;
    let _ = std::fs::remove_dir_all(&dir);
    c.ok(&["label", "ns", WP, "istio.io/dataplane-mode=ambient"])?;
    c.ok(&[
        "waypoint",
        "apply",
        "-n",
        WP,
        "--enroll-namespace",
        "--wait",
    ])?;
    c.wait_captured(&[&client, &server])?;
    let vip = format!("{}:80", cluster_ip(&c.state)?);
    let (netns, wp_pid, wp_node) = waypoint_pod(&c.state)?;
    // Until the client's ztunnel sends the Service's traffic to the waypoint, requests pass
    // (L4) without it: wait for the waypoint to count them.
    e2e::retry_until("requests to reach the waypoint", WAIT, || {
        let before = waypoint_requests(&netns)?;
        load_http(c, me, &client, &vip, 50.0, 0.2, 1)?;
        anyhow::ensure!(
            waypoint_requests(&netns)? > before,
            "the waypoint did not see them"
        );
        Ok(())
    })?;
    eprintln!("the waypoint (on {wp_node}) serves {WP}/web at {vip}");

    let mut samples = Vec::new();
    let (mut counted, mut sent) = (0.0, 0u64);
    for round in 1..=cfg.rounds {
        eprintln!("HTTP round {round}/{}...", cfg.rounds);
        for path in Path3::ALL {
            let (from, to) = match path {
                Path3::Plain => (plain.0, plain.1.addr(HTTP_PORT).to_string()),
                Path3::L4 => (l4.0, l4.1.addr(HTTP_PORT).to_string()),
                Path3::Waypoint => (&client, vip.clone()),
            };
            let (z0, w0) = (cpu_secs(zt_client), cpu_secs(wp_pid));
            let n0 = waypoint_requests(&netns)?;
            let fixed = load_http(c, me, from, &to, cfg.http_rate, cfg.secs, cfg.conns)?;
            let per_k = |cpu: f64| cpu / (fixed.count.max(1) as f64 / 1000.0);
            let ztunnel_cpu_per_k = per_k(cpu_secs(zt_client) - z0);
            let waypoint_cpu_per_k = per_k(cpu_secs(wp_pid) - w0);
            if path == Path3::Waypoint {
                counted += waypoint_requests(&netns)? - n0;
                sent += fixed.count + cfg.conns as u64; // and one warm-up per connection
            }
            let saturated = load_http(c, me, from, &to, 0.0, cfg.secs, cfg.conns)?;
            samples.push((
                path,
                Sample {
                    fixed,
                    saturated,
                    ztunnel_cpu_per_k,
                    waypoint_cpu_per_k,
                },
            ));
        }
    }
    Ok(Report {
        samples,
        waypoint_hwm: status_mib(wp_pid, "VmHWM"),
        waypoint_rss: status_mib(wp_pid, "VmRSS"),
        waypoint_node: wp_node,
        waypoint_counted: counted,
        waypoint_sent: sent,
    })
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("mesh-bench-yaml-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// The median of `v` (NaN when empty).
fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One number read off a sample.
type Metric<'a> = &'a dyn Fn(&Sample) -> f64;

/// Prints the comparison's tables.
pub(crate) fn print(cfg: &Cfg, r: &Report) {
    let med = |path: Path3, f: &dyn Fn(&Sample) -> f64| {
        median(
            r.samples
                .iter()
                .filter(|(p, _)| *p == path)
                .map(|(_, s)| f(s))
                .collect(),
        )
    };
    let spread = |path: Path3, f: &dyn Fn(&Sample) -> f64, d: usize| {
        let v: Vec<f64> = r
            .samples
            .iter()
            .filter(|(p, _)| *p == path)
            .map(|(_, s)| f(s))
            .collect();
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        format!("{lo:.d$}–{hi:.d$}")
    };
    println!();
    println!(
        "HTTP/1.1, 1 KiB request and response, client n1 -> server n2, {} keep-alive connections, {} rounds (median, range):",
        cfg.conns, cfg.rounds
    );
    println!("| measurement | no mesh | L4 only | waypoint | waypoint/L4 | waypoint/no mesh |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    // (name, decimals, metric)
    let rows: [(&str, usize, Metric<'_>); 5] = [
        ("saturation (req/s, closed loop)", 0, &|s| s.saturated.rps),
        ("p50 at fixed rate (ms)", 3, &|s| s.fixed.p50),
        ("p90 at fixed rate (ms)", 3, &|s| s.fixed.p90),
        ("p99 at fixed rate (ms)", 3, &|s| s.fixed.p99),
        ("client-node ztunnel CPU-s per 1000 req", 3, &|s| {
            s.ztunnel_cpu_per_k
        }),
    ];
    for (name, d, f) in rows {
        let [p, l, w] = Path3::ALL.map(|path| med(path, f));
        println!(
            "| {name} | {p:.d$} ({}) | {l:.d$} ({}) | {w:.d$} ({}) | {} | {} |",
            spread(Path3::Plain, f, d),
            spread(Path3::L4, f, d),
            spread(Path3::Waypoint, f, d),
            crate::ratio(w, l),
            crate::ratio(w, p)
        );
    }
    let errors: u64 = r
        .samples
        .iter()
        .map(|(_, s)| s.fixed.errors + s.saturated.errors)
        .sum();
    println!();
    println!(
        "fixed rate: {} req/s for {} s per pass; errors over all passes: {errors}",
        cfg.http_rate, cfg.secs
    );
    let cpu = med(Path3::Waypoint, &|s| s.waypoint_cpu_per_k);
    println!();
    println!(
        "| waypoint cost (on {}) | value | Envoy waypoint (published) | target |",
        r.waypoint_node
    );
    println!("| --- | ---: | ---: | ---: |");
    println!(
        "| CPU-s per 1000 requests = vCPU per 1000 req/s | {cpu:.3} ({}) | ~0.25 | ≤ 0.15 |",
        spread(Path3::Waypoint, &|s| s.waypoint_cpu_per_k, 3)
    );
    println!(
        "| peak RSS, VmHWM (MiB) | {:.1} | ~60 MB | ≤ 30 MB |",
        r.waypoint_hwm
    );
    println!("| RSS at the end (MiB) | {:.1} | | |", r.waypoint_rss);
    println!(
        "| requests the waypoint counted / sent at fixed rate (with warm-ups) | {:.0} / {} | | |",
        r.waypoint_counted, r.waypoint_sent
    );
}
