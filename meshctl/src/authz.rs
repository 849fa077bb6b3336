//! `meshctl authz check --from POD --to POD:PORT`: what the destination's ztunnel would decide
//! on a new connection, and which policy and rule decided it. When a waypoint stands on the
//! way, [`waypoint`] judges its L7 half.
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
//! identity. The destination is the pod's own address and the given (target) port. Through a
//! waypoint the connection is the waypoint's, on behalf of the client: policy accepts a rule
//! naming either ([`mesh::rbac::evaluate_via`]); a client in the mesh that dials a pod behind
//! a waypoint directly (the pod IP, when only its services have the waypoint) is refused.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use anyhow::{bail, Context as _};
use mesh::model::{PolicyAction, TunnelProtocol, Workload};
use mesh::rbac::{Connection, Decision, DecisionReason};
use mesh::store::{Store, StoreSnapshot};
use mesh::Identity;
use waypoint::Hop;

pub mod service;
pub mod waypoint;

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
    /// The waypoint the connection comes through, if any.
    pub via: Option<Hop>,
    /// Why the destination's ztunnel refuses the connection before any policy (a waypoint
    /// bypassed), if it does.
    pub refused: Option<String>,
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
            SourcePeer::Mesh(id) => match &self.via {
                Some(hop) => writeln!(
                    f,
                    "  source: {id} from {src_ip}, through waypoint {hop} ({})",
                    hop.identity
                )?,
                None => writeln!(f, "  source: {id} over HBONE from {src_ip}")?,
            },
            SourcePeer::NotEnrolled => writeln!(
                f,
                "  source: plaintext from {src_ip} (no identity: the pod is not in the mesh)"
            )?,
            SourcePeer::Unknown => writeln!(
                f,
                "  source: plaintext from {src_ip} (no identity: the destination's ztunnel does not know the pod)"
            )?,
        }
        match &self.refused {
            Some(why) => writeln!(f, "  refused before policy: {why}")?,
            None => writeln!(f, "  {}", reason_line(&self.decision.reason))?,
        }
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

/// The config store of a proxy, rebuilt from its `/config_dump` (ztunnel's or a waypoint's).
pub fn store_of(dump: &serde_json::Value) -> anyhow::Result<Store> {
    let Some(config) = dump.get("config") else {
        bail!("not a /config_dump of this mesh: it has no \"config\"");
    };
    let snapshot: StoreSnapshot = serde_json::from_value(config.clone())
        .context("the dump's \"config\" is not a config store snapshot of this mesh version")?;
    Ok(Store::from_snapshot(snapshot))
}

/// How `from` reaches other pods' ztunnels, by what `store` knows of it.
pub fn source_peer(store: &Store, from: &PodRef) -> SourcePeer {
    match find(store, from) {
        Some(w) if w.tunnel_protocol != TunnelProtocol::None => {
            SourcePeer::Mesh(w.identity.clone())
        }
        Some(_) => SourcePeer::NotEnrolled,
        None => SourcePeer::Unknown,
    }
}

/// `to`'s workload in `store`, when ztunnel policy can apply to it at all.
///
/// Fails when that ztunnel does not know `to` (not running, no IP yet, another node's ztunnel
/// that has not caught up) or `to` is not in the mesh.
pub fn destination(store: &Store, to: &PodRef) -> anyhow::Result<Arc<Workload>> {
    let Some(dst) = find(store, to) else {
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
    Ok(dst)
}

/// The waypoint that traffic from `from` to pod `to`'s own address goes through: `to`'s
/// workload waypoint, for a client in the mesh (a client outside it dials the pod directly).
pub fn pod_hop(store: &Store, from: &PodRef, to: &PodRef) -> anyhow::Result<Option<Hop>> {
    let dst = destination(store, to)?;
    match (&dst.waypoint, source_peer(store, from)) {
        (Some(gw), SourcePeer::Mesh(_)) => Hop::resolve(store, gw).map(Some),
        _ => Ok(None),
    }
}

/// Judges a connection from `from` to `to` on `port`, through waypoint `via` if given, under
/// `store` (that of `to`'s node's ztunnel, [`store_of`] its `/config_dump`).
///
/// Fails when [`destination`] does.
pub fn check(
    store: &Store,
    from: &PodRef,
    to: &PodRef,
    port: u16,
    via: Option<&Hop>,
) -> anyhow::Result<Report> {
    let dst = destination(store, to)?;
    let source = source_peer(store, from);
    let connection = Connection {
        src_identity: match &source {
            SourcePeer::Mesh(id) => Some(id.clone()),
            SourcePeer::NotEnrolled | SourcePeer::Unknown => None,
        },
        src_ip: from.ip,
        dst_ip: to.ip,
        dst_port: port,
    };
    // ztunnel takes HBONE to a pod behind a waypoint only from that waypoint (plaintext from
    // outside the mesh goes on to policy).
    let front = store.waypoints_in_front(&dst);
    let refused = match (&source, via) {
        (SourcePeer::Mesh(_), None) if !front.is_empty() => {
            let names: Vec<String> = front
                .iter()
                .map(|gw| {
                    Hop::resolve(store, gw).map_or_else(|_| format!("{gw:?}"), |h| h.to_string())
                })
                .collect();
            Some(format!(
                "{to} is behind waypoint {}; its ztunnel takes connections from the mesh only \
                 through it (address the service, or give the pod its waypoint)",
                names.join(", ")
            ))
        }
        _ => None,
    };
    // What ztunnel's inbound path runs (ztunnel/src/proxy/authz.rs: `check`).
    let policies = store.policies_for(&dst);
    let decision = mesh::rbac::evaluate_via(&policies, &connection, via.map(|h| &h.identity));
    Ok(Report {
        allowed: decision.allowed && refused.is_none(),
        from: from.clone(),
        to: to.clone(),
        source,
        via: via.cloned(),
        refused,
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
