//! `security.istio.io/v1` RequestAuthentication: which JWTs a waypoint accepts. Typed
//! completely and validated, like the AuthorizationPolicy; keys must be given inline
//! (`jwks`): this control plane fetches nothing, so `jwksUri` is refused.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{null_as_default, PolicyTargetReference, WorkloadSelector};

/// What a RequestAuthentication applies to and the JWT rules.
#[derive(
    Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, CustomResource, JsonSchema,
)]
#[kube(
    group = "security.istio.io",
    version = "v1",
    kind = "RequestAuthentication",
    plural = "requestauthentications",
    namespaced,
    status = "crate::ObjectStatus",
    derive = "Default",
    derive = "PartialEq",
    doc = "An Istio RequestAuthentication."
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestAuthenticationSpec {
    /// Pods it applies to (sidecar-era; a waypoint reads `targetRefs`).
    #[serde(default)]
    pub selector: Option<WorkloadSelector>,
    /// Deprecated single form of `targetRefs`.
    #[serde(default)]
    pub target_ref: Option<PolicyTargetReference>,
    /// The waypoints (kind Gateway) or services (kind Service) it applies to.
    #[serde(default, deserialize_with = "null_as_default")]
    pub target_refs: Vec<PolicyTargetReference>,
    /// One rule per accepted issuer.
    #[serde(default, deserialize_with = "null_as_default")]
    pub jwt_rules: Vec<JwtRule>,
}

/// How tokens of one issuer are found and checked.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtRule {
    /// The `iss` the tokens carry; required.
    #[serde(default, deserialize_with = "null_as_default")]
    pub issuer: String,
    /// Accepted `aud` values; empty: any.
    #[serde(default, deserialize_with = "null_as_default")]
    pub audiences: Vec<String>,
    /// The JSON Web Key Set, inline.
    #[serde(default)]
    pub jwks: Option<String>,
    /// A URL to fetch the keys from: refused by [`RequestAuthentication::validate`].
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// Headers holding the token.
    #[serde(default, deserialize_with = "null_as_default")]
    pub from_headers: Vec<JwtHeader>,
    /// Query parameters holding the token.
    #[serde(default, deserialize_with = "null_as_default")]
    pub from_params: Vec<String>,
    /// Cookies holding the token: not supported (refused).
    #[serde(default, deserialize_with = "null_as_default")]
    pub from_cookies: Vec<String>,
    /// Header that gets the payload: not supported (refused).
    #[serde(default)]
    pub output_payload_to_header: Option<String>,
    /// Keep the token in the request sent upstream.
    #[serde(default)]
    pub forward_original_token: bool,
    /// Claims copied into request headers.
    #[serde(default, deserialize_with = "null_as_default")]
    pub output_claim_to_headers: Vec<ClaimToHeader>,
    /// Fetch timeout of `jwksUri`: meaningless inline, accepted and ignored.
    #[serde(default)]
    pub timeout: Option<String>,
}

/// A header that may hold a token.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtHeader {
    /// The header name.
    pub name: String,
    /// Text before the token, e.g. `Bearer `.
    #[serde(default, deserialize_with = "null_as_default")]
    pub prefix: String,
}

/// A claim copied into a header.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimToHeader {
    /// The header to set.
    pub header: String,
    /// The claim to copy.
    pub claim: String,
}

impl RequestAuthentication {
    /// The name (empty if the document had none; the config source refuses those).
    pub fn name(&self) -> &str {
        self.metadata.name.as_deref().unwrap_or_default()
    }

    /// The namespace (`default` when absent).
    pub fn namespace(&self) -> &str {
        self.metadata.namespace.as_deref().unwrap_or("default")
    }

    /// The targets, `targetRef` and `targetRefs` together.
    pub fn targets(&self) -> Vec<&PolicyTargetReference> {
        self.spec
            .target_ref
            .iter()
            .chain(self.spec.target_refs.iter())
            .collect()
    }

    /// Checks the values; the error names the field by its path under `spec`. Refused:
    /// selector with targets; `targetRef` with `targetRefs`; a rule without issuer; `jwksUri`
    /// (keys must be inline) and a rule without `jwks`; a `jwks` that is not a usable key set;
    /// header names that are not header names; `fromCookies` and `outputPayloadToHeader`
    /// (not supported).
    pub fn validate(&self) -> Result<(), String> {
        let spec = &self.spec;
        if spec.selector.is_some() && (spec.target_ref.is_some() || !spec.target_refs.is_empty()) {
            return Err("spec: selector and targetRef/targetRefs cannot both be set".into());
        }
        if spec.target_ref.is_some() && !spec.target_refs.is_empty() {
            return Err("spec: targetRef and targetRefs cannot both be set".into());
        }
        let header_name = |v: &str| {
            !v.is_empty()
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        };
        for (i, rule) in spec.jwt_rules.iter().enumerate() {
            let at = format!("spec.jwtRules[{i}]");
            if rule.issuer.is_empty() {
                return Err(format!("{at}.issuer: required"));
            }
            if rule.jwks_uri.is_some() {
                return Err(format!(
                    "{at}.jwksUri: not supported (this control plane fetches nothing); give the keys inline in jwks"
                ));
            }
            match &rule.jwks {
                None => return Err(format!("{at}.jwks: required (the key set, inline JSON)")),
                Some(jwks) => jwks_shape(jwks).map_err(|e| format!("{at}.jwks: {e}"))?,
            }
            if !rule.from_cookies.is_empty() {
                return Err(format!("{at}.fromCookies: not supported"));
            }
            if rule.output_payload_to_header.is_some() {
                return Err(format!("{at}.outputPayloadToHeader: not supported"));
            }
            for (h, header) in rule.from_headers.iter().enumerate() {
                if !header_name(&header.name) {
                    return Err(format!(
                        "{at}.fromHeaders[{h}].name: {:?} is not a header name",
                        header.name
                    ));
                }
            }
            for (p, param) in rule.from_params.iter().enumerate() {
                if param.is_empty() {
                    return Err(format!("{at}.fromParams[{p}]: is empty"));
                }
            }
            for (c, out) in rule.output_claim_to_headers.iter().enumerate() {
                if !header_name(&out.header) {
                    return Err(format!(
                        "{at}.outputClaimToHeaders[{c}].header: {:?} is not a header name",
                        out.header
                    ));
                }
                if out.claim.is_empty() {
                    return Err(format!("{at}.outputClaimToHeaders[{c}].claim: required"));
                }
            }
        }
        Ok(())
    }
}

/// The shape of a JSON Web Key Set: a `keys` array of objects, each with a `kty`. The keys
/// themselves are checked by the waypoint's parser (`mesh::l7authz`), where they are used.
fn jwks_shape(jwks: &str) -> Result<(), String> {
    let value: serde_json::Value = serde_json::from_str(jwks)
        .map_err(|e| format!("not a JSON Web Key Set: not JSON ({e})"))?;
    let keys = value
        .get("keys")
        .and_then(|k| k.as_array())
        .ok_or("not a JSON Web Key Set: no `keys` array")?;
    if keys.is_empty() {
        return Err("not a JSON Web Key Set: `keys` is empty".into());
    }
    for (i, key) in keys.iter().enumerate() {
        if key.get("kty").and_then(|k| k.as_str()).is_none() {
            return Err(format!("not a JSON Web Key Set: keys[{i}] has no `kty`"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The P-256 public key of RFC 7517 appendix A.1.
    const JWKS: &str = r#"{"keys":[{"kty":"EC","crv":"P-256","x":"MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4","y":"4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM"}]}"#;

    fn parse(yaml: &str) -> RequestAuthentication {
        crate::from_yaml(yaml).expect("parses")
    }

    #[test]
    fn parses_every_field_and_accepts_inline_jwks() {
        let ra = parse(&format!(
            r#"
metadata: {{name: jwt, namespace: shop}}
spec:
  targetRefs: [{{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}}]
  jwtRules:
  - issuer: https://idp
    audiences: [shop]
    jwks: '{JWKS}'
    fromHeaders: [{{name: x-jwt, prefix: "Bearer "}}]
    fromParams: [token]
    forwardOriginalToken: true
    outputClaimToHeaders: [{{header: x-sub, claim: sub}}]
"#
        ));
        assert_eq!(ra.validate(), Ok(()));
        assert_eq!(ra.targets().len(), 1);
        assert_eq!(ra.spec.jwt_rules[0].from_headers[0].prefix, "Bearer ");
    }

    #[test]
    fn validate_names_the_field_of_what_it_refuses() {
        let rule =
            |extra: &str| format!("spec: {{jwtRules: [{{issuer: i, jwks: '{JWKS}'{extra}}}]}}");
        let cases = [
            (
                "spec: {jwtRules: [{jwks: x}]}".to_string(),
                "spec.jwtRules[0].issuer: required",
            ),
            (
                "spec: {jwtRules: [{issuer: i, jwksUri: 'https://idp/keys'}]}".into(),
                "spec.jwtRules[0].jwksUri: not supported",
            ),
            (
                "spec: {jwtRules: [{issuer: i}]}".into(),
                "spec.jwtRules[0].jwks: required",
            ),
            (
                "spec: {jwtRules: [{issuer: i, jwks: '{}'}]}".into(),
                "spec.jwtRules[0].jwks: not a JSON Web Key Set",
            ),
            (
                rule(", fromHeaders: [{name: 'bad name'}]"),
                "spec.jwtRules[0].fromHeaders[0].name",
            ),
            (rule(", fromCookies: [c]"), "spec.jwtRules[0].fromCookies"),
            (
                rule(", outputClaimToHeaders: [{header: x, claim: ''}]"),
                "outputClaimToHeaders[0].claim",
            ),
            (
                "spec: {selector: {matchLabels: {a: b}}, targetRefs: [{kind: Gateway, name: w}]}"
                    .into(),
                "selector and targetRef",
            ),
        ];
        for (yaml, want) in cases {
            let err = parse(&yaml).validate().expect_err(&yaml);
            assert!(err.contains(want), "{yaml}: {err}");
        }
        let typo = "spec: {jwtRule: []}";
        assert!(crate::from_yaml::<RequestAuthentication>(typo).is_err());
    }
}
