//! A library whose image has nothing for this device loads, as natively
//! under lazy loading, and fails only where a kernel is needed. The CUDA
//! runtime inside cuBLAS loads every fatbin of cuBLASLt as a library, and
//! most hold kernels for other GPU generations only; refusing those loads
//! made cublasCreate fail with CUBLAS_STATUS_NOT_INITIALIZED. Against a sim
//! backend (compute capability 9.0) through the direct transport.
//!
//! One test: the driver's session is per process.

#[path = "support/backend.rs"]
mod backend;
#[path = "support/fatbin.rs"]
mod fatbin;

use backend::GpuvisorBackend;
use cuda::api::types::*;
use cuda::api::{context::*, device::*, module::*};
use protocol::cuda::*;
use std::ffi::c_void;

#[test]
fn a_library_with_nothing_for_this_device_loads_and_fails_where_a_kernel_is_needed() {
    let Some(b) = GpuvisorBackend::spawn("library-without-binary") else { return };
    std::env::set_var("GPUVISOR_TRANSPORT", format!("direct:{}", b.path()));
    std::env::set_var("GPUVISOR_DIRECT_MEM_MIB", "64");
    // One cubin for sm_100, as most of cuBLASLt's containers hold.
    let image = fatbin::fatbin(&[(2, 100, b"\x7fELF not for this device")]);
    let null = std::ptr::null_mut();
    // SAFETY: the calls follow the CUDA API; every pointer passed is valid.
    unsafe {
        assert_eq!(cuInit(0), CUDA_SUCCESS);
        let mut lib: CUlibrary = null as _;
        let loaded =
            cuLibraryLoadData(&mut lib, image.as_ptr() as *const c_void, null as _, null, 0, null as _, null, 0);
        assert_eq!(loaded, CUDA_SUCCESS, "loaded lazily, as natively");
        let mut k: CUkernel = null as _;
        assert_eq!(cuLibraryGetKernel(&mut k, lib, c"sm100_gemm".as_ptr()), CUDA_SUCCESS);

        let mut ctx: CUcontext = null as _;
        assert_eq!(cuDevicePrimaryCtxRetain(&mut ctx, 0), CUDA_SUCCESS);
        assert_eq!(cuCtxSetCurrent(ctx), CUDA_SUCCESS);
        let mut f: CUfunction = null as _;
        assert_eq!(cuKernelGetFunction(&mut f, k), CUDA_ERROR_NO_BINARY_FOR_GPU, "the use fails");
        let mut m: CUmodule = null as _;
        assert_eq!(cuLibraryGetModule(&mut m, lib), CUDA_ERROR_NO_BINARY_FOR_GPU);
        // The module API loads eagerly, natively too.
        assert_eq!(cuModuleLoadData(&mut m, image.as_ptr() as *const c_void), CUDA_ERROR_NO_BINARY_FOR_GPU);
        assert_eq!(cuLibraryUnload(lib), CUDA_SUCCESS);
        assert_eq!(cuDevicePrimaryCtxRelease_v2(0), CUDA_SUCCESS);
    }
}
