//! The cluster's names and addresses, decided before anything is created (pure).
//!
//! ```text
//!  <name>-ul (underlay)               <name>-n<i> (node i)                  <name>-<ns>-<pod>
//!  br0 ── n<i> ══ veth ══ ul0 10.250.0.i/24
//!                          cni0 10.244.i.1/24 (CNI bridge plugin) ══ veth ══ eth0 10.244.i.k/24
//! ```
//!
//! Each node routes the other nodes' pod CIDRs via their underlay address.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;

use anyhow::ensure;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// The underlay network joining the nodes.
pub const UNDERLAY_CIDR: &str = "10.250.0.0/24";
/// Most nodes a cluster may have (underlay and pod CIDRs have one octet for the node).
pub const MAX_NODES: u8 = 200;
/// istiod-lite's gRPC port (CA and xDS).
pub const ISTIOD_PORT: u16 = 15012;
/// istiod-lite's monitoring port.
pub const ISTIOD_MONITORING_PORT: u16 = 15014;
/// ztunnel's admin address inside its node (never reachable from outside it).
pub const ZTUNNEL_ADMIN: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 15000);
/// The CNI node agent's admin endpoint (`/logging`), in each node's namespace.
pub const AGENT_ADMIN: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9877);
/// The CNI node agent's monitoring port on its node's underlay address (not 15014 as on
/// Kubernetes: istiod-lite holds n1's underlay 15014).
pub const AGENT_MONITORING_PORT: u16 = 15015;
/// Name of the CNI network list every node uses.
pub const NETWORK_NAME: &str = "meshnet";
/// File name of that list in each node's `cni/net.d`.
pub const CONFLIST_FILE: &str = "10-meshnet.conflist";

/// One node: where it lives and its addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodePlan {
    /// `n<index>`.
    pub name: String,
    /// 1-based.
    pub index: u8,
    /// Its network namespace, `<cluster>-<name>`.
    pub netns: String,
    /// Address on the underlay, `10.250.0.<index>`.
    pub underlay_ip: Ipv4Addr,
    /// The pods' subnet, `10.244.<index>.0/24`.
    pub pod_cidr: String,
    /// The pods' gateway: the node's `cni0` bridge, `10.244.<index>.1`.
    pub gateway: Ipv4Addr,
}

impl NodePlan {
    /// Node `index` (1-based) of cluster `cluster`.
    pub fn new(cluster: &str, index: u8) -> NodePlan {
        let name = format!("n{index}");
        NodePlan {
            netns: format!("{cluster}-{name}"),
            name,
            index,
            underlay_ip: Ipv4Addr::new(10, 250, 0, index),
            pod_cidr: format!("10.244.{index}.0/24"),
            gateway: Ipv4Addr::new(10, 244, index, 1),
        }
    }

    /// ztunnel's readiness endpoint (`/healthz/ready`).
    pub fn ztunnel_readiness(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(self.underlay_ip, 15021))
    }

    /// ztunnel's Prometheus endpoint.
    pub fn ztunnel_metrics(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(self.underlay_ip, 15020))
    }

    /// The CNI node agent's monitoring endpoint (`/metrics`).
    pub fn agent_monitoring(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(self.underlay_ip, AGENT_MONITORING_PORT))
    }

    /// The node's CNI network list: the bridge plugin with host-local IPAM. The node agent
    /// appends itself to `plugins` when it starts.
    pub fn conflist(&self, ipam_dir: &Path) -> serde_json::Value {
        json!({
            "cniVersion": "1.0.0",
            "name": NETWORK_NAME,
            "plugins": [{
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": true,
                "ipMasq": false,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{ "subnet": self.pod_cidr }]],
                    "routes": [{ "dst": "0.0.0.0/0" }],
                    "dataDir": ipam_dir,
                },
            }],
        })
    }
}

/// The nodes of a cluster of `count` nodes.
pub fn nodes(cluster: &str, count: u8) -> Vec<NodePlan> {
    (1..=count).map(|i| NodePlan::new(cluster, i)).collect()
}

/// The underlay's namespace.
pub fn underlay_netns(cluster: &str) -> String {
    format!("{cluster}-ul")
}

/// A pod's namespace.
pub fn pod_netns(cluster: &str, namespace: &str, pod: &str) -> String {
    format!("{cluster}-{namespace}-{pod}")
}

/// The prefix of every namespace of a cluster.
pub fn netns_prefix(cluster: &str) -> String {
    format!("{cluster}-")
}

/// istiod-lite's address: node n1's underlay address.
pub fn istiod_addr() -> SocketAddrV4 {
    SocketAddrV4::new(NodePlan::new("", 1).underlay_ip, ISTIOD_PORT)
}

/// istiod-lite's monitoring address.
pub fn istiod_monitoring_addr() -> SocketAddrV4 {
    SocketAddrV4::new(NodePlan::new("", 1).underlay_ip, ISTIOD_MONITORING_PORT)
}

/// Checks a cluster name: it prefixes every namespace, so no `-` (a cluster `a` would own the
/// namespaces of a cluster `a-b`), and short.
pub fn check_cluster_name(name: &str) -> anyhow::Result<()> {
    ensure!(
        !name.is_empty()
            && name.len() <= 16
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()),
        "cluster name {name:?}: use 1 to 16 lowercase letters or digits, starting with a letter \
         (it prefixes every network namespace, so no '-')"
    );
    ensure!(
        name != "e2e",
        "cluster name \"e2e\" is the e2e test harness's prefix: pick another"
    );
    Ok(())
}

/// Checks a Kubernetes name (namespace, pod): a DNS label.
pub fn check_k8s_name(what: &str, name: &str) -> anyhow::Result<()> {
    ensure!(
        !name.is_empty()
            && name.len() <= 63
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !name.starts_with('-')
            && !name.ends_with('-'),
        "{what} {name:?}: use 1 to 63 lowercase letters, digits or '-' (not first or last)"
    );
    Ok(())
}

/// istiod-lite's tokens file: one bearer token per node.
pub fn tokens_yaml(tokens: &[(&str, &str)]) -> String {
    let mut yaml = String::from("tokens:\n");
    for (node, token) in tokens {
        yaml.push_str(&format!("  - token: \"{token}\"\n    node: {node}\n"));
    }
    yaml
}

/// A random hex string of `bytes` random bytes.
pub fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_follow_the_node_index() {
        let nodes = nodes("mesh", 3);
        assert_eq!(nodes.len(), 3);
        let n2 = &nodes[1];
        assert_eq!(n2.name, "n2");
        assert_eq!(n2.netns, "mesh-n2");
        assert_eq!(n2.underlay_ip, Ipv4Addr::new(10, 250, 0, 2));
        assert_eq!(n2.pod_cidr, "10.244.2.0/24");
        assert_eq!(n2.gateway, Ipv4Addr::new(10, 244, 2, 1));
        assert_eq!(n2.ztunnel_readiness().to_string(), "10.250.0.2:15021");
        assert_eq!(istiod_addr().to_string(), "10.250.0.1:15012");
        assert_eq!(istiod_monitoring_addr().to_string(), "10.250.0.1:15014");
        assert_eq!(underlay_netns("mesh"), "mesh-ul");
        assert_eq!(pod_netns("mesh", "demo", "web"), "mesh-demo-web");
    }

    #[test]
    fn conflist_is_a_bridge_with_host_local_ipam() {
        let conf = NodePlan::new("mesh", 2).conflist(Path::new("/s/nodes/n2/ipam"));
        assert_eq!(conf["cniVersion"], "1.0.0");
        assert_eq!(conf["name"], "meshnet");
        let bridge = &conf["plugins"][0];
        assert_eq!(bridge["type"], "bridge");
        assert_eq!(bridge["bridge"], "cni0");
        assert_eq!(bridge["isGateway"], true);
        assert_eq!(bridge["ipMasq"], false);
        assert_eq!(bridge["ipam"]["type"], "host-local");
        assert_eq!(bridge["ipam"]["ranges"][0][0]["subnet"], "10.244.2.0/24");
        assert_eq!(bridge["ipam"]["routes"][0]["dst"], "0.0.0.0/0");
        assert_eq!(bridge["ipam"]["dataDir"], "/s/nodes/n2/ipam");
        assert_eq!(conf["plugins"].as_array().map(Vec::len), Some(1));
    }

    #[test]
    fn names_are_checked() {
        assert!(check_cluster_name("mesh").is_ok());
        assert!(check_cluster_name("t1234").is_ok());
        assert!(check_cluster_name("a-b").is_err());
        assert!(check_cluster_name("1a").is_err());
        assert!(check_cluster_name("").is_err());
        assert!(check_cluster_name("e2e").is_err());
        assert!(check_k8s_name("pod", "web-1").is_ok());
        assert!(check_k8s_name("pod", "Web").is_err());
        assert!(check_k8s_name("pod", "-web").is_err());
    }

    #[test]
    fn tokens_name_each_node() {
        let yaml = tokens_yaml(&[("n1", "aa"), ("n2", "bb")]);
        assert_eq!(
            yaml,
            "tokens:\n  - token: \"aa\"\n    node: n1\n  - token: \"bb\"\n    node: n2\n"
        );
        assert_eq!(random_hex(4).len(), 8);
    }
}
