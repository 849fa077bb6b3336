//! The pods the agent holds, and every change to them: CNI add and del, reconcile passes.
//!
//! [`Pods`] lives behind the agent's one async mutex, so enrolments and releases never race
//! (a reconcile pass never releases a pod half-way through its ADD). Pods are keyed by
//! namespace/name, with the container id when a CNI ADD gave it, so a DEL after an agent
//! restart still finds a pod the agent rediscovered. A pod that is not enrolled is held by
//! the *path* of its namespace (plus the namespace's identity, to notice a reused path), not
//! an open fd: an fd would keep a deleted pod's namespace alive. An enrolled pod's open fd is
//! in the [`Hub`](crate::ztunnel::Hub), which ztunnel needs anyway.
//!
//! A CNI DEL is for the held sandbox when its container id is the held one; for a pod found
//! by a scan (no container id known) only when its `netns` path is the held namespace (same
//! dev and inode). Any other DEL naming the pod is for an older sandbox and is ignored: the
//! live pod keeps its capture, and a reconcile pass releases it when its Pod object goes.
//!
//! A CNI DEL leaves a tombstone on the namespace it tore down: the sandbox's pause process
//! may outlive the DEL while the Pod object still lists the pod, and a scan must not capture
//! that dying namespace again. A new sandbox has a new namespace; an ADD clears the tombstone
//! of its own namespace (a runtime retrying on the same one).
//!
//! A reconcile pass ([`reconcile`]) plans under the lock, looks for namespaces (scans, ARP
//! waits) *without* it, then takes it again, plans afresh (a CNI ADD or DEL may have come
//! meanwhile), checks each namespace found is still free ([`resolve::still_free`]) and
//! applies. A pod planned only in the second plan waits for the next pass.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proto::zds::WorkloadInfo;

use crate::agent_proto::AgentRequest;
use crate::enrollment::{PodKey, Snapshot};
use crate::metrics::InstallReason;
use crate::node::{blocking, NodeCtx};
use crate::reconcile::{self, Change, Held};
use crate::resolve::{self, shown, Miss, NetnsRef, Owners, Purpose, Resolved, Wanted};
use crate::scan::{self, NsId, Scanner};
use crate::ztunnel::{Ack, Enrolled};
use crate::{netns, rules};

/// One pod the agent holds.
#[derive(Debug, Clone)]
struct Record {
    /// From CNI ADD; `None` for a pod found by a scan.
    container_id: Option<String>,
    /// Its namespace, when known.
    netns: Option<NetnsRef>,
    /// Its addresses from CNI ADD (to find it again by scan if its path goes stale).
    ips: Vec<IpAddr>,
    /// Its Pod object has been seen in the config dir.
    listed: bool,
}

/// What a CNI ADD did.
#[derive(Debug)]
pub enum Added {
    /// The pod is not in the mesh; nothing was touched.
    NotEnrolled,
    /// Captured and recorded; ztunnel's ack to wait for, or `None` when no ztunnel is
    /// connected.
    Enrolled(Option<Ack>),
}

/// Which reconcile pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// The one before the agent serves ztunnel: also clears capture rules left in pods that
    /// should not have them (labels changed while the agent was down).
    Start,
    /// Every `--reconcile-interval-ms`.
    Periodic,
}

/// The held pods (see the module docs).
#[derive(Debug, Default)]
pub struct Pods {
    records: BTreeMap<PodKey, Record>,
    /// The last failure logged per pod: a repeat goes to debug, not warn, every pass.
    failures: BTreeMap<PodKey, String>,
    scanner: Arc<Mutex<Scanner>>,
    /// Namespaces torn down by a CNI DEL, with when (see the module docs).
    deleted: BTreeMap<NsId, Instant>,
}

/// What one pass would change.
#[derive(Debug)]
struct Plan {
    /// The pass it is for.
    pass: Pass,
    changes: Vec<Change>,
    /// Pods of this node, not held, that should not be captured (start pass only).
    leftovers: Vec<(PodKey, Vec<IpAddr>)>,
}

/// How long a tombstone lasts: longer than any sandbox teardown.
const TOMBSTONE_TTL: Duration = Duration::from_secs(600);

/// Whether a CNI DEL (container id `del_container`, netns identity `del_netns` when its path
/// could be read) is for the sandbox held for its pod: same container id; or, for a pod found
/// by a scan (no container id known), the same namespace as one the agent holds for it.
fn del_is_for_held(
    held_container: Option<&str>,
    held_netns: &[NsId],
    del_container: &str,
    del_netns: Option<NsId>,
) -> bool {
    match held_container {
        Some(held) => held == del_container,
        None => del_netns.is_some_and(|id| held_netns.contains(&id)),
    }
}

impl Pods {
    /// Notes a failure for `key`: warned once, then at debug while it repeats.
    fn failed(&mut self, key: &PodKey, error: String) {
        if self.failures.get(key) == Some(&error) {
            tracing::debug!(pod = %shown(key), error = %error, "reconcile: still failing");
        } else {
            tracing::warn!(pod = %shown(key), error = %error, "reconcile failed for a pod; retrying every pass");
            self.failures.insert(key.clone(), error);
        }
    }

    fn forget(&mut self, key: &PodKey) {
        self.records.remove(key);
        self.failures.remove(key);
    }

    /// Installs the rules in `netns` and hands the pod to ztunnel.
    async fn capture(
        &self,
        agent: &NodeCtx,
        key: &PodKey,
        service_account: String,
        netns: File,
        reason: InstallReason,
    ) -> Result<Option<Ack>, String> {
        let opts = agent.config.capture.clone();
        let installed = blocking(move || rules::install(&netns, &opts).map(|c| (netns, c)))
            .await?
            .map_err(|e| format!("installing capture rules: {e}"));
        let (netns, changed) = installed.inspect_err(|_| agent.metrics.install_failed())?;
        if changed {
            agent.metrics.installed(reason);
        } else {
            tracing::debug!(pod = %shown(key), "capture rules already in place");
        }
        let ack = agent.hub.add(Enrolled {
            uid: agent.uid(key),
            info: WorkloadInfo {
                name: key.1.clone(),
                namespace: key.0.clone(),
                service_account,
            },
            netns: Arc::new(netns),
        });
        agent.enrollment.captured(key);
        Ok(ack)
    }

    /// Removes the rules, then tells ztunnel (in that order: traffic must stop being
    /// redirected before ztunnel stops serving the namespace). A failure keeps the pod
    /// enrolled (the next pass retries). Not enrolled: nothing to do.
    async fn release(&self, agent: &NodeCtx, key: &PodKey) -> Result<(), String> {
        let uid = agent.uid(key);
        let Some(pod) = agent.hub.get(&uid) else {
            return Ok(());
        };
        let _was_installed = blocking(move || rules::remove(&pod.netns))
            .await?
            .map_err(|e| format!("removing capture rules: {e}"))?;
        agent.hub.del(&uid);
        agent.enrollment.released(key);
        Ok(())
    }

    /// CNI ADD: decide; enrolled → open the namespace, install the rules, record, announce.
    /// Not enrolled → record the pod by its namespace path, for a later label change. A pod
    /// that would be enrolled by its namespace but whose Pod object is not in the source yet
    /// is refused (the source lags: its identity is unknown), so the runtime retries.
    pub async fn add(&mut self, agent: &NodeCtx, req: &AgentRequest) -> Result<Added, String> {
        let key: PodKey = (req.pod_namespace.clone(), req.pod_name.clone());
        let enrollment = agent.enrollment.clone();
        let snapshot = blocking(move || enrollment.snapshot())
            .await?
            .map_err(|e| {
                let starting = if agent.started() {
                    ""
                } else {
                    " (the node agent has not read it since it started, so it serves no pod yet)"
                };
                format!(
                    "cannot decide enrolment: the config source cannot be read: {e}{starting}; \
                 the runtime will retry"
                )
            })?;
        let decision = snapshot.decide(&key.0, &key.1);
        let listed = snapshot.pod(&key).is_some();
        if decision.enrolled && !listed {
            return Err(format!(
                "Pod {} not yet in the config source; the runtime will retry",
                shown(&key)
            ));
        }
        let path = PathBuf::from(&req.netns);
        if !decision.enrolled {
            // A new sandbox of a pod enrolled under an earlier one: that one is released.
            if let Err(e) = self.release(agent, &key).await {
                tracing::warn!(error = %e, "releasing the pod's earlier sandbox");
            }
            let stat_path = path.clone();
            let id = blocking(move || std::fs::metadata(&stat_path).ok().map(|m| scan::ns_id(&m)))
                .await?;
            self.failures.remove(&key);
            if let Some(id) = id {
                self.deleted.remove(&id);
            }
            self.records.insert(
                key,
                Record {
                    container_id: Some(req.container_id.clone()),
                    netns: id.map(|id| NetnsRef { path, id }),
                    ips: req.pod_ips.clone(),
                    listed,
                },
            );
            return Ok(Added::NotEnrolled);
        }
        let open_path = path.clone();
        let netns = blocking(move || {
            let file = netns::open(&open_path)
                .map_err(|e| format!("opening network namespace {}: {e}", open_path.display()))?;
            let id = file
                .metadata()
                .map(|m| scan::ns_id(&m))
                .map_err(|e| format!("reading network namespace {}: {e}", open_path.display()))?;
            Ok::<_, String>((file, id))
        })
        .await?;
        let (file, id) = netns?;
        let ack = self
            .capture(
                agent,
                &key,
                decision.service_account,
                file,
                InstallReason::new,
            )
            .await?;
        // Recorded whatever ztunnel says: a later snapshot retries it, and the DEL that
        // follows a failed ADD removes it with its rules.
        self.failures.remove(&key);
        self.deleted.remove(&id);
        self.records.insert(
            key,
            Record {
                container_id: Some(req.container_id.clone()),
                netns: Some(NetnsRef { path, id }),
                ips: req.pod_ips.clone(),
                listed,
            },
        );
        Ok(Added::Enrolled(ack))
    }

    /// CNI DEL: forget the pod, tell ztunnel, remove the rules. `Ok(false)`: it was not
    /// enrolled, or the DEL is not for the sandbox held (module docs) and was ignored.
    pub async fn del(&mut self, agent: &NodeCtx, req: &AgentRequest) -> Result<bool, String> {
        let key = if req.pod_namespace.is_empty() || req.pod_name.is_empty() {
            self.records
                .iter()
                .find(|(_, r)| r.container_id.as_deref() == Some(req.container_id.as_str()))
                .map(|(k, _)| k.clone())
        } else {
            Some((req.pod_namespace.clone(), req.pod_name.clone()))
        };
        let Some(key) = key else {
            return Ok(false);
        };
        let enrolled_ns = agent
            .hub
            .get(&agent.uid(&key))
            .and_then(|p| p.netns.metadata().ok())
            .map(|m| scan::ns_id(&m));
        let held_ns = self
            .records
            .get(&key)
            .and_then(|r| r.netns.as_ref())
            .map(|n| n.id);
        if let Some(record) = self.records.get(&key) {
            let held_container = record.container_id.clone();
            let del_ns = if held_container.is_none() && !req.netns.is_empty() {
                let path = PathBuf::from(&req.netns);
                blocking(move || std::fs::metadata(&path).ok().map(|m| scan::ns_id(&m))).await?
            } else {
                None
            };
            let held: Vec<NsId> = [held_ns, enrolled_ns].into_iter().flatten().collect();
            if !del_is_for_held(held_container.as_deref(), &held, &req.container_id, del_ns) {
                match held_container {
                    Some(held) => {
                        tracing::info!(held = %held, "DEL of an older sandbox; the pod's current one stays")
                    }
                    None => tracing::info!(
                        netns = %req.netns,
                        "DEL names a pod found by scan but not the network namespace held for \
                         it: an older sandbox's; ignored (the pod is released when its Pod \
                         object goes)"
                    ),
                }
                return Ok(false);
            }
        }
        self.forget(&key);
        let enrolled = agent.hub.del(&agent.uid(&key));
        for id in [held_ns, enrolled_ns].into_iter().flatten() {
            self.deleted.insert(id, Instant::now());
        }
        let Some(pod) = enrolled else {
            return Ok(false);
        };
        let _was_installed = blocking(move || rules::remove(&pod.netns))
            .await?
            .map_err(|e| format!("removing capture rules: {e}"))?;
        Ok(true)
    }

    /// The held pods as the plan sees them.
    fn held(&self, agent: &NodeCtx) -> BTreeMap<PodKey, Held> {
        self.records
            .iter()
            .map(|(key, r)| {
                let announced = agent
                    .hub
                    .get(&agent.uid(key))
                    .map(|p| p.info.service_account);
                let held = Held {
                    enrolled: announced.is_some(),
                    listed: r.listed,
                    service_account: announced,
                };
                (key.clone(), held)
            })
            .collect()
    }

    /// What `snapshot` asks for now ([`reconcile::plan`]); notes which held pods are listed.
    fn plan(&mut self, agent: &NodeCtx, snapshot: &Snapshot, pass: Pass) -> Plan {
        for (key, record) in &mut self.records {
            record.listed |= snapshot.pod(key).is_some();
        }
        let held = self.held(agent);
        let node = agent.config.node_name.as_str();
        Plan {
            pass,
            changes: reconcile::plan(node, snapshot, &held),
            leftovers: match pass {
                Pass::Start => reconcile::unheld_outside(node, snapshot, &held),
                Pass::Periodic => Vec::new(),
            },
        }
    }

    /// The pods of `plan` whose namespace must be found.
    fn wants(&self, agent: &NodeCtx, plan: &Plan, snapshot: &Snapshot) -> Vec<Wanted> {
        let shared = reconcile::shared_addresses(&agent.config.node_name, snapshot);
        let enrols = plan.changes.iter().filter_map(|c| match c {
            Change::Enrol { key, ips, .. } => {
                let record = self.records.get(key);
                let mut all = ips.clone();
                for ip in record.map(|r| r.ips.as_slice()).unwrap_or_default() {
                    if !all.contains(ip) {
                        all.push(*ip);
                    }
                }
                Some(Wanted {
                    key: key.clone(),
                    purpose: Purpose::Enrol,
                    known: record.and_then(|r| r.netns.clone()),
                    ips: all,
                    shared: shared.get(key).cloned(),
                })
            }
            _ => None,
        });
        let clears = plan.leftovers.iter().map(|(key, ips)| Wanted {
            key: key.clone(),
            purpose: Purpose::ClearLeftovers,
            known: None,
            ips: ips.clone(),
            shared: shared.get(key).cloned(),
        });
        enrols.chain(clears).collect()
    }

    /// Which pod holds which namespace: the records, and the pods enrolled with ztunnel.
    fn owners(&self, agent: &NodeCtx) -> Owners {
        let mut owners: Owners = self
            .records
            .iter()
            .filter_map(|(key, r)| Some((r.netns.as_ref()?.id, key.clone())))
            .collect();
        for pod in agent.hub.all() {
            if let Ok(meta) = pod.netns.metadata() {
                let key = (pod.info.namespace.clone(), pod.info.name.clone());
                owners.insert(scan::ns_id(&meta), key);
            }
        }
        owners
    }

    /// The live tombstones (expired ones dropped).
    fn tombstones(&mut self) -> Vec<NsId> {
        self.deleted.retain(|_, at| at.elapsed() < TOMBSTONE_TTL);
        self.deleted.keys().copied().collect()
    }

    /// Checks again, under the lock, that each namespace found is still free.
    fn recheck(&mut self, agent: &NodeCtx, resolved: Resolved) -> Resolved {
        let owners = self.owners(agent);
        let deleted = self.tombstones();
        resolved
            .into_iter()
            .map(|(key, found)| {
                let found = found.and_then(|(file, netns)| {
                    resolve::still_free(&key, &netns, &owners, &deleted).map(|()| (file, netns))
                });
                (key, found)
            })
            .collect()
    }

    async fn apply_plan(
        &mut self,
        agent: &NodeCtx,
        snapshot: &Snapshot,
        plan: Plan,
        mut resolved: Resolved,
    ) {
        for change in plan.changes {
            self.apply(agent, snapshot, change, plan.pass, &mut resolved)
                .await;
        }
        for (key, _) in plan.leftovers {
            let file = match resolved.remove(&key) {
                Some(Ok((file, _))) => file,
                Some(Err(Miss::Conflict(why))) => {
                    tracing::warn!(pod = %shown(&key), error = %why, "not clearing leftover capture rules");
                    continue;
                }
                Some(Err(Miss::NotFound(_))) | None => continue,
            };
            match blocking(move || rules::remove(&file)).await {
                Ok(Ok(true)) => {
                    tracing::info!(pod = %shown(&key), "removed capture rules left from before the agent started")
                }
                Ok(Ok(false)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(pod = %shown(&key), error = %e, "removing leftover capture rules")
                }
                Err(e) => {
                    tracing::warn!(pod = %shown(&key), error = %e, "removing leftover capture rules")
                }
            }
        }
    }

    async fn apply(
        &mut self,
        agent: &NodeCtx,
        snapshot: &Snapshot,
        change: Change,
        pass: Pass,
        resolved: &mut Resolved,
    ) {
        match change {
            Change::Enrol {
                key,
                service_account,
                ips,
            } => {
                let Some(found) = resolved.remove(&key) else {
                    // Planned after the lookup (the lock was released meanwhile).
                    return tracing::debug!(pod = %shown(&key), "to enrol; looked for next pass");
                };
                let (file, netns) = match found {
                    Ok(f) => f,
                    Err(e) => return self.failed(&key, format!("cannot enrol: {e}")),
                };
                let reason = match pass {
                    Pass::Start => InstallReason::restart,
                    Pass::Periodic => InstallReason::new,
                };
                if let Err(e) = self
                    .capture(agent, &key, service_account, file, reason)
                    .await
                {
                    return self.failed(&key, e);
                }
                tracing::info!(pod = %shown(&key), netns = %netns.path.display(), "pod enrolled");
                let listed = snapshot.pod(&key).is_some();
                let record = self.records.entry(key.clone()).or_insert(Record {
                    container_id: None,
                    netns: None,
                    ips: Vec::new(),
                    listed,
                });
                record.netns = Some(netns);
                if record.ips.is_empty() {
                    record.ips = ips;
                }
                self.failures.remove(&key);
            }
            Change::Release { key, why } => match self.release(agent, &key).await {
                Ok(()) => {
                    tracing::info!(pod = %shown(&key), reason = why.as_str(), "pod released")
                }
                Err(e) => self.failed(&key, e),
            },
            Change::Forget { key } => {
                // Only once released: a pod still enrolled stays held, so the next pass
                // retries the release.
                if agent.hub.get(&agent.uid(&key)).is_none() {
                    tracing::debug!(pod = %shown(&key), "no longer held");
                    self.forget(&key);
                }
            }
            Change::Reannounce {
                key,
                service_account,
            } => {
                if agent.hub.reannounce(&agent.uid(&key), &service_account) {
                    tracing::info!(pod = %shown(&key), service_account = %service_account, "service account changed; pod announced to ztunnel again");
                }
            }
        }
    }
}

/// One reconcile pass (module docs): read the config dir, plan ([`reconcile::plan`]), find
/// namespaces without the lock, apply under it. `Err`: the config dir could not be read, and
/// nothing changed.
pub async fn reconcile(
    agent: &NodeCtx,
    pods_lock: &tokio::sync::Mutex<Pods>,
    pass: Pass,
) -> Result<(), String> {
    let enrollment = agent.enrollment.clone();
    let snapshot = blocking(move || enrollment.snapshot())
        .await?
        .map_err(|e| e.to_string())?;
    let (wants, owners, deleted, scanner) = {
        let mut pods = pods_lock.lock().await;
        let plan = pods.plan(agent, &snapshot, pass);
        if plan.changes.is_empty() && plan.leftovers.is_empty() {
            return Ok(());
        }
        tracing::debug!(changes = plan.changes.len(), ?pass, "reconciling");
        let wants = pods.wants(agent, &plan, &snapshot);
        if wants.is_empty() {
            pods.apply_plan(agent, &snapshot, plan, Resolved::new())
                .await;
            return Ok(());
        }
        let deleted = pods.tombstones();
        (wants, pods.owners(agent), deleted, pods.scanner.clone())
    };
    // Without the lock: a scan may wait for ARP answers; CNI calls go on meanwhile.
    let resolved =
        match blocking(move || resolve::resolve(&scanner, &deleted, &owners, wants)).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "reconcile: looking for pod namespaces");
                return Ok(());
            }
        };
    let mut pods = pods_lock.lock().await;
    let plan = pods.plan(agent, &snapshot, pass);
    let resolved = pods.recheck(agent, resolved);
    pods.apply_plan(agent, &snapshot, plan, resolved).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_del_tears_down_only_the_held_sandbox() {
        let held = (4, 4026532001);
        let other = (4, 4026532002);
        // Known container id: it decides.
        assert!(del_is_for_held(Some("c1"), &[held], "c1", None));
        assert!(!del_is_for_held(Some("c1"), &[held], "c0", Some(held)));
        // Found by a scan (no container id): only a DEL naming the held namespace counts.
        assert!(del_is_for_held(None, &[held], "c0", Some(held)));
        assert!(!del_is_for_held(None, &[held], "c0", Some(other)));
        assert!(
            !del_is_for_held(None, &[held], "c0", None),
            "no netns in the DEL, or its path is gone: not provably this sandbox"
        );
        assert!(!del_is_for_held(None, &[], "c0", Some(other)));
    }
}
