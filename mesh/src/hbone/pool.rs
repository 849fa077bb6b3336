//! The HBONE client: HTTP/2 connections pooled per key, one CONNECT stream per proxied
//! connection.
//!
//! Connections are shared by [`PoolKey`] (source identity, acceptable destination identities,
//! HBONE endpoint, source IP). Checkout holds a per-key async lock while it picks or opens a
//! connection, so a burst of streams to one key opens exactly one connection; once a
//! connection carries `max_streams` streams, the next checkout opens another. A connection
//! that has carried no stream for `idle_timeout` is closed by its own driver task.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use h2::client::SendRequest;
use http::StatusCode;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tracing::Instrument;

use super::connect::{build_request, ConnectMeta};
use super::{keepalive, H2Config, H2Stream, HboneError};
use crate::cert::WorkloadCertificate;
use crate::identity::Identity;

/// What makes two streams able to share a connection.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// The identity we present.
    pub src_identity: Identity,
    /// Identities the server may prove (sorted, deduplicated).
    pub dst_identities: Vec<Identity>,
    /// The HBONE endpoint (pod or waypoint IP, port 15008).
    pub dst: SocketAddr,
    /// The source IP the connection leaves from, when it matters.
    pub src_ip: Option<IpAddr>,
}

impl PoolKey {
    /// Builds a key, normalising the identity set so equal sets hash equally.
    pub fn new(
        src_identity: Identity,
        mut dst_identities: Vec<Identity>,
        dst: SocketAddr,
        src_ip: Option<IpAddr>,
    ) -> Self {
        dst_identities.sort();
        dst_identities.dedup();
        PoolKey {
            src_identity,
            dst_identities,
            dst,
            src_ip,
        }
    }
}

/// A boxed future returning a connected TCP stream.
pub type ConnectFuture<'a> = Pin<Box<dyn Future<Output = io::Result<TcpStream>> + Send + 'a>>;

/// Opens the TCP connection under an HBONE connection. ztunnel supplies one that creates the
/// socket inside the pod's network namespace with its mark; tests use [`TcpConnector`].
pub trait Connector: Send + Sync + 'static {
    /// Connects to `dst`, from `src_ip` when given.
    fn connect(&self, dst: SocketAddr, src_ip: Option<IpAddr>) -> ConnectFuture<'_>;
}

/// Plain TCP connect in the current network namespace, ignoring the source IP.
#[derive(Debug, Default, Clone, Copy)]
pub struct TcpConnector;

impl Connector for TcpConnector {
    fn connect(&self, dst: SocketAddr, _src_ip: Option<IpAddr>) -> ConnectFuture<'_> {
        Box::pin(TcpStream::connect(dst))
    }
}

struct Conn {
    id: u64,
    send: SendRequest<Bytes>,
    state: Arc<ConnState>,
}

/// Shared between the pool, the streams and the connection's driver task.
struct ConnState {
    active: AtomicUsize,
    closed: AtomicBool,
    /// When `active` last dropped to zero.
    idle_since: Mutex<Instant>,
}

/// Held by each stream; frees its slot on drop.
struct StreamSlot(Arc<ConnState>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            *lock(&self.0.idle_since) = Instant::now();
        }
    }
}

#[derive(Default)]
struct KeyConns {
    conns: tokio::sync::Mutex<Vec<Conn>>,
}

/// The HBONE client pool.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<PoolInner>,
}

struct PoolInner {
    config: H2Config,
    connector: Arc<dyn Connector>,
    keys: Mutex<HashMap<PoolKey, Arc<KeyConns>>>,
    next_id: AtomicU64,
    opened: AtomicU64,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("open_connections", &self.open_connections())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Pool {
    /// An empty pool.
    pub fn new(config: H2Config, connector: Arc<dyn Connector>) -> Self {
        Pool {
            inner: Arc::new(PoolInner {
                config,
                connector,
                keys: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(0),
                opened: AtomicU64::new(0),
            }),
        }
    }

    /// Opens a CONNECT stream to `target` through the HBONE endpoint of `key`, presenting
    /// `cert` (which must be for `key.src_identity`).
    pub async fn connect(
        &self,
        key: &PoolKey,
        cert: &WorkloadCertificate,
        target: SocketAddr,
        meta: &ConnectMeta,
    ) -> Result<H2Stream, HboneError> {
        let (send, slot) = self.checkout(key, cert).await?;
        match self.open_stream(send, target, meta).await {
            Err(HboneError::H2(e)) if went_away(&e) => {
                // The server is shutting this connection down (GOAWAY): the CONNECT was not
                // processed, so it is safe to send it again, over a connection of its own.
                slot.0.closed.store(true, Ordering::Release);
                drop(slot);
                let (send, slot) = self.checkout(key, cert).await?;
                let (response, stream) = self.open_stream(send, target, meta).await?;
                Ok(H2Stream::new(stream, response, Some(Box::new(slot))))
            }
            Err(e) => Err(e),
            Ok((response, stream)) => Ok(H2Stream::new(stream, response, Some(Box::new(slot)))),
        }
    }

    /// Sends the CONNECT on `send` and waits for its 200.
    async fn open_stream(
        &self,
        mut send: SendRequest<Bytes>,
        target: SocketAddr,
        meta: &ConnectMeta,
    ) -> Result<(h2::RecvStream, h2::SendStream<Bytes>), HboneError> {
        let timeout = self.inner.config.connect_timeout;
        send = tokio::time::timeout(timeout, send.ready())
            .await
            .map_err(|_| HboneError::Timeout("HTTP/2 stream slot"))??;
        let (response, stream) = send.send_request(build_request(target, meta), false)?;
        let response = tokio::time::timeout(timeout, response)
            .await
            .map_err(|_| HboneError::Timeout("CONNECT response"))??;
        if response.status() != StatusCode::OK {
            return Err(HboneError::Status(response.status()));
        }
        Ok((response.into_body(), stream))
    }

    /// Open (not closed) HTTP/2 connections across all keys.
    pub fn open_connections(&self) -> usize {
        let keys: Vec<Arc<KeyConns>> = lock(&self.inner.keys).values().cloned().collect();
        keys.iter()
            .map(|k| {
                k.conns
                    .try_lock()
                    .map(|c| {
                        c.iter()
                            .filter(|c| !c.state.closed.load(Ordering::Acquire))
                            .count()
                    })
                    .unwrap_or(0)
            })
            .sum()
    }

    /// Connections opened since the pool was created.
    pub fn connections_opened(&self) -> u64 {
        self.inner.opened.load(Ordering::Relaxed)
    }

    async fn checkout(
        &self,
        key: &PoolKey,
        cert: &WorkloadCertificate,
    ) -> Result<(SendRequest<Bytes>, StreamSlot), HboneError> {
        let entry = lock(&self.inner.keys)
            .entry(key.clone())
            .or_default()
            .clone();
        let mut conns = entry.conns.lock().await;
        conns.retain(|c| !c.state.closed.load(Ordering::Acquire));
        let max = self.inner.config.max_streams;
        for conn in conns.iter() {
            let reserved =
                conn.state
                    .active
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                        (n < max).then_some(n + 1)
                    });
            if reserved.is_ok() {
                return Ok((conn.send.clone(), StreamSlot(conn.state.clone())));
            }
        }
        // Every connection is full (or there is none): open one while holding the key's lock,
        // so concurrent checkouts for this key wait for it instead of racing to open their own.
        let conn = self.open(key, cert).await?;
        conn.state.active.store(1, Ordering::Release);
        let out = (conn.send.clone(), StreamSlot(conn.state.clone()));
        conns.push(conn);
        Ok(out)
    }

    async fn open(&self, key: &PoolKey, cert: &WorkloadCertificate) -> Result<Conn, HboneError> {
        let config = &self.inner.config;
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let dst = key.dst;
        let handshake = async {
            let tcp = self
                .inner
                .connector
                .connect(dst, key.src_ip)
                .await
                .map_err(|source| HboneError::Connect { addr: dst, source })?;
            let _ = tcp.set_nodelay(true);
            let tls_config = crate::tls::client_config(cert, key.dst_identities.clone());
            let tls = TlsConnector::from(Arc::new(tls_config))
                .connect(ServerName::IpAddress(dst.ip().into()), tcp)
                .await
                .map_err(|source| HboneError::Tls { addr: dst, source })?;
            if tls.get_ref().1.alpn_protocol() != Some(crate::tls::ALPN_H2) {
                return Err(HboneError::Alpn);
            }
            let (send, conn) = h2::client::Builder::new()
                .initial_window_size(config.stream_window)
                .initial_connection_window_size(config.connection_window)
                .max_frame_size(config.max_frame_size)
                .enable_push(false)
                .handshake::<_, Bytes>(tls)
                .await?;
            Ok::<_, HboneError>((send, conn))
        };
        let (send, mut conn) = tokio::time::timeout(config.connect_timeout, handshake)
            .await
            .map_err(|_| HboneError::Timeout("HBONE connection setup"))??;
        self.inner.opened.fetch_add(1, Ordering::Relaxed);

        let state = Arc::new(ConnState {
            active: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            idle_since: Mutex::new(Instant::now()),
        });
        let ping = keepalive::run(conn.ping_pong(), config.ping_interval, config.ping_timeout);
        let idle = idle_watch(state.clone(), config.idle_timeout);
        let driver_state = state.clone();
        let span = tracing::debug_span!("hbone_outbound", conn = id, dst = %dst);
        tokio::spawn(
            async move {
                tracing::debug!("HBONE connection open");
                tokio::select! {
                    res = &mut conn => {
                        if let Err(e) = res {
                            tracing::debug!(error = %e, "HBONE connection failed");
                        }
                    }
                    () = ping => {}
                    () = idle => tracing::debug!("closing idle HBONE connection"),
                }
                driver_state.closed.store(true, Ordering::Release);
                tracing::debug!("HBONE connection closed");
            }
            .instrument(span),
        );
        Ok(Conn { id, send, state })
    }
}

/// Whether a stream failed because the server is going away before it took the stream.
fn went_away(e: &h2::Error) -> bool {
    e.is_go_away() || e.reason() == Some(h2::Reason::REFUSED_STREAM)
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Resolves once the connection has carried no stream for `timeout`. It then takes every
/// stream slot (so no checkout can pick the connection while it closes) before returning.
async fn idle_watch(state: Arc<ConnState>, timeout: std::time::Duration) {
    loop {
        let since = *lock(&state.idle_since);
        tokio::time::sleep_until(since + timeout).await;
        let idle_long_enough = *lock(&state.idle_since) + timeout <= Instant::now();
        if idle_long_enough
            && state
                .active
                .compare_exchange(0, usize::MAX, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            state.closed.store(true, Ordering::Release);
            return;
        }
        if state.active.load(Ordering::Acquire) > 0 {
            // Busy: the earliest it can be idle long enough is a full timeout from now.
            tokio::time::sleep(timeout).await;
        }
    }
}
