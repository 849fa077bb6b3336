//! The HBONE server: mutual TLS, HTTP/2, one handler call per CONNECT stream.
//!
//! The server answers 400 itself for requests that are not a well-formed CONNECT to a legal
//! target; everything else (is this target ours? does policy allow this peer? can we reach
//! the application?) is the handler's decision, answered with [`InboundRequest::accept`] or
//! [`InboundRequest::reject`].
//!
//! A connection's set-up (waiting for our certificate, TLS, HTTP/2) has one deadline,
//! `handshake_timeout`; at most `max_handshakes` are in set-up at once per [`Server`], and one
//! more is closed at once. The caller learns of a connection only once its peer has
//! authenticated (the `on_authenticated` hook of [`Server::serve_connection_until`]).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::RecvStream;
use http::{HeaderMap, Response, StatusCode};
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tracing::Instrument;

use super::{connect, keepalive, H2Config, H2Stream, HboneError};
use crate::cert::WorkloadCertificate;
use crate::identity::Identity;

/// How long a connection closed by its `on_authenticated` guard is still driven, so the
/// resets of its streams and the GOAWAY reach the client.
const CLOSE_GRACE: Duration = Duration::from_millis(100);

/// A boxed future resolving with a TLS server config.
pub type ConfigFuture<'a> = Pin<Box<dyn Future<Output = Arc<ServerConfig>> + Send + 'a>>;

/// Where the server gets the TLS config to present, checked at each handshake so renewed
/// certificates take effect without a restart.
pub trait ServerCerts: Send + Sync + 'static {
    /// The config for the next handshake, or `None` while no certificate is available.
    fn server_config(&self) -> Option<Arc<ServerConfig>>;

    /// Resolves with the config as soon as one is available: at once if there is one now,
    /// otherwise when the source announces a change (no polling). The default, for sources
    /// that never change, is the current config or never.
    fn ready(&self) -> ConfigFuture<'_> {
        let now = self.server_config();
        Box::pin(async move {
            match now {
                Some(config) => config,
                None => std::future::pending().await,
            }
        })
    }
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
            // The worker withdraws an expired certificate on a timer; never present one that
            // expired a moment before that.
            Some(Ok(cert)) if !cert.is_expired_at(std::time::SystemTime::now()) => {
                Some(WorkloadCertificate::server_config(cert))
            }
            _ => None,
        }
    }

    fn ready(&self) -> ConfigFuture<'_> {
        let mut rx = self.clone();
        Box::pin(async move {
            let usable = |slot: &Option<Result<Arc<WorkloadCertificate>, _>>| matches!(slot, Some(Ok(c)) if !c.is_expired_at(std::time::SystemTime::now()));
            let cert = match rx.wait_for(usable).await {
                Ok(slot) => match &*slot {
                    Some(Ok(cert)) => Some(cert.clone()),
                    _ => None,
                },
                // The certificate manager is gone: nothing will ever be published.
                Err(_) => None,
            };
            match cert {
                Some(cert) => WorkloadCertificate::server_config(&cert),
                None => std::future::pending().await,
            }
        })
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
    /// One permit per connection in set-up.
    handshakes: Arc<Semaphore>,
    refused: AtomicU64,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("handshakes_in_flight", &self.handshakes_in_flight())
            .field("handshakes_refused", &self.handshakes_refused())
            .finish_non_exhaustive()
    }
}

/// The guard of a caller that keeps no state per connection.
/// An `on_authenticated` hook for [`Server::serve_connection_until`] that accepts every
/// authenticated peer and never closes its connection.
pub fn no_guard(_: &Identity) -> Option<std::future::Pending<()>> {
    Some(std::future::pending())
}

impl Server {
    /// A server presenting the certificates from `certs`.
    pub fn new(config: H2Config, certs: Arc<dyn ServerCerts>) -> Self {
        let handshakes = Arc::new(Semaphore::new(config.max_handshakes));
        Server {
            config,
            certs,
            handshakes,
            refused: AtomicU64::new(0),
        }
    }

    /// Connections in set-up now (accepted, not yet serving HTTP/2).
    pub fn handshakes_in_flight(&self) -> usize {
        self.config
            .max_handshakes
            .saturating_sub(self.handshakes.available_permits())
    }

    /// Connections closed at once because `max_handshakes` were already in set-up.
    pub fn handshakes_refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
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
                    tokio::time::sleep(Duration::from_millis(50)).await;
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
        self.serve_connection_until(tcp, peer_addr, handler, std::future::pending(), no_guard)
            .await
    }

    /// Like [`Server::serve_connection`], with two hooks:
    ///
    /// - `on_authenticated` runs once the peer has proved its identity in the TLS handshake,
    ///   and never for a peer that did not. `None` refuses the connection (it is closed at
    ///   once). `Some(guard)`: the guard lives as long as the connection; if it resolves, the
    ///   connection is closed (GOAWAY, its streams reset) after a short grace.
    /// - when `shutdown` resolves the connection is shut down gracefully: a GOAWAY tells the
    ///   client to open no new stream here, the streams already open carry on, and the
    ///   connection ends when the last one does.
    ///
    /// Set-up has one deadline, `handshake_timeout`, and takes one of the server's
    /// `max_handshakes` slots; without a free slot the connection is closed at once.
    pub async fn serve_connection_until<H, F, A, G>(
        &self,
        tcp: TcpStream,
        peer_addr: SocketAddr,
        handler: H,
        shutdown: impl Future<Output = ()>,
        on_authenticated: A,
    ) -> Result<(), HboneError>
    where
        H: Fn(InboundRequest) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = ()> + Send + 'static,
        A: FnOnce(&Identity) -> Option<G>,
        G: Future<Output = ()>,
    {
        let Ok(permit) = self.handshakes.clone().try_acquire_owned() else {
            let refused = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::debug!(
                peer = %peer_addr,
                max_handshakes = self.config.max_handshakes,
                refused_total = refused,
                "HBONE connection closed: too many handshakes in flight"
            );
            return Err(HboneError::Refused("too many handshakes in flight"));
        };
        let _ = tcp.set_nodelay(true);
        let deadline = Instant::now() + self.config.handshake_timeout;
        let timed_out = |_| HboneError::Timeout("HBONE connection set-up");
        let (mut tls, peer) = tokio::time::timeout_at(deadline, self.tls_handshake(tcp, peer_addr))
            .await
            .map_err(timed_out)??;
        tls.get_mut()
            .1
            .set_buffer_limit(Some(self.config.tls_write_buffer));
        let Some(guard) = on_authenticated(&peer) else {
            return Err(HboneError::Refused("the destination is not served here"));
        };
        let handshake = h2::server::Builder::new()
            .initial_window_size(self.config.stream_window)
            .initial_connection_window_size(self.config.connection_window)
            .max_frame_size(self.config.max_frame_size)
            .max_concurrent_streams(self.config.max_streams as u32)
            .max_header_list_size(self.config.max_header_list_size)
            .handshake::<_, Bytes>(tls);
        let mut conn = tokio::time::timeout_at(deadline, handshake)
            .await
            .map_err(timed_out)??;
        drop(permit);

        let ping = keepalive::run(
            conn.ping_pong(),
            self.config.ping_interval,
            self.config.ping_timeout,
        );
        tokio::pin!(ping);
        tokio::pin!(shutdown);
        tokio::pin!(guard);
        let mut going_away = false;
        let mut closing: Option<Instant> = None;

        loop {
            let next = tokio::select! {
                next = conn.accept() => next,
                () = &mut ping => return Ok(()),
                () = &mut shutdown, if !going_away => {
                    going_away = true;
                    conn.graceful_shutdown();
                    continue;
                }
                () = &mut guard, if closing.is_none() => {
                    conn.abrupt_shutdown(h2::Reason::NO_ERROR);
                    closing = Some(Instant::now() + CLOSE_GRACE);
                    continue;
                }
                () = sleep_until_opt(closing) => return Ok(()),
            };
            let (req, mut respond) = match next {
                None => return Ok(()),
                Some(Ok(pair)) => pair,
                Some(Err(e)) => return Err(e.into()),
            };
            if closing.is_some() {
                respond.send_reset(h2::Reason::REFUSED_STREAM);
                continue;
            }
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

    /// Waits for our certificate, then runs the TLS handshake and reads the peer's identity.
    async fn tls_handshake(
        &self,
        tcp: TcpStream,
        peer_addr: SocketAddr,
    ) -> Result<(tokio_rustls::server::TlsStream<TcpStream>, Identity), HboneError> {
        // A workload just handed over may still be waiting for its first certificate: hold
        // the client (it is in its TLS handshake) until it is published, within the deadline.
        let tls_config = match self.certs.server_config() {
            Some(config) => config,
            None => {
                tracing::debug!(peer = %peer_addr, "waiting for the server certificate");
                self.certs.ready().await
            }
        };
        let tls = TlsAcceptor::from(tls_config)
            .accept(tcp)
            .await
            .map_err(|source| {
                tracing::info!(peer = %peer_addr, error = %source, "HBONE TLS handshake refused");
                HboneError::Tls {
                    addr: peer_addr,
                    source: Arc::new(source),
                }
            })?;
        let (_, session) = tls.get_ref();
        if session.alpn_protocol() != Some(crate::tls::ALPN_H2) {
            return Err(HboneError::Alpn);
        }
        let peer = crate::tls::peer_identity(session)
            .ok_or_else(|| HboneError::NoCertificate("peer presented no usable identity".into()))?;
        Ok((tls, peer))
    }
}

/// Sleeps until `at`, or forever when there is none.
async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
