//! JWT verification and RequestAuthentication: tokens signed here with ring (ES256, Ed25519,
//! and RS256 with a fixed test key) checked against inline JWKS.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
use serde_json::json;

use super::jwt::{Jwks, JwtError, CLOCK_SKEW_SECS};
use super::*;

/// A 2048-bit RSA private key (PKCS#1 DER) made for these tests only.
const RSA_DER: &[u8] = include_bytes!("testdata/rsa2048.der");
const ISSUER: &str = "https://idp.example";
const NOW: u64 = 1_800_000_000;

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

enum Signer {
    Es256(EcdsaKeyPair),
    Rs256(RsaKeyPair),
    Ed(Ed25519KeyPair),
}

impl Signer {
    fn es256() -> Self {
        let rng = SystemRandom::new();
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).expect("keygen");
        Signer::Es256(EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).expect("key"))
    }

    fn rs256() -> Self {
        Signer::Rs256(RsaKeyPair::from_der(RSA_DER).expect("rsa key"))
    }

    fn ed25519() -> Self {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("keygen");
        Signer::Ed(Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("key"))
    }

    fn alg(&self) -> &'static str {
        match self {
            Signer::Es256(_) => "ES256",
            Signer::Rs256(_) => "RS256",
            Signer::Ed(_) => "EdDSA",
        }
    }

    fn jwk(&self, kid: &str) -> serde_json::Value {
        match self {
            Signer::Es256(k) => {
                let point = k.public_key().as_ref();
                json!({"kty": "EC", "crv": "P-256", "kid": kid, "x": b64(&point[1..33]), "y": b64(&point[33..])})
            }
            Signer::Rs256(k) => {
                let c = signature::RsaPublicKeyComponents::<Vec<u8>>::from(k.public());
                json!({"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig", "n": b64(&c.n), "e": b64(&c.e)})
            }
            Signer::Ed(k) => {
                json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": b64(k.public_key().as_ref())})
            }
        }
    }

    fn sign(&self, kid: &str, claims: &serde_json::Value) -> String {
        let header = json!({"alg": self.alg(), "typ": "JWT", "kid": kid});
        let signed = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let rng = SystemRandom::new();
        let sig = match self {
            Signer::Es256(k) => k
                .sign(&rng, signed.as_bytes())
                .expect("sign")
                .as_ref()
                .to_vec(),
            Signer::Rs256(k) => {
                let mut sig = vec![0; k.public().modulus_len()];
                k.sign(
                    &signature::RSA_PKCS1_SHA256,
                    &rng,
                    signed.as_bytes(),
                    &mut sig,
                )
                .expect("sign");
                sig
            }
            Signer::Ed(k) => k.sign(signed.as_bytes()).as_ref().to_vec(),
        };
        format!("{signed}.{}", b64(&sig))
    }
}

fn claims() -> serde_json::Value {
    json!({"iss": ISSUER, "sub": "alice", "aud": "shop", "exp": NOW + 600, "nbf": NOW - 10, "azp": "web", "groups": ["admin"]})
}

fn rule(signers: &[(&Signer, &str)]) -> JwtRule {
    let keys: Vec<_> = signers.iter().map(|(s, kid)| s.jwk(kid)).collect();
    JwtRule {
        issuer: ISSUER.into(),
        audiences: vec![],
        jwks: Jwks::parse(&json!({ "keys": keys }).to_string()).expect("jwks"),
        from_headers: vec![],
        from_params: vec![],
        forward_original_token: false,
        output_claim_to_headers: vec![],
    }
}

fn authn(rules: Vec<JwtRule>) -> RequestAuthn {
    RequestAuthn {
        name: "jwt".into(),
        namespace: "shop".into(),
        target: L7Target::default(),
        jwt_rules: rules,
    }
}

fn bearer(token: &str) -> http::HeaderMap {
    let mut h = http::HeaderMap::new();
    h.insert(
        "authorization",
        format!("Bearer {token}").parse().expect("value"),
    );
    h
}

fn check(a: &RequestAuthn, headers: &http::HeaderMap) -> Result<Authenticated, JwtError> {
    authenticate(std::slice::from_ref(a), headers, None, NOW)
}

#[test]
fn valid_tokens_of_each_algorithm_give_the_request_principal_and_claims() {
    for signer in [Signer::es256(), Signer::rs256(), Signer::ed25519()] {
        let a = authn(vec![rule(&[(&signer, "k1")])]);
        let alg = signer.alg();
        let out = check(&a, &bearer(&signer.sign("k1", &claims()))).expect(alg);
        let auth = out.auth.expect("principal");
        assert_eq!(auth.principal, "https://idp.example/alice");
        assert_eq!(auth.audiences, ["shop"]);
        assert_eq!(auth.presenter.as_deref(), Some("web"));
        assert_eq!(auth.claims["groups"], json!(["admin"]));
        assert_eq!(
            out.remove,
            [TokenLocation::Header(http::header::AUTHORIZATION)]
        );
    }
}

#[test]
fn no_token_means_no_principal_not_an_error() {
    let signer = Signer::es256();
    let a = authn(vec![rule(&[(&signer, "k1")])]);
    let out = check(&a, &http::HeaderMap::new()).expect("no token is fine");
    assert_eq!(out, Authenticated::default());
    // A header without the prefix is not a token either.
    let mut h = http::HeaderMap::new();
    h.insert(
        "authorization",
        "Basic dXNlcjpwdw==".parse().expect("value"),
    );
    assert!(check(&a, &h).expect("not a bearer").auth.is_none());
}

#[test]
fn expired_and_not_yet_valid_tokens_are_refused_beyond_the_skew() {
    let signer = Signer::es256();
    let a = authn(vec![rule(&[(&signer, "k1")])]);
    let with = |k: &str, v: u64| {
        let mut c = claims();
        c[k] = json!(v);
        bearer(&signer.sign("k1", &c))
    };
    assert!(matches!(
        check(&a, &with("exp", NOW - CLOCK_SKEW_SECS - 1)),
        Err(JwtError::Expired { .. })
    ));
    assert!(check(&a, &with("exp", NOW - CLOCK_SKEW_SECS + 1)).is_ok());
    assert!(matches!(
        check(&a, &with("nbf", NOW + CLOCK_SKEW_SECS + 1)),
        Err(JwtError::NotYetValid { .. })
    ));
    assert!(check(&a, &with("nbf", NOW + CLOCK_SKEW_SECS - 1)).is_ok());
}

#[test]
fn tampered_unsigned_and_foreign_tokens_are_refused() {
    let signer = Signer::es256();
    let a = authn(vec![rule(&[(&signer, "k1")])]);
    let token = signer.sign("k1", &claims());
    let parts: Vec<&str> = token.split('.').collect();
    let mut forged = claims();
    forged["sub"] = json!("admin");
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64(forged.to_string().as_bytes()),
        parts[2]
    );
    assert_eq!(
        check(&a, &bearer(&tampered)).err(),
        Some(JwtError::BadSignature)
    );

    let none = format!("{}.{}.", b64(br#"{"alg":"none"}"#), parts[1]);
    assert_eq!(
        check(&a, &bearer(&none)).err(),
        Some(JwtError::UnsupportedAlgorithm("none".into()))
    );
    let hs = format!("{}.{}.{}", b64(br#"{"alg":"HS256"}"#), parts[1], parts[2]);
    assert!(matches!(
        check(&a, &bearer(&hs)),
        Err(JwtError::UnsupportedAlgorithm(_))
    ));

    let other = Signer::es256();
    assert_eq!(
        check(&a, &bearer(&other.sign("k1", &claims()))).err(),
        Some(JwtError::BadSignature)
    );
    assert!(matches!(
        check(&a, &bearer(&other.sign("k9", &claims()))),
        Err(JwtError::NoKey { .. })
    ));

    let mut c = claims();
    c["iss"] = json!("https://evil.example");
    assert_eq!(
        check(&a, &bearer(&signer.sign("k1", &c))).err(),
        Some(JwtError::UnknownIssuer("https://evil.example".into()))
    );
    let malformed = check(&a, &bearer("not-a-jwt")).expect_err("malformed");
    assert!(matches!(malformed, JwtError::Malformed(_)));
    assert!(malformed
        .response_body()
        .starts_with("Jwt is not in the form"));
}

#[test]
fn audiences_must_intersect_when_required() {
    let signer = Signer::rs256();
    let mut r = rule(&[(&signer, "k1")]);
    r.audiences = vec!["other".into(), "shop".into()];
    let a = authn(vec![r.clone()]);
    assert!(check(&a, &bearer(&signer.sign("k1", &claims()))).is_ok());
    r.audiences = vec!["other".into()];
    let a = authn(vec![r]);
    assert!(matches!(
        check(&a, &bearer(&signer.sign("k1", &claims()))),
        Err(JwtError::Audience { .. })
    ));
}

#[test]
fn tokens_are_found_where_the_rule_says_and_claims_copied_to_headers() {
    let signer = Signer::es256();
    let token = signer.sign("k1", &claims());
    let mut r = rule(&[(&signer, "k1")]);
    r.from_headers = vec![JwtHeader {
        name: "x-jwt".into(),
        prefix: "".into(),
    }];
    r.from_params = vec!["token".into()];
    r.forward_original_token = true;
    r.output_claim_to_headers = vec![
        ClaimToHeader {
            header: "x-sub".into(),
            claim: "sub".into(),
        },
        ClaimToHeader {
            header: "x-groups".into(),
            claim: "groups".into(),
        },
    ];
    let a = authn(vec![r]);
    let mut h = http::HeaderMap::new();
    h.insert("x-jwt", token.parse().expect("value"));
    let out = check(&a, &h).expect("header token");
    assert!(out.auth.is_some());
    assert!(out.remove.is_empty(), "forwardOriginalToken keeps it");
    assert_eq!(out.add_headers[0].1, "alice");
    assert_eq!(out.add_headers[1].1, r#"["admin"]"#);
    // The default Authorization header is not looked at once a place is named.
    assert!(check(&a, &bearer(&token)).expect("ignored").auth.is_none());
    let query = format!("a=1&token={token}");
    let out = authenticate(&[a], &http::HeaderMap::new(), Some(&query), NOW).expect("param token");
    assert!(out.auth.is_some());

    // Without named places: the access_token parameter works too.
    let d = authn(vec![rule(&[(&signer, "k1")])]);
    let query = format!("access_token={token}");
    let out =
        authenticate(&[d], &http::HeaderMap::new(), Some(&query), NOW).expect("default param");
    assert_eq!(out.remove, [TokenLocation::Param("access_token".into())]);
}

#[test]
fn a_token_picks_the_rule_of_its_issuer() {
    let (s1, s2) = (Signer::es256(), Signer::rs256());
    let mut r2 = rule(&[(&s2, "k2")]);
    r2.issuer = "https://other".into();
    let a = authn(vec![rule(&[(&s1, "k1")]), r2]);
    let mut c = claims();
    c["iss"] = json!("https://other");
    let out = check(&a, &bearer(&s2.sign("k2", &c))).expect("second rule");
    assert_eq!(out.auth.expect("auth").principal, "https://other/alice");

    // A rule that looks elsewhere does not accept a token found in the Authorization header.
    let mut r2 = rule(&[(&s2, "k2")]);
    r2.issuer = "https://other".into();
    r2.from_headers = vec![JwtHeader {
        name: "x-other".into(),
        prefix: String::new(),
    }];
    let a = authn(vec![rule(&[(&s1, "k1")]), r2]);
    assert_eq!(
        check(&a, &bearer(&s2.sign("k2", &c))).err(),
        Some(JwtError::UnknownIssuer("https://other".into()))
    );
}

#[test]
fn jwks_and_request_authn_errors_name_the_field() {
    for (jwks, want) in [
        ("nope", "not a JSON Web Key Set"),
        (r#"{"keys": []}"#, "no signing key"),
        (
            r#"{"keys": [{"kty": "oct", "k": "abc"}]}"#,
            "keys[0]: unsupported key type \"oct\"",
        ),
        (
            r#"{"keys": [{"kty": "RSA", "e": "AQAB"}]}"#,
            "keys[0]: n is required",
        ),
        (
            r#"{"keys": [{"kty": "RSA", "n": "AQAB", "e": "AQAB"}]}"#,
            "shorter than 2048 bits",
        ),
        (
            r#"{"keys": [{"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}]}"#,
            "32 bytes",
        ),
    ] {
        let err = Jwks::parse(jwks).expect_err(jwks);
        assert!(err.contains(want), "{jwks}: {err}");
    }
    let signer = Signer::es256();
    let good = authn(vec![rule(&[(&signer, "k1")])]);
    let wire = proto::waypoint::RequestAuthn::from(&good);
    assert_eq!(RequestAuthn::try_from(wire.clone()), Ok(good.clone()));
    let json = serde_json::to_value(&good).expect("json");
    assert_eq!(
        serde_json::from_value::<RequestAuthn>(json).expect("back"),
        good
    );
    type Mutate = fn(&mut proto::waypoint::RequestAuthn);
    let cases: [(Mutate, &str); 5] = [
        (|w| w.jwt_rules[0].jwks = "{}".into(), "jwt_rules[0].jwks"),
        (|w| w.jwt_rules[0].issuer.clear(), "jwt_rules[0].issuer"),
        (
            |w| {
                w.jwt_rules[0].from_headers = vec![proto::waypoint::JwtHeader {
                    name: "bad header".into(),
                    prefix: String::new(),
                }]
            },
            "jwt_rules[0].from_headers[0].name",
        ),
        (|w| w.scope = 1, "services"),
        (|w| w.name.clear(), "name"),
    ];
    for (mutate, field) in cases {
        let mut w = wire.clone();
        mutate(&mut w);
        assert_eq!(RequestAuthn::try_from(w).expect_err(field).field(), field);
    }
}

#[test]
fn check_authenticates_then_lets_policies_use_the_request_principal() {
    use crate::store::{Batch, Store};
    let signer = Signer::es256();
    let mut requires_jwt = L7Policy {
        name: "require-jwt".into(),
        namespace: "shop".into(),
        target: L7Target::default(),
        action: L7Action::Allow,
        dry_run: false,
        rules: vec![L7Rule {
            from: vec![L7Source {
                request_principals: vec![istio_string_match("https://idp.example/*")],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    requires_jwt.target.gateways = vec!["waypoint".into()];
    let store = Store::new();
    let mut b = Batch::new();
    b.upsert_l7_policy(requires_jwt)
        .upsert_request_authn(authn(vec![rule(&[(&signer, "k1")])]));
    store.apply(b);
    let at = WaypointContext {
        namespace: "shop",
        name: "waypoint",
        service: None,
    };
    let request = |headers: http::HeaderMap| L7Request {
        source_identity: None,
        source_ip: "10.0.0.1".parse().expect("ip"),
        remote_ip: None,
        destination_ip: None,
        destination_port: 80,
        host: "web".into(),
        method: "GET".into(),
        path: "/".into(),
        headers,
        auth: None,
    };

    let mut without = request(http::HeaderMap::new());
    let checked = store
        .l7_check(&at, &mut without, None, NOW)
        .expect("no token is not an error");
    assert!(!checked.decision.allowed, "{}", checked.decision);
    assert_eq!(checked.policies, ["shop/require-jwt"]);

    let mut with = request(bearer(&signer.sign("k1", &claims())));
    let checked = store
        .l7_check(&at, &mut with, None, NOW)
        .expect("valid token");
    assert!(checked.decision.allowed, "{}", checked.decision);
    assert_eq!(
        with.auth.map(|a| a.principal).as_deref(),
        Some("https://idp.example/alice")
    );

    let mut expired = request(bearer(&signer.sign("k1", &claims())));
    let err = store
        .l7_check(&at, &mut expired, None, NOW + 3600)
        .expect_err("expired");
    assert_eq!(err.response_body(), "Jwt is expired");
}
