/*
 * gv_common.h - shared harness of the gpuvisor guest test programs.
 *
 * - loads the CUDA driver with dlopen("libcuda.so.1") (GV_LIBCUDA overrides
 *   the name) and resolves each entry point by its exported symbol name;
 * - prints results in the common format:
 *       CHECK <prog>.<check>: PASS <detail>
 *       CHECK <prog>.<check>: FAIL <detail>
 *       INFO <prog>: <text>                 (timings, host-specific values)
 *       SUMMARY <prog>: N/M passed
 * - holds the small helpers the programs share (patterns, hashes, kernels).
 */
#ifndef GV_COMMON_H
#define GV_COMMON_H

#include <stddef.h>
#include <stdint.h>

#include "cuda_min.h"

/* Every entry point the programs use: field name, then the exported symbol
 * names to try in order (NULL when there is no alternative). */
#define GV_CU_LIST(X)                                                       \
    X(cuInit,                   "cuInit",                   NULL)           \
    X(cuDriverGetVersion,       "cuDriverGetVersion",       NULL)           \
    X(cuDeviceGet,              "cuDeviceGet",              NULL)           \
    X(cuDeviceGetCount,         "cuDeviceGetCount",         NULL)           \
    X(cuDeviceGetName,          "cuDeviceGetName",          NULL)           \
    X(cuDeviceGetAttribute,     "cuDeviceGetAttribute",     NULL)           \
    X(cuDeviceGetUuid,          "cuDeviceGetUuid_v2",       "cuDeviceGetUuid") \
    X(cuDeviceTotalMem,         "cuDeviceTotalMem_v2",      NULL)           \
    X(cuDevicePrimaryCtxRetain, "cuDevicePrimaryCtxRetain", NULL)           \
    X(cuDevicePrimaryCtxRelease,"cuDevicePrimaryCtxRelease_v2", NULL)       \
    X(cuCtxSetCurrent,          "cuCtxSetCurrent",          NULL)           \
    X(cuCtxGetCurrent,          "cuCtxGetCurrent",          NULL)           \
    X(cuCtxPushCurrent,         "cuCtxPushCurrent_v2",      NULL)           \
    X(cuCtxPopCurrent,          "cuCtxPopCurrent_v2",       NULL)           \
    X(cuCtxSynchronize,         "cuCtxSynchronize",         NULL)           \
    X(cuMemGetInfo,             "cuMemGetInfo_v2",          NULL)           \
    X(cuMemAlloc,               "cuMemAlloc_v2",            NULL)           \
    X(cuMemFree,                "cuMemFree_v2",             NULL)           \
    X(cuMemAllocHost,           "cuMemAllocHost_v2",        NULL)           \
    X(cuMemFreeHost,            "cuMemFreeHost",            NULL)           \
    X(cuMemHostRegister,        "cuMemHostRegister_v2",     NULL)           \
    X(cuMemHostUnregister,      "cuMemHostUnregister",      NULL)           \
    X(cuMemGetAddressRange,     "cuMemGetAddressRange_v2",  NULL)           \
    X(cuMemcpyHtoD,             "cuMemcpyHtoD_v2",          NULL)           \
    X(cuMemcpyDtoH,             "cuMemcpyDtoH_v2",          NULL)           \
    X(cuMemcpyDtoD,             "cuMemcpyDtoD_v2",          NULL)           \
    X(cuMemcpyHtoDAsync,        "cuMemcpyHtoDAsync_v2",     NULL)           \
    X(cuMemcpyDtoHAsync,        "cuMemcpyDtoHAsync_v2",     NULL)           \
    X(cuMemcpyDtoDAsync,        "cuMemcpyDtoDAsync_v2",     NULL)           \
    X(cuMemsetD32,              "cuMemsetD32_v2",           NULL)           \
    X(cuMemsetD8,               "cuMemsetD8_v2",            NULL)           \
    X(cuModuleLoadData,         "cuModuleLoadData",         NULL)           \
    X(cuModuleLoadDataEx,       "cuModuleLoadDataEx",       NULL)           \
    X(cuModuleGetFunction,      "cuModuleGetFunction",      NULL)           \
    X(cuModuleGetGlobal,        "cuModuleGetGlobal_v2",     NULL)           \
    X(cuModuleUnload,           "cuModuleUnload",           NULL)           \
    X(cuLaunchKernel,           "cuLaunchKernel",           NULL)           \
    X(cuStreamCreate,           "cuStreamCreate",           NULL)           \
    X(cuStreamDestroy,          "cuStreamDestroy_v2",       NULL)           \
    X(cuStreamSynchronize,      "cuStreamSynchronize",      NULL)           \
    X(cuStreamQuery,            "cuStreamQuery",            NULL)           \
    X(cuStreamWaitEvent,        "cuStreamWaitEvent",        NULL)           \
    X(cuEventCreate,            "cuEventCreate",            NULL)           \
    X(cuEventDestroy,           "cuEventDestroy_v2",        NULL)           \
    X(cuEventRecord,            "cuEventRecord",            NULL)           \
    X(cuEventSynchronize,       "cuEventSynchronize",       NULL)           \
    X(cuEventQuery,             "cuEventQuery",             NULL)           \
    X(cuEventElapsedTime,       "cuEventElapsedTime_v2",    "cuEventElapsedTime") \
    X(cuMemAllocAsync,          "cuMemAllocAsync",          NULL)           \
    X(cuMemFreeAsync,           "cuMemFreeAsync",           NULL)           \
    X(cuMemsetD32Async,         "cuMemsetD32Async",         NULL)           \
    X(cuDeviceGetDefaultMemPool,"cuDeviceGetDefaultMemPool", NULL)          \
    X(cuMemPoolSetAttribute,    "cuMemPoolSetAttribute",    NULL)           \
    X(cuMemPoolGetAttribute,    "cuMemPoolGetAttribute",    NULL)           \
    X(cuMemPoolTrimTo,          "cuMemPoolTrimTo",          NULL)           \
    X(cuMemGetAllocationGranularity, "cuMemGetAllocationGranularity", NULL) \
    X(cuMemAddressReserve,      "cuMemAddressReserve",      NULL)           \
    X(cuMemAddressFree,         "cuMemAddressFree",         NULL)           \
    X(cuMemCreate,              "cuMemCreate",              NULL)           \
    X(cuMemRelease,             "cuMemRelease",             NULL)           \
    X(cuMemMap,                 "cuMemMap",                 NULL)           \
    X(cuMemUnmap,               "cuMemUnmap",               NULL)           \
    X(cuMemSetAccess,           "cuMemSetAccess",           NULL)           \
    X(cuGetErrorName,           "cuGetErrorName",           NULL)           \
    X(cuGetErrorString,         "cuGetErrorString",         NULL)           \
    X(cuFuncGetAttribute,       "cuFuncGetAttribute",       NULL)           \
    X(cuDeviceCanAccessPeer,    "cuDeviceCanAccessPeer",    NULL)           \
    X(cuCtxEnablePeerAccess,    "cuCtxEnablePeerAccess",    NULL)           \
    X(cuDeviceGetP2PAttribute,  "cuDeviceGetP2PAttribute",  NULL)           \
    X(cuStreamBeginCapture,     "cuStreamBeginCapture_v2",  NULL)           \
    X(cuStreamEndCapture,       "cuStreamEndCapture",       NULL)           \
    X(cuStreamIsCapturing,      "cuStreamIsCapturing",      NULL)           \
    X(cuStreamGetCaptureInfo,   "cuStreamGetCaptureInfo_v2", NULL)          \
    X(cuThreadExchangeStreamCaptureMode, "cuThreadExchangeStreamCaptureMode", NULL) \
    X(cuGraphCreate,            "cuGraphCreate",            NULL)           \
    X(cuGraphDestroy,           "cuGraphDestroy",           NULL)           \
    X(cuGraphAddKernelNode,     "cuGraphAddKernelNode_v2",  NULL)           \
    X(cuGraphAddMemsetNode,     "cuGraphAddMemsetNode",     NULL)           \
    X(cuGraphAddEmptyNode,      "cuGraphAddEmptyNode",      NULL)           \
    X(cuGraphAddDependencies,   "cuGraphAddDependencies",   NULL)           \
    X(cuGraphGetNodes,          "cuGraphGetNodes",          NULL)           \
    X(cuGraphGetRootNodes,      "cuGraphGetRootNodes",      NULL)           \
    X(cuGraphGetEdges,          "cuGraphGetEdges",          NULL)           \
    X(cuGraphNodeGetType,       "cuGraphNodeGetType",       NULL)           \
    X(cuGraphKernelNodeGetParams, "cuGraphKernelNodeGetParams_v2", NULL)    \
    X(cuGraphKernelNodeSetParams, "cuGraphKernelNodeSetParams_v2", NULL)    \
    X(cuGraphClone,             "cuGraphClone",             NULL)           \
    X(cuGraphNodeFindInClone,   "cuGraphNodeFindInClone",   NULL)           \
    X(cuGraphInstantiate,       "cuGraphInstantiateWithFlags", NULL)        \
    X(cuGraphLaunch,            "cuGraphLaunch",            NULL)           \
    X(cuGraphUpload,            "cuGraphUpload",            NULL)           \
    X(cuGraphExecDestroy,       "cuGraphExecDestroy",       NULL)           \
    X(cuGraphExecKernelNodeSetParams, "cuGraphExecKernelNodeSetParams_v2", NULL) \
    X(cuGraphExecUpdate,        "cuGraphExecUpdate_v2",     NULL)           \
    X(cuOccupancyMaxActiveBlocksPerMultiprocessor, "cuOccupancyMaxActiveBlocksPerMultiprocessor", NULL) \
    X(cuOccupancyMaxPotentialBlockSize, "cuOccupancyMaxPotentialBlockSize", NULL) \
    X(cuOccupancyAvailableDynamicSMemPerBlock, "cuOccupancyAvailableDynamicSMemPerBlock", NULL)

struct gv_cu_table {
#define GV_X(field, sym1, sym2) PFN_##field field;
    GV_CU_LIST(GV_X)
#undef GV_X
};
extern struct gv_cu_table gv_cu;

/* Reports the missing symbol as a failed check, prints the summary and exits. */
void gv_missing(const char *field) __attribute__((noreturn));

/* CU(cuMemAlloc)(&p, n): call an entry point; a symbol the library lacks
 * ends the program with a clear message naming it. */
#define CU(field) (gv_cu.field ? gv_cu.field : (gv_missing(#field), gv_cu.field))

/* ---- status tracking within one check --------------------------------- */
/* A check runs a sequence of driver calls through CALL(st, ...): the first
 * failure is recorded and every later CALL of that check is skipped. */
typedef struct {
    CUresult rc;
    const char *what;
} gv_st;

int gv_call(gv_st *st, CUresult rc, const char *what);
#define CALL(st, expr) ((st).rc == CUDA_SUCCESS ? gv_call(&(st), (expr), #expr) : 0)
/* "<call> -> <ERROR_NAME>" for the first failure recorded in st */
const char *gv_st_detail(const gv_st *st);

/* ---- output ----------------------------------------------------------- */
/* Loads the driver and sets the program name; exits on dlopen failure. */
void gv_open(const char *prog);
/* Prints one CHECK line; returns pass. */
int gv_check(const char *name, int pass, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void gv_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Prints the SUMMARY line and returns the exit status (0 = all passed). */
int gv_summary(void);
/* Prints the summary and exits (after a setup failure). */
void gv_abort(void) __attribute__((noreturn));

/* Error name through cuGetErrorName, "CUresult <n>" where it has none. */
const char *gv_errname(CUresult rc);

/* For the workload programs that print one "<TAG> {json}" line: prints
 * <TAG> {"mode":..., "ok":false, "error":<name of rc>, "call":<what>} and
 * exits 1. GV_TRY does it for a call `expr` that fails, naming it `text`
 * (the caller's #expr, so that the call reads as written). */
void gv_json_fail(const char *tag, const char *mode, const char *what, CUresult rc) __attribute__((noreturn));
#define GV_TRY(tag, mode, expr, text)                                                                                  \
    do {                                                                                                               \
        CUresult rc_ = (expr);                                                                                         \
        if (rc_ != CUDA_SUCCESS)                                                                                       \
            gv_json_fail(tag, mode, text, rc_);                                                                        \
    } while (0)

/* ---- setup ------------------------------------------------------------ */
/* cuInit, device 0, primary context retained and made current.  Prints
 * CHECK <prog>.setup and exits when it fails. */
void gv_setup(CUdevice *dev, CUcontext *ctx);

struct gv_kernels {
    CUmodule mod;
    CUfunction empty, fill_u32, vector_add_f32, saxpy_f32, spin_us, matmul_f32, burn;
};
/* NUL-terminated text of kernels.ptx, embedded at build time. */
extern const char gv_kernels_ptx[];
/* Loads kernels.ptx (cuModuleLoadData; on failure prints the JIT error log
 * got through cuModuleLoadDataEx) and looks up all seven entry points.
 * Prints CHECK <prog>.module_load and exits when it fails. */
void gv_load_kernels(struct gv_kernels *k);

/* Launch helpers (1D grids; stream may be NULL for the legacy stream). */
CUresult gv_launch_fill(const struct gv_kernels *k, CUstream s, CUdeviceptr p,
                        unsigned int value, unsigned long long n);
CUresult gv_launch_spin(const struct gv_kernels *k, CUstream s, unsigned long long us);
CUresult gv_launch_empty(const struct gv_kernels *k, CUstream s);
/* gv_burn on `blocks` blocks of `threads`: fixed work of `iters` FMAs per thread. */
CUresult gv_launch_burn(const struct gv_kernels *k, CUstream s, unsigned long long iters,
                        unsigned int blocks, unsigned int threads, CUdeviceptr sink);
CUresult gv_launch_matmul(const struct gv_kernels *k, CUstream s, CUdeviceptr a,
                          CUdeviceptr b, CUdeviceptr c, unsigned int n);

/* Integer-valued test matrices: every product sum is exact in f32 (n <= 16384). */
float gv_mat_a(unsigned int i, unsigned int j);
float gv_mat_b(unsigned int i, unsigned int j);

/* ---- misc helpers ----------------------------------------------------- */
double gv_now_us(void);
uint64_t gv_fnv1a64(const void *data, size_t bytes);
/* Deterministic xorshift64* byte pattern. */
void gv_pattern(void *buf, size_t bytes, uint64_t seed);
double gv_median(double *v, size_t n);  /* sorts v */
/* Environment variable as an unsigned integer, or dflt. */
unsigned long long gv_env_u64(const char *name, unsigned long long dflt);

#endif /* GV_COMMON_H */
