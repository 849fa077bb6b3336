//! Tests of the translation for waypoints: scopes, actions, rules and RequestAuthentications.

use mesh::l7authz::{evaluate, L7Action, L7Request, L7Scope, L7Target, WaypointContext};

use crate::translate::test_support::{run, warnings_about};
use crate::translate::{resources, waypoint_resources};

const WAYPOINT: &str = "---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: waypoint, namespace: shop, labels: {istio.io/waypoint-for: service}}\nspec:\n  gatewayClassName: istio-waypoint\n  listeners: [{name: mesh, port: 15008, protocol: HBONE}]\n";

/// The P-256 public key of RFC 7517 appendix A.1.
const JWKS: &str = r#"{"keys":[{"kty":"EC","crv":"P-256","x":"MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4","y":"4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM"}]}"#;

fn ap(ns: &str, name: &str, spec: &str) -> String {
    format!("---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}\n")
}

fn target(scope: L7Scope, gateways: &[&str], services: &[&str]) -> L7Target {
    L7Target {
        scope,
        gateways: gateways.iter().map(|s| s.to_string()).collect(),
        services: services.iter().map(|s| s.to_string()).collect(),
    }
}

#[test]
fn scopes_follow_target_refs_the_root_namespace_and_waypoint_namespaces() {
    let t = run(&[
        WAYPOINT.to_string(),
        ap("shop", "on-gateway", "  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]\n  action: DENY\n  rules: [{to: [{operation: {paths: [/admin*]}}]}]"),
        ap("shop", "on-service", "  targetRefs: [{kind: Service, group: \"\", name: web}]\n  rules: [{to: [{operation: {methods: [GET]}}]}]"),
        ap("shop", "ns-wide", "  action: DENY\n  rules: [{from: [{source: {namespaces: [evil]}}]}]"),
        ap("shop", "selected", "  selector: {matchLabels: {app: web}}"),
        ap("istio-system", "mesh-wide", "  action: DENY\n  rules: [{to: [{operation: {methods: [TRACE]}}]}]"),
        ap("bank", "no-waypoint-here", "  action: DENY"),
    ]
    .concat());
    let got: Vec<(String, L7Target)> = t
        .l7_policies
        .iter()
        .map(|p| (p.key(), p.target.clone()))
        .collect();
    assert_eq!(
        got,
        [
            (
                "istio-system/mesh-wide".to_string(),
                target(L7Scope::Root, &[], &[])
            ),
            (
                "shop/ns-wide".to_string(),
                target(L7Scope::Waypoint, &[], &[])
            ),
            (
                "shop/on-gateway".to_string(),
                target(L7Scope::Waypoint, &["waypoint"], &[])
            ),
            (
                "shop/on-service".to_string(),
                target(L7Scope::Service, &[], &["shop/web.shop.svc.cluster.local"])
            ),
        ]
    );
    // The L4 translation is unchanged: targeted policies never reach ztunnel.
    let l4: Vec<String> = t.policies.iter().map(|p| p.key()).collect();
    assert_eq!(
        l4,
        [
            "bank/no-waypoint-here",
            "istio-system/mesh-wide",
            "shop/ns-wide",
            "shop/selected"
        ]
    );
}

#[test]
fn audit_and_dry_run_translate_and_custom_is_skipped_with_a_warning() {
    let t = run(&[
        WAYPOINT.to_string(),
        ap("shop", "audit", "  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]\n  action: AUDIT\n  rules: [{}]"),
        "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: dry, namespace: shop, annotations: {istio.io/dry-run: \"true\"}}\nspec:\n  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]\n  action: DENY\n".to_string(),
        ap("shop", "ext", "  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]\n  action: CUSTOM\n  provider: {name: opa}"),
    ]
    .concat());
    let actions: Vec<(String, L7Action, bool)> = t
        .l7_policies
        .iter()
        .map(|p| (p.key(), p.action, p.dry_run))
        .collect();
    assert_eq!(
        actions,
        [
            ("shop/audit".to_string(), L7Action::Audit, false),
            ("shop/dry".to_string(), L7Action::Deny, true),
        ]
    );
    let w = warnings_about(&t, "AuthorizationPolicy shop/ext");
    assert!(w.iter().any(|m| m.contains("CUSTOM")), "{w:?}");
}

#[test]
fn every_rule_field_is_carried_and_judged_by_the_waypoint_evaluator() {
    let t = run(&[
        WAYPOINT.to_string(),
        ap("shop", "allow-get", "  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]\n  rules:\n  - from: [{source: {principals: [\"cluster.local/ns/shop/*\"], serviceAccounts: [client], notIpBlocks: [192.168.0.0/16]}}]\n    to: [{operation: {methods: [GET], paths: [/api/*], ports: [\"8080\"], hosts: [\"Web.shop*\"]}}]\n    when: [{key: \"request.headers[x-env]\", values: [prod]}]"),
    ]
    .concat());
    let (policies, _) = waypoint_resources(&t);
    let wire = &policies["shop/allow-get"];
    assert_eq!(wire.rules[0].from[0].service_accounts, ["shop/client"]);
    // Hosts travel lower-cased: they compare case-insensitively.
    assert_eq!(wire.rules[0].to[0].hosts, ["web.shop*"]);
    let mut headers = http::HeaderMap::new();
    headers.insert("x-env", "prod".parse().expect("value"));
    let mut request = L7Request {
        source_identity: Some(mesh::Identity::new("cluster.local", "shop", "client").expect("id")),
        source_ip: "10.0.0.5".parse().expect("ip"),
        remote_ip: None,
        destination_ip: None,
        destination_port: 8080,
        host: "web.shop.svc.cluster.local".into(),
        method: "GET".into(),
        path: "/api/items".into(),
        headers,
        auth: None,
    };
    assert!(evaluate(&t.l7_policies, &request).allowed);
    request.method = "DELETE".into();
    let d = evaluate(&t.l7_policies, &request);
    assert!(!d.allowed);
    assert!(d.to_string().contains("shop/allow-get"), "{d}");
}

#[test]
fn unknown_when_keys_fail_closed() {
    let t = run(&[
        WAYPOINT.to_string(),
        ap("shop", "allow", "  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]\n  rules:\n  - when: [{key: connection.sni, values: [x]}]\n  - to: [{operation: {methods: [GET]}}]"),
        ap("shop", "deny", "  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]\n  action: DENY\n  rules:\n  - to: [{operation: {methods: [POST]}}]\n    when: [{key: connection.sni, values: [x]}]"),
    ]
    .concat());
    let allow = &t.l7_policies[0];
    assert_eq!(allow.key(), "shop/allow");
    assert_eq!(
        allow.rules.len(),
        1,
        "the ALLOW rule needing connection.sni is dropped"
    );
    let deny = &t.l7_policies[1];
    assert_eq!(deny.rules.len(), 1);
    assert!(
        deny.rules[0].when.is_empty(),
        "the DENY rule is kept without it"
    );
    assert_eq!(
        warnings_about(&t, "AuthorizationPolicy shop/allow").len(),
        1
    );
    assert_eq!(warnings_about(&t, "AuthorizationPolicy shop/deny").len(), 1);
}

#[test]
fn odd_targets_are_reported() {
    let t = run(&[
        WAYPOINT.to_string(),
        ap("shop", "mixed", "  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}, {kind: Service, name: web}]"),
        ap("shop", "elsewhere", "  targetRefs: [{kind: Service, name: web, namespace: bank}]"),
        ap("shop", "class", "  targetRefs: [{kind: GatewayClass, group: gateway.networking.k8s.io, name: istio-waypoint}]"),
        ap("shop", "not-yet", "  targetRefs: [{kind: Gateway, name: other}]"),
    ]
    .concat());
    let keys: Vec<String> = t.l7_policies.iter().map(|p| p.key()).collect();
    assert_eq!(keys, ["shop/mixed", "shop/not-yet"]);
    assert_eq!(
        t.l7_policies[1].target,
        target(L7Scope::Waypoint, &["other"], &[])
    );
    let w = warnings_about(&t, "AuthorizationPolicy shop/not-yet");
    assert!(
        w[0].contains("Gateway shop/other is not a waypoint"),
        "{w:?}"
    );
    assert_eq!(
        t.l7_policies[0].target,
        target(L7Scope::Waypoint, &["waypoint"], &[])
    );
    for name in ["mixed", "elsewhere", "class"] {
        let w = warnings_about(&t, &format!("AuthorizationPolicy shop/{name}"));
        assert!(!w.is_empty(), "{name}");
    }
}

#[test]
fn request_authentications_become_request_authns_with_their_scope() {
    let ra = |ns: &str, name: &str, spec: &str| {
        format!("---\napiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}\n")
    };
    let rules = format!("  jwtRules: [{{issuer: https://idp, audiences: [shop], jwks: '{JWKS}', fromHeaders: [{{name: x-jwt}}], outputClaimToHeaders: [{{header: x-sub, claim: sub}}]}}]");
    let t = run(&[
        WAYPOINT.to_string(),
        ra(
            "shop",
            "on-service",
            &format!("  targetRefs: [{{kind: Service, name: web}}]\n{rules}"),
        ),
        ra("istio-system", "mesh", &rules),
        ra(
            "shop",
            "selected",
            &format!("  selector: {{matchLabels: {{app: web}}}}\n{rules}"),
        ),
    ]
    .concat());
    let keys: Vec<String> = t.request_authns.iter().map(|a| a.key()).collect();
    assert_eq!(keys, ["istio-system/mesh", "shop/on-service"]);
    let on_service = &t.request_authns[1];
    let at = WaypointContext {
        namespace: "shop",
        name: "waypoint",
        service: Some("shop/web.shop.svc.cluster.local"),
    };
    assert!(on_service.applies(&at));
    let rule = &on_service.jwt_rules[0];
    assert_eq!(rule.issuer, "https://idp");
    assert_eq!(rule.from_headers[0].name, "x-jwt");
    assert_eq!(rule.output_claim_to_headers[0].claim, "sub");
    let (_, authns) = waypoint_resources(&t);
    assert_eq!(authns.len(), 2);
    let (_, authorizations) = resources(&t);
    assert!(authorizations.is_empty(), "nothing for ztunnel");
}
