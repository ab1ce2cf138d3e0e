//! The body of a graph as it travels in [`Opcode::GraphInstantiate`] and
//! [`Opcode::GraphExecUpdateNode`]: node records and dependency edges. The
//! decoder checks every record, length and count here; what it returns can
//! be walked without failing. Whether the edges form a DAG is the backend's
//! check (it needs the topological order anyway).

use crate::decode::DecodeError;
use crate::wire::*;
use zerocopy::little_endian::U32;
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// One node, decoded.
#[derive(Debug, Clone, Copy)]
pub enum GraphNodeDesc<'a> {
    /// Packed kernel parameters follow the launch; the extra is
    /// [`LaunchExtra::PLAIN`] for a [`GRAPH_NODE_KERNEL`] record, checked
    /// for a [`GRAPH_NODE_KERNEL_EX`] one.
    Kernel(GraphKernelNode, LaunchExtra, &'a [u8]),
    Memcpy(GraphMemcpyNode),
    Memset(GraphMemsetNode),
    Empty,
    EventRecord(u64),
    EventWait(u64),
}

impl GraphNodeDesc<'_> {
    /// The `GRAPH_NODE_*` kind.
    pub fn kind(&self) -> u32 {
        match self {
            GraphNodeDesc::Kernel(..) => GRAPH_NODE_KERNEL,
            GraphNodeDesc::Memcpy(_) => GRAPH_NODE_MEMCPY,
            GraphNodeDesc::Memset(_) => GRAPH_NODE_MEMSET,
            GraphNodeDesc::Empty => GRAPH_NODE_EMPTY,
            GraphNodeDesc::EventRecord(_) => GRAPH_NODE_EVENT_RECORD,
            GraphNodeDesc::EventWait(_) => GRAPH_NODE_WAIT_EVENT,
        }
    }
}

/// A graph body whose records and edges the decoder has checked.
#[derive(Debug, Clone, Copy)]
pub struct GraphBody<'a> {
    nodes: &'a [u8],
    num_nodes: u32,
    edges: &'a [GraphEdge],
}

impl<'a> GraphBody<'a> {
    pub fn num_nodes(&self) -> u32 {
        self.num_nodes
    }

    pub fn edges(&self) -> &'a [GraphEdge] {
        self.edges
    }

    /// The nodes in index order. The records were checked when the body was
    /// decoded, so this yields exactly `num_nodes` of them.
    pub fn nodes(&self) -> impl Iterator<Item = GraphNodeDesc<'a>> + 'a {
        let mut rest = self.nodes;
        std::iter::from_fn(move || {
            let (node, len) = node_record(rest).ok()?;
            rest = &rest[len..];
            Some(node)
        })
    }
}

/// Why a node record or body is malformed.
pub type BodyError = &'static str;

/// Decodes the node record at the start of `bytes`: the node and the
/// record's length.
pub fn node_record(bytes: &[u8]) -> Result<(GraphNodeDesc<'_>, usize), BodyError> {
    let (h, _) = GraphNodeHeader::read_from_prefix(bytes).map_err(|_| "node record header is truncated")?;
    let len = h.len.get() as usize;
    let head = core::mem::size_of::<GraphNodeHeader>();
    if len < head || !len.is_multiple_of(8) || len > bytes.len() {
        return Err("node record length is not a multiple of 8 or runs past the body");
    }
    let payload = &bytes[head..len];
    let fixed = |what| -> BodyError { what };
    let node = match h.kind.get() {
        GRAPH_NODE_KERNEL | GRAPH_NODE_KERNEL_EX => {
            let (k, tail) =
                GraphKernelNode::read_from_prefix(payload).map_err(|_| fixed("kernel node is truncated"))?;
            let (extra, tail) = match h.kind.get() {
                GRAPH_NODE_KERNEL => (LaunchExtra::PLAIN, tail),
                _ => {
                    let (x, tail) =
                        LaunchExtra::read_from_prefix(tail).map_err(|_| fixed("kernel node extra is truncated"))?;
                    x.check()?;
                    (x, tail)
                }
            };
            let n = k.params_len.get();
            if n > MAX_PARAM_BYTES || n as usize > tail.len() {
                return Err("kernel node parameters do not fit the record");
            }
            if k.grid.iter().chain(k.block.iter()).any(|d| d.get() == 0) {
                return Err("kernel node has a zero grid or block dimension");
            }
            GraphNodeDesc::Kernel(k, extra, &tail[..n as usize])
        }
        GRAPH_NODE_MEMCPY => {
            let (m, _) = GraphMemcpyNode::read_from_prefix(payload).map_err(|_| fixed("memcpy node is truncated"))?;
            match m.dir.get() {
                GRAPH_COPY_DTOD => {}
                GRAPH_COPY_HTOD | GRAPH_COPY_DTOH if m.host.kind.get() == HOST_RESOURCE => {}
                GRAPH_COPY_HTOD | GRAPH_COPY_DTOH => return Err("graph copies reach host memory only in a resource"),
                _ => return Err("unknown memcpy node direction"),
            }
            GraphNodeDesc::Memcpy(m)
        }
        GRAPH_NODE_MEMSET => {
            let (m, _) = GraphMemsetNode::read_from_prefix(payload).map_err(|_| fixed("memset node is truncated"))?;
            let elem = m.elem_size.get() as u64;
            if !matches!(elem, 1 | 2 | 4) {
                return Err("memset node element size is not 1, 2 or 4");
            }
            let row = m.width.get().checked_mul(elem).ok_or("memset node row size overflows")?;
            if m.height.get() > 1 && row > m.pitch.get() {
                return Err("memset node rows are wider than their pitch");
            }
            GraphNodeDesc::Memset(m)
        }
        GRAPH_NODE_EMPTY => GraphNodeDesc::Empty,
        GRAPH_NODE_EVENT_RECORD | GRAPH_NODE_WAIT_EVENT => {
            let (e, _) = GraphEventNode::read_from_prefix(payload).map_err(|_| fixed("event node is truncated"))?;
            match h.kind.get() {
                GRAPH_NODE_EVENT_RECORD => GraphNodeDesc::EventRecord(e.event_id.get()),
                _ => GraphNodeDesc::EventWait(e.event_id.get()),
            }
        }
        _ => return Err("unknown graph node kind"),
    };
    Ok((node, len))
}

/// Checks a [`GraphInstantiate`] body: exactly `num_nodes` well-formed
/// records, then exactly `num_edges` edges.
pub fn decode_body<'a>(index: u32, g: &GraphInstantiate, body: &'a [u8]) -> Result<GraphBody<'a>, DecodeError> {
    let bad = |what| DecodeError::BadField { index, opcode: Opcode::GraphInstantiate, what };
    let (num_nodes, num_edges) = (g.num_nodes.get(), g.num_edges.get());
    if num_nodes > MAX_GRAPH_NODES || num_edges > MAX_GRAPH_EDGES {
        return Err(bad("graph has more nodes or edges than the backend accepts"));
    }
    let mut at = 0usize;
    for _ in 0..num_nodes {
        let (_, len) = node_record(&body[at..]).map_err(bad)?;
        at += len;
    }
    let edge_bytes =
        (num_edges as usize).checked_mul(core::mem::size_of::<GraphEdge>()).ok_or(bad("edges overflow"))?;
    if body.len() - at != edge_bytes {
        return Err(bad("graph body does not end with its edges"));
    }
    let edges = <[GraphEdge]>::ref_from_bytes(&body[at..]).map_err(|_| bad("edges are malformed"))?;
    Ok(GraphBody { nodes: &body[..at], num_nodes, edges })
}

/// Appends the record of `node` to `buf` (the guest's encoder, and tests').
pub fn push_node(buf: &mut Vec<u8>, node: &GraphNodeDesc<'_>) {
    fn record<T: IntoBytes + Immutable + ?Sized>(buf: &mut Vec<u8>, kind: u32, fixed: &T, tail: &[u8]) {
        record_ex(buf, kind, fixed, &[], tail)
    }
    fn record_ex<T: IntoBytes + Immutable + ?Sized>(buf: &mut Vec<u8>, kind: u32, fixed: &T, more: &[u8], tail: &[u8]) {
        let body = core::mem::size_of::<GraphNodeHeader>() + fixed.as_bytes().len() + more.len() + tail.len();
        let len = body.next_multiple_of(8);
        let h = GraphNodeHeader { kind: U32::new(kind), len: U32::new(len as u32) };
        buf.extend_from_slice(h.as_bytes());
        buf.extend_from_slice(fixed.as_bytes());
        buf.extend_from_slice(more);
        buf.extend_from_slice(tail);
        buf.resize(buf.len() + (len - body), 0);
    }
    match node {
        // A plain kernel keeps the record older backends read.
        GraphNodeDesc::Kernel(k, x, params) if x.is_plain() => record(buf, GRAPH_NODE_KERNEL, k, params),
        GraphNodeDesc::Kernel(k, x, params) => record_ex(buf, GRAPH_NODE_KERNEL_EX, k, x.as_bytes(), params),
        GraphNodeDesc::Memcpy(m) => record(buf, GRAPH_NODE_MEMCPY, m, &[]),
        GraphNodeDesc::Memset(m) => record(buf, GRAPH_NODE_MEMSET, m, &[]),
        GraphNodeDesc::Empty => record(buf, GRAPH_NODE_EMPTY, &[0u8; 0], &[]),
        GraphNodeDesc::EventRecord(e) => {
            record(buf, GRAPH_NODE_EVENT_RECORD, &GraphEventNode { event_id: (*e).into() }, &[])
        }
        GraphNodeDesc::EventWait(e) => {
            record(buf, GRAPH_NODE_WAIT_EVENT, &GraphEventNode { event_id: (*e).into() }, &[])
        }
    }
}

/// Appends edges to a body.
pub fn push_edges(buf: &mut Vec<u8>, edges: &[GraphEdge]) {
    buf.extend_from_slice(edges.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use zerocopy::little_endian::U64;

    fn kernel(params: &[u8]) -> (GraphKernelNode, Vec<u8>) {
        let k = GraphKernelNode {
            func_id: U64::new(7),
            grid: [U32::new(2), U32::new(1), U32::new(1)],
            block: [U32::new(64), U32::new(1), U32::new(1)],
            shared_mem: U32::new(0),
            params_len: U32::new(params.len() as u32),
        };
        (k, params.to_vec())
    }

    fn header(n: u32, e: u32, len: usize) -> GraphInstantiate {
        GraphInstantiate {
            exec_id: U64::new(9),
            flags: U64::new(0),
            num_nodes: U32::new(n),
            num_edges: U32::new(e),
            body_len: U64::new(len as u64),
        }
    }

    #[test]
    fn nodes_and_edges_round_trip() {
        let (k, p) = kernel(&[1, 2, 3, 4, 5]);
        let mut body = Vec::new();
        push_node(&mut body, &GraphNodeDesc::Kernel(k, LaunchExtra::PLAIN, &p));
        push_node(&mut body, &GraphNodeDesc::Empty);
        push_node(&mut body, &GraphNodeDesc::EventRecord(33));
        push_edges(&mut body, &[GraphEdge { from: U32::new(0), to: U32::new(1) }]);
        let b = decode_body(0, &header(3, 1, body.len()), &body).unwrap();
        let nodes: Vec<_> = b.nodes().collect();
        assert_eq!(nodes.len(), 3);
        assert!(
            matches!(nodes[0], GraphNodeDesc::Kernel(kk, x, pp) if kk == k && x.is_plain() && pp == [1, 2, 3, 4, 5])
        );
        assert!(matches!(nodes[1], GraphNodeDesc::Empty));
        assert!(matches!(nodes[2], GraphNodeDesc::EventRecord(33)));
        assert_eq!(b.edges(), &[GraphEdge { from: U32::new(0), to: U32::new(1) }]);
    }

    #[test]
    fn counts_lengths_and_fields_are_checked() {
        let (k, p) = kernel(&[0; 8]);
        let mut body = Vec::new();
        push_node(&mut body, &GraphNodeDesc::Kernel(k, LaunchExtra::PLAIN, &p));
        // More nodes claimed than present, trailing bytes that are not edges.
        assert!(decode_body(0, &header(2, 0, body.len()), &body).is_err());
        let mut extra = body.clone();
        extra.extend_from_slice(&[0; 4]);
        assert!(decode_body(0, &header(1, 0, extra.len()), &extra).is_err());
        assert!(decode_body(0, &header(1, 1, body.len()), &body).is_err());
        // Every truncation fails.
        for n in 0..body.len() {
            assert!(decode_body(0, &header(1, 0, n), &body[..n]).is_err(), "prefix {n}");
        }
        // A parameter length past the record.
        let mut big = body.clone();
        big[8 + 36..8 + 40].copy_from_slice(&1000u32.to_le_bytes());
        assert!(decode_body(0, &header(1, 0, big.len()), &big).is_err());
        // Too many nodes for the backend.
        assert!(decode_body(0, &header(MAX_GRAPH_NODES + 1, 0, 0), &[]).is_err());
    }

    #[test]
    fn cluster_kernel_nodes_carry_their_extra_and_plain_ones_keep_the_old_record() {
        let (k, p) = kernel(&[9; 4]);
        let mut plain = Vec::new();
        push_node(&mut plain, &GraphNodeDesc::Kernel(k, LaunchExtra::PLAIN, &p));
        assert_eq!(u32::from_le_bytes(plain[..4].try_into().unwrap()), GRAPH_NODE_KERNEL);
        let x = LaunchExtra::new([2, 1, 1], LAUNCH_F_COOPERATIVE);
        let mut buf = Vec::new();
        push_node(&mut buf, &GraphNodeDesc::Kernel(k, x, &p));
        assert_eq!(u32::from_le_bytes(buf[..4].try_into().unwrap()), GRAPH_NODE_KERNEL_EX);
        assert_eq!(buf.len(), plain.len() + 16);
        let (node, len) = node_record(&buf).unwrap();
        assert_eq!(len, buf.len());
        assert!(matches!(node, GraphNodeDesc::Kernel(kk, xx, pp) if kk == k && xx == x && pp == [9; 4]));
        assert_eq!(node.kind(), GRAPH_NODE_KERNEL);
        for n in 0..buf.len() {
            assert!(node_record(&buf[..n]).is_err(), "prefix {n}");
        }
        // A zero cluster dimension in the record.
        let mut bad = buf.clone();
        let at = 8 + core::mem::size_of::<GraphKernelNode>();
        bad[at..at + 4].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(node_record(&bad).err(), Some("a cluster dimension is zero"));
    }

    #[test]
    fn host_copies_must_name_a_resource_and_memsets_a_valid_shape() {
        let m = GraphMemcpyNode {
            dir: U32::new(GRAPH_COPY_HTOD),
            host: HostRef { kind: U32::new(HOST_INLINE), ..Default::default() },
            ..Default::default()
        };
        let mut buf = Vec::new();
        push_node(&mut buf, &GraphNodeDesc::Memcpy(m));
        assert!(node_record(&buf).is_err());
        let s = GraphMemsetNode {
            dst: U64::new(0x1000),
            pitch: U64::new(4),
            width: U64::new(2),
            height: U64::new(3),
            value: U32::new(1),
            elem_size: U32::new(4),
        };
        let mut buf = Vec::new();
        push_node(&mut buf, &GraphNodeDesc::Memset(s));
        assert!(node_record(&buf).is_err(), "8-byte rows in a 4-byte pitch");
    }
}
