#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use mesh::model::{
    Clause, HealthStatus, Match, NetworkMode, Policy, PolicyScope, Rule, StringMatch, WorkloadType,
};
use mesh::store::Batch;
use serde_json::json;

use super::*;

const STRICT: &str = "istio-system/istio_converted_static_strict";

fn workload(ns: &str, name: &str, sa: &str, ip: &str, meshed: bool) -> Workload {
    Workload {
        uid: format!("Kubernetes//v1/Pod/{ns}/{name}"),
        name: name.into(),
        addresses: vec![ip.parse().unwrap()],
        hostname: String::new(),
        network: String::new(),
        tunnel_protocol: if meshed {
            TunnelProtocol::Hbone
        } else {
            TunnelProtocol::None
        },
        identity: Identity::new("cluster.local", ns, sa).unwrap(),
        waypoint: None,
        network_gateway: None,
        node: "n1".into(),
        canonical_name: name.into(),
        canonical_revision: "latest".into(),
        workload_type: WorkloadType::Pod,
        workload_name: name.into(),
        native_tunnel: false,
        application_tunnel: None,
        services: BTreeMap::new(),
        authorization_policies: Vec::new(),
        status: HealthStatus::Healthy,
        cluster_id: "Kubernetes".into(),
        locality: None,
        network_mode: NetworkMode::Standard,
        capacity: 1,
    }
}

fn policy(key: &str, scope: PolicyScope, action: PolicyAction, rules: Vec<Match>) -> Policy {
    let (namespace, name) = key.split_once('/').unwrap();
    Policy {
        name: name.into(),
        namespace: namespace.into(),
        scope,
        action,
        rules: rules
            .into_iter()
            .map(|m| Rule {
                clauses: vec![Clause { matches: vec![m] }],
            })
            .collect(),
        dry_run: false,
    }
}

fn from_namespace(ns: &str) -> Match {
    Match {
        namespaces: vec![StringMatch::Exact(ns.into())],
        ..Match::default()
    }
}

fn on_port(port: u16) -> Match {
    Match {
        destination_ports: vec![port],
        ..Match::default()
    }
}

fn allowed_by(policy: &str, rule: usize) -> DecisionReason {
    DecisionReason::AllowedBy {
        policy: policy.into(),
        rule,
    }
}

fn denied_by(policy: &str, rule: usize) -> DecisionReason {
    DecisionReason::DeniedBy {
        policy: policy.into(),
        rule,
    }
}

fn pod(ns: &str, name: &str, ip: &str) -> PodRef {
    PodRef {
        namespace: ns.into(),
        name: name.into(),
        ip: ip.parse().unwrap(),
    }
}

/// `demo/client` and `other/client` in the mesh, `demo/server` (whose listed policies are
/// `server_policies`) in the mesh, `legacy/plain` known but not enrolled; plus `policies`.
/// Returns a dump shaped like ztunnel's `/config_dump`, from a real store.
fn dump(server_policies: &[&str], policies: Vec<Policy>) -> serde_json::Value {
    let store = Store::new();
    let mut server = workload("demo", "server", "server", "10.244.2.2", true);
    server.authorization_policies = server_policies.iter().map(|s| s.to_string()).collect();
    let mut batch = Batch::new();
    batch
        .upsert_workload(workload("demo", "client", "client", "10.244.1.2", true))
        .upsert_workload(workload("other", "client", "client", "10.244.1.3", true))
        .upsert_workload(workload("legacy", "plain", "default", "10.244.1.4", false))
        .upsert_workload(server);
    for p in policies {
        batch.upsert_policy(p);
    }
    store.apply(batch);
    json!({ "config": store.snapshot(), "pods": [], "certificates": [], "xds": {} })
}

fn client() -> PodRef {
    pod("demo", "client", "10.244.1.2")
}

fn server() -> PodRef {
    pod("demo", "server", "10.244.2.2")
}

fn allow_same_namespace() -> Policy {
    policy(
        "demo/allow-same",
        PolicyScope::Namespace,
        PolicyAction::Allow,
        vec![from_namespace("kube-system"), from_namespace("demo")],
    )
}

#[test]
fn allowed_by_an_allow_policy_names_the_policy_and_rule() {
    let dump = dump(&[], vec![allow_same_namespace()]);
    let report = check(&dump, &client(), &server(), 8080).unwrap();
    assert!(report.allowed);
    assert_eq!(report.decision.reason, allowed_by("demo/allow-same", 1));
    assert_eq!(
        report.source,
        SourcePeer::Mesh("spiffe://cluster.local/ns/demo/sa/client".parse().unwrap())
    );
    let text = report.to_string();
    assert!(
        text.starts_with("ALLOWED: demo/client -> demo/server:8080\n"),
        "{text}"
    );
    assert!(
        text.contains("decided by: ALLOW policy demo/allow-same, rule 1"),
        "{text}"
    );
    assert!(
        text.contains("spiffe://cluster.local/ns/demo/sa/client over HBONE"),
        "{text}"
    );

    // Another namespace matches no rule of the only ALLOW policy.
    let other = pod("other", "client", "10.244.1.3");
    let report = check(&dump, &other, &server(), 8080).unwrap();
    assert!(!report.allowed);
    assert!(matches!(
        report.decision.reason,
        DecisionReason::NoAllowMatched { .. }
    ));
    assert!(
        report
            .to_string()
            .contains("no ALLOW policy matches (checked demo/allow-same)"),
        "{report}"
    );
}

#[test]
fn denied_by_a_deny_policy_even_when_an_allow_matches() {
    let deny = policy(
        "demo/deny-admin",
        PolicyScope::Namespace,
        PolicyAction::Deny,
        vec![on_port(9000)],
    );
    let dump = dump(&[], vec![allow_same_namespace(), deny]);
    let report = check(&dump, &client(), &server(), 9000).unwrap();
    assert!(!report.allowed);
    assert_eq!(report.decision.reason, denied_by("demo/deny-admin", 0));
    let text = report.to_string();
    assert!(
        text.starts_with("DENIED: demo/client -> demo/server:9000"),
        "{text}"
    );
    assert!(
        text.contains("decided by: DENY policy demo/deny-admin, rule 0"),
        "{text}"
    );
    assert!(
        text.contains("policies in scope: demo/allow-same, demo/deny-admin"),
        "{text}"
    );
    // The DENY is about port 9000 only.
    assert!(check(&dump, &client(), &server(), 8080).unwrap().allowed);
}

#[test]
fn no_policy_applies() {
    // A policy of another namespace is not in scope.
    let elsewhere = policy(
        "other/deny-all",
        PolicyScope::Namespace,
        PolicyAction::Deny,
        vec![Match::default()],
    );
    let report = check(&dump(&[], vec![elsewhere]), &client(), &server(), 8080).unwrap();
    assert!(report.allowed);
    assert_eq!(report.decision.reason, DecisionReason::NoPolicies);
    let text = report.to_string();
    assert!(text.contains("no policy applies"), "{text}");
    assert!(text.contains("policies in scope: none"), "{text}");
}

#[test]
fn a_source_outside_the_mesh_is_plaintext_and_denied_under_strict() {
    let strict = policy(
        STRICT,
        PolicyScope::WorkloadSelector,
        PolicyAction::Deny,
        vec![Match {
            not_principals: vec![StringMatch::Presence],
            ..Match::default()
        }],
    );
    let dump = dump(&[STRICT], vec![strict]);

    // Known to the ztunnel, not enrolled.
    let plain = pod("legacy", "plain", "10.244.1.4");
    let report = check(&dump, &plain, &server(), 8080).unwrap();
    assert!(!report.allowed);
    assert_eq!(report.source, SourcePeer::NotEnrolled);
    assert_eq!(report.connection.src_identity, None);
    assert_eq!(report.decision.reason, denied_by(STRICT, 0));
    let text = report.to_string();
    assert!(
        text.contains("decided by: DENY policy istio-system/istio_converted_static_strict, rule 0"),
        "{text}"
    );
    assert!(text.contains("plaintext from 10.244.1.4"), "{text}");

    // Unknown to the ztunnel altogether.
    let stranger = pod("legacy", "stranger", "10.244.9.9");
    let report = check(&dump, &stranger, &server(), 8080).unwrap();
    assert!(!report.allowed);
    assert_eq!(report.source, SourcePeer::Unknown);

    // A meshed client has an identity, so STRICT lets it in.
    assert!(check(&dump, &client(), &server(), 8080).unwrap().allowed);
}

#[test]
fn dry_run_policies_are_shown_but_not_enforced() {
    let mut dry = policy(
        "demo/deny-all-dry",
        PolicyScope::Namespace,
        PolicyAction::Deny,
        vec![Match::default()],
    );
    dry.dry_run = true;
    let report = check(&dump(&[], vec![dry]), &client(), &server(), 8080).unwrap();
    assert!(report.allowed, "a dry-run DENY must not deny");
    let dry_run = report.decision.dry_run.as_ref().expect("dry-run report");
    assert!(!dry_run.allowed);
    assert_eq!(dry_run.policies[0].matched_rule, Some(0));
    let text = report.to_string();
    assert!(text.starts_with("ALLOWED:"), "{text}");
    assert!(
        text.contains("dry-run (not enforced): DENY policy demo/deny-all-dry, rule 0 matches"),
        "{text}"
    );
    assert!(
        text.contains("if dry-run policies were enforced: DENIED, decided by: DENY policy demo/deny-all-dry, rule 0"),
        "{text}"
    );
}

#[test]
fn the_destination_must_be_a_meshed_pod_this_ztunnel_knows() {
    let dump = dump(&[], Vec::new());
    let err = check(&dump, &client(), &pod("demo", "ghost", "10.244.2.9"), 80).unwrap_err();
    assert!(
        err.to_string()
            .contains("demo/ghost (10.244.2.9) is not known to this ztunnel"),
        "{err}"
    );
    // Found by uid but at another address: the config is behind.
    let moved = pod("demo", "server", "10.244.2.99");
    let err = check(&dump, &client(), &moved, 80).unwrap_err();
    assert!(err.to_string().contains("not 10.244.2.99"), "{err}");
    // An address that belongs to another pod does not stand for this one.
    let impostor = pod("demo", "impostor", "10.244.2.2");
    assert!(check(&dump, &client(), &impostor, 80).is_err());

    let plain = pod("legacy", "plain", "10.244.1.4");
    let err = check(&dump, &client(), &plain, 80).unwrap_err();
    assert!(err.to_string().contains("is not in the mesh"), "{err}");

    let err = check(&json!({"pods": []}), &client(), &server(), 80).unwrap_err();
    assert!(err.to_string().contains("no \"config\""), "{err}");
    let err = check(
        &json!({"config": {"version": "x"}}),
        &client(),
        &server(),
        80,
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("not a config store snapshot"),
        "{err}"
    );
}

#[test]
fn a_workload_found_by_uid_of_another_cluster_id() {
    let store = Store::new();
    let mut w = workload("demo", "server", "server", "10.244.2.2", true);
    w.uid = "east//v1/Pod/demo/server".into();
    let mut batch = Batch::new();
    batch.upsert_workload(w);
    store.apply(batch);
    let dump = json!({ "config": store.snapshot() });
    let report = check(&dump, &client(), &server(), 80).unwrap();
    assert_eq!(report.source, SourcePeer::Unknown);
    assert!(report.allowed);
}
