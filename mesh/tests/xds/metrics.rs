//! The xDS client's `mesh_xds_*` metrics against the fake ADS server of the parent module.

use super::*;

/// The value of one series in an exposition, `None` when absent.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn metrics_follow_the_stream_its_acks_nacks_and_reconnects() {
    let mut server = Server::start(None).await;
    let store = Store::new();
    let client = XdsClient::new(
        client_config(server.addr, XdsTransport::Plaintext),
        store.clone(),
    )
    .expect("client config");
    let mut registry = prometheus_client::registry::Registry::default();
    mesh::metrics::register_xds(&mut registry, &client.metrics());
    let mut status = client.status();
    let _task = Running {
        store,
        status: client.status(),
        task: tokio::spawn(client.run()),
    };
    let text = || mesh::metrics::encode(&registry);
    let before = text();
    assert_eq!(
        sample(&before, "mesh_xds_last_ack_timestamp_seconds"),
        Some(0.0)
    );
    assert_eq!(
        sample(&before, "mesh_xds_last_nack_timestamp_seconds"),
        Some(0.0)
    );

    let mut conn = server.next_conn().await;
    conn.recv_initial().await;
    wait_status(&mut status, |s| s.connected).await;
    assert_eq!(sample(&text(), "mesh_xds_connected"), Some(1.0));

    let w1 = workload("c//v1/Pod/default/w1", "10.0.0.1", ECHO_KEY);
    conn.send(response(
        ADDRESS_TYPE_URL,
        "a1",
        vec![workload_resource(&w1, "1")],
        &[],
    ));
    assert!(conn.recv().await.error_detail.is_none());
    let acked = text();
    let address = "{type=\"address\"}";
    assert_eq!(
        sample(&acked, &format!("mesh_xds_messages_total{address}")),
        Some(1.0)
    );
    assert_eq!(
        sample(&acked, &format!("mesh_xds_acks_total{address}")),
        Some(1.0)
    );
    assert_eq!(
        sample(&acked, &format!("mesh_xds_apply_seconds_count{address}")),
        Some(1.0)
    );
    assert!(
        sample(&acked, "mesh_xds_last_ack_timestamp_seconds") > Some(1.6e9),
        "{acked}"
    );
    assert_eq!(
        sample(&acked, "mesh_xds_last_nack_timestamp_seconds"),
        Some(0.0)
    );

    let garbage = Resource {
        name: "bad".into(),
        resource: Some(prost_types::Any {
            type_url: AUTHORIZATION_TYPE_URL.into(),
            value: vec![0xff, 0xff],
        }),
        ..Default::default()
    };
    conn.send(response(AUTHORIZATION_TYPE_URL, "p1", vec![garbage], &[]));
    assert!(conn.recv().await.error_detail.is_some());
    let nacked = text();
    let authz = "{type=\"authorization\"}";
    assert_eq!(
        sample(&nacked, &format!("mesh_xds_nacks_total{authz}")),
        Some(1.0)
    );
    assert!(
        sample(&nacked, "mesh_xds_last_nack_timestamp_seconds") > Some(1.6e9),
        "{nacked}"
    );
    assert_eq!(
        sample(&nacked, &format!("mesh_xds_acks_total{authz}")),
        None
    );

    // The server ends the stream: down, one retry, then up again on the new stream.
    drop(conn);
    wait_status(&mut status, |s| !s.connected).await;
    let mut conn = server.next_conn().await;
    conn.recv_initial().await;
    wait_status(&mut status, |s| s.connected && s.connections == 2).await;
    let again = text();
    assert_eq!(sample(&again, "mesh_xds_connected"), Some(1.0));
    assert_eq!(
        sample(&again, "mesh_xds_reconnects_total"),
        Some(1.0),
        "{again}"
    );
}
