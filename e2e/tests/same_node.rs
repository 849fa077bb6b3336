//! Two pods of one node: ztunnel serves both, so it joins their connection in-process instead of
//! tunnelling from one of its sockets to another. Nothing reaches the server pod's interface,
//! yet the server sees the client's own address, the bytes are exact, both reporters record
//! the connection with both identities, the destination's policy denies what it denies (through
//! the tunnel, as every refusal goes) and closes a live connection that a new policy denies.
//! Needs root; fails loudly without it.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use common::{metric_sum, Mesh, WAIT};
use e2e::Capture;

#[test]
fn pods_of_one_node_are_joined_in_process_with_policy_metrics_and_the_clients_address() {
    let mut mesh = Mesh::new("same_node", 1);
    mesh.ambient_namespaces = vec!["demo".into()];
    let a = mesh.pod(0, "demo", "client", "client", "client", true);
    let b = mesh.pod(0, "demo", "server", "server", "server", true);
    mesh.start();
    let echo = mesh.topo.tcp_echo(&b, 7000).expect("echo 7000");
    let _denied = mesh.topo.tcp_echo(&b, 7300).expect("echo 7300");
    for p in [&a, &b] {
        mesh.enroll(p);
    }
    mesh.wait_workload(0, &b.uid);
    mesh.apply(&common::deny_port("demo", 7300));
    mesh.wait_policy(0, "demo/deny-7300", true);

    // Nothing between the two pods crosses the server pod's interface: not even a tunnel.
    let wire =
        Capture::start(&mesh.topo, &b, "eth0", &format!("tcp and host {}", a.ip)).expect("tcpdump");
    let marker = "SAME-NODE-MARKER-4242";
    let reply = mesh
        .topo
        .tcp_send(&a, b.addr(7000), marker)
        .unwrap_or_else(|e| panic!("send: {e:#}\n{}", mesh.logs()));
    assert_eq!(reply, marker);
    mesh.topo
        .tcp_send_bytes(&a, b.addr(7000), 1 << 20)
        .unwrap_or_else(|e| panic!("1 MiB: {e:#}\n{}", mesh.logs()));
    let pcap = wire.stop().expect("capture");
    assert!(
        pcap.len() <= 24,
        "{} bytes of pcap between the pods on the server's eth0: not carried in-process",
        pcap.len()
    );
    assert!(
        echo.log().contains(&format!("accepted peer={}:", a.ip)),
        "the server must see the client's own address: {}",
        echo.log()
    );

    // Both reporters, on the one ztunnel: two connections, both identities, the bytes exact.
    let src_principal = format!("source_principal=\"{}\"", a.identity());
    let dst_principal = format!("destination_principal=\"{}\"", b.identity());
    let expected = (marker.len() + (1 << 20)) as f64;
    for reporter in ["reporter=\"source\"", "reporter=\"destination\""] {
        let labels = [reporter, &src_principal, &dst_principal];
        e2e::wait_until(&format!("{reporter} closed twice"), WAIT, || {
            metric_sum(
                &mesh.metrics(0),
                "istio_tcp_connections_closed_total",
                &labels,
            ) >= 2.0
        })
        .unwrap_or_else(|e| panic!("{e:#}\n{}", mesh.metrics(0)));
        let m = mesh.metrics(0);
        let opened = metric_sum(&m, "istio_tcp_connections_opened_total", &labels);
        assert_eq!(opened, 2.0, "{reporter}\n{m}");
        for family in [
            "istio_tcp_received_bytes_total",
            "istio_tcp_sent_bytes_total",
        ] {
            let bytes = metric_sum(&m, family, &labels);
            assert_eq!(bytes, expected, "{family} {reporter}\n{m}");
        }
    }

    // The destination's policy still decides: a denied port is refused (a reset).
    assert!(
        mesh.topo.tcp_send(&a, b.addr(7300), "x").is_err(),
        "port 7300 is denied"
    );
    e2e::wait_until("the deny counted", WAIT, || {
        metric_sum(
            &mesh.metrics(0),
            "istio_tcp_connections_closed_total",
            &["reporter=\"destination\"", "response_flags=\"DENY\""],
        ) >= 1.0
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", mesh.metrics(0)));
    let z = &mesh.ztunnels["n1"];
    assert!(
        z.log().contains("HBONE connection denied"),
        "{}",
        z.log_tail()
    );

    // A live in-process connection that a new policy denies is closed.
    let gate = mesh.topo.dir().join("gate");
    let long = mesh.send_gated(&a, b.addr(7000), "before|", &gate, "after");
    mesh.apply(&common::deny_port("demo", 7000));
    e2e::wait_until("live connection closed", WAIT, || {
        z.log()
            .contains("closing a live connection no longer allowed")
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", mesh.logs()));
    std::fs::write(&gate, "").unwrap();
    long.wait_exit(WAIT).expect("client ends");
    assert!(
        !long.log().contains("reply: before|after"),
        "the denied connection kept flowing: {}",
        long.log()
    );
}
