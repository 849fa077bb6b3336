//! L7 authorization at the waypoint: AuthorizationPolicies on HTTP requests and
//! RequestAuthentication (JWT) rules. Pure functions over typed models, no IO, no clock (the
//! caller passes the time), so `meshctl authz check` can judge a request offline with the
//! waypoint's own code.
//!
//! - [`L7Policy`] (from `ambient.waypoint.v1.L7Policy`) and [`evaluate`]: Istio's semantics.
//!   Any matching DENY denies; otherwise, with no ALLOW policy in scope, allow; otherwise allow
//!   only if an ALLOW matches. AUDIT policies only mark the request; dry-run policies only
//!   report ([`L7Decision::dry_run`]). CUSTOM does not exist here (istiod-lite refuses it).
//! - A policy matches when any rule does; a rule when its `from` (any source), its `to` (any
//!   operation) and every `when` condition match; an empty part matches everything; a source
//!   or operation when every field it sets matches (values OR-ed; a `not_` field when none of
//!   its values matches). An attribute the request lacks (no peer identity, no JWT, no such
//!   header) satisfies no value: a positive condition on it fails, a `not_` one holds.
//! - String conditions as Istio writes them: exact, `prefix*`, `*suffix`, `*` (any non-empty).
//!   Hosts compare case-insensitively, with and without the request's port; paths compare in
//!   the [`normalize_path`] form without the query; methods exactly; principals without the
//!   `spiffe://` scheme.
//! - [`RequestAuthn`] and [`authenticate`]: find and verify JWTs ([`jwt`]) and turn a valid one
//!   into [`RequestAuth`] (`request.auth.*`, `requestPrincipals`).
//! - Scope: [`L7Target::applies`] tells whether a policy or RequestAuthn applies to a request
//!   through a given waypoint to a given service ([`WaypointContext`]);
//!   the store's `l7_policies_for` gathers them.

/// Body of the 403 answer to an HTTP request denied by policy (as Envoy's RBAC filter).
pub const DENIED_BODY: &str = "RBAC: access denied";
/// `grpc-status` of a gRPC call denied by policy: PERMISSION_DENIED.
pub const DENIED_GRPC_STATUS: u32 = 7;
/// `grpc-status` of a gRPC call with a bad JWT: UNAUTHENTICATED (HTTP requests get 401 with
/// [`jwt::JwtError::response_body`]).
pub const UNAUTHENTICATED_GRPC_STATUS: u32 = 16;

mod authn;
mod eval;
pub mod jwt;
mod model;

#[cfg(test)]
mod authn_tests;
#[cfg(test)]
mod eval_tests;

pub use authn::{
    authenticate, Authenticated, ClaimToHeader, JwtHeader, JwtRule, RequestAuthn, TokenLocation,
    DEFAULT_TOKEN_HEADER, DEFAULT_TOKEN_PARAM,
};
pub use eval::{
    evaluate, matching_rule, normalize_path, L7Decision, L7DryRunOutcome, L7DryRunReport,
    L7Request, PolicyRule, RequestAuth,
};
pub use model::{
    istio_string, istio_string_match, ConditionKey, ConditionValue, L7Action, L7Condition,
    L7Operation, L7Policy, L7Rule, L7Scope, L7Source, L7Target, WaypointContext,
};

/// The outcome of the whole L7 check of a request (`Store::l7_check`): the verdict and what
/// authentication found.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked {
    /// The keys of the L7 policies in scope, in evaluation order.
    pub policies: Vec<String>,
    /// The verdict.
    pub decision: L7Decision,
    /// The JWT outcome: headers to add and token locations to strip before forwarding.
    pub authenticated: Authenticated,
}
