//! How matches, clauses, rules and policies combine.

use super::*;

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
