//! Properties of [`evaluate`] over generated policies and connections, from small domains so
//! that random conditions do match.

use std::net::IpAddr;

use proptest::prelude::*;

use super::tests::{cidr, deny_all, hits, policy, sa};
use super::*;
use crate::model::StringMatch;

const NAMESPACES: [&str; 3] = ["a", "b", "ab"];
const ACCOUNTS: [&str; 2] = ["x", "y"];
const IPS: [&str; 6] = [
    "10.0.0.1",
    "10.0.0.2",
    "10.0.1.1",
    "fd00::1",
    "fd00::2",
    "fd00:1::1",
];
const CIDRS: [&str; 8] = [
    "10.0.0.1/32",
    "10.0.0.0/30",
    "10.0.0.0/16",
    "0.0.0.0/0",
    "fd00::1/128",
    "fd00::/64",
    "::/0",
    "10.0.1.1",
];
const PORTS: [u16; 3] = [80, 443, 8080];

fn any_identity() -> impl Strategy<Value = Option<Identity>> {
    let td = prop::sample::select(vec!["cluster.local", "other.td"]);
    let ns = prop::sample::select(NAMESPACES.to_vec());
    let sa = prop::sample::select(ACCOUNTS.to_vec());
    prop::option::weighted(
        0.8,
        (td, ns, sa).prop_map(|(td, ns, sa)| Identity::new(td, ns, sa).expect("identity")),
    )
}

fn any_connection() -> impl Strategy<Value = Connection> {
    let ip = || prop::sample::select(IPS.to_vec()).prop_map(|s| s.parse::<IpAddr>().expect("ip"));
    (
        any_identity(),
        ip(),
        ip(),
        prop::sample::select(PORTS.to_vec()),
    )
        .prop_map(|(src_identity, src_ip, dst_ip, dst_port)| Connection {
            src_identity,
            src_ip,
            dst_ip,
            dst_port,
        })
}

fn any_string_match(values: Vec<String>) -> impl Strategy<Value = StringMatch> {
    let v = prop::sample::select(values);
    prop_oneof![
        v.clone().prop_map(StringMatch::Exact),
        v.clone()
            .prop_map(|s| StringMatch::Prefix(s[..1].to_string())),
        v.prop_map(|s| StringMatch::Suffix(s[s.len() - 1..].to_string())),
        Just(StringMatch::Presence),
    ]
}

/// Mostly no values (so that random matches do match sometimes), else one or two.
fn few<T: std::fmt::Debug + Clone>(s: impl Strategy<Value = T>) -> impl Strategy<Value = Vec<T>> {
    prop_oneof![4 => Just(Vec::new()), 1 => prop::collection::vec(s, 1..=2)]
}

fn any_match() -> impl Strategy<Value = Match> {
    let ns = || any_string_match(NAMESPACES.iter().map(|s| s.to_string()).collect()).boxed();
    let principals = || {
        let all = NAMESPACES
            .iter()
            .flat_map(|ns| {
                ACCOUNTS
                    .iter()
                    .map(move |sa| format!("cluster.local/ns/{ns}/sa/{sa}"))
            })
            .collect();
        any_string_match(all).boxed()
    };
    let accounts = || {
        (
            prop::sample::select(NAMESPACES.to_vec()),
            prop::sample::select(ACCOUNTS.to_vec()),
        )
            .prop_map(|(ns, name)| sa(ns, name))
            .boxed()
    };
    let cidrs = || prop::sample::select(CIDRS.to_vec()).prop_map(cidr).boxed();
    let ports = || prop::sample::select(PORTS.to_vec()).boxed();
    (
        (few(ns()), few(ns()), few(principals()), few(principals())),
        (few(cidrs()), few(cidrs()), few(cidrs()), few(cidrs())),
        (few(ports()), few(ports()), few(accounts()), few(accounts())),
    )
        .prop_map(
            |((n, nn, p, np), (s, ns, d, nd), (dp, ndp, sa, nsa))| Match {
                namespaces: n,
                not_namespaces: nn,
                principals: p,
                not_principals: np,
                source_ips: s,
                not_source_ips: ns,
                destination_ips: d,
                not_destination_ips: nd,
                destination_ports: dp,
                not_destination_ports: ndp,
                service_accounts: sa,
                not_service_accounts: nsa,
            },
        )
}

fn any_rules() -> impl Strategy<Value = Vec<Rule>> {
    let clause = prop::collection::vec(any_match(), 0..=2).prop_map(|matches| Clause { matches });
    let rule = prop::collection::vec(clause, 0..=2).prop_map(|clauses| Rule { clauses });
    prop::collection::vec(rule, 0..=2)
}

fn any_policy_with(action: impl Strategy<Value = PolicyAction>) -> impl Strategy<Value = Policy> {
    (0u32..1000, action, any_rules(), prop::bool::weighted(0.2)).prop_map(
        |(n, action, rules, dry_run)| Policy {
            dry_run,
            ..policy("p", &format!("p{n}"), action, rules)
        },
    )
}

fn any_action() -> impl Strategy<Value = PolicyAction> {
    prop_oneof![Just(PolicyAction::Allow), Just(PolicyAction::Deny)]
}

fn any_policies() -> impl Strategy<Value = Vec<Policy>> {
    prop::collection::vec(any_policy_with(any_action()), 0..=4)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn prop_a_deny_all_policy_denies_every_connection(
        mut policies in any_policies(),
        conn in any_connection(),
    ) {
        policies.push(deny_all("zz-deny-all"));
        prop_assert!(!evaluate(&policies, &conn).allowed);
    }

    #[test]
    fn prop_adding_a_deny_never_turns_a_deny_into_an_allow(
        mut policies in any_policies(),
        extra in any_policy_with(Just(PolicyAction::Deny)),
        conn in any_connection(),
    ) {
        let before = evaluate(&policies, &conn).allowed;
        policies.push(extra);
        let after = evaluate(&policies, &conn).allowed;
        prop_assert!(before || !after);
    }

    #[test]
    fn prop_adding_a_matching_allow_never_turns_an_allow_into_a_deny(
        mut policies in any_policies(),
        mut extra in any_policy_with(Just(PolicyAction::Allow)),
        conn in any_connection(),
    ) {
        // Make it enforced and matching: add a rule that holds for this connection.
        extra.dry_run = false;
        extra.rules.push(Rule {
            clauses: vec![Clause {
                matches: vec![Match {
                    destination_ports: vec![conn.dst_port],
                    source_ips: vec![Cidr::host(conn.src_ip)],
                    ..Match::default()
                }],
            }],
        });
        prop_assert!(matching_rule(&extra, &conn).is_some());
        let before = evaluate(&policies, &conn).allowed;
        policies.push(extra);
        prop_assert!(!before || evaluate(&policies, &conn).allowed);
    }

    #[test]
    fn prop_with_only_allow_policies_allowed_iff_some_rule_matches(
        policies in prop::collection::vec(any_policy_with(Just(PolicyAction::Allow)), 1..=4),
        conn in any_connection(),
    ) {
        let enforced: Vec<&Policy> = policies.iter().filter(|p| !p.dry_run).collect();
        prop_assume!(!enforced.is_empty());
        let any = enforced.iter().any(|p| matching_rule(p, &conn).is_some());
        prop_assert_eq!(evaluate(&policies, &conn).allowed, any);
    }

    #[test]
    fn prop_dry_run_policies_never_change_the_verdict(
        policies in any_policies(),
        conn in any_connection(),
    ) {
        let enforced: Vec<&Policy> = policies.iter().filter(|p| !p.dry_run).collect();
        let with = evaluate(&policies, &conn);
        let without = evaluate(&enforced, &conn);
        prop_assert_eq!(with.allowed, without.allowed);
        prop_assert_eq!(&with.reason, &without.reason);
        // The dry-run report is the verdict with every policy enforced.
        let all_enforced: Vec<Policy> = policies
            .iter()
            .map(|p| Policy { dry_run: false, ..p.clone() })
            .collect();
        let promoted = evaluate(&all_enforced, &conn);
        match with.dry_run {
            Some(report) => {
                prop_assert_eq!(report.allowed, promoted.allowed);
                prop_assert_eq!(report.reason, promoted.reason);
            }
            None => prop_assert!(policies.iter().all(|p| !p.dry_run)),
        }
    }

    #[test]
    fn prop_the_verdict_does_not_depend_on_policy_order(
        policies in any_policies(),
        conn in any_connection(),
    ) {
        let mut reversed = policies.clone();
        reversed.reverse();
        prop_assert_eq!(
            evaluate(&policies, &conn).allowed,
            evaluate(&reversed, &conn).allowed
        );
    }

    #[test]
    fn prop_plaintext_is_judged_only_by_addresses_and_negations(
        m in any_match(),
        conn in any_connection(),
    ) {
        // Dropping every identity condition a plaintext connection cannot meet, and every
        // negated one it always meets, leaves the address conditions deciding.
        let conn = Connection { src_identity: None, ..conn };
        let needs_identity = !m.namespaces.is_empty()
            || !m.principals.is_empty()
            || !m.service_accounts.is_empty();
        let addresses_only = Match {
            source_ips: m.source_ips.clone(),
            not_source_ips: m.not_source_ips.clone(),
            destination_ips: m.destination_ips.clone(),
            not_destination_ips: m.not_destination_ips.clone(),
            destination_ports: m.destination_ports.clone(),
            not_destination_ports: m.not_destination_ports.clone(),
            ..Match::default()
        };
        prop_assert_eq!(hits(&m, &conn), !needs_identity && hits(&addresses_only, &conn));
    }
}
