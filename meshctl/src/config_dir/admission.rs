//! What `apply` refuses or warns about beyond the checks every reader shares
//! ([`resources::Object::validate`], those of Istio's and Gateway API's admission webhooks).
//!
//! Refused: AuthorizationPolicy action CUSTOM (no external authorizers here), AUDIT on a
//! policy not bound to a waypoint (ztunnel would skip it), and a RequestAuthentication whose
//! inline key set the waypoint cannot use. Warned about, since they are enforced differently
//! from what they say: L7 conditions in a policy ztunnel enforces (HTTP hosts, methods,
//! paths, request principals, remote IPs, `request.*` keys: ztunnel fails closed on them), `when`
//! keys a waypoint cannot check, targets waypoints do not enforce, port-level mTLS without a
//! selector, and a RequestAuthentication with a selector (only waypoints check JWTs).

use resources::{
    AuthorizationAction, AuthorizationPolicySpec, Object, Operation, PeerAuthenticationSpec,
    RequestAuthenticationSpec, Source,
};

/// What the mesh refuses in `object` beyond the shared validation (checked before it, so the
/// message says why the mesh refuses rather than what would be missing).
pub(super) fn refuse(object: &Object) -> Result<(), String> {
    match object {
        Object::AuthorizationPolicy(ap) => match ap.spec.action {
            AuthorizationAction::Custom => Err(
                "spec.action CUSTOM: not supported by this mesh (no external authorizers); refused"
                    .into(),
            ),
            AuthorizationAction::Audit if !ap.has_target_refs() => Err(
                "spec.action AUDIT: only waypoints audit requests; bind the policy to a waypoint \
                 or a service with targetRefs (ztunnel would skip it); refused"
                    .into(),
            ),
            _ => Ok(()),
        },
        _ => Ok(()),
    }
}

/// After the shared validation: what else the mesh refuses in `object` (a key set the waypoint
/// cannot use), else what it will do differently from what `object` says, one line each.
pub(super) fn check_and_warn(object: &Object) -> Result<Vec<String>, String> {
    if let Object::RequestAuthentication(ra) = object {
        check_key_sets(&ra.spec)?;
    }
    Ok(match object {
        Object::AuthorizationPolicy(ap) => {
            let mut w = l7_warnings(&ap.spec);
            w.extend(waypoint_warnings(&ap.spec));
            w
        }
        Object::PeerAuthentication(pa) => port_level_warnings(&pa.spec),
        Object::RequestAuthentication(ra) if ra.spec.selector.is_some() => vec![
            "spec.selector: only waypoints check JWTs here; a RequestAuthentication with a \
             selector is not enforced (use targetRefs)"
                .into(),
        ],
        _ => Vec::new(),
    })
}

/// Each inline key set parses with the waypoint's own code.
fn check_key_sets(spec: &RequestAuthenticationSpec) -> Result<(), String> {
    for (i, rule) in spec.jwt_rules.iter().enumerate() {
        if let Some(jwks) = &rule.jwks {
            mesh::l7authz::jwt::Jwks::parse(jwks)
                .map_err(|e| format!("spec.jwtRules[{i}].jwks: {e}"))?;
        }
    }
    Ok(())
}

fn port_level_warnings(spec: &PeerAuthenticationSpec) -> Vec<String> {
    let selects = spec
        .selector
        .as_ref()
        .is_some_and(|s| !s.match_labels.is_empty());
    if spec.port_level_mtls.is_empty() || selects {
        return Vec::new();
    }
    vec![
        "spec.portLevelMtls needs a selector; istiod-lite drops the port settings, and if any \
         says STRICT the whole scope becomes STRICT"
            .into(),
    ]
}

/// The `when` keys ztunnel checks; other keys are L7.
fn l4_condition(key: &str) -> bool {
    matches!(
        key,
        "source.ip"
            | "destination.ip"
            | "destination.port"
            | "source.namespace"
            | "source.principal"
    )
}

/// The names of the L7 fields `source` sets.
fn l7_source_fields(s: &Source) -> Vec<&'static str> {
    [
        ("requestPrincipals", &s.request_principals),
        ("notRequestPrincipals", &s.not_request_principals),
        ("remoteIpBlocks", &s.remote_ip_blocks),
        ("notRemoteIpBlocks", &s.not_remote_ip_blocks),
    ]
    .into_iter()
    .filter(|(_, v)| !v.is_empty())
    .map(|(name, _)| name)
    .collect()
}

/// The names of the L7 fields `operation` sets (all but the ports).
fn l7_operation_fields(o: &Operation) -> Vec<&'static str> {
    [
        ("hosts", &o.hosts),
        ("notHosts", &o.not_hosts),
        ("methods", &o.methods),
        ("notMethods", &o.not_methods),
        ("paths", &o.paths),
        ("notPaths", &o.not_paths),
    ]
    .into_iter()
    .filter(|(_, v)| !v.is_empty())
    .map(|(name, _)| name)
    .collect()
}

fn has_target_refs(spec: &AuthorizationPolicySpec) -> bool {
    spec.target_ref.is_some() || !spec.target_refs.is_empty()
}

/// One warning per rule with L7 conditions, saying what ztunnel makes of it. Policies bound
/// to a waypoint (`targetRefs`) are enforced at L7 and get none.
fn l7_warnings(spec: &AuthorizationPolicySpec) -> Vec<String> {
    if has_target_refs(spec) {
        return Vec::new();
    }
    let mut warnings = Vec::new();
    for (r, rule) in spec.rules.iter().enumerate() {
        let mut l7: Vec<String> = Vec::new();
        for source in rule.from.iter().filter_map(|f| f.source.as_ref()) {
            l7.extend(l7_source_fields(source).into_iter().map(String::from));
        }
        for op in rule.to.iter().filter_map(|t| t.operation.as_ref()) {
            l7.extend(l7_operation_fields(op).into_iter().map(String::from));
        }
        for when in &rule.when {
            if !l4_condition(&when.key) {
                l7.push(format!("when {}", when.key));
            }
        }
        if l7.is_empty() {
            continue;
        }
        l7.sort_unstable();
        l7.dedup();
        let effect = match spec.action {
            AuthorizationAction::Deny => {
                "the DENY rule is enforced without them, so it denies more than written"
            }
            _ => "ztunnel fails closed: this ALLOW rule matches nothing",
        };
        warnings.push(format!(
            "spec.rules[{r}] uses L7 attributes ztunnel cannot check ({}); {effect} \
             (bind the policy to a waypoint with targetRefs to enforce them)",
            l7.join(", ")
        ));
    }
    warnings
}

/// For policies bound with `targetRefs`: targets waypoints do not enforce, and `when` keys
/// the waypoint cannot check (it fails closed on them).
fn waypoint_warnings(spec: &AuthorizationPolicySpec) -> Vec<String> {
    if !has_target_refs(spec) {
        return Vec::new();
    }
    let mut warnings = Vec::new();
    for (i, t) in spec.target_ref.iter().chain(&spec.target_refs).enumerate() {
        let supported = matches!(
            (t.group.as_str(), t.kind.as_str()),
            ("gateway.networking.k8s.io" | "", "Gateway") | ("" | "core", "Service")
        );
        if !supported {
            warnings.push(format!(
                "spec.targetRefs[{i}]: kind {} (group {:?}) is not enforced by waypoints; only \
                 Gateway (gateway.networking.k8s.io) and Service are",
                t.kind, t.group
            ));
        }
    }
    for (r, rule) in spec.rules.iter().enumerate() {
        for (i, when) in rule.when.iter().enumerate() {
            if when.key.parse::<mesh::l7authz::ConditionKey>().is_err() {
                let effect = match spec.action {
                    AuthorizationAction::Allow => "this ALLOW rule matches nothing",
                    _ => "the rule is enforced without it, so it matches more than written",
                };
                warnings.push(format!(
                    "spec.rules[{r}].when[{i}].key: waypoints cannot check {:?}; {effect}",
                    when.key
                ));
            }
        }
    }
    warnings
}
