//! The client's decoding, ACK/NACK and subscription logic, without a server.

use prost::Message;
use proto::discovery::Resource;

use super::*;
use crate::model::{PolicyScope, Workload};
use crate::xds::{BackoffConfig, ClientCert, XdsTls, ADDRESSES, AUTHORIZATIONS};

fn resource(name: &str, version: &str, type_url: &str, value: Vec<u8>) -> Resource {
    Resource {
        name: name.into(),
        version: version.into(),
        resource: Some(prost_types::Any {
            type_url: type_url.into(),
            value,
        }),
        ..Default::default()
    }
}

fn workload_resource(uid: &str, ip: &str) -> Resource {
    let w: Workload = crate::model::workload::tests::sample(uid, ip);
    let wire = proto::workload::Address::from(&w);
    resource(uid, "v1", proto::ADDRESS_TYPE_URL, wire.encode_to_vec())
}

fn response(type_url: &str, resources: Vec<Resource>, removed: &[&str]) -> DeltaDiscoveryResponse {
    DeltaDiscoveryResponse {
        type_url: type_url.into(),
        nonce: "n1".into(),
        resources,
        removed_resources: removed.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

#[test]
fn accepts_a_valid_response_with_adds_and_removals() {
    let accepted = check(
        ADDRESSES,
        response(
            proto::ADDRESS_TYPE_URL,
            vec![
                workload_resource("w1", "10.0.0.1"),
                workload_resource("w2", "10.0.0.2"),
            ],
            &["gone"],
        ),
    )
    .expect("valid");
    assert_eq!(accepted.batch.len(), 3);
    assert_eq!(
        accepted.added,
        [("w1".into(), "v1".into()), ("w2".into(), "v1".into())]
    );
    assert_eq!(accepted.removed, ["gone"]);
}

#[test]
fn one_bad_resource_rejects_the_whole_response_naming_each() {
    let mut bad_ip =
        proto::workload::Address::from(&crate::model::workload::tests::sample("w3", "10.0.0.3"));
    if let Some(proto::workload::address::Type::Workload(w)) = bad_ip.r#type.as_mut() {
        w.addresses = vec![vec![1, 2, 3]];
    }
    let rejects = check(
        ADDRESSES,
        response(
            proto::ADDRESS_TYPE_URL,
            vec![
                workload_resource("w1", "10.0.0.1"),
                resource(
                    "garbage",
                    "v1",
                    proto::ADDRESS_TYPE_URL,
                    vec![0xff, 0xff, 0xff],
                ),
                resource("w3", "v1", proto::ADDRESS_TYPE_URL, bad_ip.encode_to_vec()),
                workload_resource("w4", "10.0.0.4"),
                resource("wrong-type", "v1", proto::AUTHORIZATION_TYPE_URL, vec![]),
                Resource {
                    name: "empty".into(),
                    ..Default::default()
                },
            ],
            &[],
        ),
    )
    .expect_err("invalid");
    assert_eq!(rejects.len(), 4, "{rejects:?}");
    assert!(rejects[0].starts_with("resource \"garbage\": cannot be decoded"));
    assert!(
        rejects[1].contains("\"w3\": is invalid: workload.addresses[0]"),
        "{}",
        rejects[1]
    );
    assert!(rejects[2].contains("\"wrong-type\": has type"));
    assert!(rejects[3].contains("\"empty\": has no body"));
}

#[test]
fn names_must_match_content() {
    let w = crate::model::workload::tests::sample("real-uid", "10.0.0.1");
    let r = resource(
        "other-name",
        "v1",
        proto::ADDRESS_TYPE_URL,
        proto::workload::Address::from(&w).encode_to_vec(),
    );
    let rejects =
        check(ADDRESSES, response(proto::ADDRESS_TYPE_URL, vec![r], &[])).expect_err("mismatch");
    assert!(
        rejects[0].contains("its content is named \"real-uid\""),
        "{rejects:?}"
    );

    let p = crate::model::policy::tests::sample("ns", "p", PolicyScope::Global);
    let wire = proto::security::Authorization::from(&p).encode_to_vec();
    let ok = resource("ns/p", "7", proto::AUTHORIZATION_TYPE_URL, wire);
    let accepted = check(
        AUTHORIZATIONS,
        response(proto::AUTHORIZATION_TYPE_URL, vec![ok], &["ns/old"]),
    )
    .expect("valid policy");
    assert_eq!(accepted.added, [("ns/p".into(), "7".into())]);
}

#[test]
fn nack_message_is_capped() {
    let rejects: Vec<String> = (0..15).map(|i| format!("r{i}")).collect();
    let message = nack_message(&rejects);
    assert!(message.starts_with("r0; r1"));
    assert!(message.ends_with("; and 5 more"));
}

fn config(address: &str, transport: XdsTransport, token: Option<BearerToken>) -> XdsConfig {
    XdsConfig {
        address: address.into(),
        transport,
        token,
        node: NodeInfo::default(),
        backoff: BackoffConfig::default(),
        extra_types: Vec::new(),
    }
}

#[tokio::test]
async fn refuses_configs_that_would_leak_or_cannot_work() {
    let ca = crate::ca::CertificateAuthority::generate_root("cluster.local").expect("ca");
    let tls = |root: &str| {
        XdsTransport::Tls(XdsTls {
            root_cert_pem: root.into(),
            server_name: "istiod".into(),
            client_cert: None,
        })
    };
    let static_token = |t: &str| Some(BearerToken::Static(t.into()));
    let store = Store::new;
    assert!(matches!(
        XdsClient::new(config("http://x:15012", tls(ca.root_pem()), None), store()),
        Err(XdsError::Address { .. })
    ));
    assert!(matches!(
        XdsClient::new(
            config("https://x:15012", XdsTransport::Plaintext, None),
            store()
        ),
        Err(XdsError::Address { .. })
    ));
    assert!(matches!(
        XdsClient::new(
            config("http://x:15012", XdsTransport::Plaintext, static_token("t")),
            store()
        ),
        Err(XdsError::Token(_))
    ));
    assert!(matches!(
        XdsClient::new(config("https://x:15012", tls("not pem"), None), store()),
        Err(XdsError::Root(_))
    ));
    assert!(matches!(
        XdsClient::new(
            config("https://x:15012", tls(ca.root_pem()), static_token("a b")),
            store()
        ),
        Err(XdsError::Token(_))
    ));
    let with_bad_client_cert = XdsTransport::Tls(XdsTls {
        root_cert_pem: ca.root_pem().into(),
        server_name: "istiod".into(),
        client_cert: Some(ClientCert {
            chain_pem: "nope".into(),
            key_pem: "nope".into(),
        }),
    });
    assert!(matches!(
        XdsClient::new(
            config("https://x:15012", with_bad_client_cert, None),
            store()
        ),
        Err(XdsError::ClientCert(_))
    ));
    assert!(XdsClient::new(
        config("https://x:15012", tls(ca.root_pem()), static_token("t")),
        store()
    )
    .is_ok());
    assert!(XdsClient::new(
        config("http://127.0.0.1:1", XdsTransport::Plaintext, None),
        store()
    )
    .is_ok());
}

#[test]
fn unsubscribed_types_are_nacked_and_status_tracks_acks() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let _guard = runtime.enter();
    let store = Store::new();
    let mut client = XdsClient::new(
        config("http://127.0.0.1:1", XdsTransport::Plaintext, None),
        store.clone(),
    )
    .expect("client");
    let status = client.status();

    let reply = client.handle(response("type.googleapis.com/other", vec![], &[]));
    assert_eq!(reply.error_detail.map(|s| s.code), Some(NACK_CODE));

    let reply = client.handle(response(
        proto::ADDRESS_TYPE_URL,
        vec![workload_resource("w1", "10.0.0.1")],
        &[],
    ));
    assert_eq!(reply.response_nonce, "n1");
    assert!(reply.error_detail.is_none());
    assert!(store.workload("w1").is_some());
    let initial = client.initial_request(proto::ADDRESS_TYPE_URL);
    assert_eq!(
        initial
            .initial_resource_versions
            .get("w1")
            .map(String::as_str),
        Some("v1")
    );
    assert!(initial.resource_names_subscribe.is_empty());
    let s = status.borrow().clone();
    assert_eq!(s.types[proto::ADDRESS_TYPE_URL].acks, 1);
    assert_eq!(s.types[proto::ADDRESS_TYPE_URL].resources, 1);
    assert!(!s.is_synced());

    let reply = client.handle(response(proto::ADDRESS_TYPE_URL, vec![], &["w1"]));
    assert!(reply.error_detail.is_none());
    assert!(store.workload("w1").is_none());
    assert!(client
        .initial_request(proto::ADDRESS_TYPE_URL)
        .initial_resource_versions
        .is_empty());
}

fn l7_policy_resource(ns: &str, name: &str) -> Resource {
    let wire = proto::waypoint::L7Policy {
        name: name.into(),
        namespace: ns.into(),
        action: proto::waypoint::l7_policy::Action::Deny as i32,
        rules: vec![proto::waypoint::l7_policy::Rule {
            to: vec![proto::waypoint::l7_policy::Operation {
                paths: vec!["/admin*".into()],
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    resource(
        &format!("{ns}/{name}"),
        "v1",
        proto::L7_POLICY_TYPE_URL,
        wire.encode_to_vec(),
    )
}

#[test]
fn waypoint_types_are_opt_in_and_land_in_the_store() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let _guard = runtime.enter();
    let plain = || config("http://127.0.0.1:1", XdsTransport::Plaintext, None);

    // A node tunnel (no extra types) refuses L7 policies: it never subscribed.
    let store = Store::new();
    let mut ztunnel = XdsClient::new(plain(), store.clone()).expect("client");
    let reply = ztunnel.handle(response(
        proto::L7_POLICY_TYPE_URL,
        vec![l7_policy_resource("shop", "deny-admin")],
        &[],
    ));
    assert_eq!(reply.error_detail.map(|s| s.code), Some(NACK_CODE));
    assert!(store.l7_policy("shop/deny-admin").is_none());
    assert_eq!(ztunnel.types, TYPES);

    // A waypoint subscribes to them, applies them, and counts them for readiness.
    let store = Store::new();
    let mut cfg = plain();
    cfg.extra_types = crate::xds::WAYPOINT_POLICY_TYPES.to_vec();
    let mut waypoint = XdsClient::new(cfg, store.clone()).expect("client");
    assert_eq!(waypoint.types.len(), 4);
    let status = waypoint.status();
    let reply = waypoint.handle(response(
        proto::L7_POLICY_TYPE_URL,
        vec![l7_policy_resource("shop", "deny-admin")],
        &[],
    ));
    assert!(reply.error_detail.is_none(), "{:?}", reply.error_detail);
    assert!(store.l7_policy("shop/deny-admin").is_some());
    for t in [proto::ADDRESS_TYPE_URL, proto::AUTHORIZATION_TYPE_URL] {
        waypoint.handle(response(t, vec![], &[]));
    }
    assert!(!status.borrow().is_synced(), "RequestAuthn not ACKed yet");
    waypoint.handle(response(proto::REQUEST_AUTHN_TYPE_URL, vec![], &[]));
    assert!(status.borrow().is_synced());

    let reply = waypoint.handle(response(
        proto::L7_POLICY_TYPE_URL,
        vec![],
        &["shop/deny-admin"],
    ));
    assert!(reply.error_detail.is_none());
    assert!(store.l7_policy("shop/deny-admin").is_none());

    // A bad L7 policy is NACKed naming the field.
    let mut bad = proto::waypoint::L7Policy {
        name: "p".into(),
        namespace: "shop".into(),
        ..Default::default()
    };
    bad.rules.push(proto::waypoint::l7_policy::Rule {
        when: vec![proto::waypoint::l7_policy::Condition {
            key: "request.nope".into(),
            values: vec!["x".into()],
            not_values: vec![],
        }],
        ..Default::default()
    });
    let r = resource(
        "shop/p",
        "v2",
        proto::L7_POLICY_TYPE_URL,
        bad.encode_to_vec(),
    );
    let reply = waypoint.handle(response(proto::L7_POLICY_TYPE_URL, vec![r], &[]));
    let message = reply.error_detail.expect("nack").message;
    assert!(message.contains("rules[0].when[0].key"), "{message}");
}
