//! The waypoint data plane end to end, in process: HBONE client → waypoint → HBONE backends.

#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)]

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use mesh::hbone::HboneError;
use support::*;
use tokio::io::AsyncWriteExt;

fn get(path: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .header("host", ECHO_HOST)
        .body(Full::new(Bytes::new()))
        .expect("request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_keepalive_requests_spread_over_both_endpoints() {
    let h = Harness::start().await;
    let mut client = h.http1(addr(ECHO_VIP, HTTP_PORT)).await;
    let mut by_backend = std::collections::HashMap::<String, usize>::new();
    for i in 0..200 {
        client
            .ready()
            .await
            .expect("keep-alive connection stays usable");
        let resp = client
            .send_request(get(&format!("/r/{i}")))
            .await
            .expect("response");
        assert_eq!(resp.status(), StatusCode::OK);
        let backend = resp.headers()["x-backend"]
            .to_str()
            .expect("ascii")
            .to_string();
        assert_eq!(resp.headers()["x-seen-version"], "HTTP/1.1");
        resp.into_body().collect().await.expect("body");
        *by_backend.entry(backend).or_default() += 1;
    }
    assert_eq!(by_backend.values().sum::<usize>(), 200);
    assert!(
        by_backend.get("echo-a").copied().unwrap_or(0) > 20
            && by_backend.get("echo-b").copied().unwrap_or(0) > 20,
        "both endpoints take a share per request: {by_backend:?}"
    );
    // Upstream connections are reused, not one per request.
    let connects = h.seen(0).connects.len() + h.seen(1).connects.len();
    assert!(
        connects <= 10,
        "{connects} upstream connections for 200 requests"
    );
    assert_eq!(h.client_pool.connections_opened(), 1);
    // The endpoints saw the waypoint's identity, and the mapped target port.
    let seen = h.seen(0);
    assert!(seen
        .peers
        .iter()
        .all(|p| p == "spiffe://cluster.local/ns/default/sa/waypoint"));
    assert!(
        seen.connects.iter().all(|t| *t == addr("10.0.0.1", 8080)),
        "{:?}",
        seen.connects
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_requests_multiplex_over_one_downstream_connection() {
    let h = Harness::start().await;
    let client = h.http2(addr(ECHO_VIP, HTTP_PORT)).await;
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let mut c = client.clone();
            tokio::spawn(async move {
                let req = Request::get(format!("http://{ECHO_HOST}/m/{i}"))
                    .body(Full::new(Bytes::from(vec![b'x'; 1000])))
                    .expect("request");
                let resp = c.send_request(req).await.expect("response");
                let status = resp.status();
                let version = resp.headers()["x-seen-version"].clone();
                let body = resp.into_body().collect().await.expect("body").to_bytes();
                (status, version, body.len())
            })
        })
        .collect();
    for t in tasks {
        let (status, version, len) = t.await.expect("task");
        assert_eq!(status, StatusCode::OK);
        assert_eq!(version, "HTTP/2.0");
        assert_eq!(len, 1000);
    }
    // One tunnel downstream; upstream one HTTP/2 connection per endpoint.
    assert_eq!(h.client_pool.connections_opened(), 1);
    let connects = h.seen(0).connects.len() + h.seen(1).connects.len();
    assert!(
        (1..=2).contains(&connects),
        "{connects} upstream h2 connections: one per endpoint"
    );
    assert_eq!(h.seen(0).requests + h.seen(1).requests, 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_call_passes_with_trailers_and_grpc_status() {
    let h = Harness::start().await;
    let mut client = h.http2(addr(ECHO_VIP, HTTP_PORT)).await;
    let message = Bytes::from_static(b"\x00\x00\x00\x00\x05hello");
    let req = Request::post(format!("http://{ECHO_HOST}/echo.Echo/Say"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(message.clone()))
        .expect("request");
    let resp = client.send_request(req).await.expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/grpc");
    let collected = resp.into_body().collect().await.expect("body");
    let trailers = collected
        .trailers()
        .cloned()
        .expect("trailers reach the client");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["grpc-message"], "ok");
    assert_eq!(collected.to_bytes(), message);
    let waypoint = h.waypoint.clone();
    assert!(
        eventually(Duration::from_secs(5), || {
            metric_value(
                &waypoint.telemetry().encode(),
                "istio_requests_total",
                &[
                    "request_protocol=\"grpc\"",
                    "grpc_response_status=\"0\"",
                    "response_code=\"200\"",
                ],
            ) == 1.0
        })
        .await,
        "{}",
        h.metrics()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_http_bytes_pass_through_byte_exact() {
    let h = Harness::start().await;
    let tunnel = h.tunnel(addr(ECHO_VIP, TCP_PORT)).await.expect("tunnel");
    let (r, mut w) = tokio::io::split(tunnel);
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let expected = payload.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&payload).await.expect("write");
        w.shutdown().await.expect("half-close");
        w
    });
    let echoed = read_all(r).await;
    let _w = writer.await.expect("writer");
    assert_eq!(echoed.len(), expected.len());
    assert!(echoed == expected, "bytes differ");
    let connects: Vec<_> = h
        .seen(0)
        .connects
        .iter()
        .chain(h.seen(1).connects.iter())
        .copied()
        .collect();
    assert_eq!(connects.len(), 1);
    assert_eq!(connects[0].port(), 9000, "target port mapped like ztunnel");
    let waypoint = h.waypoint.clone();
    assert!(
        eventually(Duration::from_secs(5), || {
            let text = waypoint.telemetry().encode();
            metric_value(
                &text,
                "istio_tcp_received_bytes_total",
                &["reporter=\"waypoint\"", "request_protocol=\"tcp\""],
            ) == 200_000.0
                && metric_value(
                    &text,
                    "istio_tcp_connections_closed_total",
                    &["destination_service=\"echo.default.svc.cluster.local\""],
                ) == 1.0
        })
        .await,
        "{}",
        h.metrics()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_first_protocol_passes_after_the_detection_timeout() {
    let h = Harness::start_with(|c| c.protocol_detect_timeout = Duration::from_millis(100)).await;
    let tunnel = h.tunnel(addr(ECHO_VIP, TCP_PORT)).await.expect("tunnel");
    let (r, mut w) = tokio::io::split(tunnel);
    // The client says nothing at first; after detection gives up, bytes flow as TCP.
    tokio::time::sleep(Duration::from_millis(300)).await;
    w.write_all(b"GET / HTTP/1.1\r\n\r\n").await.expect("write");
    w.shutdown().await.expect("half-close");
    assert_eq!(
        read_all(r).await,
        b"GET / HTTP/1.1\r\n\r\n",
        "passed through, not parsed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_healthy_endpoint_gives_503_with_flag_uh() {
    let h = Harness::start().await;
    let mut client = h.http1(addr(EMPTY_VIP, HTTP_PORT)).await;
    let resp = client.send_request(get("/")).await.expect("response");
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(&body[..], b"no healthy upstream");
    let waypoint = h.waypoint.clone();
    assert!(
        eventually(Duration::from_secs(5), || {
            metric_value(
                &waypoint.telemetry().encode(),
                "istio_requests_total",
                &[
                    "response_code=\"503\"",
                    "response_flags=\"UH\"",
                    "destination_service_name=\"empty\"",
                ],
            ) == 1.0
        })
        .await,
        "{}",
        h.metrics()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connect_failure_gives_503_with_flag_uf() {
    let h = Harness::start().await;
    let mut client = h.http1(addr(DEAD_VIP, HTTP_PORT)).await;
    let resp = client.send_request(get("/")).await.expect("response");
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    resp.into_body().collect().await.expect("body");
    let waypoint = h.waypoint.clone();
    assert!(
        eventually(Duration::from_secs(5), || {
            metric_value(
                &waypoint.telemetry().encode(),
                "istio_requests_total",
                &["response_code=\"503\"", "response_flags=\"UF\""],
            ) == 1.0
        })
        .await,
        "{}",
        h.metrics()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_destination_is_refused_with_400() {
    let h = Harness::start().await;
    match h.tunnel(addr("10.99.99.99", 80)).await {
        Err(HboneError::Status(s)) => assert_eq!(s, StatusCode::BAD_REQUEST),
        other => panic!("expected 400, got {other:?}"),
    }
    match h.tunnel(addr(ECHO_VIP, 81)).await {
        Err(HboneError::Status(s)) => assert_eq!(s, StatusCode::BAD_REQUEST),
        other => panic!("a port the service lacks: expected 400, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_with_istio_labels() {
    let h = Harness::start().await;
    let mut client = h.http1(addr(ECHO_VIP, HTTP_PORT)).await;
    for _ in 0..10 {
        client.ready().await.expect("ready");
        let resp = client.send_request(get("/")).await.expect("response");
        assert_eq!(resp.status(), StatusCode::OK);
        resp.into_body().collect().await.expect("body");
    }
    let labels = [
        "reporter=\"waypoint\"",
        "source_workload=\"sleep\"",
        "source_workload_namespace=\"default\"",
        "source_principal=\"spiffe://cluster.local/ns/default/sa/sleep\"",
        "destination_service=\"echo.default.svc.cluster.local\"",
        "destination_service_name=\"echo\"",
        "destination_service_namespace=\"default\"",
        "destination_workload=\"echo\"",
        "destination_workload_namespace=\"default\"",
        "destination_principal=\"spiffe://cluster.local/ns/default/sa/echo\"",
        "response_code=\"200\"",
        "grpc_response_status=\"-\"",
        "response_flags=\"-\"",
        "request_protocol=\"http\"",
        "connection_security_policy=\"mutual_tls\"",
    ];
    let waypoint = h.waypoint.clone();
    assert!(
        eventually(Duration::from_secs(5), || {
            metric_value(
                &waypoint.telemetry().encode(),
                "istio_requests_total",
                &labels,
            ) == 10.0
        })
        .await,
        "{}",
        h.metrics()
    );
    let text = h.metrics();
    assert_eq!(
        metric_value(&text, "istio_request_duration_milliseconds_count", &labels),
        10.0
    );
    assert_eq!(
        metric_value(&text, "istio_request_bytes_count", &labels),
        10.0
    );
    assert_eq!(
        metric_value(&text, "istio_response_bytes_count", &labels),
        10.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traceparent_is_propagated_with_a_new_span_id() {
    let h = Harness::start().await;
    let mut client = h.http1(addr(ECHO_VIP, HTTP_PORT)).await;
    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let req = Request::get("/")
        .header("host", ECHO_HOST)
        .header("traceparent", incoming)
        .header("x-request-id", "req-1")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let resp = client.send_request(req).await.expect("response");
    let seen = resp.headers()["x-seen-traceparent"]
        .to_str()
        .expect("ascii")
        .to_string();
    assert_eq!(
        resp.headers()["x-seen-request-id"],
        "req-1",
        "kept when present"
    );
    resp.into_body().collect().await.expect("body");
    let parts: Vec<&str> = seen.split('-').collect();
    assert_eq!(parts.len(), 4, "{seen}");
    assert_eq!(parts[1], "4bf92f3577b34da6a3ce929d0e0e4736", "same trace");
    assert_ne!(parts[2], "00f067aa0ba902b7", "a new span id for this hop");
    assert_eq!(parts[2].len(), 16);
    assert_eq!(parts[3], "01");

    // Without one, the waypoint starts a trace and adds a request id.
    client.ready().await.expect("ready");
    let resp = client.send_request(get("/")).await.expect("response");
    let seen = resp.headers()["x-seen-traceparent"]
        .to_str()
        .expect("ascii")
        .to_string();
    let request_id = resp.headers()["x-seen-request-id"]
        .to_str()
        .expect("ascii")
        .to_string();
    resp.into_body().collect().await.expect("body");
    assert_eq!(seen.len(), 55, "{seen}");
    assert!(seen.starts_with("00-"));
    assert_eq!(request_id.len(), 36, "{request_id}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http1_upgrade_switches_to_a_byte_stream_end_to_end() {
    use hyper_util::rt::TokioIo;
    use tokio::io::AsyncReadExt;
    let h = Harness::start().await;
    let io = h.tunnel(addr(ECHO_VIP, HTTP_PORT)).await.expect("tunnel");
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .expect("handshake");
    tokio::spawn(conn.with_upgrades());
    let req = Request::get("/ws")
        .header("host", ECHO_HOST)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let resp = send.send_request(req).await.expect("response");
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(resp.headers()["upgrade"], "websocket");
    let upgraded = hyper::upgrade::on(resp).await.expect("upgraded");
    let mut io = TokioIo::new(upgraded);
    io.write_all(b"\x81\x05hello").await.expect("write");
    let mut buf = [0u8; 7];
    tokio::time::timeout(Duration::from_secs(5), io.read_exact(&mut buf))
        .await
        .expect("echo in time")
        .expect("read");
    assert_eq!(&buf, b"\x81\x05hello");
}
