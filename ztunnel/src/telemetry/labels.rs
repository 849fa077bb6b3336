//! Label values per workload, built once per version of the workload (an xDS update brings a
//! new `Arc<Workload>`) and shared by the label sets of all its connections, so opening a
//! connection allocates no label strings.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use mesh::metrics::Label;
use mesh::model::Workload;
use mesh::Identity;

/// One workload's values of Istio's `source_*` / `destination_*` labels.
#[derive(Debug)]
pub(super) struct WorkloadLabels {
    /// `*_workload`: the controller's name, or the pod's when there is none.
    pub(super) workload: Label,
    /// `*_canonical_service`, also `*_app` (the workload API carries no raw pod labels).
    pub(super) canonical_service: Label,
    /// `*_canonical_revision`, also `*_version`.
    pub(super) canonical_revision: Label,
    /// `*_workload_namespace`.
    pub(super) namespace: Label,
    /// `*_cluster`.
    pub(super) cluster: Label,
    /// `*_principal`, when the connection's identity is the workload's own.
    principal: Label,
    identity: Identity,
}

impl WorkloadLabels {
    fn of(w: &Workload) -> WorkloadLabels {
        let name = if w.workload_name.is_empty() {
            &w.name
        } else {
            &w.workload_name
        };
        WorkloadLabels {
            workload: Label::from(name.as_str()),
            canonical_service: Label::from(w.canonical_name.as_str()),
            canonical_revision: Label::from(w.canonical_revision.as_str()),
            namespace: Label::from(w.namespace()),
            cluster: Label::from(w.cluster_id.as_str()),
            principal: Label::from(w.identity.as_uri()),
            identity: w.identity.clone(),
        }
    }

    /// The `*_principal` value of `id`: shared when it is the workload's own identity.
    pub(super) fn principal(&self, id: &Identity) -> Label {
        if *id == self.identity {
            self.principal.clone()
        } else {
            Label::from(id.as_uri())
        }
    }
}

/// Each workload's labels, by uid, for the version of it last seen.
#[derive(Debug, Default)]
pub(super) struct LabelCache {
    inner: Mutex<Entries>,
}

#[derive(Debug, Default)]
struct Entries {
    /// The `Weak` keeps the workload's allocation (not its contents), so a pointer compare
    /// tells whether the cached values belong to this very version of it.
    by_uid: HashMap<String, (Weak<Workload>, Arc<WorkloadLabels>)>,
    /// Drop entries of workloads that are gone when the map reaches this size.
    prune_at: usize,
}

/// Smallest size at which the cache looks for workloads that are gone.
const MIN_PRUNE: usize = 256;

impl LabelCache {
    /// The labels of `w`, built on the first connection of this version of it.
    pub(super) fn get(&self, w: &Arc<Workload>) -> Arc<WorkloadLabels> {
        let mut e = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((seen, labels)) = e.by_uid.get(&w.uid) {
            if std::ptr::eq(seen.as_ptr(), Arc::as_ptr(w)) {
                return labels.clone();
            }
        }
        let labels = Arc::new(WorkloadLabels::of(w));
        e.by_uid
            .insert(w.uid.clone(), (Arc::downgrade(w), labels.clone()));
        if e.by_uid.len() >= e.prune_at.max(MIN_PRUNE) {
            e.by_uid.retain(|_, (seen, _)| seen.strong_count() > 0);
            e.prune_at = e.by_uid.len() * 2;
        }
        labels
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner.lock().map(|e| e.by_uid.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn workload(uid: &str, revision: &str) -> Arc<Workload> {
        let name = uid.rsplit('/').next().unwrap_or("p");
        let w = Workload::try_from(proto::workload::Workload {
            uid: uid.into(),
            name: name.into(),
            namespace: "ns".into(),
            service_account: "sa".into(),
            canonical_revision: revision.into(),
            ..Default::default()
        });
        Arc::new(w.unwrap())
    }

    #[test]
    fn a_workload_version_is_built_once_and_a_new_version_rebuilt() {
        let cache = LabelCache::default();
        let v1 = workload("Kubernetes//v1/Pod/ns/a", "v1");
        let first = cache.get(&v1);
        assert!(Arc::ptr_eq(&first, &cache.get(&v1)), "same version shares");
        let v2 = workload("Kubernetes//v1/Pod/ns/a", "v2");
        let second = cache.get(&v2);
        assert_eq!(&*second.canonical_revision, "v2");
        assert!(!Arc::ptr_eq(&first, &second));
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn gone_workloads_are_pruned_as_the_cache_grows() {
        let cache = LabelCache::default();
        for i in 0..(MIN_PRUNE * 3) {
            cache.get(&workload(&format!("Kubernetes//v1/Pod/ns/p{i}"), "v1"));
        }
        assert!(cache.len() < MIN_PRUNE, "{} entries kept", cache.len());
    }

    #[test]
    fn the_principal_is_shared_only_for_the_workloads_own_identity() {
        let cache = LabelCache::default();
        let w = workload("Kubernetes//v1/Pod/ns/a", "v1");
        let labels = cache.get(&w);
        assert!(Arc::ptr_eq(
            &labels.principal(&w.identity),
            &labels.principal(&w.identity)
        ));
        let other: Identity = "spiffe://cluster.local/ns/x/sa/y".parse().unwrap();
        assert_eq!(
            &*labels.principal(&other),
            "spiffe://cluster.local/ns/x/sa/y"
        );
    }
}
