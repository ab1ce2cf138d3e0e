/*
 * gv_vector_add - kernel launches and their results: vector add, saxpy, fill
 * (through kernelParams and through a packed `extra` parameter buffer),
 * empty launches, a short spin, a small matmul, cuModuleLoadDataEx.
 *
 * Every data value is an integer or half-integer well below 2^24, so the
 * results are exact in f32 and compared for equality.
 */
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gv_common.h"

#define N (1u << 20)

static float *ha, *hb, *hc;
static CUdeviceptr da, db, dc;

/* Appends one parameter to a packed buffer at its natural alignment. */
static size_t pack(unsigned char *buf, size_t off, const void *val, size_t size)
{
    off = (off + size - 1) / size * size;
    memcpy(buf + off, val, size);
    return off + size;
}

static void check_vector_add(const struct gv_kernels *k)
{
    gv_st st = {0};
    for (unsigned i = 0; i < N; i++) {
        ha[i] = (float)i * 0.5f;
        hb[i] = (float)(2u * i + 1u);
        hc[i] = -1.0f;
    }
    CALL(st, CU(cuMemcpyHtoD)(da, ha, N * sizeof(float)));
    CALL(st, CU(cuMemcpyHtoD)(db, hb, N * sizeof(float)));
    CALL(st, CU(cuMemsetD32)(dc, 0, N));
    unsigned long long n = N;
    void *args[] = {&da, &db, &dc, &n};
    CALL(st, CU(cuLaunchKernel)(k->vector_add_f32, N / 256, 1, 1, 256, 1, 1, 0, NULL, args, NULL));
    CALL(st, CU(cuCtxSynchronize)());
    CALL(st, CU(cuMemcpyDtoH)(hc, dc, N * sizeof(float)));
    if (st.rc != CUDA_SUCCESS) {
        gv_check("vector_add", 0, "%s", gv_st_detail(&st));
        return;
    }
    unsigned bad = 0, first = 0;
    for (unsigned i = 0; i < N; i++) {
        if (hc[i] != ha[i] + hb[i]) {
            if (!bad)
                first = i;
            bad++;
        }
    }
    if (bad)
        gv_check("vector_add", 0, "%u of %u wrong, first c[%u]=%g expected %g", bad, N, first,
                 (double)hc[first], (double)(ha[first] + hb[first]));
    else
        gv_check("vector_add", 1, "n=%u fnv=%016llx", N,
                 (unsigned long long)gv_fnv1a64(hc, N * sizeof(float)));
}

/* Sets x (da) and y (db) for saxpy; returns alpha. */
/* The same vector add from a cubin (ptxas output for sm_90, shipped next to
 * the programs): the driver must lay out kernelParams from the cubin's own
 * parameter table. Runs only where that file is present. */
static void check_cubin(void)
{
    const char *path = getenv("GV_CUBIN");
    char buf[4096];
    if (!path) {
        ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 64);
        if (n <= 0)
            return;
        buf[n] = 0;
        char *slash = strrchr(buf, '/');
        strcpy(slash ? slash + 1 : buf, "gv_kernels_sm90.cubin");
        path = buf;
    }
    FILE *f = fopen(path, "rb");
    if (!f) {
        gv_info("no cubin at %s; cubin check skipped", path);
        return;
    }
    static unsigned char image[1 << 20];
    size_t len = fread(image, 1, sizeof image, f);
    fclose(f);
    gv_st st = {0};
    CUmodule m = NULL;
    CUfunction fn = NULL;
    CALL(st, CU(cuModuleLoadData)(&m, image));
    CALL(st, CU(cuModuleGetFunction)(&fn, m, "gv_vector_add_f32"));
    CALL(st, CU(cuMemsetD32)(dc, 0, N));
    unsigned long long n = N;
    void *args[] = {&da, &db, &dc, &n};
    CALL(st, CU(cuLaunchKernel)(fn, N / 256, 1, 1, 256, 1, 1, 0, NULL, args, NULL));
    CALL(st, CU(cuMemcpyDtoH)(hc, dc, N * sizeof(float)));
    if (m)
        CU(cuModuleUnload)(m);
    if (st.rc != CUDA_SUCCESS) {
        gv_check("cubin_vector_add", 0, "%s", gv_st_detail(&st));
        return;
    }
    unsigned bad = 0;
    for (unsigned i = 0; i < N; i++)
        bad += hc[i] != ha[i] + hb[i];
    gv_check("cubin_vector_add", bad == 0, "%zu-byte cubin, %u of %u wrong, fnv=%016llx", len, bad, N,
             (unsigned long long)gv_fnv1a64(hc, N * sizeof(float)));
}

static float saxpy_inputs(void)
{
    for (unsigned i = 0; i < N; i++) {
        ha[i] = (float)(i % 1000u);          /* x */
        hb[i] = (float)i * 0.5f;             /* y */
    }
    return 2.5f;
}

static void check_saxpy_result(const char *name, float alpha, gv_st *st)
{
    CALL(*st, CU(cuMemcpyDtoH)(hc, db, N * sizeof(float)));
    if (st->rc != CUDA_SUCCESS) {
        gv_check(name, 0, "%s", gv_st_detail(st));
        return;
    }
    unsigned bad = 0, first = 0;
    for (unsigned i = 0; i < N; i++) {
        float want = alpha * ha[i] + hb[i];
        if (hc[i] != want) {
            if (!bad)
                first = i;
            bad++;
        }
    }
    if (bad)
        gv_check(name, 0, "%u of %u wrong, first y[%u]=%g expected %g", bad, N, first,
                 (double)hc[first], (double)(alpha * ha[first] + hb[first]));
    else
        gv_check(name, 1, "n=%u alpha=%g fnv=%016llx", N, (double)alpha,
                 (unsigned long long)gv_fnv1a64(hc, N * sizeof(float)));
}

static void check_saxpy(const struct gv_kernels *k, int use_extra)
{
    gv_st st = {0};
    float alpha = saxpy_inputs();
    CALL(st, CU(cuMemcpyHtoD)(da, ha, N * sizeof(float)));
    CALL(st, CU(cuMemcpyHtoD)(db, hb, N * sizeof(float)));
    unsigned long long n = N;
    if (!use_extra) {
        void *args[] = {&alpha, &da, &db, &n};
        CALL(st, CU(cuLaunchKernel)(k->saxpy_f32, 512, 1, 1, 256, 1, 1, 0, NULL, args, NULL));
    } else {
        /* f32 at 0, then 4 bytes of padding, u64s at 8, 16, 24: 32 bytes */
        uint64_t storage[8];
        unsigned char *buf = (unsigned char *)storage;
        memset(storage, 0, sizeof storage);
        size_t size = 0;
        size = pack(buf, size, &alpha, sizeof alpha);
        size = pack(buf, size, &da, sizeof da);
        size = pack(buf, size, &db, sizeof db);
        size = pack(buf, size, &n, sizeof n);
        void *extra[] = {CU_LAUNCH_PARAM_BUFFER_POINTER, buf, CU_LAUNCH_PARAM_BUFFER_SIZE, &size,
                         CU_LAUNCH_PARAM_END};
        CALL(st, CU(cuLaunchKernel)(k->saxpy_f32, 512, 1, 1, 256, 1, 1, 0, NULL, NULL, extra));
    }
    CALL(st, CU(cuCtxSynchronize)());
    check_saxpy_result(use_extra ? "extra_saxpy" : "saxpy", alpha, &st);
}

static void check_fill(const struct gv_kernels *k, int use_extra)
{
    gv_st st = {0};
    const char *name = use_extra ? "extra_fill" : "fill";
    unsigned int value = use_extra ? 0x600DF00Du : 0xDEADBEEFu;
    unsigned long long n = N - 3; /* the last 3 words must keep the memset value */
    uint32_t *h = (uint32_t *)hc;
    CALL(st, CU(cuMemsetD32)(dc, 0x11111111u, N));
    if (!use_extra) {
        /* 64 blocks of 256 threads: 64 trips through the grid-stride loop */
        void *args[] = {&dc, &value, &n};
        CALL(st, CU(cuLaunchKernel)(k->fill_u32, 64, 1, 1, 256, 1, 1, 0, NULL, args, NULL));
    } else {
        /* u64 at 0, u32 at 8, then 4 bytes of padding, u64 at 16: 24 bytes */
        uint64_t storage[4];
        unsigned char *buf = (unsigned char *)storage;
        memset(storage, 0, sizeof storage);
        size_t size = 0;
        size = pack(buf, size, &dc, sizeof dc);
        size = pack(buf, size, &value, sizeof value);
        size = pack(buf, size, &n, sizeof n);
        void *extra[] = {CU_LAUNCH_PARAM_BUFFER_POINTER, buf, CU_LAUNCH_PARAM_BUFFER_SIZE, &size,
                         CU_LAUNCH_PARAM_END};
        CALL(st, CU(cuLaunchKernel)(k->fill_u32, 300, 1, 1, 128, 1, 1, 0, NULL, NULL, extra));
    }
    CALL(st, CU(cuCtxSynchronize)());
    CALL(st, CU(cuMemcpyDtoH)(h, dc, N * sizeof(uint32_t)));
    if (st.rc != CUDA_SUCCESS) {
        gv_check(name, 0, "%s", gv_st_detail(&st));
        return;
    }
    unsigned bad = 0, first = 0;
    for (unsigned i = 0; i < N; i++) {
        uint32_t want = i < n ? value : 0x11111111u;
        if (h[i] != want) {
            if (!bad)
                first = i;
            bad++;
        }
    }
    if (bad)
        gv_check(name, 0, "%u of %u wrong, first [%u]=0x%08x", bad, N, first, h[first]);
    else
        gv_check(name, 1, "n=%llu of %u value=0x%08x tail intact", n, N, value);
}

static void check_empty(const struct gv_kernels *k)
{
    gv_st st = {0};
    for (int i = 0; i < 100 && st.rc == CUDA_SUCCESS; i++)
        CALL(st, gv_launch_empty(k, NULL));
    CALL(st, CU(cuCtxSynchronize)());
    gv_check("empty_launch", st.rc == CUDA_SUCCESS, "%s",
             st.rc == CUDA_SUCCESS ? "100 launches + synchronize" : gv_st_detail(&st));
}

static void check_spin(const struct gv_kernels *k)
{
    gv_st st = {0};
    double t0 = gv_now_us();
    CALL(st, gv_launch_spin(k, NULL, 2000));
    CALL(st, CU(cuCtxSynchronize)());
    double dt = gv_now_us() - t0;
    if (st.rc != CUDA_SUCCESS) {
        gv_check("spin", 0, "%s", gv_st_detail(&st));
        return;
    }
    gv_info("gv_spin_us(2000) + synchronize took %.0f us", dt);
    gv_check("spin", dt >= 2000.0, "gv_spin_us(2000) %s", dt >= 2000.0 ? "waited >= 2 ms" : "returned early");
}

static void check_matmul_small(const struct gv_kernels *k)
{
    const unsigned n = 128;
    size_t bytes = (size_t)n * n * sizeof(float);
    float *a = malloc(bytes), *b = malloc(bytes), *c = malloc(bytes);
    CUdeviceptr d_a = 0, d_b = 0, d_c = 0;
    gv_st st = {0};
    if (!a || !b || !c) {
        gv_check("matmul_small", 0, "host malloc failed");
        goto out;
    }
    for (unsigned i = 0; i < n; i++)
        for (unsigned j = 0; j < n; j++) {
            a[i * n + j] = gv_mat_a(i, j);
            b[i * n + j] = gv_mat_b(i, j);
        }
    CALL(st, CU(cuMemAlloc)(&d_a, bytes));
    CALL(st, CU(cuMemAlloc)(&d_b, bytes));
    CALL(st, CU(cuMemAlloc)(&d_c, bytes));
    CALL(st, CU(cuMemcpyHtoD)(d_a, a, bytes));
    CALL(st, CU(cuMemcpyHtoD)(d_b, b, bytes));
    CALL(st, CU(cuMemsetD32)(d_c, 0x7FC00000u, (size_t)n * n)); /* NaN */
    CALL(st, gv_launch_matmul(k, NULL, d_a, d_b, d_c, n));
    CALL(st, CU(cuCtxSynchronize)());
    CALL(st, CU(cuMemcpyDtoH)(c, d_c, bytes));
    if (st.rc != CUDA_SUCCESS) {
        gv_check("matmul_small", 0, "%s", gv_st_detail(&st));
        goto out;
    }
    unsigned bad = 0, fi = 0, fj = 0;
    float fwant = 0;
    for (unsigned i = 0; i < n; i++)
        for (unsigned j = 0; j < n; j++) {
            float s = 0;
            for (unsigned x = 0; x < n; x++)
                s += a[i * n + x] * b[x * n + j];
            if (c[i * n + j] != s) {
                if (!bad) {
                    fi = i;
                    fj = j;
                    fwant = s;
                }
                bad++;
            }
        }
    if (bad)
        gv_check("matmul_small", 0, "%u of %u wrong, first C[%u][%u]=%g expected %g", bad,
                 n * n, fi, fj, (double)c[fi * n + fj], (double)fwant);
    else
        gv_check("matmul_small", 1, "n=%u exact, fnv=%016llx", n,
                 (unsigned long long)gv_fnv1a64(c, bytes));
out:
    if (d_a)
        CU(cuMemFree)(d_a);
    if (d_b)
        CU(cuMemFree)(d_b);
    if (d_c)
        CU(cuMemFree)(d_c);
    free(a);
    free(b);
    free(c);
}

static void check_module_load_ex(void)
{
    char info_log[4096] = "", error_log[4096] = "";
    CUjit_option opts[4] = {CU_JIT_INFO_LOG_BUFFER, CU_JIT_INFO_LOG_BUFFER_SIZE_BYTES,
                            CU_JIT_ERROR_LOG_BUFFER, CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES};
    void *vals[4] = {info_log, (void *)(uintptr_t)sizeof info_log, error_log,
                     (void *)(uintptr_t)sizeof error_log};
    CUmodule m = NULL;
    CUfunction f = NULL;
    gv_st st = {0};
    CALL(st, CU(cuModuleLoadDataEx)(&m, gv_kernels_ptx, 4, opts, vals));
    CALL(st, CU(cuModuleGetFunction)(&f, m, "gv_saxpy_f32"));
    CALL(st, CU(cuModuleUnload)(m));
    error_log[sizeof error_log - 1] = 0;
    if (error_log[0])
        gv_info("JIT error log: %s", error_log);
    gv_check("module_load_ex", st.rc == CUDA_SUCCESS, "%s",
             st.rc == CUDA_SUCCESS ? "loaded with log options, function found, unloaded"
                                   : gv_st_detail(&st));
}

int main(void)
{
    CUdevice dev;
    CUcontext ctx;
    struct gv_kernels k;

    gv_open("vector_add");
    gv_setup(&dev, &ctx);
    gv_load_kernels(&k);

    ha = malloc(N * sizeof(float));
    hb = malloc(N * sizeof(float));
    hc = malloc(N * sizeof(float));
    gv_st st = {0};
    CALL(st, CU(cuMemAlloc)(&da, N * sizeof(float)));
    CALL(st, CU(cuMemAlloc)(&db, N * sizeof(float)));
    CALL(st, CU(cuMemAlloc)(&dc, N * sizeof(float)));
    if (!gv_check("alloc", st.rc == CUDA_SUCCESS && ha && hb && hc, "%s",
                  st.rc == CUDA_SUCCESS ? "3 x 4 MiB" : gv_st_detail(&st)))
        gv_abort();

    check_vector_add(&k);
    check_cubin();
    check_saxpy(&k, 0);
    check_fill(&k, 0);
    check_saxpy(&k, 1);
    check_fill(&k, 1);
    check_empty(&k);
    check_spin(&k);
    check_matmul_small(&k);
    check_module_load_ex();

    gv_st fst = {0};
    CALL(fst, CU(cuMemFree)(da));
    CALL(fst, CU(cuMemFree)(db));
    CALL(fst, CU(cuMemFree)(dc));
    CALL(fst, CU(cuModuleUnload)(k.mod));
    CALL(fst, CU(cuCtxSynchronize)());
    gv_check("cleanup", fst.rc == CUDA_SUCCESS, "%s",
             fst.rc == CUDA_SUCCESS ? "freed, module unloaded" : gv_st_detail(&fst));
    CU(cuDevicePrimaryCtxRelease)(dev);
    free(ha);
    free(hb);
    free(hc);
    (void)ctx;
    return gv_summary();
}
