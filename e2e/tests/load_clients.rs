//! The reliability matrix's clients themselves: through a healthy mesh, cross node, the
//! fixed-rate HTTP client sees every request answered and the long-lived stream gets every
//! byte back, so a failure they report during a fault is the fault's. Needs root.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Mesh, WAIT};
use e2e::load::{RateClient, StreamClient, HTTP_OK};

#[test]
fn rate_client_and_stream_see_no_failure_through_a_healthy_mesh() {
    let mut mesh = Mesh::new("loadclients", 2);
    let (client, server, _echo) = mesh.start_client_server();
    let _http = mesh.topo.tcp_hello(&server, 8080, HTTP_OK).expect("http");

    let rate = RateClient::start(&mesh.topo, &client, server.addr(8080), 200).expect("rate");
    let stream =
        StreamClient::start(&mesh.topo, &client, server.addr(7000), 64 * 1024).expect("stream");
    rate.wait_for_successes(400, WAIT).expect("requests flow");
    e2e::wait_until("the stream echoes", WAIT, || stream.verified() > 64 * 1024)
        .expect("stream flows");
    std::thread::sleep(Duration::from_millis(500));

    let report = rate.finish().expect("rate report");
    assert_eq!(
        report.failed,
        0,
        "failures: {:?}\n{}",
        report.failures,
        mesh.logs()
    );
    assert_eq!(report.ok, report.sent, "{report:?}");
    assert!(report.sent >= 400, "{report:?}");
    let stream = stream.finish().expect("stream report");
    assert!(
        stream.sent > 64 * 1024 && stream.verified == stream.sent,
        "{stream:?}"
    );
}
