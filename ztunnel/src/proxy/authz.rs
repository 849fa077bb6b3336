//! L4 authorization at the destination, for new and live connections.
//!
//! Each inbound connection is evaluated against the policies in scope of the destination
//! workload (`mesh::rbac`) when it arrives ([`check`]). Allowed connections are registered in
//! [`super::live`] while they live; when the policies in scope of a pod change, its live
//! inbound connections are evaluated again ([`super::live::LiveConnections::recheck`], with
//! [`decide`] and [`log_dry_run`]) and those no longer allowed are closed.

use std::fmt;
use std::sync::Arc;

use mesh::model::{Policy, Workload};
use mesh::rbac::{evaluate_via, Connection, Decision};
use mesh::store::Store;
use mesh::Identity;

/// An inbound connection as policy sees it: source, destination, and the waypoint it came
/// through when it came through one.
///
/// Behind a waypoint the source is the original client (as the waypoint says, and only the
/// pod's own waypoint is believed), and policy accepts either identity: a rule naming the
/// client or one naming the waypoint (Istio's advice for L4 policy behind a waypoint) allows
/// it, and a DENY naming either denies it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Inbound {
    /// The connection, with the original client as its source.
    pub conn: Connection,
    /// The waypoint instance that proxied it.
    pub via: Option<Identity>,
}

impl Inbound {
    /// A connection straight from its client.
    pub fn direct(conn: Connection) -> Self {
        Inbound { conn, via: None }
    }
}

impl fmt::Display for Inbound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.conn)?;
        if let Some(via) = &self.via {
            write!(f, " via waypoint {via}")?;
        }
        Ok(())
    }
}

/// Evaluates a new connection against the policies in scope of `dst`, logging the dry-run
/// outcome if any.
pub fn check(store: &Store, dst: &Workload, inbound: &Inbound) -> Decision {
    let decision = decide(&store.policies_for(dst), inbound);
    log_dry_run(inbound, &decision);
    decision
}

/// Evaluates `inbound` against `policies` (those in scope of its destination); logs nothing.
pub fn decide(policies: &[Arc<Policy>], inbound: &Inbound) -> Decision {
    evaluate_via(policies, &inbound.conn, inbound.via.as_ref())
}

/// Logs what the dry-run policies in scope would have decided for `inbound`, if there are any.
pub fn log_dry_run(inbound: &Inbound, decision: &Decision) {
    if let Some(dry) = &decision.dry_run {
        tracing::info!(
            target: "authz",
            connection = %inbound,
            enforced = %decision.reason,
            allowed = decision.allowed,
            dry_run_allowed = dry.allowed,
            dry_run_reason = %dry.reason,
            "dry-run policy evaluated (not enforced)"
        );
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use mesh::model::{Clause, Match, PolicyAction, PolicyScope, Rule, StringMatch};
    use mesh::rbac::DecisionReason;

    use super::*;

    fn id(sa: &str) -> Identity {
        format!("spiffe://cluster.local/ns/shop/sa/{sa}")
            .parse()
            .expect("id")
    }

    fn naming(name: &str, action: PolicyAction, sa: &str) -> Arc<Policy> {
        Arc::new(Policy {
            name: name.into(),
            namespace: "shop".into(),
            scope: PolicyScope::Namespace,
            action,
            rules: vec![Rule {
                clauses: vec![Clause {
                    matches: vec![Match {
                        principals: vec![StringMatch::Exact(format!(
                            "cluster.local/ns/shop/sa/{sa}"
                        ))],
                        ..Match::default()
                    }],
                }],
            }],
            dry_run: false,
        })
    }

    fn via_waypoint() -> Inbound {
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        Inbound {
            conn: Connection {
                src_identity: Some(id("client")),
                src_ip: ip("10.11.0.7"),
                dst_ip: ip("10.12.0.2"),
                dst_port: 8080,
            },
            via: Some(id("waypoint")),
        }
    }

    #[test]
    fn behind_a_waypoint_an_allow_naming_the_client_or_the_waypoint_allows() {
        let conn = via_waypoint();
        for sa in ["client", "waypoint"] {
            let d = decide(&[naming("allow", PolicyAction::Allow, sa)], &conn);
            assert!(d.allowed, "ALLOW naming {sa}: {}", d.reason);
        }
        let d = decide(&[naming("allow", PolicyAction::Allow, "someone")], &conn);
        assert!(!d.allowed, "{}", d.reason);
    }

    #[test]
    fn behind_a_waypoint_a_deny_naming_either_identity_denies() {
        let conn = via_waypoint();
        for sa in ["client", "waypoint"] {
            let policies = [
                naming("allow", PolicyAction::Allow, "client"),
                naming("deny", PolicyAction::Deny, sa),
            ];
            let d = decide(&policies, &conn);
            assert!(!d.allowed, "DENY naming {sa}");
            assert!(
                matches!(&d.reason, DecisionReason::DeniedBy { policy, .. } if policy == "shop/deny"),
                "{}",
                d.reason
            );
        }
    }

    #[test]
    fn a_direct_connection_is_judged_by_its_own_identity_only() {
        let mut conn = via_waypoint();
        conn.via = None;
        let d = decide(&[naming("allow", PolicyAction::Allow, "waypoint")], &conn);
        assert!(!d.allowed);
    }
}
