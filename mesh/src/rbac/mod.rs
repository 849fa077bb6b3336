//! L4 authorization: whether a connection arriving at a workload is allowed by the policies in
//! scope for it. Pure functions over the [`model`](crate::model) types, no IO, no clock.
//!
//! The caller gathers the policies in scope (global ∪ the destination's namespace ∪ the ones the
//! workload names: [`Store::policies_for`](crate::store::Store::policies_for)) and calls
//! [`evaluate`]. Then:
//!
//! 1. any matching DENY policy denies;
//! 2. otherwise, with no ALLOW policy in scope, the connection is allowed;
//! 3. otherwise it is allowed only if some ALLOW policy matches.
//!
//! Dry-run policies are evaluated too, but only reported ([`DryRunReport`]): they never change
//! [`Decision::allowed`].
//!
//! # Matching
//!
//! A policy matches when any of its rules does; a rule when all of its clauses do; a clause when
//! any of its matches does; a [`Match`] when every field it sets does. A field matches when the
//! connection's value satisfies one of its values (if any are given) and none of the values of
//! its `not_` form. So an absent condition is no condition:
//!
//! - a rule without clauses, a clause without matches and a match without fields match every
//!   connection;
//! - a policy without rules matches nothing, so an ALLOW `spec: {}` ("allow nothing") denies
//!   every connection that no other ALLOW policy lets in.
//!
//! The fields compare against: `namespaces` the source identity's namespace; `principals` its
//! principal form without the scheme (`cluster.local/ns/default/sa/sleep`); `service_accounts`
//! its namespace and service account (not its trust domain); `source_ips`, `destination_ips`
//! and `destination_ports` the addresses of the connection ([`Cidr::contains`], so IPv4-mapped
//! IPv6 addresses count as IPv4).
//!
//! A plaintext connection has no identity, hence no namespace, principal or service account: no
//! value satisfies a condition on them. A positive identity field never matches it and a `not_`
//! identity field always does. That is what makes Istio's STRICT mTLS policy (DENY with
//! `not_principals: [presence]`) deny plaintext and nothing else.
//!
//! # Where this differs from upstream ztunnel
//!
//! - ztunnel skips a match that sets no field, so a clause holding only such matches never
//!   matches. istiod emits one when it strips the HTTP-only parts of a DENY rule, and says the
//!   result is "enforced without the HTTP rules, more restrictive than requested"; here the
//!   empty match matches, so such a DENY keeps its L4 part (fail closed) as the protocol notes
//!   require. ALLOW rules with HTTP-only parts are dropped by istiod and never reach us.
//! - ztunnel compares namespace conditions of a plaintext connection against the empty string,
//!   so `exact: ""` or `prefix: ""` match it; here nothing does. istiod never emits those.

use std::borrow::Borrow;
use std::cell::OnceCell;
use std::fmt;
use std::net::IpAddr;

use serde::Serialize;

use crate::identity::Identity;
use crate::model::{Cidr, Clause, Match, Policy, PolicyAction, Rule};

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

/// The facts about a connection that L4 policies can check.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Connection {
    /// The peer's verified identity; `None` for plaintext.
    pub src_identity: Option<Identity>,
    /// The source address.
    pub src_ip: IpAddr,
    /// The destination address (the workload's own, never a service VIP).
    pub dst_ip: IpAddr,
    /// The destination port (the workload's target port).
    pub dst_port: u16,
}

impl fmt::Display for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.src_identity {
            Some(id) => write!(f, "{} ({id})", self.src_ip)?,
            None => write!(f, "{} (plaintext)", self.src_ip)?,
        }
        match self.dst_ip {
            IpAddr::V4(ip) => write!(f, " -> {ip}:{}", self.dst_port),
            IpAddr::V6(ip) => write!(f, " -> [{ip}]:{}", self.dst_port),
        }
    }
}

/// The verdict on a connection and what decided it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    /// Whether the connection may proceed.
    pub allowed: bool,
    /// Why.
    pub reason: DecisionReason,
    /// What the dry-run policies in scope say; `None` when there are none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<DryRunReport>,
}

/// What decided a verdict. Policies are named `<namespace>/<name>`; rules by their index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum DecisionReason {
    /// A DENY policy matched (the first one, in the order given).
    DeniedBy {
        /// The policy.
        policy: String,
        /// The index of its first rule that matched.
        rule: usize,
    },
    /// No DENY policy matched and this ALLOW policy did (the first one, in the order given).
    AllowedBy {
        /// The policy.
        policy: String,
        /// The index of its first rule that matched.
        rule: usize,
    },
    /// ALLOW policies are in scope and none matched.
    NoAllowMatched {
        /// Every ALLOW policy that was checked, in the order given.
        #[serde(rename = "allowPolicies")]
        allow_policies: Vec<String>,
    },
    /// Only DENY policies are in scope and none matched.
    NoAllowPolicies,
    /// No policy is in scope.
    NoPolicies,
}

impl fmt::Display for DecisionReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecisionReason::DeniedBy { policy, rule } => {
                write!(f, "denied by DENY policy {policy} (rule {rule})")
            }
            DecisionReason::AllowedBy { policy, rule } => {
                write!(f, "allowed by ALLOW policy {policy} (rule {rule})")
            }
            DecisionReason::NoAllowMatched { allow_policies } => {
                write!(f, "no ALLOW policy matched ({})", allow_policies.join(", "))
            }
            DecisionReason::NoAllowPolicies => {
                f.write_str("no DENY policy matched and no ALLOW policy applies")
            }
            DecisionReason::NoPolicies => f.write_str("no policy applies"),
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.reason)?;
        if let Some(dry) = &self.dry_run {
            let would = if dry.allowed { "allow" } else { "deny" };
            write!(
                f,
                "; with dry-run policies it would {would}: {}",
                dry.reason
            )?;
        }
        Ok(())
    }
}

/// The dry-run policies in scope and the verdict they would lead to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DryRunReport {
    /// The verdict if the dry-run policies were enforced along with the others.
    pub allowed: bool,
    /// Why, under the same assumption.
    pub reason: DecisionReason,
    /// Each dry-run policy in scope, in the order given.
    pub policies: Vec<DryRunOutcome>,
}

/// How one dry-run policy judged the connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DryRunOutcome {
    /// The policy, `<namespace>/<name>`.
    pub policy: String,
    /// Its action.
    pub action: PolicyAction,
    /// The index of its first rule that matched; `None` when it did not match.
    pub matched_rule: Option<usize>,
}

/// Decides on `conn` given the policies in scope for its destination (their order only picks
/// which of several matching policies is named in the reason).
///
/// Takes `&[Arc<Policy>]` (as [`Store::policies_for`](crate::store::Store::policies_for) returns),
/// `&[Policy]` or `&[&Policy]`.
pub fn evaluate<P: Borrow<Policy>>(policies: &[P], conn: &Connection) -> Decision {
    let source = Source::new(conn);
    let mut enforced = Tally::default();
    let mut with_dry_run = Tally::default();
    let mut dry_run = Vec::new();
    for (i, policy) in policies.iter().enumerate() {
        let policy = policy.borrow();
        let rule = source.matching_rule(policy);
        with_dry_run.add(i, policy.action, rule);
        if policy.dry_run {
            dry_run.push(DryRunOutcome {
                policy: policy.key(),
                action: policy.action,
                matched_rule: rule,
            });
        } else {
            enforced.add(i, policy.action, rule);
        }
    }
    let (allowed, reason) = enforced.decide(policies, |p| !p.dry_run);
    let dry_run = (!dry_run.is_empty()).then(|| {
        let (allowed, reason) = with_dry_run.decide(policies, |_| true);
        DryRunReport {
            allowed,
            reason,
            policies: dry_run,
        }
    });
    Decision {
        allowed,
        reason,
        dry_run,
    }
}

/// Decides on `conn` when it came through the waypoint instance `via` (`None`: straight from
/// its client, which is [`evaluate`]).
///
/// Behind a waypoint `conn`'s source is the original client, and policy accepts either
/// identity: a rule naming the client or one naming the waypoint allows it (Istio's advice for
/// L4 policy behind a waypoint), and a DENY naming either denies it.
pub fn evaluate_via<P: Borrow<Policy>>(
    policies: &[P],
    conn: &Connection,
    via: Option<&Identity>,
) -> Decision {
    let as_client = evaluate(policies, conn);
    let Some(via) = via else {
        return as_client;
    };
    let as_waypoint = evaluate(
        policies,
        &Connection {
            src_identity: Some(via.clone()),
            ..conn.clone()
        },
    );
    let denied_by_policy = |d: &Decision| matches!(d.reason, DecisionReason::DeniedBy { .. });
    if denied_by_policy(&as_client) || (!denied_by_policy(&as_waypoint) && as_client.allowed) {
        as_client
    } else if denied_by_policy(&as_waypoint) || as_waypoint.allowed {
        as_waypoint
    } else {
        as_client
    }
}

/// The index of the first rule of `policy` that `conn` matches; `None` if none does (always
/// `None` for a policy without rules). Ignores the action and the dry-run flag.
pub fn matching_rule(policy: &Policy, conn: &Connection) -> Option<usize> {
    Source::new(conn).matching_rule(policy)
}

/// The results so far for one set of policies, by index into the caller's slice.
#[derive(Default)]
struct Tally {
    any: bool,
    any_allow: bool,
    denied_by: Option<(usize, usize)>,
    allowed_by: Option<(usize, usize)>,
}

impl Tally {
    fn add(&mut self, index: usize, action: PolicyAction, rule: Option<usize>) {
        self.any = true;
        let slot = match action {
            PolicyAction::Deny => &mut self.denied_by,
            PolicyAction::Allow => {
                self.any_allow = true;
                &mut self.allowed_by
            }
        };
        if slot.is_none() {
            *slot = rule.map(|r| (index, r));
        }
    }

    /// The verdict; `counted` tells which of `policies` were added, for the reason's list.
    fn decide<P: Borrow<Policy>>(
        &self,
        policies: &[P],
        counted: impl Fn(&Policy) -> bool,
    ) -> (bool, DecisionReason) {
        let key = |i: usize| policies[i].borrow().key();
        if let Some((i, rule)) = self.denied_by {
            return (
                false,
                DecisionReason::DeniedBy {
                    policy: key(i),
                    rule,
                },
            );
        }
        if !self.any_allow {
            let reason = if self.any {
                DecisionReason::NoAllowPolicies
            } else {
                DecisionReason::NoPolicies
            };
            return (true, reason);
        }
        if let Some((i, rule)) = self.allowed_by {
            return (
                true,
                DecisionReason::AllowedBy {
                    policy: key(i),
                    rule,
                },
            );
        }
        let allow_policies = policies
            .iter()
            .map(Borrow::borrow)
            .filter(|p| p.action == PolicyAction::Allow && counted(p))
            .map(Policy::key)
            .collect();
        (false, DecisionReason::NoAllowMatched { allow_policies })
    }
}

/// The source side of a connection, with the principal string built once, when first needed.
struct Source<'a> {
    conn: &'a Connection,
    principal: OnceCell<Option<String>>,
}

impl<'a> Source<'a> {
    fn new(conn: &'a Connection) -> Self {
        Source {
            conn,
            principal: OnceCell::new(),
        }
    }

    fn identity(&self) -> Option<&'a Identity> {
        self.conn.src_identity.as_ref()
    }

    fn principal(&self) -> Option<&str> {
        self.principal
            .get_or_init(|| self.identity().map(Identity::principal))
            .as_deref()
    }

    fn matching_rule(&self, policy: &Policy) -> Option<usize> {
        policy.rules.iter().position(|r| self.rule_matches(r))
    }

    fn rule_matches(&self, rule: &Rule) -> bool {
        rule.clauses.iter().all(|c| self.clause_matches(c))
    }

    fn clause_matches(&self, clause: &Clause) -> bool {
        clause.matches.is_empty() || clause.matches.iter().any(|m| self.match_matches(m))
    }

    fn match_matches(&self, m: &Match) -> bool {
        let conn = self.conn;
        let id = self.identity();
        field(&m.destination_ports, &m.not_destination_ports, |p| {
            *p == conn.dst_port
        }) && field(&m.destination_ips, &m.not_destination_ips, |c: &Cidr| {
            c.contains(conn.dst_ip)
        }) && field(&m.source_ips, &m.not_source_ips, |c: &Cidr| {
            c.contains(conn.src_ip)
        }) && field(&m.namespaces, &m.not_namespaces, |s| {
            id.is_some_and(|id| s.matches(id.namespace()))
        }) && field(&m.service_accounts, &m.not_service_accounts, |sa| {
            id.is_some_and(|id| {
                sa.namespace == id.namespace() && sa.service_account == id.service_account()
            })
        }) && field(&m.principals, &m.not_principals, |s| {
            self.principal().is_some_and(|p| s.matches(p))
        })
    }
}

/// One field and its `not_` form: some of `any_of` (when given) and none of `none_of` hold.
fn field<T>(any_of: &[T], none_of: &[T], holds: impl Fn(&T) -> bool) -> bool {
    (any_of.is_empty() || any_of.iter().any(&holds)) && !none_of.iter().any(&holds)
}
