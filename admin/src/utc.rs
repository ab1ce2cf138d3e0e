//! Calendar dates and clock times in UTC from Unix seconds, and back, for
//! `top`'s clock and `report`'s time axis and options. Everything is UTC so
//! that no time zone database is needed on a minimal host.

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    // Shift the epoch to 0000-03-01 so that a leap day ends each 4-year
    // cycle; 146097 days make one 400-year era.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// (year, month, day) to days since 1970-01-01; the inverse of `civil_from_days`.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The parts of a Unix time: (year, month, day, hour, minute, second).
fn parts(unix: f64) -> (i64, u32, u32, u32, u32, u32) {
    let secs = if unix.is_finite() { unix.floor() as i64 } else { 0 };
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400) as u32;
    (y, mo, d, s / 3600, s / 60 % 60, s % 60)
}

/// `2026-12-02 01:20:03`.
pub fn datetime(unix: f64) -> String {
    let (y, mo, d, h, mi, s) = parts(unix);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}")
}

/// `2026-12-02 01:20`.
pub fn date_minute(unix: f64) -> String {
    let (y, mo, d, h, mi, _) = parts(unix);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}")
}

/// `01:20`, or `01:20:03` when `seconds`.
pub fn clock(unix: f64, seconds: bool) -> String {
    let (_, _, _, h, mi, s) = parts(unix);
    if seconds {
        format!("{h:02}:{mi:02}:{s:02}")
    } else {
        format!("{h:02}:{mi:02}")
    }
}

/// `12-02 01:20`: a tick label on an axis that spans days.
pub fn month_day_clock(unix: f64) -> String {
    let (_, mo, d, h, mi, _) = parts(unix);
    format!("{mo:02}-{d:02} {h:02}:{mi:02}")
}

/// Now, in Unix seconds.
pub fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// A point in time as the admin types it: Unix seconds (`1764638400`), or a
/// UTC date and time (`2026-12-02T01:20`, `2026-12-02 01:20:03Z`, `2026-12-02`).
pub fn parse(s: &str) -> Result<f64, String> {
    let t = s.trim();
    if let Ok(secs) = t.parse::<f64>() {
        if secs.is_finite() {
            return Ok(secs);
        }
    }
    let bad = || format!("expected Unix seconds or a UTC time like 2026-12-02T01:20:00Z, got {s:?}");
    let t = t.strip_suffix('Z').or_else(|| t.strip_suffix("UTC")).unwrap_or(t).trim();
    let (date, time) = match t.split_once(['T', ' ']) {
        Some((d, tm)) => (d, tm),
        None => (t, "00:00"),
    };
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().map_err(|_| bad()));
    let (year, month, day) = (d.next().ok_or_else(bad)??, d.next().ok_or_else(bad)??, d.next().ok_or_else(bad)??);
    let mut c = time.split(':').map(|p| p.parse::<f64>().map_err(|_| bad()));
    let hour = c.next().ok_or_else(bad)??;
    let minute = c.next().ok_or_else(bad)??;
    let second = c.next().transpose()?.unwrap_or(0.0);
    if c.next().is_some()
        || !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || !(0.0..24.0).contains(&hour)
        || !(0.0..60.0).contains(&minute)
        || !(0.0..61.0).contains(&second)
    {
        return Err(bad());
    }
    let days = days_from_civil(year, month as u32, day as u32);
    // A day past the month's end (2026-02-30) would roll over silently.
    if civil_from_days(days) != (year, month as u32, day as u32) {
        return Err(bad());
    }
    Ok(days as f64 * 86_400.0 + hour * 3600.0 + minute * 60.0 + second)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_times_read_as_utc_dates() {
        assert_eq!(datetime(0.0), "1970-01-01 00:00:00");
        assert_eq!(datetime(951_782_400.0), "2000-02-29 00:00:00");
        assert_eq!(datetime(1_764_638_403.9), "2025-12-02 01:20:03");
        assert_eq!(clock(1_764_638_403.0, false), "01:20");
        assert_eq!(month_day_clock(1_764_638_403.0), "12-02 01:20");
    }

    #[test]
    fn typed_times_parse_back() {
        assert_eq!(parse("2025-12-02T01:20:03Z"), Ok(1_764_638_403.0));
        assert_eq!(parse("2025-12-02 01:20"), Ok(1_764_638_400.0));
        assert_eq!(parse("2000-02-29"), Ok(951_782_400.0));
        assert_eq!(parse("1764638400"), Ok(1_764_638_400.0));
        for bad in ["yesterday", "2025-13-01", "2025-02-30", "2025-12-02T25:00", "2025-12", ""] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
