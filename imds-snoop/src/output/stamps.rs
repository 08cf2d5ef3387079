//! The timestamp of a line, formatted once per second: the text layout's
//! `%Y-%m-%d %H:%M:%S,%3f` and JSON's RFC 3339 with milliseconds, byte for byte as chrono
//! prints them.

use std::fmt::Write as _;

use chrono::{DateTime, Datelike as _, Local, Offset as _, Timelike as _};

/// The timestamp's text up to the second, formatted once per second (and offset): lines
/// come by the thousand per second under load, and strftime parses its pattern each time.
#[derive(Default)]
pub(super) struct Stamps {
    /// Unix second and UTC offset of the cached text; `None` before the first line.
    key: Option<(i64, i32)>,
    /// `%Y-%m-%d %H:%M:%S`
    text: String,
    /// RFC 3339 up to the seconds, `%Y-%m-%dT%H:%M:%S`.
    rfc: String,
    /// The UTC offset as RFC 3339 writes it, `+HH:MM`.
    zone: String,
}

impl Stamps {
    /// `%Y-%m-%d %H:%M:%S,%3f`, as chrono prints it.
    pub(super) fn push_text(&mut self, out: &mut String, t: &DateTime<Local>) {
        match self.millis(t) {
            Some(ms) => {
                out.push_str(&self.text);
                out.push(',');
                push_3_digits(out, ms);
            }
            None => {
                let _ = write!(out, "{}", t.format("%Y-%m-%d %H:%M:%S,%3f"));
            }
        }
    }

    /// RFC 3339 with milliseconds and the local offset, as chrono's
    /// `to_rfc3339_opts(SecondsFormat::Millis, false)` prints it.
    pub(super) fn push_rfc3339(&mut self, out: &mut String, t: &DateTime<Local>) {
        match self.millis(t) {
            Some(ms) => {
                out.push_str(&self.rfc);
                out.push('.');
                push_3_digits(out, ms);
                out.push_str(&self.zone);
            }
            None => out.push_str(&t.to_rfc3339_opts(chrono::SecondsFormat::Millis, false)),
        }
    }

    /// Brings the cached second up to `t`'s, and returns `t`'s milliseconds; `None` when
    /// the cache does not apply (a leap second, a year outside 0..=9999): chrono then
    /// formats the whole stamp.
    fn millis(&mut self, t: &DateTime<Local>) -> Option<u32> {
        let nanos = t.nanosecond();
        if nanos >= 1_000_000_000 || !(0..=9999).contains(&t.year()) {
            return None;
        }
        let key = (t.timestamp(), t.offset().fix().local_minus_utc());
        if self.key != Some(key) {
            self.text.clear();
            let _ = write!(self.text, "{}", t.format("%Y-%m-%d %H:%M:%S"));
            let whole = t.to_rfc3339_opts(chrono::SecondsFormat::Secs, false);
            // A four-digit year: `YYYY-MM-DDTHH:MM:SS` is the first 19 bytes.
            let (rfc, zone) = whole.split_at(19);
            self.rfc = rfc.to_owned();
            self.zone = zone.to_owned();
            self.key = Some(key);
        }
        Some(nanos / 1_000_000)
    }
}

fn push_3_digits(out: &mut String, n: u32) {
    for d in [n / 100 % 10, n / 10 % 10, n % 10] {
        out.push(char::from(b'0' + d as u8));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_match_chrono_across_seconds() {
        use chrono::TimeZone as _;
        let mut stamps = Stamps::default();
        let start = Local.timestamp_opt(1_760_000_000, 0).unwrap();
        // Steps of 7.3 ms through 30 s, with jumps back (a clock step).
        for i in 0..4000i64 {
            let t =
                start + chrono::Duration::microseconds(7300 * i - (i % 97 == 0) as i64 * 3_000_000);
            let (mut text, mut rfc) = (String::new(), String::new());
            stamps.push_text(&mut text, &t);
            stamps.push_rfc3339(&mut rfc, &t);
            assert_eq!(text, t.format("%Y-%m-%d %H:%M:%S,%3f").to_string());
            assert_eq!(rfc, t.to_rfc3339_opts(chrono::SecondsFormat::Millis, false));
        }
        // Outside what the cache handles: chrono formats it.
        let far = Local.with_ymd_and_hms(10_000, 1, 2, 3, 4, 5).unwrap();
        let mut rfc = String::new();
        stamps.push_rfc3339(&mut rfc, &far);
        assert_eq!(
            rfc,
            far.to_rfc3339_opts(chrono::SecondsFormat::Millis, false)
        );
    }
}
