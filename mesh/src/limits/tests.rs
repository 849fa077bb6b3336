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

#[tokio::test]
async fn a_shed_resets_the_queued_connection_and_leaves_both_spares_in_place() {
    use tokio::io::AsyncReadExt;
    let acceptor = Acceptor::new();
    assert_eq!(acceptor.spares(), SPARES);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let mut client = tokio::net::TcpStream::connect(listener.local_addr().expect("addr"))
        .await
        .expect("connect");
    // Queued and not yet taken, as when accept fails for lack of descriptors.
    acceptor.shed_queued(&listener);
    assert_eq!(acceptor.shed(), 1);
    let mut buf = [0u8; 1];
    let read = client.read(&mut buf).await;
    assert!(
        matches!(&read, Err(e) if e.kind() == io::ErrorKind::ConnectionReset),
        "the queued client is reset: {read:?}"
    );
    assert_eq!(acceptor.spares(), SPARES, "both spares are back");
    // Nothing queued: nothing shed, the spares stay.
    acceptor.shed_queued(&listener);
    assert_eq!((acceptor.shed(), acceptor.spares()), (1, SPARES));
}
