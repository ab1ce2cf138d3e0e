//! vhost-user reconnection (issue 8), against real sim backends under their
//! supervisor, through the direct transport and the guest driver's own
//! session code: when a VM's serving backend is killed (SIGKILL) or ends on
//! a GPU fault, the supervisor starts a new one on the same connection; the
//! guest processes that had a session get an error for their call in
//! flight within a second and for every later call at once (709 after a
//! kill, the fault's own error after a fault), rather than hanging; the next
//! process works and never sees the old session's data; another VM's
//! backend runs checked kernels throughout without one error.
//! Needs GPUVISOR_BACKEND_BIN; without it the tests skip.

#[path = "support/backend.rs"]
mod backend;
#[path = "support/sessions.rs"]
mod sessions;

use backend::GpuvisorBackend;
use protocol::cuda::*;
use sessions::*;
use std::time::{Duration, Instant};

/// What the old session leaves in its device memory.
const SECRET: u32 = 0x5ec2_e7ab;

/// A new guest process's session on `t`: its fresh allocation holds zeros,
/// not an old session's words, and its checked kernels pass.
fn new_session_works(name: &str, t: ::cuda::transport::direct::DirectTransport) {
    let s = Session::open(t);
    let fill = s.function(s.module(KERNELS), "gv_fill_u32");
    let buf = s.alloc(WORDS * 4).unwrap_or_else(|e| panic!("{name}: allocation failed with {e}"));
    let fresh = s.read(buf, WORDS * 4).expect("reading a fresh allocation");
    assert!(fresh.iter().all(|&b| b == 0), "{name}: a new session's allocation holds old data");
    for value in [1u32, 0xdead_beef, SECRET ^ 1] {
        s.launch(fill, (WORDS / 256) as u32, 256, &fill_params(buf, value, WORDS)).expect("launch");
        let words = s.read(buf, WORDS * 4).expect("read back");
        assert!(
            words.chunks_exact(4).all(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]) == value),
            "{name}: the checked kernel's words are wrong"
        );
    }
    assert_eq!(s.sync(), Ok(()), "{name}");
}

#[test]
fn a_program_mid_run_when_its_backend_is_killed_gets_709_and_the_next_program_works() {
    let Some(vm) = GpuvisorBackend::spawn("reconnect-kill") else { return };
    let Some(other) = GpuvisorBackend::spawn("reconnect-kill-other") else { return };
    let steady = Steady::start(other.path());
    let t = transport(vm.path());
    // A guest process that opened the render node before the kill but
    // starts its session after it.
    let spare = t.new_context().expect("a second context");
    let old = Session::open(t);
    let spin = old.function(old.module(KERNELS), "gv_spin_us");
    let fill = old.function(old.module(KERNELS), "gv_fill_u32");
    let secret = old.alloc(WORDS * 4).expect("alloc");
    old.launch(fill, (WORDS / 256) as u32, 256, &fill_params(secret, SECRET, WORDS)).unwrap();
    assert_eq!(old.sync(), Ok(()));

    // Mid-run: a two-second kernel, and a synchronize waiting for it when
    // the serving backend is killed.
    old.launch(spin, 1, 1, &u64_param(2_000_000)).unwrap();
    let (result, after_kill) = std::thread::scope(|sc| {
        let waiter = sc.spawn(|| old.sync());
        std::thread::sleep(Duration::from_millis(200));
        vm.kill_serving_child();
        let killed = Instant::now();
        let r = waiter.join().unwrap();
        (r, killed.elapsed())
    });
    assert_eq!(result, Err(CUDA_ERROR_CONTEXT_IS_DESTROYED), "the call in flight");
    assert!(after_kill < Duration::from_secs(1), "the call in flight was answered {after_kill:?} after the kill");
    eprintln!("the call in flight failed {after_kill:?} after the kill");
    // Every later call of that process fails at once, with the same error.
    let t0 = Instant::now();
    assert_eq!(old.alloc(4096), Err(CUDA_ERROR_CONTEXT_IS_DESTROYED));
    assert_eq!(old.launch(spin, 1, 1, &u64_param(1)), Err(CUDA_ERROR_CONTEXT_IS_DESTROYED));
    assert_eq!(old.sync(), Err(CUDA_ERROR_CONTEXT_IS_DESTROYED));
    assert_eq!(old.read(secret, 16), Err(CUDA_ERROR_CONTEXT_IS_DESTROYED));
    assert!(t0.elapsed() < Duration::from_millis(100), "later calls took {:?}", t0.elapsed());

    // The next programs: one on the context from before the kill, one on a
    // context created after it (new resources on the new backend).
    let later = spare.new_context().expect("a context after the restart");
    new_session_works("a context from before the restart", spare);
    new_session_works("a context created after it", later);

    let (kernels, errors) = steady.finish();
    assert!(kernels > 20, "the other VM ran only {kernels} kernels");
    assert_eq!(errors, 0, "the other VM saw {errors} errors in {kernels} kernels");
}

/// A fault in one guest process of a supervised VM: it gets `code`; the
/// serving backend ends on it and a new one takes over; another process of
/// the VM whose session was open gets `code` too (its session is lost); a
/// new process works; another VM sees no error.
fn after_a_fault_old_sessions_get_its_error_and_new_ones_work(kernel: &str, code: CuResult) {
    let tag = format!("reconnect-fault-{code}");
    let Some(vm) = GpuvisorBackend::spawn(&tag) else { return };
    let Some(other) = GpuvisorBackend::spawn(&format!("{tag}-other")) else { return };
    let steady = Steady::start(other.path());
    let first = vm.serving_child(None, Duration::from_secs(10)).expect("a serving child");
    let ta = transport(vm.path());
    let tb = ta.new_context().expect("a second guest process");
    let spare = ta.new_context().expect("a third");
    let a = Session::open(ta);
    let b = Session::open(tb);
    let fill = b.function(b.module(KERNELS), "gv_fill_u32");
    let bbuf = b.alloc(4096).expect("B allocates");
    b.launch(fill, 1, 256, &fill_params(bbuf, 7, 256)).unwrap();
    assert_eq!(b.sync(), Ok(()));

    let fault = a.function(a.module(FAULTS), kernel);
    a.launch(fault, 1, 1, &u64_param(0)).unwrap();
    assert_eq!(a.sync(), Err(code), "{kernel}: the faulting process");
    let t = Instant::now();
    vm.serving_child(Some(first), Duration::from_secs(5)).expect("a new serving child after the fault");
    eprintln!("{kernel}: a new serving child {:?} after the fault was answered", t.elapsed());
    assert_eq!(a.alloc(4096), Err(code), "{kernel}: sticky in the faulting process");
    // B's session went with the process that faulted.
    let t = Instant::now();
    assert_eq!(b.sync(), Err(code), "{kernel}: another process of the VM");
    assert_eq!(b.read(bbuf, 16), Err(code));
    assert!(t.elapsed() < Duration::from_secs(1));
    new_session_works(&format!("{kernel}: a new process"), spare);

    let (kernels, errors) = steady.finish();
    assert!(kernels > 20, "the other VM ran only {kernels} kernels");
    assert_eq!(errors, 0, "the other VM saw {errors} errors in {kernels} kernels");
}

#[test]
fn after_an_illegal_address_old_sessions_get_700_and_a_new_session_works() {
    after_a_fault_old_sessions_get_its_error_and_new_ones_work("gv_fault_illegal_address", CUDA_ERROR_ILLEGAL_ADDRESS);
}

#[test]
fn after_a_trap_old_sessions_get_719_and_a_new_session_works() {
    after_a_fault_old_sessions_get_its_error_and_new_ones_work("gv_fault_trap", CUDA_ERROR_LAUNCH_FAILED);
}
