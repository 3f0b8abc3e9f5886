//! Cron schedules of prune policies: a crontab expression and a time zone.
//!
//! Accepted: the 5-field crontab form (`minute hour day-of-month month day-of-week`), the
//! same with a leading seconds field (6 fields), and `@yearly` (`@annually`), `@monthly`,
//! `@weekly`, `@daily` (`@midnight`), `@hourly`. Fields mean what crontab(5) says they mean:
//! day-of-week runs 0 to 7, where 0 and 7 are Sunday (names `Sun`…`Sat` work too), and when
//! both day-of-month and day-of-week are restricted, a day matching **either** fires
//! (`0 0 13 * 5` runs on every 13th and every Friday). Instants are wall-clock times in the
//! schedule's time zone (an IANA name such as `Europe/Paris`; `UTC` by default): a time the
//! clock skips (spring forward) fires at the first wall-clock time after the gap, and a time
//! the clock passes twice (fall back) fires once, the first time.
//!
//! Evaluation is the `croner` crate's, which follows the POSIX/Vixie cron rules above;
//! `@reboot` means nothing to a policy and is refused, as is an expression no date matches.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

/// Longest expression accepted, in bytes.
pub const MAX_EXPRESSION_LEN: usize = 200;

/// A checked schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: croner::Cron,
    tz: Tz,
}

impl Schedule {
    /// Parses `expression` in time zone `timezone`; the error says which of the two is wrong
    /// (`Err((field, reason))`, field `schedule` or `timezone`).
    pub fn parse(expression: &str, timezone: &str) -> Result<Schedule, (&'static str, String)> {
        let tz = time_zone(timezone)?;
        if expression.len() > MAX_EXPRESSION_LEN {
            return Err(("schedule", format!("at most {MAX_EXPRESSION_LEN} bytes")));
        }
        let text = expression.trim();
        let text = match text {
            "@midnight" => "@daily",
            "@reboot" => {
                return Err((
                    "schedule",
                    "@reboot has no meaning for a prune policy; give a time, such as @daily"
                        .to_owned(),
                ));
            }
            macro_
                if macro_.starts_with('@')
                    && ![
                        "@yearly",
                        "@annually",
                        "@monthly",
                        "@weekly",
                        "@daily",
                        "@hourly",
                    ]
                    .contains(&macro_) =>
            {
                return Err((
                    "schedule",
                    format!(
                        "unknown macro `{}` (@yearly, @monthly, @weekly, @daily, @hourly)",
                        super::validate::clip(macro_)
                    ),
                ));
            }
            other => other,
        };
        let fields = text.split_whitespace().count();
        if !text.starts_with('@') && !(5..=6).contains(&fields) {
            return Err((
                "schedule",
                format!(
                    "{fields} fields; expected 5 (minute hour day month weekday) or 6 (seconds \
                     first)"
                ),
            ));
        }
        let cron = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Optional)
            .year(croner::parser::Year::Disallowed)
            // `3/2` (from 3, every 2), as cronie reads it and as policies stored before
            // croner was used may say.
            .sloppy_ranges(true)
            .build()
            .parse(text)
            .map_err(|e| ("schedule", format!("not a cron expression: {e}")))?;
        let schedule = Schedule { cron, tz };
        // An expression no date matches (`0 0 30 2 *`) would be accepted and never run. Any
        // date that matches at all comes round within a 28-year calendar cycle of 2001.
        let epoch = DateTime::from_timestamp(978_307_200, 0).expect("2001-01-01 is a time");
        let cycle_end =
            DateTime::from_timestamp(978_307_200 + 29 * 366 * 86_400, 0).expect("a time in 2030");
        if schedule
            .next_after(epoch)
            .is_none_or(|first| first > cycle_end)
        {
            return Err((
                "schedule",
                format!(
                    "`{}` matches no date, so it would never run",
                    super::validate::clip(text)
                ),
            ));
        }
        Ok(schedule)
    }

    /// The last instant strictly before `t`.
    pub fn latest_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_previous_occurrence(&t.with_timezone(&self.tz), false)
            .ok()
            .map(|d| d.with_timezone(&Utc))
    }

    /// The first instant strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_next_occurrence(&t.with_timezone(&self.tz), false)
            .ok()
            .map(|d| d.with_timezone(&Utc))
    }
}

/// The IANA time zone `name`; the error names the `timezone` field.
pub fn time_zone(name: &str) -> Result<Tz, (&'static str, String)> {
    Tz::from_str(name).map_err(|_| {
        (
            "timezone",
            format!(
                "unknown time zone `{}` (an IANA name such as UTC or Europe/Paris)",
                super::validate::clip(name)
            ),
        )
    })
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

    /// Next fire times of crontab expressions, checked against an independent evaluator
    /// (Python's croniter, which follows Vixie cron: day-of-month OR day-of-week) and
    /// against the calendar by hand: (expression, time zone, after, next).
    const NEXT: &[(&str, &str, &str, &str)] = &[
        // Both day fields restricted: either one fires.
        (
            "0 0 13 * 5",
            "UTC",
            "2026-12-07T12:00:00Z",
            "2026-12-11T00:00:00Z",
        ),
        (
            "0 0 13 * 5",
            "UTC",
            "2026-12-11T00:00:00Z",
            "2026-12-13T00:00:00Z",
        ),
        (
            "0 0 1,15 * 1",
            "UTC",
            "2026-12-07T12:00:00Z",
            "2026-12-14T00:00:00Z",
        ),
        (
            "30 4 1 * 0",
            "UTC",
            "2026-12-07T12:00:00Z",
            "2026-12-13T04:30:00Z",
        ),
        (
            "0 0 31 * 3",
            "UTC",
            "2026-12-07T12:00:00Z",
            "2026-12-09T00:00:00Z",
        ),
        (
            "0 0 1-7 * 1",
            "UTC",
            "2026-12-07T12:00:00Z",
            "2026-12-14T00:00:00Z",
        ),
        (
            "0 8 1 * mon-fri",
            "UTC",
            "2026-12-07T12:00:00Z",
            "2026-12-08T08:00:00Z",
        ),
        // The month still restricts both: a Monday or the 29th, of February.
        (
            "0 0 29 2 1",
            "UTC",
            "2026-12-07T12:00:00Z",
            "2027-02-01T00:00:00Z",
        ),
        // One day field restricted.
        (
            "0 0 29 2 *",
            "UTC",
            "2026-12-07T12:00:00Z",
            "2028-02-29T00:00:00Z",
        ),
        (
            "0 0 31 * *",
            "UTC",
            "2026-12-07T12:00:00Z",
            "2026-12-31T00:00:00Z",
        ),
        (
            "0 0 */10 * *",
            "UTC",
            "2026-12-07T12:00:00Z",
            "2026-12-11T00:00:00Z",
        ),
        (
            "0 12 * * 7",
            "UTC",
            "2026-12-07T12:00:00Z",
            "2026-12-13T12:00:00Z",
        ),
        (
            "0 12 * * 0",
            "UTC",
            "2026-12-07T12:00:00Z",
            "2026-12-13T12:00:00Z",
        ),
        (
            "0 3 * * sun",
            "UTC",
            "2026-12-07T12:00:00Z",
            "2026-12-13T03:00:00Z",
        ),
        (
            "5 4 * * sat",
            "UTC",
            "2026-12-07T12:00:00Z",
            "2026-12-12T04:05:00Z",
        ),
        (
            "0 0 * * 5-7",
            "UTC",
            "2026-12-07T12:00:00Z",
            "2026-12-11T00:00:00Z",
        ),
        (
            "0 9-17 * * 1-5",
            "UTC",
            "2026-12-07T12:00:00Z",
            "2026-12-07T13:00:00Z",
        ),
        (
            "0 22 * * 1-5",
            "UTC",
            "2026-12-07T12:00:00Z",
            "2026-12-07T22:00:00Z",
        ),
        (
            "0 0 * * *",
            "UTC",
            "2026-12-07T12:00:00Z",
            "2026-12-08T00:00:00Z",
        ),
        (
            "*/15 * * * *",
            "UTC",
            "2026-12-07T12:00:00Z",
            "2026-12-07T12:15:00Z",
        ),
        (
            "0 0 1 1 *",
            "UTC",
            "2026-12-07T12:00:00Z",
            "2027-01-01T00:00:00Z",
        ),
        (
            "0 0 * 6 *",
            "UTC",
            "2026-12-07T12:00:00Z",
            "2027-06-01T00:00:00Z",
        ),
        (
            "@weekly",
            "UTC",
            "2026-12-07T12:00:00Z",
            "2026-12-13T00:00:00Z",
        ),
        (
            "@monthly",
            "UTC",
            "2026-12-07T12:00:00Z",
            "2027-01-01T00:00:00Z",
        ),
        (
            "@yearly",
            "UTC",
            "2026-12-07T12:00:00Z",
            "2027-01-01T00:00:00Z",
        ),
        (
            "@hourly",
            "UTC",
            "2026-12-07T12:00:00Z",
            "2026-12-07T13:00:00Z",
        ),
        // Six fields: seconds first, the same day rules.
        (
            "30 0 0 13 * 5",
            "UTC",
            "2026-12-07T12:00:00Z",
            "2026-12-11T00:00:30Z",
        ),
        (
            "0 0 0 13 * 5",
            "UTC",
            "2026-12-11T00:00:00Z",
            "2026-12-13T00:00:00Z",
        ),
        (
            "*/10 * * * * *",
            "UTC",
            "2026-12-07T12:00:00Z",
            "2026-12-07T12:00:10Z",
        ),
        // Wall-clock times of a time zone across its DST changes. Paris springs forward on
        // 2027-03-28 (02:00 CET -> 03:00 CEST): 02:30 does not exist that day and fires at
        // the first time after the gap; on 2026-10-25 it falls back (03:00 CEST -> 02:00
        // CET): 02:30 happens twice and fires once, the first time.
        (
            "30 2 * * *",
            "Europe/Paris",
            "2027-03-27T12:00:00Z",
            "2027-03-28T01:00:00Z",
        ),
        (
            "30 2 * * *",
            "Europe/Paris",
            "2027-03-28T01:00:00Z",
            "2027-03-29T00:30:00Z",
        ),
        (
            "0 3 * * *",
            "Europe/Paris",
            "2027-03-27T12:00:00Z",
            "2027-03-28T01:00:00Z",
        ),
        (
            "30 2 * * *",
            "Europe/Paris",
            "2026-10-24T12:00:00Z",
            "2026-10-25T00:30:00Z",
        ),
        (
            "30 2 * * *",
            "Europe/Paris",
            "2026-10-25T00:30:00Z",
            "2026-10-26T01:30:00Z",
        ),
        (
            "0 0 13 * 5",
            "Europe/Paris",
            "2026-12-07T12:00:00Z",
            "2026-12-10T23:00:00Z",
        ),
        // Every hour is every absolute hour, the repeated one included.
        (
            "0 * * * *",
            "Europe/Paris",
            "2026-10-25T00:30:00Z",
            "2026-10-25T01:00:00Z",
        ),
        (
            "0 * * * *",
            "Europe/Paris",
            "2026-10-25T01:00:00Z",
            "2026-10-25T02:00:00Z",
        ),
    ];

    #[test]
    fn next_fire_times_follow_crontab() {
        let time = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        for (expr, tz, after, next) in NEXT {
            let s = Schedule::parse(expr, tz).unwrap_or_else(|e| panic!("{expr}: {e:?}"));
            assert_eq!(
                s.next_after(time(after)),
                Some(time(next)),
                "{expr} in {tz} after {after}"
            );
            // And back: the latest instant before `next` comes no later than `after`.
            let before = s.latest_before(time(next)).unwrap();
            assert!(
                before <= time(after),
                "{expr} in {tz}: {before} before {next}"
            );
        }
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
