//! Change windows (`windows = ["Mon..Fri 02:00-04:00", "Sat,Sun
//! 00:00-23:59 Europe/Berlin"]`): when a new head may be deployed.
//! Weekdays are written as in systemd's calendar events (`Mon..Fri`,
//! `Sat,Sun`, `Mon,Wed..Fri`; none: every day), times as `HH:MM-HH:MM`
//! (an end before the start runs past midnight; `23:59` or `24:00` as an
//! end is the end of the day), and the zone is an IANA name read from the
//! system's tzdata, else the machine's local time. The times are wall
//! clock times of that zone, so a window keeps its hours across daylight
//! saving changes.

use jiff::civil::{Date, Time};
use jiff::tz::TimeZone;
use jiff::Timestamp;

/// How far ahead openings are looked for: a rollout of 30 days inside a
/// window of an hour a week needs years.
const HORIZON_DAYS: i64 = 3660;

/// One window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// As written, for messages.
    pub text: String,
    /// Open on these weekdays (Monday first) of the start.
    days: [bool; 7],
    /// Minutes after midnight it opens.
    start: u16,
    /// Minutes after midnight it closes (up to 1440); at or before
    /// `start`: the next day.
    end: u16,
    /// The IANA zone; `None`: the machine's.
    zone: Option<String>,
}

impl Window {
    /// Reads one window; the error says what is wrong, for the config's
    /// message.
    pub fn parse(text: &str) -> Result<Window, String> {
        let words: Vec<&str> = text.split_whitespace().collect();
        let (days, rest) = match words.first() {
            Some(w) if w.contains(':') => ([true; 7], &words[..]),
            Some(w) => (weekdays(w)?, &words[1..]),
            None => return Err("is empty; write e.g. \"Mon..Fri 02:00-04:00\"".into()),
        };
        let (range, zone) = match rest {
            [range] => (*range, None),
            [range, zone] => (*range, Some(zone.to_string())),
            _ => {
                return Err(format!(
                    "{text:?} is not a window; write \"[DAYS] HH:MM-HH:MM [ZONE]\", e.g. \"Mon..Fri 02:00-04:00 Europe/Berlin\""
                ))
            }
        };
        let (a, b) = range
            .split_once('-')
            .ok_or_else(|| format!("{range:?} is not a time range such as 02:00-04:00"))?;
        let start = minutes(a, false)?;
        let end = minutes(b, true)?;
        if start == end {
            return Err(format!("{range:?} opens and closes at the same minute"));
        }
        if let Some(z) = &zone {
            TimeZone::get(z)
                .map_err(|e| format!("{z:?} is not a time zone of this machine's tzdata: {e}"))?;
        }
        Ok(Window {
            text: text.to_string(),
            days,
            start,
            end,
            zone,
        })
    }

    fn tz(&self) -> TimeZone {
        match &self.zone {
            Some(z) => TimeZone::get(z).unwrap_or(TimeZone::UTC),
            None => TimeZone::system(),
        }
    }

    /// Its openings `[open, close)` (Unix seconds) that start on the days
    /// from `first` to `last` of its zone.
    fn openings(&self, first: Date, days: i64, out: &mut Vec<(i64, i64)>) {
        let tz = self.tz();
        let at = |d: Date, min: u16| -> Option<i64> {
            let (d, min) = if min >= 1440 {
                (d.tomorrow().ok()?, min - 1440)
            } else {
                (d, min)
            };
            let t = Time::new((min / 60) as i8, (min % 60) as i8, 0, 0).ok()?;
            d.to_datetime(t)
                .to_zoned_datetime(tz.clone())
                .ok()
                .map(|z| z.timestamp().as_second())
        };
        let mut d = first;
        for _ in 0..days {
            if self.days[d.weekday().to_monday_zero_offset() as usize] {
                let end = if self.end > self.start {
                    self.end
                } else {
                    self.end + 1440
                };
                if let (Some(a), Some(b)) = (at(d, self.start), at(d, end)) {
                    out.push((a, b));
                }
            }
            let Ok(next) = d.tomorrow() else { return };
            d = next;
        }
    }
}

/// A service's windows: a new head is deployed only inside one of them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Windows(pub Vec<Window>);

impl Windows {
    /// No window: any time is open.
    pub fn always(&self) -> bool {
        self.0.is_empty()
    }

    /// The merged openings overlapping `[from, from + days)`, in order.
    fn openings(&self, from: i64, days: i64) -> Vec<(i64, i64)> {
        let mut all = Vec::new();
        for w in &self.0 {
            let Ok(ts) = Timestamp::from_second(from) else {
                continue;
            };
            // From the day before, for a window open across midnight.
            let first = ts
                .to_zoned_datetime(w.tz())
                .date()
                .yesterday()
                .unwrap_or(ts.to_zoned_datetime(w.tz()).date());
            w.openings(first, days + 2, &mut all);
        }
        all.retain(|(_, b)| *b > from);
        all.sort_unstable();
        let mut merged: Vec<(i64, i64)> = Vec::new();
        for (a, b) in all {
            match merged.last_mut() {
                Some(last) if a <= last.1 => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        merged
    }

    /// Whether `now` is inside a window (always, without windows).
    pub fn is_open(&self, now: u64) -> bool {
        let now = now as i64;
        self.always()
            || self
                .openings(now, 1)
                .iter()
                .any(|(a, b)| *a <= now && now < *b)
    }

    /// When the next window opens after `now` (`now` itself when one is
    /// open); `None` without windows or within the horizon.
    pub fn next_open(&self, now: u64) -> Option<u64> {
        if self.always() {
            return None;
        }
        // The merged openings are in order: the first is the next. A week
        // and a day holds every weekly window; only a window that opens on
        // no day of it (none: the config reads weekdays) needs the horizon.
        let now = now as i64;
        let first = |days| {
            self.openings(now, days)
                .first()
                .map(|(a, _)| (*a).max(now) as u64)
        };
        first(8).or_else(|| first(HORIZON_DAYS))
    }

    /// The moment `open_secs` seconds of open time have passed since
    /// `from`: a staged rollout's place counts only the time the windows
    /// are open, so every machine's turn falls inside one.
    pub fn advance(&self, from: u64, open_secs: u64) -> u64 {
        if self.always() {
            return from + open_secs;
        }
        let from_i = from as i64;
        let mut left = open_secs as i64;
        let mut last = from_i;
        for (a, b) in self.openings(from_i, HORIZON_DAYS) {
            let a = a.max(from_i);
            let here = b - a;
            if left < here {
                return (a + left) as u64;
            }
            left -= here;
            last = b;
        }
        last as u64
    }
}

/// `Mon..Fri`, `Sat,Sun`, `Mon,Wed..Fri` (three letters or the full
/// name, any case).
fn weekdays(text: &str) -> Result<[bool; 7], String> {
    let day = |w: &str| -> Result<usize, String> {
        const NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
        let l = w.to_ascii_lowercase();
        NAMES
            .iter()
            .position(|n| l == *n || (l.len() > 3 && l.starts_with(n) && full_name(n) == l))
            .ok_or_else(|| format!("{w:?} is not a weekday (Mon, Tue, ..., Sun)"))
    };
    let mut days = [false; 7];
    for part in text.split(',') {
        match part.split_once("..") {
            Some((a, b)) => {
                let (a, b) = (day(a)?, day(b)?);
                let mut i = a;
                loop {
                    days[i] = true;
                    if i == b {
                        break;
                    }
                    i = (i + 1) % 7;
                }
            }
            None => days[day(part)?] = true,
        }
    }
    Ok(days)
}

fn full_name(short: &str) -> &'static str {
    match short {
        "mon" => "monday",
        "tue" => "tuesday",
        "wed" => "wednesday",
        "thu" => "thursday",
        "fri" => "friday",
        "sat" => "saturday",
        _ => "sunday",
    }
}

/// `HH:MM` as minutes after midnight; as an `end`, `23:59` and `24:00`
/// are the end of the day.
fn minutes(text: &str, end: bool) -> Result<u16, String> {
    let bad = || format!("{text:?} is not a time such as 02:00");
    let (h, m) = text.split_once(':').ok_or_else(bad)?;
    let (h, m): (u16, u16) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if h == 24 && m == 0 && end {
        return Ok(1440);
    }
    if h > 23 || m > 59 || text.len() != 5 {
        return Err(bad());
    }
    if end && h == 23 && m == 59 {
        return Ok(1440);
    }
    Ok(h * 60 + m)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-07 is a Monday; 00:00 UTC.
    const MONDAY: u64 = 1_796_601_600;

    fn w(texts: &[&str]) -> Windows {
        Windows(texts.iter().map(|t| Window::parse(t).expect(t)).collect())
    }

    #[test]
    fn windows_open_on_their_days_and_hours_in_their_zone() {
        let nights = w(&["Mon..Fri 02:00-04:00 UTC"]);
        assert!(!nights.is_open(MONDAY + 3600));
        assert!(nights.is_open(MONDAY + 2 * 3600));
        assert!(nights.is_open(MONDAY + 4 * 3600 - 1));
        assert!(!nights.is_open(MONDAY + 4 * 3600));
        // Saturday 03:00 is closed; the next opening is Monday 02:00.
        let saturday = MONDAY + 5 * 86400 + 3 * 3600;
        assert!(!nights.is_open(saturday));
        assert_eq!(
            nights.next_open(saturday),
            Some(MONDAY + 7 * 86400 + 2 * 3600)
        );
        // Berlin is UTC+1 in December.
        let berlin = w(&["Sat,Sun 00:00-23:59 Europe/Berlin"]);
        assert!(berlin.is_open(saturday));
        assert!(
            !berlin.is_open(MONDAY + 5 * 86400 - 3600 - 1),
            "Friday 23:59:59 in Berlin"
        );
        assert!(
            berlin.is_open(MONDAY + 5 * 86400 - 3600),
            "Saturday 00:00 in Berlin"
        );
        // Across midnight, from the day it starts.
        let late = w(&["Fri 22:00-02:00 UTC"]);
        assert!(late.is_open(MONDAY + 5 * 86400 + 3600), "Saturday 01:00");
        assert!(
            !late.is_open(MONDAY + 3600),
            "Monday 01:00 (Sunday had none)"
        );
    }

    #[test]
    fn a_rollout_counts_only_open_time() {
        let nights = w(&["02:00-04:00 UTC"]);
        // Three hours of open time from Monday 00:00: Monday's two hours,
        // then one of Tuesday's.
        assert_eq!(nights.advance(MONDAY, 3 * 3600), MONDAY + 86400 + 3 * 3600);
        assert_eq!(nights.advance(MONDAY + 3 * 3600, 0), MONDAY + 3 * 3600);
        assert_eq!(Windows::default().advance(5, 10), 15);
    }

    #[test]
    fn bad_windows_say_what_is_wrong() {
        for (text, says) in [
            ("Mon..Fry 02:00-04:00", "weekday"),
            ("Mon 2:00-04:00", "time"),
            ("Mon 02:00-02:00", "same minute"),
            ("Mon 02:00-04:00 Mars/Olympus", "time zone"),
            ("Mon 02:00", "time range"),
            ("", "empty"),
        ] {
            let e = Window::parse(text).expect_err(text);
            assert!(e.contains(says), "{text:?}: {e}");
        }
        let all = Window::parse("Monday,Wed..Fri 02:00-24:00").expect("parse");
        assert_eq!(all.days, [true, false, true, true, true, false, false]);
        assert_eq!(all.end, 1440);
    }
}
