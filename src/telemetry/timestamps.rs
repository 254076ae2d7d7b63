//! Log timestamps: the text tracing-subscriber's `SystemTime` writes (RFC 3339 in
//! UTC, to the microsecond), the date and the whole seconds formatted once a second
//! per thread. Formatting the whole on every line was a quarter of a JSON line's
//! instructions (bench/analysis.md, "Round fourteen"); both formats use it.

use std::fmt;
use std::time::{Duration, UNIX_EPOCH};

use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;

use crate::utc_text;

/// The time as tracing-subscriber's `SystemTime` writes it, the date and the whole
/// seconds formatted once a second per thread.
#[derive(Clone, Copy, Default)]
pub struct Timestamps;

impl Timestamps {
    /// `since_epoch` as [`FormatTime::format_time`] writes it.
    fn write(w: &mut Writer<'_>, since_epoch: Duration) -> fmt::Result {
        utc_text::with_second(since_epoch.as_secs(), |text| w.write_str(text))?;
        write!(w, ".{:06}Z", since_epoch.subsec_micros())
    }
}

impl FormatTime for Timestamps {
    fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
        match std::time::SystemTime::now().duration_since(UNIX_EPOCH) {
            // Past the year 9999 humantime and tracing-subscriber part ways: theirs, then.
            Ok(since) if since.as_secs() < utc_text::END => Self::write(w, since),
            _ => tracing_subscriber::fmt::time::SystemTime.format_time(w),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(since_epoch: Duration) -> String {
        let mut text = String::new();
        Timestamps::write(&mut Writer::new(&mut text), since_epoch).unwrap();
        text
    }

    #[test]
    fn timestamps_are_written_as_tracing_subscribers_system_time_writes_them() {
        assert_eq!(stamp(Duration::ZERO), "1970-01-01T00:00:00.000000Z");
        let t = Duration::new(1_764_638_397, 726_409_999);
        assert_eq!(stamp(t), "2025-12-02T01:19:57.726409Z");
        // The same second again, from this thread's cache, then the next one.
        assert_eq!(stamp(t + Duration::from_micros(1)), "2025-12-02T01:19:57.726410Z");
        assert_eq!(
            stamp(Duration::new(1_764_638_398, 5_000)),
            "2025-12-02T01:19:58.000005Z"
        );
        assert_eq!(
            stamp(Duration::new(951_868_799, 999_999_000)),
            "2000-02-29T23:59:59.999999Z"
        );
        assert_eq!(stamp(Duration::new(253_402_300_799, 0)), "9999-12-31T23:59:59.000000Z");
        // Now, beside the stock clock: the same shape, the same second or the next.
        let (mut mine, mut stock) = (String::new(), String::new());
        Timestamps.format_time(&mut Writer::new(&mut mine)).unwrap();
        tracing_subscriber::fmt::time::SystemTime
            .format_time(&mut Writer::new(&mut stock))
            .unwrap();
        assert_eq!(
            (mine.len(), &mine[19..20], &mine[26..]),
            (stock.len(), ".", "Z"),
            "{mine} {stock}"
        );
        let secs = |t: &str| {
            humantime::parse_rfc3339(t)
                .unwrap()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs()
        };
        assert!(secs(&stock).abs_diff(secs(&mine)) <= 1, "{mine} {stock}");
    }
}
