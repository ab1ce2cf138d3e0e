//! The backend's side of scheduling: a scripted gpuvisord on a real Unix
//! socket hands out grants, and the gate on the sim engine must wait for
//! them, cap its queued work, measure the GPU time it used, give grants back
//! and run alone when the daemon goes away.

use gpuvisor_backend::engine::Engine;
use gpuvisor_backend::grants::{Counters, DaemonLink};
use protocol::control::*;
use std::io::BufReader;
use std::os::unix::net::UnixListener;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;
use common::*;

#[test]
fn work_waits_for_a_grant_and_its_gpu_time_is_reported() {
    let path = socket_path("grant");
    let listener = UnixListener::bind(&path).unwrap();
    let link = DaemonLink::start(registration(path), Arc::new(Counters::default()));
    let (mut peer, hello) = Peer::accept(&listener, settings(8));
    match hello {
        BackendMsg::Hello { vm, requested, reconnect, engine, .. } => {
            assert_eq!(vm, "vm-a");
            assert_eq!(engine, "sim");
            assert_eq!(requested.weight, Some(3));
            assert!(!reconnect);
        }
        m => panic!("expected Hello, got {m:?}"),
    }
    wait_connected(&link);
    let mut gate = link.gate();
    let (done_tx, done_rx) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        let (mut e, ctx, s, f) = sim();
        let t = Instant::now();
        spin(&mut gate, &mut e, ctx, s, f, 20_000);
        done_tx.send(t.elapsed()).unwrap();
        e.stream_synchronize(s).unwrap();
        gate.idle(&mut e);
        (gate, e)
    });
    assert_eq!(peer.next(), BackendMsg::Demand);
    // No grant yet: the launch must not have been submitted.
    assert!(done_rx.recv_timeout(Duration::from_millis(200)).is_err(), "work ran without a grant");
    peer.send(&DaemonMsg::Grant { grant: 7, slice_us: 1_000_000, contended: true });
    done_rx.recv_timeout(Duration::from_secs(5)).expect("grant did not release the work");
    let (_gate, _e) = worker.join().unwrap();
    match peer.next() {
        BackendMsg::Release { grant, gpu_ns, ops, more } => {
            assert_eq!(grant, 7);
            assert_eq!(ops, 1);
            assert!(!more, "an idle VM wants no more");
            // The 20 ms spin, measured with events.
            assert!((19_000_000..40_000_000).contains(&gpu_ns), "gpu_ns {gpu_ns}");
        }
        m => panic!("expected Release, got {m:?}"),
    }
}

#[test]
fn slice_end_and_revocation_give_the_grant_back_and_queued_work_is_capped() {
    let path = socket_path("slice");
    let listener = UnixListener::bind(&path).unwrap();
    let link = DaemonLink::start(registration(path), Arc::new(Counters::default()));
    let (mut peer, _) = Peer::accept(&listener, settings(2));
    wait_connected(&link);
    let mut gate = link.gate();
    let (tx, rx) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        let (mut e, ctx, s, f) = sim();
        for i in 0..12 {
            spin(&mut gate, &mut e, ctx, s, f, 10_000);
            tx.send((i, Instant::now())).unwrap();
        }
        e.stream_synchronize(s).unwrap();
        gate.idle(&mut e);
    });
    assert_eq!(peer.next(), BackendMsg::Demand);
    let granted = Instant::now();
    peer.send(&DaemonMsg::Grant { grant: 1, slice_us: 45_000, contended: true });
    // The slice ends after 45 ms; with at most 2 ops of 10 ms queued, the
    // backend can have submitted only about 6 of them by then.
    match peer.next() {
        BackendMsg::Release { grant: 1, gpu_ns, ops, more: true } => {
            let held = granted.elapsed();
            assert!(held >= Duration::from_millis(40), "released after {held:?}");
            assert!((2..=8).contains(&ops), "{ops} ops in a 45 ms slice with a cap of 2");
            assert!(
                gpu_ns >= 25_000_000 && gpu_ns <= held.as_nanos() as u64 + 5_000_000,
                "gpu_ns {gpu_ns}, held {held:?}"
            );
        }
        m => panic!("expected Release(more), got {m:?}"),
    }
    let submitted = rx.try_iter().count();
    assert!(submitted <= 8, "{submitted} launches submitted during a 45 ms slice");
    // Next grant, revoked at once: the backend gives it back at its next op.
    peer.send(&DaemonMsg::Grant { grant: 2, slice_us: 1_000_000, contended: true });
    std::thread::sleep(Duration::from_millis(15));
    peer.send(&DaemonMsg::Revoke { grant: 2 });
    loop {
        match peer.next() {
            BackendMsg::Release { grant: 2, more: true, .. } => break,
            BackendMsg::Charge { .. } => continue,
            m => panic!("expected Release of the revoked grant, got {m:?}"),
        }
    }
    // Then let it finish.
    peer.send(&DaemonMsg::Grant { grant: 3, slice_us: 5_000_000, contended: true });
    worker.join().unwrap();
    assert_eq!(rx.try_iter().count() + submitted, 12);
}

#[test]
fn without_the_daemon_the_vm_runs_alone_and_reconnects_when_it_returns() {
    let path = socket_path("gone");
    let counters = Arc::new(Counters::default());
    // No daemon yet: work runs at once.
    let link = DaemonLink::start(registration(path.clone()), counters.clone());
    let mut gate = link.gate();
    let (mut e, ctx, s, f) = sim();
    let t = Instant::now();
    spin(&mut gate, &mut e, ctx, s, f, 1000);
    assert!(t.elapsed() < Duration::from_secs(1));
    // The daemon starts: the backend registers.
    let listener = UnixListener::bind(&path).unwrap();
    let (mut peer, hello) = Peer::accept(&listener, settings(4));
    assert!(matches!(hello, BackendMsg::Hello { reconnect: false, .. }));
    wait_connected(&link);
    // It dies while the backend waits for a grant: the backend runs alone.
    let (tx, rx) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        spin(&mut gate, &mut e, ctx, s, f, 1000);
        tx.send(()).unwrap();
        (gate, e)
    });
    assert_eq!(peer.next(), BackendMsg::Demand);
    assert!(rx.recv_timeout(Duration::from_millis(100)).is_err());
    drop(peer);
    drop(listener);
    std::fs::remove_file(&path).unwrap();
    rx.recv_timeout(Duration::from_secs(5)).expect("the backend kept waiting for a dead daemon");
    let (_gate, _e) = worker.join().unwrap();
    // A new daemon: the backend comes back, saying it was registered before.
    let listener = UnixListener::bind(&path).unwrap();
    let (_peer, hello) = Peer::accept(&listener, settings(4));
    assert!(matches!(hello, BackendMsg::Hello { reconnect: true, .. }), "{hello:?}");
    wait_connected(&link);
    assert_eq!(counters.ops_total.load(std::sync::atomic::Ordering::Relaxed), 2);
}

#[test]
fn a_refused_registration_leaves_the_vm_running_alone() {
    let path = socket_path("refused");
    let listener = UnixListener::bind(&path).unwrap();
    let link = DaemonLink::start(registration(path), Arc::new(Counters::default()));
    let (s, _) = listener.accept().unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    let _: BackendMsg = read_msg(&mut r).unwrap();
    let reason = "weight: must be between 1 and 10000".into();
    write_msg(&mut w, &DaemonMsg::Refused { reason, code: Some(RefusalCode::Invalid) }).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert!(!link.connected());
    let mut gate = link.gate();
    let (mut e, ctx, s, f) = sim();
    let t = Instant::now();
    spin(&mut gate, &mut e, ctx, s, f, 1000);
    assert!(t.elapsed() < Duration::from_secs(1));
}

/// Accepts one connection, reads its Hello and refuses it the VM's GPU.
fn refuse_gpu(listener: &UnixListener) {
    let (s, _) = listener.accept().unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    let _: BackendMsg = read_msg(&mut r).unwrap();
    let reason = "gpu: VM \"vm-a\" may not use GPU \"sim\": its access list allows only MIG-1".to_owned();
    write_msg(&mut w, &DaemonMsg::Refused { reason, code: Some(RefusalCode::GpuNotAllowed) }).unwrap();
}

#[test]
fn a_vm_refused_its_gpu_holds_its_work_even_without_a_daemon_until_it_is_allowed() {
    let path = socket_path("not-allowed");
    let listener = UnixListener::bind(&path).unwrap();
    let counters = Arc::new(Counters::default());
    let link = DaemonLink::start(registration(path.clone()), counters.clone());
    refuse_gpu(&listener);
    let until = Instant::now() + Duration::from_secs(5);
    while link.refused().is_none() {
        assert!(Instant::now() < until, "the refusal was not taken");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(link.refused().unwrap().contains("access list"), "{:?}", link.refused());
    let mut gate = link.gate();
    let (done_tx, done_rx) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        let (mut e, ctx, s, f) = sim();
        spin(&mut gate, &mut e, ctx, s, f, 1000);
        done_tx.send(()).unwrap();
        e.stream_synchronize(s).unwrap();
        gate.idle(&mut e);
        (gate, e)
    });
    assert!(done_rx.recv_timeout(Duration::from_millis(300)).is_err(), "a VM refused its GPU ran work");
    // The link retries and is refused again; then the daemon goes away:
    // its absence allows nothing.
    refuse_gpu(&listener);
    drop(listener);
    std::fs::remove_file(&path).unwrap();
    assert!(done_rx.recv_timeout(Duration::from_millis(300)).is_err(), "work ran once the daemon was gone");
    assert_eq!(counters.ops_total.load(std::sync::atomic::Ordering::Relaxed), 0);
    // A daemon that allows the VM: it registers, asks for a grant and runs.
    let listener = UnixListener::bind(&path).unwrap();
    let (mut peer, _) = Peer::accept(&listener, settings(4));
    wait_connected(&link);
    assert_eq!(link.refused(), None);
    assert_eq!(peer.next(), BackendMsg::Demand);
    peer.send(&DaemonMsg::Grant { grant: 1, slice_us: 1_000_000, contended: false });
    done_rx.recv_timeout(Duration::from_secs(5)).expect("the allowed VM's work did not run");
    let (_gate, _e) = worker.join().unwrap();
}

#[test]
fn queued_work_is_capped_by_its_estimated_gpu_time() {
    let path = socket_path("timecap");
    let listener = UnixListener::bind(&path).unwrap();
    let mut reg = registration(path);
    // 10 ms kernels and a 15 ms cap: one kernel queued at a time once the
    // backend has timed a couple of them (the daemon alone would allow 8).
    reg.max_queued = Duration::from_millis(15);
    let link = DaemonLink::start(reg, Arc::new(Counters::default()));
    let (mut peer, _) = Peer::accept(&listener, settings(8));
    wait_connected(&link);
    let mut gate = link.gate();
    let worker = std::thread::spawn(move || {
        let (mut e, ctx, s, f) = sim();
        for _ in 0..60 {
            spin(&mut gate, &mut e, ctx, s, f, 10_000);
        }
        e.stream_synchronize(s).unwrap();
        gate.idle(&mut e);
    });
    assert_eq!(peer.next(), BackendMsg::Demand);
    // A first slice to learn the kernels' length.
    peer.send(&DaemonMsg::Grant { grant: 1, slice_us: 60_000, contended: true });
    assert!(matches!(peer.next(), BackendMsg::Release { grant: 1, more: true, .. }));
    // Let what it queued drain, so the next slice starts with an empty queue.
    std::thread::sleep(Duration::from_millis(150));
    peer.send(&DaemonMsg::Grant { grant: 2, slice_us: 100_000, contended: true });
    loop {
        match peer.next() {
            BackendMsg::Release { grant: 2, ops, more: true, .. } => {
                // 100 ms of 10 ms kernels with one queued: about 10 submitted,
                // where a queue of 8 would have taken about 17.
                assert!((4..=13).contains(&ops), "{ops} ops in a 100 ms slice");
                break;
            }
            BackendMsg::Charge { .. } => continue,
            m => panic!("expected Release, got {m:?}"),
        }
    }
    // Alone on the GPU (an uncontended grant) the queue may be deep: the
    // 100 ms slice now submits the 10 ms kernels as fast as they come.
    std::thread::sleep(Duration::from_millis(150));
    peer.send(&DaemonMsg::Grant { grant: 3, slice_us: 100_000, contended: false });
    loop {
        match peer.next() {
            BackendMsg::Release { grant: 3, ops, .. } => {
                assert!(ops >= 16, "only {ops} ops in an uncontended 100 ms slice");
                break;
            }
            BackendMsg::Charge { .. } => continue,
            m => panic!("expected Release, got {m:?}"),
        }
    }
    peer.send(&DaemonMsg::Grant { grant: 4, slice_us: 10_000_000, contended: true });
    worker.join().unwrap();
}

#[test]
fn a_grant_revoked_before_it_was_used_is_handed_back_still_wanting_one() {
    let path = socket_path("revoked-early");
    let listener = UnixListener::bind(&path).unwrap();
    let link = DaemonLink::start(registration(path), Arc::new(Counters::default()));
    let (mut peer, _) = Peer::accept(&listener, settings(4));
    wait_connected(&link);
    let mut gate = link.gate();
    let worker = std::thread::spawn(move || {
        let (mut e, ctx, s, f) = sim();
        for i in 0..3 {
            spin(&mut gate, &mut e, ctx, s, f, 1000);
            if i == 0 {
                // Still work to do when the revoke comes, however slowly the
                // link thread runs on a loaded machine.
                std::thread::sleep(Duration::from_millis(300));
            }
        }
        e.stream_synchronize(s).unwrap();
        gate.idle(&mut e);
    });
    assert_eq!(peer.next(), BackendMsg::Demand);
    // A preemption right behind the grant, as gpuvisord sends it when a
    // higher-priority VM demands at that moment.
    peer.send(&DaemonMsg::Grant { grant: 1, slice_us: 1_000_000, contended: true });
    peer.send(&DaemonMsg::Revoke { grant: 1 });
    loop {
        match peer.next() {
            BackendMsg::Release { grant: 1, more, .. } => {
                assert!(more, "the backend still has work and must say so");
                break;
            }
            BackendMsg::Charge { .. } => continue,
            m => panic!("expected Release of grant 1, got {m:?}"),
        }
    }
    peer.send(&DaemonMsg::Grant { grant: 2, slice_us: 1_000_000, contended: true });
    loop {
        match peer.next() {
            BackendMsg::Release { grant: 2, more: false, .. } => break,
            BackendMsg::Charge { .. } => continue,
            m => panic!("expected the final Release, got {m:?}"),
        }
    }
    worker.join().unwrap();
}

#[test]
fn a_revocation_that_arrives_while_waiting_on_the_queue_cap_stops_submission() {
    let path = socket_path("revoke-cap");
    let listener = UnixListener::bind(&path).unwrap();
    let link = DaemonLink::start(registration(path), Arc::new(Counters::default()));
    let (mut peer, _) = Peer::accept(&listener, settings(1));
    wait_connected(&link);
    let mut gate = link.gate();
    let worker = std::thread::spawn(move || {
        let (mut e, ctx, s, f) = sim();
        for _ in 0..4 {
            spin(&mut gate, &mut e, ctx, s, f, 50_000);
        }
        e.stream_synchronize(s).unwrap();
        gate.idle(&mut e);
    });
    assert_eq!(peer.next(), BackendMsg::Demand);
    peer.send(&DaemonMsg::Grant { grant: 1, slice_us: 10_000_000, contended: true });
    // The first 50 ms kernel runs; the backend waits on it (cap 1) when the
    // preemption comes. It must not queue a second kernel after the wait.
    std::thread::sleep(Duration::from_millis(15));
    peer.send(&DaemonMsg::Revoke { grant: 1 });
    loop {
        match peer.next() {
            BackendMsg::Release { grant: 1, ops, more: true, .. } => {
                assert_eq!(ops, 1, "submitted after its grant was revoked");
                break;
            }
            BackendMsg::Charge { .. } => continue,
            m => panic!("expected Release, got {m:?}"),
        }
    }
    peer.send(&DaemonMsg::Grant { grant: 2, slice_us: 10_000_000, contended: true });
    worker.join().unwrap();
}

#[test]
fn after_a_preemption_and_an_idle_release_the_next_work_asks_for_a_grant_at_once() {
    let path = socket_path("re-demand");
    let listener = UnixListener::bind(&path).unwrap();
    let link = DaemonLink::start(registration(path), Arc::new(Counters::default()));
    let (mut peer, _) = Peer::accept(&listener, settings(1));
    wait_connected(&link);
    let mut gate = link.gate();
    let (tx, rx) = mpsc::channel::<()>();
    let worker = std::thread::spawn(move || {
        let (mut e, ctx, s, f) = sim();
        // Two kernels under a cap of one: the second waits on the first.
        spin(&mut gate, &mut e, ctx, s, f, 30_000);
        spin(&mut gate, &mut e, ctx, s, f, 1000);
        e.stream_synchronize(s).unwrap();
        gate.idle(&mut e);
        // The guest's next request, after its queue ran empty.
        rx.recv().unwrap();
        spin(&mut gate, &mut e, ctx, s, f, 1000);
        e.stream_synchronize(s).unwrap();
        gate.idle(&mut e);
    });
    assert_eq!(peer.next(), BackendMsg::Demand);
    peer.send(&DaemonMsg::Grant { grant: 1, slice_us: 10_000_000, contended: true });
    std::thread::sleep(Duration::from_millis(10));
    // gpuvisord preempts and, the preemptor done, grants again before the
    // backend has even noticed the revocation.
    peer.send(&DaemonMsg::Revoke { grant: 1 });
    peer.send(&DaemonMsg::Grant { grant: 2, slice_us: 10_000_000, contended: true });
    let mut released = Vec::new();
    while released.len() < 2 {
        match peer.next() {
            BackendMsg::Release { grant, more, .. } => released.push((grant, more)),
            BackendMsg::Charge { .. } => {}
            m => panic!("unexpected {m:?}"),
        }
    }
    assert_eq!(released, vec![(1, true), (2, false)]);
    // Idle now; new work must say so at once, not after the 500 ms safety net.
    let t = Instant::now();
    tx.send(()).unwrap();
    loop {
        match peer.next() {
            BackendMsg::Demand => break,
            BackendMsg::Charge { .. } => continue,
            m => panic!("expected Demand, got {m:?}"),
        }
    }
    assert!(t.elapsed() < Duration::from_millis(300), "the backend asked again only after {:?}", t.elapsed());
    peer.send(&DaemonMsg::Grant { grant: 3, slice_us: 10_000_000, contended: true });
    worker.join().unwrap();
}

#[test]
fn an_idle_vm_alone_on_the_gpu_keeps_its_grant_until_someone_else_wants_it() {
    let path = socket_path("park");
    let listener = UnixListener::bind(&path).unwrap();
    let link = DaemonLink::start(registration(path), Arc::new(Counters::default()));
    let (mut peer, _) = Peer::accept(&listener, settings(4));
    wait_connected(&link);
    let mut gate = link.gate();
    let (tx, rx) = mpsc::channel::<()>();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let worker = std::thread::spawn(move || {
        let (mut e, ctx, s, f) = sim();
        // Requests of one kernel and a synchronize, the queue empty between.
        for _ in 0..3 {
            rx.recv().unwrap();
            spin(&mut gate, &mut e, ctx, s, f, 1000);
            e.stream_synchronize(s).unwrap();
            gate.idle(&mut e);
            done_tx.send(()).unwrap();
        }
    });
    tx.send(()).unwrap();
    assert_eq!(peer.next(), BackendMsg::Demand);
    peer.send(&DaemonMsg::Grant { grant: 1, slice_us: 5_000_000, contended: false });
    done_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    // The second request, 50 ms later, runs under the same grant: no
    // release, no demand. The idle time between is not GPU time.
    std::thread::sleep(Duration::from_millis(50));
    tx.send(()).unwrap();
    done_rx.recv_timeout(Duration::from_secs(5)).expect("the parked grant was not used");
    peer.reader.get_ref().set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    match read_msg::<_, BackendMsg>(&mut peer.reader) {
        Err(_) | Ok(BackendMsg::Stats(_)) => {}
        Ok(m) => panic!("an idle VM alone on the GPU sent {m:?}"),
    }
    peer.reader.get_ref().set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // Another VM wants the GPU: the idle VM gives the grant back at once.
    peer.send(&DaemonMsg::Revoke { grant: 1 });
    assert_eq!(peer.next(), BackendMsg::Release { grant: 1, gpu_ns: 0, ops: 0, more: false });
    // Its next request reports the GPU time the grant's work took and asks anew.
    tx.send(()).unwrap();
    match peer.next() {
        // Two 1 ms kernels, not the 50 ms between them.
        BackendMsg::Charge { gpu_ns } => assert!((1_500_000..20_000_000).contains(&gpu_ns), "charged {gpu_ns}"),
        m => panic!("expected the parked grant's GPU time, got {m:?}"),
    }
    assert_eq!(peer.next(), BackendMsg::Demand);
    peer.send(&DaemonMsg::Grant { grant: 2, slice_us: 5_000_000, contended: true });
    done_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    // A contended grant is not parked.
    assert!(matches!(peer.next(), BackendMsg::Release { grant: 2, more: false, .. }));
    worker.join().unwrap();
}
