//! Live connections, by the pod they belong to, and what closes them before their ends do.
//!
//! Every connection ztunnel proxies for a pod (outbound from it, inbound to it, and the HBONE
//! connections carrying inbound streams) is registered here under the pod's [`PodKey`] while
//! it lives. Two things close a live connection early:
//!
//! - policy: when the policies in scope of a pod change, its inbound ones are evaluated again
//!   ([`LiveConnections::recheck`], outside the registry's lock, once per distinct connection);
//!   those now denied close at once;
//! - pod removal ([`LiveConnections::pod_removed`]): the pod's new connections are refused at
//!   once, the live ones go on for the drain period, and whatever is still open then is closed.
//!   The same pod handed over again before that ([`LiveConnections::pod_started`], same uid and
//!   network namespace: a label flip, an agent snapshot) keeps them.
//!
//! Closing ends the connection's copy task, which drops both sockets; its access-log line and
//! `response_flags` carry the [`CloseReason`].

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh::copy::{Abort, CopyError, Transferred};
use mesh::Identity;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
// Tokio's clock: connection ages follow paused time in tests.
use tokio::time::Instant;

mod counted;
pub mod proxied;
mod recheck;

use counted::Counted;
pub use proxied::finish;

/// One serving of a pod: its uid and the network namespace it was handed over with. A new
/// sandbox of the same pod (new namespace) is another key, so the old one's drain goes on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodKey {
    /// Workload uid.
    pub uid: Arc<str>,
    /// Inode of the pod's network namespace. Not reused while any of our sockets (or the
    /// namespace fd a proxy holds) keeps the namespace alive.
    pub netns: u64,
}

impl fmt::Display for PodKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (netns {})", self.uid, self.netns)
    }
}

/// Why ztunnel closed a live connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// Policy no longer allows it; the deciding reason.
    Denied(String),
    /// Its pod left the mesh (ZDS `del`, or missing from a snapshot) and the drain period
    /// ended before the connection did.
    PodRemoved {
        /// The drain period it was given.
        drain: Duration,
    },
    /// ztunnel is stopping (SIGTERM: a newer ztunnel took over, or the node goes) and its
    /// drain deadline ended before the connection did.
    Shutdown {
        /// The drain deadline it was given.
        deadline: Duration,
    },
    /// Neither side sent a byte within the first-byte timeout: a client that connects and
    /// never sends, to a server that waits for it, holds ztunnel's resources for nothing.
    Silent {
        /// The timeout it was given.
        after: Duration,
    },
}

impl CloseReason {
    /// The `response_flags` value for metrics and the access log.
    pub fn flags(&self) -> &'static str {
        match self {
            CloseReason::Denied(_) => "DENY",
            CloseReason::PodRemoved { .. } | CloseReason::Shutdown { .. } => "DRAIN",
            CloseReason::Silent { .. } => "SILENT",
        }
    }

    /// Whether the connection ends with a clean close (FIN, END_STREAM) rather than a reset:
    /// a drain that ran out closes what the application may still be using, so it must see
    /// an ordinary end, not an error.
    pub fn is_graceful(&self) -> bool {
        matches!(
            self,
            CloseReason::PodRemoved { .. }
                | CloseReason::Shutdown { .. }
                | CloseReason::Silent { .. }
        )
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::Denied(reason) => write!(f, "no longer allowed ({reason})"),
            CloseReason::PodRemoved { drain } => write!(
                f,
                "pod removed from the mesh: drain period of {drain:?} ended"
            ),
            CloseReason::Shutdown { deadline } => {
                write!(f, "ztunnel stopping: drain deadline of {deadline:?} ended")
            }
            CloseReason::Silent { after } => {
                write!(
                    f,
                    "no byte either way within the first-byte timeout of {after:?}"
                )
            }
        }
    }
}

/// What a registered connection is; decides what re-checks and closes it.
#[derive(Debug, Clone)]
pub enum Kind {
    /// Inbound to the pod, allowed by policy: evaluated again on every config change.
    Inbound(super::authz::Inbound),
    /// Outbound from the pod (policy is the destination's business).
    Outbound,
    /// An HBONE connection to the pod. It carries `Inbound` streams, so it is closed after
    /// them: a stream whose tunnel broke first would log a broken pipe instead of the reason.
    Tunnel,
}

struct Live {
    pod: PodKey,
    kind: Kind,
    /// Evaluated by a re-check since it was registered (its admission check may have read the
    /// store just before a change whose re-check did not see it yet).
    rechecked: bool,
    /// For `/connections`: when it was registered; its bytes so far and its ends (shared
    /// with the guard, which sets them without the registry's lock).
    since: Instant,
    counts: Arc<Counts>,
    /// Registered beside another pod's entry ([`LiveConnections::register_beside`]): the
    /// shared ends are that entry's view, so this one shows its own [`Kind`]'s.
    beside: bool,
}

/// The two ends of a proxied connection, as the admin endpoint shows them. Inbound ones are
/// known from their [`Kind`]; outbound ones are described once routed ([`LiveGuard::describe`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Ends {
    /// The source (the client; for inbound through HBONE, its address without a port).
    pub src: Option<String>,
    /// The destination (a workload or service address and port).
    pub dst: Option<SocketAddr>,
    /// The source's identity, when known.
    #[serde(serialize_with = "uri")]
    pub src_identity: Option<Identity>,
    /// The destination's identity, when known (expected for outbound HBONE).
    #[serde(serialize_with = "uri")]
    pub dst_identity: Option<Identity>,
    /// The waypoint in the path, if any.
    pub waypoint: Option<String>,
}

/// An identity as its SPIFFE URI (or null).
fn uri<S: serde::Serializer>(id: &Option<Identity>, s: S) -> Result<S::Ok, S::Error> {
    match id {
        Some(id) => s.serialize_str(id.as_uri()),
        None => s.serialize_none(),
    }
}

/// One live proxied connection, for `/connections` (read-only; HBONE tunnels are not listed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConnectionInfo {
    /// The uid of the pod it belongs to.
    pub pod_uid: String,
    /// `inbound` (to the pod) or `outbound` (from it).
    pub direction: &'static str,
    /// Its ends, as far as known yet.
    #[serde(flatten)]
    pub ends: Ends,
    /// Bytes from the source to the destination so far.
    pub bytes_sent: u64,
    /// Bytes from the destination to the source so far.
    pub bytes_received: u64,
    /// Milliseconds since it was accepted.
    pub age_ms: u64,
    /// `open`; `draining` (its pod left the mesh); `closing` (ztunnel is closing it).
    pub state: &'static str,
}

enum PodState {
    /// The pod's proxy accepts new connections.
    Serving,
    /// Removed: new connections are refused; the live ones are closed when `timer` fires.
    Draining {
        drain_id: u64,
        timer: Option<JoinHandle<()>>,
    },
}

#[derive(Default)]
struct Inner {
    conns: HashMap<u64, Live>,
    pods: HashMap<PodKey, PodState>,
}

impl Inner {
    /// (proxied connections, HBONE tunnels) registered for `pod`.
    fn count(&self, pod: &PodKey) -> (usize, usize) {
        self.conns
            .values()
            .filter(|l| l.pod == *pod)
            .fold((0, 0), |(c, t), l| match l.kind {
                Kind::Tunnel => (c, t + 1),
                _ => (c + 1, t),
            })
    }

    /// Closes everything of `pod` with `reason`; returns how many proxied connections.
    fn close_pod(&self, pod: &PodKey, reason: &CloseReason) -> usize {
        let mut closed = 0;
        // Connections first, then the tunnels under them (see `Kind::Tunnel`).
        for tunnels in [false, true] {
            let of_pod = self
                .conns
                .values()
                .filter(|l| l.pod == *pod && matches!(l.kind, Kind::Tunnel) == tunnels);
            for l in of_pod {
                if l.counts.close.set(reason) {
                    closed += usize::from(!tunnels);
                }
            }
        }
        closed
    }
}

/// A removed pod whose connections are draining, for `/config_dump`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DrainingPod {
    /// Workload uid.
    pub uid: String,
    /// Inode of its network namespace.
    pub netns_inode: u64,
    /// Proxied connections still open.
    pub connections: usize,
    /// HBONE connections to it still open.
    pub tunnels: usize,
}

/// How many connections are registered, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LiveCounts {
    /// Proxied connections (inbound and outbound).
    pub connections: usize,
    /// HBONE connections to served or draining pods.
    pub tunnels: usize,
}

/// The pods served or draining, and every connection open for them.
#[derive(Default)]
pub struct LiveConnections {
    next: AtomicU64,
    inner: Mutex<Inner>,
    /// Serializes re-checks; what the last one saw of each pod's policies.
    rechecks: Mutex<recheck::State>,
    /// Policy evaluations done by re-checks so far.
    evaluations: AtomicU64,
    /// Of those, how many ran while the registry's lock was free (tests).
    #[cfg(test)]
    evaluations_unlocked: AtomicU64,
    /// Close a connection on which neither side sent a byte this long after it was set up
    /// (`None`: never).
    first_byte_timeout: Option<Duration>,
}

/// Held by a proxied connection; unregisters it on drop. [`LiveGuard::closed`] resolves with
/// the reason when ztunnel must close it.
pub struct LiveGuard {
    id: u64,
    registry: Arc<LiveConnections>,
    counts: Arc<Counts>,
}

impl LiveGuard {
    /// Counts `n` bytes read from the client before the copy started (sent with the CONNECT).
    pub fn read_before_copy(&self, n: usize) {
        self.counts.read.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Records the connection's ends for the admin endpoint (outbound: once routed).
    pub fn describe(&self, ends: Ends) {
        // Once per connection, and never the registry's lock: this is on every outbound
        // connection's path.
        let _ = self.counts.ends.set(ends);
    }

    /// Resolves when the connection must be closed, with the reason.
    pub async fn closed(&mut self) -> CloseReason {
        self.counts.close.wait().await
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.registry.lock().conns.remove(&self.id);
    }
}

impl LiveConnections {
    /// Connections on which neither side sends a byte within `timeout` are closed (cleanly:
    /// nothing was sent, so nothing is lost); `None` keeps them.
    pub fn with_first_byte_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.first_byte_timeout = timeout;
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The pod's proxy is serving: its new connections are accepted. When the same pod was
    /// draining (handed over again before the period ended), the drain stops and its live
    /// connections stay; returns how many.
    pub fn pod_started(&self, pod: &PodKey) -> Option<usize> {
        let mut inner = self.lock();
        match inner.pods.insert(pod.clone(), PodState::Serving) {
            Some(PodState::Draining { timer, .. }) => {
                if let Some(timer) = timer {
                    timer.abort();
                }
                let (conns, _) = inner.count(pod);
                Some(conns)
            }
            Some(PodState::Serving) | None => None,
        }
    }

    /// The pod's proxy stopped: its new connections are refused from now on, and those still
    /// open after `drain` are closed. Returns how many proxied connections are draining.
    ///
    /// The timer runs on the current tokio runtime; without one (the process is exiting)
    /// nothing is closed early.
    pub fn pod_removed(self: &Arc<Self>, pod: &PodKey, drain: Duration) -> usize {
        let mut inner = self.lock();
        let (conns, tunnels) = inner.count(pod);
        if conns + tunnels == 0 {
            inner.pods.remove(pod);
            return 0;
        }
        let drain_id = self.next.fetch_add(1, Ordering::Relaxed);
        let timer = tokio::runtime::Handle::try_current().ok().map(|rt| {
            let (this, pod) = (self.clone(), pod.clone());
            rt.spawn(async move {
                tokio::time::sleep(drain).await;
                this.drain_ended(&pod, drain_id, drain);
            })
        });
        inner
            .pods
            .insert(pod.clone(), PodState::Draining { drain_id, timer });
        conns
    }

    /// `pod`'s proxy stopped with the whole process (its listeners are closed): unlike a
    /// removal, the pod stays served, so a stream that an HBONE connection still carries after
    /// our GOAWAY (the peer sent it before it read the GOAWAY) is proxied rather than refused,
    /// and no timer of its own closes anything (ztunnel's shutdown closes what is left with
    /// [`LiveConnections::close_all`] at its drain deadline). Returns how many proxied
    /// connections it has.
    pub fn pod_stopping(&self, pod: &PodKey) -> usize {
        self.lock().count(pod).0
    }

    /// Closes every live connection with `reason` (proxied ones first, then the HBONE
    /// connections under them); returns how many proxied connections were closed.
    pub fn close_all(&self, reason: &CloseReason) -> usize {
        let inner = self.lock();
        let pods: std::collections::BTreeSet<PodKey> =
            inner.conns.values().map(|l| l.pod.clone()).collect();
        pods.iter().map(|pod| inner.close_pod(pod, reason)).sum()
    }

    fn drain_ended(&self, pod: &PodKey, drain_id: u64, drain: Duration) {
        let mut inner = self.lock();
        // A re-add (or a newer removal) since this timer started owns the pod now.
        if !matches!(inner.pods.get(pod), Some(PodState::Draining { drain_id: d, .. }) if *d == drain_id)
        {
            return;
        }
        inner.pods.remove(pod);
        let closed = inner.close_pod(pod, &CloseReason::PodRemoved { drain });
        tracing::info!(uid = %pod.uid, netns = pod.netns, closed, drain_secs = drain.as_secs_f64(), "drain period of a removed pod ended; closed its remaining connections");
    }

    /// Registers a connection of `pod`. `None` when the pod is not served (never handed over,
    /// removed, draining): the connection must be refused.
    pub fn register(self: &Arc<Self>, pod: &PodKey, kind: Kind) -> Option<LiveGuard> {
        self.insert(pod, kind, Arc::default(), false)
    }

    /// Registers `beside`'s connection under `pod` too (one connection between two pods this
    /// ztunnel serves, carried in-process): the two registrations share its counts and its
    /// close signal, so whatever closes either closes the connection. `None` when `pod` is
    /// not served.
    pub fn register_beside(
        self: &Arc<Self>,
        pod: &PodKey,
        kind: Kind,
        beside: &LiveGuard,
    ) -> Option<LiveGuard> {
        self.insert(pod, kind, beside.counts.clone(), true)
    }

    fn insert(
        self: &Arc<Self>,
        pod: &PodKey,
        kind: Kind,
        counts: Arc<Counts>,
        beside: bool,
    ) -> Option<LiveGuard> {
        let mut inner = self.lock();
        if !matches!(inner.pods.get(pod), Some(PodState::Serving)) {
            return None;
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        inner.conns.insert(
            id,
            Live {
                pod: pod.clone(),
                kind,
                rechecked: false,
                since: Instant::now(),
                counts: counts.clone(),
                beside,
            },
        );
        Some(LiveGuard {
            id,
            registry: self.clone(),
            counts,
        })
    }

    /// Live connections now (proxied connections and HBONE tunnels).
    pub fn len(&self) -> usize {
        self.lock().conns.len()
    }

    /// Live proxied connections and HBONE tunnels now, separately (for `/config_dump`).
    pub fn counts(&self) -> LiveCounts {
        let inner = self.lock();
        let tunnels = inner
            .conns
            .values()
            .filter(|l| matches!(l.kind, Kind::Tunnel))
            .count();
        LiveCounts {
            connections: inner.conns.len() - tunnels,
            tunnels,
        }
    }

    /// Whether none is live.
    pub fn is_empty(&self) -> bool {
        self.lock().conns.is_empty()
    }

    /// Every live proxied connection (not the HBONE tunnels), oldest first.
    pub fn connections(&self) -> Vec<ConnectionInfo> {
        let inner = self.lock();
        let mut out: Vec<((Instant, u64), ConnectionInfo)> = inner
            .conns
            .iter()
            .filter_map(|(id, l)| {
                let (direction, derived) = match &l.kind {
                    Kind::Tunnel => return None,
                    Kind::Outbound => ("outbound", Ends::default()),
                    Kind::Inbound(i) => (
                        "inbound",
                        Ends {
                            src: Some(i.conn.src_ip.to_string()),
                            dst: Some(SocketAddr::new(i.conn.dst_ip, i.conn.dst_port)),
                            src_identity: i.conn.src_identity.clone(),
                            dst_identity: None,
                            waypoint: i.via.as_ref().map(ToString::to_string),
                        },
                    ),
                };
                let state = if l.counts.close.is_set() {
                    "closing"
                } else if matches!(inner.pods.get(&l.pod), Some(PodState::Draining { .. })) {
                    "draining"
                } else {
                    "open"
                };
                let t = l.counts.get();
                let info = ConnectionInfo {
                    pod_uid: l.pod.uid.to_string(),
                    direction,
                    ends: match l.counts.ends.get() {
                        Some(ends) if !l.beside => ends.clone(),
                        _ => derived,
                    },
                    bytes_sent: t.a_to_b,
                    bytes_received: t.b_to_a,
                    age_ms: u64::try_from(l.since.elapsed().as_millis()).unwrap_or(u64::MAX),
                    state,
                };
                Some(((l.since, *id), info))
            })
            .collect();
        out.sort_by_key(|(order, _)| *order);
        out.into_iter().map(|(_, info)| info).collect()
    }

    /// Removed pods whose connections are still draining.
    pub fn draining(&self) -> Vec<DrainingPod> {
        let inner = self.lock();
        let mut out: Vec<DrainingPod> = inner
            .pods
            .iter()
            .filter(|(_, s)| matches!(s, PodState::Draining { .. }))
            .map(|(pod, _)| {
                let (connections, tunnels) = inner.count(pod);
                DrainingPod {
                    uid: pod.uid.to_string(),
                    netns_inode: pod.netns,
                    connections,
                    tunnels,
                }
            })
            .collect();
        out.sort_by(|a, b| (&a.uid, a.netns_inode).cmp(&(&b.uid, b.netns_inode)));
        out
    }
}

/// Why a proxied connection ended other than by both ends finishing.
#[derive(Debug, thiserror::Error)]
pub enum CopyEnd {
    /// Reading or writing failed.
    #[error(transparent)]
    Io(#[from] CopyError),
    /// ztunnel closed it.
    #[error("closed: {reason}")]
    Closed {
        /// Why.
        reason: CloseReason,
        /// What had been moved by then (`a_to_b`: read from the first side).
        transferred: Transferred,
    },
}

/// Copies both ways until both ends are done, or until `guard` says close; then both streams
/// are dropped. An error on one side resets the other ([`mesh::copy`]); a connection closed
/// because policy no longer allows it is reset on both sides, so neither application mistakes
/// it for a clean end; a drained one is closed.
pub async fn copy_until_closed<A, B>(
    a: A,
    mut b: B,
    mut guard: LiveGuard,
) -> Result<Transferred, CopyEnd>
where
    A: AsyncRead + AsyncWrite + Abort + Unpin,
    B: AsyncRead + AsyncWrite + Abort + Unpin,
{
    // The guard's counters: the admin endpoint reads them while the copy runs.
    let counts = guard.counts.clone();
    // Bytes read from `a` before the copy (sent with the CONNECT): the copy's totals lack them.
    let before = counts.get().a_to_b;
    let mut a = Counted {
        inner: a,
        counts: &counts,
    };
    let first_byte_timeout = guard.registry.first_byte_timeout;
    let result = tokio::select! {
        // The close first: when the tunnel under a stream breaks in the same instant, the log
        // names the reason rather than the broken pipe.
        biased;
        reason = guard.closed() => Err(CopyEnd::Closed { reason, transferred: counts.get() }),
        reason = silent(&counts, first_byte_timeout) => {
            Err(CopyEnd::Closed { reason, transferred: counts.get() })
        }
        res = mesh::copy::copy_bidirectional(&mut a, &mut b) => match res {
            Ok(t) => Ok(with_before(t, before)),
            Err(CopyError::Io { side, transferred, source }) => Err(CopyEnd::Io(CopyError::Io {
                side,
                transferred: with_before(transferred, before),
                source,
            })),
        },
    };
    match &result {
        Err(CopyEnd::Closed { reason, .. }) if reason.is_graceful() => {
            // Boxed: its two read buffers would otherwise sit in every connection's task
            // (about 9 KiB each, idle or not) for a close that few connections take.
            Box::pin(close_gracefully(&mut a, &mut b)).await;
        }
        Err(CopyEnd::Closed { .. }) => {
            a.abort();
            b.abort();
        }
        _ => {}
    }
    result
}

/// Resolves when `timeout` has passed and no byte has moved either way; never otherwise (a
/// connection that carried bytes is not timed out for being quiet later: an idle pooled
/// database connection is legitimate).
async fn silent(counts: &Counts, timeout: Option<Duration>) -> CloseReason {
    if let Some(after) = timeout {
        tokio::time::sleep(after).await;
        if counts.get() == Transferred::default() {
            return CloseReason::Silent { after };
        }
    }
    std::future::pending().await
}

/// How long a drained connection's peers get to answer our FIN / END_STREAM with theirs.
const GRACEFUL_CLOSE: Duration = Duration::from_secs(2);

/// Ends both sides as a clean close: FIN to a TCP peer, END_STREAM to an HBONE one, then reads
/// (and discards) until each peer ends its side too, for up to [`GRACEFUL_CLOSE`]. Closing a
/// TCP socket with unread bytes would send a reset; once the peer's FIN is read it is not.
async fn close_gracefully<A, B>(a: &mut A, b: &mut B)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    use tokio::io::AsyncWriteExt;
    let ends = async {
        let _ = tokio::join!(a.shutdown(), b.shutdown());
        let _ = tokio::join!(discard(a), discard(b));
    };
    let _ = tokio::time::timeout(GRACEFUL_CLOSE, ends).await;
}

/// Reads until EOF or an error.
async fn discard<S: AsyncRead + Unpin>(s: &mut S) {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 4096];
    while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
}

/// What the registry and a connection's guard share (one allocation per connection): the
/// bytes read from and written to one side, readable after its copy was dropped; the
/// connection's ends once described; and the signal to close it.
#[derive(Default)]
struct Counts {
    read: AtomicU64,
    written: AtomicU64,
    ends: std::sync::OnceLock<Ends>,
    close: CloseSignal,
}

/// The registry's "close this connection", set at most once and awaited by its copy loop. (A
/// `watch` channel did the same with a ~400-byte allocation per connection.)
#[derive(Default)]
struct CloseSignal {
    reason: Mutex<Option<CloseReason>>,
    notify: Notify,
}

impl CloseSignal {
    /// Sets `reason` unless a reason is set already; whether this call set it.
    fn set(&self, reason: &CloseReason) -> bool {
        {
            let mut r = self.reason.lock().unwrap_or_else(|p| p.into_inner());
            if r.is_some() {
                return false;
            }
            *r = Some(reason.clone());
        }
        // A permit when nobody waits yet: the next `wait` sees it.
        self.notify.notify_one();
        true
    }

    fn is_set(&self) -> bool {
        self.reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// The reason, once set (never, if the connection ends first).
    async fn wait(&self) -> CloseReason {
        loop {
            if let Some(r) = self
                .reason
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
            {
                return r;
            }
            self.notify.notified().await;
        }
    }
}

impl Counts {
    fn get(&self) -> Transferred {
        Transferred {
            a_to_b: self.read.load(Ordering::Relaxed),
            b_to_a: self.written.load(Ordering::Relaxed),
        }
    }
}

/// `t` with `before` more bytes from `a` to `b`.
fn with_before(t: Transferred, before: u64) -> Transferred {
    Transferred {
        a_to_b: t.a_to_b + before,
        ..t
    }
}

#[cfg(test)]
mod tests;
