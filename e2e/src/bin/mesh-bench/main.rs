//! `mesh-bench`: the mesh benchmark (not a test: it never runs under `cargo test`).
//!
//! Runs on the local cluster of `meshctl`, as users run the mesh: `meshctl cluster up --nodes 2`
//! (istiod-lite, and a CNI node agent and a ztunnel per node), pods made through the real CNI
//! chain with `meshctl pod run`, enrolment by `meshctl label ns`. Two namespaces with the same
//! placement — `plain` (not labelled) and `mesh` (labelled `istio.io/dataplane-mode=ambient`) —
//! each with a client on n1, a server on n1 (same node) and a server on n2 (cross node). Runs
//! every measurement on both in the same run and prints a table with mesh/no-mesh ratios:
//!
//! - bulk throughput: `iperf3 -c` for 5 s (Gbit/s);
//! - latency p50/p90/p99 at a fixed request rate of 1 KiB request / 1 KiB response exchanges
//!   over persistent connections (open loop: latency counts from the scheduled send time);
//! - ztunnel cost: CPU seconds and peak RSS of the client node's ztunnel per 1000 requests,
//!   and its RSS with 1000 idle connections open through the mesh.
//!
//! And the HTTP comparison (`l7`): 1 KiB HTTP/1.1 requests with no mesh, through the L4 mesh
//! and through a waypoint (namespace `wp`, `meshctl waypoint apply -n wp --enroll-namespace`),
//! in interleaved rounds: saturation rate, latency at a fixed rate, and the waypoint's CPU per
//! 1000 requests and peak RSS.
//!
//! Needs root, `iperf3` and `curl`. Run it with `scripts/bench.sh` (release build; meshctl is
//! found through `E2E_BIN_DIR`, and finds istiod-lite, ztunnel and cni-plugin next to itself).
//! The cluster is taken down at the end, also on failure and on SIGINT, SIGTERM or SIGHUP. The
//! same binary is the server and the load generator inside the pods (`meshctl pod run|exec`):
//!
//! ```text
//! mesh-bench [--rate R] [--secs S] [--idle N] [--conns C]  the benchmark (500 req/s, 5 s, 1000, 8)
//!            [--http-rate R] [--rounds N] [--only tcp|http|all]    (1000 req/s, 3 rounds, all)
//! mesh-bench serve <port>                        1 KiB request -> 1 KiB response server
//! mesh-bench serve-http <port>                   the same over HTTP/1.1 (hyper, keep-alive)
//! mesh-bench load <ip:port> <rate> <secs> <conns> client (rate 0: closed loop); prints latencies
//! mesh-bench load-http <ip:port> <host> <rate> <secs> <conns>  the same over HTTP/1.1
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
mod http;
mod l7;
mod workload;

use std::io::{BufRead, BufReader};
use std::time::Duration;

use anyhow::{bail, Context as _};

use cluster::{down_on_signals, require_tool, sh_quote};
use cluster::{Cluster, PodRef};
use http::{serve_http, HttpConn};
use workload::{idle, load, serve, RawConn};
/// Request and response size.
const MSG: usize = 1024;
/// Latency server port.
const RR_PORT: u16 = 8080;
/// HTTP server port (the HTTP comparison, `l7`).
const HTTP_PORT: u16 = 8081;
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
}

pub(crate) struct Cfg {
    rate: f64,
    pub(crate) secs: f64,
    idle: usize,
    pub(crate) conns: usize,
    /// Fixed request rate of the HTTP comparison.
    pub(crate) http_rate: f64,
    /// Rounds of the HTTP comparison (medians are reported).
    pub(crate) rounds: usize,
    only: Only,
}

fn parse_cfg(a: &[&str]) -> anyhow::Result<Cfg> {
    let mut c = Cfg {
        rate: 500.0,
        secs: 5.0,
        idle: 1000,
        conns: 8,
        http_rate: 1000.0,
        rounds: 3,
        only: Only::All,
    };
    let mut it = a.iter();
    while let Some(k) = it.next() {
        let v = it
            .next()
            .ok_or_else(|| anyhow::anyhow!("{k} needs a value"))?;
        match *k {
            "--rate" => c.rate = v.parse()?,
            "--secs" => c.secs = v.parse()?,
            "--idle" => c.idle = v.parse()?,
            "--conns" => c.conns = v.parse()?,
            "--http-rate" => c.http_rate = v.parse()?,
            "--rounds" => c.rounds = v.parse()?,
            "--only" => {
                c.only = match *v {
                    "tcp" => Only::Tcp,
                    "http" => Only::Http,
                    "all" => Only::All,
                    _ => anyhow::bail!("--only takes tcp, http or all"),
                }
            }
            _ => anyhow::bail!("unknown argument {k}"),
        }
    }
    Ok(c)
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

fn iperf(c: &Cluster, client: &PodRef, server: &PodRef) -> anyhow::Result<f64> {
    let addr = server.ip.to_string();
    let port = IPERF_PORT.to_string();
    let out = e2e::retry_until("iperf3 -c", WAIT, || {
        c.exec(
            client,
            &["iperf3", "-c", &addr, "-p", &port, "-t", "5", "-J"],
        )
    })
    .map_err(|e| anyhow::anyhow!("iperf3: {e:#}\n{}", c.logs()))?;
    let v: serde_json::Value = serde_json::from_str(&out).context("iperf3 JSON")?;
    Ok(v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(f64::NAN)
        / 1e9)
}

fn run_load(
    c: &Cluster,
    me: &str,
    cfg: &Cfg,
    client: &PodRef,
    server: &PodRef,
) -> anyhow::Result<Lat> {
    let addr = server.addr(RR_PORT).to_string();
    let out = c
        .exec(
            client,
            &[
                me,
                "load",
                &addr,
                &cfg.rate.to_string(),
                &cfg.secs.to_string(),
                &cfg.conns.to_string(),
            ],
        )
        .map_err(|e| anyhow::anyhow!("load: {e:#}\n{}", c.logs()))?;
    eprintln!(
        "  load {}/{} -> {addr}: {}",
        client.namespace,
        client.name,
        out.trim()
    );
    Ok(parse_lat(&out))
}

pub(crate) fn ratio(mesh: f64, plain: f64) -> String {
    if plain > 0.0 && mesh.is_finite() {
        format!("{:.2}x", mesh / plain)
    } else {
        "-".into()
    }
}

fn bench(a: &[&str]) -> anyhow::Result<()> {
    let cfg = parse_cfg(a)?;
    e2e::require_root();
    require_tool("iperf3", "iperf3")?;
    require_tool("curl", "curl")?;
    // 1000 idle connections need ~2000+ descriptors in ztunnel: raise our soft limit to the
    // hard one; meshctl inherits it, and so do the daemons and pod commands it starts.
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    down_on_signals()?;

    let me = std::env::current_exe()?;
    let me_str = me.to_str().context("the benchmark's path is not UTF-8")?;
    let meshctl = e2e::Topology::binary("meshctl")?;
    let c = Cluster::up(meshctl)?;
    c.ok(&["label", "ns", MESH, "istio.io/dataplane-mode=ambient"])?;

    // The same placement in both namespaces: client and a server on n1, a server on n2. A
    // server pod runs the iperf3 server and the 1 KiB request/response server.
    let server_cmd = format!(
        "iperf3 -s -p {IPERF_PORT} --forceflush & {me} serve-http {HTTP_PORT} & exec {me} serve {RR_PORT}",
        me = sh_quote(me_str)
    );
    let server = ["sh", "-c", server_cmd.as_str()];
    eprintln!("pods through the CNI chain...");
    let pc = c.pod_run(PLAIN, "client", "n1", "client", "", &[])?;
    let ps_same = c.pod_run(PLAIN, "server-same", "n1", "server", "", &server)?;
    let ps_cross = c.pod_run(PLAIN, "server-cross", "n2", "server", "", &server)?;
    let mc = c.pod_run(MESH, "client", "n1", "client", "", &[])?;
    let ms_same = c.pod_run(MESH, "server-same", "n1", "server", "", &server)?;
    let ms_cross = c.pod_run(MESH, "server-cross", "n2", "server", "", &server)?;
    for s in [&ps_same, &ps_cross, &ms_same, &ms_cross] {
        c.wait_pod_log(
            s,
            &[
                &format!("listening on 0.0.0.0:{RR_PORT}"),
                &format!("Server listening on {IPERF_PORT}"),
                &format!("http listening on 0.0.0.0:{HTTP_PORT}"),
            ],
        )?;
    }
    c.wait_captured(&[&mc, &ms_same, &ms_cross])?;
    c.wait_hbone(mc.node, &[&ms_same, &ms_cross])?;
    c.wait_hbone(ms_cross.node, &[&mc])?;
    let plain_rows = c.pods(PLAIN)?;
    if let Some(r) = plain_rows.iter().find(|r| r.captured) {
        bail!(
            "pod {PLAIN}/{} is captured: namespace {PLAIN} must stay out of the mesh",
            r.name
        );
    }
    eprintln!("the mesh pods are captured and n1's ztunnel knows the servers as HBONE workloads");

    let zt_client = c.daemon_pid(&format!("ztunnel-{}", mc.node))?;
    let zt_server = c.daemon_pid(&format!("ztunnel-{}", ms_cross.node))?;

    if cfg.only != Only::Http {
        tcp(
            &c,
            me_str,
            &cfg,
            [&pc, &ps_same, &ps_cross],
            [&mc, &ms_same, &ms_cross],
            (zt_client, zt_server),
        )?;
    }
    if cfg.only != Only::Tcp {
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
    Ok(())
}

/// The TCP comparison (throughput, raw 1 KiB exchanges, idle connections) and its tables.
fn tcp(
    c: &Cluster,
    me_str: &str,
    cfg: &Cfg,
    [pc, ps_same, ps_cross]: [&PodRef; 3],
    [mc, ms_same, ms_cross]: [&PodRef; 3],
    (zt_client, zt_server): (u32, u32),
) -> anyhow::Result<()> {
    // (a) throughput
    eprintln!("throughput (iperf3 -t 5)...");
    let tp_same = (iperf(c, pc, ps_same)?, iperf(c, mc, ms_same)?);
    let tp_cross = (iperf(c, pc, ps_cross)?, iperf(c, mc, ms_cross)?);

    // (b) latency, (c) CPU per 1000 requests during the mesh runs
    eprintln!("latency ({} req/s for {} s)...", cfg.rate, cfg.secs);
    let lat_same_plain = run_load(c, me_str, cfg, pc, ps_same)?;
    let c0 = cpu_secs(zt_client);
    let lat_same_mesh = run_load(c, me_str, cfg, mc, ms_same)?;
    let cpu_same = cpu_secs(zt_client) - c0;
    let lat_cross_plain = run_load(c, me_str, cfg, pc, ps_cross)?;
    let (c0, s0) = (cpu_secs(zt_client), cpu_secs(zt_server));
    let lat_cross_mesh = run_load(c, me_str, cfg, mc, ms_cross)?;
    let cpu_cross = cpu_secs(zt_client) - c0;
    let cpu_cross_server = cpu_secs(zt_server) - s0;
    let hwm_client = status_mib(zt_client, "VmHWM");
    let hwm_server = status_mib(zt_server, "VmHWM");

    // (c) RSS with idle connections
    eprintln!("{} idle connections...", cfg.idle);
    let rss_before = (
        status_mib(zt_client, "VmRSS"),
        status_mib(zt_server, "VmRSS"),
    );
    let mut idle_proc = c.exec_spawn(
        mc,
        &[
            me_str,
            "idle",
            &ms_cross.addr(RR_PORT).to_string(),
            &cfg.idle.to_string(),
        ],
    )?;
    // `idle` prints its line once every connection is open, or exits with an error.
    let mut line = String::new();
    if let Some(out) = idle_proc.stdout.take() {
        let _ = BufReader::new(out).read_line(&mut line);
    }
    let idle_ok = line.trim() == format!("open {}", cfg.idle);
    if !idle_ok {
        eprintln!("idle connections failed: {:?}", line.trim());
    }
    let rss_idle = (
        status_mib(zt_client, "VmRSS"),
        status_mib(zt_server, "VmRSS"),
    );
    drop(idle_proc.stdin.take());
    let _ = idle_proc.wait();

    // ---------------------------------------------------------------- report
    let per_k = |cpu: f64, l: &Lat| cpu / (l.count.max(1) as f64 / 1000.0);
    println!();
    println!("| measurement | no mesh | mesh | mesh/no-mesh |\n| --- | ---: | ---: | ---: |");
    for (name, (p, m)) in [
        ("throughput same node (Gbit/s)", tp_same),
        ("throughput cross node (Gbit/s)", tp_cross),
    ] {
        println!("| {name} | {p:.2} | {m:.2} | {} |", ratio(m, p));
    }
    for (where_, p, m) in [
        ("same node", lat_same_plain, lat_same_mesh),
        ("cross node", lat_cross_plain, lat_cross_mesh),
    ] {
        for (q, pv, mv) in [
            ("p50", p.p50, m.p50),
            ("p90", p.p90, m.p90),
            ("p99", p.p99, m.p99),
        ] {
            println!(
                "| latency {where_} {q} (ms) | {pv:.3} | {mv:.3} | {} |",
                ratio(mv, pv)
            );
        }
        if p.errors + m.errors > 0 {
            println!(
                "| latency {where_} errors | {} | {} | |",
                p.errors, m.errors
            );
        }
    }
    println!();
    println!(
        "latency: {} req/s for {} s, {} B request / {} B response, {} persistent connections, open loop (from scheduled send time)",
        cfg.rate, cfg.secs, MSG, MSG, cfg.conns
    );
    println!();
    println!("| ztunnel cost | value |\n| --- | ---: |");
    println!(
        "| client-node ztunnel CPU per 1000 req, cross node (s) | {:.3} |",
        per_k(cpu_cross, &lat_cross_mesh)
    );
    println!(
        "| server-node ztunnel CPU per 1000 req, cross node (s) | {:.3} |",
        per_k(cpu_cross_server, &lat_cross_mesh)
    );
    println!(
        "| node ztunnel CPU per 1000 req, same node (both ends, s) | {:.3} |",
        per_k(cpu_same, &lat_same_mesh)
    );
    println!("| client-node ztunnel peak RSS, VmHWM (MiB) | {hwm_client:.1} |");
    println!("| server-node ztunnel peak RSS, VmHWM (MiB) | {hwm_server:.1} |");
    println!(
        "| client-node ztunnel RSS idle / with {} idle conns (MiB) | {:.1} / {} |",
        cfg.idle,
        rss_before.0,
        if idle_ok {
            format!("{:.1}", rss_idle.0)
        } else {
            "failed".into()
        }
    );
    println!(
        "| server-node ztunnel RSS idle / with {} idle conns (MiB) | {:.1} / {} |",
        cfg.idle,
        rss_before.1,
        if idle_ok {
            format!("{:.1}", rss_idle.1)
        } else {
            "failed".into()
        }
    );
    Ok(())
}
