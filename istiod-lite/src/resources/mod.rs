//! Our serde types for the Kubernetes kinds that `k8s-openapi` does not have: Istio's
//! `security.istio.io` AuthorizationPolicy, PeerAuthentication and RequestAuthentication, and Gateway API's
//! `gateway.networking.k8s.io` Gateway and HTTPRoute.
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
//! values; Gateway API parts nobody reads yet stay [`serde_json::Value`].
//!
//! [`ObjectMeta`]: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta

mod authorization_policy;
mod gateway;
mod peer_authentication;
mod request_authentication;

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

pub use authorization_policy::{
    AuthorizationAction, AuthorizationPolicy, AuthorizationPolicySpec, Condition,
    ExtensionProvider, Operation, PolicyRule, RuleFrom, RuleTo, Source, DRY_RUN_ANNOTATION,
};
pub use gateway::{
    Gateway, GatewayListener, GatewaySpec, HttpRoute, HttpRouteSpec, ParentReference,
};
pub use peer_authentication::{MtlsMode, MutualTls, PeerAuthentication, PeerAuthenticationSpec};
pub use request_authentication::{
    ClaimToHeader, JwtHeader, JwtRule, RequestAuthentication, RequestAuthenticationSpec,
};

/// API group of Istio's security kinds.
pub const ISTIO_SECURITY_GROUP: &str = "security.istio.io";
/// API group of the Kubernetes Gateway API.
pub const GATEWAY_API_GROUP: &str = "gateway.networking.k8s.io";

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
