//! The memory broker over the real socket and the real admin API: a GPU
//! whose memory the admin overcommits, backends that ask for memory, and the
//! evictions that make room for them.

mod common;

use common::*;
use gpuvisor_admin::{Client, GpuPatch, VmView};
use protocol::control::*;
use std::path::Path;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
const TOKEN: &str = "memory-test-token";

/// A backend with its own quota (and, on a reconnect, its memory's state).
fn hello_with(vm: &str, quota_bytes: u64, requested: QosRequest, reconnect: bool, memory: MemoryState) -> BackendMsg {
    BackendMsg::Hello {
        version: CONTROL_VERSION,
        vm: vm.into(),
        pid: std::process::id(),
        engine: "sim".into(),
        gpu: "sim".into(),
        quota_bytes,
        requested,
        reconnect,
        gpu_ns_total: 0,
        memory,
    }
}

/// Registers `vm` with `quota_bytes`; returns the Welcome's memory limit.
fn join(socket: &Path, vm: &str, quota_bytes: u64, requested: QosRequest) -> (FakeBackend, Option<u64>) {
    match FakeBackend::hello(socket, &hello_with(vm, quota_bytes, requested, false, MemoryState::default())) {
        (b, DaemonMsg::Welcome { mem_limit_bytes, .. }) => (b, mem_limit_bytes),
        (_, other) => panic!("{vm} not welcomed: {other:?}"),
    }
}

fn report(b: &mut FakeBackend, resident_bytes: u64, limit_bytes: u64) {
    b.send(&BackendMsg::Stats(BackendStats {
        used_bytes: resident_bytes,
        memory: MemoryState { resident_bytes, evicted_bytes: 0, limit_bytes },
        ..Default::default()
    }));
}

fn vm<'a>(vms: &'a [VmView], name: &str) -> &'a VmView {
    vms.iter().find(|v| v.name == name).unwrap()
}

/// The simulated GPU, overcommitted through the admin API: 1 GiB shared by
/// quotas of 2 GiB.
fn overcommitted(client: &Client) {
    let g = client
        .update_gpu(
            "sim",
            &GpuPatch { memory_limit_bytes: Some(Some(1024 * MIB)), overcommit_ratio: Some(2.0), ..Default::default() },
        )
        .unwrap();
    assert_eq!(
        (g.memory_limit_bytes, g.memory_capacity_bytes, g.overcommit_ratio),
        (Some(1024 * MIB), Some(1024 * MIB), 2.0)
    );
}

#[test]
fn an_eviction_that_moved_nothing_is_asked_again_with_room_for_the_smallest_allocation() {
    let dir = scratch("mem-least");
    let d = TestDaemon::start_with(&dir, |c| {
        c.min_residency_ns = 100_000_000;
        c.swap_limit_bytes = 64 << 30;
    });
    let client = Client::new(d.serve_http(TOKEN), Some(TOKEN.to_owned()));
    overcommitted(&client);
    // 1 GiB of GPU: evictions step by 64 MiB. idle holds it all, in two
    // allocations of 512 MiB.
    let (mut idle, _) = join(&d.socket, "idle", 1024 * MIB, QosRequest::default());
    let (mut asker, _) = join(&d.socket, "asker", 1024 * MIB, QosRequest::default());
    report(&mut idle, 1024 * MIB, 1024 * MIB);
    asker.send(&BackendMsg::MemNeed { bytes: 64 * MIB });
    let msg = idle.memory_msg(Duration::from_secs(3)).unwrap();
    assert_eq!(msg, DaemonMsg::Evict { resident_max: 960 * MIB, max_move_bytes: 64 * MIB }, "a step");
    idle.send(&BackendMsg::Evicted {
        state: MemoryState { resident_bytes: 1024 * MIB, evicted_bytes: 0, limit_bytes: 1024 * MIB },
        moved_bytes: 0,
        ns: 1000,
        least_move_bytes: 512 * MIB,
    });
    // Asked the same again, it would move nothing again, for good.
    let msg = idle.memory_msg(Duration::from_secs(3)).unwrap();
    assert_eq!(msg, DaemonMsg::Evict { resident_max: 512 * MIB, max_move_bytes: 512 * MIB }, "one allocation");
    idle.send(&BackendMsg::Evicted {
        state: MemoryState { resident_bytes: 512 * MIB, evicted_bytes: 512 * MIB, limit_bytes: 512 * MIB },
        moved_bytes: 512 * MIB,
        ns: 1000,
        least_move_bytes: 0,
    });
    assert_eq!(asker.memory_msg(Duration::from_secs(2)), Ok(DaemonMsg::MemLimit { bytes: 64 * MIB }));
}

#[test]
fn a_need_that_does_not_fit_evicts_the_idle_vm_and_is_granted_once_it_answers() {
    let dir = scratch("mem-evict");
    let d = TestDaemon::start_with(&dir, |c| {
        c.min_residency_ns = 200_000_000;
        c.swap_limit_bytes = 64 << 30;
    });
    let client = Client::new(d.serve_http(TOKEN), Some(TOKEN.to_owned()));
    // Not overcommitted yet: the simulated GPU's memory is not managed.
    let (early, limit) = join(&d.socket, "early", 4096 * MIB, QosRequest::default());
    assert_eq!(limit, None);
    assert_eq!(client.gpu("sim").unwrap().memory_capacity_bytes, None);
    drop(early);
    let deadline = Instant::now() + Duration::from_secs(2);
    while client.vm("early").unwrap().connected {
        assert!(Instant::now() < deadline, "early never left");
        std::thread::sleep(Duration::from_millis(10));
    }
    overcommitted(&client);
    // 768 + 768 + 512 MiB of quotas on 1 GiB.
    let (mut idle, limit) = join(&d.socket, "idle", 768 * MIB, QosRequest::default());
    assert_eq!(limit, None, "it fits: its whole quota");
    let long_slice = QosRequest { slice_us: Some(5_000_000), ..Default::default() };
    let (mut busy, limit) = join(&d.socket, "busy", 768 * MIB, long_slice);
    assert_eq!(limit, Some(256 * MIB), "what is left");
    let (mut asker, limit) = join(&d.socket, "asker", 512 * MIB, QosRequest::default());
    assert_eq!(limit, Some(0));
    report(&mut idle, 768 * MIB, 768 * MIB);
    report(&mut busy, 256 * MIB, 256 * MIB);
    // busy holds the GPU (a long slice): its memory is in use.
    busy.send(&BackendMsg::Demand);
    busy.grant(Duration::from_secs(2)).unwrap();

    let t0 = Instant::now();
    asker.send(&BackendMsg::MemNeed { bytes: 512 * MIB });
    // idle keeps its memory for min_residency after registering, then gives
    // what the asker lacks (partial eviction); the GPU's holder gives nothing.
    let msg = idle.memory_msg(Duration::from_secs(3)).unwrap();
    assert_eq!(msg, DaemonMsg::Evict { resident_max: 256 * MIB, max_move_bytes: 512 * MIB });
    assert!(t0.elapsed() >= Duration::from_millis(150), "evicted after {:?}", t0.elapsed());
    assert_eq!(asker.memory_msg(Duration::from_millis(100)), Err(NoMsg::Timeout), "granted before the eviction");
    idle.send(&BackendMsg::Evicted {
        state: MemoryState { resident_bytes: 256 * MIB, evicted_bytes: 512 * MIB, limit_bytes: 256 * MIB },
        moved_bytes: 512 * MIB,
        ns: 3_000_000,
        least_move_bytes: 0,
    });
    assert_eq!(asker.memory_msg(Duration::from_secs(2)), Ok(DaemonMsg::MemLimit { bytes: 512 * MIB }));
    assert_eq!(busy.memory_msg(Duration::from_millis(100)), Err(NoMsg::Timeout), "the holder is left alone");

    let vms = client.vms().unwrap();
    let v = vm(&vms, "idle");
    assert_eq!(
        (v.quota_bytes, v.limit_bytes, v.resident_bytes, v.evicted_bytes, v.evictions),
        (768 * MIB, 256 * MIB, 256 * MIB, 512 * MIB, 1)
    );
    assert!((v.evict_ms_total - 3.0).abs() < 1e-9, "{}", v.evict_ms_total);
    assert_eq!(vm(&vms, "asker").limit_bytes, 512 * MIB);
    assert_eq!((vm(&vms, "busy").limit_bytes, vm(&vms, "busy").evictions), (256 * MIB, 0));
    let g = client.gpu("sim").unwrap();
    assert_eq!((g.resident_bytes, g.evicted_bytes, g.swap_used_bytes), (512 * MIB, 512 * MIB, 512 * MIB));
    assert_eq!(g.swap_limit_bytes, 64 << 30);

    // idle brings its memory back later (within a limit it got by asking).
    idle.send(&BackendMsg::Restored {
        state: MemoryState { resident_bytes: 768 * MIB, evicted_bytes: 0, limit_bytes: 768 * MIB },
        moved_bytes: 512 * MIB,
        ns: 4_500_000,
    });
    let deadline = Instant::now() + Duration::from_secs(2);
    let v = loop {
        let v = client.vm("idle").unwrap();
        if v.restores == 1 || Instant::now() > deadline {
            break v;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!((v.restores, v.last_restore_ms, v.evicted_bytes), (1, Some(4.5), 0));
}

#[test]
fn registration_over_the_overcommit_ratio_is_refused_naming_the_setting() {
    let dir = scratch("mem-admit");
    let d = TestDaemon::start(&dir);
    let client = Client::new(d.serve_http(TOKEN), Some(TOKEN.to_owned()));
    overcommitted(&client);
    let (_a, _) = join(&d.socket, "a", 1024 * MIB, QosRequest::default());
    let (_b, _) = join(&d.socket, "b", 1024 * MIB, QosRequest::default());
    let (_, answer) =
        FakeBackend::hello(&d.socket, &hello_with("c", MIB, QosRequest::default(), false, Default::default()));
    let DaemonMsg::Refused { reason, code: Some(RefusalCode::Overcommit) } = answer else { panic!("{answer:?}") };
    assert!(reason.contains("overcommit_ratio") && reason.contains("--memory-limit"), "{reason}");
    assert!(client.vm("c").is_err(), "a refused VM is not stored");
    // A higher ratio lets it in.
    client.update_gpu("sim", &GpuPatch { overcommit_ratio: Some(3.0), ..Default::default() }).unwrap();
    let (_c, limit) = join(&d.socket, "c", MIB, QosRequest::default());
    assert_eq!(limit, Some(0));
}

#[test]
fn a_need_beyond_the_host_ram_for_evictions_is_denied_and_nobody_is_evicted() {
    let dir = scratch("mem-swap");
    let d = TestDaemon::start_with(&dir, |c| {
        c.min_residency_ns = 0;
        c.swap_limit_bytes = 256 * MIB;
    });
    let client = Client::new(d.serve_http(TOKEN), Some(TOKEN.to_owned()));
    overcommitted(&client);
    let (mut full, _) = join(&d.socket, "full", 1024 * MIB, QosRequest::default());
    report(&mut full, 1024 * MIB, 1024 * MIB);
    let (mut asker, _) = join(&d.socket, "asker", 1024 * MIB, QosRequest::default());
    // Make sure the report is in before the need.
    let deadline = Instant::now() + Duration::from_secs(2);
    while client.vm("full").unwrap().resident_bytes != 1024 * MIB {
        assert!(Instant::now() < deadline, "the stats never arrived");
        std::thread::sleep(Duration::from_millis(10));
    }
    asker.send(&BackendMsg::MemNeed { bytes: 512 * MIB });
    // Before saying no, the daemon asks `full` what it holds; nothing may move.
    let question = full.memory_msg(Duration::from_secs(2)).unwrap();
    assert_eq!(question, DaemonMsg::Evict { resident_max: 1024 * MIB, max_move_bytes: 0 });
    let state = MemoryState { resident_bytes: 1024 * MIB, evicted_bytes: 0, limit_bytes: 1024 * MIB };
    full.send(&BackendMsg::Evicted { state, moved_bytes: 0, ns: 0, least_move_bytes: 0 });
    let Ok(DaemonMsg::MemDenied { bytes, reason }) = asker.memory_msg(Duration::from_secs(2)) else {
        panic!("not denied")
    };
    assert_eq!(bytes, 512 * MIB);
    assert!(reason.starts_with("host RAM for evicted GPU memory is used up"), "{reason}");
    assert_eq!(full.memory_msg(Duration::from_millis(200)), Err(NoMsg::Timeout), "nothing else asked of it");
}

#[test]
fn a_daemon_restart_keeps_the_books_of_reconnecting_backends() {
    let dir = scratch("mem-restart");
    let d = TestDaemon::start(&dir);
    let client = Client::new(d.serve_http(TOKEN), Some(TOKEN.to_owned()));
    overcommitted(&client);
    d.stop();

    let d = TestDaemon::start(&dir);
    let client = Client::new(d.serve_http(TOKEN), Some(TOKEN.to_owned()));
    assert_eq!(client.gpu("sim").unwrap().memory_limit_bytes, Some(1024 * MIB), "the limit is stored");
    // evicted came back first and holds 256 MiB of 768 (512 in host RAM).
    let held = MemoryState { resident_bytes: 256 * MIB, evicted_bytes: 512 * MIB, limit_bytes: 256 * MIB };
    let (_e, answer) =
        FakeBackend::hello(&d.socket, &hello_with("evicted", 768 * MIB, QosRequest::default(), true, held));
    assert!(matches!(answer, DaemonMsg::Welcome { mem_limit_bytes: Some(l), .. } if l == 256 * MIB), "{answer:?}");
    let held = MemoryState { resident_bytes: 700 * MIB, evicted_bytes: 0, limit_bytes: 768 * MIB };
    let (_r, answer) =
        FakeBackend::hello(&d.socket, &hello_with("resident", 768 * MIB, QosRequest::default(), true, held));
    assert!(matches!(answer, DaemonMsg::Welcome { mem_limit_bytes: None, .. }), "{answer:?}");
    let vms = client.vms().unwrap();
    assert_eq!((vm(&vms, "evicted").limit_bytes, vm(&vms, "evicted").evicted_bytes), (256 * MIB, 512 * MIB));
    assert_eq!(vm(&vms, "resident").limit_bytes, 768 * MIB);
    // Nothing is left: a newcomer gets no memory until someone gives some.
    let (_n, limit) = join(&d.socket, "new", 256 * MIB, QosRequest::default());
    assert_eq!(limit, Some(0));
}
