//! `meshctl install` and `uninstall` against the fake Kubernetes API server (real JSON):
//! every object of the manifests is applied, CRDs first, with the CA Secret; uninstall
//! removes them and keeps the CRDs.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::process::Command;

use resources::testing::FakeApiServer;

fn meshctl(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .args(args)
        .output()
        .expect("running meshctl")
}

/// A kubeconfig for `api` in `dir`.
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

async fn meshctl_async(args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        meshctl(&args)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waypoints_and_labels_go_to_the_cluster_with_kubeconfig() {
    let api = FakeApiServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kc = kubeconfig(&api, dir.path());
    api.apply(
        serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}),
    );
    let run = |args: &[&str]| {
        let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        all.extend(["--kubeconfig".to_string(), kc.clone()]);
        meshctl_async(all)
    };
    let ok = |out: &std::process::Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ok(&run(&["label", "ns", "shop", "istio.io/dataplane-mode=ambient"]).await);
    let labels = || api.get("v1", "Namespace", "", "shop").unwrap()["metadata"]["labels"].clone();
    assert_eq!(labels()["istio.io/dataplane-mode"], "ambient");

    ok(&run(&["waypoint", "apply", "-n", "shop", "--enroll-namespace"]).await);
    let gw = api
        .get(
            "gateway.networking.k8s.io/v1",
            "Gateway",
            "shop",
            "waypoint",
        )
        .expect("the Gateway");
    assert_eq!(gw["spec"]["gatewayClassName"], "istio-waypoint");
    assert_eq!(labels()["istio.io/use-waypoint"], "waypoint");

    // As the deployer reports it: listed as ready, and `--wait` returns.
    let mut programmed = gw.clone();
    programmed["status"] = serde_json::json!({
        "addresses": [{"type": "IPAddress", "value": "10.96.0.9"}],
        "conditions": [{"type": "Programmed", "status": "True", "reason": "Programmed", "message": "ok"}]});
    api.apply(programmed);
    ok(&run(&["waypoint", "apply", "-n", "shop", "--wait"]).await);
    let out = run(&["waypoint", "list", "-o", "json"]).await;
    ok(&out);
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows[0]["name"], "waypoint", "{rows}");
    assert_eq!(rows[0]["ready"], true, "{rows}");
    assert_eq!(rows[0]["address"], "10.96.0.9", "{rows}");

    ok(&run(&["waypoint", "delete", "-n", "shop"]).await);
    assert!(api
        .get(
            "gateway.networking.k8s.io/v1",
            "Gateway",
            "shop",
            "waypoint"
        )
        .is_none());
    assert!(labels()["istio.io/use-waypoint"].is_null(), "{}", labels());
    assert_eq!(labels()["istio.io/dataplane-mode"], "ambient");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_applies_everything_and_uninstall_keeps_the_crds() {
    let api = FakeApiServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kc = kubeconfig(&api, dir.path());
    let out = tokio::task::spawn_blocking({
        let kc = kc.clone();
        move || meshctl(&["install", "--kubeconfig", &kc, "--image-tag", "1.2.3"])
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("applied Deployment istio-system/istiod"),
        "{stderr}"
    );

    let deployment = api
        .get("apps/v1", "Deployment", "istio-system", "istiod")
        .expect("istiod");
    assert_eq!(
        deployment["spec"]["template"]["spec"]["containers"][0]["image"],
        "ghcr.io/ambient-mesh/istiod-lite:1.2.3"
    );
    assert!(api
        .get("apps/v1", "DaemonSet", "istio-system", "ztunnel")
        .is_some());
    assert!(api
        .get("apps/v1", "DaemonSet", "istio-system", "ambient-mesh-cni")
        .is_some());
    assert!(api
        .get(
            "apiextensions.k8s.io/v1",
            "CustomResourceDefinition",
            "",
            "authorizationpolicies.security.istio.io"
        )
        .is_some());
    let secret = api
        .get("v1", "Secret", "istio-system", "cacerts")
        .expect("CA secret");
    assert!(secret["stringData"]["root-cert.pem"]
        .as_str()
        .unwrap()
        .starts_with("-----BEGIN CERTIFICATE-----"));
    // Applied with server-side apply, CRDs before anything else.
    let patches: Vec<String> = api
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("PATCH"))
        .collect();
    assert!(
        patches[0].contains("customresourcedefinitions"),
        "{patches:#?}"
    );
    assert!(
        patches.iter().all(|r| r.contains("fieldManager=meshctl")),
        "{patches:#?}"
    );

    let out = tokio::task::spawn_blocking(move || meshctl(&["uninstall", "--kubeconfig", &kc]))
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(api
        .get("apps/v1", "Deployment", "istio-system", "istiod")
        .is_none());
    assert!(api
        .get("apps/v1", "DaemonSet", "istio-system", "ztunnel")
        .is_none());
    assert!(
        api.get(
            "apiextensions.k8s.io/v1",
            "CustomResourceDefinition",
            "",
            "authorizationpolicies.security.istio.io"
        )
        .is_some(),
        "the CRDs are kept"
    );
}

#[test]
fn dry_run_prints_manifests_that_read_back() {
    let out = meshctl(&["install", "--dry-run", "--trust-domain", "example.org"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let docs = resources::yaml_documents(&text);
    assert!(docs.len() > 20, "{}", docs.len());
    assert!(docs.iter().all(Result::is_ok));
    assert!(text.contains("value: example.org"), "{text}");
}
