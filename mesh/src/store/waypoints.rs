//! Waypoints as the store knows them: which workloads serve a [`GatewayAddress`], and which
//! waypoints stand in front of a destination workload. ztunnel sends traffic to these
//! instances and accepts traffic from them; `meshctl authz check` follows the same path.

use std::sync::Arc;

use crate::model::{GatewayAddress, GatewayDestination, Service, Workload};

impl super::Store {
    /// The Service behind `gw`: the one with its host name in its namespace, or the one with
    /// its address as a VIP; `None` when `gw` is a pod's address or unknown.
    pub fn waypoint_service(&self, gw: &GatewayAddress) -> Option<Arc<Service>> {
        match &gw.destination {
            GatewayDestination::Address(addr) => self.service_by_vip(&addr.network, addr.ip),
            GatewayDestination::Hostname(h) => self
                .services_by_hostname(&h.hostname)
                .into_iter()
                .find(|s| s.namespace == h.namespace),
        }
    }

    /// The workloads that serve `gw`: the pod at its address, or the endpoints of its Service.
    pub fn waypoint_instances(&self, gw: &GatewayAddress) -> Vec<Arc<Workload>> {
        if let GatewayDestination::Address(addr) = &gw.destination {
            if let Some(w) = self.workload_by_ip(&addr.network, addr.ip) {
                return vec![w];
            }
        }
        self.waypoint_service(gw)
            .map(|s| {
                self.endpoints_of(&s.key())
                    .into_iter()
                    .map(|e| e.workload)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The waypoints in front of `dst`: its own (for workload-addressed traffic) and those of
    /// the services it backs (for service-addressed traffic).
    pub fn waypoints_in_front(&self, dst: &Workload) -> Vec<GatewayAddress> {
        let mut gateways: Vec<GatewayAddress> = dst.waypoint.iter().cloned().collect();
        for key in dst.services.keys() {
            if let Some(gw) = self.service(key).and_then(|s| s.waypoint.clone()) {
                if !gateways.contains(&gw) {
                    gateways.push(gw);
                }
            }
        }
        gateways
    }
}
