/*
 * gv_isolation - fault isolation between VMs (issue 8): one program plays
 * the steady VM, the faulting one, and the one whose kernel never ends.
 *
 *   gv_isolation steady [--kernels N] [--words W] [--min-seconds S]
 *       Runs N checked kernels (default 270000), and more until S seconds
 *       have passed (default 0): each fills a buffer of W words (default
 *       1024) with a value of its own (gv_fill_u32), reads it back and checks
 *       every word. Counts errors (a failed call or a wrong word) and goes
 *       on; after 1000 errors it stops.
 *   gv_isolation fault --kind illegal-address|trap
 *       Launches a kernel of fault_kernels.ptx that faults (a store to an
 *       unmapped address, or trap), synchronizes, and reports the error the
 *       synchronize got and the error a later allocation got (the fault is
 *       sticky: 700 and 700, or 719 and 719, natively).
 *   gv_isolation hang
 *       Launches gv_spin_forever, a kernel that never ends, and reports what
 *       its synchronize returns, and when (under gpuvisor-backend
 *       --watchdog-ms: CUDA_ERROR_LAUNCH_TIMEOUT; natively it never returns).
 *
 * Prints one line "GVISO {json}". Exits 0 when steady saw no error, when
 * fault got its kernel's error twice, or when hang's synchronize returned
 * CUDA_ERROR_LAUNCH_TIMEOUT; 1 otherwise.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "gv_common.h"
#include "fault_kernels_ptx.h" /* generated from fault_kernels.ptx by the Makefile */

#define TRY(mode, expr) GV_TRY("GVISO", mode, expr, #expr)
#define MAX_ERRORS 1000

static double unix_now(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (double)tv.tv_sec + tv.tv_usec / 1e6;
}

static void usage(const char *argv0)
{
    fprintf(stderr,
            "usage: %s steady [--kernels N] [--words W] [--min-seconds S]\n"
            "       %s fault --kind illegal-address|trap\n"
            "       %s hang\n",
            argv0, argv0, argv0);
    exit(2);
}

static int steady(unsigned long long kernels, unsigned long long words, double min_s)
{
    struct gv_kernels k;
    gv_load_kernels(&k);
    size_t bytes = (size_t)words * 4;
    uint32_t *host = malloc(bytes);
    if (!host)
        return 1;
    CUdeviceptr buf;
    TRY("steady", CU(cuMemAlloc)(&buf, bytes));
    unsigned long long done = 0, errors = 0;
    CUresult first = CUDA_SUCCESS;
    double start = gv_now_us();
    for (; (done < kernels || gv_now_us() - start < min_s * 1e6) && errors < MAX_ERRORS; done++) {
        uint32_t value = (uint32_t)(done * 0x9E3779B1u) ^ 0x5A5A5A5Au;
        CUresult rc = gv_launch_fill(&k, NULL, buf, value, words);
        if (rc == CUDA_SUCCESS)
            rc = CU(cuMemcpyDtoH)(host, buf, bytes);
        int ok = rc == CUDA_SUCCESS;
        for (size_t w = 0; ok && w < words; w++)
            ok = host[w] == value;
        if (!ok) {
            errors++;
            if (first == CUDA_SUCCESS)
                first = rc;
            if (errors <= 4)
                fprintf(stderr, "gv_isolation: kernel %llu: %s\n", done,
                        rc == CUDA_SUCCESS ? "wrong data read back" : gv_errname(rc));
        }
    }
    double run_s = (gv_now_us() - start) / 1e6;
    printf("GVISO {\"mode\":\"steady\",\"ok\":%s,\"kernels\":%llu,\"errors\":%llu,\"first_error\":\"%s\","
           "\"words\":%llu,\"run_s\":%.3f,\"kernels_per_s\":%.1f,\"end_unix\":%.6f}\n",
           errors == 0 ? "true" : "false", done, errors, first == CUDA_SUCCESS ? "" : gv_errname(first), words,
           run_s, run_s > 0 ? done / run_s : 0.0, unix_now());
    return errors == 0 ? 0 : 1;
}

/* The fault module's function `name`. */
static CUfunction fault_function(const char *mode, const char *name)
{
    CUmodule m;
    CUfunction f;
    TRY(mode, CU(cuModuleLoadData)(&m, gv_fault_kernels_ptx));
    TRY(mode, CU(cuModuleGetFunction)(&f, m, name));
    return f;
}

static int fault(const char *kind)
{
    const char *name;
    CUresult want;
    if (strcmp(kind, "illegal-address") == 0) {
        name = "gv_fault_illegal_address";
        want = CUDA_ERROR_ILLEGAL_ADDRESS;
    } else if (strcmp(kind, "trap") == 0) {
        name = "gv_fault_trap";
        want = (CUresult)719; /* CUDA_ERROR_LAUNCH_FAILED */
    } else {
        return 2;
    }
    CUfunction f = fault_function("fault", name);
    unsigned long long unused = 0;
    void *args[] = {&unused};
    double t = unix_now();
    CUresult launch = CU(cuLaunchKernel)(f, 1, 1, 1, 1, 1, 1, 0, NULL, args, NULL);
    CUresult sync = CU(cuCtxSynchronize)();
    double t_error = unix_now();
    CUdeviceptr p = 0;
    CUresult later = CU(cuMemAlloc)(&p, 4096);
    int ok = sync == want && later == want;
    printf("GVISO {\"mode\":\"fault\",\"kind\":\"%s\",\"ok\":%s,\"launch_error\":%d,\"sync_error\":%d,"
           "\"sync_error_name\":\"%s\",\"later_error\":%d,\"expected\":%d,\"launch_unix\":%.6f,"
           "\"error_unix\":%.6f}\n",
           kind, ok ? "true" : "false", (int)launch, (int)sync, gv_errname(sync), (int)later, (int)want, t, t_error);
    return ok ? 0 : 1;
}

static int hang(void)
{
    CUfunction f = fault_function("hang", "gv_spin_forever");
    CUdeviceptr flag;
    TRY("hang", CU(cuMemAlloc)(&flag, 4));
    TRY("hang", CU(cuMemsetD32)(flag, 0, 1));
    void *args[] = {&flag};
    TRY("hang", CU(cuLaunchKernel)(f, 1, 1, 1, 1, 1, 1, 0, NULL, args, NULL));
    double start = gv_now_us();
    CUresult sync = CU(cuCtxSynchronize)();
    double waited = (gv_now_us() - start) / 1e6;
    int ok = sync == (CUresult)702; /* CUDA_ERROR_LAUNCH_TIMEOUT */
    printf("GVISO {\"mode\":\"hang\",\"ok\":%s,\"sync_error\":%d,\"sync_error_name\":\"%s\",\"waited_s\":%.3f}\n",
           ok ? "true" : "false", (int)sync, gv_errname(sync), waited);
    return ok ? 0 : 1;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        usage(argv[0]);
    const char *mode = argv[1];
    unsigned long long kernels = 270000, words = 1024;
    double min_s = 0;
    const char *kind = NULL;
    for (int i = 2; i < argc; i++) {
        if (i + 1 < argc && strcmp(argv[i], "--kernels") == 0)
            kernels = strtoull(argv[++i], NULL, 0);
        else if (i + 1 < argc && strcmp(argv[i], "--words") == 0)
            words = strtoull(argv[++i], NULL, 0);
        else if (i + 1 < argc && strcmp(argv[i], "--min-seconds") == 0)
            min_s = strtod(argv[++i], NULL);
        else if (i + 1 < argc && strcmp(argv[i], "--kind") == 0)
            kind = argv[++i];
        else
            usage(argv[0]);
    }
    if (words == 0 || words > (1ull << 26))
        usage(argv[0]);
    gv_open("gv_isolation");
    CUdevice dev;
    CUcontext ctx;
    gv_setup(&dev, &ctx);
    if (strcmp(mode, "steady") == 0)
        return steady(kernels, words, min_s);
    if (strcmp(mode, "fault") == 0 && kind) {
        int r = fault(kind);
        if (r == 2)
            usage(argv[0]);
        return r;
    }
    if (strcmp(mode, "hang") == 0)
        return hang();
    usage(argv[0]);
}
