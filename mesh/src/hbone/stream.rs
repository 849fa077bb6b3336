//! One HBONE stream as a byte stream: an HTTP/2 CONNECT stream behind `AsyncRead`/`AsyncWrite`.
//!
//! Shutting down the write half sends END_STREAM (a half-close); reading returns EOF when the
//! peer's END_STREAM arrives, and nothing else: an empty DATA frame without END_STREAM is legal
//! HTTP/2 and is skipped. [`Abort`] sends RST_STREAM with CONNECT_ERROR, the code a CONNECT
//! proxy uses for a TCP reset (RFC 9113 §8.5). Received data is handed back to the
//! flow-control window as soon as it is taken, so the window never stalls a reader that keeps
//! up. A copy ([`crate::copy`]) gives the stream the bytes it read, and takes each DATA
//! frame's payload, as `Bytes`: no copy either way.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::copy::Abort;

/// Largest chunk queued on the stream in one write: the frame size we negotiate.
const MAX_WRITE: usize = super::MAX_FRAME_SIZE as usize;

/// A bidirectional byte stream carried by one HTTP/2 stream.
pub struct H2Stream {
    send: SendStream<Bytes>,
    recv: RecvStream,
    pending: Bytes,
    write_closed: bool,
    /// Dropped with the stream: releases a slot in the pool's per-connection stream count.
    _guard: Option<Box<dyn Send + Sync>>,
}

impl std::fmt::Debug for H2Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Stream")
            .field("stream_id", &self.send.stream_id().as_u32())
            .field("write_closed", &self.write_closed)
            .finish_non_exhaustive()
    }
}

impl H2Stream {
    pub(crate) fn new(
        send: SendStream<Bytes>,
        recv: RecvStream,
        guard: Option<Box<dyn Send + Sync>>,
    ) -> Self {
        H2Stream {
            send,
            recv,
            pending: Bytes::new(),
            write_closed: false,
            _guard: guard,
        }
    }

    /// Waits for received bytes in `pending`: `Ok(false)` at the peer's END_STREAM.
    fn poll_received(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        // An empty DATA frame without END_STREAM carries nothing: read on, it is not an EOF.
        while self.pending.is_empty() {
            match ready!(self.recv.poll_data(cx)) {
                None => return Poll::Ready(Ok(false)),
                Some(Ok(data)) => {
                    // Give the window back now: the bytes are ours, the peer may send more.
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    self.pending = data;
                }
                Some(Err(e)) => {
                    // A peer that resets with NO_ERROR after END_STREAM has simply finished.
                    if e.reason() == Some(h2::Reason::NO_ERROR) {
                        return Poll::Ready(Ok(false));
                    }
                    return Poll::Ready(Err(h2_to_io(e)));
                }
            }
        }
        Poll::Ready(Ok(true))
    }

    /// Queues up to `len` bytes, `take(n)` giving the first `n` of them as `Bytes` once h2 has
    /// room for `n`; how many were queued.
    fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        len: usize,
        take: impl FnOnce(usize) -> Bytes,
    ) -> Poll<io::Result<usize>> {
        if len == 0 {
            return Poll::Ready(Ok(0));
        }
        if self.write_closed {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "HBONE stream write half is closed",
            )));
        }
        self.send.reserve_capacity(len.min(MAX_WRITE));
        loop {
            // Capacity first, and the reset check only when waiting: both register this task
            // as the stream's send waker, and h2 wakes that waker when the next write's
            // `reserve_capacity` assigns capacity. Registered on every write, it made each
            // write wake its own task (a second poll, and often another worker thread woken
            // to steal it: twice upstream's context switches per request).
            match self.send.poll_capacity(cx) {
                Poll::Ready(Some(Ok(0))) => continue,
                Poll::Ready(Some(Ok(n))) => {
                    let n = n.min(len);
                    self.send.send_data(take(n), false).map_err(h2_to_io)?;
                    return Poll::Ready(Ok(n));
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(h2_to_io(e))),
                Poll::Ready(None) => {
                    return Poll::Ready(Err(match self.send.poll_reset(cx) {
                        Poll::Ready(reason) => reset_error(reason),
                        Poll::Pending => {
                            io::Error::new(io::ErrorKind::BrokenPipe, "HBONE stream closed")
                        }
                    }))
                }
                Poll::Pending => {
                    // A reset from the peer wins over waiting for capacity that will never
                    // come.
                    if let Poll::Ready(reason) = self.send.poll_reset(cx) {
                        return Poll::Ready(Err(reset_error(reason)));
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

/// The error a write gets when the peer reset the stream (`Ok`: its reason).
fn reset_error(reason: Result<h2::Reason, h2::Error>) -> io::Error {
    match reason {
        Ok(reason) => io::Error::new(
            io::ErrorKind::BrokenPipe,
            format!("HBONE stream reset by peer: {reason:?}"),
        ),
        Err(e) => h2_to_io(e),
    }
}

fn h2_to_io(e: h2::Error) -> io::Error {
    if e.is_io() {
        return e
            .into_io()
            .unwrap_or_else(|| io::Error::other("h2 I/O error"));
    }
    match e.reason() {
        Some(h2::Reason::NO_ERROR | h2::Reason::CANCEL | h2::Reason::CONNECT_ERROR) => {
            io::Error::new(io::ErrorKind::ConnectionReset, e)
        }
        _ => io::Error::other(e),
    }
}

impl AsyncRead for H2Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !ready!(this.poll_received(cx))? {
            return Poll::Ready(Ok(()));
        }
        let n = this.pending.len().min(buf.remaining());
        buf.put_slice(&this.pending[..n]);
        this.pending.advance(n);
        if this.pending.is_empty() {
            // An emptied slice still holds the frame's whole receive buffer: let it go, or an
            // idle stream pins the buffer its last frame came in.
            this.pending = Bytes::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_send(cx, buf.len(), |n| Bytes::copy_from_slice(&buf[..n]))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // h2 writes frames as the connection task is polled; nothing is buffered here.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.write_closed {
            this.write_closed = true;
            // END_STREAM: the peer reads EOF; our read half stays open.
            this.send.send_data(Bytes::new(), true).map_err(h2_to_io)?;
        }
        Poll::Ready(Ok(()))
    }
}

impl Abort for H2Stream {
    fn abort(&mut self) {
        self.write_closed = true;
        self.send.send_reset(h2::Reason::CONNECT_ERROR);
    }

    /// HTTP/2 queues the copy's bytes as they are: no copy on the way to the TLS record.
    fn poll_write_owned(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut Bytes,
    ) -> Option<Poll<io::Result<usize>>> {
        Some(self.poll_send(cx, buf.len(), |n| buf.split_to(n)))
    }

    /// A DATA frame's payload as h2 received it: no copy on the way to the application.
    fn poll_read_owned(&mut self, cx: &mut Context<'_>) -> Option<Poll<io::Result<Option<Bytes>>>> {
        Some(match self.poll_received(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(true)) => Poll::Ready(Ok(Some(std::mem::take(&mut self.pending)))),
            Poll::Ready(Ok(false)) => Poll::Ready(Ok(None)),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        })
    }
}

impl Drop for H2Stream {
    fn drop(&mut self) {
        if !self.write_closed {
            // Dropped without a clean close (e.g. an error): tell the peer promptly.
            self.send.send_reset(h2::Reason::CANCEL);
        }
    }
}

#[cfg(test)]
mod tests;
