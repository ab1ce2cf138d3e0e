/*
 * cuda_min.h - the small part of the CUDA driver API that gpuvisor's guest
 * test programs use, written for this project (no CUDA toolkit needed).
 *
 * Only types, constants and function-pointer types: the programs never link
 * against libcuda; they dlopen("libcuda.so.1") and resolve each entry point
 * by its exported (versioned) symbol name, see gv_common.c.
 *
 * Numeric values are the driver ABI's and must not be changed.
 */
#ifndef GV_CUDA_MIN_H
#define GV_CUDA_MIN_H

#include <stddef.h>

/* ---- scalar and handle types ------------------------------------------ */
typedef int CUresult;                  /* the driver's status code */
typedef int CUdevice;                  /* device ordinal */
typedef unsigned long long CUdeviceptr;/* device address (64-bit ABI) */

typedef struct gv_opaque_ctx    *CUcontext;
typedef struct gv_opaque_module *CUmodule;
typedef struct gv_opaque_func   *CUfunction;
typedef struct gv_opaque_stream *CUstream;
typedef struct gv_opaque_event  *CUevent;
typedef struct gv_opaque_graph  *CUgraph;
typedef struct gv_opaque_gnode  *CUgraphNode;
typedef struct gv_opaque_gexec  *CUgraphExec;
typedef struct gv_opaque_pool   *CUmemoryPool;
typedef unsigned long long CUmemGenericAllocationHandle;

typedef struct { char bytes[16]; } CUuuid;

typedef int CUdevice_attribute;
typedef int CUjit_option;

/* ---- CUresult values -------------------------------------------------- */
enum {
    CUDA_SUCCESS                    = 0,
    CUDA_ERROR_INVALID_VALUE        = 1,
    CUDA_ERROR_OUT_OF_MEMORY        = 2,
    CUDA_ERROR_NOT_INITIALIZED      = 3,
    CUDA_ERROR_DEINITIALIZED        = 4,
    CUDA_ERROR_NO_DEVICE            = 100,
    CUDA_ERROR_INVALID_DEVICE       = 101,
    CUDA_ERROR_INVALID_IMAGE        = 200,
    CUDA_ERROR_INVALID_CONTEXT      = 201,
    CUDA_ERROR_NO_BINARY_FOR_GPU    = 209,
    CUDA_ERROR_INVALID_PTX          = 218,
    CUDA_ERROR_UNSUPPORTED_PTX_VERSION = 222,
    CUDA_ERROR_INVALID_SOURCE       = 300,
    CUDA_ERROR_INVALID_HANDLE       = 400,
    CUDA_ERROR_NOT_FOUND            = 500,
    CUDA_ERROR_NOT_READY            = 600,
    CUDA_ERROR_ILLEGAL_ADDRESS      = 700,
    CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES = 701,
    CUDA_ERROR_LAUNCH_FAILED        = 719,
    CUDA_ERROR_PEER_ACCESS_UNSUPPORTED = 217,
    CUDA_ERROR_ILLEGAL_STATE        = 401,
    CUDA_ERROR_NOT_SUPPORTED        = 801,
    CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED = 900,
    CUDA_ERROR_STREAM_CAPTURE_INVALIDATED = 901,
    CUDA_ERROR_STREAM_CAPTURE_UNJOINED    = 904,
    CUDA_ERROR_STREAM_CAPTURE_ISOLATION   = 905,
    CUDA_ERROR_STREAM_CAPTURE_IMPLICIT    = 906,
    CUDA_ERROR_CAPTURED_EVENT       = 907,
    CUDA_ERROR_GRAPH_EXEC_UPDATE_FAILURE  = 910,
    CUDA_ERROR_UNKNOWN              = 999
};

/* ---- CUdevice_attribute values used here ------------------------------ */
enum {
    CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK     = 1,
    CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK = 8,
    CU_DEVICE_ATTRIBUTE_WARP_SIZE                 = 10,
    CU_DEVICE_ATTRIBUTE_CLOCK_RATE                = 13,
    CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT      = 16,
    CU_DEVICE_ATTRIBUTE_PCI_BUS_ID                = 33,
    CU_DEVICE_ATTRIBUTE_UNIFIED_ADDRESSING        = 41,
    CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR  = 75,
    CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR  = 76,
    CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED = 102,
    CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED    = 115
};

/* ---- the virtual-memory API and memory pools -------------------------- */
typedef struct {
    int type;                          /* CUmemLocationType */
    int id;
} CUmemLocation;

typedef struct {
    int type;                          /* CUmemAllocationType */
    int requestedHandleTypes;          /* CUmemAllocationHandleType */
    CUmemLocation location;
    void *win32HandleMetaData;
    struct {
        unsigned char compressionType;
        unsigned char gpuDirectRDMACapable;
        unsigned short usage;
        unsigned char reserved[4];
    } allocFlags;
} CUmemAllocationProp;

typedef struct {
    CUmemLocation location;
    int flags;                         /* CUmemAccess_flags */
} CUmemAccessDesc;

#define CU_MEM_ALLOCATION_TYPE_PINNED        1
#define CU_MEM_LOCATION_TYPE_DEVICE          1
#define CU_MEM_ACCESS_FLAGS_PROT_READWRITE   3
#define CU_MEM_ALLOC_GRANULARITY_MINIMUM     0

/* CUmemPool_attribute values used here */
enum {
    CU_MEMPOOL_ATTR_RELEASE_THRESHOLD    = 4,
    CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT = 5,
    CU_MEMPOOL_ATTR_USED_MEM_CURRENT     = 7
};

/* ---- flags ------------------------------------------------------------ */
#define CU_STREAM_DEFAULT          0x0u
#define CU_STREAM_NON_BLOCKING     0x1u

#define CU_EVENT_DEFAULT           0x0u
#define CU_EVENT_BLOCKING_SYNC     0x1u
#define CU_EVENT_DISABLE_TIMING    0x2u
#define CU_EVENT_INTERPROCESS      0x4u

#define CU_MEMHOSTREGISTER_PORTABLE 0x1u
#define CU_MEMHOSTREGISTER_DEVICEMAP 0x2u

/* CUjit_option values used with cuModuleLoadDataEx */
enum {
    CU_JIT_INFO_LOG_BUFFER              = 3,
    CU_JIT_INFO_LOG_BUFFER_SIZE_BYTES   = 4,
    CU_JIT_ERROR_LOG_BUFFER             = 5,
    CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES  = 6
};

/* `extra` argument of cuLaunchKernel: a packed parameter buffer */
#define CU_LAUNCH_PARAM_END            ((void *)0)
#define CU_LAUNCH_PARAM_BUFFER_POINTER ((void *)1)
#define CU_LAUNCH_PARAM_BUFFER_SIZE    ((void *)2)

/* ---- stream capture and graphs ----------------------------------------- */
enum { /* CUstreamCaptureMode */
    CU_STREAM_CAPTURE_MODE_GLOBAL       = 0,
    CU_STREAM_CAPTURE_MODE_THREAD_LOCAL = 1,
    CU_STREAM_CAPTURE_MODE_RELAXED      = 2
};
enum { /* CUstreamCaptureStatus */
    CU_STREAM_CAPTURE_STATUS_NONE        = 0,
    CU_STREAM_CAPTURE_STATUS_ACTIVE      = 1,
    CU_STREAM_CAPTURE_STATUS_INVALIDATED = 2
};
enum { /* CUgraphNodeType */
    CU_GRAPH_NODE_TYPE_KERNEL = 0,
    CU_GRAPH_NODE_TYPE_MEMCPY = 1,
    CU_GRAPH_NODE_TYPE_MEMSET = 2,
    CU_GRAPH_NODE_TYPE_EMPTY  = 5
};
enum { /* CUgraphExecUpdateResult */
    CU_GRAPH_EXEC_UPDATE_SUCCESS                = 0,
    CU_GRAPH_EXEC_UPDATE_ERROR_TOPOLOGY_CHANGED = 2
};

typedef struct { /* CUDA_KERNEL_NODE_PARAMS (v2, CUDA 12.0) */
    CUfunction func;
    unsigned int gridDimX, gridDimY, gridDimZ;
    unsigned int blockDimX, blockDimY, blockDimZ;
    unsigned int sharedMemBytes;
    void **kernelParams;
    void **extra;
    void *kern;      /* CUkernel */
    CUcontext ctx;
} CUDA_KERNEL_NODE_PARAMS;

typedef struct { /* CUDA_MEMSET_NODE_PARAMS */
    CUdeviceptr dst;
    size_t pitch;
    unsigned int value;
    unsigned int elementSize;
    size_t width;
    size_t height;
} CUDA_MEMSET_NODE_PARAMS;

typedef struct { /* CUgraphExecUpdateResultInfo */
    int result;
    CUgraphNode errorNode;
    CUgraphNode errorFromNode;
} CUgraphExecUpdateResultInfo;

/* ---- entry points (function-pointer types) ---------------------------- */
/* Comment after each: the symbol name(s) resolved, first found wins. */
typedef CUresult (*PFN_cuInit)(unsigned int flags);                      /* cuInit */
typedef CUresult (*PFN_cuDriverGetVersion)(int *version);               /* cuDriverGetVersion */
typedef CUresult (*PFN_cuDeviceGet)(CUdevice *dev, int ordinal);        /* cuDeviceGet */
typedef CUresult (*PFN_cuDeviceGetCount)(int *count);                   /* cuDeviceGetCount */
typedef CUresult (*PFN_cuDeviceGetName)(char *name, int len, CUdevice dev);
typedef CUresult (*PFN_cuDeviceGetAttribute)(int *value, CUdevice_attribute attr, CUdevice dev);
typedef CUresult (*PFN_cuDeviceGetUuid)(CUuuid *uuid, CUdevice dev);    /* _v2, then plain */
typedef CUresult (*PFN_cuDeviceTotalMem)(size_t *bytes, CUdevice dev);  /* cuDeviceTotalMem_v2 */

typedef CUresult (*PFN_cuDevicePrimaryCtxRetain)(CUcontext *ctx, CUdevice dev);
typedef CUresult (*PFN_cuDevicePrimaryCtxRelease)(CUdevice dev);        /* _v2 */
typedef CUresult (*PFN_cuCtxSetCurrent)(CUcontext ctx);
typedef CUresult (*PFN_cuCtxGetCurrent)(CUcontext *ctx);
typedef CUresult (*PFN_cuCtxPushCurrent)(CUcontext ctx);                /* _v2 */
typedef CUresult (*PFN_cuCtxPopCurrent)(CUcontext *ctx);                /* _v2 */
typedef CUresult (*PFN_cuCtxSynchronize)(void);

typedef CUresult (*PFN_cuMemGetInfo)(size_t *free_bytes, size_t *total_bytes); /* _v2 */
typedef CUresult (*PFN_cuMemAlloc)(CUdeviceptr *dptr, size_t bytes);    /* _v2 */
typedef CUresult (*PFN_cuMemFree)(CUdeviceptr dptr);                    /* _v2 */
typedef CUresult (*PFN_cuMemAllocHost)(void **pp, size_t bytes);        /* _v2 */
typedef CUresult (*PFN_cuMemFreeHost)(void *p);
typedef CUresult (*PFN_cuMemHostRegister)(void *p, size_t bytes, unsigned int flags); /* _v2 */
typedef CUresult (*PFN_cuMemHostUnregister)(void *p);
typedef CUresult (*PFN_cuMemGetAddressRange)(CUdeviceptr *base, size_t *size, CUdeviceptr dptr); /* _v2 */

typedef CUresult (*PFN_cuMemcpyHtoD)(CUdeviceptr dst, const void *src, size_t bytes);       /* _v2 */
typedef CUresult (*PFN_cuMemcpyDtoH)(void *dst, CUdeviceptr src, size_t bytes);             /* _v2 */
typedef CUresult (*PFN_cuMemcpyDtoD)(CUdeviceptr dst, CUdeviceptr src, size_t bytes);       /* _v2 */
typedef CUresult (*PFN_cuMemcpyHtoDAsync)(CUdeviceptr dst, const void *src, size_t bytes, CUstream s); /* _v2 */
typedef CUresult (*PFN_cuMemcpyDtoHAsync)(void *dst, CUdeviceptr src, size_t bytes, CUstream s);       /* _v2 */
typedef CUresult (*PFN_cuMemcpyDtoDAsync)(CUdeviceptr dst, CUdeviceptr src, size_t bytes, CUstream s); /* _v2 */
typedef CUresult (*PFN_cuMemsetD32)(CUdeviceptr dst, unsigned int value, size_t count);     /* _v2 */
typedef CUresult (*PFN_cuMemsetD8)(CUdeviceptr dst, unsigned char value, size_t count);     /* _v2 */

typedef CUresult (*PFN_cuModuleLoadData)(CUmodule *mod, const void *image);
typedef CUresult (*PFN_cuModuleLoadDataEx)(CUmodule *mod, const void *image, unsigned int nopts,
                                           CUjit_option *opts, void **optvals);
typedef CUresult (*PFN_cuModuleGetFunction)(CUfunction *fn, CUmodule mod, const char *name);
typedef CUresult (*PFN_cuModuleGetGlobal)(CUdeviceptr *dptr, size_t *bytes, CUmodule mod,
                                          const char *name);            /* _v2 */
typedef CUresult (*PFN_cuModuleUnload)(CUmodule mod);
typedef CUresult (*PFN_cuLaunchKernel)(CUfunction fn,
                                       unsigned int gx, unsigned int gy, unsigned int gz,
                                       unsigned int bx, unsigned int by, unsigned int bz,
                                       unsigned int shared_bytes, CUstream s,
                                       void **kernel_params, void **extra);

typedef CUresult (*PFN_cuStreamCreate)(CUstream *s, unsigned int flags);
typedef CUresult (*PFN_cuStreamDestroy)(CUstream s);                    /* _v2 */
typedef CUresult (*PFN_cuStreamSynchronize)(CUstream s);
typedef CUresult (*PFN_cuStreamQuery)(CUstream s);
typedef CUresult (*PFN_cuStreamWaitEvent)(CUstream s, CUevent e, unsigned int flags);

typedef CUresult (*PFN_cuEventCreate)(CUevent *e, unsigned int flags);
typedef CUresult (*PFN_cuEventDestroy)(CUevent e);                      /* _v2 */
typedef CUresult (*PFN_cuEventRecord)(CUevent e, CUstream s);
typedef CUresult (*PFN_cuEventSynchronize)(CUevent e);
typedef CUresult (*PFN_cuEventQuery)(CUevent e);
typedef CUresult (*PFN_cuEventElapsedTime)(float *ms, CUevent start, CUevent end); /* _v2, then plain */

typedef CUresult (*PFN_cuMemsetD32Async)(CUdeviceptr dst, unsigned int value, size_t count, CUstream s);
typedef CUresult (*PFN_cuFuncGetAttribute)(int *value, int attr, CUfunction fn);
typedef CUresult (*PFN_cuDeviceCanAccessPeer)(int *can, CUdevice dev, CUdevice peer);
typedef CUresult (*PFN_cuCtxEnablePeerAccess)(CUcontext peer, unsigned int flags);
typedef CUresult (*PFN_cuDeviceGetP2PAttribute)(int *value, int attr, CUdevice src, CUdevice dst);

typedef CUresult (*PFN_cuStreamBeginCapture)(CUstream s, int mode);     /* _v2 */
typedef CUresult (*PFN_cuStreamEndCapture)(CUstream s, CUgraph *g);
typedef CUresult (*PFN_cuStreamIsCapturing)(CUstream s, int *status);
typedef CUresult (*PFN_cuStreamGetCaptureInfo)(CUstream s, int *status, unsigned long long *id,
                                               CUgraph *g, const CUgraphNode **deps,
                                               size_t *ndeps);          /* _v2 */
typedef CUresult (*PFN_cuThreadExchangeStreamCaptureMode)(int *mode);
typedef CUresult (*PFN_cuGraphCreate)(CUgraph *g, unsigned int flags);
typedef CUresult (*PFN_cuGraphDestroy)(CUgraph g);
typedef CUresult (*PFN_cuGraphAddKernelNode)(CUgraphNode *n, CUgraph g, const CUgraphNode *deps,
                                             size_t ndeps, const CUDA_KERNEL_NODE_PARAMS *p); /* _v2 */
typedef CUresult (*PFN_cuGraphAddMemsetNode)(CUgraphNode *n, CUgraph g, const CUgraphNode *deps,
                                             size_t ndeps, const CUDA_MEMSET_NODE_PARAMS *p,
                                             CUcontext ctx);
typedef CUresult (*PFN_cuGraphAddEmptyNode)(CUgraphNode *n, CUgraph g, const CUgraphNode *deps,
                                            size_t ndeps);
typedef CUresult (*PFN_cuGraphAddDependencies)(CUgraph g, const CUgraphNode *from,
                                               const CUgraphNode *to, size_t n);
typedef CUresult (*PFN_cuGraphGetNodes)(CUgraph g, CUgraphNode *nodes, size_t *n);
typedef CUresult (*PFN_cuGraphGetRootNodes)(CUgraph g, CUgraphNode *nodes, size_t *n);
typedef CUresult (*PFN_cuGraphGetEdges)(CUgraph g, CUgraphNode *from, CUgraphNode *to, size_t *n);
typedef CUresult (*PFN_cuGraphNodeGetType)(CUgraphNode n, int *type);
typedef CUresult (*PFN_cuGraphKernelNodeGetParams)(CUgraphNode n, CUDA_KERNEL_NODE_PARAMS *p); /* _v2 */
typedef CUresult (*PFN_cuGraphKernelNodeSetParams)(CUgraphNode n, const CUDA_KERNEL_NODE_PARAMS *p); /* _v2 */
typedef CUresult (*PFN_cuGraphClone)(CUgraph *clone, CUgraph g);
typedef CUresult (*PFN_cuGraphNodeFindInClone)(CUgraphNode *n, CUgraphNode orig, CUgraph clone);
typedef CUresult (*PFN_cuGraphInstantiate)(CUgraphExec *e, CUgraph g, unsigned long long flags); /* WithFlags */
typedef CUresult (*PFN_cuGraphLaunch)(CUgraphExec e, CUstream s);
typedef CUresult (*PFN_cuGraphUpload)(CUgraphExec e, CUstream s);
typedef CUresult (*PFN_cuGraphExecDestroy)(CUgraphExec e);
typedef CUresult (*PFN_cuGraphExecKernelNodeSetParams)(CUgraphExec e, CUgraphNode n,
                                                       const CUDA_KERNEL_NODE_PARAMS *p); /* _v2 */
typedef CUresult (*PFN_cuGraphExecUpdate)(CUgraphExec e, CUgraph g,
                                          CUgraphExecUpdateResultInfo *info); /* _v2 */
typedef CUresult (*PFN_cuOccupancyMaxActiveBlocksPerMultiprocessor)(int *blocks, CUfunction fn,
                                                                    int block, size_t smem);
typedef size_t (*gv_b2d_fn)(int block);
typedef CUresult (*PFN_cuOccupancyMaxPotentialBlockSize)(int *min_grid, int *block, CUfunction fn,
                                                         gv_b2d_fn b2d, size_t smem, int limit);
typedef CUresult (*PFN_cuOccupancyAvailableDynamicSMemPerBlock)(size_t *smem, CUfunction fn,
                                                                int blocks, int block);
typedef CUresult (*PFN_cuMemAllocAsync)(CUdeviceptr *dptr, size_t bytes, CUstream s);
typedef CUresult (*PFN_cuMemFreeAsync)(CUdeviceptr dptr, CUstream s);
typedef CUresult (*PFN_cuDeviceGetDefaultMemPool)(CUmemoryPool *pool, CUdevice dev);
typedef CUresult (*PFN_cuMemPoolSetAttribute)(CUmemoryPool pool, int attr, void *value);
typedef CUresult (*PFN_cuMemPoolGetAttribute)(CUmemoryPool pool, int attr, void *value);
typedef CUresult (*PFN_cuMemPoolTrimTo)(CUmemoryPool pool, size_t keep);
typedef CUresult (*PFN_cuMemGetAllocationGranularity)(size_t *granularity, const CUmemAllocationProp *prop,
                                                      int option);
typedef CUresult (*PFN_cuMemAddressReserve)(CUdeviceptr *ptr, size_t size, size_t alignment, CUdeviceptr addr,
                                            unsigned long long flags);
typedef CUresult (*PFN_cuMemAddressFree)(CUdeviceptr ptr, size_t size);
typedef CUresult (*PFN_cuMemCreate)(CUmemGenericAllocationHandle *handle, size_t size,
                                    const CUmemAllocationProp *prop, unsigned long long flags);
typedef CUresult (*PFN_cuMemRelease)(CUmemGenericAllocationHandle handle);
typedef CUresult (*PFN_cuMemMap)(CUdeviceptr ptr, size_t size, size_t offset, CUmemGenericAllocationHandle handle,
                                 unsigned long long flags);
typedef CUresult (*PFN_cuMemUnmap)(CUdeviceptr ptr, size_t size);
typedef CUresult (*PFN_cuMemSetAccess)(CUdeviceptr ptr, size_t size, const CUmemAccessDesc *desc, size_t count);

typedef CUresult (*PFN_cuGetErrorName)(CUresult err, const char **str);
typedef CUresult (*PFN_cuGetErrorString)(CUresult err, const char **str);

#endif /* GV_CUDA_MIN_H */
