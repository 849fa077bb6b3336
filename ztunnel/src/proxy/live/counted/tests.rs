//! Counting survives the copy's owned hand-overs (an HBONE stream's reads and writes).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use mesh::copy::{copy_bidirectional, Abort};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::Counted;
use crate::proxy::live::Counts;

/// A pipe that hands over the bytes it reads and takes the bytes written to it as an HBONE
/// stream does (`Abort`'s owned calls); a slice read or write fails the test.
struct Owned(tokio::io::DuplexStream);

impl Abort for Owned {
    fn abort(&mut self) {}

    fn poll_write_owned(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut Bytes,
    ) -> Option<Poll<io::Result<usize>>> {
        let res = Pin::new(&mut self.0).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = res {
            bytes::Buf::advance(buf, n);
        }
        Some(res)
    }

    fn poll_read_owned(&mut self, cx: &mut Context<'_>) -> Option<Poll<io::Result<Option<Bytes>>>> {
        let mut room = [0u8; 4096];
        let mut read = ReadBuf::new(&mut room);
        Some(match Pin::new(&mut self.0).poll_read(cx, &mut read) {
            Poll::Ready(Ok(())) if read.filled().is_empty() => Poll::Ready(Ok(None)),
            Poll::Ready(Ok(())) => Poll::Ready(Ok(Some(Bytes::copy_from_slice(read.filled())))),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        })
    }
}

impl AsyncRead for Owned {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        _: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        panic!("read into a slice");
    }
}

impl AsyncWrite for Owned {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, _: &[u8]) -> Poll<io::Result<usize>> {
        panic!("written a slice");
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[tokio::test]
async fn bytes_handed_over_without_a_copy_are_counted_both_ways() {
    let counts = Counts::default();
    let (mut client, proxy_a) = tokio::io::duplex(1024);
    let (proxy_b, mut server) = tokio::io::duplex(1024);
    let mut a = Counted {
        inner: Owned(proxy_a),
        counts: &counts,
    };
    let mut b = Owned(proxy_b);
    let ends = async {
        client.write_all(b"hello").await.expect("write");
        let mut got = [0u8; 5];
        server.read_exact(&mut got).await.expect("read");
        server.write_all(b"hi").await.expect("write");
        let mut back = [0u8; 2];
        client.read_exact(&mut back).await.expect("read");
        client.shutdown().await.expect("client done");
        server.shutdown().await.expect("server done");
    };
    let (moved, ()) = tokio::join!(copy_bidirectional(&mut a, &mut b), ends);
    let moved = moved.expect("clean end");
    assert_eq!((moved.a_to_b, moved.b_to_a), (5, 2));
    let counted = counts.get();
    assert_eq!(
        (counted.a_to_b, counted.b_to_a),
        (5, 2),
        "read from and written to the counted side"
    );
}
