//! What a session's log lines cost the thread that logs them, in JSON (`log.format =
//! "json"`): drisc's [`JsonLines`] beside tracing-subscriber's own JSON format, the
//! reference it is held to; and in text (`log.format = "text"`): tracing-subscriber's
//! format with drisc's [`Timestamps`] beside the same with its own clock. Each line goes through the whole subscriber (the level
//! filter, the format, the line's buffer) to a writer that drops it, as a line goes to
//! the log thread's queue in the server; what that thread then costs is not in it.
//! The two lines are the server's own: a session granted and a session ended, with the
//! ids `drisc-load` sends.
//!
//! `cargo bench --bench logs -- --bench [ITERATIONS] [ROUNDS]` (defaults 200,000 and 5)
//! times both formats over ITERATIONS lines per round, interleaved round by round, and
//! prints the median and range of ns per line.
//!
//! Run by `cargo test --all-targets` without `--bench`: one small round, so the harness
//! keeps compiling and working; it checks that both formats wrote the same bytes and
//! times nothing.

use std::hint::black_box;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use drisc::telemetry::json::JsonLines;
use drisc::telemetry::timestamps::Timestamps;
use tracing::Dispatch;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};

mod support;

/// Keeps the last line it was given (to compare the formats) and drops the rest.
#[derive(Clone, Default)]
struct LastLine(Arc<Mutex<Vec<u8>>>);

impl io::Write for LastLine {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Ok(mut last) = self.0.lock() {
            last.clear();
            last.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LastLine {
    type Writer = LastLine;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// The clock of both formats when their bytes are compared (not when timed).
#[derive(Clone)]
struct Fixed;

impl FormatTime for Fixed {
    fn format_time(&self, w: &mut Writer<'_>) -> std::fmt::Result {
        w.write_str("2026-12-02T01:13:17.726409Z")
    }
}

fn dispatch<T: FormatTime + Clone + Send + Sync + 'static>(mine: bool, timer: T, out: LastLine) -> Dispatch {
    let builder = tracing_subscriber::fmt()
        .with_target(false)
        .with_writer(out)
        .json()
        .with_timer(timer.clone());
    if mine {
        Dispatch::new(builder.event_format(JsonLines::new(timer)).finish())
    } else {
        Dispatch::new(builder.finish())
    }
}

/// tracing-subscriber's text format (no colours) with `timer`.
fn text<T: FormatTime + Send + Sync + 'static>(timer: T) -> Dispatch {
    Dispatch::new(
        tracing_subscriber::fmt()
            .with_target(false)
            .with_ansi(false)
            .with_writer(LastLine::default())
            .with_timer(timer)
            .finish(),
    )
}

/// The two lines of a session, as `domain::control` and `meter` log them.
fn session_lines(i: usize) {
    let customer = black_box("load-c899e386-421337");
    let session = black_box("e518633c-0ff4-495d-b169-f67b103bce86");
    if i % 2 == 0 {
        tracing::info!(
            event = "session_granted",
            publisher = %"load-c899e386",
            customer = %customer,
            offer = %"*unknown",
            session = %session,
            "session granted"
        );
    } else {
        tracing::info!(
            event = "session_ended",
            cause = "connect_timeout",
            publisher = %"load-c899e386",
            customer = %customer,
            offer = %"*unknown",
            session = %session,
            "session ended"
        );
    }
}

/// ns per line of `n` lines through `dispatch`.
fn time(dispatch: &Dispatch, n: usize) -> f64 {
    tracing::dispatcher::with_default(dispatch, || {
        let start = Instant::now();
        for i in 0..n {
            session_lines(i);
        }
        start.elapsed().as_nanos() as f64 / n as f64
    })
}

fn main() {
    let run = support::Run::from_args(200_000, 5);
    let (iterations, rounds) = (run.iterations, run.rounds);

    for i in 0..2 {
        let (mine, stock) = (LastLine::default(), LastLine::default());
        tracing::dispatcher::with_default(&dispatch(true, Fixed, mine.clone()), || session_lines(i));
        tracing::dispatcher::with_default(&dispatch(false, Fixed, stock.clone()), || session_lines(i));
        let mine = mine.0.lock().map(|l| l.clone()).unwrap_or_default();
        assert!(!mine.is_empty(), "no line was written");
        assert_eq!(
            String::from_utf8_lossy(&mine),
            String::from_utf8_lossy(&stock.0.lock().map(|l| l.clone()).unwrap_or_default()),
            "the two formats wrote different lines"
        );
    }

    let sides = [
        ("drisc's JsonLines", dispatch(true, Timestamps, LastLine::default())),
        (
            "tracing-subscriber's JSON format",
            dispatch(false, SystemTime, LastLine::default()),
        ),
        ("text, drisc's Timestamps", text(Timestamps)),
        ("text, tracing-subscriber's clock", text(SystemTime)),
    ];
    let mut samples = vec![Vec::new(); sides.len()];
    for _ in 0..rounds {
        for (n, (_, d)) in sides.iter().enumerate() {
            samples[n].push(time(d, iterations));
        }
    }
    if run.timed {
        let names: Vec<&str> = sides.iter().map(|(name, _)| *name).collect();
        let medians = run.print("ns per session log line", &names, samples);
        println!("  JSON, drisc's / the stock format's: {:.2}", medians[0] / medians[1]);
        println!(
            "  text, drisc's clock / the stock clock: {:.2}",
            medians[2] / medians[3]
        );
    }
}
