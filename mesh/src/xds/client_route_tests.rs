//! The optional routes type: subscribed only when asked, applied, NACKed when invalid.

use prost::Message;
use proto::discovery::{DeltaDiscoveryResponse, Resource};
use proto::waypoint as pb;

use super::*;
use crate::xds::{BackoffConfig, ADDRESSES, AUTHORIZATIONS, ROUTES};

const SVC: &str = "shop/reviews.shop.svc.cluster.local";

fn client(extra_types: &[ResourceType], store: &Store) -> Result<XdsClient, XdsError> {
    XdsClient::new(
        XdsConfig {
            address: "http://127.0.0.1:1".into(),
            transport: XdsTransport::Plaintext,
            token: None,
            node: NodeInfo::default(),
            backoff: BackoffConfig::default(),
            extra_types: extra_types.to_vec(),
        },
        store.clone(),
    )
}

fn routes_resource(name: &str, version: &str, routes: &pb::ServiceRoutes) -> Resource {
    Resource {
        name: name.into(),
        version: version.into(),
        resource: Some(prost_types::Any {
            type_url: proto::ROUTES_TYPE_URL.into(),
            value: routes.encode_to_vec(),
        }),
        ..Default::default()
    }
}

fn routes(regex: &str) -> pb::ServiceRoutes {
    pb::ServiceRoutes {
        service: SVC.into(),
        rules: vec![pb::Route {
            name: "r0".into(),
            matches: vec![pb::RouteMatch {
                path: Some(pb::PathMatch {
                    kind: Some(pb::path_match::Kind::Regex(regex.into())),
                }),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn response(resources: Vec<Resource>, removed: &[&str], nonce: &str) -> DeltaDiscoveryResponse {
    DeltaDiscoveryResponse {
        type_url: proto::ROUTES_TYPE_URL.into(),
        nonce: nonce.into(),
        resources,
        removed_resources: removed.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

#[test]
fn routes_are_subscribed_only_when_asked() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let _guard = runtime.enter();
    let store = Store::new();
    let ztunnel = client(&[], &store).expect("client");
    assert_eq!(ztunnel.types, TYPES.to_vec());
    let mut ztunnel = ztunnel;
    let reply = ztunnel.handle(response(
        vec![routes_resource(SVC, "1", &routes("/a"))],
        &[],
        "n1",
    ));
    assert!(reply.error_detail.is_some(), "a node tunnel refuses routes");
    assert!(store.routes(SVC).is_none());

    let waypoint = client(&[ROUTES], &store).expect("client");
    assert_eq!(waypoint.types, vec![ADDRESSES, AUTHORIZATIONS, ROUTES]);
    assert_eq!(
        waypoint.status().borrow().subscribed.len(),
        3,
        "synced waits for the routes too"
    );
}

#[test]
fn an_invalid_route_is_nacked_by_name_and_the_last_good_one_is_kept() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let _guard = runtime.enter();
    let store = Store::new();
    let mut waypoint = client(&[ROUTES], &store).expect("client");

    let reply = waypoint.handle(response(
        vec![routes_resource(SVC, "1", &routes("/a.*"))],
        &[],
        "n1",
    ));
    assert!(reply.error_detail.is_none());
    assert_eq!(reply.response_nonce, "n1");
    let held = store.routes(SVC).expect("applied");

    let reply = waypoint.handle(response(
        vec![routes_resource(SVC, "2", &routes("(broken"))],
        &[],
        "n2",
    ));
    let error = reply.error_detail.expect("NACK").message;
    assert!(
        error.contains(SVC) && error.contains("rules[0].matches[0].path.regex"),
        "{error}"
    );
    assert_eq!(store.routes(SVC), Some(held), "the last good routes stay");
    assert_eq!(
        waypoint
            .initial_request(proto::ROUTES_TYPE_URL)
            .initial_resource_versions
            .get(SVC)
            .map(String::as_str),
        Some("1")
    );

    let reply = waypoint.handle(response(vec![], &[SVC], "n3"));
    assert!(reply.error_detail.is_none());
    assert!(store.routes(SVC).is_none());
}
