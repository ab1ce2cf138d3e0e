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
    pub metric: String,
    /// Only this VM's series (the `vm` label).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<String>,
    /// Only this GPU's series (the `gpu` label).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<String>,
    /// Start of the range [default: an hour before `to`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<f64>,
    /// End of the range [default: now].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<f64>,
    /// Seconds per point [default: the range over 500, at least the
    /// resolution of the stored data it reads].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<f64>,
}

/// The answer of `GET /v1/history`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HistoryResponse {
    pub metric: String,
    /// `gauge` or `counter`, as `GET /metrics` types it.
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
