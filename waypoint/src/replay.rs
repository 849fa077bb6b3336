//! A request body of unknown size (HTTP/2 without `content-length`: gRPC, typically) kept
//! for a retry while it streams to the first try.
//!
//! [`TeeBody`] forwards the client's frames as they come and records them in a shared
//! [`Recording`] up to [`MAX_BUFFERED_BODY`]; past that the recording is dropped
//! and the body can no longer be replayed. A later try may start when the recording is
//! intact and either the body has ended or the previous try's body has been dropped (nothing
//! else is reading the client's stream): it replays the recorded frames, then goes on reading
//! the client's body where the previous try stopped.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::upstream::BoxError;

/// The largest request body kept for retries and mirroring.
pub const MAX_BUFFERED_BODY: u64 = 64 * 1024;

/// What has been read of the client's body, shared by the tries.
#[derive(Debug, Default)]
pub struct Recording {
    incoming: Option<Incoming>,
    chunks: Vec<Bytes>,
    len: u64,
    trailers: Option<HeaderMap>,
    complete: bool,
    overflow: bool,
    failed: bool,
    active: bool,
}

/// A shared recording of one request body.
#[derive(Debug, Clone)]
pub struct Tee {
    rec: Arc<Mutex<Recording>>,
    count: Arc<AtomicU64>,
}

fn lock(m: &Mutex<Recording>) -> MutexGuard<'_, Recording> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Tee {
    /// Records `body`, counting bytes first read from the client into `count`.
    pub fn new(body: Incoming, count: Arc<AtomicU64>) -> Self {
        Tee {
            rec: Arc::new(Mutex::new(Recording {
                incoming: Some(body),
                ..Default::default()
            })),
            count,
        }
    }

    /// Whether a new try can have the whole body: the recording is intact and no earlier
    /// try's body is still being read.
    pub fn replayable(&self) -> bool {
        let rec = lock(&self.rec);
        !rec.overflow && !rec.failed && (rec.complete || !rec.active)
    }

    /// A body for the next try, or `None` when the body cannot be replayed.
    pub fn body(&self) -> Option<TeeBody> {
        let mut rec = lock(&self.rec);
        if rec.overflow || rec.failed || (rec.active && !rec.complete) {
            return None;
        }
        rec.active = true;
        Some(TeeBody {
            rec: self.rec.clone(),
            count: self.count.clone(),
            pos: 0,
            trailers_sent: false,
        })
    }
}

/// One try's view of the body: the recorded frames, then the client's.
#[derive(Debug)]
pub struct TeeBody {
    rec: Arc<Mutex<Recording>>,
    count: Arc<AtomicU64>,
    pos: usize,
    trailers_sent: bool,
}

impl Body for TeeBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let mut rec = lock(&this.rec);
        if this.pos < rec.chunks.len() {
            let chunk = rec.chunks[this.pos].clone();
            this.pos += 1;
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if rec.complete {
            return match rec.trailers.clone() {
                Some(t) if !this.trailers_sent => {
                    this.trailers_sent = true;
                    Poll::Ready(Some(Ok(Frame::trailers(t))))
                }
                _ => Poll::Ready(None),
            };
        }
        let Some(incoming) = rec.incoming.as_mut() else {
            return Poll::Ready(None);
        };
        match std::task::ready!(Pin::new(incoming).poll_frame(cx)) {
            None => {
                rec.complete = true;
                rec.incoming = None;
                Poll::Ready(None)
            }
            Some(Err(e)) => {
                rec.failed = true;
                Poll::Ready(Some(Err(e.into())))
            }
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    let len = data.len() as u64;
                    this.count.fetch_add(len, Ordering::Relaxed);
                    if !rec.overflow {
                        rec.len += len;
                        if rec.len > MAX_BUFFERED_BODY {
                            rec.overflow = true;
                            rec.chunks = Vec::new();
                        } else {
                            rec.chunks.push(data.clone());
                            this.pos = rec.chunks.len();
                        }
                    }
                } else if let Some(t) = frame.trailers_ref() {
                    rec.trailers = Some(t.clone());
                    this.trailers_sent = true;
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let rec = lock(&self.rec);
        rec.complete
            && self.pos >= rec.chunks.len()
            && (rec.trailers.is_none() || self.trailers_sent)
    }

    fn size_hint(&self) -> SizeHint {
        let rec = lock(&self.rec);
        if rec.complete && !rec.overflow {
            let sent: u64 = rec.chunks[..self.pos.min(rec.chunks.len())]
                .iter()
                .map(|c| c.len() as u64)
                .sum();
            SizeHint::with_exact(rec.len - sent)
        } else {
            SizeHint::default()
        }
    }
}

impl Drop for TeeBody {
    fn drop(&mut self) {
        lock(&self.rec).active = false;
    }
}
