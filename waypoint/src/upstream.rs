//! Upstream HTTP connections: hyper client connections over HBONE streams to endpoints,
//! reused across requests.
//!
//! Keyed by endpoint (ip:target port, HBONE address, identities it may prove) and protocol.
//! HTTP/2 keeps one multiplexed connection per key; HTTP/1.1 keeps a list of keep-alive
//! connections per key and sends on one that is idle, opening another when all are busy.
//! Each connection is one CONNECT stream on the shared HBONE [`Pool`] (itself one HTTP/2
//! connection per endpoint for up to 100 streams).

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use mesh::cert_manager::CertManager;
use mesh::hbone::{ConnectMeta, H2Stream, Pool, PoolKey};
use mesh::Identity;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::error::ProxyError;
use crate::select::Upstream;

/// The error type of bodies the waypoint forwards.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// A body the waypoint forwards.
pub type Body = BoxBody<Bytes, BoxError>;

/// A byte stream to an endpoint: an HBONE stream, or plain TCP to a workload outside the mesh.
#[derive(Debug)]
pub enum UpstreamIo {
    /// HBONE (the normal case).
    Hbone(H2Stream),
    /// Plain TCP.
    Tcp(TcpStream),
}

impl mesh::copy::Abort for UpstreamIo {
    fn abort(&mut self) {
        match self {
            UpstreamIo::Hbone(s) => s.abort(),
            UpstreamIo::Tcp(s) => s.abort(),
        }
    }

    fn poll_write_owned(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut bytes::Bytes,
    ) -> Option<Poll<io::Result<usize>>> {
        match self {
            UpstreamIo::Hbone(s) => s.poll_write_owned(cx, buf),
            UpstreamIo::Tcp(s) => s.poll_write_owned(cx, buf),
        }
    }

    fn poll_read_owned(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Option<Poll<io::Result<Option<bytes::Bytes>>>> {
        match self {
            UpstreamIo::Hbone(s) => s.poll_read_owned(cx),
            UpstreamIo::Tcp(s) => s.poll_read_owned(cx),
        }
    }
}

impl AsyncRead for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Hbone(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamIo::Tcp(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Hbone(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamIo::Tcp(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Hbone(s) => Pin::new(s).poll_flush(cx),
            UpstreamIo::Tcp(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Hbone(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamIo::Tcp(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Opens byte streams to endpoints as the waypoint identity.
#[derive(Clone)]
pub struct Dialer {
    pool: Pool,
    certs: Arc<CertManager>,
    identity: Identity,
}

impl std::fmt::Debug for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dialer")
            .field("identity", &self.identity.to_string())
            .field("pool", &self.pool)
            .finish()
    }
}

impl Dialer {
    /// A dialer presenting `identity`'s certificate from `certs`, tunnels from `pool`.
    pub fn new(pool: Pool, certs: Arc<CertManager>, identity: Identity) -> Self {
        Dialer {
            pool,
            certs,
            identity,
        }
    }

    /// The HBONE pool (for stats).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Opens a stream to `up`: a CONNECT to `up.addr` through its HBONE address expecting
    /// one of its identities, or plain TCP when it is not in the mesh.
    pub async fn dial(&self, up: &Upstream, meta: &ConnectMeta) -> Result<UpstreamIo, ProxyError> {
        let Some(hbone) = up.hbone else {
            let tcp =
                TcpStream::connect(up.addr)
                    .await
                    .map_err(|e| ProxyError::UpstreamConnect {
                        addr: up.addr,
                        reason: e.to_string(),
                    })?;
            let _ = tcp.set_nodelay(true);
            return Ok(UpstreamIo::Tcp(tcp));
        };
        let cert = self
            .certs
            .get(&self.identity)
            .await
            .map_err(|e| ProxyError::NoCertificate(e.to_string()))?;
        let key = PoolKey::new(self.identity.clone(), up.identities.clone(), hbone, None);
        let stream = self
            .pool
            .connect(&key, &cert, up.addr, meta)
            .await
            .map_err(|e| ProxyError::UpstreamConnect {
                addr: up.addr,
                reason: e.to_string(),
            })?;
        Ok(UpstreamIo::Hbone(stream))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ConnKey {
    addr: SocketAddr,
    hbone: Option<SocketAddr>,
    identities: Vec<Identity>,
}

type H2Slot = tokio::sync::Mutex<Option<H2Conn>>;

struct H2Conn {
    send: http2::SendRequest<Body>,
}

struct Http1Conn {
    send: http1::SendRequest<Body>,
    last_used: Instant,
}

/// Upstream HTTP connections, shared by every downstream connection.
pub struct Upstreams {
    dialer: Dialer,
    idle_timeout: Duration,
    /// Per key, the HTTP/2 connection; the async lock is held while one is opened, so a
    /// burst of requests to a new endpoint opens exactly one.
    h2: Mutex<HashMap<ConnKey, Arc<H2Slot>>>,
    h1: Mutex<HashMap<ConnKey, Vec<Http1Conn>>>,
}

impl std::fmt::Debug for Upstreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstreams").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Open upstream connections, for `/config_dump`.
#[derive(Debug, Clone, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UpstreamStats {
    /// HTTP/2 connections (one per endpoint).
    pub http2: usize,
    /// HTTP/1.1 connections (busy or idle).
    pub http1: usize,
    /// HBONE connections open.
    pub hbone: usize,
}

impl Upstreams {
    /// Connections opened through `dialer`; HTTP/1.1 ones idle past `idle_timeout` are
    /// closed.
    pub fn new(dialer: Dialer, idle_timeout: Duration) -> Self {
        Upstreams {
            dialer,
            idle_timeout,
            h2: Mutex::default(),
            h1: Mutex::default(),
        }
    }

    /// The dialer (for TCP passthrough).
    pub fn dialer(&self) -> &Dialer {
        &self.dialer
    }

    /// Counts of open connections.
    pub fn stats(&self) -> UpstreamStats {
        UpstreamStats {
            http2: lock(&self.h2)
                .values()
                .filter(|s| {
                    s.try_lock()
                        .is_ok_and(|s| s.as_ref().is_some_and(|c| !c.send.is_closed()))
                })
                .count(),
            http1: lock(&self.h1).values().map(Vec::len).sum(),
            hbone: self.dialer.pool.open_connections(),
        }
    }

    /// Sends `req` to `up` over HTTP/2 or HTTP/1.1, reusing a connection when one is free.
    /// A request that an existing connection could not take (closed meanwhile) is sent again
    /// on a new connection; one it took and then lost is an upstream reset (`UC`).
    pub async fn send(
        &self,
        up: &Upstream,
        meta: &ConnectMeta,
        http2: bool,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, ProxyError> {
        let key = ConnKey {
            addr: up.addr,
            hbone: up.hbone,
            identities: up.identities.clone(),
        };
        let reset = |e: hyper::Error| ProxyError::UpstreamReset {
            addr: up.addr,
            reason: e.to_string(),
        };
        if http2 {
            let mut send = self.h2_sender(&key, up, meta).await?;
            return match send.try_send_request(req).await {
                Ok(resp) => Ok(resp),
                Err(mut e) => match e.take_message() {
                    // The connection closed before taking the request: once more, on a new one.
                    Some(req) => {
                        let mut send = self.h2_sender(&key, up, meta).await?;
                        send.send_request(req).await.map_err(reset)
                    }
                    None => Err(reset(e.into_error())),
                },
            };
        }
        let attempt = {
            let mut conns = lock(&self.h1);
            let list = conns.entry(key.clone()).or_default();
            let now = Instant::now();
            let idle_timeout = self.idle_timeout;
            list.retain(|c| {
                let idle_too_long = c.send.is_ready() && now - c.last_used > idle_timeout;
                !c.send.is_closed() && !idle_too_long
            });
            match list.iter_mut().find(|c| c.send.is_ready()) {
                Some(c) => {
                    c.last_used = now;
                    Ok(c.send.try_send_request(req))
                }
                None => Err(req),
            }
        };
        match attempt {
            Ok(fut) => match fut.await {
                Ok(resp) => Ok(resp),
                Err(mut e) => match e.take_message() {
                    Some(req) => self.send_h1_new(key, up, meta, req).await,
                    None => Err(reset(e.into_error())),
                },
            },
            Err(req) => self.send_h1_new(key, up, meta, req).await,
        }
    }

    /// Closes HTTP/1.1 connections idle longer than the idle timeout and forgets closed ones,
    /// so endpoints no longer used release their HBONE streams (and the HBONE connection can
    /// idle out in turn). An HTTP/2 connection is kept while open (one per endpoint; it may
    /// carry long-lived streams) and forgotten once closed.
    pub fn sweep(&self) {
        let now = Instant::now();
        let idle = self.idle_timeout;
        lock(&self.h1).retain(|_, list| {
            list.retain(|c| {
                let idle_too_long = c.send.is_ready() && now - c.last_used > idle;
                !c.send.is_closed() && !idle_too_long
            });
            !list.is_empty()
        });
        lock(&self.h2).retain(|_, slot| match slot.try_lock() {
            // Being opened or used right now: keep.
            Err(_) => true,
            Ok(mut conn) => {
                if conn.as_ref().is_some_and(|c| c.send.is_closed()) {
                    *conn = None;
                }
                conn.is_some()
            }
        });
    }

    /// Runs [`Upstreams::sweep`] every `period` until dropped.
    pub async fn sweep_every(self: std::sync::Arc<Self>, period: Duration) {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.sweep();
        }
    }

    /// The HTTP/2 connection for `key`, opening it when there is none (or it closed).
    async fn h2_sender(
        &self,
        key: &ConnKey,
        up: &Upstream,
        meta: &ConnectMeta,
    ) -> Result<http2::SendRequest<Body>, ProxyError> {
        let slot = lock(&self.h2).entry(key.clone()).or_default().clone();
        let mut slot = slot.lock().await;
        if let Some(conn) = slot.as_ref().filter(|c| !c.send.is_closed()) {
            return Ok(conn.send.clone());
        }
        let send = self.open_h2(up, meta).await?;
        *slot = Some(H2Conn { send: send.clone() });
        Ok(send)
    }

    /// Sends a request that asks for a protocol upgrade on an HTTP/1.1 connection of its own
    /// (never pooled: after a 101 the connection belongs to the new protocol).
    pub async fn send_upgrade(
        &self,
        up: &Upstream,
        meta: &ConnectMeta,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, ProxyError> {
        let io = self.dialer.dial(up, meta).await?;
        let (mut send, conn) = http1::Builder::new()
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| ProxyError::UpstreamConnect {
                addr: up.addr,
                reason: e.to_string(),
            })?;
        let addr = up.addr;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(upstream = %addr, error = %e, "upstream upgrade connection failed");
            }
        });
        send.send_request(req)
            .await
            .map_err(|e| ProxyError::UpstreamReset {
                addr,
                reason: e.to_string(),
            })
    }

    async fn send_h1_new(
        &self,
        key: ConnKey,
        up: &Upstream,
        meta: &ConnectMeta,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, ProxyError> {
        let mut send = self.open_h1(up, meta).await?;
        let connect_failed = |e: hyper::Error| ProxyError::UpstreamConnect {
            addr: up.addr,
            reason: e.to_string(),
        };
        send.ready().await.map_err(connect_failed)?;
        let fut = send.send_request(req);
        lock(&self.h1).entry(key).or_default().push(Http1Conn {
            send,
            last_used: Instant::now(),
        });
        fut.await.map_err(|e| ProxyError::UpstreamReset {
            addr: up.addr,
            reason: e.to_string(),
        })
    }

    async fn open_h1(
        &self,
        up: &Upstream,
        meta: &ConnectMeta,
    ) -> Result<http1::SendRequest<Body>, ProxyError> {
        let io = self.dialer.dial(up, meta).await?;
        let (send, conn) = http1::Builder::new()
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| ProxyError::UpstreamConnect {
                addr: up.addr,
                reason: e.to_string(),
            })?;
        let addr = up.addr;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(upstream = %addr, error = %e, "upstream HTTP/1.1 connection failed");
            }
        });
        Ok(send)
    }

    async fn open_h2(
        &self,
        up: &Upstream,
        meta: &ConnectMeta,
    ) -> Result<http2::SendRequest<Body>, ProxyError> {
        let io = self.dialer.dial(up, meta).await?;
        let (send, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .initial_stream_window_size(mesh::hbone::STREAM_WINDOW)
            .initial_connection_window_size(mesh::hbone::CONNECTION_WINDOW)
            .keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(20))
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| ProxyError::UpstreamConnect {
                addr: up.addr,
                reason: e.to_string(),
            })?;
        let addr = up.addr;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(upstream = %addr, error = %e, "upstream HTTP/2 connection failed");
            }
        });
        Ok(send)
    }
}
