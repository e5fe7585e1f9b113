//! EventBridge schedule expressions (`rate(...)`, `cron(...)`) and the
//! "Scheduled Event" payload a scheduled Lambda function receives.
//!
//! The rules are AWS's, not Unix cron's: six fields with a year, `?` in exactly
//! one of day-of-month and day-of-week, weekdays numbered 1–7 from Sunday, all
//! times UTC. Validation happens here so that a template EventBridge would
//! reject is rejected locally too, with a message that says why; evaluation is
//! delegated to `croner`, configured for Quartz-style weekdays.
//!
//! This module never reads a clock: callers pass the instant to start from.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Datelike as _, SubsecRound as _, Utc};
use croner::parser::{CronParser, Seconds, Year};

/// The account and region the emulator pretends to run in.
const ACCOUNT: &str = "000000000000";
const REGION: &str = "us-east-1";

/// The years EventBridge accepts in a cron expression.
const FIRST_YEAR: u32 = 1970;
const LAST_YEAR: u32 = 2199;

/// A parsed EventBridge schedule expression.
#[derive(Debug, Clone, PartialEq)]
pub enum ScheduleExpression {
    /// `rate(value unit)`: every `period`, the first one a period after the
    /// schedule starts.
    Rate(Duration),
    /// `cron(minutes hours day-of-month month day-of-week year)`, in UTC.
    Cron(AwsCron),
}

impl ScheduleExpression {
    /// Parses `rate(...)` or `cron(...)` as EventBridge does.
    pub fn parse(s: &str) -> Result<Self, ScheduleError> {
        let text = s.trim();
        let invalid = |reason: String| ScheduleError {
            expression: text.to_owned(),
            reason,
        };
        if let Some(inner) = text
            .strip_prefix("rate(")
            .and_then(|rest| rest.strip_suffix(')'))
        {
            parse_rate(inner).map(Self::Rate).map_err(invalid)
        } else if let Some(inner) = text
            .strip_prefix("cron(")
            .and_then(|rest| rest.strip_suffix(')'))
        {
            AwsCron::parse(inner).map(Self::Cron).map_err(invalid)
        } else if text.starts_with("at(") {
            Err(invalid(
                "one-time `at(...)` schedules belong to EventBridge Scheduler (ScheduleV2), \
                 not to a Schedule event"
                    .to_owned(),
            ))
        } else {
            Err(invalid(
                "expected `rate(value unit)` or `cron(minutes hours day-of-month month day-of-week year)`"
                    .to_owned(),
            ))
        }
    }

    /// The first time the schedule fires strictly after `after`, or `None`
    /// when it never fires again (a cron whose years are all past).
    ///
    /// For a rate this is simply `after + period`: EventBridge fires a rate
    /// schedule the first time one period after it is created, so callers
    /// pass the start time first and then each firing time.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Self::Rate(period) => {
                let period = chrono::Duration::from_std(*period).ok()?;
                after.checked_add_signed(period)
            }
            Self::Cron(cron) => cron.next_after(after),
        }
    }
}

impl FromStr for ScheduleExpression {
    type Err = ScheduleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for ScheduleExpression {
    /// The expression as written, e.g. `rate(1 minute)`. A rate is rendered in
    /// its largest whole unit, so `rate(60 minutes)` displays as `rate(1 hour)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Rate(period) => {
                let minutes = period.as_secs() / 60;
                let (value, unit) = if minutes % (24 * 60) == 0 {
                    (minutes / (24 * 60), "day")
                } else if minutes % 60 == 0 {
                    (minutes / 60, "hour")
                } else {
                    (minutes, "minute")
                };
                let plural = if value == 1 { "" } else { "s" };
                write!(f, "rate({value} {unit}{plural})")
            }
            Self::Cron(cron) => write!(f, "cron({})", cron.fields),
        }
    }
}

/// Why a schedule expression was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid schedule expression `{expression}`: {reason}")]
pub struct ScheduleError {
    expression: String,
    reason: String,
}

impl ScheduleError {
    /// The expression as given.
    pub fn expression(&self) -> &str {
        &self.expression
    }

    /// What is wrong with it, in a sentence.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

/// `value unit`, the inside of `rate(...)`.
fn parse_rate(inner: &str) -> Result<Duration, String> {
    let parts: Vec<&str> = inner.split_whitespace().collect();
    let [value, unit] = parts[..] else {
        return Err("expected `rate(value unit)`, e.g. `rate(5 minutes)`".to_owned());
    };
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("the value `{value}` is not a positive integer"));
    }
    let value: u64 = value
        .parse()
        .map_err(|_| format!("the value `{value}` is too large"))?;
    if value == 0 {
        return Err("the value must be a positive integer, not 0".to_owned());
    }
    let (singular, seconds) = match unit {
        "minute" | "minutes" => ("minute", 60),
        "hour" | "hours" => ("hour", 60 * 60),
        "day" | "days" => ("day", 24 * 60 * 60),
        _ => {
            return Err(format!(
                "unknown unit `{unit}`: expected minute(s), hour(s) or day(s)"
            ))
        }
    };
    let is_singular = unit == singular;
    if value == 1 && !is_singular {
        return Err(format!(
            "use `{singular}`, not `{unit}`, when the value is 1"
        ));
    }
    if value != 1 && is_singular {
        return Err(format!(
            "use `{singular}s`, not `{unit}`, when the value is not 1"
        ));
    }
    value
        .checked_mul(seconds)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("the value `{value}` is too large"))
}

/// A validated AWS cron expression (the six fields inside `cron(...)`).
#[derive(Debug, Clone, PartialEq)]
pub struct AwsCron {
    /// The fields as written, single-spaced.
    fields: String,
    /// The same schedule for croner: a seconds field of `0` in front, names
    /// replaced by numbers, Quartz weekdays. Boxed: it is large, and a
    /// `ScheduleExpression` is passed around by value.
    cron: Box<croner::Cron>,
    /// The last year the year field allows, when it names one.
    last_year: Option<i32>,
}

impl AwsCron {
    /// Parses the inside of `cron(...)`, e.g. `0 12 * * ? *`.
    pub fn parse(inner: &str) -> Result<Self, String> {
        let parts: Vec<&str> = inner.split_whitespace().collect();
        let [minutes, hours, day_of_month, month, day_of_week, year] = parts[..] else {
            return Err(format!(
                "cron needs exactly 6 fields (minutes hours day-of-month month day-of-week year), got {}",
                parts.len()
            ));
        };
        match (day_of_month == "?", day_of_week == "?") {
            (true, true) => {
                return Err(
                    "day-of-month and day-of-week cannot both be `?`: give one of them".to_owned(),
                )
            }
            (false, false) => {
                return Err(
                    "one of day-of-month and day-of-week must be `?` (AWS does not combine them)"
                        .to_owned(),
                )
            }
            _ => {}
        }
        let normalized = [
            normalize(Field::Minutes, minutes)?,
            normalize(Field::Hours, hours)?,
            normalize(Field::DayOfMonth, day_of_month)?,
            normalize(Field::Month, month)?,
            normalize(Field::DayOfWeek, day_of_week)?,
            normalize(Field::Year, year)?,
        ];
        let pattern = format!("0 {}", normalized.join(" "));
        let cron = CronParser::builder()
            .seconds(Seconds::Required)
            .year(Year::Required)
            .alternative_weekdays(true)
            .build()
            .parse(&pattern)
            .map(Box::new)
            .map_err(|e| format!("{e}"))?;
        Ok(Self {
            fields: parts.join(" "),
            cron,
            last_year: last_year(year),
        })
    }

    /// The six fields as written.
    pub fn fields(&self) -> &str {
        &self.fields
    }

    /// The first matching minute strictly after `after`, or `None` if there is
    /// none before the end of year 2199.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if let Some(last) = self.last_year {
            if after.year() > last {
                return None;
            }
        }
        // croner searches from the next whole second; a fraction would be
        // carried into the result.
        let next = self
            .cron
            .find_next_occurrence(&after.trunc_subsecs(0), false)
            .ok()?;
        (next.year() <= LAST_YEAR as i32).then_some(next)
    }
}

#[derive(Debug, Clone, Copy)]
enum Field {
    Minutes,
    Hours,
    DayOfMonth,
    Month,
    DayOfWeek,
    Year,
}

impl Field {
    fn label(self) -> &'static str {
        match self {
            Self::Minutes => "minutes",
            Self::Hours => "hours",
            Self::DayOfMonth => "day-of-month",
            Self::Month => "month",
            Self::DayOfWeek => "day-of-week",
            Self::Year => "year",
        }
    }

    fn range(self) -> (u32, u32) {
        match self {
            Self::Minutes => (0, 59),
            Self::Hours => (0, 23),
            Self::DayOfMonth => (1, 31),
            Self::Month => (1, 12),
            Self::DayOfWeek => (1, 7),
            Self::Year => (FIRST_YEAR, LAST_YEAR),
        }
    }

    /// Names accepted for the values `min..`, in order.
    fn names(self) -> &'static [&'static str] {
        match self {
            Self::Month => &[
                "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
            ],
            Self::DayOfWeek => &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"],
            _ => &[],
        }
    }

    /// A single value (number or name) as a number within the field's range.
    fn value(self, text: &str) -> Result<u32, String> {
        let (min, max) = self.range();
        let label = self.label();
        if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
            let n: u32 = text
                .parse()
                .map_err(|_| format!("{label}: `{text}` is out of range {min}-{max}"))?;
            if n < min || n > max {
                return Err(format!("{label}: {n} is out of range {min}-{max}"));
            }
            return Ok(n);
        }
        let names = self.names();
        match names.iter().position(|n| n.eq_ignore_ascii_case(text)) {
            Some(i) => Ok(min + u32::try_from(i).unwrap_or(u32::MAX - min)),
            None if names.is_empty() => {
                Err(format!("{label}: `{text}` is not a number in {min}-{max}"))
            }
            None => Err(format!(
                "{label}: `{text}` is not a number in {min}-{max} nor one of {}-{}",
                names[0],
                names[names.len() - 1]
            )),
        }
    }
}

/// Checks one field against AWS's rules and rewrites it for croner (names to
/// numbers, `?` to `*`, a lone day-of-week `L` to Saturday).
fn normalize(field: Field, text: &str) -> Result<String, String> {
    let label = field.label();
    if text == "?" {
        // Only day-of-month and day-of-week get here with `?` (checked before).
        return match field {
            Field::DayOfMonth | Field::DayOfWeek => Ok("*".to_owned()),
            _ => Err(format!(
                "{label}: `?` is only allowed in day-of-month or day-of-week"
            )),
        };
    }
    let items = text
        .split(',')
        .map(|item| normalize_item(field, item))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(items.join(","))
}

fn normalize_item(field: Field, item: &str) -> Result<String, String> {
    let label = field.label();
    if item.is_empty() {
        return Err(format!("{label}: empty item in `,` list"));
    }
    if item.contains('?') {
        return Err(format!("{label}: `?` must be the whole field"));
    }
    match field {
        Field::DayOfMonth if item.eq_ignore_ascii_case("L") => return Ok("L".to_owned()),
        Field::DayOfMonth if item.ends_with(['W', 'w']) => {
            let day = &item[..item.len() - 1];
            if day.eq_ignore_ascii_case("L") {
                return Err(format!(
                    "{label}: `LW` is not supported; use `L` or `<day>W`"
                ));
            }
            return Ok(format!("{}W", field.value(day)?));
        }
        // Quartz: a lone `L` in day-of-week is the last day of the week, Saturday.
        Field::DayOfWeek if item.eq_ignore_ascii_case("L") => return Ok("7".to_owned()),
        Field::DayOfWeek if item.ends_with(['L', 'l']) => {
            return Ok(format!("{}L", field.value(&item[..item.len() - 1])?));
        }
        Field::DayOfWeek if item.contains('#') => {
            let (day, nth) = item.split_once('#').unwrap_or((item, ""));
            let nth = match nth {
                "1" | "2" | "3" | "4" | "5" => nth,
                _ => {
                    return Err(format!(
                        "{label}: in `{item}`, the week after `#` must be 1-5"
                    ))
                }
            };
            return Ok(format!("{}#{nth}", field.value(day)?));
        }
        _ => {}
    }
    let (base, step) = match item.split_once('/') {
        Some((base, step)) => {
            let (_, max) = field.range();
            match step.parse::<u32>() {
                Ok(n) if n >= 1 && n <= max => (base, Some(n)),
                _ => {
                    return Err(format!(
                        "{label}: in `{item}`, the step after `/` must be 1-{max}"
                    ))
                }
            }
        }
        None => (item, None),
    };
    let base = if base == "*" {
        // A stepped `*` counts from the field's first value (`*/3` years from
        // 1970), which croner would otherwise take from its own ranges.
        match step {
            Some(_) => {
                let (min, max) = field.range();
                format!("{min}-{max}")
            }
            None => "*".to_owned(),
        }
    } else if let Some((start, end)) = base.split_once('-') {
        let (start, end) = (field.value(start)?, field.value(end)?);
        if start > end {
            return Err(format!("{label}: the range `{base}` starts after it ends"));
        }
        format!("{start}-{end}")
    } else {
        field.value(base)?.to_string()
    };
    Ok(match step {
        Some(step) => format!("{base}/{step}"),
        None => base,
    })
}

/// The largest year a (validated) year field allows, when it is bounded below
/// 2199; used to stop searching once those years are past.
fn last_year(field: &str) -> Option<i32> {
    if field.contains(['*', '/']) {
        return None;
    }
    field
        .split([',', '-'])
        .filter_map(|n| n.parse::<i32>().ok())
        .max()
}

/// The EventBridge "Scheduled Event" a Lambda function receives when rule
/// `rule_name` fires at `time`.
pub fn scheduled_event(rule_name: &str, time: DateTime<Utc>) -> serde_json::Value {
    serde_json::json!({
        "version": "0",
        "id": uuid::Uuid::now_v7().to_string(),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": ACCOUNT,
        "time": time.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        "region": REGION,
        "resources": [format!("arn:aws:events:{REGION}:{ACCOUNT}:rule/{rule_name}")],
        "detail": {},
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone as _;

    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0)
            .single()
            .expect("valid test time")
    }

    fn next(expression: &str, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        ScheduleExpression::parse(expression)
            .expect("valid expression")
            .next_after(after)
    }

    fn reason(expression: &str) -> String {
        ScheduleExpression::parse(expression)
            .expect_err("invalid expression")
            .reason()
            .to_owned()
    }

    /// Rates parse to their period and fire one period after the given time.
    #[test]
    fn rates() {
        let cases = [
            ("rate(1 minute)", 60),
            ("rate(5 minutes)", 300),
            ("rate(1 hour)", 3600),
            ("rate(12 hours)", 12 * 3600),
            ("rate(1 day)", 86_400),
            ("rate(7 days)", 7 * 86_400),
        ];
        for (text, seconds) in cases {
            let expression = ScheduleExpression::parse(text).expect(text);
            assert_eq!(
                expression,
                ScheduleExpression::Rate(Duration::from_secs(seconds))
            );
            assert_eq!(expression.to_string(), text);
        }
        assert_eq!(
            next("rate(5 minutes)", at(2026, 11, 24, 10, 0)),
            Some(at(2026, 11, 24, 10, 5))
        );
    }

    /// Singular and plural units are enforced both ways, and zero, junk and
    /// unknown units are refused.
    #[test]
    fn bad_rates() {
        assert!(reason("rate(1 minutes)").contains("use `minute`"));
        assert!(reason("rate(5 minute)").contains("use `minutes`"));
        assert!(reason("rate(1 days)").contains("use `day`"));
        assert!(reason("rate(0 minutes)").contains("not 0"));
        assert!(reason("rate(-5 minutes)").contains("positive integer"));
        assert!(reason("rate(5 weeks)").contains("unknown unit `weeks`"));
        assert!(reason("rate(5)").contains("rate(value unit)"));
        assert!(reason("every 5 minutes").contains("expected"));
        let error = ScheduleExpression::parse("rate(1 minutes)").expect_err("invalid");
        assert_eq!(
            error.to_string(),
            "invalid schedule expression `rate(1 minutes)`: use `minute`, not `minutes`, when the value is 1"
        );
    }

    /// Every day at noon: after 13:00 the next is noon the day after.
    #[test]
    fn daily_at_noon() {
        assert_eq!(
            next("cron(0 12 * * ? *)", at(2026, 11, 24, 13, 0)),
            Some(at(2026, 11, 25, 12, 0))
        );
        // Strictly after: at exactly noon, the next is tomorrow's.
        assert_eq!(
            next("cron(0 12 * * ? *)", at(2026, 11, 24, 12, 0)),
            Some(at(2026, 11, 25, 12, 0))
        );
        assert_eq!(
            next("cron(0 12 * * ? *)", at(2026, 11, 24, 11, 59)),
            Some(at(2026, 11, 24, 12, 0))
        );
    }

    /// `6L` in day-of-week is the last Friday (6 = FRI counting from SUN = 1).
    #[test]
    fn last_friday() {
        // Fridays of November 2026: 6, 13, 20, 27; of December: 4 ... 25.
        let expression = "cron(15 10 ? * 6L 2026)";
        assert_eq!(
            next(expression, at(2026, 11, 1, 0, 0)),
            Some(at(2026, 11, 27, 10, 15))
        );
        assert_eq!(
            next(expression, at(2026, 11, 28, 0, 0)),
            Some(at(2026, 12, 25, 10, 15))
        );
        assert_eq!(next(expression, at(2026, 12, 26, 0, 0)), None);
        // The name works too.
        assert_eq!(
            next("cron(15 10 ? * FRIL 2026)", at(2026, 11, 1, 0, 0)),
            Some(at(2026, 11, 27, 10, 15))
        );
    }

    /// Every quarter of an hour, on the quarter.
    #[test]
    fn every_fifteen_minutes() {
        let expression = "cron(0/15 * * * ? *)";
        assert_eq!(
            next(expression, at(2026, 11, 24, 10, 7)),
            Some(at(2026, 11, 24, 10, 15))
        );
        assert_eq!(
            next(expression, at(2026, 11, 24, 10, 45)),
            Some(at(2026, 11, 24, 11, 0))
        );
        let late = at(2026, 11, 24, 23, 50);
        assert_eq!(next(expression, late), Some(at(2026, 11, 25, 0, 0)));
    }

    /// Weekdays only: from Saturday the next run is Monday morning.
    #[test]
    fn weekdays_from_saturday() {
        // 2026-11-28 is a Saturday.
        let saturday = at(2026, 11, 28, 9, 0);
        assert_eq!(
            next("cron(0 8 ? * MON-FRI *)", saturday),
            Some(at(2026, 11, 30, 8, 0))
        );
        assert_eq!(
            next("cron(0 8 ? * 2-6 *)", saturday),
            Some(at(2026, 11, 30, 8, 0))
        );
        // 1 is Sunday, 7 is Saturday; a lone L is Saturday too.
        assert_eq!(
            next("cron(0 8 ? * 1 *)", saturday),
            Some(at(2026, 11, 29, 8, 0))
        );
        assert_eq!(
            next("cron(0 8 ? * SAT *)", saturday),
            Some(at(2026, 12, 5, 8, 0))
        );
        assert_eq!(
            next("cron(0 8 ? * L *)", saturday),
            Some(at(2026, 12, 5, 8, 0))
        );
    }

    /// `#`, `L` and `W` in their fields, and month names.
    #[test]
    fn special_days() {
        // Second Tuesday of December 2026: the 8th.
        assert_eq!(
            next("cron(0 9 ? DEC 3#2 *)", at(2026, 11, 24, 0, 0)),
            Some(at(2026, 12, 8, 9, 0))
        );
        // Last day of February 2028 (a leap year).
        assert_eq!(
            next("cron(30 23 L 2 ? *)", at(2027, 3, 1, 0, 0)),
            Some(at(2028, 2, 29, 23, 30))
        );
        // The weekday nearest 15 November 2026 (a Sunday) is Monday the 16th.
        assert_eq!(
            next("cron(0 6 15W * ? *)", at(2026, 11, 1, 0, 0)),
            Some(at(2026, 11, 16, 6, 0))
        );
        // The first of every month, listed.
        assert_eq!(
            next("cron(0 0 1 JAN,JUL ? *)", at(2026, 2, 1, 0, 0)),
            Some(at(2026, 7, 1, 0, 0))
        );
    }

    /// A year that is over never fires again, and the search stops at 2199.
    #[test]
    fn past_years() {
        assert_eq!(next("cron(0 0 1 * ? 2025)", at(2026, 11, 24, 0, 0)), None);
        assert_eq!(
            next("cron(0 0 1 * ? 2025-2027)", at(2026, 11, 24, 0, 0)),
            Some(at(2026, 12, 1, 0, 0))
        );
        assert_eq!(next("cron(0 0 31 2 ? *)", at(2026, 1, 1, 0, 0)), None);
    }

    /// Steps count from the field's first value, weekdays and years included.
    #[test]
    fn steps() {
        // 2026-11-28 is a Saturday; */2 in day-of-week is SUN, TUE, THU, SAT.
        let saturday = at(2026, 11, 28, 9, 0);
        assert_eq!(
            next("cron(0 8 ? * */2 *)", saturday),
            Some(at(2026, 11, 29, 8, 0))
        );
        assert_eq!(
            next("cron(0 8 ? * 2/2 *)", saturday),
            Some(at(2026, 11, 30, 8, 0))
        );
        // Every third year from 1970: 2027 is one (1970 + 57).
        assert_eq!(
            next("cron(0 0 1 1 ? */3)", at(2026, 1, 1, 0, 0)),
            Some(at(2027, 1, 1, 0, 0))
        );
        assert_eq!(
            next("cron(*/20 * * * ? *)", at(2026, 11, 24, 10, 41)),
            Some(at(2026, 11, 24, 11, 0))
        );
    }

    /// A fraction of a second in the start time does not leak into the result.
    #[test]
    fn subsecond_start() {
        let after = at(2026, 11, 24, 10, 0) + chrono::Duration::milliseconds(500);
        assert_eq!(
            next("cron(* * * * ? *)", after),
            Some(at(2026, 11, 24, 10, 1))
        );
    }

    /// Malformed cron expressions are refused with the reason.
    #[test]
    fn bad_crons() {
        assert!(reason("cron(0 12 * * ?)").contains("exactly 6 fields"));
        assert!(reason("cron(0 0 12 * * ? *)").contains("exactly 6 fields"));
        assert!(reason("cron(0 12 ? * ? *)").contains("cannot both be `?`"));
        assert!(reason("cron(0 12 * * * *)").contains("must be `?`"));
        assert!(reason("cron(0 12 1 * MON *)").contains("must be `?`"));
        assert_eq!(
            reason("cron(60 12 * * ? *)"),
            "minutes: 60 is out of range 0-59"
        );
        assert_eq!(
            reason("cron(0 24 * * ? *)"),
            "hours: 24 is out of range 0-23"
        );
        assert!(reason("cron(0 12 ? * 0 *)").contains("day-of-week: 0 is out of range 1-7"));
        assert!(reason("cron(0 12 * 13 ? *)").contains("month: 13"));
        assert!(reason("cron(0 12 * FOO ? *)").contains("JAN-DEC"));
        assert!(reason("cron(0 12 * * ? 1969)").contains("year: 1969 is out of range 1970-2199"));
        assert!(reason("cron(0 12 ? * 2#6 *)").contains("after `#` must be 1-5"));
        assert!(reason("cron(0/0 * * * ? *)").contains("step"));
        assert!(reason("cron(0 12 ? * FRI-MON *)").contains("starts after it ends"));
        assert!(reason("at(2026-11-24T10:00:00)").contains("ScheduleV2"));
    }

    /// Display gives back the expression.
    #[test]
    fn display() {
        for text in [
            "cron(0 12 * * ? *)",
            "cron(15 10 ? * 6L 2026)",
            "rate(5 minutes)",
        ] {
            let expression: ScheduleExpression = text.parse().expect(text);
            assert_eq!(expression.to_string(), text);
        }
    }

    /// The payload has EventBridge's shape and deserializes as the Lambda
    /// event type the functions use.
    #[test]
    fn scheduled_event_shape() {
        let time = at(2026, 11, 24, 10, 0);
        let event = scheduled_event("OutboxRelayFunctionEveryMinute", time);
        assert_eq!(event["time"], "2026-11-24T10:00:00Z");
        assert_eq!(event["detail-type"], "Scheduled Event");
        assert_eq!(
            event["resources"][0],
            "arn:aws:events:us-east-1:000000000000:rule/OutboxRelayFunctionEveryMinute"
        );
        let id = event["id"].as_str().expect("id is a string");
        assert_eq!(
            uuid::Uuid::parse_str(id)
                .expect("id is a UUID")
                .get_version_num(),
            7
        );

        let parsed: aws_lambda_events::cloudwatch_events::CloudWatchEvent =
            serde_json::from_value(event).expect("a CloudWatchEvent");
        assert_eq!(parsed.time, time);
        assert_eq!(parsed.source.as_deref(), Some("aws.events"));
        assert_eq!(parsed.detail_type.as_deref(), Some("Scheduled Event"));
        assert_eq!(parsed.account_id.as_deref(), Some("000000000000"));
        assert_eq!(parsed.region.as_deref(), Some("us-east-1"));
        assert_eq!(parsed.detail, Some(serde_json::json!({})));
    }
}
