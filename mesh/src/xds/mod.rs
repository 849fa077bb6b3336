//! The delta ADS client: keeps a [`crate::store::Store`] in sync with the control plane.
//!
//! [`XdsClient`] opens `DeltaAggregatedResources` (gRPC, TLS by default) and subscribes to every
//! `istio.workload.Address` and `istio.security.Authorization` resource (wildcard: the first
//! request of each type has an empty subscribe list), plus the opt-in
//! [`XdsConfig::extra_types`] (a waypoint's L7 routes, policies and RequestAuthns). Each response is decoded and checked as a
//! whole: if any resource fails to decode or to convert into the [`crate::model`], the response
//! is NACKed (`error_detail`: code 3 InvalidArgument naming each bad resource and why) and
//! nothing from it is applied; otherwise its additions and removals are applied to the store as
//! one batch and ACKed with the response nonce.
//!
//! Fail static: when the stream breaks, the store keeps what it has and the proxy keeps serving
//! with it. The client reconnects forever with jittered exponential backoff (capped, 15 s by
//! default) and, on the new stream, tells the server what it holds in
//! `initial_resource_versions`, so the server only sends what changed and removes what is gone.
//!
//! Progress is published on a watch channel ([`XdsStatus`]): connected or not, the last
//! ACKed version and the last NACK per type, for readiness and `/config_dump`.
//!
//! The client is one task: run [`XdsClient::run`] on the control-plane runtime.

mod backoff;
mod client;
mod decode;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use backoff::BackoffConfig;
pub use client::XdsClient;

pub use decode::{ResourceType, ADDRESSES, AUTHORIZATIONS, L7_POLICIES, REQUEST_AUTHNS, ROUTES};

/// The resource types the client always subscribes to, in the order it subscribes.
pub const TYPES: [ResourceType; 2] = [ADDRESSES, AUTHORIZATIONS];

/// The extra types a waypoint's policy subscribes to ([`XdsConfig::extra_types`]): L7
/// policies and RequestAuthns.
pub const WAYPOINT_POLICY_TYPES: [ResourceType; 2] = [L7_POLICIES, REQUEST_AUTHNS];

/// Everything a waypoint subscribes to besides [`TYPES`]: its services' L7 routes, and
/// [`WAYPOINT_POLICY_TYPES`].
pub const WAYPOINT_TYPES: [ResourceType; 3] = [ROUTES, L7_POLICIES, REQUEST_AUTHNS];

/// Where the control plane is and how to talk to it.
#[derive(Clone)]
pub struct XdsConfig {
    /// The control plane's address: `https://host:15012` with [`XdsTransport::Tls`],
    /// `http://host:port` with [`XdsTransport::Plaintext`].
    pub address: String,
    /// TLS settings, or plaintext for local tests.
    pub transport: XdsTransport,
    /// Bearer token sent as `authorization: Bearer <token>` (refused over plaintext).
    pub token: Option<BearerToken>,
    /// Who is asking: node id and metadata.
    pub node: NodeInfo,
    /// Reconnection delays.
    pub backoff: BackoffConfig,
    /// Types subscribed to after [`TYPES`] (opt-in: a node tunnel leaves this empty, a
    /// waypoint adds [`WAYPOINT_TYPES`]).
    pub extra_types: Vec<ResourceType>,
}

impl std::fmt::Debug for XdsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdsConfig")
            .field("address", &self.address)
            .field("transport", &self.transport)
            .field("token", &self.token)
            .field("node", &self.node)
            .field("backoff", &self.backoff)
            .field("extra_types", &self.extra_types)
            .finish()
    }
}

/// How the connection to the control plane is secured.
#[derive(Debug, Clone)]
pub enum XdsTransport {
    /// TLS, verifying the server against a trust anchor (the normal case).
    Tls(XdsTls),
    /// No TLS, for in-process tests and local demos only: the address must be `http://` and no
    /// token may be configured.
    Plaintext,
}

/// TLS settings for the control plane connection.
#[derive(Clone)]
pub struct XdsTls {
    /// PEM trust anchor(s) for the server's certificate.
    pub root_cert_pem: String,
    /// The name the server's certificate must carry, e.g. `istiod-lite.istio-system.svc`.
    pub server_name: String,
    /// A client certificate to present, if the control plane authenticates clients by mTLS.
    pub client_cert: Option<ClientCert>,
}

impl std::fmt::Debug for XdsTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdsTls")
            .field("server_name", &self.server_name)
            .field("client_cert", &self.client_cert.is_some())
            .finish_non_exhaustive()
    }
}

/// A client certificate chain and its key, both PEM.
#[derive(Clone)]
pub struct ClientCert {
    /// Certificate chain, leaf first.
    pub chain_pem: String,
    /// Private key (PKCS#8 PEM).
    pub key_pem: String,
}

/// Where the bearer token comes from.
#[derive(Clone)]
pub enum BearerToken {
    /// A fixed token.
    Static(String),
    /// A file re-read on every connection (projected service account tokens rotate).
    File(PathBuf),
}

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BearerToken::Static(_) => f.write_str("Static(<redacted>)"),
            BearerToken::File(path) => f.debug_tuple("File").field(path).finish(),
        }
    }
}

/// The node identification sent in the first requests of each stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeInfo {
    /// Node id, e.g. `ztunnel~10.0.0.5~ztunnel-abc.istio-system~istio-system.svc.cluster.local`.
    pub id: String,
    /// String metadata (`NAME`, `NAMESPACE`, `INSTANCE_IPS`, `NODE_NAME`, ...).
    pub metadata: BTreeMap<String, String>,
}

impl NodeInfo {
    /// The node info a node tunnel sends, in Istio's format: id
    /// `ztunnel~<ip>~<pod>.<namespace>~<namespace>.svc.cluster.local` and metadata `NAME`,
    /// `NAMESPACE`, `INSTANCE_IPS` and `NODE_NAME`.
    pub fn ztunnel(ip: IpAddr, pod_name: &str, namespace: &str, node_name: &str) -> Self {
        NodeInfo {
            id: format!("ztunnel~{ip}~{pod_name}.{namespace}~{namespace}.svc.cluster.local"),
            metadata: BTreeMap::from([
                ("NAME".to_string(), pod_name.to_string()),
                ("NAMESPACE".to_string(), namespace.to_string()),
                ("INSTANCE_IPS".to_string(), ip.to_string()),
                ("NODE_NAME".to_string(), node_name.to_string()),
            ]),
        }
    }

    pub(crate) fn to_proto(&self) -> proto::envoy::config::core::v3::Node {
        use prost_types::value::Kind;
        proto::envoy::config::core::v3::Node {
            id: self.id.clone(),
            metadata: Some(prost_types::Struct {
                fields: self
                    .metadata
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.clone(),
                            prost_types::Value {
                                kind: Some(Kind::StringValue(v.clone())),
                            },
                        )
                    })
                    .collect(),
            }),
            ..Default::default()
        }
    }
}

/// Why an [`XdsClient`] could not be built from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum XdsError {
    /// The address is unusable or does not fit the transport.
    #[error("xDS address {address:?} is unusable: {reason}")]
    Address {
        /// The configured address.
        address: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The trust anchor is not PEM certificates.
    #[error("xDS root certificate is unusable: {0}")]
    Root(String),
    /// The client certificate chain is not PEM certificates.
    #[error("xDS client certificate is unusable: {0}")]
    ClientCert(String),
    /// A static token cannot be sent as a header, or a token is configured over plaintext.
    #[error("xDS token is unusable: {0}")]
    Token(String),
    /// tonic refused the TLS settings.
    #[error("xDS TLS settings refused: {0}")]
    Tls(String),
}

/// What the client has achieved so far; published on [`XdsClient::status`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct XdsStatus {
    /// Whether a stream is established right now.
    pub connected: bool,
    /// Streams established since start.
    pub connections: u64,
    /// Why the last stream ended or the last attempt failed.
    pub last_error: Option<String>,
    /// Per type URL: versions and errors.
    pub types: BTreeMap<String, TypeStatus>,
    /// The type URLs subscribed to; empty means [`TYPES`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subscribed: Vec<String>,
}

impl XdsStatus {
    /// Whether every subscribed type has been ACKed at least once since start: the proxy has a
    /// first full configuration. Stays true across disconnections (fail static).
    pub fn is_synced(&self) -> bool {
        let acked = |t: &str| self.types.get(t).is_some_and(|s| s.acks > 0);
        if self.subscribed.is_empty() {
            TYPES.iter().all(|t| acked(t.type_url()))
        } else {
            self.subscribed.iter().all(|t| acked(t))
        }
    }
}

/// Progress on one resource type.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TypeStatus {
    /// `system_version_info` of the last ACKed response.
    pub acked_version: Option<String>,
    /// Nonce of the last ACKed response.
    pub acked_nonce: Option<String>,
    /// Responses ACKed since start.
    pub acks: u64,
    /// Responses NACKed since start.
    pub nacks: u64,
    /// Why the last NACKed response was rejected (kept after later ACKs, for debugging).
    pub last_nack: Option<String>,
    /// Resources of this type held.
    pub resources: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ztunnel_node_info_uses_istio_format() {
        let node = NodeInfo::ztunnel(
            "10.0.0.5".parse().expect("ip"),
            "ztunnel-abc",
            "istio-system",
            "node-1",
        );
        assert_eq!(
            node.id,
            "ztunnel~10.0.0.5~ztunnel-abc.istio-system~istio-system.svc.cluster.local"
        );
        let wire = node.to_proto();
        let fields = wire.metadata.expect("metadata").fields;
        assert_eq!(
            fields.get("NODE_NAME").and_then(|v| v.kind.clone()),
            Some(prost_types::value::Kind::StringValue("node-1".into()))
        );
        assert_eq!(fields.len(), 4);
    }

    #[test]
    fn synced_needs_an_ack_of_every_type() {
        let mut status = XdsStatus::default();
        assert!(!status.is_synced());
        status.types.insert(
            proto::ADDRESS_TYPE_URL.into(),
            TypeStatus {
                acks: 1,
                ..Default::default()
            },
        );
        assert!(!status.is_synced());
        status.types.insert(
            proto::AUTHORIZATION_TYPE_URL.into(),
            TypeStatus {
                acks: 1,
                ..Default::default()
            },
        );
        assert!(status.is_synced());
    }

    #[test]
    fn debug_output_hides_secrets() {
        let config = XdsConfig {
            address: "https://x:15012".into(),
            transport: XdsTransport::Tls(XdsTls {
                root_cert_pem: "root".into(),
                server_name: "x".into(),
                client_cert: Some(ClientCert {
                    chain_pem: "chain".into(),
                    key_pem: "SECRET-KEY".into(),
                }),
            }),
            token: Some(BearerToken::Static("SECRET-TOKEN".into())),
            node: NodeInfo::default(),
            backoff: BackoffConfig::default(),
            extra_types: Vec::new(),
        };
        let text = format!("{config:?}");
        assert!(!text.contains("SECRET"), "{text}");
    }
}
