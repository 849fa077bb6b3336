//! Inbound: HBONE on 15008 and plaintext on 15006, delivered to the application inside the
//! pod with the client's own source address where the kernel allows it.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;

use http::StatusCode;
use mesh::copy::Abort;
use mesh::hbone::{H2Config, InboundRequest, Server, ServerCerts};
use mesh::metrics::Reporter;
use mesh::rbac::Connection;
use mesh::Identity;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::Instrument;

use super::authz;
use super::live::{copy_until_closed, finish, Kind, LiveConnections, PodKey};
use super::{stopped, PodContext, ProxyInputs};
use crate::telemetry::{ConnectionRecord, Peer};

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

/// Accepts HBONE connections for the pod until told to stop. Set-up (TLS and HTTP/2) has
/// one deadline and a cap on connections in set-up at once (see [`Server`]). A connection is
/// registered as a tunnel of the pod once its peer has authenticated, so a drain that ends
/// closes it (and releases the pod's namespace) rather than leave it to the client's idle
/// timeout; unauthenticated ones are never counted.
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
        Ok(mut app) => match req.accept() {
            Ok(tunnel) => finish(record, copy_until_closed(tunnel, app, guard).await),
            Err(e) => {
                // The client went away before the answer: the app must not see a clean end.
                app.abort();
                record.close(0, 0, Some(&e));
            }
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
    mut stream: TcpStream,
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
    if mesh::hbone::RESERVED_PORTS.contains(&orig_dst.port()) {
        // Reaching the tunnel's own ports through the plaintext path is never legitimate: a
        // refusal by the mesh, not an upstream failure.
        record.set_flags("DENY");
        tracing::info!(target: "authz", %peer, %orig_dst, "plaintext connection to a tunnel port refused");
        return record.close(0, 0, Some(&"connection to a tunnel port refused"));
    }
    let Some(dst_workload) = pod.workload(store) else {
        // Without the control plane's view of this pod no policy can be checked: fail closed.
        record.set_flags("DENY");
        return record.close(
            0,
            0,
            Some(&"destination workload unknown; policy cannot be checked"),
        );
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
        Err(e) => {
            // The application refused: the client sees the reset it would have seen directly.
            stream.abort();
            record.close(0, 0, Some(&e));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use mesh::hbone::{ConnectMeta, HboneError, Pool, PoolKey, TcpConnector};
    use mesh::testing::TestCa;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn eventually(what: &str, cond: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !cond() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting: {what}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn only_authenticated_hbone_connections_count_as_tunnels_of_the_pod() {
        let ca = TestCa::new("cluster.local", Duration::from_secs(3600));
        let server_id: Identity = "spiffe://cluster.local/ns/demo/sa/b"
            .parse()
            .expect("identity");
        let server = Arc::new(Server::new(
            H2Config::default(),
            Arc::new(Arc::new(ca.issue(&server_id))),
        ));
        let live = Arc::new(LiveConnections::default());
        let pod = PodKey {
            uid: "Kubernetes//v1/Pod/demo/b".into(),
            netns: 1,
        };
        assert_eq!(live.pod_started(&pod), None);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        {
            let (server, live, pod) = (server.clone(), live.clone(), pod.clone());
            tokio::spawn(async move {
                while let Ok((tcp, peer)) = listener.accept().await {
                    let server = server.clone();
                    let hook = tunnel_guard(live.clone(), pod.clone());
                    tokio::spawn(async move {
                        let refuse = |req: InboundRequest| async move {
                            req.reject(StatusCode::SERVICE_UNAVAILABLE)
                        };
                        let _ = server
                            .serve_connection_until(tcp, peer, refuse, std::future::pending(), hook)
                            .await;
                    });
                }
            });
        }

        // Accepted but not authenticated: in set-up, never a tunnel.
        let _silent = TcpStream::connect(addr).await.expect("tcp");
        let mut plain = TcpStream::connect(addr).await.expect("tcp");
        plain
            .write_all(b"GET / HTTP/1.1\r\n\r\n")
            .await
            .expect("write");
        let _ = plain.read_to_end(&mut Vec::new()).await;
        eventually("the silent connection is in set-up", || {
            server.handshakes_in_flight() == 1
        })
        .await;
        assert_eq!(live.len(), 0, "unauthenticated connections counted");

        // Authenticated: one tunnel, however its streams fare.
        let cert = ca.issue(
            &"spiffe://cluster.local/ns/demo/sa/a"
                .parse()
                .expect("identity"),
        );
        let key = PoolKey::new(cert.identity().clone(), vec![server_id], addr, None);
        let pool = Pool::new(H2Config::default(), Arc::new(TcpConnector));
        let err = pool
            .connect(
                &key,
                &cert,
                "10.0.0.2:80".parse().expect("addr"),
                &ConnectMeta::default(),
            )
            .await
            .expect_err("the handler refuses");
        assert!(matches!(err, HboneError::Status(_)), "{err}");
        assert_eq!(live.len(), 1);

        // The pod's drain ends: the tunnel is closed and unregistered.
        live.pod_removed(&pod, Duration::ZERO);
        eventually("the tunnel is closed", || {
            live.is_empty() && pool.open_connections() == 0
        })
        .await;
        // After that, an authenticated peer is refused rather than registered.
        let pool = Pool::new(H2Config::default(), Arc::new(TcpConnector));
        pool.connect(
            &key,
            &cert,
            "10.0.0.2:80".parse().expect("addr"),
            &ConnectMeta::default(),
        )
        .await
        .expect_err("the pod is no longer served");
        assert!(live.is_empty());
    }
}
