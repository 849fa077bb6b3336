//! The HBONE server's connection set-up is bounded: one deadline for all of it, a cap on
//! set-ups in flight, a certificate wait that wakes on publication, and the caller hears of a
//! connection only once its peer has authenticated.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh::cert::WorkloadCertificate;
use mesh::cert_manager::FetchError;
use mesh::hbone::{
    ConnectMeta, H2Config, HboneError, InboundRequest, Pool, PoolKey, Server, ServerCerts,
    TcpConnector,
};
use mesh::testing::TestCa;
use mesh::Identity;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

const TD: &str = "cluster.local";

type CertSlot = Option<Result<Arc<WorkloadCertificate>, FetchError>>;

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

async fn echo(req: InboundRequest) {
    let Ok(stream) = req.accept() else { return };
    let (mut r, mut w) = tokio::io::split(stream);
    let _ = tokio::io::copy(&mut r, &mut w).await;
    let _ = w.shutdown().await;
}

/// Starts `server` on a loopback port with the echo handler.
async fn serve(server: Arc<Server>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(server.serve(listener, echo));
    addr
}

/// Reads until the server closes the connection; returns how long that took from `start`.
async fn closed_after(mut conn: impl AsyncReadExt + Unpin, start: Instant) -> Duration {
    let mut buf = [0u8; 64];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return start.elapsed(),
            Ok(Ok(_)) => continue,
            Err(_) => panic!("the server never closed the connection"),
        }
    }
}

/// Completes TLS as `cert` with the server at `addr`, then says nothing more.
async fn tls_then_silence(
    cert: &WorkloadCertificate,
    server_id: &Identity,
    addr: SocketAddr,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let config = mesh::tls::client_config(cert, vec![server_id.clone()]);
    let tcp = TcpStream::connect(addr).await.expect("tcp");
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(
            rustls::pki_types::ServerName::IpAddress(addr.ip().into()),
            tcp,
        )
        .await
        .expect("TLS handshake")
}

#[tokio::test]
async fn a_silent_client_is_cut_at_the_handshake_deadline() {
    let ca = TestCa::new(TD, Duration::from_secs(3600));
    let timeout = Duration::from_millis(500);
    let server = Arc::new(Server::new(
        H2Config {
            handshake_timeout: timeout,
            ..H2Config::default()
        },
        Arc::new(Arc::new(ca.issue(&id("echo/sa/echo")))),
    ));
    let addr = serve(server).await;
    let start = Instant::now();
    let tcp = TcpStream::connect(addr).await.expect("tcp");
    let took = closed_after(tcp, start).await;
    assert!(
        took >= timeout && took < timeout * 2,
        "a silent client was cut after {took:?}"
    );
}

#[tokio::test]
async fn waiting_for_the_certificate_counts_against_the_same_deadline() {
    let ca = TestCa::new(TD, Duration::from_secs(3600));
    let server_id = id("echo/sa/echo");
    let (publish, slot) = watch::channel::<CertSlot>(None);
    let timeout = Duration::from_millis(1000);
    let server = Arc::new(Server::new(
        H2Config {
            handshake_timeout: timeout,
            ..H2Config::default()
        },
        Arc::new(slot),
    ));
    let addr = serve(server).await;
    let cert = Arc::new(ca.issue(&server_id));
    // The certificate arrives 700 ms into the set-up; the client then completes TLS and never
    // sends the HTTP/2 preface. Separate deadlines would cut it at 700 ms + 1 s.
    let start = Instant::now();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(700)).await;
        publish.send_replace(Some(Ok(cert)));
        // Keep the sender: a dropped one would mean "never".
        std::future::pending::<()>().await;
    });
    let client = ca.issue(&id("default/sa/sleep"));
    let tls = tls_then_silence(&client, &server_id, addr).await;
    assert!(
        start.elapsed() >= Duration::from_millis(650),
        "TLS finished before the certificate existed"
    );
    let took = closed_after(tls, start).await;
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(1500),
        "set-up was cut after {took:?}, not at its one deadline"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_cap_reached_a_new_handshake_is_closed_at_once_and_counted() {
    let ca = TestCa::new(TD, Duration::from_secs(3600));
    let server_id = id("echo/sa/echo");
    let cap = 4;
    let server = Arc::new(Server::new(
        H2Config {
            max_handshakes: cap,
            handshake_timeout: Duration::from_secs(30),
            ..H2Config::default()
        },
        Arc::new(Arc::new(ca.issue(&server_id))),
    ));
    let addr = serve(server.clone()).await;
    let mut silent = Vec::new();
    for _ in 0..cap {
        silent.push(TcpStream::connect(addr).await.expect("tcp"));
    }
    eventually("the first connections are in set-up", || {
        server.handshakes_in_flight() == cap
    })
    .await;

    let start = Instant::now();
    let extra = TcpStream::connect(addr).await.expect("tcp");
    let took = closed_after(extra, start).await;
    assert!(took < Duration::from_secs(2), "over the cap: held {took:?}");
    assert_eq!(server.handshakes_refused(), 1);
    assert_eq!(
        server.handshakes_in_flight(),
        cap,
        "the first ones still wait"
    );
    for conn in &mut silent {
        let mut buf = [0u8; 1];
        assert!(
            tokio::time::timeout(Duration::from_millis(50), conn.read(&mut buf))
                .await
                .is_err(),
            "a connection within the cap was closed"
        );
    }

    // Their slots come back when they go, and a real client is served.
    drop(silent);
    eventually("set-up slots are released", || {
        server.handshakes_in_flight() == 0
    })
    .await;
    let cert = ca.issue(&id("default/sa/sleep"));
    let pool = Pool::new(H2Config::default(), Arc::new(TcpConnector));
    let key = PoolKey::new(cert.identity().clone(), vec![server_id], addr, None);
    pool.connect(&key, &cert, target(), &ConnectMeta::default())
        .await
        .expect("served once under the cap");
    assert_eq!(server.handshakes_in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn the_certificate_wait_wakes_on_publication_not_by_polling() {
    let ca = TestCa::new(TD, Duration::from_secs(3600));
    let (publish, slot) = watch::channel::<CertSlot>(None);
    let mut ready = slot.ready();
    assert!(futures::poll!(&mut ready).is_pending());
    // A failed fetch is no certificate: still waiting.
    publish.send_replace(Some(Err(FetchError::Unavailable("CA down".into()))));
    assert!(futures::poll!(&mut ready).is_pending());
    let start = Instant::now();
    publish.send_replace(Some(Ok(Arc::new(ca.issue(&id("echo/sa/echo"))))));
    // Paused clock, no await in between: only the change notification can have woken it.
    assert!(futures::poll!(&mut ready).is_ready());
    assert_eq!(Instant::now(), start, "no time passed");
}

#[tokio::test]
async fn a_server_started_before_its_certificate_serves_once_it_is_published() {
    let ca = TestCa::new(TD, Duration::from_secs(3600));
    let server_id = id("echo/sa/echo");
    let (publish, slot) = watch::channel::<CertSlot>(None);
    let addr = serve(Arc::new(Server::new(H2Config::default(), Arc::new(slot)))).await;
    let cert = ca.issue(&id("default/sa/sleep"));
    let pool = Pool::new(H2Config::default(), Arc::new(TcpConnector));
    let key = PoolKey::new(cert.identity().clone(), vec![server_id.clone()], addr, None);
    let meta = ConnectMeta::default();
    let connect = pool.connect(&key, &cert, target(), &meta);
    tokio::pin!(connect);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut connect)
            .await
            .is_err(),
        "served without a certificate"
    );
    let published = Instant::now();
    publish.send_replace(Some(Ok(Arc::new(ca.issue(&server_id)))));
    let mut stream = connect.await.expect("served once the certificate exists");
    assert!(
        published.elapsed() < Duration::from_millis(500),
        "took {:?} after publication",
        published.elapsed()
    );
    stream.write_all(b"hi").await.expect("write");
    let mut buf = [0u8; 2];
    stream.read_exact(&mut buf).await.expect("echo");
    assert_eq!(&buf, b"hi");
}

/// A server whose callers record every authenticated peer, refuse `refused`, and can close
/// every connection by notifying `close`.
struct Hooked {
    ca: Arc<TestCa>,
    server_id: Identity,
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Identity>>>,
    guards: Arc<AtomicUsize>,
    close: Arc<Notify>,
}

async fn hooked_server(refused: Identity) -> Hooked {
    let ca = TestCa::new(TD, Duration::from_secs(3600));
    let server_id = id("echo/sa/echo");
    let server = Arc::new(Server::new(
        H2Config::default(),
        Arc::new(Arc::new(ca.issue(&server_id))),
    ));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let guards = Arc::new(AtomicUsize::new(0));
    let close = Arc::new(Notify::new());
    let (s, g, c) = (seen.clone(), guards.clone(), close.clone());
    tokio::spawn(async move {
        while let Ok((tcp, peer)) = listener.accept().await {
            let (server, seen, guards, close) = (server.clone(), s.clone(), g.clone(), c.clone());
            let refused = refused.clone();
            tokio::spawn(async move {
                let hook = move |peer: &Identity| {
                    seen.lock().expect("lock").push(peer.clone());
                    if *peer == refused {
                        return None;
                    }
                    guards.fetch_add(1, Ordering::SeqCst);
                    Some(async move {
                        /// Counts down when the connection ends, however it ends.
                        struct Live(Arc<AtomicUsize>);
                        impl Drop for Live {
                            fn drop(&mut self) {
                                self.0.fetch_sub(1, Ordering::SeqCst);
                            }
                        }
                        let _live = Live(guards);
                        close.notified().await;
                    })
                };
                let _ = server
                    .serve_connection_until(tcp, peer, echo, std::future::pending(), hook)
                    .await;
            });
        }
    });
    Hooked {
        ca,
        server_id,
        addr,
        seen,
        guards,
        close,
    }
}

#[tokio::test]
async fn only_authenticated_peers_reach_the_hook_and_its_refusal_or_guard_closes_them() {
    let refused = id("default/sa/banned");
    let fx = hooked_server(refused.clone()).await;
    let key_for = |cert: &WorkloadCertificate| {
        PoolKey::new(
            cert.identity().clone(),
            vec![fx.server_id.clone()],
            fx.addr,
            None,
        )
    };

    // Plaintext, silence, and a certificate from another root never reach the hook.
    let mut plain = TcpStream::connect(fx.addr).await.expect("tcp");
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    closed_after(plain, Instant::now()).await;
    let _silent = TcpStream::connect(fx.addr).await.expect("tcp");
    let stranger = TestCa::new(TD, Duration::from_secs(3600))
        .issue(&id("default/sa/stranger"))
        .with_extra_roots(fx.ca.issue(&id("x/sa/y")).roots().to_vec());
    let pool = Pool::new(H2Config::default(), Arc::new(TcpConnector));
    pool.connect(
        &key_for(&stranger),
        &stranger,
        target(),
        &ConnectMeta::default(),
    )
    .await
    .expect_err("foreign root");
    assert!(
        fx.seen.lock().expect("lock").is_empty(),
        "hook ran unauthenticated"
    );

    // The hook's refusal closes the connection.
    let banned = fx.ca.issue(&refused);
    let err = pool
        .connect(
            &key_for(&banned),
            &banned,
            target(),
            &ConnectMeta::default(),
        )
        .await
        .expect_err("refused by the hook");
    assert!(!matches!(err, HboneError::Status(_)), "{err}");
    assert_eq!(*fx.seen.lock().expect("lock"), vec![refused]);

    // An authenticated peer is seen with its identity, and its guard lives with it...
    let cert = fx.ca.issue(&id("default/sa/sleep"));
    let mut stream = pool
        .connect(&key_for(&cert), &cert, target(), &ConnectMeta::default())
        .await
        .expect("served");
    assert_eq!(
        fx.seen.lock().expect("lock").last(),
        Some(&id("default/sa/sleep"))
    );
    assert_eq!(fx.guards.load(Ordering::SeqCst), 1);
    // ...and when the guard resolves the connection is closed, its stream with it.
    fx.close.notify_one();
    let start = Instant::now();
    closed_after(&mut stream, start).await;
    eventually("the guard is dropped with the connection", || {
        fx.guards.load(Ordering::SeqCst) == 0
    })
    .await;
    eventually("the client sees the connection gone", || {
        pool.open_connections() == 0
    })
    .await;
}
