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

mod fields;
mod plaintext;
mod structure;
mod verdicts;
