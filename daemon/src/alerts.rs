//! Alert rules: read from a TOML file at start (`--alert-rules`), evaluated
//! by the sampler every tick, each alert a label set's way from pending to
//! firing (its condition held for the rule's `for`) to resolved (it stopped
//! holding). Transitions go to the history's alert log and, when configured,
//! to a webhook in Alertmanager's format ([`webhook`]).
//!
//! ```toml
//! webhook_url = "http://127.0.0.1:5001/alerts"     # optional
//!
//! [[rule]]
//! name = "GpuMemoryNearlyFull"
//! expr = "gpuvisor_gpu_memory_resident_bytes / gpuvisor_gpu_memory_capacity_bytes > 0.95"
//! for = "1m"                                       # optional, default 0s
//! severity = "warning"                             # optional, also a label
//! labels = { team = "gpu" }                        # optional
//! summary = "GPU {{ $labels.gpu }} memory at {{ $value }}"   # optional
//! description = "..."                              # optional
//! ```

pub mod expr;
pub mod webhook;

use crate::telemetry::Sample;
use expr::{Expr, Instant, Labels, Value, Window};
use gpuvisor_admin::alerts::{AlertRuleView, AlertState, AlertView};
use gpuvisor_admin::time::parse_duration;
use serde::Deserialize;
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use toml::Spanned;

/// Resolved alerts kept in memory (and shown) at most.
const MAX_RESOLVED: usize = 1000;

/// Why a rules file was refused.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("cannot read the alert rules {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    /// TOML's own message names the line and column, and the field.
    #[error("alert rules {path}: {message}")]
    Toml { path: PathBuf, message: String },
    #[error("alert rules {path}, line {line}: rule {rule:?}: {field}: {message}")]
    Rule { path: PathBuf, line: usize, rule: String, field: &'static str, message: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    webhook_url: Option<String>,
    #[serde(default)]
    rule: Vec<RuleFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    name: Spanned<String>,
    expr: Spanned<String>,
    #[serde(rename = "for")]
    for_: Option<Spanned<String>>,
    severity: Option<Spanned<String>>,
    labels: Option<Spanned<BTreeMap<String, String>>>,
    summary: Option<Spanned<String>>,
    description: Option<Spanned<String>>,
}

/// A text with `{{ $labels.NAME }}` and `{{ $value }}` filled in per alert.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    Label(String),
    Value,
}

impl Template {
    pub fn parse(source: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = source;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_owned()));
            }
            let after = &rest[open + 2..];
            let close = after.find("}}").ok_or_else(|| format!("`{{{{` at byte {open} is not closed by `}}}}`"))?;
            let inner = after[..close].trim();
            if inner == "$value" {
                parts.push(Part::Value);
            } else if let Some(label) = inner.strip_prefix("$labels.").filter(|l| is_label_name(l)) {
                parts.push(Part::Label(label.to_owned()));
            } else {
                return Err(format!(
                    "`{{{{ {inner} }}}}` is not supported: use {{{{ $labels.NAME }}}} or {{{{ $value }}}}"
                ));
            }
            rest = &after[close + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(Template { source: source.to_owned(), parts })
    }

    /// The text for one alert; a label it lacks reads as empty.
    pub fn render(&self, labels: &Labels, value: f64) -> String {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Label(l) => out.push_str(labels.get(l).map_or("", String::as_str)),
                Part::Value => out.push_str(&format_value(value)),
            }
        }
        out
    }
}

/// A value as templates show it: up to four decimals, no trailing zeros.
fn format_value(v: f64) -> String {
    if !v.is_finite() {
        return v.to_string();
    }
    if v != 0.0 && (v.abs() >= 1e9 || v.abs() < 1e-4) {
        return format!("{v:e}");
    }
    let s = format!("{v:.4}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

fn is_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// One rule, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub name: String,
    pub expr: Expr,
    /// Seconds the condition must hold before the alert fires.
    pub for_s: f64,
    /// Added to every alert's labels (`severity` among them when set).
    pub labels: Labels,
    pub severity: Option<String>,
    pub summary: Option<Template>,
    pub description: Option<Template>,
}

impl Rule {
    pub fn view(&self) -> AlertRuleView {
        AlertRuleView {
            name: self.name.clone(),
            expr: self.expr.to_string(),
            for_s: self.for_s,
            labels: self.labels.clone(),
            severity: self.severity.clone(),
            summary: self.summary.as_ref().map(|t| t.source.clone()),
            description: self.description.as_ref().map(|t| t.source.clone()),
        }
    }
}

/// A rules file's content.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuleSet {
    pub rules: Vec<Rule>,
    pub webhook_url: Option<String>,
}

/// Reads and checks a rules file.
pub fn load(path: &Path) -> Result<RuleSet, RulesError> {
    let text = std::fs::read_to_string(path).map_err(|source| RulesError::Read { path: path.to_owned(), source })?;
    parse(&text, path)
}

/// Checks that a webhook URL is one the sender can post to.
pub fn check_webhook_url(url: &str) -> Result<(), String> {
    let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://"));
    match rest {
        Some(host) if !host.is_empty() && !host.starts_with('/') => Ok(()),
        _ => Err(format!("expected an http:// or https:// URL, got {url:?}")),
    }
}

/// Checks the rules in `text` (read from `path`, which errors name).
pub fn parse(text: &str, path: &Path) -> Result<RuleSet, RulesError> {
    let file: RulesFile =
        toml::from_str(text).map_err(|e| RulesError::Toml { path: path.to_owned(), message: e.to_string() })?;
    let line_of = |span: std::ops::Range<usize>| text[..span.start.min(text.len())].matches('\n').count() + 1;
    if let Some(url) = &file.webhook_url {
        check_webhook_url(url).map_err(|message| RulesError::Toml {
            path: path.to_owned(),
            message: format!("webhook_url: {message}"),
        })?;
    }
    let mut rules = Vec::new();
    let mut names = HashSet::new();
    for r in file.rule {
        let name = r.name.get_ref().trim().to_owned();
        let fail = |span: std::ops::Range<usize>, field: &'static str, message: String| RulesError::Rule {
            path: path.to_owned(),
            line: line_of(span),
            rule: name.clone(),
            field,
            message,
        };
        if name.is_empty() {
            return Err(fail(r.name.span(), "name", "must not be empty".to_owned()));
        }
        if !names.insert(name.clone()) {
            return Err(fail(r.name.span(), "name", "another rule has this name".to_owned()));
        }
        let expr = Expr::parse(r.expr.get_ref()).map_err(|e| {
            // The expression's lines count from the line its string starts
            // on; a multi-line string drops the line break after its quotes.
            let span = r.expr.span();
            let opening = text.get(span.start..).unwrap_or("");
            let dropped = ["'''\n", "'''\r\n", "\"\"\"\n", "\"\"\"\r\n"].iter().any(|q| opening.starts_with(q));
            RulesError::Rule {
                path: path.to_owned(),
                line: line_of(span) + e.line - 1 + usize::from(dropped),
                rule: name.clone(),
                field: "expr",
                message: e.to_string(),
            }
        })?;
        let for_s = match &r.for_ {
            Some(f) => parse_duration(f.get_ref()).map_err(|e| fail(f.span(), "for", e.to_string()))?.as_secs_f64(),
            None => 0.0,
        };
        let mut labels = Labels::new();
        if let Some(l) = &r.labels {
            for (k, v) in l.get_ref() {
                if !is_label_name(k) || k.starts_with("__") || k == "alertname" {
                    return Err(fail(
                        l.span(),
                        "labels",
                        format!("{k:?} is not a label a rule may set (letters, digits and _, not alertname)"),
                    ));
                }
                labels.insert(k.clone(), v.clone());
            }
        }
        let severity = r.severity.as_ref().map(|s| s.get_ref().clone());
        if let Some(s) = &severity {
            labels.insert("severity".to_owned(), s.clone());
        }
        let template = |t: &Option<Spanned<String>>, field| {
            t.as_ref().map(|t| Template::parse(t.get_ref()).map_err(|m| fail(t.span(), field, m))).transpose()
        };
        let summary = template(&r.summary, "summary")?;
        let description = template(&r.description, "description")?;
        rules.push(Rule { name, expr, for_s, labels, severity, summary, description });
    }
    Ok(RuleSet { rules, webhook_url: file.webhook_url })
}

/// An alert firing or resolved this tick.
#[derive(Debug, Clone, PartialEq)]
pub enum Transition {
    Fired(AlertView),
    Resolved(AlertView),
}

/// FNV-1a over the sorted labels: stable across restarts and builds, so a
/// receiver sees one alert as the same one.
pub fn fingerprint(labels: &Labels) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (k, v) in labels {
        for b in k.bytes().chain([0xff]).chain(v.bytes()).chain([0xff]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

/// The rules' state: active alerts by rule and fingerprint, and the
/// recently resolved ones.
#[derive(Debug)]
pub struct Evaluator {
    rules: Vec<Rule>,
    window: Window,
    active: BTreeMap<(String, String), AlertView>,
    /// Latest first.
    resolved: VecDeque<AlertView>,
    keep_resolved_s: f64,
}

impl Evaluator {
    /// `log`: the alert log as stored (open alerts carry on firing; they
    /// resolve at the first tick their condition does not hold).
    pub fn new(rules: Vec<Rule>, log: Vec<AlertView>, keep_resolved_s: f64) -> Evaluator {
        let window = Window::for_exprs(rules.iter().map(|r| &r.expr));
        let mut active = BTreeMap::new();
        let mut resolved = VecDeque::new();
        for a in log {
            if a.resolved_at.is_some() {
                resolved.push_front(a);
            } else {
                active.insert((a.rule.clone(), a.fingerprint.clone()), AlertView { state: AlertState::Firing, ..a });
            }
        }
        Evaluator { rules, window, active, resolved, keep_resolved_s }
    }

    /// Seconds of samples the window keeps (the longest range in the rules).
    pub fn window_s(&self) -> f64 {
        self.window.longest()
    }

    /// Evaluates every rule at `now` on a tick's samples; returns the alerts
    /// that fired or resolved.
    pub fn evaluate(&mut self, now: f64, samples: &[Sample]) -> Vec<Transition> {
        self.window.push(now, samples);
        let instant = Instant::new(samples);
        let mut out = Vec::new();
        let mut holding = HashSet::new();
        for rule in &self.rules {
            let Value::Vector(results) = rule.expr.eval(now, &instant, &self.window) else {
                continue;
            };
            for (series, value) in results {
                let mut labels = series;
                labels.extend(rule.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
                labels.insert("alertname".to_owned(), rule.name.clone());
                let fp = fingerprint(&labels);
                let key = (rule.name.clone(), fp.clone());
                let render = |t: &Option<Template>| t.as_ref().map(|t| t.render(&labels, value));
                let (summary, description) = (render(&rule.summary), render(&rule.description));
                let a = self.active.entry(key.clone()).or_insert_with(|| AlertView {
                    rule: rule.name.clone(),
                    state: AlertState::Pending,
                    labels: labels.clone(),
                    value: None,
                    started_at: now,
                    fired_at: None,
                    resolved_at: None,
                    summary: None,
                    description: None,
                    fingerprint: fp,
                });
                a.value = value.is_finite().then_some(value);
                a.summary = summary;
                a.description = description;
                if a.fired_at.is_none() && now - a.started_at >= rule.for_s {
                    a.state = AlertState::Firing;
                    a.fired_at = Some(now);
                    out.push(Transition::Fired(a.clone()));
                }
                holding.insert(key);
            }
        }
        let ended: Vec<(String, String)> = self.active.keys().filter(|k| !holding.contains(*k)).cloned().collect();
        for key in ended {
            let Some(mut a) = self.active.remove(&key) else { continue };
            // A pending alert that stops holding never fired: it leaves no trace.
            if a.fired_at.is_some() {
                a.state = AlertState::Resolved;
                a.resolved_at = Some(now);
                out.push(Transition::Resolved(a.clone()));
                self.resolved.push_front(a);
            }
        }
        while self.resolved.len() > MAX_RESOLVED
            || self.resolved.back().is_some_and(|a| a.resolved_at.unwrap_or(now) < now - self.keep_resolved_s)
        {
            self.resolved.pop_back();
        }
        out
    }

    /// Firing, then pending, then resolved (latest first).
    pub fn alerts(&self) -> Vec<AlertView> {
        let mut active: Vec<AlertView> = self.active.values().cloned().collect();
        active.sort_by(|a, b| {
            (a.state != AlertState::Firing, a.started_at, &a.rule)
                .partial_cmp(&(b.state != AlertState::Firing, b.started_at, &b.rule))
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        active.into_iter().chain(self.resolved.iter().cloned()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpuvisor_admin::metrics::Kind;

    fn rules(text: &str) -> Vec<Rule> {
        parse(text, Path::new("rules.toml")).unwrap().rules
    }

    fn rules_err(text: &str) -> String {
        parse(text, Path::new("rules.toml")).unwrap_err().to_string()
    }

    fn share(vm: &str, v: f64) -> Sample {
        Sample::new("share", Kind::Gauge, &[("vm", vm), ("class", "guaranteed")], v)
    }

    const LOW_SHARE: &str = r#"
[[rule]]
name = "LowShare"
expr = "share < 0.5"
for = "30s"
severity = "warning"
labels = { team = "gpu" }
summary = "{{ $labels.vm }} gets {{ $value }}"
description = "VM {{$labels.vm}} ({{ $labels.nope }}) is starved"
"#;

    #[test]
    fn the_shipped_example_rules_load() {
        let set = parse(include_str!("../../examples/alerts.toml"), Path::new("examples/alerts.toml")).unwrap();
        let names: Vec<&str> = set.rules.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["GuaranteedVmStarved", "GpuMemoryNearlyFull", "GpuXidError", "BackendRestarting"]);
        for r in &set.rules {
            assert!(r.severity.is_some() && r.summary.is_some() && r.description.is_some(), "{}", r.name);
        }
    }

    #[test]
    fn an_alert_is_pending_until_its_for_has_passed_then_fires_then_resolves() {
        let mut e = Evaluator::new(rules(LOW_SHARE), Vec::new(), 86_400.0);
        assert!(e.evaluate(100.0, &[share("a", 0.2), share("b", 0.9)]).is_empty());
        let a = &e.alerts()[0];
        assert_eq!((a.state, a.started_at, a.fired_at), (AlertState::Pending, 100.0, None));
        assert!(e.evaluate(129.0, &[share("a", 0.3)]).is_empty());
        let fired = e.evaluate(130.0, &[share("a", 0.25)]);
        let [Transition::Fired(a)] = fired.as_slice() else { panic!("{fired:?}") };
        assert_eq!((a.fired_at, a.value), (Some(130.0), Some(0.25)));
        let labels: Vec<(&str, &str)> = a.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            labels,
            [("alertname", "LowShare"), ("class", "guaranteed"), ("severity", "warning"), ("team", "gpu"), ("vm", "a")]
        );
        assert_eq!(a.summary.as_deref(), Some("a gets 0.25"));
        assert_eq!(a.description.as_deref(), Some("VM a () is starved"));
        // Still firing: no new transition.
        assert!(e.evaluate(131.0, &[share("a", 0.2)]).is_empty());
        let resolved = e.evaluate(140.0, &[share("a", 0.8)]);
        let [Transition::Resolved(a)] = resolved.as_slice() else { panic!("{resolved:?}") };
        assert_eq!(
            (a.state, a.fired_at, a.resolved_at, a.value),
            (AlertState::Resolved, Some(130.0), Some(140.0), Some(0.2))
        );
        assert_eq!(e.alerts()[0].state, AlertState::Resolved);
    }

    #[test]
    fn a_pending_alert_whose_condition_stops_holding_leaves_no_trace() {
        let mut e = Evaluator::new(rules(LOW_SHARE), Vec::new(), 86_400.0);
        e.evaluate(100.0, &[share("a", 0.2)]);
        assert!(e.evaluate(110.0, &[share("a", 0.9)]).is_empty());
        assert!(e.alerts().is_empty());
        // Holding again starts the wait again.
        e.evaluate(120.0, &[share("a", 0.2)]);
        assert!(e.evaluate(140.0, &[share("a", 0.2)]).is_empty());
        assert_eq!(e.evaluate(150.0, &[share("a", 0.2)]).len(), 1);
    }

    #[test]
    fn a_firing_alert_from_the_log_resolves_when_its_condition_does_not_hold() {
        let mut e = Evaluator::new(rules(LOW_SHARE), Vec::new(), 86_400.0);
        e.evaluate(100.0, &[share("a", 0.2)]);
        let fired = e.evaluate(130.0, &[share("a", 0.2)]);
        let Transition::Fired(a) = fired[0].clone() else { panic!() };
        // A restart: the log has it firing.
        let mut e = Evaluator::new(rules(LOW_SHARE), vec![a], 86_400.0);
        assert_eq!(e.alerts()[0].state, AlertState::Firing);
        assert!(e.evaluate(200.0, &[share("a", 0.1)]).is_empty(), "it carries on firing, not fired again");
        let t = e.evaluate(201.0, &[share("a", 0.9)]);
        assert!(matches!(&t[..], [Transition::Resolved(a)] if a.fired_at == Some(130.0)), "{t:?}");
    }

    #[test]
    fn rule_errors_name_the_line_the_rule_and_the_field() {
        let e = rules_err("[[rule]]\nname = \"X\"\nexpr = \"share <\"\n");
        assert!(e.starts_with("alert rules rules.toml, line 3: rule \"X\": expr:"), "{e}");
        let e = rules_err("[[rule]]\nname = \"X\"\nexpr = '''\nshare\n  > > 1'''\n");
        assert!(e.contains("line 5: rule \"X\": expr: expected a number"), "{e}");
        let e = rules_err("[[rule]]\nname = \"X\"\nexpr = \"a > 1\"\nfor = \"soon\"\n");
        assert!(e.contains("line 4: rule \"X\": for: expected a duration"), "{e}");
        let e = rules_err("[[rule]]\nname = \"X\"\nexpr = \"a > 1\"\nexpresion = \"b\"\n");
        assert!(e.contains("line 4") && e.contains("unknown field `expresion`"), "{e}");
        let e = rules_err("[[rule]]\nname = \"X\"\nexpr = \"a > 1\"\nsummary = \"{{ .Value }}\"\n");
        assert!(e.contains("summary: `{{ .Value }}` is not supported"), "{e}");
        let e = rules_err("[[rule]]\nname = \"X\"\nexpr = \"a\"\n[[rule]]\nname = \"X\"\nexpr = \"b\"\n");
        assert!(e.contains("line 5") && e.contains("another rule has this name"), "{e}");
        let e = rules_err("[[rule]]\nname = \"X\"\nexpr = \"a\"\nlabels = { alertname = \"y\" }\n");
        assert!(e.contains("labels:"), "{e}");
        assert!(rules_err("webhook_url = \"ftp://x\"\n").contains("webhook_url"));
    }

    #[test]
    fn fingerprints_are_stable_and_differ_by_label() {
        let l = |vm: &str| Labels::from([("alertname".to_owned(), "A".to_owned()), ("vm".to_owned(), vm.to_owned())]);
        assert_eq!(fingerprint(&l("a")), fingerprint(&l("a")));
        assert_ne!(fingerprint(&l("a")), fingerprint(&l("b")));
        assert_eq!(fingerprint(&l("a")).len(), 16);
    }

    #[test]
    fn template_values_read_naturally() {
        let t = Template::parse("{{ $value }}").unwrap();
        let labels = Labels::new();
        assert_eq!(t.render(&labels, 0.876543), "0.8765");
        assert_eq!(t.render(&labels, 3.0), "3");
        assert_eq!(t.render(&labels, 8.5e10), "8.5e10");
        assert!(Template::parse("{{ $value").is_err());
    }
}
