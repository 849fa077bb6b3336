//! L4 authorization at the destination, for new and live connections.
//!
//! Each inbound connection is evaluated against the policies in scope of the destination
//! workload (`mesh::rbac`). Allowed connections are registered in [`super::live`] while they
//! live; whenever the config store changes, every live inbound connection is evaluated again
//! and those no longer allowed are closed.

use mesh::model::Workload;
use mesh::rbac::{evaluate, Connection, Decision};
use mesh::store::Store;

/// Evaluates `conn` against the policies in scope of `dst`, logging dry-run outcomes.
pub fn check(store: &Store, dst: &Workload, conn: &Connection) -> Decision {
    let policies = store.policies_for(dst);
    let decision = evaluate(&policies, conn);
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
    decision
}
