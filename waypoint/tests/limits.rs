//! Routes, timeouts and bad input at the waypoint, in process.

#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)]

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use mesh::model::AppProtocol;
use mesh::store::Batch;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use waypoint::route::{PathMatch, RouteMatch, RouteRule, ServiceRoutes, WeightedBackend};
use waypoint::RouteTable;

fn get(path: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .header("host", ECHO_HOST)
        .body(Full::new(Bytes::new()))
        .expect("request")
}

fn echo_routes(prefix: &str, timeout: Option<Duration>) -> RouteTable {
    let mut t = RouteTable::new();
    t.set(
        ECHO_KEY,
        ServiceRoutes {
            rules: vec![RouteRule {
                matches: vec![RouteMatch {
                    path: Some(PathMatch::Prefix(prefix.into())),
                    ..Default::default()
                }],
                backends: vec![WeightedBackend {
                    service: ECHO_KEY.into(),
                    port: None,
                    weight: 1,
                }],
                timeout,
                ..Default::default()
            }],
            ..Default::default()
        },
    );
    t
}

async fn flagged(h: &Harness, labels: &[&str]) -> bool {
    let waypoint = h.waypoint.clone();
    eventually(Duration::from_secs(5), || {
        metric_value(
            &waypoint.telemetry().encode(),
            "istio_requests_total",
            labels,
        ) == 1.0
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_no_rule_matches_gets_404_with_flag_nr() {
    let h = Harness::start().await;
    h.waypoint.set_routes(echo_routes("/api", None));
    let mut client = h.http1(addr(ECHO_VIP, HTTP_PORT)).await;
    let resp = client.send_request(get("/api/x")).await.expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    resp.into_body().collect().await.expect("body");
    client.ready().await.expect("ready");
    let resp = client.send_request(get("/other")).await.expect("response");
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    resp.into_body().collect().await.expect("body");
    assert!(
        flagged(&h, &["response_code=\"404\"", "response_flags=\"NR\""]).await,
        "{}",
        h.metrics()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_slower_than_the_route_timeout_gets_504_with_flag_ut() {
    let h = Harness::start().await;
    h.waypoint
        .set_routes(echo_routes("/", Some(Duration::from_millis(200))));
    let mut client = h.http1(addr(ECHO_VIP, HTTP_PORT)).await;
    let started = tokio::time::Instant::now();
    let resp = client.send_request(get("/slow")).await.expect("response");
    assert_eq!(resp.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(started.elapsed() < Duration::from_secs(2));
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(&body[..], b"upstream request timeout");
    assert!(
        flagged(&h, &["response_code=\"504\"", "response_flags=\"UT\""]).await,
        "{}",
        h.metrics()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http1_app_protocol_makes_the_upstream_http1_for_an_h2_client() {
    let h = Harness::start().await;
    let mut echo = service("echo", ECHO_VIP);
    echo.ports[0].app_protocol = AppProtocol::Http11;
    let mut batch = Batch::new();
    batch.upsert_service(echo);
    h.store.apply(batch);
    let mut client = h.http2(addr(ECHO_VIP, HTTP_PORT)).await;
    let req = Request::get(format!("http://{ECHO_HOST}/"))
        .body(Full::new(Bytes::new()))
        .expect("request");
    let resp = client.send_request(req).await.expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["x-seen-version"], "HTTP/1.1");
}

/// Sends raw bytes in a tunnel and returns everything the waypoint answers until it closes.
async fn raw_exchange(h: &Harness, request: &[u8]) -> String {
    let tunnel = h.tunnel(addr(ECHO_VIP, HTTP_PORT)).await.expect("tunnel");
    let (mut r, mut w) = tokio::io::split(tunnel);
    w.write_all(request).await.expect("write");
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), r.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "the waypoint closes the connection");
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_http1_gets_400() {
    let h = Harness::start().await;
    let answer = raw_exchange(&h, b"GET / HTTP/1.1\r\nno colon here\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_headers_get_431() {
    let h = Harness::start().await;
    let mut req = b"GET / HTTP/1.1\r\nHost: a\r\nx-big: ".to_vec();
    req.extend(std::iter::repeat_n(b'a', 200 * 1024));
    req.extend_from_slice(b"\r\n\r\n");
    let answer = raw_exchange(&h, &req).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_slow_to_send_its_headers_is_cut() {
    let h = Harness::start_with(|c| c.header_read_timeout = Duration::from_millis(300)).await;
    let started = tokio::time::Instant::now();
    // A request line, then nothing: the headers never finish.
    let answer = raw_exchange(&h, b"GET / HTTP/1.1\r\nHost: a\r\n").await;
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
}

/// Tunnels that never send their first bytes hold a pending slot each until detection times
/// out; past `max_pending_streams` a new tunnel is refused with 503, and one is accepted again
/// once a slot is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_tunnels_past_the_pending_cap_are_refused_until_one_frees() {
    let h = Harness::start_with(|c| {
        c.max_pending_streams = 2;
        c.protocol_detect_timeout = Duration::from_secs(30);
    })
    .await;
    let target = addr(ECHO_VIP, HTTP_PORT);
    let first = h.tunnel(target).await.expect("first silent tunnel");
    let _second = h.tunnel(target).await.expect("second silent tunnel");
    let refused = h
        .tunnel(target)
        .await
        .expect_err("a third waits on nothing");
    assert!(
        matches!(refused, mesh::hbone::HboneError::Status(s) if s == StatusCode::SERVICE_UNAVAILABLE),
        "{refused}"
    );
    drop(first);
    let waypoint = h.waypoint.shared().pending.clone();
    assert!(
        eventually(Duration::from_secs(5), || waypoint.available_permits() == 1).await,
        "the closed tunnel gave its slot back"
    );
    h.tunnel(target)
        .await
        .expect("accepted again below the cap");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_upstream_http1_connections_are_closed() {
    let h = Harness::start_with(|c| c.upstream_idle_timeout = Duration::from_millis(300)).await;
    let mut client = h.http1(addr(ECHO_VIP, HTTP_PORT)).await;
    let resp = client.send_request(get("/")).await.expect("response");
    resp.into_body().collect().await.expect("body");
    let shared = h.waypoint.shared().clone();
    assert!(
        eventually(Duration::from_secs(1), || shared.upstreams.stats().http1
            == 1)
        .await,
        "kept alive at first"
    );
    assert!(
        eventually(Duration::from_secs(5), || shared.upstreams.stats().http1
            == 0)
        .await,
        "closed once idle: {:?}",
        shared.upstreams.stats()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_passthrough_obeys_l4_deny_policy() {
    use mesh::model::{Clause, Match, Policy, PolicyAction, PolicyScope, Rule, StringMatch};
    let h = Harness::start().await;
    let mut batch = Batch::new();
    batch.upsert_policy(Policy {
        name: "deny-sleep".into(),
        namespace: "default".into(),
        scope: PolicyScope::Namespace,
        action: PolicyAction::Deny,
        rules: vec![Rule {
            clauses: vec![Clause {
                matches: vec![Match {
                    principals: vec![StringMatch::Exact(
                        "cluster.local/ns/default/sa/sleep".into(),
                    )],
                    ..Default::default()
                }],
            }],
        }],
        dry_run: false,
    });
    h.store.apply(batch);
    let tunnel = h.tunnel(addr(ECHO_VIP, TCP_PORT)).await.expect("tunnel");
    let (mut r, mut w) = tokio::io::split(tunnel);
    let _ = w.write_all(b"\x00\x01 not http").await;
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), r.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "the tunnel is closed");
    assert!(out.is_empty(), "nothing comes back");
    assert_eq!(h.seen(0).connects.len() + h.seen(1).connects.len(), 0);
    let waypoint = h.waypoint.clone();
    assert!(
        eventually(Duration::from_secs(5), || {
            metric_value(
                &waypoint.telemetry().encode(),
                "istio_tcp_connections_closed_total",
                &["response_flags=\"DENY\""],
            ) == 1.0
        })
        .await,
        "{}",
        h.metrics()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_declared_tcp_is_passed_through_without_sniffing() {
    let h = Harness::start_with(|c| c.protocol_detect_timeout = Duration::from_secs(30)).await;
    let mut echo = service("echo", ECHO_VIP);
    echo.ports[1].app_protocol = AppProtocol::Tcp;
    let mut batch = Batch::new();
    batch.upsert_service(echo);
    h.store.apply(batch);
    let tunnel = h.tunnel(addr(ECHO_VIP, TCP_PORT)).await.expect("tunnel");
    let (mut r, mut w) = tokio::io::split(tunnel);
    // Looks like HTTP, and the detection timeout is long: a declared TCP port still passes
    // the bytes straight through, so the (server-first capable) echo answers at once.
    w.write_all(b"GET / HTTP/1.1\r\n").await.expect("write");
    let mut buf = [0u8; 16];
    tokio::time::timeout(Duration::from_secs(5), r.read_exact(&mut buf))
        .await
        .expect("echoed without waiting for detection")
        .expect("read");
    assert_eq!(&buf, b"GET / HTTP/1.1\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_destinations_bound_to_this_waypoint_are_served() {
    use mesh::hbone::HboneError;
    use mesh::model::{GatewayAddress, GatewayDestination, NamespacedHostname, NetworkAddress};
    use waypoint::select::WaypointBinding;
    let h = Harness::start_with(|c| {
        c.binding = Some(WaypointBinding {
            name: "waypoint".into(),
            namespace: "default".into(),
            own_ips: vec![],
        })
    })
    .await;
    let by_name = |ns: &str, name: &str| GatewayAddress {
        destination: GatewayDestination::Hostname(NamespacedHostname {
            namespace: ns.into(),
            hostname: format!("{name}.{ns}.svc.cluster.local"),
        }),
        hbone_mtls_port: 15008,
    };
    let mut batch = Batch::new();
    let mut echo = service("echo", ECHO_VIP);
    echo.waypoint = Some(by_name("default", "waypoint"));
    batch.upsert_service(echo);
    // `dead` names our waypoint's Service by its VIP.
    batch.upsert_service(service("waypoint", "10.96.0.100"));
    let mut dead = service("dead", DEAD_VIP);
    dead.waypoint = Some(GatewayAddress {
        destination: GatewayDestination::Address(NetworkAddress {
            network: String::new(),
            ip: "10.96.0.100".parse().expect("ip"),
        }),
        hbone_mtls_port: 15008,
    });
    batch.upsert_service(dead);
    // `empty` uses another namespace's waypoint.
    let mut empty = service("empty", EMPTY_VIP);
    empty.waypoint = Some(by_name("other", "waypoint"));
    batch.upsert_service(empty);
    h.store.apply(batch);

    let mut client = h.http1(addr(ECHO_VIP, HTTP_PORT)).await;
    let resp = client.send_request(get("/")).await.expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        h.tunnel(addr(DEAD_VIP, HTTP_PORT)).await.is_ok(),
        "bound by VIP"
    );
    for target in [addr(EMPTY_VIP, HTTP_PORT), addr("10.0.0.1", 8080)] {
        match h.tunnel(target).await {
            Err(HboneError::Status(s)) => assert_eq!(s, StatusCode::BAD_REQUEST, "{target}"),
            other => panic!("{target}: expected 400, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_refuses_new_tunnels_and_closes_idle_keepalive_connections() {
    let h = Harness::start().await;
    let mut client = h.http1(addr(ECHO_VIP, HTTP_PORT)).await;
    let resp = client.send_request(get("/")).await.expect("response");
    resp.into_body().collect().await.expect("body");
    assert_eq!(h.waypoint.open_connections(), 1);

    h.waypoint.drain();
    let waypoint = h.waypoint.clone();
    assert!(
        eventually(Duration::from_secs(5), || client.is_closed()).await,
        "the idle keep-alive connection is closed"
    );
    assert!(
        eventually(Duration::from_secs(5), || waypoint.open_connections() == 0).await,
        "the HBONE connection ends with its last stream"
    );
    assert!(
        h.tunnel(addr(ECHO_VIP, HTTP_PORT)).await.is_err(),
        "no new tunnel once draining"
    );
}
