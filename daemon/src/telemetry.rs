//! The telemetry sampler: a thread of its own that, every
//! `--telemetry-interval-ms`, takes the snapshot `GET /metrics` shows,
//! flattens it to samples, evaluates the alert rules on them and writes them
//! and the alerts' changes to the history in one SQLite transaction. Nothing
//! here runs on the grant path: one snapshot costs each GPU's scheduler one
//! `Query` event and the registry's lock one short hold, and SQLite is
//! written after both are released.

use crate::alerts::{webhook::Webhook, Evaluator, RuleSet, Transition};
use crate::history::{History, HistoryError, Retention};
use crate::DaemonAdmin;
use gpuvisor_admin::alerts::{AlertRuleView, AlertsResponse};
use gpuvisor_admin::metrics::{families, Family, Kind};
use gpuvisor_admin::Admin;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Default time between samples.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
/// How often completed minutes and hours are rolled up and old samples
/// pruned: often enough that the raw level never holds much more than its
/// retention, rarely enough that it costs nothing next to the ticks.
const MAINTENANCE_EVERY_MS: i64 = 60_000;
/// Resolved alerts shown by `GET /v1/alerts` (and reloaded at start) for this long.
pub const KEEP_RESOLVED_S: f64 = 86_400.0;

/// One sample of one series, as a scrape shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub metric: String,
    pub kind: Kind,
    /// Summaries keep their `quantile` label, one sample per quantile.
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    pub fn new(metric: &str, kind: Kind, labels: &[(&str, &str)], value: f64) -> Sample {
        Sample {
            metric: metric.to_owned(),
            kind,
            labels: labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            value,
        }
    }
}

/// The samples of a scrape's families. Values that are not finite numbers
/// are left out: they would poison every mean and rate they enter.
pub fn flatten(families: &[Family]) -> Vec<Sample> {
    let mut out = Vec::with_capacity(families.iter().map(|f| f.samples().len()).sum());
    for f in families {
        for (labels, value) in f.samples() {
            let value = value.as_f64();
            if !value.is_finite() {
                continue;
            }
            out.push(Sample {
                metric: f.name.to_owned(),
                kind: f.kind,
                labels: labels.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect(),
                value,
            });
        }
    }
    out
}

/// What the sampler needs to start.
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    /// Time between samples; zero turns history and alerts off.
    pub interval: Duration,
    pub retention: Retention,
    pub rules: RuleSet,
    /// Where firing and resolved alerts are posted (Alertmanager's webhook
    /// format); overrides the rules file's `webhook_url`.
    pub webhook_url: Option<String>,
    /// The admin API's URL, as the webhook's `externalURL`.
    pub external_url: String,
}

impl Default for TelemetryConfig {
    fn default() -> TelemetryConfig {
        TelemetryConfig {
            interval: DEFAULT_INTERVAL,
            retention: Retention::default(),
            rules: RuleSet::default(),
            webhook_url: None,
            external_url: String::new(),
        }
    }
}

/// What the admin API reads: a connection of its own to the history (WAL
/// lets it read while the sampler writes) and the alerts as of the last tick.
pub struct TelemetryView {
    history: Mutex<History>,
    alerts: Mutex<AlertsResponse>,
}

impl TelemetryView {
    /// Never held across anything but a history query.
    pub(crate) fn history(&self) -> MutexGuard<'_, History> {
        self.history.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn alerts(&self) -> AlertsResponse {
        self.alerts.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The running sampler.
pub struct Telemetry {
    view: Arc<TelemetryView>,
    stop: mpsc::Sender<()>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

impl Telemetry {
    /// Opens the history under `state_dir`, reloads the alert log and starts
    /// the sampler thread over `admin` (a view of the daemon without
    /// telemetry of its own).
    pub fn start(config: TelemetryConfig, state_dir: &Path, admin: DaemonAdmin) -> Result<Telemetry, HistoryError> {
        let resolution = config.interval.as_secs_f64();
        let writer = History::open(state_dir, config.retention, resolution)?;
        let reader = History::open(state_dir, config.retention, resolution)?;
        let now = unix_now();
        let log = writer.alert_log(now - KEEP_RESOLVED_S)?;
        let webhook_url = config.webhook_url.clone().or_else(|| config.rules.webhook_url.clone());
        let rule_views: Vec<AlertRuleView> = config.rules.rules.iter().map(|r| r.view()).collect();
        let evaluator = Evaluator::new(config.rules.rules.clone(), log, KEEP_RESOLVED_S);
        let view = Arc::new(TelemetryView {
            history: Mutex::new(reader),
            alerts: Mutex::new(AlertsResponse {
                evaluating: true,
                webhook: webhook_url.is_some(),
                rules: rule_views,
                alerts: evaluator.alerts(),
            }),
        });
        let webhook = webhook_url.map(|url| Webhook::start(url, config.external_url.clone()));
        tracing::info!(
            interval_ms = config.interval.as_millis() as u64,
            rules = config.rules.rules.len(),
            path = %writer.path().display(),
            "telemetry history and alerts on"
        );
        let (stop, stopped) = mpsc::channel();
        let sampler = Sampler { admin, history: writer, evaluator, webhook, view: view.clone(), next_maintenance: 0 };
        let interval = config.interval;
        let thread = std::thread::Builder::new()
            .name("gpuvisord-telemetry".into())
            .spawn(move || sampler.run(interval, stopped))
            .map_err(|e| HistoryError::Thread(e.to_string()))?;
        Ok(Telemetry { view, stop, thread: Some(thread) })
    }

    pub fn view(&self) -> Arc<TelemetryView> {
        self.view.clone()
    }

    /// Stops the sampler after its current tick (and the webhook after one
    /// last attempt at what it still holds).
    pub fn stop(mut self) {
        let _ = self.stop.send(());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Sampler {
    admin: DaemonAdmin,
    history: History,
    evaluator: Evaluator,
    webhook: Option<Webhook>,
    view: Arc<TelemetryView>,
    /// Unix ms of the next rollup and pruning.
    next_maintenance: i64,
}

impl Sampler {
    fn run(mut self, interval: Duration, stop: mpsc::Receiver<()>) {
        let mut next = Instant::now() + interval;
        // Anything but a timeout (a stop, or the daemon gone) ends the loop.
        while let Err(mpsc::RecvTimeoutError::Timeout) =
            stop.recv_timeout(next.saturating_duration_since(Instant::now()))
        {
            let started = Instant::now();
            self.tick(unix_now());
            let took = started.elapsed();
            tracing::trace!(took_us = took.as_micros() as u64, "telemetry tick");
            // A tick that overran skips the ticks it missed instead of
            // running them back to back.
            next += interval;
            if next < Instant::now() {
                tracing::warn!(took_ms = took.as_millis() as u64, "telemetry tick took longer than the interval");
                next = Instant::now() + interval;
            }
        }
        if let Some(w) = self.webhook.take() {
            w.stop();
        }
    }

    fn tick(&mut self, now: f64) {
        let snapshot = self.admin.metrics();
        let samples = flatten(&families(&snapshot));
        let transitions = self.evaluator.evaluate(now, &samples);
        let now_ms = (now * 1000.0) as i64;
        if let Err(e) = self.history.record(now_ms, &samples, &transitions) {
            tracing::warn!("telemetry history not written: {e}");
        }
        for t in &transitions {
            match t {
                Transition::Fired(a) => {
                    tracing::warn!(rule = %a.rule, labels = ?a.labels, value = ?a.value, "alert firing")
                }
                Transition::Resolved(a) => tracing::info!(rule = %a.rule, labels = ?a.labels, "alert resolved"),
            }
            if let Some(w) = &self.webhook {
                w.send(t);
            }
        }
        {
            let alerts = self.evaluator.alerts();
            self.view.alerts.lock().unwrap_or_else(|p| p.into_inner()).alerts = alerts;
        }
        if now_ms >= self.next_maintenance {
            self.next_maintenance = now_ms + MAINTENANCE_EVERY_MS;
            let started = Instant::now();
            match self.history.maintain(now_ms) {
                Ok(()) => {
                    tracing::debug!(took_ms = started.elapsed().as_millis() as u64, "history rolled up and pruned")
                }
                Err(e) => tracing::warn!("history maintenance failed: {e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpuvisor_admin::metrics::MetricsSnapshot;

    #[test]
    fn a_scrape_flattens_to_one_sample_per_series_with_quantiles_kept() {
        let vm: gpuvisor_admin::VmView = serde_json::from_str(
            r#"{
            "name": "a", "gpu": "sim", "state": "running", "connected": true, "pid": 1, "engine": "sim",
            "class": "guaranteed", "weight": 100, "priority": 0, "slice_us": 10000, "slice_us_override": null,
            "max_queued_ops": 16, "drained": false, "share_configured": 1.0, "share_used": 0.75, "gpu_time_s": 2.5,
            "queued": 0, "inflight_ops": 0, "ops_total": 0, "latency_p50_us": 100.0, "latency_p99_us": 900.0,
            "quota_bytes": 0, "used_bytes": 0, "limit_bytes": 0, "resident_bytes": 0, "evicted_bytes": 0,
            "evictions": 0, "restores": 0, "evict_ms_total": 0.0, "restore_ms_total": 0.0, "last_restore_ms": null,
            "swapped_out_bytes": 0, "swapped_in_bytes": 0, "grant_wait_s": 0.0, "grants": 0, "preemptions": 0,
            "registrations": 1, "reconnects": 0, "launches": 0, "copies_htod": 0, "copies_dtoh": 0,
            "copies_dtod": 0, "bytes_htod": 0, "bytes_dtoh": 0, "bytes_dtod": 0, "api_errors": {}, "faults": 0
        }"#,
        )
        .unwrap();
        let samples = flatten(&families(&MetricsSnapshot { vms: vec![vm], ..Default::default() }));
        let find = |metric: &str, extra: Option<(&str, &str)>| {
            samples
                .iter()
                .find(|s| {
                    s.metric == metric && extra.is_none_or(|(k, v)| s.labels.get(k).map(String::as_str) == Some(v))
                })
                .unwrap_or_else(|| panic!("{metric} missing"))
        };
        let share = find("gpuvisor_vm_gpu_share", None);
        assert_eq!((share.kind, share.value), (Kind::Gauge, 0.75));
        assert_eq!(share.labels.get("class").map(String::as_str), Some("guaranteed"));
        assert_eq!(find("gpuvisor_vm_gpu_seconds_total", None).kind, Kind::Counter);
        let p99 = find("gpuvisor_vm_request_latency_seconds", Some(("quantile", "0.99")));
        assert_eq!((p99.kind, p99.value), (Kind::Summary, 900e-6));
        let mut keys: Vec<_> = samples.iter().map(|s| (s.metric.clone(), s.labels.clone())).collect();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), samples.len(), "a series appears twice");
    }
}
