use http::HeaderValue;
use mesh::store::Batch;
use proto::workload as pb;

use super::*;

const KEY: &str = "shop/web.shop.svc.cluster.local";

fn workload(name: &str, ip: [u8; 4], services: &[&str], waypoint: Option<[u8; 4]>) -> Workload {
    Workload::try_from(pb::Workload {
        uid: format!("Kubernetes//v1/Pod/shop/{name}"),
        name: name.into(),
        namespace: "shop".into(),
        addresses: vec![ip.to_vec()],
        tunnel_protocol: pb::TunnelProtocol::Hbone as i32,
        service_account: name.into(),
        waypoint: waypoint.map(gateway),
        services: services
            .iter()
            .map(|k| {
                (
                    k.to_string(),
                    pb::PortList {
                        ports: vec![pb::Port {
                            service_port: 80,
                            target_port: 8080,
                            app_protocol: 0,
                        }],
                    },
                )
            })
            .collect(),
        ..Default::default()
    })
    .expect("workload")
}

fn gateway(ip: [u8; 4]) -> pb::GatewayAddress {
    pb::GatewayAddress {
        destination: Some(pb::gateway_address::Destination::Address(
            pb::NetworkAddress {
                network: String::new(),
                address: ip.to_vec(),
            },
        )),
        hbone_mtls_port: 15008,
    }
}

fn service(waypoint: Option<[u8; 4]>) -> mesh::model::Service {
    mesh::model::Service::try_from(pb::Service {
        name: "web".into(),
        namespace: "shop".into(),
        hostname: "web.shop.svc.cluster.local".into(),
        addresses: vec![pb::NetworkAddress {
            network: String::new(),
            address: vec![10, 96, 0, 10],
        }],
        ports: vec![pb::Port {
            service_port: 80,
            target_port: 8080,
            app_protocol: 0,
        }],
        waypoint: waypoint.map(gateway),
        ..Default::default()
    })
    .expect("service")
}

fn store(workloads: Vec<Workload>, services: Vec<mesh::model::Service>) -> Store {
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

fn id(sa: &str) -> Identity {
    format!("spiffe://cluster.local/ns/shop/sa/{sa}")
        .parse()
        .expect("id")
}

#[test]
fn a_pod_without_a_waypoint_takes_anyone_directly() {
    let web = workload("web", [10, 12, 0, 2], &[KEY], None);
    let s = store(vec![web.clone()], vec![service(None)]);
    let front = Front::of(&s, &web);
    assert!(front.is_empty());
    assert_eq!(
        front.judge(&id("client"), &HeaderMap::new()),
        Origin::Direct
    );
}

#[test]
fn a_pod_behind_its_services_waypoint_refuses_everyone_but_the_waypoint() {
    let web = workload("web", [10, 12, 0, 2], &[KEY], None);
    let wp = workload("waypoint", [10, 11, 0, 50], &[], None);
    let s = store(
        vec![web.clone(), wp.clone()],
        vec![service(Some([10, 11, 0, 50]))],
    );
    let front = Front::of(&s, &web);
    assert_eq!(
        front.judge(&id("client"), &HeaderMap::new()),
        Origin::Bypass
    );

    let mut headers = HeaderMap::new();
    headers.insert(
        "x-forwarded-client-cert",
        HeaderValue::from_static("URI=spiffe://cluster.local/ns/shop/sa/client"),
    );
    headers.insert(
        "forwarded",
        HeaderValue::from_static("for=\"10.11.0.7:40000\""),
    );
    let origin = front.judge(&id("waypoint"), &headers);
    assert_eq!(
        origin,
        Origin::ViaWaypoint {
            via: id("waypoint"),
            client: Some(id("client")),
            addr: Some("10.11.0.7:40000".parse().expect("addr")),
        }
    );
    assert_eq!(
        source_ip(&origin, "10.11.0.50".parse().expect("ip")),
        "10.11.0.7".parse::<IpAddr>().expect("ip")
    );
}

#[test]
fn a_pod_with_its_own_waypoint_is_guarded_by_it() {
    let web = workload("web", [10, 12, 0, 2], &[], Some([10, 11, 0, 50]));
    let wp = workload("waypoint", [10, 11, 0, 50], &[], None);
    let s = store(vec![web.clone(), wp], vec![]);
    let front = Front::of(&s, &web);
    assert_eq!(
        front.judge(&id("client"), &HeaderMap::new()),
        Origin::Bypass
    );
    assert!(matches!(
        front.judge(&id("waypoint"), &HeaderMap::new()),
        Origin::ViaWaypoint { client: None, .. }
    ));
}

#[test]
fn the_waypoint_pod_itself_is_not_behind_itself() {
    // A namespace-wide binding labels the waypoint's own service too; it must stay reachable.
    let wp = workload("waypoint", [10, 11, 0, 50], &[], Some([10, 11, 0, 50]));
    let s = store(vec![wp.clone()], vec![]);
    assert!(Front::of(&s, &wp).is_empty());
}
