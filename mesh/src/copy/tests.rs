use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::net::{TcpListener, TcpStream};

use super::*;

/// A duplex stream that records whether it was aborted, and can be told to fail its writes.
struct Probe {
    inner: DuplexStream,
    aborted: Arc<AtomicBool>,
    fail_writes: bool,
}

impl Probe {
    fn new(inner: DuplexStream) -> (Self, Arc<AtomicBool>) {
        let aborted = Arc::new(AtomicBool::new(false));
        let probe = Probe {
            inner,
            aborted: aborted.clone(),
            fail_writes: false,
        };
        (probe, aborted)
    }
}

impl Abort for Probe {
    fn abort(&mut self) {
        self.aborted.store(true, Ordering::SeqCst);
    }
}

impl AsyncRead for Probe {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Probe {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.fail_writes {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "peer reset",
            )));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A connected pair of loopback TCP sockets.
async fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    (client.expect("connect"), accepted.expect("accept").0)
}

#[tokio::test]
async fn copies_both_ways_and_propagates_half_close() {
    let (client, proxy_a) = tokio::io::duplex(1024);
    let (proxy_b, server) = tokio::io::duplex(1024);
    let (mut proxy_a, a_aborted) = Probe::new(proxy_a);
    let (mut proxy_b, b_aborted) = Probe::new(proxy_b);
    let proxy = tokio::spawn(async move { copy_bidirectional(&mut proxy_a, &mut proxy_b).await });

    let (mut client_r, mut client_w) = tokio::io::split(client);
    let (mut server_r, mut server_w) = tokio::io::split(server);
    let payload: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let mut got = Vec::new();
    let send = async {
        client_w.write_all(&payload).await.expect("write");
        client_w.shutdown().await.expect("client half-close");
    };
    let (_, read) = tokio::join!(send, server_r.read_to_end(&mut got));
    read.expect("server reads to EOF");
    assert_eq!(got, payload);

    // The other direction still works after the first one closed.
    server_w.write_all(b"reply").await.expect("reply");
    server_w.shutdown().await.expect("server half-close");
    let mut reply = Vec::new();
    client_r
        .read_to_end(&mut reply)
        .await
        .expect("client reads");
    assert_eq!(reply, b"reply");

    let moved = proxy.await.expect("join").expect("copy ok");
    assert_eq!(moved.a_to_b, payload.len() as u64);
    assert_eq!(moved.b_to_a, 5);
    assert!(!a_aborted.load(Ordering::SeqCst) && !b_aborted.load(Ordering::SeqCst));
}

/// The reported case: the server waits for a request, then resets. The client, waiting for
/// its answer, must see the reset at once, not hang until its own timeout.
#[tokio::test]
async fn a_reset_on_one_side_is_a_reset_on_the_other_while_it_waits() {
    let (mut client, mut proxy_a) = tcp_pair().await;
    let (mut proxy_b, server) = tcp_pair().await;
    let proxy = tokio::spawn(async move { copy_bidirectional(&mut proxy_a, &mut proxy_b).await });

    client.write_all(b"request").await.expect("request");
    let mut server = server;
    let mut got = [0u8; 7];
    server.read_exact(&mut got).await.expect("server reads");
    socket2::SockRef::from(&server)
        .set_linger(Some(Duration::ZERO))
        .expect("linger");
    drop(server);

    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(1), client.read(&mut buf))
        .await
        .expect("the client learns within a second");
    let err = read.expect_err("a reset, not a clean EOF");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");

    let end = proxy.await.expect("join").expect_err("the copy failed");
    let CopyError::Io { side, .. } = end;
    assert_eq!(side, Side::B);
}

/// A clean close stays clean: FIN in, FIN out, never a reset.
#[tokio::test]
async fn a_clean_close_on_one_side_is_a_clean_close_on_the_other() {
    let (mut client, mut proxy_a) = tcp_pair().await;
    let (mut proxy_b, mut server) = tcp_pair().await;
    let proxy = tokio::spawn(async move { copy_bidirectional(&mut proxy_a, &mut proxy_b).await });
    server.write_all(b"bye").await.expect("write");
    drop(server);
    let mut got = Vec::new();
    client.read_to_end(&mut got).await.expect("clean EOF");
    assert_eq!(got, b"bye");
    drop(client);
    let moved = proxy.await.expect("join").expect("clean");
    assert_eq!(moved.b_to_a, 3);
}

#[tokio::test]
async fn a_failed_write_aborts_the_side_it_was_reading_from() {
    let (mut client, proxy_a) = tokio::io::duplex(1024);
    let (proxy_b, _server) = tokio::io::duplex(1024);
    let (mut proxy_a, a_aborted) = Probe::new(proxy_a);
    let (mut proxy_b, b_aborted) = Probe::new(proxy_b);
    proxy_b.fail_writes = true;
    let proxy = tokio::spawn(async move { copy_bidirectional(&mut proxy_a, &mut proxy_b).await });
    client.write_all(b"data").await.expect("write");
    let end = tokio::time::timeout(Duration::from_secs(1), proxy)
        .await
        .expect("ends at once")
        .expect("join")
        .expect_err("write failure");
    let CopyError::Io { side, .. } = end;
    assert_eq!(side, Side::B);
    assert!(a_aborted.load(Ordering::SeqCst), "a aborted");
    assert!(!b_aborted.load(Ordering::SeqCst), "b already failed");
}

#[tokio::test]
async fn buffers_grow_with_bulk_and_bytes_arrive_exactly() {
    let (mut client, mut proxy_a) = tcp_pair().await;
    let (mut proxy_b, mut server) = tcp_pair().await;
    let proxy = tokio::spawn(async move { copy_bidirectional(&mut proxy_a, &mut proxy_b).await });
    let payload: Vec<u8> = (0..(4u32 << 20)).map(|i| (i % 253) as u8).collect();
    let expected = payload.clone();
    let writer = tokio::spawn(async move {
        client.write_all(&payload).await.expect("write");
        client.shutdown().await.expect("fin");
        client
    });
    let mut got = Vec::new();
    server.read_to_end(&mut got).await.expect("read");
    assert!(got == expected, "bytes differ");
    drop(server);
    drop(writer.await.expect("join"));
    let moved = proxy.await.expect("join").expect("clean");
    assert_eq!(moved.a_to_b, 4 << 20);
}

#[tokio::test]
async fn a_direction_waiting_for_bytes_holds_no_buffer_until_they_come() {
    let (mut app, reader) = tokio::io::duplex(64 * 1024);
    let (writer, mut peer) = tokio::io::duplex(64 * 1024);
    let (mut reader, mut writer) = (Box::pin(reader), Box::pin(writer));
    let mut dir = Direction::new();
    app.write_all(b"hello").await.expect("write");
    let waker = futures::task::noop_waker_ref();
    let mut cx = Context::from_waker(waker);
    // Reads the 5 bytes, writes them on, then waits: the buffer is given back.
    assert!(dir
        .poll_copy(&mut cx, reader.as_mut(), writer.as_mut())
        .is_pending());
    assert_eq!(dir.buf.capacity(), 0);
    let mut got = [0u8; 5];
    peer.read_exact(&mut got).await.expect("read");
    assert_eq!(&got, b"hello");
    // More bytes: a buffer again, and they arrive.
    app.write_all(b"again").await.expect("write");
    assert!(dir
        .poll_copy(&mut cx, reader.as_mut(), writer.as_mut())
        .is_pending());
    peer.read_exact(&mut got).await.expect("read");
    assert_eq!(&got, b"again");
    assert_eq!(dir.total, 10);
}
