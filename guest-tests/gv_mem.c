/*
 * gv_mem - device memory that must survive overcommit, and must not leak.
 *
 *   gv_mem hold [--mib M | --fill] [--chunk-mib C] [--seconds S] [--seed N]
 *               [--verify-ms V] [--start-at T] [--iters I] [--blocks B] [--threads T] [--depth D]
 *       Allocates M MiB (or, with --fill, all that cuMemGetInfo says is free
 *       less a sixteenth, at most 64 MiB) in chunks of C MiB, each filled with a pseudo-random
 *       pattern of the seed and tagged with its index, then keeps the GPU
 *       busy with gv_burn kernels for S seconds, checking every byte of
 *       every chunk each V ms (0: only at the end) and at the end; counts
 *       the kernels done within the S seconds. With
 *       --start-at, the burning starts at Unix time T (seconds), so that
 *       several VMs' runs cover the same window whatever their fills took.
 *   gv_mem scrub-write [--mib M | --fill] [--chunk-mib C]
 *       Fills the memory with a marker word, frees it (timed) and exits.
 *   gv_mem scrub-check [--fill] [--chunk-mib C]
 *       Allocates all it can and counts marker words in it.
 *
 * Prints one line "GVMEM {json}"; exits 1 on a CUDA error or on any byte
 * that is not what was written (hold) or any marker found (scrub-check).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

#include "gv_common.h"

#define MIB (1ull << 20)
#define TAG_BYTES 4096
#define MARKER 0x5CA1AB1Eu

static struct gv_kernels k;

struct opts {
    const char *mode;
    unsigned long long mib, chunk_mib, seed, iters, verify_ms;
    int fill;
    double seconds, start_at;
    unsigned blocks, threads, depth;
};

static void usage(const char *argv0)
{
    fprintf(stderr,
            "usage: %s hold|scrub-write|scrub-check [--mib M | --fill] [--chunk-mib C] [--seconds S]\n"
            "          [--seed N] [--verify-ms V] [--iters I] [--blocks B] [--threads T] [--depth D]\n",
            argv0);
    exit(2);
}

#define TRY(mode, expr) GV_TRY("GVMEM", mode, expr, #expr)

/* Allocates chunks of `chunk` bytes: `want` bytes, or (want == 0) all that
 * is free less 64 MiB, or until an allocation fails when `greedy`. */
static size_t alloc_chunks(const struct opts *o, CUdeviceptr **out, size_t chunk, unsigned long long want, int greedy)
{
    if (!want) {
        size_t free_b = 0, total_b = 0;
        TRY(o->mode, CU(cuMemGetInfo)(&free_b, &total_b));
        /* Leave a little for the driver (modules, the sink): 1/16, at most 64 MiB. */
        size_t slack = free_b / 16 < 64 * MIB ? free_b / 16 : 64 * MIB;
        want = free_b - slack;
    }
    size_t n = greedy ? (size_t)(want / chunk) + 64 : (size_t)(want / chunk);
    CUdeviceptr *p = calloc(n ? n : 1, sizeof *p);
    if (!p)
        exit(1);
    size_t got = 0;
    for (; got < n; got++) {
        CUresult rc = CU(cuMemAlloc)(&p[got], chunk);
        if (rc == CUDA_ERROR_OUT_OF_MEMORY && greedy)
            break;
        if (rc != CUDA_SUCCESS)
            gv_json_fail("GVMEM", o->mode, "cuMemAlloc", rc);
    }
    *out = p;
    return got;
}

static uint32_t tag_of(unsigned long long seed, size_t i)
{
    return (uint32_t)(seed * 0x9E3779B1u) ^ (uint32_t)(i * 0x85EBCA6Bu) ^ 0xA5A5A5A5u;
}

/* Every chunk: the seed's pattern, its first TAG_BYTES the chunk's tag. */
static void fill(const struct opts *o, CUdeviceptr *p, size_t n, size_t chunk, const unsigned char *pattern)
{
    for (size_t i = 0; i < n; i++) {
        TRY(o->mode, CU(cuMemcpyHtoD)(p[i], pattern, chunk));
        TRY(o->mode, CU(cuMemsetD32)(p[i], tag_of(o->seed, i), TAG_BYTES / 4));
    }
    TRY(o->mode, CU(cuCtxSynchronize)());
}

/* Number of chunks whose bytes are not what `fill` wrote. */
static size_t verify(const struct opts *o, CUdeviceptr *p, size_t n, size_t chunk, const unsigned char *pattern,
                     unsigned char *buf)
{
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        TRY(o->mode, CU(cuMemcpyDtoH)(buf, p[i], chunk));
        uint32_t tag = tag_of(o->seed, i);
        int ok = memcmp(buf + TAG_BYTES, pattern + TAG_BYTES, chunk - TAG_BYTES) == 0;
        for (size_t w = 0; ok && w < TAG_BYTES / 4; w++)
            ok = ((uint32_t *)buf)[w] == tag;
        if (!ok) {
            if (bad < 4)
                fprintf(stderr, "gv_mem: chunk %zu (of %zu) does not hold what was written\n", i, n);
            bad++;
        }
    }
    return bad;
}

static int hold(const struct opts *o)
{
    size_t chunk = o->chunk_mib * MIB;
    unsigned char *pattern = malloc(chunk), *buf = malloc(chunk);
    if (!pattern || !buf)
        return 1;
    gv_pattern(pattern, chunk, o->seed);
    CUdeviceptr *p, sink;
    TRY(o->mode, CU(cuMemAlloc)(&sink, 256));
    double t0 = gv_now_us();
    size_t n = alloc_chunks(o, &p, chunk, o->fill ? 0 : o->mib * MIB, 0);
    fill(o, p, n, chunk, pattern);
    double fill_s = (gv_now_us() - t0) / 1e6;
    CUstream s;
    CUevent ev[2];
    TRY(o->mode, CU(cuStreamCreate)(&s, 0));
    TRY(o->mode, CU(cuEventCreate)(&ev[0], 2 /* CU_EVENT_DISABLE_TIMING */));
    TRY(o->mode, CU(cuEventCreate)(&ev[1], 2));
    double late_s = 0;
    if (o->start_at > 0) {
        struct timeval tv;
        gettimeofday(&tv, NULL);
        double wait = o->start_at - ((double)tv.tv_sec + tv.tv_usec / 1e6);
        if (wait > 0)
            usleep((useconds_t)(wait * 1e6));
        else
            late_s = -wait;
    }
    double start = gv_now_us(), end = start + o->seconds * 1e6, next_verify = start + o->verify_ms * 1e3;
    double verify_us = 0;
    unsigned long long kernels = 0, batches = 0, verifies = 0;
    size_t bad = 0;
    while (o->seconds > 0) {
        for (unsigned i = 0; i < o->depth; i++)
            TRY(o->mode, gv_launch_burn(&k, s, o->iters, o->blocks, o->threads, sink));
        TRY(o->mode, CU(cuEventRecord)(ev[batches & 1], s));
        batches++;
        if (batches < 2)
            continue;
        TRY(o->mode, CU(cuEventSynchronize)(ev[batches & 1]));
        double now = gv_now_us();
        /* Only work done by the deadline counts: a VM off the GPU when it
         * passes finishes its last batch in its next turn, after the others
         * have stopped. */
        if (now >= end)
            break;
        kernels += o->depth;
        if (o->verify_ms && now >= next_verify) {
            TRY(o->mode, CU(cuStreamSynchronize)(s));
            bad += verify(o, p, n, chunk, pattern, buf);
            verifies++;
            double after = gv_now_us();
            verify_us += after - now;
            next_verify = after + o->verify_ms * 1e3;
        }
    }
    TRY(o->mode, CU(cuStreamSynchronize)(s));
    double run_s = (gv_now_us() - start) / 1e6;
    double v0 = gv_now_us();
    bad += verify(o, p, n, chunk, pattern, buf);
    verifies++;
    double final_verify_s = (gv_now_us() - v0) / 1e6;
    for (size_t i = 0; i < n; i++)
        TRY(o->mode, CU(cuMemFree)(p[i]));
    printf("GVMEM {\"mode\":\"hold\",\"ok\":%s,\"seed\":%llu,\"chunks\":%zu,\"bytes\":%llu,\"bad_chunks\":%zu,"
           "\"verifies\":%llu,\"fill_s\":%.3f,\"run_s\":%.3f,\"verify_s\":%.3f,\"final_verify_s\":%.3f,"
           "\"kernels\":%llu,\"kernels_per_s\":%.1f,\"late_s\":%.3f}\n",
           bad ? "false" : "true", o->seed, n, (unsigned long long)n * chunk, bad, verifies, fill_s, run_s,
           verify_us / 1e6, final_verify_s, kernels, run_s > 0 ? (double)kernels / run_s : 0.0, late_s);
    fflush(stdout);
    CU(cuMemFree)(sink);
    return bad ? 1 : 0;
}

static int scrub_write(const struct opts *o)
{
    size_t chunk = o->chunk_mib * MIB;
    CUdeviceptr *p;
    size_t n = alloc_chunks(o, &p, chunk, o->fill ? 0 : o->mib * MIB, 0);
    for (size_t i = 0; i < n; i++)
        TRY(o->mode, CU(cuMemsetD32)(p[i], MARKER, chunk / 4));
    TRY(o->mode, CU(cuCtxSynchronize)());
    double t0 = gv_now_us();
    for (size_t i = 0; i < n; i++)
        TRY(o->mode, CU(cuMemFree)(p[i]));
    /* A free may return before the memory is scrubbed: wait for the device. */
    TRY(o->mode, CU(cuCtxSynchronize)());
    double free_s = (gv_now_us() - t0) / 1e6;
    printf("GVMEM {\"mode\":\"scrub-write\",\"ok\":true,\"chunks\":%zu,\"bytes\":%llu,\"free_s\":%.4f}\n", n,
           (unsigned long long)n * chunk, free_s);
    fflush(stdout);
    return 0;
}

static int scrub_check(const struct opts *o)
{
    size_t chunk = o->chunk_mib * MIB;
    uint32_t *buf = malloc(chunk);
    if (!buf)
        return 1;
    CUdeviceptr *p;
    size_t n = alloc_chunks(o, &p, chunk, o->fill ? 0 : o->mib * MIB, 1);
    unsigned long long found = 0;
    for (size_t i = 0; i < n; i++) {
        TRY(o->mode, CU(cuMemcpyDtoH)(buf, p[i], chunk));
        for (size_t w = 0; w < chunk / 4; w++)
            found += buf[w] == MARKER;
    }
    for (size_t i = 0; i < n; i++)
        TRY(o->mode, CU(cuMemFree)(p[i]));
    printf("GVMEM {\"mode\":\"scrub-check\",\"ok\":%s,\"chunks\":%zu,\"bytes\":%llu,\"marker_words\":%llu}\n",
           found ? "false" : "true", n, (unsigned long long)n * chunk, found);
    fflush(stdout);
    return found ? 1 : 0;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        usage(argv[0]);
    struct opts o = {argv[1], 64, 64, 1, 100000, 0, 0, 0.0, 0.0, 132, 256, 4};
    if (strcmp(o.mode, "hold") != 0 && strcmp(o.mode, "scrub-write") != 0 && strcmp(o.mode, "scrub-check") != 0)
        usage(argv[0]);
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--fill") == 0) {
            o.fill = 1;
            continue;
        }
        if (i + 1 >= argc)
            usage(argv[0]);
        const char *v = argv[++i];
        if (strcmp(a, "--mib") == 0)
            o.mib = strtoull(v, NULL, 0);
        else if (strcmp(a, "--chunk-mib") == 0)
            o.chunk_mib = strtoull(v, NULL, 0);
        else if (strcmp(a, "--seconds") == 0)
            o.seconds = atof(v);
        else if (strcmp(a, "--seed") == 0)
            o.seed = strtoull(v, NULL, 0);
        else if (strcmp(a, "--start-at") == 0)
            o.start_at = atof(v);
        else if (strcmp(a, "--verify-ms") == 0)
            o.verify_ms = strtoull(v, NULL, 0);
        else if (strcmp(a, "--iters") == 0)
            o.iters = strtoull(v, NULL, 0);
        else if (strcmp(a, "--blocks") == 0)
            o.blocks = (unsigned)strtoul(v, NULL, 0);
        else if (strcmp(a, "--threads") == 0)
            o.threads = (unsigned)strtoul(v, NULL, 0);
        else if (strcmp(a, "--depth") == 0)
            o.depth = (unsigned)strtoul(v, NULL, 0);
        else
            usage(argv[0]);
    }
    if (!o.chunk_mib || o.chunk_mib * MIB <= TAG_BYTES || o.chunk_mib > 4096 || o.seconds < 0 || !o.blocks ||
        !o.threads || o.threads > 1024 || !o.depth)
        usage(argv[0]);

    CUdevice dev;
    CUcontext ctx;
    gv_open("mem");
    gv_setup(&dev, &ctx);
    gv_load_kernels(&k);
    int rc = strcmp(o.mode, "hold") == 0 ? hold(&o) : strcmp(o.mode, "scrub-write") == 0 ? scrub_write(&o)
                                                                                        : scrub_check(&o);
    CU(cuModuleUnload)(k.mod);
    CU(cuDevicePrimaryCtxRelease)(dev);
    (void)ctx;
    return rc;
}
