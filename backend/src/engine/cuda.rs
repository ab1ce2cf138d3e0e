//! The `cuda` engine: a VM's CUDA work on the host GPU through the driver
//! API (cudarc's raw `sys` bindings, with libcuda loaded at run time). Every
//! guest context is a real `CUcontext`, and guest RAM is registered with the
//! driver so that copies to and from it are DMA with no host copy.

mod graph;

use super::host_swap::{HostCopy, HostStore, SwapConfig, Victim};
use super::*;
use crate::guest_mem::{GuestSpan, HostDst, HostSrc};
use cudarc::driver::sys;
use protocol::cuda::*;
use protocol::module_image::{self, ELF_MAGIC, FATBIN_MAGIC, FATBIN_WRAPPER_MAGIC};
use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::ffi::{c_char, c_int, c_uint, c_ulonglong, c_void, CString};
use std::ptr::null_mut;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;
use tracing::{debug, info, warn};
use zerocopy::little_endian::U32;
use zerocopy::IntoBytes;

/// Every driver entry point this module calls. Checked once before the first
/// call: cudarc's loader panics on a missing symbol, and a driver older than
/// CUDA 13.0's API (`cuCtxCreate_v4`, `cuEventElapsedTime_v2`,
/// `cuFuncGetParamInfo`) must be reported, not crash the backend.
pub(super) const REQUIRED_SYMBOLS: &[&str] = &[
    "cuInit",
    "cuDriverGetVersion",
    "cuDeviceGetCount",
    "cuDeviceGet",
    "cuDeviceGetName",
    "cuDeviceGetUuid_v2",
    "cuDeviceTotalMem_v2",
    "cuDeviceGetAttribute",
    "cuDevicePrimaryCtxRetain",
    "cuDevicePrimaryCtxRelease_v2",
    "cuCtxCreate_v4",
    "cuCtxDestroy_v2",
    "cuCtxSetCurrent",
    "cuCtxPushCurrent_v2",
    "cuCtxPopCurrent_v2",
    "cuCtxSynchronize",
    "cuCtxGetDevice",
    // The swap pool's chunks (engine/swap_pool.rs): VMM calls that guest
    // memory looks up as optional, required here because cudarc calls them
    // directly. Every driver with cuCtxCreate_v4 (CUDA 12.x) has them.
    "cuMemCreate",
    "cuMemRelease",
    "cuMemExportToShareableHandle",
    "cuMemImportFromShareableHandle",
    "cuMemGetAllocationPropertiesFromHandle",
    "cuMemAddressReserve",
    "cuMemAddressFree",
    "cuMemMap",
    "cuMemUnmap",
    "cuMemSetAccess",
    "cuMemHostRegister_v2",
    "cuMemHostUnregister",
    "cuMemGetInfo_v2",
    "cuMemAlloc_v2",
    "cuMemFree_v2",
    "cuMemcpyHtoD_v2",
    "cuMemcpyHtoDAsync_v2",
    "cuMemcpyDtoH_v2",
    "cuMemcpyDtoHAsync_v2",
    "cuMemcpyDtoD_v2",
    "cuMemcpyDtoDAsync_v2",
    "cuMemsetD8_v2",
    "cuMemsetD16_v2",
    "cuMemsetD32_v2",
    "cuMemsetD8Async",
    "cuMemsetD16Async",
    "cuMemsetD32Async",
    "cuModuleLoadDataEx",
    "cuModuleUnload",
    "cuModuleGetFunction",
    "cuModuleGetGlobal_v2",
    "cuFuncGetParamInfo",
    "cuFuncGetAttribute",
    "cuFuncSetAttribute",
    "cuLaunchKernel",
    "cuLaunchKernelEx",
    "cuStreamCreateWithPriority",
    "cuStreamDestroy_v2",
    "cuStreamSynchronize",
    "cuStreamQuery",
    "cuStreamWaitEvent",
    "cuEventCreate",
    "cuEventDestroy_v2",
    "cuEventRecord",
    "cuEventQuery",
    "cuEventSynchronize",
    "cuEventElapsedTime_v2",
    // Graphs and occupancy (cuda/graph.rs).
    "cuGraphCreate",
    "cuGraphDestroy",
    "cuGraphAddKernelNode_v2",
    "cuGraphKernelNodeSetAttribute",
    "cuGraphAddMemcpyNode",
    "cuGraphAddMemsetNode",
    "cuGraphAddEmptyNode",
    "cuGraphAddEventRecordNode",
    "cuGraphAddEventWaitNode",
    "cuGraphInstantiateWithFlags",
    "cuGraphExecDestroy",
    "cuGraphLaunch",
    "cuGraphExecKernelNodeSetParams_v2",
    "cuGraphExecMemcpyNodeSetParams",
    "cuGraphExecMemsetNodeSetParams",
    "cuGraphExecEventRecordNodeSetEvent",
    "cuGraphExecEventWaitNodeSetEvent",
    "cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags",
    "cuOccupancyAvailableDynamicSMemPerBlock",
    "cuOccupancyMaxPotentialClusterSize",
    "cuOccupancyMaxActiveClusters",
];

/// Bytes of JIT error log kept when a module fails to load.
const JIT_LOG_BYTES: usize = 8 << 10;
/// Module images are handed to the driver at this alignment (ELF and fatbin
/// headers hold 8-byte fields).
const IMAGE_ALIGN: usize = 8;
/// `cuFuncGetParamInfo` is asked about at most this many parameters: every
/// parameter takes at least one byte of the parameter buffer.
const MAX_PARAMS: usize = protocol::MAX_PARAM_BYTES as usize;

// Entry points whose enum argument can be any number (device attributes up to
// NUM_DEVICE_ATTRS, function attributes the guest names). cudarc types those
// arguments as Rust enums, which may not hold a value they do not list, so
// these are called through pointers typed with plain integers, which the C
// ABI passes identically.
type DeviceGetAttributeFn = unsafe extern "C" fn(*mut c_int, c_uint, sys::CUdevice) -> c_uint;
type FuncGetAttributeFn = unsafe extern "C" fn(*mut c_int, c_uint, sys::CUfunction) -> c_uint;
type FuncSetAttributeFn = unsafe extern "C" fn(sys::CUfunction, c_uint, c_int) -> c_uint;

#[derive(Clone, Copy)]
struct RawFns {
    device_get_attribute: DeviceGetAttributeFn,
    func_get_attribute: FuncGetAttributeFn,
    func_set_attribute: FuncSetAttributeFn,
}

impl RawFns {
    fn load() -> EngineResult<RawFns> {
        // SAFETY: each type is the C prototype of the named function with its
        // enum argument as `unsigned int` and CUresult as `unsigned int`, and
        // `driver_library()` succeeded before any engine is made, so the
        // library is loaded and holds these symbols.
        unsafe {
            Ok(RawFns {
                device_get_attribute: raw_symbol("cuDeviceGetAttribute")?,
                func_get_attribute: raw_symbol("cuFuncGetAttribute")?,
                func_set_attribute: raw_symbol("cuFuncSetAttribute")?,
            })
        }
    }
}

// The virtual memory management API. Optional: looked up by name, so that a
// driver or device without it leaves the engine on plain cuMemAlloc, with no
// swapping, instead of failing the whole engine.
type MemGetAllocationGranularityFn =
    unsafe extern "C" fn(*mut usize, *const sys::CUmemAllocationProp, c_uint) -> c_uint;
type MemAddressReserveFn =
    unsafe extern "C" fn(*mut sys::CUdeviceptr, usize, usize, sys::CUdeviceptr, c_ulonglong) -> c_uint;
type MemAddressFreeFn = unsafe extern "C" fn(sys::CUdeviceptr, usize) -> c_uint;
type MemCreateFn = unsafe extern "C" fn(
    *mut sys::CUmemGenericAllocationHandle,
    usize,
    *const sys::CUmemAllocationProp,
    c_ulonglong,
) -> c_uint;
type MemReleaseFn = unsafe extern "C" fn(sys::CUmemGenericAllocationHandle) -> c_uint;
type MemMapFn =
    unsafe extern "C" fn(sys::CUdeviceptr, usize, usize, sys::CUmemGenericAllocationHandle, c_ulonglong) -> c_uint;
type MemUnmapFn = unsafe extern "C" fn(sys::CUdeviceptr, usize) -> c_uint;
type MemSetAccessFn = unsafe extern "C" fn(sys::CUdeviceptr, usize, *const sys::CUmemAccessDesc, usize) -> c_uint;

/// Turns the VMM API off (`0`), for comparing with plain cuMemAlloc.
const VMM_ENV: &str = "GPUVISOR_VMM";

#[derive(Clone, Copy)]
struct VmmFns {
    granularity: MemGetAllocationGranularityFn,
    address_reserve: MemAddressReserveFn,
    address_free: MemAddressFreeFn,
    create: MemCreateFn,
    release: MemReleaseFn,
    map: MemMapFn,
    unmap: MemUnmapFn,
    set_access: MemSetAccessFn,
}

impl VmmFns {
    fn load() -> EngineResult<VmmFns> {
        // SAFETY: each type is the C prototype of the named function (CUDA
        // 10.2+, unchanged since) with enum arguments and CUresult as
        // `unsigned int`; `driver_library()` succeeded before any engine is
        // made, so the library is loaded; a missing symbol is an error here.
        unsafe {
            Ok(VmmFns {
                granularity: raw_symbol("cuMemGetAllocationGranularity")?,
                address_reserve: raw_symbol("cuMemAddressReserve")?,
                address_free: raw_symbol("cuMemAddressFree")?,
                create: raw_symbol("cuMemCreate")?,
                release: raw_symbol("cuMemRelease")?,
                map: raw_symbol("cuMemMap")?,
                unmap: raw_symbol("cuMemUnmap")?,
                set_access: raw_symbol("cuMemSetAccess")?,
            })
        }
    }
}

/// Properties of pinned VMM memory at `location`, shareable as `handles`.
pub(super) fn pinned_prop(
    location: sys::CUmemLocation,
    handles: sys::CUmemAllocationHandleType,
) -> sys::CUmemAllocationProp {
    sys::CUmemAllocationProp {
        type_: sys::CUmemAllocationType::CU_MEM_ALLOCATION_TYPE_PINNED,
        requestedHandleTypes: handles,
        location,
        win32HandleMetaData: null_mut(),
        allocFlags: sys::CUmemAllocationProp_st__bindgen_ty_1 {
            compressionType: 0,
            gpuDirectRDMACapable: 0,
            usage: 0,
            reserved: [0; 4],
        },
    }
}

/// Guest allocations through the VMM API: each one a reserved address range
/// with physical memory mapped into it, which can be unmapped (swapped out)
/// and mapped again at the same address.
#[derive(Clone, Copy)]
struct Vmm {
    fns: VmmFns,
    /// Every size and address is a multiple of this.
    granularity: u64,
    /// The device ordinal, where physical memory is made and accessed.
    ordinal: c_int,
}

impl Vmm {
    /// Pinned device memory of this device, no shareable handle.
    fn prop(ordinal: c_int) -> sys::CUmemAllocationProp {
        pinned_prop(
            sys::CUmemLocation { type_: sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE, id: ordinal },
            sys::CUmemAllocationHandleType::CU_MEM_HANDLE_TYPE_NONE,
        )
    }

    /// The VMM API on device `ordinal`, if the device and driver have it and
    /// `GPUVISOR_VMM` does not turn it off.
    fn probe(info: &DeviceInfo, ordinal: c_int) -> Option<Vmm> {
        if std::env::var(VMM_ENV).is_ok_and(|v| v.trim() == "0") {
            info!("{VMM_ENV}=0: guest memory through cuMemAlloc, no swapping");
            return None;
        }
        let attr = sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_VIRTUAL_ADDRESS_MANAGEMENT_SUPPORTED as usize;
        if info.attrs.get(attr).copied().unwrap_or(0) == 0 {
            warn!("the device has no virtual memory management: guest memory cannot be swapped out");
            return None;
        }
        let fns = match VmmFns::load() {
            Ok(f) => f,
            Err(_) => {
                warn!("the driver lacks the virtual memory management API: guest memory cannot be swapped out");
                return None;
            }
        };
        let prop = Self::prop(ordinal);
        let mut granularity = 0usize;
        // SAFETY: valid out-pointer and property struct (cuda-13000 layout of
        // CUmemLocation: type and id); 0 is CU_MEM_ALLOC_GRANULARITY_MINIMUM.
        let r = check_raw(unsafe { (fns.granularity)(&mut granularity, &prop, 0) });
        match r {
            Ok(()) if granularity.is_power_of_two() => Some(Vmm { fns, granularity: granularity as u64, ordinal }),
            Ok(()) => {
                warn!(granularity, "unusable VMM allocation granularity: guest memory cannot be swapped out");
                None
            }
            Err(e) => {
                warn!(error = %e, "querying the VMM allocation granularity: guest memory cannot be swapped out");
                None
            }
        }
    }

    /// Bytes an allocation of `size` takes: whole granules.
    fn footprint(&self, size: u64) -> Option<u64> {
        size.checked_next_multiple_of(self.granularity)
    }

    /// Physical memory for the reserved range `va..va + len`, mapped and
    /// made readable and writable by the device. On failure nothing is left
    /// behind (the range stays reserved, unmapped) and the driver's error is
    /// returned: cuMemCreate's CUDA_ERROR_OUT_OF_MEMORY when the device is full.
    fn map_new(&self, va: u64, len: usize) -> EngineResult<sys::CUmemGenericAllocationHandle> {
        let handle = self.create(len)?;
        if let Err(e) = self.map_handle(va, len, handle) {
            self.release(handle);
            return Err(e);
        }
        Ok(handle)
    }

    /// `len` bytes (a multiple of the granularity) of physical memory.
    fn create(&self, len: usize) -> EngineResult<sys::CUmemGenericAllocationHandle> {
        let prop = Self::prop(self.ordinal);
        let mut handle: sys::CUmemGenericAllocationHandle = 0;
        // SAFETY: valid out-pointer and property struct; `len` is a multiple
        // of the granularity (callers round up or check).
        check_raw(unsafe { (self.fns.create)(&mut handle, len, &prop, 0) })?;
        Ok(handle)
    }

    /// Maps the first `len` bytes of `handle` at reserved, unmapped `va`,
    /// readable and writable by the device. On failure nothing stays mapped.
    fn map_handle(&self, va: u64, len: usize, handle: sys::CUmemGenericAllocationHandle) -> EngineResult<()> {
        // SAFETY: `va..va + len` is a range this engine reserved and has not
        // mapped; `handle` holds at least `len` bytes (callers check).
        check_raw(unsafe { (self.fns.map)(va, len, 0, handle, 0) })?;
        let access = sys::CUmemAccessDesc {
            location: Self::prop(self.ordinal).location,
            flags: sys::CUmemAccess_flags::CU_MEM_ACCESS_FLAGS_PROT_READWRITE,
        };
        // SAFETY: the range mapped above; one access descriptor.
        if let Err(e) = check_raw(unsafe { (self.fns.set_access)(va, len, &access, 1) }) {
            if let Err(u) = self.unmap(va, len) {
                warn!(error = %u, "unmapping after a failed cuMemSetAccess");
            }
            return Err(e);
        }
        Ok(())
    }

    /// Unmaps `va..va + len`; the range stays reserved. Its physical memory
    /// is freed once `release`d too.
    fn unmap(&self, va: u64, len: usize) -> EngineResult<()> {
        // SAFETY: a range this engine mapped; no work uses it (callers
        // synchronize first).
        check_raw(unsafe { (self.fns.unmap)(va, len) })
    }

    /// Drops the handle of physical memory; the memory goes back to the
    /// driver once no range maps it.
    fn release(&self, handle: sys::CUmemGenericAllocationHandle) {
        // SAFETY: a handle this engine created and releases once.
        if let Err(e) = check_raw(unsafe { (self.fns.release)(handle) }) {
            warn!(error = %e, "releasing VMM physical memory; it may leak");
        }
    }

    /// Gives back a reserved, unmapped address range.
    fn address_free(&self, va: u64, len: usize) {
        // SAFETY: a range this engine reserved, unmapped, and frees once.
        if let Err(e) = check_raw(unsafe { (self.fns.address_free)(va, len) }) {
            warn!(error = %e, "freeing a VMM address range; it stays reserved");
        }
    }

    /// A new allocation of `footprint` bytes (a multiple of the granularity):
    /// its address and physical memory. Nothing is left behind on failure.
    fn alloc(&self, footprint: u64) -> EngineResult<(u64, sys::CUmemGenericAllocationHandle)> {
        let len = to_usize(footprint)?;
        let mut va: sys::CUdeviceptr = 0;
        // SAFETY: valid out-pointer; alignment is the granularity (a power
        // of two), no fixed address, no flags.
        check_raw(unsafe { (self.fns.address_reserve)(&mut va, len, self.granularity as usize, 0, 0) })?;
        match self.map_new(va, len) {
            Ok(handle) => Ok((va, handle)),
            Err(e) => {
                self.address_free(va, len);
                Err(e)
            }
        }
    }
}

/// A function pointer to `name` in libcuda.
///
/// # Safety
/// `F` must be a function pointer type matching the symbol's C prototype, and
/// `driver_library()` must have returned `Ok` (else cudarc panics).
unsafe fn raw_symbol<F: Copy>(name: &str) -> EngineResult<F> {
    sys::culib().get::<F>(name).map(|s| *s).map_err(|_| CuError(CUDA_ERROR_NOT_SUPPORTED))
}

/// Whether libcuda can be loaded and has every entry point this module calls.
/// The answer is cached: the library does not change under a running process.
fn driver_library() -> Result<(), (CuResult, String)> {
    static CHECKED: OnceLock<Result<(), (CuResult, String)>> = OnceLock::new();
    CHECKED
        .get_or_init(|| {
            // SAFETY: loading libcuda runs its initialisers, as linking any
            // CUDA program against it would; nothing else is called yet.
            if !unsafe { sys::is_culib_present() } {
                return Err((CUDA_ERROR_NO_DEVICE, "libcuda.so (the NVIDIA driver) is not installed".to_string()));
            }
            // SAFETY: is_culib_present() found the library, so culib() loads
            // the same candidate instead of panicking. Symbols looked up as
            // data pointers are only tested for presence, never called.
            let missing: Vec<&str> = unsafe {
                let lib = sys::culib();
                REQUIRED_SYMBOLS.iter().copied().filter(|name| lib.get::<*const c_void>(*name).is_err()).collect()
            };
            if missing.is_empty() {
                Ok(())
            } else {
                Err((
                    CUDA_ERROR_NOT_SUPPORTED,
                    format!("the NVIDIA driver is older than CUDA 13.0: it lacks {}", missing.join(", ")),
                ))
            }
        })
        .clone()
}

/// A sticky error (`is_sticky`) some driver call returned, 0 for none: the
/// process's contexts may be lost (`Engine::lost` finds out). Process-wide,
/// as the driver's state is: any thread's call may be the one that sees it.
static STICKY_SEEN: AtomicU32 = AtomicU32::new(0);

#[cold]
fn note_error(code: CuResult) -> CuError {
    if is_sticky(code) {
        STICKY_SEEN.store(code, Ordering::Relaxed);
    }
    CuError(code)
}

/// The engine error for a driver result.
#[inline]
pub(super) fn check(r: sys::CUresult) -> EngineResult<()> {
    match r {
        sys::CUresult::CUDA_SUCCESS => Ok(()),
        e => Err(note_error(e as u32)),
    }
}

/// `check` for the entry points called through integer-typed pointers.
#[inline]
fn check_raw(r: c_uint) -> EngineResult<()> {
    if r == CUDA_SUCCESS {
        Ok(())
    } else {
        Err(note_error(r))
    }
}

/// The watchdog's mark: an event recorded after a stream's work, queried from
/// the watchdog's thread. The VM layer drops every mark of a context before
/// it destroys the context (`Watchdog::forget_ctx`), so the event is live.
struct CudaMark {
    ctx: u64,
    event: u64,
}

impl WorkMark for CudaMark {
    fn reached(&self) -> bool {
        // Pushed on the watchdog's thread: the queue thread's current
        // context is its own business. An error (a fault ended the work, or
        // the context is gone) counts as reached: nothing runs there any more.
        // SAFETY: `event` is a live event of the live context `ctx` (above).
        with_pushed(self.ctx, || Ok(unsafe { sys::cuEventQuery(self.event as sys::CUevent) }))
            != Ok(sys::CUresult::CUDA_ERROR_NOT_READY)
    }
}

impl Drop for CudaMark {
    fn drop(&mut self) {
        // SAFETY: as in `reached`; the event is destroyed once, here.
        let r = with_pushed(self.ctx, || check(unsafe { sys::cuEventDestroy_v2(self.event as sys::CUevent) }));
        if let Err(e) = r {
            debug!(error = %e, "destroying a watchdog mark");
        }
    }
}

fn to_usize(n: u64) -> EngineResult<usize> {
    usize::try_from(n).map_err(|_| CuError(CUDA_ERROR_INVALID_VALUE))
}

/// Bumped whenever a context is destroyed: every thread's record of its
/// current context is then stale (the driver popped it, or a new context may
/// reuse its address).
static CTX_EPOCH: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// The context this thread last made current through `make_current`, and
    /// the epoch it did so in. The driver's current context is per thread, so
    /// this mirror is per thread too, which makes a Mutex-guarded engine that
    /// moves between threads re-set its context exactly when needed.
    static THREAD_CTX: Cell<(u64, u64)> = const { Cell::new((0, u64::MAX)) };
}

/// Makes `ctx` current on this thread unless it already is. Hot path: one
/// atomic load and one thread-local read when nothing changes.
#[inline]
fn make_current(ctx: u64) -> EngineResult<()> {
    let epoch = CTX_EPOCH.load(Ordering::Acquire);
    THREAD_CTX.with(|cur| {
        if cur.get() == (ctx, epoch) {
            return Ok(());
        }
        // SAFETY: callers pass a context this module created or retained and
        // has not destroyed.
        check(unsafe { sys::cuCtxSetCurrent(ctx as sys::CUcontext) })?;
        cur.set((ctx, epoch));
        Ok(())
    })
}

fn forget_current() {
    CTX_EPOCH.fetch_add(1, Ordering::AcqRel);
}

/// Runs `f` with `ctx` pushed on this thread's context stack and pops it
/// afterwards, so the thread's current context (and `THREAD_CTX`) is as before.
fn with_pushed<T>(ctx: u64, f: impl FnOnce() -> EngineResult<T>) -> EngineResult<T> {
    // SAFETY: `ctx` is a live context owned by the engine.
    check(unsafe { sys::cuCtxPushCurrent_v2(ctx as sys::CUcontext) })?;
    let result = f();
    let mut popped: sys::CUcontext = null_mut();
    // SAFETY: pops the context pushed above; `popped` is a valid out-pointer.
    if let Err(e) = check(unsafe { sys::cuCtxPopCurrent_v2(&mut popped) }) {
        forget_current();
        return result.and(Err(e));
    }
    result
}

/// `with_pushed` for work whose outcome must reach the caller whatever
/// happens after it (a swap that moved data): a failed pop is logged, not
/// returned in place of `f`'s result. `Err` only if `ctx` could not be pushed,
/// and then `f` did not run.
pub(super) fn run_pushed<T>(ctx: u64, f: impl FnOnce() -> T) -> EngineResult<T> {
    // SAFETY: `ctx` is a live context owned by the engine.
    check(unsafe { sys::cuCtxPushCurrent_v2(ctx as sys::CUcontext) })?;
    let result = f();
    let mut popped: sys::CUcontext = null_mut();
    // SAFETY: pops the context pushed above; `popped` is a valid out-pointer.
    if let Err(e) = check(unsafe { sys::cuCtxPopCurrent_v2(&mut popped) }) {
        warn!(error = %e, "popping a context after swap work");
        forget_current();
    }
    Ok(result)
}

fn init_driver() -> EngineResult<()> {
    // SAFETY: cuInit has no pointer arguments; flags must be 0.
    check(unsafe { sys::cuInit(0) })
}

fn get_device(ordinal: u32) -> EngineResult<sys::CUdevice> {
    let mut count: c_int = 0;
    // SAFETY: `count` is a valid out-pointer.
    check(unsafe { sys::cuDeviceGetCount(&mut count) })?;
    let ordinal = c_int::try_from(ordinal).map_err(|_| CuError(CUDA_ERROR_INVALID_DEVICE))?;
    if ordinal >= count {
        return Err(CuError(if count == 0 { CUDA_ERROR_NO_DEVICE } else { CUDA_ERROR_INVALID_DEVICE }));
    }
    let mut dev: sys::CUdevice = 0;
    // SAFETY: `dev` is a valid out-pointer; the ordinal is in range.
    check(unsafe { sys::cuDeviceGet(&mut dev, ordinal) })?;
    Ok(dev)
}

/// The text of a NUL-terminated C string in `buf` (all of `buf` if it holds
/// no NUL), with invalid UTF-8 replaced.
fn c_string_lossy(buf: &[u8]) -> String {
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

fn device_name(dev: sys::CUdevice) -> EngineResult<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the driver writes at most `len` bytes, NUL included, into `buf`.
    check(unsafe { sys::cuDeviceGetName(buf.as_mut_ptr().cast::<c_char>(), buf.len() as c_int, dev) })?;
    Ok(c_string_lossy(&buf))
}

fn query_device_info(dev: sys::CUdevice, raw: &RawFns) -> EngineResult<DeviceInfo> {
    let name = device_name(dev)?;
    let mut uuid = sys::CUuuid { bytes: [0; 16] };
    // SAFETY: `uuid` is a valid out-pointer to a CUuuid.
    check(unsafe { sys::cuDeviceGetUuid_v2(&mut uuid, dev) })?;
    let mut total: usize = 0;
    // SAFETY: `total` is a valid out-pointer.
    check(unsafe { sys::cuDeviceTotalMem_v2(&mut total, dev) })?;
    let mut version: c_int = 0;
    // SAFETY: `version` is a valid out-pointer.
    check(unsafe { sys::cuDriverGetVersion(&mut version) })?;
    let mut attrs = [0i32; NUM_DEVICE_ATTRS];
    for (attr, slot) in attrs.iter_mut().enumerate().skip(1) {
        let mut v: c_int = 0;
        // SAFETY: `v` is a valid out-pointer; an attribute number the driver
        // does not know gives CUDA_ERROR_INVALID_VALUE, which reads as 0.
        let r = unsafe { (raw.device_get_attribute)(&mut v, attr as c_uint, dev) };
        *slot = if r == CUDA_SUCCESS { v } else { 0 };
    }
    Ok(DeviceInfo {
        name,
        uuid: uuid.bytes.map(|b| b as u8),
        total_mem: total as u64,
        driver_version: u32::try_from(version).unwrap_or(0),
        attrs,
    })
}

/// A module image as the driver gets it: only a pointer, so complete (never
/// shorter than its headers say), NUL-terminated if it is text, and aligned.
enum DriverImage<'a> {
    Borrowed(&'a [u8]),
    /// Words, for alignment, and the length in bytes.
    Owned(Vec<u64>, usize),
}

impl DriverImage<'_> {
    fn bytes(&self) -> &[u8] {
        match self {
            DriverImage::Borrowed(b) => b,
            DriverImage::Owned(words, len) => &words.as_bytes()[..*len],
        }
    }

    /// A copy of `bytes`, followed by a NUL if `nul`, at word alignment.
    fn copied(bytes: &[u8], nul: bool) -> DriverImage<'static> {
        let len = bytes.len() + nul as usize;
        let mut words = vec![0u64; len.div_ceil(8)];
        words.as_mut_bytes()[..bytes.len()].copy_from_slice(bytes);
        // A trailing NUL is already there: the words start zeroed.
        DriverImage::Owned(words, len)
    }
}

/// Checks and prepares a guest's module image for `cuModuleLoadData*`.
fn driver_image(image: &[u8]) -> EngineResult<DriverImage<'_>> {
    let magic = image.get(..4).and_then(|h| <[u8; 4]>::try_from(h).ok()).map(u32::from_le_bytes);
    if image.starts_with(&ELF_MAGIC) || magic == Some(FATBIN_MAGIC) {
        // The driver trusts the headers: never let them reach past the bytes
        // the guest sent, or the driver would read host memory beyond them.
        let len = match module_image::image_len(image) {
            Ok(n) if n <= image.len() => n,
            _ => return Err(CuError(CUDA_ERROR_INVALID_IMAGE)),
        };
        let bytes = &image[..len];
        // Nor offsets inside a fatbin's entry headers that the driver follows
        // unchecked (an entry's options record): every entry must parse.
        if magic == Some(FATBIN_MAGIC) && module_image::fatbin_entries(bytes).is_err() {
            return Err(CuError(CUDA_ERROR_INVALID_IMAGE));
        }
        return Ok(if (bytes.as_ptr() as usize) & (IMAGE_ALIGN - 1) == 0 {
            DriverImage::Borrowed(bytes)
        } else {
            DriverImage::copied(bytes, false)
        });
    }
    if magic == Some(FATBIN_WRAPPER_MAGIC) {
        // A __fatBinC_Wrapper_t holds a guest pointer: never hand it over.
        return Err(CuError(CUDA_ERROR_INVALID_IMAGE));
    }
    // Text (PTX): the driver reads up to the first NUL.
    Ok(match image.iter().position(|&b| b == 0) {
        Some(nul) => DriverImage::Borrowed(&image[..=nul]),
        None => DriverImage::copied(image, true),
    })
}

/// The parameter layout of a kernel from `query(index, &mut offset, &mut
/// size)` (`cuFuncGetParamInfo`), asked for index 0, 1, ... until it answers
/// CUDA_ERROR_INVALID_VALUE, which is how the driver says "no such parameter".
fn collect_params(mut query: impl FnMut(usize, &mut usize, &mut usize) -> CuResult) -> EngineResult<Vec<ParamLayout>> {
    let mut params = Vec::new();
    for index in 0..MAX_PARAMS {
        let (mut offset, mut size) = (0usize, 0usize);
        match query(index, &mut offset, &mut size) {
            CUDA_SUCCESS => {
                let field = |v: usize| u32::try_from(v).map(U32::new).map_err(|_| CuError(CUDA_ERROR_INVALID_VALUE));
                params.push(ParamLayout { offset: field(offset)?, size: field(size)? });
            }
            CUDA_ERROR_INVALID_VALUE => break,
            e => return Err(CuError(e)),
        }
    }
    Ok(params)
}

/// The `extra` array of `cuLaunchKernel` for a packed parameter buffer.
/// `size` must hold `params.len()` and outlive the launch call.
#[inline]
fn launch_extra(params: &[u8], size: &mut usize) -> [*mut c_void; 5] {
    [
        sys::CU_LAUNCH_PARAM_BUFFER_POINTER_AS_INT as usize as *mut c_void,
        params.as_ptr().cast_mut().cast::<c_void>(),
        sys::CU_LAUNCH_PARAM_BUFFER_SIZE_AS_INT as usize as *mut c_void,
        (size as *mut usize).cast::<c_void>(),
        sys::CU_LAUNCH_PARAM_END_AS_INT as usize as *mut c_void,
    ]
}

/// The launch attributes of a launch or kernel node beyond a plain one: a
/// cluster dimension unless it is 1x1x1, cooperative if asked. Returns the
/// attributes and how many of them are set.
fn ex_attributes(cluster: [u32; 3], cooperative: bool) -> ([sys::CUlaunchAttribute; 2], usize) {
    // SAFETY: plain C structs and unions for which all-zero is valid.
    let mut attrs: [sys::CUlaunchAttribute; 2] = unsafe { std::mem::zeroed() };
    let mut n = 0;
    if cluster != [1, 1, 1] {
        attrs[n] = cluster_dim_attribute(cluster);
        n += 1;
    }
    if cooperative {
        attrs[n].id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_COOPERATIVE;
        attrs[n].value.cooperative = 1;
        n += 1;
    }
    (attrs, n)
}

/// The CLUSTER_DIMENSION launch attribute of `dims`.
fn cluster_dim_attribute([x, y, z]: [u32; 3]) -> sys::CUlaunchAttribute {
    // SAFETY: a plain C struct and union for which all-zero is valid.
    let mut a: sys::CUlaunchAttribute = unsafe { std::mem::zeroed() };
    a.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION;
    a.value.clusterDim = sys::CUlaunchAttributeValue_union__bindgen_ty_1 { x, y, z };
    a
}

/// Calls `copy(host, device, len)` for each extent of `span`, at device
/// addresses that start at `dev` and follow the extents in order. Fails before
/// copying anything if an extent has no host mapping (the offsets of those
/// after it would be wrong) or the device range wraps.
fn for_each_extent(
    span: &GuestSpan<'_>,
    dev: u64,
    mut copy: impl FnMut(*mut u8, u64, usize) -> EngineResult<()>,
) -> EngineResult<()> {
    let mapped = span.host_extents().try_fold(0usize, |sum, (_, len)| sum.checked_add(len));
    if mapped != Some(span.len()) || dev.checked_add(span.len() as u64).is_none() {
        return Err(CuError(CUDA_ERROR_INVALID_VALUE));
    }
    let mut at = dev;
    for (host, len) in span.host_extents() {
        if len == 0 {
            continue;
        }
        copy(host, at, len)?;
        at += len as u64;
    }
    Ok(())
}

#[inline]
fn cu_stream(s: EngineStream) -> sys::CUstream {
    s.0 as sys::CUstream
}

/// Where a guest allocation's memory is.
enum AllocState {
    /// From cuMemAlloc (no VMM): freed by cuMemFree or with its context.
    Plain,
    /// VMM physical memory mapped at the allocation's reserved range.
    Mapped(sys::CUmemGenericAllocationHandle),
    /// Swapped out: the range stays reserved, unmapped; the bytes are here.
    Evicted(HostCopy),
}

struct DevAlloc {
    /// Bytes the guest asked for, and copied when swapping.
    size: u64,
    /// Bytes the allocation takes on the device (`alloc_footprint`).
    footprint: u64,
    /// The context that was current when it was made: VMM memory is not
    /// freed with a context, so `ctx_destroy` frees it.
    ctx: u64,
    state: AllocState,
}

/// The guest's allocations, with their resident and evicted footprints kept
/// exact: every change of state is a `remove` and an `insert`.
#[derive(Default)]
struct Allocations {
    map: HashMap<u64, DevAlloc>,
    resident: u64,
    evicted: u64,
}

impl Allocations {
    fn count(&mut self, a: &DevAlloc, add: bool) {
        let total = match a.state {
            AllocState::Evicted(_) => &mut self.evicted,
            AllocState::Plain | AllocState::Mapped(_) => &mut self.resident,
        };
        *total = if add { total.saturating_add(a.footprint) } else { total.saturating_sub(a.footprint) };
    }

    fn insert(&mut self, base: u64, a: DevAlloc) {
        self.count(&a, true);
        if let Some(old) = self.map.insert(base, a) {
            // The driver never hands out one address twice; keep the counts
            // exact regardless.
            warn!(base, "an allocation address was handed out twice");
            self.count(&old, false);
        }
    }

    fn remove(&mut self, base: u64) -> Option<DevAlloc> {
        let a = self.map.remove(&base)?;
        self.count(&a, false);
        Some(a)
    }

    fn get(&self, base: u64) -> Option<&DevAlloc> {
        self.map.get(&base)
    }

    /// Addresses of the allocations `keep` selects.
    fn bases(&self, keep: impl Fn(&DevAlloc) -> bool) -> Vec<u64> {
        self.map.iter().filter(|(_, a)| keep(a)).map(|(b, _)| *b).collect()
    }

    fn residency(&self) -> Residency {
        Residency { resident: self.resident, evicted: self.evicted }
    }
}

/// Allocations smaller than this are plain `cuMemAlloc` memory rather than
/// VMM mappings: a mapping takes a whole granule (2 MiB), which for the many
/// small buffers frameworks allocate would waste most of the GPU. Plain
/// memory cannot keep its address off the GPU, so it is never swapped out:
/// it stays resident when the rest of the VM's memory is evicted.
const SMALL_ALLOC: u64 = 1 << 20;

/// The allocations to swap out so that at most `keep` of `resident` bytes
/// stay: the largest first, the fewest moves for the bytes asked. `candidates`
/// are (footprint, address).
fn pick_victims(mut candidates: Vec<(u64, u64)>, resident: u64, keep: u64, max_bytes: u64) -> Vec<u64> {
    candidates.sort_unstable_by(|a, b| b.cmp(a));
    let mut left = resident;
    let mut moved = 0u64;
    let mut picked = Vec::new();
    for (footprint, base) in candidates {
        if left <= keep {
            break;
        }
        // One too large for what is left of the bound: a smaller one may fit.
        let Some(total) = moved.checked_add(footprint).filter(|&t| t <= max_bytes) else { continue };
        moved = total;
        picked.push(base);
        left = left.saturating_sub(footprint);
    }
    picked
}

/// The host GPU through the NVIDIA driver. Handles are the driver's pointers.
pub struct CudaEngine {
    info: DeviceInfo,
    device: sys::CUdevice,
    /// The device's primary context, retained for the engine's lifetime; used
    /// for memory registration and for queries outside any guest context.
    base: u64,
    /// Contexts made by `ctx_create` and not yet destroyed.
    contexts: HashSet<u64>,
    /// The context `ctx_set_current` chose; 0 for none.
    selected: u64,
    /// Guest RAM registered with the driver: (address, length).
    registered: Vec<(usize, usize)>,
    raw: RawFns,
    /// `None`: guest memory from cuMemAlloc, which cannot be swapped out.
    vmm: Option<Vmm>,
    allocs: Allocations,
    /// Host RAM for swapped-out allocations; made on the first swap-out.
    swap: Option<HostStore>,
    /// How `swap` prepares host memory when it is made.
    swap_config: SwapConfig,
    /// gpuvisord's swap pool socket, where the backend runs under one.
    swap_pool: Option<std::path::PathBuf>,
    /// Instantiated graphs, by the id the VM layer holds.
    graphs: HashMap<u64, graph::CudaGraph>,
    next_graph: u64,
    /// The guest's own virtual-memory objects (`Engine::va_reserve` and
    /// the rest), for their sizes and for cleaning up at the end: reserved
    /// ranges and mappings by address, physical memory by handle. Physical
    /// memory is pinned: counted as resident, never swapped out.
    guest_va: HashMap<u64, u64>,
    guest_maps: HashMap<u64, u64>,
    guest_phys: HashMap<u64, u64>,
    guest_phys_bytes: u64,
    /// The sticky error that lost every context of the process, once
    /// `lost` confirmed it.
    lost: Option<CuResult>,
}

impl CudaEngine {
    /// Whether a usable NVIDIA driver and device 0 exist: the device's name,
    /// or why not. Never panics, also when libcuda is not installed.
    pub fn probe() -> Result<String, String> {
        Self::probe_device(0)
    }

    /// `probe` for device `ordinal`.
    pub fn probe_device(ordinal: u32) -> Result<String, String> {
        driver_library().map_err(|(_, why)| why)?;
        init_driver().map_err(|e| format!("cuInit: {e}"))?;
        let dev = get_device(ordinal).map_err(|e| format!("device {ordinal}: {e}"))?;
        device_name(dev).map_err(|e| format!("device {ordinal}: {e}"))
    }

    /// The installed driver's CUDA version (e.g. 13000), if there is one.
    pub fn host_driver_version() -> Option<u32> {
        driver_library().ok()?;
        let mut v: c_int = 0;
        // SAFETY: the library is present; `v` is a valid out-pointer.
        check(unsafe { sys::cuDriverGetVersion(&mut v) }).ok()?;
        u32::try_from(v).ok()
    }

    /// An engine on device `device_ordinal`, holding its primary context.
    pub fn new(device_ordinal: u32) -> Result<CudaEngine, CuError> {
        if let Err((code, why)) = driver_library() {
            warn!("cuda engine unavailable: {why}");
            return Err(CuError(code));
        }
        init_driver()?;
        let device = get_device(device_ordinal)?;
        let raw = RawFns::load()?;
        let mut info = query_device_info(device, &raw)?;
        let mut base: sys::CUcontext = null_mut();
        // SAFETY: `base` is a valid out-pointer; released in Drop.
        check(unsafe { sys::cuDevicePrimaryCtxRetain(&mut base, device) })?;
        let vmm = match c_int::try_from(device_ordinal) {
            Ok(ordinal) => Vmm::probe(&info, ordinal),
            Err(_) => None,
        };
        info!(
            device = %info.name,
            ordinal = device_ordinal,
            driver = info.driver_version,
            memory_mib = info.total_mem >> 20,
            vmm_granularity = vmm.map_or(0, |v| v.granularity),
            "cuda engine ready"
        );
        // The guest's virtual-memory API and pools are built on the engine's
        // own use of it: without it neither is offered, whatever the GPU can.
        for attr in [
            sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED,
            sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED,
        ] {
            if let Some(slot) = info.attrs.get_mut(attr as usize) {
                *slot = vmm.is_some() as i32;
            }
        }
        Ok(CudaEngine {
            info,
            device,
            base: base as u64,
            contexts: HashSet::new(),
            selected: 0,
            registered: Vec::new(),
            raw,
            vmm,
            allocs: Allocations::default(),
            swap: None,
            swap_config: SwapConfig::default(),
            swap_pool: None,
            graphs: HashMap::new(),
            next_graph: 0,
            guest_va: HashMap::new(),
            guest_maps: HashMap::new(),
            guest_phys: HashMap::new(),
            guest_phys_bytes: 0,
            lost: None,
        })
    }

    /// How host memory for swapped-out allocations is prepared (before the
    /// first swap-out; later changes do not apply).
    /// Leases swap chunks from the pool at `socket` first, where gpuvisord
    /// offers one there (connected at the first swap).
    pub fn set_swap_pool(&mut self, socket: Option<std::path::PathBuf>) {
        self.swap_pool = socket;
    }

    /// Makes the host swap store now rather than at the first swap, where a
    /// swap pool socket is set: its grower then starts making pool chunks
    /// while the VMs start, before any swap needs them.
    pub fn open_swap_store(&mut self) {
        if !self.swap_pool.as_deref().is_some_and(std::path::Path::exists) || self.vmm.is_none() {
            return;
        }
        if let Err(e) = host_store(&mut self.swap, self.base, self.swap_config, self.swap_pool.as_deref()) {
            warn!(error = %e, "host swap store");
        }
    }

    pub fn set_swap_config(&mut self, config: SwapConfig) {
        self.swap_config = config;
    }

    /// Makes the chosen context current on the calling thread.
    #[inline]
    fn enter(&self) -> EngineResult<()> {
        if self.selected == 0 {
            return Err(CuError(CUDA_ERROR_INVALID_CONTEXT));
        }
        make_current(self.selected)
    }

    /// Waits for every context's work, so that no copy or kernel still
    /// touches memory about to be unregistered, unmapped or swapped out.
    fn synchronize_all(&self) {
        for &ctx in &self.contexts {
            // SAFETY: `ctx` is live (in `contexts`); no pointer arguments.
            if let Err(e) = with_pushed(ctx, || check(unsafe { sys::cuCtxSynchronize() })) {
                warn!(error = %e, "synchronizing a context");
            }
        }
    }

    /// Frees a VMM allocation taken out of the table: its physical memory or
    /// host copy, then its address range. Needs some context current.
    fn free_vmm(vmm: &Vmm, swap: &mut Option<HostStore>, base: u64, a: DevAlloc) -> EngineResult<()> {
        let len = to_usize(a.footprint)?;
        match a.state {
            AllocState::Plain => Ok(()),
            AllocState::Mapped(handle) => {
                let unmapped = vmm.unmap(base, len);
                vmm.release(handle);
                match unmapped {
                    Ok(()) => {
                        vmm.address_free(base, len);
                        Ok(())
                    }
                    Err(e) => {
                        // A mapped range cannot be freed: it stays reserved.
                        warn!(base, error = %e, "unmapping freed device memory");
                        Err(e)
                    }
                }
            }
            AllocState::Evicted(copy) => {
                if let Some(store) = swap.as_mut() {
                    store.release(copy);
                }
                vmm.address_free(base, len);
                Ok(())
            }
        }
    }

    /// Drops the allocations of context `owner` (all of them for `None`),
    /// after the context was destroyed: cuMemAlloc memory went with it, VMM
    /// memory and host copies are freed here.
    fn free_owned(&mut self, owner: Option<u64>) {
        let bases = self.allocs.bases(|a| owner.is_none_or(|c| a.ctx == c));
        if bases.is_empty() {
            return;
        }
        let vmm = self.vmm;
        let (allocs, swap) = (&mut self.allocs, &mut self.swap);
        let freed = run_pushed(self.base, || {
            for b in bases {
                let Some(a) = allocs.remove(b) else { continue };
                if let Some(vmm) = &vmm {
                    // Logged inside; nothing more can be done for it here.
                    let _ = Self::free_vmm(vmm, swap, b, a);
                }
            }
        });
        if let Err(e) = freed {
            warn!(error = %e, "no context to free device memory in; it stays allocated until the engine ends");
        }
    }

    /// What the guest's virtual-memory objects still hold at the end, given
    /// back: the VM layer releases them as the guest does, so only a VM
    /// torn down mid-way leaves any.
    fn free_guest_vmm(&mut self) {
        let Some(vmm) = self.vmm else { return };
        let (maps, phys, va) = (
            std::mem::take(&mut self.guest_maps),
            std::mem::take(&mut self.guest_phys),
            std::mem::take(&mut self.guest_va),
        );
        self.guest_phys_bytes = 0;
        let freed = run_pushed(self.base, || {
            for (va, len) in maps {
                if let Err(e) = to_usize(len).and_then(|len| vmm.unmap(va, len)) {
                    warn!(va, error = %e, "unmapping guest memory at shutdown");
                }
            }
            for handle in phys.into_keys() {
                vmm.release(handle);
            }
            for (va, len) in va {
                if let Ok(len) = to_usize(len) {
                    vmm.address_free(va, len);
                }
            }
        });
        if let Err(e) = freed {
            warn!(error = %e, "no context to free the guest's virtual memory in");
        }
    }

    fn unregister(&mut self, targets: &[(usize, usize)]) -> EngineResult<()> {
        let mut first_err = None;
        for &(addr, len) in targets {
            self.registered.retain(|&(a, _)| a != addr);
            // SAFETY: `addr` was registered by this engine and is still mapped
            // (the caller unregisters before unmapping).
            let r = with_pushed(self.base, || check(unsafe { sys::cuMemHostUnregister(addr as *mut c_void) }));
            match r {
                Ok(()) => debug!(bytes = len, "guest memory unregistered"),
                Err(e) => {
                    warn!(bytes = len, error = %e, "unregistering guest memory");
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

impl Drop for CudaEngine {
    fn drop(&mut self) {
        self.destroy_graphs(None);
        for ctx in self.contexts.drain() {
            // SAFETY: a context this engine created and has not destroyed.
            if let Err(e) = check(unsafe { sys::cuCtxDestroy_v2(ctx as sys::CUcontext) }) {
                warn!(error = %e, "destroying a context at engine shutdown");
            }
        }
        self.selected = 0;
        forget_current();
        // VMM memory outlives contexts; the host store's workers and pinned
        // chunks need the primary context, released last.
        self.free_owned(None);
        self.free_guest_vmm();
        drop(self.swap.take());
        let regions = std::mem::take(&mut self.registered);
        let _ = self.unregister(&regions);
        // SAFETY: balances the retain in `new`.
        if let Err(e) = check(unsafe { sys::cuDevicePrimaryCtxRelease_v2(self.device) }) {
            warn!(error = %e, "releasing the primary context");
        }
    }
}

/// The engine's host swap store, made at its first use (a swap-out, or
/// preparing for one) with the primary context `ctx`.
fn host_store<'a>(
    swap: &'a mut Option<HostStore>,
    ctx: u64,
    config: SwapConfig,
    pool: Option<&std::path::Path>,
) -> EngineResult<&'a mut HostStore> {
    if swap.is_none() {
        *swap = Some(HostStore::new(ctx, config, pool)?);
    }
    swap.as_mut().ok_or(CuError(CUDA_ERROR_ILLEGAL_STATE))
}

impl Engine for CudaEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::Cuda
    }

    fn device_info(&self) -> &DeviceInfo {
        &self.info
    }

    fn register_host_memory(&mut self, regions: &[HostRegion]) -> EngineResult<()> {
        for r in regions {
            let addr = r.addr as usize;
            if r.len == 0 || self.registered.iter().any(|&(a, _)| a == addr) {
                continue;
            }
            let start = Instant::now();
            let result = with_pushed(self.base, || {
                // SAFETY: the region is a live mapping of guest RAM that stays
                // mapped until `unregister_host_memory`; PORTABLE makes it
                // pinned for every context, not only the base one pushed here.
                check(unsafe { sys::cuMemHostRegister_v2(r.addr.cast(), r.len, sys::CU_MEMHOSTREGISTER_PORTABLE) })
            });
            let ms = start.elapsed().as_secs_f64() * 1e3;
            match result {
                Ok(()) => {
                    info!(bytes = r.len, ms, "guest memory registered with the driver");
                    self.registered.push((addr, r.len));
                }
                // The VM still works: the driver stages copies from pageable
                // memory itself, only slower.
                Err(e) => {
                    warn!(bytes = r.len, ms, error = %e, "could not register guest memory; copies will be staged")
                }
            }
        }
        Ok(())
    }

    fn unregister_host_memory(&mut self, regions: &[HostRegion]) -> EngineResult<()> {
        let targets: Vec<(usize, usize)> =
            self.registered.iter().copied().filter(|&(a, _)| regions.iter().any(|r| r.addr as usize == a)).collect();
        if targets.is_empty() {
            return Ok(());
        }
        self.synchronize_all();
        self.unregister(&targets)
    }

    fn ctx_create(&mut self, flags: u32) -> EngineResult<EngineCtx> {
        let mut ctx: sys::CUcontext = null_mut();
        // SAFETY: `ctx` is a valid out-pointer; NULL creation parameters ask
        // for a plain context (no execution affinity, no CIG).
        check(unsafe { sys::cuCtxCreate_v4(&mut ctx, null_mut(), flags, self.device) })?;
        // cuCtxCreate pushes the new context; pop it so that this thread's
        // current context stays the one `ctx_set_current` chose.
        let mut popped: sys::CUcontext = null_mut();
        // SAFETY: pops the context just pushed; `popped` is a valid out-pointer.
        if let Err(e) = check(unsafe { sys::cuCtxPopCurrent_v2(&mut popped) }) {
            // SAFETY: `ctx` was created above and is not known to anyone else.
            let _ = unsafe { sys::cuCtxDestroy_v2(ctx) };
            forget_current();
            return Err(e);
        }
        self.contexts.insert(ctx as u64);
        debug!(contexts = self.contexts.len(), "context created");
        Ok(EngineCtx(ctx as u64))
    }

    fn ctx_destroy(&mut self, ctx: EngineCtx) -> EngineResult<()> {
        if !self.contexts.remove(&ctx.0) {
            return Err(CuError(CUDA_ERROR_INVALID_CONTEXT));
        }
        if self.selected == ctx.0 {
            self.selected = 0;
        }
        // Its graphs first, while the context they belong to still exists.
        self.destroy_graphs(Some(ctx.0));
        // SAFETY: a context this engine created; just removed from
        // `contexts`, so it is destroyed exactly once.
        let r = check(unsafe { sys::cuCtxDestroy_v2(ctx.0 as sys::CUcontext) });
        forget_current();
        // After the destroy, which waited for the context's work.
        self.free_owned(Some(ctx.0));
        r
    }

    #[inline]
    fn ctx_set_current(&mut self, ctx: EngineCtx) -> EngineResult<()> {
        if ctx.0 != self.selected && !self.contexts.contains(&ctx.0) {
            return Err(CuError(CUDA_ERROR_INVALID_CONTEXT));
        }
        make_current(ctx.0)?;
        self.selected = ctx.0;
        Ok(())
    }

    fn ctx_synchronize(&mut self) -> EngineResult<()> {
        self.enter()?;
        // SAFETY: no arguments; a context is current.
        check(unsafe { sys::cuCtxSynchronize() })
    }

    fn lost(&mut self) -> Option<CuResult> {
        if self.lost.is_some() || STICKY_SEEN.load(Ordering::Relaxed) == 0 {
            return self.lost;
        }
        // Some call returned a sticky code. After a kernel fault every call of
        // every context of the process fails with it (measured on an H200),
        // so a synchronize of the primary context, which runs none of the
        // guest's work, tells a lost process from a call that failed alone
        // (an unknown error of one call leaves the contexts working).
        // SAFETY: no arguments; `base` is the retained primary context.
        match with_pushed(self.base, || check(unsafe { sys::cuCtxSynchronize() })) {
            Err(CuError(code)) if is_sticky(code) => {
                self.lost = Some(code);
            }
            _ => STICKY_SEEN.store(0, Ordering::Relaxed),
        }
        self.lost
    }

    fn mark(&mut self, stream: EngineStream) -> EngineResult<Box<dyn WorkMark>> {
        self.enter()?;
        const CU_EVENT_DISABLE_TIMING: c_uint = 0x2;
        let mut e: sys::CUevent = null_mut();
        // SAFETY: `e` is a valid out-pointer; the mark destroys the event.
        check(unsafe { sys::cuEventCreate(&mut e, CU_EVENT_DISABLE_TIMING) })?;
        let mark = CudaMark { ctx: self.selected, event: e as u64 };
        // SAFETY: an event just created and a stream of the current context,
        // or NULL.
        check(unsafe { sys::cuEventRecord(e, cu_stream(stream)) })?;
        Ok(Box::new(mark))
    }

    fn mem_get_info(&mut self) -> EngineResult<(u64, u64)> {
        fn query() -> EngineResult<(u64, u64)> {
            let (mut free, mut total) = (0usize, 0usize);
            // SAFETY: valid out-pointers; a context is current.
            check(unsafe { sys::cuMemGetInfo_v2(&mut free, &mut total) })?;
            Ok((free as u64, total as u64))
        }
        if self.selected != 0 {
            self.enter()?;
            query()
        } else {
            with_pushed(self.base, query)
        }
    }

    fn mem_alloc(&mut self, size: u64) -> EngineResult<u64> {
        self.enter()?;
        if size == 0 {
            return Err(CuError(CUDA_ERROR_INVALID_VALUE));
        }
        let (dptr, footprint, state) = match &self.vmm {
            Some(vmm) if size >= SMALL_ALLOC => {
                let footprint = vmm.footprint(size).ok_or(CuError(CUDA_ERROR_OUT_OF_MEMORY))?;
                let (va, handle) = vmm.alloc(footprint)?;
                (va, footprint, AllocState::Mapped(handle))
            }
            _ => {
                let len = to_usize(size)?;
                let mut dptr: sys::CUdeviceptr = 0;
                // SAFETY: `dptr` is a valid out-pointer.
                check(unsafe { sys::cuMemAlloc_v2(&mut dptr, len) })?;
                (dptr, size, AllocState::Plain)
            }
        };
        self.allocs.insert(dptr, DevAlloc { size, footprint, ctx: self.selected, state });
        Ok(dptr)
    }

    fn mem_free(&mut self, dptr: u64) -> EngineResult<()> {
        self.enter()?;
        let a = self.allocs.remove(dptr).ok_or(CuError(CUDA_ERROR_INVALID_VALUE))?;
        if let AllocState::Plain = a.state {
            // SAFETY: an allocation this engine made with cuMemAlloc and has
            // not freed (it was in the table).
            let r = check(unsafe { sys::cuMemFree_v2(dptr) });
            if r.is_err() {
                // Still allocated: still counted, freed with its context.
                self.allocs.insert(dptr, a);
            }
            return r;
        }
        let Some(vmm) = self.vmm else {
            return Err(CuError(CUDA_ERROR_ILLEGAL_STATE));
        };
        if let AllocState::Mapped(_) = a.state {
            // cuMemFree waits for the device; unmapping memory that a kernel
            // or copy still uses would fault it instead.
            self.synchronize_all();
        }
        Self::free_vmm(&vmm, &mut self.swap, dptr, a)
    }

    fn alloc_footprint(&self, size: u64) -> u64 {
        match &self.vmm {
            Some(vmm) if size >= SMALL_ALLOC => vmm.footprint(size).unwrap_or(u64::MAX),
            _ => size,
        }
    }

    fn residency(&self) -> Residency {
        let r = self.allocs.residency();
        Residency { resident: r.resident.saturating_add(self.guest_phys_bytes), ..r }
    }

    fn mem_is_resident(&self, dptr: u64) -> bool {
        !matches!(self.allocs.get(dptr), Some(DevAlloc { state: AllocState::Evicted(_), .. }))
    }

    fn prepare_swap_out(&mut self, bytes: u64) {
        if bytes == 0 && self.swap.is_none() {
            return;
        }
        match host_store(&mut self.swap, self.base, self.swap_config, self.swap_pool.as_deref()) {
            Ok(store) => store.prepare_ahead(bytes),
            Err(e) => warn!(error = %e, "host swap store for a likely swap-out"),
        }
    }

    fn least_swap_out(&self) -> u64 {
        if self.vmm.is_none() {
            return 0; // nothing moves (swap_out)
        }
        let mapped = self.allocs.map.values().filter(|a| matches!(a.state, AllocState::Mapped(_)));
        mapped.map(|a| a.footprint).min().unwrap_or(0)
    }

    fn swap_out(&mut self, keep: u64, max_bytes: u64) -> EngineResult<u64> {
        self.synchronize_all();
        let Some(vmm) = self.vmm else {
            return Ok(0); // cuMemAlloc memory cannot keep its address off the GPU
        };
        let before = self.allocs.residency();
        if before.resident <= keep {
            return Ok(0);
        }
        let candidates: Vec<(u64, u64)> = self
            .allocs
            .map
            .iter()
            .filter(|(_, a)| matches!(a.state, AllocState::Mapped(_)))
            .map(|(b, a)| (a.footprint, *b))
            .collect();
        let victims: Vec<Victim> = pick_victims(candidates, before.resident, keep, max_bytes)
            .into_iter()
            .filter_map(|b| self.allocs.get(b).map(|a| Victim { dptr: b, len: a.size, scrub_len: a.footprint }))
            .collect();
        if victims.is_empty() {
            return Ok(0);
        }
        let store = host_store(&mut self.swap, self.base, self.swap_config, self.swap_pool.as_deref())?;
        let start = Instant::now();
        let allocs = &mut self.allocs;
        let (moved, copied, count, error, timing, unmapping) = run_pushed(self.base, || {
            let out = store.copy_out(&victims);
            let unmapped_at = Instant::now();
            let mut error = out.error;
            let (mut moved, mut copied, mut count) = (0u64, 0u64, 0usize);
            for (v, copy) in victims.iter().zip(out.copies) {
                let Some(a) = allocs.remove(v.dptr) else {
                    store.release(copy);
                    continue;
                };
                let AllocState::Mapped(handle) = a.state else {
                    allocs.insert(v.dptr, a);
                    store.release(copy);
                    continue;
                };
                // The footprint came from a usize when it was allocated.
                let len = a.footprint as usize;
                match vmm.unmap(v.dptr, len) {
                    Ok(()) => {
                        vmm.release(handle);
                        moved += a.footprint;
                        copied += a.size;
                        count += 1;
                        allocs.insert(v.dptr, DevAlloc { state: AllocState::Evicted(copy), ..a });
                    }
                    Err(e) => {
                        // Still mapped, and zeroed: its bytes go back, and it
                        // stays resident.
                        warn!(base = v.dptr, error = %e, "unmapping swapped-out memory; restoring it");
                        error.get_or_insert(e);
                        match store.copy_in(v.dptr, &copy).and_then(|()| store.sync()) {
                            Ok(()) => {
                                store.release(copy);
                                allocs.insert(v.dptr, DevAlloc { state: AllocState::Mapped(handle), ..a });
                            }
                            Err(e2) => {
                                // The host copy is the data now; keep it.
                                warn!(base = v.dptr, error = %e2, "restoring it failed; it stays in host RAM");
                                allocs.insert(v.dptr, DevAlloc { state: AllocState::Evicted(copy), ..a });
                            }
                        }
                    }
                }
            }
            (moved, copied, count, error, out.timing, unmapped_at.elapsed())
        })?;
        let secs = start.elapsed().as_secs_f64();
        let after = self.allocs.residency();
        info!(
            bytes = copied,
            footprint = moved,
            allocations = count,
            seconds = secs,
            gbps = copied as f64 / secs.max(1e-9) / 1e9,
            resident = after.resident,
            evicted = after.evicted,
            pinned_mib = self.swap.as_ref().map_or(0, |s| s.pinned_bytes() >> 20),
            chunks_ready = timing.chunks_ready,
            chunks_waited = timing.chunks_waited,
            chunk_wait_s = timing.chunk_wait.as_secs_f64(),
            copy_wait_s = timing.copy_wait.as_secs_f64(),
            zero_s = timing.zero.as_secs_f64(),
            unmap_s = unmapping.as_secs_f64(),
            made_chunks = timing.made,
            worker_map_s = timing.map.as_secs_f64(),
            worker_prefault_s = timing.prefault.as_secs_f64(),
            worker_register_s = timing.register.as_secs_f64(),
            worker_release_s = timing.release.as_secs_f64(),
            imported_chunks = timing.imported,
            worker_import_s = timing.import.as_secs_f64(),
            reused_maps = timing.reused,
            "device memory swapped out to host RAM"
        );
        match error {
            Some(e) if moved == 0 => Err(e),
            Some(e) => {
                warn!(error = %e, moved, keep, "swap-out stopped early");
                Ok(moved)
            }
            None => Ok(moved),
        }
    }

    fn swap_in(&mut self, max_bytes: u64) -> EngineResult<u64> {
        let Some(vmm) = self.vmm else {
            return Ok(0);
        };
        let mut bases = self.allocs.bases(|a| matches!(a.state, AllocState::Evicted(_)));
        if bases.is_empty() {
            return Ok(0);
        }
        bases.sort_unstable();
        let Some(store) = self.swap.as_mut() else {
            return Err(CuError(CUDA_ERROR_ILLEGAL_STATE));
        };
        let start = Instant::now();
        let allocs = &mut self.allocs;
        let (moved, copied, count, error) = run_pushed(self.base, || {
            let mut error = None;
            let mut mapped: Vec<(u64, usize, sys::CUmemGenericAllocationHandle)> = Vec::new();
            let mut undo = Vec::new();
            let mut planned = 0u64;
            for b in bases {
                let Some(DevAlloc { footprint, state: AllocState::Evicted(copy), .. }) = allocs.get(b) else {
                    continue;
                };
                if planned.saturating_add(*footprint) > max_bytes {
                    break;
                }
                planned = planned.saturating_add(*footprint);
                let len = *footprint as usize;
                // Device memory first: when it is full, this one and the
                // rest stay in host RAM, untouched.
                let handle = match vmm.map_new(b, len) {
                    Ok(h) => h,
                    Err(e) => {
                        error = Some(e);
                        break;
                    }
                };
                if let Err(e) = store.copy_in(b, copy) {
                    undo.push((b, len, handle));
                    error = Some(e);
                    break;
                }
                mapped.push((b, len, handle));
            }
            if let Err(e) = store.sync() {
                // Nothing is known to have arrived: all of it stays out.
                error = Some(e);
                undo.append(&mut mapped);
            }
            let (mut moved, mut copied, mut count) = (0u64, 0u64, 0usize);
            for (b, _, handle) in mapped {
                let Some(a) = allocs.remove(b) else { continue };
                if let AllocState::Evicted(copy) = a.state {
                    store.release(copy);
                }
                moved += a.footprint;
                copied += a.size;
                count += 1;
                allocs.insert(b, DevAlloc { state: AllocState::Mapped(handle), ..a });
            }
            if !undo.is_empty() {
                // Part of this VM's data may have arrived: zero it before the
                // memory goes back to the driver.
                let mut zeroed = Ok(());
                for &(b, len, _) in &undo {
                    zeroed = store.zero(b, len as u64);
                    if zeroed.is_err() {
                        break;
                    }
                }
                if let Err(e) = zeroed.and_then(|()| store.sync()) {
                    warn!(error = %e, "zeroing device memory of a failed swap-in; it goes back unscrubbed");
                }
                for (b, len, handle) in undo {
                    if let Err(e) = vmm.unmap(b, len) {
                        warn!(base = b, error = %e, "unmapping after a failed swap-in; it cannot come back");
                    }
                    vmm.release(handle);
                }
            }
            (moved, copied, count, error)
        })?;
        let secs = start.elapsed().as_secs_f64();
        let after = self.allocs.residency();
        info!(
            bytes = copied,
            footprint = moved,
            allocations = count,
            seconds = secs,
            gbps = copied as f64 / secs.max(1e-9) / 1e9,
            resident = after.resident,
            evicted = after.evicted,
            pinned_mib = self.swap.as_ref().map_or(0, |s| s.pinned_bytes() >> 20),
            "device memory swapped in from host RAM"
        );
        match error {
            Some(e) => Err(e),
            None => Ok(moved),
        }
    }

    fn next_swap_in(&self) -> u64 {
        let evicted = self.allocs.bases(|a| matches!(a.state, AllocState::Evicted(_)));
        evicted.into_iter().min().and_then(|b| self.allocs.get(b)).map_or(0, |a| a.footprint)
    }

    fn memcpy_htod(&mut self, dst: u64, src: HostSrc<'_>, stream: EngineStream, async_: bool) -> EngineResult<()> {
        self.enter()?;
        let s = cu_stream(stream);
        // The synchronous calls have the legacy stream's semantics natively.
        let legacy_sync = stream == EngineStream::NULL && !async_;
        match src {
            HostSrc::Bytes(b) => {
                if b.is_empty() {
                    return Ok(());
                }
                if legacy_sync {
                    // SAFETY: `b` is readable for its length for the whole call.
                    check(unsafe { sys::cuMemcpyHtoD_v2(dst, b.as_ptr().cast(), b.len()) })
                } else {
                    // SAFETY: as above; the synchronize below keeps `b` alive
                    // until the copy has read it (the batch frees it after).
                    check(unsafe { sys::cuMemcpyHtoDAsync_v2(dst, b.as_ptr().cast(), b.len(), s) })?;
                    // SAFETY: `s` is a stream of the current context or NULL.
                    check(unsafe { sys::cuStreamSynchronize(s) })
                }
            }
            HostSrc::Guest(span) => {
                // One asynchronous copy per extent, queued back to back so the
                // copy engine pipelines them (a guest buffer is many extents,
                // typically 2 MiB pages); a synchronous copy then waits once.
                // On the NULL stream this keeps the legacy stream's ordering.
                for_each_extent(&span, dst, |host, dev, len| {
                    // SAFETY: `host..host+len` lies in mapped guest RAM (checked
                    // when the span was built), which stays mapped until it is
                    // unregistered, and that first waits for all work.
                    check(unsafe { sys::cuMemcpyHtoDAsync_v2(dev, host.cast_const().cast(), len, s) })
                })?;
                if !async_ {
                    // SAFETY: `s` is a stream of the current context or NULL.
                    check(unsafe { sys::cuStreamSynchronize(s) })?;
                }
                Ok(())
            }
        }
    }

    fn memcpy_dtoh(&mut self, dst: HostDst<'_>, src: u64, stream: EngineStream, async_: bool) -> EngineResult<()> {
        self.enter()?;
        let s = cu_stream(stream);
        let legacy_sync = stream == EngineStream::NULL && !async_;
        match dst {
            HostDst::Bytes(b) => {
                if b.is_empty() {
                    return Ok(());
                }
                if legacy_sync {
                    // SAFETY: `b` is writable for its length for the whole call.
                    check(unsafe { sys::cuMemcpyDtoH_v2(b.as_mut_ptr().cast(), src, b.len()) })
                } else {
                    // SAFETY: as above; the reply must be complete on return,
                    // whatever `async_` says, so the stream is synchronized.
                    check(unsafe { sys::cuMemcpyDtoHAsync_v2(b.as_mut_ptr().cast(), src, b.len(), s) })?;
                    // SAFETY: `s` is a stream of the current context or NULL.
                    check(unsafe { sys::cuStreamSynchronize(s) })
                }
            }
            HostDst::Guest(span) => {
                // As for host-to-device: queue every extent, then wait once.
                for_each_extent(&span, src, |host, dev, len| {
                    // SAFETY: `host..host+len` lies in mapped guest RAM, which
                    // stays mapped until it is unregistered, and that first
                    // waits for all work.
                    check(unsafe { sys::cuMemcpyDtoHAsync_v2(host.cast(), dev, len, s) })
                })?;
                if !async_ {
                    // SAFETY: `s` is a stream of the current context or NULL.
                    check(unsafe { sys::cuStreamSynchronize(s) })?;
                }
                Ok(())
            }
        }
    }

    fn memcpy_dtod(&mut self, dst: u64, src: u64, len: u64, stream: EngineStream, async_: bool) -> EngineResult<()> {
        self.enter()?;
        let len = to_usize(len)?;
        if len == 0 {
            return Ok(());
        }
        if stream == EngineStream::NULL && !async_ {
            // SAFETY: device addresses only; the driver checks them.
            return check(unsafe { sys::cuMemcpyDtoD_v2(dst, src, len) });
        }
        let s = cu_stream(stream);
        // SAFETY: device addresses only; `s` is a stream of the current context.
        check(unsafe { sys::cuMemcpyDtoDAsync_v2(dst, src, len, s) })?;
        if !async_ {
            // SAFETY: as above.
            check(unsafe { sys::cuStreamSynchronize(s) })?;
        }
        Ok(())
    }

    fn memset(
        &mut self,
        dst: u64,
        value: u32,
        elem_size: u32,
        count: u64,
        stream: EngineStream,
        async_: bool,
    ) -> EngineResult<()> {
        self.enter()?;
        let n = to_usize(count)?;
        if !matches!(elem_size, 1 | 2 | 4) {
            return Err(CuError(CUDA_ERROR_INVALID_VALUE));
        }
        if n == 0 {
            return Ok(());
        }
        let s = cu_stream(stream);
        if stream == EngineStream::NULL && !async_ {
            // SAFETY: device addresses only, which the driver checks.
            return check(unsafe {
                match elem_size {
                    1 => sys::cuMemsetD8_v2(dst, value as u8, n),
                    2 => sys::cuMemsetD16_v2(dst, value as u16, n),
                    _ => sys::cuMemsetD32_v2(dst, value, n),
                }
            });
        }
        // SAFETY: device addresses only, which the driver checks; `s` is a
        // stream of the current context or NULL.
        check(unsafe {
            match elem_size {
                1 => sys::cuMemsetD8Async(dst, value as u8, n, s),
                2 => sys::cuMemsetD16Async(dst, value as u16, n, s),
                _ => sys::cuMemsetD32Async(dst, value, n, s),
            }
        })?;
        if !async_ {
            // SAFETY: as above.
            check(unsafe { sys::cuStreamSynchronize(s) })?;
        }
        Ok(())
    }

    fn module_load(&mut self, image: &[u8]) -> EngineResult<EngineModule> {
        self.enter()?;
        let image = driver_image(image)?;
        let mut log = vec![0u8; JIT_LOG_BYTES];
        let mut options =
            [sys::CUjit_option::CU_JIT_ERROR_LOG_BUFFER, sys::CUjit_option::CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES];
        let mut values: [*mut c_void; 2] = [log.as_mut_ptr().cast(), JIT_LOG_BYTES as *mut c_void];
        let mut module: sys::CUmodule = null_mut();
        // SAFETY: `image` is complete and NUL-terminated if text (see
        // `driver_image`); the option arrays have 2 entries each and the log
        // buffer is JIT_LOG_BYTES long, all alive for the call.
        let r = check(unsafe {
            sys::cuModuleLoadDataEx(
                &mut module,
                image.bytes().as_ptr().cast(),
                options.len() as c_uint,
                options.as_mut_ptr(),
                values.as_mut_ptr(),
            )
        });
        if let Err(e) = r {
            if e.0 == CUDA_ERROR_NO_BINARY_FOR_GPU {
                // Expected under lazy loading: NVIDIA's libraries register
                // images for other GPUs by the thousand (1200 to 2000 per
                // PyTorch or CuPy process on the H200), each asked once.
                debug!(error = %e, "module load: no code for this GPU");
            } else {
                warn!(error = %e, jit_log = %c_string_lossy(&log), "module load failed");
            }
            return Err(e);
        }
        Ok(EngineModule(module as u64))
    }

    fn module_unload(&mut self, module: EngineModule) -> EngineResult<()> {
        self.enter()?;
        // SAFETY: a module this engine loaded; the VM layer forgets it after.
        check(unsafe { sys::cuModuleUnload(module.0 as sys::CUmodule) })
    }

    fn module_get_function(&mut self, module: EngineModule, name: &str) -> EngineResult<(EngineFunc, FunctionInfo)> {
        self.enter()?;
        let cname = CString::new(name).map_err(|_| CuError(CUDA_ERROR_INVALID_VALUE))?;
        let mut func: sys::CUfunction = null_mut();
        // SAFETY: `func` is a valid out-pointer, `cname` is NUL-terminated and
        // `module` is a module this engine loaded.
        check(unsafe { sys::cuModuleGetFunction(&mut func, module.0 as sys::CUmodule, cname.as_ptr()) })?;
        // SAFETY: `func` is the function just obtained; out-pointers are valid.
        let params =
            collect_params(|i, offset, size| unsafe { sys::cuFuncGetParamInfo(func, i, offset, size) as u32 })?;
        let mut attrs = [0i32; NUM_FUNC_ATTRS];
        for (attr, slot) in attrs.iter_mut().enumerate() {
            let mut v: c_int = 0;
            // SAFETY: `v` is a valid out-pointer; unknown attributes give an
            // error, which reads as 0.
            let r = unsafe { (self.raw.func_get_attribute)(&mut v, attr as c_uint, func) };
            *slot = if r == CUDA_SUCCESS { v } else { 0 };
        }
        Ok((EngineFunc(func as u64), FunctionInfo { params, param_source: protocol::PARAMS_FROM_HOST_DRIVER, attrs }))
    }

    fn module_get_global(&mut self, module: EngineModule, name: &str) -> EngineResult<(u64, u64)> {
        self.enter()?;
        let cname = CString::new(name).map_err(|_| CuError(CUDA_ERROR_INVALID_VALUE))?;
        let (mut dptr, mut size): (sys::CUdeviceptr, usize) = (0, 0);
        // SAFETY: valid out-pointers, NUL-terminated name, a loaded module.
        check(unsafe { sys::cuModuleGetGlobal_v2(&mut dptr, &mut size, module.0 as sys::CUmodule, cname.as_ptr()) })?;
        Ok((dptr, size as u64))
    }

    fn func_set_attribute(&mut self, func: EngineFunc, attr: u32, value: i32) -> EngineResult<()> {
        self.enter()?;
        // SAFETY: a function of a loaded module; the driver rejects attribute
        // numbers it does not know with CUDA_ERROR_INVALID_VALUE.
        check_raw(unsafe { (self.raw.func_set_attribute)(func.0 as sys::CUfunction, attr, value) })
    }

    #[inline]
    fn launch(&mut self, func: EngineFunc, launch: &Launch<'_>) -> EngineResult<()> {
        self.enter()?;
        let mut size = launch.params.len();
        let mut extra = launch_extra(launch.params, &mut size);
        let extra_ptr = if launch.params.is_empty() { null_mut() } else { extra.as_mut_ptr() };
        let [gx, gy, gz] = launch.grid;
        let [bx, by, bz] = launch.block;
        if !launch.is_plain() {
            // Clusters and cooperative launches are launch attributes, which
            // only cuLaunchKernelEx takes.
            let (mut attrs, n) = ex_attributes(launch.cluster, launch.cooperative);
            let config = sys::CUlaunchConfig {
                gridDimX: gx,
                gridDimY: gy,
                gridDimZ: gz,
                blockDimX: bx,
                blockDimY: by,
                blockDimZ: bz,
                sharedMemBytes: launch.shared_mem,
                hStream: cu_stream(launch.stream),
                attrs: attrs.as_mut_ptr(),
                numAttrs: n as c_uint,
            };
            // SAFETY: as for cuLaunchKernel below; `config` and the `n`
            // attributes it points at live across the call.
            return check(unsafe { sys::cuLaunchKernelEx(&config, func.0 as sys::CUfunction, null_mut(), extra_ptr) });
        }
        // SAFETY: `func` is a function of a module loaded in the current
        // context; `extra` (or NULL when there are no parameters) points at
        // the packed parameters and their size, all alive for the call, which
        // copies them before returning.
        check(unsafe {
            sys::cuLaunchKernel(
                func.0 as sys::CUfunction,
                gx,
                gy,
                gz,
                bx,
                by,
                bz,
                launch.shared_mem,
                cu_stream(launch.stream),
                null_mut(),
                extra_ptr,
            )
        })
    }

    fn stream_create(&mut self, flags: u32, priority: i32) -> EngineResult<EngineStream> {
        self.enter()?;
        let mut s: sys::CUstream = null_mut();
        // SAFETY: `s` is a valid out-pointer.
        check(unsafe { sys::cuStreamCreateWithPriority(&mut s, flags, priority) })?;
        Ok(EngineStream(s as u64))
    }

    fn stream_destroy(&mut self, stream: EngineStream) -> EngineResult<()> {
        if stream == EngineStream::NULL {
            return Err(CuError(CUDA_ERROR_INVALID_HANDLE));
        }
        self.enter()?;
        // SAFETY: a stream this engine created; the VM layer forgets it after.
        check(unsafe { sys::cuStreamDestroy_v2(cu_stream(stream)) })
    }

    fn stream_synchronize(&mut self, stream: EngineStream) -> EngineResult<()> {
        self.enter()?;
        // SAFETY: a stream of the current context, or NULL.
        check(unsafe { sys::cuStreamSynchronize(cu_stream(stream)) })
    }

    fn stream_query(&mut self, stream: EngineStream) -> EngineResult<()> {
        self.enter()?;
        // SAFETY: a stream of the current context, or NULL.
        check(unsafe { sys::cuStreamQuery(cu_stream(stream)) })
    }

    fn stream_wait_event(&mut self, stream: EngineStream, event: EngineEvent, flags: u32) -> EngineResult<()> {
        self.enter()?;
        // SAFETY: a stream of the current context (or NULL) and an event this
        // engine created.
        check(unsafe { sys::cuStreamWaitEvent(cu_stream(stream), event.0 as sys::CUevent, flags) })
    }

    fn event_create(&mut self, flags: u32) -> EngineResult<EngineEvent> {
        self.enter()?;
        let mut e: sys::CUevent = null_mut();
        // SAFETY: `e` is a valid out-pointer.
        check(unsafe { sys::cuEventCreate(&mut e, flags) })?;
        Ok(EngineEvent(e as u64))
    }

    fn event_destroy(&mut self, event: EngineEvent) -> EngineResult<()> {
        self.enter()?;
        // SAFETY: an event this engine created; the VM layer forgets it after.
        check(unsafe { sys::cuEventDestroy_v2(event.0 as sys::CUevent) })
    }

    fn event_record(&mut self, event: EngineEvent, stream: EngineStream) -> EngineResult<()> {
        self.enter()?;
        // SAFETY: an event this engine created; a stream of the current
        // context, or NULL.
        check(unsafe { sys::cuEventRecord(event.0 as sys::CUevent, cu_stream(stream)) })
    }

    fn event_query(&mut self, event: EngineEvent) -> EngineResult<()> {
        self.enter()?;
        // SAFETY: an event this engine created. NOT_READY maps to Err(600).
        check(unsafe { sys::cuEventQuery(event.0 as sys::CUevent) })
    }

    fn event_synchronize(&mut self, event: EngineEvent) -> EngineResult<()> {
        self.enter()?;
        // SAFETY: an event this engine created.
        check(unsafe { sys::cuEventSynchronize(event.0 as sys::CUevent) })
    }

    fn event_elapsed_ms(&mut self, start: EngineEvent, end: EngineEvent) -> EngineResult<f32> {
        self.enter()?;
        let mut ms = 0f32;
        // SAFETY: `ms` is a valid out-pointer; events this engine created.
        check(unsafe { sys::cuEventElapsedTime_v2(&mut ms, start.0 as sys::CUevent, end.0 as sys::CUevent) })?;
        Ok(ms)
    }

    fn graph_instantiate(&mut self, graph: &GraphSpec<'_>, host: &[GuestSpan<'_>]) -> EngineResult<EngineGraphExec> {
        self.graph_instantiate_impl(graph, host)
    }

    fn graph_exec_destroy(&mut self, exec: EngineGraphExec) -> EngineResult<()> {
        self.graph_exec_destroy_impl(exec)
    }

    fn graph_launch(
        &mut self,
        exec: EngineGraphExec,
        stream: EngineStream,
        host: &[GuestSpan<'_>],
    ) -> EngineResult<()> {
        self.graph_launch_impl(exec, stream, host)
    }

    fn graph_exec_update_node(&mut self, exec: EngineGraphExec, index: u32, node: &GraphNode<'_>) -> EngineResult<()> {
        self.graph_exec_update_node_impl(exec, index, node)
    }

    fn occupancy(&mut self, func: EngineFunc, kind: u32, flags: u32, item: &OccupancyItem) -> EngineResult<u64> {
        self.occupancy_impl(func, kind, flags, item)
    }

    fn vmm_granularity(&self) -> Option<u64> {
        self.vmm.map(|v| v.granularity)
    }

    fn va_reserve(&mut self, size: u64, align: u64, hint: u64) -> EngineResult<u64> {
        let vmm = self.vmm.ok_or(CuError(CUDA_ERROR_NOT_SUPPORTED))?;
        let (len, align) = (to_usize(size)?, to_usize(align)?);
        let mut va: sys::CUdeviceptr = 0;
        // SAFETY: valid out-pointer; size and alignment are multiples of the
        // granularity (the VM layer checks), the hint is only a hint, no flags.
        with_pushed(self.base, || check_raw(unsafe { (vmm.fns.address_reserve)(&mut va, len, align, hint, 0) }))?;
        self.guest_va.insert(va, size);
        Ok(va)
    }

    fn va_free(&mut self, va: u64, size: u64) -> EngineResult<()> {
        let vmm = self.vmm.ok_or(CuError(CUDA_ERROR_NOT_SUPPORTED))?;
        if self.guest_va.get(&va) != Some(&size) {
            return Err(CuError(CUDA_ERROR_INVALID_VALUE));
        }
        let len = to_usize(size)?;
        // SAFETY: a whole range reserved by `va_reserve`, nothing mapped in it
        // (the VM layer unmaps first), freed once: it leaves the table here.
        with_pushed(self.base, || check_raw(unsafe { (vmm.fns.address_free)(va, len) }))?;
        self.guest_va.remove(&va);
        Ok(())
    }

    fn phys_create(&mut self, size: u64) -> EngineResult<EnginePhys> {
        let vmm = self.vmm.ok_or(CuError(CUDA_ERROR_NOT_SUPPORTED))?;
        let len = to_usize(size)?;
        let handle = with_pushed(self.base, || vmm.create(len))?;
        self.guest_phys.insert(handle, size);
        self.guest_phys_bytes = self.guest_phys_bytes.saturating_add(size);
        Ok(EnginePhys(handle))
    }

    fn phys_zero(&mut self, phys: EnginePhys, mapped_at: Option<u64>) -> EngineResult<()> {
        let vmm = self.vmm.ok_or(CuError(CUDA_ERROR_NOT_SUPPORTED))?;
        let len = to_usize(*self.guest_phys.get(&phys.0).ok_or(CuError(CUDA_ERROR_INVALID_HANDLE))?)?;
        // No kernel or copy of any context may write it after the zeroes.
        self.synchronize_all();
        let zero = |va: u64| {
            // SAFETY: `va..va + len` is mapped readable and writable for this
            // device; the synchronize makes the memset finish before return.
            check(unsafe { sys::cuMemsetD8_v2(va, 0, len) }).and_then(|()| check(unsafe { sys::cuCtxSynchronize() }))
        };
        with_pushed(self.base, || match mapped_at {
            Some(va) => zero(va),
            None => {
                // Mapped nowhere: map it for the memset, at addresses of its own.
                let mut va: sys::CUdeviceptr = 0;
                // SAFETY: valid out-pointer; granularity-aligned, no hint or flags.
                check_raw(unsafe { (vmm.fns.address_reserve)(&mut va, len, vmm.granularity as usize, 0, 0) })?;
                let zeroed = vmm.map_handle(va, len, phys.0).and_then(|()| {
                    let z = zero(va);
                    z.and(vmm.unmap(va, len))
                });
                vmm.address_free(va, len);
                zeroed
            }
        })
    }

    fn phys_release(&mut self, phys: EnginePhys) -> EngineResult<()> {
        let vmm = self.vmm.ok_or(CuError(CUDA_ERROR_NOT_SUPPORTED))?;
        let size = self.guest_phys.remove(&phys.0).ok_or(CuError(CUDA_ERROR_INVALID_HANDLE))?;
        self.guest_phys_bytes = self.guest_phys_bytes.saturating_sub(size);
        // SAFETY: a handle `phys_create` made, mapped nowhere (the VM layer
        // unmaps first), released once: it left the table above.
        with_pushed(self.base, || check_raw(unsafe { (vmm.fns.release)(phys.0) }))
    }

    fn mem_map(&mut self, va: u64, size: u64, phys: EnginePhys) -> EngineResult<()> {
        let vmm = self.vmm.ok_or(CuError(CUDA_ERROR_NOT_SUPPORTED))?;
        if self.guest_phys.get(&phys.0).is_none_or(|&held| size > held) {
            return Err(CuError(CUDA_ERROR_INVALID_VALUE));
        }
        let len = to_usize(size)?;
        with_pushed(self.base, || vmm.map_handle(va, len, phys.0))?;
        self.guest_maps.insert(va, size);
        Ok(())
    }

    fn mem_unmap(&mut self, va: u64, size: u64) -> EngineResult<()> {
        let vmm = self.vmm.ok_or(CuError(CUDA_ERROR_NOT_SUPPORTED))?;
        if self.guest_maps.get(&va) != Some(&size) {
            return Err(CuError(CUDA_ERROR_INVALID_VALUE));
        }
        let len = to_usize(size)?;
        // Unmapping memory that a kernel or copy still uses would fault it.
        self.synchronize_all();
        with_pushed(self.base, || vmm.unmap(va, len))?;
        self.guest_maps.remove(&va);
        Ok(())
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::guest_mem::{Extent, GuestMemory};
    use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

    #[test]
    fn driver_results_become_the_guests_cuda_errors() {
        assert_eq!(check(sys::CUresult::CUDA_SUCCESS), Ok(()));
        assert_eq!(check(sys::CUresult::CUDA_ERROR_NOT_READY), Err(CuError(CUDA_ERROR_NOT_READY)));
        assert_eq!(check(sys::CUresult::CUDA_ERROR_ILLEGAL_ADDRESS), Err(CuError(CUDA_ERROR_ILLEGAL_ADDRESS)));
        assert_eq!(check(sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY), Err(CuError(CUDA_ERROR_OUT_OF_MEMORY)));
        assert_eq!(check(sys::CUresult::CUDA_ERROR_INVALID_PTX), Err(CuError(CUDA_ERROR_INVALID_PTX)));
        assert_eq!(check_raw(0), Ok(()));
        // Codes newer than the bindings pass through unchanged.
        assert_eq!(check_raw(12345), Err(CuError(12345)));
    }

    #[test]
    fn launch_extra_points_at_the_packed_buffer_and_its_size() {
        let params = [7u8; 24];
        let mut size = params.len();
        let extra = launch_extra(&params, &mut size);
        assert_eq!(extra[0] as usize, 1, "CU_LAUNCH_PARAM_BUFFER_POINTER");
        assert_eq!(extra[1] as usize, params.as_ptr() as usize);
        assert_eq!(extra[2] as usize, 2, "CU_LAUNCH_PARAM_BUFFER_SIZE");
        // SAFETY: extra[3] points at `size`, which is alive.
        assert_eq!(unsafe { *(extra[3] as *const usize) }, 24);
        assert!(extra[4].is_null(), "CU_LAUNCH_PARAM_END");
    }

    fn fatbin(payload_len: usize, declared: u64) -> Vec<u8> {
        let mut v = FATBIN_MAGIC.to_le_bytes().to_vec();
        v.extend_from_slice(&1u16.to_le_bytes()); // version
        v.extend_from_slice(&16u16.to_le_bytes()); // header_size
        v.extend_from_slice(&declared.to_le_bytes()); // fat_size
                                                      // One cubin entry filling the declared size: a 64-byte header, no
                                                      // options record, then the payload.
        v.extend_from_slice(&2u16.to_le_bytes());
        v.extend_from_slice(&0x0101u16.to_le_bytes());
        v.extend_from_slice(&64u32.to_le_bytes());
        v.extend_from_slice(&declared.saturating_sub(64).to_le_bytes());
        v.resize(16 + 64, 0);
        v.resize(16 + payload_len, 0xab);
        v
    }

    #[test]
    fn ptx_without_a_nul_gets_one_and_ptx_with_one_ends_there() {
        let ptx = b".version 7.8\n.target sm_80\n";
        let img = driver_image(ptx).unwrap();
        assert_eq!(img.bytes().len(), ptx.len() + 1);
        assert_eq!(&img.bytes()[..ptx.len()], ptx);
        assert_eq!(img.bytes().last(), Some(&0));
        assert_eq!((img.bytes().as_ptr() as usize) & (IMAGE_ALIGN - 1), 0);

        let with_nul = b".version 7.8\n\0trailing junk";
        let img = driver_image(with_nul).unwrap();
        assert_eq!(img.bytes(), b".version 7.8\n\0");
        assert_eq!(img.bytes().as_ptr(), with_nul.as_ptr(), "no copy needed");
    }

    #[test]
    fn binary_images_must_hold_what_their_headers_claim() {
        let complete = fatbin(96, 96);
        assert_eq!(driver_image(&complete).unwrap().bytes().len(), 112);
        let truncated = fatbin(96, 4096);
        assert!(matches!(driver_image(&truncated), Err(CuError(CUDA_ERROR_INVALID_IMAGE))));
        // Trailing bytes past the image are not handed over.
        let mut longer = fatbin(96, 80);
        longer.extend_from_slice(&[1, 2, 3]);
        assert_eq!(driver_image(&longer).unwrap().bytes().len(), 96);
        // Nor an entry whose options record the driver would follow outside
        // the header (a PTX entry without one).
        let mut ptx = fatbin(96, 96);
        ptx[16] = 1;
        assert!(matches!(driver_image(&ptx), Err(CuError(CUDA_ERROR_INVALID_IMAGE))));
        let mut elf = ELF_MAGIC.to_vec();
        elf.resize(40, 0);
        assert!(matches!(driver_image(&elf), Err(CuError(CUDA_ERROR_INVALID_IMAGE))));
    }

    #[test]
    fn misaligned_binary_images_are_copied_to_an_aligned_buffer() {
        let image = fatbin(104, 104);
        let mut holder = [0u64; 16];
        let bytes = &mut holder.as_mut_bytes()[1..1 + image.len()];
        bytes.copy_from_slice(&image);
        let img = driver_image(bytes).unwrap();
        assert_eq!(img.bytes(), &image[..]);
        assert_eq!((img.bytes().as_ptr() as usize) & (IMAGE_ALIGN - 1), 0);
    }

    #[test]
    fn fatbin_wrappers_are_refused() {
        let mut w = FATBIN_WRAPPER_MAGIC.to_le_bytes().to_vec();
        w.extend_from_slice(&[1, 0, 0, 0]);
        w.extend_from_slice(&0x7fff_0000_1000u64.to_le_bytes());
        w.extend_from_slice(&0u64.to_le_bytes());
        assert!(matches!(driver_image(&w), Err(CuError(CUDA_ERROR_INVALID_IMAGE))));
    }

    #[test]
    fn param_layout_is_read_until_the_driver_says_invalid_value() {
        let layout = [(0usize, 8usize), (8, 4), (16, 8)];
        let params = collect_params(|i, o, s| match layout.get(i) {
            Some(&(off, size)) => {
                *o = off;
                *s = size;
                CUDA_SUCCESS
            }
            None => CUDA_ERROR_INVALID_VALUE,
        })
        .unwrap();
        let got: Vec<(u32, u32)> = params.iter().map(|p| (p.offset.get(), p.size.get())).collect();
        assert_eq!(got, vec![(0, 8), (8, 4), (16, 8)]);
        assert!(collect_params(|_, _, _| CUDA_ERROR_INVALID_VALUE).unwrap().is_empty());
        assert_eq!(collect_params(|_, _, _| CUDA_ERROR_INVALID_CONTEXT), Err(CuError(CUDA_ERROR_INVALID_CONTEXT)));
    }

    #[test]
    fn extents_are_copied_at_consecutive_device_addresses() {
        let mem: GuestMemory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0x1000), 0x10000)]).unwrap();
        let backing =
            [Extent { addr: GuestAddress(0x8000), len: 0x100 }, Extent { addr: GuestAddress(0x2000), len: 0x100 }];
        let span = GuestSpan::new(&mem, &backing, 0xf0, 0x20).unwrap();
        let mut seen = Vec::new();
        for_each_extent(&span, 0x7f00_0000_0000, |host, dev, len| {
            seen.push((host as usize, dev, len));
            Ok(())
        })
        .unwrap();
        let h = |a: u64| mem.get_host_address(GuestAddress(a)).unwrap() as usize;
        assert_eq!(seen, vec![(h(0x80f0), 0x7f00_0000_0000, 0x10), (h(0x2000), 0x7f00_0000_0010, 0x10)]);
        // A device range that wraps is refused before anything is copied.
        let r = for_each_extent(&span, u64::MAX - 4, |_, _, _| panic!("copied"));
        assert_eq!(r, Err(CuError(CUDA_ERROR_INVALID_VALUE)));
    }

    fn alloc(size: u64, footprint: u64, ctx: u64, state: AllocState) -> DevAlloc {
        DevAlloc { size, footprint, ctx, state }
    }

    #[test]
    fn residency_counts_footprints_through_every_change_of_state() {
        let mut t = Allocations::default();
        t.insert(0x1000, alloc(10, 2 << 20, 1, AllocState::Mapped(7)));
        t.insert(0x9000, alloc(5, 5, 1, AllocState::Plain));
        t.insert(0x8000_0000, alloc(3 << 20, 4 << 20, 2, AllocState::Evicted(HostCopy::detached(3 << 20))));
        assert_eq!(t.residency(), Residency { resident: (2 << 20) + 5, evicted: 4 << 20 });
        // Swapped out: the footprint moves from resident to evicted.
        let a = t.remove(0x1000).unwrap();
        t.insert(0x1000, DevAlloc { state: AllocState::Evicted(HostCopy::detached(a.size)), ..a });
        assert_eq!(t.residency(), Residency { resident: 5, evicted: (2 << 20) + (4 << 20) });
        // Swapped back in.
        let a = t.remove(0x8000_0000).unwrap();
        t.insert(0x8000_0000, DevAlloc { state: AllocState::Mapped(9), ..a });
        assert_eq!(t.residency(), Residency { resident: 5 + (4 << 20), evicted: 2 << 20 });
        let mut owned = t.bases(|a| a.ctx == 1);
        owned.sort_unstable();
        assert_eq!(owned, vec![0x1000, 0x9000]);
        for b in [0x1000, 0x9000, 0x8000_0000] {
            assert!(t.remove(b).is_some());
        }
        assert!(t.remove(0x1000).is_none());
        assert_eq!(t.residency(), Residency::default());
    }

    #[test]
    fn swap_out_moves_the_largest_allocations_that_fit_the_bound_until_keep_is_met() {
        let c = vec![(2, 0xa), (8, 0xb), (4, 0xc), (8, 0xd)];
        let all = u64::MAX;
        assert_eq!(pick_victims(c.clone(), 22, 22, all), Vec::<u64>::new());
        assert_eq!(pick_victims(c.clone(), 22, 20, all), vec![0xd]);
        assert_eq!(pick_victims(c.clone(), 22, 14, all), vec![0xd]);
        assert_eq!(pick_victims(c.clone(), 22, 13, all), vec![0xd, 0xb]);
        assert_eq!(pick_victims(c.clone(), 22, 0, all), vec![0xd, 0xb, 0xc, 0xa]);
        // The bound on bytes moved holds: too-large ones are passed over.
        assert_eq!(pick_victims(c.clone(), 22, 0, 6), vec![0xc, 0xa]);
        assert_eq!(pick_victims(c.clone(), 22, 0, 1), Vec::<u64>::new());
        assert_eq!(pick_victims(c.clone(), 22, 13, 12), vec![0xd, 0xc]);
    }

    #[test]
    fn c_strings_stop_at_the_nul() {
        assert_eq!(c_string_lossy(b"NVIDIA H100 80GB HBM3\0\0junk"), "NVIDIA H100 80GB HBM3");
        assert_eq!(c_string_lossy(b"no nul"), "no nul");
        assert_eq!(c_string_lossy(b"\xff\0"), "\u{fffd}");
    }

    /// The driver entry points `src` calls through `sys::`.
    pub(in crate::engine) fn driver_calls(src: &str) -> Vec<&str> {
        let mut called = Vec::new();
        for (i, _) in src.match_indices("sys::cu") {
            let rest = &src[i + 5..];
            let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
            let (name, after) = rest.split_at(end);
            if name.as_bytes().get(2).is_some_and(u8::is_ascii_uppercase) && after.starts_with('(') {
                called.push(name);
            }
        }
        called
    }

    /// cudarc panics on a missing symbol, so every entry point called through
    /// `sys::` must be in the list checked before the first call.
    #[test]
    fn every_driver_call_is_checked_for_presence() {
        let src = include_str!("cuda.rs");
        let mut called = driver_calls(src);
        called.extend(driver_calls(include_str!("cuda/graph.rs")));
        for needle in ["\"cuDeviceGetAttribute\"", "\"cuFuncGetAttribute\"", "\"cuFuncSetAttribute\""] {
            assert!(src.contains(needle));
        }
        assert!(called.len() > 40, "parsed {} calls", called.len());
        for name in called {
            assert!(REQUIRED_SYMBOLS.contains(&name), "{name} is called but not in REQUIRED_SYMBOLS");
        }
    }

    #[test]
    fn a_missing_driver_is_an_error_not_a_panic() {
        // SAFETY: only tries to load the library.
        if unsafe { sys::is_culib_present() } {
            return; // a driver host: the GPU test below covers it
        }
        assert!(CudaEngine::probe().is_err());
        assert!(CudaEngine::host_driver_version().is_none());
        assert_eq!(CudaEngine::new(0).err(), Some(CuError(CUDA_ERROR_NO_DEVICE)));
    }

    /// The whole engine on a real GPU; does nothing where there is none.
    #[test]
    fn gpu_end_to_end() {
        let name = match CudaEngine::probe() {
            Ok(n) => n,
            Err(why) => {
                eprintln!("skipping GPU test: {why}");
                return;
            }
        };
        gpu::run(&name);
    }

    mod gpu {
        use super::*;
        use std::time::Instant;

        const PTX: &str = include_str!("../../../guest-tests/kernels.ptx");
        const NON_BLOCKING: u32 = 1;

        fn fill_params(ptr: u64, value: u32, n: u64) -> [u8; 24] {
            let mut p = [0u8; 24];
            p[0..8].copy_from_slice(&ptr.to_le_bytes());
            p[8..12].copy_from_slice(&value.to_le_bytes());
            p[16..24].copy_from_slice(&n.to_le_bytes());
            p
        }

        fn read_u32s(e: &mut CudaEngine, dptr: u64, n: usize, stream: EngineStream) -> Vec<u32> {
            let mut buf = vec![0u8; n * 4];
            e.memcpy_dtoh(HostDst::Bytes(&mut buf), dptr, stream, false).unwrap();
            buf.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
        }

        pub fn run(name: &str) {
            eprintln!("GPU: {name}, driver {:?}", CudaEngine::host_driver_version());
            let mut e = CudaEngine::new(0).expect("engine");
            let info = e.device_info().clone();
            eprintln!(
                "info: name={} total={} MiB driver={} cc={}.{} sms={} uuid={:02x?}",
                info.name,
                info.total_mem >> 20,
                info.driver_version,
                info.attrs[75],
                info.attrs[76],
                info.attrs[16],
                info.uuid
            );
            assert_eq!(info.name, name);
            assert!(info.total_mem > 0 && info.attrs[16] > 0 && info.attrs[75] >= 7 && info.attrs[1] == 1024);
            assert_ne!(info.uuid, [0; 16]);
            assert_eq!(e.kind(), EngineKind::Cuda);

            // No context chosen yet.
            assert_eq!(e.mem_alloc(16), Err(CuError(CUDA_ERROR_INVALID_CONTEXT)));
            let (free, total) = e.mem_get_info().expect("mem_get_info on the base context");
            assert!(free <= total && total > 0);

            let a = e.ctx_create(0).unwrap();
            let b = e.ctx_create(0).unwrap();
            assert_ne!(a, b);
            e.ctx_set_current(a).unwrap();
            assert_eq!(e.ctx_set_current(EngineCtx(0xdead_0000)), Err(CuError(CUDA_ERROR_INVALID_CONTEXT)));

            // Sync memset and readback on the legacy stream.
            const N: usize = 1 << 20;
            let d = e.mem_alloc((N * 4) as u64).unwrap();
            e.memset(d, 0xdead_beef, 4, N as u64, EngineStream::NULL, false).unwrap();
            assert!(read_u32s(&mut e, d, N, EngineStream::NULL).iter().all(|&v| v == 0xdead_beef));
            e.memset(d, 0x11, 1, 8, EngineStream::NULL, false).unwrap();
            assert_eq!(read_u32s(&mut e, d, 3, EngineStream::NULL), vec![0x1111_1111, 0x1111_1111, 0xdead_beef]);

            // PTX without a NUL, functions and their layout.
            let m = e.module_load(PTX.as_bytes()).unwrap();
            let (fill, fi) = e.module_get_function(m, "gv_fill_u32").unwrap();
            let layout: Vec<(u32, u32)> = fi.params.iter().map(|p| (p.offset.get(), p.size.get())).collect();
            eprintln!("gv_fill_u32 params {layout:?} attrs {:?}", fi.attrs);
            assert_eq!(layout, vec![(0, 8), (8, 4), (16, 8)]);
            assert_eq!(fi.param_source, protocol::PARAMS_FROM_HOST_DRIVER);
            assert!(fi.attrs[0] > 0, "MAX_THREADS_PER_BLOCK");
            let (empty, ei) = e.module_get_function(m, "gv_empty").unwrap();
            assert!(ei.params.is_empty());
            let (spin, _) = e.module_get_function(m, "gv_spin_us").unwrap();
            assert_eq!(e.module_get_function(m, "no_such_kernel").err(), Some(CuError(CUDA_ERROR_NOT_FOUND)));
            assert_eq!(
                e.module_load(b"this is not ptx")
                    .err()
                    .map(|c| c.0 == CUDA_ERROR_INVALID_PTX || c.0 == CUDA_ERROR_INVALID_IMAGE),
                Some(true)
            );
            e.func_set_attribute(fill, 8, 1024).unwrap();
            assert_eq!(e.func_set_attribute(fill, 999, 1), Err(CuError(CUDA_ERROR_INVALID_VALUE)));

            // A launch on a stream between two events.
            let s = e.stream_create(NON_BLOCKING, 0).unwrap();
            let (ev0, ev1) = (e.event_create(0).unwrap(), e.event_create(0).unwrap());
            e.event_record(ev0, s).unwrap();
            let params = fill_params(d, 7, N as u64);
            let launch = Launch::plain([256, 1, 1], [256, 1, 1], s, &params);
            e.launch(fill, &launch).unwrap();
            e.event_record(ev1, s).unwrap();
            e.event_synchronize(ev1).unwrap();
            let ms = e.event_elapsed_ms(ev0, ev1).unwrap();
            assert!(ms >= 0.0);
            e.stream_query(s).unwrap();
            e.event_query(ev1).unwrap();
            assert!(read_u32s(&mut e, d, N, s).iter().all(|&v| v == 7));

            // NOT_READY while a kernel spins, then ready.
            let spin_params = 200_000u64.to_le_bytes();
            let sl = Launch::plain([1, 1, 1], [1, 1, 1], s, &spin_params);
            e.launch(spin, &sl).unwrap();
            e.event_record(ev1, s).unwrap();
            assert_eq!(e.event_query(ev1), Err(CuError(CUDA_ERROR_NOT_READY)));
            assert_eq!(e.stream_query(s), Err(CuError(CUDA_ERROR_NOT_READY)));
            e.stream_synchronize(s).unwrap();
            e.event_query(ev1).unwrap();

            // A stream waits for an event of another stream.
            let s2 = e.stream_create(NON_BLOCKING, 0).unwrap();
            e.launch(spin, &Launch { stream: s2, ..sl }).unwrap();
            e.event_record(ev0, s2).unwrap();
            e.stream_wait_event(s, ev0, 0).unwrap();
            e.launch(fill, &Launch { stream: s, ..launch }).unwrap();
            assert_eq!(e.stream_query(s), Err(CuError(CUDA_ERROR_NOT_READY)));
            e.ctx_synchronize().unwrap();

            // Inline bytes, async on a stream, then device to device.
            let bytes: Vec<u8> = (0..4096u32).flat_map(|i| i.to_le_bytes()).collect();
            e.memcpy_htod(d, HostSrc::Bytes(&bytes), s, true).unwrap();
            let d2 = e.mem_alloc(bytes.len() as u64).unwrap();
            e.memcpy_dtod(d2, d, bytes.len() as u64, s, true).unwrap();
            let back = read_u32s(&mut e, d2, 4096, s);
            assert!(back.iter().enumerate().all(|(i, &v)| v == i as u32));
            e.memcpy_htod(d, HostSrc::Bytes(&bytes[..8]), EngineStream::NULL, false).unwrap();

            // Guest RAM: registered, copied through two extents each way.
            let mem: GuestMemory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
            let host = mem.get_host_address(GuestAddress(0)).unwrap();
            let regions = [HostRegion { addr: host, len: 64 << 20 }];
            e.register_host_memory(&regions).unwrap();
            assert_eq!(e.registered.len(), 1, "registration failed (see log)");
            let backing = [
                Extent { addr: GuestAddress(0x30_0000), len: 0x1000 },
                Extent { addr: GuestAddress(0x1000), len: 0x3000 },
            ];
            let src = GuestSpan::new(&mem, &backing, 0, 0x4000).unwrap();
            let pattern: Vec<u8> = (0..0x4000u32).map(|i| (i * 7 % 251) as u8).collect();
            src.write_from(&pattern);
            for (stream, async_) in [(EngineStream::NULL, false), (s, false), (s, true)] {
                e.memset(d2, 0, 1, 0x4000, EngineStream::NULL, false).unwrap();
                e.ctx_synchronize().unwrap(); // `s` does not wait for the legacy stream
                e.memcpy_htod(d2, HostSrc::Guest(src.clone()), stream, async_).unwrap();
                let dst_backing = [
                    Extent { addr: GuestAddress(0x200_0000), len: 0x2000 },
                    Extent { addr: GuestAddress(0x10_0000), len: 0x2000 },
                ];
                let dst = GuestSpan::new(&mem, &dst_backing, 0, 0x4000).unwrap();
                e.memcpy_dtoh(HostDst::Guest(dst.clone()), d2, stream, async_).unwrap();
                if async_ {
                    e.stream_synchronize(stream).unwrap();
                }
                let mut got = vec![0u8; 0x4000];
                dst.read_into(&mut got);
                assert_eq!(got, pattern, "stream {stream:?} async {async_}");
            }
            // Bandwidth from registered guest RAM, for the log.
            let big = e.mem_alloc(32 << 20).unwrap();
            let all = [Extent { addr: GuestAddress(0), len: 32 << 20 }];
            let span = GuestSpan::new(&mem, &all, 0, 32 << 20).unwrap();
            let t = Instant::now();
            for _ in 0..10 {
                e.memcpy_htod(big, HostSrc::Guest(span.clone()), EngineStream::NULL, false).unwrap();
            }
            let gbs = (320u64 << 20) as f64 / t.elapsed().as_secs_f64() / 1e9;
            eprintln!("H2D from registered guest RAM: {gbs:.1} GB/s");
            e.mem_free(big).unwrap();
            e.unregister_host_memory(&regions).unwrap();
            assert!(e.registered.is_empty());

            // Launch rate with no parameters and with 24 bytes of them.
            for (what, f, p) in [("empty", empty, &[][..]), ("fill n=0", fill, &fill_params(d, 0, 0)[..])] {
                let l = Launch::plain([1, 1, 1], [32, 1, 1], s, p);
                let t = Instant::now();
                for _ in 0..100_000 {
                    e.launch(f, &l).unwrap();
                }
                e.stream_synchronize(s).unwrap();
                eprintln!("launches ({what}): {:.0}/s", 100_000.0 / t.elapsed().as_secs_f64());
            }

            // The other context, then destroyed while the first goes on.
            e.ctx_set_current(b).unwrap();
            let db = e.mem_alloc(4096).unwrap();
            let mb = e.module_load(PTX.as_bytes()).unwrap();
            let (fb, _) = e.module_get_function(mb, "gv_fill_u32").unwrap();
            let pb = fill_params(db, 9, 1024);
            e.launch(fb, &Launch::plain([4, 1, 1], [256, 1, 1], EngineStream::NULL, &pb)).unwrap();
            assert!(read_u32s(&mut e, db, 1024, EngineStream::NULL).iter().all(|&v| v == 9));
            e.ctx_destroy(b).unwrap();
            assert_eq!(e.mem_alloc(16), Err(CuError(CUDA_ERROR_INVALID_CONTEXT)));
            e.ctx_set_current(a).unwrap();

            // The engine moves to another thread (as behind the VM's Mutex).
            let e = std::thread::spawn(move || {
                let mut e = e;
                e.launch(fill, &Launch::plain([256, 1, 1], [256, 1, 1], s, &fill_params(d, 5, N as u64))).unwrap();
                assert!(read_u32s(&mut e, d, N, s).iter().all(|&v| v == 5));
                e
            })
            .join()
            .unwrap();
            let mut e = e;
            e.launch(fill, &Launch { stream: EngineStream::NULL, ..launch }).unwrap();
            e.ctx_synchronize().unwrap();

            swap(&mut e, d, N);

            // Globals: the PTX has none; asking is NOT_FOUND, not a crash.
            assert_eq!(e.module_get_global(m, "nope").err(), Some(CuError(CUDA_ERROR_NOT_FOUND)));
            e.event_destroy(ev0).unwrap();
            e.event_destroy(ev1).unwrap();
            e.stream_destroy(s2).unwrap();
            e.stream_destroy(s).unwrap();
            assert_eq!(e.stream_destroy(EngineStream::NULL), Err(CuError(CUDA_ERROR_INVALID_HANDLE)));
            e.module_unload(m).unwrap();
            e.mem_free(d2).unwrap();
            e.mem_free(d).unwrap();
            e.ctx_destroy(a).unwrap();
            let c = e.ctx_create(0).unwrap();
            e.ctx_set_current(c).unwrap();
            e.mem_alloc(1 << 20).unwrap(); // freed with the engine's contexts on drop
            drop(e);
            swap_rates();
            guest_virtual_memory();
            eprintln!("GPU test done");
        }

        /// The primitives the guest's virtual-memory API and pools stand on:
        /// two physical allocations mapped back to back are one range for
        /// copies and kernels, zeroing reaches all of a handle whether or
        /// not it is mapped, and the memory counts as resident, pinned.
        fn guest_virtual_memory() {
            let mut e = CudaEngine::new(0).unwrap();
            let Some(g) = e.vmm_granularity() else {
                assert_eq!(e.device_info().attrs[102], 0, "no VMM: not advertised");
                return;
            };
            assert_eq!(e.device_info().attrs[102], 1);
            assert_eq!(e.device_info().attrs[115], 1);
            let c = e.ctx_create(0).unwrap();
            e.ctx_set_current(c).unwrap();
            let va = e.va_reserve(4 * g, g, 0).unwrap();
            let (p1, p2) = (e.phys_create(g).unwrap(), e.phys_create(g).unwrap());
            assert_eq!(e.residency().resident, 2 * g);
            e.mem_map(va, g, p1).unwrap();
            e.mem_map(va + g, g, p2).unwrap();
            let data = pattern(7, 1 << 16);
            let at = va + g - (1 << 15);
            e.memcpy_htod(at, HostSrc::Bytes(&data), EngineStream::NULL, false).unwrap();
            let mut back = vec![0u8; data.len()];
            e.memcpy_dtoh(HostDst::Bytes(&mut back), at, EngineStream::NULL, false).unwrap();
            assert!(back == data, "a copy across the two mappings came back different");
            let m = e.module_load(PTX.as_bytes()).unwrap();
            let (fill, _) = e.module_get_function(m, "gv_fill_u32").unwrap();
            let params = fill_params(va + g - 64, 0x1234_5678, 32);
            let l = Launch::plain([1, 1, 1], [32, 1, 1], EngineStream::NULL, &params);
            e.launch(fill, &l).unwrap();
            e.ctx_synchronize().unwrap();
            assert!(read_u32s(&mut e, va + g - 64, 32, EngineStream::NULL).iter().all(|&v| v == 0x1234_5678));
            // Zeroed through its mapping, and mapped nowhere.
            e.phys_zero(p1, Some(va)).unwrap();
            e.mem_unmap(va + g, g).unwrap();
            e.phys_zero(p2, None).unwrap();
            e.mem_map(va + 2 * g, g, p2).unwrap();
            assert!(read_u32s(&mut e, va + g - 4096, 1024, EngineStream::NULL).iter().all(|&v| v == 0));
            assert!(read_u32s(&mut e, va + 2 * g, 1024, EngineStream::NULL).iter().all(|&v| v == 0));
            // Pinned: a swap-out moves none of it.
            assert_eq!(e.swap_out(0, u64::MAX).unwrap(), 0);
            e.mem_unmap(va, g).unwrap();
            e.mem_unmap(va + 2 * g, g).unwrap();
            e.phys_release(p1).unwrap();
            e.phys_release(p2).unwrap();
            assert_eq!(e.residency().resident, 0);
            e.va_free(va, 4 * g).unwrap();
            // Left mapped at the end, it is given back with the engine.
            let va = e.va_reserve(g, g, 0).unwrap();
            let p = e.phys_create(g).unwrap();
            e.mem_map(va, g, p).unwrap();
            drop(e);
        }

        /// Bytes that differ at every position, so that a piece copied to
        /// the wrong place is seen.
        fn pattern(seed: u64, len: usize) -> Vec<u8> {
            let mut v = vec![0u8; len.next_multiple_of(8)];
            for (i, w) in v.chunks_exact_mut(8).enumerate() {
                let x = (i as u64 ^ seed).wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(17) ^ seed;
                w.copy_from_slice(&x.to_le_bytes());
            }
            v.truncate(len);
            v
        }

        fn read(e: &mut CudaEngine, dptr: u64, len: usize) -> Vec<u8> {
            let mut buf = vec![0u8; len];
            e.memcpy_dtoh(HostDst::Bytes(&mut buf), dptr, EngineStream::NULL, false).unwrap();
            buf
        }

        /// Swap-out and swap-in on the real device: data at the same
        /// addresses, exact residency, frees and context teardown of
        /// swapped-out memory, and the copy rate against native pinned copies.
        /// Context `d`'s owner is current; `d` holds N u32s.
        fn swap(e: &mut CudaEngine, d: u64, n: usize) {
            let Some(vmm) = e.vmm else {
                eprintln!("swap: no VMM (GPUVISOR_VMM=0?): allocations stay put");
                assert_eq!(e.swap_out(0, u64::MAX), Ok(0));
                assert_eq!(e.residency().evicted, 0);
                assert!(e.residency().resident > 0);
                return;
            };
            let g = vmm.granularity;
            eprintln!("swap: VMM granularity {} KiB", g >> 10);
            assert_eq!(e.alloc_footprint(1), 1, "small allocations are plain memory");
            assert_eq!(e.alloc_footprint(SMALL_ALLOC), g);
            assert_eq!(e.alloc_footprint(g), g);
            assert_eq!(e.alloc_footprint(g + 1), 2 * g);
            let d_before = read(e, d, n * 4);

            // Three allocations of awkward sizes, each with its own bytes.
            let sizes = [(1 << 20) + 4099usize, (100 << 20) + 12345, 256 << 20];
            let r0 = e.residency();
            let mut held = Vec::new();
            for (i, &len) in sizes.iter().enumerate() {
                let p = e.mem_alloc(len as u64).unwrap();
                assert_eq!(p % g, 0, "VMM ranges are granule-aligned");
                let data = pattern(i as u64 + 1, len);
                e.memcpy_htod(p, HostSrc::Bytes(&data), EngineStream::NULL, false).unwrap();
                held.push((p, data));
            }
            let fps: Vec<u64> = sizes.iter().map(|&s| e.alloc_footprint(s as u64)).collect();
            let r1 = e.residency();
            assert_eq!(r1.resident, r0.resident + fps.iter().sum::<u64>());
            assert_eq!(r1.evicted, 0);

            // Just under: only the largest goes.
            let (free0, _) = e.mem_get_info().unwrap();
            let moved = e.swap_out(r1.resident - 1, u64::MAX).unwrap();
            assert_eq!(moved, fps[2]);
            assert_eq!(e.residency(), Residency { resident: r1.resident - fps[2], evicted: fps[2] });
            assert!(!e.mem_is_resident(held[2].0) && e.mem_is_resident(held[0].0));
            let (free1, _) = e.mem_get_info().unwrap();
            eprintln!("swap: device free {} -> {} MiB", free0 >> 20, free1 >> 20);
            assert!(free1 >= free0 + fps[2] / 2, "the physical memory went back to the driver");

            // Everything, then back, bytes intact at the same addresses.
            let moved = e.swap_out(0, u64::MAX).unwrap();
            assert_eq!(moved, r1.resident - fps[2]);
            assert_eq!(e.residency(), Residency { resident: 0, evicted: r1.resident });
            // Memory handed out now is not this VM's old bytes.
            let probe = e.mem_alloc(256 << 20).unwrap();
            let fresh = read(e, probe, 1 << 20);
            assert_ne!(&fresh[..], &held[2].1[..1 << 20], "swapped-out memory was not zeroed");
            eprintln!("swap: fresh memory nonzero bytes: {}", fresh.iter().filter(|&&b| b != 0).count());
            e.mem_free(probe).unwrap();
            let back = e.swap_in(u64::MAX).unwrap();
            assert_eq!(back, r1.resident);
            assert_eq!(e.residency(), r1);
            for (p, data) in &held {
                assert!(read(e, *p, data.len()) == *data, "allocation {p:#x} came back different");
            }
            assert_eq!(read(e, d, n * 4), d_before);

            // Freed while swapped out; its context destroyed while swapped out.
            e.swap_out(0, u64::MAX).unwrap();
            let (p0, _) = held.remove(0);
            e.mem_free(p0).unwrap();
            assert_eq!(e.mem_free(p0), Err(CuError(CUDA_ERROR_INVALID_VALUE)));
            assert_eq!(e.residency(), Residency { resident: 0, evicted: r1.resident - fps[0] });
            e.swap_in(u64::MAX).unwrap();
            let cur = e.selected;
            let other = e.ctx_create(0).unwrap();
            e.ctx_set_current(EngineCtx(other.0)).unwrap();
            let q = e.mem_alloc(64 << 20).unwrap();
            e.memset(q, 0x5a, 1, 64 << 20, EngineStream::NULL, false).unwrap();
            let with_q = e.residency();
            e.swap_out(0, u64::MAX).unwrap();
            e.ctx_destroy(other).unwrap();
            assert_eq!(e.residency().evicted, with_q.resident - e.alloc_footprint(64 << 20));
            e.ctx_set_current(EngineCtx(cur)).unwrap();
            e.swap_in(u64::MAX).unwrap();
            for (p, data) in &held {
                assert!(read(e, *p, data.len()) == *data, "allocation {p:#x} came back different");
            }
            for (p, _) in held {
                e.mem_free(p).unwrap();
            }

            // A small allocation is plain memory of its own size: it stays on
            // the GPU, bytes intact, while the rest is swapped out and back.
            let small_data = pattern(9, 4099);
            let small = e.mem_alloc(4099).unwrap();
            e.memcpy_htod(small, HostSrc::Bytes(&small_data), EngineStream::NULL, false).unwrap();
            let r = e.residency();
            let moved = e.swap_out(0, u64::MAX).unwrap();
            assert_eq!(e.residency(), Residency { resident: 4099, evicted: moved });
            assert!(e.mem_is_resident(small));
            assert_eq!(e.swap_in(u64::MAX).unwrap(), moved);
            assert_eq!(e.residency(), r);
            assert!(read(e, small, 4099) == small_data, "the small allocation changed");
            e.mem_free(small).unwrap();
        }

        /// Swap rates against native pinned copies, in an engine of its own so
        /// that the first swap-out finds no chunk prepared: 2 GiB out cold,
        /// another 2 GiB out after the store prepared chunks in the
        /// background, then all 4 GiB in, out and in again from the cache.
        fn swap_rates() {
            let mut e = CudaEngine::new(0).unwrap();
            if e.vmm.is_none() {
                return;
            }
            let c = e.ctx_create(0).unwrap();
            e.ctx_set_current(c).unwrap();
            let native = native_rates(&mut e);
            let half: u64 = 2 << 30;
            let a = e.mem_alloc(half).unwrap();
            let b = e.mem_alloc(half).unwrap();
            e.memset(a, 0xaaaa_0001, 4, half / 4, EngineStream::NULL, false).unwrap();
            e.memset(b, 0xbbbb_0002, 4, half / 4, EngineStream::NULL, false).unwrap();
            e.ctx_synchronize().unwrap();
            let fp = e.alloc_footprint(half);
            let rate = |bytes: u64, t: Instant| bytes as f64 / t.elapsed().as_secs_f64() / 1e9;
            let report = |what: &str, gbs: f64, native: f64| {
                eprintln!("swap {what}: {gbs:.1} GB/s, {:.2} of native {native:.1}", gbs / native);
            };
            let t = Instant::now();
            assert_eq!(e.swap_out(fp, u64::MAX).unwrap(), fp);
            report("out 2 GiB cold", rate(half, t), native.0);
            std::thread::sleep(std::time::Duration::from_millis(1000));
            let t = Instant::now();
            assert_eq!(e.swap_out(0, u64::MAX).unwrap(), fp);
            report("out 2 GiB prepared ahead", rate(half, t), native.0);
            for round in 0..3 {
                let t = Instant::now();
                assert_eq!(e.swap_in(u64::MAX).unwrap(), 2 * fp);
                report("in 4 GiB", rate(2 * half, t), native.1);
                if round == 2 {
                    break;
                }
                let t = Instant::now();
                assert_eq!(e.swap_out(0, u64::MAX).unwrap(), 2 * fp);
                report("out 4 GiB cached", rate(2 * half, t), native.0);
            }
            for (p, v) in [(a, 0xaaaa_0001u32), (b, 0xbbbb_0002)] {
                let mut buf = vec![0u8; 1 << 20];
                for at in [0, half / 2, half - (1 << 20)] {
                    e.memcpy_dtoh(HostDst::Bytes(&mut buf), p + at, EngineStream::NULL, false).unwrap();
                    assert!(buf.chunks_exact(4).all(|w| w == v.to_le_bytes()), "{p:#x}+{at:#x}");
                }
            }
            drop(e);
        }

        /// D2H and H2D GB/s of 1 GiB between the device and registered host
        /// memory, as the guest's own pinned copies run.
        fn native_rates(e: &mut CudaEngine) -> (f64, f64) {
            const LEN: usize = 1 << 30;
            let mem: GuestMemory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), LEN)]).unwrap();
            let host = mem.get_host_address(GuestAddress(0)).unwrap();
            // SAFETY: the mapping is LEN bytes, writable, and ours.
            unsafe { std::ptr::write_bytes(host, 1, LEN) };
            let regions = [HostRegion { addr: host, len: LEN }];
            e.register_host_memory(&regions).unwrap();
            let dev = e.mem_alloc(LEN as u64).unwrap();
            let all = [Extent { addr: GuestAddress(0), len: LEN }];
            let span = GuestSpan::new(&mem, &all, 0, LEN as u64).unwrap();
            let mut best = (0f64, 0f64);
            for _ in 0..3 {
                let t = Instant::now();
                e.memcpy_dtoh(HostDst::Guest(span.clone()), dev, EngineStream::NULL, false).unwrap();
                best.0 = best.0.max(LEN as f64 / t.elapsed().as_secs_f64() / 1e9);
                let t = Instant::now();
                e.memcpy_htod(dev, HostSrc::Guest(span.clone()), EngineStream::NULL, false).unwrap();
                best.1 = best.1.max(LEN as f64 / t.elapsed().as_secs_f64() / 1e9);
            }
            e.mem_free(dev).unwrap();
            e.unregister_host_memory(&regions).unwrap();
            best
        }
    }
}
