/*
 * gv_graphs - stream capture and CUDA graphs, as CUDA graph users (PyTorch's
 * CUDAGraph) drive them: a capture that forks into a second stream and
 * joins back, with kernels, copies and a memset, instantiated once and
 * launched a hundred times; a graph built node by node and updated in its
 * instantiated form; the errors that invalid captures get; occupancy
 * answers that agree with each other; peer queries of a single device.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gv_common.h"

#define N 4096u /* floats per buffer */

static struct gv_kernels k;
static CUcontext ctx;

/* Reads n floats at p and counts those that are not want. */
static unsigned bad_floats(CUdeviceptr p, float want, gv_st *st)
{
    static float host[N];
    CALL(*st, CU(cuMemcpyDtoH)(host, p, N * 4));
    unsigned bad = 0;
    for (unsigned i = 0; i < N && st->rc == CUDA_SUCCESS; i++)
        bad += host[i] != want;
    return bad;
}

static unsigned bits(float f)
{
    unsigned u;
    memcpy(&u, &f, 4);
    return u;
}

static int capture_status(CUstream s)
{
    int status = -1;
    CUresult rc = CU(cuStreamIsCapturing)(s, &status);
    return rc == CUDA_SUCCESS ? status : -(int)rc;
}

/* Counts a graph's nodes, edges and root nodes. */
static void shape(CUgraph g, size_t *nodes, size_t *edges, size_t *roots)
{
    *nodes = *edges = *roots = 0;
    CU(cuGraphGetNodes)(g, NULL, nodes);
    CU(cuGraphGetEdges)(g, NULL, NULL, edges);
    CU(cuGraphGetRootNodes)(g, NULL, roots);
}

static void capture_and_replay(void)
{
    CUdeviceptr a = 0, b = 0, c = 0, d = 0, acc = 0, out = 0;
    float *src = NULL, *dst = NULL;
    CUstream s1 = NULL, s2 = NULL;
    CUevent e1 = NULL, e2 = NULL;
    CUgraph g = NULL;
    CUgraphExec exec = NULL;
    gv_st st = {0};
    CALL(st, CU(cuMemAlloc)(&a, N * 4));
    CALL(st, CU(cuMemAlloc)(&b, N * 4));
    CALL(st, CU(cuMemAlloc)(&c, N * 4));
    CALL(st, CU(cuMemAlloc)(&d, N * 4));
    CALL(st, CU(cuMemAlloc)(&acc, N * 4));
    CALL(st, CU(cuMemAlloc)(&out, N * 4));
    CALL(st, CU(cuMemAllocHost)((void **)&src, N * 4));
    CALL(st, CU(cuMemAllocHost)((void **)&dst, N * 4));
    CALL(st, CU(cuMemsetD32)(acc, 0, N));
    CALL(st, CU(cuMemsetD32)(out, 0, N));
    CALL(st, CU(cuStreamCreate)(&s1, CU_STREAM_NON_BLOCKING));
    CALL(st, CU(cuStreamCreate)(&s2, CU_STREAM_NON_BLOCKING));
    CALL(st, CU(cuEventCreate)(&e1, CU_EVENT_DISABLE_TIMING));
    CALL(st, CU(cuEventCreate)(&e2, CU_EVENT_DISABLE_TIMING));
    if (!gv_check("buffers", st.rc == CUDA_SUCCESS, "%s", st.rc ? gv_st_detail(&st) : "6 buffers, 2 pinned, 2 streams"))
        gv_abort();
    for (unsigned i = 0; i < N; i++)
        src[i] = 1.0f;

    /* s1: a = 1.0; fork to s2: b = 2.0; s1: c = src; join; d = a + b;
     * acc += c; out = d; dst = out. */
    unsigned long long id1 = 0, id2 = 0;
    int status1 = -1, status2 = -1;
    float one = 1.0f;
    unsigned long long n = N;
    void *add_args[] = {&a, &b, &d, &n};
    void *saxpy_args[] = {&one, &c, &acc, &n};
    CALL(st, CU(cuStreamBeginCapture)(s1, CU_STREAM_CAPTURE_MODE_GLOBAL));
    CALL(st, CU(cuMemsetD32Async)(a, bits(1.0f), N, s1));
    CALL(st, CU(cuEventRecord)(e1, s1));
    CALL(st, CU(cuStreamWaitEvent)(s2, e1, 0));
    CALL(st, gv_launch_fill(&k, s2, b, bits(2.0f), N));
    CALL(st, CU(cuMemcpyHtoDAsync)(c, src, N * 4, s1));
    CALL(st, CU(cuStreamGetCaptureInfo)(s1, &status1, &id1, NULL, NULL, NULL));
    CALL(st, CU(cuStreamGetCaptureInfo)(s2, &status2, &id2, NULL, NULL, NULL));
    CALL(st, CU(cuEventRecord)(e2, s2));
    CALL(st, CU(cuStreamWaitEvent)(s1, e2, 0));
    CALL(st, CU(cuLaunchKernel)(k.vector_add_f32, 16, 1, 1, 256, 1, 1, 0, s1, add_args, NULL));
    CALL(st, CU(cuLaunchKernel)(k.saxpy_f32, 16, 1, 1, 256, 1, 1, 0, s1, saxpy_args, NULL));
    CALL(st, CU(cuMemcpyDtoDAsync)(out, d, N * 4, s1));
    CALL(st, CU(cuMemcpyDtoHAsync)(dst, out, N * 4, s1));
    CALL(st, CU(cuStreamEndCapture)(s1, &g));
    size_t nodes, edges, roots;
    shape(g, &nodes, &edges, &roots);
    gv_check("capture.fork_join",
             st.rc == CUDA_SUCCESS && status1 == CU_STREAM_CAPTURE_STATUS_ACTIVE && status2 == status1 && id1 == id2 &&
                 id1 != 0 && nodes == 7 && edges == 7 && roots == 1 && capture_status(s2) == 0,
             "%s: 7 nodes, 7 edges, 1 root, the forked stream in the same capture and out of it after the end",
             st.rc ? gv_st_detail(&st) : "captured");
    if (st.rc == CUDA_SUCCESS)
        gv_info("captured %zu nodes, %zu edges, %zu roots", nodes, edges, roots);

    unsigned untouched = bad_floats(acc, 0.0f, &st) + bad_floats(out, 0.0f, &st);
    gv_check("capture.nothing_ran", st.rc == CUDA_SUCCESS && untouched == 0, "%s",
             st.rc ? gv_st_detail(&st) : (untouched ? "captured work ran" : "captured work did not run"));

    CALL(st, CU(cuGraphInstantiate)(&exec, g, 0));
    CALL(st, CU(cuGraphUpload)(exec, s1));
    for (int i = 0; i < 100; i++)
        CALL(st, CU(cuGraphLaunch)(exec, s1));
    CALL(st, CU(cuStreamSynchronize)(s1));
    unsigned bad = bad_floats(acc, 100.0f, &st);
    unsigned bad_dst = 0;
    for (unsigned i = 0; i < N; i++)
        bad_dst += dst[i] != 3.0f;
    gv_check("graph.launch_100", st.rc == CUDA_SUCCESS && bad == 0 && bad_dst == 0, "%s",
             st.rc ? gv_st_detail(&st)
                   : (bad || bad_dst ? "wrong results" : "acc = 100 after 100 launches, host copy of a + b = 3"));

    /* The graph copies from host memory at each launch, not at capture. */
    for (unsigned i = 0; i < N; i++)
        src[i] = 2.0f;
    CALL(st, CU(cuGraphLaunch)(exec, s1));
    CALL(st, CU(cuStreamSynchronize)(s1));
    bad = bad_floats(acc, 102.0f, &st);
    gv_check("graph.reads_host_at_launch", st.rc == CUDA_SUCCESS && bad == 0, "%s",
             st.rc ? gv_st_detail(&st) : (bad ? "stale host data" : "acc = 102 after the source became 2"));

    CU(cuGraphExecDestroy)(exec);
    CU(cuGraphDestroy)(g);
    CU(cuStreamDestroy)(s1);
    CU(cuStreamDestroy)(s2);
    CU(cuEventDestroy)(e1);
    CU(cuEventDestroy)(e2);
    CU(cuMemFreeHost)(src);
    CU(cuMemFreeHost)(dst);
    CUdeviceptr all[] = {a, b, c, d, acc, out};
    for (int i = 0; i < 6; i++)
        CU(cuMemFree)(all[i]);
}

static CUDA_KERNEL_NODE_PARAMS fill_params(void **args)
{
    CUDA_KERNEL_NODE_PARAMS p;
    memset(&p, 0, sizeof p);
    p.func = k.fill_u32;
    p.gridDimX = 4;
    p.gridDimY = p.gridDimZ = 1;
    p.blockDimX = 256;
    p.blockDimY = p.blockDimZ = 1;
    p.kernelParams = args;
    return p;
}

static unsigned bad_words(CUdeviceptr p, unsigned want, gv_st *st)
{
    static unsigned host[N];
    CALL(*st, CU(cuMemcpyDtoH)(host, p, N * 4));
    unsigned bad = 0;
    for (unsigned i = 0; i < N && st->rc == CUDA_SUCCESS; i++)
        bad += host[i] != want;
    return bad;
}

static void manual_graph(void)
{
    gv_st st = {0};
    CUdeviceptr p = 0;
    CUgraph g = NULL, clone = NULL;
    CUgraphNode memset_node = NULL, kernel_node = NULL, cloned = NULL, extra = NULL;
    CUgraphExec exec = NULL;
    CUstream s = NULL;
    CALL(st, CU(cuMemAlloc)(&p, N * 4));
    CALL(st, CU(cuStreamCreate)(&s, CU_STREAM_NON_BLOCKING));
    CALL(st, CU(cuGraphCreate)(&g, 0));
    CUDA_MEMSET_NODE_PARAMS ms = {p, N * 4, 0, 4, N, 1};
    CALL(st, CU(cuGraphAddMemsetNode)(&memset_node, g, NULL, 0, &ms, ctx));
    unsigned value = 7;
    unsigned long long n = N;
    void *args[] = {&p, &value, &n};
    CUDA_KERNEL_NODE_PARAMS kp = fill_params(args);
    CALL(st, CU(cuGraphAddKernelNode)(&kernel_node, g, &memset_node, 1, &kp));
    size_t nodes, edges, roots;
    shape(g, &nodes, &edges, &roots);
    int type = -1;
    CALL(st, CU(cuGraphNodeGetType)(kernel_node, &type));
    CUDA_KERNEL_NODE_PARAMS got;
    memset(&got, 0, sizeof got);
    CALL(st, CU(cuGraphKernelNodeGetParams)(kernel_node, &got));
    unsigned got_value = got.kernelParams ? *(unsigned *)got.kernelParams[1] : 0;
    gv_check("graph.build", st.rc == CUDA_SUCCESS && nodes == 2 && edges == 1 && roots == 1 &&
                                type == CU_GRAPH_NODE_TYPE_KERNEL && got.func == k.fill_u32 && got.gridDimX == 4 &&
                                got_value == 7,
             "%s", st.rc ? gv_st_detail(&st) : "2 nodes, 1 edge, the kernel node's parameters read back");

    CALL(st, CU(cuGraphInstantiate)(&exec, g, 0));
    CALL(st, CU(cuGraphLaunch)(exec, s));
    CALL(st, CU(cuStreamSynchronize)(s));
    unsigned bad = bad_words(p, 7, &st);
    value = 9;
    kp = fill_params(args);
    CALL(st, CU(cuGraphExecKernelNodeSetParams)(exec, kernel_node, &kp));
    CALL(st, CU(cuGraphLaunch)(exec, s));
    CALL(st, CU(cuStreamSynchronize)(s));
    unsigned bad9 = bad_words(p, 9, &st);
    gv_check("graph.exec_set_params", st.rc == CUDA_SUCCESS && bad == 0 && bad9 == 0, "%s",
             st.rc ? gv_st_detail(&st) : (bad || bad9 ? "wrong values" : "7, then 9 after the exec's node was set"));

    /* cuGraphExecUpdate from a clone with another value; then a clone with
     * another topology is refused. */
    CALL(st, CU(cuGraphClone)(&clone, g));
    CALL(st, CU(cuGraphNodeFindInClone)(&cloned, kernel_node, clone));
    value = 11;
    kp = fill_params(args);
    CALL(st, CU(cuGraphKernelNodeSetParams)(cloned, &kp));
    CUgraphExecUpdateResultInfo info = {-1, NULL, NULL};
    CALL(st, CU(cuGraphExecUpdate)(exec, clone, &info));
    CALL(st, CU(cuGraphLaunch)(exec, s));
    CALL(st, CU(cuStreamSynchronize)(s));
    unsigned bad11 = bad_words(p, 11, &st);
    CALL(st, CU(cuGraphAddEmptyNode)(&extra, clone, &cloned, 1));
    CUgraphExecUpdateResultInfo refused = {-1, NULL, NULL};
    CUresult rc = st.rc == CUDA_SUCCESS ? CU(cuGraphExecUpdate)(exec, clone, &refused) : st.rc;
    gv_check("graph.exec_update",
             st.rc == CUDA_SUCCESS && info.result == CU_GRAPH_EXEC_UPDATE_SUCCESS && bad11 == 0 &&
                 rc == CUDA_ERROR_GRAPH_EXEC_UPDATE_FAILURE && refused.result == CU_GRAPH_EXEC_UPDATE_ERROR_TOPOLOGY_CHANGED,
             "%s: same topology updated (11), a new node refused with %s",
             st.rc ? gv_st_detail(&st) : "ok", gv_errname(rc));

    CU(cuGraphExecDestroy)(exec);
    CU(cuGraphDestroy)(clone);
    CU(cuGraphDestroy)(g);
    CU(cuStreamDestroy)(s);
    CU(cuMemFree)(p);
}

/* Ends the capture on s and reports whether it failed with want and
 * returned no graph. */
static int end_fails(CUstream s, CUresult want, CUresult *got)
{
    CUgraph g = (CUgraph)1;
    *got = CU(cuStreamEndCapture)(s, &g);
    return *got == want && g == NULL;
}

static void invalid_captures(void)
{
    CUstream s1 = NULL, s2 = NULL, blocking = NULL;
    CUevent e = NULL, outside = NULL;
    CUdeviceptr p = 0, q = 0;
    gv_st st = {0};
    CALL(st, CU(cuMemAlloc)(&p, N * 4));
    CALL(st, CU(cuStreamCreate)(&s1, CU_STREAM_NON_BLOCKING));
    CALL(st, CU(cuStreamCreate)(&s2, CU_STREAM_NON_BLOCKING));
    CALL(st, CU(cuStreamCreate)(&blocking, CU_STREAM_DEFAULT));
    CALL(st, CU(cuEventCreate)(&e, CU_EVENT_DISABLE_TIMING));
    CALL(st, CU(cuEventCreate)(&outside, CU_EVENT_DISABLE_TIMING));
    if (!gv_check("invalid.setup", st.rc == CUDA_SUCCESS, "%s", st.rc ? gv_st_detail(&st) : "ok"))
        return;
    CUresult rc, end = CUDA_SUCCESS;
    int ended;

    /* Synchronizing a capturing stream. */
    CU(cuStreamBeginCapture)(s1, CU_STREAM_CAPTURE_MODE_GLOBAL);
    rc = CU(cuStreamSynchronize)(s1);
    int status = capture_status(s1);
    CUresult after = gv_launch_fill(&k, s1, p, 1, N);
    ended = end_fails(s1, CUDA_ERROR_STREAM_CAPTURE_INVALIDATED, &end);
    gv_check("invalid.sync", rc == CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED && status == CU_STREAM_CAPTURE_STATUS_INVALIDATED &&
                                 after == CUDA_ERROR_STREAM_CAPTURE_INVALIDATED && ended && capture_status(s1) == 0,
             "synchronize -> %s, then launch -> %s, end -> %s", gv_errname(rc), gv_errname(after), gv_errname(end));

    /* The legacy stream while a blocking stream captures. */
    CU(cuStreamBeginCapture)(blocking, CU_STREAM_CAPTURE_MODE_GLOBAL);
    rc = CU(cuMemsetD32Async)(p, 0, N, NULL);
    ended = end_fails(blocking, CUDA_ERROR_STREAM_CAPTURE_INVALIDATED, &end);
    gv_check("invalid.legacy_stream", rc == CUDA_ERROR_STREAM_CAPTURE_IMPLICIT && ended,
             "legacy-stream memset -> %s, end -> %s", gv_errname(rc), gv_errname(end));

    /* An allocation in global mode, and the same in relaxed mode. */
    CU(cuStreamBeginCapture)(s1, CU_STREAM_CAPTURE_MODE_GLOBAL);
    rc = CU(cuMemAlloc)(&q, 256);
    ended = end_fails(s1, CUDA_ERROR_STREAM_CAPTURE_INVALIDATED, &end);
    int ok = rc == CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED && ended;
    if (rc == CUDA_SUCCESS)
        CU(cuMemFree)(q);
    CUresult global_rc = rc;
    CU(cuStreamBeginCapture)(s1, CU_STREAM_CAPTURE_MODE_GLOBAL);
    int mode = CU_STREAM_CAPTURE_MODE_RELAXED;
    CU(cuThreadExchangeStreamCaptureMode)(&mode);
    rc = CU(cuMemAlloc)(&q, 256);
    CU(cuThreadExchangeStreamCaptureMode)(&mode);
    CUgraph empty = NULL;
    CUresult end_ok = CU(cuStreamEndCapture)(s1, &empty);
    gv_check("invalid.allocation",
             ok && mode == CU_STREAM_CAPTURE_MODE_RELAXED && rc == CUDA_SUCCESS && end_ok == CUDA_SUCCESS && empty,
             "cuMemAlloc in global mode -> %s, in relaxed mode -> %s, end -> %s", gv_errname(global_rc), gv_errname(rc),
             gv_errname(end_ok));
    if (empty)
        CU(cuGraphDestroy)(empty);
    if (rc == CUDA_SUCCESS)
        CU(cuMemFree)(q);

    /* A fork that is never joined. */
    CU(cuStreamBeginCapture)(s1, CU_STREAM_CAPTURE_MODE_GLOBAL);
    CU(cuEventRecord)(e, s1);
    CU(cuStreamWaitEvent)(s2, e, 0);
    gv_launch_fill(&k, s2, p, 3, N);
    ended = end_fails(s1, CUDA_ERROR_STREAM_CAPTURE_UNJOINED, &end);
    gv_check("invalid.unjoined", ended && capture_status(s2) == 0,
             "end -> %s", gv_errname(end));

    /* A wait for work outside the capture. */
    CU(cuEventRecord)(outside, s2);
    CU(cuStreamBeginCapture)(s1, CU_STREAM_CAPTURE_MODE_GLOBAL);
    rc = CU(cuStreamWaitEvent)(s1, outside, 0);
    ended = end_fails(s1, CUDA_ERROR_STREAM_CAPTURE_INVALIDATED, &end);
    gv_check("invalid.isolation", rc == CUDA_ERROR_STREAM_CAPTURE_ISOLATION && ended,
             "wait -> %s, end -> %s", gv_errname(rc), gv_errname(end));

    /* An event recorded in a capture cannot be queried. */
    CU(cuStreamBeginCapture)(s1, CU_STREAM_CAPTURE_MODE_RELAXED);
    CU(cuEventRecord)(e, s1);
    rc = CU(cuEventQuery)(e);
    CUgraph g = NULL;
    CU(cuStreamEndCapture)(s1, &g);
    if (g)
        CU(cuGraphDestroy)(g);
    gv_check("invalid.captured_event", rc == CUDA_ERROR_CAPTURED_EVENT, "query -> %s", gv_errname(rc));

    /* The legacy stream cannot capture; a stream that does not capture
     * cannot end one. */
    rc = CU(cuStreamBeginCapture)(NULL, CU_STREAM_CAPTURE_MODE_GLOBAL);
    CUgraph none = NULL;
    CUresult not_capturing = CU(cuStreamEndCapture)(s2, &none);
    gv_check("invalid.begin_end", rc == CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED && not_capturing == CUDA_ERROR_ILLEGAL_STATE,
             "begin on the legacy stream -> %s, end without a capture -> %s", gv_errname(rc), gv_errname(not_capturing));

    /* After all that, the streams work. */
    gv_st after_st = {0};
    CALL(after_st, gv_launch_fill(&k, s1, p, 5, N));
    CALL(after_st, CU(cuStreamSynchronize)(s1));
    unsigned bad = bad_words(p, 5, &after_st);
    gv_check("invalid.streams_recover", after_st.rc == CUDA_SUCCESS && bad == 0, "%s",
             after_st.rc ? gv_st_detail(&after_st) : "launches run again");

    CU(cuEventDestroy)(e);
    CU(cuEventDestroy)(outside);
    CU(cuStreamDestroy)(s1);
    CU(cuStreamDestroy)(s2);
    CU(cuStreamDestroy)(blocking);
    CU(cuMemFree)(p);
}

static int b2d_calls;
static size_t b2d(int block)
{
    b2d_calls++;
    return (size_t)block * 4; /* 4 bytes of shared memory per thread */
}

static void occupancy(CUdevice dev)
{
    gv_st st = {0};
    int sms = 0, min_grid = 0, block = 0, active = 0, at256 = 0, limited_grid = 0, limited = 0, b2d_grid = 0,
        b2d_block = 0, regs = -1, with_avail = 0;
    size_t avail = 0;
    CALL(st, CU(cuDeviceGetAttribute)(&sms, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, dev));
    CALL(st, CU(cuFuncGetAttribute)(&regs, 4 /* NUM_REGS */, k.fill_u32));
    CALL(st, CU(cuOccupancyMaxPotentialBlockSize)(&min_grid, &block, k.fill_u32, NULL, 0, 0));
    CALL(st, CU(cuOccupancyMaxActiveBlocksPerMultiprocessor)(&active, k.fill_u32, block, 0));
    CALL(st, CU(cuOccupancyMaxActiveBlocksPerMultiprocessor)(&at256, k.fill_u32, 256, 0));
    CALL(st, CU(cuOccupancyMaxPotentialBlockSize)(&limited_grid, &limited, k.fill_u32, NULL, 0, 100));
    CALL(st, CU(cuOccupancyMaxPotentialBlockSize)(&b2d_grid, &b2d_block, k.fill_u32, b2d, 0, 0));
    CALL(st, CU(cuOccupancyAvailableDynamicSMemPerBlock)(&avail, k.fill_u32, 2, 256));
    CALL(st, CU(cuOccupancyMaxActiveBlocksPerMultiprocessor)(&with_avail, k.fill_u32, 256, avail));
    gv_info("occupancy: %d SMs, %d registers, best block %d (grid %d), %d blocks/SM at 256, limit 100 -> %d, "
            "%zu bytes for 2 blocks",
            sms, regs, block, min_grid, at256, limited, avail);
    gv_check("occupancy.consistent",
             st.rc == CUDA_SUCCESS && block > 0 && block <= 1024 && block % 32 == 0 && min_grid == active * sms &&
                 at256 > 0 && limited > 0 && limited <= 100 && b2d_calls > 0 && b2d_block > 0 && with_avail >= 2 &&
                 regs > 0,
             "%s", st.rc ? gv_st_detail(&st) : "best block size, its grid, limits, callback and shared memory agree");
}

static void peers(CUdevice dev)
{
    int can = -1, value = -1;
    CUresult rc = CU(cuDeviceCanAccessPeer)(&can, dev, dev);
    CUresult self = CU(cuCtxEnablePeerAccess)(ctx, 0);
    CUresult attr = CU(cuDeviceGetP2PAttribute)(&value, 1, dev, dev);
    gv_check("peer.single_device",
             rc == CUDA_SUCCESS && can == 0 && self == CUDA_ERROR_PEER_ACCESS_UNSUPPORTED && attr == CUDA_ERROR_INVALID_DEVICE,
             "can access itself: %d, enable to itself -> %s, P2P attribute with itself -> %s", can, gv_errname(self),
             gv_errname(attr));
}

int main(void)
{
    CUdevice dev;
    gv_open("graphs");
    gv_setup(&dev, &ctx);
    gv_load_kernels(&k);
    capture_and_replay();
    manual_graph();
    invalid_captures();
    occupancy(dev);
    peers(dev);
    return gv_summary();
}
