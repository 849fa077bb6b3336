//! ztunnel's own metric families appear with their documented names and labels after the
//! events that drive them.

use std::sync::Arc;
use std::time::Duration;

use mesh::model::{Policy, PolicyAction, PolicyScope, Workload};
use mesh::rbac::Connection;
use mesh::store::{Batch, Store};
use proto::workload as pb;

use super::*;
use crate::inpod::{PodStates, Pods};
use crate::proxy::authz::{self, Inbound};
use crate::proxy::live::{Kind, LiveConnections, PodKey};

const UID: &str = "Kubernetes//v1/Pod/shop/reviews-v1-abc";

/// The value of one series, `None` when it is absent.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
}

fn info() -> proto::zds::WorkloadInfo {
    proto::zds::WorkloadInfo {
        name: "reviews-v1-abc".into(),
        namespace: "shop".into(),
        service_account: "reviews".into(),
    }
}

fn workload() -> Workload {
    Workload::try_from(pb::Workload {
        uid: UID.into(),
        name: "reviews-v1-abc".into(),
        namespace: "shop".into(),
        addresses: vec![vec![10, 12, 0, 2]],
        tunnel_protocol: pb::TunnelProtocol::Hbone as i32,
        service_account: "reviews".into(),
        workload_name: "reviews-v1".into(),
        ..Default::default()
    })
    .expect("valid workload")
}

fn record(t: &Arc<Telemetry>, reporter: Reporter, pod: &Arc<PodConnections>) -> ConnectionRecord {
    ConnectionRecord::open(t, reporter, Peer::default(), Peer::default(), None, true).for_pod(pod)
}

fn pod_series(name: &str, direction: &str, workload: &str) -> String {
    format!("{name}{{direction=\"{direction}\",namespace=\"shop\",workload=\"{workload}\",pod=\"reviews-v1-abc\"}}")
}

#[test]
fn a_denied_connection_counts_a_deny_decision_by_policy_and_a_denied_failure() {
    let store = Store::new();
    let mut batch = Batch::new();
    batch.upsert_workload(workload());
    batch.upsert_policy(Policy {
        name: "deny-all".into(),
        namespace: "shop".into(),
        scope: PolicyScope::Namespace,
        action: PolicyAction::Deny,
        rules: vec![mesh::model::Rule::default()],
        dry_run: false,
    });
    store.apply(batch);
    let t = Arc::new(Telemetry::with_store(store.clone()));
    let pod = t.pod(UID, Some(&info()));
    let dst = store.workload(UID).expect("workload");
    let inbound = Inbound::direct(Connection {
        src_identity: None,
        src_ip: "10.11.0.7".parse().expect("ip"),
        dst_ip: "10.12.0.2".parse().expect("ip"),
        dst_port: 9080,
    });

    // What the inbound path does with a denied connection.
    let r = record(&t, Reporter::destination, &pod);
    let decision = authz::check(&store, &dst, &inbound);
    assert!(!decision.allowed, "{}", decision.reason);
    t.authorization(dst.namespace(), &decision);
    r.fail(FailureReason::denied, &decision.reason);

    let text = t.encode();
    let decision = "ztunnel_authorization_decisions_total{namespace=\"shop\",policy=\"shop/deny-all\",decision=\"deny\"}";
    assert_eq!(sample(&text, decision), Some(1.0), "{text}");
    let failure = "ztunnel_connection_failures_total{direction=\"inbound\",reason=\"denied\"}";
    assert_eq!(sample(&text, failure), Some(1.0), "{text}");
    let total = pod_series("ztunnel_connections_total", "inbound", "reviews-v1");
    assert_eq!(sample(&text, &total), Some(1.0), "{text}");
    let active = pod_series("ztunnel_connections_active", "inbound", "reviews-v1");
    assert_eq!(sample(&text, &active), Some(0.0), "{text}");
}

#[test]
fn a_decision_no_single_policy_made_is_labelled_default() {
    let store = Store::new();
    let mut batch = Batch::new();
    batch.upsert_workload(workload());
    store.apply(batch);
    let t = Arc::new(Telemetry::default());
    let dst = store.workload(UID).expect("workload");
    let inbound = Inbound::direct(Connection {
        src_identity: None,
        src_ip: "10.11.0.7".parse().expect("ip"),
        dst_ip: "10.12.0.2".parse().expect("ip"),
        dst_port: 9080,
    });
    let decision = authz::check(&store, &dst, &inbound);
    assert!(decision.allowed);
    t.authorization(dst.namespace(), &decision);
    let text = t.encode();
    let series = "ztunnel_authorization_decisions_total{namespace=\"shop\",policy=\"default\",decision=\"allow\"}";
    assert_eq!(sample(&text, series), Some(1.0), "{text}");
}

#[test]
fn every_failure_reason_is_exported_at_zero_from_the_start() {
    let text = Telemetry::default().encode();
    for direction in Direction::ALL {
        for reason in FailureReason::ALL {
            let series = format!(
                "ztunnel_connection_failures_total{{direction=\"{}\",reason=\"{reason:?}\"}}",
                direction.as_str()
            );
            assert_eq!(sample(&text, &series), Some(0.0), "{series}:\n{text}");
        }
    }
}

#[test]
fn active_connections_follow_the_record_and_a_pod_leaving_removes_its_series() {
    let t = Arc::new(Telemetry::default());
    let pod = t.pod(UID, Some(&info()));
    let out = pod_series("ztunnel_connections_active", "outbound", "unknown");
    let out_total = pod_series("ztunnel_connections_total", "outbound", "unknown");

    let open = record(&t, Reporter::source, &pod);
    let text = t.encode();
    assert_eq!(sample(&text, &out), Some(1.0), "{text}");
    assert_eq!(sample(&text, &out_total), Some(1.0), "{text}");
    // The pod handed over again while alive counts on in the same series.
    let again = t.pod(UID, Some(&info()));
    assert!(Arc::ptr_eq(&pod, &again));
    drop(again);

    open.close(10, 20, None);
    let text = t.encode();
    assert_eq!(sample(&text, &out), Some(0.0), "{text}");
    assert_eq!(sample(&text, &out_total), Some(1.0), "{text}");

    // The pod's proxy and connections are gone: so are its series.
    drop(pod);
    let text = t.encode();
    assert!(!text.contains("pod=\"reviews-v1-abc\""), "{text}");
}

#[test]
fn a_pod_is_named_from_the_uid_when_nothing_else_names_it() {
    let t = Arc::new(Telemetry::default());
    let _pod = t.pod(UID, None);
    let text = t.encode();
    let series = pod_series("ztunnel_connections_total", "inbound", "unknown");
    assert_eq!(sample(&text, &series), Some(0.0), "{text}");
}

#[test]
fn hbone_and_connect_errors_map_to_their_failure_reasons() {
    use mesh::hbone::HboneError;
    use std::io::{Error, ErrorKind};
    let connect = |kind| HboneError::Connect {
        addr: "10.0.0.1:15008".parse().expect("addr"),
        source: Arc::new(Error::from(kind)),
    };
    let cases = [
        (
            connect(ErrorKind::ConnectionRefused),
            FailureReason::upstream_connect,
        ),
        (connect(ErrorKind::TimedOut), FailureReason::timeout),
        (
            HboneError::Status(http::StatusCode::UNAUTHORIZED),
            FailureReason::denied,
        ),
        (
            HboneError::Status(http::StatusCode::SERVICE_UNAVAILABLE),
            FailureReason::hbone,
        ),
        (
            HboneError::Timeout("CONNECT response"),
            FailureReason::timeout,
        ),
        (
            HboneError::NoCertificate("x".into()),
            FailureReason::tls_handshake,
        ),
        (HboneError::PoolClosed, FailureReason::other),
    ];
    for (error, reason) in cases {
        assert_eq!(FailureReason::of_hbone(&error), reason, "{error}");
    }
}

#[tokio::test]
async fn pods_gauge_counts_served_pods_and_draining_ones() {
    let pods = Arc::new(Pods::default());
    let live = Arc::new(LiveConnections::default());
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(PodStates {
        pods: pods.clone(),
        live: live.clone(),
    }));
    let key = PodKey {
        uid: UID.into(),
        netns: 1,
    };
    live.pod_started(&key);
    let _conn = live.register(&key, Kind::Outbound).expect("served");
    live.pod_removed(&key, Duration::from_secs(60));
    let text = mesh::metrics::encode(&registry);
    assert_eq!(
        sample(&text, "ztunnel_pods{state=\"serving\"}"),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "ztunnel_pods{state=\"draining\"}"),
        Some(1.0),
        "{text}"
    );
}

/// The value of the `istio_tcp_*` counter `name` whose `response_flags` is `flags`, summed
/// over its series.
fn tcp_with_flags(text: &str, name: &str, flags: &str) -> f64 {
    let flags = format!("response_flags=\"{flags}\"");
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(&flags))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn a_close_is_counted_under_the_flags_learned_after_the_open() {
    let t = Arc::new(Telemetry::default());
    let pod = t.pod(UID, Some(&info()));
    let mut denied = record(&t, Reporter::destination, &pod);
    denied.set_flags("DENY");
    denied.close(0, 0, None);
    record(&t, Reporter::destination, &pod).close(3, 0, Some(&"connection refused"));
    record(&t, Reporter::destination, &pod).close(5, 9, None);

    let text = t.encode();
    let opened = "istio_tcp_connections_opened_total";
    let closed = "istio_tcp_connections_closed_total";
    assert_eq!(tcp_with_flags(&text, opened, "-"), 3.0, "{text}");
    assert_eq!(tcp_with_flags(&text, closed, "DENY"), 1.0, "{text}");
    assert_eq!(tcp_with_flags(&text, closed, "UF"), 1.0, "{text}");
    assert_eq!(tcp_with_flags(&text, closed, "-"), 1.0, "{text}");
    assert_eq!(
        tcp_with_flags(&text, "istio_tcp_received_bytes_total", "UF"),
        3.0
    );
    assert_eq!(
        tcp_with_flags(&text, "istio_tcp_sent_bytes_total", "-"),
        9.0
    );
}
