//! What `GET /v1/alerts` answers: the alert rules gpuvisord evaluates (from
//! its `--alert-rules` file) and the alerts they raised, pending, firing or
//! resolved, with their times. `gpuvisorctl alerts` prints it.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// Where an alert stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AlertState {
    /// Its condition holds, not yet for the rule's `for`.
    Pending,
    /// Its condition has held for the rule's `for`, and still holds.
    Firing,
    /// It fired, and its condition no longer holds.
    Resolved,
}

impl AlertState {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Pending => "pending",
            AlertState::Firing => "firing",
            AlertState::Resolved => "resolved",
        }
    }
}

/// One rule, as gpuvisord parsed it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AlertRuleView {
    pub name: String,
    /// The condition, as parsed (normalized spacing and parentheses).
    pub expr: String,
    /// Seconds the condition must hold before the alert fires.
    pub for_s: f64,
    /// Labels added to every alert of the rule (`severity` among them when set).
    pub labels: BTreeMap<String, String>,
    pub severity: Option<String>,
    /// The summary template, before expansion.
    pub summary: Option<String>,
    /// The description template, before expansion.
    pub description: Option<String>,
}

/// One alert: a rule's condition for one label set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AlertView {
    /// The rule's name (also the `alertname` label).
    pub rule: String,
    pub state: AlertState,
    /// The series' labels, the rule's labels and `alertname`.
    pub labels: BTreeMap<String, String>,
    /// The condition's value at the last evaluation it held (for a resolved
    /// alert, the last value while it held); null where not a finite number.
    pub value: Option<f64>,
    /// When the condition started to hold (Unix seconds).
    pub started_at: f64,
    /// When it fired (Unix seconds); null while pending.
    pub fired_at: Option<f64>,
    /// When it resolved (Unix seconds); null while pending or firing.
    pub resolved_at: Option<f64>,
    /// The rule's summary with this alert's labels and value filled in.
    pub summary: Option<String>,
    pub description: Option<String>,
    /// A hash of the labels (16 hex digits), as Alertmanager identifies alerts.
    pub fingerprint: String,
}

/// The answer of `GET /v1/alerts`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AlertsResponse {
    /// Whether gpuvisord evaluates rules (false with --telemetry-interval-ms 0).
    pub evaluating: bool,
    /// Whether firing and resolved alerts are posted to a webhook.
    pub webhook: bool,
    pub rules: Vec<AlertRuleView>,
    /// Firing first, then pending, then resolved (latest first); resolved
    /// alerts are kept for a day.
    pub alerts: Vec<AlertView>,
}
