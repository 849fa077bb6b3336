//! The verdict over a set of policies.

use super::*;

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
