//! Services: a set of workloads addressed together, named `<namespace>/<hostname>`.

use serde::{Deserialize, Serialize};

use crate::Identity;

use super::{proto_enum, required, GatewayAddress, ModelError, NetworkAddress, PortMapping};

/// A service as the data plane sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    /// Kubernetes Service name (may be empty for other kinds of service).
    pub name: String,
    /// Namespace; part of the key.
    pub namespace: String,
    /// Fully qualified host name, e.g. `name.namespace.svc.cluster.local`; part of the key.
    pub hostname: String,
    /// Virtual IPs, one per network / family; empty for a headless service.
    pub vips: Vec<NetworkAddress>,
    /// Service ports; a `target_port` of 0 defers to each workload's mapping.
    pub ports: Vec<PortMapping>,
    /// If non-empty, the identities to verify instead of each workload's own (parsed once
    /// here: a SAN that is not a SPIFFE identity could never be proven and is dropped).
    pub subject_alt_names: Vec<Identity>,
    /// Waypoint that traffic to this service must go through.
    pub waypoint: Option<GatewayAddress>,
    /// How endpoints are picked when connecting directly; `None` means any healthy endpoint.
    pub load_balancing: Option<LoadBalancing>,
    /// Address families of the service.
    pub ip_families: IpFamilies,
    /// Preferred for host name lookups when the client's namespace has no match.
    pub canonical: bool,
    /// Ingress gateways should also send traffic for this service through its waypoint.
    pub ingress_use_waypoint: bool,
}

impl Service {
    /// The key and xDS resource name: `<namespace>/<hostname>`.
    pub fn key(&self) -> String {
        service_key(&self.namespace, &self.hostname)
    }
}

/// The key of a service: `<namespace>/<hostname>`.
pub fn service_key(namespace: &str, hostname: &str) -> String {
    format!("{namespace}/{hostname}")
}

/// Endpoint selection of a service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancing {
    /// Locality attributes to prefer, most important first.
    pub routing_preference: Vec<LoadBalancingScope>,
    /// How strictly the preferences apply.
    pub mode: LoadBalancingMode,
    /// Whether unhealthy endpoints may be used.
    pub health_policy: LoadBalancingHealthPolicy,
}

proto_enum! {
    /// A locality attribute to match when picking endpoints.
    LoadBalancingScope <=> proto::workload::load_balancing::Scope {
        /// Not set.
        #[default]
        Unspecified = UnspecifiedScope,
        /// Same region.
        Region = Region,
        /// Same zone.
        Zone = Zone,
        /// Same sub-zone.
        Subzone = Subzone,
        /// Same node.
        Node = Node,
        /// Same cluster.
        Cluster = Cluster,
        /// Same network.
        Network = Network,
    }
}

proto_enum! {
    /// How strictly routing preferences apply.
    LoadBalancingMode <=> proto::workload::load_balancing::Mode {
        /// Not set: no preference.
        #[default]
        Unspecified = UnspecifiedMode,
        /// Only endpoints matching every preference.
        Strict = Strict,
        /// Best match first, then fewer matches, then any.
        Failover = Failover,
        /// No endpoint selection: connect to the original destination.
        Passthrough = Passthrough,
    }
}

proto_enum! {
    /// Which endpoints may be picked.
    LoadBalancingHealthPolicy <=> proto::workload::load_balancing::HealthPolicy {
        /// Healthy endpoints only.
        #[default]
        OnlyHealthy = OnlyHealthy,
        /// Any endpoint.
        AllowAll = AllowAll,
    }
}

proto_enum! {
    /// Address families of a service.
    IpFamilies <=> proto::workload::IpFamilies {
        /// Inferred from the addresses.
        #[default]
        Automatic = Automatic,
        /// IPv4 only.
        Ipv4Only = Ipv4Only,
        /// IPv6 only.
        Ipv6Only = Ipv6Only,
        /// Both.
        Dual = Dual,
    }
}

impl TryFrom<proto::workload::Service> for Service {
    type Error = ModelError;

    fn try_from(s: proto::workload::Service) -> Result<Self, Self::Error> {
        required("namespace", &s.namespace)?;
        required("hostname", &s.hostname)?;
        let vips = s
            .addresses
            .into_iter()
            .enumerate()
            .map(|(i, a)| {
                NetworkAddress::try_from(a).map_err(|e| e.within(&format!("addresses[{i}]")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let ports = s
            .ports
            .into_iter()
            .enumerate()
            .map(|(i, p)| PortMapping::try_from(p).map_err(|e| e.within(&format!("ports[{i}]"))))
            .collect::<Result<Vec<_>, _>>()?;
        let waypoint = s
            .waypoint
            .map(GatewayAddress::try_from)
            .transpose()
            .map_err(|e| e.within("waypoint"))?;
        let load_balancing = s
            .load_balancing
            .map(|lb| -> Result<_, ModelError> {
                Ok(LoadBalancing {
                    routing_preference: lb
                        .routing_preference
                        .iter()
                        .enumerate()
                        .map(|(i, v)| {
                            LoadBalancingScope::from_proto(
                                *v,
                                &format!("load_balancing.routing_preference[{i}]"),
                            )
                        })
                        .collect::<Result<Vec<_>, _>>()?,
                    mode: LoadBalancingMode::from_proto(lb.mode, "load_balancing.mode")?,
                    health_policy: LoadBalancingHealthPolicy::from_proto(
                        lb.health_policy,
                        "load_balancing.health_policy",
                    )?,
                })
            })
            .transpose()?;
        let subject_alt_names = sans(&s.hostname, s.subject_alt_names);
        Ok(Service {
            name: s.name,
            namespace: s.namespace,
            hostname: s.hostname,
            vips,
            ports,
            subject_alt_names,
            waypoint,
            load_balancing,
            ip_families: IpFamilies::from_proto(s.ip_families, "ip_families")?,
            canonical: s.canonical,
            ingress_use_waypoint: s.ingress_use_waypoint,
        })
    }
}

/// The SANs that are SPIFFE identities; the others are dropped with a warning.
fn sans(hostname: &str, raw: Vec<String>) -> Vec<Identity> {
    raw.into_iter()
        .filter_map(|san| match san.parse() {
            Ok(id) => Some(id),
            Err(e) => {
                tracing::warn!(service = hostname, san, error = %e, "ignoring a subject alt name that is not a SPIFFE identity");
                None
            }
        })
        .collect()
}

impl From<&Service> for proto::workload::Service {
    fn from(s: &Service) -> Self {
        proto::workload::Service {
            name: s.name.clone(),
            namespace: s.namespace.clone(),
            hostname: s.hostname.clone(),
            addresses: s.vips.iter().map(Into::into).collect(),
            ports: s.ports.iter().map(Into::into).collect(),
            subject_alt_names: s
                .subject_alt_names
                .iter()
                .map(|id| id.as_uri().to_string())
                .collect(),
            waypoint: s.waypoint.as_ref().map(Into::into),
            load_balancing: s
                .load_balancing
                .as_ref()
                .map(|lb| proto::workload::LoadBalancing {
                    routing_preference: lb
                        .routing_preference
                        .iter()
                        .map(|s| s.to_proto())
                        .collect(),
                    mode: lb.mode.to_proto(),
                    health_policy: lb.health_policy.to_proto(),
                    dns_connect_strategy: 0,
                }),
            ip_families: s.ip_families.to_proto(),
            extensions: Vec::new(),
            canonical: s.canonical,
            ingress_use_waypoint: s.ingress_use_waypoint,
        }
    }
}

impl From<&Service> for proto::workload::Address {
    fn from(s: &Service) -> Self {
        proto::workload::Address {
            r#type: Some(proto::workload::address::Type::Service(s.into())),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::{Address, AppProtocol, GatewayDestination};

    /// A fully populated service, for round-trip and store tests.
    pub(crate) fn sample(namespace: &str, hostname: &str, vip: &str) -> Service {
        Service {
            name: hostname.split('.').next().unwrap_or_default().into(),
            namespace: namespace.into(),
            hostname: hostname.into(),
            vips: vec![NetworkAddress {
                network: String::new(),
                ip: vip.parse().expect("ip"),
            }],
            ports: vec![PortMapping {
                service_port: 80,
                target_port: 0,
                app_protocol: AppProtocol::Http11,
            }],
            subject_alt_names: vec!["spiffe://cluster.local/ns/default/sa/echo"
                .parse()
                .expect("identity")],
            waypoint: Some(GatewayAddress {
                destination: GatewayDestination::Address(NetworkAddress {
                    network: String::new(),
                    ip: "10.9.9.9".parse().expect("ip"),
                }),
                hbone_mtls_port: 15008,
            }),
            load_balancing: Some(LoadBalancing {
                routing_preference: vec![LoadBalancingScope::Zone, LoadBalancingScope::Network],
                mode: LoadBalancingMode::Failover,
                health_policy: LoadBalancingHealthPolicy::OnlyHealthy,
            }),
            ip_families: IpFamilies::Ipv4Only,
            canonical: true,
            ingress_use_waypoint: false,
        }
    }

    #[test]
    fn round_trips_model_to_proto_and_back() {
        let s = sample("default", "echo.default.svc.cluster.local", "10.96.0.10");
        assert_eq!(s.key(), "default/echo.default.svc.cluster.local");
        let wire = proto::workload::Service::from(&s);
        assert_eq!(wire.addresses[0].address, vec![10, 96, 0, 10]);
        assert_eq!(Service::try_from(wire), Ok(s.clone()));

        let address = Address::Service(s.clone());
        assert_eq!(address.resource_name(), s.key());
        let wire = proto::workload::Address::from(&address);
        assert_eq!(Address::try_from(wire), Ok(address));
    }

    #[test]
    fn rejects_missing_key_parts_bad_vips_ports_and_enums() {
        let good = || proto::workload::Service::from(&sample("ns", "h.ns", "10.0.0.1"));
        type Mutate = fn(&mut proto::workload::Service);
        let cases: [(Mutate, &str); 6] = [
            (|s| s.namespace.clear(), "namespace"),
            (|s| s.hostname.clear(), "hostname"),
            (
                |s| s.addresses[0].address = vec![0; 6],
                "addresses[0].address",
            ),
            (
                |s| s.ports[0].service_port = 1 << 20,
                "ports[0].service_port",
            ),
            (|s| s.ip_families = 7, "ip_families"),
            (
                |s| {
                    if let Some(lb) = s.load_balancing.as_mut() {
                        lb.routing_preference.push(99);
                    }
                },
                "load_balancing.routing_preference[2]",
            ),
        ];
        for (mutate, field) in cases {
            let mut wire = good();
            mutate(&mut wire);
            let err = Service::try_from(wire).expect_err(field);
            assert_eq!(err.field(), field, "{err}");
        }
    }

    #[test]
    fn headless_service_without_vips_is_valid() {
        let mut s = sample("ns", "h.ns", "10.0.0.1");
        s.vips.clear();
        s.waypoint = None;
        s.load_balancing = None;
        assert_eq!(Service::try_from(proto::workload::Service::from(&s)), Ok(s));
    }
}
