//! A fatbin built for many GPU generations, larger than one command can
//! carry, loads: the guest driver sends only the entries the device can
//! load. Against a sim backend through the direct transport.
//!
//! One test: the driver's session is per process.

#[path = "support/backend.rs"]
mod backend;
#[path = "support/fatbin.rs"]
mod fatbin;

use backend::GpuvisorBackend;
use cuda::api::types::*;
use cuda::api::{context::*, device::*, module::*};
use fatbin::fatbin;
use protocol::cuda::*;
use std::ffi::c_void;

#[test]
fn a_fatbin_larger_than_a_command_loads_with_the_entries_for_this_device() {
    let Some(b) = GpuvisorBackend::spawn("large-fatbin") else { return };
    std::env::set_var("GPUVISOR_TRANSPORT", format!("direct:{}", b.path()));
    std::env::set_var("GPUVISOR_DIRECT_MEM_MIB", "64");
    let mut ptx = include_bytes!("../../guest-tests/kernels.ptx").to_vec();
    ptx.push(0);
    // What other GPU generations would get: 40 MiB that is no use here.
    let other = vec![0x5au8; 40 << 20];
    let null = std::ptr::null_mut();
    // SAFETY: the calls follow the CUDA API; every pointer passed is valid.
    unsafe {
        assert_eq!(cuInit(0), CUDA_SUCCESS);
        let (mut major, mut minor) = (0, 0);
        assert_eq!(cuDeviceComputeCapability(&mut major, &mut minor, 0), CUDA_SUCCESS);
        let arch = (major * 10 + minor) as u32;
        let image = fatbin(&[(2, arch + 100, &other), (1, arch, &ptx)]);
        assert!(image.len() > 32 << 20);
        let mut ctx: CUcontext = null as _;
        assert_eq!(cuDevicePrimaryCtxRetain(&mut ctx, 0), CUDA_SUCCESS);
        assert_eq!(cuCtxSetCurrent(ctx), CUDA_SUCCESS);
        let mut m: CUmodule = null as _;
        assert_eq!(cuModuleLoadData(&mut m, image.as_ptr() as *const c_void), CUDA_SUCCESS);
        let mut f: CUfunction = null as _;
        assert_eq!(cuModuleGetFunction(&mut f, m, c"gv_fill_u32".as_ptr()), CUDA_SUCCESS);
        assert_eq!(cuModuleUnload(m), CUDA_SUCCESS);
        // Nothing in it for this device: NVIDIA's answer, given by the guest
        // driver without sending the image.
        let useless = fatbin(&[(2, arch + 100, &other)]);
        assert_eq!(cuModuleLoadData(&mut m, useless.as_ptr() as *const c_void), CUDA_ERROR_NO_BINARY_FOR_GPU);
        assert_eq!(cuDevicePrimaryCtxRelease_v2(0), CUDA_SUCCESS);
    }
}
