#![doc = r#"
Wire types of the mesh, generated at build time from the `.proto` files in `proto/proto/`.

The packages, message names and field numbers are those of Istio ambient and Envoy, so the
mesh interoperates with istiod, ztunnel and istio-cni:

| module | package | what |
| --- | --- | --- |
| [`workload`] | `istio.workload` | `Address` = `Workload` or `Service` (resources of delta ADS) |
| [`security`] | `istio.security` | `Authorization` policies (resources of delta ADS) |
| [`discovery`] | `envoy.service.discovery.v3` | delta ADS messages and the `AggregatedDiscoveryService` |
| [`ca`] | `istio.v1.auth` | `IstioCertificateService/CreateCertificate` |
| [`zds`] | `istio.workload.zds` | node agent ↔ node tunnel messages |
| [`google::rpc`] | `google.rpc` | `Status`, carried by NACKs |
| [`envoy::config::core::v3`] | `envoy.config.core.v3` | `Node` |
| [`waypoint`] | `ambient.waypoint.v1` | waypoint config (ours, not Istio's): `ServiceRoutes` (a service's L7 routes), `L7Policy`, `RequestAuthn` |

Well-known types (`Any`, `Struct`, `Duration`, `UInt32Value`, `Empty`) are [`prost_types`]
(`Empty` maps to `()`). Services come with both a tonic client and a tonic server, e.g.
[`ca::istio_certificate_service_client::IstioCertificateServiceClient`] and
[`discovery::aggregated_discovery_service_server::AggregatedDiscoveryServiceServer`].

```
use prost::Message;
let wl = proto::workload::Workload { uid: "c1//v1/Pod/default/a".into(), ..Default::default() };
let any = prost_types::Any {
    type_url: proto::ADDRESS_TYPE_URL.to_string(),
    value: proto::workload::Address {
        r#type: Some(proto::workload::address::Type::Workload(wl)),
    }
    .encode_to_vec(),
};
let back = proto::workload::Address::decode(any.value.as_slice()).unwrap();
assert!(matches!(back.r#type, Some(proto::workload::address::Type::Workload(_))));
```
"#]

/// Istio packages (`istio.*`).
pub mod istio {
    /// `istio.workload`: workloads and services (WDS).
    #[allow(missing_docs, clippy::all, clippy::pedantic)]
    pub mod workload {
        tonic::include_proto!("istio.workload");

        /// `istio.workload.zds`: node agent ↔ node tunnel protocol.
        #[allow(missing_docs, clippy::all, clippy::pedantic)]
        pub mod zds {
            tonic::include_proto!("istio.workload.zds");
        }
    }

    /// `istio.security`: L4 authorization policy.
    #[allow(missing_docs, clippy::all, clippy::pedantic)]
    pub mod security {
        tonic::include_proto!("istio.security");
    }

    /// `istio.v1.*`.
    pub mod v1 {
        /// `istio.v1.auth`: the certificate authority service.
        #[allow(missing_docs, clippy::all, clippy::pedantic)]
        pub mod auth {
            tonic::include_proto!("istio.v1.auth");
        }
    }
}

/// Envoy packages (`envoy.*`), only what ADS needs.
pub mod envoy {
    /// `envoy.config.*`.
    pub mod config {
        /// `envoy.config.core.*`.
        pub mod core {
            /// `envoy.config.core.v3`: `Node`, `Locality`, `ControlPlane`.
            #[allow(missing_docs, clippy::all, clippy::pedantic)]
            pub mod v3 {
                tonic::include_proto!("envoy.config.core.v3");
            }
        }
    }

    /// `envoy.service.*`.
    pub mod service {
        /// `envoy.service.discovery.*`.
        pub mod discovery {
            /// `envoy.service.discovery.v3`: ADS messages and service.
            #[allow(missing_docs, clippy::all, clippy::pedantic)]
            pub mod v3 {
                tonic::include_proto!("envoy.service.discovery.v3");
            }
        }
    }
}

/// Our own packages (`ambient.*`): what waypoints need beyond Istio's types.
pub mod ambient {
    /// `ambient.waypoint.*`.
    pub mod waypoint {
        /// `ambient.waypoint.v1`: waypoint config resources.
        #[allow(missing_docs, clippy::all, clippy::pedantic)]
        pub mod v1 {
            tonic::include_proto!("ambient.waypoint.v1");
        }
    }
}

/// Google packages that are not well-known types.
pub mod google {
    /// `google.rpc`: `Status`.
    #[allow(missing_docs, clippy::all, clippy::pedantic)]
    pub mod rpc {
        tonic::include_proto!("google.rpc");
    }
}

pub use ambient::waypoint::v1 as waypoint;
pub use envoy::service::discovery::v3 as discovery;
pub use istio::security;
pub use istio::v1::auth as ca;
pub use istio::workload;
pub use istio::workload::zds;

/// Type URL of `istio.workload.Address` resources in ADS.
pub const ADDRESS_TYPE_URL: &str = "type.googleapis.com/istio.workload.Address";

/// Type URL of `istio.security.Authorization` resources in ADS.
pub const AUTHORIZATION_TYPE_URL: &str = "type.googleapis.com/istio.security.Authorization";

/// Type URL of `ambient.waypoint.v1.L7Policy` resources (waypoint L7 authorization) in ADS.
pub const L7_POLICY_TYPE_URL: &str = "type.googleapis.com/ambient.waypoint.v1.L7Policy";

/// Type URL of `ambient.waypoint.v1.RequestAuthn` resources (JWT rules) in ADS.
pub const REQUEST_AUTHN_TYPE_URL: &str = "type.googleapis.com/ambient.waypoint.v1.RequestAuthn";
/// Type URL of `ambient.waypoint.v1.ServiceRoutes` resources in ADS (a service's L7 routes;
/// only waypoints subscribe to it).
pub const ROUTES_TYPE_URL: &str = "type.googleapis.com/ambient.waypoint.v1.ServiceRoutes";

/// gRPC path of the delta ADS method.
pub const DELTA_ADS_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

/// gRPC path of the certificate signing method.
pub const CREATE_CERTIFICATE_PATH: &str =
    "/istio.v1.auth.IstioCertificateService/CreateCertificate";

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Name as _;

    #[test]
    fn type_urls_match_message_names() {
        assert_eq!(ADDRESS_TYPE_URL, workload::Address::type_url());
        assert_eq!(AUTHORIZATION_TYPE_URL, security::Authorization::type_url());
        assert_eq!(L7_POLICY_TYPE_URL, waypoint::L7Policy::type_url());
        assert_eq!(REQUEST_AUTHN_TYPE_URL, waypoint::RequestAuthn::type_url());
        assert_eq!(ROUTES_TYPE_URL, waypoint::ServiceRoutes::type_url());
    }
}
