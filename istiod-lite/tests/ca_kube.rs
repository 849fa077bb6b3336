//! The CA on Kubernetes: callers prove who they are with a projected ServiceAccount token,
//! checked by TokenReview against the fake API server (real JSON). A node tunnel's node is
//! that of the token's pod, so one node's tunnel cannot get another node's pod identities; any
//! other workload gets only its own identity; every refusal is logged with its reason.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod support;

use mesh::cert::new_csr;
use mesh::Identity;
use proto::ca::istio_certificate_service_client::IstioCertificateServiceClient;
use proto::ca::{IstioCertificateRequest, IstioCertificateResponse};
use resources::testing::FakeApiServer;
use serde_json::{json, Value};
use tonic::transport::Channel;
use tonic::{Code, Status};

use support::{logs, Env};

const WEB: &str = "spiffe://cluster.local/ns/apps/sa/web";
const DB: &str = "spiffe://cluster.local/ns/apps/sa/db";

fn pod(ns: &str, name: &str, sa: &str, node: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns},
           "spec": {"nodeName": node, "serviceAccountName": sa,
                    "containers": [{"name": "c", "image": "i"}]},
           "status": {"phase": "Running"}})
}

async fn cluster() -> FakeApiServer {
    let api = FakeApiServer::start().await.expect("fake API server");
    for ns in ["istio-system", "apps"] {
        api.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}));
    }
    api.apply(pod("istio-system", "ztunnel-a", "ztunnel", "node-1"));
    api.apply(pod("istio-system", "ztunnel-b", "ztunnel", "node-2"));
    api.apply(pod("apps", "web-1", "web", "node-1"));
    api.apply(pod("apps", "db-1", "db", "node-2"));
    let tunnel = |token, pod, node, aud: &[&str]| {
        api.add_token(token, "istio-system", "ztunnel", Some((pod, node)), aud);
    };
    tunnel("tunnel-a", "ztunnel-a", "node-1", &["istio-ca"]);
    tunnel("tunnel-b", "ztunnel-b", "node-2", &["istio-ca"]);
    tunnel(
        "tunnel-wrong-audience",
        "ztunnel-a",
        "node-1",
        &["https://kubernetes.default.svc"],
    );
    // A token whose claimed node is not where its pod runs.
    tunnel("tunnel-claims-node-2", "ztunnel-a", "node-2", &["istio-ca"]);
    api.add_token(
        "web",
        "apps",
        "web",
        Some(("web-1", "node-1")),
        &["istio-ca"],
    );
    api.add_token(
        "legacy-tunnel",
        "istio-system",
        "ztunnel",
        None,
        &["istio-ca"],
    );
    api
}

async fn ask(
    client: &mut IstioCertificateServiceClient<Channel>,
    token: &str,
    identity: &str,
) -> Result<IstioCertificateResponse, Status> {
    let csr = new_csr(&identity.parse::<Identity>().unwrap())
        .unwrap()
        .csr_pem;
    let mut request = tonic::Request::new(IstioCertificateRequest {
        csr,
        validity_duration: 3600,
        metadata: None,
    });
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    client
        .create_certificate(request)
        .await
        .map(|r| r.into_inner())
}

fn logged(needle: &str) -> bool {
    logs().lines().iter().any(|l| l.contains(needle))
}

#[tokio::test]
async fn a_tunnel_token_gets_its_own_nodes_pods_and_nothing_else() {
    let api = cluster().await;
    let env = Env::new();
    let server = env.start_from_kube(&api.url()).await;
    let mut ca = IstioCertificateServiceClient::new(server.channel("localhost").await);

    let granted = ask(&mut ca, "tunnel-a", WEB)
        .await
        .expect("web runs on node-1");
    assert!(granted.cert_chain.len() >= 2);
    let refused = ask(&mut ca, "tunnel-a", DB)
        .await
        .expect_err("db runs on node-2");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(
        refused
            .message()
            .contains("node node-1 may not hold identity"),
        "{refused:?}"
    );
    ask(&mut ca, "tunnel-b", DB)
        .await
        .expect("db runs on node-2");
    assert!(api
        .requests()
        .iter()
        .any(|r| r.starts_with("POST /apis/authentication.k8s.io/v1/tokenreviews")));

    // Any other workload (a waypoint, say) speaks only for itself.
    ask(&mut ca, "web", WEB)
        .await
        .expect("web's own token, its own identity");
    let refused = ask(&mut ca, "web", DB).await.expect_err("not its own");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(
        refused
            .message()
            .contains("a workload may obtain only its own identity"),
        "{refused:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn tokens_that_do_not_prove_a_tunnel_are_refused_with_their_reason_logged() {
    let api = cluster().await;
    let env = Env::new();
    let server = env.start_from_kube(&api.url()).await;
    let mut ca = IstioCertificateServiceClient::new(server.channel("localhost").await);
    for (token, reason) in [
        (
            "unknown",
            "the API server does not accept the token: invalid bearer token",
        ),
        (
            "tunnel-wrong-audience",
            "the API server does not accept the token: token audiences are invalid",
        ),
        ("legacy-tunnel", "the token is not bound to a pod"),
        (
            "tunnel-claims-node-2",
            "the token names node node-2, but pod istio-system/ztunnel-a is on node-1",
        ),
    ] {
        let refused = ask(&mut ca, token, WEB).await.expect_err(token);
        assert_eq!(
            refused.code(),
            Code::Unauthenticated,
            "{token}: {refused:?}"
        );
        assert!(
            logged(reason),
            "{token}: no log of {reason:?}:\n{}",
            logs().lines().join("\n")
        );
    }
    server.stop().await;
}
