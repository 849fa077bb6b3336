//! The config API: delta ADS (`DeltaAggregatedResources`) of `istio.workload.Address` and
//! `istio.security.Authorization` resources, and for waypoints `ambient.waypoint.v1.L7Policy`
//! and `RequestAuthn` and `ServiceRoutes`, served next to the CA on port 15012. Each type goes
//! only to streams that subscribe to it (node tunnels never ask for the waypoint types).
//!
//! Data flow:
//!
//! ```text
//! watch<Arc<XdsSnapshot>> ──▶ snapshots::spawn_preparer ──▶ watch<Arc<PreparedSnapshot>> ──▶ one task per stream
//!   (whoever produces config)   debounce, encode, version          (shared, read-only)          Connection: what the proxy
//!                                                                                               holds, what is in flight
//! ```
//!
//! - [`XdsSnapshot`] is the input: every resource of both types, by resource name. Whoever
//!   produces config (the config directory translated by `translate`, or a test) publishes it
//!   on a `tokio::sync::watch` channel; [`translated`] adapts a channel of any other state.
//! - The preparer coalesces changes that come within the debounce window into one push, then
//!   encodes every resource once (canonical protobuf, map entries sorted) and gives it a version:
//!   a hash of its bytes, so identical content has the identical version across restarts
//!   ([`versions`]).
//! - Each stream is one task driving a sans-IO [`connection::Connection`]: per type, what the
//!   proxy holds (its ACKed versions), what it refused (NACKed versions, not re-sent until they
//!   change), and the one response in flight. Changes that arrive while a response is in flight
//!   wait for its ACK or NACK and are then sent together.
//!
//! Subscriptions: the first request of a type subscribes to every resource of that type
//! (wildcard); a type a client never asks for is never sent to it (node tunnels do not ask for
//! routes). Explicit names in `resource_names_subscribe` are accepted and treated as a
//! wildcard too, and unsubscriptions are ignored: every proxy gets every resource, as Istio
//! ambient does for node tunnels.
//!
//! Threads: the preparer and the stream tasks run on the server's runtime; encoding and hashing
//! a snapshot runs on tokio's blocking pool.
//!
//! Invariants: at most one response per type in flight per stream; a resource is never sent
//! to a stream at a version the proxy already ACKed or NACKed; nothing received is unwrapped.

pub mod connection;
pub mod metrics;
pub mod server;
pub mod snapshots;
pub mod syncz;
pub mod versions;

use std::collections::BTreeMap;
use std::time::Duration;

pub use metrics::XdsMetrics;
pub use server::XdsService;
pub use snapshots::translated;

/// Default time to wait for a burst of config changes to settle before pushing.
pub const DEFAULT_PUSH_DEBOUNCE: Duration = Duration::from_millis(100);

/// Every resource the control plane serves, by type and resource name: the input of the server.
///
/// Names follow the wire conventions: a workload's uid (`<cluster>//v1/Pod/<ns>/<name>`), a
/// service's `<ns>/<hostname>`, a policy's `<ns>/<name>`. The server does not check that a
/// name matches its content; the proxy does, and refuses the response when it does not.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct XdsSnapshot {
    /// `istio.workload.Address` resources (workloads and services) by resource name.
    pub addresses: BTreeMap<String, proto::workload::Address>,
    /// `istio.security.Authorization` resources (policies) by resource name.
    pub authorizations: BTreeMap<String, proto::security::Authorization>,
    /// `ambient.waypoint.v1.L7Policy` resources (waypoint policies) by resource name.
    pub l7_policies: BTreeMap<String, proto::waypoint::L7Policy>,
    /// `ambient.waypoint.v1.RequestAuthn` resources (JWT rules) by resource name.
    pub request_authns: BTreeMap<String, proto::waypoint::RequestAuthn>,
    /// `ambient.waypoint.v1.ServiceRoutes` (L7 routes of a service) by service
    /// `<ns>/<hostname>`.
    pub routes: BTreeMap<String, proto::waypoint::ServiceRoutes>,
}

/// How the config API behaves.
#[derive(Debug, Clone)]
pub struct XdsOptions {
    /// Snapshot changes closer together than this are pushed together. The push waits until
    /// no change came for this long, but never more than ten times this after the first
    /// change of a burst. Zero pushes every change as soon as it is prepared.
    pub push_debounce: Duration,
}

impl Default for XdsOptions {
    fn default() -> Self {
        XdsOptions {
            push_debounce: DEFAULT_PUSH_DEBOUNCE,
        }
    }
}

/// The resource types served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResourceType {
    /// `type.googleapis.com/istio.workload.Address`.
    Address,
    /// `type.googleapis.com/istio.security.Authorization`.
    Authorization,
    /// `type.googleapis.com/ambient.waypoint.v1.L7Policy` (waypoints subscribe to it).
    L7Policy,
    /// `type.googleapis.com/ambient.waypoint.v1.RequestAuthn` (waypoints subscribe to it).
    RequestAuthn,
    /// `type.googleapis.com/ambient.waypoint.v1.ServiceRoutes` (waypoints only).
    Routes,
}

impl ResourceType {
    /// Every type, in the order of [`ResourceType::index`].
    pub const ALL: [ResourceType; 5] = [
        ResourceType::Address,
        ResourceType::Authorization,
        ResourceType::L7Policy,
        ResourceType::RequestAuthn,
        ResourceType::Routes,
    ];

    /// The type URL on the wire.
    pub fn type_url(self) -> &'static str {
        match self {
            ResourceType::Address => proto::ADDRESS_TYPE_URL,
            ResourceType::Authorization => proto::AUTHORIZATION_TYPE_URL,
            ResourceType::L7Policy => proto::L7_POLICY_TYPE_URL,
            ResourceType::RequestAuthn => proto::REQUEST_AUTHN_TYPE_URL,
            ResourceType::Routes => proto::ROUTES_TYPE_URL,
        }
    }

    /// The type a type URL names, if it is one we serve.
    pub fn from_type_url(type_url: &str) -> Option<Self> {
        ResourceType::ALL
            .into_iter()
            .find(|t| t.type_url() == type_url)
    }

    /// The value of the `type` label in metrics: `address`, `authorization`, `l7_policy`,
    /// `request_authn` or `routes`.
    pub fn label(self) -> &'static str {
        match self {
            ResourceType::Address => "address",
            ResourceType::Authorization => "authorization",
            ResourceType::L7Policy => "l7_policy",
            ResourceType::RequestAuthn => "request_authn",
            ResourceType::Routes => "routes",
        }
    }

    /// Position in [`ResourceType::ALL`], for per-type arrays.
    pub fn index(self) -> usize {
        match self {
            ResourceType::Address => 0,
            ResourceType::Authorization => 1,
            ResourceType::L7Policy => 2,
            ResourceType::RequestAuthn => 3,
            ResourceType::Routes => 4,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_urls_round_trip_and_index_all() {
        for (i, t) in ResourceType::ALL.into_iter().enumerate() {
            assert_eq!(ResourceType::from_type_url(t.type_url()), Some(t));
            assert_eq!(t.index(), i);
        }
        assert_eq!(
            ResourceType::from_type_url("type.googleapis.com/other"),
            None
        );
    }
}
