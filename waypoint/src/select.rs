//! Destinations and endpoints: what a CONNECT addresses, and which endpoint serves one request
//! (or one passed-through TCP tunnel).

use std::net::SocketAddr;
use std::sync::Arc;

use mesh::model::{
    GatewayAddress, GatewayDestination, HealthStatus, Service, TunnelProtocol, Workload,
};
use mesh::store::Store;
use mesh::Identity;

use crate::balance::{Balancer, LbPolicy, LoadGuard};
use crate::error::ProxyError;

/// What a CONNECT's authority names.
#[derive(Debug, Clone)]
pub enum Destination {
    /// A service VIP and port.
    Service(Arc<Service>),
    /// A pod IP and port (workload-addressed traffic).
    Workload(Arc<Workload>),
}

/// Why a CONNECT target is refused (400, as ztunnel refuses a target it does not serve).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// Neither a service VIP nor a workload IP the waypoint knows.
    #[error("{0} is neither a known service VIP nor a known workload address")]
    Unknown(SocketAddr),
    /// The destination does not use this waypoint (its `waypoint` names another, or none):
    /// the waypoint is not an open relay.
    #[error("{0} is not bound to this waypoint")]
    NotBound(String),
    /// A service VIP on a port the service does not have.
    #[error("service {service} has no port {port}")]
    NoSuchPort {
        /// Service key.
        service: String,
        /// The port asked for.
        port: u16,
    },
}

impl Destination {
    /// Resolves a CONNECT target against the store.
    pub fn resolve(store: &Store, target: SocketAddr) -> Result<Destination, TargetError> {
        if let Some(service) = store.service_by_vip("", target.ip()) {
            if !service.ports.is_empty()
                && !service
                    .ports
                    .iter()
                    .any(|p| p.service_port == target.port())
            {
                return Err(TargetError::NoSuchPort {
                    service: service.key(),
                    port: target.port(),
                });
            }
            return Ok(Destination::Service(service));
        }
        if let Some(workload) = store.workload_by_ip("", target.ip()) {
            return Ok(Destination::Workload(workload));
        }
        Err(TargetError::Unknown(target))
    }

    /// Whether the destination names `me` as its waypoint.
    pub fn bound_to(&self, store: &Store, me: &WaypointBinding) -> bool {
        let gateway = match self {
            Destination::Service(s) => s.waypoint.as_ref(),
            Destination::Workload(w) => w.waypoint.as_ref(),
        };
        gateway.is_some_and(|g| me.is(store, g))
    }

    /// The service, if one was addressed.
    pub fn service(&self) -> Option<&Arc<Service>> {
        match self {
            Destination::Service(s) => Some(s),
            Destination::Workload(_) => None,
        }
    }

    /// `<namespace>/<hostname>` or the workload uid, for logs.
    pub fn name(&self) -> String {
        match self {
            Destination::Service(s) => s.key(),
            Destination::Workload(w) => w.uid.clone(),
        }
    }
}

/// Which waypoint this is, to check that a destination uses it: the Gateway's name and
/// namespace (its Service is `<name>.<namespace>.svc.<suffix>`) and the waypoint's own
/// addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaypointBinding {
    /// The Gateway's (and the waypoint's Service's) name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// The waypoint pod's own addresses.
    pub own_ips: Vec<std::net::IpAddr>,
}

impl WaypointBinding {
    /// Whether `gateway` addresses this waypoint: by the host name of its Service, by that
    /// Service's VIP, or by one of the pod's own addresses.
    pub fn is(&self, store: &Store, gateway: &GatewayAddress) -> bool {
        match &gateway.destination {
            GatewayDestination::Hostname(h) => {
                h.namespace == self.namespace && self.is_my_hostname(&h.hostname)
            }
            GatewayDestination::Address(a) => {
                self.own_ips.contains(&a.ip)
                    || store.service_by_vip(&a.network, a.ip).is_some_and(|s| {
                        s.namespace == self.namespace && self.is_my_hostname(&s.hostname)
                    })
            }
        }
    }

    fn is_my_hostname(&self, hostname: &str) -> bool {
        let prefix = format!("{}.{}.svc", self.name, self.namespace);
        hostname == prefix
            || hostname
                .strip_prefix(&prefix)
                .is_some_and(|rest| rest.starts_with('.'))
    }
}

/// The endpoint chosen for one request or tunnel.
#[derive(Debug)]
pub struct Upstream {
    /// The endpoint's workload.
    pub workload: Arc<Workload>,
    /// Endpoint IP and target port: the CONNECT authority (or the TCP address).
    pub addr: SocketAddr,
    /// Its HBONE address, or `None` when it is not in the mesh (plain TCP).
    pub hbone: Option<SocketAddr>,
    /// Identities the endpoint may prove.
    pub identities: Vec<Identity>,
    /// The backend service, when the endpoint was picked from one.
    pub service: Option<Arc<Service>>,
    /// Counts this request against the endpoint until dropped.
    pub load: LoadGuard,
    /// How many endpoints the choice was among (for outlier detection's ejection cap).
    pub candidates: usize,
}

/// Picks an endpoint of `service` (a key) for `port`: healthy endpoints with an address of
/// the same family as `family`, chosen by `policy`; the target port as ztunnel maps it (the
/// endpoint's own mapping, else the service's, else the same port). Endpoints for which
/// `skip(uid)` holds (ejected outliers) are left out, unless that leaves none.
#[allow(clippy::too_many_arguments)]
pub fn pick_service_endpoint(
    store: &Store,
    balancer: &Balancer,
    policy: LbPolicy,
    service_key: &str,
    port: u16,
    family: SocketAddr,
    hbone_port: u16,
    skip: &dyn Fn(&str) -> bool,
) -> Result<Upstream, ProxyError> {
    let service = store
        .service(service_key)
        .ok_or_else(|| ProxyError::NoCluster(service_key.to_string()))?;
    let endpoints: Vec<_> = store
        .endpoints_of(service_key)
        .into_iter()
        .filter(|e| e.workload.status == HealthStatus::Healthy)
        .filter(|e| address_like(&e.workload, family).is_some())
        .collect();
    let candidates = endpoints.len();
    // Envoy's panic mode: with every endpoint ejected, ejection is ignored.
    let endpoints: Vec<_> = if endpoints.iter().all(|e| skip(&e.workload.uid)) {
        endpoints
    } else {
        endpoints
            .into_iter()
            .filter(|e| !skip(&e.workload.uid))
            .collect()
    };
    let keys: Vec<&str> = endpoints.iter().map(|e| e.workload.uid.as_str()).collect();
    let (index, load) = balancer
        .pick(policy, service_key, &keys)
        .ok_or_else(|| ProxyError::NoHealthyUpstream(service_key.to_string()))?;
    let pick = &endpoints[index];
    let target_port = pick
        .target_port(port)
        .or_else(|| {
            service
                .ports
                .iter()
                .find(|p| p.service_port == port && p.target_port != 0)
                .map(|p| p.target_port)
        })
        .unwrap_or(port);
    let ip = address_like(&pick.workload, family).unwrap_or(family.ip());
    let sans = service.subject_alt_names.clone();
    let mut up = to_upstream(
        pick.workload.clone(),
        SocketAddr::new(ip, target_port),
        hbone_port,
        load,
    );
    if !sans.is_empty() {
        up.identities = sans;
    }
    up.service = Some(service);
    up.candidates = candidates;
    Ok(up)
}

/// The upstream for workload-addressed traffic: the workload itself, on the addressed port.
pub fn pick_workload(
    balancer: &Balancer,
    workload: &Arc<Workload>,
    target: SocketAddr,
    hbone_port: u16,
) -> Result<Upstream, ProxyError> {
    if workload.status != HealthStatus::Healthy {
        return Err(ProxyError::NoHealthyUpstream(workload.uid.clone()));
    }
    let (_, load) = balancer
        .pick(
            LbPolicy::RoundRobin,
            &workload.uid,
            &[workload.uid.as_str()],
        )
        .ok_or_else(|| ProxyError::NoHealthyUpstream(workload.uid.clone()))?;
    Ok(to_upstream(workload.clone(), target, hbone_port, load))
}

fn to_upstream(
    workload: Arc<Workload>,
    addr: SocketAddr,
    hbone_port: u16,
    load: LoadGuard,
) -> Upstream {
    let hbone = (workload.tunnel_protocol == TunnelProtocol::Hbone)
        .then(|| SocketAddr::new(addr.ip(), hbone_port));
    Upstream {
        identities: vec![workload.identity.clone()],
        workload,
        addr,
        hbone,
        service: None,
        load,
        candidates: 1,
    }
}

fn address_like(w: &Workload, family: SocketAddr) -> Option<std::net::IpAddr> {
    w.addresses
        .iter()
        .copied()
        .find(|a| a.is_ipv4() == family.is_ipv4())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh::model::{NamespacedHostname, NetworkAddress};

    fn by_name(ns: &str, host: &str) -> GatewayAddress {
        GatewayAddress {
            destination: GatewayDestination::Hostname(NamespacedHostname {
                namespace: ns.into(),
                hostname: host.into(),
            }),
            hbone_mtls_port: 15008,
        }
    }

    #[test]
    fn a_waypoint_recognises_its_own_service_name_and_addresses_only() {
        let me = WaypointBinding {
            name: "waypoint".into(),
            namespace: "shop".into(),
            own_ips: vec!["10.1.0.5".parse().expect("ip")],
        };
        let store = Store::new();
        assert!(me.is(&store, &by_name("shop", "waypoint.shop.svc.cluster.local")));
        assert!(me.is(&store, &by_name("shop", "waypoint.shop.svc")));
        assert!(!me.is(&store, &by_name("shop", "waypoint2.shop.svc.cluster.local")));
        assert!(!me.is(&store, &by_name("other", "waypoint.shop.svc.cluster.local")));
        assert!(!me.is(&store, &by_name("shop", "waypoint.shop.svcx")));
        let at = |ip: &str| GatewayAddress {
            destination: GatewayDestination::Address(NetworkAddress {
                network: String::new(),
                ip: ip.parse().expect("ip"),
            }),
            hbone_mtls_port: 15008,
        };
        assert!(me.is(&store, &at("10.1.0.5")));
        assert!(!me.is(&store, &at("10.1.0.6")));
    }
}
