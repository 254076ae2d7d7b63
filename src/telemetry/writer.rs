//! The log's writer: lines gathered in one buffer, written out by a thread of
//! their own a few times a second, with no wake-up per line.
//!
//! tracing-appender's writer (used before) hands each line to its thread through a
//! channel, and its thread, once it has written what was queued, sleeps on the
//! channel until the next line: at half load, where the core is often idle, that
//! was a wake-up of the log thread, a context switch and a `write` for nearly every
//! line, 5.3 µs of server CPU per admission on the log thread and 1.2 µs more on
//! the threads that logged, waking it (`bench/admission-profile --rate 6300`,
//! bench/analysis.md, "Round fourteen"). Here a line is copied into the buffer
//! under a mutex, and the thread takes the whole buffer every [`PERIOD`] and writes
//! it with one call.
//!
//! Bounded: past [`BUFFERED_BYTES`] waiting to be written (a terminal or pipe that
//! stopped reading), lines are dropped and counted, never queued without end, and
//! the threads that log never wait for the output. A line waits at most about
//! [`PERIOD`] before it is written; what is gathered when the server stops is
//! written when the [`Lines`] guard is dropped. A crash loses the last
//! [`PERIOD`]'s lines.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// How often the thread writes what was gathered.
pub const PERIOD: Duration = Duration::from_millis(25);

/// Bytes gathered at most; a line that would pass it is dropped.
pub const BUFFERED_BYTES: usize = 8 << 20;

struct Shared {
    gathered: Mutex<Vec<u8>>,
    dropped: AtomicU64,
    stopping: Mutex<bool>,
    stop: Condvar,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding it left bytes, not broken state: keep going.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Where the formatted lines go ([`MakeWriter`]); cheap to clone.
#[derive(Clone)]
pub struct LineSink {
    shared: Arc<Shared>,
    limit: usize,
}

impl LineSink {
    /// Lines dropped so far because [`BUFFERED_BYTES`] were waiting.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }
}

impl Write for LineSink {
    /// Takes all of `line` or none of it (tracing-subscriber writes a line at once).
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        let mut gathered = lock(&self.shared.gathered);
        if gathered.len() + line.len() > self.limit {
            drop(gathered);
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
        } else {
            gathered.extend_from_slice(line);
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LineSink {
    type Writer = LineSink;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// The writing thread; dropping it writes what is still gathered and ends it.
#[must_use = "lines stop being written once this is dropped"]
pub struct Lines {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Lines {
    fn drop(&mut self) {
        *lock(&self.shared.stopping) = true;
        self.shared.stop.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Starts the thread named `name` that writes to `out` every `period`, lines
/// gathered up to `limit` bytes.
pub fn start<W: Write + Send + 'static>(
    name: &str,
    out: W,
    period: Duration,
    limit: usize,
) -> io::Result<(LineSink, Lines)> {
    let shared = Arc::new(Shared {
        gathered: Mutex::new(Vec::new()),
        dropped: AtomicU64::new(0),
        stopping: Mutex::new(false),
        stop: Condvar::new(),
    });
    let theirs = Arc::clone(&shared);
    let thread = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || write_out(&theirs, out, period))?;
    let sink = LineSink {
        shared: Arc::clone(&shared),
        limit,
    };
    Ok((
        sink,
        Lines {
            shared,
            thread: Some(thread),
        },
    ))
}

fn write_out<W: Write>(shared: &Shared, mut out: W, period: Duration) {
    // Two buffers: the loggers fill one while this thread writes the other.
    let mut spare = Vec::new();
    loop {
        let stopping = {
            let stopping = lock(&shared.stopping);
            let (stopping, _) = shared
                .stop
                .wait_timeout_while(stopping, period, |stopping| !*stopping)
                .unwrap_or_else(PoisonError::into_inner);
            *stopping
        };
        std::mem::swap(&mut *lock(&shared.gathered), &mut spare);
        if !spare.is_empty() {
            // Nowhere to report a failed write but the log itself: the lines are lost.
            let _ = out.write_all(&spare).and_then(|()| out.flush());
            spare.clear();
            // A burst's buffer is not kept for ever.
            spare.shrink_to(1 << 20);
        }
        if stopping {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    #[derive(Clone, Default)]
    struct Output(Arc<Mutex<Vec<Vec<u8>>>>);

    impl Write for Output {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            lock(&self.0).push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Output {
        fn text(&self) -> String {
            String::from_utf8(lock(&self.0).concat()).unwrap()
        }
        fn writes(&self) -> usize {
            lock(&self.0).len()
        }
    }

    #[test]
    fn many_lines_go_out_in_few_writes_and_what_is_left_when_it_stops() {
        let out = Output::default();
        let (sink, lines) = start("test-log", out.clone(), Duration::from_secs(3600), 1 << 20).unwrap();
        for i in 0..1000 {
            writeln!(sink.make_writer(), "line {i}").unwrap();
        }
        assert_eq!(
            out.writes(),
            0,
            "nothing is written before the period, one write per line least of all"
        );
        drop(lines);
        let text = out.text();
        assert_eq!(text.lines().count(), 1000);
        assert!(text.starts_with("line 0\nline 1\n") && text.ends_with("line 999\n"));
        assert_eq!(out.writes(), 1, "what was gathered is written at once");
        assert_eq!(sink.dropped(), 0);
    }

    #[test]
    fn lines_are_written_every_period_without_anyone_waking_the_thread() {
        let out = Output::default();
        let (sink, lines) = start("test-log", out.clone(), Duration::from_millis(10), 1 << 20).unwrap();
        writeln!(sink.make_writer(), "first").unwrap();
        let start = Instant::now();
        while out.text().is_empty() && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(out.text(), "first\n");
        drop(lines);
    }

    #[test]
    fn past_the_limit_whole_lines_are_dropped_and_counted() {
        let out = Output::default();
        let (sink, lines) = start("test-log", out.clone(), Duration::from_secs(3600), 100).unwrap();
        let line = "0123456789012345678\n"; // 20 bytes
        for _ in 0..8 {
            sink.make_writer().write_all(line.as_bytes()).unwrap();
        }
        assert_eq!(sink.dropped(), 3, "5 lines fit in 100 bytes");
        drop(lines);
        assert_eq!(out.text(), line.repeat(5));
    }
}
