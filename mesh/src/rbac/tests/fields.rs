//! One policy field at a time.

use super::*;

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
