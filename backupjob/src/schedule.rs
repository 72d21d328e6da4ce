//! A job's scheduled actions (driver contract §11.2): `SCHED_ACTION=[TIME, REPEAT, DAYS, END_TYPE,
//! END_VALUE]`, when one is due, and where it moves after a run.
//!
//! - `TIME` is an absolute epoch; `REPEAT` is none, weekly (DAYS 0–6, 0 = Sunday), monthly
//!   (DAYS 1–31), yearly (DAYS 0–365, 0 = 1 January) or hourly (DAYS = N, every N hours);
//! - `END_TYPE`: none, never, after N more runs (`END_VALUE` counts down), or until a date;
//! - due when it has not ended, it has not run since `TIME`, and `TIME` has passed;
//! - after a run: `DONE = now`; hourly adds N hours to TIME until it is in the future;
//!   weekly, monthly and yearly move TIME to the next listed day after today, **at the same
//!   local wall-clock time** as before (so a 03:00 backup stays at 03:00 across daylight-saving
//!   changes; a time that does not exist that day moves forward, as the clock did).

use jiff::civil::{Date, DateTime};
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repeat {
    None,
    Weekly,
    Monthly,
    Yearly,
    Hourly,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// `END_TYPE=-1`: a single run.
    None,
    /// `END_TYPE=0`.
    Never,
    /// `END_TYPE=1`: this many runs left.
    Times(i64),
    /// `END_TYPE=2`: not after this epoch.
    Until(i64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchedAction {
    pub time: i64,
    pub repeat: Repeat,
    pub days: Vec<u32>,
    pub end: End,
    /// When it last ran (epoch); 0 or less for never.
    pub done: i64,
}

impl Repeat {
    /// The template's `REPEAT` number (-1 none, 0 weekly, 1 monthly, 2 yearly, 3 hourly).
    pub fn code(self) -> i64 {
        match self {
            Repeat::None => -1,
            Repeat::Weekly => 0,
            Repeat::Monthly => 1,
            Repeat::Yearly => 2,
            Repeat::Hourly => 3,
        }
    }
}

impl End {
    /// The template's `END_TYPE` and `END_VALUE`.
    pub fn codes(self) -> (i64, Option<i64>) {
        match self {
            End::None => (-1, None),
            End::Never => (0, None),
            End::Times(n) => (1, Some(n)),
            End::Until(t) => (2, Some(t)),
        }
    }
}

/// Why a SCHED_ACTION is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("SCHED_ACTION: {0}")]
pub struct ScheduleError(pub String);

impl SchedAction {
    /// From the template values, validated.
    pub fn new(
        time: i64,
        repeat: i64,
        days: &str,
        end_type: i64,
        end_value: Option<i64>,
    ) -> Result<SchedAction, ScheduleError> {
        let bad = |m: String| Err(ScheduleError(m));
        let repeat = match repeat {
            -1 => Repeat::None,
            0 => Repeat::Weekly,
            1 => Repeat::Monthly,
            2 => Repeat::Yearly,
            3 => Repeat::Hourly,
            r => {
                return bad(format!(
                    "REPEAT is {r}; use -1, 0 (weekly), 1 (monthly), 2 (yearly) or 3 (hourly)"
                ));
            }
        };
        let mut list = Vec::new();
        for d in days.split(',').map(str::trim).filter(|d| !d.is_empty()) {
            match d.parse::<u32>() {
                Ok(n) => list.push(n),
                Err(_) => return bad(format!("DAYS holds {d:?}, not a number")),
            }
        }
        let range = match repeat {
            Repeat::None => 0..=u32::MAX,
            Repeat::Weekly => 0..=6,
            Repeat::Monthly => 1..=31,
            Repeat::Yearly => 0..=365,
            Repeat::Hourly => 0..=167,
        };
        if repeat != Repeat::None && list.is_empty() {
            return bad("DAYS is empty, but REPEAT needs it".into());
        }
        if repeat == Repeat::Hourly && list.len() != 1 {
            return bad("DAYS must be one number of hours for an hourly REPEAT".into());
        }
        if let Some(d) = list.iter().find(|d| !range.contains(d)) {
            return bad(format!(
                "DAYS holds {d}, outside {}–{} for this REPEAT",
                range.start(),
                range.end()
            ));
        }
        list.sort_unstable();
        list.dedup();
        let end = match (end_type, end_value) {
            (-1, _) => End::None,
            (0, _) => End::Never,
            (1, Some(n)) => End::Times(n),
            (2, Some(t)) => End::Until(t),
            (1 | 2, None) => return bad(format!("END_TYPE {end_type} needs END_VALUE")),
            (t, _) => return bad(format!("END_TYPE is {t}; use -1, 0, 1 (times) or 2 (date)")),
        };
        if time <= 0 {
            return bad("TIME must be an absolute epoch".into());
        }
        Ok(SchedAction {
            time,
            repeat,
            days: list,
            end,
            done: 0,
        })
    }

    /// No more runs.
    pub fn ended(&self) -> bool {
        match self.end {
            End::None => self.repeat == Repeat::None && self.done > 0,
            End::Never => false,
            End::Times(n) => n <= 0,
            End::Until(t) => self.time > t,
        }
    }

    pub fn due(&self, now: i64) -> bool {
        !self.ended() && (self.done <= 0 || self.done < self.time) && self.time < now
    }

    /// After a successful run at `now`: DONE, the next TIME, and the countdown.
    pub fn ran(&mut self, now: i64, tz: &TimeZone) {
        self.done = now;
        if let End::Times(n) = &mut self.end {
            *n -= 1;
        }
        self.time = self.next_time(now, tz);
    }

    fn next_time(&self, now: i64, tz: &TimeZone) -> i64 {
        match self.repeat {
            Repeat::None => self.time,
            Repeat::Hourly => {
                let step = i64::from(self.days.first().copied().unwrap_or(0)).max(1) * 3600;
                let mut t = self.time;
                while t <= now {
                    t += step;
                }
                t
            }
            Repeat::Weekly | Repeat::Monthly | Repeat::Yearly => {
                let at = |ts: i64| {
                    Timestamp::from_second(ts)
                        .map(|t| t.to_zoned(tz.clone()).datetime())
                        .unwrap_or_default()
                };
                let clock = at(self.time).time();
                let today = at(now).date();
                // The first listed day after today (at most a year and a bit away).
                let mut day = today;
                for _ in 0..800 {
                    day = match day.checked_add(1.day()) {
                        Ok(d) => d,
                        Err(_) => break,
                    };
                    if self.listed(day) {
                        let local = DateTime::from_parts(day, clock);
                        if let Ok(z) = local.to_zoned(tz.clone()) {
                            return z.timestamp().as_second();
                        }
                    }
                }
                self.time
            }
        }
    }

    fn listed(&self, day: Date) -> bool {
        let n = match self.repeat {
            Repeat::Weekly => u32::from(day.weekday().to_sunday_zero_offset().unsigned_abs()),
            Repeat::Monthly => u32::from(day.day().unsigned_abs()),
            Repeat::Yearly => u32::from(day.day_of_year().unsigned_abs()) - 1,
            Repeat::None | Repeat::Hourly => return false,
        };
        self.days.contains(&n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tz() -> TimeZone {
        TimeZone::get("Europe/Madrid").expect("tzdata (Europe/Madrid)")
    }

    fn epoch(local: &str) -> i64 {
        let dt: DateTime = local.parse().expect("datetime");
        dt.to_zoned(tz()).expect("zoned").timestamp().as_second()
    }

    fn local(ts: i64) -> String {
        Timestamp::from_second(ts)
            .expect("ts")
            .to_zoned(tz())
            .datetime()
            .to_string()
    }

    /// (case, TIME, REPEAT, DAYS, now, next TIME after a run at `now`)
    #[test]
    fn next_times() {
        let cases = [
            // 2026-11-20 is a Friday.
            (
                "weekly Mon,Wed",
                "2026-11-16T03:00",
                0,
                "1,3",
                "2026-11-20T03:05",
                "2026-11-23T03:00:00",
            ),
            (
                "weekly, today is listed: next week",
                "2026-11-13T03:00",
                0,
                "5",
                "2026-11-20T03:05",
                "2026-11-27T03:00:00",
            ),
            (
                "monthly 1,15",
                "2026-11-15T02:30",
                1,
                "1,15",
                "2026-11-15T02:31",
                "2026-12-01T02:30:00",
            ),
            (
                "monthly 31 skips 30-day months",
                "2026-10-31T01:00",
                1,
                "31",
                "2026-10-31T01:10",
                "2026-12-31T01:00:00",
            ),
            (
                "yearly day 0 = 1 January",
                "2026-01-01T00:30",
                2,
                "0",
                "2026-01-01T01:00",
                "2027-01-01T00:30:00",
            ),
            // Daylight saving: Madrid goes from +02:00 to +01:00 on 2026-10-25.
            (
                "weekly across the autumn change keeps 03:00 local",
                "2026-10-24T03:00",
                0,
                "0,6",
                "2026-10-24T03:10",
                "2026-10-25T03:00:00",
            ),
            // ... and from +01:00 to +02:00 on 2026-03-29 at 02:00, which does not exist.
            (
                "a nonexistent local time moves forward",
                "2026-03-28T02:30",
                0,
                "0",
                "2026-03-28T02:40",
                "2026-03-29T03:30:00",
            ),
        ];
        for (name, time, repeat, days, now, want) in cases {
            let mut sa = SchedAction::new(epoch(time), repeat, days, 0, None).expect(name);
            assert!(sa.due(epoch(now)), "{name}: due");
            sa.ran(epoch(now), &tz());
            assert_eq!(local(sa.time), want, "{name}");
            assert!(!sa.due(epoch(now) + 60), "{name}: not due again at once");
        }
    }

    #[test]
    fn hourly_catches_up_past_now() {
        let t = epoch("2026-11-20T00:00");
        let mut sa = SchedAction::new(t, 3, "6", 0, None).expect("hourly");
        sa.ran(t + 13 * 3600, &tz());
        assert_eq!(sa.time, t + 18 * 3600);
        // Across the spring change hours stay 3600 s apart.
        let t = epoch("2026-03-29T00:00");
        let mut sa = SchedAction::new(t, 3, "1", 0, None).expect("hourly");
        sa.ran(t + 10, &tz());
        assert_eq!(sa.time - t, 3600);
    }

    #[test]
    fn ends() {
        let t = epoch("2026-11-20T03:00");
        // After 2 runs.
        let mut sa = SchedAction::new(t, 3, "24", 1, Some(2)).expect("times");
        sa.ran(t + 60, &tz());
        assert!(!sa.ended());
        sa.ran(sa.time + 60, &tz());
        assert!(sa.ended());
        assert!(!sa.due(sa.time + 3600));
        // Until a date: the run that moves TIME past it is the last.
        let mut sa = SchedAction::new(t, 3, "24", 2, Some(t + 36 * 3600)).expect("until");
        sa.ran(t + 60, &tz());
        assert!(!sa.ended(), "next at +24 h is before the end");
        sa.ran(sa.time + 60, &tz());
        assert!(sa.ended(), "next at +48 h is after the end");
        // A single run.
        let mut sa = SchedAction::new(t, -1, "", -1, None).expect("once");
        assert!(sa.due(t + 1) && !sa.due(t - 1));
        sa.ran(t + 1, &tz());
        assert!(sa.ended() && !sa.due(t + 7200));
    }

    #[test]
    fn bad_templates_name_the_attribute() {
        for (time, repeat, days, end, value, want) in [
            (1, 0, "", 0, None, "DAYS is empty"),
            (1, 0, "7", 0, None, "DAYS holds 7, outside 0–6"),
            (1, 1, "0", 0, None, "DAYS holds 0, outside 1–31"),
            (1, 3, "1,2", 0, None, "one number of hours"),
            (1, 4, "1", 0, None, "REPEAT is 4"),
            (1, 0, "x", 0, None, "DAYS holds \"x\""),
            (1, 0, "1", 1, None, "END_TYPE 1 needs END_VALUE"),
            (1, 0, "1", 5, None, "END_TYPE is 5"),
            (0, -1, "", -1, None, "TIME must be an absolute epoch"),
        ] {
            let e = SchedAction::new(time, repeat, days, end, value).expect_err(want);
            assert!(e.to_string().contains(want), "{e} vs {want}");
        }
    }
}
