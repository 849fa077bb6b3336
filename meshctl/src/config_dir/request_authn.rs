//! `security.istio.io` RequestAuthentication, checked as istiod-lite reads it: every field
//! typed, unknown fields refused, keys only inline (`jwks`, parsed with the waypoint's own
//! code; `jwksUri` refused), header names valid. Errors name the field by its path.

use serde::Deserialize;

use super::security::null_as_default;

/// Decodes and checks a RequestAuthentication document; returns its warnings.
pub(super) fn check_request_authentication<'de, D>(document: D) -> Result<Vec<String>, String>
where
    D: serde::Deserializer<'de, Error = serde_yaml::Error>,
{
    let ra = RequestAuthentication::deserialize(document)
        .map_err(|e| format!("not a valid RequestAuthentication: {e}"))?;
    let spec = ra.spec;
    let targets = spec.target_ref.is_some() || !spec.target_refs.is_empty();
    if spec.selector.is_some() && targets {
        return Err("spec: selector and targetRef/targetRefs cannot both be set".into());
    }
    if spec.target_ref.is_some() && !spec.target_refs.is_empty() {
        return Err("spec: targetRef and targetRefs cannot both be set".into());
    }
    let header = |v: &str| http::HeaderName::from_bytes(v.as_bytes()).is_ok();
    for (i, rule) in spec.jwt_rules.iter().enumerate() {
        let at = format!("spec.jwtRules[{i}]");
        if rule.issuer.is_empty() {
            return Err(format!("{at}.issuer: required"));
        }
        if rule.jwks_uri.is_some() {
            return Err(format!(
                "{at}.jwksUri: not supported (the control plane fetches nothing); give the keys inline in jwks"
            ));
        }
        let Some(jwks) = &rule.jwks else {
            return Err(format!("{at}.jwks: required (the key set, inline JSON)"));
        };
        mesh::l7authz::jwt::Jwks::parse(jwks).map_err(|e| format!("{at}.jwks: {e}"))?;
        if !rule.from_cookies.is_empty() {
            return Err(format!("{at}.fromCookies: not supported"));
        }
        if rule.output_payload_to_header.is_some() {
            return Err(format!("{at}.outputPayloadToHeader: not supported"));
        }
        for (h, from) in rule.from_headers.iter().enumerate() {
            if !header(&from.name) {
                return Err(format!(
                    "{at}.fromHeaders[{h}].name: {:?} is not a header name",
                    from.name
                ));
            }
        }
        for (c, out) in rule.output_claim_to_headers.iter().enumerate() {
            if !header(&out.header) {
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
    if spec.selector.is_some() {
        return Ok(vec![
            "spec.selector: only waypoints check JWTs here; a RequestAuthentication with a selector is not enforced (use targetRefs)".into(),
        ]);
    }
    Ok(Vec::new())
}

#[derive(Deserialize)]
struct RequestAuthentication {
    #[serde(default, deserialize_with = "null_as_default")]
    spec: Spec,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Spec {
    #[serde(default)]
    selector: Option<serde_yaml::Value>,
    #[serde(default)]
    target_ref: Option<TargetRef>,
    #[serde(default, deserialize_with = "null_as_default")]
    target_refs: Vec<TargetRef>,
    #[serde(default, deserialize_with = "null_as_default")]
    jwt_rules: Vec<JwtRule>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)] // read only to check the types
struct TargetRef {
    #[serde(default, deserialize_with = "null_as_default")]
    group: String,
    kind: String,
    name: String,
    #[serde(default)]
    namespace: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct JwtRule {
    #[serde(default, deserialize_with = "null_as_default")]
    issuer: String,
    #[serde(default, deserialize_with = "null_as_default")]
    #[allow(dead_code)] // read only to check the type
    audiences: Vec<String>,
    #[serde(default)]
    jwks: Option<String>,
    #[serde(default)]
    jwks_uri: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    from_headers: Vec<JwtHeader>,
    #[serde(default, deserialize_with = "null_as_default")]
    #[allow(dead_code)] // read only to check the type
    from_params: Vec<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    from_cookies: Vec<String>,
    #[serde(default)]
    output_payload_to_header: Option<String>,
    #[serde(default)]
    #[allow(dead_code)] // read only to check the type
    forward_original_token: bool,
    #[serde(default, deserialize_with = "null_as_default")]
    output_claim_to_headers: Vec<ClaimToHeader>,
    #[serde(default)]
    #[allow(dead_code)] // read only to check the type
    timeout: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct JwtHeader {
    name: String,
    #[serde(default, deserialize_with = "null_as_default")]
    #[allow(dead_code)] // read only to check the type
    prefix: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ClaimToHeader {
    header: String,
    claim: String,
}
