//! The daemons' log writer: lines go into a shared buffer and a thread of their own writes them
//! out in batches, so a slow or blocked log sink never stalls the thread that logged.
//!
//! The thread writes at most once per [`FLUSH_DELAY`]: a line logged after a quiet spell is
//! written at once, and the lines that follow a write wait for the rest of the delay and go
//! out together in one `write`. A ztunnel logs a line per connection; at thousands of
//! connections a second a per-line hand-off (a channel, as `tracing-appender` has) wakes the
//! writer thread for nearly every line and makes the data-plane threads pay for the wake-ups.
//! Past [`BUFFER_BYTES`] lines are dropped, never waited for, and the writer says how many it
//! dropped.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The shortest time between two writes while lines keep coming: a line is on the sink at
/// most this long after it was logged (plus the sink's own time), at once after a quiet spell.
pub const FLUSH_DELAY: Duration = Duration::from_millis(10);

/// Bytes of lines held while the sink catches up; lines that do not fit are dropped. 1 MiB is
/// several thousand lines, a burst of denied connections; the buffer only grows that large
/// when the sink stalls, and shrinks back after.
pub const BUFFER_BYTES: usize = 1024 * 1024;

/// Bytes gathered that cut [`FLUSH_DELAY`] short: a flood goes out in writes of about this
/// size rather than growing the buffer for the whole delay.
pub const EARLY_WRITE_BYTES: usize = 64 * 1024;

/// Capacity a buffer keeps between batches; one grown larger by a burst is shrunk back to it.
const KEPT_CAPACITY: usize = 16 * 1024;

/// The state the loggers and the writer thread share.
#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

#[derive(Debug, Default)]
struct State {
    /// Lines not yet handed to the writer thread.
    lines: Vec<u8>,
    /// Lines dropped because `lines` was full, since the last report.
    dropped: u64,
    /// The writer thread waits for `wake` and wants a notification.
    waiting: bool,
    /// The guard was dropped: write what is left and stop.
    closing: bool,
}

/// A handle that appends log lines: `tracing_subscriber::fmt` takes an [`EventWriter`] from it
/// for each event.
#[derive(Debug, Clone)]
pub struct BatchWriter {
    shared: Arc<Shared>,
}

/// Stops the writer thread when dropped, after it has written every line logged before.
#[derive(Debug)]
pub struct WriterGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// Starts the writer thread over `sink`; keep the guard until the lines must be out.
pub fn batch_writer<W: Write + Send + 'static>(
    sink: W,
) -> std::io::Result<(BatchWriter, WriterGuard)> {
    let shared = Arc::new(Shared::default());
    let thread = std::thread::Builder::new()
        .name("log-writer".into())
        .spawn({
            let shared = shared.clone();
            move || write_batches(&shared, sink)
        })?;
    Ok((
        BatchWriter {
            shared: shared.clone(),
        },
        WriterGuard {
            shared,
            thread: Some(thread),
        },
    ))
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A logger that panicked mid-append leaves at worst a torn line; keep logging.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends `line` (one formatted event) whole, or drops it whole when the buffer is full.
    fn append(&self, line: &[u8]) {
        let mut state = self.lock();
        if state.lines.len() + line.len() > BUFFER_BYTES {
            state.dropped += 1;
            return;
        }
        let was_empty = state.lines.is_empty();
        state.lines.extend_from_slice(line);
        let notify = state.waiting && (was_empty || state.lines.len() >= EARLY_WRITE_BYTES);
        if notify {
            state.waiting = false;
        }
        drop(state);
        if notify {
            self.wake.notify_one();
        }
    }
}

/// What one event is written to: the shared buffer, borrowed (no reference count per event).
#[derive(Debug)]
pub struct EventWriter<'a> {
    shared: &'a Shared,
}

impl Write for EventWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.shared.append(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for BatchWriter {
    type Writer = EventWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        EventWriter {
            shared: &self.shared,
        }
    }
}

impl Drop for WriterGuard {
    fn drop(&mut self) {
        self.shared.lock().closing = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The writer thread: one write per batch of lines, until the guard is dropped and every line
/// is out. A sink that fails loses that batch only (there is nowhere left to report it).
fn write_batches<W: Write>(shared: &Shared, mut sink: W) {
    let mut batch = Vec::with_capacity(KEPT_CAPACITY);
    let mut last_write: Option<Instant> = None;
    loop {
        let mut state = shared.lock();
        while state.lines.is_empty() && state.dropped == 0 && !state.closing {
            state.waiting = true;
            state = shared.wake.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        let due = last_write.map(|at| at + FLUSH_DELAY);
        if let Some(wait) = due.and_then(|due| due.checked_duration_since(Instant::now())) {
            if !state.closing && state.lines.len() < EARLY_WRITE_BYTES {
                // Written a moment ago: gather until the delay is over; a flood or the guard
                // cuts it short.
                state.waiting = true;
                state = shared
                    .wake
                    .wait_timeout(state, wait)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
                state.waiting = false;
            }
        }
        std::mem::swap(&mut batch, &mut state.lines);
        let dropped = std::mem::take(&mut state.dropped);
        let closing = state.closing;
        drop(state);
        if dropped > 0 {
            batch.extend_from_slice(
                format!("log writer: {dropped} lines dropped, the log sink is too slow\n")
                    .as_bytes(),
            );
        }
        if !batch.is_empty() {
            let _ = sink.write_all(&batch).and_then(|()| sink.flush());
            last_write = Some(Instant::now());
        }
        batch.clear();
        batch.shrink_to(KEPT_CAPACITY);
        if closing && shared.lock().lines.is_empty() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Instant;
    use tracing_subscriber::fmt::MakeWriter as _;

    /// Every write a [`Sink`] received.
    type Writes = Arc<Mutex<Vec<Vec<u8>>>>;

    /// A sink that records each write; its first write waits for `gate` when there is one.
    struct Sink {
        writes: Writes,
        gate: Option<mpsc::Receiver<()>>,
    }

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if let Some(gate) = self.gate.take() {
                let _ = gate.recv();
            }
            self.writes.lock().expect("writes").push(buf.to_vec());
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn sink(gate: Option<mpsc::Receiver<()>>) -> (Sink, Writes) {
        let writes = Arc::new(Mutex::new(Vec::new()));
        let sink = Sink {
            writes: writes.clone(),
            gate,
        };
        (sink, writes)
    }

    fn written(writes: &Mutex<Vec<Vec<u8>>>) -> String {
        String::from_utf8(writes.lock().expect("writes").concat()).expect("utf-8")
    }

    /// A writer whose sink is stalled in its first write (of `first\n`) until the returned
    /// sender is used; what it wrote, once the guard is dropped, is in the returned list.
    fn stalled_writer() -> (BatchWriter, WriterGuard, mpsc::Sender<()>, Writes) {
        let (open, gate) = mpsc::channel();
        let (sink, writes) = sink(Some(gate));
        let (writer, guard) = batch_writer(sink).expect("thread");
        writer.make_writer().write_all(b"first\n").expect("queued");
        while !writer.shared.lock().lines.is_empty() {
            std::thread::sleep(Duration::from_millis(1));
        }
        (writer, guard, open, writes)
    }

    #[test]
    fn lines_logged_while_the_sink_is_busy_go_out_in_order_in_one_write() {
        let (writer, guard, open, writes) = stalled_writer();
        let mut expected = String::from("first\n");
        for i in 0..100 {
            let line = format!("line {i}\n");
            expected.push_str(&line);
            writer
                .make_writer()
                .write_all(line.as_bytes())
                .expect("queued");
        }
        open.send(()).expect("gate");
        drop(guard);
        assert_eq!(written(&writes), expected);
        let count = writes.lock().expect("writes").len();
        assert_eq!(count, 2, "the first line, then the 100 queued behind it");
    }

    #[test]
    fn a_lone_line_is_written_without_waiting_for_more_or_for_the_guard() {
        let (sink, writes) = sink(None);
        let (writer, _guard) = batch_writer(sink).expect("thread");
        writer.make_writer().write_all(b"alone\n").expect("queued");
        let deadline = Instant::now() + Duration::from_secs(10);
        while written(&writes).is_empty() {
            assert!(Instant::now() < deadline, "the line never reached the sink");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(written(&writes), "alone\n");
    }

    #[test]
    fn a_stalled_sink_drops_lines_past_the_buffer_and_says_how_many() {
        let (writer, guard, open, writes) = stalled_writer();
        let line = [b'x'; 1023];
        let fits = BUFFER_BYTES / 1024;
        for _ in 0..fits + 10 {
            // Never blocks, however stalled the sink.
            writer.make_writer().write_all(&line).expect("queued");
            writer.make_writer().write_all(b"\n").expect("queued");
        }
        open.send(()).expect("gate");
        drop(guard);
        let out = written(&writes);
        assert!(out.starts_with("first\n"), "{}", &out[..20]);
        assert_eq!(out.matches(&*String::from_utf8_lossy(&line)).count(), fits);
        assert!(
            out.ends_with("log writer: 20 lines dropped, the log sink is too slow\n"),
            "{}",
            &out[out.len() - 80..]
        );
    }
}
