//! Streams. The guest picks each stream's id, so creating one is queued
//! without a round trip; synchronize and query wait for the backend. NULL,
//! `CU_STREAM_LEGACY` and `CU_STREAM_PER_THREAD` travel as ids 0, 1 and 2.

use super::context::{GREATEST_PRIORITY, LEAST_PRIORITY};
use super::state::{self, StreamInfo};
use super::types::*;
use super::{ffi, handle, id_of, session, CuRes, Out};
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
    super::capture::forget_stream(id);
    c.enqueue(Opcode::StreamDestroy, 0, s.ctx, &Id { id: U64::new(id) }, &[])
}

/// A synchronizing stream call (synchronize, query).
fn sync_op(op: Opcode, h: CUstream, ptsz: bool) -> CuRes {
    let c = session()?;
    let (sid, ctx) = state::lock().resolve_stream(h, ptsz)?;
    super::capture::check_stream_sync(sid, ctx)?;
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
    if super::capture::wait_event(sid, ctx, id_of(event), flags & CU_EVENT_WAIT_EXTERNAL != 0)? {
        return Ok(());
    }
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

// ---- host callbacks ------------------------------------------------------

pub type CUhostFn = Option<unsafe extern "C" fn(userData: *mut c_void)>;
pub type CUstreamCallback = Option<unsafe extern "C" fn(hStream: CUstream, status: CUresult, userData: *mut c_void)>;

/// Host functions run on the calling thread once the stream has drained:
/// the guest has no callback channel from the backend yet. Ordering holds
/// (earlier work first, later work queued after); concurrency with the
/// caller does not, so a callback that waits for the caller would deadlock.
fn host_func(h: CUstream, ptsz: bool, call: impl FnOnce(CUresult)) -> CuRes {
    let c = session()?;
    let (sid, ctx) = state::lock().resolve_stream(h, ptsz)?;
    // Host nodes would need the backend to call back into the guest.
    let host_node = || {
        crate::log::unsupported("host functions in stream capture (host nodes)");
        Err(CUDA_ERROR_NOT_SUPPORTED)
    };
    super::capture::intercept(sid, ctx, false, host_node)?;
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
