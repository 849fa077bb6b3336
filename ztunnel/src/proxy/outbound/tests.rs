//! Routing of outbound connections, and the first bytes that go out with the CONNECT.

use super::*;
use mesh::store::Batch;
use proto::workload as pb;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A connected pair on loopback: (the client's end, ztunnel's accepted end).
async fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let client = TcpStream::connect(listener.local_addr().expect("addr"))
        .await
        .expect("connect");
    let (accepted, _) = listener.accept().await.expect("accept");
    (client, accepted)
}

#[tokio::test]
async fn first_bytes_takes_what_was_sent_and_leaves_the_rest_to_the_copy() {
    let (mut client, mut accepted) = pair().await;
    assert!(first_bytes(&accepted).expect("nothing yet").is_empty());
    let sent: Vec<u8> = (0..FIRST_BYTES + 1000).map(|i| (i % 251) as u8).collect();
    client.write_all(&sent).await.expect("send");
    // Loopback delivers at once; wait until all of it is there.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let first = first_bytes(&accepted).expect("first");
    assert_eq!(first.len(), FIRST_BYTES);
    assert_eq!(first[..], sent[..FIRST_BYTES]);
    let mut rest = vec![0; 1000];
    accepted
        .read_exact(&mut rest)
        .await
        .expect("the copy reads the rest");
    assert_eq!(rest[..], sent[FIRST_BYTES..]);
    client.shutdown().await.expect("half-close");
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert!(first_bytes(&accepted).expect("EOF is empty").is_empty());
    assert_eq!(accepted.read(&mut rest).await.expect("eof again"), 0);
}

#[tokio::test]
async fn a_client_reset_before_the_connect_is_an_error_not_an_empty_read() {
    let (client, accepted) = pair().await;
    socket2::SockRef::from(&client)
        .set_linger(Some(std::time::Duration::ZERO))
        .expect("linger 0");
    drop(client);
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let err = first_bytes(&accepted).expect_err("reset");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
}

fn workload(name: &str, ip: [u8; 4], hbone: bool, services: &[(&str, u32, u32)]) -> Workload {
    let w = pb::Workload {
        uid: format!("Kubernetes//v1/Pod/demo/{name}"),
        name: name.into(),
        namespace: "demo".into(),
        addresses: vec![ip.to_vec()],
        tunnel_protocol: if hbone {
            pb::TunnelProtocol::Hbone as i32
        } else {
            0
        },
        service_account: name.into(),
        services: services
            .iter()
            .map(|(key, sp, tp)| {
                (
                    key.to_string(),
                    pb::PortList {
                        ports: vec![pb::Port {
                            service_port: *sp,
                            target_port: *tp,
                            app_protocol: 0,
                        }],
                    },
                )
            })
            .collect(),
        ..Default::default()
    };
    Workload::try_from(w).expect("valid workload")
}

fn service(name: &str, vip: [u8; 4], waypoint: Option<[u8; 4]>) -> Service {
    let s = pb::Service {
        name: name.into(),
        namespace: "demo".into(),
        hostname: format!("{name}.demo.svc.cluster.local"),
        addresses: vec![pb::NetworkAddress {
            network: String::new(),
            address: vip.to_vec(),
        }],
        ports: vec![pb::Port {
            service_port: 80,
            target_port: 0,
            app_protocol: 0,
        }],
        waypoint: waypoint.map(|ip| pb::GatewayAddress {
            destination: Some(pb::gateway_address::Destination::Address(
                pb::NetworkAddress {
                    network: String::new(),
                    address: ip.to_vec(),
                },
            )),
            hbone_mtls_port: 15008,
        }),
        ..Default::default()
    };
    Service::try_from(s).expect("valid service")
}

fn store(workloads: Vec<Workload>, services: Vec<Service>) -> Store {
    let store = Store::new();
    let mut batch = Batch::new();
    for w in workloads {
        batch.upsert_workload(w);
    }
    for s in services {
        batch.upsert_service(s);
    }
    store.apply(batch);
    store
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("addr")
}

#[test]
fn a_meshed_pod_ip_goes_over_hbone_expecting_its_identity() {
    let s = store(vec![workload("b", [10, 12, 0, 2], true, &[])], vec![]);
    match resolve(&s, None, addr("10.12.0.2:7000")) {
        Route::Hbone {
            endpoint,
            authority,
            expected,
            via_waypoint,
            ..
        } => {
            assert_eq!(endpoint, addr("10.12.0.2:15008"));
            assert_eq!(authority, addr("10.12.0.2:7000"));
            assert_eq!(
                expected[0].to_string(),
                "spiffe://cluster.local/ns/demo/sa/b"
            );
            assert!(!via_waypoint);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn unmeshed_and_unknown_destinations_pass_through() {
    let s = store(vec![workload("legacy", [10, 12, 0, 9], false, &[])], vec![]);
    assert!(matches!(
        resolve(&s, None, addr("10.12.0.9:80")),
        Route::Passthrough {
            workload: Some(_),
            ..
        }
    ));
    assert!(matches!(
        resolve(&s, None, addr("192.0.2.1:443")),
        Route::Passthrough { workload: None, .. }
    ));
}

#[test]
fn a_service_vip_spreads_over_every_endpoint_with_the_target_port() {
    let key = "demo/echo.demo.svc.cluster.local";
    let s = store(
        vec![
            workload("e1", [10, 12, 0, 2], true, &[(key, 80, 7000)]),
            workload("e2", [10, 12, 0, 3], true, &[(key, 80, 7000)]),
            workload("e3", [10, 11, 0, 4], true, &[(key, 80, 7000)]),
        ],
        vec![service("echo", [10, 96, 0, 10], None)],
    );
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..9 {
        match resolve(&s, None, addr("10.96.0.10:80")) {
            Route::Hbone {
                authority, service, ..
            } => {
                assert_eq!(authority.port(), 7000);
                assert!(service.is_some());
                seen.insert(authority.ip());
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(seen.len(), 3, "every endpoint used: {seen:?}");
}

#[test]
fn a_service_with_no_endpoint_is_unreachable() {
    let s = store(vec![], vec![service("echo", [10, 96, 0, 10], None)]);
    assert!(matches!(
        resolve(&s, None, addr("10.96.0.10:80")),
        Route::Unreachable(_)
    ));
}

#[test]
fn a_service_bound_to_a_waypoint_goes_to_the_waypoint_with_the_vip_as_authority() {
    let key = "demo/echo.demo.svc.cluster.local";
    let wp = workload("waypoint", [10, 11, 0, 50], true, &[]);
    let s = store(
        vec![
            workload("e1", [10, 12, 0, 2], true, &[(key, 80, 7000)]),
            wp.clone(),
        ],
        vec![service("echo", [10, 96, 0, 10], Some([10, 11, 0, 50]))],
    );
    match resolve(&s, None, addr("10.96.0.10:80")) {
        Route::Hbone {
            endpoint,
            authority,
            expected,
            via_waypoint,
            ..
        } => {
            assert!(via_waypoint);
            assert_eq!(endpoint, addr("10.11.0.50:15008"));
            assert_eq!(authority, addr("10.96.0.10:80"));
            assert_eq!(expected, vec![wp.identity.clone()]);
        }
        other => panic!("{other:?}"),
    }
    // The waypoint itself goes straight to an endpoint.
    assert!(matches!(
        resolve(&s, Some(&wp), addr("10.96.0.10:80")),
        Route::Hbone {
            via_waypoint: false,
            ..
        }
    ));
}
