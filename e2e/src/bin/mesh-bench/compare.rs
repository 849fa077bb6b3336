//! One benchmark, three meshes: the same pods and workloads with no mesh (namespace `plain`),
//! through our ztunnel, and through upstream Istio ztunnel standing in for ours on both nodes
//! (namespace `mesh` for both), interleaved round by round so that a slow period of the shared
//! machine hits every mesh.
//!
//! Each pass of a mesh: idle RSS of each node's ztunnel (just started and probed), bulk
//! throughput (`iperf3`, 1 and 8 connections), 1 KiB HTTP/1.1 requests at a fixed rate (p50,
//! p99, and each ztunnel's CPU-seconds per 1000 requests over that pass), the saturation rate
//! (closed loop), the new-connection rate (connect, one byte each way, close; closed loop),
//! each ztunnel's peak RSS, then its RSS while N idle connections are held open across nodes.
//! Every workload runs same node (client and server on n1) and cross node (server on n2).

use std::io::{BufRead as _, BufReader};
use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;

use crate::cluster::{Cluster, PodRef};
use crate::report::{self, Mesh, Row, Samples};
use crate::upstream::Upstream;
use crate::{cpu_secs, parse_lat, status_mib, Cfg, Lat, CONN_PORT, HTTP_PORT, IPERF_PORT, RR_PORT};
use crate::{MSG, WAIT};

/// A namespace's pods: a client on n1, a server on n1 and a server on n2.
#[derive(Clone, Copy)]
pub(crate) struct Pods<'a> {
    pub(crate) client: &'a PodRef,
    pub(crate) same: &'a PodRef,
    pub(crate) cross: &'a PodRef,
}

/// The comparison's state: the cluster, its pods, and upstream when it stands in.
pub(crate) struct Compare<'a> {
    pub(crate) c: &'a Cluster,
    pub(crate) me: &'a str,
    pub(crate) plain: Pods<'a>,
    pub(crate) mesh: Pods<'a>,
    pub(crate) upstream: Option<Upstream>,
}

/// The nodes of the benchmark's cluster.
pub(crate) const NODES: [&str; 2] = ["n1", "n2"];

impl<'a> Compare<'a> {
    /// The meshes to compare: upstream only when its binary was found.
    pub(crate) fn meshes(&self) -> Vec<Mesh> {
        let mut m = vec![Mesh::Plain, Mesh::Ours];
        if self.upstream.is_some() {
            m.push(Mesh::Upstream);
        }
        m
    }

    pub(crate) fn pods(&self, m: Mesh) -> Pods<'a> {
        if m == Mesh::Plain {
            self.plain
        } else {
            self.mesh
        }
    }

    /// Makes `m` the mesh the `mesh` namespace's pods go through (no mesh: leaves whichever
    /// runs; the `plain` pods do not use it), then checks that both servers answer.
    pub(crate) fn select(&mut self, m: Mesh) -> anyhow::Result<()> {
        let p = self.mesh;
        match m {
            Mesh::Plain => {}
            Mesh::Ours => {
                if let Some(up) = self.upstream.as_mut() {
                    up.swap_out(self.c)?;
                }
                self.c.wait_hbone(p.client.node, &[p.same, p.cross])?;
                self.c.wait_hbone(p.cross.node, &[p.client])?;
            }
            Mesh::Upstream => {
                let up = self.upstream.as_mut().context("no upstream binary")?;
                eprintln!("upstream ztunnel stands in for ours on both nodes...");
                up.swap_in(
                    self.c,
                    &NODES,
                    &[vec![p.client, p.same], vec![p.cross]],
                    &[p.client, p.same, p.cross],
                )?;
            }
        }
        let pods = self.pods(m);
        for server in [pods.same, pods.cross] {
            self.probe(pods.client, server)?;
        }
        Ok(())
    }

    /// Until one exchange through the path works (the proxy may still be opening the pod's
    /// listeners).
    pub(crate) fn probe(&self, client: &PodRef, server: &PodRef) -> anyhow::Result<()> {
        e2e::retry_until(
            &format!(
                "{}/{} to reach {}",
                client.namespace, client.name, server.name
            ),
            WAIT,
            || {
                let l = self.load(client, "load", server.addr(RR_PORT), 50.0, 0.2, 1)?;
                anyhow::ensure!(l.count > 0 && l.errors == 0, "no exchange: {l:?}");
                Ok(())
            },
        )
        .map_err(|e| anyhow::anyhow!("{e:#}\n{}", self.c.logs()))
    }

    /// The pid of the ztunnel of `node` for mesh `m` (None with no mesh).
    pub(crate) fn ztunnel(&self, m: Mesh, node: &str) -> anyhow::Result<Option<u32>> {
        Ok(match m {
            Mesh::Plain => None,
            Mesh::Ours => Some(self.c.daemon_pid(&format!("ztunnel-{node}"))?),
            Mesh::Upstream => self.upstream.as_ref().and_then(|u| u.pid(node)),
        })
    }

    /// Runs a load generator of mesh-bench (`load`, `load-http` or `load-conn`) in `client`.
    pub(crate) fn load(
        &self,
        client: &PodRef,
        kind: &str,
        addr: std::net::SocketAddr,
        rate: f64,
        secs: f64,
        conns: usize,
    ) -> anyhow::Result<Lat> {
        let addr = addr.to_string();
        let (rate, secs, conns) = (rate.to_string(), secs.to_string(), conns.to_string());
        let mut args = vec![self.me, kind, &addr];
        if kind == "load-http" {
            args.push("bench");
        }
        args.extend([rate.as_str(), &secs, &conns]);
        let out = self.c.exec(client, &args)?;
        eprintln!(
            "  {kind} {}/{} -> {addr} at {rate}/s: {}",
            client.namespace,
            client.name,
            out.trim()
        );
        Ok(parse_lat(&out))
    }

    fn iperf(
        &self,
        pods: Pods<'_>,
        server: &PodRef,
        secs: f64,
        streams: u32,
    ) -> anyhow::Result<f64> {
        let (addr, port) = (server.ip.to_string(), IPERF_PORT.to_string());
        let (t, p) = (format!("{}", secs.ceil().max(1.0)), streams.to_string());
        let out = e2e::retry_until("iperf3 -c", WAIT, || {
            self.c.exec(
                pods.client,
                &["iperf3", "-c", &addr, "-p", &port, "-t", &t, "-P", &p, "-J"],
            )
        })
        .map_err(|e| anyhow::anyhow!("iperf3: {e:#}\n{}", self.c.logs()))?;
        let v: serde_json::Value = serde_json::from_str(&out).context("iperf3 JSON")?;
        let gbps = v["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .unwrap_or(f64::NAN)
            / 1e9;
        eprintln!(
            "  iperf3 -P {streams} {}/{} -> {}: {gbps:.2} Gbit/s",
            pods.client.namespace, pods.client.name, server.name
        );
        Ok(gbps)
    }

    /// One pass of mesh `m`: every measurement, into `s`.
    pub(crate) fn pass(
        &mut self,
        m: Mesh,
        cfg: &Cfg,
        idle: usize,
        s: &mut Samples,
    ) -> anyhow::Result<()> {
        let swapped_out = self.upstream.as_ref().is_some_and(|u| !u.procs.is_empty());
        if m == Mesh::Ours && !swapped_out {
            // Every pass of ours starts from a fresh ztunnel, as it does after upstream's pass
            // (its idle RSS is then not what an earlier round left behind).
            self.c.ok(&["cluster", "restart", "ztunnel"])?;
        }
        self.select(m)?;
        let pods = self.pods(m);
        let z1 = self.ztunnel(m, "n1")?;
        let z2 = self.ztunnel(m, "n2")?;
        let rss = |pid: Option<u32>, f: &str| pid.map_or(f64::NAN, |p| status_mib(p, f));
        let cpu = |pid: Option<u32>| pid.map_or(f64::NAN, cpu_secs);
        s.add(m, "idle_n1", rss(z1, "VmRSS"));
        s.add(m, "idle_n2", rss(z2, "VmRSS"));

        for (key, server, streams) in [
            ("bulk1_same", pods.same, 1),
            ("bulk1_cross", pods.cross, 1),
            ("bulk8_same", pods.same, 8),
            ("bulk8_cross", pods.cross, 8),
        ] {
            let v = self.iperf(pods, server, cfg.secs, streams)?;
            s.add(m, key, v);
        }

        let mut errors = 0;
        // Fixed rate: latency, and the CPU each ztunnel spent per 1000 requests.
        let c1 = cpu(z1);
        let same = self.load(
            pods.client,
            "load-http",
            pods.same.addr(HTTP_PORT),
            cfg.rate,
            cfg.secs,
            cfg.conns,
        )?;
        let per_k = |cpu: f64, l: &Lat| cpu / (l.count.max(1) as f64 / 1000.0);
        s.add(m, "cpu_same", per_k(cpu(z1) - c1, &same));
        let (c1, c2) = (cpu(z1), cpu(z2));
        let cross = self.load(
            pods.client,
            "load-http",
            pods.cross.addr(HTTP_PORT),
            cfg.rate,
            cfg.secs,
            cfg.conns,
        )?;
        s.add(m, "cpu_client", per_k(cpu(z1) - c1, &cross));
        s.add(m, "cpu_server", per_k(cpu(z2) - c2, &cross));
        for (suffix, l) in [("same", same), ("cross", cross)] {
            s.add(m, key("p50", suffix), l.p50);
            s.add(m, key("p99", suffix), l.p99);
            errors += l.errors;
        }

        // Closed loop: the saturation rate and the new-connection rate.
        for (suffix, server) in [("same", pods.same), ("cross", pods.cross)] {
            let sat = self.load(
                pods.client,
                "load-http",
                server.addr(HTTP_PORT),
                0.0,
                cfg.secs,
                cfg.conns,
            )?;
            s.add(m, key("sat", suffix), sat.rps);
            // Whatever mesh ran before, this pass starts with no TIME_WAIT in either pod.
            clear_time_wait(self.c, pods.client)?;
            clear_time_wait(self.c, server)?;
            let conn = self.load(
                pods.client,
                "load-conn",
                server.addr(CONN_PORT),
                0.0,
                cfg.conn_secs.unwrap_or(cfg.secs),
                cfg.conns,
            )?;
            s.add(m, key("conn", suffix), conn.rps);
            errors += sat.errors + conn.errors;
        }
        s.add(m, "hwm_n1", rss(z1, "VmHWM"));
        s.add(m, "hwm_n2", rss(z2, "VmHWM"));
        *s.errors.entry(m).or_default() += errors;

        if m != Mesh::Plain && idle > 0 {
            self.idle(m, idle, (z1, z2), s)?;
        }
        Ok(())
    }

    /// RSS of both ztunnels with `n` idle connections held from the client on n1 to the
    /// server on n2 (each carried one 1 KiB exchange first).
    fn idle(
        &self,
        m: Mesh,
        n: usize,
        (z1, z2): (Option<u32>, Option<u32>),
        s: &mut Samples,
    ) -> anyhow::Result<()> {
        let pods = self.pods(m);
        let rss = |pid: Option<u32>| pid.map_or(f64::NAN, |p| status_mib(p, "VmRSS"));
        let before = (rss(z1), rss(z2));
        let addr = pods.cross.addr(RR_PORT).to_string();
        let mut proc = self
            .c
            .exec_spawn(pods.client, &[self.me, "idle", &addr, &n.to_string()])?;
        // `idle` prints its line once every connection is open, or exits with an error.
        let mut line = String::new();
        if let Some(out) = proc.stdout.take() {
            let _ = BufReader::new(out).read_line(&mut line);
        }
        let ok = line.trim() == format!("open {n}");
        if ok {
            // Let both ends finish setting up the last connections.
            std::thread::sleep(Duration::from_millis(500));
            let with = (rss(z1), rss(z2));
            eprintln!(
                "  {n} idle connections: n1 ztunnel {:.1} -> {:.1} MiB, n2 {:.1} -> {:.1} MiB",
                before.0, with.0, before.1, with.1
            );
            s.add(m, "idleconns_n1", with.0);
            s.add(m, "idleconns_n2", with.1);
            let kib = |a: f64, b: f64| (b - a) * 1024.0 / n as f64;
            s.add(m, "perconn_n1", kib(before.0, with.0));
            s.add(m, "perconn_n2", kib(before.1, with.1));
        } else {
            eprintln!(
                "  {n} idle connections through {} failed: {:?}",
                m.label(),
                line.trim()
            );
            *s.errors.entry(m).or_default() += 1;
        }
        drop(proc.stdin.take());
        let _ = proc.wait();
        // Both ztunnels close n connections; let them before the next pass.
        std::thread::sleep(Duration::from_secs(1));
        Ok(())
    }
}

/// `p50` + `same` -> `p50_same`, as a static key.
fn key(metric: &str, suffix: &str) -> &'static str {
    ROWS.iter()
        .map(|(k, _, _)| *k)
        .find(|k| k.strip_prefix(metric).and_then(|r| r.strip_prefix('_')) == Some(suffix))
        .expect("a row for every measured key")
}

/// Every row: key, label (`{rate}` and `{idle}` are filled in), decimals.
const ROWS: &[(&str, &str, usize)] = &[
    ("bulk1_same", "bulk, 1 connection, same node (Gbit/s)", 2),
    ("bulk1_cross", "bulk, 1 connection, cross node (Gbit/s)", 2),
    ("bulk8_same", "bulk, 8 connections, same node (Gbit/s)", 2),
    ("bulk8_cross", "bulk, 8 connections, cross node (Gbit/s)", 2),
    (
        "p50_same",
        "HTTP 1 KiB p50 at {rate} req/s, same node (ms)",
        3,
    ),
    (
        "p99_same",
        "HTTP 1 KiB p99 at {rate} req/s, same node (ms)",
        3,
    ),
    (
        "p50_cross",
        "HTTP 1 KiB p50 at {rate} req/s, cross node (ms)",
        3,
    ),
    (
        "p99_cross",
        "HTTP 1 KiB p99 at {rate} req/s, cross node (ms)",
        3,
    ),
    ("sat_same", "HTTP 1 KiB saturation, same node (req/s)", 0),
    ("sat_cross", "HTTP 1 KiB saturation, cross node (req/s)", 0),
    ("conn_same", "new connections, same node (conn/s)", 0),
    ("conn_cross", "new connections, cross node (conn/s)", 0),
    (
        "cpu_same",
        "n1 ztunnel CPU-s per 1000 req, same node (both ends)",
        3,
    ),
    (
        "cpu_client",
        "client-node (n1) ztunnel CPU-s per 1000 req, cross node",
        3,
    ),
    (
        "cpu_server",
        "server-node (n2) ztunnel CPU-s per 1000 req, cross node",
        3,
    ),
    ("idle_n1", "n1 ztunnel idle RSS (MiB)", 1),
    ("idle_n2", "n2 ztunnel idle RSS (MiB)", 1),
    ("hwm_n1", "n1 ztunnel peak RSS, VmHWM (MiB)", 1),
    ("hwm_n2", "n2 ztunnel peak RSS, VmHWM (MiB)", 1),
    (
        "idleconns_n1",
        "n1 ztunnel RSS with {idle} idle connections (MiB)",
        1,
    ),
    (
        "idleconns_n2",
        "n2 ztunnel RSS with {idle} idle connections (MiB)",
        1,
    ),
    ("perconn_n1", "n1 ztunnel KiB per idle connection", 2),
    ("perconn_n2", "n2 ztunnel KiB per idle connection", 2),
];

/// Runs the rounds and prints the table.
pub(crate) fn run(cmp: &mut Compare<'_>, cfg: &Cfg, idle: usize) -> anyhow::Result<Samples> {
    let meshes = cmp.meshes();
    let mut s = Samples::default();
    for round in 1..=cfg.rounds {
        for &m in &meshes {
            eprintln!("round {round}/{}: {}...", cfg.rounds, m.label());
            cmp.pass(m, cfg, idle, &mut s)?;
        }
    }
    // Leave ours in place, as the cluster was.
    cmp.select(Mesh::Ours)?;
    print(cfg, idle, &meshes, &s);
    Ok(s)
}

fn print(cfg: &Cfg, idle: usize, meshes: &[Mesh], s: &Samples) {
    let rows: Vec<Row> = ROWS
        .iter()
        .map(|(key, label, decimals)| Row {
            key,
            label: label
                .replace("{rate}", &cfg.rate.to_string())
                .replace("{idle}", &idle.to_string()),
            decimals: *decimals,
        })
        .collect();
    report::print(
        &format!(
            "Side by side: median of {} interleaved rounds (min–max); for latency, CPU and memory lower is better",
            cfg.rounds
        ),
        &rows,
        meshes,
        s,
        cfg.rounds,
    );
    report::print_added(
        &[
            ("p50_same", "p50, same node"),
            ("p99_same", "p99, same node"),
            ("p50_cross", "p50, cross node"),
            ("p99_cross", "p99, cross node"),
        ],
        meshes,
        s,
    );
    println!();
    println!(
        "workloads: iperf3 -t {} (-P 1 and -P 8); HTTP/1.1 POST of {MSG} B, {MSG} B answer, {} keep-alive connections, {} req/s for {} s (open loop, latency from the scheduled send time), then closed loop for {} s (saturation); new connections: {} threads, closed loop, {} s; {idle} idle connections n1 -> n2",
        cfg.secs.ceil().max(1.0),
        cfg.conns,
        cfg.rate,
        cfg.secs,
        cfg.secs,
        cfg.conns,
        cfg.secs,
    );
    println!(
        "ztunnel workers: ours {} (tokio's default, one per core), upstream ZTUNNEL_WORKER_THREADS={}",
        crate::upstream::our_workers(),
        crate::upstream::our_workers()
    );
    for (m, e) in &s.errors {
        if *e > 0 {
            println!(
                "errors through {}: {e} failed requests or connections",
                m.label()
            );
        }
    }
}

/// Drops every TIME_WAIT socket in a pod's namespace (`ss -K`): the new-connection pass of one
/// mesh must not inherit another's. (A mesh that connects to the app from the client's address
/// leaves its TIME_WAITs in the server pod, where they can hold the 4-tuples the next mesh
/// picks.)
fn clear_time_wait(c: &Cluster, p: &PodRef) -> anyhow::Result<()> {
    pod_exec(c, p, "ss", &["-K", "-t", "-4", "state", "time-wait"])
}

/// Per-netns TCP settings of a pod for the new-connection rate: the client closes first, so
/// its ports sit in TIME_WAIT; a wide port range and reuse of TIME_WAIT ports for new
/// outgoing connections keep the closed loop from running out of ports.
pub(crate) fn tune_pod(c: &Cluster, p: &PodRef) -> anyhow::Result<()> {
    pod_exec(
        c,
        p,
        "sysctl",
        &[
            "-qw",
            "net.ipv4.ip_local_port_range=10000 65000",
            "net.ipv4.tcp_tw_reuse=1",
        ],
    )
}

/// Runs `tool args...` inside pod `p`'s namespace; an error with its stderr unless it succeeds.
fn pod_exec(c: &Cluster, p: &PodRef, tool: &str, args: &[&str]) -> anyhow::Result<()> {
    let netns = format!("{}-{}-{}", c.name, p.namespace, p.name);
    let out = Command::new("ip")
        .args(["netns", "exec", &netns, tool])
        .args(args)
        .output()
        .with_context(|| format!("running {tool} in {netns}"))?;
    anyhow::ensure!(
        out.status.success(),
        "{tool} in {netns}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
