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
//! - for waypoints, L7 policies and RequestAuthns by key ([`Store::l7_policies_for`]).
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

use crate::l7authz::{L7Policy, RequestAuthn, WaypointContext};
use crate::model::route::ServiceRoutes;
use crate::model::{Address, NetworkAddress, Policy, PolicyScope, PortMapping, Service, Workload};

mod l7;
mod routes;
mod waypoints;

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
    UpsertL7Policy(Arc<L7Policy>),
    RemoveL7Policy(String),
    UpsertRequestAuthn(Arc<RequestAuthn>),
    RemoveRequestAuthn(String),
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

    /// Inserts or replaces the L7 policy with this key.
    pub fn upsert_l7_policy(&mut self, policy: L7Policy) -> &mut Self {
        self.ops.push(Op::UpsertL7Policy(Arc::new(policy)));
        self
    }

    /// Removes the L7 policy with this key (`<namespace>/<name>`), if any.
    pub fn remove_l7_policy(&mut self, key: impl Into<String>) -> &mut Self {
        self.ops.push(Op::RemoveL7Policy(key.into()));
        self
    }

    /// Inserts or replaces the RequestAuthn with this key.
    pub fn upsert_request_authn(&mut self, authn: RequestAuthn) -> &mut Self {
        self.ops.push(Op::UpsertRequestAuthn(Arc::new(authn)));
        self
    }

    /// Removes the RequestAuthn with this key (`<namespace>/<name>`), if any.
    pub fn remove_request_authn(&mut self, key: impl Into<String>) -> &mut Self {
        self.ops.push(Op::RemoveRequestAuthn(key.into()));
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
    /// L7 policies (waypoints only) by key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub l7_policies: Vec<L7Policy>,
    /// RequestAuthns (waypoints only) by key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_authns: Vec<RequestAuthn>,
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
            for p in snapshot.l7_policies {
                inner.l7.upsert_policy(Arc::new(p));
            }
            for a in snapshot.request_authns {
                inner.l7.upsert_authn(Arc::new(a));
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

    /// The L7 policy with this key (`<namespace>/<name>`).
    pub fn l7_policy(&self, key: &str) -> Option<Arc<L7Policy>> {
        self.read().l7.policies.get(key).cloned()
    }

    /// The L7 policies that apply to a request through the waypoint `at` names (to the
    /// service it names): mesh-wide ones, those of the waypoint (or of every waypoint of its
    /// namespace) and those bound to the service; sorted by key.
    pub fn l7_policies_for(&self, at: &WaypointContext<'_>) -> Vec<Arc<L7Policy>> {
        self.read().l7.policies_for(at)
    }

    /// The RequestAuthns that apply at `at`, by the same rule; sorted by key.
    pub fn request_authns_for(&self, at: &WaypointContext<'_>) -> Vec<Arc<RequestAuthn>> {
        self.read().l7.authns_for(at)
    }

    /// A consistent copy of everything, sorted by key, for `/config_dump`.
    pub fn snapshot(&self) -> StoreSnapshot {
        let inner = self.read();
        StoreSnapshot {
            version: inner.version,
            workloads: sorted_values(&inner.workloads),
            services: sorted_values(&inner.services),
            policies: sorted_values(&inner.policies),
            l7_policies: sorted_values(&inner.l7.policies),
            request_authns: sorted_values(&inner.l7.authns),
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
    l7: l7::L7Index,
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
            Op::UpsertL7Policy(p) => self.l7.upsert_policy(p),
            Op::RemoveL7Policy(key) => self.l7.remove_policy(&key),
            Op::UpsertRequestAuthn(a) => self.l7.upsert_authn(a),
            Op::RemoveRequestAuthn(key) => self.l7.remove_authn(&key),
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
mod tests;
