//! Inbound: HBONE on 15008 and plaintext on 15006, delivered to the application inside the
//! pod with the client's own source address where the kernel allows it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::StatusCode;
use mesh::hbone::{H2Config, InboundRequest, Server, ServerCerts};
use mesh::metrics::Reporter;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::Instrument;

use super::{stopped, PodContext, ProxyInputs};
use crate::telemetry::{ConnectionRecord, Peer};

/// Why an inbound request is refused before reaching the application.
#[derive(Debug, thiserror::Error)]
pub enum InboundError {
    /// The CONNECT targets an address that is not this pod's.
    #[error("target {0} is not an address of this pod")]
    NotThisPod(IpAddr),
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
            InboundError::Upstream { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// Serves HBONE for the pod until told to stop.
pub async fn serve_hbone(
    inputs: ProxyInputs,
    pod: PodContext,
    listener: TcpListener,
    stop: watch::Receiver<bool>,
) {
    let certs: Arc<dyn ServerCerts> = Arc::new(inputs.certs.subscribe(&pod.identity));
    let server = Arc::new(Server::new(H2Config::default(), certs));
    let span = tracing::debug_span!("inbound_hbone", pod = %pod.uid);
    let handler = move |req: InboundRequest| {
        let (inputs, pod) = (inputs.clone(), pod.clone());
        async move { handle_hbone(inputs, pod, req).await }
    };
    tokio::select! {
        () = server.serve(listener, handler).instrument(span) => {}
        () = stopped(stop) => {}
    }
}

async fn handle_hbone(inputs: ProxyInputs, pod: PodContext, req: InboundRequest) {
    let target = req.target();
    let peer_id = req.peer().clone();
    // The tunnel's TCP source is the client pod's own address (in-pod mode).
    let client_ip = mesh::hbone::connect::forwarded_for(req.headers())
        .map(|a| a.ip())
        .filter(|ip| !ip.is_loopback())
        .unwrap_or(req.peer_addr().ip());
    let store = &inputs.store;
    let dst_workload = pod.workload(store);
    let src = Peer {
        workload: store.workload_by_ip("", req.peer_addr().ip()),
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
    let ours = dst_workload
        .as_ref()
        .map(|w| w.addresses.contains(&target.ip()))
        .unwrap_or(false);
    if !ours {
        let err = InboundError::NotThisPod(target.ip());
        tracing::info!(peer = %peer_id, %target, "HBONE request for another pod refused");
        req.reject(err.status());
        record.set_flags("NR");
        return record.close(0, 0, Some(&err));
    }
    let spoof = Some(client_ip).filter(|ip| *ip != target.ip());
    match pod.connect(&inputs.home, target, spoof).await {
        Ok(app) => match req.accept() {
            Ok(tunnel) => match mesh::copy::copy_bidirectional(tunnel, app).await {
                Ok(t) => record.close(t.a_to_b, t.b_to_a, None),
                Err(e) => record.close(0, 0, Some(&e)),
            },
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

/// Serves plaintext inbound (from outside the mesh) until told to stop.
pub async fn serve_plaintext(
    inputs: ProxyInputs,
    pod: PodContext,
    listener: TcpListener,
    stop: watch::Receiver<bool>,
) {
    let accept = async {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "inbound accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    continue;
                }
            };
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
    let record = ConnectionRecord::open(
        &inputs.telemetry,
        Reporter::destination,
        src,
        dst,
        None,
        false,
    );
    if mesh::hbone::RESERVED_PORTS.contains(&orig_dst.port()) {
        // Reaching the tunnel's own ports through the plaintext path is never legitimate.
        return record.close(0, 0, Some(&"connection to a tunnel port refused"));
    }
    match pod.connect(&inputs.home, orig_dst, Some(peer.ip())).await {
        Ok(app) => match mesh::copy::copy_bidirectional(stream, app).await {
            Ok(t) => record.close(t.a_to_b, t.b_to_a, None),
            Err(e) => record.close(0, 0, Some(&e)),
        },
        Err(e) => record.close(0, 0, Some(&e)),
    }
}
