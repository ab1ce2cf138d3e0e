//! Time slicing on one simulated GPU: two real backend daemon links (the
//! `Gate` a gpuvisor-backend uses) whose sim engines share one GPU timeline,
//! so their kernels take turns as on hardware, with weights 1 and 3. The
//! kernels each gets to run, and the GPU time gpuvisord exports for each,
//! follow the weights.

mod common;

use common::*;
use gpuvisor_admin::Admin;
use gpuvisor_backend::grants::{Counters, DaemonLink, Registration};
use protocol::control::QosRequest;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn link(socket: &std::path::Path, vm: &str, weight: u32) -> DaemonLink {
    DaemonLink::start(
        Registration {
            socket: socket.to_path_buf(),
            vm: vm.into(),
            engine: "sim".into(),
            gpu: "sim".into(),
            quota_bytes: 1 << 30,
            requested: QosRequest { weight: Some(weight), ..Default::default() },
            max_queued: Duration::from_millis(5),
        },
        Arc::new(Counters::default()),
    )
}

#[test]
fn weights_1_and_3_on_one_shared_sim_gpu_give_a_quarter_and_three_quarters() {
    let dir = scratch("shared-sim-gpu");
    let d = TestDaemon::start(&dir);
    let gpu = dir.join("sim-gpu");
    let (light, heavy) = (link(&d.socket, "light", 1), link(&d.socket, "heavy", 3));
    let t = Instant::now();
    while !(light.connected() && heavy.connected()) {
        assert!(t.elapsed() < Duration::from_secs(5), "the links did not register");
        std::thread::sleep(Duration::from_millis(10));
    }
    let stop = Arc::new(AtomicBool::new(false));
    // Each keeps work queued (as a busy guest does, gv_load saturate say):
    // a VM that waits for its own results leaves the GPU to the other
    // meanwhile, whatever its weight, as the scheduler is work-conserving.
    let a = sim_load_on(&light, stop.clone(), Some(gpu.clone()), 64);
    let b = sim_load_on(&heavy, stop.clone(), Some(gpu), 64);
    // Past the start, measure the exported GPU time over a window.
    std::thread::sleep(Duration::from_millis(1500));
    let gpu_s = |name: &str| d.admin.vm(name).unwrap().gpu_time_s;
    let (l0, h0) = (gpu_s("light"), gpu_s("heavy"));
    std::thread::sleep(Duration::from_secs(4));
    let (l1, h1) = (gpu_s("light"), gpu_s("heavy"));
    stop.store(true, Ordering::Relaxed);
    let (ka, kb) = (a.join().unwrap(), b.join().unwrap());
    let share = |x: f64, y: f64| y / (x + y);
    let kernels = share(ka as f64, kb as f64);
    let exported = share(l1 - l0, h1 - h0);
    eprintln!(
        "kernels light {ka} heavy {kb} ({kernels:.3}); GPU seconds light {:.2} heavy {:.2} ({exported:.3})",
        l1 - l0,
        h1 - h0
    );
    assert!((kernels - 0.75).abs() <= 0.08, "heavy ran {kernels:.3} of the kernels, weights say 0.75");
    assert!((exported - 0.75).abs() <= 0.06, "heavy's exported GPU time is {exported:.3} of the two, weights say 0.75");
    // One GPU: together they used about the wall time, not twice it (as two
    // simulated GPUs of their own would); the backends report GPU time about
    // once a second, so a window's ends are that rough.
    let used = (l1 - l0) + (h1 - h0);
    assert!(used <= 4.0 * 1.2, "{used:.2} GPU seconds in 4 s of one GPU");
    d.stop();
}
