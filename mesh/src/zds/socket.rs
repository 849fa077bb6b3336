//! A `SOCK_SEQPACKET` unix socket on tokio, carrying one message per datagram with file
//! descriptors attached (SCM_RIGHTS).
//!
//! This is the only module of the crate with `unsafe` code: turning the descriptor numbers the
//! kernel installed for us into owned handles.

#![allow(unsafe_code)]

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use nix::sys::socket::{
    self, AddressFamily, Backlog, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag,
    SockType, UnixAddr,
};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// Largest message accepted; ZDS messages are a few hundred bytes.
pub const MAX_MESSAGE: usize = 64 * 1024;
/// Most descriptors accepted with one message; more are received (to close them) and reported.
const MAX_FDS: usize = 8;

/// A connected seqpacket socket.
#[derive(Debug)]
pub struct SeqPacket {
    fd: AsyncFd<OwnedFd>,
}

/// A listening seqpacket socket.
#[derive(Debug)]
pub struct SeqPacketListener {
    fd: AsyncFd<OwnedFd>,
}

/// Registers an owned descriptor with the tokio reactor.
fn register(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an `OwnedFd` is open, is never swapped for another descriptor, and stays open
    // until the `AsyncFd` that owns it is dropped.
    unsafe { AsyncFd::register(fd) }.map_err(io::Error::from)
}

fn nix_io(e: nix::Error) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

fn new_socket() -> io::Result<OwnedFd> {
    socket::socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(nix_io)
}

impl SeqPacketListener {
    /// Binds and listens at `path`, replacing a stale socket file left by a previous run.
    pub fn bind(path: &Path) -> io::Result<Self> {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let fd = new_socket()?;
        let addr = UnixAddr::new(path).map_err(nix_io)?;
        socket::bind(fd.as_raw_fd(), &addr).map_err(nix_io)?;
        socket::listen(&fd, Backlog::new(16).map_err(nix_io)?).map_err(nix_io)?;
        Ok(SeqPacketListener { fd: register(fd)? })
    }

    /// Accepts one connection.
    pub async fn accept(&self) -> io::Result<SeqPacket> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| {
                socket::accept4(
                    fd.as_raw_fd(),
                    SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
                )
                .map_err(nix_io)
            }) {
                Ok(Ok(raw)) => {
                    // SAFETY: accept4 just returned this new descriptor; nothing else owns it.
                    let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                    return Ok(SeqPacket {
                        fd: register(owned)?,
                    });
                }
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }
}

impl SeqPacket {
    /// Connects to the listener at `path`.
    pub async fn connect(path: &Path) -> io::Result<Self> {
        let fd = new_socket()?;
        let addr = UnixAddr::new(path).map_err(nix_io)?;
        match socket::connect(fd.as_raw_fd(), &addr) {
            Ok(()) => {}
            // Non-blocking unix connect completes when writable.
            Err(nix::Error::EINPROGRESS) | Err(nix::Error::EAGAIN) => {}
            Err(e) => return Err(nix_io(e)),
        }
        let fd = register(fd)?;
        let _ = fd.writable().await?;
        Ok(SeqPacket { fd })
    }

    /// A connected pair (tests, and in-process links).
    pub fn pair() -> io::Result<(SeqPacket, SeqPacket)> {
        let (a, b) = socket::socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        )
        .map_err(nix_io)?;
        Ok((
            SeqPacket { fd: register(a)? },
            SeqPacket { fd: register(b)? },
        ))
    }

    /// Sends one message with `fds` attached.
    pub async fn send(&self, msg: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        loop {
            let mut guard = self.fd.writable().await?;
            let res = guard.try_io(|fd| {
                let iov = [IoSlice::new(msg)];
                let cmsg = [ControlMessage::ScmRights(&raw)];
                let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &cmsg };
                socket::sendmsg::<()>(fd.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None)
                    .map_err(nix_io)
            });
            match res {
                Ok(Ok(n)) if n == msg.len() => return Ok(()),
                Ok(Ok(n)) => {
                    return Err(io::Error::other(format!(
                        "short seqpacket send: {n} of {} bytes",
                        msg.len()
                    )))
                }
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }

    /// Receives one message and the descriptors that came with it. A closed peer is
    /// `UnexpectedEof`; a message larger than [`MAX_MESSAGE`] is `InvalidData` (its descriptors
    /// are closed).
    pub async fn recv(&self) -> io::Result<(Vec<u8>, Vec<OwnedFd>)> {
        loop {
            let mut guard = self.fd.ready(Interest::READABLE).await?;
            match guard.try_io(|fd| recv_once(fd.get_ref().as_fd())) {
                Ok(res) => return res,
                Err(_would_block) => continue,
            }
        }
    }
}

fn recv_once(fd: BorrowedFd<'_>) -> io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
    let (len, flags, raw_fds) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = socket::recvmsg::<()>(
            fd.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(nix_io)?;
        let mut raw = Vec::new();
        if let Ok(cmsgs) = msg.cmsgs() {
            for c in cmsgs {
                if let ControlMessageOwned::ScmRights(fds) = c {
                    raw.extend(fds);
                }
            }
        }
        (msg.bytes, msg.flags, raw)
    };
    // SAFETY: the kernel installed these descriptors into our table for this message; they
    // are owned by nobody else, and wrapping them here guarantees they are closed.
    let fds: Vec<OwnedFd> = raw_fds
        .into_iter()
        .map(|raw| unsafe { OwnedFd::from_raw_fd(raw) })
        .collect();
    if len == 0 && fds.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "peer closed the ZDS socket",
        ));
    }
    if flags.contains(MsgFlags::MSG_TRUNC) || flags.contains(MsgFlags::MSG_CTRUNC) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "ZDS message or its descriptors were truncated",
        ));
    }
    buf.truncate(len);
    Ok((buf, fds))
}
