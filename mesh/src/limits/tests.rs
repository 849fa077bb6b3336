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
async fn connections_shed_are_exported_by_listener() {
    let mut registry = Registry::default();
    let a = Acceptor::register(&mut registry);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let clients = queued_clients(listener.local_addr().unwrap(), 2).await;
    a.shed_queued(&listener, "outbound");
    assert_reset(clients).await;
    let text = crate::metrics::encode(&registry);
    assert!(
        text.contains("mesh_accept_shed_total{listener=\"outbound\"} 2"),
        "{text}"
    );
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
        let read = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf))
            .await
            .expect("the queued client is answered, not left waiting");
        assert!(
            matches!(&read, Err(e) if e.kind() == io::ErrorKind::ConnectionReset),
            "a queued client is reset: {read:?}"
        );
    }
}

/// The descriptors open in this process.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count()
}

#[tokio::test]
async fn a_shed_through_the_shedding_thread_resets_every_queued_connection_and_holds_no_spare() {
    let acceptor = Acceptor::new();
    assert!(
        acceptor.sheds_through_the_thread(),
        "the shedding thread starts here"
    );
    assert_eq!(acceptor.spares(), 0);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let clients = queued_clients(listener.local_addr().expect("addr"), 3).await;
    // Queued and not yet taken, as when accept fails for lack of descriptors.
    acceptor.shed_queued(&listener, "test");
    assert_eq!(acceptor.shed(), 3);
    assert_reset(clients).await;
    // Nothing queued: nothing shed.
    acceptor.shed_queued(&listener, "test");
    assert_eq!(acceptor.shed(), 3);
}

#[tokio::test]
async fn without_the_shedding_thread_a_shed_resets_the_queued_connection_and_leaves_both_spares_in_place(
) {
    let acceptor = Acceptor::with_spares_only();
    assert_eq!(acceptor.spares(), SPARES);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let clients = queued_clients(listener.local_addr().expect("addr"), 1).await;
    acceptor.shed_queued(&listener, "test");
    assert_eq!(acceptor.shed(), 1);
    assert_reset(clients).await;
    assert_eq!(acceptor.spares(), SPARES, "both spares are back");
    acceptor.shed_queued(&listener, "test");
    assert_eq!((acceptor.shed(), acceptor.spares()), (1, SPARES));
}

#[tokio::test]
async fn when_the_shedding_thread_is_gone_the_acceptor_sheds_with_spares_from_then_on() {
    let acceptor = Acceptor::with_the_thread_gone();
    assert!(acceptor.sheds_through_the_thread());
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let clients = queued_clients(listener.local_addr().expect("addr"), 1).await;
    acceptor.shed_queued(&listener, "test");
    assert!(!acceptor.sheds_through_the_thread());
    assert_eq!(acceptor.spares(), SPARES);
    assert_eq!(
        acceptor.shed(),
        1,
        "the same shed still took the connection"
    );
    assert_reset(clients).await;
}

#[tokio::test]
async fn a_shedding_thread_that_does_not_answer_is_given_up_within_the_answer_timeout() {
    let (acceptor, _far) = Acceptor::with_a_silent_thread();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let clients = queued_clients(listener.local_addr().expect("addr"), 1).await;
    let started = Instant::now();
    acceptor.shed_queued(&listener, "test");
    let took = started.elapsed();
    assert!(
        took >= shedder::ANSWER_TIMEOUT && took < 4 * shedder::ANSWER_TIMEOUT,
        "waited {took:?} for an answer that never came"
    );
    assert!(!acceptor.sheds_through_the_thread());
    assert_eq!(acceptor.shed(), 1, "the spares took the connection");
    assert_reset(clients).await;
}

/// Set in the child process of the test below, which fills its own descriptor table.
const FULL_TABLE_CHILD: &str = "MESH_LIMITS_FULL_TABLE_CHILD";

#[test]
fn with_every_descriptor_of_the_process_taken_a_shed_still_resets_every_queued_connection() {
    // The test fills the descriptor table of a process of its own (this test binary, run
    // again for the test below), so no other test shares the full table.
    let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "limits::tests::full_table_child",
            "--ignored",
            "--nocapture",
        ])
        .env(FULL_TABLE_CHILD, "1")
        .output()
        .expect("run the child");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("1 passed"), "the child ran its test: {text}");
}

#[tokio::test]
#[ignore = "run by with_every_descriptor_of_the_process_taken_a_shed_still_resets_every_queued_connection"]
async fn full_table_child() {
    if std::env::var_os(FULL_TABLE_CHILD).is_none() {
        return;
    }
    let acceptor = Acceptor::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let clients = queued_clients(addr, 5).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    // Take every descriptor the limit allows.
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    let limit = (open_fds() + 32) as u64;
    setrlimit(Resource::RLIMIT_NOFILE, limit, hard).expect("setrlimit");
    let mut filler = Vec::new();
    while let Ok(f) = File::open("/dev/null") {
        filler.push(f);
    }
    let refused = listener
        .accept()
        .await
        .expect_err("no descriptor left to accept into");
    assert_eq!(
        AcceptError::of(&refused),
        AcceptError::fd_limit,
        "{refused}"
    );
    // Another thread takes every descriptor that comes free meanwhile, as a new HBONE
    // connection would.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let thief = std::thread::spawn({
        let stop = stop.clone();
        move || {
            let mut taken = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                if let Ok(f) = File::open("/dev/null") {
                    taken.push(f);
                }
            }
            taken
        }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    acceptor.shed_queued(&listener, "test");
    let shed = acceptor.shed();
    stop.store(true, Ordering::Relaxed);
    let stolen = thief.join().expect("thief");
    assert_reset(clients).await;
    drop((filler, stolen));
    setrlimit(Resource::RLIMIT_NOFILE, soft, hard).expect("setrlimit");
    assert_eq!(shed, 5, "every queued connection was reset");
}
