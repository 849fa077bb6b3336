//! What a client can make ztunnel hold, bounded.
//!
//! - **Descriptors.** Every pod listener accepts through one [`mesh::limits::Acceptor`]: out of
//!   file descriptors, the queued connections are reset (counted in
//!   `mesh_accept_shed_total{listener}`), the failure is counted in
//!   `mesh_accept_errors_total{listener,reason="fd_limit"}` and warned about (rate-limited),
//!   and the listener backs off briefly instead of spinning.
//! - **Connections per pod** (`--max-connections-per-pod`, off by default): a pod's live
//!   proxied connections in both directions (outbound on 15001, inbound plaintext on 15006,
//!   HBONE streams on 15008) count against one cap; one more is refused (a reset on 15001 and
//!   15006, 503 on an HBONE stream, which the client's ztunnel turns into a reset), counted as
//!   `ztunnel_connection_failures_total{reason="connection_limit"}` and logged (rate-limited).
//! - **Set-up time.** Connecting to the next hop (the application, a passthrough destination)
//!   has a deadline, `--connect-timeout`; an HBONE tunnel's set-up has its own (the pool's
//!   `connect_timeout`, the server's `handshake_timeout`).
//!
//! A client that connects and then sends nothing is legal (server-speaks-first protocols):
//! once set up, a silent connection is kept, but it holds only its two sockets and a task,
//! no buffer (`mesh::copy` gives a waiting direction's buffer back), so its cost is bounded
//! per connection and the count by the cap above and the descriptor limit.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use mesh::copy::Abort;
use mesh::limits::Acceptor;
use tokio::net::{TcpListener, TcpStream};

use super::hop::Hop;
use super::source::Source;
use super::PodContext;
use crate::netns::Netns;
use crate::telemetry::{Direction, FailureReason, Telemetry};

/// At most one "connection limit reached" line per pod per this interval.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(5);

/// The node's limits, shared by every pod proxy.
#[derive(Debug)]
pub struct Limits {
    acceptor: Acceptor,
    max_per_pod: Option<NonZeroUsize>,
    connect_timeout: Duration,
    pods: Mutex<HashMap<String, Weak<PodCount>>>,
}

/// Live connections of one pod, counted against the cap.
#[derive(Debug)]
struct PodCount {
    /// The pod, for the refusal's log line and error.
    uid: Arc<str>,
    /// Its cap.
    max: NonZeroUsize,
    open: AtomicUsize,
    refused: AtomicU64,
    /// Milliseconds since `epoch` of the last refusal logged.
    last_logged: AtomicU64,
    epoch: Instant,
}

/// One admitted connection; gives its place back when dropped. Without a cap it is empty.
#[derive(Debug)]
#[must_use = "the connection counts against its pod's cap while this is held"]
pub struct Slot(Option<Arc<PodCount>>);

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(count) = &self.0 {
            count.open.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// A pod's place under the per-pod cap ([`Limits::pod_cap`]); empty when there is no cap.
#[derive(Debug, Clone, Default)]
pub struct PodCap(Option<Arc<PodCount>>);

impl PodCap {
    /// A slot for one more of the pod's connections, or the cap it is at (counted, and logged
    /// at most once per interval).
    pub fn admit(&self) -> Result<Slot, LimitReached> {
        let Some(count) = &self.0 else {
            return Ok(Slot(None));
        };
        let max = count.max.get();
        let taken = count
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            });
        match taken {
            Ok(_) => Ok(Slot(Some(count.clone()))),
            Err(_) => {
                let refused = count.refused.fetch_add(1, Ordering::Relaxed) + 1;
                if count.should_log() {
                    tracing::warn!(pod = %count.uid, max, refused_total = refused, "connection refused: the pod is at its connection cap (--max-connections-per-pod)");
                }
                Err(LimitReached {
                    uid: count.uid.to_string(),
                    max,
                })
            }
        }
    }
}

/// A connection refused because its pod is at its cap.
#[derive(Debug, thiserror::Error)]
#[error("pod {uid} has {max} live connections, its cap (--max-connections-per-pod)")]
pub struct LimitReached {
    /// The pod.
    pub uid: String,
    /// The cap.
    pub max: usize,
}

impl Limits {
    /// Limits with a per-pod cap (`None`: none) and a next-hop connect deadline, accepting
    /// through `acceptor`.
    pub fn new(
        acceptor: Acceptor,
        max_per_pod: Option<NonZeroUsize>,
        connect_timeout: Duration,
    ) -> Self {
        Limits {
            acceptor,
            max_per_pod,
            connect_timeout,
            pods: Mutex::default(),
        }
    }

    /// The node's acceptor (HBONE connections count no place of their own: their streams do).
    pub fn acceptor(&self) -> &Acceptor {
        &self.acceptor
    }

    /// `uid`'s place under the cap, resolved once when its proxy starts, so that admitting a
    /// connection takes no lock and no lookup; proxies of the same pod share it. Empty (and no
    /// lock taken) when there is no cap.
    pub fn pod_cap(&self, uid: &Arc<str>) -> PodCap {
        PodCap(self.max_per_pod.map(|max| self.count(uid, max)))
    }

    /// Live connections of pod `uid` counted against the cap (0 without a cap).
    pub fn open(&self, uid: &str) -> usize {
        self.lock()
            .get(uid)
            .and_then(Weak::upgrade)
            .map_or(0, |c| c.open.load(Ordering::Acquire))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Weak<PodCount>>> {
        self.pods.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The pod's count, shared while its proxies or any of its connections hold it.
    fn count(&self, uid: &Arc<str>, max: NonZeroUsize) -> Arc<PodCount> {
        let mut pods = self.lock();
        if let Some(count) = pods.get(&**uid).and_then(Weak::upgrade) {
            return count;
        }
        // A pod with no proxy and no live connection left holds nothing here.
        pods.retain(|_, c| c.strong_count() > 0);
        let count = Arc::new(PodCount {
            uid: uid.clone(),
            max,
            open: AtomicUsize::new(0),
            refused: AtomicU64::new(0),
            last_logged: AtomicU64::new(0),
            epoch: Instant::now(),
        });
        pods.insert(uid.to_string(), Arc::downgrade(&count));
        count
    }

    /// The next connection on one of `pod`'s listeners (`name`, counting as `direction`), with
    /// its place under the pod's cap. Connections over the cap are reset and counted here.
    pub async fn accept(
        &self,
        telemetry: &Telemetry,
        pod: &PodContext,
        listener: &TcpListener,
        name: &'static str,
        direction: Direction,
    ) -> (TcpStream, SocketAddr, Slot) {
        loop {
            let (mut stream, peer) = self.acceptor.accept(listener, name).await;
            match pod.cap.admit() {
                Ok(slot) => return (stream, peer, slot),
                Err(_) => {
                    stream.abort();
                    telemetry.failure(direction, FailureReason::connection_limit);
                }
            }
        }
    }

    /// Connects to `dst` from inside the pod (see [`PodContext::connect`]) within the
    /// connect deadline; past it, a `TimedOut` error.
    pub async fn connect(
        &self,
        pod: &PodContext,
        home: &Netns,
        dst: SocketAddr,
        hop: Hop,
        source: Source,
    ) -> io::Result<TcpStream> {
        let connect = pod.connect(home, dst, hop, source);
        match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(result) => result,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "connect to {dst} timed out after {:?} (--connect-timeout)",
                    self.connect_timeout
                ),
            )),
        }
    }
}

impl PodCount {
    /// Whether a refusal now should be logged (at most one per interval per pod).
    fn should_log(&self) -> bool {
        let now = self.epoch.elapsed().as_millis() as u64;
        let last = self.last_logged.load(Ordering::Relaxed);
        let interval = REFUSAL_LOG_INTERVAL.as_millis() as u64;
        (last == 0 || now.saturating_sub(last) >= interval)
            && self
                .last_logged
                .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

#[cfg(test)]
mod tests;
