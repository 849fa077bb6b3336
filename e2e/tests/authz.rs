//! L4 authorization enforced by the destination ztunnel, on real kernel networking: the
//! namespace-isolation example, DENY by port, live updates closing connections, dry-run, and a
//! pod that skips its own capture (ztunnel's mark, a forged source) to reach a peer directly.
//! Needs root; fails loudly without it.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::print_stderr)]

mod common;

use common::{metric_sum, Mesh, WAIT};
use e2e::{Capture, Pod, Proc, Topology};

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
    let long = m.send_gated(&t.client_b, t.server.addr(7000), "before|", &gate, "after");

    let applied = std::time::Instant::now();
    m.apply(SAME_NAMESPACE_ONLY);
    let z2 = &m.ztunnels["n2"];
    e2e::wait_until("live connection closed", WAIT, || {
        z2.log()
            .contains("closing a live connection no longer allowed")
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", m.logs()));
    // Config reload (file poll + debounce), push and re-check: the issue's budget is one second.
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

/// A meshed attacker (`other/attacker`) and the one allowed client (`secure/client`) on node 1;
/// the protected server (`secure/server`) on node 2 with a sink on 7000 that logs what it gets.
struct Bypass {
    mesh: Mesh,
    attacker: Pod,
    client: Pod,
    server: Pod,
    sink: Proc,
}

fn bypass(test: &str) -> Bypass {
    let mut mesh = Mesh::new(test, 2);
    mesh.ambient_namespaces = vec!["secure".into(), "other".into()];
    let attacker = mesh.pod(0, "other", "attacker", "attacker", "attacker", true);
    let client = mesh.pod(0, "secure", "client", "client", "client", true);
    let server = mesh.pod(1, "secure", "server", "server", "server", true);
    mesh.start();
    let sink = mesh.topo.tcp_sink(&server, 7000).expect("sink 7000");
    for p in [&attacker, &client, &server] {
        mesh.enroll(p);
    }
    mesh.wait_workload(0, &server.uid);
    mesh.wait_workload(1, &server.uid);
    Bypass {
        mesh,
        attacker,
        client,
        server,
        sink,
    }
}

const ONLY_CLIENT: &str = "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: only-client
  namespace: secure
spec:
  selector:
    matchLabels:
      app: server
  action: ALLOW
  rules:
  - from:
    - source:
        principals: [\"cluster.local/ns/secure/sa/client\"]
";

const STRICT: &str = "\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: strict
  namespace: secure
spec:
  mtls:
    mode: STRICT
";

/// Waits until the server's ztunnel holds policy `key` and the server's workload names it
/// (selector-scoped policies apply only then).
fn wait_enforced(m: &Mesh, key: &str) {
    m.wait_policy(1, key, true);
    let name = key.rsplit('/').next().unwrap_or(key);
    e2e::wait_until(&format!("the server names {key}"), WAIT, || {
        m.config_dump(1)["config"]["workloads"]
            .to_string()
            .contains(name)
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", m.logs()));
}

/// `e2e-tcp send-forged` from inside `from`, as root: the socket carries ztunnel's mark (so
/// the pod's own capture lets it pass) and leaves from `source` when given. Returns its report.
fn send_skipping_capture(
    m: &Mesh,
    from: &Pod,
    to: std::net::SocketAddr,
    source: Option<&str>,
    data: &str,
) -> String {
    let mark = format!("{:#x}", mesh::capture::ZTUNNEL_MARK);
    let to = to.to_string();
    let mut args = vec!["send-forged", "--mark", &mark, "--to", &to, "--data", data];
    args.extend(["--timeout-ms", "1000"]);
    if let Some(source) = source {
        args.extend(["--source", source]);
    }
    m.topo
        .exec_in(from, Topology::tcp_tool().expect("e2e-tcp"), &args)
        .expect("e2e-tcp send-forged runs")
}

/// The local address of a connection `send-forged` reports as established.
fn connected_from(report: &str) -> String {
    report
        .lines()
        .find_map(|l| l.strip_prefix("connected local="))
        .unwrap_or_else(|| panic!("expected a connection: {report}"))
        .to_string()
}

/// Waits for a line of `proc`'s log that holds every needle, and returns it.
fn log_line(proc: &Proc, needles: &[&str]) -> String {
    let find = || {
        proc.log()
            .lines()
            .find(|l| needles.iter().all(|n| l.contains(n)))
            .map(str::to_string)
    };
    e2e::wait_until(&format!("a log line with {needles:?}"), WAIT, || {
        find().is_some()
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", proc.log_tail()));
    find().unwrap_or_default()
}

/// The access-log line of the connection from `src` (`ip:port`): one per connection.
fn access_line(proc: &Proc, src: &str) -> String {
    log_line(proc, &["connection complete", &format!("src.addr={src} ")])
}

#[test]
fn a_pod_skipping_its_own_capture_is_still_judged_by_the_servers_ztunnel() {
    let t = bypass("authz_skip_capture");
    let m = &t.mesh;
    let (z1, z2) = (&m.ztunnels["n1"], &m.ztunnels["n2"]);
    m.apply(ONLY_CLIENT);
    wait_enforced(m, "secure/only-client");
    // The allowed principal gets through its own capture and HBONE: the sink does record.
    m.topo
        .tcp_send(&t.client, t.server.addr(7000), "hello-from-client")
        .unwrap_or_else(|e| panic!("{e:#}\n{}", m.logs()));
    t.sink
        .wait_for_log("hello-from-client", WAIT)
        .expect("sink got the allowed client's bytes");

    // With ztunnel's mark the attacker's own capture lets the connection out as plaintext;
    // the server pod's capture does not trust a mark from another namespace (the kernel clears
    // it between namespaces), so the connection lands on the server's ztunnel at 15006.
    let report = send_skipping_capture(m, &t.attacker, t.server.addr(7000), None, "bypass-app");
    let local = connected_from(&report);
    assert!(
        local.starts_with(&format!("{}:", t.attacker.ip)),
        "{report}"
    );
    assert!(report.contains("reply 0 bytes"), "{report}");
    let denial = log_line(
        z2,
        &[
            "plaintext connection denied",
            &format!("{} (plaintext) -> {}", t.attacker.ip, t.server.addr(7000)),
        ],
    );
    assert!(
        denial.contains("reason=no ALLOW policy matched (secure/only-client)"),
        "{denial}"
    );
    let access = access_line(z2, &local);
    assert!(access.contains("src.identity= "), "no identity: {access}");
    assert!(access.contains("flags=DENY"), "{access}");
    assert!(access.contains("bytes_sent=0"), "{access}");
    assert!(
        !z1.log().contains(&local),
        "the attacker's own ztunnel saw the connection: capture was not skipped"
    );

    // Straight at the server's own tunnel ports: the plaintext listener refuses them as
    // targets, by name.
    for port in [15006, 15001] {
        let report =
            send_skipping_capture(m, &t.attacker, t.server.addr(port), None, "bypass-tunnel");
        let access = access_line(z2, &connected_from(&report));
        assert!(
            access.contains("error=\"connection to a tunnel port refused\""),
            "port {port}: {access}"
        );
        assert!(
            access.contains("flags=DENY"),
            "a refusal by the mesh: {access}"
        );
    }

    // Under STRICT mTLS plaintext is refused by the converted PeerAuthentication, even from the
    // address of the one allowed pod: skipping capture also sheds the identity policy needs.
    m.apply(&format!("{ONLY_CLIENT}---\n{STRICT}"));
    wait_enforced(m, "istio-system/istio_converted_static_strict");
    for pod in [&t.attacker, &t.client] {
        let report = send_skipping_capture(m, pod, t.server.addr(7000), None, "bypass-strict");
        let access = access_line(z2, &connected_from(&report));
        assert!(
            access.contains("denied by DENY policy istio-system/istio_converted_static_strict"),
            "{} under STRICT: {access}",
            pod.name
        );
    }

    // Whatever the route, none of it reached the application.
    assert!(!t.sink.log().contains("bypass"), "{}", t.sink.log());
}

#[test]
fn a_forged_source_address_never_completes_a_connection_even_when_that_address_is_allowed() {
    let t = bypass("authz_forged_source");
    let m = &t.mesh;
    let z2 = &m.ztunnels["n2"];
    // Watch the server pod's wire for the forged source ports (40101...).
    let wire = Capture::start(&m.topo, &t.server, "eth0", "tcp portrange 40101-40199")
        .expect("tcpdump in the server pod");
    let forged = |sport: u16| format!("{}:{sport}", t.client.ip);

    // Only the client's principal is allowed: the attacker, capture skipped, claims the
    // client's address.
    m.apply(ONLY_CLIENT);
    wait_enforced(m, "secure/only-client");
    let report = send_skipping_capture(
        m,
        &t.attacker,
        t.server.addr(7000),
        Some(&forged(40101)),
        "forged-1",
    );
    assert_eq!(report.trim(), "not connected: timeout");

    // Now the client's address itself is allowed, plaintext included...
    m.apply(&format!(
        "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: client-address
  namespace: secure
spec:
  selector:
    matchLabels:
      app: server
  action: ALLOW
  rules:
  - from:
    - source:
        ipBlocks: [\"{}/32\"]
",
        t.client.ip
    ));
    wait_enforced(m, "secure/client-address");
    m.wait_policy(1, "secure/only-client", false);
    let report = send_skipping_capture(m, &t.client, t.server.addr(7000), None, "plaintext-client");
    let access = access_line(z2, &connected_from(&report));
    assert!(
        access.contains("allowed by ALLOW policy secure/client-address"),
        "{access}"
    );
    t.sink
        .wait_for_log("plaintext-client", WAIT)
        .expect("plaintext from the client's own address reaches the app");
    // ...and still a forged copy of that address gets no connection: not to the app port, not
    // to 15006.
    for (port, sport) in [(7000, 40102), (15006, 40103)] {
        let report = send_skipping_capture(
            m,
            &t.attacker,
            t.server.addr(port),
            Some(&forged(sport)),
            "forged-2",
        );
        assert_eq!(report.trim(), "not connected: timeout", "port {port}");
    }
    // Nor does the kubelet probe address, the one source the server's capture lets straight
    // to the application.
    let probe = format!("{}:40104", mesh::capture::PROBE_SNAT_IP);
    let report = send_skipping_capture(
        m,
        &t.attacker,
        t.server.addr(7000),
        Some(&probe),
        "forged-3",
    );
    assert_eq!(report.trim(), "not connected: timeout");

    // Why: each forged SYN did reach the server pod (ztunnel's 15006 listener; for the probe
    // address, the application's own), and its SYN-ACK went to the address the attacker
    // claimed, never back to the attacker: the real client, which never opened these
    // connections, resets them; the probe address is not routed back at all.
    let pcap_path = wire.path().to_path_buf();
    wire.stop().expect("tcpdump stops");
    let out = std::process::Command::new("tcpdump")
        .args(["-n", "-r"])
        .arg(&pcap_path)
        .output()
        .expect("tcpdump -r");
    let wire = String::from_utf8_lossy(&out.stdout);
    let (server, client) = (t.server.ip, t.client.ip);
    for (port, sport) in [(7000, 40101), (7000, 40102), (15006, 40103)] {
        for packet in [
            format!("{client}.{sport} > {server}.{port}: Flags [S]"),
            format!("{server}.{port} > {client}.{sport}: Flags [S.]"),
            format!("{client}.{sport} > {server}.{port}: Flags [R]"),
        ] {
            assert!(wire.contains(&packet), "no `{packet}` on the wire:\n{wire}");
        }
    }
    let probe = mesh::capture::PROBE_SNAT_IP;
    for packet in [
        format!("{probe}.40104 > {server}.7000: Flags [S]"),
        format!("{server}.7000 > {probe}.40104: Flags [S.]"),
    ] {
        assert!(wire.contains(&packet), "no `{packet}` on the wire:\n{wire}");
    }

    // So the server's ztunnel never accepted, allowed or logged any of them, and the
    // application got nothing.
    for sport in [40101, 40102, 40103] {
        assert!(!z2.log().contains(&forged(sport)), "{}", z2.log_tail());
    }
    assert!(!t.sink.log().contains("forged"), "{}", t.sink.log());
}
