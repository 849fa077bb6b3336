use std::net::IpAddr;

use mesh::metrics::Reporter;
use mesh::model::{Policy, PolicyAction, PolicyScope, Workload};
use mesh::rbac::Connection;
use mesh::store::{Batch, Store};
use proto::workload as pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::sleep;

use super::*;
use crate::proxy::authz::Inbound;
use crate::telemetry::{ConnectionRecord, Peer, Telemetry};

const DRAIN: Duration = Duration::from_secs(5);
const UID: &str = "Kubernetes//v1/Pod/demo/b";

fn key(netns: u64) -> PodKey {
    PodKey {
        uid: UID.into(),
        netns,
    }
}

fn served(pod: &PodKey) -> Arc<LiveConnections> {
    let live = Arc::new(LiveConnections::default());
    assert_eq!(live.pod_started(pod), None);
    live
}

fn inbound() -> Kind {
    let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
    Kind::Inbound(Inbound::direct(Connection {
        src_identity: None,
        src_ip: ip("10.11.0.2"),
        dst_ip: ip("10.12.0.2"),
        dst_port: 7000,
    }))
}

/// The reason `guard` was told to close with, without waiting.
fn closed(guard: &LiveGuard) -> Option<CloseReason> {
    guard
        .counts
        .close
        .reason
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
}

/// A record, counted in `telemetry`, of a connection between unknown peers.
fn record(telemetry: &Arc<Telemetry>, reporter: Reporter) -> ConnectionRecord {
    ConnectionRecord::open(
        telemetry,
        reporter,
        Peer::default(),
        Peer::default(),
        None,
        true,
    )
}

/// A client and a server end with `copy_until_closed` running between them under `guard`.
fn copying(
    guard: LiveGuard,
) -> (
    tokio::io::DuplexStream,
    tokio::io::DuplexStream,
    tokio::task::JoinHandle<Result<Transferred, CopyEnd>>,
) {
    let (client, proxy_a) = tokio::io::duplex(1024);
    let (proxy_b, server) = tokio::io::duplex(1024);
    (
        client,
        server,
        tokio::spawn(copy_until_closed(proxy_a, proxy_b, guard)),
    )
}

#[tokio::test(start_paused = true)]
async fn a_removed_pods_connections_go_on_for_the_drain_period_then_close() {
    let pod = key(1);
    let live = served(&pod);
    let guards = [
        live.register(&pod, inbound()).expect("served"),
        live.register(&pod, Kind::Outbound).expect("served"),
        live.register(&pod, Kind::Tunnel).expect("served"),
    ];

    assert_eq!(live.pod_removed(&pod, DRAIN), 2, "two proxied connections");
    assert!(
        live.register(&pod, Kind::Outbound).is_none(),
        "new connections are refused at once"
    );
    assert_eq!(
        live.draining(),
        vec![DrainingPod {
            uid: UID.into(),
            netns_inode: 1,
            connections: 2,
            tunnels: 1,
        }]
    );

    sleep(DRAIN - Duration::from_millis(10)).await;
    assert!(
        guards.iter().all(|g| closed(g).is_none()),
        "still in the drain"
    );

    sleep(Duration::from_millis(20)).await;
    for g in &guards {
        assert_eq!(closed(g), Some(CloseReason::PodRemoved { drain: DRAIN }));
    }
    assert!(live.draining().is_empty());
    assert!(live.register(&pod, Kind::Outbound).is_none());
}

#[tokio::test(start_paused = true)]
async fn a_connection_registered_beside_another_closes_with_either_pod_and_leaves_with_both() {
    let (src, dst) = (key(1), key(2));
    let live = served(&src);
    let outbound = live.register(&src, Kind::Outbound).expect("served");
    assert!(
        live.register_beside(&dst, inbound(), &outbound).is_none(),
        "the destination is not served yet"
    );
    live.pod_started(&dst);
    let beside = live
        .register_beside(&dst, inbound(), &outbound)
        .expect("served");
    assert_eq!(live.len(), 2, "one entry under each pod");
    outbound.read_before_copy(5);
    outbound.describe(Ends {
        src: Some("10.11.0.2".into()),
        dst: Some("10.96.0.10:80".parse().expect("service address")),
        ..Ends::default()
    });
    let listed = live.connections();
    assert!(
        listed.iter().all(|c| c.bytes_sent == 5),
        "both entries show the one connection's bytes: {listed:?}"
    );
    let ends_of = |direction: &str| {
        listed
            .iter()
            .find(|c| c.direction == direction)
            .map(|c| c.ends.dst)
            .expect("listed")
    };
    assert_eq!(
        ends_of("outbound"),
        Some("10.96.0.10:80".parse().expect("addr")),
        "the source pod's entry: the address the client dialled"
    );
    assert_eq!(
        ends_of("inbound"),
        Some("10.12.0.2:7000".parse().expect("addr")),
        "the destination pod's entry: its own address, not the source's view"
    );

    // The destination's removal closes the connection its source's copy waits on.
    live.pod_removed(&dst, DRAIN);
    sleep(DRAIN + Duration::from_millis(10)).await;
    assert_eq!(
        closed(&outbound),
        Some(CloseReason::PodRemoved { drain: DRAIN })
    );
    drop(beside);
    drop(outbound);
    assert!(live.is_empty(), "both entries leave with their guards");
}

#[tokio::test(start_paused = true)]
async fn connections_that_end_within_the_drain_leave_nothing_behind() {
    let pod = key(1);
    let live = served(&pod);
    let guard = live.register(&pod, Kind::Outbound).expect("served");
    live.pod_removed(&pod, DRAIN);
    drop(guard);
    assert!(live.is_empty());
    sleep(DRAIN * 2).await;
    assert!(live.draining().is_empty());

    // A pod with nothing open is forgotten at once.
    let other = key(2);
    live.pod_started(&other);
    assert_eq!(live.pod_removed(&other, DRAIN), 0);
    assert!(live.draining().is_empty());
    assert!(live.register(&other, Kind::Outbound).is_none());
}

#[tokio::test(start_paused = true)]
async fn a_pod_handed_over_again_before_the_drain_ends_keeps_its_connections() {
    let pod = key(1);
    let live = served(&pod);
    let old = live.register(&pod, inbound()).expect("served");

    live.pod_removed(&pod, DRAIN);
    sleep(DRAIN / 2).await;
    assert_eq!(live.pod_started(&pod), Some(1), "one connection kept");
    sleep(DRAIN * 3).await;
    assert_eq!(closed(&old), None, "the cancelled drain closed nothing");
    assert!(live.draining().is_empty());

    // The kept connection still belongs to the pod: the next removal drains it too.
    let new = live.register(&pod, Kind::Outbound).expect("served again");
    assert_eq!(live.pod_removed(&pod, DRAIN), 2);
    sleep(DRAIN + Duration::from_millis(10)).await;
    assert!(closed(&old).is_some() && closed(&new).is_some());
}

#[tokio::test(start_paused = true)]
async fn only_the_latest_removal_of_a_pod_decides_when_it_closes() {
    let pod = key(1);
    let live = served(&pod);
    let guard = live.register(&pod, Kind::Outbound).expect("served");

    live.pod_removed(&pod, DRAIN); // closes at 5 s unless re-added
    sleep(Duration::from_secs(1)).await;
    live.pod_started(&pod);
    sleep(Duration::from_secs(2)).await;
    live.pod_removed(&pod, DRAIN); // at 3 s: closes at 8 s
    sleep(Duration::from_secs(3)).await;
    assert_eq!(closed(&guard), None, "6 s: the first drain was cancelled");
    sleep(Duration::from_secs(2) + Duration::from_millis(10)).await;
    assert!(closed(&guard).is_some(), "8 s: the second drain ended");
}

#[tokio::test(start_paused = true)]
async fn a_new_sandbox_of_the_same_pod_does_not_keep_the_old_ones_connections() {
    let (old_ns, new_ns) = (key(1), key(2));
    let live = served(&old_ns);
    let old = live.register(&old_ns, Kind::Outbound).expect("served");
    live.pod_started(&new_ns);
    let new = live.register(&new_ns, Kind::Outbound).expect("served");

    live.pod_removed(&old_ns, DRAIN);
    sleep(DRAIN + Duration::from_millis(10)).await;
    assert!(closed(&old).is_some());
    assert_eq!(closed(&new), None);
}

fn workload() -> Workload {
    Workload::try_from(pb::Workload {
        uid: UID.into(),
        name: "b".into(),
        namespace: "demo".into(),
        addresses: vec![vec![10, 12, 0, 2]],
        tunnel_protocol: pb::TunnelProtocol::Hbone as i32,
        service_account: "b".into(),
        ..Default::default()
    })
    .expect("valid workload")
}

#[tokio::test]
async fn a_policy_change_closes_only_inbound_connections_it_denies() {
    let pod = key(1);
    let live = served(&pod);
    let guards = [
        live.register(&pod, inbound()).expect("served"),
        live.register(&pod, Kind::Outbound).expect("served"),
        live.register(&pod, Kind::Tunnel).expect("served"),
    ];
    let store = Store::new();
    let mut batch = Batch::new();
    batch.upsert_workload(workload());
    store.apply(batch);
    assert_eq!(live.recheck(&store), 0, "no policy: allowed");

    // An ALLOW policy that matches nothing: everything is denied.
    let mut batch = Batch::new();
    batch.upsert_policy(Policy {
        name: "nothing".into(),
        namespace: "demo".into(),
        scope: PolicyScope::Namespace,
        action: PolicyAction::Allow,
        rules: vec![],
        dry_run: false,
    });
    store.apply(batch);
    assert_eq!(live.recheck(&store), 1);
    assert!(matches!(closed(&guards[0]), Some(CloseReason::Denied(_))));
    assert_eq!(closed(&guards[1]), None);
    assert_eq!(closed(&guards[2]), None);
}

#[tokio::test(start_paused = true)]
async fn a_closed_copy_drops_both_sides_and_reports_the_bytes_moved() {
    let pod = key(1);
    let live = served(&pod);
    let guard = live.register(&pod, Kind::Outbound).expect("served");
    let (mut client, mut server, copy) = copying(guard);

    client.write_all(b"hello").await.expect("write");
    let mut buf = [0u8; 5];
    server.read_exact(&mut buf).await.expect("server reads");
    server.write_all(b"hi").await.expect("reply");
    let mut buf = [0u8; 2];
    client.read_exact(&mut buf).await.expect("client reads");

    live.pod_removed(&pod, DRAIN);
    match copy.await.expect("join") {
        Err(CopyEnd::Closed {
            reason,
            transferred,
        }) => {
            assert_eq!(reason, CloseReason::PodRemoved { drain: DRAIN });
            assert_eq!(
                transferred,
                Transferred {
                    a_to_b: 5,
                    b_to_a: 2
                }
            );
        }
        other => panic!("{other:?}"),
    }
    // Both ends see the connection end.
    assert_eq!(client.read(&mut [0u8; 8]).await.expect("eof"), 0);
    assert_eq!(server.read(&mut [0u8; 8]).await.expect("eof"), 0);
}

#[test]
fn a_drained_connection_is_counted_with_its_bytes_and_the_drain_flag() {
    let telemetry = Arc::new(Telemetry::default());
    let record = record(&telemetry, Reporter::destination);
    let end = CopyEnd::Closed {
        reason: CloseReason::PodRemoved { drain: DRAIN },
        transferred: Transferred {
            a_to_b: 5,
            b_to_a: 2,
        },
    };
    assert_eq!(
        end.to_string(),
        "closed: pod removed from the mesh: drain period of 5s ended"
    );
    finish(record, &Err(end));
    let metrics = telemetry.encode();
    let line = |name: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(name) && l.contains("response_flags=\"DRAIN\""))
            .unwrap_or_else(|| panic!("no {name} with the drain flag in\n{metrics}"))
            .to_string()
    };
    assert!(line("istio_tcp_connections_closed_total").ends_with(" 1"));
    assert!(line("istio_tcp_received_bytes_total").ends_with(" 5"));
    assert!(line("istio_tcp_sent_bytes_total").ends_with(" 2"));
}

/// An inbound connection from `10.11.<a>.<b>`.
fn inbound_from(n: u16) -> Kind {
    Kind::Inbound(Inbound::direct(Connection {
        src_identity: None,
        src_ip: IpAddr::from([10, 11, (n >> 8) as u8, n as u8]),
        dst_ip: IpAddr::from([10, 12, 0, 2]),
        dst_port: 7000,
    }))
}

/// A namespace-wide policy in `demo`: DENY without rules denies nothing, ALLOW without rules
/// allows nothing.
fn policy(name: &str, action: PolicyAction, dry_run: bool) -> Policy {
    Policy {
        name: name.into(),
        namespace: "demo".into(),
        scope: PolicyScope::Namespace,
        action,
        rules: vec![],
        dry_run,
    }
}

fn apply(store: &Store, edit: impl FnOnce(&mut Batch)) {
    let mut batch = Batch::new();
    edit(&mut batch);
    store.apply(batch);
}

/// Another pod's workload: a change that is nothing to `UID`'s connections.
fn unrelated(n: u8) -> Workload {
    Workload::try_from(pb::Workload {
        uid: format!("Kubernetes//v1/Pod/demo/other-{n}"),
        name: format!("other-{n}"),
        namespace: "demo".into(),
        addresses: vec![vec![10, 12, 1, n]],
        tunnel_protocol: pb::TunnelProtocol::Hbone as i32,
        service_account: "other".into(),
        ..Default::default()
    })
    .expect("valid workload")
}

#[tokio::test]
async fn a_recheck_evaluates_each_distinct_connection_once_off_the_lock_and_only_when_its_policies_change(
) {
    let pod = key(1);
    let live = served(&pod);
    // 10,000 connections from 10 clients.
    let guards: Vec<LiveGuard> = (0..10_000)
        .map(|i| live.register(&pod, inbound_from(i % 10)).expect("served"))
        .collect();
    let store = Store::new();
    apply(&store, |b| {
        b.upsert_workload(workload());
        b.upsert_policy(policy("deny-nothing", PolicyAction::Deny, false));
    });
    assert_eq!(live.recheck(&store), 0);
    assert_eq!(
        live.recheck_evaluations(),
        10,
        "once per distinct connection"
    );
    assert_eq!(
        live.evaluations_unlocked.load(Ordering::Relaxed),
        10,
        "every evaluation ran without the registry's lock"
    );

    // Another pod, the same policy re-sent, nothing at all: the pod's policies are unchanged.
    apply(&store, |b| {
        b.upsert_workload(unrelated(1));
    });
    assert_eq!(live.recheck(&store), 0);
    apply(&store, |b| {
        b.upsert_policy(policy("deny-nothing", PolicyAction::Deny, false));
    });
    assert_eq!(live.recheck(&store), 0);
    assert_eq!(live.recheck(&store), 0);
    assert_eq!(live.recheck_evaluations(), 10, "nothing evaluated again");

    // A change in scope: each distinct connection once more, and every connection closed.
    apply(&store, |b| {
        b.upsert_policy(policy("allow-nothing", PolicyAction::Allow, false));
    });
    assert_eq!(live.recheck(&store), 10_000);
    assert_eq!(live.recheck_evaluations(), 20);
    assert!(guards
        .iter()
        .all(|g| matches!(closed(g), Some(CloseReason::Denied(_)))));
}

#[tokio::test]
async fn connections_registered_after_a_recheck_are_evaluated_by_the_next_one_only() {
    let pod = key(1);
    let live = served(&pod);
    let store = Store::new();
    apply(&store, |b| {
        b.upsert_workload(workload());
        b.upsert_policy(policy("deny-nothing", PolicyAction::Deny, false));
    });
    let _old = live.register(&pod, inbound_from(1)).expect("served");
    live.recheck(&store);
    assert_eq!(live.recheck_evaluations(), 1);

    // Admitted since: two like an existing one and one from a new client.
    let _new: Vec<LiveGuard> = [1, 1, 2]
        .into_iter()
        .map(|n| live.register(&pod, inbound_from(n)).expect("served"))
        .collect();
    apply(&store, |b| {
        b.upsert_workload(unrelated(1));
    });
    live.recheck(&store);
    assert_eq!(
        live.recheck_evaluations(),
        3,
        "the two new distinct connections"
    );
    apply(&store, |b| {
        b.upsert_workload(unrelated(2));
    });
    live.recheck(&store);
    assert_eq!(live.recheck_evaluations(), 3, "all checked already");
}

#[tokio::test]
async fn a_dry_run_outcome_is_logged_once_per_policy_change_not_per_connection_per_push() {
    let (logs, _guard) = mesh::testing::LogBuffer::scoped();
    let dry_runs = || logs.text().matches("dry-run policy evaluated").count();
    let pod = key(1);
    let live = served(&pod);
    let _guards: Vec<LiveGuard> = (0..100)
        .map(|_| live.register(&pod, inbound_from(7)).expect("served"))
        .collect();
    let store = Store::new();
    apply(&store, |b| {
        b.upsert_workload(workload());
        b.upsert_policy(policy("trial", PolicyAction::Allow, true));
    });
    assert_eq!(live.recheck(&store), 0, "dry-run: nothing enforced");
    assert_eq!(dry_runs(), 1, "{}", logs.text());

    for n in 1..=3 {
        apply(&store, |b| {
            b.upsert_workload(unrelated(n));
        });
        live.recheck(&store);
    }
    assert_eq!(dry_runs(), 1, "pushes that change nothing log nothing");

    apply(&store, |b| {
        b.upsert_policy(policy("trial", PolicyAction::Deny, true));
    });
    live.recheck(&store);
    assert_eq!(dry_runs(), 2, "{}", logs.text());
}

#[tokio::test]
async fn a_connection_that_already_ended_is_neither_closed_nor_counted_by_a_recheck() {
    let pod = key(1);
    let live = served(&pod);
    let store = Store::new();
    apply(&store, |b| {
        b.upsert_workload(workload());
        b.upsert_policy(policy("allow-nothing", PolicyAction::Allow, false));
    });
    let kept = live.register(&pod, inbound_from(1)).expect("served");
    drop(live.register(&pod, inbound_from(1)).expect("served"));
    assert_eq!(live.recheck(&store), 1);
    assert!(closed(&kept).is_some());
    assert_eq!(live.counts().connections, 1);
}

#[tokio::test(start_paused = true)]
async fn the_connection_dump_lists_live_connections_with_ends_bytes_and_state() {
    let pod = key(1);
    let live = served(&pod);
    let inbound_guard = live.register(&pod, inbound()).expect("served");
    let _tunnel = live.register(&pod, Kind::Tunnel).expect("served");
    let outbound = live.register(&pod, Kind::Outbound).expect("served");
    outbound.describe(Ends {
        src: Some("10.12.0.2:40000".into()),
        dst: Some("10.96.0.5:80".parse().expect("addr")),
        src_identity: Some("spiffe://cluster.local/ns/demo/sa/b".parse().expect("id")),
        dst_identity: Some("spiffe://cluster.local/ns/demo/sa/web".parse().expect("id")),
        waypoint: None,
    });
    let (mut client, mut server, copy) = copying(outbound);
    client.write_all(b"hello").await.expect("write");
    server
        .read_exact(&mut [0u8; 5])
        .await
        .expect("server reads");
    server.write_all(b"hi").await.expect("reply");
    client
        .read_exact(&mut [0u8; 2])
        .await
        .expect("client reads");
    sleep(Duration::from_secs(3)).await;

    let dump = live.connections();
    assert_eq!(dump.len(), 2, "the HBONE tunnel is not listed: {dump:?}");
    let (first, second) = (&dump[0], &dump[1]);
    assert_eq!(
        (first.direction, first.ends.src.as_deref(), first.ends.dst),
        (
            "inbound",
            Some("10.11.0.2"),
            Some("10.12.0.2:7000".parse().expect("addr"))
        )
    );
    assert_eq!(first.state, "open");
    assert_eq!(second.direction, "outbound");
    assert_eq!(second.pod_uid, UID);
    assert_eq!((second.bytes_sent, second.bytes_received), (5, 2));
    assert!(second.age_ms >= 3000, "{second:?}");
    assert_eq!(
        second.ends.dst_identity.as_ref().map(Identity::as_uri),
        Some("spiffe://cluster.local/ns/demo/sa/web")
    );

    live.pod_removed(&pod, DRAIN);
    assert!(live.connections().iter().all(|c| c.state == "draining"));
    drop(inbound_guard);
    client.shutdown().await.expect("client done");
    server.shutdown().await.expect("server done");
    copy.await.expect("join").expect("clean end");
    assert_eq!(
        live.connections(),
        Vec::new(),
        "closed connections are gone"
    );
}

/// Each proxied connection's task holds this future for the connection's whole life, so what
/// it keeps inline is memory per idle connection: an unboxed graceful close (two 4 KiB read
/// buffers) once made every connection 9 KiB bigger.
#[tokio::test]
async fn the_copy_future_each_connection_holds_stays_small() {
    let pod = key(1);
    let live = served(&pod);
    let guard = live.register(&pod, Kind::Outbound).expect("served");
    let (_client, a) = tokio::io::duplex(64);
    let (b, _server) = tokio::io::duplex(64);
    let copy = copy_until_closed(a, b, guard);
    let size = std::mem::size_of_val(&copy);
    assert!(size < 2048, "copy_until_closed's future is {size} bytes");
}

#[tokio::test]
async fn a_connection_copy_task_holds_its_copy_and_record_and_nothing_more() {
    let pod = key(1);
    let live = served(&pod);
    let (_client, a) = tokio::io::duplex(64);
    let (b, _server) = tokio::io::duplex(64);
    let copy = copy_until_closed(a, b, live.register(&pod, Kind::Outbound).expect("served"));
    let copy_size = std::mem::size_of_val(&copy);
    let task = proxied::Proxied {
        copy,
        record: Some(record(&Arc::new(Telemetry::default()), Reporter::source)),
        _slot: crate::proxy::limits::PodCap::default()
            .admit()
            .expect("no cap"),
    };
    let overhead =
        std::mem::size_of_val(&task) - copy_size - std::mem::size_of::<Option<ConnectionRecord>>();
    assert!(
        overhead <= 16,
        "the copy task holds {overhead} bytes beyond its copy and record"
    );
}

/// A registry whose connections get `timeout` to send their first byte.
fn served_with_first_byte_timeout(pod: &PodKey, timeout: Duration) -> Arc<LiveConnections> {
    let live = Arc::new(LiveConnections::default().with_first_byte_timeout(Some(timeout)));
    assert_eq!(live.pod_started(pod), None);
    live
}

#[tokio::test(start_paused = true)]
async fn a_connection_silent_past_the_first_byte_timeout_is_closed_cleanly() {
    let pod = key(1);
    let live = served_with_first_byte_timeout(&pod, Duration::from_secs(30));
    let guard = live.register(&pod, Kind::Outbound).expect("served");
    let (mut client, mut server, copy) = copying(guard);

    sleep(Duration::from_secs(29)).await;
    assert!(!copy.is_finished(), "kept until the timeout");
    match copy.await.expect("join") {
        Err(CopyEnd::Closed {
            reason,
            transferred,
        }) => {
            assert_eq!(
                reason,
                CloseReason::Silent {
                    after: Duration::from_secs(30)
                }
            );
            assert_eq!(reason.flags(), "SILENT");
            assert_eq!(transferred, Transferred::default());
        }
        other => panic!("{other:?}"),
    }
    // A clean end on both sides, not an error.
    assert_eq!(client.read(&mut [0u8; 8]).await.expect("eof"), 0);
    assert_eq!(server.read(&mut [0u8; 8]).await.expect("eof"), 0);
    assert_eq!(live.counts().connections, 0);
}

#[tokio::test(start_paused = true)]
async fn a_connection_that_carried_a_byte_is_never_timed_out_for_quiet() {
    let pod = key(1);
    let live = served_with_first_byte_timeout(&pod, Duration::from_secs(30));
    let guard = live.register(&pod, Kind::Outbound).expect("served");
    let (mut client, mut server, copy) = copying(guard);

    // A server-speaks-first protocol: the greeting, then a client that thinks for an hour.
    server.write_all(b"220 ready\r\n").await.expect("greeting");
    let mut greeting = [0u8; 11];
    client
        .read_exact(&mut greeting)
        .await
        .expect("client reads");
    sleep(Duration::from_secs(3600)).await;
    assert!(
        !copy.is_finished(),
        "a quiet connection that carried bytes stays"
    );
    client.write_all(b"QUIT\r\n").await.expect("write");
    let mut quit = [0u8; 6];
    server.read_exact(&mut quit).await.expect("server reads");
    drop((client, server));
    let t = copy.await.expect("join").expect("clean end");
    assert_eq!((t.a_to_b, t.b_to_a), (6, 11));
}
