//! Wire-format checks: the exact bytes prove the field numbers match upstream, and a
//! loopback gRPC round trip proves the generated clients and servers work together.

use std::collections::HashMap;
use std::pin::Pin;

use prost::Message;
use prost::Name as _;
use proto::{ca, discovery, security, workload, zds};

fn bytes<M: Message>(m: &M) -> Vec<u8> {
    m.encode_to_vec()
}

#[test]
fn workload_round_trips_through_address() {
    let mut services = HashMap::new();
    services.insert(
        "default/echo.default.svc.cluster.local".to_string(),
        workload::PortList {
            ports: vec![workload::Port {
                service_port: 80,
                target_port: 8080,
                app_protocol: workload::AppProtocol::Http11 as i32,
            }],
        },
    );
    let wl = workload::Workload {
        uid: "cluster1//v1/Pod/default/echo-1".into(),
        name: "echo-1".into(),
        namespace: "default".into(),
        addresses: vec![vec![10, 0, 0, 7], vec![0xfd; 16]],
        tunnel_protocol: workload::TunnelProtocol::Hbone as i32,
        service_account: "echo".into(),
        node: "node-a".into(),
        workload_type: workload::WorkloadType::Pod as i32,
        services,
        authorization_policies: vec!["default/allow-sleep".into()],
        status: workload::WorkloadStatus::Healthy as i32,
        locality: Some(workload::Locality {
            region: "r".into(),
            zone: "z".into(),
            subzone: "s".into(),
        }),
        capacity: Some(3),
        waypoint: Some(workload::GatewayAddress {
            destination: Some(workload::gateway_address::Destination::Hostname(
                workload::NamespacedHostname {
                    namespace: "default".into(),
                    hostname: "waypoint.default.svc.cluster.local".into(),
                },
            )),
            hbone_mtls_port: 15008,
        }),
        ..Default::default()
    };
    let addr = workload::Address {
        r#type: Some(workload::address::Type::Workload(wl.clone())),
    };
    let decoded = workload::Address::decode(bytes(&addr).as_slice()).expect("decode");
    assert_eq!(decoded, addr);
    match decoded.r#type {
        Some(workload::address::Type::Workload(w)) => {
            assert_eq!(w.uid, wl.uid);
            assert_eq!(w.addresses[0], vec![10, 0, 0, 7]);
            assert_eq!(w.services.len(), 1);
            assert_eq!(w.tunnel_protocol(), workload::TunnelProtocol::Hbone);
        }
        other => panic!("unexpected {other:?}"),
    }

    // Wrapped as an ADS resource.
    let any = prost_types::Any::from_msg(&addr).expect("any");
    assert_eq!(any.type_url, proto::ADDRESS_TYPE_URL);
    assert_eq!(any.to_msg::<workload::Address>().expect("unpack"), addr);
}

#[test]
fn workload_field_numbers() {
    // uid = 20, length-delimited: tag (20 << 3 | 2) = 162 = varint A2 01.
    let w = workload::Workload {
        uid: "x".into(),
        ..Default::default()
    };
    assert_eq!(bytes(&w), [0xA2, 0x01, 0x01, b'x']);

    // addresses = 3, raw bytes.
    let w = workload::Workload {
        addresses: vec![vec![1, 2, 3, 4]],
        ..Default::default()
    };
    assert_eq!(bytes(&w), [0x1A, 0x04, 1, 2, 3, 4]);

    // tunnel_protocol = 5 (HBONE = 1), native_tunnel = 14, status = 17 (UNHEALTHY = 1).
    let w = workload::Workload {
        tunnel_protocol: workload::TunnelProtocol::Hbone as i32,
        ..Default::default()
    };
    assert_eq!(bytes(&w), [0x28, 0x01]);
    let w = workload::Workload {
        native_tunnel: true,
        ..Default::default()
    };
    assert_eq!(bytes(&w), [0x70, 0x01]);
    let w = workload::Workload {
        status: workload::WorkloadStatus::Unhealthy as i32,
        ..Default::default()
    };
    assert_eq!(bytes(&w), [0x88, 0x01, 0x01]);

    // services = 22: tag B2 01, then a map entry {key = 1, value = 2}; PortList.ports = 1,
    // Port.service_port = 1.
    let one_port = workload::PortList {
        ports: vec![workload::Port {
            service_port: 1,
            ..Default::default()
        }],
    };
    let w = workload::Workload {
        services: HashMap::from([("k".to_string(), one_port)]),
        ..Default::default()
    };
    assert_eq!(
        bytes(&w),
        [0xB2, 0x01, 0x09, 0x0A, 0x01, b'k', 0x12, 0x04, 0x0A, 0x02, 0x08, 0x01]
    );

    // capacity = 27 (UInt32Value{value = 1}): tag DA 01.
    let w = workload::Workload {
        capacity: Some(5),
        ..Default::default()
    };
    assert_eq!(bytes(&w), [0xDA, 0x01, 0x02, 0x08, 0x05]);

    // network_mode = 25 (HOST_NETWORK = 1): tag C8 01.
    let w = workload::Workload {
        network_mode: workload::NetworkMode::HostNetwork as i32,
        ..Default::default()
    };
    assert_eq!(bytes(&w), [0xC8, 0x01, 0x01]);

    // Address.service = 2.
    let a = workload::Address {
        r#type: Some(workload::address::Type::Service(
            workload::Service::default(),
        )),
    };
    assert_eq!(bytes(&a), [0x12, 0x00]);
}

#[test]
fn service_and_gateway_field_numbers() {
    // ingress_use_waypoint = 12 (bool): tag 0x60.
    let s = workload::Service {
        ingress_use_waypoint: true,
        ..Default::default()
    };
    assert_eq!(bytes(&s), [0x60, 0x01]);

    // addresses = 4: NetworkAddress{network = 1, address = 2}.
    let s = workload::Service {
        addresses: vec![workload::NetworkAddress {
            network: String::new(),
            address: vec![10, 96, 0, 1],
        }],
        ..Default::default()
    };
    assert_eq!(bytes(&s), [0x22, 0x06, 0x12, 0x04, 10, 96, 0, 1]);

    // GatewayAddress: address = 2 in the oneof, hbone_mtls_port = 3 (15008 = A0 75).
    let g = workload::GatewayAddress {
        destination: Some(workload::gateway_address::Destination::Address(
            workload::NetworkAddress {
                network: "n".into(),
                address: vec![],
            },
        )),
        hbone_mtls_port: 15008,
    };
    assert_eq!(bytes(&g), [0x12, 0x03, 0x0A, 0x01, b'n', 0x18, 0xA0, 0x75]);

    // Port.app_protocol = 3 (GRPC = 3).
    let p = workload::Port {
        service_port: 0,
        target_port: 0,
        app_protocol: workload::AppProtocol::Grpc as i32,
    };
    assert_eq!(bytes(&p), [0x18, 0x03]);
}

#[test]
fn authorization_field_numbers() {
    let a = security::Authorization {
        dry_run: true,
        ..Default::default()
    };
    assert_eq!(bytes(&a), [0x30, 0x01]);

    let a = security::Authorization {
        action: security::Action::Deny as i32,
        scope: security::Scope::WorkloadSelector as i32,
        ..Default::default()
    };
    assert_eq!(bytes(&a), [0x18, 0x02, 0x20, 0x01]);

    // Rule.clauses = 1, Clause.matches = 2.
    let a = security::Authorization {
        rules: vec![security::Rule {
            clauses: vec![security::Clause {
                matches: vec![security::Match::default()],
            }],
        }],
        ..Default::default()
    };
    assert_eq!(bytes(&a), [0x2A, 0x04, 0x0A, 0x02, 0x12, 0x00]);

    // Match: destination_ports = 9 (packed), service_accounts = 11, not_service_accounts = 12.
    let m = security::Match {
        destination_ports: vec![80],
        ..Default::default()
    };
    assert_eq!(bytes(&m), [0x4A, 0x01, 80]);
    let m = security::Match {
        service_accounts: vec![security::ServiceAccountMatch {
            namespace: "a".into(),
            service_account: "b".into(),
        }],
        not_service_accounts: vec![security::ServiceAccountMatch::default()],
        ..Default::default()
    };
    assert_eq!(
        bytes(&m),
        [0x5A, 0x06, 0x0A, 0x01, b'a', 0x12, 0x01, b'b', 0x62, 0x00]
    );

    // Address{address = 1, length = 2}; StringMatch presence = 4 (Empty).
    let m = security::Match {
        not_source_ips: vec![security::Address {
            address: vec![10, 0, 0, 0],
            length: 8,
        }],
        principals: vec![security::StringMatch {
            match_type: Some(security::string_match::MatchType::Presence(())),
        }],
        ..Default::default()
    };
    assert_eq!(
        bytes(&m),
        [0x1A, 0x02, 0x22, 0x00, 0x32, 0x08, 0x0A, 0x04, 10, 0, 0, 0, 0x10, 0x08]
    );
}

#[test]
fn zds_field_numbers() {
    assert_eq!(
        bytes(&zds::ZdsHello {
            version: zds::Version::V1 as i32
        }),
        [0x08, 0x01]
    );
    assert_eq!(
        bytes(&zds::DelWorkload { uid: "a".into() }),
        [0x12, 0x01, b'a']
    );
    let keep = zds::WorkloadRequest {
        payload: Some(zds::workload_request::Payload::Keep(zds::KeepWorkload {
            uid: "a".into(),
        })),
    };
    assert_eq!(bytes(&keep), [0x2A, 0x03, 0x0A, 0x01, b'a']);
    let snap = zds::WorkloadRequest {
        payload: Some(zds::workload_request::Payload::SnapshotSent(
            zds::SnapshotSent {},
        )),
    };
    assert_eq!(bytes(&snap), [0x1A, 0x00]);
    let add = zds::AddWorkload {
        uid: "u".into(),
        workload_info: Some(zds::WorkloadInfo {
            name: String::new(),
            namespace: String::new(),
            service_account: "s".into(),
        }),
    };
    assert_eq!(
        bytes(&add),
        [0x0A, 0x01, b'u', 0x12, 0x03, 0x1A, 0x01, b's']
    );
    let ack = zds::WorkloadResponse {
        payload: Some(zds::workload_response::Payload::Ack(zds::Ack {
            error: "e".into(),
        })),
    };
    assert_eq!(bytes(&ack), [0x0A, 0x03, 0x0A, 0x01, b'e']);
}

#[test]
fn delta_ads_field_numbers() {
    let req = discovery::DeltaDiscoveryRequest {
        node: Some(proto::envoy::config::core::v3::Node {
            id: "i".into(),
            ..Default::default()
        }),
        type_url: "t".into(),
        initial_resource_versions: HashMap::from([("a".to_string(), "1".to_string())]),
        response_nonce: "n".into(),
        error_detail: Some(proto::google::rpc::Status {
            code: 3,
            message: String::new(),
            details: vec![],
        }),
        ..Default::default()
    };
    assert_eq!(
        bytes(&req),
        [
            0x0A, 0x03, 0x0A, 0x01, b'i', // node = 1 { id = 1 }
            0x12, 0x01, b't', // type_url = 2
            0x2A, 0x06, 0x0A, 0x01, b'a', 0x12, 0x01, b'1', // initial_resource_versions = 5
            0x32, 0x01, b'n', // response_nonce = 6
            0x3A, 0x02, 0x08, 0x03, // error_detail = 7 { code = 1 }
        ]
    );
    let req = discovery::DeltaDiscoveryRequest {
        resource_names_subscribe: vec!["s".into()],
        resource_names_unsubscribe: vec!["u".into()],
        ..Default::default()
    };
    assert_eq!(bytes(&req), [0x1A, 0x01, b's', 0x22, 0x01, b'u']);

    let resp = discovery::DeltaDiscoveryResponse {
        system_version_info: String::new(),
        resources: vec![discovery::Resource {
            name: "r".into(),
            version: "v".into(),
            ..Default::default()
        }],
        type_url: "t".into(),
        nonce: "n".into(),
        removed_resources: vec!["x".into()],
        ..Default::default()
    };
    assert_eq!(
        bytes(&resp),
        [
            0x12, 0x06, 0x0A, 0x01, b'v', 0x1A, 0x01,
            b'r', // resources = 2 { version = 1, name = 3 }
            0x22, 0x01, b't', // type_url = 4
            0x2A, 0x01, b'n', // nonce = 5
            0x32, 0x01, b'x', // removed_resources = 6
        ]
    );
}

#[test]
fn ca_field_numbers() {
    let req = ca::IstioCertificateRequest {
        csr: "c".into(),
        validity_duration: 86_400,
        metadata: Some(prost_types::Struct::default()),
    };
    assert_eq!(
        bytes(&req),
        [0x0A, 0x01, b'c', 0x18, 0x80, 0xA3, 0x05, 0x22, 0x00]
    );
    let resp = ca::IstioCertificateResponse {
        cert_chain: vec!["a".into(), "b".into()],
    };
    assert_eq!(bytes(&resp), [0x0A, 0x01, b'a', 0x0A, 0x01, b'b']);
}

#[test]
fn names_and_type_urls() {
    assert_eq!(
        proto::ADDRESS_TYPE_URL,
        "type.googleapis.com/istio.workload.Address"
    );
    assert_eq!(
        proto::AUTHORIZATION_TYPE_URL,
        "type.googleapis.com/istio.security.Authorization"
    );
    assert_eq!(workload::Address::type_url(), proto::ADDRESS_TYPE_URL);
    assert_eq!(
        security::Authorization::type_url(),
        proto::AUTHORIZATION_TYPE_URL
    );
    assert_eq!(
        discovery::DeltaDiscoveryRequest::full_name(),
        "envoy.service.discovery.v3.DeltaDiscoveryRequest"
    );
    assert_eq!(
        zds::WorkloadRequest::full_name(),
        "istio.workload.zds.WorkloadRequest"
    );
    assert_eq!(
        format!(
            "/{}/DeltaAggregatedResources",
            discovery::aggregated_discovery_service_server::SERVICE_NAME
        ),
        proto::DELTA_ADS_PATH
    );
    assert_eq!(
        format!(
            "/{}/CreateCertificate",
            ca::istio_certificate_service_server::SERVICE_NAME
        ),
        proto::CREATE_CERTIFICATE_PATH
    );
}

// --- loopback gRPC: generated server + generated client -------------------------------

struct Ca;

#[tonic::async_trait]
impl ca::istio_certificate_service_server::IstioCertificateService for Ca {
    async fn create_certificate(
        &self,
        request: tonic::Request<ca::IstioCertificateRequest>,
    ) -> Result<tonic::Response<ca::IstioCertificateResponse>, tonic::Status> {
        let csr = request.into_inner().csr;
        Ok(tonic::Response::new(ca::IstioCertificateResponse {
            cert_chain: vec![format!("leaf-for-{csr}"), "root".into()],
        }))
    }
}

struct Ads;

type DeltaStream = Pin<
    Box<
        dyn tokio_stream::Stream<Item = Result<discovery::DeltaDiscoveryResponse, tonic::Status>>
            + Send,
    >,
>;
type SotwStream = Pin<
    Box<
        dyn tokio_stream::Stream<Item = Result<discovery::DiscoveryResponse, tonic::Status>> + Send,
    >,
>;

#[tonic::async_trait]
impl discovery::aggregated_discovery_service_server::AggregatedDiscoveryService for Ads {
    type StreamAggregatedResourcesStream = SotwStream;
    type DeltaAggregatedResourcesStream = DeltaStream;

    async fn stream_aggregated_resources(
        &self,
        _request: tonic::Request<tonic::Streaming<discovery::DiscoveryRequest>>,
    ) -> Result<tonic::Response<SotwStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("delta only"))
    }

    async fn delta_aggregated_resources(
        &self,
        request: tonic::Request<tonic::Streaming<discovery::DeltaDiscoveryRequest>>,
    ) -> Result<tonic::Response<DeltaStream>, tonic::Status> {
        use tokio_stream::StreamExt as _;
        let out = request.into_inner().map(|req| {
            let req = req?;
            let wl = workload::Workload {
                uid: "c//v1/Pod/ns/a".into(),
                ..Default::default()
            };
            let addr = workload::Address {
                r#type: Some(workload::address::Type::Workload(wl)),
            };
            Ok(discovery::DeltaDiscoveryResponse {
                type_url: req.type_url,
                nonce: "1".into(),
                resources: vec![discovery::Resource {
                    name: "c//v1/Pod/ns/a".into(),
                    version: "1".into(),
                    resource: Some(
                        prost_types::Any::from_msg(&addr)
                            .map_err(|e| tonic::Status::internal(e.to_string()))?,
                    ),
                    ..Default::default()
                }],
                ..Default::default()
            })
        });
        Ok(tonic::Response::new(Box::pin(out)))
    }
}

#[tokio::test]
async fn grpc_loopback_round_trip() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ca::istio_certificate_service_server::IstioCertificateServiceServer::new(Ca))
            .add_service(
                discovery::aggregated_discovery_service_server::AggregatedDiscoveryServiceServer::new(
                    Ads,
                ),
            )
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let endpoint = format!("http://{addr}");
    let mut ca_client =
        ca::istio_certificate_service_client::IstioCertificateServiceClient::connect(
            endpoint.clone(),
        )
        .await
        .expect("connect ca");
    let chain = ca_client
        .create_certificate(ca::IstioCertificateRequest {
            csr: "x".into(),
            validity_duration: 3600,
            metadata: None,
        })
        .await
        .expect("create_certificate")
        .into_inner()
        .cert_chain;
    assert_eq!(chain, ["leaf-for-x", "root"]);

    let mut ads =
        discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient::connect(
            endpoint,
        )
        .await
        .expect("connect ads");
    let first = discovery::DeltaDiscoveryRequest {
        type_url: proto::ADDRESS_TYPE_URL.into(),
        ..Default::default()
    };
    let mut responses = ads
        .delta_aggregated_resources(tokio_stream::iter(vec![first]))
        .await
        .expect("delta ads")
        .into_inner();
    let resp = responses
        .message()
        .await
        .expect("stream")
        .expect("one response");
    assert_eq!(resp.type_url, proto::ADDRESS_TYPE_URL);
    let any = resp.resources[0].resource.as_ref().expect("resource");
    assert_eq!(any.type_url, proto::ADDRESS_TYPE_URL);
    let addr = workload::Address::decode(any.value.as_slice()).expect("decode");
    assert!(matches!(
        addr.r#type,
        Some(workload::address::Type::Workload(ref w)) if w.uid == "c//v1/Pod/ns/a"
    ));

    server.abort();
}
