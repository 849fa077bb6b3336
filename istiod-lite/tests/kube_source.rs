//! The Kubernetes config source against the fake API server (`resources::testing`), which
//! speaks the real list/watch JSON: startup waits for the lists, changes arrive within a
//! second, a dropped watch and a 410 re-list lose nothing, an invalid object keeps its last
//! good version.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use istiod_lite::config_source::{ClusterState, ConfigSource, KubeSource, ObjectKey};
use resources::testing::FakeApiServer;
use serde_json::{json, Value};
use tokio::sync::watch;

fn pod(ns: &str, name: &str, node: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
           "spec": {"nodeName": node, "serviceAccountName": "default",
                    "containers": [{"name": "app", "image": "app"}]},
           "status": {"phase": "Running", "podIP": "10.244.1.7"}})
}

fn namespace(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace",
           "metadata": {"name": name, "labels": {"istio.io/dataplane-mode": "ambient"}}})
}

fn route(path: &str) -> Value {
    json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
           "metadata": {"name": "web", "namespace": "shop"},
           "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "web", "port": 80}],
                    "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": path}}],
                               "backendRefs": [{"name": "web", "port": 80}]}]}})
}

fn key(ns: &str, name: &str) -> ObjectKey {
    ObjectKey::new(ns, name)
}

async fn client(server: &FakeApiServer) -> kube::Client {
    let config = kube::Config::new(server.url().parse().unwrap());
    kube::Client::try_from(config).unwrap()
}

/// Waits at most `within` for a snapshot that satisfies `ok`; how long it took.
async fn until(
    rx: &mut watch::Receiver<Arc<ClusterState>>,
    within: Duration,
    ok: impl Fn(&ClusterState) -> bool,
) -> Duration {
    let start = Instant::now();
    let found = tokio::time::timeout(within, rx.wait_for(|s| ok(s)))
        .await
        .map(|r| r.map(|_| ()));
    match found {
        Ok(r) => r.unwrap(),
        Err(_) => panic!("no such snapshot within {within:?}: {:#?}", rx.borrow()),
    }
    start.elapsed()
}

#[tokio::test]
async fn startup_waits_for_every_list_then_changes_arrive_within_a_second() {
    let server = FakeApiServer::start().await.unwrap();
    server.apply(namespace("shop"));
    server.apply(pod("shop", "web", "node-1"));
    let source = KubeSource::start(client(&server).await, Duration::from_secs(10))
        .await
        .expect("synced");
    // The first snapshot is the whole cluster, never a half-listed one.
    let first = source.current();
    assert!(first.namespaces.contains_key("shop"));
    assert!(first.pods.contains_key(&key("shop", "web")));

    let mut rx = source.subscribe();
    server.apply(pod("shop", "db", "node-2"));
    let took = until(&mut rx, Duration::from_secs(1), |s| {
        s.pods.contains_key(&key("shop", "db"))
    })
    .await;
    assert!(took < Duration::from_secs(1), "{took:?}");

    let mut moved = pod("shop", "db", "node-3");
    moved["metadata"]["labels"]["version"] = json!("v2");
    server.apply(moved);
    until(&mut rx, Duration::from_secs(1), |s| {
        s.pods[&key("shop", "db")]
            .metadata
            .labels
            .as_ref()
            .unwrap()
            .get("version")
            == Some(&"v2".to_string())
    })
    .await;

    assert!(server.delete("v1", "Pod", "shop", "db"));
    until(&mut rx, Duration::from_secs(1), |s| {
        !s.pods.contains_key(&key("shop", "db"))
    })
    .await;
    // Every kind was listed, cluster-wide, then watched.
    let requests = server.requests();
    for path in [
        "/api/v1/namespaces?",
        "/api/v1/pods?",
        "/apis/security.istio.io/v1/authorizationpolicies?",
        "/apis/gateway.networking.k8s.io/v1/httproutes?",
    ] {
        assert!(
            requests
                .iter()
                .any(|r| r.contains(path) && !r.contains("watch=")),
            "no list of {path}: {requests:#?}"
        );
        assert!(
            requests
                .iter()
                .any(|r| r.contains(path) && r.contains("watch=true")),
            "no watch of {path}: {requests:#?}"
        );
    }
}

#[tokio::test]
async fn a_dropped_watch_and_a_410_relist_lose_nothing() {
    let server = FakeApiServer::start().await.unwrap();
    server.apply(namespace("shop"));
    server.apply(pod("shop", "a", "node-1"));
    let source = KubeSource::start(client(&server).await, Duration::from_secs(10))
        .await
        .expect("synced");
    let mut rx = source.subscribe();
    let lists_before = pod_lists(&server);

    // The history is compacted and every watch cut: resuming gets 410 Gone, and the watcher
    // must list again. What changed meanwhile (a deletion, an addition) is all seen.
    server.compact();
    server.drop_watches();
    assert!(server.delete("v1", "Pod", "shop", "a"));
    server.apply(pod("shop", "b", "node-1"));
    until(&mut rx, Duration::from_secs(10), |s| {
        !s.pods.contains_key(&key("shop", "a")) && s.pods.contains_key(&key("shop", "b"))
    })
    .await;
    assert!(
        pod_lists(&server) > lists_before,
        "the pods were not listed again after the 410: {:#?}",
        server.requests()
    );

    // A plain drop (no compaction) resumes the watch; later changes still arrive.
    server.drop_watches();
    server.apply(pod("shop", "c", "node-1"));
    until(&mut rx, Duration::from_secs(10), |s| {
        s.pods.contains_key(&key("shop", "c"))
    })
    .await;
}

fn pod_lists(server: &FakeApiServer) -> usize {
    server
        .requests()
        .iter()
        .filter(|r| r.starts_with("GET /api/v1/pods?") && !r.contains("watch="))
        .count()
}

#[tokio::test]
async fn an_invalid_object_keeps_its_last_good_version_and_is_reported() {
    let server = FakeApiServer::start().await.unwrap();
    server.apply(namespace("shop"));
    server.apply(route("/api"));
    let source = KubeSource::start(client(&server).await, Duration::from_secs(10))
        .await
        .expect("synced");
    let mut rx = source.subscribe();
    assert!(source
        .current()
        .http_routes
        .contains_key(&key("shop", "web")));
    assert!(source.problems().is_empty());

    // A path that does not start with '/' is what Gateway API's webhook refuses. (Each kind
    // has its own watch stream, so wait for the refusal itself, not for a later object.)
    server.apply(route("api"));
    let deadline = Instant::now() + Duration::from_secs(2);
    while source.problems().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the invalid route was not reported"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let kept = &source.current().http_routes[&key("shop", "web")];
    let path = serde_json::to_value(&kept.spec.rules[0]).unwrap();
    assert_eq!(path["matches"][0]["path"]["value"], "/api", "{path}");
    let problems = source.problems();
    assert!(
        problems.len() == 1
            && problems[0]
                .reason
                .contains("HTTPRoute shop/web refused (keeping its last good version)"),
        "{problems:#?}"
    );

    // Fixed: the new version applies and the problem is gone.
    server.apply(route("/v2"));
    until(&mut rx, Duration::from_secs(2), |s| {
        serde_json::to_value(&s.http_routes[&key("shop", "web")].spec.rules[0]).unwrap()["matches"]
            [0]["path"]["value"]
            == "/v2"
    })
    .await;
    assert!(source.problems().is_empty());
}

#[tokio::test]
async fn startup_fails_naming_what_it_could_not_list() {
    // Nothing answers there: no list ever finishes.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let client = kube::Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap();
    let err = KubeSource::start(client, Duration::from_millis(500))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("Namespace") && err.contains("AuthorizationPolicy") && err.contains("500ms"),
        "{err}"
    );
}
