//! The admin endpoints of the local cluster's proxies (`/config_dump` of a node's ztunnel or
//! of a waypoint pod), reached inside their network namespaces.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use anyhow::{bail, Context as _};

use crate::cluster::plan::{NodePlan, ZTUNNEL_ADMIN};
use crate::netns;

/// A waypoint's admin endpoint, inside its pod.
pub const WAYPOINT_ADMIN: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 15000);

/// How long an admin request may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(3);

/// ztunnel's `/config_dump` on `node`.
pub fn config_dump(node: &NodePlan) -> anyhow::Result<serde_json::Value> {
    let who = format!("ztunnel on {}", node.name);
    admin_config_dump(&node.netns, ZTUNNEL_ADMIN, &who)
}

/// `/config_dump` from the admin endpoint `addr` in network namespace `netns`; `who` names
/// the proxy in errors.
pub fn admin_config_dump(
    netns: &str,
    addr: SocketAddrV4,
    who: &str,
) -> anyhow::Result<serde_json::Value> {
    get_json(netns, SocketAddr::V4(addr), "/config_dump", who)
}

/// `GET path` as JSON from `addr` in network namespace `netns`; `who` names the server in
/// errors.
pub fn get_json(
    netns: &str,
    addr: SocketAddr,
    path: &str,
    who: &str,
) -> anyhow::Result<serde_json::Value> {
    let resp = netns::http_get(netns, addr, path, ADMIN_TIMEOUT)
        .with_context(|| format!("asking {who} (is it running?)"))?;
    if resp.status != 200 {
        bail!("{who} answered {path} with {}", resp.status);
    }
    serde_json::from_str(&resp.body).with_context(|| format!("{who}: {path} is not JSON"))
}
