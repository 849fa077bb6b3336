//! HBONE teardown: a tunnel whose peer vanished (PING unanswered) fails every stream on it on
//! both ends, and a reset on one end of a stream is a reset on the other.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh::copy::Abort;
use mesh::hbone::TcpConnector;
use mesh::hbone::{ConnectMeta, H2Config, H2Stream, InboundRequest, Pool, PoolKey, Server};
use mesh::testing::TestCa;
use mesh::Identity;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const TD: &str = "cluster.local";

fn id(s: &str) -> Identity {
    format!("spiffe://{TD}/ns/{s}").parse().expect("identity")
}

fn fast_pings() -> H2Config {
    H2Config {
        ping_interval: Duration::from_millis(100),
        ping_timeout: Duration::from_millis(300),
        ..H2Config::default()
    }
}

/// A TCP relay that can be frozen: it then stops moving bytes but keeps both sockets open,
/// as a peer behind a dead link would.
struct Relay {
    addr: SocketAddr,
    frozen: Arc<AtomicBool>,
}

async fn relay_to(upstream: SocketAddr) -> Relay {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let frozen = Arc::new(AtomicBool::new(false));
    let f = frozen.clone();
    tokio::spawn(async move {
        while let Ok((down, _)) = listener.accept().await {
            let up = TcpStream::connect(upstream).await.expect("relay connect");
            let (dr, dw) = down.into_split();
            let (ur, uw) = up.into_split();
            tokio::spawn(pump(dr, uw, f.clone()));
            tokio::spawn(pump(ur, dw, f.clone()));
        }
    });
    Relay { addr, frozen }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if frozen.load(Ordering::SeqCst) {
            // Swallow everything from now on, and keep the sockets open.
            std::future::pending::<()>().await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
}

/// Starts a server whose handler hands each accepted stream to the test.
async fn server(config: H2Config, ca: &TestCa) -> (SocketAddr, mpsc::UnboundedReceiver<H2Stream>) {
    let cert = Arc::new(ca.issue(&id("echo/sa/echo")));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = mpsc::unbounded_channel();
    let tx = Arc::new(Mutex::new(tx));
    let server = Arc::new(Server::new(config, Arc::new(cert)));
    tokio::spawn(server.serve(listener, move |req: InboundRequest| {
        let tx = tx.clone();
        async move {
            let stream = req.accept().expect("accept");
            let _ = tx.lock().expect("lock").send(stream);
        }
    }));
    (addr, rx)
}

async fn connect(pool: &Pool, ca: &TestCa, hbone: SocketAddr) -> H2Stream {
    let cert = ca.issue(&id("default/sa/sleep"));
    let key = PoolKey::new(
        cert.identity().clone(),
        vec![id("echo/sa/echo")],
        hbone,
        None,
    );
    let target: SocketAddr = "10.0.0.7:8080".parse().expect("target");
    pool.connect(&key, &cert, target, &ConnectMeta::default())
        .await
        .expect("stream opens")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_ping_fails_every_stream_on_both_ends() {
    let ca = TestCa::new(TD, Duration::from_secs(3600));
    let (addr, mut accepted) = server(fast_pings(), &ca).await;
    let relay = relay_to(addr).await;
    let pool = Pool::new(fast_pings(), Arc::new(TcpConnector));
    let mut clients = Vec::new();
    let mut servers = Vec::new();
    for _ in 0..3 {
        let mut c = connect(&pool, &ca, relay.addr).await;
        c.write_all(b"ping").await.expect("write");
        let mut s = accepted.recv().await.expect("server stream");
        let mut got = [0u8; 4];
        s.read_exact(&mut got).await.expect("server reads");
        clients.push(c);
        servers.push(s);
    }
    assert_eq!(pool.connections_opened(), 1, "one tunnel carries the three");

    relay.frozen.store(true, Ordering::SeqCst);
    let started = tokio::time::Instant::now();
    for (i, mut c) in clients.into_iter().enumerate() {
        let mut buf = [0u8; 8];
        let res = tokio::time::timeout(Duration::from_secs(3), c.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("client stream {i} still waiting after 3 s"));
        assert!(
            res.is_err(),
            "client stream {i}: an error, not EOF: {res:?}"
        );
    }
    for (i, mut s) in servers.into_iter().enumerate() {
        let mut buf = [0u8; 8];
        let res = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("server stream {i} still waiting after 3 s"));
        assert!(
            res.is_err(),
            "server stream {i}: an error, not EOF: {res:?}"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "noticed within interval + timeout, took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn an_aborted_stream_is_a_connection_reset_for_the_far_end() {
    let ca = TestCa::new(TD, Duration::from_secs(3600));
    let (addr, mut accepted) = server(H2Config::default(), &ca).await;
    let pool = Pool::new(H2Config::default(), Arc::new(TcpConnector));
    let mut client = connect(&pool, &ca, addr).await;
    client.write_all(b"request").await.expect("write");
    let mut server_side = accepted.recv().await.expect("server stream");
    let mut got = [0u8; 7];
    server_side.read_exact(&mut got).await.expect("read");

    server_side.abort();
    drop(server_side);
    let mut buf = [0u8; 8];
    let err = tokio::time::timeout(Duration::from_secs(1), client.read(&mut buf))
        .await
        .expect("in time")
        .expect_err("reset");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
}
