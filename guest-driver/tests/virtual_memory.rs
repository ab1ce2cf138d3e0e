//! The virtual-memory API through the guest driver, against a sim backend
//! with a 64 MiB quota, used the way PyTorch's expandable segments use it:
//! one large reservation, physical allocations mapped into it back to back
//! as the segment grows, access granted, then copies, memsets and kernels
//! over the whole range; and the calls the driver refuses.
//!
//! One test: the driver's session is per process.

#[path = "support/backend.rs"]
#[allow(dead_code)] // spawn: these tests all need a quota
mod backend;

use backend::GpuvisorBackend;
use cuda::api::types::*;
use cuda::api::unsupported::cuMemExportToShareableHandle;
use cuda::api::vmm::*;
use cuda::api::{context::*, copy::*, device::*, launch::*, memory::*, module::*};
use protocol::cuda::*;
use std::ffi::{c_uint, c_ulonglong, c_void};
use std::ptr::null_mut;

const MIB: usize = 1 << 20;
const G: usize = 2 << 20;

macro_rules! ok {
    ($e:expr) => {
        assert_eq!($e, CUDA_SUCCESS, "{}", stringify!($e))
    };
}

fn prop(location: CUmemLocation, handle_types: i32) -> CUmemAllocationProp {
    CUmemAllocationProp {
        type_: CU_MEM_ALLOCATION_TYPE_PINNED,
        requestedHandleTypes: handle_types,
        location,
        win32HandleMetaData: null_mut(),
        compressionType: 0,
        gpuDirectRDMACapable: 0,
        usage: 0,
        reserved: [0; 4],
    }
}

const DEVICE0: CUmemLocation = CUmemLocation { type_: CU_MEM_LOCATION_TYPE_DEVICE, id: 0 };

fn free_mem() -> usize {
    let (mut free, mut total) = (0usize, 0usize);
    // SAFETY: valid outputs.
    ok!(unsafe { cuMemGetInfo_v2(&mut free, &mut total) });
    free
}

fn words(p: CUdeviceptr, n: usize) -> Result<Vec<u32>, CUresult> {
    let mut v = vec![0u32; n];
    // SAFETY: a host output of n words.
    match unsafe { cuMemcpyDtoH_v2(v.as_mut_ptr() as *mut c_void, p, n * 4) } {
        CUDA_SUCCESS => Ok(v),
        e => Err(e),
    }
}

#[test]
fn mapped_memory_grows_a_segment_and_serves_copies_memsets_and_kernels() {
    let Some(b) = GpuvisorBackend::spawn_with("virtual_memory", &["--quota-mib", "64"]) else { return };
    std::env::set_var("GPUVISOR_TRANSPORT", format!("direct:{}", b.path()));
    std::env::set_var("GPUVISOR_DIRECT_MEM_MIB", "64");
    let mut ptx = include_bytes!("../../guest-tests/kernels.ptx").to_vec();
    ptx.push(0);
    // SAFETY: the calls follow the CUDA API; every pointer passed is valid.
    unsafe {
        ok!(cuInit(0));
        let mut ctx: CUcontext = null_mut();
        ok!(cuDevicePrimaryCtxRetain(&mut ctx, 0));
        ok!(cuCtxSetCurrent(ctx));

        let p = prop(DEVICE0, CU_MEM_HANDLE_TYPE_NONE);
        let mut g = 0usize;
        ok!(cuMemGetAllocationGranularity(&mut g, &p, CU_MEM_ALLOC_GRANULARITY_MINIMUM));
        assert_eq!(g, G, "2 MiB, as the cuda engine's");
        ok!(cuMemGetAllocationGranularity(&mut g, &p, CU_MEM_ALLOC_GRANULARITY_RECOMMENDED));
        let fd = prop(DEVICE0, 1 /* POSIX file descriptor */);
        assert_eq!(cuMemGetAllocationGranularity(&mut g, &fd, 0), CUDA_ERROR_NOT_SUPPORTED, "no shareable handles");
        let host = prop(CUmemLocation { type_: CU_MEM_LOCATION_TYPE_HOST, id: 0 }, 0);
        assert_eq!(cuMemGetAllocationGranularity(&mut g, &host, 0), CUDA_ERROR_NOT_SUPPORTED);

        // The segment: addresses for 32 MiB, 4 MiB mapped at a time.
        let mut va: CUdeviceptr = 0;
        ok!(cuMemAddressReserve(&mut va, 32 * MIB, 0, 0, 0));
        assert_eq!(va % G as u64, 0);
        let mut handles = [0 as c_ulonglong; 2];
        for (i, h) in handles.iter_mut().enumerate() {
            ok!(cuMemCreate(h, 4 * MIB, &p, 0));
            ok!(cuMemMap(va + (i * 4 * MIB) as u64, 4 * MIB, 0, *h, 0));
        }
        assert_ne!(handles[0], handles[1]);
        assert_eq!(free_mem(), 56 * MIB, "charged when created");
        // No access yet, as natively: not memory a copy may name.
        assert_eq!(words(va, 1), Err(CUDA_ERROR_INVALID_VALUE));
        let desc = CUmemAccessDesc { location: DEVICE0, flags: CU_MEM_ACCESS_FLAGS_PROT_READWRITE };
        ok!(cuMemSetAccess(va, 8 * MIB, &desc, 1));
        let mut flags: c_ulonglong = 0;
        ok!(cuMemGetAccess(&mut flags, &DEVICE0, va + 5 * MIB as u64));
        assert_eq!(flags, CU_MEM_ACCESS_FLAGS_PROT_READWRITE as c_ulonglong);

        // A memset, a copy and a kernel across the two allocations.
        let seam = va + 4 * MIB as u64;
        ok!(cuMemsetD32_v2(seam - 4096, 0x0f0f_0f0f, 2048));
        assert_eq!(words(seam - 4096, 2048), Ok(vec![0x0f0f_0f0f; 2048]));
        let data: Vec<u32> = (0..4096).collect();
        ok!(cuMemcpyHtoD_v2(seam - 8192, data.as_ptr() as *const c_void, data.len() * 4));
        assert_eq!(words(seam - 8192, 4096), Ok(data));
        let mut module: CUmodule = null_mut();
        ok!(cuModuleLoadData(&mut module, ptx.as_ptr() as *const c_void));
        let mut fill: CUfunction = null_mut();
        ok!(cuModuleGetFunction(&mut fill, module, c"gv_fill_u32".as_ptr()));
        let (mut ptr, mut value, mut n) = (seam - 256, 0xfeed_beef as c_uint, 128u64);
        let mut args = [
            &mut ptr as *mut u64 as *mut c_void,
            &mut value as *mut c_uint as *mut c_void,
            &mut n as *mut u64 as *mut c_void,
        ];
        ok!(cuLaunchKernel(fill, 1, 1, 1, 128, 1, 1, 0, null_mut(), args.as_mut_ptr(), null_mut()));
        assert_eq!(words(seam - 256, 128), Ok(vec![0xfeed_beef; 128]));
        // Past what is mapped is not.
        assert_eq!(words(va + 8 * MIB as u64 - 4, 2), Err(CUDA_ERROR_INVALID_VALUE));

        // What the driver says about the memory.
        let mut kind: c_uint = 0;
        ok!(cuPointerGetAttribute(&mut kind as *mut _ as *mut c_void, CU_POINTER_ATTRIBUTE_MEMORY_TYPE, seam + 8));
        assert_eq!(kind, CU_MEMORYTYPE_DEVICE);
        let (mut base, mut size): (CUdeviceptr, usize) = (0, 0);
        ok!(cuMemGetAddressRange_v2(&mut base, &mut size, seam + 8));
        assert_eq!((base, size), (seam, 4 * MIB), "the mapping");
        let mut again: c_ulonglong = 0;
        ok!(cuMemRetainAllocationHandle(&mut again, (seam + 8) as *mut c_void));
        assert_eq!(again, handles[1]);
        ok!(cuMemRelease(again));
        let mut got = prop(CUmemLocation::default(), 7);
        ok!(cuMemGetAllocationPropertiesFromHandle(&mut got, handles[0]));
        assert_eq!((got.type_, got.location, got.requestedHandleTypes), (CU_MEM_ALLOCATION_TYPE_PINNED, DEVICE0, 0));
        let mut shareable = 0i32;
        assert_eq!(
            cuMemExportToShareableHandle(&mut shareable as *mut i32 as *mut c_void, handles[0], 1, 0),
            CUDA_ERROR_NOT_SUPPORTED,
            "nothing leaves the VM"
        );

        // Calls the driver refuses.
        let mut h: c_ulonglong = 0;
        assert_eq!(cuMemCreate(&mut h, G + 4096, &p, 0), CUDA_ERROR_INVALID_VALUE, "not whole granules");
        assert_eq!(cuMemCreate(&mut h, G, &fd, 0), CUDA_ERROR_NOT_SUPPORTED);
        assert_eq!(cuMemCreate(&mut h, 1 << 40, &p, 0), CUDA_ERROR_OUT_OF_MEMORY, "past the quota");
        assert_eq!(cuMemMap(va, 4 * MIB, 0, handles[0], 0), CUDA_ERROR_INVALID_VALUE, "mapped already");
        assert_eq!(cuMemMap(va + 30 * MIB as u64, 4 * MIB, 0, handles[0], 0), CUDA_ERROR_INVALID_VALUE, "past the end");
        assert_eq!(cuMemMap(va + 8 * MIB as u64, 4 * MIB, G, handles[0], 0), CUDA_ERROR_INVALID_VALUE, "offset");
        assert_eq!(cuMemMap(va + 8 * MIB as u64, 4 * MIB, 0, 0xbad, 0), CUDA_ERROR_INVALID_VALUE, "unknown handle");
        assert_eq!(cuMemUnmap(va, 2 * MIB), CUDA_ERROR_INVALID_VALUE, "part of a mapping");
        assert_eq!(cuMemAddressFree(va, 32 * MIB), CUDA_ERROR_INVALID_VALUE, "still mapped");
        assert_eq!(cuMemRelease(0xbad), CUDA_ERROR_INVALID_VALUE);
        let mut va2: CUdeviceptr = 0;
        assert_eq!(cuMemAddressReserve(&mut va2, G + 1, 0, 0, 0), CUDA_ERROR_INVALID_VALUE);
        assert_eq!(cuMemAddressReserve(&mut va2, G, 3, 0, 0), CUDA_ERROR_INVALID_VALUE, "alignment");

        // The quota: 56 MiB left, in 8 MiB allocations.
        let mut more = Vec::new();
        loop {
            let mut h: c_ulonglong = 0;
            match cuMemCreate(&mut h, 8 * MIB, &p, 0) {
                CUDA_SUCCESS => more.push(h),
                e => {
                    assert_eq!(e, CUDA_ERROR_OUT_OF_MEMORY);
                    break;
                }
            }
        }
        assert_eq!((more.len(), free_mem()), (7, 0));
        for h in more {
            ok!(cuMemRelease(h));
        }

        // Released while mapped, memory lives until unmapped.
        ok!(cuMemRelease(handles[0]));
        ok!(cuMemRelease(handles[1]));
        assert_eq!(words(seam, 1), Ok(vec![0xfeed_beef]));
        assert_eq!(free_mem(), 56 * MIB);
        ok!(cuMemUnmap(va, 8 * MIB));
        assert_eq!(words(seam, 1), Err(CUDA_ERROR_INVALID_VALUE));
        assert_eq!(free_mem(), 64 * MIB);
        ok!(cuMemAddressFree(va, 32 * MIB));
        ok!(cuCtxSynchronize());
    }
}
