//! Cron schedules of prune policies: a crontab expression and a time zone.
//!
//! Accepted: the 5-field crontab form (`minute hour day-of-month month day-of-week`), the
//! same with a leading seconds field (6 fields), and `@yearly`, `@monthly`, `@weekly`,
//! `@daily`, `@hourly`. Day-of-week numbers are crontab's in both forms: 0 to 7, where 0
//! and 7 are Sunday (names `Sun`…`Sat` work too). Instants are wall-clock times in the
//! schedule's time zone (an IANA name such as `Europe/Paris`; `UTC` by default).
//!
//! Evaluation is the `cron` crate's, whose own day-of-week numbers run 1 (Sunday) to 7; the
//! day-of-week field is renumbered before it is handed over.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

/// Longest expression accepted, in bytes.
pub const MAX_EXPRESSION_LEN: usize = 200;

/// A checked schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: cron::Schedule,
    tz: Tz,
}

impl Schedule {
    /// Parses `expression` in time zone `timezone`; the error says which of the two is wrong
    /// (`Err((field, reason))`, field `schedule` or `timezone`).
    pub fn parse(expression: &str, timezone: &str) -> Result<Schedule, (&'static str, String)> {
        let tz: Tz = timezone.parse().map_err(|_| {
            (
                "timezone",
                format!(
                    "unknown time zone `{timezone}` (an IANA name such as UTC or Europe/Paris)"
                ),
            )
        })?;
        if expression.len() > MAX_EXPRESSION_LEN {
            return Err(("schedule", format!("at most {MAX_EXPRESSION_LEN} bytes")));
        }
        let text = to_cron_crate(expression.trim()).map_err(|r| ("schedule", r))?;
        let cron = cron::Schedule::from_str(&text)
            .map_err(|e| ("schedule", format!("not a cron expression: {e}")))?;
        // An expression no date matches (`0 0 30 2 *`) would be accepted and never run. Any
        // date that matches at all comes round within a 28-year calendar cycle of 2001.
        let epoch = DateTime::from_timestamp(978_307_200, 0).expect("2001-01-01 is a time");
        let cycle_end =
            DateTime::from_timestamp(978_307_200 + 29 * 366 * 86_400, 0).expect("a time in 2030");
        if cron
            .after(&epoch.with_timezone(&tz))
            .next()
            .is_none_or(|first| first.with_timezone(&Utc) > cycle_end)
        {
            return Err((
                "schedule",
                format!(
                    "`{}` matches no date, so it would never run",
                    expression.trim()
                ),
            ));
        }
        Ok(Schedule { cron, tz })
    }

    /// The last instant strictly before `t`.
    pub fn latest_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .after(&t.with_timezone(&self.tz))
            .next_back()
            .map(|d| d.with_timezone(&Utc))
    }

    /// The first instant strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .after(&t.with_timezone(&self.tz))
            .next()
            .map(|d| d.with_timezone(&Utc))
    }
}

/// The IANA time zone `name`; the error names the `timezone` field.
pub fn time_zone(name: &str) -> Result<Tz, (&'static str, String)> {
    name.parse().map_err(|_| {
        (
            "timezone",
            format!("unknown time zone `{name}` (an IANA name such as UTC or Europe/Paris)"),
        )
    })
}

/// A crontab expression in the `cron` crate's form: six fields (seconds first) or a macro,
/// with the day-of-week field renumbered.
fn to_cron_crate(expression: &str) -> Result<String, String> {
    if expression.starts_with('@') {
        return match expression {
            "@yearly" | "@annually" | "@monthly" | "@weekly" | "@daily" | "@midnight"
            | "@hourly" => Ok(expression.replace("@midnight", "@daily")),
            other => Err(format!(
                "unknown macro `{other}` (@yearly, @monthly, @weekly, @daily, @hourly)"
            )),
        };
    }
    let mut fields: Vec<&str> = expression.split_whitespace().collect();
    match fields.len() {
        5 => fields.insert(0, "0"),
        6 => {}
        n => {
            return Err(format!(
                "{n} fields; expected 5 (minute hour day month weekday) or 6 (seconds first)"
            ));
        }
    }
    let dow = weekdays(fields[5])?;
    fields[5] = &dow;
    Ok(fields.join(" "))
}

/// Renumbers a crontab day-of-week field (0–7, Sunday 0 and 7) to the `cron` crate's
/// (1–7, Sunday 1). Names, `*` and `?` pass through.
fn weekdays(field: &str) -> Result<String, String> {
    let bad = || format!("bad day of week `{field}` (0-7 or Sun-Sat, 0 and 7 are Sunday)");
    let day = |s: &str| -> Result<Option<u32>, String> {
        if s.chars().all(|c| c.is_ascii_digit()) {
            match s.parse::<u32>() {
                Ok(n) if n <= 7 => Ok(Some(n)),
                _ => Err(bad()),
            }
        } else {
            Ok(None)
        }
    };
    let mut out = Vec::new();
    for item in field.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => (r, Some(s)),
            None => (item, None),
        };
        let renumbered = match range.split_once('-') {
            Some((a, b)) => match (day(a)?, day(b)?) {
                (Some(a), Some(b)) if a > b => return Err(bad()),
                // 7 is Sunday again: a range ending there wraps past Saturday.
                (Some(a), Some(7)) if step.is_none() && a > 0 => {
                    format!("{}-7,1", a + 1)
                }
                (Some(_), Some(7)) => return Err(format!("{}: end the range at 6", bad())),
                (Some(a), Some(b)) => format!("{}-{}", a + 1, b + 1),
                (None, None) => range.to_owned(),
                _ => return Err(bad()),
            },
            None => match day(range)? {
                Some(n) => (n % 7 + 1).to_string(),
                None => range.to_owned(),
            },
        };
        out.push(match step {
            Some(s) => format!("{renumbered}/{s}"),
            None => renumbered,
        });
    }
    Ok(out.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Datelike, TimeZone, Timelike, Weekday};

    /// Monday 2026-11-23 12:00 UTC.
    fn monday_noon() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0).unwrap()
    }

    fn next(expr: &str) -> DateTime<Utc> {
        Schedule::parse(expr, "UTC")
            .unwrap()
            .next_after(monday_noon())
            .unwrap()
    }

    fn at(d: u32, h: u32, m: u32, sec: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, d, h, m, sec).unwrap()
    }

    #[test]
    fn five_fields_are_crontab_with_sunday_as_0_or_7() {
        assert_eq!(next("0 3 * * 1"), at(30, 3, 0, 0));
        assert_eq!(next("0 3 * * 1").weekday(), Weekday::Mon);
        assert_eq!(next("0 3 * * 0"), at(29, 3, 0, 0));
        assert_eq!(next("0 3 * * 7"), at(29, 3, 0, 0));
        assert_eq!(next("0 3 * * Sun"), at(29, 3, 0, 0));
        assert_eq!(next("30 13 * * *"), at(23, 13, 30, 0));
    }

    #[test]
    fn weekday_ranges_lists_and_steps_keep_their_crontab_meaning() {
        assert_eq!(next("0 3 * * 1-5"), at(24, 3, 0, 0));
        assert_eq!(next("0 3 * * 5-7"), at(27, 3, 0, 0));
        assert_eq!(next("0 3 * * 0,6"), at(28, 3, 0, 0));
        // Every other day from Sunday: Sun, Tue, Thu, Sat.
        assert_eq!(next("0 3 * * */2"), at(24, 3, 0, 0));
        assert_eq!(next("0 3 * * 3/2").weekday(), Weekday::Wed);
    }

    #[test]
    fn six_fields_start_with_seconds_and_macros_work() {
        assert_eq!(next("*/1 * * * * *"), at(23, 12, 0, 1));
        assert_eq!(next("15 0 3 * * *"), at(24, 3, 0, 15));
        assert_eq!(next("@daily"), at(24, 0, 0, 0));
        assert_eq!(next("@hourly"), at(23, 13, 0, 0));
        assert_eq!(next("@weekly").weekday(), Weekday::Sun);
    }

    #[test]
    fn the_latest_instant_before_a_time_is_found_without_walking_from_the_start() {
        let daily = Schedule::parse("0 3 * * *", "UTC").unwrap();
        assert_eq!(daily.latest_before(monday_noon()), Some(at(23, 3, 0, 0)));
        assert_eq!(daily.latest_before(at(23, 3, 0, 0)), Some(at(22, 3, 0, 0)));
        let every_second = Schedule::parse("* * * * * *", "UTC").unwrap();
        assert_eq!(
            every_second.latest_before(monday_noon()),
            Some(at(23, 11, 59, 59))
        );
    }

    #[test]
    fn times_are_wall_clock_times_of_the_time_zone() {
        let paris = Schedule::parse("0 3 * * *", "Europe/Paris").unwrap();
        // 03:00 in Paris in November (UTC+1).
        assert_eq!(paris.next_after(monday_noon()), Some(at(24, 2, 0, 0)));
        assert_eq!(paris.next_after(monday_noon()).unwrap().hour(), 2);
    }

    #[test]
    fn errors_name_the_schedule_or_the_time_zone() {
        let field = |e: &str, tz: &str| Schedule::parse(e, tz).unwrap_err().0;
        assert_eq!(field("0 3 * *", "UTC"), "schedule");
        assert_eq!(field("0 3 * * 8", "UTC"), "schedule");
        assert_eq!(field("0 3 * * 5-2", "UTC"), "schedule");
        assert_eq!(field("61 * * * *", "UTC"), "schedule");
        assert_eq!(field("@reboot", "UTC"), "schedule");
        // Dates that never come: refused instead of stored with no next run.
        for never in ["0 0 30 2 *", "0 0 31 4 *", "0 0 31 11 *", "0 0 0 30 2 *"] {
            assert_eq!(field(never, "UTC"), "schedule", "{never}");
        }
        // 29 February does come.
        assert!(Schedule::parse("0 0 29 2 *", "UTC").is_ok());
        assert_eq!(field("0 3 * * *", "Mars/Olympus"), "timezone");
    }
}
