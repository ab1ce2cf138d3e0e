//! `gpuvisorctl history` and `gpuvisorctl alerts`: their arguments and how
//! their answers print (a column per series or a row per point; one row per
//! alert).

use super::table;
use crate::alerts::{AlertState, AlertView, AlertsResponse};
use crate::client::Client;
use crate::history::{HistoryMetrics, HistoryQuery, HistoryResponse};
use crate::time::{format_age, format_duration, format_rfc3339, format_short, now_unix, parse_duration, parse_time};
use clap::Args;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;

/// Up to this many series print as columns; more print as rows.
const MAX_COLUMNS: usize = 6;

pub(super) const HISTORY_ABOUT: &str = "\
Show how a metric evolved, from the history gpuvisord keeps of everything
GET /metrics shows. Without --metric, list the stored metrics.

Gauges print as the mean of each step; counters as their per-second rate
over each step (a drop counts as a counter reset); summary quantiles as
their mean. gpuvisord keeps every sample for 6 hours, then one point per
minute for 7 days and one per hour for 90 days (its --history-*-retention
flags): a range reaching further back reads the coarser level.

Examples:
  gpuvisorctl history
  gpuvisorctl history --metric gpuvisor_vm_gpu_share --since 10m --step 10s
  gpuvisorctl history -m gpuvisor_vm_gpu_seconds_total --vm vm1 --since 7d --step 1h
  gpuvisorctl history -m DCGM_FI_DEV_POWER_USAGE --from 2025-05-01T12:00:00Z --to 2025-05-01T13:00:00Z";

#[derive(Debug, Clone, Args)]
pub struct HistoryArgs {
    /// Metric as GET /metrics names it, e.g. gpuvisor_vm_gpu_share; without
    /// it, the stored metrics are listed
    #[arg(long, short, value_name = "NAME")]
    pub metric: Option<String>,

    /// Only this VM's series
    #[arg(long, value_name = "NAME")]
    pub vm: Option<String>,

    /// Only this GPU's series (the `gpu` label: a UUID or `sim` on
    /// gpuvisor_* series, the NVML index on DCGM_* ones)
    #[arg(long, value_name = "ID")]
    pub gpu: Option<String>,

    /// How far back from now, like 90s, 10m, 6h or 7d [default: 1h]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_s, conflicts_with_all = ["from", "to"])]
    pub since: Option<f64>,

    /// Start of the range: Unix seconds or an RFC 3339 time such as
    /// 2025-05-01T12:00:00Z [default: an hour before --to]
    #[arg(long, value_name = "TIME", value_parser = parse_time_now)]
    pub from: Option<f64>,

    /// End of the range, as --from [default: now]
    #[arg(long, value_name = "TIME", value_parser = parse_time_now)]
    pub to: Option<f64>,

    /// Time per printed point, like 10s or 5m [default: the range over 500,
    /// at least the resolution of the stored data]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_s)]
    pub step: Option<f64>,

    /// One row per point (time, series, value) instead of one column per
    /// series; the default when there are more than 6 series
    #[arg(long)]
    pub rows: bool,
}

#[derive(Debug, Clone, Args)]
pub struct AlertsArgs {
    /// Also list the rules: name, for, severity and the parsed expression
    #[arg(long)]
    pub rules: bool,
}

fn parse_duration_s(s: &str) -> Result<f64, String> {
    let d = parse_duration(s).map_err(|e| e.to_string())?;
    if d.is_zero() {
        return Err("must be longer than 0".to_owned());
    }
    Ok(d.as_secs_f64())
}

fn parse_time_now(s: &str) -> Result<f64, String> {
    parse_time(s, now_unix()).map_err(|e| e.to_string())
}

/// Runs `gpuvisorctl history`.
pub(super) fn history(client: &Client, json: bool, args: &HistoryArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let Some(metric) = &args.metric else {
        let metrics = client.history_metrics()?;
        if json {
            return super::print_json(out, &metrics);
        }
        out.write_all(metrics_table(&metrics).as_bytes())?;
        return Ok(());
    };
    let from = match args.since {
        Some(since) => Some((now_unix() - since).max(0.0)),
        None => args.from,
    };
    let q = HistoryQuery {
        metric: metric.clone(),
        vm: args.vm.clone(),
        gpu: args.gpu.clone(),
        from,
        to: args.to,
        step: args.step,
    };
    let h = client.history(&q)?;
    if json {
        return super::print_json(out, &h);
    }
    out.write_all(history_table(&h, args.rows).as_bytes())?;
    Ok(())
}

/// Runs `gpuvisorctl alerts`.
pub(super) fn alerts(client: &Client, json: bool, args: &AlertsArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let a = client.alerts()?;
    if json {
        return super::print_json(out, &a);
    }
    out.write_all(alerts_table(&a, args.rules, now_unix()).as_bytes())?;
    Ok(())
}

/// The stored metrics, and how long each level of history is kept.
pub fn metrics_table(m: &HistoryMetrics) -> String {
    let mut s = String::new();
    if m.metrics.is_empty() {
        s.push_str("no metrics stored yet\n");
    } else {
        let rows: Vec<Vec<String>> =
            m.metrics.iter().map(|x| vec![x.name.clone(), x.kind.clone(), x.series.to_string()]).collect();
        s.push_str(&table(&["METRIC", "KIND", "SERIES"], &rows));
    }
    if !m.tiers.is_empty() {
        let tiers: Vec<String> = m
            .tiers
            .iter()
            .map(|t| format!("{} every {} for {}", t.name, secs(t.resolution), secs(t.retention)))
            .collect();
        s.push_str(&format!("kept: {}\n", tiers.join(", ")));
    }
    s
}

fn secs(s: f64) -> String {
    if s.is_finite() && s >= 0.0 {
        format_duration(std::time::Duration::from_secs_f64(s))
    } else {
        "-".to_owned()
    }
}

/// A number in at most a dozen characters: `0.8734`, `1.25e9`, `0`.
pub fn value(v: f64) -> String {
    if v == 0.0 {
        return "0".to_owned();
    }
    if !v.is_finite() || v.abs() >= 1e7 || v.abs() < 1e-3 {
        return format!("{v:.3e}");
    }
    let s = format!("{v:.4}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// The labels that tell the series apart, as `k=v,k=v` per series.
fn series_names(h: &HistoryResponse) -> Vec<String> {
    let keys: BTreeSet<&String> = h.series.iter().flat_map(|s| s.labels.keys()).collect();
    let varying: Vec<&String> = keys
        .into_iter()
        .filter(|k| {
            let first = h.series.first().and_then(|s| s.labels.get(*k));
            h.series.iter().any(|s| s.labels.get(*k) != first)
        })
        .collect();
    h.series
        .iter()
        .map(|s| {
            let parts: Vec<String> =
                varying.iter().filter_map(|k| s.labels.get(*k).map(|v| format!("{k}={v}"))).collect();
            if parts.is_empty() {
                "VALUE".to_owned()
            } else {
                parts.join(",")
            }
        })
        .collect()
}

/// A point's time: to the second, or to the millisecond for steps shorter
/// than a second.
fn time_cell(t: f64, step: f64) -> String {
    if step >= 1.0 {
        return format_short(t);
    }
    // 2025-05-01T12:00:00.250Z -> 05-01 12:00:00.250
    let full = format_rfc3339(t);
    match (full.get(5..10), full.get(11..23)) {
        (Some(date), Some(time)) => format!("{date} {time}"),
        _ => full,
    }
}

/// A history answer under a line saying what it shows: a column per series
/// (rows by time), or with `rows`, or more than [`MAX_COLUMNS`] series, a
/// row per point.
pub fn history_table(h: &HistoryResponse, rows: bool) -> String {
    let what = if h.rate { "per-second rate over each step" } else { "mean of each step" };
    let mut s = format!(
        "{} ({}, {what}), {} to {} UTC, step {}, resolution {}\n",
        h.metric,
        h.kind,
        format_short(h.from),
        format_short(h.to),
        secs(h.step),
        secs(h.resolution),
    );
    if h.series.is_empty() {
        s.push_str("no samples in this range\n");
        return s;
    }
    let names = series_names(h);
    if rows || h.series.len() > MAX_COLUMNS {
        let mut points: Vec<(f64, &str, f64)> = h
            .series
            .iter()
            .zip(&names)
            .flat_map(|(series, name)| series.points.iter().map(move |&(t, v)| (t, name.as_str(), v)))
            .collect();
        points.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(b.1)));
        let body: Vec<Vec<String>> =
            points.into_iter().map(|(t, name, v)| vec![time_cell(t, h.step), name.to_owned(), value(v)]).collect();
        s.push_str(&table(&["TIME(UTC)", "SERIES", "VALUE"], &body));
        return s;
    }
    // Steps are shared by every series (they start at `from`), so times
    // from different series line up exactly.
    let mut by_time: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for (i, series) in h.series.iter().enumerate() {
        for &(t, v) in &series.points {
            let row = by_time.entry(t.to_bits()).or_insert_with(|| vec!["-".to_owned(); h.series.len()]);
            row[i] = value(v);
        }
    }
    let mut times: Vec<(f64, Vec<String>)> = by_time.into_iter().map(|(t, r)| (f64::from_bits(t), r)).collect();
    times.sort_by(|a, b| a.0.total_cmp(&b.0));
    let body: Vec<Vec<String>> =
        times.into_iter().map(|(t, cells)| std::iter::once(format_short(t)).chain(cells).collect()).collect();
    let mut header = vec!["TIME(UTC)"];
    header.extend(names.iter().map(String::as_str));
    s.push_str(&table(&header, &body));
    s
}

fn alert_order(a: &AlertView) -> (u8, i64) {
    let rank = match a.state {
        AlertState::Firing => 0,
        AlertState::Pending => 1,
        AlertState::Resolved => 2,
    };
    // Latest first within a state.
    let t = a.resolved_at.or(a.fired_at).unwrap_or(a.started_at);
    (rank, -(t * 1000.0) as i64)
}

/// The alerts (firing, then pending, then resolved, latest first), and with
/// `rules` the rules, with ages counted to `now`.
pub fn alerts_table(a: &AlertsResponse, rules: bool, now: f64) -> String {
    let mut s = String::new();
    if !a.evaluating {
        s.push_str("gpuvisord evaluates no rules (it runs with --telemetry-interval-ms 0)\n");
    } else if a.rules.is_empty() {
        s.push_str("no alert rules (gpuvisord --alert-rules FILE)\n");
    }
    let mut alerts: Vec<&AlertView> = a.alerts.iter().collect();
    alerts.sort_by_key(|x| alert_order(x));
    if alerts.is_empty() {
        if !a.rules.is_empty() {
            s.push_str(&format!("no alerts ({} rules evaluated)\n", a.rules.len()));
        }
    } else {
        let body: Vec<Vec<String>> = alerts
            .iter()
            .map(|x| {
                let labels: Vec<String> =
                    x.labels.iter().filter(|(k, _)| *k != "alertname").map(|(k, v)| format!("{k}={v}")).collect();
                vec![
                    x.state.as_str().to_owned(),
                    x.rule.clone(),
                    labels.join(","),
                    x.value.map_or_else(|| "-".to_owned(), value),
                    format_age(now - x.started_at),
                    x.fired_at.map_or_else(|| "-".to_owned(), format_short),
                    x.resolved_at.map_or_else(|| "-".to_owned(), format_short),
                    x.summary.clone().unwrap_or_default(),
                ]
            })
            .collect();
        s.push_str(&table(&["STATE", "RULE", "LABELS", "VALUE", "SINCE", "FIRED", "RESOLVED", "SUMMARY"], &body));
    }
    if rules && !a.rules.is_empty() {
        s.push('\n');
        let body: Vec<Vec<String>> = a
            .rules
            .iter()
            .map(|r| {
                vec![
                    r.name.clone(),
                    secs(r.for_s),
                    r.severity.clone().unwrap_or_else(|| "-".to_owned()),
                    r.expr.split_whitespace().collect::<Vec<_>>().join(" "),
                ]
            })
            .collect();
        s.push_str(&table(&["RULE", "FOR", "SEVERITY", "EXPR"], &body));
    }
    if a.webhook {
        s.push_str("firing and resolved alerts are posted to the webhook\n");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::HistorySeries;

    fn series(vm: &str, points: &[(f64, f64)]) -> HistorySeries {
        HistorySeries {
            labels: BTreeMap::from([("vm".to_owned(), vm.to_owned()), ("gpu".to_owned(), "sim".to_owned())]),
            points: points.to_vec(),
        }
    }

    fn answer(series: Vec<HistorySeries>) -> HistoryResponse {
        HistoryResponse {
            metric: "gpuvisor_vm_gpu_share".into(),
            kind: "gauge".into(),
            rate: false,
            from: 1_746_100_800.0,
            to: 1_746_100_830.0,
            step: 10.0,
            resolution: 1.0,
            series,
        }
    }

    #[test]
    fn a_few_series_print_as_columns_named_by_the_labels_that_differ() {
        let t0 = 1_746_100_800.0;
        let h = answer(vec![series("a", &[(t0, 0.5), (t0 + 10.0, 0.25)]), series("b", &[(t0 + 10.0, 0.75)])]);
        let text = history_table(&h, false);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("gpuvisor_vm_gpu_share (gauge, mean of each step), 05-01 12:00:00"), "{text}");
        assert_eq!(lines[1], "TIME(UTC)       vm=a  vm=b");
        assert_eq!(lines[2], "05-01 12:00:00  0.5   -");
        assert_eq!(lines[3], "05-01 12:00:10  0.25  0.75");
    }

    #[test]
    fn rows_print_one_point_per_line() {
        let t0 = 1_746_100_800.0;
        let h = answer(vec![series("a", &[(t0, 0.5)]), series("b", &[(t0, 1e-5)])]);
        let text = history_table(&h, true);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[1], "TIME(UTC)       SERIES  VALUE");
        assert_eq!(lines[2], "05-01 12:00:00  vm=a    0.5");
        assert_eq!(lines[3], "05-01 12:00:00  vm=b    1.000e-5");
        let fine = HistoryResponse { step: 0.25, ..answer(vec![series("a", &[(t0 + 0.25, 1.0)])]) };
        assert_eq!(history_table(&fine, true).lines().nth(2), Some("05-01 12:00:00.250  VALUE   1"));
    }

    #[test]
    fn alerts_print_firing_first_with_their_times() {
        let alert = |state, rule: &str, fired: Option<f64>, resolved: Option<f64>| AlertView {
            rule: rule.into(),
            state,
            labels: BTreeMap::from([("alertname".to_owned(), rule.to_owned()), ("vm".to_owned(), "a".to_owned())]),
            value: Some(0.5),
            started_at: 1_746_100_800.0,
            fired_at: fired,
            resolved_at: resolved,
            summary: Some("s".into()),
            description: None,
            fingerprint: "0".into(),
        };
        let a = AlertsResponse {
            evaluating: true,
            webhook: false,
            rules: vec![crate::alerts::AlertRuleView {
                name: "Hot".into(),
                expr: "x > 1".into(),
                for_s: 30.0,
                labels: BTreeMap::new(),
                severity: None,
                summary: None,
                description: None,
            }],
            alerts: vec![
                alert(AlertState::Resolved, "Old", Some(1_746_100_810.0), Some(1_746_100_820.0)),
                alert(AlertState::Firing, "Hot", Some(1_746_100_810.0), None),
            ],
        };
        let text = alerts_table(&a, true, 1_746_100_830.0);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "STATE     RULE  LABELS  VALUE  SINCE  FIRED           RESOLVED        SUMMARY");
        assert_eq!(lines[1], "firing    Hot   vm=a    0.5    30s    05-01 12:00:10  -               s");
        assert_eq!(lines[2], "resolved  Old   vm=a    0.5    30s    05-01 12:00:10  05-01 12:00:20  s");
        assert_eq!(lines[4..], ["RULE  FOR  SEVERITY  EXPR", "Hot   30s  -         x > 1"]);
    }
}
