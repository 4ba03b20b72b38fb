//! Five-field cron schedules (`minute hour day-of-month month day-of-week`, in UTC), as
//! Kubernetes CronJobs take them: `*`, numbers, ranges `a-b`, steps `*/n` and `a-b/n`, lists
//! `a,b`, and the macros `@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly`. As in cron, a day
//! matches when day-of-month or day-of-week matches if both are restricted. Names (JAN, MON) are
//! not supported.

use k8s_openapi::jiff::civil::DateTime;
use k8s_openapi::jiff::{Timestamp, ToSpan, tz::TimeZone};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    /// Whether day-of-month and day-of-week were both restricted (then either may match).
    either_day: bool,
}

impl std::str::FromStr for Schedule {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let expanded = match text.trim() {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            other => other,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        let [m, h, dom, mon, dow] = fields[..] else {
            return Err(format!(
                "{text:?} is not a cron schedule: it needs five fields (minute hour day-of-month month day-of-week), for example \"0 3 * * *\""
            ));
        };
        let weekdays = field(dow, 0, 7, "day-of-week")?;
        // 7 is Sunday too.
        let weekdays = (weekdays | (weekdays >> 7)) & 0x7f;
        Ok(Schedule {
            minutes: field(m, 0, 59, "minute")?,
            hours: field(h, 0, 23, "hour")?,
            days: field(dom, 1, 31, "day-of-month")?,
            months: field(mon, 1, 12, "month")?,
            weekdays,
            either_day: dom != "*" && dow != "*",
        })
    }
}

/// The set of values `text` names, as a bit mask.
fn field(text: &str, min: u32, max: u32, what: &str) -> Result<u64, String> {
    let bad = |why: &str| format!("cron {what} field {text:?}: {why}");
    let mut mask = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (
                r,
                s.parse::<u32>()
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| bad("a step must be a positive number"))?,
            ),
            None => (part, 1),
        };
        let num = |s: &str| {
            s.parse::<u32>()
                .ok()
                .filter(|v| (min..=max).contains(v))
                .ok_or_else(|| bad(&format!("values go from {min} to {max}")))
        };
        let (from, to) = match range {
            "*" => (min, max),
            r => match r.split_once('-') {
                Some((a, b)) => (num(a)?, num(b)?),
                // `a/n` runs from a to the end, as in cron (Saturday for day-of-week: 7 is only
                // another name for Sunday).
                None if part.contains('/') => (
                    num(r)?,
                    max.min(if what == "day-of-week" { 6 } else { max }),
                ),
                None => {
                    let v = num(r)?;
                    (v, v)
                }
            },
        };
        if from > to {
            return Err(bad("a range must go upwards"));
        }
        let mut v = from;
        while v <= to {
            mask |= 1 << v;
            v += step;
        }
    }
    Ok(mask)
}

impl Schedule {
    fn matches(&self, t: DateTime) -> bool {
        let bit = |mask: u64, v: i8| mask & (1 << v) != 0;
        let dom = bit(self.days, t.day());
        let dow = bit(self.weekdays, t.weekday().to_sunday_zero_offset());
        let day = if self.either_day {
            dom || dow
        } else {
            dom && dow
        };
        bit(self.minutes, t.minute())
            && bit(self.hours, t.hour())
            && bit(self.months, t.month())
            && day
    }

    /// The first time after `after` (UTC, to the minute) the schedule fires, within five years
    /// (a schedule such as February 31st never does).
    pub fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        let start = after.to_zoned(TimeZone::UTC).datetime();
        let mut t = start
            .with()
            .second(0)
            .subsec_nanosecond(0)
            .build()
            .ok()?
            .checked_add(1.minute())
            .ok()?;
        let limit = start.checked_add(5.years()).ok()?;
        while t < limit {
            if !bit_set(self.months, t.month()) {
                // Skip to the first day of the next month.
                t = t
                    .first_of_month()
                    .checked_add(1.month())
                    .ok()?
                    .with()
                    .hour(0)
                    .minute(0)
                    .build()
                    .ok()?;
                continue;
            }
            if self.matches(t) {
                return t.to_zoned(TimeZone::UTC).ok().map(|z| z.timestamp());
            }
            t = if bit_set(self.hours, t.hour()) {
                t.checked_add(1.minute()).ok()?
            } else {
                t.with()
                    .minute(0)
                    .build()
                    .ok()?
                    .checked_add(1.hour())
                    .ok()?
            };
        }
        None
    }

    /// The last time at or before `now` the schedule fired after `since`: what a controller that
    /// was away should run now (only the latest of several missed ones).
    pub fn latest_due(&self, since: Timestamp, now: Timestamp) -> Option<Timestamp> {
        let mut due = None;
        // Far enough back for a yearly schedule; it bounds the walk for frequent ones.
        let mut t = since.max(now.checked_sub((400 * 24).hours()).unwrap_or(since));
        while let Some(next) = self.next_after(t) {
            if next > now {
                break;
            }
            due = Some(next);
            t = next;
        }
        due
    }
}

fn bit_set(mask: u64, v: i8) -> bool {
    mask & (1 << v) != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn next(schedule: &str, after: &str) -> String {
        schedule
            .parse::<Schedule>()
            .unwrap()
            .next_after(at(after))
            .map(|t| t.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn next_times_follow_cron() {
        assert_eq!(
            next("* * * * *", "2026-12-02T10:00:30Z"),
            "2026-12-02T10:01:00Z"
        );
        assert_eq!(
            next("0 3 * * *", "2026-12-02T03:00:00Z"),
            "2026-12-03T03:00:00Z"
        );
        assert_eq!(
            next("*/15 * * * *", "2026-12-02T10:14:59Z"),
            "2026-12-02T10:15:00Z"
        );
        assert_eq!(
            next("@hourly", "2026-12-31T23:30:00Z"),
            "2027-01-01T00:00:00Z"
        );
        assert_eq!(
            next("30 2 1 * *", "2026-12-02T00:00:00Z"),
            "2027-01-01T02:30:00Z"
        );
        // 2026-12-06 is a Sunday; 7 is Sunday as well as 0.
        assert_eq!(
            next("0 0 * * 0", "2026-12-02T00:00:00Z"),
            "2026-12-06T00:00:00Z"
        );
        assert_eq!(
            next("0 0 * * 7", "2026-12-02T00:00:00Z"),
            "2026-12-06T00:00:00Z"
        );
        // Day-of-month or day-of-week when both are restricted: the 13th, or a Friday (the 4th).
        assert_eq!(
            next("0 0 13 * 5", "2026-12-02T00:00:00Z"),
            "2026-12-04T00:00:00Z"
        );
        assert_eq!(
            next("0 9-17/4 * * 1-5", "2026-12-04T17:00:00Z"),
            "2026-12-07T09:00:00Z"
        );
        assert_eq!(
            next("0 0 29 2 *", "2026-03-01T00:00:00Z"),
            "2028-02-29T00:00:00Z"
        );
        assert_eq!(next("0 0 31 2 *", "2026-03-01T00:00:00Z"), "");
    }

    #[test]
    fn a_monthly_run_missed_for_weeks_is_still_made_up() {
        let s: Schedule = "@monthly".parse().unwrap();
        let due = s.latest_due(at("2026-11-20T00:00:00Z"), at("2026-12-10T00:00:00Z"));
        assert_eq!(due, Some(at("2026-12-01T00:00:00Z")));
        // `1/2` in day-of-week is Monday, Wednesday, Friday: not Sunday.
        assert_eq!(
            next("0 0 * * 1/2", "2026-12-05T00:00:00Z"),
            "2026-12-07T00:00:00Z"
        );
    }

    #[test]
    fn only_the_latest_missed_run_is_due() {
        let s: Schedule = "0 * * * *".parse().unwrap();
        let due = s.latest_due(at("2026-12-02T10:30:00Z"), at("2026-12-02T13:10:00Z"));
        assert_eq!(due, Some(at("2026-12-02T13:00:00Z")));
        assert_eq!(
            s.latest_due(at("2026-12-02T13:00:00Z"), at("2026-12-02T13:59:00Z")),
            None
        );
    }

    #[test]
    fn mistakes_are_refused_with_what_is_wrong() {
        for (bad, says) in [
            ("* * * *", "five fields"),
            ("60 * * * *", "from 0 to 59"),
            ("* * 0 * *", "from 1 to 31"),
            ("*/0 * * * *", "positive"),
            ("5-1 * * * *", "upwards"),
            ("* * * JAN *", "from 1 to 12"),
        ] {
            let e = bad.parse::<Schedule>().unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
