//! Bidirectional copy between two byte streams: half-close on a clean end, abort on an error.
//!
//! A clean EOF in one direction is passed on as a half-close (a TCP FIN, or an HTTP/2
//! END_STREAM) and the other direction keeps flowing until it ends too. An error on either side
//! (a reset from an application, a failed write, a dead HBONE connection) ends the copy at once
//! and aborts the *other* side ([`Abort`]): a TCP reset to an application socket, RST_STREAM
//! on an HBONE stream. So a reset travels end to end, as it would without the mesh, and nobody
//! waits on a connection whose other half is gone (RFC 9113 §8.5 asks the same of a CONNECT
//! proxy).
//!
//! Each direction starts with a 16 KiB buffer and doubles it (up to 256 KiB) whenever a read
//! fills it, so bulk transfers make few syscalls; a direction that waits for bytes with an
//! initial-size buffer gives it back to a small per-thread pool, so an idle connection holds
//! none and the next request does not allocate and zero a new one. Both
//! directions are driven by one future over the two streams, with no lock and no split.

use std::fmt;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// First buffer size of each direction.
pub const INITIAL_BUFFER: usize = 16 * 1024;
/// Initial-size buffers each thread keeps for the next direction that has bytes to move.
const POOLED_PER_THREAD: usize = 32;

thread_local! {
    /// Initial-size buffers given back by idle directions. A request/response connection goes
    /// idle between requests: taking a buffer from here spares the allocation and the zeroing
    /// of a fresh one on every request, and the pool is bounded, so idle connections still hold
    /// none.
    static POOL: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// An initial-size buffer: a pooled one, or a new one.
fn take_buffer() -> Vec<u8> {
    POOL.with(|p| p.borrow_mut().pop())
        .unwrap_or_else(|| vec![0; INITIAL_BUFFER])
}

/// Gives an initial-size buffer back to this thread's pool (or to the allocator when full).
fn give_back(buf: Vec<u8>) {
    if buf.len() == INITIAL_BUFFER {
        POOL.with(|p| {
            let mut p = p.borrow_mut();
            if p.len() < POOLED_PER_THREAD {
                p.push(buf);
            }
        });
    }
}
/// Largest buffer a direction grows to.
pub const MAX_BUFFER: usize = 256 * 1024;

/// A stream that can be torn down so that its peer learns the connection failed, rather than
/// seeing a clean end.
pub trait Abort {
    /// Marks the stream failed: a TCP socket sends a reset when it is closed (SO_LINGER 0), an
    /// HTTP/2 stream sends RST_STREAM now. Reads and writes after this are not expected.
    fn abort(&mut self);
}

impl Abort for tokio::net::TcpStream {
    fn abort(&mut self) {
        // Linger 0: close() sends RST and discards unsent data, as the failed peer did.
        if let Err(e) = socket2::SockRef::from(&*self).set_linger(Some(Duration::ZERO)) {
            tracing::debug!(error = %e, "cannot arm a reset on close");
        }
    }
}

/// An in-memory pipe has no way to say "reset": dropping it is all the peer sees.
impl Abort for tokio::io::DuplexStream {
    fn abort(&mut self) {}
}

impl<T: Abort + ?Sized> Abort for &mut T {
    fn abort(&mut self) {
        (**self).abort();
    }
}

impl<T: Abort + ?Sized> Abort for Box<T> {
    fn abort(&mut self) {
        (**self).abort();
    }
}

/// A stream whose transport cannot signal a reset (an upgraded HTTP connection, say): aborting
/// it does nothing, and dropping it is all its peer sees.
#[derive(Debug)]
pub struct NoAbort<T>(pub T);

impl<T> Abort for NoAbort<T> {
    fn abort(&mut self) {}
}

impl<T: AsyncRead + Unpin> AsyncRead for NoAbort<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for NoAbort<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Bytes moved in each direction.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Transferred {
    /// From `a` to `b`.
    pub a_to_b: u64,
    /// From `b` to `a`.
    pub b_to_a: u64,
}

/// One of the two streams of a copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The first stream passed to [`copy_bidirectional`].
    A,
    /// The second.
    B,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::A => "a",
            Side::B => "b",
        })
    }
}

/// Which side failed, and how. The other side has been aborted.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// Reading from or writing to `side` failed.
    #[error("copy failed on the {side} side after {transferred:?}: {source}")]
    Io {
        /// Whose read or write failed.
        side: Side,
        /// What had been moved before the failure.
        transferred: Transferred,
        /// The I/O error.
        source: io::Error,
    },
}

impl CopyError {
    /// What had been moved before the failure.
    pub fn transferred(&self) -> Transferred {
        match self {
            CopyError::Io { transferred, .. } => *transferred,
        }
    }
}

/// Copies `a → b` and `b → a` until both directions have reached EOF (each EOF passed on as a
/// half-close). On the first error on either side, stops both directions, aborts the other
/// side and returns the error; the caller then drops both streams.
pub async fn copy_bidirectional<A, B>(a: &mut A, b: &mut B) -> Result<Transferred, CopyError>
where
    A: AsyncRead + AsyncWrite + Abort + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Abort + Unpin + ?Sized,
{
    let mut forward = Direction::new();
    let mut backward = Direction::new();
    let failure = poll_fn(|cx| {
        let mut pending = false;
        if !forward.done {
            match forward.poll_copy(cx, Pin::new(&mut *a), Pin::new(&mut *b)) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err((reader_failed, e))) => {
                    let side = if reader_failed { Side::A } else { Side::B };
                    return Poll::Ready(Some((side, e)));
                }
                Poll::Pending => pending = true,
            }
        }
        if !backward.done {
            match backward.poll_copy(cx, Pin::new(&mut *b), Pin::new(&mut *a)) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err((reader_failed, e))) => {
                    let side = if reader_failed { Side::B } else { Side::A };
                    return Poll::Ready(Some((side, e)));
                }
                Poll::Pending => pending = true,
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(None)
        }
    })
    .await;
    let transferred = Transferred {
        a_to_b: forward.total,
        b_to_a: backward.total,
    };
    match failure {
        None => Ok(transferred),
        Some((side, source)) => {
            match side {
                Side::A => b.abort(),
                Side::B => a.abort(),
            }
            Err(CopyError::Io {
                side,
                transferred,
                source,
            })
        }
    }
}

/// One direction's state: a buffer, what of it is still to be written, and how far it got.
struct Direction {
    buf: Vec<u8>,
    /// Written up to here.
    pos: usize,
    /// Filled up to here.
    cap: usize,
    /// The last read filled the buffer: grow it before the next one.
    grow: bool,
    read_eof: bool,
    /// Written since the last flush.
    unflushed: bool,
    done: bool,
    total: u64,
}

impl Direction {
    fn new() -> Self {
        Direction {
            buf: Vec::new(),
            pos: 0,
            cap: 0,
            grow: false,
            read_eof: false,
            unflushed: false,
            done: false,
            total: 0,
        }
    }

    /// Moves bytes until `reader` reaches EOF, then half-closes `writer`. An error comes back
    /// with whether it was the read (`true`) or the write side that failed.
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
    ) -> Poll<Result<(), (bool, io::Error)>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            if self.pos == self.cap && !self.read_eof {
                if self.buf.is_empty() {
                    self.buf = take_buffer();
                } else if self.grow && self.buf.len() < MAX_BUFFER {
                    self.buf.resize(self.buf.len() * 2, 0);
                }
                self.grow = false;
                let mut read = ReadBuf::new(&mut self.buf);
                match reader.as_mut().poll_read(cx, &mut read) {
                    Poll::Pending => {
                        // Nothing more to send for now: push out what was written.
                        if self.unflushed {
                            ready!(writer.as_mut().poll_flush(cx)).map_err(|e| (false, e))?;
                            self.unflushed = false;
                        }
                        // Idle, with nothing buffered: an idle connection holds no buffer (the
                        // next read takes one from the thread's pool). A grown buffer is kept:
                        // its direction moves bulk and will fill it again.
                        if self.buf.len() <= INITIAL_BUFFER {
                            give_back(std::mem::take(&mut self.buf));
                        }
                        return Poll::Pending;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err((true, e))),
                    Poll::Ready(Ok(())) => {
                        let n = read.filled().len();
                        if n == 0 {
                            self.read_eof = true;
                        } else {
                            self.grow = n == self.buf.len();
                            self.pos = 0;
                            self.cap = n;
                        }
                    }
                }
            }
            while self.pos < self.cap {
                let n = ready!(writer
                    .as_mut()
                    .poll_write(cx, &self.buf[self.pos..self.cap]))
                .map_err(|e| (false, e))?;
                if n == 0 {
                    let e = io::Error::new(io::ErrorKind::WriteZero, "peer accepts no more bytes");
                    return Poll::Ready(Err((false, e)));
                }
                self.pos += n;
                self.total += n as u64;
                self.unflushed = true;
            }
            if self.read_eof {
                ready!(writer.as_mut().poll_flush(cx)).map_err(|e| (false, e))?;
                // Half-close: the peer sees EOF in this direction only.
                match ready!(writer.as_mut().poll_shutdown(cx)) {
                    Ok(()) => {}
                    // The peer already went away entirely; nothing more to tell it.
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => {}
                    Err(e) => return Poll::Ready(Err((false, e))),
                }
                self.done = true;
                // The buffer is not needed any more.
                give_back(std::mem::take(&mut self.buf));
                return Poll::Ready(Ok(()));
            }
        }
    }
}

#[cfg(test)]
mod tests;
