//! The names of ambient waypoints that every part of the mesh agrees on: the Gateway class,
//! the labels that bind traffic to a waypoint, and those a deployer puts on what it makes.

/// The Gateway class of waypoints.
pub const WAYPOINT_CLASS: &str = "istio-waypoint";
/// The controller of that class (Istio's), in the GatewayClass.
pub const WAYPOINT_CONTROLLER: &str = "istio.io/mesh-controller";
/// Label on a waypoint Gateway saying which traffic it handles.
pub const WAYPOINT_FOR_LABEL: &str = "istio.io/waypoint-for";
/// Label (on a namespace, service or pod) naming the waypoint to use.
pub const USE_WAYPOINT_LABEL: &str = "istio.io/use-waypoint";
/// Label naming the namespace of that waypoint, when it is another.
pub const USE_WAYPOINT_NAMESPACE_LABEL: &str = "istio.io/use-waypoint-namespace";
/// Label Gateway implementations put on a gateway's own pods and Service.
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";
/// Label marking the objects the deployer made (and may therefore delete).
pub const MANAGED_LABEL: &str = "gateway.istio.io/managed";
/// Its value.
pub const MANAGED_VALUE: &str = "istio.io-mesh-controller";
/// Label that enrols (or, with `none`, opts out) a namespace or pod.
pub const DATAPLANE_MODE_LABEL: &str = "istio.io/dataplane-mode";
/// Label saying a pod terminates HBONE itself (`http`).
pub const TUNNEL_LABEL: &str = "networking.istio.io/tunnel";
/// The HBONE port of a waypoint when its Gateway lists no HBONE listener.
pub const DEFAULT_HBONE_PORT: u16 = 15008;
