//! What graphs do on a vGPU that they do not natively, and the parts of
//! capture a C program cannot see: host memory a graph would copy must be
//! pinned (the backend reads it at every launch), work the backend cannot
//! replay (host functions, graph launches inside a capture, nodes of two
//! contexts) is refused with CUDA_ERROR_NOT_SUPPORTED, a graph launch is one
//! asynchronous command, and a graph whose memory was freed fails its launch
//! instead of writing into it. Against a sim backend through the direct
//! transport.
//!
//! One test: the driver's session is per process.

#[path = "support/backend.rs"]
mod backend;
#[path = "support/kernels.rs"]
mod kernels;

use backend::GpuvisorBackend;
use cuda::api::graph::*;
use cuda::api::types::*;
use cuda::api::{capture::*, context::*, copy::*, launch::*, memory::*, module::*, stream::*};
use protocol::cuda::*;
use std::ffi::{c_int, c_uint, c_void};
use std::ptr::{null, null_mut};
use std::time::{Duration, Instant};

const N: usize = 1024;

fn ok(r: CUresult) {
    assert_eq!(r, CUDA_SUCCESS, "{}", protocol::cuda::error_name(r).unwrap_or("?"));
}

unsafe extern "C" fn host_fn(_: *mut c_void) {}

/// Instantiates with parameters: (result, CUgraphInstantiateResult, error node).
unsafe fn instantiate(g: CUgraph) -> (CUresult, c_int, CUgraphNode, CUgraphExec) {
    let mut exec: CUgraphExec = null_mut();
    let mut p =
        CUDA_GRAPH_INSTANTIATE_PARAMS { flags: 0, hUploadStream: null_mut(), hErrNode_out: null_mut(), result_out: -1 };
    // SAFETY: valid outputs.
    let r = unsafe { cuGraphInstantiateWithParams(&mut exec, g, &mut p) };
    (r, p.result_out, p.hErrNode_out, exec)
}

#[test]
fn graphs_refuse_what_the_backend_cannot_replay_and_launch_asynchronously() {
    let Some(b) = GpuvisorBackend::spawn("graph_limits") else { return };
    // SAFETY: the calls follow the CUDA API; every pointer passed is valid.
    unsafe {
        let (ctx, m) = kernels::primary_with_kernels(b.path());
        let (mut fill, mut spin): (CUfunction, CUfunction) = (null_mut(), null_mut());
        ok(cuModuleGetFunction(&mut fill, m, c"gv_fill_u32".as_ptr()));
        ok(cuModuleGetFunction(&mut spin, m, c"gv_spin_us".as_ptr()));
        let mut d: CUdeviceptr = 0;
        ok(cuMemAlloc_v2(&mut d, N * 4));
        let mut s: CUstream = null_mut();
        ok(cuStreamCreate(&mut s, 1));

        // Pageable host memory in a captured copy: captured, refused at
        // instantiation, naming the node.
        let pageable = vec![0u8; N * 4];
        ok(cuStreamBeginCapture_v2(s, MODE_GLOBAL));
        ok(cuMemcpyHtoDAsync_v2(d, pageable.as_ptr() as *const c_void, N * 4, s));
        let mut g: CUgraph = null_mut();
        ok(cuStreamEndCapture(s, &mut g));
        let mut node: CUgraphNode = null_mut();
        let mut one = 1usize;
        ok(cuGraphGetNodes(g, &mut node, &mut one));
        let (r, result, err_node, _) = instantiate(g);
        assert_eq!((r, result, err_node), (CUDA_ERROR_NOT_SUPPORTED, 1, node), "pageable memory in a graph");
        // The same copy from pinned memory instantiates and runs.
        let mut pinned: *mut c_void = null_mut();
        ok(cuMemAllocHost_v2(&mut pinned, N * 4));
        std::ptr::write_bytes(pinned as *mut u8, 0x5a, N * 4);
        ok(cuGraphDestroy(g));
        ok(cuStreamBeginCapture_v2(s, MODE_GLOBAL));
        ok(cuMemcpyHtoDAsync_v2(d, pinned, N * 4, s));
        ok(cuStreamEndCapture(s, &mut g));
        let (r, result, _, exec) = instantiate(g);
        assert_eq!((r, result), (CUDA_SUCCESS, 0));
        ok(cuGraphLaunch(exec, s));
        ok(cuStreamSynchronize(s));
        let mut back = vec![0u8; N * 4];
        ok(cuMemcpyDtoH_v2(back.as_mut_ptr() as *mut c_void, d, N * 4));
        assert!(back.iter().all(|&x| x == 0x5a));

        // Host functions and graph launches inside a capture cannot be
        // replayed by the backend: refused, and the capture invalidated.
        ok(cuStreamBeginCapture_v2(s, MODE_GLOBAL));
        assert_eq!(cuLaunchHostFunc(s, Some(host_fn), null_mut()), CUDA_ERROR_NOT_SUPPORTED);
        let mut status: c_uint = 9;
        ok(cuStreamIsCapturing(s, &mut status));
        assert_eq!(status, 2, "invalidated");
        let mut none: CUgraph = null_mut();
        assert_eq!(cuStreamEndCapture(s, &mut none), CUDA_ERROR_STREAM_CAPTURE_INVALIDATED);
        ok(cuStreamBeginCapture_v2(s, MODE_GLOBAL));
        assert_eq!(cuGraphLaunch(exec, s), CUDA_ERROR_NOT_SUPPORTED);
        assert_eq!(cuStreamEndCapture(s, &mut none), CUDA_ERROR_STREAM_CAPTURE_INVALIDATED);

        // The capture's dependency set, read and replaced.
        ok(cuStreamBeginCapture_v2(s, MODE_RELAXED));
        ok(cuMemsetD32Async(d, 1, N, s));
        let (mut id, mut cg, mut deps, mut edges, mut n): (
            u64,
            CUgraph,
            *const CUgraphNode,
            *const CUgraphEdgeData,
            usize,
        ) = (0, null_mut(), null(), null(), 0);
        ok(cuStreamGetCaptureInfo_v3(s, &mut status, &mut id, &mut cg, &mut deps, &mut edges, &mut n));
        assert_eq!((status, n), (1, 1));
        let mut memset_node: CUgraphNode = null_mut();
        one = 1;
        ok(cuGraphGetNodes(cg, &mut memset_node, &mut one));
        assert_eq!(*deps, memset_node, "the next node depends on the memset");
        assert_eq!(*edges, CUgraphEdgeData::default());
        ok(cuStreamUpdateCaptureDependencies_v2(s, null_mut(), null(), 0, 1));
        ok(cuMemsetD32Async(d, 2, N, s));
        ok(cuStreamEndCapture(s, &mut g));
        let mut roots = 0usize;
        ok(cuGraphGetRootNodes(g, null_mut(), &mut roots));
        assert_eq!(roots, 2, "after the dependencies were cleared, the second memset is a root too");

        // Nodes of two contexts in one graph.
        let mut other: CUcontext = null_mut();
        ok(cuCtxCreate_v2(&mut other, 0, 0));
        let mut e = 0u64;
        ok(cuMemAlloc_v2(&mut e, N * 4));
        let ms = CUDA_MEMSET_NODE_PARAMS { dst: e, pitch: N * 4, value: 0, elementSize: 4, width: N, height: 1 };
        let mut extra: CUgraphNode = null_mut();
        ok(cuGraphAddMemsetNode(&mut extra, g, null(), 0, &ms, other));
        let (r, result, _, _) = instantiate(g);
        assert_eq!((r, result), (CUDA_ERROR_NOT_SUPPORTED, 4), "two contexts in one graph");
        ok(cuCtxSetCurrent(ctx));

        // A cycle made through cuGraphAddDependencies.
        let mut cyc: CUgraph = null_mut();
        ok(cuGraphCreate(&mut cyc, 0));
        let (mut a, mut c2): (CUgraphNode, CUgraphNode) = (null_mut(), null_mut());
        ok(cuGraphAddEmptyNode(&mut a, cyc, null(), 0));
        ok(cuGraphAddEmptyNode(&mut c2, cyc, &a, 1));
        ok(cuGraphAddDependencies(cyc, &c2, &a, 1));
        let (r, result, _, _) = instantiate(cyc);
        assert_eq!((r, result), (CUDA_ERROR_INVALID_VALUE, 2), "a cycle is an invalid structure");

        // A launch is one asynchronous command: a graph that spins 200 ms
        // returns at once and the stream is busy.
        let us: u64 = 200_000;
        let mut args = [&us as *const u64 as *mut c_void];
        ok(cuStreamBeginCapture_v2(s, MODE_GLOBAL));
        ok(cuLaunchKernel(spin, 1, 1, 1, 1, 1, 1, 0, s, args.as_mut_ptr(), null_mut()));
        let mut sg: CUgraph = null_mut();
        ok(cuStreamEndCapture(s, &mut sg));
        let (r, _, _, spin_exec) = instantiate(sg);
        ok(r);
        let t = Instant::now();
        ok(cuGraphLaunch(spin_exec, s));
        assert!(t.elapsed() < Duration::from_millis(50), "cuGraphLaunch waited {:?}", t.elapsed());
        assert_eq!(cuStreamQuery(s), CUDA_ERROR_NOT_READY);
        ok(cuStreamSynchronize(s));
        assert!(t.elapsed() >= Duration::from_millis(200));

        // The graph's memory freed after instantiation: the launch fails at
        // the next synchronization, and writes nothing.
        let n64 = N as u64;
        let value: c_uint = 7;
        let mut fill_args = [
            &d as *const u64 as *mut c_void,
            &value as *const c_uint as *mut c_void,
            &n64 as *const u64 as *mut c_void,
        ];
        ok(cuStreamBeginCapture_v2(s, MODE_GLOBAL));
        ok(cuLaunchKernel(fill, 4, 1, 1, 256, 1, 1, 0, s, fill_args.as_mut_ptr(), null_mut()));
        ok(cuMemsetD32Async(d, 3, N, s));
        let mut fg: CUgraph = null_mut();
        ok(cuStreamEndCapture(s, &mut fg));
        let (r, _, _, fill_exec) = instantiate(fg);
        ok(r);
        ok(cuMemFree_v2(d));
        ok(cuGraphLaunch(fill_exec, s));
        assert_eq!(cuStreamSynchronize(s), CUDA_ERROR_INVALID_VALUE, "the launch named freed memory");
        ok(cuStreamSynchronize(s));
        ok(cuGraphExecDestroy(fill_exec));
        ok(cuGraphExecDestroy(spin_exec));
        ok(cuGraphExecDestroy(exec));
    }
}
