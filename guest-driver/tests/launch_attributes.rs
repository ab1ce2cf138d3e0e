//! cuLaunchKernelEx with launch attributes, as cuDNN, cuBLAS and PyTorch
//! call it: hints launch as a plain launch, events asked of the launch fire
//! once the kernel has run, thread block clusters (cuBLAS's Hopper kernels)
//! and cooperative launches run, also when captured into a graph, and bad
//! ones get the driver's errors with the stream still usable. Against a sim
//! backend through the direct transport.

#[path = "support/backend.rs"]
mod backend;
#[path = "support/kernels.rs"]
mod kernels;

use backend::GpuvisorBackend;
use cuda::api::graph::*;
use cuda::api::types::*;
use cuda::api::{capture::*, copy::*, event::*, launch::*, memory::*, module::*, stream::*};
use protocol::cuda::*;
use std::ffi::{c_uint, c_void};
use std::ptr::null_mut;

const N: u64 = 4096;

fn ok(r: CUresult) {
    assert_eq!(r, CUDA_SUCCESS, "{}", protocol::cuda::error_name(r).unwrap_or("?"));
}

/// A launch attribute with `id` whose value starts with `value`.
fn attr(id: c_uint, value: &[u8]) -> CUlaunchAttribute {
    let mut a = CUlaunchAttribute { id, pad: [0; 4], value: [0; 64] };
    a.value[..value.len()].copy_from_slice(value);
    a
}

fn words(w: &[u32]) -> Vec<u8> {
    w.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[test]
fn launch_attributes_are_honoured_or_refused_cleanly() {
    let Some(b) = GpuvisorBackend::spawn("launch_attributes") else { return };
    // SAFETY: the calls follow the CUDA API; every pointer passed is valid
    // for its call.
    unsafe {
        let (_, m) = kernels::primary_with_kernels(b.path());
        let mut fill: CUfunction = null_mut();
        ok(cuModuleGetFunction(&mut fill, m, c"gv_fill_u32".as_ptr()));
        let mut d: CUdeviceptr = 0;
        ok(cuMemAlloc_v2(&mut d, N as usize * 4));
        let mut s: CUstream = null_mut();
        ok(cuStreamCreate(&mut s, 1));
        let mut done: CUevent = null_mut();
        ok(cuEventCreate(&mut done, 0));

        let launch_grid = |value: c_uint, grid: c_uint, attrs: &mut [CUlaunchAttribute]| {
            let mut dd = d;
            let (mut v, mut n) = (value, N);
            let mut args =
                [&mut dd as *mut _ as *mut c_void, &mut v as *mut _ as *mut c_void, &mut n as *mut _ as *mut c_void];
            let cfg = CUlaunchConfig {
                gridDimX: grid,
                gridDimY: 1,
                gridDimZ: 1,
                blockDimX: 256,
                blockDimY: 1,
                blockDimZ: 1,
                sharedMemBytes: 0,
                hStream: s,
                attrs: attrs.as_mut_ptr() as *mut c_void,
                numAttrs: attrs.len() as c_uint,
            };
            cuLaunchKernelEx(&cfg, fill, args.as_mut_ptr(), null_mut())
        };
        let launch = |value: c_uint, attrs: &mut [CUlaunchAttribute]| launch_grid(value, 16, attrs);
        let read = || {
            let mut host = vec![0u32; N as usize];
            ok(cuMemcpyDtoH_v2(host.as_mut_ptr() as *mut c_void, d, N as usize * 4));
            host
        };

        // Hints as PyTorch and cuDNN set them, and an event for the launch's
        // completion: the kernel runs and the event fires after it.
        let event = (done as usize).to_le_bytes();
        let mut hints = [
            attr(6, &words(&[1])),       // programmatic stream serialization
            attr(8, &words(&[0])),       // priority
            attr(10, &words(&[1])),      // memory synchronisation domain
            attr(4, &words(&[1, 1, 1])), // a cluster of one block
            attr(12, &event),            // launch completion event
        ];
        ok(launch(0x1234, &mut hints));
        ok(cuEventSynchronize(done));
        assert!(read().iter().all(|&x| x == 0x1234), "the kernel ran before its event fired");

        // Clusters, as cuBLAS launches its Hopper GEMMs, and cooperative
        // launches run.
        let mut cluster = [attr(4, &words(&[2, 1, 1])), attr(5, &words(&[1]))];
        ok(launch(0x5678, &mut cluster));
        ok(cuStreamSynchronize(s));
        assert!(read().iter().all(|&x| x == 0x5678), "a cluster launch ran");
        let mut cooperative = [attr(2, &words(&[1])), attr(4, &words(&[4, 1, 1]))];
        ok(launch(0x6789, &mut cooperative));
        ok(cuStreamSynchronize(s));
        assert!(read().iter().all(|&x| x == 0x6789), "a cooperative cluster launch ran");

        // cuLaunchCooperativeKernel is the same cooperative launch; a grid
        // larger than what can be resident at once (the sim's model: 8 SMs
        // of 8 blocks of 256 threads) gets the device's error.
        let cooperative_kernel = |value: c_uint, grid: c_uint| {
            let mut dd = d;
            let (mut v, mut n) = (value, N);
            let mut args =
                [&mut dd as *mut _ as *mut c_void, &mut v as *mut _ as *mut c_void, &mut n as *mut _ as *mut c_void];
            cuLaunchCooperativeKernel(fill, grid, 1, 1, 256, 1, 1, 0, s, args.as_mut_ptr())
        };
        ok(cooperative_kernel(0x4321, 64));
        ok(cuStreamSynchronize(s));
        assert!(read().iter().all(|&x| x == 0x4321), "cuLaunchCooperativeKernel ran");
        ok(cooperative_kernel(0x5555, 65));
        assert_eq!(cuStreamSynchronize(s), CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE);
        assert!(read().iter().all(|&x| x == 0x4321), "a refused launch ran");
        ok(launch(0x6789, &mut cooperative));
        ok(cuStreamSynchronize(s));

        // Bad clusters are refused before anything is queued; nothing runs.
        let mut uneven = [attr(4, &words(&[3, 1, 1]))];
        assert_eq!(launch(0x5555, &mut uneven), CUDA_ERROR_INVALID_CLUSTER_SIZE, "16 blocks in clusters of 3");
        let mut huge = [attr(4, &words(&[16, 2, 1]))];
        assert_eq!(launch_grid(0x5555, 32, &mut huge), CUDA_ERROR_INVALID_CLUSTER_SIZE, "32 blocks a cluster");
        let mut empty_cluster = [attr(4, &words(&[0, 1, 1]))];
        assert_eq!(launch(0x5555, &mut empty_cluster), CUDA_ERROR_INVALID_VALUE);
        let mut graph_only = [attr(13, &words(&[1]))];
        assert_eq!(launch(0x5555, &mut graph_only), CUDA_ERROR_INVALID_VALUE);
        ok(cuStreamSynchronize(s));
        assert!(read().iter().all(|&x| x == 0x6789), "a refused launch ran");
        // What only the device knows (here: 16 blocks a cluster without the
        // function allowing non-portable sizes) fails on the backend, and
        // the stream's next synchronisation reports it.
        let mut sixteen = [attr(4, &words(&[16, 1, 1]))];
        ok(launch_grid(0x5555, 32, &mut sixteen));
        assert_eq!(cuStreamSynchronize(s), CUDA_ERROR_INVALID_CLUSTER_SIZE);
        assert!(read().iter().all(|&x| x == 0x6789), "a refused launch ran");

        // Captured into a graph, a cluster launch keeps its cluster.
        ok(cuStreamBeginCapture_v2(s, MODE_GLOBAL));
        let mut cluster = [attr(4, &words(&[2, 1, 1]))];
        ok(launch(0x7777, &mut cluster));
        let mut g: CUgraph = null_mut();
        ok(cuStreamEndCapture(s, &mut g));
        let mut exec: CUgraphExec = null_mut();
        ok(cuGraphInstantiateWithFlags(&mut exec, g, 0));
        ok(cuGraphLaunch(exec, s));
        ok(cuStreamSynchronize(s));
        assert!(read().iter().all(|&x| x == 0x7777), "the captured cluster launch ran");

        // A node added to a graph by hand takes its cluster as a node
        // attribute, reads it back, keeps it across new parameters, and
        // runs with it; an event attribute cannot be carried and is refused.
        let (mut dd, mut v, mut n) = (d, 0x8888u32, N);
        let mut args =
            [&mut dd as *mut _ as *mut c_void, &mut v as *mut _ as *mut c_void, &mut n as *mut _ as *mut c_void];
        let params = CUDA_KERNEL_NODE_PARAMS_v2 {
            func: fill,
            gridDimX: 16,
            gridDimY: 1,
            gridDimZ: 1,
            blockDimX: 256,
            blockDimY: 1,
            blockDimZ: 1,
            sharedMemBytes: 0,
            kernelParams: args.as_mut_ptr(),
            extra: null_mut(),
            kern: null_mut(),
            ctx: null_mut(),
        };
        let mut g: CUgraph = null_mut();
        ok(cuGraphCreate(&mut g, 0));
        let mut node: CUgraphNode = null_mut();
        ok(cuGraphAddKernelNode_v2(&mut node, g, std::ptr::null(), 0, &params));
        let value = |w: &[u32]| {
            let mut v = [0u8; 64];
            v[..w.len() * 4].copy_from_slice(&words(w));
            v
        };
        ok(cuGraphKernelNodeSetAttribute(node, 4, value(&[4, 1, 1]).as_ptr() as *const c_void));
        ok(cuGraphKernelNodeSetAttribute(node, 8, value(&[1]).as_ptr() as *const c_void)); // a priority hint
        ok(cuGraphKernelNodeSetParams_v2(node, &params));
        let mut back = [0u8; 64];
        ok(cuGraphKernelNodeGetAttribute(node, 4, back.as_mut_ptr() as *mut c_void));
        assert_eq!(&back[..12], &words(&[4, 1, 1])[..], "the cluster, kept across new parameters");
        assert_eq!(
            cuGraphKernelNodeSetAttribute(node, 12, value(&[0]).as_ptr() as *const c_void),
            CUDA_ERROR_NOT_SUPPORTED
        );
        assert_eq!(
            cuGraphKernelNodeSetAttribute(node, 4, value(&[0, 1, 1]).as_ptr() as *const c_void),
            CUDA_ERROR_INVALID_VALUE
        );
        let mut exec: CUgraphExec = null_mut();
        ok(cuGraphInstantiateWithFlags(&mut exec, g, 0));
        ok(cuGraphLaunch(exec, s));
        ok(cuStreamSynchronize(s));
        assert!(read().iter().all(|&x| x == 0x8888), "the node with a cluster attribute ran");
        // A cluster the grid is not a multiple of fails the instantiation.
        ok(cuGraphKernelNodeSetAttribute(node, 4, value(&[3, 1, 1]).as_ptr() as *const c_void));
        assert_eq!(cuGraphInstantiateWithFlags(&mut exec, g, 0), CUDA_ERROR_INVALID_CLUSTER_SIZE);

        // The stream goes on; no attributes at all is cuLaunchKernel.
        ok(launch(0x9abc, &mut []));
        ok(cuStreamSynchronize(s));
        assert!(read().iter().all(|&x| x == 0x9abc));
    }
}
