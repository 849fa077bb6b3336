//! HBONE over loopback: the tunnel carries bytes exactly, half-closes correctly, pools
//! connections, and refuses every peer that is not who it must be.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::StatusCode;
use mesh::cert::WorkloadCertificate;
use mesh::hbone::{
    ConnectMeta, H2Config, HboneError, InboundRequest, Pool, PoolKey, Server, TcpConnector,
};
use mesh::testing::{LogBuffer, TestCa};
use mesh::Identity;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const TD: &str = "cluster.local";

fn id(s: &str) -> Identity {
    format!("spiffe://{TD}/ns/{s}").parse().expect("identity")
}

/// What the test server does with an accepted stream.
#[derive(Clone, Copy)]
enum Behaviour {
    /// Echo every byte, half-close after the client's EOF.
    Echo,
    /// Read to EOF, then answer with the byte count as text.
    CountThenReply,
    /// Answer "hello" and half-close immediately, then read to EOF and report via the count.
    ServerClosesFirst,
    /// Refuse with this status.
    Reject(StatusCode),
}

struct Fixture {
    ca: Arc<TestCa>,
    server_id: Identity,
    addr: SocketAddr,
    handled: Arc<AtomicUsize>,
    /// Handlers that ran to the end without a failed assertion.
    completed: Arc<AtomicUsize>,
    last_peer: Arc<std::sync::Mutex<Option<Identity>>>,
}

async fn start_server(behaviour: Behaviour) -> Fixture {
    start_server_with(behaviour, H2Config::default()).await
}

async fn start_server_with(behaviour: Behaviour, config: H2Config) -> Fixture {
    let ca = TestCa::new(TD, Duration::from_secs(3600));
    let server_id = id("echo/sa/echo");
    let cert = Arc::new(ca.issue(&server_id));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let handled = Arc::new(AtomicUsize::new(0));
    let completed = Arc::new(AtomicUsize::new(0));
    let last_peer = Arc::new(std::sync::Mutex::new(None));
    let server = Arc::new(Server::new(config, Arc::new(cert)));
    let (h, c, p) = (handled.clone(), completed.clone(), last_peer.clone());
    tokio::spawn(server.serve(listener, move |req: InboundRequest| {
        let (h, c, p) = (h.clone(), c.clone(), p.clone());
        async move {
            h.fetch_add(1, Ordering::SeqCst);
            *p.lock().expect("lock") = Some(req.peer().clone());
            handle(req, behaviour).await;
            c.fetch_add(1, Ordering::SeqCst);
        }
    }));
    Fixture {
        ca,
        server_id,
        addr,
        handled,
        completed,
        last_peer,
    }
}

async fn handle(req: InboundRequest, behaviour: Behaviour) {
    if let Behaviour::Reject(status) = behaviour {
        req.reject(status);
        return;
    }
    let mut stream = req.accept().expect("accept");
    match behaviour {
        Behaviour::Echo => {
            let (mut r, mut w) = tokio::io::split(stream);
            tokio::io::copy(&mut r, &mut w).await.expect("echo");
            w.shutdown().await.expect("half-close");
        }
        Behaviour::CountThenReply => {
            let mut buf = Vec::new();
            stream.read_to_end(&mut buf).await.expect("read to EOF");
            stream
                .write_all(buf.len().to_string().as_bytes())
                .await
                .expect("reply");
            stream.shutdown().await.expect("half-close");
        }
        Behaviour::ServerClosesFirst => {
            stream.write_all(b"hello").await.expect("hello");
            stream.shutdown().await.expect("server half-close first");
            let mut buf = Vec::new();
            stream
                .read_to_end(&mut buf)
                .await
                .expect("still reads after own half-close");
            assert_eq!(buf, b"client still talking");
        }
        Behaviour::Reject(_) => unreachable!(),
    }
}

impl Fixture {
    fn client_cert(&self, who: &str) -> WorkloadCertificate {
        self.ca.issue(&id(who))
    }

    fn key(&self, cert: &WorkloadCertificate, expect: Vec<Identity>) -> PoolKey {
        PoolKey::new(cert.identity().clone(), expect, self.addr, None)
    }

    fn target(&self) -> SocketAddr {
        "10.0.0.7:8080".parse().expect("target")
    }
}

/// Waits up to 5 s for `cond`, failing the test with `what` otherwise.
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn payload(i: usize) -> Vec<u8> {
    // Distinct content and length per stream so a mix-up cannot go unnoticed.
    let len = 1 + (i * 7919) % 300_000;
    (0..len).map(|j| ((i * 31 + j * 7) % 256) as u8).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_streams_round_trip_byte_exact_on_one_connection() {
    let fx = start_server(Behaviour::Echo).await;
    let cert = Arc::new(fx.client_cert("default/sa/sleep"));
    let pool = Pool::new(H2Config::default(), Arc::new(TcpConnector));
    let key = fx.key(&cert, vec![fx.server_id.clone()]);
    let mut tasks = Vec::new();
    for i in 0..100 {
        let (pool, cert, key, target) = (pool.clone(), cert.clone(), key.clone(), fx.target());
        tasks.push(tokio::spawn(async move {
            let stream = pool
                .connect(&key, &cert, target, &ConnectMeta::default())
                .await
                .expect("stream opens");
            let (mut r, mut w) = tokio::io::split(stream);
            let data = payload(i);
            let writer = async {
                w.write_all(&data).await.expect("write");
                w.shutdown().await.expect("half-close");
            };
            let mut got = Vec::new();
            let reader = r.read_to_end(&mut got);
            let (_, read) = tokio::join!(writer, reader);
            read.expect("read echo");
            assert_eq!(got.len(), data.len(), "stream {i} length");
            assert!(got == data, "stream {i} bytes differ");
        }));
    }
    for t in tasks {
        t.await.expect("stream task");
    }
    eventually("all handlers complete", || {
        fx.completed.load(Ordering::SeqCst) == 100
    })
    .await;
    assert_eq!(
        pool.connections_opened(),
        1,
        "100 streams fit one connection"
    );
    assert_eq!(
        fx.last_peer.lock().expect("lock").clone(),
        Some(id("default/sa/sleep")),
        "server sees the verified client identity"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_round_trips_byte_exact_with_a_tls_write_buffer_below_and_above_a_record() {
    // Below one TLS record (rustls then takes less plaintext per write) and the default;
    // both ends use it, so each direction is written through it.
    for tls_write_buffer in [1024, mesh::hbone::TLS_WRITE_BUFFER] {
        let config = H2Config {
            tls_write_buffer,
            ..H2Config::default()
        };
        let fx = start_server_with(Behaviour::Echo, config.clone()).await;
        let cert = fx.client_cert("default/sa/sleep");
        let pool = Pool::new(config, Arc::new(TcpConnector));
        let key = fx.key(&cert, vec![fx.server_id.clone()]);
        let stream = pool
            .connect(&key, &cert, fx.target(), &ConnectMeta::default())
            .await
            .expect("stream opens");
        let (mut r, mut w) = tokio::io::split(stream);
        let data: Vec<u8> = (0..3_000_000).map(|j| (j * 7 % 251) as u8).collect();
        let writer = async {
            w.write_all(&data).await.expect("write");
            w.shutdown().await.expect("half-close");
        };
        let mut got = Vec::new();
        let (_, read) = tokio::join!(writer, r.read_to_end(&mut got));
        read.expect("read echo");
        assert_eq!(got.len(), data.len(), "buffer {tls_write_buffer}: length");
        assert!(got == data, "buffer {tls_write_buffer}: bytes differ");
    }
}

#[tokio::test]
async fn client_half_close_lets_server_reply_afterwards() {
    let fx = start_server(Behaviour::CountThenReply).await;
    let cert = fx.client_cert("default/sa/sleep");
    let pool = Pool::new(H2Config::default(), Arc::new(TcpConnector));
    let mut stream = pool
        .connect(
            &fx.key(&cert, vec![fx.server_id.clone()]),
            &cert,
            fx.target(),
            &ConnectMeta::default(),
        )
        .await
        .expect("stream");
    stream.write_all(&[7u8; 12345]).await.expect("write");
    stream.shutdown().await.expect("client half-close");
    let mut reply = String::new();
    stream
        .read_to_string(&mut reply)
        .await
        .expect("reply after half-close");
    assert_eq!(reply, "12345");
}

/// The client's first bytes, sent with the CONNECT (`connect_with`), reach the server ahead of
/// everything written on the stream afterwards, byte exact, alone or with more behind them.
#[tokio::test]
async fn first_bytes_sent_with_the_connect_arrive_first_and_exact() {
    let fx = start_server(Behaviour::Echo).await;
    let cert = fx.client_cert("default/sa/sleep");
    let pool = Pool::new(H2Config::default(), Arc::new(TcpConnector));
    let key = fx.key(&cert, vec![fx.server_id.clone()]);
    for (first, rest) in [(payload(1), payload(2)), (payload(3), Vec::new())] {
        let mut stream = pool
            .connect_with(
                &key,
                &cert,
                fx.target(),
                &ConnectMeta::default(),
                bytes::Bytes::from(first.clone()),
            )
            .await
            .expect("stream");
        stream.write_all(&rest).await.expect("write");
        stream.shutdown().await.expect("half-close");
        let mut echoed = Vec::new();
        stream.read_to_end(&mut echoed).await.expect("echo");
        assert_eq!(echoed.len(), first.len() + rest.len());
        assert!(echoed[..first.len()] == first[..], "first bytes first");
        assert!(echoed[first.len()..] == rest[..], "then the rest");
    }
    assert_eq!(
        pool.connections_opened(),
        1,
        "both on one pooled connection"
    );
}

#[tokio::test]
async fn server_half_close_lets_client_keep_sending() {
    let fx = start_server(Behaviour::ServerClosesFirst).await;
    let cert = fx.client_cert("default/sa/sleep");
    let pool = Pool::new(H2Config::default(), Arc::new(TcpConnector));
    let mut stream = pool
        .connect(
            &fx.key(&cert, vec![fx.server_id.clone()]),
            &cert,
            fx.target(),
            &ConnectMeta::default(),
        )
        .await
        .expect("stream");
    let mut hello = Vec::new();
    stream
        .read_to_end(&mut hello)
        .await
        .expect("EOF from server");
    assert_eq!(hello, b"hello");
    stream
        .write_all(b"client still talking")
        .await
        .expect("write after server EOF");
    stream.shutdown().await.expect("close");
    // The server asserts what it read; its handler completes only if that held.
    eventually("server handler completes", || {
        fx.completed.load(Ordering::SeqCst) == 1
    })
    .await;
}

#[tokio::test]
async fn client_refuses_a_server_with_an_unexpected_identity() {
    let fx = start_server(Behaviour::Echo).await;
    let cert = fx.client_cert("default/sa/sleep");
    let pool = Pool::new(H2Config::default(), Arc::new(TcpConnector));
    let err = pool
        .connect(
            &fx.key(&cert, vec![id("echo/sa/someone-else")]),
            &cert,
            fx.target(),
            &ConnectMeta::default(),
        )
        .await
        .expect_err("wrong server identity");
    assert!(matches!(err, HboneError::Tls { .. }), "{err}");
    assert_eq!(fx.handled.load(Ordering::SeqCst), 0);
}

/// Attempts a stream with `cert`; the server must refuse it before any handler runs, and say
/// so in its log with `reason`.
async fn assert_server_refuses_saying(
    fx: &Fixture,
    cert: WorkloadCertificate,
    why: &str,
    reason: &str,
) {
    let (logs, _guard) = LogBuffer::scoped();
    let pool = Pool::new(H2Config::default(), Arc::new(TcpConnector));
    let key = fx.key(&cert, vec![fx.server_id.clone()]);
    let result = pool
        .connect(&key, &cert, fx.target(), &ConnectMeta::default())
        .await;
    assert!(result.is_err(), "{why}: server must refuse");
    assert_eq!(
        fx.handled.load(Ordering::SeqCst),
        0,
        "{why}: no handler ran"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !logs.text().contains(reason) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{why}: refusal not logged with {reason:?}:\n{}",
            logs.text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn server_refuses_client_from_another_root() {
    let fx = start_server(Behaviour::Echo).await;
    let other = TestCa::new(TD, Duration::from_secs(3600));
    // Trusts our server's root so the client side is happy; only the server can refuse.
    let cert = other
        .issue(&id("default/sa/sleep"))
        .with_extra_roots(fx.ca.issue(&id("x/sa/y")).roots().to_vec());
    assert_server_refuses_saying(&fx, cert, "foreign root", "invalid peer certificate").await;
}

#[tokio::test]
async fn server_refuses_an_expired_client_certificate() {
    let fx = start_server(Behaviour::Echo).await;
    let two_hours_ago = SystemTime::now() - Duration::from_secs(7200);
    let cert = fx
        .ca
        .issue_at(
            &id("default/sa/sleep"),
            two_hours_ago,
            Duration::from_secs(3600),
        )
        .expect("expired cert");
    assert!(cert.is_expired_at(SystemTime::now()));
    assert_server_refuses_saying(&fx, cert, "expired", "expired").await;
}

#[tokio::test]
async fn server_refuses_a_client_from_another_trust_domain() {
    let fx = start_server(Behaviour::Echo).await;
    // Same root, so the chain is valid: only the trust-domain check can refuse it.
    let foreign: Identity = "spiffe://evil.example/ns/default/sa/sleep"
        .parse()
        .expect("identity");
    let cert = fx
        .ca
        .issue_at(&foreign, SystemTime::now(), Duration::from_secs(3600))
        .expect("cert");
    assert_server_refuses_saying(&fx, cert, "foreign trust domain", "foreign trust domain").await;
}

/// Accepts any server certificate, so that only the server's checks decide.
#[derive(Debug)]
struct AcceptAnyServer;

impl rustls::client::danger::ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        mesh::tls::provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[tokio::test]
async fn server_refuses_a_client_with_no_certificate() {
    let fx = start_server(Behaviour::Echo).await;
    let mut config = rustls::ClientConfig::builder_with_provider(mesh::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServer))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(fx.addr).await.expect("tcp");
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
    // In TLS 1.3 the client may finish its side before the server's refusal arrives: then
    // the first read must see the connection end without a byte of application data.
    if let Ok(mut tls) = connector.connect(name, tcp).await {
        let _ = tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
        let mut buf = [0u8; 64];
        let read = tls.read(&mut buf).await;
        assert!(
            matches!(read, Ok(0) | Err(_)),
            "server answered a client without a certificate"
        );
    }
    assert_eq!(fx.handled.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn plaintext_to_the_hbone_port_gets_nothing() {
    let (logs, _guard) = LogBuffer::scoped();
    let fx = start_server(Behaviour::Echo).await;
    for probe in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..],
        &b"CONNECT 10.0.0.7:8080 HTTP/1.1\r\n\r\n"[..],
    ] {
        let mut tcp = TcpStream::connect(fx.addr).await.expect("tcp");
        tcp.write_all(probe).await.expect("write");
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut buf)).await;
        assert!(
            !buf.windows(4).any(|w| w == b"HTTP"),
            "plaintext got an HTTP answer: {:?}",
            String::from_utf8_lossy(&buf)
        );
    }
    assert_eq!(fx.handled.load(Ordering::SeqCst), 0);
    eventually("plaintext refusals logged", || {
        logs.text().matches("HBONE TLS handshake refused").count() >= 3
    })
    .await;
}

#[tokio::test]
async fn random_bytes_on_the_hbone_port_do_not_break_the_server() {
    let fx = start_server(Behaviour::Echo).await;
    for seed in 0u64..20 {
        let mut tcp = TcpStream::connect(fx.addr).await.expect("tcp");
        let junk: Vec<u8> = (0..4096u64)
            .map(|i| {
                (i.wrapping_mul(6364136223846793005)
                    .wrapping_add(seed.wrapping_mul(1442695040888963407))
                    >> 33) as u8
            })
            .collect();
        let _ = tcp.write_all(&junk).await;
        let mut buf = [0u8; 16];
        let _ = tokio::time::timeout(Duration::from_secs(2), tcp.read(&mut buf)).await;
    }
    // Still serving.
    let cert = fx.client_cert("default/sa/sleep");
    let pool = Pool::new(H2Config::default(), Arc::new(TcpConnector));
    let mut s = pool
        .connect(
            &fx.key(&cert, vec![fx.server_id.clone()]),
            &cert,
            fx.target(),
            &ConnectMeta::default(),
        )
        .await
        .expect("server still serves");
    s.write_all(b"ok").await.expect("write");
    s.shutdown().await.expect("close");
    let mut back = Vec::new();
    s.read_to_end(&mut back).await.expect("read");
    assert_eq!(back, b"ok");
}

#[tokio::test]
async fn handler_statuses_reach_the_client() {
    for status in [
        StatusCode::BAD_REQUEST,
        StatusCode::UNAUTHORIZED,
        StatusCode::SERVICE_UNAVAILABLE,
    ] {
        let fx = start_server(Behaviour::Reject(status)).await;
        let cert = fx.client_cert("default/sa/sleep");
        let pool = Pool::new(H2Config::default(), Arc::new(TcpConnector));
        let err = pool
            .connect(
                &fx.key(&cert, vec![fx.server_id.clone()]),
                &cert,
                fx.target(),
                &ConnectMeta::default(),
            )
            .await
            .expect_err("rejected");
        assert!(
            matches!(err, HboneError::Status(s) if s == status),
            "{status}: {err}"
        );
    }
}

#[tokio::test]
async fn connect_to_tunnel_ports_is_refused_with_400_by_the_server() {
    let fx = start_server(Behaviour::Echo).await;
    let cert = fx.client_cert("default/sa/sleep");
    let pool = Pool::new(H2Config::default(), Arc::new(TcpConnector));
    let key = fx.key(&cert, vec![fx.server_id.clone()]);
    for port in [15001u16, 15006, 15008] {
        let target: SocketAddr = format!("10.0.0.7:{port}").parse().expect("addr");
        let err = pool
            .connect(&key, &cert, target, &ConnectMeta::default())
            .await
            .expect_err("reserved port");
        assert!(
            matches!(err, HboneError::Status(StatusCode::BAD_REQUEST)),
            "{port}: {err}"
        );
    }
    assert_eq!(fx.handled.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn oversized_connect_headers_are_refused_without_harm() {
    let fx = start_server(Behaviour::Echo).await;
    let cert = fx.client_cert("default/sa/sleep");
    let pool = Pool::new(H2Config::default(), Arc::new(TcpConnector));
    let key = fx.key(&cert, vec![fx.server_id.clone()]);
    let meta = ConnectMeta {
        traceparent: Some("x".repeat(64 * 1024)),
        ..ConnectMeta::default()
    };
    let result = pool.connect(&key, &cert, fx.target(), &meta).await;
    assert!(result.is_err(), "64 KiB header accepted");
    assert_eq!(fx.handled.load(Ordering::SeqCst), 0);
    // The server is still healthy for a normal request on a fresh pool.
    let pool = Pool::new(H2Config::default(), Arc::new(TcpConnector));
    let stream = pool
        .connect(&key, &cert, fx.target(), &ConnectMeta::default())
        .await;
    assert!(stream.is_ok(), "server still serves");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_fifty_streams_to_one_key_opens_one_connection() {
    let fx = start_server(Behaviour::Echo).await;
    let cert = Arc::new(fx.client_cert("default/sa/sleep"));
    let pool = Pool::new(H2Config::default(), Arc::new(TcpConnector));
    let key = fx.key(&cert, vec![fx.server_id.clone()]);
    let streams = futures::future::join_all((0..50).map(|_| {
        let (pool, cert, key, target) = (pool.clone(), cert.clone(), key.clone(), fx.target());
        async move {
            pool.connect(&key, &cert, target, &ConnectMeta::default())
                .await
                .expect("stream")
        }
    }))
    .await;
    assert_eq!(streams.len(), 50);
    assert_eq!(pool.connections_opened(), 1);
    assert_eq!(pool.open_connections(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_past_the_limit_open_a_second_connection() {
    let config = H2Config {
        max_streams: 10,
        ..H2Config::default()
    };
    let fx = start_server_with(Behaviour::Echo, config.clone()).await;
    let cert = fx.client_cert("default/sa/sleep");
    let pool = Pool::new(config, Arc::new(TcpConnector));
    let key = fx.key(&cert, vec![fx.server_id.clone()]);
    let mut held = Vec::new();
    for _ in 0..11 {
        held.push(
            pool.connect(&key, &cert, fx.target(), &ConnectMeta::default())
                .await
                .expect("stream"),
        );
    }
    assert_eq!(
        pool.connections_opened(),
        2,
        "11th stream needs a new connection"
    );
    // Freed slots are reused: no third connection.
    held.truncate(5);
    for _ in 0..5 {
        held.push(
            pool.connect(&key, &cert, fx.target(), &ConnectMeta::default())
                .await
                .expect("stream"),
        );
    }
    assert_eq!(pool.connections_opened(), 2);
}

#[tokio::test]
async fn idle_pooled_connections_are_closed() {
    let config = H2Config {
        idle_timeout: Duration::from_millis(300),
        ..H2Config::default()
    };
    let fx = start_server(Behaviour::Echo).await;
    let cert = fx.client_cert("default/sa/sleep");
    let pool = Pool::new(config, Arc::new(TcpConnector));
    let key = fx.key(&cert, vec![fx.server_id.clone()]);
    let mut s = pool
        .connect(&key, &cert, fx.target(), &ConnectMeta::default())
        .await
        .expect("stream");
    s.shutdown().await.expect("close");
    let mut sink = Vec::new();
    s.read_to_end(&mut sink).await.expect("eof");
    drop(s);
    assert_eq!(pool.open_connections(), 1);
    eventually("idle connection closed", || pool.open_connections() == 0).await;
    // A new stream after the close opens a new connection.
    let _s = pool
        .connect(&key, &cert, fx.target(), &ConnectMeta::default())
        .await
        .expect("stream");
    assert_eq!(pool.connections_opened(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_shutdown_keeps_open_streams_and_sends_new_ones_elsewhere() {
    let ca = TestCa::new(TD, Duration::from_secs(3600));
    let server_id = id("echo/sa/echo");
    let server = Arc::new(Server::new(
        H2Config::default(),
        Arc::new(Arc::new(ca.issue(&server_id))),
    ));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (going_away, rx) = tokio::sync::watch::channel(false);
    let served = Arc::new(AtomicUsize::new(0));
    let ended = served.clone();
    tokio::spawn(async move {
        for n in 0.. {
            let (tcp, peer) = listener.accept().await.expect("accept");
            let (server, mut rx, ended) = (server.clone(), rx.clone(), ended.clone());
            tokio::spawn(async move {
                // Only the first connection is told to go away.
                let shutdown = async move {
                    while n > 0 || !*rx.borrow_and_update() {
                        if n > 0 || rx.changed().await.is_err() {
                            std::future::pending::<()>().await;
                        }
                    }
                };
                let handler = |req: InboundRequest| handle(req, Behaviour::Echo);
                let _ = server
                    .serve_connection_until(tcp, peer, handler, shutdown, |_: &Identity| {
                        Some(std::future::pending::<()>())
                    })
                    .await;
                ended.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    let cert = Arc::new(ca.issue(&id("default/sa/sleep")));
    let pool = Pool::new(H2Config::default(), Arc::new(TcpConnector));
    let key = PoolKey::new(cert.identity().clone(), vec![server_id], addr, None);
    let target: SocketAddr = "10.0.0.7:8080".parse().expect("target");
    let mut open = pool
        .connect(&key, &cert, target, &ConnectMeta::default())
        .await
        .expect("stream");
    let mut buf = [0u8; 3];
    open.write_all(b"one").await.expect("write");
    open.read_exact(&mut buf).await.expect("echo");

    going_away.send_replace(true);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The open stream carries on over the connection that is going away...
    open.write_all(b"two").await.expect("write after GOAWAY");
    open.read_exact(&mut buf).await.expect("echo after GOAWAY");
    assert_eq!(&buf, b"two");
    // ...and a new stream goes over a new connection.
    let mut fresh = pool
        .connect(&key, &cert, target, &ConnectMeta::default())
        .await
        .expect("a new stream after GOAWAY");
    fresh.write_all(b"new").await.expect("write");
    fresh.read_exact(&mut buf).await.expect("echo");
    assert_eq!(&buf, b"new");
    assert_eq!(pool.connections_opened(), 2, "GOAWAY moved new streams");
    // The old connection ends once its last stream does.
    open.shutdown().await.expect("half-close");
    let mut rest = Vec::new();
    open.read_to_end(&mut rest).await.expect("EOF");
    eventually("the drained connection ended", || {
        served.load(Ordering::SeqCst) == 1
    })
    .await;
}
