//! The waypoint deployer against the fake API server: a Gateway of class `istio-waypoint`
//! gets its ServiceAccount, Deployment and Service (owned by it), its status, and the root
//! certificate in its namespace; a deleted Deployment comes back; a deleted Gateway takes its
//! objects with it.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod support;

use std::time::Duration;

use resources::testing::FakeApiServer;
use serde_json::{json, Value};

use support::Env;

async fn until(what: &str, f: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: {}",
            support::logs().lines().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn gateway() -> Value {
    json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
           "metadata": {"name": "waypoint", "namespace": "shop", "generation": 1,
                        "labels": {"istio.io/waypoint-for": "service"}},
           "spec": {"gatewayClassName": "istio-waypoint",
                    "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}})
}

#[tokio::test]
async fn a_waypoint_gateway_is_deployed_kept_reported_and_removed() {
    let api = FakeApiServer::start().await.unwrap();
    api.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}));
    api.apply(
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
           "metadata": {"name": "ingress", "namespace": "shop"},
           "spec": {"gatewayClassName": "other", "listeners": []}}),
    );
    let gw = api.apply(gateway());
    let uid = gw["metadata"]["uid"].as_str().unwrap().to_string();
    let env = Env::new();
    let server = env.start_from_kube(&api.url()).await;

    let get = |kind: &str, api_version: &str, name: &str| api.get(api_version, kind, "shop", name);
    until("the waypoint's objects", || {
        get("Deployment", "apps/v1", "waypoint").is_some()
            && get("Service", "v1", "waypoint").is_some()
            && get("ServiceAccount", "v1", "waypoint").is_some()
    })
    .await;
    for (kind, api_version) in [
        ("Deployment", "apps/v1"),
        ("Service", "v1"),
        ("ServiceAccount", "v1"),
    ] {
        let object = get(kind, api_version, "waypoint").unwrap();
        let owner = &object["metadata"]["ownerReferences"][0];
        assert_eq!(owner["kind"], "Gateway", "{kind}: {object}");
        assert_eq!(owner["uid"], uid.as_str(), "{kind}");
        assert_eq!(owner["controller"], true, "{kind}");
        assert_eq!(
            object["metadata"]["labels"]["gateway.networking.k8s.io/gateway-name"],
            "waypoint"
        );
    }
    let deployment = get("Deployment", "apps/v1", "waypoint").unwrap();
    let pod = &deployment["spec"]["template"];
    assert_eq!(pod["metadata"]["labels"]["istio.io/dataplane-mode"], "none");
    assert_eq!(pod["spec"]["serviceAccountName"], "waypoint");
    let container = &pod["spec"]["containers"][0];
    assert_eq!(container["image"], "waypoint:test");
    assert!(container["env"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["name"] == "GATEWAY_NAME" && e["value"] == "waypoint"));
    let service = get("Service", "v1", "waypoint").unwrap();
    assert_eq!(service["spec"]["ports"][0]["port"], 15008);
    // Only waypoints: the other Gateway class gets nothing.
    assert!(get("Deployment", "apps/v1", "ingress").is_none());

    // Status: accepted, programmed, addressed.
    until("the Gateway's status", || {
        api.get(
            "gateway.networking.k8s.io/v1",
            "Gateway",
            "shop",
            "waypoint",
        )
        .unwrap()["status"]["conditions"]
            .as_array()
            .is_some_and(|c| c.len() == 2)
    })
    .await;
    let status = api
        .get(
            "gateway.networking.k8s.io/v1",
            "Gateway",
            "shop",
            "waypoint",
        )
        .unwrap()["status"]
        .clone();
    let condition = |t: &str| {
        status["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == t)
            .cloned()
            .unwrap()
    };
    assert_eq!(condition("Accepted")["status"], "True");
    assert_eq!(condition("Programmed")["status"], "True");
    assert_eq!(condition("Programmed")["observedGeneration"], 1);
    assert_eq!(
        status["addresses"][0]["value"],
        "waypoint.shop.svc.cluster.local"
    );
    // The root certificate, where the waypoint's pods mount it.
    let root = api
        .get("v1", "ConfigMap", "shop", "istio-ca-root-cert")
        .unwrap();
    assert!(root["data"]["root-cert.pem"]
        .as_str()
        .unwrap()
        .starts_with("-----BEGIN CERTIFICATE-----"));
    assert!(api
        .get("v1", "ConfigMap", "istio-system", "istio-ca-root-cert")
        .is_some());

    // A status that is already right is not written again (no write loop through the watch).
    let status_writes = || {
        api.requests()
            .iter()
            .filter(|r| r.starts_with("PATCH") && r.contains("/gateways/waypoint/status"))
            .count()
    };
    let before = status_writes();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        status_writes(),
        before,
        "the status was written again unchanged"
    );

    // Deleted by hand: the next pass puts it back.
    assert!(api.delete("apps/v1", "Deployment", "shop", "waypoint"));
    until("the Deployment back", || {
        get("Deployment", "apps/v1", "waypoint").is_some()
    })
    .await;

    // The Gateway gone: so are its objects.
    assert!(api.delete(
        "gateway.networking.k8s.io/v1",
        "Gateway",
        "shop",
        "waypoint"
    ));
    until("the waypoint's objects gone", || {
        get("Deployment", "apps/v1", "waypoint").is_none()
            && get("Service", "v1", "waypoint").is_none()
            && get("ServiceAccount", "v1", "waypoint").is_none()
    })
    .await;
    server.stop().await;
}
