//! What `GET /v1/history` asks and answers: one metric's stored samples over
//! a time range, one series per label set, aggregated to a step. The daemon
//! keeps the history (SQLite, with retention and downsampling); `gpuvisorctl
//! history` and `gpuvisorctl report` read it through this.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::{IntoParams, ToSchema};

/// Query parameters of `GET /v1/history`. Times are Unix seconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    /// A metric as `GET /metrics` names it, e.g. `gpuvisor_vm_gpu_share`.
    #[param(min_length = 1, example = "gpuvisor_vm_gpu_share")]
    pub metric: String,
    /// Only this VM's series (the `vm` label).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<String>,
    /// Only this GPU's series (the `gpu` label).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<String>,
    /// Start of the range [default: an hour before `to`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(minimum = 0, maximum = 100000000000_u64)]
    pub from: Option<f64>,
    /// End of the range [default: now].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(minimum = 0, maximum = 100000000000_u64)]
    pub to: Option<f64>,
    /// Seconds per point [default: the range over 500, at least the
    /// resolution of the stored data it reads]. A step finer than that
    /// resolution is raised to it; one that would give more than 11000
    /// points per series is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(exclusive_minimum = 0, maximum = 100000000000_u64)]
    pub step: Option<f64>,
}

/// The answer of `GET /v1/history`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HistoryResponse {
    pub metric: String,
    /// `gauge`, `counter` or `summary`, as `GET /metrics` types it (a
    /// summary's quantiles read as gauges, `quantile` being a label).
    pub kind: String,
    /// For a counter, points are its per-second rate over each step; for a
    /// gauge, the mean of the samples in each step.
    pub rate: bool,
    pub from: f64,
    pub to: f64,
    /// Seconds per point.
    pub step: f64,
    /// Seconds between the stored samples read (the raw interval, or a
    /// downsampled tier's when the range reaches back past raw retention).
    pub resolution: f64,
    pub series: Vec<HistorySeries>,
}

/// One label set's points, oldest first; a step with no samples has no point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HistorySeries {
    pub labels: BTreeMap<String, String>,
    /// `[unix seconds at the step's start, value]` pairs.
    pub points: Vec<(f64, f64)>,
}

/// Most points one series may have in an answer: a query whose range over
/// its step gives more is refused, as Prometheus refuses one (400), rather
/// than silently thinned.
pub const MAX_POINTS: f64 = 11_000.0;
/// The range a query without `from` covers, in seconds.
pub const DEFAULT_RANGE_S: f64 = 3600.0;
/// Points per series a query without `step` gets (at most).
pub const DEFAULT_POINTS: f64 = 500.0;
/// The latest time a query may name (about the year 5138): keeps range and
/// point arithmetic finite.
pub const MAX_TIME: f64 = 1e11;

/// A query field that cannot be answered, named so the HTTP layer can say
/// which (400).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InvalidQuery {
    pub field: &'static str,
    pub message: String,
}

/// A [`HistoryQuery`] with its range settled.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedQuery {
    pub metric: String,
    pub vm: Option<String>,
    pub gpu: Option<String>,
    pub from: f64,
    pub to: f64,
    /// As asked; the store raises it to the resolution it reads.
    pub step: Option<f64>,
}

impl HistoryQuery {
    /// Checks the fields and fills in the defaults of the range, `now` being
    /// the server's clock (Unix seconds).
    pub fn resolve(&self, now: f64) -> Result<ResolvedQuery, InvalidQuery> {
        let invalid = |field: &'static str, message: String| InvalidQuery { field, message };
        if self.metric.is_empty() {
            return Err(invalid("metric", "must name a metric, e.g. gpuvisor_vm_gpu_share".to_owned()));
        }
        for (field, value) in [("from", self.from), ("to", self.to)] {
            if let Some(v) = value {
                if !(v.is_finite() && (0.0..=MAX_TIME).contains(&v)) {
                    return Err(invalid(field, format!("must be Unix seconds between 0 and {MAX_TIME:e}, got {v}")));
                }
            }
        }
        if let Some(step) = self.step {
            if !(step.is_finite() && step > 0.0 && step <= MAX_TIME) {
                return Err(invalid("step", format!("must be a positive number of seconds, got {step}")));
            }
        }
        let to = self.to.unwrap_or(now.clamp(0.0, MAX_TIME));
        let from = self.from.unwrap_or((to - DEFAULT_RANGE_S).max(0.0));
        if from > to {
            return Err(invalid("from", format!("must not be after to ({from} > {to})")));
        }
        if let Some(step) = self.step {
            let points = ((to - from) / step).floor() + 1.0;
            if points > MAX_POINTS {
                let least = (to - from) / (MAX_POINTS - 1.0);
                return Err(invalid(
                    "step",
                    format!(
                        "a step of {} s over {} s gives {points} points per series, more than {MAX_POINTS}: \
                         use a step of at least {} s or a shorter range",
                        short(step),
                        short(to - from),
                        short((least * 1000.0).ceil() / 1000.0),
                    ),
                ));
            }
        }
        Ok(ResolvedQuery {
            metric: self.metric.clone(),
            vm: self.vm.clone(),
            gpu: self.gpu.clone(),
            from,
            to,
            step: self.step,
        })
    }
}

/// Seconds as a message writes them: at most 3 decimals, none trailing.
fn short(s: f64) -> String {
    let t = format!("{s:.3}");
    t.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// One stored metric, as `GET /v1/history/metrics` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HistoryMetric {
    /// As `GET /metrics` names it.
    pub name: String,
    /// `counter`, `gauge` or `summary`.
    pub kind: String,
    /// Label sets stored for it.
    pub series: u64,
}

/// One level of stored history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HistoryTier {
    /// `raw` (every sample), `minute` or `hour` (downsampled).
    pub name: String,
    /// Seconds between its points.
    pub resolution: f64,
    /// How long it is kept, in seconds.
    pub retention: f64,
}

/// The answer of `GET /v1/history/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HistoryMetrics {
    /// Sorted by name.
    pub metrics: Vec<HistoryMetric>,
    /// Finest first.
    pub tiers: Vec<HistoryTier>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(from: Option<f64>, to: Option<f64>, step: Option<f64>) -> HistoryQuery {
        HistoryQuery { metric: "m".into(), from, to, step, ..Default::default() }
    }

    #[test]
    fn a_query_without_a_range_covers_the_last_hour() {
        let r = q(None, None, None).resolve(10_000.0).unwrap();
        assert_eq!((r.from, r.to, r.step), (6400.0, 10_000.0, None));
    }

    #[test]
    fn impossible_ranges_name_their_field() {
        let field = |query: HistoryQuery| query.resolve(10_000.0).unwrap_err().field;
        assert_eq!(field(q(Some(5.0), Some(4.0), None)), "from");
        assert_eq!(field(q(Some(f64::NAN), None, None)), "from");
        assert_eq!(field(q(None, Some(f64::INFINITY), None)), "to");
        assert_eq!(field(q(None, None, Some(0.0))), "step");
        assert_eq!(field(q(None, None, Some(-1.0))), "step");
        assert_eq!(field(HistoryQuery { metric: String::new(), ..Default::default() }), "metric");
    }

    #[test]
    fn more_than_11000_points_per_series_are_refused() {
        assert!(q(Some(0.0), Some(10_999.0), Some(1.0)).resolve(0.0).is_ok());
        let e = q(Some(0.0), Some(11_000.0), Some(1.0)).resolve(0.0).unwrap_err();
        assert_eq!(e.field, "step");
        assert!(e.message.contains("a step of 1 s over 11000 s gives 11001 points"), "{e}");
        assert!(e.message.contains("at least 1.001 s"), "{e}");
    }
}
