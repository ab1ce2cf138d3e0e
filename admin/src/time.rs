//! Durations and points in time as people type and read them: `90s`, `6h`,
//! `1h30m` for flags, rule files and history queries; RFC 3339 UTC times for
//! webhooks and tables; UTC clocks for `top` and `report`'s axes. Times are
//! Unix seconds (`f64`) throughout the API. Everything is UTC, so no time
//! zone database is needed on a minimal host.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Why a duration or a time did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    #[error("expected a duration such as 500ms, 90s, 10m, 6h, 7d, 2w or 1h30m, got {0:?}")]
    Duration(String),
    #[error("duration {0:?} is too long")]
    DurationTooLong(String),
    #[error("expected Unix seconds, `now`, or an RFC 3339 time such as 2025-05-01T12:00:00Z, got {0:?}")]
    Time(String),
}

/// The longest duration accepted: about 100 years, far beyond any retention,
/// and small enough that arithmetic on it in milliseconds cannot overflow.
const MAX_DURATION_S: u64 = 100 * 365 * 86_400;

/// Parses a duration made of one or more `<integer><unit>` parts, units
/// `ms`, `s`, `m`, `h`, `d` (24 h), `w` (7 d), `y` (365 d), largest first as
/// Prometheus writes them (`1h30m`). A bare `0` is zero.
pub fn parse_duration(s: &str) -> Result<Duration, TimeError> {
    let text = s.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let bad = || TimeError::Duration(s.to_owned());
    let bytes = text.as_bytes();
    if bytes.is_empty() {
        return Err(bad());
    }
    let mut total_ms: u128 = 0;
    let mut i = 0;
    // Each unit may appear once, in decreasing order, as Prometheus requires.
    let mut last_unit_ms = u128::MAX;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return Err(bad());
        }
        let n: u128 = text[start..i].parse().map_err(|_| bad())?;
        let unit_start = i;
        while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
            i += 1;
        }
        let unit_ms: u128 = match &text[unit_start..i] {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 7 * 86_400_000,
            "y" => 365 * 86_400_000,
            _ => return Err(bad()),
        };
        if unit_ms >= last_unit_ms {
            return Err(bad());
        }
        last_unit_ms = unit_ms;
        total_ms = n.checked_mul(unit_ms).and_then(|v| v.checked_add(total_ms)).ok_or_else(bad)?;
        if total_ms > u128::from(MAX_DURATION_S) * 1000 {
            return Err(TimeError::DurationTooLong(s.to_owned()));
        }
    }
    Ok(Duration::from_millis(total_ms as u64))
}

/// A duration in the form [`parse_duration`] reads, largest units first:
/// `1h30m`, `90ms`, `0s`. Sub-millisecond parts are dropped.
pub fn format_duration(d: Duration) -> String {
    let mut ms = d.as_millis();
    if ms == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    for (unit, size) in [("d", 86_400_000u128), ("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)] {
        if ms >= size {
            out.push_str(&format!("{}{unit}", ms / size));
            ms %= size;
        }
    }
    out
}

/// A short, rounded age for tables: `45s`, `3m20s`, `2h5m`, `3d4h`.
pub fn format_age(seconds: f64) -> String {
    if !seconds.is_finite() || seconds < 0.0 {
        return "-".to_owned();
    }
    let s = seconds.round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        3600..86_400 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// Now, in Unix seconds.
pub fn now_unix() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01 (`civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Unix seconds as RFC 3339 in UTC with milliseconds:
/// `2025-05-01T12:00:00.250Z`.
pub fn format_rfc3339(unix: f64) -> String {
    let ms = if unix.is_finite() { (unix * 1000.0).round() as i64 } else { 0 };
    let (secs, ms) = (ms.div_euclid(1000), ms.rem_euclid(1000));
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z", sod / 3600, sod % 3600 / 60, sod % 60)
}

/// Unix seconds as `MM-DD HH:MM:SS` in UTC, for tables.
pub fn format_short(unix: f64) -> String {
    let full = format_rfc3339(unix);
    // 2025-05-01T12:00:00.250Z -> 05-01 12:00:00
    match (full.get(5..10), full.get(11..19)) {
        (Some(date), Some(time)) => format!("{date} {time}"),
        _ => full,
    }
}

/// Reads a time: Unix seconds (`1746100800`, `1746100800.5`), `now`, or a
/// date and time, UTC unless it names an offset: `2025-05-01T12:00:00Z`,
/// `2025-05-01 14:00:00+02:00`, `2025-05-01T12:00`, `2025-05-01` (midnight).
pub fn parse_time(s: &str, now: f64) -> Result<f64, TimeError> {
    let text = s.trim();
    if text.eq_ignore_ascii_case("now") {
        return Ok(now);
    }
    if let Ok(v) = text.parse::<f64>() {
        return if v.is_finite() && v >= 0.0 { Ok(v) } else { Err(TimeError::Time(s.to_owned())) };
    }
    parse_date_time(text).ok_or_else(|| TimeError::Time(s.to_owned()))
}

/// [`parse_time`]'s calendar forms; `None` for anything else, including a day
/// past its month's end.
fn parse_date_time(t: &str) -> Option<f64> {
    let digits = |p: &str| -> Option<u32> { p.bytes().all(|c| c.is_ascii_digit()).then(|| p.parse().ok())? };
    let (date, rest) = match t.find(['T', 't', ' ']) {
        Some(i) => (&t[..i], t.get(i + 1..)?),
        None => (t, ""),
    };
    let mut d = date.split('-');
    let (y, mo, day) = (digits(d.next()?)?, digits(d.next()?)?, digits(d.next()?)?);
    if d.next().is_some() || date.len() != 10 || !(1..=12).contains(&mo) || !(1..=31).contains(&day) {
        return None;
    }
    // The zone: Z, UTC, an offset, or nothing (UTC).
    let (clock, offset_s) = if let Some(c) = rest.strip_suffix(['Z', 'z']).or_else(|| rest.strip_suffix(" UTC")) {
        (c, 0i64)
    } else if let Some(i) = rest.rfind(['+', '-']) {
        let (c, off) = (&rest[..i], &rest[i + 1..]);
        let (oh, om) = off.split_once(':')?;
        let secs = i64::from(digits(oh)?) * 3600 + i64::from(digits(om)?) * 60;
        (c, if rest.as_bytes()[i] == b'+' { secs } else { -secs })
    } else {
        (rest, 0)
    };
    let (mut h, mut mi, mut sec) = (0u32, 0u32, 0.0f64);
    if !clock.is_empty() {
        let mut c = clock.split(':');
        h = digits(c.next()?)?;
        mi = digits(c.next()?)?;
        if let Some(secs) = c.next() {
            let whole = secs.split('.').next()?;
            if whole.len() != 2 || !secs.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
                return None;
            }
            sec = secs.parse().ok()?;
        }
        if c.next().is_some() || h > 23 || mi > 59 || sec >= 61.0 {
            return None;
        }
    } else if rest.len() != clock.len() {
        return None; // a zone with no clock
    }
    let days = days_from_civil(i64::from(y), mo, day);
    if civil_from_days(days) != (i64::from(y), mo, day) {
        return None;
    }
    let secs = days * 86_400 + i64::from(h) * 3600 + i64::from(mi) * 60 - offset_s;
    Some(secs as f64 + sec)
}

/// A Unix time's UTC (year, month, day, hour, minute, second).
fn parts(unix: f64) -> (i64, u32, u32, u32, u32, u32) {
    let secs = if unix.is_finite() { unix.floor() as i64 } else { 0 };
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400) as u32;
    (y, mo, d, s / 3600, s / 60 % 60, s % 60)
}

/// `2026-12-02 01:20:03` (UTC).
pub fn datetime(unix: f64) -> String {
    let (y, mo, d, h, mi, s) = parts(unix);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}")
}

/// `2026-12-02 01:20` (UTC).
pub fn date_minute(unix: f64) -> String {
    let (y, mo, d, h, mi, _) = parts(unix);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}")
}

/// `01:20`, or `01:20:03` when `seconds` (UTC).
pub fn clock(unix: f64, seconds: bool) -> String {
    let (_, _, _, h, mi, s) = parts(unix);
    if seconds {
        format!("{h:02}:{mi:02}:{s:02}")
    } else {
        format!("{h:02}:{mi:02}")
    }
}

/// `12-02 01:20` (UTC): a tick label on an axis that spans days.
pub fn month_day_clock(unix: f64) -> String {
    let (_, mo, d, h, mi, _) = parts(unix);
    format!("{mo:02}-{d:02} {h:02}:{mi:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_prometheus_writes_them() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("6h"), Ok(Duration::from_secs(6 * 3600)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        for bad in ["", "10", "5x", "m", "1.5h", "30m1h", "1h1h", "-5s", "5 s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        assert!(matches!(parse_duration("1000y"), Err(TimeError::DurationTooLong(_))));
    }

    #[test]
    fn durations_print_in_the_form_they_are_read() {
        for d in ["1h30m", "90ms", "7d", "1d1h1m1s1ms"] {
            assert_eq!(format_duration(parse_duration(d).unwrap()), d);
        }
        assert_eq!(format_duration(Duration::ZERO), "0s");
        assert_eq!(format_age(200.0), "3m20s");
        assert_eq!(format_age(3.0 * 86_400.0 + 4.0 * 3600.0), "3d4h");
    }

    #[test]
    fn times_round_trip_through_rfc3339() {
        assert_eq!(format_rfc3339(0.0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_rfc3339(1_746_100_800.25), "2025-05-01T12:00:00.250Z");
        assert_eq!(format_rfc3339(951_782_400.0), "2000-02-29T00:00:00.000Z");
        assert_eq!(parse_time("2025-05-01T12:00:00.25Z", 0.0), Ok(1_746_100_800.25));
        assert_eq!(parse_time("2025-05-01 14:00:00+02:00", 0.0), Ok(1_746_100_800.0));
        assert_eq!(parse_time("1746100800", 0.0), Ok(1_746_100_800.0));
        assert_eq!(parse_time("now", 42.0), Ok(42.0));
        assert_eq!(format_short(1_746_100_800.0), "05-01 12:00:00");
        // Without a zone a time is UTC; the clock and its seconds may be left out.
        assert_eq!(parse_time("2025-05-01T12:00:00", 0.0), Ok(1_746_100_800.0));
        assert_eq!(parse_time("2025-05-01T12:00Z", 0.0), Ok(1_746_100_800.0));
        assert_eq!(parse_time("2025-05-01 12:00 UTC", 0.0), Ok(1_746_100_800.0));
        assert_eq!(parse_time("2025-05-01", 0.0), Ok(1_746_057_600.0));
        assert_eq!(parse_time("2025-05-01T07:30-04:30", 0.0), Ok(1_746_100_800.0));
        for bad in [
            "yesterday",
            "2025-13-01T00:00:00Z",
            "2025-02-30",
            "2025-05-01T24:00",
            "2025-05-01T12",
            "2025-5-1",
            "2025-05-01Z",
            "-5",
            "NaN",
        ] {
            assert!(parse_time(bad, 0.0).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn unix_times_read_as_utc_dates_and_clocks() {
        assert_eq!(datetime(0.0), "1970-01-01 00:00:00");
        assert_eq!(datetime(951_782_400.0), "2000-02-29 00:00:00");
        assert_eq!(datetime(1_764_638_403.9), "2025-12-02 01:20:03");
        assert_eq!(date_minute(1_764_638_403.0), "2025-12-02 01:20");
        assert_eq!(clock(1_764_638_403.0, false), "01:20");
        assert_eq!(clock(1_764_638_403.0, true), "01:20:03");
        assert_eq!(month_day_clock(1_764_638_403.0), "12-02 01:20");
    }
}
