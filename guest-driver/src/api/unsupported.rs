//! Driver entry points gpuvisor does not implement yet. Each is exported
//! (so programs that merely link or look them up still load), logs its name
//! once, counts the call for the unsupported-call report and returns
//! `CUDA_ERROR_NOT_SUPPORTED`; cuGetProcAddress finds them under their base
//! name and the CUDA version that introduced them.
//!
//! Together with the implemented exports they cover every entry point of
//! CUDA 12.8's and 13.0's `cudaTypedefs.h` (and its GL, EGL, VDPAU and
//! profiler companions), the list the runtime resolves at start-up: the
//! `PFN_cuXxx_vNNNN[_ptsz|_ptds]` typedefs give each variant's version, the
//! k-th version of a name is its `_vk` symbol (the first has no suffix), and
//! a per-thread variant is the symbol current at its version plus `_ptsz` or
//! `_ptds`. Parameters are typed loosely (handles and structs by pointer as
//! `Ptr`, enums as `c_int`): a stub never reads them. The test
//! `every_typedef_of_the_cuda_headers_is_exported` checks the coverage
//! against the headers that scripts/fetch-cudart.sh fetches.

use super::proc_address::ProcRow;
use super::types::*;
use protocol::cuda::*;
use std::ffi::{c_char, c_int, c_uint, c_ulonglong, c_void};

/// `CUipcMemHandle` / `CUipcEventHandle`, passed by value.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CUipcHandle {
    pub reserved: [c_char; 64],
}

/// `CUeglFrame`, passed by value: three plane pointers (arrays or pitched
/// memory), width, height, depth, pitch, plane and channel counts, then the
/// frame type, the EGL colour format and the CUDA array format.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CUeglFrame {
    pub planes: [*mut c_void; 3],
    pub sizes: [c_uint; 6],
    pub formats: [c_int; 3],
}

/// Whether a symbol is a per-thread-default-stream variant.
fn is_per_thread(symbol: &str) -> bool {
    symbol.ends_with("_ptsz") || symbol.ends_with("_ptds")
}

type Ptr = *mut c_void;
type CPtr = *const c_void;

macro_rules! stubs {
    ($($base:literal @ $since:literal => $name:ident($($arg:ident: $ty:ty),* $(,)?);)*) => {
        $(
            #[no_mangle]
            pub unsafe extern "C" fn $name($($arg: $ty),*) -> CUresult {
                $(let _ = $arg;)*
                crate::log::unsupported(stringify!($name));
                CUDA_ERROR_NOT_SUPPORTED
            }
        )*

        /// The stubs, for cuGetProcAddress.
        pub fn rows() -> Vec<ProcRow> {
            vec![$(ProcRow::new($base, $since, stringify!($name), $name as *const () as usize, is_per_thread(stringify!($name)))),*]
        }
    };
}

stubs! {
    // Memory the guest cannot offer yet: managed, pitched, IPC and shareable
    // handles (nothing leaves the VM), external memory and semaphores,
    // multicast.
    "cuDestroyExternalMemory" @ 10000 => cuDestroyExternalMemory(extMem: Ptr);
    "cuDestroyExternalSemaphore" @ 10000 => cuDestroyExternalSemaphore(extSem: Ptr);
    "cuDeviceGetNvSciSyncAttributes" @ 10020 => cuDeviceGetNvSciSyncAttributes(nvSciSyncAttrList: Ptr, dev: CUdevice, flags: c_int);
    "cuExternalMemoryGetMappedBuffer" @ 10000 => cuExternalMemoryGetMappedBuffer(devPtr: *mut CUdeviceptr, extMem: Ptr, bufferDesc: CPtr);
    "cuImportExternalMemory" @ 10000 => cuImportExternalMemory(extMem_out: Ptr, memHandleDesc: CPtr);
    "cuImportExternalSemaphore" @ 10000 => cuImportExternalSemaphore(extSem_out: Ptr, semHandleDesc: CPtr);
    "cuIpcCloseMemHandle" @ 4010 => cuIpcCloseMemHandle(dptr: CUdeviceptr);
    "cuIpcGetEventHandle" @ 4010 => cuIpcGetEventHandle(pHandle: *mut CUipcHandle, event: CUevent);
    "cuIpcGetMemHandle" @ 4010 => cuIpcGetMemHandle(pHandle: *mut CUipcHandle, dptr: CUdeviceptr);
    "cuIpcOpenEventHandle" @ 4010 => cuIpcOpenEventHandle(phEvent: *mut CUevent, handle: CUipcHandle);
    "cuIpcOpenMemHandle" @ 4010 => cuIpcOpenMemHandle(pdptr: *mut CUdeviceptr, handle: CUipcHandle, Flags: c_uint);
    "cuIpcOpenMemHandle" @ 11000 => cuIpcOpenMemHandle_v2(pdptr: *mut CUdeviceptr, handle: CUipcHandle, Flags: c_uint);
    "cuMemAdvise" @ 8000 => cuMemAdvise(devPtr: CUdeviceptr, count: usize, advice: c_int, device: CUdevice);
    "cuMemAdvise" @ 12020 => cuMemAdvise_v2(devPtr: CUdeviceptr, count: usize, advice: c_int, location: CUmemLocation);
    "cuMemAllocManaged" @ 6000 => cuMemAllocManaged(dptr: *mut CUdeviceptr, bytesize: usize, flags: c_uint);
    "cuMemAllocPitch" @ 2000 => cuMemAllocPitch(dptr: *mut CUdeviceptr_v1, pPitch: *mut c_uint, WidthInBytes: c_uint, Height: c_uint, ElementSizeBytes: c_uint);
    "cuMemAllocPitch" @ 3020 => cuMemAllocPitch_v2(dptr: *mut CUdeviceptr, pPitch: *mut usize, WidthInBytes: usize, Height: usize, ElementSizeBytes: c_uint);
    "cuMemBatchDecompressAsync" @ 12060 => cuMemBatchDecompressAsync(paramsArray: Ptr, count: usize, flags: c_uint, errorIndex: *mut usize, stream: CUstream);
    "cuMemBatchDecompressAsync" @ 12060 => cuMemBatchDecompressAsync_ptsz(paramsArray: Ptr, count: usize, flags: c_uint, errorIndex: *mut usize, stream: CUstream);
    "cuMemDiscardAndPrefetchBatchAsync" @ 13000 => cuMemDiscardAndPrefetchBatchAsync(dptrs: *mut CUdeviceptr, sizes: *mut usize, count: usize, prefetchLocs: Ptr, prefetchLocIdxs: *mut usize, numPrefetchLocs: usize, flags: c_ulonglong, hStream: CUstream);
    "cuMemDiscardAndPrefetchBatchAsync" @ 13000 => cuMemDiscardAndPrefetchBatchAsync_ptsz(dptrs: *mut CUdeviceptr, sizes: *mut usize, count: usize, prefetchLocs: Ptr, prefetchLocIdxs: *mut usize, numPrefetchLocs: usize, flags: c_ulonglong, hStream: CUstream);
    "cuMemDiscardBatchAsync" @ 13000 => cuMemDiscardBatchAsync(dptrs: *mut CUdeviceptr, sizes: *mut usize, count: usize, flags: c_ulonglong, hStream: CUstream);
    "cuMemDiscardBatchAsync" @ 13000 => cuMemDiscardBatchAsync_ptsz(dptrs: *mut CUdeviceptr, sizes: *mut usize, count: usize, flags: c_ulonglong, hStream: CUstream);
    "cuMemExportToShareableHandle" @ 10020 => cuMemExportToShareableHandle(shareableHandle: Ptr, handle: c_ulonglong, handleType: c_int, flags: c_ulonglong);
    "cuMemGetHandleForAddressRange" @ 11070 => cuMemGetHandleForAddressRange(handle: Ptr, dptr: CUdeviceptr, size: usize, handleType: c_int, flags: c_ulonglong);
    "cuMemImportFromShareableHandle" @ 10020 => cuMemImportFromShareableHandle(handle: *mut c_ulonglong, osHandle: Ptr, shHandleType: c_int);
    "cuMemMapArrayAsync" @ 11010 => cuMemMapArrayAsync(mapInfoList: Ptr, count: c_uint, hStream: CUstream);
    "cuMemMapArrayAsync" @ 11010 => cuMemMapArrayAsync_ptsz(mapInfoList: Ptr, count: c_uint, hStream: CUstream);
    "cuMemPoolExportPointer" @ 11020 => cuMemPoolExportPointer(shareData_out: Ptr, ptr: CUdeviceptr);
    "cuMemPoolExportToShareableHandle" @ 11020 => cuMemPoolExportToShareableHandle(handle_out: Ptr, pool: Ptr, handleType: c_int, flags: c_ulonglong);
    "cuMemPoolImportFromShareableHandle" @ 11020 => cuMemPoolImportFromShareableHandle(pool_out: Ptr, handle: Ptr, handleType: c_int, flags: c_ulonglong);
    "cuMemPoolImportPointer" @ 11020 => cuMemPoolImportPointer(ptr_out: *mut CUdeviceptr, pool: Ptr, shareData: Ptr);
    "cuMemPrefetchAsync" @ 8000 => cuMemPrefetchAsync(devPtr: CUdeviceptr, count: usize, dstDevice: CUdevice, hStream: CUstream);
    "cuMemPrefetchAsync" @ 12020 => cuMemPrefetchAsync_v2(devPtr: CUdeviceptr, count: usize, location: CUmemLocation, flags: c_uint, hStream: CUstream);
    "cuMemPrefetchAsync" @ 8000 => cuMemPrefetchAsync_ptsz(devPtr: CUdeviceptr, count: usize, dstDevice: CUdevice, hStream: CUstream);
    "cuMemPrefetchAsync" @ 12020 => cuMemPrefetchAsync_v2_ptsz(devPtr: CUdeviceptr, count: usize, location: CUmemLocation, flags: c_uint, hStream: CUstream);
    "cuMemPrefetchBatchAsync" @ 13000 => cuMemPrefetchBatchAsync(dptrs: *mut CUdeviceptr, sizes: *mut usize, count: usize, prefetchLocs: Ptr, prefetchLocIdxs: *mut usize, numPrefetchLocs: usize, flags: c_ulonglong, hStream: CUstream);
    "cuMemPrefetchBatchAsync" @ 13000 => cuMemPrefetchBatchAsync_ptsz(dptrs: *mut CUdeviceptr, sizes: *mut usize, count: usize, prefetchLocs: Ptr, prefetchLocIdxs: *mut usize, numPrefetchLocs: usize, flags: c_ulonglong, hStream: CUstream);
    "cuMemRangeGetAttribute" @ 8000 => cuMemRangeGetAttribute(data: Ptr, dataSize: usize, attribute: c_int, devPtr: CUdeviceptr, count: usize);
    "cuMemRangeGetAttributes" @ 8000 => cuMemRangeGetAttributes(data: Ptr, dataSizes: *mut usize, attributes: Ptr, numAttributes: usize, devPtr: CUdeviceptr, count: usize);
    "cuMulticastAddDevice" @ 12010 => cuMulticastAddDevice(mcHandle: c_ulonglong, dev: CUdevice);
    "cuMulticastBindAddr" @ 12010 => cuMulticastBindAddr(mcHandle: c_ulonglong, mcOffset: usize, memptr: CUdeviceptr, size: usize, flags: c_ulonglong);
    "cuMulticastBindMem" @ 12010 => cuMulticastBindMem(mcHandle: c_ulonglong, mcOffset: usize, memHandle: c_ulonglong, memOffset: usize, size: usize, flags: c_ulonglong);
    "cuMulticastCreate" @ 12010 => cuMulticastCreate(mcHandle: *mut c_ulonglong, prop: CPtr);
    "cuMulticastGetGranularity" @ 12010 => cuMulticastGetGranularity(granularity: *mut usize, prop: CPtr, option: c_int);
    "cuMulticastUnbind" @ 12010 => cuMulticastUnbind(mcHandle: c_ulonglong, dev: CUdevice, mcOffset: usize, size: usize);
    "cuPointerSetAttribute" @ 6000 => cuPointerSetAttribute(value: CPtr, attribute: c_int, ptr: CUdeviceptr);
    "cuSignalExternalSemaphoresAsync" @ 10000 => cuSignalExternalSemaphoresAsync(extSemArray: CPtr, paramsArray: CPtr, numExtSems: c_uint, stream: CUstream);
    "cuSignalExternalSemaphoresAsync" @ 10000 => cuSignalExternalSemaphoresAsync_ptsz(extSemArray: CPtr, paramsArray: CPtr, numExtSems: c_uint, stream: CUstream);
    "cuWaitExternalSemaphoresAsync" @ 10000 => cuWaitExternalSemaphoresAsync(extSemArray: CPtr, paramsArray: CPtr, numExtSems: c_uint, stream: CUstream);
    "cuWaitExternalSemaphoresAsync" @ 10000 => cuWaitExternalSemaphoresAsync_ptsz(extSemArray: CPtr, paramsArray: CPtr, numExtSems: c_uint, stream: CUstream);

    // Copies and memsets with pitches, arrays, peers or batches.
    "cuMemcpy2D" @ 2000 => cuMemcpy2D(pCopy: CPtr);
    "cuMemcpy2D" @ 3020 => cuMemcpy2D_v2(pCopy: CPtr);
    "cuMemcpy2D" @ 7000 => cuMemcpy2D_v2_ptds(pCopy: CPtr);
    "cuMemcpy2DAsync" @ 2000 => cuMemcpy2DAsync(pCopy: CPtr, hStream: CUstream);
    "cuMemcpy2DAsync" @ 3020 => cuMemcpy2DAsync_v2(pCopy: CPtr, hStream: CUstream);
    "cuMemcpy2DAsync" @ 7000 => cuMemcpy2DAsync_v2_ptsz(pCopy: CPtr, hStream: CUstream);
    "cuMemcpy2DUnaligned" @ 2000 => cuMemcpy2DUnaligned(pCopy: CPtr);
    "cuMemcpy2DUnaligned" @ 3020 => cuMemcpy2DUnaligned_v2(pCopy: CPtr);
    "cuMemcpy2DUnaligned" @ 7000 => cuMemcpy2DUnaligned_v2_ptds(pCopy: CPtr);
    "cuMemcpy3D" @ 2000 => cuMemcpy3D(pCopy: CPtr);
    "cuMemcpy3D" @ 3020 => cuMemcpy3D_v2(pCopy: CPtr);
    "cuMemcpy3D" @ 7000 => cuMemcpy3D_v2_ptds(pCopy: CPtr);
    "cuMemcpy3DAsync" @ 2000 => cuMemcpy3DAsync(pCopy: CPtr, hStream: CUstream);
    "cuMemcpy3DAsync" @ 3020 => cuMemcpy3DAsync_v2(pCopy: CPtr, hStream: CUstream);
    "cuMemcpy3DAsync" @ 7000 => cuMemcpy3DAsync_v2_ptsz(pCopy: CPtr, hStream: CUstream);
    "cuMemcpy3DBatchAsync" @ 12080 => cuMemcpy3DBatchAsync(numParams: usize, opList: Ptr, failIdx: *mut usize, flags: c_ulonglong, hStream: CUstream);
    "cuMemcpy3DBatchAsync" @ 13000 => cuMemcpy3DBatchAsync_v2(numParams: usize, opList: Ptr, flags: c_ulonglong, hStream: CUstream);
    "cuMemcpy3DBatchAsync" @ 12080 => cuMemcpy3DBatchAsync_ptsz(numParams: usize, opList: Ptr, failIdx: *mut usize, flags: c_ulonglong, hStream: CUstream);
    "cuMemcpy3DBatchAsync" @ 13000 => cuMemcpy3DBatchAsync_v2_ptsz(numParams: usize, opList: Ptr, flags: c_ulonglong, hStream: CUstream);
    "cuMemcpy3DPeer" @ 4000 => cuMemcpy3DPeer(pCopy: CPtr);
    "cuMemcpy3DPeer" @ 7000 => cuMemcpy3DPeer_ptds(pCopy: CPtr);
    "cuMemcpy3DPeerAsync" @ 4000 => cuMemcpy3DPeerAsync(pCopy: CPtr, hStream: CUstream);
    "cuMemcpy3DPeerAsync" @ 7000 => cuMemcpy3DPeerAsync_ptsz(pCopy: CPtr, hStream: CUstream);
    "cuMemcpyAtoA" @ 2000 => cuMemcpyAtoA(dstArray: Ptr, dstOffset: c_uint, srcArray: Ptr, srcOffset: c_uint, ByteCount: c_uint);
    "cuMemcpyAtoA" @ 3020 => cuMemcpyAtoA_v2(dstArray: Ptr, dstOffset: usize, srcArray: Ptr, srcOffset: usize, ByteCount: usize);
    "cuMemcpyAtoA" @ 7000 => cuMemcpyAtoA_v2_ptds(dstArray: Ptr, dstOffset: usize, srcArray: Ptr, srcOffset: usize, ByteCount: usize);
    "cuMemcpyAtoD" @ 2000 => cuMemcpyAtoD(dstDevice: CUdeviceptr_v1, srcArray: Ptr, srcOffset: c_uint, ByteCount: c_uint);
    "cuMemcpyAtoD" @ 3020 => cuMemcpyAtoD_v2(dstDevice: CUdeviceptr, srcArray: Ptr, srcOffset: usize, ByteCount: usize);
    "cuMemcpyAtoD" @ 7000 => cuMemcpyAtoD_v2_ptds(dstDevice: CUdeviceptr, srcArray: Ptr, srcOffset: usize, ByteCount: usize);
    "cuMemcpyAtoH" @ 2000 => cuMemcpyAtoH(dstHost: Ptr, srcArray: Ptr, srcOffset: c_uint, ByteCount: c_uint);
    "cuMemcpyAtoH" @ 3020 => cuMemcpyAtoH_v2(dstHost: Ptr, srcArray: Ptr, srcOffset: usize, ByteCount: usize);
    "cuMemcpyAtoH" @ 7000 => cuMemcpyAtoH_v2_ptds(dstHost: Ptr, srcArray: Ptr, srcOffset: usize, ByteCount: usize);
    "cuMemcpyAtoHAsync" @ 2000 => cuMemcpyAtoHAsync(dstHost: Ptr, srcArray: Ptr, srcOffset: c_uint, ByteCount: c_uint, hStream: CUstream);
    "cuMemcpyAtoHAsync" @ 3020 => cuMemcpyAtoHAsync_v2(dstHost: Ptr, srcArray: Ptr, srcOffset: usize, ByteCount: usize, hStream: CUstream);
    "cuMemcpyAtoHAsync" @ 7000 => cuMemcpyAtoHAsync_v2_ptsz(dstHost: Ptr, srcArray: Ptr, srcOffset: usize, ByteCount: usize, hStream: CUstream);
    "cuMemcpyBatchAsync" @ 12080 => cuMemcpyBatchAsync(dsts: *mut CUdeviceptr, srcs: *mut CUdeviceptr, sizes: *mut usize, count: usize, attrs: Ptr, attrIdxs: *mut usize, numAttrs: usize, failIdx: *mut usize, hStream: CUstream);
    "cuMemcpyBatchAsync" @ 13000 => cuMemcpyBatchAsync_v2(dsts: *mut CUdeviceptr, srcs: *mut CUdeviceptr, sizes: *mut usize, count: usize, attrs: Ptr, attrIdxs: *mut usize, numAttrs: usize, hStream: CUstream);
    "cuMemcpyBatchAsync" @ 12080 => cuMemcpyBatchAsync_ptsz(dsts: *mut CUdeviceptr, srcs: *mut CUdeviceptr, sizes: *mut usize, count: usize, attrs: Ptr, attrIdxs: *mut usize, numAttrs: usize, failIdx: *mut usize, hStream: CUstream);
    "cuMemcpyBatchAsync" @ 13000 => cuMemcpyBatchAsync_v2_ptsz(dsts: *mut CUdeviceptr, srcs: *mut CUdeviceptr, sizes: *mut usize, count: usize, attrs: Ptr, attrIdxs: *mut usize, numAttrs: usize, hStream: CUstream);
    "cuMemcpyDtoA" @ 2000 => cuMemcpyDtoA(dstArray: Ptr, dstOffset: c_uint, srcDevice: CUdeviceptr_v1, ByteCount: c_uint);
    "cuMemcpyDtoA" @ 3020 => cuMemcpyDtoA_v2(dstArray: Ptr, dstOffset: usize, srcDevice: CUdeviceptr, ByteCount: usize);
    "cuMemcpyDtoA" @ 7000 => cuMemcpyDtoA_v2_ptds(dstArray: Ptr, dstOffset: usize, srcDevice: CUdeviceptr, ByteCount: usize);
    "cuMemcpyHtoA" @ 2000 => cuMemcpyHtoA(dstArray: Ptr, dstOffset: c_uint, srcHost: CPtr, ByteCount: c_uint);
    "cuMemcpyHtoA" @ 3020 => cuMemcpyHtoA_v2(dstArray: Ptr, dstOffset: usize, srcHost: CPtr, ByteCount: usize);
    "cuMemcpyHtoA" @ 7000 => cuMemcpyHtoA_v2_ptds(dstArray: Ptr, dstOffset: usize, srcHost: CPtr, ByteCount: usize);
    "cuMemcpyHtoAAsync" @ 2000 => cuMemcpyHtoAAsync(dstArray: Ptr, dstOffset: c_uint, srcHost: CPtr, ByteCount: c_uint, hStream: CUstream);
    "cuMemcpyHtoAAsync" @ 3020 => cuMemcpyHtoAAsync_v2(dstArray: Ptr, dstOffset: usize, srcHost: CPtr, ByteCount: usize, hStream: CUstream);
    "cuMemcpyHtoAAsync" @ 7000 => cuMemcpyHtoAAsync_v2_ptsz(dstArray: Ptr, dstOffset: usize, srcHost: CPtr, ByteCount: usize, hStream: CUstream);
    "cuMemsetD2D16" @ 2000 => cuMemsetD2D16(dstDevice: CUdeviceptr_v1, dstPitch: c_uint, us: u16, Width: c_uint, Height: c_uint);
    "cuMemsetD2D16" @ 3020 => cuMemsetD2D16_v2(dstDevice: CUdeviceptr, dstPitch: usize, us: u16, Width: usize, Height: usize);
    "cuMemsetD2D16" @ 7000 => cuMemsetD2D16_v2_ptds(dstDevice: CUdeviceptr, dstPitch: usize, us: u16, Width: usize, Height: usize);
    "cuMemsetD2D16Async" @ 3020 => cuMemsetD2D16Async(dstDevice: CUdeviceptr, dstPitch: usize, us: u16, Width: usize, Height: usize, hStream: CUstream);
    "cuMemsetD2D16Async" @ 7000 => cuMemsetD2D16Async_ptsz(dstDevice: CUdeviceptr, dstPitch: usize, us: u16, Width: usize, Height: usize, hStream: CUstream);
    "cuMemsetD2D32" @ 2000 => cuMemsetD2D32(dstDevice: CUdeviceptr_v1, dstPitch: c_uint, ui: c_uint, Width: c_uint, Height: c_uint);
    "cuMemsetD2D32" @ 3020 => cuMemsetD2D32_v2(dstDevice: CUdeviceptr, dstPitch: usize, ui: c_uint, Width: usize, Height: usize);
    "cuMemsetD2D32" @ 7000 => cuMemsetD2D32_v2_ptds(dstDevice: CUdeviceptr, dstPitch: usize, ui: c_uint, Width: usize, Height: usize);
    "cuMemsetD2D32Async" @ 3020 => cuMemsetD2D32Async(dstDevice: CUdeviceptr, dstPitch: usize, ui: c_uint, Width: usize, Height: usize, hStream: CUstream);
    "cuMemsetD2D32Async" @ 7000 => cuMemsetD2D32Async_ptsz(dstDevice: CUdeviceptr, dstPitch: usize, ui: c_uint, Width: usize, Height: usize, hStream: CUstream);
    "cuMemsetD2D8" @ 2000 => cuMemsetD2D8(dstDevice: CUdeviceptr_v1, dstPitch: c_uint, uc: u8, Width: c_uint, Height: c_uint);
    "cuMemsetD2D8" @ 3020 => cuMemsetD2D8_v2(dstDevice: CUdeviceptr, dstPitch: usize, uc: u8, Width: usize, Height: usize);
    "cuMemsetD2D8" @ 7000 => cuMemsetD2D8_v2_ptds(dstDevice: CUdeviceptr, dstPitch: usize, uc: u8, Width: usize, Height: usize);
    "cuMemsetD2D8Async" @ 3020 => cuMemsetD2D8Async(dstDevice: CUdeviceptr, dstPitch: usize, uc: u8, Width: usize, Height: usize, hStream: CUstream);
    "cuMemsetD2D8Async" @ 7000 => cuMemsetD2D8Async_ptsz(dstDevice: CUdeviceptr, dstPitch: usize, uc: u8, Width: usize, Height: usize, hStream: CUstream);

    // Arrays, mipmapped arrays, texture and surface objects, tensor maps.
    "cuArray3DCreate" @ 2000 => cuArray3DCreate(pHandle: Ptr, pAllocateArray: CPtr);
    "cuArray3DCreate" @ 3020 => cuArray3DCreate_v2(pHandle: Ptr, pAllocateArray: CPtr);
    "cuArray3DGetDescriptor" @ 2000 => cuArray3DGetDescriptor(pArrayDescriptor: Ptr, hArray: Ptr);
    "cuArray3DGetDescriptor" @ 3020 => cuArray3DGetDescriptor_v2(pArrayDescriptor: Ptr, hArray: Ptr);
    "cuArrayCreate" @ 2000 => cuArrayCreate(pHandle: Ptr, pAllocateArray: CPtr);
    "cuArrayCreate" @ 3020 => cuArrayCreate_v2(pHandle: Ptr, pAllocateArray: CPtr);
    "cuArrayDestroy" @ 2000 => cuArrayDestroy(hArray: Ptr);
    "cuArrayGetDescriptor" @ 2000 => cuArrayGetDescriptor(pArrayDescriptor: Ptr, hArray: Ptr);
    "cuArrayGetDescriptor" @ 3020 => cuArrayGetDescriptor_v2(pArrayDescriptor: Ptr, hArray: Ptr);
    "cuArrayGetMemoryRequirements" @ 11060 => cuArrayGetMemoryRequirements(memoryRequirements: Ptr, array: Ptr, device: CUdevice);
    "cuArrayGetPlane" @ 11020 => cuArrayGetPlane(pPlaneArray: Ptr, hArray: Ptr, planeIdx: c_uint);
    "cuArrayGetSparseProperties" @ 11010 => cuArrayGetSparseProperties(sparseProperties: Ptr, array: Ptr);
    "cuDeviceGetTexture1DLinearMaxWidth" @ 11010 => cuDeviceGetTexture1DLinearMaxWidth(maxWidthInElements: *mut usize, format: c_int, numChannels: c_uint, dev: CUdevice);
    "cuExternalMemoryGetMappedMipmappedArray" @ 10000 => cuExternalMemoryGetMappedMipmappedArray(mipmap: Ptr, extMem: Ptr, mipmapDesc: CPtr);
    "cuMipmappedArrayCreate" @ 5000 => cuMipmappedArrayCreate(pHandle: Ptr, pMipmappedArrayDesc: CPtr, numMipmapLevels: c_uint);
    "cuMipmappedArrayDestroy" @ 5000 => cuMipmappedArrayDestroy(hMipmappedArray: Ptr);
    "cuMipmappedArrayGetLevel" @ 5000 => cuMipmappedArrayGetLevel(pLevelArray: Ptr, hMipmappedArray: Ptr, level: c_uint);
    "cuMipmappedArrayGetMemoryRequirements" @ 11060 => cuMipmappedArrayGetMemoryRequirements(memoryRequirements: Ptr, mipmap: Ptr, device: CUdevice);
    "cuMipmappedArrayGetSparseProperties" @ 11010 => cuMipmappedArrayGetSparseProperties(sparseProperties: Ptr, mipmap: Ptr);
    "cuSurfObjectCreate" @ 5000 => cuSurfObjectCreate(pSurfObject: *mut c_ulonglong, pResDesc: CPtr);
    "cuSurfObjectDestroy" @ 5000 => cuSurfObjectDestroy(surfObject: c_ulonglong);
    "cuSurfObjectGetResourceDesc" @ 5000 => cuSurfObjectGetResourceDesc(pResDesc: Ptr, surfObject: c_ulonglong);
    "cuTensorMapEncodeIm2col" @ 12000 => cuTensorMapEncodeIm2col(tensorMap: Ptr, tensorDataType: c_int, tensorRank: u32, globalAddress: Ptr, globalDim: *const c_ulonglong, globalStrides: *const c_ulonglong, pixelBoxLowerCorner: *const c_int, pixelBoxUpperCorner: *const c_int, channelsPerPixel: u32, pixelsPerColumn: u32, elementStrides: *const u32, interleave: c_int, swizzle: c_int, l2Promotion: c_int, oobFill: c_int);
    "cuTensorMapEncodeIm2colWide" @ 12080 => cuTensorMapEncodeIm2colWide(tensorMap: Ptr, tensorDataType: c_int, tensorRank: u32, globalAddress: Ptr, globalDim: *const c_ulonglong, globalStrides: *const c_ulonglong, pixelBoxLowerCornerWidth: c_int, pixelBoxUpperCornerWidth: c_int, channelsPerPixel: u32, pixelsPerColumn: u32, elementStrides: *const u32, interleave: c_int, mode: c_int, swizzle: c_int, l2Promotion: c_int, oobFill: c_int);
    "cuTensorMapEncodeTiled" @ 12000 => cuTensorMapEncodeTiled(tensorMap: Ptr, tensorDataType: c_int, tensorRank: u32, globalAddress: Ptr, globalDim: *const c_ulonglong, globalStrides: *const c_ulonglong, boxDim: *const u32, elementStrides: *const u32, interleave: c_int, swizzle: c_int, l2Promotion: c_int, oobFill: c_int);
    "cuTensorMapReplaceAddress" @ 12000 => cuTensorMapReplaceAddress(tensorMap: Ptr, globalAddress: Ptr);
    "cuTexObjectCreate" @ 5000 => cuTexObjectCreate(pTexObject: *mut c_ulonglong, pResDesc: CPtr, pTexDesc: CPtr, pResViewDesc: CPtr);
    "cuTexObjectDestroy" @ 5000 => cuTexObjectDestroy(texObject: c_ulonglong);
    "cuTexObjectGetResourceDesc" @ 5000 => cuTexObjectGetResourceDesc(pResDesc: Ptr, texObject: c_ulonglong);
    "cuTexObjectGetResourceViewDesc" @ 5000 => cuTexObjectGetResourceViewDesc(pResViewDesc: Ptr, texObject: c_ulonglong);
    "cuTexObjectGetTextureDesc" @ 5000 => cuTexObjectGetTextureDesc(pTexDesc: Ptr, texObject: c_ulonglong);

    // Texture and surface references (deprecated; gone from CUDA 13's headers).
    "cuModuleGetSurfRef" @ 3000 => cuModuleGetSurfRef(pSurfRef: Ptr, hmod: CUmodule, name: *const c_char);
    "cuModuleGetTexRef" @ 2000 => cuModuleGetTexRef(pTexRef: Ptr, hmod: CUmodule, name: *const c_char);
    "cuSurfRefGetArray" @ 3000 => cuSurfRefGetArray(phArray: Ptr, hSurfRef: Ptr);
    "cuSurfRefSetArray" @ 3000 => cuSurfRefSetArray(hSurfRef: Ptr, hArray: Ptr, Flags: c_uint);
    "cuTexRefCreate" @ 2000 => cuTexRefCreate(pTexRef: Ptr);
    "cuTexRefDestroy" @ 2000 => cuTexRefDestroy(hTexRef: Ptr);
    "cuTexRefGetAddress" @ 2000 => cuTexRefGetAddress(pdptr: *mut CUdeviceptr_v1, hTexRef: Ptr);
    "cuTexRefGetAddress" @ 3020 => cuTexRefGetAddress_v2(pdptr: *mut CUdeviceptr, hTexRef: Ptr);
    "cuTexRefGetAddressMode" @ 2000 => cuTexRefGetAddressMode(pam: Ptr, hTexRef: Ptr, dim: c_int);
    "cuTexRefGetArray" @ 2000 => cuTexRefGetArray(phArray: Ptr, hTexRef: Ptr);
    "cuTexRefGetBorderColor" @ 8000 => cuTexRefGetBorderColor(pBorderColor: *mut f32, hTexRef: Ptr);
    "cuTexRefGetFilterMode" @ 2000 => cuTexRefGetFilterMode(pfm: Ptr, hTexRef: Ptr);
    "cuTexRefGetFlags" @ 2000 => cuTexRefGetFlags(pFlags: *mut c_uint, hTexRef: Ptr);
    "cuTexRefGetFormat" @ 2000 => cuTexRefGetFormat(pFormat: Ptr, pNumChannels: *mut c_int, hTexRef: Ptr);
    "cuTexRefGetMaxAnisotropy" @ 5000 => cuTexRefGetMaxAnisotropy(pmaxAniso: *mut c_int, hTexRef: Ptr);
    "cuTexRefGetMipmapFilterMode" @ 5000 => cuTexRefGetMipmapFilterMode(pfm: Ptr, hTexRef: Ptr);
    "cuTexRefGetMipmapLevelBias" @ 5000 => cuTexRefGetMipmapLevelBias(pbias: *mut f32, hTexRef: Ptr);
    "cuTexRefGetMipmapLevelClamp" @ 5000 => cuTexRefGetMipmapLevelClamp(pminMipmapLevelClamp: *mut f32, pmaxMipmapLevelClamp: *mut f32, hTexRef: Ptr);
    "cuTexRefGetMipmappedArray" @ 5000 => cuTexRefGetMipmappedArray(phMipmappedArray: Ptr, hTexRef: Ptr);
    "cuTexRefSetAddress" @ 2000 => cuTexRefSetAddress(ByteOffset: *mut c_uint, hTexRef: Ptr, dptr: CUdeviceptr_v1, bytes: c_uint);
    "cuTexRefSetAddress" @ 3020 => cuTexRefSetAddress_v2(ByteOffset: *mut usize, hTexRef: Ptr, dptr: CUdeviceptr, bytes: usize);
    "cuTexRefSetAddress2D" @ 2020 => cuTexRefSetAddress2D(hTexRef: Ptr, desc: CPtr, dptr: CUdeviceptr_v1, Pitch: c_uint);
    "cuTexRefSetAddress2D" @ 3020 => cuTexRefSetAddress2D_v2(hTexRef: Ptr, desc: CPtr, dptr: CUdeviceptr, Pitch: usize);
    "cuTexRefSetAddress2D" @ 4010 => cuTexRefSetAddress2D_v3(hTexRef: Ptr, desc: CPtr, dptr: CUdeviceptr, Pitch: usize);
    "cuTexRefSetAddressMode" @ 2000 => cuTexRefSetAddressMode(hTexRef: Ptr, dim: c_int, am: c_int);
    "cuTexRefSetArray" @ 2000 => cuTexRefSetArray(hTexRef: Ptr, hArray: Ptr, Flags: c_uint);
    "cuTexRefSetBorderColor" @ 8000 => cuTexRefSetBorderColor(hTexRef: Ptr, pBorderColor: *mut f32);
    "cuTexRefSetFilterMode" @ 2000 => cuTexRefSetFilterMode(hTexRef: Ptr, fm: c_int);
    "cuTexRefSetFlags" @ 2000 => cuTexRefSetFlags(hTexRef: Ptr, Flags: c_uint);
    "cuTexRefSetFormat" @ 2000 => cuTexRefSetFormat(hTexRef: Ptr, fmt: c_int, NumPackedComponents: c_int);
    "cuTexRefSetMaxAnisotropy" @ 5000 => cuTexRefSetMaxAnisotropy(hTexRef: Ptr, maxAniso: c_uint);
    "cuTexRefSetMipmapFilterMode" @ 5000 => cuTexRefSetMipmapFilterMode(hTexRef: Ptr, fm: c_int);
    "cuTexRefSetMipmapLevelBias" @ 5000 => cuTexRefSetMipmapLevelBias(hTexRef: Ptr, bias: f32);
    "cuTexRefSetMipmapLevelClamp" @ 5000 => cuTexRefSetMipmapLevelClamp(hTexRef: Ptr, minMipmapLevelClamp: f32, maxMipmapLevelClamp: f32);
    "cuTexRefSetMipmappedArray" @ 5000 => cuTexRefSetMipmappedArray(hTexRef: Ptr, hMipmappedArray: Ptr, Flags: c_uint);

    // Stream capture, graphs, stream memory operations and attributes.
    "cuDeviceGetGraphMemAttribute" @ 11040 => cuDeviceGetGraphMemAttribute(device: CUdevice, attr: c_int, value: Ptr);
    "cuDeviceGraphMemTrim" @ 11040 => cuDeviceGraphMemTrim(device: CUdevice);
    "cuDeviceSetGraphMemAttribute" @ 11040 => cuDeviceSetGraphMemAttribute(device: CUdevice, attr: c_int, value: Ptr);
    "cuGraphAddBatchMemOpNode" @ 11070 => cuGraphAddBatchMemOpNode(phGraphNode: Ptr, hGraph: Ptr, dependencies: CPtr, numDependencies: usize, nodeParams: CPtr);
    "cuGraphAddChildGraphNode" @ 10000 => cuGraphAddChildGraphNode(phGraphNode: Ptr, hGraph: Ptr, dependencies: CPtr, numDependencies: usize, childGraph: Ptr);
    "cuGraphAddExternalSemaphoresSignalNode" @ 11020 => cuGraphAddExternalSemaphoresSignalNode(phGraphNode: Ptr, hGraph: Ptr, dependencies: CPtr, numDependencies: usize, nodeParams: CPtr);
    "cuGraphAddExternalSemaphoresWaitNode" @ 11020 => cuGraphAddExternalSemaphoresWaitNode(phGraphNode: Ptr, hGraph: Ptr, dependencies: CPtr, numDependencies: usize, nodeParams: CPtr);
    "cuGraphAddHostNode" @ 10000 => cuGraphAddHostNode(phGraphNode: Ptr, hGraph: Ptr, dependencies: CPtr, numDependencies: usize, nodeParams: CPtr);
    "cuGraphAddMemAllocNode" @ 11040 => cuGraphAddMemAllocNode(phGraphNode: Ptr, hGraph: Ptr, dependencies: CPtr, numDependencies: usize, nodeParams: Ptr);
    "cuGraphAddMemFreeNode" @ 11040 => cuGraphAddMemFreeNode(phGraphNode: Ptr, hGraph: Ptr, dependencies: CPtr, numDependencies: usize, dptr: CUdeviceptr);
    "cuGraphAddNode" @ 12020 => cuGraphAddNode(phGraphNode: Ptr, hGraph: Ptr, dependencies: CPtr, numDependencies: usize, nodeParams: Ptr);
    "cuGraphAddNode" @ 12030 => cuGraphAddNode_v2(phGraphNode: Ptr, hGraph: Ptr, dependencies: CPtr, dependencyData: CPtr, numDependencies: usize, nodeParams: Ptr);
    "cuGraphBatchMemOpNodeGetParams" @ 11070 => cuGraphBatchMemOpNodeGetParams(hNode: Ptr, nodeParams_out: Ptr);
    "cuGraphBatchMemOpNodeSetParams" @ 11070 => cuGraphBatchMemOpNodeSetParams(hNode: Ptr, nodeParams: CPtr);
    "cuGraphChildGraphNodeGetGraph" @ 10000 => cuGraphChildGraphNodeGetGraph(hNode: Ptr, phGraph: Ptr);
    "cuGraphConditionalHandleCreate" @ 12030 => cuGraphConditionalHandleCreate(pHandle_out: Ptr, hGraph: Ptr, ctx: CUcontext, defaultLaunchValue: c_uint, flags: c_uint);
    "cuGraphDebugDotPrint" @ 11030 => cuGraphDebugDotPrint(hGraph: Ptr, path: *const c_char, flags: c_uint);
    "cuGraphExecBatchMemOpNodeSetParams" @ 11070 => cuGraphExecBatchMemOpNodeSetParams(graphExec: Ptr, node: Ptr, nodeParams: CPtr);
    "cuGraphExecChildGraphNodeSetParams" @ 11010 => cuGraphExecChildGraphNodeSetParams(hGraphExec: Ptr, hNode: Ptr, childGraph: Ptr);
    "cuGraphExecExternalSemaphoresSignalNodeSetParams" @ 11020 => cuGraphExecExternalSemaphoresSignalNodeSetParams(hGraphExec: Ptr, hNode: Ptr, nodeParams: CPtr);
    "cuGraphExecExternalSemaphoresWaitNodeSetParams" @ 11020 => cuGraphExecExternalSemaphoresWaitNodeSetParams(hGraphExec: Ptr, hNode: Ptr, nodeParams: CPtr);
    "cuGraphExecHostNodeSetParams" @ 10020 => cuGraphExecHostNodeSetParams(hGraphExec: Ptr, hNode: Ptr, nodeParams: CPtr);
    "cuGraphExecNodeSetParams" @ 12020 => cuGraphExecNodeSetParams(hGraphExec: Ptr, hNode: Ptr, nodeParams: Ptr);
    "cuGraphExternalSemaphoresSignalNodeGetParams" @ 11020 => cuGraphExternalSemaphoresSignalNodeGetParams(hNode: Ptr, params_out: Ptr);
    "cuGraphExternalSemaphoresSignalNodeSetParams" @ 11020 => cuGraphExternalSemaphoresSignalNodeSetParams(hNode: Ptr, nodeParams: CPtr);
    "cuGraphExternalSemaphoresWaitNodeGetParams" @ 11020 => cuGraphExternalSemaphoresWaitNodeGetParams(hNode: Ptr, params_out: Ptr);
    "cuGraphExternalSemaphoresWaitNodeSetParams" @ 11020 => cuGraphExternalSemaphoresWaitNodeSetParams(hNode: Ptr, nodeParams: CPtr);
    "cuGraphHostNodeGetParams" @ 10000 => cuGraphHostNodeGetParams(hNode: Ptr, nodeParams: Ptr);
    "cuGraphHostNodeSetParams" @ 10000 => cuGraphHostNodeSetParams(hNode: Ptr, nodeParams: CPtr);
    "cuGraphMemAllocNodeGetParams" @ 11040 => cuGraphMemAllocNodeGetParams(hNode: Ptr, params_out: Ptr);
    "cuGraphMemFreeNodeGetParams" @ 11040 => cuGraphMemFreeNodeGetParams(hNode: Ptr, dptr_out: *mut CUdeviceptr);
    "cuGraphNodeGetEnabled" @ 11060 => cuGraphNodeGetEnabled(hGraphExec: Ptr, hNode: Ptr, isEnabled: *mut c_uint);
    "cuGraphNodeSetEnabled" @ 11060 => cuGraphNodeSetEnabled(hGraphExec: Ptr, hNode: Ptr, isEnabled: c_uint);
    "cuGraphNodeSetParams" @ 12020 => cuGraphNodeSetParams(hNode: Ptr, nodeParams: Ptr);
    "cuGraphReleaseUserObject" @ 11030 => cuGraphReleaseUserObject(graph: Ptr, object: Ptr, count: c_uint);
    "cuGraphRetainUserObject" @ 11030 => cuGraphRetainUserObject(graph: Ptr, object: Ptr, count: c_uint, flags: c_uint);
    "cuStreamAttachMemAsync" @ 6000 => cuStreamAttachMemAsync(hStream: CUstream, dptr: CUdeviceptr, length: usize, flags: c_uint);
    "cuStreamAttachMemAsync" @ 7000 => cuStreamAttachMemAsync_ptsz(hStream: CUstream, dptr: CUdeviceptr, length: usize, flags: c_uint);
    "cuStreamBatchMemOp" @ 8000 => cuStreamBatchMemOp(stream: CUstream, count: c_uint, paramArray: Ptr, flags: c_uint);
    "cuStreamBatchMemOp" @ 11070 => cuStreamBatchMemOp_v2(stream: CUstream, count: c_uint, paramArray: Ptr, flags: c_uint);
    "cuStreamBatchMemOp" @ 8000 => cuStreamBatchMemOp_ptsz(stream: CUstream, count: c_uint, paramArray: Ptr, flags: c_uint);
    "cuStreamBatchMemOp" @ 11070 => cuStreamBatchMemOp_v2_ptsz(stream: CUstream, count: c_uint, paramArray: Ptr, flags: c_uint);
    "cuStreamCopyAttributes" @ 11000 => cuStreamCopyAttributes(dstStream: CUstream, srcStream: CUstream);
    "cuStreamCopyAttributes" @ 11000 => cuStreamCopyAttributes_ptsz(dst: CUstream, src: CUstream);
    "cuStreamGetAttribute" @ 11000 => cuStreamGetAttribute(hStream: CUstream, attr: c_int, value: Ptr);
    "cuStreamGetAttribute" @ 11000 => cuStreamGetAttribute_ptsz(hStream: CUstream, attr: c_int, value_out: Ptr);
    "cuStreamGetGreenCtx" @ 12040 => cuStreamGetGreenCtx(hStream: CUstream, phCtx: Ptr);
    "cuStreamSetAttribute" @ 11000 => cuStreamSetAttribute(hStream: CUstream, attr: c_int, param: CPtr);
    "cuStreamSetAttribute" @ 11000 => cuStreamSetAttribute_ptsz(hStream: CUstream, attr: c_int, value: CPtr);
    "cuStreamWaitValue32" @ 8000 => cuStreamWaitValue32(stream: CUstream, addr: CUdeviceptr, value: u32, flags: c_uint);
    "cuStreamWaitValue32" @ 11070 => cuStreamWaitValue32_v2(stream: CUstream, addr: CUdeviceptr, value: u32, flags: c_uint);
    "cuStreamWaitValue32" @ 8000 => cuStreamWaitValue32_ptsz(stream: CUstream, addr: CUdeviceptr, value: u32, flags: c_uint);
    "cuStreamWaitValue32" @ 11070 => cuStreamWaitValue32_v2_ptsz(stream: CUstream, addr: CUdeviceptr, value: u32, flags: c_uint);
    "cuStreamWaitValue64" @ 9000 => cuStreamWaitValue64(stream: CUstream, addr: CUdeviceptr, value: c_ulonglong, flags: c_uint);
    "cuStreamWaitValue64" @ 11070 => cuStreamWaitValue64_v2(stream: CUstream, addr: CUdeviceptr, value: c_ulonglong, flags: c_uint);
    "cuStreamWaitValue64" @ 9000 => cuStreamWaitValue64_ptsz(stream: CUstream, addr: CUdeviceptr, value: c_ulonglong, flags: c_uint);
    "cuStreamWaitValue64" @ 11070 => cuStreamWaitValue64_v2_ptsz(stream: CUstream, addr: CUdeviceptr, value: c_ulonglong, flags: c_uint);
    "cuStreamWriteValue32" @ 8000 => cuStreamWriteValue32(stream: CUstream, addr: CUdeviceptr, value: u32, flags: c_uint);
    "cuStreamWriteValue32" @ 11070 => cuStreamWriteValue32_v2(stream: CUstream, addr: CUdeviceptr, value: u32, flags: c_uint);
    "cuStreamWriteValue32" @ 8000 => cuStreamWriteValue32_ptsz(stream: CUstream, addr: CUdeviceptr, value: u32, flags: c_uint);
    "cuStreamWriteValue32" @ 11070 => cuStreamWriteValue32_v2_ptsz(stream: CUstream, addr: CUdeviceptr, value: u32, flags: c_uint);
    "cuStreamWriteValue64" @ 9000 => cuStreamWriteValue64(stream: CUstream, addr: CUdeviceptr, value: c_ulonglong, flags: c_uint);
    "cuStreamWriteValue64" @ 11070 => cuStreamWriteValue64_v2(stream: CUstream, addr: CUdeviceptr, value: c_ulonglong, flags: c_uint);
    "cuStreamWriteValue64" @ 9000 => cuStreamWriteValue64_ptsz(stream: CUstream, addr: CUdeviceptr, value: c_ulonglong, flags: c_uint);
    "cuStreamWriteValue64" @ 11070 => cuStreamWriteValue64_v2_ptsz(stream: CUstream, addr: CUdeviceptr, value: c_ulonglong, flags: c_uint);
    "cuUserObjectCreate" @ 11030 => cuUserObjectCreate(object_out: Ptr, ptr: Ptr, destroy: Ptr, initialRefcount: c_uint, flags: c_uint);
    "cuUserObjectRelease" @ 11030 => cuUserObjectRelease(object: Ptr, count: c_uint);
    "cuUserObjectRetain" @ 11030 => cuUserObjectRetain(object: Ptr, count: c_uint);

    // Launches with special semantics, occupancy, peers, the pre-4.0 launch API.
    "cuFuncSetBlockShape" @ 2000 => cuFuncSetBlockShape(hfunc: CUfunction, x: c_int, y: c_int, z: c_int);
    "cuFuncSetSharedSize" @ 2000 => cuFuncSetSharedSize(hfunc: CUfunction, bytes: c_uint);
    "cuLaunch" @ 2000 => cuLaunch(f: CUfunction);
    "cuLaunchCooperativeKernelMultiDevice" @ 9000 => cuLaunchCooperativeKernelMultiDevice(launchParamsList: Ptr, numDevices: c_uint, flags: c_uint);
    "cuLaunchGrid" @ 2000 => cuLaunchGrid(f: CUfunction, grid_width: c_int, grid_height: c_int);
    "cuLaunchGridAsync" @ 2000 => cuLaunchGridAsync(f: CUfunction, grid_width: c_int, grid_height: c_int, hStream: CUstream);
    "cuParamSetSize" @ 2000 => cuParamSetSize(hfunc: CUfunction, numbytes: c_uint);
    "cuParamSetTexRef" @ 2000 => cuParamSetTexRef(hfunc: CUfunction, texunit: c_int, hTexRef: Ptr);
    "cuParamSetf" @ 2000 => cuParamSetf(hfunc: CUfunction, offset: c_int, value: f32);
    "cuParamSeti" @ 2000 => cuParamSeti(hfunc: CUfunction, offset: c_int, value: c_uint);
    "cuParamSetv" @ 2000 => cuParamSetv(hfunc: CUfunction, offset: c_int, ptr: Ptr, numbytes: c_uint);

    // The JIT linker.
    "cuLinkAddData" @ 5050 => cuLinkAddData(state: Ptr, type_: c_int, data: Ptr, size: usize, name: *const c_char, numOptions: c_uint, options: Ptr, optionValues: Ptr);
    "cuLinkAddData" @ 6050 => cuLinkAddData_v2(state: Ptr, type_: c_int, data: Ptr, size: usize, name: *const c_char, numOptions: c_uint, options: Ptr, optionValues: Ptr);
    "cuLinkAddFile" @ 5050 => cuLinkAddFile(state: Ptr, type_: c_int, path: *const c_char, numOptions: c_uint, options: Ptr, optionValues: Ptr);
    "cuLinkAddFile" @ 6050 => cuLinkAddFile_v2(state: Ptr, type_: c_int, path: *const c_char, numOptions: c_uint, options: Ptr, optionValues: Ptr);
    "cuLinkComplete" @ 5050 => cuLinkComplete(state: Ptr, cubinOut: Ptr, sizeOut: *mut usize);
    "cuLinkCreate" @ 5050 => cuLinkCreate(numOptions: c_uint, options: Ptr, optionValues: Ptr, stateOut: Ptr);
    "cuLinkCreate" @ 6050 => cuLinkCreate_v2(numOptions: c_uint, options: Ptr, optionValues: Ptr, stateOut: Ptr);
    "cuLinkDestroy" @ 5050 => cuLinkDestroy(state: Ptr);

    // Green contexts and device resources.
    "cuCtxFromGreenCtx" @ 12040 => cuCtxFromGreenCtx(pContext: *mut CUcontext, hCtx: Ptr);
    "cuCtxGetDevResource" @ 12040 => cuCtxGetDevResource(hCtx: CUcontext, result: Ptr, type_: c_int);
    "cuDevResourceGenerateDesc" @ 12040 => cuDevResourceGenerateDesc(phDesc: Ptr, resources: Ptr, nbResources: c_uint);
    "cuDevSmResourceSplitByCount" @ 12040 => cuDevSmResourceSplitByCount(result: Ptr, nbGroups: *mut c_uint, input: CPtr, remaining: Ptr, useFlags: c_uint, minCount: c_uint);
    "cuDeviceGetDevResource" @ 12040 => cuDeviceGetDevResource(dev: CUdevice, result: Ptr, type_: c_int);
    "cuGreenCtxCreate" @ 12040 => cuGreenCtxCreate(phCtx: Ptr, desc: Ptr, dev: CUdevice, flags: c_uint);
    "cuGreenCtxDestroy" @ 12040 => cuGreenCtxDestroy(hCtx: Ptr);
    "cuGreenCtxGetDevResource" @ 12040 => cuGreenCtxGetDevResource(hCtx: Ptr, result: Ptr, type_: c_int);
    "cuGreenCtxGetId" @ 12090 => cuGreenCtxGetId(greenCtx: Ptr, greenCtxId: *mut c_ulonglong);
    "cuGreenCtxRecordEvent" @ 12040 => cuGreenCtxRecordEvent(hCtx: Ptr, hEvent: CUevent);
    "cuGreenCtxStreamCreate" @ 12050 => cuGreenCtxStreamCreate(phStream: *mut CUstream, greenCtx: Ptr, flags: c_uint, priority: c_int);
    "cuGreenCtxWaitEvent" @ 12040 => cuGreenCtxWaitEvent(hCtx: Ptr, hEvent: CUevent);

    // Graphics interop: OpenGL, EGL, VDPAU.
    "cuEGLStreamConsumerAcquireFrame" @ 7000 => cuEGLStreamConsumerAcquireFrame(conn: Ptr, pCudaResource: Ptr, pStream: *mut CUstream, timeout: c_uint);
    "cuEGLStreamConsumerConnect" @ 7000 => cuEGLStreamConsumerConnect(conn: Ptr, stream: Ptr);
    "cuEGLStreamConsumerConnectWithFlags" @ 8000 => cuEGLStreamConsumerConnectWithFlags(conn: Ptr, stream: Ptr, flags: c_uint);
    "cuEGLStreamConsumerDisconnect" @ 7000 => cuEGLStreamConsumerDisconnect(conn: Ptr);
    "cuEGLStreamConsumerReleaseFrame" @ 7000 => cuEGLStreamConsumerReleaseFrame(conn: Ptr, pCudaResource: Ptr, pStream: *mut CUstream);
    "cuEGLStreamProducerConnect" @ 7000 => cuEGLStreamProducerConnect(conn: Ptr, stream: Ptr, width: c_int, height: c_int);
    "cuEGLStreamProducerDisconnect" @ 7000 => cuEGLStreamProducerDisconnect(conn: Ptr);
    "cuEGLStreamProducerPresentFrame" @ 7000 => cuEGLStreamProducerPresentFrame(conn: Ptr, eglframe: CUeglFrame, pStream: *mut CUstream);
    "cuEGLStreamProducerReturnFrame" @ 7000 => cuEGLStreamProducerReturnFrame(conn: Ptr, eglframe: Ptr, pStream: *mut CUstream);
    "cuEventCreateFromEGLSync" @ 9000 => cuEventCreateFromEGLSync(phEvent: *mut CUevent, eglSync: Ptr, flags: c_uint);
    "cuGLCtxCreate" @ 2000 => cuGLCtxCreate(pCtx: *mut CUcontext, Flags: c_uint, device: CUdevice);
    "cuGLCtxCreate" @ 3020 => cuGLCtxCreate_v2(pCtx: *mut CUcontext, Flags: c_uint, device: CUdevice);
    "cuGLGetDevices" @ 4010 => cuGLGetDevices(pCudaDeviceCount: *mut c_uint, pCudaDevices: *mut CUdevice, cudaDeviceCount: c_uint, deviceList: c_int);
    "cuGLGetDevices" @ 6050 => cuGLGetDevices_v2(pCudaDeviceCount: *mut c_uint, pCudaDevices: *mut CUdevice, cudaDeviceCount: c_uint, deviceList: c_int);
    "cuGLInit" @ 2000 => cuGLInit();
    "cuGLMapBufferObject" @ 2000 => cuGLMapBufferObject(dptr: *mut CUdeviceptr_v1, size: *mut c_uint, buffer: c_uint);
    "cuGLMapBufferObject" @ 3020 => cuGLMapBufferObject_v2(dptr: *mut CUdeviceptr, size: *mut usize, buffer: c_uint);
    "cuGLMapBufferObject" @ 7000 => cuGLMapBufferObject_v2_ptds(dptr: *mut CUdeviceptr, size: *mut usize, buffer: c_uint);
    "cuGLMapBufferObjectAsync" @ 2030 => cuGLMapBufferObjectAsync(dptr: *mut CUdeviceptr_v1, size: *mut c_uint, buffer: c_uint, hStream: CUstream);
    "cuGLMapBufferObjectAsync" @ 3020 => cuGLMapBufferObjectAsync_v2(dptr: *mut CUdeviceptr, size: *mut usize, buffer: c_uint, hStream: CUstream);
    "cuGLMapBufferObjectAsync" @ 7000 => cuGLMapBufferObjectAsync_v2_ptsz(dptr: *mut CUdeviceptr, size: *mut usize, buffer: c_uint, hStream: CUstream);
    "cuGLRegisterBufferObject" @ 2000 => cuGLRegisterBufferObject(buffer: c_uint);
    "cuGLSetBufferObjectMapFlags" @ 2030 => cuGLSetBufferObjectMapFlags(buffer: c_uint, Flags: c_uint);
    "cuGLUnmapBufferObject" @ 2000 => cuGLUnmapBufferObject(buffer: c_uint);
    "cuGLUnmapBufferObjectAsync" @ 2030 => cuGLUnmapBufferObjectAsync(buffer: c_uint, hStream: CUstream);
    "cuGLUnregisterBufferObject" @ 2000 => cuGLUnregisterBufferObject(buffer: c_uint);
    "cuGraphicsEGLRegisterImage" @ 7000 => cuGraphicsEGLRegisterImage(pCudaResource: Ptr, image: Ptr, flags: c_uint);
    "cuGraphicsGLRegisterBuffer" @ 3000 => cuGraphicsGLRegisterBuffer(pCudaResource: Ptr, buffer: c_uint, Flags: c_uint);
    "cuGraphicsGLRegisterImage" @ 3000 => cuGraphicsGLRegisterImage(pCudaResource: Ptr, image: c_uint, target: c_uint, Flags: c_uint);
    "cuGraphicsMapResources" @ 3000 => cuGraphicsMapResources(count: c_uint, resources: Ptr, hStream: CUstream);
    "cuGraphicsMapResources" @ 7000 => cuGraphicsMapResources_ptsz(count: c_uint, resources: Ptr, hStream: CUstream);
    "cuGraphicsResourceGetMappedEglFrame" @ 7000 => cuGraphicsResourceGetMappedEglFrame(eglFrame: Ptr, resource: Ptr, index: c_uint, mipLevel: c_uint);
    "cuGraphicsResourceGetMappedMipmappedArray" @ 5000 => cuGraphicsResourceGetMappedMipmappedArray(pMipmappedArray: Ptr, resource: Ptr);
    "cuGraphicsResourceGetMappedPointer" @ 3000 => cuGraphicsResourceGetMappedPointer(pDevPtr: *mut CUdeviceptr_v1, pSize: *mut c_uint, resource: Ptr);
    "cuGraphicsResourceGetMappedPointer" @ 3020 => cuGraphicsResourceGetMappedPointer_v2(pDevPtr: *mut CUdeviceptr, pSize: *mut usize, resource: Ptr);
    "cuGraphicsResourceSetMapFlags" @ 3000 => cuGraphicsResourceSetMapFlags(resource: Ptr, flags: c_uint);
    "cuGraphicsResourceSetMapFlags" @ 6050 => cuGraphicsResourceSetMapFlags_v2(resource: Ptr, flags: c_uint);
    "cuGraphicsSubResourceGetMappedArray" @ 3000 => cuGraphicsSubResourceGetMappedArray(pArray: Ptr, resource: Ptr, arrayIndex: c_uint, mipLevel: c_uint);
    "cuGraphicsUnmapResources" @ 3000 => cuGraphicsUnmapResources(count: c_uint, resources: Ptr, hStream: CUstream);
    "cuGraphicsUnmapResources" @ 7000 => cuGraphicsUnmapResources_ptsz(count: c_uint, resources: Ptr, hStream: CUstream);
    "cuGraphicsUnregisterResource" @ 3000 => cuGraphicsUnregisterResource(resource: Ptr);
    "cuGraphicsVDPAURegisterOutputSurface" @ 3010 => cuGraphicsVDPAURegisterOutputSurface(pCudaResource: Ptr, vdpSurface: u32, flags: c_uint);
    "cuGraphicsVDPAURegisterVideoSurface" @ 3010 => cuGraphicsVDPAURegisterVideoSurface(pCudaResource: Ptr, vdpSurface: u32, flags: c_uint);
    "cuVDPAUCtxCreate" @ 3010 => cuVDPAUCtxCreate(pCtx: *mut CUcontext, flags: c_uint, device: CUdevice, vdpDevice: u32, vdpGetProcAddress: Ptr);
    "cuVDPAUCtxCreate" @ 3020 => cuVDPAUCtxCreate_v2(pCtx: *mut CUcontext, flags: c_uint, device: CUdevice, vdpDevice: u32, vdpGetProcAddress: Ptr);
    "cuVDPAUGetDevice" @ 3010 => cuVDPAUGetDevice(pDevice: *mut CUdevice, vdpDevice: u32, vdpGetProcAddress: Ptr);
    "cuWGLGetDevice" @ 2020 => cuWGLGetDevice(pDevice: *mut CUdevice, hGpu: Ptr);

    // Process-wide: checkpoints, core dumps, driver logs.
    "cuCheckpointProcessCheckpoint" @ 12080 => cuCheckpointProcessCheckpoint(pid: c_int, args: Ptr);
    "cuCheckpointProcessGetRestoreThreadId" @ 12080 => cuCheckpointProcessGetRestoreThreadId(pid: c_int, tid: *mut c_int);
    "cuCheckpointProcessGetState" @ 12080 => cuCheckpointProcessGetState(pid: c_int, state: Ptr);
    "cuCheckpointProcessLock" @ 12080 => cuCheckpointProcessLock(pid: c_int, args: Ptr);
    "cuCheckpointProcessRestore" @ 12080 => cuCheckpointProcessRestore(pid: c_int, args: Ptr);
    "cuCheckpointProcessUnlock" @ 12080 => cuCheckpointProcessUnlock(pid: c_int, args: Ptr);
    "cuCoredumpGetAttribute" @ 12010 => cuCoredumpGetAttribute(get: c_int, value: Ptr, size: *mut usize);
    "cuCoredumpGetAttributeGlobal" @ 12010 => cuCoredumpGetAttributeGlobal(get: c_int, value: Ptr, size: *mut usize);
    "cuCoredumpSetAttribute" @ 12010 => cuCoredumpSetAttribute(set: c_int, value: Ptr, size: *mut usize);
    "cuCoredumpSetAttributeGlobal" @ 12010 => cuCoredumpSetAttributeGlobal(set: c_int, value: Ptr, size: *mut usize);
    "cuLogsCurrent" @ 12090 => cuLogsCurrent(iterator: Ptr, flags: c_uint);
    "cuLogsDumpToFile" @ 12090 => cuLogsDumpToFile(iterator: Ptr, pathToFile: *const c_char, flags: c_uint);
    "cuLogsDumpToMemory" @ 12090 => cuLogsDumpToMemory(iterator: Ptr, buffer: *mut c_char, size: *mut usize, flags: c_uint);
    "cuLogsRegisterCallback" @ 12090 => cuLogsRegisterCallback(callbackFunc: Ptr, userData: Ptr, callback: Ptr);
    "cuLogsUnregisterCallback" @ 12090 => cuLogsUnregisterCallback(callback: Ptr);

    // Odds and ends.
    "cuCtxAttach" @ 2000 => cuCtxAttach(pctx: *mut CUcontext, flags: c_uint);
    "cuCtxDetach" @ 2000 => cuCtxDetach(ctx: CUcontext);
    "cuCtxGetExecAffinity" @ 11040 => cuCtxGetExecAffinity(pExecAffinity: Ptr, type_: c_int);
    "cuCtxRecordEvent" @ 12050 => cuCtxRecordEvent(hCtx: CUcontext, hEvent: CUevent);
    "cuCtxWaitEvent" @ 12050 => cuCtxWaitEvent(hCtx: CUcontext, hEvent: CUevent);
    "cuDeviceGetHostAtomicCapabilities" @ 13000 => cuDeviceGetHostAtomicCapabilities(capabilities: *mut c_uint, operations: CPtr, count: c_uint, dev: CUdevice);
    "cuDeviceGetProperties" @ 2000 => cuDeviceGetProperties(prop: Ptr, dev: CUdevice);
    "cuDeviceRegisterAsyncNotification" @ 12040 => cuDeviceRegisterAsyncNotification(device: CUdevice, callbackFunc: Ptr, userData: Ptr, callback: Ptr);
    "cuDeviceUnregisterAsyncNotification" @ 12040 => cuDeviceUnregisterAsyncNotification(device: CUdevice, callback: Ptr);
    "cuFlushGPUDirectRDMAWrites" @ 11030 => cuFlushGPUDirectRDMAWrites(target: c_int, scope: c_int);
    "cuLibraryGetManaged" @ 12000 => cuLibraryGetManaged(dptr: *mut CUdeviceptr, bytes: *mut usize, library: CUlibrary, name: *const c_char);
    "cuLibraryGetUnifiedFunction" @ 12000 => cuLibraryGetUnifiedFunction(fptr: Ptr, library: CUlibrary, symbol: *const c_char);
}
