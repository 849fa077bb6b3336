//! Wire-format checks of `ambient.waypoint.v1.L7Policy` and `RequestAuthn`: the exact bytes
//! pin the field numbers, and a round trip through `Any` pins the type URLs.

use prost::Message;
use proto::waypoint::{self, l7_policy};

#[test]
fn l7_policy_field_numbers() {
    // scope = 3 (ROOT = 2), action = 6 (AUDIT = 2), dry_run = 7.
    let p = waypoint::L7Policy {
        scope: waypoint::Scope::Root as i32,
        action: l7_policy::Action::Audit as i32,
        dry_run: true,
        ..Default::default()
    };
    assert_eq!(p.encode_to_vec(), [0x18, 0x02, 0x30, 0x02, 0x38, 0x01]);

    // gateways = 4, services = 5.
    let p = waypoint::L7Policy {
        gateways: vec!["w".into()],
        services: vec!["s".into()],
        ..Default::default()
    };
    assert_eq!(p.encode_to_vec(), [0x22, 0x01, b'w', 0x2A, 0x01, b's']);

    // rules = 8: Rule{ from = 1: Source{ request_principals = 7 }, to = 2: Operation{ ports = 3
    // (packed), paths = 7 }, when = 3: Condition{ key = 1, not_values = 3 } }.
    let p = waypoint::L7Policy {
        rules: vec![l7_policy::Rule {
            from: vec![l7_policy::Source {
                request_principals: vec!["r".into()],
                ..Default::default()
            }],
            to: vec![l7_policy::Operation {
                ports: vec![80],
                paths: vec!["/".into()],
                ..Default::default()
            }],
            when: vec![l7_policy::Condition {
                key: "k".into(),
                not_values: vec!["v".into()],
                ..Default::default()
            }],
        }],
        ..Default::default()
    };
    assert_eq!(p.encode_to_vec(), expected_rule());
}

/// The bytes of the rule above, built field by field.
fn expected_rule() -> Vec<u8> {
    let from = [0x0A, 0x03, 0x3A, 0x01, b'r'];
    let to = [0x12, 0x06, 0x1A, 0x01, 0x50, 0x3A, 0x01, b'/'];
    let when = [0x1A, 0x06, 0x0A, 0x01, b'k', 0x1A, 0x01, b'v'];
    let body: Vec<u8> = from.iter().chain(&to).chain(&when).copied().collect();
    let mut out = vec![0x42, u8::try_from(body.len()).expect("short")];
    out.extend(body);
    out
}

#[test]
fn request_authn_field_numbers() {
    let r = waypoint::RequestAuthn {
        jwt_rules: vec![waypoint::JwtRule {
            issuer: "i".into(),
            jwks: "{}".into(),
            from_headers: vec![waypoint::JwtHeader {
                name: "h".into(),
                prefix: "p".into(),
            }],
            forward_original_token: true,
            output_claim_to_headers: vec![waypoint::ClaimToHeader {
                header: "x".into(),
                claim: "c".into(),
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    let rule = [
        0x0A, 0x01, b'i', // issuer = 1
        0x1A, 0x02, b'{', b'}', // jwks = 3
        0x22, 0x06, 0x0A, 0x01, b'h', 0x12, 0x01, b'p', // from_headers = 4
        0x30, 0x01, // forward_original_token = 6
        0x3A, 0x06, 0x0A, 0x01, b'x', 0x12, 0x01, b'c', // output_claim_to_headers = 7
    ];
    let mut expected = vec![0x32, u8::try_from(rule.len()).expect("short")];
    expected.extend(rule);
    assert_eq!(r.encode_to_vec(), expected);
}

#[test]
fn resources_round_trip_through_any_with_their_type_urls() {
    let p = waypoint::L7Policy {
        name: "deny-admin".into(),
        namespace: "shop".into(),
        action: l7_policy::Action::Deny as i32,
        ..Default::default()
    };
    let any = prost_types::Any::from_msg(&p).expect("encode");
    assert_eq!(any.type_url, proto::L7_POLICY_TYPE_URL);
    assert_eq!(any.to_msg::<waypoint::L7Policy>().expect("decode"), p);

    let r = waypoint::RequestAuthn {
        name: "jwt".into(),
        ..Default::default()
    };
    let any = prost_types::Any::from_msg(&r).expect("encode");
    assert_eq!(any.type_url, proto::REQUEST_AUTHN_TYPE_URL);
    assert_eq!(any.to_msg::<waypoint::RequestAuthn>().expect("decode"), r);
}
