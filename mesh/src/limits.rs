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
//! [`WARN_INTERVAL`] (with how many it did not log), resets every queued connection (the
//! clients fail at once, cleanly) and backs off briefly before accepting again. The reset needs
//! no descriptor (see [`reset_queue`]): an earlier version freed a spare descriptor to accept and
//! reset them one by one, and lost whenever another thread (a new HBONE connection, say) took the
//! freed descriptor first, leaving the queued clients waiting until some connection closed.
//! Service resumes by itself once connections close.

use std::io;
use std::net::{Shutdown, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::resource::{getrlimit, setrlimit, Resource};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::net::{TcpListener, TcpStream};

/// At most one "accept failed" warning per listener kind per this interval.
pub const WARN_INTERVAL: Duration = Duration::from_secs(5);
/// Pause after an accept failure for lack of descriptors: long enough not to spin, short
/// enough that service resumes promptly when connections close.
pub const FD_BACKOFF: Duration = Duration::from_millis(100);
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

/// Rate limit for one listener kind's warnings.
#[derive(Debug, Default)]
struct WarnState {
    last: Option<Instant>,
    suppressed: u64,
}

/// Accepts connections for a process: counts and logs failures, sheds connections while out
/// of descriptors (see the module docs). Cheap to clone; one per process.
#[derive(Debug, Clone, Default)]
pub struct Acceptor {
    errors: Family<AcceptLabels, Counter>,
    warned: Arc<Mutex<std::collections::HashMap<&'static str, WarnState>>>,
    shed: Arc<AtomicU64>,
}

impl Acceptor {
    /// An acceptor whose counts are not exported (tests, tools).
    pub fn new() -> Self {
        Acceptor::default()
    }

    /// An acceptor counting into `mesh_accept_errors_total{listener,reason}` in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let a = Acceptor::new();
        registry.register(
            "mesh_accept_errors",
            "Failed accepts by listener and reason (fd_limit: out of file descriptors)",
            a.errors.clone(),
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

    /// Resets the connections queued on `listener` (see [`reset_queue`]) and counts them.
    fn shed_queued(&self, listener: &TcpListener, name: &'static str) {
        match reset_queue(listener) {
            Ok(queued) => {
                self.shed.fetch_add(u64::from(queued), Ordering::Relaxed);
            }
            // Only a listener bound to port 0 whose port was taken meanwhile gets here.
            Err(e) => tracing::error!(listener = name, error = %e, "cannot reset the accept queue"),
        }
    }
}

/// Resets every connection queued on `listener` without taking a descriptor, and returns how
/// many were queued. `shutdown(SHUT_RD)` on a listening socket closes it: the kernel resets each
/// queued connection and leaves the socket unbound from listening; `listen` opens it again with
/// the backlog it had. A listener bound to an explicit port keeps it throughout; one bound to
/// port 0 loses it to the kernel on the way, so it is bound to it again (a `bind` that fails
/// with `EINVAL` is one that still holds its port). The descriptor, and its registration with
/// the runtime, stay the same.
pub fn reset_queue(listener: &TcpListener) -> io::Result<u32> {
    let sock = socket2::SockRef::from(listener);
    let addr = sock.local_addr()?;
    let (queued, backlog) = accept_queue(listener.as_fd())?;
    sock.shutdown(Shutdown::Read)?;
    match sock.bind(&addr) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(nix::libc::EINVAL) => {}
        Err(e) => return Err(e),
    }
    sock.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    Ok(queued)
}

/// A listening socket's accept queue: connections waiting now and the most it holds. For a
/// listener, `TCP_INFO` reports these in `tcpi_unacked` and `tcpi_sacked`.
#[allow(unsafe_code)]
fn accept_queue(fd: BorrowedFd<'_>) -> io::Result<(u32, u32)> {
    use nix::libc;
    let mut info = std::mem::MaybeUninit::<libc::tcp_info>::zeroed();
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `info` is a zeroed `tcp_info` of `len` bytes that the kernel writes at most `len`
    // bytes of; the descriptor is borrowed, so open for the call.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: zero is a valid value of every field, and the kernel filled in what it knows.
    let info = unsafe { info.assume_init() };
    Ok((info.tcpi_unacked, info.tcpi_sacked))
}

#[cfg(test)]
mod tests;
