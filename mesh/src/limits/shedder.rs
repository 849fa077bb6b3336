//! A thread with a descriptor table of its own, which takes the connections queued on a listener
//! and resets them, for when the process has no descriptor left.
//!
//! `accept(2)` needs a free slot in the caller's descriptor table. Out of descriptors, freeing a
//! spare and accepting into it races with every other thread of the process: a new HBONE
//! connection opened at that instant takes the freed slot first, and the queued clients wait
//! until some connection closes. This thread unshares its table at start (`unshare(CLONE_FILES)`)
//! and keeps nothing in it but its end of a socket pair. A listener sent over the pair
//! (`SCM_RIGHTS`, which takes no slot on the sending side) lands in that nearly empty table,
//! where accepting cannot run out, whatever the rest of the process holds.
//!
//! `unshare` may be refused (a seccomp profile that allows it only with `CAP_SYS_ADMIN`);
//! [`Shedder::start`] then fails and the caller falls back to spare descriptors.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use nix::sched::{unshare, CloneFlags};
use nix::sys::socket::{
    self, setsockopt, sockopt, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};
use nix::sys::time::{TimeVal, TimeValLike};

use super::SHED_BATCH;

/// How long a caller waits for the thread's answer before giving up on it for good. A full
/// batch takes about a millisecond; the caller is an accept loop on a runtime worker, so this
/// also bounds how long a thread that stopped answering can stall that worker.
pub(super) const ANSWER_TIMEOUT: Duration = Duration::from_millis(200);

/// The caller's end of the link to the shedding thread; the thread ends when this is dropped.
/// The thread starts at the first shed, so an idle process has no thread more: starting it
/// needs no new descriptor, the link is made up front.
#[derive(Debug)]
pub(super) struct Shedder {
    near: OwnedFd,
    /// The thread's end until it starts.
    far: Option<OwnedFd>,
}

impl Shedder {
    /// The link, without the thread.
    pub(super) fn new() -> io::Result<Shedder> {
        let (near, far) = socket::socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )?;
        setsockopt(
            &near,
            sockopt::ReceiveTimeout,
            // Whole milliseconds: a zero `SO_RCVTIMEO` would mean no timeout at all.
            &TimeVal::milliseconds(ANSWER_TIMEOUT.as_millis().max(1) as i64),
        )?;
        Ok(Shedder {
            near,
            far: Some(far),
        })
    }

    /// Starts the thread unless it runs, and returns once its descriptor table is its own. An
    /// error means it cannot start (nor will it: the link is spent).
    fn start(&mut self) -> io::Result<()> {
        let Some(far) = self.far.take() else {
            return Ok(());
        };
        let far_raw = far.as_raw_fd();
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        // Allocated here, so the thread allocates nothing until it sheds.
        let mut cmsg = nix::cmsg_space!([RawFd; 1]);
        std::thread::Builder::new()
            .name("fd-shedder".into())
            .stack_size(64 * 1024)
            .spawn(move || match own_table(far_raw) {
                Ok(far) => {
                    let _ = ready_tx.send(Ok(()));
                    serve(&far, &mut cmsg);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            })?;
        let ready = ready_rx
            .recv()
            .map_err(|_| io::Error::other("the shedding thread ended before it started"))?;
        // The thread holds its own copy now; this one would keep the pair open after the
        // thread ends (or, if it failed, the thread's table is ours and `far` is still ours).
        drop(far);
        ready
    }

    /// A link whose thread is gone, as after it ended unexpectedly (tests).
    #[cfg(test)]
    pub(super) fn gone() -> io::Result<Shedder> {
        Ok(Shedder::silent()?.0)
    }

    /// A link whose thread never answers (tests): its end is returned instead, for the caller to
    /// hold open.
    #[cfg(test)]
    pub(super) fn silent() -> io::Result<(Shedder, OwnedFd)> {
        let mut link = Shedder::new()?;
        let far = link
            .far
            .take()
            .ok_or_else(|| io::Error::other("no far end"))?;
        Ok((link, far))
    }

    /// Starts the thread if need be (see [`Shedder::start`]), then resets up to [`SHED_BATCH`]
    /// connections queued on `listener` (non-blocking) and returns how many. Blocks the caller
    /// for the round trip to the thread (well under a millisecond, at most [`ANSWER_TIMEOUT`]).
    pub(super) fn shed(&mut self, listener: BorrowedFd<'_>) -> io::Result<u64> {
        self.start()?;
        let link = &self.near;
        let fds = [listener.as_raw_fd()];
        let cmsg = [ControlMessage::ScmRights(&fds)];
        socket::sendmsg::<()>(
            link.as_raw_fd(),
            &[IoSlice::new(&[1])],
            &cmsg,
            MsgFlags::MSG_NOSIGNAL,
            None,
        )?;
        let mut answer = [0u8; 8];
        let n = socket::recv(link.as_raw_fd(), &mut answer, MsgFlags::empty())?;
        if n != answer.len() {
            return Err(io::Error::other("the shedding thread ended"));
        }
        Ok(u64::from_le_bytes(answer))
    }
}

/// On the new thread: gives it a descriptor table of its own and closes everything in it but
/// `far` (the copies only; the process's descriptors stay open). Its standard streams then point
/// at `/dev/null`: a copy kept there could be any socket of the process (where it started with
/// them closed), held open by this table; and nothing accepted here should take their numbers.
#[allow(unsafe_code)]
fn own_table(far: RawFd) -> io::Result<OwnedFd> {
    unshare(CloneFlags::CLONE_FILES)?;
    // SAFETY: after the unshare this table's `far` is a copy nobody else in the process can
    // reach; the thread owns it from here.
    let far_owned = unsafe { OwnedFd::from_raw_fd(far) };
    let at = u32::try_from(far).map_err(|_| io::Error::other("negative descriptor"))?;
    if at > 0 {
        close_range(0, at - 1)?;
    }
    close_range(at + 1, u32::MAX)?;
    loop {
        let null = std::fs::File::open("/dev/null")?;
        if null.as_raw_fd() > 2 {
            break;
        }
        // Kept for the thread's life as one of its standard streams.
        let _ = std::os::fd::IntoRawFd::into_raw_fd(null);
    }
    Ok(far_owned)
}

/// `close_range(2)`: closes every descriptor from `first` to `last` in the caller's table.
#[allow(unsafe_code)]
fn close_range(first: u32, last: u32) -> io::Result<()> {
    // SAFETY: called only on the shedding thread, after it unshared its table and before it
    // opened anything: what it closes are that table's copies, which nothing of the thread's
    // own refers to.
    let rc = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_close_range,
            nix::libc::c_uint::from(first),
            nix::libc::c_uint::from(last),
            0 as nix::libc::c_uint,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The thread's loop: for each listener received, resets what is queued on it and answers how
/// many; ends when the caller's end is closed.
fn serve(link: &OwnedFd, cmsg: &mut [u8]) {
    loop {
        let Ok(Some(listener)) = receive_listener(link.as_fd(), cmsg) else {
            return;
        };
        let shed = reset_queued(&listener);
        drop(listener);
        let answer = shed.to_le_bytes();
        if socket::send(link.as_raw_fd(), &answer, MsgFlags::MSG_NOSIGNAL).is_err() {
            return;
        }
    }
}

/// The next listener sent over `link`; `None` once the caller's end is closed.
#[allow(unsafe_code)]
fn receive_listener(link: BorrowedFd<'_>, cmsg: &mut [u8]) -> io::Result<Option<OwnedFd>> {
    let mut byte = [0u8; 1];
    let mut iov = [IoSliceMut::new(&mut byte)];
    let msg = socket::recvmsg::<()>(
        link.as_raw_fd(),
        &mut iov,
        Some(cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut fd = None;
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            for r in raw {
                // SAFETY: the kernel installed this descriptor in our table for this message;
                // nobody else owns it.
                let owned = unsafe { OwnedFd::from_raw_fd(r) };
                fd.get_or_insert(owned);
            }
        }
    }
    if msg.bytes == 0 && fd.is_none() {
        return Ok(None);
    }
    fd.map(Some)
        .ok_or_else(|| io::Error::other("a request without a listener"))
}

/// Accepts and resets up to [`SHED_BATCH`] queued connections. The listener is non-blocking
/// (its flags are shared with the process's descriptor): an empty queue ends the batch.
fn reset_queued(listener: &OwnedFd) -> u64 {
    let sock = socket2::SockRef::from(listener);
    let mut shed = 0;
    for _ in 0..SHED_BATCH {
        let Ok((conn, _)) = sock.accept() else {
            break;
        };
        // Linger 0: close() sends a reset.
        let _ = conn.set_linger(Some(Duration::ZERO));
        drop(conn);
        shed += 1;
    }
    shed
}
