//! Backends register over the real socket and get their settings: the
//! requested ones on a fresh start, the stored ones on a reconnect.

mod common;

use common::*;
use gpuvisor_admin::{Admin, VmPatch, VmState};
use protocol::control::*;
use std::time::Duration;

#[test]
fn a_fresh_backend_gets_what_it_asked_for_and_defaults_for_the_rest() {
    let dir = scratch("reg-fresh");
    let d = TestDaemon::start(&dir);
    let req = QosRequest { class: Some(QosClass::Guaranteed), weight: Some(5), priority: Some(-2), slice_us: None };
    let (_b, s) = FakeBackend::register(&d.socket, "vm-a", req);
    assert_eq!(
        s,
        VmSettings {
            class: QosClass::Guaranteed,
            weight: 5,
            priority: -2,
            slice_us: 10_000,
            max_queued_ops: 16,
            drained: false
        }
    );
    let v = d.admin.vm("vm-a").unwrap();
    assert!(v.connected);
    assert_eq!((v.class, v.weight, v.priority, v.state), (QosClass::Guaranteed, 5, -2, VmState::Idle));
    assert_eq!(v.engine.as_deref(), Some("sim"));
    assert_eq!(v.quota_bytes, 1 << 30);

    let (_c, s) = FakeBackend::register(&d.socket, "vm-b", QosRequest::default());
    assert_eq!((s.class, s.weight, s.priority), (QosClass::Burstable, 100, 0));
}

#[test]
fn a_reconnect_keeps_the_stored_settings_and_a_fresh_start_overrides_them() {
    let dir = scratch("reg-reconnect");
    let d = TestDaemon::start(&dir);
    let (b, s) = FakeBackend::register(&d.socket, "vm", weight(3));
    assert_eq!(s.weight, 3);
    d.admin.update_vm("vm", VmPatch { weight: Some(8), slice_us: Some(Some(2500)), ..Default::default() }).unwrap();
    drop(b);
    wait_for(|| d.admin.vm("vm").unwrap().state == VmState::Disconnected);

    let (b, answer) = FakeBackend::hello(&d.socket, &hello("vm", weight(3), true));
    let DaemonMsg::Welcome { settings, .. } = answer else { panic!("{answer:?}") };
    assert_eq!((settings.weight, settings.slice_us), (8, 2500), "a reconnect must keep the admin's settings");
    drop(b);
    wait_for(|| !d.admin.vm("vm").unwrap().connected);

    let (_b, s) = FakeBackend::register(&d.socket, "vm", weight(3));
    assert_eq!((s.weight, s.slice_us), (3, 2500), "a fresh start overrides only the fields it asks for");
    assert_eq!(d.admin.vm("vm").unwrap().weight, 3);
    let v = d.admin.vm("vm").unwrap();
    assert_eq!((v.registrations, v.reconnects), (3, 1), "two fresh starts and one reconnect are counted");
}

#[test]
fn bad_registrations_are_refused_with_a_reason_naming_the_field() {
    let dir = scratch("reg-refused");
    let d = TestDaemon::start(&dir);
    let (_b, _) = FakeBackend::register(&d.socket, "taken", QosRequest::default());
    let cases: Vec<(BackendMsg, &str)> = vec![
        (hello("taken", QosRequest::default(), false), "already connected"),
        (hello("heavy", weight(0), false), "weight"),
        (hello("heavy", weight(MAX_WEIGHT + 1), false), "weight"),
        (hello("p", QosRequest { priority: Some(21), ..Default::default() }, false), "priority"),
        (hello("s", QosRequest { slice_us: Some(10), ..Default::default() }, false), "slice_us"),
        (hello("bad name", QosRequest::default(), false), "vm"),
        (hello("", QosRequest::default(), false), "vm"),
        (hello(&"x".repeat(65), QosRequest::default(), false), "vm"),
    ];
    for (msg, needle) in cases {
        let (mut b, answer) = FakeBackend::hello(&d.socket, &msg);
        match answer {
            DaemonMsg::Refused { reason, .. } => {
                assert!(reason.contains(needle), "{reason:?} should name {needle}")
            }
            other => panic!("{msg:?} was answered with {other:?}"),
        }
        b.expect_closed(Duration::from_secs(2));
    }
    let mut v = hello("v", QosRequest::default(), false);
    if let BackendMsg::Hello { version, .. } = &mut v {
        *version = 99;
    }
    let (_b, answer) = FakeBackend::hello(&d.socket, &v);
    assert!(
        matches!(answer, DaemonMsg::Refused { reason, code: Some(RefusalCode::Invalid) } if reason.contains("version"))
    );
    // Refused VMs are not stored.
    assert!(d.admin.vm("heavy").is_err());
    assert_eq!(
        d.admin.vm("x".repeat(65).as_str()).unwrap_err().to_string(),
        format!("no VM named {:?}", "x".repeat(65))
    );
}

#[test]
fn admin_changes_reach_the_connected_backend_at_once() {
    let dir = scratch("reg-settings");
    let d = TestDaemon::start(&dir);
    let (mut b, _) = FakeBackend::register(&d.socket, "live", QosRequest::default());
    let v = d.admin.update_vm("live", VmPatch { priority: Some(7), ..Default::default() }).unwrap();
    assert_eq!(v.priority, 7);
    let Ok(DaemonMsg::Settings { settings }) = b.recv(Duration::from_secs(2)) else { panic!("no settings") };
    assert_eq!(settings.priority, 7);

    let g = d
        .admin
        .update_gpu(
            "sim",
            gpuvisor_admin::GpuPatch { slice_us: Some(4000), max_queued_ops: Some(16), ..Default::default() },
        )
        .unwrap();
    assert_eq!((g.slice_us, g.max_queued_ops), (4000, 16));
    let Ok(DaemonMsg::Settings { settings }) = b.recv(Duration::from_secs(2)) else { panic!("no settings") };
    assert_eq!((settings.slice_us, settings.max_queued_ops), (4000, 16));

    let err = d.admin.update_vm("live", VmPatch { weight: Some(0), ..Default::default() }).unwrap_err();
    assert!(matches!(err, gpuvisor_admin::AdminError::InvalidField { ref field, .. } if field == "weight"), "{err:?}");
    let err = d.admin.update_gpu("sim", gpuvisor_admin::GpuPatch { max_queued_ops: Some(0), ..Default::default() });
    assert!(
        matches!(err, Err(gpuvisor_admin::AdminError::InvalidField { ref field, .. }) if field == "max_queued_ops")
    );
    assert!(matches!(
        d.admin.update_vm("nobody", VmPatch::default()),
        Err(gpuvisor_admin::AdminError::NotFound { .. })
    ));
}

#[test]
fn a_cuda_backend_on_an_unknown_gpu_adds_that_gpu() {
    let dir = scratch("reg-gpu");
    let d = TestDaemon::start(&dir);
    let uuid = "GPU-12345678-1234-1234-1234-123456789abc";
    let mut h = hello("c", QosRequest::default(), false);
    if let BackendMsg::Hello { engine, gpu, .. } = &mut h {
        *engine = "cuda".into();
        *gpu = uuid.into();
    }
    let (_b, answer) = FakeBackend::hello(&d.socket, &h);
    assert!(matches!(answer, DaemonMsg::Welcome { .. }), "{answer:?}");
    let ids: Vec<String> = d.admin.gpus().into_iter().map(|g| g.id).collect();
    assert_eq!(ids, vec!["sim".to_string(), uuid.to_string()]);
    let g = d.admin.gpu(uuid).unwrap();
    assert_eq!((g.name.as_str(), g.vms, g.index), (uuid, 1, None));
}

fn wait_for(mut cond: impl FnMut() -> bool) {
    let until = std::time::Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(std::time::Instant::now() < until, "condition not met in 5 s");
        std::thread::sleep(Duration::from_millis(5));
    }
}
