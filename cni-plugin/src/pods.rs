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
//! A CNI DEL leaves a tombstone on the namespace it tore down: the sandbox's pause process
//! may outlive the DEL while the Pod object still lists the pod, and a scan must not capture
//! that dying namespace again. A new sandbox has a new namespace; an ADD clears the tombstone
//! of its own namespace (a runtime retrying on the same one).

use std::collections::BTreeMap;
use std::fs::File;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proto::zds::WorkloadInfo;

use crate::agent::{blocking, Agent};
use crate::agent_proto::AgentRequest;
use crate::enrollment::{PodKey, Snapshot};
use crate::reconcile::{self, Change, Held};
use crate::scan::{self, NsId, Scanner};
use crate::ztunnel::{Ack, Enrolled};
use crate::{netns, rules};

/// A network namespace by path, with the identity it had when recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
struct NetnsRef {
    path: PathBuf,
    id: NsId,
}

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
    /// The last config dir error logged.
    source_error: Option<String>,
    scanner: Arc<Mutex<Scanner>>,
    /// Namespaces torn down by a CNI DEL, with when (see the module docs).
    deleted: BTreeMap<NsId, Instant>,
}

/// How long a tombstone lasts: longer than any sandbox teardown.
const TOMBSTONE_TTL: Duration = Duration::from_secs(600);

fn shown(key: &PodKey) -> String {
    format!("{}/{}", key.0, key.1)
}

/// The namespace for each wanted pod: its known path if still the same namespace, else a scan
/// by its addresses. Blocking.
fn resolve(
    scanner: &Mutex<Scanner>,
    deleted: &[NsId],
    wants: Vec<(PodKey, Option<NetnsRef>, Vec<IpAddr>)>,
) -> BTreeMap<PodKey, Result<(File, NetnsRef), String>> {
    let mut out = BTreeMap::new();
    let mut to_scan = Vec::new();
    for (key, known, ips) in wants {
        if let Some(known) = known {
            if let Ok(file) = scan::open_checked(&known.path, known.id) {
                out.insert(key, Ok((file, known)));
                continue;
            }
        }
        if ips.is_empty() {
            let why = "its network namespace is gone and it has no IP to look for".to_string();
            out.insert(key, Err(why));
        } else {
            to_scan.push((key, ips));
        }
    }
    let found = scanner
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .find(&to_scan);
    for (key, result) in found {
        let result = match result {
            Ok(f) if deleted.contains(&f.id) => Err(format!(
                "its sandbox's namespace {} had a CNI DEL; waiting for a new sandbox",
                f.path.display()
            )),
            Ok(f) => Ok((
                f.file,
                NetnsRef {
                    path: f.path,
                    id: f.id,
                },
            )),
            Err(e) => Err(e.to_string()),
        };
        out.insert(key, result);
    }
    out
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
        agent: &Agent,
        key: &PodKey,
        service_account: String,
        netns: File,
    ) -> Result<Option<Ack>, String> {
        let opts = agent.config.capture.clone();
        let netns = blocking(move || rules::install(&netns, &opts).map(|()| netns))
            .await?
            .map_err(|e| format!("installing capture rules: {e}"))?;
        Ok(agent.hub.add(Enrolled {
            uid: agent.uid(key),
            info: WorkloadInfo {
                name: key.1.clone(),
                namespace: key.0.clone(),
                service_account,
            },
            netns: Arc::new(netns),
        }))
    }

    /// Removes the rules, then tells ztunnel (in that order: traffic must stop being
    /// redirected before ztunnel stops serving the namespace). A failure keeps the pod
    /// enrolled (the next pass retries). Not enrolled: nothing to do.
    async fn release(&self, agent: &Agent, key: &PodKey) -> Result<(), String> {
        let uid = agent.uid(key);
        let Some(pod) = agent.hub.get(&uid) else {
            return Ok(());
        };
        let _was_installed = blocking(move || rules::remove(&pod.netns))
            .await?
            .map_err(|e| format!("removing capture rules: {e}"))?;
        agent.hub.del(&uid);
        Ok(())
    }

    /// CNI ADD: decide; enrolled → open the namespace, install the rules, record, announce.
    /// Not enrolled → record the pod by its namespace path, for a later label change.
    pub async fn add(&mut self, agent: &Agent, req: &AgentRequest) -> Result<Added, String> {
        let key: PodKey = (req.pod_namespace.clone(), req.pod_name.clone());
        let enrollment = agent.enrollment.clone();
        let snapshot = blocking(move || enrollment.snapshot())
            .await?
            .map_err(|e| format!("deciding enrolment: {e}"))?;
        let decision = snapshot.decide(&key.0, &key.1);
        let listed = snapshot.pod(&key).is_some();
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
            .capture(agent, &key, decision.service_account, file)
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
    /// enrolled (or the DEL is for an older sandbox of the pod than the one held).
    pub async fn del(&mut self, agent: &Agent, req: &AgentRequest) -> Result<bool, String> {
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
        let stale = self.records.get(&key).is_some_and(|r| {
            r.container_id
                .as_ref()
                .is_some_and(|c| *c != req.container_id)
        });
        if stale {
            tracing::info!(held = ?self.records.get(&key).and_then(|r| r.container_id.clone()), "DEL of an older sandbox; the pod's current one stays");
            return Ok(false);
        }
        let held_ns = self
            .records
            .get(&key)
            .and_then(|r| r.netns.as_ref())
            .map(|n| n.id);
        self.forget(&key);
        let enrolled = agent.hub.del(&agent.uid(&key));
        let enrolled_ns = enrolled
            .as_ref()
            .and_then(|p| p.netns.metadata().ok())
            .map(|m| scan::ns_id(&m));
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

    /// One reconcile pass: read the config dir, plan ([`reconcile::plan`]), apply. A config
    /// dir that cannot be read changes nothing.
    pub async fn reconcile(&mut self, agent: &Agent, pass: Pass) {
        let enrollment = agent.enrollment.clone();
        let snapshot = match blocking(move || enrollment.snapshot()).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return self.source_failed(e.to_string()),
            Err(e) => return self.source_failed(e),
        };
        if self.source_error.take().is_some() {
            tracing::info!("config dir readable again; reconciling");
        }
        for (key, record) in &mut self.records {
            record.listed |= snapshot.pod(key).is_some();
        }
        let held: BTreeMap<PodKey, Held> = self
            .records
            .iter()
            .map(|(key, r)| {
                let enrolled = agent.hub.get(&agent.uid(key)).is_some();
                let listed = r.listed;
                (key.clone(), Held { enrolled, listed })
            })
            .collect();
        let node = agent.config.node_name.as_str();
        let changes = reconcile::plan(node, &snapshot, &held);
        let leftovers = match pass {
            Pass::Start => reconcile::unheld_outside(node, &snapshot, &held),
            Pass::Periodic => Vec::new(),
        };
        if changes.is_empty() && leftovers.is_empty() {
            return;
        }
        tracing::debug!(changes = changes.len(), ?pass, "reconciling");
        let wants: Vec<(PodKey, Option<NetnsRef>, Vec<IpAddr>)> = changes
            .iter()
            .filter_map(|c| match c {
                Change::Enrol { key, ips, .. } => {
                    let record = self.records.get(key);
                    let mut all = ips.clone();
                    for ip in record.map(|r| r.ips.as_slice()).unwrap_or_default() {
                        if !all.contains(ip) {
                            all.push(*ip);
                        }
                    }
                    Some((key.clone(), record.and_then(|r| r.netns.clone()), all))
                }
                _ => None,
            })
            .chain(leftovers.into_iter().map(|(key, ips)| (key, None, ips)))
            .collect();
        let scanner = self.scanner.clone();
        self.deleted.retain(|_, at| at.elapsed() < TOMBSTONE_TTL);
        let deleted: Vec<NsId> = self.deleted.keys().copied().collect();
        let mut resolved = match blocking(move || resolve(&scanner, &deleted, wants)).await {
            Ok(r) => r,
            Err(e) => return tracing::error!(error = %e, "reconcile: looking for pod namespaces"),
        };
        for change in changes {
            self.apply(agent, &snapshot, change, &mut resolved).await;
        }
        // What is left in `resolved` are the pods to clear of leftover rules.
        for (key, found) in resolved {
            let Ok((file, _)) = found else { continue };
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

    fn source_failed(&mut self, error: String) {
        if self.source_error.as_ref() != Some(&error) {
            tracing::warn!(error = %error, "cannot read the config dir; reconcile changes nothing until it can");
            self.source_error = Some(error);
        }
    }

    async fn apply(
        &mut self,
        agent: &Agent,
        snapshot: &Snapshot,
        change: Change,
        resolved: &mut BTreeMap<PodKey, Result<(File, NetnsRef), String>>,
    ) {
        match change {
            Change::Enrol {
                key,
                service_account,
                ips,
            } => {
                let found = resolved
                    .remove(&key)
                    .unwrap_or_else(|| Err("internal: namespace not looked up".into()));
                let (file, netns) = match found {
                    Ok(f) => f,
                    Err(e) => return self.failed(&key, format!("cannot enrol: {e}")),
                };
                if let Err(e) = self.capture(agent, &key, service_account, file).await {
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
        }
    }
}
