//! The in-memory configuration store the proxy reads: workloads, services and policies.
//!
//! Writers (the xDS client, a local config file, tests) send [`Batch`]es; each batch is applied
//! under one write lock, so readers see the store either before or after a whole batch, never
//! in between. Every change bumps the store's version and notifies [`Store::subscribe`]rs.
//!
//! Indexes kept in step with the data on every insert, replace and removal:
//! - workloads by uid, and by (network, IP) unless the workload uses the host network;
//! - services by key (`<namespace>/<hostname>`), by (network, VIP) and by host name;
//! - the workloads backing each service (from [`Workload::services`]);
//! - policies by key, and the global and per-namespace ones;
//! - the L7 routes of services by service key (waypoints only; see [`Store::routes`]).
//!
//! When two objects claim the same (network, IP) — a pod replaced by a new one that got the
//! old IP before the old one was removed — lookups return the one written last, and removing it
//! reveals the other.
//!
//! Reads take a short read lock and return `Arc`s; nothing async ever runs under the lock.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::model::route::ServiceRoutes;
use crate::model::{Address, NetworkAddress, Policy, PolicyScope, PortMapping, Service, Workload};

mod routes;

/// A set of changes applied all at once, in the order they were added.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    ops: Vec<Op>,
}

#[derive(Debug, Clone)]
enum Op {
    UpsertWorkload(Arc<Workload>),
    UpsertService(Arc<Service>),
    UpsertPolicy(Arc<Policy>),
    RemoveAddress(String),
    RemovePolicy(String),
    UpsertRoutes(Arc<ServiceRoutes>),
    RemoveRoutes(String),
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Batch::default()
    }

    /// Inserts or replaces a workload or service.
    pub fn upsert_address(&mut self, address: Address) -> &mut Self {
        match address {
            Address::Workload(w) => self.upsert_workload(w),
            Address::Service(s) => self.upsert_service(s),
        }
    }

    /// Inserts or replaces the workload with this uid.
    pub fn upsert_workload(&mut self, workload: Workload) -> &mut Self {
        self.ops.push(Op::UpsertWorkload(Arc::new(workload)));
        self
    }

    /// Inserts or replaces the service with this key.
    pub fn upsert_service(&mut self, service: Service) -> &mut Self {
        self.ops.push(Op::UpsertService(Arc::new(service)));
        self
    }

    /// Inserts or replaces the policy with this key.
    pub fn upsert_policy(&mut self, policy: Policy) -> &mut Self {
        self.ops.push(Op::UpsertPolicy(Arc::new(policy)));
        self
    }

    /// Removes the workload (by uid) or service (by key) with this xDS resource name, if any.
    pub fn remove_address(&mut self, name: impl Into<String>) -> &mut Self {
        self.ops.push(Op::RemoveAddress(name.into()));
        self
    }

    /// Removes the policy with this key (`<namespace>/<name>`), if any.
    pub fn remove_policy(&mut self, key: impl Into<String>) -> &mut Self {
        self.ops.push(Op::RemovePolicy(key.into()));
        self
    }

    /// Number of changes in the batch.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether the batch has no changes.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// A workload backing a service, with the ports it serves it on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The workload.
    pub workload: Arc<Workload>,
    /// Its port mappings for the service (its [`Workload::services`] entry).
    pub ports: Vec<PortMapping>,
}

impl Endpoint {
    /// The workload port for `service_port`, if the workload maps it (and to a real port).
    pub fn target_port(&self, service_port: u16) -> Option<u16> {
        self.ports
            .iter()
            .find(|p| p.service_port == service_port && p.target_port != 0)
            .map(|p| p.target_port)
    }
}

/// Everything in the store at one version, for `/config_dump`; sorted by key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreSnapshot {
    /// The store version (number of batches applied).
    pub version: u64,
    /// Workloads by uid.
    pub workloads: Vec<Workload>,
    /// Services by key.
    pub services: Vec<Service>,
    /// Policies by key.
    pub policies: Vec<Policy>,
}

/// The concurrent configuration store; cheap to clone (clones share the data).
#[derive(Debug, Clone)]
pub struct Store {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    inner: RwLock<Inner>,
    changes: watch::Sender<u64>,
}

impl Default for Store {
    fn default() -> Self {
        Store::new()
    }
}

impl Store {
    /// An empty store at version 0.
    pub fn new() -> Self {
        Store {
            shared: Arc::new(Shared {
                inner: RwLock::new(Inner::default()),
                changes: watch::Sender::new(0),
            }),
        }
    }

    /// A store holding exactly what `snapshot` holds, at its version: indexes rebuilt, so
    /// lookups and [`Store::policies_for`] answer as they did in the store it was taken from.
    /// For tools that judge a `/config_dump` offline with the proxy's own code.
    pub fn from_snapshot(snapshot: StoreSnapshot) -> Self {
        let store = Store::new();
        let version = snapshot.version;
        {
            let mut inner = store.write();
            for w in snapshot.workloads {
                inner.upsert_workload(Arc::new(w));
            }
            for s in snapshot.services {
                inner.upsert_service(Arc::new(s));
            }
            for p in snapshot.policies {
                inner.upsert_policy(Arc::new(p));
            }
            inner.version = version;
        }
        store.shared.changes.send_replace(version);
        store
    }

    /// Applies every change of `batch` under one write lock, bumps the version, notifies
    /// subscribers and returns the new version.
    pub fn apply(&self, batch: Batch) -> u64 {
        let changes = batch.len();
        let version = {
            let mut inner = self.write();
            for op in batch.ops {
                inner.apply(op);
            }
            inner.version += 1;
            inner.version
        };
        self.shared.changes.send_replace(version);
        tracing::debug!(version, changes, "config store updated");
        version
    }

    /// A receiver that sees the version after each applied batch.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.changes.subscribe()
    }

    /// The number of batches applied so far.
    pub fn version(&self) -> u64 {
        self.read().version
    }

    /// The workload with this uid.
    pub fn workload(&self, uid: &str) -> Option<Arc<Workload>> {
        self.read().workloads.get(uid).cloned()
    }

    /// The workload that has `ip` on `network` (empty: the default network).
    pub fn workload_by_ip(&self, network: &str, ip: IpAddr) -> Option<Arc<Workload>> {
        let inner = self.read();
        let uid = newest(&inner.workloads_by_ip, network, ip)?;
        inner.workloads.get(uid).cloned()
    }

    /// The service with this key (`<namespace>/<hostname>`).
    pub fn service(&self, key: &str) -> Option<Arc<Service>> {
        self.read().services.get(key).cloned()
    }

    /// The service with the virtual IP `ip` on `network`.
    pub fn service_by_vip(&self, network: &str, ip: IpAddr) -> Option<Arc<Service>> {
        let inner = self.read();
        let key = newest(&inner.services_by_vip, network, ip)?;
        inner.services.get(key).cloned()
    }

    /// The services with this host name (one per namespace that defines it), by key.
    pub fn services_by_hostname(&self, hostname: &str) -> Vec<Arc<Service>> {
        let inner = self.read();
        inner
            .services_by_hostname
            .get(hostname)
            .into_iter()
            .flatten()
            .filter_map(|key| inner.services.get(key).cloned())
            .collect()
    }

    /// The workloads backing the service `service_key`, by uid, each with its port mappings.
    pub fn endpoints_of(&self, service_key: &str) -> Vec<Endpoint> {
        let inner = self.read();
        inner
            .endpoints
            .get(service_key)
            .into_iter()
            .flatten()
            .filter_map(|uid| inner.workloads.get(uid))
            .map(|w| Endpoint {
                ports: w.services.get(service_key).cloned().unwrap_or_default(),
                workload: Arc::clone(w),
            })
            .collect()
    }

    /// The policy with this key (`<namespace>/<name>`).
    pub fn policy(&self, key: &str) -> Option<Arc<Policy>> {
        self.read().policies.get(key).cloned()
    }

    /// The policies in scope for `workload`: global ones, those of its namespace and those it
    /// names in [`Workload::authorization_policies`] (when known), each once, by key.
    pub fn policies_for(&self, workload: &Workload) -> Vec<Arc<Policy>> {
        let inner = self.read();
        let mut keys: BTreeSet<&str> = inner.global_policies.iter().map(String::as_str).collect();
        if let Some(ns) = inner.namespace_policies.get(workload.namespace()) {
            keys.extend(ns.iter().map(String::as_str));
        }
        keys.extend(workload.authorization_policies.iter().map(String::as_str));
        keys.into_iter()
            .filter_map(|key| inner.policies.get(key).cloned())
            .collect()
    }

    /// A consistent copy of everything, sorted by key, for `/config_dump`.
    pub fn snapshot(&self) -> StoreSnapshot {
        let inner = self.read();
        StoreSnapshot {
            version: inner.version,
            workloads: sorted_values(&inner.workloads),
            services: sorted_values(&inner.services),
            policies: sorted_values(&inner.policies),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        // Nothing panics while holding the lock, and every write leaves the indexes
        // consistent op by op, so a poisoned lock still guards usable data.
        self.shared
            .inner
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.shared
            .inner
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Owned copies of the values of `map`, ordered by key.
fn sorted_values<T: Clone>(map: &HashMap<String, Arc<T>>) -> Vec<T> {
    let mut entries: Vec<_> = map.iter().collect();
    entries.sort_by(|a, b| a.0.cmp(b.0));
    entries.into_iter().map(|(_, v)| T::clone(v)).collect()
}

/// Keys of things at one (network, IP), in insertion order: the last one wins lookups.
type IpIndex = HashMap<NetworkAddress, Vec<String>>;

fn newest<'a>(index: &'a IpIndex, network: &str, ip: IpAddr) -> Option<&'a String> {
    let key = NetworkAddress {
        network: network.to_string(),
        ip,
    };
    index.get(&key).and_then(|keys| keys.last())
}

fn index_ip(index: &mut IpIndex, at: NetworkAddress, key: &str) {
    let keys = index.entry(at).or_default();
    keys.retain(|k| k != key);
    keys.push(key.to_string());
}

fn unindex_ip(index: &mut IpIndex, at: NetworkAddress, key: &str) {
    if let Some(keys) = index.get_mut(&at) {
        keys.retain(|k| k != key);
        if keys.is_empty() {
            index.remove(&at);
        }
    }
}

fn index_set<K: std::hash::Hash + Eq>(index: &mut HashMap<K, BTreeSet<String>>, at: K, key: &str) {
    index.entry(at).or_default().insert(key.to_string());
}

fn unindex_set<K: std::hash::Hash + Eq>(
    index: &mut HashMap<K, BTreeSet<String>>,
    at: &K,
    key: &str,
) {
    if let Some(keys) = index.get_mut(at) {
        keys.remove(key);
        if keys.is_empty() {
            index.remove(at);
        }
    }
}

/// The data and its indexes; only touched under the store's lock.
#[derive(Debug, Default)]
struct Inner {
    version: u64,
    workloads: HashMap<String, Arc<Workload>>,
    workloads_by_ip: IpIndex,
    /// Service key → uids of the workloads that back it.
    endpoints: HashMap<String, BTreeSet<String>>,
    services: HashMap<String, Arc<Service>>,
    services_by_vip: IpIndex,
    services_by_hostname: HashMap<String, BTreeSet<String>>,
    policies: HashMap<String, Arc<Policy>>,
    global_policies: BTreeSet<String>,
    namespace_policies: HashMap<String, BTreeSet<String>>,
    /// Service key → its L7 routes.
    routes: HashMap<String, Arc<ServiceRoutes>>,
}

impl Inner {
    fn apply(&mut self, op: Op) {
        match op {
            Op::UpsertWorkload(w) => self.upsert_workload(w),
            Op::UpsertService(s) => self.upsert_service(s),
            Op::UpsertPolicy(p) => self.upsert_policy(p),
            Op::RemoveAddress(name) => {
                self.remove_workload(&name);
                self.remove_service(&name);
            }
            Op::RemovePolicy(key) => self.remove_policy(&key),
            Op::UpsertRoutes(r) => {
                self.routes.insert(r.service.clone(), r);
            }
            Op::RemoveRoutes(key) => {
                self.routes.remove(&key);
            }
        }
    }

    fn upsert_workload(&mut self, w: Arc<Workload>) {
        self.remove_workload(&w.uid);
        let uid = w.uid.clone();
        if w.indexed_by_ip() {
            for ip in &w.addresses {
                let at = NetworkAddress {
                    network: w.network.clone(),
                    ip: *ip,
                };
                index_ip(&mut self.workloads_by_ip, at, &uid);
            }
        }
        for service in w.services.keys() {
            index_set(&mut self.endpoints, service.clone(), &uid);
        }
        self.workloads.insert(uid, w);
    }

    fn remove_workload(&mut self, uid: &str) {
        let Some(w) = self.workloads.remove(uid) else {
            return;
        };
        for ip in &w.addresses {
            let at = NetworkAddress {
                network: w.network.clone(),
                ip: *ip,
            };
            unindex_ip(&mut self.workloads_by_ip, at, uid);
        }
        for service in w.services.keys() {
            unindex_set(&mut self.endpoints, service, uid);
        }
    }

    fn upsert_service(&mut self, s: Arc<Service>) {
        let key = s.key();
        self.remove_service(&key);
        for vip in &s.vips {
            index_ip(&mut self.services_by_vip, vip.clone(), &key);
        }
        index_set(&mut self.services_by_hostname, s.hostname.clone(), &key);
        self.services.insert(key, s);
    }

    fn remove_service(&mut self, key: &str) {
        let Some(s) = self.services.remove(key) else {
            return;
        };
        for vip in &s.vips {
            unindex_ip(&mut self.services_by_vip, vip.clone(), key);
        }
        unindex_set(&mut self.services_by_hostname, &s.hostname, key);
    }

    fn upsert_policy(&mut self, p: Arc<Policy>) {
        let key = p.key();
        self.remove_policy(&key);
        match p.scope {
            PolicyScope::Global => {
                self.global_policies.insert(key.clone());
            }
            PolicyScope::Namespace => {
                index_set(&mut self.namespace_policies, p.namespace.clone(), &key);
            }
            PolicyScope::WorkloadSelector => {}
        }
        self.policies.insert(key, p);
    }

    fn remove_policy(&mut self, key: &str) {
        let Some(p) = self.policies.remove(key) else {
            return;
        };
        self.global_policies.remove(key);
        unindex_set(&mut self.namespace_policies, &p.namespace, key);
    }

    /// Sizes of every index, to check that removals leave nothing behind.
    #[cfg(test)]
    fn index_sizes(&self) -> std::collections::BTreeMap<&'static str, usize> {
        std::collections::BTreeMap::from([
            ("workloads", self.workloads.len()),
            ("workloads_by_ip", self.workloads_by_ip.len()),
            ("endpoints", self.endpoints.len()),
            ("services", self.services.len()),
            ("services_by_vip", self.services_by_vip.len()),
            ("services_by_hostname", self.services_by_hostname.len()),
            ("policies", self.policies.len()),
            ("global_policies", self.global_policies.len()),
            ("namespace_policies", self.namespace_policies.len()),
        ])
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::{AppProtocol, NetworkMode};

    fn workload(uid: &str, ip: &str) -> Workload {
        crate::model::workload::tests::sample(uid, ip)
    }

    fn service(ns: &str, host: &str, vip: &str) -> Service {
        crate::model::service::tests::sample(ns, host, vip)
    }

    fn policy(ns: &str, name: &str, scope: PolicyScope) -> Policy {
        crate::model::policy::tests::sample(ns, name, scope)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    const ECHO: &str = "default/sleep.default.svc.cluster.local";

    fn apply(store: &Store, f: impl FnOnce(&mut Batch)) -> u64 {
        let mut batch = Batch::new();
        f(&mut batch);
        store.apply(batch)
    }

    #[test]
    fn looks_up_by_every_index() {
        let store = Store::new();
        apply(&store, |b| {
            b.upsert_workload(workload("w1", "10.0.0.1"));
            b.upsert_service(service(
                "default",
                "sleep.default.svc.cluster.local",
                "10.96.0.1",
            ));
        });
        assert_eq!(
            store.workload("w1").map(|w| w.uid.clone()),
            Some("w1".into())
        );
        assert!(store.workload_by_ip("", ip("10.0.0.1")).is_some());
        assert!(store.workload_by_ip("other-net", ip("10.0.0.1")).is_none());
        assert!(store.workload_by_ip("", ip("10.0.0.2")).is_none());
        assert_eq!(store.service(ECHO).map(|s| s.key()), Some(ECHO.into()));
        assert!(store.service_by_vip("", ip("10.96.0.1")).is_some());
        assert_eq!(
            store
                .services_by_hostname("sleep.default.svc.cluster.local")
                .len(),
            1
        );
        assert_eq!(store.version(), 1);
    }

    #[test]
    fn replacing_a_workload_moves_its_ip_and_service_indexes() {
        let store = Store::new();
        apply(&store, |b| {
            b.upsert_workload(workload("w1", "10.0.0.1"));
        });
        let mut moved = workload("w1", "10.0.0.9");
        moved.services.clear();
        apply(&store, |b| {
            b.upsert_workload(moved);
        });
        assert!(store.workload_by_ip("", ip("10.0.0.1")).is_none());
        assert!(store.workload_by_ip("", ip("10.0.0.9")).is_some());
        assert!(store.endpoints_of(ECHO).is_empty());
        let sizes = store.read().index_sizes();
        assert_eq!(sizes["workloads_by_ip"], 1);
        assert_eq!(sizes["endpoints"], 0);
    }

    #[test]
    fn replacing_a_service_moves_its_vip_index() {
        let store = Store::new();
        apply(&store, |b| {
            b.upsert_service(service("default", "a.default", "10.96.0.1"));
        });
        apply(&store, |b| {
            b.upsert_service(service("default", "a.default", "10.96.0.2"));
        });
        assert!(store.service_by_vip("", ip("10.96.0.1")).is_none());
        assert!(store.service_by_vip("", ip("10.96.0.2")).is_some());
    }

    #[test]
    fn removal_by_name_cleans_every_index() {
        let store = Store::new();
        apply(&store, |b| {
            b.upsert_workload(workload("w1", "10.0.0.1"))
                .upsert_service(service(
                    "default",
                    "sleep.default.svc.cluster.local",
                    "10.96.0.1",
                ))
                .upsert_policy(policy("istio-system", "global", PolicyScope::Global))
                .upsert_policy(policy("default", "ns-wide", PolicyScope::Namespace))
                .upsert_policy(policy(
                    "default",
                    "allow-sleep",
                    PolicyScope::WorkloadSelector,
                ));
        });
        assert!(store.read().index_sizes().values().all(|n| *n > 0));
        apply(&store, |b| {
            b.remove_address("w1")
                .remove_address(ECHO)
                .remove_policy("istio-system/global")
                .remove_policy("default/ns-wide")
                .remove_policy("default/allow-sleep")
                .remove_address("not-there")
                .remove_policy("not/there");
        });
        let sizes = store.read().index_sizes();
        assert!(sizes.values().all(|n| *n == 0), "{sizes:?}");
        assert_eq!(store.snapshot().workloads.len(), 0);
    }

    #[test]
    fn shared_ip_lookups_prefer_the_newest_and_fall_back_after_removal() {
        let store = Store::new();
        apply(&store, |b| {
            b.upsert_workload(workload("old", "10.0.0.1"))
                .upsert_workload(workload("new", "10.0.0.1"));
        });
        let at = |store: &Store| {
            store
                .workload_by_ip("", ip("10.0.0.1"))
                .map(|w| w.uid.clone())
        };
        assert_eq!(at(&store), Some("new".into()));
        apply(&store, |b| {
            b.remove_address("new");
        });
        assert_eq!(at(&store), Some("old".into()));
        apply(&store, |b| {
            b.remove_address("old");
        });
        assert_eq!(at(&store), None);
    }

    #[test]
    fn host_network_workloads_are_not_found_by_ip() {
        let store = Store::new();
        let mut w = workload("h", "192.168.0.5");
        w.network_mode = NetworkMode::HostNetwork;
        apply(&store, |b| {
            b.upsert_workload(w);
        });
        assert!(store.workload("h").is_some());
        assert!(store.workload_by_ip("", ip("192.168.0.5")).is_none());
    }

    #[test]
    fn endpoints_of_lists_backing_workloads_with_target_ports() {
        let store = Store::new();
        let mut other = workload("w3", "10.0.0.3");
        other.services = BTreeMap::from([(
            "default/other.default".to_string(),
            vec![PortMapping {
                service_port: 80,
                target_port: 9090,
                app_protocol: AppProtocol::Tcp,
            }],
        )]);
        apply(&store, |b| {
            b.upsert_workload(workload("w2", "10.0.0.2"))
                .upsert_workload(workload("w1", "10.0.0.1"))
                .upsert_workload(other);
        });
        let endpoints = store.endpoints_of(ECHO);
        let uids: Vec<_> = endpoints.iter().map(|e| e.workload.uid.as_str()).collect();
        assert_eq!(uids, ["w1", "w2"]);
        assert_eq!(endpoints[0].target_port(80), Some(8080));
        assert_eq!(endpoints[0].target_port(81), None);
        let other = store.endpoints_of("default/other.default");
        assert_eq!(other.len(), 1);
        assert_eq!(other[0].target_port(80), Some(9090));
        assert!(store.endpoints_of("default/nothing").is_empty());
    }

    #[test]
    fn policies_for_is_global_plus_namespace_plus_own() {
        let store = Store::new();
        apply(&store, |b| {
            b.upsert_policy(policy("istio-system", "global", PolicyScope::Global))
                .upsert_policy(policy("default", "ns-wide", PolicyScope::Namespace))
                .upsert_policy(policy("other", "ns-wide", PolicyScope::Namespace))
                .upsert_policy(policy(
                    "default",
                    "allow-sleep",
                    PolicyScope::WorkloadSelector,
                ))
                .upsert_policy(policy(
                    "default",
                    "someone-else",
                    PolicyScope::WorkloadSelector,
                ));
        });
        // The sample workload is in `default` and names `default/allow-sleep`; also name the
        // namespace policy and an unknown one to check dedup and missing references.
        let mut w = workload("w1", "10.0.0.1");
        w.authorization_policies
            .extend(["default/ns-wide".to_string(), "default/unknown".to_string()]);
        let keys: Vec<_> = store.policies_for(&w).iter().map(|p| p.key()).collect();
        assert_eq!(
            keys,
            [
                "default/allow-sleep",
                "default/ns-wide",
                "istio-system/global"
            ]
        );
        apply(&store, |b| {
            b.remove_policy("istio-system/global");
        });
        assert_eq!(store.policies_for(&w).len(), 2);
    }

    #[test]
    fn subscribers_see_each_batch() {
        let store = Store::new();
        let mut rx = store.subscribe();
        assert_eq!(*rx.borrow_and_update(), 0);
        apply(&store, |b| {
            b.upsert_workload(workload("w1", "10.0.0.1"));
        });
        assert!(rx.has_changed().expect("sender alive"));
        assert_eq!(*rx.borrow_and_update(), 1);
        assert_eq!(store.apply(Batch::new()), 2);
        assert_eq!(*rx.borrow_and_update(), 2);
    }

    #[test]
    fn readers_never_see_half_a_batch() {
        let store = Store::new();
        let writer = {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0..300 {
                    // Each batch replaces the workload and the service together, both marked
                    // with `i`, and removes the previous pair's extra workload.
                    let mut w = workload("w", "10.0.0.1");
                    w.name = format!("gen-{i}");
                    let mut extra = workload(&format!("extra-{i}"), "10.0.1.1");
                    extra.name = format!("gen-{i}");
                    let mut s = service("default", "s.default", "10.96.0.1");
                    s.name = format!("gen-{i}");
                    let mut batch = Batch::new();
                    batch
                        .upsert_workload(w)
                        .upsert_service(s)
                        .upsert_workload(extra);
                    if i > 0 {
                        batch.remove_address(format!("extra-{}", i - 1));
                    }
                    store.apply(batch);
                }
            })
        };
        let mut seen = 0;
        while !writer.is_finished() || seen == 0 {
            let snap = store.snapshot();
            if snap.version == 0 {
                continue;
            }
            seen += 1;
            let names: BTreeSet<_> = snap
                .workloads
                .iter()
                .map(|w| w.name.as_str())
                .chain(snap.services.iter().map(|s| s.name.as_str()))
                .collect();
            assert_eq!(names.len(), 1, "half a batch visible: {names:?}");
            assert_eq!(snap.workloads.len(), 2);
        }
        writer.join().expect("writer");
        assert_eq!(store.version(), 300);
    }

    #[test]
    fn a_store_rebuilt_from_its_snapshot_answers_the_same() {
        let store = Store::new();
        let mut selected = workload("w2", "10.0.0.2");
        selected.authorization_policies = vec!["ns/picked".into()];
        apply(&store, |b| {
            b.upsert_workload(workload("w1", "10.0.0.1"))
                .upsert_workload(selected)
                .upsert_service(service(
                    "default",
                    "sleep.default.svc.cluster.local",
                    "10.96.0.1",
                ))
                .upsert_policy(policy("root", "g", PolicyScope::Global))
                .upsert_policy(policy("ns", "picked", PolicyScope::WorkloadSelector));
        });
        apply(&store, |b| {
            b.upsert_policy(policy("other", "n", PolicyScope::Namespace));
        });
        // Through JSON, as a `/config_dump` reader gets it.
        let json = serde_json::to_string(&store.snapshot()).expect("json");
        let snapshot: StoreSnapshot = serde_json::from_str(&json).expect("parse");
        let rebuilt = Store::from_snapshot(snapshot);

        assert_eq!(rebuilt.snapshot(), store.snapshot());
        assert_eq!(rebuilt.version(), 2);
        assert_eq!(*rebuilt.subscribe().borrow(), 2);
        assert_eq!(rebuilt.read().index_sizes(), store.read().index_sizes());
        let w2 = rebuilt
            .workload_by_ip("", ip("10.0.0.2"))
            .expect("w2 by ip");
        let keys = |s: &Store, w: &Workload| -> Vec<String> {
            s.policies_for(w).iter().map(|p| p.key()).collect()
        };
        assert_eq!(keys(&rebuilt, &w2), keys(&store, &w2));
        assert!(keys(&rebuilt, &w2).contains(&"ns/picked".to_string()));
        assert_eq!(
            rebuilt.endpoints_of(ECHO).len(),
            store.endpoints_of(ECHO).len()
        );
        assert!(rebuilt.service_by_vip("", ip("10.96.0.1")).is_some());
    }

    #[test]
    fn snapshot_is_sorted_and_serializable() {
        let store = Store::new();
        apply(&store, |b| {
            b.upsert_workload(workload("b", "10.0.0.2"))
                .upsert_workload(workload("a", "10.0.0.1"))
                .upsert_policy(policy("ns", "p", PolicyScope::Namespace));
        });
        let snap = store.snapshot();
        assert_eq!(snap.workloads[0].uid, "a");
        let json = serde_json::to_string(&snap).expect("json");
        let back: StoreSnapshot = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, snap);
    }
}
