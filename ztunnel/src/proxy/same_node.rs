//! Connections between two pods this ztunnel serves, carried in-process.
//!
//! A tunnel from one pod of this node to another would run from one of our sockets to another
//! of ours: TLS, HTTP/2 and a third TCP connection, to prove to ourselves what we know already.
//! Who the source is was settled when the node agent handed us its network namespace (the same
//! fact its certificate rests on), and the bytes would never leave this process unencrypted
//! anywhere a tunnel protects them. So the destination's side is done here instead: its policy
//! is checked with the source pod's identity, its application is connected from inside its
//! namespace with the client's own address and port, both reporters record the connection as
//! through a tunnel, and one copy joins the two sockets. The connection is registered under
//! both pods ([`LiveConnections::register_beside`]): a policy change at the destination or the
//! removal of either pod closes it as it would close a tunnelled one.
//!
//! Anything that would refuse the connection (the destination no longer served, a waypoint in
//! front of it, its connection cap, a deny, its application refusing) sends it through the
//! tunnel after all, so refusals are answered, counted and logged exactly as through HBONE.
//! `SAME_NODE_DIRECT=false` always tunnels.
//!
//! [`LiveConnections::register_beside`]: super::live::LiveConnections::register_beside

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use mesh::copy::Transferred;
use mesh::metrics::Reporter;
use mesh::model::Workload;
use mesh::rbac::Connection;
use tokio::net::TcpStream;

use super::authz::{self, Inbound};
use super::hop::Hop;
use super::limits::Slot;
use super::live::{proxied, CopyEnd, Kind, LiveGuard};
use super::source::Source;
use super::waypoint::Front;
use super::{PodContext, ProxyInputs};
use crate::telemetry::{ConnectionRecord, Peer};

/// The pods this ztunnel serves now, by workload uid.
#[derive(Debug, Default)]
pub struct ServedPods {
    /// Shared, so a lookup on a connection's path is one reference count.
    pods: RwLock<HashMap<Arc<str>, Arc<PodContext>>>,
}

impl ServedPods {
    /// `pod` is served from now on (a pod handed over again replaces its earlier context).
    pub fn serve(&self, pod: &PodContext) {
        self.write().insert(pod.uid.clone(), Arc::new(pod.clone()));
    }

    /// `pod` is no longer served; a newer context of the same uid stays.
    pub fn leave(&self, pod: &PodContext) {
        let mut pods = self.write();
        if pods
            .get(&pod.uid)
            .is_some_and(|p| p.netns.inode() == pod.netns.inode())
        {
            pods.remove(&pod.uid);
        }
    }

    /// The pod of workload `uid`, when this ztunnel serves it.
    pub fn get(&self, uid: &str) -> Option<Arc<PodContext>> {
        self.pods
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(uid)
            .cloned()
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<Arc<str>, Arc<PodContext>>> {
        self.pods.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// The destination's half of a connection carried in-process: its record, its registration
/// under the destination pod and its place under that pod's cap, all kept until the copy ends.
pub struct Destination {
    record: ConnectionRecord,
    _guard: LiveGuard,
    _slot: Slot,
}

impl proxied::Finish for Destination {
    fn finish(self, result: &Result<Transferred, CopyEnd>) {
        proxied::Finish::finish(self.record, result);
    }
}

/// Connects `src`'s client at `peer` straight to `dst` (a workload address and port) when
/// this ztunnel serves that workload's pod and nothing would refuse the connection; `None`
/// sends it through the tunnel. `src_guard` is the connection's registration under `src`,
/// `src_workload` the control plane's view of `src`.
pub async fn connect(
    inputs: &ProxyInputs,
    src: &PodContext,
    src_workload: Option<Arc<Workload>>,
    src_guard: &LiveGuard,
    peer: SocketAddr,
    dst_workload: &Arc<Workload>,
    dst: SocketAddr,
) -> Option<(TcpStream, Destination)> {
    if !inputs.config.same_node_direct || !dst_workload.addresses.contains(&dst.ip()) {
        return None;
    }
    let pod = inputs.served.get(&dst_workload.uid)?;
    let store = &inputs.store;
    // Only the waypoint may reach a pod behind one: the tunnel refuses everyone else.
    if !Front::of(store, dst_workload).is_empty() {
        return None;
    }
    let slot = pod.cap.admit().ok()?;
    // What a tunnel's far end would see: an address of the source pod's own (a tunnel leaves
    // from one), and the client's port only when the client used that address too.
    let client_ip = src_workload
        .as_ref()
        .filter(|w| !w.addresses.contains(&peer.ip()))
        .and_then(|w| {
            w.addresses
                .iter()
                .find(|a| a.is_ipv4() == peer.is_ipv4())
                .copied()
        })
        .unwrap_or(peer.ip());
    let client_port = (client_ip == peer.ip()).then_some(peer.port());
    let inbound = Inbound::direct(Connection {
        src_identity: Some(src.identity.clone()),
        src_ip: client_ip,
        dst_ip: dst.ip(),
        dst_port: dst.port(),
    });
    // Registered before the verdict, as through the tunnel: a policy push from here on
    // re-checks it.
    let guard =
        inputs
            .live
            .register_beside(&pod.key(), Kind::Inbound(inbound.clone()), src_guard)?;
    // Logged (dry run) and counted only when this path carries the connection: a refusal
    // goes through the tunnel, whose own check logs and counts it once.
    let decision = authz::decide(&store.policies_for(dst_workload), &inbound);
    if !decision.allowed {
        return None;
    }
    let source = Source::for_client(client_ip, client_port, dst);
    let app = match inputs
        .limits
        .connect(&pod, &inputs.home, dst, Hop::App, source)
        .await
    {
        Ok(app) => app,
        Err(e) => {
            tracing::debug!(error = %e, %dst, "direct connect failed; trying the tunnel");
            return None;
        }
    };
    authz::log_dry_run(&inbound, &decision);
    inputs
        .telemetry
        .authorization(dst_workload.namespace(), &decision);
    let mut record = ConnectionRecord::open(
        &inputs.telemetry,
        Reporter::destination,
        Peer {
            workload: src_workload,
            identity: Some(src.identity.clone()),
            addr: Some(peer),
        },
        Peer {
            workload: Some(dst_workload.clone()),
            identity: Some(pod.identity.clone()),
            addr: Some(dst),
        },
        None,
        true,
    )
    .for_pod(&pod.metrics);
    record.set_policy(decision.reason.to_string());
    tracing::debug!(%dst, pod = %pod.uid, "carried in-process: both pods are served here");
    Some((
        app,
        Destination {
            record,
            _guard: guard,
            _slot: slot,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netns::Netns;
    use crate::proxy::hop::SocketSettings;
    use crate::telemetry::Telemetry;

    fn pod(uid: &str) -> PodContext {
        let uid: Arc<str> = uid.into();
        PodContext {
            metrics: Telemetry::default().pod(&uid, None),
            cap: super::super::limits::PodCap::default(),
            identity: "spiffe://cluster.local/ns/demo/sa/b"
                .parse()
                .expect("identity"),
            netns: Netns::current().expect("own netns"),
            uid,
            sockets: SocketSettings::default(),
        }
    }

    #[test]
    fn a_pod_is_found_by_uid_while_served_and_gone_once_it_leaves() {
        let served = ServedPods::default();
        let (b, c) = (pod("uid-b"), pod("uid-c"));
        served.serve(&b);
        served.serve(&c);
        assert_eq!(
            served.get("uid-b").map(|p| p.uid.clone()),
            Some(b.uid.clone())
        );
        served.leave(&b);
        assert!(served.get("uid-b").is_none());
        assert!(served.get("uid-c").is_some(), "the other pod stays");
        served.leave(&b);
        assert!(served.get("nobody").is_none());
    }
}
