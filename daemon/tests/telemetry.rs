//! Telemetry end to end: the history a real gpuvisord keeps of a scripted
//! sim workload, read over the HTTP API, against what `/v1/vms` reported
//! while it ran; and an alert rule firing and resolving on a scripted load,
//! with the webhook (a real HTTP server here) getting both and the alert log
//! surviving a restart.

mod common;

use common::*;
use gpuvisor_admin::alerts::AlertState;
use gpuvisor_admin::history::HistoryQuery;
use gpuvisor_admin::time::now_unix;
use gpuvisor_admin::Client;
use gpuvisor_backend::grants::{Counters, DaemonLink, Registration};
use protocol::control::{BackendMsg, DaemonMsg, QosRequest};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

const TOKEN: &str = "telemetry-test-token";

fn wait_for<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let until = Instant::now() + timeout;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < until, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_history_of_a_sim_workload_matches_what_the_vms_api_reported() {
    let dir = scratch("telemetry-history");
    let d = TestDaemon::start_with(&dir, |c| c.telemetry.interval = Duration::from_millis(100));
    let client = Client::new(d.serve_http(TOKEN), Some(TOKEN.to_owned()));
    let started = now_unix();
    let link = DaemonLink::start(
        Registration {
            socket: d.socket.clone(),
            vm: "hist".into(),
            engine: "sim".into(),
            gpu: "sim".into(),
            quota_bytes: 1 << 30,
            requested: QosRequest::default(),
            max_queued: Duration::from_millis(5),
        },
        Arc::new(Counters::default()),
    );
    let query = |metric: &str, step: f64| HistoryQuery {
        metric: metric.into(),
        vm: Some("hist".into()),
        from: Some(started - 1.0),
        step: Some(step),
        ..Default::default()
    };
    // The history holds the VM, idle, before its work starts.
    wait_for("the VM in the history", Duration::from_secs(10), || {
        let h = client.history(&query("gpuvisor_vm_gpu_seconds_total", 1.0)).ok()?;
        (!h.series.is_empty()).then_some(())
    });
    assert_eq!(client.vm("hist").unwrap().gpu_time_s, 0.0);

    let stop = Arc::new(AtomicBool::new(false));
    let load_started = Instant::now();
    let worker = sim_load(&link, stop.clone());
    // Alone on the GPU, its share settles near 1 once the scheduler's 2 s
    // window is all load: note what the API says then.
    std::thread::sleep(Duration::from_millis(2300));
    let mut seen = Vec::new();
    while load_started.elapsed() < Duration::from_millis(3000) {
        seen.push((now_unix(), client.vm("hist").unwrap().share_used));
        std::thread::sleep(Duration::from_millis(150));
    }
    stop.store(true, Ordering::Relaxed);
    worker.join().unwrap();

    // GPU time stops growing once the backend's last report is in.
    let mut last = -1.0;
    let mut still = 0;
    let gpu_time = wait_for("GPU time to settle", Duration::from_secs(10), || {
        let t = client.vm("hist").unwrap().gpu_time_s;
        still = if t == last { still + 1 } else { 0 };
        last = t;
        (still >= 8).then_some(t)
    });
    assert!(gpu_time > 1.0, "the VM used {gpu_time} s of GPU time in 3 s alone");
    std::thread::sleep(Duration::from_millis(300));

    // The counter's per-second rates over 1 s steps add up to its GPU time.
    let h = client.history(&query("gpuvisor_vm_gpu_seconds_total", 1.0)).unwrap();
    assert_eq!((h.kind.as_str(), h.rate, h.resolution, h.step), ("counter", true, 0.1, 1.0));
    let total: f64 = h.series[0].points.iter().map(|&(_, rate)| rate * h.step).sum();
    assert!((total - gpu_time).abs() < 1e-6, "history adds up to {total} s, /v1/vms says {gpu_time} s");

    // Each share the API reported is what the history holds for that moment.
    let h = client.history(&query("gpuvisor_vm_gpu_share", 0.1)).unwrap();
    assert_eq!((h.kind.as_str(), h.rate, h.step), ("gauge", false, 0.1));
    let points = &h.series[0].points;
    for &(t, share) in &seen {
        let &(pt, stored) =
            points.iter().min_by(|a, b| (a.0 - t).abs().total_cmp(&(b.0 - t).abs())).expect("no share points");
        assert!((pt - t).abs() <= 0.5, "no point near {t}: nearest at {pt}");
        assert!((stored - share).abs() <= 0.1, "at {t}: /v1/vms said {share}, the history holds {stored}");
    }
    assert!(seen.iter().all(|&(_, s)| s > 0.5), "the VM alone should have most of the GPU: {seen:?}");

    let listed = client.history_metrics().unwrap();
    let share = listed.metrics.iter().find(|m| m.name == "gpuvisor_vm_gpu_share").unwrap();
    assert_eq!(share.kind, "gauge");
    assert_eq!(listed.tiers[0].resolution, 0.1);
    drop(link);
    d.stop();
}

/// A webhook receiver: an HTTP/1.1 server on a loopback port that answers
/// 200 to every POST and passes each body on, parsed.
fn webhook_receiver() -> (String, mpsc::Receiver<serde_json::Value>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut writer = conn;
                // Requests on one connection (the sender keeps it alive).
                loop {
                    let mut length = 0;
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let l = line.trim_end();
                        if l.is_empty() {
                            break;
                        }
                        if let Some((k, v)) = l.split_once(':') {
                            if k.eq_ignore_ascii_case("content-length") {
                                length = v.trim().parse().unwrap();
                            }
                        }
                    }
                    let mut body = vec![0; length];
                    reader.read_exact(&mut body).unwrap();
                    writer.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").unwrap();
                    if tx.send(serde_json::from_slice(&body).unwrap()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, rx)
}

/// A fake backend that keeps the GPU busy until `stop`, releasing each
/// grant with the time it held it, then says it has no more work.
fn busy_backend(mut b: FakeBackend, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        b.send(&BackendMsg::Demand);
        while !stop.load(Ordering::Relaxed) {
            let Ok((grant, slice_us)) = b.grant(Duration::from_secs(2)) else { continue };
            let t0 = Instant::now();
            let hold = Duration::from_micros(slice_us.saturating_sub(200));
            while t0.elapsed() < hold {
                match b.recv(hold.saturating_sub(t0.elapsed())) {
                    Ok(DaemonMsg::Revoke { grant: g }) if g == grant => break,
                    _ => {}
                }
            }
            let more = !stop.load(Ordering::Relaxed);
            b.send(&BackendMsg::Release { grant, gpu_ns: t0.elapsed().as_nanos() as u64, ops: 1, more });
        }
        // Stay connected, idle, until the test ends.
        let _ = b.recv(Duration::from_secs(30));
    })
}

fn sigterm(child: &mut Child) {
    // SAFETY: signalling the child this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
}

fn nvml_config(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("nvml.json");
    std::fs::write(&path, r#"{"gpus": []}"#).unwrap();
    path
}

const RULES: &str = r#"
[[rule]]
name = "VmBusy"
expr = 'rate(gpuvisor_vm_gpu_seconds_total{vm="hot"}[1s]) > 0.5'
for = "300ms"
severity = "page"
labels = { team = "gpu" }
summary = "{{ $labels.vm }} uses {{ $value }} of the GPU"
"#;

#[test]
fn an_alert_fires_and_resolves_on_a_scripted_load_and_the_webhook_gets_both() {
    let dir = scratch("telemetry-alerts");
    let (socket, state) = (dir.join("gpuvisord.sock"), dir.join("state"));
    let rules = dir.join("rules.toml");
    std::fs::write(&rules, RULES).unwrap();
    let (hook, posts) = webhook_receiver();
    let args = ["--telemetry-interval-ms", "100", "--alert-rules", rules.to_str().unwrap(), "--alert-webhook", &hook];
    let (mut daemon, line) = spawn_gpuvisord(&socket, &state, &nvml_config(&dir), &args);
    let token = std::fs::read_to_string(state.join("admin.token")).unwrap().trim().to_owned();
    let client = Client::new(admin_url(&line), Some(token.clone()));
    let a = client.alerts().unwrap();
    assert!(a.evaluating && a.webhook);
    assert_eq!(a.rules[0].expr, "rate(gpuvisor_vm_gpu_seconds_total{vm=\"hot\"}[1s]) > 0.5");
    assert_eq!(a.rules[0].for_s, 0.3);

    let (b, _) = FakeBackend::register(&socket, "hot", weight(100));
    let stop = Arc::new(AtomicBool::new(false));
    let load_started = now_unix();
    let load = busy_backend(b, stop.clone());

    let firing = posts.recv_timeout(Duration::from_secs(15)).expect("no firing POST");
    assert_eq!((firing["version"].as_str(), firing["status"].as_str()), (Some("4"), Some("firing")), "{firing}");
    assert_eq!(firing["receiver"], "gpuvisord");
    let alert = &firing["alerts"][0];
    let labels = &alert["labels"];
    assert_eq!((labels["alertname"].as_str(), labels["vm"].as_str()), (Some("VmBusy"), Some("hot")), "{firing}");
    assert_eq!((labels["severity"].as_str(), labels["team"].as_str()), (Some("page"), Some("gpu")), "{firing}");
    // The templated value is the rule's: above its 0.5 (a rate over reports
    // that come about once a second can pass 1 on a loaded machine).
    let summary = alert["annotations"]["summary"].as_str().unwrap();
    let value: f64 =
        summary.strip_prefix("hot uses ").and_then(|r| r.strip_suffix(" of the GPU")).unwrap().parse().unwrap();
    assert!(value > 0.5, "{firing}");
    assert_eq!(alert["endsAt"], "0001-01-01T00:00:00Z");
    assert!(alert["startsAt"].as_str().unwrap().ends_with('Z'), "{firing}");

    let a = client.alerts().unwrap();
    let shown = a.alerts.iter().find(|a| a.rule == "VmBusy").unwrap();
    let fired_at = shown.fired_at.unwrap();
    assert_eq!(shown.state, AlertState::Firing);
    assert_eq!(shown.fingerprint, alert["fingerprint"].as_str().unwrap());
    assert!(fired_at - shown.started_at >= 0.3, "fired {} s after it started to hold", fired_at - shown.started_at);
    assert!(shown.started_at >= load_started, "it held before the load started");

    stop.store(true, Ordering::Relaxed);
    let stopped = now_unix();
    let resolved = posts.recv_timeout(Duration::from_secs(15)).expect("no resolved POST");
    assert_eq!(resolved["status"], "resolved", "{resolved}");
    let alert = &resolved["alerts"][0];
    assert_eq!(alert["fingerprint"], shown.fingerprint.as_str());
    assert_ne!(alert["endsAt"], "0001-01-01T00:00:00Z");

    let a = client.alerts().unwrap();
    let shown = a.alerts.iter().find(|a| a.rule == "VmBusy").unwrap();
    assert_eq!((shown.state, shown.fired_at), (AlertState::Resolved, Some(fired_at)));
    let resolved_at = shown.resolved_at.unwrap();
    assert!(resolved_at >= stopped && resolved_at > fired_at, "resolved at {resolved_at}, load stopped at {stopped}");

    // The alert log outlives the daemon.
    sigterm(&mut daemon);
    let (mut daemon, line) = spawn_gpuvisord(&socket, &state, &nvml_config(&dir), &args);
    let client = Client::new(admin_url(&line), Some(token));
    let a = client.alerts().unwrap();
    let past = a.alerts.iter().find(|a| a.rule == "VmBusy").expect("the alert log was lost at the restart");
    assert_eq!(
        (past.state, past.fired_at, past.resolved_at),
        (AlertState::Resolved, Some(fired_at), Some(resolved_at))
    );
    sigterm(&mut daemon);
    drop(load);
}

#[test]
fn a_rule_that_does_not_parse_stops_gpuvisord_naming_its_line() {
    let dir = scratch("telemetry-bad-rules");
    let rules = dir.join("rules.toml");
    std::fs::write(&rules, "[[rule]]\nname = \"Bad\"\nexpr = \"rate(x_total) > 1\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gpuvisord"))
        .arg("--backend-socket")
        .arg(dir.join("d.sock"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .args(["--listen", "127.0.0.1:0", "--alert-rules"])
        .arg(&rules)
        .env("GPUVISOR_NVML_LIB", "/nonexistent")
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 3: rule \"Bad\": expr: expected a range like `[5m]`"), "{err}");
}
