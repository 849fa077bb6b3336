//! What `net.ipv4.tcp_migrate_req` (which the agent sets in every pod namespace) buys a ztunnel
//! upgrade: the old ztunnel closes its in-pod listeners while the new one's are open in the
//! same `SO_REUSEPORT` group; connections the old one had not accepted yet must move to the new
//! listener, not be reset. Shown on the kernel itself, in a namespace of its own.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use nix::sched::{unshare, CloneFlags};

const CLIENTS: usize = 64;

fn reuseport_listener(addr: SocketAddr) -> TcpListener {
    let fd = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Stream,
        nix::sys::socket::SockFlag::empty(),
        None,
    )
    .expect("socket");
    nix::sys::socket::setsockopt(&fd, nix::sys::socket::sockopt::ReusePort, &true)
        .expect("SO_REUSEPORT");
    let sin = nix::sys::socket::SockaddrIn::from(match addr {
        SocketAddr::V4(v4) => v4,
        SocketAddr::V6(_) => unreachable!(),
    });
    nix::sys::socket::bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &sin).expect("bind");
    nix::sys::socket::listen(&fd, nix::sys::socket::Backlog::new(256).expect("backlog"))
        .expect("listen");
    TcpListener::from(fd)
}

/// In a fresh namespace with `tcp_migrate_req` = `migrate`: two listeners in one reuseport
/// group, `CLIENTS` connections queued (none accepted), the first listener closed, then
/// everything the second accepts is answered. Returns (answered, reset) client counts.
fn close_one_listener_with_queued_connections(migrate: bool) -> (usize, usize) {
    std::thread::spawn(move || {
        unshare(CloneFlags::CLONE_NEWNET).expect("own network namespace");
        let up = std::process::Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status()
            .expect("ip");
        assert!(up.success());
        std::fs::write(
            "/proc/sys/net/ipv4/tcp_migrate_req",
            if migrate { "1" } else { "0" },
        )
        .expect("sysctl");
        let addr: SocketAddr = "127.0.0.1:15001".parse().unwrap();
        let old = reuseport_listener(addr);
        let new = reuseport_listener(addr);
        // Handshakes complete in the kernel: each connection waits in one of the two queues.
        let mut clients: Vec<TcpStream> = (0..CLIENTS)
            .map(|_| TcpStream::connect(addr).expect("connect"))
            .collect();
        drop(old);
        new.set_nonblocking(true).expect("nonblocking");
        let mut accepted = Vec::new();
        let until = Instant::now() + Duration::from_millis(500);
        while Instant::now() < until {
            match new.accept() {
                Ok((s, _)) => accepted.push(s),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("accept: {e}"),
            }
        }
        for s in &mut accepted {
            s.set_nonblocking(false).expect("blocking");
            s.write_all(b"ok").expect("answer");
        }
        let (mut answered, mut reset) = (0, 0);
        for c in &mut clients {
            c.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            let mut buf = [0u8; 2];
            match c.read_exact(&mut buf) {
                Ok(()) => answered += 1,
                Err(e) if e.kind() == ErrorKind::ConnectionReset => reset += 1,
                Err(e) => panic!("client read: {e}"),
            }
        }
        (answered, reset)
    })
    .join()
    .expect("namespace thread")
}

#[test]
fn with_tcp_migrate_req_no_queued_connection_is_lost_when_an_old_reuseport_listener_closes() {
    e2e::require_root();
    assert_eq!(
        close_one_listener_with_queued_connections(true),
        (CLIENTS, 0),
        "every queued connection moved to the remaining listener"
    );
    // The control: without it, the closed listener's queue is reset.
    let (answered, reset) = close_one_listener_with_queued_connections(false);
    assert!(reset > 0, "answered {answered}, reset {reset}");
    assert_eq!(answered + reset, CLIENTS);
}
