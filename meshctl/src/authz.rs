//! `meshctl authz check --from POD --to POD:PORT`: what the destination's ztunnel would decide
//! on a new connection, and which policy and rule decided it.
//!
//! The policies in force are those the destination node's ztunnel holds: the caller fetches
//! its `/config_dump` and [`check`] rebuilds the ztunnel's config store from it
//! ([`Store::from_snapshot`]) and judges with the very code ztunnel's inbound path runs:
//! [`Store::policies_for`] the destination workload, then [`mesh::rbac::evaluate`] on the
//! [`Connection`] ztunnel would build.
//!
//! That connection is the one ztunnel sees in in-pod mode: from a source in the mesh it
//! arrives over HBONE, with the source's SPIFFE identity (its workload's, from the trust
//! domain, namespace and service account) and the source pod's own IP; from a source outside
//! the mesh (unknown to the ztunnel, or known with no tunnel) it arrives in plaintext, with no
//! identity. The destination is the pod's own address and the given (target) port.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use anyhow::{bail, Context as _};
use mesh::model::{PolicyAction, TunnelProtocol, Workload};
use mesh::rbac::{Connection, Decision, DecisionReason};
use mesh::store::{Store, StoreSnapshot};
use mesh::Identity;

/// A pod named on the command line, with the address the cluster gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRef {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The pod's IP address.
    pub ip: IpAddr,
}

impl fmt::Display for PodRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// How the connection reaches the destination's ztunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourcePeer {
    /// Over HBONE, with this verified identity.
    Mesh(Identity),
    /// In plaintext: the ztunnel knows the pod, but it is not in the mesh.
    NotEnrolled,
    /// In plaintext: the ztunnel has no workload for the pod.
    Unknown,
}

/// The verdict on one connection, as the destination's ztunnel would reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Whether the connection is let through (what [`Report::decision`] says).
    pub allowed: bool,
    /// The source pod.
    pub from: PodRef,
    /// The destination pod.
    pub to: PodRef,
    /// How the source reaches the destination's ztunnel.
    pub source: SourcePeer,
    /// The connection as evaluated.
    pub connection: Connection,
    /// The keys of the policies in scope for the destination, in evaluation order.
    pub policies: Vec<String>,
    /// The decision: reason (deciding policy and rule) and dry-run outcomes.
    pub decision: Decision,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{}: {} -> {}:{}",
            verdict(self.allowed),
            self.from,
            self.to,
            self.connection.dst_port
        )?;
        let src_ip = self.connection.src_ip;
        match &self.source {
            SourcePeer::Mesh(id) => writeln!(f, "  source: {id} over HBONE from {src_ip}")?,
            SourcePeer::NotEnrolled => writeln!(
                f,
                "  source: plaintext from {src_ip} (no identity: the pod is not in the mesh)"
            )?,
            SourcePeer::Unknown => writeln!(
                f,
                "  source: plaintext from {src_ip} (no identity: the destination's ztunnel does not know the pod)"
            )?,
        }
        writeln!(f, "  {}", reason_line(&self.decision.reason))?;
        if self.policies.is_empty() {
            write!(f, "  policies in scope: none")?;
        } else {
            write!(f, "  policies in scope: {}", self.policies.join(", "))?;
        }
        if let Some(dry) = &self.decision.dry_run {
            for outcome in &dry.policies {
                let action = action_name(outcome.action);
                match outcome.matched_rule {
                    Some(rule) => write!(
                        f,
                        "\n  dry-run (not enforced): {action} policy {}, rule {rule} matches",
                        outcome.policy
                    )?,
                    None => write!(
                        f,
                        "\n  dry-run (not enforced): {action} policy {} does not match",
                        outcome.policy
                    )?,
                }
            }
            write!(
                f,
                "\n  if dry-run policies were enforced: {}, {}",
                verdict(dry.allowed),
                reason_line(&dry.reason)
            )?;
        }
        Ok(())
    }
}

fn verdict(allowed: bool) -> &'static str {
    if allowed {
        "ALLOWED"
    } else {
        "DENIED"
    }
}

fn action_name(action: PolicyAction) -> &'static str {
    match action {
        PolicyAction::Allow => "ALLOW",
        PolicyAction::Deny => "DENY",
    }
}

fn reason_line(reason: &DecisionReason) -> String {
    match reason {
        DecisionReason::DeniedBy { policy, rule } => {
            format!("decided by: DENY policy {policy}, rule {rule}")
        }
        DecisionReason::AllowedBy { policy, rule } => {
            format!("decided by: ALLOW policy {policy}, rule {rule}")
        }
        DecisionReason::NoAllowMatched { allow_policies } => format!(
            "decided by: no ALLOW policy matches (checked {})",
            allow_policies.join(", ")
        ),
        DecisionReason::NoAllowPolicies => {
            "no policy applies (no DENY policy matches, no ALLOW policy in scope)".into()
        }
        DecisionReason::NoPolicies => "no policy applies (no policy in scope)".into(),
    }
}

/// Judges a connection from `from` to `to` on `port`, under the config in `dump` (the
/// `/config_dump` of `to`'s node's ztunnel).
///
/// Fails when the dump holds no config, or when that ztunnel does not know `to` (not running,
/// no IP yet, another node's ztunnel that has not caught up) or `to` is not in the mesh, since
/// then no ztunnel policy applies to it at all.
pub fn check(
    dump: &serde_json::Value,
    from: &PodRef,
    to: &PodRef,
    port: u16,
) -> anyhow::Result<Report> {
    let Some(config) = dump.get("config") else {
        bail!("not a ztunnel /config_dump: it has no \"config\"");
    };
    let snapshot: StoreSnapshot = serde_json::from_value(config.clone())
        .context("the dump's \"config\" is not a config store snapshot of this mesh version")?;
    let store = Store::from_snapshot(snapshot);
    let Some(dst) = find(&store, to) else {
        bail!(
            "{to} ({}) is not known to this ztunnel: no workload {} or at that address (is the \
             pod running with an IP, and is this its node's ztunnel?)",
            to.ip,
            pod_uid(to)
        );
    };
    if !dst.addresses.contains(&to.ip) {
        bail!(
            "this ztunnel has {to} at {:?}, not {} (its config may be behind)",
            dst.addresses,
            to.ip
        );
    }
    if dst.tunnel_protocol == TunnelProtocol::None {
        bail!(
            "{to} is not in the mesh: its traffic is not captured, so no ztunnel policy applies \
             to it"
        );
    }
    let source = match find(&store, from) {
        Some(w) if w.tunnel_protocol != TunnelProtocol::None => {
            SourcePeer::Mesh(w.identity.clone())
        }
        Some(_) => SourcePeer::NotEnrolled,
        None => SourcePeer::Unknown,
    };
    let connection = Connection {
        src_identity: match &source {
            SourcePeer::Mesh(id) => Some(id.clone()),
            SourcePeer::NotEnrolled | SourcePeer::Unknown => None,
        },
        src_ip: from.ip,
        dst_ip: to.ip,
        dst_port: port,
    };
    // What ztunnel's inbound path runs (ztunnel/src/proxy/authz.rs: `check`).
    let policies = store.policies_for(&dst);
    let decision = mesh::rbac::evaluate(&policies, &connection);
    Ok(Report {
        allowed: decision.allowed,
        from: from.clone(),
        to: to.clone(),
        source,
        connection,
        policies: policies.iter().map(|p| p.key()).collect(),
        decision,
    })
}

/// The uid istiod-lite gives a pod, with the default cluster id.
fn pod_uid(pod: &PodRef) -> String {
    format!("Kubernetes//v1/Pod/{}/{}", pod.namespace, pod.name)
}

/// The pod's workload: by uid (whatever the cluster id), else by address if the workload
/// there is the same pod.
fn find(store: &Store, pod: &PodRef) -> Option<Arc<Workload>> {
    if let Some(w) = store.workload(&pod_uid(pod)) {
        return Some(w);
    }
    let suffix = format!("//v1/Pod/{}/{}", pod.namespace, pod.name);
    let by_uid = store
        .snapshot()
        .workloads
        .into_iter()
        .find(|w| w.uid.ends_with(&suffix));
    if let Some(w) = by_uid {
        return Some(Arc::new(w));
    }
    store
        .workload_by_ip("", pod.ip)
        .filter(|w| w.name == pod.name && w.namespace() == pod.namespace)
}

#[cfg(test)]
mod tests;
