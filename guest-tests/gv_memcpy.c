/*
 * gv_memcpy - copies and memsets.
 *
 * Round trips host -> device -> device -> host of a deterministic pattern
 * (64 MiB; GV_MEMCPY_MIB=<n> changes it) from pageable, pinned
 * (cuMemAllocHost) and registered (cuMemHostRegister) memory, synchronous and
 * asynchronous; cuMemsetD32/D8; small and unaligned copies;
 * cuMemGetAddressRange on interior pointers.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gv_common.h"

static size_t bytes;
static CUdeviceptr d1, d2;
static CUstream stream;

enum hostmem { PAGEABLE, PINNED, REGISTERED };

static void *host_alloc(enum hostmem kind, gv_st *st)
{
    void *p = NULL;
    if (kind == PINNED) {
        CALL(*st, CU(cuMemAllocHost)(&p, bytes));
        return st->rc == CUDA_SUCCESS ? p : NULL;
    }
    if (posix_memalign(&p, 4096, bytes) != 0)
        return NULL;
    if (kind == REGISTERED && !CALL(*st, CU(cuMemHostRegister)(p, bytes, 0))) {
        free(p);
        return NULL;
    }
    return p;
}

static void host_free(enum hostmem kind, void *p)
{
    if (!p)
        return;
    if (kind == PINNED) {
        CU(cuMemFreeHost)(p);
        return;
    }
    if (kind == REGISTERED)
        CU(cuMemHostUnregister)(p);
    free(p);
}

static void roundtrip(const char *name, enum hostmem kind, int async, uint64_t seed)
{
    gv_st st = {0};
    void *src = host_alloc(kind, &st);
    void *dst = src ? host_alloc(kind, &st) : NULL;
    if (!src || !dst) {
        gv_check(name, 0, "host allocation failed: %s", gv_st_detail(&st));
        host_free(kind, src);
        return;
    }
    gv_pattern(src, bytes, seed);
    memset(dst, 0, bytes);
    CALL(st, CU(cuMemsetD8)(d1, 0, bytes));
    CALL(st, CU(cuMemsetD8)(d2, 0, bytes));
    CALL(st, CU(cuCtxSynchronize)()); /* memsets run on the legacy stream */
    double t0 = gv_now_us();
    if (!async) {
        CALL(st, CU(cuMemcpyHtoD)(d1, src, bytes));
        CALL(st, CU(cuMemcpyDtoD)(d2, d1, bytes));
        CALL(st, CU(cuMemcpyDtoH)(dst, d2, bytes));
    } else {
        CALL(st, CU(cuMemcpyHtoDAsync)(d1, src, bytes, stream));
        CALL(st, CU(cuMemcpyDtoDAsync)(d2, d1, bytes, stream));
        CALL(st, CU(cuMemcpyDtoHAsync)(dst, d2, bytes, stream));
        CALL(st, CU(cuStreamSynchronize)(stream));
    }
    double dt = gv_now_us() - t0;
    if (st.rc != CUDA_SUCCESS) {
        gv_check(name, 0, "%s", gv_st_detail(&st));
    } else if (memcmp(src, dst, bytes) != 0) {
        size_t i = 0;
        while (((unsigned char *)src)[i] == ((unsigned char *)dst)[i])
            i++;
        gv_check(name, 0, "data differs, first at byte %zu", i);
    } else {
        gv_info("%s: 3 copies of %zu MiB in %.1f ms", name, bytes >> 20, dt / 1000.0);
        gv_check(name, 1, "%zu MiB seed=%llu fnv=%016llx", bytes >> 20,
                 (unsigned long long)seed, (unsigned long long)gv_fnv1a64(dst, bytes));
    }
    host_free(kind, src);
    host_free(kind, dst);
}

static void check_memset_d32(void)
{
    const size_t words = 1u << 18; /* check the first 1 MiB */
    uint32_t *h = malloc(words * 4);
    gv_st st = {0};
    if (!h) {
        gv_check("memset_d32", 0, "host malloc failed");
        return;
    }
    CALL(st, CU(cuMemsetD32)(d1, 0xA5A5F00Du, bytes / 4));
    CALL(st, CU(cuMemsetD32)(d1 + 4096, 0x01020304u, 1000));
    CALL(st, CU(cuMemcpyDtoH)(h, d1, words * 4));
    uint32_t last = 0;
    CALL(st, CU(cuMemcpyDtoH)(&last, d1 + bytes - 4, 4));
    if (st.rc != CUDA_SUCCESS) {
        gv_check("memset_d32", 0, "%s", gv_st_detail(&st));
        free(h);
        return;
    }
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < words; i++) {
        uint32_t want = (i >= 1024 && i < 2024) ? 0x01020304u : 0xA5A5F00Du;
        if (h[i] != want && !bad++)
            first = i;
    }
    if (last != 0xA5A5F00Du && !bad++)
        first = bytes / 4 - 1;
    if (bad)
        gv_check("memset_d32", 0, "%zu words wrong, first word %zu", bad, first);
    else
        gv_check("memset_d32", 1, "whole allocation + 1000-word range at +4096, fnv=%016llx",
                 (unsigned long long)gv_fnv1a64(h, words * 4));
    free(h);
}

static void check_memset_d8(void)
{
    unsigned char h[4096];
    gv_st st = {0};
    CALL(st, CU(cuMemsetD8)(d2, 0x00, 1u << 20));
    CALL(st, CU(cuMemsetD8)(d2 + 3, 0x5C, 1001));
    CALL(st, CU(cuMemcpyDtoH)(h, d2, sizeof h));
    if (st.rc != CUDA_SUCCESS) {
        gv_check("memset_d8", 0, "%s", gv_st_detail(&st));
        return;
    }
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < sizeof h; i++) {
        unsigned char want = (i >= 3 && i < 1004) ? 0x5C : 0x00;
        if (h[i] != want && !bad++)
            first = i;
    }
    if (bad)
        gv_check("memset_d8", 0, "%zu bytes wrong, first byte %zu = 0x%02x", bad, first, h[first]);
    else
        gv_check("memset_d8", 1, "1001 bytes of 0x5c at +3, neighbours zero");
}

static void check_small(void)
{
    unsigned char h[16];
    gv_st st = {0};

    /* 4 bytes at offset 4 */
    uint32_t v = 0xCAFEBABEu, back = 0;
    CALL(st, CU(cuMemsetD8)(d1, 0, 64));
    CALL(st, CU(cuMemcpyHtoD)(d1 + 4, &v, 4));
    CALL(st, CU(cuMemcpyDtoH)(&back, d1 + 4, 4));
    CALL(st, CU(cuMemcpyDtoH)(h, d1, 16));
    int ok = st.rc == CUDA_SUCCESS && back == v;
    for (int i = 0; i < 16; i++)
        if (i < 4 || i >= 8)
            ok = ok && h[i] == 0;
    gv_check("small_copy_4", ok, "%s",
             st.rc != CUDA_SUCCESS ? gv_st_detail(&st)
             : ok                  ? "4 bytes at +4 read back 0xcafebabe, neighbours zero"
                                   : "wrong data");

    /* 1 byte at offset 7 */
    gv_st st1 = {0};
    unsigned char b = 0xAB, bb = 0;
    CALL(st1, CU(cuMemsetD8)(d1, 0x11, 64));
    CALL(st1, CU(cuMemcpyHtoD)(d1 + 7, &b, 1));
    CALL(st1, CU(cuMemcpyDtoH)(&bb, d1 + 7, 1));
    CALL(st1, CU(cuMemcpyDtoH)(h, d1, 16));
    ok = st1.rc == CUDA_SUCCESS && bb == 0xAB;
    for (int i = 0; i < 16; i++)
        ok = ok && h[i] == (i == 7 ? 0xAB : 0x11);
    gv_check("small_copy_1", ok, "%s",
             st1.rc != CUDA_SUCCESS ? gv_st_detail(&st1)
             : ok                   ? "1 byte at +7 read back 0xab, neighbours 0x11"
                                    : "wrong data");

    /* unaligned: host+3 -> d1+13 -> d2+1001 -> host+5, 1000 bytes */
    gv_st st2 = {0};
    unsigned char src[1024], dst[1024], around[2048];
    gv_pattern(src, sizeof src, 77);
    memset(dst, 0, sizeof dst);
    CALL(st2, CU(cuMemsetD8)(d2, 0xEE, 4096));
    CALL(st2, CU(cuMemcpyHtoD)(d1 + 13, src + 3, 1000));
    CALL(st2, CU(cuMemcpyDtoD)(d2 + 1001, d1 + 13, 1000));
    CALL(st2, CU(cuMemcpyDtoH)(dst + 5, d2 + 1001, 1000));
    CALL(st2, CU(cuMemcpyDtoH)(around, d2, sizeof around));
    ok = st2.rc == CUDA_SUCCESS && memcmp(src + 3, dst + 5, 1000) == 0;
    for (size_t i = 0; i < sizeof around; i++)
        if (i < 1001 || i >= 2001)
            ok = ok && around[i] == 0xEE;
    gv_check("unaligned_copy", ok, "%s",
             st2.rc != CUDA_SUCCESS ? gv_st_detail(&st2)
             : ok ? "1000 bytes host+3 -> dev+13 -> dev+1001 -> host+5 intact, neighbours intact"
                  : "wrong data");
}

static void check_address_range(void)
{
    gv_st st = {0};
    CUdeviceptr base = 0, base2 = 0;
    size_t size = 0, size2 = 0;
    CALL(st, CU(cuMemGetAddressRange)(&base, &size, d1 + 12345));
    CALL(st, CU(cuMemGetAddressRange)(&base2, &size2, d2 + bytes - 1));
    int ok = st.rc == CUDA_SUCCESS && base == d1 && size == bytes && base2 == d2 && size2 == bytes;
    if (st.rc != CUDA_SUCCESS)
        gv_check("address_range", 0, "%s", gv_st_detail(&st));
    else
        gv_check("address_range", ok, "interior pointers -> %s, size %zu",
                 (base == d1 && base2 == d2) ? "allocation base" : "wrong base", size);
}

int main(void)
{
    CUdevice dev;
    CUcontext ctx;

    gv_open("memcpy");
    gv_setup(&dev, &ctx);
    bytes = (size_t)gv_env_u64("GV_MEMCPY_MIB", 64) << 20;
    if (bytes < (4u << 20))
        bytes = 4u << 20;

    gv_st st = {0};
    CALL(st, CU(cuMemAlloc)(&d1, bytes));
    CALL(st, CU(cuMemAlloc)(&d2, bytes));
    CALL(st, CU(cuStreamCreate)(&stream, CU_STREAM_DEFAULT));
    if (!gv_check("alloc", st.rc == CUDA_SUCCESS, "%s",
                  st.rc == CUDA_SUCCESS ? "2 device buffers + 1 stream" : gv_st_detail(&st)))
        gv_abort();

    roundtrip("roundtrip_pageable", PAGEABLE, 0, 1);
    roundtrip("roundtrip_pinned", PINNED, 0, 2);
    roundtrip("roundtrip_async_pinned", PINNED, 1, 3);
    roundtrip("roundtrip_async_pageable", PAGEABLE, 1, 4);
    roundtrip("roundtrip_registered", REGISTERED, 1, 5);
    check_memset_d32();
    check_memset_d8();
    check_small();
    check_address_range();

    gv_st fst = {0};
    CALL(fst, CU(cuStreamDestroy)(stream));
    CALL(fst, CU(cuMemFree)(d1));
    CALL(fst, CU(cuMemFree)(d2));
    CALL(fst, CU(cuCtxSynchronize)());
    gv_check("cleanup", fst.rc == CUDA_SUCCESS, "%s",
             fst.rc == CUDA_SUCCESS ? "stream destroyed, memory freed" : gv_st_detail(&fst));
    CU(cuDevicePrimaryCtxRelease)(dev);
    (void)ctx;
    return gv_summary();
}
