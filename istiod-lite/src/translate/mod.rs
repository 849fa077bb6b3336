//! From the cluster to what node tunnels need: pure functions over a [`ClusterState`].
//!
//! [`translate`] turns a snapshot into [`mesh::model`] workloads, services and L4 policies,
//! plus a report of what could not be carried over ([`TranslationWarning`]); [`resources`]
//! turns that into the xDS resource maps, named as the wire expects (workload uid,
//! `<ns>/<hostname>`, `<ns>/<name>`). Nothing here does I/O, so every rule is unit-tested on
//! YAML fixtures read through the config source's own parser.
//!
//! The rules, one module each:
//! - [`workload`]: every pod with an IP (enrolled ones tunnel with HBONE);
//! - [`service`]: ClusterIP and headless Services;
//! - [`policy`]: the L4 subset of AuthorizationPolicies that ztunnel enforces;
//! - [`peer_authentication`]: PeerAuthentications as DENY policies on plaintext;
//! - [`waypoint`]: which waypoint a workload or service uses;
//! - [`l7_policy`]: AuthorizationPolicies and RequestAuthentications that waypoints enforce.
//! - [`route`]: L7 routes of services for waypoints (HTTPRoute, GRPCRoute, VirtualService,
//!   DestinationRule).
//!
//! [`ClusterState`]: crate::config_source::ClusterState

pub mod l7_policy;
pub mod peer_authentication;
pub mod policy;
pub mod route;
pub mod service;
pub mod waypoint;
pub mod workload;

use std::collections::{BTreeMap, BTreeSet};

use mesh::l7authz::{L7Policy, RequestAuthn};
use mesh::model::{Policy, Service, Workload};

use crate::config_source::ClusterState;

/// Namespace or pod label that enrols pods in the mesh (value `ambient`) or opts a pod out
/// (value `none`).
pub const DATAPLANE_MODE_LABEL: &str = "istio.io/dataplane-mode";

/// Settings of the translation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranslateOptions {
    /// The cluster's name, in workload uids and `cluster_id`.
    pub cluster_id: String,
    /// Trust domain of workload identities.
    pub trust_domain: String,
    /// Service host names are `<name>.<namespace>.svc.<domain_suffix>`.
    pub domain_suffix: String,
    /// Authorization policies here without a selector apply mesh-wide; with a selector, to
    /// matching pods of every namespace.
    pub root_namespace: String,
    /// Network of every workload and service VIP (empty: the default network).
    pub network: String,
}

impl Default for TranslateOptions {
    fn default() -> Self {
        TranslateOptions {
            cluster_id: "Kubernetes".into(),
            trust_domain: mesh::identity::DEFAULT_TRUST_DOMAIN.into(),
            domain_suffix: "cluster.local".into(),
            root_namespace: "istio-system".into(),
            network: String::new(),
        }
    }
}

/// Something in the cluster that could not be carried over as written.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TranslationWarning {
    /// The object, e.g. `AuthorizationPolicy apps/allow-get` or `Namespace apps`.
    pub object: String,
    /// What happened and its effect.
    pub message: String,
}

impl std::fmt::Display for TranslationWarning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.object, self.message)
    }
}

/// The translation of one snapshot, each list sorted by resource name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Translated {
    /// Workloads, by uid.
    pub workloads: Vec<Workload>,
    /// Services, by `<namespace>/<hostname>`.
    pub services: Vec<Service>,
    /// Policies ztunnel enforces, by `<namespace>/<name>`.
    pub policies: Vec<Policy>,
    /// L7 policies waypoints enforce, by `<namespace>/<name>`.
    pub l7_policies: Vec<L7Policy>,
    /// RequestAuthentications waypoints enforce, by `<namespace>/<name>`.
    pub request_authns: Vec<RequestAuthn>,
    /// L7 routes for waypoints, by service `<namespace>/<hostname>`.
    pub routes: BTreeMap<String, proto::waypoint::ServiceRoutes>,
    /// What could not be carried over, sorted, without duplicates.
    pub warnings: Vec<TranslationWarning>,
}

/// Collects warnings, once each.
#[derive(Debug, Default)]
pub(crate) struct Warnings(BTreeSet<TranslationWarning>);

impl Warnings {
    /// Notes `message` about `object`.
    pub(crate) fn add(&mut self, object: impl Into<String>, message: impl Into<String>) {
        self.0.insert(TranslationWarning {
            object: object.into(),
            message: message.into(),
        });
    }
}

/// Translates a snapshot. Pure; logs each warning on `tracing` once per call.
pub fn translate(state: &ClusterState, options: &TranslateOptions) -> Translated {
    let mut warnings = Warnings::default();
    let mut policies = policy::policies(state, options, &mut warnings);
    let peer_auth = peer_authentication::translate(state, options, &mut policies, &mut warnings);
    let services = service::services(state, options, &mut warnings);
    let workloads = workload::workloads(state, options, &policies, &peer_auth, &mut warnings);
    let l7_policies = l7_policy::l7_policies(state, options, &mut warnings);
    let request_authns = l7_policy::request_authns(state, options, &mut warnings);
    let routes = route::routes(state, options, &mut warnings);
    let mut policies: Vec<Policy> = policies.into_iter().map(|p| p.policy).collect();
    policies.extend(peer_auth.into_policies());
    policies.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let warnings: Vec<_> = warnings.0.into_iter().collect();
    for w in &warnings {
        tracing::warn!(object = %w.object, message = %w.message, "config not carried over as written");
    }
    Translated {
        workloads,
        services,
        policies,
        l7_policies,
        request_authns,
        routes,
        warnings,
    }
}

/// The xDS resources of a translation: `istio.workload.Address` by workload uid and by
/// service `<ns>/<hostname>`, and `istio.security.Authorization` by `<ns>/<name>`.
pub fn resources(
    translated: &Translated,
) -> (
    BTreeMap<String, proto::workload::Address>,
    BTreeMap<String, proto::security::Authorization>,
) {
    let mut addresses = BTreeMap::new();
    for w in &translated.workloads {
        addresses.insert(w.uid.clone(), proto::workload::Address::from(w));
    }
    for s in &translated.services {
        addresses.insert(s.key(), proto::workload::Address::from(s));
    }
    let authorizations = translated
        .policies
        .iter()
        .map(|p| (p.key(), proto::security::Authorization::from(p)))
        .collect();
    (addresses, authorizations)
}

/// The xDS resources for waypoints: `ambient.waypoint.v1.L7Policy` and `RequestAuthn`, each by
/// `<ns>/<name>`.
pub fn waypoint_resources(
    translated: &Translated,
) -> (
    BTreeMap<String, proto::waypoint::L7Policy>,
    BTreeMap<String, proto::waypoint::RequestAuthn>,
) {
    let policies = translated
        .l7_policies
        .iter()
        .map(|p| (p.key(), proto::waypoint::L7Policy::from(p)))
        .collect();
    let authns = translated
        .request_authns
        .iter()
        .map(|a| (a.key(), proto::waypoint::RequestAuthn::from(a)))
        .collect();
    (policies, authns)
}

/// The labels of an object's metadata (none when absent).
pub(crate) fn labels(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> &BTreeMap<String, String> {
    static NONE: BTreeMap<String, String> = BTreeMap::new();
    meta.labels.as_ref().unwrap_or(&NONE)
}

/// `<name>.<namespace>.svc.<suffix>`.
pub(crate) fn service_hostname(name: &str, namespace: &str, options: &TranslateOptions) -> String {
    format!("{name}.{namespace}.svc.{}", options.domain_suffix)
}

#[cfg(test)]
pub(crate) mod test_support {
    //! Fixtures for the translation tests: YAML through the config source's parser.

    use super::*;

    /// A snapshot from YAML; panics with the problems if it does not parse.
    pub(crate) fn state(yaml: &str) -> ClusterState {
        match ClusterState::from_yaml(yaml) {
            Ok(state) => state,
            Err(problems) => panic!("fixture does not parse: {problems:#?}"),
        }
    }

    /// Translation with the default options.
    pub(crate) fn run(yaml: &str) -> Translated {
        translate(&state(yaml), &TranslateOptions::default())
    }

    /// The warning messages about `object`.
    pub(crate) fn warnings_about(t: &Translated, object: &str) -> Vec<String> {
        t.warnings
            .iter()
            .filter(|w| w.object == object)
            .map(|w| w.message.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::run;
    use super::*;

    #[test]
    fn resources_are_named_as_the_wire_expects_and_round_trip() {
        let t = run(r#"
apiVersion: v1
kind: Namespace
metadata: {name: apps, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: apps, labels: {app: web}}
spec: {nodeName: n1, containers: [{name: c, image: i}]}
status: {phase: Running, podIP: 10.0.0.5}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: apps}
spec: {clusterIP: 10.96.0.1, selector: {app: web}, ports: [{port: 80}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-all, namespace: apps}
spec: {action: DENY, rules: [{}]}
"#);
        let (addresses, authorizations) = resources(&t);
        let names: Vec<&str> = addresses.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "Kubernetes//v1/Pod/apps/web-1",
                "apps/web.apps.svc.cluster.local"
            ]
        );
        let policy_names: Vec<&str> = authorizations.keys().map(String::as_str).collect();
        assert_eq!(policy_names, ["apps/deny-all"]);
        for (name, address) in addresses {
            let model = mesh::model::Address::try_from(address).expect("valid on the wire");
            assert_eq!(model.resource_name(), name);
        }
        for (name, auth) in authorizations {
            let model = Policy::try_from(auth).expect("valid on the wire");
            assert_eq!(model.key(), name);
        }
        assert!(t.warnings.is_empty(), "{:?}", t.warnings);
    }

    #[test]
    fn an_empty_cluster_translates_to_nothing() {
        let t = translate(&ClusterState::default(), &TranslateOptions::default());
        assert_eq!(t, Translated::default());
        let (a, p) = resources(&t);
        assert!(a.is_empty() && p.is_empty());
    }
}
