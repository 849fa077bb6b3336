//! Body wrappers: count bytes as they stream through, and report when a response ends.
//!
//! Bodies are never buffered: frames pass through as they come, trailers included (gRPC's
//! `grpc-status` lives there).

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

use crate::upstream::BoxError;

/// Passes a body through, adding the length of each data frame to a shared counter.
#[derive(Debug)]
pub struct CountingBody<B> {
    inner: B,
    count: Arc<AtomicU64>,
}

impl<B> CountingBody<B> {
    /// Counts `inner`'s data bytes into `count`.
    pub fn new(inner: B, count: Arc<AtomicU64>) -> Self {
        CountingBody { inner, count }
    }
}

impl<B> Body for CountingBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let frame = std::task::ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if let Some(Ok(f)) = &frame {
            if let Some(d) = f.data_ref() {
                self.count.fetch_add(d.len() as u64, Ordering::Relaxed);
            }
        }
        Poll::Ready(frame.map(|r| r.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// How a response body ended.
#[derive(Debug, Clone, Default)]
pub struct BodyEnd {
    /// Data bytes sent.
    pub bytes: u64,
    /// `grpc-status` from the trailers, if any.
    pub grpc_status: Option<String>,
    /// Whether the body reached its end (false: the client went away, or the upstream failed
    /// mid-body).
    pub complete: bool,
    /// The error that cut it short, if one did.
    pub error: Option<String>,
}

/// Called once when a response body ends or is dropped.
pub type OnEnd = Box<dyn FnOnce(BodyEnd) + Send + Sync>;

/// A response body that reports its end once: bytes, trailers' gRPC status, completeness.
pub struct ReportingBody<B> {
    inner: B,
    end: BodyEnd,
    on_end: Option<OnEnd>,
    /// The body was empty from the start: hyper may drop it without polling.
    empty: bool,
}

impl<B> std::fmt::Debug for ReportingBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReportingBody")
            .field("end", &self.end)
            .finish_non_exhaustive()
    }
}

impl<B: Body> ReportingBody<B> {
    /// Reports through `on_end` when `inner` ends or this body is dropped.
    pub fn new(inner: B, on_end: OnEnd) -> Self {
        ReportingBody {
            empty: inner.is_end_stream(),
            inner,
            end: BodyEnd::default(),
            on_end: Some(on_end),
        }
    }

    fn finish(&mut self, complete: bool) {
        if let Some(f) = self.on_end.take() {
            let mut end = std::mem::take(&mut self.end);
            end.complete = complete;
            f(end);
        }
    }
}

impl<B> Body for ReportingBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let frame = std::task::ready!(Pin::new(&mut self.inner).poll_frame(cx));
        match &frame {
            None => self.finish(true),
            Some(Ok(f)) => {
                if let Some(d) = f.data_ref() {
                    self.end.bytes += d.len() as u64;
                } else if let Some(t) = f.trailers_ref() {
                    if let Some(s) = t.get("grpc-status").and_then(|v| v.to_str().ok()) {
                        self.end.grpc_status = Some(s.to_string());
                    }
                }
                if self.inner.is_end_stream() {
                    self.finish(true);
                }
            }
            Some(Err(_)) => {}
        }
        Poll::Ready(frame.map(|r| {
            r.map_err(|e| {
                let e: BoxError = e.into();
                self.end.error = Some(e.to_string());
                self.finish(false);
                e
            })
        }))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for ReportingBody<B> {
    fn drop(&mut self) {
        if let Some(f) = self.on_end.take() {
            let mut end = std::mem::take(&mut self.end);
            end.complete = self.empty;
            f(end);
        }
    }
}
