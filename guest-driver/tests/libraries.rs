//! Libraries (cuLibrary*) are context-independent, as the CUDA runtime
//! relies on: it loads a program's fatbins once as libraries and launches
//! their kernels in whatever context is current, also after
//! cudaDeviceReset. Against a sim backend through the direct transport.
//!
//! One test: the driver's session is per process.

#[path = "support/backend.rs"]
mod backend;

use backend::GpuvisorBackend;
use cuda::api::types::*;
use cuda::api::{context::*, copy::*, device::*, launch::*, memory::*, module::*};
use protocol::cuda::*;
use std::ffi::{c_uint, c_void};

/// Fills `n` words at a fresh allocation of the current context with
/// `value` by launching `f` (a function or a kernel), and reads them back.
///
/// # Safety
/// A context is current; `f` is gv_fill_u32 or a kernel of it.
unsafe fn fill_with(f: CUfunction, value: c_uint) -> Result<Vec<u32>, CUresult> {
    let n: u64 = 1024;
    let mut dptr: CUdeviceptr = 0;
    let check = |r: CUresult| if r == CUDA_SUCCESS { Ok(()) } else { Err(r) };
    // SAFETY: valid outputs and argument pointers for each call.
    unsafe {
        check(cuMemAlloc_v2(&mut dptr, n as usize * 4))?;
        let mut args =
            [&mut dptr as *mut _ as *mut c_void, &value as *const _ as *mut c_void, &n as *const _ as *mut c_void];
        check(cuLaunchKernel(f, 8, 1, 1, 128, 1, 1, 0, std::ptr::null_mut(), args.as_mut_ptr(), std::ptr::null_mut()))?;
        let mut host = vec![0u32; n as usize];
        check(cuMemcpyDtoH_v2(host.as_mut_ptr() as *mut c_void, dptr, n as usize * 4))?;
        check(cuMemFree_v2(dptr))?;
        Ok(host)
    }
}

#[test]
fn a_library_kernel_runs_in_every_context_and_outlives_a_primary_context_reset() {
    let Some(b) = GpuvisorBackend::spawn("libraries") else { return };
    std::env::set_var("GPUVISOR_TRANSPORT", format!("direct:{}", b.path()));
    std::env::set_var("GPUVISOR_DIRECT_MEM_MIB", "64");
    let mut ptx = include_bytes!("../../guest-tests/kernels.ptx").to_vec();
    ptx.push(0);
    let null = std::ptr::null_mut();
    // SAFETY: the calls follow the CUDA API; every pointer passed is valid.
    unsafe {
        assert_eq!(cuInit(0), CUDA_SUCCESS);
        // Loaded before any context is current, as the runtime does.
        let mut lib: CUlibrary = null as _;
        let loaded = cuLibraryLoadData(&mut lib, ptx.as_ptr() as *const c_void, null as _, null, 0, null as _, null, 0);
        assert_eq!(loaded, CUDA_SUCCESS);
        let (mut k, mut again): (CUkernel, CUkernel) = (null as _, null as _);
        assert_eq!(cuLibraryGetKernel(&mut k, lib, c"gv_fill_u32".as_ptr()), CUDA_SUCCESS);
        assert_eq!(cuLibraryGetKernel(&mut again, lib, c"gv_fill_u32".as_ptr()), CUDA_SUCCESS);
        assert_eq!(k, again, "one handle per kernel");
        assert_eq!(cuLibraryGetKernel(&mut again, lib, c"no_such_kernel".as_ptr()), CUDA_ERROR_NOT_FOUND);

        let mut primary: CUcontext = null as _;
        assert_eq!(cuDevicePrimaryCtxRetain(&mut primary, 0), CUDA_SUCCESS);
        assert_eq!(cuCtxSetCurrent(primary), CUDA_SUCCESS);
        assert_eq!(fill_with(k as CUfunction, 11), Ok(vec![11; 1024]), "the kernel launched as a function");
        let mut in_primary: CUfunction = null as _;
        assert_eq!(cuKernelGetFunction(&mut in_primary, k), CUDA_SUCCESS);

        // Another context gets its own module and function.
        let mut created: CUcontext = null as _;
        assert_eq!(cuCtxCreate_v2(&mut created, 0, 0), CUDA_SUCCESS);
        assert_eq!(fill_with(k as CUfunction, 22), Ok(vec![22; 1024]), "in a created context");
        let mut in_created: CUfunction = null as _;
        assert_eq!(cuKernelGetFunction(&mut in_created, k), CUDA_SUCCESS);
        assert_ne!(in_created, in_primary);
        assert_eq!(fill_with(in_created, 33), Ok(vec![33; 1024]), "through the context's function");
        assert_eq!(cuCtxDestroy_v2(created), CUDA_SUCCESS);

        // A reset ends the primary context's module, not the library.
        assert_eq!(cuCtxSetCurrent(primary), CUDA_SUCCESS);
        assert_eq!(cuDevicePrimaryCtxReset(0), CUDA_SUCCESS);
        assert_eq!(fill_with(in_primary, 44), Err(CUDA_ERROR_INVALID_HANDLE), "the old function is gone");
        assert_eq!(fill_with(k as CUfunction, 55), Ok(vec![55; 1024]), "the kernel runs after the reset");

        assert_eq!(cuLibraryUnload(lib), CUDA_SUCCESS);
        assert_eq!(fill_with(k as CUfunction, 66), Err(CUDA_ERROR_INVALID_HANDLE), "unloaded");
    }
}
