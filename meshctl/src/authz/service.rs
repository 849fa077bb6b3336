//! Where a connection to a Service goes, as the client's ztunnel routes it: through the
//! Service's waypoint when it has one (and the client is in the mesh), on to its endpoints.

use std::net::IpAddr;

use anyhow::{bail, Context as _};
use mesh::store::Store;

use super::waypoint::Hop;
use super::{source_peer, PodRef, SourcePeer};

/// One endpoint of the Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The pod.
    pub pod: PodRef,
    /// Its node.
    pub node: String,
    /// The pod's port for the Service port.
    pub port: u16,
}

/// The way to a Service port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRoute {
    /// The Service's key, `<namespace>/<hostname>`.
    pub key: String,
    /// Its host name.
    pub hostname: String,
    /// Its virtual IP, if it has one.
    pub vip: Option<IpAddr>,
    /// The port dialled.
    pub port: u16,
    /// The waypoint on the way.
    pub waypoint: Option<Hop>,
    /// Its endpoints.
    pub endpoints: Vec<Endpoint>,
}

/// The way from `from` to port `port` of Service `namespace/name`, from `store` (the client's
/// node's ztunnel's).
pub fn route(
    store: &Store,
    from: &PodRef,
    namespace: &str,
    name: &str,
    port: u16,
) -> anyhow::Result<ServiceRoute> {
    let service = store
        .snapshot()
        .services
        .into_iter()
        .find(|s| s.namespace == namespace && s.name == name)
        .with_context(|| format!("no Service {namespace}/{name} in the mesh's config"))?;
    let Some(mapping) = service.ports.iter().find(|p| p.service_port == port) else {
        let ports: Vec<String> = service
            .ports
            .iter()
            .map(|p| p.service_port.to_string())
            .collect();
        bail!(
            "Service {namespace}/{name} has no port {port} (it has {})",
            ports.join(", ")
        );
    };
    let key = service.key();
    let endpoints = store
        .endpoints_of(&key)
        .into_iter()
        .filter_map(|e| {
            let ip = *e.workload.addresses.first()?;
            let target = e
                .target_port(port)
                .or((mapping.target_port != 0).then_some(mapping.target_port))
                .unwrap_or(port);
            Some(Endpoint {
                pod: PodRef {
                    namespace: e.workload.namespace().to_string(),
                    name: e.workload.name.clone(),
                    ip,
                },
                node: e.workload.node.clone(),
                port: target,
            })
        })
        .collect();
    let waypoint = match (&service.waypoint, source_peer(store, from)) {
        (Some(gw), SourcePeer::Mesh(_)) => Some(Hop::resolve(store, gw)?),
        _ => None,
    };
    Ok(ServiceRoute {
        key,
        hostname: service.hostname.clone(),
        vip: service.vips.first().map(|v| v.ip),
        port,
        waypoint,
        endpoints,
    })
}
