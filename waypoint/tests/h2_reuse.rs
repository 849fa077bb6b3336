//! An HTTP/2 client keeps its connection to the waypoint across requests, whatever the
//! upstream's protocol.

mod support;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use mesh::model::AppProtocol;
use mesh::store::Batch;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_client_sends_request_after_request_to_an_http1_upstream_on_one_connection() {
    let h = Harness::start().await;
    let mut echo = service("echo", ECHO_VIP);
    echo.ports[0].app_protocol = AppProtocol::Http11;
    let mut batch = Batch::new();
    batch.upsert_service(echo);
    h.store.apply(batch);
    let mut client = h.http2(addr(ECHO_VIP, HTTP_PORT)).await;
    for i in 0..3 {
        let req = Request::get(format!("http://{ECHO_HOST}/{i}"))
            .body(Full::new(Bytes::new()))
            .expect("request");
        let resp = client
            .send_request(req)
            .await
            .unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(resp.status(), StatusCode::OK, "request {i}");
        assert_eq!(resp.headers()["x-seen-version"], "HTTP/1.1");
    }
}
