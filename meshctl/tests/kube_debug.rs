//! The debug verbs on Kubernetes (`--kubeconfig`), against the fake API server: `ztunnel-config`
//! reaches the ztunnel pod of the node asked for (by `spec.nodeName` and `app=ztunnel`) and
//! `proxy-status` istiod's pod, both through the pod proxy subresource; a node without a
//! ztunnel pod is named in the error; a ztunnel that does not answer (503, not retried for
//! minutes) gets the port-forward hint.

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
async fn debug_verbs_reach_the_node_s_ztunnel_and_istiod_through_the_pod_proxy() {
    let api = FakeApiServer::start().await.expect("fake API server");
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = kubeconfig(&api, dir.path());
    api.apply(pod("ztunnel-aaaaa", "ztunnel", "node-1"));
    api.apply(pod("ztunnel-bbbbb", "ztunnel", "node-2"));
    api.apply(pod("istiod-xxxxx", "istiod", "node-1"));
    let dump = json!({
        "config": mesh::store::Store::new().snapshot(),
        "certificates": [{"identity": "spiffe://cluster.local/ns/demo/sa/a", "state": "pending"}],
    });
    api.set_pod_proxy(
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
    );
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
    for path in [
        "/api/v1/namespaces/istio-system/pods/ztunnel-bbbbb:15000/proxy/connections",
        "/api/v1/namespaces/istio-system/pods/ztunnel-bbbbb:15000/proxy/config_dump",
        "/api/v1/namespaces/istio-system/pods/istiod-xxxxx:15014/proxy/debug/syncz",
    ] {
        assert!(
            requests.iter().any(|r| r == &format!("GET {path}")),
            "{path} in {requests:?}"
        );
    }
    assert!(
        !requests.iter().any(|r| r.contains("ztunnel-aaaaa")),
        "only node-2's ztunnel is asked: {requests:?}"
    );

    // node-1's ztunnel does not answer through the pod proxy (its admin endpoint is on its
    // loopback): the error says how to reach it.
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
            && stderr.contains("kubectl port-forward -n istio-system pod/ztunnel-aaaaa 15000"),
        "{stderr}"
    );
}
