/*
 * gv_events - event timing, queries and the documented error cases of
 * cuEventElapsedTime.
 */
#include <stdio.h>
#include <stdlib.h>

#include "gv_common.h"

int main(void)
{
    CUdevice dev;
    CUcontext ctx;
    struct gv_kernels k;

    gv_open("events");
    gv_setup(&dev, &ctx);
    gv_load_kernels(&k);

    CUstream s = NULL;
    CUevent e1 = NULL, e2 = NULL, e3 = NULL, enotime = NULL, eunrec = NULL;
    gv_st st = {0};
    CALL(st, CU(cuStreamCreate)(&s, CU_STREAM_DEFAULT));
    CALL(st, CU(cuEventCreate)(&e1, CU_EVENT_DEFAULT));
    CALL(st, CU(cuEventCreate)(&e2, CU_EVENT_DEFAULT));
    CALL(st, CU(cuEventCreate)(&e3, CU_EVENT_DEFAULT));
    CALL(st, CU(cuEventCreate)(&enotime, CU_EVENT_DISABLE_TIMING));
    CALL(st, CU(cuEventCreate)(&eunrec, CU_EVENT_DEFAULT));
    if (!gv_check("create", st.rc == CUDA_SUCCESS, "%s",
                  st.rc == CUDA_SUCCESS ? "1 stream, 5 events" : gv_st_detail(&st)))
        gv_abort();

    /* 1. Elapsed time across a 50 ms spin. */
    {
        gv_st c = {0};
        float ms = -1.0f;
        CALL(c, CU(cuEventRecord)(e1, s));
        CALL(c, gv_launch_spin(&k, s, 50000));
        CALL(c, CU(cuEventRecord)(e2, s));
        CALL(c, CU(cuEventSynchronize)(e2));
        CALL(c, CU(cuEventElapsedTime)(&ms, e1, e2));
        if (c.rc != CUDA_SUCCESS) {
            gv_check("elapsed", 0, "%s", gv_st_detail(&c));
        } else {
            gv_info("elapsed: %.3f ms across gv_spin_us(50000)", (double)ms);
            gv_check("elapsed", ms >= 50.0f && ms < 500.0f, "%s",
                     (ms >= 50.0f && ms < 500.0f) ? "elapsed within bounds [50, 500) ms"
                                                  : "elapsed out of bounds [50, 500) ms");
        }
    }

    /* 2. cuEventQuery: NOT_READY behind a 200 ms spin, SUCCESS after sync;
     *    cuEventElapsedTime on an incomplete event: NOT_READY. */
    {
        gv_st c = {0};
        float ms = -1.0f;
        CALL(c, CU(cuEventRecord)(e1, s));
        double t0 = gv_now_us();
        CALL(c, gv_launch_spin(&k, s, 200000));
        CALL(c, CU(cuEventRecord)(e3, s));
        CUresult q = c.rc == CUDA_SUCCESS ? CU(cuEventQuery)(e3) : c.rc;
        CUresult el = c.rc == CUDA_SUCCESS ? CU(cuEventElapsedTime)(&ms, e1, e3) : c.rc;
        double tq = gv_now_us() - t0;
        if (c.rc != CUDA_SUCCESS) {
            gv_check("query_busy", 0, "%s", gv_st_detail(&c));
            gv_check("elapsed_not_ready", 0, "%s", gv_st_detail(&c));
        } else {
            gv_check("query_busy", q == CUDA_ERROR_NOT_READY, "cuEventQuery -> %s", gv_errname(q));
            gv_check("elapsed_not_ready", el == CUDA_ERROR_NOT_READY,
                     "cuEventElapsedTime on an incomplete event -> %s", gv_errname(el));
        }
        gv_info("query_busy: query and elapsed returned %.0f us after launch", tq);

        CUresult sy = CU(cuEventSynchronize)(e3);
        double ts = gv_now_us() - t0;
        gv_check("event_sync", sy == CUDA_SUCCESS && ts >= 200000.0, "cuEventSynchronize -> %s, %s",
                 gv_errname(sy), ts >= 200000.0 ? "returned after the spin" : "returned early");
        gv_info("event_sync: returned %.1f ms after launching a 200 ms spin", ts / 1000.0);
        CUresult q2 = CU(cuEventQuery)(e3);
        gv_check("query_done", q2 == CUDA_SUCCESS, "cuEventQuery -> %s", gv_errname(q2));
    }

    /* 3. Documented errors of cuEventElapsedTime. */
    {
        gv_st c = {0};
        float ms = -1.0f;
        CALL(c, CU(cuEventRecord)(e1, s));
        CALL(c, CU(cuEventRecord)(enotime, s));
        CALL(c, CU(cuStreamSynchronize)(s));
        CUresult r = c.rc == CUDA_SUCCESS ? CU(cuEventElapsedTime)(&ms, e1, enotime) : c.rc;
        if (c.rc != CUDA_SUCCESS)
            gv_check("elapsed_disable_timing", 0, "%s", gv_st_detail(&c));
        else
            gv_check("elapsed_disable_timing", r == CUDA_ERROR_INVALID_HANDLE,
                     "event with CU_EVENT_DISABLE_TIMING -> %s", gv_errname(r));

        CUresult r2 = CU(cuEventElapsedTime)(&ms, eunrec, e1);
        gv_check("elapsed_unrecorded", r2 == CUDA_ERROR_INVALID_HANDLE,
                 "never-recorded start event -> %s", gv_errname(r2));

        CUresult q = CU(cuEventQuery)(eunrec);
        gv_check("query_unrecorded", q == CUDA_SUCCESS, "cuEventQuery on a never-recorded event -> %s",
                 gv_errname(q));
    }

    /* 4. Events on the NULL stream time a short spin too. */
    {
        gv_st c = {0};
        float ms = -1.0f;
        CALL(c, CU(cuEventRecord)(e1, NULL));
        CALL(c, gv_launch_spin(&k, NULL, 10000));
        CALL(c, CU(cuEventRecord)(e2, NULL));
        CALL(c, CU(cuEventSynchronize)(e2));
        CALL(c, CU(cuEventElapsedTime)(&ms, e1, e2));
        if (c.rc != CUDA_SUCCESS) {
            gv_check("elapsed_null_stream", 0, "%s", gv_st_detail(&c));
        } else {
            gv_info("elapsed_null_stream: %.3f ms across gv_spin_us(10000)", (double)ms);
            gv_check("elapsed_null_stream", ms >= 10.0f && ms < 500.0f, "%s",
                     (ms >= 10.0f && ms < 500.0f) ? "elapsed within bounds [10, 500) ms"
                                                  : "elapsed out of bounds [10, 500) ms");
        }
    }

    gv_st fst = {0};
    CALL(fst, CU(cuCtxSynchronize)());
    CALL(fst, CU(cuEventDestroy)(e1));
    CALL(fst, CU(cuEventDestroy)(e2));
    CALL(fst, CU(cuEventDestroy)(e3));
    CALL(fst, CU(cuEventDestroy)(enotime));
    CALL(fst, CU(cuEventDestroy)(eunrec));
    CALL(fst, CU(cuStreamDestroy)(s));
    CALL(fst, CU(cuModuleUnload)(k.mod));
    gv_check("cleanup", fst.rc == CUDA_SUCCESS, "%s",
             fst.rc == CUDA_SUCCESS ? "events, stream, module released" : gv_st_detail(&fst));
    CU(cuDevicePrimaryCtxRelease)(dev);
    (void)ctx;
    return gv_summary();
}
