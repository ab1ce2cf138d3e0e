//! A daemon restart keeps every setting: the admin's changes are back, and a
//! backend that reconnects (as backends do when the daemon returns) gets
//! them and is scheduled under them.

mod common;

use common::*;
use gpuvisor_admin::{Admin, GpuPatch, VmPatch, VmState};
use protocol::control::*;
use std::time::Duration;

#[test]
fn settings_survive_a_daemon_restart_and_a_reconnecting_backend_gets_them() {
    let dir = scratch("restart");
    let d = TestDaemon::start(&dir);
    let (mut b, s) = FakeBackend::register(&d.socket, "keep", weight(5));
    assert_eq!(s.weight, 5);
    d.admin.update_vm("keep", VmPatch { weight: Some(42), slice_us: Some(Some(2000)), ..Default::default() }).unwrap();
    d.admin.update_gpu("sim", GpuPatch { max_queued_ops: Some(9), ..Default::default() }).unwrap();
    let (_other, _) = FakeBackend::register(&d.socket, "other", QosRequest::default());
    d.admin.set_drained("other", true).unwrap();
    d.stop();
    // The backend sees the daemon go (and would run alone now).
    b.expect_closed(Duration::from_secs(2));

    let d = TestDaemon::start(&dir);
    let v = d.admin.vm("keep").unwrap();
    assert_eq!((v.weight, v.slice_us, v.state, v.connected), (42, 2000, VmState::Disconnected, false));
    assert!(d.admin.vm("other").unwrap().drained);
    assert_eq!(d.admin.gpu("sim").unwrap().max_queued_ops, 9);

    let (mut b, answer) = FakeBackend::hello(&d.socket, &hello("keep", weight(5), true));
    let DaemonMsg::Welcome { settings, .. } = answer else { panic!("{answer:?}") };
    assert_eq!((settings.weight, settings.slice_us, settings.max_queued_ops), (42, 2000, 9));
    b.send(&BackendMsg::Demand);
    let (_, slice_us) = b.grant(Duration::from_secs(2)).unwrap();
    assert_eq!(slice_us, 2000, "the scheduler must use the stored slice");
    let v = d.admin.vm("keep").unwrap();
    assert_eq!((v.state, v.weight), (VmState::Running, 42));
}

#[test]
fn a_stale_socket_is_replaced_and_a_live_one_is_not() {
    let dir = scratch("restart-socket");
    let d = TestDaemon::start(&dir);
    let socket = d.socket.clone();
    // A second daemon on the same socket must refuse to start.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let mut config = gpuvisord::Config::new(&socket, dir.join("state2"));
    config.nvml = gpuvisord::inventory::NvmlSource::Disabled;
    let err = rt.block_on(gpuvisord::Daemon::start(config.clone())).err().expect("a second daemon started");
    assert!(err.to_string().contains("another gpuvisord"), "{err}");
    // A socket file left by a daemon that died is replaced.
    let stale = dir.join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    config.backend_socket = stale.clone();
    let d2 = rt.block_on(gpuvisord::Daemon::start(config)).unwrap();
    FakeBackend::register(&stale, "after", QosRequest::default());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&stale).unwrap().permissions().mode() & 0o777, 0o660);
    rt.block_on(d2.stop());
    d.stop();
}
