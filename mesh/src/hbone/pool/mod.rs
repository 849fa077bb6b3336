//! The HBONE client: HTTP/2 connections pooled per key, one CONNECT stream per proxied
//! connection.
//!
//! Connections are shared by [`PoolKey`] (source identity, acceptable destination identities,
//! HBONE endpoint, source IP). The pool's state sits behind one short-held lock, never held
//! across an await:
//!
//! - A checkout takes a stream slot on an open connection of its key if one has room
//!   (`max_streams`); otherwise it waits for the key's one connection attempt in flight
//!   ("single flight"), starting it if there is none. Every caller waiting for an attempt gets
//!   its result, error included, so a burst to one key opens exactly one connection, and a
//!   destination that accepts TCP but never answers costs one `connect_timeout`, not one per
//!   caller.
//! - After a failed attempt the key backs off (`connect_backoff`, doubling per consecutive
//!   failure up to `connect_backoff_max`): callers fail at once with the last error.
//! - [`Pool::connect`] as a whole (checkout, CONNECT, response) has one deadline,
//!   `connect_timeout`.
//! - A connection that has carried no stream for `idle_timeout` is closed by its own driver
//!   task; a key with no connection, attempt or back-off left is removed.
//! - [`Pool::drain`] (also run when the last handle is dropped) closes idle connections at
//!   once and busy ones when their last stream ends, and refuses new checkouts.
//!
//! Counters live in [`PoolStats`]; [`Pool::with_stats`] adds a shared, node-wide set.

mod conn;
mod stats;

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use http::StatusCode;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use super::connect::{build_request, ConnectMeta};
use super::{H2Config, H2Stream, HboneError};
use crate::cert::WorkloadCertificate;
use crate::identity::Identity;
use conn::{Conn, StreamSlot};
use stats::Gauges;
pub use stats::PoolStats;

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

/// The outcome of one connection attempt, as every caller waiting for it sees it.
type Attempt = watch::Receiver<Option<Result<(), HboneError>>>;

/// One key's connections, its attempt in flight and its back-off.
#[derive(Default)]
struct KeyState {
    conns: Vec<Conn>,
    attempt: Option<Attempt>,
    /// Consecutive failed attempts.
    failures: u32,
    /// Callers fail fast with `last_error` until then.
    backoff_until: Option<Instant>,
    /// The failures are forgotten (and the key may go) from then on.
    forget_at: Option<Instant>,
    last_error: Option<HboneError>,
}

impl KeyState {
    /// Nothing left worth keeping: no connection, no attempt, no failure to remember.
    fn is_empty(&self, now: Instant) -> bool {
        self.conns.is_empty() && self.attempt.is_none() && self.forget_at.is_none_or(|t| t <= now)
    }
}

#[derive(Default)]
struct PoolState {
    keys: HashMap<PoolKey, KeyState>,
    drained: bool,
}

/// The HBONE client pool. Clones share the pool.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<PoolInner>,
}

struct PoolInner {
    config: H2Config,
    connector: Arc<dyn Connector>,
    state: Mutex<PoolState>,
    gauges: Gauges,
    next_id: AtomicU64,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("open_connections", &self.open_connections())
            .field("keys", &self.inner.gauges.own.keys())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Pool {
    /// An empty pool with counters of its own.
    pub fn new(config: H2Config, connector: Arc<dyn Connector>) -> Self {
        Pool::build(config, connector, None)
    }

    /// An empty pool that also counts into `stats`, shared with other pools (ztunnel gives
    /// every pod's pool the same one, so it can report node-wide totals).
    pub fn with_stats(config: H2Config, connector: Arc<dyn Connector>, stats: PoolStats) -> Self {
        Pool::build(config, connector, Some(stats))
    }

    fn build(config: H2Config, connector: Arc<dyn Connector>, shared: Option<PoolStats>) -> Self {
        Pool {
            inner: Arc::new(PoolInner {
                config,
                connector,
                state: Mutex::new(PoolState::default()),
                gauges: Gauges {
                    own: PoolStats::new(),
                    shared,
                },
                next_id: AtomicU64::new(0),
            }),
        }
    }

    /// Opens a CONNECT stream to `target` through the HBONE endpoint of `key`, presenting
    /// `cert` (which must be for `key.src_identity`). Everything, including a new connection
    /// and the CONNECT's response, happens within `connect_timeout`.
    pub async fn connect(
        &self,
        key: &PoolKey,
        cert: &WorkloadCertificate,
        target: SocketAddr,
        meta: &ConnectMeta,
    ) -> Result<H2Stream, HboneError> {
        self.connect_with(key, cert, target, meta, Bytes::new())
            .await
    }

    /// [`Pool::connect`], sending `first` (the client's first bytes, when it has sent some
    /// already) on the stream right behind the CONNECT instead of after its answer: one TLS
    /// record carries both, and the server has them as soon as its application connection
    /// opens, a round trip sooner. The server holds them until it has authorized the stream; a
    /// refused stream drops them with itself.
    pub async fn connect_with(
        &self,
        key: &PoolKey,
        cert: &WorkloadCertificate,
        target: SocketAddr,
        meta: &ConnectMeta,
        first: Bytes,
    ) -> Result<H2Stream, HboneError> {
        let deadline = self.inner.config.connect_timeout;
        tokio::time::timeout(deadline, self.connect_once(key, cert, target, meta, first))
            .await
            .map_err(|_| HboneError::Timeout("HBONE connect"))?
    }

    async fn connect_once(
        &self,
        key: &PoolKey,
        cert: &WorkloadCertificate,
        target: SocketAddr,
        meta: &ConnectMeta,
        first: Bytes,
    ) -> Result<H2Stream, HboneError> {
        let (send, slot) = self.checkout(key, cert).await?;
        match open_stream(send, target, meta, &first).await {
            Err(HboneError::H2(e)) if went_away(&e) => {
                // The server is shutting this connection down (GOAWAY): the CONNECT was not
                // processed, so it is safe to send it again, over another connection.
                slot.0.retire();
                drop(slot);
                let (send, slot) = self.checkout(key, cert).await?;
                let (response, stream) = open_stream(send, target, meta, &first).await?;
                Ok(H2Stream::new(stream, response, Some(Box::new(slot))))
            }
            Err(e) => Err(e),
            Ok((response, stream)) => Ok(H2Stream::new(stream, response, Some(Box::new(slot)))),
        }
    }

    /// Open HTTP/2 connections of this pool, busy or idle.
    pub fn open_connections(&self) -> usize {
        self.inner.gauges.own.connections()
    }

    /// Connections this pool opened since it was created.
    pub fn connections_opened(&self) -> u64 {
        self.inner.gauges.own.connections_opened()
    }

    /// This pool's own counters (not the shared ones given to [`Pool::with_stats`]).
    pub fn stats(&self) -> PoolStats {
        self.inner.gauges.own.clone()
    }

    /// Shuts the pool down: new checkouts fail with [`HboneError::PoolClosed`], idle
    /// connections close at once, busy ones as soon as their last stream ends, and every key
    /// goes. Streams already open carry on. Dropping the last handle of a pool does the same.
    pub fn drain(&self) {
        self.inner.drain();
    }

    async fn checkout(
        &self,
        key: &PoolKey,
        cert: &WorkloadCertificate,
    ) -> Result<(SendRequest<Bytes>, StreamSlot), HboneError> {
        let max = self.inner.config.max_streams;
        loop {
            let (attempt, start) = {
                let mut state = lock(&self.inner.state);
                if state.drained {
                    return Err(HboneError::PoolClosed);
                }
                let entry = match state.keys.entry(key.clone()) {
                    Entry::Occupied(e) => e.into_mut(),
                    Entry::Vacant(e) => {
                        self.inner.gauges.key_added();
                        e.insert(KeyState::default())
                    }
                };
                entry.conns.retain(|c| !c.state.is_finished());
                if let Some(found) = entry
                    .conns
                    .iter()
                    .find_map(|c| c.state.try_reserve(max).map(|slot| (c.send.clone(), slot)))
                {
                    return Ok(found);
                }
                // An attempt whose task ended without a result (it panicked) is no attempt.
                let in_flight = entry.attempt.as_ref().filter(|a| a.has_changed().is_ok());
                match in_flight {
                    Some(attempt) => (attempt.clone(), None),
                    None => {
                        let now = Instant::now();
                        if entry.backoff_until.is_some_and(|t| t > now) {
                            let err = entry
                                .last_error
                                .clone()
                                .unwrap_or(HboneError::Timeout("HBONE connection setup"));
                            tracing::debug!(dst = %key.dst, error = %err, "HBONE destination backing off; failing fast");
                            return Err(err);
                        }
                        let (tx, rx) = watch::channel(None);
                        entry.attempt = Some(rx.clone());
                        (rx, Some(tx))
                    }
                }
            };
            if let Some(tx) = start {
                self.start_attempt(key, cert, tx);
            }
            match wait_for(attempt).await {
                // A new connection is there: take a slot on it (unless others filled it).
                Ok(()) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Opens a connection for `key` in a task of its own, so it completes (and records its
    /// outcome for the key) even when the callers waiting for it give up.
    fn start_attempt(
        &self,
        key: &PoolKey,
        cert: &WorkloadCertificate,
        tx: watch::Sender<Option<Result<(), HboneError>>>,
    ) {
        let tls = crate::tls::cached_client_config(cert, &key.dst_identities);
        let inner = Arc::downgrade(&self.inner);
        let connector = self.inner.connector.clone();
        let config = self.inner.config.clone();
        let key = key.clone();
        tokio::spawn(async move {
            let result = conn::handshake(&*connector, &key, tls, &config).await;
            let outcome = match inner.upgrade() {
                Some(pool) => pool.attempt_done(&key, result),
                None => Err((HboneError::PoolClosed, None)),
            };
            match outcome {
                Ok(()) => {
                    tx.send_replace(Some(Ok(())));
                }
                Err((e, forget_at)) => {
                    tx.send_replace(Some(Err(e)));
                    if let Some(forget_at) = forget_at {
                        // Remove the key once its failure is forgotten, unless in use again.
                        tokio::time::sleep_until(forget_at).await;
                        if let Some(pool) = inner.upgrade() {
                            pool.prune(&key);
                        }
                    }
                }
            }
        });
    }
}

impl PoolInner {
    /// Records an attempt's outcome under the lock. On failure, returns when the key's
    /// failure may be forgotten.
    fn attempt_done(
        self: &Arc<Self>,
        key: &PoolKey,
        result: Result<(SendRequest<Bytes>, conn::H2Connection), HboneError>,
    ) -> Result<(), (HboneError, Option<Instant>)> {
        let mut state = lock(&self.state);
        if state.drained {
            // Dropping the connection closes it.
            return Err((HboneError::PoolClosed, None));
        }
        let entry = match state.keys.entry(key.clone()) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                self.gauges.key_added();
                e.insert(KeyState::default())
            }
        };
        entry.attempt = None;
        match result {
            Ok((send, h2)) => {
                entry.failures = 0;
                entry.backoff_until = None;
                entry.forget_at = None;
                entry.last_error = None;
                let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                let pool = Arc::downgrade(self);
                let owner = key.clone();
                let on_closed = move || {
                    if let Some(pool) = Weak::upgrade(&pool) {
                        pool.connection_closed(&owner, id);
                    }
                };
                let conn = conn::spawn(
                    id,
                    send,
                    h2,
                    &self.config,
                    self.gauges.clone(),
                    key.dst,
                    on_closed,
                );
                entry.conns.push(conn);
                Ok(())
            }
            Err(e) => {
                entry.failures = entry.failures.saturating_add(1);
                let delay = backoff(&self.config, entry.failures);
                let now = Instant::now();
                entry.backoff_until = Some(now + delay);
                let forget_at = now + delay * 2;
                entry.forget_at = Some(forget_at);
                entry.last_error = Some(e.clone());
                tracing::debug!(dst = %key.dst, error = %e, failures = entry.failures, backoff_ms = delay.as_millis() as u64, "HBONE connection attempt failed");
                // Waiters get the error; the key stays to remember it.
                Err((e, Some(forget_at)))
            }
        }
    }

    /// A connection's driver ended: forget it, and the key too if nothing else is left.
    fn connection_closed(&self, key: &PoolKey, id: u64) {
        let mut state = lock(&self.state);
        if let Some(entry) = state.keys.get_mut(key) {
            entry.conns.retain(|c| c.state.id != id);
        }
        self.remove_if_empty(&mut state, key);
    }

    /// Removes `key` if it holds nothing worth keeping.
    fn prune(&self, key: &PoolKey) {
        let mut state = lock(&self.state);
        self.remove_if_empty(&mut state, key);
    }

    fn remove_if_empty(&self, state: &mut PoolState, key: &PoolKey) {
        if state
            .keys
            .get(key)
            .is_some_and(|entry| entry.is_empty(Instant::now()))
        {
            state.keys.remove(key);
            self.gauges.keys_removed(1);
        }
    }

    fn drain(&self) {
        let keys = {
            let mut state = lock(&self.state);
            state.drained = true;
            std::mem::take(&mut state.keys)
        };
        self.gauges.keys_removed(keys.len());
        let mut conns = 0;
        for (_, entry) in keys {
            for conn in entry.conns {
                conn.state.drain();
                conns += 1;
            }
        }
        if conns > 0 {
            tracing::debug!(connections = conns, "HBONE pool drained");
        }
    }
}

impl Drop for PoolInner {
    fn drop(&mut self) {
        self.drain();
    }
}

/// The back-off after `failures` consecutive failed attempts: the initial one, doubling, capped.
fn backoff(config: &H2Config, failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    config
        .connect_backoff
        .saturating_mul(1 << doublings)
        .min(config.connect_backoff_max)
}

/// Waits for an attempt's outcome.
async fn wait_for(mut attempt: Attempt) -> Result<(), HboneError> {
    match attempt.wait_for(Option::is_some).await {
        Ok(outcome) => outcome.clone().unwrap_or(Ok(())),
        // The attempt's task ended without a word: only a panic does that.
        Err(_) => Err(HboneError::Timeout("HBONE connection setup")),
    }
}

/// Sends the CONNECT on `send`, and `first` behind it when not empty, and waits for its 200.
async fn open_stream(
    mut send: SendRequest<Bytes>,
    target: SocketAddr,
    meta: &ConnectMeta,
    first: &Bytes,
) -> Result<(h2::RecvStream, h2::SendStream<Bytes>), HboneError> {
    send = send.ready().await?;
    let (response, mut stream) = send.send_request(build_request(target, meta), false)?;
    if !first.is_empty() {
        // Queued before the connection task runs: it writes the HEADERS and this DATA frame in
        // one go. A few KiB at most, well within any initial window; h2 would hold back what
        // is not.
        stream.send_data(first.clone(), false)?;
    }
    let response = response.await?;
    if response.status() != StatusCode::OK {
        return Err(HboneError::Status(response.status()));
    }
    Ok((response.into_body(), stream))
}

/// Whether a stream failed because the server is going away before it took the stream.
fn went_away(e: &h2::Error) -> bool {
    e.is_go_away() || e.reason() == Some(h2::Reason::REFUSED_STREAM)
}
