//! Graphs and occupancy on the GPU: a guest graph becomes a real CUDA graph
//! (cuGraphCreate, one cuGraphAdd*Node per node in topological order,
//! cuGraphInstantiateWithFlags) that one cuGraphLaunch runs; occupancy
//! questions go to the driver's own calculator.
//!
//! A host copy of guest memory is one copy node per extent of the guest
//! buffer (guest pages are not contiguous in the backend's address space);
//! the host addresses baked into those nodes are compared with the buffer's
//! current ones at every launch, so a remapped guest buffer fails the launch
//! instead of being written through stale pointers.

use super::*;

/// An instantiated graph. The source graph is kept: updating a node of the
/// exec names the node of the graph it was instantiated from.
pub(super) struct CudaGraph {
    pub(super) ctx: u64,
    graph: sys::CUgraph,
    exec: sys::CUgraphExec,
    /// The driver nodes of each guest node (several for a host copy).
    nodes: Vec<Vec<sys::CUgraphNode>>,
    /// Host extents baked into host copies, per host span index.
    host: Vec<Vec<(usize, usize)>>,
}

// SAFETY: driver handles are not tied to a thread; the engine that owns
// them is used by one thread at a time (Engine: Send, not Sync), with the
// graph's context made current before each call.
unsafe impl Send for CudaGraph {}

impl CudaGraph {
    /// Destroys the exec and its graph. The graph's context must be alive.
    fn destroy(self) {
        // SAFETY: both were created by `instantiate` and are destroyed once
        // (the value is consumed).
        unsafe {
            if let Err(e) = check(sys::cuGraphExecDestroy(self.exec)) {
                warn!(error = %e, "destroying a graph exec");
            }
            if let Err(e) = check(sys::cuGraphDestroy(self.graph)) {
                warn!(error = %e, "destroying a graph");
            }
        }
    }
}

fn extents(span: &GuestSpan<'_>) -> Vec<(usize, usize)> {
    span.host_extents().map(|(p, len)| (p as usize, len)).collect()
}

/// `CUDA_MEMCPY3D` for a one-dimensional device-to-device copy of `len`
/// bytes; host copies change a side's memory type and pointer.
fn copy_1d(len: usize) -> sys::CUDA_MEMCPY3D {
    sys::CUDA_MEMCPY3D {
        srcXInBytes: 0,
        srcY: 0,
        srcZ: 0,
        srcLOD: 0,
        srcMemoryType: sys::CUmemorytype::CU_MEMORYTYPE_DEVICE,
        srcHost: std::ptr::null(),
        srcDevice: 0,
        srcArray: null_mut(),
        reserved0: null_mut(),
        srcPitch: 0,
        srcHeight: 0,
        dstXInBytes: 0,
        dstY: 0,
        dstZ: 0,
        dstLOD: 0,
        dstMemoryType: sys::CUmemorytype::CU_MEMORYTYPE_DEVICE,
        dstHost: null_mut(),
        dstDevice: 0,
        dstArray: null_mut(),
        reserved1: null_mut(),
        dstPitch: 0,
        dstHeight: 0,
        WidthInBytes: len,
        Height: 1,
        Depth: 1,
    }
}

fn memset_params(
    dst: u64,
    pitch: u64,
    value: u32,
    elem_size: u32,
    width: u64,
    height: u64,
) -> EngineResult<sys::CUDA_MEMSET_NODE_PARAMS> {
    Ok(sys::CUDA_MEMSET_NODE_PARAMS {
        dst,
        pitch: to_usize(pitch)?,
        value,
        elementSize: elem_size,
        width: to_usize(width)?,
        height: to_usize(height)?,
    })
}

/// Kernel node parameters whose `extra` points into `extra` (which must
/// outlive the call that reads them).
fn kernel_params(
    func: EngineFunc,
    grid: [u32; 3],
    block: [u32; 3],
    shared_mem: u32,
    params: &[u8],
    extra: &mut [*mut c_void; 5],
) -> sys::CUDA_KERNEL_NODE_PARAMS {
    sys::CUDA_KERNEL_NODE_PARAMS {
        func: func.0 as sys::CUfunction,
        gridDimX: grid[0],
        gridDimY: grid[1],
        gridDimZ: grid[2],
        blockDimX: block[0],
        blockDimY: block[1],
        blockDimZ: block[2],
        sharedMemBytes: shared_mem,
        kernelParams: null_mut(),
        extra: if params.is_empty() { null_mut() } else { extra.as_mut_ptr() },
        kern: null_mut(),
        ctx: null_mut(),
    }
}

impl CudaEngine {
    /// Adds the driver nodes of guest node `node` after `deps`.
    fn add_node(
        &self,
        graph: sys::CUgraph,
        node: &GraphNode<'_>,
        deps: &[sys::CUgraphNode],
        host: &[GuestSpan<'_>],
    ) -> EngineResult<Vec<sys::CUgraphNode>> {
        let ctx = self.selected as sys::CUcontext;
        let (dp, dn) = (deps.as_ptr(), deps.len());
        let mut out: sys::CUgraphNode = null_mut();
        // SAFETY (every call below): `graph` is a live graph, `deps` are
        // nodes of it, `out` is a valid out-pointer, the parameter structs
        // live across the call (the driver copies them, kernel arguments
        // included), and the handles were resolved by the VM layer to
        // objects of the current context.
        match *node {
            GraphNode::Kernel { func, grid, block, shared_mem, params, cluster, cooperative } => {
                let mut size = params.len();
                let mut extra = launch_extra(params, &mut size);
                let p = kernel_params(func, grid, block, shared_mem, params, &mut extra);
                check(unsafe { sys::cuGraphAddKernelNode_v2(&mut out, graph, dp, dn, &p) })?;
                // Clusters and cooperative launches are node attributes, set
                // on the node just added; the exec takes them at instantiation.
                let (attrs, n) = ex_attributes(cluster, cooperative);
                for a in &attrs[..n] {
                    check(unsafe { sys::cuGraphKernelNodeSetAttribute(out, a.id, &a.value) })?;
                }
            }
            GraphNode::CopyDtoD { dst, src, len } => {
                let mut p = copy_1d(to_usize(len)?);
                p.srcDevice = src;
                p.dstDevice = dst;
                check(unsafe { sys::cuGraphAddMemcpyNode(&mut out, graph, dp, dn, &p, ctx) })?;
            }
            GraphNode::CopyHtoD { dst, host: i } | GraphNode::CopyDtoH { src: dst, host: i } => {
                let to_device = matches!(node, GraphNode::CopyHtoD { .. });
                let span = host.get(i).ok_or(CuError(CUDA_ERROR_INVALID_VALUE))?;
                let mut nodes = Vec::new();
                for_each_extent(span, dst, |h, dev, len| {
                    let mut p = copy_1d(len);
                    if to_device {
                        p.srcMemoryType = sys::CUmemorytype::CU_MEMORYTYPE_HOST;
                        p.srcHost = h.cast_const().cast();
                        p.dstDevice = dev;
                    } else {
                        p.dstMemoryType = sys::CUmemorytype::CU_MEMORYTYPE_HOST;
                        p.dstHost = h.cast();
                        p.srcDevice = dev;
                    }
                    let mut n: sys::CUgraphNode = null_mut();
                    // SAFETY: as above; `h..h+len` is mapped guest RAM, and
                    // every launch first checks it still is (`launch`).
                    check(unsafe { sys::cuGraphAddMemcpyNode(&mut n, graph, dp, dn, &p, ctx) })?;
                    nodes.push(n);
                    Ok(())
                })?;
                if !nodes.is_empty() {
                    return Ok(nodes);
                }
                // An empty copy: an empty node keeps the dependencies.
                check(unsafe { sys::cuGraphAddEmptyNode(&mut out, graph, dp, dn) })?;
            }
            GraphNode::Memset { dst, pitch, value, elem_size, width, height } => {
                let p = memset_params(dst, pitch, value, elem_size, width, height)?;
                check(unsafe { sys::cuGraphAddMemsetNode(&mut out, graph, dp, dn, &p, ctx) })?;
            }
            GraphNode::Empty => check(unsafe { sys::cuGraphAddEmptyNode(&mut out, graph, dp, dn) })?,
            GraphNode::EventRecord(e) => {
                check(unsafe { sys::cuGraphAddEventRecordNode(&mut out, graph, dp, dn, e.0 as sys::CUevent) })?
            }
            GraphNode::EventWait(e) => {
                check(unsafe { sys::cuGraphAddEventWaitNode(&mut out, graph, dp, dn, e.0 as sys::CUevent) })?
            }
        }
        Ok(vec![out])
    }

    /// Builds the graph's nodes into `graph`.
    fn build(
        &self,
        graph: sys::CUgraph,
        spec: &GraphSpec<'_>,
        host: &[GuestSpan<'_>],
    ) -> EngineResult<Vec<Vec<sys::CUgraphNode>>> {
        let mut nodes: Vec<Vec<sys::CUgraphNode>> = vec![Vec::new(); spec.nodes.len()];
        for &i in &spec.order {
            let i = i as usize;
            let node = spec.nodes.get(i).ok_or(CuError(CUDA_ERROR_INVALID_VALUE))?;
            let deps_of = spec.deps.get(i).ok_or(CuError(CUDA_ERROR_INVALID_VALUE))?;
            let mut deps = Vec::new();
            for &d in deps_of {
                deps.extend_from_slice(nodes.get(d as usize).ok_or(CuError(CUDA_ERROR_INVALID_VALUE))?);
            }
            nodes[i] = self.add_node(graph, node, &deps, host)?;
        }
        Ok(nodes)
    }

    pub(super) fn graph_instantiate_impl(
        &mut self,
        spec: &GraphSpec<'_>,
        host: &[GuestSpan<'_>],
    ) -> EngineResult<EngineGraphExec> {
        self.enter()?;
        let mut graph: sys::CUgraph = null_mut();
        // SAFETY: `graph` is a valid out-pointer; flags must be 0.
        check(unsafe { sys::cuGraphCreate(&mut graph, 0) })?;
        let built = self.build(graph, spec, host).and_then(|nodes| {
            let mut exec: sys::CUgraphExec = null_mut();
            // SAFETY: `graph` is complete; `exec` is a valid out-pointer.
            check(unsafe { sys::cuGraphInstantiateWithFlags(&mut exec, graph, 0) })?;
            Ok((nodes, exec))
        });
        let (nodes, exec) = match built {
            Ok(v) => v,
            Err(e) => {
                // SAFETY: created above, not instantiated, destroyed once.
                let _ = unsafe { sys::cuGraphDestroy(graph) };
                return Err(e);
            }
        };
        self.next_graph += 1;
        let id = self.next_graph;
        let host = host.iter().map(extents).collect();
        self.graphs.insert(id, CudaGraph { ctx: self.selected, graph, exec, nodes, host });
        Ok(EngineGraphExec(id))
    }

    pub(super) fn graph_exec_destroy_impl(&mut self, exec: EngineGraphExec) -> EngineResult<()> {
        let g = self.graphs.remove(&exec.0).ok_or(CuError(CUDA_ERROR_INVALID_HANDLE))?;
        with_pushed(g.ctx, || {
            g.destroy();
            Ok(())
        })
    }

    /// Destroys the graphs of context `ctx` (all of them for `None`), before
    /// the context goes.
    pub(super) fn destroy_graphs(&mut self, ctx: Option<u64>) {
        let ids: Vec<u64> =
            self.graphs.iter().filter(|(_, g)| ctx.is_none_or(|c| g.ctx == c)).map(|(k, _)| *k).collect();
        for id in ids {
            if let Some(g) = self.graphs.remove(&id) {
                let c = g.ctx;
                if let Err(e) = with_pushed(c, || {
                    g.destroy();
                    Ok(())
                }) {
                    warn!(error = %e, "no context to destroy a graph in");
                }
            }
        }
    }

    pub(super) fn graph_launch_impl(
        &mut self,
        exec: EngineGraphExec,
        stream: EngineStream,
        host: &[GuestSpan<'_>],
    ) -> EngineResult<()> {
        self.enter()?;
        let g = self.graphs.get(&exec.0).ok_or(CuError(CUDA_ERROR_INVALID_HANDLE))?;
        if g.ctx != self.selected {
            return Err(CuError(CUDA_ERROR_INVALID_CONTEXT));
        }
        if host.len() != g.host.len() || host.iter().zip(&g.host).any(|(s, baked)| extents(s) != *baked) {
            warn!("a graph's host buffer moved in guest RAM since it was instantiated; launch refused");
            return Err(CuError(CUDA_ERROR_INVALID_VALUE));
        }
        // SAFETY: a live exec of the current context and a stream of it (or
        // NULL); the host memory its copies use was checked just above.
        check(unsafe { sys::cuGraphLaunch(g.exec, cu_stream(stream)) })
    }

    pub(super) fn graph_exec_update_node_impl(
        &mut self,
        exec: EngineGraphExec,
        index: u32,
        node: &GraphNode<'_>,
    ) -> EngineResult<()> {
        self.enter()?;
        let ctx = self.selected as sys::CUcontext;
        let g = self.graphs.get(&exec.0).ok_or(CuError(CUDA_ERROR_INVALID_HANDLE))?;
        let [n] = g.nodes.get(index as usize).map(Vec::as_slice).ok_or(CuError(CUDA_ERROR_INVALID_VALUE))? else {
            // Host copies (one node per extent) are not updated in place.
            return Err(CuError(CUDA_ERROR_NOT_SUPPORTED));
        };
        let (e, n) = (g.exec, *n);
        // SAFETY (every call below): a live exec, a node of the graph it was
        // instantiated from, of the same kind (checked by the VM layer), and
        // parameter structs alive across the call.
        match *node {
            // The VM layer keeps the node's cluster and cooperative flag as
            // instantiated, which these parameters cannot change.
            GraphNode::Kernel { func, grid, block, shared_mem, params, .. } => {
                let mut size = params.len();
                let mut extra = launch_extra(params, &mut size);
                let p = kernel_params(func, grid, block, shared_mem, params, &mut extra);
                check(unsafe { sys::cuGraphExecKernelNodeSetParams_v2(e, n, &p) })
            }
            GraphNode::CopyDtoD { dst, src, len } => {
                let mut p = copy_1d(to_usize(len)?);
                p.srcDevice = src;
                p.dstDevice = dst;
                check(unsafe { sys::cuGraphExecMemcpyNodeSetParams(e, n, &p, ctx) })
            }
            GraphNode::Memset { dst, pitch, value, elem_size, width, height } => {
                let p = memset_params(dst, pitch, value, elem_size, width, height)?;
                check(unsafe { sys::cuGraphExecMemsetNodeSetParams(e, n, &p, ctx) })
            }
            GraphNode::EventRecord(ev) => {
                check(unsafe { sys::cuGraphExecEventRecordNodeSetEvent(e, n, ev.0 as sys::CUevent) })
            }
            GraphNode::EventWait(ev) => {
                check(unsafe { sys::cuGraphExecEventWaitNodeSetEvent(e, n, ev.0 as sys::CUevent) })
            }
            GraphNode::Empty => Ok(()),
            GraphNode::CopyHtoD { .. } | GraphNode::CopyDtoH { .. } => Err(CuError(CUDA_ERROR_NOT_SUPPORTED)),
        }
    }

    pub(super) fn occupancy_impl(
        &mut self,
        func: EngineFunc,
        kind: u32,
        flags: u32,
        item: &OccupancyItem,
    ) -> EngineResult<u64> {
        self.enter()?;
        let f = func.0 as sys::CUfunction;
        let block = item.block.iter().try_fold(1i64, |acc, d| acc.checked_mul(d.get() as i64));
        let block = block.and_then(|b| c_int::try_from(b).ok()).ok_or(CuError(CUDA_ERROR_INVALID_VALUE))?;
        let smem = item.shared_mem.get();
        match kind {
            protocol::OCCUPANCY_ACTIVE_BLOCKS => {
                let mut n: c_int = 0;
                // SAFETY: `n` is a valid out-pointer; `f` a function of the
                // current context; the driver checks the rest.
                check(unsafe {
                    sys::cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(&mut n, f, block, smem as usize, flags)
                })?;
                Ok(n.max(0) as u64)
            }
            protocol::OCCUPANCY_AVAILABLE_SMEM => {
                let mut bytes: usize = 0;
                let blocks = c_int::try_from(item.num_blocks.get()).map_err(|_| CuError(CUDA_ERROR_INVALID_VALUE))?;
                // SAFETY: as above.
                check(unsafe { sys::cuOccupancyAvailableDynamicSMemPerBlock(&mut bytes, f, blocks, block) })?;
                Ok(bytes as u64)
            }
            protocol::OCCUPANCY_CLUSTER_SIZE | protocol::OCCUPANCY_ACTIVE_CLUSTERS => {
                let mut attrs = cluster_attributes(item)?;
                let config = sys::CUlaunchConfig {
                    gridDimX: item.grid[0].get(),
                    gridDimY: item.grid[1].get(),
                    gridDimZ: item.grid[2].get(),
                    blockDimX: item.block[0].get(),
                    blockDimY: item.block[1].get(),
                    blockDimZ: item.block[2].get(),
                    sharedMemBytes: smem,
                    hStream: null_mut(),
                    attrs: if attrs.is_empty() { null_mut() } else { attrs.as_mut_ptr() },
                    numAttrs: attrs.len() as c_uint,
                };
                let mut n: c_int = 0;
                // SAFETY: `n` is a valid out-pointer; `config` and its
                // attributes live across the call.
                check(unsafe {
                    if kind == protocol::OCCUPANCY_CLUSTER_SIZE {
                        sys::cuOccupancyMaxPotentialClusterSize(&mut n, f, &config)
                    } else {
                        sys::cuOccupancyMaxActiveClusters(&mut n, f, &config)
                    }
                })?;
                Ok(n.max(0) as u64)
            }
            _ => Err(CuError(CUDA_ERROR_INVALID_VALUE)),
        }
    }
}

/// The launch attributes of a cluster question: the cluster dimension (if
/// set) and the scheduling policy (if not the default).
fn cluster_attributes(item: &OccupancyItem) -> EngineResult<Vec<sys::CUlaunchAttribute>> {
    use sys::CUclusterSchedulingPolicy as P;
    let mut attrs = Vec::new();
    let dims = item.cluster.map(|d| d.get());
    if dims.iter().any(|&d| d != 0) {
        attrs.push(cluster_dim_attribute(dims));
    }
    // The policy is a C enum: only the values it defines may be stored.
    let policy = match item.policy.get() {
        0 => None,
        1 => Some(P::CU_CLUSTER_SCHEDULING_POLICY_SPREAD),
        2 => Some(P::CU_CLUSTER_SCHEDULING_POLICY_LOAD_BALANCING),
        _ => return Err(CuError(CUDA_ERROR_INVALID_VALUE)),
    };
    if let Some(p) = policy {
        // SAFETY: a plain C struct and union for which all-zero is valid.
        let mut a: sys::CUlaunchAttribute = unsafe { std::mem::zeroed() };
        a.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_CLUSTER_SCHEDULING_POLICY_PREFERENCE;
        a.value.clusterSchedulingPolicyPreference = p;
        attrs.push(a);
    }
    Ok(attrs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use zerocopy::little_endian::U32;

    #[test]
    fn cluster_questions_carry_their_dimension_and_a_known_policy_only() {
        let mut item = OccupancyItem::default();
        assert!(cluster_attributes(&item).unwrap().is_empty());
        item.cluster = [U32::new(2), U32::new(1), U32::new(1)];
        item.policy = U32::new(1);
        let attrs = cluster_attributes(&item).unwrap();
        assert_eq!(attrs.len(), 2);
        // SAFETY: the union member this attribute id selects.
        assert_eq!(unsafe { attrs[0].value.clusterDim.x }, 2);
        item.policy = U32::new(7);
        assert_eq!(cluster_attributes(&item).err(), Some(CuError(CUDA_ERROR_INVALID_VALUE)));
    }

    #[test]
    fn launch_extras_become_cluster_and_cooperative_attributes() {
        assert_eq!(ex_attributes([1, 1, 1], false).1, 0, "a plain launch has none");
        let (attrs, n) = ex_attributes([2, 4, 1], true);
        assert_eq!(n, 2);
        assert_eq!(attrs[0].id, sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION);
        assert_eq!(attrs[1].id, sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_COOPERATIVE);
        // SAFETY: the union members these attribute ids select.
        let (dims, coop) = unsafe { (attrs[0].value.clusterDim, attrs[1].value.cooperative) };
        assert_eq!(((dims.x, dims.y, dims.z), coop), ((2, 4, 1), 1));
        let (attrs, n) = ex_attributes([1, 1, 1], true);
        assert_eq!((n, attrs[0].id), (1, sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_COOPERATIVE));
    }

    #[test]
    fn copy_parameters_describe_one_row() {
        let p = copy_1d(4096);
        assert_eq!((p.WidthInBytes, p.Height, p.Depth), (4096, 1, 1));
        assert_eq!(p.srcMemoryType, sys::CUmemorytype::CU_MEMORYTYPE_DEVICE);
        let m = memset_params(0x1000, 256, 7, 4, 16, 3).unwrap();
        assert_eq!((m.pitch, m.width, m.height, m.elementSize), (256, 16, 3, 4));
    }
}
