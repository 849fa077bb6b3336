//! The L7 authorization hook. Called from exactly one place: the request filter phase
//! ([`crate::http`]), before routing.
//!
//! Today every request is allowed; L7 AuthorizationPolicy evaluation (methods, paths, hosts,
//! request principals) plugs in here.

use crate::http::RequestCtx;

/// The verdict on one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Proceed.
    Allow,
    /// Answer 403 (`RBAC: access denied`; gRPC status 7); the reason names the deciding
    /// policy and rule.
    Deny(String),
}

/// Decides whether the request in `ctx` may proceed.
pub fn authorize(_ctx: &RequestCtx) -> Decision {
    Decision::Allow
}
