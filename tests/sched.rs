//! Integration tests of GPU scheduling across VMs: real QEMU guests, real
//! gpuvisor-backends (sim engine) and a real gpuvisord, all started through
//! `gpuvisor-vm fleet`. The sim engine gives each backend a simulated GPU of its
//! own, so without gpuvisord's grants every guest would get a whole GPU: the
//! weights can only show up in the guests' figures if scheduling works.

use std::time::{Duration, Instant};

use gpuvisor_tests::{after_go, alive, signal, sim_fleet_spec, AdminApi, Daemon, Fleet, Scratch};
use serde_json::{json, Value};

/// Time for every guest to boot (TCG on two host cores) and start its command.
const BOOT: Duration = Duration::from_secs(120);

fn by_name<'a>(vms: &'a [Value], name: &str) -> &'a Value {
    vms.iter().find(|v| v["name"] == name).unwrap_or_else(|| panic!("no VM {name} in {vms:?}"))
}

#[test]
fn weights_1_1_2_give_the_guests_25_25_50_percent_of_the_gpu() {
    let dir = Scratch::new("shares");
    std::fs::create_dir_all(dir.path("share")).unwrap();
    let weights = [("a", 1), ("b", 1), ("c", 2)];
    let names: Vec<&str> = weights.iter().map(|w| w.0).collect();
    // 2 ms simulated kernels (2,000,000 iterations at 1 ns), 4 per batch, for 20 s.
    let run = after_go("/opt/gpuvisor/tests/gv_load saturate --seconds 20 --iters 2000000 --depth 4");
    let spec = sim_fleet_spec(&dir.0, &run, &weights, "share_dir = \"share\"").unwrap();
    let fleet = Fleet::start(&spec, &dir.path("run")).unwrap();
    let daemon = fleet.daemon().unwrap();
    fleet.wait_until_running(&names, BOOT).unwrap();
    // All three wait at the barrier: start their load together.
    std::fs::write(dir.path("share/go"), "").unwrap();
    let go = Instant::now();

    // The daemon's view mid-run, over its last measurement window.
    std::thread::sleep(Duration::from_secs(10));
    let api = AdminApi::new(&daemon.addr, daemon.token_file.as_deref()).unwrap();
    let vms = api.vms().unwrap();
    eprintln!("GET /v1/vms {:.1} s after go: {vms:#?}", go.elapsed().as_secs_f64());
    let total: u32 = weights.iter().map(|w| w.1).sum();
    // The daemon measures each VM's GPU time; compare the VMs' parts of the sum,
    // as the guests' kernel counts are compared below.
    let used: Vec<f64> = names.iter().map(|n| by_name(&vms, n)["share_used"].as_f64().unwrap()).collect();
    let used_sum: f64 = used.iter().sum();
    assert!(used_sum > 0.5, "the GPU was busy all along, yet share_used adds up to {used_sum:.3}");
    for ((name, weight), u) in weights.iter().zip(&used) {
        let v = by_name(&vms, name);
        assert_eq!(v["connected"], true, "{name}: {v}");
        assert_eq!(v["weight"], *weight, "{name}: {v}");
        let (part, want) = (u / used_sum, f64::from(*weight) / f64::from(total));
        assert!(
            (part - want).abs() <= 0.06,
            "{name}: share_used {u:.3} is {part:.3} of the VMs' sum, weights say {want:.3}"
        );
    }

    let run = fleet.wait(Duration::from_secs(90)).unwrap();
    let kernels: Vec<f64> = names
        .iter()
        .map(|n| {
            let vm = run.vm(n);
            let g = vm.gvload().unwrap_or_else(|e| panic!("{n}: {e}"));
            assert_eq!(g["ok"], true, "{n}: {g}");
            assert_eq!(vm.code, 0, "{n}: guest exit code");
            g["kernels"].as_f64().unwrap()
        })
        .collect();
    assert_eq!(run.code, 0, "fleet exit code");
    let sum: f64 = kernels.iter().sum();
    for ((name, weight), k) in weights.iter().zip(&kernels) {
        let share = 100.0 * k / sum;
        let want = 100.0 * f64::from(*weight) / f64::from(total);
        eprintln!("{name}: {k} kernels, {share:.1}% (weights say {want:.0}%)");
        assert!(
            (share - want).abs() <= 6.0,
            "{name}: {share:.1}% of the kernels, weights say {want:.0}% ({kernels:?})"
        );
    }
}

#[test]
fn a_daemon_killed_and_restarted_mid_load_gets_its_vms_back_with_their_settings() {
    let dir = Scratch::new("restart");
    let weights = [("a", 1), ("b", 1)];
    let run = "/opt/gpuvisor/tests/gv_load saturate --seconds 25 --iters 2000000 --depth 4";
    let spec = sim_fleet_spec(&dir.0, run, &weights, "").unwrap();
    let fleet = Fleet::start(&spec, &dir.path("run")).unwrap();
    let daemon = fleet.daemon().unwrap();
    fleet.wait_until_running(&["a", "b"], BOOT).unwrap();
    let load = Instant::now();
    let api = AdminApi::new(&daemon.addr, daemon.token_file.as_deref()).unwrap();

    // A setting changed live, which the daemon must keep across its restart.
    std::thread::sleep(Duration::from_secs(2));
    let b = api.patch("/v1/vms/b", &json!({ "weight": 3 })).unwrap();
    assert_eq!(b["weight"], 3, "{b}");

    let kill_at = Duration::from_secs(8);
    std::thread::sleep(kill_at.saturating_sub(load.elapsed()));
    signal(daemon.pid, libc::SIGKILL);
    fleet
        .wait_for_line(Duration::from_secs(5), "the fleet seeing gpuvisord exit", |l| {
            l.starts_with(&format!("fleet: gpuvisord (pid {}) exited", daemon.pid))
        })
        .unwrap();
    assert!(!alive(daemon.pid), "gpuvisord {} survived SIGKILL", daemon.pid);
    std::thread::sleep(Duration::from_secs(2));

    let _restarted =
        Daemon::start(&daemon.socket, &daemon.addr, &dir.path("state"), &dir.path("gpuvisord-2.log")).unwrap();
    let restarted = Instant::now();
    let vms = loop {
        let vms = api.vms().unwrap_or_default();
        let connected = |n| vms.iter().any(|v| v["name"] == n && v["connected"] == true);
        if connected("a") && connected("b") {
            break vms;
        }
        assert!(restarted.elapsed() < Duration::from_secs(10), "backends not back 10 s after the restart: {vms:#?}");
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!("back {:.1} s after the restart: {vms:#?}", restarted.elapsed().as_secs_f64());
    assert_eq!(by_name(&vms, "a")["weight"], 1);
    assert_eq!(by_name(&vms, "b")["weight"], 3, "the weight set through the API before the kill");
    assert!(load.elapsed() < Duration::from_secs(22), "the guests' load should still be running");

    let run = fleet.wait(Duration::from_secs(90)).unwrap();
    for n in ["a", "b"] {
        let vm = run.vm(n);
        let g = vm.gvload().unwrap_or_else(|e| panic!("{n}: {e}"));
        assert_eq!(g["ok"], true, "{n} saw a CUDA error: {g}");
        assert_eq!(vm.code, 0, "{n}: guest exit code");
    }
    assert_eq!(run.code, 0, "fleet exit code");
}
