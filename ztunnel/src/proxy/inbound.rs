//! Inbound: HBONE on 15008 and plaintext on 15006, delivered to the application inside the
//! pod with the client's own source address where the kernel allows it.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;

use http::StatusCode;
use mesh::copy::Abort;
use mesh::hbone::connect::forwarded_for;
use mesh::hbone::{H2Config, H2Stream, InboundRequest, Server, ServerCerts};
use mesh::metrics::Reporter;
use mesh::model::Workload;
use mesh::rbac::Connection;
use mesh::Identity;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::Instrument;

use super::authz::{self, Inbound};
use super::hop::Hop;
use super::limits::Slot;
use super::live::{proxied, Kind, LiveConnections, LiveGuard, PodKey};
use super::source::Source;
use super::waypoint::{self, Front, Origin};
use super::{stopped, PodContext, ProxyInputs};
use crate::telemetry::{ConnectionRecord, Direction, FailureReason, Peer};

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
    /// The destination is behind a waypoint and the peer is not that waypoint.
    #[error("the destination is behind a waypoint; connections must come through it")]
    BypassesWaypoint,
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
            InboundError::BypassesWaypoint => StatusCode::UNAUTHORIZED,
            InboundError::NotServed(_) | InboundError::Upstream { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }
}

/// Accepts HBONE connections for the pod until told to stop. Set-up (TLS and HTTP/2) has
/// one deadline and a cap on connections in set-up at once (see [`Server`]). A connection is
/// registered as a tunnel of the pod once its peer has authenticated, so a drain that ends
/// closes it (and releases the pod's namespace) rather than leave it to the client's idle
/// timeout; unauthenticated ones are never counted.
pub async fn serve_hbone(
    inputs: ProxyInputs,
    pod: PodContext,
    listener: TcpListener,
    stop: watch::Receiver<super::Stop>,
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
            let (tcp, peer) = inputs.limits.acceptor().accept(&listener, "HBONE").await;
            local_congestion_from_this_node(&inputs, &pod, &tcp, peer);
            let (server, handler) = (server.clone(), handler.clone());
            let on_authenticated = tunnel_guard(inputs.live.clone(), key.clone());
            // The pod leaving the mesh sends GOAWAY at once: clients take new streams
            // elsewhere while these drain.
            let removed = stopped(per_connection.clone());
            let span = tracing::debug_span!("inbound_hbone", pod = %pod.uid, peer = %peer);
            tokio::spawn(
                async move {
                    let serve = server.serve_connection_until(
                        tcp,
                        peer,
                        handler,
                        removed,
                        on_authenticated,
                    );
                    if let Err(e) = serve.await {
                        tracing::debug!(error = %e, "HBONE connection ended with an error");
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

/// A tunnel from a pod on this node gets the local congestion control ([`super::hop`]); the listener's
/// default is for tunnels from other nodes.
fn local_congestion_from_this_node(
    inputs: &ProxyInputs,
    pod: &PodContext,
    tcp: &TcpStream,
    peer: SocketAddr,
) {
    let Some(cc) = &inputs.sockets.local_congestion else {
        return;
    };
    if pod.tunnel_hop(&inputs.store, peer.ip(), &inputs.config.node_name) == Hop::Node {
        if let Err(e) = cc.apply(&socket2::SockRef::from(tcp)) {
            tracing::debug!(error = %e, %peer, "local congestion control not set");
        }
    }
}

/// Lives as long as an HBONE connection; resolves when the registry closes the connection.
type TunnelGuard = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The server's `on_authenticated` hook for one connection to `pod`: registers it as a tunnel
/// of the pod once its peer is known, or refuses it (`None`) when the pod is no longer served.
fn tunnel_guard(
    live: Arc<LiveConnections>,
    pod: PodKey,
) -> impl FnOnce(&Identity) -> Option<TunnelGuard> {
    move |peer: &Identity| {
        let Some(mut guard) = live.register(&pod, Kind::Tunnel) else {
            tracing::debug!(%peer, "HBONE connection refused: the pod is no longer served");
            return None;
        };
        Some(Box::pin(async move {
            // Its streams were closed just before; the server closes the connection after a
            // short grace for their resets to reach the client.
            let reason = guard.closed().await;
            tracing::debug!(%reason, "HBONE connection closed");
        }))
    }
}

async fn handle_hbone(inputs: ProxyInputs, pod: PodContext, req: InboundRequest) {
    // Each stream is a connection to the pod: it counts against the pod's cap.
    let slot = match pod.cap.admit() {
        Ok(slot) => slot,
        Err(_) => {
            req.reject(StatusCode::SERVICE_UNAVAILABLE);
            return inputs
                .telemetry
                .failure(Direction::inbound, FailureReason::connection_limit);
        }
    };
    // The copy gets a task of its own: this one's state (and what set-up looked up) is freed
    // once the stream is accepted, and an idle connection holds only what copying needs.
    let Some(HboneReady {
        record,
        tunnel,
        app,
        guard,
    }) = setup_hbone(&inputs, &pod, req).await
    else {
        return;
    };
    proxied::spawn(record, tunnel, app, guard, slot);
}

/// An accepted HBONE stream and the app connection it goes to.
struct HboneReady {
    record: ConnectionRecord,
    tunnel: H2Stream,
    app: TcpStream,
    guard: LiveGuard,
}

/// Checks, authorizes and connects one CONNECT request; `None` when it was refused or failed
/// (already answered, counted and logged).
async fn setup_hbone(
    inputs: &ProxyInputs,
    pod: &PodContext,
    req: InboundRequest,
) -> Option<HboneReady> {
    let target = req.target();
    let peer_id = req.peer().clone();
    // In-pod mode: the tunnel's TCP source is the client pod's own address. The `forwarded`
    // header is the client's claim and is never trusted for policy or for the source address,
    // except from the waypoint in front of this pod, which vouches for the client it proxies.
    let client_ip = req.peer_addr().ip();
    let store = &inputs.store;
    let dst_workload = pod
        .workload(store)
        .filter(|w| w.addresses.contains(&target.ip()));
    let origin = match &dst_workload {
        Some(w) => Front::of(store, w).judge(&peer_id, req.headers()),
        None => Origin::Direct,
    };
    let (src_identity, src_addr, via) = match &origin {
        Origin::ViaWaypoint { via, client, addr } => (
            client.clone().unwrap_or_else(|| via.clone()),
            addr.unwrap_or(req.peer_addr()),
            Some(via.clone()),
        ),
        Origin::Direct | Origin::Bypass => (peer_id.clone(), req.peer_addr(), None),
    };
    let src = Peer {
        workload: store.workload_by_ip("", src_addr.ip()),
        identity: Some(src_identity.clone()),
        addr: Some(src_addr),
    };
    let dst = Peer {
        workload: dst_workload.clone().or_else(|| pod.workload(store)),
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
    )
    .for_pod(&pod.metrics);
    if let Some(via) = &via {
        record.set_via(via.clone());
    }
    let Some(dst_workload) = dst_workload else {
        let err = InboundError::NotThisPod(target.ip());
        tracing::info!(peer = %peer_id, %target, "HBONE request for another pod refused");
        req.reject(err.status());
        record.set_flags("NR");
        record.fail(FailureReason::unknown_destination, &err);
        return None;
    };
    if origin == Origin::Bypass {
        let err = InboundError::BypassesWaypoint;
        tracing::info!(target: "authz", peer = %peer_id, %target, "HBONE connection that bypasses the destination's waypoint refused");
        req.reject(err.status());
        record.set_flags("DENY");
        record.fail(FailureReason::denied, &err);
        return None;
    }
    let inbound = Inbound {
        conn: Connection {
            src_identity: Some(src_identity),
            src_ip: waypoint::source_ip(&origin, client_ip),
            dst_ip: target.ip(),
            dst_port: target.port(),
        },
        via,
    };
    // Registered before the verdict: a policy push from here on re-checks this connection, so
    // none can slip in between the check and the registration.
    let Some(guard) = inputs
        .live
        .register(&pod.key(), Kind::Inbound(inbound.clone()))
    else {
        // A new stream on an HBONE connection that outlived the pod's listener.
        let err = InboundError::NotServed(pod.uid.to_string());
        req.reject(err.status());
        record.set_flags("NR");
        record.fail(FailureReason::other, &err);
        return None;
    };
    let decision = authz::check(store, &dst_workload, &inbound);
    inputs
        .telemetry
        .authorization(dst_workload.namespace(), &decision);
    record.set_policy(decision.reason.to_string());
    if !decision.allowed {
        tracing::info!(target: "authz", connection = %inbound, reason = %decision.reason, "HBONE connection denied");
        req.reject(StatusCode::UNAUTHORIZED);
        record.set_flags("DENY");
        record.fail(FailureReason::denied, &decision.reason);
        return None;
    }
    // The client's port is only taken from a `forwarded` address naming the tunnel's own peer:
    // a wrong claim can only make the bind clash and fall back (see `source`).
    let client_port = forwarded_for(req.headers())
        .filter(|f| f.ip() == client_ip)
        .map(|f| f.port());
    let source = Source::for_client(client_ip, client_port, target);
    match inputs
        .limits
        .connect(pod, &inputs.home, target, Hop::App, source)
        .await
    {
        Ok(mut app) => match req.accept() {
            Ok(tunnel) => Some(HboneReady {
                record,
                tunnel,
                app,
                guard,
            }),
            Err(e) => {
                // The client went away before the answer: the app must not see a clean end.
                app.abort();
                record.fail(FailureReason::hbone, &e);
                None
            }
        },
        Err(source) => {
            let reason = FailureReason::of_io(&source);
            let err = InboundError::Upstream {
                addr: target,
                source,
            };
            req.reject(err.status());
            record.fail(reason, &err);
            None
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

    /// The `reason` of `ztunnel_connection_failures_total`.
    fn failure(&self) -> FailureReason {
        match self {
            PlaintextRefusal::TunnelPort => FailureReason::denied,
            PlaintextRefusal::UnknownWorkload | PlaintextRefusal::NotThisPod(_) => {
                FailureReason::unknown_destination
            }
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
    stop: watch::Receiver<super::Stop>,
) {
    let accept = async {
        loop {
            let (stream, peer, slot) = inputs
                .limits
                .accept(
                    &inputs.telemetry,
                    &pod,
                    &listener,
                    "inbound plaintext",
                    Direction::inbound,
                )
                .await;
            let (inputs, pod) = (inputs.clone(), pod.clone());
            let span = tracing::debug_span!("inbound_plaintext", pod = %pod.uid, client = %peer);
            tokio::spawn(handle_plaintext(inputs, pod, stream, peer, slot).instrument(span));
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
    mut stream: TcpStream,
    peer: SocketAddr,
    slot: Slot,
) {
    let Some(orig_dst) = socket2::SockRef::from(&stream)
        .original_dst_v4()
        .ok()
        .and_then(|a| a.as_socket())
    else {
        tracing::warn!("no original destination on an inbound connection");
        inputs
            .telemetry
            .failure(Direction::inbound, FailureReason::other);
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
    )
    .for_pod(&pod.metrics);
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
            return record.fail(refusal.failure(), &refusal);
        }
    };
    let conn = Connection {
        src_identity: None,
        src_ip: peer.ip(),
        dst_ip: orig_dst.ip(),
        dst_port: orig_dst.port(),
    };
    // Registered before the verdict, as on the HBONE path.
    let inbound = Inbound::direct(conn);
    let Some(guard) = inputs
        .live
        .register(&pod.key(), Kind::Inbound(inbound.clone()))
    else {
        // Accepted just as the pod left the mesh.
        record.set_flags("NR");
        let err = InboundError::NotServed(pod.uid.to_string());
        return record.fail(FailureReason::other, &err);
    };
    let decision = authz::check(store, &dst_workload, &inbound);
    inputs
        .telemetry
        .authorization(dst_workload.namespace(), &decision);
    record.set_policy(decision.reason.to_string());
    if !decision.allowed {
        tracing::info!(target: "authz", connection = %inbound, reason = %decision.reason, "plaintext connection denied");
        record.set_flags("DENY");
        // As a denied HBONE client's app is reset, so is a denied plaintext client.
        stream.abort();
        return record.fail(FailureReason::denied, &decision.reason);
    }
    // Never the client's own port here: the intercepted connection already holds that 4-tuple
    // in this namespace.
    let source = Source::for_client(peer.ip(), None, orig_dst);
    match inputs
        .limits
        .connect(&pod, &inputs.home, orig_dst, Hop::App, source)
        .await
    {
        Ok(app) => proxied::spawn(record, stream, app, guard, slot),
        Err(e) => {
            // The application refused: the client sees the reset it would have seen directly.
            stream.abort();
            record.fail(FailureReason::of_io(&e), &e);
        }
    }
}

#[cfg(test)]
mod tunnel_tests;

#[cfg(test)]
mod plaintext_tests;
