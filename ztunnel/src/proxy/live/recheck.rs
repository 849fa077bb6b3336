//! Re-checking live inbound connections when policy changes, off the registry's lock.
//!
//! A decision depends only on the policies in scope of the destination pod and on the
//! [`Connection`] (source identity and address, destination address and port). So a re-check:
//!
//! 1. notes, under the registry's lock, which pods have live inbound connections (and whether
//!    any of them was registered since the last re-check);
//! 2. without it, reads each such pod's policies from the store and compares them with what
//!    the last re-check saw (the pod's *fingerprint*: its in-scope policies by key and value);
//! 3. for the pods whose policies changed, takes their connections under the lock again,
//!    evaluates each distinct [`Connection`] once without the lock, and logs dry-run outcomes
//!    once per distinct connection per change;
//! 4. under the lock again, closes the connections now denied that are still open.
//!
//! A pod whose policies did not change evaluates only connections registered since the last
//! re-check (their admission check may have read the store just before the change).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use mesh::model::Policy;
use mesh::rbac::Decision;
use mesh::store::Store;

use super::{CloseReason, Kind, LiveConnections, PodKey};
use crate::proxy::authz;

/// What the last re-check saw: each pod's in-scope policies.
#[derive(Default)]
pub(super) struct State {
    seen: HashMap<PodKey, Vec<Arc<Policy>>>,
}

/// Whether two sorted lists of in-scope policies are the same (pointer first, then value: an
/// xDS push re-sending an unchanged policy is no change).
fn same_policies(a: &[Arc<Policy>], b: &[Arc<Policy>]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| Arc::ptr_eq(x, y) || x == y)
}

/// Which of a pod's connections a re-check evaluates.
enum Scope {
    /// Its policies changed: every live inbound connection, dry-run outcomes logged.
    All,
    /// Unchanged: only those registered since the last re-check.
    New,
}

impl LiveConnections {
    /// Evaluates again the live inbound connections of every pod whose in-scope policies
    /// changed since the last re-check (and those registered since), each distinct connection
    /// once per pod, outside the registry's lock; closes the ones now denied. Returns how many
    /// were closed.
    pub fn recheck(&self, store: &Store) -> usize {
        let mut state = self.rechecks.lock().unwrap_or_else(|p| p.into_inner());

        // (1) Pods with live inbound connections, and whether any is new.
        let mut pods: HashMap<PodKey, bool> = HashMap::new();
        for l in self.lock().conns.values() {
            if !matches!(l.kind, Kind::Inbound(_)) || l.counts.close.is_set() {
                continue;
            }
            match pods.get_mut(&l.pod) {
                Some(any_new) => *any_new |= !l.rechecked,
                None => {
                    pods.insert(l.pod.clone(), !l.rechecked);
                }
            }
        }
        state.seen.retain(|pod, _| pods.contains_key(pod));

        // (2) Their policies now, against what the last re-check saw.
        let mut work: HashMap<PodKey, (Scope, Vec<Arc<Policy>>)> = HashMap::new();
        for (pod, any_new) in pods {
            let Some(dst) = store.workload(&pod.uid) else {
                // Unknown to the control plane for now: nothing to check against. Everything
                // is evaluated when it is known again.
                state.seen.remove(&pod);
                continue;
            };
            let policies = store.policies_for(&dst);
            let changed = state
                .seen
                .get(&pod)
                .is_none_or(|seen| !same_policies(seen, &policies));
            if changed {
                state.seen.insert(pod.clone(), policies.clone());
                work.insert(pod, (Scope::All, policies));
            } else if any_new {
                work.insert(pod, (Scope::New, policies));
            }
        }
        if work.is_empty() {
            return 0;
        }

        // (3) Their connections, grouped by distinct Connection per pod, then evaluated.
        let mut groups: HashMap<&PodKey, HashMap<authz::Inbound, Vec<u64>>> = HashMap::new();
        {
            let inner = self.lock();
            for (id, l) in &inner.conns {
                let Kind::Inbound(conn) = &l.kind else {
                    continue;
                };
                let Some((pod, (scope, _))) = work.get_key_value(&l.pod) else {
                    continue;
                };
                if l.counts.close.is_set() || (matches!(scope, Scope::New) && l.rechecked) {
                    continue;
                }
                groups
                    .entry(pod)
                    .or_default()
                    .entry(conn.clone())
                    .or_default()
                    .push(*id);
            }
        }
        let mut evaluated: Vec<u64> = Vec::new();
        let mut denied: Vec<(authz::Inbound, Decision, Vec<u64>)> = Vec::new();
        for (pod, conns) in groups {
            let (scope, policies) = &work[pod];
            for (conn, ids) in conns {
                let decision = authz::decide(policies, &conn);
                self.evaluations.fetch_add(1, Ordering::Relaxed);
                #[cfg(test)]
                if self.inner.try_lock().is_ok() {
                    self.evaluations_unlocked.fetch_add(1, Ordering::Relaxed);
                }
                if matches!(scope, Scope::All) {
                    authz::log_dry_run(&conn, &decision);
                }
                evaluated.extend_from_slice(&ids);
                if !decision.allowed {
                    denied.push((conn, decision, ids));
                }
            }
        }

        // (4) Close what is now denied and still open.
        let mut closed_by: Vec<(authz::Inbound, Decision, usize)> = Vec::new();
        {
            let mut inner = self.lock();
            for id in &evaluated {
                if let Some(l) = inner.conns.get_mut(id) {
                    l.rechecked = true;
                }
            }
            for (conn, decision, ids) in denied {
                let reason = CloseReason::Denied(decision.reason.to_string());
                let mut closed = 0;
                for id in &ids {
                    let Some(l) = inner.conns.get(id) else {
                        continue; // ended meanwhile
                    };
                    if l.counts.close.set(&reason) {
                        closed += 1;
                    }
                }
                if closed > 0 {
                    closed_by.push((conn, decision, closed));
                }
            }
        }
        let mut total = 0;
        for (conn, decision, closed) in closed_by {
            tracing::info!(target: "authz", connection = %conn, reason = %decision.reason, connections = closed, "closing a live connection no longer allowed");
            total += closed;
        }
        total
    }

    /// Policy evaluations done by re-checks so far.
    pub fn recheck_evaluations(&self) -> u64 {
        self.evaluations.load(Ordering::Relaxed)
    }

    /// Re-checks after every store change, until the store is gone. Changes that arrive while
    /// a re-check runs are folded into the next one.
    pub async fn watch(self: Arc<Self>, store: Store) {
        let mut changes = store.subscribe();
        while changes.changed().await.is_ok() {
            self.recheck(&store);
        }
    }
}
