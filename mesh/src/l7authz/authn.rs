//! RequestAuthentication at the waypoint: find the JWTs a request carries, check them against
//! the JWT rules in scope, and say who the request is from.
//!
//! As Istio: a request without a token passes with no request principal (only a policy can
//! then refuse it, e.g. with `requestPrincipals: ["*"]`); a request with a token that is bad,
//! expired, for the wrong audience or from an issuer no rule accepts is refused (401). A token
//! is accepted only by a rule of its issuer that looks where it was found. Every token found
//! is checked; the first one gives the principal `<iss>/<sub>`.

use std::borrow::Borrow;

use http::{HeaderMap, HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::eval::RequestAuth;
use super::jwt::{token_audiences, Jwks, JwtError, UnverifiedToken};
use super::model::{L7Target, WaypointContext};
use crate::model::{required, ModelError};
use proto::waypoint as wire;

/// Where tokens are looked for when a rule names no place: this header, after this prefix.
pub const DEFAULT_TOKEN_HEADER: (&str, &str) = ("authorization", "Bearer ");
/// ... and this query parameter.
pub const DEFAULT_TOKEN_PARAM: &str = "access_token";

/// A RequestAuthentication, named `<namespace>/<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestAuthn {
    /// Name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Where it applies.
    pub target: L7Target,
    /// The JWT rules: a token must satisfy the rule of its issuer.
    pub jwt_rules: Vec<JwtRule>,
}

impl RequestAuthn {
    /// The key and xDS resource name: `<namespace>/<name>`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Whether it applies at `at`.
    pub fn applies(&self, at: &WaypointContext<'_>) -> bool {
        self.target.applies(&self.namespace, at)
    }
}

/// How to find and check the tokens of one issuer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JwtRule {
    /// The `iss` a token must have.
    pub issuer: String,
    /// The token's `aud` must hold one of these; empty: any.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// The keys that sign the tokens.
    pub jwks: Jwks,
    /// Headers holding the token, after a prefix.
    #[serde(default)]
    pub from_headers: Vec<JwtHeader>,
    /// Query parameters holding the token.
    #[serde(default)]
    pub from_params: Vec<String>,
    /// Keep the token in the request sent upstream.
    #[serde(default)]
    pub forward_original_token: bool,
    /// Claims copied into request headers.
    #[serde(default)]
    pub output_claim_to_headers: Vec<ClaimToHeader>,
}

/// A header that may hold a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JwtHeader {
    /// Header name, lower-cased.
    pub name: String,
    /// Text before the token, e.g. `Bearer `.
    #[serde(default)]
    pub prefix: String,
}

/// A claim to copy into a header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimToHeader {
    /// The header to set.
    pub header: String,
    /// The claim (a top-level name).
    pub claim: String,
}

impl JwtRule {
    fn headers(&self) -> Vec<(&str, &str)> {
        if self.from_headers.is_empty() && self.from_params.is_empty() {
            return vec![DEFAULT_TOKEN_HEADER];
        }
        self.from_headers
            .iter()
            .map(|h| (h.name.as_str(), h.prefix.as_str()))
            .collect()
    }

    fn params(&self) -> Vec<&str> {
        if self.from_headers.is_empty() && self.from_params.is_empty() {
            return vec![DEFAULT_TOKEN_PARAM];
        }
        self.from_params.iter().map(String::as_str).collect()
    }
}

/// Where a token was found, so the waypoint can remove it before forwarding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenLocation {
    /// In this header.
    Header(HeaderName),
    /// In this query parameter.
    Param(String),
}

/// The outcome of authenticating a request that was not refused.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Authenticated {
    /// The first valid token's facts; `None` without a token.
    pub auth: Option<RequestAuth>,
    /// Headers to set on the request sent upstream (`outputClaimToHeaders`).
    pub add_headers: Vec<(HeaderName, HeaderValue)>,
    /// Token locations to strip before forwarding (rules without `forwardOriginalToken`).
    pub remove: Vec<TokenLocation>,
}

/// Checks the tokens of a request against the RequestAuthns in scope. `query` is the part of
/// the request target after `?`; `now` is seconds since the Unix epoch. Pure.
pub fn authenticate<A: Borrow<RequestAuthn>>(
    authns: &[A],
    headers: &HeaderMap,
    query: Option<&str>,
    now: u64,
) -> Result<Authenticated, JwtError> {
    let rules: Vec<&JwtRule> = authns
        .iter()
        .flat_map(|a| a.borrow().jwt_rules.iter())
        .collect();
    let mut found: Vec<Found> = Vec::new();
    for (r, rule) in rules.iter().enumerate() {
        for (name, prefix) in rule.headers() {
            for value in headers.get_all(name) {
                let Some(token) = value.to_str().ok().and_then(|v| v.strip_prefix(prefix)) else {
                    continue;
                };
                if let Ok(header) = HeaderName::from_bytes(name.as_bytes()) {
                    note(&mut found, token.trim(), TokenLocation::Header(header), r);
                }
            }
        }
        for param in rule.params() {
            for (k, v) in query
                .into_iter()
                .flat_map(|q| q.split('&'))
                .filter_map(|kv| {
                    let (k, v) = kv.split_once('=')?;
                    Some((k, v))
                })
            {
                if k == param {
                    note(&mut found, v, TokenLocation::Param(param.to_string()), r);
                }
            }
        }
    }
    let mut out = Authenticated::default();
    for Found {
        token,
        location,
        rules: looked,
    } in found
    {
        let unverified = UnverifiedToken::decode(&token)?;
        let issuer = unverified.issuer().unwrap_or_default().to_string();
        // Only a rule that looks for tokens where this one was found may accept it.
        let Some(rule) = looked
            .iter()
            .map(|r| rules[*r])
            .find(|r| r.issuer == issuer)
        else {
            return Err(JwtError::UnknownIssuer(issuer));
        };
        let claims = unverified.verify(&rule.jwks, &rule.audiences, now)?;
        if !rule.forward_original_token {
            out.remove.push(location);
        }
        for c in &rule.output_claim_to_headers {
            let value = match claims.get(&c.claim) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => continue,
                Some(other) => other.to_string(),
            };
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(c.header.as_bytes()),
                HeaderValue::from_str(&value),
            ) {
                out.add_headers.push((name, value));
            }
        }
        if out.auth.is_none() {
            let subject = claims
                .get("sub")
                .and_then(Value::as_str)
                .unwrap_or_default();
            out.auth = Some(RequestAuth {
                principal: format!("{issuer}/{subject}"),
                audiences: token_audiences(&claims),
                presenter: claims
                    .get("azp")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                claims,
            });
        }
    }
    Ok(out)
}

/// A token found in a request, and the rules (by index) that look where it was found.
struct Found {
    token: String,
    location: TokenLocation,
    rules: Vec<usize>,
}

fn note(found: &mut Vec<Found>, token: &str, location: TokenLocation, rule: usize) {
    if token.is_empty() {
        return;
    }
    match found.iter_mut().find(|f| f.token == token) {
        Some(f) => f.rules.push(rule),
        None => found.push(Found {
            token: token.to_string(),
            location,
            rules: vec![rule],
        }),
    }
}

impl TryFrom<wire::RequestAuthn> for RequestAuthn {
    type Error = ModelError;

    fn try_from(r: wire::RequestAuthn) -> Result<Self, Self::Error> {
        required("name", &r.name)?;
        required("namespace", &r.namespace)?;
        let jwt_rules = r
            .jwt_rules
            .into_iter()
            .enumerate()
            .map(|(i, rule)| {
                jwt_rule_from_proto(rule).map_err(|e| e.within(&format!("jwt_rules[{i}]")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RequestAuthn {
            target: L7Target::from_proto(r.scope, r.gateways, r.services)?,
            name: r.name,
            namespace: r.namespace,
            jwt_rules,
        })
    }
}

fn jwt_rule_from_proto(r: wire::JwtRule) -> Result<JwtRule, ModelError> {
    required("issuer", &r.issuer)?;
    required("jwks", &r.jwks)?;
    let jwks = Jwks::parse(&r.jwks).map_err(|reason| ModelError::Invalid {
        field: "jwks".into(),
        reason,
    })?;
    let from_headers = r
        .from_headers
        .into_iter()
        .enumerate()
        .map(|(i, h)| {
            HeaderName::from_bytes(h.name.as_bytes())
                .map(|name| JwtHeader {
                    name: name.as_str().to_string(),
                    prefix: h.prefix,
                })
                .map_err(|_| ModelError::Invalid {
                    field: format!("from_headers[{i}].name"),
                    reason: format!("{:?} is not a header name", h.name),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    for (i, c) in r.output_claim_to_headers.iter().enumerate() {
        if HeaderName::from_bytes(c.header.as_bytes()).is_err() {
            return Err(ModelError::Invalid {
                field: format!("output_claim_to_headers[{i}].header"),
                reason: format!("{:?} is not a header name", c.header),
            });
        }
        required(&format!("output_claim_to_headers[{i}].claim"), &c.claim)?;
    }
    Ok(JwtRule {
        issuer: r.issuer,
        audiences: r.audiences,
        jwks,
        from_headers,
        from_params: r.from_params,
        forward_original_token: r.forward_original_token,
        output_claim_to_headers: r
            .output_claim_to_headers
            .into_iter()
            .map(|c| ClaimToHeader {
                header: c.header,
                claim: c.claim,
            })
            .collect(),
    })
}

impl From<&RequestAuthn> for wire::RequestAuthn {
    fn from(r: &RequestAuthn) -> Self {
        wire::RequestAuthn {
            name: r.name.clone(),
            namespace: r.namespace.clone(),
            scope: r.target.scope.to_proto(),
            gateways: r.target.gateways.clone(),
            services: r.target.services.clone(),
            jwt_rules: r
                .jwt_rules
                .iter()
                .map(|j| wire::JwtRule {
                    issuer: j.issuer.clone(),
                    audiences: j.audiences.clone(),
                    jwks: j.jwks.json().to_string(),
                    from_headers: j
                        .from_headers
                        .iter()
                        .map(|h| wire::JwtHeader {
                            name: h.name.clone(),
                            prefix: h.prefix.clone(),
                        })
                        .collect(),
                    from_params: j.from_params.clone(),
                    forward_original_token: j.forward_original_token,
                    output_claim_to_headers: j
                        .output_claim_to_headers
                        .iter()
                        .map(|c| wire::ClaimToHeader {
                            header: c.header.clone(),
                            claim: c.claim.clone(),
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}
