//! AuthorizationPolicies and RequestAuthentications → what waypoints enforce
//! ([`L7Policy`], [`RequestAuthn`]), next to the L4 translation for ztunnel (which is left as it
//! is: a policy with targets never reaches ztunnel).
//!
//! Which objects a waypoint gets, and their scope:
//! - `targetRefs` (or `targetRef`) kind Gateway (group `gateway.networking.k8s.io`, or
//!   omitted) in the object's namespace → WAYPOINT scope for those Gateways (a warning when
//!   no such waypoint exists yet);
//! - kind Service (core group) in the object's namespace → SERVICE scope for those services
//!   (`<ns>/<name>.<ns>.svc.<suffix>`);
//!   with both kinds, the Service targets are dropped and the object applies to the whole
//!   waypoint (reported: it judges more requests than written);
//!   other kinds or other namespaces are skipped with a warning;
//! - no selector and no targets, in the root namespace → ROOT scope (every waypoint);
//! - no selector and no targets, in a namespace that has a waypoint (a Gateway of class
//!   `istio-waypoint`) → WAYPOINT scope for every waypoint of that namespace;
//! - with a selector → not for waypoints.
//!
//! Actions ALLOW, DENY and AUDIT translate; CUSTOM is skipped with a warning. Every field of
//! `from`, `to` and `when` is carried over as written (Istio's string rules travel as text and
//! are parsed by the waypoint). A `when` key the waypoint cannot check fails closed, as at L4:
//! an ALLOW rule that needs it is dropped, a DENY rule is kept without it.
//!
//! Each result is checked by converting it back with the waypoint's own code; one that would
//! not convert is skipped with a warning rather than served (the waypoint would refuse it).

use mesh::l7authz::{ConditionKey, L7Policy, RequestAuthn};
use proto::waypoint::{self as wire, l7_policy};

use super::waypoint::WAYPOINT_CLASS;
use super::{service_hostname, TranslateOptions, Warnings};
use crate::config_source::{ClusterState, ObjectKey};
use crate::resources::{
    AuthorizationAction, AuthorizationPolicy, Condition, Operation, PolicyTargetReference,
    RequestAuthentication, Source, GATEWAY_API_GROUP,
};

/// The L7 policies for waypoints, sorted by key.
pub(crate) fn l7_policies(
    state: &ClusterState,
    options: &TranslateOptions,
    warnings: &mut Warnings,
) -> Vec<L7Policy> {
    let mut out = Vec::new();
    for (key, ap) in &state.authorization_policies {
        let object = format!("AuthorizationPolicy {key}");
        let targets: Vec<&PolicyTargetReference> = ap
            .spec
            .target_ref
            .iter()
            .chain(ap.spec.target_refs.iter())
            .collect();
        let selector = ap.spec.selector.is_some();
        let Some(scope) = scope(state, options, key, selector, &targets, &object, warnings) else {
            continue;
        };
        let action = match ap.spec.action {
            AuthorizationAction::Allow => l7_policy::Action::Allow,
            AuthorizationAction::Deny => l7_policy::Action::Deny,
            AuthorizationAction::Audit => l7_policy::Action::Audit,
            AuthorizationAction::Custom => {
                warnings.add(
                    &object,
                    "action CUSTOM is not supported by waypoints; policy skipped",
                );
                continue;
            }
        };
        let wire = wire::L7Policy {
            name: key.name.clone(),
            namespace: key.namespace.clone(),
            scope: scope.scope as i32,
            gateways: scope.gateways,
            services: scope.services,
            action: action as i32,
            dry_run: ap.dry_run(),
            rules: rules(ap, action, &object, warnings),
        };
        match L7Policy::try_from(wire) {
            Ok(policy) => out.push(policy),
            Err(e) => warnings.add(
                &object,
                format!("cannot be enforced by waypoints ({e}); policy skipped"),
            ),
        }
    }
    out
}

/// The RequestAuthns for waypoints, sorted by key.
pub(crate) fn request_authns(
    state: &ClusterState,
    options: &TranslateOptions,
    warnings: &mut Warnings,
) -> Vec<RequestAuthn> {
    let mut out = Vec::new();
    for (key, ra) in &state.request_authentications {
        let object = format!("RequestAuthentication {key}");
        let targets = ra.targets();
        let selector = ra.spec.selector.is_some();
        let Some(scope) = scope(state, options, key, selector, &targets, &object, warnings) else {
            continue;
        };
        let wire = wire::RequestAuthn {
            name: key.name.clone(),
            namespace: key.namespace.clone(),
            scope: scope.scope as i32,
            gateways: scope.gateways,
            services: scope.services,
            jwt_rules: jwt_rules(ra),
        };
        match RequestAuthn::try_from(wire) {
            Ok(authn) => out.push(authn),
            Err(e) => warnings.add(
                &object,
                format!("cannot be enforced by waypoints ({e}); skipped"),
            ),
        }
    }
    out
}

struct Scope {
    scope: wire::Scope,
    gateways: Vec<String>,
    services: Vec<String>,
}

/// Where an object applies at waypoints; `None`: not at waypoints.
fn scope(
    state: &ClusterState,
    options: &TranslateOptions,
    key: &ObjectKey,
    selector: bool,
    targets: &[&PolicyTargetReference],
    object: &str,
    warnings: &mut Warnings,
) -> Option<Scope> {
    let ns = key.namespace.as_str();
    if targets.is_empty() {
        if selector {
            return None;
        }
        if ns == options.root_namespace {
            return Some(Scope {
                scope: wire::Scope::Root,
                gateways: Vec::new(),
                services: Vec::new(),
            });
        }
        let has_waypoint = state
            .gateways
            .iter()
            .any(|(k, g)| k.namespace == ns && g.spec.gateway_class_name == WAYPOINT_CLASS);
        return has_waypoint.then(|| Scope {
            scope: wire::Scope::Waypoint,
            gateways: Vec::new(),
            services: Vec::new(),
        });
    }
    let mut gateways = Vec::new();
    let mut services = Vec::new();
    for (i, t) in targets.iter().enumerate() {
        if t.namespace.as_deref().is_some_and(|n| n != ns) {
            warnings.add(
                object,
                format!("targetRefs[{i}]: a target in another namespace is not supported; target skipped"),
            );
            continue;
        }
        match (t.group.as_str(), t.kind.as_str()) {
            // An omitted group is read as Gateway API's: Gateway has no other.
            (GATEWAY_API_GROUP | "", "Gateway") => {
                let is_waypoint = state
                    .gateways
                    .get(&ObjectKey::new(ns, t.name.as_str()))
                    .is_some_and(|g| g.spec.gateway_class_name == WAYPOINT_CLASS);
                if !is_waypoint {
                    warnings.add(
                        object,
                        format!("targetRefs[{i}]: Gateway {ns}/{} is not a waypoint (class {WAYPOINT_CLASS}) here; the policy applies to it once it is", t.name),
                    );
                }
                gateways.push(t.name.clone());
            }
            ("" | "core", "Service") => {
                services.push(format!("{ns}/{}", service_hostname(&t.name, ns, options)));
            }
            (group, kind) => warnings.add(
                object,
                format!("targetRefs[{i}]: kind {kind} (group {group:?}) is not supported at waypoints; target skipped"),
            ),
        }
    }
    if !gateways.is_empty() {
        if !services.is_empty() {
            warnings.add(
                object,
                "targets both Gateways and Services: applied to the whole waypoint, so it judges more requests than its Service targets",
            );
        }
        gateways.sort();
        gateways.dedup();
        return Some(Scope {
            scope: wire::Scope::Waypoint,
            gateways,
            services: Vec::new(),
        });
    }
    if services.is_empty() {
        warnings.add(object, "no usable target; not enforced anywhere");
        return None;
    }
    services.sort();
    services.dedup();
    Some(Scope {
        scope: wire::Scope::Service,
        gateways: Vec::new(),
        services,
    })
}

fn rules(
    ap: &AuthorizationPolicy,
    action: l7_policy::Action,
    object: &str,
    warnings: &mut Warnings,
) -> Vec<l7_policy::Rule> {
    let mut out = Vec::new();
    for (r, rule) in ap.spec.rules.iter().enumerate() {
        let mut when = Vec::new();
        let mut unsupported = Vec::new();
        for c in &rule.when {
            if c.key.parse::<ConditionKey>().is_ok() {
                when.push(condition(c));
            } else {
                unsupported.push(c.key.clone());
            }
        }
        if !unsupported.is_empty() {
            let keys = unsupported.join(", ");
            if action == l7_policy::Action::Allow {
                warnings.add(
                    object,
                    format!("rules[{r}]: waypoints cannot check `when` keys {keys}; the ALLOW rule matches nothing, so it is dropped"),
                );
                continue;
            }
            warnings.add(
                object,
                format!("rules[{r}]: waypoints cannot check `when` keys {keys}; the rule is enforced without them, which matches more than written"),
            );
        }
        out.push(l7_policy::Rule {
            from: rule
                .from
                .iter()
                .filter_map(|f| f.source.as_ref())
                .map(|s| source(s, ap.namespace()))
                .collect(),
            to: rule
                .to
                .iter()
                .filter_map(|t| t.operation.as_ref())
                .map(operation)
                .collect(),
            when,
        });
    }
    out
}

fn source(s: &Source, policy_namespace: &str) -> l7_policy::Source {
    let accounts = |values: &[String]| {
        values
            .iter()
            .map(|v| {
                if v.contains('/') {
                    v.clone()
                } else {
                    format!("{policy_namespace}/{v}")
                }
            })
            .collect()
    };
    l7_policy::Source {
        principals: s.principals.clone(),
        not_principals: s.not_principals.clone(),
        namespaces: s.namespaces.clone(),
        not_namespaces: s.not_namespaces.clone(),
        ip_blocks: s.ip_blocks.clone(),
        not_ip_blocks: s.not_ip_blocks.clone(),
        request_principals: s.request_principals.clone(),
        not_request_principals: s.not_request_principals.clone(),
        remote_ip_blocks: s.remote_ip_blocks.clone(),
        not_remote_ip_blocks: s.not_remote_ip_blocks.clone(),
        service_accounts: accounts(&s.service_accounts),
        not_service_accounts: accounts(&s.not_service_accounts),
    }
}

fn operation(o: &Operation) -> l7_policy::Operation {
    // The config source validated the ports; anything unparsable is left out.
    let ports = |v: &[String]| v.iter().filter_map(|p| p.parse().ok()).collect();
    l7_policy::Operation {
        hosts: o.hosts.clone(),
        not_hosts: o.not_hosts.clone(),
        ports: ports(&o.ports),
        not_ports: ports(&o.not_ports),
        methods: o.methods.clone(),
        not_methods: o.not_methods.clone(),
        paths: o.paths.clone(),
        not_paths: o.not_paths.clone(),
    }
}

fn condition(c: &Condition) -> l7_policy::Condition {
    l7_policy::Condition {
        key: c.key.clone(),
        values: c.values.clone(),
        not_values: c.not_values.clone(),
    }
}

fn jwt_rules(ra: &RequestAuthentication) -> Vec<wire::JwtRule> {
    ra.spec
        .jwt_rules
        .iter()
        .map(|r| wire::JwtRule {
            issuer: r.issuer.clone(),
            audiences: r.audiences.clone(),
            jwks: r.jwks.clone().unwrap_or_default(),
            from_headers: r
                .from_headers
                .iter()
                .map(|h| wire::JwtHeader {
                    name: h.name.clone(),
                    prefix: h.prefix.clone(),
                })
                .collect(),
            from_params: r.from_params.clone(),
            forward_original_token: r.forward_original_token,
            output_claim_to_headers: r
                .output_claim_to_headers
                .iter()
                .map(|c| wire::ClaimToHeader {
                    header: c.header.clone(),
                    claim: c.claim.clone(),
                })
                .collect(),
        })
        .collect()
}

#[cfg(test)]
#[path = "l7_policy_tests.rs"]
mod tests;
