//! Tests of the harness itself, on real kernel networking: nodes and pods made of network
//! namespaces route TCP, the capture rules of `mesh::capture` redirect as written, the fake
//! CNI agent hands over the right namespace, and a topology cleans up after itself.
//!
//! They need root and fail without it.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use e2e::{Capture, Delivery, PodOpts, Topology, ZdsAgent};
use mesh::zds::{Request, ZdsClient};

const WAIT: Duration = Duration::from_secs(5);

fn captured() -> PodOpts {
    PodOpts {
        captured: true,
        ..PodOpts::default()
    }
}

#[test]
fn pods_on_two_nodes_talk_tcp_byte_exact_over_the_underlay() {
    e2e::require_root();
    let mut topo = Topology::new("two_nodes_tcp").expect("topology");
    let n1 = topo.add_node("n1").expect("n1");
    let n2 = topo.add_node("n2").expect("n2");
    let a = topo
        .add_pod(&n1, "demo", "client", PodOpts::default())
        .expect("pod a");
    let b = topo
        .add_pod(&n2, "demo", "server", PodOpts::default())
        .expect("pod b");
    assert_eq!(a.ip.octets()[..2], [10, 11], "node 1's pod CIDR");
    assert_eq!(b.ip.octets()[..2], [10, 12], "node 2's pod CIDR");
    assert_eq!(
        (a.ip.octets()[3], b.ip.octets()[3]),
        (2, 2),
        "first address after the gateway"
    );
    assert_eq!(a.uid, "Kubernetes//v1/Pod/demo/client");

    let echo = topo.tcp_echo(&b, 7000).expect("echo server");
    let wire = Capture::start(
        &topo,
        topo.underlay_netns().expect("underlay"),
        "br0",
        "tcp port 7000",
    )
    .expect("tcpdump");

    let marker = "MARKER-in-clear-7f3a";
    let reply = topo.tcp_send(&a, b.addr(7000), marker).expect("send");
    assert_eq!(reply, marker);
    topo.tcp_send_bytes(&a, b.addr(7000), 1 << 20)
        .expect("1 MiB echoed byte-exact");

    // The echo server saw pod A's own address: routed, not NATed.
    e2e::wait_until("two connections logged", WAIT, || {
        echo.log().matches("closed peer=").count() == 2
    })
    .expect("echo log");
    assert!(
        echo.log().contains(&format!("accepted peer={}:", a.ip)),
        "{}",
        echo.log()
    );
    // The HTTP helper (for ztunnel's admin endpoints) reads a chunked reply across nodes.
    let _http = topo
        .tcp_hello(
            &b,
            8080,
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nready \r\n2\r\nok\r\n0\r\n\r\n",
        )
        .expect("http server");
    let resp = topo
        .wait_http_ok(&a, b.addr(8080), "/healthz/ready", WAIT)
        .expect("http get");
    assert_eq!(resp.body, "ready ok");

    // And the plaintext crossed the underlay, where a capture sees it.
    let pcap = wire.stop().expect("pcap");
    assert!(
        e2e::contains(&pcap, marker.as_bytes()),
        "marker not in the underlay capture ({} bytes)",
        pcap.len()
    );
}

#[test]
fn capture_rules_redirect_outbound_to_15001_and_inbound_to_15006() {
    e2e::require_root();
    let mut topo = Topology::new("capture_redirects").expect("topology");
    let n1 = topo.add_node("n1").expect("n1");
    let n2 = topo.add_node("n2").expect("n2");
    let a = topo.add_pod(&n1, "demo", "a", captured()).expect("pod a");
    let b = topo
        .add_pod(&n2, "demo", "b", PodOpts::default())
        .expect("pod b");
    let rules = a.iptables_save().expect("iptables-save");
    assert!(mesh::capture::installed_jumps(&rules), "{rules}");
    let ip_rules = topo.exec_in(&a, "ip", &["rule", "list"]).expect("ip rule");
    assert!(ip_rules.contains("lookup 100"), "{ip_rules}");

    let b_app = topo.tcp_echo(&b, 7000).expect("b app");
    let a_outbound = topo.tcp_echo(&a, 15001).expect("a 15001");
    let a_inbound = topo.tcp_echo(&a, 15006).expect("a 15006");
    let a_hbone = topo.tcp_echo(&a, 15008).expect("a 15008");

    // Outbound: A dials B, the connection lands on A's own 15001 with B as original dst.
    let reply = topo
        .tcp_send(&a, b.addr(7000), "outbound")
        .expect("send from a");
    assert_eq!(reply, "outbound");
    e2e::wait_until("15001 to log the connection", WAIT, || {
        a_outbound.log().contains("accepted")
    })
    .expect("redirected");
    assert!(
        a_outbound
            .log()
            .contains(&format!("orig_dst={}", b.addr(7000))),
        "{}",
        a_outbound.log()
    );
    assert!(!b_app.log().contains("accepted"), "{}", b_app.log());

    // Inbound: B dials A's app port, the connection lands on A's 15006.
    let reply = topo
        .tcp_send(&b, a.addr(7000), "inbound")
        .expect("send to a");
    assert_eq!(reply, "inbound");
    e2e::wait_until("15006 to log the connection", WAIT, || {
        a_inbound.log().contains("accepted")
    })
    .expect("redirected inbound");
    assert!(
        a_inbound
            .log()
            .contains(&format!("orig_dst={}", a.addr(7000))),
        "{}",
        a_inbound.log()
    );

    // HBONE's 15008 is exempt: it reaches the 15008 listener itself.
    let reply = topo
        .tcp_send(&b, a.addr(15008), "hbone")
        .expect("send to 15008");
    assert_eq!(reply, "hbone");
    e2e::wait_until("15008 to log the connection", WAIT, || {
        a_hbone.log().contains("accepted")
    })
    .expect("15008 reached");
    assert_eq!(a_inbound.log().matches("accepted").count(), 1);

    // Uncaptured again, A reaches B directly.
    a.uncapture().expect("uncapture");
    assert!(!mesh::capture::installed_jumps(
        &a.iptables_save().expect("iptables-save")
    ));
    let reply = topo
        .tcp_send(&a, b.addr(7000), "direct")
        .expect("send direct");
    assert_eq!(reply, "direct");
    e2e::wait_until("b to log the connection", WAIT, || {
        b_app.log().contains("accepted")
    })
    .expect("direct");
}

/// What a fake ztunnel saw: the request, with the inode and device of an add's namespace.
#[derive(Debug)]
enum Seen {
    Add(String, u64, u64),
    Del(String),
    Keep(String),
    Snapshot,
}

/// Connects as ztunnel would, answers `n` requests (refusing keeps), and hangs up.
fn fake_ztunnel(path: &Path, n: usize) -> std::thread::JoinHandle<Vec<Seen>> {
    let path = path.to_path_buf();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let client = ZdsClient::connect(&path).await.expect("connect");
            let mut seen = Vec::new();
            for _ in 0..n {
                let req = client.next().await.expect("request");
                let mut ack = Ok(());
                seen.push(match req {
                    Request::Add { uid, netns, .. } => {
                        let fd = std::os::fd::AsRawFd::as_raw_fd(&netns);
                        let meta =
                            std::fs::metadata(format!("/proc/self/fd/{fd}")).expect("stat the fd");
                        Seen::Add(uid, meta.ino(), meta.dev())
                    }
                    Request::Del { uid } => Seen::Del(uid),
                    Request::Keep { uid } => {
                        ack = Err("keep refused by the test".to_string());
                        Seen::Keep(uid)
                    }
                    Request::SnapshotSent => Seen::Snapshot,
                });
                client.ack(ack).await.expect("ack");
            }
            seen
        })
    })
}

fn netns_inode(name: &str) -> (u64, u64) {
    let meta = std::fs::metadata(Path::new("/var/run/netns").join(name)).expect("stat netns");
    (meta.ino(), meta.dev())
}

#[test]
fn zds_agent_hands_the_pod_netns_and_replays_the_snapshot_on_reconnect() {
    e2e::require_root();
    let mut topo = Topology::new("zds_agent").expect("topology");
    let n1 = topo.add_node("n1").expect("n1");
    let a = topo
        .add_pod(&n1, "demo", "a", PodOpts::default())
        .expect("a");
    let b = topo
        .add_pod(&n1, "demo", "b", PodOpts::default())
        .expect("b");
    let agent = ZdsAgent::start(&topo.dir().join("ztunnel.sock")).expect("agent");

    // Before any ztunnel: recorded for the snapshot.
    assert_eq!(agent.add(&a).expect("add a"), Delivery::Queued);

    let first = fake_ztunnel(agent.socket_path(), 4);
    agent.wait_connections(1, WAIT).expect("first connection");
    assert_eq!(agent.add(&b).expect("add b"), Delivery::Acked);
    assert_eq!(agent.del(&a.uid).expect("del a"), Delivery::Acked);
    let seen = first.join().expect("first ztunnel");
    let (a_ino, a_dev) = netns_inode(&a.netns_name);
    let (b_ino, b_dev) = netns_inode(&b.netns_name);
    let own = std::fs::metadata("/proc/self/ns/net").expect("own netns");
    assert_ne!(a_ino, own.ino(), "pod netns must not be the test's own");
    match seen.as_slice() {
        [Seen::Add(u1, i1, d1), Seen::Snapshot, Seen::Add(u2, i2, d2), Seen::Del(u3)] => {
            assert_eq!((u1, *i1, *d1), (&a.uid, a_ino, a_dev));
            assert_eq!((u2, *i2, *d2), (&b.uid, b_ino, b_dev));
            assert_eq!(u3, &a.uid);
        }
        other => panic!("unexpected requests: {other:?}"),
    }

    // A restarted ztunnel gets what is enrolled now: b, then snapshot_sent.
    let second = fake_ztunnel(agent.socket_path(), 3);
    agent.wait_connections(2, WAIT).expect("second connection");
    let refused = agent.keep(&b.uid).expect_err("the fake refuses keeps");
    assert!(
        format!("{refused:#}").contains("keep refused by the test"),
        "{refused:#}"
    );
    let seen = second.join().expect("second ztunnel");
    match seen.as_slice() {
        [Seen::Add(u, i, d), Seen::Snapshot, Seen::Keep(k)] => {
            assert_eq!((u, *i, *d), (&b.uid, b_ino, b_dev));
            assert_eq!(k, &b.uid);
        }
        other => panic!("unexpected requests: {other:?}"),
    }
    // The link is gone now: changes queue for the next connection.
    e2e::retry_until("the agent to notice the hang-up", WAIT, || {
        match agent.del(&b.uid)? {
            Delivery::Queued => Ok(()),
            Delivery::Acked => anyhow::bail!("acked by a closed link"),
        }
    })
    .expect("queued after hang-up");
}

fn netns_list() -> String {
    let out = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn host_links() -> String {
    let out = std::process::Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .expect("ip link");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Builds two nodes with a captured pod each and a process in one; returns the names.
fn build(topo: &mut Topology) -> (Vec<String>, u32) {
    let n1 = topo.add_node("n1").expect("n1");
    let n2 = topo.add_node("n2").expect("n2");
    let a = topo.add_pod(&n1, "demo", "a", captured()).expect("a");
    topo.add_pod(&n2, "demo", "b", captured()).expect("b");
    // A process the topology did not hand out: only the namespace knows it.
    let proc = topo.tcp_echo(&a, 7000).expect("echo");
    let pid = proc.pid();
    std::mem::forget(proc);
    (topo.netns_names().to_vec(), pid)
}

fn assert_gone(names: &[String], pid: u32, prefix: &str) {
    assert!(names.len() >= 5, "{names:?}");
    let list = netns_list();
    for name in names {
        assert!(
            !list
                .lines()
                .any(|l| l.split_whitespace().next() == Some(name)),
            "{name} left behind:\n{list}"
        );
    }
    let links = host_links();
    assert!(
        !links.contains(prefix),
        "host links mention {prefix}:\n{links}"
    );
    // Killed; once reaped (we are its parent, and forgot it) /proc/<pid> disappears.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(
        stat.is_empty() || stat.contains(") Z "),
        "process {pid} still runs: {stat}"
    );
}

#[test]
fn a_dropped_topology_leaves_nothing_behind_even_on_panic() {
    e2e::require_root();
    // Normal drop.
    let mut topo = Topology::new("cleanup").expect("topology");
    let prefix = topo.prefix().to_string();
    let dir = topo.dir().to_path_buf();
    let (names, pid) = build(&mut topo);
    assert!(netns_list().contains(&names[0]));
    drop(topo);
    assert_gone(&names, pid, &prefix);
    assert!(!dir.exists(), "temp dir {} left behind", dir.display());

    // Drop while panicking: still cleaned; the logs are kept for inspection.
    let made = Arc::new(Mutex::new(None));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut topo = Topology::new("cleanup_panic").expect("topology");
        let built = build(&mut topo);
        *made.lock().unwrap() = Some((built, topo.prefix().to_string(), topo.dir().to_owned()));
        panic!("deliberate panic with a live topology");
    }));
    assert!(result.is_err());
    let ((names, pid), prefix, dir) = made.lock().unwrap().take().expect("built");
    assert_gone(&names, pid, &prefix);
    assert!(dir.exists(), "logs of a failed test should be kept");
    std::fs::remove_dir_all(&dir).expect("remove kept logs");

    // Leftovers of a killed run go with cleanup_stale.
    let stale = format!("e2e-{}-stale-cleanup", std::process::id());
    let st = std::process::Command::new("ip")
        .args(["netns", "add", &stale])
        .status()
        .expect("ip netns add");
    assert!(st.success());
    let removed = e2e::cleanup_stale(&stale).expect("cleanup_stale");
    assert_eq!(removed, vec![stale.clone()]);
    assert!(!netns_list().contains(&stale));
}
