//! dashboards/gpuvisor.json, the Grafana dashboard over `GET /metrics`:
//! valid JSON whose queries name only metrics the endpoint exports.

use gpuvisor_admin::metrics::metric_names;

fn dashboard() -> serde_json::Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../dashboards/gpuvisor.json");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path} is not JSON: {e}"))
}

/// The metric names in a PromQL expression: identifiers of gpuvisor's or
/// dcgm-exporter's families, outside quoted label values.
fn metrics_in(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    for c in expr.chars().chain(std::iter::once(' ')) {
        if c == '"' {
            quoted = !quoted;
            word.clear();
        } else if quoted {
            continue;
        } else if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            word.push(c);
        } else if !word.is_empty() {
            if word.starts_with("gpuvisor_") || word.starts_with("DCGM_") {
                names.push(std::mem::take(&mut word));
            }
            word.clear();
        }
    }
    names
}

#[test]
fn every_panel_queries_only_exported_metrics() {
    let d = dashboard();
    let exported = metric_names();
    let panels = d["panels"].as_array().unwrap();
    let mut queried = 0;
    for p in panels.iter().filter(|p| p["type"] != "row") {
        let targets = p["targets"].as_array().unwrap_or_else(|| panic!("panel {} has no targets", p["title"]));
        assert!(!targets.is_empty(), "panel {} has no targets", p["title"]);
        for t in targets {
            let expr = t["expr"].as_str().unwrap();
            let names = metrics_in(expr);
            assert!(!names.is_empty(), "panel {}: {expr} names no gpuvisor or DCGM metric", p["title"]);
            for n in names {
                assert!(exported.contains(&n.as_str()), "panel {}: {n} is not exported by /metrics", p["title"]);
                queried += 1;
            }
        }
        assert_eq!(p["datasource"]["uid"], "${DS_PROMETHEUS}", "panel {}", p["title"]);
    }
    assert!(queried >= 10, "only {queried} queries");
    for var in ["gpu", "vm"] {
        let vars = d["templating"]["list"].as_array().unwrap();
        let v = vars.iter().find(|v| v["name"] == var).unwrap_or_else(|| panic!("no ${var} variable"));
        for n in metrics_in(v["definition"].as_str().unwrap()) {
            assert!(exported.contains(&n.as_str()), "${var}: {n} is not exported");
        }
    }
    assert!(d["schemaVersion"].as_u64().unwrap() >= 39);
}

#[test]
fn the_metric_name_scanner_skips_functions_and_labels() {
    assert_eq!(
        metrics_in(r#"rate(gpuvisor_vm_gpu_seconds_total{gpu=~"$gpu",vm="DCGM_x"}[$__rate_interval])"#),
        vec!["gpuvisor_vm_gpu_seconds_total"]
    );
}
