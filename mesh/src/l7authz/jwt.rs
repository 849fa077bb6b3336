//! JSON Web Tokens (RFC 7519) in JWS compact form, checked against an inline JSON Web Key Set
//! (RFC 7517) with `ring`, the workspace's crypto library.
//!
//! Algorithms: RS256/384/512, PS256/384/512, ES256, ES384 and EdDSA (Ed25519). `none` and the
//! symmetric HS* are refused. A token is valid when its signature verifies with a key of the
//! set (the one its `kid` names, or else any key of a fitting type), its `exp` is not past and
//! its `nbf` not ahead (each with [`CLOCK_SKEW_SECS`] of slack), its `iss` is the expected
//! issuer and, when audiences are required, its `aud` holds one of them.
//!
//! `jsonwebtoken` (the usual crate) is not used: its releases since 10 offer only the
//! aws-lc-rs or RustCrypto backends, not ring, and verifying a JWS takes little code.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde::Deserialize;
use serde_json::{Map, Value};

/// Slack allowed on `exp` and `nbf`, in seconds (as Envoy's default).
pub const CLOCK_SKEW_SECS: u64 = 60;

/// Why a token was refused: the request gets 401.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Not three base64url parts of JSON.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// The `alg` is not one we verify.
    #[error("unsupported algorithm {0:?}")]
    UnsupportedAlgorithm(String),
    /// No JWT rule in scope has the token's issuer.
    #[error("issuer {0:?} is not accepted here")]
    UnknownIssuer(String),
    /// No key of the set fits the token's `kid` and algorithm.
    #[error("no key in the JWKS fits (kid {kid:?}, alg {alg})")]
    NoKey {
        /// The token's `kid`, if any.
        kid: Option<String>,
        /// The token's algorithm.
        alg: String,
    },
    /// The signature does not verify.
    #[error("signature does not verify")]
    BadSignature,
    /// `exp` is past.
    #[error("token expired at {exp} (now {now})")]
    Expired {
        /// The `exp` claim.
        exp: u64,
        /// The time of the check.
        now: u64,
    },
    /// `nbf` is ahead.
    #[error("token not valid before {nbf} (now {now})")]
    NotYetValid {
        /// The `nbf` claim.
        nbf: u64,
        /// The time of the check.
        now: u64,
    },
    /// The `aud` holds none of the required audiences.
    #[error("audiences {got:?} include none of {want:?}")]
    Audience {
        /// The token's audiences.
        got: Vec<String>,
        /// The accepted ones.
        want: Vec<String>,
    },
}

impl JwtError {
    /// The body of the 401 answer, in Envoy's words (so runbooks carry over).
    pub fn response_body(&self) -> &'static str {
        match self {
            JwtError::Malformed(_) => "Jwt is not in the form of Header.Payload.Signature",
            JwtError::UnsupportedAlgorithm(_) => "Jwt verification fails",
            JwtError::UnknownIssuer(_) => "Jwt issuer is not configured",
            JwtError::NoKey { .. } => "Jwks doesn't have key to match kid or alg from Jwt",
            JwtError::BadSignature => "Jwt verification fails",
            JwtError::Expired { .. } => "Jwt is expired",
            JwtError::NotYetValid { .. } => "Jwt not yet valid",
            JwtError::Audience { .. } => "Audiences in Jwt are not allowed",
        }
    }
}

/// A checked JSON Web Key Set, keeping its JSON text (what the control plane sent).
#[derive(Debug, Clone)]
pub struct Jwks {
    json: String,
    keys: Vec<Jwk>,
}

impl PartialEq for Jwks {
    fn eq(&self, other: &Self) -> bool {
        self.json == other.json
    }
}

impl Eq for Jwks {}

#[derive(Debug, Clone)]
struct Jwk {
    kid: Option<String>,
    alg: Option<String>,
    key: KeyMaterial,
}

#[derive(Debug, Clone)]
enum KeyMaterial {
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// Uncompressed point `04 || x || y`.
    Ec {
        curve: Curve,
        point: Vec<u8>,
    },
    Ed25519(Vec<u8>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Curve {
    P256,
    P384,
}

#[derive(Deserialize)]
struct RawJwks {
    keys: Vec<RawJwk>,
}

#[derive(Deserialize)]
struct RawJwk {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default, rename = "use")]
    use_: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
}

fn b64(field: &str, value: Option<&str>) -> Result<Vec<u8>, String> {
    let value = value.ok_or_else(|| format!("{field} is required"))?;
    URL_SAFE_NO_PAD
        .decode(value.trim_end_matches('='))
        .map_err(|e| format!("{field} is not base64url: {e}"))
}

impl Jwks {
    /// Parses and checks a key set: JSON `{"keys": [...]}` of RSA, EC (P-256, P-384) and OKP
    /// (Ed25519) public keys. Keys marked for another use than `sig` are skipped; a set
    /// without any usable key is an error.
    pub fn parse(json: &str) -> Result<Self, String> {
        let raw: RawJwks =
            serde_json::from_str(json).map_err(|e| format!("not a JSON Web Key Set: {e}"))?;
        let mut keys = Vec::new();
        for (i, k) in raw.keys.into_iter().enumerate() {
            if k.use_.as_deref().is_some_and(|u| u != "sig") {
                continue;
            }
            let at = |e: String| format!("keys[{i}]: {e}");
            let key = match (k.kty.as_str(), k.crv.as_deref()) {
                ("RSA", _) => {
                    let n = b64("n", k.n.as_deref()).map_err(at)?;
                    let bits = n.iter().skip_while(|b| **b == 0).count() * 8;
                    if bits < 2048 {
                        return Err(at(format!(
                            "RSA keys shorter than 2048 bits are not accepted (n has about {bits})"
                        )));
                    }
                    KeyMaterial::Rsa {
                        n,
                        e: b64("e", k.e.as_deref()).map_err(at)?,
                    }
                }
                ("EC", Some(crv @ ("P-256" | "P-384"))) => {
                    let (curve, len) = if crv == "P-256" {
                        (Curve::P256, 32)
                    } else {
                        (Curve::P384, 48)
                    };
                    let x = b64("x", k.x.as_deref()).map_err(at)?;
                    let y = b64("y", k.y.as_deref()).map_err(at)?;
                    if x.len() != len || y.len() != len {
                        return Err(at(format!("x and y must be {len} bytes for {crv}")));
                    }
                    let mut point = vec![0x04];
                    point.extend(x);
                    point.extend(y);
                    KeyMaterial::Ec { curve, point }
                }
                ("OKP", Some("Ed25519")) => {
                    KeyMaterial::Ed25519(b64("x", k.x.as_deref()).map_err(at)?)
                }
                (kty, crv) => {
                    return Err(at(format!(
                        "unsupported key type {kty:?}{}",
                        crv.map(|c| format!(" on curve {c:?}")).unwrap_or_default()
                    )))
                }
            };
            keys.push(Jwk {
                kid: k.kid,
                alg: k.alg,
                key,
            });
        }
        if keys.is_empty() {
            return Err("the key set has no signing key".into());
        }
        Ok(Jwks {
            json: json.to_string(),
            keys,
        })
    }

    /// The JSON text as received.
    pub fn json(&self) -> &str {
        &self.json
    }
}

impl serde::Serialize for Jwks {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.json)
    }
}

impl<'de> Deserialize<'de> for Jwks {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let json = String::deserialize(d)?;
        Jwks::parse(&json).map_err(serde::de::Error::custom)
    }
}

/// A token split and decoded, not yet verified.
#[derive(Debug, Clone)]
pub struct UnverifiedToken<'a> {
    signed: &'a str,
    signature: Vec<u8>,
    alg: String,
    kid: Option<String>,
    /// The payload's claims.
    pub claims: Map<String, Value>,
}

impl<'a> UnverifiedToken<'a> {
    /// Splits a compact JWS and decodes its header and payload.
    pub fn decode(token: &'a str) -> Result<Self, JwtError> {
        let bad = |what: &str| JwtError::Malformed(what.to_string());
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("expected three dot-separated parts"));
        };
        let json = |part: &str, what: &str| -> Result<Map<String, Value>, JwtError> {
            let bytes = URL_SAFE_NO_PAD
                .decode(part)
                .map_err(|_| bad(&format!("{what} is not base64url")))?;
            serde_json::from_slice(&bytes).map_err(|_| bad(&format!("{what} is not a JSON object")))
        };
        let header_map = json(header, "header")?;
        let claims = json(payload, "payload")?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| bad("signature is not base64url"))?;
        let alg = header_map
            .get("alg")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("header has no alg"))?
            .to_string();
        let kid = header_map
            .get("kid")
            .and_then(Value::as_str)
            .map(str::to_string);
        Ok(UnverifiedToken {
            signed: &token[..header.len() + 1 + payload.len()],
            signature,
            alg,
            kid,
            claims,
        })
    }

    /// The `iss` claim.
    pub fn issuer(&self) -> Option<&str> {
        self.claims.get("iss").and_then(Value::as_str)
    }

    /// Verifies signature, time window and audiences (the issuer was used to pick `jwks`).
    /// `now` is seconds since the Unix epoch.
    pub fn verify(
        self,
        jwks: &Jwks,
        audiences: &[String],
        now: u64,
    ) -> Result<Map<String, Value>, JwtError> {
        self.verify_signature(jwks)?;
        let time = |name: &str| self.claims.get(name).and_then(Value::as_f64);
        if let Some(exp) = time("exp") {
            let exp = exp as u64;
            if now > exp.saturating_add(CLOCK_SKEW_SECS) {
                return Err(JwtError::Expired { exp, now });
            }
        }
        if let Some(nbf) = time("nbf") {
            let nbf = nbf as u64;
            if now.saturating_add(CLOCK_SKEW_SECS) < nbf {
                return Err(JwtError::NotYetValid { nbf, now });
            }
        }
        if !audiences.is_empty() {
            let got = token_audiences(&self.claims);
            if !got.iter().any(|a| audiences.contains(a)) {
                return Err(JwtError::Audience {
                    got,
                    want: audiences.to_vec(),
                });
            }
        }
        Ok(self.claims)
    }

    fn verify_signature(&self, jwks: &Jwks) -> Result<(), JwtError> {
        use signature::VerificationAlgorithm;
        let alg = self.alg.as_str();
        let (rsa, ec): (
            Option<&'static signature::RsaParameters>,
            Option<(Curve, &'static dyn VerificationAlgorithm)>,
        ) = match alg {
            "RS256" => (Some(&signature::RSA_PKCS1_2048_8192_SHA256), None),
            "RS384" => (Some(&signature::RSA_PKCS1_2048_8192_SHA384), None),
            "RS512" => (Some(&signature::RSA_PKCS1_2048_8192_SHA512), None),
            "PS256" => (Some(&signature::RSA_PSS_2048_8192_SHA256), None),
            "PS384" => (Some(&signature::RSA_PSS_2048_8192_SHA384), None),
            "PS512" => (Some(&signature::RSA_PSS_2048_8192_SHA512), None),
            "ES256" => (
                None,
                Some((Curve::P256, &signature::ECDSA_P256_SHA256_FIXED)),
            ),
            "ES384" => (
                None,
                Some((Curve::P384, &signature::ECDSA_P384_SHA384_FIXED)),
            ),
            "EdDSA" => (None, None),
            other => return Err(JwtError::UnsupportedAlgorithm(other.to_string())),
        };
        let message = self.signed.as_bytes();
        let candidates = jwks.keys.iter().filter(|k| {
            self.kid
                .as_ref()
                .is_none_or(|kid| k.kid.as_ref() == Some(kid))
                && k.alg.as_deref().is_none_or(|a| a == alg)
        });
        let mut tried = false;
        for key in candidates {
            let ok = match (&key.key, rsa, ec) {
                (KeyMaterial::Rsa { n, e }, Some(params), _) => {
                    tried = true;
                    RsaPublicKeyComponents { n, e }
                        .verify(params, message, &self.signature)
                        .is_ok()
                }
                (KeyMaterial::Ec { curve, point }, _, Some((want, algorithm)))
                    if *curve == want =>
                {
                    tried = true;
                    UnparsedPublicKey::new(algorithm, point)
                        .verify(message, &self.signature)
                        .is_ok()
                }
                (KeyMaterial::Ed25519(x), None, None) => {
                    tried = true;
                    UnparsedPublicKey::new(&signature::ED25519, x)
                        .verify(message, &self.signature)
                        .is_ok()
                }
                _ => false,
            };
            if ok {
                return Ok(());
            }
        }
        if tried {
            Err(JwtError::BadSignature)
        } else {
            Err(JwtError::NoKey {
                kid: self.kid.clone(),
                alg: self.alg.clone(),
            })
        }
    }
}

/// The `aud` claim as a list (a single string is a list of one).
pub fn token_audiences(claims: &Map<String, Value>) -> Vec<String> {
    match claims.get("aud") {
        Some(Value::String(a)) => vec![a.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    }
}
