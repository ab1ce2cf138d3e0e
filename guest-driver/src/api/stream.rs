//! Streams. The guest picks each stream's id, so creating one is queued
//! without a round trip; synchronize and query wait for the backend. NULL,
//! `CU_STREAM_LEGACY` and `CU_STREAM_PER_THREAD` travel as ids 0, 1 and 2.

use super::context::{GREATEST_PRIORITY, LEAST_PRIORITY};
use super::state::{self, StreamInfo};
use super::types::*;
use super::{ffi, handle, id_of, session, set_opt, CuRes, Out};
use protocol::cuda::*;
use protocol::{Id, Opcode, StreamCreate, StreamWaitEvent};
use std::ffi::{c_int, c_uint, c_ulonglong, c_void};
use zerocopy::little_endian::{I32, U32, U64};

fn create(out: Out<CUstream>, flags: c_uint, priority: c_int) -> CuRes {
    let c = session()?;
    if flags & !CU_STREAM_NON_BLOCKING != 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    // Out-of-range priorities are clamped, as natively.
    let priority = priority.clamp(GREATEST_PRIORITY, LEAST_PRIORITY);
    let ctx = state::lock().current()?;
    let id = c.new_id();
    let p = StreamCreate { stream_id: U64::new(id), flags: U32::new(flags), priority: I32::new(priority) };
    c.enqueue(Opcode::StreamCreate, 0, ctx, &p, &[])?;
    state::lock().streams.insert(id, StreamInfo { ctx, flags, priority });
    out.set(handle(id));
    Ok(())
}

fn destroy(h: CUstream) -> CuRes {
    let c = session()?;
    let id = id_of(h);
    let s = state::lock().streams.remove(&id).ok_or(CUDA_ERROR_INVALID_HANDLE)?;
    c.enqueue(Opcode::StreamDestroy, 0, s.ctx, &Id { id: U64::new(id) }, &[])
}

/// A synchronizing stream call (synchronize, query).
fn sync_op(op: Opcode, h: CUstream, ptsz: bool) -> CuRes {
    let c = session()?;
    let (sid, ctx) = state::lock().resolve_stream(h, ptsz)?;
    c.sync_call(op, 0, ctx, &Id { id: U64::new(sid) })?;
    if op == Opcode::StreamSynchronize {
        super::stream_alloc::synchronized(c, ctx, Some(sid));
    }
    Ok(())
}

fn wait_event(h: CUstream, event: CUevent, flags: c_uint, ptsz: bool) -> CuRes {
    let c = session()?;
    if flags & !CU_EVENT_WAIT_EXTERNAL != 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let (sid, ctx) = {
        let st = state::lock();
        if !st.events.contains_key(&id_of(event)) {
            return Err(CUDA_ERROR_INVALID_HANDLE);
        }
        st.resolve_stream(h, ptsz)?
    };
    let p = StreamWaitEvent {
        stream_id: U64::new(sid),
        event_id: U64::new(id_of(event)),
        flags: U32::new(flags),
        _pad: U32::new(0),
    };
    c.enqueue(Opcode::StreamWaitEvent, 0, ctx, &p, &[])
}

/// Facts of a stream: (flags, priority, context, id). The default streams
/// report the current context and default flags.
fn info(h: CUstream, ptsz: bool) -> CuRes<(c_uint, c_int, u64, u64)> {
    session()?;
    let st = state::lock();
    let (sid, ctx) = st.resolve_stream(h, ptsz)?;
    Ok(match st.streams.get(&sid) {
        Some(s) => (s.flags, s.priority, s.ctx, sid),
        None => (CU_STREAM_DEFAULT, 0, ctx, sid),
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamCreate(phStream: *mut CUstream, Flags: c_uint) -> CUresult {
    ffi(|| {
        // SAFETY: output argument per the CUDA API.
        let out = unsafe { Out::new(phStream) }?;
        create(out, Flags, 0)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamCreateWithPriority(
    phStream: *mut CUstream,
    flags: c_uint,
    priority: c_int,
) -> CUresult {
    ffi(|| {
        // SAFETY: output argument per the CUDA API.
        let out = unsafe { Out::new(phStream) }?;
        create(out, flags, priority)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamDestroy(hStream: CUstream) -> CUresult {
    ffi(|| destroy(hStream))
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamDestroy_v2(hStream: CUstream) -> CUresult {
    ffi(|| destroy(hStream))
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamSynchronize(hStream: CUstream) -> CUresult {
    ffi(|| sync_op(Opcode::StreamSynchronize, hStream, false))
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamSynchronize_ptsz(hStream: CUstream) -> CUresult {
    ffi(|| sync_op(Opcode::StreamSynchronize, hStream, true))
}

/// CUDA_ERROR_NOT_READY comes back as the reply's status while work is
/// pending.
#[no_mangle]
pub unsafe extern "C" fn cuStreamQuery(hStream: CUstream) -> CUresult {
    ffi(|| sync_op(Opcode::StreamQuery, hStream, false))
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamQuery_ptsz(hStream: CUstream) -> CUresult {
    ffi(|| sync_op(Opcode::StreamQuery, hStream, true))
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamWaitEvent(hStream: CUstream, hEvent: CUevent, Flags: c_uint) -> CUresult {
    ffi(|| wait_event(hStream, hEvent, Flags, false))
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamWaitEvent_ptsz(hStream: CUstream, hEvent: CUevent, Flags: c_uint) -> CUresult {
    ffi(|| wait_event(hStream, hEvent, Flags, true))
}

/// Writes one fact of a stream to a getter's output.
///
/// # Safety
/// `out` is NULL or writable for a `T`.
unsafe fn getter<T>(h: CUstream, ptsz: bool, out: *mut T, pick: impl FnOnce(c_uint, c_int, u64, u64) -> T) -> CUresult {
    ffi(|| {
        // SAFETY: output argument per the CUDA API.
        let out = unsafe { Out::new(out) }?;
        let (flags, priority, ctx, id) = info(h, ptsz)?;
        out.set(pick(flags, priority, ctx, id));
        Ok(())
    })
}

macro_rules! stream_getters {
    ($($name:ident($ty:ty), $ptsz:expr, $pick:expr;)*) => {$(
        #[no_mangle]
        pub unsafe extern "C" fn $name(hStream: CUstream, out: *mut $ty) -> CUresult {
            // SAFETY: the caller's contract, forwarded.
            unsafe { getter(hStream, $ptsz, out, $pick) }
        }
    )*};
}

stream_getters! {
    cuStreamGetFlags(c_uint), false, |f, _, _, _| f;
    cuStreamGetFlags_ptsz(c_uint), true, |f, _, _, _| f;
    cuStreamGetPriority(c_int), false, |_, p, _, _| p;
    cuStreamGetPriority_ptsz(c_int), true, |_, p, _, _| p;
    cuStreamGetCtx(CUcontext), false, |_, _, c, _| handle(c);
    cuStreamGetCtx_ptsz(CUcontext), true, |_, _, c, _| handle(c);
    cuStreamGetId(c_ulonglong), false, |_, _, _, id| id;
    cuStreamGetId_ptsz(c_ulonglong), true, |_, _, _, id| id;
}

/// With a green-context output (CUDA 12.5): streams here never belong to a
/// green context.
///
/// # Safety
/// Outputs are NULL or writable.
unsafe fn get_ctx_v2(h: CUstream, pCtx: *mut CUcontext, pGreenCtx: *mut *mut c_void, ptsz: bool) -> CuRes {
    // SAFETY: output arguments per the CUDA API.
    let (c, g) = unsafe { (Out::new(pCtx)?, Out::new(pGreenCtx)?) };
    let (_, _, ctx, _) = info(h, ptsz)?;
    c.set(handle(ctx));
    g.set(std::ptr::null_mut());
    Ok(())
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamGetCtx_v2(
    hStream: CUstream,
    pCtx: *mut CUcontext,
    pGreenCtx: *mut *mut c_void,
) -> CUresult {
    // SAFETY: the caller's contract, forwarded.
    ffi(|| unsafe { get_ctx_v2(hStream, pCtx, pGreenCtx, false) })
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamGetCtx_v2_ptsz(
    hStream: CUstream,
    pCtx: *mut CUcontext,
    pGreenCtx: *mut *mut c_void,
) -> CUresult {
    // SAFETY: the caller's contract, forwarded.
    ffi(|| unsafe { get_ctx_v2(hStream, pCtx, pGreenCtx, true) })
}

/// The VM has one device, so every valid stream is on device 0.
///
/// # Safety
/// `device` is NULL or writable.
unsafe fn get_device(h: CUstream, device: *mut CUdevice, ptsz: bool) -> CuRes {
    // SAFETY: output argument per the CUDA API.
    let out = unsafe { Out::new(device) }?;
    info(h, ptsz)?;
    out.set(0);
    Ok(())
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamGetDevice(hStream: CUstream, device: *mut CUdevice) -> CUresult {
    // SAFETY: the caller's contract, forwarded.
    ffi(|| unsafe { get_device(hStream, device, false) })
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamGetDevice_ptsz(hStream: CUstream, device: *mut CUdevice) -> CUresult {
    // SAFETY: the caller's contract, forwarded.
    ffi(|| unsafe { get_device(hStream, device, true) })
}

// ---- capture (never active here) and host callbacks -------------------

/// `CU_STREAM_CAPTURE_STATUS_NONE`: stream capture is not supported, so no
/// stream is ever capturing.
const CAPTURE_STATUS_NONE: c_uint = 0;
/// `CUstreamCaptureMode` values are 0..=2.
const CAPTURE_MODE_MAX: c_int = 2;

thread_local! {
    static CAPTURE_MODE: std::cell::Cell<c_int> = const { std::cell::Cell::new(0) };
}

/// # Safety
/// `status` is NULL or writable.
unsafe fn is_capturing(h: CUstream, status: *mut c_uint, ptsz: bool) -> CuRes {
    // SAFETY: output argument per the CUDA API.
    let out = unsafe { Out::new(status) }?;
    session()?;
    state::lock().resolve_stream(h, ptsz)?;
    out.set(CAPTURE_STATUS_NONE);
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

/// Capture facts of a stream that is never capturing: no id, graph or
/// dependencies (the outputs of the CUDA 11.3 and 12.3 forms included).
///
/// # Safety
/// Outputs are NULL or writable.
#[allow(clippy::too_many_arguments)]
unsafe fn capture_info(
    h: CUstream,
    status: *mut c_uint,
    id: *mut u64,
    graph: *mut *mut c_void,
    dependencies: *mut *const c_void,
    edge_data: *mut *const c_void,
    count: *mut usize,
    ptsz: bool,
) -> CuRes {
    // SAFETY: optional output arguments per the CUDA API.
    let (id, g, d, e, n) = unsafe {
        (
            Out::optional(id),
            Out::optional(graph),
            Out::optional(dependencies),
            Out::optional(edge_data),
            Out::optional(count),
        )
    };
    // SAFETY: the caller's contract, forwarded.
    unsafe { is_capturing(h, status, ptsz) }?;
    set_opt(id, 0);
    set_opt(g, std::ptr::null_mut());
    set_opt(d, std::ptr::null());
    set_opt(e, std::ptr::null());
    set_opt(n, 0);
    Ok(())
}

/// The CUDA 10.1 form and its per-thread variant.
macro_rules! capture_info_v1 {
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

capture_info_v1! {
    cuStreamGetCaptureInfo, false;
    cuStreamGetCaptureInfo_ptsz, true;
}

/// The CUDA 11.3 form (graph and dependencies) and its per-thread variant.
macro_rules! capture_info_v2 {
    ($($name:ident, $ptsz:expr;)*) => {$(
        #[no_mangle]
        pub unsafe extern "C" fn $name(
            hStream: CUstream,
            captureStatus_out: *mut c_uint,
            id_out: *mut u64,
            graph_out: *mut *mut c_void,
            dependencies_out: *mut *const c_void,
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

capture_info_v2! {
    cuStreamGetCaptureInfo_v2, false;
    cuStreamGetCaptureInfo_v2_ptsz, true;
}

/// The CUDA 12.3 form (edge data too) and its per-thread variant.
macro_rules! capture_info_v3 {
    ($($name:ident, $ptsz:expr;)*) => {$(
        #[no_mangle]
        pub unsafe extern "C" fn $name(
            hStream: CUstream,
            captureStatus_out: *mut c_uint,
            id_out: *mut u64,
            graph_out: *mut *mut c_void,
            dependencies_out: *mut *const c_void,
            edgeData_out: *mut *const c_void,
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

capture_info_v3! {
    cuStreamGetCaptureInfo_v3, false;
    cuStreamGetCaptureInfo_v3_ptsz, true;
}

#[no_mangle]
pub unsafe extern "C" fn cuThreadExchangeStreamCaptureMode(mode: *mut c_int) -> CUresult {
    ffi(|| {
        if mode.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        // SAFETY: non-NULL in/out argument per the CUDA API.
        let new = unsafe { mode.read_unaligned() };
        if !(0..=CAPTURE_MODE_MAX).contains(&new) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        session()?;
        let old = CAPTURE_MODE.with(|m| m.replace(new));
        // SAFETY: as above.
        unsafe { mode.write_unaligned(old) };
        Ok(())
    })
}

pub type CUhostFn = Option<unsafe extern "C" fn(userData: *mut c_void)>;
pub type CUstreamCallback = Option<unsafe extern "C" fn(hStream: CUstream, status: CUresult, userData: *mut c_void)>;

/// Host functions run on the calling thread once the stream has drained:
/// the guest has no callback channel from the backend yet. Ordering holds
/// (earlier work first, later work queued after); concurrency with the
/// caller does not, so a callback that waits for the caller would deadlock.
fn host_func(h: CUstream, ptsz: bool, call: impl FnOnce(CUresult)) -> CuRes {
    let c = session()?;
    let (sid, ctx) = state::lock().resolve_stream(h, ptsz)?;
    let status = match c.sync_call(Opcode::StreamSynchronize, 0, ctx, &Id { id: U64::new(sid) }) {
        Ok(_) => CUDA_SUCCESS,
        Err(e) => e,
    };
    call(status);
    Ok(())
}

#[no_mangle]
pub unsafe extern "C" fn cuLaunchHostFunc(hStream: CUstream, fn_: CUhostFn, userData: *mut c_void) -> CUresult {
    ffi(|| {
        let f = fn_.ok_or(CUDA_ERROR_INVALID_VALUE)?;
        // SAFETY: the program's host function, called with its own data.
        host_func(hStream, false, |_| unsafe { f(userData) })
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuLaunchHostFunc_ptsz(hStream: CUstream, fn_: CUhostFn, userData: *mut c_void) -> CUresult {
    ffi(|| {
        let f = fn_.ok_or(CUDA_ERROR_INVALID_VALUE)?;
        // SAFETY: the program's host function, called with its own data.
        host_func(hStream, true, |_| unsafe { f(userData) })
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamAddCallback(
    hStream: CUstream,
    callback: CUstreamCallback,
    userData: *mut c_void,
    flags: c_uint,
) -> CUresult {
    ffi(|| {
        let f = callback.ok_or(CUDA_ERROR_INVALID_VALUE)?;
        if flags != 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        // SAFETY: the program's callback, called with its stream, status and data.
        host_func(hStream, false, |status| unsafe { f(hStream, status, userData) })
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamAddCallback_ptsz(
    hStream: CUstream,
    callback: CUstreamCallback,
    userData: *mut c_void,
    flags: c_uint,
) -> CUresult {
    ffi(|| {
        let f = callback.ok_or(CUDA_ERROR_INVALID_VALUE)?;
        if flags != 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        // SAFETY: the program's callback, called with its stream, status and data.
        host_func(hStream, true, |status| unsafe { f(hStream, status, userData) })
    })
}
