//! L4 authorization at the destination, for new and live connections.
//!
//! Each inbound connection is evaluated against the policies in scope of the destination
//! workload (`mesh::rbac`) when it arrives ([`check`]). Allowed connections are registered in
//! [`super::live`] while they live; when the policies in scope of a pod change, its live
//! inbound connections are evaluated again ([`super::live::LiveConnections::recheck`], with
//! [`decide`] and [`log_dry_run`]) and those no longer allowed are closed.

use std::sync::Arc;

use mesh::model::{Policy, Workload};
use mesh::rbac::{evaluate, Connection, Decision};
use mesh::store::Store;

/// Evaluates a new connection `conn` against the policies in scope of `dst`, logging the
/// dry-run outcome if any.
pub fn check(store: &Store, dst: &Workload, conn: &Connection) -> Decision {
    let decision = decide(&store.policies_for(dst), conn);
    log_dry_run(conn, &decision);
    decision
}

/// Evaluates `conn` against `policies` (those in scope of its destination); logs nothing.
pub fn decide(policies: &[Arc<Policy>], conn: &Connection) -> Decision {
    evaluate(policies, conn)
}

/// Logs what the dry-run policies in scope would have decided for `conn`, if there are any.
pub fn log_dry_run(conn: &Connection, decision: &Decision) {
    if let Some(dry) = &decision.dry_run {
        tracing::info!(
            target: "authz",
            connection = %conn,
            enforced = %decision.reason,
            allowed = decision.allowed,
            dry_run_allowed = dry.allowed,
            dry_run_reason = %dry.reason,
            "dry-run policy evaluated (not enforced)"
        );
    }
}
