//! The shape of a graph the guest sends to instantiate: its edges must name
//! nodes that exist, once each, and form a DAG. The topological order found
//! here is how the `sim` engine replays the graph and the order in which the
//! `cuda` engine adds nodes (a node's dependencies must exist before it).

use protocol::GraphEdge;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DagError {
    #[error("edge {index} names node {node}, but the graph has {nodes} nodes")]
    NodeOutOfRange { index: usize, node: u32, nodes: u32 },
    #[error("edge {index} makes node {node} depend on itself")]
    SelfEdge { index: usize, node: u32 },
    #[error("edge {index} ({from} -> {to}) is given twice")]
    DuplicateEdge { index: usize, from: u32, to: u32 },
    #[error("the edges form a cycle through node {0}")]
    Cycle(u32),
}

/// A checked DAG: each node's dependencies and a topological order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dag {
    pub deps: Vec<Vec<u32>>,
    pub order: Vec<u32>,
}

/// Checks `edges` over `nodes` nodes and orders the nodes (Kahn's
/// algorithm; among ready nodes the lowest index first, so a chain captured
/// from one stream replays in capture order).
pub fn check_dag(nodes: u32, edges: &[GraphEdge]) -> Result<Dag, DagError> {
    let n = nodes as usize;
    let mut deps: Vec<Vec<u32>> = vec![Vec::new(); n];
    let mut succs: Vec<Vec<u32>> = vec![Vec::new(); n];
    let mut seen = std::collections::HashSet::with_capacity(edges.len());
    for (index, e) in edges.iter().enumerate() {
        let (from, to) = (e.from.get(), e.to.get());
        for node in [from, to] {
            if node >= nodes {
                return Err(DagError::NodeOutOfRange { index, node, nodes });
            }
        }
        if from == to {
            return Err(DagError::SelfEdge { index, node: from });
        }
        if !seen.insert((from, to)) {
            return Err(DagError::DuplicateEdge { index, from, to });
        }
        deps[to as usize].push(from);
        succs[from as usize].push(to);
    }
    let mut waiting: Vec<usize> = deps.iter().map(Vec::len).collect();
    let mut ready: std::collections::BinaryHeap<std::cmp::Reverse<u32>> =
        (0..nodes).filter(|&i| waiting[i as usize] == 0).map(std::cmp::Reverse).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(std::cmp::Reverse(i)) = ready.pop() {
        order.push(i);
        for &s in &succs[i as usize] {
            waiting[s as usize] -= 1;
            if waiting[s as usize] == 0 {
                ready.push(std::cmp::Reverse(s));
            }
        }
    }
    if order.len() != n {
        let stuck = (0..nodes).find(|&i| waiting[i as usize] > 0).unwrap_or(0);
        return Err(DagError::Cycle(stuck));
    }
    Ok(Dag { deps, order })
}

#[cfg(test)]
mod tests {
    use super::*;
    use zerocopy::little_endian::U32;

    fn edges(pairs: &[(u32, u32)]) -> Vec<GraphEdge> {
        pairs.iter().map(|&(f, t)| GraphEdge { from: U32::new(f), to: U32::new(t) }).collect()
    }

    #[test]
    fn a_fork_and_join_orders_every_node_after_its_dependencies() {
        // 0 -> {1, 2} -> 3, plus an isolated 4.
        let dag = check_dag(5, &edges(&[(0, 1), (0, 2), (1, 3), (2, 3)])).unwrap();
        assert_eq!(dag.order, vec![0, 1, 2, 3, 4]);
        assert_eq!(dag.deps[3], vec![1, 2]);
        let pos = |n: u32| dag.order.iter().position(|&x| x == n).unwrap();
        assert!(pos(0) < pos(1) && pos(1) < pos(3) && pos(2) < pos(3));
    }

    #[test]
    fn cycles_bad_references_and_repeats_are_refused() {
        assert_eq!(check_dag(3, &edges(&[(0, 1), (1, 2), (2, 1)])), Err(DagError::Cycle(1)));
        assert!(matches!(check_dag(2, &edges(&[(0, 2)])), Err(DagError::NodeOutOfRange { node: 2, .. })));
        assert!(matches!(check_dag(2, &edges(&[(1, 1)])), Err(DagError::SelfEdge { node: 1, .. })));
        assert!(matches!(check_dag(2, &edges(&[(0, 1), (0, 1)])), Err(DagError::DuplicateEdge { .. })));
        assert_eq!(check_dag(0, &[]).unwrap().order, Vec::<u32>::new());
    }
}
