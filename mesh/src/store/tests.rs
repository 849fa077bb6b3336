//! The store's tests: indexes, batches, snapshots.

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
