//! The gpuvisord binary as an admin runs it: GPUs from NVML (the simulated
//! libnvidia-ml), the admin API over HTTP with the generated token, backends
//! on the socket, and a clean exit on SIGTERM.

mod common;

use common::*;
use gpuvisor_admin::{Client, VmPatch};
use gpuvisord::inventory::{Inventory, NvmlSource};
use std::path::{Path, PathBuf};
use std::time::Duration;

const H100: &str = "GPU-00000000-5157-0000-0000-0000000000a1";
const A100: &str = "GPU-00000000-5157-0000-0000-0000000000a2";

fn nvml_config(dir: &Path) -> PathBuf {
    let path = dir.join("nvml.json");
    let json = format!(
        r#"{{"gpus": [
            {{"name": "NVIDIA H100 80GB HBM3", "uuid": "{H100}", "memory_total_mib": 81559,
              "pci_bus_id": "00000000:01:00.0"}},
            {{"name": "NVIDIA A100-SXM4-40GB", "uuid": "{A100}", "memory_total_mib": 40960,
              "pci_bus_id": "00000000:02:00.0", "mig_enabled": true}}
        ]}}"#
    );
    std::fs::write(&path, json).unwrap();
    path
}

#[test]
fn the_inventory_lists_nvml_gpus_and_the_simulated_one() {
    let dir = scratch("bin-inventory");
    // The simulated NVML reads its host from this variable at nvmlInit;
    // every test of this binary sets the same file layout.
    std::env::set_var("GPUVISOR_SIM_NVML_CONFIG", nvml_config(&dir));
    let inv = Inventory::discover(&NvmlSource::Path(sim_nvml()));
    let gpus = inv.gpus();
    assert_eq!(gpus.iter().map(|g| g.id.as_str()).collect::<Vec<_>>(), vec![H100, A100, "sim"]);
    assert_eq!(gpus[0].name, "NVIDIA H100 80GB HBM3");
    assert_eq!((gpus[0].index, gpus[0].memory_total_bytes), (Some(0), 81559 << 20));
    assert_eq!(gpus[1].index, Some(1));
    assert_eq!((gpus[0].mig_enabled, gpus[1].mig_enabled), (Some(false), Some(true)));
    assert_eq!((gpus[2].index, gpus[2].mig_enabled), (None, None));
}

#[test]
fn the_daemon_serves_backends_and_the_admin_api_and_stops_on_sigterm() {
    let dir = scratch("bin-run");
    let socket = dir.join("run/gpuvisord.sock");
    let state = dir.join("state");
    let (mut child, line) = spawn_gpuvisord(&socket, &state, &nvml_config(&dir), &["--slice-ms", "2.5"]);
    let url = admin_url(&line);
    assert!(line.contains(&socket.display().to_string()), "{line}");
    let token_file = state.join("admin.token");
    assert!(line.contains(&token_file.display().to_string()), "{line}");

    let token = std::fs::read_to_string(&token_file).unwrap().trim().to_string();
    let client = Client::new(url, Some(token));
    assert_eq!(Client::new(url, Some("wrong".into())).gpus().unwrap_err().status(), Some(401));
    let gpus = client.gpus().unwrap();
    assert_eq!(gpus.iter().map(|g| g.id.as_str()).collect::<Vec<_>>(), vec![H100, A100, "sim"]);
    assert_eq!(gpus[0].slice_us, 2500);

    let (_b, s) = FakeBackend::register(&socket, "vm1", weight(3));
    assert_eq!((s.weight, s.slice_us), (3, 2500));
    let v = client.update_vm("vm1", &VmPatch { weight: Some(6), ..Default::default() }).unwrap();
    assert_eq!(v.weight, 6);

    // SAFETY: signalling the child this test started.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let status = wait_timeout(&mut child, Duration::from_secs(10));
    assert!(status.success(), "gpuvisord exited with {status}");
    assert!(!socket.exists(), "the socket file is removed at exit");
}

fn wait_timeout(child: &mut std::process::Child, timeout: Duration) -> std::process::ExitStatus {
    let until = std::time::Instant::now() + timeout;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if std::time::Instant::now() > until {
            let _ = child.kill();
            panic!("gpuvisord did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
