//! The backend's side of the memory broker: against a scripted gpuvisord on
//! a real Unix socket, a VM asks before it holds more than its limit, gets
//! CUDA_ERROR_OUT_OF_MEMORY when the daemon says no, swaps its allocations
//! out when asked (also when idle, woken through its eventfd) and brings them
//! back, intact and at the same addresses, before its next GPU work.

use gpuvisor_backend::engine::sim::{SimEngine, SwapRates};
use gpuvisor_backend::engine::{Engine, EngineStream};
use gpuvisor_backend::grants::{Counters, DaemonLink, Gate, MemoryError};
use gpuvisor_backend::guest_mem::{HostDst, HostSrc};
use protocol::control::*;
use std::os::unix::net::UnixListener;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

mod common;
use common::*;

const MIB: u64 = 1 << 20;

fn start(tag: &str, limit: u64) -> (DaemonLink, Peer, Arc<Counters>) {
    let path = socket_path(tag);
    let listener = UnixListener::bind(&path).unwrap();
    let counters = Arc::new(Counters::default());
    let link = DaemonLink::start(registration(path), counters.clone());
    let (peer, _hello) = Peer::accept_with_limit(&listener, settings(8), Some(limit));
    wait_connected(&link);
    (link, peer, counters)
}

/// [`start`] with a 64 MiB limit and the eventfd through which the link
/// wakes the queue thread, and the gate the queue thread holds.
fn start_woken(tag: &str) -> (DaemonLink, Peer, Arc<Counters>, EventFd, Gate) {
    let (link, peer, counters) = start(tag, 64 * MIB);
    let waker = EventFd::new(EFD_NONBLOCK).unwrap();
    link.set_waker(waker.try_clone().unwrap());
    let gate = link.gate();
    (link, peer, counters, waker, gate)
}

/// Allocates `n` buffers of `size` bytes, each filled with its own byte, the
/// way vm.rs does it: room first, then the allocation.
fn alloc_filled(gate: &mut Gate, e: &mut SimEngine, n: u8, size: u64) -> Vec<u64> {
    (0..n)
        .map(|i| {
            let footprint = e.alloc_footprint(size);
            gate.reserve_memory(e, footprint).unwrap();
            let p = e.mem_alloc(size).unwrap();
            gate.note_residency(e.residency());
            let data = vec![i + 1; size as usize];
            e.memcpy_htod(p, HostSrc::Bytes(&data), EngineStream::NULL, false).unwrap();
            p
        })
        .collect()
}

/// Whether buffers of `size` bytes made by `alloc_filled` still hold their bytes.
fn still_filled(e: &mut SimEngine, bufs: &[u64], size: u64) -> bool {
    bufs.iter().enumerate().all(|(i, p)| {
        let mut back = vec![0u8; size as usize];
        e.memcpy_dtoh(HostDst::Bytes(&mut back), *p, EngineStream::NULL, false).unwrap();
        back.iter().all(|&b| b == i as u8 + 1)
    })
}

/// What the queue thread does for an eviction it must carry out: waits (at
/// most 5 s) for the link to wake it, then swaps out.
fn serve_eviction(waker: &EventFd, gate: &mut Gate, e: &mut SimEngine) {
    let t = std::time::Instant::now();
    while waker.read().is_err() {
        assert!(t.elapsed() < Duration::from_secs(5), "the link never woke the queue thread");
        std::thread::sleep(Duration::from_millis(1));
    }
    gate.service_memory(e);
}

/// A queue thread whose VM fills three 2 MiB buffers and goes idle (when
/// this returns), serves the memory event `waker` signals (a swap-out), then
/// runs 100 kernels (its data must come back first, at `swap_in_rate` bytes
/// a second, 0: at once) and goes idle again; joins with whether the buffers
/// still hold what it wrote.
fn three_buffers_idle_then_busy(mut gate: Gate, waker: EventFd, swap_in_rate: u64) -> std::thread::JoinHandle<bool> {
    let (idle_tx, idle_rx) = mpsc::channel::<()>();
    let worker = std::thread::spawn(move || {
        let (mut e, ctx, s, f) = sim();
        e.set_swap_rates(SwapRates { out_bytes_per_s: 0, in_bytes_per_s: swap_in_rate });
        let bufs = alloc_filled(&mut gate, &mut e, 3, 2 * MIB);
        gate.idle(&mut e);
        idle_tx.send(()).unwrap();
        // The queue thread's epoll loop, reduced to the memory event.
        while waker.read().is_err() {
            std::thread::sleep(Duration::from_millis(1));
        }
        gate.service_memory(&mut e);
        spin(&mut gate, &mut e, ctx, s, f, 100);
        e.stream_synchronize(s).unwrap();
        gate.idle(&mut e);
        still_filled(&mut e, &bufs, 2 * MIB)
    });
    idle_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    worker
}

/// A VM whose three 2 MiB buffers the daemon swapped out while it was idle
/// (restore steps of `restore_step`, if given) and that has work waiting:
/// its link, the daemon's end, its counters and its queue thread.
fn three_buffers_swapped_out(
    tag: &str,
    restore_step: Option<u64>,
) -> (DaemonLink, Peer, Arc<Counters>, std::thread::JoinHandle<bool>) {
    three_buffers_swapped_out_at(tag, restore_step, 0)
}

/// [`three_buffers_swapped_out`], restoring at `swap_in_rate` bytes a second.
fn three_buffers_swapped_out_at(
    tag: &str,
    restore_step: Option<u64>,
    swap_in_rate: u64,
) -> (DaemonLink, Peer, Arc<Counters>, std::thread::JoinHandle<bool>) {
    let (link, mut peer, counters, waker, mut gate) = start_woken(tag);
    if let Some(step) = restore_step {
        gate.set_restore_step(step);
    }
    let worker = three_buffers_idle_then_busy(gate, waker, swap_in_rate);
    peer.send(&DaemonMsg::Evict { resident_max: 0, max_move_bytes: u64::MAX });
    let m = peer.next();
    assert!(matches!(m, BackendMsg::Evicted { moved_bytes, .. } if moved_bytes == 6 * MIB), "{m:?}");
    (link, peer, counters, worker)
}

/// The next message is a `Restored` that moved `moved` bytes and left
/// `resident` on the GPU and `evicted` in host RAM.
fn expect_restored(peer: &mut Peer, moved: u64, resident: u64, evicted: u64) {
    match peer.next() {
        BackendMsg::Restored { state, moved_bytes, .. } => {
            assert_eq!(moved_bytes, moved);
            assert_eq!((state.resident_bytes, state.evicted_bytes), (resident, evicted));
        }
        m => panic!("expected Restored, got {m:?}"),
    }
}

/// Its data all back, the VM asks for the GPU; granted, it runs and finds
/// its buffers as it wrote them.
fn runs_with_its_data(peer: &mut Peer, worker: std::thread::JoinHandle<bool>) {
    assert_eq!(peer.next(), BackendMsg::Demand);
    peer.send(&DaemonMsg::Grant { grant: 1, slice_us: 1_000_000, contended: false });
    assert!(worker.join().unwrap(), "data came back changed");
}

#[test]
fn memory_past_the_limit_is_asked_for_and_a_refusal_is_out_of_memory() {
    let (link, mut peer, _) = start("need", 4 * MIB);
    let mut gate = link.gate();
    let (tx, rx) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        let (mut e, ..) = sim();
        // Within the limit: no question asked.
        let a = alloc_filled(&mut gate, &mut e, 1, 3 * MIB);
        tx.send("first").unwrap();
        // Past it: waits for the daemon.
        let b = alloc_filled(&mut gate, &mut e, 1, 3 * MIB);
        tx.send("second").unwrap();
        let r = gate.reserve_memory(&mut e, 64 * MIB);
        (a, b, r.map_err(|e| e.to_string()), e.residency())
    });
    assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), "first");
    assert_eq!(peer.next(), BackendMsg::MemNeed { bytes: 6 * MIB });
    assert!(rx.recv_timeout(Duration::from_millis(200)).is_err(), "allocated past its limit without an answer");
    peer.send(&DaemonMsg::MemLimit { bytes: 6 * MIB });
    assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), "second");
    assert_eq!(peer.next(), BackendMsg::MemNeed { bytes: 70 * MIB });
    peer.send(&DaemonMsg::MemDenied { bytes: 70 * MIB, reason: "host RAM for evicted GPU memory is used up".into() });
    let (a, b, r, residency) = worker.join().unwrap();
    assert_eq!((a.len(), b.len()), (1, 1));
    let err = r.expect_err("a denied need must fail");
    assert!(err.contains("host RAM"), "{err}");
    assert_eq!(residency.resident, 6 * MIB);
    // The error the guest sees.
    let e = gpuvisor_backend::error::Error::from(MemoryError::Denied { bytes: 1, reason: String::new() });
    assert_eq!(e.cu_result(), protocol::cuda::CUDA_ERROR_OUT_OF_MEMORY);
}

#[test]
fn an_idle_vm_swaps_out_when_asked_and_its_data_comes_back_before_its_next_work() {
    let (_link, mut peer, counters, waker, mut gate) = start_woken("evict");
    let (tx, rx) = mpsc::channel::<&str>();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let worker = std::thread::spawn(move || {
        let (mut e, ctx, s, f) = sim();
        let bufs = alloc_filled(&mut gate, &mut e, 4, 2 * MIB);
        gate.idle(&mut e);
        tx.send("idle").unwrap();
        // The queue thread's epoll loop, reduced to the memory event.
        while waker.read().is_err() {
            std::thread::sleep(Duration::from_millis(1));
        }
        gate.service_memory(&mut e);
        let swapped = e.residency();
        tx.send("swapped").unwrap();
        go_rx.recv().unwrap();
        // The next GPU work: data first, then a grant.
        spin(&mut gate, &mut e, ctx, s, f, 100);
        e.stream_synchronize(s).unwrap();
        gate.idle(&mut e);
        let ok = still_filled(&mut e, &bufs, 2 * MIB);
        (swapped, e.residency(), ok)
    });
    assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), "idle");
    peer.send(&DaemonMsg::Evict { resident_max: 3 * MIB, max_move_bytes: u64::MAX });
    match peer.next() {
        BackendMsg::Evicted { state, moved_bytes, .. } => {
            // Largest first, until at most 3 MiB stay: three of the four 2 MiB buffers go.
            assert_eq!(moved_bytes, 6 * MIB);
            assert_eq!(state, MemoryState { resident_bytes: 2 * MIB, evicted_bytes: 6 * MIB, limit_bytes: 2 * MIB });
        }
        m => panic!("expected Evicted, got {m:?}"),
    }
    assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), "swapped");
    go_tx.send(()).unwrap();
    // Before it may run it needs all 8 MiB back on the GPU.
    assert_eq!(peer.next(), BackendMsg::MemNeed { bytes: 8 * MIB });
    peer.send(&DaemonMsg::MemLimit { bytes: 8 * MIB });
    match peer.next() {
        BackendMsg::Restored { state, moved_bytes, .. } => {
            assert_eq!(moved_bytes, 6 * MIB);
            assert_eq!((state.resident_bytes, state.evicted_bytes), (8 * MIB, 0));
        }
        m => panic!("expected Restored, got {m:?}"),
    }
    assert_eq!(peer.next(), BackendMsg::Demand, "the restore comes before the grant is asked for");
    peer.send(&DaemonMsg::Grant { grant: 1, slice_us: 1_000_000, contended: false });
    let (swapped, after, ok) = worker.join().unwrap();
    assert_eq!((swapped.resident, swapped.evicted), (2 * MIB, 6 * MIB));
    assert_eq!((after.resident, after.evicted), (8 * MIB, 0));
    assert!(ok, "data came back changed");
    assert_eq!(counters.evictions.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_eq!(counters.restores.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[test]
fn an_eviction_with_nothing_to_move_is_answered_by_the_link_alone() {
    let (link, mut peer, _) = start("slack", 64 * MIB);
    let mut gate = link.gate();
    let (mut e, ..) = sim();
    alloc_filled(&mut gate, &mut e, 1, MIB);
    // No queue thread serves this VM now; the link answers from its books.
    peer.send(&DaemonMsg::Evict { resident_max: 16 * MIB, max_move_bytes: u64::MAX });
    match peer.next() {
        BackendMsg::Evicted { state, moved_bytes: 0, .. } => {
            assert_eq!((state.resident_bytes, state.limit_bytes), (MIB, MIB));
        }
        m => panic!("expected Evicted with nothing moved, got {m:?}"),
    }
    // Its new limit is what it holds: the next allocation asks.
    let worker = std::thread::spawn(move || {
        gate.reserve_memory(&mut e, MIB).unwrap();
    });
    assert_eq!(peer.next(), BackendMsg::MemNeed { bytes: 2 * MIB });
    peer.send(&DaemonMsg::MemLimit { bytes: 2 * MIB });
    worker.join().unwrap();
}

#[test]
fn memory_the_limit_does_not_cover_comes_back_step_by_step() {
    let (_link, mut peer, _, worker) = three_buffers_swapped_out("steps", Some(2 * MIB));
    // Its limit is 0 now: the 6 MiB come back 2 MiB per step, each asked for.
    for step in 1..=3u64 {
        assert_eq!(peer.next(), BackendMsg::MemNeed { bytes: step * 2 * MIB }, "step {step}");
        peer.send(&DaemonMsg::MemLimit { bytes: step * 2 * MIB });
        expect_restored(&mut peer, 2 * MIB, step * 2 * MIB, 6 * MIB - step * 2 * MIB);
    }
    runs_with_its_data(&mut peer, worker);
}

#[test]
fn a_restore_takes_what_the_daemon_gives_first_and_asks_for_the_rest() {
    let (_link, mut peer, _, worker) = three_buffers_swapped_out("part", None);
    // It asks for all 6 MiB; the daemon has 4 free now (what comes back
    // frees host RAM for the eviction that makes room for the rest).
    assert_eq!(peer.next(), BackendMsg::MemNeed { bytes: 6 * MIB });
    peer.send(&DaemonMsg::MemLimit { bytes: 4 * MIB });
    expect_restored(&mut peer, 4 * MIB, 4 * MIB, 2 * MIB);
    // The rest is asked for again, and comes back once given.
    assert_eq!(peer.next(), BackendMsg::MemNeed { bytes: 6 * MIB });
    peer.send(&DaemonMsg::MemLimit { bytes: 6 * MIB });
    expect_restored(&mut peer, 2 * MIB, 6 * MIB, 0);
    runs_with_its_data(&mut peer, worker);
}

#[test]
fn a_restore_never_brings_back_more_than_its_limit_allows() {
    let (_link, mut peer, counters, worker) = three_buffers_swapped_out("least", None);
    assert_eq!(peer.next(), BackendMsg::MemNeed { bytes: 6 * MIB });
    // Room for one 2 MiB buffer and half of the next: one comes back, and
    // the MiB left over is no room for the next one.
    peer.send(&DaemonMsg::MemLimit { bytes: 3 * MIB });
    expect_restored(&mut peer, 2 * MIB, 2 * MIB, 4 * MIB);
    // It asks again instead of passing its limit (it used to bring back the
    // next buffer whatever the room: 4 MiB resident on a 3 MiB limit, room
    // the daemon had given another VM; seen on the sim as more memory
    // resident than the GPU holds).
    assert_eq!(peer.next(), BackendMsg::MemNeed { bytes: 6 * MIB });
    assert_eq!(counters.resident_bytes.load(std::sync::atomic::Ordering::Acquire), 2 * MIB);
    peer.send(&DaemonMsg::MemLimit { bytes: 6 * MIB });
    expect_restored(&mut peer, 4 * MIB, 6 * MIB, 0);
    runs_with_its_data(&mut peer, worker);
}

#[test]
fn a_likely_eviction_the_daemon_announces_reaches_the_engine_through_the_queue_thread() {
    let (_link, mut peer, _counters, waker, mut gate) = start_woken("prepare");
    let (mut e, _ctx, _s, _f) = sim();
    peer.send(&DaemonMsg::PrepareEviction { bytes: 48 * MIB });
    serve_eviction(&waker, &mut gate, &mut e);
    assert_eq!(e.prepared_swap_out(), 48 * MIB);
    peer.send(&DaemonMsg::PrepareEviction { bytes: 0 });
    serve_eviction(&waker, &mut gate, &mut e);
    assert_eq!(e.prepared_swap_out(), 0, "withdrawn");
}

#[test]
fn an_eviction_that_moves_nothing_during_a_restore_is_answered_with_all_the_restore_brings_back() {
    // Steps of 2 MiB, 6 MiB coming back in 1.5 s.
    let (_link, mut peer, _, worker) = three_buffers_swapped_out_at("inflight", Some(2 * MIB), 4 * MIB);
    assert_eq!(peer.next(), BackendMsg::MemNeed { bytes: 2 * MIB });
    // The daemon gives room for all of it, and while it comes back asks
    // what the VM holds (its books said the allowance was unused).
    peer.send(&DaemonMsg::MemLimit { bytes: 6 * MIB });
    std::thread::sleep(Duration::from_millis(300));
    peer.send(&DaemonMsg::Evict { resident_max: 6 * MIB, max_move_bytes: 0 });
    // The answer holds what the restore brings back: answered with the 2 MiB
    // step, the daemon cut the limit to 2 MiB and gave the rest to another
    // VM, while 6 MiB came back here.
    match peer.next() {
        BackendMsg::Evicted { state, moved_bytes: 0, .. } => assert_eq!(state.resident_bytes, 6 * MIB),
        m => panic!("expected Evicted with nothing moved, got {m:?}"),
    }
    expect_restored(&mut peer, 6 * MIB, 6 * MIB, 0);
    runs_with_its_data(&mut peer, worker);
}

#[test]
fn a_restore_evicted_again_while_it_waits_takes_the_part_it_is_then_given() {
    let (_link, mut peer, _, worker) = three_buffers_swapped_out("again", Some(4 * MIB));
    // A first step of 4 MiB comes back.
    assert_eq!(peer.next(), BackendMsg::MemNeed { bytes: 4 * MIB });
    peer.send(&DaemonMsg::MemLimit { bytes: 4 * MIB });
    expect_restored(&mut peer, 4 * MIB, 4 * MIB, 2 * MIB);
    // The last step asks for all 6 MiB; while it waits, the daemon takes the
    // 4 MiB back for another VM, then gives 2 MiB: that is room above what
    // is resident now, and it comes back at once.
    assert_eq!(peer.next(), BackendMsg::MemNeed { bytes: 6 * MIB });
    peer.send(&DaemonMsg::Evict { resident_max: 0, max_move_bytes: u64::MAX });
    let m = peer.next();
    assert!(matches!(m, BackendMsg::Evicted { moved_bytes, .. } if moved_bytes == 4 * MIB), "{m:?}");
    peer.send(&DaemonMsg::MemLimit { bytes: 2 * MIB });
    // (Without it, the next message is the same need asked again 5 s on.)
    expect_restored(&mut peer, 2 * MIB, 2 * MIB, 4 * MIB);
    // The rest, step by step.
    assert_eq!(peer.next(), BackendMsg::MemNeed { bytes: 6 * MIB });
    peer.send(&DaemonMsg::MemLimit { bytes: 6 * MIB });
    let m = peer.next();
    assert!(matches!(m, BackendMsg::Restored { moved_bytes, .. } if moved_bytes == 4 * MIB), "{m:?}");
    runs_with_its_data(&mut peer, worker);
}

#[test]
fn an_eviction_moves_no_more_than_the_daemon_set_host_ram_aside_for() {
    let (_link, mut peer, _, waker, mut gate) = start_woken("cap");
    let (mut e, ..) = sim();
    alloc_filled(&mut gate, &mut e, 3, 2 * MIB);
    // The daemon's books say this memory is unused: nothing may move, and
    // the link answers with what the VM really holds.
    peer.send(&DaemonMsg::Evict { resident_max: 0, max_move_bytes: 0 });
    match peer.next() {
        BackendMsg::Evicted { state, moved_bytes: 0, .. } => assert_eq!(state.resident_bytes, 6 * MIB),
        m => panic!("expected Evicted with nothing moved, got {m:?}"),
    }
    // Room for 2 MiB in host RAM: one buffer goes, not all three.
    peer.send(&DaemonMsg::Evict { resident_max: 0, max_move_bytes: 2 * MIB });
    serve_eviction(&waker, &mut gate, &mut e);
    match peer.next() {
        BackendMsg::Evicted { state, moved_bytes, least_move_bytes, .. } => {
            assert_eq!(moved_bytes, 2 * MIB);
            assert_eq!((state.resident_bytes, state.evicted_bytes, state.limit_bytes), (4 * MIB, 2 * MIB, 4 * MIB));
            assert_eq!(least_move_bytes, 2 * MIB, "short of what was asked: what one more buffer takes");
        }
        m => panic!("expected Evicted, got {m:?}"),
    }
    // Room for 3 MiB: a second 2 MiB buffer fits, a third would pass the
    // bound, so 2 MiB stay resident although the daemon asked for none.
    peer.send(&DaemonMsg::Evict { resident_max: 0, max_move_bytes: 3 * MIB });
    serve_eviction(&waker, &mut gate, &mut e);
    match peer.next() {
        BackendMsg::Evicted { state, moved_bytes, .. } => {
            assert_eq!(moved_bytes, 2 * MIB);
            assert_eq!((state.resident_bytes, state.evicted_bytes), (2 * MIB, 4 * MIB));
        }
        m => panic!("expected Evicted, got {m:?}"),
    }
    // Room for 1 MiB: the last buffer is larger, nothing moves, and the
    // answer says how much the next eviction must be allowed (the daemon
    // asked 1 MiB again and again, and the VM waiting got nothing).
    peer.send(&DaemonMsg::Evict { resident_max: MIB, max_move_bytes: MIB });
    serve_eviction(&waker, &mut gate, &mut e);
    match peer.next() {
        BackendMsg::Evicted { moved_bytes: 0, least_move_bytes, .. } => assert_eq!(least_move_bytes, 2 * MIB),
        m => panic!("expected Evicted with nothing moved, got {m:?}"),
    }
    // Allowed that: it moves, and nothing more is owed.
    peer.send(&DaemonMsg::Evict { resident_max: 0, max_move_bytes: 2 * MIB });
    serve_eviction(&waker, &mut gate, &mut e);
    match peer.next() {
        BackendMsg::Evicted { moved_bytes, least_move_bytes, .. } => {
            assert_eq!((moved_bytes, least_move_bytes), (2 * MIB, 0))
        }
        m => panic!("expected Evicted, got {m:?}"),
    }
}
