//! Building a cluster's network out of namespaces (see [`super::plan`] for the picture), and
//! each node's files: CNI config, IPAM directory, istiod-lite token.
//!
//! Every link is created inside a namespace of the cluster, so interface names never collide
//! with the host's or another cluster's, and deleting the namespaces removes them all. IP
//! forwarding is switched on inside each node's namespace only, never on the host.

use anyhow::Context as _;

use super::plan::{self, NodePlan};
use super::state::{write_atomic, write_secret, ClusterState, StateDir};
use crate::netns;
use crate::sys::ip_in;

/// Creates the underlay and every node. Stops at the first error (the caller tears down).
pub fn create(cluster: &ClusterState) -> anyhow::Result<()> {
    let ul = &cluster.underlay_netns;
    netns::add(ul)?;
    ip_in(ul, &["link", "add", "br0", "type", "bridge"])?;
    ip_in(ul, &["link", "set", "br0", "up"])?;
    for node in &cluster.nodes {
        create_node(ul, node, &cluster.nodes)
            .with_context(|| format!("creating node {}", node.name))?;
    }
    Ok(())
}

fn create_node(ul: &str, node: &NodePlan, all: &[NodePlan]) -> anyhow::Result<()> {
    let ns = &node.netns;
    netns::add(ns)?;
    netns::set_net_sysctl(ns, "ipv4/ip_forward", "1")?;
    let port = format!("n{}", node.index);
    ip_in(
        ul,
        &[
            "link", "add", &port, "type", "veth", "peer", "name", "ul0", "netns", ns,
        ],
    )?;
    ip_in(ul, &["link", "set", &port, "master", "br0", "up"])?;
    let addr = format!("{}/24", node.underlay_ip);
    ip_in(ns, &["addr", "add", &addr, "dev", "ul0"])?;
    ip_in(ns, &["link", "set", "ul0", "up"])?;
    // Every node's underlay address is on-link already, so all routes can go in now.
    for other in all.iter().filter(|o| o.index != node.index) {
        let via = other.underlay_ip.to_string();
        ip_in(ns, &["route", "add", &other.pod_cidr, "via", &via])?;
    }
    Ok(())
}

/// Writes each node's directories, CNI network list and token, and istiod-lite's tokens file.
pub fn write_node_files(state: &StateDir, cluster: &ClusterState) -> anyhow::Result<()> {
    let mut tokens = Vec::new();
    for node in &cluster.nodes {
        for dir in [
            state.cni_conf_dir(&node.name),
            state.cni_bin_dir(&node.name),
            state.ipam_dir(&node.name),
        ] {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let conflist = node.conflist(&state.ipam_dir(&node.name));
        let text = serde_json::to_string_pretty(&conflist).context("encoding the conflist")?;
        write_atomic(
            &state.cni_conf_dir(&node.name).join(plan::CONFLIST_FILE),
            text.as_bytes(),
        )?;
        let token = plan::random_hex(24);
        write_secret(&state.node_token(&node.name), token.as_bytes())?;
        tokens.push((node.name.clone(), token));
    }
    let pairs: Vec<(&str, &str)> = tokens
        .iter()
        .map(|(n, t)| (n.as_str(), t.as_str()))
        .collect();
    write_secret(&state.tokens_file(), plan::tokens_yaml(&pairs).as_bytes())
}
