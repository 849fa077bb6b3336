#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use mesh::model::{
    Clause, HealthStatus, Match, NetworkMode, Policy, PolicyScope, Rule, Service, StringMatch,
    WorkloadType,
};
use mesh::store::Batch;
use serde_json::json;

use super::*;

/// The L4 check of a direct connection under `dump`.
fn check(
    dump: &serde_json::Value,
    from: &PodRef,
    to: &PodRef,
    port: u16,
) -> anyhow::Result<Report> {
    super::check(&store_of(dump)?, from, to, port, None)
}

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

// ---------------------------------------------------------------- through a waypoint

const WEB_KEY: &str = "shop/web.shop.svc.cluster.local";

fn service(name: &str, vip: &str, port: u16, target: u16, waypoint: bool) -> Service {
    use mesh::model::{
        AppProtocol, GatewayAddress, GatewayDestination, IpFamilies, NamespacedHostname,
        NetworkAddress, PortMapping,
    };
    Service {
        name: name.into(),
        namespace: "shop".into(),
        hostname: format!("{name}.shop.svc.cluster.local"),
        vips: vec![NetworkAddress {
            network: String::new(),
            ip: vip.parse().unwrap(),
        }],
        ports: vec![PortMapping {
            service_port: port,
            target_port: target,
            app_protocol: AppProtocol::Http11,
        }],
        subject_alt_names: vec![],
        waypoint: waypoint.then(|| GatewayAddress {
            destination: GatewayDestination::Hostname(NamespacedHostname {
                namespace: "shop".into(),
                hostname: "waypoint.shop.svc.cluster.local".into(),
            }),
            hbone_mtls_port: 15008,
        }),
        load_balancing: None,
        ip_families: IpFamilies::Ipv4Only,
        canonical: true,
        ingress_use_waypoint: false,
    }
}

/// Namespace `shop`: `client` (n1), `web` (n2) behind Service `web` (80 -> 8080) whose
/// waypoint is `shop/waypoint` (its pod on n2, Service on 15008); plus `policies`.
fn waypoint_store(policies: Vec<Policy>, l7: Vec<mesh::l7authz::L7Policy>) -> Store {
    use mesh::model::{AppProtocol, PortMapping};
    let mapping = |service_port, target_port| PortMapping {
        service_port,
        target_port,
        app_protocol: AppProtocol::Http11,
    };
    let mut web = workload("shop", "web", "web", "10.244.2.5", true);
    web.node = "n2".into();
    web.services.insert(WEB_KEY.into(), vec![mapping(80, 8080)]);
    let mut wp = workload("shop", "waypoint-abc", "waypoint", "10.244.2.9", true);
    wp.node = "n2".into();
    wp.services.insert(
        "shop/waypoint.shop.svc.cluster.local".into(),
        vec![mapping(15008, 15008)],
    );
    let store = Store::new();
    let mut batch = Batch::new();
    batch
        .upsert_workload(workload("shop", "client", "client", "10.244.1.2", true))
        .upsert_workload(workload("legacy", "plain", "default", "10.244.1.4", false))
        .upsert_workload(web)
        .upsert_workload(wp)
        .upsert_service(service("web", "10.96.0.10", 80, 8080, true))
        .upsert_service(service("waypoint", "10.96.0.20", 15008, 15008, false));
    for p in policies {
        batch.upsert_policy(p);
    }
    for p in l7 {
        batch.upsert_l7_policy(p);
    }
    store.apply(batch);
    store
}

fn shop_client() -> PodRef {
    pod("shop", "client", "10.244.1.2")
}

fn naming_sa(key: &str, sa: &str) -> Policy {
    policy(
        key,
        PolicyScope::Namespace,
        PolicyAction::Allow,
        vec![Match {
            principals: vec![StringMatch::Exact(format!("cluster.local/ns/shop/sa/{sa}"))],
            ..Match::default()
        }],
    )
}

fn deny_admin() -> mesh::l7authz::L7Policy {
    use mesh::l7authz::{L7Action, L7Operation, L7Policy, L7Rule, L7Scope, L7Target};
    L7Policy {
        name: "no-admin".into(),
        namespace: "shop".into(),
        target: L7Target {
            scope: L7Scope::Service,
            gateways: vec![],
            services: vec![WEB_KEY.into()],
        },
        action: L7Action::Deny,
        dry_run: false,
        rules: vec![L7Rule {
            to: vec![L7Operation {
                paths: vec![StringMatch::Prefix("/admin".into())],
                ..L7Operation::default()
            }],
            ..L7Rule::default()
        }],
    }
}

fn get(path: &str) -> waypoint::HttpRequest {
    waypoint::HttpRequest {
        method: "GET".into(),
        path: path.into(),
        host: None,
        headers: vec![("x-trace".into(), "1".into())],
    }
}

#[test]
fn a_service_with_a_waypoint_routes_through_it_to_its_endpoints_target_port() {
    let store = waypoint_store(vec![], vec![]);
    let route = service::route(&store, &shop_client(), "shop", "web", 80).unwrap();
    assert_eq!(route.key, WEB_KEY);
    assert_eq!(route.vip, Some("10.96.0.10".parse().unwrap()));
    let hop = route.waypoint.expect("the service's waypoint");
    assert_eq!(hop.to_string(), "shop/waypoint");
    assert_eq!(
        hop.identity.to_string(),
        "spiffe://cluster.local/ns/shop/sa/waypoint"
    );
    assert_eq!(route.endpoints.len(), 1);
    assert_eq!(route.endpoints[0].pod, pod("shop", "web", "10.244.2.5"));
    assert_eq!(route.endpoints[0].node, "n2");
    assert_eq!(route.endpoints[0].port, 8080);
    // A client outside the mesh is not captured: it dials the endpoints directly.
    let plain = pod("legacy", "plain", "10.244.1.4");
    assert!(service::route(&store, &plain, "shop", "web", 80)
        .unwrap()
        .waypoint
        .is_none());
    let err = service::route(&store, &shop_client(), "shop", "web", 81).unwrap_err();
    assert!(
        format!("{err:#}").contains("has no port 81 (it has 80)"),
        "{err:#}"
    );
    assert!(service::route(&store, &shop_client(), "shop", "nope", 80).is_err());
}

#[test]
fn dialling_a_pod_behind_a_waypoint_directly_is_refused_before_policy() {
    let store = waypoint_store(vec![naming_sa("shop/allow-client", "client")], vec![]);
    let web = pod("shop", "web", "10.244.2.5");
    // Only the pod's services have the waypoint: the pod address is dialled directly.
    assert_eq!(pod_hop(&store, &shop_client(), &web).unwrap(), None);
    let report = super::check(&store, &shop_client(), &web, 8080, None).unwrap();
    assert!(!report.allowed, "{report}");
    let text = report.to_string();
    assert!(
        text.starts_with("DENIED: shop/client -> shop/web:8080")
            && text.contains("refused before policy: shop/web is behind waypoint shop/waypoint"),
        "{text}"
    );
    // From outside the mesh it arrives in plaintext and goes on to policy.
    let plain = pod("legacy", "plain", "10.244.1.4");
    let report = super::check(&store, &plain, &web, 8080, None).unwrap();
    assert_eq!(report.refused, None);
}

#[test]
fn through_the_waypoint_an_allow_naming_the_client_or_the_waypoint_allows() {
    let web = pod("shop", "web", "10.244.2.5");
    for sa in ["client", "waypoint"] {
        let store = waypoint_store(vec![naming_sa("shop/allow", sa)], vec![]);
        let hop = service::route(&store, &shop_client(), "shop", "web", 80)
            .unwrap()
            .waypoint
            .unwrap();
        let report = super::check(&store, &shop_client(), &web, 8080, Some(&hop)).unwrap();
        assert!(report.allowed, "ALLOW naming {sa}: {report}");
        assert_eq!(report.decision.reason, allowed_by("shop/allow", 0));
        assert!(
            report.to_string().contains(
                "source: spiffe://cluster.local/ns/shop/sa/client from 10.244.1.2, through \
                 waypoint shop/waypoint (spiffe://cluster.local/ns/shop/sa/waypoint)"
            ),
            "{report}"
        );
    }
    let store = waypoint_store(vec![naming_sa("shop/allow", "someone")], vec![]);
    let hop = service::route(&store, &shop_client(), "shop", "web", 80)
        .unwrap()
        .waypoint
        .unwrap();
    assert!(
        !super::check(&store, &shop_client(), &web, 8080, Some(&hop))
            .unwrap()
            .allowed
    );
}

#[test]
fn the_waypoint_verdict_names_the_deciding_l7_policy_and_rule() {
    let store = waypoint_store(vec![], vec![deny_admin()]);
    let dump = json!({ "config": store.snapshot(), "routes": {} });
    let route = service::route(&store, &shop_client(), "shop", "web", 80).unwrap();
    let hop = route.waypoint.clone().unwrap();
    let client_id = Identity::new("cluster.local", "shop", "client").unwrap();
    let to = "10.96.0.10:80".parse().unwrap();
    let svc = Some((route.key.as_str(), route.hostname.as_str()));
    let judge = |path: &str| {
        waypoint::check(
            &dump,
            &hop,
            svc,
            Some(&client_id),
            shop_client().ip,
            to,
            &get(path),
        )
        .unwrap()
    };
    let denied = judge("/admin/users");
    assert!(!denied.allowed(), "{denied}");
    let text = denied.to_string();
    assert!(
        text.starts_with(
            "DENIED at waypoint shop/waypoint: GET web.shop.svc.cluster.local/admin/users"
        ) && text.contains("decided by: DENY policy shop/no-admin, rule 0")
            && text.contains("L7 policies in scope: shop/no-admin"),
        "{text}"
    );
    let allowed = judge("/");
    assert!(allowed.allowed(), "{allowed}");
    // Addressed to the pod, the service's policy is not in scope.
    let direct = waypoint::check(
        &dump,
        &hop,
        None,
        Some(&client_id),
        shop_client().ip,
        "10.244.2.5:8080".parse().unwrap(),
        &get("/admin"),
    )
    .unwrap();
    assert!(direct.allowed() && direct.policies.is_empty(), "{direct}");
    assert_eq!(direct.host, "10.244.2.5:8080");
}

#[test]
fn request_headers_parse_like_curls() {
    assert_eq!(
        waypoint::HttpRequest::parse_header("X-Trace:  1 ").unwrap(),
        ("X-Trace".into(), "1".into())
    );
    assert!(waypoint::HttpRequest::parse_header("no-colon").is_err());
    assert!(waypoint::HttpRequest::parse_header(": v").is_err());
}
