//! HBONE in (15008): each CONNECT stream is one client connection to an original destination.
//!
//! The authority must name a service VIP (on one of its ports) or a workload IP the store
//! knows, and (when the binding is configured) one whose `waypoint` is this waypoint; anything
//! else is refused with 400, as ztunnel refuses a target it does not serve.
//! Accepted streams are answered 200, then their first bytes decide how they are served:
//! HTTP ([`crate::http`]) or opaque TCP ([`crate::tcp`]).

use std::sync::Arc;

use http::StatusCode;
use mesh::hbone::{connect::forwarded_for, Baggage, InboundRequest};
use tracing::Instrument;

use std::time::Duration;

use bytes::Bytes;
use mesh::model::AppProtocol;

use crate::detect::{detect, Prefixed, Protocol};
use crate::http::Downstream;
use crate::select::{Destination, TargetError};
use crate::Shared;

/// Handles one CONNECT stream to its end.
pub async fn handle(shared: Arc<Shared>, req: InboundRequest) {
    let target = req.target();
    let peer = req.peer().clone();
    let destination = match Destination::resolve(&shared.store, target) {
        Ok(d) => d,
        Err(e) => {
            tracing::info!(peer = %peer, %target, error = %e, "HBONE request refused");
            req.reject(StatusCode::BAD_REQUEST);
            return;
        }
    };
    if let Some(me) = &shared.config.binding {
        if !destination.bound_to(&shared.store, me) {
            let e = TargetError::NotBound(destination.name());
            tracing::info!(peer = %peer, %target, error = %e, "HBONE request refused");
            req.reject(StatusCode::BAD_REQUEST);
            return;
        }
    }
    let peer_addr = req.peer_addr();
    let client_addr = forwarded_for(req.headers())
        .filter(|f| f.ip() == peer_addr.ip())
        .unwrap_or(peer_addr);
    // In-pod mode: the tunnel leaves from the client pod's own address. Its workload counts
    // only if its identity is the one the TLS session proved.
    let source = shared
        .store
        .workload_by_ip("", peer_addr.ip())
        .filter(|w| w.identity == peer);
    let baggage = req
        .headers()
        .get("baggage")
        .and_then(|v| v.to_str().ok())
        .map(Baggage::parse);
    // Until its first bytes say what it is, a tunnel holds a pending slot: clients that open
    // tunnels and send nothing cannot pile up past `max_pending_streams`.
    let Ok(pending) = shared.pending.clone().try_acquire_owned() else {
        tracing::debug!(peer = %peer, %target, "HBONE request refused: too many tunnels waiting for their first bytes");
        req.reject(StatusCode::SERVICE_UNAVAILABLE);
        return;
    };
    let stream = match req.accept() {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(error = %e, "client left before the tunnel was accepted");
            return;
        }
    };
    // A port that declares its protocol is not sniffed on a short fuse: declared TCP passes
    // through at once (server-first protocols wait for nothing), declared HTTP waits as long
    // as a client may take to send its headers.
    let declared = destination.service().and_then(|s| {
        s.ports
            .iter()
            .find(|p| p.service_port == target.port())
            .map(|p| p.app_protocol)
    });
    let wait = match declared {
        Some(AppProtocol::Tcp) => Duration::ZERO,
        Some(AppProtocol::Http11 | AppProtocol::Http2 | AppProtocol::Grpc) => {
            shared.config.header_read_timeout
        }
        _ => shared.config.protocol_detect_timeout,
    };
    let detected = if wait.is_zero() {
        Ok((Protocol::Tcp, Prefixed::new(Bytes::new(), stream)))
    } else {
        detect(stream, wait).await
    };
    drop(pending);
    let (protocol, io) = match detected {
        Ok(d) => d,
        Err(e) => {
            tracing::debug!(error = %e, "tunnel failed during protocol detection");
            return;
        }
    };
    let down = Arc::new(Downstream {
        peer,
        peer_addr,
        client_addr,
        source,
        target,
        destination,
        baggage,
        protocol,
    });
    let span = tracing::debug_span!("tunnel", %target, %protocol, client = %client_addr);
    async move {
        match protocol {
            Protocol::Tcp => crate::tcp::passthrough(shared, down, io).await,
            Protocol::Http1 | Protocol::Http2 => {
                if let Err(e) = crate::http::serve(shared, down, io).await {
                    tracing::debug!(error = %e, "HTTP connection ended with an error");
                }
            }
        }
    }
    .instrument(span)
    .await;
}
