//! Authorization end to end without sockets: policies as istiod sends them on the wire, converted
//! to the model, stored, gathered for a destination with `Store::policies_for` and evaluated.

#![allow(clippy::expect_used)]

use mesh::model::{Policy, Workload};
use mesh::rbac::{evaluate, Connection, Decision, DecisionReason};
use mesh::store::{Batch, Store};
use mesh::Identity;
use proto::security::{
    string_match::MatchType, Action, Authorization, Clause, Match, Rule, Scope, StringMatch,
};

fn exact(s: &str) -> StringMatch {
    StringMatch {
        match_type: Some(MatchType::Exact(s.into())),
    }
}

fn prefix(s: &str) -> StringMatch {
    StringMatch {
        match_type: Some(MatchType::Prefix(s.into())),
    }
}

fn presence() -> StringMatch {
    StringMatch {
        match_type: Some(MatchType::Presence(())),
    }
}

/// One rule whose clauses each hold one match.
fn rule(matches: Vec<Match>) -> Rule {
    Rule {
        clauses: matches
            .into_iter()
            .map(|m| Clause { matches: vec![m] })
            .collect(),
    }
}

fn wire(ns: &str, name: &str, scope: Scope, action: Action, rules: Vec<Rule>) -> Policy {
    Policy::try_from(Authorization {
        name: name.into(),
        namespace: ns.into(),
        scope: scope as i32,
        action: action as i32,
        rules,
        dry_run: false,
    })
    .expect("valid policy")
}

fn workload(ns: &str, name: &str, ip: &str, policies: &[&str]) -> Workload {
    Workload::try_from(proto::workload::Workload {
        uid: format!("Kubernetes//v1/Pod/{ns}/{name}"),
        name: name.into(),
        namespace: ns.into(),
        service_account: name.into(),
        addresses: vec![ip
            .parse::<std::net::Ipv4Addr>()
            .expect("ip")
            .octets()
            .to_vec()],
        authorization_policies: policies.iter().map(|p| p.to_string()).collect(),
        ..Default::default()
    })
    .expect("valid workload")
}

/// The mesh: namespace `shop` isolated (allow nothing + allow itself), the `cart` workload
/// also open to `web` on 8080 and STRICT, a global quarantine, and an unrelated namespace's
/// policy.
fn store() -> Store {
    let mut b = Batch::new();
    b.upsert_policy(wire(
        "istio-system",
        "quarantine",
        Scope::Global,
        Action::Deny,
        vec![rule(vec![Match {
            principals: vec![prefix("cluster.local/ns/legacy/")],
            ..Default::default()
        }])],
    ))
    .upsert_policy(wire(
        "shop",
        "allow-nothing",
        Scope::Namespace,
        Action::Allow,
        vec![],
    ))
    .upsert_policy(wire(
        "shop",
        "allow-same-namespace",
        Scope::Namespace,
        Action::Allow,
        vec![rule(vec![Match {
            namespaces: vec![exact("shop")],
            ..Default::default()
        }])],
    ))
    .upsert_policy(wire(
        "shop",
        "allow-web-to-cart",
        Scope::WorkloadSelector,
        Action::Allow,
        // `from: namespaces [web]` AND `to: ports [8080]`.
        vec![rule(vec![
            Match {
                namespaces: vec![exact("web")],
                ..Default::default()
            },
            Match {
                destination_ports: vec![8080],
                ..Default::default()
            },
        ])],
    ))
    .upsert_policy(wire(
        "istio-system",
        "istio_converted_static_strict",
        Scope::WorkloadSelector,
        Action::Deny,
        vec![rule(vec![Match {
            not_principals: vec![presence()],
            ..Default::default()
        }])],
    ))
    .upsert_policy(wire(
        "web",
        "allow-nothing",
        Scope::Namespace,
        Action::Allow,
        vec![],
    ))
    .upsert_workload(workload(
        "shop",
        "cart",
        "10.0.1.1",
        &[
            "shop/allow-web-to-cart",
            "istio-system/istio_converted_static_strict",
        ],
    ))
    .upsert_workload(workload("shop", "db", "10.0.1.2", &[]))
    .upsert_workload(workload("web", "front", "10.0.2.1", &[]));
    let store = Store::new();
    store.apply(b);
    store
}

fn check(store: &Store, dst: &str, src: Option<(&str, &str)>, port: u16) -> Decision {
    let w = store.workload(dst).expect("destination");
    let conn = Connection {
        src_identity: src.map(|(ns, sa)| Identity::new("cluster.local", ns, sa).expect("id")),
        src_ip: "10.0.9.9".parse().expect("ip"),
        dst_ip: w.addresses[0],
        dst_port: port,
    };
    evaluate(&store.policies_for(&w), &conn)
}

#[test]
fn rbac_decides_per_destination_with_the_policies_in_scope() {
    let store = store();
    let cart = "Kubernetes//v1/Pod/shop/cart";
    let db = "Kubernetes//v1/Pod/shop/db";
    let front = "Kubernetes//v1/Pod/web/front";
    let allowed_by = |p: &str| DecisionReason::AllowedBy {
        policy: p.into(),
        rule: 0,
    };
    let denied_by = |p: &str| DecisionReason::DeniedBy {
        policy: p.into(),
        rule: 0,
    };
    let shop_allows = |extra: &[&str]| DecisionReason::NoAllowMatched {
        allow_policies: ["shop/allow-nothing", "shop/allow-same-namespace"]
            .iter()
            .chain(extra)
            .map(|s| s.to_string())
            .collect(),
    };
    let table = [
        (
            "same namespace",
            db,
            Some(("shop", "cart")),
            5432,
            true,
            allowed_by("shop/allow-same-namespace"),
        ),
        (
            "other namespace to an isolated one",
            db,
            Some(("web", "front")),
            5432,
            false,
            shop_allows(&[]),
        ),
        (
            "selector policy opens cart to web on 8080",
            cart,
            Some(("web", "front")),
            8080,
            true,
            allowed_by("shop/allow-web-to-cart"),
        ),
        (
            "but not on another port",
            cart,
            Some(("web", "front")),
            9090,
            false,
            shop_allows(&["shop/allow-web-to-cart"]),
        ),
        (
            "STRICT on cart denies plaintext first",
            cart,
            None,
            8080,
            false,
            denied_by("istio-system/istio_converted_static_strict"),
        ),
        (
            "plaintext to db meets only the namespace isolation",
            db,
            None,
            5432,
            false,
            shop_allows(&[]),
        ),
        (
            "global quarantine beats the namespace allow",
            db,
            Some(("legacy", "batch")),
            5432,
            false,
            denied_by("istio-system/quarantine"),
        ),
        (
            "web's own allow-nothing applies to web only",
            front,
            Some(("shop", "cart")),
            80,
            false,
            DecisionReason::NoAllowMatched {
                allow_policies: vec!["web/allow-nothing".into()],
            },
        ),
    ];
    for (case, dst, src, port, allowed, reason) in table {
        let d = check(&store, dst, src, port);
        assert_eq!((d.allowed, &d.reason), (allowed, &reason), "{case}");
        assert_eq!(d.dry_run, None, "{case}");
    }
}

#[test]
fn rbac_reopens_a_namespace_when_its_isolation_is_removed() {
    let store = store();
    let db = "Kubernetes//v1/Pod/shop/db";
    assert!(!check(&store, db, Some(("web", "front")), 5432).allowed);
    let mut b = Batch::new();
    b.remove_policy("shop/allow-nothing")
        .remove_policy("shop/allow-same-namespace");
    store.apply(b);
    let d = check(&store, db, Some(("web", "front")), 5432);
    assert!(d.allowed);
    assert_eq!(d.reason, DecisionReason::NoAllowPolicies);
}
