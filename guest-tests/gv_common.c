/* gv_common.c - shared harness of the gpuvisor guest test programs. */
#define _GNU_SOURCE
#include "gv_common.h"

#include <dlfcn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels_ptx.h" /* generated from kernels.ptx by the Makefile */

struct gv_cu_table gv_cu;

static const char *gv_prog = "gv";
static int gv_n_pass, gv_n_total;

/* Symbol names per field, in the order of GV_CU_LIST. */
struct gv_sym {
    const char *field, *sym1, *sym2;
    void **slot;
};
static struct gv_sym gv_syms[] = {
#define GV_X(field, s1, s2) {#field, s1, s2, (void **)&gv_cu.field},
    GV_CU_LIST(GV_X)
#undef GV_X
};

void gv_missing(const char *field)
{
    const char *s1 = field, *s2 = NULL;
    for (size_t i = 0; i < sizeof gv_syms / sizeof gv_syms[0]; i++) {
        if (strcmp(gv_syms[i].field, field) == 0) {
            s1 = gv_syms[i].sym1;
            s2 = gv_syms[i].sym2;
        }
    }
    gv_check("symbol", 0, "libcuda.so.1 does not export %s%s%s", s1,
             s2 ? " nor " : "", s2 ? s2 : "");
    gv_abort();
}

void gv_open(const char *prog)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    gv_prog = prog;
    const char *lib = getenv("GV_LIBCUDA");
    if (!lib || !*lib)
        lib = "libcuda.so.1";
    void *h = dlopen(lib, RTLD_NOW);
    if (!h) {
        const char *e = dlerror();
        gv_check("dlopen", 0, "dlopen(%s): %s", lib, e ? e : "unknown error");
        gv_abort();
    }
    int missing = 0;
    for (size_t i = 0; i < sizeof gv_syms / sizeof gv_syms[0]; i++) {
        void *p = dlsym(h, gv_syms[i].sym1);
        if (!p && gv_syms[i].sym2)
            p = dlsym(h, gv_syms[i].sym2);
        *gv_syms[i].slot = p;
        if (!p) {
            missing++;
            gv_info("symbol %s not exported (used only if a check needs it)",
                    gv_syms[i].sym1);
        }
    }
    if (missing)
        gv_info("%d of %zu driver symbols missing", missing,
                sizeof gv_syms / sizeof gv_syms[0]);
}

int gv_check(const char *name, int pass, const char *fmt, ...)
{
    char detail[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof detail, fmt, ap);
    va_end(ap);
    gv_n_total++;
    if (pass)
        gv_n_pass++;
    printf("CHECK %s.%s: %s %s\n", gv_prog, name, pass ? "PASS" : "FAIL", detail);
    fflush(stdout);
    return pass;
}

void gv_info(const char *fmt, ...)
{
    char text[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    printf("INFO %s: %s\n", gv_prog, text);
    fflush(stdout);
}

int gv_summary(void)
{
    printf("SUMMARY %s: %d/%d passed\n", gv_prog, gv_n_pass, gv_n_total);
    fflush(stdout);
    return (gv_n_pass == gv_n_total && gv_n_total > 0) ? 0 : 1;
}

void gv_abort(void)
{
    gv_summary();
    exit(1);
}

const char *gv_errname(CUresult rc)
{
    static char buf[4][48];
    static int next;
    const char *s = NULL;
    if (gv_cu.cuGetErrorName && gv_cu.cuGetErrorName(rc, &s) == CUDA_SUCCESS && s)
        return s;
    char *b = buf[next++ & 3];
    snprintf(b, sizeof buf[0], "CUresult %d", rc);
    return b;
}

int gv_call(gv_st *st, CUresult rc, const char *what)
{
    if (rc != CUDA_SUCCESS && st->rc == CUDA_SUCCESS) {
        st->rc = rc;
        st->what = what;
    }
    return rc == CUDA_SUCCESS;
}

const char *gv_st_detail(const gv_st *st)
{
    static char buf[4][512];
    static int next;
    char *b = buf[next++ & 3];
    if (st->rc == CUDA_SUCCESS)
        snprintf(b, sizeof buf[0], "no driver error");
    else
        snprintf(b, sizeof buf[0], "%s -> %s (%d)", st->what, gv_errname(st->rc), st->rc);
    return b;
}

void gv_setup(CUdevice *dev, CUcontext *ctx)
{
    gv_st st = {0};
    *dev = 0;
    *ctx = NULL;
    CALL(st, CU(cuInit)(0));
    CALL(st, CU(cuDeviceGet)(dev, 0));
    CALL(st, CU(cuDevicePrimaryCtxRetain)(ctx, *dev));
    CALL(st, CU(cuCtxSetCurrent)(*ctx));
    if (st.rc != CUDA_SUCCESS) {
        gv_check("setup", 0, "%s", gv_st_detail(&st));
        gv_abort();
    }
    gv_check("setup", 1, "device 0 primary context current");
}

void gv_load_kernels(struct gv_kernels *k)
{
    gv_st st = {0};
    memset(k, 0, sizeof *k);
    CUresult rc = CU(cuModuleLoadData)(&k->mod, gv_kernels_ptx);
    if (rc != CUDA_SUCCESS) {
        /* Load again only to show the JIT's error log. */
        char log[8192] = "";
        CUjit_option opts[2] = {CU_JIT_ERROR_LOG_BUFFER, CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES};
        void *vals[2] = {log, (void *)(uintptr_t)sizeof log};
        CUmodule m2 = NULL;
        if (gv_cu.cuModuleLoadDataEx &&
            gv_cu.cuModuleLoadDataEx(&m2, gv_kernels_ptx, 2, opts, vals) == CUDA_SUCCESS)
            CU(cuModuleUnload)(m2);
        log[sizeof log - 1] = 0;
        for (char *line = strtok(log, "\n"); line; line = strtok(NULL, "\n"))
            gv_info("JIT: %s", line);
        gv_check("module_load", 0, "cuModuleLoadData(kernels.ptx) -> %s (%d)",
                 gv_errname(rc), rc);
        gv_abort();
    }
    CALL(st, CU(cuModuleGetFunction)(&k->empty, k->mod, "gv_empty"));
    CALL(st, CU(cuModuleGetFunction)(&k->fill_u32, k->mod, "gv_fill_u32"));
    CALL(st, CU(cuModuleGetFunction)(&k->vector_add_f32, k->mod, "gv_vector_add_f32"));
    CALL(st, CU(cuModuleGetFunction)(&k->saxpy_f32, k->mod, "gv_saxpy_f32"));
    CALL(st, CU(cuModuleGetFunction)(&k->spin_us, k->mod, "gv_spin_us"));
    CALL(st, CU(cuModuleGetFunction)(&k->matmul_f32, k->mod, "gv_matmul_f32"));
    CALL(st, CU(cuModuleGetFunction)(&k->burn, k->mod, "gv_burn"));
    if (st.rc != CUDA_SUCCESS) {
        gv_check("module_load", 0, "%s", gv_st_detail(&st));
        gv_abort();
    }
    gv_check("module_load", 1, "kernels.ptx loaded, 7 functions found");
}

/* Grid for a grid-stride loop over n elements: 256-thread blocks, at most
 * 1024 blocks (larger n loops). */
static unsigned int gv_grid_for(unsigned long long n)
{
    unsigned long long blocks = (n + 255) / 256;
    if (blocks < 1)
        blocks = 1;
    if (blocks > 1024)
        blocks = 1024;
    return (unsigned int)blocks;
}

CUresult gv_launch_fill(const struct gv_kernels *k, CUstream s, CUdeviceptr p,
                        unsigned int value, unsigned long long n)
{
    void *args[] = {&p, &value, &n};
    return CU(cuLaunchKernel)(k->fill_u32, gv_grid_for(n), 1, 1, 256, 1, 1, 0, s, args, NULL);
}

CUresult gv_launch_spin(const struct gv_kernels *k, CUstream s, unsigned long long us)
{
    void *args[] = {&us};
    return CU(cuLaunchKernel)(k->spin_us, 1, 1, 1, 1, 1, 1, 0, s, args, NULL);
}

CUresult gv_launch_burn(const struct gv_kernels *k, CUstream s, unsigned long long iters,
                        unsigned int blocks, unsigned int threads, CUdeviceptr sink)
{
    void *args[] = {&iters, &sink};
    return CU(cuLaunchKernel)(k->burn, blocks, 1, 1, threads, 1, 1, 0, s, args, NULL);
}

CUresult gv_launch_empty(const struct gv_kernels *k, CUstream s)
{
    return CU(cuLaunchKernel)(k->empty, 1, 1, 1, 1, 1, 1, 0, s, NULL, NULL);
}

CUresult gv_launch_matmul(const struct gv_kernels *k, CUstream s, CUdeviceptr a,
                          CUdeviceptr b, CUdeviceptr c, unsigned int n)
{
    void *args[] = {&a, &b, &c, &n};
    return CU(cuLaunchKernel)(k->matmul_f32, n / 16, n / 16, 1, 16, 16, 1, 0, s, args, NULL);
}

static float gv_small_int(uint32_t i, uint32_t j, uint32_t salt)
{
    uint32_t h = i * 0x9E3779B1u ^ (j + salt) * 0x85EBCA77u;
    h ^= h >> 15;
    h *= 0x2C1B3C6Du;
    h ^= h >> 12;
    return (float)((int)(h % 9u) - 4); /* -4 .. 4 */
}

float gv_mat_a(unsigned int i, unsigned int j) { return gv_small_int(i, j, 0x1234u); }
float gv_mat_b(unsigned int i, unsigned int j) { return gv_small_int(i, j, 0xBEEFu); }

double gv_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

uint64_t gv_fnv1a64(const void *data, size_t bytes)
{
    const unsigned char *p = data;
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < bytes; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

void gv_pattern(void *buf, size_t bytes, uint64_t seed)
{
    uint64_t x = seed ? seed : 0x9E3779B97F4A7C15ull;
    unsigned char *p = buf;
    size_t i = 0;
    while (i < bytes) {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        uint64_t v = x * 0x2545F4914F6CDD1Dull;
        for (int b = 0; b < 8 && i < bytes; b++, i++)
            p[i] = (unsigned char)(v >> (8 * b));
    }
}

static int gv_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double gv_median(double *v, size_t n)
{
    if (n == 0)
        return 0.0;
    qsort(v, n, sizeof v[0], gv_cmp_double);
    return (n & 1) ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2.0;
}

unsigned long long gv_env_u64(const char *name, unsigned long long dflt)
{
    const char *s = getenv(name);
    if (!s || !*s)
        return dflt;
    char *end = NULL;
    unsigned long long v = strtoull(s, &end, 0);
    return (end && *end == 0) ? v : dflt;
}

void gv_json_fail(const char *tag, const char *mode, const char *what, CUresult rc)
{
    printf("%s {\"mode\":\"%s\",\"ok\":false,\"error\":\"%s\",\"call\":\"%s\"}\n", tag, mode, gv_errname(rc),
           what);
    fflush(stdout);
    exit(1);
}
