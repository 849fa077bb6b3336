//! L7 authorization and request authentication, called from exactly one place: the request
//! filter phase ([`crate::http`]), before routing.
//!
//! The whole check is `Store::l7_check` (`mesh::l7authz` over the store): the RequestAuthentications in
//! scope check the request's tokens (a bad one is a 401), the principal they prove joins the
//! request, then the L7 AuthorizationPolicies in scope decide (a denial is a 403, or gRPC
//! status 7). Scope is this waypoint (its Gateway's name and namespace), the destination
//! service, and the mesh-wide root namespace.

use std::time::{SystemTime, UNIX_EPOCH};

use http::request::Parts;
use mesh::l7authz::{Authenticated, L7Request, WaypointContext};

use crate::ctx::RequestCtx;
use crate::select::Destination;
use crate::Shared;

/// The verdict on one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Proceed, after applying what authentication asks (claim headers, tokens stripped).
    Allow(Authenticated),
    /// Answer 403 (`RBAC: access denied`; gRPC status 7); the reason names the deciding
    /// policy and rule.
    Deny(String),
    /// Answer 401 with `body` (gRPC status 16): a token was present and not valid.
    Unauthenticated {
        /// Envoy's wording for the failure.
        body: &'static str,
        /// The detail, for the log.
        reason: String,
    },
}

/// Decides whether the request in `ctx` (head `parts`) may proceed.
pub fn authorize(shared: &Shared, ctx: &RequestCtx, parts: &Parts) -> Decision {
    let service = match &ctx.down.destination {
        Destination::Service(s) => Some(s.key()),
        Destination::Workload(_) => None,
    };
    let at = WaypointContext {
        namespace: &shared.config.namespace,
        name: &shared.config.name,
        service: service.as_deref(),
    };
    let mut request = L7Request {
        source_identity: Some(ctx.down.peer.clone()),
        source_ip: ctx.down.client_addr.ip(),
        remote_ip: Some(ctx.down.client_addr.ip()),
        destination_ip: Some(ctx.down.target.ip()),
        destination_port: ctx.down.target.port(),
        host: ctx.authority.clone(),
        method: ctx.method.as_str().to_string(),
        path: ctx.path.clone(),
        headers: parts.headers.clone(),
        auth: None,
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let checked = match shared
        .store
        .l7_check(&at, &mut request, parts.uri.query(), now)
    {
        Ok(checked) => checked,
        Err(e) => {
            tracing::info!(target: "authz", source = %ctx.down.peer, method = %ctx.method, path = %ctx.path, error = %e, "request with an invalid token refused");
            return Decision::Unauthenticated {
                body: e.response_body(),
                reason: e.to_string(),
            };
        }
    };
    let decision = &checked.decision;
    if decision.audited() {
        tracing::info!(target: "audit", source = %ctx.down.peer, method = %ctx.method, path = %ctx.path, allowed = decision.allowed, reason = ?decision.reason, "request audited");
    }
    if let Some(dry) = &decision.dry_run {
        tracing::info!(target: "authz", source = %ctx.down.peer, method = %ctx.method, path = %ctx.path, enforced_allowed = decision.allowed, dry_run_allowed = dry.allowed, dry_run_reason = ?dry.reason, "dry-run policy evaluated (not enforced)");
    }
    if decision.allowed {
        Decision::Allow(checked.authenticated)
    } else {
        let reason = format!("{:?}", decision.reason);
        tracing::info!(target: "authz", source = %ctx.down.peer, method = %ctx.method, path = %ctx.path, %reason, "request denied");
        Decision::Deny(reason)
    }
}
