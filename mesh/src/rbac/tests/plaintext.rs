//! Connections without a verified identity.

use super::*;

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
