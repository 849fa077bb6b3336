//! Opaque TCP through the waypoint: a tunnel whose bytes are not HTTP goes, byte for byte, to
//! one endpoint of the destination chosen when the tunnel is detected as TCP, under the L4
//! policy the destination's ztunnel would apply (`mesh::rbac`, policies in scope of the
//! endpoint, the original client as source).

use std::sync::Arc;

use mesh::hbone::{ConnectMeta, H2Stream};
use mesh::rbac::{evaluate, Connection};
use tokio::time::Instant;

use crate::balance::LbPolicy;
use crate::detect::Prefixed;
use crate::error::ProxyError;
use crate::http::Downstream;
use crate::select::{pick_service_endpoint, pick_workload, Destination, Upstream};
use crate::telemetry::{tcp_labels, PeerInfo};
use crate::Shared;

/// Passes the tunnel through to an endpoint until both directions end.
pub async fn passthrough(shared: Arc<Shared>, down: Arc<Downstream>, io: Prefixed<H2Stream>) {
    let start = Instant::now();
    let src = PeerInfo {
        workload: down.source.clone(),
        identity: Some(down.peer.clone()),
    };
    let picked = pick(&shared, &down);
    let (dst, service) = match &picked {
        Ok(up) => (
            PeerInfo {
                workload: Some(up.workload.clone()),
                identity: Some(up.workload.identity.clone()),
            },
            up.service.clone(),
        ),
        Err(_) => (PeerInfo::default(), down.destination.service().cloned()),
    };
    let mut labels = tcp_labels(&src, &dst, &service);
    shared.telemetry.tcp_opened(&labels);
    let outcome = match picked {
        Ok(up) => forward(&shared, &down, up, io).await,
        Err(e) => Err((e.flag(), e.to_string(), 0, 0)),
    };
    let (flag, error, from_client, to_client) = match outcome {
        Ok((a, b)) => ("-", None, a, b),
        Err((flag, e, a, b)) => (flag, Some(e), a, b),
    };
    labels.response_flags = flag.to_string();
    shared.telemetry.tcp_closed(&labels, from_client, to_client);
    tracing::info!(
        target: "access",
        protocol = "tcp",
        destination = %down.destination.name(),
        target = %down.target,
        src_identity = %down.peer,
        dst_identity = %dst.identity.as_ref().map_or_else(|| "-".to_string(), ToString::to_string),
        bytes_sent = to_client,
        bytes_received = from_client,
        duration_ms = start.elapsed().as_millis() as u64,
        response_flags = flag,
        error = error.as_deref().unwrap_or("-"),
        "connection closed"
    );
}

fn pick(shared: &Shared, down: &Downstream) -> Result<Upstream, ProxyError> {
    let hbone_port = shared.config.endpoint_hbone_port;
    match &down.destination {
        Destination::Workload(w) => pick_workload(&shared.balancer, w, down.target, hbone_port),
        Destination::Service(s) => {
            let policy = shared
                .routes()
                .get(&s.key())
                .map(|r| r.lb_policy)
                .unwrap_or(LbPolicy::LeastRequest);
            pick_service_endpoint(
                &shared.store,
                &shared.balancer,
                policy,
                &s.key(),
                down.target.port(),
                down.target,
                hbone_port,
                &|uid| shared.outliers.is_ejected(&s.key(), uid),
            )
        }
    }
}

type Outcome = Result<(u64, u64), (&'static str, String, u64, u64)>;

async fn forward(
    shared: &Shared,
    down: &Downstream,
    up: Upstream,
    io: Prefixed<H2Stream>,
) -> Outcome {
    let conn = Connection {
        src_identity: Some(down.peer.clone()),
        src_ip: down.client_addr.ip(),
        dst_ip: up.addr.ip(),
        dst_port: up.addr.port(),
    };
    let policies = shared.store.policies_for(&up.workload);
    let decision = evaluate(&policies, &conn);
    if !decision.allowed {
        tracing::info!(target: "authz", connection = %conn, reason = %decision.reason, "TCP connection denied at the waypoint");
        return Err(("DENY", decision.reason.to_string(), 0, 0));
    }
    let meta = ConnectMeta {
        baggage: down.baggage.clone(),
        forwarded_for: Some(down.client_addr),
        traceparent: None,
        // The destination's ztunnel believes this only from us, the waypoint in front of it.
        origin: Some(down.peer.clone()),
    };
    let mut upstream = shared
        .upstreams
        .dialer()
        .dial(&up, &meta)
        .await
        .map_err(|e| (e.flag(), e.to_string(), 0, 0))?;
    let mut io = io;
    match mesh::copy::copy_bidirectional(&mut io, &mut upstream).await {
        Ok(t) => Ok((t.a_to_b, t.b_to_a)),
        Err(mesh::copy::CopyError::Io {
            transferred,
            source,
            side,
        }) => {
            let flag = match side {
                mesh::copy::Side::A => "DC",
                mesh::copy::Side::B => "UC",
            };
            Err((
                flag,
                source.to_string(),
                transferred.a_to_b,
                transferred.b_to_a,
            ))
        }
    }
}
