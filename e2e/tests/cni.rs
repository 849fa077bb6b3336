//! Capture by the real CNI plugin and node agent, with the real ztunnel and istiod-lite.
//! Needs root; fails loudly without it.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use common::{Mesh, WAIT};

#[test]
fn the_cni_plugin_enrolls_ambient_pods_and_ztunnel_carries_their_traffic() {
    let mut mesh = Mesh::new("cni_enroll", 2);
    mesh.real_cni = true;
    mesh.ambient_namespaces = vec!["demo".into()];
    // Not captured by the harness: the CNI agent must do it.
    let a = mesh.pod(0, "demo", "client", "client", "client", false);
    let b = mesh.pod(1, "demo", "server", "server", "server", false);
    let outside = mesh.pod(0, "legacy", "plain", "default", "plain", false);
    mesh.start();
    let _echo = mesh.topo.tcp_echo(&b, 7000).expect("echo");

    for p in [&a, &b, &outside] {
        let (code, out) = mesh.cni("ADD", p);
        assert_eq!(code, 0, "ADD {}: {out}\n{}", p.name, mesh.logs());
        let result: serde_json::Value = serde_json::from_str(&out).expect("CNI result");
        assert_eq!(
            result["ips"][0]["address"],
            format!("{}/24", p.ip),
            "prevResult passed through"
        );
    }
    // The ambient pods are captured, the other one is not.
    let save = |p: &e2e::Pod| p.iptables_save().expect("iptables-save");
    assert!(save(&a).contains("ISTIO_OUTPUT"));
    assert!(save(&b).contains("ISTIO_PRERT"));
    assert!(
        !save(&outside).contains("ISTIO_"),
        "a pod outside ambient namespaces is left alone"
    );
    e2e::wait_until("ztunnel serves the enrolled pod", WAIT, || {
        mesh.config_dump(1)["pods"].to_string().contains(&b.uid)
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", mesh.logs()));
    mesh.wait_workload(0, &b.uid);

    assert_eq!(
        mesh.topo
            .tcp_send(&a, b.addr(7000), "via-cni")
            .expect("send"),
        "via-cni"
    );
    let z2 = &mesh.ztunnels["n2"];
    e2e::wait_until("carried over HBONE", WAIT, || {
        z2.log().contains("connection complete") && z2.log().contains("mtls=true")
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", z2.log_tail()));

    // DEL releases the pod: rules gone, ztunnel stops serving it.
    let (code, _) = mesh.cni("DEL", &b);
    assert_eq!(code, 0);
    assert!(!save(&b).contains("ISTIO_"), "rules removed on DEL");
    e2e::wait_until("ztunnel released the pod", WAIT, || {
        !mesh.config_dump(1)["pods"].to_string().contains(&b.uid)
    })
    .expect("released");
}
