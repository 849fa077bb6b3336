//! Nothing outlives its pod or identity: what ztunnel holds for the pods it serves (their
//! proxies, certificate renewals, live connections and tunnels) goes when they go. Needs root;
//! fails loudly without it.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Mesh, WAIT};
use e2e::Pod;

const PODS: usize = 50;
/// Distinct service accounts among them: identities are shared by several pods.
const IDENTITIES: usize = 5;

/// ztunnel's `counts` on node `i`: every field must come back to its value before the pods
/// came (pool counts included, once ztunnel reports them there).
fn counts(mesh: &Mesh, i: usize) -> serde_json::Value {
    let counts = mesh.config_dump(i)["counts"].clone();
    assert!(counts.is_object(), "no counts in /config_dump: {counts}");
    counts
}

/// Enrol 50 pods of 5 identities on one node, connect over HBONE from some of them, remove
/// them all: the pods, certificate workers, live connections and tunnels counted by ztunnel
/// return to where they were.
#[test]
fn enrolling_and_removing_fifty_pods_leaves_nothing_behind() {
    let mut mesh = Mesh::new("lifecycle_50", 2);
    for (k, v) in [("POD_DRAIN_SECS", "1"), ("CERT_RELEASE_GRACE_SECS", "1")] {
        mesh.ztunnel_env.push((k.into(), v.into()));
    }
    mesh.ambient_namespaces = vec!["demo".into()];
    let pods: Vec<Pod> = (0..PODS)
        .map(|i| {
            let sa = format!("sa-{}", i % IDENTITIES);
            mesh.pod(0, "demo", &format!("client-{i}"), &sa, "client", true)
        })
        .collect();
    let server = mesh.pod(1, "demo", "server", "server", "server", true);
    mesh.start();
    let _echo = mesh.topo.tcp_echo(&server, 7000).expect("echo");
    mesh.enroll(&server);
    mesh.wait_workload(0, &server.uid);

    let before = counts(&mesh, 0);
    assert_eq!(before["pods"], 0, "{before}");
    assert_eq!(before["cert_workers"], 0, "{before}");

    for p in &pods {
        mesh.enroll(p);
    }
    let enrolled = counts(&mesh, 0);
    assert_eq!(enrolled["pods"], PODS, "{enrolled}");
    assert_eq!(
        enrolled["cert_workers"], IDENTITIES,
        "one renewal per identity, not per pod: {enrolled}"
    );

    // One HBONE connection from one pod of each identity, and from a few more.
    for p in pods.iter().step_by(3) {
        let reply = mesh
            .topo
            .tcp_send(p, server.addr(7000), &p.name)
            .unwrap_or_else(|e| panic!("{} to server: {e:#}\n{}", p.name, mesh.logs()));
        assert_eq!(reply, p.name);
    }

    for p in &pods {
        mesh.agents["n1"].del(&p.uid).expect("zds del");
    }
    let mut last = serde_json::Value::Null;
    e2e::wait_until("counts back to where they were", WAIT, || {
        last = counts(&mesh, 0);
        last == before
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e:#}\nbefore: {before}\nnow:    {last}\n{}",
            mesh.ztunnels["n1"].log_tail()
        )
    });
    // And it stays there: no renewal restarts behind the grace.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(counts(&mesh, 0), before);
    let log = mesh.ztunnels["n1"].log();
    assert_eq!(
        log.matches("certificate renewal stopped").count(),
        IDENTITIES,
        "{}",
        mesh.ztunnels["n1"].log_tail()
    );
}
