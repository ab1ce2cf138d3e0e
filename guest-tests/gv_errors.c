/*
 * gv_errors - calls that must fail, natively and under gpuvisor, and the
 * context must stay usable after each of them (a small alloc, memset and
 * copy back: CHECK <prog>.<name>_then_ok).
 *
 * The riskiest cases (copies beyond an allocation or from a wild pointer)
 * come last, so that a driver that faults on them spoils as few checks as
 * possible.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gv_common.h"

/* A normal sequence of calls after an error: alloc, memset, copy back, free. */
static void then_ok(const char *after)
{
    char name[96];
    snprintf(name, sizeof name, "%s_then_ok", after);
    gv_st st = {0};
    CUdeviceptr d = 0;
    uint32_t h[1024];
    memset(h, 0, sizeof h);
    CALL(st, CU(cuMemAlloc)(&d, sizeof h));
    CALL(st, CU(cuMemsetD32)(d, 0x5EED5EEDu, 1024));
    CALL(st, CU(cuMemcpyDtoH)(h, d, sizeof h));
    if (d)
        CALL(st, CU(cuMemFree)(d));
    int ok = st.rc == CUDA_SUCCESS;
    for (int i = 0; ok && i < 1024; i++)
        ok = h[i] == 0x5EED5EEDu;
    gv_check(name, ok, "%s",
             st.rc != CUDA_SUCCESS ? gv_st_detail(&st)
             : ok                  ? "alloc + memset + copy back + free work"
                                   : "copied-back data wrong");
}

/* Checks that rc is the expected error (expect < 0: any error). */
static void expect(const char *name, CUresult rc, CUresult want, const char *what)
{
    int ok = want < 0 ? rc != CUDA_SUCCESS : rc == want;
    gv_check(name, ok, "%s -> %s%s", what, gv_errname(rc),
             ok ? "" : (want < 0 ? " (expected an error)" : " (unexpected)"));
    if (!ok && want >= 0)
        gv_info("%s: expected %s (%d), got %d", name, gv_errname(want), want, rc);
}

int main(void)
{
    CUdevice dev;
    CUcontext ctx;
    struct gv_kernels k;

    gv_open("errors");
    gv_setup(&dev, &ctx);
    gv_load_kernels(&k);
    then_ok("setup");

    /* cuMemFree twice */
    {
        CUdeviceptr d = 0;
        gv_st st = {0};
        CALL(st, CU(cuMemAlloc)(&d, 1u << 20));
        CALL(st, CU(cuMemFree)(d));
        if (st.rc != CUDA_SUCCESS)
            gv_check("double_free", 0, "%s", gv_st_detail(&st));
        else
            expect("double_free", CU(cuMemFree)(d), CUDA_ERROR_INVALID_VALUE,
                   "second cuMemFree of the same pointer");
        then_ok("double_free");
    }

    /* cuMemFree of an address that was never allocated */
    expect("free_wild", CU(cuMemFree)((CUdeviceptr)0x10), -1, "cuMemFree(0x10)");
    then_ok("free_wild");

    /* cuMemAlloc of more than the device has */
    {
        size_t free_b = 0, total_b = 0;
        CUresult rc = CU(cuMemGetInfo)(&free_b, &total_b);
        if (rc != CUDA_SUCCESS) {
            gv_check("alloc_too_much", 0, "cuMemGetInfo -> %s", gv_errname(rc));
        } else {
            CUdeviceptr d = 0;
            size_t want = total_b + (1ull << 30);
            CUresult r = CU(cuMemAlloc)(&d, want);
            if (r == CUDA_SUCCESS)
                CU(cuMemFree)(d);
            expect("alloc_too_much", r, CUDA_ERROR_OUT_OF_MEMORY, "cuMemAlloc(total + 1 GiB)");
        }
        then_ok("alloc_too_much");
    }

    /* names that are not in the module */
    {
        CUfunction f = NULL;
        expect("missing_function", CU(cuModuleGetFunction)(&f, k.mod, "gv_no_such_kernel"),
               CUDA_ERROR_NOT_FOUND, "cuModuleGetFunction(\"gv_no_such_kernel\")");
        then_ok("missing_function");

        CUdeviceptr g = 0;
        size_t gsize = 0;
        expect("missing_global", CU(cuModuleGetGlobal)(&g, &gsize, k.mod, "gv_no_such_global"),
               CUDA_ERROR_NOT_FOUND, "cuModuleGetGlobal(\"gv_no_such_global\")");
        then_ok("missing_global");
    }

    /* a module image that is neither PTX nor a cubin nor a fatbin */
    {
        static const char garbage[] = "this is not a CUDA module \x01\x02\x03 {{{ ;;; }}}\n";
        CUmodule m = NULL;
        CUresult r = CU(cuModuleLoadData)(&m, garbage);
        if (r == CUDA_SUCCESS)
            CU(cuModuleUnload)(m);
        expect("garbage_module", r, -1, "cuModuleLoadData(garbage text)");
        then_ok("garbage_module");
    }

    /* launch configurations the device cannot run */
    {
        CUresult r = CU(cuLaunchKernel)(k.empty, 1, 1, 1, 2048, 1, 1, 0, NULL, NULL, NULL);
        CUresult s = CU(cuCtxSynchronize)();
        expect("launch_too_many_threads", r, -1, "cuLaunchKernel(block 2048x1x1)");
        gv_check("launch_too_many_threads_sync", s == CUDA_SUCCESS,
                 "cuCtxSynchronize after the refused launch -> %s", gv_errname(s));
        then_ok("launch_too_many_threads");

        CUresult r2 = CU(cuLaunchKernel)(k.empty, 1, 1, 1, 1, 1, 1, 1u << 30, NULL, NULL, NULL);
        CU(cuCtxSynchronize)();
        expect("launch_too_much_shared", r2, -1, "cuLaunchKernel(1 GiB dynamic shared memory)");
        then_ok("launch_too_much_shared");
    }

    /* error names and strings */
    {
        static const CUresult codes[] = {CUDA_SUCCESS,        CUDA_ERROR_INVALID_VALUE,
                                         CUDA_ERROR_OUT_OF_MEMORY, CUDA_ERROR_NOT_FOUND,
                                         CUDA_ERROR_NOT_READY, CUDA_ERROR_ILLEGAL_ADDRESS};
        char names[512] = "";
        int ok = 1;
        for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++) {
            const char *n = NULL, *s = NULL;
            CUresult rn = CU(cuGetErrorName)(codes[i], &n);
            CUresult rs = CU(cuGetErrorString)(codes[i], &s);
            if (rn != CUDA_SUCCESS || rs != CUDA_SUCCESS || !n || !s || !*n || !*s) {
                ok = 0;
                continue;
            }
            size_t len = strlen(names);
            snprintf(names + len, sizeof names - len, "%s%d=%s", i ? "," : "", codes[i], n);
        }
        gv_check("error_strings", ok, "%s", names);

        const char *n = (const char *)1;
        CUresult r = CU(cuGetErrorName)((CUresult)123456, &n);
        gv_check("error_name_unknown_code", r == CUDA_ERROR_INVALID_VALUE && n == NULL,
                 "cuGetErrorName(123456) -> %s, name %s", gv_errname(r),
                 n == NULL ? "NULL" : "not NULL");
    }

    /* copies beyond an allocation's end */
    {
        CUdeviceptr d = 0;
        gv_st st = {0};
        const size_t size = 2u << 20;
        unsigned char *h = calloc(1, size + 8192);
        CALL(st, CU(cuMemAlloc)(&d, size));
        if (st.rc != CUDA_SUCCESS || !h) {
            gv_check("copy_past_end", 0, "setup: %s", gv_st_detail(&st));
        } else {
            expect("copy_past_end", CU(cuMemcpyDtoH)(h, d, size + 4096), -1,
                   "cuMemcpyDtoH of 4 KiB more than the allocation");
            CU(cuMemFree)(d);
        }
        free(h);
        then_ok("copy_past_end");
    }

    /* a copy from an address that was never allocated */
    {
        unsigned char h[64];
        expect("copy_from_wild", CU(cuMemcpyDtoH)(h, (CUdeviceptr)0x10, sizeof h), -1,
               "cuMemcpyDtoH from 0x10");
        then_ok("copy_from_wild");
    }

    CUresult s = CU(cuCtxSynchronize)();
    gv_check("context_healthy", s == CUDA_SUCCESS, "final cuCtxSynchronize -> %s", gv_errname(s));
    CUresult u = CU(cuModuleUnload)(k.mod);
    gv_check("cleanup", u == CUDA_SUCCESS, "cuModuleUnload -> %s", gv_errname(u));
    CU(cuDevicePrimaryCtxRelease)(dev);
    (void)ctx;
    return gv_summary();
}
