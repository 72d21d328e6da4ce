//! When a sync or verify job runs (docs/sync.md, "Schedules"): `EVERY` (a period since its
//! last run) or `SCHEDULE` (calendar times, a subset of the calendar events Proxmox Backup
//! Server and systemd take), checked by the scheduler daemon at each pass.
//!
//! `SCHEDULE` is `[DAYS] HOURS:MINUTES`, or `hourly` (`*:00`), `daily` (`00:00`), `weekly`
//! (`mon 00:00`):
//! - `DAYS`: weekday names (`mon` … `sun`), lists `mon,thu` and ranges `mon..fri`; none means
//!   every day;
//! - `HOURS` (0–23) and `MINUTES` (0–59): `*`, a number, lists `2,14`, ranges `8..17`, and
//!   repetitions `0/15` (from 0 every 15) or `*/15`.
//!
//! Times are the scheduler's local wall-clock time. A job is due when a time the schedule
//! names has come since its last run started, or, before its first run, since its template
//! was written: a pass that finds several such times missed runs the job once. A time that
//! does not exist on a day the clock goes forward is skipped that day; a time the clock passes
//! twice when it goes back counts once.

use crate::error::TemplateError;
use jiff::Timestamp;
use jiff::tz::TimeZone;

/// When a job runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum When {
    /// This many seconds after its last run started (and at the first pass).
    Every(u64),
    Calendar(Calendar),
}

/// A parsed `SCHEDULE`: the weekdays (bit 0 Monday), hours and minutes it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Calendar {
    days: u8,
    hours: u32,
    minutes: u64,
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// How far back a missed time is looked for: a week and a day covers any weekday set.
const LOOK_BACK_MINUTES: i64 = 8 * 24 * 60;

/// The set of values (bits) of one field: `*`, `n`, `a..b`, `n/step`, `*/step`, lists.
fn field(text: &str, max: u32, what: &str) -> Result<u64, TemplateError> {
    let bad = || {
        TemplateError(format!(
            "{what} {text:?} is not like *, 5, 1,2, 8..17 or 0/15"
        ))
    };
    let number = |s: &str| -> Result<u32, TemplateError> {
        match s.parse::<u32>() {
            Ok(n) if n <= max => Ok(n),
            Ok(_) => Err(TemplateError(format!("{what} {s} is more than {max}"))),
            Err(_) => Err(bad()),
        }
    };
    let mut set = 0u64;
    for item in text.split(',') {
        let (from, to, step) = if item == "*" {
            (0, max, 1)
        } else if let Some((start, step)) = item.split_once('/') {
            let start = if start == "*" { 0 } else { number(start)? };
            let step = step.parse::<u32>().map_err(|_| bad())?;
            if step == 0 {
                return Err(TemplateError(format!("{what} {text:?}: a step of 0")));
            }
            (start, max, step)
        } else if let Some((a, b)) = item.split_once("..") {
            let (a, b) = (number(a)?, number(b)?);
            if a > b {
                return Err(TemplateError(format!("{what} {item:?} runs backwards")));
            }
            (a, b, 1)
        } else {
            let n = number(item)?;
            (n, n, 1)
        };
        for v in (from..=to).step_by(step as usize) {
            set |= 1 << v;
        }
    }
    Ok(set)
}

fn weekdays(text: &str) -> Result<u8, TemplateError> {
    let day = |s: &str| {
        DAYS.iter()
            .position(|d| s.eq_ignore_ascii_case(d))
            .ok_or_else(|| {
                TemplateError(format!(
                    "{s:?} is not a weekday (mon, tue, wed, thu, fri, sat, sun)"
                ))
            })
    };
    let mut set = 0u8;
    for item in text.split(',') {
        let (a, b) = match item.split_once("..") {
            Some((a, b)) => (day(a)?, day(b)?),
            None => (day(item)?, day(item)?),
        };
        if a > b {
            return Err(TemplateError(format!(
                "weekdays {item:?} run backwards (mon..sun is the order)"
            )));
        }
        for d in a..=b {
            set |= 1 << d;
        }
    }
    Ok(set)
}

impl Calendar {
    pub fn parse(text: &str) -> Result<Calendar, TemplateError> {
        let spelled = match text.trim().to_ascii_lowercase().as_str() {
            "hourly" => "*:00".to_string(),
            "daily" => "00:00".to_string(),
            "weekly" => "mon 00:00".to_string(),
            t => t.to_string(),
        };
        let words: Vec<&str> = spelled.split_whitespace().collect();
        let (days, time) = match words.as_slice() {
            [time] => (0x7f, *time),
            [days, time] => (weekdays(days)?, *time),
            _ => {
                return Err(TemplateError(format!(
                    "SCHEDULE {text:?} is not like \"mon..fri 02:30\""
                )));
            }
        };
        let (hours, minutes) = time.split_once(':').ok_or_else(|| {
            TemplateError(format!(
                "SCHEDULE {text:?}: {time:?} is not like 02:30 or *:0/15"
            ))
        })?;
        Ok(Calendar {
            days,
            hours: field(hours, 23, "hour")? as u32,
            minutes: field(minutes, 59, "minute")?,
        })
    }

    fn names(&self, t: Timestamp, tz: &TimeZone) -> bool {
        let at = tz.to_datetime(t);
        let day = at.weekday().to_monday_zero_offset();
        self.days & (1 << day) != 0
            && self.hours & (1 << at.hour()) != 0
            && self.minutes & (1 << at.minute()) != 0
    }

    /// Whether `t` is the first instant with its wall-clock time (not the repeat of the hour
    /// the clock goes back).
    fn first_of_its_time(t: Timestamp, tz: &TimeZone) -> bool {
        let at = tz.to_datetime(t);
        [1800, 3600].iter().all(|back| {
            Timestamp::from_second(t.as_second() - back).map_or(true, |e| tz.to_datetime(e) != at)
        })
    }

    /// The latest time the schedule names at or before `now` (epoch seconds), looking back
    /// at most eight days.
    pub fn latest(&self, now: i64, tz: &TimeZone) -> Option<i64> {
        let start = now - now.rem_euclid(60);
        (0..=LOOK_BACK_MINUTES)
            .map(|i| start - i * 60)
            .filter_map(|s| Timestamp::from_second(s).ok())
            .find(|t| self.names(*t, tz) && Self::first_of_its_time(*t, tz))
            .map(|t| t.as_second())
    }

    /// The next time the schedule names after `now`, looking ahead at most eight days.
    pub fn next(&self, now: i64, tz: &TimeZone) -> Option<i64> {
        let start = now - now.rem_euclid(60) + 60;
        (0..=LOOK_BACK_MINUTES)
            .map(|i| start + i * 60)
            .filter_map(|s| Timestamp::from_second(s).ok())
            .find(|t| self.names(*t, tz) && Self::first_of_its_time(*t, tz))
            .map(|t| t.as_second())
    }
}

/// One of OpenNebula's scheduled actions, as [`Calendar::as_sched_action`] gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AsSchedAction {
    /// The next time the calendar names (epoch seconds).
    pub time: i64,
    /// REPEAT: 0 weekly or 3 hourly.
    pub repeat: i64,
    /// DAYS: the weekdays (0 = Sunday), or the hours between runs.
    pub days: String,
}

impl Calendar {
    /// The calendar as one of OpenNebula's scheduled actions (`SCHED_ACTION`), when one can
    /// say it: one time of day on some weekdays (REPEAT weekly), or one minute of every Nth
    /// hour, all day, every day, with N dividing 24 (REPEAT hourly). `None` for anything else
    /// (several times a day at different minutes, hours that are not evenly spaced).
    pub fn as_sched_action(&self, now: i64, tz: &TimeZone) -> Option<AsSchedAction> {
        if self.minutes.count_ones() != 1 {
            return None;
        }
        let time = self.next(now, tz)?;
        let hours: Vec<u32> = (0..24).filter(|h| self.hours & (1 << h) != 0).collect();
        match hours.as_slice() {
            [] => None,
            [_] => {
                // DAYS' weekdays count from Sunday (0); the calendar's from Monday.
                let mut days: Vec<u32> = (0..7u32)
                    .filter(|d| self.days & (1 << d) != 0)
                    .map(|d| (d + 1) % 7)
                    .collect();
                days.sort_unstable();
                let days: Vec<String> = days.iter().map(u32::to_string).collect();
                Some(AsSchedAction {
                    time,
                    repeat: 0,
                    days: days.join(","),
                })
            }
            [first, second, ..] => {
                let step = second - first;
                let even = self.days == 0x7f
                    && 24 % step == 0
                    && *first < step
                    && hours.len() as u32 == 24 / step
                    && hours
                        .iter()
                        .enumerate()
                        .all(|(i, h)| *h == first + i as u32 * step);
                even.then(|| AsSchedAction {
                    time,
                    repeat: 3,
                    days: step.to_string(),
                })
            }
        }
    }
}

impl When {
    /// `EVERY` (`30m`, `6h`, `1d`, or seconds) or `SCHEDULE`; not both. `None` for a job
    /// that runs only when asked.
    pub fn parse(t: &backstop_protocol::template::Template) -> Result<Option<When>, TemplateError> {
        match (t.get("EVERY"), t.get("SCHEDULE")) {
            (Some(_), Some(_)) => Err(TemplateError(
                "EVERY and SCHEDULE both given: take one".into(),
            )),
            (Some(e), None) => every(e.trim()).map(|s| Some(When::Every(s))),
            (None, Some(s)) => Calendar::parse(s).map(|c| Some(When::Calendar(c))),
            (None, None) => Ok(None),
        }
    }

    /// Whether a job is due at `now`: `last` is when its last run started, `written` when its
    /// template was written (`None` if not recorded).
    pub fn due(&self, now: i64, last: Option<i64>, written: Option<i64>, tz: &TimeZone) -> bool {
        match self {
            When::Every(e) => last.is_none_or(|l| l + *e as i64 <= now),
            When::Calendar(c) => {
                let since = last.max(written).unwrap_or(i64::MIN);
                c.latest(now, tz).is_some_and(|slot| slot > since)
            }
        }
    }

    /// When a job that is due at `now` first became due (how late it is); `None` when it is
    /// not due. A job never run and with no recorded template time counts from `now`.
    pub fn due_since(
        &self,
        now: i64,
        last: Option<i64>,
        written: Option<i64>,
        tz: &TimeZone,
    ) -> Option<i64> {
        if !self.due(now, last, written, tz) {
            return None;
        }
        Some(match self {
            When::Every(e) => last.map_or(written.unwrap_or(now), |l| l + *e as i64),
            When::Calendar(c) => last
                .max(written)
                .and_then(|since| c.next(since, tz))
                .or_else(|| c.latest(now, tz))
                .unwrap_or(now),
        })
    }

    /// When it will next be due, for display.
    pub fn next(&self, now: i64, last: Option<i64>, tz: &TimeZone) -> Option<i64> {
        match self {
            When::Every(e) => Some(last.map_or(now, |l| (l + *e as i64).max(now))),
            When::Calendar(c) => c.next(now, tz),
        }
    }
}

/// `EVERY`: `<n>s|m|h|d`, or seconds.
fn every(text: &str) -> Result<u64, TemplateError> {
    let (num, unit) = match text.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&text[..i], c.to_ascii_lowercase()),
        _ => (text, 's'),
    };
    let bad = || TemplateError(format!("EVERY {text:?} is not like 30m, 6h or 1d"));
    let n: u64 = num.trim().parse().map_err(|_| bad())?;
    let unit = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3_600,
        'd' => 86_400,
        _ => return Err(bad()),
    };
    match n.checked_mul(unit) {
        Some(0) => Err(TemplateError("EVERY must be more than 0".into())),
        Some(s) => Ok(s),
        None => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::date;

    fn at(tz: &TimeZone, y: i16, mo: i8, d: i8, h: i8, mi: i8) -> i64 {
        date(y, mo, d)
            .at(h, mi, 0, 0)
            .to_zoned(tz.clone())
            .expect("zoned")
            .timestamp()
            .as_second()
    }

    #[test]
    fn schedules_parse_and_bad_ones_say_why() {
        let all_days = 0x7f;
        for (text, days, hours, minutes) in [
            ("02:30", all_days, 1 << 2, 1u64 << 30),
            ("daily", all_days, 1, 1),
            ("hourly", all_days, 0xff_ffff, 1),
            ("weekly", 1, 1, 1),
            ("mon..fri 22:00", 0b1_1111, 1 << 22, 1),
            (
                "sat,sun *:0/15",
                0b110_0000,
                0xff_ffff,
                1 | 1 << 15 | 1 << 30 | 1 << 45,
            ),
            ("8..10,20:*/30", all_days, 0b111 << 8 | 1 << 20, 1 | 1 << 30),
            ("Tue 1,13:05", 0b10, 1 << 1 | 1 << 13, 1 << 5),
        ] {
            let c = Calendar::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(
                (c.days, c.hours, c.minutes),
                (days, hours, minutes),
                "{text}"
            );
        }
        for (text, why) in [
            ("", "is not like \"mon..fri 02:30\""),
            ("02", "is not like 02:30"),
            ("24:00", "hour 24 is more than 23"),
            ("02:60", "minute 60 is more than 59"),
            ("fri..mon 02:00", "run backwards"),
            ("someday 02:00", "\"someday\" is not a weekday"),
            ("*:0/0", "a step of 0"),
            ("10..8:00", "runs backwards"),
            ("mon 02:00 extra", "is not like"),
            ("x:00", "hour \"x\" is not like"),
        ] {
            let e = Calendar::parse(text).expect_err(text);
            assert!(e.0.contains(why), "{text}: {e}");
        }
    }

    #[test]
    fn the_latest_and_next_times_follow_the_days_and_the_local_clock() {
        let utc = TimeZone::UTC;
        // 2026-12-02 is a Wednesday.
        let c = Calendar::parse("mon..fri 02:30").expect("parse");
        let wed_1000 = at(&utc, 2026, 12, 2, 10, 0);
        assert_eq!(c.latest(wed_1000, &utc), Some(at(&utc, 2026, 12, 2, 2, 30)));
        assert_eq!(c.next(wed_1000, &utc), Some(at(&utc, 2026, 12, 3, 2, 30)));
        // On Monday morning before 02:30 the latest is Friday's.
        let mon_0100 = at(&utc, 2026, 12, 7, 1, 0);
        assert_eq!(c.latest(mon_0100, &utc), Some(at(&utc, 2026, 12, 4, 2, 30)));
        // Exactly at the time it counts.
        let slot = at(&utc, 2026, 12, 2, 2, 30);
        assert_eq!(c.latest(slot, &utc), Some(slot));
        assert_eq!(c.latest(slot + 59, &utc), Some(slot));
        assert_eq!(c.next(slot, &utc), Some(at(&utc, 2026, 12, 3, 2, 30)));
        // Every 15 minutes.
        let q = Calendar::parse("*:0/15").expect("parse");
        assert_eq!(q.latest(slot + 14 * 60, &utc), Some(slot));
        assert_eq!(q.next(slot, &utc), Some(slot + 15 * 60));
    }

    #[test]
    fn daylight_saving_skips_a_missing_time_and_counts_a_repeated_one_once() {
        let tz = TimeZone::get("Europe/Madrid").expect("tzdata (Europe/Madrid)");
        // 2026-03-29: 02:00 becomes 03:00, so 02:30 does not exist that day.
        let c = Calendar::parse("02:30").expect("parse");
        let noon = at(&tz, 2026, 3, 29, 12, 0);
        assert_eq!(c.latest(noon, &tz), Some(at(&tz, 2026, 3, 28, 2, 30)));
        // 2026-10-25: 03:00 goes back to 02:00, so 02:30 comes twice; only the first counts.
        let first = at(&tz, 2026, 10, 25, 2, 30);
        let second = first + 3600;
        assert_eq!(c.latest(second + 60, &tz), Some(first));
        assert_eq!(c.next(first, &tz), Some(at(&tz, 2026, 10, 26, 2, 30)));
    }

    #[test]
    fn a_calendar_job_runs_once_per_time_after_it_was_written_or_last_ran() {
        let utc = TimeZone::UTC;
        let when = When::Calendar(Calendar::parse("02:30").expect("parse"));
        let slot = at(&utc, 2026, 12, 2, 2, 30);
        let now = slot + 3600;
        // Written before the time, never ran: due; written after it: not until tomorrow.
        assert!(when.due(now, None, Some(slot - 60), &utc));
        assert!(!when.due(now, None, Some(slot + 60), &utc));
        // Ran at (or after) the time: not due again; ran the day before: due.
        assert!(!when.due(now, Some(slot), Some(0), &utc));
        assert!(when.due(now, Some(slot - 86_400), Some(0), &utc));
        // Days missed count once: a run now, then not due until the next time.
        assert!(when.due(now + 3 * 86_400, Some(slot - 86_400), None, &utc));
        assert!(!when.due(now + 3 * 86_400, Some(now + 3 * 86_400 - 10), None, &utc));
        // A job from before `written_at` was recorded, never run: due at the latest time.
        assert!(when.due(now, None, None, &utc));
        // EVERY: at the first pass, then the period after the last start.
        let every = When::Every(3600);
        assert!(every.due(now, None, None, &utc));
        assert!(!every.due(now, Some(now - 3599), None, &utc));
        assert!(every.due(now, Some(now - 3600), None, &utc));
    }

    #[test]
    fn calendars_that_one_scheduled_action_can_say() {
        let tz = TimeZone::get("Europe/Berlin").expect("tz");
        // Monday 2026-03-02 10:00 local.
        let now = at(&tz, 2026, 3, 2, 10, 0);
        let sched = |text: &str| {
            Calendar::parse(text)
                .expect(text)
                .as_sched_action(now, &tz)
                .map(|a| (a.time, a.repeat, a.days))
        };
        assert_eq!(
            sched("mon..fri 02:30"),
            Some((at(&tz, 2026, 3, 3, 2, 30), 0, "1,2,3,4,5".into()))
        );
        assert_eq!(
            sched("sat,sun 23:05"),
            Some((at(&tz, 2026, 3, 7, 23, 5), 0, "0,6".into()))
        );
        assert_eq!(
            sched("daily"),
            Some((at(&tz, 2026, 3, 3, 0, 0), 0, "0,1,2,3,4,5,6".into()))
        );
        assert_eq!(
            sched("hourly"),
            Some((at(&tz, 2026, 3, 2, 11, 0), 3, "1".into()))
        );
        assert_eq!(
            sched("*/6:15"),
            Some((at(&tz, 2026, 3, 2, 12, 15), 3, "6".into()))
        );
        assert_eq!(
            sched("2/8:00"),
            Some((at(&tz, 2026, 3, 2, 18, 0), 3, "8".into()))
        );
        assert_eq!(
            sched("2,14:00"),
            Some((at(&tz, 2026, 3, 2, 14, 0), 3, "12".into()))
        );
        assert_eq!(
            sched("3/6:00"),
            Some((at(&tz, 2026, 3, 2, 15, 0), 3, "6".into()))
        );
        // Several times a day that one REPEAT cannot say.
        for text in [
            "2,13:00", "*:0/15", "8..17:00", "*/5:00", "mon *:00", "7/6:00",
        ] {
            assert_eq!(sched(text), None, "{text}");
        }
    }
}
