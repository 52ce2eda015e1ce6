//! `%START_TIME(FORMAT)%`: the request's start, in UTC, written the way the format asks.
//!
//! Envoy formats `START_TIME` with strftime's conversions in the C locale, plus its own:
//! `%s` (seconds since the epoch), `%f` (nine digits of the second's fraction) and `%1f` to
//! `%9f` (that many, truncated), and Abseil's `%Ez` (`+00:00`), `%E#S` (seconds with `#`
//! fraction digits) and `%E*S` (seconds with the fraction's significant digits). The format
//! is read once, when the Telemetry is; a conversion the waypoint does not write is refused
//! then, by name, so no request meets one.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

/// One piece of a time format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spec {
    Year,
    YearOfCentury,
    Century,
    Month,
    MonthName {
        full: bool,
    },
    Day,
    DaySpacePadded,
    DayOfYear,
    Hour,
    Hour12,
    Minute,
    Second,
    AmPm,
    WeekdayName {
        full: bool,
    },
    /// `%u`: Monday is 1, Sunday 7.
    WeekdayFromMonday,
    /// `%w`: Sunday is 0.
    WeekdayFromSunday,
    /// `%z`: always `+0000`; `%Ez`: `+00:00`.
    Offset {
        colon: bool,
    },
    /// `%Z`.
    ZoneName,
    /// `%s`.
    Epoch,
    /// `%f` (9) and `%1f`..`%9f`: the fraction's first digits, truncated.
    Fraction(u8),
    /// `%E#S`: seconds and `#` fraction digits; `None` for `%E*S` (the significant ones).
    SecondWithFraction(Option<u8>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Spec(Spec),
}

/// A parsed `START_TIME` format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeFormat(Vec<Piece>);

impl TimeFormat {
    /// Parses `text`; an unknown or unfinished conversion is an error naming it.
    pub fn parse(text: &str) -> Result<TimeFormat, String> {
        let text = expand_composites(text);
        let mut pieces = Vec::new();
        let mut lit = String::new();
        let mut chars = text.chars().peekable();
        let push = |pieces: &mut Vec<Piece>, lit: &mut String, spec: Spec| {
            if !lit.is_empty() {
                pieces.push(Piece::Text(std::mem::take(lit)));
            }
            pieces.push(Piece::Spec(spec));
        };
        while let Some(c) = chars.next() {
            if c != '%' {
                lit.push(c);
                continue;
            }
            let Some(conv) = chars.next() else {
                return Err("the format ends with a lone '%'".to_string());
            };
            use Spec::*;
            match conv {
                '%' => lit.push('%'),
                'n' => lit.push('\n'),
                't' => lit.push('\t'),
                'Y' => push(&mut pieces, &mut lit, Year),
                'y' => push(&mut pieces, &mut lit, YearOfCentury),
                'C' => push(&mut pieces, &mut lit, Century),
                'm' => push(&mut pieces, &mut lit, Month),
                'b' | 'h' => push(&mut pieces, &mut lit, MonthName { full: false }),
                'B' => push(&mut pieces, &mut lit, MonthName { full: true }),
                'd' => push(&mut pieces, &mut lit, Day),
                'e' => push(&mut pieces, &mut lit, DaySpacePadded),
                'j' => push(&mut pieces, &mut lit, DayOfYear),
                'H' => push(&mut pieces, &mut lit, Hour),
                'I' => push(&mut pieces, &mut lit, Hour12),
                'M' => push(&mut pieces, &mut lit, Minute),
                'S' => push(&mut pieces, &mut lit, Second),
                'p' => push(&mut pieces, &mut lit, AmPm),
                'a' => push(&mut pieces, &mut lit, WeekdayName { full: false }),
                'A' => push(&mut pieces, &mut lit, WeekdayName { full: true }),
                'u' => push(&mut pieces, &mut lit, WeekdayFromMonday),
                'w' => push(&mut pieces, &mut lit, WeekdayFromSunday),
                'z' => push(&mut pieces, &mut lit, Offset { colon: false }),
                'Z' => push(&mut pieces, &mut lit, ZoneName),
                's' => push(&mut pieces, &mut lit, Epoch),
                'f' => push(&mut pieces, &mut lit, Fraction(9)),
                '1'..='9' => match chars.next() {
                    Some('f') => {
                        let digits = conv as u8 - b'0';
                        push(&mut pieces, &mut lit, Fraction(digits));
                    }
                    _ => {
                        return Err(format!(
                            "%{conv}: a digit is followed by 'f' (%{conv}f, that many digits of the second)"
                        ));
                    }
                },
                'E' => {
                    let spec = match (chars.next(), chars.peek().copied()) {
                        (Some('z'), _) => Offset { colon: true },
                        (Some('*'), Some('S')) => {
                            chars.next();
                            SecondWithFraction(None)
                        }
                        (Some(d @ '0'..='9'), Some('S')) => {
                            chars.next();
                            SecondWithFraction(Some(d as u8 - b'0'))
                        }
                        (other, _) => {
                            return Err(format!(
                                "%E{}: the waypoint writes %Ez, %E*S and %E#S (# a digit)",
                                other.map(String::from).unwrap_or_default()
                            ));
                        }
                    };
                    push(&mut pieces, &mut lit, spec);
                }
                other => {
                    return Err(format!(
                        "%{other} is not a time conversion the waypoint writes"
                    ));
                }
            }
        }
        if !lit.is_empty() {
            pieces.push(Piece::Text(lit));
        }
        Ok(TimeFormat(pieces))
    }

    /// Writes `t`, in UTC, to `out`.
    pub fn write(&self, t: SystemTime, out: &mut String) {
        let d = time::OffsetDateTime::from(t);
        let nanos = d.nanosecond();
        for piece in &self.0 {
            let spec = match piece {
                Piece::Text(s) => {
                    out.push_str(s);
                    continue;
                }
                Piece::Spec(spec) => *spec,
            };
            // Writing to a String cannot fail.
            let _ = match spec {
                Spec::Year => write!(out, "{:04}", d.year()),
                Spec::YearOfCentury => write!(out, "{:02}", d.year().rem_euclid(100)),
                Spec::Century => write!(out, "{:02}", d.year().div_euclid(100)),
                Spec::Month => write!(out, "{:02}", u8::from(d.month())),
                Spec::MonthName { full } => {
                    let name = MONTHS[usize::from(u8::from(d.month())) - 1];
                    out.push_str(if full { name } else { &name[..3] });
                    Ok(())
                }
                Spec::Day => write!(out, "{:02}", d.day()),
                Spec::DaySpacePadded => write!(out, "{:2}", d.day()),
                Spec::DayOfYear => write!(out, "{:03}", d.ordinal()),
                Spec::Hour => write!(out, "{:02}", d.hour()),
                Spec::Hour12 => write!(out, "{:02}", (d.hour() + 11) % 12 + 1),
                Spec::Minute => write!(out, "{:02}", d.minute()),
                Spec::Second => write!(out, "{:02}", d.second()),
                Spec::AmPm => {
                    out.push_str(if d.hour() < 12 { "AM" } else { "PM" });
                    Ok(())
                }
                Spec::WeekdayName { full } => {
                    let name = WEEKDAYS[usize::from(d.weekday().number_days_from_monday())];
                    out.push_str(if full { name } else { &name[..3] });
                    Ok(())
                }
                Spec::WeekdayFromMonday => write!(out, "{}", d.weekday().number_from_monday()),
                Spec::WeekdayFromSunday => {
                    write!(out, "{}", d.weekday().number_days_from_sunday())
                }
                Spec::Offset { colon } => {
                    out.push_str(if colon { "+00:00" } else { "+0000" });
                    Ok(())
                }
                Spec::ZoneName => {
                    out.push_str("UTC");
                    Ok(())
                }
                Spec::Epoch => write!(out, "{}", epoch_seconds(t)),
                Spec::Fraction(digits) => write_fraction(out, nanos, digits),
                Spec::SecondWithFraction(digits) => {
                    let _ = write!(out, "{:02}", d.second());
                    let digits = digits.unwrap_or_else(|| significant_digits(nanos));
                    if digits > 0 {
                        out.push('.');
                    }
                    write_fraction(out, nanos, digits)
                }
            };
        }
    }
}

/// The conversions that stand for others, in the C locale: `%F` is `%Y-%m-%d`, `%c`
/// `%a %b %e %H:%M:%S %Y` (`Tue Jun  5 12:34:56 2018`), and so on. Written out before the
/// format is parsed, so each has one definition; `%%` stays an escaped percent.
fn expand_composites(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('F') => out.push_str("%Y-%m-%d"),
            Some('D' | 'x') => out.push_str("%m/%d/%y"),
            Some('T' | 'X') => out.push_str("%H:%M:%S"),
            Some('R') => out.push_str("%H:%M"),
            Some('c') => out.push_str("%a %b %e %H:%M:%S %Y"),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

const WEEKDAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

fn epoch_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        // Before 1970: the second that holds it, as strftime's `%s` (floor).
        Err(e) => {
            let d = e.duration();
            -(d.as_secs() as i64) - i64::from(d.subsec_nanos() > 0)
        }
    }
}

/// The first `digits` (at most 9) digits of `nanos` as a fraction of a second, truncated.
fn write_fraction(out: &mut String, nanos: u32, digits: u8) -> std::fmt::Result {
    let digits = digits.min(9);
    if digits == 0 {
        return Ok(());
    }
    let scaled = nanos / 10u32.pow(9 - u32::from(digits));
    write!(out, "{scaled:0width$}", width = usize::from(digits))
}

/// How many fraction digits `nanos` needs: trailing zeros dropped.
fn significant_digits(nanos: u32) -> u8 {
    if nanos == 0 {
        return 0;
    }
    let mut digits = 9;
    let mut n = nanos;
    while n.is_multiple_of(10) {
        n /= 10;
        digits -= 1;
    }
    digits
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// 2018-05-29 10:43:10.528123456 UTC, a Tuesday (Envoy's documented example second).
    fn when() -> SystemTime {
        UNIX_EPOCH + Duration::new(1_527_590_590, 528_123_456)
    }

    fn fmt(f: &str, t: SystemTime) -> String {
        let mut out = String::new();
        TimeFormat::parse(f).unwrap().write(t, &mut out);
        out
    }

    #[test]
    fn envoys_documented_examples() {
        assert_eq!(
            fmt("%Y/%m/%dT%H:%M:%S%z %s", when()),
            "2018/05/29T10:43:10+0000 1527590590"
        );
        assert_eq!(fmt("%s.%3f", when()), "1527590590.528");
        assert_eq!(fmt("%s.%6f", when()), "1527590590.528123");
        assert_eq!(fmt("%s.%9f", when()), "1527590590.528123456");
        assert_eq!(fmt("%f", when()), "528123456");
        assert_eq!(fmt("%1f", when()), "5");
    }

    #[test]
    fn strftime_conversions_in_the_c_locale() {
        let t = when();
        assert_eq!(fmt("%F %T", t), "2018-05-29 10:43:10");
        assert_eq!(fmt("%D %R", t), "05/29/18 10:43");
        assert_eq!(fmt("%a %A %b %B %h", t), "Tue Tuesday May May May");
        assert_eq!(fmt("%c", t), "Tue May 29 10:43:10 2018");
        assert_eq!(fmt("%j %u %w %C %y", t), "149 2 2 20 18");
        assert_eq!(fmt("%I%p %Z %Ez", t), "10AM UTC +00:00");
        assert_eq!(fmt("100%% %n%t", t), "100% \n\t");
        let afternoon = UNIX_EPOCH + Duration::from_secs(1_527_590_590 + 4 * 3600);
        assert_eq!(fmt("%I %p", afternoon), "02 PM");
        let midnight = UNIX_EPOCH + Duration::from_secs(1_527_552_000);
        assert_eq!(fmt("%I %p %H", midnight), "12 AM 00");
        // A day of one digit, space-padded by %e and zero-padded by %d.
        let june = UNIX_EPOCH + Duration::from_secs(1_528_192_496);
        assert_eq!(fmt("%e|%d|%c", june), " 5|05|Tue Jun  5 09:54:56 2018");
    }

    #[test]
    fn fractions_are_truncated_and_fields_padded() {
        let late = UNIX_EPOCH + Duration::new(1_527_590_590, 999_999_999);
        assert_eq!(
            fmt("%1f %3f %6f %E3S %E*S", late),
            "9 999 999999 10.999 10.999999999"
        );
        // Noon is 12 PM; the fifth day of the year is 005.
        let noon = UNIX_EPOCH + Duration::from_secs(1_527_595_200);
        assert_eq!(fmt("%H %I %p", noon), "12 12 PM");
        let jan5 = UNIX_EPOCH + Duration::from_secs(1_514_764_800 + 4 * 86_400);
        assert_eq!(fmt("%F %j %a", jan5), "2018-01-05 005 Fri");
    }

    #[test]
    fn abseil_seconds_with_their_fraction() {
        assert_eq!(fmt("%E3S", when()), "10.528");
        assert_eq!(fmt("%E0S", when()), "10");
        assert_eq!(fmt("%E*S", when()), "10.528123456");
        let round = UNIX_EPOCH + Duration::new(1_527_590_590, 500_000_000);
        assert_eq!(fmt("%E*S", round), "10.5");
        let whole = UNIX_EPOCH + Duration::from_secs(1_527_590_590);
        assert_eq!(fmt("%E*S|%3f", whole), "10|000");
    }

    #[test]
    fn before_the_epoch_is_the_second_that_holds_it() {
        let t = UNIX_EPOCH - Duration::from_millis(1_500);
        assert_eq!(fmt("%s %F %T.%3f", t), "-2 1969-12-31 23:59:58.500");
    }

    #[test]
    fn unknown_or_unfinished_conversions_are_refused_by_name() {
        for (f, names) in [
            ("%Q", "%Q"),
            ("%Y %", "lone '%'"),
            ("%4x", "%4"),
            ("%Ex", "%Ex"),
            ("%E", "%E"),
        ] {
            let err = TimeFormat::parse(f).unwrap_err();
            assert!(err.contains(names), "{f}: {err}");
        }
    }
}
