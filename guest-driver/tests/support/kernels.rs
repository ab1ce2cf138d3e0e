//! The start most driver-level tests share: this process's driver session
//! on a sim backend through the direct transport, the primary context
//! current, and guest-tests/kernels.ptx loaded.

use cuda::api::types::*;
use cuda::api::{context::*, device::*, module::*};
use protocol::cuda::*;
use std::ffi::c_void;
use std::ptr::null_mut;

/// Points the driver at the backend listening on `socket`, makes the
/// primary context current and loads the test kernels: the context and
/// their module.
///
/// # Safety
/// Call once per process, before any other driver call (the session is
/// per process).
pub unsafe fn primary_with_kernels(socket: &str) -> (CUcontext, CUmodule) {
    std::env::set_var("GPUVISOR_TRANSPORT", format!("direct:{socket}"));
    std::env::set_var("GPUVISOR_DIRECT_MEM_MIB", "64");
    let mut ptx = include_bytes!("../../../guest-tests/kernels.ptx").to_vec();
    ptx.push(0);
    // SAFETY: the calls follow the CUDA API; every pointer passed is valid.
    unsafe {
        assert_eq!(cuInit(0), CUDA_SUCCESS);
        let mut ctx: CUcontext = null_mut();
        assert_eq!(cuDevicePrimaryCtxRetain(&mut ctx, 0), CUDA_SUCCESS);
        assert_eq!(cuCtxSetCurrent(ctx), CUDA_SUCCESS);
        let mut m: CUmodule = null_mut();
        assert_eq!(cuModuleLoadData(&mut m, ptx.as_ptr() as *const c_void), CUDA_SUCCESS);
        (ctx, m)
    }
}
