//! The mesh on real kernel networking: istiod-lite, a ztunnel per node in in-pod mode, pods
//! captured by the real rules. Needs root; fails loudly without it.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{metric_sum, Mesh, Svc, WAIT};
use e2e::{Capture, Pod, Topology};

/// Pod A (node 1) reaches pod B (node 2) through its ordinary socket calls; the bytes arrive
/// exactly; between the nodes there is only TLS to 15008; metrics and access logs match.
#[test]
fn cross_node_traffic_is_hbone_byte_exact_and_observed() {
    let mut mesh = Mesh::new("mesh_cross_node", 2);
    let (a, b, echo) = mesh.start_client_server();

    let wire = Capture::start(
        &mesh.topo,
        mesh.topo.underlay_netns().expect("underlay"),
        "br0",
        "tcp",
    )
    .expect("tcpdump");
    let marker = "PAYLOAD-MARKER-31337-in-clear";
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
        !e2e::contains(&pcap, marker.as_bytes()),
        "payload seen in clear on the underlay"
    );

    // The application saw the client pod's own address (source IP kept).
    assert!(
        echo.log().contains(&format!("accepted peer={}:", a.ip)),
        "server saw: {}",
        echo.log()
    );
    // Only HBONE crossed: a capture of anything but port 15008 sees no TCP payload.
    let other = Capture::start(
        &mesh.topo,
        mesh.topo.underlay_netns().expect("underlay"),
        "br0",
        "tcp and not port 15008 and not port 15012",
    )
    .expect("tcpdump");
    mesh.topo
        .tcp_send(&a, b.addr(7000), marker)
        .expect("send again");
    let other = other.stop().expect("capture");
    assert!(
        other.len() <= 24 + 16,
        "non-HBONE TCP on the underlay: {} bytes of pcap",
        other.len()
    );

    // Metrics: both reporters counted three connections with mTLS and the right identities.
    let src_principal = format!("source_principal=\"{}\"", a.identity());
    let dst_principal = format!("destination_principal=\"{}\"", b.identity());
    e2e::wait_until("source metrics", WAIT, || {
        metric_sum(
            &mesh.metrics(0),
            "istio_tcp_connections_closed_total",
            &["reporter=\"source\"", &src_principal, &dst_principal],
        ) >= 3.0
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", mesh.metrics(0)));
    let m = mesh.metrics(1);
    let opened = metric_sum(
        &m,
        "istio_tcp_connections_opened_total",
        &[
            "reporter=\"destination\"",
            &src_principal,
            "connection_security_policy=\"mutual_tls\"",
        ],
    );
    assert_eq!(opened, 3.0, "{m}");
    let received = metric_sum(
        &m,
        "istio_tcp_received_bytes_total",
        &["reporter=\"destination\"", &src_principal],
    );
    let expected = (2 * marker.len() + (1 << 20)) as f64;
    assert_eq!(received, expected, "request bytes at the destination\n{m}");
    let sent = metric_sum(
        &m,
        "istio_tcp_sent_bytes_total",
        &["reporter=\"destination\"", &src_principal],
    );
    assert_eq!(sent, expected, "echoed bytes at the destination\n{m}");
    // The source counts the same bytes, including a client's first bytes that went out with
    // the CONNECT rather than through the copy.
    let m = mesh.metrics(0);
    for (family, what) in [
        ("istio_tcp_received_bytes_total", "request"),
        ("istio_tcp_sent_bytes_total", "echoed"),
    ] {
        let at_source = metric_sum(&m, family, &["reporter=\"source\"", &src_principal]);
        assert_eq!(at_source, expected, "{what} bytes at the source\n{m}");
    }

    // Access log: one line per connection at close, with both identities.
    let complete = || {
        mesh.ztunnels["n2"]
            .log()
            .matches("connection complete")
            .count()
    };
    e2e::wait_until("three access-log lines", WAIT, || complete() >= 3).expect("access log");
    let log = mesh.ztunnels["n2"].log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("connection complete"))
        .collect();
    assert_eq!(lines.len(), 3, "{log}");
    assert!(
        lines
            .iter()
            .all(|l| l.contains(&a.identity()) && l.contains(&b.identity())),
        "{log}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&format!("bytes_recv={}", marker.len()))),
        "{log}"
    );
}

/// A client that closes first leaves each connection's TIME_WAIT on ztunnel's socket in the
/// server pod, which connected to the app on the client's behalf. Those never run the server
/// pod's ephemeral ports out: with its range narrowed to 100 ports, 400 connections in a row
/// all reach the app from the client's own address and port; and 40 in a row from one client
/// port each take over the last one's TIME_WAIT, on both sides.
#[test]
fn short_connections_keep_the_clients_address_past_the_servers_port_range() {
    let mut mesh = Mesh::new("mesh_short_conns", 2);
    let (a, b, echo) = mesh.start_client_server();
    mesh.topo
        .exec_in(
            &b,
            "sysctl",
            &["-qw", "net.ipv4.ip_local_port_range=61000 61099"],
        )
        .expect("narrow the server pod's port range");
    let accepted = |log: &str| -> Vec<String> {
        log.lines()
            .filter_map(|l| l.strip_prefix("accepted peer="))
            .filter_map(|l| l.split(' ').next())
            .map(str::to_string)
            .collect()
    };

    let locals = mesh
        .topo
        .tcp_churn(&a, b.addr(7000), 400, None)
        .unwrap_or_else(|e| panic!("400 connections: {e:#}\n{}", mesh.logs()));
    assert_eq!(locals.len(), 400);
    assert!(locals.iter().all(|l| l.ip() == a.ip));
    let seen = accepted(&echo.log());
    let want: Vec<String> = locals.iter().map(ToString::to_string).collect();
    assert_eq!(seen, want, "the app saw other source addresses");
    let waits = mesh
        .topo
        .exec_in(&b, "ss", &["-Htan", "state", "time-wait"])
        .expect("ss");
    assert!(
        waits.lines().count() >= 300,
        "the TIME_WAITs are not on ztunnel's side of the server pod: {waits}"
    );

    let port = 45_000;
    let locals = mesh
        .topo
        .tcp_churn(&a, b.addr(7000), 40, Some(port))
        .unwrap_or_else(|e| panic!("40 connections from one port: {e:#}\n{}", mesh.logs()));
    assert_eq!(locals.len(), 40);
    let seen = accepted(&echo.log());
    let tail = &seen[seen.len() - 40..];
    let from = format!("{}:{port}", a.ip);
    assert!(
        tail.iter().all(|p| *p == from),
        "the app saw {tail:?}, not {from} each time"
    );
}

/// Sockets whose bytes never leave the node take ztunnel's local congestion control (reno by
/// default); tunnels between nodes keep the node's. With one connection held open to a server
/// on node 2 from a pod on node 1 and from a pod on node 2: ztunnel's connections to the app
/// and from the app (15001) are reno with no keepalive timer, the tunnel between the two pods
/// of node 2 is reno at both ends, the tunnel across nodes keeps the namespace's default (and
/// its keepalive) at both ends, and the applications' own sockets keep the default.
#[test]
fn only_sockets_that_stay_on_the_node_take_the_local_congestion_control() {
    let mut mesh = Mesh::new("mesh_congestion", 2);
    mesh.ambient_namespaces = vec!["demo".into()];
    // Pods of one node talk through a tunnel, not in-process: its two ends are checked here.
    mesh.ztunnel_env = vec![("SAME_NODE_DIRECT".into(), "false".into())];
    let a = mesh.pod(0, "demo", "client", "client", "client", true);
    let b = mesh.pod(1, "demo", "server", "server", "server", true);
    let c = mesh.pod(1, "demo", "neighbour", "client", "client", true);
    mesh.start();
    let _echo = mesh.topo.tcp_echo(&b, 7000).expect("echo");
    for p in [&a, &b, &c] {
        mesh.enroll(p);
    }
    for (node, uid) in [(0, &b.uid), (1, &b.uid), (1, &a.uid), (1, &c.uid)] {
        mesh.wait_workload(node, uid);
    }
    let default = mesh
        .topo
        .exec_in(&b, "sysctl", &["-n", "net.ipv4.tcp_congestion_control"])
        .expect("sysctl")
        .trim()
        .to_string();
    let until = mesh.topo.dir().join("congestion.until");
    let holds: Vec<_> = [&a, &c]
        .into_iter()
        .map(|from| {
            let hold = mesh
                .topo
                .spawn_in(
                    from,
                    Topology::tcp_tool().expect("e2e-tcp"),
                    &[
                        "hold",
                        &b.addr(7000).to_string(),
                        "1",
                        until.to_str().expect("utf-8"),
                    ],
                    &[],
                )
                .expect("hold");
            hold.wait_for_log("held ok=1", WAIT)
                .unwrap_or_else(|e| panic!("{e:#}\n{}\n{}", hold.log_tail(), mesh.logs()));
            hold
        })
        .collect();

    let sockets = |pod: &Pod| -> Vec<Socket> {
        let out = mesh
            .topo
            .exec_in(pod, "ss", &["-Htnio", "state", "established"])
            .expect("ss");
        parse_ss(&out)
    };
    let find = |socks: &[Socket], what: &str, pick: &dyn Fn(&Socket) -> bool| -> Socket {
        socks
            .iter()
            .find(|s| pick(s))
            .cloned()
            .unwrap_or_else(|| panic!("no socket for {what} in {socks:#?}"))
    };
    // `ss -o` shows one timer: while a segment is unacked it is the retransmit timer (`on`), so
    // a keepalive is judged only once the socket has settled.
    let settled = |pod: &Pod, what: &str, pick: &dyn Fn(&Socket) -> bool| -> Socket {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let sock = find(&sockets(pod), what, pick);
            if !sock.info.contains("timer:(on") || Instant::now() > deadline {
                return sock;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let (a_ip, c_ip) = (format!("{}:", a.ip), format!("{}:", c.ip));

    let server = sockets(&b);
    for from in [&a_ip, &c_ip] {
        let to_app = settled(&b, "ztunnel -> app", &|s| {
            s.local.starts_with(from.as_str()) && s.peer.ends_with(":7000")
        });
        assert_eq!(to_app.congestion(), "reno", "{to_app:?}");
        assert!(!to_app.info.contains("keepalive"), "{to_app:?}");
        let app = find(&server, "the app's socket", &|s| {
            s.local.ends_with(":7000") && s.peer.starts_with(from.as_str())
        });
        assert_eq!(app.congestion(), default, "{app:?}");
    }
    let across = find(&server, "HBONE in from node 1", &|s| {
        s.local.ends_with(":15008") && s.peer.starts_with(&a_ip)
    });
    assert_eq!(across.congestion(), default, "{across:?}");
    let neighbour = find(&server, "HBONE in from node 2", &|s| {
        s.local.ends_with(":15008") && s.peer.starts_with(&c_ip)
    });
    assert_eq!(neighbour.congestion(), "reno", "{neighbour:?}");

    let from_app = settled(&a, "app -> 15001", &|s| s.local.ends_with(":15001"));
    assert_eq!(from_app.congestion(), "reno", "{from_app:?}");
    assert!(!from_app.info.contains("keepalive"), "{from_app:?}");
    let across = settled(&a, "HBONE out to node 2", &|s| s.peer.ends_with(":15008"));
    assert_eq!(across.congestion(), default, "{across:?}");
    assert!(across.info.contains("keepalive"), "{across:?}");
    let neighbour = find(&sockets(&c), "HBONE out on node 2", &|s| {
        s.peer.ends_with(":15008")
    });
    assert_eq!(neighbour.congestion(), "reno", "{neighbour:?}");
    std::fs::write(&until, b"").expect("release the holds");
    for hold in holds {
        hold.wait_for_log("verified ok=1", WAIT).expect("verified");
    }
}

/// One socket of `ss -Htnio`.
#[derive(Debug, Clone)]
struct Socket {
    local: String,
    peer: String,
    /// Its `-i` line (flags and congestion control, then counters) and its `-o` timer.
    info: String,
}

impl Socket {
    /// The congestion control: the last flag (`ts sack reno`) before the first `name:value`.
    fn congestion(&self) -> &str {
        self.info
            .split_whitespace()
            .take_while(|w| !w.contains(':'))
            .last()
            .unwrap_or("")
    }
}

fn parse_ss(out: &str) -> Vec<Socket> {
    let mut socks = Vec::new();
    let mut lines = out.lines().peekable();
    while let Some(line) = lines.next() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() < 4 || line.starts_with(char::is_whitespace) {
            continue;
        }
        let info = match lines.peek() {
            Some(next) if next.starts_with(char::is_whitespace) => {
                lines.next().unwrap_or_default().trim().to_string()
            }
            _ => String::new(),
        };
        socks.push(Socket {
            local: cols[2].to_string(),
            peer: cols[3].to_string(),
            // -o puts `timer:(...)` at the end of the address line.
            info: format!("{info} {}", cols[4..].join(" ")),
        });
    }
    socks
}

/// A service VIP spreads connections over its endpoints; a pod outside the mesh is reached by
/// plain TCP and reaches meshed pods through 15006.
#[test]
fn services_spread_and_non_mesh_pods_interoperate() {
    let mut mesh = Mesh::new("mesh_services", 2);
    mesh.ambient_namespaces = vec!["demo".into()];
    let client = mesh.pod(0, "demo", "client", "client", "client", true);
    let backends = [
        mesh.pod(1, "demo", "echo-1", "echo", "echo", true),
        mesh.pod(1, "demo", "echo-2", "echo", "echo", true),
        mesh.pod(0, "demo", "echo-3", "echo", "echo", true),
    ];
    let outside = mesh.pod(1, "legacy", "plain", "default", "plain", false);
    mesh.services.push(Svc {
        name: "echo".into(),
        namespace: "demo".into(),
        vip: "10.96.0.10".into(),
        port: 80,
        target_port: 7000,
        app: "echo".into(),
    });
    mesh.start();
    let echoes: Vec<_> = backends
        .iter()
        .map(|b| mesh.topo.tcp_echo(b, 7000).expect("echo"))
        .collect();
    let plain_echo = mesh.topo.tcp_echo(&outside, 7000).expect("plain echo");
    for p in [&client, &backends[0], &backends[1], &backends[2]] {
        mesh.enroll(p);
    }
    mesh.wait_workload(0, "demo/echo.demo.svc.cluster.local");

    let vip: std::net::SocketAddr = "10.96.0.10:80".parse().unwrap();
    for i in 0..9 {
        let reply = mesh
            .topo
            .tcp_send(&client, vip, &format!("hello-{i}"))
            .unwrap_or_else(|e| panic!("via VIP: {e:#}\n{}", mesh.logs()));
        assert_eq!(reply, format!("hello-{i}"));
    }
    for (i, e) in echoes.iter().enumerate() {
        assert!(
            e.log().contains("accepted"),
            "endpoint {i} got no connection: {}",
            e.log()
        );
    }

    // Meshed client → pod outside the mesh: passthrough, plain TCP.
    let reply = mesh
        .topo
        .tcp_send(&client, outside.addr(7000), "to-legacy")
        .expect("passthrough");
    assert_eq!(reply, "to-legacy");
    assert!(plain_echo
        .log()
        .contains(&format!("accepted peer={}:", client.ip)));

    // Pod outside the mesh → meshed pod: arrives through the inbound plaintext port.
    let reply = mesh
        .topo
        .tcp_send(&outside, backends[0].addr(7000), "from-legacy")
        .expect("inbound plaintext");
    assert_eq!(reply, "from-legacy");
    let m = mesh.metrics(1);
    assert!(
        metric_sum(
            &m,
            "istio_tcp_connections_opened_total",
            &[
                "reporter=\"destination\"",
                "connection_security_policy=\"unknown\""
            ]
        ) >= 1.0,
        "{m}"
    );
}

/// ztunnel restarts: the agent hands the pods over again and traffic resumes. istiod-lite
/// stops: existing and new connections keep working; when it is back the store resyncs.
#[test]
fn restarts_of_ztunnel_and_istiod_lose_nothing() {
    let mut mesh = Mesh::new("mesh_restarts", 2);
    let (a, b, _echo) = mesh.start_client_server();
    assert_eq!(
        mesh.topo
            .tcp_send(&a, b.addr(7000), "before")
            .expect("before"),
        "before"
    );

    mesh.stop_ztunnel(1);
    mesh.start_ztunnel(1);
    e2e::wait_until("pod handed over again", WAIT, || {
        mesh.config_dump(1)["pods"].to_string().contains(&b.uid)
    })
    .expect("re-handed");
    assert_eq!(
        mesh.topo
            .tcp_send(&a, b.addr(7000), "after-ztunnel")
            .expect("after ztunnel restart"),
        "after-ztunnel"
    );

    // A long-lived connection across the control plane outage.
    let gate = mesh.topo.dir().join("gate");
    let _long = mesh.send_gated(&a, b.addr(7000), "opened-before|", &gate, "finished-after");
    mesh.stop_istiod();
    assert_eq!(
        mesh.topo
            .tcp_send(&a, b.addr(7000), "cp-down")
            .expect("new connection with CP down"),
        "cp-down"
    );

    // Back: a pod added meanwhile shows up in the data plane.
    let c = mesh.pod(1, "demo", "late", "late", "late", true);
    mesh.write_config();
    mesh.start_istiod();
    mesh.wait_workload(0, &c.uid);
    assert_eq!(
        mesh.topo
            .tcp_send(&a, b.addr(7000), "resynced")
            .expect("after resync"),
        "resynced"
    );
}

/// A pod leaving the mesh (ZDS `del`): new connections are refused at once, live ones keep
/// carrying traffic for the drain period and are closed when it ends, with the reason in the
/// access log. Handed over again within the period, the pod keeps its connections.
#[test]
fn a_removed_pods_connections_drain_then_close_unless_it_comes_back() {
    const DRAIN: Duration = Duration::from_secs(3);
    let mut mesh = Mesh::new("mesh_pod_drain", 2);
    mesh.ztunnel_env
        .push(("POD_DRAIN_SECS".into(), DRAIN.as_secs().to_string()));
    let (a, b, echo) = mesh.start_client_server();

    // Three long-lived connections A → B, each sending `<name>-before|` now and `after` once
    // its gate file exists; the echo sends both back.
    let hold = |name: &str| {
        let gate = mesh.topo.dir().join(format!("{name}-gate"));
        let proc = mesh.send_gated(&a, b.addr(7000), &format!("{name}-before|"), &gate, "after");
        (proc, gate)
    };
    let finish = |(proc, gate): &(e2e::Proc, std::path::PathBuf)| {
        std::fs::write(gate, "").unwrap();
        let status = proc.wait_exit(WAIT).expect("client ends");
        (status.success(), proc.log())
    };
    let kept = hold("kept");
    let during = hold("during");
    let cut = hold("cut");
    e2e::wait_until("three connections reach the server", WAIT, || {
        echo.log().matches("accepted").count() >= 3
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", mesh.logs()));
    let z2 = &mesh.ztunnels["n2"];
    let reason = format!("pod removed from the mesh: drain period of {DRAIN:?} ended");

    // del, then add again at once (the agent's label flip or re-snapshot): past the drain
    // period the connection still works. Only waiting that long shows nothing was closed.
    mesh.agents["n2"].del(&b.uid).expect("zds del");
    mesh.enroll(&b);
    z2.wait_for_log("pod handed over again before its drain ended", WAIT)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", z2.log_tail()));
    std::thread::sleep(DRAIN + Duration::from_secs(1));
    let (ok, log) = finish(&kept);
    assert!(ok && log.contains("reply: kept-before|after"), "{log}");
    assert!(!z2.log().contains(&reason), "{}", z2.log_tail());
    assert_eq!(
        mesh.topo
            .tcp_send(&a, b.addr(7000), "after-re-add")
            .expect("served again"),
        "after-re-add"
    );

    // del for good: within the period the live connection carries traffic both ways, the
    // pod shows as draining, and a new connection is refused.
    let removed = Instant::now();
    mesh.agents["n2"].del(&b.uid).expect("zds del");
    let (ok, log) = finish(&during);
    assert!(ok && log.contains("reply: during-before|after"), "{log}");
    assert!(removed.elapsed() < DRAIN, "took {:?}", removed.elapsed());
    assert!(
        mesh.config_dump(1)["draining_pods"]
            .to_string()
            .contains(&b.uid),
        "{}",
        mesh.config_dump(1)
    );
    let refused = mesh
        .topo
        .tcp_send(&a, b.addr(7000), "new")
        .unwrap_or_default();
    assert_ne!(refused, "new", "a new connection reached the removed pod");

    // The period ends: what is left is closed and logged with the reason.
    e2e::wait_until("the drained connection is closed", WAIT, || {
        z2.log().contains(&reason)
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", mesh.logs()));
    let took = removed.elapsed();
    assert!(
        took >= DRAIN && took < DRAIN + Duration::from_secs(3),
        "took {took:?}"
    );
    let log = z2.log();
    let drained: Vec<&str> = log.lines().filter(|l| l.contains(&reason)).collect();
    assert_eq!(drained.len(), 1, "only `cut` was still open: {log}");
    assert!(
        drained[0].contains("connection complete")
            && drained[0].contains("flags=DRAIN")
            && drained[0].contains(&format!("bytes_sent={}", "cut-before|".len())),
        "{}",
        drained[0]
    );
    let (_, log) = finish(&cut);
    assert!(
        !log.contains("before|after"),
        "the drained connection kept flowing: {log}"
    );
    assert_eq!(
        metric_sum(
            &mesh.metrics(1),
            "istio_tcp_connections_closed_total",
            &["response_flags=\"DRAIN\""]
        ),
        1.0
    );
    assert_eq!(mesh.config_dump(1)["draining_pods"], serde_json::json!([]));
}

/// Bad input gives a clear error and breaks nothing: ZDS messages with no fd or two, a
/// malformed config file.
#[test]
fn bad_input_is_refused_and_breaks_nothing() {
    let mut mesh = Mesh::new("mesh_bad_input", 2);
    let (a, b, _echo) = mesh.start_client_server();

    use prost::Message;
    let add = proto::zds::WorkloadRequest {
        payload: Some(proto::zds::workload_request::Payload::Add(
            proto::zds::AddWorkload {
                uid: "Kubernetes//v1/Pod/demo/ghost".into(),
                workload_info: None,
            },
        )),
    }
    .encode_to_vec();
    let agent = &mesh.agents["n1"];
    let none = agent.send_raw(add.clone(), vec![]);
    assert!(none.is_err(), "add without fd accepted");
    let fd = |p: &e2e::Pod| -> std::os::fd::OwnedFd {
        std::fs::File::open(format!("/var/run/netns/{}", p.netns_name))
            .unwrap()
            .into()
    };
    let two = agent.send_raw(add, vec![fd(&a), fd(&a)]);
    assert!(two.is_err(), "add with two fds accepted");
    let z1 = &mesh.ztunnels["n1"];
    e2e::wait_until("ztunnel logs the refusal", WAIT, || {
        z1.log()
            .contains("exactly one network namespace descriptor")
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", z1.log_tail()));

    // A malformed file is reported and the last good config stays.
    std::fs::write(
        mesh.config_dir.join("broken.yaml"),
        "apiVersion: v1\nkind: Pod\nmetadata: [not, a, map\n",
    )
    .unwrap();
    std::fs::write(
        mesh.config_dir.join("unknown.yaml"),
        "apiVersion: example.com/v1\nkind: Gizmo\nmetadata:\n  name: g\n",
    )
    .unwrap();
    let istiod = mesh.istiod.as_ref().unwrap();
    e2e::wait_until("istiod reports the broken file", WAIT, || {
        istiod.log().contains("broken.yaml")
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", istiod.log_tail()));
    assert!(istiod.is_running());
    mesh.wait_workload(0, &b.uid);
    assert_eq!(
        mesh.topo
            .tcp_send(&a, b.addr(7000), "still-fine")
            .expect("traffic still flows"),
        "still-fine"
    );
    let _ = WAIT;
}
