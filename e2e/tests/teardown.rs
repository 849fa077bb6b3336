//! Teardown through the mesh, on real kernel networking: a reset by either application reaches
//! the other within a second, same node and across nodes; a CONNECT that is refused after the
//! client's own connect() succeeded is a reset to the client; and nothing ztunnel holds for a
//! connection (task, live-connection entry, pool stream) is left once it is gone. Needs root;
//! fails loudly without it.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use common::{Mesh, WAIT};
use e2e::{Pod, Proc, Topology};

/// Resets the connection once a request arrived.
const RESET_PORT: u16 = 7100;
/// Answers `ready`, then reports how the client ended.
const AWAIT_PORT: u16 = 7200;
/// Nothing listens here.
const CLOSED_PORT: u16 = 7999;
/// A DENY policy covers this port.
const DENIED_PORT: u16 = 7300;

struct Servers {
    pod: Pod,
    _reset: Proc,
    awaiting: Proc,
    _denied: Proc,
}

fn servers(mesh: &Mesh, pod: Pod) -> Servers {
    let tool = Topology::tcp_tool().expect("e2e-tcp");
    let spawn = |args: &[&str]| {
        let p = mesh.topo.spawn_in(&pod, &tool, args, &[]).expect("server");
        p.wait_for_log("listening on", WAIT).expect("listening");
        p
    };
    Servers {
        _reset: spawn(&["reset-server", &RESET_PORT.to_string()]),
        awaiting: spawn(&["await-server", &AWAIT_PORT.to_string()]),
        _denied: spawn(&["echo", &DENIED_PORT.to_string()]),
        pod,
    }
}

/// Runs an `e2e-tcp` client mode in `from` and returns its `outcome=` line.
fn client(mesh: &Mesh, from: &Pod, mode: &str, to: std::net::SocketAddr) -> String {
    let out = mesh
        .topo
        .exec_in(
            from,
            Topology::tcp_tool().expect("e2e-tcp"),
            &[mode, &to.to_string(), "request"],
        )
        .unwrap_or_else(|e| panic!("{mode} to {to}: {e:#}\n{}", mesh.logs()));
    out.trim().to_string()
}

/// The `ms=` of an outcome line.
fn millis(line: &str) -> u64 {
    line.rsplit("ms=")
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(u64::MAX)
}

/// ztunnel `i`'s leak counters.
fn counts(mesh: &Mesh, i: usize) -> serde_json::Value {
    mesh.config_dump(i)["counts"].clone()
}

/// ztunnel `i`'s counters once the same twice in a row, 200 ms apart: what the warm-up left.
fn settled_counts(mesh: &Mesh, i: usize) -> serde_json::Value {
    let mut last = counts(mesh, i);
    for _ in 0..25 {
        std::thread::sleep(std::time::Duration::from_millis(200));
        let now = counts(mesh, i);
        if now == last {
            return now;
        }
        last = now;
    }
    panic!("node {i} counts never settled: {last}\n{}", mesh.logs());
}

/// Waits until ztunnel `i`'s counters are back to `baseline`.
fn wait_counts(mesh: &Mesh, i: usize, baseline: &serde_json::Value) {
    e2e::wait_until(&format!("node {i} counts back to {baseline}"), WAIT, || {
        counts(mesh, i) == *baseline
    })
    .unwrap_or_else(|e| panic!("{e:#}\nnow: {}\n{}", counts(mesh, i), mesh.logs()));
}

#[test]
fn resets_propagate_both_ways_same_node_and_cross_node_and_nothing_is_left() {
    let mut mesh = Mesh::new("teardown", 2);
    mesh.ambient_namespaces = vec!["demo".into()];
    let client_pod = mesh.pod(0, "demo", "client", "client", "client", true);
    let near = mesh.pod(0, "demo", "near", "near", "near", true);
    let far = mesh.pod(1, "demo", "far", "far", "far", true);
    mesh.start();
    let near = servers(&mesh, near);
    let far = servers(&mesh, far);
    for pod in [&client_pod, &near.pod, &far.pod] {
        mesh.enroll(pod);
    }
    mesh.wait_workload(0, &far.pod.uid);
    mesh.wait_workload(1, &client_pod.uid);
    mesh.apply(&common::deny_port("demo", DENIED_PORT));
    mesh.wait_policy(0, "demo/deny-7300", true);
    mesh.wait_policy(1, "demo/deny-7300", true);

    // Warm up: the HBONE connections a pod keeps pooled belong to the baseline.
    for server in [&near, &far] {
        let line = client(
            &mesh,
            &client_pod,
            "await-reply",
            server.pod.addr(RESET_PORT),
        );
        assert!(line.starts_with("outcome=reset"), "warm-up: {line}");
    }
    // Same node, an allowed connection is carried in-process; a refused one goes through the
    // tunnel (as every refusal does), whose pooled connection belongs to the baseline too.
    let line = client(
        &mesh,
        &client_pod,
        "await-reply",
        near.pod.addr(CLOSED_PORT),
    );
    assert!(line.starts_with("outcome=reset"), "warm-up: {line}");
    // (Pooled HBONE connections count as live tunnels: they stay, and are part of it.)
    let baselines: Vec<_> = (0..2).map(|i| settled_counts(&mesh, i)).collect();

    for (place, server) in [("same node", &near), ("cross node", &far)] {
        // The server resets while the client waits for its answer.
        let line = client(
            &mesh,
            &client_pod,
            "await-reply",
            server.pod.addr(RESET_PORT),
        );
        assert!(
            line.starts_with("outcome=reset") && millis(&line) < 1000,
            "{place}: the client must see the server's reset within 1 s: {line}\n{}",
            mesh.logs()
        );

        // The client resets while the server waits for more.
        let before = server.awaiting.log().matches("outcome=").count();
        let line = client(
            &mesh,
            &client_pod,
            "reset-client",
            server.pod.addr(AWAIT_PORT),
        );
        assert_eq!(line, "reset sent", "{place}");
        e2e::wait_until(&format!("{place}: server outcome"), WAIT, || {
            server.awaiting.log().matches("outcome=").count() > before
        })
        .unwrap_or_else(|e| panic!("{e:#}\n{}", mesh.logs()));
        let log = server.awaiting.log();
        let line = log.lines().rfind(|l| l.starts_with("outcome=")).unwrap();
        assert!(
            line.starts_with("outcome=reset") && millis(line) < 1000,
            "{place}: the server must see the client's reset within 1 s: {line}\n{}",
            mesh.logs()
        );

        // Refused after the client's own connect() succeeded: nothing listens (503), or
        // policy denies (401). Either way a reset, never a clean end.
        for port in [CLOSED_PORT, DENIED_PORT] {
            let line = client(&mesh, &client_pod, "await-reply", server.pod.addr(port));
            assert!(
                line.starts_with("outcome=reset") && millis(&line) < 1000,
                "{place}, port {port}: a refused CONNECT must reset the client: {line}\n{}",
                mesh.logs()
            );
        }
    }

    for (i, baseline) in baselines.iter().enumerate() {
        wait_counts(&mesh, i, baseline);
    }
}
