/*
 * gv_load - a GPU workload for scheduling tests and benchmarks.
 *
 *   gv_load saturate [--seconds S] [--iters N] [--blocks B] [--threads T] [--depth D]
 *       Keeps the GPU busy with gv_burn kernels (fixed work each), never
 *       more than 2*D queued, and counts the kernels completed each second.
 *   gv_load latency [--seconds S] [--iters N] [--blocks B] [--threads T]
 *                   [--kernels K] [--gap-us G]
 *       One request at a time, like a small inference service: K gv_burn
 *       kernels then a stream synchronize; records each request's latency.
 *
 * Prints one line "GVLOAD {json}" with the figures, and exits 1 on the
 * first CUDA error (named in the JSON), so a test can tell that the guest
 * saw no error at all.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gv_common.h"

static struct gv_kernels k;

struct opts {
    const char *mode;
    double seconds;
    unsigned long long iters;
    unsigned blocks, threads, depth, kernels;
    unsigned long long gap_us;
};

static void usage(const char *argv0)
{
    fprintf(stderr,
            "usage: %s saturate|latency [--seconds S] [--iters N] [--blocks B] [--threads T]\n"
            "          [--depth D] [--kernels K] [--gap-us G]\n",
            argv0);
    exit(2);
}

#define TRY(mode, expr) GV_TRY("GVLOAD", mode, expr, #expr)

static int saturate(const struct opts *o, CUdeviceptr sink)
{
    CUstream s;
    CUevent ev[2];
    TRY(o->mode, CU(cuStreamCreate)(&s, 0));
    TRY(o->mode, CU(cuEventCreate)(&ev[0], 2 /* CU_EVENT_DISABLE_TIMING */));
    TRY(o->mode, CU(cuEventCreate)(&ev[1], 2));
    size_t cap = (size_t)o->seconds + 2;
    unsigned long long *per_second = calloc(cap, sizeof *per_second);
    if (!per_second)
        return 1;
    double start = gv_now_us(), end = start + o->seconds * 1e6;
    unsigned long long done = 0, batches = 0;
    /* Two batches in flight: wait for the older before queueing the next. */
    for (;;) {
        for (unsigned i = 0; i < o->depth; i++)
            TRY(o->mode, gv_launch_burn(&k, s, o->iters, o->blocks, o->threads, sink));
        TRY(o->mode, CU(cuEventRecord)(ev[batches & 1], s));
        batches++;
        if (batches >= 2) {
            TRY(o->mode, CU(cuEventSynchronize)(ev[batches & 1]));
            double now = gv_now_us();
            if (now >= end)
                break;
            done += o->depth;
            size_t sec = (size_t)((now - start) / 1e6);
            if (sec < cap)
                per_second[sec] += o->depth;
        }
    }
    TRY(o->mode, CU(cuStreamSynchronize)(s));
    double wall = (gv_now_us() - start) / 1e6;
    printf("GVLOAD {\"mode\":\"saturate\",\"ok\":true,\"seconds\":%.3f,\"kernels\":%llu,\"iters\":%llu,"
           "\"blocks\":%u,\"threads\":%u,\"per_second\":[",
           wall, done, o->iters, o->blocks, o->threads);
    size_t secs = (size_t)o->seconds;
    for (size_t i = 0; i < secs && i < cap; i++)
        printf("%s%llu", i ? "," : "", per_second[i]);
    printf("]}\n");
    fflush(stdout);
    free(per_second);
    CU(cuEventDestroy)(ev[0]);
    CU(cuEventDestroy)(ev[1]);
    CU(cuStreamDestroy)(s);
    return 0;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int latency(const struct opts *o, CUdeviceptr sink)
{
    CUstream s;
    TRY(o->mode, CU(cuStreamCreate)(&s, 0));
    size_t cap = 1 << 20, n = 0;
    double *lat = malloc(cap * sizeof *lat);
    if (!lat)
        return 1;
    /* One warm-up request (module JIT, first-launch costs). */
    for (unsigned i = 0; i < o->kernels; i++)
        TRY(o->mode, gv_launch_burn(&k, s, o->iters, o->blocks, o->threads, sink));
    TRY(o->mode, CU(cuStreamSynchronize)(s));
    double start = gv_now_us(), end = start + o->seconds * 1e6;
    while (n < cap) {
        double t0 = gv_now_us();
        if (t0 >= end)
            break;
        for (unsigned i = 0; i < o->kernels; i++)
            TRY(o->mode, gv_launch_burn(&k, s, o->iters, o->blocks, o->threads, sink));
        TRY(o->mode, CU(cuStreamSynchronize)(s));
        lat[n++] = gv_now_us() - t0;
        if (o->gap_us)
            usleep((useconds_t)o->gap_us);
    }
    double sum = 0;
    for (size_t i = 0; i < n; i++)
        sum += lat[i];
    qsort(lat, n, sizeof *lat, cmp_double);
#define PCT(p) (n ? lat[(size_t)((double)(n - 1) * (p) + 0.5)] : 0.0)
    printf("GVLOAD {\"mode\":\"latency\",\"ok\":true,\"seconds\":%.3f,\"requests\":%zu,\"kernels\":%u,"
           "\"iters\":%llu,\"blocks\":%u,\"threads\":%u,\"mean_us\":%.1f,\"p50_us\":%.1f,\"p90_us\":%.1f,"
           "\"p99_us\":%.1f,\"max_us\":%.1f}\n",
           (gv_now_us() - start) / 1e6, n, o->kernels, o->iters, o->blocks, o->threads, n ? sum / n : 0.0, PCT(0.5),
           PCT(0.9), PCT(0.99), n ? lat[n - 1] : 0.0);
#undef PCT
    fflush(stdout);
    free(lat);
    CU(cuStreamDestroy)(s);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        usage(argv[0]);
    struct opts o = {argv[1], 10.0, 100000, 132, 256, 8, 4, 0};
    if (strcmp(o.mode, "saturate") != 0 && strcmp(o.mode, "latency") != 0)
        usage(argv[0]);
    if (strcmp(o.mode, "latency") == 0) {
        o.iters = 2000;
        o.blocks = 132;
    }
    for (int i = 2; i < argc; i++) {
        if (i + 1 >= argc)
            usage(argv[0]);
        const char *v = argv[++i], *a = argv[i - 1];
        if (strcmp(a, "--seconds") == 0)
            o.seconds = atof(v);
        else if (strcmp(a, "--iters") == 0)
            o.iters = strtoull(v, NULL, 0);
        else if (strcmp(a, "--blocks") == 0)
            o.blocks = (unsigned)strtoul(v, NULL, 0);
        else if (strcmp(a, "--threads") == 0)
            o.threads = (unsigned)strtoul(v, NULL, 0);
        else if (strcmp(a, "--depth") == 0)
            o.depth = (unsigned)strtoul(v, NULL, 0);
        else if (strcmp(a, "--kernels") == 0)
            o.kernels = (unsigned)strtoul(v, NULL, 0);
        else if (strcmp(a, "--gap-us") == 0)
            o.gap_us = strtoull(v, NULL, 0);
        else
            usage(argv[0]);
    }
    if (o.seconds <= 0 || o.seconds > 86400 || !o.blocks || !o.threads || o.threads > 1024 || !o.depth ||
        !o.kernels)
        usage(argv[0]);

    CUdevice dev;
    CUcontext ctx;
    gv_open("load");
    gv_setup(&dev, &ctx);
    gv_load_kernels(&k);
    CUdeviceptr sink;
    TRY(o.mode, CU(cuMemAlloc)(&sink, 256));
    int rc = strcmp(o.mode, "saturate") == 0 ? saturate(&o, sink) : latency(&o, sink);
    CU(cuMemFree)(sink);
    CU(cuModuleUnload)(k.mod);
    CU(cuDevicePrimaryCtxRelease)(dev);
    (void)ctx;
    return rc;
}
