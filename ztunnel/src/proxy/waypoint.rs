//! Waypoints as ztunnel sees them: which instances serve a [`GatewayAddress`], and which
//! waypoints stand in front of a destination pod.
//!
//! The source side sends traffic for a waypoint-bound service or workload to one of the
//! waypoint's instances ([`super::outbound`]). The destination side uses the same facts the
//! other way round ([`Front::judge`]): a pod behind a waypoint takes HBONE only from that
//! waypoint (it cannot be bypassed by dialling the pod IP), and trusts the waypoint, and only
//! the waypoint, to say who the original client was.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::HeaderMap;
use mesh::hbone::connect::{forwarded_for, origin_identity};
use mesh::model::{GatewayAddress, HealthStatus, Workload};
use mesh::store::Store;
use mesh::Identity;

/// The healthy instances of `gw`.
pub fn healthy_instances(store: &Store, gw: &GatewayAddress) -> Vec<Arc<Workload>> {
    store
        .waypoint_instances(gw)
        .into_iter()
        .filter(|w| w.status == HealthStatus::Healthy)
        .collect()
}

/// The waypoints in front of one destination pod: its own (workload-addressed traffic) and
/// those of the services it backs (service-addressed traffic).
#[derive(Debug, Default)]
pub struct Front {
    /// Identities of every instance of those waypoints.
    identities: Vec<Identity>,
}

/// Who a connection to a pod behind a waypoint really comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The pod has no waypoint: the TLS peer is the client.
    Direct,
    /// Through the pod's waypoint `via`, for `client` at `addr` (as the waypoint says).
    ViaWaypoint {
        /// The waypoint instance's identity (the TLS peer).
        via: Identity,
        /// The original client's identity, when the waypoint named one.
        client: Option<Identity>,
        /// The original client's address, when the waypoint named one.
        addr: Option<SocketAddr>,
    },
    /// The pod has a waypoint and the peer is not it: the waypoint was bypassed.
    Bypass,
}

impl Front {
    /// The waypoints in front of `dst`, from the store.
    pub fn of(store: &Store, dst: &Workload) -> Front {
        let mut identities: Vec<Identity> = store
            .waypoints_in_front(dst)
            .iter()
            .flat_map(|gw| store.waypoint_instances(gw))
            .filter(|w| w.uid != dst.uid)
            .map(|w| w.identity.clone())
            .collect();
        identities.sort();
        identities.dedup();
        Front { identities }
    }

    /// Whether any waypoint stands in front.
    pub fn is_empty(&self) -> bool {
        self.identities.is_empty()
    }

    /// Decides where a CONNECT from TLS peer `peer` with `headers` comes from.
    pub fn judge(&self, peer: &Identity, headers: &HeaderMap) -> Origin {
        if self.identities.is_empty() {
            return Origin::Direct;
        }
        if !self.identities.contains(peer) {
            return Origin::Bypass;
        }
        Origin::ViaWaypoint {
            via: peer.clone(),
            client: origin_identity(headers),
            addr: forwarded_for(headers),
        }
    }
}

/// The source IP policy sees for `origin`, given the tunnel's own source `tunnel_ip`.
pub fn source_ip(origin: &Origin, tunnel_ip: IpAddr) -> IpAddr {
    match origin {
        Origin::ViaWaypoint {
            addr: Some(addr), ..
        } => addr.ip(),
        _ => tunnel_ip,
    }
}

#[cfg(test)]
mod tests;
