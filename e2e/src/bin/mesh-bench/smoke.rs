//! `mesh-bench --smoke`: every path (no mesh, ours, upstream when its binary is there) carries
//! bytes, for about a second each. It asserts no timing, only that the exchanges were answered
//! and, through a mesh, that the client node's ztunnel counted the bytes (so they went through
//! that proxy, not around it). With upstream there, the two also talk HBONE to each other, each
//! way: ours on the client's node and upstream on the server's, then the other way round, and
//! both ends count the bytes. `e2e/tests/bench_smoke.rs` runs it in the test command.

use anyhow::Context as _;

use crate::compare::Compare;
use crate::report::Mesh;
use crate::{CONN_PORT, MSG, RR_PORT, WAIT};

/// Bytes the ztunnel on `node` counted (`istio_tcp_sent_bytes_total` and
/// `istio_tcp_received_bytes_total`, every series: ours and upstream both export them on
/// the node's address, port 15020).
fn ztunnel_bytes(cmp: &Compare<'_>, node: &str) -> anyhow::Result<f64> {
    let ip = cmp.c.node_ip(node)?;
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &format!("{}-{node}", cmp.c.name)])
        .args(["curl", "-s", "--max-time", "3"])
        .arg(format!("http://{ip}:15020/metrics"))
        .output()
        .context("curl of the ztunnel's metrics")?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| {
            l.starts_with("istio_tcp_sent_bytes_total{")
                || l.starts_with("istio_tcp_received_bytes_total{")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

pub(crate) fn run(cmp: &mut Compare<'_>) -> anyhow::Result<()> {
    let meshes = cmp.meshes();
    if !meshes.contains(&Mesh::Upstream) {
        println!("smoke: upstream ztunnel binary not found: the upstream path is skipped");
    }
    for m in meshes {
        cmp.select(m)?;
        let pods = cmp.pods(m);
        let node = pods.client.node;
        let before = match m {
            Mesh::Plain => 0.0,
            _ => ztunnel_bytes(cmp, node)?,
        };
        let l = cmp.load(pods.client, "load", pods.cross.addr(RR_PORT), 200.0, 1.0, 2)?;
        anyhow::ensure!(
            l.count > 0 && l.errors == 0,
            "smoke: {} carried no exchange ({} answered, {} failed)",
            m.label(),
            l.count,
            l.errors
        );
        let carried = l.count * 2 * MSG as u64;
        if m == Mesh::Plain {
            println!(
                "smoke: {}: {} exchanges, {carried} bytes n1 <-> n2",
                m.label(),
                l.count
            );
            continue;
        }
        // Counters move when the connections close, just after the load ends.
        let counted = e2e::retry_until(
            &format!("{}'s ztunnel on {node} to count the bytes", m.label()),
            WAIT,
            || {
                let now = ztunnel_bytes(cmp, node)?;
                anyhow::ensure!(now > before, "counted nothing new ({now})");
                Ok(now - before)
            },
        )?;
        println!(
            "smoke: {}: {} exchanges, {carried} bytes n1 <-> n2; the ztunnel on {node} counted {counted} bytes",
            m.label(),
            l.count
        );
    }
    if cmp.upstream.is_some() {
        interop(cmp)?;
    }
    println!("smoke: ok");
    Ok(())
}

/// Ours and upstream on either end of one HBONE tunnel, both ways round: request/response
/// exchanges (the client writes right after connecting, so its first bytes can ride with the
/// CONNECT) and one-byte connections, all answered, and each end's ztunnel counts bytes.
fn interop(cmp: &mut Compare<'_>) -> anyhow::Result<()> {
    let pods = cmp.pods(Mesh::Ours);
    let (client_node, server_node) = (pods.client.node, pods.cross.node);
    for (upstream_node, label) in [
        (server_node, "ours -> upstream"),
        (client_node, "upstream -> ours"),
    ] {
        cmp.select(Mesh::Ours)?;
        let before = [
            ztunnel_bytes(cmp, client_node)?,
            ztunnel_bytes(cmp, server_node)?,
        ];
        let served: Vec<_> = [pods.client, pods.same, pods.cross]
            .into_iter()
            .filter(|p| p.node == upstream_node)
            .collect();
        let up = cmp.upstream.as_mut().context("no upstream binary")?;
        eprintln!("upstream ztunnel stands in for ours on {upstream_node} only...");
        up.swap_in(
            cmp.c,
            &[upstream_node],
            &[served],
            &[pods.client, pods.same, pods.cross],
        )?;
        cmp.probe(pods.client, pods.cross)?;
        let rr = cmp.load(pods.client, "load", pods.cross.addr(RR_PORT), 200.0, 1.0, 2)?;
        let conn = cmp.load(
            pods.client,
            "load-conn",
            pods.cross.addr(CONN_PORT),
            200.0,
            1.0,
            2,
        )?;
        for (what, l) in [("exchanges", &rr), ("connections", &conn)] {
            anyhow::ensure!(
                l.count > 0 && l.errors == 0,
                "smoke: {label}: {what}: {} answered, {} failed",
                l.count,
                l.errors
            );
        }
        let mut counted = [0.0; 2];
        for (i, node) in [client_node, server_node].into_iter().enumerate() {
            counted[i] = e2e::retry_until(
                &format!("{label}: the ztunnel on {node} to count the bytes"),
                WAIT,
                || {
                    let now = ztunnel_bytes(cmp, node)?;
                    let new = if node == upstream_node {
                        now
                    } else {
                        now - before[i]
                    };
                    anyhow::ensure!(new > 0.0, "counted nothing new ({now})");
                    Ok(new)
                },
            )?;
        }
        println!(
            "smoke: {label}: {} exchanges and {} connections answered; {client_node} counted {} bytes, {server_node} {}",
            rr.count, conn.count, counted[0], counted[1]
        );
    }
    cmp.select(Mesh::Ours)
}
