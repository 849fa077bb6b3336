//! Our serde types for the Kubernetes kinds that `k8s-openapi` does not have: Istio's
//! `security.istio.io` AuthorizationPolicy, PeerAuthentication and RequestAuthentication,
//! Istio's `networking.istio.io` VirtualService and DestinationRule (the subsets a waypoint
//! applies), and Gateway API's `gateway.networking.k8s.io` Gateway, HTTPRoute and GRPCRoute.
//!
//! This crate is shared by istiod-lite (which reads these kinds from its config source) and
//! meshctl (which refuses invalid objects at `apply`), so both judge an object the same way. It
//! depends on serde and k8s-openapi only.
//!
//! Each kind is `{metadata, spec}` with `k8s-openapi`'s [`ObjectMeta`] and implements
//! [`k8s_openapi::Resource`] and [`k8s_openapi::Metadata`], so a later Kubernetes watcher can
//! list and watch them like the core kinds. `apiVersion` and `kind` are checked by the config
//! source before a document reaches these types, so the types accept both the `v1` and
//! `v1beta1` versions (their schemas are the same for the fields read here).
//!
//! Typing policy: the fields translation reads are typed; the security kinds (whose silent
//! misreading could widen access) are typed completely and refuse unknown fields, and
//! [`AuthorizationPolicy::validate`] applies the checks Istio's admission webhook makes on the
//! values. The routing kinds refuse unknown fields too (a typo must not silently drop a rule)
//! and their `validate()` ([`HttpRoute::validate`], [`GrpcRoute::validate`],
//! [`VirtualService::validate`], [`DestinationRule::validate`]) returns a [`ValidationError`]
//! naming each bad field by its path (`spec.rules[0].matches[1].path.value: ...`). Fields the
//! mesh accepts but does not apply stay [`serde_json::Value`].
//!
//! [`ObjectMeta`]: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta

#![forbid(unsafe_code)]

mod authorization_policy;
mod destination_rule;
mod gateway;
mod grpc_route;
mod http_route;
mod peer_authentication;
mod request_authentication;
mod validate;
mod virtual_service;

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

pub use authorization_policy::{
    AuthorizationAction, AuthorizationPolicy, AuthorizationPolicySpec, Condition,
    ExtensionProvider, Operation, PolicyRule, RuleFrom, RuleTo, Source, DRY_RUN_ANNOTATION,
};
pub use destination_rule::{
    ConnectionPoolSettings, DestinationRule, DestinationRuleSpec, HttpSettings,
    LoadBalancerSettings, OutlierDetection, TcpSettings, TrafficPolicy, LB_SIMPLE,
};
pub use gateway::{Gateway, GatewayListener, GatewaySpec, ParentReference};
pub use grpc_route::{
    GrpcMethodMatch, GrpcRoute, GrpcRouteFilter, GrpcRouteMatch, GrpcRouteRule, GrpcRouteSpec,
};
pub use http_route::{
    BackendRef, Fraction, HeaderMatch, HeaderModifier, HttpHeader, HttpPathMatch, HttpRoute,
    HttpRouteFilter, HttpRouteMatch, HttpRouteRetry, HttpRouteRule, HttpRouteSpec,
    HttpRouteTimeouts, PathModifier, RequestMirror, RequestRedirect, UrlRewrite,
};
pub use peer_authentication::{MtlsMode, MutualTls, PeerAuthentication, PeerAuthenticationSpec};
pub use request_authentication::{
    ClaimToHeader, JwtHeader, JwtRule, RequestAuthentication, RequestAuthenticationSpec,
};
pub use validate::{parse_duration, parse_gateway_duration, ValidationError};
pub use virtual_service::{
    IstioStringMatch, Percentage, VirtualService, VirtualServiceSpec, VsAbort, VsDelay,
    VsDestination, VsDestinationWeight, VsFault, VsHttpRoute, VsMatch, VsPort, VsRetries,
    GRPC_STATUS_NAMES,
};

/// API group of Istio's security kinds.
pub const ISTIO_SECURITY_GROUP: &str = "security.istio.io";
/// API group of the Kubernetes Gateway API.
pub const GATEWAY_API_GROUP: &str = "gateway.networking.k8s.io";
/// API group of Istio's networking kinds.
pub const ISTIO_NETWORKING_GROUP: &str = "networking.istio.io";

pub(crate) use validate::is_cidr;

/// Istio's `WorkloadSelector`: the pods (in the policy's namespace) whose labels include all
/// of `matchLabels`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadSelector {
    /// Labels a pod must carry (all of them, with these values).
    #[serde(default, deserialize_with = "null_as_default")]
    pub match_labels: BTreeMap<String, String>,
}

impl WorkloadSelector {
    /// Whether `labels` include every `matchLabels` entry (an empty selector selects all).
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
    }
}

/// Istio's `PolicyTargetReference`: the object (Gateway, Service, ...) a policy binds to
/// instead of a selector. Such policies are enforced by a waypoint, not by ztunnel.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyTargetReference {
    /// API group of the target (empty for the core group).
    #[serde(default, deserialize_with = "null_as_default")]
    pub group: String,
    /// Kind of the target, e.g. `Gateway` or `Service`.
    pub kind: String,
    /// Name of the target.
    pub name: String,
    /// Namespace of the target; the policy's own when absent.
    #[serde(default)]
    pub namespace: Option<String>,
}

/// Deserializes `null` (e.g. `rules:` with nothing after it) as the type's default, as
/// Kubernetes does for omitted optional fields.
pub(crate) fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Implements `k8s_openapi::Resource` and `Metadata` (with `ObjectMeta`) for a namespaced kind.
macro_rules! namespaced_resource {
    ($ty:ty, group = $group:expr, kind = $kind:literal, plural = $plural:literal) => {
        impl k8s_openapi::Resource for $ty {
            const API_VERSION: &'static str = concat!($group, "/v1");
            const GROUP: &'static str = $group;
            const KIND: &'static str = $kind;
            const VERSION: &'static str = "v1";
            const URL_PATH_SEGMENT: &'static str = $plural;
            type Scope = k8s_openapi::NamespaceResourceScope;
        }

        impl k8s_openapi::Metadata for $ty {
            type Ty = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

            fn metadata(&self) -> &Self::Ty {
                &self.metadata
            }

            fn metadata_mut(&mut self) -> &mut Self::Ty {
                &mut self.metadata
            }
        }
    };
}
pub(crate) use namespaced_resource;

#[cfg(test)]
mod route_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selector_matches_label_subsets_and_empty_selects_all() {
        let labels = BTreeMap::from([
            ("app".to_string(), "web".to_string()),
            ("version".to_string(), "v1".to_string()),
        ]);
        let sel = |pairs: &[(&str, &str)]| WorkloadSelector {
            match_labels: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        assert!(sel(&[("app", "web")]).matches(&labels));
        assert!(sel(&[("app", "web"), ("version", "v1")]).matches(&labels));
        assert!(!sel(&[("app", "db")]).matches(&labels));
        assert!(!sel(&[("tier", "x")]).matches(&labels));
        assert!(sel(&[]).matches(&labels));
        assert!(sel(&[]).matches(&BTreeMap::new()));
    }
}
