//! CUDA graphs. A graph lives in the guest until it is instantiated: nodes
//! (kernels with their packed parameters, one-dimensional copies, memsets,
//! event records and waits, empty nodes) and their dependencies, built node
//! by node or by stream capture (`capture.rs`). Instantiation checks the
//! graph and sends it whole to the backend once (`Opcode::GraphInstantiate`,
//! a sync call: its errors are the instantiation's); a launch is one
//! asynchronous command. Handles are guest ids, as for every other object.
//!
//! Host memory a graph copies to or from must be pinned (a buffer the
//! backend reaches at every launch); pageable memory is refused at
//! instantiation with CUDA_ERROR_NOT_SUPPORTED, since the backend cannot
//! read it when the graph runs.

use super::capture;
use super::launch::{check_geometry, check_shared_mem, launch_attribute, pack_params, LaunchAttr};
use super::state::{self, State};
use super::types::*;
use super::{ffi, handle, id_of, session, CuRes, Out};
use crate::client::Client;
use protocol::cuda::*;
use protocol::graph::{push_edges, push_node, GraphNodeDesc};
use protocol::*;
use std::collections::{HashMap, HashSet};
use std::ffi::{c_char, c_int, c_uint, c_ulonglong, c_void};
use std::sync::{LazyLock, Mutex, MutexGuard};
use zerocopy::little_endian::{U32, U64};

// ---- the C structures the graph API takes ------------------------------

/// `CUDA_KERNEL_NODE_PARAMS_v1` (CUDA 10.0).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CUDA_KERNEL_NODE_PARAMS_v1 {
    pub func: CUfunction,
    pub gridDimX: c_uint,
    pub gridDimY: c_uint,
    pub gridDimZ: c_uint,
    pub blockDimX: c_uint,
    pub blockDimY: c_uint,
    pub blockDimZ: c_uint,
    pub sharedMemBytes: c_uint,
    pub kernelParams: *mut *mut c_void,
    pub extra: *mut *mut c_void,
}

/// `CUDA_KERNEL_NODE_PARAMS_v2` (CUDA 12.0): a `CUkernel` and its context
/// may stand in for the function.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CUDA_KERNEL_NODE_PARAMS_v2 {
    pub func: CUfunction,
    pub gridDimX: c_uint,
    pub gridDimY: c_uint,
    pub gridDimZ: c_uint,
    pub blockDimX: c_uint,
    pub blockDimY: c_uint,
    pub blockDimZ: c_uint,
    pub sharedMemBytes: c_uint,
    pub kernelParams: *mut *mut c_void,
    pub extra: *mut *mut c_void,
    pub kern: CUkernel,
    pub ctx: CUcontext,
}

/// `CUDA_MEMCPY3D`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CUDA_MEMCPY3D {
    pub srcXInBytes: usize,
    pub srcY: usize,
    pub srcZ: usize,
    pub srcLOD: usize,
    pub srcMemoryType: c_uint,
    pub srcHost: *const c_void,
    pub srcDevice: CUdeviceptr,
    pub srcArray: *mut c_void,
    pub reserved0: *mut c_void,
    pub srcPitch: usize,
    pub srcHeight: usize,
    pub dstXInBytes: usize,
    pub dstY: usize,
    pub dstZ: usize,
    pub dstLOD: usize,
    pub dstMemoryType: c_uint,
    pub dstHost: *mut c_void,
    pub dstDevice: CUdeviceptr,
    pub dstArray: *mut c_void,
    pub reserved1: *mut c_void,
    pub dstPitch: usize,
    pub dstHeight: usize,
    pub WidthInBytes: usize,
    pub Height: usize,
    pub Depth: usize,
}

/// `CUDA_MEMSET_NODE_PARAMS`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CUDA_MEMSET_NODE_PARAMS {
    pub dst: CUdeviceptr,
    pub pitch: usize,
    pub value: c_uint,
    pub elementSize: c_uint,
    pub width: usize,
    pub height: usize,
}

/// `CUDA_GRAPH_INSTANTIATE_PARAMS`.
#[repr(C)]
pub struct CUDA_GRAPH_INSTANTIATE_PARAMS {
    pub flags: cuuint64_t,
    pub hUploadStream: CUstream,
    pub hErrNode_out: CUgraphNode,
    pub result_out: c_int,
}

/// `CUgraphExecUpdateResultInfo`.
#[repr(C)]
pub struct CUgraphExecUpdateResultInfo {
    pub result: c_int,
    pub errorNode: CUgraphNode,
    pub errorFromNode: CUgraphNode,
}

/// `CUgraphEdgeData`: ports and a dependency type, all zero for the full
/// dependencies this driver supports.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CUgraphEdgeData {
    pub from_port: u8,
    pub to_port: u8,
    pub type_: u8,
    pub reserved: [u8; 5],
}

// CUgraphInstantiateResult.
const INSTANTIATE_SUCCESS: c_int = 0;
const INSTANTIATE_ERROR: c_int = 1;
const INSTANTIATE_INVALID_STRUCTURE: c_int = 2;
const INSTANTIATE_NODE_OPERATION_NOT_SUPPORTED: c_int = 3;
const INSTANTIATE_MULTIPLE_CTXS_NOT_SUPPORTED: c_int = 4;
// CUgraphInstantiate_flags: auto-free (no allocations here, so nothing to
// free), upload (a no-op here), device launch (not supported), node
// priorities (ignored: the backend runs every node at the stream's).
const INSTANTIATE_FLAG_DEVICE_LAUNCH: u64 = 4;
const INSTANTIATE_FLAGS: u64 = 1 | 2 | 4 | 8;
// CUgraphExecUpdateResult.
const UPDATE_SUCCESS: c_int = 0;
const UPDATE_ERROR: c_int = 1;
const UPDATE_TOPOLOGY_CHANGED: c_int = 2;
const UPDATE_NODE_TYPE_CHANGED: c_int = 3;
const UPDATE_PARAMETERS_CHANGED: c_int = 5;
const UPDATE_NOT_SUPPORTED: c_int = 6;
const UPDATE_UNSUPPORTED_FUNCTION_CHANGE: c_int = 7;
const UPDATE_ATTRIBUTES_CHANGED: c_int = 8;
// CUmemorytype, as CUDA_MEMCPY3D uses it.
const MEMORYTYPE_ARRAY: c_uint = 3;
const MEMORYTYPE_UNIFIED: c_uint = 4;

// ---- the guest's graphs --------------------------------------------------

/// One side of a copy node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loc {
    Device(u64),
    Host(usize),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelNode {
    /// The handle the program gave (a function or a library kernel).
    pub given: u64,
    /// The function it runs in `ctx`.
    pub func: u64,
    pub ctx: u64,
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub shared_mem: u32,
    /// Packed at the function's parameter offsets.
    pub params: Vec<u8>,
    /// Its cluster and cooperative flag (launch attributes, which new
    /// parameters leave as they are).
    pub launch_extra: LaunchExtra,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemcpyNode {
    pub ctx: u64,
    pub dst: Loc,
    pub src: Loc,
    pub len: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemsetNode {
    pub ctx: u64,
    pub dst: u64,
    pub pitch: u64,
    pub value: u32,
    pub elem_size: u32,
    pub width: u64,
    pub height: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeKind {
    Kernel(KernelNode),
    Memcpy(MemcpyNode),
    Memset(MemsetNode),
    Empty,
    EventRecord(u64),
    EventWait(u64),
}

impl NodeKind {
    /// The `CUgraphNodeType`.
    pub fn type_code(&self) -> c_uint {
        match self {
            NodeKind::Kernel(_) => GRAPH_NODE_KERNEL,
            NodeKind::Memcpy(_) => GRAPH_NODE_MEMCPY,
            NodeKind::Memset(_) => GRAPH_NODE_MEMSET,
            NodeKind::Empty => GRAPH_NODE_EMPTY,
            NodeKind::EventRecord(_) => GRAPH_NODE_EVENT_RECORD,
            NodeKind::EventWait(_) => GRAPH_NODE_WAIT_EVENT,
        }
    }

    /// The context the node's work runs in, for the nodes that have one.
    fn ctx(&self) -> Option<u64> {
        match self {
            NodeKind::Kernel(k) => Some(k.ctx),
            NodeKind::Memcpy(m) => Some(m.ctx),
            NodeKind::Memset(m) => Some(m.ctx),
            _ => None,
        }
    }
}

#[derive(Debug)]
pub struct NodeInfo {
    pub graph: u64,
    pub kind: NodeKind,
    /// The nodes this one runs after.
    pub deps: Vec<u64>,
    /// `kernelParams` as cuGraphKernelNodeGetParams hands them out: one
    /// pointer per parameter into `KernelNode::params`.
    arg_ptrs: Vec<usize>,
}

#[derive(Debug, Default)]
pub struct GraphInfo {
    /// Node ids in the order they were added.
    pub nodes: Vec<u64>,
    /// Original node -> its copy, for a graph made by cuGraphClone.
    pub cloned_from: HashMap<u64, u64>,
    /// The capture sequence building this graph, if any.
    pub capture: Option<u64>,
}

/// An instantiated graph as the guest remembers it: enough to check and
/// encode updates.
#[derive(Debug)]
pub struct ExecInfo {
    pub ctx: u64,
    pub flags: u64,
    /// The source graph's node ids, by index (the backend's node names).
    pub index: HashMap<u64, u32>,
    /// Each node as the exec last received it.
    pub kinds: Vec<NodeKind>,
    /// Dependencies as (from, to) indices, sorted.
    pub edges: Vec<(u32, u32)>,
    /// Events its record nodes record (they count as recorded at launch).
    pub records: Vec<u64>,
}

/// Graphs, nodes, execs and the state of stream capture. Lock order: the
/// guest state (`state::lock`) before this, never the other way round.
#[derive(Debug, Default)]
pub struct Graphs {
    pub graphs: HashMap<u64, GraphInfo>,
    pub nodes: HashMap<u64, NodeInfo>,
    pub execs: HashMap<u64, ExecInfo>,
    pub capture: capture::CaptureState,
}

static GRAPHS: LazyLock<Mutex<Graphs>> = LazyLock::new(|| Mutex::new(Graphs::default()));

pub fn lock() -> MutexGuard<'static, Graphs> {
    GRAPHS.lock().unwrap_or_else(|p| p.into_inner())
}

impl Graphs {
    /// Adds node `id` of `kind` to `graph` after `deps` (nodes of that graph).
    pub fn add_node(&mut self, id: u64, graph: u64, kind: NodeKind, deps: &[u64]) -> CuRes {
        self.check_deps(graph, deps)?;
        let g = self.graphs.get_mut(&graph).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        g.nodes.push(id);
        let mut unique = Vec::with_capacity(deps.len());
        for d in deps {
            if !unique.contains(d) {
                unique.push(*d);
            }
        }
        self.nodes.insert(id, NodeInfo { graph, kind, deps: unique, arg_ptrs: Vec::new() });
        Ok(())
    }

    fn check_deps(&self, graph: u64, deps: &[u64]) -> CuRes {
        if !self.graphs.contains_key(&graph) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        match deps.iter().all(|d| self.nodes.get(d).is_some_and(|n| n.graph == graph)) {
            true => Ok(()),
            false => Err(CUDA_ERROR_INVALID_VALUE),
        }
    }

    /// `nodes` and everything they depend on, transitively.
    pub fn ancestors_of(&self, nodes: &[u64]) -> HashSet<u64> {
        let mut seen: HashSet<u64> = HashSet::new();
        let mut todo: Vec<u64> = nodes.to_vec();
        while let Some(n) = todo.pop() {
            if seen.insert(n) {
                if let Some(info) = self.nodes.get(&n) {
                    todo.extend(info.deps.iter().copied());
                }
            }
        }
        seen
    }

    /// Destroys a graph and its nodes.
    pub fn remove_graph(&mut self, graph: u64) -> Option<GraphInfo> {
        let g = self.graphs.remove(&graph)?;
        for n in &g.nodes {
            self.nodes.remove(n);
        }
        Some(g)
    }

    /// A graph's edges as (from, to) node ids.
    fn edges(&self, graph: &GraphInfo) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        for &to in &graph.nodes {
            if let Some(n) = self.nodes.get(&to) {
                out.extend(n.deps.iter().map(|&from| (from, to)));
            }
        }
        out
    }
}

/// Forgets the execs of a context that was destroyed or reset (the backend
/// destroyed them with it) and ends its captures.
pub fn purge_ctx(ctx: u64) {
    let mut g = lock();
    g.execs.retain(|_, e| e.ctx != ctx);
    capture::purge_ctx(&mut g, ctx);
}

// ---- building nodes from the API's structures --------------------------

/// The function `f` (a function or a library kernel) runs in context `ctx`,
/// loading the kernel's module there first if needed.
fn function_in(f: u64, ctx: u64) -> CuRes<u64> {
    loop {
        {
            let st = state::lock();
            if let Some(fi) = st.functions.get(&f) {
                return if fi.ctx == ctx { Ok(f) } else { Err(CUDA_ERROR_INVALID_CONTEXT) };
            }
            if !st.kernels.contains_key(&f) {
                return Err(CUDA_ERROR_INVALID_HANDLE);
            }
            if let Some(func) = st.launchable(f, ctx) {
                return Ok(func);
            }
        }
        super::module::kernel_function(f, ctx)?;
    }
}

/// A kernel node from the fields of a `CUDA_KERNEL_NODE_PARAMS`.
///
/// # Safety
/// `kernel_params` and `extra` as for `cuLaunchKernel`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn kernel_node(
    given: u64,
    ctx: u64,
    grid: [u32; 3],
    block: [u32; 3],
    shared_mem: u32,
    kernel_params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> CuRes<KernelNode> {
    let c = session()?;
    check_geometry(grid, block)?;
    let func = function_in(given, ctx)?;
    let st = state::lock();
    let fi = st.functions.get(&func).ok_or(CUDA_ERROR_INVALID_HANDLE)?;
    check_shared_mem(c, fi, shared_mem)?;
    let mut params = Vec::new();
    // SAFETY: forwarded from the caller.
    unsafe { pack_params(&mut params, &fi.params, fi.param_bytes, kernel_params, extra) }?;
    Ok(KernelNode { given, func, ctx, grid, block, shared_mem, params, launch_extra: LaunchExtra::PLAIN })
}

/// # Safety
/// `p` is NULL or a `CUDA_KERNEL_NODE_PARAMS_v1` whose argument pointers
/// are valid.
unsafe fn kernel_node_v1(p: *const CUDA_KERNEL_NODE_PARAMS_v1) -> CuRes<KernelNode> {
    // SAFETY: NULL or a struct of this layout, per the caller.
    let p = unsafe { p.as_ref() }.ok_or(CUDA_ERROR_INVALID_VALUE)?;
    session()?;
    let ctx = state::lock().current()?;
    let grid = [p.gridDimX, p.gridDimY, p.gridDimZ];
    let block = [p.blockDimX, p.blockDimY, p.blockDimZ];
    // SAFETY: forwarded.
    unsafe { kernel_node(id_of(p.func), ctx, grid, block, p.sharedMemBytes, p.kernelParams, p.extra) }
}

/// # Safety
/// As for [`kernel_node_v1`], for the v2 structure.
unsafe fn kernel_node_v2(p: *const CUDA_KERNEL_NODE_PARAMS_v2) -> CuRes<KernelNode> {
    // SAFETY: NULL or a struct of this layout, per the caller.
    let p = unsafe { p.as_ref() }.ok_or(CUDA_ERROR_INVALID_VALUE)?;
    session()?;
    let grid = [p.gridDimX, p.gridDimY, p.gridDimZ];
    let block = [p.blockDimX, p.blockDimY, p.blockDimZ];
    // The function when given; else the kernel in the context given (NULL:
    // the current one).
    let (given, ctx) = {
        let st = state::lock();
        if !p.func.is_null() {
            (id_of(p.func), st.current()?)
        } else if p.ctx.is_null() {
            (id_of(p.kern), st.current()?)
        } else if st.ctx_valid(id_of(p.ctx)) {
            (id_of(p.kern), id_of(p.ctx))
        } else {
            return Err(CUDA_ERROR_INVALID_CONTEXT);
        }
    };
    // SAFETY: forwarded.
    unsafe { kernel_node(given, ctx, grid, block, p.sharedMemBytes, p.kernelParams, p.extra) }
}

/// One side of a `CUDA_MEMCPY3D`.
fn loc(st: &State, kind: c_uint, host: usize, device: u64, x: usize) -> CuRes<Loc> {
    let at = |base: u64| base.checked_add(x as u64).ok_or(CUDA_ERROR_INVALID_VALUE);
    match kind {
        CU_MEMORYTYPE_HOST => Ok(Loc::Host(host.checked_add(x).ok_or(CUDA_ERROR_INVALID_VALUE)?)),
        CU_MEMORYTYPE_DEVICE => Ok(Loc::Device(at(device)?)),
        MEMORYTYPE_UNIFIED => match st.alloc_containing(device) {
            Some(_) => Ok(Loc::Device(at(device)?)),
            None => Ok(Loc::Host(usize::try_from(at(device)?).map_err(|_| CUDA_ERROR_INVALID_VALUE)?)),
        },
        MEMORYTYPE_ARRAY => {
            crate::log::unsupported("CUDA arrays in graph copies");
            Err(CUDA_ERROR_NOT_SUPPORTED)
        }
        _ => Err(CUDA_ERROR_INVALID_VALUE),
    }
}

/// Checks a copy's device sides and host pointers.
pub fn check_memcpy(st: &State, m: &MemcpyNode) -> CuRes {
    for l in [m.dst, m.src] {
        match l {
            Loc::Device(d) => {
                st.check_device_range(d, m.len)?;
            }
            Loc::Host(0) if m.len > 0 => return Err(CUDA_ERROR_INVALID_VALUE),
            Loc::Host(_) => {}
        }
    }
    if matches!((m.dst, m.src), (Loc::Host(_), Loc::Host(_))) {
        crate::log::unsupported("host-to-host copies in graphs");
        return Err(CUDA_ERROR_NOT_SUPPORTED);
    }
    Ok(())
}

/// A copy node from a `CUDA_MEMCPY3D` (one-dimensional copies only).
fn memcpy_node(p: &CUDA_MEMCPY3D, ctx: u64) -> CuRes<MemcpyNode> {
    if p.Height == 0 || p.Depth == 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    if p.Height > 1 || p.Depth > 1 || (p.srcY | p.srcZ | p.dstY | p.dstZ | p.srcLOD | p.dstLOD) != 0 {
        crate::log::unsupported("2D and 3D copies in graphs");
        return Err(CUDA_ERROR_NOT_SUPPORTED);
    }
    let st = state::lock();
    let src = loc(&st, p.srcMemoryType, p.srcHost as usize, p.srcDevice, p.srcXInBytes)?;
    let dst = loc(&st, p.dstMemoryType, p.dstHost as usize, p.dstDevice, p.dstXInBytes)?;
    let m = MemcpyNode { ctx, dst, src, len: p.WidthInBytes as u64 };
    check_memcpy(&st, &m)?;
    Ok(m)
}

/// The `CUDA_MEMCPY3D` a copy node was made from.
fn memcpy_params(m: &MemcpyNode) -> CUDA_MEMCPY3D {
    let side = |l: Loc| match l {
        Loc::Device(d) => (CU_MEMORYTYPE_DEVICE, 0usize, d),
        Loc::Host(h) => (CU_MEMORYTYPE_HOST, h, 0u64),
    };
    let (st, sh, sd) = side(m.src);
    let (dt, dh, dd) = side(m.dst);
    CUDA_MEMCPY3D {
        srcXInBytes: 0,
        srcY: 0,
        srcZ: 0,
        srcLOD: 0,
        srcMemoryType: st,
        srcHost: sh as *const c_void,
        srcDevice: sd,
        srcArray: std::ptr::null_mut(),
        reserved0: std::ptr::null_mut(),
        srcPitch: 0,
        srcHeight: 0,
        dstXInBytes: 0,
        dstY: 0,
        dstZ: 0,
        dstLOD: 0,
        dstMemoryType: dt,
        dstHost: dh as *mut c_void,
        dstDevice: dd,
        dstArray: std::ptr::null_mut(),
        reserved1: std::ptr::null_mut(),
        dstPitch: 0,
        dstHeight: 0,
        WidthInBytes: m.len as usize,
        Height: 1,
        Depth: 1,
    }
}

/// Checks a memset node's shape and range.
pub fn check_memset(st: &State, m: &MemsetNode) -> CuRes {
    if !matches!(m.elem_size, 1 | 2 | 4) || !m.dst.is_multiple_of(m.elem_size as u64) {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let row = m.width.checked_mul(m.elem_size as u64).ok_or(CUDA_ERROR_INVALID_VALUE)?;
    if m.height > 1 && row > m.pitch {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    if m.width == 0 || m.height == 0 {
        return Ok(());
    }
    let bytes = (m.height - 1).checked_mul(m.pitch).and_then(|b| b.checked_add(row)).ok_or(CUDA_ERROR_INVALID_VALUE)?;
    st.check_device_range(m.dst, bytes).map(|_| ())
}

fn memset_node(p: &CUDA_MEMSET_NODE_PARAMS, ctx: u64) -> CuRes<MemsetNode> {
    let m = MemsetNode {
        ctx,
        dst: p.dst,
        pitch: p.pitch as u64,
        value: p.value,
        elem_size: p.elementSize,
        width: p.width as u64,
        height: p.height as u64,
    };
    check_memset(&state::lock(), &m)?;
    Ok(m)
}

/// The context a copy or memset node runs in: `ctx` when given, else the
/// current one.
fn node_ctx(ctx: CUcontext) -> CuRes<u64> {
    session()?;
    let st = state::lock();
    match id_of(ctx) {
        0 => st.current(),
        id if st.ctx_valid(id) => Ok(id),
        _ => Err(CUDA_ERROR_INVALID_CONTEXT),
    }
}

fn check_event(id: u64) -> CuRes {
    session()?;
    match state::lock().events.contains_key(&id) {
        true => Ok(()),
        false => Err(CUDA_ERROR_INVALID_HANDLE),
    }
}

// ---- graphs and nodes: the exports ---------------------------------------

/// Reads a dependency array.
///
/// # Safety
/// `deps` is NULL (then `n` must be 0) or holds `n` node handles.
pub(super) unsafe fn dep_list(deps: *const CUgraphNode, n: usize) -> CuRes<Vec<u64>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    if deps.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    // SAFETY: `n` handles, per the caller.
    Ok(unsafe { std::slice::from_raw_parts(deps, n) }.iter().map(|&d| id_of(d)).collect())
}

/// Edge data must be absent or all zero: only full dependencies exist here.
///
/// # Safety
/// `data` is NULL or holds `n` entries.
pub(super) unsafe fn check_edge_data(data: *const CUgraphEdgeData, n: usize) -> CuRes {
    if data.is_null() || n == 0 {
        return Ok(());
    }
    // SAFETY: `n` entries, per the caller.
    let all_default = unsafe { std::slice::from_raw_parts(data, n) }.iter().all(|e| *e == CUgraphEdgeData::default());
    if all_default {
        Ok(())
    } else {
        crate::log::unsupported("graph edges with ports or programmatic dependencies");
        Err(CUDA_ERROR_NOT_SUPPORTED)
    }
}

/// Adds a node to a graph and returns its handle.
///
/// # Safety
/// `out` is NULL or writable; `deps` as for [`dep_list`].
unsafe fn add(out: *mut CUgraphNode, graph: CUgraph, deps: *const CUgraphNode, n: usize, kind: NodeKind) -> CuRes {
    // SAFETY: output argument and dependency array per the CUDA API.
    let (out, deps) = unsafe { (Out::new(out)?, dep_list(deps, n)?) };
    let c = session()?;
    let id = c.new_id();
    lock().add_node(id, id_of(graph), kind, &deps)?;
    out.set(handle(id));
    Ok(())
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphCreate(phGraph: *mut CUgraph, flags: c_uint) -> CUresult {
    ffi(|| {
        // SAFETY: output argument per the CUDA API.
        let out = unsafe { Out::new(phGraph) }?;
        if flags != 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let id = session()?.new_id();
        lock().graphs.insert(id, GraphInfo::default());
        out.set(handle(id));
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphDestroy(hGraph: CUgraph) -> CUresult {
    ffi(|| {
        session()?;
        let mut g = lock();
        // A graph being captured into belongs to the capture until it ends.
        if g.graphs.get(&id_of(hGraph)).ok_or(CUDA_ERROR_INVALID_VALUE)?.capture.is_some() {
            return Err(CUDA_ERROR_ILLEGAL_STATE);
        }
        g.remove_graph(id_of(hGraph));
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphAddEmptyNode(
    phGraphNode: *mut CUgraphNode,
    hGraph: CUgraph,
    dependencies: *const CUgraphNode,
    numDependencies: usize,
) -> CUresult {
    // SAFETY: the caller's contract, forwarded.
    ffi(|| unsafe { add(phGraphNode, hGraph, dependencies, numDependencies, NodeKind::Empty) })
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphAddKernelNode(
    phGraphNode: *mut CUgraphNode,
    hGraph: CUgraph,
    dependencies: *const CUgraphNode,
    numDependencies: usize,
    nodeParams: *const CUDA_KERNEL_NODE_PARAMS_v1,
) -> CUresult {
    ffi(|| {
        // SAFETY: the caller's contract, forwarded.
        let k = unsafe { kernel_node_v1(nodeParams) }?;
        // SAFETY: as above.
        unsafe { add(phGraphNode, hGraph, dependencies, numDependencies, NodeKind::Kernel(k)) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphAddKernelNode_v2(
    phGraphNode: *mut CUgraphNode,
    hGraph: CUgraph,
    dependencies: *const CUgraphNode,
    numDependencies: usize,
    nodeParams: *const CUDA_KERNEL_NODE_PARAMS_v2,
) -> CUresult {
    ffi(|| {
        // SAFETY: the caller's contract, forwarded.
        let k = unsafe { kernel_node_v2(nodeParams) }?;
        // SAFETY: as above.
        unsafe { add(phGraphNode, hGraph, dependencies, numDependencies, NodeKind::Kernel(k)) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphAddMemcpyNode(
    phGraphNode: *mut CUgraphNode,
    hGraph: CUgraph,
    dependencies: *const CUgraphNode,
    numDependencies: usize,
    copyParams: *const CUDA_MEMCPY3D,
    ctx: CUcontext,
) -> CUresult {
    ffi(|| {
        // SAFETY: NULL or a CUDA_MEMCPY3D per the CUDA API.
        let p = unsafe { copyParams.as_ref() }.ok_or(CUDA_ERROR_INVALID_VALUE)?;
        let m = memcpy_node(p, node_ctx(ctx)?)?;
        // SAFETY: the caller's contract, forwarded.
        unsafe { add(phGraphNode, hGraph, dependencies, numDependencies, NodeKind::Memcpy(m)) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphAddMemsetNode(
    phGraphNode: *mut CUgraphNode,
    hGraph: CUgraph,
    dependencies: *const CUgraphNode,
    numDependencies: usize,
    memsetParams: *const CUDA_MEMSET_NODE_PARAMS,
    ctx: CUcontext,
) -> CUresult {
    ffi(|| {
        // SAFETY: NULL or a CUDA_MEMSET_NODE_PARAMS per the CUDA API.
        let p = unsafe { memsetParams.as_ref() }.ok_or(CUDA_ERROR_INVALID_VALUE)?;
        let m = memset_node(p, node_ctx(ctx)?)?;
        // SAFETY: the caller's contract, forwarded.
        unsafe { add(phGraphNode, hGraph, dependencies, numDependencies, NodeKind::Memset(m)) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphAddEventRecordNode(
    phGraphNode: *mut CUgraphNode,
    hGraph: CUgraph,
    dependencies: *const CUgraphNode,
    numDependencies: usize,
    event: CUevent,
) -> CUresult {
    ffi(|| {
        check_event(id_of(event))?;
        // SAFETY: the caller's contract, forwarded.
        unsafe { add(phGraphNode, hGraph, dependencies, numDependencies, NodeKind::EventRecord(id_of(event))) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphAddEventWaitNode(
    phGraphNode: *mut CUgraphNode,
    hGraph: CUgraph,
    dependencies: *const CUgraphNode,
    numDependencies: usize,
    event: CUevent,
) -> CUresult {
    ffi(|| {
        check_event(id_of(event))?;
        // SAFETY: the caller's contract, forwarded.
        unsafe { add(phGraphNode, hGraph, dependencies, numDependencies, NodeKind::EventWait(id_of(event))) }
    })
}

/// Writes up to `*count` handles to `out` (NULL: only the count), NULL in
/// the slots past the end, and the number written (or available) to `count`.
///
/// # Safety
/// `count` is NULL or readable and writable; `out` NULL or `*count` slots.
unsafe fn write_list(ids: &[u64], out: *mut CUgraphNode, count: *mut usize) -> CuRes {
    if count.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    if out.is_null() {
        // SAFETY: non-NULL, writable per the caller.
        unsafe { count.write_unaligned(ids.len()) };
        return Ok(());
    }
    // SAFETY: readable per the caller.
    let room = unsafe { count.read_unaligned() };
    for i in 0..room {
        // SAFETY: `room` slots per the caller.
        unsafe { out.add(i).write_unaligned(ids.get(i).map_or(std::ptr::null_mut(), |&id| handle(id))) };
    }
    // SAFETY: as above.
    unsafe { count.write_unaligned(room.min(ids.len())) };
    Ok(())
}

/// Zero edge data for the entries written by [`write_list`].
///
/// # Safety
/// `data` is NULL or holds `*count` entries (count as after `write_list`).
unsafe fn zero_edge_data(data: *mut CUgraphEdgeData, out_was_null: bool, count: *const usize) {
    if data.is_null() || out_was_null {
        return;
    }
    // SAFETY: per the caller.
    let n = unsafe { count.read_unaligned() };
    for i in 0..n {
        // SAFETY: `n` entries per the caller.
        unsafe { data.add(i).write_unaligned(CUgraphEdgeData::default()) };
    }
}

fn graph_nodes(graph: CUgraph, roots_only: bool) -> CuRes<Vec<u64>> {
    session()?;
    let g = lock();
    let info = g.graphs.get(&id_of(graph)).ok_or(CUDA_ERROR_INVALID_VALUE)?;
    Ok(info
        .nodes
        .iter()
        .copied()
        .filter(|n| !roots_only || g.nodes.get(n).is_some_and(|i| i.deps.is_empty()))
        .collect())
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphGetNodes(hGraph: CUgraph, nodes: *mut CUgraphNode, numNodes: *mut usize) -> CUresult {
    // SAFETY: the caller's contract, forwarded.
    ffi(|| unsafe { write_list(&graph_nodes(hGraph, false)?, nodes, numNodes) })
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphGetRootNodes(
    hGraph: CUgraph,
    rootNodes: *mut CUgraphNode,
    numRootNodes: *mut usize,
) -> CUresult {
    // SAFETY: the caller's contract, forwarded.
    ffi(|| unsafe { write_list(&graph_nodes(hGraph, true)?, rootNodes, numRootNodes) })
}

/// # Safety
/// `from`/`to` are both NULL or both hold `*numEdges` slots; `edge_data`
/// NULL or as many.
unsafe fn get_edges(
    graph: CUgraph,
    from: *mut CUgraphNode,
    to: *mut CUgraphNode,
    edge_data: *mut CUgraphEdgeData,
    num: *mut usize,
) -> CuRes {
    session()?;
    if from.is_null() != to.is_null() || num.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let edges = {
        let g = lock();
        let info = g.graphs.get(&id_of(graph)).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        g.edges(info)
    };
    let (f, t): (Vec<u64>, Vec<u64>) = edges.into_iter().unzip();
    // SAFETY: per the caller; `num` is written twice with the same value.
    unsafe {
        let room = if from.is_null() { 0 } else { num.read_unaligned() };
        write_list(&f, from, num)?;
        if !to.is_null() {
            num.write_unaligned(room);
            write_list(&t, to, num)?;
        }
        zero_edge_data(edge_data, from.is_null(), num);
    }
    Ok(())
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphGetEdges(
    hGraph: CUgraph,
    from: *mut CUgraphNode,
    to: *mut CUgraphNode,
    numEdges: *mut usize,
) -> CUresult {
    // SAFETY: the caller's contract, forwarded.
    ffi(|| unsafe { get_edges(hGraph, from, to, std::ptr::null_mut(), numEdges) })
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphGetEdges_v2(
    hGraph: CUgraph,
    from: *mut CUgraphNode,
    to: *mut CUgraphNode,
    edgeData: *mut CUgraphEdgeData,
    numEdges: *mut usize,
) -> CUresult {
    // SAFETY: the caller's contract, forwarded.
    ffi(|| unsafe { get_edges(hGraph, from, to, edgeData, numEdges) })
}

/// A node's dependencies (`dependents` false) or the nodes that depend on
/// it.
fn neighbours(node: CUgraphNode, dependents: bool) -> CuRes<Vec<u64>> {
    session()?;
    let g = lock();
    let id = id_of(node);
    let n = g.nodes.get(&id).ok_or(CUDA_ERROR_INVALID_VALUE)?;
    if !dependents {
        return Ok(n.deps.clone());
    }
    let graph = g.graphs.get(&n.graph).ok_or(CUDA_ERROR_INVALID_VALUE)?;
    Ok(graph.nodes.iter().copied().filter(|m| g.nodes.get(m).is_some_and(|i| i.deps.contains(&id))).collect())
}

macro_rules! neighbour_exports {
    ($($name:ident, $name_v2:ident, $dependents:expr;)*) => {$(
        #[no_mangle]
        pub unsafe extern "C" fn $name(hNode: CUgraphNode, nodes: *mut CUgraphNode, num: *mut usize) -> CUresult {
            // SAFETY: the caller's contract, forwarded.
            ffi(|| unsafe { write_list(&neighbours(hNode, $dependents)?, nodes, num) })
        }

        #[no_mangle]
        pub unsafe extern "C" fn $name_v2(
            hNode: CUgraphNode,
            nodes: *mut CUgraphNode,
            edgeData: *mut CUgraphEdgeData,
            num: *mut usize,
        ) -> CUresult {
            // SAFETY: the caller's contract, forwarded.
            ffi(|| unsafe {
                write_list(&neighbours(hNode, $dependents)?, nodes, num)?;
                zero_edge_data(edgeData, nodes.is_null(), num);
                Ok(())
            })
        }
    )*};
}

neighbour_exports! {
    cuGraphNodeGetDependencies, cuGraphNodeGetDependencies_v2, false;
    cuGraphNodeGetDependentNodes, cuGraphNodeGetDependentNodes_v2, true;
}

/// Adds (`add`) or removes dependency edges.
///
/// # Safety
/// `from` and `to` hold `n` handles each; `data` NULL or `n` entries.
unsafe fn change_edges(
    graph: CUgraph,
    from: *const CUgraphNode,
    to: *const CUgraphNode,
    data: *const CUgraphEdgeData,
    n: usize,
    add: bool,
) -> CuRes {
    session()?;
    // SAFETY: per the caller.
    let (from, to) = unsafe {
        check_edge_data(data, n)?;
        (dep_list(from, n)?, dep_list(to, n)?)
    };
    let graph = id_of(graph);
    let mut g = lock();
    g.check_deps(graph, &from)?;
    g.check_deps(graph, &to)?;
    // Check every edge before changing any.
    for (&f, &t) in from.iter().zip(&to) {
        let present = g.nodes.get(&t).is_some_and(|i| i.deps.contains(&f));
        if f == t || present == add {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
    }
    for (&f, &t) in from.iter().zip(&to) {
        if let Some(i) = g.nodes.get_mut(&t) {
            if add {
                i.deps.push(f);
            } else {
                i.deps.retain(|&d| d != f);
            }
        }
    }
    Ok(())
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphAddDependencies(
    hGraph: CUgraph,
    from: *const CUgraphNode,
    to: *const CUgraphNode,
    numDependencies: usize,
) -> CUresult {
    // SAFETY: the caller's contract, forwarded.
    ffi(|| unsafe { change_edges(hGraph, from, to, std::ptr::null(), numDependencies, true) })
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphAddDependencies_v2(
    hGraph: CUgraph,
    from: *const CUgraphNode,
    to: *const CUgraphNode,
    edgeData: *const CUgraphEdgeData,
    numDependencies: usize,
) -> CUresult {
    // SAFETY: the caller's contract, forwarded.
    ffi(|| unsafe { change_edges(hGraph, from, to, edgeData, numDependencies, true) })
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphRemoveDependencies(
    hGraph: CUgraph,
    from: *const CUgraphNode,
    to: *const CUgraphNode,
    numDependencies: usize,
) -> CUresult {
    // SAFETY: the caller's contract, forwarded.
    ffi(|| unsafe { change_edges(hGraph, from, to, std::ptr::null(), numDependencies, false) })
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphRemoveDependencies_v2(
    hGraph: CUgraph,
    from: *const CUgraphNode,
    to: *const CUgraphNode,
    edgeData: *const CUgraphEdgeData,
    numDependencies: usize,
) -> CUresult {
    // SAFETY: the caller's contract, forwarded.
    ffi(|| unsafe { change_edges(hGraph, from, to, edgeData, numDependencies, false) })
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphDestroyNode(hNode: CUgraphNode) -> CUresult {
    ffi(|| {
        session()?;
        let id = id_of(hNode);
        let mut g = lock();
        let node = g.nodes.remove(&id).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        if let Some(graph) = g.graphs.get_mut(&node.graph) {
            graph.nodes.retain(|&n| n != id);
        }
        for n in g.nodes.values_mut() {
            n.deps.retain(|&d| d != id);
        }
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphNodeGetType(hNode: CUgraphNode, type_: *mut c_uint) -> CUresult {
    ffi(|| {
        // SAFETY: output argument per the CUDA API.
        let out = unsafe { Out::new(type_) }?;
        session()?;
        out.set(lock().nodes.get(&id_of(hNode)).ok_or(CUDA_ERROR_INVALID_VALUE)?.kind.type_code());
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphClone(phGraphClone: *mut CUgraph, originalGraph: CUgraph) -> CUresult {
    ffi(|| {
        // SAFETY: output argument per the CUDA API.
        let out = unsafe { Out::new(phGraphClone) }?;
        let c = session()?;
        let mut g = lock();
        let orig = g.graphs.get(&id_of(originalGraph)).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        let old: Vec<u64> = orig.nodes.clone();
        let map: HashMap<u64, u64> = old.iter().map(|&n| (n, c.new_id())).collect();
        let id = c.new_id();
        g.graphs.insert(id, GraphInfo { nodes: Vec::new(), cloned_from: map.clone(), capture: None });
        for n in &old {
            let Some(info) = g.nodes.get(n) else { continue };
            let deps: Vec<u64> = info.deps.iter().filter_map(|d| map.get(d).copied()).collect();
            let kind = info.kind.clone();
            g.add_node(map[n], id, kind, &deps)?;
        }
        out.set(handle(id));
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphNodeFindInClone(
    phNode: *mut CUgraphNode,
    hOriginalNode: CUgraphNode,
    hClonedGraph: CUgraph,
) -> CUresult {
    ffi(|| {
        // SAFETY: output argument per the CUDA API.
        let out = unsafe { Out::new(phNode) }?;
        session()?;
        let g = lock();
        let clone = g.graphs.get(&id_of(hClonedGraph)).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        let n = clone.cloned_from.get(&id_of(hOriginalNode)).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        if !g.nodes.contains_key(n) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        out.set(handle(*n));
        Ok(())
    })
}

/// Runs `f` on a node's kind, if the node is of the kind `f` accepts.
fn with_node<T>(node: CUgraphNode, f: impl FnOnce(&mut NodeInfo) -> CuRes<T>) -> CuRes<T> {
    session()?;
    let mut g = lock();
    f(g.nodes.get_mut(&id_of(node)).ok_or(CUDA_ERROR_INVALID_VALUE)?)
}

/// Fills a kernel node's parameter pointers and returns them with the node.
fn kernel_of(node: CUgraphNode) -> CuRes<(KernelNode, *mut *mut c_void)> {
    let layout = |f: u64| state::lock().functions.get(&f).map(|fi| fi.params.clone());
    let func = with_node(node, |n| match &n.kind {
        NodeKind::Kernel(k) => Ok(k.func),
        _ => Err(CUDA_ERROR_INVALID_VALUE),
    })?;
    let params = layout(func).unwrap_or_default();
    with_node(node, |n| {
        let NodeKind::Kernel(k) = &n.kind else { return Err(CUDA_ERROR_INVALID_VALUE) };
        let base = k.params.as_ptr() as usize;
        n.arg_ptrs =
            params.iter().filter(|p| (p.offset as usize) < k.params.len()).map(|p| base + p.offset as usize).collect();
        Ok((k.clone(), n.arg_ptrs.as_mut_ptr() as *mut *mut c_void))
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphKernelNodeGetParams(
    hNode: CUgraphNode,
    nodeParams: *mut CUDA_KERNEL_NODE_PARAMS_v1,
) -> CUresult {
    ffi(|| {
        // SAFETY: output argument per the CUDA API.
        let out = unsafe { Out::new(nodeParams) }?;
        let (k, args) = kernel_of(hNode)?;
        out.set(CUDA_KERNEL_NODE_PARAMS_v1 {
            func: handle(k.given),
            gridDimX: k.grid[0],
            gridDimY: k.grid[1],
            gridDimZ: k.grid[2],
            blockDimX: k.block[0],
            blockDimY: k.block[1],
            blockDimZ: k.block[2],
            sharedMemBytes: k.shared_mem,
            kernelParams: args,
            extra: std::ptr::null_mut(),
        });
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphKernelNodeGetParams_v2(
    hNode: CUgraphNode,
    nodeParams: *mut CUDA_KERNEL_NODE_PARAMS_v2,
) -> CUresult {
    ffi(|| {
        // SAFETY: output argument per the CUDA API.
        let out = unsafe { Out::new(nodeParams) }?;
        let (k, args) = kernel_of(hNode)?;
        out.set(CUDA_KERNEL_NODE_PARAMS_v2 {
            func: handle(k.func),
            gridDimX: k.grid[0],
            gridDimY: k.grid[1],
            gridDimZ: k.grid[2],
            blockDimX: k.block[0],
            blockDimY: k.block[1],
            blockDimZ: k.block[2],
            sharedMemBytes: k.shared_mem,
            kernelParams: args,
            extra: std::ptr::null_mut(),
            kern: std::ptr::null_mut(),
            ctx: handle(k.ctx),
        });
        Ok(())
    })
}

fn set_kind(node: CUgraphNode, code: c_uint, mut kind: NodeKind) -> CuRes {
    with_node(node, |n| {
        if n.kind.type_code() != code {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        keep_attributes(&n.kind, &mut kind);
        n.kind = kind;
        n.arg_ptrs.clear();
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphKernelNodeSetParams(
    hNode: CUgraphNode,
    nodeParams: *const CUDA_KERNEL_NODE_PARAMS_v1,
) -> CUresult {
    ffi(|| {
        // SAFETY: the caller's contract, forwarded.
        let k = unsafe { kernel_node_v1(nodeParams) }?;
        set_kind(hNode, GRAPH_NODE_KERNEL, NodeKind::Kernel(k))
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphKernelNodeSetParams_v2(
    hNode: CUgraphNode,
    nodeParams: *const CUDA_KERNEL_NODE_PARAMS_v2,
) -> CUresult {
    ffi(|| {
        // SAFETY: the caller's contract, forwarded.
        let k = unsafe { kernel_node_v2(nodeParams) }?;
        set_kind(hNode, GRAPH_NODE_KERNEL, NodeKind::Kernel(k))
    })
}

/// `CUlaunchAttributeID`s a kernel node carries to the backend.
const ATTR_COOPERATIVE: c_int = 2;
const ATTR_CLUSTER_DIMENSION: c_int = 4;

/// cuGraphKernelNodeSetAttribute: the cluster dimension and the
/// cooperative flag go into the node (and to the backend with it); hints
/// are taken as hints, as for cuLaunchKernelEx; what a node cannot carry
/// (events) is NOT_SUPPORTED rather than dropped.
///
/// # Safety
/// `value` is NULL or a `CUkernelNodeAttrValue` (64 bytes).
unsafe fn set_node_attribute(node: CUgraphNode, attr: c_int, value: *const c_void) -> CuRes {
    if value.is_null() || attr < 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let mut a = CUlaunchAttribute { id: attr as c_uint, pad: [0; 4], value: [0; 64] };
    // SAFETY: a CUkernelNodeAttrValue is the 64-byte launch attribute union.
    unsafe { std::ptr::copy_nonoverlapping(value as *const u8, a.value.as_mut_ptr(), a.value.len()) };
    let what = launch_attribute(&a)?;
    with_node(node, |n| {
        let NodeKind::Kernel(k) = &mut n.kind else { return Err(CUDA_ERROR_INVALID_VALUE) };
        let x = &mut k.launch_extra;
        match what {
            LaunchAttr::Same => {}
            LaunchAttr::Cluster(dims) => *x = LaunchExtra::new(dims, x.flags.get()),
            LaunchAttr::Cooperative(on) => {
                let flags = if on { LAUNCH_F_COOPERATIVE } else { 0 };
                *x = LaunchExtra::new(x.cluster(), (x.flags.get() & !LAUNCH_F_COOPERATIVE) | flags)
            }
            LaunchAttr::RecordAfter(..) => {
                crate::log::unsupported("cuGraphKernelNodeSetAttribute with an event");
                return Err(CUDA_ERROR_NOT_SUPPORTED);
            }
        }
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphKernelNodeSetAttribute(
    hNode: CUgraphNode,
    attr: c_int,
    value: *const c_void,
) -> CUresult {
    // SAFETY: the caller's contract, forwarded.
    ffi(|| unsafe { set_node_attribute(hNode, attr, value) })
}

/// cuGraphKernelNodeGetAttribute: the cluster dimension and cooperative
/// flag the node carries; other attributes are not kept.
#[no_mangle]
pub unsafe extern "C" fn cuGraphKernelNodeGetAttribute(
    hNode: CUgraphNode,
    attr: c_int,
    value_out: *mut c_void,
) -> CUresult {
    ffi(|| {
        if value_out.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let x = with_node(hNode, |n| match &n.kind {
            NodeKind::Kernel(k) => Ok(k.launch_extra),
            _ => Err(CUDA_ERROR_INVALID_VALUE),
        })?;
        let words: Vec<u32> = match attr {
            ATTR_CLUSTER_DIMENSION => x.cluster().to_vec(),
            ATTR_COOPERATIVE => vec![x.cooperative() as u32],
            _ => {
                crate::log::unsupported(&format!("cuGraphKernelNodeGetAttribute id {attr}"));
                return Err(CUDA_ERROR_NOT_SUPPORTED);
            }
        };
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
        // SAFETY: output argument per the CUDA API, a 64-byte union.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), value_out as *mut u8, bytes.len()) };
        Ok(())
    })
}

/// cuGraphKernelNodeCopyAttributes: the attributes the source node carries.
#[no_mangle]
pub unsafe extern "C" fn cuGraphKernelNodeCopyAttributes(dst: CUgraphNode, src: CUgraphNode) -> CUresult {
    ffi(|| {
        let x = with_node(src, |n| match &n.kind {
            NodeKind::Kernel(k) => Ok(k.launch_extra),
            _ => Err(CUDA_ERROR_INVALID_VALUE),
        })?;
        with_node(dst, |n| match &mut n.kind {
            NodeKind::Kernel(k) => {
                k.launch_extra = x;
                Ok(())
            }
            _ => Err(CUDA_ERROR_INVALID_VALUE),
        })
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphMemcpyNodeGetParams(hNode: CUgraphNode, nodeParams: *mut CUDA_MEMCPY3D) -> CUresult {
    ffi(|| {
        // SAFETY: output argument per the CUDA API.
        let out = unsafe { Out::new(nodeParams) }?;
        out.set(with_node(hNode, |n| match &n.kind {
            NodeKind::Memcpy(m) => Ok(memcpy_params(m)),
            _ => Err(CUDA_ERROR_INVALID_VALUE),
        })?);
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphMemcpyNodeSetParams(hNode: CUgraphNode, nodeParams: *const CUDA_MEMCPY3D) -> CUresult {
    ffi(|| {
        // SAFETY: NULL or a CUDA_MEMCPY3D per the CUDA API.
        let p = unsafe { nodeParams.as_ref() }.ok_or(CUDA_ERROR_INVALID_VALUE)?;
        let ctx = with_node(hNode, |n| n.kind.ctx().ok_or(CUDA_ERROR_INVALID_VALUE))?;
        set_kind(hNode, GRAPH_NODE_MEMCPY, NodeKind::Memcpy(memcpy_node(p, ctx)?))
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphMemsetNodeGetParams(
    hNode: CUgraphNode,
    nodeParams: *mut CUDA_MEMSET_NODE_PARAMS,
) -> CUresult {
    ffi(|| {
        // SAFETY: output argument per the CUDA API.
        let out = unsafe { Out::new(nodeParams) }?;
        out.set(with_node(hNode, |n| match &n.kind {
            NodeKind::Memset(m) => Ok(CUDA_MEMSET_NODE_PARAMS {
                dst: m.dst,
                pitch: m.pitch as usize,
                value: m.value,
                elementSize: m.elem_size,
                width: m.width as usize,
                height: m.height as usize,
            }),
            _ => Err(CUDA_ERROR_INVALID_VALUE),
        })?);
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphMemsetNodeSetParams(
    hNode: CUgraphNode,
    nodeParams: *const CUDA_MEMSET_NODE_PARAMS,
) -> CUresult {
    ffi(|| {
        // SAFETY: NULL or a CUDA_MEMSET_NODE_PARAMS per the CUDA API.
        let p = unsafe { nodeParams.as_ref() }.ok_or(CUDA_ERROR_INVALID_VALUE)?;
        let ctx = with_node(hNode, |n| n.kind.ctx().ok_or(CUDA_ERROR_INVALID_VALUE))?;
        set_kind(hNode, GRAPH_NODE_MEMSET, NodeKind::Memset(memset_node(p, ctx)?))
    })
}

macro_rules! event_node_exports {
    ($($get:ident, $set:ident, $code:expr, $variant:ident;)*) => {$(
        #[no_mangle]
        pub unsafe extern "C" fn $get(hNode: CUgraphNode, event_out: *mut CUevent) -> CUresult {
            ffi(|| {
                // SAFETY: output argument per the CUDA API.
                let out = unsafe { Out::new(event_out) }?;
                out.set(handle(with_node(hNode, |n| match n.kind {
                    NodeKind::$variant(e) => Ok(e),
                    _ => Err(CUDA_ERROR_INVALID_VALUE),
                })?));
                Ok(())
            })
        }

        #[no_mangle]
        pub unsafe extern "C" fn $set(hNode: CUgraphNode, event: CUevent) -> CUresult {
            ffi(|| {
                check_event(id_of(event))?;
                set_kind(hNode, $code, NodeKind::$variant(id_of(event)))
            })
        }
    )*};
}

event_node_exports! {
    cuGraphEventRecordNodeGetEvent, cuGraphEventRecordNodeSetEvent, GRAPH_NODE_EVENT_RECORD, EventRecord;
    cuGraphEventWaitNodeGetEvent, cuGraphEventWaitNodeSetEvent, GRAPH_NODE_WAIT_EVENT, EventWait;
}

// ---- instantiation -------------------------------------------------------

/// Why a graph could not be instantiated: the CUDA error, the
/// `CUgraphInstantiateResult`, the node at fault and a message for the log
/// buffer of the oldest entry point.
struct InstantiateError {
    code: CUresult,
    result: c_int,
    node: u64,
    why: String,
}

impl InstantiateError {
    fn new(code: CUresult, result: c_int, node: u64, why: impl Into<String>) -> Self {
        InstantiateError { code, result, node, why: why.into() }
    }
}

/// The wire record of a node of an exec of context `ctx`: every handle and
/// range checked against the guest's tables, host memory found in a pinned
/// buffer the backend can reach.
fn wire_node(st: &State, c: &Client, ctx: u64, kind: &NodeKind, buf: &mut Vec<u8>) -> Result<(), (CUresult, String)> {
    let fail = |code, why: &str| Err((code, why.to_string()));
    let node = match kind {
        NodeKind::Kernel(k) => {
            match st.functions.get(&k.func) {
                Some(fi) if fi.ctx == ctx => {}
                Some(_) => return fail(CUDA_ERROR_INVALID_VALUE, "a kernel node runs in another context"),
                None => return fail(CUDA_ERROR_INVALID_HANDLE, "a kernel node's function was unloaded"),
            }
            if !k.launch_extra.is_plain() && !c.has_launch_ex() {
                return fail(
                    CUDA_ERROR_NOT_SUPPORTED,
                    "a kernel node launches clusters or cooperatively, which this backend predates",
                );
            }
            let g = GraphKernelNode {
                func_id: U64::new(k.func),
                grid: k.grid.map(U32::new),
                block: k.block.map(U32::new),
                shared_mem: U32::new(k.shared_mem),
                params_len: U32::new(k.params.len() as u32),
            };
            push_node(buf, &GraphNodeDesc::Kernel(g, k.launch_extra, &k.params));
            return Ok(());
        }
        NodeKind::Memcpy(m) => {
            check_memcpy(st, m).map_err(|e| (e, "a copy node's device memory was freed".to_string()))?;
            let host_ref = |addr: usize| -> Result<HostRef, (CUresult, String)> {
                match c.find_pinned(addr, m.len as usize) {
                    Some((res, off)) => {
                        Ok(HostRef { kind: U32::new(HOST_RESOURCE), resource: U32::new(res), offset: U64::new(off) })
                    }
                    None => Err((
                        CUDA_ERROR_NOT_SUPPORTED,
                        "a copy node reaches pageable host memory; graphs copy only pinned memory (cuMemAllocHost) here"
                            .to_string(),
                    )),
                }
            };
            let (dir, dst, src, host) = match (m.dst, m.src) {
                (Loc::Device(d), Loc::Device(s)) => (GRAPH_COPY_DTOD, d, s, HostRef::default()),
                (Loc::Device(d), Loc::Host(h)) => (GRAPH_COPY_HTOD, d, 0, host_ref(h)?),
                (Loc::Host(h), Loc::Device(s)) => (GRAPH_COPY_DTOH, 0, s, host_ref(h)?),
                (Loc::Host(_), Loc::Host(_)) => return fail(CUDA_ERROR_NOT_SUPPORTED, "host-to-host copy node"),
            };
            GraphNodeDesc::Memcpy(GraphMemcpyNode {
                dir: U32::new(dir),
                _pad: U32::new(0),
                dst: U64::new(dst),
                src: U64::new(src),
                len: U64::new(m.len),
                host,
            })
        }
        NodeKind::Memset(m) => {
            check_memset(st, m).map_err(|e| (e, "a memset node's device memory was freed".to_string()))?;
            GraphNodeDesc::Memset(GraphMemsetNode {
                dst: U64::new(m.dst),
                pitch: U64::new(m.pitch),
                width: U64::new(m.width),
                height: U64::new(m.height),
                value: U32::new(m.value),
                elem_size: U32::new(m.elem_size),
            })
        }
        NodeKind::Empty => GraphNodeDesc::Empty,
        NodeKind::EventRecord(e) | NodeKind::EventWait(e) => {
            match st.events.get(e) {
                Some(ev) if ev.ctx == ctx || matches!(kind, NodeKind::EventWait(_)) => {}
                Some(_) => return fail(CUDA_ERROR_INVALID_VALUE, "an event record node's event is of another context"),
                None => return fail(CUDA_ERROR_INVALID_HANDLE, "an event node's event was destroyed"),
            }
            match kind {
                NodeKind::EventRecord(_) => GraphNodeDesc::EventRecord(*e),
                _ => GraphNodeDesc::EventWait(*e),
            }
        }
    };
    push_node(buf, &node);
    Ok(())
}

/// A graph's nodes in order, their edges as indices, and the context its
/// work runs in; checks that the edges form a DAG.
/// A graph as it is instantiated: node ids and kinds by index, edges as
/// sorted (from, to) indices, and the context of its work.
struct Snapshot {
    ids: Vec<u64>,
    kinds: Vec<NodeKind>,
    edges: Vec<(u32, u32)>,
    ctx: u64,
}

fn snapshot(graph: u64) -> Result<Snapshot, InstantiateError> {
    let invalid = |why: &str| InstantiateError::new(CUDA_ERROR_INVALID_VALUE, INSTANTIATE_ERROR, 0, why);
    let g = lock();
    let info = g.graphs.get(&graph).ok_or_else(|| invalid("no such graph"))?;
    if info.capture.is_some() {
        return Err(invalid("the graph is still being captured"));
    }
    let ids = info.nodes.clone();
    let index: HashMap<u64, u32> = ids.iter().enumerate().map(|(i, &n)| (n, i as u32)).collect();
    let mut kinds = Vec::with_capacity(ids.len());
    let mut edges = Vec::new();
    let mut ctx = None;
    for (i, n) in ids.iter().enumerate() {
        let node = g.nodes.get(n).ok_or_else(|| invalid("a node vanished"))?;
        if let Some(c) = node.kind.ctx() {
            if *ctx.get_or_insert(c) != c {
                return Err(InstantiateError::new(
                    CUDA_ERROR_NOT_SUPPORTED,
                    INSTANTIATE_MULTIPLE_CTXS_NOT_SUPPORTED,
                    *n,
                    "the graph's nodes run in more than one context",
                ));
            }
        }
        for d in &node.deps {
            let from = index.get(d).ok_or_else(|| invalid("a dependency is outside the graph"))?;
            edges.push((*from, i as u32));
        }
        kinds.push(node.kind.clone());
    }
    drop(g);
    edges.sort_unstable();
    if let Some(n) = cycle_node(ids.len(), &edges) {
        return Err(InstantiateError::new(
            CUDA_ERROR_INVALID_VALUE,
            INSTANTIATE_INVALID_STRUCTURE,
            ids[n],
            "the graph's dependencies form a cycle",
        ));
    }
    let ctx = match ctx {
        Some(c) => c,
        None => {
            state::lock().current().map_err(|e| InstantiateError::new(e, INSTANTIATE_ERROR, 0, "no current context"))?
        }
    };
    Ok(Snapshot { ids, kinds, edges, ctx })
}

/// A node on a cycle, if the edges have one (the backend checks again).
fn cycle_node(n: usize, edges: &[(u32, u32)]) -> Option<usize> {
    let mut waiting = vec![0usize; n];
    let mut succs = vec![Vec::new(); n];
    for &(f, t) in edges {
        waiting[t as usize] += 1;
        succs[f as usize].push(t as usize);
    }
    let mut ready: Vec<usize> = (0..n).filter(|&i| waiting[i] == 0).collect();
    let mut done = 0;
    while let Some(i) = ready.pop() {
        done += 1;
        for &s in &succs[i] {
            waiting[s] -= 1;
            if waiting[s] == 0 {
                ready.push(s);
            }
        }
    }
    (done < n).then(|| (0..n).find(|&i| waiting[i] > 0).unwrap_or(0))
}

fn instantiate(graph: u64, flags: u64) -> Result<u64, InstantiateError> {
    let c = session().map_err(|e| InstantiateError::new(e, INSTANTIATE_ERROR, 0, "no session"))?;
    if flags & !INSTANTIATE_FLAGS != 0 {
        return Err(InstantiateError::new(CUDA_ERROR_INVALID_VALUE, INSTANTIATE_ERROR, 0, "unknown flags"));
    }
    if flags & INSTANTIATE_FLAG_DEVICE_LAUNCH != 0 {
        crate::log::unsupported("graphs instantiated for device launch");
        return Err(InstantiateError::new(
            CUDA_ERROR_NOT_SUPPORTED,
            INSTANTIATE_NODE_OPERATION_NOT_SUPPORTED,
            0,
            "device launch is not supported",
        ));
    }
    let Snapshot { ids, kinds, edges, ctx } = snapshot(graph)?;
    let mut body = Vec::new();
    {
        let st = state::lock();
        for (id, kind) in ids.iter().zip(&kinds) {
            wire_node(&st, c, ctx, kind, &mut body).map_err(|(code, why)| {
                if code == CUDA_ERROR_NOT_SUPPORTED {
                    crate::log::unsupported(&why);
                }
                InstantiateError::new(code, INSTANTIATE_ERROR, *id, why)
            })?;
        }
    }
    let wire_edges: Vec<GraphEdge> =
        edges.iter().map(|&(f, t)| GraphEdge { from: U32::new(f), to: U32::new(t) }).collect();
    push_edges(&mut body, &wire_edges);
    let too_big = |what: &str| InstantiateError::new(CUDA_ERROR_NOT_SUPPORTED, INSTANTIATE_ERROR, 0, what);
    if ids.len() > MAX_GRAPH_NODES as usize || edges.len() > MAX_GRAPH_EDGES as usize {
        return Err(too_big("the graph has more nodes or edges than the backend accepts"));
    }
    if body.len() + 4096 > MAX_BATCH_BYTES as usize {
        return Err(too_big("the graph does not fit one batch"));
    }
    let exec = c.new_id();
    let h = GraphInstantiate {
        exec_id: U64::new(exec),
        flags: U64::new(flags),
        num_nodes: U32::new(ids.len() as u32),
        num_edges: U32::new(edges.len() as u32),
        body_len: U64::new(body.len() as u64),
    };
    c.call(Opcode::GraphInstantiate, 0, ctx, &h, &body)
        .map_err(|e| InstantiateError::new(e, INSTANTIATE_ERROR, 0, "the backend refused the graph"))?;
    let records = kinds
        .iter()
        .filter_map(|k| match k {
            NodeKind::EventRecord(e) => Some(*e),
            _ => None,
        })
        .collect();
    let index = ids.iter().enumerate().map(|(i, &n)| (n, i as u32)).collect();
    lock().execs.insert(exec, ExecInfo { ctx, flags, index, kinds, edges, records });
    Ok(exec)
}

/// cuGraphInstantiate's oldest form: an error node and a log buffer.
///
/// # Safety
/// Outputs NULL or writable; `log` NULL or `size` bytes.
unsafe fn instantiate_with_log(
    out: *mut CUgraphExec,
    graph: CUgraph,
    err_node: *mut CUgraphNode,
    log: *mut c_char,
    size: usize,
) -> CuRes {
    // SAFETY: output arguments per the CUDA API.
    let (out, err) = unsafe { (Out::new(out)?, Out::optional(err_node)) };
    match instantiate(id_of(graph), 0) {
        Ok(e) => {
            out.set(handle(e));
            super::set_opt(err, std::ptr::null_mut());
            Ok(())
        }
        Err(e) => {
            super::set_opt(err, handle(e.node));
            if !log.is_null() && size > 0 {
                let n = e.why.len().min(size - 1);
                // SAFETY: `log` holds `size` bytes; n + 1 <= size.
                unsafe {
                    std::ptr::copy_nonoverlapping(e.why.as_ptr(), log as *mut u8, n);
                    log.add(n).write(0);
                }
            }
            Err(e.code)
        }
    }
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphInstantiate(
    phGraphExec: *mut CUgraphExec,
    hGraph: CUgraph,
    phErrorNode: *mut CUgraphNode,
    logBuffer: *mut c_char,
    bufferSize: usize,
) -> CUresult {
    // SAFETY: the caller's contract, forwarded.
    ffi(|| unsafe { instantiate_with_log(phGraphExec, hGraph, phErrorNode, logBuffer, bufferSize) })
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphInstantiate_v2(
    phGraphExec: *mut CUgraphExec,
    hGraph: CUgraph,
    phErrorNode: *mut CUgraphNode,
    logBuffer: *mut c_char,
    bufferSize: usize,
) -> CUresult {
    // SAFETY: the caller's contract, forwarded.
    ffi(|| unsafe { instantiate_with_log(phGraphExec, hGraph, phErrorNode, logBuffer, bufferSize) })
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphInstantiateWithFlags(
    phGraphExec: *mut CUgraphExec,
    hGraph: CUgraph,
    flags: c_ulonglong,
) -> CUresult {
    ffi(|| {
        // SAFETY: output argument per the CUDA API.
        let out = unsafe { Out::new(phGraphExec) }?;
        out.set(handle(instantiate(id_of(hGraph), flags).map_err(|e| e.code)?));
        Ok(())
    })
}

/// # Safety
/// `out` NULL or writable; `params` NULL or a CUDA_GRAPH_INSTANTIATE_PARAMS.
unsafe fn instantiate_with_params(
    out: *mut CUgraphExec,
    graph: CUgraph,
    params: *mut CUDA_GRAPH_INSTANTIATE_PARAMS,
    ptsz: bool,
) -> CuRes {
    // SAFETY: output argument per the CUDA API.
    let out = unsafe { Out::new(out) }?;
    // SAFETY: NULL or a CUDA_GRAPH_INSTANTIATE_PARAMS per the CUDA API.
    let p = unsafe { params.as_mut() }.ok_or(CUDA_ERROR_INVALID_VALUE)?;
    if p.flags & 2 != 0 {
        // Upload: the stream must be one the program may use.
        session()?;
        state::lock().resolve_stream(p.hUploadStream, ptsz)?;
    }
    match instantiate(id_of(graph), p.flags) {
        Ok(e) => {
            p.hErrNode_out = std::ptr::null_mut();
            p.result_out = INSTANTIATE_SUCCESS;
            out.set(handle(e));
            Ok(())
        }
        Err(e) => {
            p.hErrNode_out = handle(e.node);
            p.result_out = e.result;
            Err(e.code)
        }
    }
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphInstantiateWithParams(
    phGraphExec: *mut CUgraphExec,
    hGraph: CUgraph,
    instantiateParams: *mut CUDA_GRAPH_INSTANTIATE_PARAMS,
) -> CUresult {
    // SAFETY: the caller's contract, forwarded.
    ffi(|| unsafe { instantiate_with_params(phGraphExec, hGraph, instantiateParams, false) })
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphInstantiateWithParams_ptsz(
    phGraphExec: *mut CUgraphExec,
    hGraph: CUgraph,
    instantiateParams: *mut CUDA_GRAPH_INSTANTIATE_PARAMS,
) -> CUresult {
    // SAFETY: the caller's contract, forwarded.
    ffi(|| unsafe { instantiate_with_params(phGraphExec, hGraph, instantiateParams, true) })
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphExecGetFlags(hGraphExec: CUgraphExec, flags: *mut cuuint64_t) -> CUresult {
    ffi(|| {
        // SAFETY: output argument per the CUDA API.
        let out = unsafe { Out::new(flags) }?;
        session()?;
        out.set(lock().execs.get(&id_of(hGraphExec)).ok_or(CUDA_ERROR_INVALID_VALUE)?.flags);
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphExecDestroy(hGraphExec: CUgraphExec) -> CUresult {
    ffi(|| {
        let c = session()?;
        let id = id_of(hGraphExec);
        let e = lock().execs.remove(&id).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        c.enqueue(Opcode::GraphExecDestroy, 0, e.ctx, &Id { id: U64::new(id) }, &[])
    })
}

// ---- launches ------------------------------------------------------------

fn launch(exec: CUgraphExec, stream: CUstream, ptsz: bool) -> CuRes {
    let c = session()?;
    let id = id_of(exec);
    let (sid, ctx) = state::lock().resolve_stream(stream, ptsz)?;
    let (exec_ctx, records) = {
        let g = lock();
        let e = g.execs.get(&id).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        (e.ctx, e.records.clone())
    };
    if exec_ctx != ctx {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let child = || {
        crate::log::unsupported("launching a graph inside a stream capture (child graph nodes)");
        Err(CUDA_ERROR_NOT_SUPPORTED)
    };
    if capture::intercept(sid, ctx, false, child)? {
        return Ok(());
    }
    {
        let mut st = state::lock();
        for e in records {
            if let Some(ev) = st.events.get_mut(&e) {
                ev.recorded = true;
            }
        }
    }
    let l = GraphLaunch { exec_id: U64::new(id), stream: U64::new(sid) };
    c.enqueue(Opcode::GraphLaunch, 0, ctx, &l, &[])
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphLaunch(hGraphExec: CUgraphExec, hStream: CUstream) -> CUresult {
    ffi(|| launch(hGraphExec, hStream, false))
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphLaunch_ptsz(hGraphExec: CUgraphExec, hStream: CUstream) -> CUresult {
    ffi(|| launch(hGraphExec, hStream, true))
}

/// The backend has the whole graph from instantiation: uploading is only
/// checking the arguments.
fn upload(exec: CUgraphExec, stream: CUstream, ptsz: bool) -> CuRes {
    session()?;
    state::lock().resolve_stream(stream, ptsz)?;
    match lock().execs.contains_key(&id_of(exec)) {
        true => Ok(()),
        false => Err(CUDA_ERROR_INVALID_VALUE),
    }
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphUpload(hGraphExec: CUgraphExec, hStream: CUstream) -> CUresult {
    ffi(|| upload(hGraphExec, hStream, false))
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphUpload_ptsz(hGraphExec: CUgraphExec, hStream: CUstream) -> CUresult {
    ffi(|| upload(hGraphExec, hStream, true))
}

// ---- updating an instantiated graph ---------------------------------------

/// Sends node `index` of `exec` its new parameters and remembers them.
fn update_exec_node(exec: u64, index: u32, kind: NodeKind) -> CuRes {
    let c = session()?;
    let ctx = lock().execs.get(&exec).ok_or(CUDA_ERROR_INVALID_VALUE)?.ctx;
    let mut rec = Vec::new();
    wire_node(&state::lock(), c, ctx, &kind, &mut rec).map_err(|(code, _)| code)?;
    let u = GraphExecUpdateNode { exec_id: U64::new(exec), index: U32::new(index), _pad: U32::new(0) };
    c.enqueue(Opcode::GraphExecUpdateNode, 0, ctx, &u, &rec)?;
    if let Some(e) = lock().execs.get_mut(&exec) {
        if let Some(k) = e.kinds.get_mut(index as usize) {
            *k = kind;
        }
    }
    Ok(())
}

/// The index of `node` in `exec`, and the exec's context.
fn exec_node(exec: CUgraphExec, node: CUgraphNode) -> CuRes<(u64, u32, u64, NodeKind)> {
    session()?;
    let g = lock();
    let e = g.execs.get(&id_of(exec)).ok_or(CUDA_ERROR_INVALID_VALUE)?;
    let i = *e.index.get(&id_of(node)).ok_or(CUDA_ERROR_INVALID_VALUE)?;
    Ok((id_of(exec), i, e.ctx, e.kinds[i as usize].clone()))
}

/// Whether node `new` can replace `old` in an instantiated graph, as
/// `CUgraphExecUpdateResult` says.
fn updatable(old: &NodeKind, new: &NodeKind, exec_ctx: u64) -> c_int {
    match (old, new) {
        (NodeKind::Kernel(_), NodeKind::Kernel(n)) if n.ctx != exec_ctx => UPDATE_UNSUPPORTED_FUNCTION_CHANGE,
        // The backend's instantiated node keeps its cluster.
        (NodeKind::Kernel(o), NodeKind::Kernel(n)) if o.launch_extra != n.launch_extra => UPDATE_ATTRIBUTES_CHANGED,
        (NodeKind::Memcpy(o), NodeKind::Memcpy(n)) if o != n => {
            let device = |m: &MemcpyNode| matches!((m.dst, m.src), (Loc::Device(_), Loc::Device(_)));
            // Device-to-device copies may change; host copies are built
            // into the backend's graph and may not.
            match device(o) && device(n) && (o.len == 0) == (n.len == 0) {
                true => UPDATE_SUCCESS,
                false => UPDATE_PARAMETERS_CHANGED,
            }
        }
        (NodeKind::Memset(o), NodeKind::Memset(n))
            if (o.elem_size, o.width, o.height) != (n.elem_size, n.width, n.height) =>
        {
            UPDATE_PARAMETERS_CHANGED
        }
        (o, n) if o.type_code() != n.type_code() => UPDATE_NODE_TYPE_CHANGED,
        _ => UPDATE_SUCCESS,
    }
}

/// New kernel parameters keep the node's launch attributes (cluster,
/// cooperative), as CUDA's do: only the attribute calls change those.
fn keep_attributes(old: &NodeKind, new: &mut NodeKind) {
    if let (NodeKind::Kernel(o), NodeKind::Kernel(n)) = (old, new) {
        n.launch_extra = o.launch_extra;
    }
}

/// cuGraphExecKernelNodeSetParams and its kin.
fn set_exec_node(exec: CUgraphExec, node: CUgraphNode, mut kind: NodeKind) -> CuRes {
    let (exec, index, ctx, old) = exec_node(exec, node)?;
    keep_attributes(&old, &mut kind);
    match updatable(&old, &kind, ctx) {
        UPDATE_SUCCESS => update_exec_node(exec, index, kind),
        _ => Err(CUDA_ERROR_INVALID_VALUE),
    }
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphExecKernelNodeSetParams(
    hGraphExec: CUgraphExec,
    hNode: CUgraphNode,
    nodeParams: *const CUDA_KERNEL_NODE_PARAMS_v1,
) -> CUresult {
    ffi(|| {
        // SAFETY: the caller's contract, forwarded.
        let k = unsafe { kernel_node_v1(nodeParams) }?;
        set_exec_node(hGraphExec, hNode, NodeKind::Kernel(k))
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphExecKernelNodeSetParams_v2(
    hGraphExec: CUgraphExec,
    hNode: CUgraphNode,
    nodeParams: *const CUDA_KERNEL_NODE_PARAMS_v2,
) -> CUresult {
    ffi(|| {
        // SAFETY: the caller's contract, forwarded.
        let k = unsafe { kernel_node_v2(nodeParams) }?;
        set_exec_node(hGraphExec, hNode, NodeKind::Kernel(k))
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphExecMemcpyNodeSetParams(
    hGraphExec: CUgraphExec,
    hNode: CUgraphNode,
    copyParams: *const CUDA_MEMCPY3D,
    ctx: CUcontext,
) -> CUresult {
    ffi(|| {
        // SAFETY: NULL or a CUDA_MEMCPY3D per the CUDA API.
        let p = unsafe { copyParams.as_ref() }.ok_or(CUDA_ERROR_INVALID_VALUE)?;
        let m = memcpy_node(p, node_ctx(ctx)?)?;
        set_exec_node(hGraphExec, hNode, NodeKind::Memcpy(m))
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphExecMemsetNodeSetParams(
    hGraphExec: CUgraphExec,
    hNode: CUgraphNode,
    memsetParams: *const CUDA_MEMSET_NODE_PARAMS,
    ctx: CUcontext,
) -> CUresult {
    ffi(|| {
        // SAFETY: NULL or a CUDA_MEMSET_NODE_PARAMS per the CUDA API.
        let p = unsafe { memsetParams.as_ref() }.ok_or(CUDA_ERROR_INVALID_VALUE)?;
        let m = memset_node(p, node_ctx(ctx)?)?;
        set_exec_node(hGraphExec, hNode, NodeKind::Memset(m))
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphExecEventRecordNodeSetEvent(
    hGraphExec: CUgraphExec,
    hNode: CUgraphNode,
    event: CUevent,
) -> CUresult {
    ffi(|| {
        check_event(id_of(event))?;
        set_exec_node(hGraphExec, hNode, NodeKind::EventRecord(id_of(event)))
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphExecEventWaitNodeSetEvent(
    hGraphExec: CUgraphExec,
    hNode: CUgraphNode,
    event: CUevent,
) -> CUresult {
    ffi(|| {
        check_event(id_of(event))?;
        set_exec_node(hGraphExec, hNode, NodeKind::EventWait(id_of(event)))
    })
}

/// cuGraphExecUpdate: `graph` must have the exec's topology (nodes paired by
/// the order they were added, the same kinds and dependencies); the nodes
/// whose parameters differ are updated in place. Returns the result code
/// and the node at fault.
fn exec_update(exec: CUgraphExec, graph: CUgraph) -> CuRes<(c_int, u64)> {
    session()?;
    let exec = id_of(exec);
    let (ctx, old_kinds, old_edges) = {
        let g = lock();
        let e = g.execs.get(&exec).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        (e.ctx, e.kinds.clone(), e.edges.clone())
    };
    let Snapshot { ids, kinds, edges, .. } = snapshot(id_of(graph)).map_err(|e| e.code)?;
    if ids.len() != old_kinds.len() || edges != old_edges {
        return Ok((UPDATE_TOPOLOGY_CHANGED, 0));
    }
    let mut changed = Vec::new();
    for (i, (old, new)) in old_kinds.iter().zip(&kinds).enumerate() {
        match updatable(old, new, ctx) {
            UPDATE_SUCCESS if old != new => changed.push(i),
            UPDATE_SUCCESS => {}
            r => return Ok((r, ids[i])),
        }
    }
    // Check every changed node before sending any update.
    {
        let c = session()?;
        let st = state::lock();
        for &i in &changed {
            if wire_node(&st, c, ctx, &kinds[i], &mut Vec::new()).is_err() {
                return Ok((UPDATE_ERROR, ids[i]));
            }
        }
    }
    for i in changed {
        if update_exec_node(exec, i as u32, kinds[i].clone()).is_err() {
            return Ok((UPDATE_NOT_SUPPORTED, ids[i]));
        }
    }
    Ok((UPDATE_SUCCESS, 0))
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphExecUpdate(
    hGraphExec: CUgraphExec,
    hGraph: CUgraph,
    hErrorNode_out: *mut CUgraphNode,
    updateResult_out: *mut c_int,
) -> CUresult {
    ffi(|| {
        // SAFETY: output arguments per the CUDA API.
        let (node_out, result_out) = unsafe { (Out::new(hErrorNode_out)?, Out::new(updateResult_out)?) };
        let (result, node) = exec_update(hGraphExec, hGraph)?;
        result_out.set(result);
        node_out.set(handle(node));
        match result {
            UPDATE_SUCCESS => Ok(()),
            _ => Err(CUDA_ERROR_GRAPH_EXEC_UPDATE_FAILURE),
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuGraphExecUpdate_v2(
    hGraphExec: CUgraphExec,
    hGraph: CUgraph,
    resultInfo: *mut CUgraphExecUpdateResultInfo,
) -> CUresult {
    ffi(|| {
        // SAFETY: NULL or a CUgraphExecUpdateResultInfo per the CUDA API.
        let info = unsafe { resultInfo.as_mut() }.ok_or(CUDA_ERROR_INVALID_VALUE)?;
        let (result, node) = exec_update(hGraphExec, hGraph)?;
        info.result = result;
        info.errorNode = handle(node);
        info.errorFromNode = std::ptr::null_mut();
        match result {
            UPDATE_SUCCESS => Ok(()),
            _ => Err(CUDA_ERROR_GRAPH_EXEC_UPDATE_FAILURE),
        }
    })
}

/// These exports for cuGetProcAddress: (name, the CUDA version of the ABI,
/// symbol), as the CUDA headers' typedefs give them.
pub fn rows() -> Vec<super::proc_address::ProcRow> {
    use super::proc_address::ProcRow;
    vec![
        ProcRow::new(
            "cuGraphAddDependencies",
            10000,
            "cuGraphAddDependencies",
            cuGraphAddDependencies as *const () as usize,
            false,
        ),
        ProcRow::new(
            "cuGraphAddDependencies",
            12030,
            "cuGraphAddDependencies_v2",
            cuGraphAddDependencies_v2 as *const () as usize,
            false,
        ),
        ProcRow::new(
            "cuGraphKernelNodeCopyAttributes",
            11000,
            "cuGraphKernelNodeCopyAttributes",
            cuGraphKernelNodeCopyAttributes as *const () as usize,
            false,
        ),
        ProcRow::new(
            "cuGraphKernelNodeGetAttribute",
            11000,
            "cuGraphKernelNodeGetAttribute",
            cuGraphKernelNodeGetAttribute as *const () as usize,
            false,
        ),
        ProcRow::new(
            "cuGraphKernelNodeSetAttribute",
            11000,
            "cuGraphKernelNodeSetAttribute",
            cuGraphKernelNodeSetAttribute as *const () as usize,
            false,
        ),
        ProcRow::new(
            "cuGraphAddEmptyNode",
            10000,
            "cuGraphAddEmptyNode",
            cuGraphAddEmptyNode as *const () as usize,
            false,
        ),
        ProcRow::new(
            "cuGraphAddEventRecordNode",
            11010,
            "cuGraphAddEventRecordNode",
            cuGraphAddEventRecordNode as *const () as usize,
            false,
        ),
        ProcRow::new(
            "cuGraphAddEventWaitNode",
            11010,
            "cuGraphAddEventWaitNode",
            cuGraphAddEventWaitNode as *const () as usize,
            false,
        ),
        ProcRow::new(
            "cuGraphAddKernelNode",
            10000,
            "cuGraphAddKernelNode",
            cuGraphAddKernelNode as *const () as usize,
            false,
        ),
        ProcRow::new(
            "cuGraphAddKernelNode",
            12000,
            "cuGraphAddKernelNode_v2",
            cuGraphAddKernelNode_v2 as *const () as usize,
            false,
        ),
        ProcRow::new(
            "cuGraphAddMemcpyNode",
            10000,
            "cuGraphAddMemcpyNode",
            cuGraphAddMemcpyNode as *const () as usize,
            false,
        ),
        ProcRow::new(
            "cuGraphAddMemsetNode",
            10000,
            "cuGraphAddMemsetNode",
            cuGraphAddMemsetNode as *const () as usize,
            false,
        ),
        ProcRow::new("cuGraphClone", 10000, "cuGraphClone", cuGraphClone as *const () as usize, false),
        ProcRow::new("cuGraphCreate", 10000, "cuGraphCreate", cuGraphCreate as *const () as usize, false),
        ProcRow::new("cuGraphDestroy", 10000, "cuGraphDestroy", cuGraphDestroy as *const () as usize, false),
        ProcRow::new(
            "cuGraphDestroyNode",
            10000,
            "cuGraphDestroyNode",
            cuGraphDestroyNode as *const () as usize,
            false,
        ),
        ProcRow::new(
            "cuGraphEventRecordNodeGetEvent",
            11010,
            "cuGraphEventRecordNodeGetEvent",
            cuGraphEventRecordNodeGetEvent as *const () as usize,
            false,
        ),
        ProcRow::new(
            "cuGraphEventRecordNodeSetEvent",
            11010,
            "cuGraphEventRecordNodeSetEvent",
            cuGraphEventRecordNodeSetEvent as *const () as usize,
            false,
        ),
        ProcRow::new(
            "cuGraphEventWaitNodeGetEvent",
            11010,
            "cuGraphEventWaitNodeGetEvent",
            cuGraphEventWaitNodeGetEvent as *const () as usize,
            false,
        ),
        ProcRow::new(
            "cuGraphEventWaitNodeSetEvent",
            11010,
            "cuGraphEventWaitNodeSetEvent",
            cuGraphEventWaitNodeSetEvent as *const () as usize,
            false,
        ),
        ProcRow::new(
            "cuGraphExecDestroy",
            10000,
            "cuGraphExecDestroy",
            cuGraphExecDestroy as *const () as usize,
            false,
        ),
        ProcRow::new(
            "cuGraphExecEventRecordNodeSetEvent",
            11010,
            "cuGraphExecEventRecordNodeSetEvent",
            cuGraphExecEventRecordNodeSetEvent as *const () as usize,
            false,
        ),
        ProcRow::new(
            "cuGraphExecEventWaitNodeSetEvent",
            11010,
            "cuGraphExecEventWaitNodeSetEvent",
            cuGraphExecEventWaitNodeSetEvent as *const () as usize,
            false,
        ),
        ProcRow::new(
            "cuGraphExecGetFlags",
            12000,
            "cuGraphExecGetFlags",
            cuGraphExecGetFlags as *const () as usize,
            false,
        ),
        ProcRow::new(
            "cuGraphExecKernelNodeSetParams",
            10010,
            "cuGraphExecKernelNodeSetParams",
            cuGraphExecKernelNodeSetParams as *const () as usize,
            false,
        ),
        ProcRow::new(
            "cuGraphExecKernelNodeSetParams",
            12000,
            "cuGraphExecKernelNodeSetParams_v2",
            cuGraphExecKernelNodeSetParams_v2 as *const () as usize,
            false,
        ),
        ProcRow::new(
            "cuGraphExecMemcpyNodeSetParams",
            10020,
            "cuGraphExecMemcpyNodeSetParams",
            cuGraphExecMemcpyNodeSetParams as *const () as usize,
            false,
        ),
        ProcRow::new(
            "cuGraphExecMemsetNodeSetParams",
            10020,
            "cuGraphExecMemsetNodeSetParams",
            cuGraphExecMemsetNodeSetParams as *const () as usize,
            false,
        ),
        ProcRow::new("cuGraphExecUpdate", 10020, "cuGraphExecUpdate", cuGraphExecUpdate as *const () as usize, false),
        ProcRow::new(
            "cuGraphExecUpdate",
            12000,
            "cuGraphExecUpdate_v2",
            cuGraphExecUpdate_v2 as *const () as usize,
            false,
        ),
        ProcRow::new("cuGraphGetEdges", 10000, "cuGraphGetEdges", cuGraphGetEdges as *const () as usize, false),
        ProcRow::new("cuGraphGetEdges", 12030, "cuGraphGetEdges_v2", cuGraphGetEdges_v2 as *const () as usize, false),
        ProcRow::new("cuGraphGetNodes", 10000, "cuGraphGetNodes", cuGraphGetNodes as *const () as usize, false),
        ProcRow::new(
            "cuGraphGetRootNodes",
            10000,
            "cuGraphGetRootNodes",
            cuGraphGetRootNodes as *const () as usize,
            false,
        ),
        ProcRow::new(
            "cuGraphInstantiate",
            10000,
            "cuGraphInstantiate",
            cuGraphInstantiate as *const () as usize,
            false,
        ),
        ProcRow::new(
            "cuGraphInstantiate",
            11000,
            "cuGraphInstantiate_v2",
            cuGraphInstantiate_v2 as *const () as usize,
            false,
        ),
        ProcRow::new(
            "cuGraphInstantiateWithFlags",
            11040,
            "cuGraphInstantiateWithFlags",
            cuGraphInstantiateWithFlags as *const () as usize,
            false,
        ),
        ProcRow::new(
            "cuGraphInstantiateWithParams",
            12000,
            "cuGraphInstantiateWithParams",
            cuGraphInstantiateWithParams as *const () as usize,
            false,
        ),
        ProcRow::new(
            "cuGraphInstantiateWithParams",
            12000,
            "cuGraphInstantiateWithParams_ptsz",
            cuGraphInstantiateWithParams_ptsz as *const () as usize,
            true,
        ),
        ProcRow::new(
            "cuGraphKernelNodeGetParams",
            10000,
            "cuGraphKernelNodeGetParams",
            cuGraphKernelNodeGetParams as *const () as usize,
            false,
        ),
        ProcRow::new(
            "cuGraphKernelNodeGetParams",
            12000,
            "cuGraphKernelNodeGetParams_v2",
            cuGraphKernelNodeGetParams_v2 as *const () as usize,
            false,
        ),
        ProcRow::new(
            "cuGraphKernelNodeSetParams",
            10000,
            "cuGraphKernelNodeSetParams",
            cuGraphKernelNodeSetParams as *const () as usize,
            false,
        ),
        ProcRow::new(
            "cuGraphKernelNodeSetParams",
            12000,
            "cuGraphKernelNodeSetParams_v2",
            cuGraphKernelNodeSetParams_v2 as *const () as usize,
            false,
        ),
        ProcRow::new("cuGraphLaunch", 10000, "cuGraphLaunch", cuGraphLaunch as *const () as usize, false),
        ProcRow::new("cuGraphLaunch", 10000, "cuGraphLaunch_ptsz", cuGraphLaunch_ptsz as *const () as usize, true),
        ProcRow::new(
            "cuGraphMemcpyNodeGetParams",
            10000,
            "cuGraphMemcpyNodeGetParams",
            cuGraphMemcpyNodeGetParams as *const () as usize,
            false,
        ),
        ProcRow::new(
            "cuGraphMemcpyNodeSetParams",
            10000,
            "cuGraphMemcpyNodeSetParams",
            cuGraphMemcpyNodeSetParams as *const () as usize,
            false,
        ),
        ProcRow::new(
            "cuGraphMemsetNodeGetParams",
            10000,
            "cuGraphMemsetNodeGetParams",
            cuGraphMemsetNodeGetParams as *const () as usize,
            false,
        ),
        ProcRow::new(
            "cuGraphMemsetNodeSetParams",
            10000,
            "cuGraphMemsetNodeSetParams",
            cuGraphMemsetNodeSetParams as *const () as usize,
            false,
        ),
        ProcRow::new(
            "cuGraphNodeFindInClone",
            10000,
            "cuGraphNodeFindInClone",
            cuGraphNodeFindInClone as *const () as usize,
            false,
        ),
        ProcRow::new(
            "cuGraphNodeGetDependencies",
            10000,
            "cuGraphNodeGetDependencies",
            cuGraphNodeGetDependencies as *const () as usize,
            false,
        ),
        ProcRow::new(
            "cuGraphNodeGetDependencies",
            12030,
            "cuGraphNodeGetDependencies_v2",
            cuGraphNodeGetDependencies_v2 as *const () as usize,
            false,
        ),
        ProcRow::new(
            "cuGraphNodeGetDependentNodes",
            10000,
            "cuGraphNodeGetDependentNodes",
            cuGraphNodeGetDependentNodes as *const () as usize,
            false,
        ),
        ProcRow::new(
            "cuGraphNodeGetDependentNodes",
            12030,
            "cuGraphNodeGetDependentNodes_v2",
            cuGraphNodeGetDependentNodes_v2 as *const () as usize,
            false,
        ),
        ProcRow::new(
            "cuGraphNodeGetType",
            10000,
            "cuGraphNodeGetType",
            cuGraphNodeGetType as *const () as usize,
            false,
        ),
        ProcRow::new(
            "cuGraphRemoveDependencies",
            10000,
            "cuGraphRemoveDependencies",
            cuGraphRemoveDependencies as *const () as usize,
            false,
        ),
        ProcRow::new(
            "cuGraphRemoveDependencies",
            12030,
            "cuGraphRemoveDependencies_v2",
            cuGraphRemoveDependencies_v2 as *const () as usize,
            false,
        ),
        ProcRow::new("cuGraphUpload", 11010, "cuGraphUpload", cuGraphUpload as *const () as usize, false),
        ProcRow::new("cuGraphUpload", 11010, "cuGraphUpload_ptsz", cuGraphUpload_ptsz as *const () as usize, true),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cycles_are_found_and_dags_pass() {
        assert_eq!(cycle_node(3, &[(0, 1), (1, 2)]), None);
        assert_eq!(cycle_node(4, &[(0, 1), (0, 2), (1, 3), (2, 3)]), None);
        assert!(cycle_node(3, &[(0, 1), (1, 2), (2, 1)]).is_some_and(|n| n == 1 || n == 2));
        assert_eq!(cycle_node(0, &[]), None);
    }

    #[test]
    fn exec_updates_allow_parameter_changes_only() {
        let k = |ctx, v: u8| {
            NodeKind::Kernel(KernelNode {
                given: 1,
                func: 1,
                ctx,
                grid: [1; 3],
                block: [1; 3],
                shared_mem: 0,
                params: vec![v],
                launch_extra: LaunchExtra::PLAIN,
            })
        };
        assert_eq!(updatable(&k(1, 1), &k(1, 2), 1), UPDATE_SUCCESS);
        let mut clustered = k(1, 2);
        if let NodeKind::Kernel(c) = &mut clustered {
            c.launch_extra = LaunchExtra::new([2, 1, 1], 0);
        }
        assert_eq!(updatable(&k(1, 1), &clustered, 1), UPDATE_ATTRIBUTES_CHANGED);
        let mut kept = k(1, 3);
        keep_attributes(&clustered, &mut kept);
        assert_eq!(updatable(&clustered, &kept, 1), UPDATE_SUCCESS, "new parameters keep the cluster");
        assert_eq!(updatable(&k(1, 1), &k(2, 1), 1), UPDATE_UNSUPPORTED_FUNCTION_CHANGE);
        assert_eq!(updatable(&k(1, 1), &NodeKind::Empty, 1), UPDATE_NODE_TYPE_CHANGED);
        let m = |dst, src| NodeKind::Memcpy(MemcpyNode { ctx: 1, dst, src, len: 8 });
        let d = Loc::Device(0x1000);
        assert_eq!(updatable(&m(d, Loc::Device(0x2000)), &m(d, Loc::Device(0x3000)), 1), UPDATE_SUCCESS);
        assert_eq!(updatable(&m(d, Loc::Host(0x10)), &m(d, Loc::Host(0x20)), 1), UPDATE_PARAMETERS_CHANGED);
        let s = |w| {
            NodeKind::Memset(MemsetNode { ctx: 1, dst: 0x1000, pitch: 64, value: 0, elem_size: 4, width: w, height: 1 })
        };
        assert_eq!(updatable(&s(4), &s(8), 1), UPDATE_PARAMETERS_CHANGED);
    }
}
