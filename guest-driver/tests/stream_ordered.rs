//! Stream-ordered allocation through the guest driver, against a sim
//! backend with a 64 MiB quota: cuMemAllocAsync and cuMemFreeAsync in
//! stream order, reuse across streams after the free, the default and
//! created pools, their attributes, release at synchronization and trim,
//! and the quota on every byte a pool holds.
//!
//! One test: the driver's session is per process.

#[path = "support/backend.rs"]
#[allow(dead_code)] // spawn: these tests all need a quota
mod backend;

use backend::GpuvisorBackend;
use cuda::api::stream_alloc::*;
use cuda::api::types::*;
use cuda::api::{context::*, copy::*, device::*, event::*, launch::*, memory::*, module::*, stream::*};
use protocol::cuda::*;
use std::ffi::{c_int, c_void};
use std::ptr::null_mut;

const MIB: usize = 1 << 20;
const G: u64 = 2 << 20;

macro_rules! ok {
    ($e:expr) => {
        assert_eq!($e, CUDA_SUCCESS, "{}", stringify!($e))
    };
}

fn pool_u64(pool: CUmemoryPool, attr: c_int) -> u64 {
    let mut v = 0u64;
    // SAFETY: a u64 attribute into a u64.
    ok!(unsafe { cuMemPoolGetAttribute(pool, attr, &mut v as *mut u64 as *mut c_void) });
    v
}

fn set_pool_u64(pool: CUmemoryPool, attr: c_int, mut v: u64) -> CUresult {
    // SAFETY: a u64 attribute from a u64.
    unsafe { cuMemPoolSetAttribute(pool, attr, &mut v as *mut u64 as *mut c_void) }
}

fn free_mem() -> usize {
    let (mut free, mut total) = (0usize, 0usize);
    // SAFETY: valid outputs.
    ok!(unsafe { cuMemGetInfo_v2(&mut free, &mut total) });
    assert_eq!(total, 64 * MIB);
    free
}

fn read_u32(p: CUdeviceptr) -> u32 {
    let mut v = 0u32;
    // SAFETY: a 4-byte host output.
    ok!(unsafe { cuMemcpyDtoH_v2(&mut v as *mut u32 as *mut c_void, p, 4) });
    v
}

fn props(location: CUmemLocation, handle_types: c_int, max_size: usize) -> CUmemPoolProps {
    CUmemPoolProps {
        allocType: CU_MEM_ALLOCATION_TYPE_PINNED,
        handleTypes: handle_types,
        location,
        win32SecurityAttributes: null_mut(),
        maxSize: max_size,
        usage: 0,
        reserved: [0; 54],
    }
}

const DEVICE0: CUmemLocation = CUmemLocation { type_: CU_MEM_LOCATION_TYPE_DEVICE, id: 0 };

#[test]
fn stream_ordered_allocation_reuses_in_order_releases_at_synchronization_and_keeps_to_the_quota() {
    let Some(b) = GpuvisorBackend::spawn_with("stream_ordered", &["--quota-mib", "64"]) else { return };
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

        // The device says what it offers, and it offers pools.
        let attr = |a: c_int| {
            let mut v = -1;
            ok!(cuDeviceGetAttribute(&mut v, a, 0));
            v
        };
        assert_eq!(attr(115), 1, "MEMORY_POOLS_SUPPORTED");
        assert_eq!(attr(102), 1, "VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED");
        assert_eq!(attr(119), 0, "MEMPOOL_SUPPORTED_HANDLE_TYPES: none leave the VM");

        let mut pool: CUmemoryPool = null_mut();
        ok!(cuDeviceGetDefaultMemPool(&mut pool, 0));
        let mut current: CUmemoryPool = null_mut();
        ok!(cuDeviceGetMemPool(&mut current, 0));
        assert_eq!(current, pool, "the default pool is current");
        let mut loc = DEVICE0;
        ok!(cuMemGetDefaultMemPool(&mut current, &mut loc, CU_MEM_ALLOCATION_TYPE_PINNED));
        assert_eq!(current, pool);
        let mut host = CUmemLocation { type_: CU_MEM_LOCATION_TYPE_HOST, id: 0 };
        assert_eq!(
            cuMemGetDefaultMemPool(&mut current, &mut host, CU_MEM_ALLOCATION_TYPE_PINNED),
            CUDA_ERROR_NOT_SUPPORTED
        );
        assert_eq!(cuDeviceGetDefaultMemPool(&mut current, 1), CUDA_ERROR_INVALID_DEVICE);
        assert_eq!(pool_u64(pool, CU_MEMPOOL_ATTR_RELEASE_THRESHOLD), 0);

        // Allocation, use and free in one stream; the next allocation of the
        // same size gets the same memory back, in stream order.
        let (mut s1, mut s2): (CUstream, CUstream) = (null_mut(), null_mut());
        ok!(cuStreamCreate(&mut s1, CU_STREAM_NON_BLOCKING));
        ok!(cuStreamCreate(&mut s2, CU_STREAM_NON_BLOCKING));
        let mut a: CUdeviceptr = 0;
        ok!(cuMemAllocAsync(&mut a, MIB, s1));
        assert_ne!(a, 0);
        ok!(cuMemsetD32Async(a, 0x1111_1111, MIB / 4, s1));
        assert_eq!(pool_u64(pool, CU_MEMPOOL_ATTR_USED_MEM_CURRENT), MIB as u64);
        assert_eq!(pool_u64(pool, CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT), G, "whole granules back it");
        ok!(cuStreamSynchronize(s1));
        assert_eq!(read_u32(a + 4096), 0x1111_1111);
        let mut attr_pool: CUmemoryPool = null_mut();
        ok!(cuPointerGetAttribute(&mut attr_pool as *mut _ as *mut c_void, CU_POINTER_ATTRIBUTE_MEMPOOL_HANDLE, a));
        assert_eq!(attr_pool, pool);
        ok!(cuMemFreeAsync(a, s1));
        let mut b2: CUdeviceptr = 0;
        ok!(cuMemAllocAsync(&mut b2, MIB, s1));
        assert_eq!(b2, a, "freed memory is reused by later work of the stream");

        // Reuse on another stream comes after the free on the device: a
        // 50 ms kernel, then the free, on s1; the reuse on idle s2, and an
        // event after it, which is not reached before the kernel ends.
        let mut module: CUmodule = null_mut();
        ok!(cuModuleLoadData(&mut module, ptx.as_ptr() as *const c_void));
        let mut spin: CUfunction = null_mut();
        ok!(cuModuleGetFunction(&mut spin, module, c"gv_spin_us".as_ptr()));
        let mut us: u64 = 50_000;
        let mut args = [&mut us as *mut u64 as *mut c_void];
        ok!(cuLaunchKernel(spin, 1, 1, 1, 1, 1, 1, 0, s1, args.as_mut_ptr(), null_mut()));
        ok!(cuMemFreeAsync(b2, s1));
        let mut c2: CUdeviceptr = 0;
        ok!(cuMemAllocAsync(&mut c2, MIB, s2));
        assert_eq!(c2, a, "reused across streams");
        let mut ev: CUevent = null_mut();
        ok!(cuEventCreate(&mut ev, 0));
        ok!(cuEventRecord(ev, s2));
        assert_eq!(cuEventQuery(ev), CUDA_ERROR_NOT_READY, "the reuse did not wait for the free");
        ok!(cuEventSynchronize(ev));
        // Without internal dependencies the pool takes other memory instead.
        let mut off: c_int = 0;
        ok!(cuMemPoolSetAttribute(
            pool,
            CU_MEMPOOL_ATTR_REUSE_ALLOW_INTERNAL_DEPENDENCIES,
            &mut off as *mut _ as *mut c_void
        ));
        ok!(cuLaunchKernel(spin, 1, 1, 1, 1, 1, 1, 0, s1, args.as_mut_ptr(), null_mut()));
        ok!(cuMemFreeAsync(c2, s1));
        let mut d: CUdeviceptr = 0;
        ok!(cuMemAllocAsync(&mut d, MIB, s2));
        assert_ne!(d, a, "memory freed on a stream not known done");
        let mut on: c_int = 1;
        ok!(cuMemPoolSetAttribute(
            pool,
            CU_MEMPOOL_ATTR_REUSE_ALLOW_INTERNAL_DEPENDENCIES,
            &mut on as *mut _ as *mut c_void
        ));
        ok!(cuMemFreeAsync(d, s2));

        // Threshold 0: at synchronization the pool gives back all it can.
        ok!(cuCtxSynchronize());
        assert_eq!(pool_u64(pool, CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT), 0);
        assert_eq!(pool_u64(pool, CU_MEMPOOL_ATTR_USED_MEM_CURRENT), 0);
        assert_eq!(pool_u64(pool, CU_MEMPOOL_ATTR_USED_MEM_HIGH), MIB as u64, "one allocation at a time");
        assert_eq!(free_mem(), 64 * MIB, "what a pool gave back is free again");
        // Above the threshold it keeps memory until trimmed.
        assert_eq!(set_pool_u64(pool, CU_MEMPOOL_ATTR_RELEASE_THRESHOLD, u64::MAX), CUDA_SUCCESS);
        // Two segments: 4 MiB for the first allocation, 2 more for the
        // second, which runs past it.
        ok!(cuMemAllocAsync(&mut a, 3 * MIB, s1));
        ok!(cuMemAllocAsync(&mut d, 2 * MIB, s1));
        ok!(cuMemFreeAsync(a, s1));
        ok!(cuMemFreeAsync(d, s1));
        ok!(cuStreamSynchronize(s1));
        assert_eq!(pool_u64(pool, CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT), 3 * G, "kept");
        assert_eq!(free_mem(), 64 * MIB - 3 * G as usize, "what a pool keeps is charged");
        ok!(cuMemPoolTrimTo(pool, 2 * G as usize));
        assert_eq!(pool_u64(pool, CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT), 2 * G);
        ok!(cuMemPoolTrimTo(pool, 0));
        assert_eq!(free_mem(), 64 * MIB);
        assert_eq!(set_pool_u64(pool, CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH, 0), CUDA_SUCCESS);
        assert_eq!(pool_u64(pool, CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH), 0, "reset");
        assert_eq!(set_pool_u64(pool, CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH, 5), CUDA_ERROR_INVALID_VALUE);
        assert_eq!(set_pool_u64(pool, CU_MEMPOOL_ATTR_USED_MEM_CURRENT, 0), CUDA_ERROR_INVALID_VALUE, "read-only");

        // The quota: 64 MiB in all, whatever a pool holds.
        let mut held = Vec::new();
        loop {
            let mut p: CUdeviceptr = 0;
            match cuMemAllocAsync(&mut p, 8 * MIB, s1) {
                CUDA_SUCCESS => held.push(p),
                e => {
                    assert_eq!(e, CUDA_ERROR_OUT_OF_MEMORY);
                    break;
                }
            }
        }
        assert_eq!(held.len(), 8, "8 MiB allocations in a 64 MiB quota");
        let mut plain: CUdeviceptr = 0;
        assert_eq!(cuMemAlloc_v2(&mut plain, MIB), CUDA_ERROR_OUT_OF_MEMORY, "the pool holds the quota");
        for p in held {
            ok!(cuMemFreeAsync(p, s1));
        }
        ok!(cuStreamSynchronize(s1));
        assert_eq!(pool_u64(pool, CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT), 64 * MIB as u64, "kept: threshold is max");
        // An allocation that finds the quota full makes the pools give back
        // what nothing uses before it fails.
        ok!(cuMemAlloc_v2(&mut plain, MIB));
        assert_eq!(pool_u64(pool, CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT), 0);
        ok!(cuMemAllocAsync(&mut a, 60 * MIB, s1));
        assert_eq!(cuMemAllocAsync(&mut d, 8 * MIB, s1), CUDA_ERROR_OUT_OF_MEMORY);
        ok!(cuMemFree_v2(plain));
        ok!(cuMemFree_v2(a)); // cuMemFree takes pool memory too
        assert_eq!(set_pool_u64(pool, CU_MEMPOOL_ATTR_RELEASE_THRESHOLD, 0), CUDA_SUCCESS);
        ok!(cuCtxSynchronize());
        assert_eq!(free_mem(), 64 * MIB);

        // A created pool, with a maximum size, made current.
        let mut mine: CUmemoryPool = null_mut();
        let p = props(DEVICE0, CU_MEM_HANDLE_TYPE_NONE, 4 * MIB);
        ok!(cuMemPoolCreate(&mut mine, &p));
        assert_ne!(mine, pool);
        let bad = props(DEVICE0, 1 /* POSIX file descriptor */, 0);
        assert_eq!(cuMemPoolCreate(&mut current, &bad), CUDA_ERROR_NOT_SUPPORTED, "no shareable handles");
        let bad = props(CUmemLocation { type_: CU_MEM_LOCATION_TYPE_HOST, id: 0 }, 0, 0);
        assert_eq!(cuMemPoolCreate(&mut current, &bad), CUDA_ERROR_NOT_SUPPORTED);
        let bad = props(CUmemLocation { type_: CU_MEM_LOCATION_TYPE_DEVICE, id: 3 }, 0, 0);
        assert_eq!(cuMemPoolCreate(&mut current, &bad), CUDA_ERROR_INVALID_DEVICE);
        ok!(cuMemAllocFromPoolAsync(&mut a, 3 * MIB, mine, s1));
        assert_eq!(cuMemAllocFromPoolAsync(&mut d, 2 * MIB, mine, s1), CUDA_ERROR_OUT_OF_MEMORY, "past maxSize");
        ok!(cuDeviceSetMemPool(0, mine));
        ok!(cuMemAllocAsync(&mut d, 4096, s1));
        ok!(cuPointerGetAttribute(&mut attr_pool as *mut _ as *mut c_void, CU_POINTER_ATTRIBUTE_MEMPOOL_HANDLE, d));
        assert_eq!(attr_pool, mine, "cuMemAllocAsync takes the current pool");
        let desc = CUmemAccessDesc { location: DEVICE0, flags: CU_MEM_ACCESS_FLAGS_PROT_READWRITE };
        ok!(cuMemPoolSetAccess(mine, &desc, 1));
        let mut flags: c_int = 0;
        ok!(cuMemPoolGetAccess(&mut flags, mine, &mut loc));
        assert_eq!(flags, CU_MEM_ACCESS_FLAGS_PROT_READWRITE);
        let mut other = CUmemLocation { type_: CU_MEM_LOCATION_TYPE_DEVICE, id: 1 };
        assert_eq!(cuMemPoolGetAccess(&mut flags, mine, &mut other), CUDA_ERROR_INVALID_DEVICE);
        assert_eq!(cuMemPoolDestroy(pool), CUDA_ERROR_INVALID_VALUE, "the default pool stays");
        // Destroyed with allocations out: it ends with the last of them.
        ok!(cuMemPoolDestroy(mine));
        ok!(cuDeviceGetMemPool(&mut current, 0));
        assert_eq!(current, pool, "the default pool is current again");
        assert_eq!(cuMemAllocFromPoolAsync(&mut d, 4096, mine, s1), CUDA_ERROR_INVALID_VALUE);
        ok!(cuMemsetD32Async(a, 5, 16, s1));
        ok!(cuMemFreeAsync(a, s1));
        let mut last: CUdeviceptr = 0;
        ok!(cuMemAllocAsync(&mut last, 4096, s2));
        ok!(cuMemFreeAsync(last, s2));
        ok!(cuMemFreeAsync(d, s1));
        ok!(cuCtxSynchronize());
        assert_eq!(free_mem(), 64 * MIB, "the destroyed pool gave everything back");

        // Calls the driver refuses.
        assert_eq!(cuMemAllocAsync(&mut a, 0, s1), CUDA_ERROR_INVALID_VALUE);
        assert_eq!(cuMemAllocAsync(null_mut(), 64, s1), CUDA_ERROR_INVALID_VALUE);
        assert_eq!(cuMemFreeAsync(0x1234_5000, s1), CUDA_ERROR_INVALID_VALUE, "not an allocation");
        assert_eq!(cuMemFreeAsync(d, s1), CUDA_ERROR_INVALID_VALUE, "freed twice");
        assert_eq!(cuMemAllocFromPoolAsync(&mut a, 64, 0xbad0 as CUmemoryPool, s1), CUDA_ERROR_INVALID_VALUE);
        assert_eq!(cuMemPoolGetAttribute(pool, 99, &mut flags as *mut _ as *mut c_void), CUDA_ERROR_INVALID_VALUE);
        assert_eq!(cuMemAllocAsync(&mut a, 64, 0xbad0 as CUstream), CUDA_ERROR_INVALID_HANDLE);
        ok!(cuCtxSynchronize());
    }
}
