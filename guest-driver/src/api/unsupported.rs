//! Driver entry points gpuvisor does not implement yet. Each is exported
//! (so programs that merely link or look them up still load), logs its name
//! once and returns `CUDA_ERROR_NOT_SUPPORTED`; cuGetProcAddress finds them
//! under their base name and the CUDA version that introduced them.

use super::proc_address::ProcRow;
use super::types::*;
use protocol::cuda::*;
use std::ffi::{c_char, c_int, c_uint, c_ulonglong, c_void};

/// `CUmemLocation`, passed by value.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CUmemLocation {
    pub type_: c_int,
    pub id: c_int,
}

/// `CUipcMemHandle` / `CUipcEventHandle`, passed by value.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CUipcHandle {
    pub reserved: [c_char; 64],
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
            vec![$(ProcRow::new($base, $since, stringify!($name), $name as *const () as usize, false)),*]
        }
    };
}

stubs! {
    // Memory the guest cannot offer yet: managed, pitched, pools, the
    // virtual-memory API, IPC, external memory.
    "cuMemAllocManaged" @ 6000 => cuMemAllocManaged(dptr: *mut CUdeviceptr, bytesize: usize, flags: c_uint);
    "cuMemAllocPitch" @ 2000 => cuMemAllocPitch(dptr: *mut CUdeviceptr_v1, pPitch: *mut c_uint, WidthInBytes: c_uint, Height: c_uint, ElementSizeBytes: c_uint);
    "cuMemAllocPitch" @ 3020 => cuMemAllocPitch_v2(dptr: *mut CUdeviceptr, pPitch: *mut usize, WidthInBytes: usize, Height: usize, ElementSizeBytes: c_uint);
    "cuMemAllocAsync" @ 11020 => cuMemAllocAsync(dptr: *mut CUdeviceptr, bytesize: usize, hStream: CUstream);
    "cuMemAllocFromPoolAsync" @ 11020 => cuMemAllocFromPoolAsync(dptr: *mut CUdeviceptr, bytesize: usize, pool: Ptr, hStream: CUstream);
    "cuMemFreeAsync" @ 11020 => cuMemFreeAsync(dptr: CUdeviceptr, hStream: CUstream);
    "cuMemPoolCreate" @ 11020 => cuMemPoolCreate(pool: *mut Ptr, poolProps: CPtr);
    "cuMemPoolDestroy" @ 11020 => cuMemPoolDestroy(pool: Ptr);
    "cuMemPoolTrimTo" @ 11020 => cuMemPoolTrimTo(pool: Ptr, minBytesToKeep: usize);
    "cuMemPoolSetAttribute" @ 11020 => cuMemPoolSetAttribute(pool: Ptr, attr: c_int, value: Ptr);
    "cuMemPoolGetAttribute" @ 11020 => cuMemPoolGetAttribute(pool: Ptr, attr: c_int, value: Ptr);
    "cuMemPoolSetAccess" @ 11020 => cuMemPoolSetAccess(pool: Ptr, map: CPtr, count: usize);
    "cuDeviceGetDefaultMemPool" @ 11020 => cuDeviceGetDefaultMemPool(pool_out: *mut Ptr, dev: CUdevice);
    "cuDeviceGetMemPool" @ 11020 => cuDeviceGetMemPool(pool: *mut Ptr, dev: CUdevice);
    "cuDeviceSetMemPool" @ 11020 => cuDeviceSetMemPool(dev: CUdevice, pool: Ptr);
    "cuMemPrefetchAsync" @ 8000 => cuMemPrefetchAsync(devPtr: CUdeviceptr, count: usize, dstDevice: CUdevice, hStream: CUstream);
    "cuMemPrefetchAsync" @ 12020 => cuMemPrefetchAsync_v2(devPtr: CUdeviceptr, count: usize, location: CUmemLocation, flags: c_uint, hStream: CUstream);
    "cuMemAdvise" @ 8000 => cuMemAdvise(devPtr: CUdeviceptr, count: usize, advice: c_int, device: CUdevice);
    "cuMemAdvise" @ 12020 => cuMemAdvise_v2(devPtr: CUdeviceptr, count: usize, advice: c_int, location: CUmemLocation);
    "cuMemRangeGetAttribute" @ 8000 => cuMemRangeGetAttribute(data: Ptr, dataSize: usize, attribute: c_int, devPtr: CUdeviceptr, count: usize);
    "cuPointerSetAttribute" @ 6000 => cuPointerSetAttribute(value: CPtr, attribute: c_uint, ptr: CUdeviceptr);
    "cuMemCreate" @ 10020 => cuMemCreate(handle: *mut c_ulonglong, size: usize, prop: CPtr, flags: c_ulonglong);
    "cuMemRelease" @ 10020 => cuMemRelease(handle: c_ulonglong);
    "cuMemAddressReserve" @ 10020 => cuMemAddressReserve(ptr: *mut CUdeviceptr, size: usize, alignment: usize, addr: CUdeviceptr, flags: c_ulonglong);
    "cuMemAddressFree" @ 10020 => cuMemAddressFree(ptr: CUdeviceptr, size: usize);
    "cuMemMap" @ 10020 => cuMemMap(ptr: CUdeviceptr, size: usize, offset: usize, handle: c_ulonglong, flags: c_ulonglong);
    "cuMemUnmap" @ 10020 => cuMemUnmap(ptr: CUdeviceptr, size: usize);
    "cuMemSetAccess" @ 10020 => cuMemSetAccess(ptr: CUdeviceptr, size: usize, desc: CPtr, count: usize);
    "cuMemGetAccess" @ 10020 => cuMemGetAccess(flags: *mut c_ulonglong, location: CPtr, ptr: CUdeviceptr);
    "cuMemGetAllocationGranularity" @ 10020 => cuMemGetAllocationGranularity(granularity: *mut usize, prop: CPtr, option: c_int);
    "cuMemGetAllocationPropertiesFromHandle" @ 10020 => cuMemGetAllocationPropertiesFromHandle(prop: Ptr, handle: c_ulonglong);
    "cuMemExportToShareableHandle" @ 10020 => cuMemExportToShareableHandle(shareableHandle: Ptr, handle: c_ulonglong, handleType: c_int, flags: c_ulonglong);
    "cuMemImportFromShareableHandle" @ 10020 => cuMemImportFromShareableHandle(handle: *mut c_ulonglong, osHandle: Ptr, shHandleType: c_int);
    "cuMemRetainAllocationHandle" @ 11000 => cuMemRetainAllocationHandle(handle: *mut c_ulonglong, addr: Ptr);
    "cuMemGetHandleForAddressRange" @ 11070 => cuMemGetHandleForAddressRange(handle: Ptr, dptr: CUdeviceptr, size: usize, handleType: c_int, flags: c_ulonglong);
    "cuIpcGetMemHandle" @ 4010 => cuIpcGetMemHandle(pHandle: *mut CUipcHandle, dptr: CUdeviceptr);
    "cuIpcOpenMemHandle" @ 4010 => cuIpcOpenMemHandle(pdptr: *mut CUdeviceptr, handle: CUipcHandle, Flags: c_uint);
    "cuIpcOpenMemHandle" @ 11000 => cuIpcOpenMemHandle_v2(pdptr: *mut CUdeviceptr, handle: CUipcHandle, Flags: c_uint);
    "cuIpcCloseMemHandle" @ 4010 => cuIpcCloseMemHandle(dptr: CUdeviceptr);
    "cuIpcGetEventHandle" @ 4010 => cuIpcGetEventHandle(pHandle: *mut CUipcHandle, event: CUevent);
    "cuIpcOpenEventHandle" @ 4010 => cuIpcOpenEventHandle(phEvent: *mut CUevent, handle: CUipcHandle);
    "cuImportExternalMemory" @ 10000 => cuImportExternalMemory(extMem_out: *mut Ptr, memHandleDesc: CPtr);
    "cuExternalMemoryGetMappedBuffer" @ 10000 => cuExternalMemoryGetMappedBuffer(devPtr: *mut CUdeviceptr, extMem: Ptr, bufferDesc: CPtr);
    "cuDestroyExternalMemory" @ 10000 => cuDestroyExternalMemory(extMem: Ptr);
    "cuImportExternalSemaphore" @ 10000 => cuImportExternalSemaphore(extSem_out: *mut Ptr, semHandleDesc: CPtr);
    "cuSignalExternalSemaphoresAsync" @ 10000 => cuSignalExternalSemaphoresAsync(extSemArray: CPtr, paramsArray: CPtr, numExtSems: c_uint, stream: CUstream);
    "cuWaitExternalSemaphoresAsync" @ 10000 => cuWaitExternalSemaphoresAsync(extSemArray: CPtr, paramsArray: CPtr, numExtSems: c_uint, stream: CUstream);
    "cuDestroyExternalSemaphore" @ 10000 => cuDestroyExternalSemaphore(extSem: Ptr);

    // Copies and memsets with pitches, arrays or peers.
    "cuMemcpy2D" @ 3020 => cuMemcpy2D_v2(pCopy: CPtr);
    "cuMemcpy2DUnaligned" @ 3020 => cuMemcpy2DUnaligned_v2(pCopy: CPtr);
    "cuMemcpy2DAsync" @ 3020 => cuMemcpy2DAsync_v2(pCopy: CPtr, hStream: CUstream);
    "cuMemcpy3D" @ 3020 => cuMemcpy3D_v2(pCopy: CPtr);
    "cuMemcpy3DAsync" @ 3020 => cuMemcpy3DAsync_v2(pCopy: CPtr, hStream: CUstream);
    "cuMemcpy3DPeer" @ 4000 => cuMemcpy3DPeer(pCopy: CPtr);
    "cuMemcpy3DPeerAsync" @ 4000 => cuMemcpy3DPeerAsync(pCopy: CPtr, hStream: CUstream);
    "cuMemcpyPeer" @ 4000 => cuMemcpyPeer(dstDevice: CUdeviceptr, dstContext: CUcontext, srcDevice: CUdeviceptr, srcContext: CUcontext, ByteCount: usize);
    "cuMemcpyPeerAsync" @ 4000 => cuMemcpyPeerAsync(dstDevice: CUdeviceptr, dstContext: CUcontext, srcDevice: CUdeviceptr, srcContext: CUcontext, ByteCount: usize, hStream: CUstream);
    "cuMemsetD2D8" @ 3020 => cuMemsetD2D8_v2(dstDevice: CUdeviceptr, dstPitch: usize, uc: u8, Width: usize, Height: usize);
    "cuMemsetD2D16" @ 3020 => cuMemsetD2D16_v2(dstDevice: CUdeviceptr, dstPitch: usize, us: u16, Width: usize, Height: usize);
    "cuMemsetD2D32" @ 3020 => cuMemsetD2D32_v2(dstDevice: CUdeviceptr, dstPitch: usize, ui: c_uint, Width: usize, Height: usize);
    "cuMemsetD2D8Async" @ 3020 => cuMemsetD2D8Async(dstDevice: CUdeviceptr, dstPitch: usize, uc: u8, Width: usize, Height: usize, hStream: CUstream);
    "cuMemsetD2D16Async" @ 3020 => cuMemsetD2D16Async(dstDevice: CUdeviceptr, dstPitch: usize, us: u16, Width: usize, Height: usize, hStream: CUstream);
    "cuMemsetD2D32Async" @ 3020 => cuMemsetD2D32Async(dstDevice: CUdeviceptr, dstPitch: usize, ui: c_uint, Width: usize, Height: usize, hStream: CUstream);
    "cuArrayCreate" @ 3020 => cuArrayCreate_v2(pHandle: *mut Ptr, pAllocateArray: CPtr);
    "cuArray3DCreate" @ 3020 => cuArray3DCreate_v2(pHandle: *mut Ptr, pAllocateArray: CPtr);
    "cuArrayDestroy" @ 2000 => cuArrayDestroy(hArray: Ptr);

    // Textures and surfaces.
    "cuTexObjectCreate" @ 5000 => cuTexObjectCreate(pTexObject: *mut c_ulonglong, pResDesc: CPtr, pTexDesc: CPtr, pResViewDesc: CPtr);
    "cuTexObjectDestroy" @ 5000 => cuTexObjectDestroy(texObject: c_ulonglong);
    "cuSurfObjectCreate" @ 5000 => cuSurfObjectCreate(pSurfObject: *mut c_ulonglong, pResDesc: CPtr);
    "cuSurfObjectDestroy" @ 5000 => cuSurfObjectDestroy(surfObject: c_ulonglong);
    "cuTensorMapEncodeTiled" @ 12000 => cuTensorMapEncodeTiled(tensorMap: Ptr, tensorDataType: c_int, tensorRank: c_uint, globalAddress: Ptr, globalDim: CPtr, globalStrides: CPtr, boxDim: CPtr, elementStrides: CPtr, interleave: c_int, swizzle: c_int, l2Promotion: c_int, oobFill: c_int);
    "cuTensorMapEncodeIm2col" @ 12000 => cuTensorMapEncodeIm2col(tensorMap: Ptr, tensorDataType: c_int, tensorRank: c_uint, globalAddress: Ptr, globalDim: CPtr, globalStrides: CPtr, pixelBoxLowerCorner: CPtr, pixelBoxUpperCorner: CPtr, channelsPerPixel: c_uint, pixelsPerColumn: c_uint, elementStrides: CPtr, interleave: c_int, swizzle: c_int, l2Promotion: c_int, oobFill: c_int);
    "cuTensorMapReplaceAddress" @ 12000 => cuTensorMapReplaceAddress(tensorMap: Ptr, globalAddress: Ptr);

    // Stream capture and graphs.
    "cuStreamBeginCapture" @ 10000 => cuStreamBeginCapture(hStream: CUstream);
    "cuStreamBeginCapture" @ 10010 => cuStreamBeginCapture_v2(hStream: CUstream, mode: c_int);
    "cuStreamEndCapture" @ 10000 => cuStreamEndCapture(hStream: CUstream, phGraph: *mut Ptr);
    "cuStreamGetAttribute" @ 11000 => cuStreamGetAttribute(hStream: CUstream, attr: c_int, value_out: Ptr);
    "cuStreamSetAttribute" @ 11000 => cuStreamSetAttribute(hStream: CUstream, attr: c_int, value: CPtr);
    "cuStreamCopyAttributes" @ 11000 => cuStreamCopyAttributes(dst: CUstream, src: CUstream);
    "cuStreamAttachMemAsync" @ 6000 => cuStreamAttachMemAsync(hStream: CUstream, dptr: CUdeviceptr, length: usize, flags: c_uint);
    "cuStreamWaitValue32" @ 8000 => cuStreamWaitValue32(stream: CUstream, addr: CUdeviceptr, value: u32, flags: c_uint);
    "cuStreamWaitValue32" @ 11070 => cuStreamWaitValue32_v2(stream: CUstream, addr: CUdeviceptr, value: u32, flags: c_uint);
    "cuStreamWriteValue32" @ 8000 => cuStreamWriteValue32(stream: CUstream, addr: CUdeviceptr, value: u32, flags: c_uint);
    "cuStreamWriteValue32" @ 11070 => cuStreamWriteValue32_v2(stream: CUstream, addr: CUdeviceptr, value: u32, flags: c_uint);
    "cuStreamWaitValue64" @ 9000 => cuStreamWaitValue64(stream: CUstream, addr: CUdeviceptr, value: u64, flags: c_uint);
    "cuStreamWaitValue64" @ 11070 => cuStreamWaitValue64_v2(stream: CUstream, addr: CUdeviceptr, value: u64, flags: c_uint);
    "cuStreamWriteValue64" @ 9000 => cuStreamWriteValue64(stream: CUstream, addr: CUdeviceptr, value: u64, flags: c_uint);
    "cuStreamWriteValue64" @ 11070 => cuStreamWriteValue64_v2(stream: CUstream, addr: CUdeviceptr, value: u64, flags: c_uint);
    "cuStreamBatchMemOp" @ 8000 => cuStreamBatchMemOp(stream: CUstream, count: c_uint, paramArray: Ptr, flags: c_uint);
    "cuStreamBatchMemOp" @ 11070 => cuStreamBatchMemOp_v2(stream: CUstream, count: c_uint, paramArray: Ptr, flags: c_uint);
    "cuGraphCreate" @ 10000 => cuGraphCreate(phGraph: *mut Ptr, flags: c_uint);
    "cuGraphDestroy" @ 10000 => cuGraphDestroy(hGraph: Ptr);
    "cuGraphAddKernelNode" @ 10000 => cuGraphAddKernelNode(phGraphNode: *mut Ptr, hGraph: Ptr, dependencies: CPtr, numDependencies: usize, nodeParams: CPtr);
    "cuGraphAddKernelNode" @ 12000 => cuGraphAddKernelNode_v2(phGraphNode: *mut Ptr, hGraph: Ptr, dependencies: CPtr, numDependencies: usize, nodeParams: CPtr);
    "cuGraphAddMemcpyNode" @ 10000 => cuGraphAddMemcpyNode(phGraphNode: *mut Ptr, hGraph: Ptr, dependencies: CPtr, numDependencies: usize, copyParams: CPtr, ctx: CUcontext);
    "cuGraphAddMemsetNode" @ 10000 => cuGraphAddMemsetNode(phGraphNode: *mut Ptr, hGraph: Ptr, dependencies: CPtr, numDependencies: usize, memsetParams: CPtr, ctx: CUcontext);
    "cuGraphGetNodes" @ 10000 => cuGraphGetNodes(hGraph: Ptr, nodes: *mut Ptr, numNodes: *mut usize);
    "cuGraphInstantiate" @ 10000 => cuGraphInstantiate(phGraphExec: *mut Ptr, hGraph: Ptr, phErrorNode: *mut Ptr, logBuffer: *mut c_char, bufferSize: usize);
    "cuGraphInstantiate" @ 11000 => cuGraphInstantiate_v2(phGraphExec: *mut Ptr, hGraph: Ptr, phErrorNode: *mut Ptr, logBuffer: *mut c_char, bufferSize: usize);
    "cuGraphInstantiateWithFlags" @ 11040 => cuGraphInstantiateWithFlags(phGraphExec: *mut Ptr, hGraph: Ptr, flags: c_ulonglong);
    "cuGraphInstantiateWithParams" @ 12000 => cuGraphInstantiateWithParams(phGraphExec: *mut Ptr, hGraph: Ptr, instantiateParams: Ptr);
    "cuGraphUpload" @ 11010 => cuGraphUpload(hGraphExec: Ptr, hStream: CUstream);
    "cuGraphLaunch" @ 10000 => cuGraphLaunch(hGraphExec: Ptr, hStream: CUstream);
    "cuGraphExecDestroy" @ 10000 => cuGraphExecDestroy(hGraphExec: Ptr);
    "cuGraphExecUpdate" @ 10020 => cuGraphExecUpdate(hGraphExec: Ptr, hGraph: Ptr, hErrorNode_out: *mut Ptr, updateResult_out: *mut c_int);
    "cuGraphExecUpdate" @ 12000 => cuGraphExecUpdate_v2(hGraphExec: Ptr, hGraph: Ptr, resultInfo: Ptr);
    "cuGraphDebugDotPrint" @ 11030 => cuGraphDebugDotPrint(hGraph: Ptr, path: *const c_char, flags: c_uint);

    // Launches with special semantics, occupancy, peers.
    "cuLaunchCooperativeKernel" @ 9000 => cuLaunchCooperativeKernel(f: CUfunction, gridDimX: c_uint, gridDimY: c_uint, gridDimZ: c_uint, blockDimX: c_uint, blockDimY: c_uint, blockDimZ: c_uint, sharedMemBytes: c_uint, hStream: CUstream, kernelParams: *mut Ptr);
    "cuLaunchCooperativeKernelMultiDevice" @ 9000 => cuLaunchCooperativeKernelMultiDevice(launchParamsList: Ptr, numDevices: c_uint, flags: c_uint);
    "cuOccupancyMaxActiveBlocksPerMultiprocessor" @ 6050 => cuOccupancyMaxActiveBlocksPerMultiprocessor(numBlocks: *mut c_int, func: CUfunction, blockSize: c_int, dynamicSMemSize: usize);
    "cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags" @ 7000 => cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(numBlocks: *mut c_int, func: CUfunction, blockSize: c_int, dynamicSMemSize: usize, flags: c_uint);
    "cuOccupancyMaxPotentialBlockSize" @ 6050 => cuOccupancyMaxPotentialBlockSize(minGridSize: *mut c_int, blockSize: *mut c_int, func: CUfunction, blockSizeToDynamicSMemSize: Ptr, dynamicSMemSize: usize, blockSizeLimit: c_int);
    "cuOccupancyMaxPotentialBlockSizeWithFlags" @ 7000 => cuOccupancyMaxPotentialBlockSizeWithFlags(minGridSize: *mut c_int, blockSize: *mut c_int, func: CUfunction, blockSizeToDynamicSMemSize: Ptr, dynamicSMemSize: usize, blockSizeLimit: c_int, flags: c_uint);
    "cuOccupancyAvailableDynamicSMemPerBlock" @ 10020 => cuOccupancyAvailableDynamicSMemPerBlock(dynamicSmemSize: *mut usize, func: CUfunction, numBlocks: c_int, blockSize: c_int);
    "cuOccupancyMaxPotentialClusterSize" @ 11070 => cuOccupancyMaxPotentialClusterSize(clusterSize: *mut c_int, func: CUfunction, config: CPtr);
    "cuOccupancyMaxActiveClusters" @ 11070 => cuOccupancyMaxActiveClusters(numClusters: *mut c_int, func: CUfunction, config: CPtr);
    "cuCtxEnablePeerAccess" @ 4000 => cuCtxEnablePeerAccess(peerContext: CUcontext, Flags: c_uint);
    "cuCtxDisablePeerAccess" @ 4000 => cuCtxDisablePeerAccess(peerContext: CUcontext);
    "cuDeviceGetP2PAttribute" @ 8000 => cuDeviceGetP2PAttribute(value: *mut c_int, attrib: c_int, srcDevice: CUdevice, dstDevice: CUdevice);

    // The JIT linker.
    "cuLinkCreate" @ 5050 => cuLinkCreate(numOptions: c_uint, options: *mut c_uint, optionValues: *mut Ptr, stateOut: *mut Ptr);
    "cuLinkCreate" @ 6050 => cuLinkCreate_v2(numOptions: c_uint, options: *mut c_uint, optionValues: *mut Ptr, stateOut: *mut Ptr);
    "cuLinkAddData" @ 5050 => cuLinkAddData(state: Ptr, type_: c_int, data: Ptr, size: usize, name: *const c_char, numOptions: c_uint, options: *mut c_uint, optionValues: *mut Ptr);
    "cuLinkAddData" @ 6050 => cuLinkAddData_v2(state: Ptr, type_: c_int, data: Ptr, size: usize, name: *const c_char, numOptions: c_uint, options: *mut c_uint, optionValues: *mut Ptr);
    "cuLinkAddFile" @ 5050 => cuLinkAddFile(state: Ptr, type_: c_int, path: *const c_char, numOptions: c_uint, options: *mut c_uint, optionValues: *mut Ptr);
    "cuLinkAddFile" @ 6050 => cuLinkAddFile_v2(state: Ptr, type_: c_int, path: *const c_char, numOptions: c_uint, options: *mut c_uint, optionValues: *mut Ptr);
    "cuLinkComplete" @ 5050 => cuLinkComplete(state: Ptr, cubinOut: *mut Ptr, sizeOut: *mut usize);
    "cuLinkDestroy" @ 5050 => cuLinkDestroy(state: Ptr);

    // Odds and ends.
    "cuDeviceGetProperties" @ 2000 => cuDeviceGetProperties(prop: Ptr, dev: CUdevice);
    "cuDeviceGetTexture1DLinearMaxWidth" @ 11010 => cuDeviceGetTexture1DLinearMaxWidth(maxWidthInElements: *mut usize, format: c_int, numChannels: c_uint, dev: CUdevice);
    "cuCtxGetExecAffinity" @ 11040 => cuCtxGetExecAffinity(pExecAffinity: Ptr, type_: c_int);
    "cuCtxRecordEvent" @ 12050 => cuCtxRecordEvent(hCtx: CUcontext, hEvent: CUevent);
    "cuCtxWaitEvent" @ 12050 => cuCtxWaitEvent(hCtx: CUcontext, hEvent: CUevent);
    "cuLibraryGetManaged" @ 12000 => cuLibraryGetManaged(dptr: *mut CUdeviceptr, bytes: *mut usize, library: CUlibrary, name: *const c_char);
    "cuLibraryGetUnifiedFunction" @ 12000 => cuLibraryGetUnifiedFunction(fptr: *mut Ptr, library: CUlibrary, symbol: *const c_char);
    "cuFlushGPUDirectRDMAWrites" @ 11030 => cuFlushGPUDirectRDMAWrites(target: c_int, scope: c_int);
}
