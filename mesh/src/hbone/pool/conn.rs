//! One pooled HTTP/2 connection: its handshake, its stream slots and its driver task.
//!
//! A connection's stream count (`active`) is the only thing checkouts contend on. It is set to
//! `usize::MAX` once the connection is closing, so no checkout can take a slot on it again.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tracing::Instrument;

use super::stats::Gauges;
use super::{lock, Connector, PoolKey};
use crate::hbone::{keepalive, H2Config, HboneError};

/// How long a connection told to close is still driven, so the frames its last streams
/// queued (END_STREAM, RST_STREAM, GOAWAY) reach the server.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// A connection as the pool holds it.
pub(super) struct Conn {
    pub(super) send: SendRequest<Bytes>,
    pub(super) state: Arc<ConnState>,
}

/// Shared between the pool, the streams and the connection's driver task.
pub(super) struct ConnState {
    pub(super) id: u64,
    /// Streams checked out; `usize::MAX` once the connection is closing.
    active: AtomicUsize,
    /// Takes no new stream (the server sent GOAWAY, or the pool drained).
    retired: AtomicBool,
    /// Closes as soon as its last stream ends.
    draining: AtomicBool,
    /// The driver task ended: the connection is gone.
    finished: AtomicBool,
    /// When `active` last dropped to zero.
    idle_since: Mutex<Instant>,
    /// Wakes the driver to close the connection.
    close: Notify,
    gauges: Gauges,
}

impl ConnState {
    /// Takes a stream slot, if the connection takes new streams and has fewer than `max`.
    pub(super) fn try_reserve(self: &Arc<Self>, max: usize) -> Option<StreamSlot> {
        if self.retired.load(Ordering::Acquire) {
            return None;
        }
        self.active
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        self.gauges.stream_opened();
        Some(StreamSlot(self.clone()))
    }

    /// No new stream goes on this connection; those on it carry on.
    pub(super) fn retire(&self) {
        self.retired.store(true, Ordering::Release);
    }

    /// No new stream; the connection closes now if idle, else when its last stream ends.
    pub(super) fn drain(&self) {
        self.retire();
        self.draining.store(true, Ordering::SeqCst);
        self.close_if_idle();
    }

    /// Whether the driver task has ended.
    pub(super) fn is_finished(&self) -> bool {
        self.finished.load(Ordering::Acquire)
    }

    fn close_if_idle(&self) {
        if self
            .active
            .compare_exchange(0, usize::MAX, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            self.close.notify_one();
        }
    }
}

/// Held by each stream; frees its slot on drop.
pub(super) struct StreamSlot(pub(super) Arc<ConnState>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let state = &self.0;
        state.gauges.stream_closed();
        if state.active.fetch_sub(1, Ordering::SeqCst) == 1 {
            *lock(&state.idle_since) = Instant::now();
            if state.draining.load(Ordering::SeqCst) {
                state.close_if_idle();
            }
        }
    }
}

pub(super) type H2Connection =
    h2::client::Connection<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, Bytes>;

/// TCP connect, TLS and the HTTP/2 handshake to `key.dst`, within `config.connect_timeout`.
pub(super) async fn handshake(
    connector: &dyn Connector,
    key: &PoolKey,
    tls: Arc<ClientConfig>,
    config: &H2Config,
) -> Result<(SendRequest<Bytes>, H2Connection), HboneError> {
    let dst = key.dst;
    let handshake = async {
        let tcp =
            connector
                .connect(dst, key.src_ip)
                .await
                .map_err(|source| HboneError::Connect {
                    addr: dst,
                    source: Arc::new(source),
                })?;
        let _ = tcp.set_nodelay(true);
        let mut tls = TlsConnector::from(tls)
            .connect(ServerName::IpAddress(dst.ip().into()), tcp)
            .await
            .map_err(|source| HboneError::Tls {
                addr: dst,
                source: Arc::new(source),
            })?;
        if tls.get_ref().1.alpn_protocol() != Some(crate::tls::ALPN_H2) {
            return Err(HboneError::Alpn);
        }
        tls.get_mut()
            .1
            .set_buffer_limit(Some(config.tls_write_buffer));
        let (send, conn) = h2::client::Builder::new()
            .initial_window_size(config.stream_window)
            .initial_connection_window_size(config.connection_window)
            .max_frame_size(config.max_frame_size)
            .enable_push(false)
            .handshake::<_, Bytes>(tls)
            .await?;
        Ok::<_, HboneError>((send, conn))
    };
    tokio::time::timeout(config.connect_timeout, handshake)
        .await
        .map_err(|_| HboneError::Timeout("HBONE connection setup"))?
}

/// Starts the driver task of a connection that finished its handshake. `on_closed` runs once
/// the connection stops taking streams for good (idle, drained, failed, or unanswered PING),
/// before the last frames are flushed.
pub(super) fn spawn(
    id: u64,
    send: SendRequest<Bytes>,
    mut conn: H2Connection,
    config: &H2Config,
    gauges: Gauges,
    dst: std::net::SocketAddr,
    on_closed: impl FnOnce() + Send + 'static,
) -> Conn {
    gauges.connection_opened();
    let state = Arc::new(ConnState {
        id,
        active: AtomicUsize::new(0),
        retired: AtomicBool::new(false),
        draining: AtomicBool::new(false),
        finished: AtomicBool::new(false),
        idle_since: Mutex::new(Instant::now()),
        close: Notify::new(),
        gauges,
    });
    let ping = keepalive::run(conn.ping_pong(), config.ping_interval, config.ping_timeout);
    let idle = idle_watch(state.clone(), config.idle_timeout);
    let driver_state = state.clone();
    let span = tracing::debug_span!("hbone_outbound", conn = id, dst = %dst);
    tokio::spawn(
        async move {
            tracing::debug!("HBONE connection open");
            let flush = tokio::select! {
                res = &mut conn => {
                    if let Err(e) = res {
                        tracing::debug!(error = %e, "HBONE connection failed");
                    }
                    false
                }
                () = ping => false,
                () = idle => {
                    tracing::debug!("closing idle HBONE connection");
                    true
                }
                () = driver_state.close.notified() => {
                    tracing::debug!("closing drained HBONE connection");
                    true
                }
            };
            driver_state.retire();
            on_closed();
            if flush {
                // The pool no longer holds a request handle: h2 says goodbye and finishes
                // once the frames already queued are written.
                let _ = tokio::time::timeout(CLOSE_GRACE, &mut conn).await;
            }
            drop(conn);
            driver_state.finished.store(true, Ordering::Release);
            driver_state.gauges.connection_closed();
            tracing::debug!("HBONE connection closed");
        }
        .instrument(span),
    );
    Conn { send, state }
}

/// Resolves once the connection has carried no stream for `timeout`. It then takes every
/// stream slot (so no checkout can pick the connection while it closes) before returning.
async fn idle_watch(state: Arc<ConnState>, timeout: Duration) {
    loop {
        let since = *lock(&state.idle_since);
        tokio::time::sleep_until(since + timeout).await;
        let idle_long_enough = *lock(&state.idle_since) + timeout <= Instant::now();
        if idle_long_enough
            && state
                .active
                .compare_exchange(0, usize::MAX, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        {
            return;
        }
        if state.active.load(Ordering::Acquire) > 0 {
            // Busy: the earliest it can be idle long enough is a full timeout from now.
            tokio::time::sleep(timeout).await;
        }
    }
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("id", &self.state.id)
            .finish_non_exhaustive()
    }
}
