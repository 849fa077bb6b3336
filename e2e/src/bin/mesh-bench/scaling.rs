//! Scaling with data-plane workers: 1, 2 and 4 client pods on n1, each with one bulk
//! connection (`iperf3 -c -P 1`) to its own iperf3 server in the server pod on n2, with the
//! ztunnels of both nodes running 1 and then 2 data-plane workers (ours:
//! `ZTUNNEL_WORKER_THREADS`, restarted with `meshctl cluster stop|start ztunnel`; upstream: the
//! same variable). Per cell: the total throughput, and each ztunnel's CPU in cores over the
//! run (CPU-seconds ÷ wall seconds), so "scales with workers" can be read as throughput and CPU
//! going up together from 1 to 2 workers. No mesh runs the same clients for reference.
//! Interleaved rounds, medians, as the side-by-side comparison.

use std::time::Instant;

use anyhow::Context as _;

use crate::cluster::{Cluster, PodRef};
use crate::compare::{Compare, NODES};
use crate::report::{self, Mesh, Row, Samples};
use crate::{cpu_secs, Cfg, IPERF_PORT};

/// Client counts.
pub(crate) const CLIENTS: [usize; 3] = [1, 2, 4];
/// Data-plane worker counts of both nodes' ztunnels.
const WORKERS: [usize; 2] = [1, 2];

/// The pods of one namespace: four clients on n1, the server on n2.
pub(crate) struct ScalePods<'a> {
    pub(crate) clients: Vec<&'a PodRef>,
    pub(crate) server: &'a PodRef,
}

/// Row keys: (workers, clients) -> (throughput, n1 cores, n2 cores).
const KEYS: [[[&str; 3]; 3]; 2] = [
    [
        ["w1c1_gbps", "w1c1_cpu1", "w1c1_cpu2"],
        ["w1c2_gbps", "w1c2_cpu1", "w1c2_cpu2"],
        ["w1c4_gbps", "w1c4_cpu1", "w1c4_cpu2"],
    ],
    [
        ["w2c1_gbps", "w2c1_cpu1", "w2c1_cpu2"],
        ["w2c2_gbps", "w2c2_cpu1", "w2c2_cpu2"],
        ["w2c4_gbps", "w2c4_cpu1", "w2c4_cpu2"],
    ],
];

/// Restarts the ztunnels that carry `m` with `workers` data-plane workers.
fn set_workers(cmp: &mut Compare<'_>, m: Mesh, workers: usize) -> anyhow::Result<()> {
    let c = cmp.c;
    match m {
        Mesh::Plain => return Ok(()),
        Mesh::Ours => {
            if let Some(up) = cmp.upstream.as_mut() {
                up.stop_procs();
            }
            c.ok(&["cluster", "stop", "ztunnel"])?;
            let out = c
                .command(&["cluster", "start", "ztunnel"])
                .env("ZTUNNEL_WORKER_THREADS", workers.to_string())
                .output()
                .context("meshctl cluster start ztunnel")?;
            anyhow::ensure!(
                out.status.success(),
                "meshctl cluster start ztunnel: {}{}",
                String::from_utf8_lossy(&out.stderr),
                c.logs()
            );
        }
        Mesh::Upstream => {
            let up = cmp.upstream.as_mut().context("no upstream binary")?;
            up.stop_procs();
            up.workers = workers;
        }
    }
    // Waits for the pods to be served again (and probes every path).
    cmp.select(m)
}

/// `iperf3 -c` from every client at once, each to its own server port; total Gbit/s.
fn bulk(c: &Cluster, pods: &ScalePods<'_>, n: usize, secs: f64) -> anyhow::Result<f64> {
    let t = format!("{}", secs.ceil().max(1.0));
    let addr = pods.server.ip.to_string();
    std::thread::scope(|scope| {
        let runs: Vec<_> = pods.clients[..n]
            .iter()
            .enumerate()
            .map(|(i, client)| {
                let port = (IPERF_PORT + i as u16).to_string();
                let (addr, t) = (&addr, &t);
                scope.spawn(move || -> anyhow::Result<f64> {
                    let out =
                        c.exec(client, &["iperf3", "-c", addr, "-p", &port, "-t", t, "-J"])?;
                    let v: serde_json::Value = serde_json::from_str(&out).context("iperf3 JSON")?;
                    Ok(v["end"]["sum_received"]["bits_per_second"]
                        .as_f64()
                        .unwrap_or(f64::NAN)
                        / 1e9)
                })
            })
            .collect();
        let mut total = 0.0;
        for r in runs {
            total += r
                .join()
                .map_err(|_| anyhow::anyhow!("iperf3 thread panicked"))??;
        }
        Ok(total)
    })
}

/// One cell: `n` clients through mesh `m` (already set to its worker count).
fn cell(
    cmp: &Compare<'_>,
    m: Mesh,
    pods: &ScalePods<'_>,
    n: usize,
    secs: f64,
    keys: [&'static str; 3],
    s: &mut Samples,
) -> anyhow::Result<()> {
    let pid = |node| cmp.ztunnel(m, node);
    let (z1, z2) = (pid(NODES[0])?, pid(NODES[1])?);
    let cpu = |p: Option<u32>| p.map_or(f64::NAN, cpu_secs);
    let (c1, c2, start) = (cpu(z1), cpu(z2), Instant::now());
    let gbps = bulk(cmp.c, pods, n, secs)?;
    let wall = start.elapsed().as_secs_f64();
    eprintln!("  {} {n} clients: {gbps:.2} Gbit/s", m.label());
    s.add(m, keys[0], gbps);
    s.add(m, keys[1], (cpu(z1) - c1) / wall);
    s.add(m, keys[2], (cpu(z2) - c2) / wall);
    Ok(())
}

/// Runs the rounds and prints the table; leaves ours running with its default workers.
pub(crate) fn run(
    cmp: &mut Compare<'_>,
    cfg: &Cfg,
    plain: &ScalePods<'_>,
    mesh: &ScalePods<'_>,
) -> anyhow::Result<()> {
    let meshes = cmp.meshes();
    let mut s = Samples::default();
    for round in 1..=cfg.rounds {
        for &m in &meshes {
            let pods = if m == Mesh::Plain { plain } else { mesh };
            for (wi, &workers) in WORKERS.iter().enumerate() {
                eprintln!(
                    "scaling round {round}/{}: {}, {workers} workers...",
                    cfg.rounds,
                    m.label()
                );
                set_workers(cmp, m, workers)?;
                for (ci, &n) in CLIENTS.iter().enumerate() {
                    cell(cmp, m, pods, n, cfg.secs, KEYS[wi][ci], &mut s)?;
                }
            }
        }
    }
    set_workers(cmp, Mesh::Ours, crate::upstream::our_workers())?;
    print(cfg, &meshes, &s);
    Ok(())
}

fn print(cfg: &Cfg, meshes: &[Mesh], s: &Samples) {
    let mut rows = Vec::new();
    for (wi, workers) in WORKERS.iter().enumerate() {
        for (ci, clients) in CLIENTS.iter().enumerate() {
            let [gbps, cpu1, cpu2] = KEYS[wi][ci];
            let what = format!("{clients} clients, {workers} workers");
            rows.push(Row {
                key: gbps,
                label: format!("bulk, {what} (Gbit/s)"),
                decimals: 2,
            });
            rows.push(Row {
                key: cpu1,
                label: format!("n1 ztunnel CPU (cores), {what}"),
                decimals: 2,
            });
            rows.push(Row {
                key: cpu2,
                label: format!("n2 ztunnel CPU (cores), {what}"),
                decimals: 2,
            });
        }
    }
    report::print(
        &format!(
            "Scaling: one iperf3 connection per client pod (n1 -> n2), ztunnels with 1 and 2 workers; median of {} rounds (min–max)",
            cfg.rounds
        ),
        &rows,
        meshes,
        s,
        cfg.rounds,
    );
    println!();
    println!(
        "| 2 workers ÷ 1 worker | {} |",
        meshes
            .iter()
            .map(|m| m.label())
            .collect::<Vec<_>>()
            .join(" | ")
    );
    println!("| --- |{}", " ---: |".repeat(meshes.len()));
    for (ci, clients) in CLIENTS.iter().enumerate() {
        for (i, what) in [(0, "throughput"), (1, "n1 ztunnel CPU")] {
            let cells: Vec<String> = meshes
                .iter()
                .map(|&m| {
                    let one = s.stats(m, KEYS[0][ci][i]).map(|v| v.0);
                    let two = s.stats(m, KEYS[1][ci][i]).map(|v| v.0);
                    match (one, two) {
                        (Some(a), Some(b)) if a > 0.0 && b.is_finite() => format!("{:.2}x", b / a),
                        _ => "-".into(),
                    }
                })
                .collect();
            println!("| {what}, {clients} clients | {} |", cells.join(" | "));
        }
    }
}
