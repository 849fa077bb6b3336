//! Zero-drop ztunnel upgrade (issue 15 item 1; docs/reliability.md section 1), with the real
//! CNI agent doing the handover: a second ztunnel starts on the node, takes every pod from the
//! agent and opens its in-pod listeners beside the old ones (`SO_REUSEPORT`); only then does
//! the old one get SIGTERM, stop accepting and drain.
//!
//! `UPGRADE_RPS` sets the rate of each client (default 200).

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::print_stderr)]

mod common;

use std::time::{Duration, Instant};

use common::{Mesh, WAIT};
use e2e::load::{RateClient, StreamClient, HTTP_OK};
use e2e::Pod;

/// Starts a two-node mesh with the real CNI agent; pods captured by the plugin.
fn mesh(test: &str, drain_deadline_secs: u64, pods: &[(usize, &str)]) -> (Mesh, Vec<Pod>) {
    let mut mesh = Mesh::new(test, 2);
    mesh.real_cni = true;
    mesh.ztunnel_env = vec![(
        "DRAIN_DEADLINE_SECS".into(),
        drain_deadline_secs.to_string(),
    )];
    mesh.ambient_namespaces = vec!["demo".into()];
    let pods: Vec<Pod> = pods
        .iter()
        .map(|(node, name)| mesh.pod(*node, "demo", name, name, name, false))
        .collect();
    mesh.start();
    for p in &pods {
        let (code, out) = mesh.cni("ADD", p);
        assert_eq!(code, 0, "ADD {}: {out}\n{}", p.name, mesh.logs());
    }
    for p in &pods {
        mesh.wait_workload(0, &p.uid);
        mesh.wait_workload(1, &p.uid);
    }
    (mesh, pods)
}

/// Waits for the old ztunnel's exit (its drain) and checks it went cleanly.
fn drained(mesh: &Mesh, old: &e2e::Proc, what: &str) -> Duration {
    let started = Instant::now();
    let status = old
        .wait_exit(Duration::from_secs(40))
        .unwrap_or_else(|e| panic!("{what}: {e:#}\n{}", mesh.logs()));
    assert!(status.success(), "{what}: {status}\n{}", old.log_tail());
    assert!(old.log().contains("drained"), "{what}:\n{}", old.log_tail());
    started.elapsed()
}

#[test]
fn three_ztunnel_upgrades_under_200_rps_fail_no_request_and_a_stream_across_one_stays_correct() {
    let rps: u32 = std::env::var("UPGRADE_RPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let started = Instant::now();
    let (mut mesh, pods) = mesh(
        "rel_upgrade",
        30,
        &[(0, "client"), (0, "local"), (1, "remote")],
    );
    let (client, local, remote) = (&pods[0], &pods[1], &pods[2]);
    let _servers = [
        mesh.topo.tcp_hello(local, 8080, HTTP_OK).expect("local"),
        mesh.topo.tcp_hello(remote, 8080, HTTP_OK).expect("remote"),
        mesh.topo.tcp_echo(remote, 7000).expect("echo"),
    ];
    let topo = &mesh.topo;
    let cross = RateClient::start(topo, client, remote.addr(8080), rps).expect("cross-node");
    let same = RateClient::start(topo, client, local.addr(8080), rps).expect("same-node");
    let stream = StreamClient::start(topo, client, remote.addr(7000), 256 * 1024).expect("stream");
    for c in [&cross, &same] {
        c.wait_for_successes(u64::from(rps), WAIT)
            .unwrap_or_else(|e| panic!("{e:#}\n{}", mesh.logs()));
    }

    // 1: the server's node, with the long-lived stream open through the old ztunnel. Its
    // inbound HBONE connection gets GOAWAY; the stream goes on over it while the old one drains.
    let old = mesh.upgrade_ztunnel(1);
    cross
        .wait_for_successes(u64::from(rps), WAIT)
        .expect("traffic after upgrade 1");
    assert!(
        old.is_running(),
        "the old ztunnel drains while the stream is open"
    );
    let verified_before = stream.verified();
    let report = stream
        .finish()
        .unwrap_or_else(|e| panic!("{e:#}\n{}", mesh.logs()));
    assert_eq!(report.verified, report.sent, "every byte came back");
    assert!(
        report.verified > verified_before,
        "bytes flowed after the upgrade"
    );
    let drain1 = drained(&mesh, &old, "upgrade 1");

    // 2: the client's node (outbound, and the same-node path in and out).
    let old = mesh.upgrade_ztunnel(0);
    let drain2 = drained(&mesh, &old, "upgrade 2");
    for c in [&cross, &same] {
        c.wait_for_successes(u64::from(rps) / 2, WAIT)
            .expect("traffic after upgrade 2");
    }

    // 3: the server's node again.
    let old = mesh.upgrade_ztunnel(1);
    let drain3 = drained(&mesh, &old, "upgrade 3");
    for c in [&cross, &same] {
        c.wait_for_successes(u64::from(rps) / 2, WAIT)
            .expect("traffic after upgrade 3");
    }

    let cross = cross.finish().expect("cross-node report");
    let same = same.finish().expect("same-node report");
    eprintln!(
        "upgrade x3 at {rps} rps: cross-node sent={} failed={} p99_ms={} max_ms={}; \
         same-node sent={} failed={} p99_ms={} max_ms={}; stream bytes verified={}; \
         drains {drain1:?} {drain2:?} {drain3:?}; wall {:?}",
        cross.sent,
        cross.failed,
        cross.p99_ms,
        cross.max_ms,
        same.sent,
        same.failed,
        same.p99_ms,
        same.max_ms,
        report.verified,
        started.elapsed()
    );
    for (path, r) in [("cross-node", &cross), ("same-node", &same)] {
        assert_eq!(
            r.failed,
            0,
            "{path}: {:?}\n{}",
            &r.failures[..r.failures.len().min(10)],
            mesh.logs()
        );
        assert!(r.ok > u64::from(rps) * 3, "{path}: {r:?}");
    }
}

#[test]
fn a_connection_open_at_the_drain_deadline_is_closed_with_a_fin_not_a_reset() {
    const DEADLINE_SECS: u64 = 2;
    let (mut mesh, pods) = mesh(
        "rel_upgrade_deadline",
        DEADLINE_SECS,
        &[(0, "client"), (1, "remote")],
    );
    let (client, remote) = (&pods[0], &pods[1]);
    let tool = e2e::Topology::tcp_tool().expect("e2e-tcp");
    let sink = mesh
        .topo
        .spawn_in(remote, tool.clone(), &["sink", "7200"], &[])
        .expect("sink");
    sink.wait_for_log("listening on", WAIT).expect("sink up");
    // Sends, then waits for how the server side ends it: the server never answers.
    let held = mesh
        .topo
        .spawn_in(
            client,
            tool,
            &["await-reply", &remote.addr(7200).to_string(), "hello"],
            &[],
        )
        .expect("client");
    e2e::wait_until("the connection is proxied", WAIT, || {
        let node = &mesh.nodes[0];
        mesh.topo
            .http_get(node, "127.0.0.1:15000".parse().unwrap(), "/connections")
            .is_ok_and(|r| r.body.contains(&remote.addr(7200).to_string()))
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", mesh.logs()));

    // The client's node is upgraded; the connection outlives the old ztunnel's deadline.
    let old = mesh.upgrade_ztunnel(0);
    held.wait_exit(WAIT)
        .expect("the client learns how it ended");
    let line = held.log();
    let line = line
        .lines()
        .find(|l| l.starts_with("outcome="))
        .unwrap_or("");
    let ms: u64 = line
        .rsplit("ms=")
        .next()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(
        line.starts_with("outcome=eof"),
        "the client must see a clean end (FIN), not a reset: {line}\n{}",
        old.log_tail()
    );
    assert!(
        ms >= (DEADLINE_SECS - 1) * 1000,
        "it stayed open until the drain deadline: {line}"
    );
    // The server side ends cleanly too (END_STREAM through HBONE, then FIN): the sink read
    // everything to EOF; a reset would have failed its read.
    e2e::wait_until("the server sees the end", WAIT, || {
        sink.log().contains("received 5 bytes")
    })
    .unwrap_or_else(|e| panic!("{e:#}\nsink: {}\n{}", sink.log_tail(), mesh.logs()));
    drained(&mesh, &old, "deadline");
    assert!(
        old.log().contains("drain deadline reached"),
        "{}",
        old.log_tail()
    );
}

#[test]
fn a_new_ztunnel_that_dies_mid_upgrade_leaves_the_old_one_serving_pods_enrolled_meanwhile_and_after(
) {
    let mut mesh = Mesh::new("rel_upgrade_crash", 2);
    mesh.real_cni = true;
    mesh.ambient_namespaces = vec!["demo".into()];
    let client = mesh.pod(0, "demo", "client", "client", "client", false);
    let first = mesh.pod(1, "demo", "first", "first", "first", false);
    // Known to the control plane from the start, enrolled by the CNI agent later.
    let during = mesh.pod(1, "demo", "during", "during", "during", false);
    let after = mesh.pod(1, "demo", "after", "after", "after", false);
    mesh.start();
    for p in [&client, &first] {
        let (code, out) = mesh.cni("ADD", p);
        assert_eq!(code, 0, "ADD {}: {out}\n{}", p.name, mesh.logs());
    }
    let (client, first) = (&client, &first);
    let _servers = [first, &during, &after].map(|p| mesh.topo.tcp_echo(p, 7000).expect("echo"));
    let reaches = |mesh: &Mesh, to: &Pod| {
        e2e::wait_until(
            &format!("{} answers through the mesh", to.name),
            WAIT,
            || {
                mesh.topo
                    .tcp_send(client, to.addr(7000), "hello")
                    .is_ok_and(|echo| echo.contains("hello"))
            },
        )
        .unwrap_or_else(|e| panic!("{e:#}\n{}", mesh.logs()));
    };
    reaches(&mesh, first);

    // The new ztunnel takes the node and a pod enrolled then, and dies before the old one is
    // told to go.
    let new = mesh.surge_ztunnel(1);
    let (code, out) = mesh.cni("ADD", &during);
    assert_eq!(code, 0, "ADD during: {out}\n{}", mesh.logs());
    new.signal(nix::sys::signal::Signal::SIGKILL)
        .expect("kill the new ztunnel");
    new.wait_exit(WAIT).expect("the new ztunnel is gone");

    // The old one serves the node again: the pod enrolled while it was parked, one enrolled
    // now, and the one it always had.
    let (code, out) = mesh.cni("ADD", &after);
    assert_eq!(code, 0, "ADD after: {out}\n{}", mesh.logs());
    for pod in [&during, &after, first] {
        mesh.wait_workload(0, &pod.uid);
        reaches(&mesh, pod);
    }
    let agent = mesh.cni_agents[&mesh.nodes[1].name].log();
    assert!(
        agent.contains("the one it replaced serves the pods again"),
        "{agent}"
    );
    let old = &mesh.ztunnels[&mesh.nodes[1].name];
    assert!(old.is_running(), "{}", old.log_tail());
}
