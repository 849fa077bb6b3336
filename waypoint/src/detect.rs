//! Protocol detection inside a tunnel: the first bytes decide HTTP/2 (prior knowledge, gRPC
//! too), HTTP/1.x, or opaque TCP.
//!
//! [`classify`] is pure: it looks at what has arrived so far and answers, or asks for more.
//! [`detect`] reads until it can answer, or until the timeout (a server-first protocol sends
//! nothing), and hands back the bytes it read in front of the stream ([`Prefixed`]) so
//! whatever serves the connection sees it from its first byte.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// The HTTP/2 client connection preface.
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Read at most this much while looking for the end of an HTTP/1 request line.
pub const MAX_REQUEST_LINE: usize = 8 * 1024;
/// Longest method token considered.
const MAX_METHOD: usize = 32;

/// What a tunnel carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.0 or HTTP/1.1.
    Http1,
    /// HTTP/2 with prior knowledge (gRPC included).
    Http2,
    /// Anything else: passed through as bytes.
    Tcp,
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::Http1 => "http/1.1",
            Protocol::Http2 => "h2",
            Protocol::Tcp => "tcp",
        })
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Classifies the first bytes of a stream; `None` means "not enough bytes yet".
pub fn classify(buf: &[u8]) -> Option<Protocol> {
    if buf.is_empty() {
        return None;
    }
    if buf.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(buf) {
        return None;
    }
    if buf.starts_with(H2_PREFACE) {
        return Some(Protocol::Http2);
    }
    // HTTP/1: `token SP request-target SP HTTP/1.x CRLF`.
    let method_len = buf.iter().take_while(|b| is_tchar(**b)).count();
    if method_len > MAX_METHOD {
        return Some(Protocol::Tcp);
    }
    if method_len == buf.len() {
        return None; // still in the method
    }
    if method_len == 0 || buf[method_len] != b' ' {
        return Some(Protocol::Tcp);
    }
    let rest = &buf[method_len + 1..];
    match rest.iter().position(|b| *b == b'\n') {
        None if buf.len() >= MAX_REQUEST_LINE => Some(Protocol::Tcp),
        None => {
            if rest.iter().any(|b| b.is_ascii_control() && *b != b'\r') {
                Some(Protocol::Tcp)
            } else {
                None
            }
        }
        Some(end) => {
            let line = rest[..end].strip_suffix(b"\r").unwrap_or(&rest[..end]);
            let ok = (line.ends_with(b" HTTP/1.1") || line.ends_with(b" HTTP/1.0"))
                && line.len() > " HTTP/1.1".len()
                && !line.iter().any(|b| b.is_ascii_control());
            Some(if ok { Protocol::Http1 } else { Protocol::Tcp })
        }
    }
}

/// Reads from `io` until [`classify`] answers, the peer stops sending (EOF) or `timeout`
/// passes (both: TCP). Returns the protocol and the stream with what was read put back.
pub async fn detect<T>(mut io: T, timeout: Duration) -> io::Result<(Protocol, Prefixed<T>)>
where
    T: AsyncRead + Unpin,
{
    let mut buf = BytesMut::with_capacity(1024);
    let deadline = tokio::time::Instant::now() + timeout;
    let protocol = loop {
        if let Some(p) = classify(&buf) {
            break p;
        }
        if buf.len() >= MAX_REQUEST_LINE {
            break Protocol::Tcp;
        }
        match tokio::time::timeout_at(deadline, io.read_buf(&mut buf)).await {
            Err(_) => break Protocol::Tcp,
            Ok(Ok(0)) => break Protocol::Tcp,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
        }
    };
    Ok((protocol, Prefixed::new(buf.freeze(), io)))
}

/// A stream with bytes already read from it put back in front.
#[derive(Debug)]
pub struct Prefixed<T> {
    prefix: Bytes,
    io: T,
}

impl<T: mesh::copy::Abort> mesh::copy::Abort for Prefixed<T> {
    fn abort(&mut self) {
        self.io.abort();
    }

    fn poll_write_owned(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut Bytes,
    ) -> Option<Poll<io::Result<usize>>> {
        self.io.poll_write_owned(cx, buf)
    }

    /// The prefix first, whole; then whatever `io` gives.
    fn poll_read_owned(&mut self, cx: &mut Context<'_>) -> Option<Poll<io::Result<Option<Bytes>>>> {
        if !self.prefix.is_empty() {
            return Some(Poll::Ready(Ok(Some(std::mem::take(&mut self.prefix)))));
        }
        self.io.poll_read_owned(cx)
    }
}

impl<T> Prefixed<T> {
    /// `prefix` is returned by reads before anything from `io`.
    pub fn new(prefix: Bytes, io: T) -> Self {
        Prefixed { prefix, io }
    }

    /// Bytes not yet read back.
    pub fn prefix(&self) -> &[u8] {
        &self.prefix
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Prefixed<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn recognises_the_h2_preface_only_when_complete() {
        assert_eq!(classify(b"PRI * HTTP/2"), None);
        assert_eq!(classify(H2_PREFACE), Some(Protocol::Http2));
        let mut more = H2_PREFACE.to_vec();
        more.extend_from_slice(&[0, 0, 0, 4]);
        assert_eq!(classify(&more), Some(Protocol::Http2));
    }

    #[test]
    fn recognises_http1_request_lines() {
        assert_eq!(classify(b"GE"), None);
        assert_eq!(classify(b"GET /a?b=c HTT"), None);
        assert_eq!(
            classify(b"GET /a?b=c HTTP/1.1\r\nHost: x\r\n"),
            Some(Protocol::Http1)
        );
        assert_eq!(classify(b"POST / HTTP/1.0\r\n"), Some(Protocol::Http1));
        assert_eq!(classify(b"PURGE /x HTTP/1.1\n"), Some(Protocol::Http1));
    }

    #[test]
    fn anything_else_is_tcp() {
        assert_eq!(classify(b"\x16\x03\x01\x02"), Some(Protocol::Tcp)); // TLS
        assert_eq!(classify(b"SSH-2.0-OpenSSH\r\n"), Some(Protocol::Tcp));
        assert_eq!(classify(b"hello world\r\n"), Some(Protocol::Tcp));
        assert_eq!(classify(b"GET / HTTP/2.0\r\n"), Some(Protocol::Tcp));
        assert_eq!(classify(b"GET /\x00 "), Some(Protocol::Tcp));
        assert_eq!(classify(&[b'A'; 40]), Some(Protocol::Tcp));
        let long = [b"GET /".as_slice(), &[b'a'; MAX_REQUEST_LINE]].concat();
        assert_eq!(classify(&long), Some(Protocol::Tcp));
    }

    #[tokio::test]
    async fn detection_puts_the_bytes_back() {
        let (mut client, server) = tokio::io::duplex(1024);
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .expect("write");
        let (p, mut io) = detect(server, Duration::from_secs(5))
            .await
            .expect("detect");
        assert_eq!(p, Protocol::Http1);
        drop(client);
        let mut all = Vec::new();
        io.read_to_end(&mut all).await.expect("read");
        assert_eq!(all, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_is_tcp_after_the_timeout() {
        let (_client, server) = tokio::io::duplex(1024);
        let (p, io) = detect(server, Duration::from_millis(100))
            .await
            .expect("detect");
        assert_eq!(p, Protocol::Tcp);
        assert!(io.prefix().is_empty());
    }
}
