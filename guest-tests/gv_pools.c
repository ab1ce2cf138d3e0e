/*
 * gv_pools - stream-ordered allocation (cuMemAllocAsync, memory pools) and
 * the virtual-memory API (cuMemCreate, cuMemMap), natively or on gpuvisor.
 *
 *   gv_pools
 *       The checks: attributes, reuse in stream order, reuse across streams
 *       after the free, the release threshold and trimming, a segment of
 *       mapped allocations used by memsets and a kernel across their seam.
 *   gv_pools scrub-write [--leak]
 *       Takes nearly all the memory cuMemGetInfo says is free in 8 MiB
 *       chunks, half from the default pool and half as mapped physical
 *       allocations, fills it with a marker word and gives it back (with
 *       --leak: exits holding it).
 *   gv_pools scrub-check
 *       Takes what it can the same two ways and counts marker words in it:
 *       memory another process gave back must come back zeroed.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gv_common.h"

#define MIB (1ull << 20)
#define CHUNK (8 * MIB)
#define MARKER 0x5CA1AB1Eu

static struct gv_kernels k;

static CUmemAllocationProp device_prop(void)
{
    CUmemAllocationProp p;
    memset(&p, 0, sizeof p);
    p.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    p.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    p.location.id = 0;
    return p;
}

static unsigned long long pool_attr(CUmemoryPool pool, int attr)
{
    unsigned long long v = ~0ull;
    if (CU(cuMemPoolGetAttribute)(pool, attr, &v) != CUDA_SUCCESS)
        return ~0ull;
    return v;
}

/* Words of [p, p + bytes) that differ from `want`, or -1 on an error. */
static long long differing(CUdeviceptr p, size_t bytes, unsigned want, unsigned *buf)
{
    if (CU(cuMemcpyDtoH)(buf, p, bytes) != CUDA_SUCCESS)
        return -1;
    long long n = 0;
    for (size_t i = 0; i < bytes / 4; i++)
        n += buf[i] != want;
    return n;
}

static int checks(void)
{
    unsigned *buf = malloc(CHUNK);
    if (!buf)
        return 1;
    int pools = -1, vmm = -1;
    CU(cuDeviceGetAttribute)(&pools, CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED, 0);
    CU(cuDeviceGetAttribute)(&vmm, CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED, 0);
    gv_check("attributes", pools == 1 && vmm == 1, "MEMORY_POOLS_SUPPORTED=%d VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED=%d",
             pools, vmm);

    CUstream s1 = NULL, s2 = NULL;
    CUmemoryPool pool = NULL;
    gv_st st = {0};
    CALL(st, CU(cuStreamCreate)(&s1, CU_STREAM_NON_BLOCKING));
    CALL(st, CU(cuStreamCreate)(&s2, CU_STREAM_NON_BLOCKING));
    CALL(st, CU(cuDeviceGetDefaultMemPool)(&pool, 0));
    if (!gv_check("setup_streams", st.rc == CUDA_SUCCESS, "%s", st.rc ? gv_st_detail(&st) : "2 streams, default pool"))
        gv_abort();

    /* Allocated, used and freed on one stream; allocated again there. */
    {
        gv_st c = {0};
        CUdeviceptr a = 0, b = 0;
        CALL(c, CU(cuMemAllocAsync)(&a, MIB, s1));
        CALL(c, CU(cuMemsetD32Async)(a, 0x11111111u, MIB / 4, s1));
        CALL(c, CU(cuMemFreeAsync)(a, s1));
        CALL(c, CU(cuMemAllocAsync)(&b, MIB, s1));
        CALL(c, CU(cuMemsetD32Async)(b + MIB / 2, 0x22222222u, MIB / 8, s1));
        CALL(c, CU(cuStreamSynchronize)(s1));
        long long wrong = c.rc ? -1 : differing(b + MIB / 2, MIB / 2, 0x22222222u, buf);
        CALL(c, CU(cuMemFreeAsync)(b, s1));
        gv_info("async_reuse: the second allocation %s the first's memory", a == b ? "got" : "did not get");
        gv_check("async_reuse", c.rc == CUDA_SUCCESS && wrong == 0, "%s",
                 c.rc ? gv_st_detail(&c) : wrong ? "wrong data" : "alloc, memset, free, alloc, memset in stream order");
    }

    /* Freed on s1 behind a 50 ms kernel and a memset; allocated on idle s2
     * and written there: what s2 wrote must be what stays. */
    {
        gv_st c = {0};
        CUdeviceptr a = 0, b = 0;
        CALL(c, CU(cuMemAllocAsync)(&a, MIB, s1));
        CALL(c, gv_launch_spin(&k, s1, 50000));
        CALL(c, CU(cuMemsetD32Async)(a, 1, MIB / 4, s1));
        CALL(c, CU(cuMemFreeAsync)(a, s1));
        CALL(c, CU(cuMemAllocAsync)(&b, MIB, s2));
        CALL(c, CU(cuMemsetD32Async)(b, 2, MIB / 4, s2));
        CALL(c, CU(cuStreamSynchronize)(s2));
        CALL(c, CU(cuStreamSynchronize)(s1));
        long long wrong = c.rc ? -1 : differing(b, MIB, 2, buf);
        CALL(c, CU(cuMemFreeAsync)(b, s2));
        CALL(c, CU(cuStreamSynchronize)(s2));
        gv_info("cross_stream: the allocation on s2 %s the memory freed on s1", a == b ? "reused" : "did not reuse");
        gv_check("cross_stream", c.rc == CUDA_SUCCESS && wrong == 0, "%s",
                 c.rc ? gv_st_detail(&c) : wrong ? "s1's late write landed in s2's allocation" : "reuse after the free");
    }

    /* Threshold 0: given back at the synchronization; the maximum: kept
     * until trimmed. */
    {
        gv_st c = {0};
        CUdeviceptr a = 0;
        unsigned long long zero = 0, max = ~0ull;
        CALL(c, CU(cuMemPoolSetAttribute)(pool, CU_MEMPOOL_ATTR_RELEASE_THRESHOLD, &zero));
        CALL(c, CU(cuMemAllocAsync)(&a, CHUNK, s1));
        unsigned long long used = pool_attr(pool, CU_MEMPOOL_ATTR_USED_MEM_CURRENT);
        CALL(c, CU(cuMemFreeAsync)(a, s1));
        CALL(c, CU(cuStreamSynchronize)(s1));
        unsigned long long released = pool_attr(pool, CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT);
        CALL(c, CU(cuMemPoolSetAttribute)(pool, CU_MEMPOOL_ATTR_RELEASE_THRESHOLD, &max));
        CALL(c, CU(cuMemAllocAsync)(&a, CHUNK, s1));
        CALL(c, CU(cuMemFreeAsync)(a, s1));
        CALL(c, CU(cuStreamSynchronize)(s1));
        unsigned long long kept = pool_attr(pool, CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT);
        CALL(c, CU(cuMemPoolTrimTo)(pool, 0));
        unsigned long long trimmed = pool_attr(pool, CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT);
        CALL(c, CU(cuMemPoolSetAttribute)(pool, CU_MEMPOOL_ATTR_RELEASE_THRESHOLD, &zero));
        gv_info("release_threshold: used %llu, reserved %llu after a sync at 0, %llu at the maximum, %llu trimmed", used,
                released, kept, trimmed);
        gv_check("release_threshold",
                 c.rc == CUDA_SUCCESS && used == CHUNK && released == 0 && kept >= CHUNK && trimmed == 0, "%s",
                 c.rc ? gv_st_detail(&c) : "released at a sync at 0, kept at the maximum until trimmed");
    }

    /* A segment that grows: two physical allocations mapped back to back,
     * one memset over both and a kernel across their seam. */
    {
        gv_st c = {0};
        CUmemAllocationProp prop = device_prop();
        size_t g = 0;
        CUdeviceptr va = 0;
        CUmemGenericAllocationHandle h[2] = {0, 0};
        CALL(c, CU(cuMemGetAllocationGranularity)(&g, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM));
        CALL(c, CU(cuMemAddressReserve)(&va, 4 * g, 0, 0, 0));
        for (int i = 0; i < 2; i++) {
            CALL(c, CU(cuMemCreate)(&h[i], g, &prop, 0));
            CALL(c, CU(cuMemMap)(va + i * g, g, 0, h[i], 0));
        }
        CUmemAccessDesc rw = {{CU_MEM_LOCATION_TYPE_DEVICE, 0}, CU_MEM_ACCESS_FLAGS_PROT_READWRITE};
        CALL(c, CU(cuMemSetAccess)(va, 2 * g, &rw, 1));
        CALL(c, CU(cuMemsetD32)(va, 0x33333333u, 2 * g / 4));
        CALL(c, gv_launch_fill(&k, NULL, va + g - 256, 0x44444444u, 128));
        CALL(c, CU(cuCtxSynchronize)());
        long long wrong = -1;
        if (c.rc == CUDA_SUCCESS && CU(cuMemcpyDtoH)(buf, va + g - 1024, 2048) == CUDA_SUCCESS) {
            wrong = 0;
            for (int i = 0; i < 512; i++)
                wrong += buf[i] != (i < 192 || i >= 320 ? 0x33333333u : 0x44444444u);
        }
        CALL(c, CU(cuMemUnmap)(va, 2 * g));
        for (int i = 0; i < 2; i++)
            CALL(c, CU(cuMemRelease)(h[i]));
        CALL(c, CU(cuMemAddressFree)(va, 4 * g));
        gv_info("vmm_segment: granularity %zu bytes", g);
        gv_check("vmm_segment", c.rc == CUDA_SUCCESS && wrong == 0, "%s",
                 c.rc ? gv_st_detail(&c) : wrong ? "wrong data across the seam" : "memset and kernel across the seam");
    }
    free(buf);
    return gv_summary();
}

/* The memory of one run of the scrub modes. */
struct held {
    CUdeviceptr pool[4096];
    size_t npool;
    CUdeviceptr va;
    size_t va_len;
    CUmemGenericAllocationHandle phys[4096];
    size_t nphys;
};

/* Takes up to `pool_bytes` from the default pool and then, up to `total`
 * in all (0: until out of memory), mapped physical allocations. */
static void take(struct held *m, unsigned long long pool_bytes, unsigned long long total)
{
    memset(m, 0, sizeof *m);
    for (unsigned long long got = 0; got + CHUNK <= pool_bytes && m->npool < 4096; got += CHUNK) {
        if (CU(cuMemAllocAsync)(&m->pool[m->npool], CHUNK, NULL) != CUDA_SUCCESS)
            break;
        m->npool++;
    }
    CUmemAllocationProp prop = device_prop();
    m->va_len = 4096 * CHUNK;
    if (CU(cuMemAddressReserve)(&m->va, m->va_len, 0, 0, 0) != CUDA_SUCCESS) {
        m->va_len = 0;
        return;
    }
    CUmemAccessDesc rw = {{CU_MEM_LOCATION_TYPE_DEVICE, 0}, CU_MEM_ACCESS_FLAGS_PROT_READWRITE};
    for (unsigned long long got = m->npool * CHUNK; m->nphys < 4096 && (!total || got + CHUNK <= total); got += CHUNK) {
        CUdeviceptr at = m->va + m->nphys * CHUNK;
        if (CU(cuMemCreate)(&m->phys[m->nphys], CHUNK, &prop, 0) != CUDA_SUCCESS)
            break;
        if (CU(cuMemMap)(at, CHUNK, 0, m->phys[m->nphys], 0) != CUDA_SUCCESS ||
            CU(cuMemSetAccess)(at, CHUNK, &rw, 1) != CUDA_SUCCESS) {
            CU(cuMemRelease)(m->phys[m->nphys]);
            break;
        }
        m->nphys++;
    }
}

static CUdeviceptr chunk_at(const struct held *m, size_t i)
{
    return i < m->npool ? m->pool[i] : m->va + (i - m->npool) * CHUNK;
}

static void give_back(struct held *m)
{
    for (size_t i = 0; i < m->npool; i++)
        CU(cuMemFreeAsync)(m->pool[i], NULL);
    CU(cuCtxSynchronize)();
    CUmemoryPool pool = NULL;
    if (CU(cuDeviceGetDefaultMemPool)(&pool, 0) == CUDA_SUCCESS)
        CU(cuMemPoolTrimTo)(pool, 0);
    for (size_t i = 0; i < m->nphys; i++) {
        CU(cuMemUnmap)(m->va + i * CHUNK, CHUNK);
        CU(cuMemRelease)(m->phys[i]);
    }
    if (m->va_len)
        CU(cuMemAddressFree)(m->va, m->va_len);
}

static int scrub(int write, int leak)
{
    static struct held m;
    size_t free_b = 0, total_b = 0;
    if (CU(cuMemGetInfo)(&free_b, &total_b) != CUDA_SUCCESS)
        gv_abort();
    unsigned long long want = free_b - free_b / 16;
    take(&m, want / 2, write ? want : 0);
    size_t n = m.npool + m.nphys;
    if (write) {
        gv_st c = {0};
        for (size_t i = 0; i < n; i++)
            CALL(c, CU(cuMemsetD32)(chunk_at(&m, i), MARKER, CHUNK / 4));
        CALL(c, CU(cuCtxSynchronize)());
        gv_info("scrub_write: %zu MiB from the pool, %zu MiB mapped, %s", m.npool * 8, m.nphys * 8,
                leak ? "left allocated at exit" : "given back");
        if (!leak)
            give_back(&m);
        gv_check("scrub_write", c.rc == CUDA_SUCCESS && m.npool > 0 && m.nphys > 0, "%s",
                 c.rc ? gv_st_detail(&c) : "filled with the marker");
        return gv_summary();
    }
    unsigned *buf = malloc(CHUNK);
    if (!buf)
        return 1;
    long long markers = 0;
    int failed = 0;
    for (size_t i = 0; i < n; i++) {
        if (CU(cuMemcpyDtoH)(buf, chunk_at(&m, i), CHUNK) != CUDA_SUCCESS) {
            failed = 1;
            break;
        }
        for (size_t w = 0; w < CHUNK / 4; w++)
            markers += buf[w] == MARKER;
    }
    gv_info("scrub_check: %zu MiB from the pool, %zu MiB mapped, %lld marker words", m.npool * 8, m.nphys * 8, markers);
    give_back(&m);
    free(buf);
    gv_check("scrub_check", !failed && markers == 0 && m.npool > 0 && m.nphys > 0, "%s",
             failed ? "a copy failed" : markers ? "another process's data" : "no marker in memory given back");
    return gv_summary();
}

int main(int argc, char **argv)
{
    CUdevice dev;
    CUcontext ctx;
    gv_open("pools");
    gv_setup(&dev, &ctx);
    gv_load_kernels(&k);
    if (argc >= 2 && !strcmp(argv[1], "scrub-write"))
        return scrub(1, argc >= 3 && !strcmp(argv[2], "--leak"));
    if (argc >= 2 && !strcmp(argv[1], "scrub-check"))
        return scrub(0, 0);
    if (argc >= 2) {
        fprintf(stderr, "usage: %s [scrub-write [--leak] | scrub-check]\n", argv[0]);
        return 2;
    }
    return checks();
}
