//! Where `mailwit serve`'s log lines go: gathered in memory and written to
//! stderr together, within [`FLUSH_AFTER`] of the first one waiting, by a
//! thread of their own.
//!
//! Every accepted message logs two lines (`smtp.queued`, `delivery`). With
//! stderr as the writer each was a `write` on a worker thread (2.24 per
//! message at 64 sessions; with this writer 0.26, the spool's and the
//! status store's). Here a line only takes a lock and a copy; one `write`
//! carries a few hundred of them under load. In `bench/ab.sh` at 64
//! sessions with the connection reused (stderr to a file, 10 rounds) this
//! writer won 9 pairs of 10, by a median 5% per pair (median runs 8,614
//! → 9,589 msg/s, server CPU 150 → 132 µs per message); with a new STARTTLS connection per message
//! (6 rounds) no difference showed. Warnings and errors are written at
//! once, after what waits before them, so the order is kept and they are
//! never held back; at exit and before a panic's message what waits is
//! written too.
//!
//! Hand-written rather than `tracing-appender`'s non-blocking writer: that
//! hands each line to its thread over a channel, a wake-up per line when
//! the thread keeps up; here the thread is woken once per batch.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

/// How long the first line of a batch may wait.
pub const FLUSH_AFTER: Duration = Duration::from_millis(10);

/// Bytes that may wait at most; a line past them writes the batch at once.
const MAX_PENDING: usize = 256 * 1024;

/// The writer, as `tracing_subscriber::fmt().with_writer` takes it.
#[derive(Clone)]
pub struct Batched(Arc<Shared>);

struct Shared {
    inner: Mutex<Inner>,
    /// Signalled when a batch starts.
    started: Condvar,
}

struct Inner {
    pending: Vec<u8>,
    out: Box<dyn Write + Send>,
}

impl Inner {
    fn write_out(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        // As the stderr writer it replaces: a log that cannot be written
        // is not a reason to stop.
        let _ = self.out.write_all(&self.pending);
        let _ = self.out.flush();
        self.pending.clear();
    }
}

impl Batched {
    /// Writes to `out`, from a thread started here.
    pub fn start(out: impl Write + Send + 'static) -> std::io::Result<Batched> {
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                pending: Vec::new(),
                out: Box::new(out),
            }),
            started: Condvar::new(),
        });
        let writer = shared.clone();
        mailwit::sched::spawn("log-writer", move || {
            loop {
                let mut inner = writer.lock();
                while inner.pending.is_empty() {
                    inner = writer
                        .started
                        .wait(inner)
                        .unwrap_or_else(|p| p.into_inner());
                }
                drop(inner);
                std::thread::sleep(FLUSH_AFTER);
                writer.lock().write_out();
            }
        })?;
        Ok(Batched(shared))
    }

    /// Writes what waits now (at exit).
    pub fn flush(&self) {
        self.0.lock().write_out();
    }

    /// Writes what waits unless the lock is held (from a panic hook: the
    /// panic may have come while it was).
    pub fn try_flush(&self) {
        if let Ok(mut inner) = self.0.inner.try_lock() {
            inner.write_out();
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn append(&self, line: &[u8], urgent: bool) {
        let mut inner = self.lock();
        let first = inner.pending.is_empty();
        inner.pending.extend_from_slice(line);
        if urgent || inner.pending.len() >= MAX_PENDING {
            return inner.write_out();
        }
        drop(inner);
        if first {
            self.started.notify_one();
        }
    }
}

/// One event's writer: tracing's formatter writes the whole line at once.
pub struct Line<'a> {
    shared: &'a Shared,
    urgent: bool,
}

impl Write for Line<'_> {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        self.shared.append(line, self.urgent);
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Batched {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Line<'a> {
        Line {
            shared: &self.0,
            urgent: false,
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Line<'a> {
        Line {
            shared: &self.0,
            urgent: *meta.level() <= Level::WARN,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What was written, shared with the test.
    #[derive(Clone, Default)]
    struct Out(Arc<Mutex<Vec<u8>>>);

    impl Write for Out {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Out {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    fn line(b: &Batched, urgent: bool, text: &str) {
        let mut w = Line {
            shared: &b.0,
            urgent,
        };
        w.write_all(text.as_bytes()).unwrap();
    }

    /// An urgent line (a warning) is written at once, after every line
    /// waiting before it; `flush` writes what waits; the thread writes the
    /// rest by itself.
    #[test]
    fn lines_keep_their_order_and_all_are_written() {
        let out = Out::default();
        let b = Batched::start(out.clone()).unwrap();
        line(&b, false, "a\n");
        line(&b, false, "b\n");
        line(&b, true, "warn\n");
        assert_eq!(out.text(), "a\nb\nwarn\n");
        line(&b, false, "c\n");
        b.flush();
        assert_eq!(out.text(), "a\nb\nwarn\nc\n");
        line(&b, false, "d\n");
        for _ in 0..500 {
            if out.text().ends_with("d\n") {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(out.text(), "a\nb\nwarn\nc\nd\n");
    }

    /// Past `MAX_PENDING` bytes a batch is written by the line that fills it.
    #[test]
    fn a_full_batch_is_written_at_once() {
        let out = Out::default();
        let b = Batched::start(out.clone()).unwrap();
        let long = "x".repeat(MAX_PENDING);
        line(&b, false, &long);
        assert_eq!(out.text().len(), MAX_PENDING);
    }
}
