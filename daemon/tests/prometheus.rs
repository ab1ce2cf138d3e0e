//! A real Prometheus (Debian's package, scripts/install-prereqs.sh installs
//! it) scrapes a real gpuvisord's `/metrics` with the admin token, and PromQL
//! finds a registered VM's quota, its call counts, its backend's utilisation
//! as NVML samples it, the simulated NVML's temperature and power, and an
//! XID error raised while it runs.

mod common;

use common::*;
use protocol::control::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PROMETHEUS: &str = "/usr/bin/prometheus";
const H100: &str = "GPU-00000000-5157-0000-0000-0000000000b1";
const QUOTA: u64 = 3 << 30;
const TEMPERATURE_C: u32 = 61;

/// A child process killed (and reaped) when the test ends, passed or not.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Writes the simulated host's NVML config, with the XID errors that have
/// happened (a rename over the old file, as the library's docs ask).
fn nvml_config(dir: &Path, xids: &[u64]) -> PathBuf {
    let path = dir.join("nvml.json");
    let json = format!(
        r#"{{"gpus": [{{"name": "NVIDIA H100 80GB HBM3", "uuid": "{H100}", "memory_total_mib": 81559,
            "memory_used_mib": 2048, "pci_bus_id": "00000000:01:00.0", "utilization_gpu_pct": 40,
            "power_mw": 250000, "temperature_c": {TEMPERATURE_C}, "xid_errors": {xids:?},
            "processes": [{{"pid": {pid}, "used_mib": 1024, "sm_util_pct": 37, "mem_util_pct": 12}}]}}]}}"#,
        // The fake backend registers with this test's pid.
        pid = std::process::id()
    );
    std::fs::write(dir.join("nvml.json.new"), json).unwrap();
    std::fs::rename(dir.join("nvml.json.new"), &path).unwrap();
    path
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The samples of an instant query: each series' labels and value.
fn query(prometheus: &str, promql: &str) -> Vec<(serde_json::Value, f64)> {
    let Ok(mut resp) = ureq::get(format!("{prometheus}/api/v1/query")).query("query", promql).call() else {
        return Vec::new();
    };
    let Ok(body) = resp.body_mut().read_json::<serde_json::Value>() else {
        return Vec::new();
    };
    body["data"]["result"]
        .as_array()
        .map(|r| r.iter().filter_map(|s| Some((s["metric"].clone(), s["value"][1].as_str()?.parse().ok()?))).collect())
        .unwrap_or_default()
}

/// Polls `promql` until a sample has `value`, for up to 30 s (Prometheus
/// scrapes every second); panics with Prometheus' log otherwise.
fn wait_for_sample(prometheus: &str, promql: &str, value: f64, log: &Path) -> serde_json::Value {
    let until = Instant::now() + Duration::from_secs(30);
    let mut last = Vec::new();
    while Instant::now() < until {
        last = query(prometheus, promql);
        if let Some((labels, _)) = last.iter().find(|(_, v)| *v == value) {
            return labels.clone();
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let log = std::fs::read_to_string(log).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(20).collect();
    panic!(
        "{promql} never returned {value} within 30 s; last answer {last:?}; prometheus log (newest first):\n{}",
        tail.join("\n")
    );
}

#[test]
fn prometheus_scrapes_gpuvisord_with_the_token_and_promql_finds_the_vm_and_the_gpu() {
    assert!(
        Path::new(PROMETHEUS).is_file(),
        "{PROMETHEUS} is missing: run scripts/install-prereqs.sh (it installs Debian's prometheus package)"
    );
    let dir = scratch("prometheus");
    let socket = dir.join("gpuvisord.sock");
    let state = dir.join("state");
    let (daemon, line) = spawn_gpuvisord(&socket, &state, &nvml_config(&dir, &[]), &[]);
    let _daemon = Killed(daemon);
    let url = admin_url(&line);
    let target = url.trim_start_matches("http://");

    let hello = BackendMsg::Hello {
        version: CONTROL_VERSION,
        vm: "prom-vm".into(),
        pid: std::process::id(),
        engine: "cuda".into(),
        gpu: H100.into(),
        quota_bytes: QUOTA,
        requested: QosRequest { class: Some(QosClass::Guaranteed), ..Default::default() },
        reconnect: false,
        gpu_ns_total: 0,
        memory: Default::default(),
    };
    let (mut backend, answer) = FakeBackend::hello(&socket, &hello);
    assert!(matches!(answer, DaemonMsg::Welcome { .. }), "{answer:?}");
    // The backend's count of the guest's calls, as it reports them.
    let mut calls = CallCounts { launches: 7, copies_dtoh: 3, bytes_dtoh: 3 << 20, faults: 2, ..Default::default() };
    calls.errors.insert("CUDA_ERROR_ILLEGAL_ADDRESS".into(), 2);
    backend.send(&BackendMsg::Stats(BackendStats { calls, ..Default::default() }));

    let token_file = state.join("admin.token");
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: gpuvisord\n    authorization:\n      credentials_file: {}\n\
             \x20   static_configs:\n      - targets: ['{target}']\n",
            token_file.display()
        ),
    )
    .unwrap();
    let port = free_port();
    let log = dir.join("prometheus.log");
    let _prometheus = Killed(
        Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let prometheus = format!("http://127.0.0.1:{port}");

    let labels = wait_for_sample(&prometheus, r#"gpuvisor_vm_memory_quota_bytes{vm="prom-vm"}"#, QUOTA as f64, &log);
    assert_eq!((labels["gpu"].as_str(), labels["class"].as_str()), (Some(H100), Some("guaranteed")), "{labels}");
    assert_eq!(labels["job"], "gpuvisord");

    let labels = wait_for_sample(&prometheus, &format!(r#"DCGM_FI_DEV_GPU_TEMP{{UUID="{H100}"}}"#), 61.0, &log);
    assert_eq!((labels["gpu"].as_str(), labels["device"].as_str()), (Some("0"), Some("nvidia0")), "{labels}");
    assert_eq!(labels["modelName"], "NVIDIA H100 80GB HBM3");
    wait_for_sample(&prometheus, &format!(r#"DCGM_FI_DEV_POWER_USAGE{{UUID="{H100}"}}"#), 250.0, &log);
    wait_for_sample(&prometheus, r#"gpuvisor_vm_launches_total{vm="prom-vm"}"#, 7.0, &log);
    wait_for_sample(&prometheus, r#"gpuvisor_vm_copy_bytes_total{vm="prom-vm",direction="dtoh"}"#, 3145728.0, &log);
    wait_for_sample(
        &prometheus,
        r#"gpuvisor_vm_api_errors_total{vm="prom-vm",code="CUDA_ERROR_ILLEGAL_ADDRESS"}"#,
        2.0,
        &log,
    );
    wait_for_sample(&prometheus, r#"gpuvisor_vm_faults_total{vm="prom-vm"}"#, 2.0, &log);
    // NVML's per-process samples of the VM's backend.
    wait_for_sample(&prometheus, r#"gpuvisor_vm_sm_utilization_ratio{vm="prom-vm"}"#, 0.37, &log);
    wait_for_sample(&prometheus, r#"gpuvisor_vm_memory_bandwidth_utilization_ratio{vm="prom-vm"}"#, 0.12, &log);
    // An XID error NVML reports after gpuvisord started is counted by XID.
    wait_for_sample(&prometheus, &format!(r#"gpuvisor_gpu_xid_errors_total{{gpu="{H100}",xid="none"}}"#), 0.0, &log);
    wait_for_sample(&prometheus, &format!(r#"DCGM_FI_DEV_XID_ERRORS{{UUID="{H100}"}}"#), 0.0, &log);
    nvml_config(&dir, &[79]);
    wait_for_sample(&prometheus, &format!(r#"gpuvisor_gpu_xid_errors_total{{gpu="{H100}",xid="79"}}"#), 1.0, &log);
    wait_for_sample(&prometheus, &format!(r#"DCGM_FI_DEV_XID_ERRORS{{UUID="{H100}"}}"#), 79.0, &log);
    // The scrape itself succeeded with the token (a 401 would make up 0).
    wait_for_sample(&prometheus, r#"up{job="gpuvisord"}"#, 1.0, &log);
}
