//! What a waypoint reads from an HTTP request before authorizing it: the path (normalised for
//! policy), bearer tokens (decoded and checked against a key set) and `when` keys of policies.
//!
//! Never panics; the normalised path starts with `/`, has no query and is a fixed point; no
//! token made of fuzz bytes authenticates against a real key set; an accepted condition key
//! formats back to a key that parses to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh::l7authz::jwt::{Jwks, UnverifiedToken};
use mesh::l7authz::{normalize_path, ConditionKey};

/// The P-256 public key of RFC 7517 appendix A.1.
const JWKS: &str = r#"{"keys":[{"kty":"EC","crv":"P-256","x":"MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4","y":"4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM"}]}"#;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };

    let path = normalize_path(s);
    assert!(path.starts_with('/'), "{path:?}");
    assert!(!path.contains('?'), "{path:?}");
    assert_eq!(normalize_path(&path), path, "normalising is idempotent");

    if let Ok(token) = UnverifiedToken::decode(s) {
        let jwks = Jwks::parse(JWKS).expect("the fixed key set parses");
        assert!(
            token.verify(&jwks, &[], 0).is_err(),
            "a fuzzed token never verifies"
        );
    }
    let _ = Jwks::parse(s);

    if let Ok(key) = s.parse::<ConditionKey>() {
        let text = key.to_string();
        assert_eq!(text.parse::<ConditionKey>().as_ref(), Ok(&key));
    }
});
