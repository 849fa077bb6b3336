//! The copy phase of a proxied connection, as a task of its own.
//!
//! A connection is accepted and set up by one task (resolution, policy, the HBONE connect);
//! that task then hands the two streams to [`spawn`] and ends. The new task holds only what
//! copying needs: the copy itself, the connection's record, and its place under the pod's cap.
//! Awaiting the copy at the end of the set-up task instead kept the set-up's arguments and
//! locals in every idle connection's task: an outbound HBONE connection's task was 2,944 bytes
//! (a 3 KiB allocation), its copy task is 1,536 (`-Zprint-type-sizes`, release).

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use mesh::copy::{Abort, CopyError, Transferred};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::Instrument;

use super::{copy_until_closed, CopyEnd, LiveGuard};
use crate::proxy::limits::Slot;
use crate::telemetry::ConnectionRecord;

/// What a copy finishes when it ends: the connection's record, or more than one.
pub trait Finish: Send + 'static {
    /// Records the outcome of [`copy_until_closed`] (`a_to_b`: from the client).
    fn finish(self, result: &Result<Transferred, CopyEnd>);
}

impl Finish for ConnectionRecord {
    fn finish(self, result: &Result<Transferred, CopyEnd>) {
        finish(self, result);
    }
}

/// A connection recorded at both ends by this ztunnel (carried in-process: the source's
/// record, and the destination's half).
impl<D: Finish> Finish for (ConnectionRecord, D) {
    fn finish(self, result: &Result<Transferred, CopyEnd>) {
        finish(self.0, result);
        self.1.finish(result);
    }
}

/// Copies between `a` (the client's side) and `b` until the connection ends (see
/// [`copy_until_closed`]), then finishes `record`; `slot` is released with it. Runs as a new
/// task in the current span.
pub fn spawn<R, A, B>(record: R, a: A, b: B, guard: LiveGuard, slot: Slot)
where
    R: Finish,
    A: AsyncRead + AsyncWrite + Abort + Unpin + Send + 'static,
    B: AsyncRead + AsyncWrite + Abort + Unpin + Send + 'static,
{
    let proxied = Proxied {
        copy: copy_until_closed(a, b, guard),
        record: Some(record),
        _slot: slot,
    };
    tokio::spawn(proxied.instrument(tracing::Span::current()));
}

pin_project_lite::pin_project! {
    /// A copy and the record it finishes: no more state than the two need (an `async` block
    /// would keep a second copy of its captured future while awaiting it).
    pub(crate) struct Proxied<F, R> {
        #[pin]
        pub(crate) copy: F,
        pub(crate) record: Option<R>,
        pub(crate) _slot: Slot,
    }
}

impl<F: Future<Output = Result<Transferred, CopyEnd>>, R: Finish> Future for Proxied<F, R> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        let result = ready!(this.copy.poll(cx));
        if let Some(record) = this.record.take() {
            record.finish(&result);
        }
        Poll::Ready(())
    }
}

/// Finishes `record` with the outcome of [`copy_until_closed`]: bytes, and the reason and
/// flags when ztunnel closed it.
pub fn finish(mut record: ConnectionRecord, result: &Result<Transferred, CopyEnd>) {
    let end = match result {
        Ok(t) => return record.close(t.a_to_b, t.b_to_a, None),
        Err(end) => end,
    };
    let t = match end {
        CopyEnd::Io(CopyError::Io { transferred, .. }) => *transferred,
        CopyEnd::Closed {
            reason,
            transferred,
        } => {
            record.set_flags(reason.flags());
            *transferred
        }
    };
    record.close(t.a_to_b, t.b_to_a, Some(end));
}
