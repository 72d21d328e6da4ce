//! Retention plans (docs/retention.md): which backup points of a VM stay and which go, and
//! why, from a job's keep rules. A pure function of the points, the rules and the time zone,
//! so it is tested from tables.
//!
//! The rules are restic's `forget` rules: `KEEP_LAST` n keeps the n newest points; each of
//! `KEEP_HOURLY`, `KEEP_DAILY`, `KEEP_WEEKLY`, `KEEP_MONTHLY` and `KEEP_YEARLY` n goes through
//! the points newest first and keeps the newest point of each hour (day, ISO week, month,
//! year) until it has kept n, so for the last n periods that have a point it keeps one each.
//! Every rule sees every point (a point kept by one rule still takes its period of another),
//! and a point stays when any rule keeps it. A protected point always stays and counts for no
//! rule. With no rule at all, everything stays.

use jiff::Timestamp;
use jiff::tz::TimeZone;

/// A job's keep rules; 0 is "not used".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Keep {
    pub last: u32,
    pub hourly: u32,
    pub daily: u32,
    pub weekly: u32,
    pub monthly: u32,
    pub yearly: u32,
}

impl Keep {
    /// Whether no rule is set (then nothing is removed).
    pub fn is_empty(&self) -> bool {
        *self == Keep::default()
    }

    /// Whether a rule beyond KEEP_LAST is set.
    pub fn has_periods(&self) -> bool {
        Keep { last: 0, ..*self } != Keep::default()
    }

    /// The template attributes and their values, set ones only.
    pub fn attributes(&self) -> Vec<(&'static str, u32)> {
        [
            ("KEEP_LAST", self.last),
            ("KEEP_HOURLY", self.hourly),
            ("KEEP_DAILY", self.daily),
            ("KEEP_WEEKLY", self.weekly),
            ("KEEP_MONTHLY", self.monthly),
            ("KEEP_YEARLY", self.yearly),
        ]
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .collect()
    }
}

/// One backup point: an increment of a chain, or a whole image in FULL mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Point {
    /// When it was taken (seconds since the epoch).
    pub at: i64,
    pub protected: bool,
}

/// What the plan says of one point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub keep: bool,
    /// Why it stays (`last 1`, `daily 2026-11-30`, `protected`), or empty when it goes.
    pub reasons: Vec<String>,
}

#[derive(Clone, Copy)]
enum Period {
    Hour,
    Day,
    Week,
    Month,
    Year,
}

impl Period {
    fn name(self) -> &'static str {
        match self {
            Period::Hour => "hourly",
            Period::Day => "daily",
            Period::Week => "weekly",
            Period::Month => "monthly",
            Period::Year => "yearly",
        }
    }

    /// The period a moment falls in, as text (`2026-11-30 14h`, `2026-11-30`, `2026-W48`,
    /// `2026-11`, `2026`).
    fn of(self, at: i64, tz: &TimeZone) -> String {
        let Ok(t) = Timestamp::from_second(at) else {
            return format!("@{at}");
        };
        let z = t.to_zoned(tz.clone());
        match self {
            Period::Hour => z.strftime("%Y-%m-%d %Hh").to_string(),
            Period::Day => z.strftime("%Y-%m-%d").to_string(),
            Period::Week => {
                let w = z.date().iso_week_date();
                format!("{}-W{:02}", w.year(), w.week())
            }
            Period::Month => z.strftime("%Y-%m").to_string(),
            Period::Year => z.strftime("%Y").to_string(),
        }
    }
}

/// The plan for a VM's points in chain order (images oldest first, each image's increments in
/// order): [`plan`], but the last point always stays, whatever its time says: the next
/// backup extends the chain from it.
pub fn plan_chain(points: &[Point], keep: &Keep, tz: &TimeZone) -> Vec<Decision> {
    let mut out = plan(points, keep, tz);
    if let Some(last) = out.last_mut()
        && !last.keep
    {
        last.keep = true;
        last.reasons.push("the chain's last point".into());
    }
    out
}

/// The plan for `points` (in any order): one decision per point, in the same order.
pub fn plan(points: &[Point], keep: &Keep, tz: &TimeZone) -> Vec<Decision> {
    let mut out: Vec<Decision> = points
        .iter()
        .map(|p| Decision {
            keep: keep.is_empty() || p.protected,
            reasons: if p.protected {
                vec!["protected".to_string()]
            } else if keep.is_empty() {
                vec!["no keep rule".to_string()]
            } else {
                Vec::new()
            },
        })
        .collect();
    if keep.is_empty() {
        return out;
    }
    // Newest first; on equal times, the later in the list first.
    let mut order: Vec<usize> = (0..points.len())
        .filter(|&i| !points[i].protected)
        .collect();
    order.sort_by(|&a, &b| points[b].at.cmp(&points[a].at).then(b.cmp(&a)));
    for (n, &i) in order.iter().take(keep.last as usize).enumerate() {
        out[i].keep = true;
        out[i].reasons.push(format!("last {}", n + 1));
    }
    for (period, count) in [
        (Period::Hour, keep.hourly),
        (Period::Day, keep.daily),
        (Period::Week, keep.weekly),
        (Period::Month, keep.monthly),
        (Period::Year, keep.yearly),
    ] {
        let mut left = count;
        let mut last: Option<String> = None;
        for &i in &order {
            if left == 0 {
                break;
            }
            let key = period.of(points[i].at, tz);
            if last.as_ref() != Some(&key) {
                out[i].keep = true;
                out[i].reasons.push(format!("{} {key}", period.name()));
                last = Some(key);
                left -= 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `2026-11-30T10:00:00Z` and so on, as epoch seconds.
    fn at(text: &str) -> i64 {
        text.parse::<Timestamp>().expect("time").as_second()
    }

    fn points(times: &[&str]) -> Vec<Point> {
        times
            .iter()
            .map(|t| Point {
                at: at(t),
                protected: false,
            })
            .collect()
    }

    /// Which points stay, as a string of K (keep) and - (go), in the given order.
    fn shape(d: &[Decision]) -> String {
        d.iter().map(|d| if d.keep { 'K' } else { '-' }).collect()
    }

    const HOURS: &[&str] = &[
        "2026-11-28T09:00:00Z",
        "2026-11-28T21:00:00Z",
        "2026-11-29T08:00:00Z",
        "2026-11-29T08:30:00Z",
        "2026-11-29T20:00:00Z",
        "2026-11-30T07:00:00Z",
        "2026-11-30T07:10:00Z",
    ];

    #[test]
    fn keep_rules_from_a_table() {
        let utc = TimeZone::UTC;
        for (keep, want) in [
            (Keep::default(), "KKKKKKK"),
            (
                Keep {
                    last: 2,
                    ..Keep::default()
                },
                "-----KK",
            ),
            (
                Keep {
                    last: 10,
                    ..Keep::default()
                },
                "KKKKKKK",
            ),
            // The newest of each day, for the last 2 days with a point.
            (
                Keep {
                    daily: 2,
                    ..Keep::default()
                },
                "----K-K",
            ),
            (
                Keep {
                    daily: 5,
                    ..Keep::default()
                },
                "-K--K-K",
            ),
            // Hours: 30th 07h, 29th 20h, 29th 08h (the 08:30 one).
            (
                Keep {
                    hourly: 3,
                    ..Keep::default()
                },
                "---KK-K",
            ),
            // last 1 and daily 2 overlap on the newest; each rule sees every point.
            (
                Keep {
                    last: 1,
                    daily: 2,
                    ..Keep::default()
                },
                "----K-K",
            ),
            (
                Keep {
                    last: 2,
                    daily: 3,
                    ..Keep::default()
                },
                "-K--KKK",
            ),
            (
                Keep {
                    weekly: 1,
                    yearly: 1,
                    ..Keep::default()
                },
                "------K",
            ),
        ] {
            assert_eq!(shape(&plan(&points(HOURS), &keep, &utc)), want, "{keep:?}");
        }
    }

    #[test]
    fn weeks_months_and_years() {
        let utc = TimeZone::UTC;
        let times = [
            "2024-12-30T12:00:00Z", // ISO week 2025-W01
            "2025-01-05T12:00:00Z", // 2025-W01 too
            "2025-01-06T12:00:00Z", // 2025-W02
            "2025-06-15T12:00:00Z",
            "2025-06-20T12:00:00Z",
            "2026-01-01T12:00:00Z",
        ];
        for (keep, want) in [
            (
                Keep {
                    weekly: 10,
                    ..Keep::default()
                },
                "-KKKKK",
            ),
            (
                Keep {
                    monthly: 10,
                    ..Keep::default()
                },
                "K-K-KK",
            ),
            (
                Keep {
                    yearly: 10,
                    ..Keep::default()
                },
                "K---KK",
            ),
        ] {
            assert_eq!(shape(&plan(&points(&times), &keep, &utc)), want, "{keep:?}");
        }
        let d = plan(
            &points(&times),
            &Keep {
                weekly: 1,
                monthly: 1,
                ..Keep::default()
            },
            &utc,
        );
        assert_eq!(d[5].reasons, ["weekly 2026-W01", "monthly 2026-01"]);
    }

    #[test]
    fn the_chain_s_last_point_always_stays() {
        // The last in chain order is older than another point by its time (a clock moved):
        // the plan alone would drop it; the chain's plan keeps it.
        let p = points(&[
            "2026-11-30T09:00:00Z",
            "2026-11-30T12:00:00Z",
            "2026-11-30T10:00:00Z",
        ]);
        let keep = Keep {
            daily: 1,
            ..Keep::default()
        };
        assert_eq!(shape(&plan(&p, &keep, &TimeZone::UTC)), "-K-");
        let d = plan_chain(&p, &keep, &TimeZone::UTC);
        assert_eq!(shape(&d), "-KK");
        assert_eq!(d[2].reasons, ["the chain's last point"]);
    }

    #[test]
    fn protected_points_stay_and_count_for_nothing() {
        let utc = TimeZone::UTC;
        let mut p = points(HOURS);
        p[6].protected = true;
        p[0].protected = true;
        let d = plan(
            &p,
            &Keep {
                last: 1,
                ..Keep::default()
            },
            &utc,
        );
        assert_eq!(shape(&d), "K----KK");
        assert_eq!(d[6].reasons, ["protected"]);
        assert_eq!(d[5].reasons, ["last 1"]);
    }

    #[test]
    fn days_are_the_time_zone_s() {
        // 23:30 UTC on the 29th is the 30th at UTC+1: one day there, two in UTC.
        let p = points(&["2026-11-29T23:30:00Z", "2026-11-30T10:00:00Z"]);
        let keep = Keep {
            daily: 2,
            ..Keep::default()
        };
        assert_eq!(shape(&plan(&p, &keep, &TimeZone::UTC)), "KK");
        let east = TimeZone::fixed(jiff::tz::offset(1));
        assert_eq!(shape(&plan(&p, &keep, &east)), "-K");
    }
}
