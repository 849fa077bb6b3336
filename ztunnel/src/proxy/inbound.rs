//! Inbound: HBONE on 15008 and plaintext on 15006, delivered to the application inside the
//! pod with the client's own source address where the kernel allows it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::StatusCode;
use mesh::hbone::{H2Config, InboundRequest, Server, ServerCerts};
use mesh::metrics::Reporter;
use mesh::model::Workload;
use mesh::rbac::Connection;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::Instrument;

use super::authz;
use super::live::{copy_until_closed, finish, Kind};
use super::{stopped, PodContext, ProxyInputs};
use crate::telemetry::{ConnectionRecord, Peer};

/// How long an HBONE connection closed by a drain is still driven, to send its streams' resets.
const TUNNEL_CLOSE_GRACE: std::time::Duration = std::time::Duration::from_millis(100);

/// Why an inbound request is refused before reaching the application.
#[derive(Debug, thiserror::Error)]
pub enum InboundError {
    /// The CONNECT targets an address that is not this pod's.
    #[error("target {0} is not an address of this pod")]
    NotThisPod(IpAddr),
    /// The pod has left the mesh (its proxy stopped; live connections are draining): a new
    /// stream on an HBONE connection opened before that, or a connection accepted as it left.
    #[error("pod {0} is no longer served: removed from the mesh")]
    NotServed(String),
    /// The application could not be reached.
    #[error("connect to the application at {addr} failed: {source}")]
    Upstream {
        /// The application address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

impl InboundError {
    fn status(&self) -> StatusCode {
        match self {
            InboundError::NotThisPod(_) => StatusCode::BAD_REQUEST,
            InboundError::NotServed(_) | InboundError::Upstream { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }
}

/// Accepts HBONE connections for the pod until told to stop. Each one is registered as a
/// tunnel of the pod, so a drain that ends closes it (and releases the pod's namespace) rather
/// than leave it to the client's idle timeout.
pub async fn serve_hbone(
    inputs: ProxyInputs,
    pod: PodContext,
    listener: TcpListener,
    stop: watch::Receiver<bool>,
) {
    let certs: Arc<dyn ServerCerts> = Arc::new(inputs.certs.subscribe(&pod.identity));
    let server = Arc::new(Server::new(H2Config::default(), certs));
    let handler = {
        let (inputs, pod) = (inputs.clone(), pod.clone());
        move |req: InboundRequest| {
            let (inputs, pod) = (inputs.clone(), pod.clone());
            async move { handle_hbone(inputs, pod, req).await }
        }
    };
    let key = pod.key();
    let per_connection = stop.clone();
    let accept = async {
        loop {
            let (tcp, peer) = super::accept(&listener, "HBONE").await;
            let Some(mut guard) = inputs.live.register(&key, Kind::Tunnel) else {
                tracing::debug!(%peer, "HBONE connection refused: the pod is no longer served");
                continue;
            };
            let (server, handler) = (server.clone(), handler.clone());
            // The pod leaving the mesh sends GOAWAY at once: clients take new streams
            // elsewhere while these drain.
            let removed = stopped(per_connection.clone());
            let span = tracing::debug_span!("inbound_hbone", pod = %pod.uid, peer = %peer);
            tokio::spawn(
                async move {
                    let serve = server.serve_connection_until(tcp, peer, handler, removed);
                    tokio::pin!(serve);
                    tokio::select! {
                        res = &mut serve => {
                            if let Err(e) = res {
                                tracing::debug!(error = %e, "HBONE connection ended with an error");
                            }
                        }
                        reason = guard.closed() => {
                            // Its streams were closed just before: drive the connection a moment
                            // longer so their resets reach the client, then drop it.
                            let _ = tokio::time::timeout(TUNNEL_CLOSE_GRACE, &mut serve).await;
                            tracing::debug!(%reason, "HBONE connection closed");
                        }
                    }
                }
                .instrument(span),
            );
        }
    };
    tokio::select! {
        () = accept => {}
        () = stopped(stop) => {}
    }
}

async fn handle_hbone(inputs: ProxyInputs, pod: PodContext, req: InboundRequest) {
    let target = req.target();
    let peer_id = req.peer().clone();
    // In-pod mode: the tunnel's TCP source is the client pod's own address. The `forwarded`
    // header is the client's claim and is never trusted for policy or for the source address.
    let client_ip = req.peer_addr().ip();
    let store = &inputs.store;
    let dst_workload = pod.workload(store);
    let src = Peer {
        workload: store.workload_by_ip("", client_ip),
        identity: Some(peer_id.clone()),
        addr: Some(req.peer_addr()),
    };
    let dst = Peer {
        workload: dst_workload.clone(),
        identity: Some(pod.identity.clone()),
        addr: Some(target),
    };
    let mut record = ConnectionRecord::open(
        &inputs.telemetry,
        Reporter::destination,
        src,
        dst,
        None,
        true,
    );
    let Some(dst_workload) = dst_workload.filter(|w| w.addresses.contains(&target.ip())) else {
        let err = InboundError::NotThisPod(target.ip());
        tracing::info!(peer = %peer_id, %target, "HBONE request for another pod refused");
        req.reject(err.status());
        record.set_flags("NR");
        return record.close(0, 0, Some(&err));
    };
    let conn = Connection {
        src_identity: Some(peer_id.clone()),
        src_ip: client_ip,
        dst_ip: target.ip(),
        dst_port: target.port(),
    };
    let decision = authz::check(store, &dst_workload, &conn);
    record.set_policy(decision.reason.to_string());
    if !decision.allowed {
        tracing::info!(target: "authz", connection = %conn, reason = %decision.reason, "HBONE connection denied");
        req.reject(StatusCode::UNAUTHORIZED);
        record.set_flags("DENY");
        return record.close(0, 0, Some(&decision.reason));
    }
    let Some(guard) = inputs.live.register(&pod.key(), Kind::Inbound(conn)) else {
        // A new stream on an HBONE connection that outlived the pod's listener.
        let err = InboundError::NotServed(pod.uid.clone());
        req.reject(err.status());
        record.set_flags("NR");
        return record.close(0, 0, Some(&err));
    };
    let spoof = Some(client_ip).filter(|ip| *ip != target.ip());
    match pod.connect(&inputs.home, target, spoof).await {
        Ok(app) => match req.accept() {
            Ok(tunnel) => finish(record, copy_until_closed(tunnel, app, guard).await),
            Err(e) => record.close(0, 0, Some(&e)),
        },
        Err(source) => {
            let err = InboundError::Upstream {
                addr: target,
                source,
            };
            req.reject(err.status());
            record.close(0, 0, Some(&err));
        }
    }
}

/// Why a plaintext connection is refused before policy is checked.
#[derive(Debug, thiserror::Error)]
enum PlaintextRefusal {
    /// Reaching the tunnel's own ports through the plaintext path is never legitimate: a
    /// refusal by the mesh, not an upstream failure.
    #[error("connection to a tunnel port refused")]
    TunnelPort,
    /// Without the control plane's view of this pod no policy can be checked: fail closed.
    #[error("destination workload unknown; policy cannot be checked")]
    UnknownWorkload,
    /// The original destination is not one of the pod's addresses (as on the HBONE path).
    #[error(transparent)]
    NotThisPod(InboundError),
}

impl PlaintextRefusal {
    /// The `response_flags` value.
    fn flags(&self) -> &'static str {
        match self {
            PlaintextRefusal::TunnelPort | PlaintextRefusal::UnknownWorkload => "DENY",
            PlaintextRefusal::NotThisPod(_) => "NR",
        }
    }
}

/// The pod's workload, when a plaintext connection to `orig_dst` may go on to the policy
/// check: not a tunnel port, the pod known to the control plane, and `orig_dst` one of its own
/// addresses.
fn plaintext_destination(
    workload: Option<Arc<Workload>>,
    orig_dst: SocketAddr,
) -> Result<Arc<Workload>, PlaintextRefusal> {
    if mesh::hbone::RESERVED_PORTS.contains(&orig_dst.port()) {
        return Err(PlaintextRefusal::TunnelPort);
    }
    let workload = workload.ok_or(PlaintextRefusal::UnknownWorkload)?;
    if !workload.addresses.contains(&orig_dst.ip()) {
        return Err(PlaintextRefusal::NotThisPod(InboundError::NotThisPod(
            orig_dst.ip(),
        )));
    }
    Ok(workload)
}

/// Serves plaintext inbound (from outside the mesh) until told to stop.
pub async fn serve_plaintext(
    inputs: ProxyInputs,
    pod: PodContext,
    listener: TcpListener,
    stop: watch::Receiver<bool>,
) {
    let accept = async {
        loop {
            let (stream, peer) = super::accept(&listener, "inbound plaintext").await;
            let (inputs, pod) = (inputs.clone(), pod.clone());
            let span = tracing::debug_span!("inbound_plaintext", pod = %pod.uid, client = %peer);
            tokio::spawn(handle_plaintext(inputs, pod, stream, peer).instrument(span));
        }
    };
    tokio::select! {
        () = accept => {}
        () = stopped(stop) => {}
    }
}

async fn handle_plaintext(
    inputs: ProxyInputs,
    pod: PodContext,
    stream: TcpStream,
    peer: SocketAddr,
) {
    let _ = stream.set_nodelay(true);
    let Some(orig_dst) = socket2::SockRef::from(&stream)
        .original_dst_v4()
        .ok()
        .and_then(|a| a.as_socket())
    else {
        tracing::warn!("no original destination on an inbound connection");
        return;
    };
    let store = &inputs.store;
    let src = Peer {
        workload: store.workload_by_ip("", peer.ip()),
        identity: None,
        addr: Some(peer),
    };
    let dst = Peer {
        workload: pod.workload(store),
        identity: Some(pod.identity.clone()),
        addr: Some(orig_dst),
    };
    let mut record = ConnectionRecord::open(
        &inputs.telemetry,
        Reporter::destination,
        src,
        dst,
        None,
        false,
    );
    let dst_workload = match plaintext_destination(pod.workload(store), orig_dst) {
        Ok(w) => w,
        Err(refusal) => {
            match &refusal {
                PlaintextRefusal::TunnelPort => {
                    tracing::info!(target: "authz", %peer, %orig_dst, "plaintext connection to a tunnel port refused");
                }
                PlaintextRefusal::NotThisPod(_) => {
                    tracing::info!(%peer, %orig_dst, "plaintext connection for another pod refused");
                }
                PlaintextRefusal::UnknownWorkload => {}
            }
            record.set_flags(refusal.flags());
            return record.close(0, 0, Some(&refusal));
        }
    };
    let conn = Connection {
        src_identity: None,
        src_ip: peer.ip(),
        dst_ip: orig_dst.ip(),
        dst_port: orig_dst.port(),
    };
    let decision = authz::check(store, &dst_workload, &conn);
    record.set_policy(decision.reason.to_string());
    if !decision.allowed {
        tracing::info!(target: "authz", connection = %conn, reason = %decision.reason, "plaintext connection denied");
        record.set_flags("DENY");
        return record.close(0, 0, Some(&decision.reason));
    }
    let Some(guard) = inputs.live.register(&pod.key(), Kind::Inbound(conn)) else {
        // Accepted just as the pod left the mesh.
        record.set_flags("NR");
        return record.close(0, 0, Some(&InboundError::NotServed(pod.uid.clone())));
    };
    match pod.connect(&inputs.home, orig_dst, Some(peer.ip())).await {
        Ok(app) => finish(record, copy_until_closed(stream, app, guard).await),
        Err(e) => record.close(0, 0, Some(&e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::workload as pb;

    fn pod() -> Arc<Workload> {
        Arc::new(
            Workload::try_from(pb::Workload {
                uid: "Kubernetes//v1/Pod/demo/b".into(),
                name: "b".into(),
                namespace: "demo".into(),
                addresses: vec![vec![10, 12, 0, 2]],
                tunnel_protocol: pb::TunnelProtocol::Hbone as i32,
                service_account: "b".into(),
                ..Default::default()
            })
            .expect("valid workload"),
        )
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("address")
    }

    #[test]
    fn plaintext_to_one_of_the_pods_own_addresses_goes_on_to_policy() {
        let w = plaintext_destination(Some(pod()), addr("10.12.0.2:7000")).expect("allowed");
        assert_eq!(w.uid, "Kubernetes//v1/Pod/demo/b");
    }

    #[test]
    fn plaintext_whose_original_destination_is_not_the_pods_is_refused_like_hbone() {
        let err = plaintext_destination(Some(pod()), addr("10.12.0.3:7000"))
            .expect_err("another pod's address");
        assert!(matches!(
            err,
            PlaintextRefusal::NotThisPod(InboundError::NotThisPod(ip)) if ip == addr("10.12.0.3:7000").ip()
        ));
        assert_eq!(err.flags(), "NR", "the flag the HBONE path sets");
        assert_eq!(
            err.to_string(),
            "target 10.12.0.3 is not an address of this pod"
        );
        // A service VIP or the node's address is no more the pod's than another pod's.
        assert!(plaintext_destination(Some(pod()), addr("10.96.0.10:80")).is_err());
    }

    #[test]
    fn plaintext_to_a_tunnel_port_or_an_unknown_pod_is_denied() {
        let err = plaintext_destination(Some(pod()), addr("10.12.0.2:15008")).expect_err("tunnel");
        assert_eq!(
            (err.flags(), err.to_string().as_str()),
            ("DENY", "connection to a tunnel port refused")
        );
        let err = plaintext_destination(None, addr("10.12.0.2:7000")).expect_err("unknown");
        assert_eq!(err.flags(), "DENY");
    }
}
