//! Fault isolation (issue 8), against real sim backends through the direct
//! transport: a kernel fault gives its guest the CUDA error it gets
//! natively, then every call of every session of that VM gets it, and the
//! VM's backend ends with the status that names it (these tests run it
//! with --no-restart, in one process; under its supervisor a new process
//! takes over, see reconnect.rs), while another VM's backend runs kernels
//! on without one error; a kernel that never ends is
//! stopped by `--watchdog-ms` (and only with it) by ending its backend, and
//! the watchdog never ends a VM that gpuvisord keeps waiting for a grant.
//!
//! The sessions here are the guest driver's `Client`s over transports of
//! their own, rather than the process's one session of the CUDA API, so that
//! one test can hold several (two guest processes of one VM, and one of
//! another VM). Needs GPUVISOR_BACKEND_BIN; without it the tests skip.

#[path = "support/backend.rs"]
mod backend;
#[path = "support/sessions.rs"]
mod sessions;

use backend::GpuvisorBackend;
use protocol::control::{read_msg, write_msg, BackendMsg, DaemonMsg, QosClass, VmSettings, CONTROL_VERSION};
use protocol::cuda::*;
use sessions::*;
use std::io::BufReader;
use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant};

/// A fault in one guest process: it and a second process of the same VM
/// get `code`, every later call gets it at once, the VM's backend exits with
/// `status`, and another VM's backend, running checked kernels throughout,
/// sees no error.
fn fault_is_isolated(kernel: &str, code: CuResult, status: i32) {
    let tag = format!("fault-{status}");
    let Some(mut faulty) = GpuvisorBackend::spawn_with(&tag, &["--no-restart"]) else { return };
    let Some(other) = GpuvisorBackend::spawn(&format!("{tag}-other")) else { return };
    let steady = Steady::start(other.path());

    let ta = transport(faulty.path());
    let tb = ta.new_context().expect("a second guest process of the same VM");
    let a = Session::open(ta);
    let b = Session::open(tb);
    let spin = a.function(a.module(KERNELS), "gv_spin_us");
    let fault = a.function(a.module(FAULTS), kernel);
    // B works before the fault.
    let fill = b.function(b.module(KERNELS), "gv_fill_u32");
    let bbuf = b.alloc(4096).expect("B allocates");
    b.launch(fill, 1, 256, &fill_params(bbuf, 7, 256)).unwrap();
    assert_eq!(b.sync(), Ok(()));

    // A: work ahead of the faulting kernel, so that B's call arrives while
    // A's synchronize runs; the launch itself returns, as natively.
    a.launch(spin, 1, 1, &u64_param(600_000)).unwrap();
    assert_eq!(a.launch(fault, 1, 1, &u64_param(0)), Ok(()), "{kernel}: the launch is asynchronous");
    std::thread::scope(|sc| {
        let waiter = sc.spawn(|| a.sync());
        std::thread::sleep(Duration::from_millis(150));
        assert_eq!(b.sync(), Err(code), "{kernel}: another process of the faulted VM gets the error");
        assert_eq!(waiter.join().unwrap(), Err(code), "{kernel}: the faulting process's synchronize");
    });
    // Sticky in both processes, answered by the guest driver itself.
    assert_eq!(a.alloc(4096), Err(code));
    assert_eq!(a.launch(spin, 1, 1, &u64_param(1)), Err(code));
    assert_eq!(a.sync(), Err(code));
    assert_eq!(b.read(bbuf, 16), Err(code));

    let ended = faulty.exit_within(Duration::from_secs(10)).expect("the faulted VM's backend exits");
    assert_eq!(ended.code(), Some(status), "{kernel}: {ended}");
    // The other VM ran on throughout, and still does.
    std::thread::sleep(Duration::from_millis(200));
    let (kernels, errors) = steady.finish();
    assert!(kernels > 20, "the other VM ran only {kernels} kernels");
    assert_eq!(errors, 0, "the other VM saw {errors} errors in {kernels} kernels");
}

#[test]
fn an_illegal_address_fails_its_vm_with_700_and_ends_its_backend_with_80() {
    fault_is_isolated("gv_fault_illegal_address", CUDA_ERROR_ILLEGAL_ADDRESS, 80);
}

#[test]
fn a_trap_fails_its_vm_with_719_and_ends_its_backend_with_81() {
    fault_is_isolated("gv_fault_trap", CUDA_ERROR_LAUNCH_FAILED, 81);
}

/// Launches gv_spin_forever and waits for it in another thread, which takes
/// the session: what the wait returned, once it returns.
fn spin_forever(s: Session) -> std::thread::JoinHandle<Result<(), CuResult>> {
    let forever = s.function(s.module(FAULTS), "gv_spin_forever");
    let flag = s.alloc(4).expect("the flag");
    s.launch(forever, 1, 1, &u64_param(flag)).unwrap();
    std::thread::spawn(move || s.sync())
}

#[test]
fn the_watchdog_ends_a_kernel_that_never_ends_and_only_its_backend() {
    let Some(mut watched) = GpuvisorBackend::spawn_with("watchdog", &["--no-restart", "--watchdog-ms", "500"]) else {
        return;
    };
    let Some(other) = GpuvisorBackend::spawn("watchdog-other") else { return };
    let steady = Steady::start(other.path());
    let s = Session::open(transport(watched.path()));
    let spin = s.function(s.module(KERNELS), "gv_spin_us");
    // Legitimate work does not fire it: a second of 100 ms kernels queued at
    // once (progress with each), and a second idle.
    for _ in 0..10 {
        s.launch(spin, 1, 1, &u64_param(100_000)).unwrap();
    }
    assert_eq!(s.sync(), Ok(()));
    std::thread::sleep(Duration::from_millis(1000));
    assert!(watched.running(), "the watchdog ended a VM with only short kernels, or an idle one");

    let started = Instant::now();
    let waiter = spin_forever(s);
    let ended = watched.exit_within(Duration::from_secs(10)).expect("the watchdog ends the backend");
    let after = started.elapsed();
    assert_eq!(ended.code(), Some(82), "{ended}");
    assert!(after >= Duration::from_millis(450), "ended after {after:?}, before the limit");
    let r = waiter.join().unwrap();
    assert_eq!(r, Err(CUDA_ERROR_LAUNCH_TIMEOUT), "the guest's synchronize, as under a display watchdog");
    let (kernels, errors) = steady.finish();
    assert!(kernels > 20, "the other VM ran only {kernels} kernels");
    assert_eq!(errors, 0);
}

#[test]
fn without_the_watchdog_a_kernel_that_never_ends_keeps_its_backend() {
    let Some(mut b) = GpuvisorBackend::spawn("no-watchdog") else { return };
    let s = Session::open(transport(b.path()));
    let waiter = spin_forever(s);
    assert_eq!(b.exit_within(Duration::from_secs(2)), None, "no watchdog: the backend waits for the kernel");
    assert!(!waiter.is_finished(), "the guest still waits for its kernel");
    drop(b);
    let r = waiter.join().unwrap();
    assert!(r.is_err(), "the guest's wait ends with its backend");
}

/// The settings a scripted gpuvisord gives.
fn settings() -> VmSettings {
    VmSettings {
        class: QosClass::Burstable,
        weight: 1,
        priority: 0,
        slice_us: 1_000_000,
        max_queued_ops: 16,
        drained: false,
    }
}

#[test]
fn the_watchdog_never_ends_a_vm_waiting_for_its_grant() {
    let dir = std::env::temp_dir().join(format!("gv-fault-daemon-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("d.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let daemon_arg = sock.to_str().unwrap().to_string();
    let Some(mut b) = GpuvisorBackend::spawn_with("descheduled", &["--watchdog-ms", "300", "--daemon", &daemon_arg])
    else {
        return;
    };
    // gpuvisord, scripted: it keeps the VM's first grant away for five
    // watchdog limits (another VM holds the GPU), then grants every demand.
    const HOLD: Duration = Duration::from_millis(1500);
    let daemon = std::thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(conn.try_clone().unwrap());
        let mut writer = conn;
        let hello: BackendMsg = read_msg(&mut reader).unwrap();
        assert!(matches!(hello, BackendMsg::Hello { .. }), "{hello:?}");
        let welcome = DaemonMsg::Welcome { version: CONTROL_VERSION, settings: settings(), mem_limit_bytes: None };
        write_msg(&mut writer, &welcome).unwrap();
        let mut grants = 0u64;
        let mut first_demand = None;
        while let Ok(msg) = read_msg::<_, BackendMsg>(&mut reader) {
            if let BackendMsg::Demand = msg {
                if grants == 0 {
                    first_demand.get_or_insert(Instant::now());
                    std::thread::sleep(HOLD);
                }
                grants += 1;
                let g = DaemonMsg::Grant { grant: grants, slice_us: 1_000_000, contended: false };
                if write_msg(&mut writer, &g).is_err() {
                    break;
                }
            }
        }
        first_demand
    });
    let s = Session::open(transport(b.path()));
    let spin = s.function(s.module(KERNELS), "gv_spin_us");
    let t = Instant::now();
    s.launch(spin, 1, 1, &u64_param(1000)).unwrap();
    assert_eq!(s.sync(), Ok(()), "the kernel ran once granted");
    let waited = t.elapsed();
    assert!(waited >= HOLD - Duration::from_millis(100), "the VM was not kept waiting ({waited:?})");
    assert!(b.running(), "the watchdog ended a VM that was waiting for its grant");
    drop(s);
    drop(b);
    assert!(daemon.join().unwrap().is_some(), "the backend asked the scripted daemon for a grant");
    let _ = std::fs::remove_dir_all(&dir);
}
