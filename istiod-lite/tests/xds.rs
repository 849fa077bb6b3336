//! In-process tests of the config API (delta ADS): the server runs on 127.0.0.1:0 with a
//! temporary data directory and tokens file, and the tests publish config snapshots on its
//! watch channel. Clients are the mesh's own `XdsClient` writing into a `Store` (the test of
//! record: it must converge on the server's content) and, where ACKs, NACKs and nonces must be
//! controlled, a raw tonic client over TLS with the bearer token.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use mesh::model::{Policy, PolicyAction};
use proto::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL};
use tonic::Code;

use support::cluster::{documents, web_pod, NAMESPACE_APPS, POLICY_ALLOW_SLEEP, SERVICE_WEB};
use support::xds::*;
use support::*;

// ---- tests -------------------------------------------------------------------------------

#[tokio::test]
async fn wildcard_subscription_gets_every_resource_of_both_types() {
    let env = Env::new();
    let mesh = base_mesh();
    let server = env.start(&mesh).await;

    let mut raw = server.subscribed(NODE1_TOKEN, &BOTH_TYPES).await;
    let (addresses, policies) = raw.recv_both().await;
    let mut expected: Vec<String> = mesh.snapshot().addresses.into_keys().collect();
    expected.sort();
    assert_eq!(names(&addresses), expected);
    assert_eq!(
        names(&policies),
        ["apps/allow-all".to_string(), "apps/deny-some".to_string()]
    );
    for response in [&addresses, &policies] {
        assert!(response.removed_resources.is_empty());
        assert!(!response.nonce.is_empty());
        assert!(!response.system_version_info.is_empty());
        for r in &response.resources {
            assert_eq!(r.version.len(), 32, "{r:?}");
            let body = r.resource.as_ref().expect("body");
            assert_eq!(body.type_url, response.type_url);
        }
    }
    assert_ne!(addresses.nonce, policies.nonce);

    let proxy = server.proxy(NODE1_TOKEN);
    proxy.converges_on(&mesh).await;
    drop(raw);
    server.stop().await;
}

#[tokio::test]
async fn an_update_pushes_only_what_changed() {
    let env = Env::new();
    let mut mesh = base_mesh();
    let server = env.start(&mesh).await;
    let (mut raw, first_addresses, _) = server.handshake(NODE1_TOKEN).await;
    raw.expect_silence().await;

    // One workload moves to another IP; one policy is deleted.
    let moved = workload("echo-2", "10.0.0.22", &["apps/echo.apps.svc.cluster.local"]);
    mesh = mesh.with_workload(moved.clone());
    mesh.policies.remove("apps/deny-some");
    server.publish(mesh.snapshot());

    let addresses = raw.recv_type(ADDRESS_TYPE_URL).await;
    assert_eq!(names(&addresses), [moved.uid.as_str()]);
    assert!(addresses.removed_resources.is_empty());
    assert_ne!(
        versions(&addresses)[&moved.uid],
        versions(&first_addresses)[&moved.uid]
    );
    let policies = raw.recv_type(AUTHORIZATION_TYPE_URL).await;
    assert!(policies.resources.is_empty(), "{policies:?}");
    assert_eq!(policies.removed_resources, ["apps/deny-some"]);
    raw.ack(&addresses).await;
    raw.ack(&policies).await;

    // Publishing the same content again sends nothing.
    server.publish(mesh.snapshot());
    raw.expect_silence().await;
    server.stop().await;
}

#[tokio::test]
async fn one_response_per_type_is_in_flight_until_acked() {
    let env = Env::new();
    let mut mesh = base_mesh();
    let server = env.start(&mesh).await;
    let mut raw = server.subscribed(NODE1_TOKEN, &[ADDRESS_TYPE_URL]).await;
    let first = raw.recv().await;

    // Not ACKed yet: two changes wait, then go out as one response.
    mesh = mesh.with_workload(workload("echo-3", "10.0.0.3", &[]));
    server.publish(mesh.snapshot());
    raw.expect_silence().await;
    mesh = mesh.with_workload(workload("echo-4", "10.0.0.4", &[]));
    server.publish(mesh.snapshot());
    raw.expect_silence().await;
    raw.ack(&first).await;
    let next = raw.recv().await;
    assert_eq!(
        names(&next),
        [
            "Kubernetes//v1/Pod/apps/echo-3".to_string(),
            "Kubernetes//v1/Pod/apps/echo-4".to_string()
        ]
    );
    assert_ne!(next.nonce, first.nonce);
    server.stop().await;
}

#[tokio::test]
async fn a_nack_is_logged_and_the_proxy_keeps_its_version_until_a_good_change() {
    let env = Env::new();
    let mesh = base_mesh()
        .with_workload(workload("nack-victim", "10.0.7.1", &[]))
        .with_workload(workload("nack-bystander", "10.0.7.2", &[]));
    let victim = "Kubernetes//v1/Pod/apps/nack-victim";
    let server = env.start(&mesh).await;
    let proxy = server.proxy(NODE1_TOKEN);
    proxy.converges_on(&mesh).await;
    let good_victim = proxy.store.workload(victim).expect("held");

    // A change the proxy must refuse.
    server.publish(with_invalid_address(&mesh, victim));
    let mut status = proxy.status.clone();
    eventually("the proxy NACKs", || {
        status.borrow_and_update().types[ADDRESS_TYPE_URL].nacks == 1
    })
    .await;
    eventually(
        "the NACK is logged with node, type, nonce and message",
        || {
            logs().lines().iter().any(|l| {
                l.contains("WARN")
                    && l.contains("proxy rejected an xDS response (NACK)")
                    && l.contains("node=node-1")
                    && l.contains("istio.workload.Address")
                    && l.contains("nonce=")
                    && l.contains("nack-victim")
                    && l.contains("is invalid")
            })
        },
    )
    .await;
    assert_eq!(
        server
            .metric("istiod_lite_xds_nacks_total{type=\"address\"}")
            .await,
        1.0
    );
    // The proxy keeps what it had, and the bad content is not sent again.
    assert_eq!(proxy.store.workload(victim), Some(good_victim.clone()));
    let acks = status.borrow().types[ADDRESS_TYPE_URL].acks;
    tokio::time::sleep(QUIET).await;
    assert_eq!(status.borrow().types[ADDRESS_TYPE_URL].nacks, 1);
    assert_eq!(status.borrow().types[ADDRESS_TYPE_URL].acks, acks);

    // A good change of another resource is delivered while the bad one stays refused.
    let mut bad_still = with_invalid_address(&mesh, victim);
    let bystander = workload("nack-bystander", "10.0.7.22", &[]);
    bad_still.addresses.insert(
        bystander.uid.clone(),
        proto::workload::Address::from(&bystander),
    );
    server.publish(bad_still);
    eventually("the bystander's change arrives", || {
        proxy.store.workload(&bystander.uid).as_deref() == Some(&bystander)
    })
    .await;
    assert_eq!(proxy.store.workload(victim), Some(good_victim));
    assert_eq!(status.borrow().types[ADDRESS_TYPE_URL].nacks, 1);

    // A good change of the refused resource is delivered too.
    let fixed = mesh
        .clone()
        .with_workload(bystander)
        .with_workload(workload("nack-victim", "10.0.7.11", &[]));
    server.publish(fixed.snapshot());
    proxy.converges_on(&fixed).await;
    assert_eq!(status.borrow().types[ADDRESS_TYPE_URL].nacks, 1);
    server.stop().await;
}

#[tokio::test]
async fn a_raw_nack_keeps_the_last_acked_versions() {
    let env = Env::new();
    let mut mesh = base_mesh();
    let server = env.start(&mesh).await;
    let mut raw = server
        .subscribed(NODE2_TOKEN, &[AUTHORIZATION_TYPE_URL])
        .await;
    let first = raw.recv().await;
    raw.ack(&first).await;

    mesh = mesh.with_policy(Policy {
        dry_run: true,
        ..policy("allow-all", PolicyAction::Allow)
    });
    server.publish(mesh.snapshot());
    let refused = raw.recv().await;
    assert_eq!(names(&refused), ["apps/allow-all"]);
    raw.nack(&refused, "raw test refuses this").await;
    eventually("the NACK is logged with its nonce", || {
        logs().lines().iter().any(|l| {
            l.contains("WARN")
                && l.contains("proxy rejected an xDS response (NACK)")
                && l.contains("node=node-2")
                && l.contains(&refused.nonce)
                && l.contains("raw test refuses this")
                && l.contains("istio.security.Authorization")
        })
    })
    .await;
    raw.expect_silence().await;

    // The refused change is not re-sent with another change, and the last ACKed state is
    // what a reconnecting client would be measured against.
    mesh = mesh.with_policy(policy("new-one", PolicyAction::Deny));
    server.publish(mesh.snapshot());
    let next = raw.recv().await;
    assert_eq!(names(&next), ["apps/new-one"]);
    raw.ack(&next).await;

    // When the refused resource changes again, it is sent.
    mesh = mesh.with_policy(Policy {
        rules: vec![mesh::model::Rule { clauses: vec![] }],
        ..policy("allow-all", PolicyAction::Allow)
    });
    server.publish(mesh.snapshot());
    let again = raw.recv().await;
    assert_eq!(names(&again), ["apps/allow-all"]);
    assert_ne!(
        versions(&again)["apps/allow-all"],
        versions(&refused)["apps/allow-all"]
    );
    server.stop().await;
}

#[tokio::test]
async fn a_burst_within_the_debounce_window_is_one_push() {
    let env = Env::new();
    let mut mesh = base_mesh();
    let server = env
        .start_with(mesh.snapshot(), "127.0.0.1:0", Duration::from_millis(500))
        .await;
    let mut raw = server.subscribed(NODE1_TOKEN, &[ADDRESS_TYPE_URL]).await;
    let first = raw.recv().await;
    raw.ack(&first).await;
    let snapshots_before = server.metric("istiod_lite_xds_snapshots_total").await;

    const BURST: usize = 10;
    for i in 0..BURST {
        mesh = mesh.with_workload(workload(
            &format!("burst-{i}"),
            &format!("10.0.8.{}", i + 1),
            &[],
        ));
        server.publish(mesh.snapshot());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let push = raw.recv().await;
    let mut expected: Vec<String> = (0..BURST)
        .map(|i| format!("Kubernetes//v1/Pod/apps/burst-{i}"))
        .collect();
    expected.sort();
    assert_eq!(names(&push), expected);
    raw.ack(&push).await;
    raw.expect_silence().await;
    assert_eq!(
        server.metric("istiod_lite_xds_snapshots_total").await,
        snapshots_before + 1.0
    );
    let latency = server
        .metric("istiod_lite_xds_push_latency_seconds_count{type=\"address\"}")
        .await;
    assert_eq!(latency, 1.0);
    server.stop().await;
}

#[tokio::test]
async fn reconnect_with_initial_versions_gets_only_the_difference() {
    let env = Env::new();
    let mut mesh = base_mesh();
    let server = env.start(&mesh).await;
    let (raw, addresses, policies) = server.handshake(NODE1_TOKEN).await;
    let held_addresses = versions(&addresses);
    let held_policies = versions(&policies);
    drop(raw);
    server
        .metric_becomes("istiod_lite_xds_connected_proxies", 0.0)
        .await;

    // While the proxy is away: one change, one removal, one addition.
    let changed = workload(
        "echo-1",
        "10.0.0.111",
        &["apps/echo.apps.svc.cluster.local"],
    );
    mesh = mesh
        .with_workload(changed.clone())
        .with_service(service("fresh", "10.96.0.99"));
    mesh.services.remove("apps/echo-v1.apps.svc.cluster.local");
    server.publish(mesh.snapshot());
    eventually("the server moved to the new snapshot", || {
        server.xds.generation() >= 1
    })
    .await;

    let mut raw = server
        .raw(
            Some(NODE1_TOKEN),
            vec![
                subscribe(ADDRESS_TYPE_URL, &held_addresses),
                subscribe(AUTHORIZATION_TYPE_URL, &held_policies),
            ],
        )
        .await
        .expect("stream accepted");
    let addresses = raw.recv_type(ADDRESS_TYPE_URL).await;
    assert_eq!(
        names(&addresses),
        [
            "Kubernetes//v1/Pod/apps/echo-1".to_string(),
            "apps/fresh.apps.svc.cluster.local".to_string()
        ]
    );
    assert_eq!(
        addresses.removed_resources,
        ["apps/echo-v1.apps.svc.cluster.local"]
    );
    // Nothing changed among policies: an empty answer, to be ACKed.
    let policies = raw.recv_type(AUTHORIZATION_TYPE_URL).await;
    assert!(policies.resources.is_empty() && policies.removed_resources.is_empty());

    // A restarted server gives identical content identical versions.
    let other = env
        .start_with(mesh.snapshot(), "127.0.0.1:0", Duration::ZERO)
        .await;
    let mut raw2 = other.subscribed(NODE2_TOKEN, &[ADDRESS_TYPE_URL]).await;
    let all = versions(&raw2.recv().await);
    for (name, version) in versions(&addresses) {
        assert_eq!(all[&name], version, "{name}");
    }
    assert_eq!(
        all["Kubernetes//v1/Pod/apps/echo-2"],
        held_addresses["Kubernetes//v1/Pod/apps/echo-2"]
    );
    other.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn unauthenticated_streams_are_refused() {
    let env = Env::new();
    let server = env.start(&base_mesh()).await;
    for token in [None, Some("not-a-known-token-0123456789")] {
        let err = server
            .raw(token, subscribe_both())
            .await
            .err()
            .expect("refused");
        assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    }
    // The mesh client with a wrong token never gets config and says why.
    let proxy = server.proxy("wrong-token-0123456789abcdef");
    let mut status = proxy.status.clone();
    eventually("the client reports the refusal", || {
        status
            .borrow_and_update()
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("Unauthenticated"))
    })
    .await;
    assert!(proxy.store.snapshot().workloads.is_empty());
    assert_eq!(
        server.metric("istiod_lite_xds_connected_proxies").await,
        0.0
    );
    server.stop().await;
}

#[tokio::test]
async fn mesh_client_converges_including_removals_and_restarts() {
    let env = Env::new();
    let mut mesh = base_mesh();
    let server = env.start(&mesh).await;
    let proxy = server.proxy(NODE1_TOKEN);
    proxy.converges_on(&mesh).await;
    server
        .metric_becomes("istiod_lite_xds_connected_proxies", 1.0)
        .await;

    // Additions, changes and removals of every kind.
    mesh = mesh
        .with_workload(workload("echo-3", "10.0.0.3", &[]))
        .with_policy(policy("deny-more", PolicyAction::Deny));
    server.publish(mesh.snapshot());
    proxy.converges_on(&mesh).await;

    mesh.workloads.remove("Kubernetes//v1/Pod/apps/echo-1");
    mesh.services.remove("apps/echo-v1.apps.svc.cluster.local");
    mesh.policies.remove("apps/allow-all");
    mesh = mesh.with_service(service("echo", "10.96.0.100"));
    server.publish(mesh.snapshot());
    proxy.converges_on(&mesh).await;

    mesh = Mesh::default();
    server.publish(mesh.snapshot());
    proxy.converges_on(&mesh).await;
    mesh = base_mesh();
    server.publish(mesh.snapshot());
    proxy.converges_on(&mesh).await;
    let pushes = server
        .metric("istiod_lite_xds_pushes_total{type=\"address\"}")
        .await;
    assert!(pushes >= 5.0, "{pushes}");

    // Shutdown ends the stream; a new server on the same port with changed config is found
    // by the reconnecting client (which keeps its config meanwhile: fail static).
    let addr = server.addr;
    server.stop().await;
    let mut status = proxy.status.clone();
    eventually("the client notices the shutdown", || {
        !status.borrow_and_update().connected
    })
    .await;
    assert!(mesh.held_by(&proxy.store.snapshot()));
    mesh = mesh.with_workload(workload("after-restart", "10.0.0.200", &[]));
    mesh.policies.remove("apps/deny-some");
    let restarted = env
        .start_with(
            mesh.snapshot(),
            &addr.to_string(),
            Duration::from_millis(20),
        )
        .await;
    proxy.converges_on(&mesh).await;
    eventually("the client reconnected", || {
        status.borrow_and_update().connected
    })
    .await;
    assert!(status.borrow().connections >= 2);

    // The stream ending (client gone) cleans up: the gauge goes back to zero.
    drop(proxy);
    restarted
        .metric_becomes("istiod_lite_xds_connected_proxies", 0.0)
        .await;
    restarted.stop().await;
}

#[tokio::test]
async fn shutdown_ends_open_streams_with_unavailable() {
    let env = Env::new();
    let server = env.start(&base_mesh()).await;
    let mut raw = server.subscribed(NODE1_TOKEN, &BOTH_TYPES).await;
    let _ = raw.recv().await;
    let _ = raw.recv().await;
    let stopping = tokio::spawn(server.stop());
    let end = tokio::time::timeout(WAIT, raw.responses.message())
        .await
        .expect("the stream ends in time");
    match end {
        Err(status) => assert_eq!(status.code(), Code::Unavailable, "{status:?}"),
        Ok(other) => panic!("expected Unavailable, got {other:?}"),
    }
    stopping.await.expect("stopped");
}

/// A namespace in the mesh with one pod, its service and a policy, in one file.
fn cluster() -> String {
    documents(&[NAMESPACE_APPS, &web_pod(1), SERVICE_WEB, POLICY_ALLOW_SLEEP])
}

/// What a proxy must hold for the cluster described by `yaml`, per the translation.
fn translated_mesh(yaml: &str) -> Mesh {
    let state = istiod_lite::config_source::ClusterState::from_yaml(yaml).expect("valid YAML");
    let t = istiod_lite::translate::translate(
        &state,
        &istiod_lite::translate::TranslateOptions::default(),
    );
    let mut mesh = Mesh::default();
    for w in t.workloads {
        mesh = mesh.with_workload(w);
    }
    for s in t.services {
        mesh = mesh.with_service(s);
    }
    for p in t.policies {
        mesh = mesh.with_policy(p);
    }
    mesh
}

#[tokio::test]
async fn the_config_directory_is_translated_served_and_followed() {
    let env = Env::new();
    let file = env.config_dir.join("cluster.yaml");
    let cluster = cluster();
    std::fs::write(&file, &cluster).expect("write");
    let server = env.start_from_dir().await;
    let proxy = server.proxy(NODE1_TOKEN);

    let mesh = translated_mesh(&cluster);
    assert_eq!(mesh.workloads.len(), 1, "{mesh:?}");
    assert_eq!(mesh.services.len(), 1, "{mesh:?}");
    assert_eq!(mesh.policies.len(), 1, "{mesh:?}");
    proxy.converges_on(&mesh).await;

    // A new pod in the directory reaches the proxy.
    let grown = documents(&[&cluster, &web_pod(2)]);
    std::fs::write(&file, &grown).expect("write");
    let mesh = translated_mesh(&grown);
    assert_eq!(mesh.workloads.len(), 2, "{mesh:?}");
    proxy.converges_on(&mesh).await;

    // Removing the file removes everything.
    std::fs::remove_file(&file).expect("remove");
    proxy.converges_on(&Mesh::default()).await;
    server.stop().await;
}

/// The same cluster, read from the Kubernetes API server (the fake one, real JSON) instead
/// of a directory: objects added, changed and deleted there reach the proxy.
#[tokio::test]
async fn the_cluster_on_the_api_server_is_translated_served_and_followed() {
    let api = resources::testing::FakeApiServer::start()
        .await
        .expect("fake API server");
    let apply = |yaml: &str| {
        for doc in resources::yaml_documents(yaml) {
            let mut object = doc.expect("yaml");
            if object.is_null() {
                continue;
            }
            if object["kind"] != "Namespace" && object["metadata"]["namespace"].is_null() {
                object["metadata"]["namespace"] = "default".into();
            }
            api.apply(object);
        }
    };
    let cluster = cluster();
    apply(&cluster);
    let env = Env::new();
    let server = env.start_from_kube(&api.url()).await;
    let proxy = server.proxy(NODE1_TOKEN);
    proxy.converges_on(&translated_mesh(&cluster)).await;

    let grown = documents(&[&cluster, &web_pod(2)]);
    apply(&web_pod(2));
    proxy.converges_on(&translated_mesh(&grown)).await;

    // Deleted on the API server: gone from the proxy.
    let pod2: serde_json::Value = resources::yaml_value(&web_pod(2)).expect("yaml");
    let ns = pod2["metadata"]["namespace"].as_str().unwrap_or("default");
    let name = pod2["metadata"]["name"].as_str().expect("name");
    assert!(api.delete("v1", "Pod", ns, name));
    proxy.converges_on(&translated_mesh(&cluster)).await;
    server.stop().await;
}
