//! The HBONE server: mutual TLS, HTTP/2, one handler call per CONNECT stream.
//!
//! The server answers 400 itself for requests that are not a well-formed CONNECT to a legal
//! target; everything else (is this target ours? does policy allow this peer? can we reach
//! the application?) is the handler's decision, answered with [`InboundRequest::accept`] or
//! [`InboundRequest::reject`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::RecvStream;
use http::{HeaderMap, Response, StatusCode};
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tracing::Instrument;

use super::{connect, keepalive, H2Config, H2Stream, HboneError};
use crate::cert::WorkloadCertificate;
use crate::identity::Identity;

/// Where the server gets the TLS config to present, checked at each handshake so renewed
/// certificates take effect without a restart.
pub trait ServerCerts: Send + Sync + 'static {
    /// The config for the next handshake, or `None` while no certificate is available.
    fn server_config(&self) -> Option<Arc<ServerConfig>>;
}

impl ServerCerts for Arc<WorkloadCertificate> {
    fn server_config(&self) -> Option<Arc<ServerConfig>> {
        Some(WorkloadCertificate::server_config(self))
    }
}

/// The latest certificate published by the [`crate::cert_manager::CertManager`].
impl ServerCerts
    for tokio::sync::watch::Receiver<
        Option<Result<Arc<WorkloadCertificate>, crate::cert_manager::FetchError>>,
    >
{
    fn server_config(&self) -> Option<Arc<ServerConfig>> {
        match &*self.borrow() {
            Some(Ok(cert)) => Some(WorkloadCertificate::server_config(cert)),
            _ => None,
        }
    }
}

/// One accepted CONNECT stream, waiting for the handler's answer.
pub struct InboundRequest {
    target: SocketAddr,
    peer: Identity,
    peer_addr: SocketAddr,
    headers: HeaderMap,
    respond: SendResponse<Bytes>,
    recv: RecvStream,
}

impl std::fmt::Debug for InboundRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboundRequest")
            .field("target", &self.target)
            .field("peer", &self.peer.to_string())
            .field("peer_addr", &self.peer_addr)
            .finish_non_exhaustive()
    }
}

impl InboundRequest {
    /// The `:authority` of the CONNECT: where the client wants to go.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// The verified identity of the client.
    pub fn peer(&self) -> &Identity {
        &self.peer
    }

    /// The TCP address the tunnel connection came from.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }

    /// The request headers (`baggage`, `forwarded`, `traceparent`, ...).
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// Answers 200 and returns the byte stream.
    pub fn accept(mut self) -> Result<H2Stream, HboneError> {
        let send = self
            .respond
            .send_response(ok_response(StatusCode::OK), false)?;
        Ok(H2Stream::new(send, self.recv, None))
    }

    /// Answers with an error status (400, 401, 503, ...) and ends the stream.
    pub fn reject(mut self, status: StatusCode) {
        // The client may already be gone; there is nobody left to tell.
        let _ = self.respond.send_response(ok_response(status), true);
    }
}

fn ok_response(status: StatusCode) -> Response<()> {
    let mut resp = Response::new(());
    *resp.status_mut() = status;
    resp
}

/// Accepts HBONE connections and dispatches their streams.
pub struct Server {
    config: H2Config,
    certs: Arc<dyn ServerCerts>,
}

impl Server {
    /// A server presenting the certificates from `certs`.
    pub fn new(config: H2Config, certs: Arc<dyn ServerCerts>) -> Self {
        Server { config, certs }
    }

    /// Accepts connections on `listener` forever, spawning a task per connection and per
    /// stream; each well-formed CONNECT is passed to `handler`.
    pub async fn serve<H, F>(self: Arc<Self>, listener: TcpListener, handler: H)
    where
        H: Fn(InboundRequest) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        loop {
            let (tcp, peer_addr) = match listener.accept().await {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of fds or similar: back off briefly rather than spin.
                    tracing::warn!(error = %e, "HBONE accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let server = self.clone();
            let handler = handler.clone();
            let span = tracing::debug_span!("hbone_inbound", peer = %peer_addr);
            tokio::spawn(
                async move {
                    if let Err(e) = server.serve_connection(tcp, peer_addr, handler).await {
                        tracing::debug!(error = %e, "HBONE connection ended with an error");
                    }
                }
                .instrument(span),
            );
        }
    }

    /// Serves one TCP connection: TLS, HTTP/2, then streams until the peer goes away.
    pub async fn serve_connection<H, F>(
        &self,
        tcp: TcpStream,
        peer_addr: SocketAddr,
        handler: H,
    ) -> Result<(), HboneError>
    where
        H: Fn(InboundRequest) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        self.serve_connection_until(tcp, peer_addr, handler, std::future::pending())
            .await
    }

    /// Like [`Server::serve_connection`]; when `shutdown` resolves the connection is shut
    /// down gracefully: a GOAWAY tells the client to open no new stream here, the streams
    /// already open carry on, and the connection ends when the last one does.
    pub async fn serve_connection_until<H, F>(
        &self,
        tcp: TcpStream,
        peer_addr: SocketAddr,
        handler: H,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), HboneError>
    where
        H: Fn(InboundRequest) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        let _ = tcp.set_nodelay(true);
        // A workload just handed over may still be waiting for its first certificate: hold the
        // client (it is in its TLS handshake) briefly rather than drop it.
        let deadline = tokio::time::Instant::now() + self.config.connect_timeout;
        let tls_config = loop {
            if let Some(config) = self.certs.server_config() {
                break config;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(HboneError::NoCertificate(
                    "server certificate not yet issued".into(),
                ));
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        };
        let handshake = TlsAcceptor::from(tls_config).accept(tcp);
        let tls = tokio::time::timeout(self.config.connect_timeout, handshake)
            .await
            .map_err(|_| HboneError::Timeout("TLS handshake"))?
            .map_err(|source| {
                tracing::info!(peer = %peer_addr, error = %source, "HBONE TLS handshake refused");
                HboneError::Tls {
                    addr: peer_addr,
                    source,
                }
            })?;
        let (_, session) = tls.get_ref();
        if session.alpn_protocol() != Some(crate::tls::ALPN_H2) {
            return Err(HboneError::Alpn);
        }
        let peer = crate::tls::peer_identity(session)
            .ok_or_else(|| HboneError::NoCertificate("peer presented no usable identity".into()))?;

        let mut conn = h2::server::Builder::new()
            .initial_window_size(self.config.stream_window)
            .initial_connection_window_size(self.config.connection_window)
            .max_frame_size(self.config.max_frame_size)
            .max_concurrent_streams(self.config.max_streams as u32)
            .max_header_list_size(self.config.max_header_list_size)
            .handshake::<_, Bytes>(tls);
        let mut conn = tokio::time::timeout(self.config.connect_timeout, &mut conn)
            .await
            .map_err(|_| HboneError::Timeout("HTTP/2 handshake"))??;
        let ping = keepalive::run(
            conn.ping_pong(),
            self.config.ping_interval,
            self.config.ping_timeout,
        );
        tokio::pin!(ping);
        tokio::pin!(shutdown);
        let mut going_away = false;

        loop {
            let next = tokio::select! {
                next = conn.accept() => next,
                () = &mut ping => return Ok(()),
                () = &mut shutdown, if !going_away => {
                    going_away = true;
                    conn.graceful_shutdown();
                    continue;
                }
            };
            let (req, mut respond) = match next {
                None => return Ok(()),
                Some(Ok(pair)) => pair,
                Some(Err(e)) => return Err(e.into()),
            };
            let target = match connect::parse_target(&req) {
                Ok(target) => target,
                Err(e) => {
                    tracing::info!(peer = %peer, error = %e, "HBONE request refused");
                    let _ = respond.send_response(ok_response(e.status()), true);
                    continue;
                }
            };
            let (parts, recv) = req.into_parts();
            let request = InboundRequest {
                target,
                peer: peer.clone(),
                peer_addr,
                headers: parts.headers,
                respond,
                recv,
            };
            tokio::spawn(handler(request));
        }
    }
}
