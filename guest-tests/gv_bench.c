/*
 * gv_bench - call-path and device benchmark, one JSON object per metric:
 *   {"name": "...", "value": <number>, "unit": "..."}
 *
 *   sync_rtt_ctx       median us of cuCtxSynchronize on an idle context
 *   sync_rtt_dtoh4     median us of a 4-byte cuMemcpyDtoH
 *   launch_throughput  gv_empty launches then one cuCtxSynchronize, launches/s
 *   h2d_pinned, d2h_pinned, h2d_pageable, d2h_pageable
 *                      copy bandwidth, GB/s (1e9 bytes/s), best of 5
 *   compute            gv_matmul_f32 n x n, launch + cuCtxSynchronize, median ms of 5
 *   compute_gpu        the same kernels timed with events, median ms of 5
 *
 * Scale: --quick or GV_BENCH_QUICK=1 (10x fewer iterations, 32 MiB copies,
 * n = 1024).  Single knobs: GV_BENCH_ITERS, GV_BENCH_LAUNCHES,
 * GV_BENCH_COPY_MIB, GV_BENCH_MATMUL_N (a multiple of 16).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gv_common.h"

static struct gv_kernels k;

static void metric(const char *name, double value, const char *unit)
{
    printf("{\"name\": \"%s\", \"value\": %.6g, \"unit\": \"%s\"}\n", name, value, unit);
    fflush(stdout);
}

static void bench_sync_rtt(unsigned long iters)
{
    double *t = malloc(iters * sizeof *t);
    CUdeviceptr d = 0;
    uint32_t v = 0;
    gv_st st = {0};
    if (!t) {
        gv_check("sync_rtt", 0, "host malloc failed");
        return;
    }
    for (unsigned long i = 0; i < iters / 10 + 10 && st.rc == CUDA_SUCCESS; i++)
        CALL(st, CU(cuCtxSynchronize)());
    for (unsigned long i = 0; i < iters && st.rc == CUDA_SUCCESS; i++) {
        double t0 = gv_now_us();
        CALL(st, CU(cuCtxSynchronize)());
        t[i] = gv_now_us() - t0;
    }
    if (gv_check("sync_rtt_ctx", st.rc == CUDA_SUCCESS, "%s",
                 st.rc == CUDA_SUCCESS ? "measured" : gv_st_detail(&st))) {
        double med = gv_median(t, iters);
        gv_info("sync_rtt_ctx: %lu iterations, min %.2f us, median %.2f us, p99 %.2f us", iters,
                t[0], med, t[(size_t)(iters * 0.99)]);
        metric("sync_rtt_ctx", med, "us");
    }

    gv_st st2 = {0};
    CALL(st2, CU(cuMemAlloc)(&d, 4096));
    CALL(st2, CU(cuMemsetD32)(d, 0x01020304u, 1));
    for (unsigned long i = 0; i < iters / 10 + 10 && st2.rc == CUDA_SUCCESS; i++)
        CALL(st2, CU(cuMemcpyDtoH)(&v, d, 4));
    for (unsigned long i = 0; i < iters && st2.rc == CUDA_SUCCESS; i++) {
        double t0 = gv_now_us();
        CALL(st2, CU(cuMemcpyDtoH)(&v, d, 4));
        t[i] = gv_now_us() - t0;
    }
    if (gv_check("sync_rtt_dtoh4", st2.rc == CUDA_SUCCESS && v == 0x01020304u, "%s",
                 st2.rc != CUDA_SUCCESS ? gv_st_detail(&st2)
                 : v == 0x01020304u     ? "measured, value read back"
                                        : "wrong value read back")) {
        double med = gv_median(t, iters);
        gv_info("sync_rtt_dtoh4: %lu iterations, min %.2f us, median %.2f us, p99 %.2f us", iters,
                t[0], med, t[(size_t)(iters * 0.99)]);
        metric("sync_rtt_dtoh4", med, "us");
    }
    if (d)
        CU(cuMemFree)(d);
    free(t);
}

static void bench_launch(unsigned long launches)
{
    gv_st st = {0};
    for (unsigned long i = 0; i < 1000 && st.rc == CUDA_SUCCESS; i++)
        CALL(st, gv_launch_empty(&k, NULL));
    CALL(st, CU(cuCtxSynchronize)());
    double t0 = gv_now_us();
    for (unsigned long i = 0; i < launches && st.rc == CUDA_SUCCESS; i++)
        CALL(st, gv_launch_empty(&k, NULL));
    double t1 = gv_now_us();
    CALL(st, CU(cuCtxSynchronize)());
    double t2 = gv_now_us();
    if (gv_check("launch_throughput", st.rc == CUDA_SUCCESS, "%s",
                 st.rc == CUDA_SUCCESS ? "measured" : gv_st_detail(&st))) {
        gv_info("launch_throughput: %lu launches issued in %.1f ms, synchronized after %.1f ms",
                launches, (t1 - t0) / 1000.0, (t2 - t0) / 1000.0);
        metric("launch_throughput", (double)launches / ((t2 - t0) / 1e6), "launches/s");
    }
}

/* Best of 10 copies of `bytes` in one direction, after a warm-up; returns GB/s or -1. */
static double copy_best(const char *name, void *host, CUdeviceptr d, size_t bytes, int h2d)
{
    gv_st st = {0};
    double best = 0;
    /* Warm-up for at least 300 ms: the first copies after an idle period
     * run slower while the link and clocks come up. */
    double w0 = gv_now_us();
    do {
        if (h2d)
            CALL(st, CU(cuMemcpyHtoD)(d, host, bytes));
        else
            CALL(st, CU(cuMemcpyDtoH)(host, d, bytes));
    } while (st.rc == CUDA_SUCCESS && gv_now_us() - w0 < 300e3);
    for (int r = 0; r < 10 && st.rc == CUDA_SUCCESS; r++) {
        CALL(st, CU(cuCtxSynchronize)());
        double t0 = gv_now_us();
        if (h2d)
            CALL(st, CU(cuMemcpyHtoD)(d, host, bytes));
        else
            CALL(st, CU(cuMemcpyDtoH)(host, d, bytes));
        CALL(st, CU(cuCtxSynchronize)());
        double gbs = (double)bytes / ((gv_now_us() - t0) / 1e6) / 1e9;
        if (gbs > best)
            best = gbs;
    }
    if (!gv_check(name, st.rc == CUDA_SUCCESS, "%s",
                  st.rc == CUDA_SUCCESS ? "measured" : gv_st_detail(&st)))
        return -1;
    gv_info("%s: %zu MiB, best of 10 %.2f GB/s", name, bytes >> 20, best);
    metric(name, best, "GB/s");
    return best;
}

static void bench_copies(size_t bytes)
{
    CUdeviceptr d = 0;
    void *pinned = NULL, *pageable = NULL;
    gv_st st = {0};
    CALL(st, CU(cuMemAlloc)(&d, bytes));
    CALL(st, CU(cuMemAllocHost)(&pinned, bytes));
    if (st.rc != CUDA_SUCCESS) {
        gv_check("h2d_pinned", 0, "setup: %s", gv_st_detail(&st));
        gv_check("d2h_pinned", 0, "setup: %s", gv_st_detail(&st));
    } else {
        gv_pattern(pinned, bytes, 11);
        copy_best("h2d_pinned", pinned, d, bytes, 1);
        copy_best("d2h_pinned", pinned, d, bytes, 0);
    }
    if (pinned)
        CU(cuMemFreeHost)(pinned);

    pageable = malloc(bytes);
    if (!pageable || !d) {
        gv_check("h2d_pageable", 0, "setup failed");
        gv_check("d2h_pageable", 0, "setup failed");
    } else {
        gv_pattern(pageable, bytes, 12);
        copy_best("h2d_pageable", pageable, d, bytes, 1);
        copy_best("d2h_pageable", pageable, d, bytes, 0);
    }
    free(pageable);
    if (d)
        CU(cuMemFree)(d);
}

static void bench_compute(unsigned int n)
{
    size_t bytes = (size_t)n * n * sizeof(float);
    float *a = malloc(bytes), *b = malloc(bytes), *c = malloc(bytes);
    CUdeviceptr da = 0, db = 0, dc = 0;
    CUevent e0 = NULL, e1 = NULL;
    double wall[5], gpu[5];
    gv_st st = {0};
    if (!a || !b || !c) {
        gv_check("compute", 0, "host malloc failed");
        goto out;
    }
    for (unsigned i = 0; i < n; i++)
        for (unsigned j = 0; j < n; j++) {
            a[(size_t)i * n + j] = gv_mat_a(i, j);
            b[(size_t)i * n + j] = gv_mat_b(i, j);
        }
    CALL(st, CU(cuMemAlloc)(&da, bytes));
    CALL(st, CU(cuMemAlloc)(&db, bytes));
    CALL(st, CU(cuMemAlloc)(&dc, bytes));
    CALL(st, CU(cuEventCreate)(&e0, CU_EVENT_DEFAULT));
    CALL(st, CU(cuEventCreate)(&e1, CU_EVENT_DEFAULT));
    CALL(st, CU(cuMemcpyHtoD)(da, a, bytes));
    CALL(st, CU(cuMemcpyHtoD)(db, b, bytes));
    CALL(st, CU(cuMemsetD32)(dc, 0x7FC00000u, (size_t)n * n)); /* NaN */
    CALL(st, gv_launch_matmul(&k, NULL, da, db, dc, n));       /* warm-up */
    CALL(st, CU(cuCtxSynchronize)());
    for (int r = 0; r < 5 && st.rc == CUDA_SUCCESS; r++) {
        float ms = 0;
        double t0 = gv_now_us();
        CALL(st, CU(cuEventRecord)(e0, NULL));
        CALL(st, gv_launch_matmul(&k, NULL, da, db, dc, n));
        CALL(st, CU(cuEventRecord)(e1, NULL));
        CALL(st, CU(cuCtxSynchronize)());
        wall[r] = (gv_now_us() - t0) / 1000.0;
        CALL(st, CU(cuEventElapsedTime)(&ms, e0, e1));
        gpu[r] = ms;
    }
    CALL(st, CU(cuMemcpyDtoH)(c, dc, bytes));
    if (!gv_check("compute", st.rc == CUDA_SUCCESS, "%s",
                  st.rc == CUDA_SUCCESS ? "measured" : gv_st_detail(&st)))
        goto out;
    double wmed = gv_median(wall, 5), gmed = gv_median(gpu, 5);
    gv_info("compute: n=%u, median %.3f ms (launch + synchronize), %.3f ms (events), %.0f GFLOP/s",
            n, wmed, gmed, 2.0 * n * n * (double)n / (wmed / 1000.0) / 1e9);
    metric("compute", wmed, "ms");
    metric("compute_gpu", gmed, "ms");

    /* verify 64 elements (rows and columns spread over the matrix, corners
     * included) against a CPU dot product; the values are integers whose
     * sums are exact in f32, so the tolerance only guards rounding order. */
    unsigned bad = 0, checked = 0;
    for (unsigned s = 0; s < 64; s++) {
        unsigned i = (s == 0) ? 0 : (s == 1) ? n - 1 : (unsigned)((s * 2654435761u) % n);
        unsigned j = (s == 0) ? 0 : (s == 1) ? n - 1 : (unsigned)((s * 40503u + 17u) % n);
        double want = 0;
        for (unsigned x = 0; x < n; x++)
            want += (double)a[(size_t)i * n + x] * (double)b[(size_t)x * n + j];
        double got = c[(size_t)i * n + j];
        double tol = 1e-3 * (1.0 + (want < 0 ? -want : want));
        if (!(got - want <= tol && want - got <= tol)) {
            if (!bad)
                gv_info("matmul_verify: C[%u][%u] = %g, expected %g", i, j, got, want);
            bad++;
        }
        checked++;
    }
    gv_check("matmul_verify", bad == 0, "n=%u, %u of %u sampled elements match the CPU", n,
             checked - bad, checked);
out:
    if (e0)
        CU(cuEventDestroy)(e0);
    if (e1)
        CU(cuEventDestroy)(e1);
    if (da)
        CU(cuMemFree)(da);
    if (db)
        CU(cuMemFree)(db);
    if (dc)
        CU(cuMemFree)(dc);
    free(a);
    free(b);
    free(c);
}

int main(int argc, char **argv)
{
    CUdevice dev;
    CUcontext ctx;
    int quick = gv_env_u64("GV_BENCH_QUICK", 0) != 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--quick") == 0) {
            quick = 1;
        } else {
            fprintf(stderr, "usage: %s [--quick]\n", argv[0]);
            return 2;
        }
    }
    unsigned long iters = (unsigned long)gv_env_u64("GV_BENCH_ITERS", quick ? 1000 : 10000);
    unsigned long launches = (unsigned long)gv_env_u64("GV_BENCH_LAUNCHES", quick ? 10000 : 100000);
    size_t copy_bytes = (size_t)gv_env_u64("GV_BENCH_COPY_MIB", quick ? 32 : 256) << 20;
    /* 8192: about 130 ms on an H100, well past the 50 ms a compute figure needs. */
    unsigned n = (unsigned)gv_env_u64("GV_BENCH_MATMUL_N", quick ? 1024 : 8192);
    if (iters < 1)
        iters = 1;
    if (launches < 1)
        launches = 1;
    if (copy_bytes < (1u << 20))
        copy_bytes = 1u << 20;
    n = n < 16 ? 16 : n / 16 * 16;

    gv_open("bench");
    gv_info("mode %s: %lu sync iterations, %lu launches, %zu MiB copies, matmul n=%u",
            quick ? "quick" : "full", iters, launches, copy_bytes >> 20, n);
    gv_setup(&dev, &ctx);
    gv_load_kernels(&k);

    bench_sync_rtt(iters);
    bench_launch(launches);
    bench_copies(copy_bytes);
    bench_compute(n);

    CU(cuModuleUnload)(k.mod);
    CU(cuDevicePrimaryCtxRelease)(dev);
    (void)ctx;
    return gv_summary();
}
