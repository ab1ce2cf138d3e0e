/*
 * gv_streams - stream ordering and stream queries.
 *
 * Both test streams are created with CU_STREAM_NON_BLOCKING, so the only
 * ordering between them is the one the test asks for with events.
 */
#include <stdio.h>
#include <stdlib.h>

#include "gv_common.h"

#define N (1u << 20) /* words per buffer */

static CUdeviceptr buf, buf2;
static uint32_t *host;

/* Checks that every word of host[] is want. */
static void check_words(const char *name, gv_st *st, uint32_t want, const char *what)
{
    if (st->rc != CUDA_SUCCESS) {
        gv_check(name, 0, "%s", gv_st_detail(st));
        return;
    }
    unsigned bad = 0, first = 0;
    for (unsigned i = 0; i < N; i++)
        if (host[i] != want && !bad++)
            first = i;
    if (bad)
        gv_check(name, 0, "%u of %u words wrong, first [%u]=0x%x, expected 0x%x", bad, N, first,
                 host[first], want);
    else
        gv_check(name, 1, "%s", what);
}

int main(void)
{
    CUdevice dev;
    CUcontext ctx;
    struct gv_kernels k;

    gv_open("streams");
    gv_setup(&dev, &ctx);
    gv_load_kernels(&k);

    CUstream s1 = NULL, s2 = NULL;
    CUevent e = NULL;
    host = malloc(N * 4);
    gv_st st = {0};
    CALL(st, CU(cuMemAlloc)(&buf, N * 4));
    CALL(st, CU(cuMemAlloc)(&buf2, N * 4));
    CALL(st, CU(cuStreamCreate)(&s1, CU_STREAM_NON_BLOCKING));
    CALL(st, CU(cuStreamCreate)(&s2, CU_STREAM_NON_BLOCKING));
    CALL(st, CU(cuEventCreate)(&e, CU_EVENT_DEFAULT));
    if (!gv_check("create", st.rc == CUDA_SUCCESS && host, "%s",
                  st.rc == CUDA_SUCCESS ? "2 buffers, 2 non-blocking streams, 1 event"
                                        : gv_st_detail(&st)))
        gv_abort();

    /* 1. s2 waits on an event recorded on s1 after a 20 ms spin and a fill;
     *    without the wait s2 would copy the zeros that were there before. */
    {
        gv_st c = {0};
        CALL(c, CU(cuMemsetD32)(buf, 0, N));
        CALL(c, CU(cuMemsetD32)(buf2, 0xFFFFFFFFu, N));
        CALL(c, CU(cuCtxSynchronize)());
        CALL(c, gv_launch_spin(&k, s1, 20000));
        CALL(c, gv_launch_fill(&k, s1, buf, 1, N));
        CALL(c, CU(cuEventRecord)(e, s1));
        CALL(c, CU(cuStreamWaitEvent)(s2, e, 0));
        CALL(c, CU(cuMemcpyDtoDAsync)(buf2, buf, N * 4, s2));
        CALL(c, CU(cuStreamSynchronize)(s2));
        CALL(c, CU(cuMemcpyDtoH)(host, buf2, N * 4));
        check_words("cross_stream_wait", &c, 1,
                    "s2 copy after cuStreamWaitEvent saw s1's fill (all 1)");
        CU(cuCtxSynchronize)();
    }

    /* 2. cuStreamQuery while a 200 ms spin runs, then after synchronize. */
    {
        gv_st c = {0};
        CALL(c, CU(cuCtxSynchronize)());
        double t0 = gv_now_us();
        CALL(c, gv_launch_spin(&k, s1, 200000));
        CUresult q = c.rc == CUDA_SUCCESS ? CU(cuStreamQuery)(s1) : c.rc;
        double tq = gv_now_us() - t0;
        if (c.rc != CUDA_SUCCESS)
            gv_check("stream_query_busy", 0, "%s", gv_st_detail(&c));
        else
            gv_check("stream_query_busy", q == CUDA_ERROR_NOT_READY, "cuStreamQuery -> %s",
                     gv_errname(q));
        gv_info("stream_query_busy: query returned %.0f us after launch", tq);

        CUresult sy = CU(cuStreamSynchronize)(s1);
        double ts = gv_now_us() - t0;
        gv_check("stream_sync", sy == CUDA_SUCCESS && ts >= 200000.0, "cuStreamSynchronize -> %s, %s",
                 gv_errname(sy), ts >= 200000.0 ? "returned after the spin" : "returned early");
        gv_info("stream_sync: returned %.1f ms after launching a 200 ms spin", ts / 1000.0);

        CUresult q2 = CU(cuStreamQuery)(s1);
        gv_check("stream_query_idle", q2 == CUDA_SUCCESS, "cuStreamQuery -> %s", gv_errname(q2));
    }

    /* 3. In-order execution within one stream: fill 1, 2, 3 after a spin. */
    {
        gv_st c = {0};
        CALL(c, CU(cuMemsetD32)(buf, 0, N));
        CALL(c, CU(cuCtxSynchronize)());
        CALL(c, gv_launch_spin(&k, s1, 20000));
        CALL(c, gv_launch_fill(&k, s1, buf, 1, N));
        CALL(c, gv_launch_fill(&k, s1, buf, 2, N));
        CALL(c, gv_launch_fill(&k, s1, buf, 3, N));
        CALL(c, CU(cuStreamSynchronize)(s1));
        CALL(c, CU(cuMemcpyDtoH)(host, buf, N * 4));
        check_words("in_order", &c, 3, "fill 1, fill 2, fill 3 on one stream -> all 3");
    }

    /* 4. Async copies and kernels in order on one stream: fill, copy, fill. */
    {
        gv_st c = {0};
        CALL(c, gv_launch_spin(&k, s2, 20000));
        CALL(c, gv_launch_fill(&k, s2, buf, 5, N));
        CALL(c, CU(cuMemcpyDtoDAsync)(buf2, buf, N * 4, s2));
        CALL(c, gv_launch_fill(&k, s2, buf, 6, N));
        CALL(c, CU(cuStreamSynchronize)(s2));
        CALL(c, CU(cuMemcpyDtoH)(host, buf2, N * 4));
        check_words("in_order_copy", &c, 5, "fill 5, copy, fill 6 on one stream -> copy holds 5");
    }

    /* 5. Legacy (NULL) stream: a synchronous copy waits for earlier kernels. */
    {
        gv_st c = {0};
        CALL(c, gv_launch_spin(&k, NULL, 20000));
        CALL(c, gv_launch_fill(&k, NULL, buf, 7, N));
        CALL(c, CU(cuMemcpyDtoH)(host, buf, N * 4));
        check_words("legacy_stream_order", &c, 7,
                    "cuMemcpyDtoH after a fill on the NULL stream sees all 7");
    }

    gv_st fst = {0};
    CALL(fst, CU(cuCtxSynchronize)());
    CALL(fst, CU(cuEventDestroy)(e));
    CALL(fst, CU(cuStreamDestroy)(s1));
    CALL(fst, CU(cuStreamDestroy)(s2));
    CALL(fst, CU(cuMemFree)(buf));
    CALL(fst, CU(cuMemFree)(buf2));
    CALL(fst, CU(cuModuleUnload)(k.mod));
    gv_check("cleanup", fst.rc == CUDA_SUCCESS, "%s",
             fst.rc == CUDA_SUCCESS ? "streams, event, memory, module released"
                                    : gv_st_detail(&fst));
    CU(cuDevicePrimaryCtxRelease)(dev);
    free(host);
    (void)ctx;
    return gv_summary();
}
