//! Tests of the AuthorizationPolicy translation.

use super::*;
use crate::translate::test_support::{run, warnings_about};

fn cidr(s: &str) -> Cidr {
    s.parse().expect("cidr")
}

fn sa(ns: &str, name: &str) -> ServiceAccountMatch {
    ServiceAccountMatch {
        namespace: ns.into(),
        service_account: name.into(),
    }
}

fn exact(s: &str) -> StringMatch {
    StringMatch::Exact(s.into())
}

/// One policy document in namespace `ns`.
fn ap(ns: &str, name: &str, spec: &str) -> String {
    format!("---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}\n")
}

fn only_policy(yaml: &str) -> (Policy, Vec<String>) {
    let t = run(yaml);
    assert_eq!(t.policies.len(), 1, "{:?}", t.policies);
    let p = t.policies[0].clone();
    let warnings = warnings_about(&t, &format!("AuthorizationPolicy {}", p.key()));
    (p, warnings)
}

#[test]
fn scope_follows_namespace_and_selector_and_target_refs_are_left_to_waypoints() {
    let t = run(&[
        ap("istio-system", "mesh-wide", "  action: DENY"),
        ap("apps", "ns-wide", "  action: ALLOW"),
        ap("apps", "selected", "  selector: {matchLabels: {app: web}}"),
        ap(
            "istio-system",
            "selected-root",
            "  selector: {matchLabels: {app: web}}",
        ),
        ap(
            "apps",
            "for-waypoint",
            "  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: wp}]",
        ),
        ap(
            "apps",
            "for-waypoint-old",
            "  targetRef: {kind: Service, group: \"\", name: web}",
        ),
        // The waypoint the first targeted policy names (its L7 translation wants it).
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: wp, namespace: apps}\nspec: {gatewayClassName: istio-waypoint}\n".to_string(),
    ]
    .concat());
    let scopes: Vec<(String, PolicyScope, PolicyAction)> = t
        .policies
        .iter()
        .map(|p| (p.key(), p.scope, p.action))
        .collect();
    assert_eq!(
        scopes,
        [
            (
                "apps/ns-wide".to_string(),
                PolicyScope::Namespace,
                PolicyAction::Allow
            ),
            (
                "apps/selected".to_string(),
                PolicyScope::WorkloadSelector,
                PolicyAction::Allow
            ),
            (
                "istio-system/mesh-wide".to_string(),
                PolicyScope::Global,
                PolicyAction::Deny
            ),
            (
                "istio-system/selected-root".to_string(),
                PolicyScope::WorkloadSelector,
                PolicyAction::Allow
            ),
        ]
    );
    assert!(t.warnings.is_empty(), "{:?}", t.warnings);
}

#[test]
fn audit_and_custom_are_skipped_and_reported() {
    let t = run(&[
        ap("apps", "audit", "  action: AUDIT\n  rules: [{}]"),
        ap(
            "apps",
            "custom",
            "  action: CUSTOM\n  provider: {name: ext-authz}\n  rules: [{}]",
        ),
    ]
    .concat());
    assert!(t.policies.is_empty());
    assert_eq!(
        warnings_about(&t, "AuthorizationPolicy apps/audit"),
        ["action AUDIT is not enforced by ztunnel (use a waypoint); policy skipped"]
    );
    assert_eq!(
        warnings_about(&t, "AuthorizationPolicy apps/custom").len(),
        1
    );
}

#[test]
fn dry_run_comes_from_the_annotation() {
    let yaml = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: apps, annotations: {istio.io/dry-run: \"true\"}}\nspec: {action: DENY, rules: [{}]}\n";
    let (p, _) = only_policy(yaml);
    assert!(p.dry_run);
    let (p, _) = only_policy(&ap("apps", "q", "  action: DENY"));
    assert!(!p.dry_run);
}

#[test]
fn empty_policies_allow_nothing_or_deny_nothing() {
    // ALLOW with no rules: zero rules, so nothing matches and everything in scope is denied.
    let (allow, warnings) = only_policy(&ap("apps", "allow-nothing", "  {}"));
    assert_eq!(allow.action, PolicyAction::Allow);
    assert!(allow.rules.is_empty());
    assert!(warnings.is_empty());
    // DENY with no rules matches nothing.
    let (deny, _) = only_policy(&ap("apps", "deny-nothing", "  action: DENY"));
    assert!(deny.rules.is_empty());
    // An empty rule matches everything.
    let (allow_all, _) = only_policy(&ap("apps", "allow-all", "  rules: [{}]"));
    assert_eq!(allow_all.rules, [Rule { clauses: vec![] }]);
}

#[test]
fn sources_translate_every_l4_field() {
    let (p, warnings) = only_policy(&ap(
        "apps",
        "from",
        r#"  rules:
  - from:
    - source:
        principals: [cluster.local/ns/a/sa/x, "cluster.local/ns/b/*", "*/sa/y", "*"]
        notPrincipals: [cluster.local/ns/a/sa/z]
        namespaces: [a, "team-*"]
        notNamespaces: [kube-system]
        ipBlocks: [10.0.0.0/8, 192.168.1.7, "fd00::/64"]
        notIpBlocks: [10.1.0.0/16]
        serviceAccounts: [other/sleep, local]
        notServiceAccounts: [x/y]
    - source: {namespaces: [c]}"#,
    ));
    assert!(warnings.is_empty(), "{warnings:?}");
    let expected = Match {
        principals: vec![
            exact("cluster.local/ns/a/sa/x"),
            StringMatch::Prefix("cluster.local/ns/b/".into()),
            StringMatch::Suffix("/sa/y".into()),
            StringMatch::Presence,
        ],
        not_principals: vec![exact("cluster.local/ns/a/sa/z")],
        namespaces: vec![exact("a"), StringMatch::Prefix("team-".into())],
        not_namespaces: vec![exact("kube-system")],
        source_ips: vec![
            cidr("10.0.0.0/8"),
            cidr("192.168.1.7/32"),
            cidr("fd00::/64"),
        ],
        not_source_ips: vec![cidr("10.1.0.0/16")],
        service_accounts: vec![sa("other", "sleep"), sa("apps", "local")],
        not_service_accounts: vec![sa("x", "y")],
        ..Match::default()
    };
    let second = Match {
        namespaces: vec![exact("c")],
        ..Match::default()
    };
    assert_eq!(
        p.rules,
        [Rule {
            clauses: vec![Clause {
                matches: vec![expected, second]
            }]
        }]
    );
}

#[test]
fn operations_and_conditions_are_separate_clauses_anded() {
    let (p, warnings) = only_policy(&ap(
        "apps",
        "to-when",
        r#"  action: DENY
  rules:
  - to:
    - operation: {ports: ["80", "443"]}
    - operation: {notPorts: ["15008"]}
    from:
    - source: {namespaces: [a]}
    when:
    - {key: source.ip, values: [10.0.0.0/8], notValues: [10.0.0.1]}
    - {key: source.namespace, values: [a], notValues: [b]}
    - {key: source.principal, values: ["*"], notValues: [td/ns/a/sa/b]}
    - {key: destination.ip, values: [10.96.0.0/12], notValues: ["fd00::1"]}
    - {key: destination.port, values: ["8080"], notValues: ["9090"]}"#,
    ));
    assert!(warnings.is_empty(), "{warnings:?}");
    let clause = |m: Match| Clause { matches: vec![m] };
    let expected = vec![
        Clause {
            matches: vec![
                Match {
                    destination_ports: vec![80, 443],
                    ..Match::default()
                },
                Match {
                    not_destination_ports: vec![15008],
                    ..Match::default()
                },
            ],
        },
        clause(Match {
            namespaces: vec![exact("a")],
            ..Match::default()
        }),
        clause(Match {
            source_ips: vec![cidr("10.0.0.0/8")],
            not_source_ips: vec![cidr("10.0.0.1")],
            ..Match::default()
        }),
        clause(Match {
            namespaces: vec![exact("a")],
            not_namespaces: vec![exact("b")],
            ..Match::default()
        }),
        clause(Match {
            principals: vec![StringMatch::Presence],
            not_principals: vec![exact("td/ns/a/sa/b")],
            ..Match::default()
        }),
        clause(Match {
            destination_ips: vec![cidr("10.96.0.0/12")],
            not_destination_ips: vec![cidr("fd00::1")],
            ..Match::default()
        }),
        clause(Match {
            destination_ports: vec![8080],
            not_destination_ports: vec![9090],
            ..Match::default()
        }),
    ];
    assert_eq!(p.rules, [Rule { clauses: expected }]);
}

const L7_RULES: &str = r#"  rules:
  - from: [{source: {namespaces: [a]}}]
    to: [{operation: {methods: [GET], ports: ["80"]}}]
  - from: [{source: {requestPrincipals: ["*"], namespaces: [b]}}]
  - to: [{operation: {paths: [/admin]}}]
  - when: [{key: "request.headers[x-user]", values: [bob]}]
  - from: [{source: {remoteIpBlocks: [1.2.3.4]}}, {source: {namespaces: [c]}}]
  - from: [{source: {namespaces: [d]}}]"#;

#[test]
fn allow_rules_needing_l7_are_dropped_and_reported() {
    let (p, warnings) = only_policy(&ap("apps", "allow-l7", L7_RULES));
    // Only the last rule is pure L4.
    assert_eq!(
        p.rules,
        [Rule {
            clauses: vec![Clause {
                matches: vec![Match {
                    namespaces: vec![exact("d")],
                    ..Match::default()
                }]
            }]
        }]
    );
    assert_eq!(warnings.len(), 5, "{warnings:#?}");
    assert!(
        warnings[0].starts_with(
            "rules[0] needs HTTP attributes ztunnel cannot check (methods); an ALLOW rule"
        ),
        "{}",
        warnings[0]
    );
    assert!(
        warnings[1].contains("(requestPrincipals)"),
        "{}",
        warnings[1]
    );
    assert!(
        warnings[3].contains("(when request.headers[x-user])"),
        "{}",
        warnings[3]
    );
    assert!(warnings[4].contains("(remoteIpBlocks)"), "{}", warnings[4]);

    // Every rule needs L7: nothing is allowed, and that is said.
    let (p, warnings) = only_policy(&ap(
        "apps",
        "allow-only-l7",
        "  rules: [{to: [{operation: {methods: [GET]}}]}]",
    ));
    assert_eq!(p.action, PolicyAction::Allow);
    assert!(p.rules.is_empty());
    assert_eq!(warnings.len(), 2, "{warnings:#?}");
    assert!(warnings
        .iter()
        .any(|w| w.contains("this ALLOW policy allows nothing")));
}

#[test]
fn deny_rules_keep_their_l4_part_and_only_l7_rules_deny_everything() {
    let (p, warnings) = only_policy(&ap(
        "apps",
        "deny-l7",
        &format!("  action: DENY\n{L7_RULES}"),
    ));
    let ns = |n: &str| Clause {
        matches: vec![Match {
            namespaces: vec![exact(n)],
            ..Match::default()
        }],
    };
    let port_80 = Clause {
        matches: vec![Match {
            destination_ports: vec![80],
            ..Match::default()
        }],
    };
    assert_eq!(
        p.rules,
        [
            // methods dropped: any method on port 80 from a.
            Rule {
                clauses: vec![port_80, ns("a")]
            },
            // requestPrincipals dropped: anyone from b.
            Rule {
                clauses: vec![ns("b")]
            },
            // Only L7: everything.
            Rule { clauses: vec![] },
            Rule { clauses: vec![] },
            // One source was only L7, so the sources clause matches anyone.
            Rule { clauses: vec![] },
            Rule {
                clauses: vec![ns("d")]
            },
        ]
    );
    assert_eq!(warnings.len(), 5, "{warnings:#?}");
    assert!(warnings
        .iter()
        .all(|w| w
            .contains("the DENY rule is enforced without them, which denies more than written")));
}

#[test]
fn string_matches_follow_istio_wildcards() {
    assert_eq!(string_match("*"), StringMatch::Presence);
    assert_eq!(string_match("*.x"), StringMatch::Suffix(".x".into()));
    assert_eq!(string_match("x.*"), StringMatch::Prefix("x.".into()));
    assert_eq!(string_match("x"), exact("x"));
}
