//! The real backend's daemon link (gpuvisor-backend's `DaemonLink` and
//! `Gate`, on the sim engine) across a daemon restart: the VM keeps running
//! while the daemon is away, re-registers by itself when it is back, and
//! gets the settings the admin gave it before the restart.

mod common;

use common::*;
use gpuvisor_admin::{Admin, VmPatch};
use gpuvisor_backend::grants::{Counters, DaemonLink, Registration};
use protocol::control::QosRequest;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let until = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < until, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_running_vm_is_not_disturbed_by_a_daemon_restart() {
    let dir = scratch("real-backend");
    let d = TestDaemon::start(&dir);
    let socket = d.socket.clone();
    let counters = Arc::new(Counters::default());
    let link = DaemonLink::start(
        Registration {
            socket: socket.clone(),
            vm: "real".into(),
            engine: "sim".into(),
            gpu: "sim".into(),
            quota_bytes: 1 << 30,
            requested: QosRequest { weight: Some(3), ..Default::default() },
            max_queued: Duration::from_millis(5),
        },
        counters.clone(),
    );
    wait_for("registration", Duration::from_secs(5), || link.connected());

    // The guest's work: 1 ms spins through the gate, waiting for every
    // fourth (a guest waits for its results now and then; without that, a
    // VM running alone could queue seconds of work on the stream).
    let stop = Arc::new(AtomicBool::new(false));
    let worker = sim_load(&link, stop.clone());
    let ops = || counters.ops_total.load(Ordering::Relaxed);
    wait_for("grants before the restart", Duration::from_secs(5), || {
        d.admin.vm("real").is_ok_and(|v| v.gpu_time_s > 0.05)
    });
    d.admin.update_vm("real", VmPatch { weight: Some(77), ..Default::default() }).unwrap();

    // The daemon goes away: the VM runs alone.
    d.stop();
    wait_for("the link noticing", Duration::from_secs(5), || !link.connected());
    let before = ops();
    std::thread::sleep(Duration::from_millis(200));
    assert!(ops() > before + 20, "the VM stalled while the daemon was away ({} ops in 200 ms)", ops() - before);

    // It comes back: the backend re-registers with `reconnect`, so the
    // admin's weight wins over the weight it asks for.
    let d = TestDaemon::start(&dir);
    wait_for("re-registration", Duration::from_secs(5), || link.connected());
    let v = d.admin.vm("real").unwrap();
    assert!(v.connected);
    assert_eq!(v.weight, 77);
    wait_for("grants after the restart", Duration::from_secs(5), || {
        d.admin.vm("real").is_ok_and(|v| v.share_used > 0.05)
    });
    let before = ops();
    std::thread::sleep(Duration::from_millis(200));
    assert!(ops() > before + 20, "the VM stalled after the restart");

    stop.store(true, Ordering::Relaxed);
    worker.join().unwrap();
    drop(link);
    d.stop();
}
