//! The debug verbs on Kubernetes (`--kubeconfig`), against the fake API server: `ztunnel-config`
//! reaches the admin endpoint (loopback-only) of the ztunnel pod of the node asked for (by
//! `spec.nodeName` and `app=ztunnel`) through a port-forward, and `proxy-status` istiod's pod
//! through the pod proxy subresource; a node without a ztunnel pod is named in the error; a
//! ztunnel pod where nothing listens on 15000 refuses the forward, and the error says so.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::process::Command;

use resources::testing::FakeApiServer;
use serde_json::json;

fn kubeconfig(api: &FakeApiServer, dir: &std::path::Path) -> String {
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: \"{}\"}}}}]\n\
             users: [{{name: u, user: {{}}}}]\ncontexts: [{{name: x, context: {{cluster: c, user: u}}}}]\n\
             current-context: x\n",
            api.url()
        ),
    )
    .unwrap();
    path.to_str().unwrap().to_string()
}

async fn meshctl(args: &[&str]) -> std::process::Output {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_meshctl"))
            .args(&args)
            .output()
            .expect("running meshctl")
    })
    .await
    .unwrap()
}

fn pod(name: &str, app: &str, node: &str) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": "istio-system", "labels": {"app": app}},
           "spec": {"nodeName": node, "containers": [{"name": "c", "image": "i"}]},
           "status": {"phase": "Running"}})
}

#[tokio::test]
async fn debug_verbs_reach_ztunnel_s_admin_by_port_forward_and_istiod_by_the_pod_proxy() {
    let api = FakeApiServer::start().await.expect("fake API server");
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = kubeconfig(&api, dir.path());
    api.apply(pod("ztunnel-aaaaa", "ztunnel", "node-1"));
    api.apply(pod("ztunnel-bbbbb", "ztunnel", "node-2"));
    api.apply(pod("ztunnel-ccccc", "ztunnel", "node-3"));
    api.apply(pod("istiod-xxxxx", "istiod", "node-1"));
    let store = mesh::store::Store::new();
    let mut batch = mesh::store::Batch::new();
    batch.upsert_workload(workload());
    store.apply(batch);
    let dump = json!({
        "config": store.snapshot(),
        "certificates": [{"identity": "spiffe://cluster.local/ns/demo/sa/a", "state": "pending"}],
    });
    // ztunnel's admin endpoint, as the process in ztunnel-bbbbb (the pod proxy cannot reach it).
    api.set_port_forward_http(
        "istio-system",
        "ztunnel-bbbbb",
        15000,
        move |path| match path {
            "/config_dump" => (200, dump.to_string()),
            "/connections" => (
                200,
                json!([{"pod_namespace": "demo", "pod_name": "a", "direction": "inbound",
                    "src": "10.0.1.5", "dst": "10.0.2.7:8080", "bytes_sent": 10,
                    "bytes_received": 20, "age_ms": 5000, "state": "open"}])
                .to_string(),
            ),
            _ => (404, "not found".into()),
        },
    )
    .await
    .unwrap();
    api.set_port_forward_http("istio-system", "ztunnel-ccccc", 15000, |_| {
        (503, "not ready yet".into())
    })
    .await
    .unwrap();
    api.set_pod_proxy("istio-system", "istiod-xxxxx", 15014, |path| match path {
        "/debug/syncz" => (
            200,
            json!([{"proxy": "ztunnel-bbbbb", "kind": "ztunnel", "node": "node-2",
                    "connected_since_unix": 0,
                    "xds": [{"type": "address", "config_status": "SYNCED"},
                            {"type": "authorization", "config_status": "SYNCED"}]}])
            .to_string(),
        ),
        _ => (404, "not found".into()),
    });

    let k = kubeconfig.as_str();
    let out = meshctl(&[
        "ztunnel-config",
        "workloads",
        "--node",
        "node-2",
        "--kubeconfig",
        k,
    ])
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let row: Vec<&str> = stdout.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(
        row,
        [
            "demo",
            "a",
            "10.0.1.5",
            "node-2",
            "spiffe://cluster.local/ns/demo/sa/a",
            "HBONE"
        ]
    );

    let out = meshctl(&[
        "ztunnel-config",
        "connections",
        "--node",
        "node-2",
        "--kubeconfig",
        k,
    ])
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let row: Vec<&str> = stdout.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(
        row[0..5],
        ["demo", "a", "inbound", "10.0.1.5", "10.0.2.7:8080"]
    );

    let out = meshctl(&[
        "ztunnel-config",
        "certificates",
        "--node",
        "node-2",
        "--kubeconfig",
        k,
    ])
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("pending"),
        "{stdout}"
    );

    let out = meshctl(&["proxy-status", "--kubeconfig", k]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let row: Vec<&str> = stdout.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(
        row[0..5],
        ["ztunnel-bbbbb", "ztunnel", "node-2", "SYNCED", "SYNCED"]
    );

    let out = meshctl(&[
        "ztunnel-config",
        "workloads",
        "--node",
        "node-9",
        "--kubeconfig",
        k,
    ])
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("no ztunnel pod on node \"node-9\""),
        "{stderr}"
    );

    let requests = api.requests();
    let forwards = requests
        .iter()
        .filter(|r| {
            r.starts_with("GET /api/v1/namespaces/istio-system/pods/ztunnel-bbbbb/portforward?")
                && r.ends_with("ports=15000")
        })
        .count();
    assert_eq!(forwards, 3, "a port-forward per verb: {requests:?}");
    assert!(
        requests.iter().any(|r| r
            == "GET /api/v1/namespaces/istio-system/pods/istiod-xxxxx:15014/proxy/debug/syncz"),
        "{requests:?}"
    );
    assert!(
        !requests.iter().any(|r| r.contains(":15000/proxy")),
        "ztunnel's admin is not asked through the pod proxy: {requests:?}"
    );
    assert!(
        !requests.iter().any(|r| r.contains("ztunnel-aaaaa")),
        "only node-2's ztunnel is asked: {requests:?}"
    );

    // Nothing listens on 15000 in node-1's ztunnel pod: the pod refuses the forward, and the
    // error says where and why.
    let out = meshctl(&[
        "ztunnel-config",
        "workloads",
        "--node",
        "node-1",
        "--kubeconfig",
        k,
    ])
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && stderr.contains("GET /config_dump of pod istio-system/ztunnel-aaaaa port 15000 through a port-forward")
            && stderr.contains("refused the connection")
            && stderr.contains("connection refused"),
        "{stderr}"
    );

    // node-3's ztunnel answers, but not 200: the error has the status and the body.
    let out = meshctl(&[
        "ztunnel-config",
        "services",
        "--node",
        "node-3",
        "--kubeconfig",
        k,
    ])
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("answered 503: not ready yet"),
        "{stderr}"
    );
}

/// A workload on node-2, for `ztunnel-config workloads`.
fn workload() -> mesh::model::Workload {
    use mesh::model::{HealthStatus, NetworkMode, TunnelProtocol, Workload, WorkloadType};
    Workload {
        uid: "Kubernetes//v1/Pod/demo/a".into(),
        name: "a".into(),
        addresses: vec!["10.0.1.5".parse().unwrap()],
        hostname: String::new(),
        network: String::new(),
        tunnel_protocol: TunnelProtocol::Hbone,
        identity: mesh::identity::Identity::new("cluster.local", "demo", "a").unwrap(),
        waypoint: None,
        network_gateway: None,
        node: "node-2".into(),
        canonical_name: "a".into(),
        canonical_revision: "latest".into(),
        workload_type: WorkloadType::Pod,
        workload_name: "a".into(),
        native_tunnel: false,
        application_tunnel: None,
        services: Default::default(),
        authorization_policies: Vec::new(),
        status: HealthStatus::Healthy,
        cluster_id: "Kubernetes".into(),
        locality: None,
        network_mode: NetworkMode::Standard,
        capacity: 1,
    }
}
