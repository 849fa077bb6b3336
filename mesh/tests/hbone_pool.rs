//! The HBONE pool under failure and shutdown: a dead destination costs one attempt and one
//! deadline however many callers wait for it, failures back off, and a drained pool leaves
//! no connection and no key behind.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mesh::cert::WorkloadCertificate;
use mesh::hbone::{
    ConnectFuture, ConnectMeta, Connector, H2Config, HboneError, InboundRequest, Pool, PoolKey,
    PoolStats, Server, TcpConnector,
};
use mesh::testing::TestCa;
use mesh::Identity;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

const TD: &str = "cluster.local";

fn id(s: &str) -> Identity {
    format!("spiffe://{TD}/ns/{s}").parse().expect("identity")
}

fn target() -> SocketAddr {
    "10.0.0.7:8080".parse().expect("target")
}

/// Waits up to 5 s for `cond`, failing the test with `what` otherwise.
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A TCP listener that accepts and never says a word; counts what it accepted.
async fn silent_listener() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            held.push(tcp);
        }
    });
    (addr, accepted)
}

/// An HBONE server echoing every stream.
struct EchoServer {
    ca: Arc<TestCa>,
    id: Identity,
    addr: SocketAddr,
}

async fn echo_server() -> EchoServer {
    let ca = TestCa::new(TD, Duration::from_secs(3600));
    let server_id = id("echo/sa/echo");
    let server = Arc::new(Server::new(
        H2Config::default(),
        Arc::new(Arc::new(ca.issue(&server_id))),
    ));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(server.serve(listener, |req: InboundRequest| async move {
        let Ok(stream) = req.accept() else { return };
        let (mut r, mut w) = tokio::io::split(stream);
        let _ = tokio::io::copy(&mut r, &mut w).await;
        let _ = w.shutdown().await;
    }));
    EchoServer {
        ca,
        id: server_id,
        addr,
    }
}

impl EchoServer {
    fn client(&self, who: &str) -> (WorkloadCertificate, PoolKey) {
        let cert = self.ca.issue(&id(who));
        let key = PoolKey::new(
            cert.identity().clone(),
            vec![self.id.clone()],
            self.addr,
            None,
        );
        (cert, key)
    }
}

/// Refuses the first `fail` connects, then connects for real; counts every call.
struct FlakyConnector {
    fail: usize,
    calls: AtomicUsize,
}

impl Connector for FlakyConnector {
    fn connect(&self, dst: SocketAddr, _src_ip: Option<IpAddr>) -> ConnectFuture<'_> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        let fail = n < self.fail;
        Box::pin(async move {
            if fail {
                return Err(io::Error::from(io::ErrorKind::ConnectionRefused));
            }
            TcpStream::connect(dst).await
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_callers_to_a_silent_destination_share_one_attempt_and_one_deadline() {
    let (addr, accepted) = silent_listener().await;
    let deadline = Duration::from_millis(500);
    let config = H2Config {
        connect_timeout: deadline,
        connect_backoff: Duration::from_secs(5),
        ..H2Config::default()
    };
    let pool = Pool::new(config, Arc::new(TcpConnector));
    let ca = TestCa::new(TD, Duration::from_secs(3600));
    let cert = Arc::new(ca.issue(&id("default/sa/sleep")));
    let key = PoolKey::new(
        cert.identity().clone(),
        vec![id("dead/sa/dead")],
        addr,
        None,
    );

    let start = Instant::now();
    let calls: Vec<_> = (0..50)
        .map(|_| {
            let (pool, cert, key) = (pool.clone(), cert.clone(), key.clone());
            tokio::spawn(async move {
                pool.connect(&key, &cert, target(), &ConnectMeta::default())
                    .await
            })
        })
        .collect();
    for call in calls {
        let err = call
            .await
            .expect("task")
            .expect_err("a silent server cannot serve");
        assert!(matches!(err, HboneError::Timeout(_)), "{err}");
    }
    let elapsed = start.elapsed();
    assert!(
        elapsed < deadline * 2,
        "50 callers took {elapsed:?}: they waited one after another"
    );
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "one connection attempt for all 50 callers"
    );

    // Backing off: the next caller fails at once, without dialing.
    let start = Instant::now();
    let err = pool
        .connect(&key, &cert, target(), &ConnectMeta::default())
        .await
        .expect_err("backing off");
    assert!(
        start.elapsed() < Duration::from_millis(100),
        "a caller during back-off waited {:?}",
        start.elapsed()
    );
    assert!(
        matches!(err, HboneError::Timeout(_)),
        "the last error: {err}"
    );
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "no dial during back-off"
    );
    assert_eq!(pool.stats().keys(), 1, "the key remembers its failure");
    assert_eq!(pool.open_connections(), 0);
}

#[tokio::test]
async fn the_back_off_grows_then_ends_and_a_later_attempt_succeeds() {
    let server = echo_server().await;
    let (cert, key) = server.client("default/sa/sleep");
    let connector = Arc::new(FlakyConnector {
        fail: 2,
        calls: AtomicUsize::new(0),
    });
    let backoff = Duration::from_millis(300);
    let config = H2Config {
        connect_backoff: backoff,
        connect_backoff_max: Duration::from_secs(10),
        ..H2Config::default()
    };
    let pool = Pool::new(config, connector.clone());
    let meta = ConnectMeta::default();
    let connect = || pool.connect(&key, &cert, target(), &meta);

    let err = connect().await.expect_err("first attempt refused");
    assert!(matches!(err, HboneError::Connect { .. }), "{err}");
    assert_eq!(connector.calls.load(Ordering::SeqCst), 1);
    let err = connect().await.expect_err("backing off");
    assert!(matches!(err, HboneError::Connect { .. }), "{err}");
    assert_eq!(
        connector.calls.load(Ordering::SeqCst),
        1,
        "no dial in back-off"
    );

    // The first back-off (300 ms) is over: one more attempt, refused again.
    tokio::time::sleep(backoff + Duration::from_millis(50)).await;
    connect().await.expect_err("second attempt refused");
    assert_eq!(connector.calls.load(Ordering::SeqCst), 2);
    // The second back-off is twice as long: 350 ms later it still holds.
    tokio::time::sleep(backoff + Duration::from_millis(50)).await;
    connect().await.expect_err("still backing off");
    assert_eq!(connector.calls.load(Ordering::SeqCst), 2, "back-off grew");

    tokio::time::sleep(backoff).await;
    let mut stream = connect()
        .await
        .expect("the back-off ended; the server answers");
    assert_eq!(connector.calls.load(Ordering::SeqCst), 3);
    stream.write_all(b"ping").await.expect("write");
    let mut buf = [0u8; 4];
    stream.read_exact(&mut buf).await.expect("echo");
    assert_eq!(&buf, b"ping");
}

#[tokio::test]
async fn connect_as_a_whole_fails_within_one_deadline_when_the_connect_goes_unanswered() {
    let ca = TestCa::new(TD, Duration::from_secs(3600));
    let server_id = id("echo/sa/echo");
    let server = Arc::new(Server::new(
        H2Config::default(),
        Arc::new(Arc::new(ca.issue(&server_id))),
    ));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    // Takes the CONNECT and never answers it.
    tokio::spawn(server.serve(listener, |req: InboundRequest| async move {
        let _held = req;
        std::future::pending::<()>().await;
    }));
    let deadline = Duration::from_millis(500);
    let pool = Pool::new(
        H2Config {
            connect_timeout: deadline,
            ..H2Config::default()
        },
        Arc::new(TcpConnector),
    );
    let cert = ca.issue(&id("default/sa/sleep"));
    let key = PoolKey::new(cert.identity().clone(), vec![server_id], addr, None);
    let start = Instant::now();
    let err = pool
        .connect(&key, &cert, target(), &ConnectMeta::default())
        .await
        .expect_err("no answer");
    assert!(matches!(err, HboneError::Timeout(_)), "{err}");
    let elapsed = start.elapsed();
    assert!(
        elapsed >= deadline && elapsed < deadline + Duration::from_millis(250),
        "took {elapsed:?}"
    );
    assert_eq!(pool.open_connections(), 1, "the connection itself is fine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_pool_closes_idle_connections_at_once_and_busy_ones_after_their_last_stream() {
    let server = echo_server().await;
    let node = PoolStats::new();
    let pool = Pool::with_stats(H2Config::default(), Arc::new(TcpConnector), node.clone());
    let (idle_cert, idle_key) = server.client("default/sa/idle");
    let (busy_cert, busy_key) = server.client("default/sa/busy");

    let mut done = pool
        .connect(&idle_key, &idle_cert, target(), &ConnectMeta::default())
        .await
        .expect("stream");
    done.shutdown().await.expect("half-close");
    done.read_to_end(&mut Vec::new()).await.expect("EOF");
    drop(done);
    let mut busy = pool
        .connect(&busy_key, &busy_cert, target(), &ConnectMeta::default())
        .await
        .expect("stream");
    assert_eq!((node.connections(), node.keys(), node.streams()), (2, 2, 1));

    pool.drain();
    assert_eq!(node.keys(), 0, "every key goes at once");
    eventually("the idle connection closes", || node.connections() == 1).await;
    let err = pool
        .connect(&idle_key, &idle_cert, target(), &ConnectMeta::default())
        .await
        .expect_err("drained");
    assert!(matches!(err, HboneError::PoolClosed), "{err}");

    // The busy stream carries on...
    busy.write_all(b"still here")
        .await
        .expect("write after drain");
    let mut buf = [0u8; 10];
    busy.read_exact(&mut buf).await.expect("echo after drain");
    assert_eq!(&buf, b"still here");
    assert_eq!(node.connections(), 1);
    // ...and its connection closes when it ends.
    busy.shutdown().await.expect("half-close");
    busy.read_to_end(&mut Vec::new()).await.expect("EOF");
    drop(busy);
    eventually("the busy connection closes after its stream", || {
        node.connections() == 0
    })
    .await;
    assert_eq!((node.keys(), node.streams()), (0, 0));
    assert_eq!(pool.stats().connections(), 0);
}

#[tokio::test]
async fn dropping_the_last_pool_handle_drains_it() {
    let server = echo_server().await;
    let node = PoolStats::new();
    let pool = Pool::with_stats(H2Config::default(), Arc::new(TcpConnector), node.clone());
    let (cert, key) = server.client("default/sa/sleep");
    let stream = pool
        .connect(&key, &cert, target(), &ConnectMeta::default())
        .await
        .expect("stream");
    drop(stream);
    assert_eq!((node.connections(), node.keys()), (1, 1));
    drop(pool);
    assert_eq!(node.keys(), 0);
    eventually("the connection closes", || node.connections() == 0).await;
}

#[tokio::test]
async fn a_key_goes_when_its_last_connection_closes() {
    let server = echo_server().await;
    let pool = Pool::new(
        H2Config {
            idle_timeout: Duration::from_millis(200),
            ..H2Config::default()
        },
        Arc::new(TcpConnector),
    );
    let (cert, key) = server.client("default/sa/sleep");
    drop(
        pool.connect(&key, &cert, target(), &ConnectMeta::default())
            .await
            .expect("stream"),
    );
    assert_eq!(pool.stats().keys(), 1);
    let stats = pool.stats();
    eventually("the idle connection and its key go", || {
        stats.connections() == 0 && stats.keys() == 0
    })
    .await;
}

#[tokio::test]
async fn a_failed_key_is_forgotten_after_its_back_off() {
    let (addr, _) = silent_listener().await;
    let pool = Pool::new(
        H2Config {
            connect_timeout: Duration::from_millis(100),
            connect_backoff: Duration::from_millis(100),
            ..H2Config::default()
        },
        Arc::new(TcpConnector),
    );
    let ca = TestCa::new(TD, Duration::from_secs(3600));
    let cert = ca.issue(&id("default/sa/sleep"));
    let key = PoolKey::new(cert.identity().clone(), vec![id("x/sa/y")], addr, None);
    pool.connect(&key, &cert, target(), &ConnectMeta::default())
        .await
        .expect_err("silent");
    assert_eq!(pool.stats().keys(), 1);
    let stats = pool.stats();
    eventually("the key goes", || stats.keys() == 0).await;
}
