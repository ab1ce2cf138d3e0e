//! The backend's heartbeat (`CAPSET_F_HEARTBEAT`), against real sim
//! backends through the direct transport: a call waiting on a kernel that
//! runs longer than the heartbeat timeout still succeeds (the beat moves
//! while the backend works), and a call waiting on a backend that is
//! stopped (SIGSTOP) fails within the timeout and a little more, with its
//! error sticky, rather than waiting for ever; `--heartbeat-ms 0` advertises
//! no heartbeat. Needs GPUVISOR_BACKEND_BIN; without it the tests skip.

#[path = "support/backend.rs"]
mod backend;
#[path = "support/sessions.rs"]
mod sessions;

use backend::GpuvisorBackend;
use protocol::cuda::*;
use sessions::*;
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_millis(1500);

fn session(b: &GpuvisorBackend) -> Session {
    let mut s = Session::open(transport(b.path()));
    assert!(s.c.has_heartbeat(), "the backend advertises its heartbeat by default");
    s.c.set_heartbeat_timeout(TIMEOUT);
    s
}

#[test]
fn a_kernel_longer_than_the_heartbeat_timeout_still_succeeds() {
    let Some(b) = GpuvisorBackend::spawn("heartbeat-long") else { return };
    let s = session(&b);
    let spin = s.function(s.module(KERNELS), "gv_spin_us");
    s.launch(spin, 1, 1, &u64_param(3 * TIMEOUT.as_micros() as u64)).unwrap();
    let t = Instant::now();
    assert_eq!(s.sync(), Ok(()), "a long kernel is work, not a frozen backend");
    assert!(t.elapsed() >= TIMEOUT * 2, "the kernel ran only {:?}", t.elapsed());
}

#[test]
fn a_call_waiting_on_a_stopped_backend_fails_instead_of_hanging() {
    let Some(b) = GpuvisorBackend::spawn("heartbeat-stop") else { return };
    let s = session(&b);
    let spin = s.function(s.module(KERNELS), "gv_spin_us");
    assert_eq!(s.sync(), Ok(()));
    let child = b.serving_child(None, Duration::from_secs(10)).expect("a serving child");
    s.launch(spin, 1, 1, &u64_param(500_000)).unwrap();
    // SAFETY: stops the backend's own child (continued below).
    unsafe { libc::kill(child as i32, libc::SIGSTOP) };
    let t = Instant::now();
    let r = s.sync();
    let waited = t.elapsed();
    // SAFETY: continues it, so that it ends with the test.
    unsafe { libc::kill(child as i32, libc::SIGCONT) };
    assert_eq!(r, Err(CUDA_ERROR_UNKNOWN), "a call waiting on a frozen backend");
    assert!(waited >= TIMEOUT, "failed after {waited:?}, before the timeout");
    assert!(waited < TIMEOUT + Duration::from_secs(2), "failed only after {waited:?}");
    eprintln!("the call failed {waited:?} after the backend stopped (timeout {TIMEOUT:?})");
    assert_eq!(s.alloc(16), Err(CUDA_ERROR_UNKNOWN), "the error is sticky");
}

#[test]
fn without_a_heartbeat_the_capset_says_so() {
    let Some(b) = GpuvisorBackend::spawn_with("heartbeat-off", &["--heartbeat-ms", "0"]) else { return };
    let s = Session::open(transport(b.path()));
    assert!(!s.c.has_heartbeat());
    assert_eq!(s.sync(), Ok(()));
}
