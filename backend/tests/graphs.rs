//! Graphs, cluster launches and occupancy below the virtqueues: whole graphs
//! instantiated once, launched with one command each, on the sim engine
//! through `Vm`,
//! with replies read back from guest memory. Malformed graphs (cycles, bad
//! node references, unknown handles, foreign pointers, unreachable host
//! memory) get CUDA errors and the backend keeps serving.

use gpuvisor_backend::engine::sim::SimEngine;
use gpuvisor_backend::guest_mem::{Extent, GuestMemory};
use gpuvisor_backend::resources::Resource;
use gpuvisor_backend::vm::Vm;
use protocol::cuda::*;
use protocol::graph::{push_edges, push_node, GraphNodeDesc};
use protocol::*;
use std::sync::atomic::Ordering;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use zerocopy::little_endian::{I32, U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes};

const MIB: u64 = 1 << 20;
const CONTROL: u32 = 100;
const BUF: u32 = 101;
const CONTROL_GPA: u64 = 0x10_0000;
const BUF_GPA: u64 = 0x40_0000;
const MODULE: u64 = 0x10;
const FILL: u64 = 0x11;
const ADD: u64 = 0x12;

struct Guest {
    vm: Vm,
    mem: GuestMemory,
    seq: u64,
}

struct Answer {
    status: CuResult,
    deferred: CuResult,
    payload: Vec<u8>,
}

impl Guest {
    /// A client with a session, a 1 MiB host buffer and kernels.ptx loaded.
    fn new() -> Guest {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 * MIB as usize)]).unwrap();
        let mut vm = Vm::new("graphs", Box::new(SimEngine::new(256 * MIB)), 64 * MIB);
        for (id, gpa, size) in [(CONTROL, CONTROL_GPA, 2 * MIB), (BUF, BUF_GPA, MIB)] {
            let r = Resource {
                width: size as u32,
                height: 1,
                size,
                backing: vec![Extent { addr: GuestAddress(gpa), len: size as usize }],
                ..Default::default()
            };
            vm.resources.create(id, r).unwrap();
        }
        vm.create_client(1).unwrap();
        for r in [CONTROL, BUF] {
            vm.resources.get_mut(r).unwrap().attached.insert(1);
        }
        let mut g = Guest { vm, mem, seq: 0 };
        let hello = Hello {
            control_resource: U32::new(CONTROL),
            protocol_version: U16::new(PROTOCOL_VERSION),
            ..Default::default()
        };
        assert_eq!(g.call(Opcode::Hello, &hello, &[]).status, CUDA_SUCCESS);
        let mut ptx = include_bytes!("../../guest-tests/kernels.ptx").to_vec();
        ptx.push(0);
        let load = ModuleLoad { module_id: U64::new(MODULE), image_len: U64::new(ptx.len() as u64) };
        assert_eq!(g.call(Opcode::ModuleLoad, &load, &ptx).status, CUDA_SUCCESS);
        for (id, name) in [(FILL, &b"gv_fill_u32"[..]), (ADD, &b"gv_vector_add_f32"[..])] {
            let gf = ModuleGetFunction {
                module_id: U64::new(MODULE),
                func_id: U64::new(id),
                name_len: U32::new(name.len() as u32),
                _pad: U32::new(0),
            };
            assert_eq!(g.call(Opcode::ModuleGetFunction, &gf, name).status, CUDA_SUCCESS);
        }
        g
    }

    fn raw(&mut self, bytes: &[u8]) -> Answer {
        self.vm.submit(&self.mem, 1, bytes).expect("a reply is always written");
        let mut b = [0u8; core::mem::size_of::<ReplyHeader>()];
        self.mem.read_slice(&mut b, GuestAddress(CONTROL_GPA)).unwrap();
        let hdr = ReplyHeader::read_from_bytes(&b).unwrap();
        let mut payload = vec![0u8; hdr.payload_len.get() as usize];
        self.mem.read_slice(&mut payload, GuestAddress(CONTROL_GPA + REPLY_PAYLOAD_OFFSET)).unwrap();
        self.seq = hdr.reply_seq.get();
        Answer { status: hdr.status.get(), deferred: hdr.deferred.get(), payload }
    }

    /// Commands given as (opcode, payload, trailing), then a synchronize
    /// that collects their errors.
    fn run(&mut self, cmds: &[(Opcode, &[u8], &[u8])]) -> Answer {
        self.seq += 1;
        let mut w = BatchWriter::new();
        w.begin(self.seq);
        for (op, p, t) in cmds {
            w.push(*op, 0, PRIMARY_CTX, *p, t);
        }
        w.push_empty(Opcode::CtxSynchronize, 0, PRIMARY_CTX);
        let bytes = w.finish().to_vec();
        self.raw(&bytes)
    }

    fn call<T: IntoBytes + Immutable + ?Sized>(&mut self, op: Opcode, p: &T, trailing: &[u8]) -> Answer {
        self.seq += 1;
        let mut w = BatchWriter::new();
        w.begin(self.seq);
        w.push(op, 0, PRIMARY_CTX, p, trailing);
        let bytes = w.finish().to_vec();
        self.raw(&bytes)
    }

    fn alloc(&mut self, size: u64) -> u64 {
        let a = self.call(Opcode::MemAlloc, &MemAlloc { size: U64::new(size) }, &[]);
        assert_eq!(a.status, CUDA_SUCCESS);
        MemAllocReply::read_from_prefix(&a.payload).unwrap().0.dptr.get()
    }

    fn read(&mut self, dptr: u64, len: u64) -> Vec<u8> {
        let m = MemcpyDtoH {
            src: U64::new(dptr),
            len: U64::new(len),
            stream: U64::new(0),
            dst: HostRef { kind: U32::new(HOST_INLINE), ..Default::default() },
        };
        let a = self.call(Opcode::MemcpyDtoH, &m, &[]);
        assert_eq!(a.status, CUDA_SUCCESS);
        a.payload
    }

    fn instantiate(&mut self, exec: u64, nodes: &[GraphNodeDesc<'_>], edges: &[(u32, u32)]) -> CuResult {
        let (g, body) = graph(exec, nodes, edges);
        self.call(Opcode::GraphInstantiate, &g, &body).status
    }

    fn launch(&mut self, exec: u64, times: usize) -> Answer {
        let l = GraphLaunch { exec_id: U64::new(exec), stream: U64::new(0) };
        let cmds: Vec<(Opcode, &[u8], &[u8])> =
            (0..times).map(|_| (Opcode::GraphLaunch, l.as_bytes(), &[][..])).collect();
        self.run(&cmds)
    }

    /// Still answers ordinary requests and runs a small graph.
    fn still_serves(&mut self) {
        let p = self.alloc(64);
        let exec = 0xfeed_0000 + self.seq;
        assert_eq!(self.instantiate(exec, &[memset(p, 16, 0x0101_0101)], &[]), CUDA_SUCCESS);
        assert_eq!(self.launch(exec, 1).deferred, CUDA_SUCCESS);
        assert_eq!(self.read(p, 64), vec![1u8; 64]);
    }
}

fn graph(exec: u64, nodes: &[GraphNodeDesc<'_>], edges: &[(u32, u32)]) -> (GraphInstantiate, Vec<u8>) {
    let mut body = Vec::new();
    for n in nodes {
        push_node(&mut body, n);
    }
    let e: Vec<GraphEdge> = edges.iter().map(|&(f, t)| GraphEdge { from: U32::new(f), to: U32::new(t) }).collect();
    push_edges(&mut body, &e);
    let g = GraphInstantiate {
        exec_id: U64::new(exec),
        flags: U64::new(0),
        num_nodes: U32::new(nodes.len() as u32),
        num_edges: U32::new(e.len() as u32),
        body_len: U64::new(body.len() as u64),
    };
    (g, body)
}

fn memset(dst: u64, words: u64, value: u32) -> GraphNodeDesc<'static> {
    GraphNodeDesc::Memset(GraphMemsetNode {
        dst: U64::new(dst),
        pitch: U64::new(words * 4),
        width: U64::new(words),
        height: U64::new(1),
        value: U32::new(value),
        elem_size: U32::new(4),
    })
}

fn kernel(func: u64, params: &[u8]) -> GraphNodeDesc<'_> {
    kernel_ex(func, params, 4, LaunchExtra::PLAIN)
}

/// A kernel node of `grid` blocks of 128 threads, with a launch extra.
fn kernel_ex(func: u64, params: &[u8], grid: u32, extra: LaunchExtra) -> GraphNodeDesc<'_> {
    GraphNodeDesc::Kernel(
        GraphKernelNode {
            func_id: U64::new(func),
            grid: [U32::new(grid), U32::new(1), U32::new(1)],
            block: [U32::new(128), U32::new(1), U32::new(1)],
            shared_mem: U32::new(0),
            params_len: U32::new(params.len() as u32),
        },
        extra,
        params,
    )
}

/// A direct launch of `grid` blocks of 256 threads, with a launch extra.
fn launch_ex(func: u64, params: &[u8], grid: [u32; 3], extra: LaunchExtra) -> LaunchKernelEx {
    LaunchKernelEx {
        launch: LaunchKernel {
            func_id: U64::new(func),
            stream: U64::new(0),
            grid: grid.map(U32::new),
            block: [U32::new(256), U32::new(1), U32::new(1)],
            shared_mem: U32::new(0),
            params_len: U32::new(params.len() as u32),
        },
        extra,
    }
}

fn copy(dir: u32, dst: u64, src: u64, len: u64, host_offset: u64) -> GraphNodeDesc<'static> {
    GraphNodeDesc::Memcpy(GraphMemcpyNode {
        dir: U32::new(dir),
        _pad: U32::new(0),
        dst: U64::new(dst),
        src: U64::new(src),
        len: U64::new(len),
        host: HostRef { kind: U32::new(HOST_RESOURCE), resource: U32::new(BUF), offset: U64::new(host_offset) },
    })
}

fn fill_params(ptr: u64, value: u32, n: u64) -> Vec<u8> {
    let mut p = ptr.to_le_bytes().to_vec();
    p.extend_from_slice(&value.to_le_bytes());
    p.extend_from_slice(&[0; 4]);
    p.extend_from_slice(&n.to_le_bytes());
    p
}

fn floats(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

#[test]
fn a_graph_of_copies_memsets_and_kernels_runs_in_dependency_order_on_every_launch() {
    let mut g = Guest::new();
    let n = 256u64;
    let (a, b, c, d) = (g.alloc(n * 4), g.alloc(n * 4), g.alloc(n * 4), g.alloc(n * 4));
    // The host buffer holds 1.0s, copied in by the graph.
    let ones: Vec<u8> = (0..n).flat_map(|_| 1.0f32.to_le_bytes()).collect();
    g.mem.write_slice(&ones, GuestAddress(BUF_GPA)).unwrap();
    let mut add = Vec::new();
    for v in [a, b, c, n] {
        add.extend_from_slice(&v.to_le_bytes());
    }
    let fill = fill_params(b, 2.0f32.to_bits(), n);
    // 0: host -> a; 1: fill b with 2.0; 2: c = a + b; 3: c -> d; 4: d -> host
    // at offset 64 KiB; 5: a memset of a that must come after the add reads it.
    let nodes = [
        copy(GRAPH_COPY_HTOD, a, 0, n * 4, 0),
        kernel(FILL, &fill),
        kernel(ADD, &add),
        copy(GRAPH_COPY_DTOD, d, c, n * 4, 0),
        copy(GRAPH_COPY_DTOH, 0, d, n * 4, 64 << 10),
        memset(a, n, 0),
    ];
    let edges = [(0, 2), (1, 2), (2, 3), (3, 4), (2, 5)];
    assert_eq!(g.instantiate(0x500, &nodes, &edges), CUDA_SUCCESS);
    let launches_before = g.vm.counters().calls().launches;
    let ops_before = g.vm.counters().ops_total.load(Ordering::Relaxed);
    let a1 = g.launch(0x500, 100);
    assert_eq!((a1.status, a1.deferred), (CUDA_SUCCESS, CUDA_SUCCESS));
    // Accounting: each launch is one GPU operation under the gate and
    // counts every kernel it runs.
    assert_eq!(g.vm.counters().ops_total.load(Ordering::Relaxed) - ops_before, 100);
    assert_eq!(g.vm.counters().calls().launches - launches_before, 200);
    let mut out = vec![0u8; (n * 4) as usize];
    g.mem.read_slice(&mut out, GuestAddress(BUF_GPA + (64 << 10))).unwrap();
    assert_eq!(floats(&out), vec![3.0; n as usize], "1.0 + 2.0 reached the host through c and d");
    assert_eq!(g.read(a, n * 4), vec![0u8; (n * 4) as usize], "the memset ran after the add");
    // The host buffer changed: the next launch copies the new contents.
    let twos: Vec<u8> = (0..n).flat_map(|_| 2.0f32.to_le_bytes()).collect();
    g.mem.write_slice(&twos, GuestAddress(BUF_GPA)).unwrap();
    assert_eq!(g.launch(0x500, 1).deferred, CUDA_SUCCESS);
    g.mem.read_slice(&mut out, GuestAddress(BUF_GPA + (64 << 10))).unwrap();
    assert_eq!(floats(&out), vec![4.0; n as usize]);
    // Destroyed: launches fail, the id can be used again.
    let destroy = Id { id: U64::new(0x500) };
    assert_eq!(g.run(&[(Opcode::GraphExecDestroy, destroy.as_bytes(), &[])]).deferred, CUDA_SUCCESS);
    assert_eq!(g.launch(0x500, 1).deferred, CUDA_ERROR_INVALID_HANDLE);
    assert_eq!(g.instantiate(0x500, &nodes, &edges), CUDA_SUCCESS);
}

#[test]
fn a_node_update_changes_what_the_next_launch_does() {
    let mut g = Guest::new();
    let p = g.alloc(1024);
    let fill7 = fill_params(p, 7, 256);
    assert_eq!(g.instantiate(0x600, &[kernel(FILL, &fill7)], &[]), CUDA_SUCCESS);
    assert_eq!(g.launch(0x600, 1).deferred, CUDA_SUCCESS);
    assert_eq!(g.read(p, 4), 7u32.to_le_bytes());
    let fill9 = fill_params(p, 9, 256);
    let mut rec = Vec::new();
    push_node(&mut rec, &kernel(FILL, &fill9));
    let u = GraphExecUpdateNode { exec_id: U64::new(0x600), index: U32::new(0), _pad: U32::new(0) };
    assert_eq!(g.run(&[(Opcode::GraphExecUpdateNode, u.as_bytes(), &rec)]).deferred, CUDA_SUCCESS);
    assert_eq!(g.launch(0x600, 1).deferred, CUDA_SUCCESS);
    assert_eq!(g.read(p, 4), 9u32.to_le_bytes());
    // Another kind of node, or a node that does not exist.
    let mut other = Vec::new();
    push_node(&mut other, &memset(p, 4, 1));
    assert_eq!(g.run(&[(Opcode::GraphExecUpdateNode, u.as_bytes(), &other)]).deferred, CUDA_ERROR_INVALID_VALUE);
    let past = GraphExecUpdateNode { index: U32::new(1), ..u };
    assert_eq!(g.run(&[(Opcode::GraphExecUpdateNode, past.as_bytes(), &rec)]).deferred, CUDA_ERROR_INVALID_VALUE);
    assert_eq!(g.read(p, 4), 9u32.to_le_bytes(), "failed updates change nothing");
}

#[test]
fn cluster_and_cooperative_launches_run_and_bad_ones_get_the_drivers_errors() {
    let mut g = Guest::new();
    let n = 4096u64;
    let p = g.alloc(n * 4);
    let words = |g: &mut Guest| -> Vec<u32> {
        g.read(p, n * 4).chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
    };
    let run = |g: &mut Guest, l: &LaunchKernelEx, params: &[u8]| {
        let a = g.run(&[(Opcode::LaunchKernelEx, l.as_bytes(), params)]);
        assert_eq!(a.status, CUDA_SUCCESS, "the synchronisation after the launch");
        a.deferred
    };
    // Clusters of 2x1x1 and 4x2x1 blocks, a cooperative launch, and both.
    for (value, grid, cluster, flags) in [
        (1, [16, 1, 1], [2, 1, 1], 0),
        (2, [8, 2, 1], [4, 2, 1], 0),
        (3, [16, 1, 1], [1, 1, 1], LAUNCH_F_COOPERATIVE),
        (4, [8, 2, 1], [2, 2, 1], LAUNCH_F_COOPERATIVE),
    ] {
        let params = fill_params(p, value, n);
        assert_eq!(
            run(&mut g, &launch_ex(FILL, &params, grid, LaunchExtra::new(cluster, flags)), &params),
            CUDA_SUCCESS
        );
        assert!(words(&mut g).iter().all(|&w| w == value), "cluster {cluster:?} flags {flags}");
    }
    let launches = g.vm.counters().calls().launches;

    // A grid that is not a multiple of the cluster, a cluster past the
    // portable 8 blocks, a cooperative grid larger than what is resident
    // at once (8 blocks of 256 threads on each of the model's 8 SMs): the
    // launch fails with the driver's error and nothing runs.
    let params = fill_params(p, 9, n);
    for (grid, cluster, flags, want) in [
        ([15, 1, 1], [2, 1, 1], 0, CUDA_ERROR_INVALID_CLUSTER_SIZE),
        ([16, 3, 1], [1, 2, 1], 0, CUDA_ERROR_INVALID_CLUSTER_SIZE),
        ([32, 1, 1], [16, 1, 1], 0, CUDA_ERROR_INVALID_CLUSTER_SIZE),
        ([65, 1, 1], [1, 1, 1], LAUNCH_F_COOPERATIVE, CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE),
    ] {
        let l = launch_ex(FILL, &params, grid, LaunchExtra::new(cluster, flags));
        assert_eq!(run(&mut g, &l, &params), want, "grid {grid:?} cluster {cluster:?}");
    }
    // A zero dimension or a cluster past any GPU's size is a malformed
    // command: the batch is refused.
    for cluster in [[0, 1, 1], [32, 1, 1]] {
        let l = launch_ex(FILL, &params, [32, 1, 1], LaunchExtra::new(cluster, 0));
        assert_eq!(g.run(&[(Opcode::LaunchKernelEx, l.as_bytes(), &params)]).status, CUDA_ERROR_INVALID_VALUE);
    }
    assert!(words(&mut g).iter().all(|&w| w == 4), "a refused launch ran");
    assert_eq!(g.vm.counters().calls().launches, launches, "refused launches are not counted");

    // 16 blocks once the function allows non-portable cluster sizes.
    let attr = FuncSetAttribute { func_id: U64::new(FILL), attr: U32::new(14), value: I32::new(1) };
    assert_eq!(g.run(&[(Opcode::FuncSetAttribute, attr.as_bytes(), &[])]).deferred, CUDA_SUCCESS);
    let l = launch_ex(FILL, &params, [32, 1, 1], LaunchExtra::new([16, 1, 1], 0));
    assert_eq!(run(&mut g, &l, &params), CUDA_SUCCESS);
    assert!(words(&mut g).iter().all(|&w| w == 9));
    g.still_serves();
}

#[test]
fn a_captured_cluster_launch_runs_in_a_graph_and_keeps_its_cluster() {
    let mut g = Guest::new();
    let p = g.alloc(1024);
    let fill5 = fill_params(p, 5, 256);
    let cluster = LaunchExtra::new([2, 1, 1], LAUNCH_F_COOPERATIVE);
    assert_eq!(g.instantiate(0x700, &[kernel_ex(FILL, &fill5, 4, cluster)], &[]), CUDA_SUCCESS);
    assert_eq!(g.launch(0x700, 2).deferred, CUDA_SUCCESS);
    assert_eq!(g.read(p, 4), 5u32.to_le_bytes());
    // New parameters, same cluster: updated. Another cluster: refused, as
    // the instantiated graph keeps the one it was built with.
    let u = GraphExecUpdateNode { exec_id: U64::new(0x700), index: U32::new(0), _pad: U32::new(0) };
    let fill6 = fill_params(p, 6, 256);
    let mut rec = Vec::new();
    push_node(&mut rec, &kernel_ex(FILL, &fill6, 4, cluster));
    assert_eq!(g.run(&[(Opcode::GraphExecUpdateNode, u.as_bytes(), &rec)]).deferred, CUDA_SUCCESS);
    let mut plain = Vec::new();
    push_node(&mut plain, &kernel(FILL, &fill5));
    assert_eq!(g.run(&[(Opcode::GraphExecUpdateNode, u.as_bytes(), &plain)]).deferred, CUDA_ERROR_NOT_SUPPORTED);
    assert_eq!(g.launch(0x700, 1).deferred, CUDA_SUCCESS);
    assert_eq!(g.read(p, 4), 6u32.to_le_bytes());
    // A node whose grid is not a multiple of its cluster is not instantiated;
    // one whose cluster the device refuses fails at launch, as on a GPU.
    let odd = kernel_ex(FILL, &fill5, 5, LaunchExtra::new([2, 1, 1], 0));
    assert_eq!(g.instantiate(0x701, &[odd], &[]), CUDA_ERROR_INVALID_CLUSTER_SIZE);
    let big = kernel_ex(FILL, &fill5, 16, LaunchExtra::new([16, 1, 1], 0));
    assert_eq!(g.instantiate(0x702, &[big], &[]), CUDA_SUCCESS);
    assert_eq!(g.launch(0x702, 1).deferred, CUDA_ERROR_INVALID_CLUSTER_SIZE);
    g.still_serves();
}

#[test]
fn malformed_graphs_get_cuda_errors_and_the_backend_keeps_serving() {
    let mut g = Guest::new();
    let p = g.alloc(4096);
    let ok = memset(p, 16, 1);
    // A cycle, an edge to a node that does not exist, a self edge, a repeat.
    for edges in [&[(0u32, 1u32), (1, 0)][..], &[(0, 2)], &[(1, 1)], &[(0, 1), (0, 1)]] {
        assert_eq!(g.instantiate(0x700, &[ok, ok], edges), CUDA_ERROR_INVALID_VALUE, "{edges:?}");
        g.still_serves();
    }
    // An unknown function, event and a kernel of no module.
    let fill = fill_params(p, 1, 16);
    assert_eq!(g.instantiate(0x700, &[kernel(0x9999, &fill)], &[]), CUDA_ERROR_INVALID_HANDLE);
    assert_eq!(g.instantiate(0x700, &[GraphNodeDesc::EventWait(0x8888)], &[]), CUDA_ERROR_INVALID_HANDLE);
    // Device ranges that are not inside one of this client's allocations.
    assert_eq!(g.instantiate(0x700, &[memset(p + 4000, 100, 0)], &[]), CUDA_ERROR_INVALID_VALUE);
    assert_eq!(g.instantiate(0x700, &[memset(0x1000, 4, 0)], &[]), CUDA_ERROR_INVALID_VALUE);
    assert_eq!(g.instantiate(0x700, &[copy(GRAPH_COPY_DTOD, p, p + 4096, 4, 0)], &[]), CUDA_ERROR_INVALID_VALUE);
    // Host memory past the end of the resource, or in a resource the client
    // may not use.
    assert_eq!(g.instantiate(0x700, &[copy(GRAPH_COPY_HTOD, p, 0, 4096, MIB - 8)], &[]), CUDA_ERROR_INVALID_VALUE);
    let foreign = GraphNodeDesc::Memcpy(GraphMemcpyNode {
        dir: U32::new(GRAPH_COPY_DTOH),
        src: U64::new(p),
        len: U64::new(16),
        host: HostRef { kind: U32::new(HOST_RESOURCE), resource: U32::new(0x4242), offset: U64::new(0) },
        ..Default::default()
    });
    assert_eq!(g.instantiate(0x700, &[foreign], &[]), CUDA_ERROR_INVALID_VALUE);
    // Garbage in the body: a node count the records do not hold.
    let (mut h, body) = graph(0x700, &[ok], &[]);
    h.num_nodes = U32::new(3);
    assert_eq!(g.call(Opcode::GraphInstantiate, &h, &body).status, CUDA_ERROR_INVALID_VALUE);
    let (h, mut body) = graph(0x700, &[ok], &[]);
    body[0..4].copy_from_slice(&99u32.to_le_bytes());
    assert_eq!(g.call(Opcode::GraphInstantiate, &h, &body).status, CUDA_ERROR_INVALID_VALUE, "unknown node kind");
    // Nothing above made an exec: the id is still free, and launching it
    // fails.
    assert_eq!(g.launch(0x700, 1).deferred, CUDA_ERROR_INVALID_HANDLE);
    assert_eq!(g.instantiate(0x700, &[ok], &[]), CUDA_SUCCESS);
    assert_eq!(g.instantiate(0x700, &[ok], &[]), CUDA_ERROR_INVALID_VALUE, "an exec id in use");
    g.still_serves();
}

#[test]
fn a_launch_after_freeing_what_the_graph_uses_fails_instead_of_touching_it() {
    let mut g = Guest::new();
    let p = g.alloc(4096);
    let fill = fill_params(p, 5, 1024);
    assert_eq!(g.instantiate(0x800, &[memset(p, 1024, 3), kernel(FILL, &fill)], &[(0, 1)]), CUDA_SUCCESS);
    assert_eq!(g.launch(0x800, 2).deferred, CUDA_SUCCESS);
    let free = Id { id: U64::new(p) };
    assert_eq!(g.run(&[(Opcode::MemFree, free.as_bytes(), &[])]).deferred, CUDA_SUCCESS);
    // The freed memory goes to the next allocation, scrubbed; the graph must
    // not write into it.
    let q = g.alloc(4096);
    assert_eq!(g.launch(0x800, 1).deferred, CUDA_ERROR_INVALID_VALUE);
    assert_eq!(g.read(q, 16), vec![0u8; 16]);
    // Nor run a function whose module was unloaded.
    let r = g.alloc(4096);
    let fill = fill_params(r, 5, 1024);
    assert_eq!(g.instantiate(0x801, &[kernel(FILL, &fill)], &[]), CUDA_SUCCESS);
    let unload = Id { id: U64::new(MODULE) };
    assert_eq!(g.run(&[(Opcode::ModuleUnload, unload.as_bytes(), &[])]).deferred, CUDA_SUCCESS);
    assert_eq!(g.launch(0x801, 1).deferred, CUDA_ERROR_INVALID_HANDLE);
    assert_eq!(g.read(r, 16), vec![0u8; 16]);
}

#[test]
fn occupancy_questions_get_the_models_answers() {
    let mut g = Guest::new();
    let item = |block: u32, smem: u32, blocks: u32| OccupancyItem {
        block: [U32::new(block), U32::new(1), U32::new(1)],
        shared_mem: U32::new(smem),
        num_blocks: U32::new(blocks),
        ..Default::default()
    };
    let ask = |g: &mut Guest, kind: u32, items: &[OccupancyItem]| {
        let o = Occupancy {
            func_id: U64::new(FILL),
            kind: U32::new(kind),
            count: U32::new(items.len() as u32),
            ..Default::default()
        };
        let a = g.call(Opcode::Occupancy, &o, items.as_bytes());
        (a.status, a.payload.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap())).collect::<Vec<_>>())
    };
    let (s, v) = ask(&mut g, OCCUPANCY_ACTIVE_BLOCKS, &[item(256, 0, 0), item(1024, 0, 0), item(128, 100 << 10, 0)]);
    assert_eq!((s, v), (CUDA_SUCCESS, vec![8, 2, 2]));
    let (s, v) = ask(&mut g, OCCUPANCY_AVAILABLE_SMEM, &[item(128, 0, 2)]);
    assert_eq!(s, CUDA_SUCCESS);
    let (_, fit) = ask(&mut g, OCCUPANCY_ACTIVE_BLOCKS, &[item(128, v[0] as u32, 0)]);
    assert_eq!(fit, vec![2], "the available shared memory lets exactly that many blocks fit");
    assert_eq!(ask(&mut g, OCCUPANCY_AVAILABLE_SMEM, &[item(1024, 0, 3)]).0, CUDA_ERROR_INVALID_VALUE);
    let o = Occupancy { func_id: U64::new(0x9999), kind: U32::new(0), count: U32::new(1), ..Default::default() };
    assert_eq!(g.call(Opcode::Occupancy, &o, item(32, 0, 0).as_bytes()).status, CUDA_ERROR_INVALID_HANDLE);
    g.still_serves();
}
