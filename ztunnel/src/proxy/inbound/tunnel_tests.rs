//! HBONE tunnels count for their pod only once their peer has authenticated.

use std::time::Duration;

use mesh::hbone::{ConnectMeta, HboneError, Pool, PoolKey, TcpConnector};
use mesh::testing::TestCa;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn only_authenticated_hbone_connections_count_as_tunnels_of_the_pod() {
    let ca = TestCa::new("cluster.local", Duration::from_secs(3600));
    let server_id: Identity = "spiffe://cluster.local/ns/demo/sa/b"
        .parse()
        .expect("identity");
    let server = Arc::new(Server::new(
        H2Config::default(),
        Arc::new(Arc::new(ca.issue(&server_id))),
    ));
    let live = Arc::new(LiveConnections::default());
    let pod = PodKey {
        uid: "Kubernetes//v1/Pod/demo/b".into(),
        netns: 1,
    };
    assert_eq!(live.pod_started(&pod), None);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    {
        let (server, live, pod) = (server.clone(), live.clone(), pod.clone());
        tokio::spawn(async move {
            while let Ok((tcp, peer)) = listener.accept().await {
                let server = server.clone();
                let hook = tunnel_guard(live.clone(), pod.clone());
                tokio::spawn(async move {
                    let refuse = |req: InboundRequest| async move {
                        req.reject(StatusCode::SERVICE_UNAVAILABLE)
                    };
                    let _ = server
                        .serve_connection_until(tcp, peer, refuse, std::future::pending(), hook)
                        .await;
                });
            }
        });
    }

    // Accepted but not authenticated: in set-up, never a tunnel.
    let _silent = TcpStream::connect(addr).await.expect("tcp");
    let mut plain = TcpStream::connect(addr).await.expect("tcp");
    plain
        .write_all(b"GET / HTTP/1.1\r\n\r\n")
        .await
        .expect("write");
    let _ = plain.read_to_end(&mut Vec::new()).await;
    eventually("the silent connection is in set-up", || {
        server.handshakes_in_flight() == 1
    })
    .await;
    assert_eq!(live.len(), 0, "unauthenticated connections counted");

    // Authenticated: one tunnel, however its streams fare.
    let cert = ca.issue(
        &"spiffe://cluster.local/ns/demo/sa/a"
            .parse()
            .expect("identity"),
    );
    let key = PoolKey::new(cert.identity().clone(), vec![server_id], addr, None);
    let pool = Pool::new(H2Config::default(), Arc::new(TcpConnector));
    let err = pool
        .connect(
            &key,
            &cert,
            "10.0.0.2:80".parse().expect("addr"),
            &ConnectMeta::default(),
        )
        .await
        .expect_err("the handler refuses");
    assert!(matches!(err, HboneError::Status(_)), "{err}");
    assert_eq!(live.len(), 1);

    // The pod's drain ends: the tunnel is closed and unregistered.
    live.pod_removed(&pod, Duration::ZERO);
    eventually("the tunnel is closed", || {
        live.is_empty() && pool.open_connections() == 0
    })
    .await;
    // After that, an authenticated peer is refused rather than registered.
    let pool = Pool::new(H2Config::default(), Arc::new(TcpConnector));
    pool.connect(
        &key,
        &cert,
        "10.0.0.2:80".parse().expect("addr"),
        &ConnectMeta::default(),
    )
    .await
    .expect_err("the pod is no longer served");
    assert!(live.is_empty());
}
