/*
 * gv_devinfo - driver and device identity, attributes and memory size.
 *
 * GV_EXPECT_QUOTA_MIB=<n>: also check that cuMemGetInfo's total and
 * cuDeviceTotalMem are exactly n MiB (the VM's memory quota).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gv_common.h"

#define MIB (1024.0 * 1024.0)

int main(void)
{
    gv_open("devinfo");

    CUresult rc = CU(cuInit)(0);
    if (!gv_check("init", rc == CUDA_SUCCESS, "cuInit(0) -> %s", gv_errname(rc)))
        gv_abort();

    int version = 0;
    rc = CU(cuDriverGetVersion)(&version);
    gv_check("driver_version", rc == CUDA_SUCCESS && version > 0, "%s, version %s",
             gv_errname(rc), version >= 12000 ? ">= 12000" : "< 12000");
    gv_info("driver version %d (%d.%d)", version, version / 1000, (version % 1000) / 10);

    int count = 0;
    rc = CU(cuDeviceGetCount)(&count);
    if (!gv_check("device_count", rc == CUDA_SUCCESS && count >= 1, "%s, count %d",
                  gv_errname(rc), count))
        gv_abort();

    CUdevice dev = -1;
    rc = CU(cuDeviceGet)(&dev, 0);
    if (!gv_check("device_get", rc == CUDA_SUCCESS, "cuDeviceGet(0) -> %s", gv_errname(rc)))
        gv_abort();

    char name[256];
    memset(name, 0, sizeof name);
    rc = CU(cuDeviceGetName)(name, (int)sizeof name - 1, dev);
    gv_check("device_name", rc == CUDA_SUCCESS && name[0] != 0, "%s, %s", gv_errname(rc),
             name[0] ? "non-empty" : "empty");
    gv_info("device 0 name \"%s\"", name);

    CUuuid uuid;
    memset(&uuid, 0, sizeof uuid);
    rc = CU(cuDeviceGetUuid)(&uuid, dev);
    int nonzero = 0;
    for (int i = 0; i < 16; i++)
        nonzero |= uuid.bytes[i] != 0;
    gv_check("device_uuid", rc == CUDA_SUCCESS && nonzero, "%s, %s", gv_errname(rc),
             nonzero ? "non-zero" : "all zero");
    {
        const unsigned char *u = (const unsigned char *)uuid.bytes;
        gv_info("device 0 uuid GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-"
                "%02x%02x%02x%02x%02x%02x",
                u[0], u[1], u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11],
                u[12], u[13], u[14], u[15]);
    }

    int major = 0, minor = 0;
    gv_st st = {0};
    CALL(st, CU(cuDeviceGetAttribute)(&major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev));
    CALL(st, CU(cuDeviceGetAttribute)(&minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev));
    if (st.rc == CUDA_SUCCESS)
        gv_check("compute_capability", major >= 1, "%d.%d", major, minor);
    else
        gv_check("compute_capability", 0, "%s", gv_st_detail(&st));

    int sms = 0;
    rc = CU(cuDeviceGetAttribute)(&sms, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, dev);
    gv_check("sm_count", rc == CUDA_SUCCESS && sms > 0, "%s, %s", gv_errname(rc),
             sms > 0 ? "positive" : "not positive");
    gv_info("multiprocessors %d", sms);

    int warp = 0;
    rc = CU(cuDeviceGetAttribute)(&warp, CU_DEVICE_ATTRIBUTE_WARP_SIZE, dev);
    gv_check("warp_size", rc == CUDA_SUCCESS && warp == 32, "%s, %d", gv_errname(rc), warp);

    int maxthr = 0;
    rc = CU(cuDeviceGetAttribute)(&maxthr, CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK, dev);
    gv_check("max_threads_per_block", rc == CUDA_SUCCESS && maxthr >= 512, "%s, %d",
             gv_errname(rc), maxthr);

    int clock_khz = 0, smem = 0;
    CU(cuDeviceGetAttribute)(&clock_khz, CU_DEVICE_ATTRIBUTE_CLOCK_RATE, dev);
    CU(cuDeviceGetAttribute)(&smem, CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK, dev);
    gv_info("clock %d kHz, shared memory per block %d bytes", clock_khz, smem);

    size_t total_dev = 0;
    rc = CU(cuDeviceTotalMem)(&total_dev, dev);
    gv_check("device_total_mem", rc == CUDA_SUCCESS && total_dev > 0, "%s, %s",
             gv_errname(rc), total_dev > 0 ? "non-zero" : "zero");
    gv_info("cuDeviceTotalMem %zu bytes (%.1f MiB)", total_dev, (double)total_dev / MIB);

    /* cuMemGetInfo needs a current context. */
    CUcontext ctx = NULL;
    gv_st cst = {0};
    CALL(cst, CU(cuDevicePrimaryCtxRetain)(&ctx, dev));
    CALL(cst, CU(cuCtxSetCurrent)(ctx));
    gv_check("context", cst.rc == CUDA_SUCCESS, "%s",
             cst.rc == CUDA_SUCCESS ? "primary context current" : gv_st_detail(&cst));

    /* pop the current context, see none current, push it back */
    {
        gv_st pst = {0};
        CUcontext popped = NULL, none = (CUcontext)1, cur = NULL;
        CALL(pst, CU(cuCtxPopCurrent)(&popped));
        CALL(pst, CU(cuCtxGetCurrent)(&none));
        CALL(pst, CU(cuCtxPushCurrent)(ctx));
        CALL(pst, CU(cuCtxGetCurrent)(&cur));
        int ok = pst.rc == CUDA_SUCCESS && popped == ctx && none == NULL && cur == ctx;
        gv_check("ctx_push_pop", ok, "%s",
                 pst.rc != CUDA_SUCCESS ? gv_st_detail(&pst)
                 : ok ? "pop returned the primary context, none current, push restored it"
                      : "wrong context handles");
    }

    size_t free_b = 0, total_b = 0;
    rc = CU(cuMemGetInfo)(&free_b, &total_b);
    gv_check("mem_get_info", rc == CUDA_SUCCESS && total_b > 0 && free_b <= total_b,
             "%s, %s", gv_errname(rc),
             (total_b > 0 && free_b <= total_b) ? "0 < free <= total" : "bad free/total");
    gv_info("cuMemGetInfo free %zu total %zu bytes (%.1f / %.1f MiB)", free_b, total_b,
            (double)free_b / MIB, (double)total_b / MIB);

    const char *quota_s = getenv("GV_EXPECT_QUOTA_MIB");
    if (quota_s && *quota_s) {
        unsigned long long quota_mib = gv_env_u64("GV_EXPECT_QUOTA_MIB", 0);
        unsigned long long quota = quota_mib * 1024ull * 1024ull;
        gv_check("quota_mem_get_info", total_b == quota && free_b <= total_b,
                 "expected total %llu MiB, got %zu bytes", quota_mib, total_b);
        gv_check("quota_device_total_mem", total_dev == quota,
                 "expected %llu MiB, got %zu bytes", quota_mib, total_dev);
    }

    if (ctx)
        CU(cuDevicePrimaryCtxRelease)(dev);
    return gv_summary();
}
