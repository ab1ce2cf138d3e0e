//! `gpuvisorctl report` end to end, against a stand-in for gpuvisord's
//! `GET /v1/history` (the daemon's history store is built elsewhere): the
//! binary asks for each metric, and writes a PNG a viewer can open.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use gpuvisor_admin::history::{HistoryResponse, HistorySeries};
use gpuvisor_admin::ErrorBody;
use std::collections::{BTreeMap, HashMap};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

const TOKEN: &str = "report-token";

/// The queries the stand-in got, in order.
type Seen = Arc<Mutex<Vec<HashMap<String, String>>>>;

/// Answers like gpuvisord would for an hour of two VMs, except that it has
/// no latency history (404), as a daemon that does not keep that metric.
async fn history(State(seen): State<Seen>, Query(q): Query<HashMap<String, String>>) -> Response {
    seen.lock().unwrap().push(q.clone());
    let metric = q.get("metric").cloned().unwrap_or_default();
    if metric == "gpuvisor_vm_request_latency_seconds" {
        let body = ErrorBody { error: format!("no history of {metric}"), field: Some("metric".into()) };
        return (StatusCode::NOT_FOUND, Json(body)).into_response();
    }
    let from: f64 = q.get("from").and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let to: f64 = q.get("to").and_then(|v| v.parse().ok()).unwrap_or(from + 3600.0);
    let step = (to - from) / 100.0;
    let series = ["alpha", "beta"]
        .into_iter()
        .filter(|vm| q.get("vm").is_none_or(|want| want == vm))
        .map(|vm| HistorySeries {
            labels: BTreeMap::from([("vm".to_owned(), vm.to_owned()), ("gpu".to_owned(), "sim".to_owned())]),
            points: (0..100).map(|i| (from + f64::from(i) * step, if vm == "alpha" { 0.5 } else { 0.25 })).collect(),
        })
        .collect();
    Json(HistoryResponse { metric, kind: "gauge".into(), rate: false, from, to, step, resolution: 1.0, series })
        .into_response()
}

/// Serves `app` on a loopback port from a runtime thread that lives as long
/// as the test process; returns its URL.
fn serve(app: Router) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    format!("http://{}", rx.recv().unwrap())
}

fn report(url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gpuvisorctl"))
        .args(["--url", url, "report"])
        .args(args)
        .env("GPUVISOR_TOKEN", TOKEN)
        .output()
        .unwrap()
}

fn scratch(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("gpuvisorctl-report-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn report_writes_a_png_of_one_vms_history_even_without_latency() {
    let seen = Seen::default();
    let url = serve(Router::new().route("/v1/history", get(history)).with_state(seen.clone()));
    let out = scratch("png").join("alpha.png");
    let o = report(&url, &["--vm", "alpha", "--since", "2h", "-o", out.to_str().unwrap(), "--width", "640"]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.starts_with(&format!("wrote {}", out.display())) && stdout.contains("1 VM,"), "{stdout}");

    let reader = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&out).unwrap())).read_info().unwrap();
    assert_eq!((reader.info().width, reader.info().height), (640, 1000));

    let seen = seen.lock().unwrap();
    let metrics: Vec<&str> = seen.iter().map(|q| q["metric"].as_str()).collect();
    assert_eq!(
        metrics,
        [
            "gpuvisor_vm_gpu_share",
            "gpuvisor_vm_gpu_share_configured",
            "gpuvisor_vm_memory_resident_bytes",
            "gpuvisor_vm_memory_evicted_bytes",
            "gpuvisor_vm_request_latency_seconds"
        ]
    );
    let q = &seen[0];
    assert_eq!(q.get("vm").map(String::as_str), Some("alpha"));
    let span = q["to"].parse::<f64>().unwrap() - q["from"].parse::<f64>().unwrap();
    assert_eq!(span, 7200.0, "--since 2h");
}

#[test]
fn report_against_a_daemon_without_history_says_so() {
    let url = serve(Router::new());
    let out = scratch("none").join("r.svg");
    let o = report(&url, &["-o", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("keeps no history"), "{stderr}");
    assert!(!out.exists(), "no file is written");
}
