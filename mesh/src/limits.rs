//! Process limits every daemon shares: the open-file limit raised at start, and an accept loop
//! that survives running out of file descriptors.
//!
//! A proxy holds two sockets per proxied connection; the usual soft limit (1024) would cap a
//! node at a few hundred connections while the hard limit allows far more. [`raise_fd_limit`]
//! lifts the soft limit to the hard one once at start (every daemon calls it and logs the
//! result at info).
//!
//! When the limit is reached anyway, `accept(2)` fails with `EMFILE`/`ENFILE` and the pending
//! connection stays queued: a plain retry loop spins at 100 % CPU and the client waits on a
//! connection nobody will take. [`Acceptor::accept`] instead counts the failure in
//! `mesh_accept_errors_total{listener,reason}`, warns at most once per
//! [`WARN_INTERVAL`] (with how many it did not log), takes the queued connections and closes
//! them with a reset (the clients fail at once, cleanly), and backs off briefly before accepting
//! again. Taking them needs descriptors the process has run out of: a thread with a descriptor
//! table of its own does it (`shedder`, started at the first shed, so an idle process has no
//! thread more), where nothing else in the process can take its slots.
//! The accept loop waits for the thread's answer (well under a millisecond; a thread that does
//! not answer within 200 ms is given up). Where that thread cannot start (`unshare` refused) or
//! fails later, the acceptor keeps [`SPARES`] descriptors instead, for good, and frees one to
//! accept into; another thread may take the freed descriptor first (a new HBONE connection,
//! say), so a second spare is there for the next try.
//! Service resumes by itself once connections close.
//!
//! Not `shutdown(SHUT_RD)` and `listen` again on the listener, although that resets its whole
//! queue without a descriptor: between the two calls the socket is closed, and if the runtime's
//! driver polls it then it sees a hang-up, which tokio keeps as the listener's readiness for
//! good; every later accept then finds the listener ready and the accept loop spins (tried, and
//! a test that held the window open hung).

use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::resource::{getrlimit, setrlimit, Resource};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::net::{TcpListener, TcpStream};

mod shedder;

/// Descriptors kept in reserve for shedding where the shedding thread cannot start: one can be
/// lost to a race with another thread and the next shed still has one.
pub const SPARES: usize = 2;

/// At most one "accept failed" warning per listener kind per this interval.
pub const WARN_INTERVAL: Duration = Duration::from_secs(5);
/// Pause after an accept failure for lack of descriptors: long enough not to spin, short
/// enough that service resumes promptly when connections close.
pub const FD_BACKOFF: Duration = Duration::from_millis(100);
/// Most queued connections reset in one go while out of descriptors.
pub const SHED_BATCH: usize = 128;
/// Pause after any other accept failure.
pub const OTHER_BACKOFF: Duration = Duration::from_millis(50);

/// The open-file limit after [`raise_fd_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdLimit {
    /// The soft limit before.
    pub before: u64,
    /// The soft limit now.
    pub soft: u64,
    /// The hard limit (the ceiling without privileges).
    pub hard: u64,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit.
pub fn raise_fd_limit() -> io::Result<FdLimit> {
    let (before, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(io::Error::from)?;
    if before < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(io::Error::from)?;
    }
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(io::Error::from)?;
    Ok(FdLimit { before, soft, hard })
}

/// [`raise_fd_limit`] for a daemon's start: logs the outcome (info), never fails the start.
pub fn raise_fd_limit_and_log(component: &str) -> Option<FdLimit> {
    match raise_fd_limit() {
        Ok(l) => {
            tracing::info!(
                component,
                soft = l.soft,
                hard = l.hard,
                before = l.before,
                "open file limit (RLIMIT_NOFILE) raised to the hard limit"
            );
            Some(l)
        }
        Err(e) => {
            tracing::warn!(component, error = %e, "cannot raise the open file limit (RLIMIT_NOFILE)");
            None
        }
    }
}

/// Why an accept failed, as counted.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum AcceptError {
    /// `EMFILE` or `ENFILE`: the process or the system is out of file descriptors.
    fd_limit,
    /// Anything else (`ENOBUFS`, `ENOMEM`, a connection aborted while queued, ...).
    other,
}

impl AcceptError {
    /// The class of `e`.
    pub fn of(e: &io::Error) -> Self {
        match e.raw_os_error() {
            Some(libc_errno) if is_fd_exhaustion(libc_errno) => AcceptError::fd_limit,
            _ => AcceptError::other,
        }
    }
}

/// Errors that accept(2) reports for the connection being accepted, not for the listener
/// (its man page: treat them like EAGAIN and retry).
fn is_client_side(e: &io::Error) -> bool {
    use nix::errno::Errno;
    e.kind() == io::ErrorKind::ConnectionAborted
        || e.raw_os_error().is_some_and(|errno| {
            [
                Errno::ECONNABORTED,
                Errno::EPROTO,
                Errno::ENETDOWN,
                Errno::ENOPROTOOPT,
                Errno::EHOSTDOWN,
                Errno::ENONET,
                Errno::EHOSTUNREACH,
                Errno::EOPNOTSUPP,
                Errno::ENETUNREACH,
            ]
            .contains(&Errno::from_raw(errno))
        })
}

fn is_fd_exhaustion(errno: i32) -> bool {
    errno == nix::errno::Errno::EMFILE as i32 || errno == nix::errno::Errno::ENFILE as i32
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AcceptLabels {
    listener: &'static str,
    reason: AcceptError,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShedLabels {
    listener: &'static str,
}

/// Rate limit for one listener kind's warnings.
#[derive(Debug, Default)]
struct WarnState {
    last: Option<Instant>,
    suppressed: u64,
}

/// Accepts connections for a process: counts and logs failures, sheds connections while out
/// of descriptors (see the module docs). Cheap to clone; one per process.
#[derive(Debug, Clone)]
pub struct Acceptor {
    errors: Family<AcceptLabels, Counter>,
    warned: Arc<Mutex<std::collections::HashMap<&'static str, WarnState>>>,
    /// How queued connections are taken while out of descriptors.
    shedding: Arc<Mutex<Shedding>>,
    shed: Arc<AtomicU64>,
    /// The same count by listener, exported as `mesh_accept_shed_total`.
    shed_by_listener: Family<ShedLabels, Counter>,
}

/// How an acceptor takes queued connections while out of descriptors.
#[derive(Debug)]
enum Shedding {
    /// Through the shedding thread (started at the first shed).
    Thread(shedder::Shedder),
    /// By freeing one of these spares to accept into, where the thread cannot start.
    Spares(Vec<File>),
}

impl Default for Acceptor {
    fn default() -> Self {
        Acceptor::new()
    }
}

impl Acceptor {
    /// An acceptor whose counts are not exported (tests, tools).
    pub fn new() -> Self {
        let shedding = match shedder::Shedder::new() {
            Ok(s) => Shedding::Thread(s),
            Err(e) => {
                tracing::debug!(error = %e, "no link for a shedding thread; spare descriptors instead");
                Shedding::Spares(Vec::new())
            }
        };
        let a = Acceptor {
            errors: Family::default(),
            warned: Arc::default(),
            shedding: Arc::new(Mutex::new(shedding)),
            shed: Arc::default(),
            shed_by_listener: Family::default(),
        };
        a.refill_spares();
        a
    }

    /// An acceptor counting into `mesh_accept_errors_total{listener,reason}` and
    /// `mesh_accept_shed_total{listener}` in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let a = Acceptor::new();
        registry.register(
            "mesh_accept_errors",
            "Failed accepts by listener and reason (fd_limit: out of file descriptors)",
            a.errors.clone(),
        );
        registry.register(
            "mesh_accept_shed",
            "Connections reset while queued because the process was out of file descriptors, by listener",
            a.shed_by_listener.clone(),
        );
        a
    }

    /// Accept failures of `listener` for `reason` so far.
    pub fn errors(&self, listener: &'static str, reason: AcceptError) -> u64 {
        self.errors
            .get_or_create(&AcceptLabels { listener, reason })
            .get()
    }

    /// Connections taken and reset at once because the process was out of descriptors.
    pub fn shed(&self) -> u64 {
        self.shed.load(Ordering::Relaxed)
    }

    /// The next connection on `listener` (named `name` in logs and metrics). Failures are
    /// counted, logged (rate-limited) and followed by a short pause; never returns an error.
    pub async fn accept(
        &self,
        listener: &TcpListener,
        name: &'static str,
    ) -> (TcpStream, SocketAddr) {
        loop {
            match listener.accept().await {
                Ok(conn) => return conn,
                // One client's connection failed before we took it (reset while queued):
                // nothing is wrong with the listener, so no pause, count or warning, or any
                // client could stall everyone's accepts.
                Err(e) if is_client_side(&e) => continue,
                Err(e) => {
                    let reason = AcceptError::of(&e);
                    self.errors
                        .get_or_create(&AcceptLabels {
                            listener: name,
                            reason,
                        })
                        .inc();
                    self.warn(name, reason, &e);
                    let pause = match reason {
                        AcceptError::fd_limit => {
                            self.shed_queued(listener, name);
                            FD_BACKOFF
                        }
                        AcceptError::other => OTHER_BACKOFF,
                    };
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }

    fn warn(&self, name: &'static str, reason: AcceptError, e: &io::Error) {
        let mut warned = self.warned.lock().unwrap_or_else(|p| p.into_inner());
        let state = warned.entry(name).or_default();
        let now = Instant::now();
        if state
            .last
            .is_some_and(|last| now.duration_since(last) < WARN_INTERVAL)
        {
            state.suppressed += 1;
            return;
        }
        let suppressed = std::mem::take(&mut state.suppressed);
        state.last = Some(now);
        drop(warned);
        match reason {
            AcceptError::fd_limit => tracing::warn!(
                listener = name,
                error = %e,
                suppressed,
                shed_total = self.shed(),
                "accept failed: out of file descriptors (RLIMIT_NOFILE reached); new connections are reset until some close"
            ),
            AcceptError::other => {
                tracing::warn!(listener = name, error = %e, suppressed, "accept failed")
            }
        }
    }

    /// Takes the queued connections (up to [`SHED_BATCH`]) and resets them one by one, so their
    /// clients fail now instead of waiting in the queue: through the shedding thread, or by
    /// giving up a spare descriptor and opening spares again.
    fn shed_queued(&self, listener: &TcpListener, name: &'static str) {
        let shed = self.shed_with(listener);
        self.shed.fetch_add(shed, Ordering::Relaxed);
        self.shed_by_listener
            .get_or_create(&ShedLabels { listener: name })
            .inc_by(shed);
    }

    /// [`Acceptor::shed_queued`] without the counting; returns how many were reset.
    fn shed_with(&self, listener: &TcpListener) -> u64 {
        let mut shedding = self.shedding.lock().unwrap_or_else(|p| p.into_inner());
        if let Shedding::Thread(shedder) = &mut *shedding {
            match shedder.shed(listener.as_fd()) {
                Ok(n) => return n,
                Err(e) => {
                    tracing::warn!(error = %e, "no shedding thread; spare descriptors from now on");
                    // Its link closes with it: two descriptors free for the spares.
                    *shedding = Shedding::Spares(Vec::new());
                    refill(&mut shedding);
                }
            }
        }
        let Shedding::Spares(spares) = &mut *shedding else {
            return 0;
        };
        // Synchronous (no await between giving the spare up and taking it back), so other
        // tasks have the least chance to take the freed descriptor first; other threads still
        // can, hence a second spare.
        let mut shed = 0;
        if let Some(spare) = spares.pop() {
            drop(spare);
            for _ in 0..SHED_BATCH {
                // Each reset frees the descriptor the next accept needs. The listener is
                // non-blocking: an empty queue is `WouldBlock`, and tokio's next accept simply
                // tries again.
                let Ok((socket, _)) = socket2::SockRef::from(listener).accept() else {
                    break;
                };
                // Linger 0: close() sends a reset.
                let _ = socket.set_linger(Some(Duration::ZERO));
                drop(socket);
                shed += 1;
            }
        }
        refill(&mut shedding);
        shed
    }

    /// Opens spares, where they are the way to shed, until there are [`SPARES`].
    fn refill_spares(&self) {
        refill(&mut self.shedding.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// An acceptor without the shedding thread, as where it cannot start.
    #[cfg(test)]
    fn with_spares_only() -> Self {
        let a = Acceptor::new();
        *a.shedding.lock().unwrap_or_else(|p| p.into_inner()) = Shedding::Spares(Vec::new());
        a.refill_spares();
        a
    }

    /// An acceptor whose shedding thread never answers, and the thread's end of the link.
    #[cfg(test)]
    fn with_a_silent_thread() -> (Self, std::os::fd::OwnedFd) {
        let a = Acceptor::new();
        let (shedder, far) = shedder::Shedder::silent().expect("socketpair");
        *a.shedding.lock().unwrap_or_else(|p| p.into_inner()) = Shedding::Thread(shedder);
        (a, far)
    }

    /// An acceptor whose shedding thread is gone.
    #[cfg(test)]
    fn with_the_thread_gone() -> Self {
        let a = Acceptor::new();
        *a.shedding.lock().unwrap_or_else(|p| p.into_inner()) =
            Shedding::Thread(shedder::Shedder::gone().expect("socketpair"));
        a
    }

    /// How many spares are held now.
    #[cfg(test)]
    fn spares(&self) -> usize {
        match &*self.shedding.lock().unwrap_or_else(|p| p.into_inner()) {
            Shedding::Spares(spares) => spares.len(),
            Shedding::Thread(_) => 0,
        }
    }

    /// Whether queued connections are shed through the thread (started or not).
    #[cfg(test)]
    fn sheds_through_the_thread(&self) -> bool {
        matches!(
            &*self.shedding.lock().unwrap_or_else(|p| p.into_inner()),
            Shedding::Thread(_)
        )
    }
}

/// Opens spares until there are [`SPARES`], or no descriptor is free (the next shed tries
/// again); nothing when shedding goes through the thread.
fn refill(shedding: &mut Shedding) {
    if let Shedding::Spares(spares) = shedding {
        while spares.len() < SPARES {
            match File::open("/dev/null") {
                Ok(f) => spares.push(f),
                Err(_) => break,
            }
        }
    }
}

#[cfg(test)]
mod tests;
