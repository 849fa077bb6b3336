//! Stopping without dropping a connection: the old ztunnel's half of an upgrade.
//!
//! An upgrade starts a newer ztunnel beside the running one. The newer one takes every pod from
//! the CNI agent and opens its in-pod listeners in the same `SO_REUSEPORT` groups as ours;
//! then we get SIGTERM (from `meshctl rollout restart ztunnel`, or from the kubelet once the
//! DaemonSet's surge pod is ready) and [`drain`]:
//!
//! 1. Every pod proxy stops ([`Pods::stop_all`]): its listeners close. The agent sets
//!    `net.ipv4.tcp_migrate_req=1` in every pod namespace, so connections still in our accept
//!    queues (and half-open ones) move to the newer listener instead of being reset. Inbound
//!    HBONE connections get GOAWAY, so peers' pools open new connections, which land on the
//!    newer ztunnel, and put no new stream on ours.
//! 2. Proxied connections (plain TCP and HBONE streams, inbound and outbound) go on until they
//!    end by themselves or `--drain-deadline-secs` passes; so do the inbound HBONE connections,
//!    which close by themselves once their GOAWAY is final and their last stream is done.
//! 3. What is still open then is closed cleanly ([`CloseReason::Shutdown`]: FIN, END_STREAM),
//!    then the HBONE connections under them (GOAWAY), and the process exits.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::inpod::Pods;
use crate::proxy::live::{CloseReason, LiveConnections};

/// How often the drain looks whether every proxied connection has ended.
const POLL: Duration = Duration::from_millis(50);
/// How long closed connections get to finish their clean close before the process exits.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Stops taking connections and drains the live ones for up to `deadline` (see the module
/// docs). Returns how many proxied connections had to be closed at the deadline.
pub async fn drain(pods: &Pods, live: &Arc<LiveConnections>, deadline: Duration) -> usize {
    let started = Instant::now();
    let stopped = pods.stop_all();
    let open = live.counts();
    tracing::info!(
        pods = stopped,
        connections = open.connections,
        tunnels = open.tunnels,
        deadline_secs = deadline.as_secs_f64(),
        "stopping: listeners closed, GOAWAY sent; draining live connections"
    );
    // Wait for the HBONE connections too, not only the proxied ones: a peer may have sent a
    // CONNECT before it read our GOAWAY; it is still served, and the connection ends by itself
    // once the GOAWAY is final and its last stream is done.
    let end = started + deadline;
    while !live.is_empty() && Instant::now() < end {
        tokio::time::sleep(POLL).await;
    }
    let closed = live.close_all(&CloseReason::Shutdown { deadline });
    if closed > 0 {
        tracing::info!(
            closed,
            "drain deadline reached; closing the remaining connections cleanly"
        );
    }
    let waited = Instant::now() + CLOSE_WAIT;
    while !live.is_empty() && Instant::now() < waited {
        tokio::time::sleep(POLL).await;
    }
    tracing::info!(
        closed,
        left = live.len(),
        drain_secs = started.elapsed().as_secs_f64(),
        "drained"
    );
    closed
}

#[cfg(test)]
mod tests;
