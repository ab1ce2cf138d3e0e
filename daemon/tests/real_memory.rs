//! The memory broker with real backends (gpuvisor-backend's `DaemonLink` and
//! `Gate` on the sim engine): two VMs whose quotas add up to twice the GPU
//! take turns on its memory, each evicted to host RAM while the other needs
//! room, and each gets its data back intact.

mod common;

use common::*;
use gpuvisor_admin::{Admin, GpuPatch};
use gpuvisor_backend::engine::{Engine, EngineStream, Launch};
use gpuvisor_backend::grants::{Counters, DaemonLink, Gate, Registration};
use gpuvisor_backend::guest_mem::{HostDst, HostSrc};
use protocol::control::QosRequest;
use std::path::Path;
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const MIB: u64 = 1 << 20;
const BUF: u64 = 2 * MIB;

fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let until = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < until, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn link(socket: &Path, vm: &str, quota_bytes: u64) -> DaemonLink {
    let link = DaemonLink::start(
        Registration {
            socket: socket.to_path_buf(),
            vm: vm.into(),
            engine: "sim".into(),
            gpu: "sim".into(),
            quota_bytes,
            requested: QosRequest::default(),
            max_queued: Duration::from_millis(5),
        },
        Arc::new(Counters::default()),
    );
    wait_for("registration", Duration::from_secs(5), || link.connected());
    link
}

/// A VM's queue thread: allocates `n` buffers (each filled with its own
/// byte, asking for memory as it goes), says so on `allocated`, then serves
/// evictions until `go`; then runs a kernel (its data comes back first) and
/// returns whether its buffers came back intact.
fn guest(link: &DaemonLink, n: u8, allocated: Sender<()>, go: Receiver<()>) -> JoinHandle<bool> {
    let waker = EventFd::new(EFD_NONBLOCK).unwrap();
    link.set_waker(waker.try_clone().unwrap());
    let mut gate: Gate = link.gate();
    std::thread::spawn(move || {
        let (mut e, ctx, s, f) = sim_with_spin();
        let bufs: Vec<u64> = (0..n)
            .map(|i| {
                let footprint = e.alloc_footprint(BUF);
                gate.reserve_memory(&mut e, footprint).unwrap();
                let p = e.mem_alloc(BUF).unwrap();
                gate.note_residency(e.residency());
                e.memcpy_htod(p, HostSrc::Bytes(&vec![i + 1; BUF as usize]), EngineStream::NULL, false).unwrap();
                p
            })
            .collect();
        gate.idle(&mut e);
        allocated.send(()).unwrap();
        // The backend's epoll loop, reduced to the memory event.
        loop {
            match go.try_recv() {
                Ok(()) => break,
                Err(TryRecvError::Empty) => {}
                Err(TryRecvError::Disconnected) => return false,
            }
            if waker.read().is_ok() {
                gate.service_memory(&mut e);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        gate.before_op(&mut e, ctx, s).unwrap();
        let params = 100u64.to_le_bytes();
        e.launch(f, &Launch::plain([1, 1, 1], [1, 1, 1], s, &params)).unwrap();
        gate.after_op(&mut e, ctx, s);
        e.stream_synchronize(s).unwrap();
        gate.idle(&mut e);
        bufs.iter().enumerate().all(|(i, &p)| {
            let mut back = vec![0u8; BUF as usize];
            e.memcpy_dtoh(HostDst::Bytes(&mut back), p, EngineStream::NULL, false).unwrap();
            back.iter().all(|&b| b == i as u8 + 1)
        })
    })
}

#[test]
fn two_real_backends_take_turns_on_an_overcommitted_gpu() {
    let dir = scratch("real-memory");
    let d = TestDaemon::start_with(&dir, |c| {
        c.min_residency_ns = 0;
        c.swap_limit_bytes = 1 << 30;
    });
    d.admin
        .update_gpu(
            "sim",
            GpuPatch { memory_limit_bytes: Some(Some(16 * MIB)), overcommit_ratio: Some(2.0), ..Default::default() },
        )
        .unwrap();

    let a = link(&d.socket, "a", 16 * MIB);
    let (a_allocated, a_ready) = mpsc::channel();
    let (a_go, a_went) = mpsc::channel();
    let a_thread = guest(&a, 6, a_allocated, a_went);
    a_ready.recv_timeout(Duration::from_secs(5)).expect("a allocated its 12 MiB");

    // b needs 8 MiB of the 4 that are free: a gives 4 MiB to host RAM.
    let b = link(&d.socket, "b", 16 * MIB);
    let (b_allocated, b_ready) = mpsc::channel();
    let (b_go, b_went) = mpsc::channel();
    let _b_thread = guest(&b, 4, b_allocated, b_went);
    b_ready.recv_timeout(Duration::from_secs(5)).expect("b got its 8 MiB");
    let va = d.admin.vm("a").unwrap();
    assert_eq!((va.resident_bytes, va.evicted_bytes, va.limit_bytes), (8 * MIB, 4 * MIB, 8 * MIB));
    assert!(va.evictions >= 1);
    assert_eq!(d.admin.vm("b").unwrap().limit_bytes, 8 * MIB);

    // a's next work needs its 12 MiB back: b, idle now, gives 4.
    a_go.send(()).unwrap();
    assert!(a_thread.join().unwrap(), "a's data came back changed");
    wait_for("a's restore reported", Duration::from_secs(5), || d.admin.vm("a").unwrap().restores == 1);
    let (va, vb) = (d.admin.vm("a").unwrap(), d.admin.vm("b").unwrap());
    assert_eq!((va.resident_bytes, va.evicted_bytes, va.limit_bytes), (12 * MIB, 0, 12 * MIB));
    assert_eq!((vb.resident_bytes, vb.evicted_bytes, vb.limit_bytes), (4 * MIB, 4 * MIB, 4 * MIB));
    assert!(va.last_restore_ms.is_some());
    let g = d.admin.gpu("sim").unwrap();
    assert_eq!((g.resident_bytes, g.evicted_bytes, g.swap_used_bytes), (16 * MIB, 4 * MIB, 4 * MIB));
    drop(b_go);
}
