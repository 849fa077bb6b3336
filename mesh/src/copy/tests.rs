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
    let (mut reader, mut writer) = (reader, writer);
    let mut dir = Direction::new();
    app.write_all(b"hello").await.expect("write");
    let waker = futures::task::noop_waker_ref();
    let mut cx = Context::from_waker(waker);
    // Reads the 5 bytes, writes them on, then waits: the buffer is given back.
    assert!(dir
        .poll_copy(&mut cx, &mut reader, &mut writer)
        .is_pending());
    assert_eq!(dir.buf.capacity(), 0);
    let mut got = [0u8; 5];
    peer.read_exact(&mut got).await.expect("read");
    assert_eq!(&got, b"hello");
    // More bytes: a buffer again, and they arrive.
    app.write_all(b"again").await.expect("write");
    assert!(dir
        .poll_copy(&mut cx, &mut reader, &mut writer)
        .is_pending());
    peer.read_exact(&mut got).await.expect("read");
    assert_eq!(&got, b"again");
    assert_eq!(dir.total, 10);
}

/// A writer that only takes owned bytes: a slice write fails the test.
#[derive(Default)]
struct Owning {
    chunks: Vec<bytes::Bytes>,
    shut: bool,
}

impl Abort for Owning {
    fn abort(&mut self) {}

    fn poll_write_owned(
        &mut self,
        _cx: &mut Context<'_>,
        buf: &mut Bytes,
    ) -> Option<Poll<io::Result<usize>>> {
        // At most 5,000 bytes at a time, as a stream short of flow-control window would.
        let n = buf.len().min(5_000);
        self.chunks.push(buf.split_to(n));
        Some(Poll::Ready(Ok(n)))
    }
}

impl AsyncWrite for Owning {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, _: &[u8]) -> Poll<io::Result<usize>> {
        panic!("a writer that takes owned bytes was written a slice");
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.shut = true;
        Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn a_writer_that_takes_owned_bytes_gets_what_was_read_in_order_and_whole() {
    let (mut app, mut reader) = tokio::io::duplex(64 * 1024);
    let sent: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let feed = {
        let sent = sent.clone();
        tokio::spawn(async move {
            app.write_all(&sent).await.expect("write");
            app.shutdown().await.expect("shutdown");
        })
    };
    let mut writer = Owning::default();
    let mut dir = Direction::new();
    poll_fn(|cx| dir.poll_copy(cx, &mut reader, &mut writer))
        .await
        .expect("clean copy");
    feed.await.expect("join");
    let got: Vec<u8> = writer
        .chunks
        .iter()
        .flat_map(|c| c.iter().copied())
        .collect();
    assert_eq!(got.len(), sent.len());
    assert!(got == sent, "bytes reordered or changed");
    assert_eq!(dir.total, sent.len() as u64);
    assert!(writer.shut, "EOF is passed on as a half-close");
}

/// A reader that hands over chunks it owns, then EOF: a slice read fails the test.
struct Chunks(std::collections::VecDeque<bytes::Bytes>);

impl Abort for Chunks {
    fn abort(&mut self) {}

    fn poll_read_owned(
        &mut self,
        _cx: &mut Context<'_>,
    ) -> Option<Poll<io::Result<Option<Bytes>>>> {
        Some(Poll::Ready(Ok(self.0.pop_front())))
    }
}

impl AsyncRead for Chunks {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        _: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        panic!("a reader that gives owned bytes was read into a slice");
    }
}

#[tokio::test]
async fn bytes_a_reader_hands_over_are_written_in_order_and_whole_then_eof() {
    let sent: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    // Uneven chunks, and an empty one (an empty DATA frame), which is not an EOF.
    let mut chunks = std::collections::VecDeque::new();
    let mut rest = bytes::Bytes::from(sent.clone());
    for size in [1, 70_000, 0, 16_384, 3].into_iter().cycle() {
        if rest.is_empty() {
            break;
        }
        chunks.push_back(rest.split_to(size.min(rest.len())));
    }
    let mut reader = Chunks(chunks);
    let (mut writer, mut peer) = tokio::io::duplex(8 * 1024);
    let read = tokio::spawn(async move {
        let mut got = Vec::new();
        peer.read_to_end(&mut got).await.expect("read");
        got
    });
    let mut dir = Direction::new();
    poll_fn(|cx| dir.poll_copy(cx, &mut reader, &mut writer))
        .await
        .expect("clean copy");
    drop(writer);
    let got = read.await.expect("join");
    assert_eq!(got.len(), sent.len());
    assert!(got == sent, "bytes reordered or changed");
    assert_eq!(dir.total, sent.len() as u64);
}
