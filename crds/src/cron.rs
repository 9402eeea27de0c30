//! Five-field cron schedules as Kubernetes CronJobs write them (`minute hour day-of-month
//! month day-of-week`, with `*`, `a-b`, `a,b`, `*/n`, `a-b/n`, and `@hourly`-style
//! shorthands), parsed and stepped in UTC. Pure.

use chrono::{DateTime, Datelike, Duration, Timelike, Utc};

/// A parsed schedule: the allowed values of each field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    minutes: Vec<u32>,
    hours: Vec<u32>,
    days: Vec<u32>,
    months: Vec<u32>,
    weekdays: Vec<u32>,
    /// Both day fields restricted: a day matches either (cron's rule).
    either_day: bool,
}

fn field(text: &str, min: u32, max: u32, name: &str) -> Result<Vec<u32>, String> {
    let mut out = Vec::new();
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (
                r,
                s.parse::<u32>()
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| format!("{name}: bad step in `{part}`"))?,
            ),
            None => (part, 1),
        };
        let (lo, hi) = if range == "*" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            let a = a
                .parse()
                .map_err(|_| format!("{name}: `{part}` is not a range"))?;
            let b = b
                .parse()
                .map_err(|_| format!("{name}: `{part}` is not a range"))?;
            (a, b)
        } else {
            let v = range
                .parse()
                .map_err(|_| format!("{name}: `{part}` is not a number"))?;
            (v, if part.contains('/') { max } else { v })
        };
        if lo < min || hi > max || lo > hi {
            return Err(format!("{name}: `{part}` is outside {min}-{max}"));
        }
        out.extend((lo..=hi).step_by(step as usize));
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

impl Schedule {
    /// Parses a schedule; the error names the field.
    pub fn parse(text: &str) -> Result<Self, String> {
        let expanded = match text.trim() {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            other => other,
        };
        let parts: Vec<&str> = expanded.split_whitespace().collect();
        let [m, h, dom, mon, dow] = parts.as_slice() else {
            return Err(format!(
                "`{text}` needs 5 fields (minute hour day-of-month month day-of-week)"
            ));
        };
        let mut weekdays = field(dow, 0, 7, "day-of-week")?;
        if weekdays.contains(&7) {
            weekdays.retain(|d| *d != 7);
            if !weekdays.contains(&0) {
                weekdays.insert(0, 0);
            }
        }
        Ok(Self {
            minutes: field(m, 0, 59, "minute")?,
            hours: field(h, 0, 23, "hour")?,
            days: field(dom, 1, 31, "day-of-month")?,
            months: field(mon, 1, 12, "month")?,
            weekdays,
            either_day: *dom != "*" && *dow != "*",
        })
    }

    fn day_matches(&self, t: &DateTime<Utc>) -> bool {
        let dom = self.days.contains(&t.day());
        let dow = self.weekdays.contains(&t.weekday().num_days_from_sunday());
        if self.either_day {
            dom || dow
        } else {
            dom && dow
        }
    }

    /// The first time strictly after `after` that the schedule fires (within 5 years).
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut t = after.with_second(0)?.with_nanosecond(0)? + Duration::minutes(1);
        let end = after + Duration::days(5 * 366);
        while t < end {
            if !self.months.contains(&t.month()) || !self.day_matches(&t) {
                t = (t + Duration::days(1)).with_hour(0)?.with_minute(0)?;
                continue;
            }
            if !self.hours.contains(&t.hour()) {
                t = (t + Duration::hours(1)).with_minute(0)?;
                continue;
            }
            if self.minutes.contains(&t.minute()) {
                return Some(t);
            }
            t += Duration::minutes(1);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn steps_ranges_and_lists() {
        let s = Schedule::parse("*/30 * * * *").unwrap();
        assert_eq!(
            s.next_after(at("2026-11-21T10:07:12Z")),
            Some(at("2026-11-21T10:30:00Z"))
        );
        assert_eq!(
            s.next_after(at("2026-11-21T10:30:00Z")),
            Some(at("2026-11-21T11:00:00Z"))
        );
        let s = Schedule::parse("15 2-4/2 * * 1,5").unwrap();
        // 2026-11-21 is a Saturday: next Monday 02:15.
        assert_eq!(
            s.next_after(at("2026-11-21T10:00:00Z")),
            Some(at("2026-11-23T02:15:00Z"))
        );
        let s = Schedule::parse("@daily").unwrap();
        assert_eq!(
            s.next_after(at("2026-12-31T23:59:00Z")),
            Some(at("2027-01-01T00:00:00Z"))
        );
        // Day-of-month or day-of-week when both are restricted; 7 is Sunday.
        let s = Schedule::parse("0 0 1 * 7").unwrap();
        assert_eq!(
            s.next_after(at("2026-11-21T00:00:00Z")),
            Some(at("2026-11-22T00:00:00Z"))
        );
        assert_eq!(
            Schedule::parse("0 0 30 2 *")
                .unwrap()
                .next_after(at("2026-01-01T00:00:00Z")),
            None,
            "February 30th never comes"
        );
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(
            Schedule::parse("61 * * * *").unwrap_err(),
            "minute: `61` is outside 0-59"
        );
        assert_eq!(
            Schedule::parse("* * * *").unwrap_err(),
            "`* * * *` needs 5 fields (minute hour day-of-month month day-of-week)"
        );
        assert_eq!(
            Schedule::parse("*/0 * * * *").unwrap_err(),
            "minute: bad step in `*/0`"
        );
        assert_eq!(
            Schedule::parse("* * * jan *").unwrap_err(),
            "month: `jan` is not a number"
        );
    }
}
