//! Admin, metrics and readiness endpoints over a running data plane.

#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use mesh::http_server::Call;
use support::*;
use waypoint::admin::AdminState;

fn call<'a>(method: &'a Method, path: &'a str) -> Call<'a> {
    Call {
        method,
        path,
        query: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_once_the_certificate_is_issued_and_config_dump_shows_the_state() {
    let h = Harness::start().await;
    let admin = AdminState {
        waypoint: h.waypoint.clone(),
        xds: None,
        log_reload: Arc::new(|_: &str| Ok("info".to_string())),
        shutdown: Arc::new(tokio::sync::Notify::new()),
    };
    let ready = admin.clone().readiness_handler();
    let get = Method::GET;
    // The certificate is fetched when the first tunnel arrives (or at start in the binary).
    let _tunnel = h.tunnel(addr(ECHO_VIP, HTTP_PORT)).await.expect("tunnel");
    assert!(
        eventually(Duration::from_secs(5), || ready(&call(
            &get,
            "/healthz/ready"
        ))
        .status
            == StatusCode::OK)
        .await
    );
    let dump = admin.config_dump();
    assert_eq!(
        dump["identity"],
        "spiffe://cluster.local/ns/default/sa/waypoint"
    );
    assert_eq!(dump["certificates"][0]["state"], "available");
    assert!(
        dump["config"]["services"]
            .as_array()
            .expect("services")
            .len()
            >= 3
    );
    let admin_handler = admin.clone().admin_handler();
    let reply = admin_handler(&call(&get, "/config_dump"));
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.body.contains("\"upstreams\""));
    let metrics = admin.metrics_handler();
    let reply = metrics(&call(&get, "/metrics"));
    assert_eq!(reply.status, StatusCode::OK);
}
