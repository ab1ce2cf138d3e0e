//! A backend under its seccomp filter (`--seccomp enforce`, the sim
//! engine's list) serves a guest process: context, module, allocation,
//! kernel launches, copies, and the process's teardown, with the filter in
//! force in the backend throughout. Against a sim backend through the
//! direct transport; the process that serves is the supervisor's child,
//! the same one throughout.
//!
//! One test: the driver's session is per process.

#[path = "support/backend.rs"]
#[allow(dead_code)] // spawn: the test names its --seccomp mode
mod backend;
#[path = "support/kernels.rs"]
mod kernels;

use backend::GpuvisorBackend;
use cuda::api::types::*;
use cuda::api::{context::*, copy::*, launch::*, memory::*, module::*, stream::*};
use protocol::cuda::*;
use std::ffi::{c_uint, c_void};
use std::ptr::null_mut;

const N: c_uint = 4096;

fn ok(r: CUresult) {
    assert_eq!(r, CUDA_SUCCESS, "{}", protocol::cuda::error_name(r).unwrap_or("?"));
}

/// The `Seccomp:` line of the process's status: 2 is filter mode.
fn seccomp_mode(pid: u32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the backend's /proc status");
    status.lines().find_map(|l| l.strip_prefix("Seccomp:")).map(|v| v.trim().to_string()).unwrap_or_default()
}

#[test]
fn a_backend_under_its_seccomp_filter_serves_a_guest_process() {
    let Some(mut b) = GpuvisorBackend::spawn_with("sandboxed", &["--seccomp", "enforce"]) else { return };
    let serving;
    // SAFETY: the calls follow the CUDA API; every pointer passed is valid.
    unsafe {
        let (ctx, m) = kernels::primary_with_kernels(b.path());
        serving = b.serving_child(None, std::time::Duration::from_secs(10)).expect("a serving child");
        assert_eq!(seccomp_mode(serving), "2", "the backend runs under a seccomp filter");
        let mut fill: CUfunction = null_mut();
        ok(cuModuleGetFunction(&mut fill, m, c"gv_fill_u32".as_ptr()));
        let mut d: CUdeviceptr = 0;
        ok(cuMemAlloc_v2(&mut d, N as usize * 4));
        let mut s: CUstream = null_mut();
        ok(cuStreamCreate(&mut s, 1));
        for value in [7 as c_uint, 0xdead_beef] {
            let (mut dd, mut v, mut n) = (d, value, N);
            let mut args =
                [&mut dd as *mut _ as *mut c_void, &mut v as *mut _ as *mut c_void, &mut n as *mut _ as *mut c_void];
            ok(cuLaunchKernel(fill, N / 256, 1, 1, 256, 1, 1, 0, s, args.as_mut_ptr(), null_mut()));
            ok(cuStreamSynchronize(s));
            let mut back = vec![0u32; N as usize];
            ok(cuMemcpyDtoH_v2(back.as_mut_ptr() as *mut c_void, d, N as usize * 4));
            assert!(back.iter().all(|&x| x == value), "the kernel filled {value:#x}");
        }
        let host: Vec<u32> = (0..N).collect();
        ok(cuMemcpyHtoD_v2(d, host.as_ptr() as *const c_void, N as usize * 4));
        let mut back = vec![0u32; N as usize];
        ok(cuMemcpyDtoH_v2(back.as_mut_ptr() as *mut c_void, d, N as usize * 4));
        assert_eq!(back, host);
        ok(cuMemFree_v2(d));
        ok(cuStreamDestroy_v2(s));
        ok(cuModuleUnload(m));
        ok(cuDevicePrimaryCtxRelease_v2(0));
        let _ = ctx;
    }
    assert!(b.running(), "the backend is alive after serving under the filter");
    assert_eq!(b.serving_child(None, std::time::Duration::from_secs(1)), Some(serving), "the same child served");
    assert_eq!(seccomp_mode(serving), "2");
}
