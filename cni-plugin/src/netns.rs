//! Running code inside a pod's network namespace.
//!
//! `setns(2)` switches only the calling thread, so each call runs on a fresh thread that
//! enters the namespace, runs the closure (which may spawn `iptables-restore` or `ip`: a child
//! inherits its parent thread's namespace) and ends. The agent's own threads never switch.

use std::fs::File;
use std::io;
use std::path::Path;

use nix::sched::{setns, CloneFlags};

/// Opens a network namespace file (`/var/run/netns/<name>`, `/proc/<pid>/ns/net`) and checks
/// that it is one.
pub fn open(path: &Path) -> io::Result<File> {
    let file = File::open(path)?;
    // Entering it is the only reliable check; do it on a throwaway thread.
    run_in(&file, || ())?;
    Ok(file)
}

/// Runs `f` on a new thread inside the network namespace `netns`; returns its result.
pub fn run_in<R: Send>(netns: &File, f: impl FnOnce() -> R + Send) -> io::Result<R> {
    std::thread::scope(|s| {
        s.spawn(|| {
            setns(netns, CloneFlags::CLONE_NEWNET).map_err(|e| {
                io::Error::new(
                    io::Error::from(e).kind(),
                    format!("entering network namespace: {e}"),
                )
            })?;
            Ok(f())
        })
        .join()
        .map_err(|_| io::Error::other("thread inside the network namespace panicked"))?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_namespace_can_be_entered_and_other_files_cannot() {
        let own = open(Path::new("/proc/self/ns/net")).expect("own netns");
        assert_eq!(run_in(&own, || 7).expect("runs"), 7);
        assert!(open(Path::new("/proc/self/status")).is_err());
        assert!(open(Path::new("/nonexistent/netns")).is_err());
    }
}
