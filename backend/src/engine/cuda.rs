//! The `cuda` engine: a VM's CUDA work on the host GPU through the driver
//! API (cudarc's raw `sys` bindings, with libcuda loaded at run time). Every
//! guest context is a real `CUcontext`, and guest RAM is registered with the
//! driver so that copies to and from it are DMA with no host copy.

use super::*;
use crate::guest_mem::{GuestSpan, HostDst, HostSrc};
use cudarc::driver::sys;
use protocol::cuda::*;
use protocol::module_image::{self, ELF_MAGIC, FATBIN_MAGIC, FATBIN_WRAPPER_MAGIC};
use std::cell::Cell;
use std::collections::HashSet;
use std::ffi::{c_char, c_int, c_uint, c_void, CString};
use std::ptr::null_mut;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;
use tracing::{debug, info, warn};
use zerocopy::little_endian::U32;
use zerocopy::IntoBytes;

/// Every driver entry point this module calls. Checked once before the first
/// call: cudarc's loader panics on a missing symbol, and a driver older than
/// CUDA 13.0's API (`cuCtxCreate_v4`, `cuEventElapsedTime_v2`,
/// `cuFuncGetParamInfo`) must be reported, not crash the backend.
const REQUIRED_SYMBOLS: &[&str] = &[
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

/// The engine error for a driver result.
#[inline]
fn check(r: sys::CUresult) -> EngineResult<()> {
    match r {
        sys::CUresult::CUDA_SUCCESS => Ok(()),
        e => Err(CuError(e as u32)),
    }
}

/// `check` for the entry points called through integer-typed pointers.
#[inline]
fn check_raw(r: c_uint) -> EngineResult<()> {
    if r == CUDA_SUCCESS {
        Ok(())
    } else {
        Err(CuError(r))
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
        let info = query_device_info(device, &raw)?;
        let mut base: sys::CUcontext = null_mut();
        // SAFETY: `base` is a valid out-pointer; released in Drop.
        check(unsafe { sys::cuDevicePrimaryCtxRetain(&mut base, device) })?;
        info!(
            device = %info.name,
            ordinal = device_ordinal,
            driver = info.driver_version,
            memory_mib = info.total_mem >> 20,
            "cuda engine ready"
        );
        Ok(CudaEngine {
            info,
            device,
            base: base as u64,
            contexts: HashSet::new(),
            selected: 0,
            registered: Vec::new(),
            raw,
        })
    }

    /// Makes the chosen context current on the calling thread.
    #[inline]
    fn enter(&self) -> EngineResult<()> {
        if self.selected == 0 {
            return Err(CuError(CUDA_ERROR_INVALID_CONTEXT));
        }
        make_current(self.selected)
    }

    /// Waits for every context's work, so that no copy still touches guest
    /// RAM that is about to be unregistered or unmapped.
    fn synchronize_all(&self) {
        for &ctx in &self.contexts {
            // SAFETY: `ctx` is live (in `contexts`); no pointer arguments.
            if let Err(e) = with_pushed(ctx, || check(unsafe { sys::cuCtxSynchronize() })) {
                warn!(error = %e, "synchronizing a context before unregistering guest memory");
            }
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
        for ctx in self.contexts.drain() {
            // SAFETY: a context this engine created and has not destroyed.
            if let Err(e) = check(unsafe { sys::cuCtxDestroy_v2(ctx as sys::CUcontext) }) {
                warn!(error = %e, "destroying a context at engine shutdown");
            }
        }
        self.selected = 0;
        forget_current();
        let regions = std::mem::take(&mut self.registered);
        let _ = self.unregister(&regions);
        // SAFETY: balances the retain in `new`.
        if let Err(e) = check(unsafe { sys::cuDevicePrimaryCtxRelease_v2(self.device) }) {
            warn!(error = %e, "releasing the primary context");
        }
    }
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
        // SAFETY: a context this engine created; just removed from
        // `contexts`, so it is destroyed exactly once.
        let r = check(unsafe { sys::cuCtxDestroy_v2(ctx.0 as sys::CUcontext) });
        forget_current();
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
        let size = to_usize(size)?;
        let mut dptr: sys::CUdeviceptr = 0;
        // SAFETY: `dptr` is a valid out-pointer.
        check(unsafe { sys::cuMemAlloc_v2(&mut dptr, size) })?;
        Ok(dptr)
    }

    fn mem_free(&mut self, dptr: u64) -> EngineResult<()> {
        self.enter()?;
        // SAFETY: device pointers are checked by the driver; the VM layer only
        // frees allocations it made.
        check(unsafe { sys::cuMemFree_v2(dptr) })
    }

    fn alloc_footprint(&self, size: u64) -> u64 {
        size
    }

    fn residency(&self) -> Residency {
        Residency::default()
    }

    fn swap_out(&mut self, _keep: u64) -> EngineResult<u64> {
        Ok(0)
    }

    fn swap_in(&mut self) -> EngineResult<u64> {
        Ok(0)
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
            warn!(error = %e, jit_log = %c_string_lossy(&log), "module load failed");
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
}

#[cfg(test)]
mod tests {
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
        v.resize(v.len() + payload_len, 0xab);
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
        let complete = fatbin(32, 32);
        assert_eq!(driver_image(&complete).unwrap().bytes().len(), 48);
        let truncated = fatbin(32, 4096);
        assert!(matches!(driver_image(&truncated), Err(CuError(CUDA_ERROR_INVALID_IMAGE))));
        // Trailing bytes past the image are not handed over.
        let mut longer = fatbin(32, 16);
        longer.extend_from_slice(&[1, 2, 3]);
        assert_eq!(driver_image(&longer).unwrap().bytes().len(), 32);
        let mut elf = ELF_MAGIC.to_vec();
        elf.resize(40, 0);
        assert!(matches!(driver_image(&elf), Err(CuError(CUDA_ERROR_INVALID_IMAGE))));
    }

    #[test]
    fn misaligned_binary_images_are_copied_to_an_aligned_buffer() {
        let image = fatbin(40, 40);
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

    #[test]
    fn c_strings_stop_at_the_nul() {
        assert_eq!(c_string_lossy(b"NVIDIA H100 80GB HBM3\0\0junk"), "NVIDIA H100 80GB HBM3");
        assert_eq!(c_string_lossy(b"no nul"), "no nul");
        assert_eq!(c_string_lossy(b"\xff\0"), "\u{fffd}");
    }

    /// cudarc panics on a missing symbol, so every entry point called through
    /// `sys::` must be in the list checked before the first call.
    #[test]
    fn every_driver_call_is_checked_for_presence() {
        let src = include_str!("cuda.rs");
        let mut called = Vec::new();
        for (i, _) in src.match_indices("sys::cu") {
            let rest = &src[i + 5..];
            let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
            let (name, after) = rest.split_at(end);
            if name.as_bytes().get(2).is_some_and(u8::is_ascii_uppercase) && after.starts_with('(') {
                called.push(name);
            }
        }
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
            let launch = Launch { grid: [256, 1, 1], block: [256, 1, 1], shared_mem: 0, stream: s, params: &params };
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
            let sl = Launch { grid: [1, 1, 1], block: [1, 1, 1], shared_mem: 0, stream: s, params: &spin_params };
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
                let l = Launch { grid: [1, 1, 1], block: [32, 1, 1], shared_mem: 0, stream: s, params: p };
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
            e.launch(
                fb,
                &Launch { grid: [4, 1, 1], block: [256, 1, 1], shared_mem: 0, stream: EngineStream::NULL, params: &pb },
            )
            .unwrap();
            assert!(read_u32s(&mut e, db, 1024, EngineStream::NULL).iter().all(|&v| v == 9));
            e.ctx_destroy(b).unwrap();
            assert_eq!(e.mem_alloc(16), Err(CuError(CUDA_ERROR_INVALID_CONTEXT)));
            e.ctx_set_current(a).unwrap();

            // The engine moves to another thread (as behind the VM's Mutex).
            let e = std::thread::spawn(move || {
                let mut e = e;
                e.launch(
                    fill,
                    &Launch {
                        grid: [256, 1, 1],
                        block: [256, 1, 1],
                        shared_mem: 0,
                        stream: s,
                        params: &fill_params(d, 5, N as u64),
                    },
                )
                .unwrap();
                assert!(read_u32s(&mut e, d, N, s).iter().all(|&v| v == 5));
                e
            })
            .join()
            .unwrap();
            let mut e = e;
            e.launch(fill, &Launch { stream: EngineStream::NULL, ..launch }).unwrap();
            e.ctx_synchronize().unwrap();

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
            eprintln!("GPU test done");
        }
    }
}
