//! Which network namespace is whose, for a reconcile pass: a held pod's known namespace when
//! it is still there, else a scan by the pod's addresses ([`crate::scan`]), and never one
//! namespace for two pods.
//!
//! An address is weak evidence (the source may lag an IP's reuse), so a namespace found for a
//! pod is refused when:
//! - another pod holds it already (a record from a CNI ADD or an earlier pass, or a pod
//!   enrolled with ztunnel): a stale Pod object listing a live pod's address must not get
//!   that pod's namespace (ztunnel would serve it twice, under two identities);
//! - another pod of the same pass found it too: several pods to enrol → none gets it; a pod
//!   to enrol beats pods whose leftover rules are to be cleared (clearing would strip a
//!   captured pod); several to clear → none is cleared;
//! - another live Pod object of this node lists the same address
//!   ([`crate::reconcile::shared_addresses`]): not looked for by address at all;
//! - a CNI DEL tore it down recently (its tombstone, see [`crate::pods`]).
//!
//! The scan runs without the agent's lock held, so its result is checked again under the
//! lock ([`still_free`]) before anything is applied.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Mutex;

use crate::enrollment::PodKey;
use crate::scan::{self, NsId, Scanner};

/// A network namespace by path, with the identity it had when recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetnsRef {
    /// `/proc/<pid>/ns/net` or the runtime's netns path.
    pub path: PathBuf,
    /// Its (dev, inode).
    pub id: NsId,
}

/// Why a pod is looked up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// To capture it.
    Enrol,
    /// To clear capture rules left in it from before the agent started.
    ClearLeftovers,
}

/// One pod to find the namespace of.
#[derive(Debug)]
pub struct Wanted {
    /// The pod.
    pub key: PodKey,
    /// Why.
    pub purpose: Purpose,
    /// Its namespace as the agent recorded it, if it did.
    pub known: Option<NetnsRef>,
    /// Its addresses, to scan for when `known` is gone.
    pub ips: Vec<IpAddr>,
    /// Another live Pod object of this node lists one of its addresses (address, other pod).
    pub shared: Option<(IpAddr, PodKey)>,
}

/// Why no namespace is given to a pod this pass.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Miss {
    /// Not found (or gone, or torn down by a CNI DEL).
    #[error("{0}")]
    NotFound(String),
    /// Found, but another pod has or claims it: logged as a warning naming both.
    #[error("{0}")]
    Conflict(String),
}

/// The namespace found for each wanted pod.
pub type Resolved = BTreeMap<PodKey, Result<(File, NetnsRef), Miss>>;

/// Namespace → the pod that holds it (the agent's records and the pods enrolled with ztunnel).
pub type Owners = BTreeMap<NsId, PodKey>;

pub(crate) fn shown(key: &PodKey) -> String {
    format!("{}/{}", key.0, key.1)
}

/// The namespace for each wanted pod (see the module docs). Blocking: reads `/proc`, enters
/// namespaces, waits for ARP.
pub fn resolve(
    scanner: &Mutex<Scanner>,
    deleted: &[NsId],
    owners: &Owners,
    wants: Vec<Wanted>,
) -> Resolved {
    let mut out = Resolved::new();
    let mut purposes = BTreeMap::new();
    let mut to_scan = Vec::new();
    for want in wants {
        purposes.insert(want.key.clone(), want.purpose);
        if let Some(known) = want.known {
            if let Ok(file) = scan::open_checked(&known.path, known.id) {
                out.insert(want.key, Ok((file, known)));
                continue;
            }
        }
        if let Some((ip, other)) = want.shared {
            let why = format!(
                "pod {} also lists its address {ip} in the config source (one of the two \
                 objects is stale): not looking for its namespace by address until that settles",
                shown(&other)
            );
            out.insert(want.key, Err(Miss::Conflict(why)));
        } else if want.ips.is_empty() {
            let why = "its network namespace is gone and it has no IP to look for".to_string();
            out.insert(want.key, Err(Miss::NotFound(why)));
        } else {
            to_scan.push((want.key, want.ips));
        }
    }
    let found = scanner
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .find(&to_scan);
    for (key, result) in found {
        let result = match result {
            Ok(f) => Ok((
                f.file,
                NetnsRef {
                    path: f.path,
                    id: f.id,
                },
            )),
            Err(e) => Err(Miss::NotFound(e.to_string())),
        };
        out.insert(key, result);
    }
    let found: Vec<(PodKey, Purpose, NsId)> = out
        .iter()
        .filter_map(|(key, r)| {
            let (_, netns) = r.as_ref().ok()?;
            let purpose = purposes.get(key).copied().unwrap_or(Purpose::Enrol);
            Some((key.clone(), purpose, netns.id))
        })
        .collect();
    let refused = claims(owners, &found);
    for (key, result) in out.iter_mut() {
        let Ok((_, netns)) = result else { continue };
        let netns = netns.clone();
        if let Some(why) = refused.get(key) {
            *result = Err(Miss::Conflict(format!(
                "its address is on network namespace {}, but {why}",
                netns.path.display()
            )));
        } else if let Err(miss) = still_free(key, &netns, owners, deleted) {
            *result = Err(miss);
        }
    }
    out
}

/// Whether `netns`, found for `key`, may still be given to it: no other pod holds it and no
/// CNI DEL tore it down. Checked in the scan and again under the lock before applying.
pub fn still_free(
    key: &PodKey,
    netns: &NetnsRef,
    owners: &Owners,
    deleted: &[NsId],
) -> Result<(), Miss> {
    if deleted.contains(&netns.id) {
        return Err(Miss::NotFound(format!(
            "its sandbox's namespace {} had a CNI DEL; waiting for a new sandbox",
            netns.path.display()
        )));
    }
    match owners.get(&netns.id) {
        Some(owner) if owner != key => Err(Miss::Conflict(format!(
            "network namespace {}: pod {} holds it: not giving it to pod {}",
            netns.path.display(),
            shown(owner),
            shown(key)
        ))),
        _ => Ok(()),
    }
}

/// Pure: of the namespaces found in one pass (`found`: pod, why, namespace), which pods may
/// not have theirs, and why (the other pods named). See the module docs for the rules.
pub fn claims(owners: &Owners, found: &[(PodKey, Purpose, NsId)]) -> BTreeMap<PodKey, String> {
    let mut by_ns: BTreeMap<NsId, Vec<(&PodKey, Purpose)>> = BTreeMap::new();
    for (key, purpose, id) in found {
        by_ns.entry(*id).or_default().push((key, *purpose));
    }
    let names = |keys: &[&PodKey]| -> String {
        let all: Vec<String> = keys.iter().map(|k| shown(k)).collect();
        all.join(", ")
    };
    let mut refused = BTreeMap::new();
    for (id, claimants) in by_ns {
        if let Some(owner) = owners.get(&id) {
            for (key, _) in claimants.iter().filter(|(k, _)| *k != owner) {
                let why = format!(
                    "pod {} holds it: not giving it to pod {}",
                    shown(owner),
                    shown(key)
                );
                refused.insert((*key).clone(), why);
            }
            continue;
        }
        let enrols: Vec<&PodKey> = claimants
            .iter()
            .filter(|(_, p)| *p == Purpose::Enrol)
            .map(|(k, _)| *k)
            .collect();
        let clears: Vec<&PodKey> = claimants
            .iter()
            .filter(|(_, p)| *p == Purpose::ClearLeftovers)
            .map(|(k, _)| *k)
            .collect();
        let winner = match (enrols.as_slice(), clears.as_slice()) {
            ([one], _) | ([], [one]) => Some(*one),
            _ => None,
        };
        for (key, _) in &claimants {
            if Some(*key) == winner {
                continue;
            }
            let others: Vec<&PodKey> = claimants
                .iter()
                .map(|(k, _)| *k)
                .filter(|k| k != key)
                .collect();
            let why = match winner {
                Some(w) => format!(
                    "pod {} is being enrolled with it: not clearing it for pod {}",
                    shown(w),
                    shown(key)
                ),
                None => format!(
                    "pods {} claim it in the same pass as pod {}: not guessing",
                    names(&others),
                    shown(key)
                ),
            };
            refused.insert((*key).clone(), why);
        }
    }
    refused
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ns: &str, name: &str) -> PodKey {
        (ns.to_string(), name.to_string())
    }

    const N1: NsId = (4, 4026532001);
    const N2: NsId = (4, 4026532002);

    #[test]
    fn a_namespace_held_by_another_pod_is_refused() {
        let owners = Owners::from([(N1, key("mesh", "b"))]);
        let found = [
            (key("mesh", "a"), Purpose::Enrol, N1),
            (key("mesh", "b"), Purpose::Enrol, N1),
            (key("plain", "c"), Purpose::ClearLeftovers, N1),
            (key("mesh", "d"), Purpose::Enrol, N2),
        ];
        let refused = claims(&owners, &found);
        assert_eq!(
            refused.keys().collect::<Vec<_>>(),
            [&key("mesh", "a"), &key("plain", "c")]
        );
        let why = &refused[&key("mesh", "a")];
        assert!(why.contains("mesh/b") && why.contains("mesh/a"), "{why}");
    }

    #[test]
    fn one_namespace_found_twice_in_a_pass_goes_to_nobody_or_to_the_pod_to_enrol() {
        // Two pods to enrol: neither gets it, a leftover claimant neither.
        let refused = claims(
            &Owners::new(),
            &[
                (key("mesh", "a"), Purpose::Enrol, N1),
                (key("mesh", "b"), Purpose::Enrol, N1),
                (key("plain", "c"), Purpose::ClearLeftovers, N1),
            ],
        );
        assert_eq!(refused.len(), 3);
        assert!(refused[&key("mesh", "a")].contains("mesh/b"));
        // One to enrol, one to clear (a stale non-ambient object with the live pod's IP): the
        // enrolment stands, the clearing (which would strip the pod's capture) does not.
        let refused = claims(
            &Owners::new(),
            &[
                (key("mesh", "b"), Purpose::Enrol, N1),
                (key("plain", "a"), Purpose::ClearLeftovers, N1),
            ],
        );
        assert_eq!(refused.keys().collect::<Vec<_>>(), [&key("plain", "a")]);
        assert!(refused[&key("plain", "a")].contains("mesh/b"));
        // Two to clear: neither is cleared.
        let refused = claims(
            &Owners::new(),
            &[
                (key("plain", "a"), Purpose::ClearLeftovers, N1),
                (key("plain", "b"), Purpose::ClearLeftovers, N1),
                (key("plain", "c"), Purpose::ClearLeftovers, N2),
            ],
        );
        assert_eq!(
            refused.keys().collect::<Vec<_>>(),
            [&key("plain", "a"), &key("plain", "b")]
        );
    }

    #[test]
    fn still_free_checks_owner_and_tombstone() {
        let netns = NetnsRef {
            path: "/proc/1234/ns/net".into(),
            id: N1,
        };
        let owners = Owners::from([(N1, key("mesh", "b"))]);
        assert_eq!(still_free(&key("mesh", "b"), &netns, &owners, &[]), Ok(()));
        assert!(matches!(
            still_free(&key("mesh", "a"), &netns, &owners, &[]),
            Err(Miss::Conflict(why)) if why.contains("mesh/b") && why.contains("mesh/a")
        ));
        assert!(matches!(
            still_free(&key("mesh", "b"), &netns, &owners, &[N1]),
            Err(Miss::NotFound(_))
        ));
    }
}
