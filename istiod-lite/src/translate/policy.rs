//! AuthorizationPolicies → the L4 policies ztunnel enforces.
//!
//! Only policies without `targetRef`/`targetRefs` are for ztunnel (the others bind to a
//! waypoint, which enforces them at L7). Scope: GLOBAL in the root namespace without a
//! selector, WORKLOAD_SELECTOR with a selector (the workloads it selects list it, see
//! [`super::workload`]), NAMESPACE otherwise. ALLOW and DENY translate; AUDIT and CUSTOM are
//! skipped and reported. `istio.io/dry-run: "true"` sets `dry_run`.
//!
//! Each rule becomes one [`Rule`] whose clauses are AND-ed: one clause for `to` (its
//! operations OR-ed: ports, notPorts), one for `from` (its sources OR-ed: principals,
//! namespaces, IP blocks, service accounts and their negations), one per `when` condition on
//! `source.ip`, `source.namespace`, `source.principal`, `destination.ip` or
//! `destination.port`. A value `*` is a presence match, `*x` a suffix, `x*` a prefix.
//! `serviceAccounts` read `<ns>/<sa>`, or `<sa>` in the policy's namespace.
//!
//! L7-only parts (hosts, methods, paths and their negations, requestPrincipals,
//! remoteIpBlocks, any other `when` key) cannot be checked at L4. Failing closed, as Istio
//! does:
//! - in an ALLOW rule they make the whole rule match nothing, so the rule is dropped (an ALLOW
//!   policy whose every rule needed L7 allows nothing);
//! - in a DENY rule only the L7 parts are dropped and the L4 rest is kept, which denies more
//!   than written (a DENY rule that was only L7 denies everything in its scope).
//!
//! Either case is reported. A clause that some entry matches unconditionally (an operation
//! or source that had only L7 fields) is left out, as it constrains nothing. A policy
//! without rules is kept as such: ALLOW with no rules denies everything in scope, DENY with
//! no rules denies nothing.

use mesh::model::{
    Cidr, Clause, Match, Policy, PolicyAction, PolicyScope, Rule, ServiceAccountMatch, StringMatch,
};

use super::{TranslateOptions, Warnings};
use crate::config_source::{ClusterState, ObjectKey};
use crate::resources::{
    AuthorizationAction, AuthorizationPolicy, Condition, Operation, Source, WorkloadSelector,
};

/// A translated policy and, for WORKLOAD_SELECTOR scope, its selector.
#[derive(Debug, Clone, PartialEq)]
pub struct TranslatedPolicy {
    /// The policy.
    pub policy: Policy,
    /// The selector of a WORKLOAD_SELECTOR policy.
    pub selector: Option<WorkloadSelector>,
}

/// The policies ztunnel enforces, sorted by key.
pub(crate) fn policies(
    state: &ClusterState,
    options: &TranslateOptions,
    warnings: &mut Warnings,
) -> Vec<TranslatedPolicy> {
    state
        .authorization_policies
        .iter()
        .filter_map(|(key, ap)| policy(options, key, ap, warnings))
        .collect()
}

fn policy(
    options: &TranslateOptions,
    key: &ObjectKey,
    ap: &AuthorizationPolicy,
    warnings: &mut Warnings,
) -> Option<TranslatedPolicy> {
    if ap.has_target_refs() {
        return None; // a waypoint's policy
    }
    let object = format!("AuthorizationPolicy {key}");
    let action = match ap.spec.action {
        AuthorizationAction::Allow => PolicyAction::Allow,
        AuthorizationAction::Deny => PolicyAction::Deny,
        other => {
            warnings.add(
                object,
                format!(
                    "action {} is not enforced by ztunnel (use a waypoint); policy skipped",
                    other.as_str()
                ),
            );
            return None;
        }
    };
    let scope = match (&ap.spec.selector, key.namespace == options.root_namespace) {
        (Some(_), _) => PolicyScope::WorkloadSelector,
        (None, true) => PolicyScope::Global,
        (None, false) => PolicyScope::Namespace,
    };
    let mut rules = Vec::new();
    for (r, rule) in ap.spec.rules.iter().enumerate() {
        let mut l7 = Vec::new();
        let mut clauses = Vec::new();

        let to: Vec<Match> = rule
            .to
            .iter()
            .filter_map(|t| t.operation.as_ref())
            .map(|op| operation(op, &mut l7))
            .collect();
        push_clause(&mut clauses, to);

        let from: Vec<Match> = rule
            .from
            .iter()
            .filter_map(|f| f.source.as_ref())
            .map(|s| source(s, &key.namespace, &mut l7))
            .collect();
        push_clause(&mut clauses, from);

        for when in &rule.when {
            match condition(when) {
                Some(m) => push_clause(&mut clauses, vec![m]),
                None => l7.push(format!("when {}", when.key)),
            }
        }

        if l7.is_empty() {
            rules.push(Rule { clauses });
            continue;
        }
        l7.sort_unstable();
        l7.dedup();
        let found = l7.join(", ");
        match action {
            PolicyAction::Allow => warnings.add(
                &object,
                format!("rules[{r}] needs HTTP attributes ztunnel cannot check ({found}); an ALLOW rule that needs them matches nothing, so it is dropped (use a waypoint to enforce it)"),
            ),
            PolicyAction::Deny => {
                warnings.add(
                    &object,
                    format!("rules[{r}] needs HTTP attributes ztunnel cannot check ({found}); the DENY rule is enforced without them, which denies more than written (use a waypoint to enforce it)"),
                );
                rules.push(Rule { clauses });
            }
        }
    }
    if action == PolicyAction::Allow && rules.is_empty() && !ap.spec.rules.is_empty() {
        warnings.add(
            &object,
            "no rule is left that ztunnel can check: this ALLOW policy allows nothing",
        );
    }
    Some(TranslatedPolicy {
        policy: Policy {
            name: key.name.clone(),
            namespace: key.namespace.clone(),
            scope,
            action,
            rules,
            dry_run: ap.dry_run(),
        },
        selector: ap.spec.selector.clone(),
    })
}

/// Adds a clause of OR-ed matches, unless it is empty or one match is unconditional.
fn push_clause(clauses: &mut Vec<Clause>, matches: Vec<Match>) {
    if matches.is_empty() || matches.iter().any(|m| *m == Match::default()) {
        return;
    }
    clauses.push(Clause { matches });
}

fn operation(op: &Operation, l7: &mut Vec<String>) -> Match {
    for (name, values) in [
        ("hosts", &op.hosts),
        ("notHosts", &op.not_hosts),
        ("methods", &op.methods),
        ("notMethods", &op.not_methods),
        ("paths", &op.paths),
        ("notPaths", &op.not_paths),
    ] {
        if !values.is_empty() {
            l7.push(name.to_string());
        }
    }
    Match {
        destination_ports: ports(&op.ports),
        not_destination_ports: ports(&op.not_ports),
        ..Match::default()
    }
}

fn source(s: &Source, policy_namespace: &str, l7: &mut Vec<String>) -> Match {
    for (name, values) in [
        ("requestPrincipals", &s.request_principals),
        ("notRequestPrincipals", &s.not_request_principals),
        ("remoteIpBlocks", &s.remote_ip_blocks),
        ("notRemoteIpBlocks", &s.not_remote_ip_blocks),
    ] {
        if !values.is_empty() {
            l7.push(name.to_string());
        }
    }
    let accounts = |values: &[String]| {
        values
            .iter()
            .map(|v| match v.split_once('/') {
                Some((ns, sa)) => ServiceAccountMatch {
                    namespace: ns.to_string(),
                    service_account: sa.to_string(),
                },
                None => ServiceAccountMatch {
                    namespace: policy_namespace.to_string(),
                    service_account: v.clone(),
                },
            })
            .collect()
    };
    Match {
        principals: strings(&s.principals),
        not_principals: strings(&s.not_principals),
        namespaces: strings(&s.namespaces),
        not_namespaces: strings(&s.not_namespaces),
        source_ips: cidrs(&s.ip_blocks),
        not_source_ips: cidrs(&s.not_ip_blocks),
        service_accounts: accounts(&s.service_accounts),
        not_service_accounts: accounts(&s.not_service_accounts),
        ..Match::default()
    }
}

/// The match of an L4 `when` condition; `None` for keys ztunnel cannot check.
fn condition(c: &Condition) -> Option<Match> {
    let (v, n) = (&c.values, &c.not_values);
    Some(match c.key.as_str() {
        "source.ip" => Match {
            source_ips: cidrs(v),
            not_source_ips: cidrs(n),
            ..Match::default()
        },
        "source.namespace" => Match {
            namespaces: strings(v),
            not_namespaces: strings(n),
            ..Match::default()
        },
        "source.principal" => Match {
            principals: strings(v),
            not_principals: strings(n),
            ..Match::default()
        },
        "destination.ip" => Match {
            destination_ips: cidrs(v),
            not_destination_ips: cidrs(n),
            ..Match::default()
        },
        "destination.port" => Match {
            destination_ports: ports(v),
            not_destination_ports: ports(n),
            ..Match::default()
        },
        _ => return None,
    })
}

/// `*` → presence, `*x` → suffix, `x*` → prefix, else exact.
pub fn string_match(value: &str) -> StringMatch {
    if value == "*" {
        StringMatch::Presence
    } else if let Some(suffix) = value.strip_prefix('*') {
        StringMatch::Suffix(suffix.to_string())
    } else if let Some(prefix) = value.strip_suffix('*') {
        StringMatch::Prefix(prefix.to_string())
    } else {
        StringMatch::Exact(value.to_string())
    }
}

fn strings(values: &[String]) -> Vec<StringMatch> {
    values.iter().map(|v| string_match(v)).collect()
}

// The config source validated these values; anything unparsable here is left out.
fn cidrs(values: &[String]) -> Vec<Cidr> {
    values.iter().filter_map(|v| v.parse().ok()).collect()
}

fn ports(values: &[String]) -> Vec<u16> {
    values.iter().filter_map(|v| v.parse().ok()).collect()
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
