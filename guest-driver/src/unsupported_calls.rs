//! Which unimplemented entry points the program called, and how often, so a
//! gap shows up as a list rather than as a program that fails somewhere
//! later. Every NOT_SUPPORTED stub, every unknown export-table id or slot and
//! every unsupported option of an implemented call is counted here under its
//! name. With `GPUVISOR_UNSUPPORTED_REPORT=<path>` the list is written to
//! that file as JSON (`[{"name": ..., "calls": n}, ...]`, by name) when the
//! process exits; `gpuvisor-probe unsupported -- <program>` runs a program
//! that way and prints it.

use std::collections::BTreeMap;
use std::sync::{LazyLock, Mutex};

/// The variable naming the report file.
pub const REPORT_ENV: &str = "GPUVISOR_UNSUPPORTED_REPORT";

static CALLS: LazyLock<Mutex<BTreeMap<String, u64>>> = LazyLock::new(|| Mutex::new(BTreeMap::new()));

/// Counts one call of `name`.
pub fn record(name: &str) {
    let mut calls = CALLS.lock().unwrap_or_else(|p| p.into_inner());
    match calls.get_mut(name) {
        Some(n) => *n += 1,
        None => {
            calls.insert(name.to_string(), 1);
        }
    }
}

/// Every name counted so far with its count, by name.
pub fn snapshot() -> Vec<(String, u64)> {
    CALLS.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(k, v)| (k.clone(), *v)).collect()
}

/// The report's JSON text for `entries`.
pub fn to_json(entries: &[(String, u64)]) -> String {
    let list: Vec<serde_json::Value> =
        entries.iter().map(|(name, calls)| serde_json::json!({ "name": name, "calls": calls })).collect();
    serde_json::Value::Array(list).to_string()
}

/// Parses a report back into (name, calls) pairs; `None` if it is not one.
pub fn from_json(text: &str) -> Option<Vec<(String, u64)>> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    v.as_array()?.iter().map(|e| Some((e.get("name")?.as_str()?.to_string(), e.get("calls")?.as_u64()?))).collect()
}

/// Writes the report if the environment asks for one. An empty list is
/// written too, so a reader can tell "nothing unsupported" from "no report".
fn write_report() {
    let Some(path) = std::env::var_os(REPORT_ENV) else {
        return;
    };
    if path.is_empty() {
        return;
    }
    if let Err(e) = std::fs::write(&path, to_json(&snapshot())) {
        eprintln!("gpuvisor libcuda: cannot write the unsupported-call report to {}: {e}", path.to_string_lossy());
    }
}

extern "C" fn at_unload() {
    // No unwind may leave a destructor the C runtime calls.
    let _ = std::panic::catch_unwind(write_report);
}

/// Runs when the library is unloaded: at process exit (return from main or
/// `exit()`), or at `dlclose`. A process killed by a signal or leaving
/// through `_exit` writes no report.
#[used]
#[link_section = ".fini_array"]
static WRITE_REPORT_AT_EXIT: extern "C" fn() = at_unload;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_counted_per_name_and_listed_by_name() {
        record("test_only_b");
        record("test_only_a");
        record("test_only_b");
        let got: Vec<_> = snapshot().into_iter().filter(|(n, _)| n.starts_with("test_only_")).collect();
        assert_eq!(got, vec![("test_only_a".to_string(), 1), ("test_only_b".to_string(), 2)]);
    }

    #[test]
    fn the_report_round_trips_through_json() {
        let entries = vec![("cuGraphCreate".to_string(), 3), ("cuGetExportTable {00-\"x\"}".to_string(), 1)];
        let text = to_json(&entries);
        assert!(text.starts_with("[{"), "{text}");
        assert_eq!(from_json(&text), Some(entries));
        assert_eq!(from_json("[]"), Some(vec![]));
        assert_eq!(from_json("{\"name\": 1}"), None);
    }
}
