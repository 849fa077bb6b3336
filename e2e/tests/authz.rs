//! L4 authorization enforced by the destination ztunnel, on real kernel networking: the
//! namespace-isolation example, DENY by port, live updates closing connections, dry-run.
//! Needs root; fails loudly without it.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::print_stderr)]

mod common;

use common::{metric_sum, Mesh, WAIT};
use e2e::{Pod, Topology};

struct Isolation {
    mesh: Mesh,
    client_a: Pod,
    client_b: Pod,
    server: Pod,
    /// Another meshed pod on the server's node.
    neighbour: Pod,
    outside: Pod,
}

/// Namespaces `team-a` (client and server) and `team-b` (a client), all in the mesh, plus a pod
/// outside it; echo servers on 7000 and 7001 in the server.
fn isolation(test: &str) -> (Isolation, Vec<e2e::Proc>) {
    let mut mesh = Mesh::new(test, 2);
    mesh.ambient_namespaces = vec!["team-a".into(), "team-b".into()];
    let client_a = mesh.pod(0, "team-a", "client", "client", "client", true);
    let client_b = mesh.pod(0, "team-b", "client", "client", "client", true);
    let server = mesh.pod(1, "team-a", "server", "server", "server", true);
    let neighbour = mesh.pod(1, "team-a", "neighbour", "neighbour", "neighbour", true);
    let outside = mesh.pod(0, "legacy", "plain", "default", "plain", false);
    mesh.start();
    let echoes = vec![
        mesh.topo.tcp_echo(&server, 7000).expect("echo 7000"),
        mesh.topo.tcp_echo(&server, 7001).expect("echo 7001"),
    ];
    for p in [&client_a, &client_b, &server, &neighbour] {
        mesh.enroll(p);
    }
    mesh.wait_workload(0, &server.uid);
    (
        Isolation {
            mesh,
            client_a,
            client_b,
            server,
            neighbour,
            outside,
        },
        echoes,
    )
}

fn reaches(mesh: &Mesh, from: &Pod, to: std::net::SocketAddr) -> bool {
    matches!(mesh.topo.tcp_send(from, to, "ping"), Ok(reply) if reply == "ping")
}

const SAME_NAMESPACE_ONLY: &str = "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: same-namespace
  namespace: team-a
spec:
  action: ALLOW
  rules:
  - from:
    - source:
        namespaces: [\"team-a\"]
";

#[test]
fn namespace_isolation_allows_same_namespace_and_denies_the_rest() {
    let (t, _echoes) = isolation("authz_isolation");
    let m = &t.mesh;
    // No policy: everything flows.
    assert!(reaches(m, &t.client_b, t.server.addr(7000)));

    m.apply(SAME_NAMESPACE_ONLY);
    m.wait_policy(1, "team-a/same-namespace", true);
    assert!(
        reaches(m, &t.client_a, t.server.addr(7000)),
        "same namespace must pass\n{}",
        m.logs()
    );
    assert!(
        !reaches(m, &t.client_b, t.server.addr(7000)),
        "other namespace must be denied"
    );
    assert!(
        !reaches(m, &t.outside, t.server.addr(7000)),
        "plaintext from outside must be denied by the ALLOW"
    );

    // The denial is counted and logged with the policy that decided.
    e2e::wait_until("DENY counted", WAIT, || {
        metric_sum(
            &m.metrics(1),
            "istio_tcp_connections_closed_total",
            &[
                "response_flags=\"DENY\"",
                "source_principal=\"spiffe://cluster.local/ns/team-b/sa/client\"",
            ],
        ) >= 1.0
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", m.metrics(1)));
    let z2 = &m.ztunnels["n2"];
    e2e::wait_until("denial logged", WAIT, || {
        z2.log().contains("HBONE connection denied")
    })
    .expect("log");
    assert!(
        z2.log()
            .contains("no ALLOW policy matched (team-a/same-namespace)"),
        "{}",
        z2.log_tail()
    );
}

#[test]
fn deny_by_port_and_by_principal() {
    let (t, _echoes) = isolation("authz_deny_port");
    let m = &t.mesh;
    m.apply(
        "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: no-admin-port
  namespace: team-a
spec:
  action: DENY
  rules:
  - to:
    - operation:
        ports: [\"7001\"]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: only-client-a
  namespace: team-a
spec:
  selector:
    matchLabels:
      app: server
  action: ALLOW
  rules:
  - from:
    - source:
        principals: [\"cluster.local/ns/team-a/sa/client\"]
",
    );
    m.wait_policy(1, "team-a/no-admin-port", true);
    m.wait_policy(1, "team-a/only-client-a", true);
    assert!(reaches(m, &t.client_a, t.server.addr(7000)), "{}", m.logs());
    assert!(
        !reaches(m, &t.client_a, t.server.addr(7001)),
        "port 7001 is denied"
    );
    assert!(
        !reaches(m, &t.client_b, t.server.addr(7000)),
        "only client-a's principal is allowed"
    );
}

#[test]
fn a_policy_update_closes_live_connections_that_became_denied() {
    let (t, _echoes) = isolation("authz_live");
    let m = &t.mesh;
    let gate = m.topo.dir().join("gate");
    let long = m
        .topo
        .spawn_in(
            &t.client_b,
            Topology::tcp_tool().expect("e2e-tcp"),
            &[
                "send-gated",
                &t.server.addr(7000).to_string(),
                "before|",
                gate.to_str().unwrap(),
                "after",
            ],
            &[],
        )
        .expect("long-lived client");
    long.wait_for_log("first sent", WAIT)
        .expect("connection open");

    let applied = std::time::Instant::now();
    m.apply(SAME_NAMESPACE_ONLY);
    let z2 = &m.ztunnels["n2"];
    e2e::wait_until("live connection closed", WAIT, || {
        z2.log()
            .contains("closing a live connection no longer allowed")
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", m.logs()));
    // Config reload (file poll + debounce), push and re-check: the budget is one second.
    let took = applied.elapsed();
    eprintln!("policy applied to the live connection in {took:?}");
    assert!(took < std::time::Duration::from_secs(1), "took {took:?}");
    std::fs::write(&gate, "").unwrap();
    let status = long.wait_exit(WAIT).expect("client ends");
    assert!(
        !long.log().contains("reply: before|after"),
        "the denied connection kept flowing: {}",
        long.log()
    );
    let _ = status;
    // New connections from team-a still pass.
    assert!(reaches(m, &t.client_a, t.server.addr(7000)));
}

#[test]
fn dry_run_denies_nothing_and_logs_the_decision() {
    let (t, _echoes) = isolation("authz_dry_run");
    let m = &t.mesh;
    m.apply(
        "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: would-deny-all
  namespace: team-a
  annotations:
    istio.io/dry-run: \"true\"
spec: {}
",
    );
    m.wait_policy(1, "team-a/would-deny-all", true);
    assert!(
        reaches(m, &t.client_b, t.server.addr(7000)),
        "dry-run must not deny"
    );
    let z2 = &m.ztunnels["n2"];
    e2e::wait_until("dry-run logged", WAIT, || {
        z2.log().contains("dry-run policy evaluated")
    })
    .expect("log");
    assert!(
        z2.log().contains("dry_run_allowed=false"),
        "{}",
        z2.log_tail()
    );
}

#[test]
fn strict_mtls_refuses_plaintext_and_permissive_accepts_it() {
    let (t, _echoes) = isolation("authz_strict");
    let m = &t.mesh;
    // Default PERMISSIVE: the pod outside the mesh gets in through 15006.
    assert!(reaches(m, &t.outside, t.server.addr(7000)), "{}", m.logs());
    m.apply(
        "\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: strict
  namespace: team-a
spec:
  mtls:
    mode: STRICT
",
    );
    m.wait_policy(1, "istio-system/istio_converted_static_strict", true);
    e2e::wait_until("server names the STRICT policy", WAIT, || {
        m.config_dump(1)["config"]["workloads"]
            .to_string()
            .contains("istio_converted_static_strict")
    })
    .expect("attached");
    assert!(
        !reaches(m, &t.outside, t.server.addr(7000)),
        "plaintext must be refused under STRICT"
    );
    assert!(
        reaches(m, &t.client_b, t.server.addr(7000)),
        "HBONE still passes under STRICT"
    );
}

#[test]
fn a_meshed_pod_cannot_reach_a_peers_tunnel_ports() {
    let (t, _echoes) = isolation("authz_tunnel_ports");
    let m = &t.mesh;
    for port in [15006u16, 15008, 15001] {
        assert!(
            !reaches(m, &t.client_a, t.server.addr(port)),
            "port {port} of a peer must never be reachable"
        );
    }
    let z2 = &m.ztunnels["n2"];
    e2e::wait_until("refusals logged", WAIT, || {
        z2.log()
            .matches("is a tunnel port and never a valid target")
            .count()
            >= 3
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", z2.log_tail()));
    // And the normal port still works.
    assert!(reaches(m, &t.client_a, t.server.addr(7000)));
}

#[test]
fn ip_blocks_select_sources_by_address() {
    let (t, _echoes) = isolation("authz_ip_blocks");
    let m = &t.mesh;
    // Deny one source address, whatever its identity.
    m.apply(&format!(
        "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: block-one-address
  namespace: team-a
spec:
  action: DENY
  rules:
  - from:
    - source:
        ipBlocks: [\"{}/32\"]
",
        t.client_b.ip
    ));
    m.wait_policy(1, "team-a/block-one-address", true);
    assert!(
        !reaches(m, &t.client_b, t.server.addr(7000)),
        "the blocked address must be denied"
    );
    assert!(
        reaches(m, &t.client_a, t.server.addr(7000)),
        "other addresses pass\n{}",
        m.logs()
    );
}

#[test]
fn an_hbone_connect_to_another_pods_address_is_refused() {
    let (t, _echoes) = isolation("authz_other_pod");
    let m = &t.mesh;
    let tool = Topology::binary("e2e-hbone").expect("e2e-hbone");
    let dir = m.topo.dir();
    let args = |authority: std::net::SocketAddr| -> Vec<String> {
        vec![
            format!("https://{}:15012", m.nodes[0].underlay_ip),
            dir.join("istiod-data/root-cert.pem").display().to_string(),
            dir.join("n1.token").display().to_string(),
            t.client_a.identity(),
            t.server.addr(15008).to_string(),
            authority.to_string(),
            t.server.identity(),
        ]
    };
    let run = |authority| {
        let a = args(authority);
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        m.topo
            .exec_in(&m.nodes[0], &tool, &refs)
            .expect("e2e-hbone runs")
    };
    // The tool works: a legitimate CONNECT to the server itself is answered.
    assert_eq!(run(t.server.addr(7000)).trim(), "status 200 ping");
    // The same listener asked to reach another pod on the same node refuses.
    let out = run(t.neighbour.addr(7000));
    assert_eq!(out.trim(), "refused: status 400", "{out}");
    let z2 = &m.ztunnels["n2"];
    e2e::wait_until("refusal logged", WAIT, || {
        z2.log().contains("HBONE request for another pod refused")
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", z2.log_tail()));
}
