//! JSON log lines written straight into the line's buffer.
//!
//! At `info` every granted and every ended session is a line, formatted on the
//! thread that logs it (the request worker, the sweep); only the writing is the
//! log thread's. tracing-subscriber's JSON format serializes through serde_json
//! into an adaptor that checks each small piece as UTF-8 and copies it again:
//! profiled at half load on this machine (`bench/admission-profile --rate`), the
//! two lines of a session cost the request worker and the sweep 9.3 µs of a
//! 101 µs admission. [`JsonLines`] writes the same bytes directly
//! (`benches/logs.rs` times both; a test holds them equal, byte for byte).
//!
//! Only events outside any span are written here: an event inside an enabled
//! span (a request's span, at `debug`) carries the span's fields too, and those
//! lines are left to tracing-subscriber's own format, which this one matches.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::fmt::format::{Format, FormatEvent, FormatFields, Json, Writer};
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::registry::LookupSpan;

/// An event as `{"timestamp":…,"level":…,"fields":{…}}`, the keys and the
/// values as tracing-subscriber's JSON format (without the target) writes them.
pub struct JsonLines<T> {
    timer: T,
    /// For events inside a span.
    spanned: Format<Json, T>,
}

impl<T: FormatTime + Clone> JsonLines<T> {
    pub fn new(timer: T) -> Self {
        let spanned = tracing_subscriber::fmt::format()
            .json()
            .with_target(false)
            .with_timer(timer.clone());
        Self { timer, spanned }
    }
}

impl<S, N, T> FormatEvent<S, N> for JsonLines<T>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    T: FormatTime,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        // The span the stock format would name (an explicit parent, else the current one).
        let in_span = event.parent().and_then(|id| ctx.span(id)).is_some() || ctx.lookup_current().is_some();
        if in_span {
            return self.spanned.format_event(ctx, writer, event);
        }
        writer.write_str("{\"timestamp\":\"")?;
        // The timer writes digits, letters and punctuation: nothing to escape.
        self.timer.format_time(&mut writer)?;
        writer.write_str("\",\"level\":\"")?;
        writer.write_str(level_name(*event.metadata().level()))?;
        writer.write_str("\",\"fields\":{")?;
        let mut fields = Fields {
            out: &mut writer,
            first: true,
            result: Ok(()),
        };
        event.record(&mut fields);
        fields.result?;
        writer.write_str("}}\n")
    }
}

fn level_name(level: Level) -> &'static str {
    match level {
        Level::ERROR => "ERROR",
        Level::WARN => "WARN",
        Level::INFO => "INFO",
        Level::DEBUG => "DEBUG",
        Level::TRACE => "TRACE",
    }
}

/// An event's fields as JSON members, each value as tracing-serde records it:
/// numbers and booleans bare, text and everything else (`Debug`) as a string.
struct Fields<'a, 'w> {
    out: &'a mut Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl Fields<'_, '_> {
    fn member(&mut self, field: &Field, value: impl FnOnce(&mut Writer<'_>) -> fmt::Result) {
        if self.result.is_err() {
            return;
        }
        let out = &mut *self.out;
        self.result = (|| {
            if !self.first {
                out.write_char(',')?;
            }
            quoted(out, field.name())?;
            out.write_char(':')?;
            value(out)
        })();
        self.first = false;
    }
}

impl Visit for Fields<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.member(field, |out| quoted(out, value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.member(field, |out| out.write_str(if value { "true" } else { "false" }));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.member(field, |out| write!(out, "{value}"));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.member(field, |out| write!(out, "{value}"));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        // serde_json's rendering (shortest round trip; not finite: null), rare in our logs.
        self.member(field, |out| {
            out.write_str(&serde_json::to_string(&value).unwrap_or_else(|_| "null".into()))
        });
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.member(field, |out| {
            out.write_char('"')?;
            write!(Escaped(out), "{value:?}")?;
            out.write_char('"')
        });
    }
}

/// `text` as a JSON string.
fn quoted(out: &mut Writer<'_>, text: &str) -> fmt::Result {
    out.write_char('"')?;
    Escaped(out).write_str(text)?;
    out.write_char('"')
}

/// Writes what it is given escaped as serde_json escapes a string's contents:
/// `"`, `\` and the control characters below U+0020 (the usual ones by their
/// short forms, the rest as `\u00XX`); everything else as it is.
struct Escaped<'a, 'w>(&'a mut Writer<'w>);

impl fmt::Write for Escaped<'_, '_> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        let bytes = text.as_bytes();
        let mut start = 0;
        for (i, &byte) in bytes.iter().enumerate() {
            let escape: &str = match byte {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0x08 => "\\b",
                0x0c => "\\f",
                0..=0x1f => "",
                _ => continue,
            };
            // Escapes sit on ASCII bytes, so both slices end on character boundaries.
            self.0.write_str(&text[start..i])?;
            if escape.is_empty() {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                self.0.write_str("\\u00")?;
                self.0.write_char(char::from(HEX[usize::from(byte >> 4)]))?;
                self.0.write_char(char::from(HEX[usize::from(byte & 0xf)]))?;
            } else {
                self.0.write_str(escape)?;
            }
            start = i + 1;
        }
        self.0.write_str(&text[start..])
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    /// A clock that always says the same, so two formats' lines can be compared.
    #[derive(Clone)]
    struct Fixed;

    impl FormatTime for Fixed {
        fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
            w.write_str("2026-12-02T01:13:17.726409Z")
        }
    }

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    /// Every event this module writes, of every kind of value it meets.
    fn events() {
        let tricky =
            "quote \" backslash \\ newline \n tab \t cr \r bs \u{8} ff \u{c} nul \u{0} us \u{1f} del \u{7f} é ✓ 🎬";
        tracing::info!(event = "session_granted", publisher = %"pub", customer = "c-1", offer = %"*unknown", session = %"e518633c-0ff4-495d-b169-f67b103bce86", "session granted");
        tracing::warn!(error = %tricky, "the log writer runs at normal priority: {}", tricky);
        tracing::error!(
            count = 3u64,
            delta = -7i64,
            ok = true,
            off = false,
            ratio = 0.25f64,
            big = 1e300f64,
            nan = f64::NAN,
            inf = f64::INFINITY,
            "numbers"
        );
        tracing::debug!(wide = 170141183460469231731687303715884105727i128, list = ?vec!["a\"b", "c"], "debug values");
        tracing::info!(message = "an explicit message field", r#type = "raw identifier");
        tracing::info!("");
        tracing::trace!(name = tricky);
        tracing::info!(n = 1, "a message with arguments {}", 2);
    }

    fn lines(mine: bool, spans: bool) -> String {
        let out = Captured::default();
        let builder = tracing_subscriber::fmt()
            .with_max_level(Level::TRACE)
            .with_target(false)
            .with_writer(out.clone())
            .json()
            .with_timer(Fixed);
        let run = || {
            if spans {
                let span = tracing::info_span!("request", method = %"POST", path = "/sessions");
                let _entered = span.enter();
                events();
            } else {
                events();
            }
        };
        if mine {
            tracing::subscriber::with_default(builder.event_format(JsonLines::new(Fixed)).finish(), run);
        } else {
            tracing::subscriber::with_default(builder.finish(), run);
        }
        out.text()
    }

    #[test]
    fn lines_are_byte_for_byte_what_tracing_subscribers_json_format_writes() {
        let (mine, stock) = (lines(true, false), lines(false, false));
        assert_eq!(mine.lines().count(), 8, "{mine}");
        for (m, s) in mine.lines().zip(stock.lines()) {
            assert_eq!(m, s);
            serde_json::from_str::<serde_json::Value>(m).expect("each line is JSON");
        }
        assert_eq!(mine, stock);
    }

    #[test]
    fn events_inside_a_span_are_written_by_the_stock_format_with_the_span() {
        let (mine, stock) = (lines(true, true), lines(false, true));
        assert!(mine.contains("\"span\":{"), "{mine}");
        assert_eq!(mine, stock);
    }
}
