//! RFC 3339 times in UTC, as humantime writes them, with the date and the whole
//! seconds formatted once a second per thread: a log line and a webhook's body
//! carry the time, and formatting all of it through `fmt` every time was a
//! quarter of a JSON log line's instructions (bench/analysis.md, "Round
//! fourteen") and a fifth of a webhook body's ("Round twenty-two").
//!
//! A leaf: it imports nothing of ours.

use std::cell::RefCell;
use std::time::{Duration, UNIX_EPOCH};

/// The first second humantime does not write (the year 10000).
pub const END: u64 = 253_402_300_800;

thread_local! {
    /// The whole second last written on this thread, and its text up to the seconds.
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

/// Calls `f` with `YYYY-MM-DDTHH:MM:SS` for `secs` since the epoch (no fraction,
/// no `Z`), or with nothing from [`END`] on.
pub fn with_second<R>(secs: u64, f: impl FnOnce(&str) -> R) -> R {
    if secs >= END {
        return f("");
    }
    SECOND.with_borrow_mut(|(at, text)| {
        if *at != secs {
            use std::fmt::Write as _;
            text.clear();
            // Within humantime's range, so it writes without error:
            // "YYYY-MM-DDTHH:MM:SSZ", and the fraction goes before the Z.
            let _ = write!(
                text,
                "{}",
                humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs))
            );
            text.pop();
            *at = secs;
        }
        f(text)
    })
}

/// `since_epoch` with milliseconds, `YYYY-MM-DDTHH:MM:SS.mmmZ`, as humantime's
/// `format_rfc3339_millis` writes it: nothing from [`END`] on, where humantime
/// answers an error.
pub fn push_millis(out: &mut String, since_epoch: Duration) {
    let secs = since_epoch.as_secs();
    if secs >= END {
        return;
    }
    with_second(secs, |text| out.push_str(text));
    let ms = since_epoch.subsec_millis();
    // Three digits, by hand: `write!` with a width costs more than the rest.
    let digits = [b'.', digit(ms / 100), digit(ms / 10 % 10), digit(ms % 10), b'Z'];
    out.push_str(std::str::from_utf8(&digits).unwrap_or(".000Z"));
}

fn digit(n: u32) -> u8 {
    // n < 10 by construction; `min` keeps a mistake an odd digit, not a bad byte.
    b'0' + n.min(9) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    fn millis(ms: u64) -> String {
        let mut out = String::new();
        push_millis(&mut out, Duration::from_millis(ms));
        out
    }

    #[test]
    fn times_are_written_as_humantime_writes_them_from_1970_to_9999_and_past_it() {
        for ms in [
            0,
            1,
            999,
            1_000,
            951_868_799_999,   // 2000-02-29T23:59:59.999
            951_868_800_000,   // 2000-03-01
            1_764_527_405_123, // the same second twice, then the next
            1_764_527_405_124,
            1_764_527_406_007,
            4_107_542_399_050,   // 2100-02-28, not a leap year
            253_402_300_799_999, // 9999-12-31T23:59:59.999
            253_402_300_800_000, // the year 10000: nothing, as humantime
            u64::MAX,
        ] {
            let stock = humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms));
            let mut expected = String::new();
            let _ = std::fmt::Write::write_fmt(&mut expected, format_args!("{stock}"));
            assert_eq!(millis(ms), expected, "{ms} ms");
        }
        assert_eq!(millis(1_764_527_405_123), "2025-11-30T18:30:05.123Z");
    }

    #[test]
    fn a_second_is_given_without_fraction_or_z_and_nothing_past_the_range() {
        assert_eq!(with_second(0, str::to_owned), "1970-01-01T00:00:00");
        assert_eq!(with_second(END - 1, str::to_owned), "9999-12-31T23:59:59");
        assert_eq!(with_second(END, str::to_owned), "");
    }
}
