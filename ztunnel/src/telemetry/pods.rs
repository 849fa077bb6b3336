//! Connections per captured pod and direction.
//!
//! Each served pod has one [`PodConnections`] (by uid, shared by every serving of the pod),
//! handed to its proxy when the pod is added: a connection costs two atomic adds when it
//! opens and one when it closes, with no label lookup. Labels are resolved at scrape time,
//! from the control plane's view of the pod when it has one (the workload name), else from
//! what the CNI agent said. A pod's series go once nothing of it is left: its proxy stopped
//! and its last connection closed.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use mesh::store::Store;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use super::outcomes::Direction;

/// One direction's counts.
#[derive(Debug, Default)]
struct Counts {
    active: AtomicI64,
    total: AtomicU64,
}

/// The connection counts of one pod. Get it with [`super::Telemetry::pod`].
#[derive(Debug)]
pub struct PodConnections {
    uid: String,
    /// Namespace and pod name from the CNI agent, for a pod the control plane has not described.
    namespace: String,
    name: String,
    counts: [Counts; 2],
}

impl PodConnections {
    /// Counts a connection opened in `direction`; it counts as active until the guard drops.
    pub fn open(self: &Arc<Self>, direction: Direction) -> ActiveConnection {
        let counts = &self.counts[direction as usize];
        counts.total.fetch_add(1, Ordering::Relaxed);
        counts.active.fetch_add(1, Ordering::Relaxed);
        ActiveConnection {
            pod: self.clone(),
            direction,
        }
    }
}

/// A connection counted as active in its pod's `ztunnel_connections_active`.
#[derive(Debug)]
pub struct ActiveConnection {
    pod: Arc<PodConnections>,
    direction: Direction,
}

impl Drop for ActiveConnection {
    fn drop(&mut self) {
        self.pod.counts[self.direction as usize]
            .active
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// Every pod's [`PodConnections`], by uid, and what resolves their labels.
#[derive(Debug, Default)]
pub struct PodRegistry {
    pods: Mutex<BTreeMap<String, Arc<PodConnections>>>,
    store: Option<Store>,
}

impl PodRegistry {
    /// A registry that names pods from `store` when it knows them.
    pub fn new(store: Option<Store>) -> Self {
        PodRegistry {
            pods: Mutex::default(),
            store,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<PodConnections>>> {
        self.pods.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The counts of pod `uid`: the existing ones while anything of the pod is alive, so a pod
    /// handed over again keeps counting where it was.
    pub fn pod(&self, uid: &str, info: Option<&proto::zds::WorkloadInfo>) -> Arc<PodConnections> {
        let mut pods = self.lock();
        prune(&mut pods);
        pods.entry(uid.to_string())
            .or_insert_with(|| {
                let (namespace, name) = match info {
                    Some(i) if !i.namespace.is_empty() => (i.namespace.clone(), i.name.clone()),
                    _ => names_from_uid(uid),
                };
                Arc::new(PodConnections {
                    uid: uid.to_string(),
                    namespace,
                    name,
                    counts: Default::default(),
                })
            })
            .clone()
    }

    /// `(namespace, workload, pod)` of a pod, as exported.
    fn labels(&self, pod: &PodConnections) -> [String; 3] {
        let unknown = || "unknown".to_string();
        let or_unknown = |s: &str| {
            if s.is_empty() {
                unknown()
            } else {
                s.to_string()
            }
        };
        match self.store.as_ref().and_then(|s| s.workload(&pod.uid)) {
            Some(w) => {
                let workload = if w.workload_name.is_empty() {
                    &w.name
                } else {
                    &w.workload_name
                };
                [
                    or_unknown(w.namespace()),
                    or_unknown(workload),
                    or_unknown(&w.name),
                ]
            }
            None => [or_unknown(&pod.namespace), unknown(), or_unknown(&pod.name)],
        }
    }
}

/// Forgets pods nothing holds any more (their proxy stopped, their last connection closed).
/// Under the map's lock nobody can take a new reference to them: only [`PodRegistry::pod`]
/// hands references out.
fn prune(pods: &mut BTreeMap<String, Arc<PodConnections>>) {
    pods.retain(|_, p| Arc::strong_count(p) > 1);
}

/// The label set of a pod's series in `direction`.
fn series(direction: Direction, [namespace, workload, pod]: &[String; 3]) -> [(&str, &str); 4] {
    [
        ("direction", direction.as_str()),
        ("namespace", namespace),
        ("workload", workload),
        ("pod", pod),
    ]
}

/// Namespace and name from a uid of the form `<cluster>//v1/Pod/<namespace>/<name>`.
fn names_from_uid(uid: &str) -> (String, String) {
    let mut parts = uid.rsplit('/');
    let name = parts.next().unwrap_or_default().to_string();
    let namespace = parts.next().unwrap_or_default().to_string();
    (namespace, name)
}

impl Collector for PodRegistry {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let pods: Vec<Arc<PodConnections>> = {
            let mut pods = self.lock();
            prune(&mut pods);
            pods.values().cloned().collect()
        };
        let labelled: Vec<_> = pods.iter().map(|p| (p, self.labels(p))).collect();
        let mut active = encoder.encode_descriptor(
            "ztunnel_connections_active",
            "Connections open now, per captured pod and direction",
            None,
            MetricType::Gauge,
        )?;
        for (pod, labels) in &labelled {
            for d in Direction::ALL {
                let n = pod.counts[d as usize].active.load(Ordering::Relaxed);
                ConstGauge::new(n).encode(active.encode_family(&series(d, labels))?)?;
            }
        }
        let mut total = encoder.encode_descriptor(
            "ztunnel_connections",
            "Connections opened, per captured pod and direction",
            None,
            MetricType::Counter,
        )?;
        for (pod, labels) in &labelled {
            for d in Direction::ALL {
                let n = pod.counts[d as usize].total.load(Ordering::Relaxed);
                ConstCounter::new(n).encode(total.encode_family(&series(d, labels))?)?;
            }
        }
        Ok(())
    }
}
