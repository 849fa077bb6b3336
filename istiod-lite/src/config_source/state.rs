//! The snapshot: every object the control plane knows, keyed by (namespace, name).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use k8s_openapi::api::core::v1::{Namespace, Pod, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::parse::{inline_file, key as object_key, parse_file, Kind, Object};
use super::ConfigProblem;
use crate::resources::{
    AuthorizationPolicy, DestinationRule, Gateway, GrpcRoute, HttpRoute, PeerAuthentication,
    RequestAuthentication, VirtualService,
};

/// Identifies a namespaced object.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    /// The namespace.
    pub namespace: String,
    /// The name.
    pub name: String,
}

impl ObjectKey {
    /// The key of `name` in `namespace`.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ObjectKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// An immutable view of the cluster, shared as `Arc<ClusterState>`.
///
/// Every namespaced object has its namespace set (`default` when its document named none);
/// Namespaces are keyed by name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterState {
    /// Namespaces by name.
    pub namespaces: BTreeMap<String, Namespace>,
    /// Pods.
    pub pods: BTreeMap<ObjectKey, Pod>,
    /// Services.
    pub services: BTreeMap<ObjectKey, Service>,
    /// Service accounts.
    pub service_accounts: BTreeMap<ObjectKey, ServiceAccount>,
    /// EndpointSlices (the endpoints of Services without a selector).
    pub endpoint_slices: BTreeMap<ObjectKey, EndpointSlice>,
    /// Istio AuthorizationPolicies.
    pub authorization_policies: BTreeMap<ObjectKey, AuthorizationPolicy>,
    /// Istio PeerAuthentications.
    pub peer_authentications: BTreeMap<ObjectKey, PeerAuthentication>,
    /// Istio RequestAuthentications.
    pub request_authentications: BTreeMap<ObjectKey, RequestAuthentication>,
    /// Gateway API Gateways (waypoints among them).
    pub gateways: BTreeMap<ObjectKey, Gateway>,
    /// Gateway API HTTPRoutes.
    pub http_routes: BTreeMap<ObjectKey, HttpRoute>,
    /// Gateway API GRPCRoutes.
    pub grpc_routes: BTreeMap<ObjectKey, GrpcRoute>,
    /// Istio VirtualServices.
    pub virtual_services: BTreeMap<ObjectKey, VirtualService>,
    /// Istio DestinationRules.
    pub destination_rules: BTreeMap<ObjectKey, DestinationRule>,
}

/// A snapshot built from files, with the warnings met on the way.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Built {
    /// The snapshot.
    pub state: ClusterState,
    /// Ignored documents (unknown kinds) and duplicates that were overridden.
    pub warnings: Vec<ConfigProblem>,
}

static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();

impl ClusterState {
    /// Builds a snapshot from `(path, contents)` pairs. Files are read in path order; when
    /// two documents define the same (kind, namespace, name) the later one wins, with a
    /// warning. Fails with every problem of every file if any document is unusable: a
    /// snapshot is all of the files or nothing. Invalid routing objects are the exception
    /// (see [`ClusterState::build_keeping`]); without a previous snapshot they are left out.
    pub fn build(
        files: impl IntoIterator<Item = (PathBuf, String)>,
    ) -> Result<Built, Vec<ConfigProblem>> {
        Self::build_keeping(files, None)
    }

    /// As [`ClusterState::build`], but an invalid object of a kind that keeps its last good
    /// version ([`Kind::keeps_last_good`]: the routing kinds) is refused alone, with a warning
    /// naming the field, and the snapshot holds its version from `previous` (if it had one)
    /// while every valid object still applies.
    pub fn build_keeping(
        files: impl IntoIterator<Item = (PathBuf, String)>,
        previous: Option<&ClusterState>,
    ) -> Result<Built, Vec<ConfigProblem>> {
        let mut files: Vec<_> = files.into_iter().collect();
        files.sort_by(|a, b| a.0.cmp(&b.0));
        let mut built = Built::default();
        let mut problems = Vec::new();
        // Where each object came from, to name both places of a duplicate.
        let mut origins: HashMap<(Kind, ObjectKey), ConfigProblem> = HashMap::new();
        let mut refused = Vec::new();
        for (path, text) in files {
            let parsed = parse_file(&text, &path);
            problems.extend(parsed.problems);
            built.warnings.extend(parsed.warnings);
            refused.extend(parsed.refused);
            for located in parsed.objects {
                let kind = located.object.kind();
                let key = object_key(&located.object);
                let here = ConfigProblem {
                    file: path.clone(),
                    document: Some(located.document),
                    item: located.item,
                    reason: String::new(),
                };
                if let Some(before) = origins.insert((kind, key.clone()), here.clone()) {
                    let name = if kind.namespaced() {
                        key.to_string()
                    } else {
                        key.name.clone()
                    };
                    built.warnings.push(ConfigProblem {
                        reason: format!(
                            "{kind} {name} is also defined at {}; this later definition wins",
                            before.location()
                        ),
                        ..here
                    });
                }
                built.state.insert(located.object);
            }
        }
        for r in refused {
            let kept = if origins.contains_key(&(r.kind, r.key.clone())) {
                "a valid definition elsewhere applies"
            } else if let Some(old) = previous.and_then(|p| p.object(r.kind, &r.key)) {
                built.state.insert(old);
                "keeping its last good version"
            } else {
                "it has no earlier good version, so it is left out"
            };
            built.warnings.push(ConfigProblem {
                reason: format!(
                    "{} {} refused ({kept}): {}",
                    r.kind, r.key, r.problem.reason
                ),
                ..r.problem
            });
        }
        if problems.is_empty() {
            Ok(built)
        } else {
            Err(problems)
        }
    }

    /// A snapshot of `objects` (already validated; namespaces set), as a watch source has them.
    pub fn from_objects(objects: impl IntoIterator<Item = Object>) -> ClusterState {
        let mut state = ClusterState::default();
        for object in objects {
            state.insert(object);
        }
        state
    }

    /// Builds a snapshot from one YAML text (tests, tools); warnings are dropped.
    pub fn from_yaml(text: &str) -> Result<ClusterState, Vec<ConfigProblem>> {
        Self::build([(inline_file(), text.to_string())]).map(|b| b.state)
    }

    fn insert(&mut self, object: Object) {
        let key = object_key(&object);
        match object {
            Object::Namespace(o) => {
                self.namespaces.insert(key.name, o);
            }
            Object::Pod(o) => {
                self.pods.insert(key, o);
            }
            Object::Service(o) => {
                self.services.insert(key, o);
            }
            Object::ServiceAccount(o) => {
                self.service_accounts.insert(key, o);
            }
            Object::EndpointSlice(o) => {
                self.endpoint_slices.insert(key, o);
            }
            Object::AuthorizationPolicy(o) => {
                self.authorization_policies.insert(key, o);
            }
            Object::PeerAuthentication(o) => {
                self.peer_authentications.insert(key, o);
            }
            Object::RequestAuthentication(o) => {
                self.request_authentications.insert(key, o);
            }
            Object::Gateway(o) => {
                self.gateways.insert(key, o);
            }
            Object::HttpRoute(o) => {
                self.http_routes.insert(key, o);
            }
            Object::GrpcRoute(o) => {
                self.grpc_routes.insert(key, o);
            }
            Object::VirtualService(o) => {
                self.virtual_services.insert(key, o);
            }
            Object::DestinationRule(o) => {
                self.destination_rules.insert(key, o);
            }
        }
    }

    /// The routing object of `kind` at `key`, if the snapshot holds one (other kinds: `None`).
    fn object(&self, kind: Kind, key: &ObjectKey) -> Option<Object> {
        match kind {
            Kind::HttpRoute => self.http_routes.get(key).cloned().map(Object::HttpRoute),
            Kind::GrpcRoute => self.grpc_routes.get(key).cloned().map(Object::GrpcRoute),
            Kind::VirtualService => self
                .virtual_services
                .get(key)
                .cloned()
                .map(Object::VirtualService),
            Kind::DestinationRule => self
                .destination_rules
                .get(key)
                .cloned()
                .map(Object::DestinationRule),
            _ => None,
        }
    }

    /// The labels of namespace `name` (none when the Namespace object is absent).
    pub fn namespace_labels(&self, name: &str) -> &BTreeMap<String, String> {
        self.namespaces
            .get(name)
            .and_then(|n| n.metadata.labels.as_ref())
            .unwrap_or(&NO_LABELS)
    }

    /// How many objects the snapshot holds.
    pub fn len(&self) -> usize {
        self.namespaces.len()
            + self.pods.len()
            + self.services.len()
            + self.service_accounts.len()
            + self.endpoint_slices.len()
            + self.authorization_policies.len()
            + self.peer_authentications.len()
            + self.request_authentications.len()
            + self.gateways.len()
            + self.http_routes.len()
            + self.grpc_routes.len()
            + self.virtual_services.len()
            + self.destination_rules.len()
    }

    /// Whether the snapshot holds no object.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(list: &[(&str, &str)]) -> Vec<(PathBuf, String)> {
        list.iter()
            .map(|(p, t)| (PathBuf::from(p), t.to_string()))
            .collect()
    }

    const NS: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: apps, labels: {istio.io/dataplane-mode: ambient}}\n";

    #[test]
    fn objects_are_keyed_by_namespace_and_name_with_default_namespace() {
        let state = ClusterState::from_yaml(&format!(
            "{NS}---\napiVersion: v1\nkind: Pod\nmetadata: {{name: a}}\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: s, namespace: apps}}\n"
        ))
        .expect("valid");
        assert_eq!(state.len(), 3);
        assert!(state.pods.contains_key(&ObjectKey::new("default", "a")));
        assert!(state.services.contains_key(&ObjectKey::new("apps", "s")));
        assert_eq!(
            state
                .namespace_labels("apps")
                .get("istio.io/dataplane-mode"),
            Some(&"ambient".to_string())
        );
        assert!(state.namespace_labels("missing").is_empty());
    }

    #[test]
    fn the_later_file_wins_a_duplicate_with_a_warning() {
        let pod = |node: &str| {
            format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: a, namespace: n}}\nspec: {{nodeName: {node}, containers: []}}\n")
        };
        let (a, b) = (pod("node-a"), pod("node-b"));
        // Given out of order: sorting by path makes /cfg/b.yaml the later one.
        let built =
            ClusterState::build(files(&[("/cfg/b.yaml", &b), ("/cfg/a.yaml", &a)])).expect("ok");
        let node = built.state.pods[&ObjectKey::new("n", "a")]
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone());
        assert_eq!(node.as_deref(), Some("node-b"));
        assert_eq!(built.warnings.len(), 1, "{:?}", built.warnings);
        let warning = built.warnings[0].to_string();
        assert_eq!(
            warning,
            "/cfg/b.yaml document 0: Pod n/a is also defined at /cfg/a.yaml document 0; this later definition wins"
        );
        // Same name, different kinds: no conflict.
        let svc = "apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: n}\n";
        let built = ClusterState::build(files(&[("/x.yaml", &a), ("/y.yaml", svc)])).expect("ok");
        assert!(built.warnings.is_empty());
        assert_eq!(built.state.len(), 2);
    }

    #[test]
    fn one_bad_document_in_any_file_fails_the_whole_snapshot_listing_all_problems() {
        let bad = "apiVersion: v1\nkind: Pod\nmetadata: {name: [x]}\n";
        let worse = "kind: Pod\n";
        let problems = ClusterState::build(files(&[
            ("/cfg/good.yaml", NS),
            ("/cfg/bad.yaml", bad),
            ("/cfg/worse.yaml", worse),
        ]))
        .expect_err("bad");
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "/cfg/bad.yaml document 0: metadata.name must be a string",
                "/cfg/worse.yaml document 0: apiVersion is missing",
            ]
        );
    }

    fn route(path: &str) -> String {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: shop}}\nspec:\n  parentRefs: [{{kind: Service, name: reviews}}]\n  rules:\n  - matches: [{{path: {{type: PathPrefix, value: {path}}}}}]\n"
        )
    }

    #[test]
    fn an_invalid_route_keeps_its_last_good_version_while_valid_objects_apply() {
        let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: shop}\n";
        let good = ClusterState::build(files(&[("/cfg/r.yaml", &route("/v1"))]))
            .expect("valid")
            .state;
        let key = ObjectKey::new("shop", "r");
        assert!(good.http_routes.contains_key(&key));

        // The route breaks (a path without /) in the same file as a new Pod.
        let broken = format!("{}---\n{pod}", route("v2"));
        let built = ClusterState::build_keeping(files(&[("/cfg/r.yaml", &broken)]), Some(&good))
            .expect("a refused route does not fail the snapshot");
        assert_eq!(
            built.state.http_routes.get(&key),
            good.http_routes.get(&key)
        );
        assert!(built.state.pods.contains_key(&ObjectKey::new("shop", "p")));
        let warning = built.warnings[0].to_string();
        assert!(
            warning.starts_with("/cfg/r.yaml document 0: HTTPRoute shop/r refused (keeping its last good version): invalid HTTPRoute: spec.rules[0].matches[0].path.value: \"v2\" must start with /"),
            "{warning}"
        );

        // Without an earlier version the route is left out; a type error is refused the same way.
        let typo = route("/v1").replace("matches:", "matchez:");
        let built = ClusterState::build(files(&[("/cfg/r.yaml", &typo)])).expect("ok");
        assert!(built.state.http_routes.is_empty());
        assert!(
            built.warnings[0].reason.contains("no earlier good version")
                && built.warnings[0].reason.contains("matchez"),
            "{:?}",
            built.warnings
        );
    }

    #[test]
    fn routing_kinds_are_read_in_their_api_versions() {
        let state = ClusterState::from_yaml(
            "apiVersion: networking.istio.io/v1alpha3\nkind: VirtualService\nmetadata: {name: vs}\nspec: {hosts: [reviews]}\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: dr}\nspec: {host: reviews}\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {name: g}\nspec: {}\n",
        )
        .expect("valid");
        assert_eq!(state.virtual_services.len(), 1);
        assert_eq!(state.destination_rules.len(), 1);
        assert_eq!(state.grpc_routes.len(), 1);
        assert_eq!(state.len(), 3);
    }
}
