//! Where a pod socket's peer is, and the socket settings that follow from it.
//!
//! Keepalive and the node's congestion control are for real networks. A socket whose bytes stay
//! on this node — to the pod's own application over the pod's loopback, or a tunnel to another
//! pod on this node over the node's bridge — takes the local congestion control instead
//! (`--local-congestion-control`, `reno` by default): a pacing algorithm such as BBR, the
//! default on many nodes, arms a timer per burst there and probes for a bottleneck the path does
//! not have (on the local cluster, same-node bulk gained about a fifth: docs/performance.md,
//! "Levers tried"). Reno needs no privilege: every kernel has it and allows it to every process.
//! A socket to the pod's own application also skips keepalive: the kernel at the other end is
//! this one, and it answers the probes even for a hung application, so they can never find
//! anything.

use std::io;
use std::net::IpAddr;

use mesh::store::Store;
use mesh::tcp_congestion::CongestionControl;
use mesh::tcp_keepalive::TcpKeepalive;
use socket2::{SockRef, Socket};

/// Where a socket's peer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hop {
    /// The pod's own application: the kernel delivers on the pod's loopback.
    App,
    /// Another pod on this node: the node's bridge, no wire.
    Node,
    /// Another node, or a destination outside the mesh.
    Network,
}

/// [`Hop::Node`] when `ip` on `network` is a workload on `node` (a tunnel's other end: looked up
/// once per tunnel, they are pooled), else [`Hop::Network`].
pub fn toward(store: &Store, network: &str, ip: IpAddr, node: &str) -> Hop {
    match store.workload_by_ip(network, ip) {
        Some(w) if w.node == node => Hop::Node,
        _ => Hop::Network,
    }
}

/// The settings of every socket ztunnel opens or accepts in a pod, by [`Hop`].
#[derive(Debug, Clone, Default)]
pub struct SocketSettings {
    /// TCP keepalive on sockets that cross a bridge or a network (`None`: off).
    pub keepalive: Option<TcpKeepalive>,
    /// Congestion control of sockets that stay on this node (`None`: the node's default).
    pub local_congestion: Option<CongestionControl>,
}

impl SocketSettings {
    /// Applies what `hop` calls for to `socket` (not yet connected, or a listener whose
    /// accepted connections inherit it). Only a keepalive error is an error.
    pub fn apply(&self, socket: &Socket, hop: Hop) -> io::Result<()> {
        if hop != Hop::App {
            if let Some(keepalive) = &self.keepalive {
                keepalive.apply(SockRef::from(socket))?;
            }
        }
        if hop != Hop::Network {
            if let Some(cc) = &self.local_congestion {
                // Checked at start; should this socket still refuse it, the connection goes on
                // with the node's default rather than fail for a tuning.
                if let Err(e) = cc.apply(socket) {
                    tracing::debug!(error = %e, congestion_control = %cc, "local congestion control not set");
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used)]

    use super::*;

    fn congestion(socket: &Socket) -> String {
        let name = socket.tcp_congestion().expect("TCP_CONGESTION");
        String::from_utf8_lossy(&name)
            .trim_end_matches('\0')
            .to_string()
    }

    fn tcp() -> Socket {
        Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket")
    }

    #[test]
    fn local_hops_get_the_local_congestion_control_and_only_the_app_skips_keepalive() {
        let settings = SocketSettings {
            keepalive: Some(TcpKeepalive::default()),
            local_congestion: Some("reno".parse().expect("reno")),
        };
        let default = congestion(&tcp());
        for (hop, keepalive) in [(Hop::App, false), (Hop::Node, true), (Hop::Network, true)] {
            let socket = tcp();
            settings.apply(&socket, hop).expect("apply");
            let cc = congestion(&socket);
            if hop == Hop::Network {
                assert_eq!(cc, default, "{hop:?} keeps the node's default");
            } else {
                assert_eq!(cc, "reno", "{hop:?}");
            }
            assert_eq!(
                socket.keepalive().expect("SO_KEEPALIVE"),
                keepalive,
                "{hop:?}"
            );
        }
    }
}
