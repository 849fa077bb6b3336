//! Reconciliation, the pure part: from what the source says (a [`Snapshot`]) and what the
//! agent holds, the changes that make the node match.
//!
//! The agent holds a pod when it knows its network namespace: from a CNI ADD, or from a scan
//! of the node's namespaces by pod IP ([`crate::scan`]). A held pod is *enrolled* when its
//! capture rules are installed and ztunnel has (or will get, with its next snapshot) its
//! namespace.
//!
//! Rules, for the node named `node`:
//! - a held pod whose object lists this node or no node (the runtime on this node ran its
//!   sandbox), and is not finished, is enrolled or released as [`Snapshot::decide`] says;
//! - a held pod whose object is gone, lists another node or has finished is released and
//!   forgotten. A held pod whose object was *never* seen is left as it is until the object
//!   shows: the source lags the runtime (in Kubernetes the Pod object exists before its
//!   sandbox), so absence is only deletion once the object has been seen, and enrolling
//!   without it would guess the identity (CNI ADD refuses such a pod in an ambient
//!   namespace, so only pods recorded as not enrolled are in this state);
//! - an enrolled pod whose object now names another service account than the one ztunnel
//!   was told is announced again (ZDS del + add) so ztunnel serves the right identity;
//! - a pod of this node the agent does not hold is enrolled when it should be and has an IP
//!   (without one its sandbox is still being made; the CNI ADD will bring it), unless it is
//!   being deleted (its CNI DEL may have come already: enrolling it again would capture a
//!   dying sandbox). Host-network pods live in the node's namespace and are never captured.
//!
//! [`Snapshot::decide`]: crate::enrollment::Snapshot::decide

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::enrollment::{PodKey, PodObject, Snapshot};

/// What the agent holds for one pod, as far as the plan is concerned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Held {
    /// Captured and handed to ztunnel.
    pub enrolled: bool,
    /// Its Pod object has been seen in the source.
    pub listed: bool,
    /// The service account ztunnel was told, when enrolled.
    pub service_account: Option<String>,
}

/// Why a pod is released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseWhy {
    /// Its labels (or its namespace's) no longer enrol it.
    NotEnrolled,
    /// Its Pod object is gone.
    Gone,
    /// Its Pod object lists another node.
    OtherNode,
    /// Its phase is Succeeded or Failed.
    Finished,
}

impl ReleaseWhy {
    /// A word for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ReleaseWhy::NotEnrolled => "not enrolled",
            ReleaseWhy::Gone => "pod object gone",
            ReleaseWhy::OtherNode => "pod object on another node",
            ReleaseWhy::Finished => "pod finished",
        }
    }
}

/// One change, in the order the plan lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Install the capture and hand the pod to ztunnel. `ips`: the object's addresses, to
    /// find the namespace of a pod the agent does not hold (or whose namespace it lost).
    Enrol {
        /// The pod.
        key: PodKey,
        /// Its service account.
        service_account: String,
        /// Its addresses from the object (may be empty for a held pod).
        ips: Vec<IpAddr>,
    },
    /// Remove the capture rules, then tell ztunnel.
    Release {
        /// The pod.
        key: PodKey,
        /// Why.
        why: ReleaseWhy,
    },
    /// Stop holding a pod that is not enrolled (its object says it is not ours any more).
    Forget {
        /// The pod.
        key: PodKey,
    },
    /// Tell ztunnel the pod again (del + add, same namespace), with this service account.
    Reannounce {
        /// The pod.
        key: PodKey,
        /// Its service account now.
        service_account: String,
    },
}

/// Where a held pod stands against its object.
fn held_verdict(node: &str, object: Option<&PodObject>, held: &Held) -> Result<(), ReleaseWhy> {
    match object {
        None if held.listed => Err(ReleaseWhy::Gone),
        None => Ok(()),
        Some(o) if o.node_name.as_deref().is_some_and(|n| n != node) => Err(ReleaseWhy::OtherNode),
        Some(o) if o.finished() => Err(ReleaseWhy::Finished),
        Some(_) => Ok(()),
    }
}

/// The changes that bring the held pods in line with `snapshot` on node `node`.
pub fn plan(node: &str, snapshot: &Snapshot, held: &BTreeMap<PodKey, Held>) -> Vec<Change> {
    let mut changes = Vec::new();
    for (key, h) in held {
        let object = snapshot.pod(key);
        if let Err(why) = held_verdict(node, object, h) {
            if h.enrolled {
                changes.push(Change::Release {
                    key: key.clone(),
                    why,
                });
            }
            changes.push(Change::Forget { key: key.clone() });
            continue;
        }
        // Never seen in the source: left as it is until its object shows (module docs).
        let Some(object) = object else { continue };
        let decision = snapshot.decide(&key.0, &key.1);
        let wanted = decision.enrolled && !object.host_network;
        match (wanted, h.enrolled) {
            (true, false) => changes.push(Change::Enrol {
                key: key.clone(),
                service_account: decision.service_account,
                ips: object.ips.clone(),
            }),
            (false, true) => changes.push(Change::Release {
                key: key.clone(),
                why: ReleaseWhy::NotEnrolled,
            }),
            (true, true)
                if h.service_account.as_deref() != Some(decision.service_account.as_str()) =>
            {
                changes.push(Change::Reannounce {
                    key: key.clone(),
                    service_account: decision.service_account,
                })
            }
            _ => {}
        }
    }
    for (key, object) in snapshot.pods() {
        let ours = object.node_name.as_deref() == Some(node);
        if held.contains_key(key)
            || !ours
            || object.deleting
            || object.finished()
            || object.host_network
            || object.ips.is_empty()
        {
            continue;
        }
        let decision = snapshot.decide(&key.0, &key.1);
        if decision.enrolled {
            changes.push(Change::Enrol {
                key: key.clone(),
                service_account: decision.service_account,
                ips: object.ips.clone(),
            });
        }
    }
    changes
}

/// A Pod object of node `node` whose sandbox is (or may be) running there: a scan may find
/// its namespace.
fn live_here(node: &str, object: &PodObject) -> bool {
    object.node_name.as_deref() == Some(node)
        && !object.host_network
        && !object.deleting
        && !object.finished()
}

/// For each live Pod object of node `node` that lists an address another live object of this
/// node lists too, one such (address, other pod). In Kubernetes two live pods never share an
/// address, so one of them is stale (the source lags an IP's reuse) and a scan by that
/// address cannot tell whose namespace it finds: such pods are not looked for by address.
pub fn shared_addresses(node: &str, snapshot: &Snapshot) -> BTreeMap<PodKey, (IpAddr, PodKey)> {
    let mut by_ip: BTreeMap<IpAddr, Vec<&PodKey>> = BTreeMap::new();
    for (key, object) in snapshot.pods().filter(|(_, o)| live_here(node, o)) {
        for ip in &object.ips {
            by_ip.entry(*ip).or_default().push(key);
        }
    }
    let mut shared = BTreeMap::new();
    for (ip, keys) in by_ip.into_iter().filter(|(_, keys)| keys.len() > 1) {
        for key in &keys {
            if let Some(other) = keys.iter().find(|k| *k != key) {
                shared
                    .entry((*key).clone())
                    .or_insert((ip, (*other).clone()));
            }
        }
    }
    shared
}

/// Pods of node `node` that the agent does not hold and that should not be captured, with
/// their addresses: after a restart, capture rules may be left in them from before (their
/// label went while the agent was down), so the first pass removes any it finds.
pub fn unheld_outside(
    node: &str,
    snapshot: &Snapshot,
    held: &BTreeMap<PodKey, Held>,
) -> Vec<(PodKey, Vec<IpAddr>)> {
    snapshot
        .pods()
        .filter(|(key, o)| {
            live_here(node, o)
                && !held.contains_key(*key)
                && !o.ips.is_empty()
                && !snapshot.decide(&key.0, &key.1).enrolled
        })
        .map(|(key, o)| (key.clone(), o.ips.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn key(ns: &str, name: &str) -> PodKey {
        (ns.to_string(), name.to_string())
    }

    fn snapshot(yaml: &str) -> Snapshot {
        let mut s = Snapshot::default();
        s.add_yaml(Path::new("t.yaml"), yaml).expect("parses");
        s
    }

    fn pod(ns: &str, name: &str, extra_meta: &str, spec: &str, status: &str) -> String {
        format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}{extra_meta}}}\n\
             spec: {{{spec}}}\n{status}\n"
        )
    }

    const NS: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: mesh, labels: {istio.io/dataplane-mode: ambient}}\n\
                      ---\napiVersion: v1\nkind: Namespace\nmetadata: {name: plain}\n";
    const RUNNING: &str = "status: {phase: Running, podIP: 10.244.1.2}";

    /// Held pods; an enrolled one was announced with service account `default`.
    fn held(pairs: &[(PodKey, bool, bool)]) -> BTreeMap<PodKey, Held> {
        pairs
            .iter()
            .map(|(k, enrolled, listed)| {
                (
                    k.clone(),
                    Held {
                        enrolled: *enrolled,
                        listed: *listed,
                        service_account: enrolled.then(|| "default".to_string()),
                    },
                )
            })
            .collect()
    }

    #[test]
    fn running_pods_of_this_node_are_enrolled_when_their_namespace_is_ambient() {
        let yaml = [
            NS.to_string(),
            pod(
                "mesh",
                "a",
                "",
                "nodeName: n1, serviceAccountName: sa",
                RUNNING,
            ),
            pod("mesh", "other-node", "", "nodeName: n2", RUNNING),
            pod("mesh", "no-ip", "", "nodeName: n1", ""),
            pod(
                "mesh",
                "done",
                "",
                "nodeName: n1",
                "status: {phase: Succeeded, podIP: 10.244.1.9}",
            ),
            pod(
                "mesh",
                "host",
                "",
                "nodeName: n1, hostNetwork: true",
                RUNNING,
            ),
            pod(
                "mesh",
                "leaving",
                ", deletionTimestamp: '2025-01-01T00:00:00Z'",
                "nodeName: n1",
                RUNNING,
            ),
            pod(
                "mesh",
                "opt-out",
                ", labels: {istio.io/dataplane-mode: none}",
                "nodeName: n1",
                RUNNING,
            ),
            pod("plain", "p", "", "nodeName: n1", RUNNING),
            pod(
                "plain",
                "in",
                ", labels: {istio.io/dataplane-mode: ambient}",
                "nodeName: n1",
                RUNNING,
            ),
        ]
        .concat();
        let s = snapshot(&yaml);
        let changes = plan("n1", &s, &BTreeMap::new());
        assert_eq!(
            changes,
            vec![
                Change::Enrol {
                    key: key("mesh", "a"),
                    service_account: "sa".into(),
                    ips: vec!["10.244.1.2".parse().expect("ip")],
                },
                Change::Enrol {
                    key: key("plain", "in"),
                    service_account: "default".into(),
                    ips: vec!["10.244.1.2".parse().expect("ip")],
                },
            ]
        );
        let outside: Vec<PodKey> = unheld_outside("n1", &s, &BTreeMap::new())
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(outside, vec![key("mesh", "opt-out"), key("plain", "p")]);
    }

    #[test]
    fn held_pods_follow_their_labels() {
        let yaml = [
            NS.to_string(),
            pod("mesh", "stays", "", "nodeName: n1", RUNNING),
            // Being deleted but still held: stays captured until its CNI DEL.
            pod(
                "mesh",
                "leaving",
                ", deletionTimestamp: '2025-01-01T00:00:00Z'",
                "nodeName: n1",
                RUNNING,
            ),
            pod(
                "mesh",
                "opted-out",
                ", labels: {istio.io/dataplane-mode: none}",
                "nodeName: n1",
                RUNNING,
            ),
            pod(
                "plain",
                "joins",
                ", labels: {istio.io/dataplane-mode: ambient}",
                "",
                "",
            ),
            pod("plain", "idle", "", "nodeName: n1", RUNNING),
        ]
        .concat();
        let s = snapshot(&yaml);
        let h = held(&[
            (key("mesh", "stays"), true, true),
            (key("mesh", "leaving"), true, true),
            (key("mesh", "opted-out"), true, true),
            (key("plain", "joins"), false, true),
            (key("plain", "idle"), false, true),
        ]);
        assert_eq!(
            plan("n1", &s, &h),
            vec![
                Change::Release {
                    key: key("mesh", "opted-out"),
                    why: ReleaseWhy::NotEnrolled,
                },
                // Held (known from its CNI ADD) with no node and no IP yet: enrolled anyway.
                Change::Enrol {
                    key: key("plain", "joins"),
                    service_account: "default".into(),
                    ips: vec![],
                },
            ]
        );
        // Nothing to do once the agent holds what the plan asked for.
        let done = held(&[
            (key("mesh", "stays"), true, true),
            (key("mesh", "leaving"), true, true),
            (key("mesh", "opted-out"), false, true),
            (key("plain", "joins"), true, true),
            (key("plain", "idle"), false, true),
        ]);
        assert_eq!(plan("n1", &s, &done), vec![]);
    }

    #[test]
    fn gone_moved_and_finished_pods_are_released_and_forgotten() {
        let yaml = [
            NS.to_string(),
            pod("mesh", "moved", "", "nodeName: n2", RUNNING),
            pod(
                "mesh",
                "done",
                "",
                "nodeName: n1",
                "status: {phase: Failed}",
            ),
        ]
        .concat();
        let s = snapshot(&yaml);
        let h = held(&[
            (key("mesh", "gone"), true, true),
            (key("mesh", "gone-idle"), false, true),
            (key("mesh", "never-listed"), false, false),
            (key("plain", "never-listed"), true, false),
            (key("mesh", "moved"), true, true),
            (key("mesh", "done"), true, true),
        ]);
        let release = |name: &str, why| Change::Release {
            key: key("mesh", name),
            why,
        };
        let forget = |name: &str| Change::Forget {
            key: key("mesh", name),
        };
        assert_eq!(
            plan("n1", &s, &h),
            vec![
                release("done", ReleaseWhy::Finished),
                forget("done"),
                release("gone", ReleaseWhy::Gone),
                forget("gone"),
                forget("gone-idle"),
                release("moved", ReleaseWhy::OtherNode),
                forget("moved"),
                // Never seen in the source: left alone until its object shows (enrolling
                // would guess its service account; releasing would trust a lagging source).
            ]
        );
    }

    #[test]
    fn a_changed_service_account_is_announced_again() {
        let yaml = [
            NS.to_string(),
            pod(
                "mesh",
                "web",
                "",
                "nodeName: n1, serviceAccountName: web",
                RUNNING,
            ),
            pod("mesh", "same", "", "nodeName: n1", RUNNING),
        ]
        .concat();
        let s = snapshot(&yaml);
        // Both were announced as `default`: web's object now names `web`.
        let h = held(&[
            (key("mesh", "web"), true, true),
            (key("mesh", "same"), true, true),
        ]);
        assert_eq!(
            plan("n1", &s, &h),
            vec![Change::Reannounce {
                key: key("mesh", "web"),
                service_account: "web".into(),
            }]
        );
        // Not enrolled: nothing to re-announce, it is enrolled with the right one.
        let idle = held(&[
            (key("mesh", "web"), false, true),
            (key("mesh", "same"), true, true),
        ]);
        assert_eq!(
            plan("n1", &s, &idle),
            vec![Change::Enrol {
                key: key("mesh", "web"),
                service_account: "web".into(),
                ips: vec!["10.244.1.2".parse().expect("ip")],
            }]
        );
    }

    #[test]
    fn pods_sharing_an_address_are_reported_both_ways() {
        let yaml = [
            NS.to_string(),
            // A stale object still lists the address the live pod b now has.
            pod("mesh", "a", "", "nodeName: n1", RUNNING),
            pod("plain", "b", "", "nodeName: n1", RUNNING),
            // Not live here: they do not count.
            pod(
                "mesh",
                "done",
                "",
                "nodeName: n1",
                "status: {phase: Failed, podIP: 10.244.1.2}",
            ),
            pod("mesh", "far", "", "nodeName: n2", RUNNING),
            pod(
                "mesh",
                "c",
                "",
                "nodeName: n1",
                "status: {phase: Running, podIP: 10.244.1.3}",
            ),
        ]
        .concat();
        let shared = shared_addresses("n1", &snapshot(&yaml));
        let ip: IpAddr = "10.244.1.2".parse().expect("ip");
        assert_eq!(
            shared,
            BTreeMap::from([
                (key("mesh", "a"), (ip, key("plain", "b"))),
                (key("plain", "b"), (ip, key("mesh", "a"))),
            ])
        );
    }

    #[test]
    fn namespace_relabelling_flips_the_plan() {
        let pods = pod("demo", "web", "", "nodeName: n1", RUNNING);
        let ambient = format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: demo, labels: {{istio.io/dataplane-mode: ambient}}}}\n{pods}"
        );
        let plain = format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: demo}}\n{pods}");
        let h = held(&[(key("demo", "web"), true, true)]);
        assert_eq!(plan("n1", &snapshot(&ambient), &h), vec![]);
        assert_eq!(
            plan("n1", &snapshot(&plain), &h),
            vec![Change::Release {
                key: key("demo", "web"),
                why: ReleaseWhy::NotEnrolled
            }]
        );
        let idle = held(&[(key("demo", "web"), false, true)]);
        assert!(matches!(
            plan("n1", &snapshot(&ambient), &idle).as_slice(),
            [Change::Enrol { .. }]
        ));
        assert_eq!(plan("n1", &snapshot(&plain), &idle), vec![]);
    }
}
