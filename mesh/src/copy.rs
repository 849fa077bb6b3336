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
//! Each direction reads into a `BytesMut` that starts at 16 KiB and doubles (up to 256 KiB)
//! whenever a read fills it, so bulk transfers make few syscalls; reads land in uninitialised
//! room, so nothing is zeroed. A stream that can hold bytes it owns (an HBONE stream: HTTP/2
//! queues `Bytes`) takes what was read as it is ([`Abort::poll_write_owned`]); any other is
//! written a slice. A direction that waits for bytes with an initial-size buffer gives it back
//! to a small per-thread pool, so an idle connection holds none. Both directions are driven by
//! one future over the two streams, with no lock and no split.

use std::fmt;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// First buffer size of each direction.
pub const INITIAL_BUFFER: usize = 16 * 1024;
/// Initial-size buffers each thread keeps for the next direction that has bytes to move.
const POOLED_PER_THREAD: usize = 32;

thread_local! {
    /// Initial-size buffers given back by idle directions. A request/response connection goes
    /// idle between requests: taking a buffer from here spares an allocation per request, and
    /// the pool is bounded, so idle connections still hold none.
    static POOL: std::cell::RefCell<Vec<BytesMut>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// An empty initial-size buffer: a pooled one, or a new one.
fn take_buffer() -> BytesMut {
    POOL.with(|p| p.borrow_mut().pop())
        .unwrap_or_else(|| BytesMut::with_capacity(INITIAL_BUFFER))
}

/// Gives a buffer back to this thread's pool when it is a whole initial-size one that nobody
/// else holds (bytes handed on without copying may still be queued); else lets it go.
fn give_back(mut buf: BytesMut) {
    buf.clear();
    if buf.try_reclaim(INITIAL_BUFFER) && buf.capacity() == INITIAL_BUFFER {
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
/// seeing a clean end; and one that may hand over, or take, bytes without a copy.
pub trait Abort {
    /// Marks the stream failed: a TCP socket sends a reset when it is closed (SO_LINGER 0), an
    /// HTTP/2 stream sends RST_STREAM now. Reads and writes after this are not expected.
    fn abort(&mut self);

    /// Queues bytes from the front of `buf` without copying them, for a stream that can hold
    /// bytes it owns (an HBONE stream hands them to HTTP/2 as they are): takes what it queued
    /// off `buf` and returns how many. `None` (the default): this stream cannot, and the copy
    /// writes it a slice with `poll_write` instead.
    fn poll_write_owned(
        &mut self,
        _cx: &mut Context<'_>,
        _buf: &mut Bytes,
    ) -> Option<Poll<io::Result<usize>>> {
        None
    }

    /// The next bytes this stream received, as it holds them (an HBONE stream: the payload of
    /// a DATA frame), for a stream that can give them without copying: `Ok(None)` at EOF.
    /// `None` (the default): this stream cannot, and the copy reads it with `poll_read`.
    fn poll_read_owned(
        &mut self,
        _cx: &mut Context<'_>,
    ) -> Option<Poll<io::Result<Option<Bytes>>>> {
        None
    }
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

/// A reference or a box is the stream it points to.
macro_rules! forward_abort {
    ($($stream:ty),*) => {$(
        impl<T: Abort + ?Sized> Abort for $stream {
            fn abort(&mut self) {
                (**self).abort();
            }

            fn poll_write_owned(
                &mut self,
                cx: &mut Context<'_>,
                buf: &mut Bytes,
            ) -> Option<Poll<io::Result<usize>>> {
                (**self).poll_write_owned(cx, buf)
            }

            fn poll_read_owned(
                &mut self,
                cx: &mut Context<'_>,
            ) -> Option<Poll<io::Result<Option<Bytes>>>> {
                (**self).poll_read_owned(cx)
            }
        }
    )*};
}

forward_abort!(&mut T, Box<T>);

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
            match forward.poll_copy(cx, &mut *a, &mut *b) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err((reader_failed, e))) => {
                    let side = if reader_failed { Side::A } else { Side::B };
                    return Poll::Ready(Some((side, e)));
                }
                Poll::Pending => pending = true,
            }
        }
        if !backward.done {
            match backward.poll_copy(cx, &mut *b, &mut *a) {
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

/// One direction's state: the bytes read and not yet written, room for the next read, and how
/// far it got.
struct Direction {
    /// Room for the next read. What a read fills is split off into `received`.
    buf: BytesMut,
    /// Read (or handed over by a reader that owns them) and not yet written.
    received: Bytes,
    /// How much the next read asks for: [`INITIAL_BUFFER`], doubled by each read that filled
    /// it, up to [`MAX_BUFFER`].
    size: usize,
    read_eof: bool,
    /// Written since the last flush.
    unflushed: bool,
    done: bool,
    total: u64,
}

impl Direction {
    fn new() -> Self {
        Direction {
            buf: BytesMut::new(),
            received: Bytes::new(),
            size: INITIAL_BUFFER,
            read_eof: false,
            unflushed: false,
            done: false,
            total: 0,
        }
    }

    /// Makes room for a read of about `size` bytes: the buffer's own room while at least half
    /// of that is left, else its whole allocation back (when no bytes of it are still queued
    /// by a writer) or a new one.
    fn make_room(&mut self) {
        if self.buf.capacity() == 0 && self.size == INITIAL_BUFFER {
            self.buf = take_buffer();
        } else if self.buf.capacity() < self.size / 2 {
            self.buf.reserve(self.size);
        }
    }

    /// Reads what `reader` has: `Ok(true)` when there are bytes to write or EOF was reached,
    /// `Ok(false)` when it has nothing yet (and will wake this task).
    fn fill<R>(&mut self, cx: &mut Context<'_>, reader: &mut R) -> io::Result<bool>
    where
        R: AsyncRead + Abort + Unpin + ?Sized,
    {
        if let Some(owned) = reader.poll_read_owned(cx) {
            return match owned {
                Poll::Pending => Ok(false),
                Poll::Ready(Ok(Some(bytes))) => {
                    self.received = bytes;
                    Ok(true)
                }
                Poll::Ready(Ok(None)) => {
                    self.read_eof = true;
                    Ok(true)
                }
                Poll::Ready(Err(e)) => Err(e),
            };
        }
        self.make_room();
        match tokio_util::io::poll_read_buf(Pin::new(&mut *reader), cx, &mut self.buf) {
            Poll::Pending => Ok(false),
            Poll::Ready(Err(e)) => Err(e),
            Poll::Ready(Ok(0)) => {
                self.read_eof = true;
                Ok(true)
            }
            Poll::Ready(Ok(n)) => {
                if n >= self.size && self.size < MAX_BUFFER {
                    self.size *= 2;
                }
                // The bytes read, apart from the room left for the next read.
                self.received = self.buf.split().freeze();
                Ok(true)
            }
        }
    }

    /// Counts `n` bytes written; a writer that took none has failed.
    fn wrote(&mut self, n: usize) -> Result<(), (bool, io::Error)> {
        if n == 0 {
            let e = io::Error::new(io::ErrorKind::WriteZero, "peer accepts no more bytes");
            return Err((false, e));
        }
        self.total += n as u64;
        self.unflushed = true;
        Ok(())
    }

    /// Moves bytes until `reader` reaches EOF, then half-closes `writer`. An error comes back
    /// with whether it was the read (`true`) or the write side that failed.
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
    ) -> Poll<Result<(), (bool, io::Error)>>
    where
        R: AsyncRead + Abort + Unpin + ?Sized,
        W: AsyncWrite + Abort + Unpin + ?Sized,
    {
        loop {
            if self.received.is_empty() && !self.read_eof {
                match self.fill(cx, reader) {
                    Ok(true) => {}
                    Ok(false) => {
                        // Nothing more to send for now: push out what was written.
                        if self.unflushed {
                            ready!(Pin::new(&mut *writer).poll_flush(cx))
                                .map_err(|e| (false, e))?;
                            self.unflushed = false;
                        }
                        // Idle, with nothing buffered: an idle connection holds no buffer (the
                        // next read takes one from the thread's pool). A grown buffer is kept:
                        // its direction moves bulk and will fill it again.
                        if self.size == INITIAL_BUFFER {
                            give_back(std::mem::take(&mut self.buf));
                        }
                        return Poll::Pending;
                    }
                    Err(e) => return Poll::Ready(Err((true, e))),
                }
            }
            while !self.received.is_empty() {
                let n = match writer.poll_write_owned(cx, &mut self.received) {
                    // Taken off the front by the writer.
                    Some(written) => ready!(written).map_err(|e| (false, e))?,
                    None => {
                        let n = ready!(Pin::new(&mut *writer).poll_write(cx, &self.received))
                            .map_err(|e| (false, e))?;
                        self.received.advance(n.min(self.received.len()));
                        n
                    }
                };
                self.wrote(n)?;
            }
            // Written: let go of the buffer's bytes, so the next read can reuse its room.
            self.received = Bytes::new();
            if self.read_eof {
                ready!(Pin::new(&mut *writer).poll_flush(cx)).map_err(|e| (false, e))?;
                // Half-close: the peer sees EOF in this direction only.
                match ready!(Pin::new(&mut *writer).poll_shutdown(cx)) {
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
