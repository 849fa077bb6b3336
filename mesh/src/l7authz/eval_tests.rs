//! The L7 evaluator: each rule kind, their combinations and the policy-level semantics.

use std::net::IpAddr;

use proptest::prelude::*;

use super::*;
use crate::model::{ModelError, StringMatch};
use crate::rbac::DecisionReason;
use crate::Identity;

fn request() -> L7Request {
    let mut headers = http::HeaderMap::new();
    headers.insert("x-user", "alice".parse().expect("value"));
    headers.append("x-group", "dev".parse().expect("value"));
    headers.append("x-group", "ops".parse().expect("value"));
    L7Request {
        source_identity: Some(Identity::new("cluster.local", "shop", "client").expect("id")),
        source_ip: ip("10.0.0.5"),
        remote_ip: None,
        destination_ip: Some(ip("10.96.0.10")),
        destination_port: 8080,
        host: "Web.Shop.svc.cluster.local:8080".into(),
        method: "GET".into(),
        path: "/api/v1/items?x=1".into(),
        headers,
        auth: None,
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn with_jwt(mut r: L7Request) -> L7Request {
    let claims = serde_json::json!({
        "iss": "https://issuer", "sub": "u1", "aud": ["a1", "a2"], "azp": "cli",
        "groups": ["admins", "dev"], "org": {"team": "core", "level": 3}, "email_verified": true
    });
    r.auth = Some(RequestAuth {
        principal: "https://issuer/u1".into(),
        audiences: vec!["a1".into(), "a2".into()],
        presenter: Some("cli".into()),
        claims: claims.as_object().cloned().expect("object"),
    });
    r
}

fn policy(action: L7Action, rules: Vec<L7Rule>) -> L7Policy {
    L7Policy {
        name: format!("{action:?}").to_lowercase(),
        namespace: "shop".into(),
        target: L7Target::default(),
        action,
        dry_run: false,
        rules,
    }
}

fn sa(ns: &str, name: &str) -> crate::model::ServiceAccountMatch {
    crate::model::ServiceAccountMatch {
        namespace: ns.into(),
        service_account: name.into(),
    }
}

fn m(values: &[&str]) -> Vec<StringMatch> {
    values.iter().map(|v| istio_string_match(v)).collect()
}

fn from(s: L7Source) -> L7Rule {
    L7Rule {
        from: vec![s],
        ..Default::default()
    }
}

fn to(o: L7Operation) -> L7Rule {
    L7Rule {
        to: vec![o],
        ..Default::default()
    }
}

fn when(key: &str, values: &[&str], not_values: &[&str]) -> L7Condition {
    let wire = proto::waypoint::l7_policy::Condition {
        key: key.into(),
        values: values.iter().map(|s| s.to_string()).collect(),
        not_values: not_values.iter().map(|s| s.to_string()).collect(),
    };
    let p = proto::waypoint::L7Policy {
        name: "c".into(),
        namespace: "ns".into(),
        rules: vec![proto::waypoint::l7_policy::Rule {
            when: vec![wire],
            ..Default::default()
        }],
        ..Default::default()
    };
    let p = L7Policy::try_from(p).expect("valid condition");
    p.rules[0].when[0].clone()
}

/// Whether a one-rule ALLOW policy lets `r` in.
fn allows(rule: L7Rule, r: &L7Request) -> bool {
    evaluate(&[policy(L7Action::Allow, vec![rule])], r).allowed
}

#[test]
fn string_rules_follow_istio_exact_prefix_suffix_and_star() {
    let r = request();
    for (values, want) in [
        (&["cluster.local/ns/shop/sa/client"][..], true),
        (&["cluster.local/ns/shop/*"], true),
        (&["*/sa/client"], true),
        (&["*"], true),
        (&["cluster.local/ns/shop/sa/other"], false),
        (&["*/sa/other", "cluster.local/ns/shop/sa/client"], true),
    ] {
        let rule = from(L7Source {
            principals: m(values),
            ..Default::default()
        });
        assert_eq!(allows(rule, &r), want, "{values:?}");
    }
}

#[test]
fn source_fields_check_peer_identity_namespace_and_ips() {
    let r = request();
    let cases: Vec<(L7Source, bool)> = vec![
        (
            L7Source {
                namespaces: m(&["shop"]),
                ..Default::default()
            },
            true,
        ),
        (
            L7Source {
                not_namespaces: m(&["shop"]),
                ..Default::default()
            },
            false,
        ),
        (
            L7Source {
                not_principals: m(&["*/sa/other"]),
                ..Default::default()
            },
            true,
        ),
        (
            L7Source {
                ip_blocks: vec!["10.0.0.0/24".parse().expect("cidr")],
                ..Default::default()
            },
            true,
        ),
        (
            L7Source {
                not_ip_blocks: vec!["10.0.0.5".parse().expect("cidr")],
                ..Default::default()
            },
            false,
        ),
        (
            L7Source {
                remote_ip_blocks: vec!["10.0.0.5".parse().expect("cidr")],
                ..Default::default()
            },
            true,
        ),
        (
            L7Source {
                service_accounts: vec![sa("shop", "client")],
                ..Default::default()
            },
            true,
        ),
        (
            L7Source {
                service_accounts: vec![sa("bank", "client")],
                ..Default::default()
            },
            false,
        ),
        (
            L7Source {
                not_service_accounts: vec![sa("shop", "client")],
                ..Default::default()
            },
            false,
        ),
        // Two fields: AND.
        (
            L7Source {
                namespaces: m(&["shop"]),
                ip_blocks: vec!["192.168.0.0/16".parse().expect("cidr")],
                ..Default::default()
            },
            false,
        ),
    ];
    for (i, (source, want)) in cases.into_iter().enumerate() {
        assert_eq!(allows(from(source), &r), want, "case {i}");
    }
}

#[test]
fn plaintext_peers_match_no_identity_value_and_every_not_value() {
    let mut r = request();
    r.source_identity = None;
    let ns = |s| {
        from(L7Source {
            namespaces: m(&[s]),
            ..Default::default()
        })
    };
    assert!(!allows(ns("*"), &r));
    assert!(allows(
        from(L7Source {
            not_principals: m(&["*"]),
            ..Default::default()
        }),
        &r
    ));
}

#[test]
fn request_principals_need_a_valid_jwt() {
    let rule = || {
        from(L7Source {
            request_principals: m(&["https://issuer/*"]),
            ..Default::default()
        })
    };
    assert!(!allows(rule(), &request()));
    assert!(allows(rule(), &with_jwt(request())));
    let any = from(L7Source {
        request_principals: m(&["*"]),
        ..Default::default()
    });
    assert!(!allows(any.clone(), &request()));
    assert!(allows(any, &with_jwt(request())));
    let not = from(L7Source {
        not_request_principals: m(&["*"]),
        ..Default::default()
    });
    assert!(allows(not.clone(), &request()));
    assert!(!allows(not, &with_jwt(request())));
}

#[test]
fn hosts_compare_case_insensitively_with_or_without_the_port() {
    let r = request();
    let host = |v: &[&str]| {
        // As converted from the wire: lower-cased.
        let lower: Vec<String> = v.iter().map(|s| s.to_ascii_lowercase()).collect();
        to(L7Operation {
            hosts: lower.iter().map(|s| istio_string_match(s)).collect(),
            ..Default::default()
        })
    };
    assert!(allows(host(&["web.shop.svc.cluster.local"]), &r));
    assert!(allows(host(&["WEB.shop.svc.cluster.local:8080"]), &r));
    assert!(allows(host(&["*.shop.svc.cluster.local"]), &r));
    assert!(allows(host(&["web.*"]), &r));
    assert!(!allows(host(&["web.shop.svc.cluster.local:80"]), &r));
    assert!(!allows(host(&["api.shop.svc.cluster.local"]), &r));
    let mut v6 = request();
    v6.host = "[fd00::1]:80".into();
    assert!(allows(host(&["[fd00::1]"]), &v6));
}

#[test]
fn methods_ports_and_paths_with_their_not_forms() {
    let r = request();
    let op = |o: L7Operation| allows(to(o), &r);
    assert!(op(L7Operation {
        methods: m(&["GET", "HEAD"]),
        ..Default::default()
    }));
    assert!(!op(L7Operation {
        methods: m(&["get"]),
        ..Default::default()
    }));
    assert!(!op(L7Operation {
        not_methods: m(&["GET"]),
        ..Default::default()
    }));
    assert!(op(L7Operation {
        ports: vec![8080],
        ..Default::default()
    }));
    assert!(!op(L7Operation {
        not_ports: vec![8080],
        ..Default::default()
    }));
    assert!(op(L7Operation {
        paths: m(&["/api/v1/items"]),
        ..Default::default()
    }));
    assert!(op(L7Operation {
        paths: m(&["/api/*"]),
        ..Default::default()
    }));
    assert!(op(L7Operation {
        paths: m(&["*/items"]),
        ..Default::default()
    }));
    assert!(!op(L7Operation {
        paths: m(&["/api/v1/items?x=1"]),
        ..Default::default()
    }));
    assert!(!op(L7Operation {
        not_paths: m(&["/api/*"]),
        ..Default::default()
    }));
    // Fields AND-ed: the method matches, the path does not.
    assert!(!op(L7Operation {
        methods: m(&["GET"]),
        paths: m(&["/admin*"]),
        ..Default::default()
    }));
}

#[test]
fn paths_are_normalised_before_matching() {
    for (raw, want) in [
        ("/a/b", "/a/b"),
        ("/a/./b/../c", "/a/c"),
        ("/a/b/..", "/a/"),
        ("/../admin", "/admin"),
        ("/%61dmin", "/admin"),
        ("/a%2fb", "/a%2Fb"),
        ("/a\\b", "/a/b"),
        ("/x?y=/admin", "/x"),
        ("/x#frag", "/x"),
        ("", "/"),
        ("/caf\u{e9}", "/caf\u{e9}"),
        // Found by the l7_request fuzzer: a bare `%` before an escape that decodes to a hex
        // digit must not form a new escape on the next pass.
        ("/%%%666", "/%25%25f6"),
        ("/a%zz", "/a%25zz"),
    ] {
        assert_eq!(normalize_path(raw), want, "{raw}");
    }
    let mut r = request();
    r.path = "/public/../admin/%2e%2e/admin/x".into();
    let deny = policy(
        L7Action::Deny,
        vec![to(L7Operation {
            paths: m(&["/admin/*"]),
            ..Default::default()
        })],
    );
    assert!(!evaluate(&[deny], &r).allowed);
}

#[test]
fn when_conditions_on_every_supported_key() {
    let r = with_jwt(request());
    let cases = [
        (when("request.headers[X-User]", &["alice"], &[]), true),
        (when("request.headers[x-user]", &["bob"], &[]), false),
        (when("request.headers[x-group]", &["ops"], &[]), true),
        (when("request.headers[x-missing]", &["*"], &[]), false),
        (when("request.headers[x-missing]", &[], &["x"]), true),
        (when("source.principal", &["*/sa/client"], &[]), true),
        (when("source.namespace", &["shop"], &[]), true),
        (when("source.ip", &["10.0.0.0/8"], &[]), true),
        (when("remote.ip", &["10.0.0.5"], &[]), true),
        (when("destination.ip", &["10.96.0.0/16"], &[]), true),
        (when("destination.port", &["8080"], &[]), true),
        (when("destination.port", &[], &["8080"]), false),
        (
            when("request.auth.principal", &["https://issuer/u1"], &[]),
            true,
        ),
        (when("request.auth.audiences", &["a2"], &[]), true),
        (when("request.auth.presenter", &["cli"], &[]), true),
        (when("request.auth.claims[groups]", &["admins"], &[]), true),
        (when("request.auth.claims[groups]", &[], &["admins"]), false),
        (when("request.auth.claims[org][team]", &["core"], &[]), true),
        (when("request.auth.claims[org][level]", &["3"], &[]), true),
        (
            when("request.auth.claims[email_verified]", &["true"], &[]),
            true,
        ),
        (when("request.auth.claims[org][nope]", &["*"], &[]), false),
    ];
    for (i, (c, want)) in cases.into_iter().enumerate() {
        let rule = L7Rule {
            when: vec![c.clone()],
            ..Default::default()
        };
        assert_eq!(allows(rule, &r), want, "case {i}: {}", c.key);
    }
    // Without a JWT every request.auth condition fails.
    let rule = L7Rule {
        when: vec![when("request.auth.claims[groups]", &["*"], &[])],
        ..Default::default()
    };
    assert!(!allows(rule, &request()));
}

#[test]
fn from_to_and_when_are_anded_and_their_entries_ored() {
    let r = request();
    let ns = |s: &str| L7Source {
        namespaces: m(&[s]),
        ..Default::default()
    };
    let method = |s: &str| L7Operation {
        methods: m(&[s]),
        ..Default::default()
    };
    let rule = |f: Vec<L7Source>, t: Vec<L7Operation>, w: Vec<L7Condition>| L7Rule {
        from: f,
        to: t,
        when: w,
    };
    let user = |v: &str| when("request.headers[x-user]", &[v], &[]);
    assert!(allows(
        rule(vec![ns("shop")], vec![method("GET")], vec![user("alice")]),
        &r
    ));
    assert!(!allows(
        rule(vec![ns("other")], vec![method("GET")], vec![user("alice")]),
        &r
    ));
    assert!(!allows(
        rule(vec![ns("shop")], vec![method("POST")], vec![user("alice")]),
        &r
    ));
    assert!(!allows(
        rule(vec![ns("shop")], vec![method("GET")], vec![user("bob")]),
        &r
    ));
    // Entries of from and of to are OR-ed; every when must hold.
    assert!(allows(
        rule(
            vec![ns("other"), ns("shop")],
            vec![method("POST"), method("GET")],
            vec![]
        ),
        &r
    ));
    assert!(!allows(
        rule(vec![], vec![], vec![user("alice"), user("bob")]),
        &r
    ));
    // An empty rule matches everything.
    assert!(allows(L7Rule::default(), &r));
}

#[test]
fn rules_are_ored_and_a_policy_without_rules_matches_nothing() {
    let r = request();
    let get = to(L7Operation {
        methods: m(&["GET"]),
        ..Default::default()
    });
    let post = to(L7Operation {
        methods: m(&["POST"]),
        ..Default::default()
    });
    let d = evaluate(&[policy(L7Action::Allow, vec![post.clone(), get])], &r);
    assert_eq!(
        d.reason,
        DecisionReason::AllowedBy {
            policy: "shop/allow".into(),
            rule: 1
        }
    );
    let d = evaluate(&[policy(L7Action::Allow, vec![])], &r);
    assert!(!d.allowed);
    assert_eq!(
        d.reason,
        DecisionReason::NoAllowMatched {
            allow_policies: vec!["shop/allow".into()]
        }
    );
}

#[test]
fn deny_wins_then_allow_and_no_allow_policy_allows() {
    let r = request();
    let admin = to(L7Operation {
        paths: m(&["/admin*"]),
        ..Default::default()
    });
    let api = to(L7Operation {
        paths: m(&["/api/*"]),
        ..Default::default()
    });
    assert_eq!(
        evaluate::<L7Policy>(&[], &r).reason,
        DecisionReason::NoPolicies
    );
    let d = evaluate(&[policy(L7Action::Deny, vec![admin.clone()])], &r);
    assert!(d.allowed);
    assert_eq!(d.reason, DecisionReason::NoAllowPolicies);
    let both = [
        policy(L7Action::Allow, vec![api.clone()]),
        policy(L7Action::Deny, vec![api]),
    ];
    let d = evaluate(&both, &r);
    assert!(!d.allowed);
    assert_eq!(
        d.reason,
        DecisionReason::DeniedBy {
            policy: "shop/deny".into(),
            rule: 0
        }
    );
    assert_eq!(d.to_string(), "denied by DENY policy shop/deny (rule 0)");
}

#[test]
fn audit_marks_without_changing_the_verdict() {
    let r = request();
    let audit = policy(L7Action::Audit, vec![L7Rule::default()]);
    let d = evaluate(std::slice::from_ref(&audit), &r);
    assert!(d.allowed);
    assert_eq!(d.reason, DecisionReason::NoPolicies);
    assert_eq!(
        d.audit,
        Some(PolicyRule {
            policy: "shop/audit".into(),
            rule: 0
        })
    );
    let deny_all = policy(L7Action::Deny, vec![L7Rule::default()]);
    let d = evaluate(&[audit.clone(), deny_all], &r);
    assert!(!d.allowed && d.audited());
    let nothing = policy(
        L7Action::Audit,
        vec![to(L7Operation {
            methods: m(&["PUT"]),
            ..Default::default()
        })],
    );
    assert!(!evaluate(&[nothing], &r).audited());
}

#[test]
fn dry_run_policies_report_but_never_enforce() {
    let r = request();
    let mut deny_all = policy(L7Action::Deny, vec![L7Rule::default()]);
    deny_all.dry_run = true;
    let d = evaluate(&[deny_all], &r);
    assert!(d.allowed);
    assert!(
        d.to_string()
            .contains("with dry-run policies it would deny"),
        "{}",
        d
    );
    let dry = d.dry_run.expect("report");
    assert!(!dry.allowed);
    assert_eq!(dry.policies[0].matched_rule, Some(0));
}

#[test]
fn proto_round_trip_and_errors_name_the_field() {
    let p = L7Policy {
        target: L7Target {
            scope: L7Scope::Service,
            gateways: vec![],
            services: vec!["shop/web.shop.svc.cluster.local".into()],
        },
        rules: vec![L7Rule {
            from: vec![L7Source {
                principals: m(&["a*"]),
                ip_blocks: vec!["10.0.0.0/8".parse().expect("cidr")],
                service_accounts: vec![sa("ns", "sa")],
                ..Default::default()
            }],
            to: vec![L7Operation {
                hosts: m(&["*.shop"]),
                ports: vec![80],
                paths: m(&["/x"]),
                ..Default::default()
            }],
            when: vec![when("request.auth.claims[a][b]", &["v"], &["w*"])],
        }],
        ..policy(L7Action::Audit, vec![])
    };
    let wire = proto::waypoint::L7Policy::from(&p);
    assert_eq!(L7Policy::try_from(wire.clone()), Ok(p.clone()));
    let json = serde_json::to_value(&p).expect("json");
    assert_eq!(
        json["rules"][0]["when"][0]["key"],
        "request.auth.claims[a][b]"
    );
    assert_eq!(serde_json::from_value::<L7Policy>(json).expect("back"), p);

    type Mutate = fn(&mut proto::waypoint::L7Policy);
    let cases: [(Mutate, &str); 8] = [
        (
            |w| w.rules[0].from[0].service_accounts[0] = "sa-only".into(),
            "rules[0].from[0].service_accounts[0]",
        ),
        (
            |w| w.rules[0].when[0].key = "request.magic".into(),
            "rules[0].when[0].key",
        ),
        (
            |w| w.rules[0].when[0].key = "destination.port".into(),
            "rules[0].when[0].values[0]",
        ),
        (
            |w| w.rules[0].from[0].ip_blocks[0] = "10.0.0.0/40".into(),
            "rules[0].from[0].ip_blocks[0]",
        ),
        (
            |w| w.rules[0].to[0].ports[0] = 70_000,
            "rules[0].to[0].ports[0]",
        ),
        (
            |w| w.rules[0].to[0].paths[0] = "/a*b*".into(),
            "rules[0].to[0].paths[0]",
        ),
        (|w| w.services = vec!["no-slash".into()], "services[0]"),
        (|w| w.action = 9, "action"),
    ];
    for (mutate, field) in cases {
        let mut w = wire.clone();
        mutate(&mut w);
        let err: ModelError = L7Policy::try_from(w).expect_err(field);
        assert_eq!(err.field(), field, "{err}");
    }
}

#[test]
fn scope_decides_which_waypoint_and_service_a_policy_applies_to() {
    let at = WaypointContext {
        namespace: "shop",
        name: "waypoint",
        service: Some("shop/web.shop.svc.cluster.local"),
    };
    let target = |scope, gateways: &[&str], services: &[&str]| L7Target {
        scope,
        gateways: gateways.iter().map(|s| s.to_string()).collect(),
        services: services.iter().map(|s| s.to_string()).collect(),
    };
    assert!(target(L7Scope::Root, &[], &[]).applies("istio-system", &at));
    assert!(target(L7Scope::Waypoint, &[], &[]).applies("shop", &at));
    assert!(target(L7Scope::Waypoint, &["waypoint"], &[]).applies("shop", &at));
    assert!(!target(L7Scope::Waypoint, &["other"], &[]).applies("shop", &at));
    assert!(!target(L7Scope::Waypoint, &[], &[]).applies("other-ns", &at));
    assert!(
        target(L7Scope::Service, &[], &["shop/web.shop.svc.cluster.local"]).applies("shop", &at)
    );
    assert!(
        !target(L7Scope::Service, &[], &["shop/api.shop.svc.cluster.local"]).applies("shop", &at)
    );
    let no_service = WaypointContext {
        service: None,
        ..at
    };
    assert!(
        !target(L7Scope::Service, &[], &["shop/web.shop.svc.cluster.local"])
            .applies("shop", &no_service)
    );
}

proptest! {
    /// A DENY policy and an ALLOW policy with the same rules: the request is allowed exactly
    /// when the rules do not match... and then only if no ALLOW exists, so never. With the ALLOW
    /// alone, allowed exactly when the rules match.
    #[test]
    fn allow_and_deny_mirror_the_match(
        method in prop::sample::select(vec!["GET", "POST", "PUT"]),
        path in prop::sample::select(vec!["/", "/admin", "/admin/x", "/api/v1", "/a/../admin"]),
        methods in prop::collection::vec(prop::sample::select(vec!["GET", "POST", "*", "P*"]), 0..3),
        paths in prop::collection::vec(prop::sample::select(vec!["/admin*", "/api/*", "*/x", "/"]), 0..3),
        negate in any::<bool>(),
    ) {
        let mut r = request();
        r.method = method.into();
        r.path = path.into();
        let op = if negate {
            L7Operation { not_methods: m(&methods), not_paths: m(&paths), ..Default::default() }
        } else {
            L7Operation { methods: m(&methods), paths: m(&paths), ..Default::default() }
        };
        let rules = vec![to(op)];
        let matched = matching_rule(&policy(L7Action::Allow, rules.clone()), &r).is_some();
        let norm = normalize_path(path);
        let method_ok = methods.is_empty() || methods.iter().any(|v| istio_string_match(v).matches(method));
        let path_ok = paths.is_empty() || paths.iter().any(|v| istio_string_match(v).matches(&norm));
        let expected = if negate {
            !methods.iter().any(|v| istio_string_match(v).matches(method))
                && !paths.iter().any(|v| istio_string_match(v).matches(&norm))
        } else {
            method_ok && path_ok
        };
        prop_assert_eq!(matched, expected);
        prop_assert_eq!(evaluate(&[policy(L7Action::Allow, rules.clone())], &r).allowed, matched);
        prop_assert_eq!(evaluate(&[policy(L7Action::Deny, rules.clone())], &r).allowed, !matched);
        prop_assert!(!evaluate(&[policy(L7Action::Allow, rules.clone()), policy(L7Action::Deny, rules)], &r).allowed);
    }
}

proptest! {
    /// The normalised path starts with `/`, has no query and is a fixed point, whatever
    /// the client sent.
    #[test]
    fn normalising_a_path_is_idempotent(raw in "[a-zA-Z0-9/.%?#\\\\~_-]{0,40}") {
        let path = normalize_path(&raw);
        prop_assert!(path.starts_with('/'));
        prop_assert!(!path.contains('?') && !path.contains('#'));
        prop_assert_eq!(normalize_path(&path), path);
    }

    /// An accepted condition key formats back to a key that parses to itself.
    #[test]
    fn condition_keys_round_trip(raw in "(request\\.headers|request\\.auth\\.claims|source\\.ip|x)(\\[[a-zA-Z.\\[\\]-]{0,6}\\]){0,3}") {
        if let Ok(key) = raw.parse::<ConditionKey>() {
            prop_assert_eq!(key.to_string().parse::<ConditionKey>(), Ok(key));
        }
    }
}
