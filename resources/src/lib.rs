//! The Kubernetes kinds the mesh reads, one library for every reader: istiod-lite (its
//! directory source, and the Kubernetes watches), `meshctl apply` and the CNI node agent.
//!
//! - [`Kind`]: the table of kinds (group, versions, scope); [`classify`] reads a document's
//!   header, [`read`] its typed form ([`Object`]), with errors naming the field path.
//! - The core kinds are `k8s-openapi`'s. Istio's `security.istio.io` AuthorizationPolicy,
//!   PeerAuthentication and RequestAuthentication, Istio's `networking.istio.io`
//!   VirtualService and DestinationRule (the subsets a waypoint applies), and Gateway API's
//!   `gateway.networking.k8s.io` Gateway, GatewayClass, HTTPRoute and GRPCRoute are kube
//!   `CustomResource`s defined here, each with one `validate()`; [`crd`] generates their
//!   CustomResourceDefinitions, which `manifests/crds/` ships (a test keeps the two equal).
//! - YAML is read with `serde-saphyr` (YAML 1.2 core: only `true`/`false` are booleans):
//!   [`yaml_documents`], [`from_yaml`].
//!
//! Typing policy: the fields translation reads are typed; the security kinds (whose silent
//! misreading could widen access) are typed completely and refuse unknown fields, and
//! [`AuthorizationPolicy::validate`] applies the checks Istio's admission webhook makes on the
//! values. The routing kinds refuse unknown fields too (a typo must not silently drop a rule)
//! and their `validate()` ([`HttpRoute::validate`], [`GrpcRoute::validate`],
//! [`VirtualService::validate`], [`DestinationRule::validate`]) returns a [`ValidationError`]
//! naming each bad field by its path (`spec.rules[0].matches[1].path.value: ...`). Fields the
//! mesh accepts but does not apply stay [`serde_json::Value`] (in the CRDs:
//! `x-kubernetes-preserve-unknown-fields`). The types accept every served version (`v1`,
//! `v1beta1`, ...): their schemas are the same for the fields read here.

#![forbid(unsafe_code)]

mod authorization_policy;
pub mod crd;
mod decode;
mod destination_rule;
mod gateway;
mod grpc_route;
mod http_route;
mod kind;
mod object;
mod peer_authentication;
mod request_authentication;
pub mod schema;
#[cfg(feature = "testing")]
pub mod testing;
mod validate;
mod virtual_service;
pub mod waypoint;

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};

pub use authorization_policy::{
    AuthorizationAction, AuthorizationPolicy, AuthorizationPolicySpec, Condition,
    ExtensionProvider, Operation, PolicyRule, RuleFrom, RuleTo, Source, DRY_RUN_ANNOTATION,
};
pub use decode::{
    from_value, from_yaml, yaml_documents, yaml_options, yaml_parse, yaml_value, DecodeError,
};
pub use destination_rule::{
    ConnectionPoolSettings, DestinationRule, DestinationRuleSpec, HttpSettings,
    LoadBalancerSettings, OutlierDetection, TcpSettings, TrafficPolicy, LB_SIMPLE,
};
pub use gateway::{
    Gateway, GatewayClass, GatewayClassSpec, GatewayListener, GatewaySpec, ParentReference,
};
pub use grpc_route::{
    GrpcMethodMatch, GrpcRoute, GrpcRouteFilter, GrpcRouteMatch, GrpcRouteRule, GrpcRouteSpec,
};
pub use http_route::{
    BackendRef, Fraction, HeaderMatch, HeaderModifier, HttpHeader, HttpPathMatch, HttpRoute,
    HttpRouteFilter, HttpRouteMatch, HttpRouteRetry, HttpRouteRule, HttpRouteSpec,
    HttpRouteTimeouts, PathModifier, RequestMirror, RequestRedirect, UrlRewrite,
};
pub use kind::{plural, Kind, NameError, NameRule};
pub use object::{classify, decode, read, Document, Header, Object};
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
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
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
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
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

/// A status as a controller writes it: kept as it is, never read by the mesh.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ObjectStatus(pub serde_json::Value);

impl JsonSchema for ObjectStatus {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ObjectStatus".into()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schema::opaque(generator)
    }
}

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
