#![allow(clippy::expect_used, clippy::unwrap_used)]

use super::*;

#[test]
fn the_soft_fd_limit_is_raised_to_the_hard_limit() {
    let l = raise_fd_limit().expect("getrlimit/setrlimit");
    assert_eq!(l.soft, l.hard);
    assert!(l.soft >= l.before);
}

#[test]
fn emfile_and_enfile_count_as_fd_exhaustion_and_nothing_else_does() {
    let of =
        |errno: nix::errno::Errno| AcceptError::of(&io::Error::from_raw_os_error(errno as i32));
    assert_eq!(of(nix::errno::Errno::EMFILE), AcceptError::fd_limit);
    assert_eq!(of(nix::errno::Errno::ENFILE), AcceptError::fd_limit);
    assert_eq!(of(nix::errno::Errno::ENOBUFS), AcceptError::other);
    assert_eq!(
        AcceptError::of(&io::Error::other("no errno")),
        AcceptError::other
    );
}

#[test]
fn a_connection_aborted_before_accept_is_the_clients_error_not_the_listeners() {
    let raw = |errno: nix::errno::Errno| io::Error::from_raw_os_error(errno as i32);
    assert!(is_client_side(&raw(nix::errno::Errno::ECONNABORTED)));
    assert!(is_client_side(&raw(nix::errno::Errno::EPROTO)));
    assert!(!is_client_side(&raw(nix::errno::Errno::EMFILE)));
    assert!(!is_client_side(&raw(nix::errno::Errno::ENOBUFS)));
}

#[test]
fn warnings_are_rate_limited_per_listener() {
    let a = Acceptor::new();
    let e = io::Error::from_raw_os_error(nix::errno::Errno::EMFILE as i32);
    for _ in 0..5 {
        a.warn("outbound", AcceptError::fd_limit, &e);
    }
    a.warn("inbound", AcceptError::fd_limit, &e);
    let warned = a.warned.lock().unwrap();
    assert_eq!(
        warned["outbound"].suppressed, 4,
        "one logged, four held back"
    );
    assert_eq!(
        warned["inbound"].suppressed, 0,
        "each listener has its own budget"
    );
}

#[tokio::test]
async fn a_registered_acceptor_exports_its_counts_at_zero_until_errors() {
    let mut registry = Registry::default();
    let a = Acceptor::register(&mut registry);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let client = tokio::spawn(async move { TcpStream::connect(addr).await.unwrap() });
    let (_conn, _) = a.accept(&listener, "test").await;
    client.await.unwrap();
    assert_eq!(a.errors("test", AcceptError::fd_limit), 0);
    let text = crate::metrics::encode(&registry);
    assert!(text.contains("mesh_accept_errors_total"), "{text}");
}

/// Connects `n` clients that the listener's queue holds (nobody accepts them).
async fn queued_clients(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut clients = Vec::new();
    for _ in 0..n {
        clients.push(TcpStream::connect(addr).await.expect("connect"));
    }
    clients
}

/// Each client's next read is a reset.
async fn assert_reset(clients: Vec<TcpStream>) {
    use tokio::io::AsyncReadExt;
    for mut client in clients {
        let mut buf = [0u8; 1];
        let read = client.read(&mut buf).await;
        assert!(
            matches!(&read, Err(e) if e.kind() == io::ErrorKind::ConnectionReset),
            "a queued client is reset: {read:?}"
        );
    }
}

#[tokio::test]
async fn a_shed_resets_every_queued_connection_without_a_descriptor_and_the_listener_accepts_again()
{
    let acceptor = Acceptor::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (_, backlog) = accept_queue(listener.as_fd()).expect("tcp_info");
    // Queued and not yet taken, as when accept fails for lack of descriptors.
    let clients = queued_clients(addr, 5).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(accept_queue(listener.as_fd()).expect("tcp_info").0, 5);
    acceptor.shed_queued(&listener, "test");
    assert_eq!(acceptor.shed(), 5);
    assert_reset(clients).await;
    // A port the kernel picked (bound to port 0) is bound again: same address, same backlog.
    assert_eq!(listener.local_addr().expect("addr"), addr);
    assert_eq!(
        accept_queue(listener.as_fd()).expect("tcp_info"),
        (0, backlog)
    );
    let client = tokio::spawn(async move { TcpStream::connect(addr).await.expect("connect") });
    let (_conn, peer) =
        tokio::time::timeout(Duration::from_secs(5), acceptor.accept(&listener, "test"))
            .await
            .expect("the listener accepts again");
    assert_eq!(
        peer,
        client.await.expect("client").local_addr().expect("addr")
    );
    // Nothing queued: nothing shed.
    acceptor.shed_queued(&listener, "test");
    assert_eq!(acceptor.shed(), 5);
}

/// A listener as ztunnel's pod listeners are made: bound to `addr` by number, in an
/// `SO_REUSEPORT` group (a restarted ztunnel binds beside the old one).
fn reuse_port_listener(addr: SocketAddr) -> TcpListener {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).expect("socket");
    socket.set_reuse_address(true).expect("reuseaddr");
    socket.set_reuse_port(true).expect("reuseport");
    socket.set_nonblocking(true).expect("nonblocking");
    socket.bind(&addr.into()).expect("bind");
    socket.listen(1024).expect("listen");
    TcpListener::from_std(socket.into()).expect("tokio listener")
}

#[tokio::test]
async fn a_listener_bound_to_an_explicit_port_keeps_it_and_its_reuse_port_group_through_a_shed() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let listener = reuse_port_listener(addr);
    let clients = queued_clients(addr, 2).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(reset_queue(&listener).expect("reset"), 2);
    assert_reset(clients).await;
    assert_eq!(listener.local_addr().expect("addr"), addr);
    // A second member of the group: new connections are spread over both again, so the
    // listener that was reset is back in the group.
    let other = reuse_port_listener(addr);
    let clients = queued_clients(addr, 64).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (on_reset, _) = accept_queue(listener.as_fd()).expect("tcp_info");
    let (on_other, _) = accept_queue(other.as_fd()).expect("tcp_info");
    assert_eq!(on_reset + on_other, 64);
    assert!(
        on_reset > 0 && on_other > 0,
        "both members take connections: {on_reset} and {on_other}"
    );
    drop(clients);
}
