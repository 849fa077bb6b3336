//! PeerAuthentications → the L4 DENY policies that make ztunnel refuse plaintext.
//!
//! ztunnel has no mTLS mode of its own: HBONE always carries the client's identity, and what
//! arrives in plaintext on 15006 carries none. So "STRICT" is a DENY policy matching
//! connections without a peer identity (`not_principals: [presence]`), as Istio generates for
//! ambient. PERMISSIVE and DISABLE both mean "plaintext accepted" (ztunnel never downgrades
//! HBONE), so they are treated alike.
//!
//! Which PeerAuthentication applies to a pod, as Istio composes them:
//! - mesh level: selector-less ones in the root namespace; namespace level: selector-less ones
//!   elsewhere; workload level: ones with a non-empty `selector.matchLabels` in the pod's own
//!   namespace. A selector with no labels is namespace-wide. One with a selector in the root
//!   namespace applies to nothing (Istio ignores it too) and is reported.
//! - at each level the oldest wins (`creationTimestamp`, absent counting as oldest, then
//!   name); the others are reported where they lose.
//! - the narrowest level with a mode other than UNSET decides the pod's mode (PERMISSIVE at
//!   the top); `portLevelMtls` of the workload-level policy override it per port (an UNSET
//!   port inherits). Ports are the pod's (target) ports, as in Istio.
//!
//! What is generated, with Istio's names (`_` is illegal in Kubernetes names, so no user
//! policy can be called the same):
//! - `<root>/istio_converted_static_strict`, WORKLOAD_SELECTOR, DENY
//!   `[{not_principals: [presence]}]`: sent whenever any PeerAuthentication exists, and listed
//!   in the `authorization_policies` of every pod whose mode is STRICT on all ports;
//! - `<ns>/converted_peer_authentication_<name>`, WORKLOAD_SELECTOR, DENY, for a workload-level
//!   policy whose ports differ from its mode: STRICT with exempt ports →
//!   `[{not_principals: [presence], not_destination_ports: [exempt]}]`; plaintext accepted
//!   with STRICT ports → `[{not_principals: [presence], destination_ports: [strict]}]`.
//!   Listed (instead of the static policy) by the pods that policy applies to.
//!
//! Why every STRICT pod lists a policy instead of using GLOBAL or NAMESPACE scope: DENY
//! policies add up (any match denies), and a [`Match`] can only select the destination by IP
//! and port (`namespaces` is the *source* namespace, which plaintext does not have). A GLOBAL
//! or NAMESPACE deny could therefore not step aside for a namespace or pod whose own
//! PeerAuthentication says PERMISSIVE; the encoding would have to change shape whenever one
//! appears. Attaching one stable policy per pod expresses every precedence case the same way,
//! and a pod's policy list changes together with the pod's own resource.
//!
//! Objects Istio would refuse at admission:
//! - an unknown mode or port never gets here: the config source refuses the document, so a
//!   new config with one is rejected whole and the last good one stays in force;
//! - `portLevelMtls` on a selector-less policy (Istio: "portLevelMtls requires selector") is
//!   read the strictest way and reported: the port settings are dropped, and if any of them
//!   asked for STRICT the whole scope becomes STRICT. Failing closed may refuse plaintext the
//!   author meant to accept; failing open would accept plaintext on ports meant to be STRICT.
//! - a user AuthorizationPolicy whose key is one of the generated ones is dropped and
//!   reported (only possible in hand-written config: Kubernetes refuses such names).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use mesh::model::{Clause, Match, Policy, PolicyAction, PolicyScope, Rule, StringMatch};

use super::policy::TranslatedPolicy;
use super::{TranslateOptions, Warnings};
use crate::config_source::{ClusterState, ObjectKey};
use crate::resources::{MtlsMode, PeerAuthentication, WorkloadSelector};

/// Name of the policy (in the root namespace) that every fully STRICT pod lists.
pub const STATIC_STRICT_POLICY: &str = "istio_converted_static_strict";

/// Prefix of the policy generated from a workload-level PeerAuthentication with port settings.
pub const CONVERTED_PREFIX: &str = "converted_peer_authentication_";

/// Whether connections without a peer identity are let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plaintext {
    Accepted,
    Refused,
}

impl Plaintext {
    /// `None` for UNSET (inherit).
    fn of(mode: MtlsMode) -> Option<Self> {
        match mode {
            MtlsMode::Unset => None,
            MtlsMode::Strict => Some(Plaintext::Refused),
            MtlsMode::Permissive | MtlsMode::Disable => Some(Plaintext::Accepted),
        }
    }
}

/// A workload-level PeerAuthentication and the policy key its pods list, if any.
#[derive(Debug)]
struct WorkloadLevel {
    selector: WorkloadSelector,
    attached: Option<String>,
}

/// The translated PeerAuthentications: the generated policies, and which one each pod lists.
#[derive(Debug)]
pub(crate) struct PeerAuthentications {
    /// `<root>/istio_converted_static_strict`.
    static_key: String,
    /// Mode of pods with no namespace- or workload-level say.
    mesh: Plaintext,
    /// Namespaces whose winning namespace-wide policy sets a mode.
    namespaces: BTreeMap<String, Plaintext>,
    /// Workload-level policies per namespace, oldest first.
    workload_level: BTreeMap<String, Vec<WorkloadLevel>>,
    policies: Vec<Policy>,
}

/// Translates the PeerAuthentications of `state`, and drops (with a warning) any of the
/// AuthorizationPolicies in `authorization_policies` whose key is taken by a generated policy.
pub(crate) fn translate(
    state: &ClusterState,
    options: &TranslateOptions,
    authorization_policies: &mut Vec<TranslatedPolicy>,
    warnings: &mut Warnings,
) -> PeerAuthentications {
    let pas = PeerAuthentications::new(state, options, warnings);
    let generated: BTreeSet<String> = pas.policies.iter().map(Policy::key).collect();
    authorization_policies.retain(|p| {
        let key = p.policy.key();
        let taken = generated.contains(&key);
        if taken {
            warnings.add(
                format!("AuthorizationPolicy {key}"),
                "this name is reserved for a policy generated from PeerAuthentications (Kubernetes refuses `_` in names); policy skipped",
            );
        }
        !taken
    });
    pas
}

impl PeerAuthentications {
    fn new(state: &ClusterState, options: &TranslateOptions, warnings: &mut Warnings) -> Self {
        let root = options.root_namespace.as_str();
        let mut out = PeerAuthentications {
            static_key: format!("{root}/{STATIC_STRICT_POLICY}"),
            mesh: Plaintext::Accepted,
            namespaces: BTreeMap::new(),
            workload_level: BTreeMap::new(),
            policies: Vec::new(),
        };
        if state.peer_authentications.is_empty() {
            return out;
        }

        // Split by level, oldest first within each.
        let mut scope_wide: BTreeMap<&str, Vec<(&ObjectKey, &PeerAuthentication)>> =
            BTreeMap::new();
        let mut selected: BTreeMap<&str, Vec<(&ObjectKey, &PeerAuthentication)>> = BTreeMap::new();
        for (key, pa) in &state.peer_authentications {
            let has_labels = pa
                .spec
                .selector
                .as_ref()
                .is_some_and(|s| !s.match_labels.is_empty());
            if !has_labels {
                scope_wide
                    .entry(&key.namespace)
                    .or_default()
                    .push((key, pa));
            } else if key.namespace == root {
                warnings.add(
                    object(key),
                    format!("a PeerAuthentication with a selector in the root namespace {root} applies to no workload (as in Istio); ignored"),
                );
            } else {
                selected.entry(&key.namespace).or_default().push((key, pa));
            }
        }
        for list in scope_wide.values_mut().chain(selected.values_mut()) {
            list.sort_by_key(|&(key, pa)| age(key, pa));
        }

        for (ns, list) in &scope_wide {
            let Some(((winner, pa), losers)) = list.split_first() else {
                continue;
            };
            for (loser, _) in losers {
                warnings.add(
                    object(loser),
                    format!(
                        "{} PeerAuthentication {winner} is older and applies instead; ignored",
                        if *ns == root {
                            "the mesh-wide"
                        } else {
                            "the namespace-wide"
                        }
                    ),
                );
            }
            let mode = Plaintext::of(scope_wide_mode(winner, pa, warnings));
            match (*ns == root, mode) {
                (true, Some(mode)) => out.mesh = mode,
                (false, Some(mode)) => {
                    out.namespaces.insert(ns.to_string(), mode);
                }
                (_, None) => {}
            }
        }

        for (ns, list) in &selected {
            let parent = out.namespace_mode(ns);
            let levels = list
                .iter()
                .map(|(key, pa)| {
                    let attached = match workload_policy(key, pa, parent) {
                        Effective::Accepted => None,
                        Effective::Refused => Some(out.static_key.clone()),
                        Effective::Ports(policy) => {
                            let key = policy.key();
                            out.policies.push(policy);
                            Some(key)
                        }
                    };
                    WorkloadLevel {
                        selector: pa.spec.selector.clone().unwrap_or_default(),
                        attached,
                    }
                })
                .collect();
            out.workload_level.insert(ns.to_string(), levels);
            shadowing_warnings(state, ns, list, warnings);
        }

        // Always there once any PeerAuthentication exists, so a pod never names it before
        // node tunnels have it.
        out.policies.push(Policy {
            name: STATIC_STRICT_POLICY.to_string(),
            namespace: root.to_string(),
            scope: PolicyScope::WorkloadSelector,
            action: PolicyAction::Deny,
            rules: vec![no_identity(Match::default())],
            dry_run: false,
        });
        out.policies
            .sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        out
    }

    /// The generated policies, by (namespace, name).
    pub(crate) fn into_policies(self) -> Vec<Policy> {
        self.policies
    }

    /// The generated policy a pod in `namespace` with `labels` lists, if any.
    pub(crate) fn attached(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> Option<String> {
        let own = self
            .workload_level
            .get(namespace)
            .and_then(|levels| levels.iter().find(|w| w.selector.matches(labels)));
        match own {
            Some(w) => w.attached.clone(),
            None => (self.namespace_mode(namespace) == Plaintext::Refused)
                .then(|| self.static_key.clone()),
        }
    }

    /// The mode of a pod in `namespace` that no workload-level policy selects.
    fn namespace_mode(&self, namespace: &str) -> Plaintext {
        self.namespaces.get(namespace).copied().unwrap_or(self.mesh)
    }
}

/// What a workload-level policy makes of its pods.
#[derive(Debug)]
enum Effective {
    /// Plaintext accepted on every port.
    Accepted,
    /// Plaintext refused on every port.
    Refused,
    /// Mixed: this policy says where.
    Ports(Policy),
}

fn workload_policy(key: &ObjectKey, pa: &PeerAuthentication, parent: Plaintext) -> Effective {
    let mode = Plaintext::of(pa.mode()).unwrap_or(parent);
    let differing: Vec<u16> = pa
        .spec
        .port_level_mtls
        .iter()
        .filter(|(_, m)| Plaintext::of(m.mode).is_some_and(|p| p != mode))
        .map(|(port, _)| *port)
        .collect();
    if differing.is_empty() {
        return match mode {
            Plaintext::Accepted => Effective::Accepted,
            Plaintext::Refused => Effective::Refused,
        };
    }
    let ports = match mode {
        // STRICT except these ports.
        Plaintext::Refused => Match {
            not_destination_ports: differing,
            ..Match::default()
        },
        // Plaintext accepted except on these ports.
        Plaintext::Accepted => Match {
            destination_ports: differing,
            ..Match::default()
        },
    };
    Effective::Ports(Policy {
        name: format!("{CONVERTED_PREFIX}{}", key.name),
        namespace: key.namespace.clone(),
        scope: PolicyScope::WorkloadSelector,
        action: PolicyAction::Deny,
        rules: vec![no_identity(ports)],
        dry_run: false,
    })
}

/// One rule matching connections without a peer identity (and whatever else `m` says).
fn no_identity(m: Match) -> Rule {
    Rule {
        clauses: vec![Clause {
            matches: vec![Match {
                not_principals: vec![StringMatch::Presence],
                ..m
            }],
        }],
    }
}

/// The mode of a mesh- or namespace-wide policy. `portLevelMtls` needs a selector (Istio
/// refuses the object otherwise); here it is read the strictest way and reported.
fn scope_wide_mode(key: &ObjectKey, pa: &PeerAuthentication, warnings: &mut Warnings) -> MtlsMode {
    let mode = pa.mode();
    if pa.spec.port_level_mtls.is_empty() {
        return mode;
    }
    let strict_port = pa
        .spec
        .port_level_mtls
        .values()
        .any(|m| m.mode == MtlsMode::Strict);
    let read = if strict_port { MtlsMode::Strict } else { mode };
    let applies = match read {
        MtlsMode::Unset => "the inherited mode".to_string(),
        other => format!("mode {}", mode_name(other)),
    };
    warnings.add(
        object(key),
        format!("portLevelMtls needs a workload selector (Istio refuses this object); read the strictest way: the port-level settings are dropped and {applies} applies to every port"),
    );
    read
}

fn mode_name(mode: MtlsMode) -> &'static str {
    match mode {
        MtlsMode::Unset => "UNSET",
        MtlsMode::Disable => "DISABLE",
        MtlsMode::Permissive => "PERMISSIVE",
        MtlsMode::Strict => "STRICT",
    }
}

/// Reports workload-level policies that lose some pods to an older one.
fn shadowing_warnings(
    state: &ClusterState,
    namespace: &str,
    oldest_first: &[(&ObjectKey, &PeerAuthentication)],
    warnings: &mut Warnings,
) {
    if oldest_first.len() < 2 {
        return;
    }
    for (key, pod) in state.pods.range(ObjectKey::new(namespace, "")..) {
        if key.namespace != namespace {
            break;
        }
        let labels = super::labels(&pod.metadata);
        let mut selecting = oldest_first
            .iter()
            .filter(|(_, pa)| pa.spec.selector.as_ref().is_some_and(|s| s.matches(labels)));
        let Some((winner, _)) = selecting.next() else {
            continue;
        };
        for (loser, _) in selecting {
            warnings.add(
                object(loser),
                format!("some pods it selects are also selected by the older PeerAuthentication {winner}, which applies to them instead"),
            );
        }
    }
}

/// Oldest first: creation time (absent first), then name.
fn age<'a>(key: &'a ObjectKey, pa: &'a PeerAuthentication) -> (Option<&'a Time>, &'a str) {
    (pa.metadata.creation_timestamp.as_ref(), key.name.as_str())
}

fn object(key: &ObjectKey) -> String {
    format!("PeerAuthentication {key}")
}

#[cfg(test)]
#[path = "peer_authentication_tests.rs"]
mod tests;
