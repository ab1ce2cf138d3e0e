//! cuGetProcAddress: from the base name the runtime asks for ("cuMemAlloc")
//! and the CUDA version it was built for to the versioned export whose ABI
//! that version expects ("cuMemAlloc_v2" from 3.2 on). The rule is the
//! driver's: the newest variant introduced at or before the requested
//! version. With `CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM`, the
//! `_ptsz`/`_ptds` variant where there is one.
//!
//! Versions come from the CUDA headers: cudaTypedefs.h names each ABI
//! `PFN_cuXxx_vNNNN`, NNNN being the version that introduced it. Where a
//! header could not be checked here the version is the first toolkit whose
//! cuda.h declares the symbol; those are marked "header-derived".

use super::types::*;
use super::{
    capture::*, context::*, copy::*, device::*, event::*, export_table::*, launch::*, memory::*, module::*, stream::*,
};
use super::{ffi, CuRes, Out};
use super::{stream_alloc::*, vmm::*};
use protocol::cuda::*;
use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::OnceLock;

/// One export as cuGetProcAddress sees it.
#[derive(Debug, Clone, Copy)]
pub struct ProcRow {
    /// The name the caller asks for.
    pub base: &'static str,
    /// The CUDA version (e.g. 3020 for 3.2) that introduced this ABI.
    pub since: c_int,
    /// The exported symbol.
    pub symbol: &'static str,
    /// Its address.
    pub ptr: usize,
    /// A per-thread-default-stream variant.
    pub per_thread: bool,
}

impl ProcRow {
    pub fn new(base: &'static str, since: c_int, symbol: &'static str, ptr: usize, per_thread: bool) -> Self {
        ProcRow { base, since, symbol, ptr, per_thread }
    }
}

/// `base: since symbol, since symbol, ...; ptsz since symbol, ...`.
macro_rules! table {
    ($($base:literal: $($since:literal $f:ident),+ $(; ptsz $($psince:literal $pf:ident),+)?;)*) => {
        vec![$(
            $(ProcRow::new($base, $since, stringify!($f), $f as *const () as usize, false),)+
            $($(ProcRow::new($base, $psince, stringify!($pf), $pf as *const () as usize, true),)+)?
        )*]
    };
}

fn implemented() -> Vec<ProcRow> {
    table! {
        // Initialization, devices, errors.
        "cuInit": 2000 cuInit;
        "cuDriverGetVersion": 2020 cuDriverGetVersion;
        "cuGetErrorName": 6000 cuGetErrorName;
        "cuGetErrorString": 6000 cuGetErrorString;
        "cuDeviceGet": 2000 cuDeviceGet;
        "cuDeviceGetCount": 2000 cuDeviceGetCount;
        "cuDeviceGetName": 2000 cuDeviceGetName;
        "cuDeviceGetUuid": 9020 cuDeviceGetUuid, 11040 cuDeviceGetUuid_v2;
        "cuDeviceGetLuid": 10000 cuDeviceGetLuid;
        "cuDeviceTotalMem": 2000 cuDeviceTotalMem, 3020 cuDeviceTotalMem_v2;
        "cuDeviceGetAttribute": 2000 cuDeviceGetAttribute;
        "cuDeviceComputeCapability": 2000 cuDeviceComputeCapability;
        "cuDeviceGetPCIBusId": 4010 cuDeviceGetPCIBusId;
        "cuDeviceGetByPCIBusId": 4010 cuDeviceGetByPCIBusId;
        "cuDeviceCanAccessPeer": 4000 cuDeviceCanAccessPeer;
        "cuDeviceGetExecAffinitySupport": 11040 cuDeviceGetExecAffinitySupport;
        // Primary context.
        "cuDevicePrimaryCtxRetain": 7000 cuDevicePrimaryCtxRetain;
        "cuDevicePrimaryCtxRelease": 7000 cuDevicePrimaryCtxRelease, 11000 cuDevicePrimaryCtxRelease_v2;
        "cuDevicePrimaryCtxSetFlags": 7000 cuDevicePrimaryCtxSetFlags, 11000 cuDevicePrimaryCtxSetFlags_v2;
        "cuDevicePrimaryCtxGetState": 7000 cuDevicePrimaryCtxGetState;
        "cuDevicePrimaryCtxReset": 7000 cuDevicePrimaryCtxReset, 11000 cuDevicePrimaryCtxReset_v2;
        // Contexts. _v4 from 12050 is header-derived.
        "cuCtxCreate": 2000 cuCtxCreate, 3020 cuCtxCreate_v2, 11040 cuCtxCreate_v3, 12050 cuCtxCreate_v4;
        "cuCtxDestroy": 2000 cuCtxDestroy, 4000 cuCtxDestroy_v2;
        "cuCtxPushCurrent": 2000 cuCtxPushCurrent, 4000 cuCtxPushCurrent_v2;
        "cuCtxPopCurrent": 2000 cuCtxPopCurrent, 4000 cuCtxPopCurrent_v2;
        "cuCtxSetCurrent": 4000 cuCtxSetCurrent;
        "cuCtxGetCurrent": 4000 cuCtxGetCurrent;
        // CUDA 13.0's forms take the context as an argument.
        "cuCtxGetDevice": 2000 cuCtxGetDevice, 13000 cuCtxGetDevice_v2;
        "cuCtxSynchronize": 2000 cuCtxSynchronize, 13000 cuCtxSynchronize_v2;
        "cuCtxGetFlags": 7000 cuCtxGetFlags;
        "cuCtxSetFlags": 12010 cuCtxSetFlags;
        "cuCtxGetId": 12000 cuCtxGetId;
        "cuCtxGetApiVersion": 3020 cuCtxGetApiVersion;
        "cuCtxGetStreamPriorityRange": 5050 cuCtxGetStreamPriorityRange;
        "cuCtxGetLimit": 3010 cuCtxGetLimit;
        "cuCtxSetLimit": 3010 cuCtxSetLimit;
        "cuCtxGetCacheConfig": 3020 cuCtxGetCacheConfig;
        "cuCtxSetCacheConfig": 3020 cuCtxSetCacheConfig;
        "cuCtxGetSharedMemConfig": 4020 cuCtxGetSharedMemConfig;
        "cuCtxSetSharedMemConfig": 4020 cuCtxSetSharedMemConfig;
        "cuCtxResetPersistingL2Cache": 11000 cuCtxResetPersistingL2Cache;
        // Memory.
        "cuMemAlloc": 2000 cuMemAlloc, 3020 cuMemAlloc_v2;
        "cuMemFree": 2000 cuMemFree, 3020 cuMemFree_v2;
        "cuMemGetInfo": 2000 cuMemGetInfo, 3020 cuMemGetInfo_v2;
        "cuMemGetAddressRange": 2000 cuMemGetAddressRange, 3020 cuMemGetAddressRange_v2;
        "cuMemAllocHost": 2000 cuMemAllocHost, 3020 cuMemAllocHost_v2;
        "cuMemHostAlloc": 2020 cuMemHostAlloc;
        "cuMemFreeHost": 2000 cuMemFreeHost;
        "cuMemHostRegister": 4000 cuMemHostRegister, 6050 cuMemHostRegister_v2;
        "cuMemHostUnregister": 4000 cuMemHostUnregister;
        "cuMemHostGetFlags": 2030 cuMemHostGetFlags;
        "cuMemHostGetDevicePointer": 2020 cuMemHostGetDevicePointer, 3020 cuMemHostGetDevicePointer_v2;
        "cuPointerGetAttribute": 4000 cuPointerGetAttribute;
        "cuPointerGetAttributes": 7000 cuPointerGetAttributes;
        // The virtual-memory API.
        "cuMemGetAllocationGranularity": 10020 cuMemGetAllocationGranularity;
        "cuMemAddressReserve": 10020 cuMemAddressReserve;
        "cuMemAddressFree": 10020 cuMemAddressFree;
        "cuMemCreate": 10020 cuMemCreate;
        "cuMemRelease": 10020 cuMemRelease;
        "cuMemMap": 10020 cuMemMap;
        "cuMemUnmap": 10020 cuMemUnmap;
        "cuMemSetAccess": 10020 cuMemSetAccess;
        "cuMemGetAccess": 10020 cuMemGetAccess;
        "cuMemGetAllocationPropertiesFromHandle": 10020 cuMemGetAllocationPropertiesFromHandle;
        "cuMemRetainAllocationHandle": 11000 cuMemRetainAllocationHandle;
        // Stream-ordered allocation and pools.
        "cuMemAllocAsync": 11020 cuMemAllocAsync; ptsz 11020 cuMemAllocAsync_ptsz;
        "cuMemFreeAsync": 11020 cuMemFreeAsync; ptsz 11020 cuMemFreeAsync_ptsz;
        "cuMemAllocFromPoolAsync": 11020 cuMemAllocFromPoolAsync; ptsz 11020 cuMemAllocFromPoolAsync_ptsz;
        "cuMemPoolCreate": 11020 cuMemPoolCreate;
        "cuMemPoolDestroy": 11020 cuMemPoolDestroy;
        "cuMemPoolTrimTo": 11020 cuMemPoolTrimTo;
        "cuMemPoolSetAttribute": 11020 cuMemPoolSetAttribute;
        "cuMemPoolGetAttribute": 11020 cuMemPoolGetAttribute;
        "cuMemPoolSetAccess": 11020 cuMemPoolSetAccess;
        "cuMemPoolGetAccess": 11020 cuMemPoolGetAccess;
        "cuDeviceGetDefaultMemPool": 11020 cuDeviceGetDefaultMemPool;
        "cuDeviceGetMemPool": 11020 cuDeviceGetMemPool;
        "cuDeviceSetMemPool": 11020 cuDeviceSetMemPool;
        "cuMemGetDefaultMemPool": 13000 cuMemGetDefaultMemPool;
        "cuMemGetMemPool": 13000 cuMemGetMemPool;
        "cuMemSetMemPool": 13000 cuMemSetMemPool;
        // Copies and memsets.
        "cuMemcpy": 4000 cuMemcpy; ptsz 7000 cuMemcpy_ptds;
        "cuMemcpyAsync": 4000 cuMemcpyAsync; ptsz 7000 cuMemcpyAsync_ptsz;
        "cuMemcpyHtoD": 2000 cuMemcpyHtoD, 3020 cuMemcpyHtoD_v2; ptsz 7000 cuMemcpyHtoD_v2_ptds;
        "cuMemcpyDtoH": 2000 cuMemcpyDtoH, 3020 cuMemcpyDtoH_v2; ptsz 7000 cuMemcpyDtoH_v2_ptds;
        "cuMemcpyDtoD": 2000 cuMemcpyDtoD, 3020 cuMemcpyDtoD_v2; ptsz 7000 cuMemcpyDtoD_v2_ptds;
        "cuMemcpyHtoDAsync": 2000 cuMemcpyHtoDAsync, 3020 cuMemcpyHtoDAsync_v2; ptsz 7000 cuMemcpyHtoDAsync_v2_ptsz;
        "cuMemcpyDtoHAsync": 2000 cuMemcpyDtoHAsync, 3020 cuMemcpyDtoHAsync_v2; ptsz 7000 cuMemcpyDtoHAsync_v2_ptsz;
        "cuMemcpyDtoDAsync": 3000 cuMemcpyDtoDAsync, 3020 cuMemcpyDtoDAsync_v2; ptsz 7000 cuMemcpyDtoDAsync_v2_ptsz;
        "cuMemsetD8": 2000 cuMemsetD8, 3020 cuMemsetD8_v2; ptsz 7000 cuMemsetD8_v2_ptds;
        "cuMemsetD16": 2000 cuMemsetD16, 3020 cuMemsetD16_v2; ptsz 7000 cuMemsetD16_v2_ptds;
        "cuMemsetD32": 2000 cuMemsetD32, 3020 cuMemsetD32_v2; ptsz 7000 cuMemsetD32_v2_ptds;
        "cuMemsetD8Async": 3020 cuMemsetD8Async; ptsz 7000 cuMemsetD8Async_ptsz;
        "cuMemsetD16Async": 3020 cuMemsetD16Async; ptsz 7000 cuMemsetD16Async_ptsz;
        "cuMemsetD32Async": 3020 cuMemsetD32Async; ptsz 7000 cuMemsetD32Async_ptsz;
        // Modules and functions.
        "cuModuleLoad": 2000 cuModuleLoad;
        "cuModuleLoadData": 2000 cuModuleLoadData;
        "cuModuleLoadDataEx": 2010 cuModuleLoadDataEx;
        "cuModuleLoadFatBinary": 2000 cuModuleLoadFatBinary;
        "cuModuleUnload": 2000 cuModuleUnload;
        "cuModuleGetFunction": 2000 cuModuleGetFunction;
        "cuModuleGetGlobal": 2000 cuModuleGetGlobal, 3020 cuModuleGetGlobal_v2;
        "cuModuleGetLoadingMode": 11070 cuModuleGetLoadingMode;
        "cuModuleGetFunctionCount": 12040 cuModuleGetFunctionCount;
        "cuModuleEnumerateFunctions": 12040 cuModuleEnumerateFunctions;
        "cuFuncGetAttribute": 2020 cuFuncGetAttribute;
        "cuFuncSetAttribute": 9000 cuFuncSetAttribute;
        "cuFuncSetCacheConfig": 3000 cuFuncSetCacheConfig;
        "cuFuncSetSharedMemConfig": 4020 cuFuncSetSharedMemConfig;
        "cuFuncGetModule": 11000 cuFuncGetModule;
        "cuFuncGetName": 12030 cuFuncGetName;
        "cuFuncGetParamInfo": 12040 cuFuncGetParamInfo;
        "cuFuncIsLoaded": 12040 cuFuncIsLoaded;
        "cuFuncLoad": 12040 cuFuncLoad;
        // Libraries and kernels (CUDA 12.0 on).
        "cuLibraryLoadData": 12000 cuLibraryLoadData;
        "cuLibraryLoadFromFile": 12000 cuLibraryLoadFromFile;
        "cuLibraryUnload": 12000 cuLibraryUnload;
        "cuLibraryGetKernel": 12000 cuLibraryGetKernel;
        "cuLibraryGetModule": 12000 cuLibraryGetModule;
        "cuLibraryGetGlobal": 12000 cuLibraryGetGlobal;
        "cuLibraryGetKernelCount": 12040 cuLibraryGetKernelCount;
        "cuLibraryEnumerateKernels": 12040 cuLibraryEnumerateKernels;
        "cuKernelGetFunction": 12000 cuKernelGetFunction;
        "cuKernelGetAttribute": 12000 cuKernelGetAttribute;
        "cuKernelSetAttribute": 12000 cuKernelSetAttribute;
        "cuKernelSetCacheConfig": 12000 cuKernelSetCacheConfig;
        "cuKernelGetName": 12030 cuKernelGetName;
        "cuKernelGetParamInfo": 12040 cuKernelGetParamInfo;
        "cuKernelGetLibrary": 12050 cuKernelGetLibrary;
        // Launches.
        "cuLaunchKernel": 4000 cuLaunchKernel; ptsz 7000 cuLaunchKernel_ptsz;
        "cuLaunchKernelEx": 11060 cuLaunchKernelEx; ptsz 11060 cuLaunchKernelEx_ptsz;
        "cuLaunchCooperativeKernel": 9000 cuLaunchCooperativeKernel; ptsz 9000 cuLaunchCooperativeKernel_ptsz;
        "cuLaunchHostFunc": 10000 cuLaunchHostFunc; ptsz 10000 cuLaunchHostFunc_ptsz;
        // Streams.
        "cuStreamCreate": 2000 cuStreamCreate;
        "cuStreamCreateWithPriority": 5050 cuStreamCreateWithPriority;
        "cuStreamDestroy": 2000 cuStreamDestroy, 4000 cuStreamDestroy_v2;
        "cuStreamSynchronize": 2000 cuStreamSynchronize; ptsz 7000 cuStreamSynchronize_ptsz;
        "cuStreamQuery": 2000 cuStreamQuery; ptsz 7000 cuStreamQuery_ptsz;
        "cuStreamWaitEvent": 3020 cuStreamWaitEvent; ptsz 7000 cuStreamWaitEvent_ptsz;
        "cuStreamGetFlags": 5050 cuStreamGetFlags; ptsz 7000 cuStreamGetFlags_ptsz;
        "cuStreamGetPriority": 5050 cuStreamGetPriority; ptsz 7000 cuStreamGetPriority_ptsz;
        "cuStreamGetCtx": 9020 cuStreamGetCtx, 12050 cuStreamGetCtx_v2; ptsz 9020 cuStreamGetCtx_ptsz, 12050 cuStreamGetCtx_v2_ptsz;
        "cuStreamGetDevice": 12080 cuStreamGetDevice; ptsz 12080 cuStreamGetDevice_ptsz;
        "cuStreamGetId": 12000 cuStreamGetId; ptsz 12000 cuStreamGetId_ptsz;
        "cuStreamAddCallback": 5000 cuStreamAddCallback; ptsz 7000 cuStreamAddCallback_ptsz;
        "cuStreamIsCapturing": 10000 cuStreamIsCapturing; ptsz 10000 cuStreamIsCapturing_ptsz;
        "cuStreamGetCaptureInfo": 10010 cuStreamGetCaptureInfo, 11030 cuStreamGetCaptureInfo_v2, 12030 cuStreamGetCaptureInfo_v3;
            ptsz 10010 cuStreamGetCaptureInfo_ptsz, 11030 cuStreamGetCaptureInfo_v2_ptsz, 12030 cuStreamGetCaptureInfo_v3_ptsz;
        "cuThreadExchangeStreamCaptureMode": 10010 cuThreadExchangeStreamCaptureMode;
        // Events. cuEventElapsedTime_v2 from 12080 is header-derived (same
        // arguments either way).
        "cuEventCreate": 2000 cuEventCreate;
        "cuEventDestroy": 2000 cuEventDestroy, 4000 cuEventDestroy_v2;
        "cuEventRecord": 2000 cuEventRecord; ptsz 7000 cuEventRecord_ptsz;
        "cuEventRecordWithFlags": 11010 cuEventRecordWithFlags; ptsz 11010 cuEventRecordWithFlags_ptsz;
        "cuEventQuery": 2000 cuEventQuery;
        "cuEventSynchronize": 2000 cuEventSynchronize;
        "cuEventElapsedTime": 2000 cuEventElapsedTime, 12080 cuEventElapsedTime_v2;
        // Profiler controls.
        "cuProfilerInitialize": 4000 cuProfilerInitialize;
        "cuProfilerStart": 4000 cuProfilerStart;
        "cuProfilerStop": 4000 cuProfilerStop;
        // Entry points.
        "cuGetProcAddress": 11030 cuGetProcAddress, 12000 cuGetProcAddress_v2;
        "cuGetExportTable": 3000 cuGetExportTable;
    }
}

/// The table, by base name, each base's rows sorted by version.
fn table() -> &'static HashMap<&'static str, Vec<ProcRow>> {
    static TABLE: OnceLock<HashMap<&'static str, Vec<ProcRow>>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut map: HashMap<&'static str, Vec<ProcRow>> = HashMap::new();
        let rows = implemented().into_iter().chain(super::unsupported::rows());
        let rows = rows.chain(super::graph::rows()).chain(super::occupancy::rows()).chain(super::peer::rows());
        for r in rows.chain(super::capture::rows()) {
            map.entry(r.base).or_default().push(r);
        }
        for rows in map.values_mut() {
            rows.sort_by_key(|r| (r.per_thread, r.since));
        }
        map
    })
}

/// Every row, for tests and tools.
pub fn all_rows() -> Vec<ProcRow> {
    table().values().flatten().copied().collect()
}

/// Why a lookup found nothing, as `CUdriverProcAddressQueryResult` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Miss {
    NotFound,
    VersionNotSufficient,
}

/// The export for `name` at `version`.
pub fn lookup(name: &str, version: c_int, per_thread: bool) -> Result<ProcRow, Miss> {
    let rows = table().get(name).ok_or(Miss::NotFound)?;
    let newest = |pt: bool| rows.iter().filter(|r| r.per_thread == pt && r.since <= version).max_by_key(|r| r.since);
    let hit = if per_thread { newest(true).or_else(|| newest(false)) } else { newest(false) };
    hit.copied().ok_or(Miss::VersionNotSufficient)
}

/// # Safety
/// `symbol` is NULL or NUL-terminated; `pfn` and `status` NULL or writable.
unsafe fn get_proc_address(
    symbol: *const c_char,
    pfn: *mut *mut c_void,
    version: c_int,
    flags: cuuint64_t,
    status: *mut c_int,
) -> CuRes {
    // SAFETY: output arguments per the CUDA API; the status is optional.
    let (out, st) = unsafe { (Out::new(pfn)?, Out::optional(status)) };
    if symbol.is_null() || flags > (CU_GET_PROC_ADDRESS_LEGACY_STREAM | CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM) {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    // SAFETY: non-NULL and NUL-terminated per the CUDA API.
    let name = unsafe { CStr::from_ptr(symbol) }.to_str().unwrap_or("");
    let per_thread = flags & CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM != 0;
    match lookup(name, version, per_thread) {
        Ok(row) => {
            crate::log::debug(&format!("cuGetProcAddress({name}, {version}, {flags}) -> {}", row.symbol));
            out.set(row.ptr as *mut c_void);
            super::set_opt(st, CU_GET_PROC_ADDRESS_SUCCESS);
            Ok(())
        }
        Err(miss) => {
            crate::log::debug(&format!("cuGetProcAddress({name}, {version}, {flags}): {miss:?}"));
            out.set(std::ptr::null_mut());
            super::set_opt(
                st,
                match miss {
                    Miss::NotFound => CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND,
                    Miss::VersionNotSufficient => CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT,
                },
            );
            Err(CUDA_ERROR_NOT_FOUND)
        }
    }
}

/// CUDA 11.3's form. Works before cuInit, as the runtime relies on.
#[no_mangle]
pub unsafe extern "C" fn cuGetProcAddress(
    symbol: *const c_char,
    pfn: *mut *mut c_void,
    cudaVersion: c_int,
    flags: cuuint64_t,
) -> CUresult {
    // SAFETY: the caller's contract, forwarded.
    ffi(|| unsafe { get_proc_address(symbol, pfn, cudaVersion, flags, std::ptr::null_mut()) })
}

/// CUDA 12.0's form, which also says why a symbol was not found.
#[no_mangle]
pub unsafe extern "C" fn cuGetProcAddress_v2(
    symbol: *const c_char,
    pfn: *mut *mut c_void,
    cudaVersion: c_int,
    flags: cuuint64_t,
    symbolStatus: *mut c_int,
) -> CUresult {
    // SAFETY: the caller's contract, forwarded.
    ffi(|| unsafe { get_proc_address(symbol, pfn, cudaVersion, flags, symbolStatus) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn symbol(name: &str, version: c_int, per_thread: bool) -> Option<&'static str> {
        lookup(name, version, per_thread).ok().map(|r| r.symbol)
    }

    #[test]
    fn versioned_lookups_pick_the_abi_of_the_requested_version() {
        assert_eq!(symbol("cuMemAlloc", 3010, false), Some("cuMemAlloc"));
        assert_eq!(symbol("cuMemAlloc", 3020, false), Some("cuMemAlloc_v2"));
        assert_eq!(symbol("cuMemAlloc", 13000, false), Some("cuMemAlloc_v2"));
        assert_eq!(symbol("cuCtxCreate", 3020, false), Some("cuCtxCreate_v2"));
        assert_eq!(symbol("cuCtxCreate", 11040, false), Some("cuCtxCreate_v3"));
        assert_eq!(symbol("cuCtxCreate", 12080, false), Some("cuCtxCreate_v4"));
        assert_eq!(symbol("cuCtxDestroy", 4000, false), Some("cuCtxDestroy_v2"));
        assert_eq!(symbol("cuEventElapsedTime", 12060, false), Some("cuEventElapsedTime"));
        assert_eq!(symbol("cuEventElapsedTime", 12080, false), Some("cuEventElapsedTime_v2"));
        assert_eq!(symbol("cuDevicePrimaryCtxRelease", 10020, false), Some("cuDevicePrimaryCtxRelease"));
        assert_eq!(symbol("cuDevicePrimaryCtxRelease", 11000, false), Some("cuDevicePrimaryCtxRelease_v2"));
        assert_eq!(symbol("cuGetProcAddress", 12000, false), Some("cuGetProcAddress_v2"));
        assert_eq!(symbol("cuMemHostRegister", 6050, false), Some("cuMemHostRegister_v2"));
        assert_eq!(symbol("cuCtxSynchronize", 12090, false), Some("cuCtxSynchronize"));
        assert_eq!(symbol("cuCtxSynchronize", 13000, false), Some("cuCtxSynchronize_v2"));
        assert_eq!(symbol("cuStreamGetCtx", 12050, true), Some("cuStreamGetCtx_v2_ptsz"));
    }

    #[test]
    fn per_thread_flag_prefers_ptsz_variants_and_falls_back() {
        assert_eq!(symbol("cuLaunchKernel", 12000, true), Some("cuLaunchKernel_ptsz"));
        assert_eq!(symbol("cuLaunchKernel", 12000, false), Some("cuLaunchKernel"));
        assert_eq!(symbol("cuMemcpyHtoD", 12000, true), Some("cuMemcpyHtoD_v2_ptds"));
        assert_eq!(symbol("cuMemAlloc", 12000, true), Some("cuMemAlloc_v2"));
        assert_eq!(symbol("cuLaunchKernel", 6050, true), Some("cuLaunchKernel"));
    }

    #[test]
    fn unknown_names_and_early_versions_are_not_found() {
        assert_eq!(lookup("cuNoSuchFunction", 13000, false).unwrap_err(), Miss::NotFound);
        assert_eq!(lookup("cuMemAlloc_v2", 13000, false).unwrap_err(), Miss::NotFound);
        assert_eq!(lookup("cuLibraryLoadData", 11080, false).unwrap_err(), Miss::VersionNotSufficient);
        let mut p: *mut c_void = std::ptr::dangling_mut();
        let mut status: c_int = -1;
        let name = c"cuNoSuchFunction";
        // SAFETY: valid name and output slots.
        let r = unsafe { cuGetProcAddress_v2(name.as_ptr(), &mut p, 13000, 0, &mut status) };
        assert_eq!((r, p.is_null(), status), (CUDA_ERROR_NOT_FOUND, true, CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND));
        // SAFETY: as above.
        let r = unsafe { cuGetProcAddress_v2(c"cuLibraryLoadData".as_ptr(), &mut p, 11080, 0, &mut status) };
        assert_eq!((r, status), (CUDA_ERROR_NOT_FOUND, CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT));
    }

    #[test]
    fn lookup_returns_the_function_itself() {
        let mut p: *mut c_void = std::ptr::null_mut();
        // SAFETY: valid name and output slot; works before cuInit.
        let r = unsafe { cuGetProcAddress(c"cuGetErrorName".as_ptr(), &mut p, 12000, 0) };
        assert_eq!(r, CUDA_SUCCESS);
        assert_eq!(p as usize, cuGetErrorName as *const () as usize);
        // SAFETY: bad flags are rejected before anything is written.
        let r = unsafe { cuGetProcAddress(c"cuInit".as_ptr(), &mut p, 12000, 4) };
        assert_eq!(r, CUDA_ERROR_INVALID_VALUE);
    }

    #[test]
    fn table_is_consistent() {
        let mut seen = HashSet::new();
        for (base, rows) in table() {
            let mut versions = HashSet::new();
            for r in rows {
                assert!(seen.insert(r.symbol), "{} listed twice", r.symbol);
                assert!(versions.insert((r.per_thread, r.since)), "{base}: two variants at {}", r.since);
                assert!(r.symbol.starts_with(base), "{} is not a variant of {base}", r.symbol);
                assert!(r.ptr != 0);
                assert_eq!(r.per_thread, r.symbol.ends_with("_ptsz") || r.symbol.ends_with("_ptds"));
            }
        }
    }

    /// The `PFN_<name>_v<version>[_ptsz|_ptds]` typedefs of CUDA's headers
    /// (cudaTypedefs.h and its companions), as (name, version, per-thread).
    fn header_typedefs(text: &str) -> Vec<(String, c_int, bool)> {
        text.split("*PFN_")
            .skip(1)
            .filter_map(|rest| {
                let ident: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                let (ident, per_thread) = match ident.strip_suffix("_ptsz").or_else(|| ident.strip_suffix("_ptds")) {
                    Some(i) => (i.to_string(), true),
                    None => (ident, false),
                };
                let (name, version) = ident.rsplit_once("_v")?;
                Some((name.to_string(), version.parse().ok()?, per_thread))
            })
            .collect()
    }

    /// Every entry point of CUDA 12.8's and 13.0's headers is exported, at
    /// the version its typedef names, under the symbol the driver's naming
    /// gives it: the k-th version of a name is `name_vk` (the first has no
    /// suffix), a per-thread variant the symbol current at its version plus
    /// `_ptsz` or `_ptds`. These are the names the runtime resolves.
    #[test]
    fn every_typedef_of_the_cuda_headers_is_exported() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../build/cudart");
        let dir = std::env::var_os("GPUVISOR_CUDART_DIR").map(std::path::PathBuf::from).unwrap_or(root);
        let headers = [
            "cudaTypedefs.h",
            "cudaGLTypedefs.h",
            "cudaEGLTypedefs.h",
            "cudaVDPAUTypedefs.h",
            "cudaProfilerTypedefs.h",
        ];
        let mut typedefs = HashSet::new();
        for major in ["12", "13"] {
            for h in headers {
                match std::fs::read_to_string(dir.join(major).join("include").join(h)) {
                    Ok(text) => typedefs.extend(header_typedefs(&text)),
                    Err(e) if std::env::var("GPUVISOR_REQUIRE_CUDART").as_deref() == Ok("1") => {
                        panic!("{}/{major}/include/{h}: {e}", dir.display())
                    }
                    Err(_) => {
                        eprintln!("skipping: no CUDA headers under {} (scripts/fetch-cudart.sh)", dir.display());
                        return;
                    }
                }
            }
        }
        assert!(typedefs.len() > 600, "only {} typedefs parsed", typedefs.len());
        let mut versions: HashMap<&str, Vec<c_int>> = HashMap::new();
        for (name, v, pt) in &typedefs {
            if !pt {
                versions.entry(name.as_str()).or_default().push(*v);
            }
        }
        for v in versions.values_mut() {
            v.sort();
        }
        let symbol_at = |name: &str, v: c_int| -> String {
            let vs = &versions[name];
            match vs.iter().filter(|x| **x <= v).count() {
                0 | 1 => name.to_string(),
                k => format!("{name}_v{k}"),
            }
        };
        let mut wrong = Vec::new();
        for (name, v, pt) in &typedefs {
            let want = symbol_at(name, *v);
            let named = |s: &str| match pt {
                true => s == format!("{want}_ptsz") || s == format!("{want}_ptds"),
                false => s == want,
            };
            match lookup(name, *v, *pt) {
                Ok(r) if r.since == *v && r.per_thread == *pt && named(r.symbol) => {}
                Ok(r) => wrong.push(format!("{name} v{v} pt={pt}: {} since {} (want {want})", r.symbol, r.since)),
                Err(m) => wrong.push(format!("{name} v{v} pt={pt}: {m:?}")),
            }
        }
        wrong.sort();
        assert!(wrong.is_empty(), "{} entry points missing or mismatched:\n{}", wrong.len(), wrong.join("\n"));
    }

    /// Every `#[no_mangle]` export written out in this module's sources is
    /// reachable through cuGetProcAddress (the macro-made ones are listed
    /// in the table by the macros or by name).
    #[test]
    fn every_written_export_is_in_the_table() {
        let symbols: HashSet<&str> = all_rows().iter().map(|r| r.symbol).collect();
        let sources = [
            include_str!("capture.rs"),
            include_str!("context.rs"),
            include_str!("copy.rs"),
            include_str!("device.rs"),
            include_str!("event.rs"),
            include_str!("export_table.rs"),
            include_str!("graph.rs"),
            include_str!("launch.rs"),
            include_str!("memory.rs"),
            include_str!("module.rs"),
            include_str!("occupancy.rs"),
            include_str!("peer.rs"),
            include_str!("proc_address.rs"),
            include_str!("stream.rs"),
        ];
        let mut missing = Vec::new();
        for src in sources {
            for part in src.split("pub unsafe extern \"C\" fn ").skip(1) {
                let name: String = part.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                if name.starts_with("cu") && !symbols.contains(name.as_str()) {
                    missing.push(name);
                }
            }
        }
        assert!(missing.is_empty(), "exports missing from cuGetProcAddress: {missing:?}");
    }
}
