//! `mesh-bench`: the mesh benchmark (not a test: it never runs under `cargo test`).
//!
//! Builds two nodes with the e2e fixture (istiod-lite, a ztunnel and a fake CNI agent per node),
//! a client pod on node 1, a server on node 1 (same node) and one on node 2 (cross node), each
//! twice: once plain (not captured, not enrolled) and once in the mesh (captured and enrolled).
//! Runs every measurement on both in the same run and prints a table with mesh/no-mesh ratios:
//!
//! - bulk throughput: `iperf3 -c` for 5 s (Gbit/s);
//! - latency p50/p90/p99 at a fixed request rate of 1 KiB request / 1 KiB response exchanges
//!   over persistent connections (open loop: latency counts from the scheduled send time);
//! - ztunnel cost: CPU seconds and peak RSS of the client node's ztunnel per 1000 requests,
//!   and its RSS with 1000 idle connections open through the mesh.
//!
//! Needs root. Run it with `scripts/bench.sh` (release build). The same binary is the load
//! generator inside the pods:
//!
//! ```text
//! mesh-bench [--rate R] [--secs S] [--idle N]   the benchmark (default 500 req/s, 5 s, 1000)
//! mesh-bench serve <port>                        1 KiB request -> 1 KiB response server
//! mesh-bench load <ip:port> <rate> <secs> <conns> fixed-rate client; prints latencies
//! mesh-bench idle <ip:port> <n>                  opens n connections and holds them
//! ```

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::expect_used,
    clippy::unwrap_used,
    missing_docs
)]

#[path = "../../tests/common/mod.rs"]
mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Mesh, WAIT};
use e2e::{Pod, Proc};

/// Request and response size.
const MSG: usize = 1024;
/// Latency server port.
const RR_PORT: u16 = 8080;
/// iperf3 port.
const IPERF_PORT: u16 = 5201;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = match a.as_slice() {
        ["serve", port] => serve(port.parse().expect("port")),
        ["load", addr, rate, secs, conns] => load(
            addr.parse().expect("addr"),
            rate.parse().expect("rate"),
            secs.parse().expect("secs"),
            conns.parse().expect("conns"),
        ),
        ["idle", addr, n] => idle(addr.parse().expect("addr"), n.parse().expect("n")),
        _ => bench(&a),
    };
    if let Err(e) = r {
        eprintln!("mesh-bench: {e:#}");
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------- in-pod helpers

fn serve(port: u16) -> anyhow::Result<()> {
    let l = TcpListener::bind(("0.0.0.0", port))?;
    println!("listening on 0.0.0.0:{port}");
    for s in l.incoming() {
        let Ok(mut s) = s else { continue };
        std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(move || {
                let _ = s.set_nodelay(true);
                let mut buf = [0u8; MSG];
                let resp = [b'r'; MSG];
                while s.read_exact(&mut buf).is_ok() {
                    if s.write_all(&resp).is_err() {
                        break;
                    }
                }
            })?;
    }
    Ok(())
}

/// Open-loop fixed-rate client: request `i` is due at `t0 + i/rate`; connection `i % conns`
/// sends it (persistent connections, opened before `t0`). Latency is measured from the due
/// time, so a stalled connection's backlog counts (no coordinated omission).
fn load(addr: SocketAddr, rate: f64, secs: f64, conns: usize) -> anyhow::Result<()> {
    let total = (rate * secs) as u64;
    let mut streams = Vec::new();
    for _ in 0..conns {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        streams.push(s);
    }
    // Warm each connection (the mesh opens its HBONE connection lazily).
    for s in &mut streams {
        s.write_all(&[b'q'; MSG])?;
        let mut buf = [0u8; MSG];
        s.read_exact(&mut buf)?;
    }
    let lat = Arc::new(Mutex::new(Vec::with_capacity(total as usize)));
    let errors = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now() + Duration::from_millis(50);
    let period = 1.0 / rate;
    let mut handles = Vec::new();
    for (k, mut s) in streams.into_iter().enumerate() {
        let lat = lat.clone();
        let errors = errors.clone();
        handles.push(std::thread::spawn(move || {
            let mut mine = Vec::new();
            let mut buf = [0u8; MSG];
            let req = [b'q'; MSG];
            let mut i = k as u64;
            while i < total {
                let due = t0 + Duration::from_secs_f64(i as f64 * period);
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                if s.write_all(&req).is_err() || s.read_exact(&mut buf).is_err() {
                    errors.fetch_add(
                        total.saturating_sub(i).div_ceil(conns as u64),
                        Ordering::Relaxed,
                    );
                    break;
                }
                mine.push(due.elapsed().as_micros() as u64);
                i += conns as u64;
            }
            lat.lock().unwrap().extend(mine);
        }));
    }
    for h in handles {
        let _ = h.join();
    }
    let wall = t0.elapsed().as_secs_f64();
    let mut lat = lat.lock().unwrap().clone();
    lat.sort_unstable();
    let p = |q: f64| -> u64 {
        if lat.is_empty() {
            0
        } else {
            lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)]
        }
    };
    println!(
        "count={} errors={} wall_s={wall:.3} p50_us={} p90_us={} p99_us={} max_us={}",
        lat.len(),
        errors.load(Ordering::Relaxed),
        p(0.50),
        p(0.90),
        p(0.99),
        lat.last().copied().unwrap_or(0)
    );
    Ok(())
}

fn idle(addr: SocketAddr, n: usize) -> anyhow::Result<()> {
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        // One exchange so the connection is really through end to end.
        s.write_all(&[b'q'; MSG])?;
        let mut buf = [0u8; MSG];
        s.read_exact(&mut buf)?;
        held.push(s);
    }
    println!("open {n}");
    std::thread::sleep(Duration::from_secs(600));
    drop(held);
    Ok(())
}

// ---------------------------------------------------------------- orchestration

struct Cfg {
    rate: f64,
    secs: f64,
    idle: usize,
    conns: usize,
}

fn parse_cfg(a: &[&str]) -> anyhow::Result<Cfg> {
    let mut c = Cfg {
        rate: 500.0,
        secs: 5.0,
        idle: 1000,
        conns: 8,
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
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("proc stat");
    let rest = &stat[stat.rfind(')').expect("stat") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / clk_tck()
}

/// A `/proc/<pid>/status` field in MiB (`VmRSS`, `VmHWM`).
fn status_mib(pid: u32, field: &str) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    s.lines()
        .find(|l| l.starts_with(&format!("{field}:")))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

#[derive(Default, Clone, Copy)]
struct Lat {
    count: u64,
    errors: u64,
    p50: f64,
    p90: f64,
    p99: f64,
}

fn parse_lat(out: &str) -> Lat {
    let get = |k: &str| -> f64 {
        out.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN)
    };
    Lat {
        count: get("count") as u64,
        errors: get("errors") as u64,
        p50: get("p50_us") / 1000.0,
        p90: get("p90_us") / 1000.0,
        p99: get("p99_us") / 1000.0,
    }
}

fn iperf(mesh: &Mesh, client: &Pod, server: &Pod) -> f64 {
    let addr = server.ip.to_string();
    let port = IPERF_PORT.to_string();
    let out = e2e::retry_until("iperf3 -c", WAIT, || {
        mesh.topo.exec_in(
            client,
            "iperf3",
            &["-c", &addr, "-p", &port, "-t", "5", "-J"],
        )
    })
    .unwrap_or_else(|e| panic!("iperf3: {e:#}\n{}", mesh.logs()));
    let v: serde_json::Value = serde_json::from_str(&out).expect("iperf3 JSON");
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(f64::NAN)
        / 1e9
}

fn run_load(mesh: &Mesh, cfg: &Cfg, client: &Pod, server: &Pod) -> Lat {
    let me = std::env::current_exe().expect("exe");
    let addr = server.addr(RR_PORT).to_string();
    let out = mesh
        .topo
        .exec_in(
            client,
            &me,
            &[
                "load",
                &addr,
                &cfg.rate.to_string(),
                &cfg.secs.to_string(),
                &cfg.conns.to_string(),
            ],
        )
        .unwrap_or_else(|e| panic!("load: {e:#}\n{}", mesh.logs()));
    eprintln!("  load {} -> {addr}: {}", client.name, out.trim());
    parse_lat(&out)
}

fn ratio(mesh: f64, plain: f64) -> String {
    if plain > 0.0 && mesh.is_finite() {
        format!("{:.2}x", mesh / plain)
    } else {
        "-".into()
    }
}

fn bench(a: &[&str]) -> anyhow::Result<()> {
    let cfg = parse_cfg(a)?;
    e2e::require_root();
    // 1000 idle connections need ~2000+ descriptors in ztunnel: raise our soft limit to the
    // hard one; every process we start inherits it.
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;

    let me = std::env::current_exe()?;
    let mut mesh = Mesh::new("mesh_bench", 2);
    mesh.ambient_namespaces = vec!["mesh".into()];
    // Plain pods (never captured nor enrolled) and meshed pods, same placement.
    let pc = mesh.pod(0, "plain", "client", "client", "client", false);
    let ps_same = mesh.pod(0, "plain", "server-same", "server", "server", false);
    let ps_cross = mesh.pod(1, "plain", "server-cross", "server", "server", false);
    let mc = mesh.pod(0, "mesh", "client", "client", "client", true);
    let ms_same = mesh.pod(0, "mesh", "server-same", "server", "server", true);
    let ms_cross = mesh.pod(1, "mesh", "server-cross", "server", "server", true);
    mesh.start();
    for p in [&mc, &ms_same, &ms_cross] {
        mesh.enroll(p);
    }
    for p in [&ms_same, &ms_cross] {
        mesh.wait_workload(0, &p.uid);
    }
    mesh.wait_workload(1, &mc.uid);

    let mut servers: Vec<Proc> = Vec::new();
    for s in [&ps_same, &ps_cross, &ms_same, &ms_cross] {
        let rr = mesh
            .topo
            .spawn_in(s, &me, &["serve", &RR_PORT.to_string()], &[])?;
        rr.wait_for_log("listening", WAIT)?;
        servers.push(rr);
        servers.push(mesh.topo.spawn_in(
            s,
            PathBuf::from("iperf3"),
            &["-s", "-p", &IPERF_PORT.to_string()],
            &[],
        )?);
    }

    let zt_client = mesh.ztunnels[&mesh.nodes[0].name].pid();
    let zt_server = mesh.ztunnels[&mesh.nodes[1].name].pid();

    // (a) throughput
    eprintln!("throughput (iperf3 -t 5)...");
    let tp_same = (iperf(&mesh, &pc, &ps_same), iperf(&mesh, &mc, &ms_same));
    let tp_cross = (iperf(&mesh, &pc, &ps_cross), iperf(&mesh, &mc, &ms_cross));

    // (b) latency, (c) CPU per 1000 requests during the mesh runs
    eprintln!("latency ({} req/s for {} s)...", cfg.rate, cfg.secs);
    let lat_same_plain = run_load(&mesh, &cfg, &pc, &ps_same);
    let c0 = cpu_secs(zt_client);
    let lat_same_mesh = run_load(&mesh, &cfg, &mc, &ms_same);
    let cpu_same = cpu_secs(zt_client) - c0;
    let lat_cross_plain = run_load(&mesh, &cfg, &pc, &ps_cross);
    let (c0, s0) = (cpu_secs(zt_client), cpu_secs(zt_server));
    let lat_cross_mesh = run_load(&mesh, &cfg, &mc, &ms_cross);
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
    let idle_proc = mesh.topo.spawn_in(
        &mc,
        &me,
        &[
            "idle",
            &ms_cross.addr(RR_PORT).to_string(),
            &cfg.idle.to_string(),
        ],
        &[],
    )?;
    let idle_ok = idle_proc
        .wait_for_log(&format!("open {}", cfg.idle), Duration::from_secs(120))
        .map_err(|e| eprintln!("idle connections: {e:#}"))
        .is_ok();
    let rss_idle = (
        status_mib(zt_client, "VmRSS"),
        status_mib(zt_server, "VmRSS"),
    );
    let _ = idle_proc.stop();

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
    drop(servers);
    Ok(())
}
