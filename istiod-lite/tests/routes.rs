//! In-process tests of the route resource type (`ambient.waypoint.v1.ServiceRoutes`) over delta
//! ADS: HTTPRoutes written to the config directory reach a client that subscribes to the type
//! (a waypoint), and a node-tunnel-style client that does not subscribe is sent nothing new.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use proto::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL, ROUTES_TYPE_URL};

use support::cluster::{documents, web_pod, NAMESPACE_APPS, SERVICE_WEB};
use support::xds::names;
use support::*;

const WEB: &str = "apps/web.apps.svc.cluster.local";

fn route(path: &str) -> String {
    format!(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: web-routes, namespace: apps}}
spec:
  parentRefs: [{{group: "", kind: Service, name: web, port: 80}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: {path}}}}}]
    backendRefs: [{{name: web, port: 80}}]
"#
    )
}

/// The path prefix of the waypoint's first rule for `web`, if it holds routes for it.
fn first_prefix(store: &mesh::store::Store) -> Option<String> {
    let routes = store.routes(WEB)?;
    match routes.rules.first()?.matches.first()?.path.as_ref()? {
        mesh::model::route::PathMatch::Prefix(p) => Some(p.clone()),
        _ => None,
    }
}

#[tokio::test]
async fn a_route_in_the_directory_reaches_waypoints_and_only_them() {
    let env = Env::new();
    let cluster = documents(&[NAMESPACE_APPS, &web_pod(1), SERVICE_WEB]);
    std::fs::write(env.config_dir.join("cluster.yaml"), &cluster).expect("write");
    let server = env.start_from_dir().await;

    let waypoint = server.proxy_with_types(NODE1_TOKEN, vec![mesh::xds::ROUTES]);
    eventually("the waypoint is synced on all three types", || {
        waypoint.status.borrow().is_synced()
    })
    .await;
    assert!(waypoint.store.routed_services().is_empty());
    let (mut ztunnel, ..) = server.handshake(NODE2_TOKEN).await;

    // A route written to the directory reaches the waypoint.
    let routes_file = env.config_dir.join("routes.yaml");
    std::fs::write(&routes_file, route("/api")).expect("write");
    eventually("the waypoint holds the route", || {
        first_prefix(&waypoint.store).as_deref() == Some("/api")
    })
    .await;
    // The node tunnel neither subscribed nor gets anything: addresses and policies are unchanged.
    ztunnel.expect_silence().await;

    // An invalid edit is refused in the directory: the waypoint keeps the last good route while
    // a valid edit of the same file later goes through.
    std::fs::write(&routes_file, route("no-slash")).expect("write");
    std::fs::write(env.config_dir.join("more.yaml"), documents(&[&web_pod(2)])).expect("write");
    eventually("the new pod arrives", || {
        waypoint.store.snapshot().workloads.len() == 2
    })
    .await;
    assert_eq!(first_prefix(&waypoint.store).as_deref(), Some("/api"));
    std::fs::write(&routes_file, route("/v2")).expect("write");
    eventually("the edited route arrives", || {
        first_prefix(&waypoint.store).as_deref() == Some("/v2")
    })
    .await;

    // Removing the file removes the routes.
    std::fs::remove_file(&routes_file).expect("remove");
    eventually("the route is removed", || {
        waypoint.store.routes(WEB).is_none()
    })
    .await;
    let status = waypoint.status.borrow().clone();
    assert_eq!(status.types[ROUTES_TYPE_URL].nacks, 0);
    for t in [ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL] {
        assert_eq!(status.types[t].nacks, 0);
    }
    server.stop().await;
}

#[tokio::test]
async fn a_client_that_does_not_subscribe_to_routes_never_receives_them() {
    let env = Env::new();
    let cluster = documents(&[NAMESPACE_APPS, &web_pod(1), SERVICE_WEB, &route("/api")]);
    std::fs::write(env.config_dir.join("cluster.yaml"), &cluster).expect("write");
    let server = env.start_from_dir().await;

    let ztunnel = server.proxy(NODE1_TOKEN);
    let mut raw = server.subscribed(NODE2_TOKEN, &[ROUTES_TYPE_URL]).await;
    let routes = raw.recv_type(ROUTES_TYPE_URL).await;
    assert_eq!(names(&routes), [WEB]);

    eventually("the node tunnel is synced", || {
        ztunnel.status.borrow().is_synced()
    })
    .await;
    assert!(ztunnel.store.routed_services().is_empty());
    assert!(!ztunnel.status.borrow().types.contains_key(ROUTES_TYPE_URL));
    server.stop().await;
}
