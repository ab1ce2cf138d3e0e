//! A client's instantiated graphs: a graph arrives once, whole; every node is
//! checked the way the call it stands for would be (function handles of the
//! exec's context, device ranges inside the client's allocations, host
//! memory in a resource the client may use, events it created), its edges
//! must form a DAG, and only then does the engine build it. A launch is one
//! GPU operation under the grant gate, as a kernel launch is; what the
//! graph's nodes name is checked again at a launch when the client freed,
//! unloaded or destroyed anything since the last check.

use super::*;
use crate::engine::{EngineGraphExec, GraphNode, GraphSpec};
use crate::graph::check_dag;
use crate::guest_mem::GuestSpan;
use protocol::graph::{GraphBody, GraphNodeDesc};

/// An object a node uses, re-checked at launch.
#[derive(Debug, Clone, Copy)]
enum Use {
    Func(u64, EngineFunc),
    Range(u64, u64),
    Event(u64, EngineEvent),
}

/// Host memory a copy node reaches: a range of a resource.
#[derive(Debug, Clone, Copy)]
struct HostUse {
    resource: u32,
    offset: u64,
    len: u64,
}

#[derive(Debug)]
pub(super) struct GraphExecEntry {
    engine: EngineGraphExec,
    pub(super) ctx: u64,
    /// Each node's `GRAPH_NODE_*` kind, and what it uses.
    kinds: Vec<u32>,
    /// Each kernel node's cluster and flags (plain for other nodes), which
    /// an update may not change: the engine's exec keeps them.
    extras: Vec<LaunchExtra>,
    uses: Vec<Vec<Use>>,
    /// Host ranges of host copies, in the order of the engine's host spans.
    host: Vec<HostUse>,
    kernels: u64,
    copies: Vec<(CopyDir, u64)>,
    /// The client's `epoch` when `uses` were last found valid.
    checked: u64,
}

/// One node resolved: the engine's view, what it uses, and its host range.
struct Resolved<'a> {
    node: GraphNode<'a>,
    uses: Vec<Use>,
    host: Option<HostUse>,
    copy: Option<(CopyDir, u64)>,
}

/// A kernel node's launch extra; plain for every other node.
fn node_extra(desc: &GraphNodeDesc<'_>) -> LaunchExtra {
    match desc {
        GraphNodeDesc::Kernel(_, extra, _) => *extra,
        _ => LaunchExtra::PLAIN,
    }
}

impl Vm {
    /// Resolves a node of an exec of guest context `ctx`; `host_index` is the
    /// index its host range (if any) gets.
    fn resolve_node<'a>(
        client: &Client,
        ctx: u64,
        desc: &GraphNodeDesc<'a>,
        host_index: usize,
    ) -> Result<Resolved<'a>> {
        let plain = |node| Resolved { node, uses: Vec::new(), host: None, copy: None };
        Ok(match *desc {
            GraphNodeDesc::Kernel(k, extra, params) => {
                let id = k.func_id.get();
                let f = client.functions.get(id)?;
                if client.modules.get(f.module)?.ctx != ctx {
                    return Err(Error::InvalidArgument("a kernel node's function is of another context"));
                }
                let grid = k.grid.map(|d| d.get());
                check_cluster(grid, &extra)?;
                let node = GraphNode::Kernel {
                    func: f.engine,
                    grid,
                    block: k.block.map(|d| d.get()),
                    shared_mem: k.shared_mem.get(),
                    params,
                    cluster: extra.cluster(),
                    cooperative: extra.cooperative(),
                };
                Resolved { node, uses: vec![Use::Func(id, f.engine)], host: None, copy: None }
            }
            GraphNodeDesc::Memcpy(m) => {
                let len = m.len.get();
                if len == 0 {
                    return Ok(plain(GraphNode::Empty));
                }
                let (dst, src) = (m.dst.get(), m.src.get());
                let host = HostUse { resource: m.host.resource.get(), offset: m.host.offset.get(), len };
                match m.dir.get() {
                    GRAPH_COPY_DTOD => {
                        client.allocations.check(dst, len)?;
                        client.allocations.check(src, len)?;
                        Resolved {
                            node: GraphNode::CopyDtoD { dst, src, len },
                            uses: vec![Use::Range(dst, len), Use::Range(src, len)],
                            host: None,
                            copy: Some((CopyDir::DtoD, len)),
                        }
                    }
                    GRAPH_COPY_HTOD => {
                        client.allocations.check(dst, len)?;
                        Resolved {
                            node: GraphNode::CopyHtoD { dst, host: host_index },
                            uses: vec![Use::Range(dst, len)],
                            host: Some(host),
                            copy: Some((CopyDir::HtoD, len)),
                        }
                    }
                    _ => {
                        client.allocations.check(src, len)?;
                        Resolved {
                            node: GraphNode::CopyDtoH { src, host: host_index },
                            uses: vec![Use::Range(src, len)],
                            host: Some(host),
                            copy: Some((CopyDir::DtoH, len)),
                        }
                    }
                }
            }
            GraphNodeDesc::Memset(m) => {
                let (dst, pitch, width, height) = (m.dst.get(), m.pitch.get(), m.width.get(), m.height.get());
                let elem = m.elem_size.get();
                if width == 0 || height == 0 {
                    return Ok(plain(GraphNode::Empty));
                }
                // Rows before the last take their pitch; the last its width.
                let bytes = (height - 1)
                    .checked_mul(pitch)
                    .and_then(|b| width.checked_mul(elem as u64).and_then(|w| b.checked_add(w)))
                    .ok_or(Error::InvalidArgument("memset node size overflows"))?;
                client.allocations.check(dst, bytes)?;
                Resolved {
                    node: GraphNode::Memset { dst, pitch, value: m.value.get(), elem_size: elem, width, height },
                    uses: vec![Use::Range(dst, bytes)],
                    host: None,
                    copy: None,
                }
            }
            GraphNodeDesc::Empty => plain(GraphNode::Empty),
            GraphNodeDesc::EventRecord(id) | GraphNodeDesc::EventWait(id) => {
                let e = client.events.get(id)?;
                let record = matches!(desc, GraphNodeDesc::EventRecord(_));
                // An event is recorded by work of its own context, as
                // cuEventRecord requires; any context may wait for it.
                if record && e.ctx != ctx {
                    return Err(Error::InvalidArgument("an event record node's event is of another context"));
                }
                let node = if record { GraphNode::EventRecord(e.engine) } else { GraphNode::EventWait(e.engine) };
                Resolved { node, uses: vec![Use::Event(id, e.engine)], host: None, copy: None }
            }
        })
    }

    /// The guest memory of an exec's host copies, as it is now.
    fn host_spans<'m>(&self, mem: &'m GuestMemory, ctx_id: u32, host: &[HostUse]) -> Result<Vec<GuestSpan<'m>>> {
        host.iter().map(|h| self.resources.span(mem, h.resource, ctx_id, h.offset, h.len)).collect()
    }

    pub(super) fn graph_instantiate(
        &mut self,
        mem: &GuestMemory,
        ctx_id: u32,
        client: &mut Client,
        ctx: u64,
        g: &GraphInstantiate,
        body: &GraphBody<'_>,
    ) -> Result<Reply> {
        let id = g.exec_id.get();
        client.graph_execs.check_free(id)?;
        let dag = check_dag(body.num_nodes(), body.edges())?;
        let mut spec = GraphSpec { nodes: Vec::new(), deps: dag.deps, order: dag.order };
        let mut entry = GraphExecEntry {
            engine: EngineGraphExec(0),
            ctx,
            kinds: Vec::new(),
            extras: Vec::new(),
            uses: Vec::new(),
            host: Vec::new(),
            kernels: 0,
            copies: Vec::new(),
            checked: client.epoch,
        };
        for desc in body.nodes() {
            let r = Self::resolve_node(client, ctx, &desc, entry.host.len())?;
            entry.kinds.push(desc.kind());
            entry.extras.push(node_extra(&desc));
            entry.kernels += matches!(r.node, GraphNode::Kernel { .. }) as u64;
            entry.uses.push(r.uses);
            entry.host.extend(r.host);
            entry.copies.extend(r.copy);
            spec.nodes.push(r.node);
        }
        let spans = self.host_spans(mem, ctx_id, &entry.host)?;
        entry.engine = self.engine.graph_instantiate(&spec, &spans)?;
        debug!(vm = %self.name, ctx_id, exec = id, nodes = spec.nodes.len(), "graph instantiated");
        client.graph_execs.insert(id, entry)?;
        Ok(Reply::ok(Vec::new()))
    }

    pub(super) fn graph_exec_destroy(&mut self, client: &mut Client, id: u64) -> Result<()> {
        let entry = client.graph_execs.remove(id)?;
        self.engine.graph_exec_destroy(entry.engine)?;
        Ok(())
    }

    /// Whether what an exec's nodes use still exists as it did.
    fn uses_valid(client: &Client, entry: &GraphExecEntry) -> Result<()> {
        for u in entry.uses.iter().flatten() {
            match *u {
                Use::Func(id, e) if client.functions.get(id)?.engine != e => {
                    return Err(Error::HandleNotFound { kind: "function", id })
                }
                Use::Range(dptr, len) => client.allocations.check(dptr, len)?,
                Use::Event(id, e) if client.events.get(id)?.engine != e => {
                    return Err(Error::HandleNotFound { kind: "event", id })
                }
                _ => {}
            }
        }
        Ok(())
    }

    pub(super) fn graph_launch(
        &mut self,
        mem: &GuestMemory,
        ctx_id: u32,
        client: &mut Client,
        ectx: EngineCtx,
        ctx: u64,
        l: &GraphLaunch,
    ) -> Result<()> {
        let id = l.exec_id.get();
        let sid = l.stream.get();
        let stream = Self::stream(client, sid)?;
        if client.streams.get(sid).is_ok_and(|s| s.ctx != ctx) {
            return Err(Error::InvalidArgument("the launch stream is of another context"));
        }
        let epoch = client.epoch;
        let entry = client.graph_execs.get(id)?;
        if entry.ctx != ctx {
            return Err(Error::HandleNotFound { kind: "context", id: ctx });
        }
        if entry.checked != epoch {
            Self::uses_valid(client, entry)?;
        }
        let spans = self.host_spans(mem, ctx_id, &entry.host)?;
        let exec = entry.engine;
        self.gpu_op(ectx, stream, |e| e.graph_launch(exec, stream, &spans))?;
        let counters = self.gate.counters().clone();
        counters.launches.fetch_add(entry.kernels, Ordering::Relaxed);
        for &(dir, bytes) in &entry.copies {
            counters.record_copy(dir, bytes);
        }
        client.graph_execs.get_mut(id)?.checked = epoch;
        Ok(())
    }

    pub(super) fn graph_exec_update_node(
        &mut self,
        client: &mut Client,
        ctx: u64,
        u: &GraphExecUpdateNode,
        desc: &GraphNodeDesc<'_>,
    ) -> Result<()> {
        let (id, index) = (u.exec_id.get(), u.index.get() as usize);
        let entry = client.graph_execs.get(id)?;
        if entry.ctx != ctx {
            return Err(Error::HandleNotFound { kind: "context", id: ctx });
        }
        if entry.kinds.get(index) != Some(&desc.kind()) {
            return Err(Error::InvalidArgument("a node update names another node or another kind of node"));
        }
        if entry.extras.get(index) != Some(&node_extra(desc)) {
            return Err(Error::NotSupported(
                "changing a kernel node's cluster or cooperative launch in an instantiated graph",
            ));
        }
        let r = Self::resolve_node(client, ctx, desc, 0)?;
        if r.host.is_some() || entry.uses[index].is_empty() != r.uses.is_empty() {
            // Host copies, and copies or memsets that become empty or stop
            // being so, change the engine's graph, not parameters.
            return Err(Error::NotSupported("updating this node of an instantiated graph"));
        }
        self.engine.graph_exec_update_node(entry.engine, index as u32, &r.node)?;
        let entry = client.graph_execs.get_mut(id)?;
        entry.uses[index] = r.uses;
        Ok(())
    }

    pub(super) fn occupancy(&mut self, client: &Client, o: &Occupancy, items: &[OccupancyItem]) -> Result<Reply> {
        let func = client.functions.get(o.func_id.get())?.engine;
        let mut payload = Vec::with_capacity(items.len() * 8);
        for item in items {
            let v = self.engine.occupancy(func, o.kind.get(), o.flags.get(), item)?;
            payload.extend_from_slice(&v.to_le_bytes());
        }
        Ok(Reply::ok(payload))
    }
}
