use std::net::IpAddr;

use super::*;
use crate::model::{PolicyScope, ServiceAccountMatch, StringMatch};

// ---- builders ----------------------------------------------------------------------------

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

pub(super) fn cidr(s: &str) -> Cidr {
    s.parse().expect("cidr")
}

fn exact(s: &str) -> StringMatch {
    StringMatch::Exact(s.into())
}

pub(super) fn sa(ns: &str, name: &str) -> ServiceAccountMatch {
    ServiceAccountMatch {
        namespace: ns.into(),
        service_account: name.into(),
    }
}

/// A connection from `<td>/ns/<ns>/sa/<sa>` at 10.0.0.1 to 10.0.1.1:8080.
fn from_id(td: &str, ns: &str, sa: &str) -> Connection {
    Connection {
        src_identity: Some(Identity::new(td, ns, sa).expect("identity")),
        src_ip: ip("10.0.0.1"),
        dst_ip: ip("10.0.1.1"),
        dst_port: 8080,
    }
}

fn from(ns: &str, sa: &str) -> Connection {
    from_id("cluster.local", ns, sa)
}

fn plaintext() -> Connection {
    Connection {
        src_identity: None,
        ..from("default", "sleep")
    }
}

fn one_match(m: Match) -> Vec<Rule> {
    vec![Rule {
        clauses: vec![Clause { matches: vec![m] }],
    }]
}

pub(super) fn policy(ns: &str, name: &str, action: PolicyAction, rules: Vec<Rule>) -> Policy {
    Policy {
        name: name.into(),
        namespace: ns.into(),
        scope: PolicyScope::Namespace,
        action,
        rules,
        dry_run: false,
    }
}

fn allow(name: &str, rules: Vec<Rule>) -> Policy {
    policy("default", name, PolicyAction::Allow, rules)
}

fn deny(name: &str, rules: Vec<Rule>) -> Policy {
    policy("default", name, PolicyAction::Deny, rules)
}

/// A DENY policy that matches everything: one rule with one clause without matches.
pub(super) fn deny_all(name: &str) -> Policy {
    deny(
        name,
        vec![Rule {
            clauses: vec![Clause::default()],
        }],
    )
}

/// Whether the single match `m` (in an ALLOW policy) matches `conn`.
pub(super) fn hits(m: &Match, conn: &Connection) -> bool {
    matching_rule(&allow("p", one_match(m.clone())), conn).is_some()
}

/// Asserts `m` against each `(connection, expected)` pair.
fn check(name: &str, m: Match, cases: &[(&Connection, bool)]) {
    for (conn, want) in cases {
        assert_eq!(hits(&m, conn), *want, "{name}: {conn}");
    }
}

// ---- one field at a time -----------------------------------------------------------------

#[test]
fn namespaces_match_the_source_namespace() {
    let m = Match {
        namespaces: vec![exact("default"), exact("prod")],
        ..Match::default()
    };
    check(
        "namespaces",
        m,
        &[
            (&from("default", "a"), true),
            (&from("prod", "a"), true),
            (&from("other", "a"), false),
        ],
    );
}

#[test]
fn not_namespaces_exclude_the_source_namespace() {
    let m = Match {
        not_namespaces: vec![exact("default"), exact("prod")],
        ..Match::default()
    };
    check(
        "not_namespaces",
        m,
        &[
            (&from("default", "a"), false),
            (&from("prod", "a"), false),
            (&from("other", "a"), true),
        ],
    );
}

#[test]
fn string_match_kinds_apply_to_namespaces() {
    let cases = [
        (StringMatch::Prefix("team-".into()), "team-a", true),
        (StringMatch::Prefix("team-".into()), "a-team", false),
        (StringMatch::Suffix("-prod".into()), "shop-prod", true),
        (StringMatch::Suffix("-prod".into()), "shop-dev", false),
        (StringMatch::Presence, "anything", true),
    ];
    for (s, ns, want) in cases {
        let m = Match {
            namespaces: vec![s.clone()],
            ..Match::default()
        };
        assert_eq!(hits(&m, &from(ns, "a")), want, "{s:?} vs {ns}");
    }
}

#[test]
fn principals_match_the_principal_form_without_scheme() {
    let m = Match {
        principals: vec![exact("cluster.local/ns/default/sa/sleep")],
        ..Match::default()
    };
    check(
        "principals",
        m,
        &[
            (&from("default", "sleep"), true),
            (&from("default", "other"), false),
            (&from_id("td2", "default", "sleep"), false),
        ],
    );
    // The URI form is never what a principal is compared with.
    let uri = Match {
        principals: vec![exact("spiffe://cluster.local/ns/default/sa/sleep")],
        ..Match::default()
    };
    assert!(!hits(&uri, &from("default", "sleep")));
    let suffix = Match {
        principals: vec![StringMatch::Suffix("/sa/sleep".into())],
        ..Match::default()
    };
    assert!(hits(&suffix, &from_id("td2", "x", "sleep")));
}

#[test]
fn not_principals_exclude_a_principal() {
    let m = Match {
        not_principals: vec![exact("cluster.local/ns/default/sa/sleep")],
        ..Match::default()
    };
    check(
        "not_principals",
        m,
        &[
            (&from("default", "sleep"), false),
            (&from("default", "other"), true),
        ],
    );
}

#[test]
fn service_accounts_match_namespace_and_name_in_any_trust_domain() {
    let m = Match {
        service_accounts: vec![sa("default", "sleep")],
        ..Match::default()
    };
    check(
        "service_accounts",
        m,
        &[
            (&from("default", "sleep"), true),
            (&from_id("td2", "default", "sleep"), true),
            (&from("other", "sleep"), false),
            (&from("default", "other"), false),
        ],
    );
}

#[test]
fn not_service_accounts_exclude_a_service_account() {
    let m = Match {
        not_service_accounts: vec![sa("default", "sleep")],
        ..Match::default()
    };
    check(
        "not_service_accounts",
        m,
        &[
            (&from("default", "sleep"), false),
            (&from("other", "sleep"), true),
            (&from("default", "other"), true),
        ],
    );
}

#[test]
fn source_ips_match_by_cidr() {
    let conn = from("default", "sleep"); // 10.0.0.1
    let with = |c: &str| Match {
        source_ips: vec![cidr("192.168.0.0/16"), cidr(c)],
        ..Match::default()
    };
    assert!(hits(&with("10.0.0.0/24"), &conn));
    assert!(!hits(&with("10.0.1.0/24"), &conn));
    let not = Match {
        not_source_ips: vec![cidr("10.0.0.0/24")],
        ..Match::default()
    };
    assert!(!hits(&not, &conn));
    assert!(hits(
        &not,
        &Connection {
            src_ip: ip("10.9.0.1"),
            ..conn
        }
    ));
}

#[test]
fn destination_ips_match_by_cidr() {
    let conn = from("default", "sleep"); // to 10.0.1.1
    let m = Match {
        destination_ips: vec![cidr("10.0.1.1")],
        ..Match::default()
    };
    let not = Match {
        not_destination_ips: vec![cidr("10.0.1.1")],
        ..Match::default()
    };
    let elsewhere = Connection {
        dst_ip: ip("10.0.1.2"),
        ..conn.clone()
    };
    assert!(hits(&m, &conn));
    assert!(!hits(&m, &elsewhere));
    assert!(!hits(&not, &conn));
    assert!(hits(&not, &elsewhere));
}

#[test]
fn destination_ports_match_exactly() {
    let conn = from("default", "sleep"); // port 8080
    let m = Match {
        destination_ports: vec![80, 8080],
        ..Match::default()
    };
    let not = Match {
        not_destination_ports: vec![8080],
        ..Match::default()
    };
    let other = Connection {
        dst_port: 9090,
        ..conn.clone()
    };
    assert!(hits(&m, &conn));
    assert!(!hits(&m, &other));
    assert!(!hits(&not, &conn));
    assert!(hits(&not, &other));
}

#[test]
fn cidr_matching_handles_zero_prefix_and_host_routes() {
    let v4 = Connection {
        src_ip: ip("203.0.113.7"),
        ..from("default", "sleep")
    };
    let v6 = Connection {
        src_ip: ip("fd00::7"),
        ..v4.clone()
    };
    let mapped = Connection {
        src_ip: ip("::ffff:203.0.113.7"),
        ..v4.clone()
    };
    let src = |c: &str| Match {
        source_ips: vec![cidr(c)],
        ..Match::default()
    };
    let cases = [
        ("0.0.0.0/0", &v4, true),
        ("0.0.0.0/0", &v6, false),
        ("::/0", &v6, true),
        ("::/0", &v4, false),
        ("203.0.113.7/32", &v4, true),
        ("203.0.113.8/32", &v4, false),
        ("203.0.113.7", &mapped, true),
        ("fd00::7/128", &v6, true),
        ("fd00::8/128", &v6, false),
        ("fd00::/64", &v6, true),
        ("203.0.113.0/31", &v4, false),
        ("203.0.113.6/31", &v4, true),
    ];
    for (c, conn, want) in cases {
        assert_eq!(hits(&src(c), conn), want, "{c} vs {}", conn.src_ip);
    }
}

// ---- plaintext ---------------------------------------------------------------------------

#[test]
fn plaintext_never_matches_identity_fields() {
    let fields = [
        Match {
            namespaces: vec![StringMatch::Presence],
            ..Match::default()
        },
        Match {
            namespaces: vec![StringMatch::Prefix(String::new())],
            ..Match::default()
        },
        Match {
            principals: vec![StringMatch::Suffix(String::new())],
            ..Match::default()
        },
        Match {
            service_accounts: vec![sa("default", "sleep")],
            ..Match::default()
        },
    ];
    for m in &fields {
        assert!(!hits(m, &plaintext()), "{m:?}");
        assert!(hits(m, &from("default", "sleep")), "{m:?}");
    }
}

#[test]
fn plaintext_matches_negated_identity_fields() {
    let fields = [
        Match {
            not_namespaces: vec![StringMatch::Presence, StringMatch::Prefix(String::new())],
            ..Match::default()
        },
        Match {
            not_principals: vec![StringMatch::Presence],
            ..Match::default()
        },
        Match {
            not_service_accounts: vec![sa("default", "sleep")],
            ..Match::default()
        },
    ];
    for m in &fields {
        assert!(hits(m, &plaintext()), "{m:?}");
        assert!(!hits(m, &from("default", "sleep")), "{m:?}");
    }
}

#[test]
fn plaintext_still_matches_address_fields() {
    let m = Match {
        source_ips: vec![cidr("10.0.0.0/8")],
        destination_ports: vec![8080],
        ..Match::default()
    };
    assert!(hits(&m, &plaintext()));
}

#[test]
fn strict_mtls_policy_denies_plaintext_only() {
    // What istiod sends for PeerAuthentication STRICT.
    let strict = deny(
        "istio_converted_static_strict",
        one_match(Match {
            not_principals: vec![StringMatch::Presence],
            ..Match::default()
        }),
    );
    let d = evaluate(&[&strict], &plaintext());
    assert!(!d.allowed);
    assert_eq!(
        d.reason,
        DecisionReason::DeniedBy {
            policy: "default/istio_converted_static_strict".into(),
            rule: 0
        }
    );
    assert!(evaluate(&[&strict], &from("default", "sleep")).allowed);
}

// ---- structure ---------------------------------------------------------------------------

#[test]
fn fields_within_a_match_are_anded() {
    let m = Match {
        namespaces: vec![exact("default")],
        destination_ports: vec![8080],
        ..Match::default()
    };
    assert!(hits(&m, &from("default", "a")));
    assert!(!hits(&m, &from("other", "a")));
    assert!(!hits(
        &m,
        &Connection {
            dst_port: 80,
            ..from("default", "a")
        }
    ));
}

#[test]
fn a_field_and_its_negation_combine() {
    let m = Match {
        namespaces: vec![StringMatch::Prefix("team-".into())],
        not_namespaces: vec![exact("team-legacy")],
        ..Match::default()
    };
    assert!(hits(&m, &from("team-a", "x")));
    assert!(!hits(&m, &from("team-legacy", "x")));
    assert!(!hits(&m, &from("other", "x")));
}

#[test]
fn matches_within_a_clause_are_ored_and_clauses_are_anded() {
    // (ns a OR ns b) AND port 80, as istiod builds `from` and `to`.
    let rule = Rule {
        clauses: vec![
            Clause {
                matches: vec![
                    Match {
                        namespaces: vec![exact("a")],
                        ..Match::default()
                    },
                    Match {
                        namespaces: vec![exact("b")],
                        ..Match::default()
                    },
                ],
            },
            Clause {
                matches: vec![Match {
                    destination_ports: vec![80],
                    ..Match::default()
                }],
            },
        ],
    };
    let p = allow("p", vec![rule]);
    let at = |ns: &str, port| Connection {
        dst_port: port,
        ..from(ns, "x")
    };
    assert_eq!(matching_rule(&p, &at("a", 80)), Some(0));
    assert_eq!(matching_rule(&p, &at("b", 80)), Some(0));
    assert_eq!(matching_rule(&p, &at("c", 80)), None);
    assert_eq!(matching_rule(&p, &at("a", 81)), None);
}

#[test]
fn rules_are_ored_and_the_first_match_is_reported() {
    let ns = |n: &str| Rule {
        clauses: vec![Clause {
            matches: vec![Match {
                namespaces: vec![exact(n)],
                ..Match::default()
            }],
        }],
    };
    let p = allow("p", vec![ns("a"), ns("b"), ns("b")]);
    assert_eq!(matching_rule(&p, &from("a", "x")), Some(0));
    assert_eq!(matching_rule(&p, &from("b", "x")), Some(1));
    assert_eq!(matching_rule(&p, &from("c", "x")), None);
}

#[test]
fn empty_parts_match_everything_but_a_policy_without_rules_matches_nothing() {
    let conns = [from("default", "sleep"), plaintext()];
    let no_rules = allow("p", vec![]);
    let rule_without_clauses = allow("p", vec![Rule::default()]);
    let clause_without_matches = allow(
        "p",
        vec![Rule {
            clauses: vec![Clause::default()],
        }],
    );
    let match_without_fields = allow("p", one_match(Match::default()));
    for conn in &conns {
        assert_eq!(matching_rule(&no_rules, conn), None);
        assert_eq!(matching_rule(&rule_without_clauses, conn), Some(0));
        assert_eq!(matching_rule(&clause_without_matches, conn), Some(0));
        assert_eq!(matching_rule(&match_without_fields, conn), Some(0));
    }
}

#[test]
fn deny_rule_stripped_to_its_l4_part_still_denies() {
    // DENY `from: {namespaces: [dev]}, to: {methods: [POST]}` reaches ztunnel as
    // (ns dev) AND (an empty match): it denies everything from dev.
    let p = deny(
        "no-post-from-dev",
        vec![Rule {
            clauses: vec![
                Clause {
                    matches: vec![Match::default()],
                },
                Clause {
                    matches: vec![Match {
                        namespaces: vec![exact("dev")],
                        ..Match::default()
                    }],
                },
            ],
        }],
    );
    assert!(!evaluate(&[&p], &from("dev", "x")).allowed);
    assert!(evaluate(&[&p], &from("prod", "x")).allowed);
}

// ---- verdicts ----------------------------------------------------------------------------

#[test]
fn no_policies_allow_everything() {
    let d = evaluate::<Policy>(&[], &plaintext());
    assert!(d.allowed);
    assert_eq!(d.reason, DecisionReason::NoPolicies);
    assert_eq!(d.dry_run, None);
}

#[test]
fn deny_policies_that_do_not_match_allow() {
    let p = deny(
        "deny-dev",
        one_match(Match {
            namespaces: vec![exact("dev")],
            ..Match::default()
        }),
    );
    let d = evaluate(&[p], &from("prod", "x"));
    assert!(d.allowed);
    assert_eq!(d.reason, DecisionReason::NoAllowPolicies);
}

#[test]
fn deny_beats_allow_whatever_the_order() {
    let a = allow("allow-all", vec![Rule::default()]);
    let d = deny_all("deny-all");
    for policies in [[&a, &d], [&d, &a]] {
        let got = evaluate(&policies, &from("default", "sleep"));
        assert!(!got.allowed);
        assert_eq!(
            got.reason,
            DecisionReason::DeniedBy {
                policy: "default/deny-all".into(),
                rule: 0
            }
        );
    }
}

#[test]
fn the_first_matching_policy_in_order_is_reported() {
    let d1 = deny_all("d1");
    let d2 = deny_all("d2");
    let reason = evaluate(&[&d2, &d1], &plaintext()).reason;
    assert_eq!(
        reason,
        DecisionReason::DeniedBy {
            policy: "default/d2".into(),
            rule: 0
        }
    );
}

#[test]
fn allow_present_but_unmatched_denies() {
    let only_prod = |name: &str| {
        allow(
            name,
            one_match(Match {
                namespaces: vec![exact("prod")],
                ..Match::default()
            }),
        )
    };
    let policies = [only_prod("a"), only_prod("b"), deny_all("d")];
    let d = evaluate(&policies[..2], &from("dev", "x"));
    assert!(!d.allowed);
    assert_eq!(
        d.reason,
        DecisionReason::NoAllowMatched {
            allow_policies: vec!["default/a".into(), "default/b".into()]
        }
    );
    let d = evaluate(&policies[..2], &from("prod", "x"));
    assert!(d.allowed);
    assert_eq!(
        d.reason,
        DecisionReason::AllowedBy {
            policy: "default/a".into(),
            rule: 0
        }
    );
}

#[test]
fn allow_nothing_spec_denies_everything() {
    // `spec: {}` with action ALLOW: no rules.
    let nothing = allow("allow-nothing", vec![]);
    for conn in [from("default", "sleep"), plaintext()] {
        let d = evaluate(&[&nothing], &conn);
        assert!(!d.allowed, "{conn}");
        assert_eq!(
            d.reason,
            DecisionReason::NoAllowMatched {
                allow_policies: vec!["default/allow-nothing".into()]
            }
        );
    }
}

#[test]
fn deny_without_rules_denies_nothing() {
    let d = evaluate(&[deny("empty", vec![])], &plaintext());
    assert!(d.allowed);
    assert_eq!(d.reason, DecisionReason::NoAllowPolicies);
}

#[test]
fn dry_run_never_changes_the_verdict_and_is_reported() {
    let mut dry_deny = deny_all("dry-deny");
    dry_deny.dry_run = true;
    let mut dry_allow_prod = allow(
        "dry-allow-prod",
        one_match(Match {
            namespaces: vec![exact("prod")],
            ..Match::default()
        }),
    );
    dry_allow_prod.dry_run = true;

    // Only dry-run policies: enforcement sees none.
    let d = evaluate(&[&dry_allow_prod], &from("dev", "x"));
    assert!(d.allowed);
    assert_eq!(d.reason, DecisionReason::NoPolicies);
    let report = d.dry_run.expect("report");
    assert!(!report.allowed);
    assert_eq!(
        report.reason,
        DecisionReason::NoAllowMatched {
            allow_policies: vec!["default/dry-allow-prod".into()]
        }
    );
    assert_eq!(
        report.policies,
        vec![DryRunOutcome {
            policy: "default/dry-allow-prod".into(),
            action: PolicyAction::Allow,
            matched_rule: None,
        }]
    );

    // A matching dry-run DENY next to an enforced ALLOW: still allowed, reported as a deny.
    let enforced = allow("allow-all", vec![Rule::default()]);
    let d = evaluate(&[&enforced, &dry_deny], &from("dev", "x"));
    assert!(d.allowed);
    assert_eq!(
        d.reason,
        DecisionReason::AllowedBy {
            policy: "default/allow-all".into(),
            rule: 0
        }
    );
    let report = d.dry_run.expect("report");
    assert!(!report.allowed);
    assert_eq!(
        report.reason,
        DecisionReason::DeniedBy {
            policy: "default/dry-deny".into(),
            rule: 0
        }
    );
    assert_eq!(report.policies[0].matched_rule, Some(0));

    // An unmatched enforced ALLOW is not rescued by a matching dry-run ALLOW.
    let only_dev = allow(
        "only-dev",
        one_match(Match {
            namespaces: vec![exact("dev")],
            ..Match::default()
        }),
    );
    let d = evaluate(&[&only_dev, &dry_allow_prod], &from("prod", "x"));
    assert!(!d.allowed);
    assert_eq!(
        d.reason,
        DecisionReason::NoAllowMatched {
            allow_policies: vec!["default/only-dev".into()]
        }
    );
    assert!(d.dry_run.expect("report").allowed);
}

#[test]
fn namespace_isolation_table() {
    // In namespace `shop`: allow nothing, then allow the namespace itself. Plus a global DENY
    // for one known-bad workload, which beats the ALLOW.
    let nothing = policy("shop", "allow-nothing", PolicyAction::Allow, vec![]);
    let same_ns = policy(
        "shop",
        "allow-same-namespace",
        PolicyAction::Allow,
        one_match(Match {
            namespaces: vec![exact("shop")],
            ..Match::default()
        }),
    );
    let mut quarantine = policy(
        "istio-system",
        "quarantine",
        PolicyAction::Deny,
        one_match(Match {
            principals: vec![exact("cluster.local/ns/shop/sa/compromised")],
            ..Match::default()
        }),
    );
    quarantine.scope = PolicyScope::Global;
    let policies = [quarantine, nothing, same_ns];

    let same = |reason_policy: &str| DecisionReason::AllowedBy {
        policy: reason_policy.into(),
        rule: 0,
    };
    let no_allow = DecisionReason::NoAllowMatched {
        allow_policies: vec![
            "shop/allow-nothing".into(),
            "shop/allow-same-namespace".into(),
        ],
    };
    let table = [
        (
            "same namespace",
            from("shop", "cart"),
            true,
            same("shop/allow-same-namespace"),
        ),
        (
            "other namespace",
            from("web", "front"),
            false,
            no_allow.clone(),
        ),
        (
            "namespace with the same prefix",
            from("shop-dev", "cart"),
            false,
            no_allow.clone(),
        ),
        ("plaintext", plaintext(), false, no_allow.clone()),
        (
            "quarantined workload of the namespace",
            from("shop", "compromised"),
            false,
            DecisionReason::DeniedBy {
                policy: "istio-system/quarantine".into(),
                rule: 0,
            },
        ),
    ];
    for (case, conn, allowed, reason) in table {
        let d = evaluate(&policies, &conn);
        assert_eq!((d.allowed, &d.reason), (allowed, &reason), "{case}");
    }
}

#[test]
fn decisions_read_well_in_logs() {
    let nothing = allow("allow-nothing", vec![]);
    let mut dry = deny_all("dry");
    dry.dry_run = true;
    let d = evaluate(&[&nothing, &dry], &plaintext());
    assert_eq!(
        d.to_string(),
        "no ALLOW policy matched (default/allow-nothing); with dry-run policies it would deny: \
         denied by DENY policy default/dry (rule 0)"
    );
    assert_eq!(
        plaintext().to_string(),
        "10.0.0.1 (plaintext) -> 10.0.1.1:8080"
    );
    let v6 = Connection {
        dst_ip: ip("fd00::1"),
        ..from("default", "sleep")
    };
    assert_eq!(
        v6.to_string(),
        "10.0.0.1 (spiffe://cluster.local/ns/default/sa/sleep) -> [fd00::1]:8080"
    );
    let json = serde_json::to_value(&d).expect("json");
    assert_eq!(json["reason"]["kind"], "noAllowMatched");
    assert_eq!(json["reason"]["allowPolicies"][0], "default/allow-nothing");
    assert_eq!(json["dryRun"]["policies"][0]["matchedRule"], 0);
    assert_eq!(json["dryRun"]["policies"][0]["action"], "DENY");
}
