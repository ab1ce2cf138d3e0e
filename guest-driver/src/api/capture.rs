//! Stream capture. While a stream captures, the asynchronous work issued to
//! it (launches, copies, memsets, event records and waits) becomes nodes of a
//! guest-side graph instead of commands for the backend; streams that wait
//! for an event recorded in a capture join it (fork), and must be joined
//! back into the stream that began it before the capture ends. Operations
//! CUDA forbids during capture fail with the errors it gives and invalidate
//! the capture as it does: synchronizing a capturing stream, the legacy
//! stream meeting a capturing blocking stream of its context, calls that are
//! unsafe in the thread's capture mode (allocations, frees, synchronous
//! copies), waits that would cross the capture's boundary.
//!
//! The state lives with the graphs (`graph::lock`); a counter of live
//! captures lets every call skip it when nothing captures, the common case.

use super::graph::{self, CUgraphEdgeData, Graphs, NodeKind};
use super::state;
use super::types::*;
use super::{ffi, handle, id_of, session, set_opt, CuRes, Out};
use protocol::cuda::*;
use protocol::{STREAM_LEGACY, STREAM_NULL, STREAM_PER_THREAD};
use std::cell::Cell;
use std::collections::HashMap;
use std::ffi::{c_int, c_uint};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::thread::ThreadId;

/// `CUstreamCaptureMode`.
pub const MODE_GLOBAL: c_int = 0;
pub const MODE_THREAD_LOCAL: c_int = 1;
pub const MODE_RELAXED: c_int = 2;
/// `CUstreamCaptureStatus`.
const STATUS_NONE: c_uint = 0;
const STATUS_ACTIVE: c_uint = 1;
const STATUS_INVALIDATED: c_uint = 2;
/// `CUstreamUpdateCaptureDependencies_flags`.
const SET_CAPTURE_DEPENDENCIES: c_uint = 1;

/// Live capture sequences, so that calls skip the capture state when there
/// are none.
static LIVE: AtomicUsize = AtomicUsize::new(0);
/// Capture ids, unique for the process's lifetime.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);
/// Keys of the per-thread default streams (one per thread), far from the
/// guest ids of created streams.
static NEXT_PER_THREAD_KEY: AtomicU64 = AtomicU64::new(1 << 62);

thread_local! {
    static MODE: Cell<c_int> = const { Cell::new(MODE_GLOBAL) };
    static PER_THREAD_KEY: Cell<u64> = const { Cell::new(0) };
}

/// One capture sequence.
#[derive(Debug)]
pub struct Sequence {
    pub graph: u64,
    /// The stream (key) that began it, where it must end.
    origin: u64,
    mode: c_int,
    thread: ThreadId,
    invalidated: bool,
    /// Begun by cuStreamBeginCaptureToGraph: the graph is the program's and
    /// outlives a failed capture.
    into_existing: bool,
}

/// A stream taking part in a capture.
#[derive(Debug)]
pub struct StreamCapture {
    seq: u64,
    ctx: u64,
    /// Not created with CU_STREAM_NON_BLOCKING: the legacy stream would wait
    /// for it.
    blocking: bool,
    /// The nodes the stream's next captured node depends on.
    deps: Vec<u64>,
    /// What cuStreamGetCaptureInfo last handed out; valid until the next
    /// query on the stream or the end of the capture.
    deps_out: Vec<usize>,
    edges_out: Vec<CUgraphEdgeData>,
}

#[derive(Debug, Default)]
pub struct CaptureState {
    seqs: HashMap<u64, Sequence>,
    /// By stream key (see [`key`]).
    streams: HashMap<u64, StreamCapture>,
    /// Events last recorded in a capture: its id and the nodes the event
    /// stands for.
    events: HashMap<u64, (u64, Vec<u64>)>,
}

impl CaptureState {
    fn invalidate(&mut self, seq: u64) {
        if let Some(s) = self.seqs.get_mut(&seq) {
            s.invalidated = true;
        }
    }

    /// Sequences with a blocking stream of context `ctx`: the ones the
    /// legacy stream of that context would implicitly wait for.
    fn blocking_in(&self, ctx: u64) -> Vec<u64> {
        let mut seqs: Vec<u64> = self.streams.values().filter(|s| s.ctx == ctx && s.blocking).map(|s| s.seq).collect();
        seqs.sort_unstable();
        seqs.dedup();
        seqs
    }

    fn is_invalidated(&self, seq: u64) -> bool {
        self.seqs.get(&seq).is_none_or(|s| s.invalidated)
    }
}

/// The capture key of stream `sid`: its id, or for the per-thread default
/// stream (id 2 on every thread) a key of this thread's.
fn key(sid: u64) -> u64 {
    if sid != STREAM_PER_THREAD {
        return sid;
    }
    PER_THREAD_KEY.with(|k| {
        if k.get() == 0 {
            k.set(NEXT_PER_THREAD_KEY.fetch_add(1, Ordering::Relaxed));
        }
        k.get()
    })
}

fn is_legacy(sid: u64) -> bool {
    sid == STREAM_NULL || sid == STREAM_LEGACY
}

fn nothing_captures() -> bool {
    LIVE.load(Ordering::Acquire) == 0
}

/// Whether the stream is blocking (the per-thread stream is).
fn blocking(sid: u64) -> bool {
    state::lock().streams.get(&sid).is_none_or(|s| s.flags & CU_STREAM_NON_BLOCKING == 0)
}

/// The legacy stream of `ctx` is about to be used: an error (and the
/// captures invalidated) if a blocking stream of the context captures.
fn check_legacy(cs: &mut CaptureState, sid: u64, ctx: u64) -> CuRes {
    if !is_legacy(sid) {
        return Ok(());
    }
    let conflicting = cs.blocking_in(ctx);
    if conflicting.is_empty() {
        return Ok(());
    }
    for s in conflicting {
        cs.invalidate(s);
    }
    Err(CUDA_ERROR_STREAM_CAPTURE_IMPLICIT)
}

/// The rule of the thread's capture mode for potentially unsafe calls.
fn check_unsafe_in(cs: &mut CaptureState) -> CuRes {
    let me = std::thread::current().id();
    let mode = MODE.with(Cell::get);
    let conflicting: Vec<u64> = cs
        .seqs
        .iter()
        .filter(|(_, s)| {
            let own = s.thread == me && s.mode != MODE_RELAXED;
            match mode {
                MODE_RELAXED => false,
                MODE_THREAD_LOCAL => own,
                _ => own || s.mode == MODE_GLOBAL,
            }
        })
        .map(|(id, _)| *id)
        .collect();
    if conflicting.is_empty() {
        return Ok(());
    }
    for s in conflicting {
        cs.invalidate(s);
    }
    Err(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED)
}

/// A call CUDA deems potentially unsafe during capture (allocations, frees,
/// pinned memory, synchronous copies): fails with
/// CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED where the thread's capture mode
/// forbids it, invalidating the captures it would corrupt.
pub fn check_unsafe() -> CuRes {
    if nothing_captures() {
        return Ok(());
    }
    check_unsafe_in(&mut graph::lock().capture)
}

/// Routes an operation on stream `sid` of context `ctx`. `sync`: the call
/// waits for the stream (synchronous copies and memsets). Returns `true`
/// when the operation was captured (the caller sends nothing), `false` when
/// it runs as usual. `node` makes the node to capture; its error (an
/// operation capture cannot express) invalidates the capture.
pub fn intercept(sid: u64, ctx: u64, sync: bool, node: impl FnOnce() -> CuRes<NodeKind>) -> CuRes<bool> {
    if nothing_captures() {
        return Ok(false);
    }
    let c = session()?;
    let mut g = graph::lock();
    if sync {
        check_unsafe_in(&mut g.capture)?;
    }
    let k = key(sid);
    let Some(sc) = g.capture.streams.get(&k) else {
        check_legacy(&mut g.capture, sid, ctx)?;
        return Ok(false);
    };
    let seq = sc.seq;
    if sync {
        g.capture.invalidate(seq);
        return Err(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
    }
    if g.capture.is_invalidated(seq) {
        return Err(CUDA_ERROR_STREAM_CAPTURE_INVALIDATED);
    }
    let kind = match node() {
        Ok(k) => k,
        Err(e) => {
            g.capture.invalidate(seq);
            return Err(e);
        }
    };
    add_captured(&mut g, c.new_id(), k, kind)?;
    Ok(true)
}

/// Adds a node after stream `k`'s dependencies; it becomes their new set.
fn add_captured(g: &mut Graphs, id: u64, k: u64, kind: NodeKind) -> CuRes {
    let sc = g.capture.streams.get(&k).ok_or(CUDA_ERROR_ILLEGAL_STATE)?;
    let graph = g.capture.seqs.get(&sc.seq).ok_or(CUDA_ERROR_ILLEGAL_STATE)?.graph;
    let deps = sc.deps.clone();
    g.add_node(id, graph, kind, &deps)?;
    if let Some(sc) = g.capture.streams.get_mut(&k) {
        sc.deps = vec![id];
    }
    Ok(())
}

/// cuStreamSynchronize and cuStreamQuery: not on a capturing stream, nor on
/// the legacy stream while a blocking stream of its context captures.
pub fn check_stream_sync(sid: u64, ctx: u64) -> CuRes {
    if nothing_captures() {
        return Ok(());
    }
    let mut g = graph::lock();
    if let Some(sc) = g.capture.streams.get(&key(sid)) {
        let seq = sc.seq;
        g.capture.invalidate(seq);
        return Err(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
    }
    check_legacy(&mut g.capture, sid, ctx)
}

/// cuCtxSynchronize would wait for the context's capturing streams.
pub fn check_ctx_sync(ctx: u64) -> CuRes {
    if nothing_captures() {
        return Ok(());
    }
    let mut g = graph::lock();
    let seqs: Vec<u64> = g.capture.streams.values().filter(|s| s.ctx == ctx).map(|s| s.seq).collect();
    if seqs.is_empty() {
        return Ok(());
    }
    for s in seqs {
        g.capture.invalidate(s);
    }
    Err(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED)
}

/// Querying or waiting for an event last recorded in a capture.
pub fn check_event(event: u64) -> CuRes {
    if nothing_captures() {
        return Ok(());
    }
    match graph::lock().capture.events.contains_key(&event) {
        true => Err(CUDA_ERROR_CAPTURED_EVENT),
        false => Ok(()),
    }
}

/// cuEventRecord on stream `sid`: in a capture the event stands for the
/// stream's current dependencies (an external record becomes a node).
/// Returns `true` when captured.
pub fn event_record(event: u64, sid: u64, ctx: u64, external: bool) -> CuRes<bool> {
    if nothing_captures() {
        return Ok(false);
    }
    let c = session()?;
    let mut g = graph::lock();
    let k = key(sid);
    let Some(sc) = g.capture.streams.get(&k) else {
        // Recorded outside any capture again.
        g.capture.events.remove(&event);
        check_legacy(&mut g.capture, sid, ctx)?;
        return Ok(false);
    };
    let seq = sc.seq;
    if g.capture.is_invalidated(seq) {
        return Err(CUDA_ERROR_STREAM_CAPTURE_INVALIDATED);
    }
    if external {
        add_captured(&mut g, c.new_id(), k, NodeKind::EventRecord(event))?;
    }
    let deps = g.capture.streams.get(&k).map(|s| s.deps.clone()).unwrap_or_default();
    g.capture.events.insert(event, (seq, deps));
    Ok(true)
}

/// cuStreamWaitEvent: a wait for an event of a capture joins the stream to
/// it (or, on a stream of the same capture, adds the event's nodes to its
/// dependencies); a capturing stream may wait for no other event, unless
/// the wait is external (a node). Returns `true` when captured.
pub fn wait_event(sid: u64, ctx: u64, event: u64, external: bool) -> CuRes<bool> {
    if nothing_captures() {
        return Ok(false);
    }
    let stream_blocks = blocking(sid);
    let c = session()?;
    let mut g = graph::lock();
    let k = key(sid);
    let ev = g.capture.events.get(&event).cloned();
    let own = g.capture.streams.get(&k).map(|s| s.seq);
    match (ev, own) {
        (Some((es, deps)), Some(ss)) if es == ss => {
            if g.capture.is_invalidated(ss) {
                return Err(CUDA_ERROR_STREAM_CAPTURE_INVALIDATED);
            }
            if let Some(sc) = g.capture.streams.get_mut(&k) {
                for d in deps {
                    if !sc.deps.contains(&d) {
                        sc.deps.push(d);
                    }
                }
            }
            Ok(true)
        }
        (Some((es, _)), Some(ss)) => {
            g.capture.invalidate(es);
            g.capture.invalidate(ss);
            Err(CUDA_ERROR_STREAM_CAPTURE_MERGE)
        }
        (Some((es, deps)), None) => {
            if is_legacy(sid) {
                // The legacy stream cannot take part in a capture.
                g.capture.invalidate(es);
                return Err(CUDA_ERROR_STREAM_CAPTURE_IMPLICIT);
            }
            if g.capture.is_invalidated(es) {
                return Err(CUDA_ERROR_STREAM_CAPTURE_INVALIDATED);
            }
            let sc = StreamCapture {
                seq: es,
                ctx,
                blocking: stream_blocks,
                deps,
                deps_out: Vec::new(),
                edges_out: Vec::new(),
            };
            g.capture.streams.insert(k, sc);
            Ok(true)
        }
        (None, Some(ss)) => {
            if g.capture.is_invalidated(ss) {
                return Err(CUDA_ERROR_STREAM_CAPTURE_INVALIDATED);
            }
            if !external {
                g.capture.invalidate(ss);
                return Err(CUDA_ERROR_STREAM_CAPTURE_ISOLATION);
            }
            add_captured(&mut g, c.new_id(), k, NodeKind::EventWait(event))?;
            Ok(true)
        }
        (None, None) => {
            check_legacy(&mut g.capture, sid, ctx)?;
            Ok(false)
        }
    }
}

/// Ends capture sequence `seq`: its streams and events leave it, and its
/// graph is the program's (`keep`) or destroyed.
fn end(g: &mut Graphs, seq: u64, keep: bool) {
    let Some(s) = g.capture.seqs.remove(&seq) else { return };
    LIVE.fetch_sub(1, Ordering::AcqRel);
    g.capture.streams.retain(|_, sc| sc.seq != seq);
    g.capture.events.retain(|_, (es, _)| *es != seq);
    if keep || s.into_existing {
        if let Some(info) = g.graphs.get_mut(&s.graph) {
            info.capture = None;
        }
    } else {
        g.remove_graph(s.graph);
    }
}

/// A stream is being destroyed: it leaves its capture, and a capture it
/// began ends (it can never be ended on it).
pub fn forget_stream(sid: u64) {
    if nothing_captures() {
        return;
    }
    let mut g = graph::lock();
    let k = key(sid);
    let Some(sc) = g.capture.streams.remove(&k) else { return };
    if g.capture.seqs.get(&sc.seq).is_some_and(|s| s.origin == k) {
        end(&mut g, sc.seq, false);
    }
}

/// The captures of a destroyed or reset context end.
pub fn purge_ctx(g: &mut Graphs, ctx: u64) {
    let seqs: Vec<u64> = g.capture.streams.values().filter(|s| s.ctx == ctx).map(|s| s.seq).collect();
    for s in seqs {
        end(g, s, false);
    }
}

// ---- the exports ---------------------------------------------------------

/// # Safety
/// `deps` NULL or `n` handles; `data` NULL or `n` entries.
unsafe fn begin(
    h: CUstream,
    mode: c_int,
    ptsz: bool,
    into: Option<(CUgraph, *const CUgraphNode, *const CUgraphEdgeData, usize)>,
) -> CuRes {
    let c = session()?;
    if !(MODE_GLOBAL..=MODE_RELAXED).contains(&mode) {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let (sid, ctx) = state::lock().resolve_stream(h, ptsz)?;
    if is_legacy(sid) {
        return Err(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
    }
    let stream_blocks = blocking(sid);
    let (graph, deps) = match into {
        // SAFETY: forwarded from the caller.
        Some((g, deps, data, n)) => unsafe {
            graph::check_edge_data(data, n)?;
            (id_of(g), graph::dep_list(deps, n)?)
        },
        None => (c.new_id(), Vec::new()),
    };
    let mut g = graph::lock();
    let k = key(sid);
    if g.capture.streams.contains_key(&k) {
        return Err(CUDA_ERROR_ILLEGAL_STATE);
    }
    match into {
        Some(_) => {
            let info = g.graphs.get(&graph).ok_or(CUDA_ERROR_INVALID_VALUE)?;
            if info.capture.is_some() || !deps.iter().all(|d| info.nodes.contains(d)) {
                return Err(CUDA_ERROR_INVALID_VALUE);
            }
        }
        None => {
            g.graphs.insert(graph, graph::GraphInfo::default());
        }
    }
    let seq = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    if let Some(info) = g.graphs.get_mut(&graph) {
        info.capture = Some(seq);
    }
    let s = Sequence {
        graph,
        origin: k,
        mode,
        thread: std::thread::current().id(),
        invalidated: false,
        into_existing: into.is_some(),
    };
    g.capture.seqs.insert(seq, s);
    let sc = StreamCapture { seq, ctx, blocking: stream_blocks, deps, deps_out: Vec::new(), edges_out: Vec::new() };
    g.capture.streams.insert(k, sc);
    LIVE.fetch_add(1, Ordering::AcqRel);
    Ok(())
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamBeginCapture(hStream: CUstream) -> CUresult {
    // SAFETY: no arrays.
    ffi(|| unsafe { begin(hStream, MODE_GLOBAL, false, None) })
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamBeginCapture_ptsz(hStream: CUstream) -> CUresult {
    // SAFETY: no arrays.
    ffi(|| unsafe { begin(hStream, MODE_GLOBAL, true, None) })
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamBeginCapture_v2(hStream: CUstream, mode: c_int) -> CUresult {
    // SAFETY: no arrays.
    ffi(|| unsafe { begin(hStream, mode, false, None) })
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamBeginCapture_v2_ptsz(hStream: CUstream, mode: c_int) -> CUresult {
    // SAFETY: no arrays.
    ffi(|| unsafe { begin(hStream, mode, true, None) })
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamBeginCaptureToGraph(
    hStream: CUstream,
    hGraph: CUgraph,
    dependencies: *const CUgraphNode,
    dependencyData: *const CUgraphEdgeData,
    numDependencies: usize,
    mode: c_int,
) -> CUresult {
    let into = Some((hGraph, dependencies, dependencyData, numDependencies));
    // SAFETY: the caller's contract, forwarded.
    ffi(|| unsafe { begin(hStream, mode, false, into) })
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamBeginCaptureToGraph_ptsz(
    hStream: CUstream,
    hGraph: CUgraph,
    dependencies: *const CUgraphNode,
    dependencyData: *const CUgraphEdgeData,
    numDependencies: usize,
    mode: c_int,
) -> CUresult {
    let into = Some((hGraph, dependencies, dependencyData, numDependencies));
    // SAFETY: the caller's contract, forwarded.
    ffi(|| unsafe { begin(hStream, mode, true, into) })
}

fn end_capture(h: CUstream, out: Out<CUgraph>, ptsz: bool) -> CuRes {
    session()?;
    let (sid, _) = state::lock().resolve_stream(h, ptsz)?;
    let mut g = graph::lock();
    let k = key(sid);
    let seq = g.capture.streams.get(&k).ok_or(CUDA_ERROR_ILLEGAL_STATE)?.seq;
    let s = g.capture.seqs.get(&seq).ok_or(CUDA_ERROR_ILLEGAL_STATE)?;
    if s.origin != k {
        g.capture.invalidate(seq);
        out.set(std::ptr::null_mut());
        return Err(CUDA_ERROR_STREAM_CAPTURE_UNMATCHED);
    }
    if s.mode != MODE_RELAXED && s.thread != std::thread::current().id() {
        return Err(CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD);
    }
    let graph = s.graph;
    let result = if s.invalidated {
        Err(CUDA_ERROR_STREAM_CAPTURE_INVALIDATED)
    } else {
        // Every stream forked into the capture must have been joined back:
        // its last work is something the origin's next work depends on.
        let origin = g.capture.streams.get(&k).map(|s| s.deps.clone()).unwrap_or_default();
        let joined = g.ancestors_of(&origin);
        let unjoined =
            g.capture.streams.values().filter(|sc| sc.seq == seq).any(|sc| sc.deps.iter().any(|d| !joined.contains(d)));
        if unjoined {
            Err(CUDA_ERROR_STREAM_CAPTURE_UNJOINED)
        } else {
            Ok(())
        }
    };
    end(&mut g, seq, result.is_ok());
    match result {
        Ok(()) => out.set(handle(graph)),
        Err(_) => out.set(std::ptr::null_mut()),
    }
    result
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamEndCapture(hStream: CUstream, phGraph: *mut CUgraph) -> CUresult {
    ffi(|| {
        // SAFETY: output argument per the CUDA API.
        let out = unsafe { Out::new(phGraph) }?;
        end_capture(hStream, out, false)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamEndCapture_ptsz(hStream: CUstream, phGraph: *mut CUgraph) -> CUresult {
    ffi(|| {
        // SAFETY: output argument per the CUDA API.
        let out = unsafe { Out::new(phGraph) }?;
        end_capture(hStream, out, true)
    })
}

/// The capture a stream takes part in: its id, graph and the stream's key.
struct Active {
    seq: u64,
    graph: u64,
    key: u64,
}

/// A stream's capture status, and its capture when it has one.
fn status(h: CUstream, ptsz: bool) -> CuRes<(c_uint, Option<Active>)> {
    session()?;
    let (sid, ctx) = state::lock().resolve_stream(h, ptsz)?;
    if nothing_captures() {
        return Ok((STATUS_NONE, None));
    }
    let g = graph::lock();
    let k = key(sid);
    if let Some(sc) = g.capture.streams.get(&k) {
        let s = g.capture.seqs.get(&sc.seq).ok_or(CUDA_ERROR_ILLEGAL_STATE)?;
        let st = if s.invalidated { STATUS_INVALIDATED } else { STATUS_ACTIVE };
        return Ok((st, Some(Active { seq: sc.seq, graph: s.graph, key: k })));
    }
    // The legacy stream cannot be asked while it is unusable; asking does
    // not invalidate anything.
    if is_legacy(sid) && !g.capture.blocking_in(ctx).is_empty() {
        return Err(CUDA_ERROR_STREAM_CAPTURE_IMPLICIT);
    }
    Ok((STATUS_NONE, None))
}

/// # Safety
/// `out` is NULL or writable.
unsafe fn is_capturing(h: CUstream, out: *mut c_uint, ptsz: bool) -> CuRes {
    // SAFETY: output argument per the CUDA API.
    let out = unsafe { Out::new(out) }?;
    out.set(status(h, ptsz)?.0);
    Ok(())
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamIsCapturing(hStream: CUstream, captureStatus: *mut c_uint) -> CUresult {
    // SAFETY: the caller's contract, forwarded.
    ffi(|| unsafe { is_capturing(hStream, captureStatus, false) })
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamIsCapturing_ptsz(hStream: CUstream, captureStatus: *mut c_uint) -> CUresult {
    // SAFETY: the caller's contract, forwarded.
    ffi(|| unsafe { is_capturing(hStream, captureStatus, true) })
}

/// cuStreamGetCaptureInfo in all its forms; the outputs a form lacks are
/// NULL.
///
/// # Safety
/// Outputs are NULL or writable.
#[allow(clippy::too_many_arguments)]
unsafe fn capture_info(
    h: CUstream,
    status_out: *mut c_uint,
    id: *mut u64,
    graph_out: *mut CUgraph,
    deps_out: *mut *const CUgraphNode,
    edges_out: *mut *const CUgraphEdgeData,
    count: *mut usize,
    ptsz: bool,
) -> CuRes {
    // SAFETY: output arguments per the CUDA API; only the status is required.
    let (st, id, gr, d, e, n) = unsafe {
        (
            Out::new(status_out)?,
            Out::optional(id),
            Out::optional(graph_out),
            Out::optional(deps_out),
            Out::optional(edges_out),
            Out::optional(count),
        )
    };
    if e.is_some() && d.is_none() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let (code, active) = status(h, ptsz)?;
    st.set(code);
    let Some(Active { seq, graph, key: k }) = active.filter(|_| code == STATUS_ACTIVE) else {
        return Ok(());
    };
    set_opt(id, seq);
    set_opt(gr, handle(graph));
    let mut g = graph::lock();
    let sc = g.capture.streams.get_mut(&k).ok_or(CUDA_ERROR_ILLEGAL_STATE)?;
    sc.deps_out = sc.deps.iter().map(|&n| n as usize).collect();
    sc.edges_out = vec![CUgraphEdgeData::default(); sc.deps.len()];
    set_opt(d, sc.deps_out.as_ptr() as *const CUgraphNode);
    set_opt(e, sc.edges_out.as_ptr());
    set_opt(n, sc.deps.len());
    Ok(())
}

macro_rules! capture_info_exports {
    ($($name:ident, $ptsz:expr;)*) => {$(
        #[no_mangle]
        pub unsafe extern "C" fn $name(hStream: CUstream, captureStatus_out: *mut c_uint, id_out: *mut u64) -> CUresult {
            let null = std::ptr::null_mut();
            // SAFETY: the caller's contract, forwarded; the outputs this
            // form lacks are NULL.
            ffi(|| unsafe { capture_info(hStream, captureStatus_out, id_out, null, null as _, null as _, null as _, $ptsz) })
        }
    )*};
}

capture_info_exports! {
    cuStreamGetCaptureInfo, false;
    cuStreamGetCaptureInfo_ptsz, true;
}

macro_rules! capture_info_v2_exports {
    ($($name:ident, $ptsz:expr;)*) => {$(
        #[no_mangle]
        pub unsafe extern "C" fn $name(
            hStream: CUstream,
            captureStatus_out: *mut c_uint,
            id_out: *mut u64,
            graph_out: *mut CUgraph,
            dependencies_out: *mut *const CUgraphNode,
            numDependencies_out: *mut usize,
        ) -> CUresult {
            let edges = std::ptr::null_mut();
            // SAFETY: the caller's contract, forwarded.
            ffi(|| unsafe {
                capture_info(hStream, captureStatus_out, id_out, graph_out, dependencies_out, edges, numDependencies_out, $ptsz)
            })
        }
    )*};
}

capture_info_v2_exports! {
    cuStreamGetCaptureInfo_v2, false;
    cuStreamGetCaptureInfo_v2_ptsz, true;
}

macro_rules! capture_info_v3_exports {
    ($($name:ident, $ptsz:expr;)*) => {$(
        #[no_mangle]
        pub unsafe extern "C" fn $name(
            hStream: CUstream,
            captureStatus_out: *mut c_uint,
            id_out: *mut u64,
            graph_out: *mut CUgraph,
            dependencies_out: *mut *const CUgraphNode,
            edgeData_out: *mut *const CUgraphEdgeData,
            numDependencies_out: *mut usize,
        ) -> CUresult {
            // SAFETY: the caller's contract, forwarded.
            ffi(|| unsafe {
                capture_info(
                    hStream,
                    captureStatus_out,
                    id_out,
                    graph_out,
                    dependencies_out,
                    edgeData_out,
                    numDependencies_out,
                    $ptsz,
                )
            })
        }
    )*};
}

capture_info_v3_exports! {
    cuStreamGetCaptureInfo_v3, false;
    cuStreamGetCaptureInfo_v3_ptsz, true;
}

/// # Safety
/// `deps` NULL or `n` handles; `data` NULL or `n` entries.
unsafe fn update_dependencies(
    h: CUstream,
    deps: *const CUgraphNode,
    data: *const CUgraphEdgeData,
    n: usize,
    flags: c_uint,
    ptsz: bool,
) -> CuRes {
    session()?;
    if flags > SET_CAPTURE_DEPENDENCIES {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    // SAFETY: forwarded from the caller.
    let nodes = unsafe {
        graph::check_edge_data(data, n)?;
        graph::dep_list(deps, n)?
    };
    let (sid, _) = state::lock().resolve_stream(h, ptsz)?;
    let mut g = graph::lock();
    let k = key(sid);
    let seq = g.capture.streams.get(&k).ok_or(CUDA_ERROR_ILLEGAL_STATE)?.seq;
    let graph = g.capture.seqs.get(&seq).ok_or(CUDA_ERROR_ILLEGAL_STATE)?.graph;
    if !nodes.iter().all(|d| g.nodes.get(d).is_some_and(|i| i.graph == graph)) {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let sc = g.capture.streams.get_mut(&k).ok_or(CUDA_ERROR_ILLEGAL_STATE)?;
    if flags == SET_CAPTURE_DEPENDENCIES {
        sc.deps.clear();
    }
    for d in nodes {
        if !sc.deps.contains(&d) {
            sc.deps.push(d);
        }
    }
    Ok(())
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamUpdateCaptureDependencies(
    hStream: CUstream,
    dependencies: *mut CUgraphNode,
    numDependencies: usize,
    flags: c_uint,
) -> CUresult {
    // SAFETY: the caller's contract, forwarded.
    ffi(|| unsafe { update_dependencies(hStream, dependencies, std::ptr::null(), numDependencies, flags, false) })
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamUpdateCaptureDependencies_ptsz(
    hStream: CUstream,
    dependencies: *mut CUgraphNode,
    numDependencies: usize,
    flags: c_uint,
) -> CUresult {
    // SAFETY: the caller's contract, forwarded.
    ffi(|| unsafe { update_dependencies(hStream, dependencies, std::ptr::null(), numDependencies, flags, true) })
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamUpdateCaptureDependencies_v2(
    hStream: CUstream,
    dependencies: *mut CUgraphNode,
    dependencyData: *const CUgraphEdgeData,
    numDependencies: usize,
    flags: c_uint,
) -> CUresult {
    // SAFETY: the caller's contract, forwarded.
    ffi(|| unsafe { update_dependencies(hStream, dependencies, dependencyData, numDependencies, flags, false) })
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamUpdateCaptureDependencies_v2_ptsz(
    hStream: CUstream,
    dependencies: *mut CUgraphNode,
    dependencyData: *const CUgraphEdgeData,
    numDependencies: usize,
    flags: c_uint,
) -> CUresult {
    // SAFETY: the caller's contract, forwarded.
    ffi(|| unsafe { update_dependencies(hStream, dependencies, dependencyData, numDependencies, flags, true) })
}

#[no_mangle]
pub unsafe extern "C" fn cuThreadExchangeStreamCaptureMode(mode: *mut c_int) -> CUresult {
    ffi(|| {
        if mode.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        // SAFETY: non-NULL in/out argument per the CUDA API.
        let new = unsafe { mode.read_unaligned() };
        if !(MODE_GLOBAL..=MODE_RELAXED).contains(&new) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        session()?;
        let old = MODE.with(|m| m.replace(new));
        // SAFETY: as above.
        unsafe { mode.write_unaligned(old) };
        Ok(())
    })
}

/// These exports for cuGetProcAddress: (name, the CUDA version of the ABI,
/// symbol), as the CUDA headers' typedefs give them.
pub fn rows() -> Vec<super::proc_address::ProcRow> {
    use super::proc_address::ProcRow;
    vec![
        ProcRow::new(
            "cuStreamBeginCapture",
            10000,
            "cuStreamBeginCapture",
            cuStreamBeginCapture as *const () as usize,
            false,
        ),
        ProcRow::new(
            "cuStreamBeginCapture",
            10010,
            "cuStreamBeginCapture_v2",
            cuStreamBeginCapture_v2 as *const () as usize,
            false,
        ),
        ProcRow::new(
            "cuStreamBeginCapture",
            10000,
            "cuStreamBeginCapture_ptsz",
            cuStreamBeginCapture_ptsz as *const () as usize,
            true,
        ),
        ProcRow::new(
            "cuStreamBeginCapture",
            10010,
            "cuStreamBeginCapture_v2_ptsz",
            cuStreamBeginCapture_v2_ptsz as *const () as usize,
            true,
        ),
        ProcRow::new(
            "cuStreamBeginCaptureToGraph",
            12030,
            "cuStreamBeginCaptureToGraph",
            cuStreamBeginCaptureToGraph as *const () as usize,
            false,
        ),
        ProcRow::new(
            "cuStreamBeginCaptureToGraph",
            12030,
            "cuStreamBeginCaptureToGraph_ptsz",
            cuStreamBeginCaptureToGraph_ptsz as *const () as usize,
            true,
        ),
        ProcRow::new(
            "cuStreamEndCapture",
            10000,
            "cuStreamEndCapture",
            cuStreamEndCapture as *const () as usize,
            false,
        ),
        ProcRow::new(
            "cuStreamEndCapture",
            10000,
            "cuStreamEndCapture_ptsz",
            cuStreamEndCapture_ptsz as *const () as usize,
            true,
        ),
        ProcRow::new(
            "cuStreamUpdateCaptureDependencies",
            11030,
            "cuStreamUpdateCaptureDependencies",
            cuStreamUpdateCaptureDependencies as *const () as usize,
            false,
        ),
        ProcRow::new(
            "cuStreamUpdateCaptureDependencies",
            12030,
            "cuStreamUpdateCaptureDependencies_v2",
            cuStreamUpdateCaptureDependencies_v2 as *const () as usize,
            false,
        ),
        ProcRow::new(
            "cuStreamUpdateCaptureDependencies",
            11030,
            "cuStreamUpdateCaptureDependencies_ptsz",
            cuStreamUpdateCaptureDependencies_ptsz as *const () as usize,
            true,
        ),
        ProcRow::new(
            "cuStreamUpdateCaptureDependencies",
            12030,
            "cuStreamUpdateCaptureDependencies_v2_ptsz",
            cuStreamUpdateCaptureDependencies_v2_ptsz as *const () as usize,
            true,
        ),
    ]
}
