//! The C types and constants of the CUDA driver ABI (`cuda.h`) that the
//! exports use. Values are the driver's and must not change.

use std::ffi::{c_char, c_int, c_uint, c_void};

pub type CUresult = u32;
pub type CUdevice = c_int;
pub type CUdeviceptr = u64;
/// The 32-bit device pointer of the pre-3.2 (`_v1`) entry points.
pub type CUdeviceptr_v1 = c_uint;
pub type cuuint64_t = u64;

macro_rules! opaque {
    ($($st:ident => $h:ident),* $(,)?) => {$(
        #[repr(C)]
        pub struct $st {
            _opaque: [u8; 0],
        }
        pub type $h = *mut $st;
    )*};
}

opaque! {
    CUctx_st => CUcontext,
    CUmod_st => CUmodule,
    CUfunc_st => CUfunction,
    CUstream_st => CUstream,
    CUevent_st => CUevent,
    CUlib_st => CUlibrary,
    CUkern_st => CUkernel,
    CUgraph_st => CUgraph,
    CUgraphNode_st => CUgraphNode,
    CUgraphExec_st => CUgraphExec,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct CUuuid {
    pub bytes: [c_char; 16],
}

/// `CUctxCreateParams` (CUDA 12.5+), taken by `cuCtxCreate_v4`.
#[repr(C)]
pub struct CUctxCreateParams {
    pub execAffinityParams: *mut c_void,
    pub numExecAffinityParams: c_int,
    pub cigParams: *mut c_void,
}

/// `CUlaunchConfig`, taken by `cuLaunchKernelEx`.
#[repr(C)]
pub struct CUlaunchConfig {
    pub gridDimX: c_uint,
    pub gridDimY: c_uint,
    pub gridDimZ: c_uint,
    pub blockDimX: c_uint,
    pub blockDimY: c_uint,
    pub blockDimZ: c_uint,
    pub sharedMemBytes: c_uint,
    pub hStream: CUstream,
    pub attrs: *mut c_void,
    pub numAttrs: c_uint,
}

/// `CUlaunchAttribute`: an attribute id and its value, a 64-byte union.
#[repr(C)]
pub struct CUlaunchAttribute {
    pub id: c_uint,
    pub pad: [u8; 4],
    pub value: [u8; 64],
}

/// `CUmemLocation`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CUmemLocation {
    pub type_: c_int,
    pub id: c_int,
}

/// `CUmemAllocationProp` (its `allocFlags` inline).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CUmemAllocationProp {
    pub type_: c_int,
    pub requestedHandleTypes: c_int,
    pub location: CUmemLocation,
    pub win32HandleMetaData: *mut c_void,
    pub compressionType: u8,
    pub gpuDirectRDMACapable: u8,
    pub usage: u16,
    pub reserved: [u8; 4],
}

/// `CUmemAccessDesc`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CUmemAccessDesc {
    pub location: CUmemLocation,
    pub flags: c_int,
}

/// `CUmemPoolProps`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CUmemPoolProps {
    pub allocType: c_int,
    pub handleTypes: c_int,
    pub location: CUmemLocation,
    pub win32SecurityAttributes: *mut c_void,
    pub maxSize: usize,
    pub usage: u16,
    pub reserved: [u8; 54],
}

// CUmemAllocationType, CUmemLocationType, CUmemAllocationHandleType,
// CUmemAccess_flags, CUmemAllocationGranularity_flags and usage flags.
pub const CU_MEM_ALLOCATION_TYPE_PINNED: c_int = 1;
pub const CU_MEM_ALLOCATION_TYPE_MANAGED: c_int = 2;
pub const CU_MEM_LOCATION_TYPE_DEVICE: c_int = 1;
pub const CU_MEM_LOCATION_TYPE_HOST: c_int = 2;
pub const CU_MEM_LOCATION_TYPE_HOST_NUMA: c_int = 3;
pub const CU_MEM_LOCATION_TYPE_HOST_NUMA_CURRENT: c_int = 4;
pub const CU_MEM_HANDLE_TYPE_NONE: c_int = 0;
pub const CU_MEM_ACCESS_FLAGS_PROT_NONE: c_int = 0;
pub const CU_MEM_ACCESS_FLAGS_PROT_READ: c_int = 1;
pub const CU_MEM_ACCESS_FLAGS_PROT_READWRITE: c_int = 3;
pub const CU_MEM_ALLOC_GRANULARITY_MINIMUM: c_int = 0;
pub const CU_MEM_ALLOC_GRANULARITY_RECOMMENDED: c_int = 1;
pub const CU_MEM_CREATE_USAGE_TILE_POOL: u16 = 0x1;

// CUmemPool_attribute.
pub const CU_MEMPOOL_ATTR_REUSE_FOLLOW_EVENT_DEPENDENCIES: c_int = 1;
pub const CU_MEMPOOL_ATTR_REUSE_ALLOW_OPPORTUNISTIC: c_int = 2;
pub const CU_MEMPOOL_ATTR_REUSE_ALLOW_INTERNAL_DEPENDENCIES: c_int = 3;
pub const CU_MEMPOOL_ATTR_RELEASE_THRESHOLD: c_int = 4;
pub const CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT: c_int = 5;
pub const CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH: c_int = 6;
pub const CU_MEMPOOL_ATTR_USED_MEM_CURRENT: c_int = 7;
pub const CU_MEMPOOL_ATTR_USED_MEM_HIGH: c_int = 8;

// CUstream special values.
pub const CU_STREAM_LEGACY: u64 = 0x1;
pub const CU_STREAM_PER_THREAD: u64 = 0x2;

// Stream flags.
pub const CU_STREAM_DEFAULT: c_uint = 0x0;
pub const CU_STREAM_NON_BLOCKING: c_uint = 0x1;

// Event flags.
pub const CU_EVENT_DEFAULT: c_uint = 0x0;
pub const CU_EVENT_BLOCKING_SYNC: c_uint = 0x1;
pub const CU_EVENT_DISABLE_TIMING: c_uint = 0x2;
pub const CU_EVENT_INTERPROCESS: c_uint = 0x4;
pub const CU_EVENT_RECORD_EXTERNAL: c_uint = 0x1;
pub const CU_EVENT_WAIT_EXTERNAL: c_uint = 0x1;

// Context creation flags: scheduling (0..=4 in the low bits) and the rest.
pub const CU_CTX_FLAGS_MASK: c_uint = 0xFF;

// cuMemHostAlloc / cuMemHostRegister flags.
pub const CU_MEMHOSTALLOC_FLAGS_MASK: c_uint = 0x7;
pub const CU_MEMHOSTREGISTER_FLAGS_MASK: c_uint = 0xF;

// CUmemorytype.
pub const CU_MEMORYTYPE_HOST: c_uint = 1;
pub const CU_MEMORYTYPE_DEVICE: c_uint = 2;

// CUpointer_attribute.
pub const CU_POINTER_ATTRIBUTE_CONTEXT: c_uint = 1;
pub const CU_POINTER_ATTRIBUTE_MEMORY_TYPE: c_uint = 2;
pub const CU_POINTER_ATTRIBUTE_DEVICE_POINTER: c_uint = 3;
pub const CU_POINTER_ATTRIBUTE_HOST_POINTER: c_uint = 4;
pub const CU_POINTER_ATTRIBUTE_BUFFER_ID: c_uint = 7;
pub const CU_POINTER_ATTRIBUTE_IS_MANAGED: c_uint = 8;
pub const CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL: c_uint = 9;
pub const CU_POINTER_ATTRIBUTE_RANGE_START_ADDR: c_uint = 11;
pub const CU_POINTER_ATTRIBUTE_RANGE_SIZE: c_uint = 12;
pub const CU_POINTER_ATTRIBUTE_MAPPED: c_uint = 13;
pub const CU_POINTER_ATTRIBUTE_IS_LEGACY_CUDA_IPC_CAPABLE: c_uint = 10;
pub const CU_POINTER_ATTRIBUTE_ALLOWED_HANDLE_TYPES: c_uint = 14;
pub const CU_POINTER_ATTRIBUTE_IS_GPU_DIRECT_RDMA_CAPABLE: c_uint = 15;
pub const CU_POINTER_ATTRIBUTE_ACCESS_FLAGS: c_uint = 16;
pub const CU_POINTER_ATTRIBUTE_MEMPOOL_HANDLE: c_uint = 17;
pub const CU_POINTER_ATTRIBUTE_MAPPING_SIZE: c_uint = 18;
pub const CU_POINTER_ATTRIBUTE_MAPPING_BASE_ADDR: c_uint = 19;

// CUlimit: the values CUDA 13 knows (CU_LIMIT_MAX = 11).
pub const CU_LIMIT_STACK_SIZE: c_uint = 0;
pub const CU_LIMIT_PRINTF_FIFO_SIZE: c_uint = 1;
pub const CU_LIMIT_MALLOC_HEAP_SIZE: c_uint = 2;
pub const CU_LIMIT_DEV_RUNTIME_SYNC_DEPTH: c_uint = 3;
pub const CU_LIMIT_DEV_RUNTIME_PENDING_LAUNCH_COUNT: c_uint = 4;
pub const CU_LIMIT_MAX_L2_FETCH_GRANULARITY: c_uint = 5;
pub const CU_LIMIT_PERSISTING_L2_CACHE_SIZE: c_uint = 6;
pub const CU_LIMIT_MAX: c_uint = 11;

// CUfunc_cache and CUsharedconfig ranges.
pub const CU_FUNC_CACHE_MAX: c_uint = 3;
pub const CU_SHARED_MEM_CONFIG_MAX: c_uint = 2;

// CUfunction_attribute.
pub const CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK: usize = 0;
pub const CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES: usize = 1;
pub const CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES: usize = 8;
pub const CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT: usize = 9;
pub const CU_FUNC_ATTRIBUTE_REQUIRED_CLUSTER_WIDTH: usize = 11;
pub const CU_FUNC_ATTRIBUTE_CLUSTER_SCHEDULING_POLICY_PREFERENCE: usize = 15;

// CUdevice_attribute values the driver reads itself.
pub const CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK: usize = 1;
pub const CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_X: usize = 2;
pub const CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_X: usize = 5;
pub const CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK: usize = 8;
pub const CU_DEVICE_ATTRIBUTE_PCI_BUS_ID: usize = 33;
pub const CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID: usize = 34;
pub const CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID: usize = 50;
pub const CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR: usize = 75;
pub const CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR: usize = 76;
pub const CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN: usize = 97;

// CUjit_option values whose option slots the driver writes back.
pub const CU_JIT_WALL_TIME: c_uint = 2;
pub const CU_JIT_INFO_LOG_BUFFER: c_uint = 3;
pub const CU_JIT_INFO_LOG_BUFFER_SIZE_BYTES: c_uint = 4;
pub const CU_JIT_ERROR_LOG_BUFFER: c_uint = 5;
pub const CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES: c_uint = 6;

// `extra` argument of cuLaunchKernel.
pub const CU_LAUNCH_PARAM_END: usize = 0x00;
pub const CU_LAUNCH_PARAM_BUFFER_POINTER: usize = 0x01;
pub const CU_LAUNCH_PARAM_BUFFER_SIZE: usize = 0x02;

// CUmoduleLoadingMode.
pub const CU_MODULE_EAGER_LOADING: c_uint = 0x1;
// CUfunctionLoadingState.
pub const CU_FUNCTION_LOADING_STATE_LOADED: c_uint = 1;

// cuGetProcAddress flags and CUdriverProcAddressQueryResult.
pub const CU_GET_PROC_ADDRESS_DEFAULT: cuuint64_t = 0;
pub const CU_GET_PROC_ADDRESS_LEGACY_STREAM: cuuint64_t = 1 << 0;
pub const CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM: cuuint64_t = 1 << 1;
pub const CU_GET_PROC_ADDRESS_SUCCESS: c_int = 0;
pub const CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND: c_int = 1;
pub const CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT: c_int = 2;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_structs_have_the_abis_sizes() {
        assert_eq!(core::mem::size_of::<CUmemLocation>(), 8);
        assert_eq!(core::mem::size_of::<CUmemAllocationProp>(), 32);
        assert_eq!(core::mem::size_of::<CUmemAccessDesc>(), 12);
        assert_eq!(core::mem::size_of::<CUmemPoolProps>(), 88);
        assert_eq!(core::mem::offset_of!(CUmemPoolProps, maxSize), 24);
    }
}
