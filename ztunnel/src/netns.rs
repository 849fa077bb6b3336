//! Pod network namespaces: create sockets inside them.
//!
//! A socket belongs to the network namespace its creating thread was in at `socket(2)` time,
//! and stays there wherever it is used later. So to listen or connect "inside a pod" we switch
//! the current thread into the pod's namespace, create (and bind) the socket, and switch back
//! before doing anything else; the socket is then driven by tokio like any other.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use nix::sched::{setns, CloneFlags};

/// A network namespace, held open by a descriptor.
#[derive(Debug, Clone)]
pub struct Netns {
    fd: Arc<OwnedFd>,
    inode: u64,
}

impl Netns {
    /// The namespace the calling thread is in now (ztunnel's own, at start-up).
    pub fn current() -> io::Result<Netns> {
        let file = File::open("/proc/thread-self/ns/net")?;
        Netns::from_fd(file.into())
    }

    /// A namespace handed to us (ZDS), identified by its inode.
    pub fn from_fd(fd: OwnedFd) -> io::Result<Netns> {
        let meta = File::from(fd.try_clone()?).metadata()?;
        Ok(Netns {
            fd: Arc::new(fd),
            inode: std::os::unix::fs::MetadataExt::ino(&meta),
        })
    }

    /// The namespace's inode number (stable identity, shown in config dumps).
    pub fn inode(&self) -> u64 {
        self.inode
    }

    /// Runs `f` with the current thread inside this namespace, then returns to `home`.
    ///
    /// `f` must not block on anything async: it runs synchronously on this thread.
    pub fn run<R>(&self, home: &Netns, f: impl FnOnce() -> io::Result<R>) -> io::Result<R> {
        setns(self.fd.as_fd(), CloneFlags::CLONE_NEWNET)
            .map_err(|e| io::Error::other(format!("entering pod network namespace: {e}")))?;
        let out = f();
        if let Err(e) = setns(home.fd.as_fd(), CloneFlags::CLONE_NEWNET) {
            // This thread now sits in a pod's namespace and would leak every later socket it
            // creates into that pod: there is no safe way to continue.
            tracing::error!(error = %e, "cannot return to ztunnel's network namespace; aborting");
            std::process::abort();
        }
        out
    }
}
