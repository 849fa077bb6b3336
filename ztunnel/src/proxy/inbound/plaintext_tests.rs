//! The plaintext path's destination check.

use super::*;
use proto::workload as pb;

fn pod() -> Arc<Workload> {
    Arc::new(
        Workload::try_from(pb::Workload {
            uid: "Kubernetes//v1/Pod/demo/b".into(),
            name: "b".into(),
            namespace: "demo".into(),
            addresses: vec![vec![10, 12, 0, 2]],
            tunnel_protocol: pb::TunnelProtocol::Hbone as i32,
            service_account: "b".into(),
            ..Default::default()
        })
        .expect("valid workload"),
    )
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("address")
}

#[test]
fn plaintext_to_one_of_the_pods_own_addresses_goes_on_to_policy() {
    let w = plaintext_destination(Some(pod()), addr("10.12.0.2:7000")).expect("allowed");
    assert_eq!(w.uid, "Kubernetes//v1/Pod/demo/b");
}

#[test]
fn plaintext_whose_original_destination_is_not_the_pods_is_refused_like_hbone() {
    let err = plaintext_destination(Some(pod()), addr("10.12.0.3:7000"))
        .expect_err("another pod's address");
    assert!(matches!(
        err,
        PlaintextRefusal::NotThisPod(InboundError::NotThisPod(ip)) if ip == addr("10.12.0.3:7000").ip()
    ));
    assert_eq!(err.flags(), "NR", "the flag the HBONE path sets");
    assert_eq!(
        err.to_string(),
        "target 10.12.0.3 is not an address of this pod"
    );
    // A service VIP or the node's address is no more the pod's than another pod's.
    assert!(plaintext_destination(Some(pod()), addr("10.96.0.10:80")).is_err());
}

#[test]
fn plaintext_to_a_tunnel_port_or_an_unknown_pod_is_denied() {
    let err = plaintext_destination(Some(pod()), addr("10.12.0.2:15008")).expect_err("tunnel");
    assert_eq!(
        (err.flags(), err.to_string().as_str()),
        ("DENY", "connection to a tunnel port refused")
    );
    let err = plaintext_destination(None, addr("10.12.0.2:7000")).expect_err("unknown");
    assert_eq!(err.flags(), "DENY");
}
