//! `mesh-bench`: the mesh benchmark (not a test: it never runs under `cargo test`, except its
//! `--smoke` mode, which `e2e/tests/bench_smoke.rs` runs).
//!
//! Runs on the local cluster of `meshctl`, as users run the mesh: `meshctl cluster up --nodes 2`
//! (istiod-lite, and a CNI node agent and a ztunnel per node), pods made through the real CNI
//! chain with `meshctl pod run`, enrolment by `meshctl label ns`. Two namespaces with the same
//! placement — `plain` (not labelled) and `mesh` (labelled `istio.io/dataplane-mode=ambient`) —
//! each with a client on n1, a server on n1 (same node) and a server on n2 (cross node).
//!
//! The side-by-side comparison (`compare`): the same workloads with no mesh (`plain`), through
//! our ztunnel, and through upstream Istio ztunnel standing in for ours on both nodes
//! (`upstream`: `--upstream PATH`, by default the shared build in `../shared/anchors/` when it
//! exists), interleaved round by round; medians and spread of bulk throughput (iperf3, 1 and 8
//! connections), 1 KiB HTTP latency at a fixed rate, the saturation rate, the new-connection
//! rate, and per ztunnel CPU-seconds per 1000 requests, idle and peak RSS and RSS with N idle
//! connections; with ours ÷ no mesh and ours ÷ upstream. Before the cluster, it runs the
//! in-process HBONE benchmark (`cargo bench -p mesh --features testing --bench hbone`).
//!
//! And the HTTP comparison (`l7`): 1 KiB HTTP/1.1 requests with no mesh, through the L4 mesh
//! and through a waypoint (namespace `wp`, `meshctl waypoint apply -n wp --enroll-namespace`),
//! in interleaved rounds: saturation rate, latency at a fixed rate, and the waypoint's CPU per
//! 1000 requests and peak RSS.
//!
//! Needs root, `iperf3` (installed with apt-get when missing) and `curl`. Run it with
//! `scripts/bench.sh` (release build; meshctl is found through `E2E_BIN_DIR`, and finds
//! istiod-lite, ztunnel and cni-plugin next to itself). The cluster (and upstream ztunnel) is
//! taken down at the end, also on failure and on SIGINT, SIGTERM or SIGHUP. The same binary is
//! the server and the load generator inside the pods (`meshctl pod run|exec`):
//!
//! ```text
//! mesh-bench [--rate R] [--secs S] [--idle N] [--conns C] [--rounds N]   (1000 req/s, 5 s, 10000, 8, 3)
//!            [--upstream PATH | --no-upstream] [--no-hbone-bench]
//!            [--conn-secs S]                             the new-connection pass alone (--secs)
//!            [--http-rate R] [--only tcp|http|all]       the waypoint part (1000 req/s, all)
//!            [--only scaling]                            1, 2, 4 clients x 1, 2 ztunnel workers
//! mesh-bench --smoke [--upstream PATH | --no-upstream]   each path carries bytes (about 1 s each)
//! mesh-bench serve <port>                        1 KiB request -> 1 KiB response server
//! mesh-bench serve-http <port>                   the same over HTTP/1.1 (hyper, keep-alive)
//! mesh-bench serve-conn <port>                   one byte each way per connection
//! mesh-bench load <ip:port> <rate> <secs> <conns> client (rate 0: closed loop); prints latencies
//! mesh-bench load-http <ip:port> <host> <rate> <secs> <conns>  the same over HTTP/1.1
//! mesh-bench load-conn <ip:port> <rate> <secs> <conns>  a new connection per exchange
//! mesh-bench idle <ip:port> <n>                  opens n connections, holds them until stdin closes
//! ```

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::expect_used,
    clippy::unwrap_used,
    missing_docs
)]

mod cluster;
mod compare;
mod http;
mod inproc;
mod l7;
mod report;
mod scaling;
mod smoke;
mod upstream;
mod workload;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _};

use cluster::Cluster;
use cluster::{down_on_signals, require_tool, sh_quote};
use compare::{Compare, Pods};
use http::{serve_http, HttpConn};
use workload::{idle, load, serve, serve_conn, NewConn, RawConn};
/// Request and response size.
const MSG: usize = 1024;
/// Latency server port.
const RR_PORT: u16 = 8080;
/// HTTP server port.
const HTTP_PORT: u16 = 8081;
/// New-connection server port (one byte each way).
const CONN_PORT: u16 = 8082;
/// iperf3 port.
const IPERF_PORT: u16 = 5201;
/// Generous bound for anything eventually true (pods captured, workloads known, servers up).
pub(crate) const WAIT: Duration = Duration::from_secs(30);
/// The namespace that is not enrolled.
const PLAIN: &str = "plain";
/// The namespace labelled `istio.io/dataplane-mode=ambient`.
const MESH: &str = "mesh";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = match a.as_slice() {
        ["serve", port] => serve(port.parse().expect("port")),
        ["serve-http", port] => serve_http(port.parse().expect("port")),
        ["serve-conn", port] => serve_conn(port.parse().expect("port")),
        ["load", addr, rate, secs, conns] => {
            let addr = addr.parse().expect("addr");
            load(
                || RawConn::connect(addr),
                rate.parse().expect("rate"),
                secs.parse().expect("secs"),
                conns.parse().expect("conns"),
            )
        }
        ["load-http", addr, host, rate, secs, conns] => {
            let addr = addr.parse().expect("addr");
            load(
                || HttpConn::connect(addr, host),
                rate.parse().expect("rate"),
                secs.parse().expect("secs"),
                conns.parse().expect("conns"),
            )
        }
        ["load-conn", addr, rate, secs, conns] => {
            let addr = addr.parse().expect("addr");
            load(
                || NewConn::new(addr),
                rate.parse().expect("rate"),
                secs.parse().expect("secs"),
                conns.parse().expect("conns"),
            )
        }
        ["idle", addr, n] => idle(addr.parse().expect("addr"), n.parse().expect("n")),
        _ => bench(&a),
    };
    if let Err(e) = r {
        eprintln!("mesh-bench: {e:#}");
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------- orchestration

/// Which comparisons to run.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Only {
    Tcp,
    Http,
    All,
    /// Only the scaling table (1, 2, 4 clients × 1, 2 workers).
    Scaling,
}

/// Where upstream ztunnel comes from.
#[derive(Clone, PartialEq, Eq, Debug)]
enum UpstreamArg {
    /// The shared build, if it exists.
    Default,
    /// `--upstream PATH`: must exist.
    Path(PathBuf),
    /// `--no-upstream`.
    Skip,
}

pub(crate) struct Cfg {
    /// Fixed request rate of the side-by-side comparison.
    pub(crate) rate: f64,
    pub(crate) secs: f64,
    /// Length of the new-connection pass when not `secs`: a sustained pass shows whether
    /// TIME_WAIT piles up where it slows new connections.
    pub(crate) conn_secs: Option<f64>,
    idle: usize,
    pub(crate) conns: usize,
    /// Fixed request rate of the HTTP comparison.
    pub(crate) http_rate: f64,
    /// Rounds of both comparisons (medians are reported).
    pub(crate) rounds: usize,
    only: Only,
    upstream: UpstreamArg,
    smoke: bool,
    hbone_bench: bool,
}

fn parse_cfg(a: &[&str]) -> anyhow::Result<Cfg> {
    let mut c = Cfg {
        rate: 1000.0,
        secs: 5.0,
        conn_secs: None,
        idle: 10_000,
        conns: 8,
        http_rate: 1000.0,
        rounds: 3,
        only: Only::All,
        upstream: UpstreamArg::Default,
        smoke: false,
        hbone_bench: true,
    };
    let mut it = a.iter();
    while let Some(k) = it.next() {
        match *k {
            "--smoke" => {
                c.smoke = true;
                continue;
            }
            "--no-upstream" => {
                c.upstream = UpstreamArg::Skip;
                continue;
            }
            "--no-hbone-bench" => {
                c.hbone_bench = false;
                continue;
            }
            _ => {}
        }
        let v = it
            .next()
            .ok_or_else(|| anyhow::anyhow!("{k} needs a value"))?;
        match *k {
            "--rate" => c.rate = v.parse()?,
            "--secs" => c.secs = v.parse()?,
            "--conn-secs" => c.conn_secs = Some(v.parse()?),
            "--idle" => c.idle = v.parse()?,
            "--conns" => c.conns = v.parse()?,
            "--http-rate" => c.http_rate = v.parse()?,
            "--rounds" => c.rounds = v.parse()?,
            "--upstream" => c.upstream = UpstreamArg::Path(PathBuf::from(v)),
            "--only" => {
                c.only = match *v {
                    "tcp" => Only::Tcp,
                    "http" => Only::Http,
                    "all" => Only::All,
                    "scaling" => Only::Scaling,
                    _ => anyhow::bail!("--only takes tcp, http, all or scaling"),
                }
            }
            _ => anyhow::bail!("unknown argument {k}"),
        }
    }
    anyhow::ensure!(c.rounds > 0, "--rounds must be at least 1");
    Ok(c)
}

/// The upstream binary to compare with, or None (with a note saying why).
fn upstream_binary(arg: &UpstreamArg) -> anyhow::Result<Option<PathBuf>> {
    match arg {
        UpstreamArg::Skip => {
            eprintln!("note: --no-upstream: the upstream ztunnel path is skipped");
            Ok(None)
        }
        UpstreamArg::Path(p) => {
            anyhow::ensure!(p.is_file(), "--upstream {}: no such file", p.display());
            Ok(Some(p.clone()))
        }
        UpstreamArg::Default => {
            let found = upstream::default_path();
            if found.is_none() {
                eprintln!(
                    "note: upstream ztunnel not found (/work/shared/anchors/ztunnel or \
                     ../shared/anchors/ztunnel from the repository): the upstream path is skipped; \
                     give one with --upstream PATH"
                );
            }
            Ok(found)
        }
    }
}

fn clk_tck() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime+stime of `pid`, in seconds.
pub(crate) fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("proc stat");
    let rest = &stat[stat.rfind(')').expect("stat") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / clk_tck()
}

/// A `/proc/<pid>/status` field in MiB (`VmRSS`, `VmHWM`).
pub(crate) fn status_mib(pid: u32, field: &str) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    s.lines()
        .find(|l| l.starts_with(&format!("{field}:")))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

/// A load generator's report (latencies in ms).
#[derive(Default, Clone, Copy, Debug)]
pub(crate) struct Lat {
    pub(crate) count: u64,
    pub(crate) errors: u64,
    pub(crate) rps: f64,
    pub(crate) p50: f64,
    pub(crate) p90: f64,
    pub(crate) p99: f64,
}

pub(crate) fn parse_lat(out: &str) -> Lat {
    let get = |k: &str| -> f64 {
        out.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN)
    };
    Lat {
        count: get("count") as u64,
        errors: get("errors") as u64,
        rps: get("rps"),
        p50: get("p50_us") / 1000.0,
        p90: get("p90_us") / 1000.0,
        p99: get("p99_us") / 1000.0,
    }
}

// ---------------------------------------------------------------- measurements

pub(crate) fn ratio(mesh: f64, plain: f64) -> String {
    if plain > 0.0 && mesh.is_finite() {
        format!("{:.2}x", mesh / plain)
    } else {
        "-".into()
    }
}

// ---------------------------------------------------------------- setup

/// Raises the descriptor limit (inherited by meshctl, the daemons, upstream and the pods'
/// commands) so that `idle` connections fit in every process they pass through: the client
/// and the server hold one descriptor per connection, and so does each ztunnel (the client
/// node's accepted it, the server node's opened one to the server; HBONE is pooled), plus a
/// margin for everything else. Returns how many idle connections to open: fewer, with a
/// message, when the limit cannot be raised that far.
fn raise_fd_limit(idle: usize) -> anyhow::Result<usize> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    const MARGIN: u64 = 4096;
    let want = idle as u64 + MARGIN;
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    // Root may raise the hard limit (up to fs.nr_open).
    if setrlimit(Resource::RLIMIT_NOFILE, want.max(hard), want.max(hard)).is_err() {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    let (soft, _) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft >= want {
        return Ok(idle);
    }
    let fits = usize::try_from(soft.saturating_sub(MARGIN))?;
    eprintln!(
        "mesh-bench: the descriptor limit is {soft} and could not be raised to {want}: measuring \
         {fits} idle connections instead of {idle} (raise the hard limit, `ulimit -Hn`, or fs.nr_open)"
    );
    Ok(fits)
}

/// Fails unless iperf3 is there, installing it with apt-get when it is missing.
fn ensure_iperf3() -> anyhow::Result<()> {
    if require_tool("iperf3", "iperf3").is_ok() {
        return Ok(());
    }
    eprintln!("iperf3 is missing: apt-get install -y iperf3...");
    let _ = std::process::Command::new("apt-get")
        .args(["install", "-y", "-qq", "iperf3"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status();
    require_tool("iperf3", "iperf3")
}

/// `nproc`, the CPU model and the load average, for the record.
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown", |(_, m)| m.trim())
        .to_string();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    format!(
        "{} cores (nproc), CPU {model:?}; load average at start {}",
        upstream::our_workers(),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    )
}

fn bench(a: &[&str]) -> anyhow::Result<()> {
    let cfg = parse_cfg(a)?;
    e2e::require_root();
    let tcp = cfg.smoke || cfg.only != Only::Http;
    let scale = !cfg.smoke && cfg.only == Only::Scaling;
    if !cfg.smoke {
        ensure_iperf3()?;
    }
    require_tool("curl", "curl")?;
    let upstream_bin = if tcp {
        upstream_binary(&cfg.upstream)?
    } else {
        None
    };
    let idle = if cfg.smoke {
        0
    } else {
        raise_fd_limit(cfg.idle)?
    };
    let machine = machine();
    eprintln!("machine: {machine}");
    // Before the cluster: its compile and run must not overlap the measurements.
    let hbone = (!cfg.smoke && tcp && !scale && cfg.hbone_bench).then(inproc::hbone_bench);
    down_on_signals()?;

    let me = std::env::current_exe()?;
    let me_str = me.to_str().context("the benchmark's path is not UTF-8")?;
    let meshctl = e2e::Topology::binary("meshctl")?;
    let c = Cluster::up(meshctl)?;
    c.ok(&["label", "ns", MESH, "istio.io/dataplane-mode=ambient"])?;

    // The same placement in both namespaces: client and a server on n1, a server on n2. A
    // server pod runs the iperf3 server (not in the smoke), the 1 KiB request/response server,
    // the HTTP server and the one-byte new-connection server.
    let me_q = sh_quote(me_str);
    let mut server_cmd = format!(
        "{me_q} serve-http {HTTP_PORT} & {me_q} serve-conn {CONN_PORT} & exec {me_q} serve {RR_PORT}"
    );
    let mut needles = vec![
        format!("listening on 0.0.0.0:{RR_PORT}"),
        format!("http listening on 0.0.0.0:{HTTP_PORT}"),
        format!("conn listening on 0.0.0.0:{CONN_PORT}"),
    ];
    if !cfg.smoke {
        // One iperf3 server per client of the scaling table (a server takes one test at a time).
        for port in (IPERF_PORT..).take(scaling::CLIENTS[scaling::CLIENTS.len() - 1]) {
            server_cmd = format!("iperf3 -s -p {port} --forceflush & {server_cmd}");
            needles.push(format!("Server listening on {port}"));
        }
    }
    let server = ["sh", "-c", server_cmd.as_str()];
    eprintln!("pods through the CNI chain...");
    let pc = c.pod_run(PLAIN, "client", "n1", "client", "", &[])?;
    let ps_same = c.pod_run(PLAIN, "server-same", "n1", "server", "", &server)?;
    let ps_cross = c.pod_run(PLAIN, "server-cross", "n2", "server", "", &server)?;
    let mc = c.pod_run(MESH, "client", "n1", "client", "", &[])?;
    let ms_same = c.pod_run(MESH, "server-same", "n1", "server", "", &server)?;
    let ms_cross = c.pod_run(MESH, "server-cross", "n2", "server", "", &server)?;
    // The scaling table's extra clients, on n1 in both namespaces.
    let mut extra = Vec::new();
    if scale {
        for ns in [PLAIN, MESH] {
            for name in ["client-2", "client-3", "client-4"] {
                extra.push(c.pod_run(ns, name, "n1", "client", "", &[])?);
            }
        }
    }
    let needles: Vec<&str> = needles.iter().map(String::as_str).collect();
    for s in [&ps_same, &ps_cross, &ms_same, &ms_cross] {
        c.wait_pod_log(s, &needles)?;
    }
    for p in [&pc, &ps_same, &ps_cross, &mc, &ms_same, &ms_cross]
        .into_iter()
        .chain(&extra)
    {
        compare::tune_pod(&c, p)?;
    }
    let (plain_extra, mesh_extra) = extra.split_at(extra.len() / 2);
    let mut captured = vec![&mc, &ms_same, &ms_cross];
    captured.extend(mesh_extra);
    c.wait_captured(&captured)?;
    c.wait_hbone(mc.node, &[&ms_same, &ms_cross])?;
    let mut clients = vec![&mc];
    clients.extend(mesh_extra);
    c.wait_hbone(ms_cross.node, &clients)?;
    let plain_rows = c.pods(PLAIN)?;
    if let Some(r) = plain_rows.iter().find(|r| r.captured) {
        bail!(
            "pod {PLAIN}/{} is captured: namespace {PLAIN} must stay out of the mesh",
            r.name
        );
    }
    eprintln!("the mesh pods are captured and n1's ztunnel knows the servers as HBONE workloads");

    let mut cmp = Compare {
        c: &c,
        me: me_str,
        plain: Pods {
            client: &pc,
            same: &ps_same,
            cross: &ps_cross,
        },
        mesh: Pods {
            client: &mc,
            same: &ms_same,
            cross: &ms_cross,
        },
        upstream: upstream_bin.map(upstream::Upstream::new),
    };
    if cfg.smoke {
        smoke::run(&mut cmp)?;
        drop(cmp);
        drop(c);
        return Ok(());
    }
    if scale {
        let plain = scaling::ScalePods {
            clients: std::iter::once(&pc).chain(plain_extra).collect(),
            server: &ps_cross,
        };
        let mesh = scaling::ScalePods {
            clients,
            server: &ms_cross,
        };
        scaling::run(&mut cmp, &cfg, &plain, &mesh)?;
        println!();
        println!("machine: {machine}");
        return Ok(());
    }
    if tcp {
        compare::run(&mut cmp, &cfg, idle)?;
        // Now, not at the end: a failure of the waypoint part must not lose them.
        println!();
        println!("machine: {machine}");
        if let Some(h) = &hbone {
            println!();
            println!("{h}");
        }
    }
    drop(cmp);
    if cfg.only != Only::Tcp {
        let zt_client = c.daemon_pid(&format!("ztunnel-{}", mc.node))?;
        let report = l7::run(
            &c,
            me_str,
            &cfg,
            (&pc, &ps_cross),
            (&mc, &ms_cross),
            zt_client,
        )?;
        l7::print(&cfg, &report);
    }
    drop(c);
    if !tcp {
        println!();
        println!("machine: {machine}");
    }
    Ok(())
}
