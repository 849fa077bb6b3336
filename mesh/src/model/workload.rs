//! Workloads: one endpoint of the mesh (a pod, a VM, ...), named by its uid.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::{
    check_reference, ip_from_bytes, ip_to_bytes, port, proto_enum, required, GatewayAddress,
    ModelError, PortMapping,
};
use crate::identity::{Identity, IdentityError, DEFAULT_TRUST_DOMAIN};

/// The service account used when a workload names none.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";

/// A workload as the data plane sees it.
///
/// Its namespace is its identity's namespace ([`Workload::namespace`]): the wire format has one
/// namespace field for both, so the model cannot let them differ.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Workload {
    /// Globally unique id, for pods `<cluster>//v1/Pod/<namespace>/<name>`; the xDS name.
    pub uid: String,
    /// Pod (or VM) name.
    pub name: String,
    /// IP addresses, in the order the control plane sent them.
    pub addresses: Vec<IpAddr>,
    /// Host name to resolve when the workload has no addresses.
    pub hostname: String,
    /// Network the workload is on; empty for the default network.
    pub network: String,
    /// How to reach the workload.
    pub tunnel_protocol: TunnelProtocol,
    /// The workload's identity; trust domain `cluster.local` and service account `default`
    /// when the control plane leaves them empty.
    #[serde(with = "super::identity_serde")]
    pub identity: Identity,
    /// Waypoint that traffic to this workload must go through.
    pub waypoint: Option<GatewayAddress>,
    /// East-west gateway to use from other networks.
    pub network_gateway: Option<GatewayAddress>,
    /// Node the workload runs on.
    pub node: String,
    /// Canonical service name (telemetry).
    pub canonical_name: String,
    /// Canonical revision (telemetry).
    pub canonical_revision: String,
    /// Kind of controller behind the workload.
    pub workload_type: WorkloadType,
    /// Name of the controller (e.g. the Deployment).
    pub workload_name: String,
    /// The workload terminates HBONE itself (e.g. a waypoint).
    pub native_tunnel: bool,
    /// The workload wants tunnel metadata delivered to it.
    pub application_tunnel: Option<ApplicationTunnel>,
    /// Services this workload backs: `<namespace>/<hostname>` → port mappings.
    pub services: BTreeMap<String, Vec<PortMapping>>,
    /// Selector-scoped policies that apply to it, `<namespace>/<name>`.
    pub authorization_policies: Vec<String>,
    /// Whether it may receive traffic.
    pub status: HealthStatus,
    /// Cluster the workload is in.
    pub cluster_id: String,
    /// Where it runs.
    pub locality: Option<Locality>,
    /// Whether its addresses identify it (standard) or are shared (host network).
    pub network_mode: NetworkMode,
    /// Relative capacity for load balancing (1 when the control plane leaves it unset).
    pub capacity: u32,
}

impl Workload {
    /// The workload's namespace (that of its identity).
    pub fn namespace(&self) -> &str {
        self.identity.namespace()
    }

    /// The xDS resource name: the uid.
    pub fn resource_name(&self) -> &str {
        &self.uid
    }

    /// Whether the workload can be looked up by its IP addresses (not host-network).
    pub fn indexed_by_ip(&self) -> bool {
        self.network_mode == NetworkMode::Standard
    }
}

/// Where a workload runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Locality {
    /// Region.
    pub region: String,
    /// Zone.
    pub zone: String,
    /// Sub-zone.
    pub subzone: String,
}

/// How a workload consumes tunnel metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ApplicationTunnel {
    /// How the metadata is delivered.
    pub protocol: ApplicationTunnelProtocol,
    /// Port to deliver to after the last hop, if not the original one.
    pub port: Option<u16>,
}

proto_enum! {
    /// How to reach a workload.
    TunnelProtocol <=> proto::workload::TunnelProtocol {
        /// Plain TCP.
        #[default]
        None = None,
        /// HBONE: HTTP/2 CONNECT over mutual TLS to port 15008.
        Hbone = Hbone,
        /// Sidecar-style Istio mTLS without a tunnel.
        LegacyIstioMtls = LegacyIstioMtls,
    }
}

proto_enum! {
    /// Whether a workload may receive traffic.
    HealthStatus <=> proto::workload::WorkloadStatus {
        /// Ready.
        #[default]
        Healthy = Healthy,
        /// Not ready.
        Unhealthy = Unhealthy,
    }
}

proto_enum! {
    /// Kind of controller behind a workload.
    WorkloadType <=> proto::workload::WorkloadType {
        /// A Deployment.
        #[default]
        Deployment = Deployment,
        /// A CronJob.
        Cronjob = Cronjob,
        /// A bare pod.
        Pod = Pod,
        /// A Job.
        Job = Job,
    }
}

proto_enum! {
    /// Whether a workload's addresses identify it.
    NetworkMode <=> proto::workload::NetworkMode {
        /// The address identifies the workload within its network.
        #[default]
        Standard = Standard,
        /// The address is shared (host network): never look the workload up by IP.
        HostNetwork = HostNetwork,
    }
}

proto_enum! {
    /// How tunnel metadata is delivered to a workload.
    ApplicationTunnelProtocol <=> proto::workload::application_tunnel::Protocol {
        /// Inner bytes are copied unchanged.
        #[default]
        None = None,
        /// A PROXY protocol header is prepended.
        Proxy = Proxy,
    }
}

impl TryFrom<proto::workload::Workload> for Workload {
    type Error = ModelError;

    fn try_from(w: proto::workload::Workload) -> Result<Self, Self::Error> {
        required("uid", &w.uid)?;
        let addresses = w
            .addresses
            .iter()
            .enumerate()
            .map(|(i, a)| ip_from_bytes(&format!("addresses[{i}]"), a))
            .collect::<Result<Vec<_>, _>>()?;
        let identity = identity(&w.trust_domain, &w.namespace, &w.service_account)?;
        let gateway = |field: &str, g: Option<proto::workload::GatewayAddress>| {
            g.map(GatewayAddress::try_from)
                .transpose()
                .map_err(|e| e.within(field))
        };
        let mut services = BTreeMap::new();
        for (key, list) in w.services {
            let field = format!("services[{key:?}]");
            check_reference(&field, &key)?;
            let ports = list
                .ports
                .into_iter()
                .enumerate()
                .map(|(i, p)| {
                    PortMapping::try_from(p).map_err(|e| e.within(&format!("{field}[{i}]")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            services.insert(key, ports);
        }
        for (i, policy) in w.authorization_policies.iter().enumerate() {
            check_reference(&format!("authorization_policies[{i}]"), policy)?;
        }
        let application_tunnel = w
            .application_tunnel
            .map(|t| -> Result<_, ModelError> {
                Ok(ApplicationTunnel {
                    protocol: ApplicationTunnelProtocol::from_proto(
                        t.protocol,
                        "application_tunnel.protocol",
                    )?,
                    port: match port("application_tunnel.port", t.port)? {
                        0 => None,
                        p => Some(p),
                    },
                })
            })
            .transpose()?;
        Ok(Workload {
            uid: w.uid,
            name: w.name,
            addresses,
            hostname: w.hostname,
            network: w.network,
            tunnel_protocol: TunnelProtocol::from_proto(w.tunnel_protocol, "tunnel_protocol")?,
            identity,
            waypoint: gateway("waypoint", w.waypoint)?,
            network_gateway: gateway("network_gateway", w.network_gateway)?,
            node: w.node,
            canonical_name: w.canonical_name,
            canonical_revision: w.canonical_revision,
            workload_type: WorkloadType::from_proto(w.workload_type, "workload_type")?,
            workload_name: w.workload_name,
            native_tunnel: w.native_tunnel,
            application_tunnel,
            services,
            authorization_policies: w.authorization_policies,
            status: HealthStatus::from_proto(w.status, "status")?,
            cluster_id: w.cluster_id,
            locality: w.locality.map(|l| Locality {
                region: l.region,
                zone: l.zone,
                subzone: l.subzone,
            }),
            network_mode: NetworkMode::from_proto(w.network_mode, "network_mode")?,
            capacity: w.capacity.unwrap_or(1),
        })
    }
}

/// Builds the identity from its wire parts, applying the defaults and naming the bad field.
fn identity(trust_domain: &str, namespace: &str, sa: &str) -> Result<Identity, ModelError> {
    required("namespace", namespace)?;
    let trust_domain = if trust_domain.is_empty() {
        DEFAULT_TRUST_DOMAIN
    } else {
        trust_domain
    };
    let sa = if sa.is_empty() {
        DEFAULT_SERVICE_ACCOUNT
    } else {
        sa
    };
    Identity::new(trust_domain, namespace, sa).map_err(|source| {
        let field = match &source {
            IdentityError::EmptyTrustDomain(_) | IdentityError::InvalidTrustDomain { .. } => {
                "trust_domain"
            }
            IdentityError::InvalidSegment {
                what: "namespace", ..
            } => "namespace",
            _ => "service_account",
        };
        ModelError::Identity {
            field: field.to_string(),
            source,
        }
    })
}

impl From<&Workload> for proto::workload::Workload {
    fn from(w: &Workload) -> Self {
        proto::workload::Workload {
            uid: w.uid.clone(),
            name: w.name.clone(),
            namespace: w.identity.namespace().to_string(),
            addresses: w.addresses.iter().map(|ip| ip_to_bytes(*ip)).collect(),
            hostname: w.hostname.clone(),
            network: w.network.clone(),
            tunnel_protocol: w.tunnel_protocol.to_proto(),
            trust_domain: w.identity.trust_domain().to_string(),
            service_account: w.identity.service_account().to_string(),
            waypoint: w.waypoint.as_ref().map(Into::into),
            network_gateway: w.network_gateway.as_ref().map(Into::into),
            node: w.node.clone(),
            canonical_name: w.canonical_name.clone(),
            canonical_revision: w.canonical_revision.clone(),
            workload_type: w.workload_type.to_proto(),
            workload_name: w.workload_name.clone(),
            native_tunnel: w.native_tunnel,
            application_tunnel: w
                .application_tunnel
                .map(|t| proto::workload::ApplicationTunnel {
                    protocol: t.protocol.to_proto(),
                    port: t.port.map_or(0, u32::from),
                }),
            services: w
                .services
                .iter()
                .map(|(key, ports)| {
                    (
                        key.clone(),
                        proto::workload::PortList {
                            ports: ports.iter().map(Into::into).collect(),
                        },
                    )
                })
                .collect(),
            authorization_policies: w.authorization_policies.clone(),
            status: w.status.to_proto(),
            cluster_id: w.cluster_id.clone(),
            locality: w.locality.as_ref().map(|l| proto::workload::Locality {
                region: l.region.clone(),
                zone: l.zone.clone(),
                subzone: l.subzone.clone(),
            }),
            network_mode: w.network_mode.to_proto(),
            extensions: Vec::new(),
            capacity: (w.capacity != 1).then_some(w.capacity),
        }
    }
}

impl From<&Workload> for proto::workload::Address {
    fn from(w: &Workload) -> Self {
        proto::workload::Address {
            r#type: Some(proto::workload::address::Type::Workload(w.into())),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::{AppProtocol, GatewayDestination, NamespacedHostname};

    /// A fully populated workload, for round-trip and store tests.
    pub(crate) fn sample(uid: &str, ip: &str) -> Workload {
        Workload {
            uid: uid.into(),
            name: "sleep-1".into(),
            addresses: vec![ip.parse().expect("ip")],
            hostname: String::new(),
            network: String::new(),
            tunnel_protocol: TunnelProtocol::Hbone,
            identity: Identity::new("cluster.local", "default", "sleep").expect("identity"),
            waypoint: Some(GatewayAddress {
                destination: GatewayDestination::Hostname(NamespacedHostname {
                    namespace: "default".into(),
                    hostname: "waypoint.default.svc.cluster.local".into(),
                }),
                hbone_mtls_port: 15008,
            }),
            network_gateway: None,
            node: "node-1".into(),
            canonical_name: "sleep".into(),
            canonical_revision: "v1".into(),
            workload_type: WorkloadType::Deployment,
            workload_name: "sleep".into(),
            native_tunnel: false,
            application_tunnel: Some(ApplicationTunnel {
                protocol: ApplicationTunnelProtocol::Proxy,
                port: Some(15088),
            }),
            services: BTreeMap::from([(
                "default/sleep.default.svc.cluster.local".into(),
                vec![PortMapping {
                    service_port: 80,
                    target_port: 8080,
                    app_protocol: AppProtocol::Http11,
                }],
            )]),
            authorization_policies: vec!["default/allow-sleep".into()],
            status: HealthStatus::Healthy,
            cluster_id: "Kubernetes".into(),
            locality: Some(Locality {
                region: "r".into(),
                zone: "z".into(),
                subzone: String::new(),
            }),
            network_mode: NetworkMode::Standard,
            capacity: 3,
        }
    }

    fn wire() -> proto::workload::Workload {
        (&sample("Kubernetes//v1/Pod/default/sleep-1", "10.0.0.1")).into()
    }

    #[test]
    fn round_trips_model_to_proto_and_back() {
        let w = sample("Kubernetes//v1/Pod/default/sleep-1", "10.0.0.1");
        let proto = proto::workload::Workload::from(&w);
        assert_eq!(proto.addresses, vec![vec![10, 0, 0, 1]]);
        assert_eq!(proto.service_account, "sleep");
        assert_eq!(proto.capacity, Some(3));
        assert_eq!(Workload::try_from(proto), Ok(w.clone()));

        let mut v6 = w;
        v6.addresses = vec![
            "fd00::1".parse().expect("ip"),
            "10.0.0.2".parse().expect("ip"),
        ];
        v6.capacity = 1;
        v6.locality = None;
        v6.application_tunnel = None;
        let proto = proto::workload::Workload::from(&v6);
        assert_eq!(proto.capacity, None);
        assert_eq!(Workload::try_from(proto), Ok(v6));
    }

    #[test]
    fn identity_defaults_apply_to_empty_trust_domain_and_service_account() {
        let mut p = wire();
        p.trust_domain.clear();
        p.service_account.clear();
        p.capacity = None;
        let w = Workload::try_from(p).expect("valid");
        assert_eq!(
            w.identity.to_string(),
            "spiffe://cluster.local/ns/default/sa/default"
        );
        assert_eq!(w.namespace(), "default");
        assert_eq!(w.capacity, 1);
    }

    #[test]
    fn rejects_bad_addresses_with_their_index() {
        let mut p = wire();
        p.addresses = vec![vec![10, 0, 0, 1], vec![1, 2, 3, 4, 5]];
        assert_eq!(
            Workload::try_from(p),
            Err(ModelError::IpLength {
                field: "addresses[1]".into(),
                len: 5
            })
        );
    }

    #[test]
    fn rejects_bad_identity_parts_naming_the_field() {
        type Mutate = fn(&mut proto::workload::Workload);
        let cases: [(Mutate, &str); 4] = [
            (|p| p.namespace.clear(), "namespace"),
            (|p| p.namespace = "a/b".into(), "namespace"),
            (|p| p.trust_domain = "Bad.Domain".into(), "trust_domain"),
            (
                |p| p.service_account = "sa with space".into(),
                "service_account",
            ),
        ];
        for (mutate, field) in cases {
            let mut p = wire();
            mutate(&mut p);
            let err = Workload::try_from(p).expect_err(field);
            assert_eq!(err.field(), field, "{err}");
        }
    }

    #[test]
    fn rejects_missing_uid_bad_ports_enums_and_references() {
        let mut p = wire();
        p.uid.clear();
        assert_eq!(Workload::try_from(p).expect_err("uid").field(), "uid");

        let mut p = wire();
        p.tunnel_protocol = 9;
        assert_eq!(
            Workload::try_from(p).expect_err("enum").field(),
            "tunnel_protocol"
        );

        let mut p = wire();
        if let Some(list) = p.services.values_mut().next() {
            list.ports[0].target_port = 65_536;
        }
        assert_eq!(
            Workload::try_from(p).expect_err("port").field(),
            "services[\"default/sleep.default.svc.cluster.local\"][0].target_port"
        );

        let mut p = wire();
        p.services
            .insert("no-slash".into(), proto::workload::PortList::default());
        assert_eq!(
            Workload::try_from(p).expect_err("key").field(),
            "services[\"no-slash\"]"
        );

        let mut p = wire();
        p.authorization_policies.push("/x".into());
        assert_eq!(
            Workload::try_from(p).expect_err("policy ref").field(),
            "authorization_policies[1]"
        );

        let mut p = wire();
        if let Some(w) = p.waypoint.as_mut() {
            w.destination = None;
        }
        assert_eq!(
            Workload::try_from(p).expect_err("waypoint").field(),
            "waypoint.destination"
        );
    }

    #[test]
    fn host_network_workloads_are_not_indexed_by_ip() {
        let mut w = sample("u", "10.0.0.1");
        assert!(w.indexed_by_ip());
        w.network_mode = NetworkMode::HostNetwork;
        assert!(!w.indexed_by_ip());
    }

    #[test]
    fn serializes_for_the_config_dump() {
        let w = sample("u", "10.0.0.1");
        let json = serde_json::to_value(&w).expect("json");
        assert_eq!(
            json["identity"],
            "spiffe://cluster.local/ns/default/sa/sleep"
        );
        assert_eq!(json["tunnelProtocol"], "HBONE");
        assert_eq!(json["addresses"][0], "10.0.0.1");
        let back: Workload = serde_json::from_value(json).expect("parse back");
        assert_eq!(back, w);
    }
}
