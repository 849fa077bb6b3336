//! The typed configuration model: workloads, services, L4 authorization policies, and the L7
//! routes of services ([`route`], for waypoints).
//!
//! The control plane speaks protobuf ([`proto::workload`], [`proto::security`]); everything
//! else in the mesh works on these types, which are checked once when converted from the
//! wire: IP addresses are [`IpAddr`]s (never byte strings of the wrong length), ports are
//! `u16`, identities are [`crate::Identity`], CIDRs are [`Cidr`]s whose prefix fits the
//! address. A conversion failure is a [`ModelError`] naming the offending field by its path
//! (`services["ns/host"][0].target_port`, `rules[0].clauses[1].matches[0].source_ips[2]`),
//! so a NACK tells the operator exactly what is wrong.
//!
//! Each type converts both ways: `TryFrom<proto>` for the data plane, `From<&model>` for the
//! control plane (istiod-lite builds the model and sends its proto form). Converting model →
//! proto → model gives back the same value.
//!
//! xDS resource names ([`Address::resource_name`], [`Policy::key`]): a workload is named by its
//! uid, a service by `<namespace>/<hostname>`, a policy by `<namespace>/<name>`.

pub(crate) mod policy;
pub mod route;
pub(crate) mod service;
pub(crate) mod workload;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use crate::identity::IdentityError;

pub use policy::{
    Cidr, CidrError, Clause, Match, Policy, PolicyAction, PolicyScope, Rule, ServiceAccountMatch,
    StringMatch,
};
pub use service::{
    service_key, IpFamilies, LoadBalancing, LoadBalancingHealthPolicy, LoadBalancingMode,
    LoadBalancingScope, Service,
};
pub use workload::{
    ApplicationTunnel, ApplicationTunnelProtocol, HealthStatus, Locality, NetworkMode,
    TunnelProtocol, Workload, WorkloadType, DEFAULT_SERVICE_ACCOUNT,
};

/// Why a protobuf resource is not a valid model value. Every variant names the field by its
/// path inside the resource.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    /// A required field is empty or absent.
    #[error("{field} is required but empty or absent")]
    Missing {
        /// Path of the field.
        field: String,
    },
    /// Raw IP address bytes that are neither 4 (IPv4) nor 16 (IPv6) long.
    #[error("{field}: an IP address must be 4 (IPv4) or 16 (IPv6) bytes, got {len} bytes")]
    IpLength {
        /// Path of the field.
        field: String,
        /// The length received.
        len: usize,
    },
    /// A port number above 65535.
    #[error("{field}: {value} is not a port number (0-65535)")]
    Port {
        /// Path of the field.
        field: String,
        /// The value received.
        value: u32,
    },
    /// An enum value this version of the mesh does not know.
    #[error("{field}: {value} is not a known {kind} value")]
    UnknownEnum {
        /// Path of the field.
        field: String,
        /// The protobuf enum's name.
        kind: &'static str,
        /// The value received.
        value: i32,
    },
    /// A CIDR whose prefix length is longer than its address.
    #[error("{field}: {source}")]
    Cidr {
        /// Path of the field.
        field: String,
        /// What is wrong with the CIDR.
        source: CidrError,
    },
    /// The trust domain, namespace and service account do not form a valid identity.
    #[error("{field}: {source}")]
    Identity {
        /// Path of the field.
        field: String,
        /// What is wrong with the identity part.
        source: IdentityError,
    },
    /// A reference that must read `<namespace>/<name>` does not.
    #[error("{field}: {value:?} must have the form <namespace>/<name>")]
    BadReference {
        /// Path of the field.
        field: String,
        /// The value received.
        value: String,
    },
    /// A value that is present but not acceptable (an unknown `when` key, a bad JWKS, ...).
    #[error("{field}: {reason}")]
    Invalid {
        /// Path of the field.
        field: String,
        /// What is wrong with the value.
        reason: String,
    },
}

impl ModelError {
    /// Path of the offending field.
    pub fn field(&self) -> &str {
        match self {
            ModelError::Missing { field }
            | ModelError::IpLength { field, .. }
            | ModelError::Port { field, .. }
            | ModelError::UnknownEnum { field, .. }
            | ModelError::Cidr { field, .. }
            | ModelError::Identity { field, .. }
            | ModelError::BadReference { field, .. }
            | ModelError::Invalid { field, .. } => field,
        }
    }

    /// Prefixes the field path with `parent` (`parent.field`, or `parent[0]` style when the
    /// field path starts with `[`).
    pub(crate) fn within(mut self, parent: &str) -> Self {
        let field = match &mut self {
            ModelError::Missing { field }
            | ModelError::IpLength { field, .. }
            | ModelError::Port { field, .. }
            | ModelError::UnknownEnum { field, .. }
            | ModelError::Cidr { field, .. }
            | ModelError::Identity { field, .. }
            | ModelError::BadReference { field, .. }
            | ModelError::Invalid { field, .. } => field,
        };
        *field = if field.starts_with('[') {
            format!("{parent}{field}")
        } else {
            format!("{parent}.{field}")
        };
        self
    }
}

/// A workload or a service: the `istio.workload.Address` resource.
// Transient (decoded, then moved into the store), so the size difference does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Address {
    /// A workload, named by its uid.
    Workload(Workload),
    /// A service, named `<namespace>/<hostname>`.
    Service(Service),
}

impl Address {
    /// The xDS resource name: the workload's uid or the service's `<namespace>/<hostname>`.
    pub fn resource_name(&self) -> String {
        match self {
            Address::Workload(w) => w.uid.clone(),
            Address::Service(s) => s.key(),
        }
    }
}

impl TryFrom<proto::workload::Address> for Address {
    type Error = ModelError;

    fn try_from(value: proto::workload::Address) -> Result<Self, Self::Error> {
        use proto::workload::address::Type;
        match value.r#type {
            Some(Type::Workload(w)) => Ok(Address::Workload(
                Workload::try_from(w).map_err(|e| e.within("workload"))?,
            )),
            Some(Type::Service(s)) => Ok(Address::Service(
                Service::try_from(s).map_err(|e| e.within("service"))?,
            )),
            None => Err(ModelError::Missing {
                field: "type".into(),
            }),
        }
    }
}

impl From<&Address> for proto::workload::Address {
    fn from(value: &Address) -> Self {
        match value {
            Address::Workload(w) => w.into(),
            Address::Service(s) => s.into(),
        }
    }
}

/// An IP address on a network (empty network name: the default network).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NetworkAddress {
    /// Network name; empty for the default network.
    pub network: String,
    /// The address.
    pub ip: IpAddr,
}

impl TryFrom<proto::workload::NetworkAddress> for NetworkAddress {
    type Error = ModelError;

    fn try_from(value: proto::workload::NetworkAddress) -> Result<Self, Self::Error> {
        Ok(NetworkAddress {
            network: value.network,
            ip: ip_from_bytes("address", &value.address)?,
        })
    }
}

impl From<&NetworkAddress> for proto::workload::NetworkAddress {
    fn from(value: &NetworkAddress) -> Self {
        proto::workload::NetworkAddress {
            network: value.network.clone(),
            address: ip_to_bytes(value.ip),
        }
    }
}

/// A service named by namespace and host name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NamespacedHostname {
    /// The service's namespace.
    pub namespace: String,
    /// The service's host name.
    pub hostname: String,
}

/// Where a waypoint or gateway is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum GatewayDestination {
    /// A service, resolved through the store.
    Hostname(NamespacedHostname),
    /// A fixed address.
    Address(NetworkAddress),
}

/// A waypoint or gateway: its destination and HBONE port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayAddress {
    /// The gateway service or address.
    pub destination: GatewayDestination,
    /// The port that accepts mutual-TLS HBONE, normally 15008.
    pub hbone_mtls_port: u16,
}

impl TryFrom<proto::workload::GatewayAddress> for GatewayAddress {
    type Error = ModelError;

    fn try_from(value: proto::workload::GatewayAddress) -> Result<Self, Self::Error> {
        use proto::workload::gateway_address::Destination;
        let destination = match value.destination {
            Some(Destination::Hostname(h)) => {
                if h.hostname.is_empty() {
                    return Err(ModelError::Missing {
                        field: "hostname.hostname".into(),
                    });
                }
                GatewayDestination::Hostname(NamespacedHostname {
                    namespace: h.namespace,
                    hostname: h.hostname,
                })
            }
            Some(Destination::Address(a)) => GatewayDestination::Address(
                NetworkAddress::try_from(a).map_err(|e| e.within("address"))?,
            ),
            None => {
                return Err(ModelError::Missing {
                    field: "destination".into(),
                })
            }
        };
        Ok(GatewayAddress {
            destination,
            hbone_mtls_port: port("hbone_mtls_port", value.hbone_mtls_port)?,
        })
    }
}

impl From<&GatewayAddress> for proto::workload::GatewayAddress {
    fn from(value: &GatewayAddress) -> Self {
        use proto::workload::gateway_address::Destination;
        let destination = match &value.destination {
            GatewayDestination::Hostname(h) => {
                Destination::Hostname(proto::workload::NamespacedHostname {
                    namespace: h.namespace.clone(),
                    hostname: h.hostname.clone(),
                })
            }
            GatewayDestination::Address(a) => Destination::Address(a.into()),
        };
        proto::workload::GatewayAddress {
            destination: Some(destination),
            hbone_mtls_port: u32::from(value.hbone_mtls_port),
        }
    }
}

/// One port of a service and where it lands on a workload.
///
/// In a service's port list, `target_port == 0` means "as each workload says" (its
/// [`Workload::services`] entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    /// The port the service is addressed on.
    pub service_port: u16,
    /// The port on the workload that traffic goes to.
    pub target_port: u16,
    /// The application protocol, when known.
    pub app_protocol: AppProtocol,
}

impl TryFrom<proto::workload::Port> for PortMapping {
    type Error = ModelError;

    fn try_from(value: proto::workload::Port) -> Result<Self, Self::Error> {
        Ok(PortMapping {
            service_port: port("service_port", value.service_port)?,
            target_port: port("target_port", value.target_port)?,
            app_protocol: AppProtocol::from_proto(value.app_protocol, "app_protocol")?,
        })
    }
}

impl From<&PortMapping> for proto::workload::Port {
    fn from(value: &PortMapping) -> Self {
        proto::workload::Port {
            service_port: u32::from(value.service_port),
            target_port: u32::from(value.target_port),
            app_protocol: value.app_protocol.to_proto(),
        }
    }
}

/// Defines a model enum mirroring a prost enum, with checked conversion from the wire value.
macro_rules! proto_enum {
    (
        $(#[$meta:meta])*
        $name:ident <=> $proto:ty {
            $( $(#[$vmeta:meta])* $variant:ident = $pvariant:ident ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, Default,
            serde::Serialize, serde::Deserialize,
        )]
        #[serde(rename_all = "SCREAMING_SNAKE_CASE")]
        pub enum $name {
            $( $(#[$vmeta])* $variant ),+
        }

        impl $name {
            /// Converts the wire value; unknown values are an error naming `field`.
            pub(crate) fn from_proto(
                value: i32,
                field: &str,
            ) -> Result<Self, $crate::model::ModelError> {
                $(
                    if value == <$proto>::$pvariant as i32 {
                        return Ok($name::$variant);
                    }
                )+
                Err($crate::model::ModelError::UnknownEnum {
                    field: field.to_string(),
                    kind: std::any::type_name::<$proto>(),
                    value,
                })
            }

            /// The wire value.
            pub(crate) fn to_proto(self) -> i32 {
                match self {
                    $( $name::$variant => <$proto>::$pvariant as i32 ),+
                }
            }
        }
    };
}
pub(crate) use proto_enum;

proto_enum! {
    /// Application protocol of a port.
    AppProtocol <=> proto::workload::AppProtocol {
        /// Not known: treat as opaque TCP.
        #[default]
        Unknown = Unknown,
        /// HTTP/1.1.
        Http11 = Http11,
        /// HTTP/2.
        Http2 = Http2,
        /// gRPC.
        Grpc = Grpc,
        /// Opaque TCP.
        Tcp = Tcp,
        /// TLS.
        Tls = Tls,
    }
}

/// Converts raw address bytes (4 or 16) into an IP address.
pub(crate) fn ip_from_bytes(field: &str, bytes: &[u8]) -> Result<IpAddr, ModelError> {
    if let Ok(v4) = <[u8; 4]>::try_from(bytes) {
        return Ok(IpAddr::V4(Ipv4Addr::from(v4)));
    }
    if let Ok(v6) = <[u8; 16]>::try_from(bytes) {
        return Ok(IpAddr::V6(Ipv6Addr::from(v6)));
    }
    Err(ModelError::IpLength {
        field: field.to_string(),
        len: bytes.len(),
    })
}

/// Raw address bytes: 4 for IPv4, 16 for IPv6.
pub(crate) fn ip_to_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

/// Checks that a wire `uint32` is a port number.
pub(crate) fn port(field: &str, value: u32) -> Result<u16, ModelError> {
    u16::try_from(value).map_err(|_| ModelError::Port {
        field: field.to_string(),
        value,
    })
}

/// Checks a `<namespace>/<name>` reference (both parts non-empty).
pub(crate) fn check_reference(field: &str, value: &str) -> Result<(), ModelError> {
    match value.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() => Ok(()),
        _ => Err(ModelError::BadReference {
            field: field.to_string(),
            value: value.to_string(),
        }),
    }
}

/// Fails with [`ModelError::Missing`] when `value` is empty.
pub(crate) fn required(field: &str, value: &str) -> Result<(), ModelError> {
    if value.is_empty() {
        Err(ModelError::Missing {
            field: field.to_string(),
        })
    } else {
        Ok(())
    }
}

/// Serde for [`crate::Identity`] as its `spiffe://` string.
pub(crate) mod identity_serde {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::Identity;

    pub(crate) fn serialize<S: Serializer>(id: &Identity, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(id)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Identity, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_bytes_must_be_4_or_16_long() {
        assert_eq!(
            ip_from_bytes("a", &[10, 0, 0, 1]),
            Ok("10.0.0.1".parse().expect("ip"))
        );
        let v6: IpAddr = "fd00::1".parse().expect("ip");
        assert_eq!(ip_from_bytes("a", &ip_to_bytes(v6)), Ok(v6));
        for len in [0, 1, 3, 5, 15, 17] {
            assert_eq!(
                ip_from_bytes("addresses[2]", &vec![1; len]),
                Err(ModelError::IpLength {
                    field: "addresses[2]".into(),
                    len
                })
            );
        }
    }

    #[test]
    fn errors_carry_the_field_path() {
        let err = port("target_port", 70_000)
            .expect_err("too big")
            .within("[0]")
            .within("services[\"ns/h\"]")
            .within("workload");
        assert_eq!(err.field(), "workload.services[\"ns/h\"][0].target_port");
        assert!(err.to_string().contains("70000 is not a port number"));
    }

    #[test]
    fn gateway_address_needs_a_destination_and_valid_parts() {
        let ok = GatewayAddress {
            destination: GatewayDestination::Hostname(NamespacedHostname {
                namespace: "ns".into(),
                hostname: "wp.ns.svc.cluster.local".into(),
            }),
            hbone_mtls_port: 15008,
        };
        let wire = proto::workload::GatewayAddress::from(&ok);
        assert_eq!(GatewayAddress::try_from(wire), Ok(ok));

        let by_ip = GatewayAddress {
            destination: GatewayDestination::Address(NetworkAddress {
                network: "net1".into(),
                ip: "10.1.2.3".parse().expect("ip"),
            }),
            hbone_mtls_port: 15008,
        };
        let wire = proto::workload::GatewayAddress::from(&by_ip);
        assert_eq!(GatewayAddress::try_from(wire), Ok(by_ip));

        let none = proto::workload::GatewayAddress {
            destination: None,
            hbone_mtls_port: 15008,
        };
        assert_eq!(
            GatewayAddress::try_from(none).map_err(|e| e.field().to_string()),
            Err("destination".to_string())
        );
        let bad_ip = proto::workload::GatewayAddress {
            destination: Some(proto::workload::gateway_address::Destination::Address(
                proto::workload::NetworkAddress {
                    network: String::new(),
                    address: vec![1, 2, 3],
                },
            )),
            hbone_mtls_port: 15008,
        };
        assert_eq!(
            GatewayAddress::try_from(bad_ip),
            Err(ModelError::IpLength {
                field: "address.address".into(),
                len: 3
            })
        );
    }

    #[test]
    fn unknown_enum_values_are_rejected_with_the_field() {
        let err = AppProtocol::from_proto(42, "app_protocol").expect_err("unknown");
        assert!(matches!(err, ModelError::UnknownEnum { value: 42, .. }));
        assert_eq!(AppProtocol::from_proto(3, "x"), Ok(AppProtocol::Grpc));
        assert_eq!(AppProtocol::Grpc.to_proto(), 3);
    }

    #[test]
    fn references_need_both_parts() {
        assert!(check_reference("f", "ns/name").is_ok());
        for bad in ["", "ns", "/name", "ns/"] {
            assert!(check_reference("f", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn address_without_type_is_rejected() {
        let err = Address::try_from(proto::workload::Address { r#type: None }).expect_err("none");
        assert_eq!(err.field(), "type");
    }
}
