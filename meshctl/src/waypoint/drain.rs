//! Before a removed waypoint's pod goes: waiting until no node's ztunnel still sends traffic
//! through it, so removing a waypoint does not drop the requests of the second or two that
//! istiod-lite and the ztunnels take to learn of it (Kubernetes drains endpoints the same
//! way, before it stops a pod).

use std::time::{Duration, Instant};

use mesh::model::{GatewayAddress, GatewayDestination};
use mesh::store::StoreSnapshot;

use crate::admin;
use crate::cluster::state::ClusterState;

/// The longest wait; after it the pod goes anyway (a ztunnel that is behind, or down).
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether `gateway` is waypoint `namespace/name`'s Service (`<name>.<namespace>.svc.*`).
fn is_waypoint(gateway: Option<&GatewayAddress>, namespace: &str, name: &str) -> bool {
    let Some(GatewayDestination::Hostname(h)) = gateway.map(|g| &g.destination) else {
        return false;
    };
    h.namespace == namespace
        && h.hostname
            .strip_prefix(&format!("{name}.{namespace}.svc."))
            .is_some()
}

/// Whether a ztunnel with this config sends any service's or workload's traffic through
/// waypoint `namespace/name`.
pub fn binds(snapshot: &StoreSnapshot, namespace: &str, name: &str) -> bool {
    snapshot
        .services
        .iter()
        .any(|s| is_waypoint(s.waypoint.as_ref(), namespace, name))
        || snapshot
            .workloads
            .iter()
            .any(|w| is_waypoint(w.waypoint.as_ref(), namespace, name))
}

/// Waits until no running ztunnel of `cluster` binds anything to waypoint `namespace/name`,
/// up to [`DRAIN_TIMEOUT`]. Returns whether that happened (false: timed out).
pub fn wait_unbound(cluster: &ClusterState, namespace: &str, name: &str) -> bool {
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    loop {
        let bound = cluster.nodes.iter().any(|node| {
            // A ztunnel that does not answer sends nothing anywhere.
            let Ok(dump) = admin::config_dump(node) else {
                return false;
            };
            dump.get("config")
                .cloned()
                .and_then(|c| serde_json::from_value::<StoreSnapshot>(c).ok())
                .is_some_and(|s| binds(&s, namespace, name))
        });
        if !bound {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh::model::NamespacedHostname;

    fn gateway(namespace: &str, hostname: &str) -> Option<GatewayAddress> {
        Some(GatewayAddress {
            destination: GatewayDestination::Hostname(NamespacedHostname {
                namespace: namespace.into(),
                hostname: hostname.into(),
            }),
            hbone_mtls_port: 15008,
        })
    }

    #[test]
    fn a_waypoint_is_recognised_by_its_service_host_name_in_its_namespace() {
        let wp = gateway("shop", "waypoint.shop.svc.cluster.local");
        assert!(is_waypoint(wp.as_ref(), "shop", "waypoint"));
        assert!(!is_waypoint(wp.as_ref(), "shop", "way"));
        assert!(!is_waypoint(wp.as_ref(), "other", "waypoint"));
        let other = gateway("shop", "waypoint2.shop.svc.cluster.local");
        assert!(!is_waypoint(other.as_ref(), "shop", "waypoint"));
        assert!(!is_waypoint(None, "shop", "waypoint"));
        assert!(!binds(&StoreSnapshot::default(), "shop", "waypoint"));
    }
}
